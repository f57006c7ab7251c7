//! `repmgr-nat watch`: the level-triggered service. It keeps a connection to every node
//! and asks each one every `watch.interval_ms` (every 50 ms while the routed primary does
//! not answer: a promotion is near; at once when the kept connection ends, as a node's
//! shutdown ends it), follows the nat table through one `sudo ... route --show --follow`
//! (a reading whenever it changes; `nat_cache`), and whenever the legitimate primary,
//! the rules, the slot or barman disagree it carries out the plan an event would, through
//! the same code and under the same run lock. A lost event, a nat table flushed by someone
//! else, a slot dropped by hand: each costs one pass, not an outage.
//!
//! Each node is asked by a task of its own, so a frozen or unreachable node delays nobody:
//! a pass decides on every node's latest answer, and an answer older than the deadline
//! counts as silence. A `Watcher` holds what the passes remember, in parts: the last
//! reading of the rules (`nat_cache`), the run lock (`lock_gate`), the retry after a failed
//! action, and barman's receive-wal (`receive_wal`, its policy in `core::receive_wal`); it
//! reads the time through `Clock`, so its tests set it.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::adapters::Adapters;
use crate::clock::{Clock, SystemClock};
use crate::core::config::{Config, Watch};
use crate::core::metrics::{self, Snapshot, Tracker};
use crate::core::plan::{self, Ask, Decision, Situation, Step};
use crate::core::receive_wal::ReceiveWal;
use crate::core::retry::Retry;
use crate::core::ruleset::{Open, Record, Route, Routing};
use crate::core::view::{Answer, Primary, View};
use crate::core::watch_json::{Action, WatchReport};
use crate::effects::barman::BarmanCli;
use crate::effects::exporter;
use crate::effects::state::RunLock;
use crate::effects::watch_file;
use crate::handler::{self, Effects};

mod lock_gate;
mod nat_cache;
mod poll;
mod receive_wal;
use lock_gate::LockGate;
use nat_cache::NatCache;
use poll::{Pollers, Signals, Wake};
use receive_wal::RECEIVE_WAL_LOG;

/// Runs until SIGTERM or SIGINT. A dry run prints what it would do and changes nothing:
/// it writes no watch.json and no event counts, serves no metrics and takes no run lock.
pub fn run(adapters: &Adapters) -> Result<()> {
    let cfg = &adapters.ctx.cfg;
    let dry_run = adapters.ctx.dry_run;
    let rt = adapters.runtime()?;
    let cluster = adapters.cluster()?;
    let barman = cfg.barman.as_ref().map(|b| BarmanCli::new(b).receive_wal_output(cfg.watch.dir.join(RECEIVE_WAL_LOG)));
    adapters.effects_with(&cluster, barman.as_ref(), |fx| {
        let mut watcher = Watcher::new(adapters.run_lock(), Rc::new(SystemClock));
        if dry_run {
            log::info!("watch: --dry-run: printing what it would do; no watch.json, no metrics, no run lock");
            watcher.dry_run = true;
        } else {
            std::fs::create_dir_all(&cfg.watch.dir)
                .with_context(|| format!("cannot create watch.dir {}", cfg.watch.dir.display()))?;
            if let Err(e) = exporter::create_event_counts(&cfg.watch.dir) {
                log::error!("watch: {e:#}: events are not counted");
            }
            if let Some(addr) = cfg.watch.metrics {
                let cluster = cfg.instance.name().to_string();
                exporter::serve(addr, Arc::clone(&watcher.snapshot), cfg.watch.dir.clone(), cluster);
            }
            watcher.writes_report = true;
        }
        let asking = poll::Asking { cfg: Arc::new(cfg.clone()), pool: cluster.pool() };
        let nodes = Pollers::start(rt, cfg, Arc::new(asking));
        let mut signals = rt.block_on(Signals::new())?;
        // The first pass waits for every node's first answer, within a node's deadline.
        if rt.block_on(nodes.first_answers(cfg, signals.stop())) == Wake::Stop {
            log::info!("watch: stopping");
            return Ok(());
        }
        // what barman had confirmed, as the watch before this one saw it
        watcher.receive_wal.confirmed = watch_file::read(cfg).and_then(|r| r.barman_confirmed);
        log::info!(
            "watch: asking {} nodes every {} ms (every {} ms while the routed primary does not answer)",
            cfg.nodes.len(),
            cfg.watch.interval.as_millis(),
            Watch::HURRY.min(cfg.watch.interval).as_millis()
        );
        loop {
            let reason = match watcher.gate.fresh_after.take() {
                Some(since) => rt.block_on(nodes.answers_since(since, cfg, &mut signals)),
                None => rt.block_on(nodes.wait(cfg.watch.interval, &mut signals)),
            };
            if reason == Wake::Stop {
                log::info!("watch: stopping");
                return Ok(());
            }
            let view = nodes.view(cfg);
            let hurry = watcher.pass(cfg, fx, &view);
            nodes.hurry.store(hurry, Ordering::Relaxed);
        }
    })
}

