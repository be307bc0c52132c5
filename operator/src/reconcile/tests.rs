//! The real [`reconcile`] against a scripted fake API server ([`crate::fake_api`]): each test
//! answers every request in the order the reconciler must make it and checks what it sends.

use super::*;
use crate::crd::MqttClusterStatus;
use crate::fake_api::{self, FakeApiServer};
use crate::resources::test_support::{cluster, cluster_from_yaml};
use http::{Method, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde_json::{json, Value};

const NS_API: &str = "/api/v1/namespaces/iot";
const NS_APPS: &str = "/apis/apps/v1/namespaces/iot";
const NP_API: &str = "/apis/networking.k8s.io/v1/namespaces/iot";
const STATUS_PATH: &str =
    "/apis/mqtt.starling.dev/v1alpha1/namespaces/iot/mqttclusters/demo/status";

fn context(client: Client) -> Arc<Context> {
    Arc::new(
        Context::new(
            client,
            Some("starling-operator-0".to_string()),
            Arc::new(Metrics::new()),
        )
        .with_sentinel_reader(stand_in_sentinels()),
    )
}

/// Sentinels that answer for cluster `demo` asked with the managed Redis' password (`s3cret`):
/// primary pod 1, both replicas in sync, three sentinels. Asked otherwise, they do not answer.
fn stand_in_sentinels() -> crate::redis_health::SentinelReader {
    Arc::new(|sentinels: Vec<String>, master: String, password: String| {
        Box::pin(async move {
            let expected = (0..3)
                .map(|i| format!("demo-redis-{i}.demo-redis-nodes.iot.svc:26379"))
                .collect::<Vec<_>>();
            if sentinels != expected || master != "demo" || password != "s3cret" {
                return Err(format!(
                    "asked {sentinels:?} for {master} with {password:?}"
                ));
            }
            let host = |i: u32| format!("demo-redis-{i}.demo-redis-nodes.iot.svc");
            Ok(crate::redis_health::SentinelView {
                asked: sentinels[0].clone(),
                primary: host(1),
                primary_down: false,
                replicas: [0, 2]
                    .into_iter()
                    .map(|i| crate::redis_health::ReplicaView {
                        host: host(i),
                        in_sync: true,
                    })
                    .collect(),
                sentinels: 3,
            })
        })
    })
}

/// Runs `reconcile` for `object` while `script` plays the API server; returns the result.
async fn run<F>(
    object: MqttCluster,
    script: impl FnOnce(FakeApiServer) -> F,
) -> Result<Action, Error>
where
    F: std::future::Future<Output = FakeApiServer>,
{
    run_counted(&Arc::new(Metrics::new()), object, script).await
}

/// [`run`], counting the reconcile in `metrics`.
async fn run_counted<F>(
    metrics: &Arc<Metrics>,
    object: MqttCluster,
    script: impl FnOnce(FakeApiServer) -> F,
) -> Result<Action, Error>
where
    F: std::future::Future<Output = FakeApiServer>,
{
    run_full(metrics, stand_in_sentinels(), object, script).await
}

/// [`run_counted`], the sentinels answered by `sentinels`.
async fn run_full<F>(
    metrics: &Arc<Metrics>,
    sentinels: crate::redis_health::SentinelReader,
    object: MqttCluster,
    script: impl FnOnce(FakeApiServer) -> F,
) -> Result<Action, Error>
where
    F: std::future::Future<Output = FakeApiServer>,
{
    let (client, api) = fake_api::client();
    let ctx = Arc::new(
        Context::new(
            client,
            Some("starling-operator-0".to_string()),
            metrics.clone(),
        )
        .with_sentinel_reader(sentinels),
    );
    let (result, api) = tokio::join!(reconcile(Arc::new(object), ctx), script(api));
    api.expect_done().await;
    result
}

/// `object` with `metadata` fields the API server sets on a live object.
fn live(mut object: Value) -> Value {
    object["metadata"]["resourceVersion"] = json!("1");
    object["metadata"]["uid"] = json!("c0ffee00-0000-4000-8000-000000000001");
    object
}

/// What the API server returns for an existing object of this cluster's, or of the user's.
fn existing(api_version: &str, kind: &str, name: &str, owned: bool) -> Value {
    let mut meta = json!({"name": name, "namespace": "iot", "resourceVersion": "7"});
    if owned {
        meta["ownerReferences"] = json!([{
            "apiVersion": "mqtt.starling.dev/v1alpha1",
            "kind": "MqttCluster",
            "name": "demo",
            "uid": "0b8c1b7e-5a6d-4a57-9f7e-3c7b1d2e4f60",
            "controller": true,
            "blockOwnerDeletion": true,
        }]);
    }
    json!({"apiVersion": api_version, "kind": kind, "metadata": meta})
}

/// The broker StatefulSet as the API server reports it: `applied` plus a status.
fn stateful_set_with_status(applied: &Value, ready: i32) -> Value {
    let mut set = live(applied.clone());
    set["metadata"]["generation"] = json!(1);
    let replicas = applied["spec"]["replicas"].clone();
    set["status"] = json!({
        "observedGeneration": 1,
        "replicas": replicas,
        "readyReplicas": ready,
        "updatedReplicas": replicas,
        "currentRevision": "demo-1",
        "updateRevision": "demo-1",
    });
    set
}

/// Answers the discovery request for the ServiceMonitor kind: present or not.
async fn expect_service_monitor_discovery(api: &mut FakeApiServer, installed: bool) {
    let call = api
        .expect(Method::GET, "/apis/monitoring.coreos.com/v1")
        .await;
    if installed {
        call.respond_with(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": "monitoring.coreos.com/v1",
            "resources": [{
                "name": "servicemonitors",
                "singularName": "servicemonitor",
                "namespaced": true,
                "kind": "ServiceMonitor",
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            }],
        }));
    } else {
        // What kube-apiserver sends for a group version it does not serve.
        call.page_not_found();
    }
}

