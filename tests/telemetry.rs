//! OpenTelemetry from the real binary to a collector in this test: an OTLP/HTTP receiver
//! (hyper over TLS, the PKI's server certificate) that decodes the protobuf requests with
//! the OpenTelemetry project's own message types.
//!
//! * `[telemetry]`: one server span per request with the GenAI semantic-convention
//!   attributes, the tenant and the request id; never the prompt; a client's `traceparent`
//!   is not continued by a gateway that is not behind a trusted proxy.
//! * `[[audit.sinks]] kind = "otlp-http"`: every committed record arrives as one LogRecord
//!   whose body is the record exactly as committed, with its seq, hash and node; while the
//!   collector is down requests are served as usual, and when it is back the sink catches up
//!   from its cursor.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Daemon, Pki, TestConfig};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the collector received.
#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    logs: Vec<LogRecord>,
    /// `(service.name, host.name)` of each log export's resource.
    log_resources: Vec<(String, String)>,
}

/// An OTLP/HTTP collector on `addr`, over TLS or (`tls: false`) plain HTTP.
struct Collector {
    task: JoinHandle<()>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Collector {
    async fn start(pki: &Pki, addr: SocketAddr, got: Arc<Mutex<Received>>) -> Collector {
        Self::start_with(pki, addr, got, true).await
    }

    async fn start_with(
        pki: &Pki,
        addr: SocketAddr,
        got: Arc<Mutex<Received>>,
        tls: bool,
    ) -> Collector {
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
                    let service = hyper::service::service_fn(move |req| {
                        let got = Arc::clone(&got);
                        async move { Ok::<_, Infallible>(export(req, &got).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    if !tls {
                        let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                        return;
                    }
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                });
                handles.lock().unwrap().push(connection);
            }
        });
        Collector { task, connections }
    }

