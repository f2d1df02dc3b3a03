//! Tokenizer and chat-template parity with `transformers` (engine/tests/fixtures/expected.json).

use std::path::PathBuf;

use serde_json::Value;

use super::TextTokenizer;
use crate::ChatMessage;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64().map(|x| x as u32))
                .collect()
        })
        .unwrap_or_default()
}

fn each_variant(mut f: impl FnMut(&str, &TextTokenizer, &Value)) {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).expect("expected.json");
    let expected: Value = serde_json::from_str(&text).expect("valid JSON");
    let variants = expected["variants"].as_object().expect("variants");
    for (name, v) in variants {
        let dir = fixtures().join(v["dir"].as_str().expect("dir"));
        let config = crate::hf_config::ModelConfig::from_dir(&dir).expect("config");
        let tok = TextTokenizer::from_dir(&dir, &config.eos_token_ids).expect("tokenizer");
        f(name, &tok, v);
    }
}

#[test]
fn encode_and_decode_match_transformers() {
    each_variant(|name, tok, v| {
        for case in v["tokenizer"].as_array().expect("tokenizer cases") {
            let text = case["text"].as_str().expect("text");
            assert_eq!(
                tok.encode_text(text).expect("encode"),
                ids(&case["ids"]),
                "{name}: ids of {text:?}"
            );
            assert_eq!(
                tok.encode_raw(text, false).expect("encode"),
                ids(&case["ids_no_special"]),
                "{name}: {text:?}"
            );
            assert_eq!(
                tok.decode_with(&ids(&case["ids"]), false).expect("decode"),
                case["decoded"].as_str().expect("s"),
                "{name}: decode {text:?}"
            );
            assert_eq!(
                tok.decode_with(&ids(&case["ids"]), true).expect("decode"),
                case["decoded_skip_special"].as_str().expect("s"),
                "{name}: decode skip {text:?}"
            );
        }
        for case in v["decode"].as_array().expect("decode cases") {
            let skip = case["skip_special_tokens"].as_bool().expect("bool");
            assert_eq!(
                tok.decode_with(&ids(&case["ids"]), skip).expect("decode"),
                case["text"].as_str().expect("s"),
                "{name}: {case}"
            );
        }
    });
}

#[test]
fn chat_templates_render_like_transformers() {
    each_variant(|name, tok, v| {
        for case in v["chat"].as_array().expect("chat cases") {
            let messages: Vec<ChatMessage> = case["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .map(|m| ChatMessage {
                    role: m["role"].as_str().expect("role").into(),
                    content: m["content"].as_str().expect("content").into(),
                    ..ChatMessage::default()
                })
                .collect();
            let gen_prompt = case["add_generation_prompt"].as_bool().expect("bool");
            let text = tok
                .render_chat_with(&messages, &[], gen_prompt)
                .expect("render");
            assert_eq!(text, case["text"].as_str().expect("text"), "{name}");
            assert_eq!(
                tok.encode_raw(&text, false).expect("encode"),
                ids(&case["ids"]),
                "{name}"
            );
        }
        // Prompt 0 is plain text encoded with special tokens, as a completion prompt is.
        let p0 = &v["prompts"][0];
        let text = p0["text"].as_str().expect("text");
        assert_eq!(
            tok.encode_text(text).expect("encode"),
            ids(&p0["prompt_ids"]),
            "{name}: prompt 0"
        );
    });
}

#[test]
fn eos_ids_include_generation_config() {
    each_variant(|name, tok, v| {
        for id in ids(&v["eos_token_ids"]) {
            assert!(
                tok.eos_ids().contains(&id),
                "{name}: eos {id} missing from {:?}",
                tok.eos_ids()
            );
        }
    });
}

/// The first fixture tokenizer with `source` as its chat template.
/// Gives `tok` the chat template `source` (tests of what a template's format implies).
pub(crate) fn set_template(tok: &mut TextTokenizer, source: &str) {
    tok.chat = Some(
        super::chat_env(source.to_owned(), std::path::Path::new("test"), "test")
            .expect("template compiles"),
    );
}

