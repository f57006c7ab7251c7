//! `repmgr-nat check`: the verdicts. What was found (the config file's trust, sudo's
//! answers, the state directory, watch's report, each node's settings, barman's server,
//! the kernel's tables) goes in as `Facts`; one line per check comes out, each OK, or
//! FAILED with why and what to change. Pure: the command gathers, this judges.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::core::config::{Config, Node, SslMode};
use crate::core::ruleset::{self, Live};
use crate::core::view::Answer;
use crate::core::watch_json::WatchReport;

pub mod two_proxies;

/// The version of the JSON document `check --json` prints; it grows when a field's
/// meaning changes, not when a field is added.
pub const JSON_VERSION: u32 = 1;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    /// Works, but not as it should in production (TLS without the node's name checked).
    Warn,
    Failed,
}

/// One check: what was checked, and the verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Line {
    pub name: String,
    pub ok: bool,
    pub level: Level,
    /// Why, and what to change (empty when there is nothing to say).
    pub detail: String,
}

impl Line {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Line {
        Line { name: name.into(), ok: true, level: Level::Ok, detail: detail.into() }
    }

    fn warn(name: impl Into<String>, detail: impl Into<String>) -> Line {
        Line { name: name.into(), ok: true, level: Level::Warn, detail: detail.into() }
    }

    fn failed(name: impl Into<String>, detail: impl Into<String>) -> Line {
        Line { name: name.into(), ok: false, level: Level::Failed, detail: detail.into() }
    }

    fn judged(name: impl Into<String>, verdict: Result<String, String>) -> Line {
        match verdict {
            Ok(detail) => Line::ok(name, detail),
            Err(why) => Line::failed(name, why),
        }
    }
}

/// Every line of one run of `check`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub version: u32,
    pub checks: Vec<Line>,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.checks.iter().filter(|line| !line.ok).count()
    }

    /// `OK  <what>`, `WARN  <what>: why`, `FAILED  <what>: why, and what to change`.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for line in &self.checks {
            let level = match line.level {
                Level::Ok => "OK",
                Level::Warn => "WARN",
                Level::Failed => "FAILED",
            };
            let _ = match line.detail.is_empty() {
                true => writeln!(text, "{level}  {}", line.name),
                false => writeln!(text, "{level}  {}: {}", line.name, escape(&line.detail)),
            };
        }
        text
    }
}

/// The states of a Nagios plugin (Icinga's, NRPE's), which are its exit codes.
pub mod plugin {
    pub const OK: u8 = 0;
    pub const WARNING: u8 = 1;
    pub const CRITICAL: u8 = 2;
    pub const UNKNOWN: u8 = 3;
}

impl Report {
    /// The report as a Nagios plugin prints it, and the plugin's state: a first line
    /// `SERVICE STATE - what failed (or warns) | performance data`, then the lines of
    /// `to_text` as the long output. CRITICAL when a check failed, WARNING when one warns.
    pub fn to_nagios(&self, service: &str) -> (String, u8) {
        let named = |level: Level| -> Vec<&str> {
            self.checks.iter().filter(|l| l.level == level).map(|l| l.name.as_str()).collect()
        };
        let (failed, warned, total) = (named(Level::Failed), named(Level::Warn), self.checks.len());
        let (state, code, summary) = match (failed.is_empty(), warned.is_empty()) {
            (false, _) => (
                "CRITICAL",
                plugin::CRITICAL,
                format!("{} of {total} checks failed: {}", failed.len(), failed.join("; ")),
            ),
            (true, false) => {
                ("WARNING", plugin::WARNING, format!("{} of {total} checks warn: {}", warned.len(), warned.join("; ")))
            }
            (true, true) => ("OK", plugin::OK, format!("{total} checks OK")),
        };
        let perf = format!("checks={total};;;0 failed={};;;0 warnings={};;;0", failed.len(), warned.len());
        // `|` starts a plugin's performance data, wherever it stands
        let clean = |text: &str| text.replace('|', "/");
        (format!("{service} {state} - {} | {perf}\n{}", clean(&summary), clean(&self.to_text())), code)
    }
}

/// What a Nagios plugin prints when it could not check at all (state UNKNOWN).
pub fn nagios_unknown(service: &str, why: &str) -> String {
    format!("{service} UNKNOWN - {}\n", escape(why).replace('|', "/"))
}

/// Control characters (from a server's message, barman's output) escaped: one line each.
fn escape(text: &str) -> String {
    text.chars().flat_map(|c| if c.is_control() { c.escape_default().collect() } else { vec![c] }).collect()
}

/// sudo's answer for one command line repmgr-nat runs through it: None when admitted,
/// else what sudo said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SudoAnswer {
    pub command: String,
    pub refused: Option<String>,
}

/// What sudo admits, asked for repmgr's OS user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sudo {
    pub user: String,
    /// The program `route` runs as (the path sudoers names).
    pub program: String,
    /// `route` (to each node, each ports value) and `route --show`.
    pub route: Vec<SudoAnswer>,
    /// barman's three commands for this config's server (none without `[barman]`).
    pub barman: Vec<SudoAnswer>,
    /// `route --show --follow`, which watch reads the tables through when sudo admits it.
    pub follow: SudoAnswer,
}

/// A node's settings and the grants of repmgr-nat's role there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSettings {
    pub superuser: bool,
    pub replication: bool,
    pub signal_backend: bool,
    pub read_all_stats: bool,
    /// `max_slot_wal_keep_size` in MB; -1 when unlimited (the default).
    pub max_slot_wal_keep_size_mb: i64,
    pub wal_level: String,
    pub max_replication_slots: i64,
    pub slots_used: i64,
    /// barman's slot exists there.
    pub has_slot: bool,
    /// The connection is encrypted.
    pub ssl: bool,
    pub in_recovery: bool,
    /// The database repmgr-nat connects to (`postgres.dbname`).
    pub database: String,
    pub repmgr_nodes: RepmgrNodes,
}

/// repmgr's metadata in the database repmgr-nat connects to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepmgrNodes {
    /// No `repmgr.nodes` there: Patroni, or repmgr's schema in another database.
    Absent,
    /// There, but the role may not read it.
    Unreadable,
    /// `node_id` and `conninfo` of each row.
    Rows(Vec<(i64, String)>),
}

/// `barman show-server <server>`: its settings, and the file that holds its section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BarmanServer {
    pub settings: BTreeMap<String, String>,
    pub file: Option<PathBuf>,
    /// `barman check <server>`: the lines it failed, or why it could not run.
    pub check: Result<Vec<String>, String>,
}

/// Everything `check` found. A part that was not asked (root-only, or the repmgr user's
/// only) is None and gives no line.
#[derive(Clone, Debug)]
pub struct Facts {
    pub config_path: PathBuf,
    /// The config file as the root step opens it: root's, writable only by root, and so
    /// every directory above it.
    pub config_trusted: Result<(), String>,
    pub sudo: Option<Result<Sudo, String>>,
    /// The state directory is root's and the run lock opens.
    pub state: Result<(), String>,
    pub torn_down: bool,
    pub watch: Option<WatchReport>,
    pub watch_running: bool,
    pub now_ms: u64,
    /// Each node's answer (as repmgr's OS user only: root does not talk to the nodes).
    pub nodes: Option<Vec<(Node, Result<NodeSettings, Answer>)>>,
    /// As root, with `[barman]`.
    pub barman: Option<Result<BarmanServer, String>>,
    /// With systemd: each unit of the package and what `systemctl is-enabled` says of it.
    pub units: Option<Vec<(String, String)>>,
    /// The programs repmgr-nat runs, and whether each is installed.
    pub tools: Vec<(String, bool)>,
    /// `/proc/sys/net/ipv4/ip_forward` is 1.
    pub forwarding: Result<bool, String>,
    /// Our chains, as `route --show` (or root's own reading) gives them.
    pub live: Result<Live, String>,
    /// The nat table in whole (root only): for rules that shadow our jumps.
    pub nat_save: Option<Result<String, String>>,
    /// With `proxy.own_address`: keepalived, conntrackd and the kernel's conntrack settings.
    pub two_proxies: Option<two_proxies::TwoProxies>,
    /// The IPv4 addresses of the host names repmgr's conninfos give (those that are neither
    /// an address nor a node's `name`).
    pub resolved: BTreeMap<String, Vec<Ipv4Addr>>,
    /// The host's other instances (`--instance`), each config as read, or why it cannot be:
    /// one that cannot is compared with no other.
    pub instances: Vec<(String, Result<(), String>)>,
}

