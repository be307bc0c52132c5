//! MQTT 5 outbound topic aliases (`limits.max_outbound_topic_alias`), checked on the bytes the
//! broker writes to raw v5 and 3.1.1 subscribers on real sockets.

mod common;
mod mqtt5_support;

use bytes::BytesMut;
use common::{RawClient, TestBroker, WAIT};
use mqtt5_support::*;
use rumqttc::v5::mqttbytes::v5::{
    ConnectProperties, ConnectReturnCode, Packet, PubAck, Publish, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use std::collections::HashMap;
use std::net::SocketAddr;
use tokio::io::AsyncReadExt;

/// CONNECT properties announcing `alias_max` (`None`: the property is absent) and a session
/// expiry interval.
fn props(alias_max: Option<u16>, expiry: u32) -> ConnectProperties {
    let mut p = ConnectProperties::new();
    p.topic_alias_max = alias_max;
    p.session_expiry_interval = (expiry > 0).then_some(expiry);
    p
}

/// A raw v5 subscriber to `topics` at QoS 0 that announced `alias_max`.
async fn subscriber(addr: SocketAddr, id: &str, alias_max: Option<u16>, topics: &str) -> RawClient {
    let (mut raw, ack) =
        raw_connect(addr, connect_packet(id, Some(props(alias_max, 0))), None).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let suback = raw_subscribe(&mut raw, 1, vec![filter(topics, QoS::AtMostOnce)], None).await;
    assert_eq!(
        suback.return_codes,
        vec![SubscribeReasonCode::Success(QoS::AtMostOnce)]
    );
    raw
}

/// Publishes at QoS 1 from a raw client and waits for the PUBACK, so that what the test
/// publishes reaches subscribers in order.
async fn publish(publisher: &mut RawClient, pkid: &mut u16, topic: &str, payload: &str) {
    *pkid = pkid.wrapping_add(1).max(1);
    publisher
        .send_v5(Packet::Publish(qos1_publish(
            topic,
            *pkid,
            payload.as_bytes(),
        )))
        .await;
    let ack: PubAck = raw_puback(publisher).await;
    assert_eq!(ack.pkid, *pkid);
}

/// Reads the next whole packet the broker wrote, as bytes.
async fn raw_frame(raw: &mut RawClient) -> Vec<u8> {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(len) = frame_len(&raw.buf) {
                if raw.buf.len() >= len {
                    return raw.buf.split_to(len).to_vec();
                }
            }
            let n = raw.stream.read_buf(&mut raw.buf).await.expect("read");
            assert!(n > 0, "broker closed the connection");
        }
    })
    .await
    .expect("broker sent nothing in time")
}

/// Length of the packet at the start of `buf`, once its fixed header is complete.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let mut remaining = 0usize;
    for (i, byte) in buf.iter().skip(1).take(4).enumerate() {
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(1 + i + 1 + remaining);
        }
    }
    None
}

/// The bytes of a QoS 0 v5 PUBLISH with no property but, if given, a topic alias.
fn qos0_publish_bytes(topic: &str, alias: Option<u16>, payload: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&u16::try_from(topic.len()).expect("short").to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    match alias {
        Some(alias) => {
            body.extend_from_slice(&[3, 0x23]);
            body.extend_from_slice(&alias.to_be_bytes());
        }
        None => body.push(0),
    }
    body.extend_from_slice(payload.as_bytes());
    let mut frame = vec![0x30, u8::try_from(body.len()).expect("short packet")];
    frame.extend_from_slice(&body);
    frame
}

/// The next PUBLISH the broker wrote, decoded.
async fn next_publish(raw: &mut RawClient) -> Publish {
    let frame = raw_frame(raw).await;
    match Packet::read(&mut BytesMut::from(&frame[..]), None) {
        Ok(Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?} from {frame:02x?}"),
    }
}

fn alias_of(p: &Publish) -> Option<u16> {
    p.properties.as_ref().and_then(|props| props.topic_alias)
}

