//! Structured outputs through the real daemon and the real engine (the embedded default
//! model: random weights, so whatever it "prefers", only the grammar makes the answer valid
//! JSON): chat `response_format` plain and streamed, the Responses API's `text.format`,
//! refusals naming the field, and the admission record's `grammar` fields.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Daemon, Pki, TestConfig, post_json};
use serde_json::{Value, json};

const NAME: &str = airlock_engine::default_model::NAME;

fn start(pki: &Pki, model_dir: &std::path::Path) -> Daemon {
    let path = airlock_engine::default_model::install(model_dir).unwrap();
    let cfg = TestConfig {
        models: common::cpu_model(NAME, &path),
        ..TestConfig::default()
    };
    Daemon::start(pki, &cfg)
}

/// Every valid value is short, so even a random model finishes it.
fn ticket_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "priority": {"type": "string", "enum": ["low", "medium", "high"]},
            "escalate": {"type": "boolean"},
            "team": {"type": "integer", "minimum": 1, "maximum": 5},
        },
        "required": ["priority", "escalate", "team"],
        "additionalProperties": false,
    })
}

fn check_ticket(text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    let o = v.as_object().unwrap();
    assert_eq!(o.len(), 3, "{text}");
    assert!(["low", "medium", "high"].contains(&o["priority"].as_str().unwrap()));
    assert!(o["escalate"].is_boolean());
    assert!((1..=5).contains(&o["team"].as_i64().unwrap()));
}

