//! The relay between cluster nodes, over Redis.
//!
//! - **Entries**: each node keeps the set of filters its sessions subscribe to in
//!   `<prefix>v1:node:<id>:entries` and announces every change on the Pub/Sub channel
//!   `<prefix>v1:entries` (`<node>\n+<filter>` or `<node>\n-<filter>`). Every node keeps a replica
//!   of the others' entries ([`RemoteFilters`]), rebuilt from the sets at start and whenever the
//!   announcement channel reconnects, so a missed announcement heals.
//! - **Messages**: a publish that originated here is matched against the replica and appended once
//!   to the inbox stream `<prefix>v1:inbox:<node>` of each node that needs it, with the origin node
//!   id; the messages of one write batch for one node share a stream entry ([`packed`]). A node
//!   reads only its own inbox and delivers what it reads locally, never relaying it again, so
//!   nothing loops.
//!
//! Writes are batched by one writer (pipelined) on a thread of its own; reads use their own
//! connections, as `XREAD BLOCK` and Pub/Sub would hold up a shared connection.
//! - **Session hand-over**: control entries in the same inbox streams (field `k`): `release`
//!   asks the node holding a session on a connection to hand it over to the claimer, which is
//!   answered by `released`; `forget` tells the node a session was parked on that another node
//!   took it; `direct` carries a message for one session that moved while the message was on its
//!   way.
//! - **Share groups**: nodes advertise `$share/<group>/<filter>` entries too. For each group with
//!   members elsewhere, the publishing node picks the one node that serves this message (rotating
//!   over the nodes with members, itself included when it has an online member) and says so in the
//!   inbox entry; a receiving node serves only the groups it was given.

use super::health::{self, Health};
use watchers::{watch_entries, watch_health, Resync};
mod watchers;

use super::inbox;
use super::journal::{self, JournalHold, JournalReservation};
use super::listed;
use super::packed::{self, Packer};
use super::pending::PendingRelays;
use super::redis_clock::RedisClock;
use super::refusals;
use super::replica::{Listing, Replica};
use super::replication::{ReplicationWait, Waited};
use super::window::{parse_stream_id, Unread};
use super::work_queue::WorkQueue;
use crate::broker::{Broker, GroupKey};
use crate::message::ClientId;
use crate::message::Message;
use crate::router::memo::RouteMemo;
use crate::router::remote::{choose_shared, NodeId, SharedChoice};
use crate::store::redis::codec;
use crate::store::redis::renewing::RenewingConnection;
use crate::store::redis::target::RedisTarget;
use crate::store::QueuedMessage;
use parking_lot::{Mutex, RwLock};
use redis::aio::{ConnectionManagerConfig, MultiplexedConnection};
use redis::Value;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{oneshot, watch, Semaphore};

/// Messages kept per inbox stream (approximate trimming); a node that falls this far behind loses
/// the oldest. A packed entry counts for the messages it holds (see [`append_packed`]).
const INBOX_MAX_LEN: usize = 100_000;
/// Work the writer gathers into one pipeline: relayed messages, and other items (see [`weight`]).
const WRITE_BATCH: usize = 4096;
/// Size at which a packed inbox entry (messages for one node) is written out and another begun.
const PACK_BYTES: usize = 64 * 1024;
/// Messages this node may have in a node's inbox that its reader has not reported read before
/// the writer waits (and the relay queue pushes back on publishers). Well below
/// [`INBOX_MAX_LEN`], so trimming does not drop unread messages of a few busy origins.
const RELAY_WINDOW: usize = INBOX_MAX_LEN / 4;
/// How long the writer waits for a reader that does not move before it stops waiting for it.
const WINDOW_WAIT: Duration = Duration::from_secs(1);
/// How often the writer asks for the progress of a reader it waits for.
const WINDOW_POLL: Duration = Duration::from_millis(2);
/// Relayed messages waiting for the writer before publishers wait for room (see
/// [`ClusterLink::send_pending`]). Other writer work (entries, control entries, journal writes)
/// is not bounded here: what produces it is bounded elsewhere.
const WRITE_QUEUE: usize = 65_536;
/// How long the writer waits for Redis to answer a batch before it writes the batch again. A
/// batch Redis applied but answered late would be written twice (relayed twice), so this is far
/// above any stall of a healthy Redis (the client's default is 500 ms); a Redis that went away
/// closes the connection and is noticed at once, and one that went silent for good is given up
/// [`STRANDED_GRACE`] after the health check reached Redis on a new connection.
const WRITE_RESPONSE_WAIT: Duration = Duration::from_secs(30);
/// How long the writer still waits for its batch's answer once Redis answered the health check
/// on a new connection: an answer that does not come by then never will (the connection leads
/// to a Redis that is gone), and the batch is written again on a new connection. A Redis that
/// was only stalled answers the old connection's batch as soon as it runs again.
const STRANDED_GRACE: Duration = Duration::from_secs(2);
/// How long a publisher's acknowledgement waits for the writer to confirm that Redis has what
/// the publish wrote (see [`ClusterLink::barrier`]).
pub const CONFIRM_WAIT: Duration = Duration::from_secs(5);
/// How long a node claiming a session waits for the node holding it to hand it over, before it
/// takes what the store has (the holder is presumed dead or cut off).
pub const HANDOVER_WAIT: Duration = Duration::from_secs(5);

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
#[error("cluster relay: {0}")]
pub struct RelayError(String);

fn relay_error(e: impl std::fmt::Display) -> RelayError {
    RelayError(e.to_string())
}

