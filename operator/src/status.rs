//! The cluster's status, computed purely from what the operator observed: the broker
//! StatefulSet, the managed Redis Deployment, the cluster's pods, the client Service and the
//! outcome of the last reconcile.
//!
//! Conditions (each with reason, message, lastTransitionTime and observedGeneration):
//! - `Ready`: every desired broker pod is ready on the current revision and Redis is available
//!   (also while surplus pods of a scale-down are stopping: reason `ScalingDown`). When a pod
//!   cannot run, the reason and message are the pod's (`Unschedulable`,
//!   `CreateContainerConfigError`, ...; see [`pods`]).
//! - `Progressing`: a rollout or scale is under way, or pods are starting; `False` with the
//!   pod's reason when pods are stuck Pending.
//! - `Degraded`: something needs a human (invalid spec, failed apply, a pod that cannot run,
//!   Redis or brokers down while nothing is rolling out).
//! - `GossipEncrypted`: whether the brokers' gossip is encrypted, and with which key (`False`
//!   when turned off, or for brokers that ran before the operator generated keys).
//! - `Autoscaling` (with `spec.autoscaling`): what the autoscaler wants and why (`False` when
//!   a broker gave no count or an external HorizontalPodAutoscaler targets the cluster).

mod endpoint;
pub mod pods;

pub use self::endpoint::{endpoint, endpoint_hint};

use crate::autoscale::outcome::Autoscaled;
use crate::crd::{MqttClusterStatus, PodEvacuation};
use crate::redis_health::{self, SentinelView};
use crate::resources::gossip::GossipKey;
use crate::resources::{Cluster, COMPONENT_BROKER};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition type: the cluster serves clients as specified.
pub const READY: &str = "Ready";
/// Condition type: a rollout or scale is under way.
pub const PROGRESSING: &str = "Progressing";
/// Condition type: the cluster needs attention.
pub const DEGRADED: &str = "Degraded";
/// Condition type: the brokers' gossip is encrypted.
pub const GOSSIP_ENCRYPTED: &str = "GossipEncrypted";
/// Condition type: the operator sizes the cluster from its connections (`spec.autoscaling`).
pub const AUTOSCALING: &str = "Autoscaling";
/// Condition type: the managed Redis with Sentinel has its primary and every replica in sync
/// (its message names the primary the brokers use).
pub const REDIS_REPLICATED: &str = "RedisReplicated";

/// What went wrong in the last reconcile, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconcileOutcome {
    /// Every object was applied.
    Applied,
    /// The spec cannot be turned into objects (reason `InvalidSpec`).
    InvalidSpec(String),
    /// Applying failed (reason `ReconcileFailed`).
    Failed(String),
}

/// Everything the status is computed from.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The broker StatefulSet as the API server returned it.
    pub stateful_set: Option<&'a StatefulSet>,
    /// The managed Redis Deployment; `None` when it does not exist (yet), Redis is external or
    /// run with Sentinel.
    pub redis_deployment: Option<&'a Deployment>,
    /// The managed Redis StatefulSet of a Redis run with Sentinel; `None` otherwise or when it
    /// does not exist (yet).
    pub redis_stateful_set: Option<&'a StatefulSet>,
    /// What the sentinels of a managed Redis with Sentinel say, and its number of pods.
    pub sentinel_view: Option<&'a (Result<SentinelView, String>, u32)>,
    /// Whether Redis is run by the operator.
    pub redis_managed: bool,
    /// The client Service as the API server returned it.
    pub client_service: Option<&'a Service>,
    /// The cluster's pods (brokers and managed Redis).
    pub pods: &'a [Pod],
    /// The last reconcile's outcome.
    pub outcome: &'a ReconcileOutcome,
    /// What the autoscaler did (with `spec.autoscaling`, after a successful apply).
    pub autoscaled: Option<&'a Autoscaled>,
    /// Broker pods on their way out and their evacuations.
    pub evacuations: &'a [PodEvacuation],
}

