//! Connection-level hardening (issue 11), each attack reproduced against the real binary over
//! real mTLS sockets:
//! * a certificate revoked by `certs revoke` + SIGHUP is cut off on connections already open
//!   (HTTP/1.1 keep-alive and HTTP/2), within the documented bound;
//! * tenant rules and limiter state follow a reload onto open connections;
//! * idle HTTP/2 connections with a certificate of no tenant, and bare TCP connections, do not
//!   lock a real tenant out;
//! * a tenant trickling request bodies does not take the server's request slots from another;
//! * `max_connection_age` drains a busy keep-alive connection.
//!
//! Timing margins are generous (the test machines are loaded); each bound the daemon
//! documents is asserted with several times its value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Daemon, Pki, TEST_MODEL, TestConfig, client_tls};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

const RELOADED: &str = "reload complete";

/// How long after `reload complete` an open connection may take to be closed: the documented
/// bound is 1 s; the rest is slack for a loaded machine.
const RELOAD_BOUND: Duration = Duration::from_secs(4);

/// Settings that keep idle timeouts out of the way of tests that hold connections open.
const PATIENT: &str = "shutdown_grace = \"10s\"\nheader_read_timeout = \"120s\"\n\
                       connection_idle_timeout = \"120s\"\n";

fn tenants(names: &[&str], extra: &str) -> String {
    names
        .iter()
        .map(|n| {
            format!("[[tenants]]\nname = \"{n}\"\nmodels = [\"*\"]\ncert_cn = [\"{n}\"]\n{extra}\n")
        })
        .collect()
}

fn chat_body() -> String {
    serde_json::json!({
        "model": TEST_MODEL,
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 4,
    })
    .to_string()
}

/// A TCP connection to `addr` from the loopback address `from` (e.g. 127.0.0.2), so a test
/// can play a second client address.
async fn tcp_from(from: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(addr).await
}

