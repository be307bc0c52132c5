//! Retained-message limits (`limits.max_retained_messages`, `limits.max_retained_payload_size`)
//! with real MQTT clients on real sockets, on the memory store and on a real `redis-server`
//! shared by two stores: a refused retained publish is still delivered, replacing and deleting
//! are always allowed, expired messages make room, and refusals are counted.

mod common;
mod common_redis;
mod mqtt5_support;

use bytes::Bytes;
use common::{v5, TestBroker};
use common_redis::{eventually, RedisServer};
use mqtt5_support::{puback, subscribe, v5_client};
use rumqttc::v5::mqttbytes::v5::{PubAckReason, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use starling_broker::auth::Auth;
use starling_broker::broker::Broker;
use starling_broker::message::{Message, MessageProperties};
use starling_broker::metrics::Metrics;
use starling_broker::store::{
    MemoryStore, RedisStore, RedisStoreConfig, Retained, RetainedLimits, Store,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Publishes a retained QoS 1 message and returns the PUBACK's reason.
async fn retain(client: &mut v5::Client, topic: &str, payload: &[u8]) -> PubAckReason {
    client
        .client
        .publish(topic, QoS::AtLeastOnce, true, payload.to_vec())
        .await
        .expect("publish");
    puback(client).await.reason
}

/// The retained messages a new subscriber to `filter` receives, as (topic, payload): it
/// subscribes, then publishes a marker to itself; its connection handles the SUBSCRIBE (and
/// queues the retained messages) before it reads the marker, so they all come first.
async fn retained_seen(addr: SocketAddr, id: &str, filter: &str) -> Vec<(String, Vec<u8>)> {
    let (mut probe, _) = v5_client(addr, id, |_| {}).await;
    subscribe(&mut probe, filter, QoS::AtLeastOnce).await;
    let marker = format!("{}/~marker", filter.trim_end_matches("/#"));
    probe
        .client
        .publish(&marker, QoS::AtLeastOnce, false, "m")
        .await
        .expect("publish marker");
    let mut seen = Vec::new();
    loop {
        let p = probe.publish().await;
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        if topic == marker {
            break;
        }
        assert!(p.retain, "{topic} came without the retain flag");
        seen.push((topic, p.payload.to_vec()));
    }
    seen.sort();
    seen
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = expected
        .iter()
        .map(|(t, p)| (t.to_string(), p.as_bytes().to_vec()))
        .collect();
    v.sort();
    v
}

/// The count limit, seen by MQTT clients: a new topic beyond it is delivered to the current
/// subscriber (and acknowledged with success: the publish did not fail) but not retained;
/// replacing a topic's retained message and deleting one are allowed; a deletion makes room.
async fn count_limit_scenario(addr: SocketAddr, metrics: &Metrics, prefix: &str) {
    let (mut live, _) = v5_client(addr, &format!("{prefix}-live"), |_| {}).await;
    subscribe(&mut live, &format!("{prefix}/#"), QoS::AtLeastOnce).await;
    let (mut publisher, _) = v5_client(addr, &format!("{prefix}-pub"), |_| {}).await;
    let t = |name: &str| format!("{prefix}/{name}");

    assert_eq!(
        retain(&mut publisher, &t("a"), b"a1").await,
        PubAckReason::Success
    );
    assert_eq!(
        retain(&mut publisher, &t("b"), b"b1").await,
        PubAckReason::Success
    );
    assert_eq!(metrics.retained_refused_count.get(), 0);
    // Third topic: over the limit of 2.
    assert_eq!(
        retain(&mut publisher, &t("c"), b"c1").await,
        PubAckReason::Success
    );
    for expected in [("a", "a1"), ("b", "b1"), ("c", "c1")] {
        let p = live.publish().await;
        assert_eq!(
            (&p.topic[..], &p.payload[..]),
            (t(expected.0).as_bytes(), expected.1.as_bytes()),
            "every publish is delivered to the current subscriber"
        );
    }
    assert_eq!(
        metrics.retained_refused_count.get(),
        1,
        "the refusal is counted"
    );
    assert_eq!(
        retained_seen(addr, &format!("{prefix}-probe1"), &format!("{prefix}/#")).await,
        pairs(&[(&t("a"), "a1"), (&t("b"), "b1")]),
    );

    // At the limit, replacing is allowed (it does not grow the count).
    assert_eq!(
        retain(&mut publisher, &t("a"), b"a2").await,
        PubAckReason::Success
    );
    // Deleting is allowed, and makes room for another topic.
    assert_eq!(
        retain(&mut publisher, &t("b"), b"").await,
        PubAckReason::Success
    );
    assert_eq!(
        retain(&mut publisher, &t("c"), b"c2").await,
        PubAckReason::Success
    );
    assert_eq!(
        metrics.retained_refused_count.get(),
        1,
        "nothing more was refused"
    );
    assert_eq!(
        retained_seen(addr, &format!("{prefix}-probe2"), &format!("{prefix}/#")).await,
        pairs(&[(&t("a"), "a2"), (&t("c"), "c2")]),
    );
    assert_eq!(metrics.retained_refused_payload.get(), 0);
}

/// The total-bytes limit on a store (10 bytes): a replacement counts the message it replaces
/// as gone, a deletion frees its bytes, an expired message frees its bytes.
async fn bytes_limit_scenario(store: &dyn Store) {
    let set = |topic: &'static str, payload: &'static [u8], expires_at| async move {
        store
            .set_retained(message(topic, payload, expires_at))
            .await
            .expect("set_retained")
    };
    assert_eq!(set("b/a", b"123456", None).await, Retained::Stored);
    assert_eq!(set("b/b", b"1234", None).await, Retained::Stored);
    assert_eq!(set("b/c", b"1", None).await, Retained::BytesFull);
    assert_eq!(set("b/a", b"1234567", None).await, Retained::BytesFull);
    assert_eq!(set("b/a", b"12345", None).await, Retained::Stored);
    assert_eq!(set("b/c", b"1", None).await, Retained::Stored);
    assert_eq!(set("b/b", b"", None).await, Retained::Deleted);
    let soon = SystemTime::now() + Duration::from_millis(300);
    assert_eq!(set("b/d", b"1234", Some(soon)).await, Retained::Stored);
    assert_eq!(set("b/e", b"1234", None).await, Retained::BytesFull);
    eventually("b/e is retained once b/d expired", || async {
        (set("b/e", b"1234", None).await == Retained::Stored).then_some(())
    })
    .await;
    assert!(
        SystemTime::now() >= soon,
        "b/e was retained before b/d expired"
    );
    let mut kept: Vec<(String, Vec<u8>)> = store
        .retained_matching("b/#")
        .await
        .expect("match")
        .iter()
        .map(|m| (m.topic.to_string(), m.payload.to_vec()))
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        pairs(&[("b/a", "12345"), ("b/c", "1"), ("b/e", "1234")])
    );
}

const TEN_BYTES: RetainedLimits = RetainedLimits {
    max_messages: 0,
    max_bytes: 10,
};

// ---------------------------------------------------------------------------------------------
// Memory store
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn memory_total_bytes_limit() {
    bytes_limit_scenario(&MemoryStore::new(10).with_retained_limits(TEN_BYTES)).await;
}

#[tokio::test]
async fn total_bytes_limit_is_counted_and_still_delivers() {
    let broker = TestBroker::start_with(|c| {
        c.limits.max_retained_bytes = 4;
        c.limits.max_retained_payload_size = 4;
    })
    .await;
    let addr = broker.tcp();
    let (mut live, _) = v5_client(addr, "by-live", |_| {}).await;
    subscribe(&mut live, "by/#", QoS::AtLeastOnce).await;
    let (mut publisher, _) = v5_client(addr, "by-pub", |_| {}).await;
    assert_eq!(
        retain(&mut publisher, "by/a", b"123").await,
        PubAckReason::Success
    );
    assert_eq!(
        retain(&mut publisher, "by/b", b"12").await,
        PubAckReason::Success
    );
    for (topic, payload) in [("by/a", "123"), ("by/b", "12")] {
        let p = live.publish().await;
        assert_eq!(
            (&p.topic[..], &p.payload[..]),
            (topic.as_bytes(), payload.as_bytes())
        );
    }
    let metrics = &broker.broker.metrics;
    assert_eq!(metrics.retained_refused_bytes.get(), 1);
    let text = metrics.render();
    assert!(
        text.contains("starling_retained_refused_total{reason=\"bytes\"} 1"),
        "{text}"
    );
    assert_eq!(
        retained_seen(addr, "by-probe", "by/#").await,
        pairs(&[("by/a", "123")])
    );
    broker.stop().await;
}

#[tokio::test]
async fn memory_count_limit_refuses_new_topics_only_and_still_delivers() {
    let broker = TestBroker::start_with(|c| c.limits.max_retained_messages = 2).await;
    count_limit_scenario(broker.tcp(), &broker.broker.metrics, "mem").await;
    let text = broker.broker.metrics.render();
    assert!(
        text.contains("starling_retained_refused_total{reason=\"count\"} 1"),
        "{text}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn payload_limit_refuses_larger_retained_payloads_and_keeps_the_earlier_one() {
    let broker = TestBroker::start_with(|c| c.limits.max_retained_payload_size = 8).await;
    let addr = broker.tcp();
    let metrics = &broker.broker.metrics;
    let (mut live, _) = v5_client(addr, "pl-live", |_| {}).await;
    subscribe(&mut live, "pl/#", QoS::AtLeastOnce).await;
    let (mut publisher, _) = v5_client(addr, "pl-pub", |_| {}).await;

    assert_eq!(
        retain(&mut publisher, "pl/t", b"12345678").await,
        PubAckReason::Success
    );
    assert_eq!(
        retain(&mut publisher, "pl/t", b"123456789").await,
        PubAckReason::Success
    );
    assert_eq!(
        retain(&mut publisher, "pl/u", b"123456789").await,
        PubAckReason::Success
    );
    for (topic, payload) in [
        ("pl/t", "12345678"),
        ("pl/t", "123456789"),
        ("pl/u", "123456789"),
    ] {
        let p = live.publish().await;
        assert_eq!(
            (&p.topic[..], &p.payload[..]),
            (topic.as_bytes(), payload.as_bytes())
        );
    }
    assert_eq!(metrics.retained_refused_payload.get(), 2);
    assert_eq!(metrics.retained_refused_count.get(), 0);
    assert_eq!(
        retained_seen(addr, "pl-probe", "pl/#").await,
        pairs(&[("pl/t", "12345678")]),
        "the 8-byte payload is retained; the 9-byte ones are not, and pl/t keeps its earlier one"
    );
    broker.stop().await;
}

#[tokio::test]
async fn memory_expired_retained_message_makes_room() {
    let broker = TestBroker::start_with(|c| c.limits.max_retained_messages = 1).await;
    let addr = broker.tcp();
    // A subscriber, so that PUBACKs say Success rather than "no matching subscribers".
    let (mut live, _) = v5_client(addr, "exp-live", |_| {}).await;
    subscribe(&mut live, "exp/#", QoS::AtLeastOnce).await;
    let (mut publisher, _) = v5_client(addr, "exp-pub", |_| {}).await;
    let properties = PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties("exp/short", QoS::AtLeastOnce, true, "short", properties)
        .await
        .expect("publish");
    assert_eq!(puback(&mut publisher).await.reason, PubAckReason::Success);
    assert_eq!(
        retain(&mut publisher, "exp/long", b"long").await,
        PubAckReason::Success
    );
    assert_eq!(
        broker.broker.metrics.retained_refused_count.get(),
        1,
        "full while exp/short lives"
    );
    // Once exp/short has expired (1 s), exp/long is retained: publish it again until it is.
    let metrics = &broker.broker.metrics;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let refused_before = metrics.retained_refused_count.get();
        assert_eq!(
            retain(&mut publisher, "exp/long", b"long").await,
            PubAckReason::Success
        );
        if metrics.retained_refused_count.get() == refused_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "exp/long still refused after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        attempts > 1,
        "exp/long was retained before exp/short expired"
    );
    assert_eq!(
        retained_seen(addr, "exp-probe", "exp/#").await,
        pairs(&[("exp/long", "long")])
    );
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Redis store
// ---------------------------------------------------------------------------------------------

async fn redis_store(server: &RedisServer, node: &str, max_retained: usize) -> RedisStore {
    let mut config = RedisStoreConfig::new(server.target(), node, 100);
    config.retained_limits = RetainedLimits {
        max_messages: max_retained,
        max_bytes: 0,
    };
    config.operation_timeout = Duration::from_secs(5);
    RedisStore::connect(config).await.expect("connect to redis")
}

fn message(topic: &str, payload: &[u8], expires_at: Option<SystemTime>) -> Arc<Message> {
    Arc::new(Message {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload),
        qos: starling_broker::protocol::QoS::AtMostOnce,
        retain: true,
        properties: MessageProperties::default(),
        expires_at,
        publisher: None,
        received_at: None,
    })
}

#[tokio::test]
async fn redis_count_limit_holds_across_nodes_publishing_at_once() {
    let server = RedisServer::start().await;
    let a = Arc::new(redis_store(&server, "node-a", 10).await);
    let b = Arc::new(redis_store(&server, "node-b", 10).await);
    let mut tasks = Vec::new();
    for i in 0..60 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            store
                .set_retained(message(&format!("race/{i}"), b"v", None))
                .await
                .expect("set_retained")
        }));
    }
    let mut stored = 0;
    for task in tasks {
        match task.await.expect("task") {
            Retained::Stored => stored += 1,
            Retained::CountFull => {}
            other => panic!("only the count limit applies: {other:?}"),
        }
    }
    assert_eq!(
        stored, 10,
        "exactly the limit is stored, whichever node wrote"
    );
    assert_eq!(a.retained_count().await.expect("count"), 10);
    assert_eq!(
        b.retained_matching("race/#").await.expect("match").len(),
        10
    );
    // Replacing one of them, and deleting one, are allowed at the limit on either node.
    let kept = b.retained_matching("race/#").await.expect("match");
    let first = kept[0].topic.to_string();
    let second = kept[1].topic.to_string();
    assert_eq!(
        a.set_retained(message(&first, b"w", None))
            .await
            .expect("replace"),
        Retained::Stored
    );
    assert_eq!(
        a.set_retained(message("race/new", b"v", None))
            .await
            .expect("new"),
        Retained::CountFull
    );
    assert_eq!(
        b.set_retained(message(&second, b"", None))
            .await
            .expect("delete"),
        Retained::Deleted
    );
    assert_eq!(
        a.set_retained(message("race/new", b"v", None))
            .await
            .expect("new"),
        Retained::Stored
    );
    assert_eq!(a.retained_count().await.expect("count"), 10);
}

