//! The lab's clients, run in the app namespace: they connect through the proxy's ports the
//! way an application does and print one line per attempt (the format `samples` reads),
//! flushed at once. They stop cleanly on SIGTERM or SIGINT, or after `--duration-s`.
//! The `postgres` crate does not read ~/.pgpass: the conninfo carries the password.
//! Every client is here: they share the connect, the deadline and the line format.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use serde::{Deserialize, Serialize};

use crate::now_ms;
use crate::writes::PID_LINE;

/// What every client takes.
#[derive(clap::Args, Clone, Debug)]
pub struct Opts {
    /// libpq-style connection string, password included
    #[arg(long)]
    pub conninfo: String,
    /// Pause between attempts
    #[arg(long, default_value_t = 50)]
    pub interval_ms: u64,
    /// Stop after this long (default: at SIGTERM)
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// Give up on one attempt after this long
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
}

impl Opts {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

// ------------------------------------------------------------------------------- signals
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGTERM and SIGINT end the clients' loops (they print what they have and exit 0).
pub fn stop_on_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

// ------------------------------------------------------------------------------- helpers
/// Prints one line and flushes; a closed stdout ends the program quietly.
fn emit(line: &str) {
    let mut out = io::stdout().lock();
    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
        std::process::exit(0);
    }
}

/// One line, at most 160 characters: the server's message, or the chain of causes.
fn short_reason(e: &postgres::Error) -> String {
    let text = match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                let m = inner.to_string();
                if !text.contains(&m) {
                    text = format!("{text}: {m}");
                }
                source = inner.source();
            }
            text
        }
    };
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > 160 { text.chars().take(160).collect::<String>() + "..." } else { text }
}

/// Sleeps until `deadline`, in small steps so that a signal is noticed quickly.
fn sleep_until(deadline: Instant) {
    while !stopped() {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        thread::sleep((deadline - now).min(Duration::from_millis(20)));
    }
}

/// Runs `f` on a thread of its own and waits at most `timeout` (a connection stuck on a
/// dead peer must not stop the client: the thread is left to end by itself).
fn with_timeout<T: Send + 'static>(timeout: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    let deadline = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(v) => return Some(v),
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline && !stopped() => {}
            Err(_) => return None,
        }
    }
}

/// Calls `attempt` with the time (unix ms) every interval, until the duration is over, a
/// signal came, or `attempt` says to stop.
fn every_interval(o: &Opts, mut attempt: impl FnMut(u64) -> bool) {
    let start = Instant::now();
    let mut next = start;
    while !stopped() && o.duration_s.is_none_or(|d| start.elapsed() < Duration::from_secs(d)) {
        if !attempt(now_ms()) {
            break;
        }
        next = (next + Duration::from_millis(o.interval_ms)).max(Instant::now());
        sleep_until(next);
    }
}

const SERVER_SQL: &str = "select coalesce(host(inet_server_addr()), 'local')";
/// The server, whether it is in recovery, and a primary's timeline (from its current WAL
/// file's name, which a promotion changes at once; 0 for a standby).
const ROLE_SQL: &str = "select coalesce(host(inet_server_addr()), 'local'), pg_is_in_recovery(), \
     case when pg_is_in_recovery() then 0 \
     else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int end";
/// The server, and the backend that answered: the same connection end to end.
const HOLD_SQL: &str = "select coalesce(host(inet_server_addr()), 'local'), pg_backend_pid()";

