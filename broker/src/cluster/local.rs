//! What the cluster code asks of this node's broker: the one interface through which relayed,
//! recovered and sent-on messages are delivered here, and through which control entries act on
//! this node's sessions and routes.
//!
//! The broker implements it (`broker/cluster_side.rs`). The cluster files the broker itself uses
//! (the relay and its parts, recovery) know the broker only through this trait, so the broker's
//! core and the cluster code do not import each other: the broker holds the
//! [`ClusterLink`](super::relay::ClusterLink) and calls into it, the link calls back through a
//! [`LocalBroker`] it is given. (The background tasks `server.rs` starts, the adoption sweep and
//! rebalancing, take the `Broker` itself; the broker does not import them.)

use crate::mailbox::{Arrival, Wakes};
use crate::message::{ClientId, Message};
use crate::metrics::Metrics;
use crate::router::remote::NodeId;
use crate::router::{GroupKey, SubscriptionOptions};
use crate::store::QueuedMessage;
use starling_config::BrokerConfig;
use std::future::Future;
use std::sync::Arc;

/// This node's broker, as the cluster code uses it.
pub trait LocalBroker: Send + Sync + 'static {
    /// The node's validated configuration.
    fn config(&self) -> &BrokerConfig;

    /// The node's counters and gauges.
    fn metrics(&self) -> &Metrics;

    /// Whether the node is shutting down (the inbox reader stops).
    fn is_shutting_down(&self) -> bool;

    /// The plain (not shared) subscriptions of this node matching `topic`; a caller delivering
    /// many messages of one topic keeps it for [`Self::route_matched_waking`].
    fn direct_matches(&self, topic: &str) -> Vec<(ClientId, SubscriptionOptions)>;

    /// Delivers a message to the sessions of `matches` on this node only, as `arrival` says it
    /// came; connections to wake are added to `wakes` when given, or woken at once. Returns how
    /// many sessions it reached.
    fn route_matched_waking(
        &self,
        message: &Arc<Message>,
        matches: &[(ClientId, SubscriptionOptions)],
        wakes: Option<&mut Wakes>,
        arrival: Arrival,
    ) -> impl Future<Output = usize> + Send;

    /// Delivers a message read from this node's inbox to its matching sessions here, serving
    /// just the share groups in `groups`; [`Arrival::Suspect`] (read after the cluster declared
    /// this node dead) marks every copy DUP. Returns how many sessions it reached.
    fn route_relayed(
        &self,
        message: &Arc<Message>,
        groups: &[GroupKey],
        arrival: Arrival,
    ) -> impl Future<Output = usize> + Send;

    /// Delivers a message another node sent on for one session of this node.
    fn deliver_direct(
        &self,
        client_id: ClientId,
        queued: QueuedMessage,
    ) -> impl Future<Output = ()> + Send;

    /// Delivers a copy recovered from a departed node's journal or inbox.
    fn deliver_recovered(
        &self,
        client_id: ClientId,
        queued: QueuedMessage,
    ) -> impl Future<Output = ()> + Send;

    /// Hands over to `claimer` a session held by a connection here; finishes once that
    /// connection has stored it.
    fn release_session(
        &self,
        client_id: &ClientId,
        claimer: &str,
    ) -> impl Future<Output = ()> + Send;

    /// Forgets a session parked here that `claimer` took.
    fn forget_parked(self: &Arc<Self>, client_id: &ClientId, filters: Vec<String>, claimer: NodeId);

    /// Forgets a session parked here that expired (another node swept it).
    fn forget_expired(&self, client_id: &str, filters: &[String]);

    /// The node a session moved to routes it now.
    fn routed_elsewhere(&self, client_id: &str, from: &str);

    /// The routes of a finished hand-off (`token`) may go, unless the session came back or left
    /// again meanwhile.
    fn unroute(&self, client_id: &str, token: u64);

    /// Whether this node has members of a share group: (any online, any at all).
    fn local_group_presence(&self, filter: &str, group: &str) -> (bool, bool);

    /// Writes and announces every routing entry of this node again.
    fn announce_entries(&self);

    /// Ends every connection here without storing or firing anything: the cluster declared this
    /// node dead and another node adopted its sessions. Returns how many were closed.
    fn disconnect_adopted(&self) -> usize;
}