async fn tls_connect(
    tcp: TcpStream,
    mut tls: rustls::ClientConfig,
    alpn: &[u8],
) -> std::io::Result<TlsStream<TcpStream>> {
    tls.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Whether the peer closes `stream` (EOF or error) within `within`.
async fn closed_within<S: AsyncRead + Unpin>(stream: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// One HTTP/1.1 response: status, lowercase headers, body.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive HTTP/1.1 connection over mTLS.
struct H1 {
    stream: TlsStream<TcpStream>,
}

impl H1 {
    async fn connect(daemon: &Daemon, tls: rustls::ClientConfig) -> std::io::Result<H1> {
        let tcp = TcpStream::connect(daemon.addr).await?;
        Ok(H1 {
            stream: tls_connect(tcp, tls, b"http/1.1").await?,
        })
    }

    async fn send(&mut self, method: &str, path: &str, body: &str) -> std::io::Result<Response> {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(request.as_bytes()).await?;
        read_response(&mut self.stream).await
    }

    async fn get(&mut self, path: &str) -> std::io::Result<Response> {
        self.send("GET", path, "").await
    }
}

/// Reads one HTTP/1.1 response with a `content-length` body.
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Response> {
    let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await? == 0 {
            return Err(eof());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(eof)?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await?;
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// An HTTP/2 connection over mTLS (hyper's client), and the task driving it.
struct H2 {
    sender: hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl H2 {
    async fn connect<IO>(io: IO) -> H2
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .unwrap();
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        H2 { sender, driver }
    }

    async fn get(&mut self, path: &str) -> Result<u16, hyper::Error> {
        let req = hyper::Request::get(format!("https://localhost{path}"))
            .body(Empty::new())
            .unwrap();
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        Ok(status)
    }

    /// Whether the server ends the connection within `within`.
    async fn closed_within(&mut self, within: Duration) -> bool {
        tokio::time::timeout(within, &mut self.driver).await.is_ok()
    }
}

async fn h2_connect(daemon: &Daemon, tls: rustls::ClientConfig) -> H2 {
    let tcp = TcpStream::connect(daemon.addr).await.unwrap();
    let stream = tls_connect(tcp, tls, b"h2").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    H2::connect(stream).await
}

fn reload(daemon: &Daemon) -> Instant {
    let before = daemon.logs().matches(RELOADED).count();
    daemon.signal("HUP");
    assert!(
        daemon.wait_for_log_count(RELOADED, before + 1, Duration::from_secs(20)),
        "no reload: {}",
        daemon.logs()
    );
    Instant::now()
}

/// Revoke + SIGHUP: an HTTP/1.1 keep-alive connection already open with the revoked
/// certificate is closed within the bound (it used to get 200 for 40 s and more); another
/// tenant's open connection keeps working.
#[tokio::test]
async fn revoked_certificate_closes_open_http1_connection() {
    let pki = Pki::new(&["alice", "bob"]);
    let cfg = TestConfig {
        limits: PATIENT.into(),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let tls = |name| client_tls(&pki.ca(), Some(pki.client(name)));
    let mut alice = H1::connect(&daemon, tls("alice")).await.unwrap();
    let mut bob = H1::connect(&daemon, tls("bob")).await.unwrap();
    assert_eq!(alice.get("/v1/models").await.unwrap().status, 200);
    assert_eq!(bob.get("/v1/models").await.unwrap().status, 200);

    pki.revoke("alice");
    let reloaded = reload(&daemon);
    assert!(
        closed_within(&mut alice.stream, RELOAD_BOUND).await,
        "the revoked certificate's connection stayed open: {}",
        daemon.logs()
    );
    eprintln!(
        "revoked HTTP/1.1 connection closed {} ms after `reload complete`",
        reloaded.elapsed().as_millis()
    );
    assert!(alice.get("/v1/models").await.is_err());
    // bob's certificate still verifies: his connection survives the reload.
    assert_eq!(bob.get("/v1/models").await.unwrap().status, 200);
    assert!(
        daemon.logs().contains("no longer accepts"),
        "{}",
        daemon.logs()
    );
}

/// The same over HTTP/2, where the connection never timed out at all.
#[tokio::test]
async fn revoked_certificate_closes_open_http2_connection() {
    let pki = Pki::new(&["alice", "bob"]);
    let cfg = TestConfig {
        limits: PATIENT.into(),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let tls = |name| client_tls(&pki.ca(), Some(pki.client(name)));
    let mut alice = h2_connect(&daemon, tls("alice")).await;
    let mut bob = h2_connect(&daemon, tls("bob")).await;
    assert_eq!(alice.get("/v1/models").await.unwrap(), 200);
    assert_eq!(bob.get("/v1/models").await.unwrap(), 200);

    pki.revoke("alice");
    let reloaded = reload(&daemon);
    assert!(
        alice.closed_within(RELOAD_BOUND).await,
        "the revoked certificate's HTTP/2 connection stayed open: {}",
        daemon.logs()
    );
    eprintln!(
        "revoked HTTP/2 connection closed {} ms after `reload complete`",
        reloaded.elapsed().as_millis()
    );
    assert!(alice.get("/v1/models").await.is_err());
    assert_eq!(bob.get("/v1/models").await.unwrap(), 200);
}

/// A tenant removed by a reload is refused on the connection it opened before: open
/// connections follow the new tenant rules from their next request.
#[tokio::test]
async fn removed_tenant_is_refused_on_its_open_connection() {
    let pki = Pki::new(&["alice", "bob"]);
    let mut cfg = TestConfig {
        limits: PATIENT.into(),
        extra: tenants(&["alice", "bob"], ""),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let mut alice = H1::connect(&daemon, client_tls(&pki.ca(), Some(pki.client("alice"))))
        .await
        .unwrap();
    assert_eq!(alice.get("/v1/models").await.unwrap().status, 200);

    cfg.extra = tenants(&["bob"], "");
    std::fs::write(&daemon.config_path, cfg.to_toml(&pki)).unwrap();
    reload(&daemon);
    let resp = alice.get("/v1/models").await.unwrap();
    assert_eq!(resp.status, 401, "{resp:?}");
}

/// A tenant's rate limit holds across a reload, on its old connection and on new ones:
/// a reload used to refill the quota and give each generation its own limiter.
#[tokio::test]
async fn tenant_limiter_holds_across_reload() {
    let pki = Pki::new(&["alice"]);
    let cfg = TestConfig {
        limits: PATIENT.into(),
        extra: tenants(&["alice"], "requests_per_minute = 2\nburst = 2\n"),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let tls = || client_tls(&pki.ca(), Some(pki.client("alice")));
    let mut old = H1::connect(&daemon, tls()).await.unwrap();
    for _ in 0..2 {
        let resp = old
            .send("POST", "/v1/chat/completions", &chat_body())
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    let refused = old
        .send("POST", "/v1/chat/completions", &chat_body())
        .await
        .unwrap();
    assert_eq!(refused.status, 429, "{refused:?}");

    reload(&daemon);
    let mut new = H1::connect(&daemon, tls()).await.unwrap();
    for conn in [&mut new, &mut old] {
        let resp = conn
            .send("POST", "/v1/chat/completions", &chat_body())
            .await
            .unwrap();
        assert_eq!(resp.status, 429, "the reload refilled the quota: {resp:?}");
        assert_eq!(resp.header("x-ratelimit-limit-requests"), Some("2"));
    }
}

/// Six idle HTTP/2 connections with a CA-signed certificate that maps to no tenant used to
/// hold `max_connections = 6` for 75 s and more. Now those that never send the HTTP/2
/// preface are closed after `http2_preface_timeout`, those that do after
/// `connection_idle_timeout`, and the real tenant gets in.
#[tokio::test]
async fn idle_http2_connections_do_not_lock_out_a_tenant() {
    let pki = Pki::new(&["alice", "mallory"]);
    let cfg = TestConfig {
        limits: "shutdown_grace = \"10s\"\nmax_connections = 6\n\
                 http2_preface_timeout = \"1s\"\nconnection_idle_timeout = \"2s\"\n"
            .into(),
        extra: tenants(&["alice"], ""),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let mallory = || client_tls(&pki.ca(), Some(pki.client("mallory")));
    let mut silent = Vec::new();
    let mut idle = Vec::new();
    for i in 0..6 {
        let tcp = TcpStream::connect(daemon.addr).await.unwrap();
        let stream = tls_connect(tcp, mallory(), b"h2").await.unwrap();
        if i % 2 == 0 {
            silent.push(stream);
        } else {
            idle.push(H2::connect(stream).await);
        }
    }

    let started = Instant::now();
    let alice = daemon.client(&pki, "alice");
    let mut served = None;
    while started.elapsed() < Duration::from_secs(20) {
        if let Ok(resp) = alice.get(daemon.url("/v1/models")).send().await
            && resp.status() == 200
        {
            served = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let served = served.unwrap_or_else(|| panic!("alice locked out: {}", daemon.logs()));
    eprintln!(
        "tenant served {} ms after six idle h2 connections",
        served.as_millis()
    );
    for stream in &mut silent {
        assert!(closed_within(stream, Duration::from_secs(10)).await);
    }
    for conn in &mut idle {
        assert!(conn.closed_within(Duration::from_secs(10)).await);
    }
    assert!(daemon.logs().contains("preface"), "{}", daemon.logs());
}

/// An idle HTTP/1.1 keep-alive connection is closed after `connection_idle_timeout`, even
/// when `header_read_timeout` (which also ends a wait for the next request head) is longer;
/// one that keeps sending requests stays open past it.
#[tokio::test]
async fn idle_http1_connections_are_closed() {
    let pki = Pki::new(&["alice"]);
    let cfg = TestConfig {
        limits: "shutdown_grace = \"10s\"\nheader_read_timeout = \"120s\"\n\
                 connection_idle_timeout = \"1s\"\n"
            .into(),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let tls = || client_tls(&pki.ca(), Some(pki.client("alice")));
    let mut busy = H1::connect(&daemon, tls()).await.unwrap();
    let mut idle = H1::connect(&daemon, tls()).await.unwrap();
    assert_eq!(idle.get("/v1/models").await.unwrap().status, 200);
    let started = Instant::now();
    for _ in 0..6 {
        assert_eq!(busy.get("/v1/models").await.unwrap().status, 200);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(
        closed_within(&mut idle.stream, Duration::from_secs(3)).await,
        "an idle HTTP/1.1 connection stayed open"
    );
    eprintln!(
        "idle HTTP/1.1 connection closed {} ms after its last response",
        started.elapsed().as_millis()
    );
    // Busy for 2.4 s, longer than the timeout, and still open.
    assert_eq!(busy.get("/v1/models").await.unwrap().status, 200);
}

/// Bare TCP connections (no handshake) used to hold `max_connections` slots until the
/// handshake timeout. Now they hold only pending-handshake slots, at most
/// `max_connections_per_address` of them per client address, and a tenant connecting from
/// another address is served at once.
#[tokio::test]
async fn bare_tcp_connections_do_not_lock_out_a_tenant() {
    let pki = Pki::new(&["alice"]);
    let cfg = TestConfig {
        listener: "handshake_timeout = \"60s\"\n".into(),
        limits: "shutdown_grace = \"10s\"\nmax_connections = 4\nmax_pending_handshakes = 16\n\
                 max_connections_per_address = 4\n"
            .into(),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let mut attacker = Vec::new();
    for _ in 0..40 {
        match tcp_from("127.0.0.2", daemon.addr).await {
            Ok(s) => attacker.push(s),
            Err(e) => panic!("cannot connect from 127.0.0.2: {e}"),
        }
    }
    let mut closed = 0;
    for stream in &mut attacker {
        if closed_within(stream, Duration::from_millis(300)).await {
            closed += 1;
        }
    }
    assert!(
        closed >= 36 - 4,
        "only {closed} of 40 bare connections from one address were refused"
    );

    // A real tenant, from 127.0.0.1, while the attacker still holds its connections.
    let started = Instant::now();
    let tcp = tcp_from("127.0.0.1", daemon.addr).await.unwrap();
    let mut alice = H1 {
        stream: tls_connect(
            tcp,
            client_tls(&pki.ca(), Some(pki.client("alice"))),
            b"http/1.1",
        )
        .await
        .unwrap(),
    };
    assert_eq!(alice.get("/v1/models").await.unwrap().status, 200);
    eprintln!(
        "tenant served in {} ms beside 40 bare connections",
        started.elapsed().as_millis()
    );
    // The bare connections hold none of the four connection slots: three more tenants'
    // connections fit beside alice's.
    let mut more = Vec::new();
    for _ in 0..3 {
        let mut conn = H1::connect(&daemon, client_tls(&pki.ca(), Some(pki.client("alice"))))
            .await
            .unwrap();
        assert_eq!(conn.get("/healthz").await.unwrap().status, 200);
        more.push(conn);
    }
    assert!(
        daemon.logs().contains("max_connections_per_address"),
        "{}",
        daemon.logs()
    );
}

/// alice opens five connections that each send a request head and one byte of a 1,000-byte
/// body; meanwhile bob must be served (200). Returns the answers alice's requests get, which
/// come once their slots are refused or their `body_read_timeout` passes.
async fn trickle_beside_bob(pki: &Pki, daemon: &Daemon) -> Vec<Response> {
    let alice = || client_tls(&pki.ca(), Some(pki.client("alice")));
    let mut trickles = Vec::new();
    for _ in 0..5 {
        let mut conn = H1::connect(daemon, alice()).await.unwrap();
        let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n\
                    content-type: application/json\r\ncontent-length: 1000\r\n\r\n{";
        conn.stream.write_all(head.as_bytes()).await.unwrap();
        conn.stream.flush().await.unwrap();
        trickles.push(conn);
    }
    // Give the daemon time to take (or refuse) a slot for each of them.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut bob = H1::connect(daemon, client_tls(&pki.ca(), Some(pki.client("bob"))))
        .await
        .unwrap();
    let resp = bob
        .send("POST", "/v1/chat/completions", &chat_body())
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "bob starved by alice's uploads: {resp:?}");

    let mut answers = Vec::new();
    for conn in &mut trickles {
        let resp = tokio::time::timeout(Duration::from_secs(15), read_response(&mut conn.stream))
            .await
            .expect("no answer to a trickled request")
            .unwrap();
        answers.push(resp);
    }
    answers
}

fn sorted_statuses(answers: &[Response]) -> Vec<u16> {
    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    statuses.sort_unstable();
    statuses
}

/// A tenant trickling request bodies used to take every `max_concurrent_requests` slot;
/// now its requests beyond its own `max_concurrent` are refused before taking a server slot,
/// the ones it holds end at `body_read_timeout`, and another tenant is served meanwhile.
#[tokio::test]
async fn trickled_bodies_do_not_starve_another_tenant() {
    let pki = Pki::new(&["alice", "bob"]);
    let cfg = TestConfig {
        limits: format!("{PATIENT}max_concurrent_requests = 3\nbody_read_timeout = \"3s\"\n"),
        extra: format!(
            "{}{}",
            tenants(&["alice"], "max_concurrent = 2\n"),
            tenants(&["bob"], "")
        ),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let answers = trickle_beside_bob(&pki, &daemon).await;
    for resp in answers.iter().filter(|r| r.status == 408) {
        assert!(resp.body.contains("body_read_timeout"), "{resp:?}");
    }
    assert_eq!(
        sorted_statuses(&answers),
        [408, 408, 429, 429, 429],
        "{}",
        daemon.logs()
    );
}

/// The same attack by a tenant without a `max_concurrent`: its bodies may hold at most half
/// the server's request slots (2 of 4 here), the rest are refused with 429, and another
/// tenant is served meanwhile.
#[tokio::test]
async fn trickled_bodies_of_a_tenant_without_max_concurrent_hold_half_the_slots() {
    let pki = Pki::new(&["alice", "bob"]);
    let cfg = TestConfig {
        limits: format!("{PATIENT}max_concurrent_requests = 4\nbody_read_timeout = \"3s\"\n"),
        extra: format!("{}{}", tenants(&["alice"], ""), tenants(&["bob"], "")),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    // bob needs one slot; with every slot open to alice he would have none left.
    let answers = trickle_beside_bob(&pki, &daemon).await;
    for resp in answers.iter().filter(|r| r.status == 429) {
        assert!(resp.body.contains("request bodies arriving"), "{resp:?}");
    }
    assert_eq!(
        sorted_statuses(&answers),
        [408, 408, 429, 429, 429],
        "{}",
        daemon.logs()
    );
}

/// `max_connection_age`: a keep-alive connection kept busy is drained once it is that old:
/// told `Connection: close` on a response in flight, or closed between requests.
#[tokio::test]
async fn max_connection_age_drains_a_busy_connection() {
    let pki = Pki::new(&["alice"]);
    let cfg = TestConfig {
        limits: format!("{PATIENT}max_connection_age = \"2s\"\n"),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let mut conn = H1::connect(&daemon, client_tls(&pki.ca(), Some(pki.client("alice"))))
        .await
        .unwrap();
    let started = Instant::now();
    let mut ended = None;
    while started.elapsed() < Duration::from_secs(20) {
        match conn.get("/healthz").await {
            Ok(resp) => {
                assert_eq!(resp.status, 200);
                if resp.header("connection") == Some("close") {
                    assert!(closed_within(&mut conn.stream, Duration::from_secs(5)).await);
                    ended = Some(started.elapsed());
                    break;
                }
            }
            Err(_) => {
                ended = Some(started.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ended = ended.expect("the connection outlived max_connection_age by 18 s");
    assert!(
        ended >= Duration::from_millis(1900),
        "closed early: {ended:?}"
    );
}
