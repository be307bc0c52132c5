//! The password file: `username:argon2-PHC-string` lines.

use super::verified::Verified;
use super::{content_lines, AuthError};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use std::collections::HashMap;
use std::path::Path;

/// Hashes a password into an argon2id PHC string for the password file.
///
/// Uses argon2's default (OWASP-recommended) cost and a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Users and their (validated) PHC strings.
pub(super) struct Passwords {
    users: HashMap<String, String>,
    /// A stored hash verified against for unknown users, so that a miss costs
    /// as much time as a hit and does not reveal which users exist.
    decoy: Option<String>,
    /// Passwords verified lately (none remembered when the system gives no randomness).
    verified: Option<Verified>,
}

impl Passwords {
    pub(super) fn parse(path: &Path, text: &str) -> Result<Passwords, AuthError> {
        let (mut users, mut decoy) = (HashMap::new(), None);
        for (at, line) in content_lines(path, text) {
            let Some((user, hash)) = line.rsplit_once(':') else {
                let fix = "write one user per line as `username:$argon2id$...`";
                return Err(at.err("expected `username:hash`, found no `:`", fix));
            };
            let (user, hash) = (user.trim(), hash.trim());
            if user.is_empty() {
                return Err(at.err("the username is empty", "put the username before the `:`"));
            }
            let bad_hash = |reason: String| AuthError::BadHash {
                path: path.to_path_buf(),
                line: at.1,
                user: user.to_string(),
                reason,
            };
            let parsed = PasswordHash::new(hash).map_err(|e| bad_hash(e.to_string()))?;
            argon2::Algorithm::try_from(parsed.algorithm)
                .map_err(|_| format!("algorithm `{}` is not argon2", parsed.algorithm))
                .and_then(|_| argon2::Params::try_from(&parsed).map_err(|e| e.to_string()))
                .and_then(|_| parsed.hash.ok_or_else(|| "it has no hash part".to_string()))
                .map_err(bad_hash)?;
            if users.insert(user.to_string(), hash.to_string()).is_some() {
                let problem = format!("user `{user}` is listed twice");
                return Err(at.err(problem, "delete one of the two lines"));
            }
            decoy.get_or_insert_with(|| hash.to_string());
        }
        Ok(Passwords {
            users,
            decoy,
            verified: Verified::new(),
        })
    }

    pub(super) fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether `user` logged in with `password` lately (cheap: no argon2).
    pub(super) fn verified_before(&self, user: &str, password: &[u8]) -> bool {
        self.users.contains_key(user)
            && self
                .verified
                .as_ref()
                .is_some_and(|v| v.knows(user, password))
    }

    /// True when `user` exists and `password` is theirs.
    pub(super) fn verify(&self, user: &str, password: &[u8]) -> bool {
        if self.verified_before(user, password) {
            return true;
        }
        match self.users.get(user) {
            Some(hash) => {
                let ok = check(hash, password);
                if ok {
                    if let Some(verified) = &self.verified {
                        verified.remember(user, password);
                    }
                }
                ok
            }
            None => {
                if let Some(decoy) = &self.decoy {
                    let _ = check(decoy, password);
                }
                false
            }
        }
    }
}

fn check(hash: &str, password: &[u8]) -> bool {
    // Parsing cannot fail: every stored hash was validated at load time.
    PasswordHash::new(hash)
        .is_ok_and(|parsed| Argon2::default().verify_password(password, &parsed).is_ok())
}
