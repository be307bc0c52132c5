//! The managed Redis (Deployment, Service, password Secret and optional PersistentVolumeClaim)
//! and how broker pods reach whichever Redis the spec names.

use super::{Cluster, COMPONENT_REDIS};
use crate::crd::{ManagedRedis, RedisMode, SecretKeyRef, DEFAULT_REDIS_SIZE};
use crate::Error;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, Secret, SecretKeySelector,
    SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use starling_config::RedisSentinelConfig;
use std::collections::BTreeMap;

/// Redis port of the managed Redis.
pub const REDIS_PORT: i32 = 6379;
/// Key of the password in the managed Redis' Secret.
pub const PASSWORD_KEY: &str = "password";
/// Environment variable holding the Redis password in broker and Redis pods. It has no
/// `STARLING_` prefix, so the broker's configuration loader ignores it; the Redis URL refers to
/// it as `$(REDIS_PASSWORD)`, which Kubernetes expands.
pub const PASSWORD_ENV: &str = "REDIS_PASSWORD";
/// User id of the Redis process in the official image.
const REDIS_UID: i64 = 999;
/// Share of the Redis container's memory limit given to Redis as `maxmemory`, in percent. The
/// rest is for what `maxmemory` does not count: allocator fragmentation, client buffers and the
/// copy-on-write pages of a background save or append-only file rewrite.
pub const MAXMEMORY_PERCENT: u64 = 80;

/// Where broker pods read the password of a Redis run by Sentinel (its data nodes).
pub const SENTINEL_DATA_PASSWORD_FILE: &str = "/etc/starling/redis/password";
/// Where broker pods read the sentinels' own password.
pub const SENTINEL_PASSWORD_FILE: &str = "/etc/starling/redis-sentinel/password";

/// How broker pods reach a Redis at one URL: the URL (possibly referring to
/// `$(REDIS_PASSWORD)`) and where the password comes from. A Redis run by Sentinel is named in
/// the configuration file instead (see [`sentinel`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConnection {
    /// Value of the broker's Redis URL setting.
    pub url: String,
    /// The Secret key to load into `REDIS_PASSWORD`, when there is a password.
    pub password: Option<SecretKeySelector>,
}

fn secret_key(name: String, key: &str) -> SecretKeySelector {
    SecretKeySelector {
        name,
        key: key.to_string(),
        optional: Some(false),
    }
}

/// Where the broker pods find a Redis at one URL; `None` for a Redis run by Sentinel.
pub fn connection(cluster: &Cluster<'_>) -> Result<Option<RedisConnection>, Error> {
    let placeholder = format!("$({PASSWORD_ENV})");
    let external_url = match cluster.spec().redis.mode() {
        Some(RedisMode::External(external)) => match (&external.url, &external.sentinel) {
            (Some(url), None) => Some(url),
            (None, Some(_)) => return Ok(None),
            _ => {
                return Err(Error::InvalidSpec(
                    "redis.external: set exactly one of url or sentinel".to_string(),
                ))
            }
        },
        _ => None,
    };
    match cluster.spec().redis.mode() {
        Some(RedisMode::Managed(_)) => Ok(Some(RedisConnection {
            url: format!(
                "redis://:{placeholder}@{}.{}.svc:{REDIS_PORT}/0",
                cluster.redis_name(),
                cluster.namespace
            ),
            password: Some(secret_key(cluster.redis_name(), PASSWORD_KEY)),
        })),
        Some(RedisMode::External(external)) => {
            let url = external_url.map(String::as_str).unwrap_or_default();
            Ok(Some(match &external.password_secret_ref {
                Some(r) => RedisConnection {
                    url: url_with_password(url, &placeholder)?,
                    password: Some(secret_key(r.name.clone(), &r.key)),
                },
                None => RedisConnection {
                    url: url.to_string(),
                    password: None,
                },
            }))
        }
        None => Err(Error::InvalidSpec(
            "redis: set exactly one of managed or external".to_string(),
        )),
    }
}

