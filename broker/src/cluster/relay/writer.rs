//! The relay writer: the one task that writes this node's relay work to Redis, in order, in
//! pipelined batches: relayed messages packed per target node into their inboxes, entry
//! changes and their announcements, control entries, journal writes and deletions, and the
//! barriers acknowledgements wait on. It holds back while a target's reader lags (flow
//! control), writes a batch again on a new connection when its answer cannot come, and sends
//! only the refused commands again when Redis refuses some.
//!
//! Its parts: [`packs`] (batching relayed messages per target node into inbox entries),
//! [`flow`] (holding back for readers that lag), [`resend`] (writing a batch again, and what a
//! Redis that lost confirmed writes lost). A small batch in a steady stream lingers for more.

mod flow;
mod packs;
mod resend;

pub(in crate::cluster) use resend::FIELD_RESENT;

use super::{relay_error, ClusterLink, RelayError, KIND_DIRECT};
use crate::cluster::pending::PendingRelays;
use crate::cluster::refusals;
use crate::cluster::replication::Waited;
use crate::cluster::unread::parse_stream_id;
use crate::cluster::work_queue::WorkQueue;
use crate::router::remote::NodeId;
use crate::store::redis::renewing::RenewingConnection;
use crate::store::redis::target::RedisTarget;
use flow::Flow;
use packs::{inbox_append, Packs};
use redis::aio::ConnectionManagerConfig;
use redis::Value;
use resend::{append_unread_again, send_again, stranded};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::oneshot;

/// Work the writer gathers into one pipeline: relayed messages, and other items (see [`weight`]).
const WRITE_BATCH: usize = 4096;
/// Relayed messages waiting for the writer before publishers wait for room (see
/// [`ClusterLink::send_pending`]). Other writer work (entries, control entries, journal writes)
/// is not bounded here: what produces it is bounded elsewhere.
pub(super) const WRITE_QUEUE: usize = 65_536;
/// How long the writer waits for Redis to answer a batch before it writes the batch again. A
/// batch Redis applied but answered late would be written twice (relayed twice), so this is far
/// above any stall of a healthy Redis (the client's default is 500 ms); a Redis that went away
/// closes the connection and is noticed at once, and one that went silent for good is given up
/// [`resend::STRANDED_GRACE`] after the health check reached Redis on a new connection.
pub(super) const WRITE_RESPONSE_WAIT: Duration = Duration::from_secs(30);

