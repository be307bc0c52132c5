//! Arbitrary bytes through the broker's packet decoder, as the first packet of a connection
//! (CONNECT) and as the packets that follow it, for every protocol version. Whatever decodes is
//! encoded again, as the broker does with the packets it forwards. Nothing may panic.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use starling_broker::protocol::{decode, decode_connect, encode, ProtocolVersion};

/// The broker's default `limits.max_packet_size`.
const MAX_PACKET: u32 = 1024 * 1024;

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

/// Decodes packets from `buf` until it is used up, incomplete or refused.
fn decode_all(buf: &mut BytesMut, version: ProtocolVersion) {
    let mut out = BytesMut::new();
    // Every decoded packet consumes at least two bytes, so this bound is never the one that ends.
    for _ in 0..=buf.len() {
        match decode(buf, version, MAX_PACKET) {
            Ok(Some(packet)) => {
                out.clear();
                let _ = encode(&packet, version, &mut out, None);
            }
            Ok(None) | Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // As a connection: a CONNECT, then the rest in the version it chose.
    let mut buf = BytesMut::from(data);
    if let Ok(Some(connect)) = decode_connect(&mut buf, MAX_PACKET) {
        decode_all(&mut buf, connect.version);
    }
    // As packets after a CONNECT, in each version.
    for version in VERSIONS {
        let mut buf = BytesMut::from(data);
        decode_all(&mut buf, version);
    }
});
