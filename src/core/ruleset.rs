//! The rules as text: what our chains must hold for a route (rendered exactly as
//! `iptables-save` prints rules, so the live chains compare line by line), the one
//! `iptables-restore` transaction that puts everything of ours in place (chains, jumps,
//! the hold, the route), and the reading of what the kernel holds now. Pure code: no
//! process is run here; nothing else of the tables is ever written. Rendering and reading
//! stay in one file: they must agree line by line, and its tests prove they do. A switch is
//! a plan here too (`switch`): the root step carries it out, a dry run prints it.

use std::fmt;

use anyhow::{Result, bail};

use crate::core::config::{Config, Node, NodeId, positive_integer};

/// Which proxy ports forward to the node (also `route --ports`'s values). The SNAT rule for
/// the node is present in every case, so a route always names exactly one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
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

impl std::str::FromStr for Open {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Open> {
        match text {
            "none" => Ok(Open::None),
            "barman" => Ok(Open::Barman),
            "all" => Ok(Open::All),
            other => bail!("{other:?} is not none, barman or all"),
        }
    }
}

/// What the chains send where: the node and the ports that reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Route {
    pub node: Node,
    pub open: Open,
}

impl Route {
    pub fn new(node: Node, open: Open) -> Route {
        Route { node, open }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} ports {}", self.node.id(), self.open)
    }
}

/// What root records with every switch: the route, and the timeline of the primary it
/// was made for (0: unknown). No later route may go to a primary on a lower timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Record {
    pub route: Route,
    pub timeline: u32,
}

impl Record {
    /// The record's file format: `<node id> <none|barman|all> <timeline>`; the timeline is
    /// missing from records written before timelines were recorded.
    pub fn parse(cfg: &Config, text: &str) -> Result<Record> {
        let mut words = text.split_whitespace();
        let (Some(node), Some(open), timeline, None) = (words.next(), words.next(), words.next(), words.next()) else {
            bail!("expected \"<node id> <none|barman|all> <timeline>\"");
        };
        let node = cfg.node(NodeId::parse(node)?)?;
        let timeline = match timeline {
            Some(t) => parse_timeline(t)?,
            None => 0,
        };
        Ok(Record { route: Route::new(node, open.parse()?), timeline })
    }

    pub fn render(&self) -> String {
        format!("{} {} {}\n", self.route.node.id(), self.route.open, self.timeline)
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (timeline {})", self.route, self.timeline)
    }
}

/// A PostgreSQL timeline id: a positive 32-bit integer, digits only.
pub fn parse_timeline(text: &str) -> Result<u32> {
    match positive_integer(text) {
        Some(timeline) => Ok(timeline),
        None => bail!("timeline {text:?} is not a positive integer"),
    }
}

/// The tables our chains live in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Table {
    Filter,
    Nat,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }

    /// The table of `*name` in iptables-save output, if it is one of ours.
    fn of(name: &str) -> Option<Table> {
        [Table::Filter, Table::Nat].into_iter().find(|t| t.name() == name)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A jump from a built-in chain to one of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hook {
    pub table: Table,
    pub builtin: &'static str,
    /// Where the jump goes: first in the built-in chain (the hold must come before any
    /// rule that would accept the connection), or last.
    pub first: bool,
}

pub const PREROUTING: Hook = Hook { table: Table::Nat, builtin: "PREROUTING", first: false };
pub const OUTPUT: Hook = Hook { table: Table::Nat, builtin: "OUTPUT", first: false };
pub const POSTROUTING: Hook = Hook { table: Table::Nat, builtin: "POSTROUTING", first: false };
pub const INPUT: Hook = Hook { table: Table::Filter, builtin: "INPUT", first: true };
pub const FORWARD: Hook = Hook { table: Table::Filter, builtin: "FORWARD", first: true };

/// One of our chains as the config names it: its table, and the built-in chains that jump
/// to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain<'c> {
    pub table: Table,
    pub name: &'c str,
    pub hooks: Vec<Hook>,
}

/// Our chains.
pub fn chains(cfg: &Config) -> Vec<Chain<'_>> {
    let chain = |table, name, hooks| Chain { table, name, hooks };
    let mut chains = vec![
        chain(Table::Nat, cfg.nat.dnat_chain.as_str(), vec![PREROUTING, OUTPUT]),
        chain(Table::Nat, cfg.nat.snat_chain.as_str(), vec![POSTROUTING]),
    ];
    if cfg.nat.hold {
        chains.push(chain(Table::Filter, cfg.nat.hold_chain.as_str(), vec![INPUT, FORWARD]));
    }
    chains
}

/// The proxy ports that forward for `open`: barman's first, then the application's. A
/// proxy without barman has no barman port: `Open::Barman` forwards nothing there.
pub fn forwarded(cfg: &Config, open: Open) -> Vec<u16> {
    match open {
        Open::None => vec![],
        Open::Barman => cfg.ports.barman.into_iter().collect(),
        Open::All => cfg.ports.barman.into_iter().chain(cfg.ports.app.iter().copied()).collect(),
    }
}

