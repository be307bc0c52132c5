//! The `MqttCluster` custom resource (`mqtt.starling.dev/v1alpha1`).
//!
//! The Rust types are the source of truth: `starling-operator crd` renders them as the CRD in
//! `crds/mqttcluster.yaml`, and a test fails when the committed file differs. Doc comments become
//! the schema's descriptions, `#[serde(default = ...)]` values become schema defaults, and the
//! `x_kube(validation = ...)` rules become CEL `x-kubernetes-validations` that the API server
//! enforces with the given messages.

use k8s_openapi::api::core::v1::{
    Affinity, PodSecurityContext, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use starling_config::BrokerConfig;
use std::collections::BTreeMap;

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
    .message("broker.adminPort must differ from every listener port")
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
}

fn default_replicas() -> i32 {
    3
}

/// Which image runs the brokers and how it is pulled.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Image repository, without the tag.
    #[serde(default = "default_image_repository")]
    #[schemars(length(min = 1))]
    pub repository: String,
    /// Image tag, or a digest such as `sha256:…`. Unset: the operator's own version, so
    /// upgrading the operator upgrades the brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// When the kubelet pulls the image.
    #[serde(default)]
    pub pull_policy: PullPolicy,
    /// Names of Secrets (in the cluster's namespace) holding registry credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull_secrets: Vec<String>,
}

/// Default broker image repository.
pub const DEFAULT_IMAGE_REPOSITORY: &str = "ghcr.io/starling-mqtt/starling-broker";

fn default_image_repository() -> String {
    DEFAULT_IMAGE_REPOSITORY.to_string()
}

impl Default for ImageSpec {
    fn default() -> Self {
        ImageSpec {
            repository: default_image_repository(),
            tag: None,
            pull_policy: PullPolicy::default(),
            pull_secrets: Vec::new(),
        }
    }
}

impl ImageSpec {
    /// `repository:tag` (or `repository@digest`), the tag defaulting to the operator's version.
    pub fn reference(&self) -> String {
        let tag = self.tag.as_deref().unwrap_or(env!("CARGO_PKG_VERSION"));
        if tag.starts_with("sha256:") {
            format!("{}@{}", self.repository, tag)
        } else {
            format!("{}:{}", self.repository, tag)
        }
    }
}

/// Kubernetes image pull policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum PullPolicy {
    /// Pull on every pod start.
    Always,
    /// Pull when the node does not have the image yet.
    #[default]
    IfNotPresent,
    /// Never pull; the image must be on the node.
    Never,
}

impl PullPolicy {
    /// The value Kubernetes expects.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Client-facing listeners. At least one must be enabled, and each needs its own port.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mqtt.enabled || has(self.tls) || has(self.websocket)")
        .message("enable at least one listener: listeners.mqtt.enabled, listeners.tls or listeners.websocket"),
    validation = Rule::new("!has(self.tls) || !self.mqtt.enabled || self.tls.port != self.mqtt.port")
        .message("listeners.tls.port must differ from listeners.mqtt.port"),
    validation = Rule::new("!has(self.websocket) || !self.mqtt.enabled || self.websocket.port != self.mqtt.port")
        .message("listeners.websocket.port must differ from listeners.mqtt.port"),
    validation = Rule::new("!has(self.websocket) || !has(self.tls) || self.websocket.port != self.tls.port")
        .message("listeners.websocket.port must differ from listeners.tls.port")
)]
pub struct ListenersSpec {
    /// Plain MQTT over TCP.
    #[serde(default)]
    pub mqtt: MqttListener,
    /// MQTT over TLS; the certificate comes from a Secret of type `kubernetes.io/tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsListener>,
    /// MQTT over WebSocket (subprotocol `mqtt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<WebSocketListener>,
}

