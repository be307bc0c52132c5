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
//! The routes go when the new node advertises every filter of the session (as seen in this
//! node's replica), plus [`MARGIN`] for the other nodes to see it as well and for the relays
//! they matched before that to arrive, and at most [`WAIT_FOR_NEW_ROUTES`] later. The removal
//! itself is a control entry this node appends to its own inbox, so every entry relayed to it
//! before then is handled first (with the routes still in place).

use crate::message::ClientId;
use crate::router::remote::NodeId;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

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
/// How often the replica is checked for the new node's routes.
pub const POLL: Duration = Duration::from_millis(20);

/// A session whose routes stay here while it moves to another node.
struct Leaving {
    token: u64,
    filters: Vec<String>,
    /// This node's replica shows the new node routing every filter of the session, none of
    /// them shared: what this node publishes reaches the session through that node now.
    reached_by_relay: bool,
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
    pub fn begin(&self, client_id: &ClientId, filters: Vec<String>) -> u64 {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed) + 1;
        let mut leaving = self.leaving.lock();
        // Routes of an earlier departure not yet removed stay routed with this one's.
        let mut filters = filters;
        if let Some(earlier) = leaving.remove(client_id) {
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
                reached_by_relay: false,
            },
        );
        self.count.store(leaving.len(), Ordering::Relaxed);
        token
    }

    /// Notes that the session's new node routes all of its filters (in this node's replica):
    /// what this node publishes from now on goes there through the relay.
    pub fn reached_by_relay(&self, client_id: &str, token: u64) {
        if let Some(l) = self.leaving.lock().get_mut(client_id) {
            if l.token == token && !l.filters.iter().any(|f| f.starts_with("$share/")) {
                l.reached_by_relay = true;
            }
        }
    }

    /// Whether a message published on this node must skip `client_id`: the session left, and
    /// the relay to its new node delivers it there.
    pub fn skips_local_publish(&self, client_id: &str) -> bool {
        self.count.load(Ordering::Relaxed) > 0
            && self
                .leaving
                .lock()
                .get(client_id)
                .is_some_and(|l| l.reached_by_relay)
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
        leaving.remove(client_id);
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
        let first = hand_offs.begin(&client, vec!["a/#".into()]);
        let second = hand_offs.begin(&client, vec!["b".into()]);
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
        let token = hand_offs.begin(&client, vec!["a".into()]);
        hand_offs.cancel("c");
        assert_eq!(hand_offs.finish("c", token), None);
        assert_eq!(hand_offs.pending(), 0);
    }

    #[test]
    fn local_publishes_skip_a_session_only_once_its_new_node_routes_it() {
        let hand_offs = HandOffs::default();
        let (plain, shared): (ClientId, ClientId) = ("plain".into(), "shared".into());
        let token = hand_offs.begin(&plain, vec!["a/#".into()]);
        assert!(!hand_offs.skips_local_publish("plain"));
        hand_offs.reached_by_relay("plain", token + 1);
        assert!(!hand_offs.skips_local_publish("plain"), "a stale token");
        hand_offs.reached_by_relay("plain", token);
        assert!(hand_offs.skips_local_publish("plain"));
        // The share group's member this node picks is not known to be the new node's.
        let token = hand_offs.begin(&shared, vec!["$share/g/a".into()]);
        hand_offs.reached_by_relay("shared", token);
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