/// A connection, or the one kept from before; then `sql` on it.
fn query(
    had: Option<Client>,
    conninfo: &str,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Result<(Client, postgres::Row), QueryError> {
    let mut client = match had {
        Some(c) => c,
        None => Client::connect(conninfo, NoTls).map_err(|e| QueryError { reason: short_reason(&e), sent: false })?,
    };
    let row = client.query_one(sql, params).map_err(|e| QueryError { reason: short_reason(&e), sent: true })?;
    Ok((client, row))
}

/// Why a query failed, and whether its statement may have reached a server (a failed
/// connect sends none: a write that failed so never committed).
struct QueryError {
    reason: String,
    sent: bool,
}

// ------------------------------------------------------------------------------- the clients
/// Every interval a new connection, `inet_server_addr()`, close: which server a new
/// connection reaches. One attempt at a time.
pub fn watch(o: &Opts) {
    every_interval(o, |t| {
        let conninfo = o.conninfo.clone();
        match with_timeout(o.timeout(), move || query(None, &conninfo, SERVER_SQL, &[])) {
            Some(Ok((c, row))) => {
                let _ = c.close();
                emit(&format!("{t} ok {}", row.get::<_, String>(0)));
            }
            Some(Err(e)) => emit(&format!("{t} err {}", e.reason)),
            None if stopped() => return false,
            None => emit(&format!("{t} err timeout after {} ms", o.timeout_ms)),
        }
        true
    });
}

/// One connection, a query every interval; after an error, a new connection (ok lines
/// carry `conn=N`, the number of the connection that answered, and `pid=P`, its backend's
/// pid on the server).
pub fn hold(o: &Opts) {
    let mut client: Option<Client> = None;
    let mut conn = 0u64;
    every_interval(o, |t| {
        let (conninfo, had) = (o.conninfo.clone(), client.take());
        let fresh = had.is_none();
        match with_timeout(o.timeout(), move || query(had, &conninfo, HOLD_SQL, &[])) {
            Some(Ok((c, row))) => {
                conn += u64::from(fresh);
                client = Some(c);
                emit(&format!("{t} ok {} conn={conn} pid={}", row.get::<_, String>(0), row.get::<_, i32>(1)));
            }
            Some(Err(e)) => emit(&format!("{t} err {}", e.reason)),
            None if stopped() => return false,
            None => emit(&format!("{t} err timeout after {} ms", o.timeout_ms)),
        }
        true
    });
    if let Some(c) = client {
        let _ = c.close();
    }
}

/// Inserts rows one by one into the app table until `count` commits were acknowledged,
/// through errors (reconnecting): `<ms> ok <server> id=<id> seq=<attempt> ms=<took>`. Each
/// row's payload is `lab-kit <pid> <attempt>`, so a row nobody attempted can be told from
/// one whose commit was not acknowledged. After an error it waits at least 50 ms.
pub fn write(o: &Opts, count: u64) -> Result<(), String> {
    let pid = std::process::id();
    emit(&format!("{PID_LINE}{pid}"));
    let (mut client, mut acked, mut seq) = (None, 0u64, 0u64);
    let start = Instant::now();
    while acked < count && !stopped() && o.duration_s.is_none_or(|d| start.elapsed() < Duration::from_secs(d)) {
        seq += 1;
        let (t, began) = (now_ms(), Instant::now());
        let (conninfo, had) = (o.conninfo.clone(), client.take());
        let payload = format!("lab-kit {pid} {seq}");
        let sql = "insert into writes (payload) values ($1) returning id, coalesce(host(inet_server_addr()), 'local')";
        let failed = match with_timeout(o.timeout(), move || query(had, &conninfo, sql, &[&payload])) {
            Some(Ok((c, row))) => {
                client = Some(c);
                acked += 1;
                let took = began.elapsed().as_millis();
                emit(&format!("{t} ok {} id={} seq={seq} ms={took}", row.get::<_, String>(1), row.get::<_, i64>(0)));
                false
            }
            // sent=no: the connect failed, this attempt cannot have committed
            Some(Err(e)) => {
                emit(&format!("{t} err {}{}", if e.sent { "" } else { "sent=no " }, e.reason));
                true
            }
            // stopped with the insert in flight: it may still commit, so it was attempted
            None if stopped() => {
                emit(&format!("{t} err stopped in flight (commit not acknowledged)"));
                break;
            }
            None => {
                emit(&format!("{t} err timeout after {} ms (commit not acknowledged)", o.timeout_ms));
                true
            }
        };
        let pause = Duration::from_millis(if failed { o.interval_ms.max(50) } else { o.interval_ms });
        sleep_until(Instant::now() + pause);
    }
    if acked < count && !stopped() && o.duration_s.is_none() {
        return Err(format!("only {acked} of {count} commits acknowledged"));
    }
    Ok(())
}

/// A new connection every interval whether the last one ended or not, each waiting up to
/// the timeout (an application's connect timeout): `<ms> ok <server> ms=<took>
/// recovery=t|f tl=<timeline>` (which node, whether it is a standby, a primary's timeline)
/// or `<ms> err ms=<took> <reason>`, printed as each ends. At most 500 at once.
pub fn connect(o: &Opts) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let timeout = o.timeout().as_secs().max(1);
    let conninfo = format!("{} connect_timeout={timeout}", o.conninfo);
    every_interval(o, |t| {
        if in_flight.load(Ordering::SeqCst) >= 500 {
            emit(&format!("{t} err ms=0 500 attempts under way: not begun"));
            return true;
        }
        in_flight.fetch_add(1, Ordering::SeqCst);
        let (conninfo, in_flight) = (conninfo.clone(), in_flight.clone());
        thread::spawn(move || {
            let began = Instant::now();
            let answer = query(None, &conninfo, ROLE_SQL, &[]);
            let took = began.elapsed().as_millis();
            match answer {
                Ok((c, row)) => {
                    let _ = c.close();
                    let (server, recovery, tl) = (row.get::<_, String>(0), row.get::<_, bool>(1), row.get::<_, i32>(2));
                    emit(&format!("{t} ok {server} ms={took} recovery={} tl={tl}", if recovery { "t" } else { "f" }));
                }
                Err(e) => emit(&format!("{t} err ms={took} {}", e.reason)),
            }
            in_flight.fetch_sub(1, Ordering::SeqCst);
        });
        true
    });
    let deadline = Instant::now() + Duration::from_secs(timeout + 1);
    while in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}

