//! The fixed header: packet type, flags and remaining length, checked before any decoding.

/// The control packet types, as numbered on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// CONNECT (1).
    Connect,
    /// CONNACK (2).
    ConnAck,
    /// PUBLISH (3).
    Publish,
    /// PUBACK (4).
    PubAck,
    /// PUBREC (5).
    PubRec,
    /// PUBREL (6).
    PubRel,
    /// PUBCOMP (7).
    PubComp,
    /// SUBSCRIBE (8).
    Subscribe,
    /// SUBACK (9).
    SubAck,
    /// UNSUBSCRIBE (10).
    Unsubscribe,
    /// UNSUBACK (11).
    UnsubAck,
    /// PINGREQ (12).
    PingReq,
    /// PINGRESP (13).
    PingResp,
    /// DISCONNECT (14).
    Disconnect,
    /// AUTH (15, MQTT 5 only).
    Auth,
}

/// A parsed fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// The packet type.
    pub kind: PacketKind,
    /// The low four bits of the first byte.
    pub flags: u8,
    /// Length of the fixed header itself (2 to 5 bytes).
    pub header_len: usize,
    /// Length of everything after the fixed header.
    pub remaining_len: usize,
}

impl FixedHeader {
    /// Total length of the packet on the wire.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// Why a fixed header is unacceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// More bytes are needed.
    Incomplete,
    /// The remaining length uses more than four bytes.
    BadRemainingLength,
    /// Packet type 0 is reserved.
    ReservedType,
    /// The flags are not those the specification fixes for this type.
    BadFlags(PacketKind, u8),
}

/// Parses and validates a fixed header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<FixedHeader, FrameError> {
    let Some(&byte1) = buf.first() else {
        return Err(FrameError::Incomplete);
    };
    let mut remaining_len = 0usize;
    let mut header_len = 1;
    let mut complete = false;
    for (i, byte) in buf[1..].iter().take(4).enumerate() {
        remaining_len |= usize::from(byte & 0x7f) << (7 * i);
        header_len += 1;
        if byte & 0x80 == 0 {
            complete = true;
            break;
        }
    }
    if !complete {
        return if buf.len() >= 5 {
            Err(FrameError::BadRemainingLength)
        } else {
            Err(FrameError::Incomplete)
        };
    }
    let flags = byte1 & 0x0f;
    let kind = match byte1 >> 4 {
        1 => PacketKind::Connect,
        2 => PacketKind::ConnAck,
        3 => PacketKind::Publish,
        4 => PacketKind::PubAck,
        5 => PacketKind::PubRec,
        6 => PacketKind::PubRel,
        7 => PacketKind::PubComp,
        8 => PacketKind::Subscribe,
        9 => PacketKind::SubAck,
        10 => PacketKind::Unsubscribe,
        11 => PacketKind::UnsubAck,
        12 => PacketKind::PingReq,
        13 => PacketKind::PingResp,
        14 => PacketKind::Disconnect,
        15 => PacketKind::Auth,
        _ => return Err(FrameError::ReservedType),
    };
    let flags_ok = match kind {
        PacketKind::Publish => {
            let qos = (flags >> 1) & 0b11;
            let dup = flags & 0b1000 != 0;
            qos != 3 && !(qos == 0 && dup)
        }
        PacketKind::PubRel | PacketKind::Subscribe | PacketKind::Unsubscribe => flags == 0b0010,
        _ => flags == 0,
    };
    if !flags_ok {
        return Err(FrameError::BadFlags(kind, flags));
    }
    Ok(FixedHeader {
        kind,
        flags,
        header_len,
        remaining_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_byte_remaining_length() {
        let header = parse(&[0x30, 0xc1, 0x02]).expect("header");
        assert_eq!(header.kind, PacketKind::Publish);
        assert_eq!(header.remaining_len, 321);
        assert_eq!(header.header_len, 3);
    }

    #[test]
    fn incomplete_until_length_ends() {
        assert_eq!(parse(&[0x30]), Err(FrameError::Incomplete));
        assert_eq!(parse(&[0x30, 0x80, 0x80]), Err(FrameError::Incomplete));
    }

    #[test]
    fn five_length_bytes_are_malformed() {
        assert_eq!(
            parse(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(FrameError::BadRemainingLength)
        );
    }

    #[test]
    fn fixed_flags_are_enforced() {
        assert!(matches!(
            parse(&[0x60, 0x02]),
            Err(FrameError::BadFlags(PacketKind::PubRel, 0))
        ));
        assert!(matches!(
            parse(&[0x80, 0x02]),
            Err(FrameError::BadFlags(PacketKind::Subscribe, 0))
        ));
        assert!(parse(&[0x62, 0x02]).is_ok());
        // QoS 3 and DUP on QoS 0 are malformed.
        assert!(parse(&[0x36, 0x02]).is_err());
        assert!(parse(&[0x38, 0x02]).is_err());
        assert_eq!(parse(&[0x00, 0x00]), Err(FrameError::ReservedType));
    }
}
