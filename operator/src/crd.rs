//! The `MqttCluster` custom resource (`mqtt.starling.dev/v1alpha1`).
//!
//! The Rust types are the source of truth: `starling-operator crd` renders them as the CRD in
//! `crds/mqttcluster.yaml`, and a test fails when the committed file differs. Doc comments become
//! the schema's descriptions, `#[serde(default = ...)]` values become schema defaults, and the
//! `x_kube(validation = ...)` rules become CEL `x-kubernetes-validations` that the API server
//! enforces with the given messages.
//!
//! One file per section of the spec (`image`, `listeners`, `service`, `redis`, `auth`, `broker`,
//! `gossip`, `pods`, `monitoring`, `network`); this file has the resource itself, its status, the CRD
//! rendering and what the sections share.

mod auth;
mod autoscaling;
mod broker;
mod evacuation;
mod gossip;
mod image;
mod listeners;
mod monitoring;
mod network;
mod pods;
mod redis;
mod service;

pub use self::auth::AuthSpec;
pub use self::autoscaling::{AutoscalingSpec, AutoscalingStatus};
pub use self::broker::{BrokerSettings, LogFormat};
pub use self::evacuation::PodEvacuation;
pub use self::gossip::GossipSpec;
pub use self::image::{ImageSpec, PullPolicy, DEFAULT_IMAGE_REPOSITORY};
pub use self::listeners::{
    CertificateUsername, ClientAuth, ListenersSpec, MqttListener, TlsListener, WebSocketListener,
};
pub use self::monitoring::{MonitoringSpec, ServiceMonitorSpec};
pub use self::network::{NetworkPolicySpec, ADMIN_ACCESS_LABEL};
pub use self::pods::{PodDisruptionBudgetSpec, PodTemplateOverrides, DEFAULT_MAX_UNAVAILABLE};
pub use self::redis::{
    ExternalRedis, ExternalSentinel, ManagedRedis, ManagedSentinel, RedisMode, RedisPersistence,
    RedisReplication, RedisSpec, DEFAULT_DOWN_AFTER_MILLISECONDS, DEFAULT_REDIS_IMAGE,
    DEFAULT_REDIS_SIZE, DEFAULT_SENTINEL_REPLICAS,
};
pub use self::service::{ExternalTrafficPolicy, ServiceSpec, ServiceType, SessionAffinity};

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the custom resource.
pub const GROUP: &str = "mqtt.starling.dev";
/// The only version served so far.
pub const VERSION: &str = "v1alpha1";

/// A Starling MQTT cluster: broker pods behind one Service, sharing state in Redis and finding
/// each other by gossip.
// Several printer columns share a `type_`, which clippy mistakes for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mqtt.starling.dev",
    version = "v1alpha1",
    kind = "MqttCluster",
    plural = "mqttclusters",
    singular = "mqttcluster",
    shortname = "mqc",
    category = "starling",
    namespaced,
    status = "MqttClusterStatus",
    derive = "PartialEq",
    doc = "A Starling MQTT cluster: broker pods behind one Service, sharing state in Redis and finding each other by gossip.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Desired broker pods"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Broker pods that are ready"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoint",
        description = "Where MQTT clients connect"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Reason of the Ready condition"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(
        "self.gossip.port != self.broker.adminPort && \
         (!self.listeners.mqtt.enabled || self.gossip.port != self.listeners.mqtt.port) && \
         (!has(self.listeners.tls) || self.gossip.port != self.listeners.tls.port) && \
         (!has(self.listeners.websocket) || self.gossip.port != self.listeners.websocket.port)"
    )
    .message("gossip.port must differ from broker.adminPort and from every listener port"),
    validation = Rule::new(
        "(!self.listeners.mqtt.enabled || self.broker.adminPort != self.listeners.mqtt.port) && \
         (!has(self.listeners.tls) || self.broker.adminPort != self.listeners.tls.port) && \
         (!has(self.listeners.websocket) || self.broker.adminPort != self.listeners.websocket.port)"
    )
    .message("broker.adminPort must differ from every listener port"),
    validation = Rule::new(
        "!has(self.autoscaling) || !has(self.autoscaling.targetCpuUtilizationPercent) || \
         (has(self.resources) && has(self.resources.requests) && 'cpu' in self.resources.requests)"
    )
    .message("autoscaling.targetCpuUtilizationPercent needs resources.requests.cpu (the use is measured against it)")
)]
pub struct MqttClusterSpec {
    /// Number of broker pods. Each is one cluster node; clients may connect to any of them.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1))]
    pub replicas: i32,
    /// Broker container image.
    #[serde(default)]
    pub image: ImageSpec,
    /// CPU and memory of each broker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Client-facing listeners.
    #[serde(default)]
    pub listeners: ListenersSpec,
    /// The Service through which clients reach the brokers.
    #[serde(default)]
    pub service: ServiceSpec,
    /// The Redis store the nodes share: `managed` (run by the operator, the default) or
    /// `external`, never both.
    #[serde(default)]
    pub redis: RedisSpec,
    /// Authentication and topic authorisation of MQTT clients.
    #[serde(default)]
    pub auth: AuthSpec,
    /// Broker settings written into every node's configuration file.
    #[serde(default)]
    pub broker: BrokerSettings,
    /// Gossip membership between the broker pods.
    #[serde(default)]
    pub gossip: GossipSpec,
    /// Overrides for the broker pods.
    #[serde(default)]
    pub pod_template: PodTemplateOverrides,
    /// The PodDisruptionBudget that keeps voluntary evictions from taking down too many brokers.
    #[serde(default)]
    pub pod_disruption_budget: PodDisruptionBudgetSpec,
    /// Metrics scraping.
    #[serde(default)]
    pub monitoring: MonitoringSpec,
    /// NetworkPolicies for the brokers and the managed Redis (on by default).
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    /// Autoscaling on connections: the operator sets `replicas` from the brokers' counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
}

