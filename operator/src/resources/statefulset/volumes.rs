//! The broker pods' volumes and mounts: the configuration, TLS certificate, client CA bundle,
//! password file, ACL file, gossip key, Sentinel passwords, an external Redis' CA bundle and
//! client certificate, and the admin token, each only when used.

use crate::resources::configmap::{
    ACL_FILE, ADMIN_TOKEN_FILE, CLIENT_CA_FILE, CONFIG_DIR, CONFIG_KEY, GOSSIP_KEY_FILE,
    PASSWORD_FILE, REDIS_CA_FILE, REDIS_CLIENT_CERT_DIR, TLS_DIR,
};
use crate::resources::{admin, gossip, redis, users, Cluster};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, EmptyDirVolumeSource, KeyToPath, SecretVolumeSource, Volume, VolumeMount,
};
use std::path::Path;

fn file_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string()
}

/// The two keys of a `kubernetes.io/tls` Secret, each as a file of its own name.
fn tls_pair() -> Option<Vec<KeyToPath>> {
    Some(
        ["tls.crt", "tls.key"]
            .into_iter()
            .map(|k| KeyToPath {
                key: k.to_string(),
                path: k.to_string(),
                ..KeyToPath::default()
            })
            .collect(),
    )
}

pub(super) fn parent(path: &str) -> String {
    Path::new(path)
        .parent()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string()
}

/// Volumes and mounts: the configuration, TLS certificate, password file, ACL file and gossip
/// key, each only when used.
pub(super) fn volumes(cluster: &Cluster<'_>) -> (Vec<Volume>, Vec<VolumeMount>) {
    let spec = cluster.spec();
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut mount = |name: &str, dir: String| {
        mounts.push(VolumeMount {
            name: name.to_string(),
            mount_path: dir,
            read_only: Some(true),
            ..VolumeMount::default()
        });
    };
    let one_key = |key: &str, path: &str| {
        Some(vec![KeyToPath {
            key: key.to_string(),
            path: file_name(path),
            ..KeyToPath::default()
        }])
    };

    volumes.push(Volume {
        name: "config".to_string(),
        config_map: Some(ConfigMapVolumeSource {
            name: cluster.config_map_name(),
            items: one_key(CONFIG_KEY, CONFIG_KEY),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    });
    mount("config", CONFIG_DIR.to_string());

    if let Some(tls) = &spec.listeners.tls {
        volumes.push(Volume {
            name: "tls".to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls.secret_name.clone()),
                items: tls_pair(),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mount("tls", TLS_DIR.to_string());
        if let Some(ca) = &tls.client_ca_secret_ref {
            volumes.push(Volume {
                name: "client-ca".to_string(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(ca.name.clone()),
                    items: one_key(&ca.key, CLIENT_CA_FILE),
                    default_mode: Some(0o440),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
            mount("client-ca", parent(CLIENT_CA_FILE));
        }
    }
    if let Some(users) = users::password_file_ref(cluster) {
        volumes.push(Volume {
            name: "users".to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(users.name.clone()),
                items: one_key(&users.key, PASSWORD_FILE),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mount("users", parent(PASSWORD_FILE));
    }
    if let Some(acl) = &spec.auth.acl_config_map_ref {
        volumes.push(Volume {
            name: "acl".to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: acl.name.clone(),
                items: one_key(&acl.key, ACL_FILE),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        mount("acl", parent(ACL_FILE));
    }
    if let Some(key) = gossip::key_ref(cluster) {
        volumes.push(Volume {
            name: gossip::VOLUME.to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(key.name.clone()),
                items: one_key(&key.key, GOSSIP_KEY_FILE),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mount(gossip::VOLUME, parent(GOSSIP_KEY_FILE));
    }
    for (i, (secret, path)) in redis::sentinel_password_files(cluster)
        .into_iter()
        .enumerate()
    {
        let name = format!("redis-password-{i}");
        volumes.push(Volume {
            name: name.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                items: one_key(&secret.key, path),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mount(&name, parent(path));
    }
    if let Some(external) = &spec.redis.external {
        if let Some(ca) = &external.ca_secret_ref {
            volumes.push(Volume {
                name: "redis-ca".to_string(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(ca.name.clone()),
                    items: one_key(&ca.key, REDIS_CA_FILE),
                    default_mode: Some(0o440),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
            mount("redis-ca", parent(REDIS_CA_FILE));
        }
        if let Some(secret) = &external.client_cert_secret_name {
            volumes.push(Volume {
                name: "redis-client".to_string(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.clone()),
                    items: tls_pair(),
                    default_mode: Some(0o440),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
            mount("redis-client", REDIS_CLIENT_CERT_DIR.to_string());
        }
    }
    volumes.push(Volume {
        name: "admin-token".to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(cluster.admin_secret_name()),
            items: one_key(admin::TOKEN_KEY, ADMIN_TOKEN_FILE),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    });
    mount("admin-token", parent(ADMIN_TOKEN_FILE));
    // The root filesystem is read-only; give the process a scratch directory.
    volumes.push(Volume {
        name: "tmp".to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    });
    mounts.push(VolumeMount {
        name: "tmp".to_string(),
        mount_path: "/tmp".to_string(),
        ..VolumeMount::default()
    });
    (volumes, mounts)
}