/// The rules of our two nat chains for `route`, in the form `iptables-save` prints them.
pub fn rules(cfg: &Config, route: Route) -> Rules {
    let mut rules = Rules::default();
    let node = route.node.addr();
    let pg = cfg.ports.postgres;
    let proxy = cfg.proxy;
    for port in forwarded(cfg, route.open) {
        rules.dnat.push(format!(
            "-A {} -d {proxy}/32 -p tcp -m tcp --dport {port} -j DNAT --to-destination {node}:{pg}",
            cfg.nat.dnat_chain
        ));
    }
    // With a shared address, barman connects to this host's own address: a connection to
    // the shared one, made while this host holds it, is bound to it as its source, and
    // once the address moves to the other host the node's answers, translated back to
    // it, are forwarded there: the stream stalls, unseen (its walsender stays).
    if let (Some(own), Some(port)) = (cfg.own_address, cfg.ports.barman.filter(|_| route.open != Open::None)) {
        rules.dnat.push(format!(
            "-A {} -d {own}/32 -p tcp -m tcp --dport {port} -m addrtype --src-type LOCAL -j DNAT --to-destination \
             {node}:{pg}",
            cfg.nat.dnat_chain
        ));
    }
    let snat = format!("-A {} -d {node}/32 -p tcp -m tcp --dport {pg}", cfg.nat.snat_chain);
    // With a shared address, what this host sends itself (barman) leaves from its own
    // address, so the node answers this host whichever one holds the shared address;
    // what it forwards for clients leaves from the shared one, and so survives a takeover.
    if let Some(own) = cfg.own_address {
        rules.snat.push(format!("{snat} -m addrtype --src-type LOCAL -j SNAT --to-source {own}"));
    }
    rules.snat.push(format!("{snat} -j SNAT --to-source {proxy}"));
    rules
}

/// The hold: a new connection to an application port that no DNAT rule forwarded
/// reaches this host itself, which would refuse it at once. Its first packet (SYN) is
/// dropped instead, so the client retransmits it (after ~1 s) and reaches the primary
/// once the port opens again. And a connection forwarded to a node that refuses it (a
/// primary that just died, before the rules moved) gets no RST back: conntrack forgets a
/// connection whose only answer was a RST, so the client's retransmitted SYN is routed
/// afresh, to the primary of that moment or into the hold. Only a handshake that never
/// completed loses its RST (`! --ctstatus ASSURED`): an established connection that is
/// reset still ends at once. These rules never change with the route.
pub fn hold_rules(cfg: &Config) -> Vec<String> {
    if !cfg.nat.hold {
        return Vec::new();
    }
    let (chain, proxy) = (&cfg.nat.hold_chain, cfg.proxy);
    cfg.ports
        .app
        .iter()
        .flat_map(|port| {
            [
                format!(
                    "-A {chain} -d {proxy}/32 -p tcp -m tcp --dport {port} --tcp-flags FIN,SYN,RST,ACK SYN -j DROP"
                ),
                format!(
                    "-A {chain} -p tcp -m tcp --tcp-flags RST RST -m conntrack --ctstate DNAT --ctorigdst {proxy} \
                     --ctorigdstport {port} ! --ctstatus ASSURED --ctdir REPLY -j DROP"
                ),
            ]
        })
        .collect()
}

/// The rule lines of our two nat chains, each in chain order.
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

/// An `iptables-restore --noflush` input, built table by table: each table's lines go
/// into one `*table ... COMMIT` block, the tables in the order they first come.
#[derive(Default)]
struct Transaction {
    tables: Vec<(Table, String)>,
}

impl Transaction {
    fn add(&mut self, table: Table, lines: String) {
        if lines.is_empty() {
            return;
        }
        match self.tables.iter_mut().find(|(t, _)| *t == table) {
            Some((_, text)) => text.push_str(&lines),
            None => self.tables.push((table, lines)),
        }
    }

    /// The input, or `None` when there is nothing to do.
    fn render(self) -> Option<String> {
        (!self.tables.is_empty())
            .then(|| self.tables.into_iter().map(|(table, lines)| format!("*{table}\n{lines}COMMIT\n")).collect())
    }
}

