//! Redis over TLS with the project's own CA and a client certificate (`cluster.redis_tls`): a
//! real `redis-server` with `tls-auth-clients yes`, certificates made by `rcgen`. A broker with
//! the CA bundle and its client certificate connects and serves; without the client
//! certificate, or without the CA (the system's roots alone), the connection is refused.
//! Sentinel over TLS too: a TLS primary, its TLS replica and a `redis-sentinel` that speaks
//! only TLS; a broker finds the primary through it and follows a failover.

mod common;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use redis::{ClientTlsConfig, TlsCertificates};
use starling_broker::message::{Message, MessageProperties};
use starling_broker::protocol::QoS;
use starling_broker::server::Server;
use starling_broker::store::redis::target::RedisTarget;
use starling_broker::store::{RedisStore, RedisStoreConfig};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The files of a CA, a server certificate for 127.0.0.1 and a client certificate.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: a certificate whose issuer is its own subject counts as self-signed.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "starling test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let write = |name: &str, text: String| {
            std::fs::write(dir.path().join(name), text).expect("write a PEM file");
        };
        write("ca.crt", ca.pem());
        for (name, sans) in [
            ("server", vec!["127.0.0.1".to_string()]),
            ("client", vec!["node-a".to_string()]),
        ] {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(sans).expect("params");
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.signed_by(&key, &ca, &ca_key).expect("certificate");
            write(&format!("{name}.crt"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect("read a PEM file")
    }
}

/// `redis-server` listening with TLS only, asking clients for a certificate from the CA.
struct TlsRedis {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start(pki: &Pki) -> TlsRedis {
        Self::start_replica_of(pki, None)
    }

    /// A TLS `redis-server`, the replica (over TLS) of the one on `primary` when given.
    fn start_replica_of(pki: &Pki, primary: Option<u16>) -> TlsRedis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::tempdir().expect("temporary directory");
        let arg = |p: &Path| p.to_string_lossy().into_owned();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-port", &port.to_string()])
            .args(["--tls-cert-file", &arg(&pki.path("server.crt"))])
            .args(["--tls-key-file", &arg(&pki.path("server.key"))])
            .args(["--tls-ca-cert-file", &arg(&pki.path("ca.crt"))])
            .args(["--tls-auth-clients", "yes"])
            // Replication over TLS, with the server's certificate as the client's.
            .args(["--tls-replication", "yes"])
            .args(
                primary
                    .map(|p| {
                        vec![
                            "--replicaof".to_string(),
                            "127.0.0.1".to_string(),
                            p.to_string(),
                        ]
                    })
                    .unwrap_or_default(),
            )
            .args(["--dir", &arg(dir.path())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsRedis {
            port,
            child,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn store_with(redis: &TlsRedis, certificates: TlsCertificates) -> Result<RedisStore, String> {
    let target = RedisTarget::address_with_tls(&redis.url(), Some(certificates))
        .map_err(|e| e.to_string())?;
    let mut config = RedisStoreConfig::new(target, "node-a", 10);
    config.operation_timeout = Duration::from_secs(3);
    RedisStore::connect(config).await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_broker_with_the_ca_and_its_client_certificate_uses_a_redis_that_asks_for_one() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki);
    let mut config = common::test_config();
    config.node_id = "node-a".to_string();
    config.cluster.redis_url = Some(redis.url());
    config.cluster.redis_tls.ca_file = Some(pki.path("ca.crt"));
    config.cluster.redis_tls.cert_file = Some(pki.path("client.crt"));
    config.cluster.redis_tls.key_file = Some(pki.path("client.key"));
    config.validate().expect("a valid configuration");
    let server = tokio::time::timeout(Duration::from_secs(20), Server::bind(config))
        .await
        .expect("the broker reached Redis over TLS")
        .expect("the broker starts");
    assert!(
        server.broker().cluster().is_some(),
        "clustered on that Redis"
    );
}

#[tokio::test]
async fn without_the_client_certificate_or_the_ca_redis_is_not_reached() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki);
    let full = TlsCertificates {
        client_tls: Some(ClientTlsConfig {
            client_cert: pki.read("client.crt"),
            client_key: pki.read("client.key"),
        }),
        root_cert: Some(pki.read("ca.crt")),
    };
    store_with(&redis, full.clone())
        .await
        .expect("with both, the store connects");
    let no_client = TlsCertificates {
        client_tls: None,
        ..full.clone()
    };
    assert!(
        store_with(&redis, no_client).await.is_err(),
        "Redis asks for a client certificate"
    );
    let no_ca = TlsCertificates {
        root_cert: None,
        ..full
    };
    assert!(
        store_with(&redis, no_ca).await.is_err(),
        "the system's roots do not know the CA"
    );
}

/// `redis-cli` over TLS with the test CA and client certificate; its output.
fn tls_cli(pki: &Pki, port: u16, args: &[&str]) -> String {
    let path = |name: &str| pki.path(name).to_string_lossy().into_owned();
    let output = Command::new("redis-cli")
        .args(["--tls", "--cacert", &path("ca.crt")])
        .args(["--cert", &path("client.crt"), "--key", &path("client.key")])
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--raw"])
        .args(args)
        .output()
        .expect("redis-cli runs (apt-get install redis-tools)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Polls `probe` every 50 ms until it holds or `limit` passes (the broker's tasks run
/// meanwhile: the pause is the runtime's).
async fn wait_until(limit: Duration, what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !probe() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `redis-sentinel` that listens with TLS only and reaches the data nodes over TLS.
struct TlsSentinel {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl TlsSentinel {
    fn start(pki: &Pki, primary: u16) -> TlsSentinel {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = |name: &str| pki.path(name).to_string_lossy().into_owned();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port 0\ntls-port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 tls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {ca}\n\
                 tls-auth-clients yes\ntls-replication yes\n\
                 sentinel monitor m 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds m 1000\n\
                 sentinel failover-timeout m 6000\n",
                dir = dir.path().display(),
                cert = path("server.crt"),
                key = path("server.key"),
                ca = path("ca.crt"),
            ),
        )
        .expect("write the sentinel's configuration");
        let child = Command::new("redis-sentinel")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-sentinel runs (apt-get install redis-sentinel)");
        TlsSentinel {
            port,
            child,
            _dir: dir,
        }
    }

    /// The port of the primary this sentinel names, if it answers.
    fn primary_port(&self, pki: &Pki) -> Option<u16> {
        tls_cli(
            pki,
            self.port,
            &["SENTINEL", "get-master-addr-by-name", "m"],
        )
        .lines()
        .nth(1)
        .and_then(|p| p.trim().parse().ok())
    }
}

impl Drop for TlsSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn through_a_sentinel_over_tls_a_broker_finds_the_primary_and_follows_a_failover() {
    let pki = Pki::new();
    let mut primary = TlsRedis::start(&pki);
    let replica = TlsRedis::start_replica_of(&pki, Some(primary.port));
    wait_until(
        Duration::from_secs(20),
        "the replica in sync over TLS",
        || tls_cli(&pki, primary.port, &["INFO", "replication"]).contains("state=online"),
    )
    .await;
    let sentinel = TlsSentinel::start(&pki, primary.port);
    wait_until(
        Duration::from_secs(20),
        "the sentinel knows the replica",
        || {
            tls_cli(&pki, sentinel.port, &["SENTINEL", "replicas", "m"])
                .contains(&replica.port.to_string())
        },
    )
    .await;
    assert_eq!(sentinel.primary_port(&pki), Some(primary.port));

    let mut config = common::test_config();
    config.node_id = "node-a".to_string();
    config.cluster.redis_sentinel = Some(starling_config::RedisSentinelConfig {
        master_name: "m".to_string(),
        sentinels: vec![format!("127.0.0.1:{}", sentinel.port)],
        tls: true,
        ..starling_config::RedisSentinelConfig::default()
    });
    config.cluster.redis_tls.ca_file = Some(pki.path("ca.crt"));
    config.cluster.redis_tls.cert_file = Some(pki.path("client.crt"));
    config.cluster.redis_tls.key_file = Some(pki.path("client.key"));
    config.validate().expect("a valid configuration");
    let server = tokio::time::timeout(Duration::from_secs(20), Server::bind(config))
        .await
        .expect("the broker reached the primary through the sentinel over TLS")
        .expect("the broker starts");
    let store = server.broker().store.clone();
    let retained = |topic: &str| {
        Arc::new(Message {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"kept"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: MessageProperties::default(),
            expires_at: None,
            publisher: None,
            received_at: None,
        })
    };
    store
        .set_retained(retained("before/failover"))
        .await
        .expect("a write to the primary");
    let key_on = |port: u16, topic: &str| {
        tls_cli(
            &pki,
            port,
            &["EXISTS", &format!("starling:v1:retained:{topic}")],
        )
        .trim()
            == "1"
    };
    assert!(key_on(primary.port, "before/failover"));
    // Replication is asynchronous: a loaded host may kill the primary before the replica has
    // the write (what `cluster.redis_replication` guards against; not what this test is about).
    wait_until(
        Duration::from_secs(10),
        "the write reached the replica",
        || key_on(replica.port, "before/failover"),
    )
    .await;

    // The primary dies; the sentinel promotes the replica; the broker's next writes go there.
    let _ = primary.child.kill();
    let _ = primary.child.wait();
    wait_until(Duration::from_secs(30), "the replica promoted", || {
        sentinel.primary_port(&pki) == Some(replica.port)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.set_retained(retained("after/failover")).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no write after the failover: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(
        key_on(replica.port, "after/failover"),
        "written on the new primary"
    );
    assert!(
        key_on(replica.port, "before/failover"),
        "the earlier write survived (replicated)"
    );
}