fn with_template(source: &str) -> TextTokenizer {
    let mut found = None;
    each_variant(|_, _, v| {
        if found.is_none() {
            let dir = fixtures().join(v["dir"].as_str().expect("dir"));
            let config = crate::hf_config::ModelConfig::from_dir(&dir).expect("config");
            found = Some(TextTokenizer::from_dir(&dir, &config.eos_token_ids).expect("tok"));
        }
    });
    let mut tok = found.expect("a fixture tokenizer");
    tok.chat = Some(
        super::chat_env(source.to_owned(), std::path::Path::new("test"), "test")
            .expect("template compiles"),
    );
    tok
}

fn one_message() -> Vec<ChatMessage> {
    vec![ChatMessage {
        role: "user".into(),
        content: "hi".into(),
        ..ChatMessage::default()
    }]
}

fn refusal(tok: &TextTokenizer) -> String {
    match tok.render_chat(&one_message(), &[]) {
        Err(crate::EngineError::InvalidRequest { param, reason }) => {
            assert_eq!(param, "messages");
            reason
        }
        other => panic!("expected a refusal naming `messages`, got {other:?}"),
    }
}

/// Gemma 2's template raises on a system message: that is the client's 400 with the
/// template's own words, not a server error; Gemma 3's folds it into the first user turn.
#[test]
fn a_template_that_raises_refuses_the_messages() {
    let mut seen = 0;
    each_variant(|name, tok, v| {
        let Some(want) = v["chat_system_error"].as_str() else {
            return;
        };
        seen += 1;
        let messages = vec![
            ChatMessage {
                role: "system".into(),
                content: "Be brief.".into(),
                ..ChatMessage::default()
            },
            ChatMessage {
                role: "user".into(),
                content: "hi".into(),
                ..ChatMessage::default()
            },
        ];
        match tok.render_chat(&messages, &[]) {
            Err(crate::EngineError::InvalidRequest { param, reason }) => {
                assert_eq!(param, "messages", "{name}");
                assert!(reason.contains(want), "{name}: {reason}");
            }
            other => panic!("{name}: expected a refusal, got {other:?}"),
        }
    });
    assert!(
        seen > 0,
        "no fixture has a template that rejects a system message"
    );
    let reason = refusal(&with_template(
        "{{ raise_exception('no ' ~ messages[0].role) }}",
    ));
    assert!(reason.contains("no user"), "{reason}");
}

#[test]
fn a_template_that_loops_runs_out_of_fuel() {
    let tok = with_template(
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}x",
    );
    let started = std::time::Instant::now();
    let reason = refusal(&tok);
    assert!(reason.contains("budget"), "{reason}");
    // Not a timing assertion on a loaded machine: only "not a hang" (10^10 iterations).
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

/// Found by the `chat_template` fuzz target: minijinja 2.24 panics (integer overflow, with
/// overflow checks on) iterating a slice with a huge negative step. The panic stays inside
/// the render: an error for this request, no dead task.
#[test]
fn a_template_that_panics_the_engine_is_an_error() {
    // An integer overflow (a panic with overflow checks, as the test profile builds
    // dependencies), and an index out of bounds (a panic in every build).
    for source in [
        "{{ 'x' in messages[:1111:11-111111111111] }}",
        "{{ 'x' in messages[5:9:-2] }}",
    ] {
        match with_template(source).render_chat(&one_message(), &[]) {
            Err(crate::EngineError::Tokenizer(reason)) => {
                assert!(reason.contains("chat template"), "{source}: {reason}");
            }
            other => panic!("{source}: expected the contained panic's error, got {other:?}"),
        }
    }
}

#[test]
fn a_template_that_explodes_hits_the_output_cap() {
    for source in [
        "{{ 'x' * 50000000 }}",
        "{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}",
    ] {
        let reason = refusal(&with_template(source));
        assert!(reason.contains("bytes"), "{source}: {reason}");
    }
}

#[test]
fn real_templates_render_many_messages_within_budget() {
    each_variant(|name, tok, _| {
        let messages: Vec<ChatMessage> = (0..4096)
            .map(|i| ChatMessage {
                role: if i % 2 == 0 { "user" } else { "assistant" }.into(),
                content: format!("message number {i}"),
                ..ChatMessage::default()
            })
            .collect();
        let out = tok.render_chat(&messages, &[]);
        assert!(out.is_ok(), "{name}: {:?}", out.err());
        // What the budget is measured against: instructions per message.
        let ctx = super::ChatContext {
            messages: messages.iter().map(super::MessageCtx::new).collect(),
            add_generation_prompt: true,
            bos_token: "<s>",
            eos_token: "</s>",
            tools: None,
            documents: None,
        };
        let env = &tok.chat.as_ref().expect("a chat template").env;
        let template = env.get_template("chat").expect("the template");
        let captured = template
            .render_captured_to(ctx, std::io::sink())
            .expect("renders");
        let (used, _) = captured.state().fuel_levels().expect("fuel is on");
        eprintln!("{name}: {used} template instructions for 4096 messages");
        assert!(used < super::CHAT_TEMPLATE_FUEL, "{name}: {used}");
    });
}

