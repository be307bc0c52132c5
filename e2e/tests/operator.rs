//! The operator against a real Kubernetes cluster (kind, k3d, minikube, ...). Ignored by default:
//!
//! ```sh
//! cargo build -p starling-operator
//! KUBECONFIG=~/.kube/config cargo test -p e2e --test operator -- --ignored --nocapture
//! ```
//!
//! Each test applies the CRD from `crds/mqttcluster.yaml`, creates a fresh namespace, starts
//! the `starling-operator` binary of this workspace as a child process watching only that
//! namespace (`STARLING_OPERATOR_BIN` names another binary; `STARLING_E2E_OPERATOR=external`
//! starts none, for an operator already running in the cluster), and deletes the namespace
//! at the end. Broker pods become ready only with a published broker image:
//! `STARLING_E2E_BROKER_IMAGE=repo:tag` sets it and makes the test wait for `Ready`; without
//! it the test prints what it could not check and checks that the status says the brokers are
//! not ready. The HorizontalPodAutoscaler step needs the cluster's kube-controller-manager.

use e2e::{free_port, wait_for, Process};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions, Condition};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use starling_operator::crd::MqttCluster;
use starling_operator::resources::CONFIG_HASH_ANNOTATION;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CRD_YAML: &str = include_str!("../../crds/mqttcluster.yaml");
const FIELD_MANAGER: &str = "starling-e2e";
const WAIT: Duration = Duration::from_secs(120);
const CLUSTER: &str = "e2e";

/// The cluster, a fresh namespace and (unless external) the operator process.
struct Env {
    client: Client,
    namespace: String,
    /// The operator's HTTP endpoint (`/metrics`), when the test started the operator.
    operator_http: Option<SocketAddr>,
    _operator: Option<Process>,
}

fn operator_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("STARLING_OPERATOR_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory")
        .join("starling-operator");
    assert!(
        path.exists(),
        "{} does not exist: build it with `cargo build -p starling-operator` (or set STARLING_OPERATOR_BIN)",
        path.display()
    );
    path
}

/// Waits up to [`WAIT`] for `condition` on the object `name`.
async fn wait_until<K>(api: &Api<K>, name: &str, what: &str, condition: impl Condition<K>) -> K
where
    K: Clone + Debug + Send + serde::de::DeserializeOwned + Resource + 'static,
{
    println!("waiting for {what}");
    match tokio::time::timeout(WAIT, await_condition(api.clone(), name, condition)).await {
        Ok(Ok(Some(object))) => object,
        Ok(Ok(None)) => panic!("{what}: {name} does not exist"),
        Ok(Err(e)) => panic!("{what}: watching {name}: {e}"),
        Err(_) => panic!("{what}: not within {WAIT:?}"),
    }
}

/// Waits up to [`WAIT`] until `name` is gone.
async fn wait_deleted<K>(api: &Api<K>, name: &str, uid: &str, what: &str)
where
    K: Clone + Debug + Send + serde::de::DeserializeOwned + Resource + 'static,
{
    println!("waiting for {what} to be deleted");
    let deleted = tokio::time::timeout(
        WAIT,
        await_condition(api.clone(), name, conditions::is_deleted(uid)),
    )
    .await;
    match deleted {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("{what}: watching {name}: {e}"),
        Err(_) => panic!("{what} {name} still exists after {WAIT:?}"),
    }
}

async fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: e2e\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

