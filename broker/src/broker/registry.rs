//! The registry of online sessions: the handles of the connections held here, their
//! registration and deregistration, and the per-client-id session locks.

use super::{Broker, SessionLocks};
use crate::client_info::ClientInfo;
use crate::cluster::handoff;
use crate::mailbox::Arrival;
use crate::mailbox::Mailbox;
use crate::message::ClientId;
use std::sync::{Arc, Weak};
use tokio::sync::OwnedMutexGuard;

/// How the connection task of an online session is reached.
#[derive(Clone)]
pub struct SessionHandle {
    /// Identifies the connection, so a late deregistration cannot remove a newer one.
    pub connection_id: u64,
    /// Messages to deliver, and signals (takeover, shutdown).
    pub mailbox: Arc<Mailbox>,
    /// Whether the session outlives the connection (expiry > 0): in a cluster, its QoS 1/2
    /// copies are journalled while they are in this node's memory.
    pub persistent: bool,
    /// Until when (on [`Broker::clock_ms`]) copies for a session that just moved here from
    /// another node are marked DUP: the old node may have delivered what was relayed here
    /// before the session arrived (0: not moved in).
    pub moved_in_until_ms: u64,
    /// For a session that moved here: relays appended to this node's inbox up to this time (ms,
    /// Redis's clock, as entry ids carry it) are marked DUP, however late this node reads them
    /// (0: not moved in). They were matched before the session arrived, and the old node may
    /// have delivered them too.
    pub moved_in_relays_until_ms: u64,
    /// What the client told the broker when it connected (for the admin API; `None` for
    /// sessions registered without a connection, in tests).
    pub info: Option<Arc<ClientInfo>>,
}

/// Whether a copy for `handle`'s session that arrived as `arrival` at `clock_ms` (see
/// [`Broker::clock_ms`]) may have reached it through the node it moved here from as well:
/// anything shortly after the move, and relays appended to this node's inbox before it, read
/// however late.
pub(super) fn moved_in_copy(handle: &SessionHandle, clock_ms: u64, arrival: Arrival) -> bool {
    handle.moved_in_until_ms != 0
        && (clock_ms < handle.moved_in_until_ms
            || matches!(arrival, Arrival::Relayed { appended_ms }
                if appended_ms <= handle.moved_in_relays_until_ms))
}

impl Broker {
    /// The online handle of a session, if it is connected here.
    pub fn online_handle(&self, client_id: &str) -> Option<SessionHandle> {
        self.online.read().get(client_id).cloned()
    }

    /// How many sessions with an open connection here `counted` accepts.
    pub fn count_online(&self, counted: impl Fn(&SessionHandle) -> bool) -> usize {
        self.online.read().values().filter(|h| counted(h)).count()
    }

    /// Every session with an open connection here, as it is now.
    pub fn online_handles(&self) -> Vec<(ClientId, SessionHandle)> {
        let online = self.online.read();
        online
            .iter()
            .map(|(id, handle)| (id.clone(), handle.clone()))
            .collect()
    }

    /// Marks a session that just moved here from another node (see
    /// [`SessionHandle::moved_in_until_ms`]).
    pub fn mark_moved_in(&self, client_id: &str, connection_id: u64) {
        if let Some(handle) = self.online.write().get_mut(client_id) {
            if handle.connection_id == connection_id {
                handle.moved_in_until_ms = self.clock_ms() + handoff::MOVED_IN_DUP_MS;
                handle.moved_in_relays_until_ms = self
                    .cluster
                    .get()
                    .map_or(0, |link| link.redis_now_ms() + handoff::MOVED_IN_DUP_MS);
            }
        }
    }

    /// Records a session as online.
    pub fn register(&self, client_id: ClientId, handle: SessionHandle) {
        self.adopted.remove(&client_id);
        if self.cluster.get().is_some() {
            self.rebalancing.note_arrived();
        }
        if self.hand_offs.any() {
            self.hand_offs.cancel(&client_id);
            self.count_handoffs();
        }
        self.online.write().insert(client_id, handle);
        self.metrics
            .connections
            .set(self.online.read().len() as i64);
    }

    /// Records a session as offline, unless a newer connection already took it.
    pub fn deregister(&self, client_id: &str, connection_id: u64) {
        let mut online = self.online.write();
        if online
            .get(client_id)
            .is_some_and(|h| h.connection_id == connection_id)
        {
            online.remove(client_id);
        }
        self.metrics.connections.set(online.len() as i64);
    }

    /// Number of sessions with an open connection.
    pub fn online_count(&self) -> usize {
        self.online.read().len()
    }

    /// Waits until no other connection holds this client id's session, then holds it.
    pub async fn lock_session(&self, client_id: &ClientId) -> OwnedMutexGuard<()> {
        let lock = {
            let mut guard = self.session_locks.lock();
            let SessionLocks { locks, prune_above } = &mut *guard;
            // Dropped locks are pruned when the map has doubled since the last pruning, so the
            // cost stays amortised O(1) per connect however many sessions are held.
            if locks.len() > *prune_above {
                locks.retain(|_, weak| weak.strong_count() > 0);
                *prune_above = (2 * locks.len()).max(1024);
            }
            match locks.get(client_id).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(client_id.clone(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved_in(until_ms: u64, relays_until_ms: u64) -> SessionHandle {
        SessionHandle {
            info: None,
            connection_id: 1,
            mailbox: Arc::new(Mailbox::new(8, None, 0)),
            persistent: true,
            moved_in_until_ms: until_ms,
            moved_in_relays_until_ms: relays_until_ms,
        }
    }

    #[test]
    fn relays_appended_before_a_session_moved_in_are_dup_however_late_they_are_read() {
        // Moved in at clock 1_000 (window until 1_500), relays appended up to Redis's 50_500.
        let handle = moved_in(1_500, 50_500);
        let late = 60_000;
        let before_move = Arrival::Relayed {
            appended_ms: 50_000,
        };
        let after_move = Arrival::Relayed {
            appended_ms: 50_501,
        };
        assert!(moved_in_copy(&handle, late, before_move));
        assert!(!moved_in_copy(&handle, late, after_move));
        assert!(!moved_in_copy(&handle, late, Arrival::Here));
        // Within the window right after the move, every copy is.
        assert!(moved_in_copy(&handle, 1_200, after_move));
        assert!(moved_in_copy(&handle, 1_200, Arrival::Here));
    }

    #[test]
    fn a_session_that_did_not_move_in_gets_plain_copies() {
        let handle = moved_in(0, 0);
        assert!(!moved_in_copy(
            &handle,
            0,
            Arrival::Relayed { appended_ms: 0 }
        ));
        assert!(!moved_in_copy(&handle, 0, Arrival::Here));
    }
}
