//! The autoscaler's part of a reconcile: refuses to compete with an external
//! HorizontalPodAutoscaler, reads the brokers' counts, decides ([`crate::autoscale`]) and sets
//! `spec.replicas` through the scale subresource, with an Event.

use super::Context;
use crate::autoscale::cpu::millicores;
use crate::autoscale::{self, counts, Autoscaled, Counts, Cpu, Recommendations};
use crate::crd::{AutoscalingSpec, AutoscalingStatus, MqttCluster, GROUP};
use crate::events;
use crate::resources::admin::TOKEN_KEY;
use crate::resources::Cluster;
use crate::Error;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use std::time::Instant;

/// Event reason: the autoscaler changed the cluster's size.
pub const SCALED: &str = "Autoscaled";

/// How often the brokers are counted: reconciles in between (a status patch, a child changing)
/// reuse the last count, or every status patch carrying a new count would start the next
/// reconcile at once.
const COUNT_EVERY: std::time::Duration = std::time::Duration::from_secs(14);

/// Runs the autoscaler for one cluster whose `spec.autoscaling` is `spec`. An error of the API
/// server is reported in the condition (`AutoscalerFailed`), not returned: the rest of the
/// status is still written.
pub async fn autoscale(
    ctx: &Context,
    cluster: &Cluster<'_>,
    spec: &AutoscalingSpec,
    pods: &[Pod],
) -> Autoscaled {
    let recent = {
        let states = ctx.autoscaler.lock().unwrap_or_else(|e| e.into_inner());
        states
            .get(&key(cluster))
            .and_then(|h| h.last_counted())
            .is_some_and(|at| at.elapsed() < COUNT_EVERY)
    };
    if recent {
        if let Some(previous) = previous(cluster) {
            return previous;
        }
    }
    match count_and_scale(ctx, cluster, spec, pods).await {
        Ok(autoscaled) => autoscaled,
        Err(e) => Autoscaled {
            active: false,
            reason: "AutoscalerFailed".into(),
            message: format!("the autoscaler could not read or scale the cluster: {e}"),
            status: previous_status(cluster),
        },
    }
}

/// What the status recorded last (condition and `status.autoscaling`), to keep it while the
/// autoscaler does not run (a failed apply, a count too recent).
pub fn previous(cluster: &Cluster<'_>) -> Option<Autoscaled> {
    let status = cluster.object.status.as_ref()?;
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == crate::status::AUTOSCALING)?;
    Some(Autoscaled {
        active: condition.status == "True",
        reason: condition.reason.clone(),
        message: condition.message.clone(),
        status: status.autoscaling.clone()?,
    })
}

fn previous_status(cluster: &Cluster<'_>) -> AutoscalingStatus {
    cluster
        .object
        .status
        .as_ref()
        .and_then(|s| s.autoscaling.clone())
        .unwrap_or(AutoscalingStatus {
            desired_replicas: cluster.spec().replicas,
            connections: None,
            last_scale_time: None,
        })
}

