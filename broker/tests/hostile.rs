//! Malformed and hostile input over raw sockets. Every test checks the exact outcome (the MQTT 5
//! DISCONNECT reason code, or for 3.1.1 and refused CONNECTs that the connection just closes) and
//! then that the node still serves a well-behaved client.

mod common;

use common::{RawClient, TestBroker, WAIT};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::mqttbytes::v4 as p4;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::v5::Packet as P5;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// A client id no other test uses.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

fn push_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return;
        }
    }
}

/// A whole packet: first byte, remaining length of `body`, then `body`.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    push_varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// A length-prefixed MQTT string or binary field.
fn field(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// Concatenates byte pieces.
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// The CONNECT a v5 raw client sends.
fn v5_connect_packet(id: &str, keep_alive: u16) -> P5 {
    P5::Connect(
        p5::Connect {
            keep_alive,
            client_id: id.into(),
            clean_start: true,
            properties: None,
        },
        None,
        None,
    )
}

/// A raw MQTT 5 connection that has been accepted (CONNACK success).
async fn v5_client(addr: SocketAddr, keep_alive: u16) -> RawClient {
    let mut raw = RawClient::connect(addr).await;
    raw.send_v5(v5_connect_packet(&unique("raw5"), keep_alive))
        .await;
    match raw.recv_v5().await {
        Some(P5::ConnAck(c)) => assert_eq!(c.code, p5::ConnectReturnCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    raw
}

/// A raw MQTT 3.1.1 connection that has been accepted (CONNACK success).
async fn v4_client(addr: SocketAddr) -> RawClient {
    let mut raw = RawClient::connect(addr).await;
    let mut connect = p4::Connect::new(unique("raw4"));
    connect.keep_alive = 30;
    raw.send_v4(p4::Packet::Connect(connect)).await;
    match raw.recv_v4().await {
        Some(p4::Packet::ConnAck(c)) => assert_eq!(c.code, p4::ConnectReturnCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    raw
}

/// Asserts the broker sends DISCONNECT with `code` and then closes the connection, sending
/// nothing else. Parsed here rather than with rumqttc, whose decoder refuses the short form
/// (remaining length 1, reason code only) that MQTT 5 allows.
async fn expect_disconnect(raw: &mut RawClient, code: u8) {
    let got = read_until_closed(raw, WAIT).await;
    assert_eq!(
        got.first(),
        Some(&0xe0),
        "expected DISCONNECT {code:#04x}, got {got:02x?}"
    );
    let remaining = usize::from(*got.get(1).expect("remaining length"));
    assert!(remaining < 128, "implausibly long DISCONNECT: {got:02x?}");
    assert_eq!(
        got.len(),
        2 + remaining,
        "DISCONNECT length does not match the bytes sent before closing: {got:02x?}"
    );
    assert_eq!(
        got.get(2),
        Some(&code),
        "DISCONNECT reason, expected {code:#04x}: {got:02x?}"
    );
    if remaining >= 2 {
        assert_eq!(
            usize::from(got[3]),
            remaining - 2,
            "property length does not match: {got:02x?}"
        );
    }
}

/// Reads until the broker closes the connection within `bound`; returns every byte it sent.
async fn read_until_closed(raw: &mut RawClient, bound: Duration) -> Vec<u8> {
    let mut got = raw.buf.split().to_vec();
    tokio::time::timeout(bound, async {
        let mut scratch = [0u8; 4096];
        loop {
            match raw.stream.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&scratch[..n]),
            }
        }
    })
    .await
    .expect("broker did not close the connection in time");
    got
}

/// Asserts the broker closes the connection without sending a single byte (no CONNACK, no
/// DISCONNECT).
async fn expect_closed_silently(raw: &mut RawClient) {
    let got = read_until_closed(raw, WAIT).await;
    assert!(got.is_empty(), "broker sent {got:02x?} before closing");
}

/// Subscribes to a topic of its own on `raw` (3.1.1) and gets its own publish back.
async fn v4_round_trip(raw: &mut RawClient) {
    let topic = format!("alive/{}", unique("t"));
    raw.send_v4(p4::Packet::Subscribe(p4::Subscribe::new(
        &topic,
        rumqttc::mqttbytes::QoS::AtLeastOnce,
    )))
    .await;
    match raw.recv_v4().await {
        Some(p4::Packet::SubAck(s)) => assert_eq!(
            s.return_codes,
            vec![p4::SubscribeReasonCode::Success(
                rumqttc::mqttbytes::QoS::AtLeastOnce
            )]
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    raw.send_v4(p4::Packet::Publish(p4::Publish::new(
        &topic,
        rumqttc::mqttbytes::QoS::AtMostOnce,
        "still serving",
    )))
    .await;
    match raw.recv_v4().await {
        Some(p4::Packet::Publish(p)) => {
            assert_eq!(p.topic, topic);
            assert_eq!(&p.payload[..], b"still serving");
        }
        other => panic!("expected the PUBLISH back, got {other:?}"),
    }
}

/// Asserts that a fresh, well-behaved client can connect, subscribe and receive a publish.
async fn assert_serves(addr: SocketAddr) {
    let mut raw = v4_client(addr).await;
    v4_round_trip(&mut raw).await;
}

/// Sends bytes, ignoring errors (the broker may already have closed the connection).
async fn send_lossy(raw: &mut RawClient, bytes: &[u8]) {
    let _ = raw.stream.write_all(bytes).await;
}

/// A v5 PUBLISH: flags in the low nibble of the first byte, optional packet id, properties.
fn v5_publish(flags: u8, topic: &[u8], pkid: Option<u16>, props: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = field(topic);
    if let Some(id) = pkid {
        body.extend_from_slice(&id.to_be_bytes());
    }
    push_varint(&mut body, props.len());
    body.extend_from_slice(props);
    body.extend_from_slice(payload);
    packet(0x30 | flags, &body)
}

/// A v5 SUBSCRIBE with the given properties and (filter, options) pairs.
fn v5_subscribe(pkid: u16, props: &[u8], filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    push_varint(&mut body, props.len());
    body.extend_from_slice(props);
    for (filter, options) in filters {
        body.extend_from_slice(&field(filter.as_bytes()));
        body.push(*options);
    }
    packet(0x82, &body)
}

/// Sends `bytes` on a fresh v5 connection, expects DISCONNECT `code`, then checks the node serves.
async fn v5_violation(bytes: &[u8], code: u8) {
    let broker = TestBroker::start().await;
    let mut raw = v5_client(broker.tcp(), 30).await;
    raw.send(bytes).await;
    expect_disconnect(&mut raw, code).await;
    assert_serves(broker.tcp()).await;
}

const MALFORMED: u8 = 0x81;
const PROTOCOL_ERROR: u8 = 0x82;
const KEEP_ALIVE_TIMEOUT: u8 = 0x8d;
const TOPIC_NAME_INVALID: u8 = 0x90;
const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
const TOPIC_ALIAS_INVALID: u8 = 0x94;
const PACKET_TOO_LARGE: u8 = 0x95;

// ---------------------------------------------------------------------------------------------
// Fixed header
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn remaining_length_of_five_bytes_is_malformed() {
    v5_violation(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], MALFORMED).await;
}

#[tokio::test]
async fn reserved_packet_type_0_is_malformed() {
    v5_violation(&[0x00, 0x00], MALFORMED).await;
}

#[tokio::test]
async fn v311_reserved_packet_type_0_closes_the_connection() {
    let broker = TestBroker::start().await;
    let mut raw = v4_client(broker.tcp()).await;
    raw.send(&[0x00, 0x00]).await;
    expect_closed_silently(&mut raw).await;
    assert_serves(broker.tcp()).await;
}

#[tokio::test]
async fn v311_packet_type_15_closes_the_connection() {
    // Type 15 is AUTH in MQTT 5 and reserved before it.
    let broker = TestBroker::start().await;
    let mut raw = v4_client(broker.tcp()).await;
    raw.send(&[0xf0, 0x00]).await;
    expect_closed_silently(&mut raw).await;
    assert_serves(broker.tcp()).await;
}

#[tokio::test]
async fn subscribe_with_flags_0_is_malformed() {
    let mut bytes = v5_subscribe(1, &[], &[("a/b", 0)]);
    assert_eq!(bytes[0], 0x82);
    bytes[0] = 0x80;
    v5_violation(&bytes, MALFORMED).await;
}

#[tokio::test]
async fn pubrel_with_flags_0_is_malformed() {
    v5_violation(&[0x60, 0x02, 0x00, 0x01], MALFORMED).await;
}

#[tokio::test]
async fn publish_with_qos_3_is_malformed() {
    v5_violation(&v5_publish(0b0110, b"a/b", Some(1), &[], b"x"), MALFORMED).await;
}

#[tokio::test]
async fn dup_on_qos_0_publish_is_malformed() {
    v5_violation(&v5_publish(0b1000, b"a/b", None, &[], b"x"), MALFORMED).await;
}

// ---------------------------------------------------------------------------------------------
// CONNECT
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn first_packet_other_than_connect_is_closed_without_connack() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.tcp()).await;
    raw.send(&[0xc0, 0x00]).await; // PINGREQ
    expect_closed_silently(&mut raw).await;
    assert_serves(broker.tcp()).await;
}

#[tokio::test]
async fn second_connect_is_protocol_error() {
    let broker = TestBroker::start().await;
    let mut raw = v5_client(broker.tcp(), 30).await;
    raw.send_v5(v5_connect_packet(&unique("again"), 30)).await;
    expect_disconnect(&mut raw, PROTOCOL_ERROR).await;
    assert_serves(broker.tcp()).await;
}

/// A 3.1.1 CONNECT with the given flags byte and payload after the client id.
fn v4_connect_bytes(flags: u8, id: &str, rest: &[u8]) -> Vec<u8> {
    let body = cat(&[
        &field(b"MQTT"),
        &[0x04, flags, 0x00, 0x1e],
        &field(id.as_bytes()),
        rest,
    ]);
    packet(0x10, &body)
}

#[tokio::test]
async fn connect_with_reserved_flag_is_closed_without_connack() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.tcp()).await;
    // Clean session plus the reserved bit 0.
    raw.send(&v4_connect_bytes(0x03, &unique("reserved"), &[]))
        .await;
    expect_closed_silently(&mut raw).await;
    assert_serves(broker.tcp()).await;
}

