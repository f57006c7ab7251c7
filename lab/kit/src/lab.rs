//! The lab as the tests, the benchmark and the demo drive it: `lab/lab.sh` brings a
//! cluster up in network namespaces and takes it down again; `Lab` runs commands in it and
//! reads what a user would look at (the nat table, the slots, which server answers,
//! repmgr-nat's exit code). Its helpers panic when something does not happen in time: a
//! test fails, the benchmark records the scenario as failed. The database queries are in
//! `query`, the guards that put the lab back (`Undo`, `Restore`) in `guard`.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::events::{self, EventRun};
use crate::samples::{self, Sample};
use crate::wal::Archive;

mod guard;
mod query;
pub use guard::{Restore, Undo};

/// One driver of the lab at a time on this machine (the tests, the benchmark, the demo, or
/// `lab.sh up|down` run by hand): whoever drives it holds this lock, and tells lab.sh so.
pub const LOCK: &str = "/run/repmgr-nat-lab.session.lock";

pub const DB1: &str = "198.51.100.11";
pub const DB2: &str = "198.51.100.12";
pub const PROXY: &str = "198.51.100.3";
/// With two proxies (`up --proxies 2`) PROXY is the address they share; these are their own
/// (proxy's, with barman; proxy2's, without).
pub const PROXY_A: &str = "198.51.100.4";
pub const PROXY_B: &str = "198.51.100.5";
/// With two clusters (`up --clusters 2`, e.g. `Lab::up_with(&Session::take(), &["--clusters",
/// "2"], &[])`): the second repmgr cluster's primary, db3 (db4, 198.51.100.14, its
/// standby), behind repmgr-nat's instance "two", streamed by barman's server two (`lab.sh
/// env`: TWO_CONFIG, TWO_APP_PORT, TWO_BARMAN_PORT, TWO_BARMAN_SERVER, TWO_APP_CONNINFO).
pub const DB3: &str = "198.51.100.13";
/// With Patroni (`up --manager patroni`, `Lab::up_with(&Session::take(), &["--manager",
/// "patroni"], &[])`): db1 and db2 run Patroni instead of repmgr, and etcd, its DCS, runs in
/// a namespace of its own at this address (`lab.sh env`: MANAGER, DB1_PATRONI_LOG, ...).
pub const ETCD: &str = "198.51.100.30";

/// barman's port and the application port.
pub const BOTH: &[u16] = &[54321, 54322];
/// The application port alone (a proxy without barman).
pub const APP: &[u16] = &[54322];

/// repmgr-nat's chains for a route, with the jumps and the hold, as `iptables-save`
/// prints them (sorted).
pub fn routed_to(node: &str, ports: &[u16]) -> Vec<String> {
    routed_via(node, ports, None)
}

/// The same for a proxy with `proxy.own_address`: what the host sends itself leaves from
/// its own address, what it forwards from the shared one.
pub fn routed_via(node: &str, ports: &[u16], own_address: Option<&str>) -> Vec<String> {
    let mut lines = vec![
        ":repmgr_dnat - [0:0]".to_string(),
        ":repmgr_snat - [0:0]".to_string(),
        ":repmgr_hold - [0:0]".to_string(),
        "-A PREROUTING -j repmgr_dnat".to_string(),
        "-A OUTPUT -j repmgr_dnat".to_string(),
        "-A POSTROUTING -j repmgr_snat".to_string(),
        "-A INPUT -j repmgr_hold".to_string(),
        "-A FORWARD -j repmgr_hold".to_string(),
        format!("-A repmgr_hold -d {PROXY}/32 -p tcp -m tcp --dport 54322 --tcp-flags FIN,SYN,RST,ACK SYN -j DROP"),
        format!(
            "-A repmgr_hold -p tcp -m tcp --tcp-flags RST RST -m conntrack --ctstate DNAT --ctorigdst {PROXY} \
             --ctorigdstport 54322 ! --ctstatus ASSURED --ctdir REPLY -j DROP"
        ),
        format!("-A repmgr_snat -d {node}/32 -p tcp -m tcp --dport 5432 -j SNAT --to-source {PROXY}"),
    ];
    if let Some(own) = own_address {
        lines.push(format!(
            "-A repmgr_snat -d {node}/32 -p tcp -m tcp --dport 5432 -m addrtype --src-type LOCAL -j SNAT --to-source {own}"
        ));
        if ports.contains(&54321) {
            lines.push(format!(
                "-A repmgr_dnat -d {own}/32 -p tcp -m tcp --dport 54321 -m addrtype --src-type LOCAL -j DNAT --to-destination {node}:5432"
            ));
        }
    }
    for port in ports {
        lines.push(format!(
            "-A repmgr_dnat -d {PROXY}/32 -p tcp -m tcp --dport {port} -j DNAT --to-destination {node}:5432"
        ));
    }
    lines.sort();
    lines
}