/// Answers the status patch and returns the status it carried.
async fn expect_status_patch(api: &mut FakeApiServer) -> MqttClusterStatus {
    let call = api.expect(Method::PATCH, STATUS_PATH).await;
    assert_eq!(
        call.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    let status: MqttClusterStatus =
        serde_json::from_value(call.body["status"].clone()).expect("status patch carries a status");
    let mut object = serde_json::to_value(cluster(Default::default())).expect("JSON");
    object["status"] = call.body["status"].clone();
    call.respond_with(object);
    status
}

/// Answers the lookup of the generated gossip key's Secret: it exists.
async fn expect_existing_gossip_key(api: &mut FakeApiServer) {
    api.expect(Method::GET, &format!("{NS_API}/secrets/demo-gossip"))
        .await
        .respond_with(existing("v1", "Secret", "demo-gossip", true));
}

/// Answers the lookup of the brokers' admin token Secret: it exists.
async fn expect_existing_admin_secret(api: &mut FakeApiServer) {
    api.expect(Method::GET, &format!("{NS_API}/secrets/demo-admin"))
        .await
        .respond_with(existing("v1", "Secret", "demo-admin", true));
}

/// Answers the applies of the broker's objects (the admin token Secret's lookup, ConfigMap to
/// PodDisruptionBudget) and returns the applied StatefulSet.
async fn expect_broker_children_applied(api: &mut FakeApiServer) -> Value {
    expect_existing_admin_secret(api).await;
    api.expect_apply(&format!("{NS_API}/configmaps/demo-config"))
        .await;
    api.expect_apply(&format!("{NS_API}/services/demo-headless"))
        .await;
    api.expect_apply(&format!("{NS_API}/services/demo")).await;
    let set = api
        .expect_apply(&format!("{NS_APPS}/statefulsets/demo"))
        .await;
    api.expect_apply("/apis/policy/v1/namespaces/iot/poddisruptionbudgets/demo")
        .await;
    expect_network_policies_applied(api).await;
    set
}

/// Answers the applies of the brokers' and the managed Redis' NetworkPolicies.
async fn expect_network_policies_applied(api: &mut FakeApiServer) {
    api.expect_apply(&format!("{NP_API}/networkpolicies/demo"))
        .await;
    api.expect_apply(&format!("{NP_API}/networkpolicies/demo-redis"))
        .await;
}

/// The managed Redis' Secret as the API server returns it (data base64-encoded): the password
/// `s3cret`, and its Redis configuration line unless the Secret is from an older operator.
fn redis_secret(with_config_line: bool) -> Value {
    let mut secret = existing("v1", "Secret", "demo-redis", true);
    secret["data"] = json!({"password": "czNjcmV0"});
    if with_config_line {
        // requirepass "s3cret"\n
        secret["data"]["redis.conf"] = json!("cmVxdWlyZXBhc3MgInMzY3JldCIK");
    }
    secret
}

/// Answers the managed Redis' Secret lookup (it exists) and the Redis Service and Deployment
/// applies.
async fn expect_existing_managed_redis(api: &mut FakeApiServer) {
    api.expect(Method::GET, &format!("{NS_API}/secrets/demo-redis"))
        .await
        .respond_with(redis_secret(true));
    api.expect_apply(&format!("{NS_API}/services/demo-redis"))
        .await;
    api.expect_apply(&format!("{NS_APPS}/deployments/demo-redis"))
        .await;
    expect_no_sentinel_redis(api).await;
}

/// Answers the lookups of the objects of a managed Redis with Sentinel (headless Service,
/// StatefulSet, PodDisruptionBudget), which a cluster without one must not have: none exists.
async fn expect_no_sentinel_redis(api: &mut FakeApiServer) {
    for path in [
        format!("{NS_API}/services/demo-redis-nodes"),
        format!("{NS_APPS}/statefulsets/demo-redis"),
        "/apis/policy/v1/namespaces/iot/poddisruptionbudgets/demo-redis".to_string(),
    ] {
        api.expect(Method::GET, &path).await.not_found();
    }
}

fn redis_available() -> Value {
    let mut redis = existing("apps/v1", "Deployment", "demo-redis", true);
    redis["status"] = json!({
        "availableReplicas": 1,
        "conditions": [{"type": "Available", "status": "True"}],
    });
    redis
}

fn load_balancer(ip: &str) -> Value {
    let mut service = existing("v1", "Service", "demo", true);
    service["status"] = json!({"loadBalancer": {"ingress": [{"ip": ip}]}});
    service
}

/// The reads of a status pass over a cluster whose brokers (all 3), Redis and load balancer
/// (203.0.113.7) are ready; `set` is the StatefulSet the pass applied.
async fn expect_ready_observations(api: &mut FakeApiServer, set: &Value) {
    expect_ready_observations_with_pods(api, set, vec![]).await;
}

/// [`expect_ready_observations`], the pod list holding `pods`.
async fn expect_ready_observations_with_pods(
    api: &mut FakeApiServer,
    set: &Value,
    pods: Vec<Value>,
) {
    api.expect(Method::GET, &format!("{NS_APPS}/statefulsets/demo"))
        .await
        .respond_with(stateful_set_with_status(set, 3));
    api.expect(Method::GET, &format!("{NS_APPS}/deployments/demo-redis"))
        .await
        .respond_with(redis_available());
    api.expect(Method::GET, &format!("{NS_API}/services/demo"))
        .await
        .respond_with(load_balancer("203.0.113.7"));
    expect_pods(api, pods).await;
}

/// Answers the list of the cluster's pods (brokers and Redis, by label) with `pods`.
async fn expect_pods(api: &mut FakeApiServer, pods: Vec<Value>) {
    let call = api.expect(Method::GET, &format!("{NS_API}/pods")).await;
    assert_eq!(
        call.query("labelSelector"),
        // As sent: the comma percent-encoded.
        Some("app.kubernetes.io/instance=demo%2Capp.kubernetes.io/name=starling")
    );
    call.respond_with(json!({
        "apiVersion": "v1",
        "kind": "PodList",
        "metadata": {"resourceVersion": "9"},
        "items": pods,
    }));
}

/// Answers the next request, asserted to create an Event of `type_` and `reason` about the
/// cluster; returns the Event.
async fn expect_event(api: &mut FakeApiServer, type_: &str, reason: &str) -> Value {
    let call = api
        .expect(Method::POST, "/apis/events.k8s.io/v1/namespaces/iot/events")
        .await;
    let event = call.body.clone();
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some(type_), Some(reason)),
        "{event:#}"
    );
    assert_eq!(event["reportingController"], "starling-operator");
    assert_eq!(event["reportingInstance"], "starling-operator-0");
    assert_eq!(event["regarding"]["kind"], "MqttCluster");
    assert_eq!(event["regarding"]["name"], "demo");
    assert_eq!(
        event["regarding"]["uid"],
        "0b8c1b7e-5a6d-4a57-9f7e-3c7b1d2e4f60"
    );
    call.respond(StatusCode::CREATED, live(event.clone()));
    event
}

fn condition<'a>(status: &'a MqttClusterStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:#?}"))
}

