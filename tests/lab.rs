//! Integration tests against the real things repmgr-nat drives: PostgreSQL 15, repmgr and
//! repmgrd, barman and iptables, in network namespaces (`lab/lab.sh`). Each test brings a
//! fresh lab up (db1 primary, db2 standby, barman streaming through the proxy's NAT) and
//! takes it down, also when it fails. Run by `tests/run` (as root), never silently skipped.

#[path = "lab/barman.rs"]
mod barman;
#[path = "lab/chaos.rs"]
mod chaos;
#[path = "lab/check.rs"]
mod check;
mod common;
#[path = "lab/hostile.rs"]
mod hostile;
#[path = "lab/instances.rs"]
mod instances;
#[path = "lab/package.rs"]
mod package;
#[path = "lab/patroni.rs"]
mod patroni;
#[path = "lab/proxies.rs"]
mod proxies;
#[path = "lab/watch.rs"]
mod watch;

use std::time::Duration;

use common::{BOTH, DB1, DB2, Lab, PROXY, Restore, assert_writes_on, now_ms, routed_to, snapshot, sorted, writer};
use lab_kit::samples::{self, Outcome, Sample};

#[test]
fn primary_register_on_a_fresh_cluster_points_both_ports_at_db1() {
    let lab = Lab::up();
    let run = lab.wait_event("primary_register", "1", 0, 5);
    assert_eq!(run.exit(), Some(0), "{}", lab.event_output(&run.id));
    assert_eq!(sorted(lab.our_rules()), routed_to(DB1, BOTH));
    assert_eq!(lab.app_reaches().unwrap(), DB1);
    assert_eq!(lab.barman_reaches().unwrap(), DB1);
    // barman streams from the primary; the standby keeps the slot for it too
    lab.wait_slots("db1", Duration::from_secs(10));
    lab.wait_barman_ok(Duration::from_secs(30));
    let status = lab.repmgr_nat("postgres", &["status"]).expect(0, "status");
    assert!(status.stdout.contains("rules: node 1 ports all"), "{}", status.stdout);
    assert!(status.stdout.contains("consistent: yes"), "{}", status.stdout);
    let json = lab.repmgr_nat("postgres", &["status", "--json"]).expect(0, "status --json");
    assert!(json.stdout.contains("\"consistent\": true"), "{}", json.stdout);
}

#[test]
fn setup_is_idempotent_and_restores_the_rules_after_a_reboot() {
    let lab = Lab::up();
    let before = lab.nat();

    // twice more: nothing changes, no second jump
    for _ in 0..2 {
        lab.repmgr_nat("root", &["setup"]).expect(0, "setup again");
        assert_eq!(lab.nat(), before);
    }

    // the tables as after a reboot: empty
    for table in ["nat", "filter"] {
        lab.ok(&["exec", "proxy", "--", "iptables", "-t", table, "-F"]);
        lab.ok(&["exec", "proxy", "--", "iptables", "-t", table, "-X"]);
    }
    assert_eq!(lab.our_rules(), Vec::<String>::new());
    assert!(lab.app_reaches().is_err(), "the application port answers with no rules");
    let setup = lab.repmgr_nat("root", &["setup"]).expect(0, "setup after the flush");
    assert!(setup.stderr.contains("setup: route node 1 ports all"), "setup asks the live cluster:\n{}", setup.stderr);
    assert_eq!(sorted(lab.our_rules()), routed_to(DB1, BOTH));
    assert_eq!(lab.app_reaches().unwrap(), DB1);

    // no node answers: the route recorded before the reboot comes back, unverified
    lab.ok(&["stop", "db2"]);
    lab.ok(&["stop", "db1"]);
    lab.ok(&["exec", "proxy", "--", "iptables", "-t", "nat", "-F"]);
    let setup = lab.repmgr_nat("root", &["setup"]).expect(0, "setup with every node down");
    assert!(
        setup.stderr.contains("restoring the route recorded before: node 1 ports all (timeline 1)"),
        "{}",
        setup.stderr
    );
    assert_eq!(sorted(lab.our_rules()), routed_to(DB1, BOTH));
}

