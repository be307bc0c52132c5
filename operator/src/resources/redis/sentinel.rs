//! The managed Redis with Sentinel (`spec.redis.managed.sentinel`): a StatefulSet of Redis pods,
//! each running a Redis (the primary or a replica) and a sentinel beside it, their headless
//! Service and PodDisruptionBudget, and the sentinel addresses the brokers ask.
//!
//! What each container does at start is in `scripts/` (POSIX shell, run by the Redis image's
//! `sh`): find the primary (from the sentinel with the newest configuration epoch; when no
//! sentinel knows one, from the peer running as primary; on a fresh cluster, pod 0), write the
//! configuration into an emptyDir and exec `redis-server` or `redis-sentinel`. A pod whose Redis
//! was the primary and restarted waits until the sentinels promote a replica: coming back as
//! primary would hand the replicas what it holds now (nothing, without persistence). A primary
//! whose pod is stopped on purpose hands over first (`scripts/handover.sh`, the preStop hook):
//! writes paused, a replica caught up and promoted by another pod's sentinel.
//! Every name is a stable pod DNS name (`announce-hostnames`), so a pod that comes back with
//! another IP is the same Redis and the same sentinel to the others.

use super::{
    claim_spec, container_security, pod_security, server_args, CONFIG_KEY, PASSWORD_KEY, REDIS_PORT,
};
use crate::crd::{ManagedRedis, ManagedSentinel, RedisMode};
use crate::resources::{Cluster, COMPONENT_REDIS};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    KeyToPath, Lifecycle, LifecycleHandler, ObjectFieldSelector, PersistentVolumeClaim,
    PodAffinityTerm, PodAntiAffinity, PodSpec, PodTemplateSpec, Probe, SecretVolumeSource, Service,
    ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Port of the sentinels.
pub const SENTINEL_PORT: i32 = 26379;
/// Where the Redis pods mount the password Secret (the password and its configuration line).
const AUTH_DIR: &str = "/etc/redis-auth";
/// The writable directory the scripts write the configurations into.
const CONF_DIR: &str = "/conf";
/// The Redis data directory.
const DATA_DIR: &str = "/data";
/// Shared by both containers' scripts, put before each.
const COMMON_SCRIPT: &str = include_str!("scripts/common.sh");
/// The Redis container's script.
const NODE_SCRIPT: &str = include_str!("scripts/node.sh");
/// The Sentinel container's script.
const SENTINEL_SCRIPT: &str = include_str!("scripts/sentinel.sh");
/// The Redis container's preStop hook: a primary hands over to a replica.
const HANDOVER_SCRIPT: &str = include_str!("scripts/handover.sh");
/// The Redis container's readiness probe: the primary, or a replica linked to it.
const READY_SCRIPT: &str = include_str!("scripts/ready.sh");
/// Time a Redis pod gets to stop: the hand-over (at most [`HANDOVER_DEADLINE_SECONDS`]), then
/// Redis' own shutdown.
const TERMINATION_GRACE_SECONDS: i64 = 60;
/// How long the hand-over may try (s), by the clock.
const HANDOVER_DEADLINE_SECONDS: i64 = 30;
/// How long a primary that hands over pauses writes (ms): past the pod's grace period, so that
/// nothing is written once a replica has caught up; the pod is gone first.
const HANDOVER_PAUSE_MS: i64 = (TERMINATION_GRACE_SECONDS + 5) * 1000;

/// The managed Redis' settings and its Sentinel settings, when the spec asks for Sentinel.
pub fn settings<'a>(cluster: &Cluster<'a>) -> Option<(&'a ManagedRedis, &'a ManagedSentinel)> {
    match cluster.spec().redis.mode() {
        Some(RedisMode::Managed(m)) => m.sentinel.as_ref().map(|s| (m, s)),
        _ => None,
    }
}

/// The name the sentinels monitor the primary under: the cluster's name.
pub fn master_name(cluster: &Cluster<'_>) -> String {
    cluster.name.to_string()
}

/// The DNS name of Redis pod `ordinal` through the headless Service.
pub fn host(cluster: &Cluster<'_>, ordinal: u32) -> String {
    format!(
        "{}-{ordinal}.{}.{}.svc",
        cluster.redis_name(),
        cluster.redis_nodes_service_name(),
        cluster.namespace
    )
}

/// The sentinels as `host:port`, in pod order: what the brokers ask for the primary.
pub fn sentinel_addresses(cluster: &Cluster<'_>) -> Vec<String> {
    let Some((_, sentinel)) = settings(cluster) else {
        return Vec::new();
    };
    (0..sentinel.replicas)
        .map(|i| format!("{}:{SENTINEL_PORT}", host(cluster, i)))
        .collect()
}

/// The sentinels' quorum: a majority of them must agree the primary is down.
pub fn quorum(sentinel: &ManagedSentinel) -> u32 {
    sentinel.replicas / 2 + 1
}

