//! `route --show --follow`: the rules read again whenever the tables change, for watch.
//!
//! Reading the tables through sudo starts three processes (sudo, `repmgr-nat route
//! --show`, iptables-save); watch would do it twice a second, for each cluster. Instead it
//! starts one `sudo ... route --show --follow`, which stays. As root it joins the kernel's
//! nftables notifications (netlink group NFNLGRP_NFTABLES, which every change made through
//! iptables-nft reaches; joining takes CAP_NET_ADMIN, which is why watch cannot do it
//! itself), and writes a reading after each change and at least every `HEARTBEAT`; where
//! the kernel notifies nobody (the legacy iptables) it reads every `Watch::NAT_EVERY`. It
//! reads nothing from watch and ends when watch stops reading. Watch (`SudoFeed`) keeps
//! the latest reading and, while the feed is missing, ended or silent, reads through sudo
//! twice a second as before.
//!
//! A reading is framed: a first line with when it was taken (`CLOCK_MONOTONIC`, the one
//! clock both processes share, so that watch can tell a reading taken before its own
//! switch from one taken after), the `route --show` lines, an end line.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::core::config::{Config, Watch};
use crate::core::ruleset::Live;
use crate::effects::exec;
use crate::effects::nat::{NatSwitch, ViaSudo};

/// With notifications, a reading at least this often all the same: what tells watch the
/// feed is alive, and heals a notification the kernel could not deliver.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// After a change, the next reading waits at least this long since the last one: a tool
/// that rewrites its own rules in a loop costs a reading per `GAP`, not one per change.
const GAP: Duration = Duration::from_millis(20);
/// Silence for longer than a heartbeat and this margin: the feed is not trusted.
const MARGIN: Duration = Duration::from_secs(2);

const BEGIN: &str = "# repmgr-nat reading taken at ";
const END: &str = "# repmgr-nat reading ends";

/// Now on `CLOCK_MONOTONIC`, in nanoseconds: the clock `Instant` reads, and one that
/// every process of this host shares.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Whether `fd` is a pipe, the only output a follow writes to: its reader's going ends
/// the follow. Into a file or /dev/null nothing would ever end this root process, which
/// repmgr's OS user could then start without bound.
pub fn is_pipe(fd: &impl AsRawFd) -> bool {
    // SAFETY: fstat writes into a zeroed struct we own; the fd is borrowed, open.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd.as_raw_fd(), &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO
    }
}

/// One reading, as root writes it.
pub fn frame(taken_ns: u64, text: &str) -> String {
    let newline = if text.is_empty() || text.ends_with('\n') { "" } else { "\n" };
    format!("{BEGIN}{taken_ns}\n{text}{newline}{END}\n")
}

/// Gathers the lines of a reading; `line` returns a reading once its end line is in.
#[derive(Default)]
pub struct Frames {
    taken_ns: Option<u64>,
    text: String,
}

impl Frames {
    /// Takes one line (without its newline); the reading it ends, with when it was taken.
    /// A line outside a reading, or a begin line that does not parse, is an error.
    pub fn line(&mut self, line: &str) -> Result<Option<(u64, String)>> {
        if let Some(ns) = line.strip_prefix(BEGIN) {
            self.text.clear();
            self.taken_ns = Some(ns.parse().map_err(|_| anyhow::anyhow!("a reading's first line is {line:?}"))?);
            return Ok(None);
        }
        let Some(taken_ns) = self.taken_ns else {
            anyhow::bail!("a line outside a reading: {line:?}");
        };
        if line == END {
            self.taken_ns = None;
            return Ok(Some((taken_ns, std::mem::take(&mut self.text))));
        }
        self.text.push_str(line);
        self.text.push('\n');
        Ok(None)
    }
}

/// What ended a wait for a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wake {
    Changed,
    Quiet,
    /// Nobody reads what we write any more.
    ReaderGone,
}

/// Where root's follow learns of changes.
pub trait Changes {
    /// Waits at most `timeout` for a change of the tables or for the reader to go.
    fn wait(&mut self, timeout: Duration) -> Wake;
    /// How often a reading is written when nothing changes.
    fn every(&self) -> Duration;
}

/// Root's side: a reading now, then one after every change and at least every
/// `changes.every()`, until the reader goes. A reading that cannot be taken ends it with
/// the error (watch reads through sudo until it starts another).
pub fn follow(nat: &dyn NatSwitch, changes: &mut dyn Changes, out: &mut dyn Write) -> Result<()> {
    loop {
        let taken_ns = monotonic_ns();
        let text = nat.live()?.render();
        if out.write_all(frame(taken_ns, &text).as_bytes()).and_then(|()| out.flush()).is_err() {
            return Ok(()); // the reader has gone
        }
        if changes.wait(changes.every()) == Wake::ReaderGone {
            return Ok(());
        }
    }
}

