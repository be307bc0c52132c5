//! The link's watchers of Redis: its health (epoch, registration, heartbeat; see
//! [`crate::cluster::health`]) and the announcement channel that keeps the replica of the other
//! nodes' entries, with the rebuilds of that replica from the nodes' listings in Redis.

use super::ClusterLink;
use crate::cluster::health::{self, EpochCheck};
use crate::cluster::listed::{self, Relisting};
use crate::cluster::local::LocalBroker;
use crate::cluster::replica::Listing;
use crate::router::remote::NodeId;
use crate::store::redis::renewing::RenewingConnection;
use crate::store::redis::target::RedisTarget;
use futures_util::StreamExt;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Registers a node's run, with its return marker when it had been removed (see the script).
const REGISTER: &str = include_str!("register.lua");

/// How a resynchronisation of the replica treats what it already has.
#[derive(Debug, Clone, Copy)]
pub(super) enum Resync<'a> {
    /// Listings only add: Redis may have lost what the nodes wrote and not have it again yet,
    /// and dropping live routes would lose messages.
    Merge,
    /// The listing of each node that has written everything again since the event (see
    /// [`crate::cluster::listed`]) replaces what the replica had of it, dropping what the node
    /// removed while this node could not hear it; the others are merged.
    Replace(&'a Relisting),
}

/// How many times a replacement is tried, [`health::RESYNC_SETTLE`] apart, while some node has
/// not listed everything again (it may be gone for good; its entries then stay merged until
/// gossip removes it).
const REPLACE_ATTEMPTS: u32 = 10;

