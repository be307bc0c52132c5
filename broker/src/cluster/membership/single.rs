//! Standalone mode: a membership of one node, where nothing ever changes.

use super::{MemberEvent, Membership, MembershipError, NodeInfo};
use async_trait::async_trait;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::sync::broadcast;

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
