//! The fault matrix: a numbered QoS 1 stream through HAProxy to persistent subscribers on a real
//! cluster (redis-server, 2 or 3 broker nodes, HAProxy), MQTT 3.1.1 and 5, while one fault
//! happens: a takeover, a rolling restart, a SIGKILL, a Redis restart (without and with
//! persistence), a Redis replaced as a Kubernetes pod is, a Sentinel failover after the primary
//! is killed, a Redis stall, one node cut off from Redis, a gossip false positive, a scale-down,
//! a node evacuated through the admin API and restarted;
//! and new subscriptions after a Redis restart. Every run asserts that no number the
//! publisher had acknowledged is missing at any subscriber (lost) and that no number came twice
//! with the later copy lacking DUP (dupless), and prints one line with what it saw.
//!
//! `cargo test -p e2e --test fault_matrix` runs a representative subset; the others are
//! `#[ignore]`d (cargo lists them as ignored, with the command below). The whole matrix:
//!
//! ```sh
//! cargo test -p e2e --test fault_matrix -- --include-ignored --test-threads=1 --nocapture
//! ```
//!
//! Environment: `FAULT_MATRIX_REPEAT` runs each cell that many times in a row (default 1; one
//! failure fails the cell), `FAULT_MATRIX_SECS` the stream's length (default 5),
//! `FAULT_MATRIX_RATE` messages per second (default 200), `FAULT_MATRIX_REPORT` a file every
//! run's line is appended to; `E2E_LOG_DIR` keeps the processes' logs, `E2E_LOG_LEVEL` the
//! brokers' log level.

#[path = "support/stream.rs"]
mod stream;

use anyhow::{bail, Context, Result};
use e2e::fault::{Cluster, ClusterOptions, MEMBERSHIP};
use std::future::Future;
use std::time::{Duration, Instant};
use stream::{Stream, Tally, Version};

/// Persistent subscribers per run.
const SUBSCRIBERS: usize = 2;
/// How long Redis stalls, or one node is cut off from it: past the 5 s a publish waits for Redis
/// before it is acknowledged anyway.
const OUTAGE: Duration = Duration::from_secs(7);
/// The stream goes on at least this long after the fault is over.
const AFTER_FAULT: Duration = Duration::from_secs(2);
/// Time allowed for the stream to come back after a fault.
const RESUME: Duration = Duration::from_secs(60);
/// Time allowed for the PUBACKs still due when the publisher stops.
const ACKS_WITHIN: Duration = Duration::from_secs(20);
/// Time allowed for every acknowledged number to reach every subscriber after the publisher
/// stopped.
const DELIVER_WITHIN: Duration = Duration::from_secs(30);
/// Late copies are looked for this long after the last number arrived.
const QUIET: Duration = Duration::from_millis(500);
/// Time allowed for a node to drain and exit after SIGTERM (its drain timeout is 10 s).
const EXIT_WITHIN: Duration = Duration::from_secs(30);
/// Time allowed for announcements of new subscriptions to reach the other nodes.
const ROUTES_WITHIN: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// Each subscriber connects again with its client id on another node mid-stream.
    Takeover,
    /// Each node in turn: SIGTERM, exit, started again with its id and ports.
    RollingRestart,
    /// A subscriber's node (the victim: not the publisher's, if possible) is killed (SIGKILL)
    /// and started again once the others have declared it failed.
    Sigkill,
    /// redis-server killed and started again empty.
    RedisRestart,
    /// redis-server (append-only file, fsync always) killed and started again with its data.
    RedisRestartPersistent,
    /// redis-server replaced as a Kubernetes pod is: killed and started again empty, while the
    /// nodes' connections to it hang for good (never closed, as to a pod IP that is gone) and
    /// new connections reach the new one (through the Service's address).
    RedisReplaced,
    /// redis-server stopped (SIGSTOP) for [`OUTAGE`], then continued.
    RedisStall,
    /// The victim cut off from Redis for [`OUTAGE`] while the others are not.
    RedisCut,
    /// The victim stopped (SIGSTOP) until the others declared it failed, then continued.
    GossipFalsePositive,
    /// The victim gets SIGTERM and never comes back.
    ScaleDown,
    /// The victim is evacuated through the admin API (new clients refused, connected ones asked
    /// to reconnect elsewhere, 50 per second), then, once empty, gets SIGTERM and is started
    /// again: one step of a rolling update as the operator would drive it.
    Evacuate,
    /// Redis run by Sentinel: the primary killed (SIGKILL), a replica promoted; acknowledgements
    /// wait for one replica (`cluster.redis_replication`).
    SentinelFailover,
    /// Redis restarted (empty); then, for each node, subscribers made on it receive from a
    /// publisher on the next node.
    NewSubscriptionsAfterRedisRestart,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Takeover => "takeover",
            Scenario::RollingRestart => "rolling-restart",
            Scenario::Sigkill => "sigkill",
            Scenario::RedisRestart => "redis-restart",
            Scenario::RedisRestartPersistent => "redis-restart-aof",
            Scenario::RedisReplaced => "redis-replaced",
            Scenario::RedisStall => "redis-stall",
            Scenario::RedisCut => "redis-cut-one-node",
            Scenario::GossipFalsePositive => "gossip-false-positive",
            Scenario::ScaleDown => "scale-down",
            Scenario::Evacuate => "evacuate",
            Scenario::SentinelFailover => "sentinel-failover",
            Scenario::NewSubscriptionsAfterRedisRestart => "new-subs-after-redis-restart",
        }
    }
}

