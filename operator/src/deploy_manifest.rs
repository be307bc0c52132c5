//! `operator/deploy/operator.yaml` gives the operator every permission the reconciler and
//! leader election use, and runs it the way `main.rs` expects.

use crate::reconcile::{LEADER_ELECTION_PERMISSIONS, PERMISSIONS};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde::Deserialize;
use serde_json::Value;

fn documents() -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(include_str!("../deploy/operator.yaml"))
        .map(|d| Value::deserialize(d).expect("YAML document"))
        .collect()
}

fn of_kind<T: serde::de::DeserializeOwned>(kind: &str) -> T {
    let doc = documents()
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/operator.yaml"));
    serde_json::from_value(doc).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

/// The permissions in `wanted` that `rules` do not grant.
fn missing(rules: &[PolicyRule], wanted: &[(&str, &str, &[&str])]) -> Vec<String> {
    let mut missing = Vec::new();
    for (group, resource, verbs) in wanted {
        for verb in *verbs {
            let granted = rules.iter().any(|r| {
                let has = |list: &Option<Vec<String>>, want: &str| {
                    list.iter().flatten().any(|x| x == want || x == "*")
                };
                has(&r.api_groups, group)
                    && has(&r.resources, resource)
                    && r.verbs.iter().any(|v| v == verb || v == "*")
            });
            if !granted {
                missing.push(format!("{verb} {group}/{resource}"));
            }
        }
    }
    missing
}

#[test]
fn cluster_role_grants_what_the_reconciler_uses() {
    let role: ClusterRole = of_kind("ClusterRole");
    let missing = missing(&role.rules.unwrap_or_default(), PERMISSIONS);
    assert!(missing.is_empty(), "the ClusterRole lacks: {missing:?}");
}

#[test]
fn role_in_the_operator_namespace_grants_what_leader_election_uses() {
    let role: Role = of_kind("Role");
    let missing = missing(&role.rules.unwrap_or_default(), LEADER_ELECTION_PERMISSIONS);
    assert!(missing.is_empty(), "the Role lacks: {missing:?}");
    let binding: RoleBinding = of_kind("RoleBinding");
    assert_eq!(Some(binding.role_ref.name), role.metadata.name);
    assert_eq!(binding.role_ref.kind, "Role");
    let deployment: Deployment = of_kind("Deployment");
    assert_eq!(role.metadata.namespace, deployment.metadata.namespace);
    assert_eq!(binding.metadata.namespace, deployment.metadata.namespace);
    let subject = &binding.subjects.expect("subjects")[0];
    let pod = deployment.spec.template.spec.expect("pod spec");
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some(subject.name.as_str())
    );
}

#[test]
fn deployment_elects_a_leader_and_probes_the_http_endpoint() {
    let deployment: Deployment = of_kind("Deployment");
    let pod = deployment.spec.template.spec.expect("pod spec");
    let container = &pod.containers[0];
    let args = container.args.clone().expect("args");
    assert!(args.iter().any(|a| a == "--leader-election"), "{args:?}");
    let env = container.env.clone().expect("env");
    for (name, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let var = env
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name}"));
        let path = var
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(path, Some(field), "{name}");
    }
    let ports = container.ports.clone().expect("ports");
    assert_eq!(
        (ports[0].name.as_deref(), ports[0].container_port),
        (Some("http"), 8080)
    );
    for (probe, path) in [
        (container.liveness_probe.as_ref(), "/healthz"),
        (container.readiness_probe.as_ref(), "/readyz"),
    ] {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .expect("an HTTP probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("http".into())
        );
    }
}

#[test]
fn binding_and_deployment_use_the_service_account() {
    let binding: ClusterRoleBinding = of_kind("ClusterRoleBinding");
    let role: ClusterRole = of_kind("ClusterRole");
    assert_eq!(Some(binding.role_ref.name), role.metadata.name);
    let subject = &binding.subjects.expect("subjects")[0];
    let deployment: Deployment = of_kind("Deployment");
    let pod = deployment.spec.template.spec.expect("pod spec");
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some(subject.name.as_str())
    );
    assert_eq!(deployment.metadata.namespace, subject.namespace);
    let args = pod.containers[0].args.clone().expect("args");
    assert_eq!(args[0], "run");
}