/// How long a failover may take before the sentinels give it up (ms): twice the time they wait
/// before starting one, at least 6 s. A failover that found no leader (the sentinels' votes
/// split) is tried again after twice this, so it is kept short.
pub fn failover_timeout_ms(sentinel: &ManagedSentinel) -> u32 {
    sentinel
        .down_after_milliseconds
        .saturating_mul(2)
        .max(6_000)
}

/// How long a restarted primary with data on its volume waits for the sentinels to promote a
/// replica before it comes back as primary itself (s): twelve times their wait, at least 60 s.
pub fn primary_wait_seconds(sentinel: &ManagedSentinel) -> u32 {
    (sentinel.down_after_milliseconds / 1000)
        .saturating_mul(12)
        .max(60)
}

/// How many rounds (about a second each) pod 0 must find no other Redis or sentinel before it
/// starts a new group as its first primary: three times the sentinels' down-after time, at
/// least 10.
pub fn bootstrap_silence_rounds(sentinel: &ManagedSentinel) -> u32 {
    (sentinel.down_after_milliseconds / 1000)
        .saturating_mul(3)
        .max(10)
}

/// The script a container runs: the shared part, then its own.
fn script(own: &str) -> String {
    format!("{COMMON_SCRIPT}\n{own}")
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// What both scripts read from their environment (see `scripts/common.sh`).
fn script_env(
    cluster: &Cluster<'_>,
    redis: &ManagedRedis,
    sentinel: &ManagedSentinel,
) -> Vec<EnvVar> {
    let peers: Vec<String> = (0..sentinel.replicas).map(|i| host(cluster, i)).collect();
    vec![
        EnvVar {
            name: "POD_NAME".to_string(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_string(),
                    api_version: None,
                }),
                ..EnvVarSource::default()
            }),
        },
        env(
            "REDIS_SELF",
            format!(
                "$(POD_NAME).{}.{}.svc",
                cluster.redis_nodes_service_name(),
                cluster.namespace
            ),
        ),
        env("REDIS_PEERS", peers.join(" ")),
        env("REDIS_PORT", REDIS_PORT.to_string()),
        env("SENTINEL_PORT", SENTINEL_PORT.to_string()),
        env("REDIS_MASTER_NAME", master_name(cluster)),
        env("REDIS_PASSWORD_FILE", format!("{AUTH_DIR}/{PASSWORD_KEY}")),
        env("REDIS_AUTH_CONF", format!("{AUTH_DIR}/{CONFIG_KEY}")),
        env("REDIS_CONF_DIR", CONF_DIR),
        env("REDIS_DATA_DIR", DATA_DIR),
        env(
            "REDIS_PRIMARY_WAIT",
            primary_wait_seconds(sentinel).to_string(),
        ),
        env("SENTINEL_QUORUM", quorum(sentinel).to_string()),
        env(
            "SENTINEL_DOWN_AFTER_MS",
            sentinel.down_after_milliseconds.to_string(),
        ),
        env(
            "SENTINEL_FAILOVER_TIMEOUT_MS",
            failover_timeout_ms(sentinel).to_string(),
        ),
        env(
            "REDIS_PERSISTENT",
            if redis.persistence.is_some() {
                "yes"
            } else {
                "no"
            },
        ),
        env(
            "REDIS_BOOTSTRAP_SILENCE",
            bootstrap_silence_rounds(sentinel).to_string(),
        ),
        env("REDIS_LOCAL", "127.0.0.1"),
        env("HANDOVER_PAUSE_MS", HANDOVER_PAUSE_MS.to_string()),
        env("HANDOVER_DEADLINE", HANDOVER_DEADLINE_SECONDS.to_string()),
    ]
}

fn tcp_probe(port: &str, period: i32, failures: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String(port.to_string()),
            host: None,
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

/// One of the pod's two containers. Its probes start only once it listens: a script may wait
/// for the sentinels for minutes (a restarted primary), and is not restarted meanwhile.
fn container(
    name: &str,
    port: i32,
    command: Vec<String>,
    args: Vec<String>,
    env: Vec<EnvVar>,
    mounts: Vec<VolumeMount>,
) -> Container {
    Container {
        name: name.to_string(),
        command: Some(command),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(name.to_string()),
            container_port: port,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        }]),
        // Up to an hour of waiting (720 × 5 s) before the kubelet restarts it.
        startup_probe: Some(tcp_probe(name, 5, 720)),
        readiness_probe: Some(tcp_probe(name, 5, 3)),
        liveness_probe: Some(tcp_probe(name, 10, 6)),
        volume_mounts: Some(mounts),
        security_context: Some(container_security()),
        ..Container::default()
    }
}

