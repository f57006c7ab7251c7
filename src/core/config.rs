//! The configuration file: parsed once, validated once, and handed to the rest of the
//! program only in its validated form (`Config`). Every value that reaches a command
//! line, a SQL parameter or a ruleset is checked here.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Deserialize;

mod file;
pub mod instance;

pub use instance::Instance;

/// A value from outside, quoted for a message: escaped, and cut after 40 characters.
pub fn quoted(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{:?}...", &text[..at]),
        None => format!("{text:?}"),
    }
}

/// Where the root-owned configuration lives; `route` reads nothing else.
pub const DEFAULT_PATH: &str = "/etc/repmgr-nat.toml";

/// A repmgr node id (`node_id` in repmgr.conf): a positive 32-bit integer. Whether the
/// config lists it is another matter: only a `Node` is known to be configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, Deserialize)]
#[serde(into = "u32", try_from = "u32")]
pub struct NodeId(u32);

impl TryFrom<u32> for NodeId {
    type Error = anyhow::Error;

    fn try_from(id: u32) -> Result<NodeId> {
        NodeId::parse(&id.to_string())
    }
}

/// A positive 32-bit integer written as repmgr and PostgreSQL write one: digits only, no
/// sign, no spaces, not zero.
pub fn positive_integer(text: &str) -> Option<u32> {
    let digits = !text.is_empty() && text.len() <= 10 && text.bytes().all(|b| b.is_ascii_digit());
    text.parse::<u32>().ok().filter(|n| digits && *n > 0)
}

impl NodeId {
    /// Parses a node id as repmgr writes it (`%n`): digits only, no sign, not zero.
    pub fn parse(text: &str) -> Result<NodeId> {
        match positive_integer(text) {
            Some(id) if id <= i32::MAX as u32 => Ok(NodeId(id)),
            _ => bail!("node id {} is not a positive integer", quoted(text)),
        }
    }

    #[cfg(test)]
    pub const fn new(id: u32) -> NodeId {
        NodeId(id)
    }
}

impl From<NodeId> for u32 {
    fn from(id: NodeId) -> u32 {
        id.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A node the config lists: its id and its address. Only `Config` makes them, so whatever
/// holds a `Node` (a route, a ruleset, a connection) names a configured node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Node {
    id: NodeId,
    addr: Ipv4Addr,
}

impl Node {
    pub fn id(self) -> NodeId {
        self.id
    }

    pub fn addr(self) -> Ipv4Addr {
        self.addr
    }

    /// A node at any address, loopback included (the config refuses those).
    #[cfg(test)]
    pub const fn new(id: NodeId, addr: Ipv4Addr) -> Node {
        Node { id, addr }
    }
}

/// In JSON a node is its id.
impl serde::Serialize for Node {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.id.serialize(s)
    }
}

/// When the application port opens on a promotion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenApp {
    /// As soon as the new primary holds barman's slot: from then on it keeps every WAL
    /// record for barman. barman is restarted and confirms after the port opened.
    AfterSlot,
    /// Only once barman has archived a WAL file of the new primary.
    AfterArchive,
}

/// What becomes of the application port while no primary answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoPrimary {
    /// Keep the rules as they are (a primary that does not answer the proxy may still
    /// serve); the port is closed only when its node is known to serve nobody.
    Hold,
    /// Close the application port (new connections are held, not refused).
    Close,
}

/// How the PostgreSQL connection negotiates TLS, with libpq's meaning of each mode (but
/// for `require`, which never verifies: libpq's verifies when a root certificate exists).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    /// The server's certificate must be signed by `postgres.sslrootcert`.
    VerifyCa,
    /// ... and name the node: its `name`, or else its address.
    VerifyFull,
}

