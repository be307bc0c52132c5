//! How Starling is installed: the Helm chart `charts/starling-operator`, the plain manifests in
//! `deploy/` rendered from it, and the images the `Dockerfile` builds. The chart is linted and
//! rendered with the real `helm` (v4); the rendered objects are checked against what the
//! operator needs (its RBAC list, its command line, its ports); the Dockerfile against the
//! chart, the CRD defaults and the workspace.
//!
//! Needs helm v4: `scripts/install-helm.sh` installs it (`HELM` or `STARLING_TOOLS_DIR` point
//! at a copy outside `PATH`). Without it these tests fail; they never skip.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use starling_operator::crd::MqttCluster;
use starling_operator::reconcile::{LEADER_ELECTION_PERMISSIONS, PERMISSIONS};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const RELEASE: &str = "starling";
const NAMESPACE: &str = "starling-system";
const FULLNAME: &str = "starling-operator";
const OPERATOR_IMAGE: &str = "ghcr.io/starling-mqtt/starling-operator";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn chart() -> PathBuf {
    repo().join("charts/starling-operator")
}

/// The helm binary: `HELM`, else `STARLING_TOOLS_DIR/helm`, else `helm` on `PATH`; it must
/// run and be v4.
fn helm() -> PathBuf {
    let path = std::env::var_os("HELM")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("STARLING_TOOLS_DIR").map(|d| PathBuf::from(d).join("helm")))
        .unwrap_or_else(|| PathBuf::from("helm"));
    let version = Command::new(&path)
        .args(["version", "--template", "{{.Version}}"])
        .output();
    match version {
        Ok(out) if out.status.success() && out.stdout.starts_with(b"v4.") => path,
        Ok(out) => panic!(
            "{} is not helm v4 ({}); run scripts/install-helm.sh",
            path.display(),
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(e) => panic!(
            "helm v4 is needed for the chart tests and `{}` does not run ({e}); \
             run scripts/install-helm.sh (or set HELM=/path/to/helm)",
            path.display()
        ),
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(helm())
        .args(args)
        .current_dir(repo())
        .output()
        .expect("helm runs")
}

fn ci_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .expect("charts/starling-operator/ci")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    files.sort();
    files
}

fn ci(name: &str) -> String {
    format!("charts/starling-operator/ci/{name}-values.yaml")
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("rendered YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// `helm template starling charts/starling-operator -n starling-system` with these values
/// files and extra arguments, as JSON documents.
fn render(values: &[&str], extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "template",
        RELEASE,
        "charts/starling-operator",
        "--namespace",
        NAMESPACE,
    ];
    for v in values {
        args.extend(["-f", v]);
    }
    args.extend(extra);
    let out = run(&args);
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    documents(&String::from_utf8(out.stdout).expect("UTF-8"))
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().expect("kind").to_string())
        .collect()
}

fn all<T: DeserializeOwned>(docs: &[Value], kind: &str) -> Vec<T> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| serde_json::from_value(d.clone()).unwrap_or_else(|e| panic!("{kind}: {e}")))
        .collect()
}

fn one<T: DeserializeOwned>(docs: &[Value], kind: &str) -> T {
    let mut found = all(docs, kind);
    assert_eq!(found.len(), 1, "exactly one {kind}");
    found.remove(0)
}

type Grant = (String, String, String);

