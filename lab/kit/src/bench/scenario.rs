//! One failover scenario on a freshly built lab, and what it measures: what the
//! application saw through the port (three clients), when PostgreSQL finished the
//! promotion, how long repmgr waited for each handler run, and barman's continuity. On
//! Patroni with HAProxy beside (`Handler::PatroniHaproxy`), the same clients' connects
//! and writes go through HAProxy's port too, in the same run.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::haproxy::Haproxy;
use super::{Args, Handler, Scenario, attempt, nat};
use crate::events::EventRun;
use crate::lab::{DB1, DB2, Lab, Session, poll_until};
use crate::samples::{self, Connects, Outage};
use crate::{now_ms, pglog};

/// barman must be all OK within this after a scenario (one cron period + 15 s).
pub const BARMAN_BOUND: Duration = Duration::from_secs(75);
/// A scenario's handler runs must end within this after T0.
const SETTLE: Duration = Duration::from_secs(300);
/// The clients: `watch` (one attempt at a time, 1 s timeout), `connect` (attempts begun
/// every 25 ms, 5 s connect timeout, as an application would set it), `write` (inserts
/// back to back, 20 ms apart).
const WATCH_MS: u64 = 50;
const CONNECT_MS: u64 = 25;
const WRITE_MS: u64 = 20;

/// One handler run, relative to T0.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    pub event: String,
    pub node: String,
    pub at_ms: i64,
    /// None: still running when the scenario ended.
    pub exit: Option<i32>,
    pub waited_ms: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub handler: Option<Handler>,
    pub scenario: Option<Scenario>,
    pub t0_ms: u64,
    pub t0_second: u64,
    /// When repmgr's first `standby_promote` handler run began.
    pub promotion_ms: Option<u64>,
    /// When PostgreSQL on the new primary logged "database system is ready to accept
    /// connections".
    pub ready_ms: Option<u64>,
    pub outage: Outage,
    pub connects: Connects,
    /// The same, from when repmgr-nat's promote path began: PostgreSQL ready (watch sees
    /// the promotion then), or repmgr's `standby_promote` event when no watch runs.
    pub connects_after_promote: Connects,
    /// When the first write the new primary acknowledged came back.
    pub first_write_ms: Option<u64>,
    /// The same connects and writes through HAProxy's port, in the same run
    /// (`Handler::PatroniHaproxy`).
    #[serde(default)]
    pub haproxy: Option<Port>,
    pub runs: Vec<Run>,
    /// `repmgr standby promote|switchover` or the duplicate event: how long, exit code.
    pub command: Option<(u64, i32)>,
    pub barman_ok_after_s: Option<f64>,
    pub wal: Option<String>,
    pub wal_gap: Option<String>,
    pub failed: Vec<String>,
    pub notes: Vec<String>,
}

/// What the `connect` and `write` clients saw through one port.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Port {
    pub connects: Connects,
    /// From when the promote path began (see `ScenarioResult::connects_after_promote`).
    pub connects_after_promote: Connects,
    pub first_write_ms: Option<u64>,
}

impl ScenarioResult {
    /// The longest handler run since T0: how long repmgr waited, and for which event.
    pub fn longest_wait(&self) -> Option<(u64, &str)> {
        self.runs.iter().filter_map(|r| Some((r.waited_ms?, r.event.as_str()))).max_by_key(|(ms, _)| *ms)
    }

    pub fn brief(&self) -> String {
        let secs = |ms: Option<u64>| ms.map_or("-".to_string(), |ms| format!("{:.2} s", ms as f64 / 1000.0));
        let mut text = format!(
            "back after {}, refused {}, longest repmgr wait {}",
            if self.outage.first_err_ms.is_none() { "no refusal".into() } else { secs(self.outage.back_ms) },
            secs(Some(self.outage.refused_ms)),
            secs(self.longest_wait().map(|(ms, _)| ms))
        );
        if !self.failed.is_empty() {
            text.push_str(&format!("; FAILED: {}", self.failed.join("; ")));
        }
        text
    }
}

