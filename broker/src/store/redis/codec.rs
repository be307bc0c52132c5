//! The binary encoding of the values a [`RedisStore`](super::RedisStore) keeps: one version byte,
//! then the value in [postcard](https://docs.rs/postcard) (a compact serde format: varint integers,
//! length-prefixed strings and byte strings, fields in declaration order, no field names).
//!
//! The structures here mirror the broker's own types field by field, so that the wire format only
//! changes when this file does. Any change that an older node cannot read must bump
//! [`ENCODING_VERSION`] (and the key schema version in the key names, see `docs/redis-schema.md`).

use super::plain;
use crate::message::{Message, MessageProperties};
use crate::protocol::{self, QoS, RetainForwardRule};
use crate::router::SubscriptionOptions;
use crate::store::{InflightMessage, InflightState, QueuedMessage, StoredWill};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The version byte every encoded value starts with.
pub const ENCODING_VERSION: u8 = 2;

/// Why a stored value could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The value is empty.
    #[error("empty value")]
    Empty,
    /// The value was written by an encoding this node does not know.
    #[error("unknown encoding version {0}")]
    Version(u8),
    /// The value is not valid postcard for the expected structure.
    #[error("malformed value: {0}")]
    Format(#[from] postcard::Error),
    /// A field holds a number outside its range.
    #[error("invalid {field}: {value}")]
    Field {
        /// Which field.
        field: &'static str,
        /// The value found.
        value: u64,
    },
}

/// A byte string on the wire, borrowed both ways: encoding does not touch the reference count of
/// the buffer a payload shares, decoding copies once, into the message's own `Bytes`.
#[derive(Clone, Copy)]
struct WireBytes<'a>(&'a [u8]);

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
struct WireProperties<'a> {
    payload_format_indicator: Option<u8>,
    content_type: Option<&'a str>,
    response_topic: Option<&'a str>,
    #[serde(borrow)]
    correlation_data: Option<WireBytes<'a>>,
    user_properties: Vec<(&'a str, &'a str)>,
}

#[derive(Serialize, Deserialize)]
struct WireWill<'a> {
    delay_secs: u32,
    #[serde(borrow)]
    message: WireMessage<'a>,
}

#[derive(Serialize, Deserialize)]
struct WireMessage<'a> {
    topic: &'a str,
    #[serde(borrow)]
    payload: WireBytes<'a>,
    qos: u8,
    retain: bool,
    #[serde(borrow)]
    properties: WireProperties<'a>,
    /// Time since the Unix epoch, exact to the nanosecond.
    expires_at: Option<Duration>,
    publisher: Option<&'a str>,
}

#[derive(Serialize, Deserialize)]
struct WireQueued<'a> {
    #[serde(borrow)]
    message: WireMessage<'a>,
    qos: u8,
    retain: bool,
    subscription_ids: Vec<u64>,
    /// Sent with DUP: it may have reached the client before.
    maybe_sent: bool,
}

#[derive(Serialize, Deserialize)]
struct WireInflight<'a> {
    packet_id: u16,
    /// 0: awaiting PUBACK/PUBREC, 1: awaiting PUBCOMP.
    state: u8,
    #[serde(borrow)]
    queued: WireQueued<'a>,
}

#[derive(Serialize, Deserialize)]
struct WireOptions {
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    /// 0: on every subscribe, 1: on new subscriptions only, 2: never.
    retain_handling: u8,
    identifier: Option<u64>,
}

fn qos(value: u8) -> Result<QoS, DecodeError> {
    protocol::qos_from_u8(value).ok_or(DecodeError::Field {
        field: "qos",
        value: u64::from(value),
    })
}

fn since_epoch(at: SystemTime) -> Duration {
    at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO)
}

fn message_to_wire(m: &Message) -> WireMessage<'_> {
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

fn message_from_wire(w: WireMessage<'_>) -> Result<Message, DecodeError> {
    let topic = Arc::from(w.topic);
    let publisher = w.publisher.map(Arc::from);
    message_from_wire_named(w, topic, publisher)
}

/// Builds a message whose topic and publisher id were made already.
fn message_from_wire_named(
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
    })
}

fn queued_to_wire(q: &QueuedMessage) -> WireQueued<'_> {
    WireQueued {
        message: message_to_wire(&q.message),
        qos: q.qos as u8,
        retain: q.retain,
        subscription_ids: q.subscription_ids.iter().map(|&id| id as u64).collect(),
        maybe_sent: q.maybe_sent,
    }
}

fn queued_from_wire(w: WireQueued<'_>) -> Result<QueuedMessage, DecodeError> {
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

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    let mut out = vec![ENCODING_VERSION];
    postcard::serialize_with_flavor(value, Appending(&mut out))?;
    Ok(out)
}

