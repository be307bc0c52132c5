//! `starling-bench`: runs Starling and Mosquitto side by side on loopback with
//! the same MQTT load and prints the figures and their ratios.
//!
//! Every scenario starts a fresh process of each broker, which is killed when
//! the scenario ends (or the bench fails or is interrupted).
//!
//! `--cluster` runs the cluster scenarios instead: two Starling nodes sharing
//! one `redis-server`, compared with one node, and `redis-benchmark` XADD
//! figures as the relay's ceiling. Each cluster case runs `--repeat` times,
//! interleaved by round, and the report shows per-metric medians.

mod broker;
mod cluster;
mod cluster_report;
mod cluster_scenarios;
mod fairness;
mod mqtt;
mod procfs;
mod redis_benchmark;
mod repeats;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use tokio::signal::unix::SignalKind;

use broker::{BrokerKind, BrokerProcess, BrokerSpec};
use cluster_report::{ClusterReport, LoadResults, XaddResult};
use cluster_scenarios::{Load, Placement};
use report::{JsonReport, JsonScenario, Outcome, ScenarioReport};
use scenarios::{Scenario, Settings};

/// Open files wanted for the bench and the brokers it starts.
const NOFILE_WANTED: u64 = 30_000;
/// Runs per cluster case without `--repeat`.
const CLUSTER_REPEAT: u64 = 3;

/// Benchmark Starling against Mosquitto on loopback.
#[derive(Debug, Parser)]
#[command(name = "starling-bench", version)]
struct Args {
    /// Starling broker binary [default: $CARGO_TARGET_DIR or <workspace>/target, + release/starling-broker]
    #[arg(long, value_name = "PATH")]
    starling_bin: Option<PathBuf>,
    /// Mosquitto binary (a path, or a name looked up in $PATH).
    #[arg(long, value_name = "PATH", default_value = "mosquitto")]
    mosquitto_bin: PathBuf,
    /// Run only this broker.
    #[arg(long, value_enum)]
    only: Option<BrokerKind>,
    /// Run the cluster scenarios instead: two Starling nodes sharing one
    /// redis-server (publisher and subscriber on different nodes, on the same
    /// node, and on a standalone node) and redis-benchmark XADD as the ceiling.
    #[arg(long, conflicts_with_all = ["only", "scenarios"])]
    cluster: bool,
    /// Runs of every cluster case, interleaved by round; the report shows
    /// the median of each metric [default: 3].
    #[arg(long, value_name = "N", requires = "cluster",
          value_parser = clap::value_parser!(u64).range(1..=50))]
    repeat: Option<u64>,
    /// Measured seconds per scenario and broker.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=120))]
    seconds: u64,
    /// Run only these scenarios (repeatable) [default: all].
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
    /// Idle connections opened in the idle-connections scenario.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Total publish rate (msgs/s) of the latency scenarios.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Publishers of the unbatched scenarios (publisher/subscriber pairs in
    /// pairs-qos1-unbatched).
    #[arg(long, default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    publishers: u64,
    /// Pace every publisher of the unbatched fan-in and pairs scenarios at
    /// this many msgs/s, so the total is fixed [default: unthrottled].
    #[arg(long, value_name = "MSGS_PER_S")]
    per_client_rate: Option<f64>,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Ends a case's progress line ("done" or "FAILED") and turns its result into an outcome; a
