//! The NAT switch alone, each handler's way, on a running lab: its time, the window in
//! which the application port has no rule, the processes it runs; and repmgr-nat's switch
//! by cluster size in a throwaway namespace.
//!
//! A switch loop runs inside the proxy namespace as the handler's user (`lab-kit
//! switches`), so that each switch is timed from its own process start, as a handler
//! starts it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Handler, attempt};
use crate::clients::TcpLoop;
use crate::lab::{DB1, DB2, Lab, PROXY};
use crate::stats::Spread;

/// One switch, each handler's way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// The article's repmgr_iptables.sh twice (barman's port with the flush, then the
    /// application port), as root.
    ScriptsRoot,
    /// The same through sudo as postgres, as their handler runs them.
    ScriptsSudo,
    /// `sudo -n repmgr-nat route <id> --ports all` as postgres, as its handler runs it.
    RnatSudo,
    /// `repmgr-nat route <id> --ports all` as root.
    RnatRoot,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::ScriptsRoot, Mode::ScriptsSudo, Mode::RnatSudo, Mode::RnatRoot];

    fn of(handler: Handler) -> &'static [Mode] {
        match handler {
            Handler::Scripts => &[Mode::ScriptsRoot, Mode::ScriptsSudo],
            _ => &[Mode::RnatSudo, Mode::RnatRoot],
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Mode::ScriptsRoot => "scripts: `repmgr_iptables.sh` x2, as root",
            Mode::ScriptsSudo => "scripts: the same through `sudo` as postgres (as their handler runs it)",
            Mode::RnatSudo => {
                "repmgr-nat: `sudo -n repmgr-nat route <id> --ports all` as postgres (as its handler runs it)"
            }
            Mode::RnatRoot => "repmgr-nat: `repmgr-nat route <id> --ports all` as root",
        }
    }

    fn sudo(self) -> bool {
        matches!(self, Mode::ScriptsSudo | Mode::RnatSudo)
    }

    fn repmgr_nat(self) -> bool {
        matches!(self, Mode::RnatSudo | Mode::RnatRoot)
    }

    /// The commands of one switch, `{id}` and `{ip}` standing for the target node.
    fn commands(self, lab: &Lab) -> Vec<String> {
        let sudo = if self.sudo() { "sudo -n " } else { "" };
        if self.repmgr_nat() {
            vec![format!("{sudo}{} route {{id}} --ports all", lab.env["REPMGR_NAT_BIN"])]
        } else {
            let script = format!("{sudo}{}/repmgr_iptables.sh {{ip}} {PROXY} 5432", lab.env["SCRIPTS_DIR"]);
            vec![format!("{script} 54321"), format!("{script} 54322 app")]
        }
    }
}

/// What `lab-kit switches` prints (JSON).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Loop {
    /// Each counted switch's wall time, microseconds.
    pub us: Vec<f64>,
    /// How many counted switches printed `changed` (repmgr-nat's route).
    pub changed: usize,
    pub stderr: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct NatResult {
    pub mode: Option<Mode>,
    pub alone: Option<Spread>,
    pub loaded: Option<Spread>,
    pub window: Option<TcpLoop>,
    pub execs: Option<usize>,
    pub programs: Vec<String>,
    /// repmgr-nat's own log of each step: (median ms, every value seen as ms:count).
    pub step_rules: Option<(f64, String)>,
    pub step_cut: Option<(f64, String)>,
    pub failed: Option<String>,
}

