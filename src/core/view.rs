//! One view of the whole cluster: what every configured node answered, and which of them
//! is the legitimate primary. Pure: the database adapter fills a `View`, the plan and the
//! status report read it.

use std::fmt;

use serde::Serialize;

use crate::core::config::Node;
use crate::core::ruleset::{Open, Record, Route};

/// A WAL position, as PostgreSQL's `pg_lsn` (printed `X/Y`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The WAL segment size of a default build; WAL is kept and removed by whole segments.
    pub const SEGMENT: u64 = 16 << 20;

    /// Bytes from `earlier` to `self` (0 when `earlier` is ahead).
    pub fn since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    pub fn segment(self) -> u64 {
        self.0 / Lsn::SEGMENT
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::str::FromStr for Lsn {
    type Err = String;

    /// `X/Y` in hexadecimal, as PostgreSQL prints a `pg_lsn`.
    fn from_str(text: &str) -> Result<Lsn, String> {
        let hex = |part: &str| u64::from_str_radix(part, 16).ok().filter(|n| *n <= 0xffff_ffff);
        match text.split_once('/').and_then(|(hi, lo)| Some((hex(hi)?, hex(lo)?))) {
            Some((hi, lo)) => Ok(Lsn(hi << 32 | lo)),
            None => Err(format!("{text:?} is not a WAL position")),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Standby,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
        })
    }
}

/// barman's replication slot on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The walsender streaming from the slot, if one is connected.
    pub active_pid: Option<i32>,
    /// The oldest WAL the slot keeps (none until it reserved WAL).
    pub restart_lsn: Option<Lsn>,
}

/// What a reachable node says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeState {
    pub role: Role,
    /// A primary's timeline is the one it writes WAL on now (from its current WAL file
    /// name: `pg_control_checkpoint()` lags behind a promotion until the next checkpoint). A
    /// standby's is the one it receives (0 when it receives nothing and has no restartpoint).
    pub timeline: u32,
    /// A primary's current WAL position; a standby's replayed position.
    pub lsn: Lsn,
    pub slot: Option<Slot>,
}

/// One node's answer, within the deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Up(NodeState),
    /// The node serves nobody: its host refused the connection, or PostgreSQL said it is
    /// starting up or shutting down.
    Down(String),
    /// No answer within the deadline (a frozen or unreachable host).
    Silent(String),
    /// PostgreSQL answered but refused repmgr-nat (login, TLS) or failed the query: the node
    /// may well serve applications.
    Rejected(String),
}

impl Answer {
    pub fn state(&self) -> Option<&NodeState> {
        match self {
            Answer::Up(state) => Some(state),
            _ => None,
        }
    }

    /// "up", "down", "silent" or "rejected": the answer's kind, as `status --json` and
    /// watch's log name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Answer::Up(_) => "up",
            Answer::Down(_) => "down",
            Answer::Silent(_) => "silent",
            Answer::Rejected(_) => "rejected",
        }
    }

    /// Whether the node's PostgreSQL said anything at all (for `setup`: when no node
    /// answered at all, the recorded route is restored unverified).
    pub fn replied(&self) -> bool {
        matches!(self, Answer::Up(_) | Answer::Rejected(_))
    }

    /// "primary on timeline 2", "standby", "down: connection refused", ...
    pub fn describe(&self) -> String {
        match self {
            Answer::Up(s) if s.role == Role::Primary => format!("primary on timeline {}", s.timeline),
            Answer::Up(_) => "standby".to_string(),
            Answer::Down(why) => format!("down: {why}"),
            Answer::Silent(why) => format!("no answer: {why}"),
            Answer::Rejected(why) => format!("cannot be asked: {why}"),
        }
    }
}

/// Every configured node's answer, in node id order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub nodes: Vec<(Node, Answer)>,
}

impl View {
    pub fn answer(&self, node: Node) -> Option<&Answer> {
        self.nodes.iter().find(|(id, _)| *id == node).map(|(_, a)| a)
    }

    pub fn state(&self, node: Node) -> Option<&NodeState> {
        self.answer(node).and_then(Answer::state)
    }

    /// The reachable primaries with their timelines.
    pub fn primaries(&self) -> impl Iterator<Item = (Node, u32)> + '_ {
        self.nodes.iter().filter_map(|(id, a)| match a {
            Answer::Up(s) if s.role == Role::Primary => Some((*id, s.timeline)),
            _ => None,
        })
    }

    /// The reachable standbys.
    pub fn standbys(&self) -> impl Iterator<Item = (Node, &NodeState)> + '_ {
        self.nodes.iter().filter_map(|(id, a)| match a {
            Answer::Up(s) if s.role == Role::Standby => Some((*id, s)),
            _ => None,
        })
    }

    /// "1: primary on timeline 1, 2: down: connection refused"
    pub fn describe(&self) -> String {
        self.nodes.iter().map(|(n, a)| format!("{}: {}", n.id(), a.describe())).collect::<Vec<_>>().join(", ")
    }
}

