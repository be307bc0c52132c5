//! A publishing connection's memory of where its last topic was routed.
//!
//! Devices mostly publish to the same topic over and over. Matching it against the subscription
//! tree and the other nodes' replica again for every message, cloning every matched client id,
//! cost more than delivering it. A [`RouteMemo`] keeps the result for one topic together with the
//! generation of the table it came from ([`super::SubscriptionTree::generation`]); any change of
//! that table makes it stale. Only plain subscriptions are kept: a topic that reaches a share
//! group is matched afresh every time, because the chosen member rotates.

use super::remote::NodeId;
use super::SubscriptionOptions;
use crate::message::ClientId;
use std::sync::Arc;

/// A result and the generation of the table it was computed from.
struct Kept<T> {
    generation: u64,
    value: T,
}

/// Where one topic was routed, kept between the messages of one publishing connection.
#[derive(Default)]
pub struct RouteMemo {
    topic: Option<Arc<str>>,
    local: Option<Kept<Vec<(ClientId, SubscriptionOptions)>>>,
    remote: Option<Kept<Vec<NodeId>>>,
}

impl RouteMemo {
    /// Prepares to route a message on `topic`: what was kept for another topic is forgotten.
    pub fn start(&mut self, topic: &Arc<str>) {
        if self.topic.as_deref() != Some(&**topic) {
            self.topic = Some(topic.clone());
            self.local = None;
            self.remote = None;
        }
    }

    /// This node's matching subscriptions, if kept at `generation` of its subscription tree.
    pub fn local(&self, generation: u64) -> Option<&[(ClientId, SubscriptionOptions)]> {
        kept_at(&self.local, generation).map(Vec::as_slice)
    }

    /// Keeps this node's matches for the current topic, found at `generation`.
    pub fn keep_local(&mut self, generation: u64, matches: Vec<(ClientId, SubscriptionOptions)>) {
        self.local = Some(Kept {
            generation,
            value: matches,
        });
    }

    /// The other nodes to relay to, if kept at `generation` of the replica of their entries.
    pub fn remote(&self, generation: u64) -> Option<&[NodeId]> {
        kept_at(&self.remote, generation).map(Vec::as_slice)
    }

    /// Keeps the other nodes to relay the current topic to, found at `generation`.
    pub fn keep_remote(&mut self, generation: u64, nodes: Vec<NodeId>) {
        self.remote = Some(Kept {
            generation,
            value: nodes,
        });
    }
}

fn kept_at<T>(kept: &Option<Kept<T>>, generation: u64) -> Option<&T> {
    kept.as_ref()
        .filter(|k| k.generation == generation)
        .map(|k| &k.value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::test_options as options;

    #[test]
    fn kept_results_serve_only_their_topic_and_generation() {
        let mut memo = RouteMemo::default();
        let topic: Arc<str> = "a/b".into();
        memo.start(&topic);
        assert!(memo.local(0).is_none());
        memo.keep_local(3, vec![("c1".into(), options())]);
        memo.keep_remote(7, vec!["node-b".into()]);

        // The same topic again (another allocation of it): still kept.
        memo.start(&"a/b".into());
        assert_eq!(memo.local(3).map(<[_]>::len), Some(1));
        assert_eq!(memo.remote(7), Some(&["node-b".into()][..]));
        // A table that changed since: stale.
        assert!(memo.local(4).is_none());
        assert!(memo.remote(8).is_none());

        // Another topic: nothing kept, whatever the generation.
        memo.start(&"a/c".into());
        assert!(memo.local(3).is_none());
        assert!(memo.remote(7).is_none());
    }
}