/// What the passes remember between them, in the parts the policy keeps.
struct Watcher {
    clock: Rc<dyn Clock>,
    /// Whether each pass writes watch.json (not in a dry run).
    writes_report: bool,
    /// A dry run: the rules never change, so each plan is printed once, not every pass.
    dry_run: bool,
    printed: Option<Vec<Step>>,
    started_ms: u64,
    passes: u64,
    nat: NatCache,
    gate: LockGate,
    /// After a failed action: not again before its backoff.
    retry: Retry,
    receive_wal: ReceiveWal,
    /// One line about what the pass saw; logged when it changes.
    seen: String,
    last_action: Option<Action>,
    /// The figures the metrics show, and where the listener reads the last pass's.
    metrics: Tracker,
    snapshot: Arc<Mutex<Snapshot>>,
    /// Where the metrics' monotonic durations start.
    began: Instant,
    /// Since when (unix ms) the application ports have not forwarded to the legitimate
    /// primary (for `can-serve`).
    misrouted_since: Option<u64>,
}

impl Watcher {
    /// The metrics' shared snapshot starts as the tracker's own (no pass yet), not empty.
    fn new(run_lock: Box<dyn RunLock>, clock: Rc<dyn Clock>) -> Watcher {
        let metrics = Tracker::new(clock.now_ms());
        Watcher {
            writes_report: false,
            dry_run: false,
            printed: None,
            started_ms: clock.now_ms(),
            began: clock.now(),
            snapshot: Arc::new(Mutex::new(metrics.snapshot().clone())),
            metrics,
            clock,
            passes: 0,
            nat: NatCache::default(),
            gate: LockGate::new(run_lock),
            retry: Retry::default(),
            receive_wal: ReceiveWal::default(),
            seen: String::new(),
            last_action: None,
            misrouted_since: None,
        }
    }