/// Settings from the environment.
struct Settings {
    repeat: usize,
    secs: f64,
    rate: u32,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not valid")),
        Err(_) => default,
    }
}

fn settings() -> Settings {
    Settings {
        repeat: env_or("FAULT_MATRIX_REPEAT", 1usize).max(1),
        secs: env_or("FAULT_MATRIX_SECS", 5.0f64),
        rate: env_or("FAULT_MATRIX_RATE", 200u32).max(1),
    }
}

/// One run (or one phase of a run) and what it saw.
struct Outcome {
    label: String,
    nodes: usize,
    version: Version,
    run: String,
    tally: Option<Tally>,
    notes: Vec<String>,
    errors: Vec<String>,
}

impl Outcome {
    fn new(label: &str, nodes: usize, version: Version, run: String) -> Self {
        Outcome {
            label: label.to_string(),
            nodes,
            version,
            run,
            tally: None,
            notes: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Why the run failed; empty when it passed.
    fn failures(&self) -> Vec<String> {
        let mut failures = self.errors.clone();
        let Some(tally) = &self.tally else {
            failures.push("no stream".into());
            return failures;
        };
        for sub in &tally.subs {
            if sub.lost_count > 0 {
                failures.push(format!(
                    "{}: LOST {} acknowledged ({}; last client error: {:?})",
                    sub.id,
                    sub.lost_count,
                    stream::ranges(&sub.lost),
                    sub.last_error
                ));
            }
            if sub.dupless > 0 {
                failures.push(format!(
                    "{}: {} DUP-LESS duplicates ({}; first copies: {})",
                    sub.id,
                    sub.dupless,
                    stream::ranges(&sub.dupless_numbers),
                    sub.dupless_provenance.join("; ")
                ));
            }
            if sub.suback_failures > 0 || sub.garbage > 0 {
                failures.push(format!(
                    "{}: {} refused subscriptions, {} foreign payloads",
                    sub.id, sub.suback_failures, sub.garbage
                ));
            }
        }
        if tally.anomalies > 0 {
            failures.push(format!(
                "the publisher could not attribute {} acknowledgements (run void)",
                tally.anomalies
            ));
        }
        if tally.acked == 0 {
            failures.push("nothing was acknowledged".into());
        }
        failures
    }

    fn line(&self) -> String {
        let mut line = format!(
            "[fault-matrix] {} nodes={} mqtt={} run={}:",
            self.label, self.nodes, self.version, self.run
        );
        if let Some(t) = &self.tally {
            line += &format!(
                " published={} acked={} (unacked {}, refused {}, v5-no-match {}, pub reconnects {}, pub outage {:.2}s)",
                t.published,
                t.acked,
                t.abandoned,
                t.refused,
                t.no_match,
                t.pub_connacks.saturating_sub(1),
                t.pub_outage.as_secs_f64()
            );
            for (k, s) in t.subs.iter().enumerate() {
                line += &format!(
                    " | sub-{k} recv={} lost={} dup={}{} dupless={} gap={:.2}s outage={:.2}s reconnects={} sessions-lost={}",
                    s.received,
                    s.lost_count,
                    s.dup_copies,
                    if s.dup_numbers.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", stream::ranges(&s.dup_numbers))
                    },
                    s.dupless,
                    s.longest_gap.as_secs_f64(),
                    s.longest_outage.as_secs_f64(),
                    s.connacks.saturating_sub(1),
                    s.sessions_lost
                );
            }
            line += &format!(
                " | lost={} dupless={} recovery={:.2}s",
                t.lost(),
                t.dupless(),
                t.recovery().as_secs_f64()
            );
            if !t.complete {
                line +=
                    &format!(" (still incomplete {DELIVER_WITHIN:?} after the publisher stopped)");
            }
            if t.pub_connacks > 1 || t.abandoned > 0 {
                line += &format!(" (publisher's last error: {:?})", t.pub_last_error);
            }
        }
        if !self.notes.is_empty() {
            line += &format!(" | {}", self.notes.join("; "));
        }
        let failures = self.failures();
        if failures.is_empty() {
            line += " | PASS";
        } else {
            line += &format!(" | FAIL: {}", failures.join("; "));
        }
        line
    }
}

/// One test at a time in this binary: the clusters' timing (gossip failure detection above all)
/// must not depend on what another test does to the two cores meanwhile.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs one cell of the matrix `repeat` times, prints every run, fails if any run failed.
fn cell(scenario: Scenario, nodes: usize, version: Version) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let settings = settings();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut failed = Vec::new();
    let log_dir = std::env::var_os("E2E_LOG_DIR").map(std::path::PathBuf::from);
    for run in 1..=settings.repeat {
        if let Some(dir) = &log_dir {
            let name = format!(
                "{}-{nodes}n-{}-r{run}",
                scenario.name(),
                version_tag(version)
            );
            e2e::log_to(Some(dir.join(name)));
        }
        let outcomes = runtime.block_on(run_once(scenario, nodes, version, run, &settings));
        for outcome in outcomes {
            let line = outcome.line();
            println!("{line}");
            if let Ok(path) = std::env::var("FAULT_MATRIX_REPORT") {
                use std::io::Write;
                let written = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .and_then(|mut f| writeln!(f, "{line}"));
                if let Err(e) = written {
                    eprintln!("writing {path}: {e}");
                }
            }
            if !outcome.failures().is_empty() {
                failed.push(line);
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} runs failed:\n{}",
        failed.len(),
        settings.repeat,
        failed.join("\n")
    );
}

fn version_tag(version: Version) -> &'static str {
    match version {
        Version::V311 => "v311",
        Version::V5 => "v5",
    }
}

