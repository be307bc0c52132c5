//! A Starling cluster on loopback for the cluster scenarios: one real
//! `redis-server` and two `starling-broker` nodes that find each other by
//! gossip. Every process dies with its handle.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::broker::{free_loopback_addr, temp_dir, BrokerProcess};

/// How long the nodes get to see each other, and a node to learn a remote
/// subscription.
const CLUSTER_WAIT: Duration = Duration::from_secs(20);
/// Pause between two polls of a node's `/metrics`.
const POLL: Duration = Duration::from_millis(50);

/// A `redis-server` without persistence.
pub struct RedisProcess {
    pub process: BrokerProcess,
}

impl RedisProcess {
    /// Starts `redis-server` on a free loopback port.
    pub async fn start() -> Result<Self> {
        let addr = free_loopback_addr()?;
        let dir = temp_dir()?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--port")
            .arg(addr.port().to_string())
            .arg("--dir")
            .arg(dir.path());
        let process = BrokerProcess::launch("redis-server", cmd, addr, dir)
            .await
            .context("redis-server is needed (Debian package redis-server)")?;
        Ok(RedisProcess { process })
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.process.addr)
    }
}

/// A clustered Starling node.
pub struct Node {
    pub id: &'static str,
    pub process: BrokerProcess,
    /// Its admin HTTP address (`/metrics`).
    pub admin: SocketAddr,
}

impl Node {
    /// Starts a node that uses `redis_url` and joins the gossip `seeds`.
    async fn start(
        bin: &Path,
        id: &'static str,
        redis_url: &str,
        gossip: SocketAddr,
        seeds: &[SocketAddr],
    ) -> Result<Self> {
        let mqtt = free_loopback_addr()?;
        let admin = free_loopback_addr()?;
        let mut cmd = Command::new(bin);
        cmd.arg("--node-id")
            .arg(id)
            .arg("--tcp")
            .arg(mqtt.to_string())
            .arg("--admin-bind")
            .arg(admin.to_string())
            .arg("--log-level")
            .arg("warn")
            .arg("--redis-url")
            .arg(redis_url)
            .arg("--gossip-bind")
            .arg(gossip.to_string());
        if !seeds.is_empty() {
            let seeds: Vec<String> = seeds.iter().map(SocketAddr::to_string).collect();
            cmd.arg("--gossip-seeds").arg(seeds.join(","));
        }
        let process = BrokerProcess::launch(id, cmd, mqtt, temp_dir()?).await?;
        Ok(Node { id, process, admin })
    }

    /// Reads one unlabelled metric of the node.
    pub async fn metric(&self, name: &str) -> Result<f64> {
        metric(self.admin, name).await
    }
}

/// Two nodes sharing one `redis-server`.
pub struct Cluster {
    pub redis: RedisProcess,
    pub a: Node,
    pub b: Node,
}

impl Cluster {
    /// Starts Redis and nodes `node-a` and `node-b` (seeded with A's gossip
    /// address), and waits until both see two members.
    pub async fn start(bin: &Path) -> Result<Self> {
        let redis = RedisProcess::start().await?;
        let gossip_a = free_loopback_addr()?;
        let gossip_b = free_loopback_addr()?;
        let a = Node::start(bin, "node-a", &redis.url(), gossip_a, &[]).await?;
        let b = Node::start(bin, "node-b", &redis.url(), gossip_b, &[gossip_a]).await?;
        for node in [&a, &b] {
            poll_metric(node.admin, "starling_cluster_members", |m| m >= 2.0)
                .await
                .with_context(|| format!("{} does not see the other node", node.id))?;
        }
        Ok(Cluster { redis, a, b })
    }

    /// Fails if any process of the cluster has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        self.redis.process.check_alive().context("redis-server")?;
        self.a.process.check_alive().context("node-a")?;
        self.b.process.check_alive().context("node-b")
    }
}

/// The Starling binary, checked to exist.
pub fn starling_bin(bin: Option<PathBuf>) -> Result<PathBuf> {
    let bin = bin.unwrap_or_else(crate::broker::default_starling_bin);
    crate::broker::resolve_bin(&bin).ok_or_else(|| {
        anyhow!(
            "Starling binary {} not found: build it with `cargo build --release -p starling-broker` \
             or pass --starling-bin",
            bin.display()
        )
    })
}

/// Waits until the node behind `admin` knows at least `n` filters that
/// other nodes subscribe to, so publishing can start.
pub async fn wait_for_remote_entries(admin: SocketAddr, n: f64) -> Result<()> {
    poll_metric(admin, "starling_cluster_remote_entries", |known| known >= n)
        .await
        .context("the publishing node did not learn the remote subscription")
}

/// Polls a metric until `done` holds for it (the node gives no other signal).
async fn poll_metric(admin: SocketAddr, name: &str, done: impl Fn(f64) -> bool) -> Result<()> {
    let deadline = Instant::now() + CLUSTER_WAIT;
    loop {
        let last = metric(admin, name).await;
        if let Ok(value) = last {
            if done(value) {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(match last {
                Ok(value) => anyhow!("{name} is {value} after {CLUSTER_WAIT:?}"),
                Err(e) => e.context(format!("reading {name}")),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Reads one unlabelled metric from the node's `/metrics`.
pub async fn metric(admin: SocketAddr, name: &str) -> Result<f64> {
    let body = http_get(admin, "/metrics").await?;
    metric_value(&body, name).ok_or_else(|| anyhow!("metric {name} not found"))
}

/// The value of an unlabelled metric in Prometheus text format.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// A plain HTTP/1.1 GET returning the body of a 200 answer.
async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("incomplete HTTP answer from {addr}"))?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        bail!("GET {path} answered {status:?}");
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_value_reads_unlabelled_metrics_only() {
        let text = "# HELP starling_cluster_members Members\n\
                    starling_cluster_members 2\n\
                    starling_cluster_members_total 9\n\
                    starling_relay_dropped_total 17\n\
                    starling_messages_received_total{qos=\"1\"} 5\n";
        assert_eq!(metric_value(text, "starling_cluster_members"), Some(2.0));
        assert_eq!(
            metric_value(text, "starling_relay_dropped_total"),
            Some(17.0)
        );
        assert_eq!(metric_value(text, "starling_messages_received_total"), None);
        assert_eq!(metric_value(text, "starling_relay"), None);
    }
}
