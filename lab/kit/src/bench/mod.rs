//! The benchmark (`lab/bench`): repmgr-nat against the article's scripts, side by side in
//! the lab, in one run. It measures and asserts nothing; BENCHMARKS.md keeps its reports.
//!
//! 1. Failover scenarios, each on a freshly built lab, for each handler (on Patroni, also
//!    through HAProxy configured as Patroni ships it, in the same run).
//! 2. The NAT switch alone, each handler's way, on the duplicate scenario's lab.
//! 3. barman's proof: rows written, acknowledged and restored from a backup taken before
//!    the failover.
//! 4. Soak: watch's CPU and memory over a steady cluster, and the WAL the standbys keep
//!    under a write load.
//! 5. repmgr-nat's switch by cluster size, in a throwaway namespace.
//! 6. A proxy's death: two proxies sharing the address, the holder's link cut.
//! 7. The chaos run (`crate::chaos`): a seeded schedule of transitions on one lab, the
//!    invariants checked all along, judged by the targets.
//!
//! Every result is typed, kept as JSON beside the report, and rendered by `report`.

mod haproxy;
mod nat;
mod proxy;
mod report;
mod scenario;
mod soak;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::lab::Session;
use crate::proof::{self, Case};
use crate::writes::Comparison;
use crate::{Lab, now_ms};

pub use nat::switches;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// NAT switches per measurement (at least 20; rounded up to an even number)
    #[arg(long, default_value_t = 20)]
    pub switches: usize,
    /// The second of the minute at which every scenario's T0 falls (barman's cron runs at
    /// second 0), or "off": as soon as the lab is up
    #[arg(long, default_value = "30")]
    pub phase: String,
    /// Where the report and every raw measurement go (default
    /// /var/tmp/repmgr-nat-bench/<date-time>)
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Handlers, in this order
    #[arg(long, value_delimiter = ',', default_value = "scripts,repmgr-nat,watch,watch-only")]
    pub handlers: Vec<Handler>,
    /// Failover scenarios
    #[arg(long, value_delimiter = ',', default_value = "failover,promote,switchover,duplicate")]
    pub scenarios: Vec<Scenario>,
    /// Leave out the NAT switch measurements
    #[arg(long)]
    pub no_nat: bool,
    /// Leave out the switch by cluster size
    #[arg(long)]
    pub no_scaling: bool,
    /// Leave out barman's proof
    #[arg(long)]
    pub no_proof: bool,
    /// Minutes of each soak phase (idle, then under writes); 0 leaves the soak out
    #[arg(long, default_value_t = 10)]
    pub soak_minutes: u64,
    /// Leave out the failover scenarios (every handler and scenario above)
    #[arg(long)]
    pub no_failovers: bool,
    /// Runs of the proxy death (two proxies, the holder's link cut); 0 leaves it out
    #[arg(long, default_value_t = 3)]
    pub proxy_deaths: usize,
    /// Transitions of the chaos run (lab/chaos, two proxies); 0 leaves it out
    #[arg(long, default_value_t = 100)]
    pub chaos_transitions: usize,
    /// The chaos run's seed (default: from the clock)
    #[arg(long)]
    pub chaos_seed: Option<u64>,
}

/// Who handles the failover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum Handler {
    /// The article's three scripts, on repmgr's events
    Scripts,
    /// repmgr-nat on repmgr's events, no watch service
    RepmgrNat,
    /// repmgr-nat on repmgr's events and the watch service
    Watch,
    /// The watch service alone: every event lost before it reaches the proxy
    WatchOnly,
    /// The watch service on a Patroni cluster (`lab.sh up --manager patroni`): no repmgr,
    /// no events; the failover scenario only
    Patroni,
    /// The same, the clients' connects and writes also through HAProxy in the proxy's
    /// namespace, configured as Patroni's example haproxy.cfg: the side-by-side anchor
    PatroniHaproxy,
}

