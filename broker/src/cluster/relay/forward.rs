//! Forwarding: which other nodes get a message published here (and which node serves each
//! share group with members elsewhere), and handing a burst of them to the writer, holding the
//! publisher to the relay's pace when its queue is full.

use super::writer::{permit_count, Outbound};
use super::ClusterLink;
use crate::cluster::local::LocalBroker;
use crate::cluster::pending::PendingRelays;
use crate::message::Message;
use crate::router::memo::RouteMemo;
use crate::router::remote::{choose_shared, NodeId, SharedChoice};
use crate::router::GroupKey;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

impl ClusterLink {
    /// Adds a message that was published on this node to `pending`, for the inbox of every other
    /// node that has a matching entry, and decides which node serves each share group with
    /// members elsewhere. Returns the groups another node serves (this node must skip them).
    /// `pending` goes to the writer with [`Self::send_pending`].
    pub fn forward(
        &self,
        broker: &impl LocalBroker,
        message: &Arc<Message>,
        memo: &mut RouteMemo,
        pending: &mut PendingRelays,
    ) -> Vec<GroupKey> {
        if message.topic.starts_with("$SYS") {
            return Vec::new();
        }
        let route = {
            let remote = self.remote.read();
            let generation = remote.generation();
            if let Some(nodes) = memo.remote(generation) {
                pending.push(message, nodes.iter().map(|node| (node, &[][..])));
                return Vec::new();
            }
            let route = remote.route(&message.topic);
            if route.groups.is_empty() {
                memo.keep_remote(generation, route.nodes.clone());
            }
            route
        };
        if route.nodes.is_empty() && route.groups.is_empty() {
            return Vec::new();
        }
        // Each node gets the message once, with the groups it was chosen to serve.
        let mut targets: Vec<(NodeId, Vec<GroupKey>)> =
            route.nodes.into_iter().map(|n| (n, Vec::new())).collect();
        let mut served_elsewhere = Vec::new();
        for group in route.groups {
            let (online, any) = broker.local_group_presence(&group.filter, &group.group);
            if let SharedChoice::Remote(node) =
                choose_shared(online, any, &group.nodes, group.start)
            {
                let key = (group.group, group.filter);
                match targets.iter_mut().find(|(n, _)| *n == node) {
                    Some((_, groups)) => groups.push(key.clone()),
                    None => targets.push((node, vec![key.clone()])),
                }
                served_elsewhere.push(key);
            }
        }
        pending.push(
            message,
            targets
                .iter()
                .map(|(node, groups)| (node, groups.as_slice())),
        );
        served_elsewhere
    }

    /// Hands the relayed messages of a burst to the writer. When the relay queue has no room
    /// for them the publisher waits, at most `patience`: it is held to the relay's pace, as a
    /// full mailbox holds it to a subscriber's. What the queue does not take in time is dropped
    /// and counted, and the queue counts as stalled until it has room again; while it is
    /// stalled, QoS 0 messages are dropped (and counted) without waiting.
    pub async fn send_pending(
        &self,
        pending: &mut PendingRelays,
        patience: Duration,
        broker: &impl LocalBroker,
    ) {
        let count = pending.len() as u64;
        if count == 0 {
            return;
        }
        if self.try_send_pending(pending) {
            broker.metrics().relay_sent.inc_by(count);
            return;
        }
        Box::pin(self.send_pending_when_room(pending.take(), patience, broker)).await
    }

    /// Hands `pending` over if the queue has room for all of it now.
    fn try_send_pending(&self, pending: &mut PendingRelays) -> bool {
        let Ok(permits) = self
            .forward_room
            .try_acquire_many(permit_count(pending.len()))
        else {
            return false;
        };
        // Given back by the writer once written (see `write_loop`).
        permits.forget();
        // Read first: a store on every burst would bounce the flag's cache line between the
        // publishing threads.
        if self.forward_stalled.load(Ordering::Relaxed) {
            self.forward_stalled.store(false, Ordering::Relaxed);
        }
        self.queue(Outbound::Relays(pending.take()));
        true
    }

    async fn send_pending_when_room(
        &self,
        mut pending: PendingRelays,
        patience: Duration,
        broker: &impl LocalBroker,
    ) {
        if self.forward_stalled.load(Ordering::Relaxed) {
            let dropped = pending.drop_at_most_once();
            broker.metrics().relay_dropped.inc_by(dropped as u64);
            let count = pending.len() as u64;
            if count == 0 {
                return;
            }
            if self.try_send_pending(&mut pending) {
                broker.metrics().relay_sent.inc_by(count);
                return;
            }
        }
        broker.metrics().relay_waits.inc_by(pending.len() as u64);
        let room = tokio::time::timeout(
            patience,
            self.forward_room.acquire_many(permit_count(pending.len())),
        )
        .await;
        match room {
            Ok(Ok(permits)) => {
                permits.forget();
                broker.metrics().relay_sent.inc_by(pending.len() as u64);
                self.queue(Outbound::Relays(pending));
            }
            _ => {
                self.forward_stalled.store(true, Ordering::Relaxed);
                broker.metrics().relay_dropped.inc_by(pending.len() as u64);
            }
        }
    }
}
