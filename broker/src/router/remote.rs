//! What the other nodes of a cluster subscribe to: a replica of every node's advertised entries
//! (filters, and `$share/<group>/<filter>` memberships), matched to find the nodes a publish must
//! be relayed to. Each node advertises an entry while at least one of its sessions, online or
//! parked, holds it (see [`super::Change::entry_toggled`]).

use super::{Match, SubscriptionOptions, SubscriptionTree};
use crate::protocol::{topic, QoS, RetainForwardRule};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A cluster node's identity.
pub type NodeId = Arc<str>;

/// A shared group some nodes have members in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedCandidates {
    /// The group's name.
    pub group: String,
    /// The filter the group subscribes to.
    pub filter: String,
    /// Nodes with members, in the order they advertised; `start` rotates between publishes.
    pub nodes: Vec<NodeId>,
    /// Where to start choosing.
    pub start: usize,
}

/// Where a publish must go in the rest of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteRoute {
    /// Nodes with plain subscriptions matching the topic, each once.
    pub nodes: Vec<NodeId>,
    /// Shared groups with members on other nodes; one member in the whole cluster gets the message.
    pub groups: Vec<SharedCandidates>,
}

/// The replica of the other nodes' advertised entries.
#[derive(Default)]
pub struct RemoteFilters {
    tree: SubscriptionTree,
    by_node: HashMap<NodeId, HashSet<String>>,
}

fn any_options() -> SubscriptionOptions {
    SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        no_local: false,
        retain_as_published: true,
        retain_handling: RetainForwardRule::Never,
        identifier: None,
    }
}

impl RemoteFilters {
    /// Records that `node` advertises `raw` (a filter or `$share/<group>/<filter>`); false if it
    /// already did or the entry is not a valid subscription.
    pub fn add(&mut self, node: &NodeId, raw: &str) -> bool {
        let Ok(parsed) = topic::parse_subscription(raw, usize::MAX) else {
            return false;
        };
        if !self
            .by_node
            .entry(node.clone())
            .or_default()
            .insert(raw.to_string())
        {
            return false;
        }
        self.tree
            .insert(node, parsed.group, parsed.filter, any_options())
            .changed
    }

    /// Records that `node` no longer advertises `raw`; false if it did not.
    pub fn remove(&mut self, node: &str, raw: &str) -> bool {
        let Some(entries) = self.by_node.get_mut(node) else {
            return false;
        };
        if !entries.remove(raw) {
            return false;
        }
        if entries.is_empty() {
            self.by_node.remove(node);
        }
        match topic::parse_subscription(raw, usize::MAX) {
            Ok(parsed) => self.tree.remove(node, parsed.group, parsed.filter).changed,
            Err(_) => false,
        }
    }

    /// Forgets everything a node advertised (it left or died); returns how many entries.
    pub fn remove_node(&mut self, node: &str) -> usize {
        let Some(entries) = self.by_node.remove(node) else {
            return 0;
        };
        for raw in &entries {
            if let Ok(parsed) = topic::parse_subscription(raw, usize::MAX) {
                self.tree.remove(node, parsed.group, parsed.filter);
            }
        }
        entries.len()
    }

    /// Replaces a node's entries with a full listing (after a resynchronisation).
    pub fn replace_node(&mut self, node: &NodeId, entries: impl IntoIterator<Item = String>) {
        self.remove_node(node);
        for raw in entries {
            self.add(node, &raw);
        }
    }

    /// Changes with every change of the replica (see [`SubscriptionTree::generation`]).
    pub fn generation(&self) -> u64 {
        self.tree.generation()
    }

    /// Number of entries advertised by all other nodes together.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// Whether no other node advertises anything.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Whether `node` advertises `raw`.
    pub fn advertises(&self, node: &str, raw: &str) -> bool {
        self.by_node
            .get(node)
            .is_some_and(|entries| entries.contains(raw))
    }