impl Handler {
    pub fn name(self) -> &'static str {
        match self {
            Handler::Scripts => "scripts",
            Handler::RepmgrNat => "repmgr-nat",
            Handler::Watch => "watch",
            Handler::WatchOnly => "watch-only",
            Handler::Patroni => "patroni",
            Handler::PatroniHaproxy => "patroni-haproxy",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Handler::Scripts => "scripts",
            Handler::RepmgrNat => "repmgr-nat (events)",
            Handler::Watch => "repmgr-nat (events + watch)",
            Handler::WatchOnly => "repmgr-nat (watch, every event lost)",
            Handler::Patroni => "repmgr-nat (watch) on Patroni",
            Handler::PatroniHaproxy => "repmgr-nat (watch) on Patroni, HAProxy beside",
        }
    }

    fn lab_handler(self) -> &'static str {
        if self == Handler::Scripts { "scripts" } else { "repmgr-nat" }
    }

    fn watch(self) -> bool {
        matches!(self, Handler::Watch | Handler::WatchOnly) || self.patroni()
    }

    /// Whether the cluster is Patroni's (no repmgr, no events; the failover scenario only).
    fn patroni(self) -> bool {
        matches!(self, Handler::Patroni | Handler::PatroniHaproxy)
    }

    /// `lab.sh up`'s options for this handler.
    fn up_args(self) -> Vec<&'static str> {
        let mut args = vec!["--handler", self.lab_handler()];
        if self.patroni() {
            args.extend(["--manager", "patroni"]);
        }
        args
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum Scenario {
    /// db1 stopped (immediate); repmgrd promotes db2
    Failover,
    /// repmgrd off on both nodes, db1 stopped, 1 s later `repmgr standby promote` on db2
    Promote,
    /// `repmgr standby switchover` to db2
    Switchover,
    /// repmgrd's second promote event for the node that already is the primary
    Duplicate,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Failover => "failover",
            Scenario::Promote => "promote",
            Scenario::Switchover => "switchover",
            Scenario::Duplicate => "duplicate",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Scenario::Failover => "automatic failover (db1 stopped, repmgrd promotes db2)",
            Scenario::Promote => "manual `repmgr standby promote` on db2 (repmgrd off, db1 stopped 1 s before)",
            Scenario::Switchover => "`repmgr standby switchover` to db2",
            Scenario::Duplicate => "duplicate promote event (`standby_promote` for the running primary db1)",
        }
    }

    /// Whether the primary changes (all but the duplicate event).
    pub fn promotes(self) -> bool {
        self != Scenario::Duplicate
    }
}

