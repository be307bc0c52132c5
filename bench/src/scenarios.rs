//! The benchmark scenarios, each run against one already started broker.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use rumqttc::mqttbytes::QoS;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::broker::BrokerProcess;
use crate::fairness::Spread;
use crate::mqtt::{self, Clock, PublishPlan, Session};
use crate::procfs;
use crate::report::{Better, Metric};

/// Most QoS 1 publishes a device-shaped (unbatched) publisher leaves unacked.
pub const UNBATCHED_WINDOW: usize = 10;

/// Settings shared by all scenarios.
#[derive(Debug, Clone)]
pub struct Settings {
    pub duration: Duration,
    pub connections: usize,
    pub rate: f64,
    /// Publishers (and pairs) of the unbatched scenarios.
    pub publishers: usize,
    /// Rate of each publisher of the unbatched fan-in and pairs scenarios,
    /// msgs/s; `None` = unthrottled.
    pub per_client_rate: Option<f64>,
    pub clk_tck: u64,
}

impl Settings {
    /// Total rate of `publishers` paced publishers, if they are paced.
    fn paced_total(&self) -> Option<f64> {
        self.per_client_rate.map(|r| r * self.publishers as f64)
    }

    /// How the unbatched fan-in and pairs publishers are paced, for titles.
    fn pacing(&self) -> String {
        match self.per_client_rate {
            None => "unthrottled".into(),
            Some(r) => format!(
                "each at {r} msgs/s ({} msgs/s in total)",
                r * self.publishers as f64
            ),
        }
    }
}

/// A scenario of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    FanInQos0,
    FanInQos1,
    FanOutQos0,
    Latency,
    IdleConnections,
    /// Device-shaped fan-in: many publishers, one PUBLISH per write.
    FanInQos0Unbatched,
    FanInQos1Unbatched,
    /// Device-shaped 1:1 traffic: publisher i -> subscriber i on its own topic.
    PairsQos1Unbatched,
    /// Latency at a fixed total rate spread over many unbatched publishers.
    LatencyUnbatched,
}

impl Scenario {
    pub const ALL: [Scenario; 9] = [
        Scenario::FanInQos0,
        Scenario::FanInQos1,
        Scenario::FanOutQos0,
        Scenario::Latency,
        Scenario::IdleConnections,
        Scenario::FanInQos0Unbatched,
        Scenario::FanInQos1Unbatched,
        Scenario::PairsQos1Unbatched,
        Scenario::LatencyUnbatched,
    ];

