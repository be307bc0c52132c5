//! Decoding bytes into packets and encoding packets into bytes, for every protocol version.

use super::decode_error::DecodeError;
use super::frame::{self, FrameError, PacketKind};
use super::{v4, ProtocolVersion};
use bytes::{BufMut, BytesMut};
use rumqttc::mqttbytes::v4 as wire4;
use rumqttc::v5::mqttbytes::v5::{
    Connect, Disconnect, DisconnectReasonCode, LastWill, Login, Packet,
};

fn malformed(e: impl std::fmt::Display) -> DecodeError {
    DecodeError::Malformed(e.to_string())
}

/// A decoded CONNECT packet with the version it was sent in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectPacket {
    /// The client's protocol version.
    pub version: ProtocolVersion,
    /// Client id, keep-alive, clean start and (v5) properties.
    pub connect: Connect,
    /// The will message, if any.
    pub will: Option<LastWill>,
    /// Username and password, if any.
    pub login: Option<Login>,
}

/// Reads a complete fixed header and checks its size, or returns `None` when more bytes are needed.
fn frame(buf: &BytesMut, max: u32) -> Result<Option<frame::FixedHeader>, DecodeError> {
    let header = match frame::parse(buf) {
        Ok(header) => header,
        Err(FrameError::Incomplete) => return Ok(None),
        Err(FrameError::BadRemainingLength) => {
            return Err(malformed("remaining length longer than four bytes"))
        }
        Err(FrameError::ReservedType) => return Err(malformed("reserved packet type 0")),
        Err(FrameError::BadFlags(kind, flags)) => {
            return Err(malformed(format!(
                "invalid flags {flags:#06b} for {kind:?}"
            )))
        }
    };
    if header.frame_len() > max as usize {
        return Err(DecodeError::TooLarge {
            size: header.frame_len(),
            max,
        });
    }
    if buf.len() < header.frame_len() {
        return Ok(None);
    }
    Ok(Some(header))
}

/// Decodes the first packet of a connection, which must be a CONNECT.
///
/// Returns `Ok(None)` while the packet is incomplete. MQTT 3.1 (`MQIsdp`) is accepted by
/// rewriting its header into the 3.1.1 form, which is otherwise identical.
pub fn decode_connect(buf: &mut BytesMut, max: u32) -> Result<Option<ConnectPacket>, DecodeError> {
    let Some(header) = frame(buf, max)? else {
        return Ok(None);
    };
    if header.kind != PacketKind::Connect {
        return Err(DecodeError::Protocol(format!(
            "the first packet must be CONNECT, got {:?}",
            header.kind
        )));
    }
    let body = &buf[header.header_len..header.frame_len()];
    let name_len = match body {
        [hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
        _ => return Err(malformed("CONNECT too short for a protocol name")),
    };
    let Some(name) = body.get(2..2 + name_len) else {
        return Err(malformed("CONNECT protocol name runs past the packet"));
    };
    let (Some(&level), Some(&flags)) = (body.get(2 + name_len), body.get(3 + name_len)) else {
        return Err(malformed("CONNECT too short for level and flags"));
    };
    let version = match (name, level) {
        (b"MQTT", 4) => ProtocolVersion::V3_1_1,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQIsdp", 3) => ProtocolVersion::V3_1,
        (b"MQTT", other) | (b"MQIsdp", other) => {
            return Err(DecodeError::UnsupportedVersion(other))
        }
        _ => {
            return Err(DecodeError::Protocol(
                "protocol name is neither MQTT nor MQIsdp".into(),
            ))
        }
    };
    if flags & 0x01 != 0 {
        return Err(malformed("CONNECT reserved flag is set"));
    }
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    if will_qos == 3 || (!will_flag && (will_qos != 0 || flags & 0x20 != 0)) {
        return Err(malformed("CONNECT will QoS/retain flags are inconsistent"));
    }
    if version != ProtocolVersion::V5 && flags & 0x40 != 0 && flags & 0x80 == 0 {
        return Err(malformed("password flag set without user name flag"));
    }

    let mut frame_bytes = buf.split_to(header.frame_len());
    if version == ProtocolVersion::V3_1 {
        frame_bytes = rewrite_v31_header(&frame_bytes[header.header_len..]);
    }
    let packet = match version {
        ProtocolVersion::V5 => match Packet::read(&mut frame_bytes, None).map_err(malformed)? {
            Packet::Connect(connect, will, login) => ConnectPacket {
                version,
                connect,
                will,
                login,
            },
            _ => return Err(malformed("CONNECT decoded as another packet")),
        },
        _ => match wire4::Packet::read(&mut frame_bytes, usize::MAX).map_err(malformed)? {
            wire4::Packet::Connect(connect) => {
                let (connect, will, login) = v4::connect_to_v5(connect);
                ConnectPacket {
                    version,
                    connect,
                    will,
                    login,
                }
            }
            _ => return Err(malformed("CONNECT decoded as another packet")),
        },
    };
    Ok(Some(packet))
}

/// Turns the body of an MQTT 3.1 CONNECT into a complete MQTT 3.1.1 CONNECT frame.
fn rewrite_v31_header(body: &[u8]) -> BytesMut {
    // Body starts with 0x00 0x06 "MQIsdp" 0x03; replace those 9 bytes with 0x00 0x04 "MQTT" 0x04.
    let rest = &body[9..];
    let remaining = 7 + rest.len();
    let mut out = BytesMut::with_capacity(remaining + 5);
    out.put_u8(0x10);
    let mut len = remaining;
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            break;
        }
    }
    out.put_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04]);
    out.put_slice(rest);
    out
}

