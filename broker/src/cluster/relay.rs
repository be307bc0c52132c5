//! The relay between cluster nodes, over Redis.
//!
//! - **Entries**: each node keeps the set of filters its sessions subscribe to in
//!   `<prefix>v1:node:<id>:entries` and announces every change on the Pub/Sub channel
//!   `<prefix>v1:entries` (`<node>\n+<filter>` or `<node>\n-<filter>`). Every node keeps a replica
//!   of the others' entries (`super::replica`), rebuilt from the sets at start and whenever the
//!   announcement channel reconnects, so a missed announcement heals.
//! - **Messages**: a publish that originated here is matched against the replica and appended once
//!   to the inbox stream `<prefix>v1:inbox:<node>` of each node that needs it, with the origin node
//!   id; the messages of one write batch for one node share a stream entry ([`super::packed`]). A node
//!   reads only its own inbox and delivers what it reads locally, never relaying it again, so
//!   nothing loops.
//!
//! - **Share groups**: nodes advertise `$share/<group>/<filter>` entries too. For each group with
//!   members elsewhere, the publishing node picks the one node that serves this message (rotating
//!   over the nodes with members, itself included when it has an online member) and says so in the
//!   inbox entry; a receiving node serves only the groups it was given.
//!
//! This file is the link itself (what the broker core calls: forwarding, journal, barriers);
//! beside it: [`forward`] (which nodes get a message, and the publisher's pace), [`writer`] (the
//! one task that writes to Redis, in pipelined batches), [`inbox`] (reading this node's inbox)
//! and [`relayed`] (delivering what it read), [`control`] (session hand-over and the other
//! control entries), [`watchers`] (Redis's health and the announcement channel that keeps the
//! replica), [`keys`] (key names). Reads use connections of their own ([`inbox`]), as
//! `XREAD BLOCK` and Pub/Sub would hold up a shared one.

mod control;
mod forward;
pub(super) mod inbox;
mod keys;
mod relayed;
mod watchers;
mod writer;

pub(super) use control::KIND_DIRECT;
pub(super) use writer::FIELD_RESENT;

use super::health::{self, Health};
use super::journal;
use super::listed;
use super::local::LocalBroker;
use super::redis_clock::RedisClock;
use super::replica::Replica;
use super::replication::ReplicationWait;
use super::work_queue::WorkQueue;
use crate::router::remote::NodeId;
use crate::store::journal_hold::{JournalHold, JournalRelease, JournalReservation};
use crate::store::redis::renewing::RenewingConnection;
use crate::store::redis::target::RedisTarget;
use crate::store::QueuedMessage;
use control::Waiters;
use keys::Keys;
use parking_lot::{Mutex, RwLock};
use redis::aio::{ConnectionManagerConfig, MultiplexedConnection};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{oneshot, watch, Semaphore};
use watchers::{watch_entries, watch_health, Resync};
use writer::{spawn_writer, Outbound, WRITE_QUEUE, WRITE_RESPONSE_WAIT};

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

/// A node's return after the cluster declared it dead while it ran (`v1:node:<node>:returned`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Returned {
    /// The run that came back.
    pub run: u64,
    /// Redis's time (ms) when it noticed: it reads inbox entries appended before it as maybe
    /// delivered already (DUP), those from it on as its own.
    pub at_ms: u64,
}

