//! Subscriptions in this node's routing tree: added and removed, and announced to the cluster
//! when an entry appears or goes.

use super::Broker;
use crate::message::ClientId;
use crate::protocol::topic;
use crate::router::SubscriptionOptions;
use crate::store::StoredSubscription;

impl Broker {
    /// Adds a subscription to the routing tree; returns true if it is new.
    pub fn add_subscription(
        &self,
        client_id: &ClientId,
        raw_filter: &str,
        options: SubscriptionOptions,
    ) -> bool {
        let Ok(parsed) = topic::parse_subscription(raw_filter, usize::MAX) else {
            return false;
        };
        let mut tree = self.subscriptions.write();
        let change = tree.insert(client_id, parsed.group, parsed.filter, options);
        self.metrics.subscriptions.set(tree.len() as i64);
        if change.entry_toggled {
            if let Some(link) = self.cluster.get() {
                link.entry_changed(raw_filter, true);
            }
        }
        change.changed
    }

    /// Removes a subscription from the routing tree; returns true if it existed.
    pub fn remove_subscription(&self, client_id: &str, raw_filter: &str) -> bool {
        let Ok(parsed) = topic::parse_subscription(raw_filter, usize::MAX) else {
            return false;
        };
        let mut tree = self.subscriptions.write();
        let change = tree.remove(client_id, parsed.group, parsed.filter);
        self.metrics.subscriptions.set(tree.len() as i64);
        if change.entry_toggled {
            if let Some(link) = self.cluster.get() {
                link.entry_changed(raw_filter, false);
            }
        }
        change.changed
    }

    /// Removes all of a session's subscriptions from the routing tree.
    pub fn remove_subscriptions(&self, client_id: &str, subscriptions: &[StoredSubscription]) {
        for s in subscriptions {
            self.remove_subscription(client_id, &s.filter);
        }
    }
}
