//! Cluster membership: which broker nodes are up, learned by gossip.
//!
//! The rest of the broker sees only the [`Membership`] trait, [`NodeInfo`] and [`MemberEvent`];
//! the gossip library behind it ([`memberlist`], a SWIM implementation with the Lifeguard
//! extensions) stays inside this module.
//!
//! Two implementations:
//! - [`SingleNode`]: standalone mode, the node is alone and nothing ever changes.
//! - [`GossipMembership`] (built by [`start`]): memberlist over TCP + UDP on one port, optionally
//!   AES-GCM encrypted, joining the cluster through seed addresses.
//!
//! Choices made against memberlist's defaults, each for a trap found in it:
//! - Seeds are resolved by the system resolver ([`tokio::net::lookup_host`], i.e.
//!   `getaddrinfo`, which honours `/etc/resolv.conf` search domains as Kubernetes sets them),
//!   every address of a name is tried, and addresses of the other IP family than the bind
//!   address are skipped (`localhost` may resolve to `::1` first). memberlist's own DNS resolver
//!   queries public DNS servers, and its host resolver keeps only the first address of a name and
//!   caches it for a minute; the transport still uses the host resolver, but only for the bind
//!   address, which is an IP.
//! - `dead_node_reclaim_time` is set ([`GossipConfig::dead_node_reclaim`]); memberlist's default
//!   of zero rejects forever a node that died and comes back under the same id at another
//!   address (a restarted pod gets a new IP).
//! - The probe timings follow the classic LAN profile (probe every second, 500 ms ack timeout):
//!   memberlist 0.8's `Options::lan()` swaps the two (500 ms interval, 1 s timeout), which
//!   leaves no time in a probe round for the indirect probes.
//! - Dead members are never reaped ([`NEVER_REAP_DEAD`]): memberlist 0.8.5 reaps them by
//!   moving them to the end of its member list without updating its id → index map, and the
//!   next message about a moved live member then panics inside memberlist (index out of bounds;
//!   seen in our three-node kill test about 30 s after the death). Keeping dead members costs a
//!   few gossip packets to dead addresses; their number is bounded by the node ids ever used
//!   (StatefulSet ordinals), and a node coming back under its id reclaims its entry.
//! - Seeds are retried in the background for as long as the node sees no other member, so a
//!   node whose seeds are not up yet (or that lost everyone) joins when one answers; while it has
//!   company, seed addresses that are not members are joined too, so that groups formed apart
//!   (nodes started together, each seeing only some of the others in DNS) merge.

use async_trait::async_trait;
use memberlist::delegate::{CompositeDelegate, EventDelegate, NodeDelegate, VoidDelegate};
use memberlist::net::{HostAddr, NetTransportOptions};
use memberlist::proto::{EncryptionAlgorithm, MaybeResolvedAddress, Meta, NodeState, SecretKey};
use memberlist::tokio::{TokioHostAddrResolver, TokioNetTransport, TokioTcp};
use memberlist::transport::NodeId;
use memberlist::Options;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// How long memberlist keeps a dead member before reaping it: in effect never (see the module
/// documentation).
const NEVER_REAP_DEAD: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// How many membership events a slow subscriber may fall behind before it sees
/// [`broadcast::error::RecvError::Lagged`] (and should re-read [`Membership::members`]).
const EVENT_CAPACITY: usize = 256;

/// Longest a seed's name resolution may take before the attempt counts as failed.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// First pause between seed attempts; it doubles up to [`GossipTuning::seed_retry_max`].
const SEED_RETRY_MIN: Duration = Duration::from_millis(200);

/// Largest key file accepted; a base64 key of 32 bytes is 44 characters.
const KEY_FILE_MAX: u64 = 1024;

/// One broker node as membership knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    /// The node's id (its `node_id` setting), unique in the cluster.
    pub id: String,
    /// The address the node's gossip is reached at (for [`SingleNode`], `0.0.0.0:0`).
    pub addr: SocketAddr,
    /// The run of the node this is about (its process since it last started, see
    /// [`GossipConfig::run`]); `None` when the node publishes none.
    pub run: Option<u64>,
}

