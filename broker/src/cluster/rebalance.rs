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

use super::load::{excess, NodeLoad};
use super::relay::ClusterLink;
use crate::broker::Broker;
use redis::aio::MultiplexedConnection;
use starling_config::RebalanceConfig;
use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often each node shares its count and decides again.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// A count older than this (by Redis's clock) is not counted: its node stopped sharing it.
const FRESH_MS: u64 = 5_000;
/// A count older than this is removed from `v1:load` by whichever node reads it.
const FORGET_MS: u64 = 60_000;

/// Shares this node's load and rebalances, each [`INTERVAL`], until the broker goes or shuts
/// down.
pub async fn run(link: Arc<ClusterLink>, broker: Weak<Broker>, config: RebalanceConfig) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut con: Option<MultiplexedConnection> = None;
    loop {
        tick.tick().await;
        let Some(broker) = broker.upgrade() else {
            return;
        };
        let rebalancing = &broker.rebalancing;
        if broker.is_shutting_down() {
            rebalancing.set_giving(false);
            return;
        }
        let own = NodeLoad {
            node: link.node_id().to_string(),
            connections: broker.connections_staying(),
            accepting: !broker.evacuation.is_evacuating(),
            moving: rebalancing.moving(),
            at_ms: link.redis_now_ms(),
        };
        let loads = match share(&link, &mut con, &own).await {
            Ok(loads) => loads,
            Err(e) => {
                // Without the others' counts nothing is moved.
                tracing::debug!(error = %e, "rebalance: loads not shared");
                con = None;
                set_giving(&broker, false, 0);
                continue;
            }
        };
        let giving = rebalancing.is_giving();
        let excess = excess(&own, &loads, giving, &config);
        rebalancing.set_loads(loads);
        set_giving(&broker, excess > 0, excess);
        if excess > 0 {
            let asked = broker.ask_to_reconnect_elsewhere(excess.min(config.rate_per_sec as usize));
            broker.metrics.rebalance_asked.inc_by(asked as u64);
        }
    }
}

/// Starts or stops giving connections away, saying so once.
fn set_giving(broker: &Broker, giving: bool, excess: usize) {
    if broker.rebalancing.set_giving(giving) != giving {
        broker.metrics.rebalance_giving.set(i64::from(giving));
        if giving {
            tracing::info!(
                excess,
                "rebalancing: this node holds more than its share; asking clients to reconnect elsewhere and refusing new ones"
            );
        } else {
            tracing::info!(
                connections = broker.online_count(),
                "rebalancing: this node holds its share again"
            );
        }
    }
}

/// Writes this node's load and reads every fresh load of a registered node (its own included);
/// forgets loads left long ago.
async fn share(
    link: &ClusterLink,
    con: &mut Option<MultiplexedConnection>,
    own: &NodeLoad,
) -> redis::RedisResult<Vec<NodeLoad>> {
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
    let mut loads: Vec<NodeLoad> = shared
        .into_iter()
        .filter_map(|(node, text)| {
            let load = NodeLoad::parse(node.clone(), &text);
            let age = load
                .as_ref()
                .map_or(u64::MAX, |l| now.saturating_sub(l.at_ms));
            if age > FORGET_MS {
                forgotten.push(node);
            }
            load.filter(|l| age <= FRESH_MS && registered.contains(&l.node))
        })
        .collect();
    if !forgotten.is_empty() {
        redis::cmd("HDEL")
            .arg(link.load_key())
            .arg(forgotten)
            .query_async::<()>(con)
            .await?;
    }
    loads.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(loads)
}
