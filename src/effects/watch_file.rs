//! watch.json in `watch.dir` (its format is `core::watch_json`): read by every command
//! (`status`, `can-serve`, the adapters of an event), written by `watch` after each pass.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

use crate::core::config::Config;
use crate::core::watch_json::WatchReport;
use crate::effects::privilege::{self, OsUser};

/// What `watch` wrote after its last pass, if it can be read: a regular file, never
/// followed through a symbolic link, never waited on, at most `REPORT_MAX` bytes (root
/// reads it too, and watch.dir is repmgr's OS user's); as root, only a file of that
/// user's, who writes it.
pub fn read(cfg: &Config) -> Option<WatchReport> {
    let owner = match privilege::is_root() {
        true => Some(OsUser::named(&cfg.repmgr_user).map_err(|e| log::warn!("watch.json ignored: {e:#}")).ok()?.uid),
        false => None,
    };
    read_from(&cfg.watch.dir.join(WatchReport::FILE), owner)
}

/// The report at `path`, if it is a regular file (of `owner`, when given).
fn read_from(path: &Path, owner: Option<u32>) -> Option<WatchReport> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    const REPORT_MAX: u64 = 1 << 20;
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        say_once(format!("{} is not a regular file: ignored", path.display()));
        return None;
    }
    if let Some(uid) = owner.filter(|uid| *uid != meta.uid()) {
        say_once(format!(
            "{} is owned by uid {}, not by repmgr's OS user (uid {uid}): ignored",
            path.display(),
            meta.uid()
        ));
        return None;
    }
    let mut text = String::new();
    file.take(REPORT_MAX).read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).map_err(|e| say_once(format!("bad {}: {e}", path.display()))).ok()
}

/// Why watch.json was ignored: a warning the first time in a process, debug after. A
/// command reads it more than once (status, and the adapters it builds), and the reason
/// stays the same; each run of `can-serve` (every second under keepalived) is a process
/// of its own and says it once, since its own line ("watch has written nothing") would
/// be wrong without it, and keepalived keeps no script's output unless asked to.
fn say_once(line: String) {
    static SAID: AtomicBool = AtomicBool::new(false);
    match SAID.swap(true, Ordering::Relaxed) {
        false => log::warn!("{line}"),
        true => log::debug!("{line}"),
    }
}

/// Writes `report` into `dir`: a new file renamed over the old one, so a reader sees the
/// one or the other, whole.
pub fn write(dir: &Path, report: &WatchReport) -> Result<()> {
    let path = dir.join(WatchReport::FILE);
    let text = serde_json::to_string(report).unwrap_or_default();
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// Whether the process `pid` runs (a process of another user's counts: it exists).
pub fn runs(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill with signal 0 only checks that the process exists and may be signalled.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_read_only_from_a_regular_file_of_its_owner() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("repmgr-nat-test-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(WatchReport::FILE);
        let text = r#"{"version":1,"pid":1,"started_ms":1,"pass":3,"passed_ms":1,"interval_ms":250,"hurry":false,
            "primary":"node 1","rules":"node 1 ports all","nodes":"1: primary","unanswered":[2],"receive_wal":null,
            "barman_confirmed":null,"last_action":null,"misrouted_since_ms":null}"#;
        std::fs::write(&path, text).unwrap();
        let mine = std::fs::metadata(&path).unwrap().uid();
        assert_eq!(read_from(&path, None).map(|r| r.pass), Some(3));
        assert_eq!(read_from(&path, Some(mine)).map(|r| r.pass), Some(3));
        assert!(read_from(&path, Some(mine + 1)).is_none(), "a file of another user's is read");
        // what watch writes reads back
        let written = WatchReport { pass: 4, ..read_from(&path, None).unwrap() };
        write(&dir, &written).unwrap();
        assert_eq!(read_from(&path, None), Some(written));
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        assert!(read_from(&path, None).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
