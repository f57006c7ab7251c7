//! `repmgr-nat watch`: the level-triggered service. It keeps a connection to every node
//! and asks each one every `watch.interval_ms` (every 50 ms while the routed primary does
//! not answer: a promotion is near; at once when the kept connection ends, as a node's
//! shutdown ends it), reads the nat table twice a second through the same
//! `sudo ... route --show` as the other commands, and whenever the legitimate primary,
//! the rules, the slot or barman disagree it carries out the plan an event would, through
//! the same code and under the same run lock. A lost event, a nat table flushed by someone
//! else, a slot dropped by hand: each costs one pass, not an outage.
//!
//! Each node is asked by a task of its own, so a frozen or unreachable node delays nobody:
//! a pass decides on every node's latest answer, and an answer older than the deadline
//! counts as silence. Keeping barman's receive-wal streaming is in `receive_wal`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};

use crate::adapters::Adapters;
use crate::clock::{ms_since_epoch, now_ms};
use crate::core::config::{Config, Watch};
use crate::core::metrics::{self, Snapshot, Tracker};
use crate::core::plan::{self, Ask, Decision, NatState};
use crate::core::ruleset::{Open, Route, Routing};
use crate::core::view::{Answer, Primary, View, arbitrate};
use crate::core::watch_json::{Action, WatchReport};
use crate::effects::barman::BarmanCli;
use crate::effects::exporter;
use crate::effects::state::{Lock, RunLock};
use crate::effects::watch_file;
use crate::handler::{self, Effects};

mod poll;
mod receive_wal;
use poll::{Pollers, Signals, Wake};
use receive_wal::{RECEIVE_WAL_LOG, ReceiveWal};

