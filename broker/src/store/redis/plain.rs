//! The common message, one without properties or expiry, written and read without serde.
//!
//! Every relayed message is encoded on one node and decoded on another; going through serde's
//! generic machinery cost more than the rest of relaying it. These functions produce and accept
//! exactly the bytes postcard writes for such a message (the tests hold them to it), so the
//! value format does not change: anything else — properties, an expiry, a damaged value — goes
//! the general way.

/// What postcard writes for a message's properties and expiry when it has none: no payload
/// format indicator, content type, response topic or correlation data, no user properties, no
/// expiry.
const NO_EXTRAS: [u8; 6] = [0; 6];

/// The fields of a plain message, borrowed from its encoding.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct PlainMessage<'a> {
    pub(super) topic: &'a str,
    pub(super) payload: &'a [u8],
    pub(super) qos: u8,
    pub(super) retain: bool,
    pub(super) publisher: Option<&'a str>,
}

/// Appends the postcard encoding of a plain message (after the version byte).
pub(super) fn encode(message: &PlainMessage<'_>, out: &mut Vec<u8>) {
    put_bytes(out, message.topic.as_bytes());
    put_bytes(out, message.payload);
    out.push(message.qos);
    out.push(u8::from(message.retain));
    out.extend_from_slice(&NO_EXTRAS);
    match message.publisher {
        None => out.push(0),
        Some(publisher) => {
            out.push(1);
            put_bytes(out, publisher.as_bytes());
        }
    }
}

/// Reads a plain message from a postcard encoding (after the version byte); `None` if it is not
/// one, or not a well-formed one (the general decoder then reads it, or reports why it cannot).
pub(super) fn decode(mut bytes: &[u8]) -> Option<PlainMessage<'_>> {
    let topic = std::str::from_utf8(take_bytes(&mut bytes)?).ok()?;
    let payload = take_bytes(&mut bytes)?;
    let (&[qos, retain], rest) = bytes.split_first_chunk::<2>()?;
    let retain = match retain {
        0 => false,
        1 => true,
        _ => return None,
    };
    let (extras, rest) = rest.split_first_chunk::<6>()?;
    if *extras != NO_EXTRAS {
        return None;
    }
    let (&has_publisher, mut rest) = rest.split_first()?;
    let publisher = match has_publisher {
        0 => None,
        1 => Some(std::str::from_utf8(take_bytes(&mut rest)?).ok()?),
        _ => return None,
    };
    Some(PlainMessage {
        topic,
        payload,
        qos,
        retain,
        publisher,
    })
}

/// Appends a length-prefixed byte string as postcard does: the length as a varint (7 bits a
/// byte, low bits first, high bit set on all but the last byte).
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut len = bytes.len();
    while len >= 0x80 {
        out.push((len as u8) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(bytes);
}

/// Takes a byte string written by [`put_bytes`] off the front of `bytes`.
fn take_bytes<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
    let mut len: usize = 0;
    // A usize varint has at most 10 bytes; postcard refuses anything that overflows.
    for (index, &byte) in bytes.iter().enumerate().take(10) {
        let bits = usize::from(byte & 0x7f).checked_shl(7 * index as u32)?;
        if bits >> (7 * index) != usize::from(byte & 0x7f) {
            return None;
        }
        len |= bits;
        if byte & 0x80 == 0 {
            let rest = &bytes[index + 1..];
            if rest.len() < len {
                return None;
            }
            let (taken, rest) = rest.split_at(len);
            *bytes = rest;
            return Some(taken);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_take_as_many_varint_bytes_as_they_need() {
        for (len, prefix) in [
            (0, vec![0]),
            (127, vec![127]),
            (128, vec![0x80, 1]),
            (300, vec![0xac, 2]),
            (16_384, vec![0x80, 0x80, 1]),
        ] {
            let bytes = vec![b'x'; len];
            let mut out = Vec::new();
            put_bytes(&mut out, &bytes);
            assert_eq!(out[..prefix.len()], prefix[..], "length {len}");
            let mut read = &out[..];
            assert_eq!(take_bytes(&mut read), Some(&bytes[..]));
            assert!(read.is_empty());
        }
    }

    #[test]
    fn a_length_that_overflows_or_runs_past_the_end_is_not_read() {
        assert_eq!(take_bytes(&mut &[0xff; 11][..]), None);
        assert_eq!(
            take_bytes(&mut &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f][..]),
            None
        );
        assert_eq!(take_bytes(&mut &[3, b'a', b'b'][..]), None);
        assert_eq!(take_bytes(&mut &[][..]), None);
    }
}
