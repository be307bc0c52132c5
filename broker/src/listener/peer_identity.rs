//! The username a verified client certificate gives (`listeners.tls.username_from_certificate`):
//! its subject's common name, or its first DNS name or e-mail address among the subject
//! alternative names, read with `x509-parser`.
//!
//! The TLS listener works it out once the handshake has verified the certificate; the CONNECT
//! handshake then logs the client in under that name (see [`PeerIdentity`]).

use starling_config::CertificateUsername;
use tokio_rustls::rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// What the transport established about who the client is, for the CONNECT handshake.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PeerIdentity {
    /// Nothing: the client logs in with its CONNECT username and password (plain TCP,
    /// WebSocket, TLS without a username from certificates, or no certificate presented where
    /// one is optional).
    #[default]
    Credentials,
    /// The verified certificate names this user: the client is authenticated as it, whatever
    /// username and password CONNECT carries.
    Certificate(String),
    /// The verified certificate lacks the field the username is to come from (or it is not
    /// usable as a name): the client is refused with "not authorized". Says what is missing.
    Unusable(String),
}

/// The identity `leaf` (the client's verified certificate, `None` if it presented none) gives
/// under `mode`.
pub fn from_certificate(
    mode: CertificateUsername,
    leaf: Option<&CertificateDer<'_>>,
) -> PeerIdentity {
    let Some(leaf) = leaf else {
        return PeerIdentity::Credentials;
    };
    if mode == CertificateUsername::None {
        return PeerIdentity::Credentials;
    }
    let cert = match X509Certificate::from_der(leaf.as_ref()) {
        Ok((_, cert)) => cert,
        Err(e) => return PeerIdentity::Unusable(format!("the certificate does not parse: {e}")),
    };
    let found = match mode {
        CertificateUsername::None => return PeerIdentity::Credentials,
        CertificateUsername::Cn => common_name(&cert),
        CertificateUsername::SanDns => alternative_name(&cert, "DNS name", |name| match name {
            GeneralName::DNSName(dns) => Some(*dns),
            _ => None,
        }),
        CertificateUsername::SanEmail => {
            alternative_name(&cert, "e-mail address", |name| match name {
                GeneralName::RFC822Name(email) => Some(*email),
                _ => None,
            })
        }
    };
    match found {
        Ok(name) if name.is_empty() || name.contains('\0') => PeerIdentity::Unusable(format!(
            "the certificate of {:?} names an empty user or one with a NUL character",
            cert.subject().to_string()
        )),
        Ok(name) => PeerIdentity::Certificate(name.to_string()),
        Err(missing) => PeerIdentity::Unusable(format!(
            "the certificate of {:?} has no {missing}",
            cert.subject().to_string()
        )),
    }
}

/// The subject's first common name; `Err` says what is missing.
fn common_name<'a>(cert: &'a X509Certificate<'_>) -> Result<&'a str, String> {
    let cn = cert.subject().iter_common_name().next();
    let cn = cn.ok_or("common name (CN) in its subject")?;
    cn.as_str().map_err(|_| {
        "common name (CN) readable as text (it has an unsupported string type)".to_string()
    })
}

/// The first subject alternative name `pick` accepts; `Err` says what is missing.
fn alternative_name<'a>(
    cert: &'a X509Certificate<'_>,
    what: &'static str,
    pick: impl Fn(&GeneralName<'a>) -> Option<&'a str>,
) -> Result<&'a str, String> {
    let missing = || format!("{what} among its subject alternative names");
    let extension = cert
        .subject_alternative_name()
        .map_err(|e| format!("{} (the extension does not parse: {e})", missing()))?;
    let Some(extension) = extension else {
        return Err(missing());
    };
    extension
        .value
        .general_names
        .iter()
        .find_map(pick)
        .ok_or_else(missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn certificate(cn: Option<&str>, sans: Vec<SanType>) -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Starling tests");
        params.subject_alt_names = sans;
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("certificate").der().clone()
    }

    fn ia5(text: &str) -> rcgen::Ia5String {
        text.try_into().expect("IA5 string")
    }

    #[test]
    fn each_mode_takes_its_field() {
        let cert = certificate(
            Some("sensor-7"),
            vec![
                SanType::Rfc822Name(ia5("ops@example.com")),
                SanType::DnsName(ia5("sensor-7.devices.example.com")),
                SanType::DnsName(ia5("second.example.com")),
                SanType::Rfc822Name(ia5("second@example.com")),
            ],
        );
        let user = |mode| from_certificate(mode, Some(&cert));
        let name = |n: &str| PeerIdentity::Certificate(n.to_string());
        assert_eq!(user(CertificateUsername::Cn), name("sensor-7"));
        assert_eq!(
            user(CertificateUsername::SanDns),
            name("sensor-7.devices.example.com")
        );
        assert_eq!(user(CertificateUsername::SanEmail), name("ops@example.com"));
        assert_eq!(user(CertificateUsername::None), PeerIdentity::Credentials);
        assert_eq!(
            from_certificate(CertificateUsername::Cn, None),
            PeerIdentity::Credentials,
            "no certificate presented"
        );
    }

    #[test]
    fn a_missing_field_makes_the_certificate_unusable_and_says_which() {
        let no_cn = certificate(None, vec![SanType::DnsName(ia5("a.example.com"))]);
        let only_cn = certificate(Some("device-1"), Vec::new());
        let cases = [
            (CertificateUsername::Cn, &no_cn, "common name"),
            (CertificateUsername::SanEmail, &no_cn, "e-mail address"),
            (CertificateUsername::SanDns, &only_cn, "DNS name"),
            (CertificateUsername::SanEmail, &only_cn, "e-mail address"),
        ];
        for (mode, cert, missing) in cases {
            match from_certificate(mode, Some(cert)) {
                PeerIdentity::Unusable(why) => {
                    assert!(why.contains(missing), "{mode:?}: {why}");
                    assert!(why.contains("Starling tests"), "names the subject: {why}");
                }
                other => panic!("{mode:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn bytes_that_are_not_a_certificate_are_unusable_not_a_panic() {
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]);
        assert!(matches!(
            from_certificate(CertificateUsername::Cn, Some(&junk)),
            PeerIdentity::Unusable(_)
        ));
    }
}
