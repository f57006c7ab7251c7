//! repmgr-nat as repmgr and an operator see it from outside: exit codes and one-line errors,
//! for bad input that must be refused before anything is asked or changed. No root, no
//! lab: the binary with a config of the test's own (as root, the config must be trusted,
//! and a fresh directory of root's is).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CONFIG: &str = "\
[proxy]
address = \"198.51.100.3\"
[ports]
postgres = 5432
barman = 54321
app = 54322
[nodes]
1 = \"198.51.100.11\"
2 = \"198.51.100.12\"
[postgres]
user = \"repmgr_nat\"
dbname = \"postgres\"
[barman]
server = \"main_backup\"
slot = \"barman\"
";

/// A directory of the test's own, removed when it goes.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("repmgr-nat-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        Scratch(dir)
    }

    fn config(&self, text: &str) -> PathBuf {
        let path = self.0.join("repmgr-nat.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// repmgr-nat ARGS with no environment of the caller's.
fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_repmgr-nat"))
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap()
}

/// Exits `code` with exactly one line on stderr, containing `says`; nothing on stdout.
#[track_caller]
fn refused(args: &[&str], code: i32, says: &str) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: one line, not:\n{stderr}");
    assert!(stderr.contains(says), "{args:?}: {stderr:?} does not say {says:?}");
    assert!(out.stdout.is_empty(), "{args:?}: {}", String::from_utf8_lossy(&out.stdout));
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn help_and_version_exit_0_on_stdout() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["event", "setup", "reconcile", "watch", "status", "check", "teardown", "route", "can-serve"] {
        assert!(help.contains(command), "--help lists {command}:\n{help}");
    }
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("repmgr-nat "));
}

