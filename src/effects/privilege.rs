//! Who is running, and what root may trust. Root acts only on a config that only root
//! can change; `route`, the one command repmgr's OS user may run as root, reads only the
//! config at its fixed path (the caller refuses `--config` for it).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and has no side effects.
    unsafe { libc::geteuid() == 0 }
}

/// Reads a config file. As root, the file must be owned by root and writable only by
/// root, and so must every directory above it (a sticky directory such as /tmp is
/// allowed): otherwise another user could have chosen what root acts on. The file that
/// is checked is the file that is read: it is opened once, without following a final
/// symbolic link.
pub fn read_trusted(path: &Path) -> Result<String> {
    let read = |file: &mut File| -> Result<String> {
        let mut text = String::new();
        file.read_to_string(&mut text).with_context(|| format!("cannot read config {}", path.display()))?;
        Ok(text)
    };
    if !is_root() {
        let mut file = File::open(path).with_context(|| format!("cannot read config {}", path.display()))?;
        return read(&mut file);
    }
    let canonical = path.canonicalize().with_context(|| format!("cannot read config {}", path.display()))?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&canonical)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        bail!("config {} is not trusted: it must be a file owned by root and writable only by root", path.display());
    }
    for dir in canonical.ancestors().skip(1) {
        let meta = std::fs::metadata(dir).with_context(|| format!("cannot stat {}", dir.display()))?;
        let sticky = meta.mode() & 0o1000 != 0;
        if meta.uid() != 0 || (meta.mode() & 0o022 != 0 && !sticky) {
            bail!(
                "config {} is not trusted: {} must be owned by root and writable only by root",
                path.display(),
                dir.display()
            );
        }
    }
    read(&mut file)
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
            let err = world_writable_dir.unwrap_err().to_string();
            assert!(err.contains("must be owned by root and writable only by root"), "{err}");
        } else {
            assert_eq!(world_writable_file.unwrap(), "x");
            assert_eq!(world_writable_dir.unwrap(), "x");
        }
    }
}
