//! The reconciler: applies the objects [`crate::resources`] builds with server-side apply, then
//! records what it observed in the cluster's status ([`crate::status`]).
//!
//! Everything that decides *what* to apply is pure and unit-tested elsewhere; this module only
//! talks to the API server and is compile-checked but not exercised by tests: there is no API
//! server in the test environment.

use crate::crd::{MqttCluster, RedisMode};
use crate::resources::{self, redis, servicemonitor, Children, Cluster, FIELD_MANAGER};
use crate::status::{self, Observed, ReconcileOutcome};
use crate::Error;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::runtime::controller::Action;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
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
    // Applied only.
    ("", "persistentvolumeclaims", &["create", "patch"]),
    // The managed Redis' password: read, created once.
    ("", "secrets", &["get", "create"]),
    (
        "monitoring.coreos.com",
        "servicemonitors",
        &["get", "create", "patch", "delete"],
    ),
];

/// How often a healthy cluster is looked at again even without changes.
const RESYNC: Duration = Duration::from_secs(300);
/// How soon a cluster that is still coming up is looked at again.
const POLL: Duration = Duration::from_secs(15);

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Server-side applies one namespaced object.
async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let name = object
        .meta()
        .name
        .as_deref()
        .ok_or(Error::MissingMetadata("name"))?;
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(name, &apply_params(), &Patch::Apply(object))
        .await?;
    Ok(())
}

