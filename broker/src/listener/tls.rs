//! TLS listener support (rustls, PEM files).
//!
//! [`load_acceptor`] turns the PEM certificate chain and private key named in
//! a [`TlsListenerConfig`] into a [`TlsAcceptor`]. The crypto provider is
//! always `ring`, chosen explicitly so that the result does not depend on a
//! process-wide default provider being installed.

use super::ListenerError;
use starling_config::TlsListenerConfig;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Builds a TLS acceptor from PEM files.
///
/// `config.cert_file` must hold the certificate chain (leaf first) as PEM
/// `CERTIFICATE` blocks; `config.key_file` must hold one private key (PKCS#8,
/// PKCS#1 or SEC1). Both may name the same file. Errors name the file and
/// what is wrong with it: unreadable, malformed PEM, no certificate found, no
/// private key found, or a key that does not match the certificate.
///
/// Reads the files synchronously; call it at start-up (or from
/// `spawn_blocking`), not from a latency-sensitive task.
pub fn load_acceptor(config: &TlsListenerConfig) -> Result<TlsAcceptor, ListenerError> {
    let certs = load_certs(&config.cert_file)?;
    let key = load_key(&config.key_file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let invalid = |source| ListenerError::InvalidCertificateOrKey {
        cert: config.cert_file.clone(),
        key: config.key_file.clone(),
        source,
    };
    let server_config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(invalid)?;
    Ok(TlsAcceptor::from(Arc::new(server_config)))
}

/// Reads a whole PEM file, naming it in the error.
fn read_file(path: &Path) -> Result<Vec<u8>, ListenerError> {
    std::fs::read(path).map_err(|source| ListenerError::Unreadable {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads every `CERTIFICATE` block of a PEM file, in order.
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ListenerError> {
    let pem = read_file(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ListenerError::MalformedPem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(ListenerError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ListenerError> {
    let pem = read_file(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| ListenerError::MalformedPem {
            path: path.to_path_buf(),
            source,
        })?
        .ok_or_else(|| ListenerError::NoPrivateKey {
            path: path.to_path_buf(),
        })
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

    /// Runs `load_acceptor`, which must fail (`TlsAcceptor` is not `Debug`).
    fn load_err(config: &TlsListenerConfig, why: &str) -> ListenerError {
        match load_acceptor(config) {
            Ok(_) => panic!("load_acceptor succeeded; expected failure: {why}"),
            Err(err) => err,
        }
    }

    fn config(cert_file: PathBuf, key_file: PathBuf) -> TlsListenerConfig {
        TlsListenerConfig {
            bind: "127.0.0.1:0".parse().expect("address"),
            cert_file,
            key_file,
        }
    }

    #[tokio::test]
    async fn tls_round_trip_with_self_signed_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_pem, key_pem, cert_der) = self_signed();
        let cfg = config(
            write(&dir, "cert.pem", &cert_pem),
            write(&dir, "key.pem", &key_pem),
        );
        let acceptor = load_acceptor(&cfg).expect("load acceptor");

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

    #[test]
    fn combined_pem_file_is_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_pem, key_pem, _) = self_signed();
        let both = write(&dir, "both.pem", &format!("{cert_pem}{key_pem}"));
        load_acceptor(&config(both.clone(), both)).expect("combined file");
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
