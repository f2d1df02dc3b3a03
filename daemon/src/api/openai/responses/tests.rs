use serde_json::json;

use super::*;

fn chat(body: Value) -> Value {
    to_chat(&body).expect("translates").chat
}

fn refused(body: Value) -> Option<String> {
    match to_chat(&body) {
        Ok(_) => None,
        Err(e) => e.object().param,
    }
}

#[test]
fn string_input_and_instructions() {
    let c = chat(json!({"model": "m", "input": "hi", "instructions": "be brief"}));
    assert_eq!(
        c["messages"],
        json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"}
        ])
    );
    assert_eq!(c["model"], "m");
}

#[test]
fn item_forms_become_messages() {
    let c = chat(json!({
        "model": "m",
        "max_output_tokens": 7,
        "temperature": 0.5,
        "input": [
            {"role": "developer", "content": "sys"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}
            ]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
            {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "call_2", "name": "g", "arguments": "{\"x\":1}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "42"},
            {"type": "function_call_output", "call_id": "call_2",
             "output": [{"type": "input_text", "text": "7"}]}
        ]
    }));
    assert_eq!(
        c["messages"],
        json!([
            {"role": "developer", "content": "sys"},
            {"role": "user", "content": "ab"},
            {"role": "assistant", "content": "ok", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{\"x\":1}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
            {"role": "tool", "tool_call_id": "call_2", "content": "7"}
        ])
    );
    assert_eq!(c["max_completion_tokens"], 7);
    assert_eq!(c["temperature"], 0.5);
}

#[test]
fn a_call_without_a_message_opens_an_assistant_turn() {
    let c = chat(json!({"model": "m", "input": [
        {"role": "user", "content": "q"},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}
    ]}));
    assert_eq!(c["messages"][1]["role"], "assistant");
    assert_eq!(c["messages"][1]["content"], Value::Null);
    assert_eq!(c["messages"][1]["tool_calls"][0]["id"], "c");
}

#[test]
fn tools_are_nested_under_function() {
    let c = chat(
        json!({"model": "m", "input": "x", "tool_choice": "auto", "tools": [
            {"type": "function", "name": "f", "description": "d",
             "parameters": {"type": "object"}, "strict": true}
        ]}),
    );
    assert_eq!(
        c["tools"],
        json!([{"type": "function", "function": {
            "name": "f", "description": "d", "parameters": {"type": "object"}, "strict": true
        }}])
    );
    assert_eq!(c["tool_choice"], "auto");
}

#[test]
fn text_format_becomes_response_format() {
    let c = chat(json!({"model": "m", "input": "x", "text": {"format": {
        "type": "json_schema", "name": "t", "strict": true, "schema": {"type": "object"}}}}));
    assert_eq!(
        c["response_format"],
        json!({"type": "json_schema", "json_schema": {
            "name": "t", "strict": true, "schema": {"type": "object"}}})
    );
    let c = chat(json!({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}));
    assert_eq!(c["response_format"], json!({"type": "json_object"}));
    let c = chat(json!({"model": "m", "input": "x",
        "tool_choice": {"type": "function", "name": "f"}}));
    assert_eq!(
        c["tool_choice"],
        json!({"type": "function", "function": {"name": "f"}})
    );
}

#[test]
fn refusals_name_the_field() {
    let base = |extra: Value| {
        let mut body = json!({"model": "m", "input": "x"});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        refused(body)
    };
    assert_eq!(
        base(json!({"previous_response_id": "resp_1"})).as_deref(),
        Some("previous_response_id")
    );
    assert_eq!(
        base(json!({"conversation": "conv_1"})).as_deref(),
        Some("conversation")
    );
    assert_eq!(
        base(json!({"reasoning": {"effort": "high"}})).as_deref(),
        Some("reasoning")
    );
    assert_eq!(
        base(json!({"text": {"verbosity": "low", "colour": "red"}})).as_deref(),
        Some("text.colour")
    );
    assert_eq!(
        base(json!({"text": {"format": "json"}})).as_deref(),
        Some("text.format")
    );
    // The chat checks' refusals of the translated format name the Responses field.
    for (chat, responses) in [
        ("response_format.json_schema.name", "text.format.name"),
        ("response_format.type", "text.format.type"),
        ("response_format", "text.format"),
    ] {
        let renamed = rename_param(ApiError::invalid(chat, "x"));
        assert_eq!(renamed.object().param.as_deref(), Some(responses));
    }
    assert_eq!(
        base(json!({"tools": [{"type": "web_search"}]})).as_deref(),
        Some("tools[0].type")
    );
    assert_eq!(
        base(json!({"tools": [{"type": "function"}]})).as_deref(),
        Some("tools[0].name")
    );
    assert_eq!(
        base(json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]}))
            .as_deref(),
        Some("input[0].content[0]")
    );
    assert_eq!(
        base(json!({"input": [{"type": "reasoning", "summary": []}]})).as_deref(),
        Some("input[0].type")
    );
    assert_eq!(
        base(json!({"input": [{"type": "function_call_output", "output": "x"}]})).as_deref(),
        Some("input[0].call_id")
    );
    assert_eq!(base(json!({"input": 3})).as_deref(), Some("input"));
    let many: Vec<Value> = (0..=MAX_MESSAGES)
        .map(|_| json!({"role": "user", "content": "x"}))
        .collect();
    assert_eq!(base(json!({"input": many})).as_deref(), Some("input"));
    // Accepted and ignored.
    assert_eq!(
        base(json!({"store": true, "metadata": {"k": "v"}, "user": "u"})),
        None
    );
    assert_eq!(base(json!({"text": {"format": {"type": "text"}}})), None);
}

