//! The lab as the tests see it: `lab/lab.sh` brings a cluster up in network namespaces
//! and takes it down again; these helpers run commands in it and read what a user would
//! look at (the nat table, the slots, which server answers, repmgr-nat's exit code).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One lab at a time on this machine: tests, the demo and the benchmark all take it.
const SESSION_LOCK: &str = "/run/repmgr-nat-lab.session.lock";

pub const DB1: &str = "198.51.100.11";
pub const DB2: &str = "198.51.100.12";

pub const PROXY: &str = "198.51.100.3";

/// Our chains for a route, with the jumps and the hold, as `iptables-save` prints them
/// (sorted).
pub fn routed_to(node: &str, ports: &[u16]) -> Vec<String> {
    let mut lines = vec![
        ":repmgr_dnat - [0:0]".to_string(),
        ":repmgr_snat - [0:0]".to_string(),
        ":repmgr_hold - [0:0]".to_string(),
        "-A PREROUTING -j repmgr_dnat".to_string(),
        "-A OUTPUT -j repmgr_dnat".to_string(),
        "-A POSTROUTING -j repmgr_snat".to_string(),
        "-A INPUT -j repmgr_hold".to_string(),
        format!("-A repmgr_hold -d {PROXY}/32 -p tcp -m tcp --dport 54322 --tcp-flags FIN,SYN,RST,ACK SYN -j DROP"),
        format!("-A repmgr_snat -d {node}/32 -p tcp -m tcp --dport 5432 -j SNAT --to-source {PROXY}"),
    ];
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

pub const BOTH: &[u16] = &[54321, 54322];

/// Everything that must not move when repmgr-nat refuses or ignores something.
pub fn snapshot(lab: &Lab) -> (String, Vec<String>, Vec<String>) {
    (lab.nat(), lab.slots("db1"), lab.slots("db2"))
}

/// What a command did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(what: &str, out: Output) -> Run {
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

pub struct Lab {
    root: PathBuf,
    pub env: HashMap<String, String>,
    _session: File,
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

impl Lab {
    /// A fresh lab with repmgr-nat as the handler: db1 primary, db2 its standby, barman
    /// streaming through the proxy, the NAT pointing at db1.
    pub fn up() -> Lab {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the lab tests need root (network namespaces, iptables, PostgreSQL clusters): run tests/run as root"
        );
        let session = File::options().create(true).truncate(false).write(true).open(SESSION_LOCK).unwrap();
        session.lock().expect("cannot take the lab session lock");
        let root = repo();
        let mut lab = Lab { root, env: HashMap::new(), _session: session };
        let up = lab.lab(&["up"]);
        assert_eq!(up.code, 0, "lab.sh up failed\n--- stdout\n{}--- stderr\n{}", up.stdout, up.stderr);
        lab.env = lab
            .ok(&["env"])
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect();
        lab
    }

    fn lab_sh(&self) -> PathBuf {
        self.root.join("lab/lab.sh")
    }

    /// `lab/lab.sh ARGS...`
    pub fn lab(&self, args: &[&str]) -> Run {
        let out = Command::new(self.lab_sh()).args(args).output().expect("cannot run lab/lab.sh");
        Run::from(&format!("lab.sh {}", args.join(" ")), out)
    }

    /// `lab/lab.sh ARGS...`, which must succeed; its stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        self.lab(args).expect(0, &format!("lab.sh {}", args.join(" "))).stdout
    }

    /// `lab/lab.sh ARGS...` started in the background, output into `file`.
    pub fn spawn(&self, args: &[&str], file: &Path) -> Child {
        let out = File::create(file).unwrap();
        Command::new(self.lab_sh())
            .args(args)
            .stdout(out)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start lab/lab.sh")
    }

    /// A query; target is db1|db2 (local socket), proxy-app (from the app namespace
    /// through the application port) or proxy-barman (from the proxy, as barman does).
    #[track_caller]
    pub fn sql(&self, target: &str, sql: &str) -> String {
        self.ok(&["psql", target, sql]).trim().to_string()
    }

    pub fn try_sql(&self, target: &str, sql: &str) -> Result<String, String> {
        let run = self.lab(&["psql", target, sql]);
        if run.code == 0 { Ok(run.stdout.trim().to_string()) } else { Err(run.stderr) }
    }

    /// The server a new connection through the application port reaches.
    pub fn app_reaches(&self) -> Result<String, String> {
        self.try_sql("proxy-app", "select host(inet_server_addr())")
    }

    /// The server a new connection through barman's port reaches (as barman connects).
    pub fn barman_reaches(&self) -> Result<String, String> {
        self.try_sql("proxy-barman", "select host(inet_server_addr())")
    }

    /// The replication slots on a node (empty when it is down).
    pub fn slots(&self, node: &str) -> Vec<String> {
        match self.try_sql(node, "select slot_name from pg_replication_slots order by 1") {
            Ok(text) => text.lines().map(str::to_string).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// barman's slot on a node: None when it has none, else whether a walsender uses it.
    pub fn slot_active(&self, node: &str) -> Option<bool> {
        let active = self.try_sql(node, "select active from pg_replication_slots where slot_name = 'barman'").ok()?;
        match active.as_str() {
            "t" => Some(true),
            "f" => Some(false),
            _ => None,
        }
    }

    /// Waits until barman streams from `primary` (a walsender on its slot) and from
    /// nothing else (the other node may keep a slot, without a walsender).
    #[track_caller]
    pub fn wait_slots(&self, primary: &str, timeout: Duration) {
        let standby = if primary == "db1" { "db2" } else { "db1" };
        self.wait_until(&format!("barman streaming from {primary} only"), timeout, || {
            self.slot_active(primary) == Some(true) && self.slot_active(standby) != Some(true)
        });
    }

    /// How many passes `lab.sh watch start` made so far (0 when it wrote nothing yet).
    pub fn watch_passes(&self) -> u64 {
        let path = Path::new(&self.env["WATCH_DIR"]).join("watch.json");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let pass = text.split("\"pass\":").nth(1).and_then(|rest| rest.split([',', '}']).next());
        pass.and_then(|n| n.trim().parse().ok()).unwrap_or(0)
    }

    /// The proxy's tables (nat and filter), without comments and counters.
    pub fn nat(&self) -> String {
        self.ok(&["nat"]).lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).collect()
    }

    /// The lines of the nat table that concern repmgr-nat: our chains, their rules, the
    /// jumps to them.
    pub fn our_rules(&self) -> Vec<String> {
        self.nat().lines().filter(|l| l.contains("repmgr_")).map(str::to_string).collect()
    }

    /// repmgr-nat ARGS as `user` ("root" or "postgres") in the proxy namespace, with the
    /// environment a login (or the boot unit, for root) would give it.
    pub fn repmgr_nat(&self, user: &str, args: &[&str]) -> Run {
        self.in_proxy(user, &[], "/usr/local/bin/repmgr-nat", args)
    }

    /// repmgr-nat ARGS as `user`, which must end within `limit`: killed otherwise, and the
    /// test fails saying so.
    #[track_caller]
    pub fn repmgr_nat_within(&self, limit: Duration, user: &str, args: &[&str]) -> Run {
        let secs = limit.as_secs().to_string();
        let mut all = vec!["-k", "5", secs.as_str(), "/usr/local/bin/repmgr-nat"];
        all.extend(args);
        let run = self.in_proxy(user, &[], "/usr/bin/timeout", &all);
        assert_ne!(run.code, 124, "repmgr-nat {args:?} did not end within {limit:?}:\n{}", run.stderr);
        run
    }

    /// A command as `user` in the proxy namespace with a clean environment plus `env`.
    pub fn in_proxy(&self, user: &str, env: &[(&str, &str)], program: &str, args: &[&str]) -> Run {
        let home = match user {
            "root" => "/root",
            "postgres" => "/var/lib/postgresql",
            _ => "/nonexistent",
        };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", "proxy", "runuser", "-u", user, "--", "env", "-i"])
            .arg(format!("HOME={home}"))
            .arg("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        for (k, v) in env {
            cmd.arg(format!("{k}={v}"));
        }
        let out = cmd.arg(program).args(args).output().expect("cannot run ip netns exec");
        Run::from(&format!("{program} {}", args.join(" ")), out)
    }

    /// A process started as `user` in the proxy namespace (stopped with `stop`).
    pub fn spawn_in_proxy(&self, user: &str, program: &str, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", "proxy", "runuser", "-u", user, "--", program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start ip netns exec")
    }

    /// What root recorded with its last switch (the file's text), or "" with none.
    pub fn record(&self) -> String {
        std::fs::read_to_string("/var/lib/repmgr-nat/route").unwrap_or_default()
    }

    /// An event as repmgr on `node` would send it (through the lab's crossing to the
    /// proxy, logged in the events log).
    pub fn event(&self, node: &str, id: &str, event: &str, success: &str) -> Run {
        self.lab(&["event", node, id, event, success])
    }

    /// Waits for a finished handler run of `event` (for `node_id`) begun after `since`.
    #[track_caller]
    pub fn wait_event(&self, event: &str, node_id: &str, since: u64, timeout_s: u32) -> EventRun {
        let line = self.ok(&[
            "wait-event",
            event,
            "--node",
            node_id,
            "--since-ms",
            &since.to_string(),
            "--timeout",
            &timeout_s.to_string(),
        ]);
        EventRun::parse(line.trim()).unwrap_or_else(|| panic!("cannot read the event run {line:?}"))
    }

    /// What the handler printed during the run with this id.
    pub fn event_output(&self, id: &str) -> String {
        let log = std::fs::read_to_string(&self.env["EVENTS_LOG"]).unwrap();
        log.lines()
            .filter_map(|l| {
                let mut parts = l.splitn(4, ' ');
                let (_ms, run, kind, rest) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
                (run == id && kind == "out").then(|| format!("{rest}\n"))
            })
            .collect()
    }

    /// `barman check main_backup` until it is all OK (receive-wal may be starting).
    #[track_caller]
    pub fn wait_barman_ok(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let run = self.lab(&["barman", "check", "main_backup"]);
            if run.code == 0 && !run.stdout.contains("FAILED") {
                return run.stdout;
            }
            assert!(Instant::now() < deadline, "barman check not OK within {timeout:?}:\n{}{}", run.stdout, run.stderr);
            thread::sleep(Duration::from_millis(500));
        }
    }

    /// Polls `probe` until it returns true.
    #[track_caller]
    pub fn wait_until(&self, what: &str, timeout: Duration, mut probe: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !probe() {
            assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The WAL files barman holds, by timeline, and the timeline history files.
    pub fn barman_wals(&self) -> (Vec<Wal>, Vec<String>) {
        let dir = Path::new(&self.env["BARMAN_HOME"]).join("wals");
        let mut wals = Vec::new();
        let mut histories = Vec::new();
        for sub in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display())) {
            let sub = sub.unwrap().path();
            if !sub.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&sub).unwrap() {
                let name = f.unwrap().file_name().to_string_lossy().into_owned();
                if let Some(wal) = Wal::parse(&name) {
                    wals.push(wal);
                } else if name.ends_with(".history") {
                    histories.push(name);
                }
            }
        }
        wals.sort();
        histories.sort();
        (wals, histories)
    }

    /// A timeline history file from barman's WAL archive (kept at its top level).
    pub fn barman_history(&self, name: &str) -> String {
        let path = Path::new(&self.env["BARMAN_HOME"]).join("wals").join(name);
        let mut text = String::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .unwrap_or_else(|e| panic!("{} is not in barman's WAL archive: {e}", path.display()));
        text
    }

    /// Waits until a background probe's output has a line containing `text` (the probe
    /// may first be built).
    #[track_caller]
    pub fn wait_for_line(&self, file: &Path, text: &str) {
        self.wait_until(&format!("a line with {text:?} in {}", file.display()), Duration::from_secs(120), || {
            std::fs::read_to_string(file).is_ok_and(|out| out.contains(text))
        });
    }

    /// Stops a background lab-probe (SIGTERM; it flushes and exits) and waits for it.
    pub fn stop(&self, mut child: Child) {
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- the test failed; the events log:");
            if let Some(log) = self.env.get("EVENTS_LOG") {
                let _ = Command::new("tail").args(["-n", "80", log]).status();
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

/// One handler run from `lab.sh events --summary`.
#[derive(Debug)]
pub struct EventRun {
    pub id: String,
    pub exit: i32,
}

impl EventRun {
    fn parse(line: &str) -> Option<EventRun> {
        let mut words = line.split_whitespace();
        let _begin = words.next()?;
        let id = words.next()?.to_string();
        let exit = words.find_map(|w| w.strip_prefix("exit="))?.parse().ok()?;
        Some(EventRun { id, exit })
    }
}

/// A WAL segment file name: timeline and segment number (16 MB segments).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Wal {
    pub timeline: u32,
    pub segment: u64,
}

impl Wal {
    pub fn parse(name: &str) -> Option<Wal> {
        let base = name.split('.').next()?;
        if base.len() != 24 || !base.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let timeline = u32::from_str_radix(&base[0..8], 16).ok()?;
        let log = u64::from_str_radix(&base[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&base[16..24], 16).ok()?;
        Some(Wal { timeline, segment: log * 0x100 + seg })
    }

    /// The segment holding an LSN written as "X/Y".
    pub fn segment_of(lsn: &str) -> u64 {
        let (hi, lo) = lsn.split_once('/').unwrap();
        let lsn = (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
        lsn / (16 << 20)
    }
}

/// Undoes a fault (`lab.sh thaw NODE`, `lab.sh heal NODE`, ...) when dropped, also when a
/// test fails half-way.
pub struct Undo<'a> {
    lab: &'a Lab,
    args: Vec<String>,
}

impl Lab {
    /// `lab.sh DO NODE` now, `lab.sh UNDO NODE` when the guard goes.
    #[track_caller]
    pub fn fault<'a>(&'a self, fault: &str, undo: &str, node: &str) -> Undo<'a> {
        self.ok(&[fault, node]);
        Undo { lab: self, args: vec![undo.to_string(), node.to_string()] }
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let run = self.lab.lab(&args);
        if run.code != 0 {
            eprintln!("lab.sh {args:?} failed: {}", run.stderr);
        }
    }
}

