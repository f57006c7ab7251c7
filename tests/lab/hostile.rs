//! repmgr-nat as root-adjacent software, tried as a hostile local user would: as postgres
//! (who may run the root step through sudo) and as nobody (who may not). Each case
//! checks that the rules, the record and the slots are unchanged where they must be, and
//! that no local user can stall the root step, the events or watch.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, BOTH, DB1, DB2, Lab, Restore, routed_to, snapshot, sorted};

const ROUTE: &str = "/usr/bin/repmgr-nat";
const CONFIG: &str = "/etc/repmgr-nat.toml";
const STATE: &str = "/var/lib/repmgr-nat";
/// Far more than the commands below take when nothing stalls them.
const BOUNDED: Duration = Duration::from_secs(20);

/// Everything that must not move: the tables, the slots, the record.
fn state(lab: &Lab) -> (String, Vec<String>, Vec<String>, String) {
    let (nat, db1, db2) = snapshot(lab);
    (nat, db1, db2, lab.record())
}

#[test]
fn sudo_lets_postgres_name_a_configured_node_and_nothing_else() {
    let lab = Lab::up();
    let visudo = Command::new("visudo").args(["-cf", "sudoers.d/repmgr-nat"]).current_dir(common::repo()).output();
    assert!(visudo.unwrap().status.success(), "visudo -cf sudoers.d/repmgr-nat");
    let evil = "/tmp/repmgr-nat-evil.toml";
    let _evil = Restore::file(evil);
    let own = std::fs::read_to_string(CONFIG).unwrap();
    std::fs::write(evil, own.replace("1 = \"198.51.100.11\"", "1 = \"198.51.100.99\"")).unwrap();
    let before = state(&lab);
    let sudo = |user: &str, args: &[&str]| lab.in_proxy(user, &[], "sudo", args);

    // refused by sudo itself: other commands, other options, other users, odd words
    for args in [
        &["-n", ROUTE, "route", "1", "--ports", "all", "--config", evil][..],
        &["-n", ROUTE, "--config", evil, "route", "1", "--ports", "all"],
        &["-n", ROUTE, "route", "198.51.100.99", "--ports", "all"],
        &["-n", ROUTE, "route", "2", "--ports", "all", ""],
        &["-n", ROUTE, "route", "", "2", "--ports", "all"],
        &["-n", ROUTE, "route", "2", "--ports", "all", "-v"],
        &["-n", ROUTE, "route", "2", "--ports", "all", "--dry-run"],
        &["-n", ROUTE, "-q", "route", "2", "--ports", "all"],
        &["-n", ROUTE, "route", "02", "--ports", "all"],
        &["-n", ROUTE, "route", "2", "--ports=all"],
        &["-n", ROUTE, "route", "2", "--ports", "ALL"],
        &["-n", ROUTE, "route", "2", "--ports", "all", "--timeline", "0"],
        &["-n", ROUTE, "route", "2", "--ports", "all", "--show"],
        &["-n", ROUTE, "route", "2\n", "--ports", "all"],
        &["-n", ROUTE, "route", "２", "--ports", "all"],
        &["-n", ROUTE, "route", "--show", "--show"],
        &["-n", ROUTE, "--instance", "../etc/x", "route", "1", "--ports", "all"],
        &["-n", ROUTE, "--instance", "/tmp/repmgr-nat-evil", "route", "--show"],
        &["-n", ROUTE, "--instance", "Two", "route", "--show"],
        &["-n", ROUTE, "--instance=two", "route", "--show"],
        &["-n", ROUTE, "--instance", "two", "--config", evil, "route", "--show"],
        &["-n", ROUTE, "route", "1", "--ports", "all", "--instance", "two"],
        &["-n", ROUTE, "--instance", "two", "--instance", "three", "route", "--show"],
        &["-n", ROUTE, "--instance", "a234567890123456x", "route", "--show"],
        &["-n", ROUTE, "setup"],
        &["-n", ROUTE, "teardown"],
        &["-n", "/usr/sbin/iptables", "-t", "nat", "-F"],
        &["-n", "XTABLES_LIBDIR=/tmp/xt", ROUTE, "route", "1", "--ports", "all"],
        &["-n", "-E", ROUTE, "route", "1", "--ports", "all"],
        &["-n", "-D", "/tmp", ROUTE, "route", "1", "--ports", "all"],
        &["-n", "-u", "barman", "/usr/bin/barman", "backup", "main_backup"],
        &["-n", "-u", "barman", "/usr/bin/barman", "receive-wal", "--stop", "all"],
        &["-n", "-u", "barman", "/usr/bin/barman", "receive-wal", "--reset", "main_backup"],
        &["-n", "-u", "barman", "/usr/bin/barman", "receive-wal", "--create-slot", "main_backup"],
        &["-n", "-u", "barman", "/usr/bin/barman", "-c", "/tmp/x.conf", "receive-wal", "main_backup"],
        &["-n", "-u", "barman", "/usr/bin/barman", "switch-wal", "--force", "--archive", "--archive-timeout=1", "all"],
    ] {
        for user in ["postgres", "nobody"] {
            let run = sudo(user, args);
            assert_eq!(run.code, 1, "{user}: sudo {args:?}: {}{}", run.stdout, run.stderr);
            assert!(run.stderr.starts_with("sudo: "), "{user}: refused by sudo, not later: {args:?}: {}", run.stderr);
        }
    }
    // -g with one's own group: sudo runs the command as the caller, not root, and route
    // refuses to run as anyone but root
    let run = sudo("postgres", &["-n", "-g", "postgres", ROUTE, "route", "1", "--ports", "all"]);
    let refused = run.stderr.starts_with("sudo: ") || run.stderr.contains("must run as root");
    assert!(run.code != 0 && refused, "sudo -g postgres: {}{}", run.stdout, run.stderr);
    // words split otherwise than sudo joins them: sudo lets them through, clap refuses
    for args in [
        &["-n", ROUTE, "route 2", "--ports", "all"][..],
        &["-n", ROUTE, "route", "2 --ports", "all"],
        &["-n", ROUTE, "route", "2", "--ports all"],
        &["-n", ROUTE, "route 2 --ports all"],
        &["-n", ROUTE, "route --show"],
    ] {
        let run = sudo("postgres", args).expect(2, &format!("sudo {args:?}"));
        assert_eq!(run.stderr.lines().count(), 1, "one line: {args:?}: {}", run.stderr);
    }
    // barman's own argument parsing refuses what sudo's joining lets through
    let run = sudo("postgres", &["-n", "-u", "barman", "/usr/bin/barman", "receive-wal main_backup"]);
    assert_ne!(run.code, 0, "barman took 'receive-wal main_backup' as one word: {}", run.stdout);
    // ids that pass the sudoers pattern but not the config
    for id in ["7", "2147483648", "9999999999"] {
        let run = sudo("postgres", &["-n", ROUTE, "route", id, "--ports", "all"]).expect(2, id);
        assert!(run.stderr.contains("node id") && run.stderr.lines().count() == 1, "{id}: {}", run.stderr);
    }
    // instance names that pass the sudoers pattern but name no instance, or the default's
    for name in ["nope", "default", "a234567890123456"] {
        let run = sudo("postgres", &["-n", ROUTE, "--instance", name, "route", "1", "--ports", "all"]).expect(2, name);
        assert_eq!(run.stderr.lines().count(), 1, "one line: {name}: {}", run.stderr);
    }
    // the environment does not reach route: it reads its own config, whatever is set, and
    // gives its children an environment of its own; asking sudo to keep a variable is
    // refused, or has no effect
    let env = [
        ("REPMGR_NAT_CONFIG", evil),
        ("REPMGR_NAT_INSTANCE", "nope"),
        ("XTABLES_LIBDIR", "/tmp/xt"),
        ("LD_PRELOAD", "/tmp/x.so"),
    ];
    let run = lab.in_proxy("postgres", &env, "sudo", &["-n", ROUTE, "route", "1", "--ports", "all"]);
    assert_eq!(run.expect(0, "route with the environment set").stdout.trim(), "unchanged");
    for keep in
        ["--preserve-env=XTABLES_LIBDIR", "--preserve-env=REPMGR_NAT_CONFIG", "--preserve-env=REPMGR_NAT_INSTANCE"]
    {
        let run = lab.in_proxy("postgres", &env, "sudo", &["-n", keep, ROUTE, "route", "1", "--ports", "all"]);
        let refused = run.code != 0 && (run.stderr.starts_with("sudo: ") || run.stderr.contains("route reads only"));
        assert!(refused || run.stdout.trim() == "unchanged", "sudo {keep}: {}{}", run.stdout, run.stderr);
    }
    assert_eq!(state(&lab), before);

    // root itself: route takes no other config, and nothing acts on a config another
    // user could change (owner, mode, ACL, a symbolic link to theirs)
    let run = lab.repmgr_nat("root", &["--config", evil, "route", "1", "--ports", "all"]).expect(2, "route --config");
    assert!(run.stderr.contains("route reads only /etc/repmgr-nat.toml"), "{}", run.stderr);
    let _config = Restore::file(CONFIG);
    let postgres = uid("postgres");
    let untrusted = |what: &str| {
        let run = sudo("postgres", &["-n", ROUTE, "route", "1", "--ports", "all"]).expect(2, what);
        assert!(run.stderr.contains("is not trusted"), "{what}: {}", run.stderr);
        let run = lab.repmgr_nat("root", &["setup"]).expect(2, what);
        assert!(run.stderr.contains("is not trusted"), "{what}: {}", run.stderr);
    };
    std::os::unix::fs::chown(CONFIG, Some(postgres), None).unwrap();
    untrusted("owned by postgres");
    std::os::unix::fs::chown(CONFIG, Some(0), None).unwrap();
    std::fs::set_permissions(CONFIG, std::fs::Permissions::from_mode(0o664)).unwrap();
    untrusted("group-writable");
    std::fs::set_permissions(CONFIG, std::fs::Permissions::from_mode(0o644)).unwrap();
    let acl = Command::new("setfacl").args(["-m", "u:postgres:rw", CONFIG]).status().expect("setfacl (package acl)");
    assert!(acl.success(), "setfacl");
    untrusted("writable by postgres through an ACL");
    assert!(Command::new("setfacl").args(["-b", CONFIG]).status().unwrap().success());
    std::fs::rename(CONFIG, "/etc/repmgr-nat.toml.real").unwrap();
    std::fs::copy("/etc/repmgr-nat.toml.real", evil).unwrap();
    std::os::unix::fs::chown(evil, Some(postgres), None).unwrap();
    std::os::unix::fs::symlink(evil, CONFIG).unwrap();
    untrusted("a symbolic link to postgres's file");
    std::fs::remove_file(CONFIG).unwrap();
    std::fs::rename("/etc/repmgr-nat.toml.real", CONFIG).unwrap();
    assert_eq!(state(&lab), before);
}

