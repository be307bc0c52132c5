//! A topic tree of subscriptions: one node per filter level, `+` and `#` as ordinary keys.

use super::SubscriptionOptions;
use crate::message::ClientId;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Keys are topic levels and client ids from the network; foldhash is fast and seeded per
/// process (the hashbrown default).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    direct: HashMap<ClientId, SubscriptionOptions>,
    shared: HashMap<Box<str>, SharedGroup>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.direct.is_empty() && self.shared.is_empty()
    }
}

/// What an insert or a remove changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Change {
    /// A subscription was added (insert) or removed (remove); false for a replaced or missing one.
    pub changed: bool,
    /// The filter (with its share group, if any) got its first subscriber in this tree, or lost
    /// its last one: what a cluster node advertises to the others.
    pub entry_toggled: bool,
}

/// Members of one `$share` group on one filter; deliveries rotate through them.
#[derive(Default)]
struct SharedGroup {
    /// The filter the group subscribes to (without `$share/<group>/`).
    filter: Box<str>,
    members: Vec<(ClientId, SubscriptionOptions)>,
    next: AtomicUsize,
}

/// What matched a topic.
#[derive(Debug)]
pub enum Match<'a> {
    /// A plain subscription.
    Direct(&'a ClientId, &'a SubscriptionOptions),
    /// A shared group: the caller picks one member; `start` rotates between calls.
    Shared {
        /// The group's name.
        group: &'a str,
        /// The filter the group subscribes to.
        filter: &'a str,
        /// The members, in subscription order.
        members: &'a [(ClientId, SubscriptionOptions)],
        /// Where to start looking for a member to deliver to.
        start: usize,
    },
}

/// All subscriptions on this node, indexed by filter level.
#[derive(Default)]
pub struct SubscriptionTree {
    root: Node,
    count: usize,
    generation: u64,
}

impl SubscriptionTree {
    /// Changes with every insert and remove, so a match result computed at one generation can be
    /// reused while the generation is the same.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Adds or replaces a subscription.
    pub fn insert(
        &mut self,
        client_id: &ClientId,
        group: Option<&str>,
        filter: &str,
        options: SubscriptionOptions,
    ) -> Change {
        self.generation += 1;
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let change = match group {
            None => {
                let first = node.direct.is_empty();
                let new = node.direct.insert(client_id.clone(), options).is_none();
                Change {
                    changed: new,
                    entry_toggled: new && first,
                }
            }
            Some(group) => {
                let g = node
                    .shared
                    .entry(group.into())
                    .or_insert_with(|| SharedGroup {
                        filter: filter.into(),
                        ..SharedGroup::default()
                    });
                match g.members.iter_mut().find(|(c, _)| c == client_id) {
                    Some(member) => {
                        member.1 = options;
                        Change::default()
                    }
                    None => {
                        g.members.push((client_id.clone(), options));
                        Change {
                            changed: true,
                            entry_toggled: g.members.len() == 1,
                        }
                    }
                }
            }
        };
        if change.changed {
            self.count += 1;
        }
        change
    }

    /// Removes a subscription.
    pub fn remove(&mut self, client_id: &str, group: Option<&str>, filter: &str) -> Change {
        self.generation += 1;
        let levels: Vec<&str> = filter.split('/').collect();
        let change = Self::remove_at(&mut self.root, &levels, client_id, group);
        if change.changed {
            self.count -= 1;
        }
        change
    }

    fn remove_at(node: &mut Node, levels: &[&str], client_id: &str, group: Option<&str>) -> Change {
        let Some((first, rest)) = levels.split_first() else {
            return match group {
                None => {
                    let removed = node.direct.remove(client_id).is_some();
                    Change {
                        changed: removed,
                        entry_toggled: removed && node.direct.is_empty(),
                    }
                }
                Some(group) => {
                    let Some(g) = node.shared.get_mut(group) else {
                        return Change::default();
                    };
                    let before = g.members.len();
                    g.members.retain(|(c, _)| &**c != client_id);
                    let removed = g.members.len() != before;
                    let emptied = g.members.is_empty();
                    if emptied {
                        node.shared.remove(group);
                    }
                    Change {
                        changed: removed,
                        entry_toggled: removed && emptied,
                    }
                }
            };
        };
        let Some(child) = node.children.get_mut(*first) else {
            return Change::default();
        };
        let change = Self::remove_at(child, rest, client_id, group);
        if child.is_empty() {
            node.children.remove(*first);
        }
        change
    }

