//! The PostgreSQL adapter: asks nodes for their role and barman's slot, and creates or
//! drops that slot. Every statement binds its values as parameters.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use postgres::error::SqlState;
use postgres::{Client, NoTls};

use crate::config::{Config, NodeId, SslMode};
use crate::pgpass;
use crate::plan::{Answers, NodeView, Role, Slot};

pub const INSPECT_SQL: &str = "SELECT pg_is_in_recovery(), \
     EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1), \
     (SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1)";
pub const CREATE_SLOT_SQL: &str = "SELECT pg_create_physical_replication_slot($1, true)";
pub const TERMINATE_SQL: &str = "SELECT pg_terminate_backend($1)";
pub const DROP_SLOT_SQL: &str = "SELECT pg_drop_replication_slot($1)";

/// How long `drop_slot` waits for a terminated walsender to let go of the slot.
const SLOT_RELEASE_WAIT: Duration = Duration::from_secs(3);

/// How long one statement may run on a node.
const STATEMENT_TIMEOUT: &str = "-c statement_timeout=10s";

pub trait Cluster {
    /// Asks one node for its role and barman's slot.
    fn inspect(&self, node: NodeId) -> Result<NodeView>;
    /// Asks every configured node, at the same time.
    fn inspect_all(&self) -> Answers;
    /// Creates barman's slot, reserving WAL at once; an existing slot is success.
    fn create_slot(&self, node: NodeId) -> Result<()>;
    /// Ends the walsender that holds the slot.
    fn terminate(&self, node: NodeId, pid: i32) -> Result<()>;
    /// Drops barman's slot; a missing slot is success.
    fn drop_slot(&self, node: NodeId) -> Result<()>;
}

/// Connections to the nodes, opened on first use and kept for the run, so that a
/// promotion asks and acts over one connection.
pub struct Postgres<'a> {
    cfg: &'a Config,
    dry_run: bool,
    clients: RefCell<BTreeMap<NodeId, Client>>,
}

impl<'a> Postgres<'a> {
    pub fn new(cfg: &'a Config, dry_run: bool) -> Postgres<'a> {
        Postgres { cfg, dry_run, clients: RefCell::new(BTreeMap::new()) }
    }

    fn with_client<T>(&self, node: NodeId, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let mut clients = self.clients.borrow_mut();
        let client = match clients.entry(node) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => entry.insert(connect(self.cfg, node)?),
        };
        let result = f(client);
        if client.is_closed() {
            clients.remove(&node);
        }
        result
    }

    fn execute(&self, node: NodeId, sql: &str, shown: &str, f: impl FnOnce(&mut Client) -> Result<()>) -> Result<()> {
        if self.dry_run {
            println!("node {node}: {sql}  -- {shown}");
            return Ok(());
        }
        self.with_client(node, f)
    }
}

