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

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::app::Ctx;
use crate::core::config::{Config, Watch};
use crate::core::metrics::{self, Snapshot, Tracker};
use crate::core::plan::{self, Ask, Decision, Nat as NatState};
use crate::core::ruleset::{Open, Route, Routing};
use crate::core::status::{Action, WatchReport};
use crate::core::view::{Answer, Primary, View, arbitrate};
use crate::effects::barman::{Backup, Barman, NoBarman};
use crate::effects::db::{self, Postgres};
use crate::effects::metrics as serve_metrics;
use crate::effects::nat::{Nat, ViaSudo};
use crate::effects::privilege::{self, OsUser};
use crate::effects::state::{Lock, StateDir};
use crate::handler::{self, Effects};

mod poll;
mod receive_wal;
use poll::{Pollers, Signals, Wake};
use receive_wal::{RECEIVE_WAL_LOG, ReceiveWal};

/// The longest pause between two attempts to start receive-wal, or to repeat a failed step.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

pub fn run(ctx: &Ctx) -> Result<()> {
    let cfg = &ctx.cfg;
    let rt = db::runtime()?;
    let cluster = Postgres::new(cfg, &rt);
    let barman = cfg.barman.as_ref().map(|b| Barman::new(b).receive_wal_output(cfg.watch.dir.join(RECEIVE_WAL_LOG)));
    let backup: &(dyn Backup + Sync) = match &barman {
        Some(barman) => barman,
        None => &NoBarman,
    };
    // never root (app refuses it): the chains are switched through sudo
    let nat: &dyn Nat = &ViaSudo { cfg };
    let fx = Effects { nat, cluster: &cluster, backup };

    std::fs::create_dir_all(&cfg.watch.dir)
        .with_context(|| format!("cannot create watch.dir {}", cfg.watch.dir.display()))?;
    if let Err(e) = serve_metrics::create_event_counts(&cfg.watch.dir) {
        log::error!("watch: {e:#}: events are not counted");
    }
    let mut watcher = Watcher::new(StateDir::new(&cfg.state.dir));
    if let Some(addr) = cfg.watch.metrics {
        serve_metrics::serve(addr, Arc::clone(&watcher.snapshot), cfg.watch.dir.clone());
    }
    let asking = poll::Asking { cfg: Arc::new(cfg.clone()), pool: cluster.pool() };
    let nodes = Pollers::start(&rt, cfg, Arc::new(asking));
    let mut signals = rt.block_on(Signals::new())?;
    // The first pass waits for every node's first answer, within a node's deadline.
    if rt.block_on(nodes.first_answers(cfg, signals.stop())) == Wake::Stop {
        log::info!("watch: stopping");
        return Ok(());
    }
    // what barman had confirmed, as the watch before this one saw it
    watcher.receive_wal.confirmed = report(cfg).and_then(|r| r.barman_confirmed);
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
        let hurry = watcher.pass(cfg, &fx, &view);
        nodes.hurry.store(hurry, Ordering::Relaxed);
    }
}

/// What the passes remember between them.
struct Watcher {
    state: StateDir,
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

/// What `watch` wrote after its last pass, if it can be read: a regular file, never
/// followed through a symbolic link, never waited on, at most `REPORT_MAX` bytes (root
/// reads it too, and watch.dir is repmgr's OS user's); as root, only a file of that
/// user's, who writes it.
pub fn report(cfg: &Config) -> Option<WatchReport> {
    let owner = match privilege::is_root() {
        true => Some(OsUser::named(&cfg.repmgr_user).map_err(|e| log::warn!("watch.json ignored: {e:#}")).ok()?.uid),
        false => None,
    };
    read_report(&cfg.watch.dir.join(WatchReport::FILE), owner)
}

/// The report at `path`, if it is a regular file (of `owner`, when given).
fn read_report(path: &Path, owner: Option<u32>) -> Option<WatchReport> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    const REPORT_MAX: u64 = 1 << 20;
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        say_once(format!("{} is not a regular file: ignored", path.display()));
        return None;
    }
    if let Some(uid) = owner.filter(|uid| *uid != meta.uid()) {
        say_once(format!(
            "{} is owned by uid {}, not by repmgr's OS user (uid {uid}): ignored",
            path.display(),
            meta.uid()
        ));
        return None;
    }
    let mut text = String::new();
    file.take(REPORT_MAX).read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).map_err(|e| say_once(format!("bad {}: {e}", path.display()))).ok()
}

/// Why watch.json was ignored: a warning the first time in a process, debug after. A
/// command reads it more than once (status, and the adapters it builds), and the reason
/// stays the same; each run of `can-serve` (every second under keepalived) is a process
/// of its own and says it once, since its own line ("watch has written nothing") would
/// be wrong without it, and keepalived keeps no script's output unless asked to.
fn say_once(line: String) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    match SAID.swap(true, Ordering::Relaxed) {
        false => log::warn!("{line}"),
        true => log::debug!("{line}"),
    }
}

/// Whether the process `pid` runs (a process of another user's counts: it exists).
pub fn runs(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill with signal 0 only checks that the process exists and may be signalled.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Watcher {
    /// The metrics' shared snapshot starts as the tracker's own (no pass yet), not empty.
    fn new(state: StateDir) -> Watcher {
        let metrics = Tracker::new(now_ms());
        Watcher {
            state,
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
        self.report(cfg, &arbitration.describe(), &after, view, hurry);
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
        let (lock, problem) = match self.state.try_lock() {
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

    fn report(&self, cfg: &Config, primary: &str, routing: &Routing, view: &View, hurry: bool) {
        let report = WatchReport {
            version: 1,
            pid: std::process::id(),
            started_ms: self.started.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
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
        let text = serde_json::to_string(&report).unwrap_or_default();
        if let Err(e) = write_atomically(&cfg.watch.dir.join(WatchReport::FILE), &text) {
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
                Answer::Down(_) => "down".to_string(),
                Answer::Silent(_) => "silent".to_string(),
                Answer::Rejected(_) => "rejected".to_string(),
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

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_read_only_from_a_regular_file_of_its_owner() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("repmgr-nat-test-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(WatchReport::FILE);
        let text = r#"{"version":1,"pid":1,"started_ms":1,"pass":3,"passed_ms":1,"interval_ms":250,"hurry":false,
            "primary":"node 1","rules":"node 1 ports all","nodes":"1: primary","unanswered":[2],"receive_wal":null,
            "barman_confirmed":null,"last_action":null,"misrouted_since_ms":null}"#;
        std::fs::write(&path, text).unwrap();
        let mine = std::fs::metadata(&path).unwrap().uid();
        assert_eq!(read_report(&path, None).map(|r| r.pass), Some(3));
        assert_eq!(read_report(&path, Some(mine)).map(|r| r.pass), Some(3));
        assert!(read_report(&path, Some(mine + 1)).is_none(), "a file of another user's is read");
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        assert!(read_report(&path, None).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
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
