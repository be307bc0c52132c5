//! Redis store: the shared state of a cluster.
//!
//! Every node of a cluster points at the same Redis, so a session can be resumed on any node and
//! retained messages are seen by all. The key schema (version 1) is documented in
//! `docs/redis-schema.md`; in short, under a configurable prefix (`starling:` by default):
//!
//! | key                               | type   | holds                                         |
//! |-----------------------------------|--------|-----------------------------------------------|
//! | `v1:session:<client id>`          | hash   | `state`, `node`, `gen`, `expiry`, `will`, ... |
//! | `v1:subs:<client id>`             | hash   | filter → encoded subscription options         |
//! | `v1:inflight:<client id>`         | list   | encoded in-flight messages, in order          |
//! | `v1:queue:<client id>`            | list   | encoded queued messages, oldest first         |
//! | `v1:qos2:<client id>`             | list   | incoming QoS 2 packet ids (decimal)           |
//! | `v1:sessions`                     | set    | client ids of all sessions                    |
//! | `v1:expiry`                       | zset   | offline client ids by expiry time (ms)        |
//! | `v1:node:<node>:sessions`         | set    | sessions a node holds or has parked           |
//! | `v1:node:<node>:moved`            | zset   | sessions claimed away from it (last minute)   |
//! | `v1:retained:<topic>`             | string | encoded retained message                      |
//! | `v1:retained-topics`              | set    | topics with a retained message                |
//! | `v1:retained-expiring`            | zset   | those whose message expires, by when (ms)     |
//! | `v1:retained-sizes`               | hash   | topic → payload bytes                         |
//! | `v1:retained-bytes`               | string | their sum                                     |
//!
//! Operations that the in-memory store performs under its lock run here as Lua scripts, so they
//! are atomic against every node: claiming (and completing a claim), detaching, removing, writing
//! subscriptions through, enqueueing, adopting a departed node's sessions and the expiry sweep.
//! Each claim increments the session's generation, which fences a stale holder. An offline
//! session's keys carry a TTL (its expiry interval plus a grace period), so sessions vanish even
//! when no node is alive to sweep them; retained messages with an expiry carry theirs too.

mod adoption;
pub(crate) mod codec;
mod connection;
pub mod eviction;
mod expiry;
mod keys;
mod plain;
pub mod renewing;
mod reply;
mod retained;
mod scripts;
mod session_reply;
mod sessions;
pub mod target;

pub use codec::{DecodeError, ENCODING_VERSION};

use super::{
    millis_since_epoch, Adoption, Attached, Completed, Detached, Enqueued, ExpiredSession,
    QueuedMessage, Retained, RetainedLimits, SessionClaim, SessionSummary, Store, StoreError,
    StoredSession, StoredSubscription,
};
use crate::message::{ClientId, Message};
use crate::store::journal_hold::JournalReservation;
use async_trait::async_trait;
use renewing::RenewingConnection;
use scripts::Scripts;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use target::RedisTarget;

/// The version of the key schema, part of every key name.
pub const SCHEMA_VERSION: u32 = 1;

/// How a [`RedisStore`] reaches Redis and names its keys.
#[derive(Debug, Clone)]
pub struct RedisStoreConfig {
    /// Where Redis is: one address, or the primary Sentinel names.
    pub target: RedisTarget,
    /// Prefix of every key (the schema version follows it).
    pub key_prefix: String,
    /// This node's identity, recorded in the sessions it holds.
    pub node_id: String,
    /// Maximum number of messages in one session's queue.
    pub max_queued: usize,
    /// What is kept as retained messages, counted over every node sharing the Redis.
    pub retained_limits: RetainedLimits,
    /// How long an offline session's keys outlive its expiry, so a live node's sweep can still
    /// return the session's subscriptions before Redis drops the keys by itself.
    pub expiry_grace: Duration,
    /// Upper bound of one store operation, reconnection included; past it the operation fails
    /// with [`StoreError::Unavailable`].
    pub operation_timeout: Duration,
}

