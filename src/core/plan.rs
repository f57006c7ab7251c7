//! The decision: from one view of the whole cluster, what the chains hold and what root
//! recorded, the steps that point the ports and barman's slot at the legitimate primary.
//! Events, `reconcile`, `setup` and `watch` all decide here; they differ only in what they
//! ask (`Ask`) and so in when they refuse.

use std::fmt;

use crate::core::config::{Config, NoPrimary, Node, OpenApp};
use crate::core::event::Claim;
use crate::core::ruleset::{Live, Open, Record, Route, Routing};
use crate::core::view::{Answer, Arbitration, Lsn, Primary, Role, View, arbitrate};

/// Why the cluster is looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// A repmgr event: what it claims must hold, or nothing is changed (exit 3).
    Event(Claim),
    /// An operator's `reconcile`: refuses when there is no legitimate primary, unless it
    /// names one (which must be a primary, whatever its timeline).
    Reconcile { named: Option<Node> },
    /// `setup`: make right what can be made right, refuse nothing.
    Converge,
    /// `watch`: the same, and it keeps a slot for barman on every standby (which only a
    /// service that advances it all the time may make: nothing else would).
    Watch,
}

/// One action, in the order the handler carries them out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Switch the chains to the record's route in one transaction (connections proxied
    /// through ports that stop forwarding are cut right after), and record it.
    Route(Record),
    /// `pg_create_physical_replication_slot(slot, true)` on the node.
    CreateSlot(Node),
    /// Stop barman's receive-wal and start it again at once, against the node.
    RestartBarman(Node),
    /// Force a WAL switch on the node and wait until barman has archived that WAL file:
    /// proof that barman streams from it. `watch` leaves it out where it may (it sees
    /// barman's walsender on the slot instead, and must not wait up to archive_timeout).
    ConfirmBarman(Node),
    /// `pg_terminate_backend(pid)` on the node: the walsender holding the slot.
    TerminateWalsender(Node, i32),
    /// `pg_drop_replication_slot(slot)` on the node.
    DropSlot(Node),
    /// `pg_create_physical_replication_slot(slot, true)` on a standby: it keeps the WAL from
    /// its last restartpoint on.
    CreateStandbySlot(Node),
    /// `pg_replication_slot_advance(slot, lsn)` on a standby: what barman has confirmed.
    AdvanceSlot(Node, Lsn),
}

