//! Two proxy hosts sharing the address (`lab.sh up --proxies 2`): real keepalived (VRRP)
//! moves 198.51.100.3 between proxy (own address .4, with barman) and proxy2 (.5, without),
//! real conntrackd copies the application's connections, both run from the package's own
//! examples. Each test has a lab of its own; the times it prints are for the reader (the
//! benchmark measures them), the assertions are on what happened.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lab_kit::lab::{PROXY_A, PROXY_B, Session, poll_until};
use lab_kit::pglog;
use lab_kit::samples::{self, Sample};

use crate::common::{CONVERGE, DB1, DB2, Lab, PROXY, Restore, now_ms};

fn two_proxies() -> Lab {
    let lab = Lab::up_with(&Session::take(), &["--proxies", "2"], &[]);
    assert_eq!(lab.proxies(), ["proxy", "proxy2"], "lab.sh env: {:?}", lab.env.get("PROXIES"));
    lab
}

fn other(proxy: &str) -> &'static str {
    if proxy == "proxy" { "proxy2" } else { "proxy" }
}

/// The proxy that holds the address; exactly one must.
#[track_caller]
fn holder(lab: &Lab) -> &'static str {
    match lab.vip().as_str() {
        "proxy" => "proxy",
        "proxy2" => "proxy2",
        held => panic!("198.51.100.3 is held by {held:?}, not by one proxy"),
    }
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("repmgr-nat-lab-proxies-{name}.txt"))
}

/// Both proxies route to `node`, each with its own rules: proxy both ports, proxy2 only the
/// application port (no barman), each SNAT with its own address for what it sends itself.
#[track_caller]
fn assert_both_routed(lab: &Lab, node: &str) {
    for proxy in ["proxy", "proxy2"] {
        let mut rules = lab.our_rules_in(proxy);
        rules.sort();
        assert_eq!(rules, lab.routed_rules(proxy, node), "{proxy}'s rules");
    }
    let proxy2 = lab.our_rules_in("proxy2");
    assert!(!proxy2.iter().any(|l| l.contains("--dport 54321")), "proxy2 forwards barman's port: {proxy2:?}");
}

/// `pid=` of the hold client's answers: the backend on the server.
fn backend(s: &Sample) -> Option<u64> {
    s.field::<u64>("pid")
}

#[test]
fn a_dead_proxy_loses_the_address_and_an_open_session_goes_on_through_the_other() {
    let lab = two_proxies();
    assert_both_routed(&lab, DB1);
    let dead = holder(&lab);
    let survivor = other(dead);

    // a session through the address, and new connections every 50 ms (5 s connect timeout)
    let held_file = temp("held");
    let held = lab.client("hold", 100, &["--timeout-ms", "5000"], &held_file);
    lab.wait_samples("the session answering", &held_file, |s| s.iter().any(|s| s.ok()));
    let connects_file = temp("connects");
    let connects = lab.client("connect", 50, &["--timeout-ms", "5000"], &connects_file);
    // conntrackd on the survivor has the session in its external cache
    let conf = format!("{}/ha-{survivor}/conntrackd.conf", lab.env["LAB_DIR"]);
    lab.wait_until("the session in the survivor's conntrackd", Duration::from_secs(20), || {
        let cache = lab.lab(&["exec", survivor, "--", "conntrackd", "-C", &conf, "-e"]).stdout;
        cache.lines().any(|l| l.contains("ESTABLISHED") && l.contains("dport=54322"))
    });
    std::thread::sleep(Duration::from_millis(500));

    let t0 = now_ms();
    let down = lab.fault("proxy-down", "proxy-up", dead);
    let moved = Instant::now();
    lab.wait_until("the address on the survivor", Duration::from_secs(10), || lab.vip() == survivor);
    let took_address = moved.elapsed();
    lab.wait_until("a new connection through the address", Duration::from_secs(10), || {
        lab.app_reaches().is_ok_and(|s| s == DB1)
    });
    let took_answer = moved.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    lab.stop(held);
    lab.stop(connects);

    let (before, after): (Vec<Sample>, Vec<Sample>) = samples::read(&held_file).into_iter().partition(|s| s.at < t0);
    let last = before.iter().rev().find(|s| s.ok()).expect("the session answered before");
    let first = after.iter().find(|s| s.ok()).unwrap_or_else(|| panic!("the session never answered again: {after:?}"));
    assert_eq!(
        (first.field::<u64>("conn"), backend(first)),
        (last.field::<u64>("conn"), backend(last)),
        "the session's next answer came on another connection: {first:?} after {last:?}"
    );
    assert!(after.iter().all(Sample::ok), "the session saw an error: {after:?}");
    assert!(after.iter().all(|s| s.server() == Some(DB1)), "{after:?}");
    let gap = samples::longest_gap_across(&samples::read(&held_file), t0).expect("answers");

    let connects = samples::read(&connects_file);
    let since: Vec<&Sample> = connects.iter().filter(|s| s.at >= t0).collect();
    let failed = since.iter().filter(|s| !s.ok()).count();
    let longest = since.iter().filter_map(|s| s.field::<u64>("ms")).max().unwrap_or(0);
    eprintln!(
        "{dead} down: the address on {survivor} after {took_address:?}, a new connection answered after \
         {took_answer:?}; the session's longest wait between answers {gap} ms (same connection and backend); new connections \
         {failed} failed of {}, longest {longest} ms",
        since.len()
    );
    assert_eq!(failed, 0, "new connections failed through the takeover: {since:?}");
    drop(down);
}

