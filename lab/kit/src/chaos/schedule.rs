//! The chaos run's schedule: a seeded random choice, at each step, among the transitions
//! that are valid in the cluster's current state (a rejoin only when a node is down, a
//! failover only with a standby to promote, ...). Pure: the same seed and the same states
//! give the same transitions, so a run is replayed by its seed as long as the cluster
//! reacts the same way (the run observes the state after each transition rather than
//! assuming it).

use std::fmt;

use serde::Serialize;

/// A small, fixed generator (splitmix64): the schedule must not change with a library's
/// version, or a seed in BENCHMARKS.md would no longer replay its run.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// The stream of a seed's overlapping faults, apart from its transitions': a seed
    /// written down before there were overlaps still gives the same transitions.
    pub fn overlaps(seed: u64) -> Rng {
        Rng::new(seed.rotate_left(32) ^ 0x6F76_6572_6C61_7073)
    }
}

/// A database node of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Node {
    #[serde(rename = "db1")]
    Db1,
    #[serde(rename = "db2")]
    Db2,
}

impl Node {
    pub fn name(self) -> &'static str {
        match self {
            Node::Db1 => "db1",
            Node::Db2 => "db2",
        }
    }

    pub fn other(self) -> Node {
        match self {
            Node::Db1 => Node::Db2,
            Node::Db2 => Node::Db1,
        }
    }

    pub fn addr(self) -> &'static str {
        match self {
            Node::Db1 => crate::lab::DB1,
            Node::Db2 => crate::lab::DB2,
        }
    }
}

/// What the node that is not the primary is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Other {
    /// A streaming standby.
    Standby,
    /// Stopped, or back as a primary on an older timeline: it needs a rejoin.
    Down,
}

/// The cluster as the schedule sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct State {
    pub primary: Node,
    pub other: Other,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let other = match self.other {
            Other::Standby => "standby",
            Other::Down => "down",
        };
        write!(f, "{} primary, {} {other}", self.primary.name(), self.primary.other().name())
    }
}

/// One proxy namespace: `proxy` (with barman) or `proxy2`.
pub type Proxy = &'static str;

/// What a transition does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    /// The primary stopped at once (`pg_ctl stop -m immediate`); repmgrd promotes the standby.
    Failover,
    /// `repmgr standby switchover` to the standby.
    Switchover,
    /// repmgrd off on both, the primary stopped, `repmgr standby promote` on the standby.
    Promote,
    /// The node that is down back as a standby (`repmgr node rejoin`, or a fresh clone).
    Rejoin { clone: bool },
    /// A node's postmaster stopped (SIGSTOP) for a while, then thawed.
    Freeze { node: Node },
    /// A node cut off from the proxies for a while, then healed.
    Partition { node: Node },
    /// barman's receive-wal stopped.
    ReceiveWalStop,
    /// A proxy's nat and filter tables flushed, chains deleted (a firewall reload).
    TablesFlush { proxy: Proxy },
    /// A proxy's watch killed (SIGKILL) and started again.
    WatchKill { proxy: Proxy },
    /// A proxy's reboot: its processes gone (watch; on barman's host receive-wal), its
    /// tables empty, watch.dir gone; then the boot step and watch.
    ProxyReboot { proxy: Proxy },
    /// The proxy holding the shared address stops dead (its link down), and comes back.
    HolderDown,
}

/// A second fault while the primary moves: the stories overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Meanwhile {
    /// A proxy's watch killed before the transition and started again after it: events
    /// and the other proxy follow the promotion (keepalived moves the address off a holder
    /// whose watch is gone), or nobody until it is back.
    WatchDown { proxy: Proxy },
    /// A proxy's tables flushed `MEANWHILE_AFTER_MS` into the transition.
    TablesFlush { proxy: Proxy },
    /// barman's receive-wal stopped `MEANWHILE_AFTER_MS` into the transition.
    ReceiveWalStop,
}

/// When a momentary fault strikes after a promoting transition began: while the old
/// primary is going and the new one is not yet up (repmgrd takes about 3 s to promote, a
/// switchover longer).
pub const MEANWHILE_AFTER_MS: u64 = 1000;