enum Outbound {
    Entry {
        raw: String,
        added: bool,
    },
    /// This node's listing marker: every entry queued before it is in Redis.
    Listed(String),
    /// The relayed messages of a publishing connection's burst, already packed per node by the
    /// connection; the writer appends them to each node's packed entry. Each holds a place in the bounded part of the queue (a
    /// permit of `forward_room`), given back once written.
    Relays(PendingRelays),
    /// A copy recorded in this node's delivery journal.
    Journal {
        field: String,
        value: Vec<u8>,
    },
    /// A journal field whose copy is done with.
    Unjournal(String),
    /// Deletes handled inbox entries (XDEL) or recovered journal fields (HDEL).
    Delete {
        command: &'static str,
        key: String,
        ids: Vec<String>,
    },
    /// Entries of this node's inbox it handled: deleted, and the last reported read.
    InboxHandled(Vec<String>),
    /// Answered once everything queued before it is in Redis.
    Barrier(oneshot::Sender<()>),
    Control {
        node: NodeId,
        fields: Vec<(&'static str, Vec<u8>)>,
    },
    /// A departed node's registration, removed unless a newer run than this one holds it.
    DropNode {
        node: NodeId,
        run: Option<u64>,
    },
}

/// Field of an inbox entry written again after a write whose outcome was unknown (the
/// connection broke, or hung, before Redis answered): Redis may have applied the first write
/// too, so what it relays may have been delivered already, and it is delivered with DUP.
pub(super) const FIELD_RESENT: &str = "d";

/// A copy of `sent` to send again after its outcome was unknown: every inbox append marked
/// [`FIELD_RESENT`], every reply ignored (what the first attempt answered is not known either).
fn marked_resent(sent: &redis::Pipeline, keys: &Keys) -> redis::Pipeline {
    let inbox_prefix = keys.inbox("");
    let mut again = redis::pipe();
    for command in sent.cmd_iter() {
        let mut args = command.args_iter();
        let is_xadd = matches!(args.next(), Some(redis::Arg::Simple(name)) if name.eq_ignore_ascii_case(b"XADD"));
        let to_inbox = matches!(args.next(), Some(redis::Arg::Simple(key)) if key.starts_with(inbox_prefix.as_bytes()));
        let mut command = command.clone();
        if is_xadd && to_inbox {
            command.arg(FIELD_RESENT).arg("1");
        }
        again.add_command(command).ignore();
    }
    again
}

/// Removes a departed run's registration (see the script's header).
const DROP_NODE: &str = include_str!("relay/drop_node.lua");

/// Kinds of control entries (field `k`).
const KIND_RELEASE: &[u8] = b"release";
const KIND_RELEASED: &[u8] = b"released";
const KIND_FORGET: &[u8] = b"forget";
pub(super) const KIND_DIRECT: &[u8] = b"direct";
/// A node's note to itself that a departed session's routes may go (see [`super::handoff`]).
const KIND_UNROUTE: &[u8] = b"unroute";
/// A node's word to the node a session moved from that it routes the session now.
const KIND_ROUTED: &[u8] = b"routed";

/// A claim waiting for its holder's answer.
type Waiters = HashMap<(ClientId, u64), (NodeId, oneshot::Sender<()>)>;

/// Key names under one prefix.
#[derive(Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn entries(&self, node: &str) -> String {
        format!("{}v1:node:{node}:entries", self.prefix)
    }
    fn nodes(&self) -> String {
        format!("{}v1:nodes", self.prefix)
    }
    fn channel(&self) -> String {
        format!("{}v1:entries", self.prefix)
    }
    fn inbox(&self, node: &str) -> String {
        format!("{}v1:inbox:{node}", self.prefix)
    }
    fn journal(&self, node: &str) -> String {
        format!("{}v1:journal:{node}", self.prefix)
    }
    /// The counter a node's writer increments before each replication wait (see
    /// [`super::replication`]).
    fn replicated(&self, node: &str) -> String {
        format!("{}v1:node:{node}:replicated", self.prefix)
    }
    fn inbox_read(&self, node: &str) -> String {
        format!("{}v1:inbox:{node}:read", self.prefix)
    }
    /// A node's listing marker (see [`super::listed`]).
    fn listed(&self, node: &str) -> String {
        format!("{}v1:node:{node}:listed", self.prefix)
    }
    /// The run a node registered as it last started (see [`ClusterLink::run`]).
    fn run(&self, node: &str) -> String {
        format!("{}v1:node:{node}:run", self.prefix)
    }
    fn epoch(&self) -> String {
        format!("{}v1:epoch", self.prefix)
    }
}

/// This node's end of the relay: what the broker core calls.
pub struct ClusterLink {
    node_id: NodeId,
    remote: Replica,
    /// Numbers this run's listing markers.
    listing_seq: AtomicU64,
    outbound: Arc<WorkQueue<Outbound>>,
    forward_room: Arc<Semaphore>,
    /// Set when a wait for room in the relay queue timed out (the writer does not move, e.g.
    /// Redis is away); until the queue has room again, QoS 0 relays are dropped without waiting.
    forward_stalled: AtomicBool,
    keys: Keys,
    /// Identifies this run of the node in its journal fields.
    run: u64,
    journal_seq: AtomicU64,
    /// The first inbox entry id this run reads; older ones are an earlier run's leftovers.
    inbox_start: String,
    /// Where Redis is (asked again at every reconnection: with Sentinel, it moves).
    target: RedisTarget,
    waiting: Mutex<Waiters>,
    departed: RwLock<HashSet<NodeId>>,
    health: Health,
    /// Inbox entries older than this (ms, Redis's clock, which stream ids follow) were relayed
    /// while the cluster held this node dead; 0 when it never did (see [`Self::is_suspect`]).
    suspect_before_ms: AtomicU64,
    /// Redis's clock, as this node estimates it.
    redis_clock: RedisClock,
    /// Counts the health checks that Redis answered on a new connection after the old one had
    /// timed out, or as another server (it lost its data, or Sentinel named a new primary):
    /// connections opened before may hang for good (a Redis replaced at a new address behind the
    /// same one), and the writer stops waiting on its own (see [`STRANDED_GRACE`]).
    reconnected: watch::Sender<u64>,
    /// `starling_cluster_redis_write_refusals_total`.
    write_refusals: prometheus_client::metrics::counter::Counter,
    /// How acknowledgements wait for Redis replicas (`None`: they do not).
    replication: Option<ReplicationWait>,
    /// `starling_cluster_replication_waits_total` and `…_short_total`.
    replication_waits: prometheus_client::metrics::counter::Counter,
    replication_waits_short: prometheus_client::metrics::counter::Counter,
}

impl Drop for ClusterLink {
    /// Wakes the writer to end (shutdown waits for a barrier first, so nothing is left queued).
    fn drop(&mut self) {
        self.outbound.close();
    }
}

