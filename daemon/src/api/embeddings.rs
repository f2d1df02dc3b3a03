//! `POST /v1/embeddings`, in OpenAI's shape: `model`, `input` (a string, an array of
//! strings, an array of token ids, or an array of arrays of token ids), `encoding_format`
//! (`float`, or `base64`: the little-endian `f32` bytes, base64-encoded), `dimensions`
//! (the first `dimensions` numbers, normalized again) and `user` (accepted, unused).

use airlock_engine::Prompt;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ApiError;

/// Most inputs one request may carry (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

/// How the vectors are answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmbedOptions {
    /// `encoding_format: "base64"`.
    pub base64: bool,
    /// `dimensions`: truncate to this many, then normalize again.
    pub dimensions: Option<usize>,
}

/// `POST /v1/embeddings` as sent.
#[derive(Debug, Deserialize)]
pub struct EmbeddingsBody {
    pub model: String,
    pub input: Value,
    #[serde(default)]
    pub encoding_format: Option<String>,
    #[serde(default)]
    pub dimensions: Option<i64>,
    /// OpenAI's end-user id: accepted, not used.
    #[serde(default)]
    pub user: Option<String>,
}

impl EmbeddingsBody {
    /// The inputs (text or token ids, each non-empty, at most [`MAX_INPUTS`]) and options.
    pub fn inputs(&self) -> Result<(Vec<Prompt>, EmbedOptions), ApiError> {
        let base64 = match self.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(ApiError::invalid(
                    "encoding_format",
                    format!("`{other}` is not one of \"float\", \"base64\""),
                ));
            }
        };
        let dimensions = match self.dimensions {
            None => None,
            Some(d) if d >= 1 => Some(usize::try_from(d).unwrap_or(usize::MAX)),
            Some(d) => {
                return Err(ApiError::invalid(
                    "dimensions",
                    format!("must be at least 1, got {d}"),
                ));
            }
        };
        let inputs = parse_input(&self.input)?;
        Ok((inputs, EmbedOptions { base64, dimensions }))
    }
}

fn token_ids(items: &[Value], param: &str) -> Result<Vec<u32>, ApiError> {
    items
        .iter()
        .map(|v| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    ApiError::invalid(param, "token ids are integers from 0 to 2^32 - 1")
                })
        })
        .collect()
}

fn parse_input(input: &Value) -> Result<Vec<Prompt>, ApiError> {
    let shape = || {
        ApiError::invalid(
            "input",
            "must be a string, an array of strings, an array of token ids, or an array of \
             arrays of token ids",
        )
    };
    let inputs = match input {
        Value::String(text) => vec![Prompt::Text(text.clone())],
        Value::Array(items) if items.is_empty() => {
            return Err(ApiError::invalid("input", "must not be empty"));
        }
        Value::Array(items) if items.len() > MAX_INPUTS => {
            return Err(ApiError::invalid(
                "input",
                format!(
                    "at most {MAX_INPUTS} inputs per request, got {}",
                    items.len()
                ),
            ));
        }
        Value::Array(items) => match &items[0] {
            Value::String(_) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(|t| Prompt::Text(t.to_owned()))
                        .ok_or_else(shape)
                })
                .collect::<Result<_, _>>()?,
            Value::Number(_) => vec![Prompt::TokenIds(token_ids(items, "input")?)],
            Value::Array(_) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Array(ids) => {
                        token_ids(ids, &format!("input[{i}]")).map(Prompt::TokenIds)
                    }
                    _ => Err(shape()),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(shape()),
        },
        _ => return Err(shape()),
    };
    for (i, input) in inputs.iter().enumerate() {
        let empty = match input {
            Prompt::Text(text) => text.is_empty(),
            Prompt::TokenIds(ids) => ids.is_empty(),
            Prompt::Chat(..) => false,
        };
        if empty {
            return Err(ApiError::invalid(
                format!("input[{i}]"),
                "an input must not be empty",
            ));
        }
    }
    Ok(inputs)
}

