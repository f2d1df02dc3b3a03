//! The grammar mask on the embedded default model (random weights: whatever it would say,
//! the output must follow the grammar) and the tool-call grammars on a template's format.

use std::time::Instant;

use serde_json::{Value, json};

use super::*;
use crate::detok::StopMatcher;
use crate::loader::{Integrity, LoadedModel, load_dir};
use crate::sequence::Sequence;
use crate::{DeviceChoice, FinishReason, SamplingParams, TokenEvent, ToolFunction};

fn model() -> (tempfile::TempDir, LoadedModel) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = crate::default_model::install(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let m = load_dir(&path, DeviceChoice::Cpu, Integrity::Unverified, None, None)
        .unwrap_or_else(|e| panic!("{e}"));
    (dir, m)
}

fn grammar(spec: GrammarSpec) -> Grammar {
    Grammar {
        param: "response_format",
        spec,
    }
}

/// Generates under `g` with `params`; returns the text and how it finished.
fn run(m: &LoadedModel, g: &Grammar, params: SamplingParams) -> (String, FinishReason) {
    let grammars = Grammars::new(m.model.config.vocab_size);
    let constraint = grammars
        .compile(&m.tokenizer, g)
        .unwrap_or_else(|e| panic!("{e}"));
    let prompt = m
        .tokenizer
        .encode_text("Answer in JSON:")
        .unwrap_or_else(|e| panic!("{e}"));
    let stop = StopMatcher::new(&[]).unwrap_or_else(|e| panic!("{e}"));
    let mut seq = Sequence::new(m, prompt, &params, stop, Instant::now());
    seq.constrain(constraint);
    let mut text = String::new();
    let mut reason = None;
    while !seq.is_finished() {
        for event in seq.step(m).unwrap_or_else(|e| panic!("{e}")) {
            match event {
                TokenEvent::Token { text: t, .. } => text.push_str(&t),
                TokenEvent::Finished {
                    text: t, reason: r, ..
                } => {
                    text.push_str(&t);
                    reason = Some(r);
                }
                _ => {}
            }
        }
    }
    (text, reason.expect("finished"))
}

/// A schema whose every valid value is short, so that even a random model ends it.
fn bounded_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
            "urgent": {"type": "boolean"},
            "score": {"type": "integer", "minimum": 0, "maximum": 9},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
        },
        "required": ["sentiment", "urgent", "score", "tags"],
        "additionalProperties": false,
    })
}

fn check_bounded(v: &Value) {
    let o = v.as_object().expect("an object");
    assert_eq!(o.len(), 4, "exactly the declared properties: {v}");
    assert!(["positive", "negative", "neutral"].contains(&o["sentiment"].as_str().expect("str")));
    assert!(o["urgent"].is_boolean());
    let score = o["score"].as_i64().expect("integer");
    assert!((0..=9).contains(&score));
    let tags = o["tags"].as_array().expect("array");
    assert!(tags.len() <= 2 && tags.iter().all(|t| t == "a" || t == "b"));
}

