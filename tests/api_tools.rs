//! Tool calling over the real binary: the test engine (which claims the Hermes format and
//! echoes the last message, so a test writes the model's output) drives calls end to end,
//! plain and streamed, through the output filter and into the audit log; the embedded
//! default model, whose chat template has no tools, refuses them by name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::post_json as post;
use common::{Daemon, Pki, TEST_MODEL, TestConfig};
use futures_util::StreamExt;
use serde_json::{Value, json};

const TENANTS: &str = r#"
[[tenants]]
name = "acme"
models = ["*"]
cert_cn = ["alice"]
[[tenants.filters]]
id = "ssn"
action = "redact"
regex = '\d{3}-\d{2}-\d{4}'
apply = "output"
[[tenants.filters]]
id = "no-drop"
action = "deny"
literal = "DROP TABLE"
apply = "output"
[[tenants.filters]]
id = "no-zeus"
action = "deny"
literal = "project zeus"
apply = "prompt"
"#;

/// A daemon for `acme`, its audit log in `audit`.
fn start(pki: &Pki, audit: &std::path::Path) -> Daemon {
    Daemon::start_audited(pki, audit, TENANTS)
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    ])
}

/// A chat whose last message is what the test engine will "generate".
fn chat(output: &str) -> Value {
    json!({"model": TEST_MODEL, "tools": tools(),
        "messages": [{"role": "user", "content": output}]})
}

/// The events of a stream (without `[DONE]`).
async fn stream(client: &reqwest::Client, url: &str, body: &Value) -> Vec<Value> {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let resp = client.post(url).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut text = String::new();
    let mut bytes = resp.bytes_stream();
    while let Some(chunk) = bytes.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// Reassembles a stream as the OpenAI SDK's helpers do: content concatenated, calls by
/// `index` (id, type and name from their first delta, argument fragments appended).
fn reassemble(events: &[Value]) -> (String, Vec<Value>, String) {
    let mut content = String::new();
    let mut calls: Vec<Value> = Vec::new();
    let mut finish = String::new();
    for e in events {
        let choice = &e["choices"][0];
        if let Some(c) = choice["delta"]["content"].as_str() {
            content.push_str(c);
        }
        for d in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = d["index"].as_u64().unwrap() as usize;
            if i == calls.len() {
                assert!(d["id"].as_str().unwrap().starts_with("call_"), "{d}");
                assert_eq!(d["type"], "function", "{d}");
                calls.push(json!({"id": d["id"], "name": d["function"]["name"], "arguments": ""}));
            }
            let args = calls[i]["arguments"].as_str().unwrap().to_owned()
                + d["function"]["arguments"].as_str().unwrap();
            calls[i]["arguments"] = json!(args);
        }
        if let Some(r) = choice["finish_reason"].as_str() {
            finish = r.to_owned();
        }
    }
    (content, calls, finish)
}

