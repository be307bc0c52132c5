//! Why bytes from a client could not be turned into a packet, and the reason code each cause
//! closes the connection with.

use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;

/// Why bytes from a client could not be turned into a packet. Each maps to one MQTT 5 reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes do not form a valid packet (reason code 0x81).
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// A valid packet that is not allowed here (reason code 0x82).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The packet is larger than the broker accepts (reason code 0x95).
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    TooLarge {
        /// Size announced by the fixed header.
        size: usize,
        /// The limit.
        max: u32,
    },
    /// CONNECT with a protocol level the broker does not speak (CONNACK 0x84 / return code 1).
    #[error("unsupported protocol level {0}")]
    UnsupportedVersion(u8),
}

impl DecodeError {
    /// The MQTT 5 DISCONNECT reason code for this error.
    pub fn reason_code(&self) -> DisconnectReasonCode {
        match self {
            DecodeError::Malformed(_) => DisconnectReasonCode::MalformedPacket,
            DecodeError::Protocol(_) => DisconnectReasonCode::ProtocolError,
            DecodeError::TooLarge { .. } => DisconnectReasonCode::PacketTooLarge,
            DecodeError::UnsupportedVersion(_) => DisconnectReasonCode::ProtocolError,
        }
    }
}
