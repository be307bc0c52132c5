//! MQTT 5 message behaviour: subscription options, subscription identifiers, topic aliases,
//! publish properties and request/response, payload format, reason codes, shared subscriptions.

mod common;
mod mqtt5_support;

use bytes::Bytes;
use common::{v4, v5, TestBroker};
use mqtt5_support::*;
use rumqttc::v5::mqttbytes::v5::{
    DisconnectReasonCode, Filter, Packet, PubAckReason, Publish, PublishProperties,
    RetainForwardRule, SubscribeProperties, SubscribeReasonCode, UnsubAckReason, Unsubscribe,
};
use rumqttc::v5::mqttbytes::QoS;
use std::collections::BTreeSet;
use std::net::SocketAddr;

async fn subscriber(addr: SocketAddr, id: &str, filter: &str) -> v5::Client {
    let (mut sub, _) = v5_client(addr, id, |_| {}).await;
    let ack = subscribe(&mut sub, filter, QoS::AtLeastOnce).await;
    assert_eq!(
        ack.return_codes,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    sub
}

// ---------------------------------------------------------------------------------------------
// Subscription options
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn no_local_subscription_does_not_receive_own_publishes() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let (mut client, _) = v5_client(addr, "nl-self", |_| {}).await;
    let mut f = Filter::new("nl/t", QoS::AtLeastOnce);
    f.nolocal = true;
    subscribe_filter(&mut client, f).await;
    publish_qos1(&mut client, "nl/t", "mine").await;

    let (mut other, _) = v5_client(addr, "nl-other", |_| {}).await;
    publish_qos1(&mut other, "nl/t", "theirs").await;
    let p = client.publish().await;
    assert_eq!(&p.payload[..], b"theirs", "own publish was delivered");
    client.no_publish().await;
    broker.stop().await;
}

async fn live_retain_flag(retain_as_published: bool) -> bool {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let (mut sub, _) = v5_client(addr, "rap-sub", |_| {}).await;
    let mut f = Filter::new("rap/t", QoS::AtLeastOnce);
    f.preserve_retain = retain_as_published;
    subscribe_filter(&mut sub, f).await;
    let (publisher, _) = v5_client(addr, "rap-pub", |_| {}).await;
    publisher
        .client
        .publish("rap/t", QoS::AtLeastOnce, true, "live")
        .await
        .expect("publish");
    let p = sub.publish().await;
    assert_eq!(&p.payload[..], b"live");
    broker.stop().await;
    p.retain
}

#[tokio::test]
async fn retain_as_published_keeps_retain_flag_on_live_delivery() {
    assert!(live_retain_flag(true).await);
}

#[tokio::test]
async fn without_retain_as_published_live_delivery_clears_retain_flag() {
    assert!(!live_retain_flag(false).await);
}

