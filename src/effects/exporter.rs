//! The Prometheus exporter, serving what `core::metrics` computes: the small file in
//! `watch.dir` where every `repmgr-nat event` counts itself, and the HTTP listener `watch`
//! serves `GET /metrics` on.
//!
//! The listener is a thread of its own that answers a few connections at once, each on a
//! thread of its own within a deadline and from a request of bounded size: a local user who
//! connects and sends nothing holds one of them for `DEADLINE` at most, and never the watch
//! loop, which only swaps in the snapshot of its last pass.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::core::metrics::{self, EventCounts, Snapshot};

/// The events' counts in `watch.dir`: `<event> <outcome> <count>` lines.
pub const EVENTS_FILE: &str = "events";
/// The longest the counts file may be read as (`EventCounts::MAX_LINES` lines fit).
const EVENTS_MAX: u64 = 64 * 1024;
/// How long an event waits for another one counting at the same moment.
const COUNT_WAIT: Duration = Duration::from_secs(1);

/// How long one connection may take, from accepting it to the last byte of the answer.
const DEADLINE: Duration = Duration::from_secs(2);
/// The largest request head accepted (request line and headers).
const REQUEST_MAX: usize = 8 * 1024;
/// How long to wait before trying the address again when it cannot be listened on.
const REBIND_EVERY: Duration = Duration::from_secs(30);
/// How many connections are answered at once: enough that a few held open leave room for
/// the scrapes, few enough that they never take many of watch's file descriptors.
const CONNECTIONS_MAX: usize = 8;
/// The pause after a failed accept: a failure that lasts (no file descriptor left) must not
/// turn the loop into a busy one.
const ACCEPT_PAUSE: Duration = Duration::from_millis(250);

/// `watch`, at its start: the counts file, made if missing, kept if there (counts go on
/// across restarts of watch; `watch.dir` is emptied at boot).
pub fn create_event_counts(dir: &Path) -> Result<()> {
    let path = dir.join(EVENTS_FILE);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // repmgr's OS user's alone (events and watch run as it): another user who could open
    // it could hold its lock, and every event would wait for it
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", path.display()))
}

/// Counts one event in `dir`'s counts file, if `watch` made one (nothing serves the counts
/// otherwise). Under the file's own lock, so that events at the same moment both count.
/// With `owner` (an event run as root: `watch.dir` is repmgr's OS user's), only a regular
/// file of that user's with no other name: root writes nothing that user could have
/// pointed elsewhere (a hard link to a file of root's, a FIFO).
pub fn count_event(dir: &Path, event: &str, outcome: &str, owner: Option<u32>) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let path = dir.join(EVENTS_FILE);
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
    let file = match OpenOptions::new().read(true).write(true).custom_flags(flags).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let meta = file.metadata().with_context(|| format!("cannot stat {}", path.display()))?;
    if !meta.is_file() || meta.nlink() != 1 || owner.is_some_and(|uid| uid != meta.uid()) {
        anyhow::bail!(
            "{} is not a regular file of repmgr's OS user's with one name (owner uid {}, {} names): not written",
            path.display(),
            meta.uid(),
            meta.nlink()
        );
    }
    let deadline = Instant::now() + COUNT_WAIT;
    while let Err(e) = file.try_lock() {
        if Instant::now() >= deadline {
            return Err(anyhow::anyhow!("cannot lock {}: {e}", path.display()));
        }
        thread::sleep(Duration::from_millis(5));
    }
    let mut counts =
        EventCounts::parse(&read_bounded(&file).with_context(|| format!("cannot read {}", path.display()))?);
    if !counts.count(event, outcome) {
        log::debug!("{}: event {event} {outcome} not counted", path.display());
        return Ok(());
    }
    // the counts only grow, and so does their text: written over the old in place (the
    // lock stays on this file), then cut to its length
    let text = counts.render();
    file.write_all_at(text.as_bytes(), 0)
        .and_then(|()| file.set_len(text.len() as u64))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The counts as the file holds them now (none when it cannot be read).
fn read_event_counts(dir: &Path) -> EventCounts {
    let Ok(file) = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(dir.join(EVENTS_FILE)) else {
        return EventCounts::default();
    };
    // a shared lock keeps a half-written file out; without it within a moment, the lines
    // that parse
    let deadline = Instant::now() + Duration::from_millis(100);
    while file.try_lock_shared().is_err() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    EventCounts::parse(&read_bounded(&file).unwrap_or_default())
}

