//! Kept-alive connections: the idle set's bounds on a fake clock, then the client and the
//! engine against a real upstream on a Unix socket ([`super::fake_upstream`], which counts
//! the connections it accepts and sees closed).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use airlock_engine::{ChatMessage, Engine, GenerateRequest, Prompt, SamplingParams, TokenEvent};
use bytes::Bytes;
use http_body_util::Full;

use super::super::RemoteEngine;
use super::super::client::{Client, ClientError, Exchange, Keepalive, MAX_REUSE_AGE};
use super::super::idle::Idle;
use super::fake_upstream::{Answer, Upstream, reaches, upstream};
use crate::config::{Balance, RemoteConfig};

// ---- the idle set, on a fake clock ----

#[test]
fn the_idle_set_is_bounded_newest_first_and_expires() {
    let t0 = Instant::now();
    let timeout = Duration::from_secs(60);
    let idle: Idle<u32> = Idle::new(2, 2, timeout);
    assert!(idle.put(0, 1, t0).is_ok());
    assert!(idle.put(0, 2, t0 + Duration::from_secs(1)).is_ok());
    assert_eq!(idle.put(0, 3, t0), Err(3), "full: the third is refused");
    assert_eq!(idle.len(1), 0, "slots are per upstream");
    assert_eq!(idle.take(0, t0, |_| true), Some(2), "newest first");
    assert!(idle.put(0, 2, t0 + Duration::from_secs(1)).is_ok());
    // An unusable connection is passed over and dropped.
    assert_eq!(idle.take(0, t0, |c| *c != 2), Some(1));
    assert_eq!(idle.len(0), 0);

    assert!(idle.put(0, 1, t0).is_ok());
    assert!(idle.put(0, 2, t0 + Duration::from_secs(30)).is_ok());
    assert_eq!(idle.sweep(t0 + timeout - Duration::from_millis(1)), 0);
    assert_eq!(idle.sweep(t0 + timeout), 1, "the older one expired");
    assert_eq!(idle.len(0), 1);
    assert_eq!(
        idle.take(0, t0 + Duration::from_secs(90), |_| true),
        None,
        "never handed out once expired, even before a sweep"
    );
    assert_eq!(idle.len(0), 0);
}

#[test]
fn clearing_and_closing_drop_idle_connections() {
    let now = Instant::now();
    let idle: Idle<u32> = Idle::new(2, 4, Duration::from_secs(60));
    for c in 0..3 {
        idle.put(0, c, now).unwrap();
        idle.put(1, c, now).unwrap();
    }
    idle.clear(0);
    assert_eq!((idle.len(0), idle.len(1)), (0, 3));
    assert!(
        idle.put(0, 7, now).is_ok(),
        "an ejected upstream's slot refills"
    );
    idle.close();
    assert_eq!((idle.len(0), idle.len(1)), (0, 0));
    assert_eq!(idle.put(1, 8, now), Err(8), "nothing kept after close");
    assert!(!idle.enabled());
    let off: Idle<u32> = Idle::new(1, 0, Duration::from_secs(60));
    assert_eq!(
        off.put(0, 1, now),
        Err(1),
        "keepalive_connections = 0 keeps none"
    );
}

// ---- the client, against a real upstream ----

fn new_client(connections: usize) -> Client {
    Client::new(
        None,
        None,
        Duration::from_secs(2),
        1,
        Keepalive {
            connections,
            timeout: Duration::from_secs(60),
        },
    )
}

fn request() -> http::Request<Full<Bytes>> {
    http::Request::post("/v1/chat/completions")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(b"{\"stream\":true}")))
        .unwrap()
}

async fn send(client: &Client, up: &Upstream) -> Result<Exchange, ClientError> {
    client
        .send(0, &up.addr, request(), Duration::from_secs(5))
        .await
}

/// Reads an exchange to its end; returns its body.
async fn read_all(exchange: &mut Exchange) -> String {
    let body = exchange.read_bounded(1 << 20, Duration::from_secs(5)).await;
    String::from_utf8(body).unwrap()
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    let up = upstream(|_| Answer::Stream);
    let client = new_client(32);
    for i in 0..5 {
        let mut exchange = send(&client, &up).await.unwrap();
        assert_eq!(exchange.reused, i > 0, "request {i}");
        assert!(read_all(&mut exchange).await.ends_with("data: [DONE]\n\n"));
        client.release(0, exchange).await;
        assert_eq!(client.idle_len(0), 1);
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        1,
        "five requests, one connection"
    );

    // The same with keep-alive off: a connection each, each closed after its request.
    let up = upstream(|_| Answer::Stream);
    let client = new_client(0);
    for _ in 0..5 {
        let mut exchange = send(&client, &up).await.unwrap();
        assert!(!exchange.reused);
        read_all(&mut exchange).await;
        client.release(0, exchange).await;
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 5);
    assert!(reaches(&up.closed_by_client, 5).await);
}

