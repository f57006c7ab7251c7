//! The chaos run (`lab/chaos`): one lab (two proxies sharing the address), a writer and a
//! connect client through the application port all the time, and N transitions chosen by
//! a seeded schedule (`schedule`), each done for real (`act`) and followed by the checks
//! of the invariants:
//!
//! 1. never a wrong node: no connection through the application port lands on a standby,
//!    or on a primary below a timeline a node had answered with already (`check`);
//! 2. nothing lost: every acknowledged commit on the final primary, and in barman's
//!    restore of the base backup taken before the first transition (`proof::restore`);
//! 3. barman never has a hole: `barman check` OK within its cron period after every
//!    transition, its archive contiguous across every timeline;
//! 4. bounded: every handler run ends within the event limit, every command of the
//!    schedule within its deadline, no standby's slot keeps more than
//!    `barman.standby_slot_limit_mb`;
//! 5. converged: within the convergence limit of a transition's end, `status` exits 0 on
//!    every proxy and the application port answers from the legitimate primary.
//!
//! The limits of 4 and 5 are the targets (2 s, 1 s) for `lab/chaos`, and the lab's bounds
//! (10 s, 30 s, as in the other lab tests) for the CI test, which reports the targets it
//! missed without failing on them: tests assert no timings.
//!
//! A transition's end is when the schedule's own commands are done: the fault undone
//! (thawed, healed, the link up), the new primary ready, the rejoined node streaming. What
//! only repmgr-nat repairs (a flushed table, a killed watch, barman's receive-wal
//! stopped, a reboot's empty tables) ends when the fault is made: its repair is what is
//! measured. barman's streaming, which `status` includes, is judged with 3 s more
//! (`converge`): repmgr-nat starts receive-wal at once, barman's own start-up comes on top.

mod act;
mod check;
pub mod schedule;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use serde::Serialize;

use self::act::{CommandRun, Hands, observe};
use self::schedule::{Node, Proxy, Rng, State, Transition};
use crate::bench::{attempt, machine, output, save};
use crate::lab::{Lab, Session, poll_until};
use crate::samples::{self, Connects, Sample};
use crate::stats::Spread;
use crate::writes::Comparison;
use crate::{now_ms, proof};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The schedule's seed (default: from the clock); printed first
    #[arg(long)]
    pub seed: Option<u64>,
    /// How many transitions
    #[arg(long, default_value_t = 12)]
    pub transitions: usize,
    /// Proxies sharing the address (1 or 2)
    #[arg(long, default_value_t = 2)]
    pub proxies: usize,
    /// Judge times by the lab's bounds (as the CI test does) and only report the targets
    #[arg(long)]
    pub bounds_only: bool,
    /// Print the schedule the seed gives (every transition leaving the state it should) and exit
    #[arg(long)]
    pub plan: bool,
    /// Where results.json, report.md and every raw history go (default
    /// /var/tmp/repmgr-nat-chaos/<date-time>)
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The limits of invariants 4 and 5.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Limits {
    pub converge_ms: u64,
    pub event_ms: u64,
}

/// What `lab/chaos` holds repmgr-nat to.
pub const TARGETS: Limits = Limits { converge_ms: 1000, event_ms: 2000 };
/// Far above them: what the CI test fails on (`proof::CONVERGE`; an event's bound as the
/// watch tests' BOUNDED).
pub const BOUNDS: Limits = Limits { converge_ms: 30_000, event_ms: 10_000 };
/// What barman's receive-wal may take from its start to streaming: watch's own allowance
/// for it (its grace, src/watch/receive_wal.rs: it starts no second receive-wal meanwhile).
const BARMAN_START_MS: u64 = 3000;
/// barman's cron period: `barman check` must be OK within it after every transition.
const CRON_PERIOD_MS: u64 = 60_000;
/// A pause after each transition's checks.
const SETTLE: Duration = Duration::from_secs(2);

/// One broken invariant.
#[derive(Clone, Debug, Serialize)]
pub struct Violation {
    pub at_ms: u64,
    /// The transition in progress (0: before the first).
    pub transition: usize,
    /// 1-5 as above; 0: the run itself (a command of the schedule failed).
    pub invariant: u8,
    pub what: String,
    pub evidence: String,
}

