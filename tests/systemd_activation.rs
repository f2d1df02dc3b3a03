//! systemd integration: socket activation (`listener.address = "systemd"`) and credentials
//! (`credential:NAME` paths). The real `airlockd` is started by `systemd-socket-activate`
//! (Debian package `systemd`), which binds the socket and passes it as fd 3 with
//! `LISTEN_FDS`/`LISTEN_PID` exactly as systemd's `.socket` units do, and starts the daemon
//! on the first connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{AIRLOCKD, Pki, TEST_MODEL, TestConfig, client_tls};

const SOCKET_ACTIVATE: &str = "systemd-socket-activate";

/// The daemon under `systemd-socket-activate`; killed on drop.
struct Activated {
    child: Child,
    /// `listening on …` lines from stdout.
    lines: mpsc::Receiver<String>,
    logs: std::sync::Arc<std::sync::Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Activated {
    /// `systemd-socket-activate -l LISTEN [-E CREDENTIALS_DIRECTORY=…] airlockd serve`.
    fn start(listen: &str, toml: &str, credentials: Option<&Path>) -> Activated {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("airlockd.toml");
        std::fs::write(&config, toml).unwrap();
        let mut cmd = Command::new(SOCKET_ACTIVATE);
        cmd.args(["-l", listen]);
        if let Some(creds) = credentials {
            cmd.arg("-E")
                .arg(format!("CREDENTIALS_DIRECTORY={}", creds.display()));
        }
        let mut child = cmd
            .args([AIRLOCKD, "serve", "--config", config.to_str().unwrap()])
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {SOCKET_ACTIVATE} (Debian package `systemd`): {e}")
            });
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let logs = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = logs.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        Activated {
            child,
            lines,
            logs,
            _dir: dir,
        }
    }

    /// The first stdout line of the daemon (its `listening on` line).
    fn first_line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("no stdout line; log:\n{}", self.logs.lock().unwrap()))
    }

    /// Waits (bounded) for the wrapper to report the bound socket on stderr.
    fn wait_bound(&self) {
        for _ in 0..600 {
            if self.logs.lock().unwrap().contains("Listening on") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{SOCKET_ACTIVATE} did not bind: {}",
            self.logs.lock().unwrap()
        );
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago (`systemd-socket-activate` cannot bind port 0).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn quoted(p: &Path) -> String {
    format!("{:?}", p.to_str().unwrap())
}

#[tokio::test]
async fn socket_activated_tls_with_credentials_serves_mtls() {
    let pki = Pki::new(&["demo"]);
    // The secrets go to a "credentials directory", as systemd's LoadCredential= would copy them.
    let creds = tempfile::tempdir().unwrap();
    for (from, name) in [
        ("server.key", "tls.key"),
        ("audit/audit-signing.key", "audit-signing.key"),
        ("audit/audit-digest.key", "audit-digest.key"),
    ] {
        std::fs::copy(pki.path(from), creds.path().join(name)).unwrap();
    }
    let toml = TestConfig::default()
        .to_toml(&pki)
        .replace("address = \"127.0.0.1:0\"", "address = \"systemd\"")
        .replace(&quoted(&pki.path("server.key")), "\"credential:tls.key\"")
        .replace(
            &quoted(&pki.path("audit/audit-signing.key")),
            "\"credential:audit-signing.key\"",
        )
        .replace(
            &quoted(&pki.path("audit/audit-digest.key")),
            "\"credential:audit-digest.key\"",
        );
    assert_eq!(toml.matches("credential:").count(), 3, "{toml}");

    let port = free_port();
    let daemon = Activated::start(&format!("127.0.0.1:{port}"), &toml, Some(creds.path()));
    daemon.wait_bound();
    // The first connection starts the daemon; it waits in the socket's backlog meanwhile.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(client_tls(&pki.ca(), Some(pki.client("demo"))))
        .resolve("localhost", addr)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let resp = client
        .get(format!("https://localhost:{port}/v1/models"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", daemon.logs.lock().unwrap()));
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains(TEST_MODEL));
    // The start contract holds for an inherited socket too, with its real address.
    assert_eq!(
        daemon.first_line(),
        format!("listening on https://127.0.0.1:{port}")
    );

    // Without a client certificate the inherited listener refuses, as a bound one does.
    let anonymous = common::raw_get(addr, client_tls(&pki.ca(), None), "/v1/models").await;
    assert!(
        !anonymous
            .as_ref()
            .is_ok_and(|r| r.starts_with("HTTP/1.1 200")),
        "{anonymous:?}"
    );
}

#[test]
fn socket_activated_unix_socket_in_proxy_mode() {
    let pki = Pki::new(&[]);
    let cfg = TestConfig {
        mode: "proxy",
        proxy: "trusted_proxies = [\"unix\"]\n".into(),
        ..TestConfig::default()
    };
    let toml = cfg
        .to_toml(&pki)
        .replace("address = \"127.0.0.1:0\"", "address = \"systemd\"");
    let sockets = tempfile::tempdir().unwrap();
    let path = sockets.path().join("airlockd.sock");
    let daemon = Activated::start(path.to_str().unwrap(), &toml, None);
    daemon.wait_bound();
    let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(
        daemon.first_line(),
        format!("listening on unix:{}", path.display())
    );
    // The socket file belongs to the .socket unit: the daemon must not remove it on exit.
    drop(daemon);
    assert!(path.exists(), "the daemon removed systemd's socket file");
}

#[test]
fn tls_mode_refuses_a_passed_unix_socket() {
    let pki = Pki::new(&[]);
    let toml = TestConfig::default()
        .to_toml(&pki)
        .replace("address = \"127.0.0.1:0\"", "address = \"systemd\"");
    let sockets = tempfile::tempdir().unwrap();
    let path = sockets.path().join("airlockd.sock");
    let mut daemon = Activated::start(path.to_str().unwrap(), &toml, None);
    daemon.wait_bound();
    let _ = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let status = daemon.child.wait().unwrap();
    assert!(!status.success());
    let logs = daemon.logs.lock().unwrap().clone();
    assert!(
        logs.contains("Unix socket, which needs listener.mode = \\\"proxy\\\"")
            || logs.contains("Unix socket, which needs listener.mode = \"proxy\""),
        "{logs}"
    );
}

#[test]
fn systemd_address_without_a_passed_socket_is_a_precise_error() {
    let pki = Pki::new(&[]);
    let toml = TestConfig::default()
        .to_toml(&pki)
        .replace("address = \"127.0.0.1:0\"", "address = \"systemd\"");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("airlockd.toml");
    std::fs::write(&config, toml).unwrap();
    let out = Command::new(AIRLOCKD)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no socket was passed"), "{err}");
}

#[test]
fn credential_paths_fail_check_config_with_file_key_and_reason() {
    let pki = Pki::new(&[]);
    let toml = TestConfig::default()
        .to_toml(&pki)
        .replace(&quoted(&pki.path("server.key")), "\"credential:tls.key\"");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("airlockd.toml");
    std::fs::write(&config, toml).unwrap();
    let check = |creds: Option<&Path>| {
        let mut cmd = Command::new(AIRLOCKD);
        cmd.args(["check-config", "--config", config.to_str().unwrap()])
            .env_remove("CREDENTIALS_DIRECTORY");
        if let Some(c) = creds {
            cmd.env("CREDENTIALS_DIRECTORY", c);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Outside systemd: the variable is unset.
    let (code, err) = check(None);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("listener.tls.key"), "{err}");
    assert!(
        err.contains("CREDENTIALS_DIRECTORY, which is not set"),
        "{err}"
    );
    // Under systemd, but the unit lacks the LoadCredential= line.
    let creds = tempfile::tempdir().unwrap();
    let (code, err) = check(Some(creds.path()));
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains(&creds.path().join("tls.key").display().to_string()),
        "{err}"
    );
    // With the credential in place the config is valid.
    std::fs::copy(pki.path("server.key"), creds.path().join("tls.key")).unwrap();
    let (code, err) = check(Some(creds.path()));
    assert_eq!(code, Some(0), "{err}");
}
