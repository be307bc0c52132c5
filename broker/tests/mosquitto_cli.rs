//! Interoperability with the real Mosquitto command-line clients (`mosquitto_pub` and
//! `mosquitto_sub` from the Debian package `mosquitto-clients`), in MQTT 3.1.1 and 5.0.
//!
//! The binaries are required: a missing binary fails the test with an installation hint rather
//! than skipping it, so a CI image without them cannot pass silently.

mod common;

use common::{TestBroker, WAIT};
use std::collections::BTreeSet;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const INSTALL_HINT: &str =
    "the Mosquitto clients are required: apt-get install -y mosquitto-clients";
const V311: &str = "mqttv311";
const V5: &str = "mqttv5";
/// mosquitto_sub output: topic, QoS, retain flag, payload.
const FORMAT: &str = "%t|%q|%r|%p";

fn command(program: &str, broker: &TestBroker) -> Command {
    let mut c = Command::new(program);
    c.args(["-h", "127.0.0.1", "-p", &broker.tcp().port().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Runs `mosquitto_pub` with `args` to completion and asserts it succeeded.
async fn mosquitto_pub(broker: &TestBroker, args: &[&str]) {
    let child = command("mosquitto_pub", broker)
        .args(args)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run mosquitto_pub ({e}); {INSTALL_HINT}"));
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("mosquitto_pub {args:?} did not finish in time"))
        .expect("wait for mosquitto_pub");
    assert!(
        out.status.success(),
        "mosquitto_pub {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `mosquitto_sub` whose output is read line by line.
struct MosquittoSub {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl MosquittoSub {
    fn spawn(broker: &TestBroker, args: &[&str]) -> Self {
        let mut child = command("mosquitto_sub", broker)
            .args(args)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run mosquitto_sub ({e}); {INSTALL_HINT}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        MosquittoSub {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    async fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = tokio::time::timeout(WAIT, err.read_to_string(&mut text)).await;
        }
        text
    }

    /// The next printed message.
    async fn line(&mut self) -> String {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("mosquitto_sub printed nothing in time")
            .expect("read mosquitto_sub output");
        match line {
            Some(line) => line,
            None => panic!("mosquitto_sub exited early: {}", self.stderr().await),
        }
    }

    /// Waits for mosquitto_sub to exit by itself (after its `-C` count) and checks it succeeded.
    async fn finish(mut self) {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("mosquitto_sub exits after its message count")
            .expect("wait for mosquitto_sub");
        assert!(status.success(), "mosquitto_sub failed: {status}");
    }
}

/// Starts `mosquitto_sub` on `filter` and returns once it is subscribed; it exits after `count`
/// messages beyond the readiness marker. `name` tells concurrent subscribers' markers apart.
///
/// Readiness without sleeping: a retained marker is stored on `ready/<name>` before the
/// subscriber starts, and the subscriber subscribes to it along with `filter` in one SUBSCRIBE.
/// The broker sends retained messages only once it has processed the SUBSCRIBE, so when
/// mosquitto_sub prints the marker its subscriptions are in place and anything published from
/// then on reaches it. The marker must be the first line: a retained message under `filter`
/// arriving first fails the test.
async fn subscribed(
    broker: &TestBroker,
    name: &str,
    filter: &str,
    extra: &[&str],
    count: usize,
) -> MosquittoSub {
    let ready = ready_topic(name);
    mosquitto_pub(broker, &["-V", V311, "-t", &ready, "-r", "-m", "ready"]).await;
    let total = (count + 1).to_string();
    let mut args = vec!["-t", filter, "-t", &ready, "-C", &total];
    args.extend_from_slice(extra);
    let mut sub = MosquittoSub::spawn(broker, &args);
    let first = sub.line().await;
    assert!(
        first.starts_with(&ready) && first.ends_with("|ready"),
        "expected the readiness marker first, got {first:?}"
    );
    sub
}

fn ready_topic(name: &str) -> String {
    format!("ready/{name}")
}

async fn lines(sub: &mut MosquittoSub, n: usize) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for _ in 0..n {
        out.insert(sub.line().await);
    }
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn mosquitto_sub_v311_receives_qos0_and_qos1_from_mosquitto_pub_v311() {
    let broker = TestBroker::start().await;
    let mut sub = subscribed(
        &broker,
        "m311",
        "m311/#",
        &["-V", V311, "-q", "1", "-F", FORMAT],
        2,
    )
    .await;
    mosquitto_pub(
        &broker,
        &["-V", V311, "-t", "m311/zero", "-q", "0", "-m", "zero"],
    )
    .await;
    mosquitto_pub(
        &broker,
        &["-V", V311, "-t", "m311/one", "-q", "1", "-m", "one"],
    )
    .await;
    // Separate publisher connections: their relative order is not guaranteed.
    assert_eq!(
        lines(&mut sub, 2).await,
        set(&["m311/zero|0|0|zero", "m311/one|1|0|one"])
    );
    sub.finish().await;
    broker.stop().await;
}

#[tokio::test]
async fn mosquitto_sub_v5_receives_every_qos_from_mosquitto_pub_v5() {
    let broker = TestBroker::start().await;
    let mut sub = subscribed(
        &broker,
        "m5",
        "m5/#",
        &["-V", V5, "-q", "2", "-F", FORMAT],
        3,
    )
    .await;
    for qos in ["0", "1", "2"] {
        let topic = format!("m5/q{qos}");
        mosquitto_pub(&broker, &["-V", V5, "-t", &topic, "-q", qos, "-m", qos]).await;
    }
    assert_eq!(
        lines(&mut sub, 3).await,
        set(&["m5/q0|0|0|0", "m5/q1|1|0|1", "m5/q2|2|0|2"])
    );
    sub.finish().await;
    broker.stop().await;
}

#[tokio::test]
async fn qos2_crosses_between_v311_and_v5_mosquitto_clients() {
    let broker = TestBroker::start().await;
    let mut sub311 = subscribed(
        &broker,
        "x311",
        "x/#",
        &["-V", V311, "-q", "2", "-F", FORMAT],
        2,
    )
    .await;
    let mut sub5 = subscribed(
        &broker,
        "x5",
        "x/#",
        &["-V", V5, "-q", "2", "-F", FORMAT],
        2,
    )
    .await;
    mosquitto_pub(
        &broker,
        &["-V", V311, "-t", "x/a", "-q", "2", "-m", "from311"],
    )
    .await;
    mosquitto_pub(&broker, &["-V", V5, "-t", "x/b", "-q", "2", "-m", "from5"]).await;
    let expected = set(&["x/a|2|0|from311", "x/b|2|0|from5"]);
    assert_eq!(lines(&mut sub311, 2).await, expected);
    assert_eq!(lines(&mut sub5, 2).await, expected);
    sub311.finish().await;
    sub5.finish().await;
    broker.stop().await;
}

#[tokio::test]
async fn retained_message_from_mosquitto_pub_reaches_a_later_mosquitto_sub() {
    let broker = TestBroker::start().await;
    for version in [V311, V5] {
        let topic = format!("ret/{version}");
        mosquitto_pub(
            &broker,
            &["-V", version, "-t", &topic, "-q", "1", "-r", "-m", "kept"],
        )
        .await;
        let mut sub = MosquittoSub::spawn(
            &broker,
            &[
                "-V", version, "-t", &topic, "-q", "2", "-C", "1", "-F", FORMAT,
            ],
        );
        assert_eq!(sub.line().await, format!("{topic}|1|1|kept"), "{version}");
        sub.finish().await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn mosquitto_pub_null_retained_message_clears_the_retained_message() {
    let broker = TestBroker::start().await;
    mosquitto_pub(&broker, &["-V", V311, "-t", "clr/t", "-r", "-m", "old"]).await;
    mosquitto_pub(&broker, &["-V", V5, "-t", "clr/t", "-r", "-n"]).await;
    // `subscribed` fails if "old" is still retained and arrives before the marker; the live
    // message below catches it arriving after the marker.
    let mut sub = subscribed(&broker, "clr", "clr/#", &["-V", V311, "-F", FORMAT], 1).await;
    mosquitto_pub(&broker, &["-V", V311, "-t", "clr/end", "-m", "end"]).await;
    assert_eq!(sub.line().await, "clr/end|0|0|end");
    sub.finish().await;
    broker.stop().await;
}

#[tokio::test]
async fn v5_user_properties_pass_from_mosquitto_pub_to_mosquitto_sub() {
    let broker = TestBroker::start().await;
    let mut sub = subscribed(
        &broker,
        "up",
        "up/#",
        &["-V", V5, "-q", "1", "-F", "%t|%P|%p"],
        1,
    )
    .await;
    mosquitto_pub(
        &broker,
        &[
            "-V",
            V5,
            "-t",
            "up/t",
            "-q",
            "1",
            "-m",
            "hello",
            "-D",
            "publish",
            "user-property",
            "k",
            "v",
            "-D",
            "publish",
            "user-property",
            "k2",
            "v2",
        ],
    )
    .await;
    assert_eq!(sub.line().await, "up/t|k:v k2:v2|hello");
    sub.finish().await;
    broker.stop().await;
}

#[tokio::test]
async fn mosquitto_sub_persistent_session_gets_messages_queued_while_offline() {
    let broker = TestBroker::start().await;
    for (version, session) in [(V311, &["-c"][..]), (V5, &["-c", "-x", "60"][..])] {
        let base = format!("ps{version}");
        let id = format!("persistent-{version}");
        let mut args = vec!["-V", version, "-i", &id, "-q", "1", "-F", FORMAT];
        args.extend_from_slice(session);
        // Subscribes, sees the marker, disconnects: the session and its subscription stay.
        let filter = format!("{base}/#");
        subscribed(&broker, &id, &filter, &args, 0)
            .await
            .finish()
            .await;
        // Clear the marker (QoS 0, so not queued) and publish while the subscriber is away.
        let ready = ready_topic(&id);
        mosquitto_pub(&broker, &["-V", V311, "-t", &ready, "-r", "-n"]).await;
        let topic = format!("{base}/t");
        mosquitto_pub(
            &broker,
            &["-V", version, "-t", &topic, "-q", "1", "-m", "queued"],
        )
        .await;

        let mut again = args.clone();
        again.extend_from_slice(&["-t", &filter, "-t", &ready, "-C", "1"]);
        let mut sub = MosquittoSub::spawn(&broker, &again);
        assert_eq!(sub.line().await, format!("{topic}|1|0|queued"), "{version}");
        sub.finish().await;
    }
    broker.stop().await;
}

/// Outbound topic aliases are on by default (`limits.max_outbound_topic_alias`), and
/// mosquitto_sub announces no Topic Alias Maximum unless told to: it must get every topic whole.
/// (libmosquitto 2.0.x cannot read an aliased PUBLISH: an empty topic is a protocol error to it,
/// so a broker aliasing without being asked would end this subscriber at its second message.)
#[tokio::test]
async fn mosquitto_sub_v5_announcing_no_topic_alias_maximum_gets_whole_topics() {
    let broker = TestBroker::start().await;
    assert!(broker.broker.config.limits.max_outbound_topic_alias > 0);
    let mut sub = subscribed(
        &broker,
        "noalias",
        "noalias/#",
        &["-V", V5, "-q", "1", "-F", FORMAT],
        6,
    )
    .await;
    let mut expected = BTreeSet::new();
    for i in 0..6 {
        let topic = format!("noalias/sensor/{}", i % 2);
        let payload = format!("m{i}");
        mosquitto_pub(
            &broker,
            &["-V", V5, "-t", &topic, "-q", "1", "-m", &payload],
        )
        .await;
        expected.insert(format!("{topic}|1|0|{payload}"));
    }
    assert_eq!(lines(&mut sub, 6).await, expected);
    sub.finish().await;
    broker.stop().await;
}
