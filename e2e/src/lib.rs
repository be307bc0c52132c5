//! End-to-end harness: real processes on loopback, each on a port the OS picked, all stopped when
//! their handles drop.
//!
//! - [`RedisServer`]: a `redis-server` (Debian), without persistence or with an append-only file.
//! - [`BrokerNode`]: the `starling-broker` binary of this workspace; it can be stopped (SIGTERM,
//!   SIGKILL), paused (SIGSTOP) and started again under its id on the same ports.
//! - [`Haproxy`]: HAProxy (Debian) in TCP mode, `balance roundrobin`, in front of the nodes.
//! - [`fault`]: a TCP proxy a test can cut, and a whole cluster for fault tests.
//! - [`fleet`]: device-like MQTT clients that keep persistent sessions and reconnect.
//! - [`sentinel`]: a Redis run by Sentinel; [`redis_cluster`]: a Redis Cluster.
//!
//! The broker binary is found through `STARLING_BROKER_BIN`, else next to this test's own
//! executable (`target/<profile>/starling-broker`); `cargo test --workspace` builds it.

pub mod fault;
pub mod fleet;
mod process;
pub mod redis_cluster;
pub mod sentinel;

pub use process::{free_port, free_port_pair, log_to, wait_for, Process};

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a process may take to become ready.
pub const STARTUP: Duration = Duration::from_secs(15);

/// A running `redis-server`.
pub struct RedisServer {
    /// Its address.
    pub addr: SocketAddr,
    process: Option<Process>,
    /// Where a persistent server keeps its append-only file.
    data: Option<tempfile::TempDir>,
    /// The primary it replicates, for a replica.
    replica_of: Option<SocketAddr>,
    /// The working directory of a server without persistence, new at every start: a primary
    /// writes a snapshot there to sync its replicas, and a server loads any snapshot it finds
    /// at start, so a shared one would carry data from one test to the next.
    scratch: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// Starts `redis-server` without persistence on a free loopback port and waits until it
    /// answers PING.
    pub async fn start() -> Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let (process, scratch) = Self::spawn(addr, None, None).await?;
        Ok(RedisServer {
            addr,
            process: Some(process),
            data: None,
            replica_of: None,
            scratch,
        })
    }

    /// Starts `redis-server` without persistence as a replica of `primary` and waits until it
    /// answers PING (not until it is in sync).
    pub async fn start_replica_of(primary: SocketAddr) -> Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let (process, scratch) = Self::spawn(addr, None, Some(primary)).await?;
        Ok(RedisServer {
            addr,
            process: Some(process),
            data: None,
            replica_of: Some(primary),
            scratch,
        })
    }

    /// Starts `redis-server` with persistence: an append-only file in a temporary directory,
    /// synced on every write (`appendfsync always`), so a restart, even after SIGKILL, keeps
    /// everything it acknowledged.
    pub async fn start_persistent() -> Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let data = tempfile::tempdir()?;
        let (process, scratch) = Self::spawn(addr, Some(data.path()), None).await?;
        Ok(RedisServer {
            addr,
            process: Some(process),
            data: Some(data),
            replica_of: None,
            scratch,
        })
    }

    /// Whether this server keeps its data over a restart.
    pub fn is_persistent(&self) -> bool {
        self.data.is_some()
    }

    /// Starts a server stopped by [`Self::stop`] again on the same port (with the data it
    /// persisted, if it is persistent) and waits until it answers PING.
    pub async fn start_again(&mut self) -> Result<()> {
        anyhow::ensure!(self.process.is_none(), "redis-server is still running");
        let dir = self.data.as_ref().map(|d| d.path().to_path_buf());
        let (process, scratch) = Self::spawn(self.addr, dir.as_deref(), self.replica_of).await?;
        self.process = Some(process);
        self.scratch = scratch;
        Ok(())
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown) and waits until it is gone.
    pub async fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill_and_wait().await;
        }
    }

    /// Stops the server (SIGSTOP) without closing its connections: it answers nothing until
    /// [`Self::resume`].
    pub fn pause(&self) -> Result<()> {
        self.process
            .as_ref()
            .context("redis-server is not running")?
            .pause()
    }

    /// Lets a paused server answer again.
    pub fn resume(&self) -> Result<()> {
        self.process
            .as_ref()
            .context("redis-server is not running")?
            .resume()
    }

    /// Kills the server and starts it again on the same port, empty unless it is persistent, and
    /// waits until it answers PING.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await;
        self.start_again().await
    }

    async fn spawn(
        addr: SocketAddr,
        data: Option<&std::path::Path>,
        replica_of: Option<SocketAddr>,
    ) -> Result<(Process, Option<tempfile::TempDir>)> {
        let port = addr.port().to_string();
        let mut args = vec!["--port", &port, "--bind", "127.0.0.1", "--save", ""];
        let primary_port = replica_of.map(|p| p.port().to_string());
        if let Some(primary_port) = &primary_port {
            args.extend(["--replicaof", "127.0.0.1", primary_port]);
        }
        let dir;
        match data {
            Some(path) => {
                dir = path.to_string_lossy().to_string();
                args.extend([
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--dir",
                    &dir,
                ]);
            }
            None => args.extend(["--appendonly", "no"]),
        }
        let scratch = match data {
            Some(_) => None,
            None => Some(tempfile::tempdir()?),
        };
        let scratch_dir = scratch
            .as_ref()
            .map(|d| d.path().to_string_lossy().to_string());
        if let Some(scratch_dir) = &scratch_dir {
            args.extend(["--dir", scratch_dir]);
        }
        let process = Process::spawn("redis", "redis-server", &args)
            .context("redis-server is needed (Debian package redis-server)")?;
        wait_for(STARTUP, || async move { redis_ping(addr).await }).await?;
        Ok((process, scratch))
    }

    /// The `redis://` URL of this server.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }
}