/// The kernel's notifications, and our standard output's reader: `poll(2)` on both.
pub struct Kernel {
    /// The nftables notifications; none where they cannot be had (then a reading every
    /// `Watch::NAT_EVERY`).
    netlink: Option<OwnedFd>,
    out: RawFd,
    last_change: Option<Instant>,
}

impl Kernel {
    /// Watches the reader of `out`, and the nftables notifications when `nft` (the
    /// iptables in use is iptables-nft) and the kernel lets us join them; otherwise says
    /// why on the log (which reaches watch's).
    pub fn new(out: &impl AsRawFd, nft: bool) -> Kernel {
        let netlink = match nft.then(subscribe) {
            Some(Ok(fd)) => Some(fd),
            Some(Err(e)) => {
                log::warn!(
                    "route --follow: cannot join nftables' notifications ({e}): reading the tables twice a second"
                );
                None
            }
            None => {
                log::info!(
                    "route --follow: iptables is not iptables-nft (no notifications): reading the tables twice a second"
                );
                None
            }
        };
        Kernel { netlink, out: out.as_raw_fd(), last_change: None }
    }

    /// Reads and drops every queued notification; what they say does not matter, only
    /// that the tables changed (an overrun, ENOBUFS, says so too).
    fn drain(&self, fd: RawFd) {
        let mut buf = [0u8; 16384];
        loop {
            // SAFETY: recv(2) into a buffer we own, of its length; the fd is ours and open.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::ENOBUFS) {
                return; // EAGAIN: nothing more queued
            }
        }
    }

    /// One `poll(2)` on the reader, and on the notifications if `changes`: what came, if
    /// anything.
    fn poll(&self, timeout: Duration, changes: bool) -> Option<Wake> {
        let netlink = self.netlink.as_ref().filter(|_| changes).map_or(-1, |fd| fd.as_raw_fd());
        // the reader: POLLERR once the pipe's read end has closed (asked for or not)
        let mut fds = [
            libc::pollfd { fd: self.out, events: 0, revents: 0 },
            libc::pollfd { fd: netlink, events: libc::POLLIN, revents: 0 },
        ];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: poll(2) on an array we own, of its length (a negative fd is skipped).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n <= 0 {
            return None; // the timeout, or a signal: the caller's deadline decides
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            return Some(Wake::ReaderGone);
        }
        // POLLERR too: an overrun (ENOBUFS) stays reported until a recv clears it
        if fds[1].revents & (libc::POLLIN | libc::POLLERR) != 0 {
            self.drain(netlink);
            return Some(Wake::Changed);
        }
        None
    }

    /// Polls until `until`, on the notifications if `changes`: what came first, if
    /// anything.
    fn poll_until(&self, until: Instant, changes: bool) -> Option<Wake> {
        while let Some(left) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            if let Some(wake) = self.poll(left, changes) {
                return Some(wake);
            }
        }
        None
    }
}

impl Changes for Kernel {
    fn wait(&mut self, timeout: Duration) -> Wake {
        let deadline = Instant::now() + timeout;
        // after a change, not sooner than GAP since it (the reader is still watched)
        if let Some(gap_ends) = self.last_change.map(|at| (at + GAP).min(deadline))
            && self.poll_until(gap_ends, false) == Some(Wake::ReaderGone)
        {
            return Wake::ReaderGone;
        }
        match self.poll_until(deadline, true) {
            Some(Wake::Changed) => {
                self.last_change = Some(Instant::now());
                Wake::Changed
            }
            Some(wake) => wake,
            None => Wake::Quiet,
        }
    }

    fn every(&self) -> Duration {
        if self.netlink.is_some() { HEARTBEAT } else { Watch::NAT_EVERY }
    }
}

/// A netlink socket in the nftables notifications' group.
fn subscribe() -> io::Result<OwnedFd> {
    let flags = libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: socket(2) with constant arguments; a non-negative result is a new fd we own.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, flags, libc::NETLINK_NETFILTER) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just returned by socket(2) and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: a zeroed sockaddr_nl is valid (pid 0: the kernel picks one).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    let len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: bind(2) with a pointer to a sockaddr_nl we own and its size.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let group: libc::c_int = libc::NFNLGRP_NFTABLES;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: setsockopt(2) with a pointer to an int we own and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_NETLINK,
            libc::NETLINK_ADD_MEMBERSHIP,
            (&raw const group).cast(),
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Watch's side of a feed: the latest reading, and whether it can be trusted.
pub trait Feed {
    /// The latest reading, and when root took it.
    fn latest(&self) -> Option<(Live, Instant)>;
    /// Why the feed cannot be trusted at `now`: it ended, or has said nothing for longer
    /// than a heartbeat and a margin. None while it can.
    fn trouble(&self, now: Instant) -> Option<String>;
}

