//! MQTT 5 session behaviour: session expiry and clean start, takeover, assigned client
//! identifiers, server keep-alive, wills, receive maximum, message expiry and maximum packet size.

mod common;
mod mqtt5_support;

use bytes::Bytes;
use common::{v5, RawClient, TestBroker};
use mqtt5_support::*;
use rumqttc::v5::mqttbytes::v5::{
    ConnectProperties, ConnectReturnCode, Disconnect, DisconnectProperties, DisconnectReasonCode,
    LastWill, LastWillProperties, Packet, PubAck, PubAckReason, PublishProperties,
};
use rumqttc::v5::mqttbytes::QoS;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Session expiry and clean start
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn reconnect_within_session_expiry_resumes_session_with_queued_messages() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let (mut sub, ack) = v5_client(addr, "se-resume", |o| {
        o.set_session_expiry_interval(Some(5));
    })
    .await;
    assert!(!ack.session_present);
    subscribe(&mut sub, "se/resume", QoS::AtLeastOnce).await;
    end_connection(&mut sub).await;
    drop(sub);

    let (mut publisher, _) = v5_client(addr, "se-resume-pub", |_| {}).await;
    assert_eq!(
        publish_qos1(&mut publisher, "se/resume", "while-away").await,
        PubAckReason::Success,
        "the offline session's subscription still matches"
    );

    let (mut sub, ack) = v5_client(addr, "se-resume", |o| {
        o.set_session_expiry_interval(Some(5));
        o.set_clean_start(false);
    })
    .await;
    assert!(ack.session_present, "the session was kept");
    let p = sub.publish().await;
    assert_eq!(&p.topic[..], b"se/resume");
    assert_eq!(&p.payload[..], b"while-away");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    broker.stop().await;
}

#[tokio::test]
async fn session_expires_after_interval_and_its_queued_messages_are_gone() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let (mut sub, _) = v5_client(addr, "se-expire", |o| {
        o.set_session_expiry_interval(Some(2));
    })
    .await;
    subscribe(&mut sub, "se/expire", QoS::AtLeastOnce).await;
    end_connection(&mut sub).await;
    let disconnected = Instant::now();
    drop(sub);

    let (mut publisher, _) = v5_client(addr, "se-expire-pub", |_| {}).await;
    assert_eq!(
        publish_qos1(&mut publisher, "se/expire", "lost").await,
        PubAckReason::Success,
        "queued for the offline session"
    );
    wait_until_unrouted(&mut publisher, "se/expire").await;
    let lived = disconnected.elapsed();
    assert!(
        lived >= Duration::from_millis(1500),
        "session removed after {lived:?}, before its 2 s expiry"
    );

    let (mut sub, ack) = v5_client(addr, "se-expire", |o| {
        o.set_session_expiry_interval(Some(2));
        o.set_clean_start(false);
    })
    .await;
    assert!(!ack.session_present, "the session expired");
    sub.no_publish().await;
    broker.stop().await;
}

#[tokio::test]
async fn session_expiry_above_maximum_is_capped_and_announced_in_connack() {
    let broker = TestBroker::start_with(|c| c.session.max_session_expiry_secs = 1).await;
    let addr = broker.tcp();
    let (mut sub, ack) = v5_client(addr, "se-cap", |o| {
        o.set_session_expiry_interval(Some(3600));
    })
    .await;
    let props = ack.properties.expect("CONNACK properties");
    assert_eq!(props.session_expiry_interval, Some(1));
    subscribe(&mut sub, "se/cap", QoS::AtLeastOnce).await;
    end_connection(&mut sub).await;

    // The capped interval is the one applied: the session is gone within seconds, not an hour.
    let (mut publisher, _) = v5_client(addr, "se-cap-pub", |_| {}).await;
    wait_until_unrouted(&mut publisher, "se/cap").await;
    broker.stop().await;
}

#[tokio::test]
async fn disconnect_setting_session_expiry_after_connect_with_zero_is_protocol_error() {
    let broker = TestBroker::start().await;
    let mut raw = raw_v5(broker.tcp(), "se-zero").await;
    raw.send_v5(Packet::Disconnect(Disconnect {
        reason_code: DisconnectReasonCode::NormalDisconnection,
        properties: Some(DisconnectProperties {
            session_expiry_interval: Some(30),
            reason_string: None,
            user_properties: Vec::new(),
            server_reference: None,
        }),
    }))
    .await;
    assert_eq!(
        raw_disconnect_reason(&mut raw).await,
        DisconnectReasonCode::ProtocolError
    );
    broker.stop().await;
}

