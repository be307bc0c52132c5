//! The state interface: sessions, their queued messages, and retained messages.
//!
//! A standalone node keeps this state in memory ([`MemoryStore`]); a cluster node keeps it in a
//! shared store so any node can resume a session. Protocol code never talks to a store directly:
//! the broker core does, at connect, disconnect, subscribe and when routing to offline sessions.
//! A cluster keeps it in Redis ([`RedisStore`]).

mod memory;
pub mod redis;

pub use memory::MemoryStore;
pub use redis::{RedisStore, RedisStoreConfig};

use crate::message::{ClientId, Message};
use crate::protocol::QoS;
use crate::router::SubscriptionOptions;
use async_trait::async_trait;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

/// A store operation failed (in memory this cannot happen; a remote store may be unreachable).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backing service could not be reached or answered with an error.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// A message waiting for (or in flight to) one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// The message.
    pub message: Arc<Message>,
    /// QoS it is delivered with (already downgraded to the subscription's maximum).
    pub qos: QoS,
    /// Retain flag as delivered.
    pub retain: bool,
    /// Subscription identifiers to send with it.
    pub subscription_ids: Vec<usize>,
}

/// Where an unacknowledged outgoing QoS 1/2 message stood when its connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InflightState {
    /// PUBLISH sent, PUBACK or PUBREC not yet received: resend the PUBLISH with DUP.
    AwaitingAck,
    /// PUBREL sent, PUBCOMP not yet received: resend the PUBREL.
    AwaitingComplete,
}

/// An outgoing message with its packet id, kept across reconnects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InflightMessage {
    /// Packet id the client knows it by.
    pub packet_id: u16,
    /// Progress of the handshake.
    pub state: InflightState,
    /// The message itself.
    pub queued: QueuedMessage,
}

/// A subscription as the session holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    /// The filter exactly as subscribed, including any `$share/group/` prefix.
    pub filter: String,
    /// Its options.
    pub options: SubscriptionOptions,
}

/// Everything of a session that outlives its connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredSession {
    /// Session expiry interval in seconds (0: the session ends with its connection).
    pub expiry_secs: u32,
    /// The session's subscriptions.
    pub subscriptions: Vec<StoredSubscription>,
    /// Outgoing messages sent but not fully acknowledged.
    pub inflight: Vec<InflightMessage>,
    /// Messages waiting to be sent, oldest first.
    pub queue: VecDeque<QueuedMessage>,
    /// Incoming QoS 2 packet ids received but not yet released (PUBREL).
    pub incoming_qos2: Vec<u16>,
    /// When the connection ended (set by the store when a session is detached).
    pub disconnected_at: Option<SystemTime>,
}

/// What became of a message offered to an offline session's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued.
    Queued,
    /// The queue is full; the message was dropped.
    Full,
    /// The session is attached to a connection right now; deliver to it instead.
    Online,
    /// There is no such session (it expired or was never persistent); the message was dropped.
    NoSession,
}

/// Storage of session and retained-message state.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a retained message, or deletes the topic's retained message if the payload is empty.
    async fn set_retained(&self, message: Arc<Message>) -> Result<(), StoreError>;

    /// Retained messages whose topics match `filter` (expired ones are left out).
    async fn retained_matching(&self, filter: &str) -> Result<Vec<Arc<Message>>, StoreError>;

    /// Number of retained messages.
    async fn retained_count(&self) -> Result<usize, StoreError>;

    /// Takes a session for a connecting client and marks it online. Returns the stored session,
    /// if there was one; the caller discards it on a clean start.
    async fn attach_session(
        &self,
        client_id: &ClientId,
    ) -> Result<Option<StoredSession>, StoreError>;

    /// Puts a session back when its connection ends and marks it offline. Messages queued while
    /// it was attached are kept behind the session's own queue.
    async fn detach_session(
        &self,
        client_id: &ClientId,
        session: StoredSession,
    ) -> Result<(), StoreError>;

    /// Forgets a session entirely.
    async fn remove_session(&self, client_id: &str) -> Result<(), StoreError>;

    /// Offers a message to a session's queue. Unless `force` is set, a session that is attached
    /// answers [`Enqueued::Online`] instead of queueing.
    async fn enqueue(
        &self,
        client_id: &str,
        message: QueuedMessage,
        force: bool,
    ) -> Result<Enqueued, StoreError>;

    /// Removes and returns the offline sessions whose expiry has passed at `now`.
    async fn take_expired_sessions(
        &self,
        now: SystemTime,
    ) -> Result<Vec<(ClientId, StoredSession)>, StoreError>;

    /// Number of sessions, online and offline.
    async fn session_count(&self) -> Result<usize, StoreError>;
}

/// A queued message on topic `t` for unit tests.
#[cfg(test)]
pub(crate) fn test_queued(payload: &'static str, qos: QoS) -> QueuedMessage {
    QueuedMessage {
        message: Arc::new(Message {
            topic: "t".into(),
            payload: bytes::Bytes::from_static(payload.as_bytes()),
            qos,
            retain: false,
            properties: crate::message::MessageProperties::default(),
            expires_at: None,
            publisher: None,
        }),
        qos,
        retain: false,
        subscription_ids: vec![],
    }
}
