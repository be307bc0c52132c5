//! The probes of docs/redis-schema.md ("What Redis Cluster refuses, and what it lets through")
//! as tests against a real Redis Cluster (three primaries, one replica each, on loopback):
//! `CROSSSLOT`, the `#!lua` one-slot rule, `PUBLISH` broadcast, `WAIT` on the slot's primary,
//! and the failover times (a manual `CLUSTER FAILOVER`; a primary killed at
//! `cluster-node-timeout 2000`).

use anyhow::{bail, ensure, Context, Result};
use e2e::redis_cluster::{client, query, Connection, RedisCluster, REPLY_TIMEOUT};
use futures_util::StreamExt;
use redis::{cmd, Cmd, ServerError, Value};
use std::net::SocketAddr;
use std::time::Duration;

/// The `cluster-node-timeout` of every test here.
const NODE_TIMEOUT: Duration = Duration::from_millis(2000);

/// The longest a replica may take to be promoted after its primary was killed. The design's
/// target is 5 s, and every run measured met it: 3.26–4.81 s over 39 runs on a 2-core host
/// under a load average of 5–7 (docs/redis-schema.md). The assertion allows 6 s because the
/// worst case itself is close to 5 s: the primary is held failing 2 s after an unanswered
/// ping, which is sent up to 1 s after the last answer; the other primary's agreement arrives
/// by gossip (a few hundred ms); then the replica waits 0.5–1 s before its election; a loaded
/// host adds scheduling delays on top. The `FIGURE` line reports the time itself.
const KILL_FAILOVER_BOUND: Duration = Duration::from_secs(6);

/// Starts the cluster every test uses: three primaries with one replica each.
async fn cluster() -> Result<RedisCluster> {
    RedisCluster::start(3, 1, NODE_TIMEOUT).await
}

fn ok() -> Value {
    Value::Okay
}

/// `EVAL script numkeys keys…`.
fn eval(script: &str, keys: &[&str]) -> Cmd {
    let mut eval = cmd("EVAL");
    eval.arg(script).arg(keys.len()).arg(keys);
    eval
}

/// The server's error reply, or an error saying what `what` did instead of being refused.
fn refusal(reply: Value, what: &str) -> Result<ServerError> {
    match reply {
        Value::ServerError(error) => Ok(error),
        other => bail!("{what}: {other:?}"),
    }
}

/// `key` on the primary that serves it.
async fn connect_for(cluster: &RedisCluster, key: &str) -> Result<Connection> {
    let slot = cluster.slot_of(key).await?;
    Connection::connect(cluster.primary_for_slot(slot).await?).await
}

/// The replica of the primary serving `slot`.
async fn replica_for(cluster: &RedisCluster, slot: u16) -> Result<SocketAddr> {
    let replicas = cluster.replicas_for_slot(slot).await?;
    replicas
        .first()
        .copied()
        .with_context(|| format!("slot {slot} has no replica"))
}

/// Whether `addr` answers `ROLE` as `role` (`master` or `slave`).
async fn has_role(addr: SocketAddr, role: &str) -> Result<bool> {
    Ok(e2e::redis_cluster::role(addr).await? == role)
}

#[tokio::test]
async fn eval_refuses_keys_of_two_slots_and_runs_keys_of_one_tag() -> Result<()> {
    let cluster = cluster().await?;
    let (a, b) = ("a", "b");
    ensure!(cluster.slot_of(a).await? != cluster.slot_of(b).await?);
    let script = "redis.call('SET', KEYS[1], '1'); redis.call('SET', KEYS[2], '2'); return 'done'";
    let mut conn = connect_for(&cluster, a).await?;
    let reply = conn.reply(&eval(script, &[a, b])).await?;
    let error = refusal(reply, "two slots ran")?;
    ensure!(error.code() == "CROSSSLOT", "{error}");
    ensure!(
        conn.query::<i64>(cmd("EXISTS").arg(a)).await? == 0,
        "a was written"
    );

    let (x, y) = ("{b1}x", "{b1}y");
    ensure!(cluster.slot_of(x).await? == cluster.slot_of(y).await?);
    let mut conn = connect_for(&cluster, x).await?;
    let reply: String = conn.query(&eval(script, &[x, y])).await?;
    ensure!(reply == "done", "{reply:?}");
    ensure!(conn.query::<String>(cmd("GET").arg(y)).await? == "2");
    Ok(())
}

