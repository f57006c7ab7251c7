//! Who is running, and what root may trust. Root acts only on a config that only root
//! can change; `route`, the one command repmgr's OS user may run as root, reads only the
//! config at its fixed path (the caller refuses `--config` for it).

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and has no side effects.
    unsafe { libc::geteuid() == 0 }
}

/// The root step sets what it needs itself rather than inherit the caller's: a umask (the
/// record must be readable by repmgr's OS user) and resource limits (a caller's `ulimit -f
/// 0` would kill it between the switch and the record). Where root may not lift a limit
/// (no CAP_SYS_RESOURCE, in some containers), going past it is an error the step reports
/// (SIGXFSZ ignored), never a kill half-way.
pub fn sanitize_root() {
    // SAFETY: umask, signal and setrlimit have no memory effects; the limits are plain
    // values, the handler is SIG_IGN.
    unsafe {
        libc::umask(0o022);
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
        for resource in [libc::RLIMIT_FSIZE, libc::RLIMIT_CPU, libc::RLIMIT_AS, libc::RLIMIT_DATA] {
            let mut now = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            let limited = libc::getrlimit(resource, &mut now) == 0 && now.rlim_cur != libc::RLIM_INFINITY;
            if limited && libc::setrlimit(resource, &unlimited) != 0 {
                log::warn!("cannot lift the caller's resource limit {resource}: {}", std::io::Error::last_os_error());
            }
        }
        let files = libc::rlimit { rlim_cur: 1024, rlim_max: 1024 };
        let mut now = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) == 0 && now.rlim_cur < 1024 {
            libc::setrlimit(libc::RLIMIT_NOFILE, &files);
        }
    }
}

/// The root step, once begun, runs to its end: sudo passes on to it every signal its caller
/// sends sudo, so those are blocked (not ignored: the children it starts get the default
/// mask back), and the caller can neither kill it nor stop it between the switch and the
/// record, nor while it holds root's switch lock. Its own deadlines bound it.
pub fn block_callers_signals() {
    const CALLERS: [libc::c_int; 10] = [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGALRM,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
    ];
    // SAFETY: `set` is initialised by sigemptyset before use; pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in CALLERS {
            libc::sigaddset(&mut set, signal);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            log::warn!("cannot block the caller's signals: {}", std::io::Error::last_os_error());
        }
    }
}

/// An OS user, as the password database has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl OsUser {
    pub fn named(name: &str) -> Result<OsUser> {
        let cname = CString::new(name).with_context(|| format!("bad user name {name:?}"))?;
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buffer = vec![0u8; 16384];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; getpwnam_r writes only into `pw` and
        // `buffer`, whose length it is given, and `found` points at `pw` or is null.
        let rc =
            unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pw, buffer.as_mut_ptr().cast(), buffer.len(), &mut found) };
        if rc != 0 || found.is_null() {
            bail!("there is no OS user {name:?}");
        }
        // SAFETY: pw_dir points into `buffer`, NUL-terminated, while `buffer` lives.
        let home = unsafe { std::ffi::CStr::from_ptr(pw.pw_dir) };
        let home = PathBuf::from(std::ffi::OsStr::from_bytes(home.to_bytes()));
        Ok(OsUser { name: name.to_string(), uid: pw.pw_uid, gid: pw.pw_gid, home })
    }
}

/// Opens a file that another user must not have chosen: no symbolic link at the end, a
/// regular file (not a FIFO that would block), owned by one of `owners`, writable by its
/// owner only, at most `max` bytes. The file checked is the file read.
pub fn open_trusted(path: &Path, owners: &[u32], max: u64) -> Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let meta = file.metadata().with_context(|| format!("cannot stat {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    if !owners.contains(&meta.uid()) {
        bail!("{} is owned by uid {}, not by {}", path.display(), meta.uid(), owners_text(owners));
    }
    if meta.mode() & 0o022 != 0 {
        bail!("{} is writable by others than its owner (mode {:o})", path.display(), meta.mode() & 0o7777);
    }
    if meta.len() > max {
        bail!("{} holds {} bytes, more than the {max} it may", path.display(), meta.len());
    }
    Ok(file)
}

