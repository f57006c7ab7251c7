//! The PostgreSQL adapter: asks every node for its role, timeline and barman's slot, and
//! creates, advances or drops that slot. Every statement binds its values as parameters.
//!
//! One hard deadline (`postgres.connect_timeout`) bounds each node's answer: TCP connect,
//! TLS, login and the queries together. A node that misses it counts as silent, and its
//! connection is dropped: nothing waits on a frozen node (a stopped postmaster accepts
//! the TCP connection and then never answers). TCP keepalives notice a dead peer of an
//! idle connection. One file, though long: the deadline, TLS and the reading of errors
//! (down, silent, rejected) are one contract with the rest.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::ErrorKind;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::runtime::Runtime;
use tokio::sync::Notify;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, NoTls, Socket};

use crate::core::check::{NodeSettings, RepmgrNodes};
use crate::core::config::{ChannelBinding, Config, Node, NodeId, SslMode};
use crate::core::view::{Answer, Lsn, NodeState, Role, Slot, View};
use crate::effects::pgpass;

/// Role, timeline (a primary's from its current WAL file name: `pg_control_checkpoint()`
/// lags behind a promotion), WAL position, and barman's slot.
pub const VIEW_SQL: &str = "\
SELECT r.rec,
       CASE WHEN r.rec THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), 0)
            ELSE ('x' || left(pg_walfile_name(pg_current_wal_lsn()), 8))::bit(32)::int END,
       CASE WHEN r.rec THEN coalesce(pg_last_wal_replay_lsn(), '0/0') ELSE pg_current_wal_lsn() END,
       s.slot_name IS NOT NULL, s.active_pid, s.restart_lsn
FROM (SELECT pg_is_in_recovery() AS rec) r
LEFT JOIN pg_replication_slots s ON s.slot_name = $1";
pub const CREATE_SLOT_SQL: &str = "SELECT pg_create_physical_replication_slot($1, true)";
pub const TERMINATE_SQL: &str = "SELECT pg_terminate_backend($1)";
pub const DROP_SLOT_SQL: &str = "SELECT pg_drop_replication_slot($1)";
/// Never backwards, and (on a standby) never past what it has replayed.
pub const ADVANCE_SLOT_SQL: &str = "SELECT pg_replication_slot_advance($1, $2)";
/// One small WAL record, committed and flushed at once without waiting for a
/// synchronous standby (barman's receive-wal may be that standby, and is restarting).
pub const EMIT_WAL_SQL: &str = "BEGIN; SET LOCAL synchronous_commit TO local; \
     SELECT pg_logical_emit_message(true, 'repmgr-nat', 'barman switch-wal'); COMMIT";

/// What `check` asks each node: the grants of repmgr-nat's role, the settings barman's
/// slot depends on, the slots in use, and whether this connection is encrypted.
pub const SETTINGS_SQL: &str = "\
SELECT r.rolsuper, r.rolreplication,
       pg_has_role(current_user, 'pg_signal_backend', 'MEMBER'),
       pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER'),
       (SELECT setting::int8 FROM pg_settings WHERE name = 'max_slot_wal_keep_size'),
       current_setting('wal_level'),
       current_setting('max_replication_slots')::int8,
       (SELECT count(*) FROM pg_replication_slots),
       EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1),
       coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false),
       pg_is_in_recovery(),
       current_database(),
       (SELECT has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT')
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'repmgr' AND c.relname = 'nodes')
FROM pg_roles r WHERE r.rolname = current_user";

/// repmgr's nodes, where its schema is in the database repmgr-nat connects to (asked only
/// when the role may read them: the catalogs say so without touching the schema).
pub const REPMGR_NODES_SQL: &str = "SELECT node_id::int8, conninfo FROM repmgr.nodes ORDER BY node_id";

/// How long `drop_slot` waits for a terminated walsender to let go of the slot.
const SLOT_RELEASE_WAIT: Duration = Duration::from_secs(3);