async fn count_and_scale(
    ctx: &Context,
    cluster: &Cluster<'_>,
    spec: &AutoscalingSpec,
    pods: &[Pod],
) -> Result<Autoscaled, Error> {
    let current = cluster.spec().replicas;
    let last_scale_time = previous_status(cluster).last_scale_time;
    if let Some(hpa) = external_autoscaler(ctx, cluster).await? {
        forget(ctx, cluster);
        return Ok(Autoscaled {
            active: false,
            reason: "ExternalAutoscaler".into(),
            message: format!(
                "the HorizontalPodAutoscaler {hpa} scales this cluster too: remove it or \
                 spec.autoscaling; the operator does not scale meanwhile"
            ),
            status: AutoscalingStatus {
                desired_replicas: current,
                connections: None,
                last_scale_time,
            },
        });
    }
    let reading = match admin_token(ctx, cluster).await? {
        Some(token) => {
            let port = u16::try_from(cluster.spec().broker.admin_port).unwrap_or(0);
            counts::read(&cluster.broker_name(), current, pods, port, &token).await
        }
        None => counts::Reading {
            counts: Counts::Missing {
                known: 0,
                pods: vec![format!(
                    "every broker (the Secret {} holds no {TOKEN_KEY})",
                    cluster.admin_secret_name()
                )],
            },
            cpu_seconds: Vec::new(),
        },
    };
    let counts = reading.counts;
    let decision = {
        let mut histories = ctx.autoscaler.lock().unwrap_or_else(|e| e.into_inner());
        let history = histories
            .entry(key(cluster))
            .or_insert_with(|| Recommendations::new(Instant::now()));
        let now = Instant::now();
        let cpu = match (spec.target_cpu_utilization_percent, cpu_request(cluster)) {
            (None, _) => Cpu::NotTargeted,
            (Some(_), None) => Cpu::Unknown("no resources.requests.cpu to compare with".into()),
            (Some(_), Some(request)) if matches!(counts, Counts::Complete(_)) => {
                history.cpu.utilization(&reading.cpu_seconds, request, now)
            }
            (Some(_), Some(_)) => Cpu::Unknown("not every broker answered".into()),
        };
        autoscale::decide(spec, current, &counts, &cpu, history, now)
    };
    let mut last_scale_time = last_scale_time;
    if decision.desired != current {
        scale(ctx, cluster, decision.desired).await?;
        last_scale_time = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        events::publish(
            &ctx.recorder,
            cluster.object,
            EventType::Normal,
            SCALED,
            "Autoscale",
            format!(
                "{current} → {} brokers: {}",
                decision.desired, decision.message
            ),
            None,
        )
        .await;
    }
    Ok(Autoscaled {
        active: true,
        reason: decision.reason.as_str().into(),
        message: decision.message,
        status: AutoscalingStatus {
            desired_replicas: decision.desired,
            connections: match counts {
                Counts::Complete(n) => Some(n),
                Counts::Missing { .. } => None,
            },
            last_scale_time,
        },
    })
}

/// Forgets a cluster's recommendations (its autoscaling turned off, or handed to an HPA).
pub fn forget(ctx: &Context, cluster: &Cluster<'_>) {
    let mut histories = ctx.autoscaler.lock().unwrap_or_else(|e| e.into_inner());
    histories.remove(&key(cluster));
}

/// Recommendations are kept per cluster object (a cluster deleted and made again starts over).
fn key(cluster: &Cluster<'_>) -> String {
    let uid = cluster.object.metadata.uid.as_deref().unwrap_or("");
    format!("{}/{}/{uid}", cluster.namespace, cluster.name)
}

/// The name of a HorizontalPodAutoscaler in the namespace that targets this cluster, if any.
async fn external_autoscaler(
    ctx: &Context,
    cluster: &Cluster<'_>,
) -> Result<Option<String>, Error> {
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), cluster.namespace);
    let hpas = api.list(&ListParams::default()).await?;
    Ok(hpas.items.into_iter().find_map(|hpa| {
        let target = &hpa.spec.scale_target_ref;
        let group = target
            .api_version
            .as_deref()
            .and_then(|v| v.split('/').next())
            .unwrap_or("");
        (target.kind == "MqttCluster" && target.name == cluster.name && group == GROUP)
            .then(|| hpa.metadata.name.unwrap_or_default())
    }))
}

/// The brokers' admin token, from the Secret the operator made.
/// The admin API's token from the Secret the operator made (`None` while it does not exist).
pub(super) async fn admin_token(
    ctx: &Context,
    cluster: &Cluster<'_>,
) -> Result<Option<String>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), cluster.namespace);
    let Some(secret) = api.get_opt(&cluster.admin_secret_name()).await? else {
        return Ok(None);
    };
    Ok(secret
        .data
        .as_ref()
        .and_then(|data| data.get(TOKEN_KEY))
        .and_then(|token| String::from_utf8(token.0.clone()).ok())
        .filter(|token| !token.is_empty()))
}

/// Sets `spec.replicas` through the scale subresource, as a HorizontalPodAutoscaler does.
async fn scale(ctx: &Context, cluster: &Cluster<'_>, replicas: i32) -> Result<(), Error> {
    let api: Api<MqttCluster> = Api::namespaced(ctx.client.clone(), cluster.namespace);
    let patch = serde_json::json!({ "spec": { "replicas": replicas } });
    api.patch_scale(cluster.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// The brokers' CPU request in millicores (`spec.resources.requests.cpu`), when set and
/// readable.
fn cpu_request(cluster: &Cluster<'_>) -> Option<i64> {
    let requests = cluster.spec().resources.as_ref()?.requests.as_ref()?;
    millicores(&requests.get("cpu")?.0)
}
