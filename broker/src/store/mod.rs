//! The state interface: sessions, their queued messages, and retained messages.
//!
//! A standalone node keeps this state in memory ([`MemoryStore`]); a cluster node keeps it in a
//! shared store so any node can resume a session. Protocol code never talks to a store directly:
//! the broker core does, at connect, disconnect, subscribe and when routing to offline sessions.
//! A cluster keeps it in Redis ([`RedisStore`]).

pub mod journal_hold;
mod memory;
pub mod redis;
mod retained_map;
mod wait;

pub use memory::MemoryStore;
pub use redis::{RedisStore, RedisStoreConfig};
pub use wait::connect_when_up;

use crate::message::{ClientId, Message};
use crate::protocol::QoS;
use crate::router::SubscriptionOptions;
use async_trait::async_trait;
use journal_hold::{JournalHold, JournalReservation};
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
    /// This copy may have reached the client already (it was recovered from a node that died
    /// while delivering it): it is sent with DUP.
    pub maybe_sent: bool,
    /// Keeps this copy's entry in the node's delivery journal (cluster mode) for as long as the
    /// copy lives only in this node's memory; see [`crate::cluster::journal`].
    pub journal: Option<JournalHold>,
}

impl QueuedMessage {
    /// This copy without its message's latency stamp (see [`Message::unstamped`]).
    pub fn unstamped(mut self) -> Self {
        self.message = Message::unstamped(self.message);
        self
    }

    /// The copy of `message` a routing target gets: QoS downgraded to the target's maximum,
    /// retain flag kept only where the target asked for it.
    pub fn for_target(message: &Arc<Message>, target: crate::router::Target<'_>) -> Self {
        QueuedMessage::new(
            message.clone(),
            crate::protocol::qos_min(message.qos, target.qos),
            message.retain && target.retain_as_published,
            target.subscription_ids,
        )
    }

    /// A first delivery attempt of `message` with the given delivery options.
    pub fn new(
        message: Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: Vec<usize>,
    ) -> Self {
        QueuedMessage {
            message,
            qos,
            retain,
            subscription_ids,
            maybe_sent: false,
            journal: None,
        }
    }
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued.
    Queued,
    /// The queue is full; the message was dropped.
    Full,
    /// A connection on this node holds the session right now; deliver to it instead.
    Online,
    /// Another node of the cluster holds (or is taking) the session: the message is its to
    /// deliver.
    Elsewhere(String),
    /// There is no such session (it expired or was never persistent); the message was dropped.
    NoSession,
}

/// A will kept with a session while its connection is open, so that the node that adopts the
/// session after this node dies can publish it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWill {
    /// The will message.
    pub message: Arc<Message>,
    /// Will delay interval in seconds.
    pub delay_secs: u32,
}

/// What a connection asks for when it claims its session.
#[derive(Debug, Clone, Default)]
pub struct SessionClaim {
    /// The connection's session expiry interval, in seconds.
    pub expiry_secs: u32,
    /// Clean start: any stored session is discarded.
    pub clean_start: bool,
    /// The connection's will.
    pub will: Option<StoredWill>,
    /// In a cluster, where the claim journals the in-flight and queued messages it takes from
    /// the store, in the same atomic step (see [`crate::cluster::journal`]); the store hands each
    /// copy it returns its hold ([`JournalReservation::attach`]). None when the session is not
    /// resumed or ends with its connection.
    pub journal: Option<JournalReservation>,
}

/// Where a claimed session was before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Nobody held it on a connection: it is this node's now. A session parked on another node
    /// (offline, its subscriptions in that node's routing tree) names that node, which must be
    /// told to forget it.
    Free {
        /// The node the session was parked on, if another one.
        parked_on: Option<String>,
    },
    /// A connection on another node holds it: that node must hand it over (it is asked to),
    /// then the claim is finished with [`Store::complete_attach`].
    Elsewhere(String),
}

