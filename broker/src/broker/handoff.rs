//! Sessions moving between nodes: releasing one another node claimed, forgetting one parked
//! here that was taken or expired, and handing off its routes once the new node routes for it.

use super::Broker;
use crate::cluster::handoff;
use crate::mailbox::Signal;
use crate::message::ClientId;
use crate::router::remote::NodeId;
use std::sync::Arc;
use std::time::Instant;

impl Broker {
    /// Hands a session held by a connection here over to another node that claimed it: closes
    /// the connection (its state goes to the claimer as the connection ends), then tells the
    /// claimer. Waits for the connection to finish, so it runs in a task of its own.
    pub(super) async fn release_session(&self, client_id: &ClientId, claimer: &str) {
        self.hand_offs.note_claimer(client_id, claimer);
        if let Some(handle) = self.online_handle(client_id) {
            handle.mailbox.signal(Signal::TakenOver);
        }
        // Held by the connection until it has stored (handed over) the session.
        let _session = self.lock_session(client_id).await;
        self.cancel_will(client_id);
        // Its connection, if it had one, has taken the note; otherwise it is of no use.
        self.hand_offs.take_claimer(client_id);
    }

    /// Forgets a session parked here that `claimer` took: a delayed will waiting for it is
    /// cancelled, and its subscriptions leave this node's routing tree once the claimer routes
    /// for it ([`Self::hand_off_routes`]). A session that is online here again is left alone.
    pub(super) fn forget_parked(
        self: &Arc<Self>,
        client_id: &ClientId,
        filters: Vec<String>,
        claimer: NodeId,
    ) {
        if self.online.read().contains_key(client_id) {
            return;
        }
        self.adopted.remove(client_id);
        self.cancel_will(client_id);
        self.hand_off_routes(client_id, filters, Some(claimer));
    }

    /// Forgets a session parked here that expired (swept by another node): its subscriptions
    /// leave this node's routing tree and a delayed will waiting for it is cancelled. A session
    /// that is online here again is left alone.
    pub(super) fn forget_expired(&self, client_id: &str, filters: &[String]) {
        if self.online.read().contains_key(client_id) {
            return;
        }
        self.adopted.remove(client_id);
        for filter in filters {
            self.remove_subscription(client_id, filter);
        }
        self.cancel_will(client_id);
    }

    /// Takes the subscriptions of a session that left this node for another one (`new_node`,
    /// when known) out of the routing tree: at once on a single node; in a cluster only once
    /// the new node's routes have reached the cluster (see [`crate::cluster::handoff`]), what
    /// they match meanwhile being sent on to the session's new node.
    pub fn hand_off_routes(
        self: &Arc<Self>,
        client_id: &ClientId,
        filters: Vec<String>,
        new_node: Option<NodeId>,
    ) {
        let Some(link) = self.cluster.get() else {
            for filter in &filters {
                self.remove_subscription(client_id, filter);
            }
            return;
        };
        // Nothing to hand off when no route is left, or the session is connected here again.
        if filters.is_empty() || self.online.read().contains_key(client_id) {
            return;
        }
        let token = self.hand_offs.begin(client_id, filters, new_node);
        self.count_handoffs();
        self.metrics.cluster_handoffs_total.inc();
        let (link, client_id, broker) = (link.clone(), client_id.clone(), self.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + handoff::WAIT_FOR_NEW_ROUTES;
            // First the new node's word that it routes the session, then its entries in this
            // node's replica (the announcement and the note travel apart).
            if let Some(heard) = broker.hand_offs.waiter(&client_id, token) {
                while !broker.hand_offs.routed_there(&client_id, token) {
                    let woken = tokio::time::timeout_at(deadline.into(), heard.notified()).await;
                    if woken.is_err() {
                        break;
                    }
                }
            }
            if let Some((node, filters)) = broker.hand_offs.heard_from_new_node(&client_id, token) {
                while !link.advertised_by(&node, &filters) && Instant::now() < deadline {
                    tokio::time::sleep(handoff::POLL).await;
                }
                if link.advertised_by(&node, &filters) {
                    broker.hand_offs.relayed_there(&client_id, token);
                }
            }
            tokio::time::sleep(handoff::MARGIN).await;
            link.send_unroute(&client_id, token);
        });
    }

    /// The note [`Self::hand_off_routes`] sent itself came back through the inbox: the routes
    /// of that departure go, unless the session came back or left again meanwhile.
    pub(super) fn unroute(&self, client_id: &str, token: u64) {
        let finished = self.hand_offs.finish(client_id, token);
        self.count_handoffs();
        let Some(filters) = finished else {
            return;
        };
        if self.online.read().contains_key(client_id) {
            return;
        }
        for filter in &filters {
            self.remove_subscription(client_id, filter);
        }
    }

    /// Keeps `starling_cluster_handoffs_pending` true.
    pub(super) fn count_handoffs(&self) {
        self.metrics
            .cluster_handoffs
            .set(self.hand_offs.pending() as i64);
    }

    /// The node a session moved to says it routes the session now (see
    /// [`crate::cluster::handoff`]).
    pub(super) fn routed_elsewhere(&self, client_id: &str, from: &str) {
        self.hand_offs.routed_elsewhere(client_id, from);
    }

    /// The node that asked for the release of a session held here, if one did.
    pub fn claimer_of(&self, client_id: &str) -> Option<NodeId> {
        self.hand_offs.take_claimer(client_id)
    }
}
