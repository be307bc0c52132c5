//! The broker core shared by every connection: the subscription tree, the registry of online
//! sessions, routing of messages to sessions, wills and session expiry.

use crate::auth::{Auth, LiveAuth};
use crate::client_info::{ClientInfo, Evacuation};
use crate::cluster::adopted::AdoptedParked;
use crate::cluster::handoff::{self, HandOffs};
use crate::cluster::pending::PendingRelays;
use crate::cluster::recovery::{self, AdoptedRoutes, Leftovers};
use crate::cluster::relay::ClusterLink;
use crate::mailbox::{Mailbox, Refused, Signal};
use crate::message::{ClientId, Message};
use crate::metrics::Metrics;
use crate::protocol::{topic, QoS};
use crate::read_mostly::ReadMostly;
use crate::retained_limits::RetainGate;
use crate::router::memo::RouteMemo;
use crate::router::remote::NodeId;
use crate::router::GroupKey;
use crate::router::{self, Match, SubscriptionOptions, SubscriptionTree};
use crate::store::journal_hold::JournalReservation;
use crate::store::{Enqueued, QueuedMessage, Store, StoredSubscription, StoredWill};
use parking_lot::Mutex;
use starling_config::BrokerConfig;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{watch, OwnedMutexGuard};
use tokio::task::AbortHandle;

/// How the connection task of an online session is reached.
#[derive(Clone)]
pub struct SessionHandle {
    /// Identifies the connection, so a late deregistration cannot remove a newer one.
    pub connection_id: u64,
    /// Messages to deliver, and signals (takeover, shutdown).
    pub mailbox: Arc<Mailbox>,
    /// Whether the session outlives the connection (expiry > 0): in a cluster, its QoS 1/2
    /// copies are journalled while they are in this node's memory.
    pub persistent: bool,
    /// Until when (on [`Broker::clock_ms`]) copies for a session that just moved here from
    /// another node are marked DUP: the old node may have delivered what was relayed here
    /// before the session arrived (0: not moved in).
    pub moved_in_until_ms: u64,
    /// For a session that moved here: relays appended to this node's inbox up to this time (ms,
    /// Redis's clock, as entry ids carry it) are marked DUP, however late this node reads them
    /// (0: not moved in). They were matched before the session arrived, and the old node may
    /// have delivered them too.
    pub moved_in_relays_until_ms: u64,
    /// What the client told the broker when it connected (for the admin API; `None` for
    /// sessions registered without a connection, in tests).
    pub info: Option<Arc<ClientInfo>>,
}

/// Whether a copy for `handle`'s session that arrived as `arrival` at `clock_ms` (see
/// [`Broker::clock_ms`]) may have reached it through the node it moved here from as well:
/// anything shortly after the move, and relays appended to this node's inbox before it, read
/// however late.
fn moved_in_copy(handle: &SessionHandle, clock_ms: u64, arrival: Arrival) -> bool {
    handle.moved_in_until_ms != 0
        && (clock_ms < handle.moved_in_until_ms
            || matches!(arrival, Arrival::Relayed { appended_ms }
                if appended_ms <= handle.moved_in_relays_until_ms))
}

/// How a copy reached this node, which decides whether it is marked DUP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Published here, or sent on here for one session.
    Here,
    /// Read from this node's inbox, where it was appended at `appended_ms` (Redis's clock).
    Relayed { appended_ms: u64 },
    /// Read from this node's inbox after the cluster had declared this node dead (another node
    /// may have delivered it already): always marked DUP.
    Suspect,
}

/// How an adoption of a departed node's sessions went ([`Broker::adopt_sessions_of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdoptionOutcome {
    /// Its sessions are this node's now: its registration may go.
    Adopted,
    /// The node came back under a newer run first: nothing of the new run was touched, and the
    /// registration is the new run's.
    NodeReturned,
    /// The store failed; the adoption sweep tries again.
    Failed,
}

/// Why the broker is going away, broadcast to every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Serving.
    Running,
    /// Draining: listeners closed, connections are being told to go.
    ShuttingDown,
}

/// How long a copy recovered from a dead node waits for room in a session's mailbox (live
/// messages wait `limits.delivery_wait_ms`). A mailbox that stays full is marked slow after one
/// such wait, and then refuses at once.
const RECOVERED_PATIENCE: Duration = Duration::from_secs(10);

/// How often the keep-alive sweep runs (and the coarse clock advances).
pub const KEEP_ALIVE_TICK: Duration = Duration::from_millis(250);

/// Which share groups a node's local routing serves for one message.
#[derive(Debug, Clone, Copy)]
pub enum GroupScope<'a> {
    /// All of them (standalone, or no other node has members).
    All,
    /// All but these, which another node serves.
    Except(&'a [GroupKey]),
    /// Only these (a relayed message: the origin node chose this node for them).
    Only(&'a [GroupKey]),
}

impl GroupScope<'_> {
    fn serves(&self, group: &str, filter: &str) -> bool {
        let listed = |keys: &[GroupKey]| keys.iter().any(|(g, f)| g == group && f == filter);
        match self {
            GroupScope::All => true,
            GroupScope::Except(keys) => !listed(keys),
            GroupScope::Only(keys) => listed(keys),
        }
    }
}

/// What [`Broker::matching`] found for a topic.
struct Found {
    matches: Vec<(ClientId, SubscriptionOptions)>,
    /// Whether a share group matched (served here or not): the result differs from message to
    /// message.
    shared: bool,
    /// The subscription tree's generation the matches belong to.
    generation: u64,
}