async fn run_once(
    scenario: Scenario,
    nodes: usize,
    version: Version,
    run: usize,
    settings: &Settings,
) -> Vec<Outcome> {
    let options = ClusterOptions {
        nodes,
        persistent_redis: scenario == Scenario::RedisRestartPersistent,
        proxied_redis: matches!(scenario, Scenario::RedisCut | Scenario::RedisReplaced),
        sentinel: scenario == Scenario::SentinelFailover,
        // Sessions may queue the whole stream: the default of 1,000 per session would drop (and
        // count) what a subscriber misses while it is away.
        extra_config: if scenario == Scenario::SentinelFailover {
            "[cluster.redis_replication]\nwait_replicas = 1\nwait_timeout_ms = 1000\n[limits]\nmax_queued_messages = 100000\n".into()
        } else {
            format!(
                "[limits]\nmax_queued_messages = 100000\n[admin]\ntoken_file = \"{}\"\n",
                admin_token_file().display()
            )
        },
    };
    let run_label = format!("{run}/{}", settings.repeat);
    let cluster = match Cluster::start(&options).await {
        Ok(cluster) => cluster,
        Err(e) => {
            let mut outcome = Outcome::new(scenario.name(), nodes, version, run_label);
            outcome
                .errors
                .push(format!("the cluster did not start: {e:#}"));
            return vec![outcome];
        }
    };
    let prefix = format!(
        "{}-{nodes}n-{}-r{run}",
        scenario.name(),
        version_tag(version)
    );
    if scenario == Scenario::NewSubscriptionsAfterRedisRestart {
        new_subscriptions_after_redis_restart(cluster, version, &prefix, run_label, settings).await
    } else {
        vec![stream_with_fault(scenario, cluster, version, &prefix, run_label, settings).await]
    }
}

