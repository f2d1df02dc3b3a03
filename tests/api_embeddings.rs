//! `POST /v1/embeddings` over the real binary: every input form, `base64` and `dimensions`,
//! the refusals by field, the tenant's allow-list, prompt filter and token limits, the
//! audit records and the metrics series (test engine: hash-seeded vectors); and the
//! embedded default model served with `pooling = "mean"` (real hidden states); and a BERT
//! encoder, which serves embeddings only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::post_json as post;
use common::{Daemon, Pki, TEST_MODEL, TestConfig};
use serde_json::{Value, json};

/// `alice`: every model, a deny and a redact rule on prompts; `bob`: every model, no
/// filter; `carol`: only a model that is not served; `capped`: a prompt cap of 6 tokens and 10 tokens a minute.
fn start(pki: &Pki) -> Daemon {
    let cfg = TestConfig {
        extra: r#"
[admin]
address = "127.0.0.1:0"

[[tenants]]
name = "alice"
models = ["*"]
cert_cn = ["alice"]
[[tenants.filters]]
id = "no-zeus"
action = "deny"
literal = "project zeus"
apply = "prompt"
[[tenants.filters]]
id = "ssn"
action = "redact"
regex = '\d{3}-\d{2}-\d{4}'
apply = "prompt"

[[tenants]]
name = "carol"
models = ["some-other-model"]
cert_cn = ["carol"]

[[tenants]]
name = "bob"
models = ["*"]
cert_cn = ["bob"]

[[tenants]]
name = "capped"
models = ["*"]
cert_cn = ["dave"]
max_prompt_tokens = 6
tokens_per_minute = 10
"#
        .into(),
        ..TestConfig::default()
    };
    Daemon::start(pki, &cfg)
}

