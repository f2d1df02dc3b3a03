//! The audit log forwarded to a SIEM: RFC 5424 syslog over TLS (RFC 5425) to a receiver in
//! this test, a real TLS listener. Every committed record arrives as committed (the MSG is
//! the record's body, the bytes its hash covers), in order; while the receiver is down
//! requests are served as usual, and when it is back the sink catches up from its cursor.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Daemon, Pki, TestConfig};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A syslog-over-TLS receiver: collects each octet-counted frame's message.
struct Receiver {
    task: JoinHandle<()>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Receiver {
    async fn start(pki: &Pki, addr: SocketAddr, got: Arc<Mutex<Vec<String>>>) -> Receiver {
        let acceptor = tokio_rustls::TlsAcceptor::from(common::receiver_tls(pki));
        let listener = TcpListener::bind(addr).await.unwrap();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let handles = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let got = Arc::clone(&got);
                let connection = tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 16384];
                    while let Ok(n) = tls.read(&mut chunk).await {
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        // Octet counting: `LEN SP MSG`.
                        while let Some(space) = buf.iter().position(|&b| b == b' ') {
                            let len: usize =
                                std::str::from_utf8(&buf[..space]).unwrap().parse().unwrap();
                            if buf.len() < space + 1 + len {
                                break;
                            }
                            let msg = String::from_utf8(buf[space + 1..space + 1 + len].to_vec())
                                .unwrap();
                            buf.drain(..space + 1 + len);
                            got.lock().unwrap().push(msg);
                        }
                    }
                });
                handles.lock().unwrap().push(connection);
            }
        });
        Receiver { task, connections }
    }

    /// Gone: the listener and every connection close.
    fn stop(self) {
        self.task.abort();
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

/// The records committed so far, as (seq, body).
fn committed(db: &std::path::Path) -> Vec<(u64, String)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT seq, body FROM records ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)? as u64,
            String::from_utf8(r.get::<_, Vec<u8>>(1)?).unwrap(),
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Waits until every committed record has arrived; returns the bodies received, in order
/// of arrival (a record may arrive twice: at least once).
async fn wait_for_all(db: &std::path::Path, got: &Arc<Mutex<Vec<String>>>) -> Vec<(u64, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let want = committed(db);
        let bodies: Vec<String> = got
            .lock()
            .unwrap()
            .iter()
            .map(|m| {
                let header_end = m.find(" - {").expect("a structured-data-less header");
                m[header_end + 3..].to_owned()
            })
            .collect();
        if want.iter().all(|(_, body)| bodies.contains(body)) {
            return want;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} records arrived",
            want.iter().filter(|(_, b)| bodies.contains(b)).count(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn every_committed_record_reaches_the_siem_and_catches_up_after_an_outage() {
    let pki = Pki::new(&["alice"]);
    // A free port for the receiver, reused after its outage.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let receiver = Receiver::start(&pki, addr, Arc::clone(&got)).await;
    let sink = format!(
        "node = \"node-a\"\n[[audit.sinks]]\nname = \"siem\"\nkind = \"syslog-tls\"\n\
         address = \"127.0.0.1:{}\"\nserver_name = \"localhost\"\nca = {:?}\n",
        addr.port(),
        pki.ca().to_str().unwrap(),
    );
    let cfg = TestConfig {
        audit: Some(sink),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let alice = daemon.client(&pki, "alice");
    let chat = json!({
        "model": common::TEST_MODEL,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 4,
    });
    for _ in 0..3 {
        let (status, body) =
            common::post_json(&alice, daemon.url("/v1/chat/completions"), &chat).await;
        assert_eq!(status, 200, "{body}");
    }
    let db = daemon.audit_db();
    let first = wait_for_all(&db, &got).await;
    assert!(first.len() >= 7, "start + 3 × (admit, complete): {first:?}");
    // The header: priority 110 (log audit, informational), version 1, the node's name,
    // the app, the record kind.
    let messages = got.lock().unwrap().clone();
    let start = messages.iter().find(|m| m.contains(" start - ")).unwrap();
    assert!(start.starts_with("<110>1 20"), "{start}");
    assert!(start.contains(" node-a airlockd "), "{start}");
    // The node's name is in every record too (each node keeps its own chain).
    assert!(
        first
            .iter()
            .all(|(_, body)| body.contains(r#""node":"node-a""#)),
        "{first:?}"
    );
    // In order of sequence number.
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| {
            let body: serde_json::Value =
                serde_json::from_str(&m[m.find(" - {").unwrap() + 3..]).unwrap();
            body["seq"].as_u64().unwrap()
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // The receiver goes away: requests are served as before.
    receiver.stop();
    for _ in 0..3 {
        let (status, body) =
            common::post_json(&alice, daemon.url("/v1/chat/completions"), &chat).await;
        assert_eq!(
            status, 200,
            "the SIEM being down must not affect serving: {body}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Back: the sink catches up from its cursor.
    let _receiver = Receiver::start(&pki, addr, Arc::clone(&got)).await;
    let all = wait_for_all(&db, &got).await;
    assert!(
        all.len() >= first.len() + 6,
        "{} then {}",
        first.len(),
        all.len()
    );
    // Once the connection has stayed up past a write, the cursor says it was delivered.
    let cursor_file = db.with_extension("db.sink-siem.cursor");
    let deadline = Instant::now() + Duration::from_secs(10);
    let last = all.last().unwrap().0;
    loop {
        let cursor = std::fs::read_to_string(&cursor_file)
            .ok()
            .and_then(|c| c.trim().parse::<u64>().ok());
        if cursor.is_some_and(|c| c >= last) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cursor {cursor:?}, last record {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
