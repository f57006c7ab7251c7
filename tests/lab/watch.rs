//! `repmgr-nat watch` and the faults it exists for: events lost, tables flushed, a node
//! frozen, a partition at promotion time, the service killed in the middle of a switch.
//! Every wait below is a bound on convergence, far above what it takes: the benchmark
//! measures how fast it is.

use std::time::{Duration, Instant};

use crate::common::{CONVERGE, DB1, DB2, Lab, Restore, assert_writes_on, now_ms, writer};

/// Far more than any command may take with a node frozen: its deadline (2 s in the lab,
/// every node asked at once), plus starting the program, sudo and the rule change.
const BOUNDED: Duration = Duration::from_secs(10);

#[test]
fn with_every_event_lost_watch_moves_ports_slot_and_barman_to_the_new_primary() {
    let lab = Lab::up();
    lab.ok(&["watch", "start"]);
    let writes = std::env::temp_dir().join("repmgr-nat-lab-writes-lost-events.txt");
    let writer = writer(&lab, &writes);

    lab.ok(&["events", "drop"]);
    let t0 = now_ms();
    lab.ok(&["stop", "db1"]);
    lab.ok(&["wait-primary", "db2", "60"]);
    lab.wait_until("the rules on db2", CONVERGE, || lab.routed(DB2));
    assert_eq!(lab.app_reaches().unwrap(), DB2);
    assert_eq!(lab.barman_reaches().unwrap(), DB2);
    assert_eq!(lab.slots("db2"), ["barman"]);
    lab.wait_barman_ok(CONVERGE);

    // no event reached the proxy: watch did it all
    let runs: Vec<_> = lab.events().into_iter().filter(|r| r.begin_ms >= t0).collect();
    assert!(runs.iter().any(|r| r.event == "standby_promote"), "repmgrd sent no promote: {runs:?}");
    assert!(runs.iter().all(|r| r.end.is_some_and(|e| e.exit == 255)), "an event reached the proxy: {runs:?}");

    // every commit acknowledged through the application port is on the new primary
    std::thread::sleep(Duration::from_secs(1));
    lab.stop(writer);
    let written = lab_kit::samples::read(&writes);
    assert!(written.iter().any(|s| s.server() == Some(DB2)), "no write reached db2 through the application port");
    assert_writes_on(&lab, &writes, "db2");

    let status = lab.repmgr_nat("postgres", &["status"]).expect(0, "status after the failover");
    assert!(status.stdout.contains("watch: pass "), "status does not show watch:\n{}", status.stdout);
}

#[test]
fn watch_repairs_the_tables_and_survives_a_kill_in_the_middle_of_a_switch() {
    let lab = Lab::up();
    lab.ok(&["watch", "start"]);
    let iptables = |args: &[&str]| {
        let mut all = vec!["exec", "proxy", "--", "iptables"];
        all.extend(args);
        lab.ok(&all);
    };

    // watch follows the tables (one root process that writes a reading after each change)
    // rather than asking sudo twice a second
    let log = lab.env["WATCH_LOG"].clone();
    let said = |what: &str| std::fs::read_to_string(&log).is_ok_and(|l| l.contains(what));
    lab.wait_until("watch following the tables", CONVERGE, || said("watch: following the tables"));
    assert_eq!(follows(), 1, "one route --show --follow");

    // flushed by someone (a firewall reload, an operator)
    for table in ["nat", "filter"] {
        iptables(&["-t", table, "-F"]);
        iptables(&["-t", table, "-X"]);
    }
    lab.wait_until("the tables restored after a flush", CONVERGE, || lab.routed(DB1));
    // a jump, then a rule, deleted by hand
    iptables(&["-t", "nat", "-D", "PREROUTING", "-j", "repmgr_dnat"]);
    lab.wait_until("the jump restored", CONVERGE, || lab.routed(DB1));
    iptables(&["-t", "nat", "-D", "repmgr_dnat", "2"]);
    lab.wait_until("the application port's rule restored", CONVERGE, || lab.routed(DB1));
    assert_eq!(lab.app_reaches().unwrap(), DB1);
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!log_text.contains("through sudo twice a second"), "watch stopped following the tables:\n{log_text}");

    // killed (SIGKILL) right after the switch of a failover, while it restarts barman
    lab.ok(&["repmgrd", "stop", "db1"]);
    lab.ok(&["repmgrd", "stop", "db2"]);
    lab.ok(&["stop", "db1"]);
    lab.ok(&["pgctl", "db2", "promote"]);
    lab.wait_until("watch switching to db2", CONVERGE, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("watch: route node 2 ports all"))
    });
    lab.ok(&["watch", "kill"]);
    lab.ok(&["watch", "start"]);
    lab.wait_until("the rules on db2", CONVERGE, || lab.routed(DB2));
    assert_eq!(lab.slots("db2"), ["barman"]);
    lab.wait_barman_ok(CONVERGE);
    assert_eq!(lab.app_reaches().unwrap(), DB2);
    // the killed watch's follow ended with its reader: only the new watch's is left
    lab.wait_until("one route --show --follow", CONVERGE, || follows() == 1);
}

