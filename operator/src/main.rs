//! `starling-operator`: prints the CRD or runs the controller.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::io::Write;

#[derive(Parser)]
#[command(
    name = "starling-operator",
    version,
    about = "Runs Starling MQTT clusters on Kubernetes"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the MqttCluster CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Command::Crd => {
            let yaml = starling_operator::crd::crd_yaml().context("rendering the CRD")?;
            std::io::stdout()
                .write_all(yaml.as_bytes())
                .context("writing the CRD")?;
        }
    }
    Ok(())
}
