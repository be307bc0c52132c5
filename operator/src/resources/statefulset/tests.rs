//! Tests of the broker StatefulSet: its shape, the pods' environment, volumes, probes, preStop
//! hook and overrides, and that a pod's whole configuration loads with the broker's own loader.

use super::volumes::parent;
use super::*;
use crate::resources::configmap::{
    config_hash, config_map, ACL_FILE, CLIENT_CA_FILE, CONFIG_KEY, GOSSIP_KEY_FILE, PASSWORD_FILE,
    TLS_DIR,
};
use crate::resources::gossip;
use crate::resources::test_support::{assert_child, cluster_from_yaml};
use k8s_openapi::api::core::v1::PodSpec;
use starling_config::BrokerConfig;

fn template_labels(set: &StatefulSet) -> std::collections::BTreeMap<String, String> {
    set.spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn build(yaml: &str) -> StatefulSet {
    let object = cluster_from_yaml(yaml);
    let c = Cluster::new(&object).expect("cluster");
    let hash = config_hash(&config_map(&c).expect("config map"));
    stateful_set(&c, &hash).expect("stateful set")
}

fn pod(set: &StatefulSet) -> &PodSpec {
    set.spec.template.spec.as_ref().expect("pod spec")
}

fn container(set: &StatefulSet) -> &Container {
    &pod(set).containers[0]
}

fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a EnvVar> {
    c.env.as_ref()?.iter().find(|e| e.name == name)
}

fn value(c: &Container, name: &str) -> String {
    env_value(c, name)
        .and_then(|e| e.value.clone())
        .unwrap_or_else(|| panic!("{name} has no value"))
}

fn hash_of(set: &StatefulSet) -> String {
    set.spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned())
        .expect("config hash annotation")
}

#[test]
fn stateful_set_shape() {
    let set = build("replicas: 5");
    assert_child(&set.metadata, "demo", "broker");
    let spec = &set.spec;
    assert_eq!(spec.replicas, Some(5));
    assert_eq!(spec.service_name.as_deref(), Some("demo-headless"));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    let selector = spec.selector.match_labels.as_ref().expect("selector");
    let labels = template_labels(&set);
    for (k, v) in selector {
        assert_eq!(labels.get(k), Some(v), "pod labels match the selector");
    }
    let c = container(&set);
    assert_eq!(
        c.image.as_deref(),
        Some(&*format!(
            "ghcr.io/starling-mqtt/starling-broker:{}",
            env!("CARGO_PKG_VERSION")
        ))
    );
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(
        c.args.as_deref(),
        Some(
            &[
                "--config".to_string(),
                "/etc/starling/config/starling.toml".to_string()
            ][..]
        )
    );
    let p = pod(&set);
    assert_eq!(p.enable_service_links, Some(false));
    assert_eq!(p.automount_service_account_token, Some(false));
}

#[test]
fn node_id_comes_from_the_pod_name() {
    let set = build("{}");
    let var = env_value(container(&set), "STARLING_NODE_ID").expect("node id");
    let field = var
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("field ref");
    assert_eq!(field.field_path, "metadata.name");
}

#[test]
fn gossip_advertises_the_pod_ip_and_the_rest_is_in_the_config_file() {
    let set = build("replicas: 2\ngossip: {port: 7000}");
    let c = container(&set);
    assert_eq!(
        value(c, "STARLING_CLUSTER__GOSSIP_ADVERTISE"),
        "$(POD_IP):7000"
    );
    for name in [
        "STARLING_CLUSTER__GOSSIP_BIND",
        "STARLING_CLUSTER__GOSSIP_SEEDS",
        "STARLING_CLUSTER__GOSSIP_KEY_FILE",
    ] {
        assert!(
            env_value(c, name).is_none(),
            "{name} belongs in the ConfigMap"
        );
    }
    let gossip_ports: Vec<(i32, String)> = c
        .ports
        .as_ref()
        .expect("ports")
        .iter()
        .filter(|p| p.name.as_deref().is_some_and(|n| n.starts_with("gossip")))
        .map(|p| (p.container_port, p.protocol.clone().unwrap_or_default()))
        .collect();
    assert_eq!(gossip_ports, [(7000, "TCP".into()), (7000, "UDP".into())]);
}