/// The broker's `cluster.redis_sentinel` for an external Redis run by Sentinel (its passwords
/// as files that [`super::statefulset`] mounts from their Secrets); `None` otherwise.
pub fn sentinel(cluster: &Cluster<'_>) -> Option<RedisSentinelConfig> {
    let Some(RedisMode::External(external)) = cluster.spec().redis.mode() else {
        return None;
    };
    let sentinel = external.sentinel.as_ref()?;
    Some(RedisSentinelConfig {
        master_name: sentinel.master_name.clone(),
        sentinels: sentinel.sentinels.clone(),
        tls: sentinel.tls,
        password_file: external
            .password_secret_ref
            .as_ref()
            .map(|_| SENTINEL_DATA_PASSWORD_FILE.into()),
        sentinel_password_file: external
            .sentinel_password_secret_ref
            .as_ref()
            .map(|_| SENTINEL_PASSWORD_FILE.into()),
        ..RedisSentinelConfig::default()
    })
}

/// The Secrets a Redis run by Sentinel needs mounted in broker pods, as (Secret key, file).
pub fn sentinel_password_files<'a>(cluster: &Cluster<'a>) -> Vec<(&'a SecretKeyRef, &'static str)> {
    let Some(RedisMode::External(external)) = cluster.spec().redis.mode() else {
        return Vec::new();
    };
    if external.sentinel.is_none() {
        return Vec::new();
    }
    let mut files = Vec::new();
    if let Some(r) = &external.password_secret_ref {
        files.push((r, SENTINEL_DATA_PASSWORD_FILE));
    }
    if let Some(r) = &external.sentinel_password_secret_ref {
        files.push((r, SENTINEL_PASSWORD_FILE));
    }
    files
}

/// Inserts `password` into a Redis URL's user info: `redis://host` becomes
/// `redis://:password@host`, `redis://user@host` becomes `redis://user:password@host`.
/// A URL that already carries a password is refused: the Secret would silently lose.
pub fn url_with_password(url: &str, password: &str) -> Result<String, Error> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error::InvalidSpec(format!("redis url {url:?} has no scheme")))?;
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, _)) if userinfo.contains(':') => Err(Error::InvalidSpec(format!(
            "redis url {url:?} already contains a password; remove it or drop passwordSecretRef"
        ))),
        Some((user, host)) => Ok(format!("{scheme}://{user}:{password}@{host}{tail}")),
        None => Ok(format!("{scheme}://:{password}@{authority}{tail}")),
    }
}

/// The managed Redis' settings, when the spec asks for one.
fn managed<'a>(cluster: &Cluster<'a>) -> Option<&'a ManagedRedis> {
    match cluster.spec().redis.mode() {
        Some(RedisMode::Managed(m)) => Some(m),
        _ => None,
    }
}

