//! barman's receive-wal as `watch` keeps it streaming, decided without acting: watch sees
//! barman's slot on the routed primary each pass; when the slot has had no walsender for
//! `GRACE` (receive-wal failed, or was stopped, and barman's cron is up to a minute away)
//! a start is due, then again after a backoff while it keeps failing; and when the primary
//! keeps no WAL from where barman stopped, barman can never stream it: that gap is said.
//! When the walsender leaves a slot barman streamed from at the previous pass, the route
//! unchanged, no receive-wal is starting (the grace is for one that may be): the stream
//! was lost, and a start is due at once.

use std::time::{Duration, Instant};

use crate::core::config::NodeId;
use crate::core::retry::backoff;
use crate::core::ruleset::{Open, Routing};
use crate::core::view::{Lsn, Role, Slot, View};

/// How long barman's slot on the primary may be without its walsender before a start is
/// due (receive-wal restarts by itself after a switch within about a second).
pub const GRACE: Duration = Duration::from_secs(3);
/// The first pause between two starts; it doubles while they keep failing.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// What watch remembers of barman's streaming between passes.
#[derive(Debug, Default)]
pub struct ReceiveWal {
    inactive_since: Option<Instant>,
    next_start: Option<Instant>,
    starts: u32,
    /// The last position barman had confirmed (its slot's restart_lsn while it streamed),
    /// and on which node.
    pub confirmed: Option<(NodeId, Lsn)>,
    /// Why barman cannot stream, when watch can tell: the WAL it needs is gone.
    gap: Option<String>,
    /// The node barman streamed from at the last pass.
    streamed_from: Option<NodeId>,
    /// The node whose walsender left while the route stayed, until a start is made.
    lost_on: Option<NodeId>,
}

/// What a pass sees of barman's streaming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Nothing for watch to do: no route, the ports closed, or no slot on the primary.
    Nothing,
    /// barman's walsender holds the slot; `again` when it had stopped and watch started it.
    Streams { node: NodeId, again: bool },
    /// Not streaming, within the grace or the backoff.
    Waits,
    /// Not streaming for `inactive`: start receive-wal (under the run lock; `started`
    /// counts the attempt once it is made). `lost`: the walsender left the slot barman
    /// streamed from, and the start is due without the grace.
    Due { node: NodeId, inactive: Duration, lost: bool },
}

impl ReceiveWal {
    /// What the pass sees at `now`, through barman's slot on the routed primary.
    pub fn see(&mut self, view: &View, routing: &Routing, now: Instant) -> Seen {
        let Routing::To(route) = routing else { return Seen::Nothing };
        let node = route.node.id();
        let slot = view.state(route.node).filter(|s| s.role == Role::Primary).and_then(|s| s.slot);
        if let Some(Slot { active_pid: Some(_), restart_lsn: Some(lsn) }) = slot {
            let again = self.starts > 0;
            *self = ReceiveWal { confirmed: Some((node, lsn)), streamed_from: Some(node), ..ReceiveWal::default() };
            return Seen::Streams { node, again };
        }
        if self.streamed_from.take() == Some(node) {
            self.lost_on = Some(node);
        }
        // (a switch since: the run that switched restarted receive-wal, which may be starting)
        self.lost_on = self.lost_on.filter(|n| *n == node);
        let lost = self.lost_on.is_some();
        if route.open == Open::None || slot.is_none() {
            return Seen::Nothing;
        }
        // barman resumes at the start of the segment it had confirmed last: if the primary
        // keeps no WAL from there (nothing kept it for barman), barman can never stream it
        self.gap = match (self.confirmed, slot.and_then(|s| s.restart_lsn)) {
            (Some((on, needed)), Some(kept)) if kept.segment() > needed.segment() => Some(format!(
                "barman needs WAL from {needed} (what it had confirmed on node {on}), node {node} keeps WAL from \
                 {kept} only: barman's archive has a gap there; take a new base backup"
            )),
            _ => None,
        };
        let since = *self.inactive_since.get_or_insert(now);
        let inactive = now.duration_since(since);
        if (inactive < GRACE && !lost) || self.next_start.is_some_and(|at| now < at) {
            return Seen::Waits;
        }
        Seen::Due { node, inactive, lost }
    }

