//! Tests of the status: conditions, replica counts, endpoint and hint for observed states, and
//! condition transition times.

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
        redis_stateful_set: None,
        sentinel_view: None,
        redis_managed: true,
        client_service: None,
        pods: &[],
        outcome,
        autoscaled: None,
        evacuations: &[],
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
