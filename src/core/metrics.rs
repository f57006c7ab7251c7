//! What `watch` exports to Prometheus: the figures it keeps from pass to pass (`Tracker`),
//! the counts of repmgr's events (`EventCounts`, kept by the `event` processes in a small
//! file), and the text exposition format they are served in (`render`). Pure: the clock
//! readings come in as numbers, the serving and the file are adapters. What is kept and
//! how it is rendered change together, so they share this file.

use std::collections::BTreeMap;
use std::fmt::{self, Write};
use std::time::Duration;

use crate::core::config::NodeId;
use crate::core::ruleset::{Open, Record, Routing};
use crate::core::view::{Arbitration, Primary, Role, View};

/// Upper bounds (seconds) of the switch latency histogram's buckets: a switch that
/// follows a promotion takes tens to hundreds of milliseconds; one that waits for barman's
/// confirmation (`open_app = "after_archive"`) or for a failed step's retry, seconds to
/// minutes.
pub const LATENCY_BUCKETS: [f64; 12] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// A Prometheus histogram with fixed buckets.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    /// Observations at or below each bound of `LATENCY_BUCKETS` (not cumulative here).
    pub counts: [u64; LATENCY_BUCKETS.len()],
    pub sum: f64,
    pub count: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram { counts: [0; LATENCY_BUCKETS.len()], sum: 0.0, count: 0 }
    }
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        if let Some(bucket) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.counts[bucket] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }
}

/// One node as the last pass saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSample {
    pub id: NodeId,
    /// It answered within the deadline.
    pub up: bool,
    /// It answered as a primary (not in recovery), legitimate or not.
    pub primary: bool,
    /// WAL barman's slot there keeps behind the node's position, in bytes.
    pub slot_lag_bytes: Option<u64>,
}

/// What the last pass saw, and what every pass since the start added up to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// When watch started (unix milliseconds).
    pub started_ms: u64,
    pub passes: u64,
    /// When the last pass ended (unix milliseconds), and how long it took.
    pub last_pass_ms: u64,
    pub last_pass: Duration,
    /// The legitimate primary and its timeline.
    pub primary: Option<(NodeId, u32)>,
    /// "legit", "none", "ambiguous", "fenced" or "unconfirmed" (see `view::Primary`).
    pub primary_state: &'static str,
    /// Primaries on a timeline below the highest one.
    pub stale_primaries: usize,
    /// Passes that saw more than one primary (stale or ambiguous).
    pub split_brain_passes: u64,
    /// The route the rules hold after the pass, if repmgr-nat recognises them.
    pub route: Option<(NodeId, Open)>,
    /// The timeline recorded with the route.
    pub route_timeline: Option<u32>,
    pub nodes: Vec<NodeSample>,
    /// barman's walsender streams from the slot on the node the rules route to; none on a
    /// proxy without barman (the series is left out: an alert on it would always fire).
    pub barman_streaming: Option<bool>,
    /// Times the rules moved to another node, whoever moved them.
    pub switches: u64,
    pub switch_latency: Histogram,
    /// Plans watch carried out, by result.
    pub actions_ok: u64,
    pub actions_failed: u64,
}

/// What one pass saw, for `Tracker::pass`.
pub struct Pass<'a> {
    /// When the pass began and ended, on a monotonic clock (milliseconds).
    pub began_mono_ms: u64,
    pub ended_mono_ms: u64,
    /// When it ended, as unix milliseconds.
    pub ended_ms: u64,
    pub view: &'a View,
    pub arbitration: &'a Arbitration,
    /// The rules as they stand at the end of the pass (after its action, if any).
    pub routing: &'a Routing,
    pub recorded: Option<Record>,
    /// This proxy runs barman (a `[barman]` section).
    pub barman: bool,
}