#[test]
fn schema_output_is_valid_json_for_the_schema_greedy_and_sampled() {
    let (_dir, m) = model();
    let g = grammar(GrammarSpec::JsonSchema(bounded_schema()));
    for seed in 0..4 {
        let params = SamplingParams {
            temperature: if seed == 0 { 0.0 } else { 1.0 },
            seed: Some(seed),
            max_tokens: Some(120),
            ..Default::default()
        };
        let (text, reason) = run(&m, &g, params);
        assert_eq!(reason, FinishReason::Stop, "the grammar ended it: {text:?}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        check_bounded(&v);
        // One line, `json.dumps` separators.
        assert!(text.starts_with("{\"") && text.contains("\": ") && !text.contains('\n'));
    }
}

#[test]
fn json_object_output_is_an_object_as_far_as_it_went() {
    let (_dir, m) = model();
    let g = grammar(GrammarSpec::JsonObject);
    let (text, reason) = run(
        &m,
        &g,
        SamplingParams {
            temperature: 1.0,
            seed: Some(5),
            max_tokens: Some(40),
            ..Default::default()
        },
    );
    assert!(text.starts_with('{'), "{text:?}");
    if reason == FinishReason::Stop {
        assert!(serde_json::from_str::<Value>(&text).is_ok_and(|v| v.is_object()));
    } else {
        assert_eq!(reason, FinishReason::Length);
    }
}

#[test]
fn logprobs_under_a_grammar_are_the_raw_distributions() {
    let (_dir, m) = model();
    let g = grammar(GrammarSpec::JsonSchema(bounded_schema()));
    let grammars = Grammars::new(m.model.config.vocab_size);
    let prompt = m
        .tokenizer
        .encode_text("x")
        .unwrap_or_else(|e| panic!("{e}"));
    let params = SamplingParams {
        max_tokens: Some(1),
        logprobs: Some(3),
        ..Default::default()
    };
    let stop = StopMatcher::new(&[]).unwrap_or_else(|e| panic!("{e}"));
    let mut seq = Sequence::new(&m, prompt, &params, stop, Instant::now());
    seq.keep_prompt_logits();
    seq.constrain(
        grammars
            .compile(&m.tokenizer, &g)
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let events = seq.step(&m).unwrap_or_else(|e| panic!("{e}"));
    let logits = seq.prompt_logits.take().expect("kept");
    let reference = crate::sampling::tests::log_softmax(&logits);
    let entry = events
        .into_iter()
        .flat_map(|e| match e {
            TokenEvent::Token { logprobs, .. } | TokenEvent::Finished { logprobs, .. } => logprobs,
            _ => Vec::new(),
        })
        .next()
        .expect("one entry");
    // The first token must open the object, whatever the model preferred.
    assert!(
        entry.chosen.token.starts_with('{'),
        "{:?}",
        entry.chosen.token
    );
    let id = entry.chosen.id as usize;
    assert!((f64::from(entry.chosen.logprob) - reference[id]).abs() < 1e-5);
    // The alternatives are the model's own best tokens, masked or not.
    let best = crate::sampling::argmax(&logits);
    assert_eq!(entry.top[0].id, best);
}

#[test]
fn unsupported_schemas_are_refused_naming_the_field() {
    let (_dir, m) = model();
    let grammars = Grammars::new(m.model.config.vocab_size);
    for schema in [
        json!({"type": "object", "properties": {"a": {"$ref": "https://example.invalid/s.json"}}}),
        json!({"type": "string", "minLength": 5, "maxLength": 2}),
        json!({"type": "nonsense"}),
    ] {
        let g = Grammar {
            param: "text.format",
            spec: GrammarSpec::JsonSchema(schema.clone()),
        };
        match grammars.compile(&m.tokenizer, &g) {
            Err(EngineError::InvalidRequest { param, reason }) => {
                assert_eq!(param, "text.format");
                assert!(reason.len() < 400, "{reason}");
            }
            Err(e) => panic!("{schema}: {e}"),
            Ok(_) => panic!("{schema}: accepted"),
        }
    }
}

fn weather() -> ToolFunction {
    ToolFunction {
        name: "get_weather".into(),
        parameters: json!({
            "type": "object",
            "properties": {"unit": {"enum": ["c", "f"]}, "days": {"type": "integer", "minimum": 1, "maximum": 3}},
            "required": ["unit", "days"],
            "additionalProperties": false,
        }),
    }
}

#[test]
fn tool_call_grammars_write_each_format() {
    let hermes = tool_call_lark(
        &TokTrie::from(&TokRxInfo::new(1, 0), &[vec![b'x']]),
        ToolFormat::Hermes,
        &[weather()],
        true,
    );
    assert!(
        hermes.starts_with("start: call (\"\\n\" call)*\n"),
        "{hermes}"
    );
    assert!(hermes.contains("\"<tool_call>\\n\" %json {"), "{hermes}");
    let llama = tool_call_lark(
        &TokTrie::from(&TokRxInfo::new(1, 0), &[vec![b'x']]),
        ToolFormat::Llama3Json,
        &[weather(), weather()],
        false,
    );
    assert!(llama.starts_with("start: call\n") && llama.contains("\"parameters\""));
    assert!(llama.contains("anyOf"));
    // Mistral's marker: by id where the vocabulary has it as a control token.
    let words = vec![b"\xFF[TOOL_CALLS]".to_vec(), b"x".to_vec()];
    let trie = TokTrie::from(&TokRxInfo::new(2, 1), &words);
    let mistral = tool_call_lark(&trie, ToolFormat::Mistral, &[weather()], false);
    assert!(mistral.starts_with("start: <[0]> %json {"), "{mistral}");
    assert!(mistral.contains("\"maxItems\":1"), "{mistral}");
    // Mistral v11+: name and arguments between control tokens, one marker per call.
    let words = vec![
        b"\xFF[TOOL_CALLS]".to_vec(),
        b"\xFF[ARGS]".to_vec(),
        b"x".to_vec(),
    ];
    let trie = TokTrie::from(&TokRxInfo::new(3, 2), &words);
    let args = tool_call_lark(&trie, ToolFormat::MistralArgs, &[weather()], true);
    assert!(
        args.starts_with("start: call+\ncall: <[0]> \"get_weather\" <[1]> %json {"),
        "{args}"
    );
}

/// Forced single calls of `get_weather` on a model whose template is `template` (its tool
/// format `format`), sampled at temperature 1 with `seeds`: each output must end (`Stop`),
/// and `arguments` extracts the arguments JSON from it, which must be valid against the
/// schema, whatever the random model prefers.
fn forced_calls_are_valid(
    template: &str,
    format: ToolFormat,
    seeds: std::ops::Range<u64>,
    arguments: impl Fn(&str) -> Option<Value>,
) {
    let (_dir, mut m) = model();
    let tok = std::sync::Arc::get_mut(&mut m.tokenizer).expect("sole owner");
    crate::tokenizer::tests::set_template(tok, template);
    assert_eq!(m.tokenizer.tool_format(), Some(format));
    let g = Grammar {
        param: "tool_choice",
        spec: GrammarSpec::ToolCalls {
            functions: vec![weather()],
            parallel: false,
            or_schema: None,
        },
    };
    for seed in seeds {
        let (text, reason) = run(
            &m,
            &g,
            SamplingParams {
                temperature: 1.0,
                seed: Some(seed),
                max_tokens: Some(80),
                ..Default::default()
            },
        );
        assert_eq!(reason, FinishReason::Stop, "{text:?}");
        let args = arguments(&text).unwrap_or_else(|| panic!("not a call: {text:?}"));
        assert!(args["unit"] == "c" || args["unit"] == "f", "{args}");
        let days = args["days"].as_i64().expect("days");
        assert!((1..=3).contains(&days), "{args}");
    }
}

/// A forced call on a Hermes template parses as one call of the named tool.
#[test]
fn a_forced_hermes_call_is_always_a_valid_call() {
    forced_calls_are_valid(
        crate::test_engine::HERMES_TOOLS_TEMPLATE,
        ToolFormat::Hermes,
        0..3,
        |text| {
            let body = text
                .strip_prefix("<tool_call>\n")?
                .strip_suffix("\n</tool_call>")?;
            let call: Value = serde_json::from_str(body).ok()?;
            (call["name"] == "get_weather").then(|| call["arguments"].clone())
        },
    );
}

/// A forced call on a Mistral v11+ template (`[TOOL_CALLS]name[ARGS]{…}`): the markers are
/// spelled out here (the fixture's vocabulary has no such control tokens).
#[test]
fn a_forced_mistral_args_call_is_always_a_valid_call() {
    forced_calls_are_valid(
        "{% if tools %}[AVAILABLE_TOOLS]{{ tools }}[/AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]{{ n }}[ARGS]",
        ToolFormat::MistralArgs,
        0..2,
        |text| serde_json::from_str(text.strip_prefix("[TOOL_CALLS]get_weather[ARGS]")?).ok(),
    );
}
