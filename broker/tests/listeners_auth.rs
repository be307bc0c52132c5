//! Listeners (TLS, WebSocket, all at once) and authentication/authorisation end to end: real
//! clients over real sockets, a password file made by the real `passwd` subcommand, ACL files.

mod common;

use bytes::BytesMut;
use common::{v4, v5, RawClient, TestBroker, WAIT};
use rumqttc::{TlsConfiguration, Transport};
use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use tempfile::NamedTempFile;
use tokio::io::AsyncReadExt;

// ---------------------------------------------------------------------------------------------
// TLS and WebSocket helpers
// ---------------------------------------------------------------------------------------------

/// A self-signed certificate for 127.0.0.1 in temporary PEM files.
struct TestCert {
    cert_file: NamedTempFile,
    key_file: NamedTempFile,
    der: Vec<u8>,
}

fn test_cert() -> TestCert {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("generate certificate");
    let cert_file = temp_file(&certified.cert.pem());
    let key_file = temp_file(&certified.key_pair.serialize_pem());
    TestCert {
        cert_file,
        key_file,
        der: certified.cert.der().to_vec(),
    }
}

impl TestCert {
    /// `listeners.tls` for this certificate on 127.0.0.1, port 0.
    fn listener(&self) -> starling_config::TlsListenerConfig {
        starling_config::TlsListenerConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            self.cert_file.path().to_path_buf(),
            self.key_file.path().to_path_buf(),
        )
    }

    /// A rumqttc TLS transport that trusts only this certificate (ring provider).
    fn transport(&self) -> Transport {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(self.der.clone()))
            .expect("add root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(config)))
    }
}

fn temp_file(text: &str) -> NamedTempFile {
    let mut f = NamedTempFile::new().expect("temp file");
    f.write_all(text.as_bytes()).expect("write temp file");
    f.flush().expect("flush temp file");
    f
}

fn tls_v4(cert: &TestCert, addr: SocketAddr, id: &str) -> v4::MqttOptions {
    let mut o = v4::options(addr, id);
    o.set_transport(cert.transport());
    o
}

fn tls_v5(cert: &TestCert, addr: SocketAddr, id: &str) -> v5::MqttOptions {
    let mut o = v5::options(addr, id);
    o.set_transport(cert.transport());
    o
}

/// rumqttc WebSocket options: the broker address is the URL, the port argument is unused.
fn ws_v4(addr: SocketAddr, id: &str) -> v4::MqttOptions {
    let mut o = v4::MqttOptions::new(id, format!("ws://{addr}/mqtt"), addr.port());
    o.set_keep_alive(std::time::Duration::from_secs(30));
    o.set_transport(Transport::Ws);
    o
}

