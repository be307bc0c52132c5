//! Client certificates on the TLS listener (mutual TLS): the CA bundle they must chain to, read
//! from `listeners.tls.client_ca_file` and read again when it changes.
//!
//! [`ClientCa`] holds the listener's rustls [`ServerConfig`], built with a
//! [`WebPkiClientVerifier`] over the bundle's certificates (so that clients are told which CAs
//! are accepted). As a [`Reload`] it builds a new configuration when the bundle changes: new
//! handshakes are checked against the new CAs, connections already made stay. A bundle that
//! does not parse keeps the CAs loaded before.

use super::{server_config, ListenerError};
use crate::reload::{Reload, WatchedFiles};
use arc_swap::ArcSwap;
use starling_config::ClientAuth;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

/// The CAs client certificates are checked against, and the server configuration built on them.
pub struct ClientCa {
    path: PathBuf,
    mode: ClientAuth,
    files: WatchedFiles,
    provider: Arc<CryptoProvider>,
    certificate: Arc<dyn ResolvesServerCert>,
    current: ArcSwap<ServerConfig>,
}

impl fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCa")
            .field("path", &self.path)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl ClientCa {
    /// Reads the bundle at `path` and builds the listener's configuration: the server
    /// certificate from `certificate`, client certificates asked for as `mode` says.
    pub(super) fn load(
        path: &Path,
        mode: ClientAuth,
        provider: Arc<CryptoProvider>,
        certificate: Arc<dyn ResolvesServerCert>,
    ) -> Result<ClientCa, ListenerError> {
        let (files, contents) = WatchedFiles::read(vec![path.to_path_buf()]).map_err(|e| {
            ListenerError::Unreadable {
                path: e.path,
                source: e.source,
            }
        })?;
        let bundle = contents.first().map(Vec::as_slice).unwrap_or_default();
        let config = build(path, mode, &provider, &certificate, bundle)?;
        Ok(ClientCa {
            path: path.to_path_buf(),
            mode,
            files,
            provider,
            certificate,
            current: ArcSwap::from_pointee(config),
        })
    }

    /// The configuration for the next handshake.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }
}

impl Reload for ClientCa {
    fn what(&self) -> &'static str {
        "tls"
    }

    fn reload_if_changed(&self) -> Result<bool, String> {
        let Some(contents) = self.files.changed().map_err(|e| e.to_string())? else {
            return Ok(false);
        };
        let bundle = contents.first().map(Vec::as_slice).unwrap_or_default();
        let config = build(
            &self.path,
            self.mode,
            &self.provider,
            &self.certificate,
            bundle,
        );
        let config = config.map_err(|e| {
            format!("{e}; client certificates are still checked against the CAs loaded before until the file holds a valid bundle")
        })?;
        self.current.store(Arc::new(config));
        Ok(true)
    }
}