pub trait Cluster {
    /// Asks every configured node at once; each answer within the deadline.
    fn view(&self) -> View;
    /// Creates barman's slot, reserving WAL at once; an existing slot is success.
    fn create_slot(&self, node: Node) -> Result<()>;
    /// Ends the walsender that holds the slot.
    fn terminate(&self, node: Node, pid: i32) -> Result<()>;
    /// Drops barman's slot; a missing slot is success.
    fn drop_slot(&self, node: Node) -> Result<()>;
    /// Moves barman's slot on the node forward to `lsn`; a slot already there is success.
    fn advance_slot(&self, node: Node, lsn: Lsn) -> Result<()>;
    /// Writes one small WAL record on the node.
    fn emit_wal(&self, node: Node) -> Result<()>;
}

/// The runtime every database call of this process runs on: one worker thread, so that
/// connections progress while the main thread waits for a child process.
pub fn runtime() -> Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("repmgr-nat-db")
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the database runtime")
}

/// Connections to the nodes, opened on first use and kept while they work, shared by
/// whatever asks or acts on a node (in `watch`, the pollers and the steps), so that a
/// promotion asks and acts over one connection.
#[derive(Default)]
pub struct Pool {
    clients: Mutex<BTreeMap<NodeId, Arc<Client>>>,
    ended: Mutex<BTreeMap<NodeId, Arc<Notify>>>,
}

impl Pool {
    /// Notified when a kept connection to `node` ends: the server closed it (a shutdown
    /// terminates every backend first), or the network did. watch asks the node again at
    /// once instead of at its next tick.
    pub fn ended(&self, node: Node) -> Arc<Notify> {
        Arc::clone(self.ended.lock().expect("ended").entry(node.id()).or_default())
    }

    async fn client(&self, cfg: &Config, node: Node) -> Result<Arc<Client>, Answer> {
        if let Some(client) = self.cached(node) {
            return Ok(client);
        }
        let client = Arc::new(connect(cfg, node, self.ended(node)).await?);
        self.clients.lock().expect("clients").insert(node.id(), Arc::clone(&client));
        Ok(client)
    }

    fn cached(&self, node: Node) -> Option<Arc<Client>> {
        let mut clients = self.clients.lock().expect("clients");
        match clients.get(&node.id()) {
            Some(client) if client.is_closed() => {
                clients.remove(&node.id());
                None
            }
            other => other.cloned(),
        }
    }

    fn forget(&self, node: Node) {
        self.clients.lock().expect("clients").remove(&node.id());
    }

    /// One node's answer, within the deadline, over its kept connection if it has one.
    pub async fn answer(&self, cfg: &Config, node: Node) -> Answer {
        self.answer_within(cfg, node, cfg.postgres.connect_timeout).await
    }

    async fn answer_within(&self, cfg: &Config, node: Node, deadline: Duration) -> Answer {
        let asked = tokio::time::timeout(deadline, async {
            let client = self.client(cfg, node).await?;
            // without barman no slot is asked for: "" never names one
            ask(&client, cfg.slot().unwrap_or("")).await
        })
        .await;
        let answer = match asked {
            Ok(Ok(state)) => Answer::Up(state),
            Ok(Err(answer)) => answer,
            Err(_) => Answer::Silent(format!("no answer within {} ms", deadline.as_millis())),
        };
        if !matches!(answer, Answer::Up(_)) {
            self.forget(node);
        }
        answer
    }
}

/// The `Cluster` of one run: the pool, driven from synchronous code.
pub struct PgCluster<'a> {
    cfg: &'a Config,
    rt: &'a Runtime,
    pool: Arc<Pool>,
    /// Nodes `watch` saw unanswered a moment ago: asked with `SEEN_DOWN`, not the whole
    /// deadline, so that a dead host (whose packets go unanswered) does not keep an event
    /// waiting while watch has done the work already.
    seen_down: Vec<NodeId>,
}

/// The deadline for a node `watch` saw unanswered on its last pass.
pub const SEEN_DOWN: Duration = Duration::from_millis(300);

