//! The broker as the cluster code sees it: [`LocalBroker`], each method handing on to the
//! broker's own (see `cluster/local.rs` for why the cluster code sees no more than this).
//!
//! Each `Broker::name(self, …)` below must name an inherent method: were one renamed, the call
//! would resolve to this trait method and recurse (rustc's `unconditional_recursion` lint,
//! denied by CI's `-D warnings`, catches it).

use super::Broker;
use crate::cluster::local::LocalBroker;
use crate::mailbox::{Arrival, Wakes};
use crate::message::{ClientId, Message};
use crate::metrics::Metrics;
use crate::router::remote::NodeId;
use crate::router::{GroupKey, SubscriptionOptions};
use crate::store::QueuedMessage;
use starling_config::BrokerConfig;
use std::sync::Arc;

impl LocalBroker for Broker {
    fn config(&self) -> &BrokerConfig {
        &self.config
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn is_shutting_down(&self) -> bool {
        Broker::is_shutting_down(self)
    }

    fn direct_matches(&self, topic: &str) -> Vec<(ClientId, SubscriptionOptions)> {
        Broker::direct_matches(self, topic)
    }

    async fn route_matched_waking(
        &self,
        message: &Arc<Message>,
        matches: &[(ClientId, SubscriptionOptions)],
        wakes: Option<&mut Wakes>,
        arrival: Arrival,
    ) -> usize {
        Broker::route_matched_waking(self, message, matches, wakes, arrival).await
    }

    async fn route_relayed(
        &self,
        message: &Arc<Message>,
        groups: &[GroupKey],
        arrival: Arrival,
    ) -> usize {
        Broker::route_relayed(self, message, groups, arrival).await
    }

    async fn deliver_direct(&self, client_id: ClientId, queued: QueuedMessage) {
        Broker::deliver_direct(self, client_id, queued).await
    }

    async fn deliver_recovered(&self, client_id: ClientId, queued: QueuedMessage) {
        Broker::deliver_recovered(self, client_id, queued).await
    }

    async fn release_session(&self, client_id: &ClientId, claimer: &str) {
        Broker::release_session(self, client_id, claimer).await
    }

    fn forget_parked(
        self: &Arc<Self>,
        client_id: &ClientId,
        filters: Vec<String>,
        claimer: NodeId,
    ) {
        Broker::forget_parked(self, client_id, filters, claimer)
    }

    fn forget_expired(&self, client_id: &str, filters: &[String]) {
        Broker::forget_expired(self, client_id, filters)
    }

    fn routed_elsewhere(&self, client_id: &str, from: &str) {
        Broker::routed_elsewhere(self, client_id, from)
    }

    fn unroute(&self, client_id: &str, token: u64) {
        Broker::unroute(self, client_id, token)
    }

    fn local_group_presence(&self, filter: &str, group: &str) -> (bool, bool) {
        Broker::local_group_presence(self, filter, group)
    }

    fn announce_entries(&self) {
        Broker::announce_entries(self)
    }

    fn disconnect_adopted(&self) -> usize {
        Broker::disconnect_adopted(self)
    }
}
