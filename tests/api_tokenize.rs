//! `/tokenize` and `/detokenize` over the real binary and the embedded default model: both
//! servers' shapes, the round trip, the tenant's allow-list and prompt filter, the audit
//! records and the metrics series of the new routes; and the model list's capabilities.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::post_json as post;
use common::{Daemon, Pki, TestConfig};
use serde_json::{Value, json};

const NAME: &str = airlock_engine::default_model::NAME;

/// The default model for `alice` (every model, a deny rule on prompts) and `carol` (only
/// a model that is not served); audit and admin listener on.
fn start(pki: &Pki) -> Daemon {
    let model_dir = tempfile::tempdir().unwrap();
    let path = airlock_engine::default_model::install(model_dir.path()).unwrap();
    std::mem::forget(model_dir);
    let cfg = TestConfig {
        models: common::cpu_model(NAME, &path),
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

[[tenants]]
name = "carol"
models = ["some-other-model"]
cert_cn = ["carol"]
"#
        .into(),
        ..TestConfig::default()
    };
    Daemon::start(pki, &cfg)
}

fn audit_records(daemon: &Daemon) -> Vec<Value> {
    common::audit_records(&daemon.audit_db())
}

#[tokio::test]
async fn tokenize_detokenize_round_trip_limits_and_audit() {
    let pki = Pki::new(&["alice", "carol"]);
    let mut daemon = start(&pki);
    let alice = daemon.client(&pki, "alice");
    let text = "Hello world, the quick brown fox.";

    // llama.cpp's form: no special tokens unless asked.
    let (status, body) = post(&alice, daemon.url("/tokenize"), &json!({"content": text})).await;
    assert_eq!(status, 200, "{body}");
    let ids: Vec<u64> = body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    assert!(!ids.is_empty(), "{body}");
    assert_eq!(body["count"], ids.len(), "{body}");
    assert_eq!(body["max_model_len"], 2048, "{body}");

    let (status, back) = post(&alice, daemon.url("/detokenize"), &json!({"tokens": ids})).await;
    assert_eq!(status, 200, "{back}");
    assert_eq!(back["content"], text, "{back}");
    assert_eq!(back["prompt"], text, "{back}");

    // With pieces: the same ids, each with its text; the pieces spell the text.
    let (status, body) = post(
        &alice,
        daemon.url("/tokenize"),
        &json!({"content": text, "with_pieces": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let pieces = body["tokens"].as_array().unwrap();
    let piece_ids: Vec<u64> = pieces.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(piece_ids, ids);
    let spelled: String = pieces
        .iter()
        .map(|p| p["piece"].as_str().unwrap())
        .collect();
    assert_eq!(spelled, text);

    // vLLM's form: the model named, special tokens added by default (BOS here).
    let (status, body) = post(
        &alice,
        daemon.url("/tokenize"),
        &json!({"model": NAME, "prompt": text}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], ids.len() + 1, "{body}");
    let (status, bos) = post(
        &alice,
        daemon.url("/detokenize"),
        &json!({"model": NAME, "tokens": body["tokens"]}),
    )
    .await;
    assert_eq!(status, 200, "{bos}");
    assert_eq!(bos["content"], format!("<|begin_of_text|>{text}"), "{bos}");

    // Refusals: ids out of the vocabulary, a missing text, an unknown model.
    let (status, body) = post(
        &alice,
        daemon.url("/detokenize"),
        &json!({"tokens": [1, 99999]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "tokens", "{body}");
    let (status, body) = post(&alice, daemon.url("/tokenize"), &json!({})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "content", "{body}");
    let (status, body) = post(
        &alice,
        daemon.url("/tokenize"),
        &json!({"model": "nope", "content": "x"}),
    )
    .await;
    assert_eq!(status, 404, "{body}");

    // The prompt filter reads /tokenize's text: a deny rule refuses it.
    let (status, body) = post(
        &alice,
        daemon.url("/tokenize"),
        &json!({"content": "about project zeus"}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "content_policy_violation", "{body}");

    // The allow-list applies: carol may use no served model, named or by default.
    let carol = daemon.client(&pki, "carol");
    for body in [
        json!({"content": text}),
        json!({"model": NAME, "prompt": text}),
    ] {
        let (status, resp) = post(&carol, daemon.url("/tokenize"), &body).await;
        assert_eq!(status, 403, "{resp}");
        assert_eq!(resp["error"]["code"], "model_not_allowed", "{resp}");
    }
    let (status, resp) = post(&carol, daemon.url("/detokenize"), &json!({"tokens": [1]})).await;
    assert_eq!(status, 403, "{resp}");

    // Only POST.
    let resp = alice.get(daemon.url("/tokenize")).send().await.unwrap();
    assert_eq!(resp.status(), 405);

    // Metrics: the new routes are series of their own.
    let metrics = daemon.metrics().await;
    assert!(
        metrics.contains(r#"route="/tokenize",status="200""#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"route="/detokenize",status="200""#),
        "{metrics}"
    );

    // Audit: an admission and a completion record per admitted tokenizer request, with
    // digests and counts, never the text; refusals before admission get a `deny` record.
    daemon.signal("TERM");
    assert!(daemon.wait_exit(Duration::from_secs(30)).is_some());
    let records = audit_records(&daemon);
    let admits: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "admit" && r["route"] == "POST /tokenize")
        .collect();
    // Three answered, and the unknown model (found unknown by the tokenizer, admitted first
    // as a generation would be).
    assert_eq!(admits.len(), 4, "{records:#?}");
    assert!(admits.iter().all(|r| r["tenant"] == "alice"
        && r["prompt_digest"].is_string()
        && r["prompt_text"].is_null()));
    let seqs: Vec<&Value> = admits.iter().map(|r| &r["seq"]).collect();
    let completes: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "complete" && seqs.contains(&&r["admit_seq"]))
        .collect();
    assert_eq!(completes.len(), 4, "{records:#?}");
    let answered: Vec<&&Value> = completes.iter().filter(|r| r["status"] == 200).collect();
    assert_eq!(answered.len(), 3, "{records:#?}");
    assert!(answered.iter().all(|r| r["output_digest"].is_string()));
    assert!(answered.iter().any(|r| r["prompt_tokens"] == ids.len()));
    let detok = records
        .iter()
        .filter(|r| r["kind"] == "admit" && r["route"] == "POST /detokenize")
        .count();
    assert_eq!(detok, 3, "{records:#?}");
    let denials = records
        .iter()
        .filter(|r| r["kind"] == "deny" && r["route"] == "POST /tokenize")
        .count();
    // The missing text, the filter's deny and carol's two.
    assert_eq!(denials, 4, "{records:#?}");
    let all = records
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!all.contains("quick brown fox"), "text in the audit log");
}

#[tokio::test]
async fn models_carry_context_length_and_capabilities() {
    let pki = Pki::new(&["alice", "carol"]);
    let daemon = start(&pki);
    let alice = daemon.client(&pki, "alice");
    let list: Value = alice
        .get(daemon.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let model = &list["data"][0];
    assert_eq!(model["id"], NAME, "{list}");
    assert_eq!(model["context_length"], 2048, "{list}");
    assert_eq!(
        model["capabilities"],
        json!([
            "completions",
            "chat",
            "logprobs",
            "tokenize",
            "structured_outputs"
        ]),
        "{list}"
    );
    let one: Value = alice
        .get(daemon.url(&format!("/v1/models/{NAME}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(&one, model);
}