impl ClusterLink {
    /// Connects to Redis, registers this node (forgetting entries a previous run left), and
    /// starts the writer, the inbox reader and the entries watcher. Received messages are
    /// delivered through `broker`.
    pub async fn start(
        target: &RedisTarget,
        node_id: &str,
        prefix: &str,
        broker: &Arc<Broker>,
    ) -> Result<Arc<Self>, RelayError> {
        let mut writer = RenewingConnection::connect(
            target.clone(),
            ConnectionManagerConfig::new(),
            "cluster health and entries",
        )
        .await
        .map_err(relay_error)?;
        let keys = Keys {
            prefix: prefix.to_string(),
        };
        let mut inbox = inbox::inbox_connection(target).await.map_err(relay_error)?;
        // Read what arrives from now on (by Redis's clock, which stream ids follow); what an
        // earlier run of this node left is recovered separately (see `recovery`).
        let (seconds, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut inbox)
            .await
            .map_err(relay_error)?;
        let now_ms = seconds * 1000 + micros / 1000;
        // One step, so that an adopter removing an earlier run's registration (drop_node.lua)
        // finds either all of the old one or the new run.
        redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(keys.entries(node_id))
            .arg(keys.listed(node_id))
            .ignore()
            .cmd("SADD")
            .arg(keys.nodes())
            .arg(node_id)
            .ignore()
            .cmd("SET")
            .arg(keys.run(node_id))
            .arg(now_ms)
            .ignore()
            .query_async::<()>(&mut writer)
            .await
            .map_err(relay_error)?;
        let outbound = Arc::new(WorkQueue::default());
        let link = Arc::new(ClusterLink {
            node_id: node_id.into(),
            remote: Replica::default(),
            listing_seq: AtomicU64::new(0),
            outbound: outbound.clone(),
            forward_room: Arc::new(Semaphore::new(WRITE_QUEUE)),
            forward_stalled: AtomicBool::new(false),
            keys,
            run: now_ms,
            journal_seq: AtomicU64::new(0),
            inbox_start: format!("{now_ms}-0"),
            target: target.clone(),
            waiting: Mutex::new(HashMap::new()),
            departed: RwLock::new(HashSet::new()),
            health: Health::default(),
            suspect_before_ms: AtomicU64::new(0),
            redis_clock: RedisClock::default(),
            reconnected: watch::Sender::new(0),
            write_refusals: broker.metrics.redis_write_refusals.clone(),
            replication: ReplicationWait::from_config(&broker.config.cluster.redis_replication),
            replication_waits: broker.metrics.replication_waits.clone(),
            replication_waits_short: broker.metrics.replication_waits_short.clone(),
        });
        let reading = health::read(&mut writer, &link.keys.epoch(), &link.keys.nodes(), node_id)
            .await
            .map_err(relay_error)?;
        link.health.check_epoch(&reading.epoch);
        link.redis_clock.observe(reading.redis_ms);
        link.resync(&mut writer, broker, Resync::Merge)
            .await
            .map_err(relay_error)?;
        let response_wait = WRITE_RESPONSE_WAIT.max(link.confirm_wait() + Duration::from_secs(5));
        spawn_writer(
            Arc::downgrade(&link),
            target.clone(),
            outbound,
            response_wait,
        )?;
        tokio::spawn(watch_health(
            link.clone(),
            writer.clone(),
            Arc::downgrade(broker),
        ));
        inbox::start_reading(
            link.clone(),
            target.clone(),
            link.keys.inbox(node_id),
            link.inbox_start.clone(),
            (link.keys.epoch(), link.health.epoch()),
            inbox,
            Arc::downgrade(broker),
        );
        tokio::spawn(watch_entries(
            link.clone(),
            target.clone(),
            writer,
            Arc::downgrade(broker),
        ));
        Ok(link)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Changes whenever the health check answered on a new connection after the old one had
    /// timed out: connections opened before may hang for good.
    pub(super) fn reconnections(&self) -> watch::Receiver<u64> {
        self.reconnected.subscribe()
    }

    /// How long an acknowledgement may wait for the barrier behind its writes ([`CONFIRM_WAIT`],
    /// plus the replication wait when one is configured).
    pub fn confirm_wait(&self) -> Duration {
        CONFIRM_WAIT
            + self
                .replication
                .map_or(Duration::ZERO, |wait| wait.timeout())
    }

    /// Whether Redis answered the last health check. While it does not, the node is degraded:
    /// local delivery goes on, but sessions cannot be claimed and nothing is relayed.
    pub fn redis_up(&self) -> bool {
        self.health.redis_up()
    }

    /// Redis as this node sees it (what `/readyz` reports).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The cluster had declared this node dead until `redis_now_ms` (Redis's clock): inbox
    /// entries relayed before then may have been delivered already by the adopter's recovery.
    pub(super) fn declared_dead_until(&self, redis_now_ms: u64) {
        self.suspect_before_ms
            .fetch_max(redis_now_ms, Ordering::Relaxed);
    }

    /// Now on Redis's clock (ms), as this node estimates it: what inbox entry ids are compared
    /// with.
    pub fn redis_now_ms(&self) -> u64 {
        self.redis_clock.now_ms()
    }

    /// Whether an inbox entry appended at `appended_ms` (Redis's clock, the ms of its stream id)
    /// was relayed before this node noticed that the cluster had declared it dead: its copies
    /// are delivered marked DUP.
    pub(super) fn is_suspect(&self, appended_ms: u64) -> bool {
        let before = self.suspect_before_ms.load(Ordering::Relaxed);
        before != 0 && appended_ms < before
    }

    /// Counts relay writes Redis refused.
    fn metrics_refused(&self, n: usize) {
        self.write_refusals.inc_by(n as u64);
    }

    /// Appends a control entry of `kind` about `client_id` to `node`'s inbox, with more fields.
    fn send_control(
        &self,
        node: &str,
        kind: &[u8],
        client_id: &str,
        more: Vec<(&'static str, Vec<u8>)>,
    ) {
        let mut fields = vec![("k", kind.to_vec()), ("c", client_id.as_bytes().to_vec())];
        fields.extend(more);
        self.queue(Outbound::Control {
            node: node.into(),
            fields,
        });
    }

    /// Hands work to the writer (which lives as long as the link).
    fn queue(&self, item: Outbound) {
        if self.outbound.push(item).is_err() {
            tracing::warn!("relay writer gone: work dropped");
        }
    }

    /// Records a copy of a QoS 1/2 message for `client_id`, a persistent session connected here,
    /// in this node's delivery journal; the returned hold deletes the record when the copy is
    /// dropped (see [`super::journal`]).
    pub fn journal(
        self: &Arc<Self>,
        client_id: &str,
        queued: &QueuedMessage,
    ) -> Option<JournalHold> {
        let value = match journal::encode_value(client_id, queued) {
            Ok(value) => value,
            Err(e) => {
                tracing::warn!(error = %e, "copy not journalled: encoding failed");
                return None;
            }
        };
        let seq = self.journal_seq.fetch_add(1, Ordering::Relaxed);
        let field = journal::field(self.run, seq);
        self.queue(Outbound::Journal {
            field: field.clone(),
            value,
        });
        Some(JournalHold::new(field, Arc::downgrade(self)))
    }

    /// Reserves journal fields for the copies a claim of `client_id`'s session moves out of the
    /// store; the claim's script journals them (see [`super::journal`]).
    pub fn reserve_journal(self: &Arc<Self>, client_id: &str) -> JournalReservation {
        JournalReservation::new(
            self.keys.journal(&self.node_id),
            self.run,
            self.journal_seq.fetch_add(1, Ordering::Relaxed),
            client_id,
            Arc::downgrade(self),
        )
    }

    /// Deletes `ids` of `key` (`XDEL` or `HDEL`) once the writer has written everything queued
    /// before.
    pub(super) fn delete_after_writes(&self, command: &'static str, key: &str, ids: Vec<String>) {
        self.queue(Outbound::Delete {
            command,
            key: key.to_string(),
            ids,
        });
    }

    /// This node handled entries `ids` (in order) of its inbox: once everything queued before
    /// is written (the journal writes of their deliveries), they are deleted and the last is
    /// reported read, for the other nodes' writers (see [`super::window`]).
    pub(super) fn inbox_handled(&self, ids: Vec<String>) {
        if !ids.is_empty() {
            self.queue(Outbound::InboxHandled(ids));
        }
    }

    /// A connection for recovering a node's leftovers. Its pages (whole journals, hundreds of
    /// packed inbox entries) may take Redis longer than the client's default of 500 ms to send.
    pub(super) async fn recovery_connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(health::CONNECT_TIMEOUT))
            .set_response_timeout(Some(health::RESPONSE_TIMEOUT));
        self.target
            .client()
            .await?
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// The journal hash of `node`.
    pub(super) fn journal_key(&self, node: &str) -> String {
        self.keys.journal(node)
    }

    /// The inbox stream of `node`.
    pub(super) fn inbox_key(&self, node: &str) -> String {
        self.keys.inbox(node)
    }

    /// This run of the node: when it started, in ms of Redis's clock. Its journal fields name
    /// it, it is registered in Redis and published with the node's gossip, so that what is done
    /// about a departed run never touches a newer run of the same node id.
    pub fn run(&self) -> u64 {
        self.run
    }

    /// The run `node` registered as it last started; `None` if none is registered (it was
    /// removed with the node's adoption, or the node predates runs).
    pub(super) async fn registered_run(
        &self,
        con: &mut MultiplexedConnection,
        node: &str,
    ) -> redis::RedisResult<Option<u64>> {
        let run: Option<String> = redis::cmd("GET")
            .arg(self.keys.run(node))
            .query_async(con)
            .await?;
        Ok(run.and_then(|r| r.parse().ok()))
    }

    /// The first inbox entry id this run reads.
    pub(super) fn inbox_start(&self) -> &str {
        &self.inbox_start
    }

    /// Whether gossip reported `node` gone (and not back since).
    pub fn is_departed(&self, node: &str) -> bool {
        self.departed.read().contains(node)
    }

    /// Deletes a journal field (its copy is done with).
    pub(super) fn release_journal(&self, field: String) {
        self.queue(Outbound::Unjournal(field));
    }

    /// Resolves once everything handed to the writer before this call is in Redis: a QoS 1/2
    /// publish is acknowledged only after that, so a node killed afterwards loses nothing of it.
    /// Never resolves while Redis is unreachable (the caller bounds its wait).
    pub fn barrier(&self) -> oneshot::Receiver<()> {
        let (done, confirmed) = oneshot::channel();
        self.queue(Outbound::Barrier(done));
        confirmed
    }

    /// Asks `holder`, whose connection holds a session this node claimed, to hand it over, and
    /// waits for its answer: at most [`HANDOVER_WAIT`], and not at all for a node gossip
    /// reported gone. Returns whether the holder answered.
    pub async fn request_release(
        &self,
        holder: &str,
        client_id: &ClientId,
        generation: u64,
    ) -> bool {
        if self.departed.read().contains(holder) {
            return false;
        }
        let (done, answered) = oneshot::channel();
        self.waiting
            .lock()
            .insert((client_id.clone(), generation), (holder.into(), done));
        self.send_control(
            holder,
            KIND_RELEASE,
            client_id,
            vec![
                ("n", generation.to_string().into_bytes()),
                ("o", self.node_id.as_bytes().to_vec()),
            ],
        );
        let answered = matches!(
            tokio::time::timeout(HANDOVER_WAIT, answered).await,
            Ok(Ok(()))
        );
        self.waiting.lock().remove(&(client_id.clone(), generation));
        if !answered {
            tracing::warn!(node = holder, client_id = %client_id, "no hand-over from the node holding the session: taking what the store has");
        }
        answered
    }

    /// Tells the node a session was parked on that it is gone from there (`claimed` by this
    /// node, or expired), with the subscriptions to drop.
    pub fn forget_parked(&self, node: &str, client_id: &str, filters: Vec<String>, claimed: bool) {
        let mut fields = vec![("f", filters.join("\0").into_bytes())];
        if claimed {
            fields.push(("o", self.node_id.as_bytes().to_vec()));
        }
        self.send_control(node, KIND_FORGET, client_id, fields);
    }

    /// Appends to this node's own inbox the note that the routes a departed session left here
    /// may go: entries relayed here before it are handled first (see [`super::handoff`]).
    pub fn send_unroute(&self, client_id: &str, token: u64) {
        self.send_control(
            &self.node_id.clone(),
            KIND_UNROUTE,
            client_id,
            vec![("t", token.to_string().into_bytes())],
        );
    }

    /// Whether, in this node's replica, `node` advertises every one of `entries`.
    pub fn advertised_by(&self, node: &str, entries: &[String]) -> bool {
        let remote = self.remote.read();
        entries.iter().all(|raw| remote.advertises(node, raw))
    }

    /// Tells the node a session moved from that this node routes it now: its subscriptions are
    /// in this node's routing tree (see [`super::handoff`]).
    pub fn routed_here(&self, old_node: &str, client_id: &str) {
        self.send_control(
            old_node,
            KIND_ROUTED,
            client_id,
            vec![("o", self.node_id.as_bytes().to_vec())],
        );
    }

    /// Sends a message on to the node that holds its session now.
    pub fn send_direct(&self, node: &str, client_id: &str, queued: &QueuedMessage) {
        match codec::encode_queued(queued) {
            Ok(encoded) => self.send_control(node, KIND_DIRECT, client_id, vec![("q", encoded)]),
            Err(e) => tracing::warn!(error = %e, "message not sent on: encoding failed"),
        }
    }

    /// Gossip reported a node gone: claims waiting for it stop waiting.
    pub fn node_departed(&self, node: &str) {
        self.departed.write().insert(node.into());
        let mut waiting = self.waiting.lock();
        let gone: Vec<_> = waiting
            .iter()
            .filter(|(_, (holder, _))| &**holder == node)
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            if let Some((_, done)) = waiting.remove(&key) {
                let _ = done.send(());
            }
        }
    }

