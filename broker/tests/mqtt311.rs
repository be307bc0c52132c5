//! MQTT 3.1.1 (and 3.1) behaviour end to end: rumqttc v4 clients for ordinary flows and
//! [`RawClient`] where a test needs control of the bytes (acknowledgements withheld, sockets
//! dropped, packet ids reused, protocol levels rumqttc cannot send).
//!
//! Negative checks prefer a "marker" message over waiting: the marker is published after the
//! message that must not arrive, so if the broker had routed the forbidden message, it would have
//! reached the subscriber before the marker. `no_publish()` is used only where no such ordering
//! exists.

mod common;

use common::{v4, RawClient, TestBroker};
use rumqttc::mqttbytes::v4 as wire;
use rumqttc::{ConnectReturnCode, LastWill, QoS, SubscribeReasonCode};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Connects a rumqttc v4 client and asserts the CONNACK accepts it; returns it with the
/// session-present flag.
async fn connect(broker: &TestBroker, id: &str, clean: bool) -> (v4::Client, bool) {
    let mut options = v4::options(broker.tcp(), id);
    options.set_clean_session(clean);
    let mut client = v4::connect(options);
    let ack = client.connack().await;
    assert_eq!(ack.code, ConnectReturnCode::Success, "CONNACK for {id}");
    (client, ack.session_present)
}

/// A clean-session client.
async fn clean_client(broker: &TestBroker, id: &str) -> v4::Client {
    connect(broker, id, true).await.0
}

/// Subscribes and asserts the broker granted exactly `qos`.
async fn subscribe(client: &mut v4::Client, filter: &str, qos: QoS) {
    client
        .client
        .subscribe(filter, qos)
        .await
        .expect("subscribe");
    let ack = client.suback().await;
    assert_eq!(
        ack.return_codes,
        vec![SubscribeReasonCode::Success(qos)],
        "SUBACK for {filter}"
    );
}

/// Unsubscribes and waits for the UNSUBACK.
async fn unsubscribe(client: &mut v4::Client, filter: &str) {
    client
        .client
        .unsubscribe(filter)
        .await
        .expect("unsubscribe");
    client
        .expect(|p| matches!(p, v4::Packet::UnsubAck(_)).then_some(()))
        .await;
}

/// Publishes and, for QoS 1, waits for the PUBACK (the broker routes before it acknowledges,
/// so once this returns the message is in every matching session's channel or queue).
async fn publish(client: &mut v4::Client, topic: &str, qos: QoS, retain: bool, payload: &[u8]) {
    client
        .client
        .publish(topic, qos, retain, payload.to_vec())
        .await
        .expect("publish");
    match qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => {
            client
                .expect(|p| matches!(p, v4::Packet::PubAck(_)).then_some(()))
                .await
        }
        QoS::ExactlyOnce => {
            client
                .expect(|p| matches!(p, v4::Packet::PubComp(_)).then_some(()))
                .await
        }
    }
}

/// Sends DISCONNECT and waits until the broker has closed the connection.
async fn disconnect(client: &mut v4::Client) {
    client.client.disconnect().await.expect("disconnect");
    client.closed().await;
}

/// Receives publishes until one arrives on `marker`; returns (topic, payload) of those before it.
async fn until_marker(client: &mut v4::Client, marker: &str) -> Vec<(String, Vec<u8>)> {
    let mut seen = Vec::new();
    loop {
        let p = client.publish().await;
        if p.topic == marker {
            return seen;
        }
        seen.push((p.topic.clone(), p.payload.to_vec()));
    }
}

fn connect_packet(id: &str, clean: bool, keep_alive: u16) -> wire::Connect {
    let mut c = wire::Connect::new(id);
    c.clean_session = clean;
    c.keep_alive = keep_alive;
    c
}

