//! The state directory: the record of the route root last applied (read at boot when no
//! node answers, and by `status`), and the locks that serialise repmgr-nat runs.
//!
//! Only root writes here. Root refuses a directory anyone else could write to, and never
//! follows a symbolic link inside it.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::core::config::Config;
use crate::core::ruleset::Record;
use crate::effects::privilege;

/// The route root last applied: "<node id> <none|barman|all> <timeline>".
const RECORD: &str = "route";
/// The run lock: root's, readable by the group of repmgr's OS user and nobody else, so
/// that no other local user can take it and stall every event.
const RUN_LOCK: &str = "run.lock";
/// Taken by root around each switch, beside the run lock its caller holds.
const ROUTE_LOCK: &str = "route.lock";
/// Left by `teardown`, removed by `setup`: while it is there, no switch creates anything.
const TORN_DOWN: &str = "torn-down";

#[derive(Clone)]
pub struct StateDir {
    dir: PathBuf,
    /// Who must own the directory and what is in it: root (another user, in unit tests).
    owner: u32,
}

/// Held while a run reads the cluster and changes rules and slots; released on drop.
#[must_use]
pub struct Lock {
    _file: Option<File>,
}

/// The run lock as `watch` takes it: never waiting (the seam its tests hold).
pub trait RunLock {
    /// The lock if no other run holds it; an error when it cannot be taken at all.
    fn try_lock(&self) -> Result<Option<Lock>>;
}

impl RunLock for StateDir {
    fn try_lock(&self) -> Result<Option<Lock>> {
        StateDir::try_lock(self)
    }
}

/// A dry run's run lock: always granted, holding nothing (a dry run changes nothing, and
/// must not keep the runs that act waiting).
pub struct NoRunLock;

impl RunLock for NoRunLock {
    fn try_lock(&self) -> Result<Option<Lock>> {
        Ok(Some(Lock { _file: None }))
    }
}

impl StateDir {
    pub fn new(dir: &Path) -> StateDir {
        StateDir { dir: dir.to_path_buf(), owner: 0 }
    }

    /// Creates the directory (mode 0755, and any missing above it: a named instance's is
    /// inside the default's) if it is missing, then checks that it and every directory
    /// above it are root's.
    pub fn create(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        if let Some(parent) = self.dir.parent().filter(|p| !p.exists()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        match fs::create_dir(&self.dir) {
            Ok(()) => fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot set the mode of {}", self.dir.display()))?,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("cannot create state dir {}", self.dir.display())),
        }
        self.check_trusted()
    }

    /// The directory, and every one above it, must be root's and writable by root only, or
    /// a record planted there could steer every decision (and root's NAT). Checked by
    /// everyone who reads it.
    fn check_trusted(&self) -> Result<()> {
        let untrusted = |why: String| anyhow!("state dir {} is not trusted: {why}", self.dir.display());
        let meta = fs::symlink_metadata(&self.dir).with_context(|| format!("cannot stat {}", self.dir.display()))?;
        if !meta.is_dir() || meta.uid() != self.owner || meta.mode() & 0o022 != 0 {
            return Err(untrusted("it must be a directory owned by root and writable only by root".into()));
        }
        privilege::check_ancestors(&self.dir).map_err(|e| untrusted(format!("{e:#}")))
    }

    /// The route root last applied, if any: a file of root's, which nobody else can write.
    pub fn recorded(&self, cfg: &Config) -> Result<Option<Record>> {
        let path = self.dir.join(RECORD);
        if fs::symlink_metadata(&path).is_err() {
            return Ok(None);
        }
        self.check_trusted()?;
        let mut file =
            privilege::open_trusted(&path, &[self.owner], 4096).context("the recorded route is not trusted")?;
        let mut text = String::new();
        file.read_to_string(&mut text).with_context(|| format!("cannot read {}", path.display()))?;
        Record::parse(cfg, &text).map(Some).with_context(|| format!("bad record in {}", path.display()))
    }

    /// Records `route`: written to a new temporary file, flushed, and renamed over the old
    /// record, so a crash leaves either the old or the new one. The caller holds
    /// `route_lock`, which made sure the directory exists and is root's.
    pub fn record(&self, record: Record) -> Result<()> {
        let path = self.dir.join(RECORD);
        let tmp = self.dir.join(format!(".{RECORD}.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file = OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp)?;
            file.write_all(record.render().as_bytes())?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            anyhow::anyhow!("cannot record the route in {}: {e}", path.display())
        })
    }

    /// As root: the run lock file, `root:<group> 0640`, made if missing and put right if
    /// not (`setup` does it).
    pub fn make_run_lock(&self, group: u32) -> Result<()> {
        let path = self.dir.join(RUN_LOCK);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            bail!("{} is not a regular file", path.display());
        }
        std::os::unix::fs::fchown(&file, Some(self.owner), Some(group))
            .with_context(|| format!("cannot chown {}", path.display()))?;
        file.set_permissions(fs::Permissions::from_mode(0o640))
            .with_context(|| format!("cannot chmod {}", path.display()))
    }

