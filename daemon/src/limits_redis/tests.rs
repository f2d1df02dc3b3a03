//! The scripts against a real `redis-server` (or `valkey-server`), started per test on a
//! Unix socket in a temporary directory. Skipped, with a notice, when neither binary is
//! installed, unless `AIRLOCK_REQUIRE_REDIS_TEST=1` (CI).

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use airlock_policy::ratelimit::{Exceeded, LimitSpec, Per, RequestRate};

use super::SharedLimits;
use crate::config::cluster::{OnUnavailable, SharedLimitsConfig, StoreTls};

/// A fixed clock (µs): the scripts take it instead of the server's.
const T0: u64 = 1_000_000_000_000_000;

struct Server {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> Option<&'static str> {
    let found = ["redis-server", "valkey-server"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_none() {
        assert!(
            std::env::var("AIRLOCK_REQUIRE_REDIS_TEST").as_deref() != Ok("1"),
            "AIRLOCK_REQUIRE_REDIS_TEST=1 but neither redis-server nor valkey-server is installed"
        );
        eprintln!("skipped: neither redis-server nor valkey-server is installed");
    }
    found
}

fn server() -> Option<Server> {
    let bin = binary()?;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("redis.sock");
    let child = Command::new(bin)
        .args([
            "--port",
            "0",
            "--save",
            "",
            "--appendonly",
            "no",
            "--unixsocket",
        ])
        .arg(&socket)
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(socket.exists(), "{bin} did not start");
    Some(Server {
        child,
        socket,
        _dir: dir,
    })
}

fn limits(server: &Server) -> Arc<SharedLimits> {
    limits_with_ttl(server, Duration::from_secs(30))
}

fn limits_with_ttl(server: &Server, lease_ttl: Duration) -> Arc<SharedLimits> {
    let config = SharedLimitsConfig {
        url: format!("unix://{}", server.socket.display()),
        tls: None,
        key_prefix: "test:".into(),
        timeout: Duration::from_secs(2),
        on_unavailable: OnUnavailable::Closed,
        lease_ttl,
    };
    SharedLimits::new(&config).unwrap()
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

#[tokio::test]
async fn gcra_allows_the_burst_then_refuses() {
    let Some(server) = server() else { return };
    let shared = limits(&server);
    let spec = LimitSpec {
        requests: Some(RequestRate {
            count: nz(1),
            per: Per::Minute,
            burst: nz(3),
        }),
        ..LimitSpec::default()
    };
    for i in 0..3 {
        let a = shared.admit_at(T0, "t", &spec, 0).await.unwrap();
        assert!(a.is_ok(), "request {i} of the burst refused: {a:?}");
    }
    let refusal = shared
        .admit_at(T0, "t", &spec, 0)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refusal.exceeded, Exceeded::Requests);
    assert_eq!(refusal.retry_after, Duration::from_secs(60));
    assert_eq!(refusal.status.limit_requests, Some(3));
    assert_eq!(refusal.status.remaining_requests, 0);
    // One request's worth replenishes per minute, no more.
    let later = T0 + 60_000_000;
    assert!(shared.admit_at(later, "t", &spec, 0).await.unwrap().is_ok());
    assert!(
        shared
            .admit_at(later, "t", &spec, 0)
            .await
            .unwrap()
            .is_err()
    );
    // The script is loaded again after the server forgets it (NOSCRIPT).
    let mut conn = redis::Client::open(format!("unix://{}", server.socket.display()))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let again = shared
        .admit_at(T0 + 120_000_000, "t", &spec, 0)
        .await
        .unwrap();
    assert!(again.is_ok());
}

#[tokio::test]
async fn token_reservations_never_overrun_the_budget() {
    let Some(server) = server() else { return };
    let shared = limits(&server);
    let spec = LimitSpec {
        tokens_per_minute: Some(nz(1000)),
        ..LimitSpec::default()
    };
    // 50 concurrent reservations of 100 at one instant: exactly 10 fit.
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move { shared.admit_at(T0, "t", &spec, 100).await.unwrap() })
        })
        .collect();
    let mut admitted = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(a) => admitted.push(a),
            Err(r) => assert_eq!(r.exceeded, Exceeded::Tokens),
        }
    }
    assert_eq!(admitted.len(), 10);
    let refusal = shared
        .admit_at(T0, "t", &spec, 1)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refusal.status.remaining_tokens, 0);
    // Settling returns the unused part: two requests that used 50 of their 100 free 100.
    for _ in 0..2 {
        shared.finish_at(T0, "t", 1000, 50, "").await.unwrap();
    }
    assert!(shared.admit_at(T0, "t", &spec, 100).await.unwrap().is_ok());
    assert!(shared.admit_at(T0, "t", &spec, 1).await.unwrap().is_err());
    // More than the whole budget is refused as too large.
    let too_large = shared
        .admit_at(T0, "t", &spec, 1001)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(too_large.exceeded, Exceeded::TooLarge);
    // The bucket refills at 1000 per minute: 6 s later, 100 more.
    assert!(
        shared
            .admit_at(T0 + 6_000_000, "t", &spec, 100)
            .await
            .unwrap()
            .is_ok()
    );
    for a in admitted {
        std::mem::forget(a);
    }
}

