//! Files changed under a running broker take effect without a restart and without dropping the
//! clients already connected: the password file, the ACL file and the TLS certificate. Real
//! clients on real sockets, real files rewritten on disk; each test waits for the broker's own
//! count of reloads (`starling_reloads_total`), which it checks every 5 s.

mod common;

use common::reload::{self, reload_count, replace_file as replace};
use common::{v5, TestBroker, WAIT};
use rumqttc::v5::mqttbytes::v5::PubAckReason;
use rumqttc::{TlsConfiguration, Transport};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long a reload may take to be noticed: one check interval and some.
const RELOAD_WAIT: Duration = Duration::from_secs(15);

/// Waits until the broker counted `n` reloads of `what` with `outcome`.
async fn reloaded(broker: &TestBroker, what: &str, outcome: &str, n: u64) {
    reload::reloaded(broker, what, outcome, n, RELOAD_WAIT).await;
}

fn users(entries: &[(&str, &str)]) -> String {
    entries
        .iter()
        .map(|(user, password)| {
            let hash = starling_broker::auth::hash_password(password).expect("hash");
            format!("{user}:{hash}\n")
        })
        .collect()
}

/// Connects with credentials; returns the CONNACK's outcome: `Ok(())`, or the client's error
/// (which names the refusal's reason code).
async fn log_in(addr: SocketAddr, id: &str, user: &str, password: &str) -> Result<(), String> {
    let mut options = v5::options(addr, id);
    options.set_credentials(user, password);
    v5::connect(options).connack_outcome().await
}

fn puback_reason(p: &v5::Packet) -> Option<PubAckReason> {
    match p {
        v5::Packet::PubAck(ack) => Some(ack.reason),
        _ => None,
    }
}

#[tokio::test]
async fn a_changed_password_file_applies_to_new_logins_and_keeps_connected_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("passwords");
    std::fs::write(&file, users(&[("alice", "first")])).expect("write");
    let path = file.clone();
    let broker = TestBroker::start_with(move |c| c.auth.password_file = Some(path)).await;
    let addr = broker.tcp();

    let mut options = v5::options(addr, "alice-before");
    options.set_credentials("alice", "first");
    let mut connected = v5::connect(options);
    connected.connack().await;

    replace(&file, &users(&[("alice", "second"), ("bob", "third")]));
    reloaded(&broker, "auth", "ok", 1).await;
    let refused = log_in(addr, "alice-old", "alice", "first")
        .await
        .expect_err("the old password no longer works");
    assert!(refused.contains("BadUserNamePassword"), "{refused}");
    log_in(addr, "alice-new", "alice", "second")
        .await
        .expect("the new password works");
    log_in(addr, "bob", "bob", "third")
        .await
        .expect("the new user works");

    // A file that does not parse: logged and counted, the rules loaded before stay.
    replace(&file, "this line has no colon\n");
    reloaded(&broker, "auth", "failed", 1).await;
    log_in(addr, "alice-still", "alice", "second")
        .await
        .expect("the previous rules are still in force");

    // The client admitted under the first file was never dropped.
    connected
        .client
        .publish("still/here", v5::QoS::AtLeastOnce, false, "yes")
        .await
        .expect("publish");
    assert_eq!(
        connected.expect(puback_reason).await,
        PubAckReason::NoMatchingSubscribers
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_changed_acl_file_applies_to_connected_clients_at_their_next_publish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("acl");
    std::fs::write(&file, "topic readwrite open/#\n").expect("write");
    let path = file.clone();
    let broker = TestBroker::start_with(move |c| c.auth.acl_file = Some(path)).await;
    let mut client = v5::connect(v5::options(broker.tcp(), "acl-reloaded"));
    client.connack().await;
    let publisher = client.client.clone();
    let publish = |topic: &'static str| {
        let client = publisher.clone();
        async move {
            client
                .publish(topic, v5::QoS::AtLeastOnce, false, "x")
                .await
                .expect("publish");
        }
    };
    publish("closed/a").await;
    assert_eq!(
        client.expect(puback_reason).await,
        PubAckReason::NotAuthorized
    );

    replace(&file, "topic readwrite open/#\ntopic write closed/#\n");
    reloaded(&broker, "auth", "ok", 1).await;
    publish("closed/a").await;
    assert_eq!(
        client.expect(puback_reason).await,
        PubAckReason::NoMatchingSubscribers,
        "the new rule allows it"
    );
    broker.stop().await;
}

/// A self-signed certificate for 127.0.0.1: (certificate PEM, key PEM, certificate DER).
fn certificate() -> (String, String, Vec<u8>) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("generate certificate");
    (
        certified.cert.pem(),
        certified.key_pair.serialize_pem(),
        certified.cert.der().to_vec(),
    )
}

