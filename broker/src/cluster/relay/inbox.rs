//! Reading this node's inbox stream: relayed messages are delivered to local subscribers only
//! (never relayed again), control entries are handled.
//!
//! Two tasks share the work. The *fetcher* issues the next `XREAD` as soon as a reply arrives,
//! and hands each reply to the *deliverer*, so Redis answers the next read while this node
//! delivers the last one, instead of each waiting for the other. At most [`READS_AHEAD`] replies
//! wait between them. The deliverer reports its progress (for the other nodes' writers, see
//! [`crate::cluster::unread`]) and deletes what it handled, both through this node's relay writer.

use super::relayed::ReadBatch;
use super::{ClusterLink, FIELD_RESENT, KIND_DIRECT};
use crate::cluster::health;
use crate::cluster::local::LocalBroker;
use crate::cluster::packed;
use crate::cluster::unread::parse_stream_id;
use crate::mailbox::Arrival;
use crate::store::redis::codec;
use crate::store::redis::target::RedisTarget;
use redis::aio::MultiplexedConnection;
use redis::Value;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How long one XREAD waits for new entries before it is issued again.
const INBOX_BLOCK: Duration = Duration::from_secs(1);
/// Entries one XREAD returns at most.
const READ_COUNT: usize = 4096;
/// Replies fetched and not yet taken by the deliverer.
const READS_AHEAD: usize = 1;

/// A field of an inbox entry: name and value.
pub(in crate::cluster) type EntryField = (Vec<u8>, Vec<u8>);

/// An inbox entry: id and fields.
pub(in crate::cluster) type Entry = (String, Vec<EntryField>);

/// Where the fetcher is: the last entry id read, in the stream of which Redis epoch (see
/// [`health`]).
///
/// An entry id means something only in the stream it came from. A Redis that lost its data
/// (a new epoch) has a new stream, whose ids follow that server's clock: one running behind
/// the old server's would give the first new entries ids below the last one read, and an
/// XREAD from that id would skip them for good. So on every new connection the fetcher reads
/// the epoch, and reads a new epoch's stream from its start (all of it was written after the
/// loss).
struct Cursor {
    epoch_key: String,
    epoch: Option<String>,
    last_id: String,
}

impl Cursor {
    /// Checks, on a new connection, that the stream is the one `last_id` belongs to; if Redis
    /// lost its data since, reads the new stream from its start. A failed check changes
    /// nothing (the next read fails too, and connects again).
    async fn check_stream(&mut self, con: &mut MultiplexedConnection) {
        let epoch: redis::RedisResult<String> = redis::pipe()
            .cmd("SET")
            .arg(&self.epoch_key)
            .arg(health::fresh_epoch())
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(&self.epoch_key)
            .query_async::<(String,)>(con)
            .await
            .map(|(epoch,)| epoch);
        let Ok(epoch) = epoch else {
            return;
        };
        if self.epoch.as_deref().is_some_and(|known| known != epoch) {
            tracing::info!(
                last_id = %self.last_id,
                "redis lost its data: the inbox reader reads the new stream from its start"
            );
            self.last_id = "0-0".to_string();
        }
        self.epoch = Some(epoch);
    }
}

/// Starts reading `key`, this node's inbox, from `start_id` (exclusive) on `con`; the stream is
/// the one of Redis's epoch `epoch` (read at `epoch_key`).
pub(super) fn start_reading<B: LocalBroker>(
    link: Arc<ClusterLink>,
    target: RedisTarget,
    key: String,
    start_id: String,
    (epoch_key, epoch): (String, Option<String>),
    con: MultiplexedConnection,
    broker: Weak<B>,
) {
    let (replies, fetched) = mpsc::channel(READS_AHEAD);
    let reconnections = link.reconnections();
    let cursor = Cursor {
        epoch_key,
        epoch,
        last_id: start_id,
    };
    tokio::spawn(fetch(
        target,
        reconnections,
        key.clone(),
        cursor,
        con,
        broker.clone(),
        replies,
    ));
    tokio::spawn(deliver(link, key, broker, fetched));
}