/// `lab-kit switches`: the first target once (a warm-up, not counted), then `count`
/// switches cycling through the targets from the second, each timed; prints a `Loop`.
pub fn switches(count: usize, targets: &[(String, String)], commands: &[String]) -> Result<(), String> {
    let mut result = Loop::default();
    let switch = |id: &str, ip: &str, result: &mut Loop| -> Result<(f64, String), String> {
        let t = Instant::now();
        let mut stdout = String::new();
        for command in commands {
            let words: Vec<String> =
                command.replace("{id}", id).replace("{ip}", ip).split(' ').map(String::from).collect();
            let out = Command::new(&words[0])
                .args(&words[1..])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("{}: {e}", words[0]))?;
            result.stderr.push_str(&String::from_utf8_lossy(&out.stderr));
            stdout.push_str(&String::from_utf8_lossy(&out.stdout));
            if !out.status.success() {
                return Err(format!("{command} for {id}: {}", out.status));
            }
        }
        Ok((t.elapsed().as_secs_f64() * 1e6, stdout))
    };
    let (id, ip) = &targets[0];
    switch(id, ip, &mut result)?;
    result.stderr.clear();
    for i in 0..count {
        let (id, ip) = &targets[(i + 1) % targets.len()];
        let (us, stdout) = switch(id, ip, &mut result)?;
        result.us.push(us);
        result.changed += usize::from(stdout.trim() == "changed");
    }
    println!("{}", serde_json::to_string(&result).expect("a Loop serializes"));
    Ok(())
}

