//! The Redis store against a real `redis-server`: the in-memory store's tests ported, the same
//! scenario run on both stores with identical outcomes, encoding round trips, TTLs, two nodes on
//! one Redis, a Redis restart, and a broker serving MQTT clients on top of Redis.

mod common;
mod common_redis;
mod mqtt5_support;

use bytes::Bytes;
use common_redis::{eventually, RedisServer};
use mqtt5_support::{end_connection, publish_qos1, subscribe, v5_client};
use rumqttc::v5::mqttbytes::v5::PubAckReason;
use starling_broker::auth::Auth;
use starling_broker::broker::Broker;
use starling_broker::message::{ClientId, Message, MessageProperties};
use starling_broker::protocol::{QoS, RetainForwardRule};
use starling_broker::router::SubscriptionOptions;
use starling_broker::store::{
    Attached, Completed, Detached, Enqueued, Holder, InflightMessage, InflightState, MemoryStore,
    QueuedMessage, RedisStore, RedisStoreConfig, SessionClaim, Store, StoreError, StoredSession,
    StoredSubscription, StoredWill,
};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

fn config(server: &RedisServer, node: &str, max_queued: usize) -> RedisStoreConfig {
    let mut config = RedisStoreConfig::new(server.target(), node, max_queued);
    config.operation_timeout = Duration::from_secs(2);
    config
}

async fn store(server: &RedisServer, max_queued: usize) -> RedisStore {
    RedisStore::connect(config(server, "node-a", max_queued))
        .await
        .expect("connect to redis")
}

/// Polls `check` until it returns `Some`, for at most [`WAIT`].
/// An empty session with this expiry interval.
fn expiring(expiry_secs: u32) -> StoredSession {
    StoredSession {
        expiry_secs,
        ..Default::default()
    }
}

/// Claims a session with a default claim (expiry 0, no will, no clean start).
async fn attach(store: &dyn Store, id: &ClientId) -> Attached {
    store
        .attach_session(id, &SessionClaim::default())
        .await
        .expect("attach")
}

fn message(topic: &str, payload: &[u8]) -> Message {
    Message {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: MessageProperties::default(),
        expires_at: None,
        publisher: None,
        received_at: None,
    }
}

fn queued(payload: &str) -> QueuedMessage {
    QueuedMessage::new(
        Arc::new(message("t", payload.as_bytes())),
        QoS::AtLeastOnce,
        false,
        vec![],
    )
}