#[tokio::test]
async fn connect_with_will_qos_3_is_closed_without_connack() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.tcp()).await;
    // MQTT 5: clean start, will flag, will QoS 3; no properties, will topic "w", payload "x".
    let body = cat(&[
        &field(b"MQTT"),
        &[0x05, 0x02 | 0x04 | 0x18, 0x00, 0x1e, 0x00],
        &field(unique("willqos3").as_bytes()),
        &[0x00],
        &field(b"w"),
        &field(b"x"),
    ]);
    raw.send(&packet(0x10, &body)).await;
    expect_closed_silently(&mut raw).await;
    assert_serves(broker.tcp()).await;
}

#[tokio::test]
async fn v311_connect_with_password_but_no_username_is_closed() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.tcp()).await;
    raw.send(&v4_connect_bytes(
        0x02 | 0x40,
        &unique("nouser"),
        &field(b"secret"),
    ))
    .await;
    expect_closed_silently(&mut raw).await;
    assert_serves(broker.tcp()).await;
}

#[tokio::test]
async fn connect_client_id_longer_than_packet_is_closed_without_connack() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.tcp()).await;
    // Client id length says 200 bytes; the packet ends after 3.
    let body = cat(&[
        &field(b"MQTT"),
        &[0x04, 0x02, 0x00, 0x1e, 0x00, 200],
        b"abc",
    ]);
    raw.send(&packet(0x10, &body)).await;
    expect_closed_silently(&mut raw).await;
    assert_serves(broker.tcp()).await;
}