/// Reads the inbox one XREAD after another, handing every non-empty reply to the deliverer.
/// Ends with the broker, or once the deliverer is gone.
async fn fetch<B: LocalBroker>(
    target: RedisTarget,
    mut reconnections: watch::Receiver<u64>,
    key: String,
    mut cursor: Cursor,
    mut con: MultiplexedConnection,
    broker: Weak<B>,
    replies: mpsc::Sender<Vec<Entry>>,
) {
    loop {
        let mut command = redis::cmd("XREAD");
        command
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(INBOX_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&key)
            .arg(&cursor.last_id);
        let read = command.query_async::<Value>(&mut con);
        let reply = tokio::select! {
            reply = read => reply,
            // Redis answers elsewhere on a new connection: this one may hang for good (a Redis
            // replaced behind the same address). A read is safe to give up: the next one asks
            // from the same id, on a new connection.
            Ok(()) = reconnections.changed() => {
                tracing::info!("redis answers on a new connection: the inbox reader reconnects");
                if let Ok(fresh) = inbox_connection(&target).await {
                    con = fresh;
                    cursor.check_stream(&mut con).await;
                }
                continue;
            }
        };
        match broker.upgrade() {
            Some(broker) if !broker.is_shutting_down() => {}
            _ => return,
        }
        match reply {
            Ok(value) => {
                let entries = stream_entries(value);
                let Some((id, _)) = entries.last() else {
                    continue;
                };
                cursor.last_id = id.clone();
                if replies.send(entries).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the relay inbox failed; reconnecting");
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Ok(fresh) = inbox_connection(&target).await {
                    con = fresh;
                    cursor.check_stream(&mut con).await;
                }
            }
        }
    }
}

/// Delivers what the fetcher read, in order: relayed messages to this node's subscribers only,
/// control entries to the link.
async fn deliver<B: LocalBroker>(
    link: Arc<ClusterLink>,
    key: String,
    broker: Weak<B>,
    mut fetched: mpsc::Receiver<Vec<Entry>>,
) {
    while let Some(entries) = fetched.recv().await {
        let Some(broker) = broker.upgrade() else {
            return;
        };
        if broker.is_shutting_down() {
            return;
        }
        let mut handled = Vec::with_capacity(entries.len());
        let mut relayed = ReadBatch::new(&*broker);
        for (id, fields) in entries {
            // An unreadable id (never from Redis) counts as appended long ago.
            let appended_ms = parse_stream_id(id.as_bytes()).map_or(0, |(ms, _)| ms);
            // Written again after a write whose outcome was unknown: maybe delivered already.
            let resent = entry_field(&fields, FIELD_RESENT.as_bytes()).is_some();
            let suspect = resent || link.is_suspect(appended_ms);
            handled.push(id);
            let field = |name: &[u8]| entry_field(&fields, name).map(<[u8]>::to_vec);
            if appended_ms != 0 {
                let lag_ms = link.redis_now_ms().saturating_sub(appended_ms);
                broker.metrics().relay_lag.observe(lag_ms as f64 / 1000.0);
            }
            match field(b"k") {
                None if suspect => {
                    relayed.wake_all();
                    for (message, groups) in decoded_records(&key, &fields) {
                        broker.metrics().relay_received.inc();
                        broker
                            .route_relayed(&message, &groups, Arrival::Suspect)
                            .await;
                    }
                }
                None => {
                    for record in relayed_records(&key, &fields) {
                        broker.metrics().relay_received.inc();
                        relayed.deliver(&key, record, appended_ms).await;
                    }
                }
                Some(kind) if kind == KIND_DIRECT => {
                    relayed.wake_all();
                    let client = field(b"c").and_then(|c| String::from_utf8(c).ok());
                    let queued = field(b"q").map(|q| codec::decode_queued(&q));
                    match (client, queued) {
                        (Some(client), Some(Ok(mut queued))) => {
                            queued.maybe_sent |= resent;
                            broker.deliver_direct(client.into(), queued).await
                        }
                        _ => {
                            tracing::warn!(stream = %key, "unreadable direct message skipped")
                        }
                    }
                }
                Some(kind) => {
                    relayed.wake_all();
                    link.on_control(&kind, &field, &broker)
                }
            }
        }
        relayed.wake_all();
        // After the journal writes of what was delivered (the writer keeps order), so a copy is
        // always in the inbox, the journal or the session's stored queue.
        link.inbox_handled(handled);
    }
}

