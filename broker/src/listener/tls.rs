//! TLS listener support (rustls, PEM files), with the certificate reloaded when its files change,
//! and client certificates (mutual TLS) when configured.
//!
//! [`TlsListener::load`] turns the PEM certificate chain and private key named in a
//! [`TlsListenerConfig`] into the acceptor of a listener whose certificate comes from a
//! [`ServerCertificate`]: a resolver that serves the pair last loaded and, as a
//! [`Reload`], loads the files again when they change (see [`crate::reload`]), so a renewed
//! certificate is served to new connections without a restart. With `client_auth` set, clients
//! are asked for certificates that chain to the CAs in `client_ca_file` (a [`ClientCa`],
//! reloaded the same way), and [`TlsListener::identity`] gives the username a verified
//! certificate carries. The crypto provider is always `ring`, chosen explicitly so that the
//! result does not depend on a process-wide default provider being installed.

use super::client_ca::ClientCa;
use super::peer_identity::{self, PeerIdentity};
use super::{server_config, ListenerError};
use crate::reload::{Reload, WatchedFiles};
use arc_swap::ArcSwap;
use starling_config::{CertificateUsername, ClientAuth, TlsListenerConfig};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, ServerConnection};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// A TLS listener's handshake material: its certificate and, with client certificates, the CAs
/// they are checked against.
pub struct TlsListener {
    certificate: Arc<ServerCertificate>,
    /// With `client_auth` set: the CAs, and the configuration built on them.
    client_ca: Option<Arc<ClientCa>>,
    /// Without: the configuration, which never changes (the certificate is resolved per
    /// handshake).
    fixed: Arc<ServerConfig>,
    username: CertificateUsername,
}

impl fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsListener")
            .field("certificate", &self.certificate)
            .field("client_ca", &self.client_ca)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Reads the PEM files `config` names.
    ///
    /// `config.cert_file` must hold the certificate chain (leaf first) as PEM `CERTIFICATE`
    /// blocks; `config.key_file` must hold one private key (PKCS#8, PKCS#1 or SEC1). Both may
    /// name the same file. `config.client_ca_file`, when client certificates are asked for,
    /// must hold one or more CA certificates. Errors name the file and what is wrong with it:
    /// unreadable, malformed PEM, no certificate found, no private key found, a key that does
    /// not match the certificate, or a CA certificate rustls cannot use.
    ///
    /// Reads the files synchronously; call it at start-up (or from `spawn_blocking`), not from
    /// a latency-sensitive task.
    pub fn load(config: &TlsListenerConfig) -> Result<TlsListener, ListenerError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certificate = Arc::new(ServerCertificate::load(config, provider.clone())?);
        let fixed = server_config(provider.clone(), certificate.clone(), None)
            .map_err(|source| certificate.invalid(source))?;
        let client_ca = match (config.client_auth, &config.client_ca_file) {
            (ClientAuth::None, _) => None,
            (mode, Some(path)) => Some(Arc::new(ClientCa::load(
                path,
                mode,
                provider,
                certificate.clone(),
            )?)),
            // Validation refuses this; without a bundle there is nothing to check against.
            (_, None) => return Err(ListenerError::NoClientCa),
        };
        Ok(TlsListener {
            certificate,
            client_ca,
            fixed: Arc::new(fixed),
            username: config.username_from_certificate,
        })
    }

    /// The acceptor for the next connection (with the CAs in force now).
    pub fn acceptor(&self) -> TlsAcceptor {
        match &self.client_ca {
            Some(ca) => TlsAcceptor::from(ca.server_config()),
            None => TlsAcceptor::from(self.fixed.clone()),
        }
    }

    /// The certificate served.
    pub fn certificate(&self) -> &Arc<ServerCertificate> {
        &self.certificate
    }

    /// The CAs client certificates are checked against, when they are asked for.
    pub fn client_ca(&self) -> Option<&Arc<ClientCa>> {
        self.client_ca.as_ref()
    }

    /// What is reloaded when its files change: the certificate, and the client CA bundle.
    pub fn reloadables(&self) -> Vec<Arc<dyn Reload>> {
        let mut reloadables: Vec<Arc<dyn Reload>> = vec![self.certificate.clone()];
        if let Some(ca) = &self.client_ca {
            reloadables.push(ca.clone());
        }
        reloadables
    }

    /// Who the client of a completed handshake is: the username its verified certificate
    /// gives, if the listener takes usernames from certificates and the client presented one.
    pub fn identity(&self, connection: &ServerConnection) -> PeerIdentity {
        let leaf = connection.peer_certificates().and_then(<[_]>::first);
        peer_identity::from_certificate(self.username, leaf)
    }
}

/// Whether a failed TLS handshake failed over the client's certificate: none presented where
/// one is required, or one that does not verify against the client CA bundle.
pub fn is_client_certificate_error(error: &std::io::Error) -> bool {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    matches!(
        rustls_error,
        Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_))
    )
}