#[test]
fn scaling_never_changes_the_pod_template() {
    let one = build("replicas: 1");
    for replicas in [3, 5] {
        let other = build(&format!("replicas: {replicas}"));
        assert_eq!(
            other.spec.template, one.spec.template,
            "replicas {replicas}"
        );
    }
}

#[test]
fn variables_are_defined_before_they_are_referenced() {
    let set = build("{}");
    let names: Vec<&str> = container(&set)
        .env
        .as_ref()
        .expect("env")
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    let pos = |n: &str| names.iter().position(|x| *x == n).expect(n);
    assert!(pos("REDIS_PASSWORD") < pos("STARLING_CLUSTER__REDIS_URL"));
    assert!(pos("POD_IP") < pos("STARLING_CLUSTER__GOSSIP_ADVERTISE"));
}

#[test]
fn managed_redis_url_and_password() {
    let set = build("{}");
    let c = container(&set);
    assert_eq!(
        value(c, "STARLING_CLUSTER__REDIS_URL"),
        "redis://:$(REDIS_PASSWORD)@demo-redis.iot.svc:6379/0"
    );
    let secret = env_value(c, "REDIS_PASSWORD")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("password from secret");
    assert_eq!(secret.name, "demo-redis");
    assert_eq!(secret.key, "password");
}

#[test]
fn external_redis_without_password_has_no_password_variable() {
    let set = build("redis: {external: {url: 'redis://cache:6379/1'}}");
    let c = container(&set);
    assert_eq!(
        value(c, "STARLING_CLUSTER__REDIS_URL"),
        "redis://cache:6379/1"
    );
    assert!(env_value(c, "REDIS_PASSWORD").is_none());
}

#[test]
fn external_sentinel_mounts_its_passwords_and_sets_no_url() {
    let set = build(
            "redis: {external: {sentinel: {masterName: m, sentinels: ['s:26379']}, passwordSecretRef: {name: r, key: pw}, sentinelPasswordSecretRef: {name: s, key: spw}}}",
        );
    let c = container(&set);
    assert!(env_value(c, "STARLING_CLUSTER__REDIS_URL").is_none());
    assert!(env_value(c, PASSWORD_ENV).is_none());
    let mounts: Vec<&str> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    for file in [
        redis::SENTINEL_DATA_PASSWORD_FILE,
        redis::SENTINEL_PASSWORD_FILE,
    ] {
        assert!(
            mounts.contains(&parent(file).as_str()),
            "{file}: {mounts:?}"
        );
    }
    let secrets: Vec<String> = pod(&set)
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
        .collect();
    assert!(
        secrets.contains(&"r".to_string()) && secrets.contains(&"s".to_string()),
        "{secrets:?}"
    );
}

#[test]
fn an_external_redis_behind_tls_mounts_its_ca_and_client_certificate() {
    let set = build(
            "redis: {external: {url: 'rediss://cache:6380', caSecretRef: {name: ca, key: bundle.pem}, clientCertSecretName: redis-client}}",
        );
    let c = container(&set);
    let mounts: Vec<&str> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert!(mounts.contains(&"/etc/starling/redis-ca"), "{mounts:?}");
    assert!(mounts.contains(&"/etc/starling/redis-client"), "{mounts:?}");
    let volumes = pod(&set).volumes.clone().unwrap_or_default();
    let items = |name: &str| -> Vec<(String, String)> {
        let secret = volumes
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.secret.clone())
            .unwrap_or_else(|| panic!("no {name} volume"));
        secret
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|i| (i.key, i.path))
            .collect()
    };
    assert_eq!(items("redis-ca"), [("bundle.pem".into(), "ca.crt".into())]);
    assert_eq!(
        items("redis-client"),
        [
            ("tls.crt".into(), "tls.crt".into()),
            ("tls.key".into(), "tls.key".into())
        ]
    );
}

#[test]
fn invalid_redis_spec_is_an_error() {
    let object = cluster_from_yaml("redis: {}");
    let c = Cluster::new(&object).expect("cluster");
    assert!(stateful_set(&c, "h").is_err());
}

#[test]
fn probes_use_the_admin_port() {
    let set = build("broker: {adminPort: 9100}");
    let c = container(&set);
    let admin = c
        .ports
        .as_ref()
        .expect("ports")
        .iter()
        .find(|p| p.name.as_deref() == Some("admin"))
        .expect("admin port");
    assert_eq!(admin.container_port, 9100);
    for (probe, path) in [
        (&c.readiness_probe, "/readyz"),
        (&c.liveness_probe, "/healthz"),
        (&c.startup_probe, "/healthz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("http probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::String("admin".into()));
    }
}

