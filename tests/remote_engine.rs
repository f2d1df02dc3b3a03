//! Remote engine pools (`[[models]] backend = "remote"`) and the engine role
//! (`[listener] role = "engine"`): one gateway `airlockd` in front of two engine-role
//! `airlockd` nodes (test engine), over real mTLS sockets, plus a fake upstream on a Unix
//! socket that answers 503 (llama.cpp while it loads).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{engine_node, engine_node_with, gateway, upstream};
use common::{Pki, TEST_MODEL, TWENTY_WORDS, TestConfig, post_json, post_text, sse_chunks};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn chat(max_tokens: u32, stream: bool) -> Value {
    let mut body = json!({
        "model": TEST_MODEL,
        "messages": [{"role": "user", "content": TWENTY_WORDS}],
        "max_tokens": max_tokens,
    });
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_and_stream_pass_through_engine_nodes_and_are_audited() {
    let pki = Pki::new(&["alice", "gateway", "stranger"]);
    let mut engines = [engine_node(&pki, "0ms"), engine_node(&pki, "0ms")];
    let mut gw = gateway(&pki, &[upstream(&engines[0]), upstream(&engines[1])], "");
    let alice = gw.client(&pki, "alice");
    let url = gw.url("/v1/chat/completions");

    // What an engine node answers its gateway directly, for comparison.
    let direct = engines[0].client(&pki, "gateway");
    let (status, want) = post_json(
        &direct,
        engines[0].url("/v1/chat/completions"),
        &chat(5, false),
    )
    .await;
    assert_eq!(status, 200, "{want}");

    let (status, body) = post_json(&alice, url.clone(), &chat(5, false)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"], want["choices"][0]["message"]["content"],
        "the upstream's text, relayed"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert_eq!(
        body["usage"]["prompt_tokens"], want["usage"]["prompt_tokens"],
        "usage is the upstream's, not the admission bound"
    );

    let (status, text) = post_text(&alice, url.clone(), &chat(5, true)).await;
    assert_eq!(status, 200, "{text}");
    let chunks = sse_chunks(&text);
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        streamed,
        want["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 5, "{text}");

    // `n` choices: one upstream request each, every one relayed.
    let mut two = chat(3, false);
    two["n"] = json!(2);
    let (status, body) = post_json(&alice, url.clone(), &two).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 6, "{body}");

    // A parameter the pool cannot serve is refused by name, not failed upstream.
    let mut logprobs = chat(3, false);
    logprobs["logprobs"] = json!(true);
    let (status, body) = post_json(&alice, url.clone(), &logprobs).await;
    assert_eq!(status, 400, "{body}");

    // Both engines served: least-outstanding takes turns among idle upstreams.
    for _ in 0..4 {
        let (status, body) = post_json(&alice, url.clone(), &chat(2, false)).await;
        assert_eq!(status, 200, "{body}");
    }
    // Each engine node served some, recorded in its own audit log as the tenant `gateway`.
    for engine in &mut engines {
        engine.stop();
        let records = common::audit_records(&engine.audit_db());
        let admits: Vec<&Value> = records.iter().filter(|r| r["kind"] == "admit").collect();
        assert!(
            !admits.is_empty(),
            "an engine node served nothing: {records:?}"
        );
        assert!(
            admits.iter().all(|r| r["tenant"] == "gateway"),
            "{admits:?}"
        );
    }

    // The gateway's audit log has the requests (tenant alice) with the upstream's usage.
    gw.stop();
    let records = common::audit_records(&gw.audit_db());
    let completes: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "complete" && r["completion_tokens"] == 5)
        .collect();
    assert_eq!(completes.len(), 2, "chat and stream: {records:?}");
    let admit = records
        .iter()
        .find(|r| r["kind"] == "admit" && r["seq"] == completes[0]["admit_seq"])
        .unwrap();
    assert_eq!(admit["tenant"], "alice", "{admit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_engine_node_refuses_certificates_it_does_not_name() {
    let pki = Pki::new(&["alice", "gateway", "stranger"]);
    let engine = engine_node(&pki, "0ms");
    let url = engine.url("/v1/chat/completions");
    // Certificates of the same CA that `[listener.engine]` does not name: the handshake
    // fails, no request is read.
    for stranger in ["alice", "stranger"] {
        let client = engine.client(&pki, stranger);
        let sent = client.post(url.clone()).json(&chat(2, false)).send().await;
        assert!(sent.is_err(), "{stranger}: {:?}", sent.map(|r| r.status()));
        let tls = common::client_tls(&pki.ca(), Some(pki.client(stranger)));
        assert!(
            common::raw_get(engine.addr, tls, "/healthz").await.is_err(),
            "{stranger}: even an open route is out of reach"
        );
    }
    let (status, body) = post_json(&engine.client(&pki, "gateway"), url, &chat(2, false)).await;
    assert_eq!(status, 200, "{body}");
}

/// A fake upstream on a Unix socket that answers every request with 503 (a llama.cpp
/// server loading its model); counts the requests it got: (POSTs, health-probe GETs).
async fn loading_upstream(path: &Path) -> Arc<[AtomicUsize; 2]> {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let hits = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let kind = usize::from(!buf[..n].starts_with(b"POST "));
                counter[kind].fetch_add(1, Ordering::SeqCst);
                let body = r#"{"error":{"message":"Loading model","type":"unavailable_error","code":503}}"#;
                let answer = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    hits
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_answering_503_is_skipped() {
    let pki = Pki::new(&["alice", "gateway"]);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("loading.sock");
    let hits = loading_upstream(&socket).await;
    let engine = engine_node(&pki, "0ms");
    let gw = gateway(
        &pki,
        &[format!("unix:{}", socket.display()), upstream(&engine)],
        "",
    );
    let alice = gw.client(&pki, "alice");
    for i in 0..8 {
        let (status, body) =
            post_json(&alice, gw.url("/v1/chat/completions"), &chat(2, false)).await;
        assert_eq!(status, 200, "request {i}: {body}");
    }
    let (posts, probes) = (
        hits[0].load(Ordering::SeqCst),
        hits[1].load(Ordering::SeqCst),
    );
    assert!(probes >= 1, "the loading upstream is probed");
    // Once it said 503 (to a probe or a request) it gets no requests, only probes: at
    // most the one request that may have reached it before the first probe answered.
    assert!(posts <= 1, "{posts} requests sent to a loading upstream");
}

/// Reads an SSE response to its end; `Ok(text)` with `[DONE]`, `Err(text)` when it ended
/// without it. Panics if it does not end within `limit` (a hang).
async fn read_stream(mut resp: reqwest::Response, limit: Duration) -> Result<String, String> {
    let deadline = Instant::now() + limit;
    let mut text = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, resp.chunk()).await {
            Err(_) => panic!("the stream did not end within {limit:?}: {text}"),
            Ok(Ok(Some(bytes))) => text.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(Ok(None)) | Ok(Err(_)) => break,
        }
    }
    if text.contains("data: [DONE]") && !text.contains("\"error\"") {
        Ok(text)
    } else {
        Err(text)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_an_engine_node_mid_stream_fails_its_streams_and_spares_the_rest() {
    let pki = Pki::new(&["alice", "gateway"]);
    // 20 tokens at 100 ms: each stream runs about two seconds.
    let mut doomed = engine_node(&pki, "100ms");
    let mut survivor = engine_node(&pki, "100ms");
    let gw = gateway(
        &pki,
        &[upstream(&doomed), upstream(&survivor)],
        "eject_after = 1\n\n[admin]\naddress = \"127.0.0.1:0\"\n",
    );
    let alice = gw.client(&pki, "alice");
    let url = gw.url("/v1/chat/completions");

    // Four streams, two on each node (least outstanding), each past its first token.
    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut resp = alice
            .post(url.clone())
            .json(&chat(20, true))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let first = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        streams.push((resp, String::from_utf8_lossy(&first).into_owned()));
    }
    let killed = Instant::now();
    doomed.signal("KILL");
    assert!(doomed.wait_exit(Duration::from_secs(10)).is_some());

    let mut ended = (0, 0);
    for (resp, first) in streams {
        match read_stream(resp, Duration::from_secs(20)).await {
            Ok(_) => ended.0 += 1,
            Err(text) => {
                ended.1 += 1;
                let all = format!("{first}{text}");
                assert!(
                    !all.contains("data: [DONE]") || all.contains("error"),
                    "{all}"
                );
            }
        }
    }
    assert_eq!(
        ended,
        (2, 2),
        "two streams finished, two failed (ok, failed)"
    );
    assert!(killed.elapsed() < Duration::from_secs(15), "no stream hung");

    // New requests go to the live node, streamed or not.
    for i in 0..6 {
        let (status, body) = post_json(&alice, url.clone(), &chat(3, false)).await;
        assert_eq!(status, 200, "request {i} after the kill: {body}");
    }
    let (status, text) = post_text(&alice, url, &chat(3, true)).await;
    assert_eq!(status, 200, "{text}");
    sse_chunks(&text);

    // The dead node's failures and its ejection are counted, by upstream.
    let metrics = gw.metrics().await;
    let dead = format!("upstream=\"{}\"", upstream(&doomed));
    for family in [
        "airlock_remote_upstream_failures_total",
        "airlock_remote_upstream_ejections_total",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(family) && l.contains(&dead)),
            "no {family} for {dead}:\n{metrics}"
        );
    }

    // With every node gone a request fails at once with 503, it does not wait.
    survivor.signal("KILL");
    assert!(survivor.wait_exit(Duration::from_secs(10)).is_some());
    let asked = Instant::now();
    let (status, body) = post_json(&alice, gw.url("/v1/chat/completions"), &chat(3, false)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "engine_unavailable", "{body}");
    assert!(asked.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_disconnects_cancels_the_upstream_request() {
    let pki = Pki::new(&["alice", "gateway"]);
    let engine = engine_node_with(&pki, "20ms", "[admin]\naddress = \"127.0.0.1:0\"\n");
    let gw = gateway(&pki, &[upstream(&engine)], "");
    let mut req = chat(1000, true);
    req["messages"][0]["content"] = json!("word ".repeat(1000));
    let resp = gw
        .client(&pki, "alice")
        .post(gw.url("/v1/chat/completions"))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut resp = resp;
    let mut seen = String::new();
    while !seen.contains("word") {
        let chunk = resp.chunk().await.unwrap().expect("stream open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let status = engine.admin_status().await;
    assert_eq!(status["engine"]["active_sequences"], 1, "{status}");

    drop(resp);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = engine.admin_status().await;
        if status["engine"]["active_sequences"] == 0 && status["requests_in_flight"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the engine node still generates after the client left: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `airlock_remote_upstream_connections_total` of `node` in a gateway's metrics.
fn connections_opened(metrics: &str, node: &str) -> u64 {
    let label = format!("upstream=\"{node}\"");
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("airlock_remote_upstream_connections_total") && l.contains(&label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn sequential_requests_reuse_a_kept_alive_connection() {
    let pki = Pki::new(&["alice", "gateway"]);
    let engine = engine_node(&pki, "0ms");
    let node = upstream(&engine);
    let admin = "\n[admin]\naddress = \"127.0.0.1:0\"\n";
    // Kept alive (the default), and for comparison a connection per request.
    for (keepalive, most) in [("", 2), ("keepalive_connections = 0\n", 8)] {
        let gw = gateway(
            &pki,
            std::slice::from_ref(&node),
            &format!("{keepalive}{admin}"),
        );
        let alice = gw.client(&pki, "alice");
        let url = gw.url("/v1/chat/completions");
        for i in 0..8 {
            if i % 2 == 0 {
                let (status, body) = post_json(&alice, url.clone(), &chat(3, false)).await;
                assert_eq!(status, 200, "request {i}: {body}");
            } else {
                let (status, text) = post_text(&alice, url.clone(), &chat(3, true)).await;
                assert_eq!(status, 200, "request {i}: {text}");
                sse_chunks(&text);
            }
        }
        let opened = connections_opened(&gw.metrics().await, &node);
        // Kept alive: one connection (two if the engine closed it between two requests).
        assert!(
            (1..=most).contains(&opened),
            "{keepalive:?}: {opened} connections for 8 sequential requests"
        );
        if most == 8 {
            assert_eq!(opened, 8, "without keep-alive, one per request");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_engine_node_closing_an_idle_connection_costs_nothing() {
    // The engine node closes an idle HTTP/1.1 connection once its next request head is
    // `header_read_timeout` late; the gateway keeps connections longer here.
    let pki = Pki::new(&["alice", "gateway"]);
    let cfg = TestConfig {
        listener: "role = \"engine\"\n".into(),
        models: format!("[[models]]\nname = \"{TEST_MODEL}\"\nbackend = \"test\"\n"),
        limits: format!(
            "{}header_read_timeout = \"1s\"\n",
            TestConfig::default().limits
        ),
        extra: "[listener.engine]\ncert_cn = [\"gateway\"]\n".into(),
        ..TestConfig::default()
    };
    let engine = common::Daemon::start(&pki, &cfg);
    let node = upstream(&engine);
    let gw = gateway(
        &pki,
        std::slice::from_ref(&node),
        "keepalive_timeout = \"60s\"\neject_after = 1\n\n[admin]\naddress = \"127.0.0.1:0\"\n",
    );
    let alice = gw.client(&pki, "alice");
    let url = gw.url("/v1/chat/completions");
    for i in 0..3 {
        let (status, body) = post_json(&alice, url.clone(), &chat(2, false)).await;
        assert_eq!(status, 200, "request {i}: {body}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let metrics = gw.metrics().await;
    assert_eq!(
        connections_opened(&metrics, &node),
        3,
        "each idle connection was closed by the engine node: a new one each time"
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("airlock_remote_upstream_failures_total")),
        "no failure counted:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn local_and_remote_models_are_served_together() {
    let pki = Pki::new(&["alice", "gateway"]);
    let engine = engine_node(&pki, "0ms");
    let gw = gateway(
        &pki,
        &[upstream(&engine)],
        "\n[[models]]\nname = \"local-model\"\nbackend = \"test\"\n",
    );
    let alice = gw.client(&pki, "alice");
    let models: Value = alice
        .get(gw.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [TEST_MODEL, "local-model"],
        "in configuration order: {models}"
    );
    for model in [TEST_MODEL, "local-model"] {
        let mut body = chat(3, false);
        body["model"] = json!(model);
        let (status, answer) = post_json(&alice, gw.url("/v1/chat/completions"), &body).await;
        assert_eq!(status, 200, "{model}: {answer}");
        assert_eq!(answer["model"], model);
        assert_eq!(answer["usage"]["completion_tokens"], 3, "{answer}");
    }
}

#[test]
fn check_config_names_the_pool_file_that_does_not_load() {
    let pki = Pki::new(&["gateway"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.client("gateway");
    let cases = [
        (
            pki.ca(),
            cert.clone(),
            dir.path().join("missing.key"),
            "models[0].client_key",
        ),
        (
            pki.ca(),
            dir.path().join("missing.pem"),
            key.clone(),
            "models[0].client_cert",
        ),
        (
            dir.path().join("missing-ca.pem"),
            cert.clone(),
            key.clone(),
            "models[0].ca",
        ),
        (pki.ca(), cert.clone(), key.clone(), ""),
    ];
    for (ca, cert, key, field) in cases {
        let cfg = TestConfig {
            models: format!(
                "[[models]]\nname = \"{TEST_MODEL}\"\nbackend = \"remote\"\n\
                 upstreams = [\"https://localhost:1\"]\nca = {ca:?}\nclient_cert = {cert:?}\nclient_key = {key:?}\n"
            ),
            ..TestConfig::default()
        };
        let file = dir.path().join("airlockd.toml");
        std::fs::write(&file, cfg.to_toml(&pki)).unwrap();
        let (status, out, err) =
            common::airlockd(&["check-config", "--config", file.to_str().unwrap()]);
        if field.is_empty() {
            assert!(status.success(), "{out}{err}");
        } else {
            assert_eq!(status.code(), Some(64), "{field}: {out}{err}");
            assert!(err.contains(&format!(": {field}: ")), "{field}: {err}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reservations_settle_with_the_upstreams_usage() {
    let pki = Pki::new(&["alice", "gateway"]);
    let engine = engine_node(&pki, "0ms");
    // The admission bound of this chat (its bytes plus the template allowance) is about
    // 200 tokens with max_tokens 5; the test engine counts a few dozen.
    let gw = gateway(
        &pki,
        &[upstream(&engine)],
        "\n[[tenants]]\nname = \"acme\"\nmodels = [\"*\"]\ncert_cn = [\"alice\"]\ntokens_per_minute = 400\n",
    );
    let alice = gw.client(&pki, "alice");
    let url = gw.url("/v1/chat/completions");
    let mut used = 0;
    for i in 0..6 {
        let (status, body) = post_json(&alice, url.clone(), &chat(5, false)).await;
        assert_eq!(status, 200, "request {i} (used {used}): {body}");
        let total = body["usage"]["total_tokens"].as_u64().unwrap();
        assert!(total < 100, "the upstream's count, not the bound: {body}");
        used += total;
    }
    // Without settlement the third admission (3 × ~200 > 400) would be refused: each was
    // settled to its real usage.
    assert!(used <= 400, "{used}");
}
