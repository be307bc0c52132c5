//! The packed form of relayed messages: many messages bound for one node in one inbox stream
//! entry, so that the writer, Redis and the reader pay one stream entry per batch rather than
//! one per message.
//!
//! An entry's field [`FIELD`] holds one format byte ([`FORMAT`]) and then, for each message in
//! the order it was published:
//!
//! | bytes | holds |
//! | --- | --- |
//! | 4 | length of the message, unsigned big-endian |
//! | n | the message, as `store::redis::codec::encode_message` writes it |
//! | 4 | length of the share groups, unsigned big-endian |
//! | n | the share groups the receiving node serves (`group NUL filter` pairs joined by NUL; empty for none) |

use crate::router::GroupKey;
use std::ops::Range;

/// Name of the inbox entry field that holds packed messages.
pub const FIELD: &str = "b";
/// The format byte a packed value starts with; a new layout gets a new one.
pub const FORMAT: u8 = 1;

/// Why a packed value could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackedError {
    /// The value has no format byte.
    #[error("empty packed value")]
    Empty,
    /// The value was written in a format this node does not know.
    #[error("unknown packed format {0}")]
    Format(u8),
    /// A length runs past the end of the value.
    #[error("packed value truncated at byte {0}")]
    Truncated(usize),
    /// A part is too long for its 4-byte length.
    #[error("part of {0} bytes is too long to pack")]
    TooLong(usize),
    /// The message could not be encoded.
    #[error("encoding the message: {0}")]
    Encode(postcard::Error),
}

/// Builds one packed value, message by message.
#[derive(Debug)]
pub struct Packer {
    bytes: Vec<u8>,
    count: usize,
}

impl Default for Packer {
    fn default() -> Self {
        Self::new()
    }
}

impl Packer {
    /// An empty packed value (just the format byte).
    pub fn new() -> Self {
        Self {
            bytes: vec![FORMAT],
            count: 0,
        }
    }

    /// Appends an encoded message and the encoded share groups the receiver serves for it.
    pub fn push(&mut self, message: &[u8], groups: &[u8]) -> Result<(), PackedError> {
        self.push_with(
            |out| {
                out.extend_from_slice(message);
                Ok(())
            },
            groups,
        )
        .map(|_| ())
    }

    /// Appends a message that `encode` writes straight into the packed value (no copy of it in
    /// between), and the encoded share groups; returns where the message is in
    /// [`Self::as_bytes`]. On an error the value is left as it was.
    pub fn push_with(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), postcard::Error>,
        groups: &[u8],
    ) -> Result<Range<usize>, PackedError> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 4]);
        let written = encode(&mut self.bytes)
            .map_err(PackedError::Encode)
            .and_then(|()| part_len(&self.bytes[start + 4..]))
            .and_then(|message_len| Ok((message_len, part_len(groups)?)));
        let (message_len, groups_len) = match written {
            Ok(lens) => lens,
            Err(e) => {
                self.bytes.truncate(start);
                return Err(e);
            }
        };
        self.bytes[start..start + 4].copy_from_slice(&message_len);
        let message = start + 4..self.bytes.len();
        self.bytes.extend_from_slice(&groups_len);
        self.bytes.extend_from_slice(groups);
        self.count += 1;
        Ok(message)
    }

    /// Appends every message of `other`, after the ones this holds.
    pub fn append(&mut self, other: &Packer) {
        self.bytes.extend_from_slice(&other.bytes[1..]);
        self.count += other.count;
    }

    /// How many messages it holds.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Whether it holds no message.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The size of the packed value in bytes.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// The packed value.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Empties it for the next value, keeping its buffer.
    pub fn clear(&mut self) {
        self.bytes.truncate(1);
        self.count = 0;
    }
}

fn part_len(part: &[u8]) -> Result<[u8; 4], PackedError> {
    u32::try_from(part.len())
        .map(u32::to_be_bytes)
        .map_err(|_| PackedError::TooLong(part.len()))
}

