//! The reconciler: applies the objects [`crate::resources`] builds with server-side apply, then
//! records what it observed in the cluster's status ([`crate::status`]).
//!
//! Everything that decides *what* to apply is pure and unit-tested elsewhere; this module only
//! talks to the API server. Its tests (`reconcile/tests.rs`) run the real [`reconcile`] against
//! a scripted fake API server and check every request: order, server-side apply parameters and
//! bodies, deletions, the status patch and the returned action.

use crate::autoscale::Recommendations;
use crate::crd::{MqttCluster, RedisMode};
use crate::events;
use crate::metrics::Metrics;
use crate::resources::{self, Cluster, FIELD_MANAGER};
use crate::status::{self, Observed, ReconcileOutcome};
use crate::Error;
use apply::apply_children;
#[cfg(test)]
use apply::owned_by;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::Client;
use secrets::{settle_gossip_key, with_restart_secrets_hash};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Events about the clusters (shared, so repeats become a series).
    pub recorder: Recorder,
    /// Counts reconciles and their duration.
    pub metrics: Arc<Metrics>,
    /// The autoscaler's recent recommendations, per cluster (see [`autoscaling`]).
    pub autoscaler: std::sync::Mutex<HashMap<String, Recommendations>>,
    /// The namespace of the operator's own pod, when it runs in the cluster.
    pub operator_namespace: Option<String>,
    /// Asks a managed Redis' sentinels which pod is the primary, for the status.
    pub sentinel_reader: crate::redis_health::SentinelReader,
}

impl Context {
    /// A context whose Events name `instance` (the pod name) as reporting instance.
    pub fn new(client: Client, instance: Option<String>, metrics: Arc<Metrics>) -> Self {
        Context {
            recorder: events::recorder(client.clone(), instance),
            client,
            metrics,
            autoscaler: Default::default(),
            operator_namespace: None,
            sentinel_reader: crate::redis_health::network_reader(),
        }
    }

    /// The same context, asking sentinels with `reader`.
    pub fn with_sentinel_reader(mut self, reader: crate::redis_health::SentinelReader) -> Self {
        self.sentinel_reader = reader;
        self
    }

    /// The same context, for an operator whose pod runs in `namespace`.
    pub fn with_operator_namespace(mut self, namespace: Option<String>) -> Self {
        self.operator_namespace = namespace;
        self
    }
}