#[test]
fn setup_adopts_the_chains_and_jumps_of_the_article_script() {
    let lab = Lab::up();
    lab.repmgr_nat("root", &["teardown"]).expect(0, "teardown");
    assert_eq!(lab.our_rules(), Vec::<String>::new(), "teardown leaves nothing");

    // what the article's @reboot script (repmgr_iptables_chains.sh) does, run twice as a
    // careless reboot sequence would: the second run cannot create the chains again but
    // appends the jumps again; then what its repmgr_iptables.sh leaves for db1
    let iptables = |rule: &str| {
        let args: Vec<&str> =
            ["exec", "proxy", "--", "iptables", "-t", "nat"].into_iter().chain(rule.split(' ')).collect();
        lab.lab(&args)
    };
    for _ in 0..2 {
        for rule in [
            "-N repmgr_dnat",
            "-A OUTPUT -j repmgr_dnat",
            "-A PREROUTING -j repmgr_dnat",
            "-N repmgr_snat",
            "-A POSTROUTING -j repmgr_snat",
        ] {
            iptables(rule);
        }
    }
    for rule in [
        format!("-A repmgr_snat -p tcp -d {DB1} --dport 5432 -j SNAT --to-source {PROXY}"),
        format!("-A repmgr_dnat -p tcp -d {PROXY} --dport 54321 -j DNAT --to-destination {DB1}:5432"),
        format!("-A repmgr_dnat -p tcp -d {PROXY} --dport 54322 -j DNAT --to-destination {DB1}:5432"),
    ] {
        iptables(&rule).expect(0, &rule);
    }
    let jumps = lab.our_rules().iter().filter(|l| l.starts_with("-A PREROUTING")).count();
    assert_eq!(jumps, 2, "the script's jump twice: {:?}", lab.our_rules());
    let status = lab.repmgr_nat("postgres", &["status"]).expect(4, "status over the script's chains");
    assert!(
        status.stdout.contains("rules: node 1 ports all (chains, jumps or hold not in place)"),
        "{}",
        status.stdout
    );

    lab.repmgr_nat("root", &["setup"]).expect(0, "setup over the script's chains");
    assert_eq!(sorted(lab.our_rules()), routed_to(DB1, BOTH));
    assert_eq!(lab.app_reaches().unwrap(), DB1);
}

#[test]
fn automatic_failover_moves_ports_slot_and_barman_and_loses_nothing() {
    let lab = Lab::up();
    lab.wait_barman_ok(Duration::from_secs(30));
    let writes_file = std::env::temp_dir().join("repmgr-nat-lab-writes.txt");
    let writer = writer(&lab, &writes_file);
    std::thread::sleep(Duration::from_secs(1));

    let t0 = now_ms();
    lab.ok(&["stop", "db1"]);
    let promote = lab.wait_event("standby_promote", "2", t0, 60);
    assert_eq!(promote.exit(), Some(0), "{}", lab.event_output(&promote.id));
    let after_first = lab.nat();
    let second = lab.wait_event("repmgrd_failover_promote", "2", t0, 60);
    assert_eq!(second.exit(), Some(0), "{}", lab.event_output(&second.id));
    let said = lab.event_output(&second.id);
    assert!(said.contains("nothing to do: ports already point at node 2 (timeline 2) and its slot exists"), "{said}");
    assert!(!said.contains("nat:") && !said.contains("barman:"), "the second promote event acted:\n{said}");
    assert_eq!(lab.nat(), after_first, "the second promote event changed a rule");

    assert_eq!(sorted(lab.our_rules()), routed_to(DB2, BOTH));
    assert_eq!(lab.app_reaches().unwrap(), DB2);
    assert_eq!(lab.barman_reaches().unwrap(), DB2);
    assert_eq!(lab.slots("db2"), ["barman"]);
    lab.wait_barman_ok(Duration::from_secs(30));

    // some writes after the switch, then every acknowledged commit must be on db2
    std::thread::sleep(Duration::from_secs(2));
    lab.stop(writer);
    let written = samples::read(&writes_file);
    assert!(written.iter().any(|s| s.server() == Some(DB2)), "no write reached db2 through the application port");
    assert_writes_on(&lab, &writes_file, "db2");

    // barman's WAL: no gap across the timeline switch
    let archive = lab.barman_archive();
    let described = archive.continuity().unwrap_or_else(|gap| panic!("barman's archive: {gap}"));
    assert!(archive.has_timeline(2), "no WAL of timeline 2 in barman's archive: {described}");

    // the old primary comes back as a standby: it keeps barman's slot, which nothing streams from
    let t1 = now_ms();
    lab.ok(&["rejoin", "db1"]);
    let rejoin = lab.wait_event("node_rejoin", "1", t1, 60);
    assert_eq!(rejoin.exit(), Some(0), "{}", lab.event_output(&rejoin.id));
    lab.wait_slots("db2", Duration::from_secs(10));
    lab.repmgr_nat("postgres", &["status"]).expect(0, "status after the rejoin");
}

