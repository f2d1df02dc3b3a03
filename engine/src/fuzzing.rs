//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`, which no shipped
//! build enables). Each drives the loader's real code on files the caller wrote into a
//! scratch directory, stage by stage as [`crate::loader::load_dir`] runs them, up to (not
//! including) building the model on a device. Every stage runs even when an earlier one
//! failed, so a hostile file reaches all of them; an error is the expected outcome, a panic
//! is a bug.

use std::path::Path;

use safetensors::SafeTensors;

use crate::gguf::GgufFile;
use crate::models::config::ModelConfig;
use crate::models::{family_for_gguf, gguf_weights};
use crate::tokenizer::TextTokenizer;
use crate::weights::Weights;
use crate::{ChatMessage, EngineError, Prompt};

/// What one input got through, for the targets' own checks.
#[derive(Debug, Default)]
pub struct Reached {
    pub config: bool,
    pub tokenizer: bool,
    pub weights: bool,
    /// Tensors read back (converted to `f32`).
    pub tensors_read: usize,
}

/// `dir/model.gguf` (written by the caller, no `tokenizer.json` beside it): header, config,
/// tokenizer rebuilt from metadata (and its chat template rendered), every tensor read.
pub fn gguf(dir: &Path) -> Result<Reached, EngineError> {
    let file = GgufFile::open(&dir.join("model.gguf"), None)?;
    let mut reached = Reached::default();
    let config = ModelConfig::from_gguf(&file);
    if let Ok(config) = &config {
        reached.config = true;
        let _ = config.inv_freq();
    }
    let eos = config.map(|c| c.eos_token_ids).unwrap_or_default();
    if let Ok(tok) = TextTokenizer::from_gguf(dir, &file, &eos) {
        reached.tokenizer = true;
        exercise_tokenizer(&tok);
    }
    if let (Ok(weights), Ok(family)) = (gguf_weights(&file), family_for_gguf(&file)) {
        reached.weights = true;
        for t in &file.tensors {
            let name = family.gguf_tensor_name(&t.name);
            reached.tensors_read += read_tensor(&weights, &name, &t.shape);
        }
    }
    Ok(reached)
}

/// `dir/config.json` and `dir/model.safetensors` (written by the caller): config, header,
/// every tensor the header lists read back.
pub fn safetensors(dir: &Path) -> Result<Reached, EngineError> {
    let mut reached = Reached::default();
    if let Ok(config) = ModelConfig::from_dir(dir) {
        reached.config = true;
        let _ = config.inv_freq();
    }
    let weights = Weights::open(dir, None)?;
    reached.weights = true;
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap_or_default();
    if let Ok((_, meta)) = SafeTensors::read_metadata(&bytes) {
        for (name, info) in meta.tensors() {
            reached.tensors_read += read_tensor(&weights, &name, &info.shape);
        }
    }
    Ok(reached)
}

/// The tokenizer of `dir` (`tokenizer.json` + `tokenizer_config.json` with a
/// `chat_template`, written by the caller): `messages` rendered and tokenized as a chat
/// request is.
pub fn chat_template(dir: &Path, messages: &[ChatMessage]) -> Result<Vec<u32>, EngineError> {
    let tok = TextTokenizer::from_dir(dir, &[])?;
    tok.render_chat_with(messages, &[], false)?;
    tok.encode_prompt(&Prompt::Chat(messages.to_vec(), Vec::new()))
}

/// Encodes, decodes and renders a chat with a loaded tokenizer, as a request would.
fn exercise_tokenizer(tok: &TextTokenizer) {
    if let Ok(ids) = tok.encode_text("Hello world! 123 ünïcödé\n\t<|special|>") {
        let _ = tok.decode(&ids);
        let _ = tok.decode_with(&ids, false);
    }
    let messages = [
        ChatMessage {
            role: "system".into(),
            content: "Be brief.".into(),
            ..ChatMessage::default()
        },
        ChatMessage {
            role: "user".into(),
            content: "Hi".into(),
            ..ChatMessage::default()
        },
    ];
    let _ = tok.encode_prompt(&Prompt::Chat(messages.to_vec(), Vec::new()));
    let _ = tok.decode(&[0, 1, 2, u32::MAX]);
}

/// Reads one tensor as the model would (as stored, as `f32`, as a row table); 1 when the
/// `f32` read succeeded.
fn read_tensor(weights: &Weights, name: &str, shape: &[usize]) -> usize {
    let _ = weights.raw(name, shape);
    if let [rows, cols] = *shape
        && let Ok(table) = weights.rows(name, rows, cols)
    {
        let mut out = Vec::new();
        for row in [0, rows / 2, rows.saturating_sub(1), rows] {
            out.clear();
            let _ = table.push_row(row, &mut out);
        }
    }
    usize::from(weights.f32(name, shape).is_ok())
}

/// `grammar`: a client's JSON Schema (`response_format`) compiled against the embedded
/// default model's tokenizer and followed for at most `picks.len()` tokens, each the
/// `pick`-th (modulo) token the mask allows, as a model choosing anything allowed would.
/// Returns the tokens followed. A panic in the grammar library surfaces as
/// [`EngineError::InvalidRequest`] whose reason ends in "it panicked" (the engine turns it
/// into the request's error); the target treats that as the bug it is.
pub fn grammar(schema: serde_json::Value, picks: &[u8]) -> Result<usize, EngineError> {
    use std::sync::OnceLock;

    use crate::constraint::Grammars;
    use crate::{Grammar, GrammarSpec};

    static MODEL: OnceLock<Result<(TextTokenizer, Grammars, usize), String>> = OnceLock::new();
    let (tokenizer, grammars, vocab) = MODEL
        .get_or_init(|| {
            let dir =
                std::env::temp_dir().join(format!("airlock-fuzz-grammar-{}", std::process::id()));
            let path = crate::default_model::install(&dir).map_err(|e| e.to_string())?;
            let config = ModelConfig::from_dir(&path).map_err(|e| e.to_string())?;
            let tokenizer =
                TextTokenizer::from_dir(&path, &config.eos_token_ids).map_err(|e| e.to_string())?;
            Ok((
                tokenizer,
                Grammars::new(config.vocab_size),
                config.vocab_size,
            ))
        })
        .as_ref()
        .map_err(|e| EngineError::Inference(e.clone()))?;
    let grammar = Grammar {
        param: "response_format",
        spec: GrammarSpec::JsonSchema(schema),
    };
    let mut constraint = grammars.compile(tokenizer, &grammar)?;
    let eos = tokenizer.eos_ids();
    let mut followed = 0;
    for &pick in picks {
        let mut logits = vec![0.0f32; *vocab];
        constraint.mask(&mut logits)?;
        let allowed: Vec<u32> = (0..*vocab as u32)
            .filter(|&id| logits[id as usize].is_finite())
            .collect();
        let Some(&id) = allowed.get(usize::from(pick) % allowed.len().max(1)) else {
            break;
        };
        if eos.contains(&id) {
            break;
        }
        constraint.accept(id)?;
        followed += 1;
    }
    Ok(followed)
}
