//! Listing markers: how a node tells the others that its entry set in Redis is complete, and
//! when another node may let that set replace what its replica has of the node.
//!
//! After Redis lost its data, failed over, or was away, each node writes all its entries again,
//! then (through the same ordered writer) its marker, `<run>/<seq>/<epoch>`: a new value for
//! every listing, tied to the epoch it was written under. Until a node's marker says so, its
//! set in Redis may lack entries it still has (it has not noticed the event yet, or its writes
//! are still on their way), and replacing the replica's copy with it would drop routes that
//! subscribers need, losing messages. Such a set is only merged, and the replacement is tried
//! again later.

use crate::router::remote::NodeId;
use std::collections::HashMap;

/// Each node's marker as read from Redis (`None`: it has none).
pub type Markers = HashMap<NodeId, Option<String>>;

/// The marker for a listing written under `epoch`.
pub fn marker(run: u64, seq: u64, epoch: &str) -> String {
    format!("{run}/{seq}/{epoch}")
}

/// The epoch a marker was written under.
fn epoch_of(marker: &str) -> Option<&str> {
    let mut parts = marker.splitn(3, '/');
    let (_run, _seq) = (parts.next()?, parts.next()?);
    parts.next()
}

/// What made this node rebuild its replica, and so which listings it can trust.
#[derive(Debug, Clone)]
pub enum Relisting {
    /// Redis lost its data: every marker under the current epoch was written after its node
    /// listed everything again.
    AfterLoss,
    /// The announcement channel was reconnected (Redis was away or failed over, and a promoted
    /// replica may lack the last writes): only a marker that changed since `seen` (read when the
    /// channel came back) shows its node listed everything again.
    AfterReconnection { seen: Markers },
}

impl Relisting {
    /// Whether `node`'s set, read with `marker` under `epoch`, is complete.
    pub fn complete(&self, node: &NodeId, marker: Option<&str>, epoch: &str) -> bool {
        let Some(marker) = marker else {
            return false;
        };
        if epoch_of(marker) != Some(epoch) {
            return false;
        }
        match self {
            Relisting::AfterLoss => true,
            Relisting::AfterReconnection { seen } => {
                seen.get(node).and_then(|m| m.as_deref()) != Some(marker)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeId {
        NodeId::from("n1")
    }

    #[test]
    fn without_a_marker_a_set_is_never_complete() {
        assert!(!Relisting::AfterLoss.complete(&node(), None, "e1"));
    }

    #[test]
    fn after_a_loss_a_marker_of_the_current_epoch_is_enough() {
        let m = marker(7, 1, "e2");
        assert!(Relisting::AfterLoss.complete(&node(), Some(&m), "e2"));
        assert!(!Relisting::AfterLoss.complete(&node(), Some(&m), "e3"));
    }

    #[test]
    fn after_a_reconnection_the_marker_must_have_changed() {
        let old = marker(7, 1, "e1");
        let seen: Markers = [(node(), Some(old.clone()))].into_iter().collect();
        let relisting = Relisting::AfterReconnection { seen };
        assert!(!relisting.complete(&node(), Some(&old), "e1"));
        assert!(relisting.complete(&node(), Some(&marker(7, 2, "e1")), "e1"));
        // A node not seen then (it joined since) lists everything before its marker.
        assert!(relisting.complete(&NodeId::from("n2"), Some(&marker(9, 1, "e1")), "e1"));
    }

    #[test]
    fn an_epoch_with_slashes_is_read_whole() {
        assert_eq!(epoch_of(&marker(1, 2, "a/b")), Some("a/b"));
        assert_eq!(epoch_of("garbage"), None);
    }
}