/// Delivery work that could not be finished without waiting.
enum Deferred {
    /// The session's mailbox is full: wait (bounded) for room.
    WaitForRoom {
        client_id: ClientId,
        mailbox: Arc<Mailbox>,
        queued: QueuedMessage,
    },
    /// The session has no connection here: queue the message in the store.
    Enqueue {
        client_id: ClientId,
        queued: QueuedMessage,
    },
}

/// Whether a message for a session held by another node may be sent on to that node: not for a
/// message that was itself sent on, so nothing bounces between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Onward {
    Allowed,
    Forbidden,
}

/// One lock per client id held by a connection for its session's lifetime; entries of ended
/// sessions are pruned lazily.
struct SessionLocks {
    locks: HashMap<ClientId, Weak<tokio::sync::Mutex<()>>>,
    prune_above: usize,
}

/// Connections to wake once a run of deliveries is done: a connection woken for every message
/// of a run would take them one or two at a time, each wake-up a switch between threads.
#[derive(Default)]
pub struct Wakes(Vec<Arc<Mailbox>>);

impl Wakes {
    fn add(&mut self, mailbox: &Arc<Mailbox>) {
        if !self.0.last().is_some_and(|last| Arc::ptr_eq(last, mailbox)) {
            self.0.push(mailbox.clone());
        }
    }

    /// Wakes every connection added since the last call.
    pub fn wake_all(&mut self) {
        for mailbox in self.0.drain(..) {
            mailbox.wake();
        }
    }
}

impl Drop for Wakes {
    /// Nothing is left unwoken.
    fn drop(&mut self) {
        self.wake_all();
    }
}

/// What a connection that publishes again and again keeps between its messages: where its last
/// topic was routed, and the messages for other nodes gathered since it last called
/// [`Broker::send_relays`].
#[derive(Default)]
pub struct Publishing {
    memo: RouteMemo,
    relays: PendingRelays,
}

/// Where a publish went: to how many sessions on this node, and to how many other nodes (whose
/// own subscribers, unknown here, get it there).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Routed {
    /// Sessions on this node it was delivered or queued to.
    pub sessions: usize,
    /// Other nodes it was relayed to (a node counts once, however many of its sessions match).
    pub nodes: usize,
}

impl Routed {
    /// Whether no subscriber anywhere matched (MQTT 5: reason 0x10 "No matching subscribers").
    pub fn reached_nobody(&self) -> bool {
        self.sessions == 0 && self.nodes == 0
    }
}

/// State and behaviour shared by all connections of one node.
pub struct Broker {
    /// The validated configuration.
    pub config: BrokerConfig,
    /// Authentication and ACLs, as in force now (reloaded when their files change).
    pub auth: Arc<LiveAuth>,
    /// Sessions and retained messages.
    pub store: Arc<dyn Store>,
    /// Counters and gauges.
    pub metrics: Arc<Metrics>,
    /// When the broker started.
    pub started_at: Instant,
    subscriptions: ReadMostly<SubscriptionTree>,
    /// Looked up for every delivery: foldhash (seeded per process) rather than SipHash.
    online: ReadMostly<HashMap<ClientId, SessionHandle, foldhash::fast::RandomState>>,
    session_locks: Mutex<SessionLocks>,
    pending_wills: Mutex<HashMap<ClientId, AbortHandle>>,
    next_connection_id: AtomicU64,
    clock_ms: AtomicU64,
    run_state: watch::Sender<RunState>,
    delivery_patience: Duration,
    retain_gate: RetainGate,
    cluster: OnceLock<Arc<ClusterLink>>,
    hand_offs: HandOffs,
    adopted: AdoptedParked,
    /// An evacuation of this node, if one was asked for (see [`crate::clients`]).
    pub(crate) evacuation: Evacuation,
}

impl Broker {
    /// Creates the core of a node, with fixed users and rules.
    pub fn new(config: BrokerConfig, auth: Auth, store: Arc<dyn Store>) -> Arc<Self> {
        Broker::with_live_auth(config, Arc::new(LiveAuth::fixed(auth)), store)
    }

    /// Creates the core of a node, with users and rules that may be reloaded.
    pub fn with_live_auth(
        config: BrokerConfig,
        auth: Arc<LiveAuth>,
        store: Arc<dyn Store>,
    ) -> Arc<Self> {
        let (run_state, _) = watch::channel(RunState::Running);
        let delivery_patience = Duration::from_millis(config.limits.delivery_wait_ms);
        Arc::new(Broker {
            delivery_patience,
            retain_gate: RetainGate::new(config.limits.max_retained_payload_size),
            cluster: OnceLock::new(),
            hand_offs: HandOffs::default(),
            adopted: AdoptedParked::default(),
            evacuation: Evacuation::default(),
            config,
            auth,
            store,
            metrics: Arc::new(Metrics::new()),
            started_at: Instant::now(),
            subscriptions: ReadMostly::default(),
            online: ReadMostly::default(),
            session_locks: Mutex::new(SessionLocks {
                locks: HashMap::new(),
                prune_above: 1024,
            }),
            pending_wills: Mutex::new(HashMap::new()),
            next_connection_id: AtomicU64::new(1),
            clock_ms: AtomicU64::new(0),
            run_state,
        })
    }

    /// Connects this node to the cluster relay (once; later calls are ignored). Entries that
    /// already exist are announced.
    pub fn attach_cluster(&self, link: Arc<ClusterLink>) {
        if self.cluster.set(link.clone()).is_ok() {
            self.announce_entries();
        }
    }

    /// Writes and announces every entry of this node's routing tree through the relay again,
    /// then its listing marker (the set in Redis is complete once that is written).
    pub fn announce_entries(&self) {
        if let Some(link) = self.cluster.get() {
            let subscriptions = self.subscriptions.read();
            for raw in subscriptions.entries() {
                link.entry_changed(&raw, true);
            }
            link.entries_listed();
        }
    }

