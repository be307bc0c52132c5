//! Control entries between nodes, through their inboxes: the takeover of a session (a claimer
//! asks the holder to release it and waits for the answer), parked sessions forgotten, routes
//! handed off, and messages sent on to the node that holds their session now.

use super::{ClusterLink, Outbound, HANDOVER_WAIT};
use crate::cluster::local::LocalBroker;
use crate::message::ClientId;
use crate::router::remote::NodeId;
use crate::store::redis::codec;
use crate::store::QueuedMessage;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Kinds of control entries (field `k`).
const KIND_RELEASE: &[u8] = b"release";
const KIND_RELEASED: &[u8] = b"released";
const KIND_FORGET: &[u8] = b"forget";
pub(in crate::cluster) const KIND_DIRECT: &[u8] = b"direct";
/// A node's note to itself that a departed session's routes may go (see [`crate::cluster::handoff`]).
const KIND_UNROUTE: &[u8] = b"unroute";
/// A node's word to the node a session moved from that it routes the session now.
const KIND_ROUTED: &[u8] = b"routed";

/// A claim waiting for its holder's answer.
pub(super) type Waiters = HashMap<(ClientId, u64), (NodeId, oneshot::Sender<()>)>;

impl ClusterLink {
    /// Appends a control entry of `kind` about `client_id` to `node`'s inbox, with more fields.
    fn send_control(
        &self,
        node: &str,
        kind: &[u8],
        client_id: &str,
        more: Vec<(&'static str, Vec<u8>)>,
    ) {
        let mut fields = vec![("k", kind.to_vec()), ("c", client_id.as_bytes().to_vec())];
        fields.extend(more);
        self.queue(Outbound::Control {
            node: node.into(),
            fields,
        });
    }

    /// Asks `holder`, whose connection holds a session this node claimed, to hand it over, and
    /// waits for its answer: at most [`HANDOVER_WAIT`], and not at all for a node gossip
    /// reported gone. Returns whether the holder answered.
    pub async fn request_release(
        &self,
        holder: &str,
        client_id: &ClientId,
        generation: u64,
    ) -> bool {
        if self.departed.read().contains(holder) {
            return false;
        }
        let (done, answered) = oneshot::channel();
        self.waiting
            .lock()
            .insert((client_id.clone(), generation), (holder.into(), done));
        self.send_control(
            holder,
            KIND_RELEASE,
            client_id,
            vec![
                ("n", generation.to_string().into_bytes()),
                ("o", self.node_id.as_bytes().to_vec()),
            ],
        );
        let answered = matches!(
            tokio::time::timeout(HANDOVER_WAIT, answered).await,
            Ok(Ok(()))
        );
        self.waiting.lock().remove(&(client_id.clone(), generation));
        if !answered {
            tracing::warn!(node = holder, client_id = %client_id, "no hand-over from the node holding the session: taking what the store has");
        }
        answered
    }

    /// Tells the node a session was parked on that it is gone from there (`claimed` by this
    /// node, or expired), with the subscriptions to drop.
    pub fn forget_parked(&self, node: &str, client_id: &str, filters: Vec<String>, claimed: bool) {
        let mut fields = vec![("f", filters.join("\0").into_bytes())];
        if claimed {
            fields.push(("o", self.node_id.as_bytes().to_vec()));
        }
        self.send_control(node, KIND_FORGET, client_id, fields);
    }

    /// Appends to this node's own inbox the note that the routes a departed session left here
    /// may go: entries relayed here before it are handled first (see [`crate::cluster::handoff`]).
    pub fn send_unroute(&self, client_id: &str, token: u64) {
        self.send_control(
            &self.node_id.clone(),
            KIND_UNROUTE,
            client_id,
            vec![("t", token.to_string().into_bytes())],
        );
    }

    /// Tells the node a session moved from that this node routes it now: its subscriptions are
    /// in this node's routing tree (see [`crate::cluster::handoff`]).
    pub fn routed_here(&self, old_node: &str, client_id: &str) {
        self.send_control(
            old_node,
            KIND_ROUTED,
            client_id,
            vec![("o", self.node_id.as_bytes().to_vec())],
        );
    }

    /// Sends a message on to the node that holds its session now.
    pub fn send_direct(&self, node: &str, client_id: &str, queued: &QueuedMessage) {
        match codec::encode_queued(queued) {
            Ok(encoded) => self.send_control(node, KIND_DIRECT, client_id, vec![("q", encoded)]),
            Err(e) => tracing::warn!(error = %e, "message not sent on: encoding failed"),
        }
    }

    /// Gossip reported a node gone: claims waiting for it stop waiting.
    pub fn node_departed(&self, node: &str) {
        self.departed.write().insert(node.into());
        let mut waiting = self.waiting.lock();
        let gone: Vec<_> = waiting
            .iter()
            .filter(|(_, (holder, _))| &**holder == node)
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            if let Some((_, done)) = waiting.remove(&key) {
                let _ = done.send(());
            }
        }
    }

    /// Gossip reported a node (back) in the cluster.
    pub fn node_joined(&self, node: &str) {
        self.departed.write().remove(node);
    }

    /// Handles a control entry read from this node's inbox.
    pub(in crate::cluster) fn on_control<B: LocalBroker>(
        self: &Arc<Self>,
        kind: &[u8],
        field: &dyn Fn(&[u8]) -> Option<Vec<u8>>,
        broker: &Arc<B>,
    ) {
        let text = |name: &[u8]| field(name).and_then(|v| String::from_utf8(v).ok());
        let Some(client) = text(b"c") else {
            tracing::warn!("control entry without a client id skipped");
            return;
        };
        let client: ClientId = client.into();
        match kind {
            KIND_RELEASE => {
                let (Some(requester), Some(generation)) =
                    (text(b"o"), text(b"n").and_then(|n| n.parse::<u64>().ok()))
                else {
                    tracing::warn!("unreadable release request skipped");
                    return;
                };
                let link = self.clone();
                let broker = broker.clone();
                tokio::spawn(async move {
                    broker.release_session(&client, &requester).await;
                    link.send_control(
                        &requester,
                        KIND_RELEASED,
                        &client,
                        vec![("n", generation.to_string().into_bytes())],
                    );
                });
            }
            KIND_RELEASED => {
                if let Some(generation) = text(b"n").and_then(|n| n.parse::<u64>().ok()) {
                    if let Some((_, done)) = self.waiting.lock().remove(&(client, generation)) {
                        let _ = done.send(());
                    }
                }
            }
            KIND_FORGET => {
                let filters: Vec<String> = text(b"f")
                    .map(|f| {
                        f.split('\0')
                            .filter(|f| !f.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                match text(b"o") {
                    Some(claimer) => broker.forget_parked(&client, filters, claimer.into()),
                    None => broker.forget_expired(&client, &filters),
                }
            }
            KIND_ROUTED => match text(b"o") {
                Some(from) => broker.routed_elsewhere(&client, &from),
                None => tracing::warn!("unreadable routed note skipped"),
            },
            KIND_UNROUTE => match text(b"t").and_then(|t| t.parse::<u64>().ok()) {
                Some(token) => broker.unroute(&client, token),
                None => tracing::warn!("unreadable unroute note skipped"),
            },
            other => {
                tracing::warn!(kind = %String::from_utf8_lossy(other), "unknown control entry skipped")
            }
        }
    }
}