/// Runs `connect` (which opens one connection through the load balancer) and returns the index
/// of the node whose connection count went up.
async fn located<F>(cluster: &Cluster, connect: F) -> Result<usize>
where
    F: Future<Output = Result<(), String>>,
{
    let before = cluster.metric("starling_connections").await;
    connect.await.map_err(anyhow::Error::msg)?;
    let found = std::cell::Cell::new(None);
    e2e::wait_for(Duration::from_secs(5), || {
        let (found, before) = (&found, &before);
        async move {
            let now = cluster.metric("starling_connections").await;
            let grown: Vec<usize> = (0..now.len()).filter(|&i| now[i] > before[i]).collect();
            match grown[..] {
                [one] => {
                    found.set(Some(one));
                    Ok(())
                }
                _ => bail!("connections before {before:?}, now {now:?}"),
            }
        }
    })
    .await
    .context("locating the new connection")?;
    found.get().context("no node")
}

/// Waits until every node knows the filter that the subscribers on `hosts` subscribed to, from
/// each of those nodes other than itself.
async fn wait_for_routes(cluster: &Cluster, hosts: &[usize], baseline: &[f64]) -> Result<()> {
    for (x, node) in cluster.nodes.iter().enumerate() {
        let mut others: Vec<usize> = hosts.iter().copied().filter(|&h| h != x).collect();
        others.sort();
        others.dedup();
        if others.is_empty() {
            continue;
        }
        node.wait_for_metric(
            "starling_cluster_remote_entries",
            baseline[x] + others.len() as f64,
            ROUTES_WITHIN,
        )
        .await
        .with_context(|| format!("{} did not learn the subscribers' filter", node.id))?;
    }
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// The stream through HAProxy with one fault in the middle.
async fn stream_with_fault(
    scenario: Scenario,
    mut cluster: Cluster,
    version: Version,
    prefix: &str,
    run: String,
    settings: &Settings,
) -> Outcome {
    let nodes = cluster.nodes.len();
    let mut outcome = Outcome::new(scenario.name(), nodes, version, run);
    let mut stream = Stream::new(version, prefix, SUBSCRIBERS, settings.rate);
    let lb = cluster.lb.addr;

    let baseline = cluster.metric("starling_cluster_remote_entries").await;
    let mut hosts = Vec::new();
    for k in 0..SUBSCRIBERS {
        match located(&cluster, stream.connect_subscriber(k, lb)).await {
            Ok(host) => hosts.push(host),
            Err(e) => {
                outcome.errors.push(format!("sub-{k}: {e:#}"));
                return outcome;
            }
        }
    }
    if let Err(e) = wait_for_routes(&cluster, &hosts, &baseline).await {
        outcome.errors.push(format!("{e:#}"));
        return outcome;
    }
    let publisher = match located(&cluster, stream.start_publisher(lb)).await {
        Ok(host) => host,
        Err(e) => {
            outcome.errors.push(format!("publisher: {e:#}"));
            return outcome;
        }
    };
    outcome.notes.push(format!(
        "subs on {}, publisher on node-{publisher}",
        hosts
            .iter()
            .map(|h| format!("node-{h}"))
            .collect::<Vec<_>>()
            .join("+")
    ));

    // The fault comes once a fifth of the planned stream reached every subscriber.
    let planned = (f64::from(settings.rate) * settings.secs) as usize;
    let started = stream.started.unwrap_or_else(Instant::now);
    if stream
        .wait_received((planned / 5).max(1), Duration::from_secs(30))
        .await
    {
        let t = Instant::now();
        outcome.notes.push(format!(
            "fault at +{} of the stream",
            secs(t.saturating_duration_since(started))
        ));
        match inject(scenario, &mut cluster, &mut stream, &mut hosts, publisher).await {
            Ok(notes) => outcome.notes.extend(notes),
            Err(e) => outcome.errors.push(format!("{e:#}")),
        }
        outcome
            .notes
            .push(format!("fault took {}", secs(t.elapsed())));
    } else {
        outcome
            .errors
            .push("the stream did not reach the subscribers before the fault".into());
    }
    // The stream lasts its planned length, and goes on a while after the fault: this is the
    // workload's length, not a wait for an event.
    let until =
        (started + Duration::from_secs_f64(settings.secs)).max(Instant::now() + AFTER_FAULT);
    tokio::time::sleep_until(until.into()).await;
    outcome.tally = Some(stream.finish(ACKS_WITHIN, DELIVER_WITHIN, QUIET).await);
    outcome
}

/// Waits until the stream flows again to every subscriber after a fault.
async fn resumed(stream: &Stream, what: &str) -> Result<()> {
    let more = (stream.rate / 10).max(1) as usize;
    if stream.wait_flowing(more, RESUME).await {
        Ok(())
    } else {
        let b = stream.board();
        bail!(
            "the stream did not flow again within {RESUME:?} after {what}: subscribers connected {:?}, received {:?}, publisher connected {} (last errors: {:?} / {:?})",
            b.subs.iter().map(|s| s.connected).collect::<Vec<_>>(),
            b.subs.iter().map(|s| s.copies.len()).collect::<Vec<_>>(),
            b.publisher.connected,
            b.subs.iter().map(|s| s.last_error.clone()).collect::<Vec<_>>(),
            b.publisher.last_error,
        )
    }
}

/// The admin API's token for every node of the matrix.
const ADMIN_TOKEN: &str = "fault-matrix-admin-token";

/// A file holding [`ADMIN_TOKEN`], written once per test process.
fn admin_token_file() -> std::path::PathBuf {
    static FILE: std::sync::OnceLock<tempfile::NamedTempFile> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        use std::io::Write;
        let mut file = tempfile::NamedTempFile::new().expect("token file");
        file.write_all(ADMIN_TOKEN.as_bytes()).expect("write token");
        file
    })
    .path()
    .to_path_buf()
}