#[test]
fn switchover_moves_everything_and_barman_streams_from_the_new_primary() {
    let lab = Lab::up();
    let t0 = now_ms();
    lab.ok(&["switchover", "db2"]);
    let promote = lab.wait_event("standby_promote", "2", t0, 60);
    assert_eq!(promote.exit(), Some(0), "{}", lab.event_output(&promote.id));
    let done = lab.wait_event("standby_switchover", "2", t0, 60);
    assert_eq!(done.exit(), Some(0), "{}", lab.event_output(&done.id));
    // repmgr 5.3 rejoins the old primary with --no-wait, which sends no node_rejoin; its
    // repmgrd reports the reconnection instead
    let back = lab.wait_event("repmgrd_standby_reconnect", "1", t0, 60);
    assert_eq!(back.exit(), Some(0), "{}", lab.event_output(&back.id));
    lab.wait_slots("db2", Duration::from_secs(10));
    assert_eq!(sorted(lab.our_rules()), routed_to(DB2, BOTH));
    assert_eq!(lab.app_reaches().unwrap(), DB2);
    lab.wait_barman_ok(Duration::from_secs(30));
    lab.repmgr_nat("postgres", &["status"]).expect(0, "status after the switchover");
}

#[test]
fn a_connection_held_to_the_old_primary_is_cut_when_the_rules_move() {
    let lab = Lab::up();
    lab.ok(&["repmgrd", "stop", "db1"]);
    lab.ok(&["repmgrd", "stop", "db2"]);
    let held_file = std::env::temp_dir().join("repmgr-nat-lab-held.txt");
    let held = lab.client("hold", 50, &[], &held_file);
    let held_to = |s: &Sample, node| s.server() == Some(node) && s.field::<u64>("conn") == Some(1);
    lab.wait_samples("the connection held to db1", &held_file, |s| s.iter().any(|s| held_to(s, DB1)));

    // db2 promoted while db1 still runs: the held connection still talks to db1
    lab.ok(&["pgctl", "db2", "promote"]);
    lab.wait_until("db2 promoted", Duration::from_secs(20), || lab.sql("db2", "select pg_is_in_recovery()") == "f");
    let switched = now_ms();
    lab.event("db2", "2", "standby_promote", "1").expect(0, "standby_promote for db2");
    std::thread::sleep(Duration::from_secs(2));
    lab.stop(held);

    let (before, after): (Vec<Sample>, Vec<Sample>) =
        samples::read(&held_file).into_iter().partition(|s| s.at < switched);
    assert!(before.iter().any(|s| held_to(s, DB1)), "not held to db1 first: {before:?}");
    let cut = after.iter().position(|s| !s.ok()).unwrap_or_else(|| panic!("never cut: {after:?}"));
    assert!(after[cut + 1..].iter().any(|s| s.server() == Some(DB2)), "no new connection to db2: {after:?}");
    let last = after.last().unwrap();
    assert_eq!(last.server(), Some(DB2), "still answered by {last:?}");
    assert!(!after[cut..].iter().any(|s| s.server() == Some(DB1)), "db1 answered after the cut: {after:?}");
}

