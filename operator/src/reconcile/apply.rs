//! Applying a cluster's children: server-side apply of what [`crate::resources`] builds, in an
//! order that lets each find what it needs, and deletion of what the spec no longer asks for
//! (only objects this cluster controls, each named in an Event).

use super::secrets::{ensure_admin_secret, ensure_generated_user, ensure_redis_secret};
use super::Context;
use crate::crd::RedisMode;
use crate::events;
use crate::resources::{servicemonitor, users, Children, Cluster, FIELD_MANAGER};
use crate::Error;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, PersistentVolumeClaim, Service};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::runtime::events::EventType;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;

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
pub(super) fn owned_by(meta: &kube::api::ObjectMeta, cluster: &Cluster<'_>) -> bool {
    let uid = cluster.object.metadata.uid.as_deref();
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

/// Records that `child`, which the spec no longer asks for, was deleted.
async fn deleted_child_event(ctx: &Context, cluster: &Cluster<'_>, child: ObjectReference) {
    let kind = child.kind.as_deref().unwrap_or("object");
    let name = child.name.as_deref().unwrap_or("?");
    let note = format!("deleted {kind} {name}: the spec no longer asks for it");
    events::publish(
        &ctx.recorder,
        cluster.object,
        EventType::Normal,
        events::DELETED_CHILD,
        "DeleteChild",
        note,
        Some(child),
    )
    .await;
}

/// Deletes one namespaced object if it exists and this cluster controls it. An object of the
/// same name that the user made (say, their own Redis named like the managed one) is left
/// alone.
async fn delete_owned<K>(ctx: &Context, cluster: &Cluster<'_>, name: &str) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), cluster.namespace);
    let Some(existing) = api.get_opt(name).await? else {
        return Ok(());
    };
    if !owned_by(existing.meta(), cluster) {
        return Ok(());
    }
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {
            deleted_child_event(ctx, cluster, existing.object_ref(&())).await;
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Applies `object` when it is `Some`, deletes `name` when it is `None`.
async fn apply_or_delete<K>(
    ctx: &Context,
    cluster: &Cluster<'_>,
    name: &str,
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
        Some(o) => apply(&ctx.client, cluster.namespace, o).await,
        None => delete_owned::<K>(ctx, cluster, name).await,
    }
}

/// Applies or removes the ServiceMonitor, when the API server knows the kind.
async fn reconcile_service_monitor(ctx: &Context, cluster: &Cluster<'_>) -> Result<(), Error> {
    let client = &ctx.client;
    let gvk = GroupVersionKind::gvk(
        servicemonitor::GROUP,
        servicemonitor::VERSION,
        servicemonitor::KIND,
    );
    let resource = match kube::discovery::pinned_kind(client, &gvk).await {
        Ok((resource, _)) => resource,
        // The Prometheus Operator is not installed (no such API group, or a version of it
        // without the kind): nothing to create or clean up. A real API server answers an
        // unknown group version with a plain-text `404 page not found`, not a `Status`, so kube
        // reports it with reason "Failed to parse error data" and only the code says 404.
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(kube::Error::Discovery(_)) => return Ok(()),
        // Anything else (the API server is unreachable, forbids discovery, ...) is a failure,
        // not a reason to leave a ServiceMonitor behind or never create it.
        Err(e) => return Err(e.into()),
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
                Some(existing) if owned_by(&existing.metadata, cluster) => Some(existing),
                _ => None,
            };
            if let Some(existing) = owned {
                match api
                    .delete(&cluster.broker_name(), &DeleteParams::background())
                    .await
                {
                    Ok(_) => {
                        deleted_child_event(ctx, cluster, existing.object_ref(&resource)).await;
                    }
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}

/// Applies every child, in an order that lets each find what it needs.
pub(super) async fn apply_children(
    ctx: &Context,
    cluster: &Cluster<'_>,
    children: &Children,
) -> Result<(), Error> {
    let client = &ctx.client;
    let ns = cluster.namespace;
    let managed = matches!(cluster.spec().redis.mode(), Some(RedisMode::Managed(_)));
    let (redis, redis_nodes) = (cluster.redis_name(), cluster.redis_nodes_service_name());
    let broker = cluster.broker_name();
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
    apply_or_delete(ctx, cluster, &redis, children.redis_service.as_ref()).await?;
    apply_or_delete(ctx, cluster, &redis, children.redis_deployment.as_ref()).await?;
    // With Sentinel: the pods' DNS names first (their scripts find each other by them).
    apply_or_delete(
        ctx,
        cluster,
        &redis_nodes,
        children.redis_nodes_service.as_ref(),
    )
    .await?;
    apply_or_delete(ctx, cluster, &redis, children.redis_stateful_set.as_ref()).await?;
    apply_or_delete(
        ctx,
        cluster,
        &redis,
        children.redis_pod_disruption_budget.as_ref(),
    )
    .await?;
    // The brokers read their admin token from it (and their preStop hook uses it).
    ensure_admin_secret(client, cluster).await?;
    if users::generates_user(cluster) {
        ensure_generated_user(client, cluster).await?;
    }
    apply::<ConfigMap>(client, ns, &children.config_map).await?;
    apply::<Service>(client, ns, &children.headless_service).await?;
    apply::<Service>(client, ns, &children.client_service).await?;
    apply::<StatefulSet>(client, ns, &children.stateful_set).await?;
    apply_or_delete(
        ctx,
        cluster,
        &broker,
        children.pod_disruption_budget.as_ref(),
    )
    .await?;
    apply_or_delete(
        ctx,
        cluster,
        &broker,
        children.broker_network_policy.as_ref(),
    )
    .await?;
    apply_or_delete(ctx, cluster, &redis, children.redis_network_policy.as_ref()).await?;
    reconcile_service_monitor(ctx, cluster).await
}