fn default_replicas() -> i32 {
    3
}

impl Default for MqttClusterSpec {
    fn default() -> Self {
        MqttClusterSpec {
            replicas: default_replicas(),
            image: ImageSpec::default(),
            resources: None,
            listeners: ListenersSpec::default(),
            service: ServiceSpec::default(),
            redis: RedisSpec::default(),
            auth: AuthSpec::default(),
            broker: BrokerSettings::default(),
            gossip: GossipSpec::default(),
            pod_template: PodTemplateOverrides::default(),
            pod_disruption_budget: PodDisruptionBudgetSpec::default(),
            monitoring: MonitoringSpec::default(),
            network_policy: NetworkPolicySpec::default(),
            autoscaling: None,
        }
    }
}

fn default_true() -> bool {
    true
}

/// A key of a Secret in the cluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key in the Secret.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// A key of a ConfigMap in the cluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// ConfigMap name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key in the ConfigMap.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// The largest integer a JSON number holds exactly (2^53 - 1).
const MAX_EXACT_JSON_INTEGER: u64 = (1 << 53) - 1;

/// Rewrites the properties schemars describes as `uint16`/`uint32`/`uint64` into integer formats the
/// API server knows (it warns about any other on every apply) with the Rust type's maximum (for
/// `uint64`, the largest integer JSON holds exactly), so
/// the API server refuses a value the operator could not read back: one such object would
/// otherwise make the operator's whole list of clusters unreadable.
fn unsigned_as_kubernetes_integers(schema: &mut schemars::Schema) {
    let Some(properties) = schema
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    else {
        return;
    };
    for property in properties.values_mut() {
        let Some(property) = property.as_object_mut() else {
            continue;
        };
        let (format, type_max) = match property.get("format").and_then(|f| f.as_str()) {
            Some("uint8") => ("int32", u64::from(u8::MAX)),
            Some("uint16") => ("int32", u64::from(u16::MAX)),
            Some("uint32") => ("int64", u64::from(u32::MAX)),
            // JSON numbers are exact up to 2^53 - 1, and so is every client reading the spec.
            Some("uint64") => ("int64", MAX_EXACT_JSON_INTEGER),
            _ => continue,
        };
        let maximum = match property.get("maximum").and_then(serde_json::Value::as_u64) {
            Some(declared) if declared < type_max => property["maximum"].clone(),
            _ => type_max.into(),
        };
        property.insert("format".into(), format.into());
        property.insert("maximum".into(), maximum);
    }
}

/// What the operator observed about the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MqttClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Broker pods that exist.
    #[serde(default)]
    pub replicas: i32,
    /// Broker pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the broker pods (for the scale subresource and autoscalers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Where MQTT clients connect (`host:port`), once known.
    // Always serialized, `null` when unknown: the status is written with a merge patch, where
    // a missing field would keep a stale value.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Why `endpoint` is not known yet and where to connect meanwhile: a `LoadBalancer`
    /// Service without an address (clusters without a load balancer controller, such as kind,
    /// k3d, minikube without `minikube tunnel` or bare metal, never give one) is reachable on
    /// its node port and, inside the cluster, by its DNS name.
    // Always serialized (`null` once the address is known), as `endpoint`.
    #[serde(default)]
    pub endpoint_hint: Option<String>,
    /// What the autoscaler wants and saw (with `spec.autoscaling`).
    // Always serialized (`null` without autoscaling), as `endpoint`.
    #[serde(default)]
    pub autoscaling: Option<AutoscalingStatus>,
    /// Broker pods on their way out (a scale-down, a rolling update, a deletion) and where
    /// their evacuations stand, as last read.
    // Always serialized (empty when no pod is going): a merge patch replaces the list whole.
    #[serde(default)]
    pub evacuations: Vec<PodEvacuation>,
    /// `Ready`, `Progressing`, `Degraded`, `GossipEncrypted` and, with `spec.autoscaling`,
    /// `Autoscaling`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The CRD as YAML, exactly as committed in `crds/mqttcluster.yaml`.
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    let body = serde_yaml_ng::to_string(&MqttCluster::crd())?;
    Ok(format!(
        "# Generated by `starling-operator crd`; do not edit.\n# Regenerate with: cargo run -p starling-operator -- crd > crds/mqttcluster.yaml\n{body}"
    ))
}

#[cfg(test)]
mod tests;