#[tokio::test]
async fn redis_total_bytes_limit() {
    let server = RedisServer::start().await;
    let mut config = RedisStoreConfig::new(server.target(), "node-a", 100);
    config.retained_limits = TEN_BYTES;
    let store = RedisStore::connect(config).await.expect("connect to redis");
    bytes_limit_scenario(&store).await;

    // The bookkeeping in Redis: sizes of b/a, b/c, b/e and their sum.
    let mut redis = server.client().await;
    let bytes = |redis: &mut redis::aio::MultiplexedConnection| {
        let mut redis = redis.clone();
        async move {
            redis::cmd("GET")
                .arg("starling:v1:retained-bytes")
                .query_async::<i64>(&mut redis)
                .await
                .expect("GET retained-bytes")
        }
    };
    assert_eq!(bytes(&mut redis).await, 10);
    let sizes: i64 = redis::cmd("HLEN")
        .arg("starling:v1:retained-sizes")
        .query_async(&mut redis)
        .await
        .expect("HLEN");
    assert_eq!(sizes, 3);
    // A message Redis expires leaves the sum when a look-up meets its missing key.
    assert_eq!(
        store
            .set_retained(message("b/c", b"", None))
            .await
            .expect("delete"),
        Retained::Deleted
    );
    assert_eq!(bytes(&mut redis).await, 9);
    let soon = SystemTime::now() + Duration::from_millis(200);
    assert_eq!(
        store
            .set_retained(message("b/f", b"1", Some(soon)))
            .await
            .expect("set"),
        Retained::Stored
    );
    assert_eq!(bytes(&mut redis).await, 10);
    eventually(
        "a look-up drops the expired b/f from the byte count",
        || {
            let store = &store;
            let redis = redis.clone();
            async move {
                store.retained_matching("b/#").await.expect("match");
                let mut redis = redis;
                (bytes(&mut redis).await == 9).then_some(())
            }
        },
    )
    .await;
    assert_eq!(store.retained_count().await.expect("count"), 2);
}

