//! Relayed messages a publishing connection gathers during one read burst, handed to the relay
//! writer together.
//!
//! Handing each message over on its own cost two atomics shared by every publishing thread (the
//! relay queue's room and its lock) and a clone of the target node's id, more than encoding it.
//! A burst is handed over at once: one permit request and one queue push for the whole burst,
//! and each target node's id cloned once.

use super::packed::encode_groups;
use super::packed::{self, Packer};
use crate::message::Message;
use crate::protocol::QoS;
use crate::router::remote::NodeId;
use crate::router::GroupKey;
use crate::store::redis::codec;
use std::sync::Arc;

/// Messages gathered before the burst is handed over even if the connection has more input.
pub const MAX_PENDING: usize = 256;

/// Encoded bytes gathered before the burst is handed over even if the connection has more
/// input (large payloads reach it before [`MAX_PENDING`]).
pub const MAX_PENDING_BYTES: usize = 64 * 1024;

/// The messages of a burst bound for one node, already packed (see [`packed`]).
pub(super) struct Target {
    pub(super) node: NodeId,
    pub(super) records: Packer,
    /// The QoS of each record, in order: what may be dropped under pressure is QoS 0.
    qos: Vec<QoS>,
}

/// The relayed messages of one burst, encoded and packed per target node in the order they
/// were published.
///
/// They are encoded here, on the publishing connection's thread, while the message is fresh in
/// its cache: the relay writer then only copies bytes, and the message is released by the
/// thread that made it (releasing it on the writer's thread cost more than encoding it).
#[derive(Default)]
pub struct PendingRelays {
    /// The nodes this burst relays to, each listed once.
    pub(super) targets: Vec<Target>,
}

impl PendingRelays {
    /// Whether nothing is waiting to be handed over.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many messages are waiting (a message relayed to two nodes counts twice).
    pub fn len(&self) -> usize {
        self.targets.iter().map(|t| t.qos.len()).sum()
    }

    /// Whether the burst is large enough to be handed over now.
    pub fn is_full(&self) -> bool {
        let bytes: usize = self.targets.iter().map(|t| t.records.byte_len()).sum();
        self.len() >= MAX_PENDING || bytes >= MAX_PENDING_BYTES
    }