#[tokio::test]
async fn fresh_cluster_with_managed_redis_applies_every_child_in_order_then_records_status() {
    let result = run(cluster(Default::default()), |mut api| async move {
        // The gossip key: no Secret and no brokers yet, so a key is generated, once.
        api.expect(Method::GET, &format!("{NS_API}/secrets/demo-gossip"))
            .await
            .not_found();
        api.expect(Method::GET, &format!("{NS_APPS}/statefulsets/demo"))
            .await
            .not_found();
        let call = api.expect(Method::POST, &format!("{NS_API}/secrets")).await;
        assert_eq!(call.body["metadata"]["name"], "demo-gossip");
        assert_eq!(call.body["metadata"]["ownerReferences"][0]["name"], "demo");
        let key = call.body["stringData"]["key"].as_str().expect("key");
        assert_eq!(key.len(), 44, "base64 of 32 bytes: {key}");
        let secret = live(call.body.clone());
        call.respond(StatusCode::CREATED, secret);
        // The Redis password Secret: looked up, created once.
        api.expect(Method::GET, &format!("{NS_API}/secrets/demo-redis"))
            .await
            .not_found();
        let call = api.expect(Method::POST, &format!("{NS_API}/secrets")).await;
        assert_eq!(call.body["metadata"]["name"], "demo-redis");
        let password = call.body["stringData"]["password"]
            .as_str()
            .expect("password")
            .to_string();
        assert_eq!(password.len(), 32);
        assert!(password.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(
            call.body["stringData"]["redis.conf"],
            format!("requirepass \"{password}\"\n")
        );
        let secret = live(call.body.clone());
        call.respond(StatusCode::CREATED, secret);

        let redis_service = api
            .expect_apply(&format!("{NS_API}/services/demo-redis"))
            .await;
        assert_eq!(redis_service["spec"]["ports"][0]["port"], 6379);
        let redis = api
            .expect_apply(&format!("{NS_APPS}/deployments/demo-redis"))
            .await;
        assert_eq!(redis["kind"], "Deployment");
        assert_eq!(redis["metadata"]["ownerReferences"][0]["name"], "demo");
        expect_no_sentinel_redis(&mut api).await;
        // The brokers' admin token Secret: looked up, created once.
        api.expect(Method::GET, &format!("{NS_API}/secrets/demo-admin"))
            .await
            .not_found();
        let call = api.expect(Method::POST, &format!("{NS_API}/secrets")).await;
        assert_eq!(call.body["metadata"]["name"], "demo-admin");
        assert_eq!(call.body["metadata"]["ownerReferences"][0]["name"], "demo");
        let token = call.body["stringData"]["token"].as_str().expect("token");
        assert_eq!(token.len(), 32);
        assert_ne!(token, password, "the token is not the Redis password");
        let secret = live(call.body.clone());
        call.respond(StatusCode::CREATED, secret);
        let config = api
            .expect_apply(&format!("{NS_API}/configmaps/demo-config"))
            .await;
        let toml = config["data"]["starling.toml"].as_str().expect("config");
        assert!(toml.contains("\"demo-headless.iot.svc:7946\""), "{toml}");
        let headless = api
            .expect_apply(&format!("{NS_API}/services/demo-headless"))
            .await;
        assert_eq!(headless["spec"]["clusterIP"], "None");
        let client_service = api.expect_apply(&format!("{NS_API}/services/demo")).await;
        assert_eq!(client_service["spec"]["type"], "LoadBalancer");
        let set = api
            .expect_apply(&format!("{NS_APPS}/statefulsets/demo"))
            .await;
        assert_eq!(set["spec"]["replicas"], 3);
        assert_eq!(set["spec"]["serviceName"], "demo-headless");
        assert!(set["spec"]["template"]["metadata"]["annotations"]
            ["mqtt.starling.dev/config-hash"]
            .is_string());
        let pdb = api
            .expect_apply("/apis/policy/v1/namespaces/iot/poddisruptionbudgets/demo")
            .await;
        assert_eq!(pdb["spec"]["maxUnavailable"], 1);
        let brokers = api
            .expect_apply(&format!("{NP_API}/networkpolicies/demo"))
            .await;
        assert_eq!(brokers["kind"], "NetworkPolicy");
        assert_eq!(brokers["spec"]["policyTypes"], json!(["Ingress"]));
        let redis_policy = api
            .expect_apply(&format!("{NP_API}/networkpolicies/demo-redis"))
            .await;
        assert_eq!(redis_policy["spec"]["ingress"][0]["ports"][0]["port"], 6379);
        expect_service_monitor_discovery(&mut api, false).await;

        // Observation: the StatefulSet controller has not acted yet; Redis has no status yet.
        api.expect(Method::GET, &format!("{NS_APPS}/statefulsets/demo"))
            .await
            .respond_with(live(set));
        api.expect(Method::GET, &format!("{NS_APPS}/deployments/demo-redis"))
            .await
            .respond_with(live(redis));
        api.expect(Method::GET, &format!("{NS_API}/services/demo"))
            .await
            .respond_with(live(client_service));
        expect_pods(&mut api, vec![]).await;

        let status = expect_status_patch(&mut api).await;
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(status.replicas, 0);
        assert_eq!(status.ready_replicas, 0);
        assert_eq!(
            status.selector.as_deref(),
            Some("app.kubernetes.io/component=broker,app.kubernetes.io/instance=demo,app.kubernetes.io/name=starling")
        );
        assert_eq!(status.endpoint, None);
        assert!(
            status
                .endpoint_hint
                .as_deref()
                .is_some_and(|h| h.starts_with("the LoadBalancer Service demo has no address")),
            "{status:?}"
        );
        let ready = condition(&status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "RedisUnavailable")
        );
        assert_eq!(ready.observed_generation, Some(4));
        let progressing = condition(&status, "Progressing");
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_str()),
            ("True", "ScalingUp")
        );
        assert_eq!(progressing.message, "0 of 3 brokers exist");
        let degraded = condition(&status, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("False", "AsExpected")
        );
        let event = expect_event(&mut api, "Normal", "Reconciled").await;
        assert_eq!(event["note"], "applied generation 4: 3 brokers");
        api
    })
    .await;
    assert_eq!(result.expect("reconcile succeeds"), Action::requeue(POLL));
}

#[tokio::test]
async fn ready_cluster_is_recorded_once_then_resynced_without_a_status_patch() {
    let object = cluster(Default::default());
    let mut recorded = None;
    let slot = &mut recorded;
    let first = run(object.clone(), |mut api| async move {
        expect_existing_gossip_key(&mut api).await;
        expect_existing_managed_redis(&mut api).await;
        let set = expect_broker_children_applied(&mut api).await;
        expect_service_monitor_discovery(&mut api, false).await;
        expect_ready_observations(&mut api, &set).await;
        let status = expect_status_patch(&mut api).await;
        let ready = condition(&status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "AllReplicasReady")
        );
        assert_eq!(status.endpoint.as_deref(), Some("203.0.113.7:1883"));
        assert_eq!(status.ready_replicas, 3);
        *slot = Some(status);
        expect_event(&mut api, "Normal", "Reconciled").await;
        api
    })
    .await;
    assert_eq!(first.expect("reconcile succeeds"), Action::requeue(RESYNC));

    // The next pass sees the recorded status: same observations and generation, so no status
    // patch and no Event.
    let mut object = object;
    object.status = recorded;
    let second = run(object, |mut api| async move {
        expect_existing_gossip_key(&mut api).await;
        expect_existing_managed_redis(&mut api).await;
        let set = expect_broker_children_applied(&mut api).await;
        expect_service_monitor_discovery(&mut api, false).await;
        expect_ready_observations(&mut api, &set).await;
        api
    })
    .await;
    assert_eq!(second.expect("reconcile succeeds"), Action::requeue(RESYNC));
}

