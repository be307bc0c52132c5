//! Fault injection for end-to-end tests: a TCP proxy a test can cut (one node's link to Redis),
//! and a whole cluster (redis-server, N broker nodes gossiping, HAProxy in front) whose parts a
//! test can stop, pause, cut and start again.

use crate::sentinel::SentinelRedis;
use crate::{BrokerNode, ClusterSettings, Haproxy, RedisServer};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Whether a [`TcpProxy`] forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Open,
    Cut,
    /// The connections of before go silent for good; new ones are forwarded.
    Stranded(u64),
}

/// A TCP proxy on a free loopback port in front of one upstream address.
///
/// While it is [cut](Self::cut) it behaves like a network partition: bytes in either direction
/// go nowhere, established connections hang without being closed, and new connections are
/// accepted but never reach the upstream. [`Self::restore`] closes everything that was held (as
/// a healed partition resets connections whose peers timed out) and forwards again.
///
/// [`Self::strand`] is what a server replaced at a new address looks like from behind a stable
/// virtual address (a Kubernetes Service whose pod was replaced): the established connections
/// hang for good, never closed, while new ones reach the upstream again.
pub struct TcpProxy {
    /// The address to connect to instead of the upstream.
    pub addr: SocketAddr,
    link: watch::Sender<Link>,
    accepting: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts a proxy to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (link, state) = watch::channel(Link::Open);
        let accepting = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    // Out of descriptors, say: a pace, so that the loop does not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                tokio::spawn(serve(inbound, upstream, state.clone()));
            }
        });
        Ok(TcpProxy {
            addr,
            link,
            accepting,
        })
    }

    /// Cuts every connection, present and future, until [`Self::restore`].
    pub fn cut(&self) {
        self.link.send_replace(Link::Cut);
    }

    /// Closes the connections held while cut and forwards new ones again.
    pub fn restore(&self) {
        self.link.send_replace(Link::Open);
    }

    /// Leaves every connection established so far hanging, silent and open, for as long as the
    /// proxy lives; connections made from now on are forwarded.
    pub fn strand(&self) {
        self.link.send_modify(|link| {
            *link = match *link {
                Link::Stranded(n) => Link::Stranded(n + 1),
                _ => Link::Stranded(1),
            }
        });
    }

    /// Whether the proxy is cut now.
    pub fn is_cut(&self) -> bool {
        *self.link.borrow() == Link::Cut
    }

    /// A `redis://` URL through this proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://{}/", self.addr)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // The connections' tasks end when the sender goes (their `changed()` fails).
        self.accepting.abort();
    }
}

/// Forwards one connection until either side closes it, or holds it while the link is cut and
/// closes it when the link is restored.
async fn serve(mut inbound: TcpStream, upstream: SocketAddr, mut state: watch::Receiver<Link>) {
    let at_start = *state.borrow_and_update();
    if at_start == Link::Cut {
        let _ = state.wait_for(|link| *link == Link::Open).await;
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let silenced = |link: &Link| *link == Link::Cut || (*link != at_start && *link != Link::Open);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
        silent = state.wait_for(silenced) => if silent.is_err() { return },
    }
    // Cut: both ends stay open and silent until the link is restored. Stranded: until the
    // proxy goes (the sender is dropped and `wait_for` fails).
    if *state.borrow() == Link::Cut {
        let _ = state.wait_for(|link| *link == Link::Open).await;
    } else {
        let _ = state.wait_for(|_| false).await;
    }
    drop(outbound);
    drop(inbound);
}

/// How to build a [`Cluster`].
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Broker nodes (ids `node-0`, `node-1`, ...).
    pub nodes: usize,
    /// Redis with an append-only file that survives restarts.
    pub persistent_redis: bool,
    /// Each node reaches Redis through a [`TcpProxy`] of its own.
    pub proxied_redis: bool,
    /// Redis run by Sentinel (a primary, two replicas, three sentinels), which the nodes find
    /// through the sentinels.
    pub sentinel: bool,
    /// TOML appended to every node's configuration.
    pub extra_config: String,
}