/// Puts a file back as it was when the guard was made, also when a test fails half-way.
pub struct Restore {
    path: PathBuf,
    saved: Option<(Vec<u8>, std::fs::Metadata)>,
}

impl Restore {
    pub fn file(path: &str) -> Restore {
        let saved = std::fs::read(path).ok().map(|content| (content, std::fs::metadata(path).unwrap()));
        Restore { path: PathBuf::from(path), saved }
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        match &self.saved {
            Some((content, meta)) => {
                let _ = std::fs::remove_file(&self.path);
                std::fs::write(&self.path, content).expect("cannot restore a file");
                std::os::unix::fs::chown(&self.path, Some(meta.uid()), Some(meta.gid())).unwrap();
                std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(meta.mode())).unwrap();
            }
            None => {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// What `lab-probe write` wrote: every acknowledged commit (row id -> attempt number) and
/// how many attempts it made; each row's payload is `lab-probe <pid> <attempt>`.
#[derive(Debug)]
pub struct Writes {
    pub pid: u32,
    pub attempts: u64,
    pub acked: BTreeMap<i64, u64>,
}

impl Writes {
    #[track_caller]
    pub fn read(path: &Path) -> Writes {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut writes = Writes { pid: 0, attempts: 0, acked: BTreeMap::new() };
        for line in text.lines() {
            if let Some(pid) = line.strip_prefix("# lab-probe write pid=") {
                writes.pid = pid.parse().unwrap();
                continue;
            }
            let words: Vec<&str> = line.split(' ').collect();
            match words[..] {
                [_, "err", ..] => writes.attempts += 1,
                [_, "ok", _, id, seq] => {
                    writes.attempts += 1;
                    let id = id.strip_prefix("id=").and_then(|i| i.parse().ok()).unwrap_or_else(|| panic!("{line}"));
                    let seq = seq.strip_prefix("seq=").and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{line}"));
                    writes.acked.insert(id, seq);
                }
                _ => panic!("{}: cannot read {line:?}", path.display()),
            }
        }
        assert!(writes.pid > 0, "{}: no pid line", path.display());
        writes
    }

    /// Checks the rows of a table (`id|payload` lines) against what was written: every
    /// acknowledged row is there with its payload, and no row is one nobody attempted.
    /// Returns how many rows there are.
    pub fn check(&self, rows: &str) -> Result<usize, String> {
        let mut found = BTreeMap::new();
        for line in rows.lines() {
            let (id, payload) = line.split_once('|').ok_or(format!("bad row {line:?}"))?;
            found.insert(id.parse::<i64>().map_err(|e| format!("{line}: {e}"))?, payload.to_string());
        }
        let missing: Vec<&i64> = self.acked.keys().filter(|id| !found.contains_key(id)).collect();
        if !missing.is_empty() {
            return Err(format!(
                "{} acknowledged commits missing, first {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            ));
        }
        for (id, seq) in &self.acked {
            let want = format!("lab-probe {} {seq}", self.pid);
            if found[id] != want {
                return Err(format!("row {id} holds {:?}, acknowledged as {want:?}", found[id]));
            }
        }
        let invented: Vec<&String> = found
            .values()
            .filter(|payload| {
                let seq = payload.strip_prefix(&format!("lab-probe {} ", self.pid)).and_then(|s| s.parse::<u64>().ok());
                !seq.is_some_and(|seq| seq >= 1 && seq <= self.attempts)
            })
            .collect();
        if !invented.is_empty() {
            return Err(format!("rows nobody wrote: {:?}", &invented[..invented.len().min(10)]));
        }
        Ok(found.len())
    }
}
