//! The ConfigMap holding the broker configuration file.
//!
//! The file is a [`starling_config::BrokerConfig`] rendered with its own `to_toml_string`, so
//! what the operator writes is exactly what the broker parses. Settings that differ per pod
//! (node id, gossip address) or come from Secrets (the Redis password) are passed as
//! `STARLING_*` environment variables instead; see [`super::statefulset`].

use super::{Cluster, COMPONENT_BROKER};
use crate::crd::{self, LogFormat, MqttClusterSpec};
use crate::Error;
use k8s_openapi::api::core::v1::ConfigMap;
use sha2::{Digest, Sha256};
use starling_config::{BrokerConfig, RedisReplicationConfig, RedisTlsConfig, TlsListenerConfig};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Key of the configuration file in the ConfigMap.
pub const CONFIG_KEY: &str = "starling.toml";
/// Where the ConfigMap is mounted in broker pods.
pub const CONFIG_DIR: &str = "/etc/starling/config";
/// Where the TLS Secret is mounted.
pub const TLS_DIR: &str = "/etc/starling/tls";
/// Where the TLS listener's client CA bundle (`listeners.tls.clientCaSecretRef`) is mounted.
pub const CLIENT_CA_FILE: &str = "/etc/starling/client-ca/ca.crt";
/// Where the users Secret's password file is mounted.
pub const PASSWORD_FILE: &str = "/etc/starling/auth/passwd";
/// Where the ACL ConfigMap's file is mounted.
pub const ACL_FILE: &str = "/etc/starling/acl/acl";
/// Where the gossip key Secret is mounted.
pub const GOSSIP_KEY_FILE: &str = "/etc/starling/gossip/key";
/// Where broker pods read their admin API token (the Secret [`super::Cluster::admin_secret_name`]).
pub const ADMIN_TOKEN_FILE: &str = "/etc/starling/admin/token";
/// Where broker pods read the CA bundle of an external Redis with TLS (`caSecretRef`).
pub const REDIS_CA_FILE: &str = "/etc/starling/redis-ca/ca.crt";
/// Where broker pods read the client certificate and key they present to an external Redis
/// (`clientCertSecretName`).
pub const REDIS_CLIENT_CERT_DIR: &str = "/etc/starling/redis-client";

/// The configuration file's path in broker pods.
pub fn config_path() -> String {
    format!("{CONFIG_DIR}/{CONFIG_KEY}")
}

fn any_addr(port: i32) -> Result<SocketAddr, Error> {
    let port = u16::try_from(port)
        .map_err(|_| Error::InvalidSpec(format!("port {port} is outside 1..=65535")))?;
    Ok(SocketAddr::from(([0, 0, 0, 0], port)))
}

/// The gossip seed: the headless Service's name, `<name>-headless.<namespace>.svc:<port>`.
///
/// The broker tries every address a seed resolves to, and the headless Service resolves to
/// every broker pod, so one name finds them all. It does not depend on `replicas`: the
/// configuration, its hash on the pod template and so the pods stay the same when the cluster
/// is scaled (listing pods by name made scaling between 1 and 3 replicas restart every pod).
pub fn gossip_seeds(cluster: &Cluster<'_>) -> Vec<String> {
    vec![format!(
        "{}:{}",
        cluster.headless_dns_name(),
        cluster.spec().gossip.port
    )]
}