/// A primary that refuses connections before the rules moved away from it (PostgreSQL
/// just died, nobody failed over yet): new connections through the application port are
/// held (its RST to a handshake that never completed is dropped, the client retransmits)
/// instead of refused, and answered once it is back; barman's port is not held.
#[test]
fn a_refusing_primary_holds_new_application_connections_not_barman_ones() {
    let lab = Lab::up();
    lab.ok(&["repmgrd", "stop", "db1"]);
    lab.ok(&["repmgrd", "stop", "db2"]);
    lab.ok(&["stop", "db1"]);
    assert_eq!(sorted(lab.our_rules()), routed_to(DB1, BOTH), "the rules moved without watch or an event");
    let conninfo = |port: &str| lab.env["APP_CONNINFO"].replace("port=54322", &format!("port={port}"));
    assert!(conninfo("54321").contains("port=54321"), "APP_CONNINFO names no port=54322: {}", lab.env["APP_CONNINFO"]);
    let connects = |port: &str, file: &str| {
        let file = std::env::temp_dir().join(file);
        let client = lab.spawn(
            &["probe", "connect", "--conninfo", &conninfo(port), "--interval-ms", "500", "--timeout-ms", "2000"],
            &file,
        );
        std::thread::sleep(Duration::from_millis(2600));
        lab.stop(client);
        samples::read(&file)
    };
    let refused = |s: &Sample| matches!(&s.outcome, Outcome::Err { reason } if reason.contains("refused"));

    let app = connects("54322", "repmgr-nat-lab-refusing-app.txt");
    assert!(!app.is_empty() && app.iter().all(|s| !s.ok()), "db1 is stopped, yet: {app:?}");
    assert!(!app.iter().any(refused), "a new application connection was refused, not held: {app:?}");
    let dropped = lab.ok(&["exec", "proxy", "--", "iptables", "-t", "filter", "-L", "repmgr_hold", "-v", "-x", "-n"]);
    let rst = dropped.lines().find(|l| l.contains("ctorigdstport 54322")).unwrap_or_else(|| panic!("{dropped}"));
    let packets: u64 = rst.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(0);
    assert!(packets > 0, "no RST of db1 was dropped:\n{dropped}");

    let barman = connects("54321", "repmgr-nat-lab-refusing-barman.txt");
    assert!(!barman.is_empty() && barman.iter().all(refused), "barman's port is held, not refused: {barman:?}");

    // back: a held connection is answered by db1
    lab.ok(&["start", "db1"]);
    let app = connects("54322", "repmgr-nat-lab-refusing-app-back.txt");
    assert!(app.iter().any(|s| s.server() == Some(DB1)), "db1 back, yet: {app:?}");
}

#[test]
fn an_old_primary_back_on_its_old_timeline_never_gets_the_ports() {
    let lab = Lab::up();
    lab.ok(&["repmgrd", "stop", "db1"]);
    lab.ok(&["repmgrd", "stop", "db2"]);
    lab.ok(&["pgctl", "db1", "stop"]);
    lab.ok(&["pgctl", "db2", "promote"]);
    lab.wait_until("db2 promoted", Duration::from_secs(20), || lab.sql("db2", "select pg_is_in_recovery()") == "f");

    // a promotion behind repmgr's back: reconcile follows it
    let run = lab.repmgr_nat("postgres", &["reconcile"]).expect(0, "reconcile");
    assert!(run.stderr.contains("reconcile: node 1: down: "), "{}", run.stderr);
    assert_eq!(sorted(lab.our_rules()), routed_to(DB2, BOTH));
    assert_eq!(lab.slots("db2"), ["barman"]);
    assert_eq!(lab.app_reaches().unwrap(), DB2);
    lab.wait_barman_ok(Duration::from_secs(30));

    // the old primary starts again as a primary, on its old timeline (a host reboot with
    // PostgreSQL enabled at boot)
    lab.ok(&["pgctl", "db1", "start"]);
    lab.wait_until("db1 answers", Duration::from_secs(20), || lab.try_sql("db1", "select 1").is_ok());
    let before = snapshot(&lab);
    let run = lab.event("db1", "1", "standby_promote", "1").expect(3, "a replayed promote for the old primary");
    assert!(
        run.stderr
            .contains("node 1 is a primary on timeline 1; the legitimate primary: node 2 on timeline 2; split brain"),
        "{}",
        run.stderr
    );
    assert_eq!(snapshot(&lab), before);
    let run = lab.repmgr_nat("postgres", &["reconcile"]).expect(0, "reconcile with a stale primary");
    assert!(run.stderr.contains("split brain: stale primary node 1 on timeline 1"), "{}", run.stderr);
    assert_eq!(snapshot(&lab), before);
    lab.repmgr_nat("root", &["setup"]).expect(0, "setup with a stale primary");
    assert_eq!(snapshot(&lab), before);
    lab.ok(&["watch", "start"]);
    lab.wait_until("four passes of watch", Duration::from_secs(10), || lab.watch_passes() >= 4);
    assert_eq!(snapshot(&lab), before);
    let status = lab.repmgr_nat("postgres", &["status"]).expect(4, "status with a stale primary");
    assert!(
        status.stdout.contains(
            "split brain: node 1 is a primary on timeline 1 besides the legitimate primary node 2 on timeline 2"
        ),
        "{}",
        status.stdout
    );
    assert_eq!(lab.app_reaches().unwrap(), DB2);
}

