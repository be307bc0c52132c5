//! How a connection ends: the client is told why, the session is stored, handed over or sent on
//! to the node that adopted it, and the will is published, scheduled or left to the adopter.

use super::{write_all_and_flush, Connection, Exit};
use crate::protocol::{Disconnect, DisconnectProperties, DisconnectReasonCode, Packet, QoS};
use crate::session::Outgoing;
use crate::store::{Detached, InflightState, StoredSession, StoredSubscription};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Tells a v5 client why it is being disconnected (best effort).
    async fn send_disconnect(&mut self, reason: DisconnectReasonCode, reference: Option<String>) {
        if !self.version.is_v5() {
            return;
        }
        let properties = reference.map(|server_reference| DisconnectProperties {
            session_expiry_interval: None,
            reason_string: None,
            user_properties: Vec::new(),
            server_reference: Some(server_reference),
        });
        let packet = Packet::Disconnect(Disconnect {
            reason_code: reason,
            properties,
        });
        self.write_buf.clear();
        if self.send(&packet) {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                write_all_and_flush(&mut self.stream, &self.write_buf),
            )
            .await;
        }
    }

    /// Ends the connection: tells the client why, stores or drops the session, and handles the will.
    pub(super) async fn finish(mut self, exit: Exit) {
        // MQTT 5 §3.1.2.5 (and 3.1.1 §3.1.2.5): the will is published whenever the connection
        // closes without a DISCONNECT that discards it, a close for shutdown included.
        let publish_will = match &exit {
            Exit::Disconnected { will } => *will,
            // The adopting node published it already.
            Exit::Adopted => false,
            _ => true,
        };
        let will_delay = self.will.as_ref().map_or(Duration::ZERO, |w| {
            w.delay
                .min(Duration::from_secs(u64::from(self.expiry_secs)))
        });
        // A node that shuts down cannot wait out a will's delay: the will stays stored with the
        // session, and the node that adopts this node's sessions publishes it once the delay
        // has passed, unless the client reconnected first (which discards it).
        let will_left_to_adopter = matches!(exit, Exit::Shutdown { .. })
            && publish_will
            && self.will.is_some()
            && !will_delay.is_zero()
            && self.expiry_secs > 0
            && self.broker.cluster().is_some();
        match &exit {
            Exit::Violation(reason, why) => {
                self.broker.metrics.protocol_errors.inc();
                tracing::info!(client_id = %self.client_id, peer = %self.peer, reason = ?reason, "closing connection: {why}");
                self.send_disconnect(*reason, None).await;
            }
            Exit::KeepAliveTimeout => {
                tracing::debug!(client_id = %self.client_id, "keep-alive timeout");
                self.send_disconnect(DisconnectReasonCode::KeepAliveTimeout, None)
                    .await;
            }
            Exit::TakenOver => {
                tracing::debug!(client_id = %self.client_id, "session taken over");
                self.send_disconnect(DisconnectReasonCode::SessionTakenOver, None)
                    .await;
            }
            Exit::Adopted => {
                tracing::debug!(client_id = %self.client_id, "session adopted by another node");
                self.send_disconnect(DisconnectReasonCode::SessionTakenOver, None)
                    .await;
            }
            Exit::Moved => {
                tracing::debug!(client_id = %self.client_id, "asked to use another server (rebalancing)");
                self.send_disconnect(DisconnectReasonCode::UseAnotherServer, None)
                    .await;
            }
            Exit::Shutdown { evacuated } => {
                let reference = self.broker.config.shutdown.server_reference.clone();
                let reason = if reference.is_some() || *evacuated {
                    DisconnectReasonCode::UseAnotherServer
                } else {
                    DisconnectReasonCode::ServerShuttingDown
                };
                self.send_disconnect(reason, reference).await;
            }
            Exit::Kicked { discard_session } => {
                tracing::info!(client_id = %self.client_id, discard_session, "disconnected by an operator");
                self.send_disconnect(DisconnectReasonCode::AdministrativeAction, None)
                    .await;
                if *discard_session {
                    self.expiry_secs = 0;
                }
            }
            Exit::Disconnected { .. } | Exit::Closed => {}
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;

        let broker = self.broker.clone();
        broker.deregister(&self.client_id, self.connection_id);
        let left = self.mailbox.close();
        for queued in std::mem::take(&mut self.arrived).into_iter().chain(left) {
            let keep = queued.qos != QoS::AtMostOnce || broker.config.session.queue_qos0;
            if keep && !self.outgoing.keep(queued) {
                broker.metrics.dropped_queue_full.inc();
            }
        }
        let subscriptions: Vec<StoredSubscription> = std::mem::take(&mut self.subscriptions)
            .into_iter()
            .map(|(filter, options)| StoredSubscription { filter, options })
            .collect();
        if matches!(exit, Exit::Adopted) {
            self.send_on_adopted(subscriptions).await;
        } else if self.expiry_secs == 0 {
            broker.remove_subscriptions(&self.client_id, &subscriptions);
            if let Err(e) = broker
                .store
                .remove_session(&self.client_id, self.generation)
                .await
            {
                tracing::warn!(client_id = %self.client_id, error = %e, "session not removed");
            }
        } else {
            let outgoing = std::mem::replace(&mut self.outgoing, Outgoing::new(1, 0));
            let (inflight, mut queue) = outgoing.into_parts();
            queue.retain(|q| q.qos != QoS::AtMostOnce || broker.config.session.queue_qos0);
            let session = StoredSession {
                expiry_secs: self.expiry_secs,
                subscriptions: subscriptions.clone(),
                inflight,
                queue,
                incoming_qos2: std::mem::take(&mut self.incoming_qos2)
                    .into_iter()
                    .collect(),
                disconnected_at: None,
            };
            let detached = if will_left_to_adopter {
                broker
                    .store
                    .detach_session_keeping_will(&self.client_id, self.generation, session)
                    .await
            } else {
                broker
                    .store
                    .detach_session(&self.client_id, self.generation, session)
                    .await
            };
            // Stored with the session for the adopter, or discarded by the new connection that
            // took the session meanwhile; a store that failed leaves it to this node.
            if will_left_to_adopter && detached.is_ok() {
                self.will = None;
            }
            match detached {
                // Parked here: its subscriptions stay in this node's routing tree.
                Ok(Detached::Stored) => {}
                // The session lives on elsewhere now: its routes here go once the new node's
                // have reached the cluster.
                Ok(Detached::HandedOver | Detached::Fenced) => {
                    let filters = subscriptions.iter().map(|s| s.filter.clone()).collect();
                    let claimer = broker.claimer_of(&self.client_id);
                    broker.hand_off_routes(&self.client_id, filters, claimer);
                }
                Err(e) => {
                    tracing::warn!(client_id = %self.client_id, error = %e, "session not stored");
                }
            }
        }
        if let Some(will) = self.will.take() {
            if publish_will {
                let delay = will_delay;
                if delay.is_zero() {
                    // Published before the session lock is released, so a connection taking the
                    // session over cannot cancel a will that is already due.
                    broker.metrics.messages_received[will.message.qos as usize].inc();
                    broker.publish(will.message).await;
                } else {
                    broker.schedule_will(self.client_id.clone(), will.message, delay);
                }
            }
        }
        if let Ok(n) = broker.store.session_count().await {
            broker.metrics.sessions.set(n as i64);
        }
    }

    /// The session was adopted by another node (the cluster declared this one dead): what the
    /// store holds is the adopter's now, and what this connection still held goes after it,
    /// marked DUP, as a copy sent on (queued for the session wherever it is). A QoS 2 message
    /// whose PUBREC arrived is the client's already. The session's routes here are handed off.
    async fn send_on_adopted(&mut self, subscriptions: Vec<StoredSubscription>) {
        let broker = self.broker.clone();
        let outgoing = std::mem::replace(&mut self.outgoing, Outgoing::new(1, 0));
        let (inflight, queue) = outgoing.into_parts();
        let unconfirmed = inflight
            .into_iter()
            .filter(|m| m.state == InflightState::AwaitingAck)
            .map(|m| m.queued);
        for mut copy in unconfirmed.chain(queue) {
            if copy.qos == QoS::AtMostOnce && !broker.config.session.queue_qos0 {
                continue;
            }
            copy.maybe_sent = true;
            broker.deliver_recovered(self.client_id.clone(), copy).await;
        }
        let filters = subscriptions.into_iter().map(|s| s.filter).collect();
        broker.hand_off_routes(&self.client_id, filters, None);
    }
}