/// The T0 of a scenario: at second `phase` of a minute, at least 3 s from now (the
/// scripts wait for barman's cron at second 0, so every run of both handlers puts T0 at
/// the same second), or 3 s from now with `off`.
fn plan_t0(phase: &str) -> u64 {
    let now = now_ms();
    let Ok(second) = phase.parse::<u64>() else { return now + 3000 };
    let mut t = now - now % 60_000 + second * 1000;
    while t < now + 3000 {
        t += 60_000;
    }
    t
}

fn sleep_until(t: u64) {
    let now = now_ms();
    if t > now {
        std::thread::sleep(Duration::from_millis(t - now));
    }
}

/// The clients through the NAT's application port (watch, connect, write), then those
/// through HAProxy's (connect, write into haproxy-*.txt) when it runs; back once every
/// writer had a write acknowledged.
fn start_clients(lab: &Lab, dir: &Path, haproxy: Option<&Haproxy>) -> Vec<Child> {
    let mut clients = vec![lab.client("watch", WATCH_MS, &[], &dir.join("watch.txt"))];
    let mut ports = vec![(lab.env["APP_CONNINFO"].clone(), "")];
    if haproxy.is_some() {
        ports.push((Haproxy::conninfo(lab), "haproxy-"));
    }
    for (conninfo, prefix) in &ports {
        let file = |kind: &str| dir.join(format!("{prefix}{kind}.txt"));
        clients.push(lab.client_to(conninfo, "connect", CONNECT_MS, &["--timeout-ms", "5000"], &file("connect")));
        clients.push(lab.client_to(conninfo, "write", WRITE_MS, &["--count", "100000000"], &file("write")));
        lab.wait_samples("the writer's first acknowledged write", &file("write"), |s| s.iter().any(|s| s.ok()));
    }
    clients
}

fn read_samples(path: &Path) -> Vec<samples::Sample> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    samples::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs a scenario; the duplicate scenario's lab then runs the NAT switch measurements.
pub fn run(
    session: &Session,
    args: &Args,
    handler: Handler,
    scenario: Scenario,
    dir: &Path,
) -> (ScenarioResult, Vec<nat::NatResult>) {
    let mut result = ScenarioResult { handler: Some(handler), scenario: Some(scenario), ..ScenarioResult::default() };
    let mut nat = Vec::new();
    let logs = dir.join("lab-logs");
    let outcome = attempt(|| {
        let lab = Lab::up_with(session, &handler.up_args(), &[("LAB_SAVE_LOGS", &logs.to_string_lossy())]);
        if handler.watch() {
            lab.ok(&["watch", "start"]);
            lab.wait_until("watch's slot on the standby", Duration::from_secs(30), || {
                lab.slot_active("db2") == Some(false)
            });
        }
        if handler == Handler::WatchOnly {
            lab.ok(&["events", "drop"]);
        }
        let haproxy = (handler == Handler::PatroniHaproxy).then(|| Haproxy::start(dir));
        if scenario == Scenario::Promote {
            // repmgrd could promote by itself: the operator's promote must be the only one
            lab.ok(&["repmgrd", "stop", "db1"]);
            lab.ok(&["repmgrd", "stop", "db2"]);
        }
        let clients = start_clients(&lab, dir, haproxy.as_ref());
        let t0 = act(&lab, handler, scenario, &args.phase, &mut result);
        let mut answering = vec![dir.join("watch.txt")];
        answering.extend(haproxy.is_some().then(|| dir.join("haproxy-connect.txt")));
        settle(&lab, t0, &answering, &mut result);
        std::thread::sleep(Duration::from_secs(1));
        for child in clients {
            lab.stop(child);
        }
        measure(&lab, handler, scenario, t0, dir, &mut result);
        if let Some(haproxy) = haproxy {
            result.notes.push(marked(&haproxy, t0));
        }
        barman_continuity(&lab, scenario, &mut result);
        if scenario == Scenario::Duplicate && !args.no_nat && !handler.watch() {
            // the last scenario's lab is healthy (both nodes up): the NAT switches run on it
            nat = nat::measure(&lab, handler, args.switches, &dir.join("nat"));
        }
    });
    if let Err(why) = outcome {
        result.failed.push(why);
    }
    (result, nat)
}

