//! `local-cluster`: runs a Starling cluster on this machine for a person to try, as the
//! end-to-end tests do: a `redis-server`, broker nodes that find each other by gossip, and
//! HAProxy balancing MQTT connections over them round-robin. Everything listens on loopback and
//! stops on Ctrl-C.

use anyhow::{ensure, Context as _};
use clap::Parser;
use e2e::{BrokerNode, ClusterSettings, Haproxy, RedisServer};
use std::net::SocketAddr;

#[derive(Parser)]
#[command(
    name = "local-cluster",
    about = "Runs redis-server, N Starling nodes and HAProxy on loopback until Ctrl-C"
)]
struct Args {
    /// Number of broker nodes (1 to 9).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Port of the load balancer's MQTT entry point on 127.0.0.1.
    #[arg(long, default_value_t = 1883)]
    port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        (1..=9).contains(&args.nodes),
        "--nodes must be between 1 and 9 (got {})",
        args.nodes
    );
    let redis = RedisServer::start()
        .await
        .context("starting redis-server")?;
    let mut nodes: Vec<BrokerNode> = Vec::new();
    let mut seeds: Vec<SocketAddr> = Vec::new();
    for i in 0..args.nodes {
        let settings = ClusterSettings::new(&redis.url(), &seeds)?;
        let id = format!("node-{i}");
        let node = BrokerNode::start_clustered(&id, &settings)
            .await
            .with_context(|| format!("starting {id}"))?;
        seeds.push(settings.gossip);
        nodes.push(node);
    }
    let entry = SocketAddr::from(([127, 0, 0, 1], args.port));
    let backends: Vec<SocketAddr> = nodes.iter().map(|n| n.mqtt).collect();
    let _haproxy = Haproxy::start_on(entry, &backends)
        .await
        .with_context(|| format!("starting haproxy on {entry} (is the port free? try --port)"))?;

    println!("Starling local cluster is up:");
    println!("  MQTT entry point (HAProxy, round-robin): {entry}");
    for node in &nodes {
        println!(
            "  {}: MQTT {}  admin http://{}/metrics",
            node.id, node.mqtt, node.admin
        );
    }
    println!("  redis: {}", redis.url());
    println!(
        "Try: mosquitto_sub -h 127.0.0.1 -p {} -t 'demo/#' -v   and   mosquitto_pub -h 127.0.0.1 -p {} -t demo/hello -m hi",
        args.port, args.port
    );
    println!("Ctrl-C stops everything.");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    println!("stopping");
    Ok(())
}
