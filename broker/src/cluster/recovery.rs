//! Recovery of what a node held only in memory when it stopped without handing it on: the copies
//! in its delivery journal ([`super::journal`]) and the entries left in its inbox stream.
//!
//! Run by the node that adopts a departed node's sessions, right after the adoption, and by a
//! node restarting under its old id for its earlier runs. Every recovered copy is marked as
//! possibly sent (DUP) and delivered like a message sent on to its session: queued in the store
//! for an offline session, handed to the session's connection here, or sent on to the node that
//! holds it now. What was recovered is deleted through the relay's writer, after the journal
//! writes and relays of its deliveries, so nothing is deleted before it is safe elsewhere.

use super::journal;
use super::local::LocalBroker;
use super::relay::inbox::{decoded_records, entry_field, stream_entries, EntryField};
use super::relay::{ClusterLink, KIND_DIRECT};
use crate::message::ClientId;
use crate::protocol::{topic, QoS};
use crate::router::{self, Match, SubscriptionTree};
use crate::store::redis::codec;
use crate::store::{QueuedMessage, StoredSubscription};
use redis::aio::MultiplexedConnection;
use redis::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the adopter keeps reading a departed node's inbox: the other nodes relay to it until
/// gossip has told each of them that it is gone, and for a few seconds more (until the adopter's
/// routes for the adopted sessions have reached them).
pub const TAIL: Duration = Duration::from_secs(12);
/// Pause between readings of a departed node's inbox while tailing it.
const TAIL_POLL: Duration = Duration::from_millis(250);
/// How old an entry of a departed node's inbox must be (by Redis's clock) before the tail
/// delivers it. A node that relayed a message there may have relayed it to the session's new
/// routes as well, and that copy, without DUP, must arrive first: delivered before it, the
/// recovered copy (DUP) would make the plain one a second copy without DUP.
const SETTLE: Duration = Duration::from_secs(1);
/// Inbox entries read at a time.
const PAGE: usize = 512;

/// Whose leftovers are recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leftovers {
    /// A node that left the cluster: all of its journal and inbox, and what keeps arriving in
    /// its inbox for a while.
    Departed,
    /// This node's earlier runs: journal fields of other runs, inbox entries older than this run.
    EarlierRuns,
}

/// The adopted sessions' subscriptions, for matching the messages left in the inbox.
pub struct AdoptedRoutes(SubscriptionTree);

impl AdoptedRoutes {
    /// Builds the routes of the given sessions.
    pub fn new<'a>(
        sessions: impl IntoIterator<Item = (&'a ClientId, &'a [StoredSubscription])>,
    ) -> Self {
        let mut tree = SubscriptionTree::default();
        for (client, subscriptions) in sessions {
            for s in subscriptions {
                if let Ok(parsed) = topic::parse_subscription(&s.filter, usize::MAX) {
                    tree.insert(client, parsed.group, parsed.filter, s.options.clone());
                }
            }
        }
        AdoptedRoutes(tree)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The copies of `message` for the adopted sessions: every plain match, and one member of
    /// each share group the origin chose the departed node for.
    fn copies(
        &self,
        message: &Arc<crate::message::Message>,
        groups: &[(String, String)],
    ) -> Vec<(ClientId, QueuedMessage)> {
        let mut matches = Vec::new();
        self.0.matches(&message.topic, |m| match m {
            Match::Direct(client, options) => matches.push((client.clone(), options.clone())),
            Match::Shared {
                group,
                filter,
                members,
                start,
            } => {
                let chosen = groups.iter().any(|(g, f)| g == group && f == filter);
                if let (true, Some(member)) = (chosen, members.get(start % members.len().max(1))) {
                    matches.push(member.clone());
                }
            }
        });
        router::targets(&matches, message.publisher.as_deref())
            .into_iter()
            .map(|target| {
                let client_id = target.client_id.clone();
                let mut copy = QueuedMessage::for_target(message, target);
                copy.maybe_sent = true;
                (client_id, copy)
            })
            .collect()
    }
}