fn owners_text(owners: &[u32]) -> String {
    owners.iter().map(|uid| format!("uid {uid}")).collect::<Vec<_>>().join(" or ")
}

/// `path`'s directory and every one above it must be owned by root and writable only by
/// root (a sticky directory such as /tmp is allowed), or another user could replace what
/// root reads there.
pub fn check_ancestors(path: &Path) -> Result<()> {
    let canonical = path.canonicalize().with_context(|| format!("cannot resolve {}", path.display()))?;
    for dir in canonical.ancestors().skip(1) {
        let meta = std::fs::metadata(dir).with_context(|| format!("cannot stat {}", dir.display()))?;
        let sticky = meta.mode() & 0o1000 != 0;
        if meta.uid() != 0 || (meta.mode() & 0o022 != 0 && !sticky) {
            bail!("{} must be owned by root and writable only by root", dir.display());
        }
    }
    Ok(())
}

/// The config file as the root step opens it: root's, writable by root alone (up to 1 MiB),
/// and so is every directory above it.
pub fn open_trusted_config(path: &Path) -> Result<File> {
    let file = open_trusted(path, &[0], 1 << 20)?;
    check_ancestors(path)?;
    Ok(file)
}

/// Reads a config file. As root, the file must be owned by root and writable only by
/// root, and so must every directory above it: otherwise another user could have chosen
/// what root acts on. The file that is checked is the file that is read: it is opened
/// once, without following a final symbolic link.
pub fn read_trusted(path: &Path) -> Result<String> {
    let mut text = String::new();
    let mut file = if is_root() {
        let untrusted = |e: anyhow::Error| anyhow::anyhow!("config {} is not trusted: {e:#}", path.display());
        open_trusted_config(path).map_err(untrusted)?
    } else {
        File::open(path).with_context(|| format!("cannot read config {}", path.display()))?
    };
    file.read_to_string(&mut text).with_context(|| format!("cannot read config {}", path.display()))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As root, refused; as another user (who cannot act as root with it), just read.
    #[test]
    fn a_config_others_can_write_is_refused_as_root() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("repmgr-nat-test-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.join("config.toml");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read_trusted(&file).unwrap(), "x");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let world_writable_file = read_trusted(&file);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let world_writable_dir = read_trusted(&file);
        std::fs::remove_dir_all(&dir).unwrap();
        if is_root() {
            assert!(world_writable_file.unwrap_err().to_string().contains("is not trusted"));
            let err = format!("{:#}", world_writable_dir.unwrap_err());
            assert!(err.contains("must be owned by root and writable only by root"), "{err}");
        } else {
            assert_eq!(world_writable_file.unwrap(), "x");
            assert_eq!(world_writable_dir.unwrap(), "x");
        }
    }

    #[test]
    fn a_trusted_file_is_a_plain_file_of_an_owner_writable_by_it_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("repmgr-nat-test-open-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let me = unsafe { libc::geteuid() };
        let file = dir.join("file");
        std::fs::write(&file, "12345").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(open_trusted(&file, &[me], 100).is_ok());
        let err = |path: &Path, owners: &[u32], max| format!("{:#}", open_trusted(path, owners, max).unwrap_err());
        assert!(err(&file, &[me], 4).contains("holds 5 bytes, more than the 4"));
        assert!(err(&file, &[me + 1], 100).contains("not by uid"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o620)).unwrap();
        assert!(err(&file, &[me], 100).contains("writable by others"));
        std::os::unix::fs::symlink(&file, dir.join("link")).unwrap();
        assert!(err(&dir.join("link"), &[me], 100).contains("cannot open"), "a symbolic link is followed");
        assert!(err(&dir, &[me], 100).contains("not a regular file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn users_come_from_the_password_database() {
        let root = OsUser::named("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(OsUser::named("no-such-user-here").is_err());
    }
}