/// Every (API group, resource, verb) the controller and this module use. The chart's RBAC
/// (`charts/starling-operator/templates/rbac.yaml`, rendered into `deploy/`) must grant exactly
/// these (`operator/tests/install.rs` checks); update this list, the template and
/// `scripts/render-deploy.sh`'s output with the code.
pub const PERMISSIONS: &[(&str, &str, &[&str])] = &[
    (
        "mqtt.starling.dev",
        "mqttclusters",
        &["get", "list", "watch"],
    ),
    ("mqtt.starling.dev", "mqttclusters/status", &["patch"]),
    // The autoscaler sets `spec.replicas` through the scale subresource.
    ("mqtt.starling.dev", "mqttclusters/scale", &["patch"]),
    // Children carry a controller reference with blockOwnerDeletion, which API servers with
    // the OwnerReferencesPermissionEnforcement admission plugin only allow with this.
    ("mqtt.starling.dev", "mqttclusters/finalizers", &["update"]),
    // Watched children (`owns` in main.rs), applied (server-side apply of an object that does
    // not exist yet needs `create` as well as `patch`) and, when turned off, deleted.
    (
        "apps",
        "statefulsets",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    (
        "apps",
        "deployments",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    (
        "",
        "services",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    (
        "",
        "configmaps",
        &["get", "list", "watch", "create", "patch"],
    ),
    (
        "policy",
        "poddisruptionbudgets",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    (
        "networking.k8s.io",
        "networkpolicies",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    // Applied only (the StatefulSet of a managed Redis with Sentinel claims its own).
    ("", "persistentvolumeclaims", &["create", "patch"]),
    // The managed Redis' password, the admin token, the gossip key and the generated user:
    // read, created once; a Redis Secret from an older operator is patched to gain its
    // configuration line. Watched (`watches` in main.rs): a change to a Secret a cluster names
    // reconciles that cluster.
    ("", "secrets", &["get", "list", "watch", "create", "patch"]),
    // The cluster's pods, read for the status (why a pod cannot run, which are going and
    // their evacuations) and watched (`watches` in main.rs): a pod that starts to go
    // reconciles its cluster, so its evacuation is followed from the start.
    ("", "pods", &["list", "watch"]),
    // The autoscaler does not compete with a HorizontalPodAutoscaler on the same cluster.
    ("autoscaling", "horizontalpodautoscalers", &["list"]),
    (
        "monitoring.coreos.com",
        "servicemonitors",
        &["get", "create", "patch", "delete"],
    ),
    // Events about the clusters (kube's Recorder creates them, then patches repeats).
    ("events.k8s.io", "events", &["create", "patch"]),
];

/// What leader election ([`crate::leader`]) uses, in the Lease's namespace only: the
/// operator's namespaced Role in the Helm chart (and `deploy/`) grants it (`tests/install.rs`
/// checks, and `leader` tests that the lease manager uses nothing else).
pub const LEADER_ELECTION_PERMISSIONS: &[(&str, &str, &[&str])] =
    &[("coordination.k8s.io", "leases", &["get", "create", "patch"])];

/// How often a healthy cluster is looked at again even without changes.
const RESYNC: Duration = Duration::from_secs(300);
/// How soon a cluster that is still coming up is looked at again.
const POLL: Duration = Duration::from_secs(15);
/// How soon a cluster with a broker pod on its way out is looked at again (its evacuation).
const EVACUATION_POLL: Duration = Duration::from_secs(2);

/// Reconciles one cluster: apply, observe, record the status. A failure is also published as a
/// Warning Event; every reconcile is counted in the metrics.
pub async fn reconcile(object: Arc<MqttCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile_cluster(&object, &ctx).await;
    ctx.metrics.observe_reconcile(&result, started.elapsed());
    if let Err(error) = &result {
        events::publish(
            &ctx.recorder,
            &object,
            EventType::Warning,
            events::RECONCILE_FAILED,
            "Reconcile",
            error.to_string(),
            None,
        )
        .await;
    }
    result
}

async fn reconcile_cluster(object: &MqttCluster, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let cluster = Cluster::new(object)?.with_operator_namespace(ctx.operator_namespace.clone());
    let settled = match settle_gossip_key(client, cluster.clone()).await {
        Ok(settled) => with_restart_secrets_hash(client, settled).await,
        Err(e) => Err(e),
    };
    let (cluster, prepared) = match settled {
        Ok(settled) => (settled, Ok(())),
        Err(e) => (cluster, Err(e)),
    };
    let ns = cluster.namespace;

    let (outcome, failure) = match prepared.and_then(|()| resources::desired(&cluster)) {
        Err(e @ (Error::InvalidSpec(_) | Error::BrokerConfig(_))) => {
            (ReconcileOutcome::InvalidSpec(e.to_string()), None)
        }
        Err(e) => (ReconcileOutcome::Failed(e.to_string()), Some(e)),
        Ok(children) => match apply_children(ctx, &cluster, &children).await {
            Ok(()) => (ReconcileOutcome::Applied, None),
            Err(e) => (ReconcileOutcome::Failed(e.to_string()), Some(e)),
        },
    };

    let stateful_set = Api::<StatefulSet>::namespaced(client.clone(), ns)
        .get_opt(&cluster.broker_name())
        .await?;
    let redis_managed = matches!(cluster.spec().redis.mode(), Some(RedisMode::Managed(_)));
    let redis_sentinel = resources::redis::sentinel::settings(&cluster).is_some();
    let redis_deployment = if redis_managed && !redis_sentinel {
        Api::<Deployment>::namespaced(client.clone(), ns)
            .get_opt(&cluster.redis_name())
            .await?
    } else {
        None
    };
    let redis_stateful_set = if redis_sentinel {
        Api::<StatefulSet>::namespaced(client.clone(), ns)
            .get_opt(&cluster.redis_name())
            .await?
    } else {
        None
    };
    let sentinel_view = match (
        &redis_stateful_set,
        resources::redis::sentinel::settings(&cluster),
    ) {
        (Some(_), Some((_, sentinel))) => {
            Some((read_sentinels(ctx, &cluster).await?, sentinel.replicas))
        }
        _ => None,
    };
    let client_service = Api::<Service>::namespaced(client.clone(), ns)
        .get_opt(&cluster.broker_name())
        .await?;
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&cluster.pods_selector()))
        .await?
        .items;
    let autoscaled = match (&cluster.spec().autoscaling, &outcome) {
        (Some(spec), ReconcileOutcome::Applied) => {
            Some(autoscaling::autoscale(ctx, &cluster, spec, &pods).await)
        }
        // Not applied: the autoscaler does not run, and what it said last stays.
        (Some(_), _) => autoscaling::previous(&cluster),
        (None, _) => {
            autoscaling::forget(ctx, &cluster);
            None
        }
    };
    let evacuations = evacuation::observe(ctx, &cluster, object, &pods).await;
    let observed = Observed {
        evacuations: &evacuations,
        stateful_set: stateful_set.as_ref(),
        redis_deployment: redis_deployment.as_ref(),
        redis_stateful_set: redis_stateful_set.as_ref(),
        sentinel_view: sentinel_view.as_ref(),
        redis_managed,
        client_service: client_service.as_ref(),
        pods: &pods,
        outcome: &outcome,
        autoscaled: autoscaled.as_ref(),
    };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let new_status = status::compute(&cluster, &observed, object.status.as_ref(), &now);
    if object.status.as_ref() != Some(&new_status) {
        let patch = serde_json::json!({ "status": new_status });
        Api::<MqttCluster>::namespaced(client.clone(), ns)
            .patch_status(cluster.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }

    if let Some(e) = failure {
        return Err(e);
    }
    match &outcome {
        ReconcileOutcome::InvalidSpec(message) => {
            events::publish(
                &ctx.recorder,
                object,
                EventType::Warning,
                events::INVALID_SPEC,
                "Reconcile",
                message.clone(),
                None,
            )
            .await;
        }
        ReconcileOutcome::Applied
            if object.status.as_ref().and_then(|s| s.observed_generation)
                != object.metadata.generation =>
        {
            let generation = object.metadata.generation.unwrap_or(0);
            // The action names the generation: kube's Recorder folds Events with the same
            // type, reason, action and objects into one series that keeps the first note, so
            // with one action for all `kubectl describe` said "Reconciled (x4) ... applied
            // generation 1" after generation 2. Repeats about one generation still fold.
            events::publish(
                &ctx.recorder,
                object,
                EventType::Normal,
                events::RECONCILED,
                &events::apply_generation_action(generation),
                format!(
                    "applied generation {generation}: {} brokers",
                    cluster.spec().replicas
                ),
                None,
            )
            .await;
        }
        _ => {}
    }
    Ok(match outcome {
        // Nothing changes until the spec does.
        ReconcileOutcome::InvalidSpec(_) => Action::await_change(),
        // A pod's evacuation is followed while it lasts (seconds, at the configured rate).
        _ if evacuation::under_way(&evacuations) => Action::requeue(EVACUATION_POLL),
        // The autoscaler counts connections at the poll interval.
        _ if cluster.spec().autoscaling.is_some() => Action::requeue(POLL),
        // A Redis failover or a replica's resync is followed until replication is whole again:
        // nothing else reconciles when the sentinels' view changes.
        _ if new_status
            .conditions
            .iter()
            .any(|c| c.type_ == status::REDIS_REPLICATED && c.status != "True") =>
        {
            Action::requeue(POLL)
        }
        _ if new_status
            .conditions
            .iter()
            .any(|c| c.type_ == status::READY && c.status == "True") =>
        {
            Action::requeue(RESYNC)
        }
        _ => Action::requeue(POLL),
    })
}

/// What the managed Redis' sentinels say of it (asked with the password from its Secret).
async fn read_sentinels(
    ctx: &Context,
    cluster: &Cluster<'_>,
) -> Result<Result<crate::redis_health::SentinelView, String>, Error> {
    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(
        ctx.client.clone(),
        cluster.namespace,
    )
    .get_opt(&cluster.redis_name())
    .await?;
    let password = secret
        .and_then(|s| s.data)
        .and_then(|mut d| d.remove(resources::redis::PASSWORD_KEY))
        .and_then(|p| String::from_utf8(p.0).ok());
    let Some(password) = password else {
        return Ok(Err(format!(
            "Secret {} has no {} to ask the sentinels with",
            cluster.redis_name(),
            resources::redis::PASSWORD_KEY
        )));
    };
    let sentinels = resources::redis::sentinel::sentinel_addresses(cluster);
    let master = resources::redis::sentinel::master_name(cluster);
    Ok((ctx.sentinel_reader)(sentinels, master, password).await)
}

/// What to do after a failed reconcile: try again soon.
pub fn error_policy(object: Arc<MqttCluster>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(
        cluster = object.metadata.name.as_deref().unwrap_or("?"),
        namespace = object.metadata.namespace.as_deref().unwrap_or("?"),
        %error,
        "reconcile failed"
    );
    Action::requeue(POLL)
}

/// Label selector for the child objects the controller watches.
pub fn managed_by_selector() -> String {
    format!("app.kubernetes.io/managed-by={FIELD_MANAGER}")
}

mod apply;
pub mod autoscaling;
pub mod evacuation;
mod secrets;
#[cfg(test)]
mod tests;