fn body(bytes: &[u8]) -> Result<&[u8], DecodeError> {
    match bytes.split_first() {
        None => Err(DecodeError::Empty),
        Some((&ENCODING_VERSION, rest)) => Ok(rest),
        Some((&other, _)) => Err(DecodeError::Version(other)),
    }
}

/// Bytes an encoded message takes besides its topic, payload and properties, about.
const MESSAGE_OVERHEAD: usize = 32;

/// Encodes a message (a retained message, a relayed one).
pub fn encode_message(message: &Message) -> Result<Vec<u8>, postcard::Error> {
    let mut out = Vec::new();
    encode_message_into(message, &mut out)?;
    Ok(out)
}

/// Appends the encoding of [`encode_message`] to `out` (the relay writes it straight into a
/// packed entry).
pub fn encode_message_into(message: &Message, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
    // Sized up front: growing byte by byte would reallocate several times per message.
    out.reserve(
        MESSAGE_OVERHEAD
            + message.topic.len()
            + message.payload.len()
            + message.publisher.as_deref().map_or(0, str::len),
    );
    out.push(ENCODING_VERSION);
    if message.expires_at.is_none() && message.properties.is_empty() {
        plain::encode(
            &plain::PlainMessage {
                topic: &message.topic,
                payload: &message.payload,
                qos: message.qos as u8,
                retain: message.retain,
                publisher: message.publisher.as_deref(),
            },
            out,
        );
        return Ok(());
    }
    postcard::serialize_with_flavor(&message_to_wire(message), Appending(out))
}

/// Lets postcard append to a buffer it does not own, copying byte strings whole (postcard's
/// `to_extend` pushes them byte by byte).
struct Appending<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Appending<'_> {
    type Output = ();

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Decodes a message written by [`encode_message`].
pub fn decode_message(bytes: &[u8]) -> Result<Message, DecodeError> {
    message_from_wire(wire_message(body(bytes)?)?)
}

/// Reads an encoded message's body: a plain one (see [`plain`]) directly, any other with serde.
fn wire_message(body: &[u8]) -> Result<WireMessage<'_>, DecodeError> {
    if let Some(m) = plain::decode(body) {
        return Ok(WireMessage {
            topic: m.topic,
            payload: WireBytes(m.payload),
            qos: m.qos,
            retain: m.retain,
            properties: WireProperties {
                payload_format_indicator: None,
                content_type: None,
                response_topic: None,
                correlation_data: None,
                user_properties: Vec::new(),
            },
            expires_at: None,
            publisher: m.publisher,
        });
    }
    Ok(postcard::from_bytes(body)?)
}

/// A message read from [`encode_message`]'s bytes that still borrows its topic and publisher id
/// from them, so that a caller holding equal strings can share those instead of making new ones
/// (relayed messages in one batch mostly repeat a few).
pub struct MessageView<'a>(WireMessage<'a>);

impl<'a> MessageView<'a> {
    /// Reads a message written by [`encode_message`].
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        Ok(Self(wire_message(body(bytes)?)?))
    }

    /// The topic.
    pub fn topic(&self) -> &'a str {
        self.0.topic
    }

    /// The id of the client that published it, if a client did.
    pub fn publisher(&self) -> Option<&'a str> {
        self.0.publisher
    }

    /// The message, with `topic` and `publisher` equal to [`Self::topic`] and
    /// [`Self::publisher`].
    pub fn into_message(
        self,
        topic: Arc<str>,
        publisher: Option<Arc<str>>,
    ) -> Result<Message, DecodeError> {
        debug_assert_eq!(&*topic, self.0.topic);
        message_from_wire_named(self.0, topic, publisher)
    }
}

/// Encodes a will kept with an online session.
pub fn encode_will(will: &StoredWill) -> Result<Vec<u8>, postcard::Error> {
    encode(&WireWill {
        delay_secs: will.delay_secs,
        message: message_to_wire(&will.message),
    })
}

/// Decodes a will written by [`encode_will`].
pub fn decode_will(bytes: &[u8]) -> Result<StoredWill, DecodeError> {
    let w: WireWill<'_> = postcard::from_bytes(body(bytes)?)?;
    Ok(StoredWill {
        delay_secs: w.delay_secs,
        message: Arc::new(message_from_wire(w.message)?),
    })
}

/// Encodes a queued message.
pub fn encode_queued(queued: &QueuedMessage) -> Result<Vec<u8>, postcard::Error> {
    encode(&queued_to_wire(queued))
}

/// Decodes a queued message written by [`encode_queued`].
pub fn decode_queued(bytes: &[u8]) -> Result<QueuedMessage, DecodeError> {
    queued_from_wire(postcard::from_bytes(body(bytes)?)?)
}

