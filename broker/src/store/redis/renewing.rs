//! A Redis connection that is replaced when it goes silent.
//!
//! The client's `ConnectionManager` reconnects when Redis closes the connection, but keeps a
//! connection on which a command merely timed out: to the client that is a slow answer, to be
//! retried. A Redis replaced at a new address behind a stable one (a Kubernetes Service whose
//! pod was replaced) or cut off by the network never closes the old connections: every later
//! command on them times out too, for as long as the node runs. [`RenewingConnection`] swaps in a
//! fresh `ConnectionManager` after a timeout, so the next command opens a new connection, which
//! reaches whatever Redis answers at the address now.

use parking_lot::Mutex;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use std::sync::Arc;

/// A shareable Redis connection (clones use the same one) that is replaced after a timeout.
#[derive(Clone)]
pub struct RenewingConnection {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    config: ConnectionManagerConfig,
    /// The connection in use, and how many were replaced before it.
    current: Mutex<(u64, ConnectionManager)>,
    /// Named in the log line of a replacement.
    purpose: &'static str,
}

impl RenewingConnection {
    /// Connects now (failing as the client's connection manager does) with `config`; `purpose`
    /// names the connection in the log.
    pub async fn connect(
        client: Client,
        config: ConnectionManagerConfig,
        purpose: &'static str,
    ) -> RedisResult<Self> {
        let manager = ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                config,
                current: Mutex::new((0, manager)),
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
        let used = self.current().0;
        self.replace(used);
    }

    fn current(&self) -> (u64, ConnectionManager) {
        let current = self.shared.current.lock();
        (current.0, current.1.clone())
    }

    /// After `error` on the connection of generation `used`: a timeout replaces it (unless a
    /// concurrent command replaced it already).
    fn after_error(&self, used: u64, error: &RedisError) {
        if error.is_timeout() && self.replace(used) {
            tracing::warn!(
                connection = self.shared.purpose,
                "redis did not answer in time: the next command opens a new connection"
            );
        }
    }

    /// Replaces the connection of generation `used` with one that connects on its first
    /// command; false when it was replaced already (or cannot be).
    fn replace(&self, used: u64) -> bool {
        let mut current = self.shared.current.lock();
        if current.0 != used {
            return false;
        }
        match ConnectionManager::new_lazy_with_config(
            self.shared.client.clone(),
            self.shared.config.clone(),
        ) {
            Ok(fresh) => {
                *current = (used + 1, fresh);
                true
            }
            Err(e) => {
                tracing::warn!(connection = self.shared.purpose, error = %e, "redis connection not replaced");
                false
            }
        }
    }
}

impl ConnectionLike for RenewingConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut con) = self.current();
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
            let (generation, mut con) = self.current();
            let replies = con.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &replies {
                self.after_error(generation, e);
            }
            replies
        })
    }

    fn get_db(&self) -> i64 {
        self.current().1.get_db()
    }
}
