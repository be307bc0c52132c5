//! Operating the broker: the admin endpoint and its metrics, `$SYS` topics, configuration errors
//! and overrides of the real binary, signals and graceful shutdown, JSON logs.

mod common;
mod common_redis;

use common::{v4, v5, RawClient, TestBroker, WAIT};
use std::io::Write;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tempfile::NamedTempFile;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

// ---------------------------------------------------------------------------------------------
// HTTP and metrics helpers
// ---------------------------------------------------------------------------------------------

/// One HTTP/1.1 GET with `Connection: close`: (status, body).
async fn try_http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {text:?}")))?;
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "chunked responses are not handled by this helper: {head}"
    );
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok((status, body.to_string()))
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    tokio::time::timeout(WAIT, try_http_get(addr, path))
        .await
        .expect("admin endpoint answers in time")
        .expect("admin request")
}

/// The value of the sample `name` (with its labels, e.g. `x_total{qos="1"}`) in metrics text.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{metrics}"))
        .trim()
        .parse()
        .expect("numeric sample")
}

async fn metric(broker: &TestBroker, name: &str) -> f64 {
    let admin = broker.addresses.admin.expect("admin listener");
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    sample(&body, name)
}

/// Polls `/metrics` until the sample equals `want` (for gauges updated after a connection ends).
async fn await_metric(broker: &TestBroker, name: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = metric(broker, name).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed {got}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_puback(p: &v4::Packet) -> Option<()> {
    matches!(p, v4::Packet::PubAck(_)).then_some(())
}

// ---------------------------------------------------------------------------------------------
// Admin endpoint
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn healthz_and_readyz_answer_200_while_running() {
    let broker = TestBroker::start().await;
    let admin = broker.addresses.admin.expect("admin listener");
    let (status, _) = http_get(admin, "/healthz").await;
    assert_eq!(status, 200);
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!(status, 200);
    assert!(body.contains("ready"), "{body}");
    let (status, _) = http_get(admin, "/no-such-page").await;
    assert_eq!(status, 404);
    broker.stop().await;
}

#[tokio::test]
async fn metrics_count_received_qos1_publishes() {
    let broker = TestBroker::start().await;
    let name = "starling_messages_received_total{qos=\"1\"}";
    let before = metric(&broker, name).await;

    let mut client = v4::connect(v4::options(broker.tcp(), "metrics-pub"));
    client.connack().await;
    for _ in 0..2 {
        client
            .client
            .publish("m/a", v4::QoS::AtLeastOnce, false, "x")
            .await
            .expect("publish");
        client.expect(is_puback).await;
    }
    assert_eq!(metric(&broker, name).await, before + 2.0);
    // A QoS 0 publish is counted under its own label only.
    let qos0 = "starling_messages_received_total{qos=\"0\"}";
    assert_eq!(metric(&broker, qos0).await, 0.0);
    broker.stop().await;
}

#[tokio::test]
async fn connections_gauge_equals_open_clients() {
    let broker = TestBroker::start().await;
    assert_eq!(metric(&broker, "starling_connections").await, 0.0);
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = v4::connect(v4::options(broker.tcp(), &format!("gauge-{i}")));
        c.connack().await;
        clients.push(c);
    }
    assert_eq!(metric(&broker, "starling_connections").await, 3.0);

    let mut leaving = clients.pop().expect("client");
    leaving.client.disconnect().await.expect("disconnect");
    leaving.closed().await;
    await_metric(&broker, "starling_connections", 2.0).await;
    broker.stop().await;
}