/// Sends PING in the inline protocol and checks for PONG.
pub async fn redis_ping(addr: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"PING\r\n").await?;
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).await?;
    if &reply != b"+PONG\r\n" {
        bail!("unexpected reply {:?}", String::from_utf8_lossy(&reply));
    }
    Ok(())
}

/// The broker binary to run.
pub fn broker_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("STARLING_BROKER_BIN") {
        return Ok(PathBuf::from(path));
    }
    // Test executables live in target/<profile>/deps; binaries (this crate's local-cluster
    // among them) in target/<profile>.
    let exe = std::env::current_exe()?;
    let exe_dir = exe.parent().context("executable has no directory")?;
    let candidates = [Some(exe_dir), exe_dir.parent()];
    let mut tried = Vec::new();
    for dir in candidates.into_iter().flatten() {
        let path = dir.join("starling-broker");
        if path.exists() {
            return Ok(path);
        }
        tried.push(path.display().to_string());
    }
    bail!(
        "no starling-broker binary at {}: build it with `cargo build -p starling-broker` (or set STARLING_BROKER_BIN)",
        tried.join(" or ")
    )
}

/// A running broker node.
pub struct BrokerNode {
    /// Its node id.
    pub id: String,
    /// Its MQTT TCP address.
    pub mqtt: SocketAddr,
    /// Its admin HTTP address.
    pub admin: SocketAddr,
    /// Its gossip address (cluster nodes only).
    pub gossip: Option<SocketAddr>,
    process: Process,
    /// Its command line, to start it again the same way.
    args: Vec<String>,
    _config: Option<tempfile::NamedTempFile>,
}

/// Cluster settings of a node started by [`BrokerNode::start_clustered`].
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// The shared Redis's URL.
    pub redis_url: String,
    /// Instead of the URL, this `[cluster.redis_sentinel]` table (see
    /// [`sentinel::SentinelRedis::broker_config`]).
    pub redis_sentinel: Option<String>,
    /// This node's gossip address.
    pub gossip: SocketAddr,
    /// Gossip addresses of other nodes.
    pub seeds: Vec<SocketAddr>,
    /// More configuration (TOML) appended to the node's file, e.g. a `[limits]` table.
    pub extra_config: String,
    /// The MQTT address to serve on, when it must be known before the node starts (a balancer
    /// configured ahead); unset: a free port.
    pub mqtt: Option<SocketAddr>,
}

