//! Helpers shared by the MQTT 5 integration tests (`mqtt5_session.rs`, `mqtt5_messages.rs`):
//! raw v5 connections for byte-level control and conveniences around the rumqttc v5 client.

#![allow(dead_code)]

use crate::common::{v5, RawClient, QUIET, WAIT};
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectProperties, ConnectReturnCode, DisconnectReasonCode, Filter, LastWill,
    Packet, PubAck, PubAckReason, Publish, SubAck, Subscribe, SubscribeProperties, UnsubAck,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::MqttOptions;
use std::net::SocketAddr;
use std::time::Duration;

/// A v5 CONNECT with keep-alive 60 and clean start.
pub fn connect_packet(id: &str, properties: Option<ConnectProperties>) -> Connect {
    Connect {
        keep_alive: 60,
        client_id: id.into(),
        clean_start: true,
        properties,
    }
}

/// Connect properties with only a session expiry interval.
pub fn expiry_props(secs: u32) -> ConnectProperties {
    let mut p = ConnectProperties::new();
    p.session_expiry_interval = Some(secs);
    p
}

/// Opens a raw connection, sends `connect` (with `will`) and returns it with the CONNACK.
pub async fn raw_connect(
    addr: SocketAddr,
    connect: Connect,
    will: Option<LastWill>,
) -> (RawClient, ConnAck) {
    let mut raw = RawClient::connect(addr).await;
    raw.send_v5(Packet::Connect(connect, will, None)).await;
    match raw.recv_v5().await {
        Some(Packet::ConnAck(ack)) => (raw, ack),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// A raw v5 connection with default options whose CONNECT was accepted.
pub async fn raw_v5(addr: SocketAddr, id: &str) -> RawClient {
    let (raw, ack) = raw_connect(addr, connect_packet(id, None), None).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    raw
}

/// The next packet the broker sends; panics if the connection closed.
pub async fn raw_next(raw: &mut RawClient) -> Packet {
    raw.recv_v5()
        .await
        .expect("broker closed the connection unexpectedly")
}

/// The next packet, which must be a PUBLISH.
pub async fn raw_publish(raw: &mut RawClient) -> Publish {
    match raw_next(raw).await {
        Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// The next packet, which must be a PUBACK.
pub async fn raw_puback(raw: &mut RawClient) -> PubAck {
    match raw_next(raw).await {
        Packet::PubAck(a) => a,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

/// The next packet must be a DISCONNECT, after which the broker closes; returns its reason.
pub async fn raw_disconnect_reason(raw: &mut RawClient) -> DisconnectReasonCode {
    let reason = match raw_next(raw).await {
        Packet::Disconnect(d) => d.reason_code,
        other => panic!("expected DISCONNECT, got {other:?}"),
    };
    raw.expect_closed().await;
    reason
}

/// Asserts the broker sends nothing (and keeps the connection open) for [`QUIET`].
pub async fn raw_quiet(raw: &mut RawClient) {
    if let Ok(got) = tokio::time::timeout(QUIET, raw.recv_v5()).await {
        match got {
            Some(p) => panic!("unexpected packet: {p:?}"),
            None => panic!("broker closed the connection"),
        }
    }
}

/// Sends a DISCONNECT with `reason` and an empty property set, byte by byte: rumqttc's encoder
/// leaves a stray property-length byte after a DISCONNECT that has a reason code but no properties.
pub async fn raw_send_disconnect(raw: &mut RawClient, reason: DisconnectReasonCode) {
    raw.send(&[0xE0, 0x02, reason as u8, 0x00]).await;
}

/// Sends a SUBSCRIBE and returns the SUBACK (which must be the next packet).
pub async fn raw_subscribe(
    raw: &mut RawClient,
    pkid: u16,
    filters: Vec<Filter>,
    id: Option<usize>,
) -> SubAck {
    let properties = id.map(|id| SubscribeProperties {
        id: Some(id),
        user_properties: Vec::new(),
    });
    let mut subscribe = Subscribe::new_many(filters, properties);
    subscribe.pkid = pkid;
    raw.send_v5(Packet::Subscribe(subscribe)).await;
    match raw_next(raw).await {
        Packet::SubAck(s) => {
            assert_eq!(s.pkid, pkid);
            s
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// A QoS 1 PUBLISH with the given packet id.
pub fn qos1_publish(topic: &str, pkid: u16, payload: &[u8]) -> Publish {
    let mut p = Publish::new(topic, QoS::AtLeastOnce, payload.to_vec(), None);
    p.pkid = pkid;
    p
}

/// A filter with every subscription option spelled out.
pub fn filter(path: &str, qos: QoS) -> Filter {
    Filter::new(path, qos)
}

/// Connects a rumqttc v5 client with options adjusted by `adjust`; returns it with the CONNACK.
pub async fn v5_client(
    addr: SocketAddr,
    id: &str,
    adjust: impl FnOnce(&mut MqttOptions),
) -> (v5::Client, ConnAck) {
    let mut options = v5::options(addr, id);
    adjust(&mut options);
    let mut client = v5::connect(options);
    let ack = client.connack().await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    (client, ack)
}

/// Subscribes a rumqttc v5 client and returns the SUBACK.
pub async fn subscribe(client: &mut v5::Client, filter: &str, qos: QoS) -> SubAck {
    client
        .client
        .subscribe(filter, qos)
        .await
        .expect("subscribe");
    client.suback().await
}

/// Subscribes with explicit subscription options and returns the SUBACK.
pub async fn subscribe_filter(client: &mut v5::Client, filter: Filter) -> SubAck {
    client
        .client
        .subscribe_many(vec![filter])
        .await
        .expect("subscribe");
    client.suback().await
}

/// Waits for the next PUBACK a rumqttc v5 client receives.
pub async fn puback(client: &mut v5::Client) -> PubAck {
    client
        .expect(|p| match p {
            Packet::PubAck(a) => Some(a.clone()),
            _ => None,
        })
        .await
}

/// Waits for the next UNSUBACK a rumqttc v5 client receives.
pub async fn unsuback(client: &mut v5::Client) -> UnsubAck {
    client
        .expect(|p| match p {
            Packet::UnsubAck(a) => Some(a.clone()),
            _ => None,
        })
        .await
}

/// Publishes at QoS 1 and returns the PUBACK reason.
pub async fn publish_qos1(client: &mut v5::Client, topic: &str, payload: &str) -> PubAckReason {
    client
        .client
        .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
        .await
        .expect("publish");
    puback(client).await.reason
}

/// Sends a normal DISCONNECT and waits until the broker has closed the connection.
pub async fn end_connection(client: &mut v5::Client) {
    client.client.disconnect().await.expect("disconnect");
    tokio::time::timeout(WAIT, async {
        loop {
            match client.events.recv().await {
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    })
    .await
    .expect("connection did not end after DISCONNECT");
}

/// Publishes QoS 1 probes to `topic` until the broker answers "no matching subscribers", i.e.
/// until the subscriptions of an expired session are gone. Bounded by [`WAIT`].
pub async fn wait_until_unrouted(client: &mut v5::Client, topic: &str) {
    tokio::time::timeout(WAIT, async {
        loop {
            if publish_qos1(client, topic, "probe").await == PubAckReason::NoMatchingSubscribers {
                return;
            }
            // Retry interval of the bounded poll; the broker sweeps expired sessions every second.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the session's subscriptions were still routed after the wait");
}