fn grants(list: &[(&str, &str, &[&str])]) -> BTreeSet<Grant> {
    list.iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(|v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect()
}

/// Every (group, resource, verb) the rules grant. Wildcards and non-resource URLs are refused:
/// least privilege means naming each one.
fn granted(rules: &[PolicyRule]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in rules {
        assert!(rule.non_resource_urls.is_none(), "{rule:?}");
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    for s in [group, resource, verb] {
                        assert!(!s.contains('*'), "wildcard in {rule:?}");
                    }
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

/// What the operator needs in the namespaces it watches.
fn watch_permissions() -> BTreeSet<Grant> {
    grants(PERMISSIONS)
}

fn operator_container(deployment: &Deployment) -> Container {
    let pod = deployment.spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.containers.len(), 1);
    pod.containers[0].clone()
}

fn args_of(deployment: &Deployment) -> Vec<String> {
    operator_container(deployment).args.expect("args")
}

fn labels(doc: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(doc["metadata"]["labels"].clone()).unwrap_or_default()
}

#[test]
fn chart_version_and_app_version_are_the_workspace_version() {
    let text = std::fs::read_to_string(chart().join("Chart.yaml")).expect("Chart.yaml");
    let chart: Value = serde_yaml_ng::from_str(&text).expect("Chart.yaml is YAML");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(chart["version"], version, "Chart.yaml version");
    assert_eq!(chart["appVersion"], version, "Chart.yaml appVersion");
    assert_eq!(chart["name"], "starling-operator");
}

#[test]
fn chart_crds_are_the_generated_crds() {
    let list = |dir: PathBuf| -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| {
                let path = e.expect("dir entry").path();
                let name = path
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned();
                (name, std::fs::read(&path).expect("readable"))
            })
            .collect()
    };
    let top = list(repo().join("crds"));
    let chart = list(chart().join("crds"));
    assert!(!top.is_empty());
    assert!(
        top == chart,
        "charts/starling-operator/crds/ differs from crds/; run scripts/sync-chart-crds.sh"
    );
}

#[test]
fn lint_passes_with_the_defaults_and_every_ci_values_file() {
    let files = ci_files();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    for want in [
        "default-values.yaml",
        "single-namespace-values.yaml",
        "leader-election-values.yaml",
        "cluster-values.yaml",
        "metrics-values.yaml",
        "monitoring-values.yaml",
    ] {
        assert!(names.iter().any(|n| n == want), "ci/{want} is missing");
    }
    let mut runs: Vec<Vec<String>> = vec![vec![]];
    runs.extend(
        files
            .iter()
            .map(|f| vec!["-f".into(), f.to_string_lossy().into_owned()]),
    );
    for extra in runs {
        let mut args = vec!["lint", "--strict", "charts/starling-operator"];
        args.extend(extra.iter().map(String::as_str));
        let out = run(&args);
        assert!(
            out.status.success(),
            "helm {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Every ci file renders too (lint does not show what it rendered).
        let values: Vec<&str> = extra.iter().skip(1).map(String::as_str).collect();
        assert!(!render(&values, &[]).is_empty());
    }
}

#[test]
fn defaults_install_the_operator_cluster_wide() {
    let docs = render(&[], &[]);
    assert_eq!(
        kinds(&docs),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "ServiceAccount"
        ]
        .map(String::from)
        .into()
    );

    let version = env!("CARGO_PKG_VERSION");
    for doc in &docs {
        let labels = labels(doc);
        let name = &doc["metadata"]["name"];
        for (key, value) in [
            ("app.kubernetes.io/name", "starling-operator"),
            ("app.kubernetes.io/instance", RELEASE),
            ("app.kubernetes.io/component", "operator"),
            ("app.kubernetes.io/part-of", "starling"),
            ("app.kubernetes.io/managed-by", "Helm"),
            ("app.kubernetes.io/version", version),
        ] {
            assert_eq!(
                labels.get(key).map(String::as_str),
                Some(value),
                "{name} {key}"
            );
        }
        assert_eq!(
            labels.get("helm.sh/chart"),
            Some(&format!("starling-operator-{version}"))
        );
        assert_eq!(doc["metadata"]["name"], FULLNAME);
    }

    let role: ClusterRole = one(&docs, "ClusterRole");
    assert_eq!(
        granted(&role.rules.unwrap_or_default()),
        watch_permissions(),
        "the ClusterRole grants exactly what the reconciler uses"
    );
    let binding: ClusterRoleBinding = one(&docs, "ClusterRoleBinding");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(binding.role_ref.name), role.metadata.name);
    let account: ServiceAccount = one(&docs, "ServiceAccount");
    let subjects = binding.subjects.expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), account.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(account.metadata.namespace.as_deref(), Some(NAMESPACE));

    let deployment: Deployment = one(&docs, "Deployment");
    let spec = &deployment.spec;
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(
        spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("Recreate"),
        "one operator at a time without leader election"
    );
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.service_account_name, account.metadata.name);
    let selector = spec.selector.match_labels.clone().expect("selector");
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .expect("labels");
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));

    let security = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(security.run_as_non_root, Some(true));
    assert!(security.run_as_user.is_some_and(|u| u > 0));
    assert_eq!(
        security.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );

    let container = operator_container(&deployment);
    assert_eq!(
        container.image.as_deref(),
        Some(format!("{OPERATOR_IMAGE}:{version}").as_str()),
        "the image tag defaults to the appVersion"
    );
    let sc = container
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    let requests = container
        .resources
        .as_ref()
        .and_then(|r| r.requests.clone())
        .expect("requests");
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));

    let ports = container.ports.clone().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].name.as_deref(), Some("http"));
    assert_eq!(ports[0].container_port, 8080);
    for (probe, path) in [
        (container.liveness_probe.as_ref(), "/healthz"),
        (container.readiness_probe.as_ref(), "/readyz"),
    ] {
        let get = probe.and_then(|p| p.http_get.clone()).expect("HTTP probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            serde_json::to_value(&get.port).expect("port"),
            json!("http")
        );
    }

    // The operator's command line: `run` with the HTTP endpoint on the probed port; no
    // namespace (all of them) and no leader election.
    assert_eq!(
        args_of(&deployment),
        [
            "run",
            "--http-bind=0.0.0.0:8080",
            "--log=info",
            "--log-json"
        ]
    );
    let env: BTreeMap<String, String> = container
        .env
        .clone()
        .expect("env")
        .into_iter()
        .map(|e| {
            let field = e
                .value_from
                .and_then(|f| f.field_ref)
                .map(|f| f.field_path)
                .expect("downward API");
            (e.name, field)
        })
        .collect();
    assert_eq!(
        env,
        [
            ("POD_NAME".to_string(), "metadata.name".to_string()),
            (
                "POD_NAMESPACE".to_string(),
                "metadata.namespace".to_string()
            )
        ]
        .into()
    );
}