fn args(call: &Value) -> Value {
    serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn tool_calls_plain_streamed_filtered_and_audited() {
    let pki = Pki::new(&["alice"]);
    let audit = tempfile::tempdir().unwrap();
    let daemon = start(&pki, audit.path());
    let client = daemon.client(&pki, "alice");
    let url = daemon.url("/v1/chat/completions");

    // One call after some text.
    let (status, body) = post(
        &client,
        &url,
        &chat(r#"Checking. <tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{body}");
    assert_eq!(choice["message"]["content"], "Checking.", "{body}");
    let call = &choice["message"]["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"), "{body}");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(args(&call["function"]), json!({"city": "Paris"}));

    // Two calls in a row, streamed; markers and JSON arrive as separate tokens.
    let parallel = chat(
        r#"Let me see. <tool_call> {"name":"get_weather","arguments":{"city":"Oslo"}} </tool_call> <tool_call> {"name":"get_time","arguments":{}} </tool_call>"#,
    );
    let (content, calls, finish) = reassemble(&stream(&client, &url, &parallel).await);
    assert_eq!(content.trim(), "Let me see.");
    assert_eq!(finish, "tool_calls");
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0]["name"], "get_weather");
    assert_eq!(args(&calls[0]), json!({"city": "Oslo"}));
    assert_eq!(calls[1]["name"], "get_time");
    assert_ne!(calls[0]["id"], calls[1]["id"]);
    // The same request unstreamed: the same calls.
    let (_, body) = post(&client, &url, &parallel).await;
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // A redaction inside the arguments keeps them valid JSON, plain and streamed.
    let secret =
        chat(r#"<tool_call>{"name":"get_weather","arguments":{"city":"123-45-6789"}}</tool_call>"#);
    let (_, body) = post(&client, &url, &secret).await;
    assert!(body["choices"][0]["message"]["content"].is_null(), "{body}");
    let city = args(&body["choices"][0]["message"]["tool_calls"][0]["function"]);
    assert!(!city.to_string().contains("6789"), "{city}");
    let (_, calls, _) = reassemble(&stream(&client, &url, &secret).await);
    assert!(!args(&calls[0]).to_string().contains("6789"), "{calls:?}");

    // A deny inside the arguments: 403 plain, `content_filter` streamed, no call leaves.
    let denied = chat(
        r#"<tool_call>{"name":"get_weather","arguments":{"city":"x DROP TABLE y"}}</tool_call>"#,
    );
    let (status, body) = post(&client, &url, &denied).await;
    assert_eq!(status, 403, "{body}");
    let (content, calls, finish) = reassemble(&stream(&client, &url, &denied).await);
    assert_eq!(
        (content.as_str(), calls.len(), finish.as_str()),
        ("", 0, "content_filter")
    );

    // A call to a tool that was not offered is content, as the model wrote it.
    let rogue = r#"<tool_call>{"name":"rm_rf","arguments":{}}</tool_call>"#;
    let (_, body) = post(&client, &url, &chat(rogue)).await;
    assert_eq!(body["choices"][0]["message"]["content"], rogue, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let (content, calls, _) = reassemble(&stream(&client, &url, &chat(rogue)).await);
    assert_eq!((content.as_str(), calls.len()), (rogue, 0));

    // `tool_choice: "none"`: no tools offered, so the output is only text.
    let mut none = chat(r#"<tool_call>{"name":"get_time","arguments":{}}</tool_call>"#);
    none["tool_choice"] = json!("none");
    let (_, body) = post(&client, &url, &none).await;
    assert!(
        body["choices"][0]["message"].get("tool_calls").is_none(),
        "{body}"
    );

    // A multi-turn conversation sends the call and its result back.
    let turn = json!({"model": TEST_MODEL, "tools": tools(), "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_abc", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "18C sunny"}
    ]});
    let (status, body) = post(&client, &url, &turn).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "18C sunny");

    // The prompt filter sees tool definitions.
    let mut zeus = chat("hi");
    zeus["tools"][0]["function"]["description"] = json!("about project zeus");
    let (status, body) = post(&client, &url, &zeus).await;
    assert_eq!(status, 403, "{body}");

    // Grammar-constrained choices are refused by name.
    for choice in [
        json!("required"),
        json!({"type": "function", "function": {"name": "get_time"}}),
    ] {
        let mut req = chat("hi");
        req["tool_choice"] = choice;
        let (status, body) = post(&client, &url, &req).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["param"], "tool_choice", "{body}");
    }

    // The test model says it takes tools.
    let (_, models) = {
        let resp = client.get(daemon.url("/v1/models")).send().await.unwrap();
        (resp.status(), resp.json::<Value>().await.unwrap())
    };
    let caps = &models["data"][0]["capabilities"];
    assert!(
        caps.as_array().unwrap().contains(&json!("tools")),
        "{models}"
    );

    // Audit: offered tools as a count and keyed digest, called tools as keyed digests; no
    // text (`store_text` is off).
    let db = audit.path().join("audit.db");
    drop(client);
    let mut daemon = daemon;
    daemon.stop();
    let records = common::audit_records(&db);
    let out = Value::Array(records.clone()).to_string();
    let first_admit = records.iter().find(|r| r["kind"] == "admit").unwrap();
    assert_eq!(first_admit["tools_offered"], 2, "{first_admit}");
    assert!(first_admit["tools_digest"].is_string(), "{first_admit}");
    assert!(first_admit.get("tool_names").is_none());
    let completes: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "complete" && r["finish_reason"] == "tool_calls")
        .collect();
    assert!(completes.len() >= 4, "{completes:?}");
    let parallel_record = completes
        .iter()
        .find(|r| {
            r["tool_call_digests"]
                .as_array()
                .is_some_and(|d| d.len() == 2)
        })
        .expect("the parallel calls' record");
    assert!(parallel_record.get("tool_call_names").is_none());
    assert!(
        !out.contains("get_weather"),
        "tool names stay out of the log without store_text"
    );
}

#[tokio::test]
async fn a_model_without_tool_support_refuses_tools_by_name() {
    let pki = Pki::new(&["alice"]);
    let model_dir = tempfile::tempdir().unwrap();
    let path = airlock_engine::default_model::install(model_dir.path()).unwrap();
    let name = airlock_engine::default_model::NAME;
    let cfg = TestConfig {
        models: common::cpu_model(name, &path),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let client = daemon.client(&pki, "alice");
    let url = daemon.url("/v1/chat/completions");
    let mut req = chat("hi");
    req["model"] = json!(name);
    let (status, body) = post(&client, &url, &req).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "tools", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains(name),
        "{body}"
    );
    // `tool_choice: "none"` offers nothing, so the same model answers.
    req["tool_choice"] = json!("none");
    req["max_tokens"] = json!(2);
    let (status, body) = post(&client, &url, &req).await;
    assert_eq!(status, 200, "{body}");
}

/// Output that begins a call but cannot be passed on (here: a tool that was not offered) is
/// content with `finish_reason: "stop"`, and counted on `/metrics` by model and reason.
#[tokio::test]
async fn unparsed_calls_are_content_and_counted() {
    let pki = Pki::new(&["alice"]);
    let audit = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_audited(
        &pki,
        audit.path(),
        &format!("{TENANTS}\n[admin]\naddress = \"127.0.0.1:0\"\n"),
    );
    let client = daemon.client(&pki, "alice");
    let output = r#"<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>"#;
    let (status, body) = post(&client, &daemon.url("/v1/chat/completions"), &chat(output)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
    assert!(
        body["choices"][0]["message"]["tool_calls"].is_null(),
        "{body}"
    );
    let metrics = daemon.metrics().await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("airlock_tool_calls_unparsed_total{"))
        .unwrap_or_else(|| panic!("no unparsed-call series:\n{metrics}"));
    assert!(line.contains(&format!("model=\"{TEST_MODEL}\"")), "{line}");
    assert!(
        line.contains("reason=\"a call names a tool that was not offered\""),
        "{line}"
    );
    assert!(line.ends_with(" 1"), "{line}");
}