/// Recovers `node`'s journal and inbox leftovers; `routes` are the subscriptions of the sessions
/// adopted from it, `run` the departed run when known (what a newer run of the same node id
/// journals or is sent is left to it). Logs what it did; a failure leaves the rest in Redis for
/// a later attempt (the next restart of that node id).
pub async fn recover(
    link: Arc<ClusterLink>,
    broker: Arc<impl LocalBroker>,
    node: String,
    run: Option<u64>,
    leftovers: Leftovers,
    routes: AdoptedRoutes,
) {
    let _running = Running::count(&broker.metrics().cluster_recoveries);
    recover_all(&link, &*broker, &node, run, leftovers, &routes).await;
}

/// Counts a recovery as running for as long as it lives.
struct Running<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> Running<'a> {
    fn count(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Running(gauge)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// [`recover`], once counted as running.
async fn recover_all(
    link: &ClusterLink,
    broker: &impl LocalBroker,
    node: &str,
    run: Option<u64>,
    leftovers: Leftovers,
    routes: &AdoptedRoutes,
) {
    let mut con = match link.recovery_connection().await {
        Ok(con) => con,
        Err(e) => {
            tracing::warn!(node, error = %e, "recovery: redis unreachable");
            return;
        }
    };
    let journalled = match recover_journal(link, broker, &mut con, node, run, leftovers).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(node, error = %e, "recovery of the delivery journal failed");
            0
        }
    };
    let departure = Departure { node, run };
    let relayed = match recover_inbox(link, broker, &mut con, departure, leftovers, routes).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(node, error = %e, "recovery of the inbox failed");
            0
        }
    };
    tracing::info!(
        node,
        ?leftovers,
        journalled,
        relayed,
        "recovered copies a node held only in memory"
    );
}

/// Re-delivers the copies in `node`'s journal, oldest first (up to the departed `run`'s, when
/// known); returns how many.
async fn recover_journal(
    link: &ClusterLink,
    broker: &impl LocalBroker,
    con: &mut MultiplexedConnection,
    node: &str,
    run: Option<u64>,
    leftovers: Leftovers,
) -> redis::RedisResult<usize> {
    let key = link.journal_key(node);
    let mut entries: Vec<(journal::FieldOrder, String, Vec<u8>)> = redis::cmd("HGETALL")
        .arg(&key)
        .query_async::<Vec<(String, Vec<u8>)>>(con)
        .await?
        .into_iter()
        .filter_map(|(field, value)| {
            let order = journal::parse_field(&field)?;
            let ours = leftovers == Leftovers::EarlierRuns && order.0 == link.run();
            let newer_run = run.is_some_and(|departed| order.0 > departed);
            (!ours && !newer_run).then_some((order, field, value))
        })
        .collect();
    entries.sort_by_key(|(order, _, _)| *order);
    let mut fields = Vec::with_capacity(entries.len());
    let mut count = 0;
    for (_, field, value) in entries {
        match journal::decode_value(&value) {
            // A claim journals the QoS 0 copies it takes with the rest (it cannot tell them
            // apart), and the node deletes them at once: one still here may have been sent, and
            // at most once must not become twice.
            Ok((_, copy)) if copy.qos == QoS::AtMostOnce => {}
            Ok((client, mut copy)) => {
                copy.maybe_sent = true;
                broker.deliver_recovered(client, copy).await;
                broker.metrics().cluster_recovered_copies.inc();
                count += 1;
            }
            Err(e) => tracing::warn!(node, field, error = %e, "unreadable journal entry dropped"),
        }
        fields.push(field);
    }
    for chunk in fields.chunks(PAGE) {
        link.delete_after_writes("HDEL", &key, chunk.to_vec());
    }
    Ok(count)
}

/// A node whose leftovers are recovered, and its departed run when known.
#[derive(Clone, Copy)]
struct Departure<'a> {
    node: &'a str,
    run: Option<u64>,
}