/// The longest pause between two attempts to start receive-wal, or to repeat a failed step.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Runs until SIGTERM or SIGINT. A dry run prints what it would do and changes nothing:
/// it writes no watch.json and no event counts, serves no metrics and takes no run lock.
pub fn run(adapters: &Adapters) -> Result<()> {
    let cfg = &adapters.ctx.cfg;
    let dry_run = adapters.ctx.dry_run;
    let rt = adapters.runtime()?;
    let cluster = adapters.cluster()?;
    let barman = cfg.barman.as_ref().map(|b| BarmanCli::new(b).receive_wal_output(cfg.watch.dir.join(RECEIVE_WAL_LOG)));
    adapters.effects_with(&cluster, barman.as_ref(), |fx| {
        let mut watcher = Watcher::new(adapters.run_lock());
        if dry_run {
            log::info!("watch: --dry-run: printing what it would do; no watch.json, no metrics, no run lock");
        } else {
            std::fs::create_dir_all(&cfg.watch.dir)
                .with_context(|| format!("cannot create watch.dir {}", cfg.watch.dir.display()))?;
            if let Err(e) = exporter::create_event_counts(&cfg.watch.dir) {
                log::error!("watch: {e:#}: events are not counted");
            }
            if let Some(addr) = cfg.watch.metrics {
                exporter::serve(addr, Arc::clone(&watcher.snapshot), cfg.watch.dir.clone());
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
            let reason = match watcher.fresh_after.take() {
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

/// What the passes remember between them.
struct Watcher {
    run_lock: Box<dyn RunLock>,
    /// Whether each pass writes watch.json (not in a dry run).
    writes_report: bool,
    started: SystemTime,
    passes: u64,
    /// The nat table as last read (its route, and whether everything else of ours is in
    /// place), and when.
    nat: Option<(Routing, bool, Instant)>,
    /// One line about what the pass saw; logged when it changes.
    seen: String,
    /// After a failed action: not again before this.
    retry_at: Option<Instant>,
    failures: u32,
    last_action: Option<Action>,
    /// Why the run lock cannot be taken, as last said.
    lock_problem: Option<String>,
    /// Another run held the run lock: what it did may be missing from the answers of the
    /// passes until it ended.
    contended: bool,
    /// The next pass waits for answers asked after this (another run just ended).
    fresh_after: Option<Instant>,
    receive_wal: ReceiveWal,
    /// The figures the metrics show, and where the listener reads the last pass's.
    metrics: Tracker,
    snapshot: Arc<Mutex<Snapshot>>,
    /// The monotonic clock the metrics' durations are measured on.
    clock: Instant,
    /// Since when (unix ms) the application ports have not forwarded to the legitimate
    /// primary (for `can-serve`).
    misrouted_since: Option<u64>,
}

impl Watcher {
    /// The metrics' shared snapshot starts as the tracker's own (no pass yet), not empty.
    fn new(run_lock: Box<dyn RunLock>) -> Watcher {
        let metrics = Tracker::new(now_ms());
        Watcher {
            run_lock,
            writes_report: false,
            started: SystemTime::now(),
            snapshot: Arc::new(Mutex::new(metrics.snapshot().clone())),
            metrics,
            clock: Instant::now(),
            passes: 0,
            nat: None,
            seen: String::new(),
            retry_at: None,
            failures: 0,
            last_action: None,
            lock_problem: None,
            contended: false,
            fresh_after: None,
            receive_wal: ReceiveWal::default(),
            misrouted_since: None,
        }
    }

    /// One pass: decide from the view, act if need be, keep barman streaming, report.
    /// Returns whether the next answers are needed in a hurry.
    fn pass(&mut self, cfg: &Config, fx: &Effects, view: &View) -> bool {
        let began = self.mono_ms();
        self.passes += 1;
        let (routing, in_place) = match self.routing(cfg, fx) {
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
        let arbitration = arbitrate(view, record);
        self.say(format!("primary: {}; rules: {routing}; nodes: {}", arbitration.describe(), brief(view)));

        let decision = plan::decide(cfg, Ask::Watch, view, NatState { routing: &routing, record, in_place });
        if let Decision::Act(_) = decision {
            self.act(cfg, fx, view);
        } else {
            self.keep_barman_streaming(cfg, fx, view, &routing);
        }
        // the rules as they stand after the pass: read again if it acted (and kept for
        // the next pass)
        let (after, record) = match self.routing(cfg, fx) {
            Ok((after, _)) if after != routing => (after, fx.nat.recorded().ok().flatten()),
            _ => (routing, record),
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
        let misrouted = !serving;
        self.misrouted_since = if misrouted { Some(self.misrouted_since.unwrap_or_else(now_ms)) } else { None };
        self.write_report(cfg, &arbitration.describe(), &after, view, hurry);
        self.metrics.pass(metrics::Pass {
            began_mono_ms: began,
            ended_mono_ms: self.mono_ms(),
            ended_ms: now_ms(),
            view,
            arbitration: &arbitration,
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
        self.clock.elapsed().as_millis() as u64
    }

    /// The nat table: read again when older than `Watch::NAT_EVERY` or after an action.
    fn routing(&mut self, cfg: &Config, fx: &Effects) -> Result<(Routing, bool)> {
        match &self.nat {
            Some((routing, in_place, at)) if at.elapsed() < Watch::NAT_EVERY => Ok((routing.clone(), *in_place)),
            _ => {
                let live = fx.nat.live()?;
                let (routing, in_place) = (live.routing(cfg), live.in_place(cfg));
                self.nat = Some((routing.clone(), in_place, Instant::now()));
                Ok((routing, in_place))
            }
        }
    }

    /// Under the run lock (when another run holds it, that run does the work: the next
    /// pass sees the result), with the rules read again, the plan an event would carry out.
    fn act(&mut self, cfg: &Config, fx: &Effects, view: &View) {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let Some(_lock) = self.run_lock() else { return };
        self.nat = None;
        let result = handler::act_on(cfg, fx, Ask::Watch, "watch", view);
        self.nat = None;
        self.metrics.acted(result.is_ok());
        let (steps, result) = match result {
            Ok(steps) => {
                self.failures = 0;
                self.retry_at = None;
                (steps, "ok".to_string())
            }
            Err(e) => {
                self.failures += 1;
                let backoff = backoff(cfg.watch.interval, self.failures);
                self.retry_at = Some(Instant::now() + backoff);
                log::error!("watch: {e:#}; trying again in {} ms", backoff.as_millis());
                (Vec::new(), format!("error: {e:#}"))
            }
        };
        if !steps.is_empty() || result != "ok" {
            self.last_action =
                Some(Action { at_ms: now_ms(), steps: steps.iter().map(|s| s.to_string()).collect(), result });
        }
    }

    /// The run lock, to act on this pass's answers. None when another run holds it (that
    /// run does the work), when another run held it since (this pass's answers may predate
    /// its work: the next pass decides, on answers asked after it ended, so the two never
    /// do the same step twice), or when it cannot be taken at all (said once, not every
    /// pass: nothing can act until `setup` makes it right).
    fn run_lock(&mut self) -> Option<Lock> {
        let (lock, problem) = match self.run_lock.try_lock() {
            Ok(lock) => (lock, None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        if problem != self.lock_problem {
            match &problem {
                Some(why) => log::error!("watch: cannot take the run lock, so cannot act: {why}"),
                None => log::info!("watch: the run lock can be taken again"),
            }
            self.lock_problem = problem.clone();
        }
        match lock {
            None if problem.is_none() => {
                self.contended = true;
                None
            }
            Some(_) if std::mem::take(&mut self.contended) => {
                self.fresh_after = Some(Instant::now());
                None
            }
            lock => lock,
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
            started_ms: ms_since_epoch(self.started),
            pass: self.passes,
            passed_ms: now_ms(),
            interval_ms: cfg.watch.interval.as_millis() as u64,
            hurry,
            primary: primary.to_string(),
            rules: routing.to_string(),
            nodes: view.describe(),
            unanswered: view.nodes.iter().filter(|(_, a)| a.state().is_none()).map(|(n, _)| n.id()).collect(),
            receive_wal: self.receive_wal.describe(&cfg.watch.dir),
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

/// `base` doubled with every failure, at most `MAX_BACKOFF`.
fn backoff(base: Duration, failures: u32) -> Duration {
    base.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::dressed;
    use crate::core::config::tests::example;
    use crate::core::view::tests::view;
    use crate::effects::db::Cluster;
    use crate::effects::dryrun::Sink;
    use crate::effects::state::NoRunLock;
    use crate::effects::testing::{Fake, down, primary, rec};

    /// `--dry-run watch` goes through the adapters every command gets: a pass that would
    /// switch prints the switch, and the real adapters are asked, never told.
    #[test]
    fn a_dry_run_pass_prints_what_it_would_do_and_changes_nothing() {
        let cfg = example();
        // the routed node 1 is down, node 2 was promoted: watch carries out the failover
        let fake = Fake::new(rec(1, Open::All, 1), view(&[(1, down()), (2, primary(2, None))]));
        let out = Sink::capture();
        let real = Effects { nat: &fake, cluster: &fake, backup: &fake };
        let mut watcher = Watcher::new(Box::new(NoRunLock));
        dressed(&cfg, true, true, &real, &out, |fx| watcher.pass(&cfg, fx, &fake.view()));
        assert_eq!(fake.calls(), [], "a dry run acted");
        let printed = out.captured();
        assert!(printed.contains("/usr/bin/repmgr-nat route 2 --ports all --timeline 2\n"), "{printed}");
        assert!(printed.contains("receive-wal main_backup &"), "{printed}");
        assert_eq!(watcher.last_action.as_ref().map(|a| a.result.as_str()), Some("ok"));
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let base = Duration::from_millis(250);
        assert_eq!(backoff(base, 1), base);
        assert_eq!(backoff(base, 2), base * 2);
        assert_eq!(backoff(base, 5), base * 16);
        assert_eq!(backoff(base, 40), MAX_BACKOFF);
    }
}