/// Encodes an in-flight message.
pub fn encode_inflight(inflight: &InflightMessage) -> Result<Vec<u8>, postcard::Error> {
    encode(&WireInflight {
        packet_id: inflight.packet_id,
        state: match inflight.state {
            InflightState::AwaitingAck => 0,
            InflightState::AwaitingComplete => 1,
        },
        queued: queued_to_wire(&inflight.queued),
    })
}

/// Decodes an in-flight message written by [`encode_inflight`].
pub fn decode_inflight(bytes: &[u8]) -> Result<InflightMessage, DecodeError> {
    let w: WireInflight<'_> = postcard::from_bytes(body(bytes)?)?;
    let state = match w.state {
        0 => InflightState::AwaitingAck,
        1 => InflightState::AwaitingComplete,
        other => {
            return Err(DecodeError::Field {
                field: "in-flight state",
                value: u64::from(other),
            })
        }
    };
    Ok(InflightMessage {
        packet_id: w.packet_id,
        state,
        queued: queued_from_wire(w.queued)?,
    })
}

/// Encodes subscription options.
pub fn encode_options(options: &SubscriptionOptions) -> Result<Vec<u8>, postcard::Error> {
    encode(&WireOptions {
        qos: options.qos as u8,
        no_local: options.no_local,
        retain_as_published: options.retain_as_published,
        retain_handling: match options.retain_handling {
            RetainForwardRule::OnEverySubscribe => 0,
            RetainForwardRule::OnNewSubscribe => 1,
            RetainForwardRule::Never => 2,
        },
        identifier: options.identifier.map(|id| id as u64),
    })
}