/// How many `repmgr-nat ... route --show --follow` run (root's side, not sudo's).
fn follows() -> usize {
    lab_kit::lab::pids()
        .into_iter()
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .filter(|cmdline| {
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"repmgr-nat")) && args.contains(&&b"--follow"[..])
        })
        .count()
}

#[test]
fn barman_s_stream_reset_under_writes_is_started_again_at_once() {
    let lab = Lab::up();
    lab.ok(&["cron", "stop"]); // nothing else would start receive-wal for a minute
    lab.ok(&["watch", "start"]);
    lab.wait_until("barman streaming from db1", CONVERGE, || lab.slot_active("db1") == Some(true));

    // barman's connection reset under writes, the rules unchanged: what a flush of the nat
    // table did to it in the chaos run (db1 logged "Connection reset by peer" as it ran;
    // whether a packet falls in the flush's moment is timing, so the reset is made here
    // from db1's side: pg_receivewal ends as it did then)
    let writes = std::env::temp_dir().join("repmgr-nat-lab-writes-reset.txt");
    let writer = writer(&lab, &writes);
    let before = lab.barman_walsender("db1").expect("barman's walsender");
    lab.sql("db1", &format!("select pg_terminate_backend({before})"));
    lab.wait_until("barman streaming again, from a new walsender", CONVERGE, || {
        lab.barman_walsender("db1").is_some_and(|pid| pid != before)
    });
    lab.stop(writer);
    // no receive-wal was starting: watch did not wait its grace for one
    let log = std::fs::read_to_string(&lab.env["WATCH_LOG"]).unwrap();
    assert!(
        log.contains("barman's walsender left its slot on node 1: starting barman receive-wal"),
        "watch did not start receive-wal as soon as the stream was lost:\n{log}"
    );
    assert!(!log.contains("has had no walsender"), "watch waited for a receive-wal nobody started:\n{log}");
    assert!(lab.routed(DB1));
    lab.wait_barman_ok(CONVERGE);
}

#[test]
fn a_frozen_node_delays_no_command_and_watch_keeps_routing() {
    let lab = Lab::up();
    lab.ok(&["watch", "start"]);
    let _frozen = lab.fault("freeze", "thaw", "db2");

    let status = lab.repmgr_nat_within(BOUNDED, "postgres", &["status"]);
    assert!(status.stdout.contains("silent"), "db2 is not reported silent:\n{}", status.stdout);
    lab.repmgr_nat_within(BOUNDED, "postgres", &["reconcile"]).expect(0, "reconcile with a frozen standby");
    lab.repmgr_nat_within(BOUNDED, "root", &["setup"]).expect(0, "setup with a frozen standby");
    for (node, id, event, code) in [("db1", "1", "repmgrd_failover_promote", 0), ("db2", "2", "standby_follow", 1)] {
        let started = Instant::now();
        let run = lab.event(node, id, event, "1").expect(code, event);
        assert!(started.elapsed() < BOUNDED, "{event} took {:?}: {}", started.elapsed(), run.stderr);
    }

    let passes = lab.watch_passes();
    lab.wait_until("watch passing", CONVERGE, || lab.watch_passes() >= passes + 4);
    assert!(lab.routed(DB1));
    assert_eq!(lab.app_reaches().unwrap(), DB1);
    drop(_frozen);

    // the primary frozen: every command still ends within the deadline, refusing what it
    // cannot know; watch holds the rules (no flapping)
    let _frozen = lab.fault("freeze", "thaw", "db1");
    lab.repmgr_nat_within(BOUNDED, "postgres", &["status"]).expect(4, "status with a frozen primary");
    lab.repmgr_nat_within(BOUNDED, "postgres", &["reconcile"]).expect(3, "reconcile with a frozen primary");
    let started = Instant::now();
    lab.event("db1", "1", "repmgrd_failover_promote", "1").expect(1, "an event for the frozen primary");
    assert!(started.elapsed() < BOUNDED, "the event took {:?}", started.elapsed());
    let passes = lab.watch_passes();
    lab.wait_until("watch passing", CONVERGE, || lab.watch_passes() >= passes + 4);
    assert!(lab.routed(DB1), "watch moved the rules off a frozen primary: {:?}", lab.our_rules());
}

