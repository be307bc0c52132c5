//! `spec.redis`: the Redis store the nodes share, run by the operator (`managed`) or by the user
//! (`external`: one URL or a Sentinel group), and the replication wait.

use super::{unsigned_as_kubernetes_integers, SecretKeyRef};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The shared Redis store: exactly one of `managed` or `external`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(has(self.managed) && has(self.external))")
        .message("redis: set either managed or external, not both"),
    validation = Rule::new("has(self.managed) || has(self.external)")
        .message("redis: set managed (the operator runs Redis) or external (url of your own Redis)"),
    validation = Rule::new("!has(self.managed) || has(self.managed.sentinel) || !has(self.replication) || self.replication.waitReplicas == 0")
        .message("redis.replication: a single managed Redis has no replicas to wait for; set waitReplicas to 0, turn on redis.managed.sentinel or use an external Redis with replicas"),
    validation = Rule::new("!has(self.managed) || !has(self.managed.sentinel) || !has(self.replication) || self.replication.waitReplicas < (has(self.managed.sentinel.replicas) ? self.managed.sentinel.replicas : 3)")
        .message("redis.replication.waitReplicas: the managed Redis has redis.managed.sentinel.replicas - 1 replicas; wait for fewer (1 is usual)")
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

/// Redis run by the operator, with a generated password: one pod (a Deployment and a
/// Service), or with `sentinel` a primary and replicas that Redis Sentinel fails over.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    // A StatefulSet's volume claims are fixed: the API server would refuse the Redis
    // StatefulSet's update, and everything applied after it would stay behind.
    validation = Rule::new("!has(oldSelf.sentinel) || !has(self.sentinel) || (has(self.persistence) ? (has(oldSelf.persistence) && self.persistence == oldSelf.persistence) : !has(oldSelf.persistence))")
        .message("redis.managed.persistence cannot change while sentinel runs the Redis pods (a StatefulSet's volume claims are fixed): set it back; a new persistence needs a new cluster")
)]
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
    /// Run Redis highly available: a StatefulSet of Redis pods (one primary, the others its
    /// replicas), each with a Redis Sentinel beside it that promotes a replica when the primary
    /// fails. The brokers ask the sentinels for the primary and follow a failover without
    /// restarting. Unset: one Redis pod, whose restart loses what it held unless `persistence`
    /// is on, and stops the brokers while it is away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<ManagedSentinel>,
}

/// The managed Redis run highly available by Sentinel.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = unsigned_as_kubernetes_integers)]
#[x_kube(
    validation = Rule::new("!has(self.replicas) || self.replicas % 2 == 1")
        .message("redis.managed.sentinel.replicas must be odd (3, 5 or 7): the sentinels beside the Redis pods decide a failover by majority")
)]
pub struct ManagedSentinel {
    /// Redis pods, each with a sentinel: one primary, the others replicas. Odd, so that the
    /// sentinels always have a majority; a failover needs more than half of them.
    #[serde(default = "default_sentinel_replicas")]
    #[schemars(range(min = 3, max = 7))]
    pub replicas: u32,
    /// How long the primary must be unreachable before the sentinels fail over (ms). Lower
    /// fails over sooner; too low fails over on a slow network or a busy primary.
    #[serde(default = "default_down_after_milliseconds")]
    #[schemars(range(min = 1000, max = 60000))]
    pub down_after_milliseconds: u32,
}

/// Default number of managed Redis pods with Sentinel.
pub const DEFAULT_SENTINEL_REPLICAS: u32 = 3;
/// Default time before the sentinels fail over an unreachable primary (ms).
pub const DEFAULT_DOWN_AFTER_MILLISECONDS: u32 = 5000;

fn default_sentinel_replicas() -> u32 {
    DEFAULT_SENTINEL_REPLICAS
}

fn default_down_after_milliseconds() -> u32 {
    DEFAULT_DOWN_AFTER_MILLISECONDS
}

impl Default for ManagedSentinel {
    fn default() -> Self {
        ManagedSentinel {
            replicas: DEFAULT_SENTINEL_REPLICAS,
            down_after_milliseconds: DEFAULT_DOWN_AFTER_MILLISECONDS,
        }
    }
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
            sentinel: None,
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
        .message("redis.external.sentinelPasswordSecretRef needs redis.external.sentinel"),
    validation = Rule::new("has(self.sentinel) || !(has(self.username) || has(self.sentinelUsername))")
        .message("redis.external.username and sentinelUsername are for sentinel; with url, put the user in the URL (rediss://user@host:6379)"),
    validation = Rule::new("!(has(self.caSecretRef) || has(self.clientCertSecretName)) || (has(self.url) && self.url.startsWith('rediss://')) || (has(self.sentinel) && has(self.sentinel.tls) && self.sentinel.tls)")
        .message("redis.external.caSecretRef and clientCertSecretName are for TLS: use a rediss:// url or sentinel.tls: true")
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
    /// ACL user on the data nodes of a Redis run by Sentinel (unset: `default`). With `url`,
    /// the user goes in the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub username: Option<String>,
    /// ACL user on the sentinels (unset: `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub sentinel_username: Option<String>,
    /// Secret key holding the CA certificates (PEM) that Redis' certificate must chain to,
    /// instead of the system's roots (a Redis with a private CA). TLS only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) whose certificate the brokers
    /// present to a Redis that asks clients for one (`tls-auth-clients yes`). TLS only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub client_cert_secret_name: Option<String>,
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
    /// TLS to the sentinels and the data nodes, verified against the system's roots or
    /// `caSecretRef`.
    #[serde(default)]
    pub tls: bool,
}
