//! The NAT rules as text: what the chains must hold for a route (rendered exactly as
//! `iptables-save` prints rules, so the live chains compare line by line), the
//! `iptables-restore` transaction that switches to it, and the reading of what the
//! nat table holds now. Pure code: no process is run here.

use std::fmt;

use crate::core::config::{Config, NodeId};

/// Which proxy ports forward to the node. The SNAT rule for the node is present in
/// every case, so a route always names exactly one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Open {
    /// Neither port forwards: both refuse connections.
    None,
    /// Only barman's port forwards; the application port refuses connections.
    Barman,
    /// barman's port and every application port forward.
    All,
}

impl fmt::Display for Open {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Open::None => "none",
            Open::Barman => "barman",
            Open::All => "all",
        })
    }
}

/// What the chains send where: the node and the ports that reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Route {
    pub node: NodeId,
    pub open: Open,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} ports {}", self.node, self.open)
    }
}

/// The built-in chains that jump to ours: (hook, our chain).
pub fn hooks(cfg: &Config) -> [(&'static str, &str); 3] {
    [
        ("PREROUTING", cfg.nat.dnat_chain.as_str()),
        ("OUTPUT", cfg.nat.dnat_chain.as_str()),
        ("POSTROUTING", cfg.nat.snat_chain.as_str()),
    ]
}

/// The proxy ports that forward for `open`: barman's first, then the application's.
pub fn forwarded(cfg: &Config, open: Open) -> Vec<u16> {
    match open {
        Open::None => vec![],
        Open::Barman => vec![cfg.ports.barman],
        Open::All => std::iter::once(cfg.ports.barman).chain(cfg.ports.app.iter().copied()).collect(),
    }
}

/// The rules of our two chains for `route`, in the form `iptables-save` prints them.
/// Unknown node ids render nothing; callers validate ids against the config first.
pub fn rules(cfg: &Config, route: Route) -> Rules {
    let mut rules = Rules::default();
    let Some(node) = cfg.nodes.get(&route.node) else { return rules };
    let pg = cfg.ports.postgres;
    let proxy = cfg.proxy;
    for port in forwarded(cfg, route.open) {
        rules.dnat.push(format!(
            "-A {} -d {proxy}/32 -p tcp -m tcp --dport {port} -j DNAT --to-destination {node}:{pg}",
            cfg.nat.dnat_chain
        ));
    }
    rules
        .snat
        .push(format!("-A {} -d {node}/32 -p tcp -m tcp --dport {pg} -j SNAT --to-source {proxy}", cfg.nat.snat_chain));
    rules
}

/// The rule lines of our two chains, each in chain order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub dnat: Vec<String>,
    pub snat: Vec<String>,
}

impl Rules {
    pub fn is_empty(&self) -> bool {
        self.dnat.is_empty() && self.snat.is_empty()
    }
}

/// The `iptables-restore --noflush` input that replaces the contents of both chains in
/// one transaction. Declaring a chain empties it (and creates it if missing); chains
/// not declared are left alone. The kernel switches from the old rules to the new ones
/// at once: there is no moment with no rule and none with rules to two nodes.
pub fn restore_text(cfg: &Config, route: Route) -> String {
    let rules = rules(cfg, route);
    let mut text = format!("*nat\n:{} - [0:0]\n:{} - [0:0]\n", cfg.nat.dnat_chain, cfg.nat.snat_chain);
    for line in rules.dnat.iter().chain(&rules.snat) {
        text.push_str(line);
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    text
}

/// What the nat table holds for repmgr-nat, read from `iptables-save -t nat` output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Live {
    pub dnat_chain: bool,
    pub snat_chain: bool,
    /// How many identical jump rules each hook holds (1 is right; 0 missing).
    pub jumps: [usize; 3],
    pub rules: Rules,
}

/// What the rules in our chains amount to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Routing {
    /// Chains empty or missing: nothing is forwarded.
    Nothing,
    /// Exactly the rules repmgr-nat renders for this route.
    To(Route),
    /// Rules repmgr-nat would never write (edited by hand, or another tool).
    Unrecognised,
}

