//! Tests of the CRD: the committed YAML is current, the API server would accept the schema, and
//! its defaults and validation rules say what the Rust types mean.

use super::*;
use crate::schema_check::{cel_errors, defaults, structural_errors, update_cel_errors};
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
    let committed = include_str!("../../../crds/mqttcluster.yaml");
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
        json!({"listeners": {"tls": {"secretName": "c", "clientAuth": "optional", "clientCaSecretRef": {"name": "ca", "key": "ca.crt"}}}}),
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
        "a single managed Redis has no replicas to wait for",
    );
    assert_rejected(
        json!({"redis": {"external": {"sentinel": {"masterName": "m", "sentinels": ["s:26379"]}}, "replication": {"waitReplicas": 1, "waitTimeoutMs": 0}}}),
        "waitTimeoutMs",
    );
}

#[test]
fn external_redis_tls_files_and_acl_users_go_where_they_can_be_used() {
    for accepted in [
        json!({"redis": {"external": {"url": "rediss://r:6380", "caSecretRef": {"name": "ca", "key": "ca.crt"}, "clientCertSecretName": "c"}}}),
        json!({"redis": {"external": {"sentinel": {"masterName": "m", "sentinels": ["s:26379"], "tls": true}, "caSecretRef": {"name": "ca", "key": "ca.crt"}, "username": "u", "sentinelUsername": "su"}}}),
    ] {
        assert_eq!(
            problems(accepted.clone()),
            Vec::<String>::new(),
            "{accepted}"
        );
    }
    assert_rejected(
        json!({"redis": {"external": {"url": "redis://r:6379", "caSecretRef": {"name": "ca", "key": "ca.crt"}}}}),
        "are for TLS",
    );
    assert_rejected(
        json!({"redis": {"external": {"sentinel": {"masterName": "m", "sentinels": ["s:26379"]}, "clientCertSecretName": "c"}}}),
        "are for TLS",
    );
    assert_rejected(
        json!({"redis": {"external": {"url": "rediss://r:6380", "username": "u"}}}),
        "put the user in the URL",
    );
}

#[test]
fn managed_sentinel_has_an_odd_number_of_pods_and_bounds_the_replicas_waited_for() {
    for accepted in [
        json!({"redis": {"managed": {"sentinel": {}}, "replication": {"waitReplicas": 2}}}),
        json!({"redis": {"managed": {"sentinel": {"replicas": 5}}, "replication": {"waitReplicas": 4}}}),
    ] {
        assert_eq!(
            problems(accepted.clone()),
            Vec::<String>::new(),
            "{accepted}"
        );
    }
    assert_rejected(
        json!({"redis": {"managed": {"sentinel": {"replicas": 4}}}}),
        "must be odd",
    );
    assert_rejected(
        json!({"redis": {"managed": {"sentinel": {"replicas": 1}}}}),
        "replicas",
    );
    assert_rejected(
        json!({"redis": {"managed": {"sentinel": {}}, "replication": {"waitReplicas": 3}}}),
        "wait for fewer",
    );
    assert_rejected(
        json!({"redis": {"managed": {"sentinel": {"downAfterMilliseconds": 500}}}}),
        "downAfterMilliseconds",
    );
    let defaulted = defaults(&object(json!({"redis": {"managed": {"sentinel": {}}}})));
    assert_eq!(
        defaulted["spec"]["redis"]["managed"]["sentinel"],
        json!({"replicas": 3, "downAfterMilliseconds": 5000})
    );
}

