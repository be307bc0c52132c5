//! Batching relayed messages: each write batch's messages packed per target node and appended
//! to that node's inbox stream, which is trimmed to a bound counted in messages.

use super::super::keys::Keys;
use super::super::ClusterLink;
use crate::cluster::packed::{self, Packer};
use crate::cluster::unread::EntryFields;
use crate::router::remote::NodeId;

/// Messages kept per inbox stream (approximate trimming); a node that falls this far behind loses
/// the oldest. A packed entry counts for the messages it holds (see [`append_packed`]).
pub(super) const INBOX_MAX_LEN: usize = 100_000;
/// Size at which a packed inbox entry (messages for one node) is written out and another begun.
pub(super) const PACK_BYTES: usize = 64 * 1024;

/// Starts an XADD to `node`'s inbox (trimmed to about [`INBOX_MAX_LEN`] entries); the caller adds
/// the fields.
pub(super) fn inbox_append<'p>(
    pipe: &'p mut redis::Pipeline,
    keys: &Keys,
    node: &str,
) -> &'p mut redis::Pipeline {
    inbox_append_holding(pipe, keys, node, 1)
}

/// Relayed messages of one write batch, packed per target node (see [`packed`]) until they are
/// appended to the pipeline.
#[derive(Default)]
pub(super) struct Packs {
    pub(super) packers: Vec<(NodeId, Packer)>,
    /// The entries appended to the pipeline whose ids are wanted, in order: node, message count
    /// and the entry's fields (kept until the node's reader reports it read, see
    /// [`crate::cluster::unread`]): the packed entries, and messages sent on for one session.
    /// Their XADD replies (entry ids) are the pipeline's first replies.
    pub(super) appended: Vec<(NodeId, usize, EntryFields)>,
}

impl Packs {
    /// The index of `node`'s packer, made if it has none yet.
    pub(super) fn packer_for(&mut self, node: &NodeId) -> usize {
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
    pub(super) fn push(
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
            let kept = packed_fields(link, packer.as_bytes());
            self.appended.push((node.clone(), packer.count(), kept));
            packer.clear();
        }
    }

    /// Appends every packed entry that holds messages to the pipeline. Called before any other
    /// item is appended, so that the entries of each inbox keep the order of the queue.
    pub(super) fn flush(&mut self, pipe: &mut redis::Pipeline, link: &ClusterLink) {
        for (node, packer) in &mut self.packers {
            if !packer.is_empty() {
                append_packed(pipe, link, node, packer);
                let kept = packed_fields(link, packer.as_bytes());
                self.appended.push((node.clone(), packer.count(), kept));
                packer.clear();
            }
        }
    }
}

/// Appends one packed entry for `node` (its reply is the entry id).
pub(super) fn append_packed(
    pipe: &mut redis::Pipeline,
    link: &ClusterLink,
    node: &str,
    packer: &Packer,
) {
    inbox_append_holding(pipe, &link.keys, node, packer.count())
        .arg("o")
        .arg(&*link.node_id)
        .arg(packed::FIELD)
        .arg(packer.as_bytes());
}

/// The fields of a packed entry holding `value` (see [`append_packed`]), as kept.
fn packed_fields(link: &ClusterLink, value: &[u8]) -> EntryFields {
    vec![
        ("o", link.node_id.as_bytes().to_vec()),
        (packed::FIELD, value.to_vec()),
    ]
}

/// Starts an XADD to `node`'s inbox of an entry holding `messages` messages. The inbox is
/// trimmed to about [`INBOX_MAX_LEN`] messages, counting each entry as holding as many as this
/// one: the bound on what a node that falls behind keeps stays in messages, not in (much
/// larger) packed entries.
pub(super) fn inbox_append_holding<'p>(
    pipe: &'p mut redis::Pipeline,
    keys: &Keys,
    node: &str,
    messages: usize,
) -> &'p mut redis::Pipeline {
    pipe.cmd("XADD")
        .arg(keys.inbox(node))
        .arg("MAXLEN")
        .arg("~")
        .arg(INBOX_MAX_LEN.div_ceil(messages.max(1)))
        .arg("*")
}