/// A change in the cluster's membership, as seen by this node. Never about the node itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// A node joined (or came back, possibly at a new address).
    Joined(NodeInfo),
    /// A node left gracefully or was declared failed; gossip does not tell the two apart to
    /// the receiver, so neither does this event.
    Left(NodeInfo),
}

/// Why membership could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The node id cannot be used as a gossip id.
    #[error("node id {id:?} cannot be used for gossip: {reason}")]
    InvalidNodeId {
        /// The id given.
        id: String,
        /// Why it was refused.
        reason: String,
    },
    /// A seed is not `host:port`.
    #[error("gossip seed {seed:?} is not host:port: {reason}")]
    InvalidSeed {
        /// The seed given.
        seed: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The encryption key has the wrong length.
    #[error("gossip key has {0} bytes; AES needs 16, 24 or 32")]
    InvalidKey(usize),
    /// The key file could not be read or does not hold a key.
    #[error(
        "`cluster.gossip_key_file` {path}: {reason}; it must hold the base64 text of a 16, 24 or \
         32-byte key, e.g. from `openssl rand -base64 32`"
    )]
    KeyFile {
        /// The file named in the configuration.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The gossip transport could not start (bind failed, no address to advertise, ...).
    #[error("gossip could not start on {bind}: {reason}")]
    Start {
        /// The bind address.
        bind: SocketAddr,
        /// The transport's error.
        reason: String,
    },
    /// The leave message was not sent to any peer within the timeout; the node has stopped
    /// anyway and will be declared failed by the others instead.
    #[error("gossip leave: {0}")]
    Leave(String),
}

/// The cluster's membership as this node sees it.
#[async_trait]
pub trait Membership: Send + Sync {
    /// This node's id.
    fn local_id(&self) -> &str;

    /// The nodes currently up (alive or merely suspected), this node included.
    async fn members(&self) -> Vec<NodeInfo>;

    /// Subscribes to joins and leaves of other nodes from now on. A subscriber that falls more
    /// than a few hundred events behind gets `Lagged` and should re-read [`Self::members`].
    fn events(&self) -> broadcast::Receiver<MemberEvent>;

    /// Leaves the cluster: tells the others (waiting at most `timeout` for the message to go
    /// out) and stops gossiping. Calling it again does nothing.
    async fn leave(&self, timeout: Duration) -> Result<(), MembershipError>;
}

/// Membership of a standalone node: only itself, forever.
#[derive(Debug)]
pub struct SingleNode {
    me: NodeInfo,
    events: broadcast::Sender<MemberEvent>,
}

impl SingleNode {
    /// A standalone node with this id; its address is `0.0.0.0:0` (it has no gossip).
    pub fn new(node_id: impl Into<String>) -> Self {
        SingleNode {
            me: NodeInfo {
                id: node_id.into(),
                addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                run: None,
            },
            events: broadcast::channel(1).0,
        }
    }
}

#[async_trait]
impl Membership for SingleNode {
    fn local_id(&self) -> &str {
        &self.me.id
    }

    async fn members(&self) -> Vec<NodeInfo> {
        vec![self.me.clone()]
    }

    fn events(&self) -> broadcast::Receiver<MemberEvent> {
        self.events.subscribe()
    }

    async fn leave(&self, _timeout: Duration) -> Result<(), MembershipError> {
        Ok(())
    }
}

/// Timings of the gossip protocol. [`Default`] suits a LAN or a Kubernetes cluster network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipTuning {
    /// Time between failure-detection probes of one random member.
    pub probe_interval: Duration,
    /// How long a probe waits for the direct ack before asking other nodes to probe
    /// (should exceed the network's 99th-percentile round trip; less than `probe_interval`).
    pub probe_timeout: Duration,
    /// A suspected node is declared failed after `suspicion_mult × log10(n) × probe_interval`
    /// (at least `suspicion_mult × probe_interval`), sooner with confirmations from others.
    pub suspicion_mult: usize,
    /// Time between rounds of piggy-backed gossip to a few random members.
    pub gossip_interval: Duration,
    /// Time between full state exchanges with one random member over TCP. These also repair
    /// what gossip lost, such as a restarted node whose first announcement came too early.
    pub push_pull_interval: Duration,
    /// Timeout of a TCP exchange (joining, state sync, fallback probes).
    pub tcp_timeout: Duration,
    /// Longest pause between seed attempts while this node is alone.
    pub seed_retry_max: Duration,
}