/// The plain MQTT listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MqttListener {
    /// Serve plain MQTT. Turn off to accept TLS or WebSocket clients only.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Port, in the pods and on the Service.
    #[serde(default = "default_mqtt_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for MqttListener {
    fn default() -> Self {
        MqttListener {
            enabled: true,
            port: default_mqtt_port(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_mqtt_port() -> i32 {
    1883
}

/// The TLS listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsListener {
    /// Port, in the pods and on the Service.
    #[serde(default = "default_tls_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Secret of type `kubernetes.io/tls` (keys `tls.crt`, `tls.key`) in the cluster's namespace,
    /// for example one issued by cert-manager.
    #[schemars(length(min = 1))]
    pub secret_name: String,
}

fn default_tls_port() -> i32 {
    8883
}

/// The WebSocket listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebSocketListener {
    /// Port, in the pods and on the Service.
    #[serde(default = "default_ws_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

fn default_ws_port() -> i32 {
    8083
}

/// The client-facing Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Annotations for the Service, e.g. for a cloud load balancer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Load balancer implementation (only for type `LoadBalancer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_class: Option<String>,
    /// `Local` keeps client source addresses but only routes to nodes with a broker pod
    /// (only for types `LoadBalancer` and `NodePort`). Unset: the Kubernetes default, `Cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<ExternalTrafficPolicy>,
    /// `ClientIP` sends a client's connections to the same pod. Not needed by Starling, whose
    /// nodes share sessions.
    #[serde(default)]
    pub session_affinity: SessionAffinity,
}

/// Kubernetes Service type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ServiceType {
    /// An external load balancer (the cloud's, MetalLB, ...). Clusters without a load balancer
    /// controller never give it an address (`status.endpointHint` then says where to connect);
    /// choose `NodePort` there.
    #[default]
    LoadBalancer,
    /// A port on every node.
    NodePort,
    /// Reachable inside the Kubernetes cluster only.
    ClusterIP,
}

impl ServiceType {
    /// The value Kubernetes expects.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::NodePort => "NodePort",
            ServiceType::ClusterIP => "ClusterIP",
        }
    }
}

/// Service external traffic policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ExternalTrafficPolicy {
    /// Any node forwards to any pod (client addresses are rewritten).
    Cluster,
    /// Nodes forward only to their own pods (client addresses are kept).
    Local,
}

impl ExternalTrafficPolicy {
    /// The value Kubernetes expects.
    pub fn as_str(self) -> &'static str {
        match self {
            ExternalTrafficPolicy::Cluster => "Cluster",
            ExternalTrafficPolicy::Local => "Local",
        }
    }
}

/// Service session affinity.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum SessionAffinity {
    /// Every connection may go to any pod.
    #[default]
    None,
    /// Connections from one client address go to the same pod.
    ClientIP,
}

impl SessionAffinity {
    /// The value Kubernetes expects.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionAffinity::None => "None",
            SessionAffinity::ClientIP => "ClientIP",
        }
    }
}

/// The shared Redis store: exactly one of `managed` or `external`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(has(self.managed) && has(self.external))")
        .message("redis: set either managed or external, not both"),
    validation = Rule::new("has(self.managed) || has(self.external)")
        .message("redis: set managed (the operator runs Redis) or external (url of your own Redis)"),
    validation = Rule::new("!has(self.managed) || !has(self.replication) || self.replication.waitReplicas == 0")
        .message("redis.replication: the managed Redis has no replicas to wait for; set waitReplicas to 0 or use an external Redis with replicas")
)]
pub struct RedisSpec {
    /// A single Redis pod run by the operator, with a generated password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedRedis>,
    /// A Redis you run yourself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRedis>,
    /// Whether QoS 1/2 acknowledgements wait until Redis replicas hold the message (Redis
    /// `WAIT`), so that a failover right after an acknowledgement loses nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<RedisReplication>,
}

impl Default for RedisSpec {
    fn default() -> Self {
        RedisSpec {
            managed: Some(ManagedRedis::default()),
            external: None,
            replication: None,
        }
    }
}

/// How acknowledgements wait for Redis replicas.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = unsigned_as_kubernetes_integers)]
pub struct RedisReplication {
    /// Replicas that must hold a message before its acknowledgement goes out; 0 does not wait.
    #[schemars(range(min = 0, max = 16))]
    pub wait_replicas: u32,
    /// How long to wait for them (ms); when fewer confirm in time the acknowledgement goes out
    /// anyway and `starling_cluster_replication_waits_short_total` counts it.
    #[serde(default = "default_wait_timeout_ms")]
    #[schemars(range(min = 1, max = 60000))]
    pub wait_timeout_ms: u32,
}

