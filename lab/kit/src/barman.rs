//! `barman check`, read once: every check OK, or the ones that failed.

/// What `barman check SERVER` said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// The checks that FAILED, as barman names them (`receive-wal running`, ...).
    pub failed: Vec<String>,
    /// barman's exit code: not 0 when a check failed, or when barman itself could not run.
    pub code: i32,
}

impl Check {
    /// From barman's exit code and its output: `\tname: OK` or `\tname: FAILED (why)`.
    pub fn parse(code: i32, stdout: &str) -> Check {
        let failed = stdout
            .lines()
            .filter_map(|line| line.trim().split_once(": FAILED"))
            .map(|(name, _)| name.to_string())
            .collect();
        Check { failed, code }
    }

    pub fn ok(&self) -> bool {
        self.code == 0 && self.failed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "Server main_backup:
\tPostgreSQL: OK
\tsuperuser or standard user with backup privileges: OK
\tPostgreSQL streaming: OK
\twal_level: OK
\treplication slot: OK
\tdirectories: OK
\tretention policy settings: OK
\tbackup maximum age: OK (no last_backup_maximum_age provided)
\tbackup minimum size: OK (0 B)
\twal maximum age: OK (no last_wal_maximum_age defined)
\twal size: OK (0 B)
\tcompression settings: OK
\tfailed backups: OK (there are 0 failed backups)
\tminimum redundancy requirements: OK (have 0 backups, expected at least 0)
\tpg_basebackup: OK
\tpg_basebackup compatible: OK
\tpg_basebackup supports tablespaces mapping: OK
\tsystemid coherence: OK (no system Id stored on disk)
\tpg_receivexlog: OK
\tpg_receivexlog compatible: OK
\treceive-wal running: OK
\tarchiver errors: OK
";

    #[test]
    fn all_ok_is_ok() {
        let check = Check::parse(0, OK);
        assert!(check.ok(), "{check:?}");
    }

    #[test]
    fn names_what_failed() {
        let out = OK
            .replace(
                "\treceive-wal running: OK",
                "\treceive-wal running: FAILED (See the Barman log file for more details)",
            )
            .replace(
                "\treplication slot: OK",
                "\treplication slot: FAILED (slot 'barman' not initialised: is 'receive-wal' running?)",
            );
        let check = Check::parse(1, &out);
        assert_eq!(check.failed, ["replication slot", "receive-wal running"]);
        assert!(!check.ok());
        // barman that could not run at all says nothing FAILED, but exits non-zero
        assert!(!Check::parse(2, "").ok());
    }
}