impl Env {
    async fn start() -> Env {
        assert!(
            std::env::var_os("KUBECONFIG").is_some(),
            "KUBECONFIG is not set: these tests need a Kubernetes cluster. Run them with \
             KUBECONFIG=/path/to/kubeconfig cargo test -p e2e --test operator -- --ignored"
        );
        let client = Client::try_default()
            .await
            .expect("a client for the cluster in KUBECONFIG");

        // The CRD, as shipped.
        let crd: CustomResourceDefinition =
            serde_yaml_from_str(CRD_YAML).expect("crds/mqttcluster.yaml parses");
        let crd_name = crd.name_any();
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.patch(
            &crd_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("applying crds/mqttcluster.yaml");
        println!("applied CRD {crd_name}");
        wait_until(
            &crds,
            &crd_name,
            "the CRD to be established",
            conditions::is_crd_established(),
        )
        .await;

        let namespace = format!(
            "starling-e2e-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() % 1_000_000)
                .unwrap_or(0)
        );
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": namespace}})).expect("namespace");
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("creating the test namespace");
        println!("created namespace {namespace}");

        let (operator, operator_http) = if std::env::var("STARLING_E2E_OPERATOR").as_deref()
            == Ok("external")
        {
            println!("using the operator already running in the cluster");
            (None, None)
        } else {
            let port = free_port().expect("a free port");
            let bind = format!("127.0.0.1:{port}");
            let binary = operator_binary();
            let program = binary.to_str().expect("UTF-8 path");
            let args = ["run", "--namespace", &namespace, "--http-bind", &bind];
            println!("starting {program} {}", args.join(" "));
            let process = Process::spawn("starling-operator", program, &args).expect("operator");
            wait_for(Duration::from_secs(30), || async move {
                match http_status(port, "/readyz").await {
                    Some(200) => Ok(()),
                    other => anyhow::bail!("/readyz answered {other:?}"),
                }
            })
            .await
            .expect("the operator becomes ready");
            (
                Some(process),
                Some(SocketAddr::from(([127, 0, 0, 1], port))),
            )
        };
        Env {
            client,
            namespace,
            operator_http,
            _operator: operator,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn cleanup(self) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        if let Err(e) = namespaces
            .delete(&self.namespace, &DeleteParams::background())
            .await
        {
            println!("deleting namespace {}: {e}", self.namespace);
        }
    }
}

/// Parses one YAML document into a Kubernetes type (through JSON, as the API server sees it).
fn serde_yaml_from_str<T: serde::de::DeserializeOwned>(yaml: &str) -> Result<T, String> {
    let value: serde_json::Value = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// The value of one sample (`name{labels}`) in OpenMetrics text, if present.
fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
}

/// Waits until the operator has published an Event with `reason` about the object `uid`.
async fn wait_for_event(events: &Api<Event>, uid: &str, reason: &str) -> Event {
    println!("waiting for a {reason} Event");
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let list = events
                .list(&ListParams::default())
                .await
                .expect("listing Events");
            if let Some(event) = list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid)
            }) {
                return event;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no {reason} Event within {WAIT:?}"))
}

