//! Client certificates on the TLS listener (mutual TLS): the CA bundle they must chain to, read
//! from `listeners.tls.client_ca_file` and read again when it changes.
//!
//! [`ClientCa`] holds the listener's rustls [`ServerConfig`], built with a
//! [`WebPkiClientVerifier`] over the bundle's certificates (so that clients are told which CAs
//! are accepted). As a [`Reload`] it builds a new configuration when the bundle changes: new
//! handshakes are checked against the new CAs, connections already made stay. A bundle that
//! does not parse keeps the CAs loaded before.

use super::tls::server_config;
use super::ListenerError;
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