/// A Secret written by an older operator holds only the password: it gains the Redis
/// configuration line made from that password (the Redis pod reads its password from that file,
/// not from its command line), and the password is left as it is.
#[tokio::test]
async fn an_older_redis_secret_gains_the_configuration_line_and_keeps_its_password() {
    let result = run(cluster(Default::default()), |mut api| async move {
        expect_existing_gossip_key(&mut api).await;
        api.expect(Method::GET, &format!("{NS_API}/secrets/demo-redis"))
            .await
            .respond_with(redis_secret(false));
        let call = api
            .expect(Method::PATCH, &format!("{NS_API}/secrets/demo-redis"))
            .await;
        assert_eq!(
            call.body,
            json!({"stringData": {"redis.conf": "requirepass \"s3cret\"\n"}}),
            "only the line is added; the password is not rewritten"
        );
        call.respond_with(redis_secret(true));
        api.expect_apply(&format!("{NS_API}/services/demo-redis"))
            .await;
        api.expect_apply(&format!("{NS_APPS}/deployments/demo-redis"))
            .await;
        expect_no_sentinel_redis(&mut api).await;
        let set = expect_broker_children_applied(&mut api).await;
        expect_service_monitor_discovery(&mut api, false).await;
        expect_ready_observations(&mut api, &set).await;
        expect_status_patch(&mut api).await;
        expect_event(&mut api, "Normal", "Reconciled").await;
        api
    })
    .await;
    assert_eq!(result.expect("reconcile succeeds"), Action::requeue(RESYNC));
}

/// Generation 4 then 5 through one operator (one Recorder): the second `Reconciled` Event is a
/// new Event naming generation 5, not a repeat in the series of the first (whose note said
/// "applied generation 4" however often it was repeated).
#[tokio::test]
async fn each_applied_generation_gets_its_own_event() {
    let (client, api) = fake_api::client();
    let ctx = context(client);
    let first = cluster(Default::default());
    let (result, (api, status)) = tokio::join!(
        reconcile(Arc::new(first.clone()), ctx.clone()),
        async move {
            let mut api = api;
            expect_existing_gossip_key(&mut api).await;
            expect_existing_managed_redis(&mut api).await;
            let set = expect_broker_children_applied(&mut api).await;
            expect_service_monitor_discovery(&mut api, false).await;
            expect_ready_observations(&mut api, &set).await;
            let status = expect_status_patch(&mut api).await;
            let event = expect_event(&mut api, "Normal", "Reconciled").await;
            assert_eq!(event["note"], "applied generation 4: 3 brokers");
            assert_eq!(event["action"], "ApplyGeneration4");
            (api, status)
        }
    );
    result.expect("first reconcile");

    let mut second = first;
    second.metadata.generation = Some(5);
    second.status = Some(status);
    let (result, api) = tokio::join!(reconcile(Arc::new(second), ctx.clone()), async move {
        let mut api = api;
        expect_existing_gossip_key(&mut api).await;
        expect_existing_managed_redis(&mut api).await;
        let set = expect_broker_children_applied(&mut api).await;
        expect_service_monitor_discovery(&mut api, false).await;
        expect_ready_observations(&mut api, &set).await;
        let status = expect_status_patch(&mut api).await;
        assert_eq!(status.observed_generation, Some(5));
        let event = expect_event(&mut api, "Normal", "Reconciled").await;
        assert_eq!(event["note"], "applied generation 5: 3 brokers");
        assert_eq!(event["action"], "ApplyGeneration5");
        api
    });
    result.expect("second reconcile");
    drop(ctx);
    api.expect_done().await;
}

/// Broker pods that cannot start because a Secret is missing: the reconciler reads the pods
/// and the status names the cause (it said only `ReplicasNotReady`).
#[tokio::test]
async fn pods_missing_a_secret_are_named_in_the_status() {
    let result = run(cluster(Default::default()), |mut api| async move {
        expect_existing_gossip_key(&mut api).await;
        expect_existing_managed_redis(&mut api).await;
        let set = expect_broker_children_applied(&mut api).await;
        expect_service_monitor_discovery(&mut api, false).await;
        api.expect(Method::GET, &format!("{NS_APPS}/statefulsets/demo"))
            .await
            .respond_with(stateful_set_with_status(&set, 0));
        api.expect(Method::GET, &format!("{NS_APPS}/deployments/demo-redis"))
            .await
            .respond_with(redis_available());
        api.expect(Method::GET, &format!("{NS_API}/services/demo"))
            .await
            .respond_with(load_balancer("203.0.113.7"));
        let stuck = |i: i32| {
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": format!("demo-{i}"), "namespace": "iot"},
                "status": {
                    "phase": "Pending",
                    "conditions": [
                        {"type": "PodScheduled", "status": "True"},
                        {"type": "Ready", "status": "False"}
                    ],
                    "containerStatuses": [{
                        "name": "broker", "image": "starling-broker", "imageID": "",
                        "ready": false, "restartCount": 0,
                        "state": {"waiting": {
                            "reason": "CreateContainerConfigError",
                            "message": "secret \"redis-credentials\" not found"
                        }}
                    }]
                }
            })
        };
        expect_pods(&mut api, (0..3).map(stuck).collect()).await;
        let status = expect_status_patch(&mut api).await;
        let ready = condition(&status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "CreateContainerConfigError")
        );
        assert_eq!(
            ready.message,
            "0 of 3 brokers ready; demo-0, demo-1, demo-2: CreateContainerConfigError: \
             secret \"redis-credentials\" not found"
        );
        let progressing = condition(&status, "Progressing");
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_str()),
            ("False", "CreateContainerConfigError"),
            "a rollout stuck on pending pods is not complete"
        );
        expect_event(&mut api, "Normal", "Reconciled").await;
        api
    })
    .await;
    assert_eq!(result.expect("reconcile succeeds"), Action::requeue(POLL));
}