/// One step of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Transition {
    #[serde(flatten)]
    pub kind: Kind,
    /// Every repmgr event dropped before it reaches the proxies during this transition.
    pub events_dropped: bool,
    /// A second fault during it (only where the primary moves).
    pub meanwhile: Option<Meanwhile>,
}

/// How long a fault lasts before it is undone.
pub const FROZEN_STANDBY_MS: u64 = 3000;
/// Short enough that repmgrd does not fail over (it gives the primary about 3 s: its
/// monitor interval and two reconnect attempts a second apart).
pub const FROZEN_PRIMARY_MS: u64 = 1000;
pub const PARTITION_MS: u64 = 3000;
pub const HOLDER_DOWN_MS: u64 = 3000;

impl Transition {
    /// One line: what it does to the cluster in `state`.
    pub fn describe(&self, state: State) -> String {
        let (p, o) = (state.primary.name(), state.primary.other().name());
        let role = |n: Node| if n == state.primary { "primary" } else { "standby" };
        let what = match self.kind {
            Kind::Failover => format!("failover: {p} stopped, repmgrd promotes {o}"),
            Kind::Switchover => format!("switchover to {o}"),
            Kind::Promote => format!("manual promote of {o} ({p} stopped, repmgrd off)"),
            Kind::Rejoin { clone: false } => format!("rejoin {o} as a standby"),
            Kind::Rejoin { clone: true } => format!("rejoin {o} by a fresh clone"),
            Kind::Freeze { node } => {
                let ms = if node == state.primary { FROZEN_PRIMARY_MS } else { FROZEN_STANDBY_MS };
                format!("{} ({}) frozen {:.1} s", node.name(), role(node), ms as f64 / 1000.0)
            }
            Kind::Partition { node } => {
                format!(
                    "{} ({}) cut off from the proxies {:.1} s",
                    node.name(),
                    role(node),
                    PARTITION_MS as f64 / 1000.0
                )
            }
            Kind::ReceiveWalStop => "barman's receive-wal stopped".to_string(),
            Kind::TablesFlush { proxy } => format!("{proxy}'s nat and filter tables flushed"),
            Kind::WatchKill { proxy } => format!("{proxy}'s watch killed (SIGKILL) and started"),
            Kind::ProxyReboot { proxy } => format!("{proxy} rebooted (tables, watch.dir, processes gone; boot step)"),
            Kind::HolderDown => format!("the address's holder down {:.1} s, then up", HOLDER_DOWN_MS as f64 / 1000.0),
        };
        let what = if self.events_dropped { format!("{what}, every event dropped") } else { what };
        match self.meanwhile {
            None => what,
            Some(Meanwhile::WatchDown { proxy }) => format!("{what}, {proxy}'s watch down meanwhile"),
            Some(Meanwhile::TablesFlush { proxy }) => format!("{what}, {proxy}'s tables flushed meanwhile"),
            Some(Meanwhile::ReceiveWalStop) => format!("{what}, barman's receive-wal stopped meanwhile"),
        }
    }

    /// The kind's name, for figures by kind.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Failover => "failover",
            Kind::Switchover => "switchover",
            Kind::Promote => "manual promote",
            Kind::Rejoin { clone: false } => "rejoin",
            Kind::Rejoin { clone: true } => "rejoin by a clone",
            Kind::Freeze { .. } => "frozen node",
            Kind::Partition { .. } => "partition",
            Kind::ReceiveWalStop => "receive-wal stopped",
            Kind::TablesFlush { .. } => "tables flushed",
            Kind::WatchKill { .. } => "watch killed",
            Kind::ProxyReboot { .. } => "proxy reboot",
            Kind::HolderDown => "the holder's death",
        }
    }

    /// The kind's name with what went on meanwhile, for figures by kind: an overlapped
    /// transition is its own row.
    pub fn group(&self) -> String {
        match self.meanwhile {
            None => self.kind_name().to_string(),
            Some(Meanwhile::WatchDown { .. }) => format!("{}, a watch down meanwhile", self.kind_name()),
            Some(Meanwhile::TablesFlush { .. }) => format!("{}, tables flushed meanwhile", self.kind_name()),
            Some(Meanwhile::ReceiveWalStop) => format!("{}, receive-wal stopped meanwhile", self.kind_name()),
        }
    }

    /// Whether the primary changes (what a dropped event matters for).
    pub fn promotes(&self) -> bool {
        matches!(self.kind, Kind::Failover | Kind::Switchover | Kind::Promote)
    }

    /// The state it should leave (the run observes the real one).
    pub fn expected(&self, state: State) -> State {
        let o = state.primary.other();
        match self.kind {
            Kind::Failover | Kind::Promote => State { primary: o, other: Other::Down },
            Kind::Switchover => State { primary: o, other: Other::Standby },
            Kind::Rejoin { .. } => State { other: Other::Standby, ..state },
            _ => state,
        }
    }
}