// ---------------------------------------------------------------------------------------------
// Short forms the specification allows
// ---------------------------------------------------------------------------------------------

/// A raw v5 connection with a will on `will_topic`.
async fn v5_client_with_will(addr: SocketAddr, will_topic: &str) -> RawClient {
    let mut raw = RawClient::connect(addr).await;
    raw.send_v5(P5::Connect(
        p5::Connect {
            keep_alive: 30,
            client_id: unique("willer"),
            clean_start: true,
            properties: None,
        },
        Some(p5::LastWill::new(
            will_topic,
            "gone",
            rumqttc::v5::mqttbytes::QoS::AtMostOnce,
            false,
            None,
        )),
        None,
    ))
    .await;
    match raw.recv_v5().await {
        Some(P5::ConnAck(c)) => assert_eq!(c.code, p5::ConnectReturnCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    raw
}

/// A raw 3.1.1 client subscribed to `filter` at QoS 0.
async fn v4_subscriber(addr: SocketAddr, filter: &str) -> RawClient {
    let mut sub = v4_client(addr).await;
    sub.send(&packet(
        0x82,
        &cat(&[&[0x00, 0x01], &field(filter.as_bytes()), &[0x00]]),
    ))
    .await;
    assert!(matches!(sub.recv_v4().await, Some(p4::Packet::SubAck(_))));
    sub
}

#[tokio::test]
async fn short_normal_disconnect_closes_silently_without_the_will() {
    let broker = TestBroker::start().await;
    let topic = format!("will/{}", unique("short0"));
    let mut sub = v4_subscriber(broker.tcp(), &topic).await;
    let mut raw = v5_client_with_will(broker.tcp(), &topic).await;
    // DISCONNECT with remaining length 1: reason code 0x00 and no property length.
    raw.send(&[0xe0, 0x01, 0x00]).await;
    expect_closed_silently(&mut raw).await;
    let quiet = tokio::time::timeout(common::QUIET, sub.recv_v4()).await;
    assert!(
        quiet.is_err(),
        "will published after a normal DISCONNECT: {quiet:?}"
    );
    assert_serves(broker.tcp()).await;
}

#[tokio::test]
async fn short_disconnect_with_will_reason_publishes_the_will() {
    let broker = TestBroker::start().await;
    let topic = format!("will/{}", unique("short4"));
    let mut sub = v4_subscriber(broker.tcp(), &topic).await;
    let mut raw = v5_client_with_will(broker.tcp(), &topic).await;
    // DISCONNECT with remaining length 1: reason code 0x04 (disconnect with will message).
    raw.send(&[0xe0, 0x01, 0x04]).await;
    expect_closed_silently(&mut raw).await;
    match sub.recv_v4().await {
        Some(p4::Packet::Publish(p)) => {
            assert_eq!(p.topic, topic);
            assert_eq!(&p.payload[..], b"gone");
        }
        other => panic!("expected the will, got {other:?}"),
    }
    assert_serves(broker.tcp()).await;
}

// ---------------------------------------------------------------------------------------------
// Truncated, inconsistent and oversized packets
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn truncated_publish_then_close_routes_nothing() {
    let broker = TestBroker::start().await;
    let mut sub = v4_client(broker.tcp()).await;
    sub.send_v4(p4::Packet::Subscribe(p4::Subscribe::new(
        "trunc/#",
        rumqttc::mqttbytes::QoS::AtMostOnce,
    )))
    .await;
    assert!(matches!(sub.recv_v4().await, Some(p4::Packet::SubAck(_))));

    let mut raw = v4_client(broker.tcp()).await;
    let full = packet(0x30, &cat(&[&field(b"trunc/a"), b"never whole"]));
    raw.send(&full[..full.len() - 4]).await;
    raw.stream.shutdown().await.expect("half-close");
    let got = read_until_closed(&mut raw, WAIT).await;
    assert!(
        got.is_empty(),
        "broker answered a truncated PUBLISH: {got:02x?}"
    );

    // The subscriber gets nothing from the truncated packet, then the node still routes.
    let quiet = tokio::time::timeout(common::QUIET, sub.recv_v4()).await;
    assert!(quiet.is_err(), "subscriber received {quiet:?}");
    v4_round_trip(&mut sub).await;
}

#[tokio::test]
async fn packet_left_incomplete_is_closed_at_keep_alive_timeout() {
    let broker = TestBroker::start().await;
    let mut raw = v5_client(broker.tcp(), 1).await;
    // A PUBLISH announcing 100 bytes of body, of which only 10 are sent.
    let full = v5_publish(0, b"stall/a", None, &[], &[7u8; 90]);
    let started = Instant::now();
    raw.send(&full[..12]).await;
    expect_disconnect(&mut raw, KEEP_ALIVE_TIMEOUT).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(4),
        "keep-alive of 1 s enforced only after {elapsed:?}"
    );
    assert_serves(broker.tcp()).await;
}

#[tokio::test]
async fn publish_topic_length_past_end_of_packet_is_malformed() {
    // Remaining length 5: topic length 16, then only 3 bytes.
    v5_violation(&[0x30, 0x05, 0x00, 0x10, b'a', b'b', b'c'], MALFORMED).await;
}

#[tokio::test]
async fn subscribe_filter_length_past_end_of_packet_is_malformed() {
    // Packet id 1, no properties, filter length 32, then one byte.
    v5_violation(
        &packet(0x82, &[0x00, 0x01, 0x00, 0x00, 0x20, b'a']),
        MALFORMED,
    )
    .await;
}

#[tokio::test]
async fn property_length_past_end_of_packet_is_malformed() {
    // Properties announce 50 bytes; the packet ends inside the first property.
    let body = cat(&[&field(b"a/b"), &[50, 0x02]]);
    v5_violation(&packet(0x30, &body), MALFORMED).await;
}

#[tokio::test]
async fn huge_remaining_length_is_refused_at_once_with_packet_too_large() {
    let broker = TestBroker::start().await;
    let mut raw = v5_client(broker.tcp(), 30).await;
    let mut header = vec![0x30];
    push_varint(&mut header, 200 * 1024 * 1024);
    let started = Instant::now();
    raw.send(&header).await;
    // Only the header was sent: the broker must answer without waiting for the 200 MB.
    expect_disconnect(&mut raw, PACKET_TOO_LARGE).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "refused only after {elapsed:?}"
    );
    assert_serves(broker.tcp()).await;
}