#[tokio::test]
async fn external_redis_deletes_only_the_managed_redis_objects_this_cluster_owns() {
    let object = cluster_from_yaml("redis: {external: {url: \"redis://redis.example:6379/0\"}}");
    let result = run(object, |mut api| async move {
        expect_existing_gossip_key(&mut api).await;
        // The managed Redis' Service is this cluster's: deleted.
        api.expect(Method::GET, &format!("{NS_API}/services/demo-redis"))
            .await
            .respond_with(existing("v1", "Service", "demo-redis", true));
        let call = api
            .expect(Method::DELETE, &format!("{NS_API}/services/demo-redis"))
            .await;
        assert_eq!(call.body["propagationPolicy"], "Background");
        call.respond_with(existing("v1", "Service", "demo-redis", true));
        let event = expect_event(&mut api, "Normal", "DeletedChild").await;
        assert_eq!(
            event["note"],
            "deleted Service demo-redis: the spec no longer asks for it"
        );
        // Each deleted child is the Event's related object, so deletions of different children
        // are not folded into one series under the first one's note.
        assert_eq!(event["related"]["kind"], "Service");
        assert_eq!(event["related"]["name"], "demo-redis");
        assert_eq!(event["related"]["apiVersion"], "v1");
        // A Deployment of the same name that the user made: left alone (no DELETE follows).
        api.expect(Method::GET, &format!("{NS_APPS}/deployments/demo-redis"))
            .await
            .respond_with(existing("apps/v1", "Deployment", "demo-redis", false));
        expect_no_sentinel_redis(&mut api).await;

        expect_existing_admin_secret(&mut api).await;
        let config = api
            .expect_apply(&format!("{NS_API}/configmaps/demo-config"))
            .await;
        let toml = config["data"]["starling.toml"].as_str().expect("config");
        assert!(!toml.contains("demo-redis"), "{toml}");
        api.expect_apply(&format!("{NS_API}/services/demo-headless"))
            .await;
        api.expect_apply(&format!("{NS_API}/services/demo")).await;
        let set = api
            .expect_apply(&format!("{NS_APPS}/statefulsets/demo"))
            .await;
        let env = set["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .expect("env");
        let url = env
            .iter()
            .find(|e| e["name"] == "STARLING_CLUSTER__REDIS_URL")
            .expect("redis url");
        assert_eq!(url["value"], "redis://redis.example:6379/0");
        api.expect_apply("/apis/policy/v1/namespaces/iot/poddisruptionbudgets/demo")
            .await;
        api.expect_apply(&format!("{NP_API}/networkpolicies/demo"))
            .await;
        // No NetworkPolicy for a Redis the operator does not run: none of this cluster's exists.
        api.expect(Method::GET, &format!("{NP_API}/networkpolicies/demo-redis"))
            .await
            .not_found();
        expect_service_monitor_discovery(&mut api, false).await;
        api.expect(Method::GET, &format!("{NS_APPS}/statefulsets/demo"))
            .await
            .respond_with(stateful_set_with_status(&set, 3));
        // No look at a Redis Deployment: Redis is external.
        api.expect(Method::GET, &format!("{NS_API}/services/demo"))
            .await
            .not_found();
        expect_pods(&mut api, vec![]).await;
        let status = expect_status_patch(&mut api).await;
        let ready = condition(&status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "AllReplicasReady")
        );
        assert_eq!(status.endpoint, None, "no load balancer address yet");
        expect_event(&mut api, "Normal", "Reconciled").await;
        api
    })
    .await;
    assert_eq!(result.expect("reconcile succeeds"), Action::requeue(RESYNC));
}

/// Runs a ready cluster with monitoring on, the ServiceMonitor CRD `installed` or not; returns
/// the ServiceMonitor applied, if any.
async fn reconcile_with_monitoring(installed: bool) -> Option<Value> {
    let object = cluster_from_yaml("monitoring: {serviceMonitor: {enabled: true, interval: 15s}}");
    let mut applied = None;
    let slot = &mut applied;
    let result = run(object, |mut api| async move {
        expect_existing_gossip_key(&mut api).await;
        expect_existing_managed_redis(&mut api).await;
        let set = expect_broker_children_applied(&mut api).await;
        expect_service_monitor_discovery(&mut api, installed).await;
        if installed {
            *slot = Some(
                api.expect_apply(
                    "/apis/monitoring.coreos.com/v1/namespaces/iot/servicemonitors/demo",
                )
                .await,
            );
        }
        expect_ready_observations(&mut api, &set).await;
        expect_status_patch(&mut api).await;
        expect_event(&mut api, "Normal", "Reconciled").await;
        api
    })
    .await;
    assert_eq!(result.expect("reconcile succeeds"), Action::requeue(RESYNC));
    applied
}

#[tokio::test]
async fn service_monitor_is_applied_only_when_its_crd_exists() {
    let monitor = reconcile_with_monitoring(true)
        .await
        .expect("a ServiceMonitor is applied");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["kind"], "ServiceMonitor");
    assert_eq!(monitor["metadata"]["ownerReferences"][0]["name"], "demo");
    assert_eq!(monitor["spec"]["endpoints"][0]["interval"], "15s");

    assert_eq!(reconcile_with_monitoring(false).await, None);
}

