//! The broker StatefulSet.
//!
//! Pods are named `<cluster>-<i>`. What differs per pod or comes from a Secret is passed as
//! environment variables that the broker's loader layers over its configuration file: the pod
//! name as node id (`STARLING_NODE_ID`), the pod IP as gossip address
//! (`STARLING_CLUSTER__GOSSIP_ADVERTISE`) and the Redis URL with the password
//! (`STARLING_CLUSTER__REDIS_URL`). Everything else is in the ConfigMap, mounted with the other
//! files the pods read (`volumes`).

use super::configmap::{self, ADMIN_TOKEN_FILE};
use super::redis::{self, PASSWORD_ENV};
use super::services::{PORT_ADMIN, PORT_GOSSIP, PORT_GOSSIP_UDP, PORT_MQTT, PORT_MQTTS, PORT_WS};
use super::{Cluster, COMPONENT_BROKER, CONFIG_HASH_ANNOTATION};
use crate::Error;
use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, HTTPGetAction,
    Lifecycle, LifecycleHandler, LocalObjectReference, ObjectFieldSelector, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecurityContext, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

mod volumes;

/// Name of the broker container.
pub const CONTAINER: &str = "broker";
/// The broker binary in the image (the Dockerfile's and `scripts/build-images.sh`'s entrypoint).
pub const BROKER_BINARY: &str = "/usr/local/bin/starling-broker";
/// The preStop hook waits at least this long for the evacuation to empty the pod (it returns
/// as soon as the pod is empty), however short the configured timeout.
pub const PRE_STOP_MIN_SECS: u32 = 5;
/// Slack on top of the preStop wait and the broker's drain timeout before SIGKILL.
pub const GRACE_SLACK_SECS: i64 = 10;
/// User and group id the broker runs as by default (no root needed: ports are above 1024).
pub const BROKER_UID: i64 = 65532;

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn env_from_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_string(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// The broker container's environment.
pub fn broker_env(cluster: &Cluster<'_>) -> Result<Vec<EnvVar>, Error> {
    let gossip_port = cluster.spec().gossip.port;
    let redis = redis::connection(cluster)?;
    let (url, password) = match redis {
        Some(r) => (Some(r.url), r.password),
        None => (None, None),
    };
    let mut vars = vec![
        env_from_field("STARLING_NODE_ID", "metadata.name"),
        env_from_field("POD_IP", "status.podIP"),
    ];
    // Variables referred to as $(NAME) must come before the variables that use them.
    if let Some(secret) = password {
        vars.push(EnvVar {
            name: PASSWORD_ENV.to_string(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(secret),
                ..EnvVarSource::default()
            }),
        });
    }
    // A Redis run by Sentinel is in the configuration file, with its passwords as files.
    if let Some(url) = url {
        vars.push(env("STARLING_CLUSTER__REDIS_URL", url));
    }
    vars.push(env(
        "STARLING_CLUSTER__GOSSIP_ADVERTISE",
        format!("$(POD_IP):{gossip_port}"),
    ));
    Ok(vars)
}

