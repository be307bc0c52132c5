//! Publishing and routing: a message is stored if retained, matched against the subscription
//! tree (share groups served here or by another node) and handed to delivery and the relay.

use super::delivery::Onward;
use super::Broker;
use crate::cluster::pending::PendingRelays;
use crate::mailbox::{Arrival, Wakes};
use crate::message::{ClientId, Message};
use crate::router::memo::RouteMemo;
use crate::router::{self, Match, SubscriptionOptions};
use crate::router::{GroupKey, GroupScope};
use crate::store::QueuedMessage;
use std::borrow::Cow;
use std::sync::Arc;

/// What [`Broker::matching`] found for a topic.
struct Found {
    matches: Vec<(ClientId, SubscriptionOptions)>,
    /// Whether a share group matched (served here or not): the result differs from message to
    /// message.
    shared: bool,
    /// The subscription tree's generation the matches belong to.
    generation: u64,
}

/// What a connection that publishes again and again keeps between its messages: where its last
/// topic was routed, and the messages for other nodes gathered since it last called
/// [`Broker::send_relays`].
#[derive(Default)]
pub struct Publishing {
    memo: RouteMemo,
    relays: PendingRelays,
}

/// Where a publish went: to how many sessions on this node, and to how many other nodes (whose
/// own subscribers, unknown here, get it there).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Routed {
    /// Sessions on this node it was delivered or queued to.
    pub sessions: usize,
    /// Other nodes it was relayed to (a node counts once, however many of its sessions match).
    pub nodes: usize,
}

impl Routed {
    /// Whether no subscriber anywhere matched (MQTT 5: reason 0x10 "No matching subscribers").
    pub fn reached_nobody(&self) -> bool {
        self.sessions == 0 && self.nodes == 0
    }
}

impl Broker {
    /// Publishes a message from a client, a will or the broker itself: stores it if retained, then
    /// routes it. Returns where it went.
    pub async fn publish(&self, message: Arc<Message>) -> Routed {
        let mut publishing = Publishing::default();
        let count = self.publish_with(message, &mut publishing).await;
        self.send_relays(&mut publishing).await;
        count
    }

    /// [`Self::publish`] for a connection that publishes again and again: `publishing` keeps
    /// where its last topic was routed for the next message, and gathers what goes to other
    /// nodes until [`Self::send_relays`].
    pub async fn publish_with(&self, message: Arc<Message>, publishing: &mut Publishing) -> Routed {
        if message.retain {
            // Refused by a limit, the message is still delivered (the refusal is counted).
            self.retain_gate
                .retain(&*self.store, &self.metrics, &message)
                .await;
        }
        self.route_with(&message, publishing).await
    }

    async fn route_with(&self, message: &Arc<Message>, publishing: &mut Publishing) -> Routed {
        let Publishing { memo, relays } = publishing;
        memo.start(&message.topic);
        let Some(link) = self.cluster.get() else {
            let matches = self.local_matches(&message.topic, GroupScope::All, memo);
            let sessions = self.route_matched(message, &matches).await;
            return Routed { sessions, nodes: 0 };
        };
        // A message relayed to two nodes is pending twice: what `forward` adds is its node count.
        let pending_before = relays.len();
        let served_elsewhere = link.forward(self, message, memo, relays);
        let nodes = relays.len() - pending_before;
        let sessions = {
            let mut matches =
                self.local_matches(&message.topic, GroupScope::Except(&served_elsewhere), memo);
            if self.hand_offs.any() {
                // A session that left reaches its new node through the relay above.
                matches
                    .to_mut()
                    .retain(|(client, _)| !self.hand_offs.skips_local_publish(client));
            }
            self.route_matched(message, &matches).await
        };
        if relays.is_full() {
            self.send_relays(publishing).await;
        }
        Routed { sessions, nodes }
    }

    /// Hands what `publishing` gathered for other nodes to the cluster relay. A connection calls
    /// this once it has handled the input it has, and before it acknowledges QoS 1/2 publishes;
    /// while the relay is saturated, the publisher waits here (see
    /// [`ClusterLink::send_pending`](crate::cluster::relay::ClusterLink::send_pending)).
    pub async fn send_relays(&self, publishing: &mut Publishing) {
        if publishing.relays.is_empty() {
            return;
        }
        if let Some(link) = self.cluster.get() {
            link.send_pending(&mut publishing.relays, self.delivery_patience, self)
                .await;
        }
    }

