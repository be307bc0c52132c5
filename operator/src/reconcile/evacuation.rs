//! The evacuations part of a reconcile: broker pods that are going (their `deletionTimestamp`
//! is set: a scale-down, a rolling update, a deletion) are asked where the evacuation their
//! preStop hook started stands (`GET /api/v1/evacuate`), for `status.evacuations` and Events:
//! `Evacuating` while clients are left, `Evacuated` once none is.

use super::autoscaling::admin_token;
use super::Context;
use crate::broker_admin;
use crate::crd::{MqttCluster, PodEvacuation};
use crate::events;
use crate::resources::Cluster;
use crate::status::pods::ordinal;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::events::EventType;
use serde::Deserialize;

/// Event reason: a broker pod that is going asks its clients to reconnect elsewhere.
pub const EVACUATING: &str = "Evacuating";
/// Event reason: a broker pod that is going has no client left.
pub const EVACUATED: &str = "Evacuated";

/// Where an evacuation stands, as `GET /api/v1/evacuate` answers.
#[derive(Deserialize)]
struct EvacuationView {
    evacuating: bool,
    asked: i64,
    remaining: i64,
    rate_per_sec: i64,
}

/// The broker pods of `cluster` that are going.
pub fn going<'a>(cluster: &Cluster<'_>, pods: &'a [Pod]) -> Vec<&'a Pod> {
    let set = cluster.broker_name();
    pods.iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_some())
        .filter(|pod| ordinal(pod, &set).is_some())
        .collect()
}

/// Reads the evacuation of every broker pod that is going and says so in Events; the progress
/// for the status (empty when no pod is going).
pub async fn observe(
    ctx: &Context,
    cluster: &Cluster<'_>,
    object: &MqttCluster,
    pods: &[Pod],
) -> Vec<PodEvacuation> {
    let going = going(cluster, pods);
    if going.is_empty() {
        return Vec::new();
    }
    let token = match admin_token(ctx, cluster).await {
        Ok(Some(token)) => Ok(token),
        Ok(None) => Err(format!(
            "the admin token Secret {} is missing",
            cluster.admin_secret_name()
        )),
        Err(e) => Err(format!("the admin token cannot be read: {e}")),
    };
    let port = u16::try_from(cluster.spec().broker.admin_port).unwrap_or(0);
    let client = broker_admin::client();
    let reads = going.iter().map(|pod| {
        let (client, token) = (&client, &token);
        async move {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let token = match token {
                Ok(token) => token,
                Err(why) => return unknown(name, why.clone()),
            };
            match broker_admin::get_json::<EvacuationView>(
                client,
                pod,
                port,
                token,
                "/api/v1/evacuate",
            )
            .await
            {
                Ok(view) => PodEvacuation {
                    pod: name,
                    evacuating: view.evacuating,
                    asked: view.asked,
                    remaining: view.remaining,
                    rate_per_sec: view.rate_per_sec,
                    unknown: None,
                },
                Err(e) => unknown(name, e.to_string()),
            }
        }
    });
    let progress = futures::future::join_all(reads).await;
    let before = object
        .status
        .as_ref()
        .map(|s| s.evacuations.as_slice())
        .unwrap_or_default();
    for (pod, evacuation) in going.iter().zip(&progress) {
        let was = before.iter().find(|e| e.pod == evacuation.pod);
        // Said once per stage: while clients are left, then when none is.
        let stage = |e: &PodEvacuation| (e.evacuating, e.remaining > 0);
        if evacuation.evacuating && was.map(stage) != Some(stage(evacuation)) {
            announce(ctx, object, pod, evacuation).await;
        }
    }
    progress
}

/// Whether an evacuation is worth following closely: under way with clients left, or about to
/// start (the pod answers and its preStop hook has not run yet). A pod that does not answer
/// (stuck terminating on a lost node) is looked at at the usual pace.
pub fn under_way(progress: &[PodEvacuation]) -> bool {
    progress
        .iter()
        .any(|e| e.unknown.is_none() && (!e.evacuating || e.remaining > 0))
}

fn unknown(pod: String, why: String) -> PodEvacuation {
    PodEvacuation {
        pod,
        unknown: Some(why),
        ..PodEvacuation::default()
    }
}

/// An Event about one pod's evacuation. Its action names the pod and the start of its UID: kube's
/// Recorder folds repeats (same reason, action and object) into one series that keeps the first
/// note, and a pod recreated under the same name must not join its predecessor's series.
async fn announce(ctx: &Context, object: &MqttCluster, pod: &Pod, evacuation: &PodEvacuation) {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let action = format!("Evacuate {} {}", evacuation.pod, &uid[..uid.len().min(8)]);
    let pod = &evacuation.pod;
    let (reason, note) = if evacuation.remaining > 0 {
        (
            EVACUATING,
            format!(
                "{pod} is going: asked {} clients to reconnect to the other brokers, {} still \
                 connected ({} per second)",
                evacuation.asked, evacuation.remaining, evacuation.rate_per_sec
            ),
        )
    } else {
        (
            EVACUATED,
            format!(
                "{pod} is going: every client left for the other brokers ({} asked)",
                evacuation.asked
            ),
        )
    };
    events::publish(
        &ctx.recorder,
        object,
        EventType::Normal,
        reason,
        action.trim_end(),
        note,
        None,
    )
    .await;
}