/// The answer to a claim.
#[derive(Debug, Clone)]
pub struct Attached {
    /// The claim's fencing token: detaching, removing or writing subscriptions through with an
    /// older generation than the session's current one changes nothing.
    pub generation: u64,
    /// The stored session, when [`Holder::Free`] (also on a clean start, when it is discarded
    /// from the store: its subscriptions tell what to forget).
    pub previous: Option<StoredSession>,
    /// Where the session was.
    pub holder: Holder,
}

/// How a claim that waited for another node's hand-over ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completed {
    /// The session is this connection's: here is what there was of it (none: start afresh).
    Taken(Option<StoredSession>),
    /// A newer claim took the session meanwhile: this connection must give up.
    Superseded,
}

/// What became of a session when its connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detached {
    /// Stored (offline, parked here) or removed, as asked.
    Stored,
    /// Another node is claiming it: the state went to that node.
    HandedOver,
    /// A newer holder owns it already: nothing was written.
    Fenced,
}

/// A session taken over from a departed node.
#[derive(Debug, Clone)]
pub struct AdoptedSession {
    /// The client.
    pub client_id: ClientId,
    /// The will of the connection the departed node held, to publish now (once).
    pub will: Option<StoredWill>,
    /// The session's subscriptions (empty if it ended).
    pub subscriptions: Vec<StoredSubscription>,
    /// Whether a connection held it when its node departed.
    pub was_online: bool,
    /// Another node claimed it while its node was departing: it is not adopted (nothing of it
    /// changed), and is listed only so messages relayed to the departed node for it are
    /// recovered.
    pub moved: bool,
}

/// What an adoption of a departed node's sessions found.
#[derive(Debug, Clone, Default)]
pub struct Adoption {
    /// The sessions taken over (and those listed only because they moved, see
    /// [`AdoptedSession::moved`]).
    pub sessions: Vec<AdoptedSession>,
    /// The node is back under a newer run than the one that departed: nothing of it was
    /// adopted (`sessions` holds only what an earlier, interrupted call of this adopter took),
    /// and what it left is the new run's to recover.
    pub node_returned: bool,
}

/// A session removed by the expiry sweep.
#[derive(Debug, Clone)]
pub struct ExpiredSession {
    /// The client.
    pub client_id: ClientId,
    /// The node it was parked on, when known.
    pub parked_on: Option<String>,
    /// What was stored.
    pub session: StoredSession,
}

/// What became of a retained publish in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retained {
    /// Kept as its topic's retained message (replacing any earlier one).
    Stored,
    /// The topic's retained message was deleted (empty payload).
    Deleted,
    /// Not kept: the store holds its maximum number of retained messages and the topic had
    /// none (the message is still delivered).
    CountFull,
    /// Not kept: the retained payloads would exceed their maximum total size (the message is
    /// still delivered).
    BytesFull,
}

/// How much a store keeps as retained messages, over all topics (and, in Redis, all nodes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetainedLimits {
    /// Most retained messages (0: no limit).
    pub max_messages: usize,
    /// Most bytes of retained payloads, summed (0: no limit).
    pub max_bytes: u64,
}

