//! Carrying out the plans: the promote and standby paths, with the failure policy of
//! every step, for `event`, `reconcile` and `setup`.
//!
//! | step                    | when it fails                                                  |
//! |-------------------------|----------------------------------------------------------------|
//! | ask the node            | nothing is changed; exit 1                                     |
//! | route (barman / none)   | stop; the transaction is atomic, the rules are unchanged; exit 1 |
//! | create slot             | barman is not restarted; counts as barman not confirming       |
//! | restart barman          | barman did not confirm: see `open_app_on_failure`              |
//! | route (all)             | with barman unconfirmed: opened anyway and exit 1 (default), or left closed and exit 1 |
//! | terminate / drop slot   | stop; exit 1                                                   |
//! | cut old connections     | logged as an error; the switch stands                          |

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};

use crate::effects::barman::Backup;
use crate::core::config::{Config, NodeId};
use crate::effects::db::Cluster;
use crate::core::event::Event;
use crate::exit::Refused;
use crate::effects::nat::Nat;
use crate::core::plan::{self, Answers, Decision, Role, Step, Triage};
use crate::core::ruleset::{Open, Route, Routing};

/// The adapters a run acts through.
pub struct Effects<'a> {
    pub nat: &'a dyn Nat,
    pub cluster: &'a dyn Cluster,
    pub backup: &'a (dyn Backup + Sync),
    /// The adapters print the changes instead of making them (`--dry-run`).
    pub dry_run: bool,
}

/// `repmgr-nat event`: the caller holds the lock.
pub fn event(cfg: &Config, fx: &Effects, event: &Event) -> Result<()> {
    let label = format!("node {} {}", event.node, event.name);
    let triage = plan::triage(event);
    if let Triage::Ignore { why, .. } = triage {
        return carry_out(cfg, fx, event.node, &label, Decision::Nothing(why));
    }
    let view = fx.cluster.inspect(event.node).map_err(|e| anyhow!("{label}: {e:#}; nothing changed"))?;
    let routing = fx.nat.live()?.routing(cfg);
    let decision = match triage {
        Triage::Promote => plan::promote(event.node, view, &routing),
        _ => plan::standby(event.node, view, &routing),
    };
    carry_out(cfg, fx, event.node, &label, decision)
}

/// `repmgr-nat reconcile` and the live part of `setup`: ask every node, route to the
/// one primary (or the one named), take the slot off every standby.
pub fn reconcile(cfg: &Config, fx: &Effects, answers: Answers, named: Option<NodeId>) -> Result<()> {
    for (node, answer) in &answers {
        match answer {
            Ok(view) => {
                log::info!("node {node}: {}{}", view.role, if view.slot.is_some() { ", has the slot" } else { "" })
            }
            Err(e) => log::warn!("{e}"),
        }
    }
    let primary = plan::choose_primary(&answers, named).map_err(|why| Refused(format!("reconcile: {why}")))?;
    let view =
        answers.iter().find(|(id, _)| *id == primary).and_then(|(_, a)| a.clone().ok()).expect("chosen from answers");
    let routing = fx.nat.live()?.routing(cfg);
    let label = format!("node {primary} reconcile");
    let promoted = carry_out(cfg, fx, primary, &label, plan::promote(primary, view, &routing));

    // The standbys' slots go whatever happened to the promotion: a slot on a standby
    // only fills its disk.
    let mut failures = Vec::new();
    let after = Routing::To(Route { node: primary, open: Open::All });
    for (node, answer) in &answers {
        match answer {
            Ok(view) if *node != primary && view.role == Role::Standby => {
                let label = format!("node {node} reconcile");
                if let Err(e) = carry_out(cfg, fx, *node, &label, plan::standby(*node, *view, &after)) {
                    log::error!("{e:#}");
                    failures.push(node.to_string());
                }
            }
            Ok(_) if *node != primary => log::warn!("node {node} also claims to be primary; left alone"),
            _ => {}
        }
    }
    promoted?;
    if !failures.is_empty() {
        bail!("reconcile: could not take the slot off node(s) {}", failures.join(", "));
    }
    Ok(())
}

fn carry_out(cfg: &Config, fx: &Effects, node: NodeId, label: &str, decision: Decision) -> Result<()> {
    match decision {
        Decision::Nothing(why) => {
            log::info!("{label}: nothing to do: {why}");
            Ok(())
        }
        Decision::Refuse(why) => Err(Refused(format!("{label}: {why}")).into()),
        Decision::Act(steps) => execute(cfg, fx, node, label, &steps),
    }
}