#[test]
fn a_partition_at_promotion_time_is_waited_out_then_followed() {
    let lab = Lab::up();
    lab.ok(&["watch", "start"]);
    let partition = lab.fault("partition", "heal", "db2");
    lab.ok(&["stop", "db1"]);
    lab.ok(&["wait-primary", "db2", "60"]);

    // the proxy cannot tell db2 was promoted: nothing goes to it, and the application
    // port of the dead db1 holds new connections
    let app_open = |rules: &[String]| rules.iter().any(|l| l.contains("--dport 54322 -j DNAT"));
    lab.wait_until("the application port of the dead db1 closed", CONVERGE, || !app_open(&lab.our_rules()));
    // and db1, back as a primary on its old timeline (a reboot), gets no application port
    // while db2 cannot be asked: db2 may be on a higher one, as it is
    lab.ok(&["pgctl", "db1", "start"]);
    lab.wait_until("db1 answers", CONVERGE, || lab.try_sql("db1", "select 1").is_ok());
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let rules = lab.our_rules();
        assert!(!rules.iter().any(|l| l.contains(DB2)), "routed to db2 through the partition: {rules:?}");
        assert!(!app_open(&rules), "application port open: {rules:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let status = lab.repmgr_nat("postgres", &["status"]).expect(4, "status while db1 is unconfirmed");
    assert!(status.stderr.contains("unconfirmed: node 1"), "{}{}", status.stdout, status.stderr);
    lab.ok(&["stop", "db1"]);

    drop(partition);
    lab.wait_until("the rules on db2 after the heal", CONVERGE, || lab.routed(DB2));
    assert_eq!(lab.slots("db2"), ["barman"]);
    assert_eq!(lab.app_reaches().unwrap(), DB2);
    lab.wait_barman_ok(CONVERGE);
}

#[test]
fn watch_restarts_barman_and_makes_its_slot_again_without_cron() {
    let lab = Lab::up();
    lab.ok(&["cron", "stop"]); // nothing else would start receive-wal for a minute
    lab.ok(&["watch", "start"]);
    lab.wait_until("barman streaming from db1", CONVERGE, || lab.slot_active("db1") == Some(true));

    // receive-wal stopped (killed, its host busy): watch starts it again, at once (the
    // walsender left a slot barman streamed from: no receive-wal is starting)
    let before = lab.barman_walsender("db1").expect("barman's walsender");
    lab.ok(&["barman", "receive-wal", "--stop", &lab.env["BARMAN_SERVER"]]);
    lab.wait_until("barman streaming again, from a new walsender", CONVERGE, || {
        lab.barman_walsender("db1").is_some_and(|pid| pid != before)
    });
    let log = std::fs::read_to_string(&lab.env["WATCH_LOG"]).unwrap();
    assert!(
        log.contains("barman's walsender left its slot on node 1: starting barman receive-wal"),
        "watch did not say it started receive-wal:\n{log}"
    );

    // the slot dropped on the primary by hand (watch stopped, or it would start receive-wal
    // again at once): watch makes it again, and barman follows
    lab.ok(&["watch", "stop"]);
    lab.ok(&["barman", "receive-wal", "--stop", &lab.env["BARMAN_SERVER"]]);
    lab.wait_until("barman's walsender gone", CONVERGE, || lab.slot_active("db1") == Some(false));
    lab.sql("db1", "select pg_drop_replication_slot('barman')");
    lab.ok(&["watch", "start"]);
    lab.wait_until("the slot made again and streamed from", CONVERGE, || lab.slot_active("db1") == Some(true));
    assert!(lab.routed(DB1));
    lab.wait_barman_ok(CONVERGE);
}

#[test]
fn a_node_answering_garbage_stops_neither_watch_nor_its_asking() {
    let lab = Lab::up();
    // a non-verifying sslmode: the fake node refuses TLS, as a server without it does
    let config = "/etc/repmgr-nat.toml";
    let _config = Restore::file(config);
    let text = std::fs::read_to_string(config).unwrap();
    let text = text.replace("sslmode = \"verify-full\"", "sslmode = \"prefer\"");
    std::fs::write(config, text.replace("channel_binding = \"require\"", "channel_binding = \"prefer\"")).unwrap();

    // db2's address answers every question with a row of the wrong shape, from the start
    lab.ok(&["stop", "db2"]);
    let said = std::env::temp_dir().join("repmgr-nat-lab-fake-node.txt");
    let listen = format!("{DB2}:5432");
    let fake = lab.spawn(&["exec", "db2", "--", &lab.env["KIT_BIN"], "fake-node", "--listen", &listen], &said);
    lab.wait_for_line(&said, "listening");
    lab.ok(&["watch", "start"]);
    let sessions = || std::fs::read_to_string(&said).unwrap().lines().filter(|l| l.contains("wrong rows")).count();
    lab.wait_until("watch passing, node 2 asked again and again", CONVERGE, || {
        lab.watch_passes() >= 4 && sessions() >= 3
    });
    let log = lab.env["WATCH_LOG"].clone();
    let watch_said = std::fs::read_to_string(&log).unwrap();
    assert!(watch_said.contains("2: rejected"), "node 2 is not reported rejected:\n{watch_said}");
    assert!(!watch_said.contains("panicked"), "{watch_said}");
    assert!(lab.routed(DB1));
    assert_eq!(lab.app_reaches().unwrap(), DB1);

    // the real node back: watch sees it as it is
    lab.stop(fake);
    lab.ok(&["start", "db2"]);
    lab.wait_until("node 2 a standby again in watch's eyes", CONVERGE, || {
        let said = std::fs::read_to_string(&log).unwrap();
        said.rfind("2: standby/") > said.rfind("2: rejected")
    });
    assert!(lab.routed(DB1));
}