/// What the scenario does at T0; returns T0.
fn act(lab: &Lab, handler: Handler, scenario: Scenario, phase: &str, result: &mut ScenarioResult) -> u64 {
    let planned = plan_t0(phase);
    let command = |result: &mut ScenarioResult, args: &[&str]| {
        let t = now_ms();
        let run = lab.lab(args);
        result.command = Some((now_ms() - t, run.code));
    };
    let t0 = match scenario {
        Scenario::Failover => {
            sleep_until(planned);
            let t0 = now_ms();
            lab.ok(&["stop", "db1"]);
            lab.ok(&["wait-primary", "db2", "60"]);
            if !handler.patroni() {
                lab.wait_event("repmgrd_failover_promote", "2", t0, SETTLE.as_secs());
            }
            t0
        }
        Scenario::Promote => {
            sleep_until(planned - 1000);
            lab.ok(&["stop", "db1"]);
            sleep_until(planned);
            let t0 = now_ms();
            command(result, &["repmgr", "db2", "standby", "promote"]);
            t0
        }
        Scenario::Switchover => {
            sleep_until(planned);
            let t0 = now_ms();
            command(result, &["switchover", "db2"]);
            lab.wait_event("standby_switchover", "2", t0, 60);
            if !poll_until(Duration::from_secs(60), || {
                crate::events::finished(&lab.events(), "repmgrd_standby_reconnect", Some("1"), t0).is_some()
            }) {
                result.notes.push("no repmgrd_standby_reconnect from db1 within 60 s".into());
            }
            t0
        }
        Scenario::Duplicate => {
            sleep_until(planned);
            let t0 = now_ms();
            command(result, &["event", "db1", "1", "standby_promote", "1"]);
            t0
        }
    };
    result.t0_ms = t0;
    result.t0_second = t0 / 1000 % 60;
    t0
}

/// Until no handler run since T0 is still going and every client in `answering` (the
/// NAT's `watch`, HAProxy's `connect`) answered for the last 2 s (or SETTLE after T0).
fn settle(lab: &Lab, t0: u64, answering: &[PathBuf], result: &mut ScenarioResult) {
    let answers = |path: &PathBuf| {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let samples = samples::parse(&text).unwrap_or_default();
        let now = now_ms();
        let last_err = samples.iter().rev().find(|s| !s.ok()).map_or(0, |s| s.at);
        let last = samples.last().map_or(0, |s| s.at);
        now - last_err > 2000 && now - last < 500
    };
    let settled = poll_until(Duration::from_millis((t0 + SETTLE.as_millis() as u64).saturating_sub(now_ms())), || {
        let running = lab.events().iter().any(|r| r.begin_ms >= t0 && r.end.is_none());
        !running && answering.iter().all(answers)
    });
    if !settled {
        result.notes.push(format!("not settled {} s after T0", SETTLE.as_secs()));
    }
}

/// When HAProxy last changed each server's state, from its stats page (whole seconds).
fn marked(haproxy: &Haproxy, t0: u64) -> String {
    let now = now_ms();
    let servers: Vec<String> = haproxy
        .servers()
        .iter()
        .map(|(name, status, lastchg)| {
            let at = (now - lastchg * 1000) as f64 / 1000.0 - t0 as f64 / 1000.0;
            format!("{name} {status} since ~{at:.0} s after T0")
        })
        .collect();
    format!("HAProxy's stats page at the end: {}", servers.join(", "))
}