/// One message read from a packed value, borrowed from it.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// The encoded message.
    pub message: &'a [u8],
    /// The encoded share groups (empty for none).
    pub groups: &'a [u8],
}

/// The messages of a packed value, in order. After a damaged record it yields that error once
/// and then ends.
#[derive(Debug)]
pub struct Records<'a> {
    rest: &'a [u8],
    offset: usize,
}

/// Starts reading a packed value: fails if it is empty or of an unknown format.
pub fn records(value: &[u8]) -> Result<Records<'_>, PackedError> {
    match value.split_first() {
        None => Err(PackedError::Empty),
        Some((&FORMAT, rest)) => Ok(Records { rest, offset: 1 }),
        Some((&other, _)) => Err(PackedError::Format(other)),
    }
}

impl<'a> Records<'a> {
    fn part(&mut self) -> Result<&'a [u8], PackedError> {
        let truncated = PackedError::Truncated(self.offset);
        let (len, rest) = self
            .rest
            .split_first_chunk::<4>()
            .ok_or(truncated.clone())?;
        let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| truncated.clone())?;
        if rest.len() < len {
            return Err(truncated);
        }
        let (part, rest) = rest.split_at(len);
        self.rest = rest;
        self.offset += 4 + len;
        Ok(part)
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, PackedError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let record = self.part().and_then(|message| {
            let groups = self.part()?;
            Ok(Record { message, groups })
        });
        if record.is_err() {
            self.rest = &[];
        }
        Some(record)
    }
}

/// Share groups as sent in an inbox entry: `group NUL filter` pairs joined by NUL (neither may
/// contain NUL).
pub fn encode_groups(groups: &[GroupKey]) -> String {
    let mut out = String::new();
    for (group, filter) in groups {
        if !out.is_empty() {
            out.push('\0');
        }
        out.push_str(group);
        out.push('\0');
        out.push_str(filter);
    }
    out
}