/// Who may take the application's writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Primary {
    /// The node not in recovery on the highest timeline, at or above the recorded one.
    Legit { node: Node, timeline: u32 },
    /// No reachable node is a primary.
    None,
    /// Several primaries on the same highest timeline: nobody can tell which is right.
    Ambiguous { nodes: Vec<Node>, timeline: u32 },
    /// The highest primary that answers is on a timeline below the one recorded with the
    /// route: the true primary may just be unreachable from here while a stale one answers.
    Fenced { node: Node, timeline: u32, recorded: Record },
    /// The only primary that answers is on the recorded timeline but is not what the route
    /// fully points at (its application port was closed when it went down, say), while other
    /// nodes cannot be asked: one of them may have been promoted to a higher timeline
    /// while the proxy could not see it, and this one be its former primary come back (a
    /// reboot with PostgreSQL enabled at boot). Wait until they answer.
    Unconfirmed { node: Node, timeline: u32, unknown: Vec<Node> },
}

/// The decision about the primary, and the primaries that lost it (split brain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arbitration {
    pub primary: Primary,
    /// Primaries on a timeline below the highest one: an old primary that came back
    /// without being rewound (a host reboot with PostgreSQL enabled at boot, say).
    pub stale: Vec<(Node, u32)>,
}

impl Arbitration {
    /// One line: "node 2 on timeline 2" or why there is none; with the stale primaries.
    pub fn describe(&self) -> String {
        let mut text = match &self.primary {
            Primary::Legit { node, timeline } => format!("node {} on timeline {timeline}", node.id()),
            Primary::None => "none reachable".to_string(),
            Primary::Ambiguous { nodes, timeline } => {
                format!("ambiguous: nodes {} are all primary on timeline {timeline}", join(nodes))
            }
            Primary::Fenced { node, timeline, recorded } => format!(
                "none: node {} is a primary on timeline {timeline}, below timeline {} recorded with the route to \
                 node {}",
                node.id(),
                recorded.timeline,
                recorded.route.node.id()
            ),
            Primary::Unconfirmed { node, timeline, unknown } => format!(
                "unconfirmed: node {} is a primary on timeline {timeline}, but node {} cannot be asked and may be on \
                 a higher one",
                node.id(),
                join(unknown)
            ),
        };
        if !self.stale.is_empty() {
            let stale: Vec<String> =
                self.stale.iter().map(|(n, t)| format!("node {} on timeline {t}", n.id())).collect();
            text.push_str(&format!("; split brain: stale primary {}", stale.join(", ")));
        }
        text
    }
}

/// The legitimate primary: the node not in recovery on the highest timeline, unless two
/// share it, or it is below the timeline of the route last applied (`record`), or it is
/// on that timeline, not where the route points, and a node that may be above it cannot
/// be asked (one that refuses connections serves nobody: it counts as asked).
pub fn arbitrate(view: &View, record: Option<Record>) -> Arbitration {
    let highest = view.primaries().map(|(_, t)| t).max();
    let Some(highest) = highest else {
        return Arbitration { primary: Primary::None, stale: Vec::new() };
    };
    let top: Vec<Node> = view.primaries().filter(|(_, t)| *t == highest).map(|(n, _)| n).collect();
    let stale = view.primaries().filter(|(_, t)| *t < highest).collect();
    let primary = match top[..] {
        [node] => {
            let unknown: Vec<Node> = view
                .nodes
                .iter()
                .filter(|(n, a)| *n != node && matches!(a, Answer::Silent(_) | Answer::Rejected(_)))
                .map(|(n, _)| *n)
                .collect();
            match record {
                Some(recorded) if highest < recorded.timeline => Primary::Fenced { node, timeline: highest, recorded },
                Some(recorded)
                    if highest == recorded.timeline
                        && recorded.route != Route::new(node, Open::All)
                        && !unknown.is_empty() =>
                {
                    Primary::Unconfirmed { node, timeline: highest, unknown }
                }
                _ => Primary::Legit { node, timeline: highest },
            }
        }
        _ => Primary::Ambiguous { nodes: top, timeline: highest },
    };
    Arbitration { primary, stale }
}

