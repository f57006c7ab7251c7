//! Logging: one line per message on stderr, which repmgr copies into its own log and the
//! journal keeps for the units. Writing never blocks for long (the root step must not
//! wait on a caller that does not read its output), every control character a server or
//! a caller put into a message is escaped, and when stderr is the journal each line carries
//! its priority (`journalctl -p warning` works) and no timestamp of its own.

use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;

/// What a pipe takes in one write that no other write interleaves with (POSIX PIPE_BUF).
const LINE_MAX: usize = 4096;
/// How long a line may wait for room on stderr before it is dropped.
const WAIT_MS: i32 = 100;

pub fn init(level: log::LevelFilter) {
    let journal = stderr_is_journal();
    let pid = std::process::id();
    env_logger::Builder::new()
        .filter_level(level)
        // the database client logs every server notice as information: ours only
        .filter_module("tokio_postgres", log::LevelFilter::Warn)
        .format(move |buf, record| {
            let line = if journal {
                journal_line(record.level(), &record.args().to_string())
            } else {
                let message = escape(&record.args().to_string());
                format!("{} repmgr-nat[{pid}] {}: {message}", buf.timestamp_millis(), record.level())
            };
            writeln!(buf, "{line}")
        })
        .target(env_logger::Target::Pipe(Box::new(Stderr)))
        .init();
}

/// A line for the journal: its priority as the `<N>` prefix systemd reads, no timestamp
/// (the journal has its own), no program name (the unit's `SyslogIdentifier`).
fn journal_line(level: log::Level, message: &str) -> String {
    format!("<{}>{}", priority(level), escape(message))
}

/// syslog's priority of a level.
fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// systemd says in `JOURNAL_STREAM` (`<device>:<inode>`) which file stderr is when it is
/// the journal.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else { return false };
    names_file(&stream.to_string_lossy(), &meta)
}

/// Whether `JOURNAL_STREAM`'s `<device>:<inode>` is this file.
fn names_file(stream: &str, meta: &std::fs::Metadata) -> bool {
    stream == format!("{}:{}", meta.dev(), meta.ino())
}

/// A line as it may go into a log: newlines and tabs become spaces, every other control
/// character (CR, ESC, ...) is written `\xNN`, and the invisible characters that reorder
/// or hide text (bidirectional overrides, zero-width ones) `\u{NNNN}`, so no server message
/// or argument can fake a line, drive a terminal or show other text than it holds.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.trim_end().chars() {
        match c {
            '\n' | '\t' => out.push(' '),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c if invisible(c) => out.push_str(&format!("\\u{{{:04x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// Unicode's format characters that change how text around them shows, or hide.
fn invisible(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{061c}' | '\u{feff}' | '\u{00ad}')
}

/// Lines another repmgr-nat printed (the root step, through sudo), logged again here at
/// their own level, so they reach the same log as ours, in its format.
pub fn relay(lines: &str) {
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let (level, message) = [log::Level::Error, log::Level::Warn, log::Level::Info, log::Level::Debug]
            .into_iter()
            .find_map(|level| line.split_once(&format!(" {level}: ")).map(|(_, message)| (level, message)))
            .unwrap_or((log::Level::Info, line));
        log::log!(level, "{message}");
    }
}

/// One line on stdout for a caller that reads it (route's `changed`), without ever waiting
/// long for one that does not.
pub fn answer(line: &str) {
    write_bounded(1, format!("{line}\n").as_bytes());
}

/// Root's own record of what it changed, in the system log (authpriv), naming who asked:
/// it does not depend on a caller's stderr.
pub fn audit(message: &str) {
    let by = std::env::var("SUDO_USER").map_or_else(|_| "root".to_string(), |u| format!("{u} through sudo"));
    let Ok(line) = std::ffi::CString::new(escape(&format!("{message} (for {by})"))) else { return };
    // SAFETY: the identity and the format are static NUL-terminated strings, the line a
    // NUL-terminated string that lives across the call; "%s" takes exactly that one.
    unsafe {
        libc::openlog(c"repmgr-nat".as_ptr(), libc::LOG_PID, libc::LOG_AUTHPRIV);
        libc::syslog(libc::LOG_NOTICE, c"%s".as_ptr(), line.as_ptr());
        libc::closelog();
    }
}

/// For the root step: stdout and stderr never wait on the caller. A pipe, a terminal or any
/// other device is opened again non-blocking (a new open file description of the same
/// file: the caller's own stays as it was); then a line either fits at once or is dropped,
/// even when another writer fills it between `poll` and `write`; a line is at most
/// `LINE_MAX` <= PIPE_BUF bytes, written whole (to a pipe) or not at all. A regular file
/// on a local file system is kept (writing to it waits on nobody). Anything else (a
/// socket, a file of a FUSE file system, whose server may never answer) and whatever
/// cannot be opened again is replaced with /dev/null.
pub fn never_block_on_output() {
    for fd in [1, 2] {
        never_block(fd);
    }
}

/// FUSE's file system type (`statfs`'s `f_type`).
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

fn never_block(fd: i32) {
    // SAFETY: fstat and fstatfs write into zeroed structs; open gets NUL-terminated paths;
    // dup2 and close act on descriptors this process owns.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return;
        }
        let mut fs: libc::statfs = std::mem::zeroed();
        let local = libc::fstatfs(fd, &mut fs) == 0 && fs.f_type as i64 != FUSE_SUPER_MAGIC;
        let reopened = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG if local => return,
            libc::S_IFIFO | libc::S_IFCHR => {
                let Ok(path) = std::ffi::CString::new(format!("/proc/self/fd/{fd}")) else { return };
                libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
            }
            _ => -1,
        };
        let reopened = match reopened {
            -1 => libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC),
            fd => fd,
        };
        if reopened >= 0 {
            libc::dup2(reopened, fd);
            libc::close(reopened);
        }
    }
}

