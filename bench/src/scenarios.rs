//! The benchmark scenarios, each run against one already started broker.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use rumqttc::mqttbytes::QoS;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::broker::BrokerProcess;
use crate::mqtt::{self, Clock, PublishPlan, Session};
use crate::procfs;
use crate::report::{Better, Metric};

/// Settings shared by all scenarios.
#[derive(Debug, Clone)]
pub struct Settings {
    pub duration: Duration,
    pub connections: usize,
    pub rate: f64,
    pub clk_tck: u64,
}

/// A scenario of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    FanInQos0,
    FanInQos1,
    FanOutQos0,
    Latency,
    IdleConnections,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::FanInQos0,
        Scenario::FanInQos1,
        Scenario::FanOutQos0,
        Scenario::Latency,
        Scenario::IdleConnections,
    ];

    /// Short identifier, as used on the command line and in JSON.
    pub fn id(self) -> &'static str {
        match self {
            Scenario::FanInQos0 => "fan-in-qos0",
            Scenario::FanInQos1 => "fan-in-qos1",
            Scenario::FanOutQos0 => "fan-out-qos0",
            Scenario::Latency => "latency",
            Scenario::IdleConnections => "idle-connections",
        }
    }

    /// One-line description for the report.
    pub fn title(self, s: &Settings) -> String {
        match self {
            Scenario::FanInQos0 => {
                "fan-in QoS 0: 10 publishers -> 1 subscriber, unthrottled".into()
            }
            Scenario::FanInQos1 => {
                "fan-in QoS 1: 10 publishers (window 100) -> 1 subscriber, unthrottled".into()
            }
            Scenario::FanOutQos0 => {
                "fan-out QoS 0: 1 publisher -> 50 subscribers, unthrottled".into()
            }
            Scenario::Latency => format!("latency: QoS 1, 1 -> 1 at a fixed {} msgs/s", s.rate),
            Scenario::IdleConnections => {
                format!(
                    "idle connections: {} MQTT connections held open",
                    s.connections
                )
            }
        }
    }

    /// Caveats printed under the table.
    pub fn notes(self) -> &'static [&'static str] {
        match self {
            Scenario::FanInQos0 | Scenario::FanInQos1 | Scenario::FanOutQos0 => &[
                "saturated run: latency here is mostly queueing delay, see the latency scenario",
                "published above received: the broker queued or dropped the difference",
                "load generator and broker share the machine's cores",
            ],
            Scenario::Latency => {
                &["stamps are actual send times; publisher max lag shows how far sending fell behind schedule (~1 ms is the timer tick)"]
            }
            Scenario::IdleConnections => {
                &[
                "RSS delta from before the first CONNECT to after the last CONNACK",
                "kernel socket buffers are not part of RSS",
            ]
            }
        }
    }

    /// Runs the scenario against `broker`.
    pub async fn run(self, broker: &mut BrokerProcess, s: &Settings) -> Result<Vec<Metric>> {
        let metrics = match self {
            Scenario::FanInQos0 => {
                let flow = Flow::new(10, 1, "bench/in", QoS::AtMostOnce, None);
                let target = FlowTarget::single(broker);
                throughput_metrics(run_flow(&target, &flow, s).await?, "received msgs/s")
            }
            Scenario::FanInQos1 => {
                let flow = Flow::new(10, 1, "bench/in", QoS::AtLeastOnce, None);
                let target = FlowTarget::single(broker);
                throughput_metrics(run_flow(&target, &flow, s).await?, "received msgs/s")
            }
            Scenario::FanOutQos0 => {
                let flow = Flow::new(1, 50, "bench/out", QoS::AtMostOnce, None);
                let target = FlowTarget::single(broker);
                throughput_metrics(
                    run_flow(&target, &flow, s).await?,
                    "deliveries/s (all subs)",
                )
            }
            Scenario::Latency => {
                let flow = Flow::new(1, 1, "bench/lat", QoS::AtLeastOnce, Some(s.rate));
                latency_metrics(run_flow(&FlowTarget::single(broker), &flow, s).await?)
            }
            Scenario::IdleConnections => idle_connections(broker, s).await?,
        };
        broker.check_alive()?;
        Ok(metrics)
    }
}

/// Publishers and subscribers on one topic.
pub struct Flow {
    publishers: usize,
    subscribers: usize,
    topic: &'static str,
    qos: QoS,
    rate: Option<f64>,
}