fn assert_owned_by(meta: &kube::api::ObjectMeta, cluster_uid: &str, what: &str) {
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .unwrap_or_else(|| panic!("{what} has no controlling owner"));
    assert_eq!(owner.kind, "MqttCluster", "{what}");
    assert_eq!(owner.uid, cluster_uid, "{what}");
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: KUBECONFIG=... cargo test -p e2e --test operator -- --ignored"]
async fn mqttcluster_children_status_scale_config_change_and_deletion() {
    let env = Env::start().await;
    let image = std::env::var("STARLING_E2E_BROKER_IMAGE").ok();
    let mut spec = json!({
        "replicas": 2,
        "service": {"type": "ClusterIP"},
        "redis": {"managed": {}},
    });
    if let Some(image) = &image {
        let (repository, tag) = image.rsplit_once(':').expect("image as repo:tag");
        spec["image"] = json!({"repository": repository, "tag": tag});
    }
    let clusters: Api<MqttCluster> = env.api();
    let cluster: MqttCluster = serde_json::from_value(json!({
        "apiVersion": "mqtt.starling.dev/v1alpha1",
        "kind": "MqttCluster",
        "metadata": {"name": CLUSTER},
        "spec": spec,
    }))
    .expect("cluster");
    let cluster = clusters
        .create(&PostParams::default(), &cluster)
        .await
        .expect("creating the MqttCluster");
    let uid = cluster.uid().expect("uid");
    println!("created MqttCluster {}/{CLUSTER}", env.namespace);

    // Every child, owned by the cluster.
    let sets: Api<StatefulSet> = env.api();
    let set = wait_until(
        &sets,
        CLUSTER,
        "the broker StatefulSet",
        |o: Option<&StatefulSet>| o.is_some(),
    )
    .await;
    assert_owned_by(&set.metadata, &uid, "StatefulSet");
    assert_eq!(set.spec.replicas, Some(2));
    let config_maps: Api<ConfigMap> = env.api();
    let config = config_maps.get("e2e-config").await.expect("ConfigMap");
    assert_owned_by(&config.metadata, &uid, "ConfigMap");
    let toml = &config.data.as_ref().expect("data")["starling.toml"];
    assert!(
        toml.contains(&format!("\"e2e-headless.{}.svc:", env.namespace)),
        "{toml}"
    );
    let services: Api<Service> = env.api();
    let mut service_uids = Vec::new();
    for name in ["e2e", "e2e-headless", "e2e-redis"] {
        let service = services.get(name).await.expect("Service");
        assert_owned_by(&service.metadata, &uid, name);
        service_uids.push((name, service.uid().expect("uid")));
    }
    let pdb = env
        .api::<PodDisruptionBudget>()
        .get(CLUSTER)
        .await
        .expect("PodDisruptionBudget");
    assert_owned_by(&pdb.metadata, &uid, "PodDisruptionBudget");
    let redis = env
        .api::<Deployment>()
        .get("e2e-redis")
        .await
        .expect("Redis Deployment");
    assert_owned_by(&redis.metadata, &uid, "Redis Deployment");
    let secret = env
        .api::<Secret>()
        .get("e2e-redis")
        .await
        .expect("Redis Secret");
    assert_owned_by(&secret.metadata, &uid, "Redis Secret");
    // Gossip is encrypted by default, with a generated AES-256 key the pods mount.
    let gossip = env
        .api::<Secret>()
        .get("e2e-gossip")
        .await
        .expect("gossip key Secret");
    assert_owned_by(&gossip.metadata, &uid, "gossip key Secret");
    let key = gossip
        .data
        .as_ref()
        .and_then(|d| d.get("key"))
        .expect("the Secret holds `key`");
    assert_eq!(key.0.len(), 44, "base64 text of 32 bytes");
    assert!(
        toml.contains("gossip_key_file"),
        "the brokers read the key: {toml}"
    );
    // The NetworkPolicies, accepted by the real API server as the operator built them.
    let policies: Api<NetworkPolicy> = env.api();
    let brokers = policies.get("e2e").await.expect("brokers' NetworkPolicy");
    assert_owned_by(&brokers.metadata, &uid, "brokers' NetworkPolicy");
    let ingress = brokers
        .spec
        .as_ref()
        .and_then(|s| s.ingress.as_ref())
        .expect("ingress rules");
    assert_eq!(ingress.len(), 3, "MQTT, gossip, admin: {ingress:?}");
    let redis_policy = policies
        .get("e2e-redis")
        .await
        .expect("Redis' NetworkPolicy");
    assert_owned_by(&redis_policy.metadata, &uid, "Redis' NetworkPolicy");
    println!("every child exists and is owned by the cluster");

    // The status.
    let generation = cluster.metadata.generation;
    let recorded = wait_until(
        &clusters,
        CLUSTER,
        "the status of the first generation",
        move |o: Option<&MqttCluster>| {
            o.and_then(|c| c.status.as_ref())
                .is_some_and(|s| s.observed_generation == generation)
        },
    )
    .await;
    let status = recorded.status.expect("status");
    assert_eq!(
        status.selector.as_deref(),
        Some("app.kubernetes.io/component=broker,app.kubernetes.io/instance=e2e,app.kubernetes.io/name=starling")
    );
    assert_eq!(
        status.endpoint,
        Some(format!("e2e.{}.svc:1883", env.namespace))
    );
    for type_ in ["Ready", "Progressing", "Degraded"] {
        let condition = status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition"));
        assert_eq!(condition.observed_generation, generation, "{type_}");
        // A failed reconcile records a status too: the reasons tell it apart.
        assert!(
            !["ReconcileFailed", "InvalidSpec"].contains(&condition.reason.as_str()),
            "the reconcile failed: {condition:?}"
        );
    }
    let event = wait_for_event(&env.api(), &uid, "Reconciled").await;
    assert_eq!(
        event.reporting_controller.as_deref(),
        Some("starling-operator")
    );
    assert_eq!(event.type_.as_deref(), Some("Normal"));
    println!("Reconciled Event: {}", event.note.as_deref().unwrap_or(""));
    if image.is_some() {
        wait_until(
            &clusters,
            CLUSTER,
            "Ready=True",
            |o: Option<&MqttCluster>| {
                o.and_then(|c| c.status.as_ref()).is_some_and(|s| {
                    s.ready_replicas == 2
                        && s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            },
        )
        .await;
    } else {
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready condition");
        assert_eq!(ready.status, "False", "{ready:?}");
        // With nodes, pods that cannot pull the image are named by their reason
        // (ErrImagePull, ImagePullBackOff); without, nothing is scheduled.
        assert!(
            [
                "ReplicasNotReady",
                "RedisUnavailable",
                "ErrImagePull",
                "ImagePullBackOff"
            ]
            .contains(&ready.reason.as_str()),
            "{ready:?}"
        );
        assert_eq!(status.ready_replicas, 0);
        println!(
            "NOT CHECKED (STARLING_E2E_BROKER_IMAGE unset): broker and Redis pods becoming \
             ready, Ready=True and readyReplicas; checked instead that Ready is False ({}: {})",
            ready.reason, ready.message
        );
    }

    // Scale through the scale subresource.
    clusters
        .patch_scale(
            CLUSTER,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("patching /scale");
    println!("scaled to 3 through /scale");
    wait_until(
        &sets,
        CLUSTER,
        "the StatefulSet to follow the scale",
        |o: Option<&StatefulSet>| o.and_then(|s| s.spec.replicas) == Some(3),
    )
    .await;

    // An autoscaler finds the cluster through the scale subresource (kube-controller-manager's
    // HPA controller; min = max = the current size, so it changes nothing).
    let autoscalers: Api<HorizontalPodAutoscaler> = env.api();
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": CLUSTER},
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "mqtt.starling.dev/v1alpha1",
                "kind": "MqttCluster",
                "name": CLUSTER,
            },
            "minReplicas": 3,
            "maxReplicas": 3,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 70},
            }}],
        },
    }))
    .expect("HorizontalPodAutoscaler");
    autoscalers
        .create(&PostParams::default(), &hpa)
        .await
        .expect("creating the HorizontalPodAutoscaler");
    let hpa = wait_until(
        &autoscalers,
        CLUSTER,
        "the autoscaler to read the cluster's scale",
        |o: Option<&HorizontalPodAutoscaler>| {
            o.and_then(|h| h.status.as_ref()).is_some_and(|s| {
                s.current_replicas == Some(3)
                    && s.conditions.iter().flatten().any(|c| {
                        c.type_ == "AbleToScale"
                            && c.status == "True"
                            && c.reason.as_deref() == Some("SucceededGetScale")
                    })
            })
        },
    )
    .await;
    for condition in hpa
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
    {
        println!(
            "autoscaler {}={} {}: {}",
            condition.type_,
            condition.status,
            condition.reason.as_deref().unwrap_or(""),
            condition.message.as_deref().unwrap_or("")
        );
    }
    autoscalers
        .delete(CLUSTER, &DeleteParams::default())
        .await
        .expect("deleting the HorizontalPodAutoscaler");

    // A broker setting changes the configuration hash on the pod template.
    let hash = |set: &StatefulSet| -> Option<String> {
        set.spec
            .template
            .metadata
            .as_ref()?
            .annotations
            .as_ref()?
            .get(CONFIG_HASH_ANNOTATION)
            .cloned()
    };
    let before = hash(&sets.get(CLUSTER).await.expect("StatefulSet")).expect("a config hash");
    clusters
        .patch(
            CLUSTER,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"broker": {"maxInflight": 17}}})),
        )
        .await
        .expect("changing a broker setting");
    println!("set broker.maxInflight = 17");
    let changed = wait_until(
        &sets,
        CLUSTER,
        "a new config hash",
        move |o: Option<&StatefulSet>| o.and_then(hash).is_some_and(|h| h != before),
    )
    .await;
    assert_eq!(changed.spec.replicas, Some(3));
    let config = config_maps.get("e2e-config").await.expect("ConfigMap");
    let toml = &config.data.as_ref().expect("data")["starling.toml"];
    assert!(toml.contains("max_inflight = 17"), "{toml}");

    // No reconcile failed along the way (a failure is retried, so the children alone do not
    // show it).
    if let Some(http) = env.operator_http {
        let (code, text) = e2e::http_get(http, "/metrics").await.expect("/metrics");
        assert_eq!(code, 200);
        let succeeded = metric(
            &text,
            "starling_operator_reconciles_total{result=\"success\"}",
        );
        let failed = metric(
            &text,
            "starling_operator_reconciles_total{result=\"error\"}",
        );
        println!("operator reconciles: {succeeded:?} succeeded, {failed:?} failed");
        assert!(succeeded.is_some_and(|n| n > 0.0), "{text}");
        assert!(failed.unwrap_or(0.0) == 0.0, "{text}");
    } else {
        println!("NOT CHECKED (external operator): the operator's reconcile error count");
    }

    // Deleting the cluster garbage-collects every child.
    clusters
        .delete(CLUSTER, &DeleteParams::foreground())
        .await
        .expect("deleting the MqttCluster");
    println!("deleted the MqttCluster");
    wait_deleted(&clusters, CLUSTER, &uid, "the MqttCluster").await;
    let set_uid = changed.uid().expect("uid");
    wait_deleted(&sets, CLUSTER, &set_uid, "the StatefulSet").await;
    let redis_uid = redis.uid().expect("uid");
    wait_deleted(
        &env.api::<Deployment>(),
        "e2e-redis",
        &redis_uid,
        "the Redis Deployment",
    )
    .await;
    let config_uid = config.uid().expect("uid");
    wait_deleted(&config_maps, "e2e-config", &config_uid, "the ConfigMap").await;
    for (name, service_uid) in &service_uids {
        wait_deleted(&services, name, service_uid, "a Service").await;
    }
    let pdb_uid = pdb.uid().expect("uid");
    wait_deleted(
        &env.api::<PodDisruptionBudget>(),
        CLUSTER,
        &pdb_uid,
        "the PodDisruptionBudget",
    )
    .await;
    println!("every child was garbage-collected");
    env.cleanup().await;
}
