//! A claim journals what it takes from the store, in the same atomic step: against a real
//! `redis-server`, with a broker node in cluster mode (its relay link attached) serving real MQTT
//! connections. The in-flight and queued messages a resumed session brings are in the node's
//! delivery journal the moment the session is claimed (so a node killed right after the claim
//! loses none of them), and each field goes once its copy is acknowledged.

mod common;
mod common_redis;
mod mqtt5_support;

use common_redis::{eventually, RedisServer};
use mqtt5_support::{
    connect_packet, expiry_props, filter, raw_connect, raw_publish, raw_subscribe, v5_client,
};
use rumqttc::v5::mqttbytes::v5::{Packet, PubAck, PubAckReason, Publish};
use rumqttc::v5::mqttbytes::QoS as MqttQoS;
use starling_broker::auth::Auth;
use starling_broker::broker::Broker;
use starling_broker::cluster::journal;
use starling_broker::cluster::relay::ClusterLink;
use starling_broker::message::{ClientId, Message, MessageProperties};
use starling_broker::protocol::QoS;
use starling_broker::store::{
    Completed, Detached, Holder, InflightMessage, InflightState, QueuedMessage, RedisStore,
    RedisStoreConfig, SessionClaim, Store, StoredSession,
};
use std::net::SocketAddr;
use std::sync::Arc;

/// The Redis store of node `node`.
async fn node_store(server: &RedisServer, node: &str) -> RedisStore {
    RedisStore::connect(RedisStoreConfig::new(server.target(), node, 100))
        .await
        .expect("connect the store")
}

/// A broker node `node` in cluster mode on `server` (no gossip: a cluster of one), serving plain
/// TCP on a free loopback port, with QoS 0 messages queued for offline sessions too.
async fn cluster_node(
    server: &RedisServer,
    node: &str,
) -> (SocketAddr, Arc<Broker>, Arc<ClusterLink>) {
    let mut config = common::test_config();
    config.node_id = node.to_string();
    config.session.queue_qos0 = true;
    let auth = Auth::load(&config.auth).expect("auth");
    let broker = Broker::new(config, auth, Arc::new(node_store(server, node).await));
    let link = ClusterLink::start(&server.target(), node, "starling:", &broker)
        .await
        .expect("start the relay link");
    broker.attach_cluster(link.clone());
    let addr = common::serve_tcp(broker.clone()).await;
    (addr, broker, link)
}

/// One journal entry as a test reads it.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    order: journal::FieldOrder,
    client: String,
    payload: String,
    qos: QoS,
}

/// The node's delivery journal, in recovery order.
async fn journal_of(con: &mut redis::aio::MultiplexedConnection, node: &str) -> Vec<Entry> {
    let fields: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
        .arg(format!("starling:v1:journal:{node}"))
        .query_async(con)
        .await
        .expect("HGETALL journal");
    let mut entries: Vec<Entry> = fields
        .into_iter()
        .map(|(field, value)| {
            let order = journal::parse_field(&field)
                .unwrap_or_else(|| panic!("journal field {field:?} is not <run>.<seq>[.<index>]"));
            let (client, copy) = journal::decode_value(&value).expect("journal value decodes");
            Entry {
                order,
                client: client.to_string(),
                payload: String::from_utf8_lossy(&copy.message.payload).into_owned(),
                qos: copy.qos,
            }
        })
        .collect();
    entries.sort_by_key(|e| e.order);
    entries
}

async fn list_len(con: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("LLEN")
        .arg(key)
        .query_async(con)
        .await
        .expect("LLEN")
}

async fn publish(addr: SocketAddr, topic: &str, payload: &str, qos: MqttQoS) {
    let (mut publisher, _) = v5_client(addr, &format!("pub-{payload}"), |_| {}).await;
    publisher
        .client
        .publish(topic, qos, false, payload.as_bytes().to_vec())
        .await
        .expect("publish");
    if qos == MqttQoS::AtLeastOnce {
        assert_eq!(
            mqtt5_support::puback(&mut publisher).await.reason,
            PubAckReason::Success
        );
    } else {
        mqtt5_support::end_connection(&mut publisher).await;
    }
}

fn puback(publish: &Publish) -> Packet {
    Packet::PubAck(PubAck::new(publish.pkid, None))
}