pub fn decode_groups(text: &str) -> Vec<GroupKey> {
    let parts: Vec<&str> = text.split('\0').collect();
    parts
        .chunks_exact(2)
        .map(|pair| (pair[0].to_string(), pair[1].to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_round_trip_through_an_inbox_field() {
        let groups = vec![
            ("g".to_string(), "a/+".to_string()),
            ("other".to_string(), "#".to_string()),
        ];
        assert_eq!(decode_groups(&encode_groups(&groups)), groups);
        assert!(decode_groups(&encode_groups(&[])).is_empty());
    }

    fn packed(records: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut packer = Packer::new();
        for (message, groups) in records {
            packer.push(message, groups).unwrap();
        }
        assert_eq!(packer.count(), records.len());
        packer.as_bytes().to_vec()
    }

    fn read(value: &[u8]) -> Vec<Result<Record<'_>, PackedError>> {
        records(value).unwrap().collect()
    }

    /// Every record of a value that must read without errors.
    fn read_all(value: &[u8]) -> Vec<Record<'_>> {
        read(value).into_iter().map(Result::unwrap).collect()
    }

    #[test]
    fn messages_come_back_in_order_with_their_groups() {
        let value = packed(&[(b"first", b""), (b"", b"g\0a/+"), (b"third", b"h\0#")]);
        let got = read_all(&value);
        assert_eq!(
            got,
            vec![
                Record {
                    message: b"first",
                    groups: b""
                },
                Record {
                    message: b"",
                    groups: b"g\0a/+"
                },
                Record {
                    message: b"third",
                    groups: b"h\0#"
                },
            ]
        );
    }

    #[test]
    fn a_message_encoded_in_place_reads_back_and_a_failed_one_leaves_no_trace() {
        let mut packer = Packer::new();
        packer.push(b"before", b"").unwrap();
        let failed = packer.push_with(
            |out| {
                out.extend_from_slice(b"half written");
                Err(postcard::Error::SerializeBufferFull)
            },
            b"",
        );
        assert_eq!(
            failed,
            Err(PackedError::Encode(postcard::Error::SerializeBufferFull))
        );
        packer
            .push_with(
                |out| {
                    out.extend_from_slice(b"in place");
                    Ok(())
                },
                b"g\0t",
            )
            .unwrap();
        assert_eq!(packer.count(), 2);
        let got = read_all(packer.as_bytes());
        assert_eq!(
            got,
            vec![
                Record {
                    message: b"before",
                    groups: b""
                },
                Record {
                    message: b"in place",
                    groups: b"g\0t"
                },
            ]
        );
    }

    #[test]
    fn an_empty_packer_is_just_the_format_byte_and_reads_as_nothing() {
        let packer = Packer::new();
        assert!(packer.is_empty());
        assert_eq!(packer.as_bytes(), &[FORMAT]);
        assert!(read(packer.as_bytes()).is_empty());
    }

    #[test]
    fn clearing_keeps_nothing_of_the_previous_value() {
        let mut packer = Packer::new();
        packer.push(b"old", b"g\0t").unwrap();
        packer.clear();
        assert!(packer.is_empty());
        packer.push(b"new", b"").unwrap();
        assert_eq!(packer.byte_len(), 1 + 4 + 3 + 4);
        let got = read_all(packer.as_bytes());
        assert_eq!(
            got,
            vec![Record {
                message: b"new",
                groups: b""
            }]
        );
    }

    #[test]
    fn a_value_without_a_known_format_byte_is_refused() {
        assert_eq!(records(b"").unwrap_err(), PackedError::Empty);
        assert_eq!(records(&[2, 0, 0]).unwrap_err(), PackedError::Format(2));
        // A single message as written before packing starts with the codec's version byte 1,
        // which is why packed values live in their own field.
        assert!(records(&[FORMAT]).is_ok());
    }

    #[test]
    fn every_truncation_of_a_value_is_an_error_after_the_intact_records_never_a_panic() {
        let value = packed(&[(b"one", b"g\0f"), (b"two", b"")]);
        let first_record_end = 1 + 4 + 3 + 4 + 3;
        for cut in (2..value.len()).filter(|&cut| cut != first_record_end) {
            let got = read(&value[..cut]);
            let intact = usize::from(cut >= first_record_end);
            assert_eq!(got.len(), intact + 1, "cut at {cut}");
            assert!(got[..intact].iter().all(Result::is_ok), "cut at {cut}");
            assert!(
                matches!(got[intact], Err(PackedError::Truncated(_))),
                "cut at {cut}: {:?}",
                got[intact]
            );
        }
        // Cut between records (or before the first): the intact ones, no error.
        assert!(read(&value[..1]).is_empty());
        let got = read(&value[..first_record_end]);
        assert_eq!(got.len(), 1);
        assert!(got[0].is_ok());
        assert!(read(&value).iter().all(Result::is_ok));
    }

    #[test]
    fn a_length_beyond_the_value_is_an_error() {
        let mut value = vec![FORMAT];
        value.extend_from_slice(&u32::MAX.to_be_bytes());
        value.extend_from_slice(b"short");
        assert_eq!(read(&value), vec![Err(PackedError::Truncated(1))]);

        let mut value = packed(&[(b"ok", b"")]);
        value.extend_from_slice(&[0, 0, 0, 1, b'x', 0, 0, 0, 9]);
        let got = read(&value);
        assert_eq!(got.len(), 2);
        assert!(got[0].is_ok());
        assert_eq!(got[1], Err(PackedError::Truncated(1 + 4 + 2 + 4 + 4 + 1)));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_reading_always_ends() {
        // A small deterministic generator is enough to cover odd lengths and contents.
        let mut state: u32 = 0x9e37_79b9;
        for _ in 0..2000 {
            let mut value = vec![FORMAT];
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let len = (state >> 24) as usize;
            for _ in 0..len {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                // Mostly small bytes, so that lengths often fit and records are read.
                value.push(((state >> 16) as u8) % 7);
            }
            let got = read(&value);
            assert!(got.len() <= value.len());
            assert!(got.iter().rev().skip(1).all(Result::is_ok));
        }
    }
}
