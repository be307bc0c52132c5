//! Acknowledgements that wait for Redis replicas (`cluster.redis_replication`).
//!
//! Redis replicates asynchronously: a primary killed right after a write may take it with it, and
//! the replica promoted in its place never had it. A QoS 1/2 acknowledgement waits for a barrier
//! of the relay writer (everything it depends on is in Redis by then); with a wait configured,
//! the writer ends every batch that answers a barrier with a small write and `WAIT`. The write
//! matters: `WAIT` waits for the replication offset of the connection's own last write, and that
//! offset covers every write any connection made before it, such as the store's queued copies
//! for offline sessions written on another connection while the publish was routed.

use redis::{Pipeline, Value};
use starling_config::RedisReplicationConfig;
use std::time::Duration;

/// How many replicas a barrier waits for, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicationWait {
    replicas: u32,
    timeout: Duration,
}

/// What a `WAIT` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// As many replicas as asked for hold the writes.
    Enough,
    /// Fewer did within the timeout (their number).
    Short(i64),
    /// The reply was not a number.
    Unreadable,
}

impl ReplicationWait {
    /// The configured wait; `None` when acknowledgements do not wait.
    pub fn from_config(config: &RedisReplicationConfig) -> Option<Self> {
        (config.wait_replicas > 0).then(|| ReplicationWait {
            replicas: config.wait_replicas,
            timeout: Duration::from_millis(config.wait_timeout_ms),
        })
    }

    /// The longest a wait takes.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Appends the wait to `pipe`: a write to `marker` (this node's counter of waits), then
    /// `WAIT`, whose reply is the pipeline's last.
    pub fn append(&self, pipe: &mut Pipeline, marker: &str) {
        pipe.cmd("INCR").arg(marker).ignore();
        pipe.cmd("WAIT")
            .arg(self.replicas)
            .arg(u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX));
    }

    /// Reads the reply of the `WAIT` appended by [`Self::append`].
    pub fn read(&self, reply: &Value) -> Waited {
        match reply {
            Value::Int(n) if *n >= i64::from(self.replicas) => Waited::Enough,
            Value::Int(n) => Waited::Short(*n),
            _ => Waited::Unreadable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_replicas_means_no_wait() {
        let config = RedisReplicationConfig {
            wait_replicas: 0,
            wait_timeout_ms: 500,
        };
        assert_eq!(ReplicationWait::from_config(&config), None);
    }

    #[test]
    fn a_wait_is_a_write_then_wait_and_its_reply_says_whether_enough_replicas_confirmed() {
        let config = RedisReplicationConfig {
            wait_replicas: 2,
            wait_timeout_ms: 250,
        };
        let wait = ReplicationWait::from_config(&config).expect("two replicas asked for");
        let mut pipe = redis::pipe();
        wait.append(&mut pipe, "starling:v1:node:a:replicated");
        let packed = String::from_utf8_lossy(&pipe.get_packed_pipeline()).into_owned();
        let incr = packed.find("INCR").expect("a write first");
        let wait_at = packed.find("WAIT").expect("then WAIT");
        assert!(incr < wait_at, "{packed}");
        assert!(
            packed.ends_with("$4\r\nWAIT\r\n$1\r\n2\r\n$3\r\n250\r\n"),
            "{packed}"
        );
        assert_eq!(wait.read(&Value::Int(2)), Waited::Enough);
        assert_eq!(wait.read(&Value::Int(3)), Waited::Enough);
        assert_eq!(wait.read(&Value::Int(1)), Waited::Short(1));
        assert_eq!(wait.read(&Value::Nil), Waited::Unreadable);
    }
}