pub fn sorted(mut lines: Vec<String>) -> Vec<String> {
    lines.sort();
    lines
}

/// The repository (lab/kit's grandparent).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository")
}

/// The lab's lock, held while this (or a clone) lives.
#[derive(Clone)]
pub struct Session {
    _lock: Arc<File>,
}

impl Session {
    /// Waits for the lab when someone else drives it, saying so.
    pub fn take() -> Session {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the lab needs root (network namespaces, iptables, PostgreSQL clusters): run as root"
        );
        let file = File::options().create(true).truncate(false).write(true).open(LOCK).expect(LOCK);
        if file.try_lock().is_err() {
            eprintln!("the lab is in use (by the tests, the benchmark, the demo or lab.sh): waiting for {LOCK} ...");
            file.lock().expect("cannot take the lab's lock");
        }
        Session { _lock: Arc::new(file) }
    }
}

/// What a command did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(what: &str, out: Output) -> Run {
        let code = out.status.code().unwrap_or_else(|| panic!("{what}: killed by a signal"));
        Run {
            code,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts the exit code, showing everything the command said when it differs.
    #[track_caller]
    pub fn expect(self, code: i32, what: &str) -> Run {
        assert_eq!(self.code, code, "{what}: exit code\n--- stdout\n{}--- stderr\n{}", self.stdout, self.stderr);
        self
    }
}