/// The certificate and key a TLS listener serves: the pair last loaded from its files.
pub struct ServerCertificate {
    cert_file: PathBuf,
    key_file: PathBuf,
    files: WatchedFiles,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl ServerCertificate {
    /// Loads the pair `config` names.
    fn load(
        config: &TlsListenerConfig,
        provider: Arc<CryptoProvider>,
    ) -> Result<ServerCertificate, ListenerError> {
        let paths = vec![config.cert_file.clone(), config.key_file.clone()];
        let (files, contents) =
            WatchedFiles::read(paths).map_err(|e| ListenerError::Unreadable {
                path: e.path,
                source: e.source,
            })?;
        let pair = certified(&config.cert_file, &config.key_file, &provider, &contents)?;
        Ok(ServerCertificate {
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
            files,
            provider,
            current: ArcSwap::from_pointee(pair),
        })
    }

    fn invalid(&self, source: rustls::Error) -> ListenerError {
        invalid(&self.cert_file, &self.key_file, source)
    }

    /// The certificate served now (its leaf first).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().cert.clone()
    }
}

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl Reload for ServerCertificate {
    fn what(&self) -> &'static str {
        "tls"
    }

    fn reload_if_changed(&self) -> Result<bool, String> {
        let Some(contents) = self.files.changed().map_err(|e| e.to_string())? else {
            return Ok(false);
        };
        let pair = certified(&self.cert_file, &self.key_file, &self.provider, &contents);
        let pair = pair.map_err(|e| {
            format!("{e}; the certificate loaded before is still served until the files hold a valid pair")
        })?;
        self.current.store(Arc::new(pair));
        Ok(true)
    }
}

/// The certificate and key in `contents` (the bytes of the two files), checked to belong
/// together.
fn certified(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
    contents: &[Vec<u8>],
) -> Result<CertifiedKey, ListenerError> {
    let (cert_pem, key_pem) = match contents {
        [cert, key] => (cert.as_slice(), key.as_slice()),
        _ => (&[][..], &[][..]),
    };
    let certs = parse_certs(cert_file, cert_pem)?;
    let key = parse_key(key_file, key_pem)?;
    CertifiedKey::from_der(certs, key, provider)
        .map_err(|source| invalid(cert_file, key_file, source))
}

fn invalid(cert_file: &Path, key_file: &Path, source: rustls::Error) -> ListenerError {
    ListenerError::InvalidCertificateOrKey {
        cert: cert_file.to_path_buf(),
        key: key_file.to_path_buf(),
        source,
    }
}

/// Every `CERTIFICATE` block of a PEM file, in order.
fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ListenerError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| malformed(path, source))?;
    if certs.is_empty() {
        return Err(ListenerError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file.
fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, ListenerError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| match source {
        pem::Error::NoItemsFound => ListenerError::NoPrivateKey {
            path: path.to_path_buf(),
        },
        other => malformed(path, other),
    })
}