impl Cluster for Postgres<'_> {
    fn inspect(&self, node: NodeId) -> Result<NodeView> {
        self.with_client(node, |client| inspect(client, &self.cfg.barman.slot))
            .with_context(|| node_label(self.cfg, node))
    }

    fn inspect_all(&self) -> Answers {
        let (cfg, slot) = (self.cfg, self.cfg.barman.slot.as_str());
        let asked: Vec<(NodeId, Result<(NodeView, Client)>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .cfg
                .nodes
                .keys()
                .map(|&node| {
                    let handle = scope.spawn(move || {
                        let mut client = connect(cfg, node)?;
                        let view = inspect(&mut client, slot)?;
                        Ok((view, client))
                    });
                    (node, handle)
                })
                .collect();
            handles
                .into_iter()
                .map(|(node, h)| (node, h.join().unwrap_or_else(|_| Err(anyhow!("inspection panicked")))))
                .collect()
        });
        let mut clients = self.clients.borrow_mut();
        asked
            .into_iter()
            .map(|(node, result)| match result {
                Ok((view, client)) => {
                    clients.insert(node, client);
                    (node, Ok(view))
                }
                Err(e) => (node, Err(format!("{:#}", e.context(node_label(self.cfg, node))))),
            })
            .collect()
    }

    fn create_slot(&self, node: NodeId) -> Result<()> {
        let slot = &self.cfg.barman.slot;
        self.execute(node, CREATE_SLOT_SQL, &format!("$1 = '{slot}'"), |client| {
            match client.execute(CREATE_SLOT_SQL, &[slot]) {
                Ok(_) => Ok(()),
                Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => Ok(()),
                Err(e) => Err(anyhow!("cannot create slot {slot} on node {node}: {}", pg_message(&e))),
            }
        })
    }

    fn terminate(&self, node: NodeId, pid: i32) -> Result<()> {
        self.execute(node, TERMINATE_SQL, &format!("$1 = {pid}"), |client| {
            client
                .execute(TERMINATE_SQL, &[&pid])
                .map(drop)
                .map_err(|e| anyhow!("cannot terminate walsender {pid} on node {node}: {}", pg_message(&e)))
        })
    }

    fn drop_slot(&self, node: NodeId) -> Result<()> {
        let slot = &self.cfg.barman.slot;
        self.execute(node, DROP_SLOT_SQL, &format!("$1 = '{slot}'"), |client| {
            // A terminated walsender takes a moment to exit and release the slot.
            let deadline = std::time::Instant::now() + SLOT_RELEASE_WAIT;
            loop {
                match client.execute(DROP_SLOT_SQL, &[slot]) {
                    Ok(_) => return Ok(()),
                    Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => return Ok(()),
                    Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) && std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(anyhow!("cannot drop slot {slot} on node {node}: {}", pg_message(&e))),
                }
            }
        })
    }
}

fn node_label(cfg: &Config, node: NodeId) -> String {
    match cfg.nodes.get(&node) {
        Some(addr) => format!("node {node} ({addr}:{})", cfg.ports.postgres),
        None => format!("node {node}"),
    }
}

fn inspect(client: &mut Client, slot: &str) -> Result<NodeView> {
    let row = client.query_one(INSPECT_SQL, &[&slot]).map_err(|e| anyhow!("{}", pg_message(&e)))?;
    let in_recovery: bool = row.get(0);
    let exists: bool = row.get(1);
    let active_pid: Option<i32> = row.get(2);
    Ok(NodeView {
        role: if in_recovery { Role::Standby } else { Role::Primary },
        slot: exists.then_some(Slot { active_pid }),
    })
}

/// The server's own message when there is one, the client's otherwise; one line.
fn pg_message(e: &postgres::Error) -> String {
    let text = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            text
        }
    };
    text.replace('\n', " ")
}

fn connect(cfg: &Config, node: NodeId) -> Result<Client> {
    let addr: Ipv4Addr = cfg.node(node)?;
    let host = addr.to_string();
    let pg = &cfg.postgres;
    let mut conf = postgres::Config::new();
    conf.host(&host)
        .port(cfg.ports.postgres)
        .user(&pg.user)
        .dbname(&pg.dbname)
        .application_name("repmgr-nat")
        .options(STATEMENT_TIMEOUT)
        .connect_timeout(pg.connect_timeout)
        .tcp_user_timeout(pg.connect_timeout + Duration::from_secs(10));
    let key = pgpass::Key { host: &host, port: cfg.ports.postgres, dbname: &pg.dbname, user: &pg.user };
    if let Some(password) = pgpass::password(&key) {
        conf.password(password);
    }
    let client = match pg.sslmode {
        SslMode::Disable => conf.ssl_mode(postgres::config::SslMode::Disable).connect(NoTls),
        SslMode::Prefer => conf.ssl_mode(postgres::config::SslMode::Prefer).connect(tls()?),
        SslMode::Require => conf.ssl_mode(postgres::config::SslMode::Require).connect(tls()?),
    };
    client.map_err(|e| anyhow!("cannot connect: {}", pg_message(&e)))
}

/// libpq's `prefer` and `require` encrypt without checking the server's certificate;
/// so does this connector.
fn tls() -> Result<postgres_native_tls::MakeTlsConnector> {
    let connector = native_tls::TlsConnector::builder()
        .danger_accept_invalid_certs(true)
        .danger_accept_invalid_hostnames(true)
        .build()
        .context("cannot set up TLS")?;
    Ok(postgres_native_tls::MakeTlsConnector::new(connector))
}
