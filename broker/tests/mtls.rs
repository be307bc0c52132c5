//! Client certificates on the TLS listener (mutual TLS), end to end: a CA, a server certificate
//! and client certificates made with rcgen into real PEM files, a real broker listener, and
//! rumqttc clients whose rustls configurations present those certificates.
//!
//! Required and optional client certificates, the username taken from a certificate's CN with
//! ACL patterns applying to it, and a client CA bundle replaced on disk while the broker runs.

mod common;

use common::reload::{self, replace_file as replace};
use common::{v4, v5, TestBroker, WAIT};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rumqttc::v5::mqttbytes::v5::{PubAckReason, SubscribeReasonCode};
use rumqttc::{TlsConfiguration, Transport};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use starling_config::{BrokerConfig, CertificateUsername, ClientAuth, TlsListenerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// A certificate authority made for a test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// The broker's certificate for 127.0.0.1: (certificate PEM, key PEM).
    fn server(&self) -> (String, String) {
        let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
        let key = KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("server certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate with this common name (none if `None`).
    fn client(&self, cn: Option<&str>) -> ClientCert {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Starling devices");
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("client key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("client certificate");
        ClientCert {
            chain: vec![cert.der().clone()],
            key: key.serialize_der(),
        }
    }
}

/// A client's certificate chain and private key (PKCS#8 DER).
struct ClientCert {
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

/// The files of a broker whose TLS certificate `server_ca` signed.
struct Pki {
    dir: tempfile::TempDir,
    server_ca: Ca,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let server_ca = Ca::new("Starling test server CA");
        let (cert, key) = server_ca.server();
        std::fs::write(dir.path().join("tls.crt"), cert).expect("write");
        std::fs::write(dir.path().join("tls.key"), key).expect("write");
        Pki { dir, server_ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `contents` into the directory; returns the path.
    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write");
        path
    }

    /// `listeners.tls` asking for client certificates signed by a CA in `client_ca_file`.
    fn listener(
        &self,
        client_auth: ClientAuth,
        client_ca_file: PathBuf,
        username: CertificateUsername,
    ) -> TlsListenerConfig {
        let bind = "127.0.0.1:0".parse().expect("address");
        let mut config = TlsListenerConfig::new(bind, self.path("tls.crt"), self.path("tls.key"));
        config.client_auth = client_auth;
        config.client_ca_file = Some(client_ca_file);
        config.username_from_certificate = username;
        config
    }

    /// A rustls client configuration trusting the server's CA, presenting `cert` if given.
    fn client_config(&self, cert: Option<&ClientCert>) -> Transport {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.server_ca.der())
            .expect("trust the server CA");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
        let config = match cert {
            Some(cert) => {
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key.clone()));
                builder
                    .with_client_auth_cert(cert.chain.clone(), key)
                    .expect("client certificate and key")
            }
            None => builder.with_no_client_auth(),
        };
        Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(config)))
    }

    fn v5(&self, addr: SocketAddr, id: &str, cert: Option<&ClientCert>) -> v5::MqttOptions {
        let mut options = v5::options(addr, id);
        options.set_transport(self.client_config(cert));
        options
    }

    fn v4(&self, addr: SocketAddr, id: &str, cert: Option<&ClientCert>) -> v4::MqttOptions {
        let mut options = v4::options(addr, id);
        options.set_transport(self.client_config(cert));
        options
    }
}

async fn start(adjust: impl FnOnce(&mut BrokerConfig)) -> (TestBroker, SocketAddr) {
    let broker = TestBroker::start_with(adjust).await;
    let tls = broker.addresses.tls.expect("tls listener");
    (broker, tls)
}