fn default_wait_timeout_ms() -> u32 {
    1000
}

/// Which Redis a valid spec uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RedisMode<'a> {
    /// Run by the operator.
    Managed(&'a ManagedRedis),
    /// Run by the user.
    External(&'a ExternalRedis),
}

impl RedisSpec {
    /// The chosen Redis, or `None` when the spec sets both or neither (the CRD's validation
    /// rejects that; this guards against objects stored before the rules existed).
    pub fn mode(&self) -> Option<RedisMode<'_>> {
        match (&self.managed, &self.external) {
            (Some(m), None) => Some(RedisMode::Managed(m)),
            (None, Some(e)) => Some(RedisMode::External(e)),
            _ => None,
        }
    }
}

/// Redis run by the operator: one Deployment, a Service and a Secret with a generated password.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedRedis {
    /// Redis image.
    #[serde(default = "default_redis_image")]
    #[schemars(length(min = 1))]
    pub image: String,
    /// CPU and memory of the Redis container. A memory limit also sets Redis' `maxmemory` to
    /// 80% of it. Redis never evicts keys (`maxmemory-policy noeviction`): when full it refuses
    /// writes rather than drop the keys that say which node owns a session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Keep Redis data on a PersistentVolumeClaim (append-only file). Unset: data lives in the
    /// pod and is lost when it restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<RedisPersistence>,
}

/// Default image of the managed Redis.
pub const DEFAULT_REDIS_IMAGE: &str = "redis:7.4-alpine";

fn default_redis_image() -> String {
    DEFAULT_REDIS_IMAGE.to_string()
}

impl Default for ManagedRedis {
    fn default() -> Self {
        ManagedRedis {
            image: default_redis_image(),
            resources: None,
            persistence: None,
        }
    }
}

/// The managed Redis' volume.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisPersistence {
    /// StorageClass of the claim. Unset: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Size of the claim.
    // Option only because the generated schema marks the field nullable: an explicit null
    // must not make the whole object unreadable. `None` means the default.
    #[serde(
        default = "default_redis_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub size: Option<Quantity>,
}

/// Default size of the managed Redis' claim.
pub const DEFAULT_REDIS_SIZE: &str = "1Gi";

fn default_redis_size() -> Option<Quantity> {
    Some(Quantity(DEFAULT_REDIS_SIZE.to_string()))
}

/// A Redis the user runs: one server at `url`, or one run by Sentinel (`sentinel`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.url) != has(self.sentinel)")
        .message("redis.external: set url (one Redis) or sentinel (a Redis run by Sentinel), not both"),
    validation = Rule::new("has(self.sentinel) || !has(self.sentinelPasswordSecretRef)")
        .message("redis.external.sentinelPasswordSecretRef needs redis.external.sentinel")
)]
pub struct ExternalRedis {
    /// URL such as `redis://redis.example:6379/0` or `rediss://...` for TLS. Put no password
    /// here: use `passwordSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1), regex(pattern = r"^(redis|rediss)://[^\s]+$"))]
    pub url: Option<String>,
    /// A Redis run by Sentinel: the brokers ask the sentinels for the primary and follow a
    /// failover without restarting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<ExternalSentinel>,
    /// Secret key holding the Redis password (of the data nodes, with Sentinel). With `url` it
    /// is inserted into the URL, so it must not contain characters that need escaping in a URL
    /// (`@`, `:`, `/`, `%`, ...); with `sentinel` it is read from a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding the sentinels' own password, if they ask for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel_password_secret_ref: Option<SecretKeyRef>,
}

/// The sentinels of a Redis run by Sentinel.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalSentinel {
    /// The name the sentinels monitor the primary under (`sentinel monitor <name> ...`).
    #[schemars(length(min = 1), regex(pattern = r"^\S+$"))]
    pub master_name: String,
    /// The sentinels as `host:port`, e.g. `redis-sentinel-0.redis-sentinel:26379`.
    #[schemars(length(min = 1))]
    pub sentinels: Vec<String>,
    /// TLS to the sentinels and the data nodes, verified against the system's roots.
    #[serde(default)]
    pub tls: bool,
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