    /// The run lock: an exclusive `flock` on a file only root and repmgr's OS user's group
    /// can open. Waits up to `timeout`, saying who holds it.
    pub fn lock(&self, timeout: Duration) -> Result<Lock> {
        let (file, path) = self.open_run_lock()?;
        wait_for_lock(file, &path, timeout)
    }

    /// For `check`: the directory is root's and the run lock opens (it is not taken).
    pub fn check(&self) -> Result<()> {
        self.check_trusted()?;
        self.open_run_lock().map(drop)
    }

    /// The run lock if no other run holds it (`watch` never waits: the holder does the work).
    pub fn try_lock(&self) -> Result<Option<Lock>> {
        let (file, path) = self.open_run_lock()?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Lock { _file: Some(file) })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
        }
    }

    fn open_run_lock(&self) -> Result<(File, PathBuf)> {
        let path = self.dir.join(RUN_LOCK);
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("cannot open {} (has `repmgr-nat setup` run?)", path.display()))?;
        let meta = file.metadata()?;
        if !meta.is_file() || meta.uid() != self.owner || meta.mode() & 0o006 != 0 {
            bail!(
                "{} must be root's and closed to others (mode 0640; `repmgr-nat setup` makes it so): anyone could hold \
                 it",
                path.display()
            );
        }
        Ok((file, path))
    }

    /// As root, under `route_lock`: marks the rules torn down, so that no switch after
    /// this one puts them back.
    pub fn mark_torn_down(&self) -> Result<()> {
        let path = self.dir.join(TORN_DOWN);
        let text = "repmgr-nat teardown removed the NAT chains: no switch until `repmgr-nat setup`\n";
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// As root, under `route_lock`: lifts teardown's mark; true if there was one.
    pub fn unmark_torn_down(&self) -> Result<bool> {
        let path = self.dir.join(TORN_DOWN);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }

    /// Whether root recorded a route here (whatever it says).
    pub fn has_record(&self) -> bool {
        fs::symlink_metadata(self.dir.join(RECORD)).is_ok()
    }

    /// Whether `teardown` ran since the last `setup`.
    pub fn torn_down(&self) -> bool {
        fs::symlink_metadata(self.dir.join(TORN_DOWN)).is_ok()
    }

    /// Root's lock around one switch: `route` runs under the run lock of the event that
    /// called it, so it cannot take that one; this keeps two switches by hand apart.
    pub fn route_lock(&self, timeout: Duration) -> Result<Lock> {
        self.create()?;
        let path = self.dir.join(ROUTE_LOCK);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let meta = file.metadata()?;
        if !meta.is_file() || meta.uid() != self.owner || meta.mode() & 0o077 != 0 {
            bail!("{} must be root's and closed to others (mode 0600): anyone could hold it", path.display());
        }
        wait_for_lock(file, &path, timeout)
    }
}

fn wait_for_lock(file: File, path: &Path, timeout: Duration) -> Result<Lock> {
    let deadline = Instant::now() + timeout;
    let mut waited = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Lock { _file: Some(file) }),
            Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                if !waited {
                    log::info!("waiting for {} to finish (it holds {})", holder(&file), path.display());
                    waited = true;
                }
                thread::sleep(Duration::from_millis(10));
            }
            Err(fs::TryLockError::WouldBlock) => {
                bail!("{} held the lock on {} for more than {} s", holder(&file), path.display(), timeout.as_secs())
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
    }
}

/// Who holds a lock on `file`, from /proc/locks (which names the holder's pid and the
/// file's inode) and the holder's command line.
fn holder(file: &File) -> String {
    let Ok(meta) = file.metadata() else { return "another process".into() };
    let locks = fs::read_to_string("/proc/locks").unwrap_or_default();
    match holder_pid(&locks, meta.ino()) {
        Some(pid) => {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            format!("pid {pid} ({})", if args.is_empty() { "gone".into() } else { args.join(" ") })
        }
        None => "another process".into(),
    }
}

