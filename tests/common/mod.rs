//! Shared helpers for the integration tests: a dev PKI made by `airlockd certs init`, the real
//! `airlockd` binary started on `127.0.0.1:0` with a temp config, and mTLS clients.
//! See `tests/common/README.md`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod cluster;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TLS server configuration with the PKI's server certificate and no client
/// authentication: what the tests' own receivers (a syslog receiver, an OTLP collector)
/// present to the daemon.
pub fn receiver_tls(pki: &Pki) -> Arc<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.path("server.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.path("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    Arc::new(config)
}

/// The `airlockd` binary under test.
pub const AIRLOCKD: &str = env!("CARGO_BIN_EXE_airlockd");

/// The model name of the default test-engine model.
pub const TEST_MODEL: &str = "test-model";

/// A prompt the test engine echoes back one word per token: with `test_token_delay = "100ms"`
/// a streamed reply takes about two seconds.
pub const TWENTY_WORDS: &str = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty";

/// Runs `airlockd` with `args` to completion; returns (status, stdout, stderr).
pub fn airlockd(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(AIRLOCKD)
        .args(args)
        .output()
        .expect("run airlockd");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// POSTs `body` as JSON; the status and the JSON answer.
pub async fn post_json(
    client: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let resp = client.post(url).json(body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// POSTs `body` as JSON; the status and the answer's text (an SSE stream, or JSON).
pub async fn post_text(
    client: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    body: &serde_json::Value,
) -> (u16, String) {
    let resp = client.post(url).json(body).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The JSON events of an SSE body that ends with `[DONE]` (which is checked and left out).
pub fn sse_chunks(text: &str) -> Vec<serde_json::Value> {
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap())
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

/// A `[[models]]` entry serving the model directory `path` as `name` on the CPU.
pub fn cpu_model(name: &str, path: &Path) -> String {
    format!("[[models]]\nname = \"{name}\"\npath = {path:?}\ndevice = \"cpu\"\n")
}

/// The audit log at `db` as records (`airlockd audit export --format jsonl`).
pub fn audit_records(db: &Path) -> Vec<serde_json::Value> {
    let (status, out, err) = airlockd(&[
        "audit",
        "export",
        "--db",
        db.to_str().unwrap(),
        "--format",
        "jsonl",
    ]);
    assert!(status.success(), "audit export: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A well-formed API key with `key`'s id and another secret: it passes the format and
/// checksum check (so the daemon looks it up and hashes it) but does not verify. What a
/// guesser who knows a key id sends.
pub fn wrong_secret(key: &str) -> String {
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    // `alk_` + 12-character id + `_`, then a 22-character secret and a 6-character CRC32.
    let secret: String = key[17..39]
        .bytes()
        .map(|b| char::from(BASE62[(BASE62.iter().position(|c| *c == b).unwrap() + 1) % 62]))
        .collect();
    let body = format!("{}{secret}", &key[..17]);
    let mut crc = !body.bytes().fold(!0u32, |mut crc, byte| {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
        crc
    });
    let mut tail = [b'0'; 6];
    for slot in tail.iter_mut().rev() {
        *slot = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    let wrong = body + std::str::from_utf8(&tail).unwrap();
    assert!(
        airlock_policy::ApiKey::parse(&wrong).is_ok(),
        "not well-formed: {wrong}"
    );
    wrong
}

/// A development PKI in a temp directory: `ca.pem`, `server.pem`/`.key`, `crl.pem`,
/// `client-NAME.pem`/`.key` per tenant.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// `airlockd certs init --dir TMP --tenant T...`.
    pub fn new(tenants: &[&str]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["certs", "init", "--dir", dir.path().to_str().unwrap()];
        for t in tenants {
            args.extend(["--tenant", t]);
        }
        let (status, out, err) = airlockd(&args);
        assert!(status.success(), "certs init failed: {out}{err}");
        // Keys for the default `[audit]` section (see `TestConfig::audit`).
        let keys = dir.path().join("audit");
        let (status, out, err) = airlockd(&["audit", "keygen", "--dir", keys.to_str().unwrap()]);
        assert!(status.success(), "audit keygen failed: {out}{err}");
        Pki { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// (`client-NAME.pem`, `client-NAME.key`).
    pub fn client(&self, tenant: &str) -> (PathBuf, PathBuf) {
        (
            self.path(&format!("client-{tenant}.pem")),
            self.path(&format!("client-{tenant}.key")),
        )
    }

    /// `airlockd certs revoke --dir DIR --cert client-NAME.pem`.
    pub fn revoke(&self, tenant: &str) {
        let (cert, _) = self.client(tenant);
        let (status, out, err) = airlockd(&[
            "certs",
            "revoke",
            "--dir",
            self.dir().to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
        ]);
        assert!(status.success(), "certs revoke failed: {out}{err}");
    }
}

/// How to configure the daemon under test. `Default` is TLS mode with client certificates
/// from the PKI, its CRL, and one test-engine model named [`TEST_MODEL`].
#[derive(Clone, Debug)]
pub struct TestConfig {
    /// `"tls"` or `"proxy"`.
    pub mode: &'static str,
    /// Extra lines for `[listener]` (e.g. `handshake_timeout = "1s"`).
    pub listener: String,
    /// Lines for `[listener.proxy]` in proxy mode.
    pub proxy: String,
    /// Lines for `[limits]`.
    pub limits: String,
    /// The `[[models]]` entries.
    pub models: String,
    /// Anything else, appended verbatim.
    pub extra: String,
    /// Extra lines for the `[audit]` section. `Some` (the default: `Some("")`) writes the
    /// section with the PKI's audit keys and `db = "audit.db"`, relative to the config file,
    /// so each daemon gets its own log in its own temp directory; `None` writes no section
    /// (for a test that brings its own in `extra`).
    pub audit: Option<String>,
}

impl Default for TestConfig {
    fn default() -> Self {
        TestConfig {
            mode: "tls",
            listener: String::new(),
            proxy: "trusted_proxies = [\"127.0.0.1\"]\n".into(),
            limits: "shutdown_grace = \"10s\"\n".into(),
            models: format!("[[models]]\nname = \"{TEST_MODEL}\"\nbackend = \"test\"\n"),
            extra: String::new(),
            audit: Some(String::new()),
        }
    }
}

impl TestConfig {
    /// The TOML text, with file paths pointing into `pki`.
    pub fn to_toml(&self, pki: &Pki) -> String {
        let q = |p: PathBuf| format!("{:?}", p.to_str().unwrap());
        let mut s = format!(
            "[listener]\nmode = \"{}\"\naddress = \"127.0.0.1:0\"\n{}\n",
            self.mode, self.listener
        );
        if self.mode == "tls" {
            s += &format!(
                "[listener.tls]\ncert = {}\nkey = {}\nclient_ca = {}\ncrls = [{}]\n\n",
                q(pki.path("server.pem")),
                q(pki.path("server.key")),
                q(pki.ca()),
                q(pki.path("crl.pem")),
            );
        } else {
            s += &format!("[listener.proxy]\n{}\n", self.proxy);
        }
        s += &format!(
            "[limits]\n{}\n{}\n[logging]\nlevel = \"info\"\n{}",
            self.limits, self.models, self.extra
        );
        if let Some(lines) = &self.audit {
            s += &format!(
                "\n[audit]\ndb = \"audit.db\"\nsigning_key = {}\ndigest_key = {}\n{lines}\n",
                q(pki.path("audit/audit-signing.key")),
                q(pki.path("audit/audit-digest.key")),
            );
        }
        s
    }
}

/// A running `airlockd serve`, killed on drop.
pub struct Daemon {
    child: Child,
    /// The bound address, from the `listening on https://ADDR` line on stdout.
    pub addr: SocketAddr,
    pub config_path: PathBuf,
    logs: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
    _config_dir: tempfile::TempDir,
}

impl Daemon {
    /// Writes `cfg` to a temp file and starts the daemon; waits (up to 60 s) for it to listen.
    pub fn start(pki: &Pki, cfg: &TestConfig) -> Daemon {
        Self::start_toml(&cfg.to_toml(pki))
    }

    /// Starts the daemon with `extra` config (tenants, …) and its own audit log in `audit`:
    /// fresh keys from `airlockd audit keygen`, `audit.db` beside them, so a test can read
    /// the records back with `airlockd audit export --db AUDIT/audit.db`.
    pub fn start_audited(pki: &Pki, audit: &Path, extra: &str) -> Daemon {
        let dir = audit.to_str().unwrap();
        let (status, out, err) = airlockd(&["audit", "keygen", "--dir", dir]);
        assert!(status.success(), "keygen: {out}{err}");
        let section = format!(
            "[audit]\ndb = {:?}\nsigning_key = {:?}\ndigest_key = {:?}\n",
            audit.join("audit.db"),
            audit.join("audit-signing.key"),
            audit.join("audit-digest.key"),
        );
        let cfg = TestConfig {
            extra: format!("{section}\n{extra}"),
            audit: None,
            ..TestConfig::default()
        };
        Self::start(pki, &cfg)
    }

    /// Starts the daemon with exactly this config text.
    pub fn start_toml(toml: &str) -> Daemon {
        Self::start_toml_env(toml, &[])
    }

    /// Starts the daemon with this config text and extra environment variables.
    pub fn start_toml_env(toml: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("airlockd.toml");
        std::fs::write(&config_path, toml).unwrap();
        let args = ["serve", "--config", config_path.to_str().unwrap()];
        Self::spawn(&args, env, config_path.clone(), dir)
    }

    /// Runs `airlockd ARGS` (e.g. `dev --dir D --port 0`) and waits for its `listening on` line.
    pub fn start_args(args: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        Self::spawn(args, &[], PathBuf::new(), dir)
    }

    fn spawn(
        args: &[&str],
        env: &[(&str, &str)],
        config_path: PathBuf,
        dir: tempfile::TempDir,
    ) -> Daemon {
        let mut child = Command::new(AIRLOCKD)
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let stdout_text = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let sink = stdout_text.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("listening on ") {
                    let addr = rest
                        .trim_start_matches("https://")
                        .trim_start_matches("http://")
                        .to_owned();
                    let _ = tx.send(addr);
                }
                let mut out = sink.lock().unwrap();
                out.push_str(&line);
                out.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(addr) => addr.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!("airlockd did not start; its log:\n{}", logs.lock().unwrap());
            }
        };
        Daemon {
            child,
            addr,
            config_path,
            logs,
            stdout: stdout_text,
            _config_dir: dir,
        }
    }

    /// Everything the daemon printed to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// `https://localhost:PORT` + `path` (the dev server certificate names localhost).
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{}", self.addr.port(), path)
    }

    /// `http://127.0.0.1:PORT` + `path`, for proxy mode.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The admin listener's URL, from the `admin listening on SCHEME://ADDR` line (printed
    /// right after the `listening on` line `start` waits for). Needs an `[admin]` section.
    pub fn admin_url(&self) -> String {
        let started = Instant::now();
        loop {
            if let Some(url) = self
                .stdout()
                .lines()
                .find_map(|l| l.strip_prefix("admin listening on "))
            {
                return url.to_owned();
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no admin line in stdout: {}",
                self.stdout()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The admin listener's `GET /status` report (plain-HTTP admin listener).
    pub async fn admin_status(&self) -> serde_json::Value {
        http_client()
            .get(format!("{}/status", self.admin_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The admin listener's `GET /metrics` text (plain-HTTP admin listener).
    pub async fn metrics(&self) -> String {
        http_client()
            .get(format!("{}/metrics", self.admin_url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A reqwest client presenting `tenant`'s certificate, resolving localhost to the daemon.
    pub fn client(&self, pki: &Pki, tenant: &str) -> reqwest::Client {
        let tls = client_tls(&pki.ca(), Some(pki.client(tenant)));
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .resolve("localhost", self.addr)
            .build()
            .unwrap()
    }

    /// The audit log of a daemon started with [`TestConfig`]'s default `[audit]` section
    /// (`audit.db` beside its config file).
    pub fn audit_db(&self) -> PathBuf {
        self.config_path.parent().unwrap().join("audit.db")
    }

    /// Stops the daemon (SIGTERM; it must exit within 30 s), so that everything it
    /// recorded is in its audit log.
    pub fn stop(&mut self) {
        self.signal("TERM");
        assert!(
            self.wait_exit(Duration::from_secs(30)).is_some(),
            "no exit after SIGTERM"
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`, then waits for the process to be gone: a crash, nothing flushed or closed.
    pub fn kill_9(&mut self) {
        self.signal("KILL");
        assert!(
            self.wait_exit(Duration::from_secs(10)).is_some(),
            "alive after SIGKILL"
        );
    }

    /// `airlockd audit verify` of [`Self::audit_db`] with the PKI's audit key: the exit code
    /// and the output.
    pub fn verify_audit(&self, pki: &Pki) -> (i32, String) {
        let (status, out, err) = airlockd(&[
            "audit",
            "verify",
            "--db",
            self.audit_db().to_str().unwrap(),
            "--pubkey",
            pki.path("audit/audit-signing.pub").to_str().unwrap(),
        ]);
        (status.code().unwrap_or(-1), format!("{out}{err}"))
    }

    /// Sends a signal by name (`HUP`, `TERM`, `INT`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Everything the daemon logged to stderr so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`; false after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_for_log_count(needle, 1, timeout)
    }

    /// Waits until the log contains `needle` at least `count` times; false after `timeout`.
    pub fn wait_for_log_count(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.logs().matches(needle).count() >= count {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits for the process to exit; `None` after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain-HTTP reqwest client (proxy mode tests). reqwest is built without a default
/// crypto provider, so even a plain client needs one configured.
pub fn http_client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap()
}

/// A rustls client config (ring provider) trusting `ca`, presenting `client` if given,
/// offering ALPN h2 and http/1.1.
pub fn client_tls(ca: &Path, client: Option<(PathBuf, PathBuf)>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// One HTTP/1.1 `GET path` over a fresh TLS connection to `addr` (SNI localhost); returns the
/// raw response text, or the I/O or TLS error (a refused client certificate surfaces here,
/// at the handshake or on the first read).
pub async fn raw_get(
    addr: SocketAddr,
    mut tls: rustls::ClientConfig,
    path: &str,
) -> std::io::Result<String> {
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// The SHA-256 (hex) of the leaf certificate a fresh TLS connection to `addr` is served.
pub async fn server_cert_sha256(addr: SocketAddr, tls: rustls::ClientConfig) -> String {
    use sha2::Digest;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (_, session) = stream.get_ref();
    let leaf = &session.peer_certificates().unwrap()[0];
    hex::encode(sha2::Sha256::digest(leaf))
}