/// Authentication and authorisation of MQTT clients.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.allowAnonymous || has(self.usersSecretRef)").message(
    "auth: allowAnonymous is false but usersSecretRef is not set, so no client could connect"
))]
pub struct AuthSpec {
    /// Accept clients that send no username.
    #[serde(default = "default_true")]
    pub allow_anonymous: bool,
    /// Secret key holding the password file: `username:hash` lines with argon2 PHC hashes, as
    /// written by `starling-broker passwd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users_secret_ref: Option<SecretKeyRef>,
    /// ConfigMap key holding the topic ACL file. Unset: every client may publish and subscribe
    /// anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl_config_map_ref: Option<ConfigMapKeyRef>,
}

impl Default for AuthSpec {
    fn default() -> Self {
        AuthSpec {
            allow_anonymous: true,
            users_secret_ref: None,
            acl_config_map_ref: None,
        }
    }
}

/// Broker settings; defaults are the broker's own.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = unsigned_as_kubernetes_integers)]
pub struct BrokerSettings {
    /// Upper bound on a session's expiry interval, in seconds; MQTT 3.1.1 persistent sessions
    /// get this expiry.
    #[serde(default = "defaults::max_session_expiry_secs")]
    pub max_session_expiry_secs: u32,
    /// Upper bound on a message's expiry interval (message TTL), in seconds; 0 means no bound.
    #[serde(default = "defaults::max_message_expiry_secs")]
    pub max_message_expiry_secs: u32,
    /// Most messages queued for one client; when full, the newest message is dropped.
    #[serde(default = "defaults::max_queued_messages")]
    #[schemars(range(min = 1))]
    pub max_queued_messages: u32,
    /// Most unacknowledged QoS 1/2 messages in flight to one client.
    #[serde(default = "defaults::max_inflight")]
    #[schemars(range(min = 1, max = 65535))]
    pub max_inflight: u16,
    /// Queue QoS 0 messages for offline persistent sessions too.
    #[serde(default = "defaults::queue_qos0")]
    pub queue_qos0: bool,
    /// Largest MQTT packet accepted from a client, in bytes.
    #[serde(default = "defaults::max_packet_size")]
    #[schemars(range(min = 64, max = 268_435_455))]
    pub max_packet_size: u32,
    /// Most simultaneous client connections per broker pod.
    #[serde(default = "defaults::max_connections")]
    #[schemars(range(min = 1))]
    pub max_connections: u32,
    /// Seconds a stopping broker waits for its clients to leave. The pods' termination grace
    /// period is set longer than this.
    #[serde(default = "defaults::drain_timeout_secs")]
    #[schemars(range(min = 0, max = 3600))]
    pub drain_timeout_secs: u32,
    /// Clients a stopping broker pod asks per second to reconnect to another pod (MQTT 5:
    /// DISCONNECT 0x9C) before it is stopped: its evacuation, run by the pod's preStop hook.
    #[serde(default = "defaults::evacuation_rate_per_sec")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub evacuation_rate_per_sec: u32,
    /// Seconds the preStop hook waits for the evacuation to empty the pod; the pod is stopped
    /// then, emptied or not (what is left is drained as on any stop).
    #[serde(default = "defaults::evacuation_timeout_secs")]
    #[schemars(range(min = 0, max = 3600))]
    pub evacuation_timeout_secs: u32,
    /// Port of the admin HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).
    #[serde(default = "defaults::admin_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub admin_port: i32,
    /// Log filter such as `info` or `starling_broker=debug,info`.
    #[serde(default = "defaults::log_level")]
    #[schemars(length(min = 1))]
    pub log_level: String,
    /// Log line format.
    #[serde(default = "defaults::log_format")]
    pub log_format: LogFormat,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            max_session_expiry_secs: defaults::max_session_expiry_secs(),
            max_message_expiry_secs: defaults::max_message_expiry_secs(),
            max_queued_messages: defaults::max_queued_messages(),
            max_inflight: defaults::max_inflight(),
            queue_qos0: defaults::queue_qos0(),
            max_packet_size: defaults::max_packet_size(),
            max_connections: defaults::max_connections(),
            drain_timeout_secs: defaults::drain_timeout_secs(),
            evacuation_rate_per_sec: defaults::evacuation_rate_per_sec(),
            evacuation_timeout_secs: defaults::evacuation_timeout_secs(),
            admin_port: defaults::admin_port(),
            log_level: defaults::log_level(),
            log_format: defaults::log_format(),
        }
    }
}