#[tokio::test]
async fn redis_expired_retained_messages_make_room() {
    let server = RedisServer::start().await;
    let store = redis_store(&server, "node-a", 2).await;
    let soon = SystemTime::now() + Duration::from_millis(300);
    assert_eq!(
        store
            .set_retained(message("e/1", b"v", Some(soon)))
            .await
            .expect("set"),
        Retained::Stored
    );
    assert_eq!(
        store
            .set_retained(message("e/2", b"v", None))
            .await
            .expect("set"),
        Retained::Stored
    );
    assert_eq!(
        store
            .set_retained(message("e/3", b"v", None))
            .await
            .expect("set"),
        Retained::CountFull
    );
    // Redis expires e/1 by its PXAT; the next retain at the limit drops it from the count.
    eventually("e/3 is retained once e/1 expired", || async {
        (store
            .set_retained(message("e/3", b"v", None))
            .await
            .expect("set")
            == Retained::Stored)
            .then_some(())
    })
    .await;
    assert!(
        SystemTime::now() >= soon,
        "e/3 was retained before e/1 expired"
    );
    let mut topics: Vec<String> = store
        .retained_matching("e/#")
        .await
        .expect("match")
        .iter()
        .map(|m| m.topic.to_string())
        .collect();
    topics.sort();
    assert_eq!(topics, ["e/2", "e/3"]);
    assert_eq!(store.retained_count().await.expect("count"), 2);
}

#[tokio::test]
async fn redis_count_limit_refuses_new_topics_only_and_still_delivers() {
    let server = RedisServer::start().await;
    let store = Arc::new(redis_store(&server, "node-a", 2).await);
    let mut config = common::test_config();
    config.limits.max_retained_messages = 2;
    config.limits.max_retained_bytes = 0;
    let auth = Auth::load(&config.auth).expect("auth");
    let broker = Broker::new(config, auth, store);
    let addr = common::serve_tcp(broker.clone()).await;
    count_limit_scenario(addr, &broker.metrics, "red").await;
}