#[tokio::test]
async fn clean_start_discards_stored_session() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let (mut sub, _) = v5_client(addr, "cs-sub", |o| {
        o.set_session_expiry_interval(Some(60));
    })
    .await;
    subscribe(&mut sub, "cs/t", QoS::AtLeastOnce).await;
    end_connection(&mut sub).await;
    drop(sub);

    let (mut publisher, _) = v5_client(addr, "cs-pub", |_| {}).await;
    assert_eq!(
        publish_qos1(&mut publisher, "cs/t", "queued").await,
        PubAckReason::Success
    );

    let (mut sub, ack) = v5_client(addr, "cs-sub", |o| {
        o.set_session_expiry_interval(Some(60));
        o.set_clean_start(true);
    })
    .await;
    assert!(!ack.session_present);
    sub.no_publish().await;
    assert_eq!(
        publish_qos1(&mut publisher, "cs/t", "after").await,
        PubAckReason::NoMatchingSubscribers,
        "the old session's subscription is gone"
    );
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Takeover, assigned identifiers, server keep-alive
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn second_connection_with_same_id_takes_over_with_0x8e() {
    let broker = TestBroker::start().await;
    let mut first = raw_v5(broker.tcp(), "takeover").await;
    let (_second, ack) = raw_connect(broker.tcp(), connect_packet("takeover", None), None).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert_eq!(
        raw_disconnect_reason(&mut first).await,
        DisconnectReasonCode::SessionTakenOver
    );
    broker.stop().await;
}

#[tokio::test]
async fn empty_client_id_is_assigned_an_identifier() {
    let broker = TestBroker::start().await;
    let (_a, ack_a) = raw_connect(broker.tcp(), connect_packet("", None), None).await;
    let (_b, ack_b) = raw_connect(broker.tcp(), connect_packet("", None), None).await;
    assert_eq!(ack_a.code, ConnectReturnCode::Success);
    let id_a = ack_a
        .properties
        .and_then(|p| p.assigned_client_identifier)
        .expect("assigned client identifier");
    let id_b = ack_b
        .properties
        .and_then(|p| p.assigned_client_identifier)
        .expect("assigned client identifier");
    assert!(!id_a.is_empty());
    assert_ne!(id_a, id_b, "each connection gets its own identifier");
    broker.stop().await;
}

#[tokio::test]
async fn keep_alive_above_limit_gets_server_keep_alive() {
    let broker = TestBroker::start_with(|c| c.limits.max_keep_alive_secs = 20).await;
    let (_raw, ack) = raw_connect(broker.tcp(), connect_packet("ka", None), None).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let props = ack.properties.expect("CONNACK properties");
    assert_eq!(props.server_keep_alive, Some(20));
    broker.stop().await;
}

/// Reads what the broker sends until it closes the connection (within 10 s); returns the bytes.
async fn bytes_until_closed(raw: &mut RawClient) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = raw.buf.split().to_vec();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut scratch = [0u8; 1024];
        loop {
            match raw.stream.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&scratch[..n]),
            }
        }
    })
    .await
    .expect("the broker closes the silent connection");
    got
}

/// Connects with `keep_alive` to a broker whose maximum is `max`, checks the CONNACK's Server
/// Keep Alive is `max`, stays silent, and returns how long after CONNACK the broker closed the
/// connection (having sent DISCONNECT 0x8D keep-alive timeout).
async fn silent_after_server_keep_alive(max: u16, keep_alive: u16) -> Duration {
    let broker = TestBroker::start_with(|c| c.limits.max_keep_alive_secs = max).await;
    let mut connect = connect_packet("ka-silent", None);
    connect.keep_alive = keep_alive;
    let (mut raw, ack) = raw_connect(broker.tcp(), connect, None).await;
    let acked = Instant::now();
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let props = ack.properties.expect("CONNACK properties");
    assert_eq!(props.server_keep_alive, Some(max));
    let got = bytes_until_closed(&mut raw).await;
    let silent_for = acked.elapsed();
    assert_eq!(
        got.first(),
        Some(&0xe0),
        "DISCONNECT before closing: {got:02x?}"
    );
    assert_eq!(
        got.get(2),
        Some(&0x8d),
        "reason keep-alive timeout: {got:02x?}"
    );
    broker.stop().await;
    silent_for
}

