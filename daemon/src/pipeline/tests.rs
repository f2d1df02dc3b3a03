//! In-process tests of `handle` with the deterministic test engine (no sockets: the
//! integration tests in `tests/api_*.rs` cover the real binary).

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_engine::test_engine::{TestEngine, TestEngineConfig};
use bytes::Bytes;
use futures_util::stream;
use http::{Method, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{Value, json};

use super::*;
use crate::app::AppSettings;
use crate::identity::CertIdentity;

const MODEL: &str = "test-echo";

fn settings() -> AppSettings {
    AppSettings {
        max_body_bytes: 4096,
        request_deadline: Duration::from_secs(10),
        max_concurrent_requests: 4,
        body_read_timeout: Duration::from_secs(10),
    }
}

fn app_with(engine: TestEngineConfig, settings: AppSettings) -> Arc<App> {
    let engine = TestEngine::new(engine).expect("test engine starts");
    App::new(Arc::new(engine), settings)
}

fn app() -> Arc<App> {
    app_with(TestEngineConfig::default(), settings())
}

fn conn() -> Arc<ConnInfo> {
    Arc::new(ConnInfo {
        peer_addr: None,
        trusted_proxy: false,
        tls_client_cert: Some(CertIdentity {
            common_name: Some("alice".into()),
            ..CertIdentity::default()
        }),
        alpn: None,
        forwarded_client_cert: None,
        forwarded_for: None,
    })
}

fn request(method: Method, path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.into()))
        .expect("valid request")
}

async fn send(app: &Arc<App>, req: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, Bytes) {
    let resp = handle(Arc::clone(app), conn(), req).await;
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (parts.status, parts.headers, bytes)
}

async fn post(app: &Arc<App>, path: &str, body: Value) -> (StatusCode, Value) {
    let (status, _, bytes) = send(app, request(Method::POST, path, body.to_string())).await;
    (status, serde_json::from_slice(&bytes).expect("JSON body"))
}

fn chat_body(content: &str) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": content}]})
}

/// The `data:` payloads of an SSE body, in order.
fn sse_events(bytes: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(bytes).expect("UTF-8 stream");
    assert!(
        text.ends_with("\n\n"),
        "stream ends with a blank line: {text:?}"
    );
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data event").to_owned())
        .collect()
}

fn error_of(body: &Value) -> (&str, Option<&str>, Option<&str>) {
    let e = &body["error"];
    assert!(e["message"].is_string(), "error message: {body}");
    (
        e["type"].as_str().expect("type"),
        e["param"].as_str(),
        e["code"].as_str(),
    )
}

#[tokio::test]
async fn chat_completion() {
    let app = app();
    let (status, body) = post(&app, "/v1/chat/completions", chat_body("hello there world")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().expect("id").starts_with("chatcmpl-"));
    assert_eq!(body["model"], MODEL);
    assert_eq!(
        body["choices"][0]["message"],
        json!({"role": "assistant", "content": "hello there world"})
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["choices"][0]["logprobs"], Value::Null);
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7})
    );
    assert!(body["system_fingerprint"].is_string());
}

#[tokio::test]
async fn chat_stream_with_usage() {
    let app = app();
    let mut req = chat_body("a b c");
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    req["max_tokens"] = json!(2);
    let (status, headers, bytes) = send(
        &app,
        request(Method::POST, "/v1/chat/completions", req.to_string()),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers[header::CONTENT_TYPE], "text/event-stream");
    let events = sse_events(&bytes);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("JSON chunk"))
        .collect();
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "a b");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["usage"], Value::Null);
    let last = &chunks[chunks.len() - 1];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 2);
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
}

