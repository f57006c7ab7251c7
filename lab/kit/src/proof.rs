//! barman's proof: a base backup taken before any failover, rolled forward by barman's own
//! `barman recover` through every timeline since, must hold every commit the application
//! was told succeeded, and no row nobody wrote. The cases, with watch running as it is
//! meant to be deployed; the tests assert the comparison, the benchmark counts it.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use serde::Serialize;

use crate::lab::{DB1, DB2, Lab};
use crate::samples;
use crate::writes::Comparison;

/// Far more than convergence takes (about a second): waiting this long is a failure.
pub const CONVERGE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Case {
    /// db1 stops under write load; repmgrd (or Patroni) promotes db2.
    Failover,
    /// `repmgr standby switchover` (or `patronictl switchover`) to db2 under write load.
    Switchover,
    /// db1 -> db2, db1 rejoined, then db2 -> db1.
    TwoFailovers,
    /// barman's host away while the primary writes five WAL segments and both nodes
    /// checkpoint; the primary dies; barman comes back after the promotion.
    BarmanAway,
}

impl Case {
    pub const ALL: [Case; 4] = [Case::Failover, Case::Switchover, Case::TwoFailovers, Case::BarmanAway];

    pub fn title(self) -> &'static str {
        match self {
            Case::Failover => "automatic failover under writes",
            Case::Switchover => "switchover under writes",
            Case::TwoFailovers => "two failovers in a row (db1 -> db2 -> db1)",
            Case::BarmanAway => "barman away at a failover (5 segments written, both nodes checkpointed)",
        }
    }
}

/// watch running, its slot on the standby made, and a base backup before anything
/// happens: the backup's id.
pub fn prepare(lab: &Lab) -> String {
    lab.ok(&["watch", "start"]);
    lab.wait_until("watch's slot on the standby", CONVERGE, || lab.slot_active("db2") == Some(false));
    let backup = lab.ok(&["backup"]).trim().to_string();
    assert!(!backup.is_empty(), "barman backup printed no id");
    backup
}

/// Acknowledged rows the writer has before a case begins: the restore then also covers
/// WAL written well before the switch, not only the moments around it.
const ROWS_BEFORE: usize = 100;

/// A writer through the application port every 20 ms, its output in `dir`; back once it
/// has `ROWS_BEFORE` acknowledged rows.
pub fn writer(lab: &Lab, dir: &Path, name: &str) -> (Child, PathBuf) {
    let file = dir.join(format!("writes-{name}.txt"));
    (lab.writer(&file, ROWS_BEFORE), file)
}

/// Runs a case on a lab made ready by `prepare`; what barman's restore holds.
pub fn run(case: Case, lab: &Lab, backup: &str, dir: &Path) -> Comparison {
    match case {
        Case::Failover => {
            let writes = writer(lab, dir, "failover");
            fail_over(lab, "db1", "db2", DB2);
            restore(lab, backup, writes, DB2)
        }
        Case::Switchover => {
            let writes = writer(lab, dir, "switchover");
            lab.ok(&["switchover", "db2"]);
            lab.wait_until("the rules on db2", CONVERGE, || lab.routed(DB2));
            restore(lab, backup, writes, DB2)
        }
        Case::TwoFailovers => {
            let writes = writer(lab, dir, "two-failovers");
            fail_over(lab, "db1", "db2", DB2);
            lab.ok(&["rejoin", "db1"]);
            // repmgrd on db1 must watch db2 before db2 fails, or nothing promotes db1
            lab.wait_until("repmgrd on db1 seeing db2", CONVERGE, || {
                let seen = lab.try_sql_in("db1", "repmgr", "select repmgr.get_upstream_last_seen()");
                seen.is_ok_and(|s| s.parse::<i64>().is_ok_and(|s| (0..=2).contains(&s)))
            });
            lab.wait_until("watch's slot on db1, the standby now", CONVERGE, || lab.slot_active("db1") == Some(false));
            lab.wait_barman_ok(CONVERGE);
            fail_over(lab, "db2", "db1", DB1);
            restore(lab, backup, writes, DB1)
        }
        Case::BarmanAway => {
            let writes = barman_away_at_a_failover(lab, dir, "barman-away");
            lab.wait_barman_ok(CONVERGE);
            restore(lab, backup, writes, DB2)
        }
    }
}

fn fail_over(lab: &Lab, from: &str, to: &str, address: &str) {
    lab.ok(&["stop", from]);
    lab.ok(&["wait-primary", to, "60"]);
    lab.wait_until(&format!("the rules on {to}"), CONVERGE, || lab.routed(address));
}

/// barman's host goes away (its receive-wal, its cron, watch and the events it would
/// get) while the primary writes several WAL segments; both nodes checkpoint, so only a
/// slot keeps WAL; the primary dies; barman comes back after the promotion. Returns the
/// writer, barman back, the rules on db2.
pub fn barman_away_at_a_failover(lab: &Lab, dir: &Path, name: &str) -> (Child, PathBuf) {
    for node in ["db1", "db2"] {
        lab.sql(node, "alter system set wal_keep_size = 0");
        lab.sql(node, "select pg_reload_conf()");
    }
    let writes = writer(lab, dir, name);
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
    lab.ok(&["stop", "db1"]);
    lab.ok(&["wait-primary", "db2", "60"]);
    lab.ok(&["events", "pass"]);
    lab.ok(&["cron", "start"]);
    lab.ok(&["watch", "start"]);
    lab.wait_until("the rules on db2", CONVERGE, || lab.routed(DB2));
    writes
}

/// Stops the writer once more writes reached `primary`, restores `backup` to the newest
/// timeline and compares its rows with what was acknowledged.
pub fn restore(lab: &Lab, backup: &str, (writer, file): (Child, PathBuf), primary: &str) -> Comparison {
    lab.wait_until("writes through the application port to the new primary", CONVERGE, || {
        samples::read(&file).iter().rev().take(20).filter(|s| s.server() == Some(primary)).count() >= 10
    });
    lab.stop(writer);
    lab.ok(&["recover", backup]);
    lab.compare_writes(&file, "recovered")
}