    /// One pass: decide from the view, act if need be, keep barman streaming, report.
    /// Returns whether the next answers are needed in a hurry.
    fn pass(&mut self, cfg: &Config, fx: &Effects, view: &View) -> bool {
        let began = self.mono_ms();
        self.passes += 1;
        let (routing, in_place) = match self.nat.get(cfg, fx.nat, self.clock.now()) {
            Ok(read) => read,
            Err(e) => {
                self.say(format!("cannot read the rules: {e:#}"));
                return true;
            }
        };
        let record = fx.nat.recorded().unwrap_or_else(|e| {
            log::error!("watch: {e:#}");
            None
        });
        let seen = Situation::new(view, routing, in_place, record);
        let arbitration = &seen.arbitration;
        self.say(format!("primary: {}; rules: {}; nodes: {}", arbitration.describe(), seen.routing, brief(view)));

        // the rules as they stand after the pass
        let (after, record) = match plan::decide(cfg, Ask::Watch, &seen) {
            Decision::Act(steps) if self.dry_run && self.printed.as_ref() == Some(&steps) => {
                (seen.routing.clone(), seen.record)
            }
            Decision::Act(steps) => {
                self.printed = self.dry_run.then_some(steps);
                self.act(cfg, fx, view).unwrap_or_else(|| self.read_again(cfg, fx, &seen))
            }
            _ => {
                let now = self.clock.now();
                receive_wal::keep_streaming(&mut self.receive_wal, &mut self.gate, cfg, fx, (view, &seen.routing), now);
                (seen.routing.clone(), seen.record)
            }
        };
        let hurry = match (&arbitration.primary, &after) {
            (Primary::Legit { node, .. }, Routing::To(route)) => route.node != *node,
            _ => true,
        };
        // serving: the application ports forward to a legitimate primary (none seen, as
        // from a proxy cut off from the new primary, is not serving either)
        let serving = match &arbitration.primary {
            Primary::Legit { node, .. } => after == Routing::To(Route::new(*node, Open::All)),
            _ => false,
        };
        let now_ms = self.clock.now_ms();
        self.misrouted_since = if serving { None } else { Some(self.misrouted_since.unwrap_or(now_ms)) };
        self.write_report(cfg, &arbitration.describe(), &after, view, hurry);
        self.metrics.pass(metrics::Pass {
            began_mono_ms: began,
            ended_mono_ms: self.mono_ms(),
            ended_ms: now_ms,
            view,
            arbitration,
            routing: &after,
            recorded: record,
            barman: cfg.barman.is_some(),
        });
        if let Ok(mut shared) = self.snapshot.lock() {
            *shared = self.metrics.snapshot().clone();
        }
        hurry
    }

    fn mono_ms(&self) -> u64 {
        self.clock.now().duration_since(self.began).as_millis() as u64
    }

    /// Under the run lock (when another run holds it, that run does the work: the next
    /// pass sees the result), with the rules read again, the plan an event would carry out.
    /// The rules and the record it left, when it acted and all went through: known without
    /// reading them again.
    fn act(&mut self, cfg: &Config, fx: &Effects, view: &View) -> Option<(Routing, Option<Record>)> {
        if !self.retry.ready(self.clock.now()) {
            return None;
        }
        let _lock = self.gate.take(self.clock.now())?;
        self.nat.forget(self.clock.now());
        let timed = nat_cache::Timed { inner: fx.nat, clock: &*self.clock, switched: Cell::new(None) };
        let result = handler::act_on(cfg, &Effects { nat: &timed, ..*fx }, Ask::Watch, "watch", view);
        let switched = timed.switched.get();
        self.metrics.acted(result.is_ok());
        let mut after = None;
        let (steps, result) = match result {
            Ok(acted) => {
                self.retry.succeeded();
                // a dry run changed nothing: the rules are still what it saw
                let carried_out: &[Step] = if self.dry_run { &[] } else { &acted.steps };
                let (routing, in_place, record) = acted.seen.after(carried_out);
                self.nat.set(routing.clone(), in_place, switched.unwrap_or_else(|| self.clock.now()));
                after = Some((routing, record));
                (acted.steps, "ok".to_string())
            }
            Err(e) => {
                let backoff = self.retry.failed(cfg.watch.interval, self.clock.now());
                log::error!("watch: {e:#}; trying again in {} ms", backoff.as_millis());
                (Vec::new(), format!("error: {e:#}"))
            }
        };
        if !steps.is_empty() || result != "ok" {
            self.last_action = Some(Action {
                at_ms: self.clock.now_ms(),
                steps: steps.iter().map(|s| s.to_string()).collect(),
                result,
            });
        }
        after
    }

    /// The rules and the record after a pass that did not act, or failed: read again when
    /// the pass could not say what they hold (and kept for the next pass).
    fn read_again(&mut self, cfg: &Config, fx: &Effects, seen: &Situation) -> (Routing, Option<Record>) {
        match self.nat.get(cfg, fx.nat, self.clock.now()) {
            Ok((after, _)) if after != seen.routing => (after, fx.nat.recorded().ok().flatten()),
            _ => (seen.routing.clone(), seen.record),
        }
    }