#[test]
fn no_local_user_stalls_the_root_step_or_the_events() {
    let lab = Lab::up();

    // nobody cannot hold the run lock: it cannot even open it
    let held = lab.in_proxy("nobody", &[], "flock", &["-n", "-x", &format!("{STATE}/run.lock"), "true"]);
    assert_ne!(held.code, 0, "nobody opened the run lock: {}", held.stderr);
    // and a lock on the directory, where it used to be, holds nothing up
    let mut holder = lab.spawn_in_proxy("nobody", "flock", &["-x", STATE, "sleep", "60"]);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    lab.event("db1", "1", "repmgrd_failover_promote", "1").expect(0, "an event while nobody holds a lock");
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(started.elapsed() < BOUNDED, "the event waited {:?} for nobody's lock", started.elapsed());

    // the caller's umask and file size limit do not reach the root step
    let shell = |script: &str| lab.in_proxy("postgres", &[], "/bin/sh", &["-c", script]);
    shell(&format!("umask 0777; sudo -n {ROUTE} route 1 --ports barman && sudo -n {ROUTE} route 1 --ports all"))
        .expect(0, "routes under umask 0777");
    let mode = std::fs::metadata(format!("{STATE}/route")).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o644, "the record's mode under the caller's umask 0777");
    lab.repmgr_nat("postgres", &["status"]).expect(0, "status reads the record");
    // (root lifts the limit where it may; where it may not, in a container without
    // CAP_SYS_RESOURCE, recording fails and says so: never a kill between switch and record)
    let run = shell(&format!("ulimit -f 0; sudo -n {ROUTE} route 2 --ports all; echo rc=$?"));
    let lifted = run.stdout.contains("rc=0") && lab.record() == "2 all 1\n";
    let reported = run.stdout.contains("rc=1") && run.stderr.contains("cannot record the route");
    assert!(lifted || reported, "route under ulimit -f 0: {}{}", run.stdout, run.stderr);
    assert_eq!(sorted(lab.our_rules()), routed_to(DB2, BOTH));
    lab.in_proxy("postgres", &[], "sudo", &["-n", ROUTE, "route", "2", "--ports", "all"]).expect(0, "route again");
    assert_eq!(lab.record(), "2 all 1\n", "the record caught up");

    // a caller that never reads root's output does not hold it (and route.lock) up
    let (read, write) = full_pipe();
    let mut stuck = Command::new("ip")
        .args(["netns", "exec", "proxy", "runuser", "-u", "postgres", "--", "sudo", "-n", ROUTE])
        .args(["route", "1", "--ports", "all"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(write.try_clone().unwrap()))
        .stderr(Stdio::from(write))
        .spawn()
        .unwrap();
    let started = Instant::now();
    while stuck.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < BOUNDED, "route blocked on a full stderr pipe");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(read);
    assert_eq!(lab.record(), "1 all 1\n", "the switch went through");
    lab.in_proxy("postgres", &[], "sudo", &["-n", ROUTE, "route", "2", "--ports", "all"]).expect(0, "the next route");

    // the caller signals its sudo, which passes the signal on to the root step: whatever
    // the moment, the step finishes, the rules and the record agree and the lock is free
    shell(&format!(
        "for d in 0 0.005 0.01 0.02 0.05 0.1; do for id in 1 2; do \
         sudo -n {ROUTE} route $id --ports all >/dev/null 2>&1 & p=$!; \
         sleep $d; kill -TERM $p; kill -TSTP $p; kill -HUP $p; kill -CONT $p; wait $p; \
         done; done; true"
    ))
    .expect(0, "routes signalled by their caller");
    let record = lab.record();
    let node = if record.starts_with("1 ") { DB1 } else { DB2 };
    assert!(record.ends_with(" all 1\n"), "the record after signalled routes: {record:?}");
    assert_eq!(sorted(lab.our_rules()), routed_to(node, BOTH), "the rules disagree with the record {record:?}");
    lab.in_proxy("postgres", &[], "sudo", &["-n", ROUTE, "route", "2", "--ports", "all"]).expect(0, "route after them");

    // forty switches at once: the tables and the record agree, nothing left behind
    let storm: Vec<_> = (0..40)
        .map(|i| {
            let id = (i % 2 + 1).to_string();
            lab.spawn_in_proxy("postgres", "sudo", &["-n", ROUTE, "route", &id, "--ports", "all"])
        })
        .collect();
    for mut child in storm {
        assert!(child.wait().unwrap().success(), "a route of the storm failed");
    }
    let record = lab.record();
    let node = if record.starts_with("1 ") { DB1 } else { DB2 };
    assert!(record.ends_with(" all 1\n"), "{record:?}");
    assert_eq!(sorted(lab.our_rules()), routed_to(node, BOTH), "the tables and the record {record:?} disagree");
    let left: Vec<String> = std::fs::read_dir(STATE)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A pipe whose buffer is full: a writer to `write` blocks until someone reads `read`.