#[tokio::test]
async fn service_monitor_turned_off_is_deleted_and_named_in_the_event() {
    let object = cluster_from_yaml("monitoring: {serviceMonitor: {enabled: false}}");
    let result = run(object, |mut api| async move {
        expect_existing_gossip_key(&mut api).await;
        expect_existing_managed_redis(&mut api).await;
        let set = expect_broker_children_applied(&mut api).await;
        expect_service_monitor_discovery(&mut api, true).await;
        let path = "/apis/monitoring.coreos.com/v1/namespaces/iot/servicemonitors/demo";
        let monitor = existing("monitoring.coreos.com/v1", "ServiceMonitor", "demo", true);
        api.expect(Method::GET, path)
            .await
            .respond_with(monitor.clone());
        api.expect(Method::DELETE, path).await.respond_with(monitor);
        let event = expect_event(&mut api, "Normal", "DeletedChild").await;
        assert_eq!(
            event["note"],
            "deleted ServiceMonitor demo: the spec no longer asks for it"
        );
        assert_eq!(event["related"]["kind"], "ServiceMonitor");
        assert_eq!(event["related"]["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(event["related"]["name"], "demo");
        expect_ready_observations(&mut api, &set).await;
        expect_status_patch(&mut api).await;
        expect_event(&mut api, "Normal", "Reconciled").await;
        api
    })
    .await;
    assert_eq!(result.expect("reconcile succeeds"), Action::requeue(RESYNC));
}

#[tokio::test]
async fn failed_discovery_fails_the_reconcile_instead_of_skipping_the_service_monitor() {
    let object = cluster_from_yaml("monitoring: {serviceMonitor: {enabled: true}}");
    let result = run(object, |mut api| async move {
        expect_existing_gossip_key(&mut api).await;
        expect_existing_managed_redis(&mut api).await;
        let set = expect_broker_children_applied(&mut api).await;
        api.expect(Method::GET, "/apis/monitoring.coreos.com/v1")
            .await
            .fail(403, "Forbidden", "discovery is forbidden");
        expect_ready_observations(&mut api, &set).await;
        let status = expect_status_patch(&mut api).await;
        let degraded = condition(&status, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "ReconcileFailed")
        );
        let event = expect_event(&mut api, "Warning", "ReconcileFailed").await;
        assert!(
            event["note"]
                .as_str()
                .is_some_and(|n| n.contains("discovery is forbidden")),
            "{event:#}"
        );
        api
    })
    .await;
    let error = result.expect_err("the reconcile fails");
    assert!(
        error.to_string().contains("discovery is forbidden"),
        "{error}"
    );
}

#[tokio::test]
async fn api_error_records_reconcile_failed_and_requeues() {
    let metrics = Arc::new(Metrics::new());
    let result = run_counted(
        &metrics,
        cluster(Default::default()),
        |mut api| async move {
            expect_existing_gossip_key(&mut api).await;
            expect_existing_managed_redis(&mut api).await;
            expect_existing_admin_secret(&mut api).await;
            api.expect_apply(&format!("{NS_API}/configmaps/demo-config"))
                .await;
            api.expect_apply(&format!("{NS_API}/services/demo-headless"))
                .await;
            api.expect_apply(&format!("{NS_API}/services/demo")).await;
            let call = api
                .expect(Method::PATCH, &format!("{NS_APPS}/statefulsets/demo"))
                .await;
            call.assert_server_side_apply();
            call.fail(500, "InternalError", "etcdserver: request timed out");
            // The remaining children are not applied; what exists is still observed and recorded.
            api.expect(Method::GET, &format!("{NS_APPS}/statefulsets/demo"))
                .await
                .not_found();
            api.expect(Method::GET, &format!("{NS_APPS}/deployments/demo-redis"))
                .await
                .respond_with(redis_available());
            api.expect(Method::GET, &format!("{NS_API}/services/demo"))
                .await
                .not_found();
            expect_pods(&mut api, vec![]).await;
            let status = expect_status_patch(&mut api).await;
            assert_eq!(status.observed_generation, Some(4));
            for type_ in ["Ready", "Progressing"] {
                let c = condition(&status, type_);
                assert_eq!(
                    (c.status.as_str(), c.reason.as_str()),
                    ("False", "ReconcileFailed")
                );
            }
            let degraded = condition(&status, "Degraded");
            assert_eq!(
                (degraded.status.as_str(), degraded.reason.as_str()),
                ("True", "ReconcileFailed")
            );
            assert!(
                degraded.message.contains("etcdserver: request timed out"),
                "{}",
                degraded.message
            );
            let event = expect_event(&mut api, "Warning", "ReconcileFailed").await;
            assert_eq!(event["note"], degraded.message.as_str());
            api
        },
    )
    .await;
    let error = result.expect_err("the reconcile fails");
    assert!(matches!(error, Error::Kube(_)), "{error:?}");
    let counted = metrics.render();
    for line in [
        "starling_operator_reconciles_total{result=\"error\"} 1",
        "starling_operator_reconcile_errors_total{error=\"kube_api\"} 1",
        "starling_operator_reconcile_duration_seconds_count 1",
    ] {
        assert!(
            counted.lines().any(|l| l == line),
            "{line:?} missing in\n{counted}"
        );
    }

    let (client, api) = fake_api::client();
    let action = error_policy(
        Arc::new(cluster(Default::default())),
        &error,
        context(client),
    );
    assert_eq!(action, Action::requeue(POLL));
    api.expect_done().await;
}

#[tokio::test]
async fn invalid_spec_is_recorded_and_waits_for_a_change() {
    let object = cluster_from_yaml(
        "redis: {managed: {}, external: {url: \"redis://redis.example:6379/0\"}}",
    );
    let result = run(object, |mut api| async move {
        expect_existing_gossip_key(&mut api).await;
        // Nothing is applied; what exists is observed.
        api.expect(Method::GET, &format!("{NS_APPS}/statefulsets/demo"))
            .await
            .not_found();
        api.expect(Method::GET, &format!("{NS_API}/services/demo"))
            .await
            .not_found();
        expect_pods(&mut api, vec![]).await;
        let status = expect_status_patch(&mut api).await;
        let degraded = condition(&status, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "InvalidSpec")
        );
        assert!(degraded
            .message
            .contains("exactly one of managed or external"));
        let event = expect_event(&mut api, "Warning", "InvalidSpec").await;
        assert_eq!(event["note"], degraded.message.as_str());
        api
    })
    .await;
    assert_eq!(
        result.expect("an invalid spec is not an error to retry"),
        Action::await_change()
    );
}

#[test]
fn only_objects_this_cluster_controls_count_as_owned() {
    let object = cluster(Default::default());
    let c = Cluster::new(&object).expect("cluster");
    let ours = c.child_meta("demo-redis".into(), "redis");
    assert!(owned_by(&ours, &c));
    let mut theirs = ours.clone();
    theirs.owner_references = None;
    assert!(!owned_by(&theirs, &c), "a user's object of the same name");
    let mut other = ours;
    if let Some(refs) = other.owner_references.as_mut() {
        refs[0].uid = "another-cluster".into();
    }
    assert!(!owned_by(&other, &c));
}

/// Brokers made by an operator older than generated gossip keys run without one. Giving them a
/// key would roll them into two gossip groups, so they keep running without, and the status
/// says so.
#[tokio::test]
async fn brokers_gossiping_without_a_key_keep_doing_so_and_no_key_is_made() {
    let object = cluster(Default::default());
    let running = {
        let c = Cluster::new(&object)
            .expect("cluster")
            .keeping_gossip_unencrypted();
        serde_json::to_value(resources::desired(&c).expect("children").stateful_set).expect("JSON")
    };
    let result = run(object, |mut api| async move {
        api.expect(Method::GET, &format!("{NS_API}/secrets/demo-gossip"))
            .await
            .not_found();
        api.expect(Method::GET, &format!("{NS_APPS}/statefulsets/demo"))
            .await
            .respond_with(stateful_set_with_status(&running, 3));
        // No Secret is created: the next request is the managed Redis'.
        expect_existing_managed_redis(&mut api).await;
        expect_existing_admin_secret(&mut api).await;
        let config = api
            .expect_apply(&format!("{NS_API}/configmaps/demo-config"))
            .await;
        let toml = config["data"]["starling.toml"].as_str().expect("config");
        assert!(!toml.contains("gossip_key_file"), "{toml}");
        api.expect_apply(&format!("{NS_API}/services/demo-headless"))
            .await;
        api.expect_apply(&format!("{NS_API}/services/demo")).await;
        let set = api
            .expect_apply(&format!("{NS_APPS}/statefulsets/demo"))
            .await;
        assert_eq!(
            set["spec"]["template"], running["spec"]["template"],
            "the pods do not roll"
        );
        api.expect_apply("/apis/policy/v1/namespaces/iot/poddisruptionbudgets/demo")
            .await;
        expect_network_policies_applied(&mut api).await;
        expect_service_monitor_discovery(&mut api, false).await;
        expect_ready_observations(&mut api, &set).await;
        let status = expect_status_patch(&mut api).await;
        let gossip = condition(&status, "GossipEncrypted");
        assert_eq!(
            (gossip.status.as_str(), gossip.reason.as_str()),
            ("False", "CreatedUnencrypted")
        );
        assert!(
            gossip
                .message
                .contains("spec.gossip.encryptionKeySecretRef"),
            "{}",
            gossip.message
        );
        expect_event(&mut api, "Normal", "Reconciled").await;
        api
    })
    .await;
    assert_eq!(result.expect("reconcile succeeds"), Action::requeue(RESYNC));
}

