//! What the backups are for: a base backup taken before any failover, rolled forward by
//! barman's own `barman recover` through every timeline since, must hold every commit the
//! application was told succeeded, and no row nobody wrote. With watch running, as it is
//! meant to be deployed.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use crate::common::{BOTH, DB1, DB2, Lab, Writes, routed_to, sorted};

const CONVERGE: Duration = Duration::from_secs(30);

/// A writer inserting through the application port every 20 ms, acknowledged ids logged.
fn writer(lab: &Lab, name: &str) -> (Child, PathBuf) {
    let file = std::env::temp_dir().join(format!("repmgr-nat-lab-writes-{name}.txt"));
    let conninfo = &lab.env["APP_CONNINFO"];
    let child =
        lab.spawn(&["probe", "write", "--conninfo", conninfo, "--count", "1000000", "--interval-ms", "20"], &file);
    lab.wait_for_line(&file, " ok ");
    (child, file)
}

/// Stops the writer after some more writes reached `primary`, then restores `backup` to
/// the newest timeline and checks every row against what was acknowledged.
#[track_caller]
fn prove(lab: &Lab, backup: &str, (writer, file): (Child, PathBuf), primary: &str) {
    lab.wait_until("writes through the application port to the new primary", CONVERGE, || {
        std::fs::read_to_string(&file)
            .is_ok_and(|w| w.lines().rev().take(20).filter(|l| l.contains(&format!("ok {primary} "))).count() >= 10)
    });
    lab.stop(writer);
    let writes = Writes::read(&file);
    lab.ok(&["recover", backup]);
    let rows = lab.ok(&["psql", "-d", "app", "recovered", "select id, payload from writes"]);
    let restored = writes.check(&rows).unwrap_or_else(|e| panic!("barman's restore of {backup}: {e}"));
    eprintln!(
        "proof: {} attempts, {} acknowledged, {restored} rows restored from {backup}",
        writes.attempts,
        writes.acked.len()
    );
}

fn routed(lab: &Lab, node: &str) -> bool {
    sorted(lab.our_rules()) == routed_to(node, BOTH)
}

/// A lab with watch running, its standby slot made, and a base backup; the backup's id.
fn ready() -> (Lab, String) {
    let lab = Lab::up();
    lab.ok(&["watch", "start"]);
    lab.wait_until("watch's slot on the standby", CONVERGE, || lab.slot_active("db2") == Some(false));
    let backup = lab.ok(&["backup"]).trim().to_string();
    assert!(!backup.is_empty(), "barman backup printed no id");
    (lab, backup)
}

#[test]
fn barman_restores_every_acknowledged_commit_after_an_automatic_failover() {
    let (lab, backup) = ready();
    let writes = writer(&lab, "failover");
    lab.ok(&["stop", "db1"]);
    lab.ok(&["wait-primary", "db2", "60"]);
    lab.wait_until("the rules on db2", CONVERGE, || routed(&lab, DB2));
    prove(&lab, &backup, writes, DB2);
}

#[test]
fn barman_restores_every_acknowledged_commit_after_a_switchover() {
    let (lab, backup) = ready();
    let writes = writer(&lab, "switchover");
    lab.ok(&["switchover", "db2"]);
    lab.wait_until("the rules on db2", CONVERGE, || routed(&lab, DB2));
    prove(&lab, &backup, writes, DB2);
}

#[test]
fn barman_restores_every_acknowledged_commit_after_two_failovers_in_a_row() {
    let (lab, backup) = ready();
    let writes = writer(&lab, "two-failovers");
    lab.ok(&["stop", "db1"]);
    lab.ok(&["wait-primary", "db2", "60"]);
    lab.wait_until("the rules on db2", CONVERGE, || routed(&lab, DB2));
    lab.ok(&["rejoin", "db1"]);
    lab.wait_until("watch's slot on db1, the standby now", CONVERGE, || lab.slot_active("db1") == Some(false));
    lab.wait_barman_ok(CONVERGE);
    lab.ok(&["stop", "db2"]);
    lab.ok(&["wait-primary", "db1", "60"]);
    lab.wait_until("the rules on db1 again", CONVERGE, || routed(&lab, DB1));
    prove(&lab, &backup, writes, DB1);
}