/// What the feed's reader thread heard.
struct Heard {
    reading: Option<(Live, Instant)>,
    /// When it last heard a reading (or started).
    last: Instant,
    ended: Option<String>,
    /// The feed was dropped: the thread stops reading at the next line, which closes the
    /// pipe, which ends root's follow.
    dropped: bool,
}

impl Heard {
    fn new(now: Instant) -> Mutex<Heard> {
        Mutex::new(Heard { reading: None, last: now, ended: None, dropped: false })
    }
}

/// `sudo -n repmgr-nat [--instance NAME] route --show --follow`, read by a thread of its
/// own. Dropping it ends the child: its output's reader goes at the next reading (within
/// a heartbeat), and a sudo that runs the command as its child passes SIGTERM on.
pub struct SudoFeed {
    heard: Arc<Mutex<Heard>>,
    child: Arc<Mutex<Child>>,
}

impl SudoFeed {
    pub fn start(cfg: &Config) -> Result<SudoFeed> {
        let cmd = ViaSudo::route_cmd(cfg, &["--show", "--follow"]);
        let mut child = exec::spawn_piped(&cmd)?;
        let (stdout, stderr) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
        let heard = Arc::new(Heard::new(Instant::now()));
        let child = Arc::new(Mutex::new(child));
        // what root logs belongs in our log; its last line says why it ended
        let said = thread::spawn(move || {
            let mut last = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                crate::logging::relay(&line);
                last = line;
            }
            last
        });
        let (cfg, into, reaped) = (cfg.clone(), Arc::clone(&heard), Arc::clone(&child));
        thread::spawn(move || {
            let why = read_feed(&cfg, BufReader::new(stdout), &into);
            let status = reaped.lock().expect("child").wait();
            let last = said.join().unwrap_or_default();
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            let ended = format!(
                "{cmd} ended ({status}{why}){}",
                if last.is_empty() { String::new() } else { format!(": {last}") }
            );
            into.lock().expect("heard").ended = Some(ended);
        });
        Ok(SudoFeed { heard, child })
    }
}

/// Reads readings into `heard` until the output ends or makes no sense; what went wrong,
/// if anything, as a suffix for the ended line.
fn read_feed(cfg: &Config, out: impl BufRead, heard: &Mutex<Heard>) -> String {
    let mut frames = Frames::default();
    for line in out.lines() {
        if heard.lock().expect("heard").dropped {
            return String::new();
        }
        let line = match line {
            Ok(line) => line,
            Err(e) => return format!(", {e}"),
        };
        match frames.line(&line) {
            Ok(Some((taken_ns, text))) => {
                let now = Instant::now();
                let age = Duration::from_nanos(monotonic_ns().saturating_sub(taken_ns));
                let mut heard = heard.lock().expect("heard");
                heard.reading = Some((Live::parse(cfg, &text), now.checked_sub(age).unwrap_or(now)));
                heard.last = now;
            }
            Ok(None) => {}
            Err(e) => return format!(", {e}"),
        }
    }
    String::new()
}

impl Feed for SudoFeed {
    fn latest(&self) -> Option<(Live, Instant)> {
        self.heard.lock().expect("heard").reading.clone()
    }

    fn trouble(&self, now: Instant) -> Option<String> {
        let heard = self.heard.lock().expect("heard");
        if let Some(ended) = &heard.ended {
            return Some(ended.clone());
        }
        let silent = now.saturating_duration_since(heard.last);
        (silent > HEARTBEAT + MARGIN).then(|| format!("said nothing for {} s", silent.as_secs()))
    }
}

