//! Routes of a session that left this node for another: kept until the other node's own routes
//! for it have reached the cluster, so that no publish in between finds no route at all.
//!
//! When a session moves (taken over by a connection on another node, or claimed there while it
//! was parked here), the new node advertises its subscriptions only once its claim is done, and
//! every other node learns of that a moment later. Dropping this node's routes at once would
//! leave that moment with no route anywhere: the publishes in it would reach nobody, though
//! they were acknowledged. So this node keeps the session's subscriptions in its routing tree;
//! what they match is queued for the session in the store, which says the session is elsewhere,
//! and the copy is sent on to that node marked DUP (its own routes may deliver it too, once the
//! publisher knew them).
//!
//! The routes go [`MARGIN`] after the new node says it routes the session (a note it appends to
//! this node's inbox once the session's subscriptions are in its routing tree: every relay it
//! reads from then on reaches the session), for relays other nodes matched just before to
//! arrive; at most [`WAIT_FOR_NEW_ROUTES`] after the move when no note comes. From the note on,
//! what this node publishes itself skips the session here: the relay delivers it there. The removal
//! itself is a control entry this node appends to its own inbox, so every entry relayed to it
//! before then is handled first (with the routes still in place).

use crate::message::ClientId;
use crate::router::remote::NodeId;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How long, after this node sees the new node's routes, the old ones stay: the other nodes
/// see the same announcement within milliseconds, and relays they matched just before arrive
/// soon after.
pub const MARGIN: Duration = Duration::from_millis(300);
/// How long copies delivered to a session that just moved here are marked DUP: what was
/// relayed to this node before the session arrived may have reached it through the old node.
/// Measured on the broker's coarse clock (it advances every 250 ms).
pub const MOVED_IN_DUP_MS: u64 = 500;
/// How long the old routes wait at most for the new node's to appear (it may have no
/// subscription this node can recognise, or have gone).
pub const WAIT_FOR_NEW_ROUTES: Duration = Duration::from_secs(10);
/// How often the replica is checked for the new node's entries once its note has come (the
/// announcement usually arrived first: rarely more than one check).
pub const POLL: Duration = Duration::from_millis(20);

/// A session whose routes stay here while it moves to another node.
struct Leaving {
    token: u64,
    filters: Vec<String>,
    /// The node it moved to, when known: only its note counts.
    new_node: Option<NodeId>,
    /// The new node said it routes the session (see [`HandOffs::routed_elsewhere`]).
    routed_there: bool,
    /// And this node's replica shows the new node's entries for all of its filters: what this
    /// node publishes reaches the session through the relay.
    relayed_there: bool,
    /// Wakes the task waiting for the new node's note (or for the departure to end otherwise).
    heard: Arc<Notify>,
}

/// Sessions leaving this node, with the routes they still have here.
#[derive(Default)]
pub struct HandOffs {
    next_token: AtomicU64,
    /// How many sessions are leaving: lets the publish path skip the lock when none is.
    count: AtomicUsize,
    leaving: Mutex<HashMap<ClientId, Leaving>>,
    /// The node that asked for a session's release, until its connection has handed it over.
    claimed_by: Mutex<HashMap<ClientId, NodeId>>,
}

