//! A Redis Cluster on loopback: `redis-server --cluster-enabled yes` processes (Debian's) joined
//! by `redis-cli --cluster create`, for the probes and fault tests of Redis Cluster support
//! (issue #17, docs/redis-schema.md).
//!
//! Each node has its own directory (its `nodes.conf`, and the snapshot a replica writes when it
//! syncs), kept over a restart so that a restarted node rejoins under its id. A node can be
//! killed (SIGKILL), started again on the same port, paused (SIGSTOP) and resumed, and a replica
//! can be told to take over (`CLUSTER FAILOVER`). [`Connection`] is a plain connection to one
//! node through the `redis` crate (not its cluster client: the tests talk to chosen nodes),
//! with a timeout on every reply, so that a paused node cannot hang a test.

use crate::{free_port_pair, wait_for, Process, STARTUP};
use anyhow::{bail, ensure, Context, Result};
use redis::{Cmd, FromRedisValue, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Redis Cluster's bus port is the client port plus this.
pub const BUS_PORT_OFFSET: u16 = 10000;
/// How long connecting, or one reply, may take (a paused node never answers).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long forming the cluster may take (`redis-cli --cluster create` waits in 1 s steps).
pub const FORMING: Duration = Duration::from_secs(60);

/// A `redis` client for the node at `addr` (it connects when asked to).
pub fn client(addr: SocketAddr) -> Result<redis::Client> {
    redis::Client::open(format!("redis://{addr}/"))
        .with_context(|| format!("a redis client for {addr}"))
}

/// A connection to one node: the `redis` crate's multiplexed connection (RESP2), every reply
/// awaited at most [`REPLY_TIMEOUT`].
pub struct Connection {
    /// The node's address.
    pub addr: SocketAddr,
    inner: redis::aio::MultiplexedConnection,
}

impl Connection {
    /// Connects to `addr` (within [`REPLY_TIMEOUT`]).
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        // The crate's own timeouts are off (its 500 ms default for a reply would cut a `WAIT`
        // short): every wait here is bounded by `tokio::time::timeout` instead.
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(None)
            .set_response_timeout(None);
        let client = client(addr)?;
        let inner = tokio::time::timeout(
            REPLY_TIMEOUT,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .with_context(|| format!("connecting to {addr}: timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
        Ok(Connection { addr, inner })
    }

    /// Sends `cmd` and returns its reply as it came (within [`REPLY_TIMEOUT`]): an error reply
    /// is a [`Value::ServerError`], not an `Err`.
    pub async fn reply(&mut self, cmd: &Cmd) -> Result<Value> {
        let addr = self.addr;
        tokio::time::timeout(REPLY_TIMEOUT, self.inner.send_packed_command(cmd))
            .await
            .with_context(|| {
                format!(
                    "no reply to {} from {addr} within {REPLY_TIMEOUT:?}",
                    describe(cmd)
                )
            })?
            .with_context(|| format!("{} at {addr}", describe(cmd)))
    }

    /// Sends `cmd` and converts its reply to `T` (within [`REPLY_TIMEOUT`]); an error reply
    /// is an error.
    pub async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> Result<T> {
        let addr = self.addr;
        let reply = self
            .reply(cmd)
            .await?
            .extract_error()
            .with_context(|| format!("{} at {addr}", describe(cmd)))?;
        redis::from_redis_value(reply)
            .with_context(|| format!("the reply to {} from {addr}", describe(cmd)))
    }
}

/// `cmd`'s arguments, for messages.
fn describe(cmd: &Cmd) -> String {
    let args: Vec<String> = cmd
        .args_iter()
        .map(|arg| match arg {
            redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            _ => "…".to_string(),
        })
        .collect();
    format!("{args:?}")
}

/// Sends `cmd` on a new connection to `addr` and returns its reply as it came (see
/// [`Connection::reply`]).
pub async fn reply(addr: SocketAddr, cmd: &Cmd) -> Result<Value> {
    Connection::connect(addr).await?.reply(cmd).await
}

/// Sends `cmd` on a new connection to `addr` and converts its reply to `T` (see
/// [`Connection::query`]).
pub async fn query<T: FromRedisValue>(addr: SocketAddr, cmd: &Cmd) -> Result<T> {
    Connection::connect(addr).await?.query(cmd).await
}

/// The role `addr` answers `ROLE` with: `master` or `slave`.
pub async fn role(addr: SocketAddr) -> Result<String> {
    let reply: Vec<Value> = query(addr, &redis::cmd("ROLE")).await?;
    let first = reply.first().context("empty ROLE reply")?;
    redis::from_redis_value_ref(first).with_context(|| format!("ROLE at {addr}: {reply:?}"))
}

/// The value of `field` in an `INFO`-style `field:value` text.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.trim_end()
            .strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
    })
}