    /// Logs `line` when it differs from the last one: one line per change, not per pass.
    fn say(&mut self, line: String) {
        if line != self.seen {
            log::info!("watch: {line}");
            self.seen = line;
        }
    }

    fn write_report(&self, cfg: &Config, primary: &str, routing: &Routing, view: &View, hurry: bool) {
        if !self.writes_report {
            return;
        }
        let report = WatchReport {
            version: 1,
            pid: std::process::id(),
            started_ms: self.started_ms,
            pass: self.passes,
            passed_ms: self.clock.now_ms(),
            interval_ms: cfg.watch.interval.as_millis() as u64,
            hurry,
            primary: primary.to_string(),
            rules: routing.to_string(),
            nodes: view.describe(),
            unanswered: view.nodes.iter().filter(|(_, a)| a.state().is_none()).map(|(n, _)| n.id()).collect(),
            // what the last receive-wal said: read only while barman does not stream
            receive_wal: self.receive_wal.describe(self.clock.now(), || receive_wal::last_said(&cfg.watch.dir)),
            barman_confirmed: self.receive_wal.confirmed,
            last_action: self.last_action.clone(),
            misrouted_since_ms: self.misrouted_since,
        };
        if let Err(e) = watch_file::write(&cfg.watch.dir, &report) {
            log::debug!("watch: {e:#}");
        }
    }
}

