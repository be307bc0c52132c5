//! The operator's managed Redis with Sentinel, its start scripts run as they are in the pods:
//! three "pods" on loopback (127.0.0.11–13, one port each for Redis and for the sentinels, as
//! pods share port numbers), each a `redis-server` and a `redis-sentinel` (Debian's) started by
//! the scripts of the StatefulSet the operator builds, with its environment and arguments.
//!
//! - A new group makes pod 0 the primary, the others its replicas, and the three sentinels
//!   find one another.
//! - The primary pod killed (SIGKILL, its emptyDirs gone) and started again at once: its Redis
//!   must not come back as primary (it is empty) but wait until the sentinels promote a
//!   replica, then rejoin as that replica's replica. Nothing written with `WAIT` is lost, and
//!   the time to the promotion is printed.
//! - A replica pod killed and started again rejoins the same primary; no failover.

use anyhow::{bail, ensure, Context, Result};
use e2e::{free_port, wait_for, Process};
use starling_operator::crd::MqttCluster;
use starling_operator::resources::redis::{config_for, sentinel};
use starling_operator::resources::Cluster;
use std::time::{Duration, Instant};

const PASSWORD: &str = "managed-sentinel-test";
const IPS: [&str; 3] = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];
/// Keys written (and waited for on both replicas) before the primary is killed.
const KEYS: usize = 500;
/// How long a promotion or a resync may take (the sentinels decide after 1 s).
const SETTLE: Duration = Duration::from_secs(40);

/// The cluster the operator would see: a managed Redis with Sentinel that fails over after 1 s.
fn cluster_object() -> Result<MqttCluster> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "mqtt.starling.dev/v1alpha1",
        "kind": "MqttCluster",
        "metadata": {"name": "demo", "namespace": "iot", "uid": "5d1c6b1e-0000-4000-8000-000000000001"},
        "spec": {"redis": {"managed": {"sentinel": {"downAfterMilliseconds": 1000}}}},
    }))?)
}

/// What each of the pod's containers runs: (command + arguments, environment).
struct Launch {
    argv: Vec<String>,
    env: Vec<(String, String)>,
}

/// The Redis and the Sentinel container of the operator's StatefulSet.
fn launches() -> Result<(Launch, Launch)> {
    let object = cluster_object()?;
    let cluster = Cluster::new(&object)?;
    let set = sentinel::stateful_set(&cluster).context("a StatefulSet")?;
    let pod = set.spec.template.spec.context("a pod")?;
    let mut launches = pod.containers.into_iter().map(|c| {
        let mut argv = c.command.unwrap_or_default();
        argv.extend(c.args.unwrap_or_default());
        let env = c
            .env
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| Some((e.name, e.value?)))
            .collect();
        Launch { argv, env }
    });
    let redis = launches.next().context("a Redis container")?;
    let sentinel = launches.next().context("a Sentinel container")?;
    Ok((redis, sentinel))
}

/// A port free on all three addresses.
fn port_free_on_all() -> Result<u16> {
    for _ in 0..100 {
        let port = free_port()?;
        if IPS
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok())
        {
            return Ok(port);
        }
    }
    bail!("no port free on {IPS:?}")
}

/// One pod: its two processes and its volumes (new ones when it is made again).
struct Pod {
    index: usize,
    redis: Option<Process>,
    sentinel: Option<Process>,
    _volumes: tempfile::TempDir,
}

struct Group {
    redis: Launch,
    sentinel: Launch,
    redis_port: u16,
    sentinel_port: u16,
    pods: Vec<Pod>,
}

impl Group {
    fn start() -> Result<Self> {
        let (redis, sentinel) = launches()?;
        let mut group = Group {
            redis,
            sentinel,
            redis_port: port_free_on_all()?,
            sentinel_port: port_free_on_all()?,
            pods: Vec::new(),
        };
        for index in 0..IPS.len() {
            let pod = group.make_pod(index)?;
            group.pods.push(pod);
        }
        Ok(group)
    }