#[tokio::test]
async fn a_released_stream_stopped_at_done_is_read_to_its_end_first() {
    // The engine stops reading at `[DONE]`; the last chunk comes 20 ms later.
    let up = upstream(|_| Answer::Stream);
    let client = new_client(32);
    let mut exchange = send(&client, &up).await.unwrap();
    let mut seen = String::new();
    while !seen.contains("[DONE]") {
        let frame = exchange.frame().await.unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(frame.data_ref().unwrap()));
    }
    client.release(0, exchange).await;
    assert_eq!(client.idle_len(0), 1, "kept once its body ended");
    assert!(send(&client, &up).await.unwrap().reused);
}

#[tokio::test]
async fn a_cancelled_exchange_closes_its_connection() {
    let up = upstream(|seen| {
        if seen.post == 0 {
            Answer::Endless
        } else {
            Answer::Stream
        }
    });
    let client = new_client(32);
    let mut exchange = send(&client, &up).await.unwrap();
    let frame = exchange.frame().await.unwrap().unwrap();
    assert!(frame.data_ref().is_some());
    // The client went away mid-stream: the exchange is dropped, not released.
    drop(exchange);
    assert!(
        reaches(&up.closed_by_client, 1).await,
        "the upstream saw its connection closed"
    );
    assert_eq!(client.idle_len(0), 0);
    let mut next = send(&client, &up).await.unwrap();
    assert!(!next.reused, "a new connection, not the cancelled one");
    read_all(&mut next).await;
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);

    // Released before its end (an error mid-stream, a bound reached): closed, not kept.
    let up = upstream(|_| Answer::Endless);
    let mut exchange = send(&client, &up).await.unwrap();
    exchange.frame().await.unwrap().unwrap();
    let started = Instant::now();
    client.release(0, exchange).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(client.idle_len(0), 0);
    assert!(reaches(&up.closed_by_client, 1).await);
}

#[tokio::test]
async fn a_stale_kept_connection_is_retried_once_on_a_new_one() {
    // The second request arrives on the kept connection, which the upstream closes without
    // answering (its idle timeout raced the request).
    let up = upstream(|seen| {
        if seen.post == 1 && seen.nth == 1 {
            Answer::Close
        } else {
            Answer::Stream
        }
    });
    let client = new_client(32);
    let mut first = send(&client, &up).await.unwrap();
    read_all(&mut first).await;
    client.release(0, first).await;
    let mut second = send(&client, &up)
        .await
        .expect("retried transparently on a new connection");
    assert!(!second.reused);
    assert!(read_all(&mut second).await.contains("[DONE]"));
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(
        up.posts.load(Ordering::SeqCst),
        3,
        "the second request reached the kept connection, then a new one"
    );
}