#[tokio::test]
async fn silent_client_is_closed_after_one_and_a_half_server_keep_alives_not_its_own() {
    // The client asks 60 s (90 s of silence allowed); the broker grants 2 s: closed after 3 s.
    let silent_for = silent_after_server_keep_alive(2, 60).await;
    assert!(
        silent_for >= Duration::from_millis(2600),
        "closed after {silent_for:?}, before 1.5 x the 2 s Server Keep Alive"
    );
    assert!(
        silent_for < Duration::from_secs(5),
        "closed only after {silent_for:?}: the Server Keep Alive of 2 s is not enforced"
    );
}

#[tokio::test]
async fn client_asking_for_no_keep_alive_gets_the_maximum_and_is_closed_when_silent() {
    let silent_for = silent_after_server_keep_alive(1, 0).await;
    assert!(
        silent_for < Duration::from_secs(4),
        "closed only after {silent_for:?}: the Server Keep Alive of 1 s is not enforced"
    );
}

#[tokio::test]
async fn without_a_maximum_the_clients_keep_alive_stands() {
    let broker = TestBroker::start_with(|c| c.limits.max_keep_alive_secs = 0).await;
    for keep_alive in [0, 60, u16::MAX] {
        let mut connect = connect_packet(&format!("ka-free-{keep_alive}"), None);
        connect.keep_alive = keep_alive;
        let (mut raw, ack) = raw_connect(broker.tcp(), connect, None).await;
        assert_eq!(ack.code, ConnectReturnCode::Success);
        let props = ack.properties.expect("CONNACK properties");
        assert_eq!(props.server_keep_alive, None, "keep-alive {keep_alive}");
        raw_quiet(&mut raw).await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn keep_alive_within_the_limit_gets_no_server_keep_alive() {
    let broker = TestBroker::start_with(|c| c.limits.max_keep_alive_secs = 60).await;
    let (_raw, ack) = raw_connect(broker.tcp(), connect_packet("ka-ok", None), None).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let props = ack.properties.expect("CONNACK properties");
    assert_eq!(props.server_keep_alive, None);
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Wills
// ---------------------------------------------------------------------------------------------

fn will(topic: &str, payload: &str, delay: u32) -> LastWill {
    LastWill::new(
        topic,
        payload.as_bytes().to_vec(),
        QoS::AtLeastOnce,
        false,
        Some(LastWillProperties {
            delay_interval: Some(delay),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        }),
    )
}

/// A raw client with a will and a session that outlives the will delay.
async fn raw_with_will(addr: SocketAddr, id: &str, will: LastWill) -> RawClient {
    let (raw, ack) =
        raw_connect(addr, connect_packet(id, Some(expiry_props(30))), Some(will)).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    raw
}

async fn will_watcher(addr: SocketAddr, id: &str) -> v5::Client {
    let (mut sub, _) = v5_client(addr, id, |_| {}).await;
    subscribe(&mut sub, "will/#", QoS::AtLeastOnce).await;
    sub
}

#[tokio::test]
async fn will_with_delay_is_published_after_the_delay() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let mut watcher = will_watcher(addr, "wd-watch").await;
    let client = raw_with_will(addr, "wd-client", will("will/delayed", "gone", 1)).await;
    let dropped = Instant::now();
    drop(client);
    let p = watcher.publish().await;
    let waited = dropped.elapsed();
    assert_eq!(&p.topic[..], b"will/delayed");
    assert_eq!(&p.payload[..], b"gone");
    assert!(
        waited >= Duration::from_millis(950),
        "will arrived after {waited:?}, before its 1 s delay"
    );
    broker.stop().await;
}

#[tokio::test]
async fn will_is_not_published_when_session_reconnects_within_delay() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let mut watcher = will_watcher(addr, "wr-watch").await;
    let client = raw_with_will(addr, "wr-client", will("will/resumed", "must-not", 3)).await;
    drop(client);
    let mut resume = connect_packet("wr-client", Some(expiry_props(30)));
    resume.clean_start = false;
    let (_resumed, ack) = raw_connect(addr, resume, None).await;
    assert!(ack.session_present);

    // A sentinel whose identical will delay starts later: its will can only arrive after the
    // cancelled one would have.
    let sentinel = raw_with_will(addr, "wr-sentinel", will("will/sentinel", "clock", 3)).await;
    drop(sentinel);
    let p = watcher.publish().await;
    assert_eq!(
        &p.topic[..],
        b"will/sentinel",
        "the resumed client's will was published"
    );
    watcher.no_publish().await;
    broker.stop().await;
}

#[tokio::test]
async fn disconnect_with_will_reason_publishes_will() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let mut watcher = will_watcher(addr, "w04-watch").await;
    let (mut client, _) = raw_connect(
        addr,
        connect_packet("w04-client", None),
        Some(will("will/w04", "bye", 0)),
    )
    .await;
    raw_send_disconnect(&mut client, DisconnectReasonCode::DisconnectWithWillMessage).await;
    client.expect_closed().await;
    let p = watcher.publish().await;
    assert_eq!(&p.topic[..], b"will/w04");
    assert_eq!(&p.payload[..], b"bye");
    broker.stop().await;
}

