//! Correctness under bursts: every message of a fast publisher reaches a subscriber that keeps
//! reading, at QoS 0 (backpressure instead of drops) and QoS 1, fan-in and fan-out. These are not
//! timed: they fail if messages are lost or a connection stalls (the harness timeout).

mod common;

use bytes::BytesMut;
use common::{RawClient, TestBroker, WAIT};
use rumqttc::mqttbytes::v4::{Connect, Packet, PubAck, Publish, Subscribe};
use rumqttc::mqttbytes::QoS;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn raw_session(addr: SocketAddr, id: &str) -> RawClient {
    let mut raw = RawClient::connect(addr).await;
    let mut connect = Connect::new(id);
    connect.keep_alive = 60;
    raw.send_v4(Packet::Connect(connect)).await;
    assert!(matches!(raw.recv_v4().await, Some(Packet::ConnAck(_))));
    raw
}

/// Connects and subscribes; returns once the broker has answered SUBACK.
async fn subscriber(addr: SocketAddr, id: &str, filter: &str, qos: QoS) -> RawClient {
    let mut raw = raw_session(addr, id).await;
    raw.send_v4(Packet::Subscribe(Subscribe::new(filter, qos)))
        .await;
    assert!(matches!(raw.recv_v4().await, Some(Packet::SubAck(_))));
    raw
}

/// Counts publishes until `expected` arrived, acknowledging QoS 1; returns the per-publisher
/// sequence numbers seen, to check order and completeness.
async fn count(mut raw: RawClient, expected: usize) -> Vec<Vec<u32>> {
    let mut seen: Vec<Vec<u32>> = Vec::new();
    let mut count = 0;
    let mut acks = BytesMut::new();
    tokio::time::timeout(WAIT * 3, async {
        while count < expected {
            match raw.recv_v4().await {
                Some(Packet::Publish(p)) => {
                    let publisher = p.payload[0] as usize;
                    let seq = u32::from_be_bytes([
                        p.payload[1],
                        p.payload[2],
                        p.payload[3],
                        p.payload[4],
                    ]);
                    if seen.len() <= publisher {
                        seen.resize(publisher + 1, Vec::new());
                    }
                    seen[publisher].push(seq);
                    count += 1;
                    if p.qos == QoS::AtLeastOnce {
                        Packet::PubAck(PubAck::new(p.pkid))
                            .write(&mut acks, usize::MAX)
                            .expect("encode");
                    }
                    if !acks.is_empty() && raw.buf.is_empty() {
                        raw.stream.write_all(&acks).await.expect("ack");
                        acks.clear();
                    }
                }
                Some(_) => {}
                None => panic!("subscriber connection closed after {count} messages"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {count} of {expected} messages arrived"));
    seen
}

/// Publishes `n` messages as fast as the socket takes them (QoS 1 with a window of 50).
async fn publish_burst(
    addr: SocketAddr,
    id: String,
    publisher: u8,
    topic: String,
    qos: QoS,
    n: u32,
) {
    let mut raw = raw_session(addr, &id).await;
    let mut out = BytesMut::new();
    let mut unacked = 0u32;
    let mut scratch = BytesMut::new();
    for seq in 0..n {
        let mut payload = vec![publisher];
        payload.extend_from_slice(&seq.to_be_bytes());
        let mut p = Publish::new(topic.as_str(), qos, payload);
        if qos == QoS::AtLeastOnce {
            p.pkid = (seq % 60_000 + 1) as u16;
            unacked += 1;
        }
        Packet::Publish(p)
            .write(&mut out, usize::MAX)
            .expect("encode");
        if out.len() > 16 * 1024 || seq + 1 == n || unacked >= 50 {
            raw.stream.write_all(&out).await.expect("publish");
            out.clear();
        }
        while unacked >= 50 || (seq + 1 == n && unacked > 0) {
            let n = raw.stream.read_buf(&mut scratch).await.expect("read acks");
            assert!(n > 0, "publisher connection closed");
            while let Ok(packet) = Packet::read(&mut scratch, usize::MAX) {
                if matches!(packet, Packet::PubAck(_)) {
                    unacked -= 1;
                }
            }
        }
    }
}

fn assert_complete_and_ordered(seen: &[Vec<u32>], publishers: usize, n: u32) {
    assert_eq!(seen.len(), publishers);
    for (publisher, seqs) in seen.iter().enumerate() {
        let expected: Vec<u32> = (0..n).collect();
        assert_eq!(
            seqs, &expected,
            "publisher {publisher}: messages lost, duplicated or reordered"
        );
    }
}

/// Four publishers each send `n` numbered messages at `qos` on `<prefix>/t` as fast as they can;
/// one subscriber to `<prefix>/#` must see every message, each publisher's in order.
async fn fan_in_burst(prefix: &str, qos: QoS, n: u32) {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let publishers = 4usize;
    let sub = subscriber(addr, &format!("{prefix}-sub"), &format!("{prefix}/#"), qos).await;
    let counting = tokio::spawn(count(sub, publishers * n as usize));
    let mut tasks = Vec::new();
    for p in 0..publishers {
        tasks.push(tokio::spawn(publish_burst(
            addr,
            format!("{prefix}-pub{p}"),
            p as u8,
            format!("{prefix}/t"),
            qos,
            n,
        )));
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    let seen = counting.await.expect("subscriber");
    assert_complete_and_ordered(&seen, publishers, n);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_fan_in_burst_arrives_complete_and_in_order() {
    fan_in_burst("burst0", QoS::AtMostOnce, 20_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_fan_in_burst_arrives_complete_and_in_order() {
    fan_in_burst("burst1", QoS::AtLeastOnce, 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_fan_out_burst_reaches_every_subscriber() {
    let broker = TestBroker::start().await;
    let addr = broker.tcp();
    let (subscribers, n) = (10usize, 5_000u32);
    let mut counting = Vec::new();
    for s in 0..subscribers {
        let sub = subscriber(addr, &format!("fanout-sub{s}"), "fanout/t", QoS::AtMostOnce).await;
        counting.push(tokio::spawn(count(sub, n as usize)));
    }
    publish_burst(
        addr,
        "fanout-pub".into(),
        0,
        "fanout/t".into(),
        QoS::AtMostOnce,
        n,
    )
    .await;
    for c in counting {
        let seen = c.await.expect("subscriber");
        assert_complete_and_ordered(&seen, 1, n);
    }
    broker.stop().await;
}