#[tokio::test]
async fn expired_leases_are_reclaimed() {
    let Some(server) = server() else { return };
    let shared = limits(&server);
    let spec = LimitSpec {
        max_concurrent: Some(nz(2)),
        ..LimitSpec::default()
    };
    let a = shared.admit_at(T0, "t", &spec, 0).await.unwrap().unwrap();
    let b = shared.admit_at(T0, "t", &spec, 0).await.unwrap().unwrap();
    let refusal = shared
        .admit_at(T0, "t", &spec, 0)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refusal.exceeded, Exceeded::Concurrency);
    // A released lease frees its slot at once.
    shared.finish_at(T0, "t", 0, 0, &a.lease).await.unwrap();
    let c = shared.admit_at(T0, "t", &spec, 0).await.unwrap().unwrap();
    // The leases of a crashed gateway (never released, never renewed) expire: lease_ttl 30 s.
    let after = T0 + 30_000_001;
    let d = shared
        .admit_at(after, "t", &spec, 0)
        .await
        .unwrap()
        .unwrap();
    let e = shared
        .admit_at(after, "t", &spec, 0)
        .await
        .unwrap()
        .unwrap();
    assert!(
        shared
            .admit_at(after, "t", &spec, 0)
            .await
            .unwrap()
            .is_err()
    );
    for x in [a, b, c, d, e] {
        std::mem::forget(x);
    }
}

#[tokio::test]
async fn a_missing_server_is_unavailable_within_the_timeout() {
    let Some(server) = server() else { return };
    let shared = limits(&server);
    drop(server);
    let started = std::time::Instant::now();
    let result = shared.admit_at(0, "t", &LimitSpec::default(), 0).await;
    assert!(result.is_err());
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn leases_in_flight_are_renewed_and_a_crashed_gateways_come_back() {
    let Some(server) = server() else { return };
    let shared = limits_with_ttl(&server, Duration::from_secs(1));
    let spec = LimitSpec {
        max_concurrent: Some(nz(1)),
        ..LimitSpec::default()
    };
    let admit = || shared.admit_at(0, "t", &spec, 0);
    let a = admit().await.unwrap().unwrap();
    // Three lease lifetimes later the request in flight still holds its slot.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refusal = admit().await.unwrap().unwrap_err();
    assert_eq!(refusal.exceeded, Exceeded::Concurrency);
    // Its gateway dies (no renewal, no release): the slot is back within one lease_ttl.
    a.crash();
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let b = admit().await.unwrap().unwrap();
    // A request that ends releases its slot at once (on a spawned task).
    b.complete(0);
    let mut freed = false;
    for _ in 0..50 {
        if let Ok(c) = admit().await.unwrap() {
            std::mem::forget(c);
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "a completed request kept its slot");
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn rediss_verifies_the_server_and_presents_the_client_certificate() {
    let Some(bin) = binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let pki = &dir.path().to_path_buf();
    crate::certs::init(pki, &["gateway".to_owned()]).unwrap();
    let port = free_port();
    let child = Command::new(bin)
        .args(["--port", "0", "--save", "", "--appendonly", "no"])
        .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "yes"])
        .arg("--tls-cert-file")
        .arg(pki.join("server.pem"))
        .arg("--tls-key-file")
        .arg(pki.join("server.key"))
        .arg("--tls-ca-cert-file")
        .arg(pki.join("ca.pem"))
        .arg("--dir")
        .arg(pki)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _server = Server {
        child,
        socket: PathBuf::new(),
        _dir: tempfile::tempdir().unwrap(),
    };
    let config = |client: Option<(PathBuf, PathBuf)>| SharedLimitsConfig {
        url: format!("rediss://localhost:{port}/0"),
        tls: Some(StoreTls {
            ca: pki.join("ca.pem"),
            client,
        }),
        key_prefix: "tls:".into(),
        timeout: Duration::from_secs(2),
        on_unavailable: OnUnavailable::Closed,
        lease_ttl: Duration::from_secs(30),
    };
    let spec = LimitSpec {
        tokens_per_minute: Some(nz(100)),
        ..LimitSpec::default()
    };
    let with_cert =
        SharedLimits::new(&config(Some(crate::certs::client_paths(pki, "gateway")))).unwrap();
    let mut admitted = None;
    for _ in 0..100 {
        if let Ok(answer) = with_cert.admit_at(0, "t", &spec, 60).await {
            admitted = Some(answer.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admitted = admitted.expect("no admission over rediss:// with a client certificate");
    assert_eq!(admitted.status().remaining_tokens, 40);
    // The server requires a client certificate: without one the store is unavailable.
    let without = SharedLimits::new(&config(None)).unwrap();
    assert!(without.admit_at(0, "t", &spec, 1).await.is_err());
    // A CA that did not sign the server's certificate: refused too.
    let other = tempfile::tempdir().unwrap();
    crate::certs::init(other.path(), &[]).unwrap();
    let mut wrong_ca = config(Some(crate::certs::client_paths(pki, "gateway")));
    wrong_ca.tls.as_mut().unwrap().ca = other.path().join("ca.pem");
    assert!(
        SharedLimits::new(&wrong_ca)
            .unwrap()
            .admit_at(0, "t", &spec, 1)
            .await
            .is_err()
    );
    // Files are checked when the client is built, naming the key.
    let mut missing = config(None);
    missing.tls.as_mut().unwrap().ca = pki.join("nope.pem");
    let e = SharedLimits::new(&missing).unwrap_err().to_string();
    assert!(e.starts_with("cluster.limits.ca: cannot read"), "{e}");
    let not_a_key = config(Some((pki.join("client-gateway.pem"), pki.join("ca.pem"))));
    let e = SharedLimits::new(&not_a_key).unwrap_err().to_string();
    assert!(
        e.starts_with("cluster.limits.client_key:") && !e.contains("BEGIN"),
        "{e}"
    );
}
