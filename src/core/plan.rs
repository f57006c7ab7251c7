//! The decisions, as pure functions: what to do for an event given what the node and
//! the NAT chains look like now. The whole decision table is in `promote`, `standby`
//! and `choose_primary`; `handler` carries the steps out.

use std::fmt;

use crate::core::config::NodeId;
use crate::core::event::{Event, Kind};
use crate::core::ruleset::{Open, Route, Routing};

/// What a node answered when asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub role: Role,
    /// barman's replication slot on this node, if it exists.
    pub slot: Option<Slot>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `pg_is_in_recovery()` is false.
    Primary,
    /// `pg_is_in_recovery()` is true.
    Standby,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The walsender streaming from the slot, if one is connected.
    pub active_pid: Option<i32>,
}

/// One action, in the order the handler carries them out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Switch the chains to this route in one transaction; connections proxied through
    /// ports that stop forwarding (to the former primary, say) are cut right after.
    Route(Route),
    /// `pg_create_physical_replication_slot(slot, true)` on the node.
    CreateSlot,
    /// Stop barman's receive-wal, start it again at once, force a WAL switch and wait
    /// until barman has archived it.
    RestartBarman,
    /// `pg_terminate_backend(pid)`: the walsender holding the slot.
    TerminateWalsender(i32),
    /// `pg_drop_replication_slot(slot)` on the node.
    DropSlot,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Route(route) => write!(f, "route {route}"),
            Step::CreateSlot => f.write_str("create slot"),
            Step::RestartBarman => f.write_str("restart barman receive-wal and switch WAL"),
            Step::TerminateWalsender(pid) => write!(f, "terminate walsender {pid}"),
            Step::DropSlot => f.write_str("drop slot"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Everything is already as it should be, or the event needs nothing.
    Nothing(String),
    /// The cluster contradicts the event: change nothing and fail.
    Refuse(String),
    /// Carry out these steps (never empty).
    Act(Vec<Step>),
}

/// What an event asks for, before anything is looked at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Triage {
    /// Nothing to do; `warn` when repmgr reported a failure.
    Ignore {
        why: String,
        warn: bool,
    },
    Promote,
    Standby,
}

pub fn triage(event: &Event) -> Triage {
    match (event.kind, event.success) {
        (Kind::Other, _) => Triage::Ignore { why: "not an event repmgr-nat acts on".into(), warn: false },
        (_, false) => Triage::Ignore { why: "repmgr reports it failed (success 0); ignored".into(), warn: true },
        (Kind::Promote, true) => Triage::Promote,
        (Kind::Standby, true) => Triage::Standby,
    }
}

/// A promote-type event (or reconcile's choice) for `node`.
///
/// The barman port moves first with the application port closed, barman is restarted
/// against the new primary, and the application port opens last, so that no
/// application write reaches the new primary before barman streams from it.
pub fn promote(node: NodeId, view: NodeView, routing: &Routing) -> Decision {
    if view.role != Role::Primary {
        return Decision::Refuse(format!("node {node} is in recovery, not a primary; nothing changed"));
    }
    let all = Routing::To(Route { node, open: Open::All });
    let barman_only = Routing::To(Route { node, open: Open::Barman });
    if *routing == all && view.slot.is_some() {
        return Decision::Nothing(format!("ports already point at node {node} and its slot exists"));
    }
    let mut steps = Vec::new();
    if *routing != all && *routing != barman_only {
        steps.push(Step::Route(Route { node, open: Open::Barman }));
    }
    if view.slot.is_none() {
        steps.push(Step::CreateSlot);
    }
    steps.push(Step::RestartBarman);
    if *routing != all {
        steps.push(Step::Route(Route { node, open: Open::All }));
    }
    Decision::Act(steps)
}

/// A standby-type event for `node`: a standby must not keep barman's slot, and the
/// ports must not point at it.
pub fn standby(node: NodeId, view: NodeView, routing: &Routing) -> Decision {
    if view.role != Role::Standby {
        return Decision::Refuse(format!("node {node} is not in recovery; a primary keeps its slot; nothing changed"));
    }
    let mut steps = Vec::new();
    if let Routing::To(route) = routing
        && route.node == node
        && route.open != Open::None
    {
        steps.push(Step::Route(Route { node, open: Open::None }));
    }
    match view.slot {
        Some(Slot { active_pid: Some(pid) }) => steps.extend([Step::TerminateWalsender(pid), Step::DropSlot]),
        Some(Slot { active_pid: None }) => steps.push(Step::DropSlot),
        None => {}
    }
    if steps.is_empty() {
        Decision::Nothing(format!("node {node} is a standby without the slot"))
    } else {
        Decision::Act(steps)
    }
}

/// Why a node could not be asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoAnswer {
    pub error: String,
    /// The server replied but could not be used (it refused the login, say): the node is
    /// up, so this is not "no node answers".
    pub replied: bool,
}

