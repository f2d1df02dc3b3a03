use super::*;
use crate::certs;
use crate::config::TlsConfig;

#[test]
fn builds_from_a_dev_pki() {
    let dir = tempfile::tempdir().unwrap();
    certs::init(dir.path(), &["alice".to_owned()]).unwrap();
    let cfg = TlsConfig {
        cert: dir.path().join(certs::SERVER_CERT),
        key: dir.path().join(certs::SERVER_KEY),
        client_ca: Some(dir.path().join(certs::CA_CERT)),
        crls: vec![dir.path().join(certs::CRL)],
        danger_no_client_auth: false,
    };
    let config = server_config(&cfg).unwrap();
    assert_eq!(
        config.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    assert_eq!(config.send_tls13_tickets, 0);

    // Revoking re-signs the CRL, which must still load.
    let (cert, _) = certs::client_paths(dir.path(), "alice");
    let report = certs::revoke(dir.path(), &cert).unwrap();
    assert_eq!(report.crl_number, 2);
    assert!(!report.already_revoked);
    assert!(certs::revoke(dir.path(), &cert).unwrap().already_revoked);
    server_config(&cfg).unwrap();
}

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    certs::init(dir.path(), &[]).unwrap();
    let cfg = TlsConfig {
        cert: dir.path().join(certs::SERVER_CERT),
        key: dir.path().join("missing.key"),
        client_ca: Some(dir.path().join(certs::CA_CERT)),
        crls: vec![],
        danger_no_client_auth: false,
    };
    let e = server_config(&cfg).unwrap_err().to_string();
    assert!(e.contains("missing.key"), "{e}");

    let cfg = TlsConfig {
        key: dir.path().join(certs::SERVER_CERT),
        ..cfg
    };
    let e = server_config(&cfg).unwrap_err().to_string();
    assert!(e.contains("server.pem") && e.contains("private key"), "{e}");
}

#[test]
fn key_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    certs::init(dir.path(), &["bob".to_owned()]).unwrap();
    for name in [certs::CA_KEY, certs::SERVER_KEY, "client-bob.key"] {
        let mode = std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
}

#[test]
fn open_connections_are_rechecked_against_new_crls() {
    let dir = tempfile::tempdir().unwrap();
    certs::init(dir.path(), &["alice".to_owned(), "bob".to_owned()]).unwrap();
    let cfg = TlsConfig {
        cert: dir.path().join(certs::SERVER_CERT),
        key: dir.path().join(certs::SERVER_KEY),
        client_ca: Some(dir.path().join(certs::CA_CERT)),
        crls: vec![dir.path().join(certs::CRL)],
        danger_no_client_auth: false,
    };
    let chain = |name: &str| certs(&certs::client_paths(dir.path(), name).0).unwrap();
    let (_, before) = server_config_and_verifier(&cfg).unwrap();
    assert!(still_valid(before.as_ref(), &chain("alice")));
    assert!(
        !still_valid(before.as_ref(), &[]),
        "a certificate is required"
    );

    certs::revoke(dir.path(), &certs::client_paths(dir.path(), "alice").0).unwrap();
    let (_, after) = server_config_and_verifier(&cfg).unwrap();
    assert!(!still_valid(after.as_ref(), &chain("alice")));
    assert!(still_valid(after.as_ref(), &chain("bob")));

    let open = TlsConfig {
        client_ca: None,
        crls: vec![],
        danger_no_client_auth: true,
        ..cfg
    };
    let (_, none) = server_config_and_verifier(&open).unwrap();
    assert!(still_valid(none.as_ref(), &[]));
}