    /// The cluster relay, if this node is part of a cluster.
    pub fn cluster(&self) -> Option<&Arc<ClusterLink>> {
        self.cluster.get()
    }

    /// A fresh connection id.
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Milliseconds since start on a coarse clock (advanced by the keep-alive sweep every
    /// [`KEEP_ALIVE_TICK`]): cheap enough to read on every packet.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms.load(Ordering::Relaxed)
    }

    /// Advances the coarse clock and tells connections whose clients have been silent too long.
    pub fn sweep_keep_alive(&self) {
        let now = u64::try_from(self.started_at.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.clock_ms.store(now, Ordering::Relaxed);
        for handle in self.online.read().values() {
            if handle.mailbox.is_overdue(now) {
                handle.mailbox.signal(Signal::KeepAliveTimeout);
            }
        }
    }

    /// Runs the keep-alive sweep until shutdown.
    pub async fn run_keep_alive(self: Arc<Self>) {
        let mut tick = tokio::time::interval(KEEP_ALIVE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut state = self.run_state();
        loop {
            tokio::select! {
                _ = tick.tick() => self.sweep_keep_alive(),
                _ = state.changed() => return,
            }
        }
    }

    /// Subscribes to the broker's run state.
    pub fn run_state(&self) -> watch::Receiver<RunState> {
        self.run_state.subscribe()
    }

    /// Tells every connection the broker is shutting down.
    pub fn begin_shutdown(&self) {
        self.run_state.send_replace(RunState::ShuttingDown);
        for handle in self.online.read().values() {
            handle.mailbox.signal(Signal::Shutdown);
        }
    }

    /// Ends every connection of this node without storing its session or publishing its will:
    /// the cluster declared this node dead, and another node adopted its sessions (and fired
    /// their wills). Clients reconnect and resume what the store has.
    pub fn disconnect_adopted(&self) -> usize {
        let online = self.online.read();
        for handle in online.values() {
            handle.mailbox.signal(Signal::Adopted);
        }
        online.len()
    }

    /// Whether `client_id`'s session is parked here because this node adopted it from a node
    /// that departed (see [`AdoptedParked`]). Ask before the session's connection registers:
    /// registering ends the adoption.
    pub fn adopted_here(&self, client_id: &str) -> bool {
        self.adopted.contains(client_id)
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        *self.run_state.borrow() == RunState::ShuttingDown
    }

    /// Publishes a message from a client, a will or the broker itself: stores it if retained, then
    /// routes it. Returns where it went.
    pub async fn publish(&self, message: Arc<Message>) -> Routed {
        let mut publishing = Publishing::default();
        let count = self.publish_with(message, &mut publishing).await;
        self.send_relays(&mut publishing).await;
        count
    }

    /// [`Self::publish`] for a connection that publishes again and again: `publishing` keeps
    /// where its last topic was routed for the next message, and gathers what goes to other
    /// nodes until [`Self::send_relays`].
    pub async fn publish_with(&self, message: Arc<Message>, publishing: &mut Publishing) -> Routed {
        if message.retain {
            // Refused by a limit, the message is still delivered (the refusal is counted).
            self.retain_gate
                .retain(&*self.store, &self.metrics, &message)
                .await;
        }
        self.route_with(&message, publishing).await
    }

    /// Delivers a message to every matching session here and hands it to the cluster relay for
    /// the other nodes; returns where it went.
    pub async fn route(&self, message: &Arc<Message>) -> Routed {
        let mut publishing = Publishing::default();
        let count = self.route_with(message, &mut publishing).await;
        self.send_relays(&mut publishing).await;
        count
    }

    async fn route_with(&self, message: &Arc<Message>, publishing: &mut Publishing) -> Routed {
        let Publishing { memo, relays } = publishing;
        memo.start(&message.topic);
        let Some(link) = self.cluster.get() else {
            let matches = self.local_matches(&message.topic, GroupScope::All, memo);
            let sessions = self.route_matched(message, &matches).await;
            return Routed { sessions, nodes: 0 };
        };
        // A message relayed to two nodes is pending twice: what `forward` adds is its node count.
        let pending_before = relays.len();
        let served_elsewhere = link.forward(self, message, memo, relays);
        let nodes = relays.len() - pending_before;
        let sessions = {
            let mut matches =
                self.local_matches(&message.topic, GroupScope::Except(&served_elsewhere), memo);
            if self.hand_offs.any() {
                // A session that left reaches its new node through the relay above.
                matches
                    .to_mut()
                    .retain(|(client, _)| !self.hand_offs.skips_local_publish(client));
            }
            self.route_matched(message, &matches).await
        };
        if relays.is_full() {
            self.send_relays(publishing).await;
        }
        Routed { sessions, nodes }
    }

    /// Hands what `publishing` gathered for other nodes to the cluster relay. A connection calls
    /// this once it has handled the input it has, and before it acknowledges QoS 1/2 publishes;
    /// while the relay is saturated, the publisher waits here (see [`ClusterLink::send_pending`]).
    pub async fn send_relays(&self, publishing: &mut Publishing) {
        if publishing.relays.is_empty() {
            return;
        }
        if let Some(link) = self.cluster.get() {
            link.send_pending(&mut publishing.relays, self.delivery_patience, self)
                .await;
        }
    }

    /// This node's subscriptions matching `topic`, from `memo` while the subscription tree has
    /// not changed since they were found (and kept there when no share group is involved).
    fn local_matches<'m>(
        &self,
        topic: &str,
        scope: GroupScope<'_>,
        memo: &'m mut RouteMemo,
    ) -> Cow<'m, [(ClientId, SubscriptionOptions)]> {
        let generation = self.subscriptions.read().generation();
        if memo.local(generation).is_some() {
            return Cow::Borrowed(memo.local(generation).unwrap_or_default());
        }
        let found = self.matching(topic, scope);
        if found.shared {
            return Cow::Owned(found.matches);
        }
        memo.keep_local(found.generation, found.matches);
        Cow::Borrowed(memo.local(found.generation).unwrap_or_default())
    }