impl Returned {
    /// Reads the stored form, `<run>/<ms>` (see `register.lua`); `None` if it is not one.
    pub(super) fn parse(text: &str) -> Option<Self> {
        let (run, at_ms) = text.split_once('/')?;
        Some(Returned {
            run: run.parse().ok()?,
            at_ms: at_ms.parse().ok()?,
        })
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
    /// same one), and the writer stops waiting on its own (see `STRANDED_GRACE` in
    /// `writer/resend.rs`).
    reconnected: watch::Sender<u64>,
    /// Counts the times Redis may have lost writes it had confirmed: it lost its data (a new
    /// epoch), or Sentinel promoted a replica that may lack the last ones. The writer appends
    /// again what the readers had not reported read (see [`crate::cluster::unread`]).
    lost_writes: watch::Sender<u64>,
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
        broker: &Arc<impl LocalBroker>,
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
            .arg(keys.returned(node_id))
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
            lost_writes: watch::Sender::new(0),
            write_refusals: broker.metrics().redis_write_refusals.clone(),
            replication: ReplicationWait::from_config(&broker.config().cluster.redis_replication),
            replication_waits: broker.metrics().replication_waits.clone(),
            replication_waits_short: broker.metrics().replication_waits_short.clone(),
        });
        let reading = health::read(&mut writer, &link.keys.epoch(), &link.keys.nodes(), node_id)
            .await
            .map_err(relay_error)?;
        link.health.check_epoch(&reading.epoch);
        link.redis_clock.observe(reading.redis_ms);
        link.resync(&mut writer, &**broker, Resync::Merge)
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
        let owner: Weak<dyn JournalRelease> = Arc::downgrade(self) as Weak<ClusterLink>;
        Some(JournalHold::new(field, owner))
    }

    /// Reserves journal fields for the copies a claim of `client_id`'s session moves out of the
    /// store; the claim's script journals them (see [`super::journal`]).
    pub fn reserve_journal(self: &Arc<Self>, client_id: &str) -> JournalReservation {
        let owner: Weak<dyn JournalRelease> = Arc::downgrade(self) as Weak<ClusterLink>;
        journal::reservation(
            self.keys.journal(&self.node_id),
            self.run,
            self.journal_seq.fetch_add(1, Ordering::Relaxed),
            client_id,
            owner,
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
    /// reported read, for the other nodes' writers (see [`super::unread`]).
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

    /// The hash of the nodes' connection counts (see [`super::rebalance`]).
    pub(super) fn load_key(&self) -> String {
        self.keys.load()
    }

    /// The set of registered nodes.
    pub(super) fn nodes_key(&self) -> String {
        self.keys.nodes()
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

    /// Where `node`'s run came back after the cluster had declared it dead: the run and the
    /// time (ms, Redis's clock) from which it treats what it reads in its inbox as its own again
    /// (before it, as maybe delivered by its adopter). `None` if it has not come back since the
    /// adoption removed its registration (which removes this marker too).
    pub(super) async fn returned(
        &self,
        con: &mut MultiplexedConnection,
        node: &str,
    ) -> redis::RedisResult<Option<Returned>> {
        let marker: Option<String> = redis::cmd("GET")
            .arg(self.keys.returned(node))
            .query_async(con)
            .await?;
        Ok(marker.as_deref().and_then(Returned::parse))
    }

    /// The first inbox entry id this run reads.
    pub(super) fn inbox_start(&self) -> &str {
        &self.inbox_start
    }

    /// Whether gossip reported `node` gone (and not back since).
    pub fn is_departed(&self, node: &str) -> bool {
        self.departed.read().contains(node)
    }

    /// Resolves once everything handed to the writer before this call is in Redis: a QoS 1/2
    /// publish is acknowledged only after that, so a node killed afterwards loses nothing of it.
    /// Never resolves while Redis is unreachable (the caller bounds its wait).
    pub fn barrier(&self) -> oneshot::Receiver<()> {
        let (done, confirmed) = oneshot::channel();
        self.queue(Outbound::Barrier(done));
        confirmed
    }

    /// Whether, in this node's replica, `node` advertises every one of `entries`.
    pub fn advertised_by(&self, node: &str, entries: &[String]) -> bool {
        let remote = self.remote.read();
        entries.iter().all(|raw| remote.advertises(node, raw))
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

    /// Forgets a node that left the cluster from the replica (the node that adopts its sessions
    /// also deletes its entry set from Redis, see [`Self::remove_node_entries`]).
    pub async fn forget_node(&self, node: &str, broker: &impl LocalBroker) {
        let (removed, size) = self.remote.forget(&NodeId::from(node));
        broker.metrics().remote_entries.set(size as i64);
        tracing::debug!(node, removed, "forgot a departed node's entries");
    }
}

impl JournalRelease for ClusterLink {
    /// Deletes a journal field through the writer, after everything queued before.
    fn release_journal(&self, field: String) {
        self.queue(Outbound::Unjournal(field));
    }
}