pub(super) enum Outbound {
    Entry {
        raw: String,
        added: bool,
    },
    /// This node's listing marker: every entry queued before it is in Redis.
    Listed(String),
    /// The relayed messages of a publishing connection's burst, already packed per node by the
    /// connection; the writer appends them to each node's packed entry. Each holds a place in the bounded part of the queue (a
    /// permit of `forward_room`), given back once written.
    Relays(PendingRelays),
    /// A copy recorded in this node's delivery journal.
    Journal {
        field: String,
        value: Vec<u8>,
    },
    /// A journal field whose copy is done with.
    Unjournal(String),
    /// Deletes handled inbox entries (XDEL) or recovered journal fields (HDEL).
    Delete {
        command: &'static str,
        key: String,
        ids: Vec<String>,
    },
    /// Entries of this node's inbox it handled: deleted, and the last reported read.
    InboxHandled(Vec<String>),
    /// Answered once everything queued before it is in Redis.
    Barrier(oneshot::Sender<()>),
    Control {
        node: NodeId,
        fields: Vec<(&'static str, Vec<u8>)>,
    },
    /// A departed node's registration, removed unless a newer run than this one holds it.
    DropNode {
        node: NodeId,
        run: Option<u64>,
    },
}
/// Removes a departed run's registration (see the script's header).
const DROP_NODE: &str = include_str!("drop_node.lua");
/// The weight of a writer work item, for [`WRITE_BATCH`]: the messages it relays, at least 1.
fn weight(item: &Outbound) -> usize {
    match item {
        Outbound::Relays(relays) => relays.len().max(1),
        _ => 1,
    }
}

/// Whether a control entry with `fields` carries a message (one sent on for one session): it is
/// kept until read, to be appended again should Redis lose it.
fn carries_a_message(fields: &[(&'static str, Vec<u8>)]) -> bool {
    fields
        .iter()
        .any(|(name, value)| *name == "k" && value == KIND_DIRECT)
}

/// A batch of fewer relayed messages than this, in a steady stream, waits [`LINGER`] for more.
const LINGER_BELOW: usize = 32;
/// How long a small batch in a steady stream waits for more (see [`linger`]).
const LINGER: Duration = Duration::from_micros(500);

/// When messages arrive one by one in a steady stream (the last batch was taken moments ago)
/// and `batch` is small and has nobody waiting on it (no barrier: no acknowledgement waits),
/// waits [`LINGER`] and takes what arrived meanwhile: each batch costs this node, Redis and the
/// reading nodes a round of work, whatever it holds.
fn linger(
    queue: &WorkQueue<Outbound>,
    batch: &mut Vec<Outbound>,
    last_take: &mut std::time::Instant,
) {
    let steady = last_take.elapsed() < LINGER * 4;
    let weight_now: usize = batch.iter().map(weight).sum();
    let waited_on = batch
        .iter()
        .any(|item| matches!(item, Outbound::Barrier(_)));
    if steady && !waited_on && weight_now < LINGER_BELOW {
        // The writer's own thread: nothing else runs on it meanwhile.
        std::thread::sleep(LINGER);
        queue.take_now(batch, WRITE_BATCH, weight_now, weight);
    }
    *last_take = std::time::Instant::now();
}

/// The places in the relay queue (permits of `forward_room`) that `messages` relayed messages
/// hold.
pub(super) fn permit_count(messages: usize) -> u32 {
    messages.min(WRITE_QUEUE) as u32
}
/// Runs [`write_loop`] on a thread of its own, with a runtime and a Redis connection of its own:
/// busy connection tasks on the broker's runtime would otherwise leave it waiting for a turn at
/// every step of every batch, and the relay queue would overflow while Redis idles. The thread
/// ends once the link is gone.
pub(super) fn spawn_writer(
    link: Weak<ClusterLink>,
    target: RedisTarget,
    queue: Arc<WorkQueue<Outbound>>,
    response_wait: Duration,
) -> Result<(), RelayError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(relay_error)?;
    std::thread::Builder::new()
        .name("relay-writer".into())
        .spawn(move || {
            runtime.block_on(async move {
                let con = loop {
                    let config =
                        ConnectionManagerConfig::new().set_response_timeout(Some(response_wait));
                    match RenewingConnection::connect(target.clone(), config, "relay writer").await
                    {
                        Ok(con) => break con,
                        Err(e) => {
                            if link.strong_count() == 0 {
                                return;
                            }
                            tracing::warn!(error = %e, "relay writer cannot reach redis; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                };
                write_loop(link, con, queue).await
            })
        })
        .map_err(relay_error)?;
    Ok(())
}

/// Writes entry changes and relayed messages in pipelined batches, retrying a failed batch
/// until Redis takes it (the connection manager reconnects meanwhile). The messages of a batch
/// bound for one node go in as few inbox entries as [`packs::PACK_BYTES`] allows. Ends when the
/// link is gone (its queue closes).
async fn write_loop(
    weak_link: Weak<ClusterLink>,
    mut con: RenewingConnection,
    queue: Arc<WorkQueue<Outbound>>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut packs = Packs::default();
    let mut flow = Flow::default();
    let Some((mut reconnected, mut lost_writes)) = weak_link
        .upgrade()
        .map(|link| (link.reconnected.subscribe(), link.lost_writes.subscribe()))
    else {
        return;
    };
    let mut targets: Vec<NodeId> = Vec::new();
    let mut last_take = std::time::Instant::now();
    while queue.take(&mut batch, WRITE_BATCH, weight).await > 0 {
        let Some(link) = weak_link.upgrade() else {
            return;
        };
        linger(&queue, &mut batch, &mut last_take);
        targets.clear();
        for item in &batch {
            if let Outbound::Relays(relays) = item {
                for target in &relays.targets {
                    if !targets.contains(&target.node) {
                        targets.push(target.node.clone());
                    }
                }
            }
        }
        flow.wait_for_readers(&link, &mut con, &targets).await;
        let mut pipe = redis::pipe();
        // Before this batch: what Redis lost of the earlier ones.
        append_unread_again(&mut pipe, &link, &mut flow.unread, &mut lost_writes);
        for item in &batch {
            if let Outbound::Relays(relays) = item {
                for target in &relays.targets {
                    packs.push(&mut pipe, &link, &target.node, &target.records);
                }
                continue;
            }
            packs.flush(&mut pipe, &link);
            match item {
                Outbound::Entry { raw, added } => {
                    let (command, sign) = if *added { ("SADD", '+') } else { ("SREM", '-') };
                    pipe.cmd(command)
                        .arg(link.keys.entries(&link.node_id))
                        .arg(raw)
                        .ignore();
                    pipe.cmd("PUBLISH")
                        .arg(link.keys.channel())
                        .arg(format!("{}\n{sign}{raw}", link.node_id))
                        .ignore();
                }
                Outbound::Listed(marker) => {
                    pipe.cmd("SET")
                        .arg(link.keys.listed(&link.node_id))
                        .arg(marker)
                        .ignore();
                }
                // Packed above.
                Outbound::Relays(_) => {}
                Outbound::Control { node, fields } => {
                    let xadd = inbox_append(&mut pipe, &link.keys, node);
                    for (name, value) in fields {
                        xadd.arg(*name).arg(value.as_slice());
                    }
                    // A message sent on for one session is kept like a relayed one until read
                    // (its reply, the entry id, joins those of the packed entries).
                    if carries_a_message(fields) {
                        packs.appended.push((node.clone(), 1, fields.clone()));
                    } else {
                        xadd.ignore();
                    }
                }
                Outbound::DropNode { node, run } => {
                    packs.packers.retain(|(n, _)| n != node);
                    flow.unread.forget(node);
                    flow.stalled.remove(node);
                    pipe.cmd("EVAL")
                        .arg(DROP_NODE)
                        .arg(6)
                        .arg(link.keys.nodes())
                        .arg(link.keys.entries(node))
                        .arg(link.keys.inbox_read(node))
                        .arg(link.keys.run(node))
                        .arg(link.keys.listed(node))
                        .arg(link.keys.returned(node))
                        .arg(&**node)
                        .arg(run.map(|r| r.to_string()).unwrap_or_default())
                        .ignore();
                }
                Outbound::Journal { field, value } => {
                    pipe.cmd("HSET")
                        .arg(link.keys.journal(&link.node_id))
                        .arg(field.as_str())
                        .arg(value.as_slice())
                        .ignore();
                }
                Outbound::Unjournal(field) => {
                    pipe.cmd("HDEL")
                        .arg(link.keys.journal(&link.node_id))
                        .arg(field.as_str())
                        .ignore();
                }
                Outbound::Delete { command, key, ids } => {
                    pipe.cmd(command).arg(key.as_str()).arg(ids).ignore();
                }
                Outbound::InboxHandled(ids) => {
                    if let Some(last) = ids.last() {
                        pipe.cmd("SET")
                            .arg(link.keys.inbox_read(&link.node_id))
                            .arg(last.as_str())
                            .ignore();
                    }
                    pipe.cmd("XDEL")
                        .arg(link.keys.inbox(&link.node_id))
                        .arg(ids)
                        .ignore();
                }
                Outbound::Barrier(_) => {}
            }
        }
        packs.flush(&mut pipe, &link);
        // The readers' progress, read back with the batch.
        let behind: Vec<NodeId> = flow
            .unread
            .behind()
            .chain(packs.appended.iter().map(|(node, _, _)| node))
            .fold(Vec::new(), |mut nodes, node| {
                if !nodes.contains(node) {
                    nodes.push(node.clone());
                }
                nodes
            });
        for node in &behind {
            pipe.cmd("GET").arg(link.keys.inbox_read(node));
        }
        // Acknowledgements wait for this batch's barriers: with a replication wait, until the
        // replicas hold what they depend on (its reply comes last).
        let replication = link.replication.filter(|_| {
            batch
                .iter()
                .any(|item| matches!(item, Outbound::Barrier(_)))
        });
        if let Some(wait) = &replication {
            wait.append(&mut pipe, &link.keys.replicated(&link.node_id));
        }
        let mut delay = Duration::from_millis(50);
        // A batch of nothing but barriers has nothing to write (an empty pipeline would wait for
        // replies that never come).
        let writes = !behind.is_empty()
            || replication.is_some()
            || batch
                .iter()
                .any(|item| !matches!(item, Outbound::Barrier(_)));
        // After Redis refused some commands, only those are sent again (see `refusals`).
        let mut refused_only: Option<redis::Pipeline> = None;
        let replies = loop {
            if !writes {
                break Vec::new();
            }
            let sending = refused_only.as_ref().unwrap_or(&pipe);
            if reconnected.has_changed().unwrap_or(false) {
                // Redis answered elsewhere on a new connection while this one was idle: it may
                // hang as the health check's did, and nothing waits on it now.
                reconnected.borrow_and_update();
                con.renew();
            }
            let answer = tokio::select! {
                answer = sending.query_async::<Vec<Value>>(&mut con) => answer,
                () = stranded(&mut reconnected) => {
                    con.renew();
                    tracing::warn!("relay writer: redis answers on a new connection but not on this one; writing the batch again on a new connection");
                    refused_only = Some(send_again(sending, &link, &mut flow.unread, &mut lost_writes));
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            match answer {
                Ok(replies) => {
                    if link.health.set_write_refusal(None).is_some() {
                        tracing::info!("redis takes the relay's writes again");
                    }
                    // The replies of a batch sent again in part are not the batch's.
                    break if refused_only.is_some() {
                        Vec::new()
                    } else {
                        replies
                    };
                }
                Err(e) => {
                    let text = e.to_string();
                    match e.into_server_errors() {
                        // Some commands were refused, the others applied.
                        Some(errors) => {
                            let refused = refusals::sort_out(sending, &errors);
                            link.metrics_refused(errors.len());
                            if link.health.set_write_refusal(Some(refused.worst)).is_none() {
                                tracing::warn!(
                                    refused = errors.len(),
                                    dropped = refused.dropped,
                                    example = %refused.example,
                                    "redis refused relay writes; sending only those again"
                                );
                            }
                            if refused.dropped > 0 {
                                tracing::error!(
                                    dropped = refused.dropped,
                                    example = %refused.example,
                                    "relay writes redis will never take were dropped"
                                );
                            }
                            if refused.retry.is_empty() {
                                link.health.set_write_refusal(None);
                                break Vec::new();
                            }
                            refused_only = Some(refused.retry);
                        }
                        // The connection failed: what Redis applied is unknown, so the same
                        // commands go again (after a reply wait long enough that a slow answer
                        // is not taken for a lost one), marked as possibly applied twice.
                        None => {
                            tracing::warn!(error = %text, "relay write failed; retrying");
                            refused_only = Some(send_again(
                                sending,
                                &link,
                                &mut flow.unread,
                                &mut lost_writes,
                            ));
                        }
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        let mut replies = replies;
        if let Some(wait) = &replication {
            // Empty when only refused commands were sent again: then nothing is known of it.
            if let Some(reply) = replies.pop() {
                link.replication_waits.inc();
                match wait.read(&reply) {
                    Waited::Enough => {}
                    Waited::Short(confirmed) => {
                        link.replication_waits_short.inc();
                        tracing::debug!(
                            confirmed,
                            "fewer redis replicas than asked for confirmed in time"
                        );
                    }
                    Waited::Unreadable => {
                        link.replication_waits_short.inc();
                        tracing::warn!(reply = ?reply, "redis answered WAIT with no count");
                    }
                }
            }
        }
        // Everything queued before a barrier is in Redis now, and the relayed messages written
        // give their places in the queue back.
        let mut written = 0;
        for item in batch.drain(..) {
            match item {
                Outbound::Barrier(done) => {
                    let _ = done.send(());
                }
                Outbound::Relays(relays) => written += permit_count(relays.len()) as usize,
                _ => {}
            }
        }
        link.forward_room.add_permits(written);
        let mut replies = replies.into_iter();
        for ((node, messages, copy), reply) in packs.appended.drain(..).zip(replies.by_ref()) {
            if let Some(id) = bulk_bytes(reply).as_deref().and_then(parse_stream_id) {
                flow.unread.appended(&node, id, messages, copy);
            }
        }
        for (node, reply) in behind.iter().zip(replies) {
            flow.progress(node, bulk_bytes(reply));
        }
    }
}
/// The bytes of a bulk or simple string reply.
fn bulk_bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Outbound {
        Outbound::Entry {
            raw: "t".into(),
            added: true,
        }
    }

    fn queue_of(items: usize) -> WorkQueue<Outbound> {
        let queue = WorkQueue::default();
        for _ in 0..items {
            assert!(queue.push(entry()).is_ok());
        }
        queue
    }

    #[test]
    fn only_control_entries_that_carry_a_message_are_kept() {
        let direct = vec![("k", KIND_DIRECT.to_vec()), ("c", b"id".to_vec())];
        assert!(carries_a_message(&direct));
        let release = vec![("k", b"release".to_vec()), ("c", b"direct".to_vec())];
        assert!(!carries_a_message(&release));
        assert!(!carries_a_message(&[]));
    }

    #[test]
    fn a_small_batch_in_a_steady_stream_takes_what_arrived_meanwhile() {
        let queue = queue_of(3);
        let mut batch = vec![entry()];
        let mut last_take = std::time::Instant::now();
        linger(&queue, &mut batch, &mut last_take);
        assert_eq!(batch.len(), 4);
    }

    #[test]
    fn a_batch_an_acknowledgement_waits_on_goes_at_once() {
        let queue = queue_of(3);
        let (done, _) = oneshot::channel();
        let mut batch = vec![entry(), Outbound::Barrier(done)];
        let mut last_take = std::time::Instant::now();
        linger(&queue, &mut batch, &mut last_take);
        assert_eq!(batch.len(), 2);
    }

    #[test]
    fn the_first_batch_after_a_pause_goes_at_once() {
        let queue = queue_of(3);
        let mut batch = vec![entry()];
        let mut last_take = std::time::Instant::now() - LINGER * 5;
        linger(&queue, &mut batch, &mut last_take);
        assert_eq!(batch.len(), 1);
        assert!(last_take.elapsed() < LINGER * 4, "the take is noted");
    }

    #[test]
    fn a_batch_big_enough_goes_at_once() {
        let queue = queue_of(3);
        let mut batch: Vec<Outbound> = (0..LINGER_BELOW).map(|_| entry()).collect();
        let mut last_take = std::time::Instant::now();
        linger(&queue, &mut batch, &mut last_take);
        assert_eq!(batch.len(), LINGER_BELOW);
    }
}