/// Decodes one packet sent by a connected client, or returns `Ok(None)` while it is incomplete.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max: u32,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = frame(buf, max)? else {
        return Ok(None);
    };
    match header.kind {
        PacketKind::Connect => {
            return Err(DecodeError::Protocol(
                "second CONNECT on a connection".into(),
            ))
        }
        PacketKind::ConnAck | PacketKind::SubAck | PacketKind::UnsubAck | PacketKind::PingResp => {
            return Err(DecodeError::Protocol(format!(
                "{:?} is sent by servers only",
                header.kind
            )))
        }
        PacketKind::Auth if !version.is_v5() => {
            return Err(malformed("AUTH does not exist before MQTT 5"))
        }
        _ => {}
    }
    if version.is_v5() {
        if header.remaining_len == 0 {
            let _ = buf.split_to(header.frame_len());
            return match header.kind {
                PacketKind::Disconnect => Ok(Some(Packet::Disconnect(Disconnect::new(
                    DisconnectReasonCode::NormalDisconnection,
                )))),
                PacketKind::PingReq => {
                    Ok(Some(Packet::PingReq(rumqttc::v5::mqttbytes::v5::PingReq)))
                }
                kind => Err(malformed(format!("{kind:?} without a body"))),
            };
        }
        if header.kind == PacketKind::Disconnect && header.remaining_len == 1 {
            // Reason code only, which rumqttc's decoder refuses (it expects a property length).
            let frame = buf.split_to(header.frame_len());
            let reason = DisconnectReasonCode::try_from(frame[header.header_len]);
            return Ok(Some(Packet::Disconnect(Disconnect::new(
                reason.map_err(malformed)?,
            ))));
        }
        use rumqttc::v5::mqttbytes::Error as E5;
        match Packet::read(buf, None) {
            Ok(Packet::Unsubscribe(u)) if u.filters.is_empty() => Err(DecodeError::Protocol(
                "UNSUBSCRIBE without topic filters".into(),
            )),
            Ok(packet) => Ok(Some(packet)),
            // Well-formed bytes that break a rule: protocol errors (0x82), not malformed (0x81).
            Err(e @ (E5::EmptySubscription | E5::PacketIdZero)) => {
                Err(DecodeError::Protocol(e.to_string()))
            }
            Err(e) => Err(malformed(e)),
        }
    } else {
        let packet = wire4::Packet::read(buf, usize::MAX).map_err(malformed)?;
        if matches!(&packet, wire4::Packet::Unsubscribe(u) if u.topics.is_empty()) {
            return Err(DecodeError::Protocol(
                "UNSUBSCRIBE without topic filters".into(),
            ));
        }
        v4::incoming_to_v5(packet).map(Some)
    }
}