fn full_pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors, which are then owned here.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) }, 0);
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let chunk = [b'x'; 4096];
    // SAFETY: writes from a valid buffer to our own descriptor, until the pipe is full.
    while unsafe { libc::write(fds[1], chunk.as_ptr().cast(), chunk.len()) } > 0 {}
    // the child gets it blocking, as a careless caller's pipe would be
    unsafe { libc::fcntl(fds[1], libc::F_SETFL, 0) };
    (read, write)
}

fn uid(user: &str) -> u32 {
    let out = Command::new("id").args(["-u", user]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
}

#[test]
fn planted_files_and_hostile_arguments_change_nothing() {
    let lab = Lab::up();
    let before = state(&lab);
    let sudo_route = |id: &str| lab.in_proxy("postgres", &[], "sudo", &["-n", ROUTE, "route", id, "--ports", "all"]);

    // a symbolic link planted as route.lock: never followed
    let passwd = std::fs::read("/etc/passwd").unwrap();
    let lock = format!("{STATE}/route.lock");
    let _lock = Restore::file(&lock);
    std::fs::remove_file(&lock).ok();
    std::os::unix::fs::symlink("/etc/passwd", &lock).unwrap();
    sudo_route("2").expect(1, "route with route.lock a symbolic link");
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd);
    std::fs::remove_file(&lock).unwrap();
    // ... or a file of postgres's, open to all, that anyone could hold
    std::fs::write(&lock, "").unwrap();
    std::os::unix::fs::chown(&lock, Some(uid("postgres")), None).unwrap();
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = sudo_route("2").expect(1, "route with route.lock of postgres's");
    assert!(run.stderr.contains("route.lock must be root's"), "{}", run.stderr);
    std::fs::remove_file(&lock).unwrap();
    // ... or as run.lock
    let run_lock = format!("{STATE}/run.lock");
    let _run_lock = Restore::file(&run_lock);
    std::fs::remove_file(&run_lock).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &run_lock).unwrap();
    let run = lab.repmgr_nat("postgres", &["event", "2", "standby_promote", "1"]).expect(1, "run.lock a link");
    assert!(run.stderr.contains("run.lock"), "{}", run.stderr);
    std::fs::remove_file(&run_lock).unwrap();
    drop(_run_lock);
    assert_eq!(state(&lab), before);

    // a record some other user owns is refused, by everyone
    let record = format!("{STATE}/route");
    std::os::unix::fs::chown(&record, Some(uid("postgres")), None).unwrap();
    let status = lab.repmgr_nat("postgres", &["status"]).expect(4, "status with a record of postgres's");
    assert!(status.stdout.contains("the recorded route is not trusted"), "{}", status.stdout);
    lab.event("db1", "1", "repmgrd_failover_promote", "1").expect(1, "an event with a record of postgres's");
    std::os::unix::fs::chown(&record, Some(0), None).unwrap();
    // a state directory others may write is refused
    std::fs::set_permissions(STATE, std::fs::Permissions::from_mode(0o775)).unwrap();
    sudo_route("2").expect(1, "route with a group-writable state dir");
    lab.repmgr_nat("postgres", &["status"]).expect(4, "status with a group-writable state dir");
    std::fs::set_permissions(STATE, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(state(&lab), before);

    // a rule repmgr-nat never writes, in one of its chains: nothing is emptied, exit 3
    let foreign = ["-t", "nat", "-A", "repmgr_dnat", "-p", "udp", "--dport", "53", "-j", "ACCEPT"];
    lab.ok(&[&["exec", "proxy", "--", "iptables"][..], &foreign[..]].concat());
    let with_foreign = state(&lab);
    let run = sudo_route("2").expect(3, "route with a foreign rule in its chain");
    assert!(run.stderr.contains("udp"), "the foreign rule is not named: {}", run.stderr);
    lab.repmgr_nat("root", &["setup"]).expect(3, "setup with a foreign rule in its chain");
    assert_eq!(state(&lab), with_foreign);
    let removal: Vec<&str> = foreign.iter().map(|a| if *a == "-A" { "-D" } else { a }).collect();
    lab.ok(&[&["exec", "proxy", "--", "iptables"][..], &removal[..]].concat());
    // a chain that belongs to another tool: bad input, before anything is looked at
    {
        let _config = Restore::file(CONFIG);
        let text = std::fs::read_to_string(CONFIG).unwrap();
        std::fs::write(CONFIG, format!("{text}[nat]\ndnat_chain = \"DOCKER\"\n")).unwrap();
        let run = lab.repmgr_nat("root", &["setup"]).expect(2, "a config naming DOCKER's chain");
        assert!(run.stderr.contains("DOCKER"), "{}", run.stderr);
    }
    assert_eq!(state(&lab), before);

    // root never reads a password file another user controls
    let canary = "/root/repmgr-nat-canary.pgpass";
    let _canary = Restore::file(canary);
    std::fs::write(canary, "*:*:*:repmgr_nat:lab-repmgr-nat-pw\n").unwrap();
    std::fs::set_permissions(canary, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = "/var/lib/postgresql/repmgr-nat-link.pgpass";
    let _link = Restore::file(link);
    lab.in_proxy("postgres", &[], "ln", &["-sf", canary, link]).expect(0, "ln -s");
    let run = lab.in_proxy("root", &[("PGPASSFILE", link)], ROUTE, &["status"]);
    assert!(run.stderr.contains("password file ignored"), "root followed postgres's link: {}", run.stderr);

    // control characters and huge values in an event: one escaped line, exit 2
    for (node, event) in [
        ("1", "standby_promote\r\x1b[31mFAKE"),
        ("1\x1b]0;title\x07", "standby_promote"),
        (&"1".repeat(100_000)[..], "standby_promote"),
    ] {
        let run = lab.repmgr_nat("postgres", &["event", node, event, "1"]).expect(2, "a hostile event");
        assert_eq!(run.stderr.lines().count(), 1, "{:?}", run.stderr);
        assert!(!run.stderr.contains(['\r', '\x1b', '\x07']), "a raw control character: {:?}", run.stderr);
        assert!(run.stderr.len() < 1000, "the whole value echoed: {} bytes", run.stderr.len());
    }
    assert_eq!(state(&lab), before);
}

#[test]
fn tls_verify_full_refuses_an_impostor_before_the_password() {
    let lab = Lab::up();
    // the lab runs verify-full with channel binding: every event already checked the
    // nodes' certificates; disable, prefer and require work too, verify-ca as well
    lab.repmgr_nat("postgres", &["status"]).expect(0, "status with sslmode = verify-full");
    let _config = Restore::file(CONFIG);
    let text = std::fs::read_to_string(CONFIG).unwrap();
    let with = |mode: &str| {
        let text = text.replace("sslmode = \"verify-full\"", &format!("sslmode = \"{mode}\""));
        let binding = if mode == "disable" { "prefer" } else { "require" };
        std::fs::write(
            CONFIG,
            text.replace("channel_binding = \"require\"", &format!("channel_binding = \"{binding}\"")),
        )
        .unwrap();
    };
    for (mode, code) in [("disable", 4), ("prefer", 0), ("require", 0), ("verify-ca", 0)] {
        with(mode);
        let run = lab.repmgr_nat("postgres", &["status"]).expect(code, &format!("status with sslmode = {mode}"));
        if mode == "disable" {
            assert!(run.stdout.contains("no encryption"), "the server must refuse a plain connection:\n{}", run.stdout);
        }
    }

    // an impostor in db1's place (its address, on the proxy), with a certificate of its own
    lab.ok(&["exec", "proxy", "--", "ip", "addr", "add", "198.51.100.250/32", "dev", "lo"]);
    let tls = &lab.env["LAB_DIR"];
    let said = std::env::temp_dir().join("repmgr-nat-lab-impostor.txt");
    let impostor = lab.spawn(
        &[
            "exec",
            "proxy",
            "--",
            &lab.env["KIT_BIN"],
            "impostor",
            "--listen",
            "198.51.100.250:5432",
            "--cert",
            &format!("{tls}/tls/impostor.crt"),
            "--key",
            &format!("{tls}/tls/impostor.key"),
        ],
        &said,
    );
    lab.wait_for_line(&said, "listening");
    let toward_impostor = |mode: &str| {
        let text = text.replace("1 = \"198.51.100.11\"", "1 = \"198.51.100.250\"");
        let text = text.replace("sslmode = \"verify-full\"", &format!("sslmode = \"{mode}\""));
        std::fs::write(CONFIG, text.replace("channel_binding = \"require\"", "channel_binding = \"prefer\"")).unwrap();
        lab.repmgr_nat("postgres", &["status"]);
    };
    // require encrypts without checking: the impostor gets the password (why verify-full)
    toward_impostor("require");
    lab.wait_for_line(&said, "password lab-repmgr-nat-pw");
    // verify-full: the handshake fails on repmgr-nat's side, nothing is sent
    let lines = std::fs::read_to_string(&said).unwrap().lines().count();
    toward_impostor("verify-full");
    lab.wait_until("the impostor's next session", BOUNDED, || {
        std::fs::read_to_string(&said).unwrap().lines().count() > lines
    });
    let last = std::fs::read_to_string(&said).unwrap().lines().last().unwrap().to_string();
    assert!(last.contains("refused") || last.contains("closed"), "the impostor got further: {last}");
    assert!(!last.contains("password"), "{last}");
    lab.stop(impostor);
}
