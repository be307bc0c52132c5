//! Cluster behaviour on real processes (redis-server and broker nodes): gossip discovery, sessions
//! and retained messages shared through Redis, the live relay, shared groups across nodes,
//! takeover across nodes, and a killed node's sessions and wills taken over by a survivor.

use e2e::fault::TcpProxy;
use e2e::{wait_for, BrokerNode, ClusterSettings, RedisServer};
use rumqttc::v5::mqttbytes::v5::{
    DisconnectReasonCode, LastWill, LastWillProperties, Packet, Publish,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, StateError};
use std::net::SocketAddr;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

async fn two_nodes(redis: &RedisServer) -> (BrokerNode, BrokerNode) {
    let a_settings = ClusterSettings::new(&redis.url(), &[]).expect("ports");
    let a = BrokerNode::start_clustered("node-a", &a_settings)
        .await
        .expect("node a");
    let b_settings = ClusterSettings::new(&redis.url(), &[a_settings.gossip]).expect("ports");
    let b = BrokerNode::start_clustered("node-b", &b_settings)
        .await
        .expect("node b");
    (a, b)
}

/// MQTT 5 options for a persistent session (expiry 300 s).
fn options(addr: SocketAddr, id: &str, clean: bool) -> MqttOptions {
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_start(clean);
    options.set_session_expiry_interval(Some(300));
    options
}

async fn client(addr: SocketAddr, id: &str, clean: bool) -> (AsyncClient, EventLoop, bool) {
    let (client, mut eventloop) = AsyncClient::new(options(addr, id, clean), 10);
    let present = tokio::time::timeout(WAIT, async {
        loop {
            match eventloop.poll().await.expect("connection") {
                Event::Incoming(Packet::ConnAck(ack)) => return ack.session_present,
                _ => continue,
            }
        }
    })
    .await
    .expect("CONNACK in time");
    (client, eventloop, present)
}

async fn next_packet(eventloop: &mut EventLoop, mut pick: impl FnMut(&Packet) -> bool) -> Packet {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(p) = eventloop.poll().await.expect("connection") {
                if pick(&p) {
                    return p;
                }
            }
        }
    })
    .await
    .expect("packet in time")
}

/// The next PUBLISH on this connection (other packets are passed over).
async fn next_publish(eventloop: &mut EventLoop) -> Publish {
    match next_packet(eventloop, |p| matches!(p, Packet::Publish(_))).await {
        Packet::Publish(publish) => publish,
        _ => unreachable!("picked a publish"),
    }
}

/// Publishes `n` QoS 1 messages numbered 0.. on `<prefix>/<i>` and waits for every PUBACK (the
/// event loop runs meanwhile: the client's request queue is small).
async fn publish_numbered(
    publisher: AsyncClient,
    mut eventloop: EventLoop,
    prefix: &str,
    n: usize,
) {
    let acknowledging = tokio::spawn(async move {
        let mut acks = 0;
        while acks < n {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.expect("publisher") {
                acks += 1;
            }
        }
    });
    for i in 0..n {
        publisher
            .publish(
                format!("{prefix}/{i}"),
                QoS::AtLeastOnce,
                false,
                i.to_string(),
            )
            .await
            .expect("publish");
    }
    tokio::time::timeout(WAIT, acknowledging)
        .await
        .expect("PUBACKs in time")
        .expect("publisher");
}

/// Asserts that nothing more is published to these connections within half a second.
async fn assert_no_more_publishes(loops: [&mut EventLoop; 2], what: &str) {
    for eventloop in loops {
        assert_quiet(eventloop, &format!("{what} arrived twice")).await;
    }
}

/// Waits until both nodes count two cluster members.
async fn both_see_two_members(a: &BrokerNode, b: &BrokerNode) {
    for node in [a, b] {
        node.wait_for_members(2, WAIT)
            .await
            .expect("both nodes see two members");
    }
}

#[tokio::test]
async fn nodes_find_each_other_by_gossip() {
    let redis = RedisServer::start().await.expect("redis");
    let (a, b) = two_nodes(&redis).await;
    both_see_two_members(&a, &b).await;
}

#[tokio::test]
async fn a_session_moves_between_nodes_with_its_queued_messages() {
    let redis = RedisServer::start().await.expect("redis");
    let (a, b) = two_nodes(&redis).await;

    // Subscribe on node A, go away.
    let (sub, mut sub_loop, present) = client(a.mqtt, "traveller", true).await;
    assert!(!present);
    sub.subscribe("trip/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut sub_loop, |p| matches!(p, Packet::SubAck(_))).await;
    sub.disconnect().await.expect("disconnect");
    let _ = tokio::time::timeout(WAIT, async { while sub_loop.poll().await.is_ok() {} }).await;

    // Published on A while away: queued in Redis for the session.
    let (publisher, mut pub_loop, _) = client(a.mqtt, "sender", true).await;
    publisher
        .publish("trip/1", QoS::AtLeastOnce, false, "postcard")
        .await
        .expect("publish");
    next_packet(&mut pub_loop, |p| matches!(p, Packet::PubAck(_))).await;
    publisher
        .publish("trip/retained", QoS::AtLeastOnce, true, "kept")
        .await
        .expect("publish retained");
    next_packet(&mut pub_loop, |p| matches!(p, Packet::PubAck(_))).await;

    // Back through node B: the session is there, with what was queued and the retained message.
    let (_sub, mut sub_loop, present) = client(b.mqtt, "traveller", false).await;
    assert!(present, "session present on the other node");
    let mut got = Vec::new();
    while got.len() < 2 {
        let p = next_publish(&mut sub_loop).await;
        got.push((
            String::from_utf8_lossy(&p.topic).to_string(),
            String::from_utf8_lossy(&p.payload).to_string(),
        ));
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("trip/1".to_string(), "postcard".to_string()),
            ("trip/retained".to_string(), "kept".to_string())
        ]
    );
}

