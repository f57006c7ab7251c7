//! `repmgr-nat status`: what each node says, who the legitimate primary is, what the
//! chains hold, what is recorded, and whether they agree. `assess` is pure; the command
//! gathers and prints.

use std::fmt::Write;

use serde::Serialize;

use crate::core::config::{Config, Instance, Node, NodeId};
use crate::core::plan::Situation;
use crate::core::ruleset::{self, Live, Open, Record, Route, Routing};
use crate::core::view::{Answer, Arbitration, Lsn, Primary, Role, View};
use crate::core::watch_json::WatchReport;

/// The version of the JSON document `status --json` prints; it grows when a field's
/// meaning changes, not when a field is added.
pub const JSON_VERSION: u32 = 1;

/// How long the application ports may miss a legitimate primary before this proxy host
/// says it cannot serve: a switch takes a fraction of a second, and keepalived must not
/// move the shared address for one.
pub const MISROUTED_GRACE_MS: u64 = 2000;

/// `can-serve`, for keepalived: whether this proxy host can serve the shared address. It
/// cannot while its watch does not run (no report, its process gone, or its last pass
/// older than a node's deadline and 2 s), nor while its application ports have not
/// forwarded to a legitimate primary for `MISROUTED_GRACE_MS`: it sees none (every node
/// down, or the new primary out of its reach) or routes elsewhere. When both proxy hosts
/// cannot serve, keepalived moves nothing (their priorities drop alike). Why not, in one
/// line.
pub fn can_serve(cfg: &Config, report: Option<&WatchReport>, running: bool, now_ms: u64) -> Result<(), String> {
    let Some(report) = report else {
        return Err(format!("watch has written nothing in {}: it does not run here", cfg.watch.dir.display()));
    };
    if !running {
        return Err(format!("watch (pid {}) is not running", report.pid));
    }
    let age = now_ms.saturating_sub(report.passed_ms);
    let limit = cfg.postgres.connect_timeout.as_millis() as u64 + 2000;
    if age > limit {
        return Err(format!("watch (pid {}) has not ended a pass for {age} ms (more than {limit} ms)", report.pid));
    }
    match report.misrouted_since_ms.map(|since| now_ms.saturating_sub(since)) {
        Some(missed) if missed > MISROUTED_GRACE_MS => Err(format!(
            "the application ports have not forwarded to a legitimate primary for {missed} ms (primary: {}; rules: {})",
            report.primary, report.rules
        )),
        _ => Ok(()),
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub version: u32,
    pub nodes: Vec<NodeReport>,
    /// The legitimate primary: not in recovery, on the highest timeline.
    pub primary: Option<NodeId>,
    pub timeline: Option<u32>,
    /// Primaries on a lower timeline (an old primary back without a rewind).
    pub stale_primaries: Vec<NodeId>,
    pub rules: RulesReport,
    /// The route root recorded at its last switch, with the timeline it was made for.
    pub recorded: Option<Record>,
    pub recorded_error: Option<String>,
    /// What `watch` saw last, if it runs (it does not make the report inconsistent).
    pub watch: Option<WatchReport>,
    /// `teardown` ran since the last `setup`.
    pub torn_down: bool,
    pub consistent: bool,
    /// Why not, one line each.
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct NodeReport {
    pub id: NodeId,
    pub address: String,
    /// up, down, silent (no answer within the deadline) or rejected (refused repmgr-nat)
    pub state: &'static str,
    pub reachable: bool,
    pub role: Option<Role>,
    pub timeline: Option<u32>,
    /// A primary's current WAL position, a standby's replayed one.
    pub lsn: Option<Lsn>,
    pub slot: bool,
    pub slot_active_pid: Option<i32>,
    pub slot_restart_lsn: Option<Lsn>,
    /// WAL the slot keeps behind `lsn`, in bytes.
    pub slot_lag_bytes: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RulesReport {
    pub readable: bool,
    pub error: Option<String>,
    /// Our chains exist, each built-in chain jumps to ours exactly once, the hold is right.
    pub chains_and_jumps: bool,
    /// The route the chains amount to, if repmgr-nat recognises them.
    pub route: Option<Route>,
    /// "node 2 ports all", "no rules" or "unrecognised rules".
    pub summary: String,
    /// The rules of our chains, as iptables-save prints them.
    pub lines: Vec<String>,
}

/// What `status` knows: one view of the nodes, the tables, the record, and what a running
/// `watch` reported last.
pub struct Seen<'a> {
    pub view: &'a View,
    pub live: Result<Live, String>,
    pub recorded: Result<Option<Record>, String>,
    pub watch: Option<WatchReport>,
    /// `teardown` ran since the last `setup`: no switch is made until `setup` runs.
    pub torn_down: bool,
    /// When it was seen (for the age of watch's report).
    pub now_ms: u64,
}

pub fn assess(cfg: &Config, seen: Seen) -> Report {
    let Seen { view, live, recorded, watch, torn_down, now_ms } = seen;
    let watching = watch.as_ref().is_some_and(|w| w.fresh(now_ms));
    let (recorded, recorded_error) = match recorded {
        Ok(r) => (r, None),
        Err(e) => (None, Some(e)),
    };
    // the observation a watch pass or an event decides from, built the same way
    let situation = match &live {
        Ok(live) => Situation::read(cfg, view, live, recorded),
        Err(_) => Situation::new(view, Routing::Unrecognised, false, recorded),
    };
    let arbitration = &situation.arbitration;
    let wanted = match arbitration.primary {
        Primary::Legit { node, timeline } => Some(Record { route: Route::new(node, Open::All), timeline }),
        _ => None,
    };
    let mut problems = primary_problems(arbitration);
    if torn_down {
        problems.push(
            "torn down (`repmgr-nat teardown`, which the package's removal runs): no switch is made until \
             `repmgr-nat setup` runs as root"
                .to_string(),
        );
    }
    problems.extend(slot_problems(cfg, view, wanted.map(|w| w.route.node), watch.as_ref().filter(|_| watching)));
    let rules = rules_report(&situation, &live);
    if let Ok(live) = &live {
        problems.extend(rules_problems(cfg, &situation, live, wanted, recorded_error.is_some()));
    } else if let Err(e) = &live {
        problems.push(format!("cannot read the rules: {e}"));
    }
    match (&recorded_error, wanted) {
        (Some(e), _) => problems.push(format!("cannot read the recorded route: {e}")),
        (None, Some(wanted)) if recorded != Some(wanted) => problems.push(format!(
            "the record says {}; the primary is node {} on timeline {}",
            recorded.map_or("nothing".to_string(), |r| r.to_string()),
            wanted.route.node.id(),
            wanted.timeline
        )),
        _ => {}
    }
    Report {
        version: JSON_VERSION,
        nodes: node_reports(view),
        primary: wanted.map(|w| w.route.node.id()),
        timeline: wanted.map(|w| w.timeline),
        stale_primaries: arbitration.stale.iter().map(|(n, _)| n.id()).collect(),
        rules,
        recorded,
        recorded_error,
        watch,
        torn_down,
        consistent: problems.is_empty(),
        problems,
    }
}

fn node_reports(view: &View) -> Vec<NodeReport> {
    view.nodes
        .iter()
        .map(|(node, answer)| {
            let state = answer.state();
            let slot = state.and_then(|s| s.slot);
            NodeReport {
                id: node.id(),
                address: node.addr().to_string(),
                state: answer.kind(),
                reachable: state.is_some(),
                role: state.map(|s| s.role),
                timeline: state.map(|s| s.timeline).filter(|t| *t > 0),
                lsn: state.map(|s| s.lsn),
                slot: slot.is_some(),
                slot_active_pid: slot.and_then(|s| s.active_pid),
                slot_restart_lsn: slot.and_then(|s| s.restart_lsn),
                slot_lag_bytes: state.zip(slot.and_then(|s| s.restart_lsn)).map(|(s, r)| s.lsn.since(r)),
                error: match answer {
                    Answer::Up(_) => None,
                    Answer::Down(e) | Answer::Silent(e) | Answer::Rejected(e) => Some(e.clone()),
                },
            }
        })
        .collect()
}

fn primary_problems(arbitration: &Arbitration) -> Vec<String> {
    let mut problems = Vec::new();
    match arbitration.primary {
        Primary::Legit { node, timeline } => {
            for (stale, stale_timeline) in &arbitration.stale {
                problems.push(format!(
                    "split brain: node {} is a primary on timeline {stale_timeline} besides the legitimate primary \
                     node {} on timeline {timeline}",
                    stale.id(),
                    node.id()
                ));
            }
        }
        _ => problems.push(format!("no legitimate primary: {}", arbitration.describe())),
    }
    problems
}

/// barman's slot on every node, and whether barman streams: a slot on the primary without
/// its walsender means receive-wal is not running, or cannot stream (watch says why). A
/// standby without the slot is a problem only while watch runs: watch makes them.
fn slot_problems(cfg: &Config, view: &View, primary: Option<Node>, watch: Option<&WatchReport>) -> Vec<String> {
    // a proxy without barman leaves the slots to the one with barman
    let Some(barman) = &cfg.barman else { return Vec::new() };
    let slot = &barman.slot;
    let mut problems = Vec::new();
    for (node, answer) in &view.nodes {
        let Some(state) = answer.state() else { continue };
        let walsender = state.slot.and_then(|s| s.active_pid);
        let id = node.id();
        match (state.role, state.slot, walsender) {
            (Role::Primary, None, _) => problems.push(format!("primary node {id} has no slot {slot}")),
            (Role::Primary, Some(_), None) if primary == Some(*node) => {
                let why = match watch.and_then(|w| w.receive_wal.as_deref()) {
                    Some(why) => format!(" ({why})"),
                    None => String::new(),
                };
                problems.push(format!("barman does not stream from node {id}: its slot has no walsender{why}"))
            }
            (Role::Standby, Some(_), Some(pid)) => {
                problems.push(format!("standby node {id}: walsender {pid} streams from barman's slot"))
            }
            (Role::Standby, None, _) if barman.standby_slots && watch.is_some() => {
                problems.push(format!("standby node {id} has no slot {slot}: nothing keeps barman's WAL there"))
            }
            (Role::Standby, Some(_), _) if !barman.standby_slots => {
                problems.push(format!("standby node {id} still has slot {slot}"))
            }
            _ => {}
        }
    }
    problems
}

fn rules_report(seen: &Situation, live: &Result<Live, String>) -> RulesReport {
    match live {
        Ok(live) => {
            let routing = &seen.routing;
            RulesReport {
                readable: true,
                error: None,
                chains_and_jumps: seen.in_place,
                route: match *routing {
                    Routing::To(route) => Some(route),
                    _ => None,
                },
                summary: routing.to_string(),
                lines: live.chains.iter().flat_map(|c| c.rules.iter().cloned()).collect(),
            }
        }
        Err(e) => RulesReport {
            readable: false,
            error: Some(e.clone()),
            chains_and_jumps: false,
            route: None,
            summary: "unknown".to_string(),
            lines: Vec::new(),
        },
    }
}

fn rules_problems(
    cfg: &Config,
    seen: &Situation,
    live: &Live,
    wanted: Option<Record>,
    record_unreadable: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    let (routing, recorded) = (&seen.routing, seen.record);
    if !seen.in_place {
        let chains: Vec<String> = ruleset::chains(cfg)
            .iter()
            .map(|chain| format!("{} {}", chain.name, if live.has_chain(chain.name) { "present" } else { "missing" }))
            .collect();
        let jumps: Vec<String> =
            live.jump_counts(cfg).iter().map(|(hook, chain, n)| format!("{hook} -> {chain} x{n}")).collect();
        problems.push(format!(
            "chains, jumps or hold not in place ({}; {}); run setup",
            chains.join(", "),
            jumps.join(", ")
        ));
    }
    if let Some(wanted) = wanted
        && *routing != Routing::To(wanted.route)
    {
        problems.push(format!("the rules hold {routing}; the primary is node {}", wanted.route.node.id()));
    }
    let as_recorded = recorded.map_or(Routing::Nothing, |r| Routing::To(r.route));
    if !record_unreadable && *routing != as_recorded {
        let said = recorded.map_or("nothing".to_string(), |r| r.route.to_string());
        problems.push(format!("the rules hold {routing}; the record says {said}"));
    }
    problems
}

/// One instance in `status --all`: its report, or why it has none.
#[derive(Debug, Serialize)]
pub struct OfInstance {
    pub instance: String,
    pub config: String,
    pub report: Option<Report>,
    pub error: Option<String>,
}

impl OfInstance {
    pub fn new(instance: &Instance, report: Result<Report, String>) -> OfInstance {
        let (report, error) = match report {
            Ok(report) => (Some(report), None),
            Err(e) => (None, Some(e)),
        };
        OfInstance {
            instance: instance.name().to_string(),
            config: instance.config_path().display().to_string(),
            report,
            error,
        }
    }

    pub fn to_text(&self, now_ms: u64) -> String {
        let head = format!("== instance {} ({})\n", self.instance, self.config);
        match (&self.report, &self.error) {
            (Some(report), _) => head + &report.to_text(now_ms),
            (None, error) => {
                head + &crate::logging::escape(&format!("cannot read: {}", error.as_deref().unwrap_or("?"))) + "\n"
            }
        }
    }
}

/// `status --all --json`: every instance's.
#[derive(Debug, Serialize)]
pub struct All<'a> {
    pub version: u32,
    pub instances: &'a [OfInstance],
}

impl<'a> All<'a> {
    pub fn new(instances: &'a [OfInstance]) -> All<'a> {
        All { version: JSON_VERSION, instances }
    }
}

impl Report {
    /// The text `status` prints, as seen at `now_ms`: every line escaped as a log line
    /// is, since nodes (their error messages) and barman (its output) chose parts of it
    /// and must not drive the operator's terminal.
    pub fn to_text(&self, now_ms: u64) -> String {
        self.unescaped_text(now_ms).lines().map(|line| crate::logging::escape(line) + "\n").collect()
    }

    fn unescaped_text(&self, now_ms: u64) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{:<6} {:<16} {:<9} {:<8} {:<8} slot", "node", "address", "state", "role", "timeline");
        for n in &self.nodes {
            let role = n.role.map_or("-".to_string(), |r| r.to_string());
            let timeline = n.timeline.map_or("-".to_string(), |t| t.to_string());
            let lag = n.slot_lag_bytes.map(|b| format!(", keeps {}", bytes(b))).unwrap_or_default();
            let slot = match (n.slot, n.slot_active_pid) {
                (true, Some(pid)) => format!("present, active (pid {pid}){lag}"),
                (true, None) => format!("present, inactive{lag}"),
                (false, _) if n.reachable => "absent".to_string(),
                (false, _) => "-".to_string(),
            };
            let _ = writeln!(out, "{:<6} {:<16} {:<9} {role:<8} {timeline:<8} {slot}", n.id, n.address, n.state);
            if let Some(e) = &n.error {
                let _ = writeln!(out, "       {e}");
            }
        }
        let primary = match (self.primary, self.timeline) {
            (Some(p), Some(t)) => format!("node {p} on timeline {t}"),
            _ => "none".to_string(),
        };
        let _ = writeln!(out, "primary: {primary}");
        let _ = writeln!(
            out,
            "rules: {}{}",
            self.rules.summary,
            if self.rules.chains_and_jumps { "" } else { " (chains, jumps or hold not in place)" }
        );
        for line in &self.rules.lines {
            let _ = writeln!(out, "  {line}");
        }
        let recorded = self.recorded.map_or("nothing".to_string(), |r| r.to_string());
        let _ = writeln!(out, "recorded route: {recorded}");
        let watch = self.watch.as_ref().map_or("no report (not running here)".to_string(), |w| w.describe(now_ms));
        let _ = writeln!(out, "watch: {watch}");
        if self.consistent {
            let _ = writeln!(out, "consistent: yes");
        } else {
            let _ = writeln!(out, "consistent: no");
            for p in &self.problems {
                let _ = writeln!(out, "  - {p}");
            }
        }
        out
    }
}

/// "512 B", "16.0 MB", "1.5 GB"
pub fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..0x10_0000 => format!("{:.1} kB", n as f64 / 1024.0),
        0x10_0000..0x4000_0000 => format!("{:.1} MB", n as f64 / 1048576.0),
        _ => format!("{:.1} GB", n as f64 / 1073741824.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::tests::{example, node};
    use crate::core::view::tests::view;
    use crate::core::view::{NodeState, Slot};
    use crate::core::watch_json::Action;

    /// With the slot, a primary's has barman's walsender, a standby's none.
    fn up(role: Role, timeline: u32, slot: bool) -> Answer {
        let active_pid = (role == Role::Primary).then_some(77);
        let slot = slot.then_some(Slot { active_pid, restart_lsn: Some(Lsn(0x300_0000)) });
        Answer::Up(NodeState { role, timeline, lsn: Lsn(0x300_0060), slot })
    }

    /// With the slot (held by walsender `pid`, or idle) or without.
    fn up_with(role: Role, timeline: u32, slot: bool, pid: Option<i32>) -> Answer {
        let slot = slot.then_some(Slot { active_pid: pid, restart_lsn: Some(Lsn(0x300_0000)) });
        Answer::Up(NodeState { role, timeline, lsn: Lsn(0x300_0060), slot })
    }

    fn live_to(cfg: &Config, id: u32, open: Open) -> Result<Live, String> {
        Ok(Live::installed(cfg, Route::new(node(id), open)))
    }

    fn seen<'a>(view: &'a View, live: Result<Live, String>, recorded: Result<Option<Record>, String>) -> Seen<'a> {
        Seen { view, live, recorded, watch: None, torn_down: false, now_ms: 0 }
    }

    fn rec(id: u32, open: Open, timeline: u32) -> Result<Option<Record>, String> {
        Ok(Some(Record { route: Route::new(node(id), open), timeline }))
    }

    #[test]
    fn consistent_after_a_failover_with_the_old_primary_down() {
        let cfg = example();
        let v = view(&[(1, Answer::Down("connection refused".into())), (2, up(Role::Primary, 2, true))]);
        let report = assess(&cfg, seen(&v, live_to(&cfg, 2, Open::All), rec(2, Open::All, 2)));
        assert!(report.consistent, "{:?}", report.problems);
        assert_eq!(report.primary, Some(NodeId::new(2)));
        let text = report.to_text(0);
        assert!(text.contains("primary: node 2 on timeline 2\n"), "{text}");
        assert!(text.contains("rules: node 2 ports all\n"), "{text}");
        assert!(text.contains("present, active (pid 77), keeps 96 B"), "{text}");
        assert!(text.contains("consistent: yes"), "{text}");
    }

    #[test]
    fn torn_down_is_inconsistent_and_says_what_to_run() {
        let cfg = example();
        let v = view(&[(1, Answer::Down("connection refused".into())), (2, up(Role::Primary, 2, true))]);
        let torn = Seen { torn_down: true, ..seen(&v, live_to(&cfg, 2, Open::All), rec(2, Open::All, 2)) };
        let report = assess(&cfg, torn);
        assert!(report.torn_down && !report.consistent);
        assert_eq!(
            report.problems,
            ["torn down (`repmgr-nat teardown`, which the package's removal runs): no switch is made until \
              `repmgr-nat setup` runs as root"]
        );
    }

    /// Nor on the rules: with a legitimate primary, status says the rules are wrong
    /// (routed elsewhere, ports closed, chains missing) exactly when watch would switch them
    /// (`decide(Ask::Watch)` plans a route), for every routing of every node and ports.
    #[test]
    fn rules_problems_are_what_watch_would_route() {
        use crate::core::plan::{Ask, Decision, Step, decide};
        let cfg = example();
        let v = view(&[(1, up_with(Role::Standby, 2, true, None)), (2, up(Role::Primary, 2, true))]);
        let mut routings = vec![Routing::Nothing];
        for id in [1, 2] {
            for open in [Open::None, Open::Barman, Open::All] {
                routings.push(Routing::To(Route::new(node(id), open)));
            }
        }
        let mut seen_both = [0, 0];
        for routing in routings {
            for in_place in [true, false] {
                let live = match &routing {
                    Routing::To(route) => Live::installed(&cfg, *route),
                    _ => Live::parse(&cfg, ""),
                };
                // not in place: a jump deleted by hand
                let live = match in_place {
                    true => live,
                    false => {
                        let text: String = live
                            .render()
                            .lines()
                            .filter(|l| l != &"-A PREROUTING -j repmgr_dnat")
                            .map(|l| format!("{l}\n"))
                            .collect();
                        Live::parse(&cfg, &text)
                    }
                };
                let record = match routing {
                    Routing::To(route) => Some(Record { route, timeline: 2 }),
                    _ => None,
                };
                let situation = Situation::read(&cfg, &v, &live, record);
                let routes = match decide(&cfg, Ask::Watch, &situation) {
                    Decision::Act(steps) => steps.iter().any(|s| matches!(s, Step::Route(_))),
                    _ => false,
                };
                let mut seen = seen(&v, Ok(live), Ok(record));
                seen.watch = Some(WatchReport { passed_ms: 0, ..watch_report() });
                let problems = assess(&cfg, seen).problems;
                let said = problems.iter().any(|p| p.starts_with("the rules hold") || p.starts_with("chains, jumps"));
                assert_eq!(said, routes, "{routing} in place {in_place}: {problems:?}");
                seen_both[usize::from(said)] += 1;
            }
        }
        assert_eq!(seen_both, [1, 13], "one right routing, thirteen wrong ones");
    }

    /// status restates none of the policy on barman's slots: for every view, it reports
    /// a slot problem on a node exactly when watch would make, end or drop something there
    /// (`decide(Ask::Watch)`); only barman not streaming from the primary is status's own
    /// (watch's receive-wal handles it, no plan does).
    #[test]
    fn slot_problems_are_what_watch_would_act_on() {
        use crate::core::plan::{Ask, Decision, Situation, Step, decide};
        for standby_slots in [true, false] {
            let mut cfg = example();
            cfg.barman.as_mut().unwrap().standby_slots = standby_slots;
            let answers =
                |role| [(false, None), (true, None), (true, Some(4242))].map(|(slot, pid)| up_with(role, 2, slot, pid));
            for primary in answers(Role::Primary) {
                for standby in answers(Role::Standby) {
                    let v = view(&[(1, standby.clone()), (2, primary.clone())]);
                    let routed = Route::new(node(2), Open::All);
                    let record = Some(Record { route: routed, timeline: 2 });
                    let mut seen = seen(&v, live_to(&cfg, 2, Open::All), Ok(record));
                    seen.watch = Some(WatchReport { passed_ms: 0, ..watch_report() });
                    let problems = assess(&cfg, seen).problems;
                    let situation = Situation::new(&v, Routing::To(routed), true, record);
                    let steps = match decide(&cfg, Ask::Watch, &situation) {
                        Decision::Act(steps) => steps,
                        _ => Vec::new(),
                    };
                    for id in [1, 2] {
                        let acts = steps.iter().any(|step| match *step {
                            Step::CreateSlot(n)
                            | Step::CreateStandbySlot(n)
                            | Step::TerminateWalsender(n, _)
                            | Step::DropSlot(n) => n == node(id),
                            _ => false,
                        });
                        let names = |p: &str| {
                            let words: Vec<&str> = p.split(' ').collect();
                            words.windows(2).any(|w| w[0] == "node" && w[1].trim_end_matches(':') == id.to_string())
                        };
                        let said = problems.iter().any(|p| names(p) && !p.contains("does not stream"));
                        assert_eq!(said, acts, "node {id}, standby_slots {standby_slots}: {problems:?} / {steps:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn what_a_node_says_cannot_drive_the_terminal() {
        let cfg = example();
        let said = "FATAL: \x1b]0;owned\x07\x1b[2J\rconsistent: yes\u{202e}";
        let v = view(&[(1, Answer::Rejected(said.into())), (2, up(Role::Primary, 2, true))]);
        let text = assess(&cfg, seen(&v, live_to(&cfg, 2, Open::All), rec(2, Open::All, 2))).to_text(0);
        assert!(!text.contains(['\x1b', '\x07', '\r', '\u{202e}']), "{text:?}");
        assert!(text.contains("FATAL: \\x1b]0;owned\\x07\\x1b[2J\\x0dconsistent: yes\\u{202e}"), "{text}");
    }

    #[test]
    fn names_every_disagreement() {
        let cfg = example();
        let v = view(&[(1, up(Role::Standby, 2, true)), (2, up(Role::Primary, 2, false))]);
        let report = assess(&cfg, seen(&v, live_to(&cfg, 1, Open::All), rec(1, Open::All, 1)));
        assert!(!report.consistent);
        assert_eq!(
            report.problems,
            [
                "primary node 2 has no slot barman",
                "the rules hold node 1 ports all; the primary is node 2",
                "the record says node 1 ports all (timeline 1); the primary is node 2 on timeline 2",
            ]
        );
    }

    #[test]
    fn reports_the_split_brain_and_the_fence() {
        let cfg = example();
        let v = view(&[(1, up(Role::Primary, 1, true)), (2, up(Role::Primary, 2, true))]);
        let report = assess(&cfg, seen(&v, live_to(&cfg, 2, Open::All), rec(2, Open::All, 2)));
        assert_eq!(
            report.problems,
            ["split brain: node 1 is a primary on timeline 1 besides the legitimate primary node 2 on timeline 2"]
        );
        assert_eq!(report.stale_primaries, [NodeId::new(1)]);
        // the true primary unreachable, the stale one answers
        let v = view(&[(1, up(Role::Primary, 1, true)), (2, Answer::Silent("no answer within 3 s".into()))]);
        let report = assess(&cfg, seen(&v, live_to(&cfg, 2, Open::All), rec(2, Open::All, 2)));
        assert_eq!(
            report.problems,
            [
                "no legitimate primary: none: node 1 is a primary on timeline 1, below timeline 2 recorded with the route to node 2"
            ]
        );
    }

    #[test]
    fn unreadable_rules_and_ambiguous_primaries_are_inconsistent() {
        let cfg = example();
        let v = view(&[(1, up(Role::Primary, 1, true)), (2, up(Role::Primary, 1, true))]);
        let report = assess(&cfg, seen(&v, Err("sudo: a password is required".into()), Ok(None)));
        assert_eq!(
            report.problems,
            [
                "no legitimate primary: ambiguous: nodes 1 and 2 are all primary on timeline 1",
                "cannot read the rules: sudo: a password is required"
            ]
        );
        // with no node reachable, the rules are still checked against the record
        let silent = || Answer::Silent("no answer within 3 s".into());
        let report = assess(
            &cfg,
            seen(&view(&[(1, silent()), (2, silent())]), live_to(&cfg, 2, Open::Barman), rec(1, Open::All, 1)),
        );
        assert_eq!(
            report.problems,
            [
                "no legitimate primary: none reachable",
                "the rules hold node 2 ports barman; the record says node 1 ports all"
            ]
        );
        let report = assess(
            &cfg,
            seen(&view(&[(1, silent()), (2, up(Role::Standby, 1, false))]), Ok(Live::default()), Ok(None)),
        );
        assert!(report.problems.iter().any(|p| p.starts_with("chains, jumps or hold not in place")));
    }

    #[test]
    fn says_when_barman_does_not_stream_and_why() {
        let cfg = example();
        let idle = Answer::Up(NodeState {
            role: Role::Primary,
            timeline: 2,
            lsn: Lsn(0x500_0000),
            slot: Some(Slot { active_pid: None, restart_lsn: Some(Lsn(0x300_0000)) }),
        });
        let v = view(&[(1, up(Role::Standby, 2, false)), (2, idle)]);
        let mut watch = watch_report();
        watch.receive_wal = Some(
            "for 45 s; watch started receive-wal 3 times; the last receive-wal said: ERROR: requested WAL segment \
                                  00000002000000000000000D has already been removed"
                .into(),
        );
        let report = assess(
            &cfg,
            Seen {
                view: &v,
                live: live_to(&cfg, 2, Open::All),
                recorded: rec(2, Open::All, 2),
                watch: Some(watch),
                torn_down: false,
                now_ms: 10_100,
            },
        );
        assert_eq!(
            report.problems,
            [
                "standby node 1 has no slot barman: nothing keeps barman's WAL there",
                "barman does not stream from node 2: its slot has no walsender (for 45 s; watch started receive-wal 3 \
                 times; the last receive-wal said: ERROR: requested WAL segment 00000002000000000000000D has already \
                 been removed)"
            ]
        );
        let mut article = cfg.clone();
        article.barman.as_mut().unwrap().standby_slots = false;
        let v = view(&[(1, up(Role::Standby, 2, true)), (2, up(Role::Primary, 2, true))]);
        let report = assess(&article, seen(&v, live_to(&cfg, 2, Open::All), rec(2, Open::All, 2)));
        assert_eq!(report.problems, ["standby node 1 still has slot barman"]);
    }

    fn watch_report() -> WatchReport {
        WatchReport {
            version: 1,
            pid: 77,
            started_ms: 1_000,
            pass: 12,
            passed_ms: 10_000,
            interval_ms: 250,
            hurry: false,
            primary: "node 2 on timeline 2".into(),
            rules: "node 2 ports all".into(),
            nodes: "1: down: connection refused, 2: primary on timeline 2".into(),
            unanswered: vec![NodeId::new(1)],
            receive_wal: None,
            barman_confirmed: None,
            last_action: Some(Action {
                at_ms: 9_000,
                steps: vec!["route node 2 ports all (timeline 2)".into()],
                result: "ok".into(),
            }),
            misrouted_since_ms: None,
        }
    }

    /// keepalived's check: watch must run, and the application ports may miss the
    /// legitimate primary only for the moment of a switch.
    #[test]
    fn a_proxy_can_serve_while_its_watch_runs_and_routes_to_the_primary() {
        let cfg = example();
        let report = watch_report(); // its last pass ended at 10 000 ms
        assert_eq!(can_serve(&cfg, Some(&report), true, 10_200), Ok(()));
        assert_eq!(
            can_serve(&cfg, None, false, 10_200),
            Err("watch has written nothing in /run/repmgr-nat: it does not run here".into())
        );
        assert_eq!(can_serve(&cfg, Some(&report), false, 10_200), Err("watch (pid 77) is not running".into()));
        // a pass may wait for a node's deadline (3 s) and a little more, not longer
        assert_eq!(can_serve(&cfg, Some(&report), true, 15_000), Ok(()));
        assert_eq!(
            can_serve(&cfg, Some(&report), true, 15_001),
            Err("watch (pid 77) has not ended a pass for 5001 ms (more than 5000 ms)".into())
        );
        let switching = WatchReport { misrouted_since_ms: Some(9_000), ..report };
        assert_eq!(can_serve(&cfg, Some(&switching), true, 10_200), Ok(()), "a switch takes a moment");
        let stuck = WatchReport { misrouted_since_ms: Some(8_000), ..switching };
        assert_eq!(
            can_serve(&cfg, Some(&stuck), true, 10_200),
            Err("the application ports have not forwarded to a legitimate primary for 2200 ms (primary: node 2 on \
                 timeline 2; rules: node 2 ports all)"
                .into())
        );
    }

    #[test]
    fn shows_what_watch_saw_last() {
        let watch = watch_report();
        assert_eq!(
            watch.describe(10_120),
            "pass 12 of pid 77, 120 ms ago: primary node 2 on timeline 2; rules node 2 ports all; last action 1 s ago: \
             route node 2 ports all (timeline 2) (ok)"
        );
        assert!(watch.describe(60_000).contains("50000 ms ago (stale: is watch running?)"));
    }

    #[test]
    fn json_names_the_fields_monitoring_reads() {
        let cfg = example();
        let v = view(&[(1, up(Role::Primary, 3, true)), (2, up(Role::Standby, 3, true))]);
        let report = assess(&cfg, seen(&v, live_to(&cfg, 1, Open::All), rec(1, Open::All, 3)));
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["version"], 1);
        assert_eq!(json["consistent"], true);
        assert_eq!(json["primary"], 1);
        assert_eq!(json["timeline"], 3);
        assert_eq!(json["nodes"][0]["role"], "primary");
        assert_eq!(json["nodes"][0]["state"], "up");
        assert_eq!(json["nodes"][0]["slot_restart_lsn"], "0/3000000");
        assert_eq!(json["nodes"][0]["slot_lag_bytes"], 0x60);
        assert_eq!(json["rules"]["route"]["open"], "all");
        assert_eq!(json["rules"]["route"]["node"], 1);
        assert_eq!(json["recorded"]["timeline"], 3);
    }

    /// The README's schema table is the contract: every field `status --json` prints is in
    /// it, and every field in it is printed.
    #[test]
    fn the_readme_documents_every_json_field() {
        use std::collections::BTreeSet;

        use crate::manual::{spans, table};

        let cfg = example();
        let v = view(&[(1, up(Role::Primary, 3, true)), (2, up(Role::Standby, 3, true))]);
        let mut report = assess(&cfg, seen(&v, live_to(&cfg, 1, Open::All), rec(1, Open::All, 3)));
        report.watch = Some(watch_report());
        let mut printed = BTreeSet::new();
        for (key, value) in serde_json::to_value(&report).unwrap().as_object().unwrap() {
            match (key.as_str(), value) {
                ("nodes", serde_json::Value::Array(nodes)) => {
                    printed.extend(nodes[0].as_object().unwrap().keys().map(|k| format!("nodes[].{k}")))
                }
                ("rules" | "watch", serde_json::Value::Object(fields)) => {
                    printed.extend(fields.keys().map(|k| format!("{key}.{k}")))
                }
                _ => {
                    printed.insert(key.clone());
                }
            }
        }
        // "`nodes[].role`, `.timeline`": a leading dot continues the name before it
        let mut documented = BTreeSet::new();
        for row in table(include_str!("../../README.md"), "status --json") {
            let mut prefix = String::new();
            for (name, code) in spans(&row[0]) {
                if code {
                    let full = name.strip_prefix('.').map_or(name.clone(), |short| format!("{prefix}{short}"));
                    prefix = full[..full.rfind('.').map_or(0, |i| i + 1)].to_string();
                    documented.insert(full);
                }
            }
        }
        documented.retain(|field| field != "nodes" && field != "watch");
        assert_eq!(printed, documented, "status --json against the README's table");
    }
}