impl RedisStoreConfig {
    /// A configuration with the default prefix (`starling:`), a 30 s expiry grace and a 5 s
    /// operation timeout.
    pub fn new(target: RedisTarget, node_id: impl Into<String>, max_queued: usize) -> Self {
        RedisStoreConfig {
            target,
            key_prefix: "starling:".to_string(),
            node_id: node_id.into(),
            max_queued,
            retained_limits: RetainedLimits::default(),
            expiry_grace: Duration::from_secs(30),
            operation_timeout: Duration::from_secs(5),
        }
    }
}

/// Where a session stands, as far as Redis knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Whether a connection holds the session right now, or a node is claiming it.
    pub online: bool,
    /// The node that holds it (online) or last held it (offline).
    pub node: Option<String>,
    /// Session expiry interval in seconds (recorded when the session went offline).
    pub expiry_secs: Option<u32>,
    /// When the session went offline.
    pub disconnected_at: Option<SystemTime>,
}

/// Sessions and retained messages kept in Redis, shared by the nodes of a cluster.
pub struct RedisStore {
    manager: RenewingConnection,
    scripts: Scripts,
    /// `<prefix>v1:`.
    base: String,
    node_id: String,
    max_queued: usize,
    retained_limits: RetainedLimits,
    expiry_grace: Duration,
    operation_timeout: Duration,
}

fn encode_failed(e: postcard::Error) -> StoreError {
    StoreError::Unavailable(format!("value not encodable: {e}"))
}

// Each operation lives in the module of its job (`sessions`, `retained`, `adoption`, `expiry`) as
// an inherent method of the same name, which method resolution picks before the trait's.
#[async_trait]
impl Store for RedisStore {
    async fn session_summary(&self, client_id: &str) -> Result<Option<SessionSummary>, StoreError> {
        self.session_summary(client_id).await
    }

    async fn set_retained(&self, message: Arc<Message>) -> Result<Retained, StoreError> {
        self.set_retained(message).await
    }

    async fn retained_matching(&self, filter: &str) -> Result<Vec<Arc<Message>>, StoreError> {
        self.retained_matching(filter).await
    }

    async fn retained_count(&self) -> Result<usize, StoreError> {
        self.retained_count().await
    }

    async fn attach_session(
        &self,
        client_id: &ClientId,
        claim: &SessionClaim,
    ) -> Result<Attached, StoreError> {
        self.attach_session(client_id, claim).await
    }

    async fn complete_attach(
        &self,
        client_id: &ClientId,
        generation: u64,
        journal: Option<&JournalReservation>,
    ) -> Result<Completed, StoreError> {
        self.complete_attach(client_id, generation, journal).await
    }

    async fn detach_session(
        &self,
        client_id: &ClientId,
        generation: u64,
        session: StoredSession,
    ) -> Result<Detached, StoreError> {
        self.detach(client_id, generation, session, false).await
    }

    async fn detach_session_keeping_will(
        &self,
        client_id: &ClientId,
        generation: u64,
        session: StoredSession,
    ) -> Result<Detached, StoreError> {
        self.detach(client_id, generation, session, true).await
    }

    async fn remove_session(
        &self,
        client_id: &str,
        generation: u64,
    ) -> Result<Detached, StoreError> {
        self.remove_session(client_id, generation).await
    }

    async fn save_subscriptions(
        &self,
        client_id: &str,
        generation: u64,
        added: &[StoredSubscription],
        removed: &[String],
    ) -> Result<(), StoreError> {
        self.save_subscriptions(client_id, generation, added, removed)
            .await
    }

    async fn adopt_sessions(
        &self,
        departed: &str,
        run: Option<u64>,
    ) -> Result<Adoption, StoreError> {
        self.adopt_sessions(departed, run).await
    }

    async fn enqueue(
        &self,
        client_id: &str,
        message: QueuedMessage,
        force: bool,
    ) -> Result<Enqueued, StoreError> {
        self.enqueue(client_id, message, force).await
    }

    async fn take_expired_sessions(
        &self,
        now: SystemTime,
    ) -> Result<Vec<ExpiredSession>, StoreError> {
        self.take_expired_sessions(now).await
    }

    async fn session_count(&self) -> Result<usize, StoreError> {
        self.session_count().await
    }
}