impl Violation {
    pub fn line(&self) -> String {
        format!(
            "VIOLATION {} ({}) at {} in transition {}: {}; evidence: {}",
            self.invariant,
            invariant_name(self.invariant),
            clock(self.at_ms),
            self.transition,
            self.what,
            self.evidence
        )
    }
}

fn invariant_name(n: u8) -> &'static str {
    match n {
        1 => "never a wrong node",
        2 => "nothing lost",
        3 => "barman has no hole",
        4 => "bounded",
        5 => "converged",
        _ => "the run",
    }
}

/// What one transition did, and what the application saw meanwhile (from its start to the
/// next one's).
#[derive(Clone, Debug, Serialize)]
pub struct TransitionResult {
    pub n: usize,
    pub what: String,
    pub transition: Transition,
    pub before: State,
    /// As observed from the nodes (None: no legitimate primary).
    pub after: Option<State>,
    pub start_ms: u64,
    pub end_ms: u64,
    pub commands: Vec<CommandRun>,
    /// The longest the writer waited for an acknowledged commit.
    pub without_primary_ms: u64,
    pub connects: Connects,
    /// From the end to the first `status` that exited 0 on every proxy.
    pub status_ok_ms: Option<u64>,
    /// From the end to the first new connection the legitimate primary answered unheld.
    pub app_on_primary_ms: Option<u64>,
    /// From the end to the first `barman check` all OK.
    pub barman_ok_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub seed: u64,
    pub transitions_asked: usize,
    pub proxies: usize,
    pub limits: Limits,
    pub started_ms: u64,
    pub ended_ms: u64,
    pub machine: String,
    pub versions: String,
    pub commit: String,
    pub transitions: Vec<TransitionResult>,
    pub violations: Vec<Violation>,
    /// With the bounds: the targets missed (not violations there).
    pub targets_missed: Vec<Violation>,
    /// Every acknowledged commit on the final primary.
    pub on_primary: Option<Comparison>,
    /// ... and in barman's restore of the base backup taken before the first transition.
    pub restored: Option<Comparison>,
    /// Why the run could not go on, if it could not.
    pub failed: Option<String>,
}

fn say(text: &str) {
    println!("[chaos] {text}");
}

/// `HH:MM:SS.mmm` (UTC) of a unix time in ms.
fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}.{:03}", s / 3600 % 24, s / 60 % 60, s % 60, ms % 1000)
}

fn secs(ms: Option<u64>) -> String {
    ms.map_or("-".into(), |ms| format!("{:.2} s", ms as f64 / 1000.0))
}

/// `lab-kit chaos`: the run, its report; an error when an invariant was broken.
pub fn run(args: Args) -> Result<(), String> {
    if !(1..=2).contains(&args.proxies) {
        return Err("--proxies must be 1 or 2".into());
    }
    let seed = args.seed.unwrap_or_else(|| now_ms() % 1_000_000);
    let proxies = proxy_names(args.proxies);
    if args.plan {
        println!("seed {seed}");
        for (n, (state, t)) in schedule::plan(seed, args.transitions, proxies).into_iter().enumerate() {
            println!("{:>4}  {:<28} {}", n + 1, state.to_string(), t.describe(state));
        }
        return Ok(());
    }
    let out = match &args.out {
        Some(dir) => dir.clone(),
        None => PathBuf::from(format!("/var/tmp/repmgr-nat-chaos/{}", output("date", &["+%Y%m%d-%H%M%S"]))),
    };
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let session = Session::take();
    let results = run_in(&session, &Args { seed: Some(seed), ..args }, &out);
    drop(session);
    let text = report(&results);
    std::fs::write(out.join("report.md"), &text).map_err(|e| e.to_string())?;
    println!("\n{text}");
    say(&format!("results: {}", out.join("results.json").display()));
    match (results.violations.len(), &results.failed) {
        (0, None) => Ok(()),
        (n, failed) => Err(format!(
            "{n} violations{}",
            failed.as_ref().map(|f| format!("; the run could not go on: {f}")).unwrap_or_default()
        )),
    }
}

fn proxy_names(n: usize) -> &'static [Proxy] {
    if n == 2 { &["proxy", "proxy2"] } else { &["proxy"] }
}