/// Does the scenario's fault while the stream runs; returns notes on what happened.
async fn inject(
    scenario: Scenario,
    cluster: &mut Cluster,
    stream: &mut Stream,
    hosts: &mut [usize],
    publisher: usize,
) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let n = cluster.nodes.len();
    // The node of a subscriber, not the publisher's if another subscriber's node is not: the
    // stream then goes on while the victim is away, and what is relayed to it meanwhile is at
    // stake.
    let victim = hosts
        .iter()
        .copied()
        .find(|&h| h != publisher)
        .unwrap_or(hosts[0]);
    notes.push(format!("victim node-{victim}"));
    match scenario {
        Scenario::Takeover => {
            for (k, host) in hosts.iter_mut().enumerate() {
                let from = *host;
                let to = (from + 1) % n;
                let t = Instant::now();
                stream
                    .connect_subscriber(k, cluster.nodes[to].mqtt)
                    .await
                    .map_err(anyhow::Error::msg)?;
                let connack = t.elapsed();
                if !stream.wait_retired_closed(k, Duration::from_secs(15)).await {
                    bail!("sub-{k}: the connection on node-{from} is still open after the takeover by node-{to}");
                }
                *host = to;
                notes.push(format!(
                    "sub-{k} node-{from}->node-{to}: CONNACK {}, old closed {}",
                    secs(connack),
                    secs(t.elapsed())
                ));
                resumed(stream, &format!("the takeover of sub-{k}")).await?;
            }
        }
        Scenario::RollingRestart => {
            for i in 0..n {
                let t = Instant::now();
                let status = cluster.nodes[i].terminate(EXIT_WITHIN).await?;
                let exited = t.elapsed();
                cluster.nodes[i].restart().await?;
                cluster.wait_for_members(&cluster.all(), MEMBERSHIP).await?;
                notes.push(format!(
                    "node-{i}: exit {} ({status}), back {}",
                    secs(exited),
                    secs(t.elapsed())
                ));
                resumed(stream, &format!("restarting node-{i}")).await?;
            }
        }
        Scenario::Sigkill => {
            let t = Instant::now();
            cluster.nodes[victim].kill_and_wait().await;
            cluster
                .wait_for_members(&cluster.others(victim), MEMBERSHIP)
                .await?;
            notes.push(format!(
                "node-{victim} killed, declared failed after {}",
                secs(t.elapsed())
            ));
            resumed(stream, &format!("killing node-{victim}")).await?;
            notes.push(format!("stream flowing again after {}", secs(t.elapsed())));
            cluster.nodes[victim].restart().await?;
            cluster.wait_for_members(&cluster.all(), MEMBERSHIP).await?;
            notes.push(format!("node-{victim} back after {}", secs(t.elapsed())));
        }
        Scenario::RedisRestart | Scenario::RedisRestartPersistent => {
            let t = Instant::now();
            cluster.redis.stop().await;
            cluster
                .wait_for_readyz(&cluster.all(), 503, Duration::from_secs(30))
                .await?;
            let noticed = t.elapsed();
            cluster.redis.start_again().await?;
            cluster
                .wait_for_readyz(&cluster.all(), 200, Duration::from_secs(30))
                .await?;
            notes.push(format!(
                "redis down, nodes unready after {}, ready again after {}",
                secs(noticed),
                secs(t.elapsed())
            ));
            resumed(stream, "the Redis restart").await?;
        }
        Scenario::RedisReplaced => {
            let t = Instant::now();
            for proxy in &cluster.proxies {
                proxy.strand();
            }
            cluster.redis.stop().await;
            cluster.redis.start_again().await?;
            // The nodes cannot tell at once (their connections just hang): what counts is the
            // stream flowing again.
            resumed(stream, "the Redis replacement").await?;
            let flowing = t.elapsed();
            cluster
                .wait_for_readyz(&cluster.all(), 200, Duration::from_secs(30))
                .await?;
            notes.push(format!(
                "redis replaced (old connections hang): stream flowing again after {}, nodes ready after {}",
                secs(flowing),
                secs(t.elapsed())
            ));
        }
        Scenario::RedisStall => {
            cluster.redis.pause()?;
            // The stall's length is the fault itself.
            tokio::time::sleep(OUTAGE).await;
            cluster.redis.resume()?;
            let t = Instant::now();
            cluster
                .wait_for_readyz(&cluster.all(), 200, Duration::from_secs(30))
                .await?;
            notes.push(format!(
                "redis stopped {}, nodes ready {} after",
                secs(OUTAGE),
                secs(t.elapsed())
            ));
            resumed(stream, "the Redis stall").await?;
        }
        Scenario::RedisCut => {
            let t = Instant::now();
            cluster.proxies[victim].cut();
            let noticed = cluster.nodes[victim]
                .wait_for_readyz(503, OUTAGE)
                .await
                .map(|()| secs(t.elapsed()))
                .unwrap_or_else(|_| "never".into());
            // The partition's length is the fault itself.
            tokio::time::sleep_until((t + OUTAGE).into()).await;
            cluster.proxies[victim].restore();
            cluster.nodes[victim]
                .wait_for_readyz(200, Duration::from_secs(30))
                .await?;
            notes.push(format!(
                "node-{victim} cut from redis for {}, unready after {noticed}, ready again {} after",
                secs(OUTAGE),
                secs(t.elapsed() - OUTAGE)
            ));
            resumed(stream, "the cut").await?;
        }
        Scenario::GossipFalsePositive => {
            let t = Instant::now();
            cluster.nodes[victim].pause()?;
            let declared = cluster
                .wait_for_members(&cluster.others(victim), MEMBERSHIP)
                .await;
            cluster.nodes[victim].resume()?;
            declared?;
            notes.push(format!(
                "node-{victim} stopped, declared failed after {}",
                secs(t.elapsed())
            ));
            let t = Instant::now();
            cluster.wait_for_members(&cluster.all(), MEMBERSHIP).await?;
            notes.push(format!(
                "node-{victim} member again after {}",
                secs(t.elapsed())
            ));
            resumed(stream, &format!("node-{victim}'s pause")).await?;
        }
        Scenario::ScaleDown => {
            let t = Instant::now();
            let status = cluster.nodes[victim].terminate(EXIT_WITHIN).await?;
            let exited = t.elapsed();
            cluster
                .wait_for_members(&cluster.others(victim), MEMBERSHIP)
                .await?;
            notes.push(format!(
                "node-{victim} exit {} ({status}), gone from gossip after {}",
                secs(exited),
                secs(t.elapsed())
            ));
            resumed(stream, &format!("node-{victim} left")).await?;
        }
        Scenario::Evacuate => {
            let t = Instant::now();
            let node = &cluster.nodes[victim];
            let (status, body) = e2e::http_request(
                node.admin,
                "POST",
                "/api/v1/evacuate?rate=50",
                Some(ADMIN_TOKEN),
            )
            .await?;
            if status != 202 {
                bail!("evacuating node-{victim}: HTTP {status}: {body}");
            }
            e2e::wait_for(Duration::from_secs(30), || async {
                let left = node.metric("starling_connections").await?;
                if left > 0.0 {
                    bail!("{left} clients still connected");
                }
                Ok(())
            })
            .await
            .with_context(|| format!("node-{victim} did not empty"))?;
            let emptied = t.elapsed();
            let status = cluster.nodes[victim].terminate(EXIT_WITHIN).await?;
            cluster.nodes[victim].restart().await?;
            cluster.wait_for_members(&cluster.all(), MEMBERSHIP).await?;
            notes.push(format!(
                "node-{victim} evacuated: empty after {}, exit ({status}), back {}",
                secs(emptied),
                secs(t.elapsed())
            ));
            resumed(stream, &format!("node-{victim} evacuated")).await?;
        }
        Scenario::SentinelFailover => {
            let group = cluster
                .sentinel
                .as_ref()
                .context("the cluster has no sentinels")?;
            let old = group.primary().await?;
            let t = Instant::now();
            cluster.redis.stop().await;
            let promoted = group
                .wait_for_failover(old, Duration::from_secs(60))
                .await?;
            let failed_over = t.elapsed();
            resumed(stream, "the failover").await?;
            let flowing = t.elapsed();
            cluster
                .wait_for_readyz(&cluster.all(), 200, Duration::from_secs(30))
                .await?;
            let waits = cluster
                .metric("starling_cluster_replication_waits_total")
                .await;
            let short = cluster
                .metric("starling_cluster_replication_waits_short_total")
                .await;
            notes.push(format!(
                "primary {old} killed: sentinels named {promoted} after {}, stream flowing again after {}, nodes ready after {}; replication waits {waits:?}, short {short:?}",
                secs(failed_over),
                secs(flowing),
                secs(t.elapsed())
            ));
        }
        Scenario::NewSubscriptionsAfterRedisRestart => {
            unreachable!("not a fault in the middle of a stream")
        }
    }
    Ok(notes)
}

