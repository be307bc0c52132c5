//! `starling-operator`: prints the CRD or runs the controller.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::Client;
use starling_operator::crd::MqttCluster;
use starling_operator::http::{self, HttpState};
use starling_operator::leader::{self, Elector, LeaseConfig};
use starling_operator::metrics::Metrics;
use starling_operator::reconcile::{error_policy, managed_by_selector, reconcile, Context};
use starling_operator::resources::references::{self, Referenced};
use starling_operator::resources::APP_NAME;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

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
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "STARLING_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Address of the HTTP endpoint serving /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "STARLING_OPERATOR_HTTP_BIND",
        default_value = "0.0.0.0:8080"
    )]
    http_bind: SocketAddr,
    /// Run the controller only while holding a coordination.k8s.io Lease, so that of several
    /// replicas one leads and the others stand by.
    #[arg(long, env = "STARLING_OPERATOR_LEADER_ELECTION")]
    leader_election: bool,
    /// Name of the Lease (with --leader-election).
    #[arg(long, default_value = "starling-operator")]
    lease_name: String,
    /// Namespace of the Lease; required with --leader-election.
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Log filter, e.g. `info` or `starling_operator=debug,info`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
    /// Log JSON lines instead of text.
    #[arg(long, env = "STARLING_OPERATOR_LOG_JSON")]
    log_json: bool,
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

/// Checks the CRD is installed and readable before anything else waits on it.
async fn check_crd(client: &Client, namespace: Option<&str>) -> anyhow::Result<()> {
    let clusters: Api<MqttCluster> = api(client, namespace);
    clusters
        .list(&ListParams::default().limit(1))
        .await
        .context("cannot list MqttClusters; is the CRD installed (kubectl apply -f crds/mqttcluster.yaml) and may this account list them?")?;
    Ok(())
}

/// The cluster a pod belongs to, by its `app.kubernetes.io/instance` label.
fn cluster_of_pod(meta: &kube::api::ObjectMeta) -> Option<ObjectRef<MqttCluster>> {
    let name = meta.labels.as_ref()?.get("app.kubernetes.io/instance")?;
    let reference = ObjectRef::new(name);
    Some(match &meta.namespace {
        Some(namespace) => reference.within(namespace),
        None => reference,
    })
}