/// The server configuration whose client certificates must chain to a CA in `bundle` (the
/// bytes of the file at `path`).
fn build(
    path: &Path,
    mode: ClientAuth,
    provider: &Arc<CryptoProvider>,
    certificate: &Arc<dyn ResolvesServerCert>,
    bundle: &[u8],
) -> Result<ServerConfig, ListenerError> {
    let verifier = verifier(path, mode, provider, bundle)?;
    server_config(provider.clone(), certificate.clone(), Some(verifier)).map_err(|e| {
        ListenerError::InvalidClientCa {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    })
}

/// A verifier of client certificates against the CA certificates in `bundle`.
fn verifier(
    path: &Path,
    mode: ClientAuth,
    provider: &Arc<CryptoProvider>,
    bundle: &[u8],
) -> Result<Arc<dyn ClientCertVerifier>, ListenerError> {
    let invalid = |reason: String| ListenerError::InvalidClientCa {
        path: path.to_path_buf(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle) {
        let cert = cert.map_err(|source| ListenerError::MalformedPem {
            path: path.to_path_buf(),
            source,
        })?;
        roots.add(cert).map_err(|e| invalid(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ListenerError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = match mode {
        ClientAuth::Optional => builder.allow_unauthenticated(),
        ClientAuth::Required | ClientAuth::None => builder,
    };
    builder.build().map_err(|e| invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::peer_identity::PeerIdentity;
    use crate::listener::tls::{is_client_certificate_error, TlsListener};
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use starling_config::{CertificateUsername, TlsListenerConfig};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio_rustls::rustls::{self, ClientConfig};
    use tokio_rustls::TlsConnector;

    /// A CA, and a server certificate for `localhost` and a client certificate named
    /// `device-1` that it signed.
    struct Pki {
        ca_pem: String,
        ca_der: CertificateDer<'static>,
        /// Certificate and key, PEM.
        server: (String, String),
        /// Certificate and PKCS#8 key, DER.
        client: (CertificateDer<'static>, Vec<u8>),
    }

    fn pki() -> Pki {
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        let ca_key = KeyPair::generate().expect("key");
        let ca = ca.self_signed(&ca_key).expect("CA");
        let server_key = KeyPair::generate().expect("key");
        let server = CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .signed_by(&server_key, &ca, &ca_key)
            .expect("server certificate");
        let mut client = CertificateParams::default();
        client
            .distinguished_name
            .push(DnType::CommonName, "device-1");
        let client_key = KeyPair::generate().expect("key");
        let client = client
            .signed_by(&client_key, &ca, &ca_key)
            .expect("client certificate");
        Pki {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            server: (server.pem(), server_key.serialize_pem()),
            client: (client.der().clone(), client_key.serialize_der()),
        }
    }

    fn write(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }

    fn config(dir: &tempfile::TempDir, pki: &Pki, client_ca: &str) -> TlsListenerConfig {
        let bind = "127.0.0.1:0".parse().expect("address");
        let cert = write(dir, "tls.crt", &pki.server.0);
        let key = write(dir, "tls.key", &pki.server.1);
        let mut config = TlsListenerConfig::new(bind, cert, key);
        config.client_auth = ClientAuth::Required;
        config.client_ca_file = Some(write(dir, "client-ca.crt", client_ca));
        config.username_from_certificate = CertificateUsername::Cn;
        config
    }

    /// One handshake with `listener`, the client presenting the PKI's client certificate or
    /// none: the server's outcome (the identity, or the handshake's error).
    async fn handshake(
        listener: &TlsListener,
        pki: &Pki,
        present: bool,
    ) -> Result<PeerIdentity, std::io::Error> {
        let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("local addr");
        let acceptor = listener.acceptor();
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca_der.clone()).expect("trust the CA");
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_root_certificates(roots);
        let client_config = if present {
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.client.1.clone()));
            builder
                .with_client_auth_cert(vec![pki.client.0.clone()], key)
                .expect("client certificate")
        } else {
            builder.with_no_client_auth()
        };
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let name = ServerName::try_from("localhost").expect("server name");
            // The outcome that matters is the server's; the client may see the refusal later.
            let _ = TlsConnector::from(Arc::new(client_config))
                .connect(name, tcp)
                .await;
        });
        let (tcp, _) = socket.accept().await.expect("accept");
        let outcome = acceptor
            .accept(tcp)
            .await
            .map(|tls| listener.identity(tls.get_ref().1));
        client.await.expect("client task");
        outcome
    }

    #[tokio::test]
    async fn a_required_certificate_is_checked_and_names_the_client() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = pki();
        let listener = TlsListener::load(&config(&dir, &pki, &pki.ca_pem)).expect("load");
        assert_eq!(listener.reloadables().len(), 2, "certificate and CA bundle");
        let identity = handshake(&listener, &pki, true).await.expect("admitted");
        assert_eq!(identity, PeerIdentity::Certificate("device-1".to_string()));
        let refused = handshake(&listener, &pki, false)
            .await
            .expect_err("no certificate");
        assert!(is_client_certificate_error(&refused), "{refused}");
    }

    #[test]
    fn a_bundle_without_a_ca_certificate_is_named_and_a_bad_change_keeps_the_old_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = pki();
        let err = TlsListener::load(&config(&dir, &pki, "no certificate here\n"))
            .expect_err("an empty bundle");
        assert!(
            matches!(err, ListenerError::NoCertificate { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("client-ca.crt"), "{err}");

        let listener = TlsListener::load(&config(&dir, &pki, &pki.ca_pem)).expect("load");
        let ca = listener.client_ca().expect("client CA").clone();
        let before = ca.server_config();
        assert_eq!(ca.reload_if_changed(), Ok(false), "nothing changed");
        write(&dir, "client-ca.crt", &pki.server.1);
        let refused = ca.reload_if_changed().expect_err("a key is not a CA");
        assert!(
            refused.contains("client-ca.crt") && refused.contains("loaded before"),
            "{refused}"
        );
        assert!(
            Arc::ptr_eq(&before, &ca.server_config()),
            "the old CAs stay"
        );
        write(
            &dir,
            "client-ca.crt",
            &format!("{}{}", pki.ca_pem, pki.ca_pem),
        );
        assert_eq!(ca.reload_if_changed(), Ok(true));
        assert!(!Arc::ptr_eq(&before, &ca.server_config()), "swapped in");
    }
}