#[test]
fn a_failover_while_a_proxy_is_dead_is_followed_and_the_proxy_back_takes_nothing() {
    let lab = two_proxies();
    let dead = holder(&lab);
    let survivor = other(dead);
    let down = lab.fault("proxy-down", "proxy-up", dead);
    lab.wait_until("the address on the survivor", Duration::from_secs(10), || lab.vip() == survivor);

    lab.ok(&["stop", "db1"]);
    lab.ok(&["wait-primary", "db2", "60"]);
    lab.wait_until("the survivor's rules on db2", CONVERGE, || lab.routed_in(survivor, DB2));
    assert_eq!(lab.app_reaches().unwrap(), DB2);

    // back: it converges on its own, and the address stays where it is
    drop(down);
    let back = Instant::now();
    lab.wait_until("the returning proxy's rules on db2", CONVERGE, || lab.routed_in(dead, DB2));
    eprintln!("{dead} back: its rules on db2 after {:?}", back.elapsed());
    assert_eq!(lab.repmgr_nat_in(dead, "postgres", &["can-serve"]).code, 0, "{dead} cannot serve after converging");
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert_eq!(lab.vip(), survivor, "the returning {dead} took the address");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_both_routed(&lab, DB2);
    assert_eq!(lab.app_reaches().unwrap(), DB2);
}

/// The application port's target in one proxy's nat table (None: closed).
fn app_target(proxy: &str) -> Option<String> {
    let out = Command::new("ip").args(["netns", "exec", proxy, "iptables-save", "-t", "nat"]).output().unwrap();
    assert!(out.status.success(), "iptables-save in {proxy}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("-A repmgr_dnat") && l.contains("--dport 54322"))
        .and_then(|l| l.split("--to-destination ").nth(1))
        .map(|t| t.trim_end_matches(":5432").to_string())
}

#[test]
fn both_proxies_forward_only_to_the_legitimate_primary_through_a_failover() {
    let lab = two_proxies();
    // (started, ended, proxy, target) every ~50 ms in each proxy, until both are on db2
    let done = std::sync::atomic::AtomicBool::new(false);
    let t0 = now_ms();
    let samples = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut seen = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for proxy in ["proxy", "proxy2"] {
                    let started = now_ms();
                    let target = app_target(proxy);
                    seen.push((started, now_ms(), proxy, target));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            seen
        });
        lab.ok(&["stop", "db1"]);
        lab.ok(&["wait-primary", "db2", "60"]);
        let both = poll_until(CONVERGE, || lab.routed_in("proxy", DB2) && lab.routed_in("proxy2", DB2));
        std::thread::sleep(Duration::from_millis(500));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen = sampler.join().unwrap();
        assert!(both, "not both proxies on db2: {:?} / {:?}", lab.our_rules_in("proxy"), lab.our_rules_in("proxy2"));
        seen
    });
    let log = std::fs::read_to_string(&lab.env["DB2_PG_LOG"]).unwrap();
    let promoted = pglog::ready_after(&log, t0).expect("db2 logged no promotion");
    // the rules are read within a sample: db2 seen is a rule that existed by its end, db1
    // seen one that still existed at its start
    const WINDOW_MS: u64 = 1000;
    for (started, ended, proxy, target) in &samples {
        match target.as_deref() {
            Some(t) if t == DB2 => assert!(
                *ended >= promoted,
                "{proxy} forwarded the application port to db2 {} ms before its promotion",
                promoted - ended
            ),
            Some(t) if t == DB1 => assert!(
                *started <= promoted + WINDOW_MS,
                "{proxy} still forwarded to db1 {} ms after db2's promotion",
                started - promoted
            ),
            Some(t) => panic!("{proxy} forwarded to {t}"),
            None => {}
        }
    }
    for proxy in ["proxy", "proxy2"] {
        let first = samples.iter().find(|(_, _, p, t)| p == &proxy && t.as_deref() == Some(DB2)).expect("db2 seen");
        let closed = samples.iter().filter(|(_, _, p, t)| p == &proxy && t.is_none()).count();
        eprintln!(
            "{proxy}: application port on db2 by {} ms after its promotion (closed in {closed} samples)",
            first.1 as i64 - promoted as i64
        );
    }
    eprintln!("{} samples", samples.len());
    assert_both_routed(&lab, DB2);
    assert_eq!(lab.app_reaches().unwrap(), DB2);
}