    /// Gossip reported a node (back) in the cluster.
    pub fn node_joined(&self, node: &str) {
        self.departed.write().remove(node);
    }

    /// The nodes registered in Redis (each adds itself when it starts; a departed node's
    /// registration goes with its adoption), each with the run it registered, if any.
    pub async fn registered_nodes(&self) -> redis::RedisResult<HashMap<String, Option<u64>>> {
        let mut con = self.recovery_connection().await?;
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.nodes())
            .query_async(&mut con)
            .await?;
        let mut registered = HashMap::with_capacity(nodes.len());
        for node in nodes {
            let run = self.registered_run(&mut con, &node).await?;
            registered.insert(node, run);
        }
        Ok(registered)
    }

    /// Removes a departed node's registration and entry set, so nobody rebuilds routes to it
    /// from Redis; `run` is the departed run (a newer run's registration stays).
    pub fn remove_node_entries(&self, node: &str, run: Option<u64>) {
        self.queue(Outbound::DropNode {
            node: node.into(),
            run,
        });
    }

    /// Handles a control entry read from this node's inbox.
    pub(super) fn on_control(
        self: &Arc<Self>,
        kind: &[u8],
        field: &dyn Fn(&[u8]) -> Option<Vec<u8>>,
        broker: &Arc<Broker>,
    ) {
        let text = |name: &[u8]| field(name).and_then(|v| String::from_utf8(v).ok());
        let Some(client) = text(b"c") else {
            tracing::warn!("control entry without a client id skipped");
            return;
        };
        let client: ClientId = client.into();
        match kind {
            KIND_RELEASE => {
                let (Some(requester), Some(generation)) =
                    (text(b"o"), text(b"n").and_then(|n| n.parse::<u64>().ok()))
                else {
                    tracing::warn!("unreadable release request skipped");
                    return;
                };
                let link = self.clone();
                let broker = broker.clone();
                tokio::spawn(async move {
                    broker.release_session(&client, &requester).await;
                    link.send_control(
                        &requester,
                        KIND_RELEASED,
                        &client,
                        vec![("n", generation.to_string().into_bytes())],
                    );
                });
            }
            KIND_RELEASED => {
                if let Some(generation) = text(b"n").and_then(|n| n.parse::<u64>().ok()) {
                    if let Some((_, done)) = self.waiting.lock().remove(&(client, generation)) {
                        let _ = done.send(());
                    }
                }
            }
            KIND_FORGET => {
                let filters: Vec<String> = text(b"f")
                    .map(|f| {
                        f.split('\0')
                            .filter(|f| !f.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                match text(b"o") {
                    Some(claimer) => broker.forget_parked(&client, filters, claimer.into()),
                    None => broker.forget_expired(&client, &filters),
                }
            }
            KIND_ROUTED => match text(b"o") {
                Some(from) => broker.routed_elsewhere(&client, &from),
                None => tracing::warn!("unreadable routed note skipped"),
            },
            KIND_UNROUTE => match text(b"t").and_then(|t| t.parse::<u64>().ok()) {
                Some(token) => broker.unroute(&client, token),
                None => tracing::warn!("unreadable unroute note skipped"),
            },
            other => {
                tracing::warn!(kind = %String::from_utf8_lossy(other), "unknown control entry skipped")
            }
        }
    }

    /// Every entry of this node was queued again (after [`Self::entry_changed`] for each): once
    /// they are in Redis, its marker tells the other nodes the set is complete (see
    /// [`super::listed`]). Without a known epoch there is nothing to tie the marker to.
    pub fn entries_listed(&self) {
        if let Some(epoch) = self.health.epoch() {
            let seq = self.listing_seq.fetch_add(1, Ordering::Relaxed) + 1;
            self.queue(Outbound::Listed(listed::marker(self.run, seq, &epoch)));
        }
    }

    /// A local entry got its first subscriber (`added`) or lost its last one.
    pub fn entry_changed(&self, raw: &str, added: bool) {
        self.queue(Outbound::Entry {
            raw: raw.to_string(),
            added,
        });
    }

    /// Adds a message that was published on this node to `pending`, for the inbox of every other
    /// node that has a matching entry, and decides which node serves each share group with
    /// members elsewhere. Returns the groups another node serves (this node must skip them).
    /// `pending` goes to the writer with [`Self::send_pending`].
    pub fn forward(
        &self,
        broker: &Broker,
        message: &Arc<Message>,
        memo: &mut RouteMemo,
        pending: &mut PendingRelays,
    ) -> Vec<GroupKey> {
        if message.topic.starts_with("$SYS") {
            return Vec::new();
        }
        let route = {
            let remote = self.remote.read();
            let generation = remote.generation();
            if let Some(nodes) = memo.remote(generation) {
                pending.push(message, nodes.iter().map(|node| (node, &[][..])));
                return Vec::new();
            }
            let route = remote.route(&message.topic);
            if route.groups.is_empty() {
                memo.keep_remote(generation, route.nodes.clone());
            }
            route
        };
        if route.nodes.is_empty() && route.groups.is_empty() {
            return Vec::new();
        }
        // Each node gets the message once, with the groups it was chosen to serve.
        let mut targets: Vec<(NodeId, Vec<GroupKey>)> =
            route.nodes.into_iter().map(|n| (n, Vec::new())).collect();
        let mut served_elsewhere = Vec::new();
        for group in route.groups {
            let (online, any) = broker.local_group_presence(&group.filter, &group.group);
            if let SharedChoice::Remote(node) =
                choose_shared(online, any, &group.nodes, group.start)
            {
                let key = (group.group, group.filter);
                match targets.iter_mut().find(|(n, _)| *n == node) {
                    Some((_, groups)) => groups.push(key.clone()),
                    None => targets.push((node, vec![key.clone()])),
                }
                served_elsewhere.push(key);
            }
        }
        pending.push(
            message,
            targets
                .iter()
                .map(|(node, groups)| (node, groups.as_slice())),
        );
        served_elsewhere
    }

    /// Hands the relayed messages of a burst to the writer. When the relay queue has no room
    /// for them the publisher waits, at most `patience`: it is held to the relay's pace, as a
    /// full mailbox holds it to a subscriber's. What the queue does not take in time is dropped
    /// and counted, and the queue counts as stalled until it has room again; while it is
    /// stalled, QoS 0 messages are dropped (and counted) without waiting.
    pub async fn send_pending(
        &self,
        pending: &mut PendingRelays,
        patience: Duration,
        broker: &Broker,
    ) {
        if pending.is_empty() || self.try_send_pending(pending) {
            return;
        }
        Box::pin(self.send_pending_when_room(pending.take(), patience, broker)).await
    }

    /// Hands `pending` over if the queue has room for all of it now.
    fn try_send_pending(&self, pending: &mut PendingRelays) -> bool {
        let Ok(permits) = self
            .forward_room
            .try_acquire_many(permit_count(pending.len()))
        else {
            return false;
        };
        // Given back by the writer once written (see `write_loop`).
        permits.forget();
        // Read first: a store on every burst would bounce the flag's cache line between the
        // publishing threads.
        if self.forward_stalled.load(Ordering::Relaxed) {
            self.forward_stalled.store(false, Ordering::Relaxed);
        }
        self.queue(Outbound::Relays(pending.take()));
        true
    }

    async fn send_pending_when_room(
        &self,
        mut pending: PendingRelays,
        patience: Duration,
        broker: &Broker,
    ) {
        if self.forward_stalled.load(Ordering::Relaxed) {
            let dropped = pending.drop_at_most_once();
            broker.metrics.relay_dropped.inc_by(dropped as u64);
            if pending.is_empty() || self.try_send_pending(&mut pending) {
                return;
            }
        }
        broker.metrics.relay_waits.inc_by(pending.len() as u64);
        let room = tokio::time::timeout(
            patience,
            self.forward_room.acquire_many(permit_count(pending.len())),
        )
        .await;
        match room {
            Ok(Ok(permits)) => {
                permits.forget();
                self.queue(Outbound::Relays(pending));
            }
            _ => {
                self.forward_stalled.store(true, Ordering::Relaxed);
                broker.metrics.relay_dropped.inc_by(pending.len() as u64);
            }
        }
    }

    /// Forgets a node that left the cluster from the replica (the node that adopts its sessions
    /// also deletes its entry set from Redis, see [`Self::remove_node_entries`]).
    pub async fn forget_node(&self, node: &str, broker: &Broker) {
        let (removed, size) = self.remote.forget(&NodeId::from(node));
        broker.metrics.remote_entries.set(size as i64);
        tracing::debug!(node, removed, "forgot a departed node's entries");
    }

    /// Rebuilds the replica of the other nodes' entries from what they keep in Redis (see
    /// [`Resync`]); announcements that arrive meanwhile are not undone (see [`super::replica`]).
    async fn resync(
        &self,
        con: &mut RenewingConnection,
        broker: &Broker,
        how: Resync<'_>,
    ) -> redis::RedisResult<Resynced> {
        let read = self.remote.begin_listing_read();
        let (epoch, nodes): (Option<String>, Vec<String>) = redis::pipe()
            .cmd("GET")
            .arg(self.keys.epoch())
            .cmd("SMEMBERS")
            .arg(self.keys.nodes())
            .query_async(con)
            .await?;
        let epoch = epoch.unwrap_or_default();
        let mut listings = Vec::new();
        let mut resynced = Resynced::default();
        for node in nodes.into_iter().filter(|n| **n != *self.node_id) {
            let (entries, marker): (Vec<String>, Option<String>) = redis::pipe()
                .cmd("SMEMBERS")
                .arg(self.keys.entries(&node))
                .cmd("GET")
                .arg(self.keys.listed(&node))
                .query_async(con)
                .await?;
            let node = NodeId::from(node.as_str());
            let replaces = match how {
                Resync::Merge => false,
                Resync::Replace(relisting) => relisting.complete(&node, marker.as_deref(), &epoch),
            };
            if !replaces && matches!(how, Resync::Replace(_)) {
                resynced.incomplete.push(node.clone());
            }
            resynced.markers.insert(node.clone(), marker);
            listings.push(Listing {
                node,
                entries,
                replaces,
            });
        }
        let size = read.apply(listings);
        broker.metrics.remote_entries.set(size as i64);
        broker
            .metrics
            .replica_unlisted
            .inc_by(resynced.incomplete.len() as u64);
        Ok(resynced)
    }

    fn apply_announcement(&self, text: &str, broker: &Broker) {
        let Some((node, change)) = text.split_once('\n') else {
            return;
        };
        if node == &*self.node_id || change == health::HEARTBEAT {
            return;
        }
        let node: NodeId = node.into();
        let size = match change.split_at_checked(1) {
            Some(("+", raw)) => self.remote.announced(&node, raw, true),
            Some(("-", raw)) => self.remote.announced(&node, raw, false),
            _ => {
                tracing::debug!(announcement = text, "unreadable entry announcement");
                return;
            }
        };
        broker.metrics.remote_entries.set(size as i64);
    }
}

/// What a resynchronisation read.
#[derive(Default)]
struct Resynced {
    /// Each other node's listing marker.
    markers: listed::Markers,
    /// Nodes whose sets were only merged by a replacing resynchronisation: they have not listed
    /// everything again yet.
    incomplete: Vec<NodeId>,
}

/// Starts an XADD to `node`'s inbox (trimmed to about [`INBOX_MAX_LEN`] entries); the caller adds
/// the fields.
fn inbox_append<'p>(
    pipe: &'p mut redis::Pipeline,
    keys: &Keys,
    node: &str,
) -> &'p mut redis::Pipeline {
    inbox_append_trimmed(pipe, keys, node, INBOX_MAX_LEN)
}