#[tokio::test]
async fn normal_disconnect_discards_will() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let mut watcher = will_watcher(addr, "wn-watch").await;
    let (mut client, _) = raw_connect(
        addr,
        connect_packet("wn-client", None),
        Some(will("will/normal", "must-not", 0)),
    )
    .await;
    raw_send_disconnect(&mut client, DisconnectReasonCode::NormalDisconnection).await;
    client.expect_closed().await;
    assert_no_will(addr, &mut watcher).await;
    broker.stop().await;
}

/// Asserts that no will reached `watcher`: a marker published now must be the next message.
async fn assert_no_will(addr: SocketAddr, watcher: &mut v5::Client) {
    let (mut other, _) = v5_client(addr, "will-marker", |_| {}).await;
    publish_qos1(&mut other, "will/marker", "marker").await;
    let p = watcher.publish().await;
    assert_eq!(&p.topic[..], b"will/marker", "the will was published");
    watcher.no_publish().await;
}

#[tokio::test]
async fn disconnect_with_reason_code_only_is_accepted_and_discards_will() {
    // A remaining length of 1 (reason code, no property length) is valid: property length 0.
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let mut watcher = will_watcher(addr, "ws-watch").await;
    let (mut client, _) = raw_connect(
        addr,
        connect_packet("ws-client", None),
        Some(will("will/short", "must-not", 0)),
    )
    .await;
    client.send(&[0xE0, 0x01, 0x00]).await;
    assert_eq!(
        client.recv_v5().await,
        None,
        "the broker answered the DISCONNECT"
    );
    assert_no_will(addr, &mut watcher).await;
    broker.stop().await;
}

#[tokio::test]
async fn will_properties_pass_through() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let mut watcher = will_watcher(addr, "wp-watch").await;
    let mut w = will("will/props", "{\"gone\":true}", 0);
    w.properties = Some(LastWillProperties {
        delay_interval: None,
        payload_format_indicator: Some(1),
        message_expiry_interval: None,
        content_type: Some("application/json".into()),
        response_topic: Some("will/reply".into()),
        correlation_data: Some(Bytes::from_static(b"corr-7")),
        user_properties: vec![("origin".into(), "sensor-1".into())],
    });
    let (client, _) = raw_connect(addr, connect_packet("wp-client", None), Some(w)).await;
    drop(client);
    let p = watcher.publish().await;
    assert_eq!(&p.topic[..], b"will/props");
    let props = p.properties.expect("will properties");
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        props.user_properties,
        vec![("origin".to_string(), "sensor-1".to_string())]
    );
    assert_eq!(props.payload_format_indicator, Some(1));
    assert_eq!(props.response_topic.as_deref(), Some("will/reply"));
    assert_eq!(props.correlation_data.as_deref(), Some(&b"corr-7"[..]));
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Flow control, message expiry, maximum packet size
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn receive_maximum_limits_unacknowledged_qos1_deliveries() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let mut props = ConnectProperties::new();
    props.receive_maximum = Some(2);
    let (mut sub, ack) = raw_connect(addr, connect_packet("rm-sub", Some(props)), None).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    raw_subscribe(&mut sub, 1, vec![filter("rm/t", QoS::AtLeastOnce)], None).await;

    let (mut publisher, _) = v5_client(addr, "rm-pub", |_| {}).await;
    for payload in ["m1", "m2", "m3"] {
        assert_eq!(
            publish_qos1(&mut publisher, "rm/t", payload).await,
            PubAckReason::Success
        );
    }
    let first = raw_publish(&mut sub).await;
    let second = raw_publish(&mut sub).await;
    assert_eq!(&first.payload[..], b"m1");
    assert_eq!(&second.payload[..], b"m2");
    assert_eq!(first.qos, QoS::AtLeastOnce);
    raw_quiet(&mut sub).await;

    sub.send_v5(Packet::PubAck(PubAck::new(first.pkid, None)))
        .await;
    let third = raw_publish(&mut sub).await;
    assert_eq!(&third.payload[..], b"m3");
    raw_quiet(&mut sub).await;
    broker.stop().await;
}