#[test]
fn a_proxy_whose_watch_dies_loses_the_address_and_does_not_take_it_back() {
    let lab = two_proxies();
    let sick = holder(&lab);
    let healthy = other(sick);
    assert_eq!(lab.repmgr_nat_in(sick, "postgres", &["can-serve"]).code, 0);

    let killed = Instant::now();
    lab.ok(&["watch", "kill", sick]);
    lab.wait_until("the address on the other proxy", Duration::from_secs(30), || lab.vip() == healthy);
    eprintln!("{sick}'s watch killed: the address on {healthy} after {:?}", killed.elapsed());
    let run = lab.repmgr_nat_in(sick, "postgres", &["can-serve"]).expect(1, "can-serve with watch dead");
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert_eq!(run.stdout, "");

    lab.ok(&["watch", "start", sick]);
    lab.wait_until("can-serve again", Duration::from_secs(30), || {
        lab.repmgr_nat_in(sick, "postgres", &["can-serve"]).code == 0
    });
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert_eq!(lab.vip(), healthy, "the address went back to {sick}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(lab.app_reaches().unwrap(), DB1);
}

#[test]
fn the_package_serves_both_proxies_and_barman_lives_on_one() {
    let lab = two_proxies();
    let examples = Path::new("/usr/share/doc/repmgr-nat/examples");
    for file in ["keepalived.conf", "conntrackd.conf", "repmgr-nat-conntrackd-notify"] {
        assert!(examples.join(file).is_file(), "the package did not install {file}");
    }
    // the boot step again on both, as the README's set-up runs it: nothing changes
    for proxy in ["proxy", "proxy2"] {
        let before = lab.nat_in(proxy);
        lab.repmgr_nat_in(proxy, "root", &["setup"]).expect(0, &format!("setup in {proxy}"));
        assert_eq!(lab.nat_in(proxy), before, "setup in {proxy} changed the tables");
    }
    assert_both_routed(&lab, DB1);

    // what the nodes see: barman from proxy's own address, repmgr-nat from each proxy's
    // own, the application from the shared one
    lab.wait_slots("db1", CONVERGE);
    let walsender = "select host(r.client_addr) from pg_stat_replication r \
                     join pg_replication_slots s on s.active_pid = r.pid where s.slot_name = 'barman'";
    lab.wait_until("barman's stream from proxy's own address", CONVERGE, || lab.sql("db1", walsender) == PROXY_A);
    let ours = "select string_agg(distinct host(client_addr), ' ' order by host(client_addr)) from pg_stat_activity \
                where usename = 'repmgr_nat'";
    lab.wait_until("repmgr-nat from both own addresses", CONVERGE, || {
        lab.sql("db1", ours) == format!("{PROXY_A} {PROXY_B}")
    });
    assert_eq!(lab.sql("proxy-app", "select host(inet_client_addr())"), PROXY);
    assert_eq!(lab.barman_reaches().unwrap(), DB1);

    // proxy2 manages no slot: with proxy's watch stopped, db2's slot dropped stays dropped
    // while proxy2's watch passes; proxy's own watch makes it again
    let proxy2_runs = |what: &str| {
        Command::new("sh")
            .args(["-c", &format!("for p in $(ip netns pids proxy2); do cat /proc/$p/cmdline; echo; done | tr '\\0' ' ' | grep -c {what} || true")])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap()
    };
    assert_eq!(proxy2_runs("barman"), "0", "barman runs in proxy2");
    lab.ok(&["watch", "stop", "proxy"]);
    lab.sql("db2", "select pg_drop_replication_slot('barman')");
    let passes = lab.watch_passes_in("proxy2");
    lab.wait_until("proxy2's watch passing", CONVERGE, || lab.watch_passes_in("proxy2") >= passes + 12);
    assert_eq!(lab.slots("db2"), Vec::<String>::new(), "proxy2 made a slot on db2");
    assert_eq!(proxy2_runs("barman"), "0", "proxy2 started barman");
    lab.ok(&["watch", "start", "proxy"]);
    lab.wait_until("proxy's watch making db2's slot again", CONVERGE, || lab.slots("db2") == ["barman"]);

    // barman's port on proxy2 forwards nothing, whatever root asks
    lab.ok(&["watch", "stop", "proxy2"]);
    lab.repmgr_nat_in("proxy2", "root", &["route", "1", "--ports", "barman"]).expect(0, "route --ports barman");
    let rules = lab.our_rules_in("proxy2");
    assert!(!rules.iter().any(|l| l.contains("-j DNAT")), "proxy2 forwards something: {rules:?}");
    lab.repmgr_nat_in("proxy2", "root", &["setup"]).expect(0, "setup in proxy2");
    assert_both_routed(&lab, DB1);
}

/// Whether barman's walsender on `node` has reported writing WAL up to `lsn`.
fn barman_wrote(lab: &Lab, node: &str, lsn: &str) -> bool {
    let sql = format!(
        "select coalesce(bool_or(r.write_lsn >= '{lsn}'), false) from pg_stat_replication r \
         join pg_replication_slots s on s.active_pid = r.pid where s.slot_name = 'barman'"
    );
    lab.try_sql(node, &sql).is_ok_and(|r| r == "t")
}

#[test]
fn barman_streams_on_when_the_address_leaves_its_host() {
    let lab = two_proxies();
    // barman's host holds the address when receive-wal connects: a connection to the
    // shared address would be bound to it then
    if holder(&lab) != "proxy" {
        lab.ok(&["proxy-down", "proxy2"]);
        lab.wait_until("the address on proxy", CONVERGE, || lab.vip() == "proxy");
        lab.ok(&["proxy-up", "proxy2"]);
    }
    let before = lab.barman_walsender("db1").expect("barman's walsender");
    lab.ok(&["barman", "receive-wal", "--stop", &lab.env["BARMAN_SERVER"]]);
    lab.wait_until("barman streaming again (watch starts it)", CONVERGE, || {
        lab.barman_walsender("db1").is_some_and(|pid| pid != before)
    });
    assert_eq!(holder(&lab), "proxy");

    // barman's host loses its link long enough for the other to take the address, and
    // comes back: the address stays on proxy2
    lab.ok(&["proxy-down", "proxy"]);
    lab.wait_until("the address on proxy2", CONVERGE, || lab.vip() == "proxy2");
    std::thread::sleep(Duration::from_secs(1));
    lab.ok(&["proxy-up", "proxy"]);

    // WAL written now reaches barman over the same stream (a walsender stays on the slot
    // either way: only what it reports tells a stalled stream)
    let lsn = lab.sql("db1", "select pg_logical_emit_message(false, 'lab', 'x')");
    lab.wait_until(&format!("barman writing db1's WAL up to {lsn}"), CONVERGE, || barman_wrote(&lab, "db1", &lsn));
    lab.wait_barman_ok(CONVERGE);

    // and a switchover's clean shutdown of db1 waits for no stalled walsender
    lab.ok(&["switchover", "db2"]);
    lab.wait_until("the rules on db2", CONVERGE, || lab.routed_in("proxy", DB2) && lab.routed_in("proxy2", DB2));
    lab.wait_slots("db2", CONVERGE);
    let lsn = lab.sql("db2", "select pg_logical_emit_message(false, 'lab', 'x')");
    lab.wait_until(&format!("barman writing db2's WAL up to {lsn}"), CONVERGE, || barman_wrote(&lab, "db2", &lsn));
}

/// `check` in `proxy` as `user`: its exit code and lines (every probe has a deadline).
fn check_in(lab: &Lab, proxy: &str, user: &str) -> (i32, Vec<String>) {
    let run = lab.repmgr_nat_in(proxy, user, &["check"]);
    assert!(
        run.code == 0 || run.code == 1,
        "check in {proxy} as {user} exited {}:\n{}{}",
        run.code,
        run.stdout,
        run.stderr
    );
    (run.code, run.stdout.lines().map(str::to_string).collect())
}

#[test]
fn check_is_all_ok_on_both_proxies_and_names_keepalived_without_can_serve() {
    let lab = two_proxies();
    let lab_dir = lab.env["LAB_DIR"].clone();
    for proxy in ["proxy", "proxy2"] {
        let conf = format!("{lab_dir}/ha-{proxy}/keepalived.conf");
        for user in ["root", "postgres"] {
            let (code, lines) = check_in(&lab, proxy, user);
            let text = lines.join("\n");
            assert_eq!(code, 0, "check in {proxy} as {user}:\n{text}");
            assert!(lines.iter().all(|l| l.starts_with("OK  ")), "check in {proxy} as {user}:\n{text}");
            let mut expected = vec![
                "OK  net.netfilter.nf_conntrack_tcp_be_liberal = 1".to_string(),
                "OK  net.netfilter.nf_conntrack_tcp_loose = 1".to_string(),
            ];
            if user == "root" {
                // the lab's keepalived reads the file its -f names, not /etc/keepalived
                expected.extend([
                    format!("OK  keepalived's {conf} moves {PROXY} (proxy.address): vrrp_instance repmgr_nat"),
                    format!("OK  keepalived's {conf} tracks `repmgr-nat can-serve`: vrrp_script chk_repmgr_nat"),
                ]);
                let pid = |daemon: &str| {
                    std::fs::read_to_string(format!("{lab_dir}/ha-{proxy}/{daemon}.lab.pid"))
                        .unwrap()
                        .trim()
                        .to_string()
                };
                // this namespace's daemons, not the other proxy's
                expected.push(format!("OK  keepalived runs here: pid {}, config {conf}", pid("keepalived")));
                expected.push(format!("OK  conntrackd runs here: pid {}", pid("conntrackd")));
            } else {
                assert!(!text.contains("keepalived") && !text.contains("conntrackd"), "as {user}:\n{text}");
            }
            for line in expected {
                assert!(lines.contains(&line), "{line:?} in {proxy} as {user}:\n{text}");
            }
        }
    }

    // proxy2's keepalived config without can-serve (the file only: keepalived is not
    // reloaded, and the file is put back also when the test fails)
    let conf = format!("{lab_dir}/ha-proxy2/keepalived.conf");
    {
        let _conf = Restore::file(&conf);
        let text = std::fs::read_to_string(&conf).unwrap();
        assert!(text.contains("/usr/bin/repmgr-nat can-serve"), "{text}");
        std::fs::write(&conf, text.replace("/usr/bin/repmgr-nat can-serve", "/bin/true")).unwrap();
        let (code, lines) = check_in(&lab, "proxy2", "root");
        let text = lines.join("\n");
        assert_eq!(code, 1, "{text}");
        let failed: Vec<&String> = lines.iter().filter(|l| !l.starts_with("OK  ")).collect();
        assert_eq!(failed.len(), 1, "{text}");
        assert!(
            failed[0].starts_with(&format!(
                "FAILED  keepalived's {conf} tracks `repmgr-nat can-serve`: no vrrp_script runs `/usr/bin/repmgr-nat can-serve`"
            )),
            "{text}"
        );
        assert_eq!(check_in(&lab, "proxy", "root").0, 0, "proxy's own config is untouched");
    }

    // the kernel's setting the README's set-up makes, undone in proxy2
    {
        let set = |v: &str| {
            lab.ok(&[
                "exec",
                "proxy2",
                "--",
                "sysctl",
                "-qw",
                &format!("net.netfilter.nf_conntrack_tcp_be_liberal={v}"),
            ])
        };
        let _back = lab.undo(&["exec", "proxy2", "--", "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_be_liberal=1"]);
        set("0");
        let (code, lines) = check_in(&lab, "proxy2", "postgres");
        assert_eq!(code, 1, "{}", lines.join("\n"));
        assert!(
            lines.iter().any(|l| l.starts_with("FAILED  net.netfilter.nf_conntrack_tcp_be_liberal = 1: it is 0: ")),
            "{}",
            lines.join("\n")
        );
        assert_eq!(check_in(&lab, "proxy", "postgres").0, 0, "the setting is per network namespace");
    }
    for proxy in ["proxy", "proxy2"] {
        assert_eq!(check_in(&lab, proxy, "root").0, 0, "{proxy} after the repairs");
    }
}