    /// Nodes known to advertise anything.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.by_node.keys()
    }

    /// Where a publish on `topic` must go.
    pub fn route(&self, topic: &str) -> RemoteRoute {
        let mut route = RemoteRoute::default();
        self.tree.matches(topic, |m| match m {
            Match::Direct(node, _) => {
                if !route.nodes.contains(node) {
                    route.nodes.push(node.clone());
                }
            }
            Match::Shared {
                group,
                filter,
                members,
                start,
            } => route.groups.push(SharedCandidates {
                group: group.to_string(),
                filter: filter.to_string(),
                nodes: members.iter().map(|(node, _)| node.clone()).collect(),
                start,
            }),
        });
        route
    }
}

/// Who delivers to a shared group that has members here and/or on other nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedChoice {
    /// A member on this node.
    Local,
    /// A member on that node.
    Remote(NodeId),
}

/// Picks the one place in the cluster that delivers a message to a shared group: rotating over
/// the other nodes with members and this node, which takes part when one of its members is online
/// (or, with no other node in the group, when it has any member, to queue for it).
pub fn choose_shared(
    local_online: bool,
    local_any: bool,
    remote: &[NodeId],
    start: usize,
) -> SharedChoice {
    let local = local_online || (local_any && remote.is_empty());
    let slots = remote.len() + usize::from(local);
    if slots == 0 {
        return SharedChoice::Local;
    }
    let pick = start % slots;
    if local && pick == remote.len() {
        SharedChoice::Local
    } else {
        SharedChoice::Remote(remote[pick].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeId {
        id.into()
    }

    #[test]
    fn route_finds_each_matching_node_once() {
        let mut r = RemoteFilters::default();
        assert!(r.add(&node("b"), "s/+/t"));
        assert!(r.add(&node("b"), "s/#"));
        assert!(r.add(&node("c"), "s/x/t"));
        assert!(!r.add(&node("c"), "s/x/t"), "already advertised");
        assert!(!r.add(&node("c"), "a/#/b"), "invalid filter");
        let route = r.route("s/x/t");
        let mut nodes: Vec<_> = route.nodes.iter().map(|n| n.to_string()).collect();
        nodes.sort();
        assert_eq!(nodes, ["b", "c"]);
        assert!(r.route("q").nodes.is_empty());
    }

    #[test]
    fn removing_entries_and_nodes_stops_routing() {
        let mut r = RemoteFilters::default();
        r.add(&node("b"), "t");
        r.add(&node("b"), "u");
        assert!(r.remove("b", "t"));
        assert!(!r.remove("b", "t"));
        assert!(r.route("t").nodes.is_empty());
        assert_eq!(r.remove_node("b"), 1);
        assert!(r.route("u").nodes.is_empty());
        assert_eq!(r.nodes().count(), 0);
    }

    #[test]
    fn replace_node_resynchronises() {
        let mut r = RemoteFilters::default();
        r.add(&node("b"), "old");
        r.replace_node(&node("b"), ["new".to_string()]);
        assert!(r.route("old").nodes.is_empty());
        assert_eq!(r.route("new").nodes, vec![node("b")]);
    }

    #[test]
    fn shared_groups_list_their_nodes() {
        let mut r = RemoteFilters::default();
        r.add(&node("b"), "$share/g/t/+");
        r.add(&node("c"), "$share/g/t/+");
        r.add(&node("c"), "$share/h/t/+");
        let route = r.route("t/1");
        assert!(
            route.nodes.is_empty(),
            "shared entries are not plain subscriptions"
        );
        let mut groups: Vec<_> = route
            .groups
            .iter()
            .map(|g| (g.group.clone(), g.filter.clone(), g.nodes.len()))
            .collect();
        groups.sort();
        assert_eq!(
            groups,
            [("g".into(), "t/+".into(), 2), ("h".into(), "t/+".into(), 1)]
        );
    }

    #[test]
    fn shared_choice_rotates_over_local_and_remote_nodes() {
        let remote = [node("b"), node("c")];
        let picks: Vec<_> = (0..3)
            .map(|i| choose_shared(true, true, &remote, i))
            .collect();
        assert_eq!(
            picks,
            [
                SharedChoice::Remote(node("b")),
                SharedChoice::Remote(node("c")),
                SharedChoice::Local
            ]
        );
        assert_eq!(choose_shared(false, true, &[], 7), SharedChoice::Local);
        assert_eq!(
            choose_shared(false, true, &remote, 2),
            SharedChoice::Remote(node("b"))
        );
    }
}
