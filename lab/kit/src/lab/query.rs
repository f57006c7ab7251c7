//! What the lab's databases say: queries through lab.sh's psql (on a node, through the
//! proxy's ports, on the recovered instance), the writer's rows, barman's slots.

use std::path::Path;
use std::time::Duration;

use super::Lab;
use crate::writes::{Comparison, Writes};

impl Lab {
    /// What the writer that wrote `file` was told was committed, compared with the rows of
    /// `target`'s writes table (db1, db2, recovered).
    pub fn compare_writes(&self, file: &Path, target: &str) -> Comparison {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let writes = Writes::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let rows = self.ok(&["psql", "-d", "app", target, "select id, payload from writes"]);
        writes.compare(&rows).unwrap_or_else(|e| panic!("{target}'s rows: {e}"))
    }

    /// A query; target is db1|db2|db3|db4 (local socket), proxy-app (from the app namespace
    /// through the application port; proxy-app-two: instance two's), proxy-barman (from
    /// the proxy, as barman does) or recovered (the instance `lab.sh recover` started).
    #[track_caller]
    pub fn sql(&self, target: &str, sql: &str) -> String {
        self.ok(&["psql", target, sql]).trim().to_string()
    }

    pub fn try_sql(&self, target: &str, sql: &str) -> Result<String, String> {
        self.try_sql_in(target, "", sql)
    }

    /// A query in database `db` ("": the target's default).
    pub fn try_sql_in(&self, target: &str, db: &str, sql: &str) -> Result<String, String> {
        let run =
            if db.is_empty() { self.lab(&["psql", target, sql]) } else { self.lab(&["psql", "-d", db, target, sql]) };
        if run.code == 0 { Ok(run.stdout.trim().to_string()) } else { Err(run.stderr) }
    }

    /// The server a new connection through the application port reaches.
    pub fn app_reaches(&self) -> Result<String, String> {
        self.try_sql("proxy-app", "select host(inet_server_addr())")
    }

    /// The server a new connection through barman's port reaches (as barman connects).
    pub fn barman_reaches(&self) -> Result<String, String> {
        self.try_sql("proxy-barman", "select host(inet_server_addr())")
    }

    /// The replication slots on a node (empty when it is down).
    pub fn slots(&self, node: &str) -> Vec<String> {
        match self.try_sql(node, "select slot_name from pg_replication_slots order by 1") {
            Ok(text) => text.lines().map(str::to_string).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// barman's slot on a node: None when it has none, else whether a walsender uses it.
    pub fn slot_active(&self, node: &str) -> Option<bool> {
        match self.try_sql(node, "select active from pg_replication_slots where slot_name = 'barman'").ok()?.as_str() {
            "t" => Some(true),
            "f" => Some(false),
            _ => None,
        }
    }

    /// The walsender on barman's slot on a node (its pid), if one streams from it.
    pub fn barman_walsender(&self, node: &str) -> Option<i64> {
        let sql = "select active_pid from pg_replication_slots where slot_name = 'barman' and active";
        self.try_sql(node, sql).ok()?.parse().ok()
    }

    /// Waits until barman streams from `primary` (a walsender on its slot) and from
    /// nothing else (the other node may keep a slot, without a walsender).
    #[track_caller]
    pub fn wait_slots(&self, primary: &str, timeout: Duration) {
        let standby = if primary == "db1" { "db2" } else { "db1" };
        self.wait_until(&format!("barman streaming from {primary} only"), timeout, || {
            self.slot_active(primary) == Some(true) && self.slot_active(standby) != Some(true)
        });
    }
}