/// The broker configuration for a cluster's pods, validated. Per-pod values (node id, gossip
/// advertise address) and the Redis URL (it carries the password) come from environment
/// variables instead; see [`super::statefulset::broker_env`].
pub fn broker_config(cluster: &Cluster<'_>) -> Result<BrokerConfig, Error> {
    let spec: &MqttClusterSpec = cluster.spec();
    let mut config = BrokerConfig {
        // Each pod overrides this with its own name (STARLING_NODE_ID).
        node_id: cluster.name.to_string(),
        ..BrokerConfig::default()
    };
    let l = &spec.listeners;
    // A disabled plain listener renders as `tcp = "off"`; `rendered_config_round_trips` below
    // fails if rendering and parsing ever disagree.
    config.listeners.tcp = if l.mqtt.enabled {
        Some(any_addr(l.mqtt.port)?)
    } else {
        None
    };
    config.listeners.tls = match &l.tls {
        Some(tls) => {
            let mut listener = TlsListenerConfig::new(
                any_addr(tls.port)?,
                format!("{TLS_DIR}/tls.crt").into(),
                format!("{TLS_DIR}/tls.key").into(),
            );
            listener.client_auth = match tls.client_auth {
                crd::ClientAuth::None => starling_config::ClientAuth::None,
                crd::ClientAuth::Optional => starling_config::ClientAuth::Optional,
                crd::ClientAuth::Required => starling_config::ClientAuth::Required,
            };
            listener.client_ca_file = tls
                .client_ca_secret_ref
                .as_ref()
                .map(|_| CLIENT_CA_FILE.into());
            listener.username_from_certificate = match tls.username_from_certificate {
                crd::CertificateUsername::None => starling_config::CertificateUsername::None,
                crd::CertificateUsername::Cn => starling_config::CertificateUsername::Cn,
                crd::CertificateUsername::SanDns => starling_config::CertificateUsername::SanDns,
                crd::CertificateUsername::SanEmail => {
                    starling_config::CertificateUsername::SanEmail
                }
            };
            Some(listener)
        }
        None => None,
    };
    config.listeners.ws = match &l.websocket {
        Some(ws) => Some(any_addr(ws.port)?),
        None => None,
    };
    let b = &spec.broker;
    config.admin.bind = Some(any_addr(b.admin_port)?);
    config.limits.max_packet_size = b.max_packet_size;
    config.limits.max_queued_messages = b.max_queued_messages as usize;
    config.limits.max_inflight = b.max_inflight;
    config.limits.max_connections = b.max_connections as usize;
    config.limits.max_keep_alive_secs = b.max_keep_alive_secs;
    config.limits.max_connect_size = b.max_connect_size;
    config.limits.max_retained_messages = b.max_retained_messages as usize;
    config.limits.max_retained_payload_size = b.max_retained_payload_size;
    config.limits.max_retained_bytes = b.max_retained_bytes;
    config.session.max_session_expiry_secs = b.max_session_expiry_secs;
    config.session.max_message_expiry_secs = b.max_message_expiry_secs;
    config.session.queue_qos0 = b.queue_qos0;
    config.shutdown.drain_timeout_secs = u64::from(b.drain_timeout_secs);
    config.log.level = b.log_level.clone();
    config.log.format = match b.log_format {
        LogFormat::Text => starling_config::LogFormat::Text,
        LogFormat::Json => starling_config::LogFormat::Json,
    };
    config.admin.token_file = Some(ADMIN_TOKEN_FILE.into());
    config.auth.allow_anonymous = spec.auth.allow_anonymous;
    config.auth.password_file =
        super::users::password_file_ref(cluster).map(|_| PASSWORD_FILE.into());
    config.auth.acl_file = spec
        .auth
        .acl_config_map_ref
        .as_ref()
        .map(|_| ACL_FILE.into());
    config.cluster.gossip_bind = Some(any_addr(spec.gossip.port)?);
    config.cluster.gossip_seeds = gossip_seeds(cluster);
    config.cluster.gossip_key_file =
        super::gossip::key_ref(cluster).map(|_| GOSSIP_KEY_FILE.into());
    config.cluster.redis_sentinel = super::redis::sentinel(cluster);
    if let Some(external) = &spec.redis.external {
        config.cluster.redis_tls = RedisTlsConfig {
            ca_file: external
                .ca_secret_ref
                .as_ref()
                .map(|_| REDIS_CA_FILE.into()),
            cert_file: external
                .client_cert_secret_name
                .as_ref()
                .map(|_| format!("{REDIS_CLIENT_CERT_DIR}/tls.crt").into()),
            key_file: external
                .client_cert_secret_name
                .as_ref()
                .map(|_| format!("{REDIS_CLIENT_CERT_DIR}/tls.key").into()),
        };
    }
    if let Some(replication) = &spec.redis.replication {
        config.cluster.redis_replication = RedisReplicationConfig {
            wait_replicas: replication.wait_replicas,
            wait_timeout_ms: u64::from(replication.wait_timeout_ms),
        };
    }
    // A Redis at one URL is named by an environment variable (the URL carries the password):
    // the file is checked as the broker will see it.
    let mut as_run = config.clone();
    if as_run.cluster.redis_sentinel.is_none() {
        let tls = spec
            .redis
            .external
            .as_ref()
            .and_then(|e| e.url.as_deref())
            .is_some_and(|url| url.starts_with("rediss://"));
        let scheme = if tls { "rediss" } else { "redis" };
        as_run.cluster.redis_url = Some(format!("{scheme}://redis.from.environment:6379/0"));
    }
    as_run.validate()?;
    Ok(config)
}

