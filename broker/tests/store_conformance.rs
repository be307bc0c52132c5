//! Store conformance suite: one set of behavioural scenarios, written once against the `Store`
//! trait, run against both implementations — the in-memory store and the Redis store (against a
//! real `redis-server` on a free port, one per test). Each (scenario, store) pair is its own test,
//! `memory::<scenario>` and `redis::<scenario>`, so the two can be told apart in the output.
//!
//! This is the contract a store must keep; in particular it guards a rewrite of the Redis key
//! schema. Where the stores legitimately differ, a scenario says so through a named
//! [`Exception`] (each one explained there) and asserts the answer each store must give: nothing
//! is skipped silently. A case where one store breaks the contract stays in the suite, asserting
//! the contract, with an `#[ignore = "issue: ..."]` that says what differs.
//!
//! Not covered here, on purpose: the size limit of one retained payload
//! (`limits.max_retained_payload_size`) is not a store limit — the broker's `RetainGate` applies
//! it before a store is asked (see `retained_limits.rs`); the store side only has to keep large
//! payloads whole ([`large_retained_payloads_are_kept_whole`]).

mod common_redis;

use bytes::Bytes;
use common_redis::RedisServer;
use starling_broker::message::{ClientId, Message, MessageProperties};
use starling_broker::protocol::{QoS, RetainForwardRule};
use starling_broker::router::SubscriptionOptions;
use starling_broker::store::{
    Attached, Completed, Detached, Enqueued, ExpiredSession, Holder, InflightMessage,
    InflightState, MemoryStore, QueuedMessage, RedisStore, RedisStoreConfig, Retained,
    RetainedLimits, SessionClaim, Store, StoredSession, StoredSubscription, StoredWill,
};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// The node id the Redis store under test runs as.
const NODE: &str = "node-a";

/// How a scenario wants its store configured.
#[derive(Clone, Copy)]
struct Setup {
    /// Most messages in one session's queue.
    max_queued: usize,
    /// Retained-message limits.
    retained: RetainedLimits,
}

const DEFAULT: Setup = Setup {
    max_queued: 100,
    retained: RetainedLimits {
        max_messages: 0,
        max_bytes: 0,
    },
};

const fn queue_of(max_queued: usize) -> Setup {
    Setup {
        max_queued,
        ..DEFAULT
    }
}

