//! `POST /tokenize` and `POST /detokenize`: llama.cpp server's shapes, and vLLM's.
//!
//! * llama.cpp: `{"content", "add_special", "with_pieces"}` → `{"tokens": [...]}` (with
//!   pieces: `[{"id", "piece"}]`); `{"tokens"}` → `{"content"}`.
//! * vLLM: `{"model", "prompt", "add_special_tokens"}` → `{"tokens", "count",
//!   "max_model_len"}`; `{"model", "tokens"}` → `{"prompt"}`.
//!
//! One response carries both servers' fields. `model` is optional (the first model, as
//! for `/generate`). Neither route runs the model: the model's tokenizer answers, after the
//! same authentication, allow-list, limits, prompt filter (on `/tokenize`'s text) and
//! audit as a generation.

use airlock_engine::Prompt;
use serde::{Deserialize, Serialize};

use super::error::ApiError;

/// Most token ids one request may send (`/detokenize`) or receive (`/tokenize`): the body
/// limit bounds the bytes; this bounds the ids a response lists and the text a detokenize
/// builds, whatever `max_body_bytes` is set to.
pub const MAX_TOKEN_IDS: usize = 128 * 1024;

/// How `/tokenize` answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenizeOptions {
    /// Add the special tokens (BOS) the model's tokenizer adds to a text prompt.
    pub add_special: bool,
    /// List `{"id", "piece"}` objects instead of bare ids.
    pub with_pieces: bool,
}

/// `POST /tokenize`.
#[derive(Debug, Deserialize)]
pub struct TokenizeBody {
    pub model: Option<String>,
    /// llama.cpp's name for the text.
    pub content: Option<String>,
    /// vLLM's name for the text.
    pub prompt: Option<String>,
    /// llama.cpp's flag (default false).
    pub add_special: Option<bool>,
    /// vLLM's flag (default true).
    pub add_special_tokens: Option<bool>,
    pub with_pieces: Option<bool>,
}

impl TokenizeBody {
    /// The text, the field it came from, and the options (each server's defaults for its
    /// own form).
    pub fn text(self) -> Result<(Prompt, &'static str, TokenizeOptions), ApiError> {
        let (text, param, default_special) = match (self.content, self.prompt) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "content",
                    "send the text as either `content` or `prompt`, not both",
                ));
            }
            (Some(text), None) => (text, "content", false),
            (None, Some(text)) => (text, "prompt", true),
            (None, None) => return Err(ApiError::invalid("content", "content is required")),
        };
        let add_special = self
            .add_special
            .or(self.add_special_tokens)
            .unwrap_or(default_special);
        let options = TokenizeOptions {
            add_special,
            with_pieces: self.with_pieces.unwrap_or(false),
        };
        Ok((Prompt::Text(text), param, options))
    }
}

/// `POST /detokenize`.
#[derive(Debug, Deserialize)]
pub struct DetokenizeBody {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

impl DetokenizeBody {
    pub fn ids(self) -> Result<Prompt, ApiError> {
        check_count("tokens", self.tokens.len())?;
        Ok(Prompt::TokenIds(self.tokens))
    }
}

/// Refuses more than [`MAX_TOKEN_IDS`] ids.
pub fn check_count(param: &'static str, count: usize) -> Result<(), ApiError> {
    if count > MAX_TOKEN_IDS {
        return Err(ApiError::invalid(
            param,
            format!("at most {MAX_TOKEN_IDS} tokens per request, got {count}"),
        ));
    }
    Ok(())
}

/// One token with its text (`with_pieces`).
#[derive(Debug, Serialize)]
pub struct Piece {
    pub id: u32,
    pub piece: String,
}

/// `tokens`: bare ids, or ids with their pieces.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Tokens {
    Ids(Vec<u32>),
    Pieces(Vec<Piece>),
}

/// The `/tokenize` response.
#[derive(Debug, Serialize)]
pub struct TokenizeResponse {
    pub tokens: Tokens,
    pub count: usize,
    pub max_model_len: usize,
}

/// The `/detokenize` response: llama.cpp's `content` and vLLM's `prompt`, the same text.
#[derive(Debug, Serialize)]
pub struct DetokenizeResponse<'a> {
    pub content: &'a str,
    pub prompt: &'a str,
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn tokenize(v: Value) -> Result<(Prompt, &'static str, TokenizeOptions), Option<String>> {
        serde_json::from_value::<TokenizeBody>(v)
            .expect("parses")
            .text()
            .map_err(|e| e.object().param)
    }

    #[test]
    fn both_servers_forms() {
        let (prompt, param, options) = tokenize(json!({"content": "hi"})).expect("valid");
        assert_eq!((prompt, param), (Prompt::Text("hi".into()), "content"));
        assert_eq!(options, TokenizeOptions::default());
        let (_, param, options) = tokenize(json!({"model": "m", "prompt": "hi"})).expect("valid");
        assert_eq!(param, "prompt");
        assert!(options.add_special && !options.with_pieces);
        let (_, _, options) =
            tokenize(json!({"prompt": "hi", "add_special_tokens": false, "with_pieces": true}))
                .expect("valid");
        assert!(!options.add_special && options.with_pieces);
        assert_eq!(tokenize(json!({})), Err(Some("content".into())));
        assert_eq!(
            tokenize(json!({"content": "a", "prompt": "b"})),
            Err(Some("content".into()))
        );
    }

    #[test]
    fn detokenize_is_bounded() {
        let body = |n: usize| DetokenizeBody {
            model: None,
            tokens: vec![1; n],
        };
        assert!(body(MAX_TOKEN_IDS).ids().is_ok());
        assert_eq!(
            body(MAX_TOKEN_IDS + 1).ids().map_err(|e| e.object().param),
            Err(Some("tokens".into()))
        );
    }

    #[test]
    fn response_shapes() {
        let ids = TokenizeResponse {
            tokens: Tokens::Ids(vec![1, 2]),
            count: 2,
            max_model_len: 8,
        };
        assert_eq!(
            serde_json::to_value(ids).expect("serializes"),
            json!({"tokens": [1, 2], "count": 2, "max_model_len": 8})
        );
        let pieces = Tokens::Pieces(vec![Piece {
            id: 7,
            piece: " a".into(),
        }]);
        assert_eq!(
            serde_json::to_value(pieces).expect("serializes"),
            json!([{"id": 7, "piece": " a"}])
        );
    }
}