/// A chaos run on a fresh lab (taken down again at the end), its histories and
/// results.json in `out`. `args.seed` must be set.
pub fn run_in(session: &Session, args: &Args, out: &Path) -> Results {
    let seed = args.seed.expect("a seed");
    say(&format!(
        "seed {seed} ({} transitions, {} proxies; replay: lab/chaos --seed {seed})",
        args.transitions, args.proxies
    ));
    let (machine, versions) = machine();
    let repo = crate::lab::repo();
    let mut results = Results {
        seed,
        transitions_asked: args.transitions,
        proxies: args.proxies,
        limits: if args.bounds_only { BOUNDS } else { TARGETS },
        started_ms: now_ms(),
        ended_ms: 0,
        machine,
        versions,
        commit: output("git", &["-C", &repo.to_string_lossy(), "rev-parse", "--short", "HEAD"]),
        transitions: Vec::new(),
        violations: Vec::new(),
        targets_missed: Vec::new(),
        on_primary: None,
        restored: None,
        failed: None,
    };
    let logs = out.join("lab-logs");
    let run = attempt(|| {
        let up: &[&str] = if args.proxies == 2 { &["--proxies", "2"] } else { &[] };
        let lab = Lab::up_with(session, up, &[("LAB_SAVE_LOGS", &logs.to_string_lossy())]);
        let mut chaos = Chaos::new(&lab, args, out, &mut results);
        chaos.go(seed, proxy_names(args.proxies));
    });
    if let Err(e) = run {
        say(&format!("the run could not go on: {e}"));
        results.failed = Some(e);
    }
    results.ended_ms = now_ms();
    save(&out.join("results.json"), &results);
    results
}

/// The background clients: the writer and the connect client through the application
/// port, and a connect client asking each node directly (the timelines that exist).
struct Clients {
    writer: Option<Child>,
    others: Vec<Child>,
    writes: PathBuf,
    app: PathBuf,
    nodes: [PathBuf; 2],
}

struct Chaos<'a> {
    lab: &'a Lab,
    limits: Limits,
    /// With the bounds: the targets, to report what was missed.
    targets: Option<Limits>,
    out: &'a Path,
    results: &'a mut Results,
    /// Handler runs judged already (by begin time and id).
    events_judged: std::collections::BTreeSet<(u64, String)>,
    /// Wrong-node answers recorded already (by begin time).
    wrong_seen: std::collections::BTreeSet<u64>,
    slot_limit_mb: u64,
    transitions: usize,
    /// Handler runs are judged from the first transition on (not `up`'s).
    events_since: u64,
    /// When each transition began, by number.
    starts: Vec<(usize, u64)>,
}

