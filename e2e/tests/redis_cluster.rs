//! The probes of docs/redis-schema.md ("What Redis Cluster refuses, and what it lets through")
//! as tests against a real Redis Cluster (three primaries, one replica each, on loopback):
//! `CROSSSLOT`, the `#!lua` one-slot rule, `PUBLISH` broadcast, `WAIT` on the slot's primary,
//! and the failover times (a manual `CLUSTER FAILOVER`; a primary killed at
//! `cluster-node-timeout 2000`).

use anyhow::{ensure, Context, Result};
use e2e::redis_cluster::{command, Connection, RedisCluster, Reply};
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

fn ok() -> Reply {
    Reply::Status("OK".into())
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
    let reply = command(addr, &["ROLE"]).await?;
    let first = reply.array()?.first().context("empty ROLE reply")?.text()?;
    Ok(first == role)
}

#[tokio::test]
async fn eval_refuses_keys_of_two_slots_and_runs_keys_of_one_tag() -> Result<()> {
    let cluster = cluster().await?;
    let (a, b) = ("a", "b");
    ensure!(cluster.slot_of(a).await? != cluster.slot_of(b).await?);
    let script = "redis.call('SET', KEYS[1], '1'); redis.call('SET', KEYS[2], '2'); return 'done'";
    let mut conn = connect_for(&cluster, a).await?;
    let reply = conn.command(&["EVAL", script, "2", a, b]).await?;
    let error = reply.error().context(format!("two slots ran: {reply:?}"))?;
    ensure!(error.starts_with("CROSSSLOT"), "{error}");
    ensure!(
        conn.command(&["EXISTS", a]).await?.int()? == 0,
        "a was written"
    );

    let (x, y) = ("{b1}x", "{b1}y");
    ensure!(cluster.slot_of(x).await? == cluster.slot_of(y).await?);
    let mut conn = connect_for(&cluster, x).await?;
    let reply = conn.command(&["EVAL", script, "2", x, y]).await?;
    ensure!(reply.text()? == "done", "{reply:?}");
    ensure!(conn.command(&["GET", y]).await?.text()? == "2");
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
        let s = u16::try_from(conn.command(&["CLUSTER", "KEYSLOT", &name]).await?.int()?)?;
        if s != slot && map.iter().any(|r| r.contains(s) && r.primary == primary) {
            other = Some(name);
            break;
        }
    }
    let other = other.context("no key of another slot on the same primary")?;
    // The script writes the key whose name it read: an undeclared key.
    let body = "return redis.call('SET', redis.call('GET', KEYS[1]), 'v')";
    ensure!(conn.command(&["SET", declared, &other]).await? == ok());

    let legacy = conn.command(&["EVAL", body, "1", declared]).await?;
    ensure!(legacy == ok(), "a legacy script was refused: {legacy:?}");

    let shebang = format!("#!lua\n{body}");
    let refused = conn.command(&["EVAL", &shebang, "1", declared]).await?;
    let error = refused
        .error()
        .context(format!("#!lua left its slot: {refused:?}"))?;
    ensure!(
        error.contains("do not hash to the same slot"),
        "unexpected refusal {error}"
    );

    // Within the declared key's slot, a derived key name is fine.
    ensure!(conn.command(&["SET", declared, "{p}dst"]).await? == ok());
    let same = conn.command(&["EVAL", &shebang, "1", declared]).await?;
    ensure!(same == ok(), "#!lua within its slot was refused: {same:?}");
    ensure!(conn.command(&["GET", "{p}dst"]).await?.text()? == "v");

    // allow-cross-slot-keys lets undeclared local keys through, but never two declared slots.
    let flagged = format!("#!lua flags=allow-cross-slot-keys\n{body}");
    ensure!(conn.command(&["SET", declared, &other]).await? == ok());
    let reply = conn.command(&["EVAL", &flagged, "1", declared]).await?;
    ensure!(
        reply == ok(),
        "allow-cross-slot-keys was refused: {reply:?}"
    );
    let two = "#!lua flags=allow-cross-slot-keys\nreturn 1";
    let reply = conn.command(&["EVAL", two, "2", declared, &other]).await?;
    let error = reply.error().context(format!("two slots ran: {reply:?}"))?;
    ensure!(error.starts_with("CROSSSLOT"), "{error}");
    Ok(())
}

#[tokio::test]
async fn publish_on_one_primary_reaches_subscribers_on_every_node() -> Result<()> {
    let cluster = cluster().await?;
    let map = cluster.slot_map().await?;
    let (Some(first), Some(second), Some(third)) = (map.first(), map.get(1), map.get(2)) else {
        anyhow::bail!("expected 3 slot ranges, got {map:?}");
    };
    let publisher = first.primary;
    let listeners = [
        second.primary,
        *third.replicas.first().context("no replica")?,
    ];
    let mut subscribers = Vec::new();
    for addr in listeners {
        let mut conn = Connection::connect(addr).await?;
        conn.send(&["SUBSCRIBE", "v2:entries"]).await?;
        let confirmed = conn.read(Duration::from_secs(2)).await?;
        ensure!(confirmed.array()?.len() == 3, "{confirmed:?}");
        subscribers.push(conn);
    }
    let reply = command(publisher, &["PUBLISH", "v2:entries", "hello"]).await?;
    // The reply counts the publishing node's own subscribers only.
    ensure!(reply == Reply::Int(0), "PUBLISH answered {reply:?}");
    for mut conn in subscribers {
        let message = conn.read(Duration::from_secs(5)).await?;
        let parts: Vec<String> = message
            .array()?
            .iter()
            .map(Reply::text)
            .collect::<Result<_>>()?;
        ensure!(
            parts == ["message", "v2:entries", "hello"],
            "{} got {parts:?}",
            conn.addr
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
    ensure!(conn.command(&["INCR", key]).await?.int()? == 1);
    let reply = conn.command(&["WAIT", "1", "1000"]).await?;
    ensure!(reply == Reply::Int(1), "WAIT answered {reply:?}");

    let reply = command(replica, &["WAIT", "1", "100"]).await?;
    let error = reply
        .error()
        .context(format!("WAIT on a replica: {reply:?}"))?;
    ensure!(error.contains("replica"), "{error}");

    // A replica that does not answer (SIGSTOP, shorter than the node timeout) is not counted.
    cluster.pause(replica)?;
    ensure!(conn.command(&["INCR", key]).await?.int()? == 2);
    let short = conn.command(&["WAIT", "1", "300"]).await;
    cluster.resume(replica)?;
    ensure!(short? == Reply::Int(0), "WAIT counted a paused replica");
    let reply = conn.command(&["WAIT", "1", "1500"]).await?;
    ensure!(
        reply == Reply::Int(1),
        "WAIT after resuming answered {reply:?}"
    );
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
    ensure!(conn.command(&["SET", key, "kept"]).await? == ok());
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
    ensure!(command(new, &["GET", key]).await?.text()? == "kept");
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
    ensure!(conn.command(&["SET", key, "kept"]).await? == ok());
    ensure!(conn.command(&["WAIT", "1", "1000"]).await? == Reply::Int(1));

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
    ensure!(command(new, &["GET", key]).await?.text()? == "kept");

    // Started again with its nodes.conf, the old primary rejoins as the new one's replica.
    cluster.restart(primary).await?;
    cluster.wait_until_healthy(Duration::from_secs(30)).await?;
    ensure!(has_role(primary, "slave").await?, "{primary} is no replica");
    ensure!(cluster.replicas_for_slot(slot).await? == [primary]);
    Ok(())
}