    /// Gone: the listener and every connection close.
    fn stop(self) {
        self.task.abort();
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

/// One OTLP export request: decoded and kept; answered with an empty (full) success.
async fn export(
    req: Request<hyper::body::Incoming>,
    got: &Mutex<Received>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let content_type = req
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(content_type.as_deref(), Some("application/x-protobuf"));
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut got = got.lock().unwrap();
    match path.as_str() {
        "/v1/traces" => {
            let export = ExportTraceServiceRequest::decode(body).unwrap();
            for resource in export.resource_spans {
                for scope in resource.scope_spans {
                    got.spans.extend(scope.spans);
                }
            }
        }
        "/v1/logs" => {
            let export = ExportLogsServiceRequest::decode(body).unwrap();
            for resource in export.resource_logs {
                let attrs = resource.resource.map(|r| r.attributes).unwrap_or_default();
                got.log_resources.push((
                    string(&attrs, "service.name").unwrap_or_default(),
                    string(&attrs, "host.name").unwrap_or_default(),
                ));
                for scope in resource.scope_logs {
                    got.logs.extend(scope.log_records);
                }
            }
        }
        other => panic!("unexpected OTLP path {other}"),
    }
    Response::builder()
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn value<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn string(attrs: &[KeyValue], key: &str) -> Option<String> {
    match value(attrs, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match value(attrs, key)? {
        any_value::Value::IntValue(i) => Some(*i),
        _ => None,
    }
}

fn double(attrs: &[KeyValue], key: &str) -> Option<f64> {
    match value(attrs, key)? {
        any_value::Value::DoubleValue(d) => Some(*d),
        _ => None,
    }
}

fn strings(attrs: &[KeyValue], key: &str) -> Vec<String> {
    match value(attrs, key) {
        Some(any_value::Value::ArrayValue(array)) => array
            .values
            .iter()
            .filter_map(|v| match v.value.as_ref() {
                Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The records committed so far, as (seq, body, hash in hex).
fn committed(db: &std::path::Path) -> Vec<(u64, String, String)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT seq, body, hash FROM records ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)? as u64,
            String::from_utf8(r.get::<_, Vec<u8>>(1)?).unwrap(),
            hex::encode(r.get::<_, Vec<u8>>(2)?),
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Waits until every committed record has arrived as a LogRecord carrying it exactly:
/// body, seq, hash and node. Returns the committed records.
async fn wait_for_all(
    db: &std::path::Path,
    got: &Arc<Mutex<Received>>,
) -> Vec<(u64, String, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let want = committed(db);
        let arrived: Vec<(u64, String, String, String)> = got
            .lock()
            .unwrap()
            .logs
            .iter()
            .map(|log| {
                let body = match log.body.as_ref().and_then(|b| b.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    other => panic!("the body is the record's JSON text: {other:?}"),
                };
                (
                    int(&log.attributes, "airlock.audit.seq").unwrap() as u64,
                    body,
                    string(&log.attributes, "airlock.audit.hash").unwrap(),
                    string(&log.attributes, "airlock.node").unwrap(),
                )
            })
            .collect();
        let missing = want
            .iter()
            .filter(|(seq, body, hash)| {
                !arrived
                    .iter()
                    .any(|(s, b, h, node)| s == seq && b == body && h == hash && node == "node-a")
            })
            .count();
        if missing == 0 {
            return want;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} records did not arrive as committed",
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn request_spans_and_audit_records_reach_an_otlp_collector() {
    let pki = Pki::new(&["alice"]);
    // A free port for the collector, reused after its outage.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let got = Arc::new(Mutex::new(Received::default()));
    let collector = Collector::start(&pki, addr, Arc::clone(&got)).await;
    let ca = pki.ca();
    let ca = ca.to_str().unwrap();
    let endpoint = format!("https://127.0.0.1:{}", addr.port());
    let cfg = TestConfig {
        audit: Some(format!(
            "node = \"node-a\"\n[[audit.sinks]]\nname = \"otel\"\nkind = \"otlp-http\"\n\
             endpoint = \"{endpoint}\"\nserver_name = \"localhost\"\nca = {ca:?}\n"
        )),
        extra: format!(
            "[telemetry]\nendpoint = \"{endpoint}\"\nserver_name = \"localhost\"\nca = {ca:?}\n\
             interval = \"100ms\"\nservice_name = \"airlock-test\"\n\
             [admin]\naddress = \"127.0.0.1:0\"\n"
        ),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let alice = daemon.client(&pki, "alice");
    let secret_prompt = "the-prompt-text-must-never-be-exported";
    let chat = json!({
        "model": common::TEST_MODEL,
        "messages": [{"role": "user", "content": secret_prompt}],
        "max_tokens": 4,
        "temperature": 0.5,
    });
    // A client's traceparent: not continued (no trusted proxy in front of this gateway).
    let foreign_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = alice
        .post(daemon.url("/v1/chat/completions"))
        .header(
            "traceparent",
            format!("00-{foreign_trace}-00f067aa0ba902b7-01"),
        )
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let answer: serde_json::Value = resp.json().await.unwrap();
    // A stream: its span ends with the stream, usage and finish reason included.
    let mut stream = chat.clone();
    stream["stream"] = json!(true);
    let (status, text) =
        common::post_text(&alice, daemon.url("/v1/chat/completions"), &stream).await;
    assert_eq!(status, 200, "{text}");
    // A refusal: a model the tenant does not have.
    let mut missing = chat.clone();
    missing["model"] = json!("no-such-model");
    let (status, _) = common::post_json(&alice, daemon.url("/v1/chat/completions"), &missing).await;
    assert_eq!(status, 404);

    // (a) The spans.
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans = got.lock().unwrap().spans.clone();
        if spans.len() >= 3 {
            break spans;
        }
        assert!(Instant::now() < deadline, "{} spans arrived", spans.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let first = spans
        .iter()
        .find(|s| string(&s.attributes, "airlock.request_id").as_deref() == Some(&request_id))
        .unwrap_or_else(|| panic!("no span for request {request_id}: {spans:?}"));
    let a = &first.attributes;
    assert_eq!(first.name, format!("chat {}", common::TEST_MODEL));
    assert_eq!(first.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(string(a, "gen_ai.operation.name").as_deref(), Some("chat"));
    assert_eq!(
        string(a, "gen_ai.request.model").as_deref(),
        Some(common::TEST_MODEL)
    );
    assert_eq!(int(a, "gen_ai.request.max_tokens"), Some(4));
    assert_eq!(double(a, "gen_ai.request.temperature"), Some(0.5));
    assert_eq!(
        string(a, "gen_ai.response.id").as_deref(),
        answer["id"].as_str()
    );
    assert_eq!(
        string(a, "gen_ai.response.model").as_deref(),
        answer["model"].as_str()
    );
    assert_eq!(
        string(a, "gen_ai.provider.name").as_deref(),
        Some("airlock")
    );
    assert_eq!(
        strings(a, "gen_ai.response.finish_reasons"),
        vec![
            answer["choices"][0]["finish_reason"]
                .as_str()
                .unwrap()
                .to_owned()
        ]
    );
    assert_eq!(
        int(a, "gen_ai.usage.input_tokens"),
        answer["usage"]["prompt_tokens"].as_i64()
    );
    assert_eq!(
        int(a, "gen_ai.usage.output_tokens"),
        answer["usage"]["completion_tokens"].as_i64()
    );
    assert_eq!(string(a, "airlock.tenant").as_deref(), Some("alice"));
    assert_eq!(int(a, "http.response.status_code"), Some(200));
    assert_eq!(
        string(a, "http.route").as_deref(),
        Some("/v1/chat/completions")
    );
    assert_ne!(
        hex::encode(&first.trace_id),
        foreign_trace,
        "a client's traceparent is not continued"
    );
    assert!(first.parent_span_id.is_empty(), "a root span");
    // The stream's span has its outcome too.
    assert!(
        spans.iter().any(|s| s.span_id != first.span_id
            && int(&s.attributes, "gen_ai.usage.output_tokens").is_some_and(|n| n > 0)
            && !strings(&s.attributes, "gen_ai.response.finish_reasons").is_empty()),
        "{spans:?}"
    );
    // The refusal: a client error, named.
    assert!(
        spans.iter().any(
            |s| int(&s.attributes, "http.response.status_code") == Some(404)
                && string(&s.attributes, "error.type").is_some()
        ),
        "{spans:?}"
    );
    // Never the prompt.
    let exported = format!("{spans:?}");
    assert!(!exported.contains(secret_prompt), "{exported}");

    // (b) The audit records, exactly as committed.
    let db = daemon.audit_db();
    let first_records = wait_for_all(&db, &got).await;
    assert!(first_records.len() >= 6, "{first_records:?}");
    {
        let got = got.lock().unwrap();
        assert!(
            got.log_resources
                .iter()
                .all(|(service, host)| service == "airlockd" && host == "node-a"),
            "{:?}",
            got.log_resources
        );
        let seqs: Vec<i64> = got
            .logs
            .iter()
            .map(|l| int(&l.attributes, "airlock.audit.seq").unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
        assert!(got.logs.iter().all(|l| l.time_unix_nano > 0));
    }

    // The collector goes away: requests are served as before.
    collector.stop();
    for _ in 0..3 {
        let (status, body) =
            common::post_json(&alice, daemon.url("/v1/chat/completions"), &chat).await;
        assert_eq!(
            status, 200,
            "the collector being down must not affect serving: {body}"
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Back: the sink catches up from its cursor.
    let _collector = Collector::start(&pki, addr, Arc::clone(&got)).await;
    let all = wait_for_all(&db, &got).await;
    assert!(
        all.len() >= first_records.len() + 6,
        "{} then {}",
        first_records.len(),
        all.len()
    );
    let cursor_file = db.with_extension("db.sink-otel.cursor");
    let last = all.last().unwrap().0;
    let deadline = Instant::now() + Duration::from_secs(10);
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

    // The metrics tell the operator both stories: spans exported, and dropped while the
    // collector was away; records delivered, and the failed attempts.
    let metrics = daemon.metrics().await;
    let sample = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or_else(|| panic!("no sample {series} in\n{metrics}"))
    };
    assert!(sample("airlock_telemetry_spans_exported_total ") >= 3.0);
    assert!(sample("airlock_telemetry_spans_dropped_total{reason=\"export_failed\"} ") >= 1.0);
    assert!(sample("airlock_audit_sink_records_total{sink=\"otel\"} ") >= last as f64);
    assert!(sample("airlock_audit_sink_failures_total{sink=\"otel\"} ") >= 1.0);
}

/// Behind a trusted reverse proxy (the default `trust_traceparent = "proxy"`), the proxy's
/// `traceparent` is continued: the span joins the caller's trace as a child of its span. The
/// collector is a plain-HTTP one on loopback (allowed without `danger_allow_http`).
#[tokio::test]
async fn a_trusted_proxys_traceparent_is_continued() {
    let pki = Pki::new(&["alice"]);
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let got = Arc::new(Mutex::new(Received::default()));
    let _collector = Collector::start_with(&pki, addr, Arc::clone(&got), false).await;
    let cfg = TestConfig {
        mode: "proxy",
        proxy: "trusted_proxies = [\"127.0.0.1\"]\nclient_cert_header = \"x-client-cert\"\n".into(),
        extra: format!(
            "[telemetry]\nendpoint = \"http://127.0.0.1:{}\"\ninterval = \"100ms\"\n",
            addr.port()
        ),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let pem = std::fs::read_to_string(pki.client("alice").0).unwrap();
    let escaped =
        percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC).to_string();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let resp = common::http_client()
        .post(daemon.http_url("/v1/chat/completions"))
        .header("x-client-cert", escaped)
        .header("traceparent", format!("00-{trace}-{parent}-01"))
        .json(&json!({
            "model": common::TEST_MODEL,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 2,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    let span = loop {
        if let Some(span) = got.lock().unwrap().spans.first().cloned() {
            break span;
        }
        assert!(Instant::now() < deadline, "no span arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(hex::encode(&span.trace_id), trace);
    assert_eq!(hex::encode(&span.parent_span_id), parent);
    assert_eq!(
        string(&span.attributes, "airlock.tenant").as_deref(),
        Some("alice")
    );
}