#[tokio::test]
async fn a_retained_message_published_on_one_node_is_served_by_another() {
    let redis = RedisServer::start().await.expect("redis");
    let (a, b) = two_nodes(&redis).await;
    let (publisher, mut pub_loop, _) = client(a.mqtt, "weather-station", true).await;
    publisher
        .publish("weather/now", QoS::AtLeastOnce, true, "sunny")
        .await
        .expect("publish");
    next_packet(&mut pub_loop, |p| matches!(p, Packet::PubAck(_))).await;

    let (reader, mut reader_loop, _) = client(b.mqtt, "reader", true).await;
    reader
        .subscribe("weather/+", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let p = next_publish(&mut reader_loop).await;
    assert_eq!(&p.topic[..], b"weather/now");
    assert_eq!(&p.payload[..], b"sunny");
    assert!(p.retain);
}

/// Waits until `node` knows of at least `n` entries advertised by other nodes.
/// Waits until `node` has handed off the routes of `n` sessions that moved to another node
/// (it keeps them, and forwards what they match, until the new node's routes are known).
async fn routes_handed_off(node: &BrokerNode, n: f64) {
    node.wait_for_metric("starling_cluster_handoffs_total", n, WAIT)
        .await
        .expect("a hand-off began");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let pending = node
            .metric("starling_cluster_handoffs_pending")
            .await
            .expect("metrics");
        if pending == 0.0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pending} hand-offs still pending"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn remote_entries_at_least(node: &BrokerNode, n: f64) {
    node.wait_for_metric("starling_cluster_remote_entries", n, WAIT)
        .await
        .expect("entries advertised");
}

#[tokio::test]
async fn publishes_are_relayed_live_to_subscribers_on_other_nodes_once() {
    let redis = RedisServer::start().await.expect("redis");
    let (a, b) = two_nodes(&redis).await;
    let (sub_b, mut loop_b, _) = client(b.mqtt, "listener-b", true).await;
    sub_b
        .subscribe("live/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut loop_b, |p| matches!(p, Packet::SubAck(_))).await;
    let (sub_a, mut loop_a, _) = client(a.mqtt, "listener-a", true).await;
    sub_a
        .subscribe("live/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut loop_a, |p| matches!(p, Packet::SubAck(_))).await;
    remote_entries_at_least(&a, 1.0).await;

    let n = 100;
    let (publisher, pub_loop, _) = client(a.mqtt, "speaker", true).await;
    publish_numbered(publisher, pub_loop, "live", n).await;
    for (name, eventloop) in [("b", &mut loop_b), ("a", &mut loop_a)] {
        let mut got = Vec::new();
        while got.len() < n {
            let p = next_publish(eventloop).await;
            got.push(
                String::from_utf8_lossy(&p.payload)
                    .parse::<usize>()
                    .expect("number"),
            );
        }
        assert_eq!(
            got,
            (0..n).collect::<Vec<_>>(),
            "node {name}: every message once, in order"
        );
    }
    // Nothing arrives twice (a relayed message is never relayed back).
    assert_no_more_publishes([&mut loop_a, &mut loop_b], "a message").await;
}

/// A connection that keeps publishing to one topic reuses where the topic was routed, in the
/// cluster too: a subscriber that appears on another node meanwhile gets its next message.
#[tokio::test]
async fn a_publisher_on_one_topic_reaches_a_subscriber_that_appears_on_another_node() {
    let redis = RedisServer::start().await.expect("redis");
    let (a, b) = two_nodes(&redis).await;
    let (sub_a, mut loop_a, _) = client(a.mqtt, "memo-local", true).await;
    sub_a
        .subscribe("memo/t", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut loop_a, |p| matches!(p, Packet::SubAck(_))).await;

    let (publisher, mut pub_loop, _) = client(a.mqtt, "memo-speaker", true).await;
    let (acked, mut acks) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = pub_loop.poll().await {
            if let Event::Incoming(Packet::PubAck(_)) = event {
                let _ = acked.send(());
            }
        }
    });
    let publish = |payload: &'static str| {
        let publisher = publisher.clone();
        async move {
            publisher
                .publish("memo/t", QoS::AtLeastOnce, false, payload)
                .await
                .expect("publish");
        }
    };
    for payload in ["1", "2"] {
        publish(payload).await;
        tokio::time::timeout(WAIT, acks.recv())
            .await
            .expect("PUBACK in time");
        assert_eq!(
            next_publish(&mut loop_a).await.payload.as_ref(),
            payload.as_bytes()
        );
    }

    let (sub_b, mut loop_b, _) = client(b.mqtt, "memo-remote", true).await;
    sub_b
        .subscribe("memo/t", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut loop_b, |p| matches!(p, Packet::SubAck(_))).await;
    remote_entries_at_least(&a, 1.0).await;
    publish("3").await;
    assert_eq!(next_publish(&mut loop_b).await.payload.as_ref(), b"3");
    assert_eq!(next_publish(&mut loop_a).await.payload.as_ref(), b"3");
}