#[tokio::test]
async fn huge_connect_is_closed_at_once() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.tcp()).await;
    let mut header = vec![0x10];
    push_varint(&mut header, 200 * 1024 * 1024);
    let started = Instant::now();
    raw.send(&header).await;
    let got = read_until_closed(&mut raw, Duration::from_secs(2)).await;
    assert!(got.is_empty(), "broker sent {got:02x?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_serves(broker.tcp()).await;
}

/// A CONNECT whose will makes it larger than `limits.max_connect_size` is closed at its header,
/// before the broker reads the rest; one just under the limit is accepted.
#[tokio::test]
async fn a_connect_above_the_connect_size_limit_is_closed_before_authentication() {
    use rumqttc::mqttbytes::v4::{Connect, LastWill, Packet as P4};
    let broker = TestBroker::start_with(|c| c.limits.max_connect_size = 1024).await;
    let connect_with_will = |id: &str, payload: usize| {
        let mut connect = Connect::new(id);
        connect.last_will = Some(LastWill::new(
            "will/t",
            vec![b'w'; payload],
            rumqttc::mqttbytes::QoS::AtMostOnce,
            false,
        ));
        P4::Connect(connect)
    };
    let mut small = RawClient::connect(broker.tcp()).await;
    small.send_v4(connect_with_will("small-will", 900)).await;
    match small.recv_v4().await {
        Some(P4::ConnAck(ack)) => {
            assert_eq!(ack.code, rumqttc::mqttbytes::v4::ConnectReturnCode::Success)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let mut big = RawClient::connect(broker.tcp()).await;
    big.send_v4(connect_with_will("big-will", 2000)).await;
    let got = read_until_closed(&mut big, Duration::from_secs(2)).await;
    assert!(got.is_empty(), "broker sent {got:02x?}");
    assert_serves(broker.tcp()).await;
}

// ---------------------------------------------------------------------------------------------
// Topics
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn publish_topic_with_wildcard_is_topic_name_invalid() {
    for topic in [&b"a/+"[..], b"a/#", b"+", b"#"] {
        v5_violation(&v5_publish(0, topic, None, &[], b"x"), TOPIC_NAME_INVALID).await;
    }
}

#[tokio::test]
async fn publish_topic_with_invalid_utf8_is_malformed() {
    v5_violation(&v5_publish(0, b"a/\xff\xfe", None, &[], b"x"), MALFORMED).await;
}

#[tokio::test]
async fn publish_topic_longer_than_limit_is_topic_name_invalid() {
    let broker = TestBroker::start_with(|c| c.limits.max_topic_length = 16).await;
    let mut raw = v5_client(broker.tcp(), 30).await;
    // Exactly at the limit: accepted (PUBACK, no subscribers).
    raw.send(&v5_publish(0b0010, &[b'a'; 16], Some(1), &[], b"x"))
        .await;
    match raw.recv_v5().await {
        Some(P5::PubAck(a)) => {
            assert_eq!(a.pkid, 1);
            assert_eq!(a.reason, p5::PubAckReason::NoMatchingSubscribers);
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
    // One byte over: refused.
    raw.send(&v5_publish(0b0010, &[b'a'; 17], Some(2), &[], b"x"))
        .await;
    expect_disconnect(&mut raw, TOPIC_NAME_INVALID).await;
    assert_serves(broker.tcp()).await;
}

// ---------------------------------------------------------------------------------------------
// Protocol errors in well-formed packets
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn subscribe_with_no_filters_is_protocol_error() {
    v5_violation(&v5_subscribe(1, &[], &[]), PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn v311_subscribe_with_no_filters_closes_the_connection() {
    let broker = TestBroker::start().await;
    let mut raw = v4_client(broker.tcp()).await;
    raw.send(&[0x82, 0x02, 0x00, 0x01]).await;
    expect_closed_silently(&mut raw).await;
    assert_serves(broker.tcp()).await;
}

#[tokio::test]
async fn unsubscribe_with_no_filters_is_protocol_error() {
    v5_violation(&[0xa2, 0x03, 0x00, 0x01, 0x00], PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn v311_unsubscribe_with_no_filters_closes_the_connection() {
    let broker = TestBroker::start().await;
    let mut raw = v4_client(broker.tcp()).await;
    raw.send(&[0xa2, 0x02, 0x00, 0x01]).await;
    expect_closed_silently(&mut raw).await;
    assert_serves(broker.tcp()).await;
}

#[tokio::test]
async fn qos1_publish_with_packet_id_0_is_protocol_error() {
    v5_violation(
        &v5_publish(0b0010, b"a/b", Some(0), &[], b"x"),
        PROTOCOL_ERROR,
    )
    .await;
}

#[tokio::test]
async fn subscription_identifier_0_is_protocol_error() {
    // Property 0x0B (subscription identifier) with value 0.
    v5_violation(
        &v5_subscribe(1, &[0x0b, 0x00], &[("a/b", 0)]),
        PROTOCOL_ERROR,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn subscription_beyond_the_per_client_limit_gets_quota_exceeded() {
    let broker = TestBroker::start_with(|c| c.limits.max_subscriptions_per_client = 2).await;
    let mut raw = v5_client(broker.tcp(), 30).await;
    raw.send(&v5_subscribe(1, &[], &[("q/a", 1), ("q/b", 1), ("q/c", 1)]))
        .await;
    match raw.recv_v5().await {
        Some(P5::SubAck(s)) => {
            assert_eq!(s.pkid, 1);
            assert_eq!(
                s.return_codes,
                vec![
                    p5::SubscribeReasonCode::Success(rumqttc::v5::mqttbytes::QoS::AtLeastOnce),
                    p5::SubscribeReasonCode::Success(rumqttc::v5::mqttbytes::QoS::AtLeastOnce),
                    p5::SubscribeReasonCode::QuotaExceeded,
                ]
            );
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
    // The refused filter was not added: a publish to it has no subscribers.
    raw.send(&v5_publish(0b0010, b"q/c", Some(7), &[], b"x"))
        .await;
    match raw.recv_v5().await {
        Some(P5::PubAck(a)) => {
            assert_eq!(a.pkid, 7);
            assert_eq!(a.reason, p5::PubAckReason::NoMatchingSubscribers);
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
    assert_serves(broker.tcp()).await;
}

#[tokio::test]
async fn topic_alias_above_the_maximum_is_topic_alias_invalid() {
    let broker = TestBroker::start_with(|c| c.limits.max_topic_alias = 4).await;
    let mut raw = v5_client(broker.tcp(), 30).await;
    // Topic alias property (0x23) = 5.
    raw.send(&v5_publish(0, b"alias/a", None, &[0x23, 0x00, 0x05], b"x"))
        .await;
    expect_disconnect(&mut raw, TOPIC_ALIAS_INVALID).await;
    assert_serves(broker.tcp()).await;
}

#[tokio::test]
async fn more_unreleased_qos2_publishes_than_max_inflight_is_receive_maximum_exceeded() {
    let broker = TestBroker::start_with(|c| c.limits.max_inflight = 2).await;
    let mut raw = v5_client(broker.tcp(), 30).await;
    for pkid in 1..=2u16 {
        raw.send(&v5_publish(0b0100, b"qos2/a", Some(pkid), &[], b"x"))
            .await;
        match raw.recv_v5().await {
            Some(P5::PubRec(r)) => assert_eq!(r.pkid, pkid),
            other => panic!("expected PUBREC {pkid}, got {other:?}"),
        }
    }
    raw.send(&v5_publish(0b0100, b"qos2/a", Some(3), &[], b"x"))
        .await;
    expect_disconnect(&mut raw, RECEIVE_MAXIMUM_EXCEEDED).await;
    assert_serves(broker.tcp()).await;
}

#[tokio::test]
async fn connection_without_connect_is_closed_after_connect_timeout() {
    let broker = TestBroker::start_with(|c| c.limits.connect_timeout_secs = 1).await;
    let mut raw = RawClient::connect(broker.tcp()).await;
    let started = Instant::now();
    let got = read_until_closed(&mut raw, Duration::from_secs(4)).await;
    let elapsed = started.elapsed();
    assert!(got.is_empty(), "broker sent {got:02x?}");
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed after {elapsed:?}, before the 1 s timeout"
    );
    assert_serves(broker.tcp()).await;
}

#[tokio::test]
async fn incomplete_connect_is_closed_after_connect_timeout() {
    let broker = TestBroker::start_with(|c| c.limits.connect_timeout_secs = 1).await;
    let mut raw = RawClient::connect(broker.tcp()).await;
    let full = v4_connect_bytes(0x02, &unique("slowloris"), &[]);
    let started = Instant::now();
    raw.send(&full[..full.len() - 3]).await;
    let got = read_until_closed(&mut raw, Duration::from_secs(4)).await;
    let elapsed = started.elapsed();
    assert!(got.is_empty(), "broker sent {got:02x?}");
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed after {elapsed:?}, before the 1 s timeout"
    );
    assert_serves(broker.tcp()).await;
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed() {
    let broker = TestBroker::start_with(|c| {
        c.limits.max_connections = 2;
        // Long enough that a close within the bound below cannot be the CONNECT timeout.
        c.limits.connect_timeout_secs = 60;
    })
    .await;
    let mut first = v4_client(broker.tcp()).await;
    let mut second = v4_client(broker.tcp()).await;

    let mut third = RawClient::connect(broker.tcp()).await;
    let got = read_until_closed(&mut third, Duration::from_secs(2)).await;
    assert!(
        got.is_empty(),
        "broker sent {got:02x?} to a refused connection"
    );

    // The two admitted clients are unaffected.
    v4_round_trip(&mut first).await;

    // Once one leaves, a new client is admitted (the slot is freed when the broker has finished
    // with the old connection, which the client cannot observe exactly: retry until admitted).
    second.send_v4(p4::Packet::Disconnect).await;
    let got = read_until_closed(&mut second, WAIT).await;
    assert!(got.is_empty());
    let deadline = Instant::now() + WAIT;
    let mut admitted = loop {
        assert!(
            Instant::now() < deadline,
            "no slot freed after a client left"
        );
        let mut raw = RawClient::connect(broker.tcp()).await;
        let mut connect = p4::Connect::new(unique("late"));
        connect.keep_alive = 30;
        let mut buf = bytes::BytesMut::new();
        p4::Packet::Connect(connect)
            .write(&mut buf, usize::MAX)
            .expect("encode");
        send_lossy(&mut raw, &buf).await;
        match raw.recv_v4().await {
            Some(p4::Packet::ConnAck(c)) => {
                assert_eq!(c.code, p4::ConnectReturnCode::Success);
                break raw;
            }
            Some(other) => panic!("expected CONNACK, got {other:?}"),
            None => tokio::task::yield_now().await,
        }
    };
    v4_round_trip(&mut admitted).await;
}

// ---------------------------------------------------------------------------------------------
// Slow consumers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn subscriber_that_never_reads_does_not_stall_other_subscribers() {
    const MESSAGES: usize = 768;
    const BATCH: usize = 8;
    const PAYLOAD: usize = 64 * 1024;
    let broker = TestBroker::start_with(|c| c.limits.max_queued_messages = 16).await;

    let subscribe = packet(0x82, &cat(&[&[0x00, 0x01], &field(b"fan/#"), &[0x00]]));
    let mut slow = v4_client(broker.tcp()).await;
    slow.send(&subscribe).await;
    assert!(matches!(slow.recv_v4().await, Some(p4::Packet::SubAck(_))));
    // From here on `slow` never reads again.

    let mut healthy = v4_client(broker.tcp()).await;
    healthy.send(&subscribe).await;
    assert!(matches!(
        healthy.recv_v4().await,
        Some(p4::Packet::SubAck(_))
    ));

    let mut publisher = v4_client(broker.tcp()).await;
    let mut payload = vec![0x5au8; PAYLOAD];
    // 48 MB in total: far more than the slow client's socket buffers and delivery queue hold.
    // Batches stay below the delivery queue size, so the healthy subscriber never has to drop.
    for batch in 0..MESSAGES / BATCH {
        let mut bytes = bytes::BytesMut::new();
        for i in 0..BATCH {
            let n = (batch * BATCH + i) as u32;
            payload[..4].copy_from_slice(&n.to_be_bytes());
            p4::Packet::Publish(p4::Publish::new(
                "fan/data",
                rumqttc::mqttbytes::QoS::AtMostOnce,
                payload.clone(),
            ))
            .write(&mut bytes, usize::MAX)
            .expect("encode");
        }
        publisher.send(&bytes).await;
        for i in 0..BATCH {
            let n = (batch * BATCH + i) as u32;
            healthy.buf.reserve(256 * 1024);
            match healthy.recv_v4().await {
                Some(p4::Packet::Publish(p)) => {
                    assert_eq!(p.topic, "fan/data");
                    assert_eq!(p.payload.len(), PAYLOAD);
                    assert_eq!(p.payload[..4], n.to_be_bytes(), "message {n} out of order");
                }
                other => panic!("healthy subscriber: expected message {n}, got {other:?}"),
            }
        }
    }
    // The scenario really did back the slow subscriber up.
    assert!(
        broker.broker.metrics.dropped_queue_full.get() > 0,
        "the slow subscriber never fell behind; the test proves nothing"
    );
    drop(slow);
    assert_serves(broker.tcp()).await;
}

// ---------------------------------------------------------------------------------------------
// Random garbage
// ---------------------------------------------------------------------------------------------

/// Every panic in the process, with the name of the thread it happened on.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn record_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current()
                .name()
                .unwrap_or("<unnamed>")
                .to_string();
            PANICS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("[{thread}] {info}"));
            previous(info);
        }));
    });
}

/// Well-formed packets that random mutations start from (after a CONNECT of the same version).
fn templates_v5() -> Vec<Vec<u8>> {
    vec![
        v5_publish(0, b"g/a", None, &[], b"payload"),
        v5_publish(
            0b0011,
            b"g/b",
            Some(9),
            &[0x01, 0x01, 0x02, 0x00, 0x00, 0x00, 0x3c, 0x23, 0x00, 0x01],
            b"x",
        ),
        v5_publish(
            0b0100,
            b"g/c",
            Some(3),
            &[0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v'],
            b"",
        ),
        v5_subscribe(4, &[0x0b, 0x05], &[("g/#", 0x2e), ("$share/s/g/+", 0x01)]),
        packet(0xa2, &cat(&[&[0x00, 0x05, 0x00], &field(b"g/#")])),
        vec![0x62, 0x02, 0x00, 0x03],
        vec![0x40, 0x03, 0x00, 0x09, 0x10],
        vec![0x50, 0x02, 0x00, 0x01],
        vec![0x70, 0x02, 0x00, 0x01],
        vec![0xc0, 0x00],
        vec![0xe0, 0x07, 0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x00],
        vec![0xf0, 0x02, 0x18, 0x00],
    ]
}

fn templates_v4() -> Vec<Vec<u8>> {
    vec![
        packet(0x30, &cat(&[&field(b"g/a"), b"payload"])),
        packet(0x32, &cat(&[&field(b"g/b"), &[0x00, 0x07], b"x"])),
        packet(0x82, &cat(&[&[0x00, 0x02], &field(b"g/+"), &[0x01]])),
        packet(0xa2, &cat(&[&[0x00, 0x05], &field(b"g/#")])),
        vec![0x62, 0x02, 0x00, 0x03],
        vec![0x40, 0x02, 0x00, 0x09],
        vec![0xc0, 0x00],
        vec![0xe0, 0x00],
    ]
}

/// A v5 CONNECT with properties, a will with properties and a login, for mutation.
fn rich_v5_connect(id: &str) -> Vec<u8> {
    let props = [
        0x11, 0x00, 0x00, 0x00, 0x0a, 0x21, 0x00, 0x10, 0x22, 0x00, 0x05,
    ];
    let will_props = [0x18, 0x00, 0x00, 0x00, 0x01, 0x01, 0x01];
    let body = cat(&[
        &field(b"MQTT"),
        &[0x05, 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80, 0x00, 0x1e],
        &[props.len() as u8],
        &props,
        &field(id.as_bytes()),
        &[will_props.len() as u8],
        &will_props,
        &field(b"will/t"),
        &field(b"bye"),
        &field(b"user"),
        &field(b"pass"),
    ]);
    packet(0x10, &body)
}

fn mutate(rng: &mut StdRng, bytes: &mut Vec<u8>) {
    for _ in 0..rng.gen_range(1..=4) {
        if bytes.is_empty() {
            bytes.push(rng.gen());
            continue;
        }
        let at = rng.gen_range(0..bytes.len());
        match rng.gen_range(0..4) {
            0 => bytes[at] = rng.gen(),
            1 => bytes[at] ^= 1 << rng.gen_range(0..8),
            2 => bytes.truncate(at),
            _ => bytes.insert(at, rng.gen()),
        }
    }
}

/// One garbage input: raw noise, or a valid CONNECT followed by noise or mutated packets.
fn garbage(rng: &mut StdRng, n: usize) -> Vec<u8> {
    let random = |rng: &mut StdRng, max: usize| -> Vec<u8> {
        let len = rng.gen_range(0..=max);
        (0..len).map(|_| rng.gen()).collect()
    };
    let id = format!("garbage-{n}");
    let mut v4_connect = bytes::BytesMut::new();
    p4::Packet::Connect(p4::Connect::new(id.as_str()))
        .write(&mut v4_connect, usize::MAX)
        .expect("encode");
    let mut v5_connect = bytes::BytesMut::new();
    v5_connect_packet(&id, 30)
        .write(&mut v5_connect, None)
        .expect("encode");
    match n % 6 {
        0 => random(rng, 300),
        1 => cat(&[&v4_connect, &random(rng, 300)]),
        2 => cat(&[&v5_connect, &random(rng, 300)]),
        3 | 4 => {
            let (connect, templates) = if n % 6 == 3 {
                (v4_connect.to_vec(), templates_v4())
            } else {
                (v5_connect.to_vec(), templates_v5())
            };
            let mut out = connect;
            for _ in 0..rng.gen_range(1..=4) {
                let mut p = templates[rng.gen_range(0..templates.len())].clone();
                mutate(rng, &mut p);
                out.extend_from_slice(&p);
            }
            out
        }
        _ => {
            let mut c = rich_v5_connect(&id);
            mutate(rng, &mut c);
            c
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_garbage_never_panics_the_node() {
    record_panics();
    // Broker tasks run on this runtime's workers; their thread name is tokio's default.
    let worker = tokio::spawn(async { std::thread::current().name().map(str::to_string) })
        .await
        .expect("task")
        .expect("worker threads are named");
    let ours = |p: &String| p.starts_with(&format!("[{worker}]"));
    // The detector works: a panic in a task on the workers is recorded.
    let probe = tokio::spawn(async { panic!("panic-detector probe") }).await;
    assert!(probe.is_err());
    let probes = {
        let mut panics = PANICS.lock().unwrap_or_else(|e| e.into_inner());
        let before = panics.len();
        panics.retain(|p| !(ours(p) && p.contains("panic-detector probe")));
        before - panics.len()
    };
    assert_eq!(probes, 1, "the probe panic was not recorded");
    let broker = TestBroker::start().await;
    let mut rng = StdRng::seed_from_u64(0x5eed_57a2);
    for n in 0..200 {
        let input = garbage(&mut rng, n);
        let mut raw = RawClient::connect(broker.tcp()).await;
        send_lossy(&mut raw, &input).await;
        // Half-close: whatever the broker made of the input, it must now finish and close.
        let _ = raw.stream.shutdown().await;
        let outcome = tokio::time::timeout(WAIT, async {
            let mut scratch = [0u8; 4096];
            loop {
                match raw.stream.read(&mut scratch).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            outcome.is_ok(),
            "input {n} left the connection open: {input:02x?}"
        );
    }
    assert_serves(broker.tcp()).await;
    let panics: Vec<String> = PANICS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|p| ours(p))
        .cloned()
        .collect();
    assert!(panics.is_empty(), "the broker panicked: {panics:#?}");
}
