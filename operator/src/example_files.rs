//! The example manifests in `operator/examples/` are valid: the CRD's schema and CEL rules
//! accept them, they name no field the API server would drop, and the operator builds every
//! child object from them.

use crate::crd::{MqttCluster, RedisMode, ServiceType};
use crate::resources::{desired, Cluster};
use crate::schema_check::{cel_errors, defaults, structural_errors};
use serde::Deserialize;
use serde_json::Value;

const EXAMPLES: &[(&str, &str)] = &[
    (
        "mqttcluster-minimal.yaml",
        include_str!("../examples/mqttcluster-minimal.yaml"),
    ),
    (
        "mqttcluster.yaml",
        include_str!("../examples/mqttcluster.yaml"),
    ),
];

/// Every document of every example, as JSON, with the file it came from.
fn documents() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (file, text) in EXAMPLES {
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{file} document {i} is not YAML: {e}"));
            out.push((format!("{file}#{i}"), value));
        }
    }
    out
}

/// The cluster as the API server would store and hand it over: defaults applied, uid set.
fn stored(doc: &Value) -> MqttCluster {
    let mut cluster: MqttCluster =
        serde_json::from_value(defaults(doc)).expect("example deserializes");
    cluster.metadata.uid = Some("11111111-2222-3333-4444-555555555555".into());
    cluster
        .metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    cluster
}

#[test]
fn examples_pass_schema_and_cel_validation() {
    let docs = documents();
    assert_eq!(docs.len(), 3, "every example document is checked");
    for (name, doc) in &docs {
        assert_eq!(doc["apiVersion"], "mqtt.starling.dev/v1alpha1", "{name}");
        assert_eq!(doc["kind"], "MqttCluster", "{name}");
        assert_eq!(structural_errors(doc), Vec::<String>::new(), "{name}");
        assert_eq!(cel_errors(doc), Vec::<String>::new(), "{name}");
    }
}

#[test]
fn operator_builds_every_child_from_the_examples() {
    for (name, doc) in documents() {
        let cluster = stored(&doc);
        let c = Cluster::new(&cluster).unwrap_or_else(|e| panic!("{name}: {e}"));
        let children = desired(&c).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            children.stateful_set.spec.replicas,
            Some(cluster.spec.replicas),
            "{name}"
        );
    }
}

#[test]
fn example_values_are_read_as_written() {
    let docs = documents();
    let full = stored(&docs[1].1);
    assert_eq!(full.spec.replicas, 5);
    assert_eq!(
        full.spec
            .listeners
            .tls
            .as_ref()
            .map(|t| t.secret_name.as_str()),
        Some("mqtt-cert")
    );
    assert!(!full.spec.auth.allow_anonymous);
    assert!(full.spec.monitoring.service_monitor.enabled);
    assert!(
        matches!(full.spec.redis.mode(), Some(RedisMode::Managed(m)) if m.persistence.is_some())
    );

    let external = stored(&docs[2].1);
    assert_eq!(external.spec.service.type_, ServiceType::ClusterIP);
    assert!(matches!(
        external.spec.redis.mode(),
        Some(RedisMode::External(_))
    ));

    // The minimal example takes every default but anonymous access (a generated user instead).
    let minimal = stored(&docs[0].1);
    let mut expected = crate::crd::MqttClusterSpec::default();
    expected.auth.allow_anonymous = false;
    assert_eq!(minimal.spec, expected);
}

/// The Secrets and ConfigMaps a document names: `secretName`s and the `name` of every
/// `...SecretRef` and `...ConfigMapRef`.
fn referenced_names(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let named = key.ends_with("SecretRef") || key.ends_with("ConfigMapRef");
                match (key.as_str(), v) {
                    ("secretName", Value::String(name)) => out.push(name.clone()),
                    (_, Value::Object(r)) if named => {
                        if let Some(Value::String(name)) = r.get("name") {
                            out.push(name.clone());
                        }
                    }
                    _ => referenced_names(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| referenced_names(v, out)),
        _ => {}
    }
}

/// A user who follows an example's header has every Secret and ConfigMap it needs: each one
/// it names has a `kubectl ... create` line there (the full example's `redis-credentials` had
/// none, and its pods sat in CreateContainerConfigError).
#[test]
fn example_headers_create_every_secret_and_config_map_they_name() {
    for (file, text) in EXAMPLES {
        let header: Vec<&str> = text
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter(|l| l.contains("kubectl") && l.contains(" create "))
            .collect();
        let mut names = Vec::new();
        for (name, doc) in documents() {
            if name.starts_with(&format!("{file}#")) {
                referenced_names(&doc, &mut names);
            }
        }
        for name in names {
            assert!(
                header
                    .iter()
                    .any(|l| l.split_whitespace().any(|word| word == name)),
                "{file} names {name:?} but its header does not say how to create it"
            );
        }
    }
}

#[test]
fn autoscaler_example_targets_an_example_cluster_through_the_scale_subresource() {
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    use kube::Resource;

    let text = include_str!("../examples/mqttcluster-hpa.yaml");
    let value: Value = serde_yaml_ng::from_str(text).expect("YAML");
    assert_eq!(value["apiVersion"], "autoscaling/v2");
    assert_eq!(value["kind"], "HorizontalPodAutoscaler");
    let hpa: HorizontalPodAutoscaler =
        serde_json::from_value(value).expect("an autoscaling/v2 HPA");
    let spec = hpa.spec;
    let target = &spec.scale_target_ref;
    assert_eq!(target.kind, MqttCluster::kind(&()));
    assert_eq!(
        target.api_version.as_deref(),
        Some(MqttCluster::api_version(&()).as_ref())
    );

    let cluster = documents()
        .into_iter()
        .map(|(_, doc)| stored(&doc))
        .find(|c| c.metadata.name.as_deref() == Some(target.name.as_str()))
        .expect("the HPA targets a cluster from the examples");
    assert_eq!(hpa.metadata.namespace, cluster.metadata.namespace);
    assert!(
        spec.min_replicas.is_some_and(|m| m >= 1)
            && spec.max_replicas >= spec.min_replicas.unwrap_or(1)
    );
    // CPU utilisation is measured against requests: the target's pods must have them.
    let uses_cpu = spec
        .metrics
        .iter()
        .flatten()
        .any(|m| m.resource.as_ref().is_some_and(|r| r.name == "cpu"));
    let requests_cpu = cluster
        .spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .is_some_and(|r| r.contains_key("cpu"));
    assert!(!uses_cpu || requests_cpu, "the target cluster requests CPU");

    // The CRD serves the scale subresource the HPA goes through: crd/tests.rs tests it.
}