#[tokio::test]
async fn a_shared_group_spread_over_two_nodes_gets_each_message_once() {
    let redis = RedisServer::start().await.expect("redis");
    let (a, b) = two_nodes(&redis).await;
    let (worker_a, mut loop_a, _) = client(a.mqtt, "worker-a", true).await;
    worker_a
        .subscribe("$share/workers/jobs/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut loop_a, |p| matches!(p, Packet::SubAck(_))).await;
    let (worker_b, mut loop_b, _) = client(b.mqtt, "worker-b", true).await;
    worker_b
        .subscribe("$share/workers/jobs/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut loop_b, |p| matches!(p, Packet::SubAck(_))).await;
    // A plain subscriber on node B too: B then receives every job, and must still hand only the
    // jobs it was chosen for to its group member.
    let (auditor, mut audit_loop, _) = client(b.mqtt, "auditor", true).await;
    auditor
        .subscribe("jobs/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut audit_loop, |p| matches!(p, Packet::SubAck(_))).await;
    remote_entries_at_least(&a, 2.0).await;

    let n = 40usize;
    let (publisher, pub_loop, _) = client(a.mqtt, "dispatcher", true).await;
    publish_numbered(publisher, pub_loop, "jobs", n).await;

    // Collect until every job arrived somewhere; then make sure nothing else comes.
    let mut seen: Vec<(char, usize)> = Vec::new();
    let collect = async {
        while seen.len() < n {
            tokio::select! {
                event = loop_a.poll() => if let Event::Incoming(Packet::Publish(p)) = event.expect("worker a") {
                    seen.push(('a', String::from_utf8_lossy(&p.payload).parse().expect("number")));
                },
                event = loop_b.poll() => if let Event::Incoming(Packet::Publish(p)) = event.expect("worker b") {
                    seen.push(('b', String::from_utf8_lossy(&p.payload).parse().expect("number")));
                },
            }
        }
    };
    tokio::time::timeout(WAIT, collect)
        .await
        .expect("every job delivered");
    let mut jobs: Vec<usize> = seen.iter().map(|(_, job)| *job).collect();
    jobs.sort();
    assert_eq!(
        jobs,
        (0..n).collect::<Vec<_>>(),
        "each job exactly once across the group"
    );
    let mut audited = 0;
    while audited < n {
        next_packet(&mut audit_loop, |p| matches!(p, Packet::Publish(_))).await;
        audited += 1;
    }
    let on_a = seen.iter().filter(|(w, _)| *w == 'a').count();
    assert!(
        on_a > 0 && on_a < n,
        "both nodes' members take jobs (a took {on_a} of {n})"
    );
    assert_no_more_publishes([&mut loop_a, &mut loop_b], "a job").await;
}

/// Polls until the server disconnects this connection; returns its reason code.
async fn disconnect_reason(eventloop: &mut EventLoop) -> DisconnectReasonCode {
    tokio::time::timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(_) => continue,
                Err(ConnectionError::MqttState(StateError::ServerDisconnect {
                    reason_code,
                    ..
                })) => return reason_code,
                Err(other) => panic!("expected a DISCONNECT, got {other:?}"),
            }
        }
    })
    .await
    .expect("DISCONNECT in time")
}

/// Asserts that nothing more is published to this connection within half a second.
async fn assert_quiet(eventloop: &mut EventLoop, what: &str) {
    let extra = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = eventloop.poll().await.expect("connection")
            {
                return p;
            }
        }
    })
    .await;
    assert!(extra.is_err(), "{what}: unexpected {extra:?}");
}

