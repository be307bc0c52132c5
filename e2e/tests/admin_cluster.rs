//! The admin API answers for the whole cluster from any node, on real processes (redis-server,
//! two broker nodes, `starling-broker ctl`, real MQTT clients): clients connected to the other
//! node are listed, shown and disconnected; a session parked on the other node is looked up with
//! its subscriptions and queue; a retained message published there is deleted; and a node that
//! does not answer is named, not silently left out.

use e2e::{broker_binary, BrokerNode, ClusterSettings, RedisServer};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use starling_broker::admin::api::{
    ClientList, Disconnected, RetainedList, SessionView, SubscriptionList,
};
use starling_broker::clients::ClientView;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);
const TOKEN: &str = "cluster-wide-admin-token-0123456789";

async fn client(addr: SocketAddr, id: &str) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(300));
    let (client, mut events) = AsyncClient::new(options, 10);
    next(&mut events, |p| matches!(p, Packet::ConnAck(_))).await;
    (client, events)
}

async fn next(events: &mut EventLoop, mut pick: impl FnMut(&Packet) -> bool) -> Packet {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(p) = events.poll().await.expect("connection") {
                if pick(&p) {
                    return p;
                }
            }
        }
    })
    .await
    .expect("packet in time")
}

async fn subscribe(client: &AsyncClient, events: &mut EventLoop, filter: &str) {
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next(events, |p| matches!(p, Packet::SubAck(_))).await;
}

/// `starling-broker ctl --json ARGS` against `admin`: the parsed answer, or the error it printed.
async fn ctl<T: serde::de::DeserializeOwned>(
    admin: SocketAddr,
    token: &Path,
    args: &[&str],
) -> Result<T, String> {
    let output = tokio::process::Command::new(broker_binary().expect("broker binary"))
        .arg("ctl")
        .arg("--url")
        .arg(format!("http://{admin}"))
        .arg("--token-file")
        .arg(token)
        .arg("--json")
        .args(args)
        .env_remove("STARLING_CONFIG")
        .output();
    let output = tokio::time::timeout(WAIT, output)
        .await
        .expect("ctl ends in time")
        .expect("ctl runs");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("ctl {args:?}: {e}: {stdout}")))
}

