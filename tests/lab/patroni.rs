//! A Patroni cluster behind the proxy (`lab.sh up --manager patroni`): Debian's patroni on
//! db1 and db2 with etcd as its DCS, no repmgr anywhere, barman streaming through the proxy,
//! and repmgr-nat's watch as the only trigger (README "With Patroni"). Patroni fails over,
//! switches over and rejoins on its own; watch follows from what PostgreSQL says. Barman's
//! slot is in Patroni's `ignore_slots`: Patroni never drops it.

use std::path::Path;

use lab_kit::lab::Session;
use lab_kit::proof::Case;

use crate::barman::proves;
use crate::common::{CONVERGE, DB1, DB2, Lab, assert_writes_on, writer};

fn patroni_lab() -> Lab {
    let lab = Lab::up_with(&Session::take(), &["--manager", "patroni"], &[]);
    assert_eq!(lab.env["MANAGER"], "patroni", "lab.sh env");
    lab
}

/// Patroni's log on `node` (its stdout and stderr).
fn patroni_log(lab: &Lab, node: &str) -> String {
    let key = format!("{}_PATRONI_LOG", node.to_uppercase());
    std::fs::read_to_string(Path::new(&lab.env[&key])).unwrap_or_default()
}

/// Patroni dropped barman's slot on `node`, or tried to: its log says so ("Dropped unknown
/// replication slot 'barman'", "Failed to drop replication slot 'barman'").
fn patroni_dropped_barman(lab: &Lab, node: &str) -> bool {
    patroni_log(lab, node).lines().any(|l| l.contains("replication slot 'barman'") && l.to_lowercase().contains("drop"))
}

/// `repmgr-nat status` as postgres exits 0 and says the rules, the record and the cluster agree.
#[track_caller]
fn consistent(lab: &Lab, when: &str) {
    let status = lab.repmgr_nat("postgres", &["status"]).expect(0, &format!("status {when}"));
    assert!(status.stdout.contains("consistent: yes"), "status {when}:\n{}", status.stdout);
}

/// barman streams from `primary`, and the other node keeps the slot watch made for it there
/// (no walsender): both barman's.
#[track_caller]
fn barman_slots(lab: &Lab, primary: &str) {
    let standby = if primary == "db1" { "db2" } else { "db1" };
    lab.wait_slots(primary, CONVERGE);
    lab.wait_until(&format!("watch's slot for barman on {standby}"), CONVERGE, || {
        lab.slot_active(standby) == Some(false)
    });
}

#[test]
fn the_leader_dies_patroni_promotes_db2_watch_moves_ports_slot_and_barman_and_db1_rejoins_rewound() {
    let lab = patroni_lab();
    lab.ok(&["watch", "start"]);
    assert!(lab.routed(DB1), "up leaves both ports on db1, the leader: {:#?}", lab.our_rules());
    barman_slots(&lab, "db1");
    let writes = std::env::temp_dir().join("repmgr-nat-lab-writes-patroni-failover.txt");
    let writer = writer(&lab, &writes);

    // the leader's node dies: its Patroni and PostgreSQL at once; Patroni on db2 takes the
    // leader key when it expires and promotes db2; nothing tells repmgr-nat
    lab.ok(&["stop", "db1"]);
    lab.ok(&["wait-primary", "db2", "60"]);
    lab.wait_until("the rules on db2", CONVERGE, || lab.routed(DB2));
    assert_eq!(lab.app_reaches().unwrap(), DB2);
    assert_eq!(lab.barman_reaches().unwrap(), DB2);
    assert!(lab.slots("db2").contains(&"barman".to_string()), "no barman slot on db2: {:?}", lab.slots("db2"));
    lab.wait_slots("db2", CONVERGE);
    lab.wait_barman_ok(CONVERGE);
    assert!(lab.events().is_empty(), "an event ran, yet there is no repmgr: {:?}", lab.events());

    // every commit acknowledged through the application port is on db2 (Patroni's
    // synchronous mode: db2 was the synchronous standby)
    lab.wait_until("writes through the application port to db2", CONVERGE, || {
        lab_kit::samples::read(&writes).iter().rev().take(20).filter(|s| s.server() == Some(DB2)).count() >= 10
    });
    lab.stop(writer);
    assert_writes_on(&lab, &writes, "db2");
    consistent(&lab, "after Patroni's failover");

    // the old leader back: Patroni rewinds it (pg_rewind) and starts it as db2's replica;
    // the ports stay, watch makes barman's slot on it
    lab.ok(&["start", "db1"]);
    lab.ok(&["wait-standby", "db1", "90"]);
    let log = patroni_log(&lab, "db1");
    assert!(log.contains("pg_rewind"), "db1 rejoined without pg_rewind; its Patroni said:\n{log}");
    assert!(lab.routed(DB2), "the rules moved when db1 came back: {:#?}", lab.our_rules());
    barman_slots(&lab, "db2");
    lab.wait_barman_ok(CONVERGE);
    consistent(&lab, "with db1 back as a replica");
    for node in ["db1", "db2"] {
        assert!(!patroni_dropped_barman(&lab, node), "Patroni dropped barman's slot on {node}");
    }
}

