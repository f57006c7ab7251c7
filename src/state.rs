//! The state directory: the recorded primary (written by root when it opens the ports
//! to a node, read at boot when no node answers) and the lock that serialises
//! repmgr-nat runs.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::config::NodeId;

const PRIMARY: &str = "primary";

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

    /// Creates the directory (root only, mode 0755) if it is missing.
    pub fn create(&self) -> Result<()> {
        match fs::create_dir(&self.dir) {
            Ok(()) => fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot set the mode of {}", self.dir.display())),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot create state dir {}", self.dir.display())),
        }
    }

    /// The node recorded by the last switch that opened every port, if any.
    pub fn primary(&self) -> Result<Option<NodeId>> {
        let path = self.dir.join(PRIMARY);
        match fs::read_to_string(&path) {
            Ok(text) => NodeId::parse(text.trim())
                .map(Some)
                .with_context(|| format!("bad recorded primary in {}", path.display())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Records `node` as the primary: written to a temporary file, flushed, and renamed
    /// over the old record, so a crash leaves either the old or the new one.
    pub fn record_primary(&self, node: NodeId) -> Result<()> {
        let path = self.dir.join(PRIMARY);
        let tmp = self.dir.join(format!(".{PRIMARY}.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file = OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp)?;
            file.write_all(format!("{node}\n").as_bytes())?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            anyhow::anyhow!("cannot record primary in {}: {e}", path.display())
        })
    }

    /// Takes the run lock: an exclusive `flock` on the state directory itself, so that
    /// the unprivileged user can take it without being able to write there. Waits up
    /// to `timeout` for another run to finish.
    pub fn lock(&self, timeout: Duration) -> Result<Lock> {
        let file = File::open(&self.dir).with_context(|| {
            format!("cannot open state dir {} (has `repmgr-nat setup` run?)", self.dir.display())
        })?;
        let deadline = Instant::now() + timeout;
        let mut waited = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Lock { _file: file }),
                Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    if !waited {
                        log::info!("waiting for another repmgr-nat run to finish (lock on {})", self.dir.display());
                        waited = true;
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                Err(fs::TryLockError::WouldBlock) => bail!(
                    "another repmgr-nat run held the lock on {} for more than {} s",
                    self.dir.display(),
                    timeout.as_secs()
                ),
                Err(fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("cannot lock {}", self.dir.display()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("repmgr-nat-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn records_and_reads_the_primary() {
        let dir = temp_dir("record");
        let state = StateDir::new(&dir);
        assert_eq!(state.primary().unwrap(), None);
        state.record_primary(NodeId(2)).unwrap();
        assert_eq!(state.primary().unwrap(), Some(NodeId(2)));
        state.record_primary(NodeId(1)).unwrap();
        assert_eq!(fs::read_to_string(dir.join("primary")).unwrap(), "1\n");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "temporary file left behind");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_node() {
        let dir = temp_dir("damaged");
        fs::write(dir.join("primary"), "1; rm -rf /\n").unwrap();
        let err = format!("{:#}", StateDir::new(&dir).primary().unwrap_err());
        assert!(err.starts_with("bad recorded primary in "), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_run_waits_for_the_lock_then_gives_up() {
        let dir = temp_dir("lock");
        let state = StateDir::new(&dir);
        let held = state.lock(Duration::from_secs(1)).unwrap();
        let err = state.lock(Duration::from_millis(50)).err().expect("second lock must fail while held");
        assert!(err.to_string().starts_with("another repmgr-nat run held the lock"), "{err}");
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