/// The transitions valid in `state`, with their weights: the ones that move the primary
/// most often, a down node soon rejoined (nothing can be promoted while it is down).
fn candidates(state: State, proxies: &[Proxy]) -> Vec<(u64, Kind)> {
    let (primary, other) = (state.primary, state.primary.other());
    let mut c = Vec::new();
    match state.other {
        Other::Standby => {
            c.extend([(4, Kind::Failover), (4, Kind::Switchover), (2, Kind::Promote)]);
            c.push((1, Kind::Freeze { node: other }));
            c.push((1, Kind::Partition { node: other }));
        }
        Other::Down => {
            c.extend([(8, Kind::Rejoin { clone: false }), (2, Kind::Rejoin { clone: true })]);
        }
    }
    c.push((1, Kind::Freeze { node: primary }));
    c.push((1, Kind::Partition { node: primary }));
    c.push((1, Kind::ReceiveWalStop));
    for &proxy in proxies {
        c.push((1, Kind::TablesFlush { proxy }));
        c.push((1, Kind::WatchKill { proxy }));
        c.push((1, Kind::ProxyReboot { proxy }));
    }
    if proxies.len() > 1 {
        c.push((2, Kind::HolderDown));
    }
    c
}

/// The next transition for `state`; a third of those that move the primary get a second
/// fault meanwhile, drawn from `overlaps`.
pub fn pick(rng: &mut Rng, overlaps: &mut Rng, state: State, proxies: &[Proxy]) -> Transition {
    let c = candidates(state, proxies);
    let total: u64 = c.iter().map(|(w, _)| w).sum();
    let mut at = rng.below(total);
    let kind = c
        .iter()
        .find_map(|&(w, k)| {
            if at < w {
                return Some(k);
            }
            at -= w;
            None
        })
        .expect("a weight covers every draw");
    // a lost event matters where the primary moves, and on the rejoin's follow
    let droppable = matches!(kind, Kind::Failover | Kind::Switchover | Kind::Promote | Kind::Rejoin { .. });
    let events_dropped = droppable && rng.below(4) == 0;
    let moves = matches!(kind, Kind::Failover | Kind::Switchover | Kind::Promote);
    let meanwhile = (moves && overlaps.below(3) == 0).then(|| {
        let mut c: Vec<Meanwhile> = proxies
            .iter()
            .flat_map(|&proxy| [Meanwhile::WatchDown { proxy }, Meanwhile::TablesFlush { proxy }])
            .collect();
        c.push(Meanwhile::ReceiveWalStop);
        c[overlaps.below(c.len() as u64) as usize]
    });
    Transition { kind, events_dropped, meanwhile }
}