#[tokio::test]
async fn subscriptions_gauge_counts_subscriptions() {
    let broker = TestBroker::start().await;
    assert_eq!(metric(&broker, "starling_subscriptions").await, 0.0);
    let mut a = v4::connect(v4::options(broker.tcp(), "subs-a"));
    a.connack().await;
    for filter in ["s/1", "s/2/#"] {
        a.client
            .subscribe(filter, v4::QoS::AtMostOnce)
            .await
            .expect("subscribe");
        a.suback().await;
    }
    let mut b = v5::connect(v5::options(broker.tcp(), "subs-b"));
    b.connack().await;
    b.client
        .subscribe("s/1", v5::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    b.suback().await;
    assert_eq!(metric(&broker, "starling_subscriptions").await, 3.0);

    a.client.unsubscribe("s/1").await.expect("unsubscribe");
    a.expect(|p| matches!(p, v4::Packet::UnsubAck(_)).then_some(()))
        .await;
    assert_eq!(metric(&broker, "starling_subscriptions").await, 2.0);
    broker.stop().await;
}

#[tokio::test]
async fn retained_messages_gauge_counts_retained_topics() {
    let broker = TestBroker::start().await;
    let name = "starling_retained_messages";
    assert_eq!(metric(&broker, name).await, 0.0);
    let mut client = v4::connect(v4::options(broker.tcp(), "retainer"));
    client.connack().await;
    for topic in ["r/1", "r/2"] {
        client
            .client
            .publish(topic, v4::QoS::AtLeastOnce, true, "kept")
            .await
            .expect("publish");
        client.expect(is_puback).await;
    }
    assert_eq!(metric(&broker, name).await, 2.0);
    // An empty retained payload deletes the retained message.
    client
        .client
        .publish("r/1", v4::QoS::AtLeastOnce, true, "")
        .await
        .expect("publish");
    client.expect(is_puback).await;
    assert_eq!(metric(&broker, name).await, 1.0);
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// $SYS topics
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sys_subscriber_receives_uptime_and_connected_clients() {
    let broker = TestBroker::start_with(|c| c.sys.interval_secs = 1).await;
    let mut sub = v4::connect(v4::options(broker.tcp(), "sys-watcher"));
    sub.connack().await;
    sub.client
        .subscribe("$SYS/broker/#", v4::QoS::AtMostOnce)
        .await
        .expect("subscribe");
    sub.suback().await;

    // Wait for a live (not retained-on-subscribe) round, so the value reflects this client.
    let (mut uptime, mut connected) = (None, None);
    tokio::time::timeout(WAIT, async {
        while uptime.is_none() || connected.is_none() {
            let p = sub.publish().await;
            let value = String::from_utf8_lossy(&p.payload).into_owned();
            match p.topic.as_str() {
                "$SYS/broker/uptime" if !p.retain => uptime = Some(value),
                "$SYS/broker/clients/connected" if !p.retain => connected = Some(value),
                _ => {}
            }
        }
    })
    .await
    .expect("$SYS topics arrive");
    let uptime: u64 = uptime.expect("uptime").parse().expect("uptime is seconds");
    assert!(uptime < 60, "uptime {uptime}");
    assert_eq!(connected.as_deref(), Some("1"));
    broker.stop().await;
}

#[tokio::test]
async fn wildcard_subscriber_does_not_receive_sys_topics() {
    let broker = TestBroker::start_with(|c| c.sys.interval_secs = 1).await;
    let mut everything = v4::connect(v4::options(broker.tcp(), "hash-sub"));
    everything.connack().await;
    everything
        .client
        .subscribe("#", v4::QoS::AtMostOnce)
        .await
        .expect("subscribe");
    everything.suback().await;
    let mut plus = v5::connect(v5::options(broker.tcp(), "plus-sub"));
    plus.connack().await;
    plus.client
        .subscribe("+/broker/#", v5::QoS::AtMostOnce)
        .await
        .expect("subscribe");
    plus.suback().await;

    // A live $SYS round after both subscriptions exist.
    let mut sys = v4::connect(v4::options(broker.tcp(), "sys-sub"));
    sys.connack().await;
    sys.client
        .subscribe("$SYS/#", v4::QoS::AtMostOnce)
        .await
        .expect("subscribe");
    sys.suback().await;
    sys.expect(|p| match p {
        v4::Packet::Publish(p) if !p.retain && p.topic.starts_with("$SYS/") => Some(()),
        _ => None,
    })
    .await;

    everything.no_publish().await;
    plus.no_publish().await;
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown in-process
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------------------------

fn config_file(text: &str) -> NamedTempFile {
    let mut f = NamedTempFile::new().expect("temp file");
    f.write_all(text.as_bytes()).expect("write config");
    f.flush().expect("flush config");
    f
}

/// `starling-broker` with a clean environment (no stray `STARLING_*`), killed when dropped.
fn broker_command(config: &NamedTempFile) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_starling-broker"));
    cmd.env_clear()
        .arg("--config")
        .arg(config.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs a command that must end by itself; returns (status, stdout, stderr).
async fn run_to_end(mut cmd: Command) -> (ExitStatus, String, String) {
    let output = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("the binary exits in time")
        .expect("run the binary");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs the broker (with ephemeral ports, in case the configuration is accepted after all) and
/// expects it to fail; returns stderr.
async fn rejected(config: &str, env: &[(&str, &str)]) -> String {
    let file = config_file(config);
    let mut cmd = broker_command(&file);
    cmd.args(["--tcp", "127.0.0.1:0", "--admin-bind", "127.0.0.1:0"]);
    cmd.envs(env.iter().copied());
    let (status, _, stderr) = run_to_end(cmd).await;
    assert!(!status.success(), "accepted; stderr:\n{stderr}");
    stderr
}

#[tokio::test]
async fn binary_rejects_an_unknown_config_field_naming_it() {
    let stderr = rejected("[limits]\nmax_packet_sise = 4096\n", &[]).await;
    assert!(stderr.contains("max_packet_sise"), "{stderr}");
}

#[tokio::test]
async fn binary_rejects_a_config_value_of_the_wrong_type_naming_the_field() {
    let stderr = rejected("[limits]\nmax_inflight = \"many\"\n", &[]).await;
    assert!(stderr.contains("limits.max_inflight"), "{stderr}");
}

#[tokio::test]
async fn binary_rejects_an_invalid_packet_size_naming_the_field() {
    let stderr = rejected("[limits]\nmax_packet_size = 10\n", &[]).await;
    assert!(stderr.contains("limits.max_packet_size"), "{stderr}");
    assert!(stderr.contains("64"), "the fix names the range: {stderr}");
}

#[tokio::test]
async fn binary_rejects_zero_inflight_from_the_environment_naming_the_field() {
    let stderr = rejected("", &[("STARLING_LIMITS__MAX_INFLIGHT", "0")]).await;
    assert!(stderr.contains("limits.max_inflight"), "{stderr}");
}

#[tokio::test]
async fn check_config_prints_effective_toml_with_environment_override() {
    let file = config_file("node_id = \"from-file\"\n[limits]\nmax_packet_size = 2048\n");
    let mut cmd = broker_command(&file);
    cmd.arg("check-config")
        .env("STARLING_LIMITS__MAX_PACKET_SIZE", "4096")
        .env("STARLING_SESSION__QUEUE_QOS0", "true");
    let (status, stdout, stderr) = run_to_end(cmd).await;
    assert!(status.success(), "{stderr}");
    let effective =
        starling_config::BrokerConfig::from_toml_str(&stdout).expect("output is a valid config");
    assert_eq!(effective.node_id, "from-file");
    assert_eq!(effective.limits.max_packet_size, 4096, "env beats the file");
    assert!(effective.session.queue_qos0);
    let defaults = starling_config::BrokerConfig::default();
    assert_eq!(effective.limits.max_inflight, defaults.limits.max_inflight);
    assert_eq!(effective.listeners, defaults.listeners);
}

#[tokio::test]
async fn cluster_flags_reach_the_configuration() {
    let file = config_file("");
    let password = config_file("s3cr:t\n");
    let mut cmd = broker_command(&file);
    cmd.args([
        "check-config",
        "--redis-url",
        "redis://redis.default.svc:6379/0",
        "--redis-password-file",
    ])
    .arg(password.path())
    .args([
        "--gossip-bind",
        "0.0.0.0:7946",
        "--gossip-advertise",
        "10.1.2.3:7946",
        "--gossip-seeds",
        "node-0.h:7946,node-1.h:7946",
    ]);
    let (status, stdout, stderr) = run_to_end(cmd).await;
    assert!(status.success(), "{stderr}");
    let effective =
        starling_config::BrokerConfig::from_toml_str(&stdout).expect("output is a valid config");
    let cluster = effective.cluster;
    // The password file's password went into the URL, and check-config does not print it.
    assert_eq!(
        cluster.redis_url.as_deref(),
        Some("redis://:REDACTED@redis.default.svc:6379/0")
    );
    assert!(
        !stdout.contains("s3cr"),
        "the password was printed: {stdout}"
    );
    assert_eq!(
        cluster.gossip_bind,
        Some("0.0.0.0:7946".parse().expect("addr"))
    );
    assert_eq!(
        cluster.gossip_advertise,
        Some("10.1.2.3:7946".parse().expect("addr"))
    );
    assert_eq!(cluster.gossip_seeds, ["node-0.h:7946", "node-1.h:7946"]);
}

/// A free loopback port (bound and released; another process could take it, rarely).
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A broker process on free loopback ports.
struct BrokerProcess {
    child: Child,
    tcp: SocketAddr,
    admin: SocketAddr,
    _config: NamedTempFile,
}

impl BrokerProcess {
    async fn start(config: &str, extra_args: &[&str]) -> BrokerProcess {
        let mut process = Self::spawn(config, extra_args);
        process.wait_ready().await;
        process
    }

    /// Starts the process without waiting for it to be ready.
    fn spawn(config: &str, extra_args: &[&str]) -> BrokerProcess {
        let file = config_file(config);
        let (tcp, admin) = (free_addr(), free_addr());
        let mut cmd = broker_command(&file);
        cmd.arg("--tcp")
            .arg(tcp.to_string())
            .arg("--admin-bind")
            .arg(admin.to_string())
            .args(extra_args);
        let child = cmd.spawn().expect("spawn broker");
        BrokerProcess {
            child,
            tcp,
            admin,
            _config: file,
        }
    }

    /// Fails the test if the process has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("broker exited with {status}");
        }
    }

    /// Polls `/readyz` until it answers 200 (bounded), failing early if the process exits.
    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok((200, _)) = try_http_get(self.admin, "/readyz").await {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let mut stderr = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr).await;
                }
                panic!("broker exited with {status} before it was ready:\n{stderr}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "broker not ready in time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn sigterm(&self) {
        let pid = self.child.id().expect("running") as libc::pid_t;
        // SAFETY: sending a signal to our own child process.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM {pid}");
    }

    /// Waits for the process to exit within `limit`; returns (status, stdout, stderr).
    async fn exit(self, limit: Duration) -> (ExitStatus, String, String) {
        let output = tokio::time::timeout(limit, self.child.wait_with_output())
            .await
            .expect("broker exits in time")
            .expect("wait for broker");
        (
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

const DRAIN_SECS: u64 = 5;

fn drain_config(extra: &str) -> String {
    format!("[shutdown]\ndrain_timeout_secs = {DRAIN_SECS}\n{extra}\n[sys]\ninterval_secs = 0\n")
}

/// A raw 5.0 client that has connected (CONNACK success) and subscribed (SUBACK), so the
/// broker is known to serve it. rumqttc's v5 event loop turns a server DISCONNECT into an error
/// and drops its properties, so the DISCONNECT is read from the wire instead.
async fn raw_v5_session(addr: SocketAddr, id: &str) -> RawClient {
    use rumqttc::v5::mqttbytes::v5::{
        Connect, ConnectReturnCode, Filter, Packet, Subscribe, SubscribeReasonCode,
    };
    let mut raw = RawClient::connect(addr).await;
    let connect = Connect {
        keep_alive: 30,
        client_id: id.to_string(),
        clean_start: true,
        properties: None,
    };
    raw.send_v5(Packet::Connect(connect, None, None)).await;
    match raw.recv_v5().await {
        Some(Packet::ConnAck(c)) => assert_eq!(c.code, ConnectReturnCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let filter = Filter::new("drain/#", v5::QoS::AtLeastOnce);
    raw.send_v5(Packet::Subscribe(Subscribe::new(filter, None)))
        .await;
    match raw.recv_v5().await {
        Some(Packet::SubAck(s)) => assert_eq!(
            s.return_codes,
            vec![SubscribeReasonCode::Success(v5::QoS::AtLeastOnce)]
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    raw
}

/// The DISCONNECT the broker sends, after which it closes the connection.
async fn server_disconnect(raw: &mut RawClient) -> rumqttc::v5::mqttbytes::v5::Disconnect {
    let disconnect = match raw.recv_v5().await {
        Some(rumqttc::v5::mqttbytes::v5::Packet::Disconnect(d)) => d,
        other => panic!("expected DISCONNECT, got {other:?}"),
    };
    // Nothing may follow it: the packet's length covers every byte sent, then the socket closes.
    let mut rest = raw.buf.to_vec();
    tokio::time::timeout(WAIT, raw.stream.read_to_end(&mut rest))
        .await
        .expect("connection closes in time")
        .expect("clean close");
    assert!(rest.is_empty(), "bytes after the DISCONNECT: {rest:02x?}");
    disconnect
}

#[tokio::test]
async fn sigterm_disconnects_v5_clients_with_0x8b_and_exits_0() {
    use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;
    let process = BrokerProcess::start(&drain_config(""), &[]).await;
    let mut client = raw_v5_session(process.tcp, "drained").await;

    process.sigterm();
    let disconnect = server_disconnect(&mut client).await;
    assert_eq!(
        disconnect.reason_code,
        DisconnectReasonCode::ServerShuttingDown
    );
    let (status, _, stderr) = process.exit(Duration::from_secs(DRAIN_SECS + 2)).await;
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
}

#[tokio::test]
async fn sigterm_with_server_reference_disconnects_with_0x9c_and_the_reference() {
    use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;
    let config = drain_config("server_reference = \"other:1883\"");
    let process = BrokerProcess::start(&config, &[]).await;
    let mut client = raw_v5_session(process.tcp, "moved").await;

    process.sigterm();
    let disconnect = server_disconnect(&mut client).await;
    assert_eq!(
        disconnect.reason_code,
        DisconnectReasonCode::UseAnotherServer
    );
    let reference = disconnect.properties.and_then(|p| p.server_reference);
    assert_eq!(reference.as_deref(), Some("other:1883"));
    let (status, _, stderr) = process.exit(Duration::from_secs(DRAIN_SECS + 2)).await;
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
}

#[tokio::test]
async fn json_log_format_writes_one_json_object_per_line() {
    let config = drain_config("[log]\nformat = \"json\"\nlevel = \"info\"");
    let mut process = BrokerProcess::start(&config, &[]).await;
    let stdout = process.child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("a log line in time")
        .expect("read stdout")
        .expect("a log line");
    let value: serde_json::Value = serde_json::from_str(&first).expect("the line is JSON");
    assert_eq!(value["level"], "INFO", "{first}");
    assert!(value["fields"].is_object(), "{first}");

    process.sigterm();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            rest.push(line);
        }
    })
    .await
    .expect("stdout closes when the broker exits");
    assert!(!rest.is_empty(), "shutdown is logged too");
    for line in &rest {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    let (status, _, stderr) = process.exit(Duration::from_secs(DRAIN_SECS + 2)).await;
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
}

#[tokio::test]
async fn readyz_answers_503_while_connections_drain() {
    let broker = TestBroker::start_with(|c| c.shutdown.drain_timeout_secs = 5).await;
    let admin = broker.addresses.admin.expect("admin listener");
    assert_eq!(http_get(admin, "/readyz").await.0, 200);
    // A connection that never sends CONNECT keeps the drain open (until its connect timeout).
    let _lingering = tokio::net::TcpStream::connect(broker.tcp())
        .await
        .expect("connect");
    let stopping = tokio::spawn(broker.stop());
    let status = tokio::time::timeout(WAIT, async {
        loop {
            let (status, _) = http_get(admin, "/readyz").await;
            if status != 200 {
                return status;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("/readyz turned not-ready during the drain");
    assert_eq!(status, 503);
    assert_eq!(
        http_get(admin, "/healthz").await.0,
        200,
        "still alive while draining"
    );
    drop(_lingering);
    stopping.await.expect("stop");
}

/// The attempt count in a `/readyz` body such as `starting: waiting for redis (attempt 3): ...`.
fn redis_attempts(body: &str) -> Option<u64> {
    let rest = body.split_once("waiting for redis (attempt ")?.1;
    rest.split_once(')')?.0.parse().ok()
}

/// A cluster node started before its Redis (as on a fresh Kubernetes install) waits for it,
/// alive and not ready and saying why, through several attempts, without a log line per
/// attempt; it serves once Redis answers. It used to exit (`store unavailable: Connection
/// refused`).
#[tokio::test]
async fn a_node_started_before_its_redis_waits_for_it_then_serves() {
    let port = common_redis::free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut process = BrokerProcess::spawn(&drain_config(""), &["--redis-url", &url]);
    let deadline = tokio::time::Instant::now() + WAIT;
    let body = loop {
        process.assert_running();
        if let Ok((status, body)) = try_http_get(process.admin, "/readyz").await {
            assert_eq!(status, 503, "ready without redis: {body}");
            if redis_attempts(&body).is_some_and(|n| n >= 3) {
                break body;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no third attempt at redis in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(body.contains("refused"), "{body}");
    assert_eq!(http_get(process.admin, "/healthz").await.0, 200);
    assert_eq!(http_get(process.admin, "/metrics").await.0, 503);

    let _redis = common_redis::RedisServer::start_on(port).await;
    process.wait_ready().await;
    let mut client = raw_v5_session(process.tcp, "after-redis").await;
    process.sigterm();
    server_disconnect(&mut client).await;
    let (status, stdout, stderr) = process.exit(WAIT).await;
    assert!(status.success(), "{status}\n{stderr}");
    let logs = format!("{stdout}{stderr}");
    let waits = logs
        .lines()
        .filter(|l| l.contains("redis not reachable"))
        .count();
    // One line for the reason (connection refused); the attempts after it are quiet.
    assert_eq!(waits, 1, "{logs}");
    assert!(logs.contains("redis answered"), "{logs}");
}

/// A stop request while the node waits for Redis ends it cleanly.
#[tokio::test]
async fn sigterm_while_waiting_for_redis_exits_0() {
    let port = common_redis::free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut process = BrokerProcess::spawn(&drain_config(""), &["--redis-url", &url]);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        process.assert_running();
        if let Ok((503, body)) = try_http_get(process.admin, "/readyz").await {
            if redis_attempts(&body).is_some() {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no attempt at redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process.sigterm();
    let (status, _, stderr) = process.exit(WAIT).await;
    assert!(status.success(), "{status}\n{stderr}");
}

/// Runs the broker with `args` and returns what it logged up to its "listening" line.
async fn logged_until_listening(args: &[&str]) -> String {
    let file = config_file("");
    let mut cmd = broker_command(&file);
    cmd.args(args);
    let mut child = cmd.spawn().expect("start the broker");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut logged = String::new();
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            logged.push_str(&line);
            logged.push('\n');
            if line.contains("listening") {
                return;
            }
        }
        panic!("the broker ended before listening:\n{logged}");
    })
    .await
    .expect("the broker listens in time");
    child.kill().await.expect("stop the broker");
    logged
}

#[tokio::test]
async fn the_binary_says_at_start_when_anonymous_clients_are_accepted_from_other_machines() {
    let open = logged_until_listening(&["--tcp", "0.0.0.0:0", "--admin-bind", "127.0.0.1:0"]).await;
    assert!(
        open.contains("WARN")
            && open.contains("anonymous clients are accepted on the MQTT listener 0.0.0.0:0"),
        "{open}"
    );
    let local =
        logged_until_listening(&["--tcp", "127.0.0.1:0", "--admin-bind", "127.0.0.1:0"]).await;
    assert!(!local.contains("anonymous clients"), "{local}");
}