impl Default for GossipTuning {
    fn default() -> Self {
        GossipTuning {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            suspicion_mult: 4,
            gossip_interval: Duration::from_millis(200),
            push_pull_interval: Duration::from_secs(15),
            tcp_timeout: Duration::from_secs(10),
            seed_retry_max: Duration::from_secs(5),
        }
    }
}

/// Settings of a gossiping node.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// This node's id, unique in the cluster (1 to 255 bytes).
    pub node_id: String,
    /// Address to bind, TCP and UDP on the same port; port 0 lets the system choose.
    pub bind: SocketAddr,
    /// Address other nodes dial; unset: `bind`, or when that is `0.0.0.0`/`::`, the host's
    /// first private address (startup fails when it has none).
    pub advertise: Option<SocketAddr>,
    /// Other nodes' gossip addresses as `host:port`, tried until one answers.
    pub seeds: Vec<String>,
    /// AES-GCM key (16, 24 or 32 bytes) shared by every node; `None` means no encryption, and
    /// such a node cannot talk to encrypted ones.
    pub secret_key: Option<Vec<u8>>,
    /// How long a node must have been dead before a node with the same id at another address is
    /// accepted in its place. Zero would refuse such a node for as long as the dead entry lasts.
    pub dead_node_reclaim: Duration,
    /// Protocol timings.
    pub tuning: GossipTuning,
    /// This node's run, published with its gossip: a node restarting under the same id is
    /// told apart from its earlier run by it, so that what is done about the earlier run's
    /// departure (adopting its sessions) never touches the new one. `None` publishes nothing.
    pub run: Option<u64>,
}

impl GossipConfig {
    /// Settings with the given id and bind address, no seeds, no encryption, a reclaim time of
    /// 3 s and default timings.
    pub fn new(node_id: impl Into<String>, bind: SocketAddr) -> Self {
        GossipConfig {
            node_id: node_id.into(),
            bind,
            advertise: None,
            seeds: Vec::new(),
            secret_key: None,
            dead_node_reclaim: Duration::from_secs(3),
            tuning: GossipTuning::default(),
            run: None,
        }
    }
}

/// How the search for other nodes through the seeds is going.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeedStatus {
    /// Seed rounds tried so far (a round tries every address of every seed).
    pub attempts: u64,
    /// Some seed answered and took this node in, at least once.
    pub contacted: bool,
    /// Why the latest round failed, if it did.
    pub last_error: Option<String>,
}