#[test]
fn stale_failed_and_malformed_events_change_nothing() {
    let lab = Lab::up();
    let before = snapshot(&lab);
    let cases: &[(&str, &str, &str, &str, i32, &str)] = &[
        // a replayed promote for a node that is a standby now
        (
            "db2",
            "2",
            "standby_promote",
            "1",
            3,
            "in recovery on timeline 1; the legitimate primary: node 1 on timeline 1; nothing changed",
        ),
        // a standby-type event naming the primary: its slot stays
        ("db1", "1", "standby_follow", "1", 3, "node 1 is not in recovery; a primary keeps its slot"),
        ("db1", "1", "node_rejoin", "1", 3, "node 1 is not in recovery; a primary keeps its slot"),
        // repmgr reports the action failed
        ("db2", "2", "standby_promote", "0", 0, "repmgr reports it failed (success 0); ignored"),
        // not an event repmgr-nat acts on
        ("db1", "1", "repmgrd_start", "1", 0, ""),
        // a node the config does not know
        ("db2", "7", "standby_promote", "1", 2, "unknown node id 7 (configured: 1, 2)"),
    ];
    for (node, id, event, success, code, says) in cases {
        let run = lab.event(node, id, event, success).expect(*code, &format!("event {id} {event} {success}"));
        assert!(run.stderr.contains(says), "event {id} {event}: {}", run.stderr);
        assert_eq!(snapshot(&lab), before, "event {id} {event} {success} changed something");
    }

    // malformed arguments straight to the handler: one line, exit 2
    for args in [
        &["event", "x", "standby_promote", "1"][..],
        &["event", "1", "standby promote", "1"],
        &["event", "1", "standby_promote", "yes"],
    ] {
        let run = lab.repmgr_nat("postgres", args).expect(2, &format!("{args:?}"));
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(run.stderr.contains("malformed event"), "{}", run.stderr);
    }

    // an unreachable node
    lab.ok(&["repmgrd", "stop", "db2"]);
    lab.ok(&["stop", "db2"]);
    let before = snapshot(&lab);
    let run =
        lab.repmgr_nat("postgres", &["event", "2", "standby_promote", "1"]).expect(1, "promote of a stopped node");
    assert!(run.stderr.contains("node 2 cannot be asked (down: "), "{}", run.stderr);
    assert_eq!(snapshot(&lab), before);

    // a malformed config
    let _config = Restore::file("/etc/repmgr-nat.toml");
    std::fs::write("/etc/repmgr-nat.toml", "[proxy]\naddress = \"198.51.100\"\n").unwrap();
    let run = lab.repmgr_nat("postgres", &["event", "1", "primary_register", "1"]).expect(2, "bad config");
    assert!(run.stderr.contains("bad config /etc/repmgr-nat.toml"), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert_eq!(snapshot(&lab), before);
}

#[test]
fn when_barman_fails_the_application_port_follows_the_configured_policy() {
    let lab = Lab::up();
    let config = Restore::file("/etc/repmgr-nat.toml");
    let _barman = Restore::file("/etc/barman.d/main_backup.conf");
    // barman's receive-wal stopped (and nobody to start it again), then barman broken
    lab.ok(&["cron", "stop"]);
    lab.ok(&["barman", "receive-wal", "--stop", "main_backup"]);
    lab.wait_until("the slot without walsender", Duration::from_secs(10), || {
        lab.sql("db1", "select active from pg_replication_slots") == "f"
    });
    std::fs::remove_file("/etc/barman.d/main_backup.conf").unwrap();
    let with = |key: &str| {
        let text = std::fs::read_to_string("/etc/repmgr-nat.toml").unwrap();
        std::fs::write("/etc/repmgr-nat.toml", text.replace("[barman]\n", &format!("[barman]\n{key}\n"))).unwrap();
    };

    // by default the application port opens as soon as the slot is there; barman's
    // failure is reported after
    lab.repmgr_nat("root", &["route", "1", "--ports", "barman"]).expect(0, "close the application port");
    assert!(lab.app_reaches().is_err());
    let run =
        lab.repmgr_nat("postgres", &["event", "1", "primary_register", "1"]).expect(1, "promote with barman broken");
    assert!(run.stderr.contains("barman did not confirm the new primary"), "{}", run.stderr);
    assert_eq!(lab.app_reaches().unwrap(), DB1);

    // open_app = "after_archive": barman first, and by default the port opens anyway
    with("open_app = \"after_archive\"");
    lab.repmgr_nat("root", &["route", "1", "--ports", "barman"]).expect(0, "close the application port");
    let run = lab.repmgr_nat("postgres", &["event", "1", "primary_register", "1"]).expect(1, "promote, after_archive");
    assert!(run.stderr.contains("opening the application port although barman did not confirm"), "{}", run.stderr);
    assert_eq!(lab.app_reaches().unwrap(), DB1);

    // open_app_on_failure = false: the port stays closed
    with("open_app_on_failure = false");
    lab.repmgr_nat("root", &["route", "1", "--ports", "barman"]).expect(0, "close the application port");
    let run = lab.repmgr_nat("postgres", &["event", "1", "primary_register", "1"]).expect(1, "promote, keep closed");
    assert!(run.stderr.contains("application port left closed (barman.open_app_on_failure = false)"), "{}", run.stderr);
    assert!(lab.app_reaches().is_err(), "the application port opened");
    assert_eq!(lab.barman_reaches().unwrap(), DB1);
    drop(config);
}

#[test]
fn two_events_at_once_end_in_one_consistent_state() {
    let lab = Lab::up();
    let t0 = now_ms();
    lab.ok(&["stop", "db1"]);
    lab.wait_event("repmgrd_failover_promote", "2", t0, 60);
    lab.ok(&["rejoin", "db1"]);
    lab.wait_event("node_rejoin", "1", t0, 60);

    // the state a lost event would leave: ports on db1 (now a standby), no slot on db2
    lab.repmgr_nat("root", &["route", "1", "--ports", "all"]).expect(0, "route back to db1");
    lab.sql("db2", "select pg_terminate_backend(active_pid) from pg_replication_slots where active");
    lab.wait_until("db2's slot idle", Duration::from_secs(10), || lab.slot_active("db2") != Some(true));
    lab.sql("db2", "select pg_drop_replication_slot('barman')");

    // the promote of db2 and the follow of db1 arrive together, twice each
    let runs: Vec<_> = std::thread::scope(|s| {
        let handles = [
            s.spawn(|| lab.event("db2", "2", "standby_promote", "1")),
            s.spawn(|| lab.event("db1", "1", "standby_follow", "1")),
            s.spawn(|| lab.event("db2", "2", "repmgrd_failover_promote", "1")),
            s.spawn(|| lab.event("db1", "1", "repmgrd_failover_follow", "1")),
        ];
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for run in runs {
        run.expect(0, "concurrent event");
    }
    assert_eq!(sorted(lab.our_rules()), routed_to(DB2, BOTH));
    lab.wait_slots("db2", Duration::from_secs(10));
    assert_eq!(lab.app_reaches().unwrap(), DB2);
    lab.repmgr_nat("postgres", &["status"]).expect(0, "status after concurrent events");
}
