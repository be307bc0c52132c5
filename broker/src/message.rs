//! The broker's own form of an application message, independent of protocol version.

use crate::protocol::{PublishProperties, QoS};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A client identifier, shared cheaply between the router, sessions and messages.
pub type ClientId = Arc<str>;

/// The properties of a publish that travel with the message to every subscriber.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProperties {
    /// Payload format indicator (1 = UTF-8).
    pub payload_format_indicator: Option<u8>,
    /// Content type.
    pub content_type: Option<String>,
    /// Response topic for request/response.
    pub response_topic: Option<String>,
    /// Correlation data for request/response.
    pub correlation_data: Option<Bytes>,
    /// User properties, in order.
    pub user_properties: Vec<(String, String)>,
}

impl MessageProperties {
    /// Takes what travels with the message from a PUBLISH's properties.
    pub fn from_publish(p: &PublishProperties) -> Self {
        MessageProperties {
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
        }
    }

    /// Whether there is no property at all.
    pub fn is_empty(&self) -> bool {
        *self == MessageProperties::default()
    }
}

/// An application message on its way from a publisher (or a will) to subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic name.
    pub topic: Arc<str>,
    /// The payload.
    pub payload: Bytes,
    /// The QoS it was published with.
    pub qos: QoS,
    /// The retain flag it was published with.
    pub retain: bool,
    /// Properties passed through to subscribers.
    pub properties: MessageProperties,
    /// When the message expires (from the message expiry interval), if ever.
    pub expires_at: Option<SystemTime>,
    /// The client that published it (used for no-local), if a client did.
    pub publisher: Option<ClientId>,
    /// When this node read it from its publisher, for a sample of client publishes (see
    /// [`crate::connection`]): its copies observe the delivery latency when they are written to
    /// subscribers here. Never stored or relayed.
    pub received_at: Option<Instant>,
}

impl Message {
    /// `message` without its latency stamp (the same `Arc` when it has none): what a store
    /// keeps, so that a copy delivered later from it (a retained message, an offline queue)
    /// does not count as a live delivery.
    pub fn unstamped(message: Arc<Message>) -> Arc<Message> {
        if message.received_at.is_none() {
            return message;
        }
        let mut copy = (*message).clone();
        copy.received_at = None;
        Arc::new(copy)
    }

    /// Remaining lifetime in whole seconds at `now`: `None` if it never expires, `Some(0)` once
    /// expired.
    pub fn remaining_secs(&self, now: SystemTime) -> Option<u32> {
        self.expires_at.map(|at| {
            at.duration_since(now)
                .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
                .unwrap_or(0)
        })
    }

    /// The current time if the message expires, `None` if it never does: reading the clock
    /// costs more than the rest of delivering a message that does not expire.
    pub fn checked_now(&self) -> Option<SystemTime> {
        self.expires_at.map(|_| SystemTime::now())
    }

    /// Whether the message has expired at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The PUBLISH properties to send to a v5 subscriber; `now` is needed only for a message
    /// that expires (see [`Self::checked_now`]).
    pub fn publish_properties(
        &self,
        now: Option<SystemTime>,
        subscription_ids: &[usize],
    ) -> Option<PublishProperties> {
        let expiry = now.and_then(|now| self.remaining_secs(now));
        if self.properties.is_empty() && expiry.is_none() && subscription_ids.is_empty() {
            return None;
        }
        let p = &self.properties;
        Some(PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: expiry.map(|s| s.max(1)),
            topic_alias: None,
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
            subscription_identifiers: subscription_ids.to_vec(),
            content_type: p.content_type.clone(),
        })
    }

    /// Computes an expiry instant from an expiry interval, bounded by `max_secs` (0 = unbounded);
    /// the clock is read only when there is an expiry.
    pub fn expiry_from_interval(
        interval: Option<u32>,
        max_secs: u32,
        now: impl FnOnce() -> SystemTime,
    ) -> Option<SystemTime> {
        let secs = match (interval, max_secs) {
            (Some(i), 0) => i,
            (Some(i), max) => i.min(max),
            (None, 0) => return None,
            (None, max) => max,
        };
        Some(now() + Duration::from_secs(u64::from(secs)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(expires_at: Option<SystemTime>) -> Message {
        Message {
            topic: "t".into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: MessageProperties::default(),
            expires_at,
            publisher: None,
            received_at: None,
        }
    }

    #[test]
    fn expiry_counts_down_and_expires() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let m = message(Some(now + Duration::from_secs(30)));
        assert_eq!(m.remaining_secs(now), Some(30));
        assert!(!m.is_expired(now));
        assert!(m.is_expired(now + Duration::from_secs(30)));
        assert_eq!(message(None).remaining_secs(now), None);
    }

    #[test]
    fn expiry_interval_is_capped() {
        let now = SystemTime::UNIX_EPOCH;
        let at = Message::expiry_from_interval(Some(100), 10, || now);
        assert_eq!(at, Some(now + Duration::from_secs(10)));
        let unread = || -> SystemTime { panic!("no expiry: the clock is not read") };
        assert_eq!(Message::expiry_from_interval(None, 0, unread), None);
    }

    #[test]
    fn properties_only_when_needed() {
        let now = SystemTime::UNIX_EPOCH;
        assert_eq!(message(None).publish_properties(None, &[]), None);
        let props = message(None).publish_properties(None, &[3]).expect("props");
        assert_eq!(props.subscription_identifiers, vec![3]);
        let expiring = message(Some(now + Duration::from_secs(30)));
        assert!(expiring.checked_now().is_some());
        assert_eq!(message(None).checked_now(), None);
        let props = expiring.publish_properties(Some(now), &[]).expect("props");
        assert_eq!(props.message_expiry_interval, Some(30));
    }
}