fn malformed(path: &Path, source: pem::Error) -> ListenerError {
    ListenerError::MalformedPem {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::rustls::pki_types::ServerName;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    use tokio_rustls::TlsConnector;

    /// A self-signed `localhost` certificate: (certificate PEM, key PEM, certificate DER).
    fn self_signed() -> (String, String, CertificateDer<'static>) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("generate certificate");
        (
            certified.cert.pem(),
            certified.key_pair.serialize_pem(),
            certified.cert.der().clone(),
        )
    }

    fn write(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }

    /// Runs `load_acceptor`, which must fail.
    fn load_err(config: &TlsListenerConfig, why: &str) -> ListenerError {
        match load_acceptor(config) {
            Ok(_) => panic!("load_acceptor succeeded; expected failure: {why}"),
            Err(err) => err,
        }
    }

    fn config(cert_file: PathBuf, key_file: PathBuf) -> TlsListenerConfig {
        let bind = "127.0.0.1:0".parse().expect("address");
        TlsListenerConfig::new(bind, cert_file, key_file)
    }

    /// The acceptor of a listener without client certificates, and its certificate.
    fn load_acceptor(
        config: &TlsListenerConfig,
    ) -> Result<(TlsAcceptor, Arc<ServerCertificate>), ListenerError> {
        let listener = TlsListener::load(config)?;
        Ok((listener.acceptor(), listener.certificate().clone()))
    }

    #[tokio::test]
    async fn tls_round_trip_with_self_signed_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_pem, key_pem, cert_der) = self_signed();
        let cfg = config(
            write(&dir, "cert.pem", &cert_pem),
            write(&dir, "key.pem", &key_pem),
        );
        let (acceptor, _) = load_acceptor(&cfg).expect("load acceptor");

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor.accept(tcp).await.expect("server handshake");
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await.expect("server read");
            assert_eq!(&buf, b"hello");
            tls.write_all(b"world").await.expect("server write");
            tls.flush().await.expect("server flush");
            tls.shutdown().await.expect("server shutdown");
        });

        let mut roots = RootCertStore::empty();
        roots.add(cert_der).expect("trust certificate");
        let client_config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        let connector = TlsConnector::from(Arc::new(client_config));
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("server name");
        let mut tls = connector
            .connect(name, tcp)
            .await
            .expect("client handshake");
        tls.write_all(b"hello").await.expect("client write");
        tls.flush().await.expect("client flush");
        let mut received = Vec::new();
        tls.read_to_end(&mut received).await.expect("client read");
        assert_eq!(received, b"world");
        server.await.expect("server task");
    }

    /// Completes a handshake with `acceptor`; returns the leaf certificate the server showed.
    async fn served_leaf(acceptor: TlsAcceptor, trusted: &[CertificateDer<'static>]) -> Vec<u8> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor.accept(tcp).await.expect("server handshake");
            tls.shutdown().await.expect("server shutdown");
        });
        let mut roots = RootCertStore::empty();
        for cert in trusted {
            roots.add(cert.clone()).expect("trust certificate");
        }
        let client_config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        let connector = TlsConnector::from(Arc::new(client_config));
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("server name");
        let tls = connector
            .connect(name, tcp)
            .await
            .expect("client handshake");
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .expect("server certificate")[0]
            .to_vec();
        server.await.expect("server task");
        leaf
    }

    #[tokio::test]
    async fn a_changed_certificate_is_served_to_new_connections_and_a_bad_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first_pem, first_key, first_der) = self_signed();
        let cfg = config(
            write(&dir, "cert.pem", &first_pem),
            write(&dir, "key.pem", &first_key),
        );
        let (acceptor, certificate) = load_acceptor(&cfg).expect("load acceptor");
        let trusted = [first_der.clone()];
        assert_eq!(
            served_leaf(acceptor.clone(), &trusted).await,
            first_der.to_vec()
        );
        assert_eq!(
            certificate.reload_if_changed(),
            Ok(false),
            "nothing changed"
        );

        // Renewed, as cert-manager or a rotated Secret would.
        let (second_pem, second_key, second_der) = self_signed();
        write(&dir, "cert.pem", &second_pem);
        write(&dir, "key.pem", &second_key);
        assert_eq!(certificate.reload_if_changed(), Ok(true));
        let trusted = [first_der.clone(), second_der.clone()];
        assert_eq!(
            served_leaf(acceptor.clone(), &trusted).await,
            second_der.to_vec()
        );

        // A key that does not match: refused with the files named, the renewed pair stays.
        let (_, other_key, _) = self_signed();
        write(&dir, "key.pem", &other_key);
        let refused = certificate.reload_if_changed().expect_err("mismatched key");
        assert!(
            refused.contains("cert.pem") && refused.contains("key.pem"),
            "{refused}"
        );
        assert_eq!(
            certificate.reload_if_changed(),
            Ok(false),
            "tried once per change"
        );
        assert_eq!(served_leaf(acceptor, &trusted).await, second_der.to_vec());
        assert_eq!(certificate.chain()[0], second_der);
    }

    #[test]
    fn combined_pem_file_is_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_pem, key_pem, _) = self_signed();
        let both = write(&dir, "both.pem", &format!("{cert_pem}{key_pem}"));
        let _ = load_acceptor(&config(both.clone(), both)).expect("combined file");
    }

    #[test]
    fn missing_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, key_pem, _) = self_signed();
        let missing = dir.path().join("no-such-cert.pem");
        let key = write(&dir, "key.pem", &key_pem);
        let err = load_err(&config(missing, key), "missing file");
        assert!(matches!(err, ListenerError::Unreadable { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("no-such-cert.pem"), "{text}");
        assert!(text.contains("cannot read"), "{text}");
    }

    #[test]
    fn file_without_certificate_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, key_pem, _) = self_signed();
        let key = write(&dir, "key.pem", &key_pem);
        // The key file is a valid PEM file, but holds no certificate.
        let err = load_err(&config(key.clone(), key), "no certificate");
        assert!(
            matches!(err, ListenerError::NoCertificate { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("key.pem"), "{text}");
        assert!(text.contains("no certificate found"), "{text}");
    }

    #[test]
    fn file_without_key_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_pem, _, _) = self_signed();
        let cert = write(&dir, "cert.pem", &cert_pem);
        let err = load_err(&config(cert.clone(), cert), "no key");
        assert!(matches!(err, ListenerError::NoPrivateKey { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("cert.pem"), "{text}");
        assert!(text.contains("no private key found"), "{text}");
    }

    #[test]
    fn empty_file_has_no_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, key_pem, _) = self_signed();
        let empty = write(&dir, "empty.pem", "not a pem file\n");
        let key = write(&dir, "key.pem", &key_pem);
        let err = load_err(&config(empty, key), "no certificate");
        assert!(
            matches!(err, ListenerError::NoCertificate { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("empty.pem"), "{err}");
    }

    #[test]
    fn mismatched_key_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_pem, _, _) = self_signed();
        let (_, other_key_pem, _) = self_signed();
        let cert = write(&dir, "cert.pem", &cert_pem);
        let key = write(&dir, "other-key.pem", &other_key_pem);
        let err = load_err(&config(cert, key), "mismatched key");
        assert!(
            matches!(err, ListenerError::InvalidCertificateOrKey { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("cert.pem"), "{text}");
        assert!(text.contains("other-key.pem"), "{text}");
    }
}
