//! The autoscaler inside a reconcile: brokers that answer on real loopback sockets, the API
//! server scripted.

use super::*;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::Router;
use std::time::Duration;
use tokio::net::TcpListener;

const SCALE_PATH: &str = "/apis/mqtt.starling.dev/v1alpha1/namespaces/iot/mqttclusters/demo/scale";
const HPA_PATH: &str = "/apis/autoscaling/v2/namespaces/iot/horizontalpodautoscalers";
pub(super) const TOKEN: &str = "t0ken";

/// Admin API stand-ins at 127.0.0.(11 + i) for each `(i, state)`, all on one port (as broker
/// pods share the admin port), answering `GET path` with `answer`; the port.
pub(super) async fn stand_ins<S, H, T>(states: &[(usize, S)], path: &str, answer: H) -> u16
where
    S: Clone + Send + Sync + 'static,
    H: axum::handler::Handler<T, S>,
    T: 'static,
{
    let mut port = 0;
    for (i, state) in states {
        let ip = format!("127.0.0.{}", 11 + i);
        let listener = TcpListener::bind((ip.as_str(), port))
            .await
            .expect("bind a loopback address");
        port = listener.local_addr().expect("address").port();
        let app = Router::new()
            .route(path, get(answer.clone()))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    port
}

/// Whether a request carries the admin token.
pub(super) fn bearer_ok(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .is_some_and(|v| v == format!("Bearer {TOKEN}").as_str())
}

/// Admin API stand-ins answering `GET /api/v1/node` with `counts[i]` connections on
/// 127.0.0.(11 + i); the port.
async fn brokers_answering(counts: &[i64]) -> u16 {
    let states: Vec<(usize, i64)> = counts.iter().copied().enumerate().collect();
    stand_ins(&states, "/api/v1/node", node).await
}

async fn node(State(count): State<i64>, headers: HeaderMap) -> Result<String, StatusCode> {
    if !bearer_ok(&headers) {
        return Err(StatusCode::UNAUTHORIZED);
    }
    Ok(json!({"node_id": "x", "connections": count, "version": "0"}).to_string())
}

/// A ready broker pod `demo-<i>` at 127.0.0.(11 + i).
pub(super) fn broker_pod(i: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": format!("demo-{i}"), "namespace": "iot"},
        "status": {
            "phase": "Running",
            "podIP": format!("127.0.0.{}", 11 + i),
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

fn autoscaled_cluster(admin_port: u16) -> MqttCluster {
    cluster_from_yaml(&format!(
        "replicas: 3\n\
         broker: {{adminPort: {admin_port}}}\n\
         autoscaling: {{minReplicas: 2, maxReplicas: 6, targetConnectionsPerBroker: 100, \
         scaleDownStabilizationSeconds: 0}}\n"
    ))
}

/// Answers everything a reconcile of a ready cluster reads before the autoscaler, the pod
/// list holding `pods`.
pub(super) async fn expect_ready_cluster(api: &mut FakeApiServer, pods: Vec<Value>) {
    expect_existing_gossip_key(api).await;
    expect_existing_managed_redis(api).await;
    let set = expect_broker_children_applied(api).await;
    expect_service_monitor_discovery(api, false).await;
    expect_ready_observations_with_pods(api, &set, pods).await;
}

/// Asserts the `Autoscaling` condition's status and reason, and that its message names
/// `mentions`.
fn assert_autoscaling(status: &MqttClusterStatus, expected: (&str, &str), mentions: &str) {
    let autoscaling = condition(status, "Autoscaling");
    assert_eq!(
        (autoscaling.status.as_str(), autoscaling.reason.as_str()),
        expected
    );
    assert!(
        autoscaling.message.contains(mentions),
        "{}",
        autoscaling.message
    );
}

async fn expect_hpas(api: &mut FakeApiServer, items: Vec<Value>) {
    api.expect(Method::GET, HPA_PATH).await.respond_with(json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscalerList",
        "metadata": {"resourceVersion": "3"},
        "items": items,
    }));
}

pub(super) async fn expect_admin_token(api: &mut FakeApiServer) {
    let mut secret = existing("v1", "Secret", "demo-admin", true);
    secret["data"] = json!({"token": "dDBrZW4="});
    api.expect(Method::GET, &format!("{NS_API}/secrets/demo-admin"))
        .await
        .respond_with(secret);
}

#[tokio::test]
async fn brokers_holding_more_than_the_target_are_scaled_up_through_the_scale_subresource() {
    // 450 connections at 100 per broker: 5 brokers.
    let port = brokers_answering(&[140, 150, 160]).await;
    let result = run(autoscaled_cluster(port), |mut api| async move {
        expect_ready_cluster(&mut api, (0..3).map(broker_pod).collect()).await;
        expect_hpas(&mut api, vec![]).await;
        expect_admin_token(&mut api).await;
        let call = api.expect(Method::PATCH, SCALE_PATH).await;
        assert_eq!(
            call.content_type.as_deref(),
            Some("application/merge-patch+json")
        );
        assert_eq!(call.body, json!({"spec": {"replicas": 5}}));
        call.respond_with(json!({
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": "demo", "namespace": "iot"},
            "spec": {"replicas": 5},
        }));
        let event = expect_event(&mut api, "Normal", "Autoscaled").await;
        let note = event["note"].as_str().expect("note");
        assert!(note.starts_with("3 → 5 brokers"), "{note}");
        let status = expect_status_patch(&mut api).await;
        let autoscaling = condition(&status, "Autoscaling");
        assert_eq!(
            (autoscaling.status.as_str(), autoscaling.reason.as_str()),
            ("True", "ScaleUp")
        );
        let recorded = status.autoscaling.expect("status.autoscaling");
        assert_eq!(recorded.desired_replicas, 5);
        assert_eq!(recorded.connections, Some(450));
        assert!(recorded.last_scale_time.is_some());
        expect_event(&mut api, "Normal", "Reconciled").await;
        api
    })
    .await;
    assert_eq!(result.expect("reconcile succeeds"), Action::requeue(POLL));
}

#[tokio::test]
async fn a_broker_without_a_count_holds_the_size_and_is_named_in_the_condition() {
    // Two brokers answer (20 connections would allow the minimum, 2); demo-2 is not ready.
    let port = brokers_answering(&[10, 10]).await;
    let mut unready = broker_pod(2);
    unready["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    let pods = vec![broker_pod(0), broker_pod(1), unready];
    let result = run(autoscaled_cluster(port), |mut api| async move {
        expect_ready_cluster(&mut api, pods).await;
        expect_hpas(&mut api, vec![]).await;
        expect_admin_token(&mut api).await;
        // No scale patch, no Autoscaled Event.
        let status = expect_status_patch(&mut api).await;
        assert_autoscaling(&status, ("True", "CountsUnavailable"), "demo-2 (not ready)");
        let recorded = status.autoscaling.expect("status.autoscaling");
        assert_eq!((recorded.desired_replicas, recorded.connections), (3, None));
        expect_event(&mut api, "Normal", "Reconciled").await;
        api
    })
    .await;
    assert_eq!(result.expect("reconcile succeeds"), Action::requeue(POLL));
}

#[tokio::test]
async fn a_wrong_token_counts_as_no_answer() {
    let port = brokers_answering(&[500, 500, 500]).await;
    let result = run(autoscaled_cluster(port), |mut api| async move {
        expect_ready_cluster(&mut api, (0..3).map(broker_pod).collect()).await;
        expect_hpas(&mut api, vec![]).await;
        let mut secret = existing("v1", "Secret", "demo-admin", true);
        secret["data"] = json!({"token": "d3Jvbmc="});
        api.expect(Method::GET, &format!("{NS_API}/secrets/demo-admin"))
            .await
            .respond_with(secret);
        let status = expect_status_patch(&mut api).await;
        let autoscaling = condition(&status, "Autoscaling");
        assert_eq!(autoscaling.reason, "CountsUnavailable");
        assert!(
            autoscaling.message.contains("demo-0 (answered 401)"),
            "{}",
            autoscaling.message
        );
        expect_event(&mut api, "Normal", "Reconciled").await;
        api
    })
    .await;
    assert_eq!(result.expect("reconcile succeeds"), Action::requeue(POLL));
}

#[tokio::test]
async fn an_external_autoscaler_on_the_same_cluster_stops_the_operator_scaling() {
    let port = brokers_answering(&[500, 500, 500]).await;
    let hpa = json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "demo-cpu", "namespace": "iot"},
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "mqtt.starling.dev/v1alpha1",
                "kind": "MqttCluster",
                "name": "demo",
            },
            "minReplicas": 1,
            "maxReplicas": 9,
        },
    });
    let result = run(autoscaled_cluster(port), |mut api| async move {
        expect_ready_cluster(&mut api, (0..3).map(broker_pod).collect()).await;
        expect_hpas(&mut api, vec![hpa]).await;
        // No token read, no count, no scale.
        let status = expect_status_patch(&mut api).await;
        assert_autoscaling(&status, ("False", "ExternalAutoscaler"), "demo-cpu");
        expect_event(&mut api, "Normal", "Reconciled").await;
        api
    })
    .await;
    assert_eq!(result.expect("reconcile succeeds"), Action::requeue(POLL));
}

