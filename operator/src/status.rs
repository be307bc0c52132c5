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

pub mod pods;

use crate::crd::{MqttClusterStatus, ServiceType};
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
    /// The managed Redis Deployment; `None` when it does not exist (yet) or Redis is external.
    pub redis_deployment: Option<&'a Deployment>,
    /// Whether Redis is run by the operator.
    pub redis_managed: bool,
    /// The client Service as the API server returned it.
    pub client_service: Option<&'a Service>,
    /// The cluster's pods (brokers and managed Redis).
    pub pods: &'a [Pod],
    /// The last reconcile's outcome.
    pub outcome: &'a ReconcileOutcome,
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

/// Where clients connect: the load balancer's address, or the Service's in-cluster DNS name
/// for `ClusterIP` and `NodePort` (node addresses are not the operator's to know).
pub fn endpoint(cluster: &Cluster<'_>, service: Option<&Service>) -> Option<String> {
    let spec = cluster.spec();
    let listeners = &spec.listeners;
    let port = if listeners.mqtt.enabled {
        listeners.mqtt.port
    } else if let Some(tls) = &listeners.tls {
        tls.port
    } else {
        listeners.websocket.as_ref()?.port
    };
    match spec.service.type_ {
        ServiceType::LoadBalancer => {
            let ingress = service?
                .status
                .as_ref()?
                .load_balancer
                .as_ref()?
                .ingress
                .as_ref()?
                .first()?;
            let host = ingress.hostname.clone().or_else(|| ingress.ip.clone())?;
            if host.contains(':') {
                Some(format!("[{host}]:{port}"))
            } else {
                Some(format!("{host}:{port}"))
            }
        }
        ServiceType::ClusterIP | ServiceType::NodePort => Some(format!(
            "{}.{}.svc:{port}",
            cluster.broker_name(),
            cluster.namespace
        )),
    }
}