/// Connects (MQTT 5); `Ok(())` on a successful CONNACK, else the client's error.
async fn outcome(options: v5::MqttOptions) -> Result<(), String> {
    v5::connect(options).connack_outcome().await
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

#[tokio::test]
async fn required_client_certificates_admit_only_clients_with_a_certificate_from_the_ca() {
    let pki = Pki::new();
    let devices = Ca::new("Starling devices CA");
    let ca_file = pki.write("client-ca.crt", &devices.pem());
    let listener = pki.listener(ClientAuth::Required, ca_file, CertificateUsername::None);
    let (broker, tls) = start(|c| c.listeners.tls = Some(listener)).await;

    let refused = outcome(pki.v5(tls, "no-cert", None))
        .await
        .expect_err("a client without a certificate is refused");
    assert!(
        refused.contains("AlertReceived(CertificateRequired)"),
        "{refused}"
    );

    let stranger = Ca::new("Some other CA").client(Some("sensor-1"));
    let refused = outcome(pki.v5(tls, "other-ca", Some(&stranger)))
        .await
        .expect_err("a certificate from another CA is refused");
    assert!(refused.contains("AlertReceived(UnknownCA)"), "{refused}");

    let good = devices.client(Some("sensor-1"));
    outcome(pki.v5(tls, "good-cert", Some(&good)))
        .await
        .expect("a certificate from the client CA is admitted");
    let mut v311 = v4::connect(pki.v4(tls, "good-cert-v311", Some(&good)));
    v311.connack().await;
    broker.stop().await;
}

#[tokio::test]
async fn the_username_comes_from_the_certificate_and_the_acl_applies_to_it() {
    let pki = Pki::new();
    let devices = Ca::new("Starling devices CA");
    let ca_file = pki.write("client-ca.crt", &devices.pem());
    let listener = pki.listener(ClientAuth::Required, ca_file, CertificateUsername::Cn);
    // Only `admin` has a password; the devices log in with their certificates alone.
    let passwords = pki.write("passwords", &users(&[("admin", "secret")]));
    let acl = pki.write("acl", "pattern readwrite devices/%u/#\n");
    let (broker, tls) = start(|c| {
        c.listeners.tls = Some(listener);
        c.auth.allow_anonymous = false;
        c.auth.password_file = Some(passwords);
        c.auth.acl_file = Some(acl);
    })
    .await;

    let sensor_1 = devices.client(Some("sensor-1"));
    let sensor_2 = devices.client(Some("sensor-2"));
    // The CONNECT username and password are ignored: the certificate says who this is.
    let mut options = pki.v5(tls, "s1", Some(&sensor_1));
    options.set_credentials("admin", "not the password");
    let mut one = v5::connect(options);
    one.connack().await;
    let mut two = v5::connect(pki.v5(tls, "s2", Some(&sensor_2)));
    two.connack().await;

    one.client
        .subscribe("devices/sensor-2/#", v5::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let suback = one.suback().await;
    assert_eq!(suback.return_codes, [SubscribeReasonCode::NotAuthorized]);
    for (client, filter) in [
        (&mut one, "devices/sensor-1/#"),
        (&mut two, "devices/sensor-2/#"),
    ] {
        client
            .client
            .subscribe(filter, v5::QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let suback = client.suback().await;
        assert_eq!(
            suback.return_codes,
            [SubscribeReasonCode::Success(v5::QoS::AtLeastOnce)],
            "{filter}"
        );
    }

    // sensor-1 may not write under sensor-2: refused, and sensor-2 receives nothing.
    one.client
        .publish("devices/sensor-2/cmd", v5::QoS::AtLeastOnce, false, "no")
        .await
        .expect("publish");
    let reason = one
        .expect(|p| match p {
            v5::Packet::PubAck(ack) => Some(ack.reason),
            _ => None,
        })
        .await;
    assert_eq!(reason, PubAckReason::NotAuthorized);
    two.no_publish().await;

    // Under its own name it may.
    one.client
        .publish("devices/sensor-1/temp", v5::QoS::AtLeastOnce, false, "21")
        .await
        .expect("publish");
    let received = one.publish().await;
    assert_eq!(&received.topic[..], b"devices/sensor-1/temp");
    assert_eq!(&received.payload[..], b"21");
    broker.stop().await;
}

#[tokio::test]
async fn a_verified_certificate_without_the_username_field_is_refused_as_not_authorized() {
    let pki = Pki::new();
    let devices = Ca::new("Starling devices CA");
    let ca_file = pki.write("client-ca.crt", &devices.pem());
    let listener = pki.listener(ClientAuth::Required, ca_file, CertificateUsername::Cn);
    let (broker, tls) = start(|c| c.listeners.tls = Some(listener)).await;

    let nameless = devices.client(None);
    let refused = outcome(pki.v5(tls, "nameless", Some(&nameless)))
        .await
        .expect_err("no common name, no username");
    assert!(refused.contains("NotAuthorized"), "{refused}");
    // MQTT 3.1.1: return code 5, "not authorized".
    let mut v311 = v4::connect(pki.v4(tls, "nameless-v311", Some(&nameless)));
    let refused = v311.closed().await;
    assert!(refused.contains("NotAuthorized"), "{refused}");

    // A certificate with a CN from the same CA is fine on the same listener.
    outcome(pki.v5(tls, "named", Some(&devices.client(Some("sensor-9")))))
        .await
        .expect("admitted");
    broker.stop().await;
}

#[tokio::test]
async fn optional_client_certificates_fall_back_to_passwords() {
    let pki = Pki::new();
    let devices = Ca::new("Starling devices CA");
    let ca_file = pki.write("client-ca.crt", &devices.pem());
    let listener = pki.listener(ClientAuth::Optional, ca_file, CertificateUsername::Cn);
    let passwords = pki.write("passwords", &users(&[("alice", "pw")]));
    let (broker, tls) = start(|c| {
        c.listeners.tls = Some(listener);
        c.auth.allow_anonymous = false;
        c.auth.password_file = Some(passwords);
    })
    .await;

    let mut alice = pki.v5(tls, "alice", None);
    alice.set_credentials("alice", "pw");
    outcome(alice)
        .await
        .expect("no certificate: the password logs in");
    let mut wrong = pki.v5(tls, "alice-wrong", None);
    wrong.set_credentials("alice", "nope");
    let refused = outcome(wrong).await.expect_err("a wrong password");
    assert!(refused.contains("BadUserNamePassword"), "{refused}");
    let refused = outcome(pki.v5(tls, "anonymous", None))
        .await
        .expect_err("neither certificate nor credentials");
    assert!(refused.contains("NotAuthorized"), "{refused}");

    outcome(pki.v5(tls, "device", Some(&devices.client(Some("sensor-1")))))
        .await
        .expect("a certificate logs in without a password");
    let stranger = Ca::new("Some other CA").client(Some("alice"));
    let mut options = pki.v5(tls, "stranger", Some(&stranger));
    options.set_credentials("alice", "pw");
    let refused = outcome(options)
        .await
        .expect_err("a certificate that does not verify is refused even where they are optional");
    assert!(refused.contains("AlertReceived(UnknownCA)"), "{refused}");
    broker.stop().await;
}

/// Waits until the broker counted `n` reloads of TLS files with `outcome`.
async fn reloaded(broker: &TestBroker, outcome: &str, n: u64) {
    reload::reloaded(broker, "tls", outcome, n, WAIT).await;
}

#[tokio::test]
async fn a_replaced_client_ca_bundle_applies_to_new_handshakes_and_a_bad_one_is_not_used() {
    let pki = Pki::new();
    let (first, second) = (Ca::new("First devices CA"), Ca::new("Second devices CA"));
    let ca_file = pki.write("client-ca.crt", &first.pem());
    let listener = pki.listener(
        ClientAuth::Required,
        ca_file.clone(),
        CertificateUsername::Cn,
    );
    let (broker, tls) = start(|c| {
        c.listeners.tls = Some(listener);
        c.reload.interval_secs = 1;
    })
    .await;
    let (old_device, new_device) = (first.client(Some("old")), second.client(Some("new")));

    let mut connected = v5::connect(pki.v5(tls, "old-before", Some(&old_device)));
    connected.connack().await;
    let refused = outcome(pki.v5(tls, "new-before", Some(&new_device)))
        .await
        .expect_err("the second CA is not trusted yet");
    assert!(refused.contains("AlertReceived(UnknownCA)"), "{refused}");

    replace(&ca_file, &second.pem());
    reloaded(&broker, "ok", 1).await;
    outcome(pki.v5(tls, "new-after", Some(&new_device)))
        .await
        .expect("the new CA is trusted for new handshakes");
    let refused = outcome(pki.v5(tls, "old-after", Some(&old_device)))
        .await
        .expect_err("the replaced CA is no longer trusted");
    assert!(refused.contains("AlertReceived(UnknownCA)"), "{refused}");

    // A bundle that holds no certificate: counted as a failed reload, the second CA stays.
    replace(&ca_file, "not a certificate\n");
    reloaded(&broker, "failed", 1).await;
    outcome(pki.v5(tls, "new-still", Some(&new_device)))
        .await
        .expect("the CA loaded before is still in force");

    // The connection made under the first CA was never dropped.
    connected
        .client
        .publish("devices/old/x", v5::QoS::AtLeastOnce, false, "yes")
        .await
        .expect("publish");
    let reason = connected
        .expect(|p| match p {
            v5::Packet::PubAck(ack) => Some(ack.reason),
            _ => None,
        })
        .await;
    assert_eq!(reason, PubAckReason::NoMatchingSubscribers);
    broker.stop().await;
}