impl fmt::Display for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Routing::Nothing => f.write_str("no rules"),
            Routing::To(route) => route.fmt(f),
            Routing::Unrecognised => f.write_str("unrecognised rules"),
        }
    }
}

impl Live {
    /// Parses `iptables-save -t nat` output (or the subset `route --show` prints).
    pub fn parse(cfg: &Config, save: &str) -> Live {
        let dnat = cfg.nat.dnat_chain.as_str();
        let snat = cfg.nat.snat_chain.as_str();
        let jump_lines = hooks(cfg).map(|(hook, chain)| format!("-A {hook} -j {chain}"));
        let mut live = Live::default();
        let mut in_nat = false;
        for line in save.lines().map(str::trim_end) {
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
                continue;
            }
            if !in_nat {
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split(' ').next().unwrap_or("");
                live.dnat_chain |= name == dnat;
                live.snat_chain |= name == snat;
            } else if let Some(i) = jump_lines.iter().position(|j| j == line) {
                live.jumps[i] += 1;
            } else if chain_of(line) == Some(dnat) {
                live.rules.dnat.push(line.to_string());
            } else if chain_of(line) == Some(snat) {
                live.rules.snat.push(line.to_string());
            }
        }
        live
    }

    /// Recognises the rules as one of the routes repmgr-nat renders.
    pub fn routing(&self, cfg: &Config) -> Routing {
        if self.rules.is_empty() {
            return Routing::Nothing;
        }
        for node in cfg.nodes.keys() {
            for open in [Open::All, Open::Barman, Open::None] {
                let route = Route { node: *node, open };
                if rules(cfg, route) == self.rules {
                    return Routing::To(route);
                }
            }
        }
        Routing::Unrecognised
    }

    /// Each built-in chain, our chain it should jump to, and how many such jumps it has.
    pub fn jumps<'c>(&self, cfg: &'c Config) -> impl Iterator<Item = (&'static str, &'c str, usize)> {
        hooks(cfg).into_iter().zip(self.jumps).map(|((hook, chain), count)| (hook, chain, count))
    }

    pub fn chains_and_jumps_in_place(&self) -> bool {
        self.dnat_chain && self.snat_chain && self.jumps.iter().all(|n| *n == 1)
    }

    /// The lines `route --show` prints: our chains, their rules and the jumps to them,
    /// as a self-contained `iptables-save` excerpt that `parse` reads back.
    pub fn render(&self, cfg: &Config) -> String {
        let mut text = String::from("*nat\n");
        if self.dnat_chain {
            text.push_str(&format!(":{} - [0:0]\n", cfg.nat.dnat_chain));
        }
        if self.snat_chain {
            text.push_str(&format!(":{} - [0:0]\n", cfg.nat.snat_chain));
        }
        for (hook, chain, count) in self.jumps(cfg) {
            for _ in 0..count {
                text.push_str(&format!("-A {hook} -j {chain}\n"));
            }
        }
        for line in self.rules.dnat.iter().chain(&self.rules.snat) {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("COMMIT\n");
        text
    }
}

/// Connections to cut when the chains switch from `before` to `after`: those proxied to
/// a node through a port that no longer forwards to it. `None` as the port means every
/// proxied connection to the node. When the old rules are unknown, every other node's.
pub fn cuts(cfg: &Config, before: &Routing, after: Route) -> Vec<(NodeId, Option<u16>)> {
    match before {
        Routing::To(old) => {
            let had = forwarded(cfg, old.open);
            let keeps = if old.node == after.node { forwarded(cfg, after.open) } else { Vec::new() };
            let lost: Vec<u16> = had.iter().copied().filter(|p| !keeps.contains(p)).collect();
            if lost.is_empty() {
                Vec::new()
            } else if keeps.is_empty() {
                vec![(old.node, None)]
            } else {
                lost.into_iter().map(|p| (old.node, Some(p))).collect()
            }
        }
        Routing::Nothing | Routing::Unrecognised => {
            cfg.nodes.keys().filter(|id| **id != after.node).map(|id| (*id, None)).collect()
        }
    }
}