/// Runs the steps in order with the failure policy in this module's table.
pub fn execute(cfg: &Config, fx: &Effects, node: NodeId, label: &str, steps: &[Step]) -> Result<()> {
    std::thread::scope(|scope| {
        // Stopping barman's receive-wal needs nothing from the steps before it: it runs
        // beside them, and the restart waits for it.
        let stopping =
            (steps.contains(&Step::RestartBarman) && !fx.dry_run).then(|| scope.spawn(|| fx.backup.stop_receive_wal()));
        execute_steps(cfg, fx, node, label, steps, stopping)
    })
}

type Stopping<'scope> = std::thread::ScopedJoinHandle<'scope, Result<()>>;

fn execute_steps(
    cfg: &Config,
    fx: &Effects,
    node: NodeId,
    label: &str,
    steps: &[Step],
    mut stopping: Option<Stopping>,
) -> Result<()> {
    let started = Instant::now();
    // Set when barman could not be brought to confirm the new primary.
    let mut unconfirmed: Option<anyhow::Error> = None;
    for step in steps {
        let step_started = Instant::now();
        let result = match *step {
            Step::Route(route) => {
                if let (Open::All, Some(e)) = (route.open, &unconfirmed) {
                    if !cfg.barman.open_app_on_failure {
                        bail!(
                            "{label}: barman did not confirm ({e:#}); application port left closed \
                             (barman.open_app_on_failure = false)"
                        );
                    }
                    log::error!("{label}: opening the application port although barman did not confirm");
                }
                fx.nat.switch(route).map(drop)
            }
            Step::CreateSlot => fx.cluster.create_slot(node),
            Step::RestartBarman if unconfirmed.is_some() => {
                log::warn!("{label}: barman not restarted: there is no slot to stream from");
                continue;
            }
            Step::RestartBarman => {
                let stopped = match stopping.take() {
                    Some(handle) => handle.join().unwrap_or_else(|_| Err(anyhow!("stopping receive-wal panicked"))),
                    None => fx.backup.stop_receive_wal(),
                };
                stopped.and_then(|()| restart_barman(fx, node))
            }
            Step::TerminateWalsender(pid) => fx.cluster.terminate(node, pid),
            Step::DropSlot => fx.cluster.drop_slot(node),
        };
        let ms = step_started.elapsed().as_millis();
        match result {
            Ok(()) if fx.dry_run => log::info!("{label}: would {step}"),
            Ok(()) => log::info!("{label}: {step} ({ms} ms)"),
            // barman's side: the promotion goes on (see open_app_on_failure).
            Err(e) if matches!(step, Step::CreateSlot | Step::RestartBarman) => {
                log::error!("{label}: {step} failed ({ms} ms): {e:#}");
                unconfirmed = Some(e);
            }
            Err(e) => return Err(e.context(format!("{label}: {step} failed ({ms} ms)"))),
        }
    }
    if !fx.dry_run {
        log::info!("{label}: done in {} ms", started.elapsed().as_millis());
    }
    match unconfirmed {
        Some(e) => Err(e.context(format!("{label}: barman did not confirm the new primary"))),
        None => Ok(()),
    }
}

/// How often the new primary writes a WAL record while barman waits for its switched
/// WAL file: barman archives a streamed file only once the next one has begun, and a
/// primary with the application port still closed may write nothing for seconds.
pub const NUDGE_EVERY: Duration = Duration::from_millis(50);