/// The Redis pods: a StatefulSet whose every pod runs a Redis and a sentinel; `None` unless the
/// spec asks for Sentinel.
pub fn stateful_set(cluster: &Cluster<'_>) -> Option<StatefulSet> {
    let (redis, sentinel) = settings(cluster)?;
    let labels = cluster.labels(COMPONENT_REDIS);
    let env = script_env(cluster, redis, sentinel);
    let mut redis_container = container(
        "redis",
        REDIS_PORT,
        vec![
            "sh".into(),
            "-c".into(),
            script(NODE_SCRIPT),
            "redis".into(),
        ],
        server_args(redis),
        env.clone(),
        vec![
            mount("data", DATA_DIR, false),
            mount("conf", CONF_DIR, false),
            mount("auth", AUTH_DIR, true),
        ],
    );
    redis_container.image = Some(redis.image.clone());
    redis_container.resources = redis.resources.clone();
    redis_container.readiness_probe = Some(Probe {
        exec: Some(ExecAction {
            command: Some(vec![
                "sh".into(),
                "-c".into(),
                script(READY_SCRIPT),
                "ready".into(),
            ]),
        }),
        period_seconds: Some(5),
        timeout_seconds: Some(5),
        failure_threshold: Some(2),
        ..Probe::default()
    });
    redis_container.lifecycle = Some(Lifecycle {
        pre_stop: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec![
                    "sh".into(),
                    "-c".into(),
                    script(HANDOVER_SCRIPT),
                    "handover".into(),
                ]),
            }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    });
    let mut sentinel_container = container(
        "sentinel",
        SENTINEL_PORT,
        vec![
            "sh".into(),
            "-c".into(),
            script(SENTINEL_SCRIPT),
            "sentinel".into(),
        ],
        Vec::new(),
        env,
        vec![
            mount("conf", CONF_DIR, false),
            mount("auth", AUTH_DIR, true),
        ],
    );
    sentinel_container.image = Some(redis.image.clone());
    let auth_items = [PASSWORD_KEY, CONFIG_KEY]
        .iter()
        .map(|key| KeyToPath {
            key: key.to_string(),
            path: key.to_string(),
            ..KeyToPath::default()
        })
        .collect();
    let mut volumes = vec![
        Volume {
            name: "auth".to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(cluster.redis_name()),
                items: Some(auth_items),
                default_mode: Some(0o440),
                optional: Some(false),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "conf".to_string(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    let claims = match &redis.persistence {
        Some(persistence) => Some(vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".to_string()),
                labels: Some(labels.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(claim_spec(persistence)),
            ..PersistentVolumeClaim::default()
        }]),
        None => {
            volumes.push(Volume {
                name: "data".to_string(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            });
            None
        }
    };
    // Spread over nodes where the scheduler can: a node that dies takes one Redis and one
    // sentinel, and the others still have their majority.
    let affinity = Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(cluster.label_selector(COMPONENT_REDIS)),
                        topology_key: "kubernetes.io/hostname".to_string(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    };
    Some(StatefulSet {
        metadata: cluster.child_meta(cluster.redis_name(), COMPONENT_REDIS),
        spec: StatefulSetSpec {
            replicas: Some(i32::try_from(sentinel.replicas).unwrap_or(i32::MAX)),
            service_name: Some(cluster.redis_nodes_service_name()),
            selector: cluster.label_selector(COMPONENT_REDIS),
            // All at once: the scripts order the start themselves (pod 0 is the first primary
            // of a new cluster), and a pod never waits for another's readiness to be made.
            pod_management_policy: Some("Parallel".to_string()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![redis_container, sentinel_container],
                    volumes: Some(volumes),
                    affinity: Some(affinity),
                    termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(pod_security()),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: claims,
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    })
}

/// The headless Service that gives every Redis pod its DNS name, ready or not (a pod waiting
/// for its primary must be found by the others).
pub fn nodes_service(cluster: &Cluster<'_>) -> Option<Service> {
    settings(cluster)?;
    let port = |name: &str, port: i32| ServicePort {
        name: Some(name.to_string()),
        port,
        target_port: Some(IntOrString::String(name.to_string())),
        protocol: Some("TCP".to_string()),
        ..ServicePort::default()
    };
    Some(Service {
        metadata: cluster.child_meta(cluster.redis_nodes_service_name(), COMPONENT_REDIS),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(cluster.selector_labels(COMPONENT_REDIS)),
            ports: Some(vec![
                port("redis", REDIS_PORT),
                port("sentinel", SENTINEL_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// At most one Redis pod down by choice (a drain, an upgrade): the sentinels keep their
/// majority and a replica is there to promote.
pub fn pod_disruption_budget(cluster: &Cluster<'_>) -> Option<PodDisruptionBudget> {
    settings(cluster)?;
    Some(PodDisruptionBudget {
        metadata: cluster.child_meta(cluster.redis_name(), COMPONENT_REDIS),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(cluster.label_selector(COMPONENT_REDIS)),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

#[cfg(test)]
mod tests;