#[test]
fn the_pre_stop_hook_evacuates_the_pod_and_the_grace_period_outlasts_it_and_the_drain() {
    let set = build(
            "broker: {drainTimeoutSecs: 30, evacuationRatePerSec: 250, evacuationTimeoutSecs: 40, adminPort: 9100}",
        );
    let grace = pod(&set)
        .termination_grace_period_seconds
        .expect("grace period");
    let command = container(&set)
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.clone())
        .expect("pre-stop command");
    assert_eq!(
        command,
        [
            BROKER_BINARY,
            "ctl",
            "--url",
            "http://127.0.0.1:9100",
            "--token-file",
            ADMIN_TOKEN_FILE,
            "evacuate",
            "--rate",
            "250",
            "--wait",
            "40"
        ]
    );
    assert!(grace > 40 + 30, "grace {grace}");
    // The token the hook reads is mounted where the broker's config says.
    let mounts = container(&set).volume_mounts.clone().expect("mounts");
    assert!(mounts
        .iter()
        .any(|m| m.name == "admin-token" && m.mount_path == "/etc/starling/admin"));
    let volumes = pod(&set).volumes.clone().expect("volumes");
    let token = volumes
        .iter()
        .find(|v| v.name == "admin-token")
        .and_then(|v| v.secret.as_ref())
        .expect("token volume");
    assert_eq!(token.secret_name.as_deref(), Some("demo-admin"));
}

#[test]
fn a_short_evacuation_timeout_still_waits_a_little() {
    let set = build("broker: {evacuationTimeoutSecs: 0}");
    let command = container(&set)
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.clone())
        .expect("pre-stop command");
    assert_eq!(command.last().map(String::as_str), Some("5"));
}

#[test]
fn ports_follow_the_listeners() {
    let set = build(
            "listeners: {mqtt: {port: 1884}, tls: {secretName: c, port: 8884}, websocket: {port: 8084}}\ngossip: {port: 7000}",
        );
    let ports: Vec<(String, i32, String)> = container(&set)
        .ports
        .as_ref()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.container_port,
                p.protocol.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        vec![
            ("mqtt".into(), 1884, "TCP".into()),
            ("mqtts".into(), 8884, "TCP".into()),
            ("ws".into(), 8084, "TCP".into()),
            ("admin".into(), 9090, "TCP".into()),
            ("gossip".into(), 7000, "TCP".into()),
            ("gossip-udp".into(), 7000, "UDP".into()),
        ]
    );
}

#[test]
fn tls_certificate_is_mounted_where_the_config_points() {
    let set = build("listeners: {tls: {secretName: mqtt-cert}}");
    let p = pod(&set);
    let volume = p
        .volumes
        .as_ref()
        .expect("volumes")
        .iter()
        .find(|v| v.name == "tls")
        .expect("tls volume");
    let secret = volume.secret.as_ref().expect("secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("mqtt-cert"));
    let mount = container(&set)
        .volume_mounts
        .as_ref()
        .expect("mounts")
        .iter()
        .find(|m| m.name == "tls")
        .expect("tls mount");
    assert_eq!(mount.mount_path, TLS_DIR);
    assert_eq!(mount.read_only, Some(true));
    let paths: Vec<&str> = secret
        .items
        .as_ref()
        .expect("items")
        .iter()
        .map(|i| i.path.as_str())
        .collect();
    assert_eq!(paths, ["tls.crt", "tls.key"]);
    // Without TLS there is no such volume.
    let plain = build("{}");
    assert!(!pod(&plain)
        .volumes
        .as_ref()
        .expect("volumes")
        .iter()
        .any(|v| v.name == "tls"));
}

#[test]
fn the_client_ca_bundle_is_mounted_where_the_config_points() {
    let set = build(
        "listeners: {tls: {secretName: mqtt-cert, clientAuth: optional, clientCaSecretRef: {name: devices-ca, key: bundle.pem}}}",
    );
    let volume = pod(&set)
        .volumes
        .as_ref()
        .expect("volumes")
        .iter()
        .find(|v| v.name == "client-ca")
        .expect("client-ca volume");
    let secret = volume.secret.as_ref().expect("secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("devices-ca"));
    let items = secret.items.as_ref().expect("items");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].key, "bundle.pem");
    let mount = container(&set)
        .volume_mounts
        .as_ref()
        .expect("mounts")
        .iter()
        .find(|m| m.name == "client-ca")
        .expect("client-ca mount");
    assert_eq!(
        format!("{}/{}", mount.mount_path, items[0].path),
        CLIENT_CA_FILE
    );
    assert_eq!(mount.read_only, Some(true));
    // Without client certificates there is no such volume.
    let plain = build("listeners: {tls: {secretName: mqtt-cert}}");
    assert!(!pod(&plain)
        .volumes
        .as_ref()
        .expect("volumes")
        .iter()
        .any(|v| v.name == "client-ca"));
}

