//! What this node knows of its Redis: whether it answers, whether it lost its data since this
//! node last looked (a restart without persistence, a failover to an empty replica), and
//! whether the announcement channel that keeps the replica of other nodes' routes is alive.
//!
//! - **Epoch.** The first node to find no `<prefix>v1:epoch` key writes a random one (`SET NX`).
//!   Every node reads it once a second (that read is also the liveness check). A missing or
//!   different epoch means Redis lost what the nodes had written: each node then registers
//!   again, announces all its entries again followed by its listing marker, and rebuilds its
//!   replica from each other node's listing once that node's marker shows it is complete
//!   (checked every [`RESYNC_SETTLE`]; see [`super::listed`]).
//! - **Declared dead.** A node whose registration is gone while the epoch is the same was
//!   declared dead by gossip (it stalled past the failure timeout) and its sessions adopted
//!   elsewhere: it ends all its connections (their clients resume what the store has) and
//!   registers again.
//! - **Heartbeat.** With each check a node publishes a heartbeat on the announcement channel. A
//!   subscriber that hears nothing at all (not even its own heartbeat) for [`SILENCE`] reconnects
//!   the channel: a subscription to a Redis that went away without closing the connection would
//!   otherwise wait for TCP to notice, and miss every announcement meanwhile.
//! - **Readiness.** `/readyz` reports the node degraded while Redis does not answer, while it
//!   refuses the relay's writes (see [`super::refusals`]), and while the announcement channel is
//!   down ([`Health::problem`]).

use super::refusals::Refusal;
use crate::store::redis::renewing::RenewingConnection;
use rand::Rng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often Redis is checked (and a heartbeat published).
pub const INTERVAL: Duration = Duration::from_secs(1);
/// How long a connection to Redis may take to open before it is tried again.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a recovery read (a departed node's journal, a page of its inbox) may wait for
/// Redis's answer before the recovery gives up (what is left stays in Redis for the next run
/// of that node id).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the announcement channel may stay silent (heartbeats come every [`INTERVAL`])
/// before it is reconnected.
pub const SILENCE: Duration = Duration::from_secs(4);
/// How often, after Redis lost its data or the announcement channel came back, a node tries to
/// rebuild its replica from the listings the other nodes have completed again.
pub const RESYNC_SETTLE: Duration = Duration::from_secs(3);
/// What a heartbeat says after the node id on the announcement channel.
pub const HEARTBEAT: &str = "~";

/// Redis as this node sees it.
pub struct Health {
    redis_up: AtomicBool,
    announcements_up: AtomicBool,
    epoch: parking_lot::Mutex<Option<String>>,
    /// Why Redis refuses the relay's writes, while it does.
    write_refusal: parking_lot::Mutex<Option<Refusal>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            redis_up: AtomicBool::new(true),
            announcements_up: AtomicBool::new(true),
            epoch: parking_lot::Mutex::new(None),
            write_refusal: parking_lot::Mutex::new(None),
        }
    }
}

/// What a check of the epoch found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EpochCheck {
    /// The epoch this node knows.
    Same,
    /// The first epoch this node has seen.
    First,
    /// Redis has another epoch, or none: it lost what the nodes wrote.
    Lost,
}

impl Health {
    /// Whether Redis answered the last check.
    pub fn redis_up(&self) -> bool {
        self.redis_up.load(Ordering::Relaxed)
    }

    /// The epoch this node last read, if any.
    pub fn epoch(&self) -> Option<String> {
        self.epoch.lock().clone()
    }

    /// Records whether Redis answered; returns what it was before.
    pub fn set_redis_up(&self, up: bool) -> bool {
        self.redis_up.swap(up, Ordering::Relaxed)
    }

    /// Whether the announcement channel is subscribed.
    pub fn announcements_up(&self) -> bool {
        self.announcements_up.load(Ordering::Relaxed)
    }

    /// Records whether the announcement channel is subscribed.
    pub fn set_announcements_up(&self, up: bool) {
        self.announcements_up.store(up, Ordering::Relaxed);
    }

    /// Records why Redis refuses the relay's writes (`None`: it takes them); returns what it was.
    pub fn set_write_refusal(&self, refusal: Option<Refusal>) -> Option<Refusal> {
        std::mem::replace(&mut *self.write_refusal.lock(), refusal)
    }

    /// Why the node should not take new clients, if it should not.
    pub fn problem(&self) -> Option<&'static str> {
        if !self.redis_up() {
            Some("redis unreachable (local delivery continues; new sessions and the relay wait for it)")
        } else if let Some(refusal) = *self.write_refusal.lock() {
            Some(refusal.readiness())
        } else if !self.announcements_up() {
            Some("redis announcement channel disconnected (routes to other nodes may be stale; reconnecting)")
        } else {
            None
        }
    }

    /// Compares the epoch Redis has (`found`, after [`read`]) with the one this node
    /// knows, and remembers it.
    pub fn check_epoch(&self, found: &str) -> EpochCheck {
        let mut known = self.epoch.lock();
        let check = match known.as_deref() {
            None => EpochCheck::First,
            Some(k) if k == found => EpochCheck::Same,
            Some(_) => EpochCheck::Lost,
        };
        *known = Some(found.to_string());
        check
    }
}

/// What one check of Redis read.
pub struct Reading {
    /// Redis's epoch (written first if there was none).
    pub epoch: String,
    /// Whether this node is still registered in `v1:nodes`: a node that gossip declared dead
    /// is removed from there once its sessions are adopted.
    pub registered: bool,
    /// Redis's clock (ms since the Unix epoch) when it answered.
    pub redis_ms: u64,
}

/// A new random epoch, written if Redis has none (`SET NX`: the first writer wins).
pub fn fresh_epoch() -> String {
    format!("{:016x}", rand::thread_rng().gen::<u64>())
}

/// Reads Redis's epoch, writing a new random one first if there is none, and whether `node`
/// is registered in the `nodes` set.
pub async fn read(
    con: &mut RenewingConnection,
    epoch_key: &str,
    nodes_key: &str,
    node: &str,
) -> redis::RedisResult<Reading> {
    let fresh = fresh_epoch();
    let (epoch, registered, (seconds, micros)): (String, bool, (u64, u64)) = redis::pipe()
        .cmd("SET")
        .arg(epoch_key)
        .arg(fresh)
        .arg("NX")
        .ignore()
        .cmd("GET")
        .arg(epoch_key)
        .cmd("SISMEMBER")
        .arg(nodes_key)
        .arg(node)
        .cmd("TIME")
        .query_async(con)
        .await?;
    Ok(Reading {
        epoch,
        registered,
        redis_ms: seconds * 1000 + micros / 1000,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_that_changes_means_redis_lost_its_data() {
        let health = Health::default();
        assert_eq!(health.check_epoch("a"), EpochCheck::First);
        assert_eq!(health.check_epoch("a"), EpochCheck::Same);
        assert_eq!(health.check_epoch("b"), EpochCheck::Lost);
        assert_eq!(health.check_epoch("b"), EpochCheck::Same);
    }

    #[test]
    fn readiness_names_what_is_down() {
        let health = Health::default();
        assert_eq!(health.problem(), None);
        health.set_announcements_up(false);
        assert!(health
            .problem()
            .is_some_and(|p| p.contains("announcement channel")));
        health.set_redis_up(false);
        assert!(health.problem().is_some_and(|p| p.contains("unreachable")));
    }
}