/// receive-wal is stopped by then: start it, and have barman confirm a WAL switch.
fn restart_barman(fx: &Effects, node: NodeId) -> Result<()> {
    fx.backup.start_receive_wal()?;
    let mut last = Instant::now() - NUDGE_EVERY;
    fx.backup.switch_wal(&mut || {
        if last.elapsed() >= NUDGE_EVERY {
            if let Err(e) = fx.cluster.emit_wal(node) {
                log::debug!("{e:#}");
            }
            last = Instant::now();
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::core::config::tests::example;
    use crate::exit;
    use crate::core::plan::{NoAnswer, NodeView, Slot};
    use crate::core::ruleset::{Live, restore_text};

    /// A node as the fake answers for it: role and slot, or unreachable.
    type FakeNode = (u32, Option<(Role, Option<Slot>)>);

    /// Records every call; fails the calls named in `failing`.
    struct Fake {
        calls: Mutex<Vec<String>>,
        routing: Mutex<Routing>,
        views: Answers,
        failing: Vec<&'static str>,
    }

    impl Fake {
        fn new(routing: Routing, views: &[FakeNode]) -> Fake {
            let views = views
                .iter()
                .map(|(id, v)| {
                    let answer = match v {
                        Some((role, slot)) => Ok(NodeView { role: *role, slot: *slot }),
                        None => Err(NoAnswer { error: "connection refused".to_string(), replied: false }),
                    };
                    (NodeId(*id), answer)
                })
                .collect();
            Fake { calls: Mutex::new(Vec::new()), routing: Mutex::new(routing), views, failing: Vec::new() }
        }

        fn failing(mut self, calls: &[&'static str]) -> Fake {
            self.failing.extend(calls);
            self
        }

        fn call(&self, name: String) -> Result<()> {
            let fails = self.failing.iter().any(|f| *f == name);
            self.calls.lock().unwrap().push(name.clone());
            if fails { Err(anyhow!("{name}: injected failure")) } else { Ok(()) }
        }

        /// The calls in order, but for "barman stop", which runs beside the first steps:
        /// it is checked to come before "barman start" and left out.
        fn calls(&self) -> Vec<String> {
            let calls = self.calls.lock().unwrap().clone();
            let stop = calls.iter().position(|c| c == "barman stop");
            let start = calls.iter().position(|c| c == "barman start");
            if let (Some(stop), Some(start)) = (stop, start) {
                assert!(stop < start, "receive-wal started before it was stopped: {calls:?}");
            }
            assert!(start.is_none() || stop.is_some(), "receive-wal started without a stop: {calls:?}");
            calls.into_iter().filter(|c| c != "barman stop").collect()
        }

        fn stopped_barman(&self) -> bool {
            self.calls.lock().unwrap().iter().any(|c| c == "barman stop")
        }
    }

    impl Nat for Fake {
        fn live(&self) -> Result<Live> {
            let cfg = example();
            Ok(match *self.routing.lock().unwrap() {
                Routing::To(route) => Live::parse(&cfg, &restore_text(&cfg, route)),
                Routing::Nothing => Live::default(),
                Routing::Unrecognised => Live::parse(&cfg, "*nat\n-A repmgr_dnat -j ACCEPT\nCOMMIT\n"),
            })
        }
        fn switch(&self, route: Route) -> Result<bool> {
            self.call(format!("route {route}"))?;
            let changed = *self.routing.lock().unwrap() != Routing::To(route);
            *self.routing.lock().unwrap() = Routing::To(route);
            Ok(changed)
        }
    }

    impl Cluster for Fake {
        fn inspect(&self, node: NodeId) -> Result<NodeView> {
            self.call(format!("inspect {node}"))?;
            let answer = self.views.iter().find(|(id, _)| *id == node).map(|(_, a)| a.clone()).unwrap();
            answer.map_err(|e| anyhow!("node {node}: {e}"))
        }
        fn inspect_all(&self) -> Answers {
            self.calls.lock().unwrap().push("inspect all".into());
            self.views.clone()
        }
        fn create_slot(&self, node: NodeId) -> Result<()> {
            self.call(format!("create slot {node}"))
        }
        fn terminate(&self, node: NodeId, pid: i32) -> Result<()> {
            self.call(format!("terminate {pid} on {node}"))
        }
        fn drop_slot(&self, node: NodeId) -> Result<()> {
            self.call(format!("drop slot {node}"))
        }
        fn emit_wal(&self, node: NodeId) -> Result<()> {
            self.call(format!("emit wal {node}"))
        }
    }

    impl Backup for Fake {
        fn stop_receive_wal(&self) -> Result<()> {
            self.call("barman stop".into())
        }
        fn start_receive_wal(&self) -> Result<()> {
            self.call("barman start".into())
        }
        fn switch_wal(&self, while_waiting: &mut dyn FnMut()) -> Result<()> {
            while_waiting();
            self.call("barman switch-wal".into())
        }
    }

    fn to(node: u32, open: Open) -> Routing {
        Routing::To(Route { node: NodeId(node), open })
    }
    const IDLE: Option<Slot> = Some(Slot { active_pid: None });

    fn run_event(cfg: &Config, fake: &Fake, node: u32, name: &str) -> Result<()> {
        let fx = Effects { nat: fake, cluster: fake, backup: fake, dry_run: false };
        event(cfg, &fx, &Event::parse(&node.to_string(), name, Some("1")).unwrap())
    }

    const FAILOVER: [&str; 7] = [
        "inspect 2",
        "route node 2 ports barman",
        "create slot 2",
        "barman start",
        "emit wal 2",
        "barman switch-wal",
        "route node 2 ports all",
    ];

    #[test]
    fn promote_moves_barman_first_and_opens_the_application_port_last() {
        let cfg = example();
        let fake = Fake::new(to(1, Open::All), &[(2, Some((Role::Primary, None)))]);
        run_event(&cfg, &fake, 2, "standby_promote").unwrap();
        assert_eq!(fake.calls(), FAILOVER);
        assert_eq!(*fake.routing.lock().unwrap(), to(2, Open::All));
    }

    #[test]
    fn the_second_promote_event_of_a_failover_changes_nothing() {
        let cfg = example();
        let first = Fake::new(to(1, Open::All), &[(2, Some((Role::Primary, None)))]);
        run_event(&cfg, &first, 2, "standby_promote").unwrap();
        assert_eq!(first.calls(), FAILOVER);
        assert!(first.stopped_barman());
        // repmgrd_failover_promote follows: the node now has the slot, the ports point at it
        let routing = first.routing.lock().unwrap().clone();
        let second = Fake::new(routing, &[(2, Some((Role::Primary, IDLE)))]);
        run_event(&cfg, &second, 2, "repmgrd_failover_promote").unwrap();
        assert_eq!(second.calls(), ["inspect 2"]);
        assert!(!second.stopped_barman());
    }

    #[test]
    fn a_promote_for_a_standby_or_an_unreachable_node_changes_nothing() {
        let cfg = example();
        let fake = Fake::new(to(1, Open::All), &[(2, Some((Role::Standby, None)))]);
        let err = run_event(&cfg, &fake, 2, "standby_promote").unwrap_err();
        assert_eq!(exit::code(&err), exit::REFUSED);
        assert_eq!(format!("{err:#}"), "node 2 standby_promote: node 2 is in recovery, not a primary; nothing changed");
        assert_eq!(fake.calls(), ["inspect 2"]);

        let fake = Fake::new(to(1, Open::All), &[(2, None)]);
        let err = run_event(&cfg, &fake, 2, "repmgrd_failover_promote").unwrap_err();
        assert_eq!(exit::code(&err), exit::FAILED);
        assert_eq!(format!("{err:#}"), "node 2 repmgrd_failover_promote: node 2: connection refused; nothing changed");
        assert_eq!(fake.calls(), ["inspect 2"]);
    }

    #[test]
    fn a_failed_nat_switch_stops_before_the_slot_and_barman() {
        let cfg = example();
        let fake =
            Fake::new(to(1, Open::All), &[(2, Some((Role::Primary, None)))]).failing(&["route node 2 ports barman"]);
        let err = run_event(&cfg, &fake, 2, "standby_promote").unwrap_err();
        assert_eq!(exit::code(&err), exit::FAILED);
        // receive-wal may have been stopped beside the switch; barman's cron restarts it
        assert_eq!(fake.calls(), ["inspect 2", "route node 2 ports barman"]);
        assert_eq!(*fake.routing.lock().unwrap(), to(1, Open::All));
    }

    #[test]
    fn barman_failures_open_the_application_port_anyway_by_default() {
        let cfg = example();
        for (failing, last_barman_call) in [
            ("barman switch-wal", "barman switch-wal"),
            ("barman start", "barman start"),
            ("barman stop", "create slot 2"),
        ] {
            let fake = Fake::new(to(1, Open::All), &[(2, Some((Role::Primary, None)))]).failing(&[failing]);
            let err = run_event(&cfg, &fake, 2, "standby_promote").unwrap_err();
            assert_eq!(exit::code(&err), exit::FAILED);
            assert!(format!("{err:#}").contains("barman did not confirm the new primary"), "{err:#}");
            let calls = fake.calls();
            assert_eq!(calls.last().unwrap(), "route node 2 ports all", "after {failing}");
            assert_eq!(calls[calls.len() - 2], last_barman_call, "after {failing}: nothing more of barman");
        }
    }

    #[test]
    fn barman_failure_can_keep_the_application_port_closed() {
        let mut cfg = example();
        cfg.barman.open_app_on_failure = false;
        let fake = Fake::new(to(1, Open::All), &[(2, Some((Role::Primary, None)))]).failing(&["barman switch-wal"]);
        let err = run_event(&cfg, &fake, 2, "standby_promote").unwrap_err();
        assert_eq!(exit::code(&err), exit::FAILED);
        assert!(format!("{err:#}").contains("application port left closed"), "{err:#}");
        assert_eq!(fake.calls(), &FAILOVER[..6]);
        assert_eq!(*fake.routing.lock().unwrap(), to(2, Open::Barman));
    }

    #[test]
    fn no_slot_no_barman_restart() {
        let cfg = example();
        let fake = Fake::new(Routing::Nothing, &[(1, Some((Role::Primary, None)))]).failing(&["create slot 1"]);
        let err = run_event(&cfg, &fake, 1, "primary_register").unwrap_err();
        assert_eq!(exit::code(&err), exit::FAILED);
        assert_eq!(fake.calls(), ["inspect 1", "route node 1 ports barman", "create slot 1", "route node 1 ports all"]);
    }

    #[test]
    fn standby_path_terminates_the_walsender_then_drops_the_slot() {
        let cfg = example();
        let active = Some(Slot { active_pid: Some(77) });
        let fake = Fake::new(to(2, Open::All), &[(1, Some((Role::Standby, active)))]);
        run_event(&cfg, &fake, 1, "node_rejoin").unwrap();
        assert_eq!(fake.calls(), ["inspect 1", "terminate 77 on 1", "drop slot 1"]);

        let fake = Fake::new(to(2, Open::All), &[(1, Some((Role::Standby, IDLE)))]).failing(&["drop slot 1"]);
        let err = run_event(&cfg, &fake, 1, "standby_follow").unwrap_err();
        assert_eq!(exit::code(&err), exit::FAILED);
        let text = format!("{err:#}");
        assert!(text.starts_with("node 1 standby_follow: drop slot failed ("), "{text}");
        assert!(text.ends_with(" ms): drop slot 1: injected failure"), "{text}");
    }

    #[test]
    fn a_standby_event_for_the_primary_keeps_its_slot() {
        let cfg = example();
        let fake = Fake::new(to(1, Open::All), &[(1, Some((Role::Primary, IDLE)))]);
        let err = run_event(&cfg, &fake, 1, "standby_register").unwrap_err();
        assert_eq!(exit::code(&err), exit::REFUSED);
        assert_eq!(fake.calls(), ["inspect 1"]);
    }

    fn run_reconcile(cfg: &Config, fake: &Fake, named: Option<u32>) -> Result<()> {
        let fx = Effects { nat: fake, cluster: fake, backup: fake, dry_run: false };
        reconcile(cfg, &fx, fake.inspect_all(), named.map(NodeId))
    }

    #[test]
    fn reconcile_follows_a_promotion_done_behind_repmgrs_back() {
        let cfg = example();
        let fake = Fake::new(to(1, Open::All), &[(1, Some((Role::Standby, IDLE))), (2, Some((Role::Primary, None)))]);
        run_reconcile(&cfg, &fake, None).unwrap();
        let mut expected = vec!["inspect all"];
        expected.extend(&FAILOVER[1..]);
        expected.push("drop slot 1");
        assert_eq!(fake.calls(), expected);
    }

    #[test]
    fn reconcile_with_two_primaries_changes_nothing_unless_told() {
        let cfg = example();
        let views = [(1, Some((Role::Primary, IDLE))), (2, Some((Role::Primary, None)))];
        let fake = Fake::new(to(1, Open::All), &views);
        let err = run_reconcile(&cfg, &fake, None).unwrap_err();
        assert_eq!(exit::code(&err), exit::REFUSED);
        assert_eq!(
            format!("{err:#}"),
            "reconcile: several nodes claim to be primary (1: primary, 2: primary); nothing changed; name the right one with --primary"
        );
        assert_eq!(fake.calls(), ["inspect all"]);

        let fake = Fake::new(to(1, Open::All), &views);
        run_reconcile(&cfg, &fake, Some(2)).unwrap();
        assert_eq!(fake.calls().last().unwrap(), "route node 2 ports all");
        assert!(!fake.calls().contains(&"drop slot 1".to_string()), "a primary's slot was dropped");
    }

    #[test]
    fn reconcile_reports_a_standby_it_could_not_clean() {
        let cfg = example();
        let views = [(1, Some((Role::Standby, IDLE))), (2, Some((Role::Primary, IDLE))), (3, None)];
        let mut cfg3 = cfg.clone();
        cfg3.nodes.insert(NodeId(3), "10.8.4.1".parse().unwrap());
        let fake = Fake::new(to(2, Open::All), &views).failing(&["drop slot 1"]);
        let err = run_reconcile(&cfg3, &fake, None).unwrap_err();
        assert_eq!(format!("{err:#}"), "reconcile: could not take the slot off node(s) 1");
        assert_eq!(fake.calls(), ["inspect all", "drop slot 1"]);
    }
}
