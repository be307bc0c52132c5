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

    /// The subscriptions in this node's routing tree (of sessions online or parked here), those of
    /// `client` only when given: client id, filter as subscribed, options; sorted by client and
    /// filter.
    pub fn subscriptions_held(
        &self,
        client: Option<&str>,
    ) -> Vec<(ClientId, String, SubscriptionOptions)> {
        let mut held = Vec::new();
        self.subscriptions
            .read()
            .for_each_subscription(|client_id, filter, options| {
                if client.is_none_or(|wanted| wanted == &**client_id) {
                    held.push((client_id.clone(), filter.to_string(), options.clone()));
                }
            });
        held.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        held
    }

    /// Removes all of a session's subscriptions from the routing tree.
    pub fn remove_subscriptions(&self, client_id: &str, subscriptions: &[StoredSubscription]) {
        for s in subscriptions {
            self.remove_subscription(client_id, &s.filter);
        }
    }
}