    /// Whether this node has members of a share group: (any online, any at all).
    pub fn local_group_presence(&self, filter: &str, group: &str) -> (bool, bool) {
        let tree = self.subscriptions.read();
        let members = tree.group_members(filter, group);
        let online = self.online.read();
        let any_online = members
            .iter()
            .any(|(client, _)| online.contains_key(client));
        (any_online, !members.is_empty())
    }

    /// Delivers a message to every matching session on this node only (relayed messages come
    /// here, so nothing is relayed twice); returns how many.
    ///
    /// The common case (every target online with room in its mailbox) completes without waiting;
    /// targets that need a wait or the store are handled afterwards, in a boxed future, so the hot
    /// path stays small in every connection's task.
    pub async fn route_local(&self, message: &Arc<Message>) -> usize {
        self.route_scoped(message, GroupScope::All).await
    }

    /// Delivers a message to the matching sessions of this node, serving the share groups that
    /// `scope` lets through (the cluster decides which node serves a group); returns how many.
    pub async fn route_scoped(&self, message: &Arc<Message>, scope: GroupScope<'_>) -> usize {
        let found = self.matching(&message.topic, scope);
        self.route_matched(message, &found.matches).await
    }

    /// [`Self::route_scoped`] for a message read from this node's inbox, appended there at
    /// `appended_ms` (Redis's clock).
    pub async fn route_relayed_scoped(
        &self,
        message: &Arc<Message>,
        scope: GroupScope<'_>,
        appended_ms: u64,
    ) -> usize {
        let found = self.matching(&message.topic, scope);
        self.route_matched_waking(
            message,
            &found.matches,
            None,
            Arrival::Relayed { appended_ms },
        )
        .await
    }

    /// The plain (not shared) subscriptions of this node that match `topic`: what
    /// [`Self::route_scoped`] finds for a relayed message that serves no share group. A caller
    /// routing many messages of one topic may keep it for [`Self::route_matched`] (it holds no
    /// online state, only the subscriptions at the time of the call).
    pub fn direct_matches(&self, topic: &str) -> Vec<(ClientId, SubscriptionOptions)> {
        self.matching(topic, GroupScope::Only(&[])).matches
    }

    /// Delivers a message to the sessions of `matches` (as [`Self::matching`] found them) on
    /// this node only; returns how many.
    pub async fn route_matched(
        &self,
        message: &Arc<Message>,
        matches: &[(ClientId, SubscriptionOptions)],
    ) -> usize {
        self.route_matched_waking(message, matches, None, Arrival::Here)
            .await
    }

    /// [`Self::route_matched`] for a run of deliveries of what arrived as `arrival` says:
    /// connections that must be woken for the message are added to `wakes` instead of being
    /// woken one message at a time.
    pub async fn route_matched_waking_later(
        &self,
        message: &Arc<Message>,
        matches: &[(ClientId, SubscriptionOptions)],
        wakes: &mut Wakes,
        arrival: Arrival,
    ) -> usize {
        self.route_matched_waking(message, matches, Some(wakes), arrival)
            .await
    }

    /// [`Self::route_matched`] for what arrived as `arrival` says; connections that must be
    /// woken are added to `wakes` when given, or woken at once.
    pub async fn route_matched_waking(
        &self,
        message: &Arc<Message>,
        matches: &[(ClientId, SubscriptionOptions)],
        mut wakes: Option<&mut Wakes>,
        arrival: Arrival,
    ) -> usize {
        if matches.is_empty() {
            return 0;
        }
        let targets = router::targets(matches, message.publisher.as_deref());
        let count = targets.len();
        let mut deferred = Vec::new();
        for target in targets {
            let client_id = target.client_id;
            let mut queued = QueuedMessage::for_target(message, target);
            queued.maybe_sent = arrival == Arrival::Suspect;
            if let Some(later) = self.deliver_now(client_id, queued, wakes.as_deref_mut(), arrival)
            {
                deferred.push(later);
            }
        }
        if !deferred.is_empty() {
            // A connection is about to be waited for: none may be left unwoken.
            if let Some(wakes) = wakes {
                wakes.wake_all();
            }
            let delivering = Box::pin(self.deliver_deferred(deferred, Onward::Allowed));
            delivering.await;
        }
        count
    }

    /// Delivers a relayed message that this node read late, after the cluster had declared it
    /// dead and another node recovered its inbox: every copy is marked DUP (the adopter may have
    /// delivered it already). Share groups are served as `groups` says.
    pub async fn route_suspect(&self, message: &Arc<Message>, groups: &[GroupKey]) {
        let found = self.matching(&message.topic, GroupScope::Only(groups));
        self.route_matched_waking(message, &found.matches, None, Arrival::Suspect)
            .await;
    }

    /// Delivers a message another node sent on for one session of this node (the session moved
    /// here while the message was on its way).
    pub async fn deliver_direct(&self, client_id: ClientId, queued: QueuedMessage) {
        if let Some(later) = self.deliver_now(&client_id, queued, None, Arrival::Here) {
            Box::pin(self.deliver_deferred(vec![later], Onward::Forbidden)).await;
        }
    }

