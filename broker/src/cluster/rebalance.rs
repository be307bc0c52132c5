//! Rebalancing connections across the cluster. Every node shares its connection count through
//! Redis each second (`v1:load`, see [`super::load`]); a node holding more than the mean of the
//! accepting nodes by more than the tolerance gives connections away: it asks clients, at a
//! bounded rate, to reconnect elsewhere (v5: DISCONNECT 0x9C "use another server", sessions
//! kept), and refuses new ones (CONNACK 0x9C, or 0x03 in MQTT 3.1.1) until it is down to the
//! mean, so the balancer in front sends them to the others. After a scale-up the new nodes fill
//! up this way; a cluster whose nodes drift apart is evened out.
//!
//! Each node decides for itself from the counts it read: no coordinator, nothing to elect. An
//! evacuating node shares that it accepts no one and is left out of the mean.

use super::load::{cluster_clients, excess, NodeLoad, RecentPeak};
use super::relay::ClusterLink;
use super::round::{Round, Verdict};
use crate::broker::Broker;
use redis::aio::MultiplexedConnection;
use starling_config::RebalanceConfig;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often each node shares its count and decides again.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// A count older than this (by Redis's clock) is not counted: its node stopped sharing it.
const FRESH_MS: u64 = 5_000;
/// A count older than this is removed from `v1:load` by whichever node reads it.
const FORGET_MS: u64 = 60_000;
/// How long a node stops giving once the clients it asked to move arrived nowhere; doubled at
/// each such round in a row (up to [`HOLD_OFF_MAX`]), since the node that should take them may
/// stay out of the balancer's reach for long.
const HOLD_OFF: Duration = Duration::from_secs(30);
/// The longest hold-off.
const HOLD_OFF_MAX: Duration = Duration::from_secs(960);

/// What one reading of the cluster's load found.
struct Reading {
    /// Fresh loads of registered nodes, this one's included, by node.
    loads: Vec<NodeLoad>,
    /// Whether every registered node shared a fresh load: a node that shares none (an older
    /// version, or one that cannot reach Redis) takes clients nobody counts.
    complete: bool,
}

/// Shares this node's load (with where its admin API is, `admin`) and rebalances, each
/// [`INTERVAL`], until the broker goes or shuts down.
pub async fn run(
    link: Arc<ClusterLink>,
    broker: Weak<Broker>,
    config: RebalanceConfig,
    admin: Option<SocketAddr>,
) {
    let admin = admin.map(|address| address.to_string());
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut con: Option<MultiplexedConnection> = None;
    // The round of giving under way (or waiting for its verdict).
    let mut round: Option<Round> = None;
    let mut hold_until: Option<Instant> = None;
    // Rounds in a row whose clients arrived nowhere.
    let mut vanished_rounds: u32 = 0;
    let mut last_vanished: Option<Instant> = None;
    // The most clients the cluster held lately: the mean counts those still on their way.
    let mut peak = RecentPeak::default();
    loop {
        tick.tick().await;
        let Some(broker) = broker.upgrade() else {
            return;
        };
        let rebalancing = &broker.rebalancing;
        let shutting_down = broker.is_shutting_down();
        let own = NodeLoad {
            node: link.node_id().to_string(),
            connections: broker.connections_staying(),
            // As `/readyz` would say: serving, not evacuating, not shutting down, Redis fine.
            accepting: rebalancing.is_serving()
                && !shutting_down
                && !broker.evacuation.is_evacuating()
                && link.health().problem().is_none(),
            moving: rebalancing.moving(),
            arrived: rebalancing.arrived(),
            at_ms: link.redis_now_ms(),
            admin: admin.clone(),
        };
        let reading = tokio::time::timeout(INTERVAL, share(&link, &mut con, &own)).await;
        if shutting_down {
            stop_giving(&broker);
            return;
        }
        let reading = match reading {
            Ok(Ok(reading)) => reading,
            Ok(Err(e)) => {
                // Without the others' counts nothing is moved.
                tracing::debug!(error = %e, "rebalance: loads not shared");
                con = None;
                stop_giving(&broker);
                continue;
            }
            Err(_) => {
                tracing::debug!("rebalance: loads not shared in time");
                con = None;
                stop_giving(&broker);
                continue;
            }
        };
        let now = Instant::now();
        let held = hold_until.is_some_and(|until| now < until);
        let recent_clients = peak.note(cluster_clients(&own, &reading.loads), now);
        let give = excess(
            &own,
            &reading.loads,
            recent_clients,
            rebalancing.is_giving(),
            &config,
        );
        let clients: usize = reading.loads.iter().map(|l| l.connections + l.moving).sum();
        if held {
            round = None;
            stop_giving(&broker);
            rebalancing.set_loads(reading.loads);
            continue;
        }
        if !reading.complete {
            // A registered node shares no count: nothing moves, but a round under way stays
            // open for its verdict.
            stop_giving(&broker);
            rebalancing.set_loads(reading.loads);
            continue;
        }
        // A pause long ago says nothing about now: the next one starts short again.
        if last_vanished.is_some_and(|at| at.elapsed() > HOLD_OFF_MAX * 2) {
            vanished_rounds = 0;
        }
        if let Some(going) = &round {
            match going.verdict(&reading.loads, clients, give > 0, now, &config) {
                Verdict::Going => {}
                Verdict::Arrived => {
                    vanished_rounds = 0;
                    round = None;
                }
                Verdict::Vanished => {
                    // The clients asked to go reconnect nowhere, or only to the nodes giving
                    // (the nodes that should take them are not reachable through the
                    // balancer): stop before the reachable nodes empty themselves.
                    let hold_off = HOLD_OFF
                        .saturating_mul(1 << vanished_rounds.min(5))
                        .min(HOLD_OFF_MAX);
                    vanished_rounds += 1;
                    last_vanished = Some(now);
                    tracing::warn!(
                        asked = going.asked(),
                        hold_off_secs = hold_off.as_secs(),
                        "rebalancing: the clients asked to move are not arriving at the nodes that should take them; pausing"
                    );
                    hold_until = Some(now + hold_off);
                    round = None;
                    stop_giving(&broker);
                    rebalancing.set_loads(reading.loads);
                    continue;
                }
            }
        }
        if give == 0 {
            // A round that ended stays open until its verdict: giving again meanwhile goes on
            // with it, so clients coming back to this node are not asked again unjudged.
            stop_giving(&broker);
            rebalancing.set_loads(reading.loads);
            continue;
        }
        let going = round
            .get_or_insert_with(|| Round::begin(&own.node, &reading.loads, clients, now, &config));
        rebalancing.set_loads(reading.loads);
        start_giving(&broker, give);
        let asked = broker.ask_to_rebalance(give.min(config.rate_per_sec as usize));
        going.note_asked(asked, now);
        broker.metrics.rebalance_asked.inc_by(asked as u64);
    }
}