/// Keeps the figures from pass to pass.
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    snapshot: Snapshot,
    /// Since when (monotonic milliseconds) the application port has not forwarded to a
    /// legitimate primary that answers (the routed primary gone, or another one
    /// legitimate), and the node it routed to then: set by the first pass that sees it,
    /// cleared by the first that sees the port forward to the legitimate primary, which is
    /// the switch's latency when that is another node. Events may switch before any pass
    /// sees a new primary: the outage began when the old one stopped answering.
    outage_since: Option<(u64, Option<NodeId>)>,
    /// The node the rules routed to after the pass before.
    routed: Option<Option<NodeId>>,
}

impl Tracker {
    pub fn new(started_ms: u64) -> Tracker {
        Tracker {
            snapshot: Snapshot { started_ms, primary_state: "none", ..Snapshot::default() },
            ..Tracker::default()
        }
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// A plan watch carried out, and whether it succeeded.
    pub fn acted(&mut self, ok: bool) {
        if ok {
            self.snapshot.actions_ok += 1;
        } else {
            self.snapshot.actions_failed += 1;
        }
    }

    pub fn pass(&mut self, pass: Pass) {
        let s = &mut self.snapshot;
        s.passes += 1;
        s.last_pass_ms = pass.ended_ms;
        s.last_pass = Duration::from_millis(pass.ended_mono_ms.saturating_sub(pass.began_mono_ms));
        let (primary, state) = match &pass.arbitration.primary {
            Primary::Legit { node, timeline } => (Some((node.id(), *timeline)), "legit"),
            Primary::None => (None, "none"),
            Primary::Ambiguous { .. } => (None, "ambiguous"),
            Primary::Fenced { .. } => (None, "fenced"),
            Primary::Unconfirmed { .. } => (None, "unconfirmed"),
        };
        s.primary = primary;
        s.primary_state = state;
        s.stale_primaries = pass.arbitration.stale.len();
        if s.stale_primaries > 0 || state == "ambiguous" {
            s.split_brain_passes += 1;
        }
        let route = match pass.routing {
            Routing::To(route) => Some((route.node.id(), route.open)),
            Routing::Nothing | Routing::Unrecognised => None,
        };
        s.route = route;
        s.route_timeline =
            pass.recorded.filter(|r| Some(r.route.node.id()) == route.map(|(n, _)| n)).map(|r| r.timeline);
        s.nodes = pass
            .view
            .nodes
            .iter()
            .map(|(node, answer)| {
                let state = answer.state();
                NodeSample {
                    id: node.id(),
                    up: state.is_some(),
                    primary: state.is_some_and(|s| s.role == Role::Primary),
                    slot_lag_bytes: state.and_then(|s| Some(s.lsn.since(s.slot?.restart_lsn?))),
                }
            })
            .collect();
        s.barman_streaming = pass.barman.then(|| match pass.routing {
            Routing::To(route) => {
                pass.view.state(route.node).and_then(|s| s.slot).is_some_and(|s| s.active_pid.is_some())
            }
            _ => false,
        });

        let routed = route.map(|(node, _)| node);
        if self.routed.is_some_and(|before| before != routed) && routed.is_some() {
            s.switches += 1;
        }
        self.routed = Some(routed);

        match primary {
            Some((node, _)) if route == Some((node, Open::All)) => {
                if let Some((since, from)) = self.outage_since.take()
                    && from != Some(node)
                {
                    s.switch_latency.observe(pass.ended_mono_ms.saturating_sub(since) as f64 / 1000.0);
                }
            }
            _ => {
                self.outage_since.get_or_insert((pass.began_mono_ms, routed));
            }
        }
    }
}

/// How many of repmgr's events were handled, by event name and outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventCounts(pub BTreeMap<(String, String), u64>);

impl EventCounts {
    /// The most lines the file keeps: repmgr has a few dozen event names and an event five
    /// outcomes; anything past this is not counted rather than grow without bound.
    pub const MAX_LINES: usize = 256;

    /// `<event> <outcome> <count>` lines; anything else (a line cut short) is skipped.
    pub fn parse(text: &str) -> EventCounts {
        let counts = text
            .lines()
            .filter_map(|line| {
                let mut words = line.split(' ');
                let (event, outcome, count) = (words.next()?, words.next()?, words.next()?.parse().ok()?);
                let ok = words.next().is_none() && label_word(event) && label_word(outcome);
                ok.then(|| ((event.to_string(), outcome.to_string()), count))
            })
            .take(Self::MAX_LINES)
            .collect();
        EventCounts(counts)
    }

