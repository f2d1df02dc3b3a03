//! The OpenAI-compatible API over the real binary: mTLS, real sockets, the deterministic test
//! engine (`backend = "test"`), and responses parsed as a client would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::post_json;
use common::{Daemon, Pki, TEST_MODEL, TestConfig};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// One daemon per test file would be faster, but each test owns its daemon so a failure in
/// one cannot leak state (in-flight requests, slots) into another.
fn start(limits: &str, model_extra: &str) -> (Pki, Daemon) {
    let pki = Pki::new(&["alice"]);
    let cfg = TestConfig {
        limits: format!("shutdown_grace = \"10s\"\n{limits}"),
        models: format!("[[models]]\nname = \"{TEST_MODEL}\"\nbackend = \"test\"\n{model_extra}"),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    (pki, daemon)
}

fn chat(content: &str) -> Value {
    json!({"model": TEST_MODEL, "messages": [{"role": "user", "content": content}]})
}

/// Parses an SSE body as a client does: events separated by blank lines, `data:` fields.
fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            e.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

fn assert_error(body: &Value, kind: &str, param: Option<&str>, code: Option<&str>) {
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(e["type"], kind, "{body}");
    assert_eq!(e["param"].as_str(), param, "{body}");
    assert_eq!(e["code"].as_str(), code, "{body}");
}

/// The load figures, from the admin listener (the open `/readyz` has none).
async fn admin_status(daemon: &Daemon) -> Value {
    daemon.admin_status().await
}

/// As [`start`], with an admin listener on loopback.
fn start_with_admin(limits: &str, model_extra: &str) -> (Pki, Daemon) {
    let pki = Pki::new(&["alice"]);
    let cfg = TestConfig {
        limits: format!("shutdown_grace = \"10s\"\n{limits}"),
        models: format!("[[models]]\nname = \"{TEST_MODEL}\"\nbackend = \"test\"\n{model_extra}"),
        extra: "[admin]\naddress = \"127.0.0.1:0\"\n".into(),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    (pki, daemon)
}

#[tokio::test]
async fn chat_completions_plain_and_streamed() {
    let (pki, daemon) = start("", "");
    let client = daemon.client(&pki, "alice");

    let (status, body) = post_json(
        &client,
        daemon.url("/v1/chat/completions"),
        &chat("hello airlock world"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "hello airlock world"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 3);
    assert_eq!(
        body["usage"]["total_tokens"].as_u64(),
        Some(body["usage"]["prompt_tokens"].as_u64().unwrap() + 3)
    );

    let mut req = chat("one two three four");
    req["stream"] = json!(true);
    req["max_tokens"] = json!(3);
    req["stream_options"] = json!({"include_usage": true});
    let resp = client
        .post(daemon.url("/v1/chat/completions"))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = resp.text().await.unwrap();
    let events = sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "one two three");
    let reasons: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(reasons, ["length"]);
    let usage = &chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["usage"].is_null())
    );
}

#[tokio::test]
async fn completions_and_generate() {
    let (pki, daemon) = start("", "");
    let client = daemon.client(&pki, "alice");

    let req = json!({"model": TEST_MODEL, "prompt": "alpha beta", "max_tokens": 5});
    let (status, body) = post_json(&client, daemon.url("/v1/completions"), &req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], "alpha beta");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");

    let req = json!({"model": TEST_MODEL, "prompt": ["gamma delta"], "stream": true});
    let text = client
        .post(daemon.url("/v1/completions"))
        .json(&req)
        .send()
        .await
        .unwrap();
    let events = sse_data(&text.text().await.unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let streamed: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(streamed, "gamma delta");

    let req = json!({"prompt": "x y z", "max_tokens": 2, "temperature": 0.5, "top_p": 0.9});
    let (status, body) = post_json(&client, daemon.url("/generate"), &req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["generated_text"], "x y");
    assert_eq!(body["usage"]["prompt_tokens"], 3);
}

/// Informational fields are accepted (and change nothing); fields that would change the
/// answer and cannot be honoured are refused, naming the field; and the test engine, which
/// has no logits, refuses log-probabilities rather than making them up.
#[tokio::test]
async fn informational_fields_accepted_answer_changing_ones_refused() {
    let (pki, daemon) = start("", "");
    let client = daemon.client(&pki, "alice");
    let url = daemon.url("/v1/chat/completions");
    let mut req = chat("alpha beta");
    for (k, v) in [
        ("user", json!("user-42")),
        ("metadata", json!({"team": "risk", "ticket": "R-1"})),
        ("store", json!(true)),
        ("service_tier", json!("auto")),
        ("prediction", json!({"type": "content", "content": "alpha"})),
        ("parallel_tool_calls", json!(false)),
        ("tool_choice", json!("none")),
        ("modalities", json!(["text"])),
    ] {
        req[k] = v;
    }
    let (status, body) = post_json(&client, url.clone(), &req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "alpha beta");

    // `tool_choice: required` with no tools is a contradiction, not an unsupported field.
    let mut req = chat("alpha");
    req["tool_choice"] = json!("required");
    let (status, body) = post_json(&client, url.clone(), &req).await;
    assert_eq!(status, 400, "{body}");
    assert_error(&body, "invalid_request_error", Some("tool_choice"), None);
    for (field, value) in [
        ("logit_bias", json!({"1": 5})),
        ("reasoning_effort", json!("high")),
        ("modalities", json!(["text", "audio"])),
    ] {
        let mut req = chat("alpha");
        req[field] = value;
        let (status, body) = post_json(&client, url.clone(), &req).await;
        assert_eq!(status, 400, "{body}");
        assert_error(
            &body,
            "invalid_request_error",
            Some(field),
            Some("unsupported_parameter"),
        );
    }
    let mut req = chat("alpha");
    req["metadata"] = json!({"k": "v".repeat(513)});
    let (status, body) = post_json(&client, url.clone(), &req).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "metadata.k", "{body}");

    let mut req = chat("alpha");
    req["logprobs"] = json!(true);
    let (status, body) = post_json(&client, url, &req).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "logprobs", "{body}");
}

