//! Handling of each packet a connected client sends.

use super::{Connection, Exit};
use crate::broker::Routed;
use crate::message::{Message, MessageProperties};
use crate::protocol::{
    topic, DisconnectReasonCode, Packet, PingResp, PubAck, PubAckReason, PubComp, PubRec,
    PubRecReason, PubRel, Publish, QoS, SubAck, Subscribe, SubscribeReasonCode, UnsubAck,
    UnsubAckReason, Unsubscribe,
};
use crate::protocol::{PubCompReason, RetainForwardRule};
use crate::router::SubscriptionOptions;
use crate::store::{QueuedMessage, StoredSubscription};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::io::{AsyncRead, AsyncWrite};

fn violation(reason: DisconnectReasonCode, why: impl Into<String>) -> Exit {
    Exit::Violation(reason, why.into())
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Handles one packet from the client other than PUBLISH and SUBSCRIBE (which the caller
    /// dispatches to [`Self::accept_publish`] and [`Self::on_subscribe`]).
    pub(super) fn handle(&mut self, packet: Packet) -> Result<(), Exit> {
        match packet {
            Packet::PubAck(ack) => {
                if self.outgoing.puback(ack.pkid) {
                    self.send_ready();
                }
                Ok(())
            }
            Packet::PubRec(rec) => {
                let accepted = (rec.reason as u8) < 0x80;
                if self.outgoing.pubrec(rec.pkid, accepted) {
                    self.send(&Packet::PubRel(PubRel::new(rec.pkid, None)));
                } else {
                    self.send_ready();
                }
                Ok(())
            }
            Packet::PubComp(comp) => {
                if self.outgoing.pubcomp(comp.pkid) {
                    self.send_ready();
                }
                Ok(())
            }
            Packet::PubRel(rel) => {
                let mut comp = PubComp::new(rel.pkid, None);
                if !self.incoming_qos2.remove(&rel.pkid) {
                    comp.reason = PubCompReason::PacketIdentifierNotFound;
                }
                self.send(&Packet::PubComp(comp));
                Ok(())
            }
            Packet::PingReq(_) => {
                self.send(&Packet::PingResp(PingResp));
                Ok(())
            }
            Packet::Disconnect(disconnect) => {
                if let Some(expiry) = disconnect
                    .properties
                    .as_ref()
                    .and_then(|p| p.session_expiry_interval)
                {
                    if self.connect_expiry_was_zero && expiry != 0 {
                        return Err(violation(
                            DisconnectReasonCode::ProtocolError,
                            "session expiry set at DISCONNECT after CONNECT asked for none",
                        ));
                    }
                    self.expiry_secs =
                        expiry.min(self.broker.config.session.max_session_expiry_secs);
                }
                let will =
                    disconnect.reason_code == DisconnectReasonCode::DisconnectWithWillMessage;
                Err(Exit::Disconnected { will })
            }
            Packet::Auth(_) => Err(violation(
                DisconnectReasonCode::ProtocolError,
                "AUTH without an authentication method",
            )),
            other => Err(violation(
                DisconnectReasonCode::ProtocolError,
                format!("unexpected packet {other:?}"),
            )),
        }
    }

    /// Resolves the topic of a PUBLISH, applying v5 topic aliases.
    fn resolve_topic(&mut self, publish: &Publish) -> Result<Arc<str>, Exit> {
        let alias = publish.properties.as_ref().and_then(|p| p.topic_alias);
        let name = if publish.topic.is_empty() {
            None
        } else {
            let name = std::str::from_utf8(&publish.topic).map_err(|_| {
                violation(DisconnectReasonCode::MalformedPacket, "topic is not UTF-8")
            })?;
            topic::validate_name(name, self.broker.config.limits.max_topic_length).map_err(
                |e| {
                    violation(
                        DisconnectReasonCode::TopicNameInvalid,
                        format!("topic name: {e}"),
                    )
                },
            )?;
            Some(name)
        };
        match (alias, name) {
            (None, Some(name)) => Ok(name.into()),
            (None, None) => Err(violation(
                DisconnectReasonCode::ProtocolError,
                "empty topic without alias",
            )),
            (Some(a), _) if a == 0 || a > self.topic_alias_max => Err(violation(
                DisconnectReasonCode::TopicAliasInvalid,
                format!("topic alias {a} outside 1..={}", self.topic_alias_max),
            )),
            (Some(a), Some(name)) => {
                let name: Arc<str> = name.into();
                self.topic_aliases.insert(a, name.clone());
                Ok(name)
            }
            (Some(a), None) => self.topic_aliases.get(&a).cloned().ok_or_else(|| {
                violation(
                    DisconnectReasonCode::ProtocolError,
                    format!("unknown topic alias {a}"),
                )
            }),
        }
    }

    /// Checks a PUBLISH and builds the message to route; `None` when it was answered already
    /// (a duplicate or a refusal).
    pub(super) fn accept_publish(
        &mut self,
        publish: Publish,
    ) -> Result<Option<Arc<Message>>, Exit> {
        let topic = self.resolve_topic(&publish)?;
        let qos = publish.qos;
        self.broker.metrics.messages_received[qos as usize].inc();
        let v5 = self.version.is_v5();
        if qos == QoS::ExactlyOnce {
            if self.incoming_qos2.contains(&publish.pkid) {
                // A resend of a message already routed: acknowledge again, do not route twice.
                self.send(&Packet::PubRec(PubRec::new(publish.pkid, None)));
                return Ok(None);
            }
            if self.incoming_qos2.len() >= usize::from(self.broker.config.limits.max_inflight) {
                return Err(violation(
                    DisconnectReasonCode::ReceiveMaximumExceeded,
                    "too many unreleased QoS 2 messages",
                ));
            }
        }
        let properties = publish.properties.as_ref();
        if properties.and_then(|p| p.payload_format_indicator) == Some(1)
            && std::str::from_utf8(&publish.payload).is_err()
        {
            self.refuse_publish(
                &publish,
                PubAckReason::PayloadFormatInvalid,
                PubRecReason::PayloadFormatInvalid,
            );
            return Ok(None);
        }
        let reserved = topic.starts_with('$');
        if reserved
            || !self.broker.auth.current().can_publish(
                &self.client_id,
                self.username.as_deref(),
                &topic,
            )
        {
            self.broker.metrics.publish_denied.inc();
            tracing::debug!(client_id = %self.client_id, topic = %topic, "publish denied");
            if v5 {
                self.refuse_publish(
                    &publish,
                    PubAckReason::NotAuthorized,
                    PubRecReason::NotAuthorized,
                );
                return Ok(None);
            }
            // 3.1.1 cannot refuse: acknowledge so the client's flow completes, route nothing.
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    self.send(&Packet::PubAck(PubAck::new(publish.pkid, None)));
                }
                QoS::ExactlyOnce => {
                    self.incoming_qos2.insert(publish.pkid);
                    self.send(&Packet::PubRec(PubRec::new(publish.pkid, None)));
                }
            }
            return Ok(None);
        }
        let message = Arc::new(Message {
            topic,
            payload: publish.payload,
            qos,
            retain: publish.retain,
            properties: properties
                .map(MessageProperties::from_publish)
                .unwrap_or_default(),
            expires_at: Message::expiry_from_interval(
                properties.and_then(|p| p.message_expiry_interval),
                self.broker.config.session.max_message_expiry_secs,
                SystemTime::now,
            ),
            publisher: Some(self.client_id.clone()),
            received_at: sampled_now(),
        });
        Ok(Some(message))
    }

    /// Acknowledges a routed PUBLISH (v5: 0x10 when nobody subscribes, here or on any node it
    /// was relayed to).
    pub(super) fn acknowledge_publish(&mut self, qos: QoS, packet_id: u16, routed: Routed) {
        let nobody = routed.reached_nobody() && self.version.is_v5();
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let mut ack = PubAck::new(packet_id, None);
                if nobody {
                    ack.reason = PubAckReason::NoMatchingSubscribers;
                }
                self.send(&Packet::PubAck(ack));
            }
            QoS::ExactlyOnce => {
                self.incoming_qos2.insert(packet_id);
                let mut rec = PubRec::new(packet_id, None);
                if nobody {
                    rec.reason = PubRecReason::NoMatchingSubscribers;
                }
                self.send(&Packet::PubRec(rec));
            }
        }
    }

    /// Answers a refused v5 publish with a reason code (QoS 0 has no answer).
    fn refuse_publish(&mut self, publish: &Publish, ack: PubAckReason, rec: PubRecReason) {
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let mut p = PubAck::new(publish.pkid, None);
                p.reason = ack;
                self.send(&Packet::PubAck(p));
            }
            QoS::ExactlyOnce => {
                let mut p = PubRec::new(publish.pkid, None);
                p.reason = rec;
                self.send(&Packet::PubRec(p));
            }
        }
    }

    pub(super) async fn on_subscribe(&mut self, subscribe: Subscribe) -> Result<(), Exit> {
        let identifier = subscribe.properties.as_ref().and_then(|p| p.id);
        if identifier == Some(0) {
            return Err(violation(
                DisconnectReasonCode::ProtocolError,
                "subscription identifier 0",
            ));
        }
        let limits = &self.broker.config.limits;
        let max_len = limits.max_topic_length;
        let max_subs = limits.max_subscriptions_per_client;
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut retained_for = Vec::new();
        let mut added = Vec::new();
        for filter in subscribe.filters {
            let parsed = match topic::parse_subscription(&filter.path, max_len) {
                Ok(parsed) => parsed,
                Err(_) => {
                    codes.push(SubscribeReasonCode::TopicFilterInvalid);
                    continue;
                }
            };
            if parsed.group.is_some() && filter.nolocal {
                return Err(violation(
                    DisconnectReasonCode::ProtocolError,
                    "no-local on a shared subscription",
                ));
            }
            if !self.broker.auth.current().can_subscribe(
                &self.client_id,
                self.username.as_deref(),
                parsed.filter,
            ) {
                codes.push(SubscribeReasonCode::NotAuthorized);
                continue;
            }
            if !self.subscriptions.contains_key(&filter.path)
                && self.subscriptions.len() >= max_subs
            {
                codes.push(SubscribeReasonCode::QuotaExceeded);
                continue;
            }
            let is_shared = parsed.group.is_some();
            let options = SubscriptionOptions {
                qos: filter.qos,
                no_local: filter.nolocal,
                retain_as_published: filter.preserve_retain,
                retain_handling: filter.retain_forward_rule.clone(),
                identifier,
            };
            let is_new =
                self.broker
                    .add_subscription(&self.client_id, &filter.path, options.clone());
            self.subscriptions
                .insert(filter.path.clone(), options.clone());
            if self.expiry_secs > 0 {
                added.push(StoredSubscription {
                    filter: filter.path.clone(),
                    options: options.clone(),
                });
            }
            codes.push(SubscribeReasonCode::Success(filter.qos));
            let send_retained = match options.retain_handling {
                RetainForwardRule::OnEverySubscribe => true,
                RetainForwardRule::OnNewSubscribe => is_new,
                RetainForwardRule::Never => false,
            };
            if send_retained && !is_shared {
                retained_for.push((parsed.filter.to_string(), options));
            }
        }
        self.save_subscriptions(&added, &[]).await;
        self.send(&Packet::SubAck(SubAck {
            pkid: subscribe.pkid,
            return_codes: codes,
            properties: None,
        }));
        for (filter, options) in retained_for {
            let messages = match self.broker.store.retained_matching(&filter).await {
                Ok(messages) => messages,
                Err(e) => {
                    tracing::warn!(error = %e, "retained messages unavailable");
                    continue;
                }
            };
            for message in messages {
                let qos = crate::protocol::qos_min(message.qos, options.qos);
                self.offer(QueuedMessage::new(
                    message,
                    qos,
                    true,
                    options.identifier.into_iter().collect(),
                ));
            }
        }
        Ok(())
    }

    pub(super) async fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let mut removed = Vec::new();
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|filter| {
                if self.subscriptions.remove(filter).is_some() {
                    self.broker.remove_subscription(&self.client_id, filter);
                    removed.push(filter.clone());
                    UnsubAckReason::Success
                } else {
                    UnsubAckReason::NoSubscriptionExisted
                }
            })
            .collect();
        if self.expiry_secs > 0 {
            self.save_subscriptions(&[], &removed).await;
        }
        self.send(&Packet::UnsubAck(UnsubAck {
            pkid: unsubscribe.pkid,
            reasons,
            properties: None,
        }));
    }

    /// Writes subscription changes of a persistent session through to the store (a cluster
    /// store keeps them so a node that adopts the session after this one dies has them).
    async fn save_subscriptions(&self, added: &[StoredSubscription], removed: &[String]) {
        if added.is_empty() && removed.is_empty() {
            return;
        }
        if let Err(e) = self
            .broker
            .store
            .save_subscriptions(&self.client_id, self.generation, added, removed)
            .await
        {
            tracing::warn!(client_id = %self.client_id, error = %e, "subscriptions not written through");
        }
    }
}

/// One client publish in this many is stamped with the time it was read, so that its copies
/// measure the delivery latency (`starling_delivery_latency_seconds`) at the cost of one clock
/// read per that many publishes.
const LATENCY_SAMPLE_EVERY: u32 = 64;

/// Now, for one call in [`LATENCY_SAMPLE_EVERY`] on this thread; `None` otherwise.
fn sampled_now() -> Option<std::time::Instant> {
    thread_local! {
        static SEEN: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    SEEN.with(|seen| {
        let n = seen.get().wrapping_add(1);
        seen.set(n);
        (n % LATENCY_SAMPLE_EVERY == 1).then(std::time::Instant::now)
    })
}