/// What the benchmark ran on, and when.
#[derive(Debug, Serialize, Deserialize)]
pub struct Meta {
    pub started_ms: u64,
    pub ended_ms: u64,
    pub machine: String,
    pub versions: String,
    pub commit: String,
    pub command: String,
    pub phase: String,
    pub switches: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ProofResult {
    pub case: String,
    pub title: String,
    pub comparison: Option<Comparison>,
    pub failed: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Results {
    pub meta: Meta,
    pub scenarios: Vec<scenario::ScenarioResult>,
    pub nat: Vec<nat::NatResult>,
    pub proofs: Vec<ProofResult>,
    pub soak: Option<soak::Soak>,
    pub scaling: Vec<nat::ScaleResult>,
    #[serde(default)]
    pub proxy_deaths: Vec<proxy::ProxyDeath>,
    #[serde(default)]
    pub chaos: Option<ChaosRun>,
}

/// The chaos run, as the benchmark keeps it: its figures rendered once by
/// `chaos::report`, its full results beside them (`chaos/results.json`).
#[derive(Debug, Serialize, Deserialize)]
pub struct ChaosRun {
    pub seed: u64,
    pub transitions: usize,
    pub violations: usize,
    pub failed: Option<String>,
    pub report: String,
}

/// Prints one progress line.
fn say(text: &str) {
    println!("[bench] {text}");
}

/// Runs `f`; a panic (a lab helper that saw something not happen in time) becomes the
/// error, its message kept.
pub(crate) fn attempt<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

pub(crate) fn save(path: &Path, value: &impl Serialize) {
    let text = serde_json::to_string_pretty(value).expect("results serialize");
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

pub(crate) fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub(crate) fn machine() -> (String, String) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".into());
    let mem_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| t.lines().next()?.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kb| (kb + (1 << 19)) >> 20);
    let machine = format!(
        "{cpu}, {} cores, {mem_gb} GB RAM, kernel {}, Debian {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        output("uname", &["-r"]),
        std::fs::read_to_string("/etc/debian_version").unwrap_or_default().trim()
    );
    let v = |pkg: &str| output("dpkg-query", &["-W", "-f=${Version}", pkg]);
    let versions = format!(
        "PostgreSQL {}, repmgr {}, barman {}, iptables {} ({}), sudo {}, conntrack {}",
        v("postgresql-15"),
        v("postgresql-15-repmgr"),
        v("barman"),
        v("iptables"),
        output("iptables", &["--version"]).rsplit(['(', ')']).nth(1).unwrap_or("?"),
        v("sudo"),
        v("conntrack")
    );
    (machine, versions)
}

pub fn run(args: Args, command: String) -> Result<(), String> {
    let mut args = args;
    if args.switches < 20 {
        return Err("--switches must be at least 20".into());
    }
    args.switches += args.switches % 2; // end on db1, where it began
    if args.phase != "off" && !args.phase.parse::<u64>().is_ok_and(|s| s < 60) {
        return Err("--phase must be 0-59 or off".into());
    }
    let repo = crate::lab::repo();
    if !args.no_failovers && args.handlers.contains(&Handler::Scripts) {
        let seed = std::env::var_os("SEED_SCRIPTS").map_or(repo.join("../shared/seed-scripts"), PathBuf::from);
        if !seed.join("repmgr_iptables.sh").exists() {
            return Err(format!(
                "the article's scripts are not in {} (set SEED_SCRIPTS, or leave them out: --handlers repmgr-nat,watch,watch-only)",
                seed.display()
            ));
        }
    }
    let started = now_ms();
    let out = match &args.out {
        Some(dir) => dir.clone(),
        None => PathBuf::from(format!("/var/tmp/repmgr-nat-bench/{}", output("date", &["+%Y%m%d-%H%M%S"]))),
    };
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let session = Session::take();
    say(&format!("results and raw measurements: {}", out.display()));
    let (machine, versions) = machine();
    let commit = output("git", &["-C", &repo.to_string_lossy(), "rev-parse", "--short", "HEAD"]);
    let dirty = !Command::new("git")
        .args(["-C", &repo.to_string_lossy(), "diff", "--quiet", "HEAD", "--", "src", "Cargo.toml"])
        .status()
        .is_ok_and(|s| s.success());

    let mut results = Results {
        meta: Meta {
            started_ms: started,
            ended_ms: 0,
            machine,
            versions,
            commit: if dirty { format!("{commit} (with uncommitted changes in src/)") } else { commit },
            command,
            phase: args.phase.clone(),
            switches: args.switches,
        },
        scenarios: Vec::new(),
        nat: Vec::new(),
        proofs: Vec::new(),
        soak: None,
        scaling: Vec::new(),
        proxy_deaths: Vec::new(),
        chaos: None,
    };

    let handlers = if args.no_failovers { &[][..] } else { &args.handlers[..] };
    for &handler in handlers {
        for &scenario in &args.scenarios {
            if handler == Handler::WatchOnly && scenario == Scenario::Duplicate {
                continue; // a lost duplicate event is no scenario
            }
            if handler.patroni() && scenario != Scenario::Failover {
                continue; // repmgr's commands and events; Patroni's switchover is in the lab tests
            }
            let dir = out.join(handler.name()).join(scenario.name());
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            say(&format!("{}: {} (fresh lab) ...", handler.name(), scenario.name()));
            let t = now_ms();
            let (result, nat) = scenario::run(&session, &args, handler, scenario, &dir);
            save(&dir.join("result.json"), &result);
            say(&format!(
                "{}: {} done in {:.0} s: {}",
                handler.name(),
                scenario.name(),
                (now_ms() - t) as f64 / 1000.0,
                result.brief()
            ));
            results.scenarios.push(result);
            results.nat.extend(nat);
        }
    }
    if !args.no_proof {
        for case in Case::ALL {
            say(&format!("barman's proof: {} (fresh lab, events + watch) ...", case.title()));
            let dir = out.join("proof");
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let logs = dir.join(format!("{case:?}-lab-logs"));
            let run = attempt(|| {
                let lab = Lab::up_with(&session, &[], &[("LAB_SAVE_LOGS", &logs.to_string_lossy())]);
                let backup = proof::prepare(&lab);
                proof::run(case, &lab, &backup, &dir)
            });
            let result = ProofResult {
                case: format!("{case:?}"),
                title: case.title().to_string(),
                comparison: run.as_ref().ok().cloned(),
                failed: run.err(),
            };
            say(&format!("barman's proof: {}: {}", case.title(), report::proof_brief(&result)));
            results.proofs.push(result);
        }
    }
    if args.soak_minutes > 0 {
        say(&format!(
            "soak: watch over {} min idle, then {} min of writes (fresh lab) ...",
            args.soak_minutes, args.soak_minutes
        ));
        let dir = out.join("soak");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let soak = soak::run(&session, Duration::from_secs(args.soak_minutes * 60), &dir);
        say(&format!("soak: {}", soak.brief()));
        results.soak = Some(soak);
    }
    if args.proxy_deaths > 0 {
        let dir = out.join("proxy-death");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        results.proxy_deaths = proxy::run(&session, args.proxy_deaths, &dir);
    }
    if args.chaos_transitions > 0 {
        let dir = out.join("chaos");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let seed = args.chaos_seed.unwrap_or_else(|| now_ms() % 1_000_000);
        say(&format!("chaos: {} transitions, seed {seed} (fresh lab, two proxies) ...", args.chaos_transitions));
        let chaos_args = crate::chaos::Args {
            seed: Some(seed),
            transitions: args.chaos_transitions,
            proxies: 2,
            bounds_only: false,
            plan: false,
            out: Some(dir.clone()),
        };
        let run = crate::chaos::run_in(&session, &chaos_args, &dir);
        say(&format!("chaos: {} transitions, {} violations", run.transitions.len(), run.violations.len()));
        results.chaos = Some(ChaosRun {
            seed,
            transitions: run.transitions.len(),
            violations: run.violations.len(),
            failed: run.failed.clone(),
            report: crate::chaos::report(&run),
        });
    }
    if !args.no_scaling {
        say("repmgr-nat: switch time by nodes x application ports (throwaway namespace, lab down) ...");
        results.scaling = nat::scaling(args.switches, &out.join("scaling"));
    }
    drop(session);
    results.meta.ended_ms = now_ms();
    save(&out.join("results.json"), &results);
    let text = report::render(&results);
    std::fs::write(out.join("report.md"), &text).map_err(|e| e.to_string())?;
    println!("\n{text}");
    say(&format!("report: {}", out.join("report.md").display()));
    Ok(())
}

/// Renders the report of a finished run again, from its results.json.
pub fn report_again(dir: &Path) -> Result<(), String> {
    let path = dir.join("results.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let results: Results = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    print!("{}", report::render(&results));
    Ok(())
}
