//! Acknowledgements that wait for Redis replicas (`cluster.redis_replication`): a real
//! `redis-server` primary with a real replica. The relay writer's barrier (what a QoS 1/2
//! acknowledgement waits for) resolves once the replica holds the writes before it; with the
//! replica stopped it resolves after the wait's timeout, counted as short.

mod common;
mod common_redis;

use common_redis::{eventually, RedisServer};
use starling_broker::auth::Auth;
use starling_broker::broker::Broker;
use starling_broker::cluster::relay::ClusterLink;
use starling_broker::store::{RedisStore, RedisStoreConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The wait's timeout when the replica is stopped (the barrier must take at least this long).
const SHORT_TIMEOUT: Duration = Duration::from_millis(400);
/// The wait's timeout when the replica runs: long enough that a loaded machine's replica
/// confirms in time (the wait ends as soon as it does).
const AMPLE_TIMEOUT: Duration = Duration::from_secs(10);

/// A primary and one replica in sync with it.
async fn primary_and_replica() -> (RedisServer, RedisServer) {
    let primary = RedisServer::start().await;
    let port = primary.port().to_string();
    let replica = RedisServer::start_with_args(&["--replicaof", "127.0.0.1", &port]).await;
    let mut con = primary.client().await;
    eventually("the replica syncs", || {
        let mut con = con.clone();
        async move {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut con)
                .await
                .ok()?;
            info.contains("state=online").then_some(())
        }
    })
    .await;
    let _: () = redis::cmd("PING")
        .query_async(&mut con)
        .await
        .expect("primary answers");
    (primary, replica)
}

/// A broker node whose acknowledgements wait for one replica, at most `timeout`.
async fn node(primary: &RedisServer, timeout: Duration) -> (Arc<Broker>, Arc<ClusterLink>) {
    let mut config = common::test_config();
    config.node_id = "node-a".to_string();
    config.cluster.redis_replication.wait_replicas = 1;
    config.cluster.redis_replication.wait_timeout_ms = timeout.as_millis() as u64;
    let auth = Auth::load(&config.auth).expect("auth");
    let store = RedisStore::connect(RedisStoreConfig::new(primary.target(), "node-a", 100))
        .await
        .expect("connect the store");
    let broker = Broker::new(config, auth, Arc::new(store));
    let link = ClusterLink::start(&primary.target(), "node-a", "starling:", &broker)
        .await
        .expect("start the relay link");
    broker.attach_cluster(link.clone());
    (broker, link)
}

#[tokio::test]
async fn a_barrier_resolves_once_the_replica_holds_what_was_written_before_it() {
    let (primary, replica) = primary_and_replica().await;
    let (broker, link) = node(&primary, AMPLE_TIMEOUT).await;
    // Written on another connection before the barrier, as the store writes a copy queued for
    // an offline session while a publish is routed.
    let mut writer = primary.client().await;
    let _: () = redis::cmd("SET")
        .arg("written-before")
        .arg("1")
        .query_async(&mut writer)
        .await
        .expect("SET");
    tokio::time::timeout(AMPLE_TIMEOUT + Duration::from_secs(5), link.barrier())
        .await
        .expect("the barrier resolves")
        .expect("the writer answers");
    assert!(
        broker.metrics.replication_waits.get() >= 1,
        "no wait was made"
    );
    assert_eq!(
        broker.metrics.replication_waits_short.get(),
        0,
        "the replica did not confirm within {AMPLE_TIMEOUT:?}"
    );
    let mut on_replica = replica.client().await;
    let copied: Option<String> = redis::cmd("GET")
        .arg("written-before")
        .query_async(&mut on_replica)
        .await
        .expect("GET on the replica");
    assert_eq!(
        copied.as_deref(),
        Some("1"),
        "the replica must hold it by then"
    );
}

#[tokio::test]
async fn with_the_replica_stopped_a_barrier_waits_the_timeout_and_is_counted_short() {
    let (primary, replica) = primary_and_replica().await;
    let (broker, link) = node(&primary, SHORT_TIMEOUT).await;
    replica.pause();
    let started = Instant::now();
    let resolved = tokio::time::timeout(Duration::from_secs(5), link.barrier()).await;
    let took = started.elapsed();
    replica.resume();
    resolved
        .expect("the barrier resolves after the wait's timeout")
        .expect("the writer answers");
    assert!(
        took >= SHORT_TIMEOUT,
        "the barrier resolved after {took:?}, before the replica confirmed or the wait timed out"
    );
    assert!(broker.metrics.replication_waits_short.get() >= 1);
}
