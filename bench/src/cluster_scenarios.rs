//! The cluster scenarios: the same MQTT load with publishers and subscriber on
//! two nodes of a cluster (cross-node), on one node of a cluster (same-node),
//! and on a standalone node, each on fresh processes.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use rumqttc::mqttbytes::QoS;
use serde::Serialize;

use crate::broker::{BrokerKind, BrokerProcess, BrokerSpec};
use crate::cluster::Cluster;
use crate::report::{Better, Metric};
use crate::scenarios::{
    per_cpu_second, quantile_ms, run_flow, Flow, FlowOutcome, FlowTarget, Settings,
};

/// Where the clients of a case connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Publishers on node A, subscriber on node B.
    CrossNode,
    /// Publishers and subscriber on node A; node B is idle in the cluster.
    SameNode,
    /// One node without Redis or gossip.
    Standalone,
}

impl Placement {
    pub const ALL: [Placement; 3] = [
        Placement::CrossNode,
        Placement::SameNode,
        Placement::Standalone,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Placement::CrossNode => "cross-node",
            Placement::SameNode => "same-node",
            Placement::Standalone => "standalone",
        }
    }
}

/// The MQTT load of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Load {
    /// 10 publishers -> 1 subscriber, QoS 0, unthrottled.
    ThroughputQos0,
    /// 10 publishers (window 100) -> 1 subscriber, QoS 1, unthrottled.
    ThroughputQos1,
    /// 1 publisher -> 1 subscriber, QoS 1, at the fixed `--rate`.
    Latency,
}

impl Load {
    pub const ALL: [Load; 3] = [Load::ThroughputQos0, Load::ThroughputQos1, Load::Latency];

    pub fn id(self) -> &'static str {
        match self {
            Load::ThroughputQos0 => "cluster-qos0",
            Load::ThroughputQos1 => "cluster-qos1",
            Load::Latency => "cluster-latency",
        }
    }

    pub fn title(self, rate: f64) -> String {
        match self {
            Load::ThroughputQos0 => {
                "cluster QoS 0: 10 publishers -> 1 subscriber, unthrottled".into()
            }
            Load::ThroughputQos1 => {
                "cluster QoS 1: 10 publishers (window 100) -> 1 subscriber, unthrottled".into()
            }
            Load::Latency => format!("cluster latency: QoS 1, 1 -> 1 at a fixed {rate} msgs/s"),
        }
    }

    fn flow(self, rate: f64) -> Flow {
        match self {
            Load::ThroughputQos0 => Flow::new(10, 1, "bench/in", QoS::AtMostOnce, None),
            Load::ThroughputQos1 => Flow::new(10, 1, "bench/in", QoS::AtLeastOnce, None),
            Load::Latency => Flow::new(1, 1, "bench/lat", QoS::AtLeastOnce, Some(rate)),
        }
    }
}

/// Metric names shared with the report's ratios.
pub const RECEIVED: &str = "received msgs/s";
pub const P99: &str = "latency p99 ms";

/// Runs one case on fresh processes and returns its figures.
pub async fn run_case(
    load: Load,
    placement: Placement,
    bin: &Path,
    s: &Settings,
) -> Result<Vec<Metric>> {
    // Generous bound: the run itself plus starting the cluster, connects and draining.
    let limit = s.duration + Duration::from_secs(90);
    tokio::time::timeout(limit, run_case_unbounded(load, placement, bin, s))
        .await
        .with_context(|| format!("case did not finish within {limit:?}"))?
}

async fn run_case_unbounded(
    load: Load,
    placement: Placement,
    bin: &Path,
    s: &Settings,
) -> Result<Vec<Metric>> {
    let flow = load.flow(s.rate);
    match placement {
        Placement::Standalone => {
            let spec = BrokerSpec {
                kind: BrokerKind::Starling,
                bin: bin.to_path_buf(),
            };
            let mut broker = BrokerProcess::start(&spec).await?;
            let outcome = with_liveness(
                run_flow(&FlowTarget::single(&broker), &flow, s).await,
                || broker.check_alive(),
            )?;
            Ok(metrics(load, &outcome, None))
        }
        Placement::CrossNode | Placement::SameNode => {
            let mut cluster = Cluster::start(bin).await?;
            let cross = placement == Placement::CrossNode;
            let target = FlowTarget {
                publish: cluster.a.process.addr,
                subscribe: if cross {
                    cluster.b.process.addr
                } else {
                    cluster.a.process.addr
                },
                pids: vec![
                    cluster.a.process.pid(),
                    cluster.b.process.pid(),
                    cluster.redis.process.pid(),
                ],
                remote_routes_on: cross.then_some(cluster.a.admin),
            };
            let outcome =
                with_liveness(run_flow(&target, &flow, s).await, || cluster.check_alive())?;
            let dropped = cluster
                .a
                .metric("starling_relay_dropped_total")
                .await
                .context("reading node-a's relay drops")?;
            Ok(metrics(load, &outcome, Some(dropped)))
        }
    }
}

/// A client error is usually the symptom; a dead process is the cause.
fn with_liveness<T>(result: Result<T>, check_alive: impl FnOnce() -> Result<()>) -> Result<T> {
    match result {
        Err(e) => match check_alive() {
            Err(dead) => Err(dead.context(format!("{e:#}"))),
            Ok(()) => Err(e),
        },
        Ok(v) => check_alive().map(|()| v),
    }
}

/// The figures of one case; `relay_dropped` is `None` without a cluster.
fn metrics(load: Load, o: &FlowOutcome, relay_dropped: Option<f64>) -> Vec<Metric> {
    let cpu = |i: usize| o.cpu_seconds.get(i).copied().unwrap_or(f64::NAN);
    let mut out = vec![
        Metric::new(RECEIVED, Better::Higher, o.received as f64 / o.elapsed),
        Metric::new(
            "published msgs/s",
            Better::Higher,
            o.published as f64 / o.elapsed,
        ),
        Metric::new(
            "latency p50 ms",
            Better::Lower,
            quantile_ms(&o.latency, 0.50),
        ),
        Metric::new(P99, Better::Lower, quantile_ms(&o.latency, 0.99)),
        Metric::new(
            "latency p999 ms",
            Better::Lower,
            quantile_ms(&o.latency, 0.999),
        ),
    ];
    if load == Load::Latency {
        out.push(Metric::new(
            "latency max ms",
            Better::Lower,
            quantile_ms(&o.latency, 1.0),
        ));
        out.push(Metric::new(
            "publisher max lag ms",
            Better::Lower,
            o.max_lag_ns as f64 / 1e6,
        ));
    }
    out.extend([
        Metric::new("node A CPU s", Better::Lower, cpu(0)),
        Metric::new("node B CPU s", Better::Lower, cpu(1)),
        Metric::new("redis CPU s", Better::Lower, cpu(2)),
        Metric::new(
            "msgs per CPU-s (all processes)",
            Better::Higher,
            per_cpu_second(o.received, o.total_cpu_seconds()),
        ),
        Metric::new(
            "relay drops (queue full)",
            Better::Lower,
            relay_dropped.unwrap_or(f64::NAN),
        ),
    ]);
    out
}