#[tokio::test]
async fn a_resumed_session_is_journalled_by_its_claim_and_released_as_acknowledged() {
    let server = RedisServer::start().await;
    let (addr, _broker, _link) = cluster_node(&server, "node-a").await;
    let mut con = server.client().await;

    // A persistent session receives two QoS 1 messages and leaves without acknowledging them:
    // they are stored as in flight.
    let resume = |clean_start| {
        let mut connect = connect_packet("sub", Some(expiry_props(300)));
        connect.clean_start = clean_start;
        connect
    };
    let (mut sub, ack) = raw_connect(addr, resume(true), None).await;
    assert!(!ack.session_present);
    raw_subscribe(&mut sub, 1, vec![filter("t/#", MqttQoS::AtLeastOnce)], None).await;
    publish(addr, "t/1", "first", MqttQoS::AtLeastOnce).await;
    publish(addr, "t/2", "second", MqttQoS::AtLeastOnce).await;
    assert_eq!(raw_publish(&mut sub).await.payload, "first");
    assert_eq!(raw_publish(&mut sub).await.payload, "second");
    drop(sub);
    eventually("the two unacknowledged copies stored in flight", || {
        let mut con = con.clone();
        async move { (list_len(&mut con, "starling:v1:inflight:sub").await == 2).then_some(()) }
    })
    .await;

    // Two more QoS 1 messages and a QoS 0 one are queued while it is away.
    publish(addr, "t/3", "third", MqttQoS::AtLeastOnce).await;
    publish(addr, "t/4", "fourth", MqttQoS::AtMostOnce).await;
    publish(addr, "t/5", "fifth", MqttQoS::AtLeastOnce).await;
    eventually("three queued messages and an empty journal", || {
        let mut con = con.clone();
        async move {
            let queued = list_len(&mut con, "starling:v1:queue:sub").await;
            let journal = journal_of(&mut con, "node-a").await;
            (queued == 3 && journal.is_empty()).then_some(())
        }
    })
    .await;

    // The claim: the lists leave the store and every copy is in the journal at once, before
    // anything is acknowledged.
    let (mut sub, ack) = raw_connect(addr, resume(false), None).await;
    assert!(ack.session_present);
    assert_eq!(list_len(&mut con, "starling:v1:inflight:sub").await, 0);
    assert_eq!(list_len(&mut con, "starling:v1:queue:sub").await, 0);
    let at_claim = journal_of(&mut con, "node-a").await;
    let qos1: Vec<Entry> = at_claim
        .iter()
        .filter(|e| e.qos == QoS::AtLeastOnce)
        .cloned()
        .collect();
    let payloads: Vec<&str> = qos1.iter().map(|e| e.payload.as_str()).collect();
    assert_eq!(
        payloads,
        ["first", "second", "third", "fifth"],
        "{at_claim:?}"
    );
    let (run, seq, _) = qos1[0].order;
    let indexes: Vec<journal::FieldOrder> = qos1.iter().map(|e| e.order).collect();
    assert_eq!(
        indexes,
        [(run, seq, 0), (run, seq, 1), (run, seq, 2), (run, seq, 4)],
        "one reservation, in-flight copies first, then the queue"
    );
    assert!(qos1.iter().all(|e| e.client == "sub"));

    // The copies arrive, the in-flight ones again with DUP.
    let mut received = Vec::new();
    for _ in 0..5 {
        received.push(raw_publish(&mut sub).await);
    }
    let seen: Vec<(String, bool)> = received
        .iter()
        .map(|p| (String::from_utf8_lossy(&p.payload).into_owned(), p.dup))
        .collect();
    assert_eq!(
        seen,
        [
            ("first".to_string(), true),
            ("second".to_string(), true),
            ("third".to_string(), false),
            ("fourth".to_string(), false),
            ("fifth".to_string(), false),
        ]
    );

    // The QoS 0 copy never needed its field; each QoS 1 field goes with its acknowledgement.
    let expect_journal = |left: Vec<Entry>| {
        let con = con.clone();
        async move {
            eventually("the journal to hold only unacknowledged copies", || {
                let mut con = con.clone();
                let left = left.clone();
                async move { (journal_of(&mut con, "node-a").await == left).then_some(()) }
            })
            .await
        }
    };
    expect_journal(qos1.clone()).await;
    sub.send_v5(puback(&received[0])).await;
    sub.send_v5(puback(&received[2])).await;
    expect_journal(vec![qos1[1].clone(), qos1[3].clone()]).await;
    sub.send_v5(puback(&received[1])).await;
    sub.send_v5(puback(&received[4])).await;
    expect_journal(Vec::new()).await;
}

fn queued(payload: &str, qos: QoS) -> QueuedMessage {
    QueuedMessage::new(
        Arc::new(Message {
            topic: "t".into(),
            payload: bytes::Bytes::from(payload.to_string()),
            qos,
            retain: false,
            properties: MessageProperties::default(),
            expires_at: None,
            publisher: None,
            received_at: None,
        }),
        qos,
        false,
        vec![],
    )
}

