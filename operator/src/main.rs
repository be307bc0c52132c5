//! `starling-operator`: prints the CRD or runs the controller.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use kube::runtime::{watcher, Controller};
use kube::Client;
use starling_operator::crd::MqttCluster;
use starling_operator::reconcile::{error_policy, managed_by_selector, reconcile, Context};
use std::io::Write;
use std::sync::Arc;

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
    /// Run the controller against the cluster from the kubeconfig or the in-cluster account.
    Run {
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "STARLING_OPERATOR_NAMESPACE")]
        namespace: Option<String>,
        /// Log filter, e.g. `info` or `starling_operator=debug,info`.
        #[arg(long, env = "RUST_LOG", default_value = "info")]
        log: String,
        /// Log JSON lines instead of text.
        #[arg(long, env = "STARLING_OPERATOR_LOG_JSON")]
        log_json: bool,
    },
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn run(namespace: Option<String>) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("no Kubernetes client configuration (kubeconfig or in-cluster)")?;
    let ns = namespace.as_deref();
    let clusters: Api<MqttCluster> = api(&client, ns);
    clusters
        .list(&ListParams::default().limit(1))
        .await
        .context("cannot list MqttClusters; is the CRD installed (kubectl apply -f crds/mqttcluster.yaml) and may this account list them?")?;

    let children = watcher::Config::default().labels(&managed_by_selector());
    let ctx = Arc::new(Context::new(client.clone(), std::env::var("POD_NAME").ok()));
    tracing::info!(
        namespace = ns.unwrap_or("<all>"),
        "starling-operator running"
    );
    Controller::new(clusters, watcher::Config::default())
        .owns(api::<StatefulSet>(&client, ns), children.clone())
        .owns(api::<Deployment>(&client, ns), children.clone())
        .owns(api::<Service>(&client, ns), children.clone())
        .owns(api::<ConfigMap>(&client, ns), children.clone())
        .owns(api::<PodDisruptionBudget>(&client, ns), children)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(cluster = %object, "reconciled"),
                Err(error) => tracing::warn!(%error, "controller"),
            }
        })
        .await;
    tracing::info!("starling-operator stopped");
    Ok(())
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
        Command::Run {
            namespace,
            log,
            log_json,
        } => {
            let filter = tracing_subscriber::EnvFilter::try_new(&log)
                .with_context(|| format!("{log:?} is not a valid log filter"))?;
            let builder = tracing_subscriber::fmt().with_env_filter(filter);
            if log_json {
                builder.json().init();
            } else {
                builder.init();
            }
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(run(namespace))?;
        }
    }
    Ok(())
}
