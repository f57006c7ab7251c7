//! The lab as the tests see it: the harness, the parsers and the measures come from
//! `lab/kit` (shared with the benchmark and the demo); what is only the tests' is here.

use std::path::Path;

pub use lab_kit::lab::{BOTH, DB1, DB2, Lab, PROXY, Restore, repo, routed_to, sorted};
pub use lab_kit::now_ms;
pub use lab_kit::proof::CONVERGE;

/// Everything that must not move when repmgr-nat refuses or ignores something.
pub fn snapshot(lab: &Lab) -> (String, Vec<String>, Vec<String>) {
    (lab.nat(), lab.slots("db1"), lab.slots("db2"))
}

/// A writer through the application port every 20 ms, its output in `file`, started once
/// its first commit was acknowledged.
pub fn writer(lab: &Lab, file: &Path) -> std::process::Child {
    lab.writer(file, 1)
}

/// Every commit `probe write` was told succeeded is among `node`'s rows, and no row there
/// is one nobody wrote.
#[track_caller]
pub fn assert_writes_on(lab: &Lab, file: &Path, node: &str) {
    lab.compare_writes(file, node).verdict().unwrap_or_else(|e| panic!("on {node}: {e}"));
}
