//! The PostgreSQL adapter: asks nodes for their role and barman's slot, and creates or
//! drops that slot. Every statement binds its values as parameters.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use postgres::error::SqlState;
use postgres::{Client, NoTls};

use crate::core::config::{Config, NodeId, SslMode};
use crate::effects::pgpass;
use crate::core::plan::{Answers, NoAnswer, NodeView, Role, Slot};

pub const INSPECT_SQL: &str = "SELECT pg_is_in_recovery(), \
     EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1), \
     (SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1)";
pub const CREATE_SLOT_SQL: &str = "SELECT pg_create_physical_replication_slot($1, true)";
pub const TERMINATE_SQL: &str = "SELECT pg_terminate_backend($1)";
pub const DROP_SLOT_SQL: &str = "SELECT pg_drop_replication_slot($1)";
/// One small WAL record, committed and flushed at once without waiting for a
/// synchronous standby (barman's receive-wal may be that standby, and is restarting).
pub const EMIT_WAL_SQL: &str = "BEGIN; SET LOCAL synchronous_commit TO local; \
     SELECT pg_logical_emit_message(true, 'repmgr-nat', 'barman switch-wal'); COMMIT";

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
    /// Writes one small WAL record on the node.
    fn emit_wal(&self, node: NodeId) -> Result<()>;
}

/// Connections to the nodes, opened on first use and kept for the run, so that a
/// promotion asks and acts over one connection.
pub struct Postgres<'a> {
    cfg: &'a Config,
    clients: RefCell<BTreeMap<NodeId, Client>>,
}

impl<'a> Postgres<'a> {
    pub fn new(cfg: &'a Config) -> Postgres<'a> {
        Postgres { cfg, clients: RefCell::new(BTreeMap::new()) }
    }

    fn with_client<T>(&self, node: NodeId, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let mut clients = self.clients.borrow_mut();
        let client = match clients.entry(node) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(connect(self.cfg, node).map_err(|e| anyhow!("{e}"))?),
        };
        let result = f(client);
        if client.is_closed() {
            clients.remove(&node);
        }
        result
    }
}

impl Cluster for Postgres<'_> {
    fn inspect(&self, node: NodeId) -> Result<NodeView> {
        self.with_client(node, |client| inspect(client, &self.cfg.barman.slot).map_err(|e| anyhow!("{e}")))
            .with_context(|| node_label(self.cfg, node))
    }

    fn inspect_all(&self) -> Answers {
        let cfg = self.cfg;
        let ask = |node: NodeId| -> Result<(NodeView, Client), NoAnswer> {
            let mut client = connect(cfg, node)?;
            Ok((inspect(&mut client, &cfg.barman.slot)?, client))
        };
        let asked: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = cfg.nodes.keys().map(|&node| (node, scope.spawn(move || ask(node)))).collect();
            handles.into_iter().map(|(node, handle)| (node, handle.join())).collect()
        });
        let mut clients = self.clients.borrow_mut();
        asked
            .into_iter()
            .map(|(node, joined)| {
                let answer = match joined {
                    Ok(Ok((view, client))) => {
                        clients.insert(node, client);
                        Ok(view)
                    }
                    Ok(Err(e)) => Err(NoAnswer { error: format!("{}: {}", node_label(cfg, node), e.error), ..e }),
                    Err(_) => Err(NoAnswer {
                        error: format!("{}: asking it panicked", node_label(cfg, node)),
                        replied: false,
                    }),
                };
                (node, answer)
            })
            .collect()
    }

    fn create_slot(&self, node: NodeId) -> Result<()> {
        let slot = &self.cfg.barman.slot;
        self.with_client(node, |client| match client.execute(CREATE_SLOT_SQL, &[slot]) {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => Ok(()),
            Err(e) => Err(anyhow!("cannot create slot {slot} on node {node}: {}", pg_message(&e))),
        })
    }

    fn terminate(&self, node: NodeId, pid: i32) -> Result<()> {
        self.with_client(node, |client| {
            client
                .execute(TERMINATE_SQL, &[&pid])
                .map(drop)
                .map_err(|e| anyhow!("cannot terminate walsender {pid} on node {node}: {}", pg_message(&e)))
        })
    }

    fn drop_slot(&self, node: NodeId) -> Result<()> {
        let slot = &self.cfg.barman.slot;
        self.with_client(node, |client| {
            // A terminated walsender takes a moment to exit and release the slot.
            let deadline = Instant::now() + SLOT_RELEASE_WAIT;
            loop {
                match client.execute(DROP_SLOT_SQL, &[slot]) {
                    Ok(_) => return Ok(()),
                    Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => return Ok(()),
                    Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(anyhow!("cannot drop slot {slot} on node {node}: {}", pg_message(&e))),
                }
            }
        })
    }

    fn emit_wal(&self, node: NodeId) -> Result<()> {
        self.with_client(node, |client| {
            client
                .batch_execute(EMIT_WAL_SQL)
                .map_err(|e| anyhow!("cannot write WAL on node {node}: {}", pg_message(&e)))
        })
    }
}

fn node_label(cfg: &Config, node: NodeId) -> String {
    match cfg.nodes.get(&node) {
        Some(addr) => format!("node {node} ({addr}:{})", cfg.ports.postgres),
        None => format!("node {node}"),
    }
}

fn inspect(client: &mut Client, slot: &str) -> Result<NodeView, NoAnswer> {
    let row = client.query_one(INSPECT_SQL, &[&slot]).map_err(|e| no_answer(&e))?;
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

/// A failure to ask a node; the server replied if it sent an error of its own.
fn no_answer(e: &postgres::Error) -> NoAnswer {
    NoAnswer { error: pg_message(e), replied: e.as_db_error().is_some() }
}

fn connect(cfg: &Config, node: NodeId) -> Result<Client, NoAnswer> {
    let unconfigured = |e: anyhow::Error| NoAnswer { error: format!("{e:#}"), replied: false };
    let addr: Ipv4Addr = cfg.node(node).map_err(unconfigured)?;
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
        SslMode::Prefer => conf.ssl_mode(postgres::config::SslMode::Prefer).connect(tls().map_err(unconfigured)?),
        SslMode::Require => conf.ssl_mode(postgres::config::SslMode::Require).connect(tls().map_err(unconfigured)?),
    };
    client.map_err(|e| NoAnswer { error: format!("cannot connect: {}", pg_message(&e)), ..no_answer(&e) })
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