/// The generated key's Secret deleted under brokers that read it: a new key would keep every
/// restarted pod out of the others' gossip, so nothing is applied and the status names the
/// Secret.
#[tokio::test]
async fn a_deleted_gossip_key_secret_is_reported_not_replaced() {
    let object = cluster(Default::default());
    let running = {
        let c = Cluster::new(&object).expect("cluster");
        serde_json::to_value(resources::desired(&c).expect("children").stateful_set).expect("JSON")
    };
    let result = run(object, |mut api| async move {
        api.expect(Method::GET, &format!("{NS_API}/secrets/demo-gossip"))
            .await
            .not_found();
        api.expect(Method::GET, &format!("{NS_APPS}/statefulsets/demo"))
            .await
            .respond_with(stateful_set_with_status(&running, 3));
        // Nothing is created or applied: the next requests are the status pass's.
        expect_ready_observations(&mut api, &running).await;
        let status = expect_status_patch(&mut api).await;
        let degraded = condition(&status, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "ReconcileFailed")
        );
        assert!(
            degraded.message.contains("Secret demo-gossip"),
            "{}",
            degraded.message
        );
        expect_event(&mut api, "Warning", "ReconcileFailed").await;
        api
    })
    .await;
    assert!(
        matches!(result, Err(Error::GossipSecretMissing(_))),
        "{result:?}"
    );
}

/// A cluster that refuses anonymous clients without naming a password file gets a generated
/// user, created once, before the brokers that mount it.
#[tokio::test]
async fn a_closed_cluster_without_users_gets_a_generated_user_before_its_brokers() {
    let object = cluster_from_yaml("auth: {allowAnonymous: false}");
    let result = run(object, |mut api| async move {
        expect_existing_gossip_key(&mut api).await;
        expect_existing_managed_redis(&mut api).await;
        expect_existing_admin_secret(&mut api).await;
        api.expect(Method::GET, &format!("{NS_API}/secrets/demo-users"))
            .await
            .not_found();
        let call = api.expect(Method::POST, &format!("{NS_API}/secrets")).await;
        assert_eq!(call.body["metadata"]["name"], "demo-users");
        assert_eq!(call.body["metadata"]["ownerReferences"][0]["name"], "demo");
        let data = &call.body["stringData"];
        assert_eq!(data["username"], "starling");
        let password = data["password"].as_str().expect("password");
        assert_eq!(password.len(), 32);
        let passwd = data["passwd"].as_str().expect("password file");
        assert!(passwd.starts_with("starling:$argon2id$"), "{passwd}");
        assert!(!passwd.contains(password), "only the hash is in the file");
        let secret = live(call.body.clone());
        call.respond(StatusCode::CREATED, secret);
        let config = api
            .expect_apply(&format!("{NS_API}/configmaps/demo-config"))
            .await;
        let toml = config["data"]["starling.toml"].as_str().expect("config");
        assert!(toml.contains("allow_anonymous = false"), "{toml}");
        assert!(toml.contains("password_file = "), "{toml}");
        api.expect_apply(&format!("{NS_API}/services/demo-headless"))
            .await;
        api.expect_apply(&format!("{NS_API}/services/demo")).await;
        let set = api
            .expect_apply(&format!("{NS_APPS}/statefulsets/demo"))
            .await;
        let volumes = set["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .expect("volumes");
        let users = volumes
            .iter()
            .find(|v| v["name"] == "users")
            .expect("the password file is mounted");
        assert_eq!(users["secret"]["secretName"], "demo-users");
        assert_eq!(users["secret"]["items"][0]["key"], "passwd");
        api.expect_apply("/apis/policy/v1/namespaces/iot/poddisruptionbudgets/demo")
            .await;
        expect_network_policies_applied(&mut api).await;
        expect_service_monitor_discovery(&mut api, false).await;
        expect_ready_observations(&mut api, &set).await;
        expect_status_patch(&mut api).await;
        expect_event(&mut api, "Normal", "Reconciled").await;
        api
    })
    .await;
    assert_eq!(result.expect("reconcile succeeds"), Action::requeue(RESYNC));
}

/// An external Redis' password is an environment variable, read when a broker starts: its
/// value's hash is on the pod template, so a rotated password rolls the pods.
#[tokio::test]
async fn an_external_redis_password_is_hashed_onto_the_pod_template() {
    async fn applied_hash(password: Option<&'static str>) -> Option<String> {
        let object = cluster_from_yaml(
            "redis: {external: {url: \"redis://r.example:6379\", passwordSecretRef: {name: cred, key: pw}}}",
        );
        let mut hash = None;
        let slot = &mut hash;
        let result = run(object, |mut api| async move {
            expect_existing_gossip_key(&mut api).await;
            let call = api
                .expect(Method::GET, &format!("{NS_API}/secrets/cred"))
                .await;
            match password {
                Some(pw) => {
                    let mut secret = existing("v1", "Secret", "cred", false);
                    secret["data"] = json!({ "pw": base64_of(pw) });
                    call.respond_with(secret);
                }
                None => call.not_found(),
            }
            for path in [
                format!("{NS_API}/services/demo-redis"),
                format!("{NS_APPS}/deployments/demo-redis"),
            ] {
                api.expect(Method::GET, &path).await.not_found();
            }
            expect_no_sentinel_redis(&mut api).await;
            expect_existing_admin_secret(&mut api).await;
            api.expect_apply(&format!("{NS_API}/configmaps/demo-config"))
                .await;
            api.expect_apply(&format!("{NS_API}/services/demo-headless"))
                .await;
            api.expect_apply(&format!("{NS_API}/services/demo")).await;
            let set = api
                .expect_apply(&format!("{NS_APPS}/statefulsets/demo"))
                .await;
            *slot = set["spec"]["template"]["metadata"]["annotations"]
                ["mqtt.starling.dev/restart-secrets-hash"]
                .as_str()
                .map(str::to_string);
            api.expect_apply("/apis/policy/v1/namespaces/iot/poddisruptionbudgets/demo")
                .await;
            api.expect_apply(&format!("{NP_API}/networkpolicies/demo"))
                .await;
            api.expect(Method::GET, &format!("{NP_API}/networkpolicies/demo-redis"))
                .await
                .not_found();
            expect_service_monitor_discovery(&mut api, false).await;
            api.expect(Method::GET, &format!("{NS_APPS}/statefulsets/demo"))
                .await
                .respond_with(stateful_set_with_status(&set, 3));
            api.expect(Method::GET, &format!("{NS_API}/services/demo"))
                .await
                .not_found();
            expect_pods(&mut api, vec![]).await;
            expect_status_patch(&mut api).await;
            expect_event(&mut api, "Normal", "Reconciled").await;
            api
        })
        .await;
        result.expect("reconcile succeeds");
        hash
    }
    let first = applied_hash(Some("one"))
        .await
        .expect("the hash is on the pods");
    assert_eq!(
        applied_hash(Some("one")).await.as_deref(),
        Some(first.as_str())
    );
    let rotated = applied_hash(Some("two")).await.expect("hash");
    assert_ne!(first, rotated, "a rotated password rolls the pods");
    let missing = applied_hash(None).await.expect("hash");
    assert_ne!(missing, first);
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

mod autoscaling;
mod evacuation;

/// Runs a cluster whose managed Redis turned on Sentinel, `ready` of its 3 Redis pods ready,
/// its sentinels answered by `sentinels`; returns the status recorded, the Redis StatefulSet
/// applied and the action.
async fn reconcile_with_sentinel(
    ready: i32,
    sentinels: crate::redis_health::SentinelReader,
) -> (MqttClusterStatus, Value, Action) {
    let object =
        cluster_from_yaml("redis: {managed: {sentinel: {}}, replication: {waitReplicas: 1}}");
    let mut recorded = None;
    let slot = &mut recorded;
    let metrics = Arc::new(Metrics::new());
    let result = run_full(&metrics, sentinels, object, |mut api| async move {
        expect_existing_gossip_key(&mut api).await;
        api.expect(Method::GET, &format!("{NS_API}/secrets/demo-redis"))
            .await
            .respond_with(redis_secret(true));
        // The one-pod Redis' Service and Deployment, made before Sentinel was on: deleted.
        for (path, kind, api_version) in [
            (format!("{NS_API}/services/demo-redis"), "Service", "v1"),
            (
                format!("{NS_APPS}/deployments/demo-redis"),
                "Deployment",
                "apps/v1",
            ),
        ] {
            api.expect(Method::GET, &path).await.respond_with(existing(
                api_version,
                kind,
                "demo-redis",
                true,
            ));
            api.expect(Method::DELETE, &path)
                .await
                .respond_with(existing(api_version, kind, "demo-redis", true));
            let event = expect_event(&mut api, "Normal", "DeletedChild").await;
            assert_eq!(event["related"]["kind"], kind);
        }
        let nodes = api
            .expect_apply(&format!("{NS_API}/services/demo-redis-nodes"))
            .await;
        assert_eq!(nodes["spec"]["clusterIP"], "None");
        let redis = api
            .expect_apply(&format!("{NS_APPS}/statefulsets/demo-redis"))
            .await;
        assert_eq!(redis["spec"]["serviceName"], "demo-redis-nodes");
        api.expect_apply("/apis/policy/v1/namespaces/iot/poddisruptionbudgets/demo-redis")
            .await;
        expect_existing_admin_secret(&mut api).await;
        let config = api
            .expect_apply(&format!("{NS_API}/configmaps/demo-config"))
            .await;
        let toml = config["data"]["starling.toml"].as_str().expect("config");
        assert!(
            toml.contains("demo-redis-2.demo-redis-nodes.iot.svc:26379"),
            "{toml}"
        );
        api.expect_apply(&format!("{NS_API}/services/demo-headless"))
            .await;
        api.expect_apply(&format!("{NS_API}/services/demo")).await;
        let set = api
            .expect_apply(&format!("{NS_APPS}/statefulsets/demo"))
            .await;
        let env = set["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .expect("env");
        assert!(
            !env.iter()
                .any(|e| e["name"] == "STARLING_CLUSTER__REDIS_URL"),
            "the brokers ask the sentinels, no URL: {env:?}"
        );
        api.expect_apply("/apis/policy/v1/namespaces/iot/poddisruptionbudgets/demo")
            .await;
        expect_network_policies_applied(&mut api).await;
        expect_service_monitor_discovery(&mut api, false).await;
        api.expect(Method::GET, &format!("{NS_APPS}/statefulsets/demo"))
            .await
            .respond_with(stateful_set_with_status(&set, 3));
        // The Redis StatefulSet, not a Deployment, says whether Redis is available.
        api.expect(Method::GET, &format!("{NS_APPS}/statefulsets/demo-redis"))
            .await
            .respond_with(stateful_set_with_status(&redis, ready));
        // The password to ask the sentinels with.
        api.expect(Method::GET, &format!("{NS_API}/secrets/demo-redis"))
            .await
            .respond_with(redis_secret(true));
        api.expect(Method::GET, &format!("{NS_API}/services/demo"))
            .await
            .respond_with(load_balancer("203.0.113.7"));
        expect_pods(&mut api, vec![]).await;
        *slot = Some((expect_status_patch(&mut api).await, redis));
        expect_event(&mut api, "Normal", "Reconciled").await;
        api
    })
    .await;
    let action = result.expect("reconcile succeeds");
    let (status, redis) = recorded.expect("a status");
    (status, redis, action)
}

#[tokio::test]
async fn sentinel_replaces_the_one_pod_redis_and_is_ready_with_a_majority_of_its_pods() {
    let (status, redis, action) = reconcile_with_sentinel(2, stand_in_sentinels()).await;
    assert_eq!(action, Action::requeue(RESYNC));
    assert_eq!(redis["spec"]["replicas"], 3);
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "AllReplicasReady"),
        "2 of 3 Redis pods: the sentinels have their majority"
    );
    let replicated = condition(&status, "RedisReplicated");
    assert_eq!(
        (
            replicated.status.as_str(),
            replicated.reason.as_str(),
            replicated.message.as_str()
        ),
        (
            "True",
            "Replicated",
            "the brokers use primary demo-redis-1; 2 of 2 replicas in sync; 3 of 3 sentinels see one another"
        )
    );
    let (status, _, _) = reconcile_with_sentinel(1, stand_in_sentinels()).await;
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "RedisUnavailable")
    );
}