/// The packaging's step: the man pages and the completions, rendered by the program; not
/// in the command line they document.
#[test]
fn generate_writes_the_man_pages_and_the_completions() {
    let dir = Scratch::new("generate");
    let out = run(&["generate", path(&dir.0)]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let page = std::fs::read_to_string(dir.0.join("man/repmgr-nat.1")).unwrap();
    assert!(page.contains(".SH \"EXIT STATUS\""), "{page}");
    assert!(dir.0.join("man/repmgr-nat-route.1").is_file());
    for file in ["repmgr-nat.bash", "_repmgr-nat", "repmgr-nat.fish"] {
        let text = std::fs::read_to_string(dir.0.join("completions").join(file)).unwrap();
        assert!(text.contains("can-serve") && !text.contains("generate"), "{file}");
    }
    assert!(!String::from_utf8_lossy(&run(&["--help"]).stdout).contains("generate"));
}

#[test]
fn a_bad_command_line_is_one_line_and_exit_2() {
    refused(&["route --show"], 2, "unrecognized subcommand");
    refused(&["event"], 2, "required");
    refused(&["route", "2", "--ports", "everything"], 2, "invalid value");
    refused(&["status", "--json", "extra"], 2, "unexpected argument");
    refused(&["check", "--json", "extra"], 2, "unexpected argument");
    refused(&["--config", "/nonexistent/repmgr-nat.toml", "check"], 2, "/nonexistent/repmgr-nat.toml");
}

#[test]
fn a_malformed_event_is_refused_before_the_config_is_read() {
    let missing = "/nonexistent/repmgr-nat.toml";
    refused(&["--config", missing, "event", "x", "standby_promote", "1"], 2, "node id");
    refused(&["--config", missing, "event", "1", "standby_promote\u{1b}[31m", "1"], 2, "event");
    refused(&["--config", missing, "event", "1", "standby_promote", "yes"], 2, "success");
    // ignored events need no config
    let out = run(&["--config", missing, "event", "1", "repmgrd_start", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_bad_config_is_one_line_naming_the_file_or_the_key() {
    refused(&["--config", "/nonexistent/repmgr-nat.toml", "status"], 2, "/nonexistent/repmgr-nat.toml");
    let scratch = Scratch::new("bad-config");
    let unknown = scratch.config(&CONFIG.replace("[barman]\n", "[barman]\nslots = true\n"));
    refused(&["--config", path(&unknown), "status"], 2, "slots");
    let bad = scratch.config(&CONFIG.replace("54321", "70000"));
    refused(&["--config", path(&bad), "status"], 2, "barman");
    let not_toml = scratch.config("[proxy\n");
    refused(&["--config", path(&not_toml), "--dry-run", "reconcile"], 2, "bad config");
}

#[test]
fn an_unknown_node_is_refused_naming_the_known_ones() {
    let scratch = Scratch::new("unknown-node");
    let config = scratch.config(CONFIG);
    let config = path(&config);
    refused(&["--config", config, "--dry-run", "event", "7", "standby_promote", "1"], 2, "node id 7");
    refused(&["--config", config, "--dry-run", "reconcile", "--primary", "9"], 2, "node id 9");
}

#[test]
fn route_and_setup_need_root_and_route_takes_no_other_config() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        refused(
            &["--config", "/tmp/other.toml", "route", "1", "--ports", "all"],
            2,
            "route reads only /etc/repmgr-nat.toml",
        );
        // before any config is read
        refused(&["--config", "/nonexistent/repmgr-nat.toml", "watch"], 2, "watch must not run as root");
        // a follow into a file or /dev/null would never end: refused before the config
        let out = Command::new(env!("CARGO_BIN_EXE_repmgr-nat"))
            .args(["--instance", "nonexistent", "route", "--show", "--follow"])
            .env_clear()
            .stdout(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("writes only to a pipe") && stderr.lines().count() == 1, "{stderr}");
    } else {
        refused(&["route", "1", "--ports", "all"], 2, "must run as root");
        refused(&["setup"], 2, "must run as root");
        refused(&["teardown"], 2, "must run as root");
    }
}

#[test]
fn in_the_journal_each_line_carries_its_priority_and_no_timestamp() {
    use std::os::unix::fs::MetadataExt;
    let scratch = Scratch::new("journal");
    let log = scratch.0.join("stderr");
    let inode = std::fs::File::create(&log).unwrap().metadata().unwrap();
    let stream = format!("{}:{}", inode.dev(), inode.ino());
    // stderr the file JOURNAL_STREAM names (as systemd passes it), or not
    let stderr_of = |args: &[&str], journal: bool| {
        let file = std::fs::OpenOptions::new().write(true).truncate(true).open(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_repmgr-nat"));
        cmd.args(args).env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").stderr(file);
        if journal {
            cmd.env("JOURNAL_STREAM", &stream);
        }
        cmd.status().unwrap();
        std::fs::read_to_string(&log).unwrap()
    };
    let missing = "/nonexistent/repmgr-nat.toml";
    let failed_event = ["--config", missing, "event", "1", "standby_promote", "0"];
    let warning = stderr_of(&failed_event, true);
    assert!(warning.starts_with("<4>") && warning.lines().count() == 1, "{warning:?}");
    let error = stderr_of(&["--config", missing, "status"], true);
    assert!(error.starts_with("<3>") && error.contains(missing), "{error:?}");
    // elsewhere: a timestamp, the program and its pid, the level
    let plain = stderr_of(&failed_event, false);
    assert!(plain.starts_with("20") && plain.contains(" repmgr-nat[") && plain.contains("WARN"), "{plain:?}");
}

#[test]
fn can_serve_says_whether_watch_runs_and_routes_in_one_line() {
    let scratch = Scratch::new("can-serve");
    let watch_dir = scratch.0.join("watch");
    std::fs::create_dir(&watch_dir).unwrap();
    // watch.json is repmgr's OS user's: here, whoever runs the test
    let config =
        scratch.config(&format!("{CONFIG}[watch]\ndir = \"{}\"\n[repmgr]\nuser = \"{}\"\n", watch_dir.display(), me()));
    let args = ["--config", path(&config), "can-serve"];
    refused(&args, 1, "does not run here");

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let report = |pid: u32, misrouted_since: Option<u64>| {
        format!(
            r#"{{"version":1,"pid":{pid},"started_ms":{now},"pass":3,"passed_ms":{now},"interval_ms":250,
            "hurry":false,"primary":"node 1 on timeline 1","rules":"node 1 ports all","nodes":"1: primary",
            "unanswered":[],"receive_wal":null,"barman_confirmed":null,"last_action":null,
            "misrouted_since_ms":{}}}"#,
            misrouted_since.map_or("null".to_string(), |t| t.to_string())
        )
    };
    let json = watch_dir.join("watch.json");
    // this test's own process stands for a running watch
    std::fs::write(&json, report(std::process::id(), None)).unwrap();
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "exit code only");

    std::fs::write(&json, report(std::process::id(), Some(now - 10_000))).unwrap();
    refused(&args, 1, "have not forwarded to a legitimate primary");
    // a pid no process has (above the kernel's pid_max)
    std::fs::write(&json, report(4_194_305, None)).unwrap();
    refused(&args, 1, "is not running");
    // never read through a symbolic link
    let elsewhere = scratch.0.join("elsewhere.json");
    std::fs::write(&elsewhere, report(std::process::id(), None)).unwrap();
    std::fs::remove_file(&json).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &json).unwrap();
    refused(&args, 1, "does not run here");
    // root reads only a file of repmgr's OS user's
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::fs::remove_file(&json).unwrap();
        std::fs::write(&json, report(std::process::id(), None)).unwrap();
        std::os::unix::fs::chown(&json, Some(65534), None).unwrap();
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("not by repmgr's OS user") && stderr.contains("does not run here"), "{stderr}");
    }
}