/// Polls `probe` every 100 ms until it returns true or `timeout` passes; whether it did.
pub fn poll_until(timeout: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if probe() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

pub struct Lab {
    root: PathBuf,
    pub env: HashMap<String, String>,
    /// Set for every lab.sh run (e.g. LAB_SAVE_LOGS).
    extra: Vec<(String, String)>,
    _session: Session,
}

impl Lab {
    /// A fresh lab with repmgr-nat as the handler: db1 primary, db2 its standby, barman
    /// streaming through the proxy, the NAT pointing at db1.
    pub fn up() -> Lab {
        Lab::up_with(&Session::take(), &[], &[])
    }

    /// A fresh lab: `lab.sh up ARGS`, every lab.sh run with `env` added.
    pub fn up_with(session: &Session, args: &[&str], env: &[(&str, &str)]) -> Lab {
        let extra = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut lab = Lab { root: repo(), env: HashMap::new(), extra, _session: session.clone() };
        let up: Vec<&str> = ["up"].into_iter().chain(args.iter().copied()).collect();
        let run = lab.lab(&up);
        assert_eq!(run.code, 0, "lab.sh up failed\n--- stdout\n{}--- stderr\n{}", run.stdout, run.stderr);
        lab.env = lab
            .ok(&["env"])
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect();
        lab
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(self.root.join("lab/lab.sh"));
        cmd.env("LAB_LOCKED", "1").envs(self.extra.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// `lab/lab.sh ARGS...`
    pub fn lab(&self, args: &[&str]) -> Run {
        let out = self.command().args(args).output().expect("cannot run lab/lab.sh");
        Run::from(&format!("lab.sh {}", args.join(" ")), out)
    }

    /// `lab/lab.sh ARGS...` with a deadline: stopped (TERM, KILL 5 s later) when it has not
    /// ended within `limit`, which its exit code 124 then says.
    pub fn lab_within(&self, limit: Duration, args: &[&str]) -> Run {
        let mut cmd = Command::new("/usr/bin/timeout");
        cmd.args(["-k", "5", &format!("{:.3}", limit.as_secs_f64())])
            .arg(self.root.join("lab/lab.sh"))
            .args(args)
            .env("LAB_LOCKED", "1")
            .envs(self.extra.iter().map(|(k, v)| (k, v)));
        let out = cmd.output().expect("cannot run timeout lab/lab.sh");
        Run::from(&format!("lab.sh {}", args.join(" ")), out)
    }

    /// `lab/lab.sh ARGS...`, which must succeed; its stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        self.lab(args).expect(0, &format!("lab.sh {}", args.join(" "))).stdout
    }

    /// `lab/lab.sh ARGS...` started in the background, output into `file`.
    pub fn spawn(&self, args: &[&str], file: &Path) -> Child {
        let out = File::create(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        self.command().args(args).stdout(out).stderr(Stdio::inherit()).spawn().expect("cannot start lab/lab.sh")
    }

    /// A lab client (`lab-kit probe KIND`) in the app namespace through the application
    /// port, every `interval_ms`, output into `file`; stopped with `stop`.
    pub fn client(&self, kind: &str, interval_ms: u64, extra: &[&str], file: &Path) -> Child {
        self.client_to(&self.env["APP_CONNINFO"], kind, interval_ms, extra, file)
    }

    /// The same through `conninfo` (another port, e.g. HAProxy's beside the NAT).
    pub fn client_to(&self, conninfo: &str, kind: &str, interval_ms: u64, extra: &[&str], file: &Path) -> Child {
        let interval = interval_ms.to_string();
        let mut args = vec!["probe", kind, "--conninfo", conninfo, "--interval-ms", &interval];
        args.extend(extra);
        self.spawn(&args, file)
    }

    /// A writer through the application port every 20 ms, its output in `file`; back once
    /// `acknowledged` of its rows were.
    pub fn writer(&self, file: &Path, acknowledged: usize) -> Child {
        let child = self.client("write", 20, &["--count", "100000000"], file);
        let what = format!("{acknowledged} rows acknowledged to the writer");
        self.wait_samples(&what, file, |s| s.iter().filter(|s| s.ok()).count() >= acknowledged);
        child
    }

    /// How many passes `lab.sh watch start` made so far (0 when it wrote nothing yet).
    pub fn watch_passes(&self) -> u64 {
        self.watch_passes_in("proxy")
    }

    /// The same for the watch of `proxy` (proxy2's writes to WATCH2_DIR).
    pub fn watch_passes_in(&self, proxy: &str) -> u64 {
        let dir = if proxy == "proxy2" { "WATCH2_DIR" } else { "WATCH_DIR" };
        let path = Path::new(&self.env[dir]).join("watch.json");
        let report: serde_json::Value =
            std::fs::read_to_string(path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
        report["pass"].as_u64().unwrap_or(0)
    }

    /// Whether both ports point at `node` (an address), the chains in place.
    pub fn routed(&self, node: &str) -> bool {
        self.routed_in("proxy", node)
    }

    /// The proxies' namespaces: proxy, and proxy2 with `up --proxies 2`.
    pub fn proxies(&self) -> Vec<&'static str> {
        if self.env.get("PROXIES").map(String::as_str) == Some("2") { vec!["proxy", "proxy2"] } else { vec!["proxy"] }
    }

    /// How many clusters the lab has: 1, or 2 with `up --clusters 2` (db3, db4 and their
    /// instance).
    pub fn clusters(&self) -> usize {
        if self.env.get("CLUSTERS").map(String::as_str) == Some("2") { 2 } else { 1 }
    }

    /// repmgr-nat's chains in `proxy` for a route to `node` (sorted): with two proxies each
    /// has its own address, and only proxy has barman's port.
    pub fn routed_rules(&self, proxy: &str, node: &str) -> Vec<String> {
        match (self.proxies().len(), proxy) {
            (1, _) => routed_to(node, BOTH),
            (_, "proxy2") => routed_via(node, APP, Some(PROXY_B)),
            _ => routed_via(node, BOTH, Some(PROXY_A)),
        }
    }

    /// Whether `proxy`'s ports point at `node`, the chains in place.
    pub fn routed_in(&self, proxy: &str, node: &str) -> bool {
        sorted(self.our_rules_in(proxy)) == self.routed_rules(proxy, node)
    }

    /// The proxy's tables (nat and filter), without comments and counters.
    pub fn nat(&self) -> String {
        self.nat_in("proxy")
    }

    /// A proxy's tables (`proxy` or `proxy2`).
    pub fn nat_in(&self, proxy: &str) -> String {
        self.ok(&["nat", proxy]).lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).collect()
    }

    /// The lines of the proxy's tables that concern repmgr-nat's default instance: its
    /// chains, their rules, the jumps to them (not instance two's, `repmgr_two_*`).
    pub fn our_rules(&self) -> Vec<String> {
        self.our_rules_in("proxy")
    }

    pub fn our_rules_in(&self, proxy: &str) -> Vec<String> {
        let ours = |l: &&str| l.contains("repmgr_") && !l.contains("repmgr_two_");
        self.nat_in(proxy).lines().filter(ours).map(str::to_string).collect()
    }

    /// Which proxy holds the shared address: "proxy", "proxy2", "proxy proxy2" (a frozen
    /// holder keeps it) or "none".
    pub fn vip(&self) -> String {
        self.ok(&["vip"]).trim().to_string()
    }

    /// repmgr-nat ARGS as `user` ("root" or "postgres") in the proxy namespace, with the
    /// environment a login (or the boot unit, for root) would give it.
    pub fn repmgr_nat(&self, user: &str, args: &[&str]) -> Run {
        self.in_proxy(user, &[], &self.env["REPMGR_NAT_BIN"], args)
    }

    /// The same in `proxy`'s namespace (proxy2 reads its own config there).
    pub fn repmgr_nat_in(&self, proxy: &str, user: &str, args: &[&str]) -> Run {
        let program = &self.env["REPMGR_NAT_BIN"];
        let out = self.as_user_in(proxy, user, &[], program).args(args).output().expect("cannot run ip netns exec");
        Run::from(&format!("{program} {}", args.join(" ")), out)
    }

    /// repmgr-nat ARGS as `user`, which must end within `limit`: killed otherwise, and the
    /// caller fails saying so.
    #[track_caller]
    pub fn repmgr_nat_within(&self, limit: Duration, user: &str, args: &[&str]) -> Run {
        let secs = limit.as_secs().to_string();
        let mut all = vec!["-k", "5", secs.as_str(), self.env["REPMGR_NAT_BIN"].as_str()];
        all.extend(args);
        let run = self.in_proxy(user, &[], "/usr/bin/timeout", &all);
        assert_ne!(run.code, 124, "repmgr-nat {args:?} did not end within {limit:?}:\n{}", run.stderr);
        run
    }

    fn as_user(&self, user: &str, env: &[(&str, &str)], program: &str) -> Command {
        self.as_user_in("proxy", user, env, program)
    }

    fn as_user_in(&self, ns: &str, user: &str, env: &[(&str, &str)], program: &str) -> Command {
        let home = match user {
            "root" => "/root",
            "postgres" => "/var/lib/postgresql",
            _ => "/nonexistent",
        };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "runuser", "-u", user, "--", "env", "-i"])
            .arg(format!("HOME={home}"))
            .arg(format!("PATH={}", self.env["SYS_PATH"]));
        for (k, v) in env {
            cmd.arg(format!("{k}={v}"));
        }
        cmd.arg(program);
        cmd
    }

    /// A command as `user` in the proxy namespace with a clean environment plus `env`.
    pub fn in_proxy(&self, user: &str, env: &[(&str, &str)], program: &str, args: &[&str]) -> Run {
        let out = self.as_user(user, env, program).args(args).output().expect("cannot run ip netns exec");
        Run::from(&format!("{program} {}", args.join(" ")), out)
    }

    /// A process started as `user` in the proxy namespace (stopped with `stop`).
    pub fn spawn_in_proxy(&self, user: &str, program: &str, args: &[&str]) -> Child {
        self.as_user(user, &[], program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start ip netns exec")
    }

    /// What root recorded with its last switch (the file's text), or "" with none.
    pub fn record(&self) -> String {
        std::fs::read_to_string(Path::new(&self.env["REPMGR_NAT_STATE_DIR"]).join("route")).unwrap_or_default()
    }

    /// An event as repmgr on `node` would send it (through the lab's crossing to the
    /// proxy, logged in the events log).
    pub fn event(&self, node: &str, id: &str, event: &str, success: &str) -> Run {
        self.lab(&["event", node, id, event, success])
    }

    /// Every handler run in the events log.
    pub fn events(&self) -> Vec<EventRun> {
        let text = std::fs::read_to_string(&self.env["EVENTS_LOG"]).unwrap_or_default();
        events::parse(&text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits for a finished handler run of `event` (for `node_id`) begun at or after
    /// `since` (unix ms).
    #[track_caller]
    pub fn wait_event(&self, event: &str, node_id: &str, since: u64, timeout_s: u64) -> EventRun {
        let mut found = None;
        let ended = poll_until(Duration::from_secs(timeout_s), || {
            found = events::finished(&self.events(), event, Some(node_id), since).cloned();
            found.is_some()
        });
        assert!(ended, "no finished handler run for {event} on node {node_id} within {timeout_s} s");
        found.expect("found")
    }

    /// What the handler printed during the run with this id.
    pub fn event_output(&self, id: &str) -> String {
        self.events().iter().filter(|r| r.id == id).flat_map(|r| r.output.iter().map(|l| format!("{l}\n"))).collect()
    }

    /// `barman check` of the lab's server.
    pub fn barman_check(&self) -> (crate::barman::Check, Run) {
        let run = self.lab(&["barman", "check", &self.env["BARMAN_SERVER"]]);
        (crate::barman::Check::parse(run.code, &run.stdout), run)
    }

    /// `barman check` until it is all OK (receive-wal may be starting).
    #[track_caller]
    pub fn wait_barman_ok(&self, timeout: Duration) -> String {
        let mut last = None;
        let ok = poll_until(timeout, || {
            let (check, run) = self.barman_check();
            last = Some(run);
            check.ok()
        });
        let run = last.expect("one check");
        assert!(ok, "barman check not OK within {timeout:?}:\n{}{}", run.stdout, run.stderr);
        run.stdout
    }

    /// Polls `probe` until it returns true; fails naming `what` after `timeout`.
    #[track_caller]
    pub fn wait_until(&self, what: &str, timeout: Duration, probe: impl FnMut() -> bool) {
        assert!(poll_until(timeout, probe), "{what}: not within {timeout:?}");
    }

    /// barman's WAL archive.
    pub fn barman_archive(&self) -> Archive {
        Archive::read(&Path::new(&self.env["BARMAN_HOME"]).join("wals")).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until the samples a background client wrote to `file` satisfy `done`.
    #[track_caller]
    pub fn wait_samples(&self, what: &str, file: &Path, done: impl Fn(&[Sample]) -> bool) {
        self.wait_until(what, Duration::from_secs(120), || done(&samples::read(file)));
    }

    /// Waits until a background client's output has a line containing `text`.
    #[track_caller]
    pub fn wait_for_line(&self, file: &Path, text: &str) {
        self.wait_until(&format!("a line with {text:?} in {}", file.display()), Duration::from_secs(120), || {
            std::fs::read_to_string(file).is_ok_and(|out| out.contains(text))
        });
    }

    /// Stops a background client (SIGTERM: it prints what it has and exits) and waits.
    pub fn stop(&self, mut child: Child) {
        terminate(&mut child);
    }

    /// Leaves the lab up when this goes (`lab.sh down` removes it later).
    pub fn leave_up(self) {
        std::mem::forget(self);
    }
}

/// Every process of this machine, by pid (as /proc lists them; empty if it cannot be read).
pub fn pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// Stops a process this one started, by its pid: SIGTERM, SIGKILL if it has not ended
/// within 10 s; waited for.
pub fn terminate(child: &mut Child) {
    // SAFETY: kill has no memory preconditions; the pid is our own child's.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    if !poll_until(Duration::from_secs(10), || child.try_wait().ok().flatten().is_some()) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // (no EVENTS_LOG when up itself failed)
        if thread::panicking() && self.env.contains_key("EVENTS_LOG") {
            eprintln!("--- failed; the last handler runs:");
            for run in self.events().iter().rev().take(20).rev() {
                eprintln!("{}", run.summary());
            }
        }
        let down = self.lab(&["down"]);
        if down.code != 0 {
            eprintln!("lab.sh down failed:\n{}{}", down.stdout, down.stderr);
            if !thread::panicking() {
                panic!("lab.sh down failed");
            }
        }
    }
}