/// A running cluster: redis-server, broker nodes that found each other by gossip, and HAProxy
/// round-robin in front of them. (Fields drop in order: the nodes go before Redis, so they do
/// not log a Redis outage while the test tears down.)
pub struct Cluster {
    /// The load balancer in front of the nodes' MQTT ports.
    pub lb: Haproxy,
    /// The nodes, `node-0` first.
    pub nodes: Vec<BrokerNode>,
    /// Each node's proxy to Redis (with [`ClusterOptions::proxied_redis`]).
    pub proxies: Vec<TcpProxy>,
    /// The replicas and sentinels (with [`ClusterOptions::sentinel`]).
    pub sentinel: Option<SentinelRedis>,
    /// The shared Redis (with Sentinel, the primary it started with).
    pub redis: RedisServer,
}

/// How long a cluster may take to form, or to notice a change of members.
pub const MEMBERSHIP: Duration = Duration::from_secs(60);

impl Cluster {
    /// Starts the cluster and waits until every node sees all the others.
    pub async fn start(options: &ClusterOptions) -> Result<Self> {
        let (redis, sentinel) = if options.sentinel {
            let (primary, group) = SentinelRedis::start().await?;
            (primary, Some(group))
        } else if options.persistent_redis {
            (RedisServer::start_persistent().await?, None)
        } else {
            (RedisServer::start().await?, None)
        };
        let mut proxies = Vec::new();
        let mut settings = Vec::new();
        for _ in 0..options.nodes {
            let url = if options.proxied_redis {
                let proxy = TcpProxy::start(redis.addr).await?;
                let url = proxy.redis_url();
                proxies.push(proxy);
                url
            } else {
                redis.url()
            };
            let mut node = ClusterSettings::new(&url, &[])?;
            node.redis_sentinel = sentinel.as_ref().map(SentinelRedis::broker_config);
            node.extra_config = options.extra_config.clone();
            settings.push(node);
        }
        // Every node's seeds are all the others (as in a StatefulSet), so that any node, the
        // first included, finds the others again when it restarts.
        let gossip: Vec<SocketAddr> = settings.iter().map(|s| s.gossip).collect();
        let mut nodes: Vec<BrokerNode> = Vec::new();
        for (i, mut settings) in settings.into_iter().enumerate() {
            settings.seeds = gossip
                .iter()
                .copied()
                .filter(|&g| g != settings.gossip)
                .collect();
            let id = format!("node-{i}");
            let node = BrokerNode::start_clustered(&id, &settings)
                .await
                .with_context(|| format!("starting {id}"))?;
            nodes.push(node);
        }
        let backends: Vec<SocketAddr> = nodes.iter().map(|n| n.mqtt).collect();
        let lb = Haproxy::start(&backends).await?;
        let cluster = Cluster {
            redis,
            sentinel,
            nodes,
            proxies,
            lb,
        };
        cluster.wait_for_members(&cluster.all(), MEMBERSHIP).await?;
        Ok(cluster)
    }

    /// The indexes of all nodes.
    pub fn all(&self) -> Vec<usize> {
        (0..self.nodes.len()).collect()
    }

    /// The indexes of all nodes but `except`.
    pub fn others(&self, except: usize) -> Vec<usize> {
        self.all().into_iter().filter(|&i| i != except).collect()
    }

    /// Waits until each node in `which` sees exactly `which.len()` members.
    pub async fn wait_for_members(&self, which: &[usize], within: Duration) -> Result<()> {
        for &i in which {
            self.nodes[i]
                .wait_for_members(which.len(), within)
                .await
                .with_context(|| {
                    format!("{} does not see {} members", self.nodes[i].id, which.len())
                })?;
        }
        Ok(())
    }

    /// Waits until `/readyz` of each node in `which` answers `status`.
    pub async fn wait_for_readyz(
        &self,
        which: &[usize],
        status: u16,
        within: Duration,
    ) -> Result<()> {
        for &i in which {
            self.nodes[i].wait_for_readyz(status, within).await?;
        }
        Ok(())
    }

    /// Every node's unlabelled metric `name` (NaN for a node that does not answer).
    pub async fn metric(&self, name: &str) -> Vec<f64> {
        let mut values = Vec::new();
        for node in &self.nodes {
            values.push(node.metric(name).await.unwrap_or(f64::NAN));
        }
        values
    }
}