/// What the `connect` and `write` clients saw through a port (their files `<prefix>connect.txt`
/// and `<prefix>write.txt`), the connects also from `path` after T0 (the promote path).
fn port(dir: &Path, prefix: &str, t0: u64, path: Option<u64>, primary: &str) -> Port {
    let connects = read_samples(&dir.join(format!("{prefix}connect.txt")));
    let writes = read_samples(&dir.join(format!("{prefix}write.txt")));
    Port {
        connects: Connects::of(&connects, t0, primary),
        connects_after_promote: path.map_or_else(Connects::default, |p| Connects::of(&connects, t0 + p, primary)),
        first_write_ms: samples::first_ack_on(&writes, t0, primary),
    }
}

fn measure(lab: &Lab, handler: Handler, scenario: Scenario, t0: u64, dir: &Path, result: &mut ScenarioResult) {
    let (primary, log) = if scenario.promotes() { (DB2, "DB2_PG_LOG") } else { (DB1, "DB1_PG_LOG") };
    result.outage = Outage::of(&read_samples(&dir.join("watch.txt")), t0);
    if scenario.promotes() {
        let text = std::fs::read_to_string(&lab.env[log]).unwrap_or_default();
        result.ready_ms = pglog::ready_after(&text, t0).map(|t| t - t0);
    }
    let runs: Vec<EventRun> = lab.events().into_iter().filter(|r| r.begin_ms >= t0).collect();
    std::fs::write(dir.join("events.txt"), runs.iter().map(|r| r.summary() + "\n").collect::<String>())
        .expect("events.txt");
    result.promotion_ms = runs.iter().find(|r| r.event == "standby_promote").map(|r| r.begin_ms - t0);
    let path = if handler.watch() { result.ready_ms } else { result.ready_ms.max(result.promotion_ms) };
    let nat = port(dir, "", t0, path, primary);
    (result.connects, result.connects_after_promote, result.first_write_ms) =
        (nat.connects, nat.connects_after_promote, nat.first_write_ms);
    if handler == Handler::PatroniHaproxy {
        result.haproxy = Some(port(dir, "haproxy-", t0, result.ready_ms, primary));
    }
    result.runs = runs
        .iter()
        .map(|r| Run {
            event: r.event.clone(),
            node: r.node.clone(),
            at_ms: r.begin_ms as i64 - t0 as i64,
            exit: r.end.map(|e| e.exit),
            waited_ms: r.end.map(|e| e.ms),
        })
        .collect();
}

/// `barman check` all OK within BARMAN_BOUND; then, after a forced switch (as a restore
/// would begin: `barman switch-wal --archive`), its WAL archive without a gap.
fn barman_continuity(lab: &Lab, scenario: Scenario, result: &mut ScenarioResult) {
    let t = now_ms();
    let ok = poll_until(BARMAN_BOUND, || lab.barman_check().0.ok());
    if ok {
        result.barman_ok_after_s = Some((now_ms() - t) as f64 / 1000.0);
    }
    let switched = lab.lab(&["barman", "switch-wal", "--force", "--archive", "--archive-timeout=30", "main_backup"]);
    if switched.code != 0 {
        result.notes.push(format!("barman switch-wal --archive: {}", switched.stderr.trim()));
    }
    let mut wal = Err(String::new());
    poll_until(Duration::from_secs(10), || {
        let archive = lab.barman_archive();
        wal = archive.continuity();
        // without a promotion there is one timeline; with one, the switch must be there
        if let Ok(desc) = &wal
            && scenario.promotes()
            && !archive.has_timeline(2)
        {
            wal = Err(format!("{desc}: no timeline 2"));
        }
        wal.is_ok()
    });
    match wal {
        Ok(desc) => result.wal = Some(desc),
        Err(gap) => result.wal_gap = Some(gap),
    }
}