/// The `iptables-restore --noflush` input that puts everything of ours in place in one
/// transaction: our chains where missing, exactly one jump to each from its built-in
/// chain, the hold rules, and, with a route, the rules for it. Declaring a chain empties
/// it (and creates it if missing); chains not declared are left alone. The kernel moves
/// from the old rules to the new ones at once: there is no moment with no rule and none
/// with rules to two nodes. `None` when everything is in place already.
pub fn transaction(cfg: &Config, live: &Live, route: Option<Route>) -> Option<String> {
    let wanted = route.map(|r| rules(cfg, r));
    let mut transaction = Transaction::default();
    for Chain { table, name: chain, hooks } in chains(cfg) {
        let mut lines = String::new();
        let rewrite = match (table, &wanted) {
            (Table::Nat, Some(rules)) => {
                let ours = if chain == cfg.nat.dnat_chain { &rules.dnat } else { &rules.snat };
                (live.rules_of(chain) != Some(ours)).then(|| ours.clone())
            }
            (Table::Filter, _) => (live.rules_of(chain) != Some(&hold_rules(cfg))).then(|| hold_rules(cfg)),
            (Table::Nat, None) => (!live.has_chain(chain)).then(Vec::new),
        };
        if let Some(rules) = rewrite {
            lines.push_str(&format!(":{chain} - [0:0]\n"));
            for rule in rules {
                lines.push_str(&rule);
                lines.push('\n');
            }
        }
        for hook in hooks {
            let jump = format!("{} -j {chain}", hook.builtin);
            match live.jumps_to(hook, chain) {
                0 if hook.first => lines.push_str(&format!("-I {jump}\n")),
                0 => lines.push_str(&format!("-A {jump}\n")),
                n => (1..n).for_each(|_| lines.push_str(&format!("-D {jump}\n"))),
            }
        }
        transaction.add(table, lines);
    }
    transaction.render()
}

/// The transaction that removes every rule that jumps to our chains (ours, and any that
/// someone added, with conditions or from a chain of their own: the kernel keeps a chain
/// something jumps to), then the chains.
pub fn teardown_transaction(cfg: &Config, live: &Live) -> Option<String> {
    let mut transaction = Transaction::default();
    for Chain { table, name: chain, .. } in chains(cfg) {
        let mut lines = String::new();
        for jump in live.jumps.iter().filter(|j| j.table == table && j.to == chain) {
            lines.push_str(&format!("-D {} -j {chain}\n", jump.from));
        }
        for other in live.others.iter().filter(|o| o.table == table && target_of(&o.rule) == Some(chain)) {
            lines.push_str(&format!("-D {}\n", &other.rule["-A ".len()..]));
        }
        if live.has_chain(chain) {
            lines.push_str(&format!(":{chain} - [0:0]\n-X {chain}\n"));
        }
        transaction.add(table, lines);
    }
    transaction.render()
}

/// What a switch to a route does to the tables, decided without acting: the root step
/// carries it out and a dry run prints it, so the two cannot differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Switch {
    pub before: Routing,
    /// Whether the route changes (otherwise the transaction only repairs).
    pub changed: bool,
    /// The transaction; `None` when the tables hold everything already.
    pub restore: Option<String>,
    /// The connections to cut once it is applied: those proxied through ports that stop
    /// forwarding to their node (`None`: every port).
    pub cuts: Vec<(Node, Option<u16>)>,
}

/// The switch from the tables `live` holds to `route`; refused while our chains hold
/// someone else's rules.
pub fn switch(cfg: &Config, live: &Live, route: Route) -> Result<Switch> {
    live.check_ours(cfg)?;
    let before = live.routing(cfg);
    let changed = before != Routing::To(route);
    let cuts = if changed { cuts(cfg, &before, route) } else { Vec::new() };
    Ok(Switch { restore: transaction(cfg, live, Some(route)), cuts, before, changed })
}

/// Everything of ours in the kernel's tables, read from `iptables-save` output: which
/// chains exist, their rules, and the jumps to them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Live {
    /// Every chain of ours that exists, sorted.
    pub chains: Vec<LiveChain>,
    /// Every jump from a built-in chain, as often as it is there, sorted.
    pub jumps: Vec<Jump>,
    /// Every other rule that jumps or goes to one of our chains: with conditions, or from
    /// a chain of someone else's. Nobody's but the one who added it; only teardown touches
    /// them (our chains cannot go while anything jumps to them).
    pub others: Vec<OtherRule>,
}

/// A chain of ours as the kernel holds it, with its rules.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LiveChain {
    pub table: Table,
    pub name: String,
    pub rules: Vec<String>,
}

/// `-A <from> -j <to>`: a plain jump from a built-in chain to one of ours.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Jump {
    pub table: Table,
    pub from: String,
    pub to: String,
}