/// The relayed publishes of an inbox entry, decoded whole, each with the share groups it serves
/// (for the paths that route them as a whole message rather than through a [`ReadBatch`]).
/// What cannot be read is logged (with `stream`) and left out.
pub(in crate::cluster) fn decoded_records(
    stream: &str,
    fields: &[EntryField],
) -> Vec<(Arc<crate::message::Message>, Vec<crate::router::GroupKey>)> {
    relayed_records(stream, fields)
        .into_iter()
        .filter_map(|record| match codec::decode_message(record.message) {
            Ok(message) => Some((
                Arc::new(message),
                packed::decode_groups(&String::from_utf8_lossy(record.groups)),
            )),
            Err(e) => {
                tracing::warn!(stream, error = %e, "unreadable relayed message skipped");
                None
            }
        })
        .collect()
}

/// A connection of its own for the inbox fetcher (XREAD BLOCK would hold up a shared one).
pub(super) async fn inbox_connection(
    target: &RedisTarget,
) -> redis::RedisResult<MultiplexedConnection> {
    // XREAD BLOCK answers after up to INBOX_BLOCK: the connection must wait longer than that.
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(INBOX_BLOCK + Duration::from_secs(5)));
    target
        .client()
        .await?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// The relayed publishes of an inbox entry, in order, as (encoded message, encoded share groups):
/// a packed entry (field [`packed::FIELD`]) holds many, an entry with fields `m` and `g` one.
/// What cannot be read is logged (with `stream`) and left out.
pub(super) fn relayed_records<'a>(
    stream: &str,
    fields: &'a [EntryField],
) -> Vec<packed::Record<'a>> {
    let field = |name: &[u8]| entry_field(fields, name);
    let Some(value) = field(packed::FIELD.as_bytes()) else {
        return match field(b"m") {
            Some(message) => vec![packed::Record {
                message,
                groups: field(b"g").unwrap_or_default(),
            }],
            None => {
                tracing::warn!(stream, "relayed entry without a message skipped");
                Vec::new()
            }
        };
    };
    let records = match packed::records(value) {
        Ok(records) => records,
        Err(e) => {
            tracing::warn!(stream, error = %e, "unreadable relayed messages skipped");
            return Vec::new();
        }
    };
    records
        .filter_map(|record| {
            record
                .map_err(|e| tracing::warn!(stream, error = %e, "rest of damaged relayed messages skipped"))
                .ok()
        })
        .collect()
}

/// The value of field `name` of an inbox entry.
pub(in crate::cluster) fn entry_field<'a>(
    fields: &'a [EntryField],
    name: &[u8],
) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(k, _)| k.as_slice() == name)
        .map(|(_, v)| v.as_slice())
}

/// Entries of an XREAD reply for one stream.
pub(in crate::cluster) fn stream_entries(value: Value) -> Vec<Entry> {
    let mut out = Vec::new();
    let Value::Array(streams) = value else {
        return out;
    };
    for stream in streams {
        let Value::Array(parts) = stream else {
            continue;
        };
        let Some(Value::Array(entries)) = parts.into_iter().nth(1) else {
            continue;
        };
        for entry in entries {
            let Value::Array(mut parts) = entry else {
                continue;
            };
            if parts.len() != 2 {
                continue;
            }
            let Some(Value::Array(kv)) = parts.pop() else {
                continue;
            };
            let id = match parts.pop() {
                Some(Value::BulkString(id)) => String::from_utf8_lossy(&id).into_owned(),
                Some(Value::SimpleString(id)) => id,
                _ => continue,
            };
            let mut fields = Vec::with_capacity(kv.len() / 2);
            let mut kv = kv.into_iter();
            while let (Some(Value::BulkString(k)), Some(Value::BulkString(v))) =
                (kv.next(), kv.next())
            {
                fields.push((k, v));
            }
            out.push((id, fields));
        }
    }
    out
}