impl<'a> PgCluster<'a> {
    pub fn new(cfg: &'a Config, rt: &'a Runtime) -> PgCluster<'a> {
        PgCluster { cfg, rt, pool: Arc::default(), seen_down: Vec::new() }
    }

    pub fn seen_down(self, nodes: Vec<NodeId>) -> PgCluster<'a> {
        PgCluster { seen_down: nodes, ..self }
    }

    /// The connections, for `watch`'s pollers to share.
    pub fn pool(&self) -> Arc<Pool> {
        Arc::clone(&self.pool)
    }

    /// Runs `f` with the node's connection (opened if need be), all within the deadline.
    /// A connection that failed or missed the deadline is dropped.
    fn with_client<T, F, Fut>(&self, node: Node, what: &str, f: F) -> Result<T>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let deadline = self.cfg.postgres.connect_timeout;
        let result = self.rt.block_on(async {
            tokio::time::timeout(deadline, async {
                let client = self.pool.client(self.cfg, node).await.map_err(|a| anyhow!("{}", a.describe()))?;
                f(client).await.map_err(|e| anyhow!("{}", message(&e)))
            })
            .await
        });
        let result = match result {
            Ok(inner) => inner,
            Err(_) => Err(anyhow!("no answer within {} ms", deadline.as_millis())),
        };
        if result.is_err() {
            self.pool.forget(node);
        }
        result.with_context(|| format!("node {} ({}): {what}", node.id(), node.addr()))
    }
}

impl PgCluster<'_> {
    /// Every node's settings for `check`, asked at once, each within the deadline.
    pub fn settings(&self) -> Vec<(Node, Result<NodeSettings, Answer>)> {
        let deadline = self.cfg.postgres.connect_timeout;
        self.rt.block_on(join_all(
            self.cfg
                .nodes
                .iter()
                .map(|&node| async move {
                    let asked = tokio::time::timeout(deadline, async {
                        let client = self.pool.client(self.cfg, node).await?;
                        let row = client
                            .query_one(SETTINGS_SQL, &[&self.cfg.slot().unwrap_or("")])
                            .await
                            .map_err(|e| classify(&e))?;
                        let mut settings = read_settings(&row)
                            .map_err(|e| Answer::Rejected(format!("unexpected answer: {}", message(&e))))?;
                        if settings.repmgr_nodes == RepmgrNodes::Rows(vec![]) {
                            let rows = client.query(REPMGR_NODES_SQL, &[]).await.map_err(|e| classify(&e))?;
                            let rows: Result<Vec<(i64, String)>, _> =
                                rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect();
                            settings.repmgr_nodes = RepmgrNodes::Rows(rows.map_err(|e: tokio_postgres::Error| {
                                Answer::Rejected(format!("unexpected answer: {}", message(&e)))
                            })?);
                        }
                        Ok(settings)
                    })
                    .await;
                    let answer = asked.unwrap_or_else(|_| {
                        Err(Answer::Silent(format!("no answer within {} ms", deadline.as_millis())))
                    });
                    (node, answer)
                })
                .collect(),
        ))
    }
}

fn read_settings(row: &tokio_postgres::Row) -> Result<NodeSettings, tokio_postgres::Error> {
    Ok(NodeSettings {
        superuser: row.try_get(0)?,
        replication: row.try_get(1)?,
        signal_backend: row.try_get(2)?,
        read_all_stats: row.try_get(3)?,
        max_slot_wal_keep_size_mb: row.try_get::<_, Option<i64>>(4)?.unwrap_or(-1),
        wal_level: row.try_get(5)?,
        max_replication_slots: row.try_get(6)?,
        slots_used: row.try_get(7)?,
        has_slot: row.try_get(8)?,
        ssl: row.try_get(9)?,
        in_recovery: row.try_get(10)?,
        database: row.try_get(11)?,
        // read by the caller when readable
        repmgr_nodes: match row.try_get::<_, Option<bool>>(12)? {
            None => RepmgrNodes::Absent,
            Some(false) => RepmgrNodes::Unreadable,
            Some(true) => RepmgrNodes::Rows(vec![]),
        },
    })
}