/// A client's side of topic aliases as the specification has it: an alias with a topic sets
/// the mapping, an alias with an empty topic uses it; anything else is a protocol error.
struct Follower {
    max: u16,
    mapping: HashMap<u16, String>,
    known_uses: usize,
    reassignments: usize,
    highest: u16,
}

impl Follower {
    fn new(max: u16) -> Self {
        Follower {
            max,
            mapping: HashMap::new(),
            known_uses: 0,
            reassignments: 0,
            highest: 0,
        }
    }

    fn topic(&mut self, p: &Publish) -> String {
        let topic = String::from_utf8(p.topic.to_vec()).expect("UTF-8 topic");
        let Some(alias) = alias_of(p) else {
            assert!(!topic.is_empty(), "empty topic without an alias");
            return topic;
        };
        assert!(
            (1..=self.max).contains(&alias),
            "alias {alias} outside 1..={}",
            self.max
        );
        self.highest = self.highest.max(alias);
        if topic.is_empty() {
            self.known_uses += 1;
            self.mapping
                .get(&alias)
                .cloned()
                .unwrap_or_else(|| panic!("alias {alias} used before it was set"))
        } else {
            if let Some(old) = self.mapping.insert(alias, topic.clone()) {
                if old != topic {
                    self.reassignments += 1;
                }
            }
            topic
        }
    }
}

#[tokio::test]
async fn first_publish_carries_topic_and_alias_then_the_alias_alone() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let mut sub = subscriber(addr, "oa-sub", Some(10), "oa/#").await;
    let mut publisher = raw_v5(addr, "oa-pub").await;
    let mut pkid = 0;

    publish(&mut publisher, &mut pkid, "oa/sensor/temp", "21.5").await;
    assert_eq!(
        raw_frame(&mut sub).await,
        qos0_publish_bytes("oa/sensor/temp", Some(1), "21.5")
    );
    publish(&mut publisher, &mut pkid, "oa/sensor/temp", "22.0").await;
    assert_eq!(
        raw_frame(&mut sub).await,
        qos0_publish_bytes("", Some(1), "22.0")
    );
    publish(&mut publisher, &mut pkid, "oa/sensor/humidity", "40").await;
    assert_eq!(
        raw_frame(&mut sub).await,
        qos0_publish_bytes("oa/sensor/humidity", Some(2), "40")
    );
    publish(&mut publisher, &mut pkid, "oa/sensor/temp", "22.5").await;
    assert_eq!(
        raw_frame(&mut sub).await,
        qos0_publish_bytes("", Some(1), "22.5")
    );
    broker.stop().await;
}

/// Two messages to one topic for a subscriber that announced `alias_max`, with the broker's
/// `limits.max_outbound_topic_alias` at `setting`: both must carry the whole topic, no alias.
async fn check_no_alias(alias_max: Option<u16>, setting: u16) {
    let broker = TestBroker::start_with(|c| c.limits.max_outbound_topic_alias = setting).await;
    let addr = broker.tcp();
    let mut sub = subscriber(addr, "na-sub", alias_max, "na/#").await;
    let mut publisher = raw_v5(addr, "na-pub").await;
    let mut pkid = 0;
    for payload in ["one", "two"] {
        publish(&mut publisher, &mut pkid, "na/topic", payload).await;
        assert_eq!(
            raw_frame(&mut sub).await,
            qos0_publish_bytes("na/topic", None, payload),
            "alias maximum {alias_max:?}, setting {setting}"
        );
    }
    broker.stop().await;
}

#[tokio::test]
async fn client_announcing_no_topic_alias_maximum_gets_no_alias() {
    check_no_alias(None, 16).await;
}

#[tokio::test]
async fn client_announcing_topic_alias_maximum_zero_gets_no_alias() {
    check_no_alias(Some(0), 16).await;
}

#[tokio::test]
async fn setting_zero_turns_outbound_aliases_off() {
    check_no_alias(Some(10), 0).await;
}