const fn retained(max_messages: usize, max_bytes: u64) -> Setup {
    Setup {
        retained: RetainedLimits {
            max_messages,
            max_bytes,
        },
        ..DEFAULT
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Memory,
    Redis,
}

/// Where the two stores legitimately differ. A scenario that meets one asks
/// [`Ctx::excepted`] and asserts what each store must answer.
#[derive(Debug, Clone, Copy)]
enum Exception {
    /// The memory store serves one node. No other node can hold, claim or adopt its sessions:
    /// a claim always finds the session [`Holder::Free`], `complete_attach` (never needed)
    /// answers [`Completed::Superseded`], `adopt_sessions` finds nothing, and a will kept at
    /// shutdown has nobody to publish it (the trait's defaults say so). Scenarios about a
    /// second node run their cluster part on Redis only and check these answers on memory.
    SingleNode,
    /// `save_subscriptions` writes a held session's subscriptions through only where another
    /// node could take the session over; "a store only this node uses does nothing" (trait
    /// doc). On memory, a claim that takes over an online session gets no subscriptions with
    /// `previous` (the connection it replaces hands them over in-process).
    WriteThrough,
    /// `ExpiredSession::parked_on` is "the node it was parked on, when known": the memory store
    /// has no node ids and answers `None`; Redis names the node that parked it.
    NoNodeIds,
}

impl Exception {
    /// Whether `kind` is the store this exception is about.
    fn applies_to(self, kind: Kind) -> bool {
        match self {
            Exception::SingleNode | Exception::WriteThrough | Exception::NoNodeIds => {
                kind == Kind::Memory
            }
        }
    }
}

/// One scenario's store, and for Redis the server behind it.
struct Ctx {
    kind: Kind,
    setup: Setup,
    store: Box<dyn Store>,
    server: Option<RedisServer>,
}

fn redis_config(server: &RedisServer, node: &str, setup: Setup) -> RedisStoreConfig {
    let mut config = RedisStoreConfig::new(server.target(), node, setup.max_queued);
    config.retained_limits = setup.retained;
    config.operation_timeout = Duration::from_secs(5);
    config
}

impl Ctx {
    fn memory(setup: Setup) -> Ctx {
        Ctx {
            kind: Kind::Memory,
            setup,
            store: Box::new(
                MemoryStore::new(setup.max_queued).with_retained_limits(setup.retained),
            ),
            server: None,
        }
    }

    async fn redis(setup: Setup) -> Ctx {
        let server = RedisServer::start().await;
        let store = RedisStore::connect(redis_config(&server, NODE, setup))
            .await
            .expect("connect to redis");
        Ctx {
            kind: Kind::Redis,
            setup,
            store: Box::new(store),
            server: Some(server),
        }
    }

    fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// Whether this store is the one `exception` is about.
    fn excepted(&self, exception: Exception) -> bool {
        exception.applies_to(self.kind)
    }

    /// Another node's store on the same shared state (Redis only: see
    /// [`Exception::SingleNode`]).
    async fn other_node(&self, node: &str) -> RedisStore {
        let server = self
            .server
            .as_ref()
            .expect("only a shared store has other nodes");
        RedisStore::connect(redis_config(server, node, self.setup))
            .await
            .expect("connect to redis")
    }
}

/// Generates `memory::<scenario>` and `redis::<scenario>` for each scenario, with its setup and
/// any attribute (an `#[ignore = "issue: ..."]`) for one of the two.
macro_rules! conformance {
    ($(
        $name:ident ( $setup:expr )
        $( memory [ $($m:meta),* ] )?
        $( redis [ $($r:meta),* ] )? ;
    )*) => {
        mod memory {
            use super::*;
            $(
                $($( #[$m] )*)?
                #[tokio::test]
                async fn $name() {
                    let ctx = Ctx::memory($setup);
                    super::$name(&ctx).await;
                }
            )*
        }
        mod redis {
            use super::*;
            $(
                $($( #[$r] )*)?
                #[tokio::test]
                async fn $name() {
                    let ctx = Ctx::redis($setup).await;
                    super::$name(&ctx).await;
                }
            )*
        }
    };
}

conformance! {
    // Sessions: claiming.
    a_new_session_is_claimed_with_nothing_previous(DEFAULT);
    a_detached_session_resumes_whole(DEFAULT);
    a_resumed_session_leaves_the_store(DEFAULT);
    clean_start_discards_the_stored_session(DEFAULT);
    a_newer_claim_fences_the_older_one(DEFAULT);
    a_stale_claim_cannot_remove_the_session_a_newer_claim_stored(DEFAULT);
    a_stale_claim_cannot_bring_back_a_removed_session(DEFAULT);
    a_claim_of_a_session_held_on_another_node_completes_after_hand_over(DEFAULT);
    // Sessions: ending.
    remove_ends_the_session(DEFAULT);
    detaching_twice_changes_nothing(DEFAULT);
    a_will_kept_at_shutdown_goes_to_the_adopter_once(DEFAULT);
    adopting_a_departed_nodes_sessions(DEFAULT);
    // Sessions: subscriptions.
    a_resumed_session_gets_the_subscriptions_it_was_detached_with(DEFAULT);
    subscriptions_written_through_reach_the_next_claim(DEFAULT);
    // Sessions: queues.
    messages_for_an_offline_session_queue_in_order_up_to_the_limit(queue_of(3));
    messages_forced_while_online_follow_the_sessions_own_queue(queue_of(3));
    // Sessions: expiry and counts.
    an_offline_session_expires_at_its_interval(DEFAULT);
    the_sweep_takes_only_offline_sessions_that_are_due(DEFAULT);
    a_session_that_never_expires_is_never_swept(DEFAULT);
    sessions_are_counted_online_and_offline(DEFAULT);
    a_session_summary_follows_the_session_online_and_offline(DEFAULT);
    // Retained messages.
    retained_set_replace_and_delete(DEFAULT);
    retained_messages_round_trip_exactly(DEFAULT);
    retained_matching_follows_wildcards_and_dollar_topics(DEFAULT);
    expired_retained_messages_are_not_matched(DEFAULT);
    retained_count_limit_refuses_new_topics_only(retained(2, 0));
    retained_bytes_limit_counts_what_a_message_replaces(retained(0, 10));
    expired_retained_messages_make_room(retained(2, 0));
    large_retained_payloads_are_kept_whole(DEFAULT);
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn message(topic: &str, payload: &str, qos: QoS) -> Message {
    Message {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain: false,
        properties: MessageProperties::default(),
        expires_at: None,
        publisher: None,
        received_at: None,
    }
}

fn retained_message(topic: &str, payload: &str) -> Arc<Message> {
    let mut m = message(topic, payload, QoS::AtLeastOnce);
    m.retain = true;
    Arc::new(m)
}

fn queued(payload: &str) -> QueuedMessage {
    queued_qos(payload, QoS::AtLeastOnce)
}

fn queued_qos(payload: &str, qos: QoS) -> QueuedMessage {
    QueuedMessage::new(Arc::new(message("t", payload, qos)), qos, false, vec![])
}

/// A message with every part set (properties, publisher, an expiry in whole seconds).
fn rich_message(topic: &str, payload: &str) -> Message {
    let in_an_hour = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs()
        + 3600;
    Message {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: QoS::ExactlyOnce,
        retain: true,
        properties: MessageProperties {
            payload_format_indicator: Some(1),
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
            user_properties: vec![("k".into(), "v1".into()), ("k".into(), "v2".into())],
        },
        expires_at: Some(UNIX_EPOCH + Duration::from_secs(in_an_hour)),
        publisher: Some("publisher-1".into()),
        received_at: None,
    }
}

fn options(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainForwardRule::OnEverySubscribe,
        identifier: None,
    }
}

fn sub(filter: &str) -> StoredSubscription {
    StoredSubscription {
        filter: filter.into(),
        options: options(QoS::AtLeastOnce),
    }
}

fn claim(expiry_secs: u32) -> SessionClaim {
    SessionClaim {
        expiry_secs,
        ..SessionClaim::default()
    }
}

fn expiring(expiry_secs: u32) -> StoredSession {
    StoredSession {
        expiry_secs,
        ..StoredSession::default()
    }
}

fn will(topic: &str) -> StoredWill {
    StoredWill {
        message: Arc::new(message(topic, "gone", QoS::AtLeastOnce)),
        delay_secs: 5,
    }
}

async fn attach(store: &dyn Store, id: &str, claim: &SessionClaim) -> Attached {
    store
        .attach_session(&ClientId::from(id), claim)
        .await
        .expect("attach")
}

async fn detach(store: &dyn Store, id: &str, generation: u64, s: StoredSession) -> Detached {
    store
        .detach_session(&ClientId::from(id), generation, s)
        .await
        .expect("detach")
}

async fn enqueue(store: &dyn Store, id: &str, m: QueuedMessage, force: bool) -> Enqueued {
    store.enqueue(id, m, force).await.expect("enqueue")
}

async fn count(store: &dyn Store) -> usize {
    store.session_count().await.expect("session count")
}

async fn sweep(store: &dyn Store, now: SystemTime) -> Vec<ExpiredSession> {
    store.take_expired_sessions(now).await.expect("sweep")
}

fn payloads(queue: &VecDeque<QueuedMessage>) -> Vec<String> {
    queue
        .iter()
        .map(|q| String::from_utf8_lossy(&q.message.payload).into_owned())
        .collect()
}

/// Subscription filters in filter order (the order of subscriptions is not part of the
/// contract: Redis keeps them in a hash).
fn filters(subscriptions: &[StoredSubscription]) -> Vec<String> {
    let mut f: Vec<String> = subscriptions.iter().map(|s| s.filter.clone()).collect();
    f.sort();
    f
}

fn sorted(mut subscriptions: Vec<StoredSubscription>) -> Vec<StoredSubscription> {
    subscriptions.sort_by(|a, b| a.filter.cmp(&b.filter));
    subscriptions
}

async fn matching(store: &dyn Store, filter: &str) -> Vec<String> {
    let mut topics: Vec<String> = store
        .retained_matching(filter)
        .await
        .expect("retained look-up")
        .iter()
        .map(|m| m.topic.to_string())
        .collect();
    topics.sort();
    topics
}

async fn retain(store: &dyn Store, m: Arc<Message>) -> Retained {
    store.set_retained(m).await.expect("set retained")
}

async fn retained_count(store: &dyn Store) -> usize {
    store.retained_count().await.expect("retained count")
}

/// The payload retained on `topic`, if any.
async fn retained_payload(store: &dyn Store, topic: &str) -> Option<String> {
    let found = store.retained_matching(topic).await.expect("look-up");
    assert!(found.len() <= 1, "one retained message per topic");
    found
        .first()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Sessions: claiming
// ---------------------------------------------------------------------------------------------

async fn a_new_session_is_claimed_with_nothing_previous(ctx: &Ctx) {
    let s = ctx.store();
    assert_eq!(count(s).await, 0);
    assert_eq!(
        enqueue(s, "c", queued("x"), false).await,
        Enqueued::NoSession
    );
    let a = attach(s, "c", &claim(60)).await;
    assert!(a.previous.is_none(), "no stored session: {:?}", a.previous);
    assert_eq!(a.holder, Holder::Free { parked_on: None });
    assert!(a.generation > 0);
    assert_eq!(count(s).await, 1);
    assert_eq!(
        enqueue(s, "c", queued("x"), false).await,
        Enqueued::Online,
        "a session held here is delivered to, not queued"
    );
    // Another client is another session.
    let b = attach(s, "other", &claim(0)).await;
    assert!(b.previous.is_none());
    assert_eq!(count(s).await, 2);
}

/// Everything a session is detached with comes back, exactly, when it is claimed again.
async fn a_detached_session_resumes_whole(ctx: &Ctx) {
    let s = ctx.store();
    let a = attach(s, "c", &claim(120)).await;
    let rich_queued = QueuedMessage::new(
        Arc::new(rich_message("r/1", "rich")),
        QoS::AtLeastOnce,
        true,
        vec![4, 2],
    );
    let session = StoredSession {
        expiry_secs: 120,
        subscriptions: vec![
            StoredSubscription {
                filter: "z/+/x".into(),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainForwardRule::Never,
                    identifier: Some(17),
                },
            },
            StoredSubscription {
                filter: "$share/g/a/#".into(),
                options: SubscriptionOptions {
                    qos: QoS::AtMostOnce,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainForwardRule::OnNewSubscribe,
                    identifier: None,
                },
            },
            sub("b"),
        ],
        inflight: vec![
            InflightMessage {
                packet_id: 9,
                state: InflightState::AwaitingAck,
                queued: queued_qos("i1", QoS::AtLeastOnce),
            },
            InflightMessage {
                packet_id: 3,
                state: InflightState::AwaitingComplete,
                queued: queued_qos("i2", QoS::ExactlyOnce),
            },
        ],
        queue: VecDeque::from([
            queued_qos("q1", QoS::AtMostOnce),
            rich_queued,
            queued_qos("q3", QoS::ExactlyOnce),
        ]),
        incoming_qos2: vec![7, 3, 65535],
        disconnected_at: None,
    };
    let before = SystemTime::now();
    assert_eq!(
        detach(s, "c", a.generation, session.clone()).await,
        Detached::Stored
    );
    let after = SystemTime::now();
    assert_eq!(count(s).await, 1, "an offline session still counts");

    let back = attach(s, "c", &claim(120)).await;
    assert_eq!(back.holder, Holder::Free { parked_on: None });
    assert!(back.generation > a.generation);
    let previous = back.previous.expect("the stored session");
    assert_eq!(previous.expiry_secs, 120);
    assert_eq!(
        sorted(previous.subscriptions.clone()),
        sorted(session.subscriptions.clone())
    );
    assert_eq!(previous.inflight, session.inflight, "in-flight, in order");
    assert_eq!(previous.queue, session.queue, "queue, oldest first");
    assert_eq!(previous.incoming_qos2, session.incoming_qos2);
    // Set by the store when detached (Redis keeps milliseconds).
    let at = previous.disconnected_at.expect("disconnected_at is set");
    assert!(
        at + Duration::from_millis(1) >= before && at <= after,
        "disconnected_at {at:?} not within the detach ({before:?}..{after:?})"
    );
}

/// A claim takes the session's messages out of the store: a claim after it (the same node
/// taking the session over) does not get them again.
async fn a_resumed_session_leaves_the_store(ctx: &Ctx) {
    let s = ctx.store();
    let a = attach(s, "c", &claim(60)).await;
    let mut session = expiring(60);
    session.queue.push_back(queued("q"));
    session.inflight.push(InflightMessage {
        packet_id: 1,
        state: InflightState::AwaitingAck,
        queued: queued("i"),
    });
    session.incoming_qos2.push(5);
    assert_eq!(
        detach(s, "c", a.generation, session).await,
        Detached::Stored
    );
    let first = attach(s, "c", &claim(60)).await;
    assert_eq!(
        payloads(&first.previous.expect("stored session").queue),
        ["q"]
    );
    let second = attach(s, "c", &claim(60)).await;
    let again = second.previous.unwrap_or_default();
    assert!(again.queue.is_empty(), "queue handed out twice: {again:?}");
    assert!(again.inflight.is_empty(), "in-flight handed out twice");
    assert!(again.incoming_qos2.is_empty(), "QoS 2 ids handed out twice");
    assert_eq!(count(s).await, 1);
}

async fn clean_start_discards_the_stored_session(ctx: &Ctx) {
    let s = ctx.store();
    // Clean start without a stored session.
    let fresh = attach(
        s,
        "new",
        &SessionClaim {
            clean_start: true,
            ..claim(60)
        },
    )
    .await;
    assert!(fresh.previous.is_none());

    let a = attach(s, "c", &claim(60)).await;
    let mut session = expiring(60);
    session.subscriptions = vec![sub("a/#"), sub("b")];
    session.queue.push_back(queued("o1"));
    assert_eq!(
        detach(s, "c", a.generation, session).await,
        Detached::Stored
    );
    assert_eq!(enqueue(s, "c", queued("o2"), false).await, Enqueued::Queued);

    let clean = attach(
        s,
        "c",
        &SessionClaim {
            clean_start: true,
            ..claim(60)
        },
    )
    .await;
    assert_eq!(clean.holder, Holder::Free { parked_on: None });
    // The discarded session comes back once, so its subscriptions can be forgotten.
    let discarded = clean.previous.expect("the discarded session");
    assert_eq!(filters(&discarded.subscriptions), ["a/#", "b"]);

    // Nothing of it is left for any later claim.
    let later = attach(s, "c", &claim(60)).await;
    let left = later.previous.unwrap_or_default();
    assert!(left.subscriptions.is_empty(), "{left:?}");
    assert!(left.queue.is_empty(), "{left:?}");
    assert_eq!(
        detach(s, "c", later.generation, expiring(60)).await,
        Detached::Stored
    );
    let last = attach(s, "c", &claim(60)).await;
    let left = last.previous.expect("the empty session detached last");
    assert!(left.subscriptions.is_empty() && left.queue.is_empty());
    assert_eq!(count(s).await, 2);
}

/// A second claim of a session held on this node (a takeover) fences the first: whatever the
/// first connection writes afterwards changes nothing.
async fn a_newer_claim_fences_the_older_one(ctx: &Ctx) {
    let s = ctx.store();
    let old = attach(s, "c", &claim(60)).await;
    assert_eq!(enqueue(s, "c", queued("f1"), true).await, Enqueued::Queued);
    let new = attach(s, "c", &claim(60)).await;
    assert!(new.generation > old.generation);
    assert_eq!(new.holder, Holder::Free { parked_on: None });
    // What was forced into the store for the session while the old connection held it goes to
    // the new claim.
    let previous = new
        .previous
        .expect("the session held by the old connection");
    assert_eq!(payloads(&previous.queue), ["f1"]);

    let mut stale = expiring(60);
    stale.subscriptions.push(sub("stale/#"));
    stale.queue.push_back(queued("stale"));
    assert_eq!(
        detach(s, "c", old.generation, stale).await,
        Detached::Fenced
    );
    assert_eq!(
        s.remove_session("c", old.generation).await.expect("remove"),
        Detached::Fenced
    );
    s.save_subscriptions("c", old.generation, &[sub("stale/+")], &[])
        .await
        .expect("save subscriptions");
    assert_eq!(
        enqueue(s, "c", queued("x"), false).await,
        Enqueued::Online,
        "the new connection still holds the session"
    );
    assert_eq!(count(s).await, 1);

    let mut kept = expiring(60);
    kept.subscriptions.push(sub("kept"));
    assert_eq!(detach(s, "c", new.generation, kept).await, Detached::Stored);
    let back = attach(s, "c", &claim(60)).await;
    let session = back.previous.expect("the new connection's session");
    assert_eq!(filters(&session.subscriptions), ["kept"]);
    assert!(session.queue.is_empty(), "{:?}", payloads(&session.queue));
}

async fn a_stale_claim_cannot_remove_the_session_a_newer_claim_stored(ctx: &Ctx) {
    let s = ctx.store();
    let old = attach(s, "c", &claim(0)).await;
    let new = attach(s, "c", &claim(60)).await;
    let mut session = expiring(60);
    session.queue.push_back(queued("q"));
    assert_eq!(
        detach(s, "c", new.generation, session).await,
        Detached::Stored
    );
    // The old connection ends late, with expiry 0.
    assert_eq!(
        s.remove_session("c", old.generation).await.expect("remove"),
        Detached::Fenced,
        "a stale claim removed the session a newer claim stored"
    );
    assert_eq!(count(s).await, 1);
    assert_eq!(enqueue(s, "c", queued("r"), false).await, Enqueued::Queued);
    let back = attach(s, "c", &claim(60)).await;
    assert_eq!(
        payloads(&back.previous.expect("the stored session").queue),
        ["q", "r"]
    );
}

async fn a_stale_claim_cannot_bring_back_a_removed_session(ctx: &Ctx) {
    let s = ctx.store();
    let old = attach(s, "c", &claim(60)).await;
    let new = attach(s, "c", &claim(0)).await;
    // The new connection ends with expiry 0: the session is gone.
    assert_eq!(
        s.remove_session("c", new.generation).await.expect("remove"),
        Detached::Stored
    );
    assert_eq!(count(s).await, 0);
    // The old connection ends late: it must not store its stale copy.
    let mut stale = expiring(60);
    stale.subscriptions.push(sub("stale/#"));
    assert_eq!(
        detach(s, "c", old.generation, stale).await,
        Detached::Fenced,
        "a stale claim stored a session that had ended"
    );
    assert_eq!(count(s).await, 0);
    assert_eq!(
        enqueue(s, "c", queued("x"), false).await,
        Enqueued::NoSession
    );
    assert!(attach(s, "c", &claim(60)).await.previous.is_none());
}

/// On Redis: a claim of a session a connection on another node holds waits for that node to
/// hand it over, then completes with what it handed over. On memory ([`Exception::SingleNode`])
/// every claim is free, and `complete_attach` answers `Superseded`.
async fn a_claim_of_a_session_held_on_another_node_completes_after_hand_over(ctx: &Ctx) {
    let s = ctx.store();
    // Whatever the store: completing a claim that never waited finds nothing pending.
    let free = attach(s, "solo", &claim(60)).await;
    assert_eq!(
        s.complete_attach(&ClientId::from("solo"), free.generation, None)
            .await
            .expect("complete"),
        Completed::Superseded
    );
    if ctx.excepted(Exception::SingleNode) {
        let again = attach(s, "solo", &claim(60)).await;
        assert_eq!(again.holder, Holder::Free { parked_on: None });
        return;
    }
    let b = ctx.other_node("node-b").await;
    let held = attach(&b, "c", &claim(60)).await;
    let claimed = attach(s, "c", &claim(60)).await;
    assert_eq!(claimed.holder, Holder::Elsewhere("node-b".into()));
    assert!(claimed.previous.is_none());
    assert!(claimed.generation > held.generation);
    // Messages for it now go to the claimer.
    assert_eq!(
        enqueue(&b, "c", queued("x"), false).await,
        Enqueued::Elsewhere(NODE.into())
    );
    let mut handed = expiring(60);
    handed.subscriptions.push(sub("h/#"));
    handed.queue.push_back(queued("h1"));
    assert_eq!(
        detach(&b, "c", held.generation, handed).await,
        Detached::HandedOver
    );
    match s
        .complete_attach(&ClientId::from("c"), claimed.generation, None)
        .await
        .expect("complete")
    {
        Completed::Taken(Some(session)) => {
            assert_eq!(filters(&session.subscriptions), ["h/#"]);
            assert_eq!(payloads(&session.queue), ["h1"]);
        }
        other => panic!("the handed-over session, not {other:?}"),
    }
    assert_eq!(enqueue(s, "c", queued("y"), false).await, Enqueued::Online);
    // A stale completion of the same claim is superseded once a newer claim exists.
    let newer = attach(s, "c", &claim(60)).await;
    assert_eq!(
        s.complete_attach(&ClientId::from("c"), claimed.generation, None)
            .await
            .expect("complete"),
        Completed::Superseded
    );
    assert!(newer.generation > claimed.generation);
}

// ---------------------------------------------------------------------------------------------
// Sessions: ending
// ---------------------------------------------------------------------------------------------

async fn remove_ends_the_session(ctx: &Ctx) {
    let s = ctx.store();
    let a = attach(s, "c", &claim(0)).await;
    assert_eq!(enqueue(s, "c", queued("f"), true).await, Enqueued::Queued);
    let keep = attach(s, "keep", &claim(60)).await;
    assert_eq!(
        s.remove_session("c", a.generation).await.expect("remove"),
        Detached::Stored
    );
    assert_eq!(count(s).await, 1);
    assert_eq!(
        enqueue(s, "c", queued("x"), false).await,
        Enqueued::NoSession
    );
    assert_eq!(
        enqueue(s, "c", queued("x"), true).await,
        Enqueued::NoSession
    );
    assert!(attach(s, "c", &claim(0)).await.previous.is_none());
    // Removing a session that does not exist is not an error.
    assert_eq!(
        s.remove_session("never", 1).await.expect("remove"),
        Detached::Stored
    );
    // The other session is untouched.
    assert_eq!(
        enqueue(s, "keep", queued("x"), false).await,
        Enqueued::Online
    );
    assert!(keep.generation > 0);
    assert_eq!(count(s).await, 2);
}

async fn detaching_twice_changes_nothing(ctx: &Ctx) {
    let s = ctx.store();
    let a = attach(s, "c", &claim(60)).await;
    let mut first = expiring(60);
    first.subscriptions.push(sub("first"));
    assert_eq!(detach(s, "c", a.generation, first).await, Detached::Stored);
    let mut second = expiring(30);
    second.subscriptions.push(sub("second"));
    assert_eq!(
        detach(s, "c", a.generation, second).await,
        Detached::Fenced,
        "no connection holds an offline session"
    );
    let back = attach(s, "c", &claim(60)).await;
    let session = back.previous.expect("the first detach's session");
    assert_eq!(filters(&session.subscriptions), ["first"]);
    assert_eq!(session.expiry_secs, 60);
}

/// A session detached at shutdown keeps its connection's will for whoever adopts the node's
/// sessions, who gets it once; a session detached otherwise keeps none. Resuming either gives
/// back the same session. On memory ([`Exception::SingleNode`]) nobody adopts: keeping the
/// will is a plain detach.
async fn a_will_kept_at_shutdown_goes_to_the_adopter_once(ctx: &Ctx) {
    let s = ctx.store();
    let with_will = SessionClaim {
        will: Some(will("w/kept")),
        ..claim(60)
    };
    let kept = attach(s, "kept", &with_will).await;
    let plain = attach(
        s,
        "plain",
        &SessionClaim {
            will: Some(will("w/plain")),
            ..claim(60)
        },
    )
    .await;
    let mut session = expiring(60);
    session.subscriptions.push(sub("k/#"));
    assert_eq!(
        s.detach_session_keeping_will(&ClientId::from("kept"), kept.generation, session)
            .await
            .expect("detach keeping the will"),
        Detached::Stored
    );
    assert_eq!(
        detach(s, "plain", plain.generation, expiring(60)).await,
        Detached::Stored
    );
    assert_eq!(count(s).await, 2);

    if ctx.excepted(Exception::SingleNode) {
        let adoption = s.adopt_sessions(NODE, None).await.expect("adopt");
        assert!(adoption.sessions.is_empty() && !adoption.node_returned);
    } else {
        let b = ctx.other_node("node-b").await;
        let adoption = b.adopt_sessions(NODE, None).await.expect("adopt");
        assert!(!adoption.node_returned);
        let mut wills: Vec<(String, Option<String>)> = adoption
            .sessions
            .iter()
            .map(|a| {
                (
                    a.client_id.to_string(),
                    a.will.as_ref().map(|w| w.message.topic.to_string()),
                )
            })
            .collect();
        wills.sort();
        assert_eq!(
            wills,
            [
                ("kept".to_string(), Some("w/kept".to_string())),
                ("plain".to_string(), None)
            ]
        );
        let again = b.adopt_sessions(NODE, None).await.expect("adopt again");
        assert!(
            again.sessions.iter().all(|a| a.will.is_none()),
            "a will is handed out once"
        );
    }
    // Either way the session resumes as detached.
    let back = attach(s, "kept", &claim(60)).await;
    let session = back.previous.expect("the kept session");
    assert_eq!(filters(&session.subscriptions), ["k/#"]);
}

/// On Redis: a node taking over a departed node's sessions gets their subscriptions and wills;
/// online ones go offline (expiry 0 ones end), parked ones move to it. On memory
/// ([`Exception::SingleNode`]) there is nothing to adopt.
async fn adopting_a_departed_nodes_sessions(ctx: &Ctx) {
    let s = ctx.store();
    if ctx.excepted(Exception::SingleNode) {
        let a = attach(s, "c", &claim(60)).await;
        assert_eq!(
            detach(s, "c", a.generation, expiring(60)).await,
            Detached::Stored
        );
        let adoption = s.adopt_sessions("node-b", None).await.expect("adopt");
        assert!(adoption.sessions.is_empty() && !adoption.node_returned);
        let adoption = s.adopt_sessions(NODE, Some(1)).await.expect("adopt");
        assert!(adoption.sessions.is_empty() && !adoption.node_returned);
        assert_eq!(count(s).await, 1);
        return;
    }
    let b = ctx.other_node("node-b").await;
    // Held online with a will and expiry 60; held online with expiry 0; parked offline.
    let online = attach(
        &b,
        "online",
        &SessionClaim {
            will: Some(will("w/online")),
            ..claim(60)
        },
    )
    .await;
    b.save_subscriptions("online", online.generation, &[sub("o/#")], &[])
        .await
        .expect("save");
    attach(&b, "ending", &claim(0)).await;
    let parked = attach(&b, "parked", &claim(60)).await;
    let mut session = expiring(60);
    session.subscriptions.push(sub("p/+"));
    session.queue.push_back(queued("p1"));
    assert_eq!(
        detach(&b, "parked", parked.generation, session).await,
        Detached::Stored
    );
    assert_eq!(count(s).await, 3);

    let adoption = s.adopt_sessions("node-b", None).await.expect("adopt");
    assert!(!adoption.node_returned);
    let mut found: Vec<_> = adoption
        .sessions
        .iter()
        .map(|a| {
            (
                a.client_id.to_string(),
                a.will.as_ref().map(|w| w.message.topic.to_string()),
                filters(&a.subscriptions),
                a.was_online,
                a.moved,
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("ending".into(), None, vec![], true, false),
            (
                "online".into(),
                Some("w/online".into()),
                vec!["o/#".to_string()],
                true,
                false
            ),
            ("parked".into(), None, vec!["p/+".to_string()], false, false),
        ]
    );
    assert_eq!(count(s).await, 2, "the expiry 0 session ended");
    // Adopted sessions are offline and this node's now.
    assert_eq!(
        enqueue(s, "online", queued("m"), false).await,
        Enqueued::Queued
    );
    let back = attach(s, "parked", &claim(60)).await;
    assert_eq!(back.holder, Holder::Free { parked_on: None });
    assert_eq!(
        payloads(&back.previous.expect("the parked session").queue),
        ["p1"]
    );
    // A second adoption adopts nothing again.
    let again = s.adopt_sessions("node-b", None).await.expect("adopt again");
    assert!(again.sessions.iter().all(|a| a.will.is_none()));
}

// ---------------------------------------------------------------------------------------------
// Sessions: subscriptions
// ---------------------------------------------------------------------------------------------

/// Whatever was written through while the session was held, a resumed session gets the
/// subscriptions it was detached with — no more, no fewer.
async fn a_resumed_session_gets_the_subscriptions_it_was_detached_with(ctx: &Ctx) {
    let s = ctx.store();
    let a = attach(s, "c", &claim(60)).await;
    s.save_subscriptions("c", a.generation, &[sub("a/#"), sub("b")], &[])
        .await
        .expect("save");
    s.save_subscriptions("c", a.generation, &[], &["b".to_string()])
        .await
        .expect("save");
    s.save_subscriptions("c", a.generation, &[], &[])
        .await
        .expect("save nothing");
    let mut session = expiring(60);
    session.subscriptions = vec![sub("c/+"), sub("b")];
    assert_eq!(
        detach(s, "c", a.generation, session).await,
        Detached::Stored
    );
    let back = attach(s, "c", &claim(60)).await;
    let previous = back.previous.expect("the stored session");
    assert_eq!(filters(&previous.subscriptions), ["b", "c/+"]);
}

/// On Redis, the subscriptions a holder writes through (and only its current claim's) reach
/// the claim that takes the session over; on memory ([`Exception::WriteThrough`]) none do.
async fn subscriptions_written_through_reach_the_next_claim(ctx: &Ctx) {
    let s = ctx.store();
    let a = attach(s, "c", &claim(60)).await;
    s.save_subscriptions("c", a.generation, &[sub("a/#"), sub("x")], &[])
        .await
        .expect("save");
    s.save_subscriptions("c", a.generation, &[], &["x".to_string()])
        .await
        .expect("save");
    let b = attach(s, "c", &claim(60)).await;
    // The old claim's writes change nothing now.
    s.save_subscriptions("c", a.generation, &[sub("stale")], &["a/#".to_string()])
        .await
        .expect("stale save");
    let c = attach(s, "c", &claim(60)).await;
    let (written, after_stale) = (
        filters(&b.previous.expect("the held session").subscriptions),
        filters(&c.previous.expect("the held session").subscriptions),
    );
    if ctx.excepted(Exception::WriteThrough) {
        assert!(written.is_empty() && after_stale.is_empty());
    } else {
        assert_eq!(written, ["a/#"]);
        assert_eq!(after_stale, ["a/#"]);
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions: queues
// ---------------------------------------------------------------------------------------------

/// With at most 3 queued messages per session.
async fn messages_for_an_offline_session_queue_in_order_up_to_the_limit(ctx: &Ctx) {
    let s = ctx.store();
    let a = attach(s, "c", &claim(60)).await;
    let mut session = expiring(60);
    session.queue.push_back(queued_qos("o1", QoS::AtLeastOnce));
    assert_eq!(
        detach(s, "c", a.generation, session).await,
        Detached::Stored
    );
    let q0 = queued_qos("a", QoS::AtMostOnce);
    let q2 = QueuedMessage::new(
        Arc::new(rich_message("t/2", "b")),
        QoS::ExactlyOnce,
        true,
        vec![4, 2],
    );
    assert_eq!(enqueue(s, "c", q0.clone(), false).await, Enqueued::Queued);
    assert_eq!(enqueue(s, "c", q2.clone(), true).await, Enqueued::Queued);
    assert_eq!(enqueue(s, "c", queued("c"), false).await, Enqueued::Full);
    assert_eq!(enqueue(s, "c", queued("d"), true).await, Enqueued::Full);
    let back = attach(s, "c", &claim(60)).await;
    let queue = back.previous.expect("the stored session").queue;
    assert_eq!(payloads(&queue), ["o1", "a", "b"]);
    assert_eq!(queue[1], q0);
    assert_eq!(
        queue[2], q2,
        "QoS, retain, ids and the message kept exactly"
    );
    assert_eq!(queue[0].qos, QoS::AtLeastOnce);
    // Queueing starts over once the queue was taken.
    assert_eq!(
        detach(s, "c", back.generation, expiring(60)).await,
        Detached::Stored
    );
    for p in ["x", "y", "z"] {
        assert_eq!(enqueue(s, "c", queued(p), false).await, Enqueued::Queued);
    }
    assert_eq!(enqueue(s, "c", queued("w"), false).await, Enqueued::Full);
}

/// The admin API's session lookup: what the store holds of a session, read without claiming
/// it, online and offline, until the session is removed.
async fn a_session_summary_follows_the_session_online_and_offline(ctx: &Ctx) {
    let s = ctx.store();
    let summary = |id: &'static str| async move { s.session_summary(id).await.expect("summary") };
    assert_eq!(summary("c").await, None, "no such session yet");
    let a = attach(s, "c", &claim(120)).await;
    let online = summary("c").await.expect("an online session");
    assert!(online.online);
    let expected_node = if ctx.excepted(Exception::NoNodeIds) {
        None
    } else {
        Some(NODE.to_string())
    };
    assert_eq!(online.node, expected_node, "the node that holds it");
    assert_eq!((online.queued, online.inflight), (0, 0));
    assert_eq!(
        enqueue(s, "c", queued("forced"), true).await,
        Enqueued::Queued
    );
    assert_eq!(summary("c").await.expect("online").queued, 1);
    let before = SystemTime::now();
    let mut session = expiring(120);
    session.queue.push_back(queued("own"));
    session.inflight.push(InflightMessage {
        packet_id: 7,
        state: InflightState::AwaitingAck,
        queued: queued("sent"),
    });
    assert_eq!(
        detach(s, "c", a.generation, session).await,
        Detached::Stored
    );
    let offline = summary("c").await.expect("an offline session");
    assert!(!offline.online);
    assert_eq!(offline.expiry_secs, Some(120));
    assert_eq!(
        (offline.queued, offline.inflight),
        (2, 1),
        "own and forced queued, one sent"
    );
    let before_ms = before
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis();
    let at = u128::from(offline.disconnected_at_ms.expect("when it went offline"));
    assert!(
        at + 1_000 >= before_ms && at <= before_ms + 60_000,
        "disconnected at {at} ms, detached at {before_ms} ms"
    );
    assert_eq!(
        enqueue(s, "c", queued("later"), false).await,
        Enqueued::Queued
    );
    assert_eq!(summary("c").await.expect("offline").queued, 3);
    let back = attach(s, "c", &claim(120)).await;
    s.remove_session("c", back.generation)
        .await
        .expect("remove");
    assert_eq!(summary("c").await, None, "removed");
}

/// With at most 3 queued messages per session: messages forced into the store while a
/// connection holds the session are bounded too, and follow the connection's own queue when it
/// detaches, as far as the limit allows.
async fn messages_forced_while_online_follow_the_sessions_own_queue(ctx: &Ctx) {
    let s = ctx.store();
    let a = attach(s, "c", &claim(60)).await;
    for p in ["f1", "f2", "f3"] {
        assert_eq!(enqueue(s, "c", queued(p), true).await, Enqueued::Queued);
    }
    assert_eq!(enqueue(s, "c", queued("f4"), true).await, Enqueued::Full);
    assert_eq!(enqueue(s, "c", queued("n"), false).await, Enqueued::Online);
    let mut own = expiring(60);
    own.queue.extend([queued("o1"), queued("o2")]);
    assert_eq!(detach(s, "c", a.generation, own).await, Detached::Stored);
    let back = attach(s, "c", &claim(60)).await;
    assert_eq!(
        payloads(&back.previous.expect("the stored session").queue),
        ["o1", "o2", "f1"]
    );
}

// ---------------------------------------------------------------------------------------------
// Sessions: expiry and counts
// ---------------------------------------------------------------------------------------------

async fn an_offline_session_expires_at_its_interval(ctx: &Ctx) {
    let s = ctx.store();
    let a = attach(s, "c", &claim(10)).await;
    let mut session = expiring(10);
    session.subscriptions.push(sub("e/#"));
    session.queue.push_back(queued("e1"));
    let before = SystemTime::now();
    assert_eq!(
        detach(s, "c", a.generation, session).await,
        Detached::Stored
    );
    let after = SystemTime::now();
    assert_eq!(enqueue(s, "c", queued("e2"), false).await, Enqueued::Queued);

    let not_yet = before + Duration::from_secs(10) - Duration::from_millis(1);
    assert!(
        sweep(s, not_yet).await.is_empty(),
        "taken before its expiry"
    );
    assert_eq!(count(s).await, 1);

    let expired = sweep(s, after + Duration::from_secs(10)).await;
    assert_eq!(expired.len(), 1);
    let e = &expired[0];
    assert_eq!(&*e.client_id, "c");
    if ctx.excepted(Exception::NoNodeIds) {
        assert_eq!(e.parked_on, None);
    } else {
        assert_eq!(e.parked_on.as_deref(), Some(NODE));
    }
    assert_eq!(e.session.expiry_secs, 10);
    assert_eq!(filters(&e.session.subscriptions), ["e/#"]);
    assert_eq!(payloads(&e.session.queue), ["e1", "e2"]);
    assert!(e.session.disconnected_at.is_some());

    assert_eq!(count(s).await, 0);
    assert!(sweep(s, after + Duration::from_secs(3600)).await.is_empty());
    assert_eq!(
        enqueue(s, "c", queued("x"), false).await,
        Enqueued::NoSession
    );
    assert!(attach(s, "c", &claim(10)).await.previous.is_none());
}

async fn the_sweep_takes_only_offline_sessions_that_are_due(ctx: &Ctx) {
    let s = ctx.store();
    let soon = attach(s, "soon", &claim(5)).await;
    let late = attach(s, "late", &claim(100)).await;
    attach(s, "online", &claim(1)).await;
    assert_eq!(
        detach(s, "soon", soon.generation, expiring(5)).await,
        Detached::Stored
    );
    assert_eq!(
        detach(s, "late", late.generation, expiring(100)).await,
        Detached::Stored
    );
    // A session resumed before its expiry is not swept: its expiry starts again when it next
    // goes offline.
    let resumed = attach(s, "resumed", &claim(5)).await;
    assert_eq!(
        detach(s, "resumed", resumed.generation, expiring(5)).await,
        Detached::Stored
    );
    attach(s, "resumed", &claim(5)).await;

    let now = SystemTime::now();
    let taken = sweep(s, now + Duration::from_secs(30)).await;
    let ids: Vec<&str> = taken.iter().map(|e| &*e.client_id).collect();
    assert_eq!(ids, ["soon"]);
    assert_eq!(count(s).await, 3);
    let taken = sweep(s, now + Duration::from_secs(86_400)).await;
    let ids: Vec<&str> = taken.iter().map(|e| &*e.client_id).collect();
    assert_eq!(ids, ["late"], "online sessions never expire");
    assert_eq!(count(s).await, 2);
    assert_eq!(
        enqueue(s, "online", queued("x"), false).await,
        Enqueued::Online
    );
    assert_eq!(
        enqueue(s, "resumed", queued("x"), false).await,
        Enqueued::Online
    );
}

/// MQTT 5: a session expiry interval of 0xFFFFFFFF means the session never expires.
async fn a_session_that_never_expires_is_never_swept(ctx: &Ctx) {
    let s = ctx.store();
    let a = attach(s, "c", &claim(u32::MAX)).await;
    assert_eq!(
        detach(s, "c", a.generation, expiring(u32::MAX)).await,
        Detached::Stored
    );
    // Beyond 0xFFFFFFFF seconds (136 years) from now.
    let far = SystemTime::now() + Duration::from_secs(200 * 365 * 86_400);
    assert!(
        sweep(s, far).await.is_empty(),
        "a session that never expires was swept"
    );
    assert_eq!(count(s).await, 1);
    let back = attach(s, "c", &claim(u32::MAX)).await;
    assert_eq!(
        back.previous.expect("the stored session").expiry_secs,
        u32::MAX
    );
}

async fn sessions_are_counted_online_and_offline(ctx: &Ctx) {
    let s = ctx.store();
    assert_eq!(count(s).await, 0);
    let a = attach(s, "a", &claim(0)).await;
    let b = attach(s, "b", &claim(5)).await;
    assert_eq!(count(s).await, 2);
    // A takeover is the same session.
    let a2 = attach(s, "a", &claim(0)).await;
    assert_eq!(count(s).await, 2);
    assert_eq!(
        detach(s, "b", b.generation, expiring(5)).await,
        Detached::Stored
    );
    assert_eq!(count(s).await, 2);
    assert_eq!(
        s.remove_session("a", a2.generation).await.expect("remove"),
        Detached::Stored
    );
    assert!(a2.generation > a.generation);
    assert_eq!(count(s).await, 1);
    let taken = sweep(s, SystemTime::now() + Duration::from_secs(6)).await;
    assert_eq!(taken.len(), 1);
    assert_eq!(count(s).await, 0);
}

// ---------------------------------------------------------------------------------------------
// Retained messages
// ---------------------------------------------------------------------------------------------

async fn retained_set_replace_and_delete(ctx: &Ctx) {
    let s = ctx.store();
    assert_eq!(retained_count(s).await, 0);
    assert_eq!(
        retain(s, retained_message("a/b", "1")).await,
        Retained::Stored
    );
    assert_eq!(
        retain(s, retained_message("a/c", "x")).await,
        Retained::Stored
    );
    assert_eq!(retained_count(s).await, 2);
    assert_eq!(retained_payload(s, "a/b").await.as_deref(), Some("1"));
    assert_eq!(
        retain(s, retained_message("a/b", "2")).await,
        Retained::Stored
    );
    assert_eq!(
        retained_count(s).await,
        2,
        "a replacement is not a new message"
    );
    assert_eq!(retained_payload(s, "a/b").await.as_deref(), Some("2"));
    assert_eq!(
        retain(s, retained_message("a/b", "")).await,
        Retained::Deleted
    );
    assert_eq!(retained_count(s).await, 1);
    assert_eq!(retained_payload(s, "a/b").await, None);
    assert_eq!(matching(s, "a/#").await, ["a/c"]);
    // Deleting what is not there is a deletion too.
    assert_eq!(
        retain(s, retained_message("none", "")).await,
        Retained::Deleted
    );
    assert_eq!(retained_count(s).await, 1);
    // Retained again after a deletion.
    assert_eq!(
        retain(s, retained_message("a/b", "3")).await,
        Retained::Stored
    );
    assert_eq!(retained_payload(s, "a/b").await.as_deref(), Some("3"));
    assert_eq!(retained_count(s).await, 2);
}

async fn retained_messages_round_trip_exactly(ctx: &Ctx) {
    let s = ctx.store();
    let rich = rich_message("r/rich", "payload \u{e9}");
    let mut plain = message("r/plain", "p", QoS::AtMostOnce);
    plain.retain = true;
    plain.publisher = Some("pub".into());
    assert_eq!(retain(s, Arc::new(rich.clone())).await, Retained::Stored);
    assert_eq!(retain(s, Arc::new(plain.clone())).await, Retained::Stored);
    let mut found: Vec<Message> = s
        .retained_matching("r/+")
        .await
        .expect("look-up")
        .iter()
        .map(|m| (**m).clone())
        .collect();
    found.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(found, [plain, rich]);
}

async fn retained_matching_follows_wildcards_and_dollar_topics(ctx: &Ctx) {
    let s = ctx.store();
    for t in [
        "a", "a/b", "a/b/c", "a/c", "b/b", "/x", "a//c", "$SYS/x", "$SYS/x/y", "$other",
    ] {
        assert_eq!(retain(s, retained_message(t, "v")).await, Retained::Stored);
    }
    let cases: [(&str, &[&str]); 14] = [
        ("a/b", &["a/b"]),
        ("a/b/c/d", &[]),
        ("#", &["/x", "a", "a//c", "a/b", "a/b/c", "a/c", "b/b"]),
        ("a/#", &["a", "a//c", "a/b", "a/b/c", "a/c"]),
        ("a/+", &["a/b", "a/c"]),
        ("+/b", &["a/b", "b/b"]),
        ("+/+", &["/x", "a/b", "a/c", "b/b"]),
        ("+", &["a"]),
        ("+/x", &["/x"]),
        ("a/+/c", &["a//c", "a/b/c"]),
        ("+/+/#", &["/x", "a//c", "a/b", "a/b/c", "a/c", "b/b"]),
        ("$SYS/#", &["$SYS/x", "$SYS/x/y"]),
        ("$SYS/+", &["$SYS/x"]),
        ("$other", &["$other"]),
    ];
    for (filter, expected) in cases {
        assert_eq!(matching(s, filter).await, expected, "filter {filter:?}");
    }
    assert!(matching(s, "b").await.is_empty());
}

async fn expired_retained_messages_are_not_matched(ctx: &Ctx) {
    let s = ctx.store();
    let mut past = message("e/past", "p", QoS::AtLeastOnce);
    past.expires_at = Some(SystemTime::now() - Duration::from_secs(1));
    let mut soon = message("e/soon", "s", QoS::AtLeastOnce);
    soon.expires_at = Some(SystemTime::now() + Duration::from_millis(300));
    let mut later = message("e/later", "l", QoS::AtLeastOnce);
    later.expires_at = Some(SystemTime::now() + Duration::from_secs(3600));
    for m in [past, soon, later] {
        assert_eq!(retain(s, Arc::new(m)).await, Retained::Stored);
    }
    let found = matching(s, "e/#").await;
    assert!(
        !found.contains(&"e/past".to_string()),
        "an expired message was matched: {found:?}"
    );
    assert!(found.contains(&"e/later".to_string()));
    // The short one expires: polled, with a deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = matching(s, "e/#").await;
        if found == ["e/later"] {
            break;
        }
        assert!(Instant::now() < deadline, "e/soon never expired: {found:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(retained_payload(s, "e/soon").await, None);
    assert_eq!(
        retained_count(s).await,
        1,
        "a look-up drops expired messages from the count"
    );
}

/// At most 2 retained messages.
async fn retained_count_limit_refuses_new_topics_only(ctx: &Ctx) {
    let s = ctx.store();
    assert_eq!(
        retain(s, retained_message("a", "1")).await,
        Retained::Stored
    );
    assert_eq!(
        retain(s, retained_message("b", "1")).await,
        Retained::Stored
    );
    assert_eq!(
        retain(s, retained_message("c", "1")).await,
        Retained::CountFull
    );
    assert_eq!(retained_payload(s, "c").await, None);
    assert_eq!(
        retain(s, retained_message("a", "2")).await,
        Retained::Stored
    );
    assert_eq!(retained_payload(s, "a").await.as_deref(), Some("2"));
    assert_eq!(retained_count(s).await, 2);
    assert_eq!(
        retain(s, retained_message("b", "")).await,
        Retained::Deleted
    );
    assert_eq!(
        retain(s, retained_message("c", "1")).await,
        Retained::Stored
    );
    assert_eq!(
        retain(s, retained_message("d", "1")).await,
        Retained::CountFull
    );
    assert_eq!(retained_count(s).await, 2);
    assert_eq!(matching(s, "#").await, ["a", "c"]);
}

/// At most 10 bytes of retained payloads.
async fn retained_bytes_limit_counts_what_a_message_replaces(ctx: &Ctx) {
    let s = ctx.store();
    assert_eq!(
        retain(s, retained_message("a", "123456")).await,
        Retained::Stored
    );
    assert_eq!(
        retain(s, retained_message("b", "1234")).await,
        Retained::Stored
    );
    assert_eq!(
        retain(s, retained_message("c", "1")).await,
        Retained::BytesFull
    );
    assert_eq!(
        retain(s, retained_message("a", "1234567")).await,
        Retained::BytesFull
    );
    assert_eq!(retained_payload(s, "a").await.as_deref(), Some("123456"));
    assert_eq!(
        retain(s, retained_message("a", "12345")).await,
        Retained::Stored
    );
    assert_eq!(
        retain(s, retained_message("c", "1")).await,
        Retained::Stored
    );
    assert_eq!(retained_count(s).await, 3);
    assert_eq!(
        retain(s, retained_message("d", "1")).await,
        Retained::BytesFull
    );
    assert_eq!(
        retain(s, retained_message("b", "")).await,
        Retained::Deleted
    );
    assert_eq!(
        retain(s, retained_message("d", "1234")).await,
        Retained::Stored
    );
    assert_eq!(
        retain(s, retained_message("e", "1")).await,
        Retained::BytesFull
    );
    assert_eq!(matching(s, "#").await, ["a", "c", "d"]);
}

/// At most 2 retained messages: an expired one does not keep a new topic out.
async fn expired_retained_messages_make_room(ctx: &Ctx) {
    let s = ctx.store();
    let mut gone = message("gone", "g", QoS::AtLeastOnce);
    gone.retain = true;
    gone.expires_at = Some(SystemTime::now() - Duration::from_millis(10));
    assert_eq!(retain(s, Arc::new(gone)).await, Retained::Stored);
    assert_eq!(
        retain(s, retained_message("b", "1")).await,
        Retained::Stored
    );
    assert_eq!(
        retain(s, retained_message("c", "1")).await,
        Retained::Stored
    );
    assert_eq!(retained_count(s).await, 2);
    assert_eq!(
        retain(s, retained_message("d", "1")).await,
        Retained::CountFull
    );
    assert_eq!(matching(s, "#").await, ["b", "c"]);
}

/// No limit applies by default (a payload's own size limit is the broker's, see the module
/// doc): a large payload is kept byte for byte.
async fn large_retained_payloads_are_kept_whole(ctx: &Ctx) {
    let s = ctx.store();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut m = message("big", "", QoS::AtLeastOnce);
    m.payload = Bytes::from(payload.clone());
    m.retain = true;
    assert_eq!(retain(s, Arc::new(m)).await, Retained::Stored);
    let found = s.retained_matching("big").await.expect("look-up");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].payload, Bytes::from(payload));
}