    /// Short identifier, as used on the command line and in JSON.
    pub fn id(self) -> &'static str {
        match self {
            Scenario::FanInQos0 => "fan-in-qos0",
            Scenario::FanInQos1 => "fan-in-qos1",
            Scenario::FanOutQos0 => "fan-out-qos0",
            Scenario::Latency => "latency",
            Scenario::IdleConnections => "idle-connections",
            Scenario::FanInQos0Unbatched => "fan-in-qos0-unbatched",
            Scenario::FanInQos1Unbatched => "fan-in-qos1-unbatched",
            Scenario::PairsQos1Unbatched => "pairs-qos1-unbatched",
            Scenario::LatencyUnbatched => "latency-unbatched",
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
            Scenario::FanInQos0Unbatched => format!(
                "fan-in QoS 0, unbatched: {} publishers (one message per write, topic \
                 bench/dev/<i>) -> 1 subscriber on bench/dev/+, {}",
                s.publishers,
                s.pacing()
            ),
            Scenario::FanInQos1Unbatched => format!(
                "fan-in QoS 1, unbatched: {} publishers (one message per write, window \
                 {UNBATCHED_WINDOW}, topic bench/dev/<i>) -> 1 subscriber on bench/dev/+, {}",
                s.publishers,
                s.pacing()
            ),
            Scenario::PairsQos1Unbatched => format!(
                "pairs QoS 1, unbatched: {} publisher -> subscriber pairs on topics \
                 bench/pair/<i> (one message per write, window {UNBATCHED_WINDOW}), {}",
                s.publishers,
                s.pacing()
            ),
            Scenario::LatencyUnbatched => format!(
                "latency, unbatched: QoS 1, {} publishers (one message per write, window \
                 {UNBATCHED_WINDOW}) -> 1 subscriber on bench/lat/+, at a fixed {} msgs/s in \
                 total ({} msgs/s each)",
                s.publishers,
                s.rate,
                s.rate / s.publishers as f64
            ),
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
            Scenario::FanInQos0Unbatched
            | Scenario::FanInQos1Unbatched
            | Scenario::PairsQos1Unbatched => &[
                "every PUBLISH is its own write_all on a TCP_NODELAY socket ('msgs per publisher write' should be 1)",
                "unthrottled, a broker that falls behind still finds several messages per read; --per-client-rate paces each publisher as a device would",
                "per-publisher counts: max/min is '-' when some publisher got nothing through (see the 'none delivered' row)",
                "published counts what the sockets accepted: above received, the rest waited in socket buffers or the broker, or was dropped",
                "load generator and broker share the machine's cores",
            ],
            Scenario::LatencyUnbatched => &[
                "every PUBLISH is its own write_all on a TCP_NODELAY socket; publishers' schedules are spread over the interval, not in lockstep",
                "stamps are actual send times; publisher max lag shows how far sending fell behind schedule (~1 ms is the timer tick)",
            ],
        }
    }

    /// Runs the scenario against `broker`.
    pub async fn run(self, broker: &mut BrokerProcess, s: &Settings) -> Result<Vec<Metric>> {
        let metrics = match self {
            Scenario::FanInQos0 => {
                let flow = Flow::new(10, 1, "bench/in", QoS::AtMostOnce, None);
                let target = FlowTarget::single(broker);
                throughput_metrics(&run_flow(&target, &flow, s).await?, "received msgs/s")
            }
            Scenario::FanInQos1 => {
                let flow = Flow::new(10, 1, "bench/in", QoS::AtLeastOnce, None);
                let target = FlowTarget::single(broker);
                throughput_metrics(&run_flow(&target, &flow, s).await?, "received msgs/s")
            }
            Scenario::FanOutQos0 => {
                let flow = Flow::new(1, 50, "bench/out", QoS::AtMostOnce, None);
                let target = FlowTarget::single(broker);
                throughput_metrics(
                    &run_flow(&target, &flow, s).await?,
                    "deliveries/s (all subs)",
                )
            }
            Scenario::Latency => {
                let flow = Flow::new(1, 1, "bench/lat", QoS::AtLeastOnce, Some(s.rate));
                latency_metrics(&run_flow(&FlowTarget::single(broker), &flow, s).await?)
            }
            Scenario::IdleConnections => idle_connections(broker, s).await?,
            Scenario::FanInQos0Unbatched | Scenario::FanInQos1Unbatched => {
                let qos = if self == Scenario::FanInQos0Unbatched {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                };
                let topics = Topics::PerPublisher("bench/dev");
                let flow = Flow::unbatched(s.publishers, 1, topics, qos, s.paced_total());
                let o = run_flow(&FlowTarget::single(broker), &flow, s).await?;
                unbatched_metrics(&o, "received msgs/s", s.per_client_rate.is_some())
            }
            Scenario::PairsQos1Unbatched => {
                let topics = Topics::Pairs("bench/pair");
                let flow = Flow::unbatched(
                    s.publishers,
                    s.publishers,
                    topics,
                    QoS::AtLeastOnce,
                    s.paced_total(),
                );
                let o = run_flow(&FlowTarget::single(broker), &flow, s).await?;
                unbatched_metrics(
                    &o,
                    "received msgs/s (all subs)",
                    s.per_client_rate.is_some(),
                )
            }
            Scenario::LatencyUnbatched => {
                let topics = Topics::PerPublisher("bench/lat");
                let flow = Flow::unbatched(s.publishers, 1, topics, QoS::AtLeastOnce, Some(s.rate));
                let o = run_flow(&FlowTarget::single(broker), &flow, s).await?;
                let mut metrics = latency_metrics(&o);
                metrics.extend([
                    Metric::new(
                        "msgs per broker CPU-s",
                        Better::Higher,
                        per_cpu_second(o.received, o.total_cpu_seconds()),
                    ),
                    writes_metric(&o),
                ]);
                metrics
            }
        };
        broker.check_alive()?;
        Ok(metrics)
    }
}

