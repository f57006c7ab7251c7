//! watch.json: what `watch` wrote after its last pass (in `watch.dir`), for `status`,
//! `can-serve` and the next watch. The format only; `effects::watch_file` reads and
//! writes it.

use serde::{Deserialize, Serialize};

use crate::core::config::NodeId;
use crate::core::view::Lsn;

/// What `watch` wrote after its last pass (`watch.dir/watch.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchReport {
    pub version: u32,
    pub pid: u32,
    pub started_ms: u64,
    pub pass: u64,
    pub passed_ms: u64,
    pub interval_ms: u64,
    /// Asking every 50 ms: the routed primary does not answer.
    pub hurry: bool,
    pub primary: String,
    pub rules: String,
    pub nodes: String,
    /// The nodes that did not answer (down, silent or rejecting).
    pub unanswered: Vec<NodeId>,
    /// While barman does not stream from the primary: since when, what watch did, and
    /// what receive-wal said when it last failed.
    pub receive_wal: Option<String>,
    /// The last position barman had confirmed (its slot's restart_lsn while it streamed),
    /// and on which node: a watch started again after a restart knows what barman needs.
    pub barman_confirmed: Option<(NodeId, Lsn)>,
    pub last_action: Option<Action>,
    /// Since when (unix ms) the application ports have not forwarded to a legitimate
    /// primary (none seen, or not the one they forward to); none while they do.
    #[serde(default)]
    pub misrouted_since_ms: Option<u64>,
}

impl WatchReport {
    pub const FILE: &str = "watch.json";

    /// Whether this report is from a running watch: its last pass is recent.
    pub fn fresh(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.passed_ms) <= 2 * self.interval_ms.max(500)
    }

    /// One line for `status`, seen at `now_ms`.
    pub fn describe(&self, now_ms: u64) -> String {
        let age = now_ms.saturating_sub(self.passed_ms);
        let stale = if age > 10 * self.interval_ms.max(1000) { " (stale: is watch running?)" } else { "" };
        let mut text = format!(
            "pass {} of pid {}, {age} ms ago{stale}: primary {}; rules {}",
            self.pass, self.pid, self.primary, self.rules
        );
        if let Some(action) = &self.last_action {
            let ago = now_ms.saturating_sub(action.at_ms) / 1000;
            text.push_str(&format!("; last action {ago} s ago: {} ({})", action.steps.join(", "), action.result));
        }
        text
    }
}

/// What watch's last action did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    pub at_ms: u64,
    pub steps: Vec<String>,
    pub result: String,
}