#[test]
fn check_prints_one_line_per_check_names_what_to_change_and_exits_1() {
    let scratch = Scratch::new("check");
    let (state, watch) = (scratch.0.join("state"), scratch.0.join("watch"));
    let without_barman =
        CONFIG.replace("barman = 54321\n", "").replace("[barman]\nserver = \"main_backup\"\nslot = \"barman\"\n", "");
    let config = scratch.config(&format!(
        "{}connect_timeout = 1\n[state]\ndir = \"{}\"\n[watch]\ndir = \"{}\"\n[repmgr]\nuser = \"no-such-user-here\"\n",
        without_barman,
        state.display(),
        watch.display()
    ));
    let out = run(&["--config", path(&config), "check"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.lines().all(|l| l.starts_with("OK  ") || l.starts_with("WARN  ") || l.starts_with("FAILED  ")),
        "{stdout}"
    );
    let failed = |start: &str| stdout.lines().any(|l| l.starts_with(&format!("FAILED  {start}")));
    assert!(failed(&format!("state dir {} and run lock: ", state.display())), "{stdout}");
    assert!(stdout.contains("run `repmgr-nat setup` as root (it makes both)"), "{stdout}");
    assert!(failed(&format!("watch runs and its last pass is fresh: no {}/watch.json", watch.display())), "{stdout}");
    assert!(failed("sudo admits what repmgr-nat runs: there is no OS user \"no-such-user-here\""), "{stdout}");
    // as another user than root it asks the nodes (root does not talk to them): a node
    // nobody can reach from here (TEST-NET-2) fails within connect_timeout
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let as_nobody;
    let as_user = match root {
        true => {
            as_nobody = Command::new("runuser")
                .args(["-u", "nobody", "--", env!("CARGO_BIN_EXE_repmgr-nat"), "--config", path(&config), "check"])
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .output()
                .unwrap();
            &as_nobody
        }
        // not root: the run above was already as another user
        false => &out,
    };
    let user_out = String::from_utf8_lossy(&as_user.stdout);
    assert_eq!(as_user.status.code(), Some(1), "{user_out}{}", String::from_utf8_lossy(&as_user.stderr));
    for node in ["node 1 (198.51.100.11:5432)", "node 2 (198.51.100.12:5432)"] {
        let line = user_out.lines().find(|l| l.contains(node)).unwrap_or_default();
        assert!(line.starts_with(&format!("FAILED  {node} answers within 1000 ms: ")), "{user_out}");
    }
    if root {
        assert!(!stdout.contains("node 1 ("), "root asks no node:\n{stdout}");
    } else {
        assert!(failed(&format!("config {} as the root step reads it: ", config.display())), "{stdout}");
    }
    assert!(stderr.lines().last().unwrap_or("").contains("checks failed"), "{stderr}");

    let out = run(&["--config", path(&config), "check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["version"], 1);
    let checks = json["checks"].as_array().unwrap();
    assert_eq!(checks.len(), stdout.lines().count(), "the same checks as the text");
    assert!(checks.iter().all(|c| c["name"].is_string() && c["ok"].is_boolean() && c["detail"].is_string()));
    let watch_check = checks.iter().find(|c| c["name"] == "watch runs and its last pass is fresh").unwrap();
    assert_eq!(watch_check["ok"], false);

    // as a Nagios plugin: CRITICAL, what failed first, the same lines after
    let out = run(&["--config", path(&config), "check", "--nagios"]);
    assert_eq!(out.status.code(), Some(2), "CRITICAL");
    let nagios = String::from_utf8_lossy(&out.stdout);
    let first = nagios.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("REPMGR-NAT CRITICAL - ") && first.contains("watch runs and its last pass is fresh"),
        "{first}"
    );
    assert!(first.contains(&format!(" | checks={};;;0 failed=", checks.len())), "{first}");
    assert_eq!(nagios.lines().count(), checks.len() + 1, "{nagios}");
}

/// Whatever stops it from checking (a config it cannot read, a bad name, a bad command
/// line) makes the plugin UNKNOWN (3), in one line on stdout, never CRITICAL.
#[test]
fn check_as_a_nagios_plugin_is_unknown_when_it_cannot_check() {
    let cases = [
        (&["--config", "/nonexistent/repmgr-nat.toml", "check", "--nagios"][..], "/nonexistent/repmgr-nat.toml"),
        (&["--instance", "../etc", "check", "--nagios"][..], "instance \"../etc\""),
        (&["check", "--json", "--nagios"][..], "cannot be used with"),
    ];
    for (args, says) in cases {
        let out = run(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(3), "{args:?}: UNKNOWN, not {stdout}");
        assert!(stdout.starts_with("REPMGR-NAT UNKNOWN - ") && stdout.contains(says), "{args:?}: {stdout}");
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
    }
    refused(&["check", "--json", "extra"], 2, "unexpected argument");
}

/// The name of the user running the test.
fn me() -> String {
    // SAFETY: getpwuid returns null or a pointer to a static entry, read at once.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        assert!(!pw.is_null(), "the test's user has no name");
        std::ffi::CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned()
    }
}
