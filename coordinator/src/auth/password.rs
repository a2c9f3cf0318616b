//! The password file: one `user:hash` line per user, bcrypt (`$2b$...`) or
//! argon2 (`$argon2id$...`) hashes, `#` comments. `weft passwd --file FILE
//! USER` adds or replaces an entry ([`set_password`]).

use std::collections::HashMap;
use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// Users and their password hashes. `Debug` shows only the user names.
pub struct PasswordFile {
    users: HashMap<String, String>,
}

impl std::fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut users: Vec<&String> = self.users.keys().collect();
        users.sort();
        f.debug_struct("PasswordFile")
            .field("users", &users)
            .finish()
    }
}

fn is_bcrypt(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2x$", "$2y$"]
        .iter()
        .any(|p| hash.starts_with(p))
}

fn is_argon2(hash: &str) -> bool {
    ["$argon2id$", "$argon2i$", "$argon2d$"]
        .iter()
        .any(|p| hash.starts_with(p))
}

impl PasswordFile {
    /// Reads `path`; an error names the file and line (never a hash).
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the password file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("password file {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("line {n} is not `user:hash`"))?;
            if user.is_empty() {
                return Err(format!("line {n} has an empty user name"));
            }
            if !is_bcrypt(hash) && !is_argon2(hash) {
                return Err(format!(
                    "line {n} (user {user}): the hash is neither bcrypt ($2b$...) nor argon2 \
                     ($argon2id$...); create entries with `weft passwd --file FILE {user}`"
                ));
            }
            if is_argon2(hash) {
                PasswordHash::new(hash)
                    .map_err(|e| format!("line {n} (user {user}): malformed argon2 hash: {e}"))?;
            }
            if users.insert(user.to_string(), hash.to_string()).is_some() {
                return Err(format!("line {n}: user {user} appears twice"));
            }
        }
        Ok(Self { users })
    }

    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Whether `password` is `user`'s (false for an unknown user). Slow on
    /// purpose (the hash's cost): call it off the async runtime.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.users.get(user) else {
            return false;
        };
        if is_bcrypt(hash) {
            bcrypt::verify(password, hash).unwrap_or(false)
        } else {
            PasswordHash::new(hash).is_ok_and(|parsed| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        }
    }
}

/// An argon2id hash of `password` with a random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| "the system's random number generator failed".to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Adds `user` to the password file at `path` (created if missing) or
/// replaces their entry, keeping every other line. The file is replaced
/// atomically and readable by its owner only.
pub fn set_password(path: &Path, user: &str, password: &str) -> Result<(), String> {
    if user.is_empty() || user.contains(':') || user.chars().any(char::is_whitespace) {
        return Err(format!(
            "\"{user}\" is not a usable user name (no colon, no spaces, not empty)"
        ));
    }
    if password.is_empty() {
        return Err("the password is empty (it is read from standard input)".to_string());
    }
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => {
            PasswordFile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            text
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let entry = format!("{user}:{}", hash_password(password)?);
    let mut replaced = false;
    let mut lines: Vec<String> = existing
        .lines()
        .map(|line| match line.trim().split_once(':') {
            Some((u, _)) if u == user && !line.trim().starts_with('#') => {
                replaced = true;
                entry.clone()
            }
            _ => line.to_string(),
        })
        .collect();
    if !replaced {
        lines.push(entry);
    }
    let mut text = lines.join("\n");
    text.push('\n');
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("passwords"),
        std::process::id()
    ));
    write_private(&tmp, text.as_bytes())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write {}: {e}", path.display())
        })
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_password_adds_replaces_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwords");
        set_password(&path, "alice", "s3cret").unwrap();
        set_password(&path, "bob", "hunter2").unwrap();
        let file = PasswordFile::load(&path).unwrap();
        assert!(file.verify("alice", "s3cret"));
        assert!(!file.verify("alice", "hunter2"));
        assert!(file.verify("bob", "hunter2"));
        assert!(!file.verify("carol", "s3cret"));
        set_password(&path, "alice", "new").unwrap();
        let file = PasswordFile::load(&path).unwrap();
        assert!(file.verify("alice", "new") && !file.verify("alice", "s3cret"));
        assert!(file.verify("bob", "hunter2"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(!text.contains("s3cret") && !text.contains("hunter2"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn bcrypt_hashes_are_accepted() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let file = PasswordFile::parse(&format!("# users\n\ncarol:{hash}\n")).unwrap();
        assert!(file.verify("carol", "pw"));
        assert!(!file.verify("carol", "PW"));
    }

    #[test]
    fn bad_lines_name_the_line_and_never_the_hash() {
        let err = PasswordFile::parse("alice:plaintext-password\n").unwrap_err();
        assert!(err.contains("line 1") && err.contains("alice"), "{err}");
        assert!(!err.contains("plaintext-password"), "{err}");
        assert!(PasswordFile::parse("no colon here").is_err());
        let h = hash_password("x").unwrap();
        let err = PasswordFile::parse(&format!("a:{h}\na:{h}\n")).unwrap_err();
        assert!(err.contains("twice"), "{err}");
        assert!(set_password(Path::new("/nonexistent/dir/p"), "a", "b").is_err());
        assert!(set_password(Path::new("p"), "a:b", "b").is_err());
        assert!(format!("{:?}", PasswordFile::parse(&format!("a:{h}")).unwrap()).contains("\"a\""));
    }
}