#[tokio::test]
async fn completions_and_generate() {
    let app = app();
    let (status, body) = post(
        &app,
        "/v1/completions",
        json!({"model": MODEL, "prompt": "x y"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], "x y");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");

    let long = "w ".repeat(40);
    let (_, body) = post(
        &app,
        "/v1/completions",
        json!({"model": MODEL, "prompt": long}),
    )
    .await;
    assert_eq!(
        body["usage"]["completion_tokens"], 16,
        "OpenAI's default of 16 for completions"
    );

    let (status, body) = post(
        &app,
        "/generate",
        json!({"prompt": "p q r", "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["generated_text"], "p q");
    assert_eq!(body["usage"]["total_tokens"], 5);
}

#[tokio::test]
async fn completion_stream_without_usage() {
    let app = app();
    let req = json!({"model": MODEL, "prompt": "one two", "stream": true});
    let (status, _, bytes) = send(
        &app,
        request(Method::POST, "/v1/completions", req.to_string()),
    )
    .await;
    assert_eq!(status, 200);
    let events = sse_events(&bytes);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("JSON"))
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "one two");
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(
        chunks.last().expect("chunk")["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn request_errors() {
    let app = app();
    let (status, _, bytes) = send(
        &app,
        request(Method::POST, "/v1/chat/completions", "{\"model\": "),
    )
    .await;
    let body: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(status, 400);
    assert_eq!(
        error_of(&body),
        ("invalid_request_error", None, Some("invalid_json"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("line 1 column")
    );

    let mut req = chat_body("x");
    req["temperature"] = json!("hot");
    let (status, body) = post(&app, "/v1/chat/completions", req).await;
    assert_eq!(
        (status, error_of(&body).1),
        (StatusCode::BAD_REQUEST, Some("temperature"))
    );

    let mut req = chat_body("x");
    req["n"] = json!(airlock_engine::MAX_N + 1);
    let (status, body) = post(&app, "/v1/chat/completions", req).await;
    assert_eq!(
        (status, error_of(&body).1),
        (StatusCode::BAD_REQUEST, Some("n"))
    );

    let (status, body) = post(
        &app,
        "/v1/chat/completions",
        json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        error_of(&body),
        ("not_found_error", Some("model"), Some("model_not_found"))
    );

    let (status, body) = post(
        &app,
        "/v1/completions",
        json!({"model": MODEL, "prompt": "x", "echo": true}),
    )
    .await;
    assert_eq!(
        (status, error_of(&body).1),
        (StatusCode::BAD_REQUEST, Some("echo"))
    );

    let (status, body) = post(&app, "/v1/chat/completions", json!({"messages": []})).await;
    assert_eq!(
        (status, error_of(&body).1),
        (StatusCode::BAD_REQUEST, Some("model"))
    );

    let (status, _, bytes) = send(&app, request(Method::GET, "/v1/nothing", "")).await;
    let body: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(
        (status, error_of(&body).2),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    let (status, headers, _) = send(&app, request(Method::GET, "/v1/chat/completions", "")).await;
    assert_eq!(status, 405);
    assert_eq!(headers[header::ALLOW], "POST");

    let mut req = request(Method::POST, "/generate", "prompt=x");
    req.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/x-www-form-urlencoded".parse().expect("value"),
    );
    assert_eq!(send(&app, req).await.0, 415);
}

#[tokio::test]
async fn context_length_is_a_400_with_numbers() {
    let app = app_with(
        TestEngineConfig {
            context_length: 8,
            ..Default::default()
        },
        settings(),
    );
    let mut req = chat_body("a b c");
    req["max_tokens"] = json!(10);
    let (status, body) = post(&app, "/v1/chat/completions", req).await;
    assert_eq!(status, 400);
    assert_eq!(
        error_of(&body),
        (
            "invalid_request_error",
            Some("messages"),
            Some("context_length_exceeded")
        )
    );
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains('8') && message.contains("10"), "{message}");
}

#[tokio::test]
async fn oversized_bodies_are_refused_without_reading_them_whole() {
    let app = app();
    // Declared length over the limit.
    let big = vec![b' '; 5000];
    let (status, _, bytes) = send(&app, request(Method::POST, "/v1/completions", big)).await;
    assert_eq!(status, 413);
    let body: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(error_of(&body).2, Some("request_too_large"));

    // No declared length: an endless body is abandoned once past the limit.
    let chunks = stream::iter(std::iter::repeat_with(|| {
        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(&[b' '; 1024])))
    }));
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(StreamBody::new(chunks))
        .expect("request");
    let resp = handle(Arc::clone(&app), conn(), req).await;
    assert_eq!(resp.status(), 413);
}

#[tokio::test]
async fn models_and_probes() {
    let app = app();
    let (status, _, bytes) = send(&app, request(Method::GET, "/v1/models", "")).await;
    let body: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(status, 200);
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], MODEL);
    assert_eq!(body["data"][0]["object"], "model");
    assert_eq!(body["data"][0]["owned_by"], "airlock");

    let (status, _, _) = send(
        &app,
        request(Method::GET, &format!("/v1/models/{MODEL}"), ""),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, bytes) = send(&app, request(Method::GET, "/v1/models/other", "")).await;
    let body: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(
        (status, error_of(&body).2),
        (StatusCode::NOT_FOUND, Some("model_not_found"))
    );

    let (status, _, bytes) = send(&app, request(Method::GET, "/healthz", "")).await;
    assert_eq!(
        (status, &bytes[..]),
        (StatusCode::OK, &b"{\"status\":\"ok\"}"[..])
    );
    // Open, so it says ready or not and nothing else (figures are on the admin listener).
    let (status, _, bytes) = send(&app, request(Method::GET, "/readyz", "")).await;
    assert_eq!(
        (status, &bytes[..]),
        (StatusCode::OK, &b"{\"status\":\"ready\"}"[..])
    );
}

#[tokio::test]
async fn concurrency_limit_answers_503_and_dropped_streams_free_slots() {
    let engine = TestEngineConfig {
        token_delay: Duration::from_millis(10),
        ..Default::default()
    };
    let app = app_with(
        engine,
        AppSettings {
            max_concurrent_requests: 1,
            ..settings()
        },
    );
    let mut req = chat_body(&"w ".repeat(500));
    req["stream"] = json!(true);
    let stream = handle(
        Arc::clone(&app),
        conn(),
        request(Method::POST, "/v1/chat/completions", req.to_string()),
    )
    .await;
    assert_eq!(stream.status(), 200);

    let (status, headers, _) = send(
        &app,
        request(
            Method::POST,
            "/generate",
            json!({"prompt": "x"}).to_string(),
        ),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert_eq!(app.engine.status().active, 1);

    // The client goes away: the body (and its generation and slot) is dropped.
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.engine.status().active != 0 || app.requests_in_flight() != 0 {
        assert!(Instant::now() < deadline, "generation not cancelled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, _) = post(&app, "/generate", json!({"prompt": "x"})).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn deadline_answers_504_and_cancels() {
    let engine = TestEngineConfig {
        token_delay: Duration::from_millis(20),
        ..Default::default()
    };
    let app = app_with(
        engine,
        AppSettings {
            request_deadline: Duration::from_millis(100),
            ..settings()
        },
    );
    let (status, body) = post(&app, "/generate", json!({"prompt": "w ".repeat(100)})).await;
    assert_eq!(status, 504);
    assert_eq!(error_of(&body), ("server_error", None, Some("timeout")));
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.engine.status().active != 0 {
        assert!(Instant::now() < deadline, "generation not cancelled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn failure_mid_stream_is_an_error_event() {
    let app = app();
    let mut req = chat_body(&format!("a {} b", airlock_engine::test_engine::FAIL_WORD));
    req["stream"] = json!(true);
    let (status, _, bytes) = send(
        &app,
        request(Method::POST, "/v1/chat/completions", req.to_string()),
    )
    .await;
    assert_eq!(status, 200);
    let events = sse_events(&bytes);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let error: Value = serde_json::from_str(&events[events.len() - 2]).expect("JSON");
    assert_eq!(error["error"]["type"], "server_error");
    assert!(
        !error["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("__airlock"),
        "no internals leak"
    );

    // Not streaming, the same failure is a plain 500.
    let (status, body) = post(
        &app,
        "/generate",
        json!({"prompt": airlock_engine::test_engine::FAIL_WORD}),
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(error_of(&body), ("server_error", None, None));
}

/// Counts how the path uses the engine, and on which thread, around the test engine.
struct Counting {
    inner: TestEngine,
    runtime_thread: std::thread::ThreadId,
    /// (call, ran on the runtime's own thread)
    calls: std::sync::Mutex<Vec<(&'static str, bool)>>,
}

impl Counting {
    fn note(&self, call: &'static str) {
        let on_runtime = std::thread::current().id() == self.runtime_thread;
        self.calls.lock().expect("calls").push((call, on_runtime));
    }
}

impl airlock_engine::Engine for Counting {
    fn models(&self) -> Vec<airlock_engine::ModelInfo> {
        self.inner.models()
    }
    fn count_prompt_tokens(
        &self,
        model: &str,
        prompt: &airlock_engine::Prompt,
    ) -> Result<usize, airlock_engine::EngineError> {
        self.note("count");
        self.inner.count_prompt_tokens(model, prompt)
    }
    fn submit(
        &self,
        request: airlock_engine::GenerateRequest,
    ) -> Result<airlock_engine::Generation, airlock_engine::EngineError> {
        self.note("submit");
        self.inner.submit(request)
    }
    fn prepare(
        &self,
        model: &str,
        prompt: &airlock_engine::Prompt,
    ) -> Result<airlock_engine::Prepared, airlock_engine::EngineError> {
        self.note("prepare");
        self.inner.prepare(model, prompt)
    }
    fn submit_prepared(
        &self,
        request: airlock_engine::GenerateRequest,
        prepared: airlock_engine::Prepared,
    ) -> Result<airlock_engine::Generation, airlock_engine::EngineError> {
        self.note("submit_prepared");
        self.inner.submit_prepared(request, prepared)
    }
    fn status(&self) -> airlock_engine::EngineStatus {
        self.inner.status()
    }
}

#[tokio::test]
async fn the_prompt_is_tokenized_once_and_small_ones_without_a_thread_hop() {
    let engine = Arc::new(Counting {
        inner: TestEngine::new(TestEngineConfig::default()).expect("test engine starts"),
        runtime_thread: std::thread::current().id(),
        calls: std::sync::Mutex::new(Vec::new()),
    });
    let app = App::new(
        Arc::clone(&engine) as Arc<dyn airlock_engine::Engine>,
        settings(),
    );
    let (status, body) = post(&app, "/v1/chat/completions", chat_body("hello there")).await;
    assert_eq!(status, 200, "{body}");
    // One tokenization (`prepare`; `count_prompt_tokens` and `submit` not at all), and
    // both it and the submission on the runtime's thread: no blocking-pool round trip.
    assert_eq!(
        std::mem::take(&mut *engine.calls.lock().expect("calls")),
        [("prepare", true), ("submit_prepared", true)]
    );
    // Past 2 KiB of text the tokenizing moves to the blocking pool (still once); the
    // submission of the prepared prompt stays on the runtime.
    let long = "word ".repeat(600);
    let (status, body) = post(&app, "/v1/chat/completions", chat_body(&long)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        std::mem::take(&mut *engine.calls.lock().expect("calls")),
        [("prepare", false), ("submit_prepared", true)]
    );
}
