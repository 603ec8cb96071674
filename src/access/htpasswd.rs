//! `auth.htpasswd`: users and bcrypt hashes from an htpasswd file, as Distribution reads it.
//! bcrypt is deliberately slow, so a verified `Authorization` value is remembered for a few
//! minutes (by its SHA-256, never the password) and a 40-layer pull costs one bcrypt run.
//! A user name the file does not hold is checked against a dummy hash of the same cost, so an
//! unknown user is refused as slowly as a wrong password: timing does not tell which names exist.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// How long a verified credential is trusted without running bcrypt again.
const VERIFIED_FOR: Duration = Duration::from_secs(300);
const MAX_REMEMBERED: u64 = 10_000;
/// The dummy hash's cost when the file holds no user (htpasswd -B's default).
const EMPTY_FILE_COST: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    #[error("cannot read the htpasswd file {path} (auth.htpasswd.path): {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("htpasswd file {path} (auth.htpasswd.path), line {line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: &'static str,
    },
}

/// The users of an htpasswd file. Deliberately not `Debug`: it holds password hashes.
pub struct Htpasswd {
    /// User name to bcrypt hash.
    users: HashMap<String, Arc<str>>,
    /// Checked in place of a user's hash when the user is unknown; its cost is the highest of
    /// the file's, and no password is accepted against it.
    unknown_user_hash: Arc<str>,
    verified: moka::sync::Cache<[u8; 32], ()>,
    /// bcrypt checks run so far (unknown users included), so a test can see every refusal
    /// pays one.
    bcrypt_runs: AtomicU64,
}

impl Htpasswd {
    pub fn load(path: &Path) -> Result<Htpasswd, HtpasswdError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| HtpasswdError::Read {
            path: display.clone(),
            source,
        })?;
        let mut users = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let error = |reason| HtpasswdError::Line {
                path: display.clone(),
                line: index + 1,
                reason,
            };
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| error("not a `user:hash` entry"))?;
            if !["$2y$", "$2a$", "$2b$"].iter().any(|p| hash.starts_with(p)) {
                return Err(error(
                    "only bcrypt hashes are accepted (htpasswd -B); MD5, SHA1, crypt and plain text are not",
                ));
            }
            if !bcrypt_cost(hash).is_some_and(|cost| (4..=31).contains(&cost)) {
                return Err(error("the bcrypt cost must be a number from 4 to 31"));
            }
            users.insert(user.to_owned(), Arc::from(hash));
        }
        let cost = users
            .values()
            .filter_map(|hash| bcrypt_cost(hash))
            .max()
            .unwrap_or(EMPTY_FILE_COST);
        // The password is never compared (an unknown user is refused whatever bcrypt says), so
        // any text will do; the random salt bcrypt adds makes the hash unguessable anyway.
        let unknown_user_hash = bcrypt::hash("cistern: no such user", cost)
            .expect("every cost was checked to be one bcrypt accepts");
        Ok(Htpasswd {
            users,
            unknown_user_hash: Arc::from(unknown_user_hash),
            bcrypt_runs: AtomicU64::new(0),
            verified: moka::sync::Cache::builder()
                .max_capacity(MAX_REMEMBERED)
                .time_to_live(VERIFIED_FOR)
                .build(),
        })
    }

    /// Whether an `Authorization: Basic ...` value names a user with the right password.
    pub async fn verify(&self, authorization: &[u8]) -> bool {
        let key: [u8; 32] = Sha256::digest(authorization).into();
        if self.verified.contains_key(&key) {
            return true;
        }
        let Some((user, password)) = basic_credentials(authorization) else {
            return false;
        };
        let (hash, known) = match self.users.get(&user) {
            Some(hash) => (hash.clone(), true),
            None => (self.unknown_user_hash.clone(), false),
        };
        self.bcrypt_runs.fetch_add(1, Ordering::Relaxed);
        // bcrypt takes tens of milliseconds of CPU: off the async workers.
        let verified = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        let matches = known && verified;
        if matches {
            self.verified.insert(key, ());
        }
        matches
    }
}

/// The cost of a `$2y$NN$...` hash, None when it has none.
fn bcrypt_cost(hash: &str) -> Option<u32> {
    hash.split('$').nth(2)?.parse().ok()
}

/// (user, password) from `Basic base64(user:password)`.
fn basic_credentials(authorization: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(authorization).ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> Vec<u8> {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}").into_bytes()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[tokio::test]
    async fn verifies_bcrypt_entries_and_remembers_a_verified_credential() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let f = file(&format!("# users\nci:{hash}\n"));
        let htpasswd = Htpasswd::load(f.path()).unwrap();
        assert!(htpasswd.verify(&basic("ci", "s3cret")).await);
        assert!(!htpasswd.verify(&basic("ci", "wrong")).await);
        assert!(!htpasswd.verify(&basic("nobody", "s3cret")).await);
        assert!(!htpasswd.verify(b"Bearer abc").await);
        assert!(!htpasswd.verify(b"Basic !!!").await);

        // Remembered: a user removed from the map still passes, so bcrypt did not run again.
        let mut htpasswd = htpasswd;
        htpasswd.users.clear();
        assert!(htpasswd.verify(&basic("ci", "s3cret")).await);
        assert!(!htpasswd.verify(&basic("ci", "wrong")).await);
    }

    #[tokio::test]
    async fn an_unknown_user_costs_one_bcrypt_run_at_the_files_cost() {
        let f = file(&format!(
            "ci:{}\nold:{}\n",
            bcrypt::hash("s3cret", 6).unwrap(),
            bcrypt::hash("x", 4).unwrap()
        ));
        let htpasswd = Htpasswd::load(f.path()).unwrap();
        assert_eq!(bcrypt_cost(&htpasswd.unknown_user_hash), Some(6));
        assert!(!htpasswd.verify(&basic("nobody", "s3cret")).await);
        assert_eq!(htpasswd.bcrypt_runs.load(Ordering::Relaxed), 1);
        // Not even the dummy's own password lets an unknown user in.
        assert!(
            !htpasswd
                .verify(&basic("nobody", "cistern: no such user"))
                .await
        );
        assert!(!htpasswd.verify(&basic("ci", "wrong")).await);
        assert_eq!(htpasswd.bcrypt_runs.load(Ordering::Relaxed), 3);

        let empty = file("# nobody yet\n");
        let htpasswd = Htpasswd::load(empty.path()).unwrap();
        assert_eq!(
            bcrypt_cost(&htpasswd.unknown_user_hash),
            Some(EMPTY_FILE_COST)
        );
    }

    #[test]
    fn refuses_other_hash_formats_naming_the_line_never_the_hash() {
        for entry in [
            "ci:$apr1$abc$def",
            "ci:{SHA}abcdef=",
            "ci:plaintext",
            "no colon",
            "ci:$2y$99$abcdef",
        ] {
            let f = file(&format!("ok:{}\n{entry}\n", bcrypt::hash("x", 4).unwrap()));
            let error = Htpasswd::load(f.path()).err().unwrap().to_string();
            assert!(error.contains("line 2"), "{error}");
            assert!(error.contains("auth.htpasswd.path"), "{error}");
            assert!(
                !error.contains("abcdef") && !error.contains("plaintext"),
                "{error}"
            );
        }
        let missing = Htpasswd::load(Path::new("/nonexistent/htpasswd"))
            .err()
            .unwrap();
        assert!(missing.to_string().contains("/nonexistent/htpasswd"));
    }
}
