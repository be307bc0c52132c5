//! Gossip membership on real sockets: nodes on 127.0.0.1 with system-chosen ports, timings
//! shortened so that failure detection takes seconds. Every wait is bounded and waits for a
//! condition (an event, a member count, a seed status), never for a fixed time.

use super::seeds::resolve_seeds;
use super::*;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

/// Upper bound on any one wait; generous, as CI machines are slow and shared.
const BOUND: Duration = Duration::from_secs(30);

fn fast() -> GossipTuning {
    GossipTuning {
        probe_interval: Duration::from_millis(300),
        probe_timeout: Duration::from_millis(150),
        suspicion_mult: 3,
        gossip_interval: Duration::from_millis(100),
        push_pull_interval: Duration::from_secs(2),
        tcp_timeout: Duration::from_secs(2),
        seed_retry_max: Duration::from_millis(500),
    }
}

fn config(id: &str, seeds: &[String]) -> GossipConfig {
    let mut config = GossipConfig::new(id, "127.0.0.1:0".parse().expect("addr"));
    config.seeds = seeds.to_vec();
    config.dead_node_reclaim = Duration::from_secs(1);
    config.tuning = fast();
    config
}

async fn node(id: &str, seeds: &[String]) -> Arc<GossipMembership> {
    GossipMembership::start(config(id, seeds))
        .await
        .expect("gossip starts")
}

fn seed_of(node: &GossipMembership) -> String {
    node.advertise_addr().to_string()
}

