//! The adopter's reading of a departed node's inbox (its tail) when that node comes back under
//! the same run, as it does after gossip declared it dead while it was only stalled: against a
//! real `redis-server`, with a broker node in cluster mode (its relay link attached).
//!
//! What was appended before the node's return is the adopter's to deliver again (marked DUP);
//! what was appended from the return on is the node's own, read by it without DUP. Were the
//! adopter to deliver that too, its DUP copy could reach the client before the node's plain
//! one: a second copy without DUP.

mod common;
mod common_redis;

use common_redis::{eventually, RedisServer};
use starling_broker::auth::Auth;
use starling_broker::broker::Broker;
use starling_broker::cluster::recovery::Leftovers;
use starling_broker::cluster::relay::ClusterLink;
use starling_broker::message::{ClientId, Message, MessageProperties};
use starling_broker::protocol::QoS;
use starling_broker::store::{
    Detached, QueuedMessage, RedisStore, RedisStoreConfig, SessionClaim, Store, StoredSession,
};
use std::sync::Arc;

/// The departed node's run, as it registered it.
const RUN: u64 = 7;

/// A QoS 1 copy carrying `payload`.
fn copy(payload: &str) -> QueuedMessage {
    let message = Message {
        topic: "t".into(),
        payload: bytes::Bytes::from(payload.to_string()),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: MessageProperties::default(),
        expires_at: None,
        publisher: None,
    };
    QueuedMessage::new(Arc::new(message), QoS::AtLeastOnce, false, vec![])
}

/// A stream entry as `XRANGE` returns it: its id and its fields.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// Now on Redis's clock (ms).
async fn redis_ms(con: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(con).await.expect("TIME");
    seconds * 1000 + micros / 1000
}

/// The ids and payloads of the direct messages in `node`'s inbox.
async fn inbox(con: &mut redis::aio::MultiplexedConnection, node: &str) -> Vec<(String, String)> {
    let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
        .arg(format!("starling:v1:inbox:{node}"))
        .arg("-")
        .arg("+")
        .query_async(con)
        .await
        .expect("XRANGE");
    entries
        .into_iter()
        .map(|(id, fields)| {
            let client = fields
                .iter()
                .find(|(name, _)| name == "c")
                .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
                .unwrap_or_default();
            (id, client)
        })
        .collect()
}

#[tokio::test]
async fn a_node_back_under_the_same_run_keeps_what_arrived_after_its_return() {
    let server = RedisServer::start().await;
    let mut con = server.client().await;
    let mut config = common::test_config();
    config.node_id = "node-a".to_string();
    let auth = Auth::load(&config.auth).expect("auth");
    let store = |node: &str| RedisStore::connect(RedisStoreConfig::new(server.target(), node, 100));
    let broker = Broker::new(
        config,
        auth,
        Arc::new(store("node-a").await.expect("node a's store")),
    );
    let link = ClusterLink::start(&server.target(), "node-a", "starling:", &broker)
        .await
        .expect("start the relay link");
    broker.attach_cluster(link.clone());

    // Node X, registered under RUN, holds two parked sessions: one gets what X's inbox holds
    // from before X's return, the other what arrives after it.
    let _: () = redis::pipe()
        .cmd("SADD")
        .arg("starling:v1:nodes")
        .arg("node-x")
        .cmd("SET")
        .arg("starling:v1:node:node-x:run")
        .arg(RUN)
        .query_async(&mut con)
        .await
        .expect("register node x");
    let node_x = store("node-x").await.expect("node x's store");
    let claim = SessionClaim {
        expiry_secs: 300,
        clean_start: false,
        will: None,
        journal: None,
    };
    for id in ["before", "after"] {
        let id = ClientId::from(id);
        let attached = node_x.attach_session(&id, &claim).await.expect("attach");
        let parked = StoredSession {
            expiry_secs: 300,
            ..StoredSession::default()
        };
        let detached = node_x
            .detach_session(&id, attached.generation, parked)
            .await
            .expect("detach");
        assert_eq!(detached, Detached::Stored);
    }

    // Gossip declared X dead: A adopts its sessions, removes its registration and tails its
    // inbox.
    broker
        .adopt_sessions_of("node-x", Some(RUN), Leftovers::Departed)
        .await;
    link.remove_node_entries("node-x", Some(RUN));
    eventually("node x's registration removed", || {
        let mut con = con.clone();
        async move {
            let run: Option<u64> = redis::cmd("GET")
                .arg("starling:v1:node:node-x:run")
                .query_async(&mut con)
                .await
                .expect("GET run");
            run.is_none().then_some(())
        }
    })
    .await;
    assert_eq!(
        broker.metrics.cluster_recoveries.get(),
        1,
        "A tails X's inbox"
    );

    // A message for "before" reaches X's inbox; X, running after all, comes back in the
    // millisecond after it (its watcher registers again with its return marker).
    link.send_direct("node-x", "before", &copy("relayed before the return"));
    link.barrier().await.expect("the relay writer confirms");
    let (before_id, _) = inbox(&mut con, "node-x")
        .await
        .pop()
        .expect("the entry for \"before\"");
    let before_ms: u64 = before_id
        .split('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .expect("a stream id");
    let returned_ms = before_ms + 1;
    let _: () = redis::pipe()
        .atomic()
        .cmd("SADD")
        .arg("starling:v1:nodes")
        .arg("node-x")
        .cmd("SET")
        .arg("starling:v1:node:node-x:run")
        .arg(RUN)
        .cmd("SET")
        .arg("starling:v1:node:node-x:returned")
        .arg(format!("{RUN}/{returned_ms}"))
        .query_async(&mut con)
        .await
        .expect("node x registers again");

    // Then one for "after", appended once Redis's clock has passed the return.
    eventually("Redis's clock past the return", || {
        let mut con = con.clone();
        async move { (redis_ms(&mut con).await >= returned_ms).then_some(()) }
    })
    .await;
    link.send_direct("node-x", "after", &copy("relayed after the return"));
    link.barrier().await.expect("the relay writer confirms");

    // The tail ends once what came before the return has settled.
    eventually("A's tail of X's inbox to end", || {
        let recoveries = broker.metrics.cluster_recoveries.get();
        async move { (recoveries == 0).then_some(()) }
    })
    .await;
    assert_eq!(
        broker.metrics.cluster_recovered_copies.get(),
        1,
        "A delivered exactly one copy again"
    );

    // Both entries stay for X, which reads its inbox on from where it was.
    let left: Vec<String> = inbox(&mut con, "node-x")
        .await
        .into_iter()
        .map(|(_, client)| client)
        .collect();
    assert_eq!(left, ["before", "after"], "A deleted nothing X reads");

    // "before" got its copy again from A, marked DUP; "after" got nothing from A.
    let node_a = store("node-a").await.expect("node a's store");
    let queued = |id: &'static str| {
        let node_a = &node_a;
        let claim = &claim;
        async move {
            let taken = node_a
                .attach_session(&ClientId::from(id), claim)
                .await
                .expect("attach on A")
                .previous
                .expect("the adopted session");
            taken
                .queue
                .iter()
                .map(|q| {
                    (
                        String::from_utf8_lossy(&q.message.payload).into_owned(),
                        q.maybe_sent,
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        queued("before").await,
        [("relayed before the return".to_string(), true)]
    );
    let after = queued("after").await;
    assert!(
        after.is_empty(),
        "A delivered what X reads itself: {after:?}"
    );
}
