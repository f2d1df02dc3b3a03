//! `POST /v1/responses` over the real binary: the test engine (which echoes the last
//! message and claims the Hermes tool format) answers through the chat path, so the
//! output filter, tools and audit apply as on `/v1/chat/completions`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::post_json as post;
use common::{Daemon, Pki, TEST_MODEL};
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
"#;

/// A daemon for `acme`, its audit log in `audit`.
fn start(pki: &Pki, audit: &std::path::Path) -> Daemon {
    Daemon::start_audited(pki, audit, TENANTS)
}

fn tools() -> Value {
    json!([{"type": "function", "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}])
}

#[tokio::test]
async fn responses_plain_tools_filters_refusals_and_audit() {
    let pki = Pki::new(&["alice"]);
    let audit = tempfile::tempdir().unwrap();
    let daemon = start(&pki, audit.path());
    let client = daemon.client(&pki, "alice");
    let url = daemon.url("/v1/responses");

    // A string input: one message item with the echoed text.
    let (status, body) = post(
        &client,
        &url,
        &json!({"model": TEST_MODEL, "input": "hello there", "instructions": "be brief"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["id"].as_str().unwrap().starts_with("resp_"), "{body}");
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["model"], TEST_MODEL);
    assert_eq!(body["instructions"], "be brief");
    let item = &body["output"][0];
    assert_eq!(item["type"], "message");
    assert!(item["id"].as_str().unwrap().starts_with("msg_"), "{body}");
    assert_eq!(item["role"], "assistant");
    assert_eq!(item["content"][0]["type"], "output_text");
    assert_eq!(item["content"][0]["text"], "hello there");
    let usage = &body["usage"];
    assert!(usage["input_tokens"].as_u64().unwrap() > 0, "{body}");
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap()
    );

    // Length-limited: incomplete, with the reason.
    let (_, body) = post(
        &client,
        &url,
        &json!({"model": TEST_MODEL, "input": "one two three four five six", "max_output_tokens": 2}),
    )
    .await;
    assert_eq!(body["status"], "incomplete", "{body}");
    assert_eq!(body["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(body["max_output_tokens"], 2);

    // A function call round trip: the call comes back as a function_call item, and the
    // caller sends it back with its output.
    let (status, body) = post(
        &client,
        &url,
        &json!({"model": TEST_MODEL, "tools": tools(), "input": [{"role": "user", "content":
            r#"<tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>"#}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let output = body["output"].as_array().unwrap();
    assert_eq!(output.len(), 1, "{body}");
    let call = &output[0];
    assert_eq!(call["type"], "function_call");
    assert!(call["id"].as_str().unwrap().starts_with("fc_"), "{body}");
    assert!(
        call["call_id"].as_str().unwrap().starts_with("call_"),
        "{body}"
    );
    assert_eq!(call["name"], "get_weather");
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    assert_eq!(body["tools"][0]["name"], "get_weather", "echoed as sent");
    let (status, body) = post(
        &client,
        &url,
        &json!({"model": TEST_MODEL, "tools": tools(), "input": [
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "function_call", "call_id": call["call_id"], "name": "get_weather",
                "arguments": call["arguments"]},
            {"type": "function_call_output", "call_id": call["call_id"], "output": "18C sunny"}
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"][0]["content"][0]["text"], "18C sunny");

    // The output filter: a redaction in the text, a deny as on chat (403).
    let (_, body) = post(
        &client,
        &url,
        &json!({"model": TEST_MODEL, "input": "ssn 123-45-6789 ok"}),
    )
    .await;
    let text = body["output"][0]["content"][0]["text"].as_str().unwrap();
    assert!(!text.contains("6789"), "{body}");
    let (status, body) = post(
        &client,
        &url,
        &json!({"model": TEST_MODEL, "input": "x DROP TABLE y"}),
    )
    .await;
    assert_eq!(status, 403, "{body}");

    // Refusals name the field.
    for (extra, param) in [
        (
            json!({"previous_response_id": "resp_1"}),
            "previous_response_id",
        ),
        (json!({"conversation": "conv_1"}), "conversation"),
        (json!({"reasoning": {"effort": "high"}}), "reasoning"),
        (
            json!({"text": {"format": {"type": "json_schema", "name": "bad name!"}}}),
            "text.format.name",
        ),
        (
            json!({"text": {"format": {"type": "yaml"}}}),
            "text.format.type",
        ),
        (json!({"tools": [{"type": "web_search"}]}), "tools[0].type"),
        (json!({"max_output_tokens": "many"}), "max_output_tokens"),
        (
            json!({"tools": [{"type": "function", "name": "f", "parameters": 3}]}),
            "tools[0].parameters",
        ),
    ] {
        let mut req = json!({"model": TEST_MODEL, "input": "hi"});
        for (k, v) in extra.as_object().unwrap() {
            req[k] = v.clone();
        }
        let (status, body) = post(&client, &url, &req).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["param"], param, "{body}");
    }

    // Audit: the route is recorded like the others.
    let db = audit.path().join("audit.db");
    drop(client);
    let mut daemon = daemon;
    daemon.stop();
    let records = common::audit_records(&db);
    let out = Value::Array(records.clone()).to_string();
    let admits = records
        .iter()
        .filter(|r| r["kind"] == "admit" && r["route"] == "POST /v1/responses")
        .count();
    assert!(admits >= 6, "{out}");
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "complete" && r["finish_reason"] == "tool_calls"),
        "{out}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "deny" && r["route"] == "POST /v1/responses"),
        "{out}"
    );
}

/// The events of a response stream as `(type, data)`; checks the framing (`event:` line
/// matching `data.type`, consecutive `sequence_number`s from 0, no `[DONE]`).
async fn events(client: &reqwest::Client, url: &str, body: &Value) -> Vec<(String, Value)> {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let resp = client.post(url).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("[DONE]"), "{text}");
    let events: Vec<(String, Value)> = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let (kind, data) = e.split_once('\n').unwrap();
            let kind = kind.strip_prefix("event: ").unwrap().to_owned();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], kind.as_str(), "{data}");
            (kind, data)
        })
        .collect();
    for (i, (_, data)) in events.iter().enumerate() {
        assert_eq!(data["sequence_number"], i, "{data}");
    }
    events
}

fn kinds(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(k, _)| k.as_str()).collect()
}

#[tokio::test]
async fn responses_streamed() {
    let pki = Pki::new(&["alice"]);
    let audit = tempfile::tempdir().unwrap();
    let daemon = start(&pki, audit.path());
    let client = daemon.client(&pki, "alice");
    let url = daemon.url("/v1/responses");

    // Text: the event order OpenAI sends, and a final response matching the deltas.
    let events = events(
        &client,
        &url,
        &json!({"model": TEST_MODEL, "input": "one two three four"}),
    )
    .await;
    let k = kinds(&events);
    assert_eq!(
        k[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(
        k[k.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    assert!(
        k[4..k.len() - 4]
            .iter()
            .all(|k| *k == "response.output_text.delta")
    );
    let deltas: String = events
        .iter()
        .filter(|(k, _)| k == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, "one two three four");
    let item_id = &events[2].1["item"]["id"];
    assert!(
        events
            .iter()
            .filter(|(k, _)| k == "response.output_text.delta")
            .all(|(_, d)| &d["item_id"] == item_id && d["output_index"] == 0)
    );
    let done = &events.last().unwrap().1["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], deltas.as_str());
    assert_eq!(done["id"], events[0].1["response"]["id"]);
    assert!(
        done["usage"]["output_tokens"].as_u64().unwrap() > 0,
        "{done}"
    );

    // Length-limited: `response.incomplete`.
    let events_cut = self::events(
        &client,
        &url,
        &json!({"model": TEST_MODEL, "input": "one two three four", "max_output_tokens": 1}),
    )
    .await;
    let (kind, last) = events_cut.last().unwrap();
    assert_eq!(kind, "response.incomplete");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );

    // A call: a function_call item with its arguments' delta and done.
    let events_call = self::events(
        &client,
        &url,
        &json!({"model": TEST_MODEL, "tools": tools(), "input":
            r#"Checking. <tool_call>{"name":"get_weather","arguments":{"city":"Oslo"}}</tool_call>"#}),
    )
    .await;
    let k = kinds(&events_call);
    assert!(
        k.contains(&"response.function_call_arguments.delta"),
        "{k:?}"
    );
    assert!(
        k.contains(&"response.function_call_arguments.done"),
        "{k:?}"
    );
    let done = &events_call.last().unwrap().1["response"];
    assert_eq!(events_call.last().unwrap().0, "response.completed");
    assert_eq!(done["output"][0]["type"], "message", "{done}");
    assert_eq!(done["output"][1]["type"], "function_call", "{done}");
    assert_eq!(done["output"][1]["name"], "get_weather");
    assert_eq!(done["output"][1]["output_index"], Value::Null);

    // The output filter: redacted in the deltas; a deny ends the stream with
    // `response.incomplete`, reason `content_filter`.
    let events_redacted = self::events(
        &client,
        &url,
        &json!({"model": TEST_MODEL, "input": "ssn 123-45-6789 ok"}),
    )
    .await;
    let text = events_redacted.last().unwrap().1["response"]["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!text.contains("6789") && text.ends_with("ok"), "{text}");
    let events_denied = self::events(
        &client,
        &url,
        &json!({"model": TEST_MODEL, "input": "fine words then DROP TABLE users"}),
    )
    .await;
    let (kind, last) = events_denied.last().unwrap();
    assert_eq!(kind, "response.incomplete");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "content_filter"
    );
    let sent: String = events_denied
        .iter()
        .filter(|(k, _)| k == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert!(!sent.contains("DROP TABLE"), "{sent}");
}