impl SslMode {
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// SCRAM channel binding, as libpq's `channel_binding`: `require` refuses a server that
/// does not prove, inside the TLS session, that it knows the password's verifier (no
/// cleartext, no MD5, no man in the middle).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelBinding {
    Disable,
    Prefer,
    Require,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The address clients and barman connect to (the DNAT rules match it); shared by two
    /// proxy hosts when keepalived moves it between them.
    pub proxy: Ipv4Addr,
    /// This host's own address when `proxy` is shared: the connections this host makes
    /// itself (barman's) leave from it, so the nodes' replies come back here whichever
    /// host holds the shared address. None: everything leaves from `proxy`.
    pub own_address: Option<Ipv4Addr>,
    pub ports: Ports,
    /// Every node repmgr-nat may route to, in node id order.
    pub nodes: Vec<Node>,
    pub postgres: Postgres,
    /// None on a proxy without barman (no `[barman]` section): it opens only the
    /// application ports and never touches a slot or receive-wal.
    pub barman: Option<Barman>,
    pub nat: Nat,
    pub state: State,
    pub watch: Watch,
    /// The OS user repmgr runs as: events, reconcile and watch run as it, setup asks the
    /// nodes as it, and its group may take the run lock.
    pub repmgr_user: String,
    /// Which of this host's clusters the config is (the default one unless named).
    pub instance: Instance,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ports {
    /// The port PostgreSQL listens on, on every node.
    pub postgres: u16,
    /// barman's conninfo and streaming_conninfo point at proxy:barman (none without barman).
    pub barman: Option<u16>,
    /// Applications connect to proxy:app; opened last on a promotion.
    pub app: Vec<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Postgres {
    pub user: String,
    pub dbname: String,
    pub sslmode: SslMode,
    /// The certificate authorities a node's certificate must be signed by (verify-*).
    pub sslrootcert: Option<PathBuf>,
    pub channel_binding: ChannelBinding,
    /// The name a node's certificate must carry (verify-full), where it is not its address.
    pub server_names: BTreeMap<NodeId, String>,
    /// The deadline of one node's answer: TCP connect, TLS, login and the queries.
    pub connect_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Barman {
    pub server: String,
    pub slot: String,
    pub archive_timeout: u32,
    /// The OS user barman runs as (`sudo -n -u <user>`).
    pub user: String,
    /// Absolute path of the barman executable, as named in sudoers.
    pub command: PathBuf,
    pub open_app: OpenApp,
    /// When barman does not confirm the WAL switch: open the application port anyway
    /// (true, the article's behaviour) or leave it closed until the next event.
    pub open_app_on_failure: bool,
    /// Keep barman's slot on every standby too, advanced to what barman has confirmed on
    /// the primary: after a failover, the new primary still has every WAL record barman
    /// had not received. false: the slot lives on the primary only (the article's rule).
    pub standby_slots: bool,
    /// How much WAL (bytes) a standby's slot may keep while the primary cannot be asked
    /// (nothing can advance the slot then) before it is dropped, and made again.
    pub standby_slot_limit: u64,
}

impl Barman {
    /// How often the new primary writes a WAL record while barman waits for its switched
    /// WAL file: barman archives a streamed file only once the next one has begun, and a
    /// new primary may write nothing for seconds.
    pub const NUDGE_EVERY: Duration = Duration::from_millis(50);
    /// How long `receive-wal --stop` may take.
    pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

    /// How long `switch-wal --archive` may take: its own timeout and barman's start-up.
    pub fn switch_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.archive_timeout) + 10)
    }

