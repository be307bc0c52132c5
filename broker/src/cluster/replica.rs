//! This node's replica of the other nodes' entries: kept current by their announcements, and
//! rebuilt from the listings they keep in Redis without losing an announcement that arrives
//! while a listing is being read.
//!
//! A listing is read from Redis over several round trips, on another connection than the one
//! announcements arrive on. An announcement applied meanwhile may be newer than the listing
//! (the node added an entry after its set was read): applying the listing on top would undo it,
//! and a route a subscriber still needs would be gone until the next resynchronisation. So while
//! any listing is being read, every change applied is also recorded, and replayed, in order, on
//! top of the listing when it is applied. Replaying a change the listing already holds is
//! harmless: changes of one node arrive in the order the node made them.

use crate::read_mostly::ReadMostly;
use crate::router::remote::{NodeId, RemoteFilters};
use crossbeam_utils::sync::ShardedLockReadGuard;
use parking_lot::Mutex;

/// The replica and the changes recorded while listings are read.
#[derive(Default)]
pub struct Replica {
    filters: ReadMostly<RemoteFilters>,
    recorded: Mutex<Recorded>,
}

/// Changes applied since the oldest listing read still open began.
#[derive(Default)]
struct Recorded {
    /// Listing reads begun and not yet applied or abandoned.
    open: usize,
    /// How many changes were dropped from the front of `changes` (so positions stay valid).
    dropped: usize,
    changes: Vec<Change>,
}

/// One change to the replica, as it was applied.
#[derive(Debug, Clone)]
enum Change {
    Added(NodeId, String),
    Removed(NodeId, String),
    Forgotten(NodeId),
}

/// What a node keeps in Redis, read while a [`ListingRead`] was open.
#[derive(Debug, Clone)]
pub struct Listing {
    pub node: NodeId,
    pub entries: Vec<String>,
    /// Whether the listing is complete and replaces what the replica has of the node, or only
    /// adds to it.
    pub replaces: bool,
}

/// A listing read in progress: changes applied from its start on are replayed when it is
/// applied ([`ListingRead::apply`]); dropped without applying, it stops recording.
pub struct ListingRead<'r> {
    replica: &'r Replica,
    /// Position in the recorded changes where this read began.
    from: usize,
    open: bool,
}

impl Replica {
    /// Shared access to the replica, to route a message.
    pub fn read(&self) -> ShardedLockReadGuard<'_, RemoteFilters> {
        self.filters.read()
    }

    /// Applies an announced change; returns the replica's size after it.
    pub fn announced(&self, node: &NodeId, raw: &str, added: bool) -> usize {
        let change = if added {
            Change::Added(node.clone(), raw.to_string())
        } else {
            Change::Removed(node.clone(), raw.to_string())
        };
        self.change(change).1
    }

    /// Forgets a node that left the cluster; returns how many entries it had and the replica's
    /// size after.
    pub fn forget(&self, node: &NodeId) -> (usize, usize) {
        self.change(Change::Forgotten(node.clone()))
    }

    fn change(&self, change: Change) -> (usize, usize) {
        let mut filters = self.filters.write();
        let affected = apply(&mut filters, &change);
        let mut recorded = self.recorded.lock();
        if recorded.open > 0 {
            recorded.changes.push(change);
        }
        (affected, filters.len())
    }

    /// Starts reading listings: from now on, changes are recorded for it.
    pub fn begin_listing_read(&self) -> ListingRead<'_> {
        let mut recorded = self.recorded.lock();
        recorded.open += 1;
        ListingRead {
            replica: self,
            from: recorded.dropped + recorded.changes.len(),
            open: true,
        }
    }

    fn close(&self) {
        let mut recorded = self.recorded.lock();
        recorded.open = recorded.open.saturating_sub(1);
        if recorded.open == 0 {
            recorded.dropped += recorded.changes.len();
            recorded.changes.clear();
        }
    }
}