/// The schedule a seed gives when every transition leaves the state it should: what
/// `lab-kit chaos --plan` prints.
pub fn plan(seed: u64, count: usize, proxies: &[Proxy]) -> Vec<(State, Transition)> {
    let (mut rng, mut overlaps) = (Rng::new(seed), Rng::overlaps(seed));
    let mut state = State { primary: Node::Db1, other: Other::Standby };
    (0..count)
        .map(|_| {
            let t = pick(&mut rng, &mut overlaps, state, proxies);
            let before = state;
            state = t.expected(state);
            (before, t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &[Proxy] = &["proxy", "proxy2"];

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        assert_eq!(plan(6, 50, TWO), plan(6, 50, TWO));
        assert_ne!(plan(6, 50, TWO), plan(7, 50, TWO));
        // fixed forever: a seed written down replays its run
        let mut rng = Rng::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn only_transitions_valid_in_the_state_are_picked() {
        for seed in 0..200 {
            for (state, t) in plan(seed, 40, TWO) {
                match (state.other, t.kind) {
                    (Other::Down, Kind::Failover | Kind::Switchover | Kind::Promote) => {
                        panic!("seed {seed}: {t:?} with {state}")
                    }
                    (Other::Standby, Kind::Rejoin { .. }) => panic!("seed {seed}: a rejoin with {state}"),
                    (Other::Down, Kind::Freeze { node } | Kind::Partition { node }) if node != state.primary => {
                        panic!("seed {seed}: {t:?} of the node that is down")
                    }
                    _ => {}
                }
                assert!(!t.events_dropped || t.promotes() || matches!(t.kind, Kind::Rejoin { .. }), "{t:?}");
            }
        }
    }

    #[test]
    fn every_transition_appears_and_one_proxy_has_no_holder_to_stop() {
        let all: Vec<Kind> = (0..50).flat_map(|s| plan(s, 40, TWO)).map(|(_, t)| t.kind).collect();
        for kind in [
            Kind::Failover,
            Kind::Switchover,
            Kind::Promote,
            Kind::Rejoin { clone: false },
            Kind::Rejoin { clone: true },
            Kind::ReceiveWalStop,
            Kind::HolderDown,
            Kind::TablesFlush { proxy: "proxy2" },
            Kind::ProxyReboot { proxy: "proxy" },
        ] {
            assert!(all.contains(&kind), "{kind:?} never picked");
        }
        let one: Vec<Kind> = (0..50).flat_map(|s| plan(s, 40, &["proxy"])).map(|(_, t)| t.kind).collect();
        assert!(!one.contains(&Kind::HolderDown));
        assert!(!one.iter().any(|k| matches!(k, Kind::WatchKill { proxy: "proxy2" })));
    }

    #[test]
    fn a_transition_says_what_it_does_to_whom() {
        let state = State { primary: Node::Db2, other: Other::Standby };
        let t = Transition { kind: Kind::Failover, events_dropped: true, meanwhile: None };
        assert_eq!(t.describe(state), "failover: db2 stopped, repmgrd promotes db1, every event dropped");
        assert_eq!(t.expected(state), State { primary: Node::Db1, other: Other::Down });
        let t = Transition { kind: Kind::Freeze { node: Node::Db2 }, events_dropped: false, meanwhile: None };
        assert_eq!(t.describe(state), "db2 (primary) frozen 1.0 s");
        let t = Transition {
            kind: Kind::Switchover,
            events_dropped: false,
            meanwhile: Some(Meanwhile::WatchDown { proxy: "proxy2" }),
        };
        assert_eq!(t.describe(state), "switchover to db1, proxy2's watch down meanwhile");
    }

    /// A second fault only where the primary moves, about a third of those, every kind of
    /// it; and the transitions a seed gave before there were overlaps stay the same.
    #[test]
    fn overlaps_come_only_with_a_moving_primary_and_leave_the_transitions_as_they_were() {
        let all: Vec<Transition> = (0..100).flat_map(|s| plan(s, 40, TWO)).map(|(_, t)| t).collect();
        let moving = all.iter().filter(|t| t.promotes()).count();
        let overlapped: Vec<Meanwhile> = all.iter().filter_map(|t| t.meanwhile).collect();
        assert!(all.iter().all(|t| t.meanwhile.is_none() || t.promotes()));
        assert!((moving / 4..moving / 2).contains(&overlapped.len()), "{} of {moving}", overlapped.len());
        for m in [
            Meanwhile::WatchDown { proxy: "proxy" },
            Meanwhile::WatchDown { proxy: "proxy2" },
            Meanwhile::TablesFlush { proxy: "proxy" },
            Meanwhile::TablesFlush { proxy: "proxy2" },
            Meanwhile::ReceiveWalStop,
        ] {
            assert!(overlapped.contains(&m), "{m:?} never picked");
        }
        // a seed written down before overlaps (843, once the CI test's) gives the same dozen
        let kinds: Vec<&str> = plan(843, 12, TWO).iter().map(|(_, t)| t.kind_name()).collect();
        assert_eq!(
            kinds,
            [
                "manual promote",
                "rejoin",
                "frozen node",
                "partition",
                "watch killed",
                "failover",
                "the holder's death",
                "rejoin",
                "tables flushed",
                "switchover",
                "receive-wal stopped",
                "switchover"
            ]
        );
    }
}
