//! The wire structures: the broker's stored types mirrored field by field (the shape postcard
//! writes), and the conversions between them and the broker's types.

use super::DecodeError;
use crate::message::{Message, MessageProperties};
use crate::protocol::{self, QoS};
use crate::store::QueuedMessage;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A byte string on the wire, borrowed both ways: encoding does not touch the reference count of
/// the buffer a payload shares, decoding copies once, into the message's own `Bytes`.
#[derive(Clone, Copy)]
pub(super) struct WireBytes<'a>(pub(super) &'a [u8]);

impl Serialize for WireBytes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for WireBytes<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Borrowed;
        impl<'de> serde::de::Visitor<'de> for Borrowed {
            type Value = &'de [u8];
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(
                self,
                v: &'de [u8],
            ) -> Result<Self::Value, E> {
                Ok(v)
            }
        }
        deserializer.deserialize_bytes(Borrowed).map(WireBytes)
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct WireProperties<'a> {
    pub(super) payload_format_indicator: Option<u8>,
    pub(super) content_type: Option<&'a str>,
    pub(super) response_topic: Option<&'a str>,
    #[serde(borrow)]
    pub(super) correlation_data: Option<WireBytes<'a>>,
    pub(super) user_properties: Vec<(&'a str, &'a str)>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct WireWill<'a> {
    pub(super) delay_secs: u32,
    #[serde(borrow)]
    pub(super) message: WireMessage<'a>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct WireMessage<'a> {
    pub(super) topic: &'a str,
    #[serde(borrow)]
    pub(super) payload: WireBytes<'a>,
    pub(super) qos: u8,
    pub(super) retain: bool,
    #[serde(borrow)]
    pub(super) properties: WireProperties<'a>,
    /// Time since the Unix epoch, exact to the nanosecond.
    pub(super) expires_at: Option<Duration>,
    pub(super) publisher: Option<&'a str>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct WireQueued<'a> {
    #[serde(borrow)]
    pub(super) message: WireMessage<'a>,
    pub(super) qos: u8,
    pub(super) retain: bool,
    pub(super) subscription_ids: Vec<u64>,
    /// Sent with DUP: it may have reached the client before.
    pub(super) maybe_sent: bool,
}

#[derive(Serialize, Deserialize)]
pub(super) struct WireInflight<'a> {
    pub(super) packet_id: u16,
    /// 0: awaiting PUBACK/PUBREC, 1: awaiting PUBCOMP.
    pub(super) state: u8,
    #[serde(borrow)]
    pub(super) queued: WireQueued<'a>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct WireOptions {
    pub(super) qos: u8,
    pub(super) no_local: bool,
    pub(super) retain_as_published: bool,
    /// 0: on every subscribe, 1: on new subscriptions only, 2: never.
    pub(super) retain_handling: u8,
    pub(super) identifier: Option<u64>,
}

pub(super) fn qos(value: u8) -> Result<QoS, DecodeError> {
    protocol::qos_from_u8(value).ok_or(DecodeError::Field {
        field: "qos",
        value: u64::from(value),
    })
}

pub(super) fn since_epoch(at: SystemTime) -> Duration {
    at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO)
}

pub(super) fn message_to_wire(m: &Message) -> WireMessage<'_> {
    let p = &m.properties;
    WireMessage {
        topic: &m.topic,
        payload: WireBytes(&m.payload),
        qos: m.qos as u8,
        retain: m.retain,
        properties: WireProperties {
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type.as_deref(),
            response_topic: p.response_topic.as_deref(),
            correlation_data: p.correlation_data.as_deref().map(WireBytes),
            user_properties: p
                .user_properties
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        },
        expires_at: m.expires_at.map(since_epoch),
        publisher: m.publisher.as_deref(),
    }
}

pub(super) fn message_from_wire(w: WireMessage<'_>) -> Result<Message, DecodeError> {
    let topic = Arc::from(w.topic);
    let publisher = w.publisher.map(Arc::from);
    message_from_wire_named(w, topic, publisher)
}

/// Builds a message whose topic and publisher id were made already.
pub(super) fn message_from_wire_named(
    w: WireMessage<'_>,
    topic: Arc<str>,
    publisher: Option<Arc<str>>,
) -> Result<Message, DecodeError> {
    let p = w.properties;
    Ok(Message {
        topic,
        payload: Bytes::copy_from_slice(w.payload.0),
        qos: qos(w.qos)?,
        retain: w.retain,
        properties: MessageProperties {
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type.map(str::to_owned),
            response_topic: p.response_topic.map(str::to_owned),
            correlation_data: p.correlation_data.map(|d| Bytes::copy_from_slice(d.0)),
            user_properties: if p.user_properties.is_empty() {
                Vec::new()
            } else {
                p.user_properties
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            },
        },
        expires_at: w.expires_at.and_then(|d| UNIX_EPOCH.checked_add(d)),
        publisher,
        received_at: None,
    })
}

pub(super) fn queued_to_wire(q: &QueuedMessage) -> WireQueued<'_> {
    WireQueued {
        message: message_to_wire(&q.message),
        qos: q.qos as u8,
        retain: q.retain,
        subscription_ids: q.subscription_ids.iter().map(|&id| id as u64).collect(),
        maybe_sent: q.maybe_sent,
    }
}

pub(super) fn queued_from_wire(w: WireQueued<'_>) -> Result<QueuedMessage, DecodeError> {
    let subscription_ids = w
        .subscription_ids
        .into_iter()
        .map(|id| {
            usize::try_from(id).map_err(|_| DecodeError::Field {
                field: "subscription id",
                value: id,
            })
        })
        .collect::<Result<_, _>>()?;
    let mut queued = QueuedMessage::new(
        Arc::new(message_from_wire(w.message)?),
        qos(w.qos)?,
        w.retain,
        subscription_ids,
    );
    queued.maybe_sent = w.maybe_sent;
    Ok(queued)
}
