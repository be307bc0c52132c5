//! The managed Redis (Deployment, Service, password Secret and optional PersistentVolumeClaim)
//! and how broker pods reach whichever Redis the spec names (`connection`).

use super::{Cluster, COMPONENT_REDIS};
use crate::crd::{ManagedRedis, RedisMode, RedisPersistence, DEFAULT_REDIS_SIZE};
use crate::Error;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, KeyToPath, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, Secret, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
mod auth_config;
mod connection;
pub mod sentinel;

pub use self::auth_config::{
    config_for, missing_config, AuthConfigError, CONFIG_DIR, CONFIG_KEY, CONFIG_PATH,
};
pub use self::connection::{
    connection, sentinel, sentinel_password_files, url_with_password, RedisConnection,
    SENTINEL_DATA_PASSWORD_FILE, SENTINEL_PASSWORD_FILE,
};

/// Redis port of the managed Redis.
pub const REDIS_PORT: i32 = 6379;
/// Key of the password in the managed Redis' Secret.
pub const PASSWORD_KEY: &str = "password";
/// Environment variable holding the Redis password in broker pods (the managed Redis reads it
/// from its configuration file, see `redis/auth_config.rs`). It has no
/// `STARLING_` prefix, so the broker's configuration loader ignores it; the Redis URL refers to
/// it as `$(REDIS_PASSWORD)`, which Kubernetes expands.
pub const PASSWORD_ENV: &str = "REDIS_PASSWORD";
/// User id of the Redis process in the official image.
const REDIS_UID: i64 = 999;
/// Share of the Redis container's memory limit given to Redis as `maxmemory`, in percent. The
/// rest is for what `maxmemory` does not count: allocator fragmentation, client buffers and the
/// copy-on-write pages of a background save or append-only file rewrite.
pub const MAXMEMORY_PERCENT: u64 = 80;
fn secret_key(name: String, key: &str) -> SecretKeySelector {
    SecretKeySelector {
        name,
        key: key.to_string(),
        optional: Some(false),
    }
}
/// The managed Redis' settings, when the spec asks for one.
fn managed<'a>(cluster: &Cluster<'a>) -> Option<&'a ManagedRedis> {
    match cluster.spec().redis.mode() {
        Some(RedisMode::Managed(m)) => Some(m),
        _ => None,
    }
}

/// The managed Redis' settings, when the spec asks for one pod (no Sentinel).
fn single<'a>(cluster: &Cluster<'a>) -> Option<&'a ManagedRedis> {
    managed(cluster).filter(|m| m.sentinel.is_none())
}

/// The Secret with the managed Redis' password, and the same password as the Redis
/// configuration line its pod reads (see [`auth_config`]). The operator creates it once with a
/// random password and never rewrites the password, so it survives operator restarts.
pub fn password_secret(cluster: &Cluster<'_>, password: &str) -> Secret {
    Secret {
        metadata: cluster.child_meta(cluster.redis_name(), COMPONENT_REDIS),
        type_: Some("Opaque".to_string()),
        string_data: Some(auth_config::secret_data(PASSWORD_KEY, password)),
        ..Secret::default()
    }
}

/// A random secret of 32 letters and digits (about 190 bits), safe inside a URL: the managed
/// Redis' password, the brokers' admin API token.
pub fn generate_password() -> Result<String, Error> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const LEN: usize = 32;
    let mut out = String::with_capacity(LEN);
    while out.len() < LEN {
        let mut bytes = [0u8; LEN];
        getrandom::fill(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
        // 248 = 4 * 62: dropping larger bytes keeps every character equally likely.
        for b in bytes.into_iter().filter(|&b| b < 248).take(LEN - out.len()) {
            out.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()]));
        }
    }
    Ok(out)
}