fn chain_of(line: &str) -> Option<&str> {
    line.strip_prefix("-A ")?.split(' ').next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::tests::example;

    const TO_2_ALL: &str = "\
*nat
:repmgr_dnat - [0:0]
:repmgr_snat - [0:0]
-A repmgr_dnat -d 10.8.3.1/32 -p tcp -m tcp --dport 54321 -j DNAT --to-destination 10.8.2.1:5432
-A repmgr_dnat -d 10.8.3.1/32 -p tcp -m tcp --dport 54322 -j DNAT --to-destination 10.8.2.1:5432
-A repmgr_snat -d 10.8.2.1/32 -p tcp -m tcp --dport 5432 -j SNAT --to-source 10.8.3.1
COMMIT
";

    #[test]
    fn golden_ruleset_for_a_primary() {
        let cfg = example();
        assert_eq!(restore_text(&cfg, Route { node: NodeId(2), open: Open::All }), TO_2_ALL);
        assert_eq!(
            restore_text(&cfg, Route { node: NodeId(1), open: Open::Barman }),
            "\
*nat
:repmgr_dnat - [0:0]
:repmgr_snat - [0:0]
-A repmgr_dnat -d 10.8.3.1/32 -p tcp -m tcp --dport 54321 -j DNAT --to-destination 10.8.1.1:5432
-A repmgr_snat -d 10.8.1.1/32 -p tcp -m tcp --dport 5432 -j SNAT --to-source 10.8.3.1
COMMIT
"
        );
        assert_eq!(
            restore_text(&cfg, Route { node: NodeId(1), open: Open::None }),
            "\
*nat
:repmgr_dnat - [0:0]
:repmgr_snat - [0:0]
-A repmgr_snat -d 10.8.1.1/32 -p tcp -m tcp --dport 5432 -j SNAT --to-source 10.8.3.1
COMMIT
"
        );
    }

    #[test]
    fn every_rule_targets_a_declared_chain_and_one_node() {
        let mut cfg = example();
        cfg.ports.app = vec![54322, 54323, 54324];
        for (id, addr) in cfg.nodes.clone() {
            for open in [Open::None, Open::Barman, Open::All] {
                let text = restore_text(&cfg, Route { node: id, open });
                let declared: Vec<&str> =
                    text.lines().filter_map(|l| l.strip_prefix(':')).map(|l| l.split(' ').next().unwrap()).collect();
                for line in text.lines().filter(|l| l.starts_with("-A ")) {
                    assert!(declared.contains(&chain_of(line).unwrap()), "{line}");
                    assert!(line.contains(&format!("{addr}")), "{line} does not name node {id}");
                    for (other, other_addr) in &cfg.nodes {
                        if *other != id {
                            assert!(!line.contains(&format!("{other_addr}/")), "{line}");
                            assert!(!line.contains(&format!("{other_addr}:")), "{line}");
                        }
                    }
                }
                let forwards = text.matches("-j DNAT").count();
                assert_eq!(
                    forwards,
                    match open {
                        Open::None => 0,
                        Open::Barman => 1,
                        Open::All => 4,
                    }
                );
            }
        }
    }

    /// `iptables-save -t nat` as the article's scripts leave it: chains, jumps and the
    /// rules for db1 with both ports open.
    const SAVED_BY_SCRIPTS: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables) on Sat Nov 21 05:08:01 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:repmgr_dnat - [0:0]
