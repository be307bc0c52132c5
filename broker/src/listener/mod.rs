//! Accept loops for the client-facing listeners (TCP, TLS and WebSocket), their errors, and the
//! rustls server configuration the TLS listener builds.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::server::ResolvesServerCert;
use tokio_rustls::rustls::{self, ServerConfig};

pub mod client_ca;
pub mod peer_identity;
pub mod tls;
pub mod ws;

/// Why a listener could not be set up, or why an accepted connection could
/// not be turned into an MQTT byte stream.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// A certificate or key file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A file holds PEM data that could not be decoded.
    #[error("{}: malformed PEM: {source}", path.display())]
    MalformedPem {
        /// The file with the malformed PEM data.
        path: PathBuf,
        /// What the PEM parser reported.
        #[source]
        source: tokio_rustls::rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no `CERTIFICATE` PEM block.
    #[error("{}: no certificate found (expected a PEM `CERTIFICATE` block)", path.display())]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The key file holds no private key PEM block.
    #[error(
        "{}: no private key found (expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)",
        path.display()
    )]
    NoPrivateKey {
        /// The key file.
        path: PathBuf,
    },
    /// The certificate and key were read but rustls refused them, e.g. the
    /// key does not match the certificate or uses an unsupported algorithm.
    #[error(
        "certificate {} and private key {} cannot be used together: {source}",
        cert.display(),
        key.display()
    )]
    InvalidCertificateOrKey {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls reported.
        #[source]
        source: tokio_rustls::rustls::Error,
    },
    /// The client CA bundle was read but rustls cannot use it (a CA certificate it cannot
    /// parse, for instance).
    #[error(
        "{}: cannot check client certificates against this CA bundle: {reason}; it must hold the PEM `CERTIFICATE` blocks of the CAs that sign client certificates",
        path.display()
    )]
    InvalidClientCa {
        /// The CA bundle.
        path: PathBuf,
        /// What rustls reported.
        reason: String,
    },
    /// Client certificates are asked for but no CA bundle is configured.
    #[error("client certificates are asked for but `listeners.tls.client_ca_file` is not set")]
    NoClientCa,
    /// The WebSocket handshake was refused by us with an HTTP error response
    /// (for instance no acceptable subprotocol was offered).
    #[error("WebSocket handshake rejected with HTTP {status}: {reason}")]
    WsRejected {
        /// The HTTP status sent to the client.
        status: u16,
        /// Why the handshake was rejected.
        reason: String,
    },
    /// The WebSocket handshake failed (malformed request, I/O error, ...).
    #[error("WebSocket handshake failed: {0}")]
    WsHandshake(#[source] Box<tokio_tungstenite::tungstenite::Error>),
}

/// A server configuration serving `certificate`, asking for client certificates when there is
/// a `verifier`.
fn server_config(
    provider: Arc<CryptoProvider>,
    certificate: Arc<dyn ResolvesServerCert>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<ServerConfig, rustls::Error> {
    let builder =
        ServerConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    Ok(builder.with_cert_resolver(certificate))
}
