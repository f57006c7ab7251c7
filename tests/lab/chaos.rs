//! The chaos run in CI: one lab with two proxies, a writer and a connect client through the
//! application port all the time, a dozen transitions from a fixed seed (failovers,
//! switchovers, a manual promote, rejoins, frozen and cut-off nodes, lost events, flushed
//! tables, a proxy's reboot and death, and faults that overlap a moving primary), every
//! invariant checked all along
//! (lab/kit/src/chaos/). It fails on any violation; times are judged by the lab's bounds,
//! the targets only by `lab/chaos` (BENCHMARKS.md).

use lab_kit::chaos::{self, Args};
use lab_kit::lab::Session;

/// Chosen for its mix (`lab-kit chaos --seed 515 --transitions 12 --plan`): a switchover
/// with every event lost and barman's host's tables flushed meanwhile, the address holder's
/// death, a frozen standby, a switchover back with every event lost and the holder's watch
/// down meanwhile (keepalived must hand the address to the other proxy, whose watch alone
/// follows), a failover, barman's receive-wal stopped while a node is down, a rejoin, a
/// standby cut off, a manual promote with the other proxy's tables flushed meanwhile, that
/// proxy's reboot, a rejoin, its tables flushed.
const SEED: u64 = 515;
const TRANSITIONS: usize = 12;

#[test]
fn a_dozen_seeded_transitions_break_no_invariant() {
    let out = std::env::temp_dir().join("repmgr-nat-lab-chaos");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let args = Args {
        seed: Some(SEED),
        transitions: TRANSITIONS,
        proxies: 2,
        bounds_only: true,
        plan: false,
        out: Some(out.clone()),
    };
    let results = chaos::run_in(&Session::take(), &args, &out);
    let report = chaos::report(&results);
    println!("{report}");
    assert_eq!(results.failed, None, "the run could not go on:\n{report}");
    assert_eq!(results.transitions.len(), TRANSITIONS, "{report}");
    assert!(results.violations.is_empty(), "{} violations:\n{report}", results.violations.len());
    // the checks ran: the writer wrote, barman restored it, and every transition converged
    let restored = results.restored.as_ref().expect("barman's restore");
    assert!(restored.acknowledged > 100, "{report}");
    assert!(results.transitions.iter().all(|t| t.status_ok_ms.is_some() && t.barman_ok_ms.is_some()), "{report}");
}