/// What `tcp` saw: new TCP connections as fast as they go, each closed at once with a
/// reset. With a DNAT rule for the port the node accepts; without one the proxy refuses
/// (or holds the SYN). A window is a run of refused attempts, from its first to the next
/// accepted one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TcpLoop {
    pub attempts: u64,
    pub ok: u64,
    pub refused: u64,
    /// Timeouts (no answer within 0.5 s) and other errors.
    pub other: u64,
    pub windows: u64,
    pub longest_window_ms: f64,
    pub total_window_ms: f64,
    pub per_second: f64,
}

/// The tight connect loop through `addr`, with `pause` between attempts, until a signal;
/// prints a `TcpLoop` as JSON.
pub fn tcp(addr: SocketAddr, pause: Duration) {
    let mut r = TcpLoop::default();
    let mut window: Option<Instant> = None;
    let started = Instant::now();
    let close_window = |r: &mut TcpLoop, from: Instant| {
        let ms = from.elapsed().as_secs_f64() * 1000.0;
        r.total_window_ms += ms;
        r.longest_window_ms = r.longest_window_ms.max(ms);
    };
    while !stopped() {
        let t = Instant::now();
        r.attempts += 1;
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(stream) => {
                r.ok += 1;
                // SO_LINGER 0: closed with a reset, no TIME_WAIT to run out of ports
                let _ = stream.set_linger_zero();
                if let Some(from) = window.take() {
                    close_window(&mut r, from);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                r.refused += 1;
                if window.is_none() {
                    window = Some(t);
                    r.windows += 1;
                }
            }
            Err(_) => r.other += 1,
        }
        thread::sleep(pause);
    }
    if let Some(from) = window {
        close_window(&mut r, from);
    }
    r.per_second = r.attempts as f64 / started.elapsed().as_secs_f64().max(0.001);
    emit(&serde_json::to_string(&r).expect("a TcpLoop serializes"));
}

trait LingerZero {
    fn set_linger_zero(&self) -> io::Result<()>;
}