    pub fn render(&self) -> String {
        self.0.iter().map(|((event, outcome), n)| format!("{event} {outcome} {n}\n")).collect()
    }

    /// Counts one event; false when it cannot be (a bad name, or the file is full).
    pub fn count(&mut self, event: &str, outcome: &str) -> bool {
        if !label_word(event) || !label_word(outcome) {
            return false;
        }
        let key = (event.to_string(), outcome.to_string());
        if !self.0.contains_key(&key) && self.0.len() >= Self::MAX_LINES {
            return false;
        }
        *self.0.entry(key).or_default() += 1;
        true
    }
}

/// A word the counts file and a label value take: 1-64 of `a-z 0-9 _`, as repmgr's event
/// names are.
fn label_word(word: &str) -> bool {
    crate::core::event::well_formed_name(word)
}

/// The Prometheus text exposition format (version 0.0.4) of everything watch knows, each
/// series labelled with the instance it is about (`cluster="default"` on a host with one).
pub fn render(s: &Snapshot, events: &EventCounts, version: &str, cluster: &str) -> String {
    let mut out = Out { text: String::new(), cluster: cluster.to_string() };
    out.family("build_info", "gauge", "The version of repmgr-nat serving these metrics; always 1.");
    out.sample("build_info", &[("version", version)], 1);
    out.one("watch_start_time_seconds", "gauge", "When watch started, in unix time.", Millis(s.started_ms));
    out.one("passes_total", "counter", "Passes watch made.", s.passes);
    out.one("last_pass_timestamp_seconds", "gauge", "When the last pass ended, in unix time.", Millis(s.last_pass_ms));
    out.one("last_pass_duration_seconds", "gauge", "How long the last pass took.", s.last_pass.as_secs_f64());

    out.one(
        "primary_node_id",
        "gauge",
        "The legitimate primary (not in recovery, on the highest timeline): its node id, 0 when there is none.",
        s.primary.map_or(0, |(node, _)| u32::from(node)),
    );
    out.one(
        "primary_timeline",
        "gauge",
        "The legitimate primary's timeline, 0 when there is none.",
        s.primary.map_or(0, |(_, timeline)| timeline),
    );
    out.family(
        "primary_state",
        "gauge",
        "Whether there is a legitimate primary (legit), or why not: none answers as primary (none), two share the \
         highest timeline (ambiguous), the highest is below the recorded timeline (fenced), a primary back on the recorded timeline while a node cannot be asked (unconfirmed). 1 for the current state.",
    );
    for state in ["legit", "none", "ambiguous", "fenced", "unconfirmed"] {
        out.sample("primary_state", &[("state", state)], flag(s.primary_state == state));
    }
    out.one(
        "stale_primaries",
        "gauge",
        "Primaries on a timeline below the highest one (split brain: an old primary back without a rewind).",
        s.stale_primaries,
    );
    out.one(
        "split_brain_passes_total",
        "counter",
        "Passes that saw more than one primary (stale or ambiguous).",
        s.split_brain_passes,
    );

    out.one(
        "route_node_id",
        "gauge",
        "The node the NAT rules route to, 0 when they route nowhere (or hold rules repmgr-nat would never write).",
        s.route.map_or(0, |(node, _)| u32::from(node)),
    );
    out.one(
        "route_timeline",
        "gauge",
        "The timeline recorded with the route, 0 when none is.",
        s.route_timeline.unwrap_or(0),
    );
    out.one(
        "route_app_open",
        "gauge",
        "1 when the application ports forward to the routed node, 0 when they hold or refuse connections.",
        flag(matches!(s.route, Some((_, Open::All)))),
    );

    out.family("node_up", "gauge", "1 when the node answered within postgres.connect_timeout, 0 when not.");
    for n in &s.nodes {
        out.sample("node_up", &[("node", &n.id.to_string())], flag(n.up));
    }
    out.family("node_primary", "gauge", "1 when the node answered as a primary (not in recovery), 0 when not.");
    for n in &s.nodes {
        out.sample("node_primary", &[("node", &n.id.to_string())], flag(n.primary));
    }
    out.family(
        "slot_lag_bytes",
        "gauge",
        "WAL barman's replication slot keeps behind the node's position (a primary's current, a standby's replayed).",
    );
    for n in &s.nodes {
        if let Some(lag) = n.slot_lag_bytes {
            out.sample("slot_lag_bytes", &[("node", &n.id.to_string())], lag);
        }
    }
    if let Some(streaming) = s.barman_streaming {
        out.one(
            "barman_streaming",
            "gauge",
            "1 when barman's walsender streams from the slot on the routed node, 0 when not.",
            flag(streaming),
        );
    }

    out.one(
        "switches_total",
        "counter",
        "Times the rules moved to another node (by watch, an event, setup or by hand).",
        s.switches,
    );
    out.family(
        "switch_latency_seconds",
        "histogram",
        "From the first pass that saw the application ports not forwarding to an answering legitimate primary to \
         the first that saw them forward to another one.",
    );
    let mut cumulative = 0;
    for (bound, n) in LATENCY_BUCKETS.iter().zip(s.switch_latency.counts) {
        cumulative += n;
        out.sample("switch_latency_seconds_bucket", &[("le", &bound.to_string())], cumulative);
    }
    let h = &s.switch_latency;
    out.sample("switch_latency_seconds_bucket", &[("le", "+Inf")], h.count);
    out.sample("switch_latency_seconds_sum", &[], h.sum);
    out.sample("switch_latency_seconds_count", &[], h.count);

    out.family("actions_total", "counter", "Plans watch carried out, by result.");
    out.sample("actions_total", &[("result", "ok")], s.actions_ok);
    out.sample("actions_total", &[("result", "failed")], s.actions_failed);
    out.family(
        "events_total",
        "counter",
        "repmgr events handled (repmgr-nat event), by event and outcome: ok, ignored, refused, failed, bad_input.",
    );
    for ((event, outcome), n) in &events.0 {
        out.sample("events_total", &[("event", event), ("outcome", outcome)], n);
    }
    out.text
}

fn flag(on: bool) -> u8 {
    u8::from(on)
}

/// Unix milliseconds as seconds, exactly: "1763700001.27".
struct Millis(u64);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, ms) = (self.0 / 1000, self.0 % 1000);
        if ms == 0 { write!(f, "{secs}") } else { write!(f, "{secs}.{}", format!("{ms:03}").trim_end_matches('0')) }
    }
}