/// Rewrites the properties schemars describes as `uint16`/`uint32` into integer formats the
/// API server knows (it warns about any other on every apply) with the Rust type's maximum, so
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
            Some("uint8") => ("int32", u32::from(u8::MAX)),
            Some("uint16") => ("int32", u32::from(u16::MAX)),
            Some("uint32") => ("int64", u32::MAX),
            _ => continue,
        };
        let maximum = match property.get("maximum").and_then(serde_json::Value::as_f64) {
            Some(declared) if declared < f64::from(type_max) => property["maximum"].clone(),
            _ => type_max.into(),
        };
        property.insert("format".into(), format.into());
        property.insert("maximum".into(), maximum);
    }
}

/// Broker log format.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Defaults of [`BrokerSettings`], taken from the broker's own configuration defaults so the two
/// cannot drift.
mod defaults {
    use super::{BrokerConfig, LogFormat};

    fn broker() -> BrokerConfig {
        BrokerConfig::default()
    }

    fn saturate(value: usize) -> u32 {
        u32::try_from(value).unwrap_or(u32::MAX)
    }

    pub fn max_session_expiry_secs() -> u32 {
        broker().session.max_session_expiry_secs
    }
    pub fn max_message_expiry_secs() -> u32 {
        broker().session.max_message_expiry_secs
    }
    pub fn max_queued_messages() -> u32 {
        saturate(broker().limits.max_queued_messages)
    }
    pub fn max_inflight() -> u16 {
        broker().limits.max_inflight
    }
    pub fn queue_qos0() -> bool {
        broker().session.queue_qos0
    }
    pub fn max_packet_size() -> u32 {
        broker().limits.max_packet_size
    }
    pub fn max_connections() -> u32 {
        saturate(broker().limits.max_connections)
    }
    pub fn drain_timeout_secs() -> u32 {
        u32::try_from(broker().shutdown.drain_timeout_secs).unwrap_or(u32::MAX)
    }
    pub fn evacuation_rate_per_sec() -> u32 {
        100
    }
    pub fn evacuation_timeout_secs() -> u32 {
        30
    }
    pub fn admin_port() -> i32 {
        broker().admin.bind.map_or(9090, |a| i32::from(a.port()))
    }
    pub fn log_level() -> String {
        broker().log.level
    }
    /// JSON, unlike the standalone broker's text: pods' logs are read by collectors.
    pub fn log_format() -> LogFormat {
        LogFormat::Json
    }
}

/// Gossip membership between broker pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GossipSpec {
    /// Gossip port (TCP and UDP).
    #[serde(default = "default_gossip_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Secret key holding the gossip encryption key (base64 of 16, 24 or 32 bytes, e.g. from
    /// `openssl rand -base64 32`). Unset: gossip is not encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key_secret_ref: Option<SecretKeyRef>,
}

fn default_gossip_port() -> i32 {
    7946
}

impl Default for GossipSpec {
    fn default() -> Self {
        GossipSpec {
            port: default_gossip_port(),
            encryption_key_secret_ref: None,
        }
    }
}

/// Overrides for the broker pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverrides {
    /// Extra pod labels; the operator's own `app.kubernetes.io/*` labels win on conflict.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Node selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Topology spread constraints. Unset: pods are spread over nodes where possible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// Pod security context. Unset: non-root user 65532, RuntimeDefault seccomp profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// The broker pods' PodDisruptionBudget.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodDisruptionBudgetSpec {
    /// Create the PodDisruptionBudget.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Most broker pods that voluntary disruptions (drains, upgrades) may take down at once: a
    /// number or a percentage such as `"25%"`.
    // Option only because the generated schema marks the field nullable: an explicit null
    // must not make the whole object unreadable. `None` means the default.
    #[serde(
        default = "default_max_unavailable",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_unavailable: Option<IntOrString>,
}

/// Default `maxUnavailable` of the PodDisruptionBudget.
pub const DEFAULT_MAX_UNAVAILABLE: i32 = 1;