/// Checks Redis every [`health::INTERVAL`] (reading its epoch), keeps [`ClusterLink::health`]
/// and its gauge true, and publishes this node's heartbeat on the announcement channel. When
/// Redis answers again after an outage, or has lost its data, this node registers and announces
/// its entries anew; after a loss of data the replica is rebuilt once every node has.
pub(super) async fn watch_health(
    link: Arc<ClusterLink>,
    mut con: RenewingConnection,
    broker: Weak<impl LocalBroker>,
) {
    let mut tick = tokio::time::interval(health::INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let heartbeat = format!("{}\n{}", link.node_id, health::HEARTBEAT);
    let mut renewals_seen = con.renewals();
    let mut primaries_seen = link.target.primary_changes();
    loop {
        tick.tick().await;
        let asked = std::time::Instant::now();
        let reading = tokio::time::timeout(
            health::INTERVAL,
            health::read(
                &mut con,
                &link.keys.epoch(),
                &link.keys.nodes(),
                &link.node_id,
            ),
        )
        .await;
        let Some(broker) = broker.upgrade() else {
            return;
        };
        if matches!(reading, Ok(Ok(_))) {
            broker
                .metrics()
                .redis_round_trip
                .observe(asked.elapsed().as_secs_f64());
        }
        let (check, registered, redis_ms) = match reading {
            Ok(Ok(reading)) => {
                link.redis_clock.observe(reading.redis_ms);
                if con.renewals() != renewals_seen {
                    // Answered on a new connection after the old one timed out.
                    renewals_seen = con.renewals();
                    link.reconnected.send_modify(|n| *n += 1);
                }
                (
                    Some(link.health.check_epoch(&reading.epoch)),
                    reading.registered,
                    reading.redis_ms,
                )
            }
            _ => (None, true, 0),
        };
        let up = check.is_some();
        let was_up = link.health.set_redis_up(up);
        broker.metrics().redis_up.set(i64::from(up));
        if !up {
            if was_up {
                tracing::warn!("redis unreachable: relay paused, new sessions refused");
            }
            continue;
        }
        let lost = check == Some(EpochCheck::Lost);
        // A replica promoted by Sentinel may lack the last writes the old primary took.
        let primaries = link.target.primary_changes();
        let failed_over = primaries != primaries_seen;
        primaries_seen = primaries;
        if lost || failed_over {
            // Another server answers: connections opened to the one before may hang for good
            // (it was replaced behind the same address), even if this one's failed at once.
            link.reconnected.send_modify(|n| *n += 1);
            link.lost_writes.send_modify(|n| *n += 1);
        }
        let declared_dead = check == Some(EpochCheck::Same) && !registered;
        if declared_dead {
            link.declared_dead_until(redis_ms);
            adopted_away(&*broker);
        }
        if lost {
            tracing::warn!("redis lost its data (its epoch changed): registering and announcing this node's entries again");
            broker.metrics().redis_resets.inc();
        } else if !was_up {
            tracing::info!("redis reachable again: announcing this node's entries");
        } else if failed_over {
            tracing::info!("redis failed over to another primary: registering and announcing this node's entries again");
        }
        if lost || !was_up || declared_dead || failed_over {
            if lost {
                // Redis lost everything, this node's inbox too: nobody adopted anything.
                let _ = redis::pipe()
                    .atomic()
                    .cmd("SADD")
                    .arg(link.keys.nodes())
                    .arg(&*link.node_id)
                    .ignore()
                    .cmd("SET")
                    .arg(link.keys.run(&link.node_id))
                    .arg(link.run)
                    .ignore()
                    .query_async::<()>(&mut con)
                    .await;
            } else if let Ok(Some(back_ms)) = register(&link, &mut con).await {
                // What this node's inbox got before its return is read as maybe delivered by
                // the adopter too (DUP), what came after as its own (see `recovery`).
                link.declared_dead_until(back_ms);
                if !declared_dead {
                    // The adoption's removal of the registration landed after the reading.
                    adopted_away(&*broker);
                }
            }
            broker.announce_entries();
            if lost {
                replace_when_relisted(&link, &con, &broker, Relisting::AfterLoss);
            }
        }
        let _ = redis::cmd("PUBLISH")
            .arg(link.keys.channel())
            .arg(&heartbeat)
            .query_async::<()>(&mut con)
            .await;
    }
}

/// Subscribes to entry announcements, within [`health::CONNECT_TIMEOUT`].
async fn subscribe_announcements(
    target: &RedisTarget,
    channel: &str,
) -> Result<redis::aio::PubSub, String> {
    let subscribed = tokio::time::timeout(health::CONNECT_TIMEOUT, async {
        let mut pubsub = target.client().await?.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    })
    .await;
    match subscribed {
        Ok(Ok(pubsub)) => Ok(pubsub),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {:?}", health::CONNECT_TIMEOUT)),
    }
}

/// Follows entry announcements; on every (re)subscription the replica is rebuilt from Redis
/// (merged at once; after a reconnection, each node's listing replaces what the replica has of
/// it once the node has listed everything again). A channel silent for
/// [`health::SILENCE`] (every node, this one included, publishes a heartbeat every second) is
/// reconnected.
pub(super) async fn watch_entries(
    link: Arc<ClusterLink>,
    target: RedisTarget,
    mut con: RenewingConnection,
    broker: Weak<impl LocalBroker>,
) {
    let mut first = true;
    loop {
        let mut pubsub = match subscribe_announcements(&target, &link.keys.channel()).await {
            Ok(pubsub) => pubsub,
            Err(e) => {
                link.health.set_announcements_up(false);
                tracing::warn!(error = %e, "entry announcements unavailable; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        {
            let Some(broker) = broker.upgrade() else {
                return;
            };
            // What was announced before this subscription is read from Redis; after a
            // reconnection, Redis may not have everything again yet.
            match link.resync(&mut con, &*broker, Resync::Merge).await {
                Ok(resynced) if !first => {
                    let seen = resynced.markers;
                    let relisting = Relisting::AfterReconnection { seen };
                    replace_when_relisted(&link, &con, &broker, relisting);
                }
                Ok(_) => {}
                Err(e) => {
                    // What was announced while the channel was down would be missed: subscribe
                    // and read again.
                    tracing::warn!(error = %e, "entry resynchronisation failed; subscribing again");
                    link.health.set_announcements_up(false);
                    drop(pubsub);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            if !first {
                tracing::info!("entry announcements reconnected");
            }
            first = false;
        }
        link.health.set_announcements_up(true);
        let mut messages = pubsub.on_message();
        loop {
            let message = match tokio::time::timeout(health::SILENCE, messages.next()).await {
                Ok(Some(message)) => message,
                Ok(None) => {
                    tracing::warn!("entry announcements disconnected; reconnecting");
                    break;
                }
                Err(_) => {
                    tracing::warn!(
                        "entry announcements silent for {:?} (not even heartbeats); reconnecting",
                        health::SILENCE
                    );
                    break;
                }
            };
            let Some(broker) = broker.upgrade() else {
                return;
            };
            if let Ok(text) = message.get_payload::<String>() {
                link.apply_announcement(&text, &*broker);
            }
        }
        link.health.set_announcements_up(false);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Replaces each node's part of the replica with its listing in Redis once the node has listed
/// everything again since the event `relisting` names; tried every [`health::RESYNC_SETTLE`],
/// at most [`REPLACE_ATTEMPTS`] times.
fn replace_when_relisted(
    link: &Arc<ClusterLink>,
    con: &RenewingConnection,
    broker: &Arc<impl LocalBroker>,
    relisting: Relisting,
) {
    let (link, mut con, broker) = (link.clone(), con.clone(), Arc::downgrade(broker));
    tokio::spawn(async move {
        for _ in 0..REPLACE_ATTEMPTS {
            tokio::time::sleep(health::RESYNC_SETTLE).await;
            let Some(broker) = broker.upgrade() else {
                return;
            };
            match link
                .resync(&mut con, &*broker, Resync::Replace(&relisting))
                .await
            {
                Ok(resynced) if resynced.incomplete.is_empty() => return,
                Ok(resynced) => tracing::debug!(
                    nodes = ?resynced.incomplete,
                    "some nodes have not listed their entries again yet: merged, replaced later"
                ),
                Err(e) => tracing::warn!(error = %e, "entry resynchronisation failed"),
            }
        }
        tracing::info!(
            "some nodes never listed their entries again: what the replica has of them stays merged"
        );
    });
}

impl ClusterLink {
    /// Rebuilds the replica of the other nodes' entries from what they keep in Redis (see
    /// [`Resync`]); announcements that arrive meanwhile are not undone (see [`crate::cluster::replica`]).
    pub(super) async fn resync(
        &self,
        con: &mut RenewingConnection,
        broker: &impl LocalBroker,
        how: Resync<'_>,
    ) -> redis::RedisResult<Resynced> {
        let read = self.remote.begin_listing_read();
        let (epoch, nodes): (Option<String>, Vec<String>) = redis::pipe()
            .cmd("GET")
            .arg(self.keys.epoch())
            .cmd("SMEMBERS")
            .arg(self.keys.nodes())
            .query_async(con)
            .await?;
        let epoch = epoch.unwrap_or_default();
        let mut listings = Vec::new();
        let mut resynced = Resynced::default();
        for node in nodes.into_iter().filter(|n| **n != *self.node_id) {
            let (entries, marker): (Vec<String>, Option<String>) = redis::pipe()
                .cmd("SMEMBERS")
                .arg(self.keys.entries(&node))
                .cmd("GET")
                .arg(self.keys.listed(&node))
                .query_async(con)
                .await?;
            let node = NodeId::from(node.as_str());
            let replaces = match how {
                Resync::Merge => false,
                Resync::Replace(relisting) => relisting.complete(&node, marker.as_deref(), &epoch),
            };
            if !replaces && matches!(how, Resync::Replace(_)) {
                resynced.incomplete.push(node.clone());
            }
            resynced.markers.insert(node.clone(), marker);
            listings.push(Listing {
                node,
                entries,
                replaces,
            });
        }
        let size = read.apply(listings);
        broker.metrics().remote_entries.set(size as i64);
        broker
            .metrics()
            .replica_unlisted
            .inc_by(resynced.incomplete.len() as u64);
        Ok(resynced)
    }

    fn apply_announcement(&self, text: &str, broker: &impl LocalBroker) {
        let Some((node, change)) = text.split_once('\n') else {
            return;
        };
        if node == &*self.node_id || change == health::HEARTBEAT {
            return;
        }
        let node: NodeId = node.into();
        let size = match change.split_at_checked(1) {
            Some(("+", raw)) => self.remote.announced(&node, raw, true),
            Some(("-", raw)) => self.remote.announced(&node, raw, false),
            _ => {
                tracing::debug!(announcement = text, "unreadable entry announcement");
                return;
            }
        };
        broker.metrics().remote_entries.set(size as i64);
    }
}

/// What a resynchronisation read.
#[derive(Default)]
pub(super) struct Resynced {
    /// Each other node's listing marker.
    pub(super) markers: listed::Markers,
    /// Nodes whose sets were only merged by a replacing resynchronisation: they have not listed
    /// everything again yet.
    pub(super) incomplete: Vec<NodeId>,
}

/// Registers this node's run (see `register.lua`); `Some(ms)` when it was no longer registered
/// (the cluster had declared it dead): where it came back, by Redis's clock.
async fn register(
    link: &ClusterLink,
    con: &mut RenewingConnection,
) -> redis::RedisResult<Option<u64>> {
    let back: i64 = redis::cmd("EVAL")
        .arg(REGISTER)
        .arg(3)
        .arg(link.keys.nodes())
        .arg(link.keys.run(&link.node_id))
        .arg(link.keys.returned(&link.node_id))
        .arg(&*link.node_id)
        .arg(link.run)
        .query_async(con)
        .await?;
    Ok(u64::try_from(back).ok())
}

/// This node's sessions were adopted elsewhere: its connections close (their clients resume
/// where the sessions are now).
fn adopted_away(broker: &impl LocalBroker) {
    let closed = broker.disconnect_adopted();
    broker.metrics().declared_dead.inc();
    tracing::error!(
        connections = closed,
        "the cluster declared this node dead and adopted its sessions: closing its connections (clients resume elsewhere) and rejoining"
    );
}