/// The managed Redis' state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RedisState {
    /// External, or managed and available.
    Available,
    /// Managed, coming up.
    Starting,
    /// Managed, its Deployment gave up (progress deadline exceeded).
    Failed,
}

fn deployment_condition<'a>(
    d: &'a Deployment,
    type_: &str,
) -> Option<&'a k8s_openapi::api::apps::v1::DeploymentCondition> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_.as_deref() == Some(type_))
}

fn redis_state(observed: &Observed<'_>) -> RedisState {
    if !observed.redis_managed {
        return RedisState::Available;
    }
    if let Some(set) = observed.redis_stateful_set {
        return sentinel_redis_state(set);
    }
    let Some(d) = observed.redis_deployment else {
        return RedisState::Starting;
    };
    let available = deployment_condition(d, "Available")
        .is_some_and(|c| c.status.as_deref() == Some("True"))
        && d.status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0)
            > 0;
    if available {
        return RedisState::Available;
    }
    let gave_up = deployment_condition(d, "Progressing").is_some_and(|c| {
        c.status.as_deref() == Some("False")
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if gave_up {
        RedisState::Failed
    } else {
        RedisState::Starting
    }
}

/// The state of a managed Redis run with Sentinel: available while a majority of its pods (each
/// a Redis and a sentinel) is ready, so the sentinels can fail over and a primary serves.
fn sentinel_redis_state(set: &StatefulSet) -> RedisState {
    let desired = set.spec.replicas.unwrap_or(1);
    let ready = set
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    if ready > 0 && ready > desired / 2 {
        RedisState::Available
    } else {
        RedisState::Starting
    }
}

/// The broker StatefulSet's rollout, reduced to what the conditions need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Brokers {
    desired: i32,
    /// Pods the StatefulSet has, surplus ones of a scale-down included.
    replicas: i32,
    /// Ready pods, surplus ones included.
    ready: i32,
    /// Ready pods among the desired ones (ordinals below `desired`).
    ready_desired: i32,
    /// Desired pods that have not started running yet.
    pending: i32,
    /// The controller has seen the latest spec and the desired pods run the latest revision.
    current: bool,
    /// `current`, and the StatefulSet has exactly the desired pods.
    rolled_out: bool,
}

fn brokers(
    desired: i32,
    set: Option<&StatefulSet>,
    broker_pods: &[&Pod],
    set_name: &str,
) -> Brokers {
    let nothing = Brokers {
        desired,
        replicas: 0,
        ready: 0,
        ready_desired: 0,
        pending: 0,
        current: false,
        rolled_out: false,
    };
    let Some(set) = set else {
        return nothing;
    };
    let Some(status) = set.status.as_ref() else {
        return nothing;
    };
    let seen = match (status.observed_generation, set.metadata.generation) {
        (Some(observed), Some(generation)) => observed >= generation,
        _ => false,
    };
    let same_revision = match (&status.current_revision, &status.update_revision) {
        (Some(current), Some(update)) => current == update,
        // An apiserver that does not report revisions: judge by updated replicas alone.
        _ => true,
    };
    let updated = status.updated_replicas.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0);
    let wanted = |p: &&&Pod| pods::ordinal(p, set_name).is_some_and(|i| i < desired);
    // Without pod observations, the StatefulSet's count is the best guess.
    let ready_desired = if broker_pods.is_empty() {
        ready.min(desired)
    } else {
        broker_pods
            .iter()
            .filter(wanted)
            .filter(|p| pods::is_ready(p))
            .count() as i32
    };
    let pending = broker_pods
        .iter()
        .filter(wanted)
        .filter(|p| pods::is_pending(p))
        .count() as i32;
    let current = seen && same_revision && updated >= desired;
    Brokers {
        desired,
        replicas: status.replicas,
        ready,
        ready_desired,
        pending,
        current,
        rolled_out: current && status.replicas == desired,
    }
}
fn condition(type_: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: None,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    }
}