#[tokio::test]
async fn a_failing_api_call_is_reported_in_the_condition_and_the_status_still_written() {
    let port = brokers_answering(&[100, 100, 100]).await;
    let result = run(autoscaled_cluster(port), |mut api| async move {
        expect_ready_cluster(&mut api, (0..3).map(broker_pod).collect()).await;
        api.expect(Method::GET, HPA_PATH).await.fail(
            403,
            "Forbidden",
            "horizontalpodautoscalers is forbidden",
        );
        let status = expect_status_patch(&mut api).await;
        assert_autoscaling(&status, ("False", "AutoscalerFailed"), "forbidden");
        // The rest of the status is there.
        assert_eq!(condition(&status, "Ready").status, "True");
        expect_event(&mut api, "Normal", "Reconciled").await;
        api
    })
    .await;
    assert_eq!(result.expect("reconcile succeeds"), Action::requeue(POLL));
}

#[tokio::test]
async fn a_reconcile_soon_after_a_count_reuses_it_instead_of_counting_again() {
    // 300 connections at 100 per broker: 3 brokers, at target.
    let port = brokers_answering(&[100, 100, 100]).await;
    let object = autoscaled_cluster(port);
    let (client, api) = fake_api::client();
    let ctx = context(client);
    let first_pass = async move {
        let mut api = api;
        expect_ready_cluster(&mut api, (0..3).map(broker_pod).collect()).await;
        expect_hpas(&mut api, vec![]).await;
        expect_admin_token(&mut api).await;
        let status = expect_status_patch(&mut api).await;
        assert_eq!(condition(&status, "Autoscaling").reason, "AtTarget");
        expect_event(&mut api, "Normal", "Reconciled").await;
        (api, status)
    };
    let (first, (api, status)) =
        tokio::join!(reconcile(Arc::new(object.clone()), ctx.clone()), first_pass);
    assert_eq!(first.expect("reconcile succeeds"), Action::requeue(POLL));

    // The status patch starts the next reconcile at once: no HPA list, no token, no count, no
    // status patch (the status is the same), so no loop.
    let mut object = object;
    object.status = Some(status);
    let second_pass = async move {
        let mut api = api;
        expect_ready_cluster(&mut api, (0..3).map(broker_pod).collect()).await;
        // Nothing more: a request here (an HPA list, a Secret read) fails the test.
        let more = tokio::time::timeout(Duration::from_secs(2), api.next()).await;
        if let Ok(call) = more {
            panic!("a second count so soon: {} {}", call.method, call.path);
        }
        api
    };
    let (second, api) = tokio::join!(reconcile(Arc::new(object), ctx.clone()), second_pass);
    // The fake API server is done once the client (held by the context) is gone.
    drop(ctx);
    api.expect_done().await;
    assert_eq!(second.expect("reconcile succeeds"), Action::requeue(POLL));
}
