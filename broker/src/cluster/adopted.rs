//! Sessions this node adopted from a node gossip declared gone, while they stay parked here.
//!
//! Gossip can be wrong: a node that stalled past the failure timeout is declared dead while it
//! is alive, and until it notices (within a second of running again, see
//! [`super::health`]) its connections go on delivering. What this node queues for the sessions
//! it adopted from such a node may therefore reach the client twice, so those copies are marked
//! DUP, until the client connects again (here or elsewhere).

use crate::message::ClientId;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The adopted sessions still parked here.
#[derive(Default)]
pub struct AdoptedParked {
    /// How many: lets the queueing path skip the lock when none is.
    count: AtomicUsize,
    sessions: Mutex<HashSet<ClientId>>,
}

impl AdoptedParked {
    /// Records sessions just adopted.
    pub fn insert_all(&self, clients: impl IntoIterator<Item = ClientId>) {
        let mut sessions = self.sessions.lock();
        sessions.extend(clients);
        self.count.store(sessions.len(), Ordering::Relaxed);
    }

    /// The session connected again (or left this node): copies for it are plain again.
    pub fn remove(&self, client_id: &str) {
        if self.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut sessions = self.sessions.lock();
        sessions.remove(client_id);
        self.count.store(sessions.len(), Ordering::Relaxed);
    }

    /// Whether copies queued for `client_id` are marked DUP.
    pub fn contains(&self, client_id: &str) -> bool {
        self.count.load(Ordering::Relaxed) > 0 && self.sessions.lock().contains(client_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adopted_session_is_marked_until_it_connects_again() {
        let adopted = AdoptedParked::default();
        assert!(!adopted.contains("a"));
        adopted.insert_all(["a".into(), "b".into()]);
        assert!(adopted.contains("a") && adopted.contains("b"));
        adopted.remove("a");
        assert!(!adopted.contains("a") && adopted.contains("b"));
    }
}