#[tokio::test]
async fn mqtt311_subscriber_never_gets_aliases() {
    use rumqttc::mqttbytes::v4;
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let mut sub = RawClient::connect(addr).await;
    sub.send_v4(v4::Packet::Connect(v4::Connect::new("v4-sub")))
        .await;
    assert!(matches!(sub.recv_v4().await, Some(v4::Packet::ConnAck(_))));
    sub.send_v4(v4::Packet::Subscribe(v4::Subscribe::new(
        "v4a/#",
        rumqttc::mqttbytes::QoS::AtMostOnce,
    )))
    .await;
    assert!(matches!(sub.recv_v4().await, Some(v4::Packet::SubAck(_))));
    let mut publisher = raw_v5(addr, "v4a-pub").await;
    let mut pkid = 0;
    for payload in ["one", "two"] {
        publish(&mut publisher, &mut pkid, "v4a/topic", payload).await;
        let mut expected = vec![0x30, u8::try_from(2 + 9 + payload.len()).expect("short")];
        expected.extend_from_slice(&[0, 9]);
        expected.extend_from_slice(b"v4a/topic");
        expected.extend_from_slice(payload.as_bytes());
        assert_eq!(raw_frame(&mut sub).await, expected);
    }
    broker.stop().await;
}

/// Publishes a fixed pseudo-random sequence over six topics to a subscriber that announced
/// `client_max`, with the setting at `setting`; the subscriber follows the specification and
/// must recover every topic with no alias above the lower of the two.
async fn check_many_topics(client_max: u16, setting: u16) {
    let broker = TestBroker::start_with(|c| c.limits.max_outbound_topic_alias = setting).await;
    let addr = broker.tcp();
    let mut sub = subscriber(addr, "many-sub", Some(client_max), "many/#").await;
    let mut publisher = raw_v5(addr, "many-pub").await;
    let mut pkid = 0;
    let allowed = client_max.min(setting);
    let mut follower = Follower::new(allowed);
    let mut seed = 7u32;
    for i in 0..60 {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let topic = format!("many/topic/{}", (seed >> 16) % 6);
        let payload = format!("{i}:{topic}");
        publish(&mut publisher, &mut pkid, &topic, &payload).await;
        let p = next_publish(&mut sub).await;
        assert_eq!(&p.payload[..], payload.as_bytes());
        assert_eq!(follower.topic(&p), topic, "message {i}");
    }
    assert_eq!(follower.highest, allowed, "every allowed alias is used");
    assert!(follower.known_uses > 0, "aliases are used without topics");
    assert!(follower.reassignments > 0, "full table: aliases reassigned");
    broker.stop().await;
}

#[tokio::test]
async fn more_topics_than_the_client_allows_stay_within_its_maximum() {
    check_many_topics(3, 16).await;
}

#[tokio::test]
async fn more_topics_than_the_setting_allows_stay_within_the_setting() {
    check_many_topics(100, 2).await;
}

