//! How far each node's inbox reader is behind the messages this node appended to that inbox:
//! the relay writer stops appending to a node whose reader is a window behind, so that a slow
//! reader pushes back on the publishers (through the relay queue) instead of its inbox growing
//! until trimming drops messages nobody read. Until they are read, copies of the entries are
//! kept, to append again should Redis lose them.

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

/// Entries this node appended to other nodes' inboxes that their readers have not reported
/// read, each with a copy of what it holds while the copies fit in [`KEEP_BYTES`]: a Redis that
/// loses what it confirmed (replaced by an empty one, or failed over to a replica that lacked the
/// last writes) loses these entries, and the writer appends the copies again.
#[derive(Debug, Default)]
pub struct Unread {
    nodes: HashMap<NodeId, VecDeque<Appended>>,
    /// Bytes of the copies kept, over all nodes.
    kept_bytes: usize,
}

/// Bytes of copies of unread entries kept at most, over all nodes. Readers report their
/// progress within milliseconds, and the writer holds back for a reader a window behind, so
/// this is reached only for a reader that stopped (its node is likely gone, and a node that
/// comes back reads what it missed from its journal and the stored sessions).
pub const KEEP_BYTES: usize = 64 * 1024 * 1024;

/// The fields of an inbox entry, as appended.
pub type EntryFields = Vec<(&'static str, Vec<u8>)>;

/// The bytes a copy of `fields` holds (its values: the names are static).
fn copy_len(fields: &EntryFields) -> usize {
    fields.iter().map(|(_, value)| value.len()).sum()
}

/// One appended entry not reported read.
#[derive(Debug)]
struct Appended {
    id: StreamId,
    messages: usize,
    /// Its fields, unless they did not fit in [`KEEP_BYTES`].
    copy: Option<EntryFields>,
}

/// The unread entries of one node, taken to be appended again.
#[derive(Debug, PartialEq, Eq)]
pub struct Unappended {
    pub node: NodeId,
    /// Copies of its entries (their fields), oldest first, with the messages each holds.
    pub copies: Vec<(EntryFields, usize)>,
    /// Messages of entries whose copy was not kept.
    pub without_copy: usize,
}

impl Unread {
    /// Records an entry of `messages` messages appended to `node`'s inbox as `id`, holding
    /// `copy` (kept while the copies fit in [`KEEP_BYTES`]).
    pub fn appended(&mut self, node: &NodeId, id: StreamId, messages: usize, copy: EntryFields) {
        let entries = self.nodes.entry(node.clone()).or_default();
        if entries.len() >= MAX_TRACKED {
            // A reader this far behind has lost the oldest to trimming anyway.
            if let Some(oldest) = entries.pop_front() {
                self.kept_bytes -= oldest.copy.as_ref().map_or(0, copy_len);
            }
        }
        let len = copy_len(&copy);
        let copy = (self.kept_bytes + len <= KEEP_BYTES).then_some(copy);
        self.kept_bytes += copy.as_ref().map_or(0, |_| len);
        entries.push_back(Appended { id, messages, copy });
    }

    /// `node`'s reader reported it has delivered everything up to `read`.
    pub fn read_up_to(&mut self, node: &str, read: StreamId) {
        if let Some(entries) = self.nodes.get_mut(node) {
            while entries.front().is_some_and(|entry| entry.id <= read) {
                if let Some(done) = entries.pop_front() {
                    self.kept_bytes -= done.copy.as_ref().map_or(0, copy_len);
                }
            }
        }
    }

    /// Messages appended to `node`'s inbox and not reported read.
    pub fn messages(&self, node: &str) -> usize {
        self.nodes.get(node).map_or(0, |entries| {
            entries.iter().map(|entry| entry.messages).sum()
        })
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
        if let Some(entries) = self.nodes.remove(node) {
            self.kept_bytes -= entries
                .iter()
                .map(|entry| entry.copy.as_ref().map_or(0, copy_len))
                .sum::<usize>();
        }
    }

    /// Takes every entry not reported read, node by node, forgetting them all: Redis lost
    /// them (their ids mean nothing any more), and the caller appends the copies again.
    pub fn take_all(&mut self) -> Vec<Unappended> {
        self.kept_bytes = 0;
        let mut taken: Vec<Unappended> = self
            .nodes
            .drain()
            .filter(|(_, entries)| !entries.is_empty())
            .map(|(node, entries)| {
                let mut copies = Vec::with_capacity(entries.len());
                let mut without_copy = 0;
                for entry in entries {
                    match entry.copy {
                        Some(copy) => copies.push((copy, entry.messages)),
                        None => without_copy += entry.messages,
                    }
                }
                Unappended {
                    node,
                    copies,
                    without_copy,
                }
            })
            .collect();
        taken.sort_by(|a, b| a.node.cmp(&b.node));
        taken
    }

    /// Bytes of the copies kept.
    pub fn kept_bytes(&self) -> usize {
        self.kept_bytes
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
        unread.appended(&b, (1, 0), 10, vec![("b", vec![0; 3])]);
        unread.appended(&b, (1, 1), 5, vec![("b", vec![1; 3])]);
        unread.appended(&b, (2, 0), 1, vec![("b", vec![2; 3])]);
        unread.appended(&c, (1, 2), 7, vec![("b", vec![3; 3])]);
        assert_eq!(unread.kept_bytes(), 12);
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
        assert_eq!(unread.kept_bytes(), 0, "copies go with their entries");
    }

    #[test]
    fn the_unread_entries_are_taken_with_their_copies_within_the_bound() {
        let b: NodeId = "b".into();
        let c: NodeId = "c".into();
        let mut unread = Unread::default();
        let fields = |value: &[u8]| vec![("o", b"a".to_vec()), ("b", value.to_vec())];
        unread.appended(&c, (1, 0), 2, fields(b"c1"));
        unread.appended(&b, (1, 1), 3, fields(b"b1"));
        unread.appended(&b, (1, 2), 4, fields(b"b2"));
        unread.read_up_to("b", (1, 1));
        // Beyond the bound no copy is kept, but the messages still count.
        unread.appended(&b, (1, 3), 5, fields(&vec![0; KEEP_BYTES]));
        assert_eq!(unread.kept_bytes(), 6);
        assert_eq!(unread.messages("b"), 9);
        let taken = unread.take_all();
        assert_eq!(
            taken,
            vec![
                Unappended {
                    node: b.clone(),
                    copies: vec![(fields(b"b2"), 4)],
                    without_copy: 5,
                },
                Unappended {
                    node: c,
                    copies: vec![(fields(b"c1"), 2)],
                    without_copy: 0,
                },
            ]
        );
        assert_eq!(unread.kept_bytes(), 0);
        assert_eq!(unread.messages("b"), 0);
        assert!(unread.take_all().is_empty());
    }
}