/// barman's host away (its receive-wal, its cron, watch and the events it would get)
/// while the primary writes several WAL segments; both nodes checkpoint, so only a slot
/// keeps WAL; the primary dies; barman comes back after the promotion. Returns the lab
/// and the writer, barman back, the rules on db2.
fn barman_away_at_a_failover(name: &str, standby_slots: bool) -> (Lab, String, (Child, PathBuf)) {
    let (lab, backup) = ready();
    if !standby_slots {
        lab.ok(&["watch", "stop"]);
        let text = std::fs::read_to_string("/etc/repmgr-nat.toml").unwrap();
        std::fs::write("/etc/repmgr-nat.toml", text.replace("[barman]\n", "[barman]\nstandby_slots = false\n"))
            .unwrap();
        lab.ok(&["watch", "start"]);
        lab.wait_until("the standby's slot dropped", CONVERGE, || lab.slot_active("db2").is_none());
    }
    for node in ["db1", "db2"] {
        lab.sql(node, "alter system set wal_keep_size = 0");
        lab.sql(node, "select pg_reload_conf()");
    }
    let writes = writer(&lab, name);

    // the backup host goes away
    lab.ok(&["watch", "stop"]);
    lab.ok(&["cron", "stop"]);
    lab.ok(&["events", "drop"]);
    lab.ok(&["barman", "receive-wal", "--stop", "main_backup"]);
    lab.wait_until("barman's walsender gone", CONVERGE, || lab.slot_active("db1") == Some(false));
    // the writer keeps writing: every switch ends a segment with its writes in it
    for _ in 0..5 {
        lab.sql("db1", "select pg_switch_wal()");
        std::thread::sleep(Duration::from_millis(200));
    }
    lab.sql("db1", "checkpoint");
    lab.sql("db2", "checkpoint");

    // the primary dies, the standby is promoted, barman comes back
    lab.ok(&["stop", "db1"]);
    lab.ok(&["wait-primary", "db2", "60"]);
    lab.ok(&["events", "pass"]);
    lab.ok(&["cron", "start"]);
    lab.ok(&["watch", "start"]);
    lab.wait_until("the rules on db2", CONVERGE, || routed(&lab, DB2));
    (lab, backup, writes)
}

#[test]
fn barman_away_at_a_failover_streams_on_from_the_standby_slot_and_loses_nothing() {
    let (lab, backup, writes) = barman_away_at_a_failover("barman-away", true);
    lab.wait_barman_ok(CONVERGE);
    prove(&lab, &backup, writes, DB2);
}

/// The same with the slot on the primary only (the article's rule): the WAL barman missed
/// is gone from the new primary, and status says why barman cannot stream. This is what
/// the standby slots are for, and it shows the test above can fail.
#[test]
fn without_standby_slots_barman_away_at_a_failover_loses_wal_and_status_says_so() {
    let (lab, _backup, (writer, _)) = barman_away_at_a_failover("barman-away-article", false);
    lab.stop(writer);
    let said = "its slot has no walsender (for ";
    lab.wait_until("watch's report of the gap", CONVERGE, || {
        lab.repmgr_nat("postgres", &["status"]).stdout.contains("barman's archive has a gap there")
    });
    let status = lab.repmgr_nat("postgres", &["status"]).expect(4, "status with barman unable to stream");
    let line = status.stdout.lines().find(|l| l.contains("barman does not stream from node 2")).unwrap_or_default();
    assert!(line.contains(said) && line.contains("what it had confirmed on node 1), node 2 keeps WAL from "), "{line}");
    let check = lab.lab(&["barman", "check", "main_backup"]);
    assert!(check.stdout.contains("FAILED"), "barman check passes with a gap:\n{}", check.stdout);
}