:repmgr_snat - [0:0]
-A PREROUTING -j repmgr_dnat
-A OUTPUT -j repmgr_dnat
-A POSTROUTING -j repmgr_snat
-A repmgr_dnat -d 10.8.3.1/32 -p tcp -m tcp --dport 54321 -j DNAT --to-destination 10.8.1.1:5432
-A repmgr_dnat -d 10.8.3.1/32 -p tcp -m tcp --dport 54322 -j DNAT --to-destination 10.8.1.1:5432
-A repmgr_snat -d 10.8.1.1/32 -p tcp -m tcp --dport 5432 -j SNAT --to-source 10.8.3.1
COMMIT
# Completed on Sat Nov 21 05:08:01 2026
";

    #[test]
    fn reads_the_chains_the_scripts_left() {
        let cfg = example();
        let live = Live::parse(&cfg, SAVED_BY_SCRIPTS);
        assert!(live.chains_and_jumps_in_place());
        assert_eq!(live.routing(&cfg), Routing::To(Route { node: NodeId(1), open: Open::All }));
    }

    #[test]
    fn show_output_reads_back_to_the_same_state() {
        let cfg = example();
        let live = Live::parse(&cfg, SAVED_BY_SCRIPTS);
        assert_eq!(Live::parse(&cfg, &live.render(&cfg)), live);
    }

    #[test]
    fn recognises_nothing_duplicates_and_foreign_rules() {
        let cfg = example();
        let empty = Live::parse(&cfg, "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n");
        assert!(!empty.dnat_chain && !empty.snat_chain);
        assert_eq!(empty.jumps, [0, 0, 0]);
        assert_eq!(empty.routing(&cfg), Routing::Nothing);

        let doubled = SAVED_BY_SCRIPTS
            .replace("-A OUTPUT -j repmgr_dnat\n", "-A OUTPUT -j repmgr_dnat\n-A OUTPUT -j repmgr_dnat\n");
        let live = Live::parse(&cfg, &doubled);
        assert_eq!(live.jumps, [1, 2, 1]);
        assert!(!live.chains_and_jumps_in_place());

        // The scripts' state half-way through a switch: barman port to db2 only, app
        // port added for db1 by hand.
        let foreign = SAVED_BY_SCRIPTS
            .replace("54321 -j DNAT --to-destination 10.8.1.1", "54321 -j DNAT --to-destination 10.8.2.1");
        assert_eq!(Live::parse(&cfg, &foreign).routing(&cfg), Routing::Unrecognised);

        // Rules of other tables and chains are none of our business.
        let other = format!(
            "*filter\n-A repmgr_dnat -j ACCEPT\nCOMMIT\n{SAVED_BY_SCRIPTS}*mangle\n-A PREROUTING -j repmgr_dnat\nCOMMIT\n"
        );
        assert_eq!(Live::parse(&cfg, &other), Live::parse(&cfg, SAVED_BY_SCRIPTS));
    }

    #[test]
    fn a_switch_cuts_what_no_longer_forwards() {
        let mut cfg = example();
        cfg.nodes.insert(NodeId(3), "10.8.4.1".parse().unwrap());
        let r = |node, open| Route { node: NodeId(node), open };
        let to = |node, open| Routing::To(r(node, open));
        // failover: everything proxied to the former primary
        assert_eq!(cuts(&cfg, &to(1, Open::All), r(2, Open::Barman)), [(NodeId(1), None)]);
        // opening the application port cuts nothing
        assert_eq!(cuts(&cfg, &to(2, Open::Barman), r(2, Open::All)), []);
        assert_eq!(cuts(&cfg, &to(2, Open::All), r(2, Open::All)), []);
        // closing the application port of the same node cuts only that port
        assert_eq!(cuts(&cfg, &to(2, Open::All), r(2, Open::Barman)), [(NodeId(2), Some(54322))]);
        // closing every port of a node that became a standby
        assert_eq!(cuts(&cfg, &to(2, Open::All), r(2, Open::None)), [(NodeId(2), None)]);
        assert_eq!(cuts(&cfg, &to(1, Open::None), r(2, Open::Barman)), []);
        // unknown rules (after a flush, or edited by hand): every other node
        assert_eq!(cuts(&cfg, &Routing::Nothing, r(2, Open::Barman)), [(NodeId(1), None), (NodeId(3), None)]);
        assert_eq!(cuts(&cfg, &Routing::Unrecognised, r(1, Open::All)), [(NodeId(2), None), (NodeId(3), None)]);
    }

    #[test]
    fn every_rendered_route_is_recognised() {
        let cfg = example();
        for id in cfg.nodes.keys() {
            for open in [Open::None, Open::Barman, Open::All] {
                let route = Route { node: *id, open };
                let live = Live::parse(&cfg, &restore_text(&cfg, route));
                assert_eq!(live.routing(&cfg), Routing::To(route));
            }
        }
    }
}
