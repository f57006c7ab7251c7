//! Passwords from `~/.pgpass` or `$PGPASSFILE`, found the way libpq finds them, since
//! the `postgres` crate does not read the file.
//!
//! Lines are `host:port:database:user:password`; `*` matches anything; `\:` and `\\`
//! escape; lines starting with `#` and empty lines are skipped; the first match wins; a
//! matching line with an empty password ends the search without a password. A file that
//! group or others can access, or that is not a regular file, is ignored with a warning.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::effects::privilege;

/// What a connection is looked up by.
pub struct Key<'a> {
    pub host: &'a str,
    pub port: u16,
    pub dbname: &'a str,
    pub user: &'a str,
}

/// The password for `key` from the password file libpq would read, if any.
pub fn password(key: &Key) -> Option<String> {
    from_file(&default_path()?, key)
}

/// The biggest password file read.
const MAX: u64 = 1 << 20;

fn from_file(path: &Path, key: &Key) -> Option<String> {
    let mut file = match open(path) {
        Ok(Some(file)) => file,
        Ok(None) => return None,
        Err(e) => {
            log::warn!("password file ignored: {e:#}");
            return None;
        }
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    lookup(&String::from_utf8_lossy(&bytes), key)
}

/// The password file, opened once: a regular file that group and others cannot access,
/// of reasonable size. Root reads only a file of root's, never through a symbolic link:
/// a password file another user controls must not choose what root sends to a node.
fn open(path: &Path) -> anyhow::Result<Option<std::fs::File>> {
    let exists = std::fs::symlink_metadata(path).is_ok();
    if !exists {
        return Ok(None);
    }
    let file = if privilege::is_root() {
        privilege::open_trusted(path, &[0], MAX)?
    } else {
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        anyhow::bail!("{} is not a plain file", path.display());
    }
    if meta.mode() & 0o077 != 0 {
        anyhow::bail!("{} has group or world access; permissions should be u=rw (0600) or less", path.display());
    }
    if meta.len() > MAX {
        anyhow::bail!("{} holds more than {MAX} bytes", path.display());
    }
    Ok(Some(file))
}

/// `$PGPASSFILE`, else `.pgpass` in `$HOME`, else in the home directory of the user.
fn default_path() -> Option<PathBuf> {
    if let Some(file) = std::env::var_os("PGPASSFILE").filter(|f| !f.is_empty()) {
        return Some(PathBuf::from(file));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from).or_else(home_of_euid)?;
    Some(home.join(".pgpass"))
}

fn home_of_euid() -> Option<PathBuf> {
    // SAFETY: getpwuid returns a pointer into static storage or null; it is read at
    // once, before any other call could overwrite it, and this program does not call
    // getpwuid from other threads.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() || (*pw).pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr((*pw).pw_dir);
        Some(Path::new(std::ffi::OsStr::from_encoded_bytes_unchecked(dir.to_bytes())).to_path_buf())
    }
}

/// The password of the first line of `text` that matches `key`.
pub fn lookup(text: &str, key: &Key) -> Option<String> {
    let port = key.port.to_string();
    let wanted = [key.host, port.as_str(), key.dbname, key.user];
    for line in text.split('\n') {
        if line.starts_with('#') {
            continue;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            continue;
        }
        let Some(entry) = Entry::parse(line) else { continue };
        if entry.fields.iter().zip(wanted).all(|(field, value)| field.accepts(value)) {
            return (!entry.password.is_empty()).then_some(entry.password);
        }
    }
    None
}

enum Field {
    Any,
    Exactly(String),
}

impl Field {
    fn accepts(&self, value: &str) -> bool {
        match self {
            Field::Any => true,
            Field::Exactly(text) => text == value,
        }
    }
}

struct Entry {
    fields: [Field; 4],
    password: String,
}

impl Entry {
    /// None for a line with fewer than five fields (libpq skips those).
    fn parse(line: &str) -> Option<Entry> {
        let mut chars = line.chars();
        let mut field = || -> Option<Field> {
            let mut value = String::new();
            let mut escaped = false;
            while let Some(c) = chars.next() {
                match c {
                    ':' if !escaped && value == "*" => return Some(Field::Any),
                    ':' => return Some(Field::Exactly(value)),
                    '\\' => {
                        escaped = true;
                        value.push(chars.next()?);
                    }
                    c => value.push(c),
                }
            }
            None
        };
        let fields = [field()?, field()?, field()?, field()?];
        // The password runs to the end of the line or to an unescaped ':' (text after
        // it is ignored); a trailing backslash is kept.
        let mut password = String::new();
        while let Some(c) = chars.next() {
            match c {
                ':' => break,
                '\\' => password.push(chars.next().unwrap_or('\\')),
                c => password.push(c),
            }
        }
        Some(Entry { fields, password })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(host: &'a str, user: &'a str) -> Key<'a> {
        Key { host, port: 5432, dbname: "repmgr", user }
    }

    #[test]
    fn first_matching_line_wins_with_wildcards() {
        let text = "\
# written by hand
10.8.1.1:5432:repmgr:repmgr:one
*:5432:repmgr:repmgr:any-host

*:*:*:barman:b4rm4n
";
        assert_eq!(lookup(text, &key("10.8.1.1", "repmgr")).as_deref(), Some("one"));
        assert_eq!(lookup(text, &key("10.8.2.1", "repmgr")).as_deref(), Some("any-host"));
        assert_eq!(lookup(text, &key("10.8.2.1", "barman")).as_deref(), Some("b4rm4n"));
        assert_eq!(lookup(text, &key("10.8.2.1", "nobody")), None);
        let other_port = Key { port: 6432, ..key("10.8.1.1", "repmgr") };
        assert_eq!(lookup(text, &other_port), None);
    }

    #[test]
    fn escapes_and_odd_lines() {
        let text = "\
short:line
h\\:x:5432:repmgr:repmgr:colon-host
\\*:5432:repmgr:repmgr:literal-star
*:5432:repmgr:we\\\\ird:pa\\:ss\\\\word:ignored:fields
*:5432:repmgr:crlf:secret\r
*:5432:repmgr:trailing:ends-with\\
";
        assert_eq!(lookup(text, &key("h:x", "repmgr")).as_deref(), Some("colon-host"));
        assert_eq!(lookup(text, &key("*", "repmgr")).as_deref(), Some("literal-star"));
        assert_eq!(lookup(text, &key("10.8.1.1", "we\\ird")).as_deref(), Some("pa:ss\\word"));
        assert_eq!(lookup(text, &key("10.8.1.1", "crlf")).as_deref(), Some("secret"));
        assert_eq!(lookup(text, &key("10.8.1.1", "trailing")).as_deref(), Some("ends-with\\"));
        // An escaped star is a literal star, not a wildcard.
        assert_eq!(lookup(text, &key("10.8.9.9", "repmgr")), None);
    }

    #[test]
    fn a_file_others_can_read_is_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("repmgr-nat-test-pgpass-{}", std::process::id()));
        std::fs::write(&path, "*:*:*:repmgr:secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(from_file(&path, &key("10.8.1.1", "repmgr")).as_deref(), Some("secret"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(from_file(&path, &key("10.8.1.1", "repmgr")), None);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(from_file(&path, &key("10.8.1.1", "repmgr")), None);
        assert_eq!(from_file(Path::new("/"), &key("10.8.1.1", "repmgr")), None);
    }

    #[test]
    fn an_empty_password_ends_the_search() {
        let text = "*:*:*:repmgr:\n*:*:*:repmgr:later\n";
        assert_eq!(lookup(text, &key("10.8.1.1", "repmgr")), None);
    }
}
