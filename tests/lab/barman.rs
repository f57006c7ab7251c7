//! What the backups are for: a base backup taken before any failover, rolled forward by
//! barman's own `barman recover` through every timeline since, must hold every commit the
//! application was told succeeded, and no row nobody wrote (`lab_kit::proof`, which the
//! benchmark runs too). With watch running, as it is meant to be deployed.

use lab_kit::proof::{self, CONVERGE, Case};

use crate::common::Lab;

/// barman's restore of a base backup taken on `lab` before `case` (the Patroni lab's too).
#[track_caller]
pub fn proves(lab: Lab, case: Case) {
    let backup = proof::prepare(&lab);
    let compared = proof::run(case, &lab, &backup, &std::env::temp_dir());
    let rows = compared.verdict().unwrap_or_else(|e| panic!("barman's restore of {backup}: {e}"));
    eprintln!("proof: {} attempts, {} acknowledged, {rows} rows restored", compared.attempted, compared.acknowledged);
}

// The automatic failover's proof runs in instances.rs, on the lab with a second cluster
// beside: the same failover and restore, and what the neighbour must not feel.

#[test]
fn barman_restores_every_acknowledged_commit_after_a_switchover() {
    proves(Lab::up(), Case::Switchover);
}

#[test]
fn barman_restores_every_acknowledged_commit_after_two_failovers_in_a_row() {
    proves(Lab::up(), Case::TwoFailovers);
}

#[test]
fn barman_away_at_a_failover_streams_on_from_the_standby_slot_and_loses_nothing() {
    proves(Lab::up(), Case::BarmanAway);
}

/// The same with the slot on the primary only (the article's rule): the WAL barman missed
/// is gone from the new primary, and status says why barman cannot stream. This is what
/// the standby slots are for, and it shows the test above can fail.
#[test]
fn without_standby_slots_barman_away_at_a_failover_loses_wal_and_status_says_so() {
    let lab = Lab::up();
    proof::prepare(&lab);
    lab.ok(&["watch", "stop"]);
    let text = std::fs::read_to_string("/etc/repmgr-nat.toml").unwrap();
    std::fs::write("/etc/repmgr-nat.toml", text.replace("[barman]\n", "[barman]\nstandby_slots = false\n")).unwrap();
    lab.ok(&["watch", "start"]);
    lab.wait_until("the standby's slot dropped", CONVERGE, || lab.slot_active("db2").is_none());
    let (writer, _) = proof::barman_away_at_a_failover(&lab, &std::env::temp_dir(), "barman-away-article");
    lab.stop(writer);
    let said = "its slot has no walsender (for ";
    lab.wait_until("watch's report of the gap", CONVERGE, || {
        lab.repmgr_nat("postgres", &["status"]).stdout.contains("barman's archive has a gap there")
    });
    let status = lab.repmgr_nat("postgres", &["status"]).expect(4, "status with barman unable to stream");
    let line = status.stdout.lines().find(|l| l.contains("barman does not stream from node 2")).unwrap_or_default();
    assert!(line.contains(said) && line.contains("what it had confirmed on node 1), node 2 keeps WAL from "), "{line}");
    let (check, run) = lab.barman_check();
    assert!(!check.failed.is_empty(), "barman check passes with a gap:\n{}", run.stdout);
}
