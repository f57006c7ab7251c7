//! lab-probe: the lab's client. It watches which server answers through the proxy, holds a
//! connection open, writes rows, prints a timeline, and plays a man in the middle.
//!
//! Output of watch, hold and write: one line per attempt, flushed at once:
//!   `<unix epoch ms> ok <server address> [key=value ...]`
//!   `<unix epoch ms> err <short reason>`

use postgres::{Client, NoTls};
use std::io::{self, BufRead, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const USAGE: &str = "\
usage:
  lab-probe watch --conninfo CONNINFO [--interval-ms 50] [--duration-s N] [--timeout-ms 1000]
      every interval: new connection, `select inet_server_addr()`, close
  lab-probe hold --conninfo CONNINFO [--interval-ms 50] [--duration-s N] [--timeout-ms 1000]
      one connection, a query every interval; after an error, reconnect and go on
      (ok lines carry conn=N, the number of the connection that answered)
  lab-probe write --conninfo CONNINFO --count N [--interval-ms 0] [--duration-s N] [--timeout-ms 2000]
      insert rows one by one into the app table until N commits were acknowledged
      (ok lines: `<ms> ok <server> id=<id> seq=<attempt>`, each row's payload `lab-probe <pid>
      <attempt>`, the pid on the first line); keeps going through errors, reconnecting
  lab-probe impostor --listen ADDR:PORT --cert PEM --key PEM
      a man in the middle: answers like PostgreSQL, presents the certificate given, asks
      for the password in clear, and prints what it got (`<ms> password <text>`), or
      `<ms> refused <why>` when the client refused the certificate
  lab-probe summary FILE [--since-ms T0]
      human timeline of a watch/hold/write output file, then one `summary key=value ...` line

watch/hold/write stop cleanly on SIGTERM/SIGINT or after --duration-s.
The postgres crate does not read ~/.pgpass: put password=... in the conninfo.";

// ---------------------------------------------------------------------------------- signals
static STOP: AtomicBool = AtomicBool::new(false);

unsafe extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
}

extern "C" fn on_signal(_: i32) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    const SIGINT: i32 = 2;
    const SIGTERM: i32 = 15;
    let h = on_signal as extern "C" fn(i32) as usize;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        signal(SIGINT, h);
        signal(SIGTERM, h);
    }
}

fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

// ---------------------------------------------------------------------------------- helpers
fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

/// Print one line and flush; a closed stdout ends the program quietly.
fn emit(line: &str) {
    let mut out = io::stdout().lock();
    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
        std::process::exit(0);
    }
}

fn short_reason(e: &postgres::Error) -> String {
    let s = if let Some(db) = e.as_db_error() {
        format!("{} {}: {}", db.severity(), db.code().code(), db.message())
    } else {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(inner) = src {
            let m = inner.to_string();
            if !s.contains(&m) {
                s.push_str(": ");
                s.push_str(&m);
            }
            src = inner.source();
        }
        s
    };
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > 160 { s.chars().take(160).collect::<String>() + "..." } else { s }
}

/// Sleep until `deadline`, in small steps so that a signal is noticed quickly.
fn sleep_until(deadline: Instant) {
    while !stopped() {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        thread::sleep((deadline - now).min(Duration::from_millis(20)));
    }
}

/// Run `f` on its own thread; give up waiting after `timeout` (the thread is left to finish
/// on its own: a connection stuck on a dead peer must not stop the probe).
fn with_timeout<T: Send + 'static>(timeout: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    let deadline = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(v) => return Some(v),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= deadline || stopped() {
                    return None;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
        }
    }
}

// ---------------------------------------------------------------------------------- options
struct Opts {
    conninfo: Option<String>,
    interval: Duration,
    duration: Option<Duration>,
    timeout: Duration,
    count: Option<u64>,
    since_ms: Option<u128>,
    file: Option<String>,
}

fn parse_opts(args: &[String], default_interval_ms: u64, default_timeout_ms: u64) -> Result<Opts, String> {
    let mut o = Opts {
        conninfo: None,
        interval: Duration::from_millis(default_interval_ms),
        duration: None,
        timeout: Duration::from_millis(default_timeout_ms),
        count: None,
        since_ms: None,
        file: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut val = |name: &str| -> Result<String, String> {
            inline.clone().or_else(|| it.next().cloned()).ok_or(format!("{name} needs a value"))
        };
        let num = |name: &str, v: String| -> Result<u64, String> {
            v.parse::<u64>().map_err(|_| format!("{name}: not a number: {v}"))
        };
        match key {
            "--conninfo" => o.conninfo = Some(val(key)?),
            "--interval-ms" => o.interval = Duration::from_millis(num(key, val(key)?)?),
            "--duration-s" => o.duration = Some(Duration::from_secs(num(key, val(key)?)?)),
            "--timeout-ms" => o.timeout = Duration::from_millis(num(key, val(key)?)?),
            "--count" => o.count = Some(num(key, val(key)?)?),
            "--since-ms" => o.since_ms = Some(num(key, val(key)?)? as u128),
            s if !s.starts_with("--") && o.file.is_none() => o.file = Some(s.to_string()),
            s => return Err(format!("unknown argument: {s}")),
        }
    }
    Ok(o)
}

fn need_conninfo(o: &Opts) -> Result<String, String> {
    o.conninfo.clone().ok_or_else(|| "--conninfo is required".to_string())
}

fn finished(start: Instant, o: &Opts) -> bool {
    stopped() || o.duration.is_some_and(|d| start.elapsed() >= d)
}

// ---------------------------------------------------------------------------------- watch
fn probe_once(conninfo: &str) -> Result<String, String> {
    let mut c = Client::connect(conninfo, NoTls).map_err(|e| short_reason(&e))?;
    let row = c.query_one("select coalesce(inet_server_addr()::text, 'local')", &[]).map_err(|e| short_reason(&e))?;
    let addr: String = row.get(0);
    let _ = c.close();
    Ok(strip_mask(&addr))
}

fn strip_mask(addr: &str) -> String {
    addr.split('/').next().unwrap_or(addr).to_string()
}

fn watch(o: &Opts) -> Result<(), String> {
    let conninfo = need_conninfo(o)?;
    every_interval(o, |t| {
        let ci = conninfo.clone();
        match with_timeout(o.timeout, move || probe_once(&ci)) {
            Some(Ok(addr)) => emit(&format!("{t} ok {addr}")),
            Some(Err(r)) => emit(&format!("{t} err {r}")),
            None if stopped() => return false,
            None => emit(&format!("{t} err timeout after {} ms", o.timeout.as_millis())),
        }
        true
    });
    Ok(())
}

/// Calls `attempt` with the time in epoch ms every interval, until the duration is over,
/// a signal came, or `attempt` says to stop.
fn every_interval(o: &Opts, mut attempt: impl FnMut(u128) -> bool) {
    let start = Instant::now();
    let mut next = Instant::now();
    while !finished(start, o) {
        if !attempt(now_ms()) {
            break;
        }
        next += o.interval;
        if next < Instant::now() {
            next = Instant::now();
        }
        sleep_until(next);
    }
}

// ---------------------------------------------------------------------------------- hold
fn hold(o: &Opts) -> Result<(), String> {
    let conninfo = need_conninfo(o)?;
    let mut client: Option<Client> = None;
    let mut conn_no = 0u64;
    every_interval(o, |t| {
        let ci = conninfo.clone();
        let had = client.take();
        let fresh = had.is_none();
        let res = with_timeout(o.timeout, move || {
            let mut c = match had {
                Some(c) => c,
                None => Client::connect(&ci, NoTls).map_err(|e| short_reason(&e))?,
            };
            match c.query_one("select coalesce(inet_server_addr()::text, 'local')", &[]) {
                Ok(row) => {
                    let addr: String = row.get(0);
                    Ok((c, strip_mask(&addr)))
                }
                Err(e) => Err(short_reason(&e)),
            }
        });
        match res {
            Some(Ok((c, addr))) => {
                if fresh {
                    conn_no += 1;
                }
                client = Some(c);
                emit(&format!("{t} ok {addr} conn={conn_no}"));
            }
            Some(Err(r)) => emit(&format!("{t} err {r}")),
            None if stopped() => return false,
            None => emit(&format!("{t} err timeout after {} ms", o.timeout.as_millis())),
        }
        true
    });
    if let Some(c) = client {
        let _ = c.close();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------- write
fn write(o: &Opts) -> Result<(), String> {
    let conninfo = need_conninfo(o)?;
    let want = o.count.ok_or("--count is required")?;
    let start = Instant::now();
    let mut client: Option<Client> = None;
    let mut acked = 0u64;
    let mut seq = 0u64;
    let pid = std::process::id();
    // the payload of every row is `lab-probe <pid> <attempt>`: a row nobody attempted can
    // be told from one whose commit was not acknowledged
    emit(&format!("# lab-probe write pid={pid}"));
    while acked < want && !finished(start, o) {
        seq += 1;
        let t = now_ms();
        let payload = format!("lab-probe {pid} {seq}");
        let ci = conninfo.clone();
        let had = client.take();
        let res = with_timeout(o.timeout, move || {
            let mut c = match had {
                Some(c) => c,
                None => Client::connect(&ci, NoTls).map_err(|e| short_reason(&e))?,
            };
            match c.query_one(
                "insert into writes (payload) values ($1) returning id, coalesce(inet_server_addr()::text, 'local')",
                &[&payload],
            ) {
                Ok(row) => {
                    let id: i64 = row.get(0);
                    let addr: String = row.get(1);
                    Ok((c, id, strip_mask(&addr)))
                }
                Err(e) => Err(short_reason(&e)),
            }
        });
        let failed = match res {
            Some(Ok((c, id, addr))) => {
                client = Some(c);
                acked += 1;
                emit(&format!("{t} ok {addr} id={id} seq={seq}"));
                false
            }
            Some(Err(r)) => {
                emit(&format!("{t} err {r}"));
                true
            }
            None if stopped() => break,
            None => {
                emit(&format!("{t} err timeout after {} ms (commit not acknowledged)", o.timeout.as_millis()));
                true
            }
        };
        // After an error, wait at least 50 ms so a closed port is not hammered.
        let pause = if failed { o.interval.max(Duration::from_millis(50)) } else { o.interval };
        sleep_until(Instant::now() + pause);
    }
    if let Some(c) = client {
        let _ = c.close();
    }
    if acked < want && !stopped() {
        return Err(format!("only {acked} of {want} commits acknowledged"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------- summary
#[derive(Clone)]
enum Outcome {
    Ok(String),
    Err(String),
}

struct Run {
    ok: bool,
    server: String,
    first: u128,
    last: u128,
    probes: u64,
    reasons: Vec<(String, u64)>,
}

fn fmt_rel(t: u128, t0: u128) -> String {
    let d = t as i128 - t0 as i128;
    let sign = if d < 0 { "-" } else { "+" };
    let a = d.unsigned_abs();
    format!("{sign}{}.{:03}s", a / 1000, a % 1000)
}

fn fmt_dur(ms: u128) -> String {
    format!("{}.{:03} s", ms / 1000, ms % 1000)
}

fn summary(o: &Opts) -> Result<(), String> {
    let path = o.file.clone().ok_or("summary needs a FILE")?;
    let f = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
    let mut samples: Vec<(u128, Outcome)> = Vec::new();
    for line in io::BufReader::new(f).lines() {
        let line = line.map_err(|e| format!("{path}: {e}"))?;
        let mut parts = line.splitn(3, ' ');
        let (Some(ts), Some(kind)) = (parts.next(), parts.next()) else { continue };
        let Ok(ts) = ts.parse::<u128>() else { continue };
        let rest = parts.next().unwrap_or("").to_string();
        match kind {
            "ok" => samples.push((ts, Outcome::Ok(rest.split(' ').next().unwrap_or("").to_string()))),
            "err" => samples.push((ts, Outcome::Err(rest))),
            _ => {}
        }
    }
    if samples.is_empty() {
        return Err(format!("{path}: no probe lines"));
    }
    let t0 = o.since_ms.unwrap_or(samples[0].0);
    let mut runs: Vec<Run> = Vec::new();
    for (ts, out) in &samples {
        let (ok, server, reason) = match out {
            Outcome::Ok(s) => (true, s.clone(), None),
            Outcome::Err(r) => (false, String::new(), Some(r.clone())),
        };
        let same = runs.last().is_some_and(|r| r.ok == ok && r.server == server);
        if !same {
            runs.push(Run { ok, server, first: *ts, last: *ts, probes: 0, reasons: Vec::new() });
        }
        let r = runs.last_mut().expect("a run");
        r.last = *ts;
        r.probes += 1;
        if let Some(reason) = reason {
            match r.reasons.iter_mut().find(|(m, _)| *m == reason) {
                Some((_, n)) => *n += 1,
                None => r.reasons.push((reason, 1)),
            }
        }
    }
    let mut out = String::new();
    let origin = if o.since_ms.is_some() { format!("T0 = {t0}") } else { format!("first probe = {t0}") };
    out.push_str(&format!("timeline of {path} (times relative to {origin}):\n"));
    for r in &runs {
        let what = if r.ok { format!("ok   {}", r.server) } else { "err".to_string() };
        out.push_str(&format!(
            "  {:>10} .. {:>10}  {:<22} {:>5} probes\n",
            fmt_rel(r.first, t0),
            fmt_rel(r.last, t0),
            what,
            r.probes
        ));
        for (reason, n) in &r.reasons {
            out.push_str(&format!("{:>30}{n} x {reason}\n", ""));
        }
    }
    // Longest run of failures: from the last success before it to the first success after it
    // (the time a client could not get an answer), and its probe count.
    let mut longest: Option<(usize, u128)> = None;
    for (i, r) in runs.iter().enumerate() {
        if r.ok {
            continue;
        }
        let from = if i > 0 { runs[i - 1].last } else { r.first };
        let to = runs.get(i + 1).map(|n| n.first).unwrap_or(r.last);
        let len = to.saturating_sub(from);
        if longest.is_none_or(|(_, l)| len > l) {
            longest = Some((i, len));
        }
    }
    let total = samples.len();
    let oks = samples.iter().filter(|(_, o)| matches!(o, Outcome::Ok(_))).count();
    let mut servers: Vec<String> = Vec::new();
    for r in &runs {
        if r.ok && !servers.contains(&r.server) {
            servers.push(r.server.clone());
        }
    }
    let mut kv = format!(
        "summary probes={total} ok={oks} err={} servers={}",
        total - oks,
        if servers.is_empty() { "-".into() } else { servers.join(",") }
    );
    match longest {
        Some((i, len)) => {
            let r = &runs[i];
            let before = if i > 0 { Some(runs[i - 1].last) } else { None };
            let after = runs.get(i + 1).map(|n| n.first);
            out.push_str(&format!(
                "longest failure: {} probes failed from {} to {}; no answer for {} (last ok {}, first ok after {})\n",
                r.probes,
                fmt_rel(r.first, t0),
                fmt_rel(r.last, t0),
                fmt_dur(len),
                before.map(|b| fmt_rel(b, t0)).unwrap_or("-".into()),
                after.map(|a| fmt_rel(a, t0)).unwrap_or("-".into()),
            ));
            kv.push_str(&format!(
                " longest_failure_ms={len} longest_failure_probes={} longest_failure_from_ms={} longest_failure_to_ms={}",
                r.probes,
                before.unwrap_or(r.first),
                after.unwrap_or(r.last)
            ));
        }
        None => {
            out.push_str("no failures\n");
            kv.push_str(" longest_failure_ms=0 longest_failure_probes=0");
        }
    }
    // Whole outage: from the last success before the first failure (at or after T0) to the
    // first success after the last failure, however many isolated answers came in between.
    let first_err = samples.iter().position(|(ts, o)| *ts >= t0 && matches!(o, Outcome::Err(_)));
    let last_err = samples.iter().rposition(|(_, o)| matches!(o, Outcome::Err(_)));
    if let (Some(fe), Some(le)) = (first_err, last_err) {
        let before = samples[..fe].iter().rev().find(|(_, o)| matches!(o, Outcome::Ok(_))).map(|(ts, _)| *ts);
        let after = samples[le..].iter().find(|(_, o)| matches!(o, Outcome::Ok(_))).map(|(ts, _)| *ts);
        let from = before.unwrap_or(samples[fe].0);
        let to = after.unwrap_or(samples[le].0);
        let oks_between = samples[fe..=le].iter().filter(|(_, o)| matches!(o, Outcome::Ok(_))).count();
        out.push_str(&format!(
            "outage: {} from {} (last ok before the first failure) to {} (first ok after the last failure){}; {} answers in between\n",
            fmt_dur(to.saturating_sub(from)),
            before.map(|b| fmt_rel(b, t0)).unwrap_or("-".into()),
            after.map(|a| fmt_rel(a, t0)).unwrap_or("- (still failing at the end)".into()),
            if after.is_none() { " [not recovered]" } else { "" },
            oks_between
        ));
        kv.push_str(&format!(
            " outage_ms={} outage_answers={oks_between} recovered={}",
            to.saturating_sub(from),
            after.is_some()
        ));
    } else {
        kv.push_str(" outage_ms=0 outage_answers=0 recovered=true");
    }
    if let Some(since) = o.since_ms {
        match samples.iter().find(|(ts, o)| *ts >= since && matches!(o, Outcome::Ok(_))) {
            Some((ts, Outcome::Ok(s))) => {
                out.push_str(&format!("first ok after T0: {} ({}) from {s}\n", fmt_rel(*ts, t0), fmt_dur(ts - since)));
                kv.push_str(&format!(" first_ok_after_t0_ms={} first_ok_after_t0_server={s}", ts - since));
            }
            _ => {
                out.push_str("first ok after T0: none\n");
                kv.push_str(" first_ok_after_t0_ms=-1");
            }
        }
        // the server that answered last before T0 and the one that answers at the end
    }
    if let Some(last_ok) = runs.iter().rev().find(|r| r.ok) {
        kv.push_str(&format!(" last_server={}", last_ok.server));
    }
    out.push_str(&kv);
    out.push('\n');
    print!("{out}");
    Ok(())
}

// ---------------------------------------------------------------------------------- impostor
/// A server that speaks just enough PostgreSQL to be sent a password: TLS with the
/// certificate given, then a request for the password in clear.
fn impostor(args: &[String]) -> Result<(), String> {
    let value = |name: &str| -> Result<String, String> {
        let at = args.iter().position(|a| a == name).ok_or(format!("{name} is required"))?;
        args.get(at + 1).cloned().ok_or(format!("{name} needs a value"))
    };
    let (listen, cert, key) = (value("--listen")?, value("--cert")?, value("--key")?);
    let read = |path: &str| std::fs::read(path).map_err(|e| format!("{path}: {e}"));
    let identity = native_tls::Identity::from_pkcs8(&read(&cert)?, &read(&key)?).map_err(|e| e.to_string())?;
    let acceptor = native_tls::TlsAcceptor::new(identity).map_err(|e| e.to_string())?;
    let listener = std::net::TcpListener::bind(&listen).map_err(|e| format!("{listen}: {e}"))?;
    emit(&format!("{} listening {listen}", now_ms()));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let said = impostor_session(&acceptor, &mut stream);
        emit(&format!("{} {said}", now_ms()));
    }
    Ok(())
}

fn impostor_session(acceptor: &native_tls::TlsAcceptor, stream: &mut std::net::TcpStream) -> String {
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

// ---------------------------------------------------------------------------------- main
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let result = match cmd.as_str() {
        "watch" => parse_opts(rest, 50, 1000).and_then(|o| {
            install_signal_handlers();
            watch(&o)
        }),
        "hold" => parse_opts(rest, 50, 1000).and_then(|o| {
            install_signal_handlers();
            hold(&o)
        }),
        "write" => parse_opts(rest, 0, 2000).and_then(|o| {
            install_signal_handlers();
            write(&o)
        }),
        "summary" => parse_opts(rest, 50, 1000).and_then(|o| summary(&o)),
        "impostor" => impostor(rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => Err(format!("unknown command: {other}\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = io::stdout().flush();
            eprintln!("lab-probe: {e}");
            ExitCode::from(1)
        }
    }
}