#[test]
fn switchovers_with_patronictl_move_ports_and_barman_and_patroni_never_drops_barmans_slot() {
    let lab = patroni_lab();
    lab.ok(&["watch", "start"]);
    barman_slots(&lab, "db1");

    // patronictl switchover: the leader shuts down, the replica is promoted, Patroni
    // restarts the old leader as a replica itself; the ports, barman's stream and its slots
    // follow (watch alone). Then back.
    for (node, address) in [("db2", DB2), ("db1", DB1)] {
        lab.ok(&["switchover", node]);
        lab.wait_until(&format!("the rules on {node}"), CONVERGE, || lab.routed(address));
        assert_eq!(lab.app_reaches().unwrap(), address);
        barman_slots(&lab, node);
        lab.wait_barman_ok(CONVERGE);
        consistent(&lab, &format!("after the switchover to {node}"));
    }

    // every restart made Patroni read the slots again (it drops unknown inactive ones
    // then): barman's is in ignore_slots, so it stayed
    for node in ["db1", "db2"] {
        assert!(!patroni_dropped_barman(&lab, node), "Patroni dropped barman's slot on {node}");
        assert!(patroni_log(&lab, node).contains("no action"), "Patroni's log on {node} shows no HA loop");
    }
    assert!(lab.events().is_empty(), "an event ran, yet there is no repmgr: {:?}", lab.events());
}

/// The same switchover without `ignore_slots`: Patroni drops barman's slot on the old leader
/// once it is a replica (README "barman's slot and Patroni's slot management"), and watch
/// makes it again, empty. This is what the setting is for, and it shows the log check above
/// can fail.
#[test]
fn without_ignore_slots_patroni_drops_barmans_slot_on_the_demoted_leader() {
    let lab = patroni_lab();
    lab.ok(&["watch", "start"]);
    barman_slots(&lab, "db1");
    lab.ok(&["patronictl", "db1", "edit-config", "--force", "-s", "ignore_slots=null"]);
    let config = lab.ok(&["patronictl", "db1", "show-config"]);
    assert!(!config.contains("ignore_slots"), "{config}");
    lab.ok(&["switchover", "db2"]);
    lab.wait_until("Patroni's drop of barman's slot on db1", CONVERGE, || patroni_dropped_barman(&lab, "db1"));
    barman_slots(&lab, "db2");
}

#[test]
fn barman_restores_every_acknowledged_commit_across_a_patroni_failover() {
    proves(patroni_lab(), Case::Failover);
}

#[test]
fn barman_restores_every_acknowledged_commit_across_a_patronictl_switchover() {
    proves(patroni_lab(), Case::Switchover);
}