impl ListingRead<'_> {
    /// Applies the listings read, then replays every change applied since the read began; returns
    /// the replica's size.
    pub fn apply(mut self, listings: Vec<Listing>) -> usize {
        let replica = self.replica;
        let size = {
            let mut filters = replica.filters.write();
            for listing in listings {
                if listing.replaces {
                    filters.replace_node(&listing.node, listing.entries);
                } else {
                    for raw in &listing.entries {
                        filters.add(&listing.node, raw);
                    }
                }
            }
            let recorded = replica.recorded.lock();
            let start = self.from.saturating_sub(recorded.dropped);
            for change in recorded.changes.iter().skip(start) {
                apply(&mut filters, change);
            }
            filters.len()
        };
        self.open = false;
        replica.close();
        size
    }
}

impl Drop for ListingRead<'_> {
    /// A read abandoned (Redis failed midway) stops recording for it.
    fn drop(&mut self) {
        if self.open {
            self.replica.close();
        }
    }
}

/// Applies one change; returns how many entries it added or removed.
fn apply(filters: &mut RemoteFilters, change: &Change) -> usize {
    match change {
        Change::Added(node, raw) => usize::from(filters.add(node, raw)),
        Change::Removed(node, raw) => usize::from(filters.remove(node, raw)),
        Change::Forgotten(node) => filters.remove_node(node),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeId {
        NodeId::from(name)
    }

    fn listing(name: &str, entries: &[&str], replaces: bool) -> Listing {
        Listing {
            node: node(name),
            entries: entries.iter().map(|e| e.to_string()).collect(),
            replaces,
        }
    }

    #[test]
    fn an_entry_announced_while_a_listing_is_read_survives_the_listing() {
        let replica = Replica::default();
        let read = replica.begin_listing_read();
        // The listing was read before the node added `b/#`; its announcement came first.
        replica.announced(&node("n1"), "b/#", true);
        read.apply(vec![listing("n1", &["a/#"], true)]);
        assert!(replica.read().advertises("n1", "a/#"));
        assert!(replica.read().advertises("n1", "b/#"));
        assert_eq!(replica.read().len(), 2);
    }

    #[test]
    fn an_entry_removed_while_a_listing_is_read_stays_removed() {
        let replica = Replica::default();
        replica.announced(&node("n1"), "a/#", true);
        let read = replica.begin_listing_read();
        replica.announced(&node("n1"), "a/#", false);
        // A merge-only listing read before the removal still holds it.
        read.apply(vec![listing("n1", &["a/#"], false)]);
        assert!(!replica.read().advertises("n1", "a/#"));
    }

    #[test]
    fn a_node_forgotten_while_a_listing_is_read_stays_forgotten() {
        let replica = Replica::default();
        let read = replica.begin_listing_read();
        replica.forget(&node("n2"));
        read.apply(vec![listing("n2", &["x"], true)]);
        assert!(replica.read().is_empty());
    }

    #[test]
    fn a_replacing_listing_drops_what_the_node_no_longer_has() {
        let replica = Replica::default();
        replica.announced(&node("n1"), "old", true);
        let read = replica.begin_listing_read();
        read.apply(vec![listing("n1", &["new"], true)]);
        assert!(!replica.read().advertises("n1", "old"));
        assert!(replica.read().advertises("n1", "new"));
    }

    #[test]
    fn changes_before_a_read_began_are_not_replayed() {
        let replica = Replica::default();
        replica.announced(&node("n1"), "gone", true);
        let read = replica.begin_listing_read();
        read.apply(vec![listing("n1", &[], true)]);
        assert!(replica.read().is_empty());
    }

    #[test]
    fn overlapping_reads_each_replay_what_came_after_their_own_start() {
        let replica = Replica::default();
        let first = replica.begin_listing_read();
        replica.announced(&node("n1"), "one", true);
        let second = replica.begin_listing_read();
        replica.announced(&node("n1"), "two", true);
        second.apply(vec![listing("n1", &["one"], true)]);
        assert!(replica.read().advertises("n1", "two"));
        first.apply(vec![listing("n1", &[], true)]);
        assert!(replica.read().advertises("n1", "one"));
        assert!(replica.read().advertises("n1", "two"));
    }

    #[test]
    fn nothing_is_recorded_once_every_read_is_applied_or_abandoned() {
        let replica = Replica::default();
        let read = replica.begin_listing_read();
        replica.announced(&node("n1"), "a", true);
        drop(read);
        replica.announced(&node("n1"), "b", true);
        assert!(replica.recorded.lock().changes.is_empty());
        assert_eq!(replica.recorded.lock().open, 0);
    }
}