fn vector(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

fn audit_records(daemon: &Daemon) -> Vec<Value> {
    common::audit_records(&daemon.audit_db())
}

#[tokio::test]
async fn embeddings_shapes_refusals_policy_audit_and_metrics() {
    let pki = Pki::new(&["alice", "bob", "carol", "dave"]);
    let mut daemon = start(&pki);
    let alice = daemon.client(&pki, "alice");
    let url = || daemon.url("/v1/embeddings");
    let ask = |input: Value| json!({"model": TEST_MODEL, "input": input});

    // A string: one embedding object, OpenAI's shape; the test engine's vectors are 64
    // long and normalized; usage counts the words.
    let (status, one) = post(&alice, url(), &ask(json!("the quick brown fox"))).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["object"], "list", "{one}");
    assert_eq!(one["model"], TEST_MODEL, "{one}");
    assert_eq!(one["usage"], json!({"prompt_tokens": 4, "total_tokens": 4}));
    assert_eq!(one["data"].as_array().unwrap().len(), 1);
    assert_eq!(one["data"][0]["object"], "embedding");
    assert_eq!(one["data"][0]["index"], 0);
    let fox = vector(&one["data"][0]["embedding"]);
    assert_eq!(fox.len(), 64);
    assert!((norm(&fox) - 1.0).abs() < 1e-4);

    // An array of strings: one object per input, in order; the same text, the same vector.
    let (status, many) = post(
        &alice,
        url(),
        &ask(json!(["hello there", "the quick brown fox"])),
    )
    .await;
    assert_eq!(status, 200, "{many}");
    assert_eq!(many["usage"]["prompt_tokens"], 6);
    assert_eq!(many["data"][1]["index"], 1);
    assert_eq!(vector(&many["data"][1]["embedding"]), fox);
    assert_ne!(vector(&many["data"][0]["embedding"]), fox);

    // Token ids, and arrays of them (for a tenant without a prompt filter: ids cannot be
    // read by one).
    let bob = daemon.client(&pki, "bob");
    let (status, ids) = post(&bob, url(), &ask(json!([1, 2, 3]))).await;
    assert_eq!(status, 200, "{ids}");
    assert_eq!(ids["data"].as_array().unwrap().len(), 1);
    assert_eq!(ids["usage"]["prompt_tokens"], 3);
    let (status, idss) = post(&bob, url(), &ask(json!([[1, 2, 3], [4]]))).await;
    assert_eq!(status, 200, "{idss}");
    assert_eq!(idss["data"].as_array().unwrap().len(), 2);
    assert_eq!(idss["usage"]["prompt_tokens"], 4);
    assert_eq!(idss["data"][0]["embedding"], ids["data"][0]["embedding"]);
    let (status, resp) = post(&bob, url(), &ask(json!([[1], [-1]]))).await;
    assert_eq!(status, 400, "{resp}");
    assert_eq!(resp["error"]["param"], "input[1]", "{resp}");

    // base64: the little-endian f32 bytes of the same vector.
    let (status, b64) = post(
        &alice,
        url(),
        &json!({"model": TEST_MODEL, "input": "the quick brown fox", "encoding_format": "base64", "user": "u-1"}),
    )
    .await;
    assert_eq!(status, 200, "{b64}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(decoded, fox);

    // dimensions: the first 8 numbers, normalized again.
    let (status, short) = post(
        &alice,
        url(),
        &json!({"model": TEST_MODEL, "input": "the quick brown fox", "dimensions": 8}),
    )
    .await;
    assert_eq!(status, 200, "{short}");
    let short = vector(&short["data"][0]["embedding"]);
    assert_eq!(short.len(), 8);
    assert!((norm(&short) - 1.0).abs() < 1e-4);
    let head = norm(&fox[..8]);
    for (s, f) in short.iter().zip(&fox) {
        assert!((f64::from(*s) - f64::from(*f) / head).abs() < 1e-5);
    }

    // Refusals name the field.
    for (body, status, param) in [
        (
            json!({"model": TEST_MODEL, "input": "a", "dimensions": 65}),
            400,
            "dimensions",
        ),
        (
            json!({"model": TEST_MODEL, "input": "a", "dimensions": 0}),
            400,
            "dimensions",
        ),
        (
            json!({"model": TEST_MODEL, "input": ["a", ""]}),
            400,
            "input[1]",
        ),
        (json!({"model": TEST_MODEL, "input": []}), 400, "input"),
        (
            json!({"model": TEST_MODEL, "input": vec!["a"; 2049]}),
            400,
            "input",
        ),
        (
            json!({"model": TEST_MODEL, "input": "a", "encoding_format": "hex"}),
            400,
            "encoding_format",
        ),
        (
            json!({"model": TEST_MODEL, "input": ["a", "w ".repeat(2049)]}),
            400,
            "input[1]",
        ),
        (json!({"model": "nope", "input": "a"}), 404, "model"),
    ] {
        let (got, resp) = post(&alice, url(), &body).await;
        assert_eq!(got, status, "{resp}");
        assert_eq!(resp["error"]["param"], param, "{resp}");
    }

    // The prompt filter reads every input: a deny in any refuses the request; a redaction
    // changes what is embedded (the vector of the redacted text).
    let (status, denied) = post(&alice, url(), &ask(json!(["fine", "about project zeus"]))).await;
    assert_eq!(status, 403, "{denied}");
    assert_eq!(denied["error"]["code"], "content_policy_violation");
    let (status, redacted) = post(&alice, url(), &ask(json!(["ssn 123-45-6789"]))).await;
    assert_eq!(status, 200, "{redacted}");
    let (_, plain) = post(&alice, url(), &ask(json!(["ssn [REDACTED:ssn]"]))).await;
    assert_eq!(
        vector(&redacted["data"][0]["embedding"]),
        vector(&plain["data"][0]["embedding"])
    );
    let (status, ids) = post(&alice, url(), &ask(json!([[1, 2]]))).await;
    assert_eq!(status, 403, "{ids}");

    // The allow-list: as for chat.
    let carol = daemon.client(&pki, "carol");
    let (status, resp) = post(&carol, url(), &ask(json!("a"))).await;
    assert_eq!(status, 403, "{resp}");
    assert_eq!(resp["error"]["code"], "model_not_allowed", "{resp}");

    // Token limits: all inputs together against the prompt cap (6), then the minute's
    // budget (10): 5 + 5 pass, one more token does not.
    let dave = daemon.client(&pki, "dave");
    let (status, resp) = post(&dave, url(), &ask(json!(["a b c d", "e f g"]))).await;
    assert_eq!(status, 403, "{resp}");
    assert_eq!(resp["error"]["code"], "prompt_too_long", "{resp}");
    assert_eq!(resp["error"]["param"], "input", "{resp}");
    for _ in 0..2 {
        let (status, resp) = post(&dave, url(), &ask(json!(["a b c", "d e"]))).await;
        assert_eq!(status, 200, "{resp}");
    }
    let (status, resp) = post(&dave, url(), &ask(json!("a"))).await;
    assert_eq!(status, 429, "{resp}");

    // /v1/models lists `embeddings` for the model.
    let models: Value = alice
        .get(daemon.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let caps = models["data"][0]["capabilities"].as_array().unwrap();
    assert!(caps.contains(&json!("embeddings")), "{models}");

    // Metrics: a series of its own.
    let metrics = daemon.metrics().await;
    assert!(
        metrics.contains(r#"route="/v1/embeddings",status="200""#),
        "{metrics}"
    );

    // Audit: admissions carry the input count and a digest, never the text; completions
    // the usage and a digest of the vectors.
    daemon.signal("TERM");
    assert!(daemon.wait_exit(Duration::from_secs(30)).is_some());
    let records = audit_records(&daemon);
    let admits: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "admit" && r["route"] == "POST /v1/embeddings")
        .collect();
    assert!(
        admits
            .iter()
            .any(|r| r["embedding_inputs"] == 2 && r["tenant"] == "alice"),
        "{records:#?}"
    );
    assert!(admits.iter().all(|r| r["prompt_digest"].is_string()
        && r["embedding_inputs"].as_u64().is_some_and(|n| n >= 1)
        && r["embedding_texts"].is_null()
        && r["prompt_text"].is_null()));
    let first = admits.iter().find(|r| r["embedding_inputs"] == 1).unwrap();
    let complete = records
        .iter()
        .find(|r| r["kind"] == "complete" && r["admit_seq"] == first["seq"])
        .unwrap();
    assert_eq!(complete["status"], 200, "{complete}");
    assert_eq!(complete["prompt_tokens"], 4, "{complete}");
    assert!(complete["output_digest"].is_string(), "{complete}");
    let all = records
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!all.contains("quick brown fox"), "text in the audit log");
    assert!(!all.contains("123-45-6789"), "text in the audit log");
}

/// The embedded default model, served for embeddings with mean pooling: vectors as long as
/// its hidden size, normalized, deterministic; a model without embeddings refuses by name.
#[tokio::test]
async fn default_model_serves_mean_pooled_embeddings() {
    let pki = Pki::new(&["alice"]);
    let model_dir = tempfile::tempdir().unwrap();
    let path = airlock_engine::default_model::install(model_dir.path()).unwrap();
    let name = airlock_engine::default_model::NAME;
    let cfg = TestConfig {
        models: format!(
            "[[models]]\nname = \"{name}\"\npath = {p:?}\ndevice = \"cpu\"\n\n\
             [[models]]\nname = \"tiny-embed\"\npath = {p:?}\ndevice = \"cpu\"\npooling = \"mean\"\n",
            p = path.to_str().unwrap()
        ),
        extra: "[[tenants]]\nname = \"alice\"\nmodels = [\"*\"]\ncert_cn = [\"alice\"]\n".into(),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let alice = daemon.client(&pki, "alice");
    let url = daemon.url("/v1/embeddings");
    let body = json!({"model": "tiny-embed", "input": ["The quick brown fox.", "An unrelated sentence about tea.", "The quick brown fox."]});
    let (status, resp) = post(&alice, url.clone(), &body).await;
    assert_eq!(status, 200, "{resp}");
    let v: Vec<Vec<f32>> = (0..3)
        .map(|i| vector(&resp["data"][i]["embedding"]))
        .collect();
    assert!(v[0].len() > 8, "{}", v[0].len());
    for x in &v {
        assert!((norm(x) - 1.0).abs() < 1e-4);
    }
    assert_eq!(v[0], v[2]);
    assert_ne!(v[0], v[1]);
    assert!(
        resp["usage"]["prompt_tokens"].as_u64().unwrap() > 6,
        "{resp}"
    );
    // The chat model serves none: 400 naming `model`.
    let (status, resp) = post(&alice, url, &json!({"model": name, "input": "a"})).await;
    assert_eq!(status, 400, "{resp}");
    assert_eq!(resp["error"]["param"], "model", "{resp}");
}

/// A BERT encoder (the `bert_wordpiece` sentence-transformers fixture) served from a
/// `[[models]]` entry: `/v1/models` lists it as an embeddings model only, its vectors over
/// HTTP are sentence-transformers' (cosine ≥ 0.9999), and chat or completions against it
/// are a 400 naming the model.
#[tokio::test]
async fn bert_encoder_serves_embeddings_only() {
    let pki = Pki::new(&["alice"]);
    let fixtures = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../engine/tests/fixtures"
    ));
    let cfg = TestConfig {
        models: common::cpu_model("tiny-bert", &fixtures.join("bert_wordpiece")),
        extra: "[[tenants]]\nname = \"alice\"\nmodels = [\"*\"]\ncert_cn = [\"alice\"]\n".into(),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let alice = daemon.client(&pki, "alice");
    let models: Value = alice
        .get(daemon.url("/v1/models/tiny-bert"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        models["capabilities"],
        json!(["tokenize", "embeddings"]),
        "{models}"
    );

    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("expected.json")).unwrap())
            .unwrap();
    let inputs = expected["encoders"]["bert_wordpiece"]["inputs"]
        .as_array()
        .unwrap();
    let texts: Vec<&str> = inputs.iter().map(|i| i["text"].as_str().unwrap()).collect();
    let body = json!({"model": "tiny-bert", "input": texts});
    let (status, resp) = post(&alice, daemon.url("/v1/embeddings"), &body).await;
    assert_eq!(status, 200, "{resp}");
    for (i, input) in inputs.iter().enumerate() {
        let got = vector(&resp["data"][i]["embedding"]);
        let want = vector(&input["embedding"]);
        let dot: f64 = got
            .iter()
            .zip(&want)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        let cos = dot / (norm(&got) * norm(&want));
        assert!(cos >= 0.9999, "input {i}: cosine {cos}");
    }
    let tokens: usize = inputs
        .iter()
        .map(|i| i["ids"].as_array().unwrap().len())
        .sum();
    assert_eq!(resp["usage"]["prompt_tokens"], json!(tokens), "{resp}");

    for (route, body) in [
        (
            "/v1/chat/completions",
            json!({"model": "tiny-bert", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/completions",
            json!({"model": "tiny-bert", "prompt": "hi"}),
        ),
    ] {
        let (status, resp) = post(&alice, daemon.url(route), &body).await;
        assert_eq!(status, 400, "{route}: {resp}");
        let message = resp["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("tiny-bert") && message.contains("embeddings"),
            "{route}: {resp}"
        );
    }
}
