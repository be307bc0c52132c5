//! Relayed messages a publishing connection gathers during one read burst, handed to the relay
//! writer together.
//!
//! Handing each message over on its own cost two atomics shared by every publishing thread (the
//! relay queue's room and its lock) and a clone of the target node's id, more than encoding it.
//! A burst is handed over at once: one permit request and one queue push for the whole burst,
//! and each target node's id cloned once.

use super::relay::encode_groups;
use crate::broker::GroupKey;
use crate::message::Message;
use crate::protocol::QoS;
use crate::router::remote::NodeId;
use std::sync::Arc;

/// Messages gathered before the burst is handed over even if the connection has more input.
pub const MAX_PENDING: usize = 256;

/// One relayed message of a burst.
pub(super) struct PendingRelay {
    /// Index into [`PendingRelays::nodes`].
    pub(super) node: usize,
    pub(super) message: Arc<Message>,
    /// The share groups the node was chosen to serve, encoded for the inbox entry.
    pub(super) groups: String,
}

/// The relayed messages of one burst, in the order they were published.
#[derive(Default)]
pub struct PendingRelays {
    /// The nodes this burst relays to.
    pub(super) nodes: Vec<NodeId>,
    pub(super) items: Vec<PendingRelay>,
}

impl PendingRelays {
    /// Whether nothing is waiting to be handed over.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many messages are waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the burst is large enough to be handed over now.
    pub fn is_full(&self) -> bool {
        self.items.len() >= MAX_PENDING
    }

    /// Adds `message` for `node`, serving `groups` there.
    pub(super) fn push(&mut self, node: &NodeId, message: &Arc<Message>, groups: &[GroupKey]) {
        let node = self.node_index(node);
        self.items.push(PendingRelay {
            node,
            message: message.clone(),
            groups: encode_groups(groups),
        });
    }

    /// Keeps only the messages of QoS 1 and 2 (what may be dropped under pressure is QoS 0);
    /// returns how many were dropped.
    pub(super) fn drop_at_most_once(&mut self) -> usize {
        let before = self.items.len();
        self.items
            .retain(|item| item.message.qos != QoS::AtMostOnce);
        before - self.items.len()
    }

    /// Takes everything gathered, leaving this empty (and holding no memory).
    pub(super) fn take(&mut self) -> PendingRelays {
        std::mem::take(self)
    }

    fn node_index(&mut self, node: &NodeId) -> usize {
        // Ids mostly come from the same replica entry: the pointer test usually answers.
        match self
            .nodes
            .iter()
            .position(|n| Arc::ptr_eq(n, node) || n == node)
        {
            Some(index) => index,
            None => {
                self.nodes.push(node.clone());
                self.nodes.len() - 1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageProperties;
    use bytes::Bytes;

    fn message(topic: &str, qos: QoS) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from_static(b"x"),
            qos,
            retain: false,
            properties: MessageProperties::default(),
            expires_at: None,
            publisher: None,
        })
    }

    #[test]
    fn a_node_is_listed_once_however_many_messages_go_to_it() {
        let (a, b): (NodeId, NodeId) = ("a".into(), "b".into());
        let a_again: NodeId = "a".into();
        let mut pending = PendingRelays::default();
        pending.push(&a, &message("t/1", QoS::AtMostOnce), &[]);
        pending.push(&b, &message("t/2", QoS::AtMostOnce), &[]);
        pending.push(&a_again, &message("t/3", QoS::AtMostOnce), &[]);
        assert_eq!(pending.nodes, vec![a, b]);
        let targets: Vec<(usize, &str)> = pending
            .items
            .iter()
            .map(|item| (item.node, &*item.message.topic))
            .collect();
        assert_eq!(targets, vec![(0, "t/1"), (1, "t/2"), (0, "t/3")]);
    }

    #[test]
    fn under_pressure_only_qos_0_messages_are_dropped() {
        let node: NodeId = "a".into();
        let mut pending = PendingRelays::default();
        pending.push(&node, &message("t/0", QoS::AtMostOnce), &[]);
        pending.push(&node, &message("t/1", QoS::AtLeastOnce), &[]);
        pending.push(&node, &message("t/2", QoS::ExactlyOnce), &[]);
        assert_eq!(pending.drop_at_most_once(), 1);
        let topics: Vec<&str> = pending.items.iter().map(|i| &*i.message.topic).collect();
        assert_eq!(topics, vec!["t/1", "t/2"]);
    }

    #[test]
    fn taking_leaves_nothing_behind() {
        let node: NodeId = "a".into();
        let mut pending = PendingRelays::default();
        for i in 0..MAX_PENDING {
            assert!(!pending.is_full());
            pending.push(&node, &message(&format!("t/{i}"), QoS::AtMostOnce), &[]);
        }
        assert!(pending.is_full());
        let taken = pending.take();
        assert_eq!(taken.len(), MAX_PENDING);
        assert!(pending.is_empty());
        assert_eq!(pending.items.capacity(), 0);
    }
}
