//! What memberlist says about members, in the broker's terms: a member's [`NodeInfo`] (with the
//! run it publishes in its metadata), and joins and leaves passed on as [`MemberEvent`]s.

use super::{MemberEvent, NodeInfo};
use memberlist::delegate::{EventDelegate, NodeDelegate};
use memberlist::proto::{Meta, NodeState};
use memberlist::transport::NodeId;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Publishes this node's run as its gossip metadata (decimal; empty when it has none).
pub(super) struct RunMeta(pub(super) Meta);

impl NodeDelegate for RunMeta {
    async fn node_meta(&self, _limit: usize) -> Meta {
        self.0.clone()
    }
}

/// The run a node publishes in its metadata, if it publishes one.
pub(super) fn published_run(meta: &[u8]) -> Option<u64> {
    std::str::from_utf8(meta).ok()?.parse().ok()
}

/// Passes memberlist's join and leave notifications on as [`MemberEvent`]s.
///
/// memberlist calls it with its member table locked, so it must not wait: a broadcast send
/// never does.
pub(super) struct EventForwarder {
    pub(super) local: NodeId,
    pub(super) events: broadcast::Sender<MemberEvent>,
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

pub(super) fn node_info(node: &NodeState<NodeId, SocketAddr>) -> NodeInfo {
    NodeInfo {
        id: node.id().as_str().to_string(),
        addr: *node.address(),
        run: published_run(node.meta()),
    }
}