fn read_bounded(file: &File) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    file.take(EVENTS_MAX).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Serves `GET /metrics` on `addr` from a thread of its own: the snapshot of watch's last
/// pass and the events' counts in `dir`. An address that cannot be listened on is logged
/// once and tried again every `REBIND_EVERY`: watch goes on without metrics meanwhile.
/// Every series carries `cluster="<instance>"`.
pub fn serve(addr: SocketAddr, snapshot: Arc<Mutex<Snapshot>>, dir: PathBuf, cluster: String) {
    let body: Body = Arc::new(move || {
        let snapshot = snapshot.lock().map(|s| s.clone()).unwrap_or_default();
        metrics::render(&snapshot, &read_event_counts(&dir), env!("CARGO_PKG_VERSION"), &cluster)
    });
    let spawned = thread::Builder::new().name("metrics".into()).spawn(move || listen(addr, REBIND_EVERY, &body));
    if let Err(e) = spawned {
        log::error!("watch: cannot start serving metrics: {e}");
    }
}

/// What a scrape is answered: rendered anew for each one.
type Body = Arc<dyn Fn() -> String + Send + Sync>;

/// Listens on `addr` and answers there for good. Any local user can listen on a free
/// port first (before watch starts, or between two of its runs): scrapes then reach that
/// process, and nothing of watch's depends on the port, so watch says so once and takes
/// the address when it is free again.
fn listen(addr: SocketAddr, rebind_every: Duration, body: &Body) -> ! {
    let mut failed = false;
    loop {
        match TcpListener::bind(addr) {
            Ok(listener) if failed => {
                log::warn!("watch: metrics on http://{addr}/metrics, the address free again");
                accept_loop(&listener, body, CONNECTIONS_MAX)
            }
            Ok(listener) => {
                log::info!("watch: metrics on http://{addr}/metrics");
                accept_loop(&listener, body, CONNECTIONS_MAX)
            }
            Err(e) if !failed => {
                let who = match e.kind() {
                    ErrorKind::AddrInUse => "; another process listens there, and scrapes get its answers, not watch's",
                    _ => "",
                };
                log::error!(
                    "watch: cannot serve metrics on {addr}: {e}{who}; trying again every {} s (watch goes on)",
                    rebind_every.as_secs_f32()
                );
                failed = true;
            }
            Err(_) => {}
        }
        thread::sleep(rebind_every);
    }
}

/// Where connections come from: the listener, or a fake in the tests.
trait Accept {
    fn accept_one(&self) -> std::io::Result<TcpStream>;
}

impl Accept for TcpListener {
    fn accept_one(&self) -> std::io::Result<TcpStream> {
        self.accept().map(|(stream, _)| stream)
    }
}

/// Answers connections as they come, up to `max` at once, each on a thread of its own and
/// within its deadline: a local user holding connections open holds `max - 1` slots for
/// `DEADLINE` at most, and the next scrape is accepted as soon as one is free. Beyond `max`,
/// connections wait in the kernel's queue, not on watch's file descriptors. A failed accept
/// (no file descriptor left, say) is said once and tried again after `ACCEPT_PAUSE`.
fn accept_loop(listener: &impl Accept, body: &Body, max: usize) -> ! {
    let slots = Arc::new(Slots { busy: Mutex::new(0), freed: Condvar::new(), max });
    let mut failing = false;
    loop {
        let slot = slots.take();
        match listener.accept_one() {
            Ok(stream) => {
                failing = false;
                let body = Arc::clone(body);
                let spawned =
                    thread::Builder::new().name("metrics-conn".into()).stack_size(256 * 1024).spawn(move || {
                        let _slot = slot;
                        if let Err(e) = answer(stream, || body()) {
                            log::debug!("watch: metrics: {e}");
                        }
                    });
                // the connection and its slot went with the closure
                if let Err(e) = spawned {
                    log::debug!("watch: metrics: cannot answer a connection: {e}");
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {}
            Err(e) => {
                drop(slot);
                match std::mem::replace(&mut failing, true) {
                    false => log::warn!(
                        "watch: metrics: cannot accept a connection: {e}; trying again every {} ms",
                        ACCEPT_PAUSE.as_millis()
                    ),
                    true => log::debug!("watch: metrics: cannot accept a connection: {e}"),
                }
                thread::sleep(ACCEPT_PAUSE);
            }
        }
    }
}

/// The connections being answered, at most `max`.
struct Slots {
    busy: Mutex<usize>,
    freed: Condvar,
    max: usize,
}

/// One connection's place among the `Slots`, given back when dropped.
struct Slot(Arc<Slots>);

impl Slots {
    /// Waits for a free slot.
    fn take(self: &Arc<Self>) -> Slot {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        while *busy >= self.max {
            busy = self.freed.wait(busy).unwrap_or_else(PoisonError::into_inner);
        }
        *busy += 1;
        Slot(Arc::clone(self))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *self.0.busy.lock().unwrap_or_else(PoisonError::into_inner) -= 1;
        self.0.freed.notify_one();
    }
}

/// Reads one request head within the deadline and answers it.
fn answer(mut stream: TcpStream, body: impl FnOnce() -> String) -> std::io::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0; 1024];
    while !complete(&head) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || head.len() >= REQUEST_MAX {
            break;
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n.min(REQUEST_MAX - head.len())]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    stream.set_write_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))?;
    stream.write_all(&respond(&head, body))
}

