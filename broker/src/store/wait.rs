//! Connecting to the Redis store at start, waiting for it when it is not up yet.
//!
//! A node whose Redis is not reachable yet (a fresh Kubernetes install starts the brokers and
//! Redis together) keeps trying with a doubling pause instead of exiting: exiting sent every
//! broker pod into CrashLoopBackOff on every fresh install. Meanwhile the caller reports why the
//! node is not ready (its `/readyz` says so). The log gets one line each time the reason
//! changes, and a reminder now and again, not one line per attempt.

use super::{RedisStore, RedisStoreConfig, StoreError};
use std::time::Duration;

/// First pause between attempts; it doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest pause between attempts.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// While the reason stays the same, a reminder is logged every this many attempts (about every
/// two and a half minutes at the longest pause).
const REMIND_EVERY: u64 = 30;

/// Why the store is not connected yet, for the admin endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// Attempts made so far.
    pub attempts: u64,
    /// Why the latest one failed.
    pub reason: String,
}

/// Connects to Redis, retrying with a doubling pause (200 ms up to 5 s) for as long as it is
/// unavailable; `report` hears about every failed attempt. Each attempt is bounded by the
/// store's connect and operation timeouts. Fails at once only when the URL itself is unusable.
pub async fn connect_when_up(
    config: RedisStoreConfig,
    mut report: impl FnMut(&Waiting),
) -> Result<RedisStore, StoreError> {
    let mut pause = RETRY_MIN;
    let mut attempts = 0u64;
    let mut last_reason: Option<String> = None;
    loop {
        let reason = match RedisStore::connect(config.clone()).await {
            Ok(store) => {
                if attempts > 0 {
                    tracing::info!(attempts = attempts + 1, "redis answered; starting");
                }
                return Ok(store);
            }
            Err(StoreError::Unavailable(reason)) => reason,
        };
        attempts += 1;
        if last_reason.as_deref() != Some(reason.as_str()) {
            tracing::warn!(
                error = %reason,
                attempt = attempts,
                "redis not reachable; not ready, retrying until it answers"
            );
        } else if attempts.is_multiple_of(REMIND_EVERY) {
            tracing::warn!(error = %reason, attempt = attempts, "still waiting for redis");
        } else {
            tracing::debug!(error = %reason, attempt = attempts, "redis not reachable");
        }
        report(&Waiting {
            attempts,
            reason: reason.clone(),
        });
        last_reason = Some(reason);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_MAX);
    }
}