/// Found by the `session_sequence` fuzz target: a session resumed with a smaller receive
/// maximum than it had messages in flight had them all resent at once (MQTT-3.3.4-9). They are
/// resent as the window frees, with their packet ids.
#[tokio::test]
async fn resumed_inflight_messages_are_resent_within_the_new_receive_maximum() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let (mut sub, _) =
        raw_connect(addr, connect_packet("rr-sub", Some(expiry_props(60))), None).await;
    raw_subscribe(&mut sub, 1, vec![filter("rr/t", QoS::AtLeastOnce)], None).await;
    let (mut publisher, _) = v5_client(addr, "rr-pub", |_| {}).await;
    for payload in ["m1", "m2", "m3"] {
        publish_qos1(&mut publisher, "rr/t", payload).await;
    }
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(raw_publish(&mut sub).await.pkid);
    }
    drop(sub); // none acknowledged

    let mut props = expiry_props(60);
    props.receive_maximum = Some(1);
    let mut connect = connect_packet("rr-sub", Some(props));
    connect.clean_start = false;
    let (mut sub, ack) = raw_connect(addr, connect, None).await;
    assert!(ack.session_present);
    for (id, payload) in ids.iter().zip(["m1", "m2", "m3"]) {
        let resent = raw_publish(&mut sub).await;
        assert!(resent.dup);
        assert_eq!(
            (resent.pkid, &resent.payload[..]),
            (*id, payload.as_bytes())
        );
        raw_quiet(&mut sub).await;
        sub.send_v5(Packet::PubAck(PubAck::new(resent.pkid, None)))
            .await;
    }
    raw_quiet(&mut sub).await;
    broker.stop().await;
}

fn with_expiry(secs: u32) -> PublishProperties {
    PublishProperties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    }
}

#[tokio::test]
async fn expired_queued_message_is_not_delivered() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let (mut sub, _) = v5_client(addr, "me-sub", |o| {
        o.set_session_expiry_interval(Some(60));
    })
    .await;
    subscribe(&mut sub, "me/t", QoS::AtLeastOnce).await;
    end_connection(&mut sub).await;
    drop(sub);

    let (mut publisher, _) = v5_client(addr, "me-pub", |_| {}).await;
    for (payload, expiry) in [("short", 1), ("long", 60)] {
        publisher
            .client
            .publish_with_properties(
                "me/t",
                QoS::AtLeastOnce,
                false,
                payload,
                with_expiry(expiry),
            )
            .await
            .expect("publish");
        assert_eq!(puback(&mut publisher).await.reason, PubAckReason::Success);
    }
    // The behaviour under test is the passage of time itself: there is no event to await.
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let (mut sub, ack) = v5_client(addr, "me-sub", |o| {
        o.set_session_expiry_interval(Some(60));
        o.set_clean_start(false);
    })
    .await;
    assert!(ack.session_present);
    let p = sub.publish().await;
    assert_eq!(&p.payload[..], b"long", "the expired message was delivered");
    let remaining = p
        .properties
        .and_then(|p| p.message_expiry_interval)
        .expect("remaining expiry interval");
    assert!(
        (50..=58).contains(&remaining),
        "remaining interval {remaining} does not account for 2 s of waiting"
    );
    sub.no_publish().await;
    broker.stop().await;
}

#[tokio::test]
async fn delivered_message_carries_remaining_expiry_interval() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let (mut sub, _) = v5_client(addr, "mr-sub", |_| {}).await;
    subscribe(&mut sub, "mr/t", QoS::AtLeastOnce).await;
    let (publisher, _) = v5_client(addr, "mr-pub", |_| {}).await;
    publisher
        .client
        .publish_with_properties("mr/t", QoS::AtLeastOnce, false, "x", with_expiry(30))
        .await
        .expect("publish");
    let p = sub.publish().await;
    let remaining = p
        .properties
        .and_then(|p| p.message_expiry_interval)
        .expect("message expiry interval");
    assert!(
        (1..=30).contains(&remaining),
        "remaining interval {remaining} is not within 1..=30"
    );
    broker.stop().await;
}

