//! Tests of the managed Redis with Sentinel's objects and of how the brokers reach it.

use super::*;
use crate::resources::redis::{
    connection, deployment, persistent_volume_claim, sentinel, sentinel_password_files, service,
    SENTINEL_DATA_PASSWORD_FILE, SENTINEL_PASSWORD_FILE,
};
use crate::resources::test_support::{assert_child, cluster_from_yaml};
use crate::resources::{networkpolicy, Cluster};

fn env_value(container: &Container, name: &str) -> String {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
        .unwrap_or_else(|| panic!("{} has no {name}", container.name))
}

#[test]
fn sentinel_runs_a_stateful_set_of_redis_pods_each_with_a_sentinel() {
    let object = cluster_from_yaml(
        "redis: {managed: {sentinel: {}, resources: {limits: {memory: 1Gi}}}, replication: {waitReplicas: 1}}",
    );
    let c = Cluster::new(&object).expect("cluster");
    let set = stateful_set(&c).expect("a StatefulSet");
    assert_child(&set.metadata, "demo-redis", "redis");
    assert_eq!(set.spec.replicas, Some(3));
    assert_eq!(set.spec.service_name.as_deref(), Some("demo-redis-nodes"));
    assert_eq!(set.spec.pod_management_policy.as_deref(), Some("Parallel"));
    assert!(set.spec.volume_claim_templates.is_none(), "no persistence");
    let pod = set.spec.template.spec.as_ref().expect("pod");
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["redis", "sentinel"]);
    let (redis, sentinel_container) = (&pod.containers[0], &pod.containers[1]);

    // Each runs its script after the shared one, by the image's shell.
    let command = redis.command.as_ref().expect("command");
    assert_eq!(command[..2], ["sh", "-c"]);
    assert!(command[2].starts_with(COMMON_SCRIPT));
    assert!(command[2].ends_with(NODE_SCRIPT));
    let command = sentinel_container.command.as_ref().expect("command");
    assert!(command[2].ends_with(SENTINEL_SCRIPT));
    // The Redis settings of the one-pod Redis apply to every pod: memory and no eviction.
    let args = redis.args.as_ref().expect("args");
    assert!(
        args.windows(2).any(|w| w == ["--maxmemory", "858993459"]),
        "{args:?}"
    );
    assert!(args
        .windows(2)
        .any(|w| w == ["--maxmemory-policy", "noeviction"]));
    assert!(
        !args.iter().any(|a| a.contains("requirepass")),
        "no password on argv"
    );

    assert_eq!(
        env_value(redis, "REDIS_PEERS"),
        "demo-redis-0.demo-redis-nodes.iot.svc demo-redis-1.demo-redis-nodes.iot.svc \
         demo-redis-2.demo-redis-nodes.iot.svc"
    );
    assert_eq!(
        env_value(redis, "REDIS_SELF"),
        "$(POD_NAME).demo-redis-nodes.iot.svc"
    );
    assert_eq!(env_value(redis, "REDIS_MASTER_NAME"), "demo");
    assert_eq!(env_value(sentinel_container, "SENTINEL_QUORUM"), "2");
    assert_eq!(
        env_value(sentinel_container, "SENTINEL_DOWN_AFTER_MS"),
        "5000"
    );
    assert_eq!(
        env_value(sentinel_container, "SENTINEL_FAILOVER_TIMEOUT_MS"),
        "10000"
    );
    // A primary stopped on purpose hands over first, within the pod's grace period.
    let hook = redis
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.as_ref())
        .expect("a preStop hook");
    assert!(hook[2].ends_with(HANDOVER_SCRIPT));
    assert_eq!(pod.termination_grace_period_seconds, Some(60));
    assert_eq!(env_value(redis, "HANDOVER_DEADLINE"), "30");
    assert_eq!(
        env_value(redis, "HANDOVER_PAUSE_MS"),
        "65000",
        "past the grace period"
    );
    assert_eq!(env_value(redis, "REDIS_PERSISTENT"), "no");
    assert_eq!(env_value(redis, "REDIS_BOOTSTRAP_SILENCE"), "15");
    // A replica is ready only once linked to its primary (the probe asks Redis).
    let ready = redis
        .readiness_probe
        .as_ref()
        .and_then(|p| p.exec.as_ref())
        .and_then(|e| e.command.as_ref())
        .expect("an exec readiness probe");
    assert!(ready[2].ends_with(READY_SCRIPT));
    assert_eq!(env_value(redis, "REDIS_PRIMARY_WAIT"), "60");
    // POD_NAME comes first: Kubernetes expands $(POD_NAME) only from variables before it.
    let first = &redis.env.as_ref().expect("env")[0];
    assert_eq!(first.name, "POD_NAME");
    let field = first
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("from the pod");
    assert_eq!(field.field_path, "metadata.name");

    // Both read the password and its configuration line from the Secret, write into /conf.
    let volumes = pod.volumes.as_ref().expect("volumes");
    let auth = volumes.iter().find(|v| v.name == "auth").expect("auth");
    let secret = auth.secret.as_ref().expect("a Secret");
    assert_eq!(secret.secret_name.as_deref(), Some("demo-redis"));
    let keys: Vec<&str> = secret
        .items
        .iter()
        .flatten()
        .map(|i| i.key.as_str())
        .collect();
    assert_eq!(keys, ["password", "redis.conf"]);
    assert!(volumes
        .iter()
        .any(|v| v.name == "data" && v.empty_dir.is_some()));
    for container in [redis, sentinel_container] {
        let security = container.security_context.as_ref().expect("security");
        assert_eq!(security.read_only_root_filesystem, Some(true));
        let probe = container.startup_probe.as_ref().expect("startup probe");
        assert!(probe.failure_threshold.unwrap_or(0) * probe.period_seconds.unwrap_or(0) >= 3600);
    }
    let spread = pod
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .expect("preferred anti-affinity");
    assert_eq!(
        spread[0].pod_affinity_term.topology_key,
        "kubernetes.io/hostname"
    );

    // Not the one-pod objects.
    assert!(deployment(&c).is_none());
    assert!(service(&c).is_none());
}