/// MQTT 5 over TLS, trusting only `trusted`.
fn tls_options(addr: SocketAddr, id: &str, trusted: &[u8]) -> v5::MqttOptions {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(trusted.to_vec()))
        .expect("add root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut options = v5::options(addr, id);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(config),
    )));
    options
}

/// Connects over TLS; `Ok(())` on CONNACK, else the client's error.
async fn tls_connect(addr: SocketAddr, id: &str, trusted: &[u8]) -> Result<(), String> {
    v5::connect(tls_options(addr, id, trusted))
        .connack_outcome()
        .await
}

#[tokio::test]
async fn a_renewed_certificate_is_served_to_new_tls_clients_and_old_connections_stay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (first_pem, first_key, first_der) = certificate();
    std::fs::write(&cert_file, &first_pem).expect("write");
    std::fs::write(&key_file, &first_key).expect("write");
    let listener = starling_config::TlsListenerConfig::new(
        "127.0.0.1:0".parse().expect("address"),
        cert_file.clone(),
        key_file.clone(),
    );
    let broker = TestBroker::start_with(move |c| c.listeners.tls = Some(listener)).await;
    let tls = broker.addresses.tls.expect("tls listener");

    let mut before = v5::connect(tls_options(tls, "tls-before", &first_der));
    before.connack().await;

    let (second_pem, second_key, second_der) = certificate();
    // The key first, then the certificate: between the two renames the pair does not match,
    // and the broker must go on serving the first certificate rather than fail.
    replace(&key_file, &second_key);
    replace(&cert_file, &second_pem);
    reloaded(&broker, "tls", "ok", 1).await;
    tls_connect(tls, "tls-new", &second_der)
        .await
        .expect("a client trusting only the renewed certificate connects");
    let refused = tls_connect(tls, "tls-old", &first_der)
        .await
        .expect_err("the first certificate is no longer served");
    assert!(refused.to_lowercase().contains("tls"), "{refused}");

    before
        .client
        .publish("tls/still", v5::QoS::AtLeastOnce, false, "yes")
        .await
        .expect("publish");
    assert_eq!(
        before.expect(puback_reason).await,
        PubAckReason::NoMatchingSubscribers,
        "the connection made with the first certificate goes on"
    );
    broker.stop().await;
}

/// A free loopback address (bound and released).
fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

/// A plain HTTP GET to a broker process's admin port; returns the body (`None` while it does
/// not answer).
async fn admin_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// `starling_reloads_total{what,outcome}` of a broker process.
async fn process_reloads(admin: SocketAddr, what: &str, outcome: &str) -> u64 {
    let metrics = admin_get(admin, "/metrics").await.unwrap_or_default();
    reload_count(&metrics, what, outcome)
}

#[tokio::test]
async fn with_periodic_checks_off_sighup_alone_reloads_a_running_broker_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwords = dir.path().join("passwords");
    std::fs::write(&passwords, users(&[("alice", "first")])).expect("write");
    let (mqtt, admin) = (free_addr(), free_addr());
    let config = dir.path().join("starling.toml");
    std::fs::write(
        &config,
        format!(
            "[listeners]\ntcp = \"{mqtt}\"\n[admin]\nbind = \"{admin}\"\n[auth]\nallow_anonymous = false\npassword_file = \"{}\"\n[sys]\ninterval_secs = 0\n[reload]\ninterval_secs = 0\n",
            passwords.display()
        ),
    )
    .expect("write config");
    let mut broker = tokio::process::Command::new(env!("CARGO_BIN_EXE_starling-broker"))
        .arg("--config")
        .arg(&config)
        .env_remove("STARLING_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the broker");
    let deadline = tokio::time::Instant::now() + WAIT;
    while admin_get(admin, "/readyz").await.as_deref() != Some("ready\n") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broker never got ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    log_in(mqtt, "alice-1", "alice", "first")
        .await
        .expect("the first password works");

    replace(&passwords, &users(&[("alice", "second")]));
    assert_eq!(
        process_reloads(admin, "auth", "ok").await,
        0,
        "nothing reloads by itself with reload.interval_secs = 0"
    );
    let pid = broker.id().expect("pid") as libc::pid_t;
    // SAFETY: sends a signal to the child this test started and still holds.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0, "kill -HUP");
    let deadline = tokio::time::Instant::now() + RELOAD_WAIT;
    while process_reloads(admin, "auth", "ok").await < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload the password file"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    log_in(mqtt, "alice-2", "alice", "second")
        .await
        .expect("the new password works");
    let refused = log_in(mqtt, "alice-3", "alice", "first")
        .await
        .expect_err("the old one does not");
    assert!(refused.contains("BadUserNamePassword"), "{refused}");
    assert!(
        broker.try_wait().expect("status").is_none(),
        "SIGHUP did not end the process"
    );
    broker.kill().await.expect("stop the broker");
}