/// The managed Redis' Deployment, or `None` for an external Redis or one with Sentinel.
pub fn deployment(cluster: &Cluster<'_>) -> Option<Deployment> {
    let redis = single(cluster)?;
    let labels = cluster.labels(COMPONENT_REDIS);
    let data_volume = match &redis.persistence {
        Some(_) => Volume {
            name: "data".to_string(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: cluster.redis_pvc_name(),
                read_only: None,
            }),
            ..Volume::default()
        },
        None => Volume {
            name: "data".to_string(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    };
    // Only the configuration line, readable by Redis' group (the pod's fsGroup).
    let auth_volume = Volume {
        name: "auth".to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(cluster.redis_name()),
            items: Some(vec![KeyToPath {
                key: CONFIG_KEY.to_string(),
                path: CONFIG_KEY.to_string(),
                ..KeyToPath::default()
            }]),
            default_mode: Some(0o440),
            optional: Some(false),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    // The password comes from the configuration file, never the command line.
    let mut args = vec![
        CONFIG_PATH.to_string(),
        "--dir".to_string(),
        "/data".to_string(),
    ];
    args.extend(server_args(redis));
    let probe = |period: i32, failures: i32| Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String("redis".to_string()),
            host: None,
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    let container = Container {
        name: "redis".to_string(),
        image: Some(redis.image.clone()),
        command: Some(vec!["redis-server".to_string()]),
        args: Some(args),
        ports: Some(vec![ContainerPort {
            name: Some("redis".to_string()),
            container_port: REDIS_PORT,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        }]),
        resources: redis.resources.clone(),
        readiness_probe: Some(probe(5, 3)),
        liveness_probe: Some(probe(10, 6)),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "data".to_string(),
                mount_path: "/data".to_string(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "auth".to_string(),
                mount_path: CONFIG_DIR.to_string(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        security_context: Some(container_security()),
        ..Container::default()
    };
    Some(Deployment {
        metadata: cluster.child_meta(cluster.redis_name(), COMPONENT_REDIS),
        spec: DeploymentSpec {
            replicas: Some(1),
            selector: cluster.label_selector(COMPONENT_REDIS),
            // One pod with a ReadWriteOnce volume: the old pod must be gone first.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".to_string()),
                rolling_update: None,
            }),
            template: PodTemplateSpec {
                metadata: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(vec![data_volume, auth_volume]),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(pod_security()),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    })
}

/// `redis-server` arguments for the managed Redis' settings: its memory limit and eviction
/// policy, and its persistence.
fn server_args(redis: &ManagedRedis) -> Vec<String> {
    let mut args = Vec::new();
    // Never evict: an evicted session ownership key would silently hand a session to nobody.
    // A full Redis refuses writes instead, and the brokers report that.
    if let Some(bytes) = redis_memory_limit(redis).map(maxmemory_for_limit) {
        args.extend(["--maxmemory".to_string(), bytes.to_string()]);
    }
    args.extend(["--maxmemory-policy".to_string(), "noeviction".to_string()]);
    if redis.persistence.is_some() {
        args.extend(["--appendonly".to_string(), "yes".to_string()]);
    } else {
        args.extend([
            "--appendonly".to_string(),
            "no".to_string(),
            "--save".to_string(),
            String::new(),
        ]);
    }
    args
}

/// The security context of every managed Redis container: no privileges, read-only root.
fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// The security context of every managed Redis pod: Redis' own user, the default seccomp
/// profile.
fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(REDIS_UID),
        run_as_group: Some(REDIS_UID),
        fs_group: Some(REDIS_UID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

/// The memory limit of the managed Redis' container in bytes, if it has one that reads as a
/// quantity.
fn redis_memory_limit(redis: &ManagedRedis) -> Option<u64> {
    let limits = redis.resources.as_ref()?.limits.as_ref()?;
    quantity_bytes(&limits.get("memory")?.0).filter(|&bytes| bytes > 0)
}

/// Redis' `maxmemory` for a container memory limit of `limit` bytes: [`MAXMEMORY_PERCENT`] of
/// it, at least 1 (0 would mean no limit to Redis).
pub fn maxmemory_for_limit(limit: u64) -> u64 {
    (u128::from(limit) * u128::from(MAXMEMORY_PERCENT) / 100)
        .try_into()
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A Kubernetes quantity (`512Mi`, `1G`, `1.5Gi`, `128974848`, `129e6`, `123456789000m`) in
/// whole bytes, rounded down; `None` when it is not a non-negative quantity.
pub fn quantity_bytes(quantity: &str) -> Option<u64> {
    let quantity = quantity.trim();
    let number_end = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(number_end);
    let number = number.strip_prefix('+').unwrap_or(number);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    // Multiplied by a whole power, or divided by one for the fractional scales (1e-3 is not
    // exact in binary, 1e3 is).
    let scale = match suffix {
        "" => 1.0,
        "m" => return whole_bytes(value / 1e3),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent => {
            let digits = exponent
                .strip_prefix('e')
                .or_else(|| exponent.strip_prefix('E'))?;
            let power = 10f64.powi(digits.parse::<i32>().ok()?.abs());
            if digits.starts_with('-') {
                return whole_bytes(value / power);
            }
            power
        }
    };
    whole_bytes(value * scale)
}

/// `bytes` rounded down, if it is in range (a float cast would saturate silently).
fn whole_bytes(bytes: f64) -> Option<u64> {
    let bytes = bytes.floor();
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// The managed Redis' Service, or `None` for an external Redis or one with Sentinel (whose
/// brokers ask the sentinels for the primary).
pub fn service(cluster: &Cluster<'_>) -> Option<Service> {
    single(cluster)?;
    Some(Service {
        metadata: cluster.child_meta(cluster.redis_name(), COMPONENT_REDIS),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(cluster.selector_labels(COMPONENT_REDIS)),
            ports: Some(vec![ServicePort {
                name: Some("redis".to_string()),
                port: REDIS_PORT,
                target_port: Some(IntOrString::String("redis".to_string())),
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// The managed Redis' volume claim, when persistence is on and it is one pod (with Sentinel,
/// the StatefulSet claims a volume per pod).
pub fn persistent_volume_claim(cluster: &Cluster<'_>) -> Option<PersistentVolumeClaim> {
    let persistence = single(cluster)?.persistence.as_ref()?;
    Some(PersistentVolumeClaim {
        metadata: cluster.child_meta(cluster.redis_pvc_name(), COMPONENT_REDIS),
        spec: Some(claim_spec(persistence)),
        ..PersistentVolumeClaim::default()
    })
}

/// The claim of a managed Redis' volume: one node, the requested class and size.
fn claim_spec(persistence: &RedisPersistence) -> PersistentVolumeClaimSpec {
    PersistentVolumeClaimSpec {
        access_modes: Some(vec!["ReadWriteOnce".to_string()]),
        storage_class_name: persistence.storage_class_name.clone(),
        resources: Some(VolumeResourceRequirements {
            requests: Some(BTreeMap::from([(
                "storage".to_string(),
                persistence
                    .size
                    .clone()
                    .unwrap_or_else(|| Quantity(DEFAULT_REDIS_SIZE.to_string())),
            )])),
            limits: None,
        }),
        ..PersistentVolumeClaimSpec::default()
    }
}

#[cfg(test)]
mod tests;