/// The verdicts, in the order an operator fixes things.
pub fn assess(cfg: &Config, facts: &Facts) -> Report {
    let path = facts.config_path.display().to_string();
    let mut checks = vec![Line::judged(
        format!("config {path} as the root step reads it"),
        facts.config_trusted.clone().map(|()| "root's, writable only by root, and so is every directory above it".into()).map_err(
            |why| format!("{why}; `route` (run through sudo) refuses it: chown root:root and chmod 0644 it, and the directories above it"),
        ),
    )];
    if let Some(sudo) = &facts.sudo {
        checks.extend(sudo_lines(cfg, sudo));
    }
    if !facts.instances.is_empty() {
        checks.push(instances_line(&facts.instances));
    }
    checks.push(state_line(cfg, facts));
    if let Some(units) = &facts.units {
        checks.push(units_line(units));
    }
    checks.push(watch_line(cfg, facts));
    if let Some(nodes) = &facts.nodes {
        for (node, answer) in nodes {
            checks.extend(node_lines(cfg, &path, *node, answer));
        }
    }
    if let Some(line) = facts.nodes.as_ref().and_then(|nodes| repmgr_line(cfg, &path, nodes, &facts.resolved)) {
        checks.push(line);
    }
    if let (Some(barman), Some(server)) = (&cfg.barman, &facts.barman) {
        checks.extend(barman_lines(cfg, &path, &barman.server, server));
    }
    checks.push(tools_line(&facts.tools));
    checks.push(forwarding_line(&facts.forwarding));
    if let (Some(_), Some(found)) = (cfg.own_address, &facts.two_proxies) {
        checks.extend(two_proxies::lines(cfg.proxy, found));
    }
    checks.extend(chain_lines(cfg, &facts.live));
    if let Some(save) = &facts.nat_save {
        checks.push(shadow_line(cfg, save));
    }
    Report { version: JSON_VERSION, checks }
}

const SUDOERS: &str = "/etc/sudoers.d/repmgr-nat";

/// The other instances: each config must be usable (or it is compared with no other) and
/// claim nothing this one claims (a newcomer that does is refused; this one, routed before,
/// goes on).
fn instances_line(instances: &[(String, Result<(), String>)]) -> Line {
    let names: Vec<&str> = instances.iter().map(|(name, _)| name.as_str()).collect();
    let name = format!("the other instances of this host ({}) share nothing with this one", names.join(", "));
    let broken: Vec<String> = instances
        .iter()
        .filter_map(|(name, read)| read.as_ref().err().map(|why| format!("instance {name}: {why}")))
        .collect();
    match broken.is_empty() {
        true => Line::ok(name, ""),
        false => Line::failed(
            name,
            format!("{}; fix it (repmgr-nat --instance NAME check says more), or remove the file", broken.join("; ")),
        ),
    }
}

fn sudo_lines(cfg: &Config, sudo: &Result<Sudo, String>) -> Vec<Line> {
    let sudo = match sudo {
        Ok(sudo) => sudo,
        Err(why) => return vec![Line::failed("sudo admits what repmgr-nat runs", why.clone())],
    };
    // every line refused for the same reason (a program not installed, no grant at all): once
    let refused = |answers: &[SudoAnswer]| -> Vec<String> {
        let reasons: Vec<&String> = answers.iter().filter_map(|a| a.refused.as_ref()).collect();
        match (answers.first(), reasons.first()) {
            (Some(first), Some(said))
                if answers.len() > 1 && reasons.len() == answers.len() && reasons.iter().all(|r| r == said) =>
            {
                vec![format!("all {} command lines ({said}), such as {}", answers.len(), first.command)]
            }
            _ => answers
                .iter()
                .filter_map(|a| a.refused.as_ref().map(|said| format!("{} ({said})", a.command)))
                .collect(),
        }
    };
    let user = &sudo.user;
    let mut lines = Vec::new();
    let name = format!("sudo admits {user}'s route commands");
    lines.push(match refused(&sudo.route)[..] {
        [] => Line::ok(name, format!("{} command lines", sudo.route.len())),
        ref refused => Line::failed(
            name,
            format!(
                "refused: {}; edit {SUDOERS} (visudo -f {SUDOERS}): its route lines must name {user} and {}",
                refused.join("; "),
                sudo.program
            ),
        ),
    });
    let name = format!("sudo admits {user}'s follow of the tables");
    lines.push(match &sudo.follow.refused {
        None => Line::ok(name, "watch follows the tables: a reading whenever they change"),
        Some(said) => Line::warn(
            name,
            format!(
                "refused ({said}): watch reads the tables through sudo twice a second instead (three processes \
                 each time); the packaged {SUDOERS} admits `{}`",
                sudo.follow.command
            ),
        ),
    });
    if let Some(barman) = &cfg.barman {
        let name = format!("sudo admits {user}'s barman commands for server {}", barman.server);
        lines.push(match refused(&sudo.barman)[..] {
            [] => Line::ok(name, format!("{} command lines, as {}", sudo.barman.len(), barman.user)),
            ref refused => Line::failed(
                name,
                format!(
                    "refused: {}; edit {SUDOERS} (visudo -f {SUDOERS}): its barman lines must name {user}, the user {}, {} and the server {} (barman.server in the config)",
                    refused.join("; "),
                    barman.user,
                    barman.command.display(),
                    barman.server
                ),
            ),
        });
    }
    lines
}

fn state_line(cfg: &Config, facts: &Facts) -> Line {
    let dir = cfg.state.dir.display();
    let name = format!("state dir {dir} and run lock");
    match (&facts.state, facts.torn_down) {
        (Err(why), _) if why.contains("Permission denied") => Line::failed(
            name,
            format!(
                "{why}; only root and the group of repmgr.user ({}) may open it: run check as one of them",
                cfg.repmgr_user
            ),
        ),
        (Err(why), _) => Line::failed(name, format!("{why}; run `repmgr-nat setup` as root (it makes both)")),
        (Ok(()), true) => Line::failed(
            name,
            format!("{dir}/torn-down: `repmgr-nat teardown` ran, and no switch happens until `repmgr-nat setup` runs"),
        ),
        (Ok(()), false) => Line::ok(name, "root's; the run lock opens"),
    }
}

fn units_line(units: &[(String, String)]) -> Line {
    let names: Vec<&str> = units.iter().map(|(unit, _)| unit.as_str()).collect();
    let name = format!("{} enabled", names.join(" and "));
    let wrong: Vec<String> = units
        .iter()
        .filter(|(_, state)| state != "enabled")
        .map(|(unit, state)| format!("{unit} is {state}"))
        .collect();
    match wrong.is_empty() {
        true => Line::ok(name, ""),
        false => Line::failed(
            name,
            format!(
                "{}: the rules are not put back at boot, or nothing follows a failover without events; systemctl \
                 enable --now {}",
                wrong.join(", "),
                names.join(" ")
            ),
        ),
    }
}

fn watch_line(cfg: &Config, facts: &Facts) -> Line {
    let file = cfg.watch.dir.join(WatchReport::FILE);
    let name = "watch runs and its last pass is fresh";
    let start = "systemctl enable --now repmgr-nat-watch (journalctl -u repmgr-nat-watch says why it stopped)";
    match &facts.watch {
        None => Line::failed(name, format!("no {}: watch does not run here; {start}", file.display())),
        Some(report) if !facts.watch_running => {
            Line::failed(name, format!("pid {} of {} is gone; {start}", report.pid, file.display()))
        }
        Some(report) if !report.fresh(facts.now_ms) => Line::failed(
            name,
            format!(
                "its last pass (pid {}) ended {} ms ago, more than twice watch.interval_ms: it is stuck; see journalctl -u repmgr-nat-watch",
                report.pid,
                facts.now_ms.saturating_sub(report.passed_ms)
            ),
        ),
        Some(report) => Line::ok(
            name,
            format!(
                "pid {}, pass {} {} ms ago",
                report.pid,
                report.pass,
                facts.now_ms.saturating_sub(report.passed_ms)
            ),
        ),
    }
}