/// Publishes a retained message on `rh/t`, then subscribes twice with `rule`; `expected` says
/// whether the retained message must follow the first and the second SUBSCRIBE.
async fn check_retained_on_subscribe(rule: RetainForwardRule, expected: [bool; 2]) {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let (mut publisher, _) = v5_client(addr, "rh-pub", |_| {}).await;
    publisher
        .client
        .publish("rh/t", QoS::AtLeastOnce, true, "kept")
        .await
        .expect("publish");
    puback(&mut publisher).await;

    let (mut sub, _) = v5_client(addr, "rh-sub", |_| {}).await;
    for (round, expect_retained) in expected.into_iter().enumerate() {
        let mut f = Filter::new("rh/#", QoS::AtLeastOnce);
        f.retain_forward_rule = rule.clone();
        let ack = subscribe_filter(&mut sub, f).await;
        assert_eq!(
            ack.return_codes,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
        if expect_retained {
            let p = sub.publish().await;
            assert_eq!(&p.topic[..], b"rh/t", "subscribe #{round}");
            assert_eq!(&p.payload[..], b"kept");
            assert!(p.retain, "a retained message is sent with the retain flag");
        } else {
            sub.no_publish().await;
        }
    }
    broker.stop().await;
}

#[tokio::test]
async fn retain_handling_0_sends_retained_on_every_subscribe() {
    check_retained_on_subscribe(RetainForwardRule::OnEverySubscribe, [true, true]).await;
}

#[tokio::test]
async fn retain_handling_1_sends_retained_only_for_a_new_subscription() {
    check_retained_on_subscribe(RetainForwardRule::OnNewSubscribe, [true, false]).await;
}

#[tokio::test]
async fn retain_handling_2_never_sends_retained() {
    check_retained_on_subscribe(RetainForwardRule::Never, [false, false]).await;
}

// ---------------------------------------------------------------------------------------------
// Subscription identifiers
// ---------------------------------------------------------------------------------------------

async fn subscribe_with_id(client: &mut v5::Client, filter: &str, id: usize) {
    client
        .client
        .subscribe_with_properties(
            filter,
            QoS::AtLeastOnce,
            SubscribeProperties {
                id: Some(id),
                user_properties: Vec::new(),
            },
        )
        .await
        .expect("subscribe");
    client.suback().await;
}

#[tokio::test]
async fn subscription_identifier_is_delivered_with_publish() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let (mut sub, _) = v5_client(addr, "sid-sub", |_| {}).await;
    subscribe_with_id(&mut sub, "sid/+", 7).await;
    let (mut publisher, _) = v5_client(addr, "sid-pub", |_| {}).await;
    publish_qos1(&mut publisher, "sid/a", "x").await;
    let p = sub.publish().await;
    let ids = p.properties.expect("properties").subscription_identifiers;
    assert_eq!(ids, vec![7]);
    broker.stop().await;
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_with_both_identifiers() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let (mut sub, _) = v5_client(addr, "sio-sub", |_| {}).await;
    subscribe_with_id(&mut sub, "sio/+", 1).await;
    subscribe_with_id(&mut sub, "sio/a", 2).await;
    let (mut publisher, _) = v5_client(addr, "sio-pub", |_| {}).await;
    publish_qos1(&mut publisher, "sio/a", "x").await;
    let p = sub.publish().await;
    let mut ids = p.properties.expect("properties").subscription_identifiers;
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
    sub.no_publish().await;
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Topic aliases from the client
// ---------------------------------------------------------------------------------------------

fn aliased(topic: &str, alias: u16, pkid: u16, payload: &[u8]) -> Publish {
    let mut p = qos1_publish(topic, pkid, payload);
    p.properties = Some(PublishProperties {
        topic_alias: Some(alias),
        ..Default::default()
    });
    p
}

#[tokio::test]
async fn topic_alias_defined_then_used_delivers_full_topic() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let mut sub = subscriber(addr, "ta-sub", "ta/#").await;
    let mut publisher = raw_v5(addr, "ta-pub").await;
    publisher
        .send_v5(Packet::Publish(aliased("ta/full/name", 1, 1, b"one")))
        .await;
    assert_eq!(
        raw_puback(&mut publisher).await.reason,
        PubAckReason::Success
    );
    publisher
        .send_v5(Packet::Publish(aliased("", 1, 2, b"two")))
        .await;
    assert_eq!(
        raw_puback(&mut publisher).await.reason,
        PubAckReason::Success
    );

    for payload in [&b"one"[..], b"two"] {
        let p = sub.publish().await;
        assert_eq!(&p.topic[..], b"ta/full/name");
        assert_eq!(&p.payload[..], payload);
    }
    broker.stop().await;
}

#[tokio::test]
async fn topic_alias_zero_is_disconnected_with_0x94() {
    let broker = TestBroker::start().await;
    let mut publisher = raw_v5(broker.tcp(), "ta0").await;
    publisher
        .send_v5(Packet::Publish(aliased("ta/t", 0, 1, b"x")))
        .await;
    assert_eq!(
        raw_disconnect_reason(&mut publisher).await,
        DisconnectReasonCode::TopicAliasInvalid
    );
    broker.stop().await;
}

#[tokio::test]
async fn topic_alias_above_maximum_is_disconnected_with_0x94() {
    let broker = TestBroker::start_with(|c| c.limits.max_topic_alias = 5).await;
    let (mut publisher, ack) = raw_connect(broker.tcp(), connect_packet("tamax", None), None).await;
    assert_eq!(ack.properties.and_then(|p| p.topic_alias_max), Some(5));
    publisher
        .send_v5(Packet::Publish(aliased("ta/t", 6, 1, b"x")))
        .await;
    assert_eq!(
        raw_disconnect_reason(&mut publisher).await,
        DisconnectReasonCode::TopicAliasInvalid
    );
    broker.stop().await;
}

