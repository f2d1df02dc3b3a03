//! Several `airlockd` processes and the servers between them: a `redis-server` for shared
//! limits, engine-role nodes, and gateways whose model is a remote pool of them
//! (tests/cluster_limits.rs, tests/remote_engine.rs, tests/multi_node.rs).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Daemon, Pki, TEST_MODEL, TestConfig};

/// A `redis-server` on a Unix socket in its own temp dir; stop and start it again on the
/// same socket.
pub struct Redis {
    bin: &'static str,
    child: Option<Child>,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Option<Redis> {
        let bin = ["redis-server", "valkey-server"].into_iter().find(|b| {
            Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        let Some(bin) = bin else {
            assert!(
                std::env::var("AIRLOCK_REQUIRE_REDIS_TEST").as_deref() != Ok("1"),
                "AIRLOCK_REQUIRE_REDIS_TEST=1 but neither redis-server nor valkey-server is installed"
            );
            eprintln!("skipped: neither redis-server nor valkey-server is installed");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("redis.sock");
        let mut redis = Redis {
            bin,
            child: None,
            socket,
            dir,
        };
        redis.resume();
        Some(redis)
    }

    pub fn resume(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new(self.bin)
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(&self.socket)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.socket.exists() {
            assert!(Instant::now() < deadline, "{} did not start", self.bin);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An engine-role node that serves the gateway certificate `gateway` only; each token
/// takes `delay`.
pub fn engine_node(pki: &Pki, delay: &str) -> Daemon {
    engine_node_with(pki, delay, "")
}

/// [`engine_node`] with `extra` sections (e.g. `[admin]`).
pub fn engine_node_with(pki: &Pki, delay: &str, extra: &str) -> Daemon {
    let cfg = TestConfig {
        listener: "role = \"engine\"\n".into(),
        models: format!(
            "[[models]]\nname = \"{TEST_MODEL}\"\nbackend = \"test\"\ntest_token_delay = \"{delay}\"\n"
        ),
        extra: format!("[listener.engine]\ncert_cn = [\"gateway\"]\n{extra}"),
        ..TestConfig::default()
    };
    Daemon::start(pki, &cfg)
}

/// A gateway whose model `TEST_MODEL` is served by `upstreams`; `extra`: more lines for the
/// `[[models]]` entry.
pub fn gateway(pki: &Pki, upstreams: &[String], extra: &str) -> Daemon {
    gateway_with(pki, upstreams, extra, "")
}

/// [`gateway`] with `sections` appended to the config (tenants, `[cluster.limits]`, …).
pub fn gateway_with(pki: &Pki, upstreams: &[String], extra: &str, sections: &str) -> Daemon {
    let q = |p: &Path| format!("{:?}", p.to_str().unwrap());
    let (cert, key) = pki.client("gateway");
    let list: Vec<String> = upstreams.iter().map(|u| format!("{u:?}")).collect();
    let cfg = TestConfig {
        models: format!(
            "[[models]]\nname = \"{TEST_MODEL}\"\nbackend = \"remote\"\nupstreams = [{}]\n\
             ca = {}\nclient_cert = {}\nclient_key = {}\nhealth_interval = \"300ms\"\n\
             idle_timeout = \"10s\"\nfirst_byte_timeout = \"10s\"\n{extra}",
            list.join(", "),
            q(&pki.ca()),
            q(&cert),
            q(&key),
        ),
        // The tests' clients all come from 127.0.0.1.
        limits: format!(
            "{}max_connections_per_address = 256\n",
            TestConfig::default().limits
        ),
        extra: sections.to_owned(),
        ..TestConfig::default()
    };
    Daemon::start(pki, &cfg)
}

/// The address a gateway's pool names `node` by.
pub fn upstream(node: &Daemon) -> String {
    format!("https://localhost:{}", node.addr.port())
}