impl Flow {
    pub fn new(
        publishers: usize,
        subscribers: usize,
        topic: &'static str,
        qos: QoS,
        rate: Option<f64>,
    ) -> Self {
        Flow {
            publishers,
            subscribers,
            topic,
            qos,
            rate,
        }
    }
}

/// Where a flow's clients connect and whose CPU time it samples.
pub struct FlowTarget {
    /// Publishers connect here.
    pub publish: SocketAddr,
    /// Subscribers connect here.
    pub subscribe: SocketAddr,
    /// Processes whose CPU time is measured, reported in this order.
    pub pids: Vec<u32>,
    /// Admin address of the publishing node when subscriptions live on
    /// another cluster node: publishing waits until that node knows them.
    pub remote_routes_on: Option<SocketAddr>,
}

impl FlowTarget {
    /// Everyone on one broker; its CPU time is measured.
    pub fn single(broker: &BrokerProcess) -> Self {
        FlowTarget {
            publish: broker.addr,
            subscribe: broker.addr,
            pids: vec![broker.pid()],
            remote_routes_on: None,
        }
    }
}

/// Raw results of a flow run.
pub struct FlowOutcome {
    pub elapsed: f64,
    pub published: u64,
    pub received: u64,
    /// CPU seconds of each process of [`FlowTarget::pids`], in order.
    pub cpu_seconds: Vec<f64>,
    pub latency: Histogram<u64>,
    pub max_lag_ns: u64,
}

impl FlowOutcome {
    /// CPU seconds of all measured processes together.
    pub fn total_cpu_seconds(&self) -> f64 {
        self.cpu_seconds.iter().sum()
    }
}

/// Connects everyone, runs publishers and subscribers for the duration while
/// sampling the brokers' CPU time, and gathers the counts.
pub async fn run_flow(target: &FlowTarget, flow: &Flow, s: &Settings) -> Result<FlowOutcome> {
    let clock = Clock::new();
    let mut subscribers = Vec::with_capacity(flow.subscribers);
    for i in 0..flow.subscribers {
        let mut session = Session::connect(target.subscribe, &format!("bench-sub-{i}")).await?;
        session.subscribe(flow.topic, flow.qos).await?;
        subscribers.push(session);
    }
    if let Some(admin) = target.remote_routes_on {
        crate::cluster::wait_for_remote_entries(admin, 1.0).await?;
    }
    let mut publishers = Vec::with_capacity(flow.publishers);
    for i in 0..flow.publishers {
        publishers.push(Session::connect(target.publish, &format!("bench-pub-{i}")).await?);
    }

    let cpu_before = cpu_seconds_of(&target.pids, s.clk_tck)?;
    let start = Instant::now();
    let deadline = start + s.duration;
    let mut sub_tasks = JoinSet::new();
    for session in subscribers {
        sub_tasks.spawn(mqtt::run_subscriber(session, clock, deadline));
    }
    let mut pub_tasks = JoinSet::new();
    for session in publishers {
        let plan = PublishPlan {
            topic: flow.topic.to_string(),
            qos: flow.qos,
            window: if flow.rate.is_some() { 10_000 } else { 100 },
            rate: flow.rate.map(|r| r / flow.publishers as f64),
        };
        pub_tasks.spawn(mqtt::run_publisher(session, plan, clock, deadline));
    }

    tokio::time::sleep_until(deadline).await;
    let cpu_seconds = cpu_seconds_of(&target.pids, s.clk_tck)?
        .into_iter()
        .zip(cpu_before)
        .map(|(after, before)| after - before)
        .collect();
    let elapsed = start.elapsed().as_secs_f64();

    let mut published = 0;
    let mut max_lag_ns = 0;
    while let Some(r) = pub_tasks.join_next().await {
        let stats = r.context("publisher task panicked")?.context("publisher")?;
        published += stats.sent;
        max_lag_ns = max_lag_ns.max(stats.max_lag_ns);
    }
    let mut received = 0;
    let mut latency = mqtt::new_histogram();
    while let Some(r) = sub_tasks.join_next().await {
        let stats = r
            .context("subscriber task panicked")?
            .context("subscriber")?;
        received += stats.received;
        latency
            .add(&stats.latency)
            .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
    }
    Ok(FlowOutcome {
        elapsed,
        published,
        received,
        cpu_seconds,
        latency,
        max_lag_ns,
    })
}

fn cpu_seconds_of(pids: &[u32], clk_tck: u64) -> Result<Vec<f64>> {
    pids.iter()
        .map(|&pid| procfs::cpu_seconds(pid, clk_tck))
        .collect()
}