/// Runs the controller until a shutdown signal.
async fn run_controller(
    client: Client,
    namespace: Option<&str>,
    ctx: Arc<Context>,
) -> anyhow::Result<()> {
    let clusters: Api<MqttCluster> = api(&client, namespace);
    let children = watcher::Config::default().labels(&managed_by_selector());
    tracing::info!(
        namespace = namespace.unwrap_or("<all>"),
        "controller running"
    );
    let controller = Controller::new(clusters, watcher::Config::default());
    // A change to a Secret or ConfigMap a cluster names reconciles that cluster: the pods roll
    // for what the brokers read only at start; the status follows the rest.
    let store = controller.store();
    let naming = |kind: Referenced| {
        let store = store.clone();
        move |object: kube::api::ObjectMeta| {
            references::clusters_naming(
                store.state().iter().map(|c| c.as_ref()),
                kind,
                object.namespace.as_deref(),
                object.name.as_deref().unwrap_or_default(),
            )
        }
    };
    let secrets = naming(Referenced::Secret);
    let config_maps = naming(Referenced::ConfigMap);
    controller
        .watches(
            api::<Secret>(&client, namespace),
            watcher::Config::default(),
            move |secret| secrets(secret.metadata),
        )
        .watches(
            api::<ConfigMap>(&client, namespace),
            watcher::Config::default(),
            move |map| config_maps(map.metadata),
        )
        // A broker pod that starts to go (or changes) reconciles its cluster: its
        // evacuation shows in the status and Events from the start.
        .watches(
            api::<Pod>(&client, namespace),
            watcher::Config::default().labels(&format!("app.kubernetes.io/name={APP_NAME}")),
            |pod| cluster_of_pod(&pod.metadata),
        )
        .owns(api::<StatefulSet>(&client, namespace), children.clone())
        .owns(api::<Deployment>(&client, namespace), children.clone())
        .owns(api::<Service>(&client, namespace), children.clone())
        .owns(api::<ConfigMap>(&client, namespace), children.clone())
        .owns(
            api::<PodDisruptionBudget>(&client, namespace),
            children.clone(),
        )
        .owns(api::<NetworkPolicy>(&client, namespace), children)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(cluster = %object, "reconciled"),
                Err(error) => tracing::warn!(%error, "controller"),
            }
        })
        .await;
    tracing::info!("controller stopped");
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let pod_name = std::env::var("POD_NAME").ok().filter(|n| !n.is_empty());
    let lease = if args.leader_election {
        Some(LeaseConfig::new(
            args.lease_name.clone(),
            args.lease_namespace.clone(),
            pod_name.clone(),
            leader::hostname(),
        )?)
    } else {
        None
    };

    let metrics = Arc::new(Metrics::new());
    let http_state = Arc::new(HttpState::new(metrics.clone()));
    let listener = TcpListener::bind(args.http_bind)
        .await
        .with_context(|| format!("cannot listen on --http-bind {}", args.http_bind))?;
    let address = listener.local_addr().unwrap_or(args.http_bind);
    tracing::info!(%address, "serving /metrics, /healthz, /readyz");
    let mut http_server = tokio::spawn(http::serve(listener, http_state.clone()));

    let client = Client::try_default()
        .await
        .context("no Kubernetes client configuration (kubeconfig or in-cluster)")?;
    let namespace = args.namespace.as_deref();
    check_crd(&client, namespace).await?;
    let instance = lease.as_ref().map(|l| l.identity.clone()).or(pod_name);
    let ctx = Arc::new(
        Context::new(client.clone(), instance, metrics.clone())
            .with_operator_namespace(args.lease_namespace.clone()),
    );

    let Some(lease) = lease else {
        metrics.leader.set(1);
        http_state.set_ready();
        return tokio::select! {
            result = run_controller(client.clone(), namespace, ctx) => result,
            result = &mut http_server => http_stopped(result),
        };
    };

    let elector = Elector::new(client.clone(), &lease)
        .await
        .with_context(|| format!("cannot use Lease {}/{}", lease.namespace, lease.name))?;
    // A standby is Ready: a Deployment with several replicas must finish rolling out.
    metrics.leader.set(0);
    http_state.set_ready();
    tracing::info!(
        identity = %lease.identity,
        lease = %format!("{}/{}", lease.namespace, lease.name),
        "standing by for the lease"
    );
    tokio::select! {
        () = elector.acquire() => {}
        result = &mut http_server => return http_stopped(result),
    }
    metrics.leader.set(1);
    let outcome = tokio::select! {
        result = run_controller(client.clone(), namespace, ctx) => result,
        reason = elector.hold() => {
            metrics.leader.set(0);
            // Exiting lets Kubernetes restart this replica as a standby; nothing of the
            // controller keeps running.
            Err(anyhow::anyhow!("lost leadership ({reason}); exiting"))
        }
        result = &mut http_server => http_stopped(result),
    };
    if outcome.is_ok() {
        // Shut down by a signal: let a standby take over now rather than after expiry.
        elector.release().await;
    }
    outcome
}

fn http_stopped(result: Result<std::io::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match result {
        Ok(Ok(())) => anyhow::bail!("the HTTP endpoint stopped"),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("the HTTP endpoint failed")),
        Err(e) => Err(anyhow::Error::new(e).context("the HTTP endpoint task failed")),
    }
}

fn init_logging(filter: &str, json: bool) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("{filter:?} is not a valid log filter"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
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
        Command::Run(run_args) => {
            init_logging(&run_args.log, run_args.log_json)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(run(run_args))?;
        }
    }
    Ok(())
}
