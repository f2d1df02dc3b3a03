//! Who is on the other end of a connection, as the transport established it.
//!
//! The TLS layer (or, behind a trusted reverse proxy, the forwarded headers) fills this in;
//! the policy layer maps it to a tenant.

pub mod forwarded;

use std::net::{IpAddr, SocketAddr};

/// The verified client certificate of a connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertIdentity {
    /// Subject common name, if any.
    pub common_name: Option<String>,
    /// SAN DNS names.
    pub dns_names: Vec<String>,
    /// SAN URIs (e.g. SPIFFE ids).
    pub uris: Vec<String>,
    /// SAN e-mail addresses.
    pub emails: Vec<String>,
    /// Lowercase hex SHA-256 of the leaf certificate's DER (RFC 8705 `x5t#S256` is the
    /// base64url form of the same digest).
    pub sha256_fingerprint: String,
}

/// How the client certificate reached us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertSource {
    /// Verified by our own TLS handshake.
    Tls,
    /// Forwarded by a trusted reverse proxy, which verified it.
    TrustedProxy,
}

/// Transport facts about one connection, attached to every request on it.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The TCP peer (the proxy itself in proxy mode); `None` on a Unix socket.
    pub peer_addr: Option<SocketAddr>,
    /// Whether the peer is a configured trusted proxy (forwarded headers are honoured only then).
    pub trusted_proxy: bool,
    /// The client certificate verified in the TLS handshake, if any.
    pub tls_client_cert: Option<CertIdentity>,
    /// Negotiated ALPN protocol, for logs.
    pub alpn: Option<String>,
    /// Proxy mode only, per request: the client certificate a trusted proxy forwarded
    /// (see [`forwarded::forwarded_identity`]). Never set from an untrusted peer.
    pub forwarded_client_cert: Option<CertIdentity>,
    /// Proxy mode only, per request: the client address from `X-Forwarded-For`, when the
    /// peer is a trusted proxy.
    pub forwarded_for: Option<IpAddr>,
}

/// Why a certificate could not be turned into a [`CertIdentity`].
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("not a parseable X.509 certificate: {0}")]
    Parse(String),
    #[error("no PEM certificate found")]
    NoPem,
}

/// A DER certificate's SHA-256, lowercase hex: what `keys create --bind-cert` stores and
/// what a request's client certificate is compared with (written once so the two agree).
pub fn sha256_fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(der))
}

impl CertIdentity {
    /// Extracts the identity of a DER certificate (already verified by the caller).
    pub fn from_der(der: &[u8]) -> Result<CertIdentity, IdentityError> {
        use x509_parser::extensions::GeneralName;

        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::Parse(e.to_string()))?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let mut identity = CertIdentity {
            common_name,
            sha256_fingerprint: sha256_fingerprint(der),
            ..CertIdentity::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => identity.dns_names.push((*dns).to_owned()),
                    GeneralName::URI(uri) => identity.uris.push((*uri).to_owned()),
                    GeneralName::RFC822Name(email) => identity.emails.push((*email).to_owned()),
                    _ => {}
                }
            }
        }
        Ok(identity)
    }

    /// Extracts the identity of the first certificate in PEM text.
    pub fn from_pem(pem: &[u8]) -> Result<CertIdentity, IdentityError> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;

        let der = CertificateDer::pem_slice_iter(pem)
            .next()
            .ok_or(IdentityError::NoPem)?;
        let der = der.map_err(|e| IdentityError::Parse(e.to_string()))?;
        Self::from_der(&der)
    }
}

impl ConnInfo {
    /// The client certificate of this request and how it reached us: our own handshake first,
    /// else one forwarded by a trusted proxy. `None`: the client is unauthenticated.
    pub fn client_cert(&self) -> Option<(CertSource, &CertIdentity)> {
        self.tls_client_cert
            .as_ref()
            .map(|c| (CertSource::Tls, c))
            .or_else(|| {
                self.forwarded_client_cert
                    .as_ref()
                    .map(|c| (CertSource::TrustedProxy, c))
            })
    }

    /// The client's IP address: the one a trusted proxy forwarded, else the TCP peer's.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.forwarded_for.or(self.peer_addr.map(|a| a.ip()))
    }
}