async fn ids(node: &dyn Membership) -> BTreeSet<String> {
    node.members().await.into_iter().map(|n| n.id).collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// Waits until `node` sees exactly the members `expected`.
async fn wait_members(node: &dyn Membership, expected: &[&str]) {
    let expected = set(expected);
    let start = Instant::now();
    loop {
        let seen = ids(node).await;
        if seen == expected {
            return;
        }
        assert!(
            start.elapsed() < BOUND,
            "{} sees {seen:?}, not {expected:?}, after {BOUND:?}",
            node.local_id()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the first event matching `want` and returns it.
async fn wait_event(
    rx: &mut broadcast::Receiver<MemberEvent>,
    what: &str,
    want: impl Fn(&MemberEvent) -> bool,
) -> MemberEvent {
    let found = tokio::time::timeout(BOUND, async {
        loop {
            match rx.recv().await {
                Ok(event) if want(&event) => return event,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => panic!("event channel closed"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no {what} within {BOUND:?}"))
}

fn joined(id: &'static str) -> impl Fn(&MemberEvent) -> bool {
    move |e| matches!(e, MemberEvent::Joined(n) if n.id == id)
}

fn left(id: &'static str) -> impl Fn(&MemberEvent) -> bool {
    move |e| matches!(e, MemberEvent::Left(n) if n.id == id)
}

/// Waits until the node's seed search satisfies `want`.
async fn wait_seed_status(
    node: &GossipMembership,
    want: impl Fn(&SeedStatus) -> bool,
) -> SeedStatus {
    let mut status = node.seed_status();
    let seen = tokio::time::timeout(BOUND, status.wait_for(|s| want(s)))
        .await
        .unwrap_or_else(|_| panic!("seed status of {} never matched", node.local_id()))
        .expect("seed task alive")
        .clone();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_join_through_seeds_one_given_as_localhost() {
    let a = node("a", &[]).await;
    let mut a_events = a.events();
    let port = a.advertise_addr().port();
    let b = node("b", &[seed_of(&a)]).await;
    // A DNS name, resolved by the system resolver, not memberlist's public-DNS one.
    let c = node("c", &[format!("localhost:{port}")]).await;

    for n in [&a, &b, &c] {
        wait_members(n.as_ref(), &["a", "b", "c"]).await;
    }
    let mut got = BTreeSet::new();
    while got.len() < 2 {
        match wait_event(&mut a_events, "joins at a", |_| true).await {
            MemberEvent::Joined(n) => {
                let addr = if n.id == "b" {
                    b.advertise_addr()
                } else {
                    c.advertise_addr()
                };
                assert_eq!(n.addr, addr, "{n:?}");
                got.insert(n.id);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, set(&["b", "c"]), "a node is never told about itself");
    let status = wait_seed_status(&c, |s| s.contacted).await;
    assert!(status.attempts >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_leave_is_seen_as_left() {
    let a = node("a", &[]).await;
    let b = node("b", &[seed_of(&a)]).await;
    let c = node("c", &[seed_of(&a)]).await;
    for n in [&a, &b, &c] {
        wait_members(n.as_ref(), &["a", "b", "c"]).await;
    }
    let (mut a_events, mut b_events) = (a.events(), b.events());

    c.leave(Duration::from_secs(5)).await.expect("leave");
    for rx in [&mut a_events, &mut b_events] {
        let MemberEvent::Left(n) = wait_event(rx, "Left(c)", left("c")).await else {
            unreachable!()
        };
        assert_eq!(n.addr, c.advertise_addr());
    }
    wait_members(a.as_ref(), &["a", "b"]).await;
    wait_members(b.as_ref(), &["a", "b"]).await;
    c.leave(Duration::from_secs(1))
        .await
        .expect("leaving twice is harmless");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_node_is_seen_as_left_and_is_taken_back_when_it_restarts_elsewhere() {
    // Each run of c publishes its run: the others tell the departed run from the new one.
    let run_of_c = |run| {
        let mut config = config("c", &[]);
        config.run = Some(run);
        config
    };
    let a = node("a", &[]).await;
    let b = node("b", &[seed_of(&a)]).await;

    // c runs on a runtime of its own, so that it can die without saying goodbye: dropping the
    // runtime drops its tasks, so its gossip socket goes unread and its TCP listener closes.
    let c_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let c = c_runtime
        .spawn(GossipMembership::start(GossipConfig {
            seeds: vec![seed_of(&a)],
            ..run_of_c(1)
        }))
        .await
        .expect("start task")
        .expect("gossip starts");
    let old_addr = c.advertise_addr();
    for n in [&a, &b] {
        wait_members(n.as_ref(), &["a", "b", "c"]).await;
    }
    let (mut a_events, mut b_events) = (a.events(), b.events());

    let died = Instant::now();
    c_runtime.shutdown_background();
    drop(c);
    for rx in [&mut a_events, &mut b_events] {
        let MemberEvent::Left(n) = wait_event(rx, "Left(c) after failure", left("c")).await else {
            unreachable!()
        };
        assert_eq!(n.addr, old_addr);
        assert_eq!(n.run, Some(1), "the departed run");
    }
    tracing::info!(elapsed = ?died.elapsed(), "failure detected");
    wait_members(a.as_ref(), &["a", "b"]).await;

    // The same id at a new port: memberlist refuses that unless dead_node_reclaim_time is set.
    let c2 = GossipMembership::start(GossipConfig {
        seeds: vec![seed_of(&b)],
        ..run_of_c(2)
    })
    .await
    .expect("gossip starts");
    assert_ne!(c2.advertise_addr(), old_addr);
    for rx in [&mut a_events, &mut b_events] {
        let MemberEvent::Joined(n) = wait_event(rx, "Joined(c) again", joined("c")).await else {
            unreachable!()
        };
        assert_eq!(n.addr, c2.advertise_addr());
        assert_eq!(n.run, Some(2), "the new run");
    }
    for n in [&a, &b, &c2] {
        wait_members(n.as_ref(), &["a", "b", "c"]).await;
    }
    let c_seen_by_a = a.members().await.into_iter().find(|n| n.id == "c");
    assert_eq!(c_seen_by_a.map(|n| n.addr), Some(c2.advertise_addr()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_with_the_same_key_form_a_cluster() {
    let key = |byte: u8| Some(vec![byte; 32]);
    let mut ca = config("a", &[]);
    ca.secret_key = key(1);
    let a = GossipMembership::start(ca).await.expect("a");
    let mut cb = config("b", &[seed_of(&a)]);
    cb.secret_key = key(1);
    let b = GossipMembership::start(cb).await.expect("b");
    let mut cd = config("d", &[seed_of(&a)]);
    cd.secret_key = key(2);
    let d = GossipMembership::start(cd).await.expect("d");
    let plain = node("plain", &[seed_of(&a)]).await;

    wait_members(a.as_ref(), &["a", "b"]).await;
    wait_members(b.as_ref(), &["a", "b"]).await;
    for outsider in [&d, &plain] {
        let status = wait_seed_status(outsider, |s| s.attempts >= 2).await;
        assert!(!status.contacted, "{status:?}");
        assert!(status.last_error.is_some(), "{status:?}");
        assert_eq!(ids(outsider.as_ref()).await, set(&[outsider.local_id()]));
    }
    assert_eq!(ids(a.as_ref()).await, set(&["a", "b"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_that_is_not_up_yet_is_retried_until_it_answers() {
    // A free port for a, found by binding and letting go; b is told to seed from it first.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let b = node("b", &[format!("127.0.0.1:{port}")]).await;
    let mut b_events = b.events();
    let status = wait_seed_status(&b, |s| s.attempts >= 1).await;
    assert!(
        !status.contacted && status.last_error.is_some(),
        "{status:?}"
    );

    let mut ca = config("a", &[]);
    ca.bind = SocketAddr::from(([127, 0, 0, 1], port));
    let a = GossipMembership::start(ca)
        .await
        .expect("a on the reserved port");
    wait_event(&mut b_events, "Joined(a)", joined("a")).await;
    wait_members(a.as_ref(), &["a", "b"]).await;
    wait_members(b.as_ref(), &["a", "b"]).await;
    wait_seed_status(&b, |s| s.contacted).await;
}

/// Nodes started together may form separate groups (each saw only some of the others behind the
/// headless Service's name); a node with company still joins seed addresses it does not see as
/// members, and the groups merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_formed_apart_merge_through_the_seeds() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    // a's seed is c's future address; b joins a first, so a has company before c exists.
    let a = node("a", &[format!("127.0.0.1:{port}")]).await;
    let b = node("b", &[seed_of(&a)]).await;
    wait_members(a.as_ref(), &["a", "b"]).await;
    wait_members(b.as_ref(), &["a", "b"]).await;

    let mut cc = config("c", &[]);
    cc.bind = SocketAddr::from(([127, 0, 0, 1], port));
    let c = GossipMembership::start(cc)
        .await
        .expect("c on the reserved port");
    let d = node("d", &[seed_of(&c)]).await;
    for n in [&a, &b, &c, &d] {
        wait_members(n.as_ref(), &["a", "b", "c", "d"]).await;
    }
}

#[tokio::test]
async fn single_node_is_alone_forever() {
    let single = SingleNode::new("solo");
    let mut events = single.events();
    assert_eq!(single.local_id(), "solo");
    assert_eq!(ids(&single).await, set(&["solo"]));
    single.leave(Duration::from_secs(1)).await.expect("leave");
    assert!(matches!(
        events.try_recv(),
        Err(broadcast::error::TryRecvError::Empty)
    ));
}

#[tokio::test]
async fn bad_settings_are_refused_before_binding() {
    let mut c = config("a", &["no-port".to_string()]);
    assert!(matches!(
        GossipMembership::start(c.clone()).await,
        Err(MembershipError::InvalidSeed { .. })
    ));
    for seed in ["host:0", "::1:7946", ":7946", "host:x"] {
        c.seeds = vec![seed.to_string()];
        assert!(
            matches!(
                GossipMembership::start(c.clone()).await,
                Err(MembershipError::InvalidSeed { .. })
            ),
            "{seed}"
        );
    }
    c.seeds.clear();
    c.secret_key = Some(vec![0; 20]);
    assert!(matches!(
        GossipMembership::start(c.clone()).await,
        Err(MembershipError::InvalidKey(20))
    ));
    let mut c = config("", &[]);
    c.node_id.clear();
    assert!(matches!(
        GossipMembership::start(c).await,
        Err(MembershipError::InvalidNodeId { .. })
    ));
}

#[tokio::test]
async fn a_port_in_use_is_a_start_error() {
    let a = node("a", &[]).await;
    let mut c = config("b", &[]);
    c.bind = a.advertise_addr();
    let err = GossipMembership::start(c).await.expect_err("port taken");
    assert!(matches!(err, MembershipError::Start { .. }), "{err}");
}

#[test]
fn key_files_hold_base64_keys_of_aes_sizes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, body: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).expect("write");
        path
    };
    // base64 of 16, 24 and 32 bytes, with the newline `openssl rand -base64` leaves.
    for (len, text) in [
        (16, "AAECAwQFBgcICQoLDA0ODw==\n"),
        (24, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYX\n"),
        (32, "  AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"),
    ] {
        let key = load_key_file(&write("k", text.as_bytes())).expect("valid key");
        assert_eq!(key.len(), len);
        assert_eq!(key[1], 1);
    }
    for (name, body) in [
        ("short", &b"AAECAwQFBgcICQoLDA0O\n"[..]),
        ("raw", &[7u8; 32][..]),
        ("empty", &b""[..]),
        ("huge", &[b'A'; 4096][..]),
    ] {
        let err = load_key_file(&write(name, body))
            .expect_err(name)
            .to_string();
        assert!(err.contains("cluster.gossip_key_file"), "{name}: {err}");
    }
    let err = load_key_file(&dir.path().join("missing")).expect_err("missing");
    assert!(matches!(err, MembershipError::KeyFile { .. }));
}

#[tokio::test]
async fn seeds_of_the_other_family_and_of_this_node_are_skipped() {
    let own: SocketAddr = "127.0.0.1:7000".parse().expect("addr");
    let seeds = [
        "[::1]:7946",
        "127.0.0.1:7946",
        "127.0.0.1:7000",
        "127.0.0.1:7946",
    ]
    .map(String::from);
    let (found, problems) = resolve_seeds(&seeds, &[own, own]).await;
    assert_eq!(
        found,
        vec!["127.0.0.1:7946".parse::<SocketAddr>().expect("addr")]
    );
    assert!(problems.is_empty(), "{problems:?}");
    // An IPv6 node keeps IPv6 seeds.
    let own6: SocketAddr = "[::1]:7000".parse().expect("addr");
    let (found, _) = resolve_seeds(&seeds[..1], &[own6, own6]).await;
    assert_eq!(
        found,
        vec!["[::1]:7946".parse::<SocketAddr>().expect("addr")]
    );
}
