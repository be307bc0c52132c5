//! The operator's managed Redis with Sentinel, its start scripts run as they are in the pods:
//! three "pods" on loopback (127.0.0.11–13, one port each for Redis and for the sentinels, as
//! pods share port numbers), each a `redis-server` and a `redis-sentinel` (Debian's) started by
//! the scripts of the StatefulSet the operator builds, with its environment and arguments,
//! under busybox's shell and tools as in the Redis image (Debian package busybox-static).
//!
//! - A new group makes pod 0 the primary, the others its replicas, and the three sentinels
//!   find one another.
//! - The primary pod killed (SIGKILL, its emptyDirs gone) and started again at once: its Redis
//!   must not come back as primary (it is empty) but wait until the sentinels promote a
//!   replica, then rejoin as that replica's replica. Nothing written with `WAIT` is lost, and
//!   the time to the promotion is printed.
//! - A replica pod killed and started again rejoins the same primary; no failover.
//! - The primary's pod stopped on purpose: its preStop hook (run as the kubelet would) pauses
//!   writes, lets a replica catch up and has another pod's sentinel promote it before the pod
//!   stops; a client writing with `WAIT 1` throughout, following the sentinels, loses nothing
//!   it was acknowledged. The hand-over time is printed.

use anyhow::{bail, ensure, Context, Result};
use e2e::{free_port, wait_for, Process};
use starling_operator::crd::MqttCluster;
use starling_operator::redis_health;
use starling_operator::resources::redis::{config_for, sentinel};
use starling_operator::resources::Cluster;
use std::time::{Duration, Instant};

const PASSWORD: &str = "managed-sentinel-test";
/// What the scripts call that the Redis image's busybox provides.
const APPLETS: &[&str] = &[
    "sh", "awk", "sed", "grep", "tr", "cut", "cat", "ls", "sleep", "timeout", "sha1sum", "printf",
    "date", "rm",
];

/// A directory of busybox applets, first on the scripts' PATH (redis-server, redis-sentinel
/// and redis-cli come from the system's).
fn busybox_applets() -> Result<tempfile::TempDir> {
    let busybox = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("busybox"))
        .find(|path| path.is_file())
        .context(
            "busybox is needed (Debian package busybox-static; scripts/test.sh installs it)",
        )?;
    let dir = tempfile::tempdir()?;
    for applet in APPLETS {
        std::os::unix::fs::symlink(&busybox, dir.path().join(applet))?;
    }
    Ok(dir)
}
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

/// The Redis and the Sentinel container of the operator's StatefulSet, and the Redis
/// container's preStop hook and readiness probe (run with that container's environment).
fn launches() -> Result<(Launch, Launch, Launch, Launch)> {
    let object = cluster_object()?;
    let cluster = Cluster::new(&object)?;
    let set = sentinel::stateful_set(&cluster).context("a StatefulSet")?;
    let pod = set.spec.template.spec.context("a pod")?;
    let env_of = |c: &k8s_openapi::api::core::v1::Container| -> Vec<(String, String)> {
        c.env
            .iter()
            .flatten()
            .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
            .collect()
    };
    let mut containers = pod.containers.into_iter();
    let redis = containers.next().context("a Redis container")?;
    let sentinel = containers.next().context("a Sentinel container")?;
    let hook = redis
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.clone())
        .context("the Redis container's preStop hook")?;
    let ready = redis
        .readiness_probe
        .as_ref()
        .and_then(|p| p.exec.as_ref())
        .and_then(|e| e.command.clone())
        .context("the Redis container's readiness probe")?;
    let launch = |c: &k8s_openapi::api::core::v1::Container| {
        let mut argv = c.command.clone().unwrap_or_default();
        argv.extend(c.args.clone().unwrap_or_default());
        Launch {
            argv,
            env: env_of(c),
        }
    };
    Ok((
        launch(&redis),
        launch(&sentinel),
        Launch {
            argv: hook,
            env: env_of(&redis),
        },
        Launch {
            argv: ready,
            env: env_of(&redis),
        },
    ))
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
    volumes: tempfile::TempDir,
}