#[tokio::test]
async fn shebang_scripts_may_not_leave_their_declared_slot() -> Result<()> {
    let cluster = cluster().await?;
    // A declared key, and an undeclared key of another slot that the same primary serves:
    // what Redis then refuses is the slot, not a key the node does not have.
    let declared = "{p}src";
    let slot = cluster.slot_of(declared).await?;
    let primary = cluster.primary_for_slot(slot).await?;
    let map = cluster.slot_map().await?;
    let mut conn = Connection::connect(primary).await?;
    let mut other = None;
    for i in 0..10_000 {
        let name = format!("k{i}");
        let s: u16 = conn.query(cmd("CLUSTER").arg("KEYSLOT").arg(&name)).await?;
        if s != slot && map.iter().any(|r| r.contains(s) && r.primary == primary) {
            other = Some(name);
            break;
        }
    }
    let other = other.context("no key of another slot on the same primary")?;
    // The script writes the key whose name it read: an undeclared key.
    let body = "return redis.call('SET', redis.call('GET', KEYS[1]), 'v')";
    ensure!(conn.reply(cmd("SET").arg(declared).arg(&other)).await? == ok());

    let legacy = conn.reply(&eval(body, &[declared])).await?;
    ensure!(legacy == ok(), "a legacy script was refused: {legacy:?}");

    let shebang = format!("#!lua\n{body}");
    let refused = conn.reply(&eval(&shebang, &[declared])).await?;
    let error = refusal(refused, "#!lua left its slot")?;
    ensure!(
        error
            .details()
            .is_some_and(|text| text.contains("do not hash to the same slot")),
        "unexpected refusal {error}"
    );

    // Within the declared key's slot, a derived key name is fine.
    ensure!(conn.reply(cmd("SET").arg(declared).arg("{p}dst")).await? == ok());
    let same = conn.reply(&eval(&shebang, &[declared])).await?;
    ensure!(same == ok(), "#!lua within its slot was refused: {same:?}");
    ensure!(conn.query::<String>(cmd("GET").arg("{p}dst")).await? == "v");

    // allow-cross-slot-keys lets undeclared local keys through, but never two declared slots.
    let flagged = format!("#!lua flags=allow-cross-slot-keys\n{body}");
    ensure!(conn.reply(cmd("SET").arg(declared).arg(&other)).await? == ok());
    let reply = conn.reply(&eval(&flagged, &[declared])).await?;
    ensure!(
        reply == ok(),
        "allow-cross-slot-keys was refused: {reply:?}"
    );
    let two = "#!lua flags=allow-cross-slot-keys\nreturn 1";
    let reply = conn.reply(&eval(two, &[declared, &other])).await?;
    let error = refusal(reply, "two slots ran")?;
    ensure!(error.code() == "CROSSSLOT", "{error}");
    Ok(())
}