#[tokio::test]
async fn a_new_connection_closed_early_is_a_failure_not_retried() {
    let up = upstream(|_| Answer::Close);
    let client = new_client(32);
    assert!(matches!(
        send(&client, &up).await,
        Err(ClientError::Http(_))
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1, "not retried");
}

#[tokio::test]
async fn connection_close_responses_are_not_kept() {
    let up = upstream(|_| Answer::StreamThenClose);
    let client = new_client(32);
    for _ in 0..2 {
        let mut exchange = send(&client, &up).await.unwrap();
        assert!(!exchange.reused);
        read_all(&mut exchange).await;
        client.release(0, exchange).await;
        assert_eq!(client.idle_len(0), 0);
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}

/// One request read to its end and released: its connection kept.
async fn keep(client: &Client, up: &Upstream) {
    let mut exchange = send(client, up).await.unwrap();
    read_all(&mut exchange).await;
    client.release(0, exchange).await;
    assert_eq!(client.idle_len(0), 1);
}

#[tokio::test]
async fn idle_connections_close_on_timeout_ejection_and_close() {
    let up = upstream(|_| Answer::Stream);
    let client = new_client(32);
    // keepalive_timeout (60 s, on a fake clock).
    keep(&client, &up).await;
    let now = Instant::now();
    assert_eq!(client.sweep(now + Duration::from_secs(59)), 0);
    assert_eq!(client.sweep(now + Duration::from_secs(61)), 1);
    assert!(
        reaches(&up.closed_by_client, 1).await,
        "the upstream saw it closed"
    );
    // The upstream was ejected.
    keep(&client, &up).await;
    client.close_idle(0);
    assert!(reaches(&up.closed_by_client, 2).await);
    // The engine went away (shutdown, reload): closed, and nothing kept afterwards.
    keep(&client, &up).await;
    client.close();
    assert!(reaches(&up.closed_by_client, 3).await);
    let mut exchange = send(&client, &up).await.unwrap();
    read_all(&mut exchange).await;
    client.release(0, exchange).await;
    assert_eq!(client.idle_len(0), 0);
    assert!(reaches(&up.closed_by_client, 4).await);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 4);
    assert!(MAX_REUSE_AGE > Duration::from_secs(60));
}

// ---- the engine ----

fn remote(up: &Upstream, connections: usize) -> RemoteConfig {
    RemoteConfig {
        upstreams: vec![up.addr.clone()],
        upstream_model: "m".into(),
        tls: None,
        balance: Balance::LeastOutstanding,
        health_path: "/v1/models".into(),
        // One probe at start, then none during the test.
        health_interval: Duration::from_secs(3600),
        // One counted failure would eject the only upstream.
        eject_after: std::num::NonZeroU32::new(1).unwrap(),
        eject_backoff: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(2),
        first_byte_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        max_response_bytes: std::num::NonZeroUsize::new(1 << 20).unwrap(),
        keepalive_connections: connections,
        keepalive_timeout: Duration::from_secs(60),
    }
}

fn submit(engine: &RemoteEngine, model: &str) -> airlock_engine::Generation {
    engine
        .submit(GenerateRequest {
            request_id: "r".into(),
            tenant: "t".into(),
            tenant_weight: 1,
            model: model.into(),
            prompt: Prompt::Chat(
                vec![ChatMessage {
                    role: "user".into(),
                    content: "hello".into(),
                    ..ChatMessage::default()
                }],
                Vec::new(),
            ),
            params: SamplingParams::default(),
        })
        .unwrap()
}

/// Waits (5 s at most) until the engine has no request left (each request's task ends
/// after it kept its connection).
async fn settled(engine: &RemoteEngine) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while engine.status().queued + engine.status().active > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs one chat request to its end; whether it finished.
async fn generate(engine: &RemoteEngine, model: &str) -> bool {
    let mut generation = submit(engine, model);
    let mut finished = false;
    while let Some(event) = generation.next().await {
        finished |= matches!(event, TokenEvent::Finished { .. });
    }
    settled(engine).await;
    finished
}

/// (connections opened, failures) counted for `model`'s upstream `up`.
fn counted(model: &str, up: &Upstream) -> (u64, u64) {
    crate::metrics::global().upstream_counts(model, &up.addr.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_engine_reuses_connections_and_retries_a_stale_one_without_a_failure() {
    // The third POST meets the kept connection closed under it.
    let up = upstream(|seen| {
        if seen.post == 2 && seen.nth == 2 {
            Answer::Close
        } else {
            Answer::Stream
        }
    });
    let model = "keepalive-engine";
    let engine = RemoteEngine::new(model, &remote(&up, 32), 16, None).unwrap();
    // The health probe at start: a connection of its own, closed after it.
    assert!(reaches(&up.closed_by_client, 1).await);
    for i in 0..5 {
        assert!(generate(&engine, model).await, "request {i}");
    }
    assert_eq!(
        up.posts.load(Ordering::SeqCst),
        6,
        "the stale one was sent again"
    );
    let (connections, failures) = counted(model, &up);
    assert_eq!(connections, 2, "one, and one more after the stale one");
    assert_eq!(
        failures, 0,
        "a stale connection is no failure of the upstream"
    );
    assert_eq!(up.accepted.load(Ordering::SeqCst), 3, "with the probe's");
    drop(engine);
    assert!(
        reaches(&up.closed_by_client, 2).await,
        "the kept connection closes with the engine"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_engine_without_keepalive_opens_a_connection_per_request() {
    let up = upstream(|_| Answer::Stream);
    let model = "keepalive-off-engine";
    let engine = RemoteEngine::new(model, &remote(&up, 0), 16, None).unwrap();
    for _ in 0..3 {
        assert!(generate(&engine, model).await);
    }
    assert_eq!(counted(model, &up), (3, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_closes_its_kept_alive_connection() {
    let up = upstream(|seen| {
        if seen.post == 1 {
            Answer::Endless
        } else {
            Answer::Stream
        }
    });
    let model = "keepalive-cancel-engine";
    let engine = RemoteEngine::new(model, &remote(&up, 32), 16, None).unwrap();
    assert!(reaches(&up.closed_by_client, 1).await, "the probe's");
    assert!(generate(&engine, model).await);
    // The second request goes on the kept connection and streams without end...
    let mut generation = submit(&engine, model);
    loop {
        match generation.next().await {
            Some(TokenEvent::Token { .. }) => break,
            Some(TokenEvent::Started { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    // ...until the client goes away: that connection closes, it is not kept.
    drop(generation);
    assert!(
        reaches(&up.closed_by_client, 2).await,
        "the upstream saw the close"
    );
    settled(&engine).await;
    assert!(generate(&engine, model).await);
    assert_eq!(
        counted(model, &up),
        (2, 0),
        "a new connection after the cancelled one"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ejection_closes_the_upstreams_kept_connections() {
    // The second request gets a 500 on the kept connection, which stays reusable as far as
    // HTTP goes; the failure ejects the upstream (eject_after = 1), which closes it.
    let up = upstream(|seen| {
        if seen.post == 1 {
            Answer::Error
        } else {
            Answer::Stream
        }
    });
    let model = "keepalive-eject-engine";
    let engine = RemoteEngine::new(model, &remote(&up, 32), 16, None).unwrap();
    assert!(reaches(&up.closed_by_client, 1).await, "the probe's");
    assert!(generate(&engine, model).await);
    assert!(!generate(&engine, model).await, "500: no upstream left");
    assert!(
        reaches(&up.closed_by_client, 2).await,
        "the ejected upstream's kept connection is closed"
    );
    assert_eq!(counted(model, &up), (1, 1));
}