/// A rule of someone else's that jumps or goes to one of our chains.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OtherRule {
    pub table: Table,
    pub rule: String,
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
    /// Parses `iptables-save` output (or the excerpt `route --show` prints).
    pub fn parse(cfg: &Config, save: &str) -> Live {
        let ours = chains(cfg);
        let is_ours = |table: Table, chain: &str| ours.iter().any(|c| c.table == table && c.name == chain);
        let mut live = Live::default();
        // none of ours lives in a table other than nat and filter
        let mut table = None;
        for line in save.lines().map(str::trim_end) {
            if let Some(name) = line.strip_prefix('*') {
                table = Table::of(name);
            } else if let Some(table) = table {
                live.read(table, line, &is_ours);
            }
        }
        live.chains.sort();
        live.jumps.sort();
        live.others.sort();
        live
    }

    /// One line of `table` in iptables-save output.
    fn read(&mut self, table: Table, line: &str, is_ours: &impl Fn(Table, &str) -> bool) {
        if let Some(decl) = line.strip_prefix(':') {
            let chain = decl.split(' ').next().unwrap_or("");
            if is_ours(table, chain) {
                self.chains.push(LiveChain { table, name: chain.to_string(), rules: Vec::new() });
            }
        } else if let Some(chain) = chain_of(line) {
            if let Some(ours) = self.chains.iter_mut().find(|c| c.table == table && c.name == chain) {
                ours.rules.push(line.to_string());
            } else if let Some(target) = target_of(line).filter(|target| is_ours(table, target)) {
                match line.strip_prefix("-A ").and_then(|l| l.strip_suffix(&format!(" -j {target}"))) {
                    Some(from) if !from.contains(' ') => {
                        self.jumps.push(Jump { table, from: from.to_string(), to: target.to_string() })
                    }
                    _ => self.others.push(OtherRule { table, rule: line.to_string() }),
                }
            }
        }
    }

    /// Nothing of ours at all: no chain, and no rule that jumps to one.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.jumps.is_empty() && self.others.is_empty()
    }

    /// Everything in place, routed to `route`: what a complete switch leaves.
    pub fn installed(cfg: &Config, route: Route) -> Live {
        let rules = rules(cfg, route);
        let mut live = Live::default();
        for Chain { table, name, hooks } in chains(cfg) {
            let ours = match table {
                Table::Filter => hold_rules(cfg),
                Table::Nat if name == cfg.nat.dnat_chain => rules.dnat.clone(),
                Table::Nat => rules.snat.clone(),
            };
            live.chains.push(LiveChain { table, name: name.to_string(), rules: ours });
            for hook in hooks {
                live.jumps.push(Jump { table, from: hook.builtin.to_string(), to: name.to_string() });
            }
        }
        live.chains.sort();
        live.jumps.sort();
        live
    }

    pub fn has_chain(&self, chain: &str) -> bool {
        self.chains.iter().any(|c| c.name == chain)
    }

    fn rules_of(&self, chain: &str) -> Option<&Vec<String>> {
        self.chains.iter().find(|c| c.name == chain).map(|c| &c.rules)
    }

    pub fn jumps_to(&self, hook: Hook, chain: &str) -> usize {
        self.jumps.iter().filter(|j| j.table == hook.table && j.from == hook.builtin && j.to == chain).count()
    }

    /// The rules of the two nat chains.
    pub fn rules(&self, cfg: &Config) -> Rules {
        let of = |chain: &str| self.rules_of(chain).cloned().unwrap_or_default();
        Rules { dnat: of(&cfg.nat.dnat_chain), snat: of(&cfg.nat.snat_chain) }
    }

    /// Rules in our chains that repmgr-nat would never write, for any route: someone else's.
    /// Nothing is emptied while there are any.
    pub fn foreign(&self, cfg: &Config) -> Vec<String> {
        let mut ours: Vec<String> = hold_rules(cfg);
        for node in &cfg.nodes {
            let rules = rules(cfg, Route::new(*node, Open::All));
            ours.extend(rules.dnat);
            ours.extend(rules.snat);
        }
        self.chains.iter().flat_map(|c| &c.rules).filter(|rule| !ours.contains(rule)).cloned().collect()
    }

    /// Refuses tables whose chains hold someone else's rules.
    pub fn check_ours(&self, cfg: &Config) -> Result<()> {
        match self.foreign(cfg).first() {
            None => Ok(()),
            Some(rule) => bail!(
                "our chains hold rules repmgr-nat does not write, such as {rule:?}: nothing is changed; remove \
                 them, or name chains of repmgr-nat's own in nat.*_chain"
            ),
        }
    }

    /// Recognises the rules as one of the routes repmgr-nat renders.
    pub fn routing(&self, cfg: &Config) -> Routing {
        let live = self.rules(cfg);
        if live.is_empty() {
            return Routing::Nothing;
        }
        for node in &cfg.nodes {
            // (without barman, `None` and `Barman` are the same rules: read as `None`)
            for open in [Open::All, Open::None, Open::Barman] {
                let route = Route { node: *node, open };
                if rules(cfg, route) == live {
                    return Routing::To(route);
                }
            }
        }
        Routing::Unrecognised
    }

    /// Every built-in chain, our chain it should jump to, and how many such jumps it has.
    pub fn jump_counts<'c>(&self, cfg: &'c Config) -> Vec<(&'static str, &'c str, usize)> {
        chains(cfg)
            .into_iter()
            .flat_map(|chain| chain.hooks.into_iter().map(move |hook| (hook, chain.name)))
            .map(|(hook, chain)| (hook.builtin, chain, self.jumps_to(hook, chain)))
            .collect()
    }

    /// Our chains exist, each is jumped to exactly once, and the hold rules are right:
    /// nothing but the route may need a switch.
    pub fn in_place(&self, cfg: &Config) -> bool {
        chains(cfg).iter().all(|chain| self.has_chain(chain.name))
            && self.jump_counts(cfg).iter().all(|(_, _, n)| *n == 1)
            && (!cfg.nat.hold || self.rules_of(&cfg.nat.hold_chain) == Some(&hold_rules(cfg)))
    }

    /// The lines `route --show` prints: our chains, their rules and the jumps to them,
    /// as an `iptables-save` excerpt that `parse` reads back.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // nat first, as iptables-save prints them
        for table in [Table::Nat, Table::Filter] {
            let chains: Vec<&LiveChain> = self.chains.iter().filter(|c| c.table == table).collect();
            let jumps: Vec<&Jump> = self.jumps.iter().filter(|j| j.table == table).collect();
            let others: Vec<&OtherRule> = self.others.iter().filter(|o| o.table == table).collect();
            if chains.is_empty() && jumps.is_empty() && others.is_empty() {
                continue;
            }
            text.push_str(&format!("*{table}\n"));
            for chain in &chains {
                text.push_str(&format!(":{} - [0:0]\n", chain.name));
            }
            for jump in jumps {
                text.push_str(&format!("-A {} -j {}\n", jump.from, jump.to));
            }
            for rule in others.iter().map(|o| &o.rule).chain(chains.iter().flat_map(|c| &c.rules)) {
                text.push_str(rule);
                text.push('\n');
            }
            text.push_str("COMMIT\n");
        }
        text
    }
}