#[tokio::test]
async fn a_claim_that_waits_for_a_hand_over_journals_what_it_is_handed() {
    let server = RedisServer::start().await;
    let (_addr, _broker, link) = cluster_node(&server, "node-b").await;
    let mut con = server.client().await;
    let holder = node_store(&server, "node-a").await;
    let claimer = node_store(&server, "node-b").await;
    let id = ClientId::from("moving");
    let claim = |journal| SessionClaim {
        expiry_secs: 300,
        clean_start: false,
        will: None,
        journal,
    };

    let held = holder
        .attach_session(&id, &claim(None))
        .await
        .expect("attach on A");
    let reservation = link.reserve_journal(&id);
    let waiting = claimer
        .attach_session(&id, &claim(Some(reservation.clone())))
        .await
        .expect("claim on B");
    assert_eq!(waiting.holder, Holder::Elsewhere("node-a".into()));
    assert!(
        journal_of(&mut con, "node-b").await.is_empty(),
        "nothing is taken before the hand-over"
    );

    // A hands over one message awaiting PUBCOMP, one awaiting PUBACK and a queue of two.
    let mut session = StoredSession {
        expiry_secs: 300,
        ..StoredSession::default()
    };
    session.inflight = vec![
        InflightMessage {
            packet_id: 300, // two varint bytes
            state: InflightState::AwaitingComplete,
            queued: queued("released", QoS::ExactlyOnce),
        },
        InflightMessage {
            packet_id: 7,
            state: InflightState::AwaitingAck,
            queued: queued("unacked", QoS::AtLeastOnce),
        },
    ];
    session.queue = [
        queued("queued", QoS::AtLeastOnce),
        queued("queued-0", QoS::AtMostOnce),
    ]
    .into_iter()
    .collect();
    let handed = holder
        .detach_session(&id, held.generation, session)
        .await
        .expect("detach on A");
    assert_eq!(handed, Detached::HandedOver);

    let Completed::Taken(Some(taken)) = claimer
        .complete_attach(&id, waiting.generation, Some(&reservation))
        .await
        .expect("complete on B")
    else {
        panic!("the claim completes with the session");
    };
    let at_claim = journal_of(&mut con, "node-b").await;
    let journalled: Vec<(String, QoS, u64)> = at_claim
        .iter()
        .map(|e| (e.payload.clone(), e.qos, e.order.2))
        .filter(|(_, qos, _)| *qos != QoS::AtMostOnce)
        .collect();
    assert_eq!(
        journalled,
        [
            ("released".to_string(), QoS::ExactlyOnce, 0),
            ("unacked".to_string(), QoS::AtLeastOnce, 1),
            ("queued".to_string(), QoS::AtLeastOnce, 2),
        ],
        "in-flight copies are journalled as the queued messages they carry"
    );

    // The copies hold their fields; the QoS 0 one let go of its own at once.
    assert!(taken.inflight.iter().all(|m| m.queued.journal.is_some()));
    assert!(taken.queue[0].journal.is_some());
    assert!(taken.queue[1].journal.is_none());
    let remaining = |expected: usize| {
        let con = con.clone();
        async move {
            eventually("the journal to shrink", || {
                let mut con = con.clone();
                async move { (journal_of(&mut con, "node-b").await.len() == expected).then_some(()) }
            })
            .await
        }
    };
    remaining(3).await;
    drop(taken);
    remaining(0).await;
}

#[tokio::test]
async fn recovery_delivers_a_dead_nodes_claimed_copies_again_in_order_but_never_a_qos0_one() {
    let server = RedisServer::start().await;
    let (_addr, broker, _link) = cluster_node(&server, "node-c").await;
    let mut con = server.client().await;

    // An offline session parked on node C.
    let store = node_store(&server, "node-c").await;
    let id = ClientId::from("orphan");
    let claim = SessionClaim {
        expiry_secs: 300,
        clean_start: false,
        will: None,
        journal: None,
    };
    let attached = store.attach_session(&id, &claim).await.expect("attach");
    let session = StoredSession {
        expiry_secs: 300,
        ..StoredSession::default()
    };
    assert_eq!(
        store
            .detach_session(&id, attached.generation, session)
            .await
            .expect("detach"),
        Detached::Stored
    );

    // Node X died holding copies for it: two a claim took (one of them QoS 0), then one more.
    let value = |payload: &str, qos| {
        journal::encode_value("orphan", &queued(payload, qos)).expect("encode journal value")
    };
    let _: () = redis::cmd("HSET")
        .arg("starling:v1:journal:node-x")
        .arg("7.1")
        .arg(value("later", QoS::AtLeastOnce))
        .arg("7.0.1")
        .arg(value("at-most-once", QoS::AtMostOnce))
        .arg("7.0.0")
        .arg(value("claimed", QoS::ExactlyOnce))
        .query_async(&mut con)
        .await
        .expect("HSET");

    broker
        .adopt_sessions_of(
            "node-x",
            None,
            starling_broker::cluster::recovery::Leftovers::Departed,
        )
        .await;
    eventually("node x's journal recovered and deleted", || {
        let mut con = con.clone();
        async move {
            journal_of(&mut con, "node-x")
                .await
                .is_empty()
                .then_some(())
        }
    })
    .await;
    let resumed = store
        .attach_session(&id, &claim)
        .await
        .expect("attach again")
        .previous
        .expect("the session");
    let queued: Vec<(String, QoS, bool)> = resumed
        .queue
        .iter()
        .map(|copy| {
            (
                String::from_utf8_lossy(&copy.message.payload).into_owned(),
                copy.qos,
                copy.maybe_sent,
            )
        })
        .collect();
    assert_eq!(
        queued,
        [
            ("claimed".to_string(), QoS::ExactlyOnce, true),
            ("later".to_string(), QoS::AtLeastOnce, true),
        ]
    );
}
