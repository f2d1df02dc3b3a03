//! `airlockd certs`: a development PKI made with rcgen. One CA signs a server certificate
//! (`localhost`, `127.0.0.1`, `::1`) and one client certificate per tenant (CN = tenant
//! name), and an (initially empty) CRL that `certs revoke` extends. See `certs/README.md`.
//!
//! This is for development and tests; production deployments bring their own CA.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// File names inside the PKI directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server.key";
pub const CRL: &str = "crl.pem";

/// How long a CRL stays valid after each signing.
const CRL_VALIDITY: Duration = Duration::days(30);

/// What went wrong; names the file, never prints key material.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("tenant name `{0}`: use 1 to 64 of A-Z a-z 0-9 . _ -")]
    BadTenant(String),
    #[error("{}: not issued by this CA ({})", path.display(), ca.display())]
    ForeignCert { path: PathBuf, ca: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertsError + '_ {
    move |source| CertsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The files `init` wrote (or found and kept).
#[derive(Debug, Default)]
pub struct InitReport {
    pub created: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
}

/// The paths of one client's certificate and key.
pub fn client_paths(dir: &Path, tenant: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("client-{tenant}.pem")),
        dir.join(format!("client-{tenant}.key")),
    )
}

/// Creates the CA, server certificate, CRL and one client certificate per tenant in `dir`.
/// Files that exist are kept, so `init` can add tenants to an existing CA.
pub fn init(dir: &Path, tenants: &[String]) -> Result<InitReport, CertsError> {
    for tenant in tenants {
        check_tenant(tenant)?;
    }
    fs::create_dir_all(dir).map_err(io(dir))?;
    let mut report = InitReport::default();
    let (ca_cert, ca_key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    if ca_cert.exists() && ca_key.exists() {
        report.kept.extend([ca_cert.clone(), ca_key.clone()]);
    } else {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("Airlock development CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key)?;
        write_key(&ca_key, &key)?;
        write_public(&ca_cert, &cert.pem())?;
        report.created.extend([ca_cert.clone(), ca_key.clone()]);
    }
    let issuer = load_issuer(dir)?;

    let (server_cert, server_key) = (dir.join(SERVER_CERT), dir.join(SERVER_KEY));
    if server_cert.exists() && server_key.exists() {
        report.kept.extend([server_cert, server_key]);
    } else {
        issue_server(dir, &issuer)?;
        report.created.extend([server_cert, server_key]);
    }

    let crl = dir.join(CRL);
    if crl.exists() {
        report.kept.push(crl);
    } else {
        write_crl(&crl, &issuer, 1, Vec::new())?;
        report.created.push(crl);
    }

    for tenant in tenants {
        let (cert, key) = client_paths(dir, tenant);
        if cert.exists() && key.exists() {
            report.kept.extend([cert, key]);
        } else {
            let now = OffsetDateTime::now_utc();
            issue_client(
                dir,
                tenant,
                now - Duration::hours(1),
                now + Duration::days(365),
            )?;
            report.created.extend([cert, key]);
        }
    }
    Ok(report)
}

/// Issues (or re-issues) `server.pem`/`server.key` for localhost, 127.0.0.1 and ::1.
fn issue_server(dir: &Path, issuer: &Issuer<'_, KeyPair>) -> Result<(), CertsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
    params.distinguished_name = name("localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(365);
    let cert = params.signed_by(&key, issuer)?;
    write_key(&dir.join(SERVER_KEY), &key)?;
    write_public(&dir.join(SERVER_CERT), &cert.pem())
}

/// Issues `client-NAME.pem`/`.key` (CN = `tenant`) valid from `not_before` to `not_after`,
/// overwriting any existing pair. Tests use it to make expired certificates.
pub fn issue_client(
    dir: &Path,
    tenant: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(PathBuf, PathBuf), CertsError> {
    check_tenant(tenant)?;
    let issuer = load_issuer(dir)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(tenant);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.signed_by(&key, &issuer)?;
    let (cert_path, key_path) = client_paths(dir, tenant);
    write_key(&key_path, &key)?;
    write_public(&cert_path, &cert.pem())?;
    Ok((cert_path, key_path))
}

/// What `revoke` did.
#[derive(Debug)]
pub struct RevokeReport {
    /// Hex serial of the revoked certificate.
    pub serial: String,
    /// Whether it was already on the CRL (the CRL is re-signed either way).
    pub already_revoked: bool,
    pub crl_number: u64,
}

/// Adds `cert`'s serial to `DIR/crl.pem`, re-signed with the next CRL number and a fresh
/// nextUpdate. The daemon picks the new CRL up on SIGHUP.
pub fn revoke(dir: &Path, cert: &Path) -> Result<RevokeReport, CertsError> {
    let pem = fs::read(cert).map_err(io(cert))?;
    let der = first_pem(cert, &pem, "CERTIFICATE")?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).map_err(|e| CertsError::Parse {
        path: cert.to_path_buf(),
        reason: e.to_string(),
    })?;
    let ca_path = dir.join(CA_CERT);
    let ca_pem = fs::read(&ca_path).map_err(io(&ca_path))?;
    let ca_der = first_pem(&ca_path, &ca_pem, "CERTIFICATE")?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).map_err(|e| CertsError::Parse {
        path: ca_path.clone(),
        reason: e.to_string(),
    })?;
    if parsed.issuer().as_raw() != ca.subject().as_raw() {
        return Err(CertsError::ForeignCert {
            path: cert.to_path_buf(),
            ca: ca_path,
        });
    }
    let serial = parsed.raw_serial().to_vec();

    let crl_path = dir.join(CRL);
    let (number, mut revoked) = read_crl(&crl_path)?;
    let already_revoked = revoked
        .iter()
        .any(|r| r.serial_number.as_ref() == serial.as_slice());
    if !already_revoked {
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: OffsetDateTime::now_utc(),
            reason_code: None,
            invalidity_date: None,
        });
    }
    let issuer = load_issuer(dir)?;
    let crl_number = number + 1;
    write_crl(&crl_path, &issuer, crl_number, revoked)?;
    Ok(RevokeReport {
        serial: hex::encode(&serial),
        already_revoked,
        crl_number,
    })
}

