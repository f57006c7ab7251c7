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

use anyhow::{Context, Result, bail};

use crate::core::config::Config;
use crate::core::ruleset::Record;

/// The route root last applied: "<node id> <none|barman|all> <timeline>".
const RECORD: &str = "route";
/// Taken by root around each switch, beside the run lock its caller holds.
const ROUTE_LOCK: &str = "route.lock";

pub struct StateDir {
    dir: PathBuf,
}

/// Held while a run reads the cluster and changes rules and slots; released on drop.
#[must_use]
pub struct Lock {
    _file: File,
}

impl StateDir {
    pub fn new(dir: &Path) -> StateDir {
        StateDir { dir: dir.to_path_buf() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Creates the directory (mode 0755) if it is missing; as root, checks it is root's.
    pub fn create(&self) -> Result<()> {
        match fs::create_dir(&self.dir) {
            Ok(()) => fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot set the mode of {}", self.dir.display()))?,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("cannot create state dir {}", self.dir.display())),
        }
        self.check_trusted()
    }

    /// As root: the directory must be root's and writable by root only, or a record
    /// planted there could steer root's NAT.
    fn check_trusted(&self) -> Result<()> {
        if !crate::effects::privilege::is_root() {
            return Ok(());
        }
        let meta = fs::symlink_metadata(&self.dir).with_context(|| format!("cannot stat {}", self.dir.display()))?;
        if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            bail!("state dir {} must be a directory owned by root and writable only by root", self.dir.display());
        }
        Ok(())
    }

    /// The route root last applied, if any.
    pub fn recorded(&self, cfg: &Config) -> Result<Option<Record>> {
        let path = self.dir.join(RECORD);
        let mut text = String::new();
        match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path) {
            Ok(mut file) => {
                self.check_trusted()?;
                file.read_to_string(&mut text).with_context(|| format!("cannot read {}", path.display()))?;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
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

    /// The run lock: an exclusive `flock` on the state directory itself, which repmgr's
    /// OS user can take without being able to write there. Waits up to `timeout`.
    pub fn lock(&self, timeout: Duration) -> Result<Lock> {
        let file = File::open(&self.dir)
            .with_context(|| format!("cannot open state dir {} (has `repmgr-nat setup` run?)", self.dir.display()))?;
        wait_for_lock(file, &self.dir, timeout)
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
        wait_for_lock(file, &path, timeout)
    }
}

fn wait_for_lock(file: File, path: &Path, timeout: Duration) -> Result<Lock> {
    let deadline = Instant::now() + timeout;
    let mut waited = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Lock { _file: file }),
            Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                if !waited {
                    log::info!("waiting for another repmgr-nat run to finish (lock on {})", path.display());
                    waited = true;
                }
                thread::sleep(Duration::from_millis(10));
            }
            Err(fs::TryLockError::WouldBlock) => bail!(
                "another repmgr-nat run held the lock on {} for more than {} s",
                path.display(),
                timeout.as_secs()
            ),
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
    }
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

    #[test]
    fn records_and_reads_the_route() {
        let dir = temp_dir("record");
        let (state, cfg) = (StateDir::new(&dir), example());
        assert_eq!(state.recorded(&cfg).unwrap(), None);
        let barman = Record { route: Route::new(node(2), Open::Barman), timeline: 2 };
        state.record(barman).unwrap();
        assert_eq!(state.recorded(&cfg).unwrap(), Some(barman));
        state.record(Record { route: Route::new(node(1), Open::All), timeline: 3 }).unwrap();
        assert_eq!(fs::read_to_string(dir.join("route")).unwrap(), "1 all 3\n");
        // a record from before timelines were recorded
        fs::write(dir.join("route"), "2 all\n").unwrap();
        assert_eq!(state.recorded(&cfg).unwrap(), Some(Record { route: Route::new(node(2), Open::All), timeline: 0 }));
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "temporary file left behind");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_route() {
        let dir = temp_dir("damaged");
        for bad in ["1; rm -rf /\n", "1\n", "1 all 2 extra\n", "x all\n", "2 everything\n", "7 all 1\n", "1 all -1\n"] {
            fs::write(dir.join("route"), bad).unwrap();
            let err = format!("{:#}", StateDir::new(&dir).recorded(&example()).unwrap_err());
            assert!(err.starts_with("bad record in "), "{bad:?}: {err}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symlinked_record_is_not_followed() {
        let dir = temp_dir("symlink");
        fs::write(dir.join("elsewhere"), "1 all\n").unwrap();
        std::os::unix::fs::symlink(dir.join("elsewhere"), dir.join("route")).unwrap();
        assert!(StateDir::new(&dir).recorded(&example()).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_run_waits_for_the_lock_then_gives_up() {
        let dir = temp_dir("lock");
        let state = StateDir::new(&dir);
        let held = state.lock(Duration::from_secs(1)).unwrap();
        let err = state.lock(Duration::from_millis(50)).err().expect("second lock must fail while held");
        assert!(err.to_string().starts_with("another repmgr-nat run held the lock"), "{err}");
        // root's switch lock is a different lock: `route` runs under its caller's lock
        let _route = state.route_lock(Duration::from_millis(50)).unwrap();
        drop(held);
        let _again = state.lock(Duration::from_millis(50)).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_state_dir_says_what_to_run() {
        let state = StateDir::new(Path::new("/nonexistent/repmgr-nat"));
        let err = state.lock(Duration::from_millis(10)).err().unwrap();
        assert!(err.to_string().contains("has `repmgr-nat setup` run?"), "{err}");
    }
}