/// stderr, written a line at a time, each waited for at most `WAIT_MS`: when nobody reads
/// it, lines are dropped rather than the program stopped.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_bounded(2, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes one line (cut to `LINE_MAX`) to `fd` if there is room for it within `WAIT_MS`.
fn write_bounded(fd: i32, buf: &[u8]) {
    let mut line = buf[..buf.len().min(LINE_MAX)].to_vec();
    if line.len() < buf.len() {
        *line.last_mut().expect("LINE_MAX > 0") = b'\n';
    }
    let mut poll = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
    // SAFETY: poll and write on `fd` with a valid pollfd and a buffer of `line.len()` bytes;
    // with POLLOUT set, a pipe has room for PIPE_BUF bytes, which `line` is at most.
    unsafe {
        if libc::poll(&mut poll, 1, WAIT_MS) == 1 && poll.revents & libc::POLLOUT != 0 {
            libc::write(fd, line.as_ptr().cast(), line.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_could_fake_a_line_or_drive_a_terminal() {
        assert_eq!(escape("node 2\nDETAIL:\tx\n"), "node 2 DETAIL: x");
        assert_eq!(escape("standby_promote\r\x1b[31mFAKE"), "standby_promote\\x0d\\x1b[31mFAKE");
        assert_eq!(escape("ümlaut ok"), "ümlaut ok");
        assert_eq!(escape("node 1\u{202e}2 edon"), "node 1\\u{202e}2 edon");
        assert_eq!(escape("a\u{200b}b"), "a\\u{200b}b");
    }

    /// The mode and status flags of `fd`, and the device it is (for character devices).
    fn what_is(fd: i32) -> (u32, i32, u64) {
        // SAFETY: fstat writes into a zeroed stat; fcntl F_GETFL only reads.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            assert_eq!(libc::fstat(fd, &mut st), 0);
            (st.st_mode & libc::S_IFMT, libc::fcntl(fd, libc::F_GETFL), st.st_rdev)
        }
    }

    #[test]
    fn a_terminal_a_pipe_and_a_socket_never_block() {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: posix_openpt, grantpt, unlockpt and ptsname on a descriptor of our own;
        // open gets the NUL-terminated name ptsname returned; each fd is owned once.
        let (_master, slave) = unsafe {
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(master >= 0 && libc::grantpt(master) == 0 && libc::unlockpt(master) == 0);
            let slave = libc::open(libc::ptsname(master), libc::O_WRONLY | libc::O_NOCTTY);
            assert!(slave >= 0);
            (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave))
        };
        never_block(slave.as_raw_fd());
        let (kind, flags, _) = what_is(slave.as_raw_fd());
        assert_eq!(kind, libc::S_IFCHR);
        assert_ne!(flags & libc::O_NONBLOCK, 0, "a terminal can block");

        let (_reader, writer) = std::io::pipe().unwrap();
        never_block(writer.as_raw_fd());
        assert_ne!(what_is(writer.as_raw_fd()).1 & libc::O_NONBLOCK, 0, "a pipe can block");

        let (socket, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        never_block(socket.as_raw_fd());
        let null = std::fs::metadata("/dev/null").map(|m| std::os::unix::fs::MetadataExt::rdev(&m)).unwrap();
        assert_eq!(what_is(socket.as_raw_fd()).2, null, "a socket can block: /dev/null instead");

        let path = std::env::temp_dir().join(format!("repmgr-nat-test-out-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let before = what_is(file.as_raw_fd());
        never_block(file.as_raw_fd());
        assert_eq!(what_is(file.as_raw_fd()), before, "a local file is kept");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn priorities_are_syslogs() {
        assert_eq!(priority(log::Level::Warn), 4);
        assert_eq!(priority(log::Level::Trace), 7);
    }

    #[test]
    fn a_journal_line_is_its_priority_and_the_message_only() {
        assert_eq!(journal_line(log::Level::Error, "watch: cannot read the rules"), "<3>watch: cannot read the rules");
        assert_eq!(journal_line(log::Level::Warn, "node 2\nfake"), "<4>node 2 fake");
        assert_eq!(journal_line(log::Level::Info, "nat: node 1 -> node 2"), "<6>nat: node 1 -> node 2");
        assert_eq!(journal_line(log::Level::Debug, "x"), "<7>x");
    }

    #[test]
    fn the_journal_is_recognised_by_device_and_inode() {
        let file = std::env::temp_dir();
        let meta = std::fs::metadata(&file).unwrap();
        assert!(names_file(&format!("{}:{}", meta.dev(), meta.ino()), &meta));
        assert!(!names_file(&format!("{}:{}", meta.dev(), meta.ino() + 1), &meta));
        assert!(!names_file("", &meta));
    }
}
