//! Redis's clock as this node estimates it: stream entry ids carry the milliseconds of Redis's
//! clock at the time of the `XADD`, so comparing an inbox entry with an event on this node needs
//! that clock, not the local one. The estimate is the local wall clock plus the offset last
//! seen in a `TIME` reply (read at start and with every health check, once a second).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The offset between Redis's clock and this node's, from the last `TIME` reply.
#[derive(Debug, Default)]
pub struct RedisClock {
    /// Redis's milliseconds minus the local ones, when last observed.
    offset_ms: AtomicI64,
}

impl RedisClock {
    /// Records a `TIME` reply (in ms) that arrived just now.
    pub fn observe(&self, redis_ms: u64) {
        let offset = i64::try_from(redis_ms)
            .unwrap_or(i64::MAX)
            .saturating_sub(local_ms());
        self.offset_ms.store(offset, Ordering::Relaxed);
    }

    /// Now on Redis's clock, as estimated (ms since the Unix epoch).
    pub fn now_ms(&self) -> u64 {
        let now = local_ms().saturating_add(self.offset_ms.load(Ordering::Relaxed));
        u64::try_from(now).unwrap_or(0)
    }
}

/// The local wall clock, in ms since the Unix epoch.
fn local_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_follows_the_offset_last_observed() {
        let clock = RedisClock::default();
        let local = u64::try_from(local_ms()).unwrap();
        clock.observe(local + 60_000);
        let ahead = clock.now_ms();
        assert!((local + 60_000..local + 61_000).contains(&ahead), "{ahead}");
        clock.observe(local - 60_000);
        let behind = clock.now_ms();
        assert!(
            (local - 60_000..local - 59_000).contains(&behind),
            "{behind}"
        );
    }
}