/// Redis restarts (empty) under a cluster; then, for each node `i`, new persistent subscribers
/// connect directly to node `i` and a publisher directly to node `i + 1`: each phase is a run of
/// its own.
async fn new_subscriptions_after_redis_restart(
    mut cluster: Cluster,
    version: Version,
    prefix: &str,
    run: String,
    settings: &Settings,
) -> Vec<Outcome> {
    let n = cluster.nodes.len();
    let restarted: Result<()> = async {
        cluster.redis.stop().await;
        cluster
            .wait_for_readyz(&cluster.all(), 503, Duration::from_secs(30))
            .await?;
        cluster.redis.start_again().await?;
        cluster
            .wait_for_readyz(&cluster.all(), 200, Duration::from_secs(30))
            .await
    }
    .await;
    let mut outcomes = Vec::new();
    if let Err(e) = restarted {
        let mut outcome = Outcome::new(
            Scenario::NewSubscriptionsAfterRedisRestart.name(),
            n,
            version,
            run,
        );
        outcome.errors.push(format!("restarting redis: {e:#}"));
        return vec![outcome];
    }
    for i in 0..n {
        let j = (i + 1) % n;
        let label = format!(
            "{}[subs@node-{i},pub@node-{j}]",
            Scenario::NewSubscriptionsAfterRedisRestart.name()
        );
        let mut outcome = Outcome::new(&label, n, version, run.clone());
        let mut stream = Stream::new(
            version,
            &format!("{prefix}-p{i}"),
            SUBSCRIBERS,
            settings.rate,
        );
        let baseline = cluster.metric("starling_cluster_remote_entries").await;
        let mut subscribed = true;
        for k in 0..SUBSCRIBERS {
            if let Err(e) = stream.connect_subscriber(k, cluster.nodes[i].mqtt).await {
                outcome.errors.push(e);
                subscribed = false;
            }
        }
        if subscribed {
            // A subscription not yet announced is not routed from other nodes: wait for the
            // announcement, but publish anyway if it never comes (and count what that loses).
            if let Err(e) = wait_for_routes(&cluster, &[i], &baseline).await {
                outcome.errors.push(format!("{e:#}"));
            }
            match stream.start_publisher(cluster.nodes[j].mqtt).await {
                Ok(()) => {
                    // The stream's planned length: the workload, not a wait for an event.
                    tokio::time::sleep(Duration::from_secs_f64(settings.secs)).await;
                }
                Err(e) => outcome.errors.push(e),
            }
        }
        outcome.tally = Some(stream.finish(ACKS_WITHIN, DELIVER_WITHIN, QUIET).await);
        outcomes.push(outcome);
    }
    outcomes
}

