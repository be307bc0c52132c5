//! Passwords this process verified lately, remembered as keyed hashes: a client reconnecting
//! with the same password (asked to move by rebalancing, taken over, its node restarted) costs
//! one HMAC instead of one argon2 verification, so a reconnect storm of thousands of devices does
//! not take every core for tens of seconds. Only successes are kept (a guess always pays the
//! full argon2 cost); the key is random per loaded password file and never leaves memory, and a
//! reloaded file starts empty.

use parking_lot::Mutex;
use ring::hmac;
use std::collections::HashMap;

/// The most users remembered; past it the memory starts over (they verify once more).
const MAX_USERS: usize = 100_000;

/// Users and the keyed hash of the password each last logged in with.
pub(super) struct Verified {
    key: hmac::Key,
    tags: Mutex<HashMap<String, hmac::Tag>>,
}

impl Verified {
    /// Nothing remembered, under a fresh random key; `None` when the system has no randomness.
    pub(super) fn new() -> Option<Self> {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).ok()?;
        Some(Verified {
            key,
            tags: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `user` logged in with `password` lately.
    pub(super) fn knows(&self, user: &str, password: &[u8]) -> bool {
        let Some(tag) = self.tags.lock().get(user).copied() else {
            return false;
        };
        hmac::verify(&self.key, password, tag.as_ref()).is_ok()
    }

    /// `user` just proved `password`.
    pub(super) fn remember(&self, user: &str, password: &[u8]) {
        let tag = hmac::sign(&self.key, password);
        let mut tags = self.tags.lock();
        if tags.len() >= MAX_USERS && !tags.contains_key(user) {
            tags.clear();
        }
        tags.insert(user.to_string(), tag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_password_remembered_for_that_user_is_known() {
        let verified = Verified::new().expect("randomness");
        assert!(!verified.knows("alice", b"pw"));
        verified.remember("alice", b"pw");
        assert!(verified.knows("alice", b"pw"));
        assert!(!verified.knows("alice", b"pw2"));
        assert!(!verified.knows("bob", b"pw"));
        // A new password replaces the old one.
        verified.remember("alice", b"new");
        assert!(verified.knows("alice", b"new"));
        assert!(!verified.knows("alice", b"pw"));
    }
}