impl Drop for SudoFeed {
    /// Ends root's follow without waiting for it: its output's reader goes at the next
    /// reading (within a heartbeat). SIGTERM ends it at once where sudo runs it as its
    /// child and relays signals; where sudo executed it in its own place (no PAM session,
    /// no pty: the packaged sudoers for `route --show`), the process is root's and the
    /// kill is refused, which changes nothing.
    fn drop(&mut self) {
        self.heard.lock().expect("heard").dropped = true;
        // try_lock: the reader thread holds it only to reap a child that already ended
        if let Ok(mut child) = self.child.try_lock()
            && matches!(child.try_wait(), Ok(None))
        {
            // SAFETY: kill(2) on our own child, running and not reaped (only a wait under
            // the lock we hold reaps it)
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::tests::{example, node};
    use crate::core::ruleset::{Open, Route};
    use crate::effects::testing::Fake;

    #[test]
    fn a_reading_comes_out_of_its_frame_as_it_went_in() {
        let mut frames = Frames::default();
        let text = "*nat\n:repmgr_dnat - [0:0]\nCOMMIT\n";
        let mut got = vec![];
        for ns in [7u64, 9] {
            for line in frame(ns, text).lines() {
                got.extend(frames.line(line).unwrap());
            }
        }
        assert_eq!(got, [(7, text.to_string()), (9, text.to_string())]);
        // an empty table is a reading too, and a missing newline is added
        let lines: Vec<String> = frame(3, "").lines().map(String::from).collect();
        assert_eq!(lines.iter().filter_map(|l| frames.line(l).unwrap()).collect::<Vec<_>>(), [(3, String::new())]);
        assert_eq!(frame(1, "x"), frame(1, "x\n"));
    }

    #[test]
    fn lines_outside_a_reading_or_a_bad_first_line_are_errors() {
        let mut frames = Frames::default();
        assert!(frames.line("-A repmgr_dnat -j DNAT").is_err());
        assert!(frames.line(&format!("{BEGIN}soon")).is_err());
        assert!(frames.line(END).is_err(), "an end without a beginning");
    }

    /// Changes as a test scripts them; counts the waits.
    struct Scripted(Vec<Wake>);

    impl Changes for Scripted {
        fn wait(&mut self, _: Duration) -> Wake {
            if self.0.is_empty() { Wake::ReaderGone } else { self.0.remove(0) }
        }
        fn every(&self) -> Duration {
            HEARTBEAT
        }
    }

    fn readings(written: &[u8]) -> Vec<String> {
        let mut frames = Frames::default();
        let text = String::from_utf8(written.to_vec()).unwrap();
        text.lines().filter_map(|l| frames.line(l).unwrap()).map(|(_, text)| text).collect()
    }

    #[test]
    fn follow_writes_a_reading_first_and_after_every_wake_until_the_reader_goes() {
        let cfg = example();
        let fake = Fake::new(crate::effects::testing::rec(1, Open::All, 1), Default::default());
        let mut out = Vec::new();
        follow(&fake, &mut Scripted(vec![Wake::Quiet, Wake::Changed]), &mut out).unwrap();
        let expected = Live::installed(&cfg, Route::new(node(1), Open::All)).render();
        assert_eq!(readings(&out), [expected.clone(), expected.clone(), expected]);
    }

    #[test]
    fn follow_ends_quietly_when_nobody_reads() {
        struct Gone;
        impl Write for Gone {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let fake = Fake::new(None, Default::default());
        follow(&fake, &mut Scripted(vec![Wake::Changed; 3]), &mut Gone).unwrap();
    }

    /// The real poll(2), without notifications (no root needed): quiet while the pipe is
    /// read, the reader gone at once when its end closes.
    #[test]
    fn the_kernel_wait_sees_the_reader_go() {
        let (reader, writer) = std::io::pipe().unwrap();
        assert!(is_pipe(&writer) && is_pipe(&reader));
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(!is_pipe(&file), "/dev/null would never end a follow");
        let mut kernel = Kernel::new(&writer, false);
        assert_eq!(kernel.every(), Watch::NAT_EVERY, "no notifications: a reading twice a second");
        assert_eq!(kernel.wait(Duration::from_millis(20)), Wake::Quiet);
        drop(reader);
        assert_eq!(kernel.wait(Duration::from_secs(60)), Wake::ReaderGone);
    }

    #[test]
    fn the_reader_keeps_the_latest_reading_with_when_root_took_it() {
        let cfg = example();
        let live = Live::installed(&cfg, Route::new(node(2), Open::Barman));
        let taken = monotonic_ns() - 300_000_000; // 0.3 s ago
        let out = format!("{}{}", frame(taken - 1, ""), frame(taken, &live.render()));
        let started = Instant::now() - Duration::from_secs(60);
        let heard = Heard::new(started);
        assert_eq!(read_feed(&cfg, out.as_bytes(), &heard), "");
        let heard = heard.into_inner().unwrap();
        let (got, at) = heard.reading.unwrap();
        assert_eq!(got, live);
        let age = Instant::now() - at;
        assert!(age >= Duration::from_millis(300) && age < Duration::from_secs(30), "{age:?}");
        assert!(heard.last > started);
        let garbage = Heard::new(started);
        assert!(read_feed(&cfg, "sudo: a password is required\n".as_bytes(), &garbage).contains("outside a reading"));
    }
}