/// Starts an XADD to `node`'s inbox, trimmed to about `max_len` entries.
fn inbox_append_trimmed<'p>(
    pipe: &'p mut redis::Pipeline,
    keys: &Keys,
    node: &str,
    max_len: usize,
) -> &'p mut redis::Pipeline {
    pipe.cmd("XADD")
        .arg(keys.inbox(node))
        .arg("MAXLEN")
        .arg("~")
        .arg(max_len)
        .arg("*")
}

/// Relayed messages of one write batch, packed per target node (see [`packed`]) until they are
/// appended to the pipeline.
#[derive(Default)]
struct Packs {
    packers: Vec<(NodeId, Packer)>,
    /// The packed entries appended to the pipeline, in order: node and message count. Their
    /// XADD replies (entry ids) are the pipeline's first replies.
    appended: Vec<(NodeId, usize)>,
}

impl Packs {
    /// The index of `node`'s packer, made if it has none yet.
    fn packer_for(&mut self, node: &NodeId) -> usize {
        match self.packers.iter().position(|(n, _)| n == node) {
            Some(index) => index,
            None => {
                self.packers.push((node.clone(), Packer::new()));
                self.packers.len() - 1
            }
        }
    }

    /// Adds the packed messages of a burst for `node`; a packed entry that reaches
    /// [`PACK_BYTES`] is appended at once.
    fn push(
        &mut self,
        pipe: &mut redis::Pipeline,
        link: &ClusterLink,
        node: &NodeId,
        burst: &Packer,
    ) {
        let index = self.packer_for(node);
        let (node, packer) = &mut self.packers[index];
        packer.append(burst);
        if packer.byte_len() >= PACK_BYTES {
            append_packed(pipe, link, node, packer);
            self.appended.push((node.clone(), packer.count()));
            packer.clear();
        }
    }