/// Connections to cut when the chains switch from `before` to `after`: those proxied to
/// a node through a port that no longer forwards to it. `None` as the port means every
/// proxied connection to the node. When the old rules are unknown, every other node's.
pub fn cuts(cfg: &Config, before: &Routing, after: Route) -> Vec<(Node, Option<u16>)> {
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
            cfg.nodes.iter().filter(|n| **n != after.node).map(|n| (*n, None)).collect()
        }
    }
}

fn chain_of(line: &str) -> Option<&str> {
    line.strip_prefix("-A ")?.split(' ').next()
}

/// The chain a rule jumps (`-j`) or goes (`-g`) to: the last such option, as iptables-save
/// prints the target after every match.
fn target_of(line: &str) -> Option<&str> {
    let words: Vec<&str> = line.split(' ').collect();
    words.windows(2).rev().find(|w| w[0] == "-j" || w[0] == "-g").map(|w| w[1])
}

#[cfg(test)]
pub mod sim;

#[cfg(test)]
mod tests {
    use super::sim::Tables;
    use super::*;
    use crate::core::config::tests::{example, node, second_proxy, three_nodes};

    /// From empty tables: our chains, the route's rules, the jumps, the hold.
    const TO_2_ALL: &str = "\
*nat
:repmgr_dnat - [0:0]
-A repmgr_dnat -d 10.8.3.1/32 -p tcp -m tcp --dport 54321 -j DNAT --to-destination 10.8.2.1:5432
-A repmgr_dnat -d 10.8.3.1/32 -p tcp -m tcp --dport 54322 -j DNAT --to-destination 10.8.2.1:5432
-A PREROUTING -j repmgr_dnat
-A OUTPUT -j repmgr_dnat
:repmgr_snat - [0:0]
-A repmgr_snat -d 10.8.2.1/32 -p tcp -m tcp --dport 5432 -j SNAT --to-source 10.8.3.1
-A POSTROUTING -j repmgr_snat
COMMIT
*filter
:repmgr_hold - [0:0]
-A repmgr_hold -d 10.8.3.1/32 -p tcp -m tcp --dport 54322 --tcp-flags FIN,SYN,RST,ACK SYN -j DROP
-A repmgr_hold -p tcp -m tcp --tcp-flags RST RST -m conntrack --ctstate DNAT --ctorigdst 10.8.3.1 --ctorigdstport 54322 ! --ctstatus ASSURED --ctdir REPLY -j DROP
-I INPUT -j repmgr_hold
-I FORWARD -j repmgr_hold
COMMIT
";

    fn route(id: u32, open: Open) -> Route {
        Route::new(node(id), open)
    }

    /// The tables after applying `transaction` to `tables` (which must succeed).
    fn switched(cfg: &Config, tables: &Tables, to: Option<Route>) -> Tables {
        let live = Live::parse(cfg, &tables.save());
        match transaction(cfg, &live, to) {
            Some(text) => tables.restore(&text).unwrap_or_else(|e| panic!("{e}\n{text}")),
            None => tables.clone(),
        }
    }

    #[test]
    fn a_switch_plans_the_transaction_and_cuts_only_when_the_route_changes() {
        let cfg = example();
        let live = Live::installed(&cfg, route(1, Open::All));
        let plan = switch(&cfg, &live, route(2, Open::All)).unwrap();
        assert_eq!(plan.before, Routing::To(route(1, Open::All)));
        assert!(plan.changed);
        assert_eq!(plan.restore, transaction(&cfg, &live, Some(route(2, Open::All))));
        assert_eq!(plan.cuts, [(node(1), None)]);
        let plan = switch(&cfg, &live, route(1, Open::All)).unwrap();
        assert_eq!((plan.changed, plan.restore, plan.cuts), (false, None, vec![]));
        let foreign = Live::parse(&cfg, &format!("{}*nat\n-A repmgr_snat -j ACCEPT\nCOMMIT\n", live.render()));
        assert!(switch(&cfg, &foreign, route(2, Open::All)).is_err(), "someone else's rule was emptied");
    }