    /// The members of share group `group` on exactly `filter` (not matching: the same filter).
    pub fn group_members(&self, filter: &str, group: &str) -> &[(ClientId, SubscriptionOptions)] {
        let mut node = &self.root;
        for level in filter.split('/') {
            match node.children.get(level) {
                Some(child) => node = child,
                None => return &[],
            }
        }
        node.shared.get(group).map_or(&[], |g| g.members.as_slice())
    }

    /// Every entry with at least one subscriber, as raw filters (`$share/<group>/<filter>` for
    /// shared groups).
    pub fn entries(&self) -> Vec<String> {
        let mut out = Vec::new();
        Self::collect_entries(&self.root, &mut Vec::new(), &mut out);
        out
    }

    fn collect_entries<'a>(node: &'a Node, path: &mut Vec<&'a str>, out: &mut Vec<String>) {
        if !path.is_empty() {
            let filter = path.join("/");
            if !node.direct.is_empty() {
                out.push(filter.clone());
            }
            for group in node.shared.keys() {
                out.push(format!("$share/{group}/{filter}"));
            }
        }
        for (level, child) in &node.children {
            path.push(level);
            Self::collect_entries(child, path, out);
            path.pop();
        }
    }

    /// Calls `visit` with every subscription: the client, the filter as subscribed
    /// (`$share/<group>/<filter>` for a shared group's member) and its options.
    pub fn for_each_subscription(
        &self,
        mut visit: impl FnMut(&ClientId, &str, &SubscriptionOptions),
    ) {
        Self::visit_subscriptions(&self.root, &mut Vec::new(), &mut visit);
    }

    fn visit_subscriptions<'a>(
        node: &'a Node,
        path: &mut Vec<&'a str>,
        visit: &mut impl FnMut(&ClientId, &str, &SubscriptionOptions),
    ) {
        let subscribed = !node.direct.is_empty() || !node.shared.is_empty();
        if !path.is_empty() && subscribed {
            let filter = path.join("/");
            for (client, options) in &node.direct {
                visit(client, &filter, options);
            }
            for (group, shared) in &node.shared {
                let raw = format!("$share/{group}/{filter}");
                for (client, options) in &shared.members {
                    visit(client, &raw, options);
                }
            }
        }
        for (level, child) in &node.children {
            path.push(level);
            Self::visit_subscriptions(child, path, visit);
            path.pop();
        }
    }

    /// Number of subscriptions (shared memberships included).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Calls `found` for every subscription and shared group matching `topic`.
    pub fn matches<'a>(&'a self, topic: &str, mut found: impl FnMut(Match<'a>)) {
        let dollar = topic.starts_with('$');
        Self::walk(&self.root, topic.split('/'), dollar, &mut found);
    }

    fn visit<'a>(node: &'a Node, found: &mut impl FnMut(Match<'a>)) {
        for (client_id, options) in &node.direct {
            found(Match::Direct(client_id, options));
        }
        for (name, group) in &node.shared {
            let start = group.next.fetch_add(1, Ordering::Relaxed);
            found(Match::Shared {
                group: name,
                filter: &group.filter,
                members: &group.members,
                start,
            });
        }
    }

    /// `levels` are the topic levels still to match (a cloneable iterator: no allocation).
    fn walk<'a>(
        node: &'a Node,
        mut levels: std::str::Split<'_, char>,
        skip_wildcards: bool,
        found: &mut impl FnMut(Match<'a>),
    ) {
        if !skip_wildcards {
            if let Some(hash) = node.children.get("#") {
                Self::visit(hash, found);
            }
        }
        let Some(first) = levels.next() else {
            Self::visit(node, found);
            return;
        };
        if let Some(child) = node.children.get(first) {
            Self::walk(child, levels.clone(), false, found);
        }
        if !skip_wildcards {
            if let Some(plus) = node.children.get("+") {
                Self::walk(plus, levels, false, found);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::test_options as opts;

    fn direct(tree: &SubscriptionTree, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        tree.matches(topic, |m| {
            if let Match::Direct(c, _) = m {
                out.push(c.to_string());
            }
        });
        out.sort();
        out
    }

    #[test]
    fn wildcards_match_like_the_specification() {
        let mut tree = SubscriptionTree::default();
        let (a, b, c, d): (ClientId, ClientId, ClientId, ClientId) =
            ("a".into(), "b".into(), "c".into(), "d".into());
        tree.insert(&a, None, "s/+/t", opts());
        tree.insert(&b, None, "s/#", opts());
        tree.insert(&c, None, "#", opts());
        tree.insert(&d, None, "s/x/t", opts());
        assert_eq!(direct(&tree, "s/x/t"), ["a", "b", "c", "d"]);
        assert_eq!(direct(&tree, "s"), ["b", "c"]);
        assert_eq!(direct(&tree, "q"), ["c"]);
        assert_eq!(tree.len(), 4);
    }

    #[test]
    fn dollar_topics_skip_root_wildcards() {
        let mut tree = SubscriptionTree::default();
        tree.insert(&"a".into(), None, "#", opts());
        tree.insert(&"b".into(), None, "+/uptime", opts());
        tree.insert(&"c".into(), None, "$SYS/#", opts());
        assert_eq!(direct(&tree, "$SYS/uptime"), ["c"]);
    }

    #[test]
    fn removal_prunes_and_counts() {
        let mut tree = SubscriptionTree::default();
        let a: ClientId = "a".into();
        assert!(tree.insert(&a, None, "x/y", opts()).changed);
        assert!(!tree.insert(&a, None, "x/y", opts()).changed);
        assert!(tree.insert(&a, Some("g"), "x/y", opts()).changed);
        assert!(tree.remove("a", None, "x/y").changed);
        assert!(!tree.remove("a", None, "x/y").changed);
        assert!(tree.remove("a", Some("g"), "x/y").changed);
        assert!(tree.is_empty());
        assert!(tree.root.is_empty());
    }

    #[test]
    fn entries_toggle_on_first_and_last_subscriber_only() {
        let mut tree = SubscriptionTree::default();
        let (a, b): (ClientId, ClientId) = ("a".into(), "b".into());
        let toggled = |c: Change| (c.changed, c.entry_toggled);
        assert_eq!(toggled(tree.insert(&a, None, "t/+", opts())), (true, true));
        assert_eq!(toggled(tree.insert(&b, None, "t/+", opts())), (true, false));
        assert_eq!(
            toggled(tree.insert(&a, None, "t/+", opts())),
            (false, false)
        );
        assert_eq!(
            toggled(tree.insert(&a, Some("g"), "t/+", opts())),
            (true, true)
        );
        assert_eq!(toggled(tree.remove("a", None, "t/+")), (true, false));
        assert_eq!(toggled(tree.remove("b", None, "t/+")), (true, true));
        assert_eq!(toggled(tree.remove("b", None, "t/+")), (false, false));
        assert_eq!(toggled(tree.remove("a", Some("g"), "t/+")), (true, true));
    }

    #[test]
    fn entries_list_filters_and_groups_with_subscribers() {
        let mut tree = SubscriptionTree::default();
        tree.insert(&"a".into(), None, "s/+/t", opts());
        tree.insert(&"b".into(), None, "s/+/t", opts());
        tree.insert(&"a".into(), Some("g"), "#", opts());
        tree.insert(&"a".into(), None, "/lead", opts());
        tree.insert(&"c".into(), None, "gone", opts());
        tree.remove("c", None, "gone");
        let mut entries = tree.entries();
        entries.sort();
        assert_eq!(entries, ["$share/g/#", "/lead", "s/+/t"]);
    }

    #[test]
    fn every_subscription_is_visited_with_its_client_and_raw_filter() {
        let mut tree = SubscriptionTree::default();
        tree.insert(&"a".into(), None, "s/+/t", opts());
        tree.insert(&"b".into(), None, "s/+/t", opts());
        tree.insert(&"a".into(), Some("g"), "#", opts());
        tree.insert(&"c".into(), Some("g"), "#", opts());
        tree.insert(&"c".into(), None, "gone", opts());
        tree.remove("c", None, "gone");
        let mut seen = Vec::new();
        tree.for_each_subscription(|client, filter, options| {
            assert_eq!(options, &opts());
            seen.push(format!("{client} {filter}"));
        });
        seen.sort();
        assert_eq!(seen, ["a $share/g/#", "a s/+/t", "b s/+/t", "c $share/g/#"]);
        assert_eq!(seen.len(), tree.len());
    }

    #[test]
    fn shared_groups_rotate() {
        let mut tree = SubscriptionTree::default();
        tree.insert(&"a".into(), Some("g"), "t", opts());
        tree.insert(&"b".into(), Some("g"), "t", opts());
        let mut starts = Vec::new();
        for _ in 0..2 {
            tree.matches("t", |m| {
                if let Match::Shared { members, start, .. } = m {
                    starts.push(members[start % members.len()].0.to_string());
                }
            });
        }
        assert_eq!(starts, ["a", "b"]);
    }
}