struct Out {
    text: String,
    cluster: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP repmgr_nat_{name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.text, "# TYPE repmgr_nat_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl fmt::Display) {
        let cluster = [("cluster", self.cluster.as_str())];
        let labels: Vec<String> = cluster
            .iter()
            .chain(labels)
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")))
            .collect();
        let _ = writeln!(self.text, "repmgr_nat_{name}{{{}}} {value}", labels.join(","));
    }

    /// A family of one sample without labels.
    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::tests::node;
    use crate::core::ruleset::Route;
    use crate::core::view::tests::{primary, standby, view};
    use crate::core::view::{Answer, Lsn, NodeState, Slot, arbitrate};

    fn pass_at(t: &mut Tracker, began: u64, view: &View, routing: Routing) {
        pass_of(t, began, view, routing, true)
    }

    fn pass_of(t: &mut Tracker, began: u64, view: &View, routing: Routing, barman: bool) {
        let arbitration = arbitrate(view, None);
        let recorded = match routing {
            Routing::To(route) => Some(Record { route, timeline: 2 }),
            _ => None,
        };
        t.pass(Pass {
            began_mono_ms: began,
            ended_mono_ms: began + 20,
            ended_ms: 1_763_700_000_000 + began + 20,
            view,
            arbitration: &arbitration,
            routing: &routing,
            recorded,
            barman,
        });
    }

