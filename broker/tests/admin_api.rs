//! The admin API and `starling-broker ctl` end to end: the real binary's `ctl` command against a
//! running broker's admin port, with real MQTT clients that it lists, disconnects and evacuates.

mod common;

use common::{v4, v5, TestBroker, WAIT};
use starling_broker::admin::api::{
    ClientList, NodeView, RetainedList, SessionView, SubscriptionList,
};
use starling_broker::clients::{ClientView, EvacuationStatus};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

const TOKEN: &str = "0123456789abcdef-admin-token";

fn token_file(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("admin-token");
    std::fs::write(&path, format!("{token}\n")).expect("write token");
    path
}

async fn broker_with_token(token_file: PathBuf) -> TestBroker {
    TestBroker::start_with(move |c| c.admin.token_file = Some(token_file)).await
}

fn admin_url(broker: &TestBroker) -> String {
    format!("http://{}", broker.addresses.admin.expect("admin port"))
}

/// Runs `starling-broker ctl ARGS` against `url` with `token_file`; returns (success, stdout,
/// stderr).
async fn ctl(url: &str, token_file: &Path, args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_starling-broker"))
        .arg("ctl")
        .arg("--url")
        .arg(url)
        .arg("--token-file")
        .arg(token_file)
        .args(args)
        .env_remove("STARLING_CONFIG")
        .output();
    let output = tokio::time::timeout(WAIT, output)
        .await
        .expect("ctl ends in time")
        .expect("ctl runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn ctl_json<T: serde::de::DeserializeOwned>(url: &str, token: &Path, args: &[&str]) -> T {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = ctl(url, token, &all).await;
    assert!(ok, "ctl {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("ctl {args:?}: {e}: {stdout}"))
}

fn v5_persistent(addr: SocketAddr, id: &str) -> v5::MqttOptions {
    let mut options = v5::options(addr, id);
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(300));
    options
}

#[tokio::test]
async fn ctl_lists_clients_and_disconnects_them_keeping_or_discarding_their_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path(), TOKEN);
    let broker = broker_with_token(token.clone()).await;
    let url = admin_url(&broker);

    let mut keeper = v5::connect(v5_persistent(broker.tcp(), "keeper"));
    keeper.connack().await;
    let mut discarded = v5::connect(v5_persistent(broker.tcp(), "discarded"));
    discarded.connack().await;
    let mut old = v4::connect(v4::options(broker.tcp(), "old-protocol"));
    old.connack().await;

    let node: NodeView = ctl_json(&url, &token, &["node"]).await;
    assert_eq!(node.connections, 3);
    assert!(!node.evacuation.evacuating);

    let list: ClientList = ctl_json(&url, &token, &["clients"]).await;
    let ids: Vec<&str> = list.clients.iter().map(|c| c.client_id.as_str()).collect();
    assert_eq!(ids, ["discarded", "keeper", "old-protocol"]);
    assert_eq!(list.clients[1].info.protocol, "5");
    assert_eq!(list.clients[1].info.session_expiry_secs, 300);
    assert_eq!(list.clients[2].info.protocol, "3.1.1");
    let (ok, table, _) = ctl(&url, &token, &["clients", "--prefix", "kee"]).await;
    assert!(ok);
    assert!(
        table.contains("keeper") && !table.contains("discarded"),
        "{table}"
    );

    // Disconnected, session kept: the client is told why, and resumes its session.
    let (ok, said, stderr) = ctl(&url, &token, &["disconnect", "keeper"]).await;
    assert!(ok, "{stderr}");
    assert!(said.contains("session kept"), "{said}");
    let ended = keeper.ended().await;
    assert!(ended.contains("AdministrativeAction"), "{ended}");
    let mut back = v5::connect(v5_persistent(broker.tcp(), "keeper"));
    assert!(back.connack().await.session_present, "the session was kept");

    // Disconnected with its session discarded: it comes back to a new one.
    let (ok, _, stderr) = ctl(
        &url,
        &token,
        &["disconnect", "discarded", "--discard-session"],
    )
    .await;
    assert!(ok, "{stderr}");
    let ended = discarded.ended().await;
    assert!(ended.contains("AdministrativeAction"), "{ended}");
    let mut fresh = v5::connect(v5_persistent(broker.tcp(), "discarded"));
    assert!(
        !fresh.connack().await.session_present,
        "the session was discarded"
    );

    // A client that is not connected: a clear error, non-zero exit.
    let (ok, _, stderr) = ctl(&url, &token, &["disconnect", "nobody"]).await;
    assert!(!ok);
    assert!(
        stderr.contains("404") && stderr.contains("not connected"),
        "{stderr}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn the_api_wants_the_right_token_and_is_off_without_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path(), TOKEN);
    let broker = broker_with_token(token).await;
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-token-at-all").expect("write");
    let (ok, _, stderr) = ctl(&admin_url(&broker), &wrong, &["node"]).await;
    assert!(!ok);
    assert!(stderr.contains("401"), "{stderr}");
    broker.stop().await;

    let off = TestBroker::start().await;
    let (ok, _, stderr) = ctl(&admin_url(&off), &wrong, &["node"]).await;
    assert!(!ok);
    assert!(
        stderr.contains("404") && stderr.contains("admin.token_file"),
        "{stderr}"
    );
    off.stop().await;
}