fn node_lines(cfg: &Config, path: &str, node: Node, answer: &Result<NodeSettings, Answer>) -> Vec<Line> {
    let (id, addr, port) = (node.id(), node.addr(), cfg.ports.postgres);
    let pg = &cfg.postgres;
    let ms = pg.connect_timeout.as_millis();
    let reach = format!("node {id} ({addr}:{port}) answers within {ms} ms");
    let settings = match answer {
        Ok(settings) => settings,
        Err(answer) => {
            let why = match answer {
                Answer::Down(why) => format!(
                    "refused ({why}): is PostgreSQL running there, with listen_addresses including {addr} and port {port}?"
                ),
                Answer::Silent(why) => format!(
                    "no answer ({why}): a firewall, a frozen host, or a wrong address for node {id} in [nodes] of {path}"
                ),
                Answer::Rejected(why) => format!(
                    "rejected repmgr-nat ({why}): pg_hba.conf on node {id} must admit user {} to database {} from this \
                     host, and ~/.pgpass of this user hold its password",
                    pg.user, pg.dbname
                ),
                Answer::Up(_) => "answered, but not with its settings".to_string(),
            };
            return vec![Line::failed(reach, why)];
        }
    };
    let mut lines = vec![Line::ok(reach, "")];
    lines.push(tls_line(cfg, path, node, settings.ssl));
    let role = format!("node {id}: role {} has REPLICATION, pg_signal_backend, pg_read_all_stats", pg.user);
    let mut missing: Vec<String> = Vec::new();
    if !settings.superuser {
        if !settings.replication {
            missing.push(format!("ALTER ROLE {} REPLICATION", pg.user));
        }
        for (has, group) in
            [(settings.signal_backend, "pg_signal_backend"), (settings.read_all_stats, "pg_read_all_stats")]
        {
            if !has {
                missing.push(format!("GRANT {group} TO {}", pg.user));
            }
        }
    }
    lines.push(match missing.is_empty() {
        true => Line::ok(role, if settings.superuser { "a superuser (give repmgr-nat a role of its own)" } else { "" }),
        false => Line::failed(role, format!("missing; on the primary run: {}", missing.join("; "))),
    });
    let wal = format!("node {id}: wal_level is replica or logical");
    lines.push(match settings.wal_level.as_str() {
        "replica" | "logical" => Line::ok(wal, settings.wal_level.clone()),
        other => Line::failed(
            wal,
            format!("wal_level = {other}: no replication slot works; set wal_level = replica in postgresql.conf on node {id} and restart it"),
        ),
    });
    if let Some(barman) = &cfg.barman {
        let limit_mb = barman.standby_slot_limit / (1024 * 1024);
        let keep = format!("node {id}: max_slot_wal_keep_size above barman.standby_slot_limit_mb ({limit_mb} MB)");
        // some 20 % above, in whole hundreds of MB
        let suggested = (limit_mb + limit_mb / 5) / 100 * 100 + 100;
        lines.push(match settings.max_slot_wal_keep_size_mb {
            mb if mb > i64::try_from(limit_mb).unwrap_or(i64::MAX) => Line::ok(keep, format!("{mb} MB")),
            -1 => Line::failed(
                keep,
                format!(
                    "unlimited (-1): a slot nothing advances can fill node {id}'s disk; set max_slot_wal_keep_size = '{suggested}MB' in postgresql.conf on node {id} and reload it"
                ),
            ),
            mb => Line::failed(
                keep,
                format!(
                    "{mb} MB: PostgreSQL invalidates barman's slot before repmgr-nat advances it; set max_slot_wal_keep_size = '{suggested}MB' in postgresql.conf on node {id} (or lower barman.standby_slot_limit_mb in {path}) and reload it"
                ),
            ),
        });
        let slots = format!("node {id}: a replication slot for {}", barman.slot);
        let free = settings.max_replication_slots - settings.slots_used;
        lines.push(match (settings.has_slot, free) {
            (true, _) => Line::ok(slots, "it exists"),
            (false, free) if free > 0 => {
                Line::ok(slots, format!("{} of max_replication_slots = {} used", settings.slots_used, settings.max_replication_slots))
            }
            (false, _) => Line::failed(
                slots,
                format!(
                    "all {} slots used (max_replication_slots): raise max_replication_slots in postgresql.conf on node {id} and restart it",
                    settings.max_replication_slots
                ),
            ),
        });
    }
    lines
}