/// Opens a raw connection with `connect` and returns it with the broker's CONNACK.
async fn raw_connect(addr: SocketAddr, connect: wire::Connect) -> (RawClient, wire::ConnAck) {
    let mut raw = RawClient::connect(addr).await;
    raw.send_v4(wire::Packet::Connect(connect)).await;
    match raw.recv_v4().await {
        Some(wire::Packet::ConnAck(ack)) => (raw, ack),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// A raw 3.1.1 session that was accepted; returns it with the session-present flag.
async fn raw_session(addr: SocketAddr, id: &str, clean: bool) -> (RawClient, bool) {
    let (raw, ack) = raw_connect(addr, connect_packet(id, clean, 60)).await;
    assert_eq!(ack.code, wire::ConnectReturnCode::Success);
    (raw, ack.session_present)
}

async fn raw_subscribe(raw: &mut RawClient, filter: &str, qos: QoS) {
    let mut subscribe = wire::Subscribe::new(filter, qos);
    subscribe.pkid = 1;
    raw.send_v4(wire::Packet::Subscribe(subscribe)).await;
    match raw.recv_v4().await {
        Some(wire::Packet::SubAck(ack)) => {
            assert_eq!(ack.pkid, 1);
            assert_eq!(ack.return_codes, vec![SubscribeReasonCode::Success(qos)]);
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

async fn raw_publish_received(raw: &mut RawClient) -> wire::Publish {
    match raw.recv_v4().await {
        Some(wire::Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// The bytes of a CONNECT with an arbitrary protocol name and level (keep-alive 60), which
/// rumqttc's encoder cannot produce.
fn raw_connect_bytes(name: &[u8], level: u8, clean: bool, client_id: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name);
    body.push(level);
    body.push(if clean { 0x02 } else { 0x00 });
    body.extend_from_slice(&60u16.to_be_bytes());
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id);
    let mut bytes = vec![0x10, body.len() as u8];
    bytes.extend_from_slice(&body);
    bytes
}

// ---------------------------------------------------------------------------------------------
// CONNECT
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn empty_client_id_with_clean_session_is_accepted_with_an_assigned_id() {
    let broker = TestBroker::start().await;
    // Two clients without an id: if the broker did not give each its own id they would share
    // one and the second would take the first over.
    let (mut a, a_present) = connect(&broker, "", true).await;
    let (mut b, b_present) = connect(&broker, "", true).await;
    assert!(!a_present && !b_present);
    subscribe(&mut a, "anon/t", QoS::AtLeastOnce).await;
    publish(&mut b, "anon/t", QoS::AtLeastOnce, false, b"from b").await;
    let p = a.publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("anon/t", &b"from b"[..])
    );
    assert_eq!(broker.broker.online_count(), 2);
    broker.stop().await;
}

#[tokio::test]
async fn empty_client_id_without_clean_session_is_rejected_with_return_code_2() {
    let broker = TestBroker::start().await;
    let (mut raw, ack) = raw_connect(broker.tcp(), connect_packet("", false, 60)).await;
    assert_eq!(ack.code, wire::ConnectReturnCode::BadClientId);
    assert_eq!(ack.code as u8, 2);
    assert!(!ack.session_present);
    assert_eq!(raw.recv_v4().await, None, "connection closed after refusal");
    broker.stop().await;
}

#[tokio::test]
async fn mqtt_3_1_connect_is_accepted_and_the_session_works() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.tcp()).await;
    raw.send(&raw_connect_bytes(b"MQIsdp", 3, true, b"c31"))
        .await;
    match raw.recv_v4().await {
        Some(wire::Packet::ConnAck(ack)) => {
            assert_eq!(ack.code, wire::ConnectReturnCode::Success);
            assert!(!ack.session_present);
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // 3.1 packets after CONNECT are encoded as in 3.1.1.
    raw_subscribe(&mut raw, "v31/t", QoS::AtLeastOnce).await;
    let mut publish = wire::Publish::new("v31/t", QoS::AtLeastOnce, b"hi".to_vec());
    publish.pkid = 5;
    raw.send_v4(wire::Packet::Publish(publish)).await;
    let mut got_ack = false;
    let mut got_publish = false;
    while !(got_ack && got_publish) {
        match raw.recv_v4().await {
            Some(wire::Packet::PubAck(a)) => {
                assert_eq!(a.pkid, 5);
                got_ack = true;
            }
            Some(wire::Packet::Publish(p)) => {
                assert_eq!((p.topic.as_str(), &p.payload[..]), ("v31/t", &b"hi"[..]));
                assert_eq!(p.qos, QoS::AtLeastOnce);
                got_publish = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    broker.stop().await;
}

#[tokio::test]
async fn mqtt_3_1_connect_with_empty_client_id_is_rejected_with_return_code_2() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.tcp()).await;
    raw.send(&raw_connect_bytes(b"MQIsdp", 3, true, b"")).await;
    match raw.recv_v4().await {
        Some(wire::Packet::ConnAck(ack)) => {
            assert_eq!(ack.code, wire::ConnectReturnCode::BadClientId)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert_eq!(raw.recv_v4().await, None);
    broker.stop().await;
}

#[tokio::test]
async fn mqtt_3_1_persistent_session_resumes_without_setting_the_reserved_connack_bit() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.tcp()).await;
    raw.send(&raw_connect_bytes(b"MQIsdp", 3, false, b"c31p"))
        .await;
    assert!(matches!(
        raw.recv_v4().await,
        Some(wire::Packet::ConnAck(_))
    ));
    raw_subscribe(&mut raw, "v31p/t", QoS::AtLeastOnce).await;
    raw.send_v4(wire::Packet::Disconnect).await;
    assert_eq!(raw.recv_v4().await, None);

    let mut raw = RawClient::connect(broker.tcp()).await;
    raw.send(&raw_connect_bytes(b"MQIsdp", 3, false, b"c31p"))
        .await;
    // 3.1 has no session-present flag: the first CONNACK byte is reserved and must be 0.
    let mut connack = [0u8; 4];
    raw.stream.read_exact(&mut connack).await.expect("CONNACK");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    // The session was resumed all the same: the subscription still holds.
    let mut publisher = clean_client(&broker, "c31p-pub").await;
    publish(&mut publisher, "v31p/t", QoS::AtLeastOnce, false, b"kept").await;
    let p = raw_publish_received(&mut raw).await;
    assert_eq!(&p.payload[..], b"kept");
    broker.stop().await;
}

#[tokio::test]
async fn unsupported_protocol_level_gets_return_code_1_and_is_closed() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.tcp()).await;
    raw.send(&raw_connect_bytes(b"MQTT", 7, true, b"lvl7"))
        .await;
    match raw.recv_v4().await {
        Some(wire::Packet::ConnAck(ack)) => {
            assert_eq!(ack.code, wire::ConnectReturnCode::RefusedProtocolVersion);
            assert_eq!(ack.code as u8, 1);
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert_eq!(raw.recv_v4().await, None, "connection closed after refusal");
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Clean and persistent sessions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn persistent_session_reconnect_is_present_and_keeps_subscriptions() {
    let broker = TestBroker::start().await;
    let (mut sub, present) = connect(&broker, "persist", false).await;
    assert!(!present, "first connection has no session");
    subscribe(&mut sub, "ps/t", QoS::AtLeastOnce).await;
    disconnect(&mut sub).await;

    let (mut sub, present) = connect(&broker, "persist", false).await;
    assert!(present, "session_present=1 after reconnect");
    let mut publisher = clean_client(&broker, "persist-pub").await;
    publish(&mut publisher, "ps/t", QoS::AtLeastOnce, false, b"kept").await;
    let p = sub.publish().await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("ps/t", &b"kept"[..]));
    broker.stop().await;
}

#[tokio::test]
async fn clean_session_reconnect_discards_the_stored_session() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = connect(&broker, "cleaner", false).await;
    subscribe(&mut sub, "cs/t", QoS::AtLeastOnce).await;
    disconnect(&mut sub).await;

    let (mut sub, present) = connect(&broker, "cleaner", true).await;
    assert!(!present, "clean session never resumes a session");
    subscribe(&mut sub, "cs/marker", QoS::AtLeastOnce).await;
    let mut publisher = clean_client(&broker, "cleaner-pub").await;
    publish(&mut publisher, "cs/t", QoS::AtLeastOnce, false, b"lost").await;
    publish(&mut publisher, "cs/marker", QoS::AtLeastOnce, false, b"m").await;
    assert_eq!(until_marker(&mut sub, "cs/marker").await, vec![]);
    broker.stop().await;
}

#[tokio::test]
async fn clean_session_state_ends_with_its_connection() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = connect(&broker, "ephemeral", true).await;
    subscribe(&mut sub, "ce/t", QoS::AtLeastOnce).await;
    disconnect(&mut sub).await;

    // Reconnecting without clean session finds nothing of the clean session.
    let (mut sub, present) = connect(&broker, "ephemeral", false).await;
    assert!(!present);
    subscribe(&mut sub, "ce/marker", QoS::AtLeastOnce).await;
    let mut publisher = clean_client(&broker, "ephemeral-pub").await;
    publish(&mut publisher, "ce/t", QoS::AtLeastOnce, false, b"lost").await;
    publish(&mut publisher, "ce/marker", QoS::AtLeastOnce, false, b"m").await;
    assert_eq!(until_marker(&mut sub, "ce/marker").await, vec![]);
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Offline queueing
// ---------------------------------------------------------------------------------------------

/// Subscribes `id` persistently to `filter` at QoS 1 and disconnects it.
async fn offline_subscriber(broker: &TestBroker, id: &str, filter: &str) {
    let (mut sub, _) = connect(broker, id, false).await;
    subscribe(&mut sub, filter, QoS::AtLeastOnce).await;
    disconnect(&mut sub).await;
}

#[tokio::test]
async fn qos1_messages_for_an_offline_session_are_delivered_in_order_on_reconnect() {
    let broker = TestBroker::start().await;
    offline_subscriber(&broker, "offline-q1", "oq/t").await;
    let mut publisher = clean_client(&broker, "offline-q1-pub").await;
    for i in 0..5 {
        publish(
            &mut publisher,
            "oq/t",
            QoS::AtLeastOnce,
            false,
            format!("m{i}").as_bytes(),
        )
        .await;
    }
    let (mut sub, present) = connect(&broker, "offline-q1", false).await;
    assert!(present);
    for i in 0..5 {
        let p = sub.publish().await;
        assert_eq!(p.topic, "oq/t");
        assert_eq!(
            p.payload,
            format!("m{i}").as_bytes(),
            "message {i} in order"
        );
        assert_eq!(p.qos, QoS::AtLeastOnce);
    }
    sub.no_publish().await;
    broker.stop().await;
}

#[tokio::test]
async fn inflight_message_is_resent_before_messages_queued_while_offline() {
    let broker = TestBroker::start().await;
    let (mut raw, _) = raw_session(broker.tcp(), "offline-order", false).await;
    raw_subscribe(&mut raw, "oo/t", QoS::AtLeastOnce).await;
    let mut publisher = clean_client(&broker, "offline-order-pub").await;
    publish(&mut publisher, "oo/t", QoS::AtLeastOnce, false, b"m0").await;
    let m0 = raw_publish_received(&mut raw).await;
    assert_eq!(&m0.payload[..], b"m0");
    // m0 stays unacknowledged.
    drop(raw);
    // m1 and m2 may reach the old connection before the broker notices the drop (then they are
    // in flight too and come back with DUP) or the stored queue; either way they follow m0.
    for m in ["m1", "m2"] {
        publish(
            &mut publisher,
            "oo/t",
            QoS::AtLeastOnce,
            false,
            m.as_bytes(),
        )
        .await;
    }
    let (mut raw, present) = raw_session(broker.tcp(), "offline-order", false).await;
    assert!(present);
    let mut got = Vec::new();
    for i in 0..3 {
        let p = raw_publish_received(&mut raw).await;
        if i == 0 {
            assert!(p.dup, "m0 is a resend");
        }
        raw.send_v4(wire::Packet::PubAck(wire::PubAck::new(p.pkid)))
            .await;
        got.push(String::from_utf8(p.payload.to_vec()).expect("utf8"));
    }
    assert_eq!(got, vec!["m0", "m1", "m2"]);
    broker.stop().await;
}

#[tokio::test]
async fn qos0_messages_are_not_queued_for_an_offline_session() {
    let broker = TestBroker::start().await;
    offline_subscriber(&broker, "offline-q0", "oq0/t").await;
    let mut publisher = clean_client(&broker, "offline-q0-pub").await;
    publish(&mut publisher, "oq0/t", QoS::AtMostOnce, false, b"qos0").await;
    // Sent on the same connection after the QoS 0 message: once it is acknowledged, the QoS 0
    // message has been routed (or dropped) too.
    publish(&mut publisher, "oq0/t", QoS::AtLeastOnce, false, b"qos1").await;
    let (mut sub, present) = connect(&broker, "offline-q0", false).await;
    assert!(present);
    let p = sub.publish().await;
    assert_eq!(&p.payload[..], b"qos1", "the QoS 0 message was not queued");
    sub.no_publish().await;
    broker.stop().await;
}

#[tokio::test]
async fn offline_queue_is_bounded_by_max_queued_messages() {
    let broker = TestBroker::start_with(|c| c.limits.max_queued_messages = 3).await;
    offline_subscriber(&broker, "offline-bound", "ob/t").await;
    let mut publisher = clean_client(&broker, "offline-bound-pub").await;
    for i in 0..5 {
        publish(
            &mut publisher,
            "ob/t",
            QoS::AtLeastOnce,
            false,
            format!("m{i}").as_bytes(),
        )
        .await;
    }
    let (mut sub, present) = connect(&broker, "offline-bound", false).await;
    assert!(present);
    for i in 0..3 {
        let p = sub.publish().await;
        assert_eq!(p.payload, format!("m{i}").as_bytes());
    }
    sub.no_publish().await;
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// QoS
// ---------------------------------------------------------------------------------------------

const QOS_LEVELS: [QoS; 3] = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];

fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) < (b as u8) {
        a
    } else {
        b
    }
}

#[tokio::test]
async fn delivered_qos_is_the_minimum_of_publish_and_subscription_qos() {
    let broker = TestBroker::start().await;
    let mut sub = clean_client(&broker, "qos-matrix-sub").await;
    for s in QOS_LEVELS {
        subscribe(&mut sub, &format!("qm/{}", s as u8), s).await;
    }
    let mut publisher = clean_client(&broker, "qos-matrix-pub").await;
    for p in QOS_LEVELS {
        for s in QOS_LEVELS {
            let payload = format!("p{}s{}", p as u8, s as u8);
            publish(
                &mut publisher,
                &format!("qm/{}", s as u8),
                p,
                false,
                payload.as_bytes(),
            )
            .await;
        }
    }
    let mut received = BTreeMap::new();
    for _ in 0..9 {
        let p = sub.publish().await;
        let key = String::from_utf8(p.payload.to_vec()).expect("utf8");
        assert!(received.insert(key, p.qos).is_none(), "delivered twice");
    }
    for p in QOS_LEVELS {
        for s in QOS_LEVELS {
            let key = format!("p{}s{}", p as u8, s as u8);
            assert_eq!(
                received.get(&key),
                Some(&min_qos(p, s)),
                "publish QoS {p:?}, subscription QoS {s:?}"
            );
        }
    }
    sub.no_publish().await;
    broker.stop().await;
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_one_copy_at_the_highest_qos() {
    let broker = TestBroker::start().await;
    let mut sub = clean_client(&broker, "overlap-sub").await;
    subscribe(&mut sub, "ov/#", QoS::AtMostOnce).await;
    subscribe(&mut sub, "ov/+", QoS::ExactlyOnce).await;
    subscribe(&mut sub, "marker", QoS::AtLeastOnce).await;
    let mut publisher = clean_client(&broker, "overlap-pub").await;
    publish(&mut publisher, "ov/t", QoS::AtLeastOnce, false, b"one").await;
    publish(&mut publisher, "marker", QoS::AtLeastOnce, false, b"m").await;
    let p = sub.publish().await;
    assert_eq!((&p.payload[..], p.qos), (&b"one"[..], QoS::AtLeastOnce));
    assert_eq!(
        until_marker(&mut sub, "marker").await,
        vec![],
        "one copy only"
    );
    broker.stop().await;
}

#[tokio::test]
async fn resubscribing_replaces_the_subscription_qos() {
    let broker = TestBroker::start().await;
    let mut sub = clean_client(&broker, "resub").await;
    subscribe(&mut sub, "rs/t", QoS::AtMostOnce).await;
    subscribe(&mut sub, "rs/t", QoS::ExactlyOnce).await;
    subscribe(&mut sub, "marker", QoS::AtLeastOnce).await;
    let mut publisher = clean_client(&broker, "resub-pub").await;
    publish(&mut publisher, "rs/t", QoS::ExactlyOnce, false, b"x").await;
    publish(&mut publisher, "marker", QoS::AtLeastOnce, false, b"m").await;
    let p = sub.publish().await;
    assert_eq!(
        p.qos,
        QoS::ExactlyOnce,
        "the second SUBSCRIBE replaced the first"
    );
    assert_eq!(
        until_marker(&mut sub, "marker").await,
        vec![],
        "one copy only"
    );
    broker.stop().await;
}

/// A connection that keeps publishing to one topic reuses where the topic was routed; every
/// subscription made, changed or removed in between must still be seen by its next message.
#[tokio::test]
async fn a_publisher_on_one_topic_sees_subscriptions_made_changed_and_removed_meanwhile() {
    let broker = TestBroker::start().await;
    let mut publisher = clean_client(&broker, "memo-pub").await;
    let mut first = clean_client(&broker, "memo-first").await;
    subscribe(&mut first, "memo/t", QoS::AtMostOnce).await;
    subscribe(&mut first, "marker", QoS::AtLeastOnce).await;
    publish(&mut publisher, "memo/t", QoS::AtLeastOnce, false, b"1").await;
    publish(&mut publisher, "memo/t", QoS::AtLeastOnce, false, b"2").await;
    let before: Vec<_> = [first.publish().await, first.publish().await]
        .iter()
        .map(|p| (p.payload.to_vec(), p.qos))
        .collect();
    assert_eq!(
        before,
        vec![
            (b"1".to_vec(), QoS::AtMostOnce),
            (b"2".to_vec(), QoS::AtMostOnce)
        ]
    );

    // A new subscriber, by wildcard, and a changed QoS: the same publisher connection's next
    // message on the same topic reaches both, at the new QoS.
    let mut second = clean_client(&broker, "memo-second").await;
    subscribe(&mut second, "memo/+", QoS::AtLeastOnce).await;
    subscribe(&mut first, "memo/t", QoS::AtLeastOnce).await;
    publish(&mut publisher, "memo/t", QoS::AtLeastOnce, false, b"3").await;
    let to_second = second.publish().await;
    assert_eq!(to_second.payload.as_ref(), b"3");
    let to_first = first.publish().await;
    assert_eq!(
        (to_first.payload.as_ref(), to_first.qos),
        (&b"3"[..], QoS::AtLeastOnce)
    );

    // Unsubscribed: the next message on the topic no longer reaches the first subscriber.
    unsubscribe(&mut first, "memo/t").await;
    publish(&mut publisher, "memo/t", QoS::AtLeastOnce, false, b"4").await;
    publish(&mut publisher, "marker", QoS::AtLeastOnce, false, b"m").await;
    assert_eq!(until_marker(&mut first, "marker").await, vec![]);
    assert_eq!(second.publish().await.payload.as_ref(), b"4");
    broker.stop().await;
}

#[tokio::test]
async fn qos1_publish_is_acknowledged_with_its_packet_id() {
    let broker = TestBroker::start().await;
    let (mut raw, _) = raw_session(broker.tcp(), "puback-raw", true).await;
    let mut publish = wire::Publish::new("ack/t", QoS::AtLeastOnce, b"x".to_vec());
    publish.pkid = 42;
    raw.send_v4(wire::Packet::Publish(publish)).await;
    assert_eq!(
        raw.recv_v4().await,
        Some(wire::Packet::PubAck(wire::PubAck::new(42)))
    );
    broker.stop().await;
}

#[tokio::test]
async fn qos2_publish_completes_with_pubrec_then_pubcomp() {
    let broker = TestBroker::start().await;
    let mut sub = clean_client(&broker, "q2in-sub").await;
    subscribe(&mut sub, "q2in/t", QoS::ExactlyOnce).await;
    let (mut raw, _) = raw_session(broker.tcp(), "q2in-raw", true).await;
    let mut publish = wire::Publish::new("q2in/t", QoS::ExactlyOnce, b"x".to_vec());
    publish.pkid = 9;
    raw.send_v4(wire::Packet::Publish(publish)).await;
    assert_eq!(
        raw.recv_v4().await,
        Some(wire::Packet::PubRec(wire::PubRec::new(9)))
    );
    raw.send_v4(wire::Packet::PubRel(wire::PubRel::new(9)))
        .await;
    assert_eq!(
        raw.recv_v4().await,
        Some(wire::Packet::PubComp(wire::PubComp::new(9)))
    );
    let p = sub.publish().await;
    assert_eq!((&p.payload[..], p.qos), (&b"x"[..], QoS::ExactlyOnce));
    broker.stop().await;
}

#[tokio::test]
async fn outgoing_qos1_frees_its_inflight_slot_only_on_puback() {
    let broker = TestBroker::start_with(|c| c.limits.max_inflight = 1).await;
    let (mut raw, _) = raw_session(broker.tcp(), "out-q1", true).await;
    raw_subscribe(&mut raw, "oq1/t", QoS::AtLeastOnce).await;
    let mut publisher = clean_client(&broker, "out-q1-pub").await;
    publish(&mut publisher, "oq1/t", QoS::AtLeastOnce, false, b"first").await;
    publish(&mut publisher, "oq1/t", QoS::AtLeastOnce, false, b"second").await;

    let first = raw_publish_received(&mut raw).await;
    assert_eq!(
        (&first.payload[..], first.qos),
        (&b"first"[..], QoS::AtLeastOnce)
    );
    assert!(!first.dup);
    assert_ne!(first.pkid, 0);
    // Window of one: "second" waits until "first" is acknowledged. Proven by ordering: a PINGREQ
    // sent now is answered before anything else if "second" is (correctly) held back.
    raw.send_v4(wire::Packet::PingReq).await;
    assert_eq!(raw.recv_v4().await, Some(wire::Packet::PingResp));
    raw.send_v4(wire::Packet::PubAck(wire::PubAck::new(first.pkid)))
        .await;
    let second = raw_publish_received(&mut raw).await;
    assert_eq!(&second.payload[..], b"second");
    assert_ne!(second.pkid, 0);
    broker.stop().await;
}

#[tokio::test]
async fn outgoing_qos2_completes_with_pubrel_and_frees_its_slot_on_pubcomp() {
    let broker = TestBroker::start_with(|c| c.limits.max_inflight = 1).await;
    let (mut raw, _) = raw_session(broker.tcp(), "out-q2", true).await;
    raw_subscribe(&mut raw, "oq2/t", QoS::ExactlyOnce).await;
    let mut publisher = clean_client(&broker, "out-q2-pub").await;
    publish(&mut publisher, "oq2/t", QoS::ExactlyOnce, false, b"first").await;
    publish(&mut publisher, "oq2/t", QoS::ExactlyOnce, false, b"second").await;

    let first = raw_publish_received(&mut raw).await;
    assert_eq!(
        (&first.payload[..], first.qos),
        (&b"first"[..], QoS::ExactlyOnce)
    );
    raw.send_v4(wire::Packet::PubRec(wire::PubRec::new(first.pkid)))
        .await;
    assert_eq!(
        raw.recv_v4().await,
        Some(wire::Packet::PubRel(wire::PubRel::new(first.pkid)))
    );
    // Still in flight until PUBCOMP: "second" must not come before the PINGRESP.
    raw.send_v4(wire::Packet::PingReq).await;
    assert_eq!(raw.recv_v4().await, Some(wire::Packet::PingResp));
    raw.send_v4(wire::Packet::PubComp(wire::PubComp::new(first.pkid)))
        .await;
    let second = raw_publish_received(&mut raw).await;
    assert_eq!(
        (&second.payload[..], second.qos),
        (&b"second"[..], QoS::ExactlyOnce)
    );
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Retry after reconnect and exactly-once
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unacknowledged_qos1_message_is_resent_with_dup_after_reconnect() {
    let broker = TestBroker::start().await;
    let (mut raw, _) = raw_session(broker.tcp(), "retry-q1", false).await;
    raw_subscribe(&mut raw, "rq1/t", QoS::AtLeastOnce).await;
    let mut publisher = clean_client(&broker, "retry-q1-pub").await;
    publish(&mut publisher, "rq1/t", QoS::AtLeastOnce, false, b"again").await;
    let first = raw_publish_received(&mut raw).await;
    assert!(!first.dup);
    drop(raw); // no PUBACK

    let (mut raw, present) = raw_session(broker.tcp(), "retry-q1", false).await;
    assert!(present);
    let resent = raw_publish_received(&mut raw).await;
    assert!(resent.dup, "resent with DUP=1");
    assert_eq!(resent.pkid, first.pkid, "same packet id");
    assert_eq!(
        (resent.topic.as_str(), &resent.payload[..]),
        ("rq1/t", &b"again"[..])
    );
    assert_eq!(resent.qos, QoS::AtLeastOnce);
    raw.send_v4(wire::Packet::PubAck(wire::PubAck::new(resent.pkid)))
        .await;
    // Acknowledged now: the next message is a fresh one, not a third copy.
    publish(&mut publisher, "rq1/t", QoS::AtLeastOnce, false, b"next").await;
    let next = raw_publish_received(&mut raw).await;
    assert_eq!((&next.payload[..], next.dup), (&b"next"[..], false));
    broker.stop().await;
}

#[tokio::test]
async fn unacknowledged_qos2_publish_is_resent_with_dup_after_reconnect() {
    let broker = TestBroker::start().await;
    let (mut raw, _) = raw_session(broker.tcp(), "retry-q2p", false).await;
    raw_subscribe(&mut raw, "rq2p/t", QoS::ExactlyOnce).await;
    let mut publisher = clean_client(&broker, "retry-q2p-pub").await;
    publish(&mut publisher, "rq2p/t", QoS::ExactlyOnce, false, b"twice?").await;
    let first = raw_publish_received(&mut raw).await;
    assert_eq!(first.qos, QoS::ExactlyOnce);
    drop(raw); // no PUBREC

    let (mut raw, present) = raw_session(broker.tcp(), "retry-q2p", false).await;
    assert!(present);
    let resent = raw_publish_received(&mut raw).await;
    assert!(resent.dup);
    assert_eq!(
        (resent.pkid, resent.qos, &resent.payload[..]),
        (first.pkid, QoS::ExactlyOnce, &b"twice?"[..])
    );
    broker.stop().await;
}

#[tokio::test]
async fn pubrel_is_resent_after_reconnect_for_a_pubrec_acknowledged_message() {
    let broker = TestBroker::start().await;
    let (mut raw, _) = raw_session(broker.tcp(), "retry-rel", false).await;
    raw_subscribe(&mut raw, "rrel/t", QoS::ExactlyOnce).await;
    let mut publisher = clean_client(&broker, "retry-rel-pub").await;
    publish(&mut publisher, "rrel/t", QoS::ExactlyOnce, false, b"q2").await;
    let first = raw_publish_received(&mut raw).await;
    raw.send_v4(wire::Packet::PubRec(wire::PubRec::new(first.pkid)))
        .await;
    assert_eq!(
        raw.recv_v4().await,
        Some(wire::Packet::PubRel(wire::PubRel::new(first.pkid)))
    );
    drop(raw); // no PUBCOMP

    let (mut raw, present) = raw_session(broker.tcp(), "retry-rel", false).await;
    assert!(present);
    assert_eq!(
        raw.recv_v4().await,
        Some(wire::Packet::PubRel(wire::PubRel::new(first.pkid))),
        "PUBREL resent, not the PUBLISH"
    );
    raw.send_v4(wire::Packet::PubComp(wire::PubComp::new(first.pkid)))
        .await;
    publish(&mut publisher, "rrel/t", QoS::ExactlyOnce, false, b"next").await;
    let next = raw_publish_received(&mut raw).await;
    assert_eq!((&next.payload[..], next.dup), (&b"next"[..], false));
    broker.stop().await;
}

#[tokio::test]
async fn qos2_publish_resent_before_pubrel_is_delivered_once() {
    let broker = TestBroker::start().await;
    let mut sub = clean_client(&broker, "once-sub").await;
    subscribe(&mut sub, "once/t", QoS::ExactlyOnce).await;
    let (mut raw, _) = raw_session(broker.tcp(), "once-pub", true).await;
    let mut publish = wire::Publish::new("once/t", QoS::ExactlyOnce, b"once".to_vec());
    publish.pkid = 10;
    raw.send_v4(wire::Packet::Publish(publish.clone())).await;
    assert_eq!(
        raw.recv_v4().await,
        Some(wire::Packet::PubRec(wire::PubRec::new(10)))
    );
    publish.dup = true;
    raw.send_v4(wire::Packet::Publish(publish)).await;
    assert_eq!(
        raw.recv_v4().await,
        Some(wire::Packet::PubRec(wire::PubRec::new(10))),
        "the resend is acknowledged again"
    );
    raw.send_v4(wire::Packet::PubRel(wire::PubRel::new(10)))
        .await;
    assert_eq!(
        raw.recv_v4().await,
        Some(wire::Packet::PubComp(wire::PubComp::new(10)))
    );
    let p = sub.publish().await;
    assert_eq!(&p.payload[..], b"once");
    sub.no_publish().await;
    broker.stop().await;
}

#[tokio::test]
async fn qos2_publish_resent_after_reconnect_before_pubrel_is_delivered_once() {
    let broker = TestBroker::start().await;
    let mut sub = clean_client(&broker, "once-rc-sub").await;
    subscribe(&mut sub, "oncerc/t", QoS::ExactlyOnce).await;
    let (mut raw, _) = raw_session(broker.tcp(), "once-rc-pub", false).await;
    let mut publish = wire::Publish::new("oncerc/t", QoS::ExactlyOnce, b"once".to_vec());
    publish.pkid = 11;
    raw.send_v4(wire::Packet::Publish(publish.clone())).await;
    assert_eq!(
        raw.recv_v4().await,
        Some(wire::Packet::PubRec(wire::PubRec::new(11)))
    );
    drop(raw); // before PUBREL

    // The persistent session remembers packet id 11 as received but not released.
    let (mut raw, present) = raw_session(broker.tcp(), "once-rc-pub", false).await;
    assert!(present);
    publish.dup = true;
    raw.send_v4(wire::Packet::Publish(publish)).await;
    assert_eq!(
        raw.recv_v4().await,
        Some(wire::Packet::PubRec(wire::PubRec::new(11)))
    );
    raw.send_v4(wire::Packet::PubRel(wire::PubRel::new(11)))
        .await;
    assert_eq!(
        raw.recv_v4().await,
        Some(wire::Packet::PubComp(wire::PubComp::new(11)))
    );
    assert_eq!(&sub.publish().await.payload[..], b"once");
    sub.no_publish().await;
    broker.stop().await;
}

#[tokio::test]
async fn qos2_packet_id_is_reusable_after_pubrel() {
    let broker = TestBroker::start().await;
    let mut sub = clean_client(&broker, "reuse-sub").await;
    subscribe(&mut sub, "reuse/t", QoS::ExactlyOnce).await;
    let (mut raw, _) = raw_session(broker.tcp(), "reuse-pub", true).await;
    for payload in [&b"one"[..], &b"two"[..]] {
        let mut publish = wire::Publish::new("reuse/t", QoS::ExactlyOnce, payload.to_vec());
        publish.pkid = 3;
        raw.send_v4(wire::Packet::Publish(publish)).await;
        assert_eq!(
            raw.recv_v4().await,
            Some(wire::Packet::PubRec(wire::PubRec::new(3)))
        );
        raw.send_v4(wire::Packet::PubRel(wire::PubRel::new(3)))
            .await;
        assert_eq!(
            raw.recv_v4().await,
            Some(wire::Packet::PubComp(wire::PubComp::new(3)))
        );
        let p = sub.publish().await;
        assert_eq!(&p.payload[..], payload);
    }
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Topic matching
// ---------------------------------------------------------------------------------------------

/// Subscribes to `filter` and a marker, publishes to each topic then the marker, and returns
/// the topics that arrived.
async fn matched_topics(filter: &str, topics: &[&str]) -> Vec<String> {
    let broker = TestBroker::start().await;
    let mut sub = clean_client(&broker, "match-sub").await;
    subscribe(&mut sub, filter, QoS::AtLeastOnce).await;
    subscribe(&mut sub, "marker", QoS::AtLeastOnce).await;
    let mut publisher = clean_client(&broker, "match-pub").await;
    for t in topics {
        publish(&mut publisher, t, QoS::AtLeastOnce, false, b"x").await;
    }
    publish(&mut publisher, "marker", QoS::AtLeastOnce, false, b"m").await;
    let got = until_marker(&mut sub, "marker")
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    broker.stop().await;
    got
}

#[tokio::test]
async fn plus_wildcard_matches_exactly_one_level() {
    let got = matched_topics(
        "tm/+/c",
        &["tm/b/c", "tm/b/x/c", "tm/c", "tm//c", "tm/b/c/d", "tm/b/d"],
    )
    .await;
    assert_eq!(got, vec!["tm/b/c", "tm//c"]);
}

#[tokio::test]
async fn hash_wildcard_matches_the_parent_level_and_all_descendants() {
    let got = matched_topics(
        "th/a/#",
        &["th/a", "th/a/b", "th/a/b/c", "th/ab", "th/b", "th", "th/a/"],
    )
    .await;
    assert_eq!(got, vec!["th/a", "th/a/b", "th/a/b/c", "th/a/"]);
}

#[tokio::test]
async fn dollar_topics_are_not_matched_by_leading_wildcards() {
    // The broker's own $SYS messages are the only `$` topics there can be.
    let broker = TestBroker::start_with(|c| c.sys.interval_secs = 1).await;
    let mut wild = clean_client(&broker, "dollar-wild").await;
    subscribe(&mut wild, "#", QoS::AtMostOnce).await;
    subscribe(&mut wild, "+/broker/uptime", QoS::AtMostOnce).await;
    let mut sys = clean_client(&broker, "dollar-sys").await;
    subscribe(&mut sys, "$SYS/broker/uptime", QoS::AtMostOnce).await;
    // A live (not retained-on-subscribe) $SYS message was routed after both subscriptions.
    loop {
        let p = sys.publish().await;
        assert_eq!(p.topic, "$SYS/broker/uptime");
        if !p.retain {
            break;
        }
    }
    let mut publisher = clean_client(&broker, "dollar-pub").await;
    publish(&mut publisher, "marker", QoS::AtLeastOnce, false, b"m").await;
    let before = until_marker(&mut wild, "marker").await;
    assert_eq!(before, vec![], "'#' and '+/...' do not match $SYS topics");
    broker.stop().await;
}

#[tokio::test]
async fn client_publish_to_a_dollar_topic_is_not_delivered() {
    let broker = TestBroker::start().await;
    let mut sub = clean_client(&broker, "dollar-sub").await;
    subscribe(&mut sub, "$x/#", QoS::AtLeastOnce).await;
    subscribe(&mut sub, "marker", QoS::AtLeastOnce).await;
    let mut publisher = clean_client(&broker, "dollar-pub").await;
    // 3.1.1 has no negative PUBACK: the flow completes but nothing is routed.
    publish(&mut publisher, "$x/y", QoS::AtLeastOnce, false, b"no").await;
    publish(&mut publisher, "$x/z", QoS::ExactlyOnce, false, b"no").await;
    publish(&mut publisher, "$x", QoS::AtMostOnce, false, b"no").await;
    publish(&mut publisher, "marker", QoS::AtLeastOnce, false, b"m").await;
    assert_eq!(until_marker(&mut sub, "marker").await, vec![]);
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Retained messages
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn retained_message_is_delivered_on_subscribe_with_retain_flag_set() {
    let broker = TestBroker::start().await;
    let mut publisher = clean_client(&broker, "ret-pub").await;
    publish(&mut publisher, "rt/a", QoS::AtLeastOnce, true, b"r1").await;
    let mut sub = clean_client(&broker, "ret-sub").await;
    subscribe(&mut sub, "rt/#", QoS::ExactlyOnce).await;
    let p = sub.publish().await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("rt/a", &b"r1"[..]));
    assert!(p.retain, "retained delivery on subscribe has retain=1");
    assert_eq!(p.qos, QoS::AtLeastOnce, "published QoS, not upgraded");
    broker.stop().await;
}

#[tokio::test]
async fn retained_message_is_downgraded_to_the_subscription_qos() {
    let broker = TestBroker::start().await;
    let mut publisher = clean_client(&broker, "ret-down-pub").await;
    publish(&mut publisher, "rdn/t", QoS::ExactlyOnce, true, b"r2").await;
    let mut sub = clean_client(&broker, "ret-down-sub").await;
    subscribe(&mut sub, "rdn/t", QoS::AtLeastOnce).await;
    let p = sub.publish().await;
    assert_eq!(
        (&p.payload[..], p.qos, p.retain),
        (&b"r2"[..], QoS::AtLeastOnce, true)
    );
    broker.stop().await;
}

#[tokio::test]
async fn live_delivery_of_a_retained_publish_has_retain_flag_cleared() {
    let broker = TestBroker::start().await;
    let mut live = clean_client(&broker, "ret-live").await;
    subscribe(&mut live, "rl/t", QoS::AtLeastOnce).await;
    let mut publisher = clean_client(&broker, "ret-live-pub").await;
    publish(&mut publisher, "rl/t", QoS::AtLeastOnce, true, b"now").await;
    let p = live.publish().await;
    assert_eq!(&p.payload[..], b"now");
    assert!(!p.retain, "3.1.1: live delivery has retain=0");
    // It was retained all the same.
    let mut later = clean_client(&broker, "ret-later").await;
    subscribe(&mut later, "rl/t", QoS::AtLeastOnce).await;
    let p = later.publish().await;
    assert_eq!((&p.payload[..], p.retain), (&b"now"[..], true));
    broker.stop().await;
}

#[tokio::test]
async fn empty_retained_payload_deletes_the_retained_message() {
    let broker = TestBroker::start().await;
    let mut publisher = clean_client(&broker, "ret-del-pub").await;
    publish(&mut publisher, "rd/t", QoS::AtLeastOnce, true, b"old").await;
    publish(&mut publisher, "rd/t", QoS::AtLeastOnce, true, b"").await;
    let mut sub = clean_client(&broker, "ret-del-sub").await;
    subscribe(&mut sub, "rd/#", QoS::AtLeastOnce).await;
    // Retained messages are sent right after the SUBACK, so before the marker published now.
    subscribe(&mut sub, "marker", QoS::AtLeastOnce).await;
    publish(&mut publisher, "marker", QoS::AtLeastOnce, false, b"m").await;
    assert_eq!(until_marker(&mut sub, "marker").await, vec![]);
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Wills
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn will_is_published_when_the_connection_drops_without_disconnect() {
    let broker = TestBroker::start().await;
    let mut sub = clean_client(&broker, "will-sub").await;
    subscribe(&mut sub, "will/#", QoS::AtLeastOnce).await;
    let mut connect = connect_packet("will-dropper", true, 60);
    connect.last_will = Some(LastWill::new(
        "will/dropper",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (raw, ack) = raw_connect(broker.tcp(), connect).await;
    assert_eq!(ack.code, wire::ConnectReturnCode::Success);
    drop(raw);
    let p = sub.publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.qos),
        ("will/dropper", &b"gone"[..], QoS::AtLeastOnce)
    );
    broker.stop().await;
}

#[tokio::test]
async fn will_is_published_when_keep_alive_expires() {
    let broker = TestBroker::start().await;
    let mut sub = clean_client(&broker, "will-sub3").await;
    subscribe(&mut sub, "will/#", QoS::AtLeastOnce).await;
    let mut connect = connect_packet("will-idle", true, 1);
    connect.last_will = Some(LastWill::new(
        "will/idle",
        "timed out",
        QoS::AtMostOnce,
        false,
    ));
    let (_raw, ack) = raw_connect(broker.tcp(), connect).await;
    assert_eq!(ack.code, wire::ConnectReturnCode::Success);
    // The raw client stays open and silent; the broker gives up after 1.5 s.
    let p = sub.publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("will/idle", &b"timed out"[..])
    );
    broker.stop().await;
}

#[tokio::test]
async fn retained_will_is_kept_as_the_retained_message() {
    let broker = TestBroker::start().await;
    let mut connect = connect_packet("will-retained", true, 60);
    connect.last_will = Some(LastWill::new("will/ret", "offline", QoS::AtLeastOnce, true));
    let (raw, ack) = raw_connect(broker.tcp(), connect).await;
    assert_eq!(ack.code, wire::ConnectReturnCode::Success);
    // A live subscriber sees the will first, so it has been stored before the next subscribe.
    let mut live = clean_client(&broker, "will-ret-live").await;
    subscribe(&mut live, "will/ret", QoS::AtLeastOnce).await;
    drop(raw);
    assert_eq!(&live.publish().await.payload[..], b"offline");
    let mut later = clean_client(&broker, "will-ret-later").await;
    subscribe(&mut later, "will/ret", QoS::AtLeastOnce).await;
    let p = later.publish().await;
    assert_eq!((&p.payload[..], p.retain), (&b"offline"[..], true));
    broker.stop().await;
}

#[tokio::test]
async fn will_is_not_published_after_disconnect() {
    let broker = TestBroker::start().await;
    let mut sub = clean_client(&broker, "will-sub2").await;
    subscribe(&mut sub, "will/#", QoS::AtLeastOnce).await;
    let mut options = v4::options(broker.tcp(), "will-polite");
    options.set_last_will(LastWill::new(
        "will/polite",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let mut polite = v4::connect(options);
    assert_eq!(polite.connack().await.code, ConnectReturnCode::Success);
    disconnect(&mut polite).await;
    // The will would be scheduled after the socket closes; nothing orders it against a marker.
    sub.no_publish().await;
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Keep-alive
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn idle_client_is_disconnected_after_one_and_a_half_keep_alive_periods() {
    let broker = TestBroker::start().await;
    let (mut raw, ack) = raw_connect(broker.tcp(), connect_packet("idle", true, 1)).await;
    assert_eq!(ack.code, wire::ConnectReturnCode::Success);
    let start = Instant::now();
    raw.expect_closed().await;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(4),
        "closed too late: {elapsed:?}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn keep_alive_beyond_the_maximum_is_refused_with_identifier_rejected() {
    // 3.1.1 cannot carry a Server Keep Alive: asking for more than the maximum, or for none,
    // is refused (0x02, as Mosquitto's max_keepalive) rather than silently cut short.
    let broker = TestBroker::start_with(|c| c.limits.max_keep_alive_secs = 20).await;
    for (keep_alive, accepted) in [
        (21, false),
        (0, false),
        (u16::MAX, false),
        (20, true),
        (1, true),
    ] {
        let id = format!("ka-max-{keep_alive}");
        let (mut raw, ack) = raw_connect(broker.tcp(), connect_packet(&id, true, keep_alive)).await;
        if accepted {
            assert_eq!(
                ack.code,
                wire::ConnectReturnCode::Success,
                "keep-alive {keep_alive}"
            );
        } else {
            assert_eq!(
                ack.code,
                wire::ConnectReturnCode::BadClientId,
                "keep-alive {keep_alive}"
            );
            raw.expect_closed().await;
        }
    }
    broker.stop().await;
}

#[tokio::test]
async fn without_a_maximum_any_keep_alive_is_accepted() {
    let broker = TestBroker::start_with(|c| c.limits.max_keep_alive_secs = 0).await;
    for keep_alive in [0, u16::MAX] {
        let id = format!("ka-free-{keep_alive}");
        let (_raw, ack) = raw_connect(broker.tcp(), connect_packet(&id, true, keep_alive)).await;
        assert_eq!(
            ack.code,
            wire::ConnectReturnCode::Success,
            "keep-alive {keep_alive}"
        );
    }
    broker.stop().await;
}

#[tokio::test]
async fn client_that_pings_within_keep_alive_stays_connected() {
    let broker = TestBroker::start().await;
    let (mut raw, ack) = raw_connect(broker.tcp(), connect_packet("pinger", true, 1)).await;
    assert_eq!(ack.code, wire::ConnectReturnCode::Success);
    // Ping every 0.5 s for 3 s: twice the 1.5 s grace, so an idle-timer that ignored traffic
    // would have closed the connection.
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while start.elapsed() < Duration::from_secs(3) {
        tick.tick().await;
        raw.send_v4(wire::Packet::PingReq).await;
        assert_eq!(
            raw.recv_v4().await,
            Some(wire::Packet::PingResp),
            "still connected after {:?}",
            start.elapsed()
        );
    }
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Takeover
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn second_connection_with_the_same_client_id_takes_over() {
    let broker = TestBroker::start().await;
    let mut first = clean_client(&broker, "twin").await;
    subscribe(&mut first, "twin/t", QoS::AtLeastOnce).await;
    let mut second = clean_client(&broker, "twin").await;
    first.closed().await;
    subscribe(&mut second, "twin/t", QoS::AtLeastOnce).await;
    let mut publisher = clean_client(&broker, "twin-pub").await;
    publish(
        &mut publisher,
        "twin/t",
        QoS::AtLeastOnce,
        false,
        b"to second",
    )
    .await;
    let p = second.publish().await;
    assert_eq!(&p.payload[..], b"to second");
    assert_eq!(broker.broker.online_count(), 2, "second and publisher");
    broker.stop().await;
}

#[tokio::test]
async fn takeover_of_a_persistent_session_keeps_its_subscriptions() {
    let broker = TestBroker::start().await;
    let (mut first, _) = connect(&broker, "twin-p", false).await;
    subscribe(&mut first, "twinp/t", QoS::AtLeastOnce).await;
    let (mut second, present) = connect(&broker, "twin-p", false).await;
    assert!(present, "the session is handed over");
    first.closed().await;
    let mut publisher = clean_client(&broker, "twin-p-pub").await;
    publish(
        &mut publisher,
        "twinp/t",
        QoS::AtLeastOnce,
        false,
        b"handed",
    )
    .await;
    let p = second.publish().await;
    assert_eq!(&p.payload[..], b"handed");
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Shared subscriptions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn shared_subscription_delivers_each_message_to_exactly_one_member() {
    let broker = TestBroker::start().await;
    let mut a = clean_client(&broker, "share-a").await;
    let mut b = clean_client(&broker, "share-b").await;
    subscribe(&mut a, "$share/g/sh/t", QoS::AtLeastOnce).await;
    subscribe(&mut b, "$share/g/sh/t", QoS::AtLeastOnce).await;
    let mut publisher = clean_client(&broker, "share-pub").await;
    for i in 0..20 {
        publish(
            &mut publisher,
            "sh/t",
            QoS::AtLeastOnce,
            false,
            format!("{i}").as_bytes(),
        )
        .await;
    }
    let mut got: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..20 {
        let (who, p) = tokio::select! {
            p = a.publish() => (0, p),
            p = b.publish() => (1, p),
        };
        assert_eq!(p.topic, "sh/t");
        got[who].push(String::from_utf8(p.payload.to_vec()).expect("utf8"));
    }
    a.no_publish().await;
    b.no_publish().await;
    let all: BTreeSet<&String> = got.iter().flatten().collect();
    assert_eq!(all.len(), 20, "each message delivered once: {got:?}");
    assert!(
        !got[0].is_empty() && !got[1].is_empty(),
        "both members get messages: {got:?}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn shared_subscription_skips_an_offline_member() {
    let broker = TestBroker::start().await;
    let mut here = clean_client(&broker, "share-here").await;
    subscribe(&mut here, "$share/g/sho/t", QoS::AtLeastOnce).await;
    subscribe(&mut here, "sho/gone", QoS::AtLeastOnce).await;
    let mut connect = connect_packet("share-away", false, 60);
    connect.last_will = Some(LastWill::new("sho/gone", "away", QoS::AtLeastOnce, false));
    let (mut away, _) = raw_connect(broker.tcp(), connect).await;
    raw_subscribe(&mut away, "$share/g/sho/t", QoS::AtLeastOnce).await;
    drop(away);
    // The will is published only after the broker has taken the member offline.
    assert_eq!(&here.publish().await.payload[..], b"away");
    let mut publisher = clean_client(&broker, "share-off-pub").await;
    for i in 0..4 {
        publish(
            &mut publisher,
            "sho/t",
            QoS::AtLeastOnce,
            false,
            format!("{i}").as_bytes(),
        )
        .await;
    }
    for i in 0..4 {
        assert_eq!(here.publish().await.payload, format!("{i}").as_bytes());
    }
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Unsubscribe
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let broker = TestBroker::start().await;
    let mut sub = clean_client(&broker, "unsub").await;
    subscribe(&mut sub, "us/t", QoS::AtLeastOnce).await;
    subscribe(&mut sub, "marker", QoS::AtLeastOnce).await;
    let mut publisher = clean_client(&broker, "unsub-pub").await;
    publish(&mut publisher, "us/t", QoS::AtLeastOnce, false, b"before").await;
    assert_eq!(&sub.publish().await.payload[..], b"before");

    unsubscribe(&mut sub, "us/t").await;
    publish(&mut publisher, "us/t", QoS::AtLeastOnce, false, b"after").await;
    publish(&mut publisher, "marker", QoS::AtLeastOnce, false, b"m").await;
    assert_eq!(until_marker(&mut sub, "marker").await, vec![]);
    broker.stop().await;
}