    fn matching(&self, topic: &str, scope: GroupScope<'_>) -> Found {
        let tree = self.subscriptions.read();
        let mut out = Vec::new();
        let mut shared = false;
        let online = self.online.read();
        tree.matches(topic, |m| match m {
            Match::Direct(client, options) => out.push((client.clone(), options.clone())),
            Match::Shared {
                group,
                filter,
                members,
                start,
            } => {
                shared = true;
                let n = members.len();
                if n == 0 || !scope.serves(group, filter) {
                    return;
                }
                let chosen = (0..n)
                    .map(|i| &members[(start + i) % n])
                    .find(|(client, _)| online.contains_key(client))
                    .unwrap_or(&members[start % n]);
                out.push(chosen.clone());
            }
        });
        Found {
            matches: out,
            shared,
            generation: tree.generation(),
        }
    }

    /// Puts a message in an online session's mailbox if there is room, waking its connection
    /// now or, given `wakes`, adding it there; otherwise says what is left to do (wait for room,
    /// or queue it in the store). A copy for a session that just moved here is marked DUP (see
    /// [`SessionHandle::moved_in_until_ms`]) by what `arrival` says.
    fn deliver_now(
        &self,
        client_id: &ClientId,
        mut queued: QueuedMessage,
        wakes: Option<&mut Wakes>,
        arrival: Arrival,
    ) -> Option<Deferred> {
        let queued = {
            let online = self.online.read();
            match online.get(client_id) {
                None => queued,
                Some(handle) => {
                    if handle.persistent {
                        self.journal_copy(client_id, &mut queued);
                    }
                    if moved_in_copy(handle, self.clock_ms(), arrival) {
                        queued.maybe_sent = true;
                    }
                    match handle.mailbox.push_unwoken(queued) {
                        Ok(false) => return None,
                        Ok(true) => {
                            match wakes {
                                Some(wakes) => wakes.add(&handle.mailbox),
                                None => handle.mailbox.wake(),
                            }
                            return None;
                        }
                        Err(Refused::Full(queued)) => {
                            return Some(Deferred::WaitForRoom {
                                mailbox: handle.mailbox.clone(),
                                client_id: client_id.clone(),
                                queued,
                            })
                        }
                        Err(Refused::Closed(queued)) => queued,
                    }
                }
            }
        };
        self.offline(client_id, queued)
    }

    /// In a cluster, records a QoS 1/2 copy for a persistent session connected here in the
    /// delivery journal, so it survives this node's death (see [`crate::cluster::journal`]).
    fn journal_copy(&self, client_id: &str, queued: &mut QueuedMessage) {
        if queued.qos == QoS::AtMostOnce || queued.journal.is_some() {
            return;
        }
        if let Some(link) = self.cluster.get() {
            queued.journal = link.journal(client_id, queued);
        }
    }

    /// In a cluster, journal fields for the copies a claim of `client_id`'s persistent session
    /// moves from the store into this node (see [`crate::cluster::journal`]).
    pub fn journal_reservation(&self, client_id: &str) -> Option<JournalReservation> {
        self.cluster
            .get()
            .map(|link| link.reserve_journal(client_id))
    }

    /// Delivers a copy recovered from a node that stopped while holding it (see
    /// [`crate::cluster::recovery`]): to the session's connection here, its stored queue, or the
    /// node that holds it now.
    pub async fn deliver_recovered(&self, client_id: ClientId, queued: QueuedMessage) {
        if let Some(later) = self.deliver_now(&client_id, queued, None, Arrival::Here) {
            Box::pin(self.deliver_deferred(vec![later], Onward::Allowed)).await;
        }
    }

    /// What to do for a session that is not online (here).
    fn offline(&self, client_id: &ClientId, queued: QueuedMessage) -> Option<Deferred> {
        if queued.qos == QoS::AtMostOnce && !self.config.session.queue_qos0 {
            return None;
        }
        Some(Deferred::Enqueue {
            client_id: client_id.clone(),
            queued,
        })
    }

    async fn deliver_deferred(&self, deferred: Vec<Deferred>, onward: Onward) {
        for work in deferred {
            match work {
                Deferred::WaitForRoom {
                    client_id,
                    mailbox,
                    queued,
                } => {
                    // Copies recovered from a dead node come in bursts, often alongside the live
                    // stream: they wait longer for a session's room than live messages do.
                    let patience = if queued.maybe_sent {
                        RECOVERED_PATIENCE.max(self.delivery_patience)
                    } else {
                        self.delivery_patience
                    };
                    match mailbox.push_or_wait(queued, patience).await {
                        Ok(()) => {}
                        Err(Refused::Full(_)) => {
                            self.metrics.dropped_queue_full.inc();
                        }
                        Err(Refused::Closed(queued)) => {
                            if let Some(Deferred::Enqueue { client_id, queued }) =
                                self.offline(&client_id, queued)
                            {
                                self.enqueue(&client_id, queued, onward).await;
                            }
                        }
                    }
                }
                Deferred::Enqueue { client_id, queued } => {
                    self.enqueue(&client_id, queued, onward).await
                }
            }
        }
    }