fn default_max_unavailable() -> Option<IntOrString> {
    Some(IntOrString::Int(DEFAULT_MAX_UNAVAILABLE))
}

impl Default for PodDisruptionBudgetSpec {
    fn default() -> Self {
        PodDisruptionBudgetSpec {
            enabled: true,
            max_unavailable: default_max_unavailable(),
        }
    }
}

/// Metrics scraping.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// A Prometheus Operator ServiceMonitor for the brokers' `/metrics`.
    #[serde(default)]
    pub service_monitor: ServiceMonitorSpec,
}

/// The ServiceMonitor; created only when its CRD (`monitoring.coreos.com`) is installed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    /// Create the ServiceMonitor.
    #[serde(default)]
    pub enabled: bool,
    /// Scrape interval such as `30s`. Unset: Prometheus' default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Extra labels, e.g. the ones your Prometheus selects ServiceMonitors by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
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
    /// `Ready`, `Progressing` and `Degraded`.
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema_check::{cel_errors, defaults, structural_errors};
    use serde_json::{json, Value};

    fn object(spec: Value) -> Value {
        json!({
            "apiVersion": "mqtt.starling.dev/v1alpha1",
            "kind": "MqttCluster",
            "metadata": {"name": "demo", "namespace": "iot"},
            "spec": spec,
        })
    }

    /// All problems the API server would report, structural and CEL.
    fn problems(spec: Value) -> Vec<String> {
        let o = object(spec);
        let mut all = structural_errors(&o);
        all.extend(cel_errors(&o));
        all
    }

    fn assert_rejected(spec: Value, expected: &str) {
        let problems = problems(spec.clone());
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{spec} should be rejected with {expected:?}, got {problems:?}"
        );
    }

    #[test]
    fn committed_crd_is_current() {
        let committed = include_str!("../../crds/mqttcluster.yaml");
        let generated = crd_yaml().expect("render the CRD");
        assert!(
            committed == generated,
            "crds/mqttcluster.yaml is stale; regenerate it with\n  \
             cargo run -p starling-operator -- crd > crds/mqttcluster.yaml"
        );
    }

    #[test]
    fn crd_schema_is_one_the_api_server_accepts() {
        assert_eq!(
            crate::schema_check::crd_schema_problems(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn crd_identity() {
        let crd = MqttCluster::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("mqttclusters.mqtt.starling.dev")
        );
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, "MqttCluster");
        assert_eq!(crd.spec.names.short_names, Some(vec!["mqc".to_string()]));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, VERSION);
        let sub = version.subresources.as_ref().expect("subresources");
        assert!(sub.status.is_some());
        let scale = sub.scale.as_ref().expect("scale subresource");
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.status_replicas_path, ".status.replicas");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
        let columns: Vec<&str> = version
            .additional_printer_columns
            .as_ref()
            .expect("columns")
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Replicas", "Ready", "Endpoint", "Status", "Age"]);
    }

    #[test]
    fn empty_spec_is_valid_and_defaults_match_the_rust_defaults() {
        assert_eq!(problems(json!({})), Vec::<String>::new());
        let defaulted = defaults(&object(json!({})));
        let spec: MqttClusterSpec =
            serde_json::from_value(defaulted["spec"].clone()).expect("defaulted spec parses");
        assert_eq!(spec, MqttClusterSpec::default());
        assert_eq!(defaulted["spec"]["replicas"], 3);
        assert_eq!(
            defaulted["spec"]["redis"]["managed"]["image"],
            DEFAULT_REDIS_IMAGE
        );
        assert_eq!(
            defaulted["spec"]["podDisruptionBudget"]["maxUnavailable"],
            1
        );
        assert_eq!(defaulted["spec"]["service"]["sessionAffinity"], "None");
    }

    /// Schema defaults and serde defaults agree for partially written specs too: what the API
    /// server stores means the same as what the operator would assume.
    #[test]
    fn schema_defaults_agree_with_serde_defaults() {
        for spec in [
            json!({"listeners": {"tls": {"secretName": "c"}}}),
            json!({"redis": {"managed": {"persistence": {}}}}),
            json!({"redis": {"external": {"url": "redis://r:6379"}}}),
            json!({"broker": {"maxInflight": 5}}),
            json!({"auth": {"usersSecretRef": {"name": "u", "key": "k"}}}),
            json!({"gossip": {}, "service": {"type": "NodePort"}, "monitoring": {"serviceMonitor": {"enabled": true}}}),
        ] {
            let raw: MqttClusterSpec = serde_json::from_value(spec.clone()).expect("raw parses");
            let defaulted = defaults(&object(spec.clone()));
            let stored: MqttClusterSpec =
                serde_json::from_value(defaulted["spec"].clone()).expect("defaulted parses");
            assert_eq!(raw, stored, "{spec}");
        }
    }

    #[test]
    fn replicas_below_one_are_rejected() {
        assert_rejected(json!({"replicas": 0}), "below the minimum 1");
    }

    #[test]
    fn managed_and_external_redis_together_are_rejected() {
        assert_rejected(
            json!({"redis": {"managed": {}, "external": {"url": "redis://r:6379"}}}),
            "set either managed or external, not both",
        );
        assert_rejected(
            json!({"redis": {}}),
            "set managed (the operator runs Redis) or external",
        );
        assert_rejected(
            json!({"redis": {"external": {"url": "r:6379"}}}),
            "does not match",
        );
    }

    #[test]
    fn external_redis_is_one_url_or_one_sentinel_group() {
        assert_rejected(
            json!({"redis": {"external": {"url": "redis://r:6379", "sentinel": {"masterName": "m", "sentinels": ["s:26379"]}}}}),
            "set url (one Redis) or sentinel",
        );
        assert_rejected(
            json!({"redis": {"external": {}}}),
            "set url (one Redis) or sentinel",
        );
        assert_rejected(
            json!({"redis": {"external": {"url": "redis://r:6379", "sentinelPasswordSecretRef": {"name": "s", "key": "k"}}}}),
            "sentinelPasswordSecretRef needs redis.external.sentinel",
        );
        assert_rejected(
            json!({"redis": {"external": {"sentinel": {"masterName": "m", "sentinels": []}}}}),
            "sentinels",
        );
        assert_rejected(
            json!({"redis": {"managed": {}, "replication": {"waitReplicas": 1}}}),
            "the managed Redis has no replicas to wait for",
        );
        assert_rejected(
            json!({"redis": {"external": {"sentinel": {"masterName": "m", "sentinels": ["s:26379"]}}, "replication": {"waitReplicas": 1, "waitTimeoutMs": 0}}}),
            "waitTimeoutMs",
        );
    }

    #[test]
    fn tls_listener_needs_a_secret() {
        assert_rejected(
            json!({"listeners": {"tls": {"port": 8883}}}),
            ".secretName: Required value",
        );
        assert_rejected(
            json!({"listeners": {"tls": {"secretName": ""}}}),
            "shorter than 1",
        );
    }

    #[test]
    fn listeners_must_exist_and_not_clash() {
        assert_rejected(
            json!({"listeners": {"mqtt": {"enabled": false}}}),
            "enable at least one listener",
        );
        assert_rejected(
            json!({"listeners": {"tls": {"secretName": "c", "port": 1883}}}),
            "listeners.tls.port must differ from listeners.mqtt.port",
        );
        assert_rejected(
            json!({"listeners": {"websocket": {"port": 1883}}}),
            "listeners.websocket.port must differ from listeners.mqtt.port",
        );
        assert_rejected(
            json!({"listeners": {"websocket": {"port": 8883}, "tls": {"secretName": "c"}}}),
            "listeners.websocket.port must differ from listeners.tls.port",
        );
        // A disabled plain listener's port may be reused.
        assert_eq!(
            problems(
                json!({"listeners": {"mqtt": {"enabled": false}, "tls": {"secretName": "c", "port": 1883}}})
            ),
            Vec::<String>::new()
        );
    }

    #[test]
    fn gossip_and_admin_ports_must_not_clash() {
        assert_rejected(
            json!({"gossip": {"port": 1883}}),
            "gossip.port must differ from broker.adminPort and from every listener port",
        );
        assert_rejected(
            json!({"gossip": {"port": 9090}}),
            "gossip.port must differ from broker.adminPort",
        );
        assert_rejected(
            json!({"broker": {"adminPort": 8883}, "listeners": {"tls": {"secretName": "c"}}}),
            "broker.adminPort must differ from every listener port",
        );
        assert_eq!(
            problems(
                json!({"gossip": {"port": 1883}, "listeners": {"mqtt": {"enabled": false}, "websocket": {}}})
            ),
            Vec::<String>::new()
        );
    }

    #[test]
    fn closed_broker_needs_users() {
        assert_rejected(
            json!({"auth": {"allowAnonymous": false}}),
            "allowAnonymous is false but usersSecretRef is not set",
        );
        assert_eq!(
            problems(
                json!({"auth": {"allowAnonymous": false, "usersSecretRef": {"name": "u", "key": "passwd"}}})
            ),
            Vec::<String>::new()
        );
    }

    #[test]
    fn enums_and_ranges_are_enforced() {
        assert_rejected(
            json!({"service": {"type": "ExternalName"}}),
            "is not one of",
        );
        assert_rejected(
            json!({"image": {"pullPolicy": "Sometimes"}}),
            "is not one of",
        );
        assert_rejected(
            json!({"broker": {"maxPacketSize": 10}}),
            "below the minimum 64",
        );
        assert_rejected(
            json!({"gossip": {"port": 70000}}),
            "above the maximum 65535",
        );
        assert_rejected(json!({"replicaz": 3}), ".spec.replicaz: unknown field");
    }

    /// kube-apiserver accepts any integer its schema allows; one the operator's Rust type cannot
    /// hold would make every list of clusters fail to deserialize.
    #[test]
    fn unsigned_settings_are_bounded_by_their_rust_types() {
        for field in [
            "maxSessionExpirySecs",
            "maxMessageExpirySecs",
            "maxQueuedMessages",
            "maxConnections",
        ] {
            assert_rejected(
                json!({"broker": {field: u64::from(u32::MAX) + 1}}),
                "above the maximum 4294967295",
            );
            let spec = json!({"broker": {field: u32::MAX}});
            assert_eq!(problems(spec.clone()), Vec::<String>::new(), "{field}");
            let parsed: MqttClusterSpec =
                serde_json::from_value(defaults(&object(spec))["spec"].clone())
                    .expect("the largest allowed value deserializes");
            assert_eq!(
                serde_json::to_value(&parsed.broker).expect("JSON")[field],
                json!(u32::MAX)
            );
        }
        assert_rejected(
            json!({"broker": {"maxInflight": 65536}}),
            "above the maximum 65535",
        );
        assert_rejected(
            json!({"broker": {"drainTimeoutSecs": 3601}}),
            "above the maximum 3600",
        );
    }

    /// Fields the schema marks nullable accept an explicit null (the API server keeps it), so
    /// such an object still deserializes.
    #[test]
    fn explicit_nulls_are_readable() {
        let spec = json!({
            "podDisruptionBudget": {"maxUnavailable": null},
            "redis": {"managed": {"persistence": {"size": null}}},
            "listeners": {"tls": null},
            "image": {"tag": null},
        });
        assert_eq!(
            structural_errors(&object(spec.clone())),
            Vec::<String>::new()
        );
        let parsed: MqttClusterSpec = serde_json::from_value(spec).expect("nulls deserialize");
        assert_eq!(parsed.pod_disruption_budget.max_unavailable, None);
        assert_eq!(parsed.listeners.tls, None);
    }

    #[test]
    fn image_reference_takes_tags_and_digests() {
        let mut image = ImageSpec::default();
        assert_eq!(
            image.reference(),
            format!("{DEFAULT_IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
        );
        image.tag = Some("1.4.2".into());
        assert_eq!(
            image.reference(),
            format!("{DEFAULT_IMAGE_REPOSITORY}:1.4.2")
        );
        image.tag = Some("sha256:0123abcd".into());
        assert_eq!(
            image.reference(),
            format!("{DEFAULT_IMAGE_REPOSITORY}@sha256:0123abcd")
        );
    }

    #[test]
    fn max_unavailable_takes_numbers_and_percentages() {
        for v in [json!(2), json!("50%")] {
            assert_eq!(
                problems(json!({"podDisruptionBudget": {"maxUnavailable": v}})),
                Vec::<String>::new()
            );
        }
    }
}