/// Storage of session and retained-message state.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a retained message, or deletes the topic's retained message if the payload is empty;
    /// refuses a new topic while the store holds as many retained messages as it may.
    async fn set_retained(&self, message: Arc<Message>) -> Result<Retained, StoreError>;

    /// Retained messages whose topics match `filter` (expired ones are left out).
    async fn retained_matching(&self, filter: &str) -> Result<Vec<Arc<Message>>, StoreError>;

    /// Number of retained messages.
    async fn retained_count(&self) -> Result<usize, StoreError>;

    /// Claims a session for a connecting client.
    async fn attach_session(
        &self,
        client_id: &ClientId,
        claim: &SessionClaim,
    ) -> Result<Attached, StoreError>;

    /// Finishes a claim that found the session held by another node, once that node handed it
    /// over (or did not answer in time); `journal` as [`SessionClaim::journal`].
    async fn complete_attach(
        &self,
        client_id: &ClientId,
        generation: u64,
        journal: Option<&JournalReservation>,
    ) -> Result<Completed, StoreError>;

    /// Puts a session back when its connection ends and marks it offline. Messages queued while
    /// it was attached are kept behind the session's own queue.
    async fn detach_session(
        &self,
        client_id: &ClientId,
        generation: u64,
        session: StoredSession,
    ) -> Result<Detached, StoreError>;

    /// [`Self::detach_session`] for a connection closed because this node shuts down: the
    /// session's will stays stored with it, for the node that adopts this node's sessions to
    /// publish after the will's delay (unless the client reconnects first). A store without
    /// other nodes has nobody to adopt its sessions: there it is [`Self::detach_session`].
    async fn detach_session_keeping_will(
        &self,
        client_id: &ClientId,
        generation: u64,
        session: StoredSession,
    ) -> Result<Detached, StoreError> {
        self.detach_session(client_id, generation, session).await
    }

    /// Ends a session (its connection closed with expiry 0).
    async fn remove_session(
        &self,
        client_id: &str,
        generation: u64,
    ) -> Result<Detached, StoreError>;

    /// Writes a held session's subscription changes through to the store, so another node can
    /// take the session over if this one dies. A store only this node uses does nothing.
    async fn save_subscriptions(
        &self,
        _client_id: &str,
        _generation: u64,
        _added: &[StoredSubscription],
        _removed: &[String],
    ) -> Result<(), StoreError> {
        Ok(())
    }

    /// Takes over the sessions of a node that left the cluster. With `run`, only if that run of
    /// the node is the one registered (or none is): a node that came back under the same id
    /// registered a newer run, and its sessions are its own again (nothing is adopted). A store
    /// only this node uses has none.
    async fn adopt_sessions(
        &self,
        _departed: &str,
        _run: Option<u64>,
    ) -> Result<Adoption, StoreError> {
        Ok(Adoption::default())
    }

    /// Offers a message to a session's queue. Unless `force` is set, a session that is attached
    /// here answers [`Enqueued::Online`] instead of queueing.
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
    ) -> Result<Vec<ExpiredSession>, StoreError>;

    /// Number of sessions, online and offline.
    async fn session_count(&self) -> Result<usize, StoreError>;

    /// What the store holds of one session, online or offline, without claiming it (the admin
    /// API's session lookup); `None` when there is no such session.
    async fn session_summary(&self, client_id: &str) -> Result<Option<SessionSummary>, StoreError>;
}

/// What the store holds of one session (see [`Store::session_summary`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionSummary {
    /// Whether a connection holds it (or a node is claiming it) right now.
    pub online: bool,
    /// The node that holds it, or last held it (unknown to a standalone node's store: its own).
    pub node: Option<String>,
    /// How long it outlives its connection, in seconds, as recorded when it went offline.
    pub expiry_secs: Option<u32>,
    /// When it went offline (ms since the Unix epoch).
    pub disconnected_at_ms: Option<u64>,
    /// Messages queued for it in the store (while it is online: only those forced into the store
    /// meanwhile; the rest are in its connection's memory).
    pub queued: usize,
    /// Messages sent to it but not yet acknowledged, as stored (online: in its connection).
    pub inflight: usize,
}

/// `at` as milliseconds since the Unix epoch (0 before it).
pub(crate) fn millis_since_epoch(at: SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A queued message on topic `t` for unit tests.
#[cfg(test)]
pub(crate) fn test_queued(payload: &'static str, qos: QoS) -> QueuedMessage {
    QueuedMessage::new(
        Arc::new(Message {
            topic: "t".into(),
            payload: bytes::Bytes::from_static(payload.as_bytes()),
            qos,
            retain: false,
            properties: crate::message::MessageProperties::default(),
            expires_at: None,
            publisher: None,
            received_at: None,
        }),
        qos,
        false,
        vec![],
    )
}
