//! `operator/deploy/operator.yaml` gives the operator every permission the reconciler uses.

use crate::reconcile::PERMISSIONS;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
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

#[test]
fn cluster_role_grants_what_the_reconciler_uses() {
    let role: ClusterRole = of_kind("ClusterRole");
    let rules = role.rules.unwrap_or_default();
    let mut missing = Vec::new();
    for (group, resource, verbs) in PERMISSIONS {
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
    assert!(missing.is_empty(), "the ClusterRole lacks: {missing:?}");
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
