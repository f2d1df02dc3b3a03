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
                })
                .collect();
            let gen_prompt = case["add_generation_prompt"].as_bool().expect("bool");
            let text = tok.render_chat_with(&messages, gen_prompt).expect("render");
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