impl fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error)
    }
}

/// What each node answered: its view, or why it could not be asked.
pub type Answers = Vec<(NodeId, Result<NodeView, NoAnswer>)>;

/// Reconcile's choice of primary: the one node that says it is primary, or the node the
/// operator named, which must say so too.
pub fn choose_primary(answers: &Answers, named: Option<NodeId>) -> Result<NodeId, String> {
    if let Some(node) = named {
        return match answers.iter().find(|(id, _)| *id == node) {
            Some((_, Ok(view))) if view.role == Role::Primary => Ok(node),
            Some((_, Ok(_))) => Err(format!("node {node} is in recovery, not a primary; nothing changed")),
            Some((_, Err(e))) => Err(format!("node {node} cannot be asked ({e}); nothing changed")),
            None => Err(format!("node {node} is not configured; nothing changed")),
        };
    }
    let primaries: Vec<NodeId> =
        answers.iter().filter(|(_, a)| matches!(a, Ok(v) if v.role == Role::Primary)).map(|(id, _)| *id).collect();
    match primaries[..] {
        [one] => Ok(one),
        [] => Err(format!("no node is a primary ({}); nothing changed", claims(answers))),
        _ => Err(format!(
            "several nodes claim to be primary ({}); nothing changed; name the right one with --primary",
            claims(answers)
        )),
    }
}