/// `1: FLOCK  ADVISORY  WRITE 1234 08:01:131077 0 EOF` -> 1234, for the inode given.
fn holder_pid(locks: &str, inode: u64) -> Option<u32> {
    locks.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [_, "FLOCK", _, _, pid, file, ..] = words[..] else { return None };
        let ino: u64 = file.rsplit(':').next()?.parse().ok()?;
        (ino == inode).then(|| pid.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::tests::{example, node};
    use crate::core::ruleset::{Open, Route};

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("repmgr-nat-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    /// A state directory of whoever runs the tests (root's, in production).
    fn state_of(dir: &Path) -> StateDir {
        // SAFETY: geteuid and getegid cannot fail.
        let state = StateDir { dir: dir.to_path_buf(), owner: unsafe { libc::geteuid() } };
        state.make_run_lock(unsafe { libc::getegid() }).unwrap();
        state
    }

    #[test]
    fn records_and_reads_the_route() {
        let dir = temp_dir("record");
        let (state, cfg) = (state_of(&dir), example());
        assert_eq!(state.recorded(&cfg).unwrap(), None);
        let barman = Record { route: Route::new(node(2), Open::Barman), timeline: 2 };
        state.record(barman).unwrap();
        assert_eq!(state.recorded(&cfg).unwrap(), Some(barman));
        state.record(Record { route: Route::new(node(1), Open::All), timeline: 3 }).unwrap();
        assert_eq!(fs::read_to_string(dir.join("route")).unwrap(), "1 all 3\n");
        // a record from before timelines were recorded
        fs::write(dir.join("route"), "2 all\n").unwrap();
        assert_eq!(state.recorded(&cfg).unwrap(), Some(Record { route: Route::new(node(2), Open::All), timeline: 0 }));
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2, "temporary file left behind (the record and run.lock)");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_route() {
        let dir = temp_dir("damaged");
        for bad in ["1; rm -rf /\n", "1\n", "1 all 2 extra\n", "x all\n", "2 everything\n", "7 all 1\n", "1 all -1\n"] {
            fs::write(dir.join("route"), bad).unwrap();
            let err = format!("{:#}", state_of(&dir).recorded(&example()).unwrap_err());
            assert!(err.starts_with("bad record in "), "{bad:?}: {err}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symlinked_record_is_not_followed() {
        let dir = temp_dir("symlink");
        fs::write(dir.join("elsewhere"), "1 all\n").unwrap();
        std::os::unix::fs::symlink(dir.join("elsewhere"), dir.join("route")).unwrap();
        assert!(state_of(&dir).recorded(&example()).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_run_waits_for_the_lock_then_gives_up() {
        let dir = temp_dir("lock");
        let state = state_of(&dir);
        let held = state.lock(Duration::from_secs(1)).unwrap();
        let err = state.lock(Duration::from_millis(50)).err().expect("second lock must fail while held");
        let me = std::process::id();
        assert!(err.to_string().starts_with(&format!("pid {me} (")), "the holder is named: {err}");
        assert!(err.to_string().contains("held the lock on"), "{err}");
        // root's switch lock is a different lock: `route` runs under its caller's lock
        let _route = state.route_lock(Duration::from_millis(50)).unwrap();
        drop(held);
        let _again = state.lock(Duration::from_millis(50)).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_run_lock_is_closed_to_other_users() {
        let dir = temp_dir("lock-mode");
        let state = state_of(&dir);
        let mode = |path: PathBuf| fs::metadata(path).unwrap().mode() & 0o777;
        assert_eq!(mode(dir.join("run.lock")), 0o640);
        fs::set_permissions(dir.join("run.lock"), fs::Permissions::from_mode(0o644)).unwrap();
        let err = state.lock(Duration::from_millis(10)).err().unwrap();
        assert!(err.to_string().contains("anyone could hold it"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn finds_who_holds_a_lock() {
        let locks = "1: POSIX  ADVISORY  WRITE 77 08:01:999 0 EOF\n2: FLOCK  ADVISORY  WRITE 1234 00:1f:131077 0 EOF\n";
        assert_eq!(holder_pid(locks, 131077), Some(1234));
        assert_eq!(holder_pid(locks, 999), None, "only flock locks");
    }

    #[test]
    fn missing_state_dir_says_what_to_run() {
        let state = StateDir::new(Path::new("/nonexistent/repmgr-nat"));
        let err = state.lock(Duration::from_millis(10)).err().unwrap();
        assert!(err.to_string().contains("has `repmgr-nat setup` run?"), "{err}");
    }
}