/// A range of slots and the nodes serving it, as one node sees it (`CLUSTER NODES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    /// First slot.
    pub start: u16,
    /// Last slot (included).
    pub end: u16,
    /// The primary serving the range.
    pub primary: SocketAddr,
    /// Its replicas.
    pub replicas: Vec<SocketAddr>,
}

impl SlotRange {
    /// Whether `slot` is in the range.
    pub fn contains(&self, slot: u16) -> bool {
        (self.start..=self.end).contains(&slot)
    }
}

/// One node of the cluster.
struct Node {
    addr: SocketAddr,
    /// Killed when dropped, before its directory is removed.
    process: Option<Process>,
    /// Its `nodes.conf` and working directory, kept over restarts.
    dir: tempfile::TempDir,
    paused: bool,
}

/// A running Redis Cluster.
pub struct RedisCluster {
    nodes: Vec<Node>,
    node_timeout: Duration,
    replicas_per_primary: usize,
}

impl RedisCluster {
    /// Starts `primaries × (1 + replicas_per_primary)` nodes with `cluster-node-timeout`
    /// `node_timeout`, joins them with `redis-cli --cluster create` (slots spread evenly over
    /// the primaries) and waits until every node says `cluster_state:ok`, knows every other,
    /// and every replica's link to its primary is up.
    pub async fn start(
        primaries: usize,
        replicas_per_primary: usize,
        node_timeout: Duration,
    ) -> Result<Self> {
        ensure!(
            primaries >= 3,
            "redis-cli --cluster create needs 3 primaries or more"
        );
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            node_timeout,
            replicas_per_primary,
        };
        for _ in 0..primaries * (1 + replicas_per_primary) {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port_pair(BUS_PORT_OFFSET)?));
            let dir = tempfile::tempdir()?;
            let process = spawn(addr, dir.path(), node_timeout).await?;
            cluster.nodes.push(Node {
                addr,
                dir,
                process: Some(process),
                paused: false,
            });
        }
        let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr.to_string()).collect();
        let replicas = replicas_per_primary.to_string();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", &replicas, "--cluster-yes"]);
        let output = tokio::time::timeout(
            FORMING,
            tokio::process::Command::new("redis-cli")
                .args(&args)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .context("redis-cli --cluster create did not finish")?
        .context("redis-cli is needed (Debian package redis-tools)")?;
        let said = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() || !said.contains("All 16384 slots covered") {
            bail!(
                "redis-cli --cluster create failed: {} {}",
                said.trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        cluster
            .wait_until_healthy(FORMING)
            .await
            .context("the cluster did not form")?;
        Ok(cluster)
    }

    /// The configured `cluster-node-timeout`.
    pub fn node_timeout(&self) -> Duration {
        self.node_timeout
    }

    /// Every node's address, in the order they were started.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// Addresses of the nodes that run and are not paused.
    pub fn live(&self) -> Vec<SocketAddr> {
        self.nodes
            .iter()
            .filter(|n| n.process.is_some() && !n.paused)
            .map(|n| n.addr)
            .collect()
    }

    /// Waits until every live node says `cluster_state:ok`, knows every node, and either serves
    /// slots as a primary or is a replica whose link to its primary is up; until all live nodes
    /// see the same slot map; and, when every node is live, until that map names the
    /// configured number of replicas for every range.
    pub async fn wait_until_healthy(&self, within: Duration) -> Result<()> {
        let live = self.live();
        let total = self.nodes.len().to_string();
        let all_live = live.len() == self.nodes.len();
        let replicas = self.replicas_per_primary;
        wait_for(within, || {
            let (live, total) = (&live, &total);
            async move {
                for &addr in live {
                    let info = query::<String>(addr, redis::cmd("CLUSTER").arg("INFO")).await?;
                    let state = info_field(&info, "cluster_state");
                    ensure!(state == Some("ok"), "{addr}: cluster_state {state:?}");
                    let known = info_field(&info, "cluster_known_nodes");
                    ensure!(
                        known == Some(total.as_str()),
                        "{addr}: cluster_known_nodes {known:?}"
                    );
                    let nodes: String = query(addr, redis::cmd("CLUSTER").arg("NODES")).await?;
                    let myself = nodes
                        .lines()
                        .map(|l| l.split(' ').collect::<Vec<_>>())
                        .find(|f| f.get(2).is_some_and(|flags| flags.contains("myself")))
                        .context("CLUSTER NODES without myself")?;
                    let flags = myself.get(2).copied().unwrap_or_default();
                    if flags.contains("master") {
                        ensure!(myself.len() > 8, "{addr} is a primary without slots");
                    } else {
                        let replication: String =
                            query(addr, redis::cmd("INFO").arg("replication")).await?;
                        let link = info_field(&replication, "master_link_status");
                        ensure!(link == Some("up"), "{addr}: master_link_status {link:?}");
                    }
                }
                let first = *live.first().context("no live node")?;
                let map = slot_map_of(first).await?;
                for &addr in &live[1..] {
                    ensure!(
                        slot_map_of(addr).await? == map,
                        "{addr} and {first} see different slot maps"
                    );
                }
                if all_live {
                    for range in map {
                        ensure!(
                            range.replicas.len() == replicas,
                            "{first} sees slots {}-{} with {} replicas",
                            range.start,
                            range.end,
                            range.replicas.len()
                        );
                    }
                }
                Ok(())
            }
        })
        .await
    }

    /// The first live node that answers.
    async fn any_live(&self) -> Result<SocketAddr> {
        let mut last = None;
        for addr in self.live() {
            match query::<String>(addr, &redis::cmd("PING")).await {
                Ok(_) => return Ok(addr),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no live node")))
    }

    /// The slot of `key`, as the cluster computes it (`CLUSTER KEYSLOT`).
    pub async fn slot_of(&self, key: &str) -> Result<u16> {
        let addr = self.any_live().await?;
        let slot: i64 = query(addr, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).await?;
        u16::try_from(slot).context("slot out of range")
    }

    /// The slot map as a live node sees it.
    pub async fn slot_map(&self) -> Result<Vec<SlotRange>> {
        slot_map_of(self.any_live().await?).await
    }

    /// The primary serving `slot`, as a live node sees it.
    pub async fn primary_for_slot(&self, slot: u16) -> Result<SocketAddr> {
        Ok(self.range_of(slot).await?.primary)
    }

    /// The replicas of the primary serving `slot`, as a live node sees it.
    pub async fn replicas_for_slot(&self, slot: u16) -> Result<Vec<SocketAddr>> {
        Ok(self.range_of(slot).await?.replicas)
    }

    async fn range_of(&self, slot: u16) -> Result<SlotRange> {
        self.slot_map()
            .await?
            .into_iter()
            .find(|r| r.contains(slot))
            .with_context(|| format!("no node serves slot {slot}"))
    }

    fn node(&mut self, addr: SocketAddr) -> Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.addr == addr)
            .with_context(|| format!("{addr} is no node of this cluster"))
    }

    /// Kills the node at `addr` (SIGKILL) and waits until it is gone; returns when it was
    /// killed.
    pub async fn kill(&mut self, addr: SocketAddr) -> Result<Instant> {
        let node = self.node(addr)?;
        let mut process = node.process.take().context("the node is not running")?;
        node.paused = false;
        let at = Instant::now();
        process.kill_and_wait().await;
        Ok(at)
    }

    /// Starts a killed node again on its port with its `nodes.conf` (it rejoins under its id)
    /// and waits until it answers PING.
    pub async fn restart(&mut self, addr: SocketAddr) -> Result<()> {
        let node_timeout = self.node_timeout;
        let node = self.node(addr)?;
        ensure!(node.process.is_none(), "{addr} is still running");
        node.process = Some(spawn(addr, node.dir.path(), node_timeout).await?);
        Ok(())
    }

    /// Stops the node at `addr` (SIGSTOP) without closing its sockets; returns when.
    pub fn pause(&mut self, addr: SocketAddr) -> Result<Instant> {
        let node = self.node(addr)?;
        node.process
            .as_ref()
            .context("the node is not running")?
            .pause()?;
        node.paused = true;
        Ok(Instant::now())
    }

    /// Lets a paused node run again (SIGCONT).
    pub fn resume(&mut self, addr: SocketAddr) -> Result<()> {
        let node = self.node(addr)?;
        node.process
            .as_ref()
            .context("the node is not running")?
            .resume()?;
        node.paused = false;
        Ok(())
    }

    /// Tells the replica at `replica` to take over from its primary (`CLUSTER FAILOVER`, the
    /// coordinated manual failover); returns when it was told.
    pub async fn failover(&self, replica: SocketAddr) -> Result<Instant> {
        let at = Instant::now();
        let reply: String = query(replica, redis::cmd("CLUSTER").arg("FAILOVER")).await?;
        ensure!(reply == "OK", "CLUSTER FAILOVER at {replica}: {reply:?}");
        Ok(at)
    }

    /// Waits until a node other than `old` serves `slot` as its primary: it answers `ROLE`
    /// as a master and its own slot map names itself for `slot`. Returns that node and the
    /// time elapsed since `since` (e.g. what [`Self::kill`] returned).
    pub async fn wait_for_primary_change(
        &self,
        slot: u16,
        old: SocketAddr,
        since: Instant,
        within: Duration,
    ) -> Result<(SocketAddr, Duration)> {
        let found = std::cell::Cell::new(None);
        let candidates: Vec<SocketAddr> = self.live().into_iter().filter(|&a| a != old).collect();
        wait_for(within, || {
            let (found, candidates) = (&found, &candidates);
            async move {
                for &addr in candidates {
                    if !role(addr).await.is_ok_and(|role| role == "master") {
                        continue;
                    }
                    let Ok(map) = slot_map_of(addr).await else {
                        continue;
                    };
                    if map.iter().any(|r| r.contains(slot) && r.primary == addr) {
                        found.set(Some((addr, since.elapsed())));
                        return Ok(());
                    }
                }
                bail!("slot {slot} has no new primary yet");
            }
        })
        .await
        .with_context(|| format!("slot {slot} stayed without a new primary"))?;
        found.get().context("no new primary")
    }
}

/// The slot map as `addr` sees it, from `CLUSTER NODES`: every slot range of a primary, with
/// the replicas not held failed. (`CLUSTER SLOTS` of Redis 7.0.15 leaves out a replica whose
/// replication offset it has seen as 0: in a new cluster without writes, every replica until
/// the primaries' first replication PING, 10 s in.)
pub async fn slot_map_of(addr: SocketAddr) -> Result<Vec<SlotRange>> {
    let nodes: String = query(addr, redis::cmd("CLUSTER").arg("NODES")).await?;
    struct Line<'a> {
        id: &'a str,
        addr: SocketAddr,
        flags: Vec<&'a str>,
        primary: &'a str,
        slots: Vec<&'a str>,
    }
    let mut lines = Vec::new();
    for line in nodes.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(id), Some(address), Some(flags), Some(primary)) =
            (fields.first(), fields.get(1), fields.get(2), fields.get(3))
        else {
            bail!("short CLUSTER NODES line {line:?} from {addr}");
        };
        let client = address.split(['@', ',']).next().unwrap_or_default();
        lines.push(Line {
            id,
            addr: client
                .parse()
                .with_context(|| format!("bad node address in {line:?}"))?,
            flags: flags.split(',').collect(),
            primary,
            slots: fields.get(8..).unwrap_or_default().to_vec(),
        });
    }
    let mut ranges = Vec::new();
    for primary in lines.iter().filter(|l| l.flags.contains(&"master")) {
        let replicas: Vec<SocketAddr> = lines
            .iter()
            .filter(|l| l.primary == primary.id && !l.flags.contains(&"fail"))
            .map(|l| l.addr)
            .collect();
        // Importing and migrating slots are shown in brackets; they are not served here.
        for range in primary.slots.iter().filter(|s| !s.starts_with('[')) {
            let (start, end) = range.split_once('-').unwrap_or((range, range));
            let parse = |slot: &str| -> Result<u16> {
                slot.parse()
                    .with_context(|| format!("bad slot range {range:?} from {addr}"))
            };
            ranges.push(SlotRange {
                start: parse(start)?,
                end: parse(end)?,
                primary: primary.addr,
                replicas: replicas.clone(),
            });
        }
    }
    ranges.sort_by_key(|r| r.start);
    Ok(ranges)
}

/// Starts one cluster node on `addr` with its directory `dir` and waits until it answers PING.
async fn spawn(addr: SocketAddr, dir: &std::path::Path, node_timeout: Duration) -> Result<Process> {
    let port = addr.port().to_string();
    let dir = dir.to_string_lossy().to_string();
    let timeout = node_timeout.as_millis().to_string();
    let args = [
        "--port",
        &port,
        "--bind",
        "127.0.0.1",
        "--dir",
        &dir,
        "--save",
        "",
        "--appendonly",
        "no",
        // A replica syncs at once, not after the default 5 s wait for more replicas to join
        // the same diskless transfer: the cluster forms, and a restarted node rejoins, sooner.
        "--repl-diskless-sync-delay",
        "0",
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        &timeout,
    ];
    let process = Process::spawn(&format!("redis-cluster-{port}"), "redis-server", &args)
        .context("redis-server is needed (Debian package redis-server)")?;
    wait_for(STARTUP, || async move {
        let pong: String = query(addr, &redis::cmd("PING")).await?;
        ensure!(pong == "PONG", "PING answered {pong:?}");
        Ok(())
    })
    .await?;
    Ok(process)
}