impl ClusterSettings {
    /// Settings for a node with a fresh gossip port.
    pub fn new(redis_url: &str, seeds: &[SocketAddr]) -> Result<Self> {
        Ok(ClusterSettings {
            redis_url: redis_url.to_string(),
            redis_sentinel: None,
            gossip: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            seeds: seeds.to_vec(),
            extra_config: String::new(),
            mqtt: None,
        })
    }
}

impl BrokerNode {
    /// Starts a cluster node (Redis store, gossip) from a configuration file.
    pub async fn start_clustered(id: &str, cluster: &ClusterSettings) -> Result<Self> {
        use std::io::Write;
        let seeds: Vec<String> = cluster.seeds.iter().map(|s| format!("\"{s}\"")).collect();
        let gossip = format!(
            "gossip_bind = \"{}\"\ngossip_seeds = [{}]\n",
            cluster.gossip,
            seeds.join(", ")
        );
        let text = match &cluster.redis_sentinel {
            None => format!(
                "[cluster]\nredis_url = \"{}\"\n{gossip}{}",
                cluster.redis_url, cluster.extra_config
            ),
            Some(sentinel) => format!("[cluster]\n{gossip}{sentinel}{}", cluster.extra_config),
        };
        let mut file = tempfile::NamedTempFile::new()?;
        file.write_all(text.as_bytes())?;
        file.flush()?;
        let path = file.path().to_string_lossy().to_string();
        let mut node = Self::start_at(id, cluster.mqtt, &["--config", &path]).await?;
        node._config = Some(file);
        node.gossip = Some(cluster.gossip);
        Ok(node)
    }

    /// Starts a node with `extra` arguments and waits until `/readyz` answers 200.
    pub async fn start(id: &str, extra: &[&str]) -> Result<Self> {
        Self::start_at(id, None, extra).await
    }

    /// [`Self::start`] serving MQTT on `mqtt` when given (else a free port).
    async fn start_at(id: &str, mqtt: Option<SocketAddr>, extra: &[&str]) -> Result<Self> {
        let mqtt = match mqtt {
            Some(addr) => addr,
            None => SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        };
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut args = vec![
            "--node-id".to_string(),
            id.to_string(),
            "--tcp".to_string(),
            mqtt.to_string(),
            "--admin-bind".to_string(),
            admin.to_string(),
            "--log-level".to_string(),
            // Info: connections closing, takeovers and hand-overs, which a failed test's
            // printed output (see `Process`) needs to be understood.
            std::env::var("E2E_LOG_LEVEL").unwrap_or_else(|_| "info".to_string()),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let process = Self::spawn(id, admin, &args).await?;
        Ok(BrokerNode {
            id: id.to_string(),
            mqtt,
            admin,
            gossip: None,
            process,
            args,
            _config: None,
        })
    }

    async fn spawn(id: &str, admin: SocketAddr, args: &[String]) -> Result<Process> {
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let binary = broker_binary()?;
        let process = Process::spawn(id, &binary.to_string_lossy(), &arg_refs)?;
        wait_for(STARTUP, || async move {
            match http_get(admin, "/readyz").await?.0 {
                200 => Ok(()),
                status => bail!("/readyz answered {status}"),
            }
        })
        .await
        .with_context(|| format!("node {id} did not become ready"))?;
        Ok(process)
    }

    /// Kills the node with SIGKILL (a crash, no drain).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Kills the node with SIGKILL and waits until it is gone (its ports are free again).
    pub async fn kill_and_wait(&mut self) {
        self.process.kill_and_wait().await;
    }

    /// Asks the node to shut down (SIGTERM: it drains its connections) and waits at most
    /// `within` for it to exit.
    pub async fn terminate(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        self.process.terminate()?;
        self.process.wait(within).await
    }

    /// Stops the node (SIGSTOP) until [`Self::resume`]: its sockets stay open, it answers
    /// nothing, gossip included.
    pub fn pause(&self) -> Result<()> {
        self.process.pause()
    }

    /// Lets a paused node run again (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.process.resume()
    }

    /// Whether the node's process runs (it was not killed or stopped through this handle).
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// Starts a node that was killed or terminated again: the same id, ports and configuration;
    /// waits until `/readyz` answers 200.
    pub async fn restart(&mut self) -> Result<()> {
        anyhow::ensure!(!self.is_running(), "{} is still running", self.id);
        self.process = Self::spawn(&self.id, self.admin, &self.args).await?;
        Ok(())
    }