/// The status for the observed state. `previous` keeps each condition's
/// `lastTransitionTime` while its status does not change; `now` stamps the ones that do.
pub fn compute(
    cluster: &Cluster<'_>,
    observed: &Observed<'_>,
    previous: Option<&MqttClusterStatus>,
    now: &Time,
) -> MqttClusterStatus {
    let generation = cluster.object.metadata.generation;
    let set_name = cluster.broker_name();
    let (broker_pods, redis_pods): (Vec<&Pod>, Vec<&Pod>) = observed
        .pods
        .iter()
        .partition(|p| pods::ordinal(p, &set_name).is_some());
    let b = brokers(
        cluster.spec().replicas,
        observed.stateful_set,
        &broker_pods,
        &set_name,
    );
    let redis = redis_state(observed);
    let all_ready = b.current && b.ready_desired >= b.desired;
    let scaling_down = b.replicas > b.desired;
    let broker_problem = pods::summary(&pods::problems(broker_pods.iter().copied()));
    let redis_problem = if observed.redis_managed {
        pods::summary(&pods::problems(redis_pods.iter().copied()))
    } else {
        None
    };

    let (ready, progressing, degraded) = match observed.outcome {
        ReconcileOutcome::InvalidSpec(msg) => (
            condition(READY, false, "InvalidSpec", msg.clone()),
            condition(PROGRESSING, false, "InvalidSpec", msg.clone()),
            condition(DEGRADED, true, "InvalidSpec", msg.clone()),
        ),
        ReconcileOutcome::Failed(msg) => (
            condition(
                READY,
                all_ready && redis == RedisState::Available,
                "ReconcileFailed",
                msg.clone(),
            ),
            condition(PROGRESSING, false, "ReconcileFailed", msg.clone()),
            condition(DEGRADED, true, "ReconcileFailed", msg.clone()),
        ),
        ReconcileOutcome::Applied => {
            let brokers_ready = format!("{} of {} brokers ready", b.ready_desired, b.desired);
            let redis_down = match &redis_problem {
                Some((_, message)) => format!("the managed Redis is not available: {message}"),
                None => "the managed Redis is not available".to_string(),
            };
            let ready = match (redis, &broker_problem) {
                (RedisState::Starting | RedisState::Failed, _) => {
                    condition(READY, false, "RedisUnavailable", redis_down.clone())
                }
                (RedisState::Available, _) if all_ready && scaling_down => condition(
                    READY,
                    true,
                    "ScalingDown",
                    format!(
                        "{brokers_ready}; {} surplus brokers stopping",
                        b.replicas - b.desired
                    ),
                ),
                (RedisState::Available, _) if all_ready => {
                    condition(READY, true, "AllReplicasReady", brokers_ready)
                }
                (RedisState::Available, Some((reason, message))) => {
                    condition(READY, false, reason, format!("{brokers_ready}; {message}"))
                }
                (RedisState::Available, None) => {
                    condition(READY, false, "ReplicasNotReady", brokers_ready)
                }
            };
            let progressing = if !b.rolled_out {
                let (reason, message) = if scaling_down {
                    (
                        "ScalingDown",
                        format!(
                            "{} of {} brokers exist; {} surplus stopping",
                            b.replicas,
                            b.desired,
                            b.replicas - b.desired
                        ),
                    )
                } else if b.replicas < b.desired {
                    (
                        "ScalingUp",
                        format!("{} of {} brokers exist", b.replicas, b.desired),
                    )
                } else {
                    (
                        "RollingUpdate",
                        format!("{} of {} brokers exist", b.replicas, b.desired),
                    )
                };
                condition(PROGRESSING, true, reason, message)
            } else if redis == RedisState::Starting {
                let message = match &redis_problem {
                    Some((_, message)) => format!("the managed Redis is starting: {message}"),
                    None => "the managed Redis is starting".to_string(),
                };
                condition(PROGRESSING, true, "RedisStarting", message)
            } else if b.pending > 0 {
                match &broker_problem {
                    // Stuck: nothing will move until someone acts.
                    Some((reason, message)) => {
                        condition(PROGRESSING, false, reason, message.clone())
                    }
                    None => condition(
                        PROGRESSING,
                        true,
                        "PodsStarting",
                        format!("{} of {} broker pods are starting", b.pending, b.desired),
                    ),
                }
            } else {
                condition(
                    PROGRESSING,
                    false,
                    "RolloutComplete",
                    "every broker runs the current spec".to_string(),
                )
            };
            let degraded = if redis == RedisState::Failed {
                condition(
                    DEGRADED,
                    true,
                    "RedisUnavailable",
                    "the managed Redis Deployment exceeded its progress deadline".to_string(),
                )
            } else if let Some((reason, message)) = &redis_problem {
                condition(
                    DEGRADED,
                    true,
                    reason,
                    format!("the managed Redis: {message}"),
                )
            } else if let Some((reason, message)) = &broker_problem {
                condition(DEGRADED, true, reason, message.clone())
            } else if b.rolled_out && b.pending == 0 && b.ready_desired < b.desired {
                // Running but not ready, with nothing rolling out or starting.
                condition(
                    DEGRADED,
                    true,
                    "BrokersUnavailable",
                    format!(
                        "{} of {} brokers are not ready",
                        b.desired - b.ready_desired,
                        b.desired
                    ),
                )
            } else {
                condition(DEGRADED, false, "AsExpected", String::new())
            };
            (ready, progressing, degraded)
        }
    };

    let autoscaling = observed
        .autoscaled
        .map(|a| condition(AUTOSCALING, a.active, &a.reason, a.message.clone()));
    let replicated = observed.sentinel_view.map(|(view, pods)| {
        let (ok, reason, message) = redis_health::assess(view, *pods);
        condition(REDIS_REPLICATED, ok, reason, message)
    });
    let conditions = [ready, progressing, degraded, gossip_encrypted(cluster)]
        .into_iter()
        .chain(autoscaling)
        .chain(replicated)
        .map(|mut c| {
            c.observed_generation = generation;
            let earlier = previous
                .into_iter()
                .flat_map(|p| p.conditions.iter())
                .find(|p| p.type_ == c.type_);
            c.last_transition_time = match earlier {
                Some(p) if p.status == c.status => p.last_transition_time.clone(),
                _ => now.clone(),
            };
            c
        })
        .collect();

    MqttClusterStatus {
        observed_generation: generation,
        replicas: b.replicas,
        ready_replicas: b.ready,
        selector: Some(cluster.selector_string(COMPONENT_BROKER)),
        endpoint: endpoint(cluster, observed.client_service),
        endpoint_hint: endpoint_hint(cluster, observed.client_service),
        autoscaling: observed.autoscaled.map(|a| a.status.clone()),
        evacuations: observed.evacuations.to_vec(),
        conditions,
    }
}