fn payloads(session: &StoredSession) -> Vec<Bytes> {
    session
        .queue
        .iter()
        .map(|q| q.message.payload.clone())
        .collect()
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

async fn pttl(con: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(con)
        .await
        .expect("PTTL")
}

async fn exists(con: &mut redis::aio::MultiplexedConnection, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(con)
        .await
        .expect("EXISTS")
        == 1
}

// ---------------------------------------------------------------------------------------------
// The in-memory store's tests, on Redis
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn offline_queue_is_bounded_and_returned_on_attach() {
    let server = RedisServer::start().await;
    let store = store(&server, 2).await;
    let id: ClientId = "c".into();
    assert_eq!(
        store.enqueue("c", queued("x"), false).await.ok(),
        Some(Enqueued::NoSession)
    );
    let held = attach(&store, &id).await;
    assert_eq!(
        store.enqueue("c", queued("x"), false).await.ok(),
        Some(Enqueued::Online)
    );
    store
        .detach_session(&id, held.generation, expiring(60))
        .await
        .expect("detach");
    for p in ["1", "2"] {
        assert_eq!(
            store.enqueue("c", queued(p), false).await.ok(),
            Some(Enqueued::Queued)
        );
    }
    assert_eq!(
        store.enqueue("c", queued("3"), false).await.ok(),
        Some(Enqueued::Full)
    );
    let session = attach(&store, &id).await.previous.expect("session");
    assert_eq!(payloads(&session), ["1", "2"]);
}

#[tokio::test]
async fn messages_forced_while_detaching_follow_the_session_queue() {
    let server = RedisServer::start().await;
    let store = store(&server, 10).await;
    let id: ClientId = "c".into();
    let held = attach(&store, &id).await;
    assert_eq!(
        store.enqueue("c", queued("late"), true).await.ok(),
        Some(Enqueued::Queued)
    );
    let mut own = expiring(60);
    own.queue.push_back(queued("early"));
    store
        .detach_session(&id, held.generation, own)
        .await
        .expect("detach");
    let session = attach(&store, &id).await.previous.expect("session");
    assert_eq!(payloads(&session), ["early", "late"]);
}

#[tokio::test]
async fn expiry_removes_and_reattach_returns_the_session() {
    let server = RedisServer::start().await;
    let store = store(&server, 10).await;
    let id: ClientId = "c".into();
    let held = attach(&store, &id).await;
    store
        .detach_session(&id, held.generation, expiring(0))
        .await
        .expect("detach");
    let expired = store
        .take_expired_sessions(SystemTime::now() + Duration::from_secs(1))
        .await
        .expect("sweep");
    assert_eq!(expired.len(), 1);
    assert_eq!(store.session_count().await.ok(), Some(0));
    let held = attach(&store, &id).await;
    store
        .detach_session(&id, held.generation, expiring(60))
        .await
        .expect("detach");
    assert!(attach(&store, &id).await.previous.is_some());
}

#[tokio::test]
async fn retained_set_match_and_delete() {
    let server = RedisServer::start().await;
    let store = store(&server, 10).await;
    let mut m = queued("v").message.as_ref().clone();
    m.topic = "a/b".into();
    store.set_retained(Arc::new(m.clone())).await.expect("set");
    assert_eq!(
        store.retained_matching("a/+").await.expect("match").len(),
        1
    );
    assert_eq!(
        store.retained_matching("b/#").await.expect("match").len(),
        0
    );
    m.payload = Bytes::new();
    store.set_retained(Arc::new(m)).await.expect("delete");
    assert_eq!(store.retained_count().await.ok(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// Same behaviour as the in-memory store
// ---------------------------------------------------------------------------------------------

fn describe(session: Option<&StoredSession>) -> String {
    match session {
        None => "none".to_string(),
        Some(s) => format!(
            "expiry={} subs={:?} queue={:?} inflight={} qos2={:?} disconnected={}",
            s.expiry_secs,
            s.subscriptions
                .iter()
                .map(|s| s.filter.as_str())
                .collect::<Vec<_>>(),
            payloads(s),
            s.inflight.len(),
            s.incoming_qos2,
            s.disconnected_at.is_some(),
        ),
    }
}

/// Drives a store through every path of the session and retained-message rules and records
/// what it answers.
async fn scenario(store: &dyn Store) -> Vec<String> {
    let mut trace = Vec::new();
    let id: ClientId = "c".into();
    macro_rules! note {
        ($label:expr, $value:expr) => {
            trace.push(format!("{}: {:?}", $label, $value))
        };
    }
    note!(
        "enqueue unknown",
        store.enqueue("c", queued("a"), false).await.ok()
    );
    note!("count", store.session_count().await.ok());
    let attached = attach(store, &id).await;
    note!("attach new", describe(attached.previous.as_ref()));
    note!(
        "enqueue online",
        store.enqueue("c", queued("b"), false).await.ok()
    );
    note!(
        "force online",
        store.enqueue("c", queued("f1"), true).await.ok()
    );
    let held = attach(store, &id).await;
    note!("takeover", describe(held.previous.as_ref()));
    note!(
        "stale detach",
        store
            .detach_session(&id, attached.generation, StoredSession::default())
            .await
            .ok()
    );
    for p in ["f2", "f3", "f4", "f5"] {
        note!(p, store.enqueue("c", queued(p), true).await.ok());
    }
    let mut own = StoredSession {
        expiry_secs: 60,
        subscriptions: vec![StoredSubscription {
            filter: "x/#".into(),
            options: options(QoS::AtLeastOnce),
        }],
        incoming_qos2: vec![7, 3],
        ..Default::default()
    };
    own.queue.extend([queued("o1"), queued("o2")]);
    note!(
        "detach",
        store.detach_session(&id, held.generation, own).await.ok()
    );
    note!(
        "enqueue full",
        store.enqueue("c", queued("g"), false).await.ok()
    );
    note!("count", store.session_count().await.ok());
    // Detaching an offline session again changes nothing: no connection holds it.
    note!(
        "detach again",
        store
            .detach_session(&id, held.generation, expiring(30),)
            .await
            .ok()
    );
    let back = attach(store, &id).await;
    note!("attach offline", describe(back.previous.as_ref()));
    note!(
        "stale remove",
        store.remove_session("c", held.generation).await.ok()
    );
    note!(
        "remove",
        store.remove_session("c", back.generation).await.ok()
    );
    note!(
        "enqueue removed",
        store.enqueue("c", queued("h"), true).await.ok()
    );
    note!("count", store.session_count().await.ok());
    let fresh = attach(store, &id).await;
    note!("attach removed", describe(fresh.previous.as_ref()));
    note!(
        "detach fresh",
        store
            .detach_session(&id, fresh.generation, expiring(10),)
            .await
            .ok()
    );
    note!(
        "enqueue offline",
        store.enqueue("c", queued("i"), false).await.ok()
    );
    let now = SystemTime::now();
    note!(
        "sweep early",
        store.take_expired_sessions(now).await.map(|v| v.len()).ok()
    );
    let swept = store
        .take_expired_sessions(now + Duration::from_secs(11))
        .await
        .expect("sweep");
    for gone in &swept {
        note!(
            format!("swept {}", gone.client_id),
            describe(Some(&gone.session))
        );
    }
    note!("count", store.session_count().await.ok());
    // An online session is never swept.
    attach(store, &id).await;
    let later = now + Duration::from_secs(3600);
    note!(
        "sweep online",
        store
            .take_expired_sessions(later)
            .await
            .map(|v| v.len())
            .ok()
    );

    for (topic, payload) in [("a/b", "1"), ("a/c", "2"), ("b", "3"), ("a/b/c", "4")] {
        store
            .set_retained(Arc::new(message(topic, payload.as_bytes())))
            .await
            .expect("retain");
    }
    note!("retained", store.retained_count().await.ok());
    for filter in ["a/+", "#", "b", "a/#", "c", "+/+/c"] {
        let mut found: Vec<_> = store
            .retained_matching(filter)
            .await
            .expect("match")
            .iter()
            .map(|m| (m.topic.to_string(), m.payload.clone()))
            .collect();
        found.sort();
        note!(filter, found);
    }
    store
        .set_retained(Arc::new(message("a/b", b"")))
        .await
        .expect("delete");
    store
        .set_retained(Arc::new(message("b", b"5")))
        .await
        .expect("replace");
    note!("retained", store.retained_count().await.ok());
    note!(
        "b",
        store
            .retained_matching("b")
            .await
            .expect("match")
            .iter()
            .map(|m| m.payload.clone())
            .collect::<Vec<_>>()
    );
    let mut gone = message("gone", b"x");
    gone.expires_at = Some(SystemTime::now() - Duration::from_secs(1));
    store.set_retained(Arc::new(gone)).await.expect("retain");
    note!("with expired", store.retained_count().await.ok());
    note!(
        "gone",
        store.retained_matching("gone").await.map(|v| v.len()).ok()
    );
    note!(
        "all",
        store.retained_matching("#").await.map(|v| v.len()).ok()
    );
    note!("after match", store.retained_count().await.ok());
    trace
}

#[tokio::test]
async fn redis_and_memory_stores_answer_alike() {
    let server = RedisServer::start().await;
    let redis = store(&server, 3).await;
    let memory = MemoryStore::new(3);
    let expected = scenario(&memory).await;
    let actual = scenario(&redis).await;
    for (i, (m, r)) in expected.iter().zip(&actual).enumerate() {
        assert_eq!(m, r, "step {i} differs (memory, redis)");
    }
    assert_eq!(expected.len(), actual.len());
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

fn rich_message() -> Message {
    Message {
        topic: "sensors/ü/temp".into(),
        payload: Bytes::from_static(&[0x00, 0xff, 0xfe, 0xc3, 0x28, b'\r', b'\n', 0x80]),
        qos: QoS::ExactlyOnce,
        retain: true,
        properties: MessageProperties {
            payload_format_indicator: Some(0),
            content_type: Some("application/x-raw".into()),
            response_topic: Some("replies/1".into()),
            correlation_data: Some(Bytes::from_static(&[0xde, 0xad, 0x00, 0xbe, 0xef])),
            user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
        },
        expires_at: Some(SystemTime::now() + Duration::new(3600, 123_456_789)),
        publisher: Some("publisher-1".into()),
        received_at: None,
    }
}

#[tokio::test]
async fn sessions_and_retained_messages_round_trip_exactly() {
    let server = RedisServer::start().await;
    let store = store(&server, 100).await;
    let rich = Arc::new(rich_message());
    let mut queued_rich = QueuedMessage::new(rich.clone(), QoS::AtLeastOnce, true, vec![1, 42]);
    queued_rich.maybe_sent = true;
    let original = StoredSession {
        expiry_secs: 120,
        subscriptions: vec![
            StoredSubscription {
                filter: "$share/g/jobs/+".into(),
                options: options(QoS::AtMostOnce),
            },
            StoredSubscription {
                filter: "sensors/#".into(),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainForwardRule::OnNewSubscribe,
                    identifier: Some(42),
                },
            },
        ],
        inflight: vec![
            InflightMessage {
                packet_id: 1,
                state: InflightState::AwaitingAck,
                queued: queued_rich.clone(),
            },
            InflightMessage {
                packet_id: 65535,
                state: InflightState::AwaitingComplete,
                queued: queued("plain"),
            },
        ],
        queue: [queued_rich.clone(), queued("second")].into(),
        incoming_qos2: vec![9, 2, 65535],
        disconnected_at: None,
    };
    let id: ClientId = "client/with:odd{chars}".into();
    let held = attach(&store, &id).await;
    let before = SystemTime::now() - Duration::from_millis(1);
    store
        .detach_session(&id, held.generation, original.clone())
        .await
        .expect("detach");
    let mut back = attach(&store, &id).await.previous.expect("session");
    let at = back.disconnected_at.take().expect("disconnect time");
    assert!(at >= before && at <= SystemTime::now(), "{at:?}");
    assert_eq!(back, original);
    assert_eq!(back.queue[0].message.payload, rich.payload);

    store.set_retained(rich.clone()).await.expect("retain");
    let found = store
        .retained_matching("sensors/+/temp")
        .await
        .expect("match");
    assert_eq!(found.len(), 1);
    assert_eq!(*found[0], *rich);
}

#[tokio::test]
async fn unreadable_entries_are_dropped_not_fatal() {
    let server = RedisServer::start().await;
    let store = store(&server, 10).await;
    let id: ClientId = "c".into();
    let held = attach(&store, &id).await;
    let mut own = expiring(60);
    own.queue.push_back(queued("good"));
    store
        .detach_session(&id, held.generation, own)
        .await
        .expect("detach");
    let mut con = server.client().await;
    let _: () = redis::cmd("RPUSH")
        .arg("starling:v1:queue:c")
        .arg(&b"\x09garbage"[..])
        .arg(&b""[..])
        .query_async(&mut con)
        .await
        .expect("push garbage");
    let _: () = redis::cmd("SET")
        .arg("starling:v1:retained:r")
        .arg(&b"\x01\xff\xff"[..])
        .query_async(&mut con)
        .await
        .expect("set garbage");
    let session = attach(&store, &id).await.previous.expect("session");
    assert_eq!(payloads(&session), ["good"]);
    assert!(store
        .retained_matching("r")
        .await
        .expect("match")
        .is_empty());
}

// ---------------------------------------------------------------------------------------------
// Key schema and TTLs
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn keys_follow_the_documented_schema() {
    let server = RedisServer::start().await;
    let mut config = config(&server, "node-x", 10);
    config.key_prefix = "test:".into();
    let store = RedisStore::connect(config).await.expect("connect");
    let other = store_with_prefix(&server, "other:").await;
    let id: ClientId = "c".into();
    let held = attach(&store, &id).await;
    let mut con = server.client().await;
    let mut online: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg("test:v1:session:c")
        .query_async(&mut con)
        .await
        .expect("HGETALL");
    online.sort();
    let field = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(
        online,
        [
            field("expiry", "0"),
            field("gen", &held.generation.to_string()),
            field("node", "node-x"),
            field("state", "online"),
        ]
    );
    let held_here: Vec<String> = redis::cmd("SMEMBERS")
        .arg("test:v1:node:node-x:sessions")
        .query_async(&mut con)
        .await
        .expect("SMEMBERS");
    assert_eq!(held_here, ["c"]);
    assert_eq!(
        pttl(&mut con, "test:v1:session:c").await,
        -1,
        "online: no TTL"
    );
    let mut own = StoredSession {
        expiry_secs: 60,
        subscriptions: vec![StoredSubscription {
            filter: "f".into(),
            options: options(QoS::AtLeastOnce),
        }],
        incoming_qos2: vec![5],
        ..Default::default()
    };
    own.queue.push_back(queued("q"));
    own.inflight.push(InflightMessage {
        packet_id: 3,
        state: InflightState::AwaitingAck,
        queued: queued("i"),
    });
    store
        .detach_session(&id, held.generation, own)
        .await
        .expect("detach");
    for kind in ["session", "subs", "inflight", "queue", "qos2"] {
        let ttl = pttl(&mut con, &format!("test:v1:{kind}:c")).await;
        assert!((60_000..=90_000).contains(&ttl), "{kind}: TTL {ttl}");
    }
    let ids: Vec<String> = redis::cmd("LRANGE")
        .arg("test:v1:qos2:c")
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await
        .expect("LRANGE");
    assert_eq!(ids, ["5"]);
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg("test:v1:sessions")
        .query_async(&mut con)
        .await
        .expect("SMEMBERS");
    assert_eq!(members, ["c"]);
    let score: f64 = redis::cmd("ZSCORE")
        .arg("test:v1:expiry")
        .arg("c")
        .query_async(&mut con)
        .await
        .expect("ZSCORE");
    let expected = SystemTime::now() + Duration::from_secs(60);
    let expected_ms = expected
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after epoch")
        .as_millis() as f64;
    assert!((expected_ms - score).abs() < 5_000.0, "score {score}");
    let info = store
        .session_info("c")
        .await
        .expect("info")
        .expect("session");
    assert!(!info.online);
    assert_eq!(info.node.as_deref(), Some("node-x"));
    assert_eq!(info.expiry_secs, Some(60));
    // Another prefix is another keyspace.
    assert_eq!(other.session_count().await.ok(), Some(0));
    assert_eq!(
        other.enqueue("c", queued("x"), false).await.ok(),
        Some(Enqueued::NoSession)
    );
    store
        .set_retained(Arc::new(message("r/1", b"v")))
        .await
        .expect("retain");
    assert!(exists(&mut con, "test:v1:retained:r/1").await);
    assert_eq!(pttl(&mut con, "test:v1:retained:r/1").await, -1);
    assert_eq!(other.retained_count().await.ok(), Some(0));
}

async fn store_with_prefix(server: &RedisServer, prefix: &str) -> RedisStore {
    let mut config = config(server, "node-p", 10);
    config.key_prefix = prefix.into();
    RedisStore::connect(config).await.expect("connect")
}

#[tokio::test]
async fn an_offline_session_vanishes_by_its_ttl_and_the_sweep_reports_it() {
    let server = RedisServer::start().await;
    let mut config = config(&server, "node-a", 10);
    config.expiry_grace = Duration::ZERO;
    let store = RedisStore::connect(config).await.expect("connect");
    let id: ClientId = "c".into();
    let held = attach(&store, &id).await;
    store
        .detach_session(
            &id,
            held.generation,
            StoredSession {
                expiry_secs: 1,
                subscriptions: vec![StoredSubscription {
                    filter: "t".into(),
                    options: options(QoS::AtLeastOnce),
                }],
                ..Default::default()
            },
        )
        .await
        .expect("detach");
    // A queue created after the detach takes the session's TTL.
    assert_eq!(
        store.enqueue("c", queued("m"), false).await.ok(),
        Some(Enqueued::Queued)
    );
    let mut con = server.client().await;
    for key in [
        "starling:v1:session:c",
        "starling:v1:subs:c",
        "starling:v1:queue:c",
    ] {
        let ttl = pttl(&mut con, key).await;
        assert!(ttl > 0 && ttl <= 1000, "{key}: TTL {ttl}");
    }
    eventually("keys expire", || {
        let mut con = con.clone();
        async move {
            let mut any = false;
            for kind in ["session", "subs", "queue"] {
                any |= exists(&mut con, &format!("starling:v1:{kind}:c")).await;
            }
            (!any).then_some(())
        }
    })
    .await;
    assert_eq!(store.session_info("c").await.ok(), Some(None));
    assert_eq!(
        store.enqueue("c", queued("late"), false).await.ok(),
        Some(Enqueued::NoSession)
    );
    // The index still names it until a sweep: the sweep reports it (its data is gone).
    assert_eq!(store.session_count().await.ok(), Some(1));
    let swept = store
        .take_expired_sessions(SystemTime::now())
        .await
        .expect("sweep");
    assert_eq!(swept.len(), 1);
    assert_eq!(&*swept[0].client_id, "c");
    assert_eq!(store.session_count().await.ok(), Some(0));
}

#[tokio::test]
async fn the_sweep_returns_an_expired_session_with_its_subscriptions() {
    let server = RedisServer::start().await;
    let store = store(&server, 10).await;
    let id: ClientId = "c".into();
    let held = attach(&store, &id).await;
    let subscriptions = vec![StoredSubscription {
        filter: "t/#".into(),
        options: options(QoS::ExactlyOnce),
    }];
    store
        .detach_session(
            &id,
            held.generation,
            StoredSession {
                expiry_secs: 1,
                subscriptions: subscriptions.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("detach");
    assert!(store
        .take_expired_sessions(SystemTime::now())
        .await
        .expect("sweep")
        .is_empty());
    let swept = eventually("the session expires", || async {
        let swept = store
            .take_expired_sessions(SystemTime::now())
            .await
            .expect("sweep");
        (!swept.is_empty()).then_some(swept)
    })
    .await;
    assert_eq!(swept.len(), 1);
    assert_eq!(swept[0].session.subscriptions, subscriptions);
    assert_eq!(swept[0].session.expiry_secs, 1);
    assert_eq!(swept[0].parked_on.as_deref(), Some("node-a"));
    let mut con = server.client().await;
    assert!(!exists(&mut con, "starling:v1:session:c").await);
    assert!(!exists(&mut con, "starling:v1:subs:c").await);
    assert_eq!(store.session_count().await.ok(), Some(0));
}

#[tokio::test]
async fn a_session_that_never_expires_has_no_ttl() {
    let server = RedisServer::start().await;
    let store = store(&server, 10).await;
    let id: ClientId = "c".into();
    let mut own = expiring(u32::MAX);
    own.queue.push_back(queued("q"));
    let held = attach(&store, &id).await;
    store
        .detach_session(&id, held.generation, own)
        .await
        .expect("detach");
    let mut con = server.client().await;
    assert_eq!(pttl(&mut con, "starling:v1:session:c").await, -1);
    assert_eq!(pttl(&mut con, "starling:v1:queue:c").await, -1);
    let far = SystemTime::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    assert!(store
        .take_expired_sessions(far)
        .await
        .expect("sweep")
        .is_empty());
}

#[tokio::test]
async fn retained_messages_expire_by_their_ttl() {
    let server = RedisServer::start().await;
    let store = store(&server, 10).await;
    let mut m = message("r", b"soon gone");
    m.expires_at = Some(SystemTime::now() + Duration::from_millis(800));
    store.set_retained(Arc::new(m)).await.expect("retain");
    store
        .set_retained(Arc::new(message("s", b"stays")))
        .await
        .expect("retain");
    let mut con = server.client().await;
    let ttl = pttl(&mut con, "starling:v1:retained:r").await;
    assert!(ttl > 0 && ttl <= 800, "TTL {ttl}");
    assert_eq!(
        store.retained_matching("#").await.map(|v| v.len()).ok(),
        Some(2)
    );
    eventually("the retained message expires", || {
        let mut con = con.clone();
        async move { (!exists(&mut con, "starling:v1:retained:r").await).then_some(()) }
    })
    .await;
    let left = store.retained_matching("#").await.expect("match");
    assert_eq!(left.len(), 1);
    assert_eq!(&*left[0].topic, "s");
    assert_eq!(store.retained_count().await.ok(), Some(1), "index tidied");
}

// ---------------------------------------------------------------------------------------------
// Cluster: two nodes on one Redis
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn two_nodes_share_sessions_and_retained_messages() {
    let server = RedisServer::start().await;
    let a = RedisStore::connect(config(&server, "node-a", 10))
        .await
        .expect("connect a");
    let b = RedisStore::connect(config(&server, "node-b", 10))
        .await
        .expect("connect b");
    let id: ClientId = "roamer".into();
    let held = attach(&a, &id).await;
    assert!(held.previous.is_none());
    let info = b
        .session_info("roamer")
        .await
        .expect("info")
        .expect("session");
    assert!(info.online);
    assert_eq!(info.node.as_deref(), Some("node-a"));
    assert_eq!(
        b.enqueue("roamer", queued("x"), false).await.ok(),
        Some(Enqueued::Elsewhere("node-a".into())),
        "a message for a session node a holds is node a's to deliver"
    );
    let mut own = StoredSession {
        expiry_secs: 300,
        subscriptions: vec![StoredSubscription {
            filter: "news/#".into(),
            options: options(QoS::AtLeastOnce),
        }],
        ..Default::default()
    };
    own.queue.push_back(queued("from-a"));
    assert_eq!(
        a.detach_session(&id, held.generation, own).await.ok(),
        Some(Detached::Stored)
    );
    assert_eq!(
        b.enqueue("roamer", queued("from-b"), false).await.ok(),
        Some(Enqueued::Queued)
    );
    assert_eq!(a.session_count().await.ok(), Some(1));
    assert_eq!(b.session_count().await.ok(), Some(1));
    let claimed = attach(&b, &id).await;
    assert_eq!(
        claimed.holder,
        Holder::Free {
            parked_on: Some("node-a".into())
        },
        "node a must be told to forget the session it had parked"
    );
    let resumed = claimed.previous.expect("the session moves to node b");
    assert_eq!(payloads(&resumed), ["from-a", "from-b"]);
    assert_eq!(resumed.subscriptions[0].filter, "news/#");
    let info = a
        .session_info("roamer")
        .await
        .expect("info")
        .expect("session");
    assert!(info.online);
    assert_eq!(info.node.as_deref(), Some("node-b"));

    a.set_retained(Arc::new(message("news/today", b"\xffbinary")))
        .await
        .expect("retain");
    let seen = b.retained_matching("news/+").await.expect("match");
    assert_eq!(seen.len(), 1);
    assert_eq!(&seen[0].payload[..], b"\xffbinary");
    assert_eq!(b.retained_count().await.ok(), Some(1));
    b.set_retained(Arc::new(message("news/today", b"")))
        .await
        .expect("delete");
    assert_eq!(a.retained_count().await.ok(), Some(0));
}

async fn node(server: &RedisServer, id: &str) -> RedisStore {
    RedisStore::connect(config(server, id, 10))
        .await
        .expect("connect")
}

fn persistent_claim(expiry_secs: u32, will: Option<&str>) -> SessionClaim {
    SessionClaim {
        expiry_secs,
        clean_start: false,
        will: will.map(|payload| StoredWill {
            message: Arc::new(message("wills", payload.as_bytes())),
            delay_secs: 0,
        }),
        journal: None,
    }
}

#[tokio::test]
async fn a_claim_of_a_session_held_elsewhere_completes_with_what_the_holder_hands_over() {
    let server = RedisServer::start().await;
    let (a, b) = (node(&server, "node-a").await, node(&server, "node-b").await);
    let id: ClientId = "mover".into();
    let on_a = a
        .attach_session(&id, &persistent_claim(60, None))
        .await
        .expect("attach a");
    let claim = b
        .attach_session(&id, &persistent_claim(60, None))
        .await
        .expect("attach b");
    assert_eq!(claim.holder, Holder::Elsewhere("node-a".into()));
    assert!(claim.generation > on_a.generation);
    // Until node a hands over, the claim cannot complete with a's state, and a message for the
    // session belongs to the claimer.
    assert_eq!(
        a.enqueue("mover", queued("x"), false).await.ok(),
        Some(Enqueued::Elsewhere("node-b".into()))
    );
    let mut own = StoredSession {
        expiry_secs: 60,
        subscriptions: vec![StoredSubscription {
            filter: "moves/#".into(),
            options: options(QoS::AtLeastOnce),
        }],
        incoming_qos2: vec![9],
        ..Default::default()
    };
    own.queue.push_back(queued("unsent"));
    assert_eq!(
        a.detach_session(&id, on_a.generation, own).await.ok(),
        Some(Detached::HandedOver)
    );
    let Completed::Taken(Some(session)) = b
        .complete_attach(&id, claim.generation, None)
        .await
        .expect("complete")
    else {
        panic!("node b gets the session");
    };
    assert_eq!(payloads(&session), ["unsent"]);
    assert_eq!(session.subscriptions[0].filter, "moves/#");
    assert_eq!(session.incoming_qos2, [9]);
    let info = a
        .session_info("mover")
        .await
        .expect("info")
        .expect("session");
    assert!(info.online);
    assert_eq!(info.node.as_deref(), Some("node-b"));
    // Node a's copy is stale now: a late detach or removal changes nothing.
    assert_eq!(
        a.detach_session(&id, on_a.generation, StoredSession::default())
            .await
            .ok(),
        Some(Detached::Fenced)
    );
    assert_eq!(
        a.remove_session("mover", on_a.generation).await.ok(),
        Some(Detached::Fenced)
    );
    assert_eq!(
        b.enqueue("mover", queued("y"), false).await.ok(),
        Some(Enqueued::Online)
    );
}

#[tokio::test]
async fn a_newer_claim_supersedes_one_still_waiting_and_a_session_that_ended_is_not_resumed() {
    let server = RedisServer::start().await;
    let (a, b, c) = (
        node(&server, "node-a").await,
        node(&server, "node-b").await,
        node(&server, "node-c").await,
    );
    let id: ClientId = "contested".into();
    let on_a = a
        .attach_session(&id, &persistent_claim(0, None))
        .await
        .expect("attach a");
    let from_b = b
        .attach_session(&id, &persistent_claim(60, None))
        .await
        .expect("attach b");
    let from_c = c
        .attach_session(&id, &persistent_claim(60, None))
        .await
        .expect("attach c");
    // Node a still holds the state: both claims wait for it.
    assert_eq!(from_b.holder, Holder::Elsewhere("node-a".into()));
    assert_eq!(from_c.holder, Holder::Elsewhere("node-a".into()));
    // a's connection had expiry 0: its session ends instead of being handed over.
    assert_eq!(
        a.remove_session("contested", on_a.generation).await.ok(),
        Some(Detached::HandedOver)
    );
    assert_eq!(
        b.complete_attach(&id, from_b.generation, None).await.ok(),
        Some(Completed::Superseded)
    );
    assert_eq!(
        c.complete_attach(&id, from_c.generation, None).await.ok(),
        Some(Completed::Taken(None))
    );
}

#[tokio::test]
async fn subscriptions_are_written_through_only_by_the_current_holder() {
    let server = RedisServer::start().await;
    let (a, b) = (node(&server, "node-a").await, node(&server, "node-b").await);
    let id: ClientId = "subscriber".into();
    let held = a
        .attach_session(&id, &persistent_claim(60, None))
        .await
        .expect("attach");
    let sub = |filter: &str| StoredSubscription {
        filter: filter.into(),
        options: options(QoS::AtLeastOnce),
    };
    a.save_subscriptions("subscriber", held.generation, &[sub("x"), sub("y/#")], &[])
        .await
        .expect("save");
    a.save_subscriptions("subscriber", held.generation, &[], &["x".into()])
        .await
        .expect("save");
    // A stale generation writes nothing.
    a.save_subscriptions("subscriber", held.generation - 1, &[sub("z")], &[])
        .await
        .expect("save");
    let mut con = server.client().await;
    let mut filters: Vec<String> = redis::cmd("HKEYS")
        .arg("starling:v1:subs:subscriber")
        .query_async(&mut con)
        .await
        .expect("HKEYS");
    filters.sort();
    assert_eq!(filters, ["y/#"]);
    // Another node cannot write through a session it does not hold.
    b.save_subscriptions("subscriber", held.generation, &[sub("w")], &[])
        .await
        .expect("save");
    let n: usize = redis::cmd("HLEN")
        .arg("starling:v1:subs:subscriber")
        .query_async(&mut con)
        .await
        .expect("HLEN");
    assert_eq!(n, 1);
}

#[tokio::test]
async fn a_session_parked_by_a_shutdown_keeps_its_will_for_the_adopter_once() {
    let server = RedisServer::start().await;
    let (a, b) = (node(&server, "node-a").await, node(&server, "node-b").await);
    let mut claim = persistent_claim(60, Some("drained"));
    if let Some(will) = claim.will.as_mut() {
        will.delay_secs = 5;
    }
    let (kept, dropped): (ClientId, ClientId) = ("kept".into(), "dropped".into());
    for id in [&kept, &dropped] {
        let held = a.attach_session(id, &claim).await.expect("attach");
        let parked = if id == &kept {
            a.detach_session_keeping_will(id, held.generation, expiring(60))
                .await
        } else {
            a.detach_session(id, held.generation, expiring(60)).await
        };
        assert_eq!(parked.expect("detach"), Detached::Stored);
    }
    let mut adopted = b
        .adopt_sessions("node-a", None)
        .await
        .map(|a| a.sessions)
        .expect("adopt");
    adopted.sort_by(|x, y| x.client_id.cmp(&y.client_id));
    let wills: Vec<_> = adopted
        .iter()
        .map(|s| {
            (
                s.client_id.to_string(),
                s.will
                    .as_ref()
                    .map(|w| (w.message.payload.clone(), w.delay_secs)),
            )
        })
        .collect();
    assert_eq!(
        wills,
        [
            ("dropped".to_string(), None),
            (
                "kept".to_string(),
                Some((Bytes::from_static(b"drained"), 5))
            ),
        ],
        "only the session parked by a shutdown hands its will to the adopter"
    );
    let again = a
        .adopt_sessions("node-b", None)
        .await
        .map(|a| a.sessions)
        .expect("adopt");
    assert!(
        again.iter().all(|s| s.will.is_none()),
        "a will is handed over once"
    );
}

#[tokio::test]
async fn an_adoption_whose_answer_was_lost_gives_the_same_sessions_and_wills_again() {
    let server = RedisServer::start().await;
    let a = node(&server, "node-a").await;
    let mut hasty = config(&server, "node-b", 10);
    hasty.operation_timeout = Duration::from_millis(300);
    let hasty = RedisStore::connect(hasty).await.expect("connect");
    let b = node(&server, "node-b").await;
    let orphan: ClientId = "orphan".into();
    a.attach_session(&orphan, &persistent_claim(60, Some("orphaned")))
        .await
        .expect("attach");

    // The script is loaded (as after any earlier adoption): the stalled call sends EVALSHA.
    assert!(b
        .adopt_sessions("node-z", None)
        .await
        .map(|a| a.sessions)
        .expect("adopt")
        .is_empty());
    // Redis stalls: the adoption's call times out, and Redis runs the script afterwards.
    server.pause();
    let lost = hasty
        .adopt_sessions("node-a", None)
        .await
        .map(|a| a.sessions);
    server.resume();
    assert!(lost.is_err(), "the answer is lost");
    eventually("the script ran after the stall", || async {
        b.session_info("orphan")
            .await
            .ok()
            .flatten()
            .filter(|info| info.node.as_deref() == Some("node-b"))
    })
    .await;

    // Tried again, the adoption answers what the lost answer held, once.
    let adopted = b
        .adopt_sessions("node-a", None)
        .await
        .map(|a| a.sessions)
        .expect("adopt");
    let wills: Vec<_> = adopted
        .iter()
        .map(|s| {
            (
                s.client_id.to_string(),
                s.will.as_ref().map(|w| w.message.payload.clone()),
            )
        })
        .collect();
    assert_eq!(
        wills,
        [("orphan".to_string(), Some(Bytes::from_static(b"orphaned")))]
    );
    assert!(b
        .adopt_sessions("node-a", None)
        .await
        .map(|a| a.sessions)
        .expect("adopt")
        .is_empty());
}

#[tokio::test]
async fn a_node_back_under_its_id_finds_the_sessions_a_survivor_adopted_from_it() {
    let server = RedisServer::start().await;
    let (a, b) = (node(&server, "node-a").await, node(&server, "node-b").await);
    let id: ClientId = "left-behind".into();
    let held = a
        .attach_session(&id, &persistent_claim(60, None))
        .await
        .expect("attach");
    a.save_subscriptions(
        "left-behind",
        held.generation,
        &[StoredSubscription {
            filter: "behind/#".into(),
            options: options(QoS::AtLeastOnce),
        }],
        &[],
    )
    .await
    .expect("save");
    // Node A dies; node B adopts its session; node A comes back under its id and recovers
    // what its earlier run left: the session is reported, as moved, with its subscriptions.
    let adopted = b
        .adopt_sessions("node-a", None)
        .await
        .map(|a| a.sessions)
        .expect("adopt");
    assert_eq!(adopted.len(), 1);
    assert!(!adopted[0].moved);
    let own = a
        .adopt_sessions("node-a", None)
        .await
        .map(|a| a.sessions)
        .expect("adopt own earlier run");
    let summary: Vec<_> = own
        .iter()
        .map(|s| {
            (
                s.client_id.to_string(),
                s.moved,
                s.will.is_none(),
                s.subscriptions
                    .iter()
                    .map(|s| s.filter.clone())
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [(
            "left-behind".to_string(),
            true,
            true,
            vec!["behind/#".to_string()]
        )]
    );
}

#[tokio::test]
async fn sessions_claimed_away_from_a_node_are_reported_when_it_departs() {
    let server = RedisServer::start().await;
    let (a, b, c) = (
        node(&server, "node-a").await,
        node(&server, "node-b").await,
        node(&server, "node-c").await,
    );
    // Parked on node A (its client was drained there), then claimed by node C: it leaves A's
    // session set, yet what was relayed to A for it just before must still be recoverable.
    let roamer: ClientId = "roamer".into();
    let p = a
        .attach_session(&roamer, &persistent_claim(60, None))
        .await
        .expect("attach");
    a.detach_session(
        &roamer,
        p.generation,
        StoredSession {
            expiry_secs: 60,
            subscriptions: vec![StoredSubscription {
                filter: "roam/#".into(),
                options: options(QoS::AtLeastOnce),
            }],
            ..Default::default()
        },
    )
    .await
    .expect("detach");
    c.attach_session(&roamer, &persistent_claim(60, None))
        .await
        .expect("claim");

    let adopted = b
        .adopt_sessions("node-a", None)
        .await
        .map(|a| a.sessions)
        .expect("adopt");
    let summary: Vec<_> = adopted
        .iter()
        .map(|s| {
            (
                s.client_id.to_string(),
                s.moved,
                s.subscriptions
                    .iter()
                    .map(|s| s.filter.clone())
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [("roamer".to_string(), true, vec!["roam/#".to_string()])],
        "a session that just left the departed node is listed as moved, with its subscriptions"
    );
    let info = c
        .session_info("roamer")
        .await
        .expect("info")
        .expect("session");
    assert_eq!(info.node.as_deref(), Some("node-c"), "left where it is");
    // Later adoptions of the same id (the node back under it, recovering its earlier run) hear
    // of it again, only as moved: nothing is adopted twice.
    let again = b
        .adopt_sessions("node-a", None)
        .await
        .map(|a| a.sessions)
        .expect("adopt");
    assert!(
        again.iter().all(|s| s.moved && s.will.is_none()),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_departed_nodes_sessions_are_adopted_once_with_their_wills() {
    let server = RedisServer::start().await;
    let (a, b, c) = (
        node(&server, "node-a").await,
        node(&server, "node-b").await,
        node(&server, "node-c").await,
    );
    let (online, ended, parked): (ClientId, ClientId, ClientId) =
        ("online".into(), "ended".into(), "parked".into());
    let held = a
        .attach_session(&online, &persistent_claim(60, Some("online died")))
        .await
        .expect("attach");
    a.save_subscriptions(
        "online",
        held.generation,
        &[StoredSubscription {
            filter: "alerts/#".into(),
            options: options(QoS::AtLeastOnce),
        }],
        &[],
    )
    .await
    .expect("save");
    a.attach_session(&ended, &persistent_claim(0, Some("ended died")))
        .await
        .expect("attach");
    let p = a
        .attach_session(&parked, &persistent_claim(60, Some("never sent")))
        .await
        .expect("attach");
    a.detach_session(
        &parked,
        p.generation,
        StoredSession {
            expiry_secs: 60,
            subscriptions: vec![StoredSubscription {
                filter: "parked/#".into(),
                options: options(QoS::AtLeastOnce),
            }],
            ..Default::default()
        },
    )
    .await
    .expect("detach");
    // Node C claims a session node A held before gossip tells it A is dead: C waits for A.
    let claimed: ClientId = "claimed".into();
    let h = a
        .attach_session(&claimed, &persistent_claim(60, None))
        .await
        .expect("attach");
    a.save_subscriptions(
        "claimed",
        h.generation,
        &[StoredSubscription {
            filter: "claimed/#".into(),
            options: options(QoS::AtLeastOnce),
        }],
        &[],
    )
    .await
    .expect("save");
    c.attach_session(&claimed, &persistent_claim(60, None))
        .await
        .expect("claim");

    let mut adopted = b
        .adopt_sessions("node-a", None)
        .await
        .map(|a| a.sessions)
        .expect("adopt");
    adopted.sort_by(|x, y| x.client_id.cmp(&y.client_id));
    let summary: Vec<_> = adopted
        .iter()
        .map(|s| {
            (
                s.client_id.to_string(),
                s.was_online,
                s.moved,
                s.will.as_ref().map(|w| w.message.payload.clone()),
                s.subscriptions
                    .iter()
                    .map(|s| s.filter.clone())
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            // Not adopted (node C has it), but listed with its subscriptions for recovery.
            (
                "claimed".to_string(),
                false,
                true,
                None,
                vec!["claimed/#".to_string()]
            ),
            (
                "ended".to_string(),
                true,
                false,
                Some(Bytes::from_static(b"ended died")),
                vec![]
            ),
            (
                "online".to_string(),
                true,
                false,
                Some(Bytes::from_static(b"online died")),
                vec!["alerts/#".to_string()]
            ),
            (
                "parked".to_string(),
                false,
                false,
                None,
                vec!["parked/#".to_string()]
            ),
        ]
    );
    let pending = c
        .session_info("claimed")
        .await
        .expect("info")
        .expect("session");
    assert_eq!(
        pending.node.as_deref(),
        Some("node-c"),
        "a moved session is left as it is"
    );
    // However many survivors try, each session (and its will) is adopted once: later tries
    // only hear of the sessions as moved (for recovering the departed node's inbox).
    let again = c
        .adopt_sessions("node-a", None)
        .await
        .map(|a| a.sessions)
        .expect("adopt");
    assert!(
        again.iter().all(|s| s.moved && s.will.is_none()),
        "adopted once: {again:?}"
    );
    assert!(b.session_info("ended").await.expect("info").is_none());
    let info = b
        .session_info("online")
        .await
        .expect("info")
        .expect("session");
    assert!(!info.online);
    assert_eq!(info.node.as_deref(), Some("node-b"));
    assert_eq!(
        c.enqueue("online", queued("while away"), false).await.ok(),
        Some(Enqueued::Queued)
    );
    // Resuming on node b: parked there now, so there is nobody to tell.
    let back = b
        .attach_session(&online, &persistent_claim(60, None))
        .await
        .expect("attach");
    assert_eq!(back.holder, Holder::Free { parked_on: None });
    let session = back.previous.expect("session");
    assert_eq!(payloads(&session), ["while away"]);
    assert_eq!(session.subscriptions[0].filter, "alerts/#");
}

#[tokio::test]
async fn only_one_of_two_racing_nodes_takes_an_offline_session() {
    let server = RedisServer::start().await;
    let a = Arc::new(
        RedisStore::connect(config(&server, "node-a", 10))
            .await
            .expect("connect a"),
    );
    let b = Arc::new(
        RedisStore::connect(config(&server, "node-b", 10))
            .await
            .expect("connect b"),
    );
    for round in 0..20 {
        let id: ClientId = format!("c{round}").into();
        let mut own = expiring(60);
        own.queue.push_back(queued("m"));
        let held = attach(&*a, &id).await;
        a.detach_session(&id, held.generation, own)
            .await
            .expect("detach");
        let (ra, rb) = tokio::join!(attach(&*a, &id), attach(&*b, &id));
        // Exactly one gets the offline session with its queue; the other finds it held by the
        // first and has to ask for it.
        let full = [&ra, &rb]
            .iter()
            .filter(|s| s.previous.as_ref().is_some_and(|s| s.expiry_secs == 60))
            .count();
        let waiting = [&ra, &rb]
            .iter()
            .filter(|s| matches!(s.holder, Holder::Elsewhere(_)))
            .count();
        assert_eq!((full, waiting), (1, 1), "round {round}: {ra:?} / {rb:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Redis going away and coming back
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_redis_restart_fails_calls_then_they_succeed_again() {
    let mut server = RedisServer::start().await;
    let store = store(&server, 10).await;
    let id: ClientId = "c".into();
    store
        .set_retained(Arc::new(message("r", b"v")))
        .await
        .expect("retain");
    assert_eq!(store.retained_count().await.ok(), Some(1));

    server.stop();
    let started = Instant::now();
    assert!(matches!(
        store.session_count().await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.attach_session(&id, &SessionClaim::default()).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.enqueue("c", queued("x"), true).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(store.retained_matching("#").await.is_err());
    assert!(store
        .take_expired_sessions(SystemTime::now())
        .await
        .is_err());
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "failures are bounded by the operation timeout: {:?}",
        started.elapsed()
    );

    server.restart().await;
    eventually("the store reconnects", || async {
        store.session_count().await.ok()
    })
    .await;
    // The restarted Redis kept nothing (persistence is off); everything works again, scripts
    // included (they are loaded anew).
    assert_eq!(store.retained_count().await.ok(), Some(0));
    let held = attach(&store, &id).await;
    assert!(held.previous.is_none());
    store
        .detach_session(&id, held.generation, expiring(60))
        .await
        .expect("detach");
    assert_eq!(
        store.enqueue("c", queued("after"), false).await.ok(),
        Some(Enqueued::Queued)
    );
    let session = attach(&store, &id).await.previous.expect("session");
    assert_eq!(payloads(&session), ["after"]);
}

#[tokio::test]
async fn connecting_to_a_missing_redis_is_an_error() {
    let mut server = RedisServer::start().await;
    server.stop();
    let started = Instant::now();
    let result = RedisStore::connect(config(&server, "node-a", 10)).await;
    assert!(matches!(result, Err(StoreError::Unavailable(_))));
    assert!(started.elapsed() < Duration::from_secs(10));
}

// ---------------------------------------------------------------------------------------------
// A broker on top of Redis
// ---------------------------------------------------------------------------------------------

/// A broker core using `store`, serving plain TCP on a free loopback port.
async fn serve_broker(store: Arc<RedisStore>) -> (std::net::SocketAddr, Arc<Broker>) {
    let config = common::test_config();
    let auth = Auth::load(&config.auth).expect("auth");
    let broker = Broker::new(config, auth, store);
    let addr = common::serve_tcp(broker.clone()).await;
    (addr, broker)
}

#[tokio::test]
async fn a_broker_keeps_offline_sessions_and_retained_messages_in_redis() {
    let server = RedisServer::start().await;
    let store = Arc::new(store(&server, 100).await);
    let (addr, broker) = serve_broker(store.clone()).await;

    let (mut sub, ack) = v5_client(addr, "sub", |o| {
        o.set_session_expiry_interval(Some(300));
    })
    .await;
    assert!(!ack.session_present);
    subscribe(&mut sub, "t/#", QoS::AtLeastOnce).await;
    end_connection(&mut sub).await;
    drop(sub);
    eventually("the session is offline in redis", || async {
        store
            .session_info("sub")
            .await
            .ok()
            .flatten()
            .filter(|info| !info.online)
    })
    .await;

    let (mut publisher, _) = v5_client(addr, "pub", |_| {}).await;
    assert_eq!(
        publish_qos1(&mut publisher, "t/a", "while-away").await,
        PubAckReason::Success
    );
    publisher
        .client
        .publish(
            "t/r",
            QoS::AtLeastOnce,
            true,
            Bytes::from_static(b"\x00\xffkept"),
        )
        .await
        .expect("publish retained");
    mqtt5_support::puback(&mut publisher).await;
    let con = server.client().await;
    let queued: i64 = eventually("the message is queued in redis", || {
        let mut con = con.clone();
        async move {
            let n: i64 = redis::cmd("LLEN")
                .arg("starling:v1:queue:sub")
                .query_async(&mut con)
                .await
                .ok()?;
            (n >= 2).then_some(n)
        }
    })
    .await;
    assert_eq!(queued, 2);

    // Another node sees the retained message.
    let other = RedisStore::connect(config(&server, "node-b", 100))
        .await
        .expect("connect");
    let retained = other.retained_matching("t/+").await.expect("match");
    assert_eq!(retained.len(), 1);
    assert_eq!(&retained[0].payload[..], b"\x00\xffkept");

    let (mut sub, ack) = v5_client(addr, "sub", |o| {
        o.set_session_expiry_interval(Some(300));
        o.set_clean_start(false);
    })
    .await;
    assert!(ack.session_present, "the session came back from redis");
    let first = sub.publish().await;
    assert_eq!(&first.topic[..], b"t/a");
    assert_eq!(&first.payload[..], b"while-away");
    let second = sub.publish().await;
    assert_eq!(&second.topic[..], b"t/r");
    assert_eq!(&second.payload[..], b"\x00\xffkept");
    let info = store
        .session_info("sub")
        .await
        .expect("info")
        .expect("session");
    assert!(info.online);
    assert_eq!(info.node.as_deref(), Some("node-a"));
    assert_eq!(store.session_count().await.ok(), Some(2));
    drop(broker);
}

#[tokio::test]
async fn a_session_stored_by_one_node_resumes_on_another_with_its_subscriptions() {
    let server = RedisServer::start().await;
    let store_a = Arc::new(store(&server, 100).await);
    let (addr_a, _a) = serve_broker(store_a.clone()).await;
    let store_b = Arc::new(
        RedisStore::connect(config(&server, "node-b", 100))
            .await
            .expect("connect"),
    );
    let (addr_b, _b) = serve_broker(store_b).await;

    let (mut sub, _) = v5_client(addr_a, "mover", |o| {
        o.set_session_expiry_interval(Some(300));
    })
    .await;
    subscribe(&mut sub, "moved/#", QoS::AtLeastOnce).await;
    end_connection(&mut sub).await;
    drop(sub);
    eventually("the session is offline in redis", || async {
        store_a
            .session_info("mover")
            .await
            .ok()
            .flatten()
            .filter(|info| !info.online)
    })
    .await;

    // The client comes back through another node: its subscription must route there.
    let (mut sub, ack) = v5_client(addr_b, "mover", |o| {
        o.set_session_expiry_interval(Some(300));
        o.set_clean_start(false);
    })
    .await;
    assert!(ack.session_present);
    let (mut publisher, _) = v5_client(addr_b, "pub-b", |_| {}).await;
    assert_eq!(
        publish_qos1(&mut publisher, "moved/x", "found").await,
        PubAckReason::Success,
        "node B routes to the resumed subscription"
    );
    let p = sub.publish().await;
    assert_eq!(&p.topic[..], b"moved/x");
    assert_eq!(&p.payload[..], b"found");
}

#[tokio::test]
async fn a_node_back_under_a_newer_run_keeps_its_sessions_from_the_adopter_of_its_earlier_run() {
    let server = RedisServer::start().await;
    let (a, b) = (node(&server, "node-a").await, node(&server, "node-b").await);
    let mut con = server.client().await;
    let run_key = "starling:v1:node:node-a:run";
    // Node A's first run (run 100) held a connection for "earlier" and died.
    let _: () = redis::cmd("SET")
        .arg(run_key)
        .arg(100)
        .query_async(&mut con)
        .await
        .expect("SET run");
    let earlier: ClientId = "earlier".into();
    a.attach_session(&earlier, &persistent_claim(60, Some("gone")))
        .await
        .expect("attach");
    // Node A came back as run 200 before node B got to adopt run 100: it took its earlier
    // run's sessions itself, and a client connected to it again.
    let _: () = redis::cmd("SET")
        .arg(run_key)
        .arg(200)
        .query_async(&mut con)
        .await
        .expect("SET run");
    let own = a
        .adopt_sessions("node-a", None)
        .await
        .expect("adopt own earlier run");
    assert_eq!(own.sessions.len(), 1, "the new run adopts its earlier run");
    assert!(!own.node_returned);
    let returning: ClientId = "returning".into();
    a.attach_session(&returning, &persistent_claim(60, None))
        .await
        .expect("attach");

    // Node B adopts the run that departed: nothing of the new run's is touched.
    let late = b
        .adopt_sessions("node-a", Some(100))
        .await
        .expect("adopt departed run");
    assert!(late.node_returned, "node B learns that node A is back");
    assert!(late.sessions.is_empty(), "nothing adopted: {late:?}");
    for id in ["earlier", "returning"] {
        let info = a.session_info(id).await.expect("info").expect("session");
        assert_eq!(info.node.as_deref(), Some("node-a"), "{id} stays on node A");
    }
    let state: Option<String> = redis::cmd("HGET")
        .arg("starling:v1:session:returning")
        .arg("state")
        .query_async(&mut con)
        .await
        .expect("HGET");
    assert_eq!(
        state.as_deref(),
        Some("online"),
        "the live connection's session"
    );

    // Adopting the run that is registered (it departed too) takes the sessions.
    let adopted = b
        .adopt_sessions("node-a", Some(200))
        .await
        .expect("adopt registered run");
    assert!(!adopted.node_returned);
    let mut ids: Vec<_> = adopted
        .sessions
        .iter()
        .map(|s| s.client_id.to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["earlier", "returning"]);
}
