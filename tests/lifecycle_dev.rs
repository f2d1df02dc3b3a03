//! `airlockd dev`: one command to a working mTLS endpoint with the built-in model.

mod common;

use common::{Daemon, client_tls, raw_get};

#[tokio::test]
async fn dev_serves_the_default_model_and_prints_working_instructions() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("airlock-dev");
    let daemon = Daemon::start_args(&["dev", "--dir", work.to_str().unwrap(), "--port", "0"]);

    // Wait for the banner (printed right after the listening line).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !daemon.stdout().contains("curl ") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = daemon.stdout();
    let certs = std::fs::canonicalize(&work).unwrap().join("certs");
    for file in ["client-demo.pem", "client-demo.key", "ca.pem"] {
        assert!(
            out.contains(certs.join(file).to_str().unwrap()),
            "absolute {file} path in:\n{out}"
        );
    }
    assert!(
        out.contains(&format!(
            "https://localhost:{}/v1/chat/completions",
            daemon.addr.port()
        )),
        "{out}"
    );
    assert!(out.contains("tls.load_cert_chain("), "{out}");

    let tls = client_tls(
        &certs.join("ca.pem"),
        Some((certs.join("client-demo.pem"), certs.join("client-demo.key"))),
    );
    let text = raw_get(daemon.addr, tls, "/v1/models").await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(airlock_engine::default_model::NAME), "{text}");
    drop(daemon);

    // A second run reuses the certificates.
    let before = std::fs::read(certs.join("ca.pem")).unwrap();
    let again = Daemon::start_args(&["dev", "--dir", work.to_str().unwrap(), "--port", "0"]);
    assert_eq!(before, std::fs::read(certs.join("ca.pem")).unwrap());
    drop(again);
}
