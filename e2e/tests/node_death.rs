//! A node killed with SIGKILL in the middle of a QoS 1 stream, on real processes (redis-server,
//! three broker nodes, HAProxy): every message the publisher had acknowledged reaches every
//! persistent subscriber, including the one whose node died (it resumes through the load
//! balancer), and a message that arrives twice carries DUP on every copy but one. And a node
//! killed the moment it has resumed a session loses none of the queue it took from Redis.

use e2e::{BrokerNode, ClusterSettings, Haproxy, RedisServer};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Messages published.
const MESSAGES: usize = 2000;
/// Pace of the publisher: the stream lasts about 10 s, across the kill and the recovery.
const EVERY: Duration = Duration::from_millis(5);
/// The victim node is killed once its subscriber has received this many.
const KILL_AFTER: usize = 400;
/// Time allowed for the whole stream to arrive everywhere.
const DEADLINE: Duration = Duration::from_secs(120);

fn persistent(addr: SocketAddr, id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(300));
    options
}

/// Connects (retrying: through the load balancer a dead backend refuses the first attempts) and
/// returns the event loop and the CONNACK's session-present flag.
async fn connect(options: MqttOptions) -> (AsyncClient, EventLoop, bool) {
    let mut attempts = 0;
    loop {
        let (client, mut eventloop) = AsyncClient::new(options.clone(), 100);
        let connack = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack.session_present),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
        .await;
        match connack {
            Ok(Ok(present)) => return (client, eventloop, present),
            outcome => {
                attempts += 1;
                assert!(
                    attempts < 60,
                    "no connection after {attempts} attempts: {outcome:?}"
                );
                // A retry pace, not synchronisation: the next attempt goes to the next backend.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// What one subscriber saw: for each message number, how many copies came without and with DUP.
#[derive(Default, Debug)]
struct Seen {
    copies: BTreeMap<usize, (usize, usize)>,
    resumed_with_session: Option<bool>,
}

/// Subscribes `id` to `load/#` at QoS 1 on `addr`, then records every copy it receives. When the
/// connection breaks (its node was killed) it reconnects through `fallback` and goes on.
async fn subscriber(
    id: &'static str,
    addr: SocketAddr,
    fallback: SocketAddr,
    progress: mpsc::UnboundedSender<(&'static str, usize)>,
    mut done: watch::Receiver<bool>,
) -> Seen {
    let (client, mut eventloop, _) = connect(persistent(addr, id)).await;
    client
        .subscribe("load/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let mut seen = Seen::default();
    loop {
        tokio::select! {
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = progress.send((id, usize::MAX));
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let n: usize = String::from_utf8_lossy(&p.payload).parse().expect("number");
                    let entry = seen.copies.entry(n).or_default();
                    if p.dup { entry.1 += 1 } else { entry.0 += 1 }
                    let _ = progress.send((id, seen.copies.len()));
                }
                Ok(_) => {}
                Err(_) => {
                    let (_, resumed, present) = connect(persistent(fallback, id)).await;
                    seen.resumed_with_session = Some(present);
                    eventloop = resumed;
                }
            },
            _ = done.changed() => return seen,
        }
    }
}

/// Node settings: sessions may queue the whole stream (the default of 1,000 per session would
/// drop, and count, what the subscriber on the killed node misses while it is away).
fn settings(redis: &RedisServer, seeds: &[SocketAddr]) -> ClusterSettings {
    let mut settings = ClusterSettings::new(&redis.url(), seeds).expect("ports");
    settings.extra_config = format!("[limits]\nmax_queued_messages = {}\n", 4 * MESSAGES);
    settings
}

#[tokio::test]
async fn a_node_killed_under_qos1_load_loses_nothing_for_persistent_subscribers() {
    let redis = RedisServer::start().await.expect("redis");
    let a_settings = settings(&redis, &[]);
    let mut victim = BrokerNode::start_clustered("node-a", &a_settings)
        .await
        .expect("node a");
    let b_settings = settings(&redis, &[a_settings.gossip]);
    let b = BrokerNode::start_clustered("node-b", &b_settings)
        .await
        .expect("node b");
    let c_settings = settings(&redis, &[a_settings.gossip, b_settings.gossip]);
    let c = BrokerNode::start_clustered("node-c", &c_settings)
        .await
        .expect("node c");
    for node in [&victim, &b, &c] {
        node.wait_for_members(3, Duration::from_secs(30))
            .await
            .expect("three members");
    }
    let lb = Haproxy::start(&[victim.mqtt, b.mqtt, c.mqtt])
        .await
        .expect("haproxy");

    // Persistent subscribers: one on the victim, one on a survivor, one wherever the load
    // balancer puts it. Each reports its progress; all stop together.
    let (progress, mut reports) = mpsc::unbounded_channel();
    let (done, stop) = watch::channel(false);
    let mut collectors = Vec::new();
    for (id, addr) in [
        ("sub-a", victim.mqtt),
        ("sub-b", b.mqtt),
        ("sub-lb", lb.addr),
    ] {
        collectors.push(tokio::spawn(subscriber(
            id,
            addr,
            lb.addr,
            progress.clone(),
            stop.clone(),
        )));
    }
    drop(progress);
    let mut subscribed = 0;
    while subscribed < 3 {
        let (_, n) = reports.recv().await.expect("a subscriber report");
        subscribed += usize::from(n == usize::MAX);
    }
    // Every node's routes for the subscriptions reach node B, the publisher's node.
    b.wait_for_metric(
        "starling_cluster_remote_entries",
        1.0,
        Duration::from_secs(15),
    )
    .await
    .expect("routes");

    // The publisher, on a node that survives, paces a numbered QoS 1 stream and counts PUBACKs.
    let (publisher, mut pub_loop, _) = connect({
        let mut options = MqttOptions::new("load-gen", b.mqtt.ip().to_string(), b.mqtt.port());
        options.set_keep_alive(Duration::from_secs(30));
        options
    })
    .await;
    let acknowledging = tokio::spawn(async move {
        let mut acks = 0;
        while acks < MESSAGES {
            match pub_loop
                .poll()
                .await
                .expect("the publisher's node stays up")
            {
                Event::Incoming(Packet::PubAck(_)) => acks += 1,
                _ => continue,
            }
        }
        acks
    });
    let publishing = tokio::spawn(async move {
        let mut pace = tokio::time::interval(EVERY);
        for i in 0..MESSAGES {
            pace.tick().await;
            publisher
                .publish(
                    format!("load/{}", i % 16),
                    QoS::AtLeastOnce,
                    false,
                    i.to_string(),
                )
                .await
                .expect("publish");
        }
    });

    // Kill the victim mid-stream, then wait until every subscriber has every number.
    let mut received: BTreeMap<&str, usize> = BTreeMap::new();
    let mut killed = false;
    let arrived = tokio::time::timeout(DEADLINE, async {
        while received.len() < 3 || received.values().any(|&n| n < MESSAGES) {
            let (id, n) = reports.recv().await.expect("a subscriber report");
            if n == usize::MAX {
                continue;
            }
            received.insert(id, n);
            if !killed && id == "sub-a" && n >= KILL_AFTER {
                victim.kill();
                killed = true;
            }
        }
    })
    .await;
    if arrived.is_err() {
        let mut drops = Vec::new();
        for node in [&b, &c] {
            let (_, metrics) = e2e::http_get(node.admin, "/metrics")
                .await
                .expect("metrics");
            drops.extend(
                metrics
                    .lines()
                    .filter(|l| l.contains("dropped") && !l.starts_with('#'))
                    .map(|l| format!("{}: {l}", node.id)),
            );
        }
        panic!("not every message arrived everywhere: {received:?}; drops: {drops:#?}");
    }
    publishing.await.expect("publisher");
    let acks = tokio::time::timeout(Duration::from_secs(30), acknowledging)
        .await
        .expect("every PUBACK")
        .expect("publisher");
    assert_eq!(acks, MESSAGES);
    assert!(killed, "the victim was killed mid-stream");

    done.send_replace(true);
    for (collector, id) in collectors.into_iter().zip(["sub-a", "sub-b", "sub-lb"]) {
        let seen = collector.await.expect("subscriber");
        let numbers: Vec<usize> = seen.copies.keys().copied().collect();
        assert_eq!(
            numbers,
            (0..MESSAGES).collect::<Vec<_>>(),
            "{id}: every message"
        );
        let twice_without_dup: Vec<_> = seen
            .copies
            .iter()
            .filter(|(_, (plain, _))| *plain > 1)
            .collect();
        assert!(
            twice_without_dup.is_empty(),
            "{id}: duplicates without DUP: {twice_without_dup:?}"
        );
        let dups: usize = seen.copies.values().map(|(_, dup)| dup).sum();
        println!(
            "{id}: {MESSAGES} received, {dups} copies again with DUP, resumed: {:?}",
            seen.resumed_with_session
        );
        if id == "sub-a" {
            assert_eq!(
                seen.resumed_with_session,
                Some(true),
                "sub-a resumed its session on a survivor"
            );
        }
    }
}

/// Messages queued for the session that moves in the test below.
const QUEUED: usize = 300;

#[tokio::test]
async fn a_node_killed_right_after_resuming_a_session_loses_none_of_its_queue() {
    let redis = RedisServer::start().await.expect("redis");
    let a_settings = settings(&redis, &[]);
    let a = BrokerNode::start_clustered("node-a", &a_settings)
        .await
        .expect("node a");
    let b_settings = settings(&redis, &[a_settings.gossip]);
    let mut victim = BrokerNode::start_clustered("node-b", &b_settings)
        .await
        .expect("node b");
    for node in [&a, &victim] {
        node.wait_for_members(2, Duration::from_secs(30))
            .await
            .expect("two members");
    }

    // A persistent session subscribes on node A and leaves; a queue builds up for it in Redis.
    let (sub, mut sub_loop, _) = connect(persistent(a.mqtt, "mover")).await;
    sub.subscribe("moved/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    loop {
        match sub_loop.poll().await.expect("subscriber on node a") {
            Event::Incoming(Packet::SubAck(_)) => break,
            _ => continue,
        }
    }
    sub.disconnect().await.expect("disconnect");
    while sub_loop.poll().await.is_ok() {}
    let (publisher, mut pub_loop, _) = connect({
        let mut options = MqttOptions::new("queue-filler", a.mqtt.ip().to_string(), a.mqtt.port());
        options.set_keep_alive(Duration::from_secs(30));
        options
    })
    .await;
    // Published from a task of its own: the client's request channel is smaller than the queue.
    let publishing = tokio::spawn(async move {
        for i in 0..QUEUED {
            publisher
                .publish("moved/x", QoS::AtLeastOnce, false, i.to_string())
                .await
                .expect("publish");
        }
        publisher
    });
    let mut acks = 0;
    while acks < QUEUED {
        if let Event::Incoming(Packet::PubAck(_)) = pub_loop.poll().await.expect("publisher") {
            acks += 1;
        }
    }
    let _publisher = publishing.await.expect("publisher");

    // The session resumes on node B, which is killed as soon as it has answered the claim,
    // before the client acknowledged (or even read) anything.
    let (_resumed, _resumed_loop, present) = connect(persistent(victim.mqtt, "mover")).await;
    assert!(present, "node b resumed the session");
    victim.kill();

    // Back on node A: every queued message arrives.
    let (_back, mut back_loop, _) = connect(persistent(a.mqtt, "mover")).await;
    let mut numbers = std::collections::BTreeSet::new();
    let collected = tokio::time::timeout(DEADLINE, async {
        while numbers.len() < QUEUED {
            match back_loop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let n: usize = String::from_utf8_lossy(&p.payload).parse().expect("number");
                    numbers.insert(n);
                }
                Ok(_) => {}
                Err(e) => panic!("the subscriber's connection to node a broke: {e}"),
            }
        }
    })
    .await;
    assert!(
        collected.is_ok(),
        "{} of {QUEUED} queued messages arrived after node b died",
        numbers.len()
    );
    assert_eq!(numbers, (0..QUEUED).collect());
}