impl HandOffs {
    /// Records that `client_id` is leaving with `filters` still routed here; returns the token
    /// that [`Self::finish`] must present.
    pub fn begin(
        &self,
        client_id: &ClientId,
        filters: Vec<String>,
        new_node: Option<NodeId>,
    ) -> u64 {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed) + 1;
        let mut leaving = self.leaving.lock();
        // Routes of an earlier departure not yet removed stay routed with this one's.
        let mut filters = filters;
        if let Some(earlier) = leaving.remove(client_id) {
            earlier.heard.notify_one();
            for f in earlier.filters {
                if !filters.contains(&f) {
                    filters.push(f);
                }
            }
        }
        leaving.insert(
            client_id.clone(),
            Leaving {
                token,
                filters,
                new_node,
                routed_there: false,
                relayed_there: false,
                heard: Arc::new(Notify::new()),
            },
        );
        self.count.store(leaving.len(), Ordering::Relaxed);
        token
    }

    /// The session's new node (`from`) says it routes the session: its subscriptions are in
    /// that node's routing tree, and every relay that reaches that node from now on reaches
    /// the session. A note from another node than the one the session went to is ignored.
    pub fn routed_elsewhere(&self, client_id: &str, from: &str) {
        if let Some(l) = self.leaving.lock().get_mut(client_id) {
            if l.new_node.as_deref().is_none_or(|n| n == from) {
                l.new_node = Some(from.into());
                l.routed_there = true;
                l.heard.notify_one();
            }
        }
    }

    /// What wakes the task waiting for departure `token` of `client_id` to hear from the new
    /// node (`None`: the departure is over).
    pub fn waiter(&self, client_id: &str, token: u64) -> Option<Arc<Notify>> {
        let leaving = self.leaving.lock();
        let l = leaving.get(client_id).filter(|l| l.token == token)?;
        Some(l.heard.clone())
    }

    /// Whether the departure `token` of `client_id` has heard from the new node (or is over).
    pub fn routed_there(&self, client_id: &str, token: u64) -> bool {
        self.leaving
            .lock()
            .get(client_id)
            .is_none_or(|l| l.token != token || l.routed_there)
    }

    /// Whether a message published on this node must skip `client_id`: the session left, its
    /// new node routes it, and the relay there (which this node's publishes take once the
    /// replica shows that node's entries) delivers it. Not for a session in a share group:
    /// which member this node picks is not the new node's choice.
    pub fn skips_local_publish(&self, client_id: &str) -> bool {
        self.count.load(Ordering::Relaxed) > 0
            && self.leaving.lock().get(client_id).is_some_and(|l| {
                l.relayed_there && !l.filters.iter().any(|f| f.starts_with("$share/"))
            })
    }

    /// The filters of departure `token` and the node it went to, once that node has said it
    /// routes the session (`None` before, or when the departure is over).
    pub fn heard_from_new_node(
        &self,
        client_id: &str,
        token: u64,
    ) -> Option<(NodeId, Vec<String>)> {
        let leaving = self.leaving.lock();
        let l = leaving.get(client_id)?;
        if l.token != token || !l.routed_there {
            return None;
        }
        Some((l.new_node.clone()?, l.filters.clone()))
    }

    /// Notes that this node's replica shows the new node's entries for the session.
    pub fn relayed_there(&self, client_id: &str, token: u64) {
        if let Some(l) = self.leaving.lock().get_mut(client_id) {
            if l.token == token {
                l.relayed_there = true;
            }
        }
    }

    /// Whether any session is leaving.
    pub fn any(&self) -> bool {
        self.count.load(Ordering::Relaxed) > 0
    }

    /// How many sessions are leaving.
    pub fn pending(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// The filters to remove now, if `token` is still the session's latest departure (not
    /// superseded, and the session did not come back meanwhile).
    pub fn finish(&self, client_id: &str, token: u64) -> Option<Vec<String>> {
        let mut leaving = self.leaving.lock();
        let filters = match leaving.get(client_id) {
            Some(l) if l.token == token => leaving.remove(client_id).map(|l| l.filters),
            _ => None,
        };
        self.count.store(leaving.len(), Ordering::Relaxed);
        filters
    }

    /// The session connected here again: its routes are its own once more.
    pub fn cancel(&self, client_id: &str) {
        if !self.any() {
            return;
        }
        let mut leaving = self.leaving.lock();
        if let Some(gone) = leaving.remove(client_id) {
            gone.heard.notify_one();
        }
        self.count.store(leaving.len(), Ordering::Relaxed);
    }

    /// Whether routes of `client_id` are kept here for a departure.
    pub fn is_leaving(&self, client_id: &str) -> bool {
        self.leaving.lock().contains_key(client_id)
    }

    /// Notes which node asked for the release of a session held here.
    pub fn note_claimer(&self, client_id: &ClientId, node: &str) {
        self.claimed_by
            .lock()
            .insert(client_id.clone(), node.into());
    }

    /// The node that asked for the release of `client_id`, forgotten once asked.
    pub fn take_claimer(&self, client_id: &str) -> Option<NodeId> {
        self.claimed_by.lock().remove(client_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_departure_finishes_only_with_its_latest_token() {
        let hand_offs = HandOffs::default();
        let client: ClientId = "c".into();
        let first = hand_offs.begin(&client, vec!["a/#".into()], None);
        let second = hand_offs.begin(&client, vec!["b".into()], None);
        assert_ne!(first, second);
        assert_eq!(hand_offs.finish("c", first), None);
        let mut filters = hand_offs
            .finish("c", second)
            .expect("latest token finishes");
        filters.sort();
        assert_eq!(filters, vec!["a/#".to_string(), "b".to_string()]);
        assert!(!hand_offs.is_leaving("c"));
    }

    #[test]
    fn a_session_that_came_back_keeps_its_routes() {
        let hand_offs = HandOffs::default();
        let client: ClientId = "c".into();
        let token = hand_offs.begin(&client, vec!["a".into()], None);
        hand_offs.cancel("c");
        assert_eq!(hand_offs.finish("c", token), None);
        assert_eq!(hand_offs.pending(), 0);
    }

    #[test]
    fn local_publishes_skip_a_session_only_once_its_new_node_says_it_routes_it() {
        let hand_offs = HandOffs::default();
        let (plain, shared): (ClientId, ClientId) = ("plain".into(), "shared".into());
        let token = hand_offs.begin(&plain, vec!["a/#".into()], Some("node-b".into()));
        assert!(!hand_offs.skips_local_publish("plain"));
        assert!(!hand_offs.routed_there("plain", token));
        hand_offs.routed_elsewhere("plain", "node-c");
        assert!(
            !hand_offs.skips_local_publish("plain"),
            "not the node it went to"
        );
        hand_offs.routed_elsewhere("plain", "node-b");
        assert!(hand_offs.routed_there("plain", token));
        assert!(
            !hand_offs.skips_local_publish("plain"),
            "not before this node's replica shows the new node's entries"
        );
        assert_eq!(
            hand_offs.heard_from_new_node("plain", token),
            Some(("node-b".into(), vec!["a/#".to_string()]))
        );
        hand_offs.relayed_there("plain", token);
        assert!(hand_offs.skips_local_publish("plain"));
        // The share group's member this node picks is not known to be the new node's.
        hand_offs.begin(&shared, vec!["$share/g/a".into()], None);
        hand_offs.routed_elsewhere("shared", "node-b");
        assert!(!hand_offs.skips_local_publish("shared"));
        assert_eq!(hand_offs.pending(), 2);
    }

    #[test]
    fn the_claimer_is_told_once() {
        let hand_offs = HandOffs::default();
        let client: ClientId = "c".into();
        hand_offs.note_claimer(&client, "node-b");
        assert_eq!(hand_offs.take_claimer("c").as_deref(), Some("node-b"));
        assert_eq!(hand_offs.take_claimer("c"), None);
    }
}
