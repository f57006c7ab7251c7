//! Who is running, and what root may trust. Root acts only on a config that only root
//! can change; `route`, the one command repmgr's OS user may run as root, reads only
//! the config at its fixed path.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::config::DEFAULT_PATH;
use crate::exit::BadInput;

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and has no side effects.
    unsafe { libc::geteuid() == 0 }
}

fn real_uid() -> u32 {
    // SAFETY: getuid cannot fail and has no side effects.
    unsafe { libc::getuid() }
}

/// True when another user's request runs with root's rights: through sudo, or with a
/// real user id that is not root's.
pub fn on_behalf_of_another_user() -> bool {
    std::env::var_os("SUDO_UID").is_some() || std::env::var_os("SUDO_USER").is_some() || real_uid() != 0
}

/// The config `route` may read: the fixed path, unless root itself, by hand, names
/// another one.
pub fn route_config(requested: Option<&Path>) -> Result<PathBuf> {
    if !is_root() {
        bail!("route changes the nat table and must run as root: sudo -n repmgr-nat route ...");
    }
    match requested {
        Some(path) if on_behalf_of_another_user() => Err(BadInput(format!(
            "route reads only {DEFAULT_PATH} when run through sudo; --config {} and REPMGR_NAT_CONFIG are refused",
            path.display()
        ))
        .into()),
        Some(path) => Ok(path.to_path_buf()),
        None => Ok(PathBuf::from(DEFAULT_PATH)),
    }
}

/// Refuses a config that anyone but root could have written, when running as root.
pub fn check_trusted(path: &Path) -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let canonical = path.canonicalize().with_context(|| format!("cannot read config {}", path.display()))?;
    let untrusted = |p: &Path| -> Result<bool> {
        let meta = std::fs::metadata(p).with_context(|| format!("cannot stat {}", p.display()))?;
        let sticky_dir = meta.is_dir() && meta.mode() & 0o1000 != 0;
        Ok(meta.uid() != 0 || (meta.mode() & 0o022 != 0 && !sticky_dir))
    };
    for p in canonical.ancestors() {
        if untrusted(p)? {
            return Err(BadInput(format!(
                "config {} is not trusted: {} must be owned by root and writable only by root",
                path.display(),
                p.display()
            ))
            .into());
        }
    }
    Ok(())
}