#[test]
fn persistence_gives_every_pod_its_own_claim() {
    let object = cluster_from_yaml(
        "redis: {managed: {sentinel: {replicas: 5, downAfterMilliseconds: 2000}, persistence: {size: 2Gi, storageClassName: fast}}}",
    );
    let c = Cluster::new(&object).expect("cluster");
    let set = stateful_set(&c).expect("a StatefulSet");
    assert_eq!(set.spec.replicas, Some(5));
    let claims = set.spec.volume_claim_templates.as_ref().expect("claims");
    assert_eq!(claims[0].metadata.name.as_deref(), Some("data"));
    let spec = claims[0].spec.as_ref().expect("claim spec");
    assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
    let pod = set.spec.template.spec.as_ref().expect("pod");
    assert!(
        !pod.volumes.iter().flatten().any(|v| v.name == "data"),
        "the claim, not an emptyDir"
    );
    let args = pod.containers[0].args.as_ref().expect("args");
    assert!(args.windows(2).any(|w| w == ["--appendonly", "yes"]));
    assert_eq!(env_value(&pod.containers[1], "SENTINEL_QUORUM"), "3");
    assert_eq!(env_value(&pod.containers[0], "REDIS_PERSISTENT"), "yes");
    assert_eq!(
        env_value(&pod.containers[1], "SENTINEL_FAILOVER_TIMEOUT_MS"),
        "6000"
    );
    // The one-pod claim is not made.
    assert!(persistent_volume_claim(&c).is_none());
}

#[test]
fn failover_timings_follow_the_down_after_time() {
    let at = |ms| ManagedSentinel {
        replicas: 3,
        down_after_milliseconds: ms,
    };
    assert_eq!(failover_timeout_ms(&at(1000)), 6_000);
    assert_eq!(failover_timeout_ms(&at(5000)), 10_000);
    assert_eq!(primary_wait_seconds(&at(1000)), 60);
    assert_eq!(primary_wait_seconds(&at(10_000)), 120);
    assert_eq!(quorum(&at(1000)), 2);
    assert_eq!(bootstrap_silence_rounds(&at(1000)), 10);
    assert_eq!(bootstrap_silence_rounds(&at(5000)), 15);
    assert_eq!(
        quorum(&ManagedSentinel {
            replicas: 7,
            down_after_milliseconds: 1000
        }),
        4
    );
}

