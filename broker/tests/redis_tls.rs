//! Redis over TLS with the project's own CA and a client certificate (`cluster.redis_tls`): a
//! real `redis-server` with `tls-auth-clients yes`, certificates made by `rcgen`. A broker with
//! the CA bundle and its client certificate connects and serves; without the client
//! certificate, or without the CA (the system's roots alone), the connection is refused.

mod common;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use redis::{ClientTlsConfig, TlsCertificates};
use starling_broker::server::Server;
use starling_broker::store::redis::target::RedisTarget;
use starling_broker::store::{RedisStore, RedisStoreConfig};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