#[test]
fn auth_files_and_gossip_key_are_mounted_at_the_configured_paths() {
    let set = build(
        r#"
auth: {allowAnonymous: false, usersSecretRef: {name: users, key: passwd.txt}, aclConfigMapRef: {name: rules, key: acl.txt}}
gossip: {encryptionKeySecretRef: {name: gossip, key: k}}
"#,
    );
    let p = pod(&set);
    let c = container(&set);
    let mount_dir = |name: &str| {
        c.volume_mounts
            .as_ref()
            .expect("mounts")
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.mount_path.clone())
            .unwrap_or_else(|| panic!("no mount {name}"))
    };
    let item = |name: &str| {
        let v = p
            .volumes
            .as_ref()
            .expect("volumes")
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no volume {name}"));
        let items = v
            .secret
            .as_ref()
            .and_then(|s| s.items.clone())
            .or_else(|| v.config_map.as_ref().and_then(|c| c.items.clone()))
            .expect("items");
        (items[0].key.clone(), items[0].path.clone())
    };
    let full = |name: &str| format!("{}/{}", mount_dir(name), item(name).1);
    assert_eq!(full("users"), PASSWORD_FILE);
    assert_eq!(item("users").0, "passwd.txt");
    assert_eq!(full("acl"), ACL_FILE);
    assert_eq!(item("acl").0, "acl.txt");
    assert_eq!(full("gossip-key"), GOSSIP_KEY_FILE);
    assert_eq!(item("gossip-key").0, "k");
    assert_eq!(full("config"), configmap::config_path());
    let default_set = build("{}");
    let generated = pod(&default_set)
        .volumes
        .as_ref()
        .expect("volumes")
        .iter()
        .find(|v| v.name == "gossip-key")
        .and_then(|v| v.secret.as_ref())
        .expect("gossip is encrypted by default");
    assert_eq!(generated.secret_name.as_deref(), Some("demo-gossip"));
    assert_eq!(
        generated.items.as_ref().expect("items")[0].key,
        gossip::GENERATED_KEY
    );
    assert!(!pod(&build("gossip: {encrypt: false}"))
        .volumes
        .as_ref()
        .expect("volumes")
        .iter()
        .any(|v| v.name == "gossip-key"));
}

#[test]
fn config_change_changes_the_pod_template_hash() {
    let a = build("{}");
    let b = build("broker: {maxQueuedMessages: 5}");
    assert_eq!(hash_of(&a).len(), 32);
    assert_ne!(hash_of(&a), hash_of(&b));
    assert_eq!(hash_of(&a), hash_of(&build("{}")));
}