#[tokio::test]
async fn a_resumed_session_starts_with_no_alias_mapping() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let mut publisher = raw_v5(addr, "rs-pub").await;
    let mut pkid = 0;

    let (mut sub, ack) = raw_connect(
        addr,
        connect_packet("rs-sub", Some(props(Some(5), 300))),
        None,
    )
    .await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    raw_subscribe(&mut sub, 1, vec![filter("rs/#", QoS::AtLeastOnce)], None).await;
    publish(&mut publisher, &mut pkid, "rs/topic", "m1").await;
    let m1 = next_publish(&mut sub).await;
    assert_eq!((&m1.topic[..], alias_of(&m1)), (&b"rs/topic"[..], Some(1)));
    sub.send_v5(Packet::PubAck(PubAck::new(m1.pkid, None)))
        .await;
    publish(&mut publisher, &mut pkid, "rs/topic", "m2").await;
    let m2 = next_publish(&mut sub).await;
    assert_eq!((&m2.topic[..], alias_of(&m2)), (&b""[..], Some(1)));
    // m2 is left unacknowledged: in flight when the connection drops.
    drop(sub);
    publish(&mut publisher, &mut pkid, "rs/topic", "m3").await;

    let mut resumed = connect_packet("rs-sub", Some(props(Some(5), 300)));
    resumed.clean_start = false;
    let (mut sub, ack) = raw_connect(addr, resumed, None).await;
    assert!(ack.session_present);
    // The resent m2 must name its topic again: the new connection's client knows no alias.
    let again = next_publish(&mut sub).await;
    assert_eq!(&again.payload[..], b"m2");
    assert!(again.dup, "a resend after reconnect is DUP");
    assert_eq!(
        (&again.topic[..], alias_of(&again)),
        (&b"rs/topic"[..], Some(1))
    );
    sub.send_v5(Packet::PubAck(PubAck::new(again.pkid, None)))
        .await;
    let m3 = next_publish(&mut sub).await;
    assert_eq!(&m3.payload[..], b"m3");
    assert_eq!((&m3.topic[..], alias_of(&m3)), (&b""[..], Some(1)));
    sub.send_v5(Packet::PubAck(PubAck::new(m3.pkid, None)))
        .await;
    broker.stop().await;
}

/// A raw v5 subscriber to `topics` at QoS 0 that announced `alias_max` and a Maximum Packet
/// Size of `max_packet`.
async fn small_subscriber(
    addr: SocketAddr,
    alias_max: u16,
    max_packet: u32,
    topics: &str,
) -> RawClient {
    let mut p = props(Some(alias_max), 0);
    p.max_packet_size = Some(max_packet);
    let (mut raw, ack) = raw_connect(addr, connect_packet("small-sub", Some(p)), None).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    raw_subscribe(&mut raw, 1, vec![filter(topics, QoS::AtMostOnce)], None).await;
    raw
}

#[tokio::test]
async fn a_publish_that_fits_only_without_an_alias_is_sent_without_one() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let mut sub = small_subscriber(addr, 4, 64, "fit/#").await;
    let mut publisher = raw_v5(addr, "fit-pub").await;
    let mut pkid = 0;
    // 64 bytes exactly without an alias, 67 with one.
    let exact = "x".repeat(64 - 13);
    assert_eq!(qos0_publish_bytes("fit/exac", None, &exact).len(), 64);
    publish(&mut publisher, &mut pkid, "fit/exac", &exact).await;
    assert_eq!(
        raw_frame(&mut sub).await,
        qos0_publish_bytes("fit/exac", None, &exact)
    );
    // The client was never told an alias for it: the next one assigns one.
    publish(&mut publisher, &mut pkid, "fit/exac", "small").await;
    assert_eq!(
        raw_frame(&mut sub).await,
        qos0_publish_bytes("fit/exac", Some(1), "small")
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_publish_too_large_for_the_client_leaves_its_alias_mapping_alone() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let mut sub = small_subscriber(addr, 1, 64, "big/#").await;
    let mut publisher = raw_v5(addr, "big-pub").await;
    let mut pkid = 0;
    publish(&mut publisher, &mut pkid, "big/a", "one").await;
    assert_eq!(
        raw_frame(&mut sub).await,
        qos0_publish_bytes("big/a", Some(1), "one")
    );
    // Too large for the client with or without an alias: dropped, so alias 1 still means big/a
    // to the client.
    publish(&mut publisher, &mut pkid, "big/b", &"x".repeat(100)).await;
    publish(&mut publisher, &mut pkid, "big/b", "two").await;
    assert_eq!(
        raw_frame(&mut sub).await,
        qos0_publish_bytes("big/b", Some(1), "two")
    );
    publish(&mut publisher, &mut pkid, "big/b", "three").await;
    assert_eq!(
        raw_frame(&mut sub).await,
        qos0_publish_bytes("", Some(1), "three")
    );
    broker.stop().await;
}
