//! Broker pods on their way out inside a reconcile: their evacuations read from admin API
//! stand-ins on real loopback sockets into `status.evacuations` and Events, the API server
//! scripted.

use super::autoscaling::{
    bearer_ok, broker_pod, expect_admin_token, expect_ready_cluster, stand_ins,
};
use super::*;
use axum::extract::State;
use axum::http::HeaderMap;
use std::time::Duration;

/// Where an evacuation stands, as a broker's `GET /api/v1/evacuate` says.
type Standing = (i64, i64);

/// Admin API stand-ins at 127.0.0.(11 + i) for the `(i, (asked, remaining))` given; the port.
async fn brokers_evacuating(standings: &[(usize, Standing)]) -> u16 {
    stand_ins(standings, "/api/v1/evacuate", evacuation).await
}

async fn evacuation(
    State((asked, remaining)): State<Standing>,
    headers: HeaderMap,
) -> Result<String, StatusCode> {
    if !bearer_ok(&headers) {
        return Err(StatusCode::UNAUTHORIZED);
    }
    Ok(
        json!({"evacuating": true, "asked": asked, "remaining": remaining, "rate_per_sec": 100})
            .to_string(),
    )
}

/// Broker pod `demo-<i>`, going (its deletionTimestamp set).
fn going_pod(i: usize) -> Value {
    let mut pod = broker_pod(i);
    pod["metadata"]["deletionTimestamp"] = json!("2026-12-07T12:00:00Z");
    pod
}

#[tokio::test]
async fn an_evacuation_is_announced_once_per_stage_and_named_by_the_pods_uid() {
    let port = brokers_evacuating(&[(2, (120, 130))]).await;
    let mut going = going_pod(2);
    going["metadata"]["uid"] = json!("5e1f2a3b-0000-4000-8000-000000000002");
    let pods = vec![broker_pod(0), broker_pod(1), going.clone()];
    // First reading: announced, with the UID's start in the action.
    let result = run(cluster(port), |mut api| async move {
        expect_ready_cluster(&mut api, pods).await;
        expect_admin_token(&mut api).await;
        let event = expect_event(&mut api, "Normal", "Evacuating").await;
        assert_eq!(event["action"], "Evacuate demo-2 5e1f2a3b");
        expect_status_patch(&mut api).await;
        expect_event(&mut api, "Normal", "Reconciled").await;
        api
    })
    .await;
    result.expect("reconciled");
    // Read again at the same stage (the status already says so): no second Event.
    let mut known = cluster(port);
    let mut status = MqttClusterStatus::default();
    status.evacuations.push(crate::crd::PodEvacuation {
        pod: "demo-2".into(),
        evacuating: true,
        asked: 100,
        remaining: 150,
        rate_per_sec: 100,
        unknown: None,
    });
    known.status = Some(status);
    let pods = vec![broker_pod(0), broker_pod(1), going];
    let result = run(known, |mut api| async move {
        expect_ready_cluster(&mut api, pods).await;
        expect_admin_token(&mut api).await;
        let status = expect_status_patch(&mut api).await;
        assert_eq!(status.evacuations[0].remaining, 130);
        expect_event(&mut api, "Normal", "Reconciled").await;
        api
    })
    .await;
    result.expect("reconciled");
}

fn cluster(admin_port: u16) -> MqttCluster {
    cluster_from_yaml(&format!(
        "replicas: 2\nbroker: {{adminPort: {admin_port}}}\n"
    ))
}

#[tokio::test]
async fn pods_that_are_going_show_their_evacuation_in_the_status_and_an_event() {
    // demo-2 answers; demo-3 has nothing listening on its address.
    let port = brokers_evacuating(&[(2, (120, 130))]).await;
    let pods = vec![broker_pod(0), broker_pod(1), going_pod(2), going_pod(3)];
    let result = run(cluster(port), |mut api| async move {
        expect_ready_cluster(&mut api, pods).await;
        expect_admin_token(&mut api).await;
        let event = expect_event(&mut api, "Normal", "Evacuating").await;
        assert_eq!(
            event["note"],
            "demo-2 is going: asked 120 clients to reconnect to the other brokers, 130 still \
             connected (100 per second)"
        );
        assert_eq!(
            event["action"], "Evacuate demo-2",
            "the pod has no UID here"
        );
        let status = expect_status_patch(&mut api).await;
        assert_eq!(status.evacuations.len(), 2, "{:?}", status.evacuations);
        let answered = &status.evacuations[0];
        assert_eq!(
            (
                answered.pod.as_str(),
                answered.evacuating,
                answered.asked,
                answered.remaining,
                answered.rate_per_sec
            ),
            ("demo-2", true, 120, 130, 100)
        );
        assert_eq!(answered.unknown, None);
        let silent = &status.evacuations[1];
        assert_eq!(silent.pod, "demo-3");
        assert!(!silent.evacuating);
        assert!(silent.unknown.is_some(), "{silent:?}");
        expect_event(&mut api, "Normal", "Reconciled").await;
        api
    })
    .await;
    // The evacuation is followed closely while it lasts.
    assert_eq!(
        result.expect("reconciled"),
        Action::requeue(Duration::from_secs(2))
    );
}

#[tokio::test]
async fn a_pod_whose_clients_all_left_is_reported_evacuated() {
    let port = brokers_evacuating(&[(2, (250, 0))]).await;
    let pods = vec![broker_pod(0), broker_pod(1), going_pod(2)];
    let result = run(cluster(port), |mut api| async move {
        expect_ready_cluster(&mut api, pods).await;
        expect_admin_token(&mut api).await;
        let event = expect_event(&mut api, "Normal", "Evacuated").await;
        assert_eq!(
            event["note"],
            "demo-2 is going: every client left for the other brokers (250 asked)"
        );
        let status = expect_status_patch(&mut api).await;
        assert_eq!(status.evacuations.len(), 1);
        assert_eq!(status.evacuations[0].remaining, 0);
        expect_event(&mut api, "Normal", "Reconciled").await;
        api
    })
    .await;
    result.expect("reconciled");
}