/// Latency quantile in milliseconds, NaN when nothing was received.
pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        f64::NAN
    } else {
        h.value_at_quantile(q) as f64 / 1e6
    }
}

pub fn throughput_metrics(o: FlowOutcome, received_label: &'static str) -> Vec<Metric> {
    vec![
        Metric::new(
            received_label,
            Better::Higher,
            o.received as f64 / o.elapsed,
        ),
        Metric::new(
            "published msgs/s",
            Better::Higher,
            o.published as f64 / o.elapsed,
        ),
        Metric::new("broker CPU s", Better::Lower, o.total_cpu_seconds()),
        Metric::new(
            "msgs per broker CPU-s",
            Better::Higher,
            per_cpu_second(o.received, o.total_cpu_seconds()),
        ),
        Metric::new(
            "latency p50 ms",
            Better::Lower,
            quantile_ms(&o.latency, 0.50),
        ),
        Metric::new(
            "latency p99 ms",
            Better::Lower,
            quantile_ms(&o.latency, 0.99),
        ),
    ]
}

pub fn latency_metrics(o: FlowOutcome) -> Vec<Metric> {
    vec![
        Metric::new(
            "latency p50 ms",
            Better::Lower,
            quantile_ms(&o.latency, 0.50),
        ),
        Metric::new(
            "latency p99 ms",
            Better::Lower,
            quantile_ms(&o.latency, 0.99),
        ),
        Metric::new(
            "latency p999 ms",
            Better::Lower,
            quantile_ms(&o.latency, 0.999),
        ),
        Metric::new(
            "latency max ms",
            Better::Lower,
            quantile_ms(&o.latency, 1.0),
        ),
        Metric::new(
            "published msgs/s",
            Better::Higher,
            o.published as f64 / o.elapsed,
        ),
        Metric::new(
            "received msgs/s",
            Better::Higher,
            o.received as f64 / o.elapsed,
        ),
        Metric::new("broker CPU s", Better::Lower, o.total_cpu_seconds()),
        Metric::new(
            "publisher max lag ms",
            Better::Lower,
            o.max_lag_ns as f64 / 1e6,
        ),
    ]
}

/// Messages per CPU-second, NaN when no CPU time was measured.
pub fn per_cpu_second(count: u64, cpu_seconds: f64) -> f64 {
    if cpu_seconds > 0.0 {
        count as f64 / cpu_seconds
    } else {
        f64::NAN
    }
}

/// Connections opened concurrently per batch in the idle scenario.
const CONNECT_BATCH: usize = 100;

/// Opens `s.connections` idle MQTT connections in batches and reports the
/// broker's resident memory growth per connection.
async fn idle_connections(broker: &BrokerProcess, s: &Settings) -> Result<Vec<Metric>> {
    let pid = broker.pid();
    let rss_before = procfs::rss_kib(pid)?;
    let cpu_before = procfs::cpu_seconds(pid, s.clk_tck)?;
    let start = Instant::now();
    let mut open: Vec<TcpStream> = Vec::with_capacity(s.connections);
    while open.len() < s.connections {
        let batch = CONNECT_BATCH.min(s.connections - open.len());
        let mut tasks = JoinSet::new();
        for i in open.len()..open.len() + batch {
            let addr = broker.addr;
            tasks.spawn(async move {
                let mut stream = TcpStream::connect(addr)
                    .await
                    .with_context(|| format!("connection {i}"))?;
                mqtt::handshake(&mut stream, &format!("bench-idle-{i}"))
                    .await
                    .with_context(|| format!("handshake of connection {i}"))?;
                anyhow::Ok(stream)
            });
        }
        while let Some(r) = tasks.join_next().await {
            open.push(r.context("connect task panicked")??);
        }
    }
    let connect_secs = start.elapsed().as_secs_f64();
    // Give the broker a moment to finish any per-connection work.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = procfs::rss_kib(pid)?;
    let cpu_seconds = procfs::cpu_seconds(pid, s.clk_tck)? - cpu_before;
    let n = open.len();
    drop(open);

    let per_conn = (rss_after as f64 - rss_before as f64) / n.max(1) as f64;
    Ok(vec![
        Metric::new("connections", Better::Neither, n as f64),
        Metric::new("RSS before KiB", Better::Lower, rss_before as f64),
        Metric::new("RSS after KiB", Better::Lower, rss_after as f64),
        Metric::new("KiB per connection", Better::Lower, per_conn),
        Metric::new("connects/s", Better::Higher, n as f64 / connect_secs),
        Metric::new("broker CPU s", Better::Lower, cpu_seconds),
    ])
}