impl<'a> Chaos<'a> {
    fn new(lab: &'a Lab, args: &Args, out: &'a Path, results: &'a mut Results) -> Chaos<'a> {
        let config = std::fs::read_to_string(&lab.env["REPMGR_NAT_CONFIG"]).unwrap_or_default();
        let slot_limit_mb = config
            .lines()
            .find_map(|l| {
                l.split('#')
                    .next()?
                    .trim()
                    .strip_prefix("standby_slot_limit_mb")?
                    .trim()
                    .strip_prefix('=')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(1024);
        Chaos {
            lab,
            limits: results.limits,
            targets: args.bounds_only.then_some(TARGETS),
            out,
            results,
            events_judged: Default::default(),
            wrong_seen: Default::default(),
            slot_limit_mb,
            transitions: args.transitions,
            events_since: u64::MAX,
            starts: Vec::new(),
        }
    }

    fn violation(&mut self, transition: usize, invariant: u8, what: String, evidence: String) {
        let v = Violation { at_ms: now_ms(), transition, invariant, what, evidence };
        say(&v.line());
        self.results.violations.push(v);
    }

    /// A time against its limit: past it, a violation; with the bounds, past the target,
    /// a target missed.
    fn judge_time(
        &mut self,
        n: usize,
        invariant: u8,
        ms: u64,
        limit: impl Fn(&Limits) -> u64,
        what: String,
        evidence: String,
    ) {
        if ms > limit(&self.limits) {
            self.violation(n, invariant, format!("{what}: {} ms, limit {} ms", ms, limit(&self.limits)), evidence);
        } else if let Some(target) = self.targets.filter(|t| ms > limit(t)) {
            let v = Violation {
                at_ms: now_ms(),
                transition: n,
                invariant,
                what: format!("{what}: {ms} ms, target {} ms", limit(&target)),
                evidence,
            };
            say(&format!("target missed (judged by lab/chaos, not here): {}", v.line()));
            self.results.targets_missed.push(v);
        }
    }

    fn start_clients(&self) -> Clients {
        let lab = self.lab;
        let writes = self.out.join("write.txt");
        let app = self.out.join("connect.txt");
        let nodes = [self.out.join("db1.txt"), self.out.join("db2.txt")];
        let writer = lab.writer(&writes, 20);
        let mut others = vec![lab.client("connect", 100, &["--timeout-ms", "5000"], &app)];
        for (node, file) in [Node::Db1, Node::Db2].iter().zip(&nodes) {
            let conninfo = format!(
                "host={} port={} user=app password={} dbname=app",
                node.addr(),
                lab.env["PG_PORT"],
                lab.env["APP_PASSWORD"]
            );
            others.push(lab.spawn(
                &["probe", "connect", "--conninfo", &conninfo, "--interval-ms", "200", "--timeout-ms", "1000"],
                file,
            ));
        }
        for file in nodes.iter().chain([&app]) {
            lab.wait_samples("the first answers", file, |s| s.iter().any(Sample::ok));
        }
        Clients { writer: Some(writer), others, writes, app, nodes }
    }

    fn go(&mut self, seed: u64, proxies: &[Proxy]) {
        let lab = self.lab;
        let backup = proof::prepare(lab);
        for &proxy in proxies {
            lab.ok(&["watch", "start", proxy]);
        }
        let clients = self.start_clients();
        let (mut state, _) = observe(lab).expect("a primary at the start");
        self.converge(0, now_ms());
        let (mut rng, mut overlaps) = (Rng::new(seed), Rng::overlaps(seed));
        self.events_since = now_ms();
        for n in 1..=self.transitions {
            let t = schedule::pick(&mut rng, &mut overlaps, state, proxies);
            let what = t.describe(state);
            say(&format!("{n:>3}/{} {what} ...", self.transitions));
            let start = now_ms();
            self.starts.push((n, start));
            let mut hands = Hands { lab, commands: Vec::new() };
            hands.perform(t, state);
            let end = now_ms();
            let commands = hands.commands;
            for c in &commands {
                if c.overran() {
                    self.violation(
                        n,
                        4,
                        format!("`lab.sh {}` overran its deadline", c.command),
                        format!("{} ms, deadline {} ms", c.ms, c.deadline_ms),
                    );
                } else if c.failed() {
                    self.violation(
                        n,
                        0,
                        format!("`lab.sh {}` failed (exit {})", c.command, c.code),
                        c.said.clone().unwrap_or_default(),
                    );
                }
            }
            let observed = observe(lab);
            let after = observed.map(|(s, _)| s);
            if after != Some(t.expected(state)) {
                say(&format!(
                    "    the cluster is {} (the schedule expected {})",
                    after.map_or("without a legitimate primary".into(), |s| s.to_string()),
                    t.expected(state)
                ));
            }
            let (status_ok_ms, barman_ok_ms) = match after {
                Some(_) => (self.converge(n, end), self.barman(n, end)),
                None => {
                    self.violation(n, 5, "no legitimate primary after the transition".into(), describe_nodes(lab));
                    (None, None)
                }
            };
            if let Some(s) = after.filter(|s| s.other == schedule::Other::Standby) {
                self.standby_slot(n, s.primary.other());
            }
            self.judge_events(n, false);
            std::thread::sleep(SETTLE);
            let app_on_primary_ms = after.and_then(|s| {
                let app = samples::read(&clients.app);
                Connects::of(&app, end, s.primary.addr()).first_on_primary_ms
            });
            if let Some(ms) = app_on_primary_ms {
                self.judge_time(
                    n,
                    5,
                    ms,
                    |l| l.converge_ms,
                    "the application port answered from the legitimate primary".into(),
                    format!("first unheld answer from it begun {ms} ms after the end"),
                );
            } else if after.is_some() {
                self.violation(
                    n,
                    5,
                    "the application port never answered from the legitimate primary".into(),
                    format!("{} s of connects after the end", SETTLE.as_secs()),
                );
            }
            self.wrong_nodes(&clients);
            let result = TransitionResult {
                n,
                what: what.clone(),
                transition: t,
                before: state,
                after,
                start_ms: start,
                end_ms: end,
                commands,
                without_primary_ms: 0,
                connects: Connects::default(),
                status_ok_ms,
                app_on_primary_ms,
                barman_ok_ms,
            };
            self.results.transitions.push(result);
            self.figures(&clients, now_ms());
            let r = self.results.transitions.last().expect("just pushed");
            say(&format!(
                "{n:>3}/{} {what}: {:.1} s; without a primary {}; connects {} failed, {} held; status 0 after {}, \
                 app on the primary after {}, barman OK after {}",
                self.transitions,
                (r.end_ms - r.start_ms) as f64 / 1000.0,
                secs(Some(r.without_primary_ms)),
                r.connects.failed,
                r.connects.held,
                secs(r.status_ok_ms),
                secs(r.app_on_primary_ms),
                secs(r.barman_ok_ms)
            ));
            match after {
                Some(s) => state = s,
                None => panic!("no legitimate primary after transition {n}: {}", describe_nodes(lab)),
            }
        }
        self.finish(clients, &backup, state);
    }

    /// Invariant 5's `status`: exits 0 on every proxy, asked again and again from `end`
    /// on; the time to the first run that did. A violation when a run begun past the
    /// limit still did not (it saw the state after the limit), with what it said.
    ///
    /// barman's streaming is judged apart: repmgr-nat starts receive-wal at once (after a
    /// switch, or when barman's walsender left its slot), and barman's own start-up (its
    /// Python, then pg_receivewal's connection; 1.0-1.5 s measured in the lab) comes on
    /// top. So a `status` whose only problem is that barman does not stream yet has
    /// `BARMAN_START_MS` more: the time watch itself allows a receive-wal just started to
    /// connect (its grace). Every other problem has the limit alone.
    fn converge(&mut self, n: usize, end: u64) -> Option<u64> {
        let lab = self.lab;
        let proxies = lab.proxies();
        // (began, what it said, only barman not streaming)
        let mut last_bad: Option<(u64, String)> = None;
        let mut last_other: Option<(u64, String)> = None;
        let mut ok_at = None;
        while now_ms() - end < BOUNDS.converge_ms {
            let began = now_ms();
            let runs: Vec<_> = std::thread::scope(|s| {
                let handles: Vec<_> = proxies
                    .iter()
                    .map(|&p| s.spawn(move || (p, lab.repmgr_nat_in(p, "postgres", &["status"]))))
                    .collect();
                handles.into_iter().map(|h| h.join().expect("status")).collect()
            });
            let mut only_barman = true;
            let bad: Vec<String> = runs
                .iter()
                .filter(|(_, r)| r.code != 0)
                .map(|(p, r)| {
                    // the problems status lists ("  - ...")
                    let problems: Vec<&str> = r.stdout.lines().filter_map(|l| l.strip_prefix("  - ")).collect();
                    if problems.is_empty() || problems.iter().any(|p| !p.starts_with("barman does not stream from")) {
                        only_barman = false;
                    }
                    let said = if problems.is_empty() { r.stderr.trim().to_string() } else { problems.join("; ") };
                    format!("{p}: exit {}: {said}", r.code)
                })
                .collect();
            if bad.is_empty() {
                ok_at = Some(began.saturating_sub(end));
                break;
            }
            last_bad = Some((began, bad.join(" | ")));
            if !only_barman {
                last_other = last_bad.clone();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if n == 0 {
            return ok_at;
        }
        if ok_at.is_none() {
            let said = last_bad.map(|b| b.1).unwrap_or_default();
            self.violation(n, 5, format!("status did not exit 0 within {} s", BOUNDS.converge_ms / 1000), said);
            return None;
        }
        // the last run that failed began `late` ms after the end: it saw the cluster not
        // converged then
        if let Some((began, said)) = last_other {
            let evidence = format!("a status begun {} ms after the end said: {said}", began - end);
            self.judge_time(n, 5, began - end, |l| l.converge_ms, "status exited 0".into(), evidence);
        }
        if let Some((began, said)) = last_bad {
            let late = (began - end).saturating_sub(BARMAN_START_MS);
            if late > 0 {
                let what =
                    format!("barman streamed (limit plus {} s for receive-wal to start)", BARMAN_START_MS / 1000);
                let evidence = format!("a status begun {} ms after the end said: {said}", began - end);
                self.judge_time(n, 5, late, |l| l.converge_ms, what, evidence);
            }
        }
        ok_at
    }

    /// Invariant 3: `barman check` all OK within barman's cron period of the end, and its
    /// archive contiguous.
    fn barman(&mut self, n: usize, end: u64) -> Option<u64> {
        let lab = self.lab;
        let mut last = String::new();
        let mut ok_at = None;
        while now_ms() - end < CRON_PERIOD_MS + 5000 {
            let began = now_ms();
            let (check, run) = lab.barman_check();
            if check.ok() {
                ok_at = Some(began - end);
                break;
            }
            last = format!("failed: {:?} {}", check.failed, run.stderr.trim());
            std::thread::sleep(Duration::from_millis(500));
        }
        if ok_at.is_none() {
            self.violation(n, 3, format!("barman check not OK within {} s", CRON_PERIOD_MS / 1000 + 5), last);
        } else {
            self.barman_receives(n);
        }
        if let Err(gap) = lab.barman_archive().continuity() {
            self.violation(n, 3, "barman's archive has a gap".into(), gap);
        }
        ok_at
    }

    /// Invariant 3, beyond `barman check` (which a stalled stream passes: its receive-wal
    /// runs, its walsender stays): barman's walsender on the primary reports having
    /// written the primary's position of now within pg_receivewal's status interval (10 s)
    /// and a margin.
    fn barman_receives(&mut self, n: usize) {
        let lab = self.lab;
        // no primary to observe: invariant 5 has said so already, nothing to receive from
        let Some((state, _)) = observe(lab) else { return };
        let primary = state.primary.name();
        let now = match lab.try_sql(primary, "select pg_current_wal_lsn()") {
            Ok(now) => now,
            Err(e) => return self.violation(n, 3, format!("cannot ask {primary} what barman must receive"), e),
        };
        let sql = format!(
            "select coalesce(bool_or(r.write_lsn >= '{now}'), false) from pg_stat_replication r \
             join pg_replication_slots s on s.active_pid = r.pid where s.slot_name = 'barman'"
        );
        let received = poll_until(Duration::from_secs(15), || lab.try_sql(primary, &sql).is_ok_and(|r| r == "t"));
        if !received {
            let said = lab
                .try_sql(primary, "select application_name, client_addr, state, sent_lsn, write_lsn, reply_time from pg_stat_replication")
                .unwrap_or_else(|e| e);
            self.violation(
                n,
                3,
                format!("barman did not receive {primary}'s WAL up to {now} within 15 s"),
                said.replace('\n', "; "),
            );
        }
    }

    /// Invariant 4: the standby's slot keeps no more than the limit behind its replay.
    fn standby_slot(&mut self, n: usize, standby: Node) {
        let sql = "select coalesce(pg_wal_lsn_diff(pg_last_wal_replay_lsn(), restart_lsn), 0)::bigint \
                   from pg_replication_slots where slot_name = 'barman'";
        let kept = match self.lab.try_sql(standby.name(), sql) {
            Ok(kept) => kept,
            Err(e) => return self.violation(n, 4, format!("cannot ask {} what its slot keeps", standby.name()), e),
        };
        // no row: no slot there yet (watch makes it within a pass), so it keeps nothing
        if let Ok(bytes) = kept.parse::<i64>()
            && bytes > (self.slot_limit_mb as i64) << 20
        {
            self.violation(
                n,
                4,
                format!("{}'s slot keeps more than standby_slot_limit_mb", standby.name()),
                format!("{bytes} bytes behind its replay, limit {} MB", self.slot_limit_mb),
            );
        }
    }

    /// Invariant 4: every handler run that ended since the start, judged once; `last`:
    /// one still running is a violation too.
    fn judge_events(&mut self, n: usize, last: bool) {
        let since = self.events_since;
        for run in self.lab.events().into_iter().filter(|r| r.begin_ms >= since) {
            let key = (run.begin_ms, run.id.clone());
            if self.events_judged.contains(&key) {
                continue;
            }
            let during = self.transition_at(run.begin_ms).unwrap_or(n);
            match run.end {
                Some(end) => {
                    self.events_judged.insert(key);
                    self.judge_time(
                        during,
                        4,
                        end.ms,
                        |l| l.event_ms,
                        format!("repmgr waited on {}", run.summary()),
                        run.output.join(" | "),
                    );
                }
                None if last => {
                    self.events_judged.insert(key);
                    self.violation(
                        during,
                        4,
                        format!("a handler run never ended: {}", run.summary()),
                        run.output.join(" | "),
                    );
                }
                None => {}
            }
        }
    }

    /// The transition in progress at `t`.
    fn transition_at(&self, t: u64) -> Option<usize> {
        self.starts.iter().rev().find(|(_, at)| *at <= t).map(|(n, _)| *n)
    }

    /// Invariant 1 over everything the clients saw so far.
    fn wrong_nodes(&mut self, clients: &Clients) {
        let app = samples::read(&clients.app);
        let nodes = clients.nodes.clone().map(|f| samples::read(&f));
        for (at, evidence) in check::wrong_nodes(&app, &[&nodes[0], &nodes[1]]) {
            if self.wrong_seen.insert(at) {
                let during = self.transition_at(at).unwrap_or(0);
                let v = Violation {
                    at_ms: at,
                    transition: during,
                    invariant: 1,
                    what: "a wrong node answered through the application port".into(),
                    evidence,
                };
                say(&v.line());
                self.results.violations.push(v);
            }
        }
    }

    /// Each transition's figures, from its start to the next one's (or `until`).
    fn figures(&mut self, clients: &Clients, until: u64) {
        let writes = samples::read(&clients.writes);
        let app = samples::read(&clients.app);
        let starts: Vec<u64> = self.results.transitions.iter().map(|r| r.start_ms).collect();
        for (i, r) in self.results.transitions.iter_mut().enumerate() {
            let to = starts.get(i + 1).copied().unwrap_or(until);
            let window: Vec<Sample> = app.iter().filter(|s| s.at >= r.start_ms && s.at < to).cloned().collect();
            let primary = r.after.map_or(r.before.primary, |s| s.primary);
            r.connects = Connects::of(&window, r.start_ms, primary.addr());
            r.without_primary_ms = check::without_primary_ms(&writes, r.start_ms, to);
        }
    }

    /// The end: the clients stopped (in-flight connects ended), invariant 1 over the whole
    /// history, every handler run ended, and invariant 2 on the final primary and in
    /// barman's restore.
    fn finish(&mut self, mut clients: Clients, backup: &str, state: State) {
        let lab = self.lab;
        let n = self.transitions;
        // the last connects may wait up to their 5 s timeout
        std::thread::sleep(Duration::from_secs(6));
        for child in clients.others.drain(..) {
            lab.stop(child);
        }
        // the last transition's window ends here (the writer stops with the restore)
        self.figures(&clients, now_ms());
        self.wrong_nodes(&clients);
        let ended = poll_until(Duration::from_secs(15), || lab.events().iter().all(|r| r.end.is_some()));
        if !ended {
            say("some handler runs had not ended 15 s after the last transition");
        }
        self.judge_events(n, true);
        let primary = state.primary;
        let writer = clients.writer.take().expect("the writer");
        let restored = proof::restore(lab, backup, (writer, clients.writes.clone()), primary.addr());
        let on_primary = lab.compare_writes(&clients.writes, primary.name());
        for (what, c) in [("the final primary", &on_primary), ("barman's restore of the base backup", &restored)] {
            if let Err(e) = c.verdict() {
                self.violation(n, 2, format!("{what} does not hold what the writer was told"), e);
            }
        }
        if let Err(gap) = lab.barman_archive().continuity() {
            self.violation(n, 3, "barman's archive has a gap at the end".into(), gap);
        }
        say(&format!(
            "writer: {} commits acknowledged; on {}: {} rows; restored: {} rows",
            on_primary.acknowledged,
            primary.name(),
            on_primary.rows,
            restored.rows
        ));
        self.results.on_primary = Some(on_primary);
        self.results.restored = Some(restored);
    }
}

/// Each node's answer, for a violation's evidence.
fn describe_nodes(lab: &Lab) -> String {
    [Node::Db1, Node::Db2]
        .iter()
        .map(|n| {
            let said = lab.try_sql(n.name(), "select pg_is_in_recovery()").unwrap_or_else(|e| e.trim().to_string());
            format!("{}: in recovery {said}", n.name())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report: one line per transition, the violations, the summary (markdown, as
/// BENCHMARKS.md shows it).
pub fn report(r: &Results) -> String {
    let mut out = String::new();
    let ms = |v: Option<u64>| v.map_or("-".into(), |v| format!("{:.2}", v as f64 / 1000.0));
    out.push_str(&format!(
        "### Chaos run: seed {}, {} transitions, {} proxies\n\n{} - {} UTC; commit {}; {}\n{}\n\n",
        r.seed,
        r.transitions.len(),
        r.proxies,
        clock(r.started_ms),
        clock(r.ended_ms),
        r.commit,
        r.machine,
        r.versions
    ));
    out.push_str("| # | transition | s | without a primary (s) | connects failed / held | status 0 (s) | app on primary (s) | barman OK (s) |\n");
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for t in &r.transitions {
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.2} | {} / {} | {} | {} | {} |\n",
            t.n,
            t.what,
            (t.end_ms - t.start_ms) as f64 / 1000.0,
            t.without_primary_ms as f64 / 1000.0,
            t.connects.failed,
            t.connects.held,
            ms(t.status_ok_ms),
            ms(t.app_on_primary_ms),
            ms(t.barman_ok_ms)
        ));
    }
    let judged = if r.limits.converge_ms == TARGETS.converge_ms { "targets" } else { "bounds" };
    out.push_str(&format!(
        "\nViolations ({judged}: converge {} ms, events {} ms): {}\n",
        r.limits.converge_ms,
        r.limits.event_ms,
        r.violations.len()
    ));
    for v in &r.violations {
        out.push_str(&format!("- {}\n", v.line()));
    }
    if !r.targets_missed.is_empty() {
        out.push_str(&format!("\nTargets missed (reported, not judged here): {}\n", r.targets_missed.len()));
        for v in &r.targets_missed {
            out.push_str(&format!("- {}\n", v.line()));
        }
    }
    // by kind: how many, and the worst of each figure
    let mut kinds: Vec<String> = r.transitions.iter().map(|t| t.transition.group()).collect();
    kinds.sort();
    kinds.dedup();
    out.push_str("\n| kind | n | without a primary, max (s) | connects failed / held | status 0, max (s) | app on primary, max (s) | barman OK, max (s) |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for kind in kinds {
        let of: Vec<&TransitionResult> = r.transitions.iter().filter(|t| t.transition.group() == kind).collect();
        let max = |f: &dyn Fn(&TransitionResult) -> Option<u64>| ms(of.iter().filter_map(|t| f(t)).max());
        out.push_str(&format!(
            "| {kind} | {} | {} | {} / {} | {} | {} | {} |\n",
            of.len(),
            max(&|t| Some(t.without_primary_ms)),
            of.iter().map(|t| t.connects.failed).sum::<usize>(),
            of.iter().map(|t| t.connects.held).sum::<usize>(),
            max(&|t| t.status_ok_ms),
            max(&|t| t.app_on_primary_ms),
            max(&|t| t.barman_ok_ms)
        ));
    }
    let spread = |f: &dyn Fn(&TransitionResult) -> Option<u64>| {
        let v: Vec<f64> = r.transitions.iter().filter_map(f).map(|ms| ms as f64 / 1000.0).collect();
        Spread::of(&v)
            .map_or("-".into(), |s| format!("median {:.2} s, p90 {:.2} s, max {:.2} s", s.median, s.p90, s.max))
    };
    let failed: usize = r.transitions.iter().map(|t| t.connects.failed).sum();
    let held: usize = r.transitions.iter().map(|t| t.connects.held).sum();
    let attempts: usize = r.transitions.iter().map(|t| t.connects.attempts).sum();
    out.push_str(&format!(
        "\nSummary: {} transitions; without a primary {}; connects: {attempts}, {failed} failed, {held} held; \
         status 0 after {}; app on the primary after {}; barman OK after {}\n",
        r.transitions.len(),
        spread(&|t| Some(t.without_primary_ms)),
        spread(&|t| t.status_ok_ms),
        spread(&|t| t.app_on_primary_ms),
        spread(&|t| t.barman_ok_ms)
    ));
    if let (Some(p), Some(b)) = (&r.on_primary, &r.restored) {
        out.push_str(&format!(
            "Writes: {} acknowledged; final primary {} rows, {} missing; barman's restore {} rows, {} missing, {} invented\n",
            p.acknowledged,
            p.rows,
            p.missing.len(),
            b.rows,
            b.missing.len(),
            b.invented.len()
        ));
    }
    if let Some(f) = &r.failed {
        out.push_str(&format!("The run could not go on: {f}\n"));
    }
    out
}