    #[test]
    fn a_proxy_without_barman_has_no_barman_series() {
        let v = view(&[(1, primary(1)), (2, standby(1))]);
        for (barman, shown) in [(true, true), (false, false)] {
            let mut t = Tracker::new(0);
            pass_of(&mut t, 0, &v, to(1, Open::All), barman);
            let text = render(t.snapshot(), &EventCounts::default(), "1.0.0", "default");
            assert_eq!(text.contains("repmgr_nat_barman_streaming"), shown, "{text}");
        }
    }

    fn to(id: u32, open: Open) -> Routing {
        Routing::To(Route::new(node(id), open))
    }

    #[test]
    fn a_failover_is_one_switch_with_its_latency() {
        let mut t = Tracker::new(1_763_700_000_000);
        let before = view(&[(1, primary(1)), (2, standby(1))]);
        pass_at(&mut t, 0, &before, to(1, Open::All));
        assert_eq!(t.snapshot().switches, 0);
        // node 2 promoted: two passes see the ports still on node 1, the third sees them moved
        let after = view(&[(1, Answer::Down("connection refused".into())), (2, primary(2))]);
        pass_at(&mut t, 1_000, &after, to(1, Open::All));
        pass_at(&mut t, 1_050, &after, to(2, Open::Barman));
        pass_at(&mut t, 1_100, &after, to(2, Open::All));
        pass_at(&mut t, 1_350, &after, to(2, Open::All));
        let s = t.snapshot();
        assert_eq!(s.switches, 1, "barman's port first, then the application's: one switch");
        assert_eq!(s.switch_latency.count, 1);
        assert!((s.switch_latency.sum - 0.12).abs() < 1e-9, "{}", s.switch_latency.sum);
        assert_eq!(s.switch_latency.counts[2], 1, "in the 0.25 s bucket");
        assert_eq!(s.primary, Some((NodeId::new(2), 2)));
        assert_eq!(s.passes, 5);
    }

    #[test]
    fn a_switch_an_event_made_counts_from_when_the_old_primary_stopped_answering() {
        let mut t = Tracker::new(0);
        let before = view(&[(1, primary(1)), (2, standby(1))]);
        pass_at(&mut t, 0, &before, to(1, Open::All));
        let down = view(&[(1, Answer::Down("connection refused".into())), (2, standby(1))]);
        pass_at(&mut t, 250, &down, to(1, Open::All));
        // the event moved the rules between two passes: no pass saw node 2 unserved
        let after = view(&[(1, Answer::Down("connection refused".into())), (2, primary(2))]);
        pass_at(&mut t, 2_000, &after, to(2, Open::All));
        let s = t.snapshot();
        assert_eq!((s.switches, s.switch_latency.count), (1, 1));
        assert!((s.switch_latency.sum - 1.77).abs() < 1e-9, "{}", s.switch_latency.sum);
    }

    #[test]
    fn a_primary_back_where_the_rules_are_is_no_switch() {
        let mut t = Tracker::new(0);
        let up = view(&[(1, primary(1)), (2, standby(1))]);
        pass_at(&mut t, 0, &up, to(1, Open::All));
        let down = view(&[(1, Answer::Silent("timeout".into())), (2, standby(1))]);
        pass_at(&mut t, 250, &down, to(1, Open::All));
        pass_at(&mut t, 500, &up, to(1, Open::All));
        assert_eq!((t.snapshot().switches, t.snapshot().switch_latency.count), (0, 0));
    }

    #[test]
    fn no_latency_without_a_primary_to_switch_to() {
        let mut t = Tracker::new(0);
        let gone = view(&[(1, Answer::Silent("timeout".into())), (2, standby(1))]);
        pass_at(&mut t, 0, &gone, to(1, Open::All));
        let split = view(&[(1, primary(1)), (2, primary(1))]);
        pass_at(&mut t, 100, &split, to(1, Open::All));
        let s = t.snapshot();
        assert_eq!(s.switch_latency.count, 0);
        assert_eq!((s.primary_state, s.split_brain_passes), ("ambiguous", 1));
    }