    /// Adds `message` for each of `targets`, serving the given share groups there. The message
    /// is encoded once; a message that cannot be encoded is logged and not relayed.
    pub(super) fn push<'t>(
        &mut self,
        message: &Message,
        targets: impl IntoIterator<Item = (&'t NodeId, &'t [GroupKey])>,
    ) {
        // The first target's record, copied to the others.
        let mut first: Option<(usize, std::ops::Range<usize>)> = None;
        for (node, groups) in targets {
            let index = self.target_index(node);
            let groups = encode_groups(groups);
            let pushed = match first.clone() {
                None => {
                    let encode = |out: &mut Vec<u8>| codec::encode_message_into(message, out);
                    let written = self.targets[index]
                        .records
                        .push_with(encode, groups.as_bytes());
                    written.map(|range| first = Some((index, range)))
                }
                Some((from, range)) => self.copy_record(from, range, index, &groups),
            };
            match pushed {
                Ok(()) => self.targets[index].qos.push(message.qos),
                Err(e) => {
                    tracing::warn!(error = %e, node = %node, "message not relayed: packing failed");
                }
            }
        }
    }

    /// Appends to target `to` the message bytes at `range` of target `from`'s records.
    fn copy_record(
        &mut self,
        from: usize,
        range: std::ops::Range<usize>,
        to: usize,
        groups: &str,
    ) -> Result<(), packed::PackedError> {
        match self.targets.get_disjoint_mut([from, to]) {
            Ok([source, target]) => {
                let message = &source.records.as_bytes()[range];
                target.records.push(message, groups.as_bytes())
            }
            // The same node listed twice (targets are distinct nodes, so it does not happen):
            // copied through a buffer.
            Err(_) => {
                let message = self.targets[from].records.as_bytes()[range].to_vec();
                self.targets[to].records.push(&message, groups.as_bytes())
            }
        }
    }

    /// Keeps only the messages of QoS 1 and 2 (what may be dropped under pressure is QoS 0);
    /// returns how many were dropped.
    pub(super) fn drop_at_most_once(&mut self) -> usize {
        let before = self.len();
        for target in &mut self.targets {
            if !target.qos.contains(&QoS::AtMostOnce) {
                continue;
            }
            let mut kept = Packer::new();
            let mut kept_qos = Vec::new();
            // Written by this node a moment ago: every record reads back.
            let records = packed::records(target.records.as_bytes())
                .into_iter()
                .flatten();
            for (record, &qos) in records.zip(&target.qos) {
                let Ok(record) = record else { continue };
                if qos != QoS::AtMostOnce && kept.push(record.message, record.groups).is_ok() {
                    kept_qos.push(qos);
                }
            }
            target.records = kept;
            target.qos = kept_qos;
        }
        self.targets.retain(|t| !t.records.is_empty());
        before - self.len()
    }

    /// Takes everything gathered, leaving this empty (and holding no memory).
    pub(super) fn take(&mut self) -> PendingRelays {
        std::mem::take(self)
    }

    fn target_index(&mut self, node: &NodeId) -> usize {
        // Ids mostly come from the same replica entry: the pointer test usually answers.
        match self
            .targets
            .iter()
            .position(|t| Arc::ptr_eq(&t.node, node) || t.node == *node)
        {
            Some(index) => index,
            None => {
                self.targets.push(Target {
                    node: node.clone(),
                    records: Packer::new(),
                    qos: Vec::new(),
                });
                self.targets.len() - 1
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
            received_at: None,
        })
    }

    /// The topics and encoded groups of the records packed for target `index`.
    fn packed_for(pending: &PendingRelays, index: usize) -> Vec<(String, String)> {
        let records = packed::records(pending.targets[index].records.as_bytes()).unwrap();
        records
            .map(|record| {
                let record = record.unwrap();
                let message = codec::decode_message(record.message).unwrap();
                let groups = String::from_utf8(record.groups.to_vec()).unwrap();
                (message.topic.to_string(), groups)
            })
            .collect()
    }

    fn topics(pending: &PendingRelays, index: usize) -> Vec<String> {
        packed_for(pending, index)
            .into_iter()
            .map(|(t, _)| t)
            .collect()
    }

    #[test]
    fn a_node_is_listed_once_however_many_messages_go_to_it() {
        let (a, b): (NodeId, NodeId) = ("a".into(), "b".into());
        let a_again: NodeId = "a".into();
        let mut pending = PendingRelays::default();
        pending.push(&message("t/1", QoS::AtMostOnce), [(&a, &[][..])]);
        pending.push(&message("t/2", QoS::AtMostOnce), [(&b, &[][..])]);
        pending.push(&message("t/3", QoS::AtMostOnce), [(&a_again, &[][..])]);
        let nodes: Vec<&NodeId> = pending.targets.iter().map(|t| &t.node).collect();
        assert_eq!(nodes, vec![&a, &b]);
        assert_eq!(topics(&pending, 0), vec!["t/1", "t/3"]);
        assert_eq!(topics(&pending, 1), vec!["t/2"]);
        assert_eq!(pending.len(), 3);
    }

    #[test]
    fn a_message_for_several_nodes_reaches_each_with_its_own_groups() {
        let (a, b): (NodeId, NodeId) = ("a".into(), "b".into());
        let group: GroupKey = ("g".into(), "t/#".into());
        let mut pending = PendingRelays::default();
        let groups_b = [group.clone()];
        pending.push(
            &message("t/1", QoS::AtLeastOnce),
            [(&a, &[][..]), (&b, &groups_b[..])],
        );
        pending.push(&message("t/2", QoS::AtMostOnce), [(&b, &[][..])]);
        assert_eq!(pending.len(), 3);
        assert_eq!(packed_for(&pending, 0), vec![("t/1".into(), String::new())]);
        assert_eq!(
            packed_for(&pending, 1),
            vec![
                ("t/1".into(), encode_groups(&[group])),
                ("t/2".into(), String::new())
            ]
        );
    }

    #[test]
    fn under_pressure_only_qos_0_messages_are_dropped() {
        let (a, b): (NodeId, NodeId) = ("a".into(), "b".into());
        let mut pending = PendingRelays::default();
        pending.push(&message("t/0", QoS::AtMostOnce), [(&a, &[][..])]);
        pending.push(&message("t/1", QoS::AtLeastOnce), [(&a, &[][..])]);
        pending.push(&message("t/b", QoS::AtMostOnce), [(&b, &[][..])]);
        pending.push(&message("t/2", QoS::ExactlyOnce), [(&a, &[][..])]);
        assert_eq!(pending.drop_at_most_once(), 2);
        assert_eq!(pending.len(), 2);
        assert_eq!(
            pending.targets.len(),
            1,
            "a node left with nothing is not listed"
        );
        assert_eq!(topics(&pending, 0), vec!["t/1", "t/2"]);
    }

    #[test]
    fn a_burst_is_full_at_its_message_count_or_its_size() {
        let node: NodeId = "a".into();
        let mut pending = PendingRelays::default();
        let mut large = (*message("t/large", QoS::AtMostOnce)).clone();
        large.payload = Bytes::from(vec![7; MAX_PENDING_BYTES / 2]);
        pending.push(&large, [(&node, &[][..])]);
        assert!(!pending.is_full());
        pending.push(&large, [(&node, &[][..])]);
        assert!(pending.is_full());
        assert_eq!(pending.len(), 2);
    }

    #[test]
    fn taking_leaves_nothing_behind() {
        let node: NodeId = "a".into();
        let mut pending = PendingRelays::default();
        for i in 0..MAX_PENDING {
            assert!(!pending.is_full());
            pending.push(
                &message(&format!("t/{i}"), QoS::AtMostOnce),
                [(&node, &[][..])],
            );
        }
        assert!(pending.is_full());
        let taken = pending.take();
        assert_eq!(taken.len(), MAX_PENDING);
        assert!(pending.is_empty());
        assert_eq!(pending.targets.capacity(), 0);
    }
}