    /// Starts pod `index` as the kubelet would: new emptyDirs, the Secret's files, both
    /// containers at once.
    fn make_pod(&self, index: usize) -> Result<Pod> {
        let volumes = tempfile::tempdir()?;
        let auth = volumes.path().join("auth");
        let conf = volumes.path().join("conf");
        let data = volumes.path().join("data");
        for dir in [&auth, &conf, &data] {
            std::fs::create_dir(dir)?;
        }
        std::fs::write(auth.join("password"), PASSWORD)?;
        std::fs::write(auth.join("redis.conf"), config_for(PASSWORD))?;
        let ip = IPS[index];
        let overrides = [
            ("REDIS_SELF", ip.to_string()),
            ("REDIS_PEERS", IPS.join(" ")),
            ("REDIS_PORT", self.redis_port.to_string()),
            ("SENTINEL_PORT", self.sentinel_port.to_string()),
            ("REDIS_PASSWORD_FILE", path(&auth.join("password"))),
            ("REDIS_AUTH_CONF", path(&auth.join("redis.conf"))),
            ("REDIS_CONF_DIR", path(&conf)),
            ("REDIS_DATA_DIR", path(&data)),
        ];
        let spawn = |name: &str, launch: &Launch| -> Result<Process> {
            let mut args: Vec<String> = Vec::new();
            for (key, value) in &launch.env {
                let value = overrides
                    .iter()
                    .find(|(k, _)| k == key)
                    .map_or(value.clone(), |(_, v)| v.clone());
                args.push(format!("{key}={value}"));
            }
            for (key, value) in &overrides {
                if !launch.env.iter().any(|(k, _)| k == key) {
                    args.push(format!("{key}={value}"));
                }
            }
            args.extend(launch.argv.iter().cloned());
            // Each pod has its own address; pods share the port numbers.
            args.extend(["--bind".to_string(), ip.to_string()]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Process::spawn(&format!("pod{index}-{name}"), "env", &args)
        };
        Ok(Pod {
            index,
            redis: Some(spawn("redis", &self.redis)?),
            sentinel: Some(spawn("sentinel", &self.sentinel)?),
            _volumes: volumes,
        })
    }

    /// Kills pod `index` (SIGKILL of both containers) and makes it again at once.
    async fn kill_and_remake(&mut self, index: usize) -> Result<()> {
        let pod = &mut self.pods[index];
        for process in [&mut pod.redis, &mut pod.sentinel].into_iter().flatten() {
            process.kill_and_wait().await;
        }
        self.pods[index] = self.make_pod(index)?;
        Ok(())
    }
}

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

async fn connection(ip: &str, port: u16) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://:{PASSWORD}@{ip}:{port}/"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// Runs one command on `ip:port`.
async fn query<T: redis::FromRedisValue>(ip: &str, port: u16, args: &[&str]) -> Result<T> {
    let mut conn = connection(ip, port).await?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    Ok(cmd.query_async(&mut conn).await?)
}

/// A field of `INFO replication`.
async fn replication_field(ip: &str, port: u16, field: &str) -> Result<String> {
    let info: String = query(ip, port, &["INFO", "replication"]).await?;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("no {field} in INFO of {ip}"))
}

/// What one sentinel says of the group: (primary, replicas, other sentinels).
async fn sentinel_view(ip: &str, port: u16) -> Result<(String, u32, u32)> {
    let fields: Vec<String> = query(ip, port, &["SENTINEL", "MASTER", "demo"]).await?;
    let get = |key: &str| -> Result<String> {
        let at = fields
            .iter()
            .position(|f| f == key)
            .with_context(|| format!("no {key} from sentinel {ip}"))?;
        fields.get(at + 1).cloned().context("no value")
    };
    Ok((
        get("ip")?,
        get("num-slaves")?.parse()?,
        get("num-other-sentinels")?.parse()?,
    ))
}