fn weather_tool() -> serde_json::Value {
    serde_json::json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    }})
}

#[test]
fn tools_and_calls_render_through_a_hermes_template() {
    let tok = with_template(crate::test_engine::HERMES_TOOLS_TEMPLATE);
    assert_eq!(tok.tool_format(), Some(crate::ToolFormat::Hermes));
    let messages = vec![
        ChatMessage {
            role: "user".into(),
            content: "Weather in Paris?".into(),
            ..ChatMessage::default()
        },
        ChatMessage {
            role: "assistant".into(),
            tool_calls: vec![crate::ChatToolCall {
                id: "call_1".into(),
                name: "get_weather".into(),
                arguments: serde_json::json!({"city": "Paris"}),
            }],
            ..ChatMessage::default()
        },
        ChatMessage {
            role: "tool".into(),
            content: "18C, sunny".into(),
            tool_call_id: Some("call_1".into()),
            ..ChatMessage::default()
        },
    ];
    let text = tok
        .render_chat(&messages, &[weather_tool()])
        .expect("renders");
    assert!(text.contains("<tools>\n{"), "{text}");
    assert!(text.contains(r#""name":"get_weather""#), "{text}");
    assert!(
        text.contains(
            "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call><|im_end|>"
        ),
        "{text}"
    );
    assert!(
        text.contains("<|im_start|>user\n<tool_response>\n18C, sunny\n</tool_response><|im_end|>"),
        "{text}"
    );
    assert!(text.ends_with("<|im_start|>assistant\n"), "{text}");
    // Without tools the template takes its plain branch.
    let plain = tok.render_chat(&messages[..1], &[]).expect("renders");
    assert!(!plain.contains("<tools>"), "{plain}");
}

#[test]
fn tool_formats_follow_the_template_markers() {
    use crate::ToolFormat;
    assert_eq!(
        super::tool_format(crate::test_engine::HERMES_TOOLS_TEMPLATE),
        Some(ToolFormat::Hermes)
    );
    assert_eq!(
        super::tool_format("{% if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]"),
        Some(ToolFormat::Mistral)
    );
    assert_eq!(
        super::tool_format(
            "{% if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]{{ name }}[ARGS]"
        ),
        Some(ToolFormat::MistralArgs)
    );
    assert_eq!(
        super::tool_format("{% if tools %}x{% endif %}<|python_tag|>"),
        Some(ToolFormat::Llama3Json)
    );
    assert_eq!(super::tool_format("{{ messages }}<tool_call>"), None);
    assert_eq!(
        super::tool_format("{% if tools %}{{ tools }}{% endif %}"),
        None
    );
}

/// Every fixture model's template, and a template without tools, refuse offered tools by
/// name unless they render them.
#[test]
fn a_template_without_tools_refuses_them() {
    each_variant(|name, tok, _| {
        let out = tok.render_chat(&one_message(), &[weather_tool()]);
        match tok.tool_format() {
            Some(_) => assert!(out.is_ok(), "{name}: {out:?}"),
            None => assert!(
                matches!(
                    out,
                    Err(crate::EngineError::InvalidRequest { param: "tools", .. })
                ),
                "{name}: {out:?}"
            ),
        }
    });
    let tok = with_template("{% for m in messages %}{{ m.content }}{% endfor %}");
    assert_eq!(tok.tool_format(), None);
    assert!(matches!(
        tok.render_chat(&one_message(), &[weather_tool()]),
        Err(crate::EngineError::InvalidRequest { param: "tools", .. })
    ));
}

/// The tool parts of Meta's Llama 3.1 template (from its published
/// `tokenizer_config.json`): `tools | tojson(indent=4)` in the user turn, `'tool_calls' in
/// message` with `arguments | tojson` as `parameters`, tool results as the `ipython` role.
const LLAMA31_STYLE: &str = r#"{{- bos_token }}
{%- for t in tools %}{{- t | tojson(indent=4) }}{{- "\n\n" }}{%- endfor %}
{%- for message in messages %}
{%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- elif 'tool_calls' in message %}
{%- if not message.tool_calls|length == 1 %}{{- raise_exception("This model only supports single tool-calls at once!") }}{%- endif %}
{%- set tool_call = message.tool_calls[0].function %}
{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
{{- '{"name": "' + tool_call.name + '", ' }}{{- '"parameters": ' }}{{- tool_call.arguments | tojson }}{{- "}" }}{{- "<|eot_id|>" }}
{%- elif message.role == "tool" or message.role == "ipython" %}
{{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}{{- message.content }}{{- "<|eot_id|>" }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}
"#;

#[test]
fn tools_and_calls_render_through_a_llama31_template() {
    let tok = with_template(LLAMA31_STYLE);
    assert_eq!(tok.tool_format(), Some(crate::ToolFormat::Llama3Json));
    let call = |id: &str| crate::ChatToolCall {
        id: id.into(),
        name: "get_weather".into(),
        arguments: serde_json::json!({"city": "Rome"}),
    };
    let mut messages = vec![
        ChatMessage {
            role: "user".into(),
            content: "Weather in Rome?".into(),
            ..ChatMessage::default()
        },
        ChatMessage {
            role: "assistant".into(),
            tool_calls: vec![call("call_1")],
            ..ChatMessage::default()
        },
        ChatMessage {
            role: "tool".into(),
            content: "21C".into(),
            tool_call_id: Some("call_1".into()),
            ..ChatMessage::default()
        },
    ];
    let text = tok
        .render_chat(&messages, &[weather_tool()])
        .expect("renders");
    assert!(text.contains("\"name\": \"get_weather\""), "{text}");
    assert!(
        text.contains(
            "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_weather\", \"parameters\": {\"city\":\"Rome\"}}<|eot_id|>"
        ),
        "{text}"
    );
    assert!(
        text.contains("<|start_header_id|>ipython<|end_header_id|>\n\n21C<|eot_id|>"),
        "{text}"
    );
    // The template's own refusal of parallel calls is the client's 400.
    messages[1].tool_calls.push(call("call_2"));
    assert!(matches!(
        tok.render_chat(&messages, &[weather_tool()]),
        Err(crate::EngineError::InvalidRequest {
            param: "messages",
            ..
        })
    ));
}

/// A Mistral template's tool-call markers are control tokens, yet the decoded text keeps
/// them (they tell a call from text, a name from its arguments); other special tokens are
/// still skipped, and other templates' decoding is unchanged.
#[test]
fn mistral_tool_markers_stay_in_the_decoded_text() {
    let dir = fixtures().join("mistral");
    let config = crate::hf_config::ModelConfig::from_dir(&dir).expect("config");
    let mut tok = TextTokenizer::from_dir(&dir, &config.eos_token_ids).expect("tokenizer");
    let super::Backend::Hf(hf) = &mut tok.inner else {
        panic!("the fixture has a tokenizer.json");
    };
    hf.add_special_tokens(&[
        tokenizers::AddedToken::from("[TOOL_CALLS]", true),
        tokenizers::AddedToken::from("[ARGS]", true),
    ]);
    let marker = |t: &str| tok.inner.token_to_id(t).expect("added");
    let (calls, args) = (marker("[TOOL_CALLS]"), marker("[ARGS]"));
    let name = tok.encode_raw("get_weather", false).expect("encodes");
    let json = tok
        .encode_raw("{\"city\": \"Paris\"}", false)
        .expect("encodes");
    let mut ids = vec![1, calls];
    ids.extend(&name);
    ids.push(args);
    ids.extend(&json);
    ids.push(2);
    let plain = tok.decode(&ids).expect("decodes");
    assert!(
        !plain.contains("[TOOL_CALLS]"),
        "no tools template: {plain:?}"
    );
    set_template(
        &mut tok,
        "{% if tools %}{{ tools }}{% endif %}[TOOL_CALLS]{{ name }}[ARGS]",
    );
    let kept = tok.decode(&ids).expect("decodes");
    assert_eq!(
        kept.trim_end(),
        "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}",
        "{kept:?}"
    );
    assert!(!kept.contains("<s>") && !kept.contains("</s>"), "{kept:?}");
}