/// Whether a request head is whole: it ends with an empty line.
fn complete(head: &[u8]) -> bool {
    head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n")
}

/// The answer to a request head: the metrics for `GET /metrics`, an error otherwise.
fn respond(head: &[u8], body: impl FnOnce() -> String) -> Vec<u8> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.trim_end().split(' ');
    let (method, target, version) = (words.next(), words.next(), words.next());
    let (status, extra, body) = match (method, target, version) {
        _ if !complete(head) => ("400 Bad Request", "", "bad request\n".to_string()),
        (Some(_), Some(_), Some(v)) if !v.starts_with("HTTP/1.") => ("400 Bad Request", "", "bad request\n".into()),
        (Some("GET"), Some("/metrics"), Some(_)) => ("200 OK", "", body()),
        (Some("GET"), Some(_), Some(_)) => ("404 Not Found", "", "only /metrics is served\n".into()),
        (Some(_), Some(_), Some(_)) => ("405 Method Not Allowed", "Allow: GET\r\n", "only GET\n".into()),
        _ => ("400 Bad Request", "", "bad request\n".into()),
    };
    let kind = if status.starts_with("200") { "text/plain; version=0.0.4; charset=utf-8" } else { "text/plain" };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(answer: &[u8]) -> String {
        String::from_utf8_lossy(answer).lines().next().unwrap_or_default().to_string()
    }

    #[test]
    fn answers_get_metrics_only() {
        let ok = respond(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n", || "repmgr_nat_passes_total 1\n".into());
        let text = String::from_utf8(ok).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(text.ends_with("Content-Length: 26\r\nConnection: close\r\n\r\nrepmgr_nat_passes_total 1\n"), "{text}");
        let never = || -> String { panic!("rendered for a request that is not GET /metrics") };
        assert_eq!(status_of(&respond(b"GET / HTTP/1.1\r\n\r\n", never)), "HTTP/1.1 404 Not Found");
        assert_eq!(status_of(&respond(b"POST /metrics HTTP/1.1\r\n\r\n", never)), "HTTP/1.1 405 Method Not Allowed");
        assert_eq!(status_of(&respond(b"GET /metrics HTTP/1.1\r\nHost: x", never)), "HTTP/1.1 400 Bad Request");
        assert_eq!(status_of(&respond(b"GET /metrics SMTP\r\n\r\n", never)), "HTTP/1.1 400 Bad Request");
        assert_eq!(status_of(&respond(b"", never)), "HTTP/1.1 400 Bad Request");
    }

    #[test]
    fn serves_on_loopback_within_its_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            for stream in listener.incoming().take(2) {
                answer(stream.unwrap(), || "repmgr_nat_passes_total 7\n".into()).ok();
            }
        });
        // a client that sends nothing is answered 400 once the deadline passed
        let started = Instant::now();
        let mut idle = TcpStream::connect(addr).unwrap();
        let mut got = String::new();
        idle.read_to_string(&mut got).unwrap();
        assert!(got.starts_with("HTTP/1.1 400"), "{got}");
        assert!(started.elapsed() < DEADLINE + Duration::from_secs(1));
        // then a scrape
        let mut scrape = TcpStream::connect(addr).unwrap();
        scrape.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut got = String::new();
        scrape.read_to_string(&mut got).unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK") && got.ends_with("\r\n\r\nrepmgr_nat_passes_total 7\n"), "{got}");
        server.join().unwrap();
    }

    fn scrape(addr: SocketAddr) -> std::io::Result<String> {
        let mut scrape = TcpStream::connect(addr)?;
        scrape.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut got = String::new();
        scrape.read_to_string(&mut got)?;
        Ok(got)
    }

    fn body(text: &'static str) -> Body {
        Arc::new(move || text.to_string())
    }

    #[test]
    fn connections_held_open_do_not_hold_the_scrapes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || accept_loop(&listener, &body("repmgr_nat_passes_total 3\n"), CONNECTIONS_MAX));
        // a local user's connections that send nothing, all but one slot's worth
        let idle: Vec<_> = (1..CONNECTIONS_MAX).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let started = Instant::now();
        let got = scrape(addr).unwrap();
        assert!(got.ends_with("\r\n\r\nrepmgr_nat_passes_total 3\n"), "{got}");
        assert!(started.elapsed() < DEADLINE / 2, "the scrape waited {:?} behind idle connections", started.elapsed());
        // every slot held: the next scrape waits for the first deadline, no longer
        let more: Vec<_> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let got = scrape(addr).unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
        assert!(started.elapsed() < DEADLINE + Duration::from_secs(1), "{:?}", started.elapsed());
        drop((idle, more));
    }

    /// Counts its calls, and fails each as a process out of file descriptors does.
    struct OutOfFiles(Arc<std::sync::atomic::AtomicUsize>);

    impl Accept for OutOfFiles {
        fn accept_one(&self) -> std::io::Result<TcpStream> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(std::io::Error::from_raw_os_error(libc::EMFILE))
        }
    }

    #[test]
    fn a_failing_accept_is_no_busy_loop() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let listener = OutOfFiles(Arc::clone(&calls));
        thread::spawn(move || accept_loop(&listener, &body(""), CONNECTIONS_MAX));
        thread::sleep(ACCEPT_PAUSE * 2 + ACCEPT_PAUSE / 2);
        let calls = calls.load(std::sync::atomic::Ordering::Relaxed);
        assert!((1..=3).contains(&calls), "accept tried {calls} times in {:?}", ACCEPT_PAUSE * 2 + ACCEPT_PAUSE / 2);
    }

    #[test]
    fn an_address_taken_first_is_taken_back_once_free() {
        let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = squatter.local_addr().unwrap();
        thread::spawn(move || listen(addr, Duration::from_millis(100), &body("repmgr_nat_passes_total 5\n")));
        thread::sleep(Duration::from_millis(300));
        // meanwhile the scrapes reach the squatter, and watch's listener has not given up
        let asked = TcpStream::connect(addr).unwrap();
        squatter.accept().unwrap();
        drop((asked, squatter));
        let started = Instant::now();
        let got = loop {
            match scrape(addr) {
                Ok(got) if !got.is_empty() => break got,
                _ if started.elapsed() > Duration::from_secs(2) => panic!("the address was not taken back"),
                _ => thread::sleep(Duration::from_millis(20)),
            }
        };
        assert!(got.ends_with("repmgr_nat_passes_total 5\n"), "{got}");
    }

    #[test]
    fn root_counts_only_in_a_file_of_repmgrs_user_with_one_name() {
        let dir = std::env::temp_dir().join(format!("repmgr-nat-test-events-owner-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        create_event_counts(&dir).unwrap();
        count_event(&dir, "standby_promote", "ok", Some(me)).unwrap();
        let err = count_event(&dir, "standby_promote", "ok", Some(me + 1)).unwrap_err();
        assert!(err.to_string().contains("not written"), "{err}");
        // another name for it: a link planted to a file root would then write
        std::fs::hard_link(dir.join(EVENTS_FILE), dir.join("elsewhere")).unwrap();
        assert!(count_event(&dir, "standby_promote", "ok", Some(me)).is_err(), "written through a second name");
        std::fs::remove_file(dir.join("elsewhere")).unwrap();
        // a FIFO is neither waited on nor written
        std::fs::remove_file(dir.join(EVENTS_FILE)).unwrap();
        let fifo = std::ffi::CString::new(dir.join(EVENTS_FILE).into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(count_event(&dir, "standby_promote", "ok", Some(me)).is_err());
        std::fs::remove_file(dir.join(EVENTS_FILE)).unwrap();
        create_event_counts(&dir).unwrap();
        assert_eq!(read_event_counts(&dir).render(), "", "a new file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn events_count_themselves_only_where_watch_made_the_file() {
        let dir = std::env::temp_dir().join(format!("repmgr-nat-test-events-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        count_event(&dir, "standby_promote", "ok", None).unwrap();
        assert!(!dir.join(EVENTS_FILE).exists(), "no watch, no file");
        create_event_counts(&dir).unwrap();
        let counters: Vec<_> = (0..4)
            .map(|i| {
                let dir = dir.clone();
                thread::spawn(move || {
                    count_event(&dir, "standby_promote", if i % 2 == 0 { "ok" } else { "refused" }, None)
                })
            })
            .collect();
        for c in counters {
            c.join().unwrap().unwrap();
        }
        count_event(&dir, "node_rejoin", "ignored", None).unwrap();
        create_event_counts(&dir).unwrap();
        let counts = read_event_counts(&dir);
        assert_eq!(counts.render(), "node_rejoin ignored 1\nstandby_promote ok 2\nstandby_promote refused 2\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
