//! The broker core shared by every connection: the subscription tree, the registry of online
//! sessions, routing of messages to sessions, wills and session expiry.
//!
//! This file holds the [`Broker`] itself, its construction and its lifecycle (keep-alive sweep,
//! run state, shutdown); the rest of its behaviour is spread over the files beside it:
//! `routing.rs` (publish, route, match), `delivery.rs` (into mailboxes or the store),
//! `registry.rs` (online sessions), `subscriptions.rs`, `wills.rs`, `expiry.rs`, `handoff.rs`
//! (sessions moving between nodes) and `cluster_side.rs` (what the cluster code may ask of the
//! broker). The adoption of a departed node's sessions stays here: it
//! starts the recovery of [`crate::cluster::recovery`], which delivers back through
//! [`crate::cluster::local::LocalBroker`].

use crate::auth::{Auth, LiveAuth};
use crate::client_info::Evacuation;
use crate::cluster::adopted::AdoptedParked;
use crate::cluster::handoff::HandOffs;
use crate::cluster::load::Rebalancing;
use crate::cluster::recovery::{self, AdoptedRoutes, Leftovers};
use crate::cluster::relay::ClusterLink;
use crate::mailbox::Signal;
use crate::message::ClientId;
use crate::metrics::Metrics;
use crate::read_mostly::ReadMostly;
use crate::retained_limits::RetainGate;
use crate::router::SubscriptionTree;
use crate::store::{Store, StoredWill};
use parking_lot::Mutex;
use starling_config::BrokerConfig;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::AbortHandle;

mod cluster_side;
mod delivery;
mod expiry;
mod handoff;
mod registry;
mod routing;
mod subscriptions;
mod wills;

pub use registry::SessionHandle;
pub use routing::{Publishing, Routed};

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

/// How often the keep-alive sweep runs (and the coarse clock advances).
pub const KEEP_ALIVE_TICK: Duration = Duration::from_millis(250);

/// One lock per client id held by a connection for its session's lifetime; entries of ended
/// sessions are pruned lazily.
struct SessionLocks {
    locks: HashMap<ClientId, Weak<tokio::sync::Mutex<()>>>,
    prune_above: usize,
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
    /// Whether this node gives connections away to even out the cluster (see
    /// [`crate::cluster::rebalance`]).
    pub(crate) rebalancing: Rebalancing,
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
            rebalancing: Rebalancing::default(),
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
    pub(super) fn announce_entries(&self) {
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
    pub(super) fn disconnect_adopted(&self) -> usize {
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
}