    #[test]
    fn golden_transaction_from_empty_tables() {
        let cfg = example();
        assert_eq!(transaction(&cfg, &Live::default(), Some(route(2, Open::All))).unwrap(), TO_2_ALL);
    }

    #[test]
    fn a_switch_rewrites_only_the_nat_chains_once_in_place() {
        let cfg = example();
        let tables = switched(&cfg, &Tables::default(), Some(route(1, Open::All)));
        let live = Live::parse(&cfg, &tables.save());
        assert!(live.in_place(&cfg));
        assert_eq!(
            transaction(&cfg, &live, Some(route(1, Open::Barman))).unwrap(),
            "\
*nat
:repmgr_dnat - [0:0]
-A repmgr_dnat -d 10.8.3.1/32 -p tcp -m tcp --dport 54321 -j DNAT --to-destination 10.8.1.1:5432
COMMIT
"
        );
        assert_eq!(
            transaction(&cfg, &live, Some(route(2, Open::None))).unwrap(),
            "\
*nat
:repmgr_dnat - [0:0]
:repmgr_snat - [0:0]
-A repmgr_snat -d 10.8.2.1/32 -p tcp -m tcp --dport 5432 -j SNAT --to-source 10.8.3.1
COMMIT
"
        );
        assert_eq!(transaction(&cfg, &live, Some(route(1, Open::All))), None, "nothing to do");
        assert_eq!(transaction(&cfg, &live, None), None, "setup over a complete install");
    }

    #[test]
    fn every_route_from_any_state_ends_in_exactly_that_route_and_nothing_else() {
        let cfg = three_nodes();
        let mut routes = vec![None];
        for id in 1..=3 {
            for open in [Open::None, Open::Barman, Open::All] {
                routes.push(Some(route(id, open)));
            }
        }
        // another tool's rules, which must survive everything
        let foreign = Tables::default()
            .restore("*nat\n:DOCKER - [0:0]\n-A PREROUTING -j DOCKER\n-A DOCKER -p tcp -j RETURN\nCOMMIT\n")
            .unwrap();
        for from in &routes {
            let start = switched(&cfg, &foreign, *from);
            for to in routes.iter().flatten() {
                let after = switched(&cfg, &start, Some(*to));
                let live = Live::parse(&cfg, &after.save());
                assert_eq!(live.routing(&cfg), Routing::To(*to), "{from:?} -> {to:?}");
                assert!(live.in_place(&cfg), "{from:?} -> {to:?}");
                assert_eq!(after.tables["nat"]["DOCKER"], ["-A DOCKER -p tcp -j RETURN"]);
                assert_eq!(after.tables["nat"]["PREROUTING"][0], "-A PREROUTING -j DOCKER");
                for rule in after.save().lines().filter(|l| l.contains("-j DNAT") || l.contains("-j SNAT")) {
                    assert!(rule.contains(&to.node.addr().to_string()), "{rule} is not for {to}");
                }
            }
        }
    }

    /// `iptables-save` as the article's scripts leave it: chains, jumps and the rules for
    /// db1 with both ports open.
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
    fn setup_adopts_the_chains_the_scripts_left_and_adds_only_the_hold() {
        let cfg = example();
        let live = Live::parse(&cfg, SAVED_BY_SCRIPTS);
        assert_eq!(live.routing(&cfg), Routing::To(route(1, Open::All)));
        assert!(!live.in_place(&cfg), "no hold yet");
        assert_eq!(
            transaction(&cfg, &live, None).unwrap(),
            "\
*filter
:repmgr_hold - [0:0]
-A repmgr_hold -d 10.8.3.1/32 -p tcp -m tcp --dport 54322 --tcp-flags FIN,SYN,RST,ACK SYN -j DROP
-A repmgr_hold -p tcp -m tcp --tcp-flags RST RST -m conntrack --ctstate DNAT --ctorigdst 10.8.3.1 --ctorigdstport 54322 ! --ctstatus ASSURED --ctdir REPLY -j DROP
-I INPUT -j repmgr_hold
-I FORWARD -j repmgr_hold
COMMIT
"
        );
        // the scripts' @reboot step run twice: every jump twice
        let doubled =
            SAVED_BY_SCRIPTS.replace("-A OUTPUT -j repmgr_dnat\n", "-A OUTPUT -j repmgr_dnat\n".repeat(2).as_str());
        let mut no_hold = cfg.clone();
        no_hold.nat.hold = false;
        assert_eq!(
            transaction(&no_hold, &Live::parse(&no_hold, &doubled), None).unwrap(),
            "*nat\n-D OUTPUT -j repmgr_dnat\nCOMMIT\n"
        );
    }

    #[test]
    fn installed_is_what_a_switch_leaves() {
        let cfg = example();
        let tables = switched(&cfg, &Tables::default(), Some(route(2, Open::Barman)));
        assert_eq!(Live::parse(&cfg, &tables.save()), Live::installed(&cfg, route(2, Open::Barman)));
    }