/// failure clears `all_ok`.
fn finished(result: Result<Vec<report::Metric>>, all_ok: &mut bool) -> Outcome {
    match result {
        Ok(metrics) => {
            println!("done");
            Outcome::Ok { metrics }
        }
        Err(e) => {
            println!("FAILED");
            *all_ok = false;
            Outcome::Failed {
                error: format!("{e:#}"),
            }
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On SIGINT/SIGTERM the run future is dropped, and with it the brokers.
    let result = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let work = async {
            if args.cluster {
                run_cluster(args).await
            } else {
                run(args).await
            }
        };
        tokio::select! {
            r = work => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            _ = term.recv() => Err(anyhow::anyhow!("terminated")),
        }
    });
    // Dropping the runtime drops any task still holding a connection.
    drop(runtime);
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: some runs failed (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs all selected scenarios; `Ok(false)` if any broker run failed.
async fn run(args: Args) -> Result<bool> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number");
    }
    if let Some(r) = args.per_client_rate {
        if !(r.is_finite() && r > 0.0) {
            bail!("--per-client-rate must be a positive number");
        }
    }
    let brokers = select_brokers(&args)?;
    // Each client socket is an open file here and one in the broker; pairs
    // open two clients per publisher.
    let clients = (args.connections as u64).max(2 * args.publishers);
    let nofile = broker::raise_nofile_limit(NOFILE_WANTED.max(clients + 1000))?;
    if nofile < clients + 1000 {
        eprintln!("warning: open-file limit {nofile} may be too low for {clients} connections");
    }
    let settings = Settings {
        duration: Duration::from_secs(args.seconds),
        connections: args.connections,
        rate: args.rate,
        publishers: usize::try_from(args.publishers).context("--publishers")?,
        per_client_rate: args.per_client_rate,
        clk_tck: procfs::clock_ticks_per_second()?,
    };
    let selected: Vec<Scenario> = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        Scenario::ALL
            .into_iter()
            .filter(|s| args.scenarios.contains(s))
            .collect()
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    println!("starling-bench: loopback, {cores} cores shared by the load generator and the broker");
    for b in &brokers {
        println!("  {}: {}", b.kind, b.bin.display());
    }
    println!(
        "  {} s per scenario and broker; a fresh broker process for every scenario and broker",
        args.seconds
    );
    println!();

    let mut reports = Vec::new();
    let mut all_ok = true;
    for scenario in selected {
        let mut starling = Outcome::Skipped;
        let mut mosquitto = Outcome::Skipped;
        for spec in &brokers {
            print!("-- {} on {} ... ", scenario.id(), spec.kind);
            flush_stdout();
            let outcome = finished(run_one(scenario, spec, &settings).await, &mut all_ok);

            match spec.kind {
                BrokerKind::Starling => starling = outcome,
                BrokerKind::Mosquitto => mosquitto = outcome,
            }
        }
        let report = ScenarioReport {
            id: scenario.id(),
            title: scenario.title(&settings),
            notes: scenario.notes().to_vec(),
            starling,
            mosquitto,
        };
        println!("\n{}", report.render());
        reports.push(report);
    }
    println!("ratios are starling/mosquitto: above 1 means Starling is better unless marked 'lower is better'");

    if let Some(path) = &args.json {
        let json = JsonReport {
            seconds_per_scenario: settings.duration.as_secs_f64(),
            broker_lifecycle: "fresh broker process per scenario and broker",
            cores,
            scenarios: reports.iter().map(JsonScenario::from).collect(),
        };
        let text = serde_json::to_string_pretty(&json).context("encoding JSON")?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("results written to {}", path.display());
    }
    Ok(all_ok)
}

/// Runs the cluster scenarios and redis-benchmark; `Ok(false)` if any failed.
async fn run_cluster(args: Args) -> Result<bool> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number");
    }
    let repeat = args.repeat.unwrap_or(CLUSTER_REPEAT);
    let bin = cluster::starling_bin(args.starling_bin.clone())?;
    for tool in ["redis-server", "redis-benchmark"] {
        if broker::resolve_bin(std::path::Path::new(tool)).is_none() {
            bail!(
                "{tool} not found in $PATH: install it (apt-get install redis-server redis-tools)"
            );
        }
    }
    broker::raise_nofile_limit(NOFILE_WANTED)?;
    let settings = Settings {
        duration: Duration::from_secs(args.seconds),
        connections: args.connections,
        rate: args.rate,
        publishers: usize::try_from(args.publishers).context("--publishers")?,
        per_client_rate: args.per_client_rate,
        clk_tck: procfs::clock_ticks_per_second()?,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "starling-bench --cluster: loopback, {cores} cores shared by the load generator, \
         both nodes and redis-server"
    );
    println!("  starling: {}", bin.display());
    println!(
        "  {} s per case; fresh processes for every run (redis-server + node-a + node-b, \
         or one standalone node)",
        args.seconds
    );
    println!(
        "  {repeat} run(s) of every case, round by round; tables show per-metric medians \
         of the runs that succeeded"
    );
    println!(
        "  cross-node: publishers on node-a, subscriber on node-b; same-node: both on node-a\n"
    );

    let mut all_ok = true;
    let mut loads: Vec<LoadResults> = Load::ALL
        .into_iter()
        .map(|load| LoadResults::new(load, args.rate))
        .collect();
    // Round by round, so a slow spell of the machine hits every placement alike.
    for round in 1..=repeat {
        for results in &mut loads {
            for placement in Placement::ALL {
                print!(
                    "-- run {round}/{repeat}: {} {} ... ",
                    results.load.id(),
                    placement.label()
                );
                flush_stdout();
                let outcome = finished(
                    cluster_scenarios::run_case(results.load, placement, &bin, &settings).await,
                    &mut all_ok,
                );
                results.push(placement, outcome);
            }
        }
    }

    print!("-- redis-benchmark XADD ... ");
    flush_stdout();
    let xadd = xadd_ceiling(&bin).await;
    all_ok &= xadd.iter().all(|x| x.figures.is_ok());
    println!("done\n");

    let report = ClusterReport {
        rate: args.rate,
        repeat: repeat as usize,
        loads,
        xadd,
    };
    println!("{}", report.render());
    println!("cross/same: cross-node value / same-node value; saturated runs' latencies are queueing delay");

    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "seconds_per_case": settings.duration.as_secs_f64(),
            "runs_per_case": repeat,
            "cores": cores,
            "cluster": &report,
            "summary": report.summary(),
        });
        let text = serde_json::to_string_pretty(&json).context("encoding JSON")?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("results written to {}", path.display());
    }
    Ok(all_ok)
}

