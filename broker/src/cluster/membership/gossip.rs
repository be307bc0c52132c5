//! Membership by gossip: starting memberlist with our options and delegates, and the
//! [`Membership`] it gives the rest of the broker.

use super::members::{node_info, EventForwarder, RunMeta};
use super::seeds::{check_seed, seed_loop, SeedStatus};
use super::{Gossip, GossipConfig, MemberEvent, Membership, MembershipError, NodeInfo};
use async_trait::async_trait;
use memberlist::delegate::CompositeDelegate;
use memberlist::net::{HostAddr, NetTransportOptions};
use memberlist::proto::{EncryptionAlgorithm, Meta, SecretKey};
use memberlist::tokio::{TokioHostAddrResolver, TokioTcp};
use memberlist::transport::NodeId;
use memberlist::Options;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// How long memberlist keeps a dead member before reaping it: in effect never (see the module
/// documentation).
pub(super) const NEVER_REAP_DEAD: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// How many membership events a slow subscriber may fall behind before it sees
/// [`broadcast::error::RecvError::Lagged`] (and should re-read [`Membership::members`]).
const EVENT_CAPACITY: usize = 256;
/// Starts gossip with `config` and returns the node's view of the cluster.
pub async fn start(config: GossipConfig) -> Result<Arc<dyn Membership>, MembershipError> {
    let membership: Arc<dyn Membership> = GossipMembership::start(config).await?;
    Ok(membership)
}

/// Membership by gossip; see the module documentation.
pub struct GossipMembership {
    id: String,
    gossip: Gossip,
    events: broadcast::Sender<MemberEvent>,
    seed_status: watch::Receiver<SeedStatus>,
    seeder: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GossipMembership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipMembership")
            .field("id", &self.id)
            .field("advertise", self.gossip.advertise_address())
            .finish_non_exhaustive()
    }
}

impl GossipMembership {
    /// Binds the gossip port, starts the protocol and, if there are seeds, the background task
    /// that contacts them. Returns once the node is listening; joining happens in the background.
    pub async fn start(config: GossipConfig) -> Result<Arc<Self>, MembershipError> {
        let id = NodeId::new(&config.node_id).map_err(|e| MembershipError::InvalidNodeId {
            id: config.node_id.clone(),
            reason: e.to_string(),
        })?;
        for seed in &config.seeds {
            check_seed(seed)?;
        }
        let key = config
            .secret_key
            .as_deref()
            .map(|k| SecretKey::try_from(k).map_err(|_| MembershipError::InvalidKey(k.len())))
            .transpose()?;

        let transport =
            NetTransportOptions::<NodeId, TokioHostAddrResolver, TokioTcp>::new(id.clone())
                .with_bind_addresses([HostAddr::from(config.bind)].into_iter().collect())
                .maybe_advertise_address(config.advertise);

        let t = &config.tuning;
        let mut options = Options::lan()
            .with_probe_interval(t.probe_interval)
            .with_probe_timeout(t.probe_timeout)
            .with_suspicion_mult(t.suspicion_mult)
            .with_gossip_interval(t.gossip_interval)
            .with_push_pull_interval(t.push_pull_interval)
            .with_timeout(t.tcp_timeout)
            .with_dead_node_reclaim_time(config.dead_node_reclaim)
            .with_gossip_to_the_dead_time(NEVER_REAP_DEAD);
        if let Some(key) = key {
            options = options
                .with_primary_key(key)
                .with_encryption_algo(EncryptionAlgorithm::default())
                .with_gossip_verify_incoming(true)
                .with_gossip_verify_outgoing(true);
        }

        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let meta = match config.run {
            Some(run) => Meta::try_from(run.to_string()).map_err(|e| MembershipError::Start {
                bind: config.bind,
                reason: e.to_string(),
            })?,
            None => Meta::empty(),
        };
        let delegate = CompositeDelegate::new()
            .with_event_delegate(EventForwarder {
                local: id.clone(),
                events: events.clone(),
            })
            .with_node_delegate(RunMeta(meta));
        let gossip = Gossip::with_delegate(delegate, transport, options)
            .await
            .map_err(|e| MembershipError::Start {
                bind: config.bind,
                reason: e.to_string(),
            })?;
        let advertise = *gossip.advertise_address();
        tracing::info!(
            node = %config.node_id,
            bind = %config.bind,
            %advertise,
            encrypted = config.secret_key.is_some(),
            seeds = ?config.seeds,
            "gossip started"
        );

        let (status_tx, seed_status) = watch::channel(SeedStatus::default());
        let seeder = (!config.seeds.is_empty()).then(|| {
            let own = [config.bind, advertise];
            tokio::spawn(seed_loop(
                gossip.clone(),
                config.seeds.clone(),
                own,
                config.tuning.seed_retry_max,
                status_tx,
            ))
        });
        Ok(Arc::new(GossipMembership {
            id: config.node_id,
            gossip,
            events,
            seed_status,
            seeder,
        }))
    }

    /// The address other nodes reach this node's gossip at (with the real port when bound to 0).
    pub fn advertise_addr(&self) -> SocketAddr {
        *self.gossip.advertise_address()
    }

    /// How contacting the seeds is going (never changes for a node without seeds).
    pub fn seed_status(&self) -> watch::Receiver<SeedStatus> {
        self.seed_status.clone()
    }

    /// Stops gossiping at once, without telling anyone: to the others the node looks failed.
    pub async fn shutdown(&self) {
        if let Some(seeder) = &self.seeder {
            seeder.abort();
        }
        if let Err(e) = self.gossip.shutdown().await {
            tracing::warn!(error = %e, "gossip shutdown");
        }
    }
}

#[async_trait]
impl Membership for GossipMembership {
    fn local_id(&self) -> &str {
        &self.id
    }

    async fn members(&self) -> Vec<NodeInfo> {
        self.gossip
            .online_members()
            .await
            .iter()
            .map(|n| node_info(n))
            .collect()
    }

    fn events(&self) -> broadcast::Receiver<MemberEvent> {
        self.events.subscribe()
    }

    async fn leave(&self, timeout: Duration) -> Result<(), MembershipError> {
        if let Some(seeder) = &self.seeder {
            seeder.abort();
        }
        let left = self.gossip.leave(timeout).await;
        self.shutdown().await;
        match left {
            Ok(_) => {
                tracing::info!(node = %self.id, "left the cluster");
                Ok(())
            }
            Err(e) => Err(MembershipError::Leave(e.to_string())),
        }
    }
}

impl Drop for GossipMembership {
    fn drop(&mut self) {
        if let Some(seeder) = &self.seeder {
            seeder.abort();
        }
        // memberlist's tasks hold clones of it, so dropping ours alone would leave them running.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let gossip = self.gossip.clone();
            runtime.spawn(async move {
                let _ = gossip.shutdown().await;
            });
        }
    }
}