#[test]
fn pods_are_named_through_a_headless_service_that_publishes_them_before_they_are_ready() {
    let object = cluster_from_yaml("redis: {managed: {sentinel: {}}}");
    let c = Cluster::new(&object).expect("cluster");
    let svc = nodes_service(&c).expect("a Service");
    assert_child(&svc.metadata, "demo-redis-nodes", "redis");
    let spec = svc.spec.expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(spec.publish_not_ready_addresses, Some(true));
    let ports: Vec<i32> = spec.ports.iter().flatten().map(|p| p.port).collect();
    assert_eq!(ports, [6379, 26379]);
    let pdb = pod_disruption_budget(&c).expect("a budget");
    assert_child(&pdb.metadata, "demo-redis", "redis");
    assert_eq!(
        pdb.spec.expect("spec").max_unavailable,
        Some(IntOrString::Int(1))
    );
}

#[test]
fn brokers_ask_the_sentinels_with_the_managed_password_as_files() {
    let object = cluster_from_yaml("redis: {managed: {sentinel: {}}}");
    let c = Cluster::new(&object).expect("cluster");
    assert_eq!(connection(&c).expect("no error"), None, "no URL");
    let config = sentinel(&c).expect("a sentinel configuration");
    assert_eq!(config.master_name, "demo");
    assert_eq!(
        config.sentinels,
        [
            "demo-redis-0.demo-redis-nodes.iot.svc:26379",
            "demo-redis-1.demo-redis-nodes.iot.svc:26379",
            "demo-redis-2.demo-redis-nodes.iot.svc:26379"
        ]
    );
    assert!(!config.tls);
    let files: Vec<(String, String, &str)> = sentinel_password_files(&c)
        .into_iter()
        .map(|(r, path)| (r.name, r.key, path))
        .collect();
    let password = || ("demo-redis".to_string(), "password".to_string());
    assert_eq!(
        files,
        [
            (password().0, password().1, SENTINEL_DATA_PASSWORD_FILE),
            (password().0, password().1, SENTINEL_PASSWORD_FILE)
        ]
    );
}

#[test]
fn one_pod_redis_has_none_of_these() {
    let object = cluster_from_yaml("{}");
    let c = Cluster::new(&object).expect("cluster");
    assert!(stateful_set(&c).is_none());
    assert!(nodes_service(&c).is_none());
    assert!(pod_disruption_budget(&c).is_none());
    assert!(sentinel(&c).is_none());
    assert!(sentinel_password_files(&c).is_empty());
}

#[test]
fn network_policy_lets_the_redis_pods_and_brokers_reach_redis_and_the_sentinels() {
    let object = cluster_from_yaml("redis: {managed: {sentinel: {}}}");
    let c = Cluster::new(&object).expect("cluster");
    let policy = networkpolicy::redis_policy(&c).expect("a policy");
    let rules = policy.spec.and_then(|s| s.ingress).expect("rules");
    assert_eq!(rules.len(), 2);
    let selectors: Vec<_> = rules
        .iter()
        .map(|r| r.from.as_ref().expect("from")[0].pod_selector.clone())
        .collect();
    assert_eq!(
        selectors,
        [
            Some(c.label_selector(crate::resources::COMPONENT_BROKER)),
            Some(c.label_selector(COMPONENT_REDIS))
        ]
    );
    for rule in &rules {
        let ports: Vec<_> = rule
            .ports
            .iter()
            .flatten()
            .map(|p| p.port.clone())
            .collect();
        assert_eq!(
            ports,
            [Some(IntOrString::Int(6379)), Some(IntOrString::Int(26379))]
        );
    }
    // An operator running in the cluster also asks the sentinels (for the status): port 26379
    // from its pods.
    let c = Cluster::new(&object)
        .expect("cluster")
        .with_operator_namespace(Some("ops".to_string()));
    let policy = networkpolicy::redis_policy(&c).expect("a policy");
    let rules = policy.spec.and_then(|s| s.ingress).expect("rules");
    assert_eq!(rules.len(), 3);
    let from = &rules[2].from.as_ref().expect("from")[0];
    let namespace = from
        .namespace_selector
        .as_ref()
        .and_then(|s| s.match_labels.as_ref())
        .expect("the operator's namespace");
    assert_eq!(namespace["kubernetes.io/metadata.name"], "ops");
    let ports: Vec<_> = rules[2]
        .ports
        .iter()
        .flatten()
        .map(|p| p.port.clone())
        .collect();
    assert_eq!(ports, [Some(IntOrString::Int(26379))]);
}