#[tokio::test]
async fn client_maximum_packet_size_drops_larger_publishes_only() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let mut props = ConnectProperties::new();
    props.max_packet_size = Some(100);
    let (mut sub, _) = raw_connect(addr, connect_packet("mps-sub", Some(props)), None).await;
    raw_subscribe(&mut sub, 1, vec![filter("mps/t", QoS::AtLeastOnce)], None).await;

    let (mut publisher, _) = v5_client(addr, "mps-pub", |_| {}).await;
    publish_qos1(&mut publisher, "mps/t", &"x".repeat(500)).await;
    publish_qos1(&mut publisher, "mps/t", "small").await;
    let p = raw_publish(&mut sub).await;
    assert_eq!(&p.payload[..], b"small", "the 500-byte publish was sent");
    raw_quiet(&mut sub).await;
    broker.stop().await;
}

/// Found by the `session_sequence` fuzz target: with an assigned client identifier the CONNACK
/// outgrew a small Maximum Packet Size and was sent all the same (MQTT-3.1.2-24). It is refused
/// with a CONNACK 0x95 that fits instead.
#[tokio::test]
async fn connack_beyond_the_clients_maximum_packet_size_is_refused_with_0x95() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let mut props = ConnectProperties::new();
    props.max_packet_size = Some(24);
    let mut raw = RawClient::connect(addr).await;
    raw.send_v5(Packet::Connect(
        connect_packet("", Some(props.clone())),
        None,
        None,
    ))
    .await;
    let got = bytes_until_closed(&mut raw).await;
    assert!(got.len() <= 24, "{} bytes sent: {got:02x?}", got.len());
    match Packet::read(&mut bytes::BytesMut::from(&got[..]), None) {
        Ok(Packet::ConnAck(ack)) => assert_eq!(ack.code, ConnectReturnCode::PacketTooLarge),
        other => panic!("expected a refusing CONNACK, got {other:?}"),
    }
    // A CONNACK that fits is sent as before.
    props.max_packet_size = Some(64);
    let (_raw, ack) = raw_connect(addr, connect_packet("", Some(props)), None).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert!(ack
        .properties
        .is_some_and(|p| p.assigned_client_identifier.is_some()));
    broker.stop().await;
}

#[tokio::test]
async fn publish_above_broker_maximum_packet_size_is_disconnected_with_0x95() {
    let broker = TestBroker::start_with(|c| c.limits.max_packet_size = 1024).await;
    let (mut raw, ack) = raw_connect(broker.tcp(), connect_packet("mpb", None), None).await;
    assert_eq!(
        ack.properties.and_then(|p| p.max_packet_size),
        Some(1024),
        "the limit is announced"
    );
    raw.send_v5(Packet::Publish(qos1_publish("mpb/t", 1, &[b'x'; 2000])))
        .await;
    assert_eq!(
        raw_disconnect_reason(&mut raw).await,
        DisconnectReasonCode::PacketTooLarge
    );
    broker.stop().await;
}

#[tokio::test]
async fn takeover_publishes_a_will_without_delay_exactly_once() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let mut watcher = will_watcher(addr, "tw-watch").await;
    let _first = raw_with_will(addr, "tw-client", will("will/taken", "old", 0)).await;
    let mut again = connect_packet("tw-client", Some(expiry_props(30)));
    again.clean_start = false;
    let (_second, ack) = raw_connect(addr, again, None).await;
    assert!(ack.session_present);
    let p = watcher.publish().await;
    assert_eq!(&p.topic[..], b"will/taken");
    assert_eq!(&p.payload[..], b"old");
    watcher.no_publish().await;
    broker.stop().await;
}

#[tokio::test]
async fn takeover_within_will_delay_does_not_publish_the_will() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let mut watcher = will_watcher(addr, "tn-watch").await;
    let _first = raw_with_will(addr, "tn-client", will("will/kept", "must-not", 2)).await;
    let mut again = connect_packet("tn-client", Some(expiry_props(30)));
    again.clean_start = false;
    let (_second, ack) = raw_connect(addr, again, None).await;
    assert!(ack.session_present);
    // A sentinel with the same delay, dropped after the takeover: its will can only arrive
    // after the taken-over one would have.
    let sentinel = raw_with_will(addr, "tn-sentinel", will("will/sentinel", "clock", 2)).await;
    drop(sentinel);
    let p = watcher.publish().await;
    assert_eq!(
        &p.topic[..],
        b"will/sentinel",
        "the taken-over client's will was published"
    );
    watcher.no_publish().await;
    broker.stop().await;
}