/// "1: primary, 2: standby, 3: unreachable"
pub fn claims(answers: &Answers) -> String {
    answers
        .iter()
        .map(|(id, a)| match a {
            Ok(view) => format!("{id}: {}", view.role),
            Err(e) if e.replied => format!("{id}: cannot be asked"),
            Err(_) => format!("{id}: unreachable"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const N1: NodeId = NodeId(1);
    const N2: NodeId = NodeId(2);

    fn primary(slot: Option<Slot>) -> NodeView {
        NodeView { role: Role::Primary, slot }
    }
    fn standby_view(slot: Option<Slot>) -> NodeView {
        NodeView { role: Role::Standby, slot }
    }
    const IDLE: Option<Slot> = Some(Slot { active_pid: None });
    const ACTIVE: Option<Slot> = Some(Slot { active_pid: Some(4242) });
    fn to(node: NodeId, open: Open) -> Routing {
        Routing::To(Route { node, open })
    }
    fn route(node: NodeId, open: Open) -> Step {
        Step::Route(Route { node, open })
    }

    const ALREADY: &str = "ports already point at node 2 and its slot exists";
    const IN_RECOVERY: &str = "node 2 is in recovery, not a primary; nothing changed";
    const KEEPS_SLOT: &str = "node 2 is not in recovery; a primary keeps its slot; nothing changed";
    const NO_SLOT: &str = "node 2 is a standby without the slot";
    fn nothing(why: &str) -> Decision {
        Decision::Nothing(why.into())
    }
    fn refuse(why: &str) -> Decision {
        Decision::Refuse(why.into())
    }

    #[test]
    fn failed_and_other_events_are_ignored_before_anything_is_asked() {
        let triage_of = |name: &str, success: &str| triage(&Event::parse("2", name, Some(success)).unwrap());
        assert_eq!(triage_of("standby_promote", "1"), Triage::Promote);
        assert_eq!(triage_of("node_rejoin", "1"), Triage::Standby);
        for (name, success, warn) in
            [("standby_promote", "0", true), ("standby_follow", "0", true), ("repmgrd_start", "1", false)]
        {
            let Triage::Ignore { warn: warned, .. } = triage_of(name, success) else {
                panic!("{name} {success} not ignored")
            };
            assert_eq!(warned, warn, "{name} {success}");
        }
    }

    /// node 2's view, what the chains hold -> what a promote event for node 2 does.
    #[test]
    #[rustfmt::skip]
    fn promote_decision_table() {
        use Step::*;
        let (barman, all) = (route(N2, Open::Barman), route(N2, Open::All));
        let full = Decision::Act(vec![barman, CreateSlot, RestartBarman, all]);
        let full_with_slot = Decision::Act(vec![barman, RestartBarman, all]);
        let cases = [
            // fresh: no rules at all (first primary_register, or after a reboot)
            (primary(None),        Routing::Nothing,         full.clone()),
            // the usual failover: the rules point at the former primary
            (primary(None),        to(N1, Open::All),        full.clone()),
            (primary(IDLE),        to(N1, Open::All),        full_with_slot.clone()),
            (primary(None),        to(N1, Open::Barman),     full.clone()),
            (primary(None),        to(N1, Open::None),       full.clone()),
            (primary(None),        Routing::Unrecognised,    full.clone()),
            // the rules point at the node through the wrong ports
            (primary(IDLE),        to(N2, Open::None),       full_with_slot),
            // a promotion interrupted after the barman switch: finish it
            (primary(IDLE),        to(N2, Open::Barman),     Decision::Act(vec![RestartBarman, all])),
            (primary(None),        to(N2, Open::Barman),     Decision::Act(vec![CreateSlot, RestartBarman, all])),
            // ports right but slot missing: never close the application port for it
            (primary(None),        to(N2, Open::All),        Decision::Act(vec![CreateSlot, RestartBarman])),
            // already right: the second promote event of a failover costs nothing
            (primary(IDLE),        to(N2, Open::All),        nothing(ALREADY)),
            (primary(ACTIVE),      to(N2, Open::All),        nothing(ALREADY)),
            // stale promote: the node is a standby now
            (standby_view(None),   to(N1, Open::All),        refuse(IN_RECOVERY)),
            (standby_view(IDLE),   to(N2, Open::All),        refuse(IN_RECOVERY)),
        ];
        for (view, routing, expected) in cases {
            assert_eq!(promote(N2, view, &routing), expected, "view {view:?}, routing {routing:?}");
        }
    }

    #[test]
    fn promote_opens_the_application_port_last() {
        for routing in [Routing::Nothing, to(N1, Open::All), to(N2, Open::None), Routing::Unrecognised] {
            let Decision::Act(steps) = promote(N2, primary(None), &routing) else { panic!() };
            assert_eq!(steps.last(), Some(&route(N2, Open::All)));
            let opened = steps.iter().position(|s| *s == route(N2, Open::All)).unwrap();
            let barman = steps.iter().position(|s| *s == Step::RestartBarman).unwrap();
            assert!(barman < opened);
            assert_eq!(steps.iter().filter(|s| matches!(s, Step::Route(r) if r.node != N2)).count(), 0);
        }
    }

    /// node 2's view, what the chains hold -> what a standby-type event for node 2 does.
    #[test]
    #[rustfmt::skip]
    fn standby_decision_table() {
        use Step::*;
        let close = route(N2, Open::None);
        let cases = [
            (standby_view(None),   to(N1, Open::All),        nothing(NO_SLOT)),
            (standby_view(IDLE),   to(N1, Open::All),        Decision::Act(vec![DropSlot])),
            (standby_view(ACTIVE), to(N1, Open::All),        Decision::Act(vec![TerminateWalsender(4242), DropSlot])),
            (standby_view(IDLE),   Routing::Nothing,         Decision::Act(vec![DropSlot])),
            // the ports still point at the node that is a standby now: close them
            (standby_view(ACTIVE), to(N2, Open::All),        Decision::Act(vec![close, TerminateWalsender(4242), DropSlot])),
            (standby_view(None),   to(N2, Open::Barman),     Decision::Act(vec![close])),
            (standby_view(None),   to(N2, Open::None),       nothing(NO_SLOT)),
            // a standby-type event for the primary: the slot stays
            (primary(ACTIVE),      to(N2, Open::All),        refuse(KEEPS_SLOT)),
            (primary(None),        to(N1, Open::All),        refuse(KEEPS_SLOT)),
        ];
        for (view, routing, expected) in cases {
            assert_eq!(standby(N2, view, &routing), expected, "view {view:?}, routing {routing:?}");
        }
    }

    fn answers(list: &[(u32, Option<Role>)]) -> Answers {
        list.iter()
            .map(|(id, role)| {
                let answer = match role {
                    Some(role) => Ok(NodeView { role: *role, slot: None }),
                    None => Err(NoAnswer { error: "connection refused".to_string(), replied: false }),
                };
                (NodeId(*id), answer)
            })
            .collect()
    }

    #[test]
    fn reconcile_chooses_the_one_primary() {
        use Role::*;
        let a = answers(&[(1, None), (2, Some(Primary)), (3, Some(Standby))]);
        assert_eq!(choose_primary(&a, None), Ok(N2));
        assert_eq!(choose_primary(&a, Some(N2)), Ok(N2));
    }

    #[test]
    fn reconcile_refuses_none_or_several_unless_named() {
        use Role::*;
        let none = answers(&[(1, None), (2, Some(Standby))]);
        assert_eq!(
            choose_primary(&none, None),
            Err("no node is a primary (1: unreachable, 2: standby); nothing changed".into())
        );
        let two = answers(&[(1, Some(Primary)), (2, Some(Primary))]);
        assert_eq!(
            choose_primary(&two, None),
            Err("several nodes claim to be primary (1: primary, 2: primary); nothing changed; name the right one with --primary".into())
        );
        assert_eq!(choose_primary(&two, Some(N1)), Ok(N1));
        assert_eq!(
            choose_primary(&none, Some(N2)),
            Err("node 2 is in recovery, not a primary; nothing changed".into())
        );
        assert_eq!(
            choose_primary(&none, Some(N1)),
            Err("node 1 cannot be asked (connection refused); nothing changed".into())
        );
        assert_eq!(choose_primary(&none, Some(NodeId(9))), Err("node 9 is not configured; nothing changed".into()));
    }
}
