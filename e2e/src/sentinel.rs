//! A Redis run by Sentinel on loopback: a primary, two replicas and three `redis-sentinel`
//! processes (Debian's), as a highly available Redis is deployed, for failover tests.
//!
//! The sentinels agree (quorum 2) that the primary is down after [`DOWN_AFTER`] without an
//! answer and promote a replica; the other replica is then made to follow the new primary.

use crate::{free_port, wait_for, Process, RedisServer, STARTUP};
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::time::Duration;

/// The name the sentinels monitor the primary under.
pub const MASTER_NAME: &str = "starling";
/// How long the primary may stay silent before a sentinel holds it down.
pub const DOWN_AFTER: Duration = Duration::from_millis(1000);

/// The primary, its replicas and the sentinels.
pub struct SentinelRedis {
    /// The replicas (the primary is the cluster's [`RedisServer`], started by [`Self::start`]).
    pub replicas: Vec<RedisServer>,
    /// The sentinels' addresses.
    pub sentinels: Vec<SocketAddr>,
    processes: Vec<Process>,
    /// Each sentinel's configuration file (a sentinel rewrites its own).
    _dirs: Vec<tempfile::TempDir>,
}

impl SentinelRedis {
    /// Starts a primary, two replicas of it and three sentinels, and waits until the replicas
    /// are in sync and every sentinel knows both replicas and the two other sentinels.
    pub async fn start() -> Result<(RedisServer, Self)> {
        let primary = RedisServer::start().await?;
        let mut replicas = Vec::new();
        for _ in 0..2 {
            replicas.push(RedisServer::start_replica_of(primary.addr).await?);
        }
        wait_for(STARTUP, || async {
            let info = redis_cli(primary.addr, &["INFO", "replication"]).await?;
            let online = info.matches("state=online").count();
            if online < 2 {
                bail!("{online} of 2 replicas in sync");
            }
            Ok(())
        })
        .await
        .context("the replicas did not sync with the primary")?;
        let mut sentinels = Vec::new();
        let mut processes = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..3 {
            let port = free_port()?;
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("sentinel.conf");
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} {down}\n\
                 sentinel failover-timeout {MASTER_NAME} 10000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                dir = dir.path().display(),
                primary = primary.addr.port(),
                down = DOWN_AFTER.as_millis(),
            );
            std::fs::write(&path, text)?;
            let path = path.to_string_lossy().to_string();
            let process = Process::spawn(&format!("sentinel-{i}"), "redis-sentinel", &[&path])
                .context("redis-sentinel is needed (Debian package redis-sentinel)")?;
            processes.push(process);
            sentinels.push(SocketAddr::from(([127, 0, 0, 1], port)));
            dirs.push(dir);
        }
        let group = SentinelRedis {
            replicas,
            sentinels,
            processes,
            _dirs: dirs,
        };
        for &sentinel in &group.sentinels {
            wait_for(Duration::from_secs(30), || async move {
                let master = redis_cli(sentinel, &["SENTINEL", "MASTER", MASTER_NAME]).await?;
                let field = |name: &str| -> Option<String> {
                    let lines: Vec<&str> = master.lines().collect();
                    let at = lines.iter().position(|l| *l == name)?;
                    lines.get(at + 1).map(|v| v.to_string())
                };
                let replicas = field("num-slaves").unwrap_or_default();
                let others = field("num-other-sentinels").unwrap_or_default();
                if replicas != "2" || others != "2" {
                    bail!("knows {replicas:?} replicas and {others:?} other sentinels");
                }
                Ok(())
            })
            .await
            .with_context(|| format!("sentinel {sentinel} did not learn the whole group"))?;
        }
        Ok((primary, group))
    }

    /// The primary the sentinels name now (the first that answers).
    pub async fn primary(&self) -> Result<SocketAddr> {
        let mut last = None;
        for &sentinel in &self.sentinels {
            match redis_cli(
                sentinel,
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME],
            )
            .await
            {
                Ok(reply) => {
                    let mut lines = reply.lines();
                    let (Some(host), Some(port)) = (lines.next(), lines.next()) else {
                        bail!("sentinel {sentinel} answered {reply:?}");
                    };
                    return format!("{host}:{port}")
                        .parse()
                        .with_context(|| format!("sentinel {sentinel} answered {reply:?}"));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no sentinel")))
    }

    /// Waits until the sentinels name another primary than `old`, and it answers as one.
    pub async fn wait_for_failover(&self, old: SocketAddr, within: Duration) -> Result<SocketAddr> {
        let found = std::cell::Cell::new(None);
        wait_for(within, || {
            let found = &found;
            async move {
                let now = self.primary().await?;
                if now == old {
                    bail!("the sentinels still name {old}");
                }
                let role = redis_cli(now, &["ROLE"]).await?;
                if !role.starts_with("master") {
                    bail!("{now} answers ROLE with {role:?}");
                }
                found.set(Some(now));
                Ok(())
            }
        })
        .await
        .context("no failover")?;
        found.get().context("no primary")
    }

    /// The sentinels' part of a broker's `[cluster]` configuration.
    pub fn broker_config(&self) -> String {
        let sentinels: Vec<String> = self.sentinels.iter().map(|s| format!("\"{s}\"")).collect();
        format!(
            "[cluster.redis_sentinel]\nmaster_name = \"{MASTER_NAME}\"\nsentinels = [{}]\n",
            sentinels.join(", ")
        )
    }
}

impl Drop for SentinelRedis {
    fn drop(&mut self) {
        // The sentinels go first, so that they do not fail over while the replicas stop.
        self.processes.clear();
    }
}

/// Runs `redis-cli` against `addr` and returns its output (an error reply fails).
pub async fn redis_cli(addr: SocketAddr, args: &[&str]) -> Result<String> {
    let output = tokio::process::Command::new("redis-cli")
        .arg("-h")
        .arg(addr.ip().to_string())
        .arg("-p")
        .arg(addr.port().to_string())
        .args(args)
        .output()
        .await
        .context("redis-cli is needed (Debian package redis-tools)")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() || text.starts_with("ERR") || text.contains("Could not connect") {
        bail!(
            "redis-cli {args:?} at {addr}: {} {}",
            text.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(text)
}
