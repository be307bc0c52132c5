//! MQTT 5 PUBACK/PUBREC reasons in cluster mode: two broker nodes on one real `redis-server`
//! (no gossip; they learn each other's subscriptions from the entry announcements). A publish
//! whose only subscriber is on the other node is relayed there and answered 0x00 Success; one
//! that no node subscribes to is answered 0x10 No matching subscribers.

mod common;
mod common_redis;
mod mqtt5_support;

use common::v5;
use common_redis::RedisServer;
use mqtt5_support::{publish_qos1, subscribe, v5_client};
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PubRecReason};
use rumqttc::v5::mqttbytes::QoS;
use starling_broker::auth::Auth;
use starling_broker::broker::Broker;
use starling_broker::cluster::relay::ClusterLink;
use starling_broker::store::{RedisStore, RedisStoreConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A broker node `node` in cluster mode on `server`, serving plain TCP on a free loopback port.
async fn cluster_node(server: &RedisServer, node: &str) -> (SocketAddr, Arc<ClusterLink>) {
    let mut config = common::test_config();
    config.node_id = node.to_string();
    let auth = Auth::load(&config.auth).expect("auth");
    let store = RedisStore::connect(RedisStoreConfig::new(server.target(), node, 100))
        .await
        .expect("connect the store");
    let broker = Broker::new(config, auth, Arc::new(store));
    let link = ClusterLink::start(&server.target(), node, "starling:", &broker)
        .await
        .expect("start the relay link");
    broker.attach_cluster(link.clone());
    (common::serve_tcp(broker).await, link)
}

/// Publishes QoS 1 probes to `topic` until the publisher's node relays them somewhere (PUBACK
/// Success): the subscriber's node has announced its entry. Bounded by [`common::WAIT`].
async fn wait_until_routed(publisher: &mut v5::Client, topic: &str) {
    tokio::time::timeout(common::WAIT, async {
        loop {
            if publish_qos1(publisher, topic, "probe").await == PubAckReason::Success {
                return;
            }
            // Retry interval of the bounded poll; an announcement takes milliseconds.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a publish whose subscriber is on the other node was never answered Success");
}

/// Publishes at QoS 2 and returns the PUBREC reason (the client completes the flow itself).
async fn publish_qos2(client: &mut v5::Client, topic: &str, payload: &str) -> PubRecReason {
    client
        .client
        .publish(topic, QoS::ExactlyOnce, false, payload.to_string())
        .await
        .expect("publish");
    client
        .expect(|p| match p {
            Packet::PubRec(r) => Some(r.reason),
            _ => None,
        })
        .await
}

/// The next message `client` receives that is not a probe, as (topic, payload).
async fn next_message(client: &mut v5::Client) -> (String, String) {
    client
        .expect(|p| match p {
            Packet::Publish(p) if p.payload.as_ref() != b"probe" => Some((
                String::from_utf8_lossy(&p.topic).into_owned(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            )),
            _ => None,
        })
        .await
}

#[tokio::test]
async fn a_publish_relayed_to_a_subscriber_on_another_node_is_acknowledged_success() {
    let server = RedisServer::start().await;
    let (addr_a, _link_a) = cluster_node(&server, "node-a").await;
    let (addr_b, _link_b) = cluster_node(&server, "node-b").await;

    let (mut publisher, _) = v5_client(addr_a, "publisher", |_| {}).await;
    // Nobody anywhere subscribes yet.
    assert_eq!(
        publish_qos1(&mut publisher, "cross/t", "early").await,
        PubAckReason::NoMatchingSubscribers
    );

    // The only subscriber is on node B.
    let (mut subscriber, _) = v5_client(addr_b, "subscriber", |_| {}).await;
    subscribe(&mut subscriber, "cross/#", QoS::AtLeastOnce).await;
    wait_until_routed(&mut publisher, "cross/t").await;

    assert_eq!(
        publish_qos1(&mut publisher, "cross/t", "one").await,
        PubAckReason::Success
    );
    assert_eq!(
        next_message(&mut subscriber).await,
        ("cross/t".to_string(), "one".to_string())
    );
    assert_eq!(
        publish_qos2(&mut publisher, "cross/t", "two").await,
        PubRecReason::Success
    );
    assert_eq!(
        next_message(&mut subscriber).await,
        ("cross/t".to_string(), "two".to_string())
    );

    // A topic no node subscribes to is still answered 0x10, at QoS 1 and at QoS 2.
    assert_eq!(
        publish_qos1(&mut publisher, "elsewhere/t", "none").await,
        PubAckReason::NoMatchingSubscribers
    );
    assert_eq!(
        publish_qos2(&mut publisher, "elsewhere/t", "none").await,
        PubRecReason::NoMatchingSubscribers
    );
}

#[tokio::test]
async fn a_publish_served_by_a_share_group_on_another_node_is_acknowledged_success() {
    let server = RedisServer::start().await;
    let (addr_a, _link_a) = cluster_node(&server, "node-a").await;
    let (addr_b, _link_b) = cluster_node(&server, "node-b").await;

    // The group's only member is on node B.
    let (mut member, _) = v5_client(addr_b, "member", |_| {}).await;
    subscribe(&mut member, "$share/g/jobs/#", QoS::AtLeastOnce).await;
    let (mut publisher, _) = v5_client(addr_a, "publisher", |_| {}).await;
    wait_until_routed(&mut publisher, "jobs/1").await;

    assert_eq!(
        publish_qos1(&mut publisher, "jobs/1", "job").await,
        PubAckReason::Success
    );
    assert_eq!(
        next_message(&mut member).await,
        ("jobs/1".to_string(), "job".to_string())
    );
}