/// The `GossipEncrypted` condition, from where the brokers' key comes from.
fn gossip_encrypted(cluster: &Cluster<'_>) -> Condition {
    match cluster.gossip_key() {
        GossipKey::Spec(key) => condition(
            GOSSIP_ENCRYPTED,
            true,
            "SecretKey",
            format!("key {} of Secret {}", key.key, key.name),
        ),
        GossipKey::Generated => condition(
            GOSSIP_ENCRYPTED,
            true,
            "GeneratedKey",
            format!("key generated in Secret {}", cluster.gossip_secret_name()),
        ),
        GossipKey::Disabled => condition(
            GOSSIP_ENCRYPTED,
            false,
            "Disabled",
            "spec.gossip.encrypt is false: anything that reaches the gossip port can join the \
             cluster or report a broker dead"
                .to_string(),
        ),
        GossipKey::KeptUnencrypted => condition(
            GOSSIP_ENCRYPTED,
            false,
            "CreatedUnencrypted",
            "the brokers ran before the operator generated gossip keys, and giving them one \
             now would split their gossip while the pods roll; set \
             spec.gossip.encryptionKeySecretRef to encrypt (old and new pods do not gossip \
             together until the roll ends)"
                .to_string(),
        ),
    }
}

#[cfg(test)]
mod tests;