/// The Secret with the managed Redis' password. The operator creates it once with a random
/// password and never rewrites it, so the password survives operator restarts.
pub fn password_secret(cluster: &Cluster<'_>, password: &str) -> Secret {
    super::generated_secret(
        cluster,
        cluster.redis_name(),
        COMPONENT_REDIS,
        PASSWORD_KEY,
        password,
    )
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

/// The managed Redis' Deployment, or `None` for an external Redis.
pub fn deployment(cluster: &Cluster<'_>) -> Option<Deployment> {
    let redis = managed(cluster)?;
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
    let mut args = vec![
        "--requirepass".to_string(),
        format!("$({PASSWORD_ENV})"),
        "--dir".to_string(),
        "/data".to_string(),
    ];
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
        env: Some(vec![EnvVar {
            name: PASSWORD_ENV.to_string(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(secret_key(cluster.redis_name(), PASSWORD_KEY)),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        resources: redis.resources.clone(),
        readiness_probe: Some(probe(5, 3)),
        liveness_probe: Some(probe(10, 6)),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".to_string(),
            mount_path: "/data".to_string(),
            ..VolumeMount::default()
        }]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
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
                    volumes: Some(vec![data_volume]),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(REDIS_UID),
                        run_as_group: Some(REDIS_UID),
                        fs_group: Some(REDIS_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_string(),
                            localhost_profile: None,
                        }),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    })
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

/// The managed Redis' Service, or `None` for an external Redis.
pub fn service(cluster: &Cluster<'_>) -> Option<Service> {
    managed(cluster)?;
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

/// The managed Redis' volume claim, when persistence is on.
pub fn persistent_volume_claim(cluster: &Cluster<'_>) -> Option<PersistentVolumeClaim> {
    let persistence = managed(cluster)?.persistence.as_ref()?;
    Some(PersistentVolumeClaim {
        metadata: cluster.child_meta(cluster.redis_pvc_name(), COMPONENT_REDIS),
        spec: Some(PersistentVolumeClaimSpec {
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
        }),
        ..PersistentVolumeClaim::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_support::{assert_child, cluster_from_yaml};

    #[test]
    fn managed_redis_is_reached_through_its_service_with_the_generated_password() {
        let object = cluster_from_yaml("{}");
        let c = Cluster::new(&object).expect("cluster");
        let conn = connection(&c)
            .expect("connection")
            .expect("a Redis at one URL");
        assert_eq!(
            conn.url,
            "redis://:$(REDIS_PASSWORD)@demo-redis.iot.svc:6379/0"
        );
        let password = conn.password.expect("password");
        assert_eq!(password.name, "demo-redis");
        assert_eq!(password.key, "password");
    }

    #[test]
    fn external_redis_gets_the_password_from_its_secret() {
        let object = cluster_from_yaml(
            "redis: {external: {url: 'rediss://cache.example:6380/2', passwordSecretRef: {name: r, key: pw}}}",
        );
        let c = Cluster::new(&object).expect("cluster");
        let conn = connection(&c)
            .expect("connection")
            .expect("a Redis at one URL");
        assert_eq!(conn.url, "rediss://:$(REDIS_PASSWORD)@cache.example:6380/2");
        let password = conn.password.expect("password");
        assert_eq!((password.name.as_str(), password.key.as_str()), ("r", "pw"));
        // No managed Redis objects for an external Redis.
        assert!(deployment(&c).is_none());
        assert!(service(&c).is_none());
        assert!(persistent_volume_claim(&c).is_none());
    }

    #[test]
    fn external_redis_without_password_keeps_its_url() {
        let object = cluster_from_yaml("redis: {external: {url: 'redis://cache:6379'}}");
        let c = Cluster::new(&object).expect("cluster");
        let conn = connection(&c)
            .expect("connection")
            .expect("a Redis at one URL");
        assert_eq!(conn.url, "redis://cache:6379");
        assert_eq!(conn.password, None);
    }

    #[test]
    fn external_sentinel_is_named_in_the_config_with_its_passwords_as_mounted_files() {
        let object = cluster_from_yaml(
            "redis: {external: {sentinel: {masterName: mymaster, sentinels: ['s-0.s:26379', 's-1.s:26379']}, \
             passwordSecretRef: {name: r, key: pw}, sentinelPasswordSecretRef: {name: s, key: spw}}}",
        );
        let c = Cluster::new(&object).expect("cluster");
        assert_eq!(connection(&c).expect("valid"), None, "no URL with Sentinel");
        let config = sentinel(&c).expect("a sentinel configuration");
        assert_eq!(config.master_name, "mymaster");
        assert_eq!(config.sentinels, ["s-0.s:26379", "s-1.s:26379"]);
        assert_eq!(
            config.password_file.as_deref(),
            Some(std::path::Path::new(SENTINEL_DATA_PASSWORD_FILE))
        );
        assert_eq!(
            config.sentinel_password_file.as_deref(),
            Some(std::path::Path::new(SENTINEL_PASSWORD_FILE))
        );
        let files: Vec<(&str, &str, &str)> = sentinel_password_files(&c)
            .into_iter()
            .map(|(r, path)| (r.name.as_str(), r.key.as_str(), path))
            .collect();
        assert_eq!(
            files,
            [
                ("r", "pw", SENTINEL_DATA_PASSWORD_FILE),
                ("s", "spw", SENTINEL_PASSWORD_FILE)
            ]
        );
        assert!(deployment(&c).is_none());
    }

    #[test]
    fn external_with_both_url_and_sentinel_is_an_error() {
        let object = cluster_from_yaml(
            "redis: {external: {url: 'redis://cache:6379', sentinel: {masterName: m, sentinels: ['s:26379']}}}",
        );
        let c = Cluster::new(&object).expect("cluster");
        assert!(matches!(connection(&c), Err(Error::InvalidSpec(_))));
    }

    #[test]
    fn both_or_neither_redis_is_an_error() {
        for yaml in [
            "redis: {}",
            "redis: {managed: {}, external: {url: 'redis://x'}}",
        ] {
            let object = cluster_from_yaml(yaml);
            let c = Cluster::new(&object).expect("cluster");
            let err = connection(&c).unwrap_err();
            assert!(err.to_string().contains("exactly one"), "{yaml}: {err}");
        }
    }

    #[test]
    fn password_goes_into_the_user_info() {
        let p = "$(P)";
        assert_eq!(
            url_with_password("redis://h:1", p).unwrap(),
            "redis://:$(P)@h:1"
        );
        assert_eq!(
            url_with_password("redis://app@h:1/3", p).unwrap(),
            "redis://app:$(P)@h:1/3"
        );
        assert_eq!(
            url_with_password("redis://h?db=2", p).unwrap(),
            "redis://:$(P)@h?db=2"
        );
        assert!(url_with_password("redis://app:secret@h", p).is_err());
        assert!(url_with_password("h:6379", p).is_err());
    }

    #[test]
    fn generated_passwords_are_url_safe_and_differ() {
        let a = generate_password().expect("password");
        let b = generate_password().expect("password");
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn password_secret_holds_the_password() {
        let object = cluster_from_yaml("{}");
        let c = Cluster::new(&object).expect("cluster");
        let secret = password_secret(&c, "s3cret");
        assert_child(&secret.metadata, "demo-redis", "redis");
        assert_eq!(secret.string_data.expect("data")["password"], "s3cret");
    }

    #[test]
    fn managed_redis_without_persistence_uses_an_empty_dir() {
        let object = cluster_from_yaml("{}");
        let c = Cluster::new(&object).expect("cluster");
        let d = deployment(&c).expect("deployment");
        assert_child(&d.metadata, "demo-redis", "redis");
        let spec = d.spec;
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(
            spec.selector.match_labels,
            Some(c.selector_labels(COMPONENT_REDIS))
        );
        let pod = spec.template.spec.expect("pod");
        let volume = &pod.volumes.expect("volumes")[0];
        assert!(volume.empty_dir.is_some());
        assert!(volume.persistent_volume_claim.is_none());
        let container = &pod.containers[0];
        assert_eq!(container.image.as_deref(), Some("redis:7.4-alpine"));
        let args = container.args.clone().expect("args");
        assert!(args
            .windows(2)
            .any(|w| w == ["--requirepass", "$(REDIS_PASSWORD)"]));
        assert!(args.windows(2).any(|w| w == ["--appendonly", "no"]));
        let env = &container.env.as_ref().expect("env")[0];
        assert_eq!(env.name, "REDIS_PASSWORD");
        let from = env
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("from secret");
        assert_eq!(
            (from.name.as_str(), from.key.as_str()),
            ("demo-redis", "password")
        );
        assert!(persistent_volume_claim(&c).is_none());

        let svc = service(&c).expect("service");
        assert_child(&svc.metadata, "demo-redis", "redis");
        let svc_spec = svc.spec.expect("spec");
        assert_eq!(svc_spec.selector, Some(c.selector_labels(COMPONENT_REDIS)));
        assert_eq!(svc_spec.ports.expect("ports")[0].port, 6379);
    }

    #[test]
    fn managed_redis_never_evicts_and_keeps_below_its_memory_limit() {
        let args_of = |yaml: &str| {
            let object = cluster_from_yaml(yaml);
            let c = Cluster::new(&object).expect("cluster");
            let d = deployment(&c).expect("deployment");
            let pod = d.spec.template.spec.expect("pod");
            pod.containers[0].args.clone().expect("args")
        };
        let value_of = |args: &[String], flag: &str| {
            args.windows(2).find(|w| w[0] == flag).map(|w| w[1].clone())
        };

        // No memory limit: no maxmemory, but never evicting all the same.
        let args = args_of("{}");
        assert_eq!(
            value_of(&args, "--maxmemory-policy").as_deref(),
            Some("noeviction")
        );
        assert_eq!(value_of(&args, "--maxmemory"), None);

        // 512Mi limit: 80% of it.
        let args = args_of(
            "redis: {managed: {resources: {requests: {memory: 256Mi}, limits: {memory: 512Mi, cpu: '1'}}}}",
        );
        assert_eq!(
            value_of(&args, "--maxmemory-policy").as_deref(),
            Some("noeviction")
        );
        assert_eq!(
            value_of(&args, "--maxmemory").as_deref(),
            Some(((512u64 << 20) * 8 / 10).to_string().as_str())
        );

        // A zero limit is no limit to size from.
        let args = args_of("redis: {managed: {resources: {limits: {memory: '0'}}}}");
        assert_eq!(value_of(&args, "--maxmemory"), None);

        // Only a request: no maxmemory.
        let args = args_of("redis: {managed: {resources: {requests: {memory: 256Mi}}}}");
        assert_eq!(value_of(&args, "--maxmemory"), None);
        assert_eq!(
            value_of(&args, "--maxmemory-policy").as_deref(),
            Some("noeviction")
        );
    }

    #[test]
    fn quantities_read_as_bytes() {
        for (quantity, bytes) in [
            ("128974848", Some(128_974_848)),
            ("129e6", Some(129_000_000)),
            ("129E6", Some(129_000_000)),
            ("129M", Some(129_000_000)),
            ("123Mi", Some(123 * 1024 * 1024)),
            ("1.5Gi", Some(1536 * 1024 * 1024)),
            ("1Gi", Some(1 << 30)),
            ("2k", Some(2000)),
            ("1Ki", Some(1024)),
            ("128974848000m", Some(128_974_848)),
            ("1289748480e-1", Some(128_974_848)),
            ("+1Ki", Some(1024)),
            ("0", Some(0)),
            ("", None),
            ("Mi", None),
            ("-1Gi", None),
            ("1.2.3", None),
            ("12Qi", None),
            ("1e", None),
            ("1e999", None),
        ] {
            assert_eq!(quantity_bytes(quantity), bytes, "{quantity:?}");
        }
        assert_eq!(maxmemory_for_limit(1000), 800);
        assert_eq!(
            maxmemory_for_limit(1),
            1,
            "never 0, which means no limit to Redis"
        );
        assert_eq!(maxmemory_for_limit(u64::MAX), 14_757_395_258_967_641_292);
    }

    #[test]
    fn persistence_adds_a_claim_and_mounts_it() {
        let object = cluster_from_yaml(
            "redis: {managed: {image: 'valkey/valkey:8', persistence: {storageClassName: fast, size: 5Gi}}}",
        );
        let c = Cluster::new(&object).expect("cluster");
        let pvc = persistent_volume_claim(&c).expect("claim");
        assert_child(&pvc.metadata, "demo-redis-data", "redis");
        let spec = pvc.spec.expect("spec");
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            spec.resources
                .expect("resources")
                .requests
                .expect("requests")["storage"]
                .0,
            "5Gi"
        );
        let d = deployment(&c).expect("deployment");
        let pod = d.spec.template.spec.expect("pod");
        let volume = &pod.volumes.expect("volumes")[0];
        assert_eq!(
            volume
                .persistent_volume_claim
                .as_ref()
                .map(|p| p.claim_name.as_str()),
            Some("demo-redis-data")
        );
        assert_eq!(pod.containers[0].image.as_deref(), Some("valkey/valkey:8"));
        let args = pod.containers[0].args.clone().expect("args");
        assert!(args.windows(2).any(|w| w == ["--appendonly", "yes"]));
    }

    #[test]
    fn default_persistence_size_is_one_gibibyte() {
        let object = cluster_from_yaml("redis: {managed: {persistence: {}}}");
        let c = Cluster::new(&object).expect("cluster");
        let pvc = persistent_volume_claim(&c).expect("claim");
        let requests = pvc
            .spec
            .expect("spec")
            .resources
            .expect("r")
            .requests
            .expect("q");
        assert_eq!(requests["storage"].0, "1Gi");

        let object = cluster_from_yaml("redis: {managed: {persistence: {size: null}}}");
        let c = Cluster::new(&object).expect("cluster");
        let pvc = persistent_volume_claim(&c).expect("claim");
        let requests = pvc
            .spec
            .expect("spec")
            .resources
            .expect("r")
            .requests
            .expect("q");
        assert_eq!(requests["storage"].0, "1Gi", "null means the default");
    }
}