/// Why a packet could not be encoded for a client.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The packet exceeds the client's maximum packet size; it must be dropped, not sent.
    #[error("packet exceeds the client's maximum packet size")]
    TooLarge,
    /// The packet has no form in the client's protocol version (e.g. DISCONNECT in 3.1.1).
    #[error("packet cannot be sent to a {0} client")]
    NotInVersion(&'static str),
    /// The codec refused the packet.
    #[error("codec: {0}")]
    Codec(String),
}

/// Appends one packet to `buf` in the client's protocol version.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
    max: Option<u32>,
) -> Result<(), EncodeError> {
    if version.is_v5() {
        if let Some(max) = max {
            if packet.size() > max as usize {
                return Err(EncodeError::TooLarge);
            }
        }
        // rumqttc 0.25 mis-encodes a DISCONNECT with a reason code but no properties: without a
        // property block it writes a stray 0x00 after the packet, with an empty one it drops the
        // reason code (E0 00). Write reason code and empty property length ourselves.
        if let Packet::Disconnect(d) = packet {
            let empty = d.properties.as_ref().is_none_or(|p| {
                p.session_expiry_interval.is_none()
                    && p.reason_string.is_none()
                    && p.user_properties.is_empty()
                    && p.server_reference.is_none()
            });
            if empty && d.reason_code != DisconnectReasonCode::NormalDisconnection {
                buf.put_slice(&[0xE0, 0x02, d.reason_code as u8, 0x00]);
                return Ok(());
            }
        }
        packet
            .write(buf, None)
            .map(|_| ())
            .map_err(|e| EncodeError::Codec(e.to_string()))
    } else {
        let packet =
            v4::outgoing_to_v4(packet).ok_or(EncodeError::NotInVersion(version.label()))?;
        packet
            .write(buf, usize::MAX)
            .map(|_| ())
            .map_err(|e| EncodeError::Codec(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;

    fn v5_connect_bytes(client_id: &str) -> BytesMut {
        let connect = Connect {
            keep_alive: 30,
            client_id: client_id.into(),
            clean_start: true,
            properties: None,
        };
        let mut buf = BytesMut::new();
        Packet::Connect(connect, None, None)
            .write(&mut buf, None)
            .expect("encode");
        buf
    }

    #[test]
    fn decodes_v5_connect_in_pieces() {
        let full = v5_connect_bytes("abc");
        let mut buf = BytesMut::from(&full[..5]);
        assert_eq!(decode_connect(&mut buf, 1024), Ok(None));
        buf.extend_from_slice(&full[5..]);
        let packet = decode_connect(&mut buf, 1024)
            .expect("ok")
            .expect("complete");
        assert_eq!(packet.version, ProtocolVersion::V5);
        assert_eq!(packet.connect.client_id, "abc");
        assert!(buf.is_empty());
    }

    #[test]
    fn decodes_mqtt_3_1_connect() {
        // MQIsdp, level 3, clean session, keep alive 10, client id "c31".
        let body: &[u8] = &[
            0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x0a, 0x00, 0x03,
            b'c', b'3', b'1',
        ];
        let mut buf = BytesMut::new();
        buf.put_u8(0x10);
        buf.put_u8(body.len() as u8);
        buf.put_slice(body);
        let packet = decode_connect(&mut buf, 1024)
            .expect("ok")
            .expect("complete");
        assert_eq!(packet.version, ProtocolVersion::V3_1);
        assert_eq!(packet.connect.client_id, "c31");
        assert_eq!(packet.connect.keep_alive, 10);
        assert!(packet.connect.clean_start);
    }

    #[test]
    fn unknown_level_is_unsupported_version() {
        let mut buf = v5_connect_bytes("x");
        buf[8] = 6;
        assert_eq!(
            decode_connect(&mut buf, 1024),
            Err(DecodeError::UnsupportedVersion(6))
        );
    }

    #[test]
    fn reserved_connect_flag_is_malformed() {
        let mut buf = v5_connect_bytes("x");
        buf[9] |= 0x01;
        assert!(matches!(
            decode_connect(&mut buf, 1024),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn first_packet_must_be_connect() {
        let mut buf = BytesMut::from(&[0xc0u8, 0x00][..]);
        assert!(matches!(
            decode_connect(&mut buf, 1024),
            Err(DecodeError::Protocol(_))
        ));
    }

    #[test]
    fn oversized_packet_is_refused_before_it_arrives() {
        let mut buf = BytesMut::from(&[0x30u8, 0xff, 0xff, 0x03][..]);
        assert!(matches!(
            decode(&mut buf, ProtocolVersion::V5, 1024),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn v5_empty_disconnect_is_normal() {
        let mut buf = BytesMut::from(&[0xe0u8, 0x00][..]);
        let packet = decode(&mut buf, ProtocolVersion::V5, 1024)
            .expect("ok")
            .expect("packet");
        assert!(matches!(
            packet,
            Packet::Disconnect(Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
                ..
            })
        ));
    }

    #[test]
    fn v4_publish_round_trips_through_the_v5_model() {
        let mut buf = BytesMut::new();
        let mut publish =
            wire4::Publish::new("a/b", rumqttc::mqttbytes::QoS::AtLeastOnce, vec![1, 2]);
        publish.pkid = 7;
        wire4::Packet::Publish(publish)
            .write(&mut buf, usize::MAX)
            .expect("encode");
        let packet = decode(&mut buf, ProtocolVersion::V3_1_1, 1024)
            .expect("ok")
            .expect("packet");
        let Packet::Publish(p) = packet else {
            panic!("expected publish, got {packet:?}");
        };
        assert_eq!(
            (&p.topic[..], p.qos, p.pkid),
            (&b"a/b"[..], QoS::AtLeastOnce, 7)
        );
        let mut out = BytesMut::new();
        encode(&Packet::Publish(p), ProtocolVersion::V3_1_1, &mut out, None).expect("encode");
        let again = wire4::Packet::read(&mut out, usize::MAX).expect("decode");
        assert!(matches!(again, wire4::Packet::Publish(ref q) if q.topic == "a/b" && q.pkid == 7));
    }

    #[test]
    fn server_only_packets_are_protocol_errors() {
        let mut buf = BytesMut::from(&[0xd0u8, 0x00][..]);
        assert!(matches!(
            decode(&mut buf, ProtocolVersion::V3_1_1, 1024),
            Err(DecodeError::Protocol(_))
        ));
    }

    #[test]
    fn v5_disconnect_with_reason_encodes_a_consistent_length() {
        let mut buf = BytesMut::new();
        let packet = Packet::Disconnect(Disconnect::new(DisconnectReasonCode::ProtocolError));
        encode(&packet, ProtocolVersion::V5, &mut buf, None).expect("encode");
        assert_eq!(&buf[..], &[0xe0, 0x02, 0x82, 0x00]);
        let again = Packet::read(&mut buf, None).expect("decodes");
        assert_eq!(again, packet);
        assert!(buf.is_empty());
    }

    #[test]
    fn v5_disconnect_with_reason_code_only_decodes() {
        let mut buf = BytesMut::from(&[0xe0u8, 0x01, 0x04][..]);
        let packet = decode(&mut buf, ProtocolVersion::V5, 1024)
            .expect("ok")
            .expect("packet");
        assert_eq!(
            packet,
            Packet::Disconnect(Disconnect::new(
                DisconnectReasonCode::DisconnectWithWillMessage
            ))
        );
        assert!(buf.is_empty());
        let mut bad = BytesMut::from(&[0xe0u8, 0x01, 0x05][..]);
        assert!(matches!(
            decode(&mut bad, ProtocolVersion::V5, 1024),
            Err(DecodeError::Malformed(_))
        ));
    }
}