/// Where to connect while a `LoadBalancer` Service has no address: its node port on any node
/// and its in-cluster name. `None` for other types and once the load balancer has an address.
pub fn endpoint_hint(cluster: &Cluster<'_>, service: Option<&Service>) -> Option<String> {
    let spec = cluster.spec();
    if spec.service.type_ != ServiceType::LoadBalancer || endpoint(cluster, service).is_some() {
        return None;
    }
    let name = cluster.broker_name();
    let ns = cluster.namespace;
    let mut hint = format!(
        "the LoadBalancer Service {name} has no address yet (without a load balancer \
         controller, e.g. on kind, k3d or bare metal, it never gets one; spec.service.type \
         NodePort suits those clusters)"
    );
    let ports = service
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.ports.as_ref());
    let Some(port) = ports.and_then(|p| p.first()) else {
        return Some(hint);
    };
    hint.push_str(&format!(
        "; meanwhile connect inside the cluster to {name}.{ns}.svc:{}",
        port.port
    ));
    if let Some(node_port) = port.node_port {
        hint.push_str(&format!(", from outside to port {node_port} of any node"));
    }
    hint.push_str(&format!(
        ", or through `kubectl port-forward -n {ns} svc/{name} {}`",
        port.port
    ));
    Some(hint)
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

    let conditions = [ready, progressing, degraded]
        .into_iter()
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
        conditions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_support::cluster_from_yaml;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus, StatefulSetStatus};
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn time(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).expect("time"))
    }

    fn set(generation: i64, observed: i64, replicas: i32, ready: i32, updated: i32) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            status: Some(StatefulSetStatus {
                observed_generation: Some(observed),
                replicas,
                ready_replicas: Some(ready),
                updated_replicas: Some(updated),
                current_revision: Some("r1".into()),
                update_revision: Some("r1".into()),
                ..StatefulSetStatus::default()
            }),
            ..StatefulSet::default()
        }
    }

    fn redis(available: bool, deadline_exceeded: bool) -> Deployment {
        let mut conditions = vec![DeploymentCondition {
            type_: Some("Available".into()),
            status: Some(if available { "True" } else { "False" }.into()),
            ..DeploymentCondition::default()
        }];
        if deadline_exceeded {
            conditions.push(DeploymentCondition {
                type_: Some("Progressing".into()),
                status: Some("False".into()),
                reason: Some("ProgressDeadlineExceeded".into()),
                ..DeploymentCondition::default()
            });
        }
        Deployment {
            status: Some(DeploymentStatus {
                available_replicas: Some(i32::from(available)),
                conditions: Some(conditions),
                ..DeploymentStatus::default()
            }),
            ..Deployment::default()
        }
    }

    fn get<'a>(status: &'a MqttClusterStatus, type_: &str) -> &'a Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition"))
    }

    /// (status, reason) of Ready, Progressing and Degraded.
    fn summary(status: &MqttClusterStatus) -> [(String, String); 3] {
        [READY, PROGRESSING, DEGRADED].map(|t| {
            let c = get(status, t);
            (c.status.clone(), c.reason.clone())
        })
    }

    fn pair(status: &str, reason: &str) -> (String, String) {
        (status.to_string(), reason.to_string())
    }

    fn run(yaml: &str, observed: Observed<'_>) -> MqttClusterStatus {
        let object = cluster_from_yaml(yaml);
        let c = Cluster::new(&object).expect("cluster");
        compute(&c, &observed, None, &time(100))
    }

    fn observed<'a>(
        set: Option<&'a StatefulSet>,
        redis: Option<&'a Deployment>,
        outcome: &'a ReconcileOutcome,
    ) -> Observed<'a> {
        Observed {
            stateful_set: set,
            redis_deployment: redis,
            redis_managed: true,
            client_service: None,
            pods: &[],
            outcome,
        }
    }

    #[test]
    fn healthy_cluster_is_ready() {
        let s = set(2, 2, 3, 3, 3);
        let r = redis(true, false);
        let status = run(
            "{}",
            observed(Some(&s), Some(&r), &ReconcileOutcome::Applied),
        );
        assert_eq!(
            summary(&status),
            [
                pair("True", "AllReplicasReady"),
                pair("False", "RolloutComplete"),
                pair("False", "AsExpected")
            ]
        );
        assert_eq!(status.replicas, 3);
        assert_eq!(status.ready_replicas, 3);
        assert_eq!(status.observed_generation, Some(4));
        assert!(status
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(4)));
        assert_eq!(
            status.selector.as_deref(),
            Some("app.kubernetes.io/component=broker,app.kubernetes.io/instance=demo,app.kubernetes.io/name=starling")
        );
    }

    #[test]
    fn new_cluster_is_progressing() {
        let status = run("{}", observed(None, None, &ReconcileOutcome::Applied));
        assert_eq!(
            summary(&status),
            [
                pair("False", "RedisUnavailable"),
                pair("True", "ScalingUp"),
                pair("False", "AsExpected")
            ]
        );
    }

    #[test]
    fn rolling_update_and_scaling_are_progress() {
        let r = redis(true, false);
        // The StatefulSet controller has not seen generation 3 yet.
        let s = set(3, 2, 3, 3, 3);
        let status = run(
            "{}",
            observed(Some(&s), Some(&r), &ReconcileOutcome::Applied),
        );
        assert_eq!(get(&status, PROGRESSING).reason, "RollingUpdate");
        assert_eq!(get(&status, READY).status, "False");
        // Pods on two revisions.
        let mut s = set(3, 3, 3, 3, 1);
        if let Some(st) = s.status.as_mut() {
            st.update_revision = Some("r2".into());
        }
        let status = run(
            "{}",
            observed(Some(&s), Some(&r), &ReconcileOutcome::Applied),
        );
        assert_eq!(get(&status, PROGRESSING).reason, "RollingUpdate");
        assert_eq!(get(&status, DEGRADED).status, "False");
        // Scaling from 3 to 5.
        let s = set(3, 3, 3, 3, 3);
        let status = run(
            "replicas: 5",
            observed(Some(&s), Some(&r), &ReconcileOutcome::Applied),
        );
        assert_eq!(get(&status, PROGRESSING).reason, "ScalingUp");
        assert_eq!(get(&status, READY).reason, "ReplicasNotReady");
    }

    /// Scaling 5 → 3 with the three desired pods ready: ready, honestly scaling down; never
    /// `ReplicasNotReady` (the printer columns read `3 5 ReplicasNotReady` before).
    #[test]
    fn a_scale_down_with_the_desired_pods_ready_is_ready_and_says_so() {
        use pods::test_pods::ready;
        let r = redis(true, false);
        // The StatefulSet has seen replicas 3; pods 3 and 4 are stopping (still counted).
        let s = set(3, 3, 5, 5, 5);
        let pods: Vec<Pod> = (0..5).map(|i| ready(&format!("demo-{i}"))).collect();
        let mut o = observed(Some(&s), Some(&r), &ReconcileOutcome::Applied);
        o.pods = &pods;
        let status = run("replicas: 3", o);
        assert_eq!(
            summary(&status),
            [
                pair("True", "ScalingDown"),
                pair("True", "ScalingDown"),
                pair("False", "AsExpected")
            ]
        );
        assert_eq!(
            get(&status, READY).message,
            "3 of 3 brokers ready; 2 surplus brokers stopping"
        );
        // Without pod observations the StatefulSet's counts say the same.
        let status = run(
            "replicas: 3",
            observed(Some(&s), Some(&r), &ReconcileOutcome::Applied),
        );
        assert_eq!(get(&status, READY).reason, "ScalingDown");
        // A desired pod that is not ready is not made up for by a surplus one.
        let mut pods = pods;
        pods[1] = pods::test_pods::waiting("demo-1", "ContainerCreating", "");
        let mut o = observed(Some(&s), Some(&r), &ReconcileOutcome::Applied);
        o.pods = &pods;
        let status = run("replicas: 3", o);
        assert_eq!(
            summary(&status),
            [
                pair("False", "ReplicasNotReady"),
                pair("True", "ScalingDown"),
                pair("False", "AsExpected")
            ]
        );
    }

    /// Pods the scheduler cannot place: the cause is in the conditions, and the rollout is
    /// not claimed complete.
    #[test]
    fn unschedulable_pods_are_named_and_the_rollout_is_not_complete() {
        use pods::test_pods::{ready, unschedulable};
        let r = redis(true, false);
        let s = set(2, 2, 3, 1, 3);
        let why = "0/1 nodes are available: 1 Insufficient cpu.";
        let pods = [
            ready("demo-0"),
            unschedulable("demo-1", why),
            unschedulable("demo-2", why),
        ];
        let mut o = observed(Some(&s), Some(&r), &ReconcileOutcome::Applied);
        o.pods = &pods;
        let status = run("{}", o);
        assert_eq!(
            summary(&status),
            [
                pair("False", "Unschedulable"),
                pair("False", "Unschedulable"),
                pair("True", "Unschedulable")
            ]
        );
        let message = &get(&status, READY).message;
        assert_eq!(
            message,
            &format!("1 of 3 brokers ready; demo-1, demo-2: Unschedulable: {why}")
        );
        assert!(get(&status, DEGRADED).message.contains(why));
    }

    /// A Secret the pods need is missing (the full example without `redis-credentials`).
    #[test]
    fn a_missing_secret_is_named() {
        use pods::test_pods::waiting;
        let s = set(2, 2, 2, 0, 2);
        let why = "secret \"redis-credentials\" not found";
        let pods = [
            waiting("demo-0", "CreateContainerConfigError", why),
            waiting("demo-1", "CreateContainerConfigError", why),
        ];
        let outcome = ReconcileOutcome::Applied;
        let mut o = observed(Some(&s), None, &outcome);
        o.redis_managed = false;
        o.pods = &pods;
        let status = run("replicas: 2\nredis: {external: {url: 'redis://r:6379'}}", o);
        assert_eq!(
            summary(&status),
            [
                pair("False", "CreateContainerConfigError"),
                pair("False", "CreateContainerConfigError"),
                pair("True", "CreateContainerConfigError")
            ]
        );
        assert!(get(&status, READY).message.contains(why), "{status:?}");
    }

    /// Pods on their way (being created) are progress, not a completed rollout.
    #[test]
    fn pods_being_created_are_progress() {
        use pods::test_pods::{ready, waiting};
        let r = redis(true, false);
        let s = set(2, 2, 2, 1, 2);
        let pods = [ready("demo-0"), waiting("demo-1", "ContainerCreating", "")];
        let mut o = observed(Some(&s), Some(&r), &ReconcileOutcome::Applied);
        o.pods = &pods;
        let status = run("replicas: 2", o);
        assert_eq!(
            summary(&status),
            [
                pair("False", "ReplicasNotReady"),
                pair("True", "PodsStarting"),
                pair("False", "AsExpected")
            ]
        );
    }

    /// The managed Redis' pod that cannot run is named in the Redis conditions.
    #[test]
    fn a_stuck_redis_pod_is_named() {
        use pods::test_pods::{ready, unschedulable};
        let s = set(2, 2, 3, 3, 3);
        let starting = redis(false, false);
        let pods = [
            ready("demo-0"),
            ready("demo-1"),
            ready("demo-2"),
            unschedulable("demo-redis-7f9c-x2", "0/1 nodes are available"),
        ];
        let mut o = observed(Some(&s), Some(&starting), &ReconcileOutcome::Applied);
        o.pods = &pods;
        let status = run("{}", o);
        assert_eq!(
            summary(&status),
            [
                pair("False", "RedisUnavailable"),
                pair("True", "RedisStarting"),
                pair("True", "Unschedulable")
            ]
        );
        assert!(get(&status, READY)
            .message
            .contains("demo-redis-7f9c-x2: Unschedulable: 0/1 nodes are available"));
    }

    #[test]
    fn redis_down_is_named() {
        let s = set(2, 2, 3, 3, 3);
        let starting = redis(false, false);
        let status = run(
            "{}",
            observed(Some(&s), Some(&starting), &ReconcileOutcome::Applied),
        );
        assert_eq!(
            summary(&status),
            [
                pair("False", "RedisUnavailable"),
                pair("True", "RedisStarting"),
                pair("False", "AsExpected")
            ]
        );
        let failed = redis(false, true);
        let status = run(
            "{}",
            observed(Some(&s), Some(&failed), &ReconcileOutcome::Applied),
        );
        assert_eq!(get(&status, READY).reason, "RedisUnavailable");
        assert_eq!(
            (
                get(&status, DEGRADED).status.as_str(),
                get(&status, DEGRADED).reason.as_str()
            ),
            ("True", "RedisUnavailable")
        );
    }

    #[test]
    fn external_redis_needs_no_deployment() {
        let s = set(2, 2, 3, 3, 3);
        let outcome = ReconcileOutcome::Applied;
        let mut o = observed(Some(&s), None, &outcome);
        o.redis_managed = false;
        let status = run("redis: {external: {url: 'redis://r:6379'}}", o);
        assert_eq!(get(&status, READY).reason, "AllReplicasReady");
    }

    #[test]
    fn brokers_down_without_a_rollout_is_degraded() {
        let s = set(2, 2, 3, 1, 3);
        let r = redis(true, false);
        let status = run(
            "{}",
            observed(Some(&s), Some(&r), &ReconcileOutcome::Applied),
        );
        assert_eq!(
            summary(&status),
            [
                pair("False", "ReplicasNotReady"),
                pair("False", "RolloutComplete"),
                pair("True", "BrokersUnavailable")
            ]
        );
        assert!(get(&status, DEGRADED).message.contains("2 of 3"));
    }

    #[test]
    fn reconcile_errors_are_degraded_with_their_message() {
        let outcome = ReconcileOutcome::InvalidSpec("redis: set exactly one".into());
        let status = run("{}", observed(None, None, &outcome));
        let d = get(&status, DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "InvalidSpec")
        );
        assert!(d.message.contains("exactly one"));
        assert_eq!(get(&status, READY).status, "False");

        let s = set(2, 2, 3, 3, 3);
        let r = redis(true, false);
        let outcome = ReconcileOutcome::Failed("forbidden".into());
        let status = run("{}", observed(Some(&s), Some(&r), &outcome));
        assert_eq!(get(&status, DEGRADED).reason, "ReconcileFailed");
        // What runs keeps serving: Ready reflects the pods, with the failure as reason.
        assert_eq!(get(&status, READY).status, "True");
    }

    #[test]
    fn transition_time_changes_only_with_the_status() {
        let object = cluster_from_yaml("{}");
        let c = Cluster::new(&object).expect("cluster");
        let s = set(2, 2, 3, 3, 3);
        let r = redis(true, false);
        let outcome = ReconcileOutcome::Applied;
        let first = compute(
            &c,
            &observed(Some(&s), Some(&r), &outcome),
            None,
            &time(100),
        );
        assert_eq!(get(&first, READY).last_transition_time, time(100));
        // Same state later: times are kept.
        let second = compute(
            &c,
            &observed(Some(&s), Some(&r), &outcome),
            Some(&first),
            &time(200),
        );
        assert_eq!(get(&second, READY).last_transition_time, time(100));
        // Redis goes away: Ready flips and is stamped, Degraded stays False and keeps its time.
        let down = redis(false, false);
        let third = compute(
            &c,
            &observed(Some(&s), Some(&down), &outcome),
            Some(&second),
            &time(300),
        );
        assert_eq!(get(&third, READY).status, "False");
        assert_eq!(get(&third, READY).last_transition_time, time(300));
        assert_eq!(get(&third, DEGRADED).last_transition_time, time(100));
    }

    /// With no load balancer controller the LoadBalancer Service never gets an address: the
    /// status says so and where to connect meanwhile (it said nothing).
    #[test]
    fn a_load_balancer_without_an_address_gets_a_hint() {
        use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
        let object = cluster_from_yaml("{}");
        let c = Cluster::new(&object).expect("cluster");
        let pending = Service {
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                ports: Some(vec![ServicePort {
                    name: Some("mqtt".into()),
                    port: 1883,
                    node_port: Some(31883),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        };
        let hint = endpoint_hint(&c, Some(&pending)).expect("a hint");
        assert_eq!(
            hint,
            "the LoadBalancer Service demo has no address yet (without a load balancer \
             controller, e.g. on kind, k3d or bare metal, it never gets one; spec.service.type \
             NodePort suits those clusters); meanwhile connect inside the cluster to \
             demo.iot.svc:1883, from outside to port 31883 of any node, or through \
             `kubectl port-forward -n iot svc/demo 1883`"
        );
        // Through compute: no endpoint, the hint.
        let outcome = ReconcileOutcome::Applied;
        let mut o = observed(None, None, &outcome);
        o.client_service = Some(&pending);
        let status = run("{}", o);
        assert_eq!(status.endpoint, None);
        assert_eq!(status.endpoint_hint.as_deref(), Some(hint.as_str()));
        // Not created yet: the hint without ports.
        assert!(endpoint_hint(&c, None).is_some_and(|h| h.ends_with("suits those clusters)")));

        // Once the load balancer has an address, no hint.
        let mut assigned = pending.clone();
        assigned.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some("203.0.113.7".into()),
                    ..LoadBalancerIngress::default()
                }]),
            }),
            conditions: None,
        });
        assert_eq!(endpoint_hint(&c, Some(&assigned)), None);
        // Other types have an endpoint at once.
        let object = cluster_from_yaml("service: {type: NodePort}");
        let c = Cluster::new(&object).expect("cluster");
        assert_eq!(endpoint_hint(&c, Some(&pending)), None);
    }

    /// The status is written with a merge patch: an endpoint or hint that is no longer known
    /// must be sent as `null`, or the old value would stay.
    #[test]
    fn unknown_endpoint_and_hint_are_sent_as_null() {
        let value = serde_json::to_value(MqttClusterStatus::default()).expect("JSON");
        assert_eq!(value.get("endpoint"), Some(&serde_json::Value::Null));
        assert_eq!(value.get("endpointHint"), Some(&serde_json::Value::Null));
    }

    #[test]
    fn endpoint_follows_the_service_type() {
        let object = cluster_from_yaml("{}");
        let c = Cluster::new(&object).expect("cluster");
        assert_eq!(endpoint(&c, None), None, "no address before the LB has one");
        let lb = |ip: Option<&str>, hostname: Option<&str>| Service {
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![LoadBalancerIngress {
                        ip: ip.map(str::to_string),
                        hostname: hostname.map(str::to_string),
                        ..LoadBalancerIngress::default()
                    }]),
                }),
                conditions: None,
            }),
            ..Service::default()
        };
        assert_eq!(
            endpoint(&c, Some(&lb(Some("203.0.113.7"), None))).as_deref(),
            Some("203.0.113.7:1883")
        );
        assert_eq!(
            endpoint(&c, Some(&lb(None, Some("mqtt.example.com")))).as_deref(),
            Some("mqtt.example.com:1883")
        );
        assert_eq!(
            endpoint(&c, Some(&lb(Some("2001:db8::7"), None))).as_deref(),
            Some("[2001:db8::7]:1883")
        );

        let object = cluster_from_yaml(
            "service: {type: ClusterIP}\nlisteners: {mqtt: {enabled: false}, tls: {secretName: c}}",
        );
        let c = Cluster::new(&object).expect("cluster");
        assert_eq!(endpoint(&c, None).as_deref(), Some("demo.iot.svc:8883"));
    }
}