    /// Queues a message for a session that has no connection here, re-checking whether it
    /// came online meanwhile.
    async fn enqueue(&self, client_id: &ClientId, mut queued: QueuedMessage, onward: Onward) {
        if self.adopted.contains(client_id)
            || (self.hand_offs.any() && self.hand_offs.is_leaving(client_id))
        {
            // Its former node may be alive after all and have delivered it (see `adopted`), or
            // the session left this node and its new node's routes may deliver it too (see
            // `handoff`).
            queued.maybe_sent = true;
        }
        for attempt in 0..2 {
            match self
                .store
                .enqueue(client_id, queued.clone(), attempt == 1)
                .await
            {
                Ok(Enqueued::Queued) | Ok(Enqueued::NoSession) => return,
                Ok(Enqueued::Full) => {
                    self.metrics.dropped_queue_full.inc();
                    return;
                }
                Ok(Enqueued::Elsewhere(node)) => {
                    // The session moved to another node while this one still routed for it.
                    match (self.cluster.get(), onward) {
                        (Some(link), Onward::Allowed) => {
                            // The new node's own routes may have delivered it as well.
                            let mut copy = queued;
                            copy.maybe_sent = true;
                            link.send_direct(&node, client_id, &copy)
                        }
                        _ => {
                            self.metrics.relay_dropped.inc();
                        }
                    }
                    return;
                }
                Ok(Enqueued::Online) => {
                    // It attached between our look-up and the store's answer: hand it over.
                    let pushed = self.online.read().get(client_id).map(|handle| {
                        let mut copy = queued.clone();
                        if handle.persistent {
                            self.journal_copy(client_id, &mut copy);
                        }
                        handle.mailbox.push(copy)
                    });
                    match pushed {
                        Some(Ok(())) => return,
                        Some(Err(Refused::Full(_))) => {
                            self.metrics.dropped_queue_full.inc();
                            return;
                        }
                        Some(Err(Refused::Closed(_))) | None => continue,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, client_id = %client_id, "message not queued");
                    return;
                }
            }
        }
    }

    /// The online handle of a session, if it is connected here.
    pub fn online_handle(&self, client_id: &str) -> Option<SessionHandle> {
        self.online.read().get(client_id).cloned()
    }

    /// Every session with an open connection here, as it is now.
    pub fn online_handles(&self) -> Vec<(ClientId, SessionHandle)> {
        let online = self.online.read();
        online
            .iter()
            .map(|(id, handle)| (id.clone(), handle.clone()))
            .collect()
    }

    /// Marks a session that just moved here from another node (see
    /// [`SessionHandle::moved_in_until_ms`]).
    pub fn mark_moved_in(&self, client_id: &str, connection_id: u64) {
        if let Some(handle) = self.online.write().get_mut(client_id) {
            if handle.connection_id == connection_id {
                handle.moved_in_until_ms = self.clock_ms() + handoff::MOVED_IN_DUP_MS;
                handle.moved_in_relays_until_ms = self
                    .cluster
                    .get()
                    .map_or(0, |link| link.redis_now_ms() + handoff::MOVED_IN_DUP_MS);
            }
        }
    }

    /// Records a session as online.
    pub fn register(&self, client_id: ClientId, handle: SessionHandle) {
        self.adopted.remove(&client_id);
        if self.hand_offs.any() {
            self.hand_offs.cancel(&client_id);
            self.count_handoffs();
        }
        self.online.write().insert(client_id, handle);
        self.metrics
            .connections
            .set(self.online.read().len() as i64);
    }

    /// Records a session as offline, unless a newer connection already took it.
    pub fn deregister(&self, client_id: &str, connection_id: u64) {
        let mut online = self.online.write();
        if online
            .get(client_id)
            .is_some_and(|h| h.connection_id == connection_id)
        {
            online.remove(client_id);
        }
        self.metrics.connections.set(online.len() as i64);
    }

    /// Number of sessions with an open connection.
    pub fn online_count(&self) -> usize {
        self.online.read().len()
    }

