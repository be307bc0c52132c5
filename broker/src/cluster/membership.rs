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
//! Its files: `single.rs` ([`SingleNode`]), `gossip.rs` ([`GossipMembership`]: memberlist started
//! with our options), `config.rs` (its settings and key file), `members.rs` (members and their
//! joins and leaves in our terms), `seeds.rs` (finding the others through the seeds).
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
//! - Dead members are never reaped ([`gossip::NEVER_REAP_DEAD`]): memberlist 0.8.5 reaps them by
//!   moving them to the end of its member list without updating its id → index map, and the
//!   next message about a moved live member then panics inside memberlist (index out of bounds;
//!   seen in our three-node kill test about 30 s after the death). Keeping dead members costs a
//!   few gossip packets to dead addresses; their number is bounded by the node ids ever used
//!   (StatefulSet ordinals), and a node coming back under its id reclaims its entry.
//! - Seeds are retried in the background for as long as the node sees no other member, so a
//!   node whose seeds are not up yet (or that lost everyone) joins when one answers; while it has
//!   company, seed addresses that are not members are joined too, so that groups formed apart
//!   (nodes started together, each seeing only some of the others in DNS) merge.

mod config;
mod gossip;
mod members;
mod seeds;
mod single;

pub use config::{load_key_file, GossipConfig, GossipTuning};
pub use gossip::{start, GossipMembership};
pub use seeds::SeedStatus;
pub use single::SingleNode;

use async_trait::async_trait;
use memberlist::delegate::{CompositeDelegate, VoidDelegate};
use memberlist::tokio::{TokioHostAddrResolver, TokioNetTransport, TokioTcp};
use memberlist::transport::NodeId;
use members::{EventForwarder, RunMeta};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::broadcast;

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
type Gossip = memberlist::Memberlist<Transport, Delegate>;

#[cfg(test)]
mod tests;