/// The matrix: one test per scenario, node count and protocol version. The `full` cells are
/// ignored by default; cargo lists them as ignored, with the command that runs them.
macro_rules! matrix {
    (
        ci: [ $( $name:ident: $scenario:ident, $nodes:literal, $version:ident; )* ]
        full: [ $( $full:ident: $fscenario:ident, $fnodes:literal, $fversion:ident; )* ]
    ) => {
        $(
            #[test]
            fn $name() {
                cell(Scenario::$scenario, $nodes, Version::$version);
            }
        )*
        $(
            #[test]
            #[ignore = "full fault matrix only: cargo test -p e2e --test fault_matrix -- --include-ignored --test-threads=1"]
            fn $full() {
                cell(Scenario::$fscenario, $fnodes, Version::$fversion);
            }
        )*
    };
}

matrix! {
    // The CI subset: a few representative cells, both versions, 2 and 3 nodes.
    ci: [
        takeover_2_nodes_v5: Takeover, 2, V5;
        rolling_restart_2_nodes_v311: RollingRestart, 2, V311;
        sigkill_3_nodes_v5: Sigkill, 3, V5;
        redis_restart_persistent_2_nodes_v5: RedisRestartPersistent, 2, V5;
        redis_cut_one_node_2_nodes_v311: RedisCut, 2, V311;
        scale_down_3_nodes_v5: ScaleDown, 3, V5;
        gossip_false_positive_3_nodes_v5: GossipFalsePositive, 3, V5;
        redis_replaced_2_nodes_v5: RedisReplaced, 2, V5;
        sentinel_failover_2_nodes_v5: SentinelFailover, 2, V5;
        evacuate_3_nodes_v311: Evacuate, 3, V311;
    ]
    full: [
        takeover_2_nodes_v311: Takeover, 2, V311;
        takeover_3_nodes_v311: Takeover, 3, V311;
        takeover_3_nodes_v5: Takeover, 3, V5;
        rolling_restart_2_nodes_v5: RollingRestart, 2, V5;
        rolling_restart_3_nodes_v311: RollingRestart, 3, V311;
        rolling_restart_3_nodes_v5: RollingRestart, 3, V5;
        sigkill_2_nodes_v311: Sigkill, 2, V311;
        sigkill_2_nodes_v5: Sigkill, 2, V5;
        sigkill_3_nodes_v311: Sigkill, 3, V311;
        redis_restart_2_nodes_v311: RedisRestart, 2, V311;
        redis_restart_2_nodes_v5: RedisRestart, 2, V5;
        redis_restart_3_nodes_v311: RedisRestart, 3, V311;
        redis_restart_3_nodes_v5: RedisRestart, 3, V5;
        redis_restart_persistent_2_nodes_v311: RedisRestartPersistent, 2, V311;
        redis_restart_persistent_3_nodes_v311: RedisRestartPersistent, 3, V311;
        redis_restart_persistent_3_nodes_v5: RedisRestartPersistent, 3, V5;
        redis_replaced_2_nodes_v311: RedisReplaced, 2, V311;
        redis_replaced_3_nodes_v311: RedisReplaced, 3, V311;
        redis_replaced_3_nodes_v5: RedisReplaced, 3, V5;
        redis_stall_2_nodes_v311: RedisStall, 2, V311;
        redis_stall_2_nodes_v5: RedisStall, 2, V5;
        redis_stall_3_nodes_v311: RedisStall, 3, V311;
        redis_stall_3_nodes_v5: RedisStall, 3, V5;
        redis_cut_one_node_2_nodes_v5: RedisCut, 2, V5;
        redis_cut_one_node_3_nodes_v311: RedisCut, 3, V311;
        redis_cut_one_node_3_nodes_v5: RedisCut, 3, V5;
        gossip_false_positive_2_nodes_v311: GossipFalsePositive, 2, V311;
        gossip_false_positive_2_nodes_v5: GossipFalsePositive, 2, V5;
        gossip_false_positive_3_nodes_v311: GossipFalsePositive, 3, V311;
        scale_down_2_nodes_v311: ScaleDown, 2, V311;
        scale_down_2_nodes_v5: ScaleDown, 2, V5;
        scale_down_3_nodes_v311: ScaleDown, 3, V311;
        sentinel_failover_2_nodes_v311: SentinelFailover, 2, V311;
        sentinel_failover_3_nodes_v311: SentinelFailover, 3, V311;
        sentinel_failover_3_nodes_v5: SentinelFailover, 3, V5;
        evacuate_2_nodes_v311: Evacuate, 2, V311;
        evacuate_2_nodes_v5: Evacuate, 2, V5;
        evacuate_3_nodes_v5: Evacuate, 3, V5;
        new_subs_after_redis_restart_2_nodes_v311: NewSubscriptionsAfterRedisRestart, 2, V311;
        new_subs_after_redis_restart_2_nodes_v5: NewSubscriptionsAfterRedisRestart, 2, V5;
        new_subs_after_redis_restart_3_nodes_v311: NewSubscriptionsAfterRedisRestart, 3, V311;
        new_subs_after_redis_restart_3_nodes_v5: NewSubscriptionsAfterRedisRestart, 3, V5;
    ]
}