/// The kit, where every user of the lab can run it (the repository may not be).
fn kit(lab: &Lab) -> String {
    let path = Path::new(&lab.env["LAB_DIR"]).join("bin/lab-kit");
    if !path.exists() {
        let me = std::env::current_exe().expect("the running lab-kit");
        std::fs::copy(&me, &path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    path.to_string_lossy().into_owned()
}

fn switch_loop(lab: &Lab, mode: Mode, count: usize) -> Result<Loop, String> {
    let user = if mode.sudo() { "postgres" } else { "root" };
    let mut args = vec!["switches".to_string(), "--count".into(), count.to_string()];
    for target in [format!("1={DB1}"), format!("2={DB2}")] {
        args.extend(["--target".to_string(), target]);
    }
    for command in mode.commands(lab) {
        args.extend(["--run".to_string(), command]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = lab.in_proxy(user, &[("LC_ALL", "C")], &kit(lab), &args);
    if run.code != 0 {
        return Err(format!("switch loop: {}", run.stderr.trim()));
    }
    let result: Loop = serde_json::from_str(run.stdout.trim()).map_err(|e| format!("switch loop output: {e}"))?;
    if mode.repmgr_nat() && result.changed != count {
        return Err(format!("only {} of {count} switches changed the rules", result.changed));
    }
    Ok(result)
}

/// The median and every value seen (ms:count) of one step repmgr-nat logs as
/// `nat: ... (N ms)`.
fn step(stderr: &str, pick: impl Fn(&str) -> bool) -> Option<(f64, String)> {
    let values: Vec<u64> = stderr
        .lines()
        .filter(|l| l.contains("INFO: nat: ") && pick(l))
        .filter_map(|l| l.rsplit_once('(')?.1.strip_suffix(" ms)")?.parse().ok())
        .collect();
    let median = Spread::of(&values.iter().map(|&v| v as f64).collect::<Vec<_>>())?.median;
    let mut seen: Vec<(u64, usize)> = Vec::new();
    for v in values {
        match seen.iter_mut().find(|(k, _)| *k == v) {
            Some((_, n)) => *n += 1,
            None => seen.push((v, 1)),
        }
    }
    seen.sort();
    Some((median, seen.iter().map(|(v, n)| format!("{v}:{n}")).collect::<Vec<_>>().join(",")))
}

/// The programs one switch runs: successful execve calls under `strace -f`, traced over
/// two switches (there and back), per switch.
fn execs(lab: &Lab, mode: Mode, dir: &Path) -> Result<(usize, Vec<String>), String> {
    let trace = dir.join(format!("{mode:?}.strace"));
    let mut total = 0;
    let mut programs = Vec::new();
    for (id, ip) in [("2", DB2), ("1", DB1)] {
        let mut strace = vec!["-f", "-qq", "-e", "trace=execve", "-e", "status=successful", "-o"];
        let out = trace.to_string_lossy().into_owned();
        strace.push(&out);
        if mode.sudo() {
            strace.extend(["-u", "postgres"]);
        }
        for command in mode.commands(lab) {
            let command = command.replace("{id}", id).replace("{ip}", ip);
            let mut args = strace.clone();
            args.extend(command.split(' '));
            let run = lab.in_proxy("root", &[("LC_ALL", "C")], "strace", &args);
            if run.code != 0 {
                return Err(format!("strace {command}: {}", run.stderr.trim()));
            }
            let text = std::fs::read_to_string(&trace).map_err(|e| e.to_string())?;
            let names: Vec<String> = text
                .lines()
                .filter_map(|l| l.split_once("execve(\"")?.1.split('"').next())
                .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
                .collect();
            total += names.len();
            if id == "2" {
                programs.extend(names);
            }
        }
    }
    Ok((total / 2, programs))
}

/// The window without a rule: a tight connect loop through the application port from the
/// app namespace (`probe tcp`, 1 ms apart: without a pause PostgreSQL's listen queue
/// overflows) while `count` switches run; and their timings under that load.
fn window(lab: &Lab, mode: Mode, count: usize, dir: &Path) -> Result<(TcpLoop, Loop), String> {
    let out = dir.join(format!("{mode:?}.tcp"));
    let child = lab.spawn(&["probe", "tcp", "--addr", &format!("{PROXY}:54322"), "--pause-ms", "1"], &out);
    std::thread::sleep(Duration::from_millis(500));
    let switched = switch_loop(lab, mode, count);
    std::thread::sleep(Duration::from_millis(300));
    lab.stop(child);
    let mut text = String::new();
    std::fs::File::open(&out).and_then(|mut f| f.read_to_string(&mut text)).map_err(|e| e.to_string())?;
    let tcp: TcpLoop = serde_json::from_str(text.trim()).map_err(|e| format!("probe tcp: {e}: {text}"))?;
    Ok((tcp, switched?))
}

/// Every mode of `handler`, on its running lab (rules at db1, both nodes up).
pub fn measure(lab: &Lab, handler: Handler, count: usize, dir: &Path) -> Vec<NatResult> {
    std::fs::create_dir_all(dir).expect("nat dir");
    let mut results = Vec::new();
    for &mode in Mode::of(handler) {
        let mut r = NatResult { mode: Some(mode), ..NatResult::default() };
        let outcome = attempt(|| -> Result<(), String> {
            let alone = switch_loop(lab, mode, count)?;
            r.alone = Spread::of(&alone.us);
            r.step_rules = step(&alone.stderr, |l| l.contains(" -> node "));
            r.step_cut = step(&alone.stderr, |l| l.contains("connections proxied"));
            let (tcp, loaded) = window(lab, mode, count, dir)?;
            r.window = Some(tcp);
            r.loaded = Spread::of(&loaded.us);
            let (execs, programs) = execs(lab, mode, dir)?;
            (r.execs, r.programs) = (Some(execs), programs);
            Ok(())
        });
        r.failed = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(why)) | Err(why) => Some(why),
        };
        super::save(&dir.join(format!("{mode:?}.json")), &r);
        results.push(r);
    }
    results
}

// ------------------------------------------------------------------------------- scaling
pub const SCALE_NODES: [usize; 3] = [2, 8, 32];
pub const SCALE_PORTS: [usize; 3] = [1, 4, 16];
/// Instances configured on the host (the default one switched, the others only read).
pub const SCALE_INSTANCES: [usize; 3] = [1, 4, 16];
/// Where the other instances' configs go, and the prefix of their names.
const INSTANCES_DIR: &str = "/etc/repmgr-nat";
const BENCH_INSTANCE: &str = "bench";
const SCALE_NS: &str = "rnlab-bench";
/// Addresses nothing uses (the lab is down; it never uses these).
const SCALE_PROXY: &str = "198.51.100.200";
const CONFIG: &str = "/etc/repmgr-nat.toml";

#[derive(Debug, Serialize, Deserialize)]
pub struct ScaleResult {
    pub nodes: usize,
    pub ports: usize,
    /// Instances configured (the switched one included); 1 in the nodes x ports runs.
    #[serde(default = "one")]
    pub instances: usize,
    pub switch: Option<Spread>,
    pub rules: usize,
    pub execs: usize,
    pub failed: Option<String>,
}

fn scale_config(nodes: usize, ports: usize, state: &Path) -> String {
    let app: Vec<String> = (0..ports).map(|k| (54322 + k).to_string()).collect();
    let mut text = format!(
        "# lab-kit bench: written for a scaling run, removed afterwards\n[proxy]\naddress = \"{SCALE_PROXY}\"\n\
         [ports]\npostgres = 5432\nbarman = 54321\napp = [{}]\n[nodes]\n",
        app.join(",")
    );
    for k in 1..=nodes {
        text.push_str(&format!("{k} = \"198.51.100.{}\"\n", 100 + k));
    }
    text.push_str(&format!(
        "[postgres]\nuser = \"repmgr_nat\"\ndbname = \"postgres\"\n[barman]\nserver = \"main_backup\"\nslot = \"barman\"\n\
         [state]\ndir = \"{}\"\n",
        state.display()
    ));
    text
}

fn one() -> usize {
    1
}

/// Another instance's config (`bench<k>`, k from 1): two nodes and an application port of
/// its own, no barman; every other default its own.
fn other_instance_config(k: usize) -> String {
    format!(
        "# lab-kit bench: written for a scaling run, removed afterwards\n[proxy]\naddress = \"{SCALE_PROXY}\"\n\
         [ports]\npostgres = 5432\napp = {}\n[nodes]\n1 = \"198.51.100.{}\"\n2 = \"198.51.100.{}\"\n\
         [postgres]\nuser = \"repmgr_nat\"\ndbname = \"postgres\"\n",
        55000 + k,
        160 + 2 * k,
        161 + 2 * k
    )
}

/// Writes the configs of `count` other instances into /etc/repmgr-nat (made if missing);
/// what to remove afterwards.
fn other_instances(count: usize) -> Result<Vec<PathBuf>, String> {
    let mut made = Vec::new();
    if !Path::new(INSTANCES_DIR).exists() {
        std::fs::create_dir(INSTANCES_DIR).map_err(|e| format!("{INSTANCES_DIR}: {e}"))?;
        made.push(PathBuf::from(INSTANCES_DIR));
    }
    for k in 1..=count {
        let path = Path::new(INSTANCES_DIR).join(format!("{BENCH_INSTANCE}{k}.toml"));
        if path.exists() {
            return Err(format!("{} exists and is not the benchmark's", path.display()));
        }
        std::fs::write(&path, other_instance_config(k)).map_err(|e| format!("{}: {e}", path.display()))?;
        made.insert(0, path);
    }
    Ok(made)
}

fn in_scale_ns(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", SCALE_NS, "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", program])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("{program}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn scale_one(
    bin: &str,
    nodes: usize,
    ports: usize,
    count: usize,
    state: &Path,
    dir: &Path,
) -> Result<ScaleResult, String> {
    std::fs::write(CONFIG, scale_config(nodes, ports, state)).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(state.join("route"));
    let _ = Command::new("ip").args(["netns", "del", SCALE_NS]).status();
    let ok = Command::new("ip").args(["netns", "add", SCALE_NS]).status().is_ok_and(|s| s.success());
    if !ok {
        return Err(format!("ip netns add {SCALE_NS}"));
    }
    in_scale_ns("ip", &["link", "set", "lo", "up"])?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut args = vec!["switches".to_string(), "--count".into(), count.to_string()];
    for k in 1..=nodes {
        args.extend(["--target".to_string(), format!("{k}=198.51.100.{}", 100 + k)]);
    }
    args.extend(["--run".to_string(), format!("{bin} route {{id}} --ports all")]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = in_scale_ns(&me.to_string_lossy(), &args)?;
    let result: Loop = serde_json::from_str(out.trim()).map_err(|e| e.to_string())?;
    if result.changed != count {
        return Err(format!("only {} of {count} switches changed the rules", result.changed));
    }
    let rules = in_scale_ns("iptables-save", &["-t", "nat"])?.lines().filter(|l| l.starts_with("-A repmgr_")).count();
    let trace = dir.join(format!("n{nodes}-p{ports}.strace"));
    let trace = trace.to_string_lossy();
    in_scale_ns(
        "strace",
        &[
            "-f",
            "-qq",
            "-e",
            "trace=execve",
            "-e",
            "status=successful",
            "-o",
            &trace,
            bin,
            "route",
            "2",
            "--ports",
            "all",
        ],
    )?;
    let execs =
        std::fs::read_to_string(&*trace).map_err(|e| e.to_string())?.lines().filter(|l| l.contains("execve(")).count();
    Ok(ScaleResult { nodes, ports, instances: 1, switch: Spread::of(&result.us), rules, execs, failed: None })
}

/// repmgr-nat route as root in a throwaway namespace for every nodes x ports
/// combination; /etc/repmgr-nat.toml is the benchmark's only for the run (a file that was
/// there is put back).
pub fn scaling(count: usize, dir: &Path) -> Vec<ScaleResult> {
    std::fs::create_dir_all(dir).expect("scaling dir");
    if Path::new("/run/netns").join(SCALE_NS).exists() {
        return vec![ScaleResult {
            nodes: 0,
            ports: 0,
            switch: None,
            rules: 0,
            execs: 0,
            failed: Some(format!("namespace {SCALE_NS} exists and is not the benchmark's")),
            instances: 1,
        }];
    }
    let bin = crate::lab::repo().join("target/release/repmgr-nat").to_string_lossy().into_owned();
    let saved: Option<PathBuf> = Path::new(CONFIG).exists().then(|| dir.join("repmgr-nat.toml.saved"));
    if let Some(saved) = &saved {
        std::fs::copy(CONFIG, saved).expect("save the config");
    }
    let state = PathBuf::from(format!("/run/repmgr-nat-bench.{}", std::process::id()));
    std::fs::create_dir_all(&state).expect("state dir");
    let mut results = Vec::new();
    for nodes in SCALE_NODES {
        for ports in SCALE_PORTS {
            let r = scale_one(&bin, nodes, ports, count, &state, dir).unwrap_or_else(|why| ScaleResult {
                nodes,
                ports,
                instances: 1,
                switch: None,
                rules: 0,
                execs: 0,
                failed: Some(why),
            });
            results.push(r);
        }
    }
    // the default instance's switch (2 nodes, 1 port) with others configured beside it:
    // every run reads their configs, to refuse one that claims what another claims
    for instances in SCALE_INSTANCES {
        let made = other_instances(instances - 1);
        let r = made.as_ref().map_err(Clone::clone).and_then(|_| scale_one(&bin, 2, 1, count, &state, dir));
        for path in made.iter().flatten() {
            let _ = if path.is_dir() { std::fs::remove_dir(path) } else { std::fs::remove_file(path) };
        }
        results.push(match r {
            Ok(r) => ScaleResult { instances, ..r },
            Err(why) => {
                ScaleResult { nodes: 2, ports: 1, instances, switch: None, rules: 0, execs: 0, failed: Some(why) }
            }
        });
    }
    let _ = Command::new("ip").args(["netns", "del", SCALE_NS]).status();
    let _ = std::fs::remove_file(CONFIG);
    if let Some(saved) = saved {
        std::fs::copy(&saved, CONFIG).expect("put the config back");
    }
    let _ = std::fs::remove_dir_all(&state);
    super::save(&dir.join("scaling.json"), &results);
    results
}