    fn golden_snapshot() -> Snapshot {
        let mut t = Tracker::new(1_763_700_000_000);
        let lagging = |role, timeline, lsn, active_pid| {
            Answer::Up(NodeState {
                role,
                timeline,
                lsn: Lsn(lsn),
                slot: Some(Slot { active_pid, restart_lsn: Some(Lsn(0x300_0000)) }),
            })
        };
        let v = view(&[
            (1, lagging(Role::Standby, 2, 0x300_1000, None)),
            (2, lagging(Role::Primary, 2, 0x300_0060, Some(77))),
            (3, Answer::Silent("no answer within 3 s".into())),
        ]);
        pass_at(&mut t, 0, &view(&[(1, primary(1)), (2, standby(1)), (3, standby(1))]), to(1, Open::All));
        pass_at(&mut t, 1_000, &v, to(1, Open::All));
        pass_at(&mut t, 1_250, &v, to(2, Open::All));
        t.acted(true);
        t.snapshot().clone()
    }

    #[test]
    fn renders_the_text_format() {
        let mut events = EventCounts::default();
        assert!(events.count("standby_promote", "ok"));
        assert!(events.count("repmgrd_failover_follow", "ignored"));
        assert!(events.count("standby_promote", "ok"));
        let text = render(&golden_snapshot(), &events, "0.1.0", "default");
        let expected = r#"# HELP repmgr_nat_build_info The version of repmgr-nat serving these metrics; always 1.
# TYPE repmgr_nat_build_info gauge
repmgr_nat_build_info{cluster="default",version="0.1.0"} 1
# HELP repmgr_nat_watch_start_time_seconds When watch started, in unix time.
# TYPE repmgr_nat_watch_start_time_seconds gauge
repmgr_nat_watch_start_time_seconds{cluster="default"} 1763700000
# HELP repmgr_nat_passes_total Passes watch made.
# TYPE repmgr_nat_passes_total counter
repmgr_nat_passes_total{cluster="default"} 3
# HELP repmgr_nat_last_pass_timestamp_seconds When the last pass ended, in unix time.
# TYPE repmgr_nat_last_pass_timestamp_seconds gauge
repmgr_nat_last_pass_timestamp_seconds{cluster="default"} 1763700001.27
# HELP repmgr_nat_last_pass_duration_seconds How long the last pass took.
# TYPE repmgr_nat_last_pass_duration_seconds gauge
repmgr_nat_last_pass_duration_seconds{cluster="default"} 0.02
# HELP repmgr_nat_primary_node_id The legitimate primary (not in recovery, on the highest timeline): its node id, 0 when there is none.
# TYPE repmgr_nat_primary_node_id gauge
repmgr_nat_primary_node_id{cluster="default"} 2
# HELP repmgr_nat_primary_timeline The legitimate primary's timeline, 0 when there is none.
# TYPE repmgr_nat_primary_timeline gauge
repmgr_nat_primary_timeline{cluster="default"} 2
# HELP repmgr_nat_primary_state Whether there is a legitimate primary (legit), or why not: none answers as primary (none), two share the highest timeline (ambiguous), the highest is below the recorded timeline (fenced), a primary back on the recorded timeline while a node cannot be asked (unconfirmed). 1 for the current state.
# TYPE repmgr_nat_primary_state gauge
repmgr_nat_primary_state{cluster="default",state="legit"} 1
repmgr_nat_primary_state{cluster="default",state="none"} 0
repmgr_nat_primary_state{cluster="default",state="ambiguous"} 0
repmgr_nat_primary_state{cluster="default",state="fenced"} 0
repmgr_nat_primary_state{cluster="default",state="unconfirmed"} 0
# HELP repmgr_nat_stale_primaries Primaries on a timeline below the highest one (split brain: an old primary back without a rewind).
# TYPE repmgr_nat_stale_primaries gauge
repmgr_nat_stale_primaries{cluster="default"} 0
# HELP repmgr_nat_split_brain_passes_total Passes that saw more than one primary (stale or ambiguous).
# TYPE repmgr_nat_split_brain_passes_total counter
repmgr_nat_split_brain_passes_total{cluster="default"} 0
# HELP repmgr_nat_route_node_id The node the NAT rules route to, 0 when they route nowhere (or hold rules repmgr-nat would never write).
# TYPE repmgr_nat_route_node_id gauge
repmgr_nat_route_node_id{cluster="default"} 2
# HELP repmgr_nat_route_timeline The timeline recorded with the route, 0 when none is.
# TYPE repmgr_nat_route_timeline gauge
repmgr_nat_route_timeline{cluster="default"} 2
# HELP repmgr_nat_route_app_open 1 when the application ports forward to the routed node, 0 when they hold or refuse connections.
# TYPE repmgr_nat_route_app_open gauge
repmgr_nat_route_app_open{cluster="default"} 1
# HELP repmgr_nat_node_up 1 when the node answered within postgres.connect_timeout, 0 when not.
# TYPE repmgr_nat_node_up gauge
repmgr_nat_node_up{cluster="default",node="1"} 1
repmgr_nat_node_up{cluster="default",node="2"} 1
repmgr_nat_node_up{cluster="default",node="3"} 0
# HELP repmgr_nat_node_primary 1 when the node answered as a primary (not in recovery), 0 when not.
# TYPE repmgr_nat_node_primary gauge
repmgr_nat_node_primary{cluster="default",node="1"} 0
repmgr_nat_node_primary{cluster="default",node="2"} 1
repmgr_nat_node_primary{cluster="default",node="3"} 0
# HELP repmgr_nat_slot_lag_bytes WAL barman's replication slot keeps behind the node's position (a primary's current, a standby's replayed).
# TYPE repmgr_nat_slot_lag_bytes gauge
repmgr_nat_slot_lag_bytes{cluster="default",node="1"} 4096
repmgr_nat_slot_lag_bytes{cluster="default",node="2"} 96
# HELP repmgr_nat_barman_streaming 1 when barman's walsender streams from the slot on the routed node, 0 when not.
# TYPE repmgr_nat_barman_streaming gauge
repmgr_nat_barman_streaming{cluster="default"} 1
# HELP repmgr_nat_switches_total Times the rules moved to another node (by watch, an event, setup or by hand).
# TYPE repmgr_nat_switches_total counter
repmgr_nat_switches_total{cluster="default"} 1
# HELP repmgr_nat_switch_latency_seconds From the first pass that saw the application ports not forwarding to an answering legitimate primary to the first that saw them forward to another one.
# TYPE repmgr_nat_switch_latency_seconds histogram
repmgr_nat_switch_latency_seconds_bucket{cluster="default",le="0.05"} 0
repmgr_nat_switch_latency_seconds_bucket{cluster="default",le="0.1"} 0
repmgr_nat_switch_latency_seconds_bucket{cluster="default",le="0.25"} 0
repmgr_nat_switch_latency_seconds_bucket{cluster="default",le="0.5"} 1
repmgr_nat_switch_latency_seconds_bucket{cluster="default",le="1"} 1
repmgr_nat_switch_latency_seconds_bucket{cluster="default",le="2.5"} 1
repmgr_nat_switch_latency_seconds_bucket{cluster="default",le="5"} 1
repmgr_nat_switch_latency_seconds_bucket{cluster="default",le="10"} 1
repmgr_nat_switch_latency_seconds_bucket{cluster="default",le="30"} 1
repmgr_nat_switch_latency_seconds_bucket{cluster="default",le="60"} 1
repmgr_nat_switch_latency_seconds_bucket{cluster="default",le="120"} 1
repmgr_nat_switch_latency_seconds_bucket{cluster="default",le="300"} 1
repmgr_nat_switch_latency_seconds_bucket{cluster="default",le="+Inf"} 1
repmgr_nat_switch_latency_seconds_sum{cluster="default"} 0.27
repmgr_nat_switch_latency_seconds_count{cluster="default"} 1
# HELP repmgr_nat_actions_total Plans watch carried out, by result.
# TYPE repmgr_nat_actions_total counter
repmgr_nat_actions_total{cluster="default",result="ok"} 1
repmgr_nat_actions_total{cluster="default",result="failed"} 0
# HELP repmgr_nat_events_total repmgr events handled (repmgr-nat event), by event and outcome: ok, ignored, refused, failed, bad_input.
# TYPE repmgr_nat_events_total counter
repmgr_nat_events_total{cluster="default",event="repmgrd_failover_follow",outcome="ignored"} 1
repmgr_nat_events_total{cluster="default",event="standby_promote",outcome="ok"} 2
"#;
        assert_eq!(text, expected);
    }

