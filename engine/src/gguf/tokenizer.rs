//! A `tokenizers` tokenizer rebuilt from GGUF's `tokenizer.ggml.*` metadata, for a GGUF
//! model directory without a `tokenizer.json`.
//!
//! Only the byte-level BPE family (`tokenizer.ggml.model = "gpt2"`) is rebuilt; the
//! pre-tokenizer regex is chosen by `tokenizer.ggml.pre` as llama.cpp does (`llama-bpe`:
//! Llama 3, `qwen2`, `smollm`, `default`/`gpt2`). SentencePiece (`llama`) vocabularies are refused:
//! ship the model's `tokenizer.json` beside the GGUF file instead.

use serde_json::{Map, Value as Json, json};

use crate::EngineError;
use crate::gguf::{GgufFile, Value};

const LLAMA3_REGEX: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_REGEX: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/// One digit (SmolLM splits numbers into single digits before the GPT-2 regex).
const DIGITS_REGEX: &str = "\\p{N}";

/// llama.cpp's `llama_token_type`.
const TOKEN_CONTROL: u64 = 3;
const TOKEN_USER_DEFINED: u64 = 4;

/// What a GGUF file says about its special tokens.
pub(crate) struct Specials {
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub add_bos: Option<bool>,
}

pub(crate) fn specials(file: &GgufFile) -> Specials {
    let id = |key: &str| {
        file.get(key)
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
    };
    Specials {
        bos_id: id("tokenizer.ggml.bos_token_id"),
        eos_id: id("tokenizer.ggml.eos_token_id"),
        add_bos: file
            .get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool),
    }
}

fn strings<'a>(file: &'a GgufFile, key: &str) -> Result<Vec<&'a str>, EngineError> {
    let items = file
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| file.err(format!("metadata `{key}`: missing or not an array")))?;
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .ok_or_else(|| file.err(format!("metadata `{key}`[{i}]: not a string")))
        })
        .collect()
}

/// Builds the tokenizer; `add_bos` is the effective BOS policy (llama.cpp's default for
/// the pre-tokenizer when the file does not say).
pub(crate) fn build(file: &GgufFile) -> Result<(tokenizers::Tokenizer, bool), EngineError> {
    let model = file
        .get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            file.err(
                "metadata `tokenizer.ggml.model`: missing (and no tokenizer.json beside the file)",
            )
        })?;
    if model != "gpt2" {
        return Err(file.err(format!(
            "metadata `tokenizer.ggml.model`: `{model}` vocabularies are not rebuilt from GGUF \
             (only byte-level BPE, `gpt2`); put the model's tokenizer.json beside the GGUF file"
        )));
    }
    let pre = file
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let (split, ignore_merges, nfc, default_bos) = match pre {
        "llama-bpe" | "llama3" => (Some(LLAMA3_REGEX), true, false, true),
        "qwen2" => (Some(QWEN2_REGEX), false, true, false),
        "default" | "gpt2" => (None, false, false, false),
        // SmolLM/SmolLM2: every digit on its own, then GPT-2's split (llama.cpp's
        // `LLAMA_VOCAB_PRE_TYPE_SMOLLM`; the HF tokenizer's `Digits` + `ByteLevel`).
        "smollm" => (Some(DIGITS_REGEX), false, false, false),
        other => {
            return Err(file.err(format!(
                "metadata `tokenizer.ggml.pre`: `{other}` is not supported (supported: \
                 llama-bpe, qwen2, smollm, default); put the model's tokenizer.json beside the \
                 GGUF file"
            )));
        }
    };
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let merges = strings(file, "tokenizer.ggml.merges")?;
    let types: Vec<u64> = match file.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .as_array()
            .ok_or_else(|| file.err("metadata `tokenizer.ggml.token_type`: not an array"))?
            .iter()
            .map(|t| t.as_u64().unwrap_or(1))
            .collect(),
        None => Vec::new(),
    };
    if !types.is_empty() && types.len() != tokens.len() {
        return Err(file.err(format!(
            "metadata `tokenizer.ggml.token_type`: {} entries for {} tokens",
            types.len(),
            tokens.len()
        )));
    }
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        let ty = types.get(id).copied().unwrap_or(1);
        if ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED {
            added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == TOKEN_CONTROL,
            }));
        }
        vocab.insert((*tok).to_owned(), json!(id));
    }
    let sp = specials(file);
    let add_bos = sp.add_bos.unwrap_or(default_bos);
    let byte_level = |prefix: bool, regex: bool| json!({"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": true, "use_regex": regex});
    let pre_tokenizer = match split {
        // Digits split off first; the rest is GPT-2's own regex inside ByteLevel.
        Some(DIGITS_REGEX) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": DIGITS_REGEX}, "behavior": "Isolated", "invert": false},
            byte_level(false, true),
        ]}),
        Some(regex) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            byte_level(false, false),
        ]}),
        None => byte_level(false, true),
    };
    let post_processor = match (add_bos, sp.bos_id.and_then(|i| tokens.get(i as usize))) {
        (true, Some(bos)) => {
            let mut special = Map::new();
            special.insert(
                (*bos).to_owned(),
                json!({"id": bos, "ids": [sp.bos_id], "tokens": [bos]}),
            );
            json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": special})
        }
        _ => Json::Null,
    };
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": if nfc { json!({"type": "NFC"}) } else { Json::Null },
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": byte_level(true, true),
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges,
        },
    });
    let tokenizer: tokenizers::Tokenizer = serde_json::from_value(spec).map_err(|e| {
        file.err(format!(
            "tokenizer metadata does not form a valid tokenizer: {e}"
        ))
    })?;
    Ok((tokenizer, add_bos))
}