#[tokio::test]
async fn json_schema_answers_are_valid_plain_streamed_and_on_responses() {
    let pki = Pki::new(&["alice"]);
    let model_dir = tempfile::tempdir().unwrap();
    let mut daemon = start(&pki, model_dir.path());
    let client = daemon.client(&pki, "alice");

    let models: Value = client
        .get(daemon.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let caps = models["data"][0]["capabilities"]
        .as_array()
        .unwrap()
        .clone();
    assert!(caps.contains(&json!("structured_outputs")), "{models}");

    let format = json!({"type": "json_schema", "json_schema": {
        "name": "ticket", "strict": true, "schema": ticket_schema()}});
    for seed in 0..3 {
        let req = json!({
            "model": NAME,
            "messages": [{"role": "user", "content": "Triage: the server is down."}],
            "response_format": format,
            "max_tokens": 60,
            "temperature": 1.0,
            "seed": seed,
        });
        let (status, body) = post_json(&client, daemon.url("/v1/chat/completions"), &req).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
        check_ticket(body["choices"][0]["message"]["content"].as_str().unwrap());

        // Streamed: the deltas join to a valid answer, the same one (same seed).
        let mut streamed = req.clone();
        streamed["stream"] = json!(true);
        let sse = client
            .post(daemon.url("/v1/chat/completions"))
            .json(&streamed)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut text = String::new();
        for line in sse.lines() {
            if let Some(data) = line.strip_prefix("data: ")
                && data != "[DONE]"
            {
                let chunk: Value = serde_json::from_str(data).unwrap();
                if let Some(t) = chunk["choices"][0]["delta"]["content"].as_str() {
                    text.push_str(t);
                }
            }
        }
        check_ticket(&text);
        assert_eq!(text, body["choices"][0]["message"]["content"], "{sse}");
    }

    // json_object: an object, as far as `max_tokens` let it go.
    let (_, resp) = post_json(
        &client,
        daemon.url("/v1/chat/completions"),
        &json!({
            "model": NAME,
            "messages": [{"role": "user", "content": "Any JSON object."}],
            "response_format": {"type": "json_object"},
            "max_tokens": 30,
        }),
    )
    .await;
    let content = resp["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.starts_with('{'), "{resp}");
    if resp["choices"][0]["finish_reason"] == "stop" {
        assert!(serde_json::from_str::<Value>(content).unwrap().is_object());
    }

    // The Responses API: `text.format` with the schema's fields flattened.
    let (_, resp) = post_json(
        &client,
        daemon.url("/v1/responses"),
        &json!({
            "model": NAME,
            "input": "Triage: the printer is jammed.",
            "text": {"format": {"type": "json_schema", "name": "ticket", "strict": true,
                                "schema": ticket_schema()}},
            "max_output_tokens": 60,
        }),
    )
    .await;
    assert_eq!(resp["status"], "completed", "{resp}");
    check_ticket(resp["output"][0]["content"][0]["text"].as_str().unwrap());
    assert_eq!(resp["text"]["format"]["name"], "ticket", "{resp}");

    // Refusals name the field: a schema the compiler cannot honour (after admission, so
    // it is audited), a bad name, an unknown type.
    for (path, body, param) in [
        (
            "/v1/chat/completions",
            json!({"model": NAME, "messages": [{"role": "user", "content": "x"}],
                   "response_format": {"type": "json_schema", "json_schema": {"name": "r",
                       "schema": {"type": "object", "properties": {"a": {"$ref": "https://example.invalid/a.json"}}}}}}),
            "response_format",
        ),
        (
            "/v1/responses",
            json!({"model": NAME, "input": "x",
                   "text": {"format": {"type": "json_schema", "name": "r",
                       "schema": {"type": "integer", "minimum": 5, "maximum": 1}}}}),
            "text.format",
        ),
        (
            "/v1/chat/completions",
            json!({"model": NAME, "messages": [{"role": "user", "content": "x"}],
                   "response_format": {"type": "json_schema", "json_schema": {"name": "has space"}}}),
            "response_format.json_schema.name",
        ),
        (
            "/v1/chat/completions",
            json!({"model": NAME, "messages": [{"role": "user", "content": "x"}],
                   "response_format": {"type": "xml"}}),
            "response_format.type",
        ),
        (
            "/v1/chat/completions",
            json!({"model": NAME, "messages": [{"role": "user", "content": "x"}],
                   "tools": [{"type": "function", "function": {"name": "f"}}],
                   "tool_choice": {"type": "function", "function": {"name": "g"}}}),
            "tool_choice.function.name",
        ),
    ] {
        let (status, err) = post_json(&client, daemon.url(path), &body).await;
        assert_eq!(status, 400, "{path} {body}: {err}");
        assert_eq!(err["error"]["param"], param, "{err}");
    }

    // The admission records say a grammar applied and digest it, never the schema text.
    daemon.stop();
    let records = common::audit_records(&daemon.audit_db());
    let out = Value::Array(records.clone()).to_string();
    let admits: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "admit" && r.get("grammar").is_some())
        .collect();
    assert!(
        admits.iter().any(|r| r["grammar"] == "json_schema"),
        "{out}"
    );
    assert!(
        admits.iter().any(|r| r["grammar"] == "json_object"),
        "{out}"
    );
    assert!(
        admits
            .iter()
            .all(|r| r["grammar_digest"].is_string() == (r["grammar"] == "json_schema")),
        "a digest of the schema, and none for json_object: {out}"
    );
    assert!(!out.contains("escalate"), "the schema stays out of the log");
}

/// The test engine has no logits to mask: a grammar is refused before admission, naming
/// the field and the model, not answered unconstrained.
#[tokio::test]
async fn a_model_without_grammar_support_refuses_by_field() {
    let pki = Pki::new(&["alice"]);
    let daemon = Daemon::start(&pki, &TestConfig::default());
    let client = daemon.client(&pki, "alice");
    for (body, param) in [
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}],
                   "tool_choice": "required"}),
            "tool_choice",
        ),
    ] {
        let mut req = json!({"model": common::TEST_MODEL,
                             "messages": [{"role": "user", "content": "x"}]});
        for (k, v) in body.as_object().unwrap() {
            req[k] = v.clone();
        }
        let (status, err) = post_json(&client, daemon.url("/v1/chat/completions"), &req).await;
        assert_eq!(status, 400, "{err}");
        assert_eq!(err["error"]["param"], param, "{err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains(common::TEST_MODEL),
            "{err}"
        );
    }
}