impl LingerZero for TcpStream {
    fn set_linger_zero(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: a valid socket and a correctly sized option value.
        let rc = unsafe {
            libc::setsockopt(
                self.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }
}

// ------------------------------------------------------------------------------- metrics
/// `GET /metrics` from `addr` (watch's Prometheus endpoint): the body of a 200 answer.
pub fn scrape(addr: SocketAddr) -> Result<String, String> {
    use std::io::Read;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("{addr}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| format!("{addr}: {e}"))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| format!("{addr}: {e}"))?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or(format!("{addr}: no HTTP answer: {answer:?}"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!("{addr}: {}", head.lines().next().unwrap_or_default()));
    }
    Ok(body.to_string())
}

/// The value of one series in Prometheus' text format, written as it is exposed
/// (`name` or `name{label="value",...}`).
pub fn series(text: &str, name: &str) -> Option<f64> {
    let exposed = crate::series::exposed(text);
    exposed.into_iter().find(|(series, _)| crate::series::without_cluster(series) == name)?.1.parse().ok()
}

// ------------------------------------------------------------------------------- impostor
/// A man in the middle: speaks just enough PostgreSQL to be sent a password (TLS with the
/// certificate given, then a request for the password in clear) and prints what it got
/// (`<ms> password <text>`), or `<ms> refused <why>` when the client refused the
/// certificate.
pub fn impostor(listen: &str, cert: &str, key: &str) -> Result<(), String> {
    let read = |path: &str| std::fs::read(path).map_err(|e| format!("{path}: {e}"));
    let identity = native_tls::Identity::from_pkcs8(&read(cert)?, &read(key)?).map_err(|e| e.to_string())?;
    let acceptor = native_tls::TlsAcceptor::new(identity).map_err(|e| e.to_string())?;
    let listener = std::net::TcpListener::bind(listen).map_err(|e| format!("{listen}: {e}"))?;
    emit(&format!("{} listening {listen}", now_ms()));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let said = impostor_session(&acceptor, &mut stream);
        emit(&format!("{} {said}", now_ms()));
    }
    Ok(())
}

fn impostor_session(acceptor: &native_tls::TlsAcceptor, stream: &mut TcpStream) -> String {
    use std::io::Read;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = [0u8; 8];
    if stream.read_exact(&mut head).is_err() {
        return "closed before the startup".into();
    }
    if head[4..8] != 80877103u32.to_be_bytes() {
        return "no SSLRequest".into();
    }
    if stream.write_all(b"S").is_err() {
        return "closed".into();
    }
    let Ok(clone) = stream.try_clone() else { return "cannot clone the socket".into() };
    let mut tls = match acceptor.accept(clone) {
        Ok(tls) => tls,
        Err(e) => return format!("refused {}", e.to_string().replace('\n', " ")),
    };
    let mut len = [0u8; 4];
    if tls.read_exact(&mut len).is_err() {
        return "closed before the startup message".into();
    }
    let mut startup = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4).min(10_000)];
    if tls.read_exact(&mut startup).is_err() {
        return "closed in the startup message".into();
    }
    // AuthenticationCleartextPassword
    if tls.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).and_then(|_| tls.flush()).is_err() {
        return "closed before the password request".into();
    }
    let mut kind = [0u8; 1];
    if tls.read_exact(&mut kind).is_err() || tls.read_exact(&mut len).is_err() {
        return "no password: the client hung up".into();
    }
    let mut body = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4).min(10_000)];
    if kind[0] != b'p' || tls.read_exact(&mut body).is_err() {
        return format!("no password: message {:?}", kind[0] as char);
    }
    format!("password {}", String::from_utf8_lossy(&body).trim_end_matches('\0'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_series_is_read_with_its_labels() {
        let text = "# HELP x y\n# TYPE x gauge\nrepmgr_nat_route_node_id 2\n\
                    repmgr_nat_events_total{event=\"standby_promote\",outcome=\"ok\"} 3\n\
                    repmgr_nat_switch_latency_seconds_count 1\n";
        assert_eq!(super::series(text, "repmgr_nat_route_node_id"), Some(2.0));
        assert_eq!(super::series(text, "repmgr_nat_events_total{event=\"standby_promote\",outcome=\"ok\"}"), Some(3.0));
        assert_eq!(super::series(text, "repmgr_nat_switch_latency_seconds"), None, "a prefix is not the series");
        assert_eq!(super::series(text, "repmgr_nat_switch_latency_seconds_count"), Some(1.0));
    }
}