    /// Appends every packed entry that holds messages to the pipeline. Called before any other
    /// item is appended, so that the entries of each inbox keep the order of the queue.
    fn flush(&mut self, pipe: &mut redis::Pipeline, link: &ClusterLink) {
        for (node, packer) in &mut self.packers {
            if !packer.is_empty() {
                append_packed(pipe, link, node, packer);
                self.appended.push((node.clone(), packer.count()));
                packer.clear();
            }
        }
    }
}

/// The weight of a writer work item, for [`WRITE_BATCH`]: the messages it relays, at least 1.
fn weight(item: &Outbound) -> usize {
    match item {
        Outbound::Relays(relays) => relays.len().max(1),
        _ => 1,
    }
}

/// The places in the relay queue (permits of `forward_room`) that `messages` relayed messages
/// hold.
fn permit_count(messages: usize) -> u32 {
    messages.min(WRITE_QUEUE) as u32
}

/// Appends one packed entry for `node` (its reply is the entry id). The inbox is trimmed to
/// about [`INBOX_MAX_LEN`] messages, counting each entry as holding as many as this one: the
/// bound on what a node that falls behind keeps stays in messages, not in (much larger) packed
/// entries.
fn append_packed(pipe: &mut redis::Pipeline, link: &ClusterLink, node: &str, packer: &Packer) {
    let max_len = INBOX_MAX_LEN.div_ceil(packer.count().max(1));
    inbox_append_trimmed(pipe, &link.keys, node, max_len)
        .arg("o")
        .arg(&*link.node_id)
        .arg(packed::FIELD)
        .arg(packer.as_bytes());
}

/// Flow control of the writer: how far behind each node's reader is (see [`window`]).
#[derive(Default)]
struct Flow {
    unread: Unread,
    /// Nodes whose reader did not move within [`WINDOW_WAIT`]: not waited for again until it does.
    stalled: HashSet<NodeId>,
}

impl Flow {
    /// Applies a reader's progress report (the value of its `:read` key).
    fn progress(&mut self, node: &NodeId, report: Option<Vec<u8>>) {
        let Some(read) = report.as_deref().and_then(parse_stream_id) else {
            return;
        };
        let before = self.unread.messages(node);
        self.unread.read_up_to(node, read);
        if self.unread.messages(node) < before {
            self.stalled.remove(node);
        }
    }