/// Which topics a flow's clients publish to and subscribe to.
#[derive(Debug, Clone, Copy)]
pub enum Topics {
    /// Every publisher on this topic, every subscriber subscribed to it.
    One(&'static str),
    /// Publisher i on `<prefix>/<i>`, every subscriber on `<prefix>/+`.
    PerPublisher(&'static str),
    /// Publisher i on `<prefix>/<i>` and subscriber i subscribed to that
    /// topic alone (as many subscribers as publishers).
    Pairs(&'static str),
}

impl Topics {
    fn publish_topic(self, publisher: usize) -> String {
        match self {
            Topics::One(topic) => topic.to_string(),
            Topics::PerPublisher(prefix) | Topics::Pairs(prefix) => format!("{prefix}/{publisher}"),
        }
    }

    fn filter(self, subscriber: usize) -> String {
        match self {
            Topics::One(topic) => topic.to_string(),
            Topics::PerPublisher(prefix) => format!("{prefix}/+"),
            Topics::Pairs(prefix) => format!("{prefix}/{subscriber}"),
        }
    }
}

/// Publishers and subscribers, their topics and how the publishers send.
pub struct Flow {
    publishers: usize,
    subscribers: usize,
    topics: Topics,
    qos: QoS,
    /// Total rate of all publishers, msgs/s; `None` = unthrottled.
    rate: Option<f64>,
    /// PUBLISH packets per `write_all` at most.
    per_write: usize,
    /// QoS 1 window of every publisher.
    window: usize,
}

impl Flow {
    /// A batched flow on one topic: up to [`mqtt::BATCH`] messages per write.
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
            topics: Topics::One(topic),
            qos,
            rate,
            per_write: mqtt::BATCH,
            window: if rate.is_some() { 10_000 } else { 100 },
        }
    }

    /// A device-shaped flow: every PUBLISH its own write, a QoS 1 window of
    /// [`UNBATCHED_WINDOW`].
    pub fn unbatched(
        publishers: usize,
        subscribers: usize,
        topics: Topics,
        qos: QoS,
        rate: Option<f64>,
    ) -> Self {
        Flow {
            publishers,
            subscribers,
            topics,
            qos,
            rate,
            per_write: 1,
            window: UNBATCHED_WINDOW,
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
    /// Messages each publisher sent, by publisher index.
    pub sent_per_publisher: Vec<u64>,
    /// Messages of each publisher the subscribers received (all together).
    pub delivered_per_publisher: Vec<u64>,
    /// `write_all` calls of all publishers together.
    pub writes: u64,
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
    // Clients are numbered subscribers first, then publishers; the number
    // picks the source address when there are very many.
    let clients = flow.subscribers + flow.publishers;
    let topics = flow.topics;
    let (sub_addr, qos) = (target.subscribe, flow.qos);
    let subscribers = open_sessions(flow.subscribers, |i| async move {
        let source = mqtt::source_addr(i, clients, sub_addr);
        let mut session =
            Session::connect_from(sub_addr, source, &format!("bench-sub-{i}")).await?;
        session.subscribe(&topics.filter(i), qos).await?;
        Ok(session)
    })
    .await?;
    if let Some(admin) = target.remote_routes_on {
        crate::cluster::wait_for_remote_entries(admin, 1.0).await?;
    }
    let (pub_addr, first) = (target.publish, flow.subscribers);
    let publishers = open_sessions(flow.publishers, |i| async move {
        let source = mqtt::source_addr(first + i, clients, pub_addr);
        Session::connect_from(pub_addr, source, &format!("bench-pub-{i}")).await
    })
    .await?;

    let cpu_before = cpu_seconds_of(&target.pids, s.clk_tck)?;
    let start = Instant::now();
    let deadline = start + s.duration;
    let mut sub_tasks = JoinSet::new();
    for session in subscribers {
        sub_tasks.spawn(mqtt::run_subscriber(session, clock, deadline));
    }
    let mut pub_tasks = JoinSet::new();
    for (i, session) in publishers.into_iter().enumerate() {
        let plan = PublishPlan {
            topic: topics.publish_topic(i),
            qos: flow.qos,
            index: u32::try_from(i).context("too many publishers")?,
            window: flow.window,
            per_write: flow.per_write,
            rate: flow.rate.map(|r| r / flow.publishers as f64),
            // Publisher i starts (i + 1)/N of an interval in; a lone one after one interval.
            offset: (i + 1) as f64 / flow.publishers as f64,
        };
        let run = mqtt::run_publisher(session, plan, clock, deadline);
        pub_tasks.spawn(async move { (i, run.await) });
    }

    tokio::time::sleep_until(deadline).await;
    let cpu_seconds = cpu_seconds_of(&target.pids, s.clk_tck)?
        .into_iter()
        .zip(cpu_before)
        .map(|(after, before)| after - before)
        .collect();
    let elapsed = start.elapsed().as_secs_f64();

    let mut published = 0;
    let mut writes = 0;
    let mut max_lag_ns = 0;
    let mut sent_per_publisher = vec![0; flow.publishers];
    while let Some(r) = pub_tasks.join_next().await {
        let (i, stats) = r.context("publisher task panicked")?;
        let stats = stats.context("publisher")?;
        published += stats.sent;
        writes += stats.writes;
        sent_per_publisher[i] = stats.sent;
        max_lag_ns = max_lag_ns.max(stats.max_lag_ns);
    }
    let mut received = 0;
    let mut latency = mqtt::new_histogram();
    let mut delivered_per_publisher = vec![0; flow.publishers];
    while let Some(r) = sub_tasks.join_next().await {
        let stats = r
            .context("subscriber task panicked")?
            .context("subscriber")?;
        received += stats.received;
        latency
            .add(&stats.latency)
            .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
        for (i, n) in stats.per_publisher.into_iter().enumerate() {
            let slot = delivered_per_publisher
                .get_mut(i)
                .with_context(|| format!("delivery from unknown publisher {i}"))?;
            *slot += n;
        }
    }
    Ok(FlowOutcome {
        elapsed,
        published,
        received,
        sent_per_publisher,
        delivered_per_publisher,
        writes,
        cpu_seconds,
        latency,
        max_lag_ns,
    })
}

/// Opens `count` sessions with `open(i)`, [`CONNECT_BATCH`] at a time, and
/// returns them in index order.
async fn open_sessions<F, Fut>(count: usize, open: F) -> Result<Vec<Session>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<Session>> + Send + 'static,
{
    let mut sessions = Vec::with_capacity(count);
    while sessions.len() < count {
        let first = sessions.len();
        let batch = CONNECT_BATCH.min(count - first);
        let mut tasks = JoinSet::new();
        for i in first..first + batch {
            let opening = open(i);
            tasks.spawn(async move { (i, opening.await) });
        }
        let mut opened: Vec<Option<Session>> = (0..batch).map(|_| None).collect();
        while let Some(r) = tasks.join_next().await {
            let (i, session) = r.context("connect task panicked")?;
            opened[i - first] = Some(session?);
        }
        sessions.extend(opened.into_iter().flatten());
    }
    Ok(sessions)
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

pub fn throughput_metrics(o: &FlowOutcome, received_label: &'static str) -> Vec<Metric> {
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

pub fn latency_metrics(o: &FlowOutcome) -> Vec<Metric> {
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

/// The unbatched throughput figures: those of the batched runs, p99.9, the
/// write shape, how evenly the publishers were served, and with paced
/// publishers how far they fell behind.
pub fn unbatched_metrics(
    o: &FlowOutcome,
    received_label: &'static str,
    paced: bool,
) -> Vec<Metric> {
    let mut metrics = throughput_metrics(o, received_label);
    metrics.push(Metric::new(
        "latency p999 ms",
        Better::Lower,
        quantile_ms(&o.latency, 0.999),
    ));
    metrics.push(writes_metric(o));
    let sent = Spread::of(&o.sent_per_publisher);
    let delivered = Spread::of(&o.delivered_per_publisher);
    metrics.extend([
        Metric::new("sent/publisher max/min", Better::Lower, sent.max_over_min),
        Metric::new("sent/publisher CV", Better::Lower, sent.cv),
        Metric::new(
            "delivered/publisher max/min",
            Better::Lower,
            delivered.max_over_min,
        ),
        Metric::new("delivered/publisher CV", Better::Lower, delivered.cv),
        Metric::new(
            "publishers none delivered",
            Better::Lower,
            delivered.zeros as f64,
        ),
    ]);
    if paced {
        metrics.push(Metric::new(
            "publisher max lag ms",
            Better::Lower,
            o.max_lag_ns as f64 / 1e6,
        ));
    }
    metrics
}

/// Messages per publisher `write_all`: 1 for a device-shaped flow.
fn writes_metric(o: &FlowOutcome) -> Metric {
    let per_write = if o.writes > 0 {
        o.published as f64 / o.writes as f64
    } else {
        f64::NAN
    };
    Metric::new("msgs per publisher write", Better::Neither, per_write)
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
            let (addr, total) = (broker.addr, s.connections);
            tasks.spawn(async move {
                let source = mqtt::source_addr(i, total, addr);
                let mut stream = mqtt::tcp_connect(addr, source)
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
