//! barman's receive-wal, kept streaming: `watch` sees it through barman's slot on the
//! routed primary, starts it when the slot has had no walsender for a while (backing off
//! while it keeps failing), and says for `status` why barman does not stream.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{Watcher, backoff};
use crate::core::config::{Config, NodeId};
use crate::core::ruleset::{Open, Routing};
use crate::core::view::{Lsn, Role, Slot, View};
use crate::handler::Effects;

/// Where the receive-wal `watch` starts writes what it prints.
pub(super) const RECEIVE_WAL_LOG: &str = "receive-wal.log";
/// How long barman's slot on the primary may be without its walsender before `watch`
/// starts receive-wal, when one may be starting (after a switch, the run that switched
/// restarted it; cron may have started it): it connects within about a second.
const RECEIVE_WAL_GRACE: Duration = Duration::from_secs(3);

/// barman's receive-wal, as `watch` sees it through the slot on the primary.
#[derive(Default)]
pub(super) struct ReceiveWal {
    inactive_since: Option<Instant>,
    next_start: Option<Instant>,
    starts: u32,
    /// The last position barman had confirmed (its slot's restart_lsn while it streamed),
    /// and on which node.
    pub(super) confirmed: Option<(NodeId, Lsn)>,
    /// The node barman streamed from at the last pass: when its walsender goes while the
    /// route stays, the stream was lost (receive-wal died or was stopped, its connection
    /// reset) and no receive-wal is starting: it is started without the grace.
    streamed_from: Option<NodeId>,
    /// The node whose stream was lost so, until watch starts receive-wal for it.
    lost_on: Option<NodeId>,
    /// Why barman cannot stream, when watch can tell: the WAL it needs is gone.
    gap: Option<String>,
}

impl ReceiveWal {
    /// For `status`, while barman does not stream: for how long, and what the last
    /// receive-wal watch started said.
    pub(super) fn describe(&self, dir: &Path) -> Option<String> {
        let since = self.inactive_since?;
        let mut text = format!("for {} s", since.elapsed().as_secs());
        if let Some(gap) = &self.gap {
            text.push_str(&format!("; {gap}"));
        }
        if self.starts > 0 {
            text.push_str(&format!("; watch started receive-wal {} times", self.starts));
        }
        if let Some(line) = last_line(&dir.join(RECEIVE_WAL_LOG)) {
            text.push_str(&format!("; the last receive-wal said: {line}"));
        }
        Some(text)
    }
}

impl Watcher {
    /// barman's slot on the routed primary without its walsender for a while:
    /// receive-wal is not running (it failed, or was stopped, and barman's cron is up to a
    /// minute away). Start it, backing off while it keeps failing, and say why it failed.
    pub(super) fn keep_barman_streaming(&mut self, cfg: &Config, fx: &Effects, view: &View, routing: &Routing) {
        let Routing::To(route) = routing else { return };
        let slot = view.state(route.node).filter(|s| s.role == Role::Primary).and_then(|s| s.slot);
        let rw = &mut self.receive_wal;
        if let Some(Slot { active_pid: Some(_), restart_lsn: Some(lsn) }) = slot {
            if rw.starts > 0 {
                log::info!("watch: barman's receive-wal streams from node {} again", route.node.id());
            }
            let id = route.node.id();
            *rw = ReceiveWal { confirmed: Some((id, lsn)), streamed_from: Some(id), ..ReceiveWal::default() };
            return;
        }
        let id = route.node.id();
        if rw.streamed_from.take() == Some(id) {
            rw.lost_on = Some(id);
        }
        // (a switch since: the run that switched restarted it)
        rw.lost_on = rw.lost_on.filter(|n| *n == id);
        let lost = rw.lost_on.is_some();
        if route.open == Open::None || slot.is_none() {
            return;
        }
        // barman resumes at the start of the segment it had confirmed last: if the primary
        // keeps no WAL from there (nothing kept it for barman), barman can never stream it
        rw.gap = match (rw.confirmed, slot.and_then(|s| s.restart_lsn)) {
            (Some((on, needed)), Some(kept)) if kept.segment() > needed.segment() => Some(format!(
                "barman needs WAL from {needed} (what it had confirmed on node {on}), node {} keeps WAL from {kept} \
                 only: barman's archive has a gap there; take a new base backup",
                route.node.id()
            )),
            _ => None,
        };
        let now = Instant::now();
        let since = *rw.inactive_since.get_or_insert(now);
        let waited = now.duration_since(since);
        if (waited < RECEIVE_WAL_GRACE && !lost) || rw.next_start.is_some_and(|at| now < at) {
            return;
        }
        // under the run lock, as every action: an attempt is counted and said only when made
        let Some(_lock) = self.run_lock() else { return };
        let rw = &mut self.receive_wal;
        rw.lost_on = None;
        let said = last_line(&cfg.watch.dir.join(RECEIVE_WAL_LOG));
        rw.starts += 1;
        let wait = backoff(Duration::from_secs(1), rw.starts);
        rw.next_start = Some(now + wait);
        let mut why = said.map(|line| format!("; the last receive-wal said: {line}")).unwrap_or_default();
        if let Some(gap) = &rw.gap {
            why = format!("; {gap}{why}");
        }
        let gone = if lost {
            format!("barman's walsender left its slot on node {id}")
        } else {
            format!("barman's slot on node {id} has had no walsender for {} s", waited.as_secs())
        };
        log::warn!("watch: {gone}: starting barman receive-wal (attempt {}, next in {} s){why}", rw.starts, wait.as_secs());
        if let Err(e) = fx.backup.start_receive_wal() {
            log::error!("watch: {e:#}");
        }
    }
}

fn last_line(path: &Path) -> Option<String> {
    let text = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&text);
    text.lines().map(str::trim).rfind(|l| !l.is_empty()).map(|l| l.chars().take(300).collect())
}