    /// This node's subscriptions matching `topic`, from `memo` while the subscription tree has
    /// not changed since they were found (and kept there when no share group is involved).
    fn local_matches<'m>(
        &self,
        topic: &str,
        scope: GroupScope<'_>,
        memo: &'m mut RouteMemo,
    ) -> Cow<'m, [(ClientId, SubscriptionOptions)]> {
        let generation = self.subscriptions.read().generation();
        if memo.local(generation).is_some() {
            return Cow::Borrowed(memo.local(generation).unwrap_or_default());
        }
        let found = self.matching(topic, scope);
        if found.shared {
            return Cow::Owned(found.matches);
        }
        memo.keep_local(found.generation, found.matches);
        Cow::Borrowed(memo.local(found.generation).unwrap_or_default())
    }

    /// Whether this node has members of a share group: (any online, any at all).
    pub(super) fn local_group_presence(&self, filter: &str, group: &str) -> (bool, bool) {
        let tree = self.subscriptions.read();
        let members = tree.group_members(filter, group);
        let online = self.online.read();
        let any_online = members
            .iter()
            .any(|(client, _)| online.contains_key(client));
        (any_online, !members.is_empty())
    }

    /// The plain (not shared) subscriptions of this node that match `topic`: what
    /// [`Self::route_relayed`] finds for a message that serves no share group. A caller
    /// routing many messages of one topic may keep it for [`Self::route_matched`] (it holds no
    /// online state, only the subscriptions at the time of the call).
    pub(super) fn direct_matches(&self, topic: &str) -> Vec<(ClientId, SubscriptionOptions)> {
        self.matching(topic, GroupScope::Only(&[])).matches
    }

    /// Delivers a message to the sessions of `matches` (as [`Self::matching`] found them) on
    /// this node only; returns how many.
    pub async fn route_matched(
        &self,
        message: &Arc<Message>,
        matches: &[(ClientId, SubscriptionOptions)],
    ) -> usize {
        self.route_matched_waking(message, matches, None, Arrival::Here)
            .await
    }

    /// [`Self::route_matched`] for what arrived as `arrival` says; connections that must be
    /// woken are added to `wakes` when given, or woken at once.
    pub(super) async fn route_matched_waking(
        &self,
        message: &Arc<Message>,
        matches: &[(ClientId, SubscriptionOptions)],
        mut wakes: Option<&mut Wakes>,
        arrival: Arrival,
    ) -> usize {
        if matches.is_empty() {
            return 0;
        }
        let targets = router::targets(matches, message.publisher.as_deref());
        let count = targets.len();
        let mut deferred = Vec::new();
        for target in targets {
            let client_id = target.client_id;
            let mut queued = QueuedMessage::for_target(message, target);
            queued.maybe_sent = arrival == Arrival::Suspect;
            if let Some(later) = self.deliver_now(client_id, queued, wakes.as_deref_mut(), arrival)
            {
                deferred.push(later);
            }
        }
        if !deferred.is_empty() {
            // A connection is about to be waited for: none may be left unwoken.
            if let Some(wakes) = wakes {
                wakes.wake_all();
            }
            let delivering = Box::pin(self.deliver_deferred(deferred, Onward::Allowed));
            delivering.await;
        }
        count
    }

    /// Delivers a message read from this node's inbox to the matching sessions of this node,
    /// serving just the share groups in `groups` (the origin node chose this node for them);
    /// `arrival` says when it was appended, or that it was read after the cluster had declared
    /// this node dead (then every copy is marked DUP: the adopter may have delivered it already).
    /// Returns how many sessions it reached.
    pub(super) async fn route_relayed(
        &self,
        message: &Arc<Message>,
        groups: &[GroupKey],
        arrival: Arrival,
    ) -> usize {
        let found = self.matching(&message.topic, GroupScope::Only(groups));
        self.route_matched_waking(message, &found.matches, None, arrival)
            .await
    }

    fn matching(&self, topic: &str, scope: GroupScope<'_>) -> Found {
        let tree = self.subscriptions.read();
        let mut out = Vec::new();
        let mut shared = false;
        let online = self.online.read();
        tree.matches(topic, |m| match m {
            Match::Direct(client, options) => out.push((client.clone(), options.clone())),
            Match::Shared {
                group,
                filter,
                members,
                start,
            } => {
                shared = true;
                let n = members.len();
                if n == 0 || !scope.serves(group, filter) {
                    return;
                }
                let chosen = (0..n)
                    .map(|i| &members[(start + i) % n])
                    .find(|(client, _)| online.contains_key(client))
                    .unwrap_or(&members[start % n]);
                out.push(chosen.clone());
            }
        });
        Found {
            matches: out,
            shared,
            generation: tree.generation(),
        }
    }
}