#[test]
fn single_namespace_gets_a_role_there_and_no_cluster_role() {
    let docs = render(&[&ci("single-namespace")], &[]);
    assert_eq!(
        kinds(&docs),
        ["Deployment", "Role", "RoleBinding", "ServiceAccount"]
            .map(String::from)
            .into()
    );
    let role: Role = one(&docs, "Role");
    assert_eq!(role.metadata.namespace.as_deref(), Some("iot"));
    assert_eq!(
        granted(&role.rules.unwrap_or_default()),
        watch_permissions()
    );
    let binding: RoleBinding = one(&docs, "RoleBinding");
    assert_eq!(binding.metadata.namespace.as_deref(), Some("iot"));
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(Some(binding.role_ref.name), role.metadata.name);
    let subject = &binding.subjects.expect("subjects")[0];
    assert_eq!(
        subject.namespace.as_deref(),
        Some(NAMESPACE),
        "the operator's account"
    );

    let deployment: Deployment = one(&docs, "Deployment");
    assert_eq!(
        args_of(&deployment),
        [
            "run",
            "--http-bind=0.0.0.0:8080",
            "--log=info",
            "--log-json",
            "--namespace=iot"
        ]
    );
}

#[test]
fn leader_election_runs_two_replicas_with_a_lease_role() {
    let docs = render(&[&ci("leader-election")], &[]);
    assert_eq!(
        kinds(&docs),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Role",
            "RoleBinding",
            "ServiceAccount"
        ]
        .map(String::from)
        .into()
    );
    let deployment: Deployment = one(&docs, "Deployment");
    let spec = &deployment.spec;
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(
        spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("RollingUpdate")
    );
    assert_eq!(
        args_of(&deployment),
        [
            "run",
            "--http-bind=0.0.0.0:8080",
            "--log=info",
            "--log-json",
            "--leader-election",
            "--lease-name=starling-operator",
            "--lease-namespace=starling-system"
        ]
    );

    let role: Role = one(&docs, "Role");
    assert_eq!(role.metadata.namespace.as_deref(), Some(NAMESPACE));
    let rules = role.rules.unwrap_or_default();
    assert_eq!(granted(&rules), grants(LEADER_ELECTION_PERMISSIONS));
    // Reading and renewing are limited to the one Lease; only create cannot be.
    for rule in &rules {
        if rule.verbs.iter().any(|v| v != "create") {
            assert_eq!(
                rule.resource_names,
                Some(vec!["starling-operator".into()]),
                "{rule:?}"
            );
        }
    }
    let binding: RoleBinding = one(&docs, "RoleBinding");
    assert_eq!(Some(binding.role_ref.name), role.metadata.name);
    // The watch permissions are unchanged.
    let cluster_role: ClusterRole = one(&docs, "ClusterRole");
    assert_eq!(
        granted(&cluster_role.rules.unwrap_or_default()),
        watch_permissions()
    );
}

