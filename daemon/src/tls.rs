//! The TLS state of the listener: server certificate, client-certificate verifier with CRLs,
//! protocol versions, cipher suites and ALPN, built from [`TlsFiles`] (the config's `TlsConfig`) with rustls and the
//! `ring` provider. Built at start and again on every reload; a build that fails leaves the
//! running state alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::{CryptoProvider, ring};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};

/// The files and switches the TLS state is built from. The validated `[listener.tls]` and
/// `[admin.tls]` sections (the config's `TlsConfig`) provide them; a trait rather than that
/// type so that config validation can build the TLS state to check its files without this
/// module depending on the config.
pub trait TlsFiles {
    /// The server certificate chain (PEM).
    fn cert(&self) -> &Path;
    /// The server certificate's private key (PEM).
    fn key(&self) -> &Path;
    /// CA bundle client certificates must chain to; `None` only without client auth.
    fn client_ca(&self) -> Option<&Path>;
    /// CRL files (PEM).
    fn crls(&self) -> &[PathBuf];
    /// Serve without verifying client certificates (labs only).
    fn danger_no_client_auth(&self) -> bool;
}

/// Why the TLS state could not be built. Names the file; never prints key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("{}: no {what} found", path.display())]
    Empty { path: PathBuf, what: &'static str },
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("server certificate and key: {0}")]
    ServerCert(String),
    #[error("client certificate and key: {0}")]
    ClientCert(String),
}

/// ALPN protocols offered, in preference order.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Only AEAD suites with forward secrecy: TLS 1.3's three and TLS 1.2 ECDHE with AES-GCM or
/// ChaCha20-Poly1305 (no CBC, no static RSA).
fn provider() -> CryptoProvider {
    let mut provider = ring::default_provider();
    provider.cipher_suites = vec![
        ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    provider
}

/// Builds the rustls server configuration, reading every file named in `cfg`.
///
/// Client certificates are required and verified against `client_ca`. With CRLs configured,
/// the leaf certificate's revocation status is checked against them; a leaf whose issuer has
/// no CRL among them is refused (unknown status fails closed), and an expired CRL (past its
/// nextUpdate) fails every handshake it would have to vouch for. Session resumption is then
/// disabled, so that a certificate revoked by a reload cannot ride on an earlier session.
pub fn server_config(cfg: &impl TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_and_verifier(cfg).map(|(config, _)| config)
}

/// [`server_config`], with the client-certificate verifier it uses: the server keeps it to
/// re-check the certificates of connections already open when a reload brings new CAs or
/// CRLs.
pub fn server_config_and_verifier(
    cfg: &impl TlsFiles,
) -> Result<(Arc<ServerConfig>, Arc<dyn ClientCertVerifier>), TlsError> {
    server_config_admitting(cfg, None)
}

/// Decides, after the chain verified, whether a client certificate (the leaf) is admitted
/// at all: an engine-role node admits only the gateways its config names.
pub type Admit = Arc<dyn Fn(&CertificateDer<'_>) -> bool + Send + Sync>;

/// [`server_config_and_verifier`], with `admit` (when given) also deciding every client
/// certificate: one it refuses fails the handshake (and, on reload, closes a connection
/// already open on it) as an untrusted one would.
pub fn server_config_admitting(
    cfg: &impl TlsFiles,
    admit: Option<Admit>,
) -> Result<(Arc<ServerConfig>, Arc<dyn ClientCertVerifier>), TlsError> {
    let provider = Arc::new(provider());
    let verifier = if cfg.danger_no_client_auth() {
        WebPkiClientVerifier::no_client_auth()
    } else {
        let Some(ca_path) = cfg.client_ca() else {
            return Err(TlsError::Verifier(
                "listener.tls.client_ca is not set".into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        for cert in certs(ca_path)? {
            roots.add(cert).map_err(|e| TlsError::Pem {
                path: ca_path.to_path_buf(),
                reason: e.to_string(),
            })?;
        }
        let mut crls = Vec::new();
        for path in cfg.crls() {
            crls.extend(crls_in(path)?);
        }
        let builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        let builder = if crls.is_empty() {
            builder
        } else {
            builder
                .with_crls(crls)
                .only_check_end_entity_revocation()
                .enforce_revocation_expiration()
        };
        builder
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?
    };
    let verifier: Arc<dyn ClientCertVerifier> = match admit {
        Some(admit) => Arc::new(Admitting {
            inner: verifier,
            admit,
        }),
        None => verifier,
    };

    let chain = certs(cfg.cert())?;
    let key = private_key(cfg.key())?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::ServerCert(e.to_string()))?
        .with_client_cert_verifier(Arc::clone(&verifier))
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::ServerCert(e.to_string()))?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    if !cfg.crls().is_empty() {
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(NoServerSessionStorage {});
    }
    Ok((Arc::new(config), verifier))
}

/// A client-certificate verifier that also asks [`Admit`] about every verified leaf.
struct Admitting {
    inner: Arc<dyn ClientCertVerifier>,
    admit: Admit,
}

impl std::fmt::Debug for Admitting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitting")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for Admitting {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if (self.admit)(end_entity) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

/// Whether a connection's client certificate chain (leaf first; empty without one) still
/// passes `verifier`: the check a new handshake would make, applied to a connection that
/// is already open. Fails closed: a verifier that demands a certificate refuses a
/// connection without one.
pub fn still_valid(verifier: &dyn ClientCertVerifier, chain: &[CertificateDer<'static>]) -> bool {
    if !verifier.offer_client_auth() {
        return true;
    }
    match chain.split_first() {
        None => !verifier.client_auth_mandatory(),
        Some((leaf, intermediates)) => verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .is_ok(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file.
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

fn crls_in(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let pem = read(path)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if crls.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "PEM X509 CRL",
        });
    }
    Ok(crls)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    // The parse error never contains key bytes, only the PEM section problem.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        reason: format!("no usable private key: {e}"),
    })
}

/// A TLS client configuration: `ca` (PEM) as the only roots, and a client certificate when
/// one is given, with the listener's protocol versions and suites; an error names the key
/// (`ca`, `client_cert`, `client_key`) of what did not load. Remote engine pools
/// (`crate::remote`, always with a client certificate), audit sinks and the OTLP client
/// (`crate::telemetry::http`) use it.
pub fn client_config(
    ca: &Path,
    client: Option<&(PathBuf, PathBuf)>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, (&'static str, String)> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).map_err(|e| ("ca", format!("{}: {e}", ca.display())))?;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| ("ca", e.to_string()))?;
        roots.add(cert).map_err(|e| ("ca", e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(("ca", "no certificate in the file".to_owned()));
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ("ca", e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let pem = std::fs::read(cert).map_err(|e| ("client_cert", e.to_string()))?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ("client_cert", e.to_string()))?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| ("client_key", e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ("client_cert", e.to_string()))?
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests;
