//! Whether the Redis behind the store may evict keys, checked once when the store connects.
//!
//! The store keeps nothing Redis may throw away: an evicted session hash loses its owner and
//! generation (the session is taken over as new, or resumed by two nodes), an evicted queue or
//! subscription set loses messages without a trace. Redis evicts when it reaches `maxmemory`
//! under any `maxmemory-policy` but `noeviction`; `volatile-*` policies take keys with a TTL
//! (offline sessions, expiring retained messages), `allkeys-*` any key. A Redis that refuses
//! `CONFIG` (managed services often do) cannot be checked: that is logged at debug level only.

use redis::aio::ConnectionLike;
use redis::RedisError;
use std::collections::BTreeMap;

/// The only policy under which Redis never evicts.
pub const NO_EVICTION: &str = "noeviction";

/// What Redis' memory settings mean for the store's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eviction {
    /// Redis never evicts: `noeviction`, or no memory limit and a policy that evicts nothing
    /// without one.
    Never,
    /// Redis may evict the store's keys, now or once a memory limit is set.
    Possible {
        /// Its `maxmemory-policy`.
        policy: String,
        /// Its `maxmemory` in bytes (0: no limit set yet).
        maxmemory: u64,
    },
}

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EvictionCheckError {
    /// `CONFIG GET` failed or is not allowed.
    #[error("CONFIG GET maxmemory* failed: {0}")]
    Config(#[from] RedisError),
    /// The answer lacks a setting.
    #[error("CONFIG GET did not report `{0}`")]
    Missing(&'static str),
    /// `maxmemory` is not a number of bytes.
    #[error("CONFIG GET reported maxmemory {0:?}, not a number of bytes")]
    BadMaxmemory(String),
}

/// Classifies Redis' `maxmemory-policy` and `maxmemory` (bytes): any policy but `noeviction`
/// evicts once a limit is set; an `allkeys-*` or `volatile-*` policy counts even without one,
/// as a limit can be set at any time (`CONFIG SET`, an operator's change of the container).
pub fn classify(policy: &str, maxmemory: u64) -> Eviction {
    let policy = policy.trim().to_ascii_lowercase();
    let evicting_policy = policy.starts_with("allkeys-") || policy.starts_with("volatile-");
    if policy == NO_EVICTION || (maxmemory == 0 && !evicting_policy) {
        return Eviction::Never;
    }
    Eviction::Possible { policy, maxmemory }
}

/// Reads `maxmemory` and `maxmemory-policy` with one `CONFIG GET maxmemory*` and classifies them.
pub async fn check<C: ConnectionLike + Send>(con: &mut C) -> Result<Eviction, EvictionCheckError> {
    let settings: BTreeMap<String, String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory*")
        .query_async(con)
        .await?;
    let policy = settings
        .get("maxmemory-policy")
        .ok_or(EvictionCheckError::Missing("maxmemory-policy"))?;
    let maxmemory = settings
        .get("maxmemory")
        .ok_or(EvictionCheckError::Missing("maxmemory"))?;
    let maxmemory = maxmemory
        .trim()
        .parse()
        .map_err(|_| EvictionCheckError::BadMaxmemory(maxmemory.clone()))?;
    Ok(classify(policy, maxmemory))
}

/// Checks the settings and warns when Redis may evict the store's keys, naming the setting and
/// the fix. Never fails: a Redis that cannot be checked is logged at debug level.
pub async fn warn_if_evicting<C: ConnectionLike + Send>(con: &mut C) {
    match check(con).await {
        Ok(Eviction::Never) => {
            tracing::debug!("redis never evicts keys (maxmemory-policy noeviction or no limit)")
        }
        Ok(Eviction::Possible { policy, maxmemory }) => tracing::warn!(
            maxmemory_policy = %policy,
            maxmemory,
            "redis may evict the broker's keys (maxmemory-policy {policy}, maxmemory {maxmemory}): \
             an evicted key silently loses a session's owner, queue or subscriptions; \
             set `maxmemory-policy noeviction` on that Redis (redis.conf, or \
             CONFIG SET maxmemory-policy noeviction) and size maxmemory for all sessions"
        ),
        Err(e) => tracing::debug!(
            error = %e,
            "cannot read redis' eviction settings (CONFIG is often disabled on managed redis); \
             make sure its maxmemory-policy is noeviction"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn possible(policy: &str, maxmemory: u64) -> Eviction {
        Eviction::Possible {
            policy: policy.to_string(),
            maxmemory,
        }
    }

    #[test]
    fn noeviction_never_evicts_with_or_without_a_limit() {
        assert_eq!(classify("noeviction", 0), Eviction::Never);
        assert_eq!(classify("noeviction", 10 << 20), Eviction::Never);
        assert_eq!(classify(" NoEviction ", 10 << 20), Eviction::Never);
    }

    #[test]
    fn every_evicting_policy_is_a_risk_with_or_without_a_limit() {
        for policy in [
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
        ] {
            assert_eq!(classify(policy, 10 << 20), possible(policy, 10 << 20));
            assert_eq!(
                classify(policy, 0),
                possible(policy, 0),
                "{policy} without a limit"
            );
        }
        assert_eq!(classify("ALLKEYS-LRU", 1), possible("allkeys-lru", 1));
    }

    #[test]
    fn an_unknown_policy_is_a_risk_only_with_a_limit() {
        assert_eq!(
            classify("some-new-policy", 1 << 30),
            possible("some-new-policy", 1 << 30)
        );
        assert_eq!(classify("some-new-policy", 0), Eviction::Never);
    }
}
