//! barman's receive-wal, kept streaming: the policy (`core::receive_wal`) decides when a
//! start is due; this starts it under the run lock, says why it had stopped, and keeps
//! what it prints for `status`.

use std::path::Path;
use std::time::Instant;

use super::lock_gate::LockGate;
use crate::core::config::Config;
use crate::core::receive_wal::{ReceiveWal, Seen};
use crate::core::ruleset::Routing;
use crate::core::view::View;
use crate::effects::exec;
use crate::handler::Effects;

/// Where the receive-wal `watch` starts writes what it prints.
pub(super) const RECEIVE_WAL_LOG: &str = "receive-wal.log";

/// barman's slot on the routed primary without its walsender for a while: receive-wal is
/// not running (it failed, or was stopped, and barman's cron is up to a minute away).
/// Start it, backing off while it keeps failing, and say why it failed.
pub(super) fn keep_streaming(
    rw: &mut ReceiveWal,
    gate: &mut LockGate,
    cfg: &Config,
    fx: &Effects,
    (view, routing): (&View, &Routing),
    now: Instant,
) {
    let (node, inactive, lost) = match rw.see(view, routing, now) {
        Seen::Streams { node, again: true } => {
            log::info!("watch: barman's receive-wal streams from node {node} again");
            return;
        }
        Seen::Due { node, inactive, lost } => (node, inactive, lost),
        Seen::Streams { .. } | Seen::Nothing | Seen::Waits => return,
    };
    // under the run lock, as every action: an attempt is counted and said only when made
    let Some(_lock) = gate.take(now) else { return };
    let said = last_said(&cfg.watch.dir);
    let (attempt, wait) = rw.started(now);
    let mut why = said.map(|line| format!("; the last receive-wal said: {line}")).unwrap_or_default();
    if let Some(gap) = rw.gap() {
        why = format!("; {gap}{why}");
    }
    let gone = if lost {
        format!("barman's walsender left its slot on node {node}")
    } else {
        format!("barman's slot on node {node} has had no walsender for {} s", inactive.as_secs())
    };
    log::warn!("watch: {gone}: starting barman receive-wal (attempt {attempt}, next in {} s){why}", wait.as_secs());
    if let Err(e) = fx.backup.start_receive_wal() {
        log::error!("watch: {e:#}");
    }
}

/// The last line the receive-wal watch started printed, if any.
pub(super) fn last_said(dir: &Path) -> Option<String> {
    let text = std::fs::read(dir.join(RECEIVE_WAL_LOG)).ok()?;
    exec::last_line(&String::from_utf8_lossy(&text)).map(|l| l.chars().take(300).collect())
}