struct Group {
    applets: tempfile::TempDir,
    redis: Launch,
    sentinel: Launch,
    handover: Launch,
    ready: Launch,
    redis_port: u16,
    sentinel_port: u16,
    pods: Vec<Pod>,
}

impl Group {
    fn start() -> Result<Self> {
        let (redis, sentinel, handover, ready) = launches()?;
        let mut group = Group {
            applets: busybox_applets()?,
            redis,
            sentinel,
            handover,
            ready,
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
        for dir in ["auth", "conf", "data"] {
            std::fs::create_dir(volumes.path().join(dir))?;
        }
        let auth = volumes.path().join("auth");
        std::fs::write(auth.join("password"), PASSWORD)?;
        std::fs::write(auth.join("redis.conf"), config_for(PASSWORD))?;
        Ok(Pod {
            index,
            redis: Some(self.spawn(index, volumes.path(), "redis", &self.redis, true)?),
            sentinel: Some(self.spawn(index, volumes.path(), "sentinel", &self.sentinel, true)?),
            volumes,
        })
    }

    /// Runs `launch` as pod `index`'s, with its environment, addresses and volumes under
    /// `volumes`; a server (`bind`) is bound to the pod's address.
    fn spawn(
        &self,
        index: usize,
        volumes: &std::path::Path,
        name: &str,
        launch: &Launch,
        bind: bool,
    ) -> Result<Process> {
        let ip = IPS[index];
        let dir = |d: &str| path(&volumes.join(d));
        let overrides = [
            ("REDIS_SELF", ip.to_string()),
            ("REDIS_PEERS", IPS.join(" ")),
            ("REDIS_PORT", self.redis_port.to_string()),
            ("SENTINEL_PORT", self.sentinel_port.to_string()),
            ("REDIS_PASSWORD_FILE", path(&volumes.join("auth/password"))),
            ("REDIS_AUTH_CONF", path(&volumes.join("auth/redis.conf"))),
            ("REDIS_CONF_DIR", dir("conf")),
            ("REDIS_DATA_DIR", dir("data")),
            ("REDIS_LOCAL", ip.to_string()),
            (
                "PATH",
                format!(
                    "{}:{}",
                    self.applets.path().display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            ),
        ];
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
        if bind {
            // Each pod has its own address; pods share the port numbers.
            args.extend(["--bind".to_string(), ip.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Process::spawn(&format!("pod{index}-{name}"), "env", &args)
    }

    /// Runs pod `index`'s preStop hook, as the kubelet does before it stops the pod, and waits
    /// for it to end.
    async fn run_handover(&self, index: usize) -> Result<()> {
        let pod = &self.pods[index];
        let mut hook = self.spawn(index, pod.volumes.path(), "handover", &self.handover, false)?;
        let status = hook.wait(Duration::from_secs(45)).await?;
        ensure!(status.success(), "the preStop hook ended with {status}");
        Ok(())
    }

    /// Whether pod `index`'s Redis container passes its readiness probe now.
    async fn ready(&self, index: usize) -> Result<bool> {
        let pod = &self.pods[index];
        let mut probe = self.spawn(index, pod.volumes.path(), "ready", &self.ready, false)?;
        Ok(probe.wait(Duration::from_secs(10)).await?.success())
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
    // The readiness probe: the primary and its linked replicas are ready.
    for index in 0..IPS.len() {
        ensure!(
            group.ready(index).await?,
            "pod {index} not ready in a whole group"
        );
    }

    // What the operator's status reads from the sentinels.
    let sentinels: Vec<String> = IPS.iter().map(|ip| format!("{ip}:{sp}")).collect();
    // (The sentinels learn a replica's link from its own INFO, polled every 10 s.)
    assert_replicated(&sentinels, IPS[0]).await?;
    let wrong = redis_health::ask(sentinels.clone(), "demo".into(), "wrong".into()).await;
    ensure!(
        redis_health::assess(&wrong, 3).1 == "SentinelsUnreachable",
        "a wrong password: {wrong:?}"
    );

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
    // Its Redis waits (the sentinels still name it): not ready.
    ensure!(!group.ready(0).await?, "a waiting pod counted ready");
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
    assert_replicated(&sentinels, &primary)
        .await
        .context("after the failover")?;

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

    // A planned stop of the primary's pod: its preStop hook hands over while a client writes
    // with WAIT 1, following the sentinels; then the pod stops and is made again.
    let old = IPS
        .iter()
        .position(|ip| *ip == primary)
        .context("the primary's pod")?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = tokio::spawn(write_following_the_sentinels(
        sentinels.clone(),
        rp,
        stop.clone(),
        progress.clone(),
    ));
    let acked_before = || progress.load(std::sync::atomic::Ordering::Relaxed);
    wait_for(SETTLE, || async {
        ensure!(
            acked_before() >= 200,
            "{} writes acknowledged",
            acked_before()
        );
        Ok(())
    })
    .await?;
    let started = Instant::now();
    group.run_handover(old).await?;
    let handed = started.elapsed();
    let (now, _, _) = sentinel_view(IPS[(old + 1) % 3], sp).await?;
    ensure!(
        now != primary,
        "the hook ended after {handed:?} with {primary} still the primary"
    );
    println!("managed sentinel: planned hand-over from {primary} to {now} in {handed:?}");
    group.kill_and_remake(old).await?;
    wait_for_group(&group, &now)
        .await
        .context("after the planned hand-over, the remade pod rejoins")?;
    let at_rejoin = acked_before();
    wait_for(SETTLE, || async {
        ensure!(
            acked_before() >= at_rejoin + 200,
            "no writes after the rejoin"
        );
        Ok(())
    })
    .await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = writer.await??;
    ensure!(acked.len() > 10, "only {} writes acknowledged", acked.len());
    let mut conn = connection(&now, rp).await?;
    let mut missing = Vec::new();
    for key in &acked {
        let exists: bool = redis::cmd("EXISTS").arg(key).query_async(&mut conn).await?;
        if !exists {
            missing.push(key.clone());
        }
    }
    ensure!(
        missing.is_empty(),
        "{} of {} writes acknowledged by a replica are missing after the hand-over: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    println!(
        "managed sentinel: {} writes acknowledged with WAIT 1 across the hand-over, none lost",
        acked.len()
    );
    Ok(())
}

/// Waits until what the operator's status reads from the sentinels says the group is
/// replicated with `primary` the primary.
async fn assert_replicated(sentinels: &[String], primary: &str) -> Result<()> {
    wait_for(SETTLE, || async {
        let view = redis_health::ask(sentinels.to_vec(), "demo".into(), PASSWORD.into()).await;
        let (ok, reason, message) = redis_health::assess(&view, 3);
        ensure!(ok, "{reason}: {message}");
        ensure!(
            message.starts_with(&format!("the brokers use primary {primary};")),
            "{message}"
        );
        Ok(())
    })
    .await
}

/// Writes keys `w<n>` one at a time, each followed by `WAIT 1`, to the primary the sentinels
/// name (asked again after any error) until `stop`; returns the keys a replica acknowledged.
async fn write_following_the_sentinels(
    sentinels: Vec<String>,
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    progress: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Result<Vec<String>> {
    let mut acked = Vec::new();
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let primary =
            match redis_health::ask(sentinels.clone(), "demo".into(), PASSWORD.into()).await {
                Ok(view) => view.primary,
                Err(_) => continue,
            };
        let Ok(mut conn) = connection(&primary, port).await else {
            continue;
        };
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            n += 1;
            let key = format!("w{n}");
            let mut pipe = redis::pipe();
            pipe.cmd("SET").arg(&key).arg(n).ignore();
            pipe.cmd("WAIT").arg(1).arg(1000);
            match pipe.query_async::<(i64,)>(&mut conn).await {
                Ok((replicas,)) if replicas >= 1 => {
                    acked.push(key);
                    progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                // Not held by a replica: not acknowledged (it may or may not survive).
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    Ok(acked)
}