    #[test]
    fn show_output_reads_back_to_the_same_state() {
        let cfg = example();
        let tables = switched(&cfg, &Tables::default(), Some(route(2, Open::All)));
        let live = Live::parse(&cfg, &tables.save());
        assert_eq!(Live::parse(&cfg, &live.render()), live);
        let live = Live::parse(&cfg, SAVED_BY_SCRIPTS);
        assert_eq!(Live::parse(&cfg, &live.render()), live);
    }

    #[test]
    fn teardown_leaves_nothing_of_ours_and_everything_else() {
        let cfg = example();
        let foreign = Tables::default()
            .restore(
                "*nat\n:DOCKER - [0:0]\n-A PREROUTING -j DOCKER\nCOMMIT\n*filter\n-A INPUT -p icmp -j ACCEPT\nCOMMIT\n",
            )
            .unwrap();
        let tables = switched(&cfg, &foreign, Some(route(2, Open::All)));
        let doubled = tables.restore("*nat\n-A OUTPUT -j repmgr_dnat\nCOMMIT\n").unwrap();
        let text = teardown_transaction(&cfg, &Live::parse(&cfg, &doubled.save())).unwrap();
        assert_eq!(doubled.restore(&text).unwrap(), foreign);
        assert_eq!(teardown_transaction(&cfg, &Live::parse(&cfg, &foreign.save())), None);
    }

    #[test]
    fn teardown_removes_the_jumps_someone_added_with_conditions_or_from_their_own_chains() {
        let cfg = example();
        let foreign = Tables::default().restore("*nat\n:mine - [0:0]\n-A PREROUTING -j mine\nCOMMIT\n").unwrap();
        let tables = switched(&cfg, &foreign, Some(route(2, Open::All)));
        let added = tables
            .restore(
                "*nat\n-A PREROUTING -p tcp -j repmgr_dnat\n-I PREROUTING -i lo -m comment --comment \"to -j them\" \
                 -j repmgr_dnat\n-A mine -j repmgr_snat\n-A mine -s 10.0.0.0/8 -g repmgr_dnat\nCOMMIT\n*filter\n\
                 -A FORWARD -p tcp -j repmgr_hold\nCOMMIT\n",
            )
            .unwrap();
        let live = Live::parse(&cfg, &added.save());
        assert!(live.in_place(&cfg), "conditional jumps are not the ones setup keeps");
        assert_eq!(Live::parse(&cfg, &live.render()), live, "route --show shows them");
        let text = teardown_transaction(&cfg, &live).unwrap();
        assert_eq!(added.restore(&text), Ok(foreign));
    }

    #[test]
    fn rules_nobody_but_repmgr_nat_writes_are_ours_and_others_are_not() {
        let cfg = example();
        let live = Live::parse(&cfg, SAVED_BY_SCRIPTS);
        assert_eq!(live.foreign(&cfg), Vec::<String>::new(), "the scripts' rules are the same as ours");
        let half = SAVED_BY_SCRIPTS
            .replace("54321 -j DNAT --to-destination 10.8.1.1", "54321 -j DNAT --to-destination 10.8.2.1");
        assert!(Live::parse(&cfg, &half).check_ours(&cfg).is_ok(), "a mix of our rules is still ours");
        let theirs = SAVED_BY_SCRIPTS.replace("COMMIT\n#", "-A repmgr_dnat -p tcp --dport 80 -j ACCEPT\nCOMMIT\n#");
        let err = Live::parse(&cfg, &theirs).check_ours(&cfg).unwrap_err().to_string();
        assert!(err.contains("\"-A repmgr_dnat -p tcp --dport 80 -j ACCEPT\""), "{err}");
        let elsewhere = SAVED_BY_SCRIPTS.replace("--to-destination 10.8.1.1:5432", "--to-destination 10.9.9.9:5432");
        assert_eq!(Live::parse(&cfg, &elsewhere).foreign(&cfg).len(), 2, "a node the config does not list");
    }

