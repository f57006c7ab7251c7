//! `repmgr-nat status`: what each node says, what the chains hold, what is recorded,
//! and whether they agree. `assess` is pure; the command gathers and prints.

use std::fmt::Write;

use serde::Serialize;

use crate::core::config::{Config, NodeId};
use crate::core::plan::{Answers, Role};
use crate::core::ruleset::{Live, Open, Route, Routing};

#[derive(Debug, Serialize)]
pub struct Report {
    pub nodes: Vec<NodeReport>,
    pub rules: RulesReport,
    /// The route root recorded at its last switch.
    pub recorded: Option<Route>,
    pub recorded_error: Option<String>,
    /// The one node that says it is primary, if exactly one does.
    pub primary: Option<u32>,
    pub consistent: bool,
    /// Why not, one line each.
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct NodeReport {
    pub id: u32,
    pub address: String,
    pub reachable: bool,
    pub role: Option<Role>,
    pub slot: bool,
    pub slot_active_pid: Option<i32>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RulesReport {
    pub readable: bool,
    pub error: Option<String>,
    /// Both chains exist and each built-in chain jumps to ours exactly once.
    pub chains_and_jumps: bool,
    /// The route the chains amount to, if repmgr-nat recognises them.
    pub route: Option<Route>,
    /// "node 2 ports all", "no rules" or "unrecognised rules".
    pub summary: String,
    /// The rules of both chains, as iptables-save prints them.
    pub lines: Vec<String>,
}

pub fn assess(
    cfg: &Config,
    answers: &Answers,
    live: Result<Live, String>,
    recorded: Result<Option<Route>, String>,
) -> Report {
    let mut problems = Vec::new();

    let nodes: Vec<NodeReport> = answers
        .iter()
        .map(|(id, answer)| {
            let address = cfg.nodes.get(id).map(|a| a.to_string()).unwrap_or_default();
            match answer {
                Ok(view) => NodeReport {
                    id: id.0,
                    address,
                    reachable: true,
                    role: Some(view.role),
                    slot: view.slot.is_some(),
                    slot_active_pid: view.slot.and_then(|s| s.active_pid),
                    error: None,
                },
                Err(e) => NodeReport {
                    id: id.0,
                    address,
                    reachable: false,
                    role: None,
                    slot: false,
                    slot_active_pid: None,
                    error: Some(e.error.clone()),
                },
            }
        })
        .collect();

    let primaries: Vec<u32> = nodes.iter().filter(|n| n.role == Some(Role::Primary)).map(|n| n.id).collect();
    let primary = match primaries[..] {
        [one] => Some(one),
        [] => {
            problems.push("no reachable node is a primary".to_string());
            None
        }
        _ => {
            problems.push(format!("several nodes are primary: {primaries:?}"));
            None
        }
    };
    for node in &nodes {
        match node.role {
            Some(Role::Primary) if !node.slot => {
                problems.push(format!("primary node {} has no slot {}", node.id, cfg.barman.slot))
            }
            Some(Role::Standby) if node.slot => {
                problems.push(format!("standby node {} still has slot {}", node.id, cfg.barman.slot))
            }
            _ => {}
        }
    }

    let (recorded, recorded_error) = match recorded {
        Ok(r) => (r, None),
        Err(e) => {
            problems.push(format!("cannot read the recorded route: {e}"));
            (None, Some(e))
        }
    };
    let recorded_text = recorded.map_or("nothing".to_string(), |r| r.to_string());

    let rules = match live {
        Ok(live) => {
            let routing = live.routing(cfg);
            if !live.chains_and_jumps_in_place() {
                problems.push(format!(
                    "chains or jumps not in place (chains {}/{}, jumps from PREROUTING/OUTPUT/POSTROUTING: {:?}); run setup",
                    if live.dnat_chain { "present" } else { "missing" },
                    if live.snat_chain { "present" } else { "missing" },
                    live.jumps
                ));
            }
            if let Some(p) = primary {
                let wanted = Routing::To(Route { node: NodeId(p), open: Open::All });
                if routing != wanted {
                    problems.push(format!("the rules hold {routing}; the primary is node {p}"));
                }
            }
            let as_recorded = recorded.map_or(Routing::Nothing, Routing::To);
            if recorded_error.is_none() && routing != as_recorded {
                problems.push(format!("the rules hold {routing}; the record says {recorded_text}"));
            }
            RulesReport {
                readable: true,
                error: None,
                chains_and_jumps: live.chains_and_jumps_in_place(),
                route: match routing {
                    Routing::To(route) => Some(route),
                    _ => None,
                },
                summary: routing.to_string(),
                lines: live.rules.dnat.iter().chain(&live.rules.snat).cloned().collect(),
            }
        }
        Err(e) => {
            problems.push(format!("cannot read the rules: {e}"));
            RulesReport {
                readable: false,
                error: Some(e),
                chains_and_jumps: false,
                route: None,
                summary: "unknown".to_string(),
                lines: Vec::new(),
            }
        }
    };

    if let Some(p) = primary
        && recorded_error.is_none()
        && recorded != Some(Route { node: NodeId(p), open: Open::All })
    {
        problems.push(format!("the record says {recorded_text}; the primary is node {p}"));
    }

    Report { nodes, rules, recorded, recorded_error, primary, consistent: problems.is_empty(), problems }
}

impl Report {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{:<6} {:<16} {:<9} {:<8} slot", "node", "address", "reachable", "role");
        for n in &self.nodes {
            let role = n.role.map_or("-".to_string(), |r| r.to_string());
            let slot = match (n.slot, n.slot_active_pid) {
                (true, Some(pid)) => format!("present, active (pid {pid})"),
                (true, None) => "present".to_string(),
                (false, _) if n.reachable => "absent".to_string(),
                (false, _) => "-".to_string(),
            };
            let _ = writeln!(
                out,
                "{:<6} {:<16} {:<9} {:<8} {slot}",
                n.id,
                n.address,
                if n.reachable { "yes" } else { "no" },
                role
            );
            if let Some(e) = &n.error {
                let _ = writeln!(out, "       {e}");
            }
        }
        let _ = writeln!(
            out,
            "rules: {}{}",
            self.rules.summary,
            if self.rules.chains_and_jumps { "" } else { " (chains or jumps not in place)" }
        );
        for line in &self.rules.lines {
            let _ = writeln!(out, "  {line}");
        }
        let recorded = self.recorded.map_or("nothing".to_string(), |r| r.to_string());
        let _ = writeln!(out, "recorded route: {recorded}");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::tests::example;
    use crate::core::plan::{NoAnswer, NodeView, Slot};
    use crate::core::ruleset::restore_text;

    fn view(role: Role, slot: bool) -> Result<NodeView, NoAnswer> {
        Ok(NodeView { role, slot: slot.then_some(Slot { active_pid: None }) })
    }

    fn down(error: &str) -> Result<NodeView, NoAnswer> {
        Err(NoAnswer { error: error.to_string(), replied: false })
    }

    fn live_to(cfg: &Config, node: u32, open: Open) -> Result<Live, String> {
        let mut text = restore_text(cfg, Route { node: NodeId(node), open });
        text = text.replace(
            "COMMIT\n",
            "-A PREROUTING -j repmgr_dnat\n-A OUTPUT -j repmgr_dnat\n-A POSTROUTING -j repmgr_snat\nCOMMIT\n",
        );
        Ok(Live::parse(cfg, &text))
    }

    #[test]
    fn consistent_after_a_failover_with_the_old_primary_down() {
        let cfg = example();
        let answers = vec![(NodeId(1), down("connection refused")), (NodeId(2), view(Role::Primary, true))];
        let report =
            assess(&cfg, &answers, live_to(&cfg, 2, Open::All), Ok(Some(Route { node: NodeId(2), open: Open::All })));
        assert!(report.consistent, "{:?}", report.problems);
        assert_eq!(report.primary, Some(2));
        let text = report.to_text();
        assert!(text.contains("rules: node 2 ports all\n"), "{text}");
        assert!(text.contains("consistent: yes"), "{text}");
    }

    #[test]
    fn names_every_disagreement() {
        let cfg = example();
        let answers = vec![(NodeId(1), view(Role::Standby, true)), (NodeId(2), view(Role::Primary, false))];
        let report =
            assess(&cfg, &answers, live_to(&cfg, 1, Open::All), Ok(Some(Route { node: NodeId(1), open: Open::All })));
        assert!(!report.consistent);
        assert_eq!(
            report.problems,
            [
                "standby node 1 still has slot barman",
                "primary node 2 has no slot barman",
                "the rules hold node 1 ports all; the primary is node 2",
                "the record says node 1 ports all; the primary is node 2",
            ]
        );
    }

    #[test]
    fn unreadable_rules_and_ambiguous_primaries_are_inconsistent() {
        let cfg = example();
        let answers = vec![(NodeId(1), view(Role::Primary, true)), (NodeId(2), view(Role::Primary, true))];
        let report = assess(&cfg, &answers, Err("sudo: a password is required".into()), Ok(None));
        assert!(!report.consistent);
        assert_eq!(
            report.problems,
            ["several nodes are primary: [1, 2]", "cannot read the rules: sudo: a password is required"]
        );
        // with no node reachable, the rules are still checked against the record
        let unreachable = vec![(NodeId(1), down("timeout")), (NodeId(2), down("timeout"))];
        let report = assess(
            &cfg,
            &unreachable,
            live_to(&cfg, 2, Open::Barman),
            Ok(Some(Route { node: NodeId(1), open: Open::All })),
        );
        assert_eq!(
            report.problems,
            ["no reachable node is a primary", "the rules hold node 2 ports barman; the record says node 1 ports all"]
        );
        let none = vec![(NodeId(1), down("timeout")), (NodeId(2), view(Role::Standby, false))];
        let report = assess(&cfg, &none, Ok(Live::default()), Ok(None));
        assert!(report.problems.contains(&"no reachable node is a primary".to_string()));
        assert!(report.problems.iter().any(|p| p.starts_with("chains or jumps not in place")));
    }

    #[test]
    fn json_names_the_fields_monitoring_reads() {
        let cfg = example();
        let answers = vec![(NodeId(1), view(Role::Primary, true)), (NodeId(2), view(Role::Standby, false))];
        let report =
            assess(&cfg, &answers, live_to(&cfg, 1, Open::All), Ok(Some(Route { node: NodeId(1), open: Open::All })));
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["consistent"], true);
        assert_eq!(json["primary"], 1);
        assert_eq!(json["nodes"][0]["role"], "primary");
        assert_eq!(json["rules"]["route"]["open"], "all");
        assert_eq!(json["rules"]["route"]["node"], 1);
    }
}