pub fn join(nodes: &[Node]) -> String {
    nodes.iter().map(|n| n.id().to_string()).collect::<Vec<_>>().join(" and ")
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::core::config::tests::node;

    pub fn primary(timeline: u32) -> Answer {
        Answer::Up(NodeState { role: Role::Primary, timeline, lsn: Lsn(0x300_0000), slot: None })
    }
    pub fn standby(timeline: u32) -> Answer {
        Answer::Up(NodeState { role: Role::Standby, timeline, lsn: Lsn(0x300_0000), slot: None })
    }
    pub fn view(nodes: &[(u32, Answer)]) -> View {
        View { nodes: nodes.iter().map(|(id, a)| (node(*id), a.clone())).collect() }
    }
    fn n(id: u32) -> Node {
        node(id)
    }

    #[test]
    fn lsn_prints_and_reads_as_postgres_does() {
        assert_eq!(Lsn(0x1_0000_0060).to_string(), "1/60");
        assert_eq!(Lsn(0x0300_0028).to_string(), "0/3000028");
        assert_eq!("0/3000028".parse(), Ok(Lsn(0x0300_0028)));
        assert!("3000028".parse::<Lsn>().is_err() && "0/1/2".parse::<Lsn>().is_err());
        assert_eq!(Lsn(5).since(Lsn(7)), 0);
    }

    /// answers, the record -> the legitimate primary and the stale ones.
    #[test]
    #[rustfmt::skip]
    fn arbitration_table() {
        let down = || Answer::Down("connection refused".into());
        let silent = || Answer::Silent("timeout".into());
        let rec = |id, open, timeline| Some(Record { route: Route::new(n(id), open), timeline });
        let cases = [
            // the usual: one primary
            (view(&[(1, primary(1)), (2, standby(1))]),    None,                   Primary::Legit { node: n(1), timeline: 1 }, vec![]),
            (view(&[(1, down()), (2, primary(2))]),         rec(1, Open::All, 1),   Primary::Legit { node: n(2), timeline: 2 }, vec![]),
            // the old primary came back on its old timeline: the higher timeline wins
            (view(&[(1, primary(1)), (2, primary(2))]),    rec(2, Open::All, 2),   Primary::Legit { node: n(2), timeline: 2 }, vec![(n(1), 1)]),
            (view(&[(1, primary(3)), (2, primary(2))]),    rec(2, Open::All, 2),   Primary::Legit { node: n(1), timeline: 3 }, vec![(n(2), 2)]),
            // nobody: down, silent, or standbys only
            (view(&[(1, down()), (2, standby(2))]),         rec(2, Open::All, 2),   Primary::None, vec![]),
            (view(&[(1, silent()), (2, silent())]),         None,                   Primary::None, vec![]),
            // two on the same highest timeline: nobody can tell
            (view(&[(1, primary(2)), (2, primary(2)), (3, primary(1))]), None,
                Primary::Ambiguous { nodes: vec![n(1), n(2)], timeline: 2 }, vec![(n(3), 1)]),
            // the true primary (timeline 2) unreachable from here while a stale one answers
            (view(&[(1, primary(1)), (2, silent())]),      rec(2, Open::All, 2),
                Primary::Fenced { node: n(1), timeline: 1, recorded: Record { route: Route::new(n(2), Open::All), timeline: 2 } }, vec![]),
            // the routed primary answers while another node does not: it stays
            (view(&[(1, primary(1)), (2, silent())]),      rec(1, Open::All, 1),   Primary::Legit { node: n(1), timeline: 1 }, vec![]),
            // it went down (the application port closed), and is back while another node
            // cannot be asked: that one may have been promoted meanwhile
            (view(&[(1, primary(1)), (2, silent())]),      rec(1, Open::Barman, 1),
                Primary::Unconfirmed { node: n(1), timeline: 1, unknown: vec![n(2)] }, vec![]),
            (view(&[(1, primary(1)), (2, standby(1))]),    rec(1, Open::Barman, 1), Primary::Legit { node: n(1), timeline: 1 }, vec![]),
            (view(&[(1, primary(1)), (2, down())]),        rec(1, Open::Barman, 1), Primary::Legit { node: n(1), timeline: 1 }, vec![]),
            // a promotion seen: a higher timeline needs nobody's confirmation
            (view(&[(1, silent()), (2, primary(2))]),      rec(1, Open::Barman, 1), Primary::Legit { node: n(2), timeline: 2 }, vec![]),
            // no record yet, or a record from before timelines were recorded
            (view(&[(1, primary(1)), (2, silent())]),      None,                   Primary::Legit { node: n(1), timeline: 1 }, vec![]),
            (view(&[(1, primary(1)), (2, silent())]),      rec(2, Open::All, 0),   Primary::Legit { node: n(1), timeline: 1 }, vec![]),
        ];
        for (view, record, primary, stale) in cases {
            let got = arbitrate(&view, record);
            assert_eq!(got, Arbitration { primary, stale }, "{} (record {record:?})", view.describe());
        }
    }

    #[test]
    fn describes_the_split_brain() {
        let a = arbitrate(&view(&[(1, primary(1)), (2, primary(2))]), None);
        assert_eq!(a.describe(), "node 2 on timeline 2; split brain: stale primary node 1 on timeline 1");
        let routed = Record { route: Route::new(n(2), Open::All), timeline: 2 };
        let a = arbitrate(&view(&[(1, primary(1)), (2, Answer::Silent("timeout".into()))]), Some(routed));
        assert_eq!(
            a.describe(),
            "none: node 1 is a primary on timeline 1, below timeline 2 recorded with the route to node 2"
        );
    }
}