impl Cluster for PgCluster<'_> {
    fn view(&self) -> View {
        let nodes = self.rt.block_on(async {
            let asking: Vec<_> = self
                .cfg
                .nodes
                .iter()
                .map(|&node| async move {
                    let deadline = match self.seen_down.contains(&node.id()) {
                        true => SEEN_DOWN.min(self.cfg.postgres.connect_timeout),
                        false => self.cfg.postgres.connect_timeout,
                    };
                    (node, self.pool.answer_within(self.cfg, node, deadline).await)
                })
                .collect();
            // every node at once: the answers come within one deadline, however many nodes
            join_all(asking).await
        });
        View { nodes }
    }

    fn create_slot(&self, node: Node) -> Result<()> {
        let slot = self.cfg.slot()?.to_string();
        let created = self.with_client(node, "create slot", |c| async move {
            match c.execute(CREATE_SLOT_SQL, &[&slot]).await {
                Ok(_) => Ok(true),
                Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => Ok(false),
                Err(e) => Err(e),
            }
        })?;
        if !created {
            log::debug!("node {}: slot {} exists already", node.id(), self.cfg.slot()?);
        }
        Ok(())
    }

    fn terminate(&self, node: Node, pid: i32) -> Result<()> {
        self.with_client(
            node,
            "terminate walsender",
            |c| async move { c.execute(TERMINATE_SQL, &[&pid]).await.map(drop) },
        )
    }

    fn drop_slot(&self, node: Node) -> Result<()> {
        let slot = self.cfg.slot()?.to_string();
        // A terminated walsender takes a moment to exit and release the slot.
        let started = Instant::now();
        loop {
            let name = slot.clone();
            let in_use = self.with_client(node, "drop slot", |c| async move {
                match c.execute(DROP_SLOT_SQL, &[&name]).await {
                    Ok(_) => Ok(false),
                    Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => Ok(false),
                    Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => Ok(true),
                    Err(e) => Err(e),
                }
            })?;
            if !in_use {
                return Ok(());
            }
            if started.elapsed() > SLOT_RELEASE_WAIT {
                bail!("node {}: slot {slot} is still in use after {} s", node.id(), SLOT_RELEASE_WAIT.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn advance_slot(&self, node: Node, lsn: Lsn) -> Result<()> {
        let slot = self.cfg.slot()?.to_string();
        self.with_client(node, "advance slot", |c| async move {
            match c.execute(ADVANCE_SLOT_SQL, &[&slot, &PgLsn::from(lsn.0)]).await {
                Ok(_) => Ok(()),
                // "cannot advance replication slot to X, minimum is Y": moved on already
                Err(e) if e.code() == Some(&SqlState::INVALID_PARAMETER_VALUE) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn emit_wal(&self, node: Node) -> Result<()> {
        self.with_client(node, "write WAL", |c| async move { c.batch_execute(EMIT_WAL_SQL).await })
    }
}

/// Awaits every future at once, in order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("every future finished")).collect()
}

/// Asks a connected node what it is. An answer of another shape than `VIEW_SQL`'s (a
/// man in the middle, anything else at the node's address) is a rejection, never a panic.
pub async fn ask(client: &Client, slot: &str) -> Result<NodeState, Answer> {
    let row = client.query_one(VIEW_SQL, &[&slot]).await.map_err(|e| classify(&e))?;
    read_state(&row).map_err(|e| Answer::Rejected(format!("unexpected answer: {}", message(&e))))
}

fn read_state(row: &tokio_postgres::Row) -> Result<NodeState, tokio_postgres::Error> {
    let in_recovery: bool = row.try_get(0)?;
    let timeline: i32 = row.try_get(1)?;
    let lsn: PgLsn = row.try_get(2)?;
    let exists: bool = row.try_get(3)?;
    let active_pid: Option<i32> = row.try_get(4)?;
    let restart_lsn: Option<PgLsn> = row.try_get(5)?;
    Ok(NodeState {
        role: if in_recovery { Role::Standby } else { Role::Primary },
        timeline: u32::try_from(timeline).unwrap_or(0),
        lsn: Lsn(u64::from(lsn)),
        slot: exists.then_some(Slot { active_pid, restart_lsn: restart_lsn.map(|l| Lsn(u64::from(l))) }),
    })
}

/// Opens a connection to the node: the caller bounds it with the deadline. `ended` is
/// notified when the connection ends.
async fn connect(cfg: &Config, node: Node, ended: Arc<Notify>) -> Result<Client, Answer> {
    let pg = &cfg.postgres;
    let mut conf = tokio_postgres::Config::new();
    // the name the node's certificate must carry, if not its address (verify-full); the
    // connection goes to the address either way
    let host = match pg.server_names.get(&node.id()) {
        Some(name) => {
            conf.host(name).hostaddr(node.addr().into());
            name.clone()
        }
        None => {
            conf.host(node.addr().to_string());
            node.addr().to_string()
        }
    };
    conf.port(cfg.ports.postgres)
        .user(&pg.user)
        .dbname(&pg.dbname)
        .application_name("repmgr-nat")
        .options(format!("-c statement_timeout={}", pg.connect_timeout.as_millis()))
        .connect_timeout(pg.connect_timeout)
        .tcp_user_timeout(pg.connect_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(1))
        .keepalives_retries(3);
    let key = pgpass::Key { host: &host, port: cfg.ports.postgres, dbname: &pg.dbname, user: &pg.user };
    if let Some(password) = pgpass::password(&key) {
        conf.password(password);
    }
    conf.channel_binding(match pg.channel_binding {
        ChannelBinding::Disable => tokio_postgres::config::ChannelBinding::Disable,
        ChannelBinding::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
        ChannelBinding::Require => tokio_postgres::config::ChannelBinding::Require,
    });
    use tokio_postgres::config::SslMode as Mode;
    match pg.sslmode {
        SslMode::Disable => connect_with(conf.ssl_mode(Mode::Disable), NoTls, ended).await,
        SslMode::Prefer => connect_with(conf.ssl_mode(Mode::Prefer), tls(cfg)?, ended).await,
        _ => connect_with(conf.ssl_mode(Mode::Require), tls(cfg)?, ended).await,
    }
}

async fn connect_with<T>(conf: &tokio_postgres::Config, tls: T, ended: Arc<Notify>) -> Result<Client, Answer>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = conf.connect(tls).await.map_err(|e| classify(&e))?;
    // The connection ends when the client is dropped, or the server or the network ends it.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            log::debug!("connection ended: {}", message(&e));
        }
        ended.notify_one();
    });
    Ok(client)
}

/// The TLS connector of `postgres.sslmode`: `prefer` and `require` encrypt without
/// checking the server's certificate, `verify-ca` checks it is signed by
/// `postgres.sslrootcert`, `verify-full` also that it names the node (its `name`, or its
/// address). The check happens in the handshake, before anything is sent: a server that
/// fails it never sees the login, let alone the password. Built once per process: building
/// one reads certificates, which a node reconnected to every 50 ms would pay each time. A
/// failure is not kept: the CA file may be readable a moment later (a mount, a
/// configuration tool writing it), and every connection tries again until it is.
fn tls(cfg: &Config) -> Result<postgres_native_tls::MakeTlsConnector, Answer> {
    static TLS: Mutex<Option<postgres_native_tls::MakeTlsConnector>> = Mutex::new(None);
    let mut made = TLS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(connector) = made.as_ref() {
        return Ok(connector.clone());
    }
    let connector = tls_connector(cfg).map_err(Answer::Rejected)?;
    *made = Some(connector.clone());
    Ok(connector)
}

fn tls_connector(cfg: &Config) -> Result<postgres_native_tls::MakeTlsConnector, String> {
    let pg = &cfg.postgres;
    let mut builder = native_tls::TlsConnector::builder();
    builder.disable_built_in_roots(true);
    match pg.sslmode {
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let path = pg.sslrootcert.as_ref().ok_or("verify-ca and verify-full need postgres.sslrootcert")?;
            for cert in root_certificates(path)? {
                builder.add_root_certificate(cert);
            }
            builder.danger_accept_invalid_hostnames(pg.sslmode == SslMode::VerifyCa);
        }
        _ => {
            builder.danger_accept_invalid_certs(true).danger_accept_invalid_hostnames(true);
        }
    }
    builder.build().map(postgres_native_tls::MakeTlsConnector::new).map_err(|e| format!("cannot set up TLS: {e}"))
}

/// Every certificate of a PEM file (one or a bundle).
fn root_certificates(path: &Path) -> Result<Vec<native_tls::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = native_tls::Certificate::stack_from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// What a failure says about the node: down (it serves nobody), silent (no answer), or
/// it rejected repmgr-nat (login, TLS, the query).
fn classify(e: &tokio_postgres::Error) -> Answer {
    let why = message(e);
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        return if *code == SqlState::CANNOT_CONNECT_NOW
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
        {
            Answer::Down(why)
        } else {
            Answer::Rejected(why)
        };
    }
    let io = std::iter::successors(std::error::Error::source(e), |c| c.source())
        .find_map(|c| c.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    match io {
        Some(ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof) => Answer::Down(why),
        Some(_) => Answer::Silent(why),
        None if e.is_closed() => Answer::Down(why),
        None => Answer::Rejected(why),
    }
}

/// The server's own message when there is one, the client's otherwise (the logger makes
/// it one line and escapes what it must).
pub fn message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => std::iter::successors(std::error::Error::source(e), |c| c.source())
            .fold(e.to_string(), |text, cause| format!("{text}: {cause}")),
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::core::config::tests::EXAMPLE;

    /// A fake node on loopback (lab-kit's: it accepts the login and describes every
    /// answer as `bool, int8, ...` where the timeline is an `int4`); the example config
    /// with node 2 there, asked without TLS.
    fn fake_node() -> Config {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || lab_kit::fake_node::serve(listener, &mut |_| {}));
        let text = EXAMPLE
            .replace("postgres = 5432", &format!("postgres = {port}"))
            .replace("dbname = \"postgres\"", "dbname = \"postgres\"\nsslmode = \"disable\"\nconnect_timeout = 2");
        let mut cfg = Config::parse(&text).unwrap();
        cfg.nodes[1] = Node::new(NodeId::new(2), std::net::Ipv4Addr::LOCALHOST);
        cfg
    }

    /// The example config with node 2 at `127.0.0.1:port`, asked without TLS within 1 s.
    fn at_loopback(port: u16) -> (Config, Node) {
        let text = EXAMPLE
            .replace("postgres = 5432", &format!("postgres = {port}"))
            .replace("dbname = \"postgres\"", "dbname = \"postgres\"\nsslmode = \"disable\"\nconnect_timeout = 1");
        let mut cfg = Config::parse(&text).unwrap();
        let node = Node::new(NodeId::new(2), std::net::Ipv4Addr::LOCALHOST);
        cfg.nodes[1] = node;
        (cfg, node)
    }

    /// A server that reads the startup message, then answers `reply` and hangs up.
    fn server_answering(reply: Vec<u8>) -> u16 {
        use std::io::{Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut len = [0u8; 4];
            stream.read_exact(&mut len).unwrap();
            let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
            stream.read_exact(&mut startup).unwrap();
            stream.write_all(&reply).unwrap();
        });
        port
    }

    /// An ErrorResponse as PostgreSQL 15 sends it before the login completes.
    fn error_response(code: &str, message: &str) -> Vec<u8> {
        let mut fields = Vec::new();
        for (tag, value) in [('S', "FATAL"), ('V', "FATAL"), ('C', code), ('M', message), ('F', "postmaster.c")] {
            fields.push(tag as u8);
            fields.extend_from_slice(value.as_bytes());
            fields.push(0);
        }
        fields.push(0);
        let mut msg = vec![b'E'];
        msg.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
        msg.extend_from_slice(&fields);
        msg
    }

    fn answer_of(port: u16) -> Answer {
        let (cfg, node) = at_loopback(port);
        runtime().unwrap().block_on(Pool::default().answer(&cfg, node))
    }

    /// Every decision reads a node as up, down (it serves nobody), silent or rejecting
    /// (it may serve the applications): the server's own refusals, as PostgreSQL sends
    /// them, and the network's.
    #[test]
    fn a_failure_is_read_as_down_silent_or_rejecting() {
        let kind = Answer::kind;
        for (code, message, expected) in [
            ("57P03", "the database system is starting up", "down"),
            ("57P03", "the database system is shutting down", "down"),
            ("57P01", "terminating connection due to administrator command", "down"),
            ("57P02", "terminating connection because of crash of another server process", "down"),
            ("28P01", "password authentication failed for user \"repmgr_nat\"", "rejected"),
            ("28000", "no pg_hba.conf entry for host \"127.0.0.1\", user \"repmgr_nat\"", "rejected"),
            ("53300", "sorry, too many clients already", "rejected"),
        ] {
            let answer = answer_of(server_answering(error_response(code, message)));
            assert_eq!(kind(&answer), expected, "{code}: {answer:?}");
            assert!(answer.describe().contains(&format!("{message} ({code})")), "{answer:?}");
        }
        // a host that accepts and hangs up at once
        assert_eq!(kind(&answer_of(server_answering(Vec::new()))), "down");
        // nothing listens: refused
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert_eq!(kind(&answer_of(closed)), "down");
        // a host that accepts and says nothing: silence, once the deadline has passed
        let mute = TcpListener::bind("127.0.0.1:0").unwrap();
        let answer = answer_of(mute.local_addr().unwrap().port());
        assert_eq!(kind(&answer), "silent", "{answer:?}");
    }

    #[test]
    fn check_reads_a_settings_answer_of_the_wrong_shape_as_a_rejection() {
        let mut cfg = fake_node();
        // only the node on loopback: nothing leaves this host
        cfg.nodes.remove(0);
        let rt = runtime().unwrap();
        let settings = PgCluster::new(&cfg, &rt).settings();
        assert_eq!(settings.len(), 1);
        match &settings[0] {
            (node, Err(Answer::Rejected(why))) if node.id() == NodeId::new(2) => {
                assert!(why.starts_with("unexpected answer"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_tls_set_up_that_failed_is_tried_again() {
        let dir = std::env::temp_dir().join(format!("repmgr-nat-test-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.crt");
        let text = EXAMPLE.replace(
            "dbname = \"postgres\"",
            &format!("dbname = \"postgres\"\nsslmode = \"verify-full\"\nsslrootcert = \"{}\"", ca.display()),
        );
        let cfg = Config::parse(&text).unwrap();
        let why = |result: Result<_, Answer>| result.err().map(|a| a.describe()).unwrap_or_default();
        assert!(why(tls(&cfg)).contains("cannot read"), "{}", why(tls(&cfg)));
        // the file appears (not yet a certificate): the set-up is tried again
        std::fs::write(&ca, "not yet\n").unwrap();
        assert!(why(tls(&cfg)).contains("holds no PEM certificate"), "{}", why(tls(&cfg)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_answer_of_the_wrong_shape_is_a_rejection_not_a_panic() {
        let cfg = fake_node();
        let rt = runtime().unwrap();
        let node = cfg.node(NodeId::new(2)).unwrap();
        let answer = rt.block_on(Pool::default().answer(&cfg, node));
        match &answer {
            Answer::Rejected(why) => assert!(why.contains("column 1"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
