//! The binary encoding of the values a [`RedisStore`](super::RedisStore) keeps: one version byte,
//! then the value in [postcard](https://docs.rs/postcard) (a compact serde format: varint integers,
//! length-prefixed strings and byte strings, fields in declaration order, no field names).
//!
//! The structures in `codec/wire.rs` mirror the broker's own types field by field, so that the
//! wire format only changes when this module does. Any change that an older node cannot read must
//! bump [`ENCODING_VERSION`] (and the key schema version in the key names, see
//! `docs/redis-schema.md`).

mod wire;

use super::plain;
use crate::message::Message;
use crate::protocol::RetainForwardRule;
use crate::router::SubscriptionOptions;
use crate::store::{InflightMessage, InflightState, QueuedMessage, StoredWill};
use serde::Serialize;
use std::sync::Arc;
use wire::{
    message_from_wire, message_from_wire_named, message_to_wire, qos, queued_from_wire,
    queued_to_wire, WireBytes, WireInflight, WireMessage, WireOptions, WireProperties, WireWill,
};

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
mod tests;