#[test]
fn cluster_values_create_an_mqtt_cluster() {
    let docs = render(&[&ci("cluster")], &[]);
    assert!(kinds(&docs).contains("MqttCluster"));
    let doc = docs
        .iter()
        .find(|d| d["kind"] == "MqttCluster")
        .expect("MqttCluster");
    assert_eq!(doc["apiVersion"], "mqtt.starling.dev/v1alpha1");
    let cluster: MqttCluster = serde_json::from_value(doc.clone()).expect("an MqttCluster");
    assert_eq!(cluster.metadata.name.as_deref(), Some("broker"));
    assert_eq!(cluster.metadata.namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(cluster.spec.replicas, 3);
    let values: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join(ci("cluster"))).expect("ci file"),
    )
    .expect("YAML");
    // The spec is passed as written, with the chart's default refusing anonymous clients
    // merged in (Helm merges values maps) unless the values say otherwise.
    let mut expected = values["cluster"]["spec"].clone();
    expected["auth"]["allowAnonymous"] = json!(false);
    assert_eq!(doc["spec"], expected);
    let docs = render(
        &[&ci("cluster")],
        &["--set", "cluster.spec.auth.allowAnonymous=true"],
    );
    let doc = docs
        .iter()
        .find(|d| d["kind"] == "MqttCluster")
        .expect("MqttCluster");
    assert_eq!(doc["spec"]["auth"], json!({"allowAnonymous": true}));

    // The default spec: every CRD default but anonymous access, in the watched namespace.
    let docs = render(
        &[],
        &[
            "--set",
            "cluster.enabled=true",
            "--set",
            "watchNamespace=iot",
        ],
    );
    let doc = docs
        .iter()
        .find(|d| d["kind"] == "MqttCluster")
        .expect("MqttCluster");
    assert_eq!(doc["spec"], json!({"auth": {"allowAnonymous": false}}));
    assert_eq!(doc["metadata"]["namespace"], "iot");
    assert_eq!(doc["metadata"]["name"], "starling");
}

#[test]
fn metrics_values_add_a_service_and_a_service_monitor() {
    let docs = render(&[&ci("metrics")], &[]);
    assert!(kinds(&docs).is_superset(&["Service", "ServiceMonitor"].map(String::from).into()));
    let service: Service = one(&docs, "Service");
    let deployment: Deployment = one(&docs, "Deployment");
    let spec = service.spec.as_ref().expect("spec");
    let selector = spec.selector.clone().expect("selector");
    assert_eq!(
        Some(&selector),
        deployment.spec.selector.match_labels.as_ref(),
        "the Service selects the operator pods"
    );
    let port = &spec.ports.as_ref().expect("ports")[0];
    assert_eq!(port.name.as_deref(), Some("http"));
    assert_eq!(port.port, 8080);
    assert_eq!(
        serde_json::to_value(&port.target_port).expect("port"),
        json!("http")
    );

    let monitor = docs
        .iter()
        .find(|d| d["kind"] == "ServiceMonitor")
        .expect("ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        monitor["spec"]["endpoints"],
        json!([{"port": "http", "path": "/metrics", "interval": "15s"}])
    );
    let wanted: BTreeMap<String, String> =
        serde_json::from_value(monitor["spec"]["selector"]["matchLabels"].clone()).expect("labels");
    let service_labels = service.metadata.labels.clone().expect("labels");
    assert!(
        wanted.iter().all(|(k, v)| service_labels.get(k) == Some(v)),
        "selects the Service"
    );
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"],
        json!([NAMESPACE])
    );
}