/// Reads a gossip key file: base64 text (whitespace around it ignored) of 16, 24 or 32 bytes.
pub fn load_key_file(path: &Path) -> Result<Vec<u8>, MembershipError> {
    let fail = |reason: String| MembershipError::KeyFile {
        path: path.display().to_string(),
        reason,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| fail(e.to_string()))?
        .len();
    if size > KEY_FILE_MAX {
        return Err(fail(format!("{size} bytes is far too long for a key")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let key: SecretKey = text
        .trim()
        .parse()
        .map_err(|e| fail(format!("not a base64 key of the right length ({e})")))?;
    Ok(key.to_vec())
}

/// Starts gossip with `config` and returns the node's view of the cluster.
pub async fn start(config: GossipConfig) -> Result<Arc<dyn Membership>, MembershipError> {
    let membership: Arc<dyn Membership> = GossipMembership::start(config).await?;
    Ok(membership)
}

type Transport = TokioNetTransport<NodeId, TokioHostAddrResolver, TokioTcp>;
type Delegate = CompositeDelegate<
    NodeId,
    SocketAddr,
    VoidDelegate<NodeId, SocketAddr>,
    VoidDelegate<NodeId, SocketAddr>,
    EventForwarder,
    VoidDelegate<NodeId, SocketAddr>,
    RunMeta,
>;

/// Publishes this node's run as its gossip metadata (decimal; empty when it has none).
struct RunMeta(Meta);

impl NodeDelegate for RunMeta {
    async fn node_meta(&self, _limit: usize) -> Meta {
        self.0.clone()
    }
}

/// The run a node publishes in its metadata, if it publishes one.
fn published_run(meta: &[u8]) -> Option<u64> {
    std::str::from_utf8(meta).ok()?.parse().ok()
}
type Gossip = memberlist::Memberlist<Transport, Delegate>;

/// Passes memberlist's join and leave notifications on as [`MemberEvent`]s.
///
/// memberlist calls it with its member table locked, so it must not wait: a broadcast send
/// never does.
struct EventForwarder {
    local: NodeId,
    events: broadcast::Sender<MemberEvent>,
}

impl EventForwarder {
    fn forward(&self, node: &NodeState<NodeId, SocketAddr>, joined: bool) {
        if node.id() == &self.local {
            return;
        }
        let info = node_info(node);
        tracing::info!(node = %info.id, addr = %info.addr, joined, "cluster membership changed");
        let event = if joined {
            MemberEvent::Joined(info)
        } else {
            MemberEvent::Left(info)
        };
        // No subscriber is not an error: nobody is interested yet.
        let _ = self.events.send(event);
    }
}

impl EventDelegate for EventForwarder {
    type Id = NodeId;
    type Address = SocketAddr;

    async fn notify_join(&self, node: Arc<NodeState<NodeId, SocketAddr>>) {
        self.forward(&node, true);
    }

    async fn notify_leave(&self, node: Arc<NodeState<NodeId, SocketAddr>>) {
        self.forward(&node, false);
    }

    async fn notify_update(&self, _node: Arc<NodeState<NodeId, SocketAddr>>) {
        // Only metadata changes land here, and nodes publish none.
    }
}

fn node_info(node: &NodeState<NodeId, SocketAddr>) -> NodeInfo {
    NodeInfo {
        id: node.id().as_str().to_string(),
        addr: *node.address(),
        run: published_run(node.meta()),
    }
}

/// Membership by gossip; see the module documentation.
pub struct GossipMembership {
    id: String,
    gossip: Gossip,
    events: broadcast::Sender<MemberEvent>,
    seed_status: watch::Receiver<SeedStatus>,
    seeder: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GossipMembership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipMembership")
            .field("id", &self.id)
            .field("advertise", self.gossip.advertise_address())
            .finish_non_exhaustive()
    }
}

impl GossipMembership {
    /// Binds the gossip port, starts the protocol and, if there are seeds, the background task
    /// that contacts them. Returns once the node is listening; joining happens in the background.
    pub async fn start(config: GossipConfig) -> Result<Arc<Self>, MembershipError> {
        let id = NodeId::new(&config.node_id).map_err(|e| MembershipError::InvalidNodeId {
            id: config.node_id.clone(),
            reason: e.to_string(),
        })?;
        for seed in &config.seeds {
            check_seed(seed)?;
        }
        let key = config
            .secret_key
            .as_deref()
            .map(|k| SecretKey::try_from(k).map_err(|_| MembershipError::InvalidKey(k.len())))
            .transpose()?;

        let transport =
            NetTransportOptions::<NodeId, TokioHostAddrResolver, TokioTcp>::new(id.clone())
                .with_bind_addresses([HostAddr::from(config.bind)].into_iter().collect())
                .maybe_advertise_address(config.advertise);

        let t = &config.tuning;
        let mut options = Options::lan()
            .with_probe_interval(t.probe_interval)
            .with_probe_timeout(t.probe_timeout)
            .with_suspicion_mult(t.suspicion_mult)
            .with_gossip_interval(t.gossip_interval)
            .with_push_pull_interval(t.push_pull_interval)
            .with_timeout(t.tcp_timeout)
            .with_dead_node_reclaim_time(config.dead_node_reclaim)
            .with_gossip_to_the_dead_time(NEVER_REAP_DEAD);
        if let Some(key) = key {
            options = options
                .with_primary_key(key)
                .with_encryption_algo(EncryptionAlgorithm::default())
                .with_gossip_verify_incoming(true)
                .with_gossip_verify_outgoing(true);
        }

        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let meta = match config.run {
            Some(run) => Meta::try_from(run.to_string()).map_err(|e| MembershipError::Start {
                bind: config.bind,
                reason: e.to_string(),
            })?,
            None => Meta::empty(),
        };
        let delegate = CompositeDelegate::new()
            .with_event_delegate(EventForwarder {
                local: id.clone(),
                events: events.clone(),
            })
            .with_node_delegate(RunMeta(meta));
        let gossip = Gossip::with_delegate(delegate, transport, options)
            .await
            .map_err(|e| MembershipError::Start {
                bind: config.bind,
                reason: e.to_string(),
            })?;
        let advertise = *gossip.advertise_address();
        tracing::info!(
            node = %config.node_id,
            bind = %config.bind,
            %advertise,
            encrypted = config.secret_key.is_some(),
            seeds = ?config.seeds,
            "gossip started"
        );

        let (status_tx, seed_status) = watch::channel(SeedStatus::default());
        let seeder = (!config.seeds.is_empty()).then(|| {
            let own = [config.bind, advertise];
            tokio::spawn(seed_loop(
                gossip.clone(),
                config.seeds.clone(),
                own,
                config.tuning.seed_retry_max,
                status_tx,
            ))
        });
        Ok(Arc::new(GossipMembership {
            id: config.node_id,
            gossip,
            events,
            seed_status,
            seeder,
        }))
    }

    /// The address other nodes reach this node's gossip at (with the real port when bound to 0).
    pub fn advertise_addr(&self) -> SocketAddr {
        *self.gossip.advertise_address()
    }

    /// How contacting the seeds is going (never changes for a node without seeds).
    pub fn seed_status(&self) -> watch::Receiver<SeedStatus> {
        self.seed_status.clone()
    }

    /// Stops gossiping at once, without telling anyone: to the others the node looks failed.
    pub async fn shutdown(&self) {
        if let Some(seeder) = &self.seeder {
            seeder.abort();
        }
        if let Err(e) = self.gossip.shutdown().await {
            tracing::warn!(error = %e, "gossip shutdown");
        }
    }
}

#[async_trait]
impl Membership for GossipMembership {
    fn local_id(&self) -> &str {
        &self.id
    }

    async fn members(&self) -> Vec<NodeInfo> {
        self.gossip
            .online_members()
            .await
            .iter()
            .map(|n| node_info(n))
            .collect()
    }

    fn events(&self) -> broadcast::Receiver<MemberEvent> {
        self.events.subscribe()
    }

    async fn leave(&self, timeout: Duration) -> Result<(), MembershipError> {
        if let Some(seeder) = &self.seeder {
            seeder.abort();
        }
        let left = self.gossip.leave(timeout).await;
        self.shutdown().await;
        match left {
            Ok(_) => {
                tracing::info!(node = %self.id, "left the cluster");
                Ok(())
            }
            Err(e) => Err(MembershipError::Leave(e.to_string())),
        }
    }
}

impl Drop for GossipMembership {
    fn drop(&mut self) {
        if let Some(seeder) = &self.seeder {
            seeder.abort();
        }
        // memberlist's tasks hold clones of it, so dropping ours alone would leave them running.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let gossip = self.gossip.clone();
            runtime.spawn(async move {
                let _ = gossip.shutdown().await;
            });
        }
    }
}

/// Checks that `seed` is `host:port` with a non-zero port (IPv6 hosts in brackets).
fn check_seed(seed: &str) -> Result<(), MembershipError> {
    let invalid = |reason: &str| MembershipError::InvalidSeed {
        seed: seed.to_string(),
        reason: reason.to_string(),
    };
    let (host, port) = seed.rsplit_once(':').ok_or_else(|| invalid("no `:port`"))?;
    match port.parse::<u16>() {
        Ok(p) if p != 0 => {}
        _ => return Err(invalid("the port is not a number in 1..=65535")),
    }
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.is_empty() || (host.contains(':') && !bracketed) || host.contains(char::is_whitespace) {
        return Err(invalid(
            "the host is empty, has spaces or is an unbracketed IPv6",
        ));
    }
    Ok(())
}

/// Resolves every seed with the system resolver, keeping the addresses this node can reach
/// (same IP family as its own address) that are not its own.
async fn resolve_seeds(seeds: &[String], own: &[SocketAddr]) -> (Vec<SocketAddr>, Vec<String>) {
    let ipv4 = own[0].is_ipv4();
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for seed in seeds {
        match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(seed.as_str())).await {
            Ok(Ok(addrs)) => {
                let before = found.len();
                for addr in addrs {
                    if (ipv4 && !addr.is_ipv4()) || own.contains(&addr) || found.contains(&addr) {
                        continue;
                    }
                    found.push(addr);
                }
                if found.len() == before {
                    tracing::debug!(%seed, "seed has no address but this node's own");
                }
            }
            Ok(Err(e)) => problems.push(format!("{seed}: {e}")),
            Err(_) => problems.push(format!("{seed}: name resolution timed out")),
        }
    }
    (found, problems)
}