    /// Waits until the readers of the nodes in `targets` are less than [`RELAY_WINDOW`] messages
    /// behind, polling their progress; a reader that does not move within [`WINDOW_WAIT`] (its
    /// node is likely gone) is not waited for until it moves again.
    async fn wait_for_readers(
        &mut self,
        link: &ClusterLink,
        con: &mut RenewingConnection,
        targets: &[NodeId],
    ) {
        for node in targets {
            let started = tokio::time::Instant::now();
            while self.unread.messages(node) >= RELAY_WINDOW && !self.stalled.contains(node) {
                if started.elapsed() >= WINDOW_WAIT {
                    tracing::warn!(node = %node, "relay: the node's inbox reader does not move; not waiting for it");
                    self.stalled.insert(node.clone());
                    break;
                }
                tokio::time::sleep(WINDOW_POLL).await;
                // Bounded by what is left of the wait: on a connection left hanging (a Redis
                // replaced behind the same address) the read would otherwise wait the writer's
                // whole reply wait. A read is safe to give up, and the connection is replaced.
                let left = WINDOW_WAIT
                    .saturating_sub(started.elapsed())
                    .max(WINDOW_POLL);
                let report = tokio::time::timeout(
                    left,
                    redis::cmd("GET")
                        .arg(link.keys.inbox_read(node))
                        .query_async::<Option<Vec<u8>>>(&mut *con),
                )
                .await;
                match report {
                    Ok(Ok(report)) => self.progress(node, report),
                    Ok(Err(_)) => {}
                    Err(_) => con.renew(),
                }
            }
        }
    }
}

