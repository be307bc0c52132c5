//! The delivery journal: how a QoS 1/2 copy for a persistent session survives the death of the
//! node that holds it only in memory.
//!
//! When a node hands a QoS 1/2 message to a persistent session connected to it (or resumes such a
//! session's queue from the store), it records the copy in the Redis hash
//! `<prefix>v1:journal:<node>`, field `<run>.<seq>`, and deletes the field once the copy is done
//! with: acknowledged by the client, stored back with the session when the connection ends, or
//! dropped. Both writes go through the relay's single writer, in order, and a publisher is only
//! acknowledged once the writer has confirmed everything queued before (see
//! [`super::relay::ClusterLink::barrier`]). When a node dies, the node that adopts its sessions
//! queues every copy still in its journal again, marked as possibly sent (DUP); a node restarting
//! under the same id does the same for its earlier runs ([`super::recovery`]).
//!
//! A [`JournalHold`](crate::store::journal_hold::JournalHold) travels with the copy ([`crate::store::QueuedMessage::journal`]): clones
//! share it, and the field is deleted when the last of them is dropped (through
//! [`JournalRelease`], which the link implements; the store knows nothing of the cluster).
//!
//! The copies a session's claim moves out of the store into the connection (its in-flight and
//! queued messages) are journalled by the claim's own script, in the same atomic step: the
//! connection gets a [`JournalReservation`] ([`reservation`]; fields `<run>.<seq>.<index>`, one `seq` per claim)
//! and only attaches the holds. A node killed right after a claim so loses none of them.

use crate::message::ClientId;
use crate::store::journal_hold::{JournalRelease, JournalReservation};
use crate::store::redis::codec::{self, DecodeError};
use crate::store::QueuedMessage;
use std::sync::Weak;

/// The fields of journal hash `key` reserved for the copies claim `seq` of run `run` moves out of
/// the store for `client_id`: `<run>.<seq>.<index>`, deleted through `owner`.
pub fn reservation(
    key: String,
    run: u64,
    seq: u64,
    client_id: &str,
    owner: Weak<dyn JournalRelease>,
) -> JournalReservation {
    JournalReservation::new(key, format!("{run}.{seq}."), value_prefix(client_id), owner)
}

/// The journal field of copy `seq` of run `run` of a node.
pub fn field(run: u64, seq: u64) -> String {
    format!("{run}.{seq}")
}

/// Where a journal field puts its copy among the others: run, sequence number, and the index
/// within a claim's reservation (0 for a copy journalled alone).
pub type FieldOrder = (u64, u64, u64);

/// The [`FieldOrder`] of a journal field, for putting recovered copies back in order.
pub fn parse_field(field: &str) -> Option<FieldOrder> {
    let mut parts = field.split('.');
    let run = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let index = match parts.next() {
        Some(index) => index.parse().ok()?,
        None => 0,
    };
    parts.next().is_none().then_some((run, seq, index))
}

/// Why a journal value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Shorter than its client id length says.
    #[error("journal value truncated")]
    Truncated,
    /// The client id is not UTF-8.
    #[error("journal client id is not UTF-8")]
    ClientId,
    /// The copy itself could not be decoded.
    #[error("journal copy: {0}")]
    Copy(#[from] DecodeError),
}

/// A journal value: the client id's length (2 bytes, big-endian), the client id, and the copy as
/// the store encodes queued messages.
pub fn encode_value(client_id: &str, queued: &QueuedMessage) -> Result<Vec<u8>, postcard::Error> {
    let copy = codec::encode_queued(queued)?;
    let mut value = Vec::with_capacity(2 + client_id.len() + copy.len());
    push_value_prefix(&mut value, client_id);
    value.extend_from_slice(&copy);
    Ok(value)
}

/// The start of a journal value: the client id with its length.
fn value_prefix(client_id: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(2 + client_id.len());
    push_value_prefix(&mut prefix, client_id);
    prefix
}

fn push_value_prefix(out: &mut Vec<u8>, client_id: &str) {
    let id = client_id.as_bytes();
    // MQTT client ids are at most 65,535 bytes (a UTF-8 string field).
    let len = u16::try_from(id.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&id[..usize::from(len)]);
}

/// Reads a value written by [`encode_value`].
pub fn decode_value(value: &[u8]) -> Result<(ClientId, QueuedMessage), JournalError> {
    let (len, rest) = value.split_at_checked(2).ok_or(JournalError::Truncated)?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let (id, copy) = rest.split_at_checked(len).ok_or(JournalError::Truncated)?;
    let id = std::str::from_utf8(id).map_err(|_| JournalError::ClientId)?;
    Ok((id.into(), codec::decode_queued(copy)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;

    #[test]
    fn a_value_round_trips_with_its_client_and_dup_mark() {
        let mut copy = crate::store::test_queued("hello", QoS::AtLeastOnce);
        copy.maybe_sent = true;
        let value = encode_value("sensor-7", &copy).expect("encode");
        let (client, decoded) = decode_value(&value).expect("decode");
        assert_eq!(&*client, "sensor-7");
        assert_eq!(decoded, copy);
        assert!(decoded.maybe_sent);
    }

    #[test]
    fn malformed_values_are_errors() {
        assert!(matches!(decode_value(&[]), Err(JournalError::Truncated)));
        assert!(matches!(
            decode_value(&[0, 9, b'a']),
            Err(JournalError::Truncated)
        ));
        assert!(matches!(
            decode_value(&[0, 1, 0xff, 2]),
            Err(JournalError::ClientId)
        ));
        assert!(matches!(
            decode_value(&[0, 1, b'a', 2, 0xff]),
            Err(JournalError::Copy(_))
        ));
    }

    #[test]
    fn fields_sort_by_run_then_sequence() {
        let claimed = |seq, index| format!("{}{index}", reservation_of(1, seq).field_prefix());
        let mut fields = [
            field(2, 1),
            claimed(9, 10),
            field(1, 10),
            claimed(9, 2),
            field(1, 8),
        ];
        fields.sort_by_key(|f| parse_field(f));
        assert_eq!(
            fields,
            [
                field(1, 8),
                claimed(9, 2),
                claimed(9, 10),
                field(1, 10),
                field(2, 1)
            ]
        );
        assert_eq!(parse_field("1.9.2"), Some((1, 9, 2)));
        for bad in ["x.1", "12", "1.2.x", "1.2.3.4", "1..2"] {
            assert_eq!(parse_field(bad), None, "{bad}");
        }
    }

    /// Releases nothing (the reservation's owner is gone).
    struct Gone;

    impl JournalRelease for Gone {
        fn release_journal(&self, _: String) {}
    }

    fn reservation_of(run: u64, seq: u64) -> JournalReservation {
        let owner: Weak<dyn JournalRelease> = Weak::<Gone>::new();
        reservation("journal".into(), run, seq, "sensor-7", owner)
    }

    #[test]
    fn a_reservation_holds_only_qos_1_and_2_copies() {
        let reservation = reservation_of(5, 3);
        assert_eq!(reservation.field_prefix(), "5.3.");
        assert_eq!(reservation.value_prefix(), b"\x00\x08sensor-7");
        let mut at_least_once = crate::store::test_queued("a", QoS::AtLeastOnce);
        reservation.attach(0, &mut at_least_once);
        assert_eq!(
            format!("{:?}", at_least_once.journal),
            "Some(JournalHold(5.3.0))"
        );
        let mut at_most_once = crate::store::test_queued("b", QoS::AtMostOnce);
        reservation.attach(1, &mut at_most_once);
        assert!(at_most_once.journal.is_none());
    }
}
