//! How broker pods reach whichever Redis the spec names: the managed one or an external one at
//! a URL (with the password from a Secret), or an external one run by Sentinel (named in the
//! configuration file, its passwords mounted as files).

use super::{secret_key, PASSWORD_ENV, PASSWORD_KEY, REDIS_PORT};
use crate::crd::{RedisMode, SecretKeyRef};
use crate::resources::Cluster;
use crate::Error;
use k8s_openapi::api::core::v1::SecretKeySelector;
use starling_config::RedisSentinelConfig;

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
/// Where the broker pods find a Redis at one URL; `None` for a Redis run by Sentinel (managed or
/// external).
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
        // The brokers ask the sentinels (see [`sentinel`]).
        Some(RedisMode::Managed(m)) if m.sentinel.is_some() => Ok(None),
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

/// The broker's `cluster.redis_sentinel` for a Redis run by Sentinel, managed or external (its
/// passwords as files that [`crate::resources::statefulset`] mounts from their Secrets); `None`
/// otherwise.
pub fn sentinel(cluster: &Cluster<'_>) -> Option<RedisSentinelConfig> {
    match cluster.spec().redis.mode()? {
        RedisMode::Managed(managed) => {
            managed.sentinel.as_ref()?;
            // The managed sentinels ask for the same password as the Redis pods.
            Some(RedisSentinelConfig {
                master_name: super::sentinel::master_name(cluster),
                sentinels: super::sentinel::sentinel_addresses(cluster),
                password_file: Some(SENTINEL_DATA_PASSWORD_FILE.into()),
                sentinel_password_file: Some(SENTINEL_PASSWORD_FILE.into()),
                ..RedisSentinelConfig::default()
            })
        }
        RedisMode::External(external) => {
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
                username: external.username.clone(),
                sentinel_username: external.sentinel_username.clone(),
                ..RedisSentinelConfig::default()
            })
        }
    }
}

/// The Secret keys a Redis run by Sentinel needs mounted in broker pods, as (Secret key, file).
pub fn sentinel_password_files(cluster: &Cluster<'_>) -> Vec<(SecretKeyRef, &'static str)> {
    match cluster.spec().redis.mode() {
        Some(RedisMode::Managed(managed)) if managed.sentinel.is_some() => {
            let password = SecretKeyRef {
                name: cluster.redis_name(),
                key: PASSWORD_KEY.to_string(),
            };
            vec![
                (password.clone(), SENTINEL_DATA_PASSWORD_FILE),
                (password, SENTINEL_PASSWORD_FILE),
            ]
        }
        Some(RedisMode::External(external)) if external.sentinel.is_some() => {
            let mut files = Vec::new();
            if let Some(r) = &external.password_secret_ref {
                files.push((r.clone(), SENTINEL_DATA_PASSWORD_FILE));
            }
            if let Some(r) = &external.sentinel_password_secret_ref {
                files.push((r.clone(), SENTINEL_PASSWORD_FILE));
            }
            files
        }
        _ => Vec::new(),
    }
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