/// The first `dimensions` numbers of `v`, normalized again (OpenAI's shortened embeddings).
pub fn shorten(mut v: Vec<f32>, dimensions: Option<usize>) -> Vec<f32> {
    let Some(d) = dimensions else {
        return v;
    };
    v.truncate(d);
    let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if norm > 0.0 {
        for x in &mut v {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
    v
}

/// A vector as `base64` answers it: the little-endian `f32` bytes.
pub fn to_base64(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One `embedding` object's vector.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

/// One `embedding` object.
#[derive(Debug, Serialize)]
pub struct EmbeddingObject {
    pub object: &'static str,
    pub index: usize,
    pub embedding: Vector,
}

/// The `usage` of an embeddings response.
#[derive(Debug, Serialize)]
pub struct EmbeddingsUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// The response: `{"object": "list", "data": [...], "model", "usage"}`.
#[derive(Debug, Serialize)]
pub struct EmbeddingsResponse<'a> {
    pub object: &'static str,
    pub data: Vec<EmbeddingObject>,
    pub model: &'a str,
    pub usage: EmbeddingsUsage,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<(Vec<Prompt>, EmbedOptions), Option<String>> {
        serde_json::from_value::<EmbeddingsBody>(v)
            .expect("parses")
            .inputs()
            .map_err(|e| e.object().param)
    }

    #[test]
    fn every_input_form() {
        let text = |t: &str| Prompt::Text(t.into());
        assert_eq!(
            parse(json!({"model": "m", "input": "a b"})).map(|p| p.0),
            Ok(vec![text("a b")])
        );
        assert_eq!(
            parse(json!({"model": "m", "input": ["a", "b"]})).map(|p| p.0),
            Ok(vec![text("a"), text("b")])
        );
        assert_eq!(
            parse(json!({"model": "m", "input": [1, 2]})).map(|p| p.0),
            Ok(vec![Prompt::TokenIds(vec![1, 2])])
        );
        assert_eq!(
            parse(json!({"model": "m", "input": [[1], [2, 3]]})).map(|p| p.0),
            Ok(vec![
                Prompt::TokenIds(vec![1]),
                Prompt::TokenIds(vec![2, 3])
            ])
        );
        let (_, options) =
            parse(json!({"model": "m", "input": "a", "encoding_format": "base64", "dimensions": 8, "user": "u"}))
                .expect("valid");
        assert_eq!(
            options,
            EmbedOptions {
                base64: true,
                dimensions: Some(8)
            }
        );
    }

    #[test]
    fn refusals_name_the_field() {
        for (body, param) in [
            (json!({"model": "m", "input": ""}), "input[0]"),
            (json!({"model": "m", "input": ["a", ""]}), "input[1]"),
            (json!({"model": "m", "input": [[1], []]}), "input[1]"),
            (json!({"model": "m", "input": []}), "input"),
            (json!({"model": "m", "input": ["a", 1]}), "input"),
            (json!({"model": "m", "input": [-1]}), "input"),
            (json!({"model": "m", "input": {"a": 1}}), "input"),
            (
                json!({"model": "m", "input": vec!["a"; MAX_INPUTS + 1]}),
                "input",
            ),
            (
                json!({"model": "m", "input": "a", "encoding_format": "hex"}),
                "encoding_format",
            ),
            (
                json!({"model": "m", "input": "a", "dimensions": 0}),
                "dimensions",
            ),
        ] {
            assert_eq!(
                parse(body.clone()).map(drop),
                Err(Some(param.into())),
                "{body}"
            );
        }
    }

    #[test]
    fn shortened_vectors_are_normalized_and_base64_is_le_f32() {
        let v = shorten(vec![3.0, 4.0, 12.0], Some(2));
        assert_eq!(v, vec![0.6, 0.8]);
        let b = to_base64(&[1.0, -2.5]);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b)
            .expect("base64");
        assert_eq!(
            bytes,
            [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat()
        );
    }
}
