//! Sessions as the scripts return them: the session hash, the subscriptions, the in-flight,
//! queue and QoS 2 lists, a stored will, and the detach scripts' answer codes.

use super::codec;
use super::reply::{array, bytes, decode_list, malformed, pairs};
use super::DecodeError;
use crate::store::journal_hold::JournalReservation;
use crate::store::{
    Detached, InflightMessage, QueuedMessage, StoreError, StoredSession, StoredSubscription,
    StoredWill,
};
use redis::Value;
use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The fields of a session hash.
#[derive(Default)]
pub(super) struct SessionHash {
    pub(super) online: bool,
    pub(super) node: Option<String>,
    pub(super) expiry_secs: Option<u32>,
    pub(super) disconnected_at: Option<SystemTime>,
}

impl SessionHash {
    /// Reads an HGETALL reply. Unknown fields are ignored; a field that does not parse is logged
    /// and left unset.
    pub(super) fn parse(client_id: &str, flat: Vec<Value>) -> Result<Self, StoreError> {
        let mut hash = SessionHash::default();
        for (name, value) in pairs(flat)? {
            let value = String::from_utf8_lossy(&value).into_owned();
            match name.as_slice() {
                b"state" => hash.online = value != "offline",
                b"node" => hash.node = Some(value),
                b"expiry" => match value.parse::<u32>() {
                    Ok(secs) => hash.expiry_secs = Some(secs),
                    Err(_) => tracing::warn!(client_id, value, "session expiry unreadable"),
                },
                b"disconnected_at" => match value.parse::<u64>() {
                    Ok(ms) => {
                        hash.disconnected_at = UNIX_EPOCH.checked_add(Duration::from_millis(ms))
                    }
                    Err(_) => tracing::warn!(client_id, value, "disconnect time unreadable"),
                },
                _ => {}
            }
        }
        Ok(hash)
    }
}

/// What a detach or remove script answered.
pub(super) fn detached(code: i64) -> Result<Detached, StoreError> {
    match code {
        1 => Ok(Detached::Stored),
        2 => Ok(Detached::HandedOver),
        3 => Ok(Detached::Fenced),
        other => Err(malformed(&format!("detach answered {other}"))),
    }
}

/// Builds a session from the parts the scripts return: the session hash, the subscriptions hash,
/// the in-flight, queue and incoming QoS 2 lists. With the claim's journal reservation, each
/// in-flight and queued copy takes charge of the field the script journalled it in.
pub(super) fn decode_session(
    client_id: &str,
    parts: Vec<Value>,
    journal: Option<&JournalReservation>,
) -> Result<StoredSession, StoreError> {
    let [hash, subs, inflight, queue, qos2]: [Value; 5] = parts
        .try_into()
        .map_err(|_| malformed("a session has five parts"))?;
    let hash = SessionHash::parse(client_id, array(hash)?)?;
    let subscriptions = decode_subscriptions(client_id, subs)?;
    let inflight = array(inflight)?;
    let queue_start = inflight.len();
    let journalled = |index: usize, copy: Option<&mut QueuedMessage>| {
        if let Some(journal) = journal {
            match copy {
                Some(copy) => journal.attach(index, copy),
                None => journal.release(index),
            }
        }
    };
    let inflight: Vec<InflightMessage> = decode_list(
        client_id,
        "in-flight message",
        inflight,
        codec::decode_inflight,
        |index, inflight| journalled(index, inflight.map(|m| &mut m.queued)),
    )?;
    let queue: VecDeque<QueuedMessage> = decode_list(
        client_id,
        "queued message",
        array(queue)?,
        codec::decode_queued,
        |index, queued| journalled(queue_start + index, queued),
    )?
    .into();
    let incoming_qos2 = decode_list(
        client_id,
        "QoS 2 packet id",
        array(qos2)?,
        |b| {
            std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
                .ok_or(DecodeError::Field {
                    field: "packet id",
                    value: 0,
                })
        },
        |_, _| {},
    )?;
    Ok(StoredSession {
        expiry_secs: hash.expiry_secs.unwrap_or(0),
        subscriptions,
        inflight,
        queue,
        incoming_qos2,
        disconnected_at: hash.disconnected_at,
    })
}

/// Reads a subscriptions hash (HGETALL), leaving out (and logging) entries that do not decode.
pub(super) fn decode_subscriptions(
    client_id: &str,
    subs: Value,
) -> Result<Vec<StoredSubscription>, StoreError> {
    let mut subscriptions = Vec::new();
    for (filter, options) in pairs(array(subs)?)? {
        let Ok(filter) = String::from_utf8(filter) else {
            tracing::warn!(client_id, "subscription filter is not UTF-8: dropped");
            continue;
        };
        match codec::decode_options(&options) {
            Ok(options) => subscriptions.push(StoredSubscription { filter, options }),
            Err(e) => tracing::warn!(client_id, filter, error = %e, "subscription dropped"),
        }
    }
    // A hash has no order: give the subscriptions the order a connection keeps them in.
    subscriptions.sort_by(|a, b| a.filter.cmp(&b.filter));
    Ok(subscriptions)
}

/// A will stored with a session, if it decodes (an undecodable one is logged and dropped).
pub(super) fn decode_stored_will(
    client_id: &str,
    value: Value,
) -> Result<Option<StoredWill>, StoreError> {
    let raw = bytes(value)?;
    if raw.is_empty() {
        return Ok(None);
    }
    match codec::decode_will(&raw) {
        Ok(will) => Ok(Some(will)),
        Err(e) => {
            tracing::warn!(client_id, error = %e, "stored will unreadable: dropped");
            Ok(None)
        }
    }
}