/// Gives connections away, refusing new clients meanwhile (the balancer sends them on to the
/// others), saying so once.
fn start_giving(broker: &Broker, excess: usize) {
    let rebalancing = &broker.rebalancing;
    rebalancing.set_refusing(true);
    if !rebalancing.set_giving(true) {
        broker.metrics.rebalance_giving.set(1);
        tracing::info!(
            excess,
            "rebalancing: this node holds more than its share; asking clients to reconnect elsewhere and refusing new ones"
        );
    }
}

/// Stops giving connections away (and refusing new clients), saying so once.
fn stop_giving(broker: &Broker) {
    let rebalancing = &broker.rebalancing;
    rebalancing.set_refusing(false);
    if rebalancing.set_giving(false) {
        broker.metrics.rebalance_giving.set(0);
        tracing::info!(
            connections = broker.online_count(),
            "rebalancing: this node stopped giving connections away"
        );
    }
}

/// Writes this node's load and reads every fresh load of a registered node (its own included);
/// forgets loads left long ago.
async fn share(
    link: &ClusterLink,
    con: &mut Option<MultiplexedConnection>,
    own: &NodeLoad,
) -> redis::RedisResult<Reading> {
    let con = match con {
        Some(con) => con,
        None => con.insert(link.recovery_connection().await?),
    };
    let (shared, registered): (Vec<(String, String)>, Vec<String>) = redis::pipe()
        .cmd("HSET")
        .arg(link.load_key())
        .arg(&own.node)
        .arg(own.encode())
        .ignore()
        .cmd("HGETALL")
        .arg(link.load_key())
        .cmd("SMEMBERS")
        .arg(link.nodes_key())
        .query_async(con)
        .await?;
    let registered: HashSet<String> = registered.into_iter().collect();
    let now = own.at_ms;
    let mut forgotten = Vec::new();
    let mut loads = Vec::new();
    for (node, text) in shared {
        // An entry this version cannot read (a newer one's) is neither counted nor removed.
        let Some(load) = NodeLoad::parse(node.clone(), &text) else {
            continue;
        };
        let age = now.saturating_sub(load.at_ms);
        if age > FORGET_MS {
            forgotten.push(node);
        } else if age <= FRESH_MS && registered.contains(&load.node) {
            loads.push(load);
        }
    }
    if !forgotten.is_empty() {
        redis::cmd("HDEL")
            .arg(link.load_key())
            .arg(forgotten)
            .query_async::<()>(con)
            .await?;
    }
    loads.sort_by(|a, b| a.node.cmp(&b.node));
    let complete = registered
        .iter()
        .all(|node| loads.iter().any(|l| &l.node == node));
    Ok(Reading { loads, complete })
}