    #[test]
    fn recognises_nothing_duplicates_and_foreign_rules() {
        let cfg = example();
        let empty = Live::parse(&cfg, "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n");
        assert!(!empty.has_chain("repmgr_dnat") && !empty.has_chain("repmgr_snat"));
        assert_eq!(empty.routing(&cfg), Routing::Nothing);

        let doubled = SAVED_BY_SCRIPTS
            .replace("-A OUTPUT -j repmgr_dnat\n", "-A OUTPUT -j repmgr_dnat\n-A OUTPUT -j repmgr_dnat\n");
        let live = Live::parse(&cfg, &doubled);
        assert_eq!(live.jumps_to(OUTPUT, "repmgr_dnat"), 2);

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

    /// The first of two proxy hosts sharing 10.8.3.1, with barman: barman reaches the
    /// primary through this host's own address (locally only), so its stream does not
    /// depend on which host holds the shared one.
    #[test]
    fn barman_on_a_proxy_sharing_its_address_connects_to_its_own() {
        let text = crate::core::config::tests::EXAMPLE
            .replace("address = \"10.8.3.1\"", "address = \"10.8.3.1\"\nown_address = \"10.8.3.2\"");
        let cfg = Config::parse(&text).unwrap();
        let own = "-A repmgr_dnat -d 10.8.3.2/32 -p tcp -m tcp --dport 54321 -m addrtype --src-type LOCAL -j DNAT \
                   --to-destination 10.8.2.1:5432";
        for open in [Open::All, Open::Barman] {
            let tables = switched(&cfg, &Tables::default(), Some(route(2, open)));
            let live = Live::parse(&cfg, &tables.save());
            assert!(live.rules(&cfg).dnat.contains(&own.to_string()), "{:?}", live.rules(&cfg));
            assert_eq!(live.routing(&cfg), Routing::To(route(2, open)));
            assert!(live.in_place(&cfg) && live.foreign(&cfg).is_empty());
        }
        let closed = rules(&cfg, route(2, Open::None));
        assert!(closed.dnat.is_empty(), "{closed:?}");
    }

    /// The second of two proxy hosts sharing 10.8.3.1: no barman port; what it forwards
    /// leaves from the shared address, what it sends itself from its own.
    #[test]
    fn a_proxy_sharing_its_address_without_barman() {
        let cfg = second_proxy();
        let tables = switched(&cfg, &Tables::default(), Some(route(2, Open::All)));
        let live = Live::parse(&cfg, &tables.save());
        assert_eq!(
            live.rules(&cfg),
            Rules {
                dnat: vec![
                    "-A repmgr_dnat -d 10.8.3.1/32 -p tcp -m tcp --dport 54322 -j DNAT --to-destination 10.8.2.1:5432"
                        .into()
                ],
                snat: vec![
                    "-A repmgr_snat -d 10.8.2.1/32 -p tcp -m tcp --dport 5432 -m addrtype --src-type LOCAL -j SNAT \
                     --to-source 10.8.3.3"
                        .into(),
                    "-A repmgr_snat -d 10.8.2.1/32 -p tcp -m tcp --dport 5432 -j SNAT --to-source 10.8.3.1".into(),
                ],
            }
        );
        assert_eq!(live.routing(&cfg), Routing::To(route(2, Open::All)));
        assert!(live.in_place(&cfg) && live.foreign(&cfg).is_empty());
        // barman's port alone is no port at all here: read back as closed
        for open in [Open::Barman, Open::None] {
            let closed = Live::parse(&cfg, &switched(&cfg, &tables, Some(route(2, open))).save());
            assert_eq!(closed.routing(&cfg), Routing::To(route(2, Open::None)));
            assert!(closed.rules(&cfg).dnat.is_empty());
        }
        // the rules of a proxy with no address of its own are someone else's here
        let single =
            Live::parse(&example(), &switched(&example(), &Tables::default(), Some(route(2, Open::All))).save());
        assert!(!single.foreign(&cfg).is_empty());
    }

    #[test]
    fn every_rule_names_one_node() {
        let mut cfg = example();
        cfg.ports.app = vec![54322, 54323, 54324];
        for id in cfg.nodes.clone() {
            for open in [Open::None, Open::Barman, Open::All] {
                let rules = rules(&cfg, Route { node: id, open });
                for line in rules.dnat.iter().chain(&rules.snat) {
                    assert!(line.contains(&id.addr().to_string()), "{line} does not name node {}", id.id());
                    for other in cfg.nodes.iter().filter(|o| **o != id) {
                        assert!(!line.contains(&format!("{}/", other.addr())), "{line}");
                        assert!(!line.contains(&format!("{}:", other.addr())), "{line}");
                    }
                }
                let forwards = rules.dnat.len();
                assert_eq!(forwards, forwarded(&cfg, open).len());
            }
        }
        assert_eq!(hold_rules(&cfg).len(), 6, "two hold rules per application port: its SYN, its node's RST");
    }

    #[test]
    fn a_switch_cuts_what_no_longer_forwards() {
        let cfg = three_nodes();
        let r = |id, open| Route::new(node(id), open);
        let to = |node, open| Routing::To(r(node, open));
        // failover: everything proxied to the former primary
        assert_eq!(cuts(&cfg, &to(1, Open::All), r(2, Open::Barman)), [(node(1), None)]);
        // opening the application port cuts nothing
        assert_eq!(cuts(&cfg, &to(2, Open::Barman), r(2, Open::All)), []);
        assert_eq!(cuts(&cfg, &to(2, Open::All), r(2, Open::All)), []);
        // closing the application port of the same node cuts only that port
        assert_eq!(cuts(&cfg, &to(2, Open::All), r(2, Open::Barman)), [(node(2), Some(54322))]);
        // closing every port of a node that became a standby
        assert_eq!(cuts(&cfg, &to(2, Open::All), r(2, Open::None)), [(node(2), None)]);
        assert_eq!(cuts(&cfg, &to(1, Open::None), r(2, Open::Barman)), []);
        // unknown rules (after a flush, or edited by hand): every other node
        assert_eq!(cuts(&cfg, &Routing::Nothing, r(2, Open::Barman)), [(node(1), None), (node(3), None)]);
        assert_eq!(cuts(&cfg, &Routing::Unrecognised, r(1, Open::All)), [(node(2), None), (node(3), None)]);
    }
}
