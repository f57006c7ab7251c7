//! The lab as the tests see it: the harness, the parsers and the measures come from
//! `lab/kit` (shared with the benchmark and the demo); what is only the tests' is here.

use std::path::Path;

pub use lab_kit::lab::{BOTH, DB1, DB2, Lab, PROXY, Restore, repo, routed_to, sorted};
pub use lab_kit::now_ms;
use lab_kit::writes::Writes;

/// Everything that must not move when repmgr-nat refuses or ignores something.
pub fn snapshot(lab: &Lab) -> (String, Vec<String>, Vec<String>) {
    (lab.nat(), lab.slots("db1"), lab.slots("db2"))
}

/// A writer through the application port every 20 ms, its output in `file`, started once
/// its first commit was acknowledged.
pub fn writer(lab: &Lab, file: &Path) -> std::process::Child {
    let child = lab.client("write", 20, &["--count", "100000000"], file);
    lab.wait_for_line(file, " ok ");
    child
}

/// Every commit `probe write` was told succeeded is among `node`'s rows, and no row there
/// is one nobody wrote.
#[track_caller]
pub fn assert_writes_on(lab: &Lab, file: &Path, node: &str) {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let writes = Writes::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let rows = lab.ok(&["psql", "-d", "app", node, "select id, payload from writes"]);
    let compared = writes.compare(&rows).unwrap_or_else(|e| panic!("{node}'s rows: {e}"));
    compared.verdict().unwrap_or_else(|e| panic!("on {node}: {e}"));
}
