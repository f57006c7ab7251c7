//! The file as written, and its validation into `Config`. Unknown keys are errors: a
//! misspelt key must not be ignored. One file, though long: each key's default and its
//! check sit side by side, in the order of the README's configuration table.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::*;

pub(super) fn parse(text: &str, instance: &Instance) -> Result<Config> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        // toml's message spans several lines (it quotes the offending line);
        // keep the first one so the error stays one line in repmgr's log.
        anyhow::anyhow!("{}", e.message().lines().next().unwrap_or("invalid TOML"))
    })?;
    raw.validate(instance)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    proxy: RawProxy,
    ports: RawPorts,
    nodes: BTreeMap<String, toml::Value>,
    postgres: RawPostgres,
    barman: Option<RawBarman>,
    #[serde(default)]
    nat: RawNat,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    watch: RawWatch,
    #[serde(default)]
    repmgr: RawRepmgr,
}

// A section whose every key has a default: `#[serde(default)]` on the section, its
// defaults in its one `Default`. A section with required keys names each default.

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawRepmgr {
    user: String,
}

impl Default for RawRepmgr {
    fn default() -> Self {
        RawRepmgr { user: "postgres".into() }
    }
}

/// `1 = { address = "10.8.1.1", name = "db1.example.com" }` (or just `1 = "10.8.1.1"`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNamedNode {
    address: String,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    address: String,
    own_address: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPorts {
    postgres: i64,
    barman: Option<i64>,
    app: OneOrMany,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(i64),
    Many(Vec<i64>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    user: String,
    dbname: String,
    #[serde(default = "default_sslmode")]
    sslmode: SslMode,
    sslrootcert: Option<String>,
    #[serde(default = "default_channel_binding")]
    channel_binding: ChannelBinding,
    #[serde(default = "default_connect_timeout")]
    connect_timeout: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBarman {
    server: String,
    slot: String,
    #[serde(default = "default_archive_timeout")]
    archive_timeout: i64,
    #[serde(default = "default_barman_user")]
    user: String,
    #[serde(default = "default_barman_command")]
    command: String,
    #[serde(default = "default_open_app")]
    open_app: OpenApp,
    #[serde(default = "default_true")]
    open_app_on_failure: bool,
    #[serde(default = "default_true")]
    standby_slots: bool,
    #[serde(default = "default_standby_slot_limit_mb")]
    standby_slot_limit_mb: i64,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawNat {
    /// The chains' names default to the instance's (`Instance::chain`).
    dnat_chain: Option<String>,
    snat_chain: Option<String>,
    hold: bool,
    hold_chain: Option<String>,
    no_primary: NoPrimary,
}

impl Default for RawNat {
    fn default() -> Self {
        RawNat { dnat_chain: None, snat_chain: None, hold: true, hold_chain: None, no_primary: NoPrimary::Hold }
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawState {
    /// Defaults to the instance's (`Instance::dir`).
    dir: Option<String>,
    lock_timeout: Option<i64>,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawWatch {
    interval_ms: i64,
    /// Defaults to the instance's (`Instance::dir`).
    dir: Option<String>,
    /// An address and port, or `""` / `false` for none.
    metrics: Option<toml::Value>,
}

impl Default for RawWatch {
    fn default() -> Self {
        RawWatch { interval_ms: 250, dir: None, metrics: None }
    }
}

fn default_standby_slot_limit_mb() -> i64 {
    1024
}
fn default_open_app() -> OpenApp {
    OpenApp::AfterSlot
}
fn default_channel_binding() -> ChannelBinding {
    ChannelBinding::Prefer
}
fn default_sslmode() -> SslMode {
    SslMode::Prefer
}
fn default_connect_timeout() -> i64 {
    3
}
fn default_archive_timeout() -> i64 {
    90
}
fn default_barman_user() -> String {
    "barman".into()
}
fn default_barman_command() -> String {
    "/usr/bin/barman".into()
}
fn default_true() -> bool {
    true
}

impl RawBarman {
    fn validate(self) -> Result<Barman> {
        let archive_timeout = self.archive_timeout;
        if !(1..=3600).contains(&archive_timeout) {
            bail!("barman.archive_timeout: {archive_timeout} is not between 1 and 3600 seconds");
        }
        let command = PathBuf::from(&self.command);
        if !command.is_absolute() {
            bail!("barman.command: {:?} is not an absolute path", self.command);
        }
        Ok(Barman {
            server: barman_server(self.server)?,
            slot: slot_name(self.slot)?,
            archive_timeout: archive_timeout as u32,
            user: os_user("barman.user", self.user)?,
            command,
            open_app: self.open_app,
            open_app_on_failure: self.open_app_on_failure,
            standby_slots: self.standby_slots,
            standby_slot_limit: {
                let mb = self.standby_slot_limit_mb;
                if !(16..=10_000_000).contains(&mb) {
                    bail!("barman.standby_slot_limit_mb: {mb} is not between 16 and 10000000");
                }
                mb as u64 * 1024 * 1024
            },
        })
    }
}

impl RawConfig {
    fn validate(self, instance: &Instance) -> Result<Config> {
        let proxy = address("proxy.address", &self.proxy.address)?;
        let own_address = self.proxy.own_address.map(|a| address("proxy.own_address", &a)).transpose()?;
        if own_address == Some(proxy) {
            bail!("proxy.own_address: {proxy} is proxy.address; give this host's own address, not the shared one");
        }

        let postgres_port = port("ports.postgres", self.ports.postgres)?;
        let barman_port = match (self.ports.barman, &self.barman) {
            (Some(p), Some(_)) => Some(port("ports.barman", p)?),
            (None, None) => None,
            (None, Some(_)) => bail!("ports.barman: required with a [barman] section"),
            (Some(_), None) => bail!(
                "ports.barman: set, but there is no [barman] section (a proxy without barman forwards only the \
                 application ports): remove it, or add [barman]"
            ),
        };
        let app = match self.ports.app {
            OneOrMany::One(p) => vec![port("ports.app", p)?],
            OneOrMany::Many(list) => list.into_iter().map(|p| port("ports.app", p)).collect::<Result<Vec<_>>>()?,
        };
        if app.is_empty() {
            bail!("ports.app: at least one application port is needed");
        }
        let mut seen: Vec<u16> = barman_port.into_iter().collect();
        for p in &app {
            if seen.contains(p) {
                bail!("ports: port {p} is used twice (barman and app ports must all differ)");
            }
            seen.push(*p);
        }

        if self.nodes.is_empty() {
            bail!("nodes: at least one node is needed");
        }
        let mut nodes: BTreeMap<NodeId, Node> = BTreeMap::new();
        let mut server_names = BTreeMap::new();
        for (key, value) in &self.nodes {
            let id = NodeId::parse(key).with_context(|| format!("nodes.{key}"))?;
            let RawNamedNode { address: value, name } = match value {
                toml::Value::String(address) => RawNamedNode { address: address.clone(), name: None },
                table => table.clone().try_into().map_err(|e: toml::de::Error| {
                    anyhow::anyhow!("nodes.{key}: {} (an address, or {{ address = ..., name = ... }})", e.message())
                })?,
            };
            let addr = address(&format!("nodes.{key}"), &value)?;
            if let Some(name) = name {
                server_names.insert(id, host_name(&format!("nodes.{key}.name"), &name)?);
            }
            if addr == proxy {
                bail!("nodes.{key}: {addr} is the proxy's own address");
            }
            if own_address == Some(addr) {
                bail!("nodes.{key}: {addr} is proxy.own_address");
            }
            if let Some(other) = nodes.values().find(|n| n.addr == addr) {
                bail!("nodes.{key}: address {addr} is also node {}'s", other.id);
            }
            if nodes.insert(id, Node { id, addr }).is_some() {
                bail!("nodes.{key}: node id {id} is listed twice");
            }
        }
        let nodes: Vec<Node> = nodes.into_values().collect();

        let sslrootcert = self.postgres.sslrootcert.map(PathBuf::from);
        if let Some(path) = &sslrootcert
            && !path.is_absolute()
        {
            bail!("postgres.sslrootcert: {:?} is not an absolute path", path);
        }
        if self.postgres.sslmode.verifies() && sslrootcert.is_none() {
            bail!("postgres.sslmode: verify-ca and verify-full need postgres.sslrootcert");
        }
        if self.postgres.channel_binding == ChannelBinding::Require && self.postgres.sslmode == SslMode::Disable {
            bail!("postgres.channel_binding: require needs TLS (sslmode is disable)");
        }
        let postgres = Postgres {
            user: text_value("postgres.user", self.postgres.user)?,
            dbname: text_value("postgres.dbname", self.postgres.dbname)?,
            sslmode: self.postgres.sslmode,
            sslrootcert,
            channel_binding: self.postgres.channel_binding,
            server_names,
            connect_timeout: seconds("postgres.connect_timeout", self.postgres.connect_timeout, 1, 60)?,
        };

        let barman = self.barman.map(RawBarman::validate).transpose()?;
        let chain = |key: &str, role: &str, value: Option<String>| {
            chain_name(&format!("nat.{key}"), value.unwrap_or_else(|| instance.chain(role)))
        };
        let nat = Nat {
            dnat_chain: chain("dnat_chain", "dnat", self.nat.dnat_chain)?,
            snat_chain: chain("snat_chain", "snat", self.nat.snat_chain)?,
            hold: self.nat.hold,
            hold_chain: chain("hold_chain", "hold", self.nat.hold_chain)?,
            no_primary: self.nat.no_primary,
        };
        if nat.dnat_chain == nat.snat_chain {
            bail!("nat: dnat_chain and snat_chain must differ");
        }

        let dir = PathBuf::from(self.state.dir.unwrap_or_else(|| instance.dir(State::DIR)));
        if !dir.is_absolute() {
            bail!("state.dir: {:?} is not an absolute path", dir);
        }
        // By default a run waits as long as a promotion can hold the lock, so that an
        // event arriving during one is handled after it rather than failing.
        let lock_timeout = match self.state.lock_timeout {
            Some(secs) => seconds("state.lock_timeout", secs, 1, 3600)?,
            None => barman.as_ref().map_or(Duration::from_secs(60), |b| b.worst_case() + Duration::from_secs(35)),
        };
        let state = State { dir, lock_timeout };

        let interval_ms = self.watch.interval_ms;
        if !(10..=10_000).contains(&interval_ms) {
            bail!("watch.interval_ms: {interval_ms} is not between 10 and 10000");
        }
        let watch_dir = PathBuf::from(self.watch.dir.unwrap_or_else(|| instance.dir(Watch::DIR)));
        if !watch_dir.is_absolute() {
            bail!("watch.dir: {:?} is not an absolute path", watch_dir);
        }
        let metrics = match (self.watch.metrics, instance) {
            // one listener per watch: a named instance chooses its own port
            (None, Instance::Named(_)) => None,
            (value, _) => metrics_address(value)?,
        };
        let watch = Watch { interval: Duration::from_millis(interval_ms as u64), dir: watch_dir, metrics };

        Ok(Config {
            proxy,
            own_address,
            ports: Ports { postgres: postgres_port, barman: barman_port, app },
            nodes,
            postgres,
            barman,
            nat,
            state,
            watch,
            repmgr_user: os_user("repmgr.user", self.repmgr.user)?,
            instance: instance.clone(),
        })
    }
}

/// `watch.metrics`: an address and port to listen on, or `""` / `false` for none.
fn metrics_address(value: Option<toml::Value>) -> Result<Option<SocketAddr>> {
    let text = match value {
        None => Watch::METRICS.to_string(),
        Some(toml::Value::String(text)) => text,
        Some(toml::Value::Boolean(false)) => return Ok(None),
        Some(other) => bail!(
            "watch.metrics: {} is not an address and port such as {:?}, \"\" or false",
            quoted(&other.to_string()),
            Watch::METRICS
        ),
    };
    if text.is_empty() {
        return Ok(None);
    }
    match text.parse::<SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Ok(Some(addr)),
        _ => bail!("watch.metrics: {} is not an address and port such as {:?}", quoted(&text), Watch::METRICS),
    }
}

fn address(key: &str, value: &str) -> Result<Ipv4Addr> {
    let addr: Ipv4Addr = value.parse().map_err(|_| anyhow::anyhow!("{key}: {value:?} is not an IPv4 address"))?;
    if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() || addr.is_loopback() {
        bail!("{key}: {addr} cannot be used (unspecified, loopback, broadcast or multicast)");
    }
    Ok(addr)
}

/// A DNS name a certificate may carry: letters, digits, `-` and `.`, at most 253.
fn host_name(key: &str, value: &str) -> Result<String> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && !value.starts_with(['-', '.'])
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !ok {
        bail!("{key}: {value:?} is not a host name");
    }
    Ok(value.to_string())
}

fn port(key: &str, value: i64) -> Result<u16> {
    match u16::try_from(value) {
        Ok(p) if p > 0 => Ok(p),
        _ => bail!("{key}: {value} is not a port number (1-65535)"),
    }
}

fn seconds(key: &str, value: i64, min: i64, max: i64) -> Result<Duration> {
    if !(min..=max).contains(&value) {
        bail!("{key}: {value} is not between {min} and {max} seconds");
    }
    Ok(Duration::from_secs(value as u64))
}

/// A value handed to PostgreSQL as a connection parameter (never to a command line).
fn text_value(key: &str, value: String) -> Result<String> {
    if value.is_empty() || value.len() > 63 || value.chars().any(|c| c.is_control()) {
        bail!("{key}: {value:?} must be 1-63 characters without control characters");
    }
    Ok(value)
}

/// A name that reaches a command line, SQL or a ruleset: 1 to `max` characters that
/// `allowed` accepts, never starting like an option (`-`) or a hidden file (`.`).
fn name(key: &str, value: String, max: usize, allowed: fn(u8) -> bool, which: &str) -> Result<String> {
    let ok = !value.is_empty() && value.len() <= max && !value.starts_with(['-', '.']) && value.bytes().all(allowed);
    if !ok {
        bail!("{key}: {value:?} must be 1-{max} characters of {which}, not starting with - or .");
    }
    Ok(value)
}

/// PostgreSQL's rule for replication slot names.
fn slot_name(value: String) -> Result<String> {
    name("barman.slot", value, 63, |b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_', "a-z, 0-9 and _")
}

fn barman_server(value: String) -> Result<String> {
    // barman reads "all" as every server it has: repmgr-nat acts on one
    if value == "all" {
        bail!("barman.server: \"all\" means every server to barman; name the one that streams from the cluster");
    }
    name("barman.server", value, 64, |b| b.is_ascii_alphanumeric() || b"_-.".contains(&b), "letters, digits, _ - .")
}

fn os_user(key: &str, value: String) -> Result<String> {
    name(key, value, 32, |b| b.is_ascii_alphanumeric() || b"_-.".contains(&b), "letters, digits, _ - .")
}

/// Chains of the kernel and of the tools that commonly share a host's tables: repmgr-nat
/// empties the chains it is given, so it must never be given one of theirs.
const FOREIGN_CHAINS: [&str; 5] = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "FORWARD"];
const FOREIGN_PREFIXES: [&str; 16] = [
    "DOCKER", "KUBE-", "CNI-", "CILIUM", "cali-", "FLANNEL", "WEAVE", "LIBVIRT_", "NETAVARK", "ufw-", "ufw6-", "f2b-",
    "fail2ban", "sshguard", "nixos-", "zone_",
];

/// iptables chain names: at most 28 characters, and none of the kernel's or other tools'.
fn chain_name(key: &str, value: String) -> Result<String> {
    if FOREIGN_CHAINS.contains(&value.as_str()) {
        bail!("{key}: {value:?} is a built-in chain");
    }
    if let Some(prefix) =
        FOREIGN_PREFIXES.iter().find(|p| value.to_ascii_lowercase().starts_with(&p.to_ascii_lowercase()))
    {
        bail!("{key}: {value:?} looks like another tool's chain ({prefix}...); choose a name of repmgr-nat's own");
    }
    name(key, value, 28, |b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-', "letters, digits, _ and -")
}
