//! The local-cluster harness itself: real redis-server, broker processes and HAProxy.
//! (Cluster behaviour across nodes is tested once cluster mode lands; see docs/cluster.md.)

use e2e::{BrokerNode, Haproxy, RedisServer};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

async fn connected(addr: SocketAddr, id: &str) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    tokio::time::timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("{id}: {e}"),
            }
        }
    })
    .await
    .expect("CONNACK in time");
    (client, eventloop)
}

#[tokio::test]
async fn haproxy_spreads_connections_over_three_nodes() {
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(
            BrokerNode::start(&format!("node-{i}"), &[])
                .await
                .expect("node starts"),
        );
    }
    let backends: Vec<SocketAddr> = nodes.iter().map(|n| n.mqtt).collect();
    let lb = Haproxy::start(&backends).await.expect("haproxy starts");

    let mut clients = Vec::new();
    for i in 0..6 {
        clients.push(connected(lb.addr, &format!("rr-{i}")).await);
    }
    let mut held = Vec::new();
    for node in &nodes {
        held.push(node.metric("starling_connections").await.expect("metric"));
    }
    // HAProxy's round robin decides the exact split (its readiness probe takes a turn too); what
    // matters here is that every node serves clients through the balancer.
    assert_eq!(
        held.iter().sum::<f64>(),
        6.0,
        "connections per node: {held:?}"
    );
    assert!(
        held.iter().all(|&n| n >= 1.0),
        "connections per node: {held:?}"
    );

    // Each connection is served end to end through the balancer.
    let (client, mut eventloop) = clients.pop().expect("a client");
    client
        .subscribe("lb/echo", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    client
        .publish("lb/echo", QoS::AtLeastOnce, false, "hi")
        .await
        .expect("publish");
    let echoed = tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = eventloop.poll().await.expect("poll") {
                return p;
            }
        }
    })
    .await
    .expect("echo in time");
    assert_eq!(&echoed.payload[..], b"hi");
}

#[tokio::test]
async fn redis_server_starts_and_answers() {
    let redis = RedisServer::start().await.expect("redis starts");
    e2e::redis_ping(redis.addr).await.expect("PING");
    assert!(redis.url().starts_with("redis://127.0.0.1:"));
}
