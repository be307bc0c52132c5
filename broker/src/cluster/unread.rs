//! How far each node's inbox reader is behind the messages this node appended to that inbox:
//! the relay writer stops appending to a node whose reader is a window behind, so that a slow
//! reader pushes back on the publishers (through the relay queue) instead of its inbox growing
//! until trimming drops messages nobody read.

use crate::router::remote::NodeId;
use std::collections::{HashMap, VecDeque};

/// Entries kept per node at most (an inbox is trimmed long before that).
const MAX_TRACKED: usize = 100_000;

/// A stream entry id: milliseconds and sequence number.
pub type StreamId = (u64, u64);

/// Parses a stream entry id (`<ms>-<seq>`).
pub fn parse_stream_id(text: &[u8]) -> Option<StreamId> {
    let text = std::str::from_utf8(text).ok()?;
    let (ms, seq) = text.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Entries this node appended to other nodes' inboxes that their readers have not reported read.
#[derive(Debug, Default)]
pub struct Unread {
    nodes: HashMap<NodeId, VecDeque<(StreamId, usize)>>,
}

impl Unread {
    /// Records an entry of `messages` messages appended to `node`'s inbox as `id`.
    pub fn appended(&mut self, node: &NodeId, id: StreamId, messages: usize) {
        let entries = self.nodes.entry(node.clone()).or_default();
        if entries.len() >= MAX_TRACKED {
            // A reader this far behind has lost the oldest to trimming anyway.
            entries.pop_front();
        }
        entries.push_back((id, messages));
    }

    /// `node`'s reader reported it has delivered everything up to `read`.
    pub fn read_up_to(&mut self, node: &str, read: StreamId) {
        if let Some(entries) = self.nodes.get_mut(node) {
            while entries.front().is_some_and(|(id, _)| *id <= read) {
                entries.pop_front();
            }
        }
    }

    /// Messages appended to `node`'s inbox and not reported read.
    pub fn messages(&self, node: &str) -> usize {
        self.nodes
            .get(node)
            .map_or(0, |entries| entries.iter().map(|(_, n)| n).sum())
    }

    /// Nodes with entries not reported read.
    pub fn behind(&self) -> impl Iterator<Item = &NodeId> {
        self.nodes
            .iter()
            .filter(|(_, entries)| !entries.is_empty())
            .map(|(node, _)| node)
    }

    /// Forgets a node (it left the cluster).
    pub fn forget(&mut self, node: &str) {
        self.nodes.remove(node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_parse_and_order_like_redis() {
        assert_eq!(
            parse_stream_id(b"1700000000000-7"),
            Some((1_700_000_000_000, 7))
        );
        assert!(parse_stream_id(b"1-2").unwrap() < parse_stream_id(b"1-10").unwrap());
        assert!(parse_stream_id(b"9-99").unwrap() < parse_stream_id(b"10-0").unwrap());
        for bad in [&b""[..], b"12", b"a-1", b"1-", b"-1", b"1-2-3", b"\xff-1"] {
            assert_eq!(parse_stream_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn messages_count_until_the_reader_reports_their_entries_read() {
        let b: NodeId = "b".into();
        let c: NodeId = "c".into();
        let mut unread = Unread::default();
        unread.appended(&b, (1, 0), 10);
        unread.appended(&b, (1, 1), 5);
        unread.appended(&b, (2, 0), 1);
        unread.appended(&c, (1, 2), 7);
        assert_eq!(unread.messages("b"), 16);
        assert_eq!(unread.messages("c"), 7);
        assert_eq!(unread.messages("d"), 0);

        // Ids in between count too: other nodes append to the same inbox.
        unread.read_up_to("b", (1, 5));
        assert_eq!(unread.messages("b"), 1);
        assert_eq!(unread.messages("c"), 7, "another node's reader is apart");
        unread.read_up_to("b", (1, 9));
        assert_eq!(unread.messages("b"), 1, "an older report changes nothing");
        unread.read_up_to("b", (2, 0));
        assert_eq!(unread.messages("b"), 0);
        assert_eq!(unread.behind().collect::<Vec<_>>(), vec![&c]);

        unread.forget("c");
        assert_eq!(unread.messages("c"), 0);
        assert_eq!(unread.behind().count(), 0);
    }
}