    /// A start made at `now`: its number, and the pause before the next may be made.
    pub fn started(&mut self, now: Instant) -> (u32, Duration) {
        self.lost_on = None;
        self.starts += 1;
        let wait = backoff(FIRST_BACKOFF, self.starts);
        self.next_start = Some(now + wait);
        (self.starts, wait)
    }

    /// Why barman cannot stream, when watch can tell.
    pub fn gap(&self) -> Option<&str> {
        self.gap.as_deref()
    }

    /// For `status`, while barman does not stream: for how long, and what the last
    /// receive-wal watch started said (`said`).
    pub fn describe(&self, now: Instant, said: impl FnOnce() -> Option<String>) -> Option<String> {
        let since = self.inactive_since?;
        let mut text = format!("for {} s", now.duration_since(since).as_secs());
        if let Some(gap) = &self.gap {
            text.push_str(&format!("; {gap}"));
        }
        if self.starts > 0 {
            text.push_str(&format!("; watch started receive-wal {} times", self.starts));
        }
        if let Some(line) = said() {
            text.push_str(&format!("; the last receive-wal said: {line}"));
        }
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::tests::node;
    use crate::core::ruleset::Route;
    use crate::core::view::NodeState;
    use crate::core::view::tests::view;
    use crate::core::view::{Answer, Role};

    const SEGMENT: u64 = 0x100_0000;

    fn primary_with(slot: Option<Slot>) -> View {
        let state = NodeState { role: Role::Primary, timeline: 2, lsn: Lsn(3 * SEGMENT + 0x60), slot };
        view(&[(1, Answer::Down("refused".into())), (2, Answer::Up(state))])
    }
    fn idle(restart: u64) -> Option<Slot> {
        Some(Slot { active_pid: None, restart_lsn: Some(Lsn(restart)) })
    }
    fn streaming(restart: u64) -> Option<Slot> {
        Some(Slot { active_pid: Some(4242), restart_lsn: Some(Lsn(restart)) })
    }
    fn to_2(open: Open) -> Routing {
        Routing::To(Route::new(node(2), open))
    }

    #[test]
    fn a_start_is_due_after_the_grace_then_after_each_backoff() {
        let (t0, s) = (Instant::now(), Duration::from_secs(1));
        let mut rw = ReceiveWal::default();
        let idle_view = primary_with(idle(3 * SEGMENT));
        let id = NodeId::new(2);
        // (seconds since the slot went idle, a start made then, what the pass sees)
        let rows: [(u32, bool, Seen); 8] = [
            (0, false, Seen::Waits),
            (2, false, Seen::Waits),
            (3, true, Seen::Due { node: id, inactive: 3 * s, lost: false }),
            (3, false, Seen::Waits), // attempt 1: the next in 1 s
            (4, true, Seen::Due { node: id, inactive: 4 * s, lost: false }),
            (5, false, Seen::Waits), // attempt 2: the next in 2 s
            (6, true, Seen::Due { node: id, inactive: 6 * s, lost: false }),
            (9, false, Seen::Waits), // attempt 3: the next in 4 s
        ];
        for (at, start, expected) in rows {
            let now = t0 + at * s;
            assert_eq!(rw.see(&idle_view, &to_2(Open::All), now), expected, "at {at} s");
            if start {
                rw.started(now);
            }
        }
        assert_eq!(rw.started(t0 + 10 * s), (4, 8 * s));
        assert!(rw.describe(t0 + 10 * s, || Some("ERROR".into())).unwrap().contains("started receive-wal 4 times"));
        // streaming again: said once, and everything forgotten but what barman confirmed
        let seen = rw.see(&primary_with(streaming(3 * SEGMENT)), &to_2(Open::All), t0 + 11 * s);
        assert_eq!(seen, Seen::Streams { node: id, again: true });
        assert_eq!(rw.confirmed, Some((id, Lsn(3 * SEGMENT))));
        assert_eq!(rw.describe(t0 + 11 * s, || None), None);
        let seen = rw.see(&primary_with(streaming(3 * SEGMENT)), &to_2(Open::All), t0 + 12 * s);
        assert_eq!(seen, Seen::Streams { node: id, again: false });
    }

    #[test]
    fn a_walsender_lost_while_the_route_stays_is_due_at_once_and_one_after_a_switch_waits() {
        let (t0, s) = (Instant::now(), Duration::from_secs(1));
        let (id, streams, idle_view) =
            (NodeId::new(2), primary_with(streaming(3 * SEGMENT)), primary_with(idle(3 * SEGMENT)));
        let mut rw = ReceiveWal::default();
        rw.see(&streams, &to_2(Open::All), t0);
        // gone on the next pass, the rules unchanged: nothing is starting
        assert_eq!(
            rw.see(&idle_view, &to_2(Open::All), t0 + s / 4),
            Seen::Due { node: id, inactive: Duration::ZERO, lost: true }
        );
        // no start made yet (the run lock was busy): still due
        assert!(matches!(rw.see(&idle_view, &to_2(Open::All), t0 + s / 2), Seen::Due { lost: true, .. }));
        rw.started(t0 + s / 2);
        // that start failing: the backoff, then the grace's rules as for any other
        assert_eq!(rw.see(&idle_view, &to_2(Open::All), t0 + s), Seen::Waits);
        assert!(matches!(rw.see(&idle_view, &to_2(Open::All), t0 + 2 * s), Seen::Waits));

        // barman streamed from node 1; the rules moved to node 2 since (a switch restarted
        // receive-wal, which may still be connecting): the grace holds
        let mut rw = ReceiveWal { streamed_from: Some(NodeId::new(1)), ..ReceiveWal::default() };
        assert_eq!(rw.see(&idle_view, &to_2(Open::All), t0), Seen::Waits);
        assert_eq!(
            rw.see(&idle_view, &to_2(Open::All), t0 + 3 * s),
            Seen::Due { node: id, inactive: 3 * s, lost: false }
        );
    }

    #[test]
    fn nothing_is_due_without_a_route_an_open_port_or_the_slot() {
        let now = Instant::now() + GRACE * 2;
        let mut rw = ReceiveWal { inactive_since: Some(now - GRACE * 2), ..ReceiveWal::default() };
        assert_eq!(rw.see(&primary_with(idle(0)), &Routing::Nothing, now), Seen::Nothing);
        assert_eq!(rw.see(&primary_with(idle(0)), &to_2(Open::None), now), Seen::Nothing);
        assert_eq!(rw.see(&primary_with(None), &to_2(Open::All), now), Seen::Nothing);
        // barman's port alone open (after a failed confirmation): barman must still stream
        assert!(matches!(rw.see(&primary_with(idle(0)), &to_2(Open::Barman), now), Seen::Due { .. }));
    }

    #[test]
    fn a_gap_is_said_when_the_primary_keeps_no_wal_from_where_barman_stopped() {
        let now = Instant::now();
        let mut rw = ReceiveWal { confirmed: Some((NodeId::new(1), Lsn(SEGMENT + 0x10))), ..ReceiveWal::default() };
        rw.see(&primary_with(idle(SEGMENT)), &to_2(Open::All), now);
        assert_eq!(rw.gap(), None, "the same segment is still kept");
        rw.see(&primary_with(idle(2 * SEGMENT)), &to_2(Open::All), now);
        let gap = rw.gap().unwrap();
        assert!(gap.starts_with("barman needs WAL from 0/1000010 (what it had confirmed on node 1)"), "{gap}");
        assert!(rw.describe(now, || None).unwrap().contains("take a new base backup"));
    }
}