/// The CRL number and revoked entries of an existing CRL (`(0, [])` when there is none).
fn read_crl(path: &Path) -> Result<(u64, Vec<RevokedCertParams>), CertsError> {
    let pem = match fs::read(path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, Vec::new())),
        Err(e) => {
            return Err(CertsError::Io {
                path: path.to_path_buf(),
                source: e,
            });
        }
    };
    let der = first_pem(path, &pem, "X509 CRL")?;
    let (_, crl) = x509_parser::parse_x509_crl(&der).map_err(|e| CertsError::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let number = crl
        .crl_number()
        .map(|n| {
            n.to_bytes_be().iter().fold(0u64, |acc, b| {
                acc.saturating_mul(256).saturating_add(u64::from(*b))
            })
        })
        .unwrap_or(0);
    let revoked = crl
        .iter_revoked_certificates()
        .map(|r| RevokedCertParams {
            serial_number: SerialNumber::from_slice(r.raw_serial()),
            revocation_time: r.revocation_date.to_datetime(),
            reason_code: None,
            invalidity_date: None,
        })
        .collect();
    Ok((number, revoked))
}

fn write_crl(
    path: &Path,
    issuer: &Issuer<'_, KeyPair>,
    number: u64,
    revoked_certs: Vec<RevokedCertParams>,
) -> Result<(), CertsError> {
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + CRL_VALIDITY,
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(issuer)?;
    write_public(path, &crl.pem()?)
}

fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, CertsError> {
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let cert = fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
    let key = fs::read_to_string(&key_path).map_err(io(&key_path))?;
    // rcgen's error says what is wrong with the PEM without echoing it.
    let key = KeyPair::from_pem(&key).map_err(|e| CertsError::Parse {
        path: key_path.clone(),
        reason: e.to_string(),
    })?;
    Issuer::from_ca_cert_pem(&cert, key).map_err(|e| CertsError::Parse {
        path: cert_path,
        reason: e.to_string(),
    })
}

fn first_pem(path: &Path, pem: &[u8], label: &str) -> Result<Vec<u8>, CertsError> {
    use rustls_pki_types::pem::{PemObject, SectionKind};
    let wanted = match label {
        "X509 CRL" => SectionKind::Crl,
        _ => SectionKind::Certificate,
    };
    for section in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(pem) {
        let (kind, der) = section.map_err(|e| CertsError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if kind == wanted {
            return Ok(der);
        }
    }
    Err(CertsError::Parse {
        path: path.to_path_buf(),
        reason: format!("no PEM {label} found"),
    })
}

fn check_tenant(tenant: &str) -> Result<(), CertsError> {
    let ok = (1..=64).contains(&tenant.len())
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CertsError::BadTenant(tenant.to_owned()))
    }
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// 16 random bytes, positive and without a leading zero byte (RFC 5280 §4.1.2.2).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Writes a private key readable by its owner only (mode 0600), replacing any old file.
fn write_key(path: &Path, key: &KeyPair) -> Result<(), CertsError> {
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    file.write_all(key.serialize_pem().as_bytes())
        .map_err(io(path))
}

fn write_public(path: &Path, pem: &str) -> Result<(), CertsError> {
    // Write then rename, so a daemon reloading mid-write never reads half a CRL.
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, pem).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}