/// Whether `meta` names this cluster (by uid) as its controlling owner.
fn owned_by(meta: &kube::api::ObjectMeta, cluster: &Cluster<'_>) -> bool {
    let uid = cluster.object.metadata.uid.as_deref();
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

/// Deletes one namespaced object if it exists and this cluster controls it. An object of the
/// same name that the user made (say, their own Redis named like the managed one) is left
/// alone.
async fn delete_owned<K>(client: &Client, cluster: &Cluster<'_>, name: &str) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), cluster.namespace);
    let Some(existing) = api.get_opt(name).await? else {
        return Ok(());
    };
    if !owned_by(existing.meta(), cluster) {
        return Ok(());
    }
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Applies `object` when it is `Some`, deletes `name` when it is `None`.
async fn apply_or_delete<K>(
    client: &Client,
    cluster: &Cluster<'_>,
    name: String,
    object: Option<&K>,
) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    match object {
        Some(o) => apply(client, cluster.namespace, o).await,
        None => delete_owned::<K>(client, cluster, &name).await,
    }
}

/// Creates the managed Redis' password Secret unless it exists. It is never rewritten, so the
/// password stays stable.
async fn ensure_redis_secret(client: &Client, cluster: &Cluster<'_>) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), cluster.namespace);
    if api.get_opt(&cluster.redis_name()).await?.is_some() {
        return Ok(());
    }
    let secret = redis::password_secret(cluster, &redis::generate_password()?);
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(()),
        // Another reconcile created it meanwhile: keep that password.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Applies or removes the ServiceMonitor, when the API server knows the kind.
async fn reconcile_service_monitor(client: &Client, cluster: &Cluster<'_>) -> Result<(), Error> {
    let gvk = GroupVersionKind::gvk(
        servicemonitor::GROUP,
        servicemonitor::VERSION,
        servicemonitor::KIND,
    );
    let resource = match kube::discovery::pinned_kind(client, &gvk).await {
        Ok((resource, _)) => resource,
        // The Prometheus Operator is not installed: nothing to create or clean up.
        Err(_) => return Ok(()),
    };
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), cluster.namespace, &resource);
    match servicemonitor::service_monitor(cluster) {
        Some(value) => {
            api.patch(
                &cluster.broker_name(),
                &apply_params(),
                &Patch::Apply(&value),
            )
            .await?;
        }
        None => {
            let owned = match api.get_opt(&cluster.broker_name()).await? {
                Some(existing) => owned_by(&existing.metadata, cluster),
                None => false,
            };
            if owned {
                match api
                    .delete(&cluster.broker_name(), &DeleteParams::background())
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}

/// Applies every child, in an order that lets each find what it needs.
async fn apply_children(
    client: &Client,
    cluster: &Cluster<'_>,
    children: &Children,
) -> Result<(), Error> {
    let ns = cluster.namespace;
    let managed = matches!(cluster.spec().redis.mode(), Some(RedisMode::Managed(_)));
    // The managed Redis' Secret is kept when switching to an external Redis (switching back
    // reuses the password); it goes with the cluster (owner reference).
    if managed {
        ensure_redis_secret(client, cluster).await?;
    }
    // The claim is applied but never deleted here: turning persistence off must not destroy
    // data. It goes with the cluster (owner reference).
    if let Some(claim) = &children.redis_volume {
        apply::<PersistentVolumeClaim>(client, ns, claim).await?;
    }
    apply_or_delete(
        client,
        cluster,
        cluster.redis_name(),
        children.redis_service.as_ref(),
    )
    .await?;
    apply_or_delete(
        client,
        cluster,
        cluster.redis_name(),
        children.redis_deployment.as_ref(),
    )
    .await?;
    apply::<ConfigMap>(client, ns, &children.config_map).await?;
    apply::<Service>(client, ns, &children.headless_service).await?;
    apply::<Service>(client, ns, &children.client_service).await?;
    apply::<StatefulSet>(client, ns, &children.stateful_set).await?;
    apply_or_delete(
        client,
        cluster,
        cluster.broker_name(),
        children.pod_disruption_budget.as_ref(),
    )
    .await?;
    reconcile_service_monitor(client, cluster).await
}

/// Reconciles one cluster: apply, observe, record the status.
pub async fn reconcile(object: Arc<MqttCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let cluster = Cluster::new(&object)?;
    let client = &ctx.client;
    let ns = cluster.namespace;

    let (outcome, failure) = match resources::desired(&cluster) {
        Err(e @ (Error::InvalidSpec(_) | Error::BrokerConfig(_))) => {
            (ReconcileOutcome::InvalidSpec(e.to_string()), None)
        }
        Err(e) => (ReconcileOutcome::Failed(e.to_string()), Some(e)),
        Ok(children) => match apply_children(client, &cluster, &children).await {
            Ok(()) => (ReconcileOutcome::Applied, None),
            Err(e) => (ReconcileOutcome::Failed(e.to_string()), Some(e)),
        },
    };

    let stateful_set = Api::<StatefulSet>::namespaced(client.clone(), ns)
        .get_opt(&cluster.broker_name())
        .await?;
    let redis_managed = matches!(cluster.spec().redis.mode(), Some(RedisMode::Managed(_)));
    let redis_deployment = if redis_managed {
        Api::<Deployment>::namespaced(client.clone(), ns)
            .get_opt(&cluster.redis_name())
            .await?
    } else {
        None
    };
    let client_service = Api::<Service>::namespaced(client.clone(), ns)
        .get_opt(&cluster.broker_name())
        .await?;
    let observed = Observed {
        stateful_set: stateful_set.as_ref(),
        redis_deployment: redis_deployment.as_ref(),
        redis_managed,
        client_service: client_service.as_ref(),
        outcome: &outcome,
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
    Ok(match outcome {
        // Nothing changes until the spec does.
        ReconcileOutcome::InvalidSpec(_) => Action::await_change(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_support::cluster;

    #[test]
    fn only_objects_this_cluster_controls_count_as_owned() {
        let object = cluster(Default::default());
        let c = Cluster::new(&object).expect("cluster");
        let ours = c.child_meta("demo-redis".into(), "redis");
        assert!(owned_by(&ours, &c));
        let mut theirs = ours.clone();
        theirs.owner_references = None;
        assert!(!owned_by(&theirs, &c), "a user's object of the same name");
        let mut other = ours;
        if let Some(refs) = other.owner_references.as_mut() {
            refs[0].uid = "another-cluster".into();
        }
        assert!(!owned_by(&other, &c));
    }
}