    /// Waits until no other connection holds this client id's session, then holds it.
    pub async fn lock_session(&self, client_id: &ClientId) -> OwnedMutexGuard<()> {
        let lock = {
            let mut guard = self.session_locks.lock();
            let SessionLocks { locks, prune_above } = &mut *guard;
            // Dropped locks are pruned when the map has doubled since the last pruning, so the
            // cost stays amortised O(1) per connect however many sessions are held.
            if locks.len() > *prune_above {
                locks.retain(|_, weak| weak.strong_count() > 0);
                *prune_above = (2 * locks.len()).max(1024);
            }
            match locks.get(client_id).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(client_id.clone(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }

    /// Adds a subscription to the routing tree; returns true if it is new.
    pub fn add_subscription(
        &self,
        client_id: &ClientId,
        raw_filter: &str,
        options: SubscriptionOptions,
    ) -> bool {
        let Ok(parsed) = topic::parse_subscription(raw_filter, usize::MAX) else {
            return false;
        };
        let mut tree = self.subscriptions.write();
        let change = tree.insert(client_id, parsed.group, parsed.filter, options);
        self.metrics.subscriptions.set(tree.len() as i64);
        if change.entry_toggled {
            if let Some(link) = self.cluster.get() {
                link.entry_changed(raw_filter, true);
            }
        }
        change.changed
    }

    /// Removes a subscription from the routing tree; returns true if it existed.
    pub fn remove_subscription(&self, client_id: &str, raw_filter: &str) -> bool {
        let Ok(parsed) = topic::parse_subscription(raw_filter, usize::MAX) else {
            return false;
        };
        let mut tree = self.subscriptions.write();
        let change = tree.remove(client_id, parsed.group, parsed.filter);
        self.metrics.subscriptions.set(tree.len() as i64);
        if change.entry_toggled {
            if let Some(link) = self.cluster.get() {
                link.entry_changed(raw_filter, false);
            }
        }
        change.changed
    }

    /// Removes all of a session's subscriptions from the routing tree.
    pub fn remove_subscriptions(&self, client_id: &str, subscriptions: &[StoredSubscription]) {
        for s in subscriptions {
            self.remove_subscription(client_id, &s.filter);
        }
    }

    /// Publishes a will after `delay`, unless the session reconnects first (a will without delay
    /// is published by its connection directly).
    pub fn schedule_will(
        self: &Arc<Self>,
        client_id: ClientId,
        will: Arc<Message>,
        delay: Duration,
    ) {
        let broker = self.clone();
        let id = client_id.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            broker.pending_wills.lock().remove(&id);
            broker.metrics.messages_received[will.qos as usize].inc();
            broker.publish(will).await;
        });
        if let Some(previous) = self
            .pending_wills
            .lock()
            .insert(client_id, task.abort_handle())
        {
            previous.abort();
        }
    }

    /// Cancels a delayed will because its session reconnected.
    pub fn cancel_will(&self, client_id: &str) {
        if let Some(task) = self.pending_wills.lock().remove(client_id) {
            task.abort();
        }
    }

    /// Removes offline sessions whose expiry has passed, with their subscriptions.
    pub async fn expire_sessions(&self) {
        match self.store.take_expired_sessions(SystemTime::now()).await {
            Ok(expired) => {
                for gone in expired {
                    tracing::debug!(client_id = %gone.client_id, "session expired");
                    match (gone.parked_on, self.cluster.get()) {
                        (Some(node), Some(link)) if node != link.node_id() => {
                            let filters = gone
                                .session
                                .subscriptions
                                .into_iter()
                                .map(|s| s.filter)
                                .collect();
                            link.forget_parked(&node, &gone.client_id, filters, false);
                        }
                        _ => {
                            self.remove_subscriptions(&gone.client_id, &gone.session.subscriptions)
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "session expiry sweep failed"),
        }
        if let Ok(n) = self.store.session_count().await {
            self.metrics.sessions.set(n as i64);
        }
    }

    /// Hands a session held by a connection here over to another node that claimed it: closes
    /// the connection (its state goes to the claimer as the connection ends), then tells the
    /// claimer. Waits for the connection to finish, so it runs in a task of its own.
    pub async fn release_session(&self, client_id: &ClientId, claimer: &str) {
        self.hand_offs.note_claimer(client_id, claimer);
        if let Some(handle) = self.online_handle(client_id) {
            handle.mailbox.signal(Signal::TakenOver);
        }
        // Held by the connection until it has stored (handed over) the session.
        let _session = self.lock_session(client_id).await;
        self.cancel_will(client_id);
        // Its connection, if it had one, has taken the note; otherwise it is of no use.
        self.hand_offs.take_claimer(client_id);
    }

    /// Forgets a session parked here that `claimer` took: a delayed will waiting for it is
    /// cancelled, and its subscriptions leave this node's routing tree once the claimer routes
    /// for it ([`Self::hand_off_routes`]). A session that is online here again is left alone.
    pub fn forget_parked(
        self: &Arc<Self>,
        client_id: &ClientId,
        filters: Vec<String>,
        claimer: NodeId,
    ) {
        if self.online.read().contains_key(client_id) {
            return;
        }
        self.adopted.remove(client_id);
        self.cancel_will(client_id);
        self.hand_off_routes(client_id, filters, Some(claimer));
    }

    /// Forgets a session parked here that expired (swept by another node): its subscriptions
    /// leave this node's routing tree and a delayed will waiting for it is cancelled. A session
    /// that is online here again is left alone.
    pub fn forget_expired(&self, client_id: &str, filters: &[String]) {
        if self.online.read().contains_key(client_id) {
            return;
        }
        self.adopted.remove(client_id);
        for filter in filters {
            self.remove_subscription(client_id, filter);
        }
        self.cancel_will(client_id);
    }

    /// Takes the subscriptions of a session that left this node for another one (`new_node`,
    /// when known) out of the routing tree: at once on a single node; in a cluster only once
    /// the new node's routes have reached the cluster (see [`crate::cluster::handoff`]), what
    /// they match meanwhile being sent on to the session's new node.
    pub fn hand_off_routes(
        self: &Arc<Self>,
        client_id: &ClientId,
        filters: Vec<String>,
        new_node: Option<NodeId>,
    ) {
        let Some(link) = self.cluster.get() else {
            for filter in &filters {
                self.remove_subscription(client_id, filter);
            }
            return;
        };
        // Nothing to hand off when no route is left, or the session is connected here again.
        if filters.is_empty() || self.online.read().contains_key(client_id) {
            return;
        }
        let token = self.hand_offs.begin(client_id, filters, new_node);
        self.count_handoffs();
        self.metrics.cluster_handoffs_total.inc();
        let (link, client_id, broker) = (link.clone(), client_id.clone(), self.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + handoff::WAIT_FOR_NEW_ROUTES;
            // First the new node's word that it routes the session, then its entries in this
            // node's replica (the announcement and the note travel apart).
            if let Some(heard) = broker.hand_offs.waiter(&client_id, token) {
                while !broker.hand_offs.routed_there(&client_id, token) {
                    let woken = tokio::time::timeout_at(deadline.into(), heard.notified()).await;
                    if woken.is_err() {
                        break;
                    }
                }
            }
            if let Some((node, filters)) = broker.hand_offs.heard_from_new_node(&client_id, token) {
                while !link.advertised_by(&node, &filters) && Instant::now() < deadline {
                    tokio::time::sleep(handoff::POLL).await;
                }
                if link.advertised_by(&node, &filters) {
                    broker.hand_offs.relayed_there(&client_id, token);
                }
            }
            tokio::time::sleep(handoff::MARGIN).await;
            link.send_unroute(&client_id, token);
        });
    }

    /// The note [`Self::hand_off_routes`] sent itself came back through the inbox: the routes
    /// of that departure go, unless the session came back or left again meanwhile.
    pub fn unroute(&self, client_id: &str, token: u64) {
        let finished = self.hand_offs.finish(client_id, token);
        self.count_handoffs();
        let Some(filters) = finished else {
            return;
        };
        if self.online.read().contains_key(client_id) {
            return;
        }
        for filter in &filters {
            self.remove_subscription(client_id, filter);
        }
    }

    /// Keeps `starling_cluster_handoffs_pending` true.
    fn count_handoffs(&self) {
        self.metrics
            .cluster_handoffs
            .set(self.hand_offs.pending() as i64);
    }

    /// The node a session moved to says it routes the session now (see
    /// [`crate::cluster::handoff`]).
    pub fn routed_elsewhere(&self, client_id: &str, from: &str) {
        self.hand_offs.routed_elsewhere(client_id, from);
    }

    /// The node that asked for the release of a session held here, if one did.
    pub fn claimer_of(&self, client_id: &str) -> Option<NodeId> {
        self.hand_offs.take_claimer(client_id)
    }

    /// Takes over the sessions of a node that left the cluster: their subscriptions are routed
    /// here from now on (parked: messages are queued for them) and the wills of the connections
    /// the node held are published, each once cluster-wide.
    ///
    /// Then recovers the copies the node held only in memory (its journal and inbox, see
    /// [`crate::cluster::recovery`]) in a task of its own, as a departed node's inbox is followed
    /// for a while.
    ///
    /// `run` is the departed run (as gossip or the registry told it): a node back under the
    /// same id with a newer run keeps its sessions, and what its earlier run left is its own to
    /// recover (it does so as it starts).
    ///
    /// A failed adoption is tried again later by the adoption sweep (see
    /// [`crate::cluster::sweep`]).
    pub async fn adopt_sessions_of(
        self: &Arc<Self>,
        departed: &str,
        run: Option<u64>,
        leftovers: Leftovers,
    ) -> AdoptionOutcome {
        let adoption = match self.store.adopt_sessions(departed, run).await {
            Ok(adoption) => adoption,
            Err(e) => {
                tracing::warn!(node = departed, error = %e, "sessions of a departed node not adopted (the adoption sweep tries again)");
                return AdoptionOutcome::Failed;
            }
        };
        let adopted = adoption.sessions;
        if adoption.node_returned && adopted.is_empty() {
            tracing::info!(
                node = departed,
                ?run,
                "a departed node is back under a newer run: its sessions stay its own"
            );
            return AdoptionOutcome::NodeReturned;
        }
        let routes = AdoptedRoutes::new(
            adopted
                .iter()
                .map(|s| (&s.client_id, s.subscriptions.as_slice())),
        );
        if let Some(link) = self.cluster.get() {
            tokio::spawn(recovery::recover(
                link.clone(),
                self.clone(),
                departed.to_string(),
                run,
                leftovers,
                routes,
            ));
        }
        let (mut online, mut wills) = (0, 0);
        if departed != self.config.node_id.as_str() {
            let parked = adopted
                .iter()
                .filter(|s| !s.moved)
                .map(|s| s.client_id.clone());
            self.adopted.insert_all(parked.collect::<Vec<_>>());
        }
        for session in adopted.into_iter().filter(|s| !s.moved) {
            online += usize::from(session.was_online);
            for s in &session.subscriptions {
                self.add_subscription(&session.client_id, &s.filter, s.options.clone());
            }
            if let Some(StoredWill {
                message,
                delay_secs,
            }) = session.will
            {
                wills += 1;
                let delay = Duration::from_secs(u64::from(delay_secs));
                if delay.is_zero() {
                    self.metrics.messages_received[message.qos as usize].inc();
                    self.publish(message).await;
                } else {
                    self.schedule_will(session.client_id.clone(), message, delay);
                }
            }
        }
        tracing::info!(
            node = departed,
            online,
            wills,
            "adopted the sessions of a departed node"
        );
        if adoption.node_returned {
            AdoptionOutcome::NodeReturned
        } else {
            AdoptionOutcome::Adopted
        }
    }

    /// Runs the periodic session-expiry sweep until shutdown.
    pub async fn run_expiry(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut state = self.run_state();
        loop {
            tokio::select! {
                _ = tick.tick() => self.expire_sessions().await,
                _ = state.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved_in(until_ms: u64, relays_until_ms: u64) -> SessionHandle {
        SessionHandle {
            info: None,
            connection_id: 1,
            mailbox: Arc::new(Mailbox::new(8, None, 0)),
            persistent: true,
            moved_in_until_ms: until_ms,
            moved_in_relays_until_ms: relays_until_ms,
        }
    }

    #[test]
    fn relays_appended_before_a_session_moved_in_are_dup_however_late_they_are_read() {
        // Moved in at clock 1_000 (window until 1_500), relays appended up to Redis's 50_500.
        let handle = moved_in(1_500, 50_500);
        let late = 60_000;
        let before_move = Arrival::Relayed {
            appended_ms: 50_000,
        };
        let after_move = Arrival::Relayed {
            appended_ms: 50_501,
        };
        assert!(moved_in_copy(&handle, late, before_move));
        assert!(!moved_in_copy(&handle, late, after_move));
        assert!(!moved_in_copy(&handle, late, Arrival::Here));
        // Within the window right after the move, every copy is.
        assert!(moved_in_copy(&handle, 1_200, after_move));
        assert!(moved_in_copy(&handle, 1_200, Arrival::Here));
    }

    #[test]
    fn a_session_that_did_not_move_in_gets_plain_copies() {
        let handle = moved_in(0, 0);
        assert!(!moved_in_copy(
            &handle,
            0,
            Arrival::Relayed { appended_ms: 0 }
        ));
        assert!(!moved_in_copy(&handle, 0, Arrival::Here));
    }
}
