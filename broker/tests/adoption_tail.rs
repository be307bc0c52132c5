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
        received_at: None,
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

/// The fields of the entry the relay appends to send `payload` on to client `client` (read
/// from a scratch node's inbox, where the relay wrote it).
async fn direct_entry(
    link: &ClusterLink,
    con: &mut redis::aio::MultiplexedConnection,
    client: &str,
    payload: &str,
) -> Vec<(String, Vec<u8>)> {
    link.send_direct("node-scratch", client, &copy(payload));
    link.barrier().await.expect("the relay writer confirms");
    let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
        .arg("starling:v1:inbox:node-scratch")
        .arg("-")
        .arg("+")
        .query_async(con)
        .await
        .expect("XRANGE");
    let (_, fields) = entries
        .into_iter()
        .find(|(_, fields)| {
            fields
                .iter()
                .any(|(name, value)| name == "c" && value == client.as_bytes())
        })
        .expect("the relay's entry");
    fields
}

/// The ids and client ids of the direct messages in `node`'s inbox.
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

/// A broker node `node` in cluster mode on `server` (no gossip, no listener).
async fn cluster_node(server: &RedisServer, node: &str) -> (Arc<Broker>, Arc<ClusterLink>) {
    let mut config = common::test_config();
    config.node_id = node.to_string();
    let auth = Auth::load(&config.auth).expect("auth");
    let store = RedisStore::connect(RedisStoreConfig::new(server.target(), node, 100))
        .await
        .expect("the node's store");
    let broker = Broker::new(config, auth, Arc::new(store));
    let link = ClusterLink::start(&server.target(), node, "starling:", &broker)
        .await
        .expect("start the relay link");
    broker.attach_cluster(link.clone());
    (broker, link)
}

/// Registers node X under RUN, as its start or its watcher does, with a return marker at
/// `returned_ms` when given (one atomic step).
async fn register_node_x(con: &mut redis::aio::MultiplexedConnection, returned_ms: Option<u64>) {
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("SADD")
        .arg("starling:v1:nodes")
        .arg("node-x")
        .cmd("SET")
        .arg("starling:v1:node:node-x:run")
        .arg(RUN);
    if let Some(ms) = returned_ms {
        pipe.cmd("SET")
            .arg("starling:v1:node:node-x:returned")
            .arg(format!("{RUN}/{ms}"));
    }
    let _: () = pipe.query_async(con).await.expect("register node x");
}

/// The value of `key`, if it has one.
async fn get(con: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query_async(con)
        .await
        .expect("GET")
}

#[tokio::test]
async fn a_node_that_finds_itself_declared_dead_registers_again_with_where_it_came_back() {
    let server = RedisServer::start().await;
    let mut con = server.client().await;
    let (broker, link) = cluster_node(&server, "node-n").await;
    assert_eq!(
        get(&mut con, "starling:v1:node:node-n:returned").await,
        None
    );

    // An adopter removes N's registration, as after adopting its sessions.
    let removed_at = redis_ms(&mut con).await;
    link.remove_node_entries("node-n", Some(link.run()));
    let marker = eventually("N registered again, with its return marker", || {
        let mut con = con.clone();
        async move { get(&mut con, "starling:v1:node:node-n:returned").await }
    })
    .await;
    let (run, at_ms) = marker.split_once('/').expect("<run>/<ms>");
    assert_eq!(run, link.run().to_string());
    let at_ms: u64 = at_ms.parse().expect("ms");
    assert!(
        at_ms >= removed_at,
        "{at_ms} is before the removal at {removed_at}"
    );
    assert_eq!(
        get(&mut con, "starling:v1:node:node-n:run").await,
        Some(link.run().to_string())
    );
    assert_eq!(broker.metrics.declared_dead.get(), 1);
}

#[tokio::test]
async fn an_adoption_removes_a_return_marker_left_from_an_earlier_false_alarm() {
    let server = RedisServer::start().await;
    let mut con = server.client().await;
    let (broker, _link) = cluster_node(&server, "node-a").await;
    // X came back once under RUN (its marker stays while it runs), then departed again.
    register_node_x(&mut con, Some(1000)).await;
    broker
        .adopt_sessions_of("node-x", Some(RUN), Leftovers::Departed)
        .await;
    // Else the tail, still seeing X registered under RUN, would take the old marker for a
    // return and stop at once.
    assert_eq!(
        get(&mut con, "starling:v1:node:node-x:returned").await,
        None
    );
}

#[tokio::test]
async fn a_node_back_under_the_same_run_keeps_what_arrived_after_its_return() {
    let server = RedisServer::start().await;
    let mut con = server.client().await;
    let store = |node: &str| RedisStore::connect(RedisStoreConfig::new(server.target(), node, 100));
    let (broker, link) = cluster_node(&server, "node-a").await;

    // Node X, registered under RUN, holds two parked sessions: one gets what X's inbox holds
    // from before X's return, the other what arrives after it.
    register_node_x(&mut con, None).await;
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

    // X, running after all, comes back (its watcher registers again with its return marker):
    // from then on its inbox is its own.
    let returned_ms = redis_ms(&mut con).await;
    register_node_x(&mut con, Some(returned_ms)).await;

    // Its inbox holds a message for "before" appended in the millisecond before the return,
    // and one for "after" appended at it (the relay's own entries, given those ids).
    let before = direct_entry(&link, &mut con, "before", "relayed before the return").await;
    let after = direct_entry(&link, &mut con, "after", "relayed after the return").await;
    for (id, fields) in [
        (format!("{}-0", returned_ms - 1), before),
        (format!("{returned_ms}-0"), after),
    ] {
        let mut xadd = redis::cmd("XADD");
        xadd.arg("starling:v1:inbox:node-x").arg(&id);
        for (name, value) in fields {
            xadd.arg(name).arg(value);
        }
        let _: String = xadd.query_async(&mut con).await.expect("XADD");
    }

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