impl Step {
    /// Steps that concern the promotion (the rest is housekeeping on other nodes, whose
    /// failure does not stop the run).
    pub fn is_promotion(&self) -> bool {
        matches!(self, Step::Route(_) | Step::CreateSlot(_) | Step::RestartBarman(_) | Step::ConfirmBarman(_))
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Route(record) => write!(f, "route {record}"),
            Step::CreateSlot(node) => write!(f, "create slot on node {}", node.id()),
            Step::RestartBarman(node) => write!(f, "restart barman receive-wal against node {}", node.id()),
            Step::ConfirmBarman(node) => write!(f, "have barman confirm a WAL switch of node {}", node.id()),
            Step::TerminateWalsender(node, pid) => write!(f, "terminate walsender {pid} on node {}", node.id()),
            Step::DropSlot(node) => write!(f, "drop slot on node {}", node.id()),
            Step::CreateStandbySlot(node) => write!(f, "create slot on standby node {}", node.id()),
            Step::AdvanceSlot(node, lsn) => write!(f, "advance slot on standby node {} to {lsn}", node.id()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Everything is already as it should be, or nothing can be made better.
    Nothing(String),
    /// The cluster contradicts the request: change nothing (exit 3).
    Refuse(String),
    /// The node the request is about could not be asked: change nothing (exit 1).
    Unanswered(String),
    /// Carry out these steps (never empty).
    Act(Vec<Step>),
}

/// What a run, or one pass of watch, saw: one view of every node, what the chains hold,
/// what root recorded with them, and the legitimate primary these make. Built once (`new`),
/// then decided from, logged and reported: the primary is arbitrated once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Situation<'v> {
    pub view: &'v View,
    pub routing: Routing,
    /// Our chains, the jumps to them and the hold are all there (else any switch repairs
    /// them: someone flushed a table, or deleted a jump by hand).
    pub in_place: bool,
    pub record: Option<Record>,
    pub arbitration: Arbitration,
}

impl<'v> Situation<'v> {
    pub fn new(view: &'v View, routing: Routing, in_place: bool, record: Option<Record>) -> Situation<'v> {
        Situation { arbitration: arbitrate(view, record), view, routing, in_place, record }
    }

    /// From the nat table as read (`iptables-save`): what the events and `status` see.
    pub fn read(cfg: &Config, view: &'v View, live: &Live, record: Option<Record>) -> Situation<'v> {
        Situation::new(view, live.routing(cfg), live.in_place(cfg), record)
    }

    /// The rules, whether everything is in place, and the record, once `steps` were all
    /// carried out: the last switch's route with everything in place (a switch of unknown
    /// timeline keeps the recorded one), or what was seen when none switched.
    pub fn after(&self, steps: &[Step]) -> (Routing, bool, Option<Record>) {
        let switched = steps.iter().rev().find_map(|step| match step {
            Step::Route(record) => Some(*record),
            _ => None,
        });
        match switched {
            Some(record) => {
                let timeline = match record.timeline {
                    0 => self.record.map_or(0, |r| r.timeline),
                    known => known,
                };
                (Routing::To(record.route), true, Some(Record { timeline, ..record }))
            }
            None => (self.routing.clone(), self.in_place, self.record),
        }
    }
}

/// The steps that make the cluster right for `ask`, from what was seen.
pub fn decide(cfg: &Config, ask: Ask, seen: &Situation) -> Decision {
    let (view, arbitration) = (seen.view, &seen.arbitration);
    let target = match target(ask, view, arbitration) {
        Ok(target) => target,
        Err(decision) => return decision,
    };
    let mut steps = match target {
        Some((primary, timeline)) => promote(cfg, primary, timeline, seen, ask != Ask::Watch),
        None => without_primary(cfg, seen),
    };
    steps.extend(standbys(cfg, view, target.map(|(primary, _)| primary), ask == Ask::Watch));
    if !steps.is_empty() {
        return Decision::Act(steps);
    }
    Decision::Nothing(match target {
        Some((primary, timeline)) => {
            format!("ports already point at node {} (timeline {timeline}) and its slot exists", primary.id())
        }
        None => format!("no primary to route to ({}); rules left as they are", arbitration.describe()),
    })
}

/// The primary to route to, or the decision when the request cannot stand.
fn target(ask: Ask, view: &View, arbitration: &Arbitration) -> Result<Option<(Node, u32)>, Decision> {
    let legit = match arbitration.primary {
        Primary::Legit { node, timeline } => Some((node, timeline)),
        _ => None,
    };
    match ask {
        Ask::Converge | Ask::Watch => Ok(legit),
        Ask::Reconcile { named: None } => legit.map(Some).ok_or_else(|| {
            Decision::Refuse(format!(
                "no legitimate primary: {} ({}); nothing changed; name the right one with --primary",
                arbitration.describe(),
                view.describe()
            ))
        }),
        Ask::Reconcile { named: Some(node) } => match view.answer(node) {
            Some(Answer::Up(state)) if state.role == Role::Primary => Ok(Some((node, state.timeline))),
            Some(Answer::Up(_)) => {
                Err(Decision::Refuse(format!("node {} is in recovery, not a primary; nothing changed", node.id())))
            }
            other => Err(unanswered(node, other)),
        },
        Ask::Event(claim) => {
            let node = view.nodes.iter().map(|(n, _)| *n).find(|n| n.id() == claim.node());
            let Some(node) = node else {
                return Err(Decision::Unanswered(format!("node {} is not configured; nothing changed", claim.node())));
            };
            match (claim, view.answer(node)) {
                (Claim::Promote(_), Some(Answer::Up(state))) => match &arbitration.primary {
                    Primary::Legit { node: legit, timeline } if *legit == node => Ok(Some((node, *timeline))),
                    other => {
                        let role = match state.role {
                            Role::Primary => "a primary",
                            Role::Standby => "in recovery",
                        };
                        let hint = match other {
                            Primary::Ambiguous { .. } => "; name the right one with reconcile --primary",
                            _ => "",
                        };
                        Err(Decision::Refuse(format!(
                            "node {} is {role} on timeline {}; the legitimate primary: {}; nothing changed{hint}",
                            node.id(),
                            state.timeline,
                            arbitration.describe()
                        )))
                    }
                },
                (Claim::Standby(_), Some(Answer::Up(state))) if state.role == Role::Primary => Err(Decision::Refuse(
                    format!("node {} is not in recovery; a primary keeps its slot; nothing changed", node.id()),
                )),
                (Claim::Standby(_), Some(Answer::Up(_))) => Ok(legit),
                (_, other) => Err(unanswered(node, other)),
            }
        }
    }
}

fn unanswered(node: Node, answer: Option<&Answer>) -> Decision {
    let why = answer.map_or("not asked".to_string(), Answer::describe);
    Decision::Unanswered(format!("node {} cannot be asked ({why}); nothing changed", node.id()))
}

/// Point everything at `primary`. With `OpenApp::AfterSlot` the application port opens as
/// soon as the primary holds barman's slot (from then on it keeps every WAL record barman
/// has not received), and barman follows; with `AfterArchive`, only once barman confirmed.
/// barman's confirmation is waited for when `confirm` (or when the port waits for it).
fn promote(cfg: &Config, primary: Node, timeline: u32, seen: &Situation, confirm: bool) -> Vec<Step> {
    let all = Route::new(primary, Open::All);
    let record = Record { route: all, timeline };
    let Some(backup) = &cfg.barman else {
        // a proxy without barman: the application ports, and nothing else
        let done = seen.routing == Routing::To(all) && seen.in_place && seen.record == Some(record);
        return if done { Vec::new() } else { vec![Step::Route(record)] };
    };
    let barman = |confirm: bool| {
        let mut steps = vec![Step::RestartBarman(primary)];
        if confirm {
            steps.push(Step::ConfirmBarman(primary));
        }
        steps
    };
    let slot = seen.view.state(primary).and_then(|s| s.slot);
    let mut steps = Vec::new();
    if seen.routing == Routing::To(all) {
        if !seen.in_place || seen.record != Some(record) {
            steps.push(Step::Route(record)); // the rules stand; repaired, or the record catches up
        }
        if slot.is_none() {
            // never close the application port for it: the slot comes back behind it
            steps.push(Step::CreateSlot(primary));
            steps.extend(barman(confirm));
        }
        return steps;
    }
    let barman_there = matches!(&seen.routing, Routing::To(r) if r.node == primary && r.open != Open::None);
    // a walsender on barman's slot there: barman streams from the primary already
    let streaming = slot.is_some_and(|s| s.active_pid.is_some());
    match backup.open_app {
        OpenApp::AfterSlot => {
            if slot.is_none() {
                steps.push(Step::CreateSlot(primary));
            }
            steps.push(Step::Route(record));
            if !streaming {
                steps.extend(barman(confirm));
            }
        }
        OpenApp::AfterArchive => {
            if !barman_there || matches!(&seen.routing, Routing::To(r) if r.open == Open::None) {
                steps.push(Step::Route(Record { route: Route::new(primary, Open::Barman), timeline }));
            }
            if slot.is_none() {
                steps.push(Step::CreateSlot(primary));
            }
            steps.extend(barman(true));
            steps.push(Step::Route(record));
        }
    }
    steps
}

/// No primary to route to: the rules stay (or come back as recorded, after a flush), but
/// for the ports of a node that cannot take the application's writes. A standby gets no
/// port at all; a node that serves nobody (down, or by `nat.no_primary = "close"` one that
/// does not answer) keeps barman's port and loses the application's, whose new
/// connections are then held, not refused.
fn without_primary(cfg: &Config, seen: &Situation) -> Vec<Step> {
    let view = seen.view;
    let current = match &seen.routing {
        Routing::To(route) => Some(*route),
        Routing::Nothing | Routing::Unrecognised => seen.record.map(|r| r.route),
    };
    let Some(route) = current else { return Vec::new() };
    // the application's ports closed: barman's stays, where there is one
    let closed = if cfg.barman.is_some() { Open::Barman } else { Open::None };
    let open = match view.answer(route.node) {
        Some(Answer::Up(state)) if state.role == Role::Standby => Open::None,
        Some(Answer::Down(_)) if route.open == Open::All => closed,
        Some(Answer::Silent(_) | Answer::Rejected(_))
            if route.open == Open::All && cfg.nat.no_primary == NoPrimary::Close =>
        {
            closed
        }
        _ => route.open,
    };
    let wanted = Route::new(route.node, open);
    if seen.routing == Routing::To(wanted) && seen.in_place {
        return Vec::new();
    }
    vec![Step::Route(Record { route: wanted, timeline: seen.record.map_or(0, |r| r.timeline) })]
}

/// barman's slot on the standbys. With `barman.standby_slots`, `watch` makes one on every
/// standby, and every run advances it to what barman has confirmed on the primary (its
/// slot there): whichever standby is promoted still has every WAL record barman has not
/// received. By whole segments, since WAL is removed by whole segments; never more than
/// `standby_slot_limit` behind what the standby replayed, or its disk would fill while
/// barman lags or no primary answers. Without `standby_slots` a standby keeps no slot. A
/// walsender on a standby's slot is ended either way: barman streams from the primary only.
fn standbys(cfg: &Config, view: &View, primary: Option<Node>, make: bool) -> Vec<Step> {
    // a proxy without barman never touches a slot: the proxy with barman manages them
    let Some(backup) = &cfg.barman else { return Vec::new() };
    let confirmed = primary.and_then(|p| view.state(p)).and_then(|s| s.slot).and_then(|s| s.restart_lsn);
    let mut steps = Vec::new();
    for (node, state) in view.standbys() {
        if let Some(pid) = state.slot.and_then(|s| s.active_pid) {
            steps.push(Step::TerminateWalsender(node, pid));
        }
        match (backup.standby_slots, state.slot) {
            (false, Some(_)) => steps.push(Step::DropSlot(node)),
            (true, None) if make => steps.push(Step::CreateStandbySlot(node)),
            (true, Some(slot)) => {
                let Some(kept) = slot.restart_lsn else { continue };
                let floor = Lsn(state.lsn.0.saturating_sub(backup.standby_slot_limit));
                let target = confirmed.unwrap_or(kept).max(floor);
                if target.segment() > kept.segment() {
                    steps.push(Step::AdvanceSlot(node, target));
                }
            }
            _ => {}
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::NodeId;
    use crate::core::config::tests::{example, node, second_proxy};
    use crate::core::view::tests::view;
    use crate::core::view::{Lsn, NodeState, Slot};

    const IDLE: Option<Slot> = Some(Slot { active_pid: None, restart_lsn: Some(Lsn(0x300_0000)) });
    const ACTIVE: Option<Slot> = Some(Slot { active_pid: Some(4242), restart_lsn: Some(Lsn(0x300_0000)) });

    fn up(role: Role, timeline: u32, slot: Option<Slot>) -> Answer {
        Answer::Up(NodeState { role, timeline, lsn: Lsn(0x300_0060), slot })
    }
    fn primary(timeline: u32, slot: Option<Slot>) -> Answer {
        up(Role::Primary, timeline, slot)
    }
    fn standby(slot: Option<Slot>) -> Answer {
        up(Role::Standby, 1, slot)
    }
    fn down() -> Answer {
        Answer::Down("connection refused".into())
    }
    fn silent() -> Answer {
        Answer::Silent("no answer within 3 s".into())
    }
    fn route(id: u32, open: Open) -> Route {
        Route::new(node(id), open)
    }
    fn to(id: u32, open: Open) -> Routing {
        Routing::To(route(id, open))
    }
    fn rec(id: u32, open: Open, timeline: u32) -> Option<Record> {
        Some(Record { route: route(id, open), timeline })
    }
    fn switch(id: u32, open: Open, timeline: u32) -> Step {
        Step::Route(rec(id, open, timeline).unwrap())
    }
    fn promote_of(id: u32) -> Ask {
        Ask::Event(Claim::Promote(NodeId::new(id)))
    }
    fn standby_of(id: u32) -> Ask {
        Ask::Event(Claim::Standby(NodeId::new(id)))
    }
    fn refuse(why: &str) -> Decision {
        Decision::Refuse(why.to_string())
    }
    fn act(steps: &[Step]) -> Decision {
        Decision::Act(steps.to_vec())
    }
    use Step::{
        AdvanceSlot, ConfirmBarman, CreateSlot, CreateStandbySlot, DropSlot, RestartBarman, TerminateWalsender,
    };

    fn check(cfg: &Config, cases: Vec<(Ask, View, Routing, Option<Record>, Decision)>) {
        for (ask, view, routing, record, expected) in cases {
            let got = decide(cfg, ask, &Situation::new(&view, routing.clone(), true, record));
            assert_eq!(
                got,
                expected,
                "\n ask {ask:?}\n view {}\n rules {routing}\n record {record:?}",
                view.describe()
            );
        }
    }

    /// A proxy without barman: the application ports follow the primary, and no slot is
    /// ever made, advanced, dropped or freed of its walsender, whatever the nodes hold.
    #[test]
    #[rustfmt::skip]
    fn a_proxy_without_barman_moves_only_the_application_ports() {
        let slot = Some(Slot { active_pid: Some(42), restart_lsn: Some(Lsn(0x100)) });
        check(&second_proxy(), vec![
            (Ask::Watch,   view(&[(1, down()), (2, primary(2, None))]),          to(1, Open::All),  rec(1, Open::All, 1),  act(&[switch(2, Open::All, 2)])),
            (promote_of(2), view(&[(1, down()), (2, primary(2, None))]),         Routing::Nothing,  None,                  act(&[switch(2, Open::All, 2)])),
            (Ask::Watch,   view(&[(1, standby(slot)), (2, primary(2, None))]),   to(2, Open::All),  rec(2, Open::All, 2),  Decision::Nothing("ports already point at node 2 (timeline 2) and its slot exists".into())),
            (Ask::Watch,   view(&[(1, standby(None)), (2, down())]),             to(2, Open::All),  rec(2, Open::All, 2),  act(&[switch(2, Open::None, 2)])),
            (Ask::Watch,   view(&[(1, standby(None)), (2, down())]),             to(2, Open::None), rec(2, Open::None, 2), Decision::Nothing("no primary to route to (none reachable); rules left as they are".into())),
        ]);
    }

    /// A promote event for node 2: the view (with timelines), the rules, the record ->
    /// what happens. The application port opens as soon as the slot exists.
    #[test]
    #[rustfmt::skip]
    fn promote_decision_table() {
        let (n1, n2) = (node(1), node(2));
        let full = |tl| act(&[CreateSlot(n2), switch(2, Open::All, tl), RestartBarman(n2), ConfirmBarman(n2)]);
        check(&example(), vec![
            // fresh: no rules at all (the first primary_register, or after a reboot)
            (promote_of(2), view(&[(1, down()), (2, primary(1, None))]),         Routing::Nothing,     None,                        full(1)),
            // the usual failover: the rules point at the former primary
            (promote_of(2), view(&[(1, down()), (2, primary(2, None))]),         to(1, Open::All),     rec(1, Open::All, 1),        full(2)),
            (promote_of(2), view(&[(1, down()), (2, primary(2, None))]),         Routing::Unrecognised, rec(1, Open::All, 1),       full(2)),
            (promote_of(2), view(&[(1, down()), (2, primary(2, IDLE))]),         to(1, Open::All),     rec(1, Open::All, 1),        act(&[switch(2, Open::All, 2), RestartBarman(n2), ConfirmBarman(n2)])),
            // a promotion interrupted after the barman port moved: open, and restart barman
            // unless it streams from the node already (a walsender on the slot)
            (promote_of(2), view(&[(1, down()), (2, primary(2, IDLE))]),         to(2, Open::Barman),  rec(2, Open::Barman, 2),     act(&[switch(2, Open::All, 2), RestartBarman(n2), ConfirmBarman(n2)])),
            (promote_of(2), view(&[(1, down()), (2, primary(2, ACTIVE))]),       to(2, Open::Barman),  rec(2, Open::Barman, 2),     act(&[switch(2, Open::All, 2)])),
            (promote_of(2), view(&[(1, down()), (2, primary(2, ACTIVE))]),       to(2, Open::None),    rec(2, Open::None, 2),       act(&[switch(2, Open::All, 2)])),
            // ports right but the slot missing: never close the application port for it
            (promote_of(2), view(&[(1, down()), (2, primary(2, None))]),         to(2, Open::All),     rec(2, Open::All, 2),        act(&[CreateSlot(n2), RestartBarman(n2), ConfirmBarman(n2)])),
            // already right: the second promote event of a failover costs nothing
            (promote_of(2), view(&[(1, down()), (2, primary(2, ACTIVE))]),       to(2, Open::All),     rec(2, Open::All, 2),        Decision::Nothing("ports already point at node 2 (timeline 2) and its slot exists".into())),
            // ... but a record without the timeline catches up
            (promote_of(2), view(&[(1, down()), (2, primary(2, ACTIVE))]),       to(2, Open::All),     rec(2, Open::All, 0),        act(&[switch(2, Open::All, 2)])),
            // the old primary still answers, as a standby with barman streaming from it: no more
            (promote_of(2), view(&[(1, standby(ACTIVE)), (2, primary(2, None))]), to(1, Open::All),    rec(1, Open::All, 1),        act(&[CreateSlot(n2), switch(2, Open::All, 2), RestartBarman(n2), ConfirmBarman(n2), TerminateWalsender(n1, 4242)])),
            // a stale promote: the node is a standby now
            (promote_of(2), view(&[(1, primary(1, IDLE)), (2, standby(None))]), to(1, Open::All),     rec(1, Open::All, 1),        refuse("node 2 is in recovery on timeline 1; the legitimate primary: node 1 on timeline 1; nothing changed")),
            // a replayed promote for the old primary, back on its old timeline
            (promote_of(1), view(&[(1, primary(1, IDLE)), (2, primary(2, ACTIVE))]), to(2, Open::All), rec(2, Open::All, 2),       refuse("node 1 is a primary on timeline 1; the legitimate primary: node 2 on timeline 2; split brain: stale primary node 1 on timeline 1; nothing changed")),
            // two primaries on one timeline
            (promote_of(2), view(&[(1, primary(2, IDLE)), (2, primary(2, None))]), to(1, Open::All),  rec(1, Open::All, 2),        refuse("node 2 is a primary on timeline 2; the legitimate primary: ambiguous: nodes 1 and 2 are all primary on timeline 2; nothing changed; name the right one with reconcile --primary")),
            // the true primary unreachable from here, the old one answers
            (promote_of(1), view(&[(1, primary(1, IDLE)), (2, silent())]),       to(2, Open::All),     rec(2, Open::All, 2),        refuse("node 1 is a primary on timeline 1; the legitimate primary: none: node 1 is a primary on timeline 1, below timeline 2 recorded with the route to node 2; nothing changed")),
            (promote_of(1), view(&[(1, primary(1, IDLE)), (2, silent())]),       to(1, Open::Barman),  rec(1, Open::Barman, 1),     refuse("node 1 is a primary on timeline 1; the legitimate primary: unconfirmed: node 1 is a primary on timeline 1, but node 2 cannot be asked and may be on a higher one; nothing changed")),
            // the node cannot be asked
            (promote_of(2), view(&[(1, primary(1, IDLE)), (2, down())]),         to(1, Open::All),     rec(1, Open::All, 1),        Decision::Unanswered("node 2 cannot be asked (down: connection refused); nothing changed".into())),
            (promote_of(7), view(&[(1, primary(1, IDLE)), (2, down())]),         to(1, Open::All),     rec(1, Open::All, 1),        Decision::Unanswered("node 7 is not configured; nothing changed".into())),
        ]);
    }

    /// The same with `barman.open_app = "after_archive"`: barman's port first, the
    /// application's last.
    #[test]
    #[rustfmt::skip]
    fn promote_after_archive_decision_table() {
        let mut cfg = example();
        cfg.barman.as_mut().unwrap().open_app = OpenApp::AfterArchive;
        let n2 = node(2);
        check(&cfg, vec![
            (promote_of(2), view(&[(1, down()), (2, primary(2, None))]),   to(1, Open::All),    rec(1, Open::All, 1),    act(&[switch(2, Open::Barman, 2), CreateSlot(n2), RestartBarman(n2), ConfirmBarman(n2), switch(2, Open::All, 2)])),
            (promote_of(2), view(&[(1, down()), (2, primary(2, IDLE))]),   to(2, Open::Barman), rec(2, Open::Barman, 2), act(&[RestartBarman(n2), ConfirmBarman(n2), switch(2, Open::All, 2)])),
            (promote_of(2), view(&[(1, down()), (2, primary(2, IDLE))]),   to(2, Open::None),   rec(2, Open::None, 2),   act(&[switch(2, Open::Barman, 2), RestartBarman(n2), ConfirmBarman(n2), switch(2, Open::All, 2)])),
            (promote_of(2), view(&[(1, down()), (2, primary(2, IDLE))]),   to(2, Open::All),    rec(2, Open::All, 2),    Decision::Nothing("ports already point at node 2 (timeline 2) and its slot exists".into())),
        ]);
    }

    /// A standby-type event for node 1 (node_rejoin, standby_follow, ...).
    #[test]
    #[rustfmt::skip]
    fn standby_decision_table() {
        let (n1, n2) = (node(1), node(2));
        check(&example(), vec![
            // the old primary rejoined: barman no longer streams from it; it keeps the slot
            (standby_of(1), view(&[(1, standby(ACTIVE)), (2, primary(2, ACTIVE))]), to(2, Open::All), rec(2, Open::All, 2), act(&[TerminateWalsender(n1, 4242)])),
            (standby_of(1), view(&[(1, standby(IDLE)), (2, primary(2, ACTIVE))]),   to(2, Open::All), rec(2, Open::All, 2), Decision::Nothing("ports already point at node 2 (timeline 2) and its slot exists".into())),
            (standby_of(1), view(&[(1, standby(None)), (2, primary(2, ACTIVE))]),   to(2, Open::All), rec(2, Open::All, 2), Decision::Nothing("ports already point at node 2 (timeline 2) and its slot exists".into())),
            // the ports still point at it (a lost promote event): they follow the primary
            (standby_of(1), view(&[(1, standby(ACTIVE)), (2, primary(2, None))]),   to(1, Open::All), rec(1, Open::All, 1), act(&[CreateSlot(n2), switch(2, Open::All, 2), RestartBarman(n2), ConfirmBarman(n2), TerminateWalsender(n1, 4242)])),
            // ... or, with no primary to go to, close
            (standby_of(1), view(&[(1, standby(IDLE)), (2, down())]),              to(1, Open::All), rec(1, Open::All, 1), act(&[switch(1, Open::None, 1)])),
            (standby_of(1), view(&[(1, standby(IDLE)), (2, down())]),              to(1, Open::None), rec(1, Open::None, 1), Decision::Nothing("no primary to route to (none reachable); rules left as they are".into())),
            // a standby-type event for a primary: it keeps its slot
            (standby_of(1), view(&[(1, primary(1, ACTIVE)), (2, standby(None))]),  to(1, Open::All), rec(1, Open::All, 1), refuse("node 1 is not in recovery; a primary keeps its slot; nothing changed")),
            (standby_of(1), view(&[(1, silent()), (2, primary(2, ACTIVE))]),        to(2, Open::All), rec(2, Open::All, 2), Decision::Unanswered("node 1 cannot be asked (no answer: no answer within 3 s); nothing changed".into())),
        ]);
    }

    /// `setup` and `watch`: whatever the cluster looks like, the best rules for it.
    #[test]
    #[rustfmt::skip]
    fn converge_decision_table() {
        let n2 = node(2);
        let rejected = || Answer::Rejected("password authentication failed".into());
        let mut closing = example();
        closing.nat.no_primary = NoPrimary::Close;
        let hold = |why: &str| Decision::Nothing(format!("no primary to route to ({why}); rules left as they are"));
        check(&example(), vec![
            // a promotion nobody told us about
            (Ask::Converge, view(&[(1, down()), (2, primary(2, None))]),           to(1, Open::All),    rec(1, Open::All, 1), act(&[CreateSlot(n2), switch(2, Open::All, 2), RestartBarman(n2), ConfirmBarman(n2)])),
            // the old primary is back on its old timeline: the new one keeps the ports
            (Ask::Converge, view(&[(1, primary(1, IDLE)), (2, primary(2, ACTIVE))]), to(2, Open::All),  rec(2, Open::All, 2), Decision::Nothing("ports already point at node 2 (timeline 2) and its slot exists".into())),
            (Ask::Converge, view(&[(1, primary(1, IDLE)), (2, primary(2, ACTIVE))]), to(1, Open::All),  rec(1, Open::All, 1), act(&[switch(2, Open::All, 2)])),
            (Ask::Converge, view(&[(1, primary(1, IDLE)), (2, primary(2, IDLE))]), to(1, Open::All),    rec(1, Open::All, 1), act(&[switch(2, Open::All, 2), RestartBarman(n2), ConfirmBarman(n2)])),
            // the routed primary went down (a switchover, a crash): new connections wait
            (Ask::Converge, view(&[(1, down()), (2, standby(IDLE))]),               to(1, Open::All),    rec(1, Open::All, 1), act(&[switch(1, Open::Barman, 1)])),
            (Ask::Converge, view(&[(1, down()), (2, standby(IDLE))]),               to(1, Open::Barman), rec(1, Open::Barman, 1), hold("none reachable")),
            // it does not answer, or refuses us: it may still serve; hold
            (Ask::Converge, view(&[(1, silent()), (2, standby(IDLE))]),             to(1, Open::All),    rec(1, Open::All, 1), hold("none reachable")),
            (Ask::Converge, view(&[(1, rejected()), (2, standby(IDLE))]),           to(1, Open::All),    rec(1, Open::All, 1), hold("none reachable")),
            // the true primary unreachable, a stale one answers: never route to it
            (Ask::Converge, view(&[(1, primary(1, IDLE)), (2, silent())]),          to(2, Open::All),    rec(2, Open::All, 2), hold("none: node 1 is a primary on timeline 1, below timeline 2 recorded with the route to node 2")),
            (Ask::Converge, view(&[(1, primary(2, IDLE)), (2, primary(2, IDLE))]),  to(1, Open::All),    rec(1, Open::All, 2), hold("ambiguous: nodes 1 and 2 are all primary on timeline 2")),
            // back from down on the recorded timeline while the other cannot be asked: it may
            // have been promoted meanwhile; wait
            (Ask::Converge, view(&[(1, primary(1, IDLE)), (2, silent())]),          to(1, Open::Barman), rec(1, Open::Barman, 1), hold("unconfirmed: node 1 is a primary on timeline 1, but node 2 cannot be asked and may be on a higher one")),
        ]);
        // watch does not wait for barman's confirmation: it sees barman's walsender instead
        check(&example(), vec![
            (Ask::Watch, view(&[(1, down()), (2, primary(2, None))]), to(1, Open::All), rec(1, Open::All, 1), act(&[CreateSlot(n2), switch(2, Open::All, 2), RestartBarman(n2)])),
        ]);
        check(&closing, vec![
            (Ask::Converge, view(&[(1, silent()), (2, standby(IDLE))]),             to(1, Open::All),    rec(1, Open::All, 1), act(&[switch(1, Open::Barman, 1)])),
        ]);
    }

    /// barman's slot on the standbys, with node 2 the primary (or unreachable) and node 1 a
    /// standby that has replayed up to segment 9.
    #[test]
    #[rustfmt::skip]
    fn standby_slot_decision_table() {
        let seg = |n: u64| Some(Lsn(n * Lsn::SEGMENT + 0x60));
        let slot = |at: u64, pid: Option<i32>| Some(Slot { active_pid: pid, restart_lsn: seg(at) });
        let standby_at = |slot| Answer::Up(NodeState { role: Role::Standby, timeline: 2, lsn: seg(9).unwrap(), slot });
        let n1 = node(1);
        let mut article = example();
        article.barman.as_mut().unwrap().standby_slots = false;
        let mut small = example();
        small.barman.as_mut().unwrap().standby_slot_limit = 2 * Lsn::SEGMENT;
        let cases = [
            // no slot yet: watch makes one (it keeps WAL from the standby's last restartpoint)
            (&example(), standby_at(None),              primary(2, slot(5, Some(7))), act(&[CreateStandbySlot(n1)])),
            // barman has confirmed segment 5, the standby keeps from 3: advanced
            (&example(), standby_at(slot(3, None)),     primary(2, slot(5, Some(7))), act(&[AdvanceSlot(n1, seg(5).unwrap())])),
            // within one segment: WAL goes by whole segments, nothing to win
            (&example(), standby_at(slot(5, None)),     primary(2, slot(5, Some(7))), Decision::Nothing("ports already point at node 2 (timeline 2) and its slot exists".into())),
            // barman lags behind the standby's slot (stopped, say): kept where it is
            (&example(), standby_at(slot(5, None)),     primary(2, slot(3, None)),    Decision::Nothing("ports already point at node 2 (timeline 2) and its slot exists".into())),
            // barman streamed from this node before it became a standby: no more, slot kept
            (&example(), standby_at(slot(5, Some(42))), primary(2, slot(5, Some(7))), act(&[TerminateWalsender(n1, 42)])),
            // no primary to confirm anything, or barman far behind: never more than the limit
            (&example(), standby_at(slot(3, None)),     silent(),                     Decision::Nothing("no primary to route to (none reachable); rules left as they are".into())),
            (&small,     standby_at(slot(3, None)),     silent(),                     act(&[AdvanceSlot(n1, seg(7).unwrap())])),
            (&small,     standby_at(slot(8, None)),     silent(),                     Decision::Nothing("no primary to route to (none reachable); rules left as they are".into())),
            (&small,     standby_at(slot(3, None)),     primary(2, slot(4, Some(7))), act(&[AdvanceSlot(n1, seg(7).unwrap())])),
            // the article's rule: the slot on the primary only
            (&article,   standby_at(slot(5, Some(42))), primary(2, slot(5, Some(7))), act(&[TerminateWalsender(n1, 42), DropSlot(n1)])),
            (&article,   standby_at(None),              primary(2, slot(5, Some(7))), Decision::Nothing("ports already point at node 2 (timeline 2) and its slot exists".into())),
        ];
        for (cfg, one, two, expected) in cases {
            check(cfg, vec![(Ask::Watch, view(&[(1, one), (2, two)]), to(2, Open::All), rec(2, Open::All, 2), expected)]);
        }
        // only watch makes them: nothing else would advance them
        check(&example(), vec![(Ask::Converge, view(&[(1, standby_at(None)), (2, primary(2, slot(5, Some(7))))]),
            to(2, Open::All), rec(2, Open::All, 2), Decision::Nothing("ports already point at node 2 (timeline 2) and its slot exists".into()))]);
    }

    /// Tables someone else changed: a flush, a jump deleted by hand.
    #[test]
    fn converge_repairs_the_tables() {
        let cfg = example();
        let v = view(&[(1, down()), (2, primary(2, ACTIVE))]);
        let decide_on = |routing: &Routing, in_place: bool| {
            decide(&cfg, Ask::Converge, &Situation::new(&v, routing.clone(), in_place, rec(2, Open::All, 2)))
        };
        // a jump deleted: the rules are right, the tables not
        assert_eq!(decide_on(&to(2, Open::All), false), act(&[switch(2, Open::All, 2)]));
        // the nat table flushed, a rule deleted: the route again (barman streams still: its
        // connection outlives the rules)
        assert_eq!(decide_on(&Routing::Nothing, false), act(&[switch(2, Open::All, 2)]));
        assert_eq!(decide_on(&Routing::Unrecognised, true), act(&[switch(2, Open::All, 2)]));
        // with no primary answering: the recorded route comes back, as setup does at boot
        let v = view(&[(1, down()), (2, Answer::Silent("no answer within 3 s".into()))]);
        let got = decide(&cfg, Ask::Converge, &Situation::new(&v, Routing::Nothing, false, rec(2, Open::All, 2)));
        assert_eq!(got, act(&[switch(2, Open::All, 2)]));
    }

    #[test]
    #[rustfmt::skip]
    fn reconcile_refuses_without_a_legitimate_primary_unless_one_is_named() {
        let (n1, n2) = (node(1), node(2));
        check(&example(), vec![
            (Ask::Reconcile { named: None },     view(&[(1, primary(2, ACTIVE)), (2, primary(2, None))]), to(1, Open::All), rec(1, Open::All, 2),
                refuse("no legitimate primary: ambiguous: nodes 1 and 2 are all primary on timeline 2 (1: primary on timeline 2, 2: primary on timeline 2); nothing changed; name the right one with --primary")),
            (Ask::Reconcile { named: Some(n1) }, view(&[(1, primary(2, ACTIVE)), (2, primary(2, None))]), to(1, Open::All), rec(1, Open::All, 2),
                Decision::Nothing("ports already point at node 1 (timeline 2) and its slot exists".into())),
            (Ask::Reconcile { named: Some(n2) }, view(&[(1, primary(2, ACTIVE)), (2, primary(2, None))]), to(1, Open::All), rec(1, Open::All, 2),
                act(&[CreateSlot(n2), switch(2, Open::All, 2), RestartBarman(n2), ConfirmBarman(n2)])),
            // named below the recorded timeline: the operator knows better (a rebuilt cluster)
            (Ask::Reconcile { named: Some(n1) }, view(&[(1, primary(1, None)), (2, silent())]),          to(2, Open::All), rec(2, Open::All, 5),
                act(&[CreateSlot(n1), switch(1, Open::All, 1), RestartBarman(n1), ConfirmBarman(n1)])),
            (Ask::Reconcile { named: Some(n2) }, view(&[(1, primary(1, ACTIVE)), (2, standby(IDLE))]),   to(1, Open::All), rec(1, Open::All, 1),
                refuse("node 2 is in recovery, not a primary; nothing changed")),
            (Ask::Reconcile { named: None },     view(&[(1, down()), (2, standby(IDLE))]),               to(1, Open::All), rec(1, Open::All, 1),
                refuse("no legitimate primary: none reachable (1: down: connection refused, 2: standby); nothing changed; name the right one with --primary")),
        ]);
    }

    #[test]
    fn after_its_steps_the_rules_hold_the_last_switch_and_the_record_its_timeline() {
        let v = view(&[(1, down()), (2, primary(2, None))]);
        let seen = Situation::new(&v, to(1, Open::All), false, rec(1, Open::All, 1));
        let (n2, barman) = (node(2), Route::new(node(2), Open::Barman));
        let steps = [switch(2, Open::Barman, 2), CreateSlot(n2), RestartBarman(n2), switch(2, Open::All, 2)];
        assert_eq!(seen.after(&steps), (to(2, Open::All), true, rec(2, Open::All, 2)));
        // a switch of unknown timeline keeps the recorded one
        let keep = [Step::Route(Record { route: barman, timeline: 0 })];
        assert_eq!(seen.after(&keep), (Routing::To(barman), true, rec(2, Open::Barman, 1)));
        assert_eq!(seen.after(&[CreateSlot(n2)]), (to(1, Open::All), false, rec(1, Open::All, 1)));
    }

    #[test]
    fn the_application_port_never_opens_before_the_slot_exists() {
        for open_app in [OpenApp::AfterSlot, OpenApp::AfterArchive] {
            let mut cfg = example();
            cfg.barman.as_mut().unwrap().open_app = open_app;
            for routing in [Routing::Nothing, to(1, Open::All), to(2, Open::None), to(2, Open::Barman)] {
                let v = view(&[(1, down()), (2, primary(2, None))]);
                let seen = Situation::new(&v, routing.clone(), true, None);
                let Decision::Act(steps) = decide(&cfg, Ask::Converge, &seen) else {
                    panic!("nothing to do for {routing}")
                };
                let slot = steps.iter().position(|s| *s == CreateSlot(node(2))).unwrap();
                let opened = steps.iter().position(|s| *s == switch(2, Open::All, 2)).unwrap();
                assert!(slot < opened, "{open_app:?} {routing}: {steps:?}");
                let confirmed = steps.iter().position(|s| *s == RestartBarman(node(2))).unwrap();
                assert_eq!(confirmed < opened, open_app == OpenApp::AfterArchive, "{open_app:?}: {steps:?}");
                assert!(!steps.iter().any(|s| matches!(s, Step::Route(r) if r.route.node != node(2))));
            }
        }
    }
}