#[tokio::test]
async fn an_evacuated_node_refuses_new_clients_and_asks_each_connected_one_to_go_elsewhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path(), TOKEN);
    let broker = broker_with_token(token.clone()).await;
    let url = admin_url(&broker);
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut client = v5::connect(v5_persistent(broker.tcp(), &format!("evacuee-{i}")));
        client.connack().await;
        clients.push(client);
    }

    // As the operator's preStop hook does: evacuate, and wait until the node is empty.
    let status: EvacuationStatus =
        ctl_json(&url, &token, &["evacuate", "--rate", "2", "--wait", "10"]).await;
    assert!(status.evacuating);
    assert_eq!(status.rate_per_sec, 2);
    assert_eq!((status.asked, status.remaining), (3, 0));
    for client in &mut clients {
        let ended = client.ended().await;
        assert!(ended.contains("UseAnotherServer"), "{ended}");
    }
    let status: EvacuationStatus = ctl_json(&url, &token, &["evacuation"]).await;
    assert_eq!((status.asked, status.remaining), (3, 0));

    // New clients are sent elsewhere, and the node says it is not ready.
    let mut late = v5::connect(v5_persistent(broker.tcp(), "late"));
    let refused = late.connack_outcome().await.expect_err("refused");
    assert!(refused.contains("UseAnotherServer"), "{refused}");
    let readyz_url = format!("{url}/readyz");
    let readyz = tokio::task::spawn_blocking(move || ureq_get(&readyz_url))
        .await
        .expect("GET /readyz");
    assert_eq!(readyz, (503, "evacuating\n".to_string()));
    // What an alert on a stuck evacuation reads: the node is evacuating, and asked 3 clients.
    let metrics_url = format!("{url}/metrics");
    let (code, metrics) = tokio::task::spawn_blocking(move || ureq_get(&metrics_url))
        .await
        .expect("GET /metrics");
    assert_eq!(code, 200);
    let lines: Vec<&str> = metrics.lines().collect();
    assert!(lines.contains(&"starling_evacuating 1"), "{metrics}");
    assert!(
        lines.contains(&"starling_evacuation_asked_total 3"),
        "{metrics}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn ctl_shows_sessions_offline_too_their_subscriptions_and_retained_messages_and_deletes_one()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path(), TOKEN);
    let broker = broker_with_token(token.clone()).await;
    let url = admin_url(&broker);

    // A persistent session with two subscriptions (one shared) goes offline; two QoS 1
    // messages are queued for it.
    let mut sleeper = v5::connect(v5_persistent(broker.tcp(), "sleeper"));
    sleeper.connack().await;
    for filter in ["meters/+/reading", "$share/fleet/alarms/#"] {
        sleeper
            .client
            .subscribe(filter, v5::QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        sleeper.suback().await;
    }
    sleeper.client.disconnect().await.expect("disconnect");
    sleeper.ended().await;
    let mut publisher = v5::connect(v5::options(broker.tcp(), "publisher"));
    publisher.connack().await;
    for topic in ["meters/7/reading", "alarms/fire"] {
        publisher
            .client
            .publish(topic, v5::QoS::AtLeastOnce, false, "x")
            .await
            .expect("publish");
    }
    publisher
        .client
        .publish("config/site-1", v5::QoS::AtLeastOnce, true, "12345")
        .await
        .expect("publish retained");
    let retained = |filter: &'static str| {
        let (url, token) = (url.clone(), token.clone());
        async move { ctl_json::<RetainedList>(&url, &token, &["retained", "--filter", filter]).await }
    };
    // A QoS 1 PUBLISH is acknowledged once it is stored (retained) and queued for the sleeper.
    for _ in 0..3 {
        publisher
            .expect(|p| matches!(p, v5::Packet::PubAck(_)).then_some(()))
            .await;
    }

    let view: SessionView = ctl_json(&url, &token, &["session", "sleeper"]).await;
    assert!(!view.session.online);
    assert_eq!(view.session.node.as_deref(), Some(broker_node_id(&broker)));
    assert_eq!(view.session.expiry_secs, Some(300));
    assert_eq!(view.session.queued, 2, "{view:?}");
    assert!(view.connection.is_none());
    let filters: Vec<&str> = view
        .subscriptions
        .iter()
        .map(|s| s.filter.as_str())
        .collect();
    assert_eq!(filters, ["$share/fleet/alarms/#", "meters/+/reading"]);
    let (ok, table, _) = ctl(&url, &token, &["session", "sleeper"]).await;
    assert!(
        ok && table.contains("offline") && table.contains("2 queued"),
        "{table}"
    );

    // A connected subscriber that does not acknowledge: its messages in flight and its
    // subscriptions show in the client list.
    let mut slow_options = v5::options(broker.tcp(), "slow");
    slow_options.set_manual_acks(true);
    let mut slow = v5::connect(slow_options);
    slow.connack().await;
    for filter in ["slow/1", "slow/2"] {
        slow.client
            .subscribe(filter, v5::QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        slow.suback().await;
    }
    for _ in 0..3 {
        publisher
            .client
            .publish("slow/1", v5::QoS::AtLeastOnce, false, "unacked")
            .await
            .expect("publish");
        slow.publish().await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let shown = loop {
        let shown: ClientView = ctl_json(&url, &token, &["client", "slow"]).await;
        if shown.inflight == 3 || tokio::time::Instant::now() >= deadline {
            break shown;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        (shown.inflight, shown.queued, shown.subscriptions),
        (3, 0, 2),
        "{shown:?}"
    );

    let online: SessionView = ctl_json(&url, &token, &["session", "publisher"]).await;
    assert!(online.session.online);
    assert_eq!(
        online.connection.map(|c| c.client_id).as_deref(),
        Some("publisher")
    );
    let (ok, _, stderr) = ctl(&url, &token, &["session", "nobody"]).await;
    assert!(
        !ok && stderr.contains("404") && stderr.contains("no session"),
        "{stderr}"
    );

    let shared: SubscriptionList = ctl_json(
        &url,
        &token,
        &["subscriptions", "--filter", "$share/fleet/alarms/#"],
    )
    .await;
    assert_eq!(shared.matched, 1);
    assert_eq!(shared.subscriptions[0].client_id, "sleeper");
    assert_eq!(shared.subscriptions[0].qos, 1);
    assert!(shared.unanswered.is_empty());
    let all: SubscriptionList = ctl_json(&url, &token, &["subscriptions"]).await;
    assert_eq!(
        all.matched, 4,
        "the sleeper's two and the slow subscriber's two"
    );

    let listed = retained("#").await;
    assert_eq!(listed.matched, 1);
    assert_eq!(
        (
            listed.retained[0].topic.as_str(),
            listed.retained[0].payload_bytes
        ),
        ("config/site-1", 5)
    );
    let (ok, said, stderr) = ctl(&url, &token, &["delete-retained", "config/site-1"]).await;
    assert!(ok, "{stderr}");
    assert!(said.contains("config/site-1"), "{said}");
    assert_eq!(retained("#").await.matched, 0);
    // A new subscriber gets no retained message.
    let mut late = v5::connect(v5::options(broker.tcp(), "late"));
    late.connack().await;
    late.client
        .subscribe("config/#", v5::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    late.suback().await;
    late.no_publish().await;
    let (ok, _, stderr) = ctl(&url, &token, &["delete-retained", "config/site-1"]).await;
    assert!(!ok && stderr.contains("404"), "{stderr}");
    let (ok, _, stderr) = ctl(&url, &token, &["delete-retained", "config/#"]).await;
    assert!(
        !ok && stderr.contains("400") && stderr.contains("wildcards"),
        "{stderr}"
    );
    broker.stop().await;
}

fn broker_node_id(broker: &TestBroker) -> &str {
    &broker.broker.config.node_id
}

#[tokio::test]
async fn delivery_latency_is_sampled_into_a_histogram() {
    let broker = TestBroker::start().await;
    let mut subscriber = v5::connect(v5::options(broker.tcp(), "listener"));
    subscriber.connack().await;
    subscriber
        .client
        .subscribe("latency/t", v5::QoS::AtMostOnce)
        .await
        .expect("subscribe");
    subscriber.suback().await;
    let mut publisher = v5::connect(v5::options(broker.tcp(), "talker"));
    publisher.connack().await;
    // One publish in 64 is sampled (per broker thread): 130 give at least two samples.
    for _ in 0..130 {
        publisher
            .client
            .publish("latency/t", v5::QoS::AtMostOnce, false, "x")
            .await
            .expect("publish");
        subscriber.publish().await;
    }
    let metrics_url = format!("http://{}/metrics", broker.addresses.admin.expect("admin"));
    let (code, metrics) = tokio::task::spawn_blocking(move || ureq_get(&metrics_url))
        .await
        .expect("GET /metrics");
    assert_eq!(code, 200);
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|line| {
                line.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("{name} missing: {metrics}"))
    };
    let count = value("starling_delivery_latency_seconds_count");
    let sum = value("starling_delivery_latency_seconds_sum");
    assert!((2.0..=130.0).contains(&count), "{count} samples");
    assert!(sum / count < 1.0, "mean delivery latency {} s", sum / count);
    broker.stop().await;
}

/// A plain GET; returns (status, body).
fn ureq_get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent.get(url).call().expect("GET");
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().expect("body");
    (status, body)
}