fn container_port(name: &str, port: i32, protocol: &str) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: port,
        protocol: Some(protocol.to_string()),
        ..ContainerPort::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String(PORT_ADMIN.to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// Seconds between the stop request and SIGKILL: the preStop evacuation's wait, the broker's
/// drain timeout and some slack.
pub fn termination_grace_period_secs(cluster: &Cluster<'_>) -> i64 {
    let broker = &cluster.spec().broker;
    i64::from(broker.evacuation_timeout_secs.max(PRE_STOP_MIN_SECS))
        + i64::from(broker.drain_timeout_secs)
        + GRACE_SLACK_SECS
}

/// The preStop hook: evacuate the pod through its admin API (new clients refused, so the
/// Service stops sending them here; connected ones asked to reconnect elsewhere at the
/// configured rate, their sessions kept), and wait until it is empty or the timeout passes.
/// Kubernetes then sends SIGTERM, which drains whatever is left.
fn pre_stop(cluster: &Cluster<'_>) -> LifecycleHandler {
    let broker = &cluster.spec().broker;
    LifecycleHandler {
        exec: Some(ExecAction {
            command: Some(vec![
                BROKER_BINARY.to_string(),
                "ctl".to_string(),
                "--url".to_string(),
                format!("http://127.0.0.1:{}", broker.admin_port),
                "--token-file".to_string(),
                ADMIN_TOKEN_FILE.to_string(),
                "evacuate".to_string(),
                "--rate".to_string(),
                broker.evacuation_rate_per_sec.to_string(),
                "--wait".to_string(),
                broker
                    .evacuation_timeout_secs
                    .max(PRE_STOP_MIN_SECS)
                    .to_string(),
            ]),
        }),
        ..LifecycleHandler::default()
    }
}

/// The broker StatefulSet; `config_hash` is [`configmap::config_hash`] of the ConfigMap.
pub fn stateful_set(cluster: &Cluster<'_>, config_hash: &str) -> Result<StatefulSet, Error> {
    let spec = cluster.spec();
    let overrides = &spec.pod_template;
    let listeners = &spec.listeners;

    let mut ports = Vec::new();
    if listeners.mqtt.enabled {
        ports.push(container_port(PORT_MQTT, listeners.mqtt.port, "TCP"));
    }
    if let Some(tls) = &listeners.tls {
        ports.push(container_port(PORT_MQTTS, tls.port, "TCP"));
    }
    if let Some(ws) = &listeners.websocket {
        ports.push(container_port(PORT_WS, ws.port, "TCP"));
    }
    ports.push(container_port(PORT_ADMIN, spec.broker.admin_port, "TCP"));
    ports.push(container_port(PORT_GOSSIP, spec.gossip.port, "TCP"));
    ports.push(container_port(PORT_GOSSIP_UDP, spec.gossip.port, "UDP"));

    let (volumes, volume_mounts) = volumes::volumes(cluster);
    let container = Container {
        name: CONTAINER.to_string(),
        image: Some(spec.image.reference()),
        image_pull_policy: Some(spec.image.pull_policy.as_str().to_string()),
        args: Some(vec!["--config".to_string(), configmap::config_path()]),
        env: Some(broker_env(cluster)?),
        ports: Some(ports),
        resources: spec.resources.clone(),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        // Up to a minute to start (e.g. while Redis comes up) before liveness counts.
        startup_probe: Some(http_probe("/healthz", 2, 30)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(pre_stop(cluster)),
            ..Lifecycle::default()
        }),
        volume_mounts: Some(volume_mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };

    // User labels first, so the operator's own labels (which the selector uses) win.
    let mut labels = overrides.labels.clone();
    labels.extend(cluster.labels(COMPONENT_BROKER));
    let mut annotations = overrides.annotations.clone();
    annotations.insert(CONFIG_HASH_ANNOTATION.to_string(), config_hash.to_string());
    if let Some(hash) = cluster.restart_secrets_hash() {
        annotations.insert(
            super::references::RESTART_SECRETS_HASH_ANNOTATION.to_string(),
            hash.to_string(),
        );
    }

    let security_context =
        overrides
            .security_context
            .clone()
            .unwrap_or_else(|| PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(BROKER_UID),
                run_as_group: Some(BROKER_UID),
                fs_group: Some(BROKER_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_string(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            });
    let topology_spread_constraints = overrides
        .topology_spread_constraints
        .clone()
        .unwrap_or_else(|| {
            vec![TopologySpreadConstraint {
                max_skew: 1,
                topology_key: "kubernetes.io/hostname".to_string(),
                when_unsatisfiable: "ScheduleAnyway".to_string(),
                label_selector: Some(cluster.label_selector(COMPONENT_BROKER)),
                ..TopologySpreadConstraint::default()
            }]
        });

    let pod = PodSpec {
        containers: vec![container],
        volumes: Some(volumes),
        termination_grace_period_seconds: Some(termination_grace_period_secs(cluster)),
        // The brokers never call the Kubernetes API.
        automount_service_account_token: Some(false),
        // Service links would add variables such as STARLING_SERVICE_HOST for a Service named
        // `starling`, which the broker would read as configuration keys and reject.
        enable_service_links: Some(false),
        security_context: Some(security_context),
        image_pull_secrets: (!spec.image.pull_secrets.is_empty()).then(|| {
            spec.image
                .pull_secrets
                .iter()
                .map(|name| LocalObjectReference { name: name.clone() })
                .collect()
        }),
        node_selector: (!overrides.node_selector.is_empty())
            .then(|| overrides.node_selector.clone()),
        tolerations: (!overrides.tolerations.is_empty()).then(|| overrides.tolerations.clone()),
        affinity: overrides.affinity.clone(),
        topology_spread_constraints: Some(topology_spread_constraints),
        priority_class_name: overrides.priority_class_name.clone(),
        ..PodSpec::default()
    };

    Ok(StatefulSet {
        metadata: cluster.child_meta(cluster.broker_name(), COMPONENT_BROKER),
        spec: StatefulSetSpec {
            replicas: Some(spec.replicas),
            selector: cluster.label_selector(COMPONENT_BROKER),
            service_name: Some(cluster.headless_service_name()),
            // Nodes are peers: start and stop them all at once rather than one by one.
            pod_management_policy: Some("Parallel".to_string()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".to_string()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: None,
                    max_unavailable: None,
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    })
}

#[cfg(test)]
mod tests;