/// Joins the seed addresses that are not members this node sees, quietly (failures are logged at
/// debug level: a pod that is starting or stopping is often among them).
///
/// A seed name that resolves to every node (a Kubernetes headless Service) can split a cluster
/// that starts all at once: two nodes that each saw only the other in DNS form a pair, the next
/// two another, and neither pair, having company, would ever look again. Checking the seeds
/// while in company merges such groups.
async fn join_unknown_seeds(gossip: &Gossip, seeds: &[String], own: &[SocketAddr]) {
    let (addrs, _) = resolve_seeds(seeds, own).await;
    if addrs.is_empty() {
        return;
    }
    let known: Vec<SocketAddr> = gossip
        .online_members()
        .await
        .iter()
        .map(|n| *n.address())
        .collect();
    for addr in addrs.into_iter().filter(|a| !known.contains(a)) {
        match gossip.join(MaybeResolvedAddress::Resolved(addr)).await {
            Ok(_) => tracing::info!(%addr, "joined a seed address that was not a member"),
            Err(e) => tracing::debug!(%addr, error = %e, "seed address not joined"),
        }
    }
}

/// Contacts the seeds whenever this node sees no other member, with a doubling pause between
/// rounds; while it has company, joins (at the longest pause) seed addresses that are not members.
async fn seed_loop(
    gossip: Gossip,
    seeds: Vec<String>,
    own: [SocketAddr; 2],
    retry_max: Duration,
    status: watch::Sender<SeedStatus>,
) {
    let mut pause = SEED_RETRY_MIN.min(retry_max);
    loop {
        if gossip.num_online_members().await > 1 {
            pause = SEED_RETRY_MIN.min(retry_max);
            join_unknown_seeds(&gossip, &seeds, &own).await;
            tokio::time::sleep(retry_max).await;
            continue;
        }
        let (addrs, mut problems) = resolve_seeds(&seeds, &own).await;
        let mut joined = false;
        if !addrs.is_empty() {
            tracing::debug!(?addrs, "contacting gossip seeds");
            // One by one: memberlist's `join_many` future is not `Send`, so it cannot run in a
            // spawned task. Every address is tried, not just the first that answers, so that
            // seeds in separate groups are all merged.
            for addr in &addrs {
                match gossip.join(MaybeResolvedAddress::Resolved(*addr)).await {
                    Ok(_) => joined = true,
                    Err(e) => problems.push(format!("{addr}: {e}")),
                }
            }
        }
        // A one-node cluster whose seed list names only itself is fine; say so quietly.
        let only_self = addrs.is_empty() && problems.is_empty();
        if only_self {
            problems.push("every seed is this node itself".to_string());
        }
        let error = (!joined).then(|| problems.join("; "));
        let attempt = status.borrow().attempts + 1;
        match &error {
            None => tracing::info!(attempt, "joined the cluster through the seeds"),
            // Loud at first and then now and again: a lone node may wait long for its peers.
            Some(e) if !only_self && (attempt == 1 || attempt.is_multiple_of(10)) => {
                tracing::warn!(error = %e, attempt, "no gossip seed answered; retrying")
            }
            Some(e) => tracing::debug!(error = %e, attempt, "no gossip seed answered; retrying"),
        }
        status.send_modify(|s| {
            s.attempts += 1;
            s.contacted |= joined;
            s.last_error = error;
        });
        if joined {
            pause = SEED_RETRY_MIN.min(retry_max);
            tokio::time::sleep(retry_max).await;
        } else {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(retry_max);
        }
    }
}

#[cfg(test)]
mod tests;