#[test]
fn response_object_shapes() {
    let echo = to_chat(&json!({"model": "m", "input": "x", "max_output_tokens": 3}))
        .expect("translates")
        .echo;
    let calls = [ToolCall {
        id: "call_1".into(),
        name: "f".into(),
        arguments: "{}".into(),
    }];
    let object = response_object(
        &Answer {
            id: "resp_1",
            created_at: 5,
            model: "m",
            text: "",
            length_limited: false,
            calls: &calls,
            usage: Usage {
                prompt_tokens: 2,
                completion_tokens: 3,
                cached_tokens: 1,
            },
        },
        &echo,
    );
    assert_eq!(object["object"], "response");
    assert_eq!(object["status"], "completed");
    assert_eq!(object["output"].as_array().map(Vec::len), Some(1));
    assert_eq!(object["output"][0]["type"], "function_call");
    assert_eq!(object["output"][0]["call_id"], "call_1");
    assert_eq!(object["usage"]["total_tokens"], 5);
    assert_eq!(object["usage"]["input_tokens_details"]["cached_tokens"], 1);
    assert_eq!(object["max_output_tokens"], 3);
    assert_eq!(object["tool_choice"], "auto");
    let object = response_object(
        &Answer {
            id: "resp_2",
            created_at: 5,
            model: "m",
            text: "hello",
            length_limited: true,
            calls: &[],
            usage: Usage {
                prompt_tokens: 2,
                completion_tokens: 3,
                cached_tokens: 1,
            },
        },
        &echo,
    );
    assert_eq!(object["status"], "incomplete");
    assert_eq!(object["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(object["output"][0]["content"][0]["text"], "hello");
    assert_eq!(object["output"][0]["content"][0]["type"], "output_text");
}

fn parse_events(chunks: &[bytes::Bytes]) -> Vec<(String, Value)> {
    chunks
        .iter()
        .map(|b| {
            let text = std::str::from_utf8(b).expect("utf-8");
            let (kind, data) = text.split_once('\n').expect("two lines");
            let data = data.strip_prefix("data: ").expect("data line").trim_end();
            (
                kind.strip_prefix("event: ").expect("event line").to_owned(),
                serde_json::from_str(data).expect("json"),
            )
        })
        .collect()
}

#[test]
fn events_number_and_close_their_items() {
    use super::events::ResponseEvents;
    let head = Head {
        id: "resp_1",
        created_at: 1,
        model: "m",
    };
    let mut events = ResponseEvents::new(Map::new());
    let mut out = events.opening(&head);
    out.extend(events.text("a"));
    out.extend(events.text("b"));
    out.extend(events.call(&ToolCall {
        id: "call_1".into(),
        name: "f".into(),
        arguments: "{}".into(),
    }));
    out.extend(events.finish(
        &head,
        Ending::Completed,
        Some(Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
            cached_tokens: 0,
        }),
    ));
    let parsed = parse_events(&out);
    let kinds: Vec<&str> = parsed.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (i, (kind, data)) in parsed.iter().enumerate() {
        assert_eq!(data["sequence_number"], i);
        assert_eq!(data["type"], kind.as_str());
    }
    assert_eq!(parsed[6].1["text"], "ab");
    assert_eq!(parsed[9].1["output_index"], 1);
    let response = &parsed[13].1["response"];
    assert_eq!(response["output"][0]["content"][0]["text"], "ab");
    assert_eq!(response["output"][1]["call_id"], "call_1");
    assert_eq!(response["usage"]["total_tokens"], 3);

    // A filter's deny: the open message closes, then `response.incomplete`.
    let mut events = ResponseEvents::new(Map::new());
    let mut out = events.text("x");
    out.extend(events.finish(&head, Ending::Incomplete("content_filter"), None));
    let parsed = parse_events(&out);
    let (kind, last) = parsed.last().expect("events");
    assert_eq!(kind, "response.incomplete");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "content_filter"
    );
    assert_eq!(last["response"]["output"][0]["content"][0]["text"], "x");
}

#[test]
fn chat_refusals_are_renamed_to_responses_fields() {
    let param = |chat: &str| {
        rename_param(ApiError::invalid(chat, "m"))
            .object()
            .param
            .unwrap_or_default()
    };
    assert_eq!(param("max_completion_tokens"), "max_output_tokens");
    assert_eq!(param("messages[2].content"), "input");
    assert_eq!(param("tools[1].function.parameters"), "tools[1].parameters");
    assert_eq!(param("temperature"), "temperature");
}