#[test]
fn monitoring_values_add_the_alert_rules_and_the_grafana_dashboard() {
    let docs = render(&[&ci("monitoring")], &[]);
    assert!(kinds(&docs).is_superset(&["ConfigMap", "PrometheusRule"].map(String::from).into()));

    // The PrometheusRule's spec is the plain rules file, as written.
    let rule = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["namespace"], NAMESPACE);
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        rule["metadata"]["labels"]["app.kubernetes.io/part-of"],
        "starling"
    );
    let file: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(chart().join("files/starling-alerts.yaml")).expect("rules file"),
    )
    .expect("the rules file is YAML");
    assert!(!file["groups"].as_array().expect("groups").is_empty());
    assert_eq!(
        rule["spec"], file,
        "the PrometheusRule holds the rules file"
    );

    // The dashboard ConfigMap: labelled for Grafana's sidecar, in the namespace asked for,
    // holding the dashboard JSON unchanged.
    let config_map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("ConfigMap");
    assert_eq!(config_map["metadata"]["namespace"], "monitoring");
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(
        config_map["metadata"]["annotations"]["grafana_folder"],
        "Starling"
    );
    let data = config_map["data"].as_object().expect("data");
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["starling.json"],
        "one dashboard"
    );
    let held: Value = serde_json::from_str(data["starling.json"].as_str().expect("a string"))
        .expect("the ConfigMap holds valid JSON");
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(chart().join("files/starling-dashboard.json"))
            .expect("dashboard file"),
    )
    .expect("the dashboard file is JSON");
    assert_eq!(held, file, "the ConfigMap holds the dashboard file");
    assert_eq!(held["uid"], "starling-overview");

    // Another sidecar label, and the release namespace by default.
    let docs = render(
        &[],
        &[
            "--set",
            "monitoring.grafanaDashboard.enabled=true",
            "--set",
            "monitoring.grafanaDashboard.label=dashboards",
            "--set",
            "monitoring.grafanaDashboard.labelValue=starling",
        ],
    );
    assert!(
        !kinds(&docs).contains("PrometheusRule"),
        "each is enabled alone"
    );
    let config_map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("ConfigMap");
    assert_eq!(config_map["metadata"]["namespace"], NAMESPACE);
    assert_eq!(config_map["metadata"]["labels"]["dashboards"], "starling");
    assert!(config_map["metadata"]["labels"]["grafana_dashboard"].is_null());
    assert!(config_map["metadata"]["annotations"].is_null());
}