fn ws_v5(addr: SocketAddr, id: &str) -> v5::MqttOptions {
    let mut o = v5::MqttOptions::new(id, format!("ws://{addr}/mqtt"), addr.port());
    o.set_keep_alive(std::time::Duration::from_secs(30));
    o.set_transport(Transport::Ws);
    o
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tls_clients_publish_and_subscribe() {
    let cert = test_cert();
    let broker = TestBroker::start_with(|c| c.listeners.tls = Some(cert.listener())).await;
    let tls = broker.addresses.tls.expect("tls listener");

    let mut sub = v4::connect(tls_v4(&cert, tls, "tls-sub"));
    sub.connack().await;
    sub.client
        .subscribe("tls/#", v4::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    sub.suback().await;

    let mut publisher = v5::connect(tls_v5(&cert, tls, "tls-pub"));
    publisher.connack().await;
    publisher
        .client
        .publish("tls/a", v5::QoS::AtLeastOnce, false, "over tls")
        .await
        .expect("publish");

    let p = sub.publish().await;
    assert_eq!(p.topic, "tls/a");
    assert_eq!(&p.payload[..], b"over tls");
    assert_eq!(p.qos, v4::QoS::AtLeastOnce);
    broker.stop().await;
}

#[tokio::test]
async fn tls_listener_refuses_a_client_that_does_not_trust_its_certificate() {
    let cert = test_cert();
    let other = test_cert();
    let broker = TestBroker::start_with(|c| c.listeners.tls = Some(cert.listener())).await;
    let tls = broker.addresses.tls.expect("tls listener");

    // The client trusts a different self-signed certificate: the handshake must fail.
    let mut client = v4::connect(tls_v4(&other, tls, "tls-untrusting"));
    let error = client.closed().await;
    assert!(error.to_lowercase().contains("tls"), "{error}");
    broker.stop().await;
}

#[tokio::test]
async fn tcp_tls_and_websocket_clients_on_one_broker_exchange_messages() {
    let cert = test_cert();
    let broker = TestBroker::start_with(|c| {
        c.listeners.tls = Some(cert.listener());
        c.listeners.ws = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let tls = broker.addresses.tls.expect("tls listener");
    let ws = broker.addresses.ws.expect("ws listener");

    let mut tcp_client = v4::connect(v4::options(broker.tcp(), "mix-tcp"));
    let mut tls_client = v5::connect(tls_v5(&cert, tls, "mix-tls"));
    let mut ws_client = v4::connect(ws_v4(ws, "mix-ws"));
    tcp_client.connack().await;
    tls_client.connack().await;
    ws_client.connack().await;
    for c in [&tcp_client.client, &ws_client.client] {
        c.subscribe("mix/#", v4::QoS::AtLeastOnce)
            .await
            .expect("subscribe");
    }
    tls_client
        .client
        .subscribe("mix/#", v5::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    tcp_client.suback().await;
    ws_client.suback().await;
    tls_client.suback().await;

    tcp_client
        .client
        .publish("mix/tcp", v4::QoS::AtLeastOnce, false, "from tcp")
        .await
        .expect("publish");
    tls_client
        .client
        .publish("mix/tls", v5::QoS::AtLeastOnce, false, "from tls")
        .await
        .expect("publish");
    ws_client
        .client
        .publish("mix/ws", v4::QoS::AtLeastOnce, false, "from ws")
        .await
        .expect("publish");

    let expected: BTreeSet<(String, String)> = [
        ("mix/tcp", "from tcp"),
        ("mix/tls", "from tls"),
        ("mix/ws", "from ws"),
    ]
    .into_iter()
    .map(|(t, p)| (t.to_string(), p.to_string()))
    .collect();
    for client in [&mut tcp_client, &mut ws_client] {
        let mut got = BTreeSet::new();
        for _ in 0..3 {
            let p = client.publish().await;
            got.insert((p.topic.clone(), String::from_utf8_lossy(&p.payload).into()));
        }
        assert_eq!(got, expected);
    }
    let mut got = BTreeSet::new();
    for _ in 0..3 {
        let p = tls_client.publish().await;
        got.insert((
            String::from_utf8_lossy(&p.topic).into(),
            String::from_utf8_lossy(&p.payload).into(),
        ));
    }
    assert_eq!(got, expected);
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn websocket_v4_and_v5_clients_publish_and_subscribe() {
    let broker =
        TestBroker::start_with(|c| c.listeners.ws = Some("127.0.0.1:0".parse().expect("addr")))
            .await;
    let ws = broker.addresses.ws.expect("ws listener");

    let mut sub = v5::connect(ws_v5(ws, "ws-sub"));
    sub.connack().await;
    sub.client
        .subscribe("ws/#", v5::QoS::ExactlyOnce)
        .await
        .expect("subscribe");
    sub.suback().await;

    let mut publisher = v4::connect(ws_v4(ws, "ws-pub"));
    publisher.connack().await;
    // Larger than a typical single read, so the frame boundary handling is exercised too.
    let payload = vec![b'w'; 5000];
    publisher
        .client
        .publish("ws/big", v4::QoS::ExactlyOnce, false, payload.clone())
        .await
        .expect("publish");

    let p = sub.publish().await;
    assert_eq!(&p.topic[..], b"ws/big");
    assert_eq!(&p.payload[..], &payload[..]);
    assert_eq!(p.qos, v5::QoS::ExactlyOnce);
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Authentication with a password file from `starling-broker passwd`
// ---------------------------------------------------------------------------------------------

const ALICE_PASSWORD: &str = "correct horse";

/// The `alice:hash` line printed by the real binary (computed once per test run).
fn alice_line() -> &'static str {
    static LINE: OnceLock<String> = OnceLock::new();
    LINE.get_or_init(|| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_starling-broker"))
            .args(["passwd", "alice"])
            .env_clear()
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn starling-broker passwd");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{ALICE_PASSWORD}\n").as_bytes())
            .expect("write password");
        let output = child.wait_with_output().expect("passwd output");
        assert!(
            output.status.success(),
            "passwd failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).expect("utf-8 output");
        let line = text.trim_end().to_string();
        assert!(line.starts_with("alice:$argon2id$"), "{line}");
        assert!(
            !line.contains(ALICE_PASSWORD),
            "the password leaked: {line}"
        );
        line
    })
}

fn password_file() -> NamedTempFile {
    temp_file(&format!("{}\n", alice_line()))
}

async fn broker_with_users(file: &NamedTempFile, allow_anonymous: bool) -> TestBroker {
    let path: PathBuf = file.path().to_path_buf();
    TestBroker::start_with(move |c| {
        c.auth.password_file = Some(path);
        c.auth.allow_anonymous = allow_anonymous;
    })
    .await
}

/// Reads one whole CONNACK from a raw connection and returns (first byte, reason/return code).
async fn raw_connack(raw: &mut RawClient) -> (u8, u8) {
    let mut buf = BytesMut::new();
    tokio::time::timeout(WAIT, async {
        loop {
            if buf.len() >= 2 && buf.len() >= 2 + usize::from(buf[1]) {
                assert!(buf[1] < 128, "CONNACK too long for this helper");
                return (buf[0], buf[3]);
            }
            let n = raw.stream.read_buf(&mut buf).await.expect("read");
            assert!(n > 0, "connection closed before a CONNACK arrived");
        }
    })
    .await
    .expect("no CONNACK in time")
}

/// Sends a 3.1.1 CONNECT (optionally with credentials) and returns the CONNACK return code.
async fn connack_code_v4(addr: SocketAddr, id: &str, login: Option<(&str, &str)>) -> u8 {
    use rumqttc::mqttbytes::v4::{Connect, Login, Packet};
    let mut connect = Connect::new(id);
    connect.login = login.map(|(u, p)| Login::new(u, p));
    let mut raw = RawClient::connect(addr).await;
    raw.send_v4(Packet::Connect(connect)).await;
    let (header, code) = raw_connack(&mut raw).await;
    assert_eq!(header, 0x20, "not a CONNACK");
    code
}

/// Sends a 5.0 CONNECT (optionally with credentials and a will) and returns the reason code.
async fn connack_code_v5(
    addr: SocketAddr,
    id: &str,
    login: Option<(&str, &str)>,
    will_topic: Option<&str>,
) -> u8 {
    use rumqttc::v5::mqttbytes::v5::{Connect, LastWill, Login, Packet};
    let connect = Connect {
        keep_alive: 30,
        client_id: id.to_string(),
        clean_start: true,
        properties: None,
    };
    let will = will_topic.map(|t| LastWill::new(t, "gone", v5::QoS::AtMostOnce, false, None));
    let login = login.map(|(u, p)| Login::new(u, p));
    let mut raw = RawClient::connect(addr).await;
    raw.send_v5(Packet::Connect(connect, will, login)).await;
    let (header, code) = raw_connack(&mut raw).await;
    assert_eq!(header, 0x20, "not a CONNACK");
    code
}

#[tokio::test]
async fn password_file_user_with_right_password_connects_and_publishes() {
    let file = password_file();
    let broker = broker_with_users(&file, false).await;

    let mut o = v4::options(broker.tcp(), "alice-v4");
    o.set_credentials("alice", ALICE_PASSWORD);
    let mut alice4 = v4::connect(o);
    assert_eq!(
        alice4.connack().await.code,
        rumqttc::ConnectReturnCode::Success
    );
    alice4
        .client
        .subscribe("auth/#", v4::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    alice4.suback().await;

    let mut o = v5::options(broker.tcp(), "alice-v5");
    o.set_credentials("alice", ALICE_PASSWORD);
    let mut alice5 = v5::connect(o);
    assert_eq!(
        alice5.connack().await.code,
        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
    );
    alice5
        .client
        .publish("auth/x", v5::QoS::AtLeastOnce, false, "signed in")
        .await
        .expect("publish");
    let p = alice4.publish().await;
    assert_eq!(p.topic, "auth/x");
    assert_eq!(&p.payload[..], b"signed in");
    broker.stop().await;
}

#[tokio::test]
async fn wrong_password_is_refused_with_v4_return_code_4() {
    let file = password_file();
    let broker = broker_with_users(&file, false).await;
    let code = connack_code_v4(broker.tcp(), "w4", Some(("alice", "wrong"))).await;
    assert_eq!(code, 4, "3.1.1: bad user name or password");
    broker.stop().await;
}

#[tokio::test]
async fn wrong_password_is_refused_with_v5_reason_0x86() {
    let file = password_file();
    let broker = broker_with_users(&file, false).await;
    let code = connack_code_v5(broker.tcp(), "w5", Some(("alice", "wrong")), None).await;
    assert_eq!(code, 0x86, "5.0: bad user name or password");
    broker.stop().await;
}

#[tokio::test]
async fn unknown_user_is_refused_like_a_wrong_password() {
    let file = password_file();
    let broker = broker_with_users(&file, false).await;
    let code = connack_code_v5(broker.tcp(), "u5", Some(("mallory", ALICE_PASSWORD)), None).await;
    assert_eq!(code, 0x86);
    broker.stop().await;
}

#[tokio::test]
async fn missing_username_is_refused_with_v5_reason_0x87_when_anonymous_is_off() {
    let file = password_file();
    let broker = broker_with_users(&file, false).await;
    let code = connack_code_v5(broker.tcp(), "anon5", None, None).await;
    assert_eq!(code, 0x87, "5.0: not authorized");
    broker.stop().await;
}

#[tokio::test]
async fn missing_username_is_refused_with_v4_return_code_5_when_anonymous_is_off() {
    let file = password_file();
    let broker = broker_with_users(&file, false).await;
    let code = connack_code_v4(broker.tcp(), "anon4", None).await;
    assert_eq!(code, 5, "3.1.1: not authorized");
    broker.stop().await;
}

#[tokio::test]
async fn anonymous_client_connects_when_allowed_while_users_still_need_passwords() {
    let file = password_file();
    let broker = broker_with_users(&file, true).await;
    assert_eq!(
        connack_code_v5(broker.tcp(), "anon", None, None).await,
        0x00
    );
    assert_eq!(connack_code_v4(broker.tcp(), "anon4", None).await, 0);
    assert_eq!(
        connack_code_v5(broker.tcp(), "w", Some(("alice", "wrong")), None).await,
        0x86
    );
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// ACL
// ---------------------------------------------------------------------------------------------

/// Everyone may read everything and write `open/#`; each client owns `devices/<client id>/#`.
const ACL: &str = "\
# test ACL
topic read #
topic readwrite open/#
pattern readwrite devices/%c/#
";

async fn broker_with_acl(acl: &NamedTempFile) -> TestBroker {
    let path: PathBuf = acl.path().to_path_buf();
    TestBroker::start_with(move |c| c.auth.acl_file = Some(path)).await
}

fn v5_puback_reason(p: &v5::Packet) -> Option<rumqttc::v5::mqttbytes::v5::PubAckReason> {
    match p {
        v5::Packet::PubAck(a) => Some(a.reason),
        _ => None,
    }
}

#[tokio::test]
async fn acl_denied_v5_publish_gets_puback_0x87_and_is_not_delivered() {
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    let acl = temp_file(ACL);
    let broker = broker_with_acl(&acl).await;

    let mut sub = v4::connect(v4::options(broker.tcp(), "acl-sub"));
    sub.connack().await;
    sub.client
        .subscribe("#", v4::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    sub.suback().await;

    let mut publisher = v5::connect(v5::options(broker.tcp(), "acl-pub5"));
    publisher.connack().await;
    publisher
        .client
        .publish("secret/x", v5::QoS::AtLeastOnce, false, "denied")
        .await
        .expect("publish");
    let reason = publisher.expect(v5_puback_reason).await;
    assert_eq!(reason, PubAckReason::NotAuthorized);

    // An allowed publish afterwards is the first thing the subscriber sees.
    publisher
        .client
        .publish("open/x", v5::QoS::AtLeastOnce, false, "allowed")
        .await
        .expect("publish");
    assert_eq!(
        publisher.expect(v5_puback_reason).await,
        PubAckReason::Success
    );
    let p = sub.publish().await;
    assert_eq!(p.topic, "open/x");
    assert_eq!(&p.payload[..], b"allowed");
    sub.no_publish().await;
    broker.stop().await;
}

#[tokio::test]
async fn acl_denied_v4_qos1_publish_is_acknowledged_but_not_delivered() {
    let acl = temp_file(ACL);
    let broker = broker_with_acl(&acl).await;

    let mut sub = v5::connect(v5::options(broker.tcp(), "acl-sub5"));
    sub.connack().await;
    sub.client
        .subscribe("#", v5::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    sub.suback().await;

    let mut publisher = v4::connect(v4::options(broker.tcp(), "acl-pub4"));
    publisher.connack().await;
    publisher
        .client
        .publish("secret/x", v4::QoS::AtLeastOnce, false, "denied")
        .await
        .expect("publish");
    let acked = publisher
        .expect(|p| match p {
            v4::Packet::PubAck(a) => Some(a.pkid),
            _ => None,
        })
        .await;
    assert_ne!(acked, 0);

    publisher
        .client
        .publish("open/y", v4::QoS::AtLeastOnce, false, "allowed")
        .await
        .expect("publish");
    let p = sub.publish().await;
    assert_eq!(&p.topic[..], b"open/y");
    assert_eq!(&p.payload[..], b"allowed");
    sub.no_publish().await;
    broker.stop().await;
}

#[tokio::test]
async fn acl_denied_subscribe_gets_v5_suback_0x87_per_filter() {
    use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode;
    // Only `open/#` is readable here.
    let acl = temp_file("topic readwrite open/#\n");
    let broker = broker_with_acl(&acl).await;

    let mut client = v5::connect(v5::options(broker.tcp(), "acl-sub-v5"));
    client.connack().await;
    client
        .client
        .subscribe_many([
            v5::Filter::new("open/#", v5::QoS::AtLeastOnce),
            v5::Filter::new("secret/#", v5::QoS::AtLeastOnce),
        ])
        .await
        .expect("subscribe");
    let suback = client.suback().await;
    assert_eq!(
        suback.return_codes,
        vec![
            SubscribeReasonCode::Success(v5::QoS::AtLeastOnce),
            SubscribeReasonCode::NotAuthorized,
        ]
    );
    broker.stop().await;
}

#[tokio::test]
async fn acl_denied_subscribe_gets_v4_suback_0x80() {
    use rumqttc::SubscribeReasonCode;
    let acl = temp_file("topic readwrite open/#\n");
    let broker = broker_with_acl(&acl).await;

    let mut client = v4::connect(v4::options(broker.tcp(), "acl-sub-v4"));
    client.connack().await;
    client
        .client
        .subscribe_many([
            rumqttc::SubscribeFilter::new("secret/#".into(), v4::QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("open/+".into(), v4::QoS::AtMostOnce),
        ])
        .await
        .expect("subscribe");
    let suback = client.suback().await;
    assert_eq!(
        suback.return_codes,
        vec![
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Success(v4::QoS::AtMostOnce),
        ]
    );
    broker.stop().await;
}

#[tokio::test]
async fn acl_client_id_pattern_grants_own_device_topics_only() {
    use rumqttc::v5::mqttbytes::v5::{PubAckReason, SubscribeReasonCode};
    let acl = temp_file("pattern readwrite devices/%c/#\n");
    let broker = broker_with_acl(&acl).await;

    let mut d2 = v5::connect(v5::options(broker.tcp(), "d2"));
    d2.connack().await;
    d2.client
        .subscribe("devices/d2/#", v5::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    assert_eq!(
        d2.suback().await.return_codes,
        vec![SubscribeReasonCode::Success(v5::QoS::AtLeastOnce)]
    );

    let mut d1 = v5::connect(v5::options(broker.tcp(), "d1"));
    d1.connack().await;
    d1.client
        .subscribe("devices/d1/#", v5::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    assert_eq!(
        d1.suback().await.return_codes,
        vec![SubscribeReasonCode::Success(v5::QoS::AtLeastOnce)]
    );
    d1.client
        .subscribe("devices/d2/#", v5::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    assert_eq!(
        d1.suback().await.return_codes,
        vec![SubscribeReasonCode::NotAuthorized]
    );

    d1.client
        .publish("devices/d2/x", v5::QoS::AtLeastOnce, false, "not mine")
        .await
        .expect("publish");
    assert_eq!(
        d1.expect(v5_puback_reason).await,
        PubAckReason::NotAuthorized
    );
    d1.client
        .publish("devices/d1/x", v5::QoS::AtLeastOnce, false, "mine")
        .await
        .expect("publish");
    assert_eq!(d1.expect(v5_puback_reason).await, PubAckReason::Success);
    let p = d1.publish().await;
    assert_eq!(&p.topic[..], b"devices/d1/x");
    assert_eq!(&p.payload[..], b"mine");
    d2.no_publish().await;
    broker.stop().await;
}

#[tokio::test]
async fn will_to_an_acl_denied_topic_is_refused_with_connack_0x87() {
    let acl = temp_file(ACL);
    let broker = broker_with_acl(&acl).await;
    let code = connack_code_v5(broker.tcp(), "willer", None, Some("secret/will")).await;
    assert_eq!(code, 0x87);
    // The same client with a will it may publish is accepted.
    let code = connack_code_v5(broker.tcp(), "willer", None, Some("open/will")).await;
    assert_eq!(code, 0x00);
    broker.stop().await;
}
