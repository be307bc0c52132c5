//! A Redis connection that is replaced when it goes silent.
//!
//! The client's `ConnectionManager` reconnects when Redis closes the connection, but keeps a
//! connection on which a command merely timed out: to the client that is a slow answer, to be
//! retried. A Redis replaced at a new address behind a stable one (a Kubernetes Service whose
//! pod was replaced) or cut off by the network never closes the old connections: every later
//! command on them times out too, for as long as the node runs. [`RenewingConnection`] swaps in a
//! fresh `ConnectionManager` after a timeout, so the next command opens a new connection, which
//! reaches whatever Redis answers at the address now. With Sentinel ([`RedisTarget`]) it also
//! does so when the server stops being the primary (gone, or answering as a replica), and the
//! new connection goes to the primary the sentinels name then.

use super::target::{self, RedisTarget};
use parking_lot::Mutex;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use std::sync::Arc;

/// A shareable Redis connection (clones use the same one) that is replaced after a timeout.
#[derive(Clone)]
pub struct RenewingConnection {
    shared: Arc<Shared>,
}

struct Shared {
    target: RedisTarget,
    config: ConnectionManagerConfig,
    /// How many connections were replaced, and the one in use (`None` once replaced: the next
    /// command asks the target for a client and makes one).
    current: Mutex<(u64, Option<ConnectionManager>)>,
    /// Named in the log line of a replacement.
    purpose: &'static str,
}

impl RenewingConnection {
    /// Connects now (failing as the client's connection manager does) with `config`; `purpose`
    /// names the connection in the log.
    pub async fn connect(
        target: RedisTarget,
        config: ConnectionManagerConfig,
        purpose: &'static str,
    ) -> RedisResult<Self> {
        let client = target.client().await?;
        let manager = ConnectionManager::new_with_config(client, config.clone()).await?;
        Ok(Self {
            shared: Arc::new(Shared {
                target,
                config,
                current: Mutex::new((0, Some(manager))),
                purpose,
            }),
        })
    }

    /// How many times the connection was replaced.
    pub fn renewals(&self) -> u64 {
        self.shared.current.lock().0
    }

    /// Replaces the connection now: the next command opens a new one (a command waiting on the
    /// old one still waits for its answer or its timeout).
    pub fn renew(&self) {
        let used = self.shared.current.lock().0;
        self.replace(used);
    }

    /// The connection to use and its generation; after a replacement, a new one to the server
    /// the target names now (connecting on its first command).
    async fn current(&self) -> RedisResult<(u64, ConnectionManager)> {
        {
            let current = self.shared.current.lock();
            if let Some(manager) = &current.1 {
                return Ok((current.0, manager.clone()));
            }
        }
        let client = self.shared.target.client().await?;
        let fresh = ConnectionManager::new_lazy_with_config(client, self.shared.config.clone())?;
        let mut current = self.shared.current.lock();
        // A concurrent command may have made one meanwhile: one connection is kept.
        let manager = current.1.get_or_insert(fresh).clone();
        Ok((current.0, manager))
    }

    /// After `error` on the connection of generation `used`: a timeout replaces it, and so does,
    /// with a target that follows failovers, a sign that the server is no longer the primary
    /// (unless a concurrent command replaced it already).
    fn after_error(&self, used: u64, error: &RedisError) {
        if error.is_timeout() {
            if self.replace(used) {
                tracing::warn!(
                    connection = self.shared.purpose,
                    "redis did not answer in time: the next command opens a new connection"
                );
            }
        } else if self.shared.target.follows_failover()
            && target::lost_the_primary(error)
            && self.replace(used)
        {
            tracing::warn!(
                connection = self.shared.purpose,
                error = %error,
                "redis primary lost: the next command asks the sentinels and connects anew"
            );
        }
    }

    /// Drops the connection of generation `used`, so the next command makes a new one; false
    /// when it was replaced already.
    fn replace(&self, used: u64) -> bool {
        let mut current = self.shared.current.lock();
        if current.0 != used {
            return false;
        }
        *current = (used + 1, None);
        true
    }
}

impl ConnectionLike for RenewingConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut con) = self.current().await?;
            let reply = con.req_packed_command(cmd).await;
            if let Err(e) = &reply {
                self.after_error(generation, e);
            }
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (generation, mut con) = self.current().await?;
            let replies = con.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &replies {
                self.after_error(generation, e);
            }
            replies
        })
    }

    fn get_db(&self) -> i64 {
        let current = self.shared.current.lock();
        current.1.as_ref().map_or(0, ConnectionLike::get_db)
    }
}