#[test]
fn schema_rejects_bad_values() {
    let dir = std::env::temp_dir().join(format!("starling-chart-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for (values, complaint) in [
        ("replicas: two\n", "/replicas"),
        ("replicas: 0\n", "/replicas"),
        ("replicas: 2\n", "/leaderElection/enabled"),
        ("watchNamespace: Not_A_Namespace\n", "/watchNamespace"),
        (
            "image:\n  repository: x\n  pullPolicy: Sometimes\n",
            "/image/pullPolicy",
        ),
        ("replica: 1\n", "replica"),
        ("cluster:\n  enabled: true\n  spec: [1]\n", "/cluster/spec"),
        (
            "monitoring:\n  prometheusRule:\n    enabled: \"yes\"\n",
            "/monitoring/prometheusRule/enabled",
        ),
        (
            "monitoring:\n  grafanaDashboard:\n    label: \"\"\n",
            "/monitoring/grafanaDashboard/label",
        ),
    ] {
        let file = dir.join("bad-values.yaml");
        std::fs::write(&file, values).expect("write values");
        let file = file.to_string_lossy().into_owned();
        for command in ["template", "lint"] {
            let mut args = vec![command];
            if command == "template" {
                args.push(RELEASE);
            }
            args.extend(["charts/starling-operator", "-f", &file]);
            let out = run(&args);
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!out.status.success(), "helm {command} accepted {values:?}");
            assert!(
                said.contains(complaint),
                "helm {command} on {values:?} said: {said}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn deploy_manifests_are_rendered_from_the_chart() {
    let dir = std::env::temp_dir().join(format!("starling-deploy-test-{}", std::process::id()));
    let fresh = dir.join("starling-operator.yaml");
    let status = Command::new(repo().join("scripts/render-deploy.sh"))
        .arg(&fresh)
        .env("HELM", helm())
        .status()
        .expect("scripts/render-deploy.sh runs");
    assert!(status.success());
    let rendered = std::fs::read_to_string(&fresh).expect("rendered");
    std::fs::remove_dir_all(&dir).expect("clean up");
    let committed =
        std::fs::read_to_string(repo().join("deploy/starling-operator.yaml")).expect("deploy/");
    assert!(
        rendered == committed,
        "deploy/starling-operator.yaml is stale; run scripts/render-deploy.sh"
    );

    let docs = documents(&committed);
    assert_eq!(docs[0]["kind"], "Namespace", "the namespace comes first");
    assert_eq!(docs[0]["metadata"]["name"], NAMESPACE);
    assert_eq!(docs[1]["kind"], "CustomResourceDefinition", "then the CRD");
    let crd: Value =
        serde_yaml_ng::from_str(include_str!("../../crds/mqttcluster.yaml")).expect("CRD");
    assert_eq!(docs[1], crd);
    for doc in &docs[2..] {
        if !doc["kind"]
            .as_str()
            .is_some_and(|k| k.starts_with("Cluster"))
        {
            assert_eq!(doc["metadata"]["namespace"], NAMESPACE, "{}", doc["kind"]);
        }
    }
    let role: ClusterRole = one(&docs, "ClusterRole");
    assert_eq!(
        granted(&role.rules.unwrap_or_default()),
        watch_permissions()
    );
    let deployment: Deployment = one(&docs, "Deployment");
    assert_eq!(args_of(&deployment)[0], "run");
}

/// One stage of the Dockerfile: its name and its instructions, continuation lines joined.
struct Stage {
    from: String,
    name: String,
    instructions: Vec<String>,
}

fn dockerfile() -> Vec<Stage> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for instruction in joined.into_iter().filter(|i| !i.is_empty()) {
        if let Some(rest) = instruction.strip_prefix("FROM ") {
            let (from, name) = rest.split_once(" AS ").expect("every stage is named");
            stages.push(Stage {
                from: from.trim().to_string(),
                name: name.trim().to_string(),
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push(instruction);
        }
    }
    stages
}

fn stage<'a>(stages: &'a [Stage], name: &str) -> &'a Stage {
    stages
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no stage {name} in the Dockerfile"))
}

fn instruction<'a>(stage: &'a Stage, keyword: &str) -> Vec<&'a str> {
    stage
        .instructions
        .iter()
        .filter_map(|i| i.strip_prefix(keyword).map(str::trim))
        .collect()
}

fn exposed(stage: &Stage) -> BTreeSet<String> {
    instruction(stage, "EXPOSE ")
        .iter()
        .flat_map(|e| e.split_whitespace().map(String::from))
        .collect()
}