/// Runs [`write_loop`] on a thread of its own, with a runtime and a Redis connection of its own:
/// busy connection tasks on the broker's runtime would otherwise leave it waiting for a turn at
/// every step of every batch, and the relay queue would overflow while Redis idles. The thread
/// ends once the link is gone.
fn spawn_writer(
    link: Weak<ClusterLink>,
    target: RedisTarget,
    queue: Arc<WorkQueue<Outbound>>,
    response_wait: Duration,
) -> Result<(), RelayError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(relay_error)?;
    std::thread::Builder::new()
        .name("relay-writer".into())
        .spawn(move || {
            runtime.block_on(async move {
                let con = loop {
                    let config =
                        ConnectionManagerConfig::new().set_response_timeout(Some(response_wait));
                    match RenewingConnection::connect(target.clone(), config, "relay writer").await
                    {
                        Ok(con) => break con,
                        Err(e) => {
                            if link.strong_count() == 0 {
                                return;
                            }
                            tracing::warn!(error = %e, "relay writer cannot reach redis; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                };
                write_loop(link, con, queue).await
            })
        })
        .map_err(relay_error)?;
    Ok(())
}

/// Writes entry changes and relayed messages in pipelined batches, retrying a failed batch
/// until Redis takes it (the connection manager reconnects meanwhile). The messages of a batch
/// bound for one node go in as few inbox entries as [`PACK_BYTES`] allows. Ends when the link
/// is gone (its queue closes).
async fn write_loop(
    weak_link: Weak<ClusterLink>,
    mut con: RenewingConnection,
    queue: Arc<WorkQueue<Outbound>>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut packs = Packs::default();
    let mut flow = Flow::default();
    let Some(mut reconnected) = weak_link.upgrade().map(|link| link.reconnected.subscribe()) else {
        return;
    };
    let mut targets: Vec<NodeId> = Vec::new();
    while queue.take(&mut batch, WRITE_BATCH, weight).await > 0 {
        let Some(link) = weak_link.upgrade() else {
            return;
        };
        targets.clear();
        for item in &batch {
            if let Outbound::Relays(relays) = item {
                for target in &relays.targets {
                    if !targets.contains(&target.node) {
                        targets.push(target.node.clone());
                    }
                }
            }
        }
        flow.wait_for_readers(&link, &mut con, &targets).await;
        let mut pipe = redis::pipe();
        for item in &batch {
            if let Outbound::Relays(relays) = item {
                for target in &relays.targets {
                    packs.push(&mut pipe, &link, &target.node, &target.records);
                }
                continue;
            }
            packs.flush(&mut pipe, &link);
            match item {
                Outbound::Entry { raw, added } => {
                    let (command, sign) = if *added { ("SADD", '+') } else { ("SREM", '-') };
                    pipe.cmd(command)
                        .arg(link.keys.entries(&link.node_id))
                        .arg(raw)
                        .ignore();
                    pipe.cmd("PUBLISH")
                        .arg(link.keys.channel())
                        .arg(format!("{}\n{sign}{raw}", link.node_id))
                        .ignore();
                }
                Outbound::Listed(marker) => {
                    pipe.cmd("SET")
                        .arg(link.keys.listed(&link.node_id))
                        .arg(marker)
                        .ignore();
                }
                // Packed above.
                Outbound::Relays(_) => {}
                Outbound::Control { node, fields } => {
                    let xadd = inbox_append(&mut pipe, &link.keys, node);
                    for (name, value) in fields {
                        xadd.arg(*name).arg(value.as_slice());
                    }
                    xadd.ignore();
                }
                Outbound::DropNode { node, run } => {
                    packs.packers.retain(|(n, _)| n != node);
                    flow.unread.forget(node);
                    flow.stalled.remove(node);
                    pipe.cmd("EVAL")
                        .arg(DROP_NODE)
                        .arg(5)
                        .arg(link.keys.nodes())
                        .arg(link.keys.entries(node))
                        .arg(link.keys.inbox_read(node))
                        .arg(link.keys.run(node))
                        .arg(link.keys.listed(node))
                        .arg(&**node)
                        .arg(run.map(|r| r.to_string()).unwrap_or_default())
                        .ignore();
                }
                Outbound::Journal { field, value } => {
                    pipe.cmd("HSET")
                        .arg(link.keys.journal(&link.node_id))
                        .arg(field.as_str())
                        .arg(value.as_slice())
                        .ignore();
                }
                Outbound::Unjournal(field) => {
                    pipe.cmd("HDEL")
                        .arg(link.keys.journal(&link.node_id))
                        .arg(field.as_str())
                        .ignore();
                }
                Outbound::Delete { command, key, ids } => {
                    pipe.cmd(command).arg(key.as_str()).arg(ids).ignore();
                }
                Outbound::InboxHandled(ids) => {
                    if let Some(last) = ids.last() {
                        pipe.cmd("SET")
                            .arg(link.keys.inbox_read(&link.node_id))
                            .arg(last.as_str())
                            .ignore();
                    }
                    pipe.cmd("XDEL")
                        .arg(link.keys.inbox(&link.node_id))
                        .arg(ids)
                        .ignore();
                }
                Outbound::Barrier(_) => {}
            }
        }
        packs.flush(&mut pipe, &link);
        // The readers' progress, read back with the batch.
        let behind: Vec<NodeId> = flow
            .unread
            .behind()
            .chain(packs.appended.iter().map(|(node, _)| node))
            .fold(Vec::new(), |mut nodes, node| {
                if !nodes.contains(node) {
                    nodes.push(node.clone());
                }
                nodes
            });
        for node in &behind {
            pipe.cmd("GET").arg(link.keys.inbox_read(node));
        }
        // Acknowledgements wait for this batch's barriers: with a replication wait, until the
        // replicas hold what they depend on (its reply comes last).
        let replication = link.replication.filter(|_| {
            batch
                .iter()
                .any(|item| matches!(item, Outbound::Barrier(_)))
        });
        if let Some(wait) = &replication {
            wait.append(&mut pipe, &link.keys.replicated(&link.node_id));
        }
        let mut delay = Duration::from_millis(50);
        // A batch of nothing but barriers has nothing to write (an empty pipeline would wait for
        // replies that never come).
        let writes = !behind.is_empty()
            || replication.is_some()
            || batch
                .iter()
                .any(|item| !matches!(item, Outbound::Barrier(_)));
        // After Redis refused some commands, only those are sent again (see `refusals`).
        let mut refused_only: Option<redis::Pipeline> = None;
        let replies = loop {
            if !writes {
                break Vec::new();
            }
            let sending = refused_only.as_ref().unwrap_or(&pipe);
            if reconnected.has_changed().unwrap_or(false) {
                // Redis answered elsewhere on a new connection while this one was idle: it may
                // hang as the health check's did, and nothing waits on it now.
                reconnected.borrow_and_update();
                con.renew();
            }
            let answer = tokio::select! {
                answer = sending.query_async::<Vec<Value>>(&mut con) => answer,
                () = stranded(&mut reconnected) => {
                    con.renew();
                    tracing::warn!("relay writer: redis answers on a new connection but not on this one; writing the batch again on a new connection");
                    refused_only = Some(marked_resent(sending, &link.keys));
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            match answer {
                Ok(replies) => {
                    if link.health.set_write_refusal(None).is_some() {
                        tracing::info!("redis takes the relay's writes again");
                    }
                    // The replies of a batch sent again in part are not the batch's.
                    break if refused_only.is_some() {
                        Vec::new()
                    } else {
                        replies
                    };
                }
                Err(e) => {
                    let text = e.to_string();
                    match e.into_server_errors() {
                        // Some commands were refused, the others applied.
                        Some(errors) => {
                            let refused = refusals::sort_out(sending, &errors);
                            link.metrics_refused(errors.len());
                            if link.health.set_write_refusal(Some(refused.worst)).is_none() {
                                tracing::warn!(
                                    refused = errors.len(),
                                    dropped = refused.dropped,
                                    example = %refused.example,
                                    "redis refused relay writes; sending only those again"
                                );
                            }
                            if refused.dropped > 0 {
                                tracing::error!(
                                    dropped = refused.dropped,
                                    example = %refused.example,
                                    "relay writes redis will never take were dropped"
                                );
                            }
                            if refused.retry.is_empty() {
                                link.health.set_write_refusal(None);
                                break Vec::new();
                            }
                            refused_only = Some(refused.retry);
                        }
                        // The connection failed: what Redis applied is unknown, so the same
                        // commands go again (after a reply wait long enough that a slow answer
                        // is not taken for a lost one), marked as possibly applied twice.
                        None => {
                            tracing::warn!(error = %text, "relay write failed; retrying");
                            refused_only = Some(marked_resent(sending, &link.keys));
                        }
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        let mut replies = replies;
        if let Some(wait) = &replication {
            // Empty when only refused commands were sent again: then nothing is known of it.
            if let Some(reply) = replies.pop() {
                link.replication_waits.inc();
                match wait.read(&reply) {
                    Waited::Enough => {}
                    Waited::Short(confirmed) => {
                        link.replication_waits_short.inc();
                        tracing::debug!(
                            confirmed,
                            "fewer redis replicas than asked for confirmed in time"
                        );
                    }
                    Waited::Unreadable => {
                        link.replication_waits_short.inc();
                        tracing::warn!(reply = ?reply, "redis answered WAIT with no count");
                    }
                }
            }
        }
        // Everything queued before a barrier is in Redis now, and the relayed messages written
        // give their places in the queue back.
        let mut written = 0;
        for item in batch.drain(..) {
            match item {
                Outbound::Barrier(done) => {
                    let _ = done.send(());
                }
                Outbound::Relays(relays) => written += permit_count(relays.len()) as usize,
                _ => {}
            }
        }
        link.forward_room.add_permits(written);
        let mut replies = replies.into_iter();
        for ((node, messages), reply) in packs.appended.drain(..).zip(replies.by_ref()) {
            if let Some(id) = bulk_bytes(reply).as_deref().and_then(parse_stream_id) {
                flow.unread.appended(&node, id, messages);
            }
        }
        for (node, reply) in behind.iter().zip(replies) {
            flow.progress(node, bulk_bytes(reply));
        }
    }
}

/// Resolves [`STRANDED_GRACE`] after the health check next answered on a new connection (never,
/// once the link is gone).
async fn stranded(reconnected: &mut watch::Receiver<u64>) {
    if reconnected.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(STRANDED_GRACE).await;
}

/// Share groups as sent in an inbox entry: `group NUL filter` pairs joined by NUL (neither may
/// contain NUL).
pub(super) fn encode_groups(groups: &[GroupKey]) -> String {
    let mut out = String::new();
    for (group, filter) in groups {
        if !out.is_empty() {
            out.push('\0');
        }
        out.push_str(group);
        out.push('\0');
        out.push_str(filter);
    }
    out
}

pub(super) fn decode_groups(text: &str) -> Vec<GroupKey> {
    let parts: Vec<&str> = text.split('\0').collect();
    parts
        .chunks_exact(2)
        .map(|pair| (pair[0].to_string(), pair[1].to_string()))
        .collect()
}

/// The bytes of a bulk or simple string reply.
fn bulk_bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_round_trip_through_an_inbox_field() {
        let groups = vec![
            ("g".to_string(), "a/+".to_string()),
            ("other".to_string(), "#".to_string()),
        ];
        assert_eq!(decode_groups(&encode_groups(&groups)), groups);
        assert!(decode_groups(&encode_groups(&[])).is_empty());
    }

    #[test]
    fn a_batch_sent_again_marks_its_inbox_appends_and_nothing_else() {
        let keys = Keys {
            prefix: "starling:".to_string(),
        };
        let mut pipe = redis::pipe();
        inbox_append(&mut pipe, &keys, "node-b")
            .arg("b")
            .arg("packed");
        pipe.cmd("XADD")
            .arg("other-stream")
            .arg("*")
            .arg("x")
            .arg("1")
            .ignore();
        pipe.cmd("HSET")
            .arg(keys.journal("node-a"))
            .arg("f")
            .arg("v")
            .ignore();
        pipe.cmd("GET").arg(keys.inbox_read("node-b"));
        let again = marked_resent(&pipe, &keys);
        let args: Vec<Vec<Vec<u8>>> = again
            .cmd_iter()
            .map(|c| {
                c.args_iter()
                    .filter_map(|a| match a {
                        redis::Arg::Simple(bytes) => Some(bytes.to_vec()),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        assert_eq!(args.len(), 4);
        let tail = |i: usize| args[i][args[i].len() - 2..].to_vec();
        assert_eq!(tail(0), [b"d".to_vec(), b"1".to_vec()], "the inbox append");
        assert_eq!(tail(1), [b"x".to_vec(), b"1".to_vec()], "another stream");
        assert_eq!(tail(2), [b"f".to_vec(), b"v".to_vec()], "not an append");
        assert_eq!(args[3].len(), 2, "the GET is unchanged");
    }
}
