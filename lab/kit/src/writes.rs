//! What `probe write` wrote, and the check that a table holds it: every acknowledged
//! commit with its payload, and no row nobody attempted. Each row's payload is
//! `lab-kit <pid> <attempt>`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::samples::{self, Outcome};

pub const PID_LINE: &str = "# lab-kit probe write pid=";

/// Every acknowledged commit (row id -> attempt number), how many attempts were made, and
/// which of them never reached a server (their connect failed: they cannot have committed).
#[derive(Debug)]
pub struct Writes {
    pub pid: u32,
    pub attempts: u64,
    pub acked: BTreeMap<i64, u64>,
    pub unsent: BTreeSet<u64>,
}

/// How a table compares with what was written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub attempted: u64,
    pub acknowledged: usize,
    /// Rows in the table.
    pub rows: usize,
    /// Acknowledged commits the table lacks, or holds with another payload.
    pub missing: Vec<i64>,
    /// Rows with a payload nobody attempted, or whose attempt never reached a server.
    pub invented: Vec<String>,
}

impl Comparison {
    pub fn holds_everything(&self) -> bool {
        self.missing.is_empty() && self.invented.is_empty()
    }

    pub fn verdict(&self) -> Result<usize, String> {
        if !self.missing.is_empty() {
            let first = &self.missing[..self.missing.len().min(10)];
            return Err(format!("{} acknowledged commits missing, first {first:?}", self.missing.len()));
        }
        if !self.invented.is_empty() {
            return Err(format!("rows nobody wrote: {:?}", &self.invented[..self.invented.len().min(10)]));
        }
        Ok(self.rows)
    }
}

impl Writes {
    pub fn parse(text: &str) -> Result<Writes, String> {
        let pid = text
            .lines()
            .find_map(|l| l.strip_prefix(PID_LINE))
            .and_then(|p| p.parse().ok())
            .ok_or("no pid line: not the output of probe write")?;
        let mut writes = Writes { pid, attempts: 0, acked: BTreeMap::new(), unsent: BTreeSet::new() };
        for s in samples::parse(text)? {
            writes.attempts += 1;
            if s.field::<String>("sent").as_deref() == Some("no") {
                writes.unsent.insert(writes.attempts);
            }
            if let Outcome::Ok { .. } = s.outcome {
                let (Some(id), Some(seq)) = (s.field("id"), s.field("seq")) else {
                    return Err(format!("an acknowledged write without id and seq at {}", s.at));
                };
                writes.acked.insert(id, seq);
            }
        }
        Ok(writes)
    }

    pub fn payload(&self, seq: u64) -> String {
        format!("lab-kit {} {seq}", self.pid)
    }

    /// Compares the rows of a table (`id|payload` lines) with what was written.
    pub fn compare(&self, rows: &str) -> Result<Comparison, String> {
        let mut found = BTreeMap::new();
        for line in rows.lines() {
            let (id, payload) = line.split_once('|').ok_or(format!("bad row {line:?}"))?;
            found.insert(id.parse::<i64>().map_err(|e| format!("{line}: {e}"))?, payload.to_string());
        }
        let missing = self
            .acked
            .iter()
            .filter(|(id, seq)| found.get(id) != Some(&self.payload(**seq)))
            .map(|(id, _)| *id)
            .collect();
        let prefix = format!("lab-kit {} ", self.pid);
        let invented = found
            .values()
            .filter(|p| {
                let seq = p.strip_prefix(&prefix).and_then(|s| s.parse::<u64>().ok());
                !seq.is_some_and(|seq| (1..=self.attempts).contains(&seq) && !self.unsent.contains(&seq))
            })
            .cloned()
            .collect();
        Ok(Comparison {
            attempted: self.attempts,
            acknowledged: self.acked.len(),
            rows: found.len(),
            missing,
            invented,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "\
# lab-kit probe write pid=42
1000 ok 198.51.100.11 id=1 seq=1 ms=3
1020 ok 198.51.100.11 id=2 seq=2 ms=3
1040 err db error: FATAL: terminating connection due to administrator command
1100 err timeout after 2000 ms (commit not acknowledged)
1150 err sent=no connection refused
1200 ok 198.51.100.12 id=4 seq=6 ms=4
";

    #[test]
    fn acknowledged_rows_are_found() {
        let w = Writes::parse(OUT).unwrap();
        assert_eq!((w.pid, w.attempts, w.acked.len()), (42, 6, 3));
        // seq 4 was not acknowledged but committed: present, and not invented
        let c = w.compare("1|lab-kit 42 1\n2|lab-kit 42 2\n3|lab-kit 42 4\n4|lab-kit 42 6\n").unwrap();
        assert!(c.holds_everything(), "{c:?}");
        assert_eq!(c.verdict(), Ok(4));
    }

    #[test]
    fn missing_changed_and_invented_rows_are_named() {
        let w = Writes::parse(OUT).unwrap();
        // seq 5's connect failed: a row of it was never sent
        let c = w.compare("1|lab-kit 42 1\n2|lab-kit 42 3\n9|lab-kit 41 1\n10|lab-kit 42 5\n").unwrap();
        assert_eq!(c.missing, [2, 4]);
        assert_eq!(c.invented, ["lab-kit 41 1", "lab-kit 42 5"]);
        assert!(c.verdict().unwrap_err().contains("2 acknowledged commits missing"));
    }

    #[test]
    fn output_of_another_client_is_refused() {
        assert!(Writes::parse("1000 ok a\n").is_err());
        assert!(Writes::parse("# lab-kit probe write pid=1\n1000 ok a seq=1\n").is_err());
    }
}