    /// The longest the barman commands of one promotion may take together.
    pub fn worst_case(&self) -> Duration {
        Self::STOP_TIMEOUT + self.switch_timeout()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nat {
    pub dnat_chain: String,
    pub snat_chain: String,
    /// Hold new connections to a closed application port (drop their SYN) instead of
    /// refusing them.
    pub hold: bool,
    /// The filter-table chain that holds them (jumped to first from INPUT and FORWARD).
    pub hold_chain: String,
    pub no_primary: NoPrimary,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub dir: PathBuf,
    pub lock_timeout: Duration,
}

impl State {
    /// The default instance's state directory; a named one's is inside it.
    pub const DIR: &str = "/var/lib/repmgr-nat";
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    /// How often `watch` asks every node while the routed primary answers.
    pub interval: Duration,
    /// Where `watch` keeps what it saw last (`status` reads it); writable by repmgr's OS user.
    pub dir: PathBuf,
    /// Where `watch` serves its Prometheus metrics (`GET /metrics`); none: not at all.
    pub metrics: Option<SocketAddr>,
}

impl Watch {
    /// The default instance's watch.dir (the unit's RuntimeDirectory); a named one's is
    /// inside it.
    pub const DIR: &str = "/run/repmgr-nat";
    /// While the routed primary does not answer, a promotion is near: every node is asked
    /// this often (or at `interval`, if that is shorter).
    pub const HURRY: Duration = Duration::from_millis(50);
    /// How often `watch` reads the nat table (through sudo) when nothing else made it.
    pub const NAT_EVERY: Duration = Duration::from_millis(500);
    /// Where the metrics are served unless `watch.metrics` says otherwise: loopback only.
    pub const METRICS: &str = "127.0.0.1:9721";
}

impl Config {
    /// The default instance's config (`/etc/repmgr-nat.toml`).
    #[cfg(test)]
    pub fn parse(text: &str) -> Result<Config> {
        file::parse(text, &Instance::Default)
    }

    /// `instance`'s config: the defaults of what it must not share are its own.
    pub fn parse_instance(text: &str, instance: &Instance) -> Result<Config> {
        file::parse(text, instance)
    }

    /// barman's slot, where this proxy has barman; an error otherwise (only the steps
    /// of a proxy with barman touch a slot).
    pub fn slot(&self) -> Result<&str> {
        match &self.barman {
            Some(barman) => Ok(&barman.slot),
            None => bail!("no [barman] section: this proxy manages no slot"),
        }
    }

    /// Where `node`'s PostgreSQL listens.
    pub fn postgres_addr(&self, node: Node) -> SocketAddrV4 {
        SocketAddrV4::new(node.addr, self.ports.postgres)
    }

    /// The configured node with this id, or an error naming the known ones.
    pub fn node(&self, id: NodeId) -> Result<Node> {
        match self.nodes.iter().find(|n| n.id == id) {
            Some(node) => Ok(*node),
            None => bail!(
                "unknown node id {id} (configured: {})",
                self.nodes.iter().map(|n| n.id.to_string()).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The example of the README, with the article's addresses.
    pub const EXAMPLE: &str = r#"
[proxy]
address = "10.8.3.1"
[ports]
postgres = 5432
barman = 54321
app = 54322
[nodes]
1 = "10.8.1.1"
2 = "10.8.2.1"
[postgres]
user = "repmgr_nat"
dbname = "postgres"
[barman]
server = "main_backup"
slot = "barman"
archive_timeout = 90
[state]
dir = "/var/lib/repmgr-nat"
"#;

    pub fn example() -> Config {
        Config::parse(EXAMPLE).unwrap()
    }

    /// The example with a third node, 10.8.4.1.
    pub fn three_nodes() -> Config {
        Config::parse(&EXAMPLE.replace("2 = \"10.8.2.1\"", "2 = \"10.8.2.1\"\n3 = \"10.8.4.1\"")).unwrap()
    }

    /// The example as the second of two proxy hosts sharing 10.8.3.1 would have it: its
    /// own address 10.8.3.3, and no barman (the first proxy host runs it).
    pub fn second_proxy() -> Config {
        let text = EXAMPLE
            .replace("address = \"10.8.3.1\"", "address = \"10.8.3.1\"\nown_address = \"10.8.3.3\"")
            .replace("barman = 54321\n", "");
        let text = text.split("[barman]").next().unwrap().to_string() + "[state]\ndir = \"/var/lib/repmgr-nat\"\n";
        Config::parse(&text).unwrap()
    }

    /// A node of the example (of `three_nodes` for 3).
    pub fn node(id: u32) -> Node {
        three_nodes().node(NodeId(id)).unwrap()
    }

    fn error_of(text: &str) -> String {
        format!("{:#}", Config::parse(text).unwrap_err())
    }

    fn with(old: &str, new: &str) -> String {
        assert!(EXAMPLE.contains(old), "{old} not in the example");
        EXAMPLE.replacen(old, new, 1)
    }

    #[test]
    fn example_parses_with_defaults() {
        let c = example();
        assert_eq!(c.proxy, Ipv4Addr::new(10, 8, 3, 1));
        assert_eq!(c.ports, Ports { postgres: 5432, barman: Some(54321), app: vec![54322] });
        assert_eq!(c.node(NodeId(2)).unwrap().addr(), Ipv4Addr::new(10, 8, 2, 1));
        assert_eq!(c.barman.as_ref().unwrap().open_app, OpenApp::AfterSlot);
        assert!(c.barman.as_ref().unwrap().standby_slots);
        assert_eq!(c.barman.as_ref().unwrap().standby_slot_limit, 1 << 30);
        assert_eq!(c.watch.interval, Duration::from_millis(250));
        assert_eq!(c.nat.no_primary, NoPrimary::Hold);
        assert_eq!(c.postgres.sslmode, SslMode::Prefer);
        assert_eq!(c.postgres.channel_binding, ChannelBinding::Prefer);
        assert_eq!(c.repmgr_user, "postgres");
        assert_eq!(c.postgres.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.barman.as_ref().unwrap().user, "barman");
        assert_eq!(c.barman.as_ref().unwrap().command, PathBuf::from("/usr/bin/barman"));
        assert!(c.barman.as_ref().unwrap().open_app_on_failure);
        assert_eq!(c.nat.dnat_chain, "repmgr_dnat");
        assert_eq!(c.nat.snat_chain, "repmgr_snat");
        assert_eq!(c.state.lock_timeout, Duration::from_secs(150), "archive_timeout 90 + 60");
        assert_eq!(c.watch.metrics, Some(SocketAddr::from(([127, 0, 0, 1], 9721))), "loopback only");
    }

    #[test]
    fn a_second_proxy_host_has_an_address_of_its_own_and_may_go_without_barman() {
        let c = second_proxy();
        assert_eq!((c.proxy, c.own_address), (Ipv4Addr::new(10, 8, 3, 1), Some(Ipv4Addr::new(10, 8, 3, 3))));
        assert_eq!((&c.barman, c.ports.barman), (&None, None));
        assert_eq!(c.state.lock_timeout, Duration::from_secs(60), "no barman step to outlast");
        assert_eq!(format!("{:#}", c.slot().unwrap_err()), "no [barman] section: this proxy manages no slot");
        assert_eq!(example().own_address, None);
    }

    #[test]
    fn metrics_may_be_turned_off_or_moved() {
        let metrics =
            |value: &str| Config::parse(&format!("{EXAMPLE}[watch]\nmetrics = {value}\n")).unwrap().watch.metrics;
        assert_eq!(metrics("false"), None);
        assert_eq!(metrics("\"\""), None);
        assert_eq!(metrics("\"[::1]:9721\""), Some("[::1]:9721".parse().unwrap()));
        assert_eq!(metrics("\"10.8.3.1:9000\""), Some("10.8.3.1:9000".parse().unwrap()));
    }

    #[test]
    fn the_packaged_example_sets_every_key_to_a_valid_value() {
        const PACKAGED: &str = include_str!("../../packaging/repmgr-nat.toml");
        // it verifies the nodes' certificates: as shipped, the CA is the one value missing
        let err = format!("{:#}", Config::parse(PACKAGED).unwrap_err());
        assert_eq!(err, "postgres.sslmode: verify-ca and verify-full need postgres.sslrootcert");
        let packaged = Config::parse(&PACKAGED.replace("#sslrootcert", "sslrootcert")).unwrap();
        let postgres = Postgres {
            sslmode: SslMode::VerifyFull,
            sslrootcert: Some(PathBuf::from("/etc/repmgr-nat/ca.crt")),
            ..example().postgres
        };
        assert_eq!(
            packaged,
            Config {
                state: State { lock_timeout: Duration::from_secs(150), ..packaged.state.clone() },
                postgres,
                ..example()
            }
        );
    }

    #[test]
    fn a_node_may_name_the_certificate_it_presents() {
        let c = Config::parse(&with("2 = \"10.8.2.1\"", "2 = { address = \"10.8.2.1\", name = \"db2.example.com\" }"))
            .unwrap();
        assert_eq!(c.node(NodeId(2)).unwrap().addr(), Ipv4Addr::new(10, 8, 2, 1));
        assert_eq!(c.postgres.server_names.get(&NodeId(2)).map(String::as_str), Some("db2.example.com"));
        assert_eq!(c.postgres.server_names.get(&NodeId(1)), None);
    }

    #[test]
    fn app_may_be_a_list_of_ports() {
        let c = Config::parse(&with("app = 54322", "app = [54322, 54323]")).unwrap();
        assert_eq!(c.ports.app, vec![54322, 54323]);
    }

    #[test]
    fn unknown_node_is_named_with_the_known_ones() {
        let err = format!("{}", example().node(NodeId(7)).unwrap_err());
        assert_eq!(err, "unknown node id 7 (configured: 1, 2)");
    }

    #[test]
    fn node_ids_are_positive_integers() {
        for bad in ["", "0", "-1", "+1", "1.0", "x", "99999999999", "2147483648", " 1"] {
            assert!(NodeId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(NodeId::parse("2147483647").unwrap(), NodeId(2147483647));
        let long = format!("{:#}", NodeId::parse(&"1".repeat(100_000)).unwrap_err());
        assert_eq!(long, format!("node id \"{}\"... is not a positive integer", "1".repeat(40)));
    }

    #[test]
    fn validation_errors_name_the_key() {
        let cases = [
            (with("10.8.3.1", "10.8.3"), "proxy.address: \"10.8.3\" is not an IPv4 address"),
            (with("\"10.8.2.1\"", "\"10.8.1.1\""), "nodes.2: address 10.8.1.1 is also node 1's"),
            (with("\"10.8.2.1\"", "\"10.8.3.1\""), "nodes.2: 10.8.3.1 is the proxy's own address"),
            (with("2 = ", "two = "), "nodes.two: node id \"two\" is not a positive integer"),
            (with("barman = 54321", "barman = 70000"), "ports.barman: 70000 is not a port number (1-65535)"),
            (with("app = 54322", "app = 54321"), "ports: port 54321 is used twice"),
            (with("app = 54322", "app = []"), "ports.app: at least one application port is needed"),
            (with("slot = \"barman\"", "slot = \"Barman\""), "barman.slot: \"Barman\" must be"),
            (with("slot = \"barman\"", "slot = \"x'); drop table t; --\""), "barman.slot:"),
            (with("main_backup", "--help"), "barman.server: \"--help\" must be"),
            (with("main_backup", "all"), "barman.server: \"all\" means every server"),
            (with("archive_timeout = 90", "archive_timeout = 0"), "barman.archive_timeout: 0 is not between"),
            (with("dir = \"/var/lib/repmgr-nat\"", "dir = \"state\""), "state.dir: \"state\" is not an absolute path"),
            (with("user = \"repmgr_nat\"", "user = \"\""), "postgres.user: \"\" must be"),
            (with("[state]", "[nat]\ndnat_chain = \"PREROUTING\"\n[state]"), "nat.dnat_chain:"),
            (with("[state]", "[nat]\ndnat_chain = \"DOCKER\"\n[state]"), "looks like another tool's chain (DOCKER...)"),
            (
                with("[state]", "[nat]\nsnat_chain = \"KUBE-POSTROUTING\"\n[state]"),
                "nat.snat_chain: \"KUBE-POSTROUTING\" looks like",
            ),
            (with("[state]", "[nat]\nhold_chain = \"f2b-sshd\"\n[state]"), "nat.hold_chain: \"f2b-sshd\" looks like"),
            (
                with("[state]", "[nat]\nsnat_chain = \"repmgr_dnat\"\n[state]"),
                "nat: dnat_chain and snat_chain must differ",
            ),
            (with("[postgres]", "[postgres]\nsslmode = \"verify-everything\""), "unknown variant `verify-everything`"),
            (
                with("[postgres]", "[postgres]\nsslmode = \"verify-full\""),
                "verify-ca and verify-full need postgres.sslrootcert",
            ),
            (
                with("[postgres]", "[postgres]\nsslmode = \"disable\"\nchannel_binding = \"require\""),
                "require needs TLS",
            ),
            (
                with("[postgres]", "[postgres]\nsslrootcert = \"ca.crt\""),
                "postgres.sslrootcert: \"ca.crt\" is not an absolute path",
            ),
            (
                with("2 = \"10.8.2.1\"", "2 = { address = \"10.8.2.1\", name = \"db 2\" }"),
                "nodes.2.name: \"db 2\" is not a host name",
            ),
            (with("2 = \"10.8.2.1\"", "2 = { adress = \"10.8.2.1\" }"), "nodes.2: unknown field `adress`"),
            (with("2 = \"10.8.2.1\"", "2 = 10"), "nodes.2: invalid type"),
            (format!("{EXAMPLE}[repmgr]\nuser = \"-rf\"\n"), "repmgr.user: \"-rf\" must be"),
            (with("[proxy]", "[proxy]\nadress = \"x\""), "unknown field `adress`"),
            (with("[barman]", "[barmen]"), "unknown field `barmen`"),
            (with("[barman]", "[barman]\nopen_app = \"first\""), "unknown variant `first`"),
            (with("[barman]", "[barman]\nstandby_slot_limit_mb = 1"), "barman.standby_slot_limit_mb: 1 is not between"),
            (format!("{EXAMPLE}[watch]\ninterval_ms = 5\n"), "watch.interval_ms: 5 is not between 10 and 10000"),
            (format!("{EXAMPLE}[nat]\nno_primary = \"flap\"\n"), "unknown variant `flap`"),
            (format!("{EXAMPLE}[watch]\ndir = \"run\"\n"), "watch.dir: \"run\" is not an absolute path"),
            (
                format!("{EXAMPLE}[watch]\nmetrics = \"localhost:9721\"\n"),
                "watch.metrics: \"localhost:9721\" is not an address and port such as \"127.0.0.1:9721\"",
            ),
            (format!("{EXAMPLE}[watch]\nmetrics = \"127.0.0.1\"\n"), "watch.metrics: \"127.0.0.1\" is not an address"),
            (
                format!("{EXAMPLE}[watch]\nmetrics = \"127.0.0.1:0\"\n"),
                "watch.metrics: \"127.0.0.1:0\" is not an address",
            ),
            (format!("{EXAMPLE}[watch]\nmetrics = true\n"), "watch.metrics: \"true\" is not an address and port"),
            (format!("{EXAMPLE}[watch]\nmetrics = 9721\n"), "watch.metrics: \"9721\" is not an address and port"),
            ("[proxy]\naddress = \"10.8.3.1\"".to_string(), "missing field `ports`"),
            (with("[proxy]", "[proxy]\nown_address = \"10.8.3.1\""), "proxy.own_address: 10.8.3.1 is proxy.address"),
            (with("[proxy]", "[proxy]\nown_address = \"10.8.1.1\""), "nodes.1: 10.8.1.1 is proxy.own_address"),
            (with("[proxy]", "[proxy]\nown_address = \"own\""), "proxy.own_address: \"own\" is not an IPv4 address"),
            (with("barman = 54321\n", ""), "ports.barman: required with a [barman] section"),
            (
                EXAMPLE.split("[barman]").next().unwrap().to_string(),
                "ports.barman: set, but there is no [barman] section",
            ),
            (with("[nodes]\n1 = \"10.8.1.1\"\n2 = \"10.8.2.1\"", "[nodes]"), "nodes: at least one node is needed"),
            ("this is not toml".to_string(), "expected"),
        ];
        for (text, expected) in cases {
            let err = error_of(&text);
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
            assert!(!err.contains('\n'), "error spans lines: {err:?}");
        }
    }
}