#[tokio::test]
async fn a_session_that_connects_to_the_node_that_adopted_it_gets_dup_copies_at_first() {
    let redis = RedisServer::start().await.expect("redis");
    let (a, mut b) = two_nodes(&redis).await;
    both_see_two_members(&a, &b).await;
    let (publisher, mut pub_loop, _) = client(a.mqtt, "adoption-feed", true).await;

    // A persistent session on node B, which then stops: node A adopts it, parked.
    let (mover, mut mover_loop, _) = client(b.mqtt, "adoptee", false).await;
    mover
        .subscribe("adopted/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut mover_loop, |p| matches!(p, Packet::SubAck(_))).await;
    b.terminate(WAIT).await.expect("node b stops on SIGTERM");
    drop((mover, mover_loop));
    a.wait_for_metric("starling_subscriptions", 1.0, WAIT)
        .await
        .expect("node a adopts the parked session's subscription");

    // It connects to node A. Relays node B's inbox got before it stopped are recovered with DUP
    // at any moment, so what node A's own routes deliver at first carries DUP too: a second
    // copy is never without it.
    let (_back, mut back_loop, present) = client(a.mqtt, "adoptee", false).await;
    assert!(present, "the adopted session is resumed on node A");
    publisher
        .publish("adopted/1", QoS::AtLeastOnce, false, "first")
        .await
        .expect("publish");
    next_packet(&mut pub_loop, |p| matches!(p, Packet::PubAck(_))).await;
    let first = next_publish(&mut back_loop).await;
    assert_eq!(&first.payload[..], b"first");
    assert!(
        first.dup,
        "a copy delivered just after the session moved in from a departed node carries DUP"
    );
    // Node A relayed it to node B's inbox as well (it routes there for a few seconds more, for
    // the nodes that have not heard of the adoption yet): the tail of that inbox may bring it
    // again, with DUP.
    if let Ok(again) =
        tokio::time::timeout(Duration::from_secs(3), next_publish(&mut back_loop)).await
    {
        assert_eq!(&again.payload[..], b"first");
        assert!(again.dup, "a second copy carries DUP: {again:?}");
    }
}

#[tokio::test]
async fn a_connection_on_another_node_takes_the_session_over_with_its_unacknowledged_messages() {
    let redis = RedisServer::start().await.expect("redis");
    let (a, b) = two_nodes(&redis).await;

    // The first connection, on node A, leaves a QoS 1 message unacknowledged.
    let mut options = options(a.mqtt, "twin", false);
    options.set_manual_acks(true);
    let (first, mut first_loop) = AsyncClient::new(options, 10);
    next_packet(&mut first_loop, |p| matches!(p, Packet::ConnAck(_))).await;
    first
        .subscribe("twin/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut first_loop, |p| matches!(p, Packet::SubAck(_))).await;
    let (publisher, mut pub_loop, _) = client(a.mqtt, "twin-feed", true).await;
    publisher
        .publish("twin/1", QoS::AtLeastOnce, false, "unacked")
        .await
        .expect("publish");
    next_packet(&mut pub_loop, |p| matches!(p, Packet::PubAck(_))).await;
    next_packet(&mut first_loop, |p| matches!(p, Packet::Publish(_))).await;

    // The same client id on node B: node A hands the session over and closes its connection.
    let (_second, mut second_loop, present) = client(b.mqtt, "twin", false).await;
    assert!(present, "the session is resumed on node B");
    assert_eq!(
        disconnect_reason(&mut first_loop).await,
        DisconnectReasonCode::SessionTakenOver
    );
    let again = next_publish(&mut second_loop).await;
    assert_eq!(&again.payload[..], b"unacked");
    assert!(
        again.dup,
        "an unacknowledged message is sent again with DUP"
    );

    // Once node A has handed the session's routes off, node B delivers, once.
    remote_entries_at_least(&a, 1.0).await;
    routes_handed_off(&a, 1.0).await;
    publisher
        .publish("twin/2", QoS::AtLeastOnce, false, "live")
        .await
        .expect("publish");
    next_packet(&mut pub_loop, |p| matches!(p, Packet::PubAck(_))).await;
    let live = next_publish(&mut second_loop).await;
    assert_eq!(&live.payload[..], b"live");
    assert_quiet(&mut second_loop, "after the hand-over").await;
}

#[tokio::test]
async fn a_killed_nodes_wills_fire_once_and_its_sessions_resume_on_a_survivor() {
    let redis = RedisServer::start().await.expect("redis");
    let (mut a, b) = two_nodes(&redis).await;
    both_see_two_members(&a, &b).await;
    let (watcher, mut watch_loop, _) = client(b.mqtt, "watcher", true).await;
    watcher
        .subscribe("wills/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut watch_loop, |p| matches!(p, Packet::SubAck(_))).await;

    // A persistent session with a will, held by node A.
    let mut options = options(a.mqtt, "victim", true);
    options.set_last_will(LastWill::new(
        "wills/victim",
        "gone",
        QoS::AtLeastOnce,
        false,
        None,
    ));
    let (victim, mut victim_loop) = AsyncClient::new(options, 10);
    next_packet(&mut victim_loop, |p| matches!(p, Packet::ConnAck(_))).await;
    victim
        .subscribe("orders/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut victim_loop, |p| matches!(p, Packet::SubAck(_))).await;

    a.kill();
    // Gossip declares node A failed; node B adopts its sessions and publishes the will, once.
    let Packet::Publish(will) = tokio::time::timeout(
        Duration::from_secs(30),
        next_packet(&mut watch_loop, |p| matches!(p, Packet::Publish(_))),
    )
    .await
    .expect("the will within 30 s") else {
        unreachable!("picked a publish")
    };
    assert_eq!(&will.topic[..], b"wills/victim");
    assert_eq!(&will.payload[..], b"gone");

    // The adopted session is routed by node B now: a message published meanwhile is queued.
    let (publisher, mut pub_loop, _) = client(b.mqtt, "shop", true).await;
    publisher
        .publish("orders/1", QoS::AtLeastOnce, false, "while away")
        .await
        .expect("publish");
    next_packet(&mut pub_loop, |p| matches!(p, Packet::PubAck(_))).await;
    let (_back, mut back_loop, present) = client(b.mqtt, "victim", false).await;
    assert!(present, "the session survived its node");
    let queued = next_publish(&mut back_loop).await;
    assert_eq!(&queued.topic[..], b"orders/1");
    assert_eq!(&queued.payload[..], b"while away");
    assert_quiet(&mut watch_loop, "a second will").await;
}

/// A node that shuts down (SIGTERM: scale-down, rolling restart) publishes the wills of the
/// connections it closes (MQTT §3.1.2.5): one without delay at once, one with a delay through
/// the node that adopts its sessions, after the delay; each once.
#[tokio::test]
async fn a_node_shutting_down_publishes_its_clients_wills_once_delayed_ones_from_the_adopter() {
    let redis = RedisServer::start().await.expect("redis");
    let (mut a, b) = two_nodes(&redis).await;
    both_see_two_members(&a, &b).await;
    let (watcher, mut watch_loop, _) = client(b.mqtt, "will-watcher", true).await;
    watcher
        .subscribe("wills/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut watch_loop, |p| matches!(p, Packet::SubAck(_))).await;
    remote_entries_at_least(&a, 1.0).await;

    let mut loops = Vec::new();
    for (id, delay) in [("at-once", None), ("after-delay", Some(2))] {
        let mut options = options(a.mqtt, id, false);
        options.set_last_will(LastWill::new(
            format!("wills/{id}"),
            id,
            QoS::AtLeastOnce,
            false,
            Some(LastWillProperties {
                delay_interval: delay,
                payload_format_indicator: None,
                message_expiry_interval: None,
                content_type: None,
                response_topic: None,
                correlation_data: None,
                user_properties: Vec::new(),
            }),
        ));
        let (victim, mut victim_loop) = AsyncClient::new(options, 10);
        next_packet(&mut victim_loop, |p| matches!(p, Packet::ConnAck(_))).await;
        loops.push((victim, victim_loop));
    }

    let stopped_at = tokio::time::Instant::now();
    a.terminate(WAIT).await.expect("node a stops on SIGTERM");
    drop(loops);
    let first = next_publish(&mut watch_loop).await;
    assert_eq!(
        &first.payload[..],
        b"at-once",
        "the will without delay first"
    );
    let second = tokio::time::timeout(
        Duration::from_secs(30),
        next_packet(&mut watch_loop, |p| matches!(p, Packet::Publish(_))),
    )
    .await
    .expect("the delayed will within 30 s");
    let Packet::Publish(second) = second else {
        unreachable!("picked a publish")
    };
    assert_eq!(&second.payload[..], b"after-delay");
    assert!(
        stopped_at.elapsed() >= Duration::from_secs(2),
        "not before its delay"
    );
    assert_quiet(&mut watch_loop, "a will published twice").await;
}

/// Waits until `/readyz` of `node` answers 503 with a body that contains `reason`.
async fn readyz_says(node: &BrokerNode, reason: &str) {
    wait_for(WAIT, || async {
        let (got, text) = e2e::http_get(node.admin, "/readyz").await?;
        anyhow::ensure!(
            got == 503 && text.contains(reason),
            "{} /readyz answered {got}: {text}",
            node.id
        );
        Ok(())
    })
    .await
    .expect("/readyz in time");
}

/// Waits until `/readyz` of `node` answers `status`; returns the body.
async fn readyz_becomes(node: &BrokerNode, status: u16) -> String {
    wait_for(WAIT, || async {
        let (got, text) = e2e::http_get(node.admin, "/readyz").await?;
        anyhow::ensure!(got == status, "{} /readyz answered {got}: {text}", node.id);
        Ok(())
    })
    .await
    .expect("/readyz in time");
    e2e::http_get(node.admin, "/readyz")
        .await
        .expect("/readyz")
        .1
}

#[tokio::test]
async fn a_redis_outage_degrades_the_nodes_and_the_relay_resumes_after_it() {
    let mut redis = RedisServer::start().await.expect("redis");
    let (a, b) = two_nodes(&redis).await;
    let (local, mut local_loop, _) = client(a.mqtt, "local-listener", true).await;
    local
        .subscribe("outage/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut local_loop, |p| matches!(p, Packet::SubAck(_))).await;
    let (publisher, mut pub_loop, _) = client(a.mqtt, "outage-speaker", true).await;

    redis.stop().await;
    // The announcement channel notices first, the next check of Redis a moment later.
    readyz_says(&a, "redis unreachable").await;
    readyz_says(&b, "redis unreachable").await;
    assert_eq!(
        a.metric("starling_cluster_redis_up").await.expect("metric"),
        0.0
    );
    // Local delivery goes on without Redis.
    publisher
        .publish("outage/local", QoS::AtLeastOnce, false, "still here")
        .await
        .expect("publish");
    next_packet(&mut pub_loop, |p| matches!(p, Packet::PubAck(_))).await;
    let p = next_publish(&mut local_loop).await;
    assert_eq!(&p.payload[..], b"still here");

    // Redis comes back empty: the nodes become ready, announce their entries again, and the
    // relay works for subscriptions made before the outage.
    redis.restart().await.expect("redis back");
    readyz_becomes(&a, 200).await;
    readyz_becomes(&b, 200).await;
    let (remote, mut remote_loop, _) = client(b.mqtt, "remote-listener", true).await;
    remote
        .subscribe("outage/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut remote_loop, |p| matches!(p, Packet::SubAck(_))).await;
    remote_entries_at_least(&a, 1.0).await;
    remote_entries_at_least(&b, 1.0).await;
    publisher
        .publish("outage/after", QoS::AtLeastOnce, false, "relayed")
        .await
        .expect("publish");
    next_packet(&mut pub_loop, |p| matches!(p, Packet::PubAck(_))).await;
    for eventloop in [&mut remote_loop, &mut local_loop] {
        let p = next_publish(eventloop).await;
        assert_eq!(&p.payload[..], b"relayed");
    }
}

/// Redis restarted empty between two health checks: each node notices that Redis lost its data
/// (its epoch changed, whether or not a check failed meanwhile), announces its entries again and
/// rebuilds its replica, so subscriptions made before and after the restart are reached from the
/// other node.
#[tokio::test]
async fn after_redis_restarts_empty_old_and_new_subscriptions_are_reached_from_every_node() {
    let mut redis = RedisServer::start().await.expect("redis");
    let (a, b) = two_nodes(&redis).await;
    let (before, mut before_loop, _) = client(b.mqtt, "before-restart", true).await;
    before
        .subscribe("epoch/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut before_loop, |p| matches!(p, Packet::SubAck(_))).await;
    remote_entries_at_least(&a, 1.0).await;

    redis.restart().await.expect("redis back, empty");
    for node in [&a, &b] {
        node.wait_for_metric("starling_cluster_redis_resets_total", 1.0, WAIT)
            .await
            .expect("the node noticed that redis lost its data");
        readyz_becomes(node, 200).await;
    }
    // A subscription made after the restart, on node A; the publisher is on node B.
    let (after, mut after_loop, _) = client(a.mqtt, "after-restart", true).await;
    after
        .subscribe("epoch/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut after_loop, |p| matches!(p, Packet::SubAck(_))).await;
    remote_entries_at_least(&b, 1.0).await;
    let (publisher, mut pub_loop, _) = client(b.mqtt, "epoch-speaker", true).await;
    publisher
        .publish("epoch/b", QoS::AtLeastOnce, false, "from b")
        .await
        .expect("publish");
    next_packet(&mut pub_loop, |p| matches!(p, Packet::PubAck(_))).await;
    for (name, eventloop) in [("after", &mut after_loop), ("before", &mut before_loop)] {
        let p = next_publish(eventloop).await;
        assert_eq!(&p.payload[..], b"from b", "the {name} subscriber");
    }
    // And the other way: node A's publisher reaches the subscription node B made before.
    let (publisher_a, mut pub_a_loop, _) = client(a.mqtt, "epoch-speaker-a", true).await;
    publisher_a
        .publish("epoch/a", QoS::AtLeastOnce, false, "from a")
        .await
        .expect("publish");
    next_packet(&mut pub_a_loop, |p| matches!(p, Packet::PubAck(_))).await;
    for (name, eventloop) in [("after", &mut after_loop), ("before", &mut before_loop)] {
        let p = next_publish(eventloop).await;
        assert_eq!(&p.payload[..], b"from a", "the {name} subscriber");
    }
}

/// Redis is replaced (empty) while node B cannot reach it. Node A notices the loss and rebuilds
/// its replica from what the nodes list in the new Redis, where B is registered but has listed
/// nothing again: A must keep B's routes (merge) rather than replace them with B's empty set, so a
/// message A acknowledges meanwhile reaches B's subscriber once B is back. (When the replica
/// was replaced at a fixed 3 s after the loss, a node whose writes were late lost its routes at
/// the other nodes, and what they acknowledged for it was never delivered.)
#[tokio::test]
async fn routes_of_a_node_that_has_not_listed_its_entries_again_survive_a_redis_that_lost_its_data()
{
    let mut redis = RedisServer::start().await.expect("redis");
    let proxy_a = TcpProxy::start(redis.addr).await.expect("proxy a");
    let proxy_b = TcpProxy::start(redis.addr).await.expect("proxy b");
    let a_settings = ClusterSettings::new(&proxy_a.redis_url(), &[]).expect("ports");
    let a = BrokerNode::start_clustered("node-a", &a_settings)
        .await
        .expect("node a");
    let b_settings =
        ClusterSettings::new(&proxy_b.redis_url(), &[a_settings.gossip]).expect("ports");
    let b = BrokerNode::start_clustered("node-b", &b_settings)
        .await
        .expect("node b");
    let (sub, mut sub_loop, _) = client(b.mqtt, "unlisted-listener", true).await;
    sub.subscribe("unlisted/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut sub_loop, |p| matches!(p, Packet::SubAck(_))).await;
    remote_entries_at_least(&a, 1.0).await;

    // B is cut off; A's connections to the old Redis hang, as a replaced pod's do.
    proxy_b.cut();
    proxy_a.strand();
    redis.stop().await;
    redis.start_again().await.expect("redis replaced, empty");
    // B registered again in the new Redis (its health check got through), but its entries are
    // not written yet (its writer's connection still hangs, say).
    redis_cli(&redis, &["SADD", "starling:v1:nodes", "node-b"]);
    a.wait_for_metric("starling_cluster_redis_resets_total", 1.0, WAIT)
        .await
        .expect("node A noticed that redis lost its data");
    // A's rebuild found B's set incomplete (B has not listed its entries again) and merged it.
    a.wait_for_metric("starling_cluster_replica_unlisted_total", 1.0, WAIT)
        .await
        .expect("node A rebuilt its replica and kept B's entries");
    assert!(
        a.metric("starling_cluster_remote_entries")
            .await
            .expect("metric")
            >= 1.0,
        "node A still routes to node B"
    );
    let (publisher, mut pub_loop, _) = client(a.mqtt, "unlisted-speaker", true).await;
    publisher
        .publish("unlisted/a", QoS::AtLeastOnce, false, "kept")
        .await
        .expect("publish");
    next_packet(&mut pub_loop, |p| matches!(p, Packet::PubAck(_))).await;

    proxy_b.restore();
    let p = next_publish(&mut sub_loop).await;
    assert_eq!(&p.payload[..], b"kept");
    b.wait_for_metric("starling_cluster_redis_resets_total", 1.0, WAIT)
        .await
        .expect("node B noticed that redis lost its data");
}

/// A Redis that lost its data has new inbox streams, whose entry ids follow the new server's
/// clock. Here the old stream's last entry is an hour ahead (as a server with a fast clock would
/// have written it), so node B's reader has read up to an id far above anything the new Redis
/// gives: it must read the new stream from its start, not from its old position, or every
/// message relayed to it after the loss is skipped.
#[tokio::test]
async fn after_redis_lost_its_data_the_inbox_is_read_from_the_start_of_the_new_stream() {
    let mut redis = RedisServer::start().await.expect("redis");
    let (a, b) = two_nodes(&redis).await;
    let (sub, mut sub_loop, _) = client(b.mqtt, "clock-listener", true).await;
    sub.subscribe("clock/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut sub_loop, |p| matches!(p, Packet::SubAck(_))).await;
    remote_entries_at_least(&a, 1.0).await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis();
    let ahead = format!("{}-0", now_ms + 3_600_000);
    let inbox = "starling:v1:inbox:node-b";
    redis_cli(&redis, &["XADD", inbox, &ahead, "k", "clock-test"]);
    // Node B handles the entry (an unknown control, skipped) and deletes it.
    wait_for(WAIT, || async {
        let left = redis_cli(&redis, &["XLEN", inbox]);
        anyhow::ensure!(left.trim() == "0", "{left} entries left");
        Ok(())
    })
    .await
    .expect("node B read the entry from an hour ahead");

    redis.restart().await.expect("redis back, empty");
    for node in [&a, &b] {
        node.wait_for_metric("starling_cluster_redis_resets_total", 1.0, WAIT)
            .await
            .expect("the node noticed that redis lost its data");
        readyz_becomes(node, 200).await;
    }
    remote_entries_at_least(&a, 1.0).await;
    let (publisher, mut pub_loop, _) = client(a.mqtt, "clock-speaker", true).await;
    publisher
        .publish("clock/a", QoS::AtLeastOnce, false, "after the loss")
        .await
        .expect("publish");
    next_packet(&mut pub_loop, |p| matches!(p, Packet::PubAck(_))).await;
    let p = next_publish(&mut sub_loop).await;
    assert_eq!(&p.payload[..], b"after the loss");
}

/// Redis confirms a message relayed to node B (node A acknowledges it to the publisher), and is
/// replaced by an empty one before B's reader has read it (B is cut off meanwhile). The entry
/// is gone with the old Redis: A must append again what B had not reported read, and B's
/// subscriber must get the message (with DUP: B may have delivered it before the loss).
#[tokio::test]
async fn a_message_redis_confirmed_and_lost_before_it_was_read_is_relayed_again() {
    let mut redis = RedisServer::start().await.expect("redis");
    let proxy_b = TcpProxy::start(redis.addr).await.expect("proxy b");
    let a_settings = ClusterSettings::new(&redis.url(), &[]).expect("ports");
    let a = BrokerNode::start_clustered("node-a", &a_settings)
        .await
        .expect("node a");
    let b_settings =
        ClusterSettings::new(&proxy_b.redis_url(), &[a_settings.gossip]).expect("ports");
    let b = BrokerNode::start_clustered("node-b", &b_settings)
        .await
        .expect("node b");
    let (sub, mut sub_loop, _) = client(b.mqtt, "lost-listener", false).await;
    sub.subscribe("lost/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut sub_loop, |p| matches!(p, Packet::SubAck(_))).await;
    remote_entries_at_least(&a, 1.0).await;

    // B cannot read its inbox; A's write of the message is confirmed, and acknowledged.
    proxy_b.cut();
    let (publisher, mut pub_loop, _) = client(a.mqtt, "lost-speaker", true).await;
    publisher
        .publish("lost/a", QoS::AtLeastOnce, false, "confirmed, then lost")
        .await
        .expect("publish");
    next_packet(&mut pub_loop, |p| matches!(p, Packet::PubAck(_))).await;
    let inbox = "starling:v1:inbox:node-b";
    let unread = redis_cli(&redis, &["XLEN", inbox]);
    assert_ne!(unread.trim(), "0", "the message waits in B's inbox");

    redis.restart().await.expect("redis replaced, empty");
    a.wait_for_metric("starling_cluster_redis_resets_total", 1.0, WAIT)
        .await
        .expect("node A noticed that redis lost its data");
    proxy_b.restore();
    let p = next_publish(&mut sub_loop).await;
    assert_eq!(&p.payload[..], b"confirmed, then lost");
    assert!(
        p.dup,
        "written again, it may have been delivered before: DUP"
    );
}

/// Runs `redis-cli` against `redis`; returns what it printed.
fn redis_cli(redis: &RedisServer, args: &[&str]) -> String {
    let port = redis.addr.port().to_string();
    let out = std::process::Command::new("redis-cli")
        .args(["-p", port.as_str()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Redis reaches `maxmemory` in the middle of a relay batch: it takes some of the batch's writes
/// and refuses the rest (OOM). The node says so on `/readyz`, sends only the refused writes again
/// once Redis has room, and every message reaches the subscriber on the other node once.
#[tokio::test]
async fn a_redis_out_of_memory_degrades_the_node_and_each_message_is_relayed_once_after() {
    let redis = RedisServer::start().await.expect("redis");
    let (a, b) = two_nodes(&redis).await;
    let (sub, mut sub_loop, _) = client(b.mqtt, "oom-listener", true).await;
    sub.subscribe("oom/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut sub_loop, |p| matches!(p, Packet::SubAck(_))).await;
    remote_entries_at_least(&a, 1.0).await;
    let (publisher, mut pub_loop, _) = client(a.mqtt, "oom-speaker", true).await;

    // Room for a few of the burst's inbox entries (64 KiB each), not for all of them.
    let info = redis_cli(&redis, &["INFO", "memory"]);
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO");
    redis_cli(&redis, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    redis_cli(
        &redis,
        &["CONFIG", "SET", "maxmemory", &(used + 200_000).to_string()],
    );
    let n = 120;
    // Under rumqttc's default incoming packet limit (10 KiB).
    let padding = "x".repeat(8 * 1024);
    let acknowledging = tokio::spawn(async move {
        let mut acks = 0;
        while acks < n {
            if let Event::Incoming(Packet::PubAck(_)) = pub_loop.poll().await.expect("publisher") {
                acks += 1;
            }
        }
    });
    for i in 0..n {
        publisher
            .publish(format!("oom/{i}"), QoS::AtLeastOnce, false, padding.clone())
            .await
            .expect("publish");
    }
    readyz_says(&a, "out of memory").await;
    assert!(
        a.metric("starling_cluster_redis_write_refusals_total")
            .await
            .expect("metric")
            >= 1.0
    );

    redis_cli(&redis, &["CONFIG", "SET", "maxmemory", "0"]);
    readyz_becomes(&a, 200).await;
    tokio::time::timeout(WAIT, acknowledging)
        .await
        .expect("PUBACKs in time")
        .expect("publisher");
    let mut seen = vec![0usize; n];
    for _ in 0..n {
        let p = next_publish(&mut sub_loop).await;
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let i: usize = topic
            .strip_prefix("oom/")
            .and_then(|i| i.parse().ok())
            .expect("numbered topic");
        seen[i] += 1;
    }
    assert!(
        seen.iter().all(|&count| count == 1),
        "each message once: {seen:?}"
    );
    assert_quiet(&mut sub_loop, "after the burst").await;
}

/// A burst of QoS 0 publishes bound for another node while Redis stalls (SIGSTOP): the relay
/// queue (65,536 messages) fills and then holds the publisher back instead of dropping its
/// messages; once Redis answers, every message arrives once and in order (a batch Redis answered
/// late is not written twice).
#[tokio::test]
async fn a_stalled_relay_holds_qos0_publishers_back_instead_of_dropping_their_messages() {
    let redis = RedisServer::start().await.expect("redis");
    // Publishers may wait for room as long as the stall below lasts.
    let patient = |seeds: &[SocketAddr]| {
        let mut settings = ClusterSettings::new(&redis.url(), seeds).expect("ports");
        settings.extra_config = "[limits]\ndelivery_wait_ms = 60000\n".into();
        settings
    };
    let a_settings = patient(&[]);
    let a = BrokerNode::start_clustered("node-a", &a_settings)
        .await
        .expect("node a");
    let b = BrokerNode::start_clustered("node-b", &patient(&[a_settings.gossip]))
        .await
        .expect("node b");
    let (sub, mut sub_loop, _) = client(b.mqtt, "burst-listener", true).await;
    sub.subscribe("burst/#", QoS::AtMostOnce)
        .await
        .expect("subscribe");
    next_packet(&mut sub_loop, |p| matches!(p, Packet::SubAck(_))).await;
    remote_entries_at_least(&a, 1.0).await;

    let n: usize = 100_000;
    // Connected first: a session cannot be claimed while Redis stalls.
    let (publisher, mut pub_loop, _) = client(a.mqtt, "burst-speaker", true).await;
    redis.pause().expect("pause redis");
    let publishing = tokio::spawn(async move {
        for i in 0..n {
            publisher
                .publish("burst/n", QoS::AtMostOnce, false, i.to_string())
                .await
                .expect("publish");
        }
        publisher
    });
    let driving = tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });
    // The queue is full and the publisher waits for room.
    a.wait_for_metric("starling_relay_waits_total", 1.0, Duration::from_secs(60))
        .await
        .expect("the publisher is held back while Redis stalls");
    redis.resume().expect("resume redis");

    let mut next = 0;
    while next < n {
        let p = next_publish(&mut sub_loop).await;
        let got: usize = String::from_utf8_lossy(&p.payload).parse().expect("number");
        assert_eq!(got, next, "every message once, in order");
        next += 1;
    }
    assert_quiet(&mut sub_loop, "a message arrived twice").await;
    assert_eq!(
        a.metric("starling_relay_dropped_total")
            .await
            .expect("metric"),
        0.0,
        "nothing was dropped"
    );
    let _publisher = publishing.await.expect("publisher");
    driving.abort();
}

#[tokio::test]
async fn a_node_restarted_under_its_id_rejoins_and_relays_both_ways() {
    let redis = RedisServer::start().await.expect("redis");
    let (mut a, b) = two_nodes(&redis).await;
    both_see_two_members(&a, &b).await;

    // A persistent subscriber on node A; node A dies and gossip declares it failed.
    let (sub, mut sub_loop, _) = client(a.mqtt, "returning", false).await;
    sub.subscribe("back/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut sub_loop, |p| matches!(p, Packet::SubAck(_))).await;
    drop(sub_loop);
    a.kill();
    b.wait_for_members(1, Duration::from_secs(30))
        .await
        .expect("node a declared failed");

    // The same id comes back on new ports (a restarted pod gets a new address).
    let seeds: Vec<SocketAddr> = b.gossip.into_iter().collect();
    let again_settings = ClusterSettings::new(&redis.url(), &seeds).expect("ports");
    let again = BrokerNode::start_clustered("node-a", &again_settings)
        .await
        .expect("node a again");
    // Node B refuses the new address until node A has been dead for `dead_node_reclaim` (3 s);
    // a refused first announcement is repaired by the next state exchange (every 15 s).
    for node in [&again, &b] {
        node.wait_for_members(2, Duration::from_secs(40))
            .await
            .expect("node a rejoined");
    }

    // Relay works both ways: a subscriber on each node, a publisher on each node.
    let (_back, mut back_loop, present) = client(again.mqtt, "returning", false).await;
    assert!(present, "the session survived its node's death and restart");
    let (watcher, mut watch_loop, _) = client(b.mqtt, "watcher-b", true).await;
    watcher
        .subscribe("back/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut watch_loop, |p| matches!(p, Packet::SubAck(_))).await;
    remote_entries_at_least(&again, 1.0).await;
    remote_entries_at_least(&b, 1.0).await;
    // Node B, where the session was parked, keeps routing it until node A's routes are known.
    routes_handed_off(&b, 1.0).await;
    for (from, node) in [("b", &b), ("a", &again)] {
        let (publisher, mut pub_loop, _) = client(node.mqtt, &format!("pub-{from}"), true).await;
        publisher
            .publish(format!("back/{from}"), QoS::AtLeastOnce, false, from)
            .await
            .expect("publish");
        next_packet(&mut pub_loop, |p| matches!(p, Packet::PubAck(_))).await;
        for (name, eventloop) in [("a", &mut back_loop), ("b", &mut watch_loop)] {
            let p = next_publish(eventloop).await;
            assert_eq!(
                &p.payload[..],
                from.as_bytes(),
                "the subscriber on node {name} gets what node {from} published"
            );
        }
    }
    assert_no_more_publishes([&mut back_loop, &mut watch_loop], "a message").await;
}