#[test]
fn pod_template_overrides_apply_but_cannot_break_the_selector() {
    let set = build(
        r#"
image: {repository: registry.example/starling, tag: "1.2.3", pullPolicy: Always, pullSecrets: [regcred]}
podTemplate:
  labels: {team: iot, app.kubernetes.io/instance: hijack}
  annotations: {example.com/note: hi}
  nodeSelector: {disk: ssd}
  tolerations: [{key: dedicated, operator: Equal, value: mqtt, effect: NoSchedule}]
  priorityClassName: high
  securityContext: {runAsUser: 1000}
  topologySpreadConstraints: []
resources: {limits: {memory: 512Mi}}
"#,
    );
    let labels = template_labels(&set);
    assert_eq!(labels["team"], "iot");
    assert_eq!(labels["app.kubernetes.io/instance"], "demo");
    let meta = set
        .spec
        .template
        .metadata
        .as_ref()
        .expect("template metadata");
    assert_eq!(
        meta.annotations.as_ref().expect("annotations")["example.com/note"],
        "hi"
    );
    let p = pod(&set);
    assert_eq!(
        p.node_selector.as_ref().expect("node selector")["disk"],
        "ssd"
    );
    assert_eq!(p.tolerations.as_ref().expect("tolerations").len(), 1);
    assert_eq!(p.priority_class_name.as_deref(), Some("high"));
    assert_eq!(
        p.security_context.as_ref().and_then(|s| s.run_as_user),
        Some(1000)
    );
    assert_eq!(p.topology_spread_constraints.as_deref(), Some(&[][..]));
    assert_eq!(
        p.image_pull_secrets.as_ref().expect("pull secrets")[0].name,
        "regcred"
    );
    let c = container(&set);
    assert_eq!(c.image.as_deref(), Some("registry.example/starling:1.2.3"));
    assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
    assert_eq!(
        c.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .expect("limits")["memory"]
            .0,
        "512Mi"
    );
}

#[test]
fn defaults_spread_pods_and_run_as_non_root() {
    let set = build("{}");
    let p = pod(&set);
    let spread = p.topology_spread_constraints.as_ref().expect("spread");
    assert_eq!(spread[0].topology_key, "kubernetes.io/hostname");
    let sc = p.security_context.as_ref().expect("security context");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(BROKER_UID));
    let csc = container(&set)
        .security_context
        .as_ref()
        .expect("container sc");
    assert_eq!(csc.read_only_root_filesystem, Some(true));
    assert_eq!(csc.allow_privilege_escalation, Some(false));
}

/// Expands `$(NAME)` references the way the kubelet does, from earlier variables.
fn expand(value: &str, known: &[(String, String)]) -> String {
    let mut out = value.to_string();
    for (name, v) in known {
        out = out.replace(&format!("$({name})"), v);
    }
    out
}

/// A broker pod's whole configuration, loaded the way the broker loads it: the ConfigMap's
/// file through `BrokerConfig::figment` (defaults, file, `STARLING_*` environment), then
/// validated. The environment is the pod's, with `$(VAR)` references expanded as the
/// kubelet does and Secret values made up.
#[test]
#[allow(clippy::result_large_err)] // figment::Jail's signature, not ours
fn pod_configuration_loads_with_the_broker_loader() {
    let yaml = "replicas: 3\ngossip: {encryptionKeySecretRef: {name: g, key: k}}";
    let object = cluster_from_yaml(yaml);
    let c = Cluster::new(&object).expect("cluster");
    let cm = config_map(&c).expect("config map");
    let file = cm.data.as_ref().expect("data")[CONFIG_KEY].clone();
    let set = build(yaml);
    let mut known: Vec<(String, String)> = Vec::new();
    for var in container(&set).env.as_ref().expect("env") {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => expand(v, &known),
            (None, Some(from)) => {
                match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                    Some("metadata.name") => "demo-1".to_string(),
                    Some("status.podIP") => "10.1.2.3".to_string(),
                    Some(other) => panic!("unexpected field {other}"),
                    None => "pw0rd".to_string(), // a Secret key
                }
            }
            (None, None) => String::new(),
        };
        known.push((var.name.clone(), value));
    }
    figment::Jail::expect_with(|jail| {
        jail.create_file(CONFIG_KEY, &file)?;
        for (name, value) in &known {
            jail.set_env(name, value);
        }
        let figment = BrokerConfig::figment(Some(std::path::Path::new(CONFIG_KEY)));
        let config = BrokerConfig::from_figment(&figment).expect("the pod's config loads");
        assert_eq!(config.node_id, "demo-1");
        let cl = &config.cluster;
        assert_eq!(
            cl.redis_url.as_deref(),
            Some("redis://:pw0rd@demo-redis.iot.svc:6379/0")
        );
        assert_eq!(cl.gossip_bind, Some("0.0.0.0:7946".parse().unwrap()));
        assert_eq!(cl.gossip_advertise, Some("10.1.2.3:7946".parse().unwrap()));
        assert_eq!(cl.gossip_seeds, ["demo-headless.iot.svc:7946"]);
        assert_eq!(
            cl.gossip_key_file.as_deref().and_then(|p| p.to_str()),
            Some(GOSSIP_KEY_FILE)
        );
        Ok(())
    });
}