/// Waits until `primary` has the two others as online replicas and every sentinel names it
/// with two replicas and two other sentinels (no stale or doubled entry).
async fn wait_for_group(group: &Group, primary: &str) -> Result<()> {
    let (rp, sp) = (group.redis_port, group.sentinel_port);
    wait_for(SETTLE, || async move {
        ensure!(replication_field(primary, rp, "role").await? == "master");
        let online = replication_field(primary, rp, "connected_slaves").await?;
        ensure!(online == "2", "{primary} has {online} replicas");
        for ip in IPS {
            if ip != primary {
                let link = replication_field(ip, rp, "master_link_status").await?;
                ensure!(link == "up", "{ip}'s link is {link}");
                let host = replication_field(ip, rp, "master_host").await?;
                ensure!(host == primary, "{ip} replicates {host}");
            }
            let view = sentinel_view(ip, sp).await?;
            ensure!(
                view == (primary.to_string(), 2, 2),
                "sentinel {ip} says {view:?}"
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn scripts_elect_pod_zero_fail_over_a_killed_primary_and_lose_nothing_waited_for(
) -> Result<()> {
    let mut group = Group::start()?;
    let (rp, sp) = (group.redis_port, group.sentinel_port);
    wait_for_group(&group, IPS[0])
        .await
        .context("a new group makes pod 0 the primary")?;

    // Writes acknowledged by both replicas.
    let mut conn = connection(IPS[0], rp).await?;
    let mut pipe = redis::pipe();
    for i in 0..KEYS {
        pipe.cmd("SET").arg(format!("k{i}")).arg(i).ignore();
    }
    pipe.cmd("WAIT").arg(2).arg(5000);
    let (acked,): (i64,) = pipe.query_async(&mut conn).await?;
    ensure!(acked == 2, "WAIT answered {acked}");
    drop(conn);

    // The primary pod dies and is made again at once, empty.
    let killed = Instant::now();
    group.kill_and_remake(0).await?;
    // Until the sentinels promote a replica, pod 0's Redis must never answer as primary.
    let mut promoted = None;
    let deadline = killed + SETTLE;
    while Instant::now() < deadline {
        if let Ok(role) = replication_field(IPS[0], rp, "role").await {
            ensure!(
                role != "master",
                "the emptied primary came back as primary after {:?}",
                killed.elapsed()
            );
        }
        if let Ok((primary, _, _)) = sentinel_view(IPS[1], sp).await {
            if primary != IPS[0] {
                promoted = Some((primary, killed.elapsed()));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (primary, after) = promoted.context("no replica promoted")?;
    println!("managed sentinel: {primary} promoted {after:?} after the primary was killed");
    wait_for_group(&group, &primary)
        .await
        .context("the remade pod 0 rejoins as a replica and the sentinels agree")?;

    // Nothing lost, on the new primary and on the rejoined pod 0.
    for ip in [primary.as_str(), IPS[0]] {
        let size: usize = query(ip, rp, &["DBSIZE"]).await?;
        ensure!(size == KEYS, "{ip} holds {size} of {KEYS} keys");
        let last: String = query(ip, rp, &["GET", &format!("k{}", KEYS - 1)]).await?;
        ensure!(last == (KEYS - 1).to_string());
    }

    // A replica pod killed and made again rejoins; the primary stays.
    let replica = IPS
        .iter()
        .position(|ip| *ip != primary && *ip != IPS[0])
        .context("a replica")?;
    group.kill_and_remake(replica).await?;
    wait_for_group(&group, &primary)
        .await
        .context("a remade replica pod rejoins the same primary")?;
    let size: usize = query(IPS[replica], rp, &["DBSIZE"]).await?;
    ensure!(size == KEYS, "the remade replica holds {size} keys");
    for pod in &group.pods {
        ensure!(
            pod.redis.as_ref().is_some_and(Process::is_running),
            "pod {}",
            pod.index
        );
    }
    Ok(())
}