#[tokio::test]
async fn undefined_topic_alias_is_protocol_error() {
    let broker = TestBroker::start().await;
    let mut publisher = raw_v5(broker.tcp(), "taundef").await;
    publisher
        .send_v5(Packet::Publish(aliased("", 3, 1, b"x")))
        .await;
    assert_eq!(
        raw_disconnect_reason(&mut publisher).await,
        DisconnectReasonCode::ProtocolError
    );
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Publish properties, request/response, payload format, PUBACK reason codes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn publish_properties_pass_through_unchanged() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let mut sub = subscriber(addr, "pp-sub", "pp/t").await;
    let (publisher, _) = v5_client(addr, "pp-pub", |_| {}).await;
    let user_properties = vec![
        ("a".to_string(), "1".to_string()),
        ("b".to_string(), "2".to_string()),
        ("a".to_string(), "3".to_string()),
    ];
    let sent = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("text/plain; charset=utf-8".into()),
        response_topic: Some("pp/reply".into()),
        correlation_data: Some(Bytes::from_static(&[0, 1, 2, 0xff])),
        user_properties: user_properties.clone(),
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties("pp/t", QoS::AtLeastOnce, false, "héllo", sent)
        .await
        .expect("publish");
    let p = sub.publish().await;
    assert_eq!(&p.payload[..], "héllo".as_bytes());
    let got = p.properties.expect("properties");
    assert_eq!(
        got.user_properties, user_properties,
        "order and repeats kept"
    );
    assert_eq!(
        got.content_type.as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(got.response_topic.as_deref(), Some("pp/reply"));
    assert_eq!(
        got.correlation_data.as_deref(),
        Some(&[0u8, 1, 2, 0xff][..])
    );
    assert_eq!(got.payload_format_indicator, Some(1));
    broker.stop().await;
}

#[tokio::test]
async fn request_response_round_trip_via_response_topic() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let mut responder = subscriber(addr, "rr-responder", "rr/service").await;
    let mut requester = subscriber(addr, "rr-requester", "rr/replies/requester").await;
    requester
        .client
        .publish_with_properties(
            "rr/service",
            QoS::AtLeastOnce,
            false,
            "2+2",
            PublishProperties {
                response_topic: Some("rr/replies/requester".into()),
                correlation_data: Some(Bytes::from_static(b"req-42")),
                ..Default::default()
            },
        )
        .await
        .expect("request");

    let request = responder.publish().await;
    assert_eq!(&request.payload[..], b"2+2");
    let props = request.properties.expect("request properties");
    let reply_to = props.response_topic.expect("response topic");
    responder
        .client
        .publish_with_properties(
            reply_to,
            QoS::AtLeastOnce,
            false,
            "4",
            PublishProperties {
                correlation_data: props.correlation_data,
                ..Default::default()
            },
        )
        .await
        .expect("response");

    let response = requester.publish().await;
    assert_eq!(&response.topic[..], b"rr/replies/requester");
    assert_eq!(&response.payload[..], b"4");
    assert_eq!(
        response
            .properties
            .and_then(|p| p.correlation_data)
            .as_deref(),
        Some(&b"req-42"[..])
    );
    broker.stop().await;
}

#[tokio::test]
async fn invalid_utf8_with_payload_format_indicator_is_refused_with_0x99() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let mut sub = subscriber(addr, "pf-sub", "pf/t").await;
    let (mut publisher, _) = v5_client(addr, "pf-pub", |_| {}).await;
    publisher
        .client
        .publish_with_properties(
            "pf/t",
            QoS::AtLeastOnce,
            false,
            vec![0xff, 0xfe, 0x80],
            PublishProperties {
                payload_format_indicator: Some(1),
                ..Default::default()
            },
        )
        .await
        .expect("publish");
    assert_eq!(
        puback(&mut publisher).await.reason,
        PubAckReason::PayloadFormatInvalid
    );
    publish_qos1(&mut publisher, "pf/t", "valid").await;
    let p = sub.publish().await;
    assert_eq!(
        &p.payload[..],
        b"valid",
        "the invalid payload was delivered"
    );
    sub.no_publish().await;
    broker.stop().await;
}