    /// The status `/readyz` answers now.
    pub async fn readyz(&self) -> Result<u16> {
        Ok(http_get(self.admin, "/readyz").await?.0)
    }

    /// Waits until `/readyz` answers `status`.
    pub async fn wait_for_readyz(&self, status: u16, within: Duration) -> Result<()> {
        wait_for(within, || async move {
            let got = self.readyz().await?;
            anyhow::ensure!(got == status, "{} /readyz answered {got}", self.id);
            Ok(())
        })
        .await
    }

    /// Waits until this node's gossip sees exactly `members` nodes (itself included).
    pub async fn wait_for_members(&self, members: usize, within: Duration) -> Result<()> {
        wait_for(within, || async move {
            let seen = self.metric("starling_cluster_members").await?;
            anyhow::ensure!(seen == members as f64, "{} sees {seen} members", self.id);
            Ok(())
        })
        .await
    }

    /// Waits until this node's unlabelled metric `name` reaches at least `at_least`.
    pub async fn wait_for_metric(&self, name: &str, at_least: f64, within: Duration) -> Result<()> {
        wait_for(within, || async move {
            let value = self.metric(name).await?;
            anyhow::ensure!(value >= at_least, "{}: {name} is {value}", self.id);
            Ok(())
        })
        .await
    }

    /// Reads one unlabelled metric from `/metrics`.
    pub async fn metric(&self, name: &str) -> Result<f64> {
        let (_, body) = http_get(self.admin, "/metrics").await?;
        body.lines()
            .find_map(|line| {
                let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
                rest.trim().parse::<f64>().ok()
            })
            .with_context(|| format!("metric {name} not found"))
    }
}

/// A running HAProxy balancing TCP connections round-robin over some backends.
pub struct Haproxy {
    /// The frontend address clients connect to.
    pub addr: SocketAddr,
    _config: tempfile::NamedTempFile,
    _process: Process,
}

impl Haproxy {
    /// Starts HAProxy in front of `backends` on a free loopback port and waits until its
    /// frontend accepts connections.
    pub async fn start(backends: &[SocketAddr]) -> Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], free_port()?)), backends).await
    }

    /// Starts HAProxy listening on `addr` in front of `backends`.
    pub async fn start_on(addr: SocketAddr, backends: &[SocketAddr]) -> Result<Self> {
        Self::start_with(addr, backends, "").await
    }

    /// Starts HAProxy in front of `backends`, each checked (a TCP connect every 500 ms) and
    /// left out while it does not answer: backends may be configured before they start.
    pub async fn start_checked(backends: &[SocketAddr]) -> Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        Self::start_with(addr, backends, " check inter 500ms fall 1 rise 1").await
    }

    async fn start_with(
        addr: SocketAddr,
        backends: &[SocketAddr],
        server_options: &str,
    ) -> Result<Self> {
        use std::io::Write;
        let mut config = tempfile::NamedTempFile::new()?;
        let mut text = format!(
            "global\n  maxconn 8000\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n\nfrontend mqtt\n  bind {addr}\n  maxconn 8000\n  default_backend nodes\n\nbackend nodes\n  balance roundrobin\n"
        );
        for (i, backend) in backends.iter().enumerate() {
            text.push_str(&format!("  server node{i} {backend}{server_options}\n"));
        }
        config.write_all(text.as_bytes())?;
        config.flush()?;
        let path = config.path().to_string_lossy().to_string();
        let process = Process::spawn("haproxy", "haproxy", &["-db", "-f", &path])
            .context("haproxy is needed (Debian package haproxy)")?;
        wait_for(STARTUP, || async move {
            TcpStream::connect(addr).await?;
            Ok(())
        })
        .await?;
        Ok(Haproxy {
            addr,
            _config: config,
            _process: process,
        })
    }
}

/// A plain HTTP/1.1 GET; returns the status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    http_request(addr, "GET", path, None).await
}

/// One HTTP/1.1 request without a body (`Connection: close`), with a bearer token if given;
/// returns the status and the body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let authorization = bearer
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