/// The ConfigMap with the rendered configuration file.
pub fn config_map(cluster: &Cluster<'_>) -> Result<ConfigMap, Error> {
    let config = broker_config(cluster)?;
    let text = config.to_toml_string()?;
    Ok(ConfigMap {
        metadata: cluster.child_meta(cluster.config_map_name(), COMPONENT_BROKER),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), text)])),
        ..ConfigMap::default()
    })
}

/// A short hash of the ConfigMap's data. It goes into the broker pod template, so a changed
/// configuration rolls the pods.
pub fn config_hash(config_map: &ConfigMap) -> String {
    let mut hasher = Sha256::new();
    // BTreeMap iterates in key order, so equal data always hashes equally.
    for (key, value) in config_map.data.iter().flatten() {
        super::hash_framed(&mut hasher, key.as_bytes());
        super::hash_framed(&mut hasher, value.as_bytes());
    }
    super::hex(&hasher.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_support::{assert_child, cluster, cluster_from_yaml};

    fn rendered(yaml: &str) -> (ConfigMap, BrokerConfig) {
        let object = cluster_from_yaml(yaml);
        let c = Cluster::new(&object).expect("cluster");
        let cm = config_map(&c).expect("config map");
        let text = &cm.data.as_ref().expect("data")[CONFIG_KEY];
        let parsed = BrokerConfig::from_toml_str(text).expect("the broker parses the ConfigMap");
        (cm, parsed)
    }

    #[test]
    fn default_spec_renders_a_config_the_broker_parses() {
        let (cm, parsed) = rendered("{}");
        assert_child(&cm.metadata, "demo-config", "broker");
        assert_eq!(parsed.node_id, "demo");
        assert_eq!(parsed.listeners.tcp, Some("0.0.0.0:1883".parse().unwrap()));
        assert_eq!(parsed.listeners.tls, None);
        assert_eq!(parsed.listeners.ws, None);
        assert_eq!(parsed.admin.bind, Some("0.0.0.0:9090".parse().unwrap()));
        assert_eq!(parsed.log.format, starling_config::LogFormat::Json);
        // Everything the spec does not set is the broker's own default.
        let mut expected = BrokerConfig {
            node_id: "demo".into(),
            ..BrokerConfig::default()
        };
        expected.log.format = starling_config::LogFormat::Json;
        expected.cluster.gossip_bind = Some("0.0.0.0:7946".parse().unwrap());
        expected.cluster.gossip_seeds = vec!["demo-headless.iot.svc:7946".to_string()];
        // Gossip is encrypted by default, with the operator's generated key.
        expected.cluster.gossip_key_file = Some(GOSSIP_KEY_FILE.into());
        // The admin API's token, mounted from the operator's Secret.
        expected.admin.token_file = Some(ADMIN_TOKEN_FILE.into());
        assert_eq!(parsed, expected);
    }

    #[test]
    fn client_certificate_settings_reach_the_config_file() {
        let (_, parsed) = rendered(
            "listeners: {tls: {secretName: c, clientAuth: required, clientCaSecretRef: {name: ca, key: bundle.pem}, usernameFromCertificate: san_dns}}",
        );
        let tls = parsed.listeners.tls.expect("tls listener");
        assert_eq!(tls.client_auth, starling_config::ClientAuth::Required);
        assert_eq!(
            tls.client_ca_file.as_deref().and_then(|p| p.to_str()),
            Some(CLIENT_CA_FILE)
        );
        assert_eq!(
            tls.username_from_certificate,
            starling_config::CertificateUsername::SanDns
        );
        let (_, plain) = rendered("listeners: {tls: {secretName: c}}");
        let tls = plain.listeners.tls.expect("tls listener");
        assert_eq!(tls.client_auth, starling_config::ClientAuth::None);
        assert_eq!(tls.client_ca_file, None);
    }

    #[test]
    fn spec_settings_reach_the_config_file() {
        let (_, parsed) = rendered(
            r#"
listeners:
  mqtt: {enabled: false}
  tls: {port: 8884, secretName: mqtt-cert}
  websocket: {port: 8080}
auth:
  allowAnonymous: false
  usersSecretRef: {name: users, key: passwd}
  aclConfigMapRef: {name: acl, key: rules}
broker:
  maxSessionExpirySecs: 60
  maxMessageExpirySecs: 30
  maxQueuedMessages: 50
  maxInflight: 7
  queueQos0: true
  maxPacketSize: 65536
  maxConnections: 10
  maxKeepAliveSecs: 0
  maxConnectSize: 4096
  maxRetainedMessages: 500
  maxRetainedPayloadSize: 1024
  maxRetainedBytes: 65536
  drainTimeoutSecs: 25
  adminPort: 9100
  logLevel: debug
  logFormat: text
"#,
        );
        assert_eq!(
            parsed.listeners.tcp, None,
            "a disabled plain listener is off"
        );
        let tls = parsed.listeners.tls.expect("tls listener");
        assert_eq!(tls.bind, "0.0.0.0:8884".parse().unwrap());
        assert_eq!(tls.cert_file.to_str(), Some("/etc/starling/tls/tls.crt"));
        assert_eq!(tls.key_file.to_str(), Some("/etc/starling/tls/tls.key"));
        assert_eq!(parsed.listeners.ws, Some("0.0.0.0:8080".parse().unwrap()));
        assert_eq!(parsed.admin.bind, Some("0.0.0.0:9100".parse().unwrap()));
        assert!(!parsed.auth.allow_anonymous);
        assert_eq!(
            parsed
                .auth
                .password_file
                .as_deref()
                .and_then(|p| p.to_str()),
            Some(PASSWORD_FILE)
        );
        assert_eq!(
            parsed.auth.acl_file.as_deref().and_then(|p| p.to_str()),
            Some(ACL_FILE)
        );
        assert_eq!(parsed.session.max_session_expiry_secs, 60);
        assert_eq!(parsed.session.max_message_expiry_secs, 30);
        assert!(parsed.session.queue_qos0);
        assert_eq!(parsed.limits.max_queued_messages, 50);
        assert_eq!(parsed.limits.max_inflight, 7);
        assert_eq!(parsed.limits.max_packet_size, 65536);
        assert_eq!(parsed.limits.max_connections, 10);
        assert_eq!(parsed.limits.max_keep_alive_secs, 0);
        assert_eq!(parsed.limits.max_connect_size, 4096);
        assert_eq!(parsed.limits.max_retained_messages, 500);
        assert_eq!(parsed.limits.max_retained_payload_size, 1024);
        assert_eq!(parsed.limits.max_retained_bytes, 65536);
        assert_eq!(parsed.shutdown.drain_timeout_secs, 25);
        assert_eq!(parsed.log.level, "debug");
        assert_eq!(parsed.log.format, starling_config::LogFormat::Text);
    }

    /// What the operator means is what the broker reads: rendering then parsing gives back the
    /// same configuration, for specs that touch every rendered field.
    #[test]
    fn rendered_config_round_trips() {
        for yaml in [
            "{}",
            "listeners: {mqtt: {enabled: false}, tls: {secretName: c}}",
            "listeners: {websocket: {port: 9001}}\nbroker: {logFormat: text, drainTimeoutSecs: 0}",
            "auth: {allowAnonymous: false, usersSecretRef: {name: u, key: k}}",
            "gossip: {port: 7000, encryptionKeySecretRef: {name: g, key: k}}\nreplicas: 1",
            "redis: {external: {sentinel: {masterName: m, sentinels: ['s-0:26379', 's-1:26379'], tls: true}, passwordSecretRef: {name: r, key: pw}}, replication: {waitReplicas: 1, waitTimeoutMs: 500}}",
            "redis: {external: {sentinel: {masterName: m, sentinels: ['s-0:26379'], tls: true}, username: u, sentinelUsername: su, caSecretRef: {name: ca, key: ca.crt}, clientCertSecretName: c}}",
            "redis: {managed: {sentinel: {}}}",
        ] {
            let object = cluster_from_yaml(yaml);
            let config = broker_config(&Cluster::new(&object).expect("cluster")).expect("config");
            let text = config.to_toml_string().expect("render");
            let parsed = BrokerConfig::from_toml_str(&text).expect("parse");
            assert_eq!(parsed, config, "{yaml}");
        }
    }

    #[test]
    fn an_external_redis_behind_tls_gets_its_ca_and_client_certificate_files() {
        // The URL comes from the environment; the file is checked with it (as the broker
        // reads both) when it is built.
        let object = cluster_from_yaml(
            "redis: {external: {url: 'rediss://cache:6380', caSecretRef: {name: ca, key: bundle.pem}, clientCertSecretName: redis-client}}",
        );
        let config = broker_config(&Cluster::new(&object).expect("cluster")).expect("config");
        let tls = config.cluster.redis_tls;
        assert_eq!(
            tls.ca_file.as_deref(),
            Some(std::path::Path::new(REDIS_CA_FILE))
        );
        assert_eq!(
            tls.cert_file.as_deref(),
            Some(std::path::Path::new("/etc/starling/redis-client/tls.crt"))
        );
        assert_eq!(
            tls.key_file.as_deref(),
            Some(std::path::Path::new("/etc/starling/redis-client/tls.key"))
        );
        let (_, parsed) = rendered(
            "redis: {external: {sentinel: {masterName: m, sentinels: ['s:26379'], tls: true}, username: starling, sentinelUsername: watcher, caSecretRef: {name: ca, key: ca.crt}}}",
        );
        let sentinel = parsed.cluster.redis_sentinel.expect("sentinel");
        assert_eq!(sentinel.username.as_deref(), Some("starling"));
        assert_eq!(sentinel.sentinel_username.as_deref(), Some("watcher"));
        assert!(parsed.cluster.redis_tls.ca_file.is_some());
        assert!(parsed.cluster.redis_tls.cert_file.is_none());
        // Nothing of it without those fields.
        let (_, parsed) = rendered("{}");
        assert!(!parsed.cluster.redis_tls.is_set());
    }

    #[test]
    fn sentinel_and_replication_waits_are_in_the_file() {
        let (_, parsed) = rendered(
            "redis: {external: {sentinel: {masterName: m, sentinels: ['s-0:26379']}, passwordSecretRef: {name: r, key: pw}}, replication: {waitReplicas: 1}}",
        );
        let sentinel = parsed.cluster.redis_sentinel.expect("sentinel in the file");
        assert_eq!(sentinel.master_name, "m");
        assert_eq!(sentinel.sentinels, ["s-0:26379"]);
        assert!(sentinel.password_file.is_some());
        assert_eq!(parsed.cluster.redis_url, None);
        assert_eq!(parsed.cluster.redis_replication.wait_replicas, 1);
        assert_eq!(parsed.cluster.redis_replication.wait_timeout_ms, 1000);
        // With a URL (an environment variable, as it carries the password) the wait is in the
        // file too, and the file is checked as the broker will see it.
        let object = cluster_from_yaml(
            "redis: {external: {url: 'redis://cache:6379'}, replication: {waitReplicas: 2}}",
        );
        let config = broker_config(&Cluster::new(&object).expect("cluster")).expect("config");
        assert_eq!(config.cluster.redis_replication.wait_replicas, 2);
        assert_eq!(config.cluster.redis_url, None);
    }

    #[test]
    fn a_config_the_broker_would_reject_is_an_error() {
        // The admin port clashes with the MQTT port: the broker's own validation names it.
        let object = cluster_from_yaml("broker: {adminPort: 1883}");
        let err = config_map(&Cluster::new(&object).expect("cluster")).unwrap_err();
        assert!(matches!(err, Error::BrokerConfig(_)), "{err}");
        assert!(err.to_string().contains("admin.bind"), "{err}");
    }

    #[test]
    fn the_seed_is_the_headless_service_name() {
        let object = cluster_from_yaml("replicas: 2\ngossip: {port: 7000}");
        let c = Cluster::new(&object).expect("cluster");
        assert_eq!(gossip_seeds(&c), vec!["demo-headless.iot.svc:7000"]);
        let (_, parsed) = rendered("replicas: 2\ngossip: {port: 7000}");
        assert_eq!(parsed.cluster.gossip_seeds, gossip_seeds(&c));
        assert_eq!(
            parsed.cluster.gossip_bind,
            Some("0.0.0.0:7000".parse().unwrap())
        );
        assert_eq!(
            parsed.cluster.gossip_key_file.as_deref(),
            Some(std::path::Path::new(GOSSIP_KEY_FILE)),
            "encrypted by default"
        );
        let (_, plain) = rendered("gossip: {encrypt: false}");
        assert_eq!(plain.cluster.gossip_key_file, None);
        let (_, keyed) = rendered("gossip: {encryptionKeySecretRef: {name: g, key: k}}");
        assert_eq!(
            keyed
                .cluster
                .gossip_key_file
                .as_deref()
                .and_then(|p| p.to_str()),
            Some(GOSSIP_KEY_FILE)
        );
    }

    #[test]
    fn scaling_never_changes_the_config() {
        let (one, _) = rendered("replicas: 1");
        for replicas in [2, 3, 5, 9] {
            let (other, _) = rendered(&format!("replicas: {replicas}"));
            assert_eq!(other.data, one.data, "replicas {replicas}");
            assert_eq!(
                config_hash(&other),
                config_hash(&one),
                "replicas {replicas}"
            );
        }
    }

    #[test]
    fn hash_follows_the_config() {
        let object = cluster(Default::default());
        let c = Cluster::new(&object).expect("cluster");
        let first = config_hash(&config_map(&c).expect("cm"));
        assert_eq!(first.len(), 32);
        assert_eq!(first, config_hash(&config_map(&c).expect("cm")), "stable");

        let changed = cluster_from_yaml("broker: {maxInflight: 5}");
        let c2 = Cluster::new(&changed).expect("cluster");
        assert_ne!(first, config_hash(&config_map(&c2).expect("cm")));

        // Replicas do not reach the configuration file.
        let scaled = cluster_from_yaml("replicas: 1");
        let c3 = Cluster::new(&scaled).expect("cluster");
        assert_eq!(first, config_hash(&config_map(&c3).expect("cm")));
    }
}