/// "1: primary/1, 2: down"
fn brief(view: &View) -> String {
    view.nodes
        .iter()
        .map(|(node, answer)| {
            let what = match answer {
                Answer::Up(s) => format!("{}/{}", s.role, s.timeline),
                other => other.kind().to_string(),
            };
            format!("{}: {what}", node.id())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::dressed;
    use crate::clock::FakeClock;
    use crate::core::config::tests::example;
    use crate::core::view::tests::view;
    use crate::core::view::{Lsn, Slot};
    use crate::effects::db::Cluster;
    use crate::effects::dryrun::Sink;
    use crate::effects::state::NoRunLock;
    use crate::effects::testing::Call::{self, *};
    use crate::effects::testing::{Fake, FakeRunLock, IDLE, LockState, down, primary, rec, standby};
    use std::cell::Cell;
    use std::time::Duration;

    /// A watch over the fakes, on a clock that moves only when told, with a run lock the
    /// test hands out.
    struct Rig {
        cfg: Config,
        fake: Fake,
        clock: Rc<FakeClock>,
        lock: Rc<Cell<LockState>>,
        watcher: Watcher,
    }

    impl Rig {
        fn new(fake: Fake) -> Rig {
            let mut cfg = example();
            cfg.watch.dir = std::path::PathBuf::from("/nonexistent/repmgr-nat-test-watch");
            let clock = Rc::new(FakeClock::new());
            let lock = Rc::new(Cell::new(LockState::Free));
            let watcher = Watcher::new(Box::new(FakeRunLock(Rc::clone(&lock))), Rc::clone(&clock) as Rc<dyn Clock>);
            Rig { cfg, fake, clock, lock, watcher }
        }

        /// One pass over `view`, `after` the last: what it asked of the fakes, and whether
        /// it is in a hurry.
        fn pass(&mut self, after: Duration, view: &View) -> (Vec<Call>, bool) {
            self.clock.advance(after);
            let fx = Effects { nat: &self.fake, cluster: &self.fake, backup: &self.fake };
            let hurry = self.watcher.pass(&self.cfg, &fx, view);
            (self.fake.take_calls(), hurry)
        }
    }

    const ZERO: Duration = Duration::ZERO;
    const INTERVAL: Duration = Duration::from_millis(250);
    /// The failover of node 1 to node 2, as watch carries it out.
    const FAILOVER: [Call; 3] = [CreateSlot(2), Switch(2, Open::All, 2), BarmanStart];
    const STREAMING: Option<Slot> = Some(Slot { active_pid: Some(4242), restart_lsn: Some(Lsn(0x300_0000)) });

    /// What one pass does, from what it sees: nothing while everything agrees, the plan
    /// an event would carry out when something does not, and a hurry until the routed
    /// primary is the legitimate one.
    #[test]
    fn a_pass_acts_when_the_cluster_and_the_rules_disagree() {
        // watch does not wait for barman's confirmation (an event does)
        let failover = FAILOVER.to_vec();
        // (what the rules were switched to, what the nodes say, what the pass does, hurry after)
        let rows = [
            (rec(2, Open::All, 2), view(&[(1, standby(IDLE)), (2, primary(2, STREAMING))]), vec![], false),
            (rec(1, Open::All, 1), view(&[(1, down()), (2, primary(2, None))]), failover, false),
            // no primary: a down node keeps barman's port only; the standby gets its slot
            (
                rec(1, Open::All, 1),
                view(&[(1, down()), (2, standby(None))]),
                vec![Switch(1, Open::Barman, 1), CreateSlot(2)],
                true,
            ),
            (rec(1, Open::All, 1), view(&[(1, primary(1, STREAMING)), (2, standby(IDLE))]), vec![], false),
            // rules never set: routed to the primary, the slots made
            (
                None,
                view(&[(1, primary(1, None)), (2, standby(None))]),
                vec![CreateSlot(1), Switch(1, Open::All, 1), BarmanStart, CreateSlot(2)],
                false,
            ),
        ];
        for (i, (record, nodes, expected, hurry)) in rows.into_iter().enumerate() {
            let mut rig = Rig::new(Fake::new(record, nodes.clone()));
            assert_eq!(rig.pass(ZERO, &nodes), (expected, hurry), "row {i}");
        }
    }

    /// Reading the nat table is a root process through sudo (`route --show`): a pass that
    /// acts reads it once before deciding and once under the run lock, and then knows what
    /// its switch left; a pass that does not act reads it at most every `NAT_EVERY`.
    #[test]
    fn a_pass_reads_the_rules_once_and_again_only_under_the_lock_it_acts_under() {
        let promoted = view(&[(1, down()), (2, primary(2, None))]);
        let mut rig = Rig::new(Fake::new(rec(1, Open::All, 1), promoted.clone()));
        let reads = |rig: &Rig| rig.fake.reads.swap(0, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(rig.pass(ZERO, &promoted), (FAILOVER.to_vec(), false));
        assert_eq!(reads(&rig), 2, "an acting pass");
        assert_eq!(rig.watcher.misrouted_since, None, "what the switch left is what the pass reports");
        let after = view(&[(1, down()), (2, primary(2, STREAMING))]);
        assert_eq!(rig.pass(INTERVAL, &after), (vec![], false));
        assert_eq!(reads(&rig), 0, "the switch's result, kept");
        assert_eq!(rig.pass(Watch::NAT_EVERY, &after), (vec![], false));
        assert_eq!(reads(&rig), 1, "read again after NAT_EVERY");
    }

    /// barman's steps after the switch take 2 s: what the switch left is known as of when
    /// it returned, so a change of the tables meanwhile (root's reading, taken later) wins.
    #[test]
    fn what_a_switch_left_is_known_from_when_it_returned_not_when_the_action_ended() {
        struct Slow<'a>(&'a Fake, &'a FakeClock);
        impl crate::effects::barman::Backup for Slow<'_> {
            fn stop_receive_wal(&self) -> Result<()> {
                self.0.stop_receive_wal()
            }
            fn start_receive_wal(&self) -> Result<()> {
                self.1.advance(Duration::from_secs(2));
                self.0.start_receive_wal()
            }
            fn switch_wal(&self, while_waiting: &mut dyn FnMut()) -> Result<()> {
                self.0.switch_wal(while_waiting)
            }
        }
        let promoted = view(&[(1, down()), (2, primary(2, None))]);
        let mut rig = Rig::new(Fake::new(rec(1, Open::All, 1), promoted.clone()));
        let started = rig.clock.now();
        let slow = Slow(&rig.fake, &rig.clock);
        let fx = Effects { nat: &rig.fake, cluster: &rig.fake, backup: &slow };
        rig.watcher.pass(&rig.cfg, &fx, &promoted);
        assert_eq!(rig.fake.take_calls(), FAILOVER);
        assert_eq!(rig.clock.now(), started + Duration::from_secs(2), "barman's start took 2 s");
        assert_eq!(rig.watcher.nat.known_at(), Some(started), "known as of the switch");
    }

    /// For `can-serve`: since when the application ports have missed the legitimate
    /// primary, kept from the first pass that saw it, cleared by the first that does not.
    #[test]
    fn misrouted_since_is_the_first_pass_that_missed_the_primary() {
        let promoted = view(&[(1, down()), (2, primary(2, None))]);
        let mut rig = Rig::new(Fake::new(rec(1, Open::All, 1), promoted.clone()));
        rig.lock.set(LockState::Held);
        rig.pass(ZERO, &promoted);
        let since = rig.clock.now_ms();
        assert_eq!(rig.watcher.misrouted_since, Some(since));
        rig.pass(INTERVAL, &promoted);
        assert_eq!(rig.watcher.misrouted_since, Some(since), "kept");
        // nobody answers as primary: not serving either
        let none = view(&[(1, down()), (2, down())]);
        rig.pass(INTERVAL, &none);
        assert_eq!(rig.watcher.misrouted_since, Some(since));
        rig.lock.set(LockState::Free);
        rig.pass(INTERVAL, &promoted); // the lock was contended: this pass only notes it
        assert_eq!(rig.pass(INTERVAL, &promoted).0, FAILOVER);
        assert_eq!(rig.watcher.misrouted_since, None);
    }

    #[test]
    fn a_failed_action_is_tried_again_after_a_backoff_that_doubles() {
        let nodes = view(&[(1, down()), (2, primary(2, None))]);
        let mut rig = Rig::new(Fake::new(rec(1, Open::All, 1), nodes.clone()).failing(&[Switch(2, Open::All, 2)]));
        let failed = vec![CreateSlot(2), Switch(2, Open::All, 2)];
        // (time since the last pass, what the pass does)
        let rows = [
            (ZERO, failed.clone()),
            (INTERVAL - Duration::from_millis(1), vec![]),
            (Duration::from_millis(1), failed.clone()), // 250 ms after the first failure
            (INTERVAL, vec![]),                         // the second waits 500 ms
            (INTERVAL, failed),
        ];
        for (i, (after, expected)) in rows.into_iter().enumerate() {
            assert_eq!(rig.pass(after, &nodes).0, expected, "row {i}");
        }
        let action = rig.watcher.last_action.clone().unwrap();
        assert!(action.result.starts_with("error: "), "{action:?}");
        rig.fake.heal();
        assert_eq!(rig.pass(INTERVAL * 4, &nodes).0, FAILOVER, "once the switch works");
        assert_eq!(rig.watcher.last_action.unwrap().result, "ok");
    }

    /// Another run holds the run lock: it does the work. Once it let go, watch does not act
    /// on answers that may predate that work: the next pass waits for fresh ones.
    #[test]
    fn after_another_run_held_the_lock_the_next_pass_decides_on_fresh_answers() {
        let nodes = view(&[(1, down()), (2, primary(2, None))]);
        let mut rig = Rig::new(Fake::new(rec(1, Open::All, 1), nodes.clone()));
        rig.lock.set(LockState::Held);
        assert_eq!(rig.pass(ZERO, &nodes).0, []);
        assert_eq!(rig.watcher.gate.fresh_after, None);
        rig.lock.set(LockState::Free);
        assert_eq!(rig.pass(INTERVAL, &nodes).0, [], "acted on answers from before the other run ended");
        assert_eq!(rig.watcher.gate.fresh_after, Some(rig.clock.now()));
        assert_eq!(rig.pass(INTERVAL, &nodes).0, FAILOVER);
        // a lock that cannot be taken at all: nothing acts, and nothing waits for it
        let mut rig = Rig::new(Fake::new(rec(1, Open::All, 1), nodes.clone()));
        rig.lock.set(LockState::Broken);
        assert_eq!(rig.pass(ZERO, &nodes).0, []);
        assert_eq!(rig.watcher.gate.fresh_after, None);
    }

    /// barman's slot on the routed primary without its walsender: receive-wal started
    /// after the grace, under the run lock, then again after each backoff.
    #[test]
    fn receive_wal_is_started_after_the_grace_and_again_after_each_backoff() {
        let idle = view(&[(1, standby(IDLE)), (2, primary(2, IDLE))]);
        let mut rig = Rig::new(Fake::new(rec(2, Open::All, 2), idle.clone()));
        let s = Duration::from_secs(1);
        // (time since the last pass, who holds the lock, what the pass does)
        let rows = [
            (ZERO, LockState::Free, vec![]),
            (s * 2, LockState::Free, vec![]),
            (s, LockState::Held, vec![]), // due, but another run acts: not counted
            (ZERO, LockState::Free, vec![BarmanStart]),
            (s / 2, LockState::Free, vec![]),
            (s / 2, LockState::Free, vec![BarmanStart]),
            (s, LockState::Free, vec![]),
            (s, LockState::Free, vec![BarmanStart]),
        ];
        for (i, (after, lock, expected)) in rows.into_iter().enumerate() {
            rig.lock.set(lock);
            // the lock contended: the pass after it ended only notes it
            if i == 3 {
                assert_eq!(rig.pass(after, &idle).0, [], "row {i}: right after the other run");
            }
            assert_eq!(rig.pass(after, &idle).0, expected, "row {i}");
        }
        let streaming = view(&[(1, standby(IDLE)), (2, primary(2, STREAMING))]);
        assert_eq!(rig.pass(s, &streaming).0, []);
        assert_eq!(rig.watcher.receive_wal.confirmed, Some((crate::core::config::NodeId::new(2), Lsn(0x300_0000))));
    }

    /// `--dry-run watch` goes through the adapters every command gets: a pass that would
    /// switch prints the switch, and the real adapters are asked, never told.
    #[test]
    fn a_dry_run_pass_prints_what_it_would_do_and_changes_nothing() {
        let cfg = example();
        // the routed node 1 is down, node 2 was promoted: watch carries out the failover
        let fake = Fake::new(rec(1, Open::All, 1), view(&[(1, down()), (2, primary(2, None))]));
        let out = Sink::capture();
        let real = Effects { nat: &fake, cluster: &fake, backup: &fake };
        let mut watcher = Watcher::new(Box::new(NoRunLock), Rc::new(FakeClock::new()));
        watcher.dry_run = true;
        dressed(&cfg, true, true, &real, &out, |fx| watcher.pass(&cfg, fx, &fake.view()));
        assert_eq!(fake.calls(), [], "a dry run acted");
        let printed = out.captured();
        assert!(printed.contains("/usr/bin/repmgr-nat route 2 --ports all --timeline 2\n"), "{printed}");
        assert!(printed.contains("receive-wal main_backup &"), "{printed}");
        assert_eq!(watcher.last_action.as_ref().map(|a| a.result.as_str()), Some("ok"));
        let reads = fake.reads.swap(0, std::sync::atomic::Ordering::Relaxed);
        // before deciding, under the lock, and the printed switch's own check for foreign
        // rules; then known unchanged, not read again
        assert_eq!(reads, 3);
        // the rules never change: the same plan is not printed again every pass
        let out = Sink::capture();
        dressed(&cfg, true, true, &real, &out, |fx| watcher.pass(&cfg, fx, &fake.view()));
        assert_eq!(out.captured(), "");
        assert_eq!(fake.calls(), []);
    }
}