#[test]
fn dockerfile_builds_both_images_as_the_chart_and_the_operator_expect() {
    let stages = dockerfile();
    let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        text.contains(&format!("ARG VERSION={version}\n")),
        "the images are labelled with the workspace version"
    );

    // The release build the README documents, one package per image.
    for (build, package) in [
        ("build-broker", "starling-broker"),
        ("build-operator", "starling-operator"),
    ] {
        let runs = instruction(stage(&stages, build), "RUN ");
        assert!(
            runs.iter()
                .any(|r| r.contains(&format!("cargo build --release --locked -p {package} "))),
            "{build} runs cargo build --release --locked -p {package}: {runs:?}"
        );
    }
    // Rust new enough for every crate (the operator needs the most).
    let rust: Vec<u32> = text
        .lines()
        .find_map(|l| l.strip_prefix("ARG RUST_VERSION="))
        .expect("ARG RUST_VERSION")
        .split('.')
        .map(|n| n.parse().expect("number"))
        .collect();
    assert!(
        rust >= vec![1, 89],
        "Rust {rust:?} is older than the operator's rust-version 1.89"
    );

    let values: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(chart().join("values.yaml")).expect("values.yaml"),
    )
    .expect("YAML");
    let deployment: Deployment = one(&render(&[], &[]), "Deployment");
    let pod_user = deployment
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.security_context.as_ref())
        .and_then(|s| s.run_as_user)
        .expect("runAsUser");
    let uid = starling_operator::resources::statefulset::BROKER_UID;
    assert_eq!(
        pod_user, uid,
        "the chart and the broker pods run as the same UID"
    );

    for (name, binary, repository) in [
        (
            "broker",
            "starling-broker",
            starling_operator::crd::DEFAULT_IMAGE_REPOSITORY.to_string(),
        ),
        (
            "operator",
            "starling-operator",
            values["image"]["repository"]
                .as_str()
                .expect("repository")
                .to_string(),
        ),
    ] {
        let runtime = stage(&stages, name);
        assert!(
            runtime
                .from
                .starts_with("gcr.io/distroless/cc-debian12:nonroot"),
            "{name}"
        );
        assert_eq!(
            instruction(runtime, "USER "),
            [format!("{uid}:{uid}")],
            "{name}"
        );
        assert_eq!(instruction(runtime, "STOPSIGNAL "), ["SIGTERM"], "{name}");
        assert_eq!(
            instruction(runtime, "ENTRYPOINT "),
            [format!("[\"/usr/local/bin/{binary}\"]")],
            "{name}"
        );
        assert!(
            instruction(runtime, "COPY ")
                .iter()
                .any(|c| c.ends_with(&format!("/out/{binary} /usr/local/bin/{binary}"))),
            "{name} copies {binary}"
        );
        let labels = instruction(runtime, "LABEL ").join(" ");
        assert!(labels.contains(&format!("org.opencontainers.image.title=\"{binary}\"")));
        assert!(labels.contains("org.opencontainers.image.version=\"${VERSION}\""));
        assert!(labels.contains("org.opencontainers.image.source="));
        assert!(
            text.lines()
                .any(|l| l.contains(&format!("--target {name} "))
                    && l.contains(&format!("-t {repository}:{version} "))),
            "the Dockerfile's header builds {repository}:{version} with --target {name}"
        );
    }

    // The broker exposes every port an MqttCluster uses by default.
    let spec: starling_operator::crd::MqttClusterSpec = serde_json::from_value(json!({
        "listeners": {"tls": {"secretName": "x"}, "websocket": {}}
    }))
    .expect("spec");
    let spec = serde_json::to_value(spec).expect("JSON");
    let port = |v: &Value| v.as_i64().expect("port");
    let want: BTreeSet<String> = [
        format!("{}/tcp", port(&spec["listeners"]["mqtt"]["port"])),
        format!("{}/tcp", port(&spec["listeners"]["tls"]["port"])),
        format!("{}/tcp", port(&spec["listeners"]["websocket"]["port"])),
        format!("{}/tcp", port(&spec["broker"]["adminPort"])),
        format!("{}/tcp", port(&spec["gossip"]["port"])),
        format!("{}/udp", port(&spec["gossip"]["port"])),
    ]
    .into();
    assert_eq!(exposed(stage(&stages, "broker")), want);

    // The operator exposes the port the chart probes.
    let container = operator_container(&deployment);
    let http = container.ports.expect("ports")[0].container_port;
    assert_eq!(
        exposed(stage(&stages, "operator")),
        [format!("{http}/tcp")].into()
    );
    assert_eq!(
        instruction(stage(&stages, "operator"), "CMD "),
        ["[\"run\"]"]
    );
}

#[test]
fn dockerignore_keeps_build_output_and_history_out_of_the_context() {
    let text = std::fs::read_to_string(repo().join(".dockerignore")).expect(".dockerignore");
    let entries: BTreeSet<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    for want in ["target", "**/target", ".git"] {
        assert!(entries.contains(want), ".dockerignore lacks {want}");
    }
    // Everything the build reads stays in: the workspace members and the CRD.
    for member in [
        "config",
        "broker",
        "bench",
        "e2e",
        "operator",
        "crds",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        assert!(!entries.contains(member), ".dockerignore drops {member}");
    }
}
