//! Guards that put the lab back when they go, also when a test fails half-way: a fault
//! undone, a file restored.

use std::path::{Path, PathBuf};

use super::Lab;

impl Lab {
    /// `lab.sh DO NODE` now, `lab.sh UNDO NODE` when the guard goes.
    #[track_caller]
    pub fn fault(&self, fault: &str, undo: &str, node: &str) -> Undo<'_> {
        self.ok(&[fault, node]);
        self.undo(&[undo, node])
    }

    /// `lab.sh ARGS...` when the guard goes: what puts back a change the test makes next.
    pub fn undo<S: AsRef<str>>(&self, args: &[S]) -> Undo<'_> {
        Undo { lab: self, args: args.iter().map(|a| a.as_ref().to_string()).collect() }
    }
}

/// Undoes a fault (`lab.sh thaw NODE`, `lab.sh heal NODE`, ...) or a change when dropped,
/// also when a test fails half-way.
pub struct Undo<'a> {
    lab: &'a Lab,
    args: Vec<String>,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let run = self.lab.lab(&args);
        if run.code != 0 {
            eprintln!("lab.sh {args:?} failed: {}", run.stderr);
        }
    }
}

/// Puts a file back as it was when the guard was made (or removes it), also when a test
/// fails half-way.
pub struct Restore {
    path: PathBuf,
    saved: Option<(Vec<u8>, std::fs::Metadata)>,
}

impl Restore {
    pub fn file(path: impl AsRef<Path>) -> Restore {
        let path = path.as_ref().to_path_buf();
        let saved = std::fs::read(&path).ok().map(|content| (content, std::fs::metadata(&path).expect("metadata")));
        Restore { path, saved }
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let _ = std::fs::remove_file(&self.path);
        if let Some((content, meta)) = &self.saved {
            std::fs::write(&self.path, content).expect("cannot restore a file");
            std::os::unix::fs::chown(&self.path, Some(meta.uid()), Some(meta.gid())).expect("chown");
            std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(meta.mode())).expect("chmod");
        }
    }
}
