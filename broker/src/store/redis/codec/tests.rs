//! The encoding's round trips, its documented bytes, the plain messages' short way, and damaged
//! or foreign values.

use super::wire::{message_from_wire, message_to_wire, WireMessage};
use super::*;
use crate::message::MessageProperties;
use crate::protocol::{self, QoS};
use bytes::Bytes;
use std::time::{Duration, UNIX_EPOCH};

fn message() -> Message {
    Message {
        topic: "a/b".into(),
        payload: Bytes::from_static(&[0, 159, 146, 150, 255, b'x']),
        qos: QoS::ExactlyOnce,
        retain: true,
        properties: MessageProperties {
            payload_format_indicator: Some(0),
            content_type: Some("application/octet-stream".into()),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(&[1, 2, 0xff])),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
        },
        expires_at: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789)),
        publisher: Some("pub".into()),
        received_at: None,
    }
}

#[test]
fn every_value_round_trips() {
    let m = message();
    assert_eq!(
        decode_message(&encode_message(&m).expect("encode")).ok(),
        Some(m.clone())
    );
    let w = StoredWill {
        message: Arc::new(m.clone()),
        delay_secs: 30,
    };
    assert_eq!(decode_will(&encode_will(&w).expect("encode")).ok(), Some(w));
    let mut q = QueuedMessage::new(Arc::new(m), QoS::AtLeastOnce, false, vec![1, 268_435_455]);
    q.maybe_sent = true;
    assert_eq!(
        decode_queued(&encode_queued(&q).expect("encode")).ok(),
        Some(q.clone())
    );
    let i = InflightMessage {
        packet_id: 65535,
        state: InflightState::AwaitingComplete,
        queued: q,
    };
    assert_eq!(
        decode_inflight(&encode_inflight(&i).expect("encode")).ok(),
        Some(i)
    );
    let o = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainForwardRule::Never,
        identifier: Some(7),
    };
    assert_eq!(
        decode_options(&encode_options(&o).expect("encode")).ok(),
        Some(o)
    );
}

#[test]
fn a_message_encodes_to_the_documented_bytes() {
    // Nodes of one cluster read each other's values: the layout must not drift.
    let m = Message {
        topic: "a/b".into(),
        payload: Bytes::from_static(&[1, 2, 3]),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: MessageProperties {
            payload_format_indicator: Some(1),
            correlation_data: Some(Bytes::from_static(&[9])),
            user_properties: vec![("k".into(), "v".into())],
            ..MessageProperties::default()
        },
        expires_at: None,
        publisher: Some("c".into()),
        received_at: None,
    };
    let expected = [
        ENCODING_VERSION,
        3,
        b'a',
        b'/',
        b'b', // topic
        3,
        1,
        2,
        3, // payload
        1,
        1, // qos, retain
        1,
        1,
        0,
        0, // payload format Some(1), no content type, no response topic
        1,
        1,
        9, // correlation data
        1,
        1,
        b'k',
        1,
        b'v', // user properties
        0,    // no expiry
        1,
        1,
        b'c', // publisher
    ];
    assert_eq!(encode_message(&m).expect("encode"), expected);
    assert_eq!(decode_message(&expected).expect("decode"), m);
}

/// The encoding serde and postcard write for `m`, whatever the message.
fn general_encoding(m: &Message) -> Vec<u8> {
    let mut out = vec![ENCODING_VERSION];
    postcard::serialize_with_flavor(&message_to_wire(m), Appending(&mut out)).unwrap();
    out
}

/// Plain messages of many shapes: topic, payload and publisher lengths on both sides of
/// each varint length step, every QoS, both retain flags.
fn plain_messages() -> Vec<Message> {
    let mut out = Vec::new();
    for (i, len) in [0usize, 1, 127, 128, 300, 16_383, 16_384, 70_000]
        .into_iter()
        .enumerate()
    {
        out.push(Message {
            topic: "t/".repeat(len.min(20_000) / 2 + 1).into(),
            payload: Bytes::from(vec![i as u8; len]),
            qos: protocol::qos_from_u8((i % 3) as u8).unwrap(),
            retain: i % 2 == 1,
            properties: MessageProperties::default(),
            expires_at: None,
            publisher: (i % 4 != 0).then(|| "p".repeat(len.min(300)).into()),
            received_at: None,
        });
    }
    out
}

#[test]
fn a_plain_message_takes_the_short_way_to_the_same_bytes_and_back() {
    for m in plain_messages() {
        let encoded = encode_message(&m).unwrap();
        assert_eq!(
            encoded,
            general_encoding(&m),
            "topic {} bytes",
            m.topic.len()
        );
        assert!(plain::decode(&encoded[1..]).is_some());
        assert_eq!(decode_message(&encoded).unwrap(), m);
        let general: WireMessage<'_> = postcard::from_bytes(&encoded[1..]).unwrap();
        assert_eq!(message_from_wire(general).unwrap(), m);
    }
    // Anything with properties or an expiry goes the general way, and comes back whole.
    let encoded = encode_message(&message()).unwrap();
    assert!(plain::decode(&encoded[1..]).is_none());
    assert_eq!(decode_message(&encoded).unwrap(), message());
}

#[test]
fn a_damaged_plain_message_is_an_error_never_a_panic() {
    let m = &plain_messages()[1];
    let encoded = encode_message(m).unwrap();
    // version, topic "t/", payload [1], QoS 1, retain, no extras, publisher "p"
    assert_eq!(
        encoded,
        [
            ENCODING_VERSION,
            2,
            b't',
            b'/',
            1,
            1,
            1,
            1,
            0,
            0,
            0,
            0,
            0,
            0,
            1,
            1,
            b'p'
        ]
    );
    for cut in 0..encoded.len() {
        assert!(decode_message(&encoded[..cut]).is_err(), "cut at {cut}");
    }
    // retain, an extra, the publisher flag; a length past the end; a QoS out of range;
    // a topic that is not UTF-8
    for (at, byte) in [(7, 2), (10, 2), (14, 2), (15, 9), (6, 3), (2, 0xff)] {
        let mut damaged = encoded.clone();
        damaged[at] = byte;
        assert!(decode_message(&damaged).is_err(), "byte {at} set to {byte}");
    }
}

#[test]
fn foreign_or_damaged_values_are_errors() {
    let mut bytes = encode_message(&message()).expect("encode");
    assert!(matches!(decode_message(&[]), Err(DecodeError::Empty)));
    bytes[0] = 9;
    assert!(matches!(
        decode_message(&bytes),
        Err(DecodeError::Version(9))
    ));
    bytes[0] = ENCODING_VERSION;
    bytes.truncate(bytes.len() / 2);
    assert!(matches!(
        decode_message(&bytes),
        Err(DecodeError::Format(_))
    ));
    // A queued message whose QoS byte is out of range.
    let mut q = encode_options(&SubscriptionOptions {
        qos: QoS::AtMostOnce,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainForwardRule::OnEverySubscribe,
        identifier: None,
    })
    .expect("encode");
    q[1] = 3;
    assert!(matches!(
        decode_options(&q),
        Err(DecodeError::Field { field: "qos", .. })
    ));
}