#[tokio::test]
async fn request_errors_in_openai_shape() {
    let (pki, daemon) = start("max_body_bytes = 4096\n", "");
    let client = daemon.client(&pki, "alice");
    let url = daemon.url("/v1/chat/completions");

    let resp = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"model\": \"x\",\n \"messages\": [}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_error(&body, "invalid_request_error", None, Some("invalid_json"));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 2 column"),
        "{body}"
    );

    let mut req = chat("x");
    req["temperature"] = json!("warm");
    let (status, body) = post_json(&client, url.clone(), &req).await;
    assert_eq!(status, 400);
    assert_error(&body, "invalid_request_error", Some("temperature"), None);

    let mut req = chat("x");
    req["n"] = json!(airlock_engine::MAX_N + 1);
    let (status, body) = post_json(&client, url.clone(), &req).await;
    assert_eq!(status, 400);
    assert_error(&body, "invalid_request_error", Some("n"), None);

    let mut req = chat("x");
    req["model"] = json!("no-such-model");
    let (status, body) = post_json(&client, url.clone(), &req).await;
    assert_eq!(status, 404);
    assert_error(
        &body,
        "not_found_error",
        Some("model"),
        Some("model_not_found"),
    );

    let resp = client
        .get(daemon.url("/v1/models/no-such-model"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let resp = client
        .get(daemon.url("/v1/no/such/route"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_error(
        &resp.json().await.unwrap(),
        "not_found_error",
        None,
        Some("not_found"),
    );

    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    assert_error(
        &resp.json().await.unwrap(),
        "invalid_request_error",
        None,
        Some("method_not_allowed"),
    );

    // 64 KiB against a 4 KiB limit: refused from Content-Length, before the body is read.
    let big = json!({"model": TEST_MODEL, "messages": [{"role": "user", "content": "w ".repeat(32 * 1024)}]});
    let resp = client.post(&url).json(&big).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_error(
        &resp.json().await.unwrap(),
        "invalid_request_error",
        None,
        Some("request_too_large"),
    );

    // The same without a Content-Length (a streamed upload): cut off at the limit.
    let chunks = futures_util::stream::iter(
        (0..64).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 1024]))),
    );
    let resp = client
        .post(&url)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);

    let models: Value = client
        .get(daemon.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], TEST_MODEL);
    assert_eq!(models["data"][0]["owned_by"], "airlock");
    assert!(
        models["data"][0]["context_length"].as_u64().unwrap() > 0,
        "{models}"
    );

    // Bodies must be declared JSON: a browser can send a missing or text/plain type
    // cross-site without a preflight. 415 names the header.
    let url = daemon.url("/v1/chat/completions");
    let json_text = chat("hello").to_string();
    for content_type in [None, Some("text/plain"), Some("text/plain; charset=utf-8")] {
        let mut req = client.post(&url).body(json_text.clone());
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 415, "{content_type:?}");
        let body: Value = resp.json().await.unwrap();
        assert_error(
            &body,
            "invalid_request_error",
            Some("Content-Type"),
            Some("unsupported_media_type"),
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Content-Type"),
            "{body}"
        );
    }
    let resp = client
        .post(&url)
        .header("content-type", "application/json; charset=utf-8")
        .body(json_text)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn client_disconnect_mid_stream_cancels_generation() {
    let (pki, daemon) = start_with_admin("", "test_token_delay = \"20ms\"\n");
    let client = daemon.client(&pki, "alice");
    let mut req = chat(&"word ".repeat(1000));
    req["stream"] = json!(true);
    let resp = client
        .post(daemon.url("/v1/chat/completions"))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("word") {
        let chunk = body.next().await.expect("stream open").unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let ready = admin_status(&daemon).await;
    assert_eq!(ready["engine"]["active_sequences"], 1, "{ready}");
    assert_eq!(ready["requests_in_flight"], 1, "{ready}");

    drop(body);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = admin_status(&daemon).await;
        if ready["engine"]["active_sequences"] == 0 && ready["requests_in_flight"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "generation still running after disconnect: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn concurrency_limit_answers_503_with_retry_after() {
    let (pki, daemon) = start(
        "max_concurrent_requests = 1\n",
        "test_token_delay = \"20ms\"\n",
    );
    let client = daemon.client(&pki, "alice");
    let mut req = chat(&"word ".repeat(1000));
    req["stream"] = json!(true);
    let held = client
        .post(daemon.url("/v1/chat/completions"))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 200);

    let resp = client
        .post(daemon.url("/generate"))
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_error(
        &resp.json().await.unwrap(),
        "server_error",
        None,
        Some("server_overloaded"),
    );

    // Probes stay open to all and are not counted.
    let health = client.get(daemon.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    drop(held);
}