/// Runs the redis-benchmark XADD runs against the redis-server of a fresh,
/// idle two-node cluster.
async fn xadd_ceiling(bin: &std::path::Path) -> Vec<XaddResult> {
    let cluster = cluster::Cluster::start(bin).await;
    let mut results = Vec::new();
    for run in &redis_benchmark::RUNS {
        let (command, figures) = match &cluster {
            Ok(c) => (
                run.command_line(c.redis.process.addr.port()),
                redis_benchmark::measure(run, c.redis.process.addr)
                    .await
                    .map_err(|e| format!("{e:#}")),
            ),
            Err(e) => (
                run.command_line(0),
                Err(format!("starting the cluster: {e:#}")),
            ),
        };
        results.push(XaddResult {
            label: run.label,
            command,
            figures,
        });
    }
    results
}

/// Starts a fresh broker, runs one scenario on it (bounded in time), and
/// kills the broker again.
async fn run_one(
    scenario: Scenario,
    spec: &BrokerSpec,
    s: &Settings,
) -> Result<Vec<report::Metric>> {
    let mut broker = BrokerProcess::start(spec).await?;
    // Generous bound: the run itself plus setup, connects and draining.
    let limit = s.duration + Duration::from_secs(60);
    let result = tokio::time::timeout(limit, scenario.run(&mut broker, s))
        .await
        .with_context(|| format!("scenario did not finish within {limit:?}"))
        .and_then(|r| r);
    // A client error is usually the symptom; a dead broker is the cause.
    match result {
        Err(e) => match broker.check_alive() {
            Err(dead) => Err(dead.context(format!("{e:#}"))),
            Ok(()) => Err(e),
        },
        ok => ok,
    }
}

/// The brokers to run, with their binaries checked up front.
fn select_brokers(args: &Args) -> Result<Vec<BrokerSpec>> {
    let mut brokers = Vec::new();
    if args.only != Some(BrokerKind::Mosquitto) {
        let bin = args
            .starling_bin
            .clone()
            .unwrap_or_else(broker::default_starling_bin);
        let Some(bin) = broker::resolve_bin(&bin) else {
            bail!(
                "Starling binary {} not found: build it with `cargo build --release -p starling-broker`, \
                 pass --starling-bin, or use --only mosquitto",
                bin.display()
            );
        };
        brokers.push(BrokerSpec {
            kind: BrokerKind::Starling,
            bin,
        });
    }
    if args.only != Some(BrokerKind::Starling) {
        let Some(bin) = broker::resolve_bin(&args.mosquitto_bin) else {
            bail!(
                "mosquitto binary {} not found: install it (apt-get install mosquitto), \
                 pass --mosquitto-bin, or use --only starling",
                args.mosquitto_bin.display()
            );
        };
        brokers.push(BrokerSpec {
            kind: BrokerKind::Mosquitto,
            bin,
        });
    }
    Ok(brokers)
}

fn flush_stdout() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