#[tokio::test]
async fn replication_not_whole_is_named_and_looked_at_again_soon() {
    // The sentinels see a replica whose link is down (say, resyncing after a failover).
    let behind: crate::redis_health::SentinelReader = Arc::new(|sentinels, _, _| {
        Box::pin(async move {
            let host = |i: u32| format!("demo-redis-{i}.demo-redis-nodes.iot.svc");
            Ok(crate::redis_health::SentinelView {
                asked: sentinels[0].clone(),
                primary: host(2),
                primary_down: false,
                replicas: vec![
                    crate::redis_health::ReplicaView {
                        host: host(0),
                        in_sync: false,
                    },
                    crate::redis_health::ReplicaView {
                        host: host(1),
                        in_sync: true,
                    },
                ],
                sentinels: 3,
            })
        })
    });
    let (status, _, action) = reconcile_with_sentinel(3, behind).await;
    let replicated = condition(&status, "RedisReplicated");
    assert_eq!(
        (replicated.status.as_str(), replicated.reason.as_str()),
        ("False", "ReplicasBehind")
    );
    assert!(replicated
        .message
        .contains("primary demo-redis-2; 1 of 2 replicas in sync"));
    assert_eq!(
        condition(&status, "Ready").status,
        "True",
        "clients are served meanwhile"
    );
    assert_eq!(action, Action::requeue(POLL), "followed until whole again");
    // Sentinels that do not answer are named too.
    let silent: crate::redis_health::SentinelReader =
        Arc::new(|_, _, _| Box::pin(async { Err("no sentinel answered (…)".to_string()) }));
    let (status, _, action) = reconcile_with_sentinel(3, silent).await;
    assert_eq!(
        condition(&status, "RedisReplicated").reason,
        "SentinelsUnreachable"
    );
    assert_eq!(action, Action::requeue(POLL));
}