/// Re-delivers what `node`'s inbox still holds; for a departed node, keeps reading what has
/// settled for [`TAIL`], or until the node is back, and ends once what was appended up to then
/// has settled. Returns how many copies it delivered.
///
/// A departed node can come back two ways, and either reads its inbox itself again:
/// - A newer run registered (the node restarted): it reads from its start on, for its own
///   sessions only. The tail goes on delivering to the adopted sessions (other nodes may still
///   relay to this inbox for them), without deleting what the new run reads too.
/// - The same run came back (gossip declared it dead while it was stalled): it reads on from
///   where it was, entries appended before its return as maybe delivered already (DUP), later
///   ones as its own, and it routes the adopted sessions' subscriptions on to where they went
///   (see `handoff`). The tail delivers what was appended before the return once it has
///   settled, deletes nothing from then on, and stops: a copy of a later entry delivered
///   here, marked DUP, could reach a client before the node's own plain one.
async fn recover_inbox(
    link: &ClusterLink,
    broker: &impl LocalBroker,
    con: &mut MultiplexedConnection,
    departure: Departure<'_>,
    leftovers: Leftovers,
    routes: &AdoptedRoutes,
) -> redis::RedisResult<usize> {
    let node = departure.node;
    let key = link.inbox_key(node);
    let started = Instant::now();
    let mut next = "-".to_string();
    let mut count = 0;
    // The last millisecond the tail must cover before it ends, once known.
    let mut finish_at: Option<u64> = None;
    loop {
        let back = match leftovers {
            Leftovers::Departed => node_back(link, con, departure).await?,
            Leftovers::EarlierRuns => None,
        };
        let now_ms = link.redis_now_ms();
        if let Some(Back::SameRun { at_ms }) = back {
            // Inclusive: the last millisecond before the return.
            let before_return = at_ms.saturating_sub(1);
            finish_at = Some(finish_at.map_or(before_return, |f| f.min(before_return)));
        }
        if started.elapsed() >= TAIL && finish_at.is_none() {
            finish_at = Some(now_ms);
        }
        let hard_stop = started.elapsed() >= TAIL + 2 * SETTLE;
        let (end, last_pass) = match leftovers {
            Leftovers::EarlierRuns => (format!("({}", link.inbox_start()), true),
            Leftovers::Departed => {
                let (end_ms, last) = tail_end(now_ms, finish_at, hard_stop);
                (end_ms.to_string(), last)
            }
        };
        let reply: Value = redis::cmd("XRANGE")
            .arg(&key)
            .arg(&next)
            .arg(&end)
            .arg("COUNT")
            .arg(PAGE)
            .query_async(con)
            .await?;
        let entries = stream_entries(Value::Array(vec![Value::Array(vec![
            Value::BulkString(key.clone().into_bytes()),
            reply,
        ])]));
        if let Some((last, _)) = entries.last() {
            next = format!("({last}");
        }
        let mut handled = Vec::with_capacity(entries.len());
        let full_page = entries.len() == PAGE;
        for (id, fields) in entries {
            let copies = redeliver_entry(broker, routes, node, &fields).await;
            broker
                .metrics()
                .cluster_recovered_copies
                .inc_by(copies as u64);
            count += copies;
            let deletable = match back {
                None => true,
                Some(Back::NewerRun { start }) => before_run(&id, start),
                Some(Back::SameRun { .. }) => false,
            };
            if deletable {
                handled.push(id);
            }
        }
        if !handled.is_empty() {
            link.delete_after_writes("XDEL", &key, handled);
        }
        if full_page {
            continue;
        }
        if last_pass {
            return Ok(count);
        }
        tokio::time::sleep(TAIL_POLL).await;
    }
}

/// How a departed node is back, as its registration in Redis tells (see [`recover_inbox`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Back {
    /// A newer run registered, reading its inbox from `start` (ms, Redis's clock) on.
    NewerRun { start: u64 },
    /// The departed run itself registered again; from `at_ms` (Redis's clock) on, what is
    /// appended to its inbox is its own.
    SameRun { at_ms: u64 },
}

/// Whether and how the departed node is back.
async fn node_back(
    link: &ClusterLink,
    con: &mut MultiplexedConnection,
    departure: Departure<'_>,
) -> redis::RedisResult<Option<Back>> {
    let Some(registered) = link.registered_run(con, departure.node).await? else {
        return Ok(None);
    };
    if departure.run.is_some_and(|departed| departed != registered) {
        return Ok(Some(Back::NewerRun { start: registered }));
    }
    // The marker is removed with the registration the adoption removed, and written again
    // only with a new registration: one here is this departure's.
    Ok(link
        .returned(con, departure.node)
        .await?
        .filter(|returned| returned.run == registered)
        .map(|returned| Back::SameRun {
            at_ms: returned.at_ms,
        }))
}