    /// The alerting rules the package ships, and the series of their promtool scenarios,
    /// name only families and `state` values watch renders: a renamed metric would leave an
    /// alert that never fires, and a scenario that proves nothing.
    #[test]
    fn the_alerting_rules_name_only_what_watch_exports() {
        let mut events = EventCounts::default();
        events.count("standby_promote", "ok");
        let text = render(&golden_snapshot(), &events, "0.1.0", "default");
        let families: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/alerts");
        let mut files = vec![(
            "packaging/repmgr-nat.rules.yml".to_string(),
            include_str!("../../packaging/repmgr-nat.rules.yml").to_string(),
        )];
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yml") {
                let name = format!("tests/alerts/{}", path.file_name().unwrap().to_string_lossy());
                files.push((name, std::fs::read_to_string(&path).unwrap()));
            }
        }
        assert!(files.len() > 1, "no scenarios in {dir}");
        for (file, yaml) in &files {
            let words = yaml.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            let named: Vec<&str> = words.filter(|w| w.starts_with("repmgr_nat_")).collect();
            assert!(!named.is_empty(), "{file} names no metric");
            for name in named {
                assert!(families.contains(&name), "{file} names {name}, which watch does not export");
            }
            for states in yaml.split("state=").skip(1) {
                let states = states.trim_start_matches('~').trim_start_matches('"');
                for state in states[..states.find('"').unwrap()].split('|') {
                    let sample = format!("repmgr_nat_primary_state{{cluster=\"default\",state=\"{state}\"}}");
                    assert!(text.contains(&sample), "{file} names state {state:?}, which watch never renders");
                }
            }
        }
    }

    #[test]
    fn nothing_seen_yet_renders_zeros_and_no_nodes() {
        let text = render(&Tracker::new(0).snapshot().clone(), &EventCounts::default(), "0.1.0", "default");
        assert!(text.contains("\nrepmgr_nat_passes_total{cluster=\"default\"} 0\n"), "{text}");
        assert!(text.contains("\nrepmgr_nat_primary_state{cluster=\"default\",state=\"none\"} 1\n"), "{text}");
        assert!(!text.contains("repmgr_nat_node_up{"), "{text}");
        assert!(text.ends_with("# TYPE repmgr_nat_events_total counter\n"), "{text}");
    }

    #[test]
    fn the_event_counts_file_reads_what_it_wrote_and_skips_damage() {
        let mut counts = EventCounts::default();
        counts.count("standby_promote", "ok");
        counts.count("standby_promote", "refused");
        counts.count("standby_promote", "ok");
        let text = counts.render();
        assert_eq!(text, "standby_promote ok 2\nstandby_promote refused 1\n");
        assert_eq!(EventCounts::parse(&text), counts);
        let damaged = "standby_promote ok 2\nstandby_pro\nx\"} 1 ok 3\nnode_rejoin ok 1 extra\nnode_rejoin ignored 4";
        let parsed = EventCounts::parse(damaged);
        assert_eq!(parsed.0.len(), 2, "{parsed:?}");
        assert!(!counts.count("Bad-Name", "ok"), "only repmgr's event name characters");
    }

    #[test]
    fn the_event_counts_stay_bounded() {
        let mut counts = EventCounts::default();
        for i in 0..EventCounts::MAX_LINES {
            assert!(counts.count(&format!("event_{i}"), "ok"));
        }
        assert!(!counts.count("one_more", "ok"));
        assert!(counts.count("event_0", "ok"), "a known line still counts");
    }
}