/// Waits until node `at`'s cluster-wide client list holds `ids`, exactly (nodes share their
/// admin address with their load, once a second).
async fn wait_for_clients(admin: SocketAddr, token: &Path, ids: &[&str]) -> ClientList {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list: ClientList = ctl(admin, token, &["clients"]).await.expect("clients");
        let listed: Vec<&str> = list.clients.iter().map(|c| c.client_id.as_str()).collect();
        if listed == ids {
            return list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node lists {listed:?}, not {ids:?}: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn any_node_answers_for_the_clients_sessions_subscriptions_and_retained_messages_of_all() {
    let redis = RedisServer::start().await.expect("redis");
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("admin-token");
    std::fs::write(&token, TOKEN).expect("token");
    let admin_table = format!("\n[admin]\ntoken_file = \"{}\"\n", token.display());
    let mut a_settings = ClusterSettings::new(&redis.url(), &[]).expect("ports");
    a_settings.extra_config = admin_table.clone();
    let a = BrokerNode::start_clustered("node-a", &a_settings)
        .await
        .expect("node a");
    let mut b_settings = ClusterSettings::new(&redis.url(), &[a_settings.gossip]).expect("ports");
    b_settings.extra_config = admin_table;
    let b = BrokerNode::start_clustered("node-b", &b_settings)
        .await
        .expect("node b");

    let (on_a, mut on_a_events) = client(a.mqtt, "on-a").await;
    let (on_b, mut on_b_events) = client(b.mqtt, "on-b").await;
    subscribe(&on_b, &mut on_b_events, "plant/+/temperature").await;
    // A session parked on node b: subscribed there, then gone offline.
    let (sleeper, mut sleeper_events) = client(b.mqtt, "sleeper").await;
    subscribe(&sleeper, &mut sleeper_events, "plant/+/alarm").await;
    sleeper.disconnect().await.expect("disconnect");
    drop(sleeper_events);

    // Node a lists both nodes' clients, and shows node b's.
    let list = wait_for_clients(a.admin, &token, &["on-a", "on-b"]).await;
    let nodes: Vec<&str> = list.clients.iter().map(|c| c.node.as_str()).collect();
    assert_eq!(nodes, ["node-a", "node-b"]);
    assert_eq!(list.matched, 2);
    assert!(list.unanswered.is_empty(), "{:?}", list.unanswered);
    let shown: ClientView = ctl(a.admin, &token, &["client", "on-b"])
        .await
        .expect("client on-b");
    assert_eq!(shown.node, "node-b");
    let scoped: ClientList = ctl(b.admin, &token, &["clients"]).await.expect("from b");
    assert_eq!(scoped.matched, 2, "node b answers for the cluster too");

    // A message for the sleeper, published on node a, waits on node b; a retained one too.
    on_a.publish("plant/3/alarm", QoS::AtLeastOnce, false, "smoke")
        .await
        .expect("publish");
    on_a.publish("plant/3/setpoint", QoS::AtLeastOnce, true, "21.5")
        .await
        .expect("publish retained");
    for _ in 0..2 {
        next(&mut on_a_events, |p| matches!(p, Packet::PubAck(_))).await;
    }

    // Node a looks up the session parked on node b: node b's subscriptions and queue (node b
    // queues the relayed message once it reads it from its inbox, just after the PUBACK).
    let deadline = tokio::time::Instant::now() + WAIT;
    let view = loop {
        let view: SessionView = ctl(a.admin, &token, &["session", "sleeper"])
            .await
            .expect("session");
        if view.session.queued > 0 || tokio::time::Instant::now() >= deadline {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!view.session.online);
    assert_eq!(view.session.node.as_deref(), Some("node-b"));
    assert_eq!(view.session.queued, 1, "{view:?}");
    let filters: Vec<&str> = view
        .subscriptions
        .iter()
        .map(|s| s.filter.as_str())
        .collect();
    assert_eq!(filters, ["plant/+/alarm"]);
    assert!(view.unanswered.is_empty(), "{:?}", view.unanswered);

    // The relay hop and the health check's round trips are measured: node b read the entry
    // node a relayed for the sleeper, and each node checks Redis once a second.
    let relayed = b
        .metric("starling_relay_lag_seconds_count")
        .await
        .expect("metrics");
    assert!(
        relayed >= 1.0,
        "node b's relay lag histogram counts {relayed}"
    );
    let lag_sum = b
        .metric("starling_relay_lag_seconds_sum")
        .await
        .expect("metrics");
    assert!(
        (0.0..WAIT.as_secs_f64()).contains(&lag_sum),
        "relay lag sum {lag_sum} s"
    );
    let sent = a
        .metric("starling_relay_sent_messages_total")
        .await
        .expect("metrics");
    let received = b
        .metric("starling_relay_received_messages_total")
        .await
        .expect("metrics");
    assert!(
        sent >= 1.0 && received >= 1.0,
        "relayed: node a sent {sent}, node b received {received}"
    );
    a.wait_for_metric("starling_redis_round_trip_seconds_count", 1.0, WAIT)
        .await
        .expect("node a measured its Redis round trips");

    let subscriptions: SubscriptionList = ctl(a.admin, &token, &["subscriptions"])
        .await
        .expect("subscriptions");
    let held: Vec<(&str, &str, &str)> = subscriptions
        .subscriptions
        .iter()
        .map(|s| (s.client_id.as_str(), s.node.as_str(), s.filter.as_str()))
        .collect();
    assert_eq!(
        held,
        [
            ("on-b", "node-b", "plant/+/temperature"),
            ("sleeper", "node-b", "plant/+/alarm")
        ]
    );

    // Node b deletes the retained message node a stored; node a no longer lists it.
    let retained: RetainedList = ctl(a.admin, &token, &["retained"]).await.expect("retained");
    assert_eq!(retained.matched, 1);
    let _: serde_json::Value = ctl(b.admin, &token, &["delete-retained", "plant/3/setpoint"])
        .await
        .expect("delete retained");
    let retained: RetainedList = ctl(a.admin, &token, &["retained"]).await.expect("retained");
    assert_eq!(retained.matched, 0);

    // Node a disconnects node b's client: it is told so, its session kept.
    let done: Disconnected = ctl(a.admin, &token, &["disconnect", "on-b"])
        .await
        .expect("disconnect");
    assert_eq!(done.node, "node-b");
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match on_b_events.poll().await {
                Ok(Event::Incoming(Packet::Disconnect(d))) => {
                    return format!("{:?}", d.reason_code)
                }
                Ok(_) => continue,
                Err(e) => return format!("{e:?}"),
            }
        }
    })
    .await
    .expect("disconnected in time");
    assert!(ended.contains("AdministrativeAction"), "{ended}");
    let missing = ctl::<ClientView>(a.admin, &token, &["client", "nobody"])
        .await
        .expect_err("nobody is connected");
    assert!(
        missing.contains("404") && missing.contains("any node"),
        "{missing}"
    );

    // A node that does not answer is named: node b paused, node a still lists its own.
    b.pause().expect("pause node b");
    let list: ClientList = ctl(a.admin, &token, &["clients"]).await.expect("clients");
    b.resume().expect("resume node b");
    let listed: Vec<&str> = list.clients.iter().map(|c| c.client_id.as_str()).collect();
    assert_eq!(listed, ["on-a"]);
    let silent: Vec<&str> = list.unanswered.iter().map(|u| u.node.as_str()).collect();
    assert_eq!(silent, ["node-b"], "{:?}", list.unanswered);
}