#[test]
fn sentinel_persistence_is_fixed_once_the_redis_pods_exist() {
    let sentinel = |persistence: Value| {
        let mut managed = json!({"sentinel": {"replicas": 3}});
        if !persistence.is_null() {
            managed["persistence"] = persistence;
        }
        object(json!({"redis": {"managed": managed}}))
    };
    let fixed = "redis.managed.persistence cannot change while sentinel";
    let update = |old: &Value, new: &Value| {
        let (old, new) = (defaults(old), defaults(new));
        update_cel_errors(&new, Some(&old))
    };
    let none = sentinel(Value::Null);
    let small = sentinel(json!({"size": "1Gi"}));
    let large = sentinel(json!({"size": "5Gi"}));
    let classed = sentinel(json!({"size": "1Gi", "storageClassName": "fast"}));
    for (old, new) in [
        (&none, &small),
        (&small, &none),
        (&small, &large),
        (&small, &classed),
    ] {
        let problems = update(old, new);
        assert!(
            problems.iter().any(|p| p.contains(fixed)),
            "{old} -> {new} should be refused, got {problems:?}"
        );
    }
    // Unchanged, or changed while no Sentinel group exists (one Redis pod, a Deployment whose
    // claim is made anew), or on the update that turns Sentinel on or off: allowed.
    let one_pod =
        |persistence: Value| object(json!({"redis": {"managed": {"persistence": persistence}}}));
    let one_pod_none = object(json!({"redis": {"managed": {}}}));
    for (old, new) in [
        (&small, &small),
        (&none, &none),
        (&one_pod_none, &one_pod(json!({"size": "2Gi"}))),
        (&one_pod(json!({"size": "2Gi"})), &large),
        (&small, &one_pod_none),
    ] {
        let problems = update(old, new);
        assert!(problems.is_empty(), "{old} -> {new}: {problems:?}");
    }
    // A create is never a change.
    assert!(update_cel_errors(&defaults(&large), None).is_empty());
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
fn client_certificates_need_a_ca_bundle_and_are_asked_for_when_used() {
    let ca = json!({"name": "client-ca", "key": "ca.crt"});
    assert_rejected(
        json!({"listeners": {"tls": {"secretName": "c", "clientAuth": "required"}}}),
        "clientCaSecretRef is required",
    );
    assert_rejected(
        json!({"listeners": {"tls": {"secretName": "c", "clientCaSecretRef": ca}}}),
        "clientCaSecretRef is set but clientAuth is none",
    );
    assert_rejected(
        json!({"listeners": {"tls": {"secretName": "c", "usernameFromCertificate": "cn"}}}),
        "usernameFromCertificate needs clientAuth",
    );
    assert_rejected(
        json!({"listeners": {"tls": {"secretName": "c", "clientAuth": "sometimes", "clientCaSecretRef": ca}}}),
        "clientAuth",
    );
    for mode in ["optional", "required"] {
        let spec = json!({"listeners": {"tls": {"secretName": "c", "clientAuth": mode, "clientCaSecretRef": ca, "usernameFromCertificate": "san_email"}}});
        assert_eq!(problems(spec), Vec::<String>::new(), "{mode}");
    }
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
fn unencrypted_gossip_cannot_name_a_key() {
    assert_rejected(
        json!({"gossip": {"encrypt": false, "encryptionKeySecretRef": {"name": "g", "key": "k"}}}),
        "encrypt is false but encryptionKeySecretRef is set",
    );
    for gossip in [
        json!({"encrypt": false}),
        json!({"encryptionKeySecretRef": {"name": "g", "key": "k"}}),
    ] {
        assert_eq!(problems(json!({ "gossip": gossip })), Vec::<String>::new());
    }
}

#[test]
fn a_closed_broker_may_leave_its_users_to_the_operator() {
    assert_eq!(
        problems(json!({"auth": {"allowAnonymous": false}})),
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
        "maxRetainedMessages",
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
    assert_rejected(
        json!({"broker": {"maxKeepAliveSecs": 65536}}),
        "above the maximum 65535",
    );
    assert_rejected(
        json!({"broker": {"maxRetainedBytes": 1_u64 << 53}}),
        "above the maximum 9007199254740991",
    );
    assert_eq!(
        problems(json!({"broker": {"maxRetainedBytes": (1_u64 << 53) - 1}})),
        Vec::<String>::new()
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

#[test]
fn autoscaling_bounds_and_a_cpu_target_need_what_they_rely_on() {
    let autoscaling = |extra: serde_json::Value| {
        let mut a = json!({"minReplicas": 2, "maxReplicas": 5, "targetConnectionsPerBroker": 1000});
        if let (Some(a), Some(extra)) = (a.as_object_mut(), extra.as_object()) {
            a.extend(extra.clone());
        }
        a
    };
    assert_eq!(
        problems(json!({ "autoscaling": autoscaling(json!({})) })),
        Vec::<String>::new()
    );
    assert_rejected(
        json!({ "autoscaling": autoscaling(json!({"minReplicas": 6})) }),
        "minReplicas must not exceed maxReplicas",
    );
    assert_rejected(
        json!({ "autoscaling": autoscaling(json!({"targetCpuUtilizationPercent": 70})) }),
        "targetCpuUtilizationPercent needs resources.requests.cpu",
    );
    assert_eq!(
        problems(json!({
            "autoscaling": autoscaling(json!({"targetCpuUtilizationPercent": 70})),
            "resources": {"requests": {"cpu": "500m"}},
        })),
        Vec::<String>::new()
    );
}
