//! The MQTT wire protocol: framing, decoding and encoding of 3.1, 3.1.1 and 5.0 packets, and the
//! server-side validation the specification requires on top of the codec.
//!
//! Packets are decoded with rumqttc's public codecs. The broker works with one packet model, the
//! MQTT 5 one (a superset of 3.1.1): 3.1.1 packets are converted on the way in and out, so nothing
//! above this module needs to know which version a client speaks, except where behaviour differs.

mod codec;
mod decode_error;
mod frame;
pub mod topic;
mod v4;

pub use codec::{decode, decode_connect, encode, ConnectPacket, EncodeError};
pub use decode_error::DecodeError;
pub use frame::{FixedHeader, PacketKind};

/// The MQTT 5 packet types the broker works with.
pub use rumqttc::v5::mqttbytes::v5::*;
/// Quality of service.
pub use rumqttc::v5::mqttbytes::QoS;

/// The protocol version a client connected with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1 (`MQIsdp`, level 3).
    V3_1,
    /// MQTT 3.1.1 (level 4).
    V3_1_1,
    /// MQTT 5.0 (level 5).
    V5,
}

impl ProtocolVersion {
    /// Whether this is MQTT 5, which has reason codes and properties.
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }

    /// A short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            ProtocolVersion::V3_1 => "3.1",
            ProtocolVersion::V3_1_1 => "3.1.1",
            ProtocolVersion::V5 => "5.0",
        }
    }
}

/// The lower of two QoS levels.
pub fn qos_min(a: QoS, b: QoS) -> QoS {
    if (b as u8) < (a as u8) {
        b
    } else {
        a
    }
}

/// The higher of two QoS levels.
pub fn qos_max(a: QoS, b: QoS) -> QoS {
    if (b as u8) > (a as u8) {
        b
    } else {
        a
    }
}

/// Converts a QoS number into a [`QoS`].
pub fn qos_from_u8(value: u8) -> Option<QoS> {
    match value {
        0 => Some(QoS::AtMostOnce),
        1 => Some(QoS::AtLeastOnce),
        2 => Some(QoS::ExactlyOnce),
        _ => None,
    }
}