#[tokio::test]
async fn publish_on_one_primary_reaches_subscribers_on_every_node() -> Result<()> {
    let cluster = cluster().await?;
    let map = cluster.slot_map().await?;
    let (Some(first), Some(second), Some(third)) = (map.first(), map.get(1), map.get(2)) else {
        bail!("expected 3 slot ranges, got {map:?}");
    };
    let publisher = first.primary;
    let listeners = [
        second.primary,
        *third.replicas.first().context("no replica")?,
    ];
    let mut subscribers = Vec::new();
    for addr in listeners {
        let mut pubsub = tokio::time::timeout(REPLY_TIMEOUT, client(addr)?.get_async_pubsub())
            .await
            .with_context(|| format!("connecting to {addr}: timed out"))??;
        // Returns once the server has confirmed the subscription.
        tokio::time::timeout(REPLY_TIMEOUT, pubsub.subscribe("v2:entries"))
            .await
            .with_context(|| format!("SUBSCRIBE at {addr}: timed out"))??;
        subscribers.push((addr, pubsub));
    }
    let reply: i64 = query(publisher, cmd("PUBLISH").arg("v2:entries").arg("hello")).await?;
    // The reply counts the publishing node's own subscribers only.
    ensure!(reply == 0, "PUBLISH answered {reply:?}");
    for (addr, mut pubsub) in subscribers {
        let message = tokio::time::timeout(Duration::from_secs(5), pubsub.on_message().next())
            .await
            .with_context(|| format!("no message at {addr} within 5 s"))?
            .with_context(|| format!("{addr} closed the subscription"))?;
        let (pattern, channel, payload) = (
            message.from_pattern(),
            message.get_channel_name(),
            message.get_payload::<String>()?,
        );
        ensure!(
            !pattern && channel == "v2:entries" && payload == "hello",
            "{addr} got {message:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn wait_on_the_slots_primary_counts_its_replica() -> Result<()> {
    let mut cluster = cluster().await?;
    let key = "{b7}replicated:n1";
    let slot = cluster.slot_of(key).await?;
    let primary = cluster.primary_for_slot(slot).await?;
    let replica = replica_for(&cluster, slot).await?;
    let mut conn = Connection::connect(primary).await?;
    let wait = |timeout_ms: u64| {
        let mut wait = cmd("WAIT");
        wait.arg(1).arg(timeout_ms);
        wait
    };
    ensure!(conn.query::<i64>(cmd("INCR").arg(key)).await? == 1);
    let acked: i64 = conn.query(&wait(1000)).await?;
    ensure!(acked == 1, "WAIT answered {acked}");

    let reply = e2e::redis_cluster::reply(replica, &wait(100)).await?;
    let error = refusal(reply, "WAIT on a replica")?;
    ensure!(
        error.details().is_some_and(|text| text.contains("replica")),
        "{error}"
    );

    // A replica that does not answer (SIGSTOP, shorter than the node timeout) is not counted.
    cluster.pause(replica)?;
    ensure!(conn.query::<i64>(cmd("INCR").arg(key)).await? == 2);
    let short = conn.query::<i64>(&wait(300)).await;
    cluster.resume(replica)?;
    ensure!(short? == 0, "WAIT counted a paused replica");
    let acked: i64 = conn.query(&wait(1500)).await?;
    ensure!(acked == 1, "WAIT after resuming answered {acked}");
    Ok(())
}

#[tokio::test]
async fn manual_failover_promotes_the_replica_at_once() -> Result<()> {
    let cluster = cluster().await?;
    let key = "{b3}session:c1";
    let slot = cluster.slot_of(key).await?;
    let primary = cluster.primary_for_slot(slot).await?;
    let replica = replica_for(&cluster, slot).await?;
    let mut conn = Connection::connect(primary).await?;
    ensure!(conn.reply(cmd("SET").arg(key).arg("kept")).await? == ok());
    let at = cluster.failover(replica).await?;
    let (new, elapsed) = cluster
        .wait_for_primary_change(slot, primary, at, Duration::from_secs(10))
        .await?;
    println!(
        "FIGURE redis cluster manual failover (CLUSTER FAILOVER): {} ms",
        elapsed.as_millis()
    );
    ensure!(new == replica, "{new} took over, not the replica {replica}");
    ensure!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    ensure!(query::<String>(new, cmd("GET").arg(key)).await? == "kept");
    cluster.wait_until_healthy(Duration::from_secs(10)).await?;
    ensure!(has_role(primary, "slave").await?, "{primary} is no replica");
    Ok(())
}

#[tokio::test]
async fn killed_primary_is_replaced_by_its_replica_within_bound() -> Result<()> {
    let mut cluster = cluster().await?;
    let key = "{b5}session:c2";
    let slot = cluster.slot_of(key).await?;
    let primary = cluster.primary_for_slot(slot).await?;
    let replica = replica_for(&cluster, slot).await?;
    let mut conn = Connection::connect(primary).await?;
    ensure!(conn.reply(cmd("SET").arg(key).arg("kept")).await? == ok());
    ensure!(conn.query::<i64>(cmd("WAIT").arg(1).arg(1000)).await? == 1);

    let at = cluster.kill(primary).await?;
    let (new, elapsed) = cluster
        .wait_for_primary_change(slot, primary, at, Duration::from_secs(30))
        .await?;
    println!(
        "FIGURE redis cluster failover after kill -9 (cluster-node-timeout {} ms): {:.2} s",
        NODE_TIMEOUT.as_millis(),
        elapsed.as_secs_f64()
    );
    ensure!(new == replica, "{new} took over, not the replica {replica}");
    ensure!(
        elapsed < KILL_FAILOVER_BOUND,
        "promotion took {elapsed:?}, bound {KILL_FAILOVER_BOUND:?}"
    );
    ensure!(query::<String>(new, cmd("GET").arg(key)).await? == "kept");

    // Started again with its nodes.conf, the old primary rejoins as the new one's replica.
    cluster.restart(primary).await?;
    cluster.wait_until_healthy(Duration::from_secs(30)).await?;
    ensure!(has_role(primary, "slave").await?, "{primary} is no replica");
    ensure!(cluster.replicas_for_slot(slot).await? == [primary]);
    Ok(())
}