#[tokio::test]
async fn puback_reports_no_matching_subscribers_with_0x10() {
    let broker = TestBroker::start().await;
    let (mut publisher, _) = v5_client(broker.tcp(), "nms-pub", |_| {}).await;
    assert_eq!(
        publish_qos1(&mut publisher, "nobody/listens", "x").await,
        PubAckReason::NoMatchingSubscribers
    );
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Shared subscriptions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn shared_subscription_across_v5_and_v4_delivers_each_message_to_exactly_one() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let mut s5 = subscriber(addr, "sh-v5", "$share/g/sh/t").await;
    let mut s4 = v4::connect(v4::options(addr, "sh-v4"));
    s4.connack().await;
    s4.client
        .subscribe("$share/g/sh/t", v4::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    s4.suback().await;

    let (mut publisher, _) = v5_client(addr, "sh-pub", |_| {}).await;
    let sent: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    for m in &sent {
        assert_eq!(
            publish_qos1(&mut publisher, "sh/t", m).await,
            PubAckReason::Success
        );
    }
    let mut via_v5 = Vec::new();
    let mut via_v4 = Vec::new();
    while via_v5.len() + via_v4.len() < sent.len() {
        tokio::select! {
            p = s5.publish() => via_v5.push(String::from_utf8(p.payload.to_vec()).expect("utf-8")),
            p = s4.publish() => via_v4.push(String::from_utf8(p.payload.to_vec()).expect("utf-8")),
        }
    }
    s5.no_publish().await;
    s4.no_publish().await;
    let all: BTreeSet<String> = via_v5.iter().chain(&via_v4).cloned().collect();
    assert_eq!(all.len(), sent.len(), "a message went to both members");
    assert_eq!(all, sent.iter().cloned().collect::<BTreeSet<_>>());
    assert!(
        !via_v5.is_empty() && !via_v4.is_empty(),
        "one member got everything: v5 {via_v5:?}, v4 {via_v4:?}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn no_local_on_shared_subscription_is_protocol_error() {
    let broker = TestBroker::start().await;
    let mut raw = raw_v5(broker.tcp(), "sh-nl").await;
    let mut f = Filter::new("$share/g/t", QoS::AtLeastOnce);
    f.nolocal = true;
    let mut subscribe = rumqttc::v5::mqttbytes::v5::Subscribe::new(f, None);
    subscribe.pkid = 1;
    raw.send_v5(Packet::Subscribe(subscribe)).await;
    assert_eq!(
        raw_disconnect_reason(&mut raw).await,
        DisconnectReasonCode::ProtocolError
    );
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// SUBACK and UNSUBACK reason codes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_filter_gets_0x8f_while_the_others_are_granted() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let mut raw = raw_v5(addr, "sa-raw").await;
    let ack = raw_subscribe(
        &mut raw,
        1,
        vec![
            filter("sa/ok", QoS::AtLeastOnce),
            filter("a/#/b", QoS::AtMostOnce),
            filter("sa/also", QoS::ExactlyOnce),
        ],
        None,
    )
    .await;
    assert_eq!(
        ack.return_codes,
        vec![
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::TopicFilterInvalid,
            SubscribeReasonCode::Success(QoS::ExactlyOnce),
        ]
    );
    let (mut publisher, _) = v5_client(addr, "sa-pub", |_| {}).await;
    publish_qos1(&mut publisher, "sa/ok", "granted").await;
    let p = raw_publish(&mut raw).await;
    assert_eq!(&p.topic[..], b"sa/ok");
    assert_eq!(&p.payload[..], b"granted");
    broker.stop().await;
}

#[tokio::test]
async fn suback_grants_the_requested_qos() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = v5_client(broker.tcp(), "gq-sub", |_| {}).await;
    sub.client
        .subscribe_many(vec![
            Filter::new("gq/0", QoS::AtMostOnce),
            Filter::new("gq/1", QoS::AtLeastOnce),
            Filter::new("gq/2", QoS::ExactlyOnce),
        ])
        .await
        .expect("subscribe");
    let ack = sub.suback().await;
    assert_eq!(
        ack.return_codes,
        vec![
            SubscribeReasonCode::Success(QoS::AtMostOnce),
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Success(QoS::ExactlyOnce),
        ]
    );
    broker.stop().await;
}

#[tokio::test]
async fn unsuback_reports_0x11_for_a_filter_that_was_not_subscribed() {
    let broker = TestBroker::start().await;
    let mut raw = raw_v5(broker.tcp(), "us-raw").await;
    raw_subscribe(&mut raw, 1, vec![filter("us/a", QoS::AtLeastOnce)], None).await;
    let mut unsubscribe = Unsubscribe::new("us/a", None);
    unsubscribe.filters.push("us/never".into());
    unsubscribe.pkid = 2;
    raw.send_v5(Packet::Unsubscribe(unsubscribe)).await;
    match raw_next(&mut raw).await {
        Packet::UnsubAck(ack) => {
            assert_eq!(ack.pkid, 2);
            assert_eq!(
                ack.reasons,
                vec![
                    UnsubAckReason::Success,
                    UnsubAckReason::NoSubscriptionExisted
                ]
            );
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    broker.stop().await;
}