/// The hosts of repmgr's conninfos that name neither a node's address nor its `name`:
/// the gatherer resolves them.
pub fn repmgr_hosts(cfg: &Config, nodes: &[(Node, Result<NodeSettings, Answer>)]) -> Vec<String> {
    let mut hosts: Vec<String> = nodes
        .iter()
        .filter_map(|(_, answer)| match &answer.as_ref().ok()?.repmgr_nodes {
            RepmgrNodes::Rows(rows) => Some(rows.clone()),
            _ => None,
        })
        .flatten()
        .filter_map(|(_, conninfo)| host_port(&conninfo).0)
        .filter(|host| {
            host.parse::<Ipv4Addr>().is_err() && !cfg.postgres.server_names.values().any(|name| name == host)
        })
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// repmgr's nodes (`repmgr.nodes`, read on the primary, else on the first node that
/// answered) against `[nodes]`: the same ids, each with the address its conninfo names.
/// No line where there is no repmgr schema in the database repmgr-nat connects to
/// (Patroni); a warning, with the grants, where the role may not read it.
fn repmgr_line(
    cfg: &Config,
    path: &str,
    nodes: &[(Node, Result<NodeSettings, Answer>)],
    resolved: &BTreeMap<String, Vec<Ipv4Addr>>,
) -> Option<Line> {
    let answered: Vec<(Node, &NodeSettings)> =
        nodes.iter().filter_map(|(node, answer)| Some((*node, answer.as_ref().ok()?))).collect();
    let (from, settings) = answered.iter().find(|(_, s)| !s.in_recovery).or(answered.first())?;
    let name = "repmgr's nodes (repmgr.nodes) are those of [nodes]";
    let role = &cfg.postgres.user;
    let rows = match &settings.repmgr_nodes {
        RepmgrNodes::Absent => return None,
        RepmgrNodes::Unreadable => {
            return Some(Line::warn(
                name,
                format!(
                    "role {role} may not read repmgr.nodes in database {db}, so check cannot compare; to let it, on \
                     the primary in database {db} run: GRANT USAGE ON SCHEMA repmgr TO {role}; GRANT SELECT ON \
                     repmgr.nodes TO {role}",
                    db = settings.database
                ),
            ));
        }
        RepmgrNodes::Rows(rows) => rows,
    };
    let mut wrong = Vec::new();
    for (id, conninfo) in rows {
        let host = host_port(conninfo).0;
        let shown = host.as_deref().unwrap_or("(no host)");
        let Some(node) = cfg.nodes.iter().find(|n| i64::from(u32::from(n.id())) == *id) else {
            wrong.push(format!("repmgr has node {id} ({shown}), [nodes] does not"));
            continue;
        };
        let addr = node.addr();
        let same = host.as_deref().is_some_and(|h| {
            h == addr.to_string()
                || cfg.postgres.server_names.get(&node.id()).is_some_and(|name| name == h)
                || resolved.get(h).is_some_and(|addrs| addrs.contains(&addr))
        });
        if !same {
            wrong.push(format!("node {id} is {shown} in repmgr's conninfo, {addr} in [nodes]"));
        }
    }
    for node in &cfg.nodes {
        if !rows.iter().any(|(id, _)| *id == i64::from(u32::from(node.id()))) {
            wrong.push(format!("node {} ({}) of [nodes] is not one of repmgr's", node.id(), node.addr()));
        }
    }
    let on = format!("repmgr.nodes on node {}", from.id());
    Some(match wrong.is_empty() {
        true => Line::ok(name, format!("{} node(s), {on}", rows.len())),
        false => Line::failed(
            name,
            format!(
                "{} ({on}); [nodes] in {path} must name each node by repmgr's node_id with the address of its \
                 conninfo (repmgr cluster show): events name repmgr's ids, and a node missing there is never routed to",
                wrong.join("; ")
            ),
        ),
    })
}

fn tls_line(cfg: &Config, path: &str, node: Node, ssl: bool) -> Line {
    let pg = &cfg.postgres;
    let name = format!("node {}: TLS with the certificate checked", node.id());
    let set = format!(
        "set postgres.sslmode = \"verify-full\" and postgres.sslrootcert (the CA that signed the nodes' certificates) in {path}"
    );
    match pg.sslmode {
        SslMode::VerifyFull if ssl => Line::ok(name, "verify-full"),
        SslMode::VerifyCa if ssl => Line::warn(
            name,
            format!(
                "postgres.sslmode = \"verify-ca\": any certificate of that CA passes, whichever node it names; {set}"
            ),
        ),
        SslMode::Disable | SslMode::Prefer | SslMode::Require if ssl => Line::failed(
            name,
            format!(
                "postgres.sslmode = \"{}\": encrypted, but anyone in the network path can present a certificate and receive the login; {set}",
                sslmode_name(pg.sslmode)
            ),
        ),
        mode => Line::failed(
            name,
            format!(
                "not encrypted (postgres.sslmode = \"{}\"): the login crosses the network in the open; {set}",
                sslmode_name(mode)
            ),
        ),
    }
}

fn sslmode_name(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}

/// host and port of a libpq connection string: `key=value` words or a URI.
pub fn host_port(conninfo: &str) -> (Option<String>, Option<String>) {
    if let Some(rest) = conninfo.strip_prefix("postgresql://").or_else(|| conninfo.strip_prefix("postgres://")) {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let hostport = authority.rsplit('@').next().unwrap_or("");
        return match hostport.rsplit_once(':') {
            Some((host, port)) => (Some(host.to_string()), Some(port.to_string())),
            None => (Some(hostport.to_string()).filter(|h| !h.is_empty()), None),
        };
    }
    let mut host = None;
    let mut port = None;
    for word in conninfo.split_whitespace() {
        match word.split_once('=') {
            Some(("host" | "hostaddr", value)) if host.is_none() || word.starts_with("hostaddr") => {
                host = Some(value.trim_matches('\'').to_string())
            }
            Some(("port", value)) => port = Some(value.trim_matches('\'').to_string()),
            _ => {}
        }
    }
    (host, port)
}

fn barman_lines(cfg: &Config, path: &str, server: &str, found: &Result<BarmanServer, String>) -> Vec<Line> {
    let exists = format!("barman server {server} exists");
    let found = match found {
        Ok(found) => found,
        Err(why) => {
            return vec![Line::failed(
                exists,
                format!("{why}; barman.server in {path} must name a server of barman's (barman list-server)"),
            )];
        }
    };
    let file = match &found.file {
        Some(file) => file.display().to_string(),
        None => format!("barman's configuration of [{server}]"),
    };
    let mut lines = vec![Line::ok(exists, file.clone())];
    // with a shared address, this host's own: a connection to the shared address would be
    // bound to it, and stall once it moves to the other host (README "Which address the
    // nodes see")
    let proxy = cfg.own_address.unwrap_or(cfg.proxy).to_string();
    let why = if cfg.own_address.is_some() {
        "barman must follow the primary through the NAT, from this host's own address (proxy.own_address), not the \
         shared one"
    } else {
        "barman must follow the primary through the NAT"
    };
    let port = cfg.ports.barman.map(|p| p.to_string()).unwrap_or_default();
    for key in ["conninfo", "streaming_conninfo"] {
        let name = format!("barman {key} points at the proxy {proxy}:{port}");
        let value = found.settings.get(key).map(String::as_str).unwrap_or("");
        lines.push(match host_port(value) {
            (Some(h), Some(p)) if h == proxy && p == port => Line::ok(name, ""),
            (host, got) => Line::failed(
                name,
                format!(
                    "it points at {}:{}; set {key} = host={proxy} port={port} ... in {file}: {why}",
                    host.as_deref().unwrap_or("(no host)"),
                    got.as_deref().unwrap_or("5432")
                ),
            ),
        });
    }
    let slot = cfg.barman.as_ref().map(|b| b.slot.as_str()).unwrap_or("");
    let name = format!("barman slot_name is barman.slot ({slot})");
    lines.push(match found.settings.get("slot_name").map(String::as_str) {
        Some(s) if s == slot => Line::ok(name, ""),
        other => Line::failed(
            name,
            format!(
                "slot_name = {} in {file}, but repmgr-nat keeps the slot {slot} (barman.slot in {path}): set slot_name = {slot} there, or barman.slot to the same name",
                other.unwrap_or("(none)")
            ),
        ),
    });
    let name = "barman streaming_archiver is on";
    lines.push(match found.settings.get("streaming_archiver").map(|s| s.to_ascii_lowercase()) {
        Some(on) if ["true", "on", "1", "yes"].contains(&on.as_str()) => Line::ok(name, ""),
        other => Line::failed(
            name,
            format!(
                "streaming_archiver = {} in {file}: barman would not stream through the slot; set streaming_archiver = on",
                other.as_deref().unwrap_or("(unset)")
            ),
        ),
    });
    let name = format!("barman check {server}");
    lines.push(match &found.check {
        Ok(failed) if failed.is_empty() => Line::ok(name, ""),
        Ok(failed) => Line::failed(
            name,
            format!("{}; barman's own check: see `barman check {server}` as barman", failed.join("; ")),
        ),
        Err(why) => Line::failed(name, why.clone()),
    });
    lines
}

fn tools_line(tools: &[(String, bool)]) -> Line {
    let names: Vec<&str> = tools.iter().map(|(name, _)| name.as_str()).collect();
    let name = format!("{} installed", names.join(", "));
    let missing: Vec<&str> = tools.iter().filter(|(_, found)| !found).map(|(name, _)| name.as_str()).collect();
    match missing[..] {
        [] => Line::ok(name, ""),
        _ => Line::failed(
            name,
            format!(
                "missing from /usr/sbin, /usr/bin, /sbin and /bin: {}; install the packages iptables, conntrack and \
                 sudo (the .deb depends on them)",
                missing.join(", ")
            ),
        ),
    }
}

fn forwarding_line(forwarding: &Result<bool, String>) -> Line {
    let name = "net.ipv4.ip_forward = 1";
    match forwarding {
        Ok(true) => Line::ok(name, ""),
        Ok(false) => Line::failed(
            name,
            "it is 0: the proxy forwards nothing; `repmgr-nat setup` (the boot unit, repmgr-nat-setup) turns it on, \
             or sysctl -w net.ipv4.ip_forward=1, and net.ipv4.ip_forward = 1 in /etc/sysctl.d/ for good",
        ),
        Err(why) => Line::failed(name, why.clone()),
    }
}

fn chain_lines(cfg: &Config, live: &Result<Live, String>) -> Vec<Line> {
    let chains: Vec<&str> = ruleset::chains(cfg).into_iter().map(|chain| chain.name).collect();
    let name = format!("chains {} and their jumps in place", chains.join(", "));
    let live = match live {
        Ok(live) => live,
        Err(why) => return vec![Line::failed(name, format!("cannot read the nat table: {why}"))],
    };
    let mut wrong: Vec<String> =
        chains.iter().filter(|c| !live.has_chain(c)).map(|c| format!("no chain {c}")).collect();
    for (builtin, chain, n) in live.jump_counts(cfg) {
        if n != 1 {
            wrong.push(format!("{n} jumps from {builtin} to {chain}"));
        }
    }
    if wrong.is_empty() && !live.in_place(cfg) {
        wrong.push(format!("the hold rules in {} differ", cfg.nat.hold_chain));
    }
    let mut lines = vec![match wrong.is_empty() {
        true => Line::ok(name, format!("rules: {}", live.routing(cfg))),
        false => Line::failed(
            name,
            format!("{}; `repmgr-nat setup` (as root) puts them back, as does the next switch", wrong.join(", ")),
        ),
    }];
    let name = "no rule of another tool's in our chains";
    lines.push(match live.foreign(cfg).first() {
        None => Line::ok(name, ""),
        Some(rule) => Line::failed(
            name,
            format!(
                "{rule:?}: repmgr-nat switches nothing while it is there; remove it, or give repmgr-nat chains of its own (nat.dnat_chain, nat.snat_chain)"
            ),
        ),
    });
    lines
}

/// Rules in PREROUTING or OUTPUT, before the jump to our DNAT chain, that DNAT (or
/// REDIRECT) a connection to one of our ports: a client would never reach our rules.
pub fn shadowing(cfg: &Config, save: &str) -> Vec<String> {
    let ports: Vec<u16> = ruleset::forwarded(cfg, ruleset::Open::All);
    let proxy = format!("{}/32", cfg.proxy);
    let jump = |builtin: &str| format!("-A {builtin} -j {}", cfg.nat.dnat_chain);
    let mut found = Vec::new();
    let mut table = "";
    let mut passed: Vec<&str> = Vec::new();
    for line in save.lines().map(str::trim_end) {
        if let Some(name) = line.strip_prefix('*') {
            table = name;
            passed.clear();
            continue;
        }
        if table != "nat" {
            continue;
        }
        for builtin in ["PREROUTING", "OUTPUT"] {
            if line == jump(builtin) {
                passed.push(builtin);
            }
            let Some(rule) = line.strip_prefix(&format!("-A {builtin} ")) else { continue };
            if passed.contains(&builtin) {
                continue;
            }
            let words: Vec<&str> = rule.split_whitespace().collect();
            let value = |key: &str| words.windows(2).find(|w| w[0] == key && !negated(&words, key)).map(|w| w[1]);
            let translates = matches!(value("-j"), Some("DNAT" | "REDIRECT"));
            let to_proxy = value("-d").is_none_or(|d| d == proxy || d == cfg.proxy.to_string());
            let tcp = value("-p").is_none_or(|p| p == "tcp" || p == "6");
            let port_matches = match (value("--dport"), value("--dports")) {
                (None, None) => true,
                (Some(p), _) => port_in(p, &ports),
                (None, Some(list)) => list.split(',').any(|p| port_in(p, &ports)),
            };
            if translates && to_proxy && tcp && port_matches {
                found.push(line.to_string());
            }
        }
    }
    found
}

fn negated(words: &[&str], key: &str) -> bool {
    words.windows(2).any(|w| w[0] == "!" && w[1] == key)
}

/// `5432` or a range `5000:6000`, holding one of `ports`.
fn port_in(spec: &str, ports: &[u16]) -> bool {
    let (low, high) = spec.split_once(':').unwrap_or((spec, spec));
    match (low.parse::<u16>(), high.parse::<u16>()) {
        (Ok(low), Ok(high)) => ports.iter().any(|p| (low..=high).contains(p)),
        _ => false,
    }
}

fn shadow_line(cfg: &Config, save: &Result<String, String>) -> Line {
    let name = format!("nothing in PREROUTING or OUTPUT before the jump to {} takes our ports", cfg.nat.dnat_chain);
    match save {
        Err(why) => Line::failed(name, format!("cannot read the nat table: {why}")),
        Ok(save) => match shadowing(cfg, save).first() {
            None => Line::ok(name, ""),
            Some(rule) => Line::failed(
                name,
                format!(
                    "{rule:?} comes first: connections to the proxy's ports never reach repmgr-nat's rules; remove it (iptables -t nat -D {})",
                    rule.trim_start_matches("-A ")
                ),
            ),
        },
    }
}

/// Where barman keeps the section of `server`, if it is the usual place.
pub fn barman_file(server: &str, exists: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    let path = PathBuf::from(format!("/etc/barman.d/{server}.conf"));
    exists(&path).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::tests::{EXAMPLE, example, node};
    use crate::core::ruleset::{Open, Route};
    use crate::core::view::Answer;

    /// watch.json of a watch whose last pass ended at 10 000 ms.
    fn report() -> WatchReport {
        serde_json::from_str(
            r#"{"version":1,"pid":77,"started_ms":1000,"pass":12,"passed_ms":10000,"interval_ms":250,
            "hurry":false,"primary":"node 1 on timeline 1","rules":"node 1 ports all","nodes":"1: primary",
            "unanswered":[],"receive_wal":null,"barman_confirmed":null,"last_action":null}"#,
        )
        .unwrap()
    }

    fn settings() -> NodeSettings {
        NodeSettings {
            superuser: false,
            replication: true,
            signal_backend: true,
            read_all_stats: true,
            max_slot_wal_keep_size_mb: 1200,
            wal_level: "replica".into(),
            max_replication_slots: 10,
            slots_used: 2,
            has_slot: true,
            ssl: true,
            in_recovery: false,
            database: "postgres".into(),
            repmgr_nodes: RepmgrNodes::Absent,
        }
    }

    fn verify_full_text() -> String {
        EXAMPLE.replace(
            "dbname = \"postgres\"",
            "dbname = \"postgres\"\nsslmode = \"verify-full\"\nsslrootcert = \"/etc/ssl/ca.crt\"",
        )
    }

    fn verify_full() -> Config {
        Config::parse(&verify_full_text()).unwrap()
    }

    fn server() -> BarmanServer {
        let settings = [
            ("conninfo", "host=10.8.3.1 port=54321 user=barman dbname=postgres"),
            ("streaming_conninfo", "host=10.8.3.1 port=54321 user=streaming_barman"),
            ("slot_name", "barman"),
            ("streaming_archiver", "True"),
        ];
        BarmanServer {
            settings: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            file: Some(PathBuf::from("/etc/barman.d/main_backup.conf")),
            check: Ok(vec![]),
        }
    }

    fn answered(command: &str) -> SudoAnswer {
        SudoAnswer { command: command.into(), refused: None }
    }

    /// Everything right, as root would find it on the README's example.
    fn clean() -> Facts {
        let cfg = example();
        Facts {
            config_path: PathBuf::from("/etc/repmgr-nat.toml"),
            config_trusted: Ok(()),
            sudo: Some(Ok(Sudo {
                user: "postgres".into(),
                program: "/usr/bin/repmgr-nat".into(),
                route: vec![answered("sudo /usr/bin/repmgr-nat route --show")],
                barman: vec![answered("sudo -u barman /usr/bin/barman receive-wal main_backup")],
                follow: answered("sudo /usr/bin/repmgr-nat route --show --follow"),
            })),
            state: Ok(()),
            torn_down: false,
            watch: Some(report()),
            watch_running: true,
            now_ms: 10_100,
            nodes: Some(vec![(node(1), Ok(settings())), (node(2), Ok(settings()))]),
            barman: Some(Ok(server())),
            units: None,
            tools: ["iptables-save", "iptables-restore", "conntrack", "sudo"].map(|t| (t.to_string(), true)).to_vec(),
            forwarding: Ok(true),
            live: Ok(Live::installed(&cfg, Route::new(node(1), Open::All))),
            nat_save: Some(Ok(
                "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j repmgr_dnat\n-A OUTPUT -j repmgr_dnat\nCOMMIT\n"
                    .to_string(),
            )),
            two_proxies: None,
            resolved: BTreeMap::new(),
            instances: Vec::new(),
        }
    }

    #[test]
    fn another_instance_that_cannot_be_read_is_named() {
        let cfg = example();
        let mut facts = clean();
        assert!(!assess(&cfg, &facts).to_text().contains("other instances"), "none: no line");
        facts.instances = vec![("two".into(), Ok(()))];
        assert_eq!(
            line(&cfg, &facts, "the other instances"),
            "OK  the other instances of this host (two) share nothing with this one"
        );
        facts.instances.push(("three".into(), Err("bad config /etc/repmgr-nat/three.toml: ports.app: 0".into())));
        assert_eq!(
            line(&cfg, &facts, "the other instances"),
            "FAILED  the other instances of this host (two, three) share nothing with this one: instance three: bad \
             config /etc/repmgr-nat/three.toml: ports.app: 0; fix it (repmgr-nat --instance NAME check says more), or \
             remove the file"
        );
    }

    /// The one line named `name` (its start), as text.
    #[track_caller]
    fn line(cfg: &Config, facts: &Facts, name: &str) -> String {
        let report = assess(cfg, facts);
        let text = report.to_text();
        let found: Vec<&str> = text.lines().filter(|l| l.split_once("  ").unwrap().1.starts_with(name)).collect();
        assert_eq!(found.len(), 1, "one line {name:?} in:\n{text}");
        found[0].to_string()
    }

    #[test]
    fn a_clean_deployment_is_all_ok_and_every_check_has_a_line() {
        let cfg = verify_full();
        let report = assess(&cfg, &clean());
        assert_eq!(report.failed(), 0, "{}", report.to_text());
        assert!(report.checks.iter().all(|l| l.level == Level::Ok), "{}", report.to_text());
        let names: Vec<&str> = report.checks.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "config /etc/repmgr-nat.toml as the root step reads it",
                "sudo admits postgres's route commands",
                "sudo admits postgres's follow of the tables",
                "sudo admits postgres's barman commands for server main_backup",
                "state dir /var/lib/repmgr-nat and run lock",
                "watch runs and its last pass is fresh",
                "node 1 (10.8.1.1:5432) answers within 3000 ms",
                "node 1: TLS with the certificate checked",
                "node 1: role repmgr_nat has REPLICATION, pg_signal_backend, pg_read_all_stats",
                "node 1: wal_level is replica or logical",
                "node 1: max_slot_wal_keep_size above barman.standby_slot_limit_mb (1024 MB)",
                "node 1: a replication slot for barman",
                "node 2 (10.8.2.1:5432) answers within 3000 ms",
                "node 2: TLS with the certificate checked",
                "node 2: role repmgr_nat has REPLICATION, pg_signal_backend, pg_read_all_stats",
                "node 2: wal_level is replica or logical",
                "node 2: max_slot_wal_keep_size above barman.standby_slot_limit_mb (1024 MB)",
                "node 2: a replication slot for barman",
                "barman server main_backup exists",
                "barman conninfo points at the proxy 10.8.3.1:54321",
                "barman streaming_conninfo points at the proxy 10.8.3.1:54321",
                "barman slot_name is barman.slot (barman)",
                "barman streaming_archiver is on",
                "barman check main_backup",
                "iptables-save, iptables-restore, conntrack, sudo installed",
                "net.ipv4.ip_forward = 1",
                "chains repmgr_dnat, repmgr_snat, repmgr_hold and their jumps in place",
                "no rule of another tool's in our chains",
                "nothing in PREROUTING or OUTPUT before the jump to repmgr_dnat takes our ports",
            ]
        );
        assert!(report.to_text().starts_with("OK  config /etc/repmgr-nat.toml as the root step reads it: root's"));
    }

    #[test]
    fn the_json_document_is_versioned_with_name_ok_and_detail() {
        let mut facts = clean();
        facts.forwarding = Ok(false);
        let json = serde_json::to_value(assess(&verify_full(), &facts)).unwrap();
        assert_eq!(json["version"], 1);
        let forwarding = json["checks"].as_array().unwrap().iter().find(|c| c["name"] == "net.ipv4.ip_forward = 1");
        let forwarding = forwarding.unwrap();
        assert_eq!(forwarding["ok"], false);
        assert_eq!(forwarding["level"], "failed");
        assert!(forwarding["detail"].as_str().unwrap().starts_with("it is 0"));
    }

    #[test]
    fn a_config_others_can_write_names_the_file_and_the_fix() {
        let mut facts = clean();
        facts.config_trusted = Err("/etc/repmgr-nat.toml is writable by others than its owner (mode 666)".into());
        let text = line(&verify_full(), &facts, "config /etc/repmgr-nat.toml");
        assert!(text.starts_with("FAILED  config /etc/repmgr-nat.toml as the root step reads it: "), "{text}");
        assert!(
            text.contains("(mode 666); `route` (run through sudo) refuses it: chown root:root and chmod 0644"),
            "{text}"
        );
    }

    /// An older sudoers file without `--follow`: watch works without it, so a warning that
    /// says what it costs, which fails nothing.
    #[test]
    fn a_sudoers_file_without_the_follow_is_a_warning() {
        let mut facts = clean();
        let Some(Ok(sudo)) = &mut facts.sudo else { unreachable!() };
        sudo.follow.refused = Some("Sorry, user postgres is not allowed".into());
        let text = line(&verify_full(), &facts, "sudo admits postgres's follow");
        assert!(
            text.starts_with(
                "WARN  sudo admits postgres's follow of the tables: refused (Sorry, user postgres is not allowed): \
                 watch reads the tables through sudo twice a second"
            ),
            "{text}"
        );
        assert_eq!(assess(&verify_full(), &facts).failed(), 0);
    }

    /// A Nagios plugin's output: the state, what is wrong and the counts on the first
    /// line, every line after it; CRITICAL over WARNING over OK; no `|` but the one.
    #[test]
    fn the_nagios_form_says_the_worst_state_first() {
        let cfg = verify_full();
        let mut facts = clean();
        let (text, code) = assess(&cfg, &facts).to_nagios("REPMGR-NAT");
        let total = assess(&cfg, &facts).checks.len();
        assert_eq!(code, plugin::OK);
        let first = format!("REPMGR-NAT OK - {total} checks OK | checks={total};;;0 failed=0;;;0 warnings=0;;;0");
        assert_eq!(text.lines().next(), Some(first.as_str()));
        assert_eq!(
            text.lines().skip(1).collect::<Vec<_>>(),
            assess(&cfg, &facts).to_text().lines().collect::<Vec<_>>()
        );

        let Some(Ok(sudo)) = &mut facts.sudo else { unreachable!() };
        sudo.follow.refused = Some("Sorry | not allowed".into());
        let (text, code) = assess(&cfg, &facts).to_nagios("REPMGR-NAT two");
        assert_eq!(code, plugin::WARNING);
        assert_eq!(
            text.lines().next().unwrap(),
            format!(
                "REPMGR-NAT two WARNING - 1 of {total} checks warn: sudo admits postgres's follow of the tables \
                 | checks={total};;;0 failed=0;;;0 warnings=1;;;0"
            )
        );
        assert!(text.contains("refused (Sorry / not allowed)"), "{text}");
        assert_eq!(text.matches('|').count(), 1, "{text}");

        facts.forwarding = Ok(false);
        facts.config_trusted = Err("mode 666".into());
        let (text, code) = assess(&cfg, &facts).to_nagios("REPMGR-NAT");
        assert_eq!(code, plugin::CRITICAL);
        assert!(
            text.starts_with(&format!(
                "REPMGR-NAT CRITICAL - 2 of {total} checks failed: config /etc/repmgr-nat.toml as the root step reads \
                 it; net.ipv4.ip_forward = 1 | checks={total};;;0 failed=2;;;0 warnings=1;;;0\n"
            )),
            "{text}"
        );
        assert_eq!(nagios_unknown("REPMGR-NAT", "bad config x|y:\n z"), "REPMGR-NAT UNKNOWN - bad config x/y:\\n z\n");
    }

    #[test]
    fn sudo_refusals_name_the_command_and_the_sudoers_file() {
        let mut facts = clean();
        let Some(Ok(sudo)) = &mut facts.sudo else { unreachable!() };
        sudo.barman[0].refused = Some("Sorry, user postgres is not allowed".into());
        let text = line(&verify_full(), &facts, "sudo admits postgres's barman");
        assert!(
            text.starts_with(
                "FAILED  sudo admits postgres's barman commands for server main_backup: refused: sudo -u barman \
                 /usr/bin/barman receive-wal main_backup (Sorry, user postgres is not allowed); edit \
                 /etc/sudoers.d/repmgr-nat (visudo -f /etc/sudoers.d/repmgr-nat)"
            ),
            "{text}"
        );
        assert!(text.contains("the server main_backup (barman.server in the config)"), "{text}");
        let Some(Ok(sudo)) = &mut facts.sudo else { unreachable!() };
        sudo.route.push(answered("sudo /usr/bin/repmgr-nat route 1 --ports all --timeline 1"));
        for answer in &mut sudo.route {
            answer.refused = Some("sudo: /usr/bin/repmgr-nat: command not found".into());
        }
        let text = line(&verify_full(), &facts, "sudo admits postgres's route");
        assert!(
            text.contains(
                "refused: all 2 command lines (sudo: /usr/bin/repmgr-nat: command not found), such as sudo \
                 /usr/bin/repmgr-nat route --show;"
            ),
            "{text}"
        );
        let Some(Ok(sudo)) = &mut facts.sudo else { unreachable!() };
        sudo.route[1].refused = None;
        sudo.route[0].refused = Some("a password is required".into());
        let text = line(&verify_full(), &facts, "sudo admits postgres's route");
        assert!(text.contains("FAILED") && text.contains("route --show (a password is required)"), "{text}");
        facts.sudo = Some(Err("there is no OS user \"pgsql\" (repmgr.user in the config)".into()));
        let text = line(&verify_full(), &facts, "sudo admits what repmgr-nat runs");
        assert!(text.starts_with("FAILED") && text.contains("repmgr.user"), "{text}");
    }

    #[test]
    fn the_state_dir_fails_missing_or_torn_down() {
        let mut facts = clean();
        facts.state = Err("cannot open /var/lib/repmgr-nat/run.lock (has `repmgr-nat setup` run?)".into());
        let text = line(&verify_full(), &facts, "state dir");
        assert!(text.starts_with("FAILED  state dir /var/lib/repmgr-nat and run lock: cannot open"), "{text}");
        assert!(text.ends_with("run `repmgr-nat setup` as root (it makes both)"), "{text}");
        facts.state = Err("cannot open /var/lib/repmgr-nat/run.lock: Permission denied (os error 13)".into());
        let text = line(&verify_full(), &facts, "state dir");
        assert!(
            text.ends_with("only root and the group of repmgr.user (postgres) may open it: run check as one of them"),
            "{text}"
        );
        facts.state = Ok(());
        facts.torn_down = true;
        let text = line(&verify_full(), &facts, "state dir");
        assert!(text.contains("FAILED") && text.contains("/var/lib/repmgr-nat/torn-down: `repmgr-nat teardown` ran"));
    }

    #[test]
    fn the_units_must_be_enabled_where_systemd_runs() {
        let mut facts = clean();
        let units = |watch: &str| {
            Some(vec![
                ("repmgr-nat-setup.service".to_string(), "enabled".to_string()),
                ("repmgr-nat-watch.service".to_string(), watch.to_string()),
            ])
        };
        facts.units = units("enabled");
        assert_eq!(
            line(&verify_full(), &facts, "repmgr-nat-setup"),
            "OK  repmgr-nat-setup.service and repmgr-nat-watch.service enabled"
        );
        facts.units = units("disabled");
        assert_eq!(
            line(&verify_full(), &facts, "repmgr-nat-setup"),
            "FAILED  repmgr-nat-setup.service and repmgr-nat-watch.service enabled: repmgr-nat-watch.service is \
             disabled: the rules are not put back at boot, or nothing follows a failover without events; systemctl \
             enable --now repmgr-nat-setup.service repmgr-nat-watch.service"
        );
    }

    #[test]
    fn watch_fails_when_missing_gone_or_stale() {
        let cfg = verify_full();
        let mut facts = clean();
        assert_eq!(
            line(&cfg, &facts, "watch"),
            "OK  watch runs and its last pass is fresh: pid 77, pass 12 100 ms ago"
        );
        facts.watch_running = false;
        let text = line(&cfg, &facts, "watch");
        assert!(text.starts_with("FAILED  watch runs and its last pass is fresh: pid 77 of /run/repmgr-nat/watch.json is gone; systemctl enable --now repmgr-nat-watch"), "{text}");
        facts.watch_running = true;
        facts.now_ms = 20_000;
        let text = line(&cfg, &facts, "watch");
        assert!(text.contains("FAILED") && text.contains("ended 10000 ms ago") && text.contains("stuck"), "{text}");
        facts.watch = None;
        let text = line(&cfg, &facts, "watch");
        assert!(text.contains("FAILED") && text.contains("no /run/repmgr-nat/watch.json"), "{text}");
    }

    #[test]
    fn a_node_that_does_not_answer_says_what_to_look_at_and_nothing_else() {
        let cfg = verify_full();
        let mut facts = clean();
        facts.nodes = Some(vec![
            (node(1), Err(Answer::Rejected("no pg_hba.conf entry for host (28000)".into()))),
            (node(2), Err(Answer::Silent("no answer within 3000 ms".into()))),
        ]);
        let report = assess(&cfg, &facts);
        assert!(!report.checks.iter().any(|l| l.name.starts_with("node 1:")), "{}", report.to_text());
        let text = line(&cfg, &facts, "node 1 (");
        assert!(text.starts_with("FAILED  node 1 (10.8.1.1:5432) answers within 3000 ms: rejected repmgr-nat (no pg_hba.conf entry for host (28000)): pg_hba.conf on node 1 must admit user repmgr_nat to database postgres"), "{text}");
        let text = line(&cfg, &facts, "node 2 (");
        assert!(
            text.contains("FAILED") && text.contains("wrong address for node 2 in [nodes] of /etc/repmgr-nat.toml")
        );
        facts.nodes = Some(vec![(node(1), Err(Answer::Down("connection refused".into())))]);
        assert!(line(&cfg, &facts, "node 1 (").contains("listen_addresses including 10.8.1.1 and port 5432"));
    }

    #[test]
    fn tls_without_the_name_checked_is_reported() {
        let mut facts = clean();
        facts.nodes = Some(vec![(node(1), Ok(settings()))]);
        // the example: sslmode prefer
        let text = line(&example(), &facts, "node 1: TLS");
        assert!(text.starts_with("FAILED  node 1: TLS with the certificate checked: postgres.sslmode = \"prefer\": encrypted, but anyone in the network path"), "{text}");
        assert!(text.ends_with("set postgres.sslmode = \"verify-full\" and postgres.sslrootcert (the CA that signed the nodes' certificates) in /etc/repmgr-nat.toml"), "{text}");
        facts.nodes = Some(vec![(node(1), Ok(NodeSettings { ssl: false, ..settings() }))]);
        assert!(line(&example(), &facts, "node 1: TLS").contains(
            "FAILED  node 1: TLS with the certificate checked: not encrypted (postgres.sslmode = \"prefer\")"
        ));
        let verify_ca = Config::parse(&EXAMPLE.replace(
            "dbname = \"postgres\"",
            "dbname = \"postgres\"\nsslmode = \"verify-ca\"\nsslrootcert = \"/etc/ssl/ca.crt\"",
        ))
        .unwrap();
        facts.nodes = Some(vec![(node(1), Ok(settings()))]);
        let text = line(&verify_ca, &facts, "node 1: TLS");
        assert!(
            text.starts_with("WARN  node 1: TLS with the certificate checked: postgres.sslmode = \"verify-ca\""),
            "{text}"
        );
        assert_eq!(assess(&verify_ca, &facts).failed(), 0, "a warning fails nothing");
        assert_eq!(
            line(&verify_full(), &facts, "node 1: TLS"),
            "OK  node 1: TLS with the certificate checked: verify-full"
        );
    }

    #[test]
    fn missing_grants_are_named_with_the_statement_that_gives_them() {
        let cfg = verify_full();
        let mut facts = clean();
        facts.nodes =
            Some(vec![(node(1), Ok(NodeSettings { read_all_stats: false, replication: false, ..settings() }))]);
        assert_eq!(
            line(&cfg, &facts, "node 1: role"),
            "FAILED  node 1: role repmgr_nat has REPLICATION, pg_signal_backend, pg_read_all_stats: missing; on the \
             primary run: ALTER ROLE repmgr_nat REPLICATION; GRANT pg_read_all_stats TO repmgr_nat"
        );
        facts.nodes = Some(vec![(node(1), Ok(NodeSettings { superuser: true, read_all_stats: false, ..settings() }))]);
        assert!(line(&cfg, &facts, "node 1: role").starts_with("OK  node 1: role repmgr_nat has"));
    }

    #[test]
    fn the_slot_settings_name_postgresql_conf_and_the_config_key() {
        let cfg = verify_full();
        let mut facts = clean();
        let with = |s: NodeSettings| Some(vec![(node(1), Ok(s))]);
        assert_eq!(
            line(&cfg, &facts, "node 1: max_slot"),
            "OK  node 1: max_slot_wal_keep_size above barman.standby_slot_limit_mb (1024 MB): 1200 MB"
        );
        facts.nodes = with(NodeSettings { max_slot_wal_keep_size_mb: -1, ..settings() });
        let text = line(&cfg, &facts, "node 1: max_slot");
        assert!(
            text.starts_with(
                "FAILED  node 1: max_slot_wal_keep_size above barman.standby_slot_limit_mb (1024 MB): unlimited (-1)"
            ),
            "{text}"
        );
        assert!(text.contains("set max_slot_wal_keep_size = '1300MB' in postgresql.conf on node 1"), "{text}");
        facts.nodes = with(NodeSettings { max_slot_wal_keep_size_mb: 1024, ..settings() });
        let text = line(&cfg, &facts, "node 1: max_slot");
        assert!(
            text.contains("FAILED")
                && text.contains("1024 MB: PostgreSQL invalidates")
                && text.contains("barman.standby_slot_limit_mb in /etc/repmgr-nat.toml"),
            "{text}"
        );
        facts.nodes = with(NodeSettings { wal_level: "minimal".into(), ..settings() });
        let text = line(&cfg, &facts, "node 1: wal_level");
        assert!(text.starts_with("FAILED  node 1: wal_level is replica or logical: wal_level = minimal"), "{text}");
        facts.nodes = with(NodeSettings { has_slot: false, slots_used: 10, ..settings() });
        let text = line(&cfg, &facts, "node 1: a replication slot");
        assert!(
            text.starts_with(
                "FAILED  node 1: a replication slot for barman: all 10 slots used (max_replication_slots)"
            ),
            "{text}"
        );
        facts.nodes = with(NodeSettings { has_slot: false, slots_used: 9, ..settings() });
        assert!(
            line(&cfg, &facts, "node 1: a replication slot")
                .starts_with("OK  node 1: a replication slot for barman: 9 of")
        );
    }

    #[test]
    fn without_barman_there_is_no_slot_or_barman_line() {
        let cfg = Config::parse(EXAMPLE.replace("barman = 54321\n", "").split("[barman]").next().unwrap()).unwrap();
        let mut facts = clean();
        facts.barman = None;
        facts.live = Ok(Live::installed(&cfg, Route::new(node(1), Open::All)));
        let Some(Ok(sudo)) = &mut facts.sudo else { unreachable!() };
        sudo.barman.clear();
        let report = assess(&cfg, &facts);
        let text = report.to_text();
        assert!(!text.contains("barman") && !text.contains("max_slot") && !text.contains("replication slot"), "{text}");
    }

    #[test]
    fn with_a_shared_address_barman_points_at_the_own_one() {
        let cfg = Config::parse(
            &crate::core::config::tests::EXAMPLE
                .replace("address = \"10.8.3.1\"", "address = \"10.8.3.1\"\nown_address = \"10.8.3.2\""),
        )
        .unwrap();
        let mut facts = clean();
        assert_eq!(
            line(&cfg, &facts, "barman conninfo"),
            "FAILED  barman conninfo points at the proxy 10.8.3.2:54321: it points at 10.8.3.1:54321; set conninfo = \
             host=10.8.3.2 port=54321 ... in /etc/barman.d/main_backup.conf: barman must follow the primary through \
             the NAT, from this host's own address (proxy.own_address), not the shared one"
        );
        let Some(Ok(server)) = &mut facts.barman else { unreachable!() };
        server.settings.insert("conninfo".into(), "host=10.8.3.2 port=54321 user=barman dbname=postgres".into());
        assert!(line(&cfg, &facts, "barman conninfo").starts_with("OK"), "{}", line(&cfg, &facts, "barman conninfo"));
    }

    #[test]
    fn barman_pointing_elsewhere_names_its_file_and_key() {
        let cfg = verify_full();
        let mut facts = clean();
        let Some(Ok(server)) = &mut facts.barman else { unreachable!() };
        server.settings.insert("conninfo".into(), "host=10.8.1.1 user=barman dbname=postgres".into());
        server.settings.insert("slot_name".into(), "barman2".into());
        server.settings.insert("streaming_archiver".into(), "False".into());
        assert_eq!(
            line(&cfg, &facts, "barman conninfo"),
            "FAILED  barman conninfo points at the proxy 10.8.3.1:54321: it points at 10.8.1.1:5432; set conninfo = \
             host=10.8.3.1 port=54321 ... in /etc/barman.d/main_backup.conf: barman must follow the primary through \
             the NAT"
        );
        assert!(line(&cfg, &facts, "barman streaming_conninfo").starts_with("OK"));
        assert_eq!(
            line(&cfg, &facts, "barman slot_name"),
            "FAILED  barman slot_name is barman.slot (barman): slot_name = barman2 in \
             /etc/barman.d/main_backup.conf, but repmgr-nat keeps the slot barman (barman.slot in \
             /etc/repmgr-nat.toml): set slot_name = barman there, or barman.slot to the same name"
        );
        assert!(
            line(&cfg, &facts, "barman streaming_archiver")
                .starts_with("FAILED  barman streaming_archiver is on: streaming_archiver = false")
        );
        let Some(Ok(server)) = &mut facts.barman else { unreachable!() };
        server.check = Ok(vec!["replication slot: FAILED (slot 'barman' not initialised)".into()]);
        assert_eq!(
            line(&cfg, &facts, "barman check"),
            "FAILED  barman check main_backup: replication slot: FAILED (slot 'barman' not initialised); barman's \
             own check: see `barman check main_backup` as barman"
        );
        facts.barman = Some(Err("ERROR: Unknown server 'main_backup'".into()));
        let text = line(&cfg, &facts, "barman server");
        assert!(text.starts_with("FAILED  barman server main_backup exists: ERROR: Unknown server"), "{text}");
        assert!(!assess(&cfg, &facts).to_text().contains("barman conninfo"), "nothing more to say without a server");
    }

    #[test]
    fn conninfo_host_and_port_from_words_and_uris() {
        let hp = |s: &str| host_port(s);
        let pair = |h: &str, p: &str| (Some(h.to_string()), Some(p.to_string()));
        assert_eq!(hp("host=10.8.3.1 port=54321 user=barman"), pair("10.8.3.1", "54321"));
        assert_eq!(hp("user=x host='10.8.3.1' port='54321'"), pair("10.8.3.1", "54321"));
        assert_eq!(hp("postgresql://barman@10.8.3.1:54321/postgres"), pair("10.8.3.1", "54321"));
        assert_eq!(hp("user=barman"), (None, None));
    }

    #[test]
    fn the_kernel_lines_name_what_is_missing() {
        let cfg = verify_full();
        let mut facts = clean();
        facts.tools[2].1 = false;
        let text = line(&cfg, &facts, "iptables-save, iptables-restore");
        assert!(text.starts_with("FAILED  iptables-save, iptables-restore, conntrack, sudo installed: missing from /usr/sbin, /usr/bin, /sbin and /bin: conntrack;"), "{text}");
        facts.forwarding = Ok(false);
        let text = line(&cfg, &facts, "net.ipv4.ip_forward");
        assert!(
            text.starts_with(
                "FAILED  net.ipv4.ip_forward = 1: it is 0: the proxy forwards nothing; `repmgr-nat setup`"
            ),
            "{text}"
        );
        let mut live = Live::installed(&cfg, Route::new(node(1), Open::All));
        live.jumps.retain(|jump| jump.from != "PREROUTING");
        facts.live = Ok(live.clone());
        let text = line(&cfg, &facts, "chains");
        assert_eq!(
            text,
            "FAILED  chains repmgr_dnat, repmgr_snat, repmgr_hold and their jumps in place: 0 jumps from PREROUTING \
             to repmgr_dnat; `repmgr-nat setup` (as root) puts them back, as does the next switch"
        );
        live.chains[0].rules.push("-A repmgr_dnat -p udp -j ACCEPT".into());
        facts.live = Ok(live);
        let text = line(&cfg, &facts, "no rule of another");
        assert!(
            text.starts_with("FAILED  no rule of another tool's in our chains: \"-A repmgr_dnat -p udp -j ACCEPT\"")
        );
        facts.live = Err("sudo: a password is required".into());
        assert!(line(&cfg, &facts, "chains").contains("cannot read the nat table: sudo: a password is required"));
        assert_eq!(
            line(&verify_full(), &clean(), "chains"),
            "OK  chains repmgr_dnat, repmgr_snat, repmgr_hold and their jumps in place: rules: node 1 ports all"
        );
    }

    #[test]
    fn a_dnat_before_our_jump_for_our_port_shadows_it() {
        let cfg = example();
        let save =
            |rules: &str| format!("*filter\n-A INPUT -p tcp --dport 54322 -j DNAT\nCOMMIT\n*nat\n{rules}COMMIT\n");
        let ours = "-A PREROUTING -j repmgr_dnat\n-A OUTPUT -j repmgr_dnat\n";
        assert_eq!(shadowing(&cfg, &save(ours)), Vec::<String>::new());
        let shadow = "-A PREROUTING -d 10.8.3.1/32 -p tcp -m tcp --dport 54322 -j DNAT --to-destination 10.9.9.9:5432";
        assert_eq!(shadowing(&cfg, &save(&format!("{shadow}\n{ours}"))), [shadow]);
        // after our jump: ours comes first
        assert_eq!(shadowing(&cfg, &save(&format!("{ours}{shadow}\n"))), Vec::<String>::new());
        for harmless in [
            "-A PREROUTING -d 10.8.3.1/32 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.9.9.9:80",
            "-A PREROUTING -d 10.1.1.1/32 -p tcp -m tcp --dport 54322 -j DNAT --to-destination 10.9.9.9:5432",
            "-A PREROUTING -p udp -m udp --dport 54322 -j DNAT --to-destination 10.9.9.9:5432",
            "-A PREROUTING -p tcp -m tcp --dport 54322 -j ACCEPT",
        ] {
            assert_eq!(shadowing(&cfg, &save(&format!("{harmless}\n{ours}"))), Vec::<String>::new(), "{harmless}");
        }
        for shadows in [
            "-A OUTPUT -p tcp -m multiport --dports 5000,54321 -j DNAT --to-destination 10.9.9.9:5432",
            "-A PREROUTING -p tcp -m tcp --dport 54000:55000 -j REDIRECT --to-ports 6432",
            "-A PREROUTING -j DNAT --to-destination 10.9.9.9",
        ] {
            assert_eq!(shadowing(&cfg, &save(&format!("{shadows}\n{ours}"))), [shadows], "{shadows}");
        }
        let mut facts = clean();
        facts.nat_save = Some(Ok(save(&format!("{shadow}\n{ours}"))));
        let text = line(&verify_full(), &facts, "nothing in PREROUTING");
        assert!(text.starts_with(&format!("FAILED  nothing in PREROUTING or OUTPUT before the jump to repmgr_dnat takes our ports: \"{shadow}\" comes first")), "{text}");
        assert!(text.ends_with(&format!("remove it (iptables -t nat -D {})", &shadow[3..])), "{text}");
    }

    #[test]
    fn the_two_proxy_lines_come_only_with_own_address_after_forwarding() {
        use two_proxies::{Daemons, TwoProxies};
        let mut facts = clean();
        facts.two_proxies = Some(TwoProxies {
            daemons: Some(Daemons { keepalived: None, conntrackd: Some(41) }),
            tcp_loose: Ok("1".into()),
            be_liberal: Ok("1".into()),
        });
        let alone = assess(&verify_full(), &facts).to_text();
        assert!(
            !alone.contains("keepalived") && !alone.contains("conntrackd") && !alone.contains("nf_conntrack"),
            "{alone}"
        );
        let own =
            verify_full_text().replace("address = \"10.8.3.1\"", "address = \"10.8.3.1\"\nown_address = \"10.8.3.2\"");
        let cfg = Config::parse(&own).unwrap();
        facts.live = Ok(Live::installed(&cfg, Route::new(node(1), Open::All)));
        // barman connects to this host's own address when the other is shared
        let Some(Ok(server)) = &mut facts.barman else { unreachable!() };
        for key in ["conninfo", "streaming_conninfo"] {
            server.settings.insert(key.into(), "host=10.8.3.2 port=54321 user=barman".into());
        }
        let report = assess(&cfg, &facts);
        let names: Vec<&str> = report.checks.iter().map(|l| l.name.as_str()).collect();
        let at = names.iter().position(|n| *n == "net.ipv4.ip_forward = 1").unwrap();
        assert_eq!(
            names[at + 1..at + 5],
            [
                "keepalived runs here",
                "conntrackd runs here",
                "net.netfilter.nf_conntrack_tcp_be_liberal = 1",
                "net.netfilter.nf_conntrack_tcp_loose = 1"
            ]
        );
        assert_eq!(report.failed(), 1, "{}", report.to_text());
    }

    #[test]
    fn repmgrs_nodes_are_compared_with_the_configs_read_on_the_primary() {
        let cfg = verify_full();
        let mut facts = clean();
        let name = "repmgr's nodes (repmgr.nodes) are those of [nodes]";
        let rows = |rows: &[(i64, &str)]| {
            RepmgrNodes::Rows(
                rows.iter().map(|(id, host)| (*id, format!("host={host} user=repmgr dbname=repmgr"))).collect(),
            )
        };
        let with = |standby: RepmgrNodes, primary: RepmgrNodes| {
            Some(vec![
                (node(1), Ok(NodeSettings { in_recovery: true, repmgr_nodes: standby, ..settings() })),
                (node(2), Ok(NodeSettings { repmgr_nodes: primary, ..settings() })),
            ])
        };
        // Patroni, or repmgr's schema in another database: no line
        assert!(!assess(&cfg, &facts).to_text().contains("repmgr.nodes"));
        facts.nodes = with(rows(&[(9, "10.9.9.9")]), rows(&[(1, "10.8.1.1"), (2, "10.8.2.1")]));
        assert_eq!(line(&cfg, &facts, name), format!("OK  {name}: 2 node(s), repmgr.nodes on node 2"));
        facts.nodes = with(rows(&[]), rows(&[(1, "10.8.1.1"), (2, "10.8.2.9"), (3, "10.8.3.9")]));
        let text = line(&cfg, &facts, name);
        assert_eq!(
            text,
            format!(
                "FAILED  {name}: node 2 is 10.8.2.9 in repmgr's conninfo, 10.8.2.1 in [nodes]; repmgr has node 3 \
                 (10.8.3.9), [nodes] does not (repmgr.nodes on node 2); [nodes] in /etc/repmgr-nat.toml must name \
                 each node by repmgr's node_id with the address of its conninfo (repmgr cluster show): events name \
                 repmgr's ids, and a node missing there is never routed to"
            )
        );
        facts.nodes = with(rows(&[]), rows(&[(1, "10.8.1.1")]));
        assert!(line(&cfg, &facts, name).contains("FAILED  repmgr's nodes (repmgr.nodes) are those of [nodes]: node 2 (10.8.2.1) of [nodes] is not one of repmgr's"));
        // a host name: the certificate's name of the node, or what it resolves to
        let named = Config::parse(
            &verify_full_text()
                .replace("2 = \"10.8.2.1\"", "2 = { address = \"10.8.2.1\", name = \"db2.example.com\" }"),
        )
        .unwrap();
        facts.nodes = with(rows(&[]), rows(&[(1, "db1.internal"), (2, "db2.example.com")]));
        assert_eq!(repmgr_hosts(&named, facts.nodes.as_ref().unwrap()), ["db1.internal"]);
        assert!(line(&named, &facts, name).starts_with("FAILED  repmgr's nodes (repmgr.nodes) are those of [nodes]: node 1 is db1.internal in repmgr's conninfo, 10.8.1.1 in [nodes] (repmgr"));
        facts.resolved.insert("db1.internal".into(), vec![Ipv4Addr::new(10, 8, 1, 1)]);
        assert!(line(&named, &facts, name).starts_with("OK  "));
        // there, but not readable: a warning with the grants, which fails nothing
        facts.nodes = with(RepmgrNodes::Absent, RepmgrNodes::Unreadable);
        assert_eq!(
            line(&cfg, &facts, name),
            format!(
                "WARN  {name}: role repmgr_nat may not read repmgr.nodes in database postgres, so check cannot \
                 compare; to let it, on the primary in database postgres run: GRANT USAGE ON SCHEMA repmgr TO \
                 repmgr_nat; GRANT SELECT ON repmgr.nodes TO repmgr_nat"
            )
        );
        assert_eq!(assess(&cfg, &facts).failed(), 0);
        // no primary answers: the first node that did
        facts.nodes = Some(vec![
            (node(1), Err(Answer::Down("refused".into()))),
            (
                node(2),
                Ok(NodeSettings {
                    in_recovery: true,
                    repmgr_nodes: rows(&[(1, "10.8.1.1"), (2, "10.8.2.1")]),
                    ..settings()
                }),
            ),
        ]);
        assert_eq!(line(&cfg, &facts, name), format!("OK  {name}: 2 node(s), repmgr.nodes on node 2"));
    }

    #[test]
    fn text_lines_escape_what_servers_print() {
        let mut facts = clean();
        facts.nodes = Some(vec![(node(1), Err(Answer::Rejected("bad\nline\u{1b}[31m".into())))]);
        let text = assess(&verify_full(), &facts).to_text();
        assert!(text.contains("bad\\nline\\u{1b}[31m"), "{text}");
    }
}