/// Decodes subscription options written by [`encode_options`].
pub fn decode_options(bytes: &[u8]) -> Result<SubscriptionOptions, DecodeError> {
    let w: WireOptions = postcard::from_bytes(body(bytes)?)?;
    let retain_handling = match w.retain_handling {
        0 => RetainForwardRule::OnEverySubscribe,
        1 => RetainForwardRule::OnNewSubscribe,
        2 => RetainForwardRule::Never,
        other => {
            return Err(DecodeError::Field {
                field: "retain handling",
                value: u64::from(other),
            })
        }
    };
    let identifier = w
        .identifier
        .map(|id| {
            usize::try_from(id).map_err(|_| DecodeError::Field {
                field: "subscription identifier",
                value: id,
            })
        })
        .transpose()?;
    Ok(SubscriptionOptions {
        qos: qos(w.qos)?,
        no_local: w.no_local,
        retain_as_published: w.retain_as_published,
        retain_handling,
        identifier,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Message {
        Message {
            topic: "a/b".into(),
            payload: Bytes::from_static(&[0, 159, 146, 150, 255, b'x']),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: MessageProperties {
                payload_format_indicator: Some(0),
                content_type: Some("application/octet-stream".into()),
                response_topic: Some("reply/here".into()),
                correlation_data: Some(Bytes::from_static(&[1, 2, 0xff])),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            },
            expires_at: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789)),
            publisher: Some("pub".into()),
        }
    }

    #[test]
    fn every_value_round_trips() {
        let m = message();
        assert_eq!(
            decode_message(&encode_message(&m).expect("encode")).ok(),
            Some(m.clone())
        );
        let w = StoredWill {
            message: Arc::new(m.clone()),
            delay_secs: 30,
        };
        assert_eq!(decode_will(&encode_will(&w).expect("encode")).ok(), Some(w));
        let mut q = QueuedMessage::new(Arc::new(m), QoS::AtLeastOnce, false, vec![1, 268_435_455]);
        q.maybe_sent = true;
        assert_eq!(
            decode_queued(&encode_queued(&q).expect("encode")).ok(),
            Some(q.clone())
        );
        let i = InflightMessage {
            packet_id: 65535,
            state: InflightState::AwaitingComplete,
            queued: q,
        };
        assert_eq!(
            decode_inflight(&encode_inflight(&i).expect("encode")).ok(),
            Some(i)
        );
        let o = SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainForwardRule::Never,
            identifier: Some(7),
        };
        assert_eq!(
            decode_options(&encode_options(&o).expect("encode")).ok(),
            Some(o)
        );
    }

    #[test]
    fn a_message_encodes_to_the_documented_bytes() {
        // Nodes of one cluster read each other's values: the layout must not drift.
        let m = Message {
            topic: "a/b".into(),
            payload: Bytes::from_static(&[1, 2, 3]),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: MessageProperties {
                payload_format_indicator: Some(1),
                correlation_data: Some(Bytes::from_static(&[9])),
                user_properties: vec![("k".into(), "v".into())],
                ..MessageProperties::default()
            },
            expires_at: None,
            publisher: Some("c".into()),
        };
        let expected = [
            ENCODING_VERSION,
            3,
            b'a',
            b'/',
            b'b', // topic
            3,
            1,
            2,
            3, // payload
            1,
            1, // qos, retain
            1,
            1,
            0,
            0, // payload format Some(1), no content type, no response topic
            1,
            1,
            9, // correlation data
            1,
            1,
            b'k',
            1,
            b'v', // user properties
            0,    // no expiry
            1,
            1,
            b'c', // publisher
        ];
        assert_eq!(encode_message(&m).expect("encode"), expected);
        assert_eq!(decode_message(&expected).expect("decode"), m);
    }

    /// The encoding serde and postcard write for `m`, whatever the message.
    fn general_encoding(m: &Message) -> Vec<u8> {
        let mut out = vec![ENCODING_VERSION];
        postcard::serialize_with_flavor(&message_to_wire(m), Appending(&mut out)).unwrap();
        out
    }

    /// Plain messages of many shapes: topic, payload and publisher lengths on both sides of
    /// each varint length step, every QoS, both retain flags.
    fn plain_messages() -> Vec<Message> {
        let mut out = Vec::new();
        for (i, len) in [0usize, 1, 127, 128, 300, 16_383, 16_384, 70_000]
            .into_iter()
            .enumerate()
        {
            out.push(Message {
                topic: "t/".repeat(len.min(20_000) / 2 + 1).into(),
                payload: Bytes::from(vec![i as u8; len]),
                qos: protocol::qos_from_u8((i % 3) as u8).unwrap(),
                retain: i % 2 == 1,
                properties: MessageProperties::default(),
                expires_at: None,
                publisher: (i % 4 != 0).then(|| "p".repeat(len.min(300)).into()),
            });
        }
        out
    }

    #[test]
    fn a_plain_message_takes_the_short_way_to_the_same_bytes_and_back() {
        for m in plain_messages() {
            let encoded = encode_message(&m).unwrap();
            assert_eq!(
                encoded,
                general_encoding(&m),
                "topic {} bytes",
                m.topic.len()
            );
            assert!(plain::decode(&encoded[1..]).is_some());
            assert_eq!(decode_message(&encoded).unwrap(), m);
            let general: WireMessage<'_> = postcard::from_bytes(&encoded[1..]).unwrap();
            assert_eq!(message_from_wire(general).unwrap(), m);
        }
        // Anything with properties or an expiry goes the general way, and comes back whole.
        let encoded = encode_message(&message()).unwrap();
        assert!(plain::decode(&encoded[1..]).is_none());
        assert_eq!(decode_message(&encoded).unwrap(), message());
    }

    #[test]
    fn a_damaged_plain_message_is_an_error_never_a_panic() {
        let m = &plain_messages()[1];
        let encoded = encode_message(m).unwrap();
        // version, topic "t/", payload [1], QoS 1, retain, no extras, publisher "p"
        assert_eq!(
            encoded,
            [
                ENCODING_VERSION,
                2,
                b't',
                b'/',
                1,
                1,
                1,
                1,
                0,
                0,
                0,
                0,
                0,
                0,
                1,
                1,
                b'p'
            ]
        );
        for cut in 0..encoded.len() {
            assert!(decode_message(&encoded[..cut]).is_err(), "cut at {cut}");
        }
        // retain, an extra, the publisher flag; a length past the end; a QoS out of range;
        // a topic that is not UTF-8
        for (at, byte) in [(7, 2), (10, 2), (14, 2), (15, 9), (6, 3), (2, 0xff)] {
            let mut damaged = encoded.clone();
            damaged[at] = byte;
            assert!(decode_message(&damaged).is_err(), "byte {at} set to {byte}");
        }
    }

    #[test]
    fn foreign_or_damaged_values_are_errors() {
        let mut bytes = encode_message(&message()).expect("encode");
        assert!(matches!(decode_message(&[]), Err(DecodeError::Empty)));
        bytes[0] = 9;
        assert!(matches!(
            decode_message(&bytes),
            Err(DecodeError::Version(9))
        ));
        bytes[0] = ENCODING_VERSION;
        bytes.truncate(bytes.len() / 2);
        assert!(matches!(
            decode_message(&bytes),
            Err(DecodeError::Format(_))
        ));
        // A queued message whose QoS byte is out of range.
        let mut q = encode_options(&SubscriptionOptions {
            qos: QoS::AtMostOnce,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainForwardRule::OnEverySubscribe,
            identifier: None,
        })
        .expect("encode");
        q[1] = 3;
        assert!(matches!(
            decode_options(&q),
            Err(DecodeError::Field { field: "qos", .. })
        ));
    }
}