/// The last millisecond (as an inclusive `XRANGE` end) a departed node's tail reads when Redis's
/// clock reads `now_ms`, and whether that is its last reading. Only what has settled is read;
/// the tail ends once it has covered `finish_at` (the last millisecond before the node's
/// return, or when the tail's time ran out), or at `hard_stop` (a clock gone wrong) with what
/// has settled.
fn tail_end(now_ms: u64, finish_at: Option<u64>, hard_stop: bool) -> (u64, bool) {
    let settled = settled_ms(now_ms);
    match finish_at {
        Some(finish) if settled >= finish => (finish, true),
        Some(finish) if hard_stop => (settled.min(finish), true),
        _ => (settled, false),
    }
}

/// The last millisecond (Redis's clock) whose entries have settled when it reads `now_ms`.
fn settled_ms(now_ms: u64) -> u64 {
    let settle_ms = u64::try_from(SETTLE.as_millis()).unwrap_or(u64::MAX);
    now_ms.saturating_sub(settle_ms)
}

/// Whether stream entry `id` was added before a run that started at `start` (ms, Redis time)
/// read its inbox: that run reads after `<start>-0`. An unreadable id counts as before.
fn before_run(id: &str, start: u64) -> bool {
    let mut parts = id.splitn(2, '-');
    let ms = parts.next().and_then(|ms| ms.parse::<u64>().ok());
    let seq = parts.next().and_then(|seq| seq.parse::<u64>().ok());
    match (ms, seq) {
        (Some(ms), Some(seq)) => (ms, seq) <= (start, 0),
        _ => true,
    }
}

/// Delivers one inbox entry's message (or message sent on) to the adopted sessions; returns how
/// many copies.
async fn redeliver_entry(
    broker: &impl LocalBroker,
    routes: &AdoptedRoutes,
    node: &str,
    fields: &[EntryField],
) -> usize {
    let field = |name: &[u8]| entry_field(fields, name);
    match field(b"k") {
        None => {
            if routes.is_empty() {
                return 0;
            }
            let mut n = 0;
            for (message, groups) in decoded_records(node, fields) {
                for (client, copy) in routes.copies(&message, &groups) {
                    broker.deliver_recovered(client, copy).await;
                    n += 1;
                }
            }
            n
        }
        Some(KIND_DIRECT) => {
            let client = field(b"c").and_then(|c| std::str::from_utf8(c).ok());
            let copy = field(b"q").map(codec::decode_queued);
            match (client, copy) {
                (Some(client), Some(Ok(mut copy))) => {
                    copy.maybe_sent = true;
                    broker.deliver_recovered(client.into(), copy).await;
                    1
                }
                _ => {
                    tracing::warn!(
                        node,
                        "unreadable direct message in a recovered inbox dropped"
                    );
                    0
                }
            }
        }
        // Hand-over requests and answers are for the node that is gone.
        Some(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::{before_run, settled_ms, tail_end};

    #[test]
    fn entries_up_to_a_runs_start_are_before_it() {
        assert!(before_run("99-5", 100));
        assert!(before_run("100-0", 100));
        assert!(!before_run("100-1", 100));
        assert!(!before_run("101-0", 100));
        assert!(before_run("not-an-id", 100));
    }

    #[test]
    fn a_tail_reads_only_what_has_settled_and_ends_once_it_covered_its_finish() {
        // Still tailing: everything a second old and older, and on.
        assert_eq!(tail_end(10_500, None, false), (9_500, false));
        // A node back at 10 000 (finish 9 999): not before that has settled, never past it.
        assert_eq!(tail_end(10_500, Some(9_999), false), (9_500, false));
        assert_eq!(tail_end(10_999, Some(9_999), false), (9_999, true));
        assert_eq!(tail_end(60_000, Some(9_999), false), (9_999, true));
        // A clock gone wrong: stop with what has settled.
        assert_eq!(tail_end(10_500, Some(9_999), true), (9_500, true));
    }

    #[test]
    fn a_tail_delivers_entries_a_second_old_and_older() {
        assert_eq!(settled_ms(1_700_000_001_500), 1_700_000_000_500);
        assert_eq!(settled_ms(400), 0);
    }
}
