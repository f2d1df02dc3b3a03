//! A small HTTP/1.1 server on a Unix socket for the keep-alive tests: answers each request
//! as the test says (a complete SSE stream, a close without an answer, an endless stream, an
//! error) and counts the connections it accepts and the ones the client closed.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::config::UpstreamAddr;

/// One request as the fake upstream sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seen {
    /// POSTs answered or refused before this one, on all connections.
    pub post: usize,
    /// Requests before this one on its connection.
    pub nth: usize,
}

/// What the fake upstream does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Answer {
    /// A complete SSE stream (`[DONE]`), keep-alive; the last chunk 20 ms after the rest.
    Stream,
    /// The same with `Connection: close`.
    StreamThenClose,
    /// Closes the connection without answering (an upstream closing it as the request came).
    Close,
    /// The head and one event, then nothing more (a long generation), until the client
    /// closes the connection.
    Endless,
    /// 500 with a complete JSON error body, keep-alive.
    Error,
}

pub(super) struct Upstream {
    pub addr: UpstreamAddr,
    /// Connections accepted.
    pub accepted: Arc<AtomicUsize>,
    /// Connections the client closed (seen as end of file while waiting for a request or
    /// in the middle of an endless stream).
    pub closed_by_client: Arc<AtomicUsize>,
    /// POST requests read (answered or not).
    pub posts: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

const EVENTS: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";

pub(super) fn upstream(answer: impl Fn(Seen) -> Answer + Send + Sync + 'static) -> Upstream {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("upstream.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let closed_by_client = Arc::new(AtomicUsize::new(0));
    let posts = Arc::new(AtomicUsize::new(0));
    let answer = Arc::new(answer);
    let (acc, closed, post_count) = (
        Arc::clone(&accepted),
        Arc::clone(&closed_by_client),
        Arc::clone(&posts),
    );
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            let (closed, posts, answer) = (
                Arc::clone(&closed),
                Arc::clone(&post_count),
                Arc::clone(&answer),
            );
            tokio::spawn(serve(conn, closed, posts, answer));
        }
    });
    Upstream {
        addr: UpstreamAddr::Unix(path),
        accepted,
        closed_by_client,
        posts,
        _dir: dir,
    }
}

async fn serve(
    mut conn: UnixStream,
    closed: Arc<AtomicUsize>,
    posts: Arc<AtomicUsize>,
    answer: Arc<impl Fn(Seen) -> Answer>,
) {
    let mut buf = Vec::new();
    for nth in 0.. {
        // The head, then a body of `content-length` bytes.
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    closed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + length);
        let get = head.starts_with("get ");
        let post = if get {
            0
        } else {
            posts.fetch_add(1, Ordering::SeqCst)
        };
        let answer = if get {
            Answer::Stream
        } else {
            answer(Seen { post, nth })
        };
        let close = if answer == Answer::StreamThenClose {
            "connection: close\r\n"
        } else {
            ""
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n{close}\r\n"
        );
        match answer {
            Answer::Close => return,
            Answer::Error => {
                let body = r#"{"error":{"message":"boom"}}"#;
                let answer = format!(
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if conn.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
            Answer::Stream | Answer::StreamThenClose => {
                let events = format!("{:x}\r\n{EVENTS}\r\n", EVENTS.len());
                if conn
                    .write_all(format!("{head}{events}").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                if conn.write_all(b"0\r\n\r\n").await.is_err() || !close.is_empty() {
                    return;
                }
            }
            Answer::Endless => {
                let event = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
                let first = format!("{head}{:x}\r\n{event}\r\n", event.len());
                if conn.write_all(first.as_bytes()).await.is_err() {
                    return;
                }
                let mut rest = [0u8; 1024];
                loop {
                    match conn.read(&mut rest).await {
                        Ok(0) | Err(_) => {
                            closed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Ok(_) => {}
                    }
                }
            }
        }
    }
}

/// Waits (5 s at most) until `counter` reaches `want`.
pub(super) async fn reaches(counter: &AtomicUsize, want: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter.load(Ordering::SeqCst) < want {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    counter.load(Ordering::SeqCst) == want
}
