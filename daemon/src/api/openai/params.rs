//! Sampling parameters shared by chat and text completions: OpenAI's ranges and defaults,
//! checked here so every refusal names its field.

use airlock_engine::SamplingParams;
use serde::Deserialize;
use serde_json::Value;

use crate::api::error::ApiError;

/// The sampling fields of a completion request, as sent.
///
/// `Option`s everywhere: an absent field and an explicit `null` both mean "default", as in
/// OpenAI's API (the SDKs send `null` for unset fields in some versions).
#[derive(Debug, Default, Deserialize)]
pub struct SamplingFields {
    pub max_tokens: Option<u32>,
    /// Chat's newer name for `max_tokens`; wins when both are given.
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stop: Option<Value>,
    pub seed: Option<i64>,
    pub n: Option<u32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// Extension (vLLM): `-1` or `0` disables.
    pub top_k: Option<i64>,
    /// Extension (vLLM): in [0, 1].
    pub min_p: Option<f32>,
    /// Extension (vLLM): > 0, 1 disables.
    pub repetition_penalty: Option<f32>,
    /// Extension (vLLM): keep generating past end-of-sequence (benchmarks).
    pub ignore_eos: Option<bool>,
}

/// At most this many stop sequences (OpenAI's limit).
pub const MAX_STOP: usize = airlock_engine::MAX_STOP_SEQUENCES;

/// At most this many bytes per stop sequence: what the engine holds back while a stream's
/// end could still begin one.
pub const MAX_STOP_BYTES: usize = airlock_engine::MAX_STOP_BYTES;

impl SamplingFields {
    /// How many choices to generate (OpenAI's `n`, default 1): at most
    /// [`airlock_engine::MAX_N`]. Routes without choices (`/generate`) pass `many = false`
    /// and accept only 1.
    pub fn choices(&self, many: bool) -> Result<usize, ApiError> {
        let max = if many { airlock_engine::MAX_N } else { 1 };
        match self.n {
            None => Ok(1),
            Some(n) if (1..=max as u32).contains(&n) => Ok(n as usize),
            Some(0) => Err(ApiError::invalid("n", "n must be at least 1")),
            Some(n) if many => Err(ApiError::invalid(
                "n",
                format!("n must be at most {max}, got {n}"),
            )),
            Some(n) => Err(ApiError::unsupported(
                "n",
                format!("n = {n} is not supported on this route; only n = 1"),
            )),
        }
    }

    /// Validates ranges and fills in defaults: temperature 1, top_p 1, no penalties.
    /// `default_max_tokens` applies when neither max field is given (`None`: up to the
    /// context end).
    pub fn to_params(&self, default_max_tokens: Option<usize>) -> Result<SamplingParams, ApiError> {
        let temperature = self.temperature.unwrap_or(1.0);
        in_range("temperature", temperature, 0.0, 2.0)?;
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("top_p must be in (0, 1], got {top_p}"),
            ));
        }
        let presence_penalty = self.presence_penalty.unwrap_or(0.0);
        in_range("presence_penalty", presence_penalty, -2.0, 2.0)?;
        let frequency_penalty = self.frequency_penalty.unwrap_or(0.0);
        in_range("frequency_penalty", frequency_penalty, -2.0, 2.0)?;
        let min_p = self.min_p.unwrap_or(0.0);
        in_range("min_p", min_p, 0.0, 1.0)?;
        let repetition_penalty = self.repetition_penalty.unwrap_or(1.0);
        if !(repetition_penalty > 0.0 && repetition_penalty.is_finite()) {
            return Err(ApiError::invalid(
                "repetition_penalty",
                format!("repetition_penalty must be > 0, got {repetition_penalty}"),
            ));
        }
        let top_k = match self.top_k {
            None | Some(-1 | 0) => None,
            Some(k) if k > 0 => Some(usize::try_from(k).unwrap_or(usize::MAX)),
            Some(k) => {
                return Err(ApiError::invalid(
                    "top_k",
                    format!("top_k must be -1 (off) or > 0, got {k}"),
                ));
            }
        };
        let (param, max) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) => ("max_completion_tokens", Some(m)),
            (None, m) => ("max_tokens", m),
        };
        let max_tokens = match max {
            Some(0) => {
                return Err(ApiError::invalid(
                    param,
                    format!("{param} must be at least 1"),
                ));
            }
            Some(m) => Some(m as usize),
            None => default_max_tokens,
        };
        Ok(SamplingParams {
            temperature,
            top_p,
            top_k,
            min_p,
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            // Negative seeds are accepted (OpenAI takes any 64-bit integer); only the bits matter.
            seed: self.seed.map(|s| s as u64),
            max_tokens,
            stop: parse_stop(self.stop.as_ref())?,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            // Set by the route (chat and completions name the field differently).
            logprobs: None,
            // Set by the chat route (`response_format`, `tool_choice`).
            grammar: None,
        })
    }
}

fn in_range(param: &'static str, value: f32, min: f32, max: f32) -> Result<(), ApiError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            param,
            format!("{param} must be in [{min}, {max}], got {value}"),
        ))
    }
}

/// `stop`: a string or an array of up to four strings of at most [`MAX_STOP_BYTES`] bytes.
/// Empty strings are dropped (they would stop before the first token). Every refusal names
/// `stop` (an array item's index is in the message).
fn parse_stop(stop: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let too_long = |what: String, len: usize| {
        ApiError::invalid(
            "stop",
            format!("{what} is {len} bytes; a stop sequence may be at most {MAX_STOP_BYTES} bytes"),
        )
    };
    let list = match stop {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) if s.len() > MAX_STOP_BYTES => {
            return Err(too_long("stop".into(), s.len()));
        }
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.len() > MAX_STOP {
                return Err(ApiError::invalid(
                    "stop",
                    format!(
                        "at most {MAX_STOP} stop sequences are allowed, got {}",
                        items.len()
                    ),
                ));
            }
            let mut list = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) if s.len() > MAX_STOP_BYTES => {
                        return Err(too_long(format!("stop[{i}]"), s.len()));
                    }
                    Value::String(s) => list.push(s.clone()),
                    _ => {
                        return Err(ApiError::invalid(
                            format!("stop[{i}]"),
                            format!("stop[{i}] must be a string"),
                        ));
                    }
                }
            }
            list
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "stop must be a string or an array of strings",
            ));
        }
    };
    Ok(list.into_iter().filter(|s| !s.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(v: Value) -> SamplingFields {
        serde_json::from_value(v).expect("valid fields")
    }

    fn param_of(v: Value) -> Option<String> {
        fields(v)
            .to_params(None)
            .expect_err("refused")
            .object()
            .param
    }

    #[test]
    fn defaults_are_openai_defaults() {
        let p = fields(json!({})).to_params(None).expect("valid");
        assert_eq!(
            (p.temperature, p.top_p, p.max_tokens, p.top_k),
            (1.0, 1.0, None, None)
        );
        assert!(p.stop.is_empty());
        assert_eq!(
            fields(json!({"max_tokens": null}))
                .to_params(Some(16))
                .expect("ok")
                .max_tokens,
            Some(16)
        );
    }

    #[test]
    fn ranges_name_their_field() {
        assert_eq!(
            param_of(json!({"temperature": 2.5})).as_deref(),
            Some("temperature")
        );
        assert_eq!(param_of(json!({"top_p": 0})).as_deref(), Some("top_p"));
        assert_eq!(
            param_of(json!({"presence_penalty": -3})).as_deref(),
            Some("presence_penalty")
        );
        assert_eq!(
            param_of(json!({"max_tokens": 0})).as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            param_of(json!({"stop": ["a", "b", "c", "d", "e"]})).as_deref(),
            Some("stop")
        );
        assert_eq!(
            param_of(json!({"stop": ["a", 1]})).as_deref(),
            Some("stop[1]")
        );
        assert_eq!(param_of(json!({"top_k": -5})).as_deref(), Some("top_k"));
    }

    #[test]
    fn n_is_bounded_and_only_where_there_are_choices() {
        let n = |v: Value, many| fields(v).choices(many).map_err(|e| e.object().param);
        assert_eq!(n(json!({}), true), Ok(1));
        assert_eq!(n(json!({"n": null}), false), Ok(1));
        assert_eq!(n(json!({"n": 4}), true), Ok(4));
        assert_eq!(
            n(json!({"n": airlock_engine::MAX_N}), true),
            Ok(airlock_engine::MAX_N)
        );
        for bad in [json!({"n": 0}), json!({"n": airlock_engine::MAX_N + 1})] {
            assert_eq!(n(bad, true), Err(Some("n".to_owned())));
        }
        assert_eq!(n(json!({"n": 2}), false), Err(Some("n".to_owned())));
        assert_eq!(n(json!({"n": 1}), false), Ok(1));
    }

    #[test]
    fn stop_sequences_are_bounded_in_bytes() {
        let long = "x".repeat(MAX_STOP_BYTES + 1);
        assert_eq!(param_of(json!({"stop": long})).as_deref(), Some("stop"));
        assert_eq!(
            param_of(json!({"stop": ["ok", long]})).as_deref(),
            Some("stop")
        );
        let fits = "y".repeat(MAX_STOP_BYTES);
        let p = fields(json!({"stop": [fits.clone(), fits.clone(), fits.clone(), fits]}))
            .to_params(None)
            .expect("four stops at the limit are accepted");
        assert_eq!(p.stop.len(), MAX_STOP);
    }

    #[test]
    fn accepted_values() {
        let p = fields(json!({
            "max_tokens": 5, "max_completion_tokens": 7, "temperature": 0, "stop": "x",
            "seed": -1, "top_k": 40, "n": 1
        }))
        .to_params(None)
        .expect("valid");
        assert_eq!(p.max_tokens, Some(7));
        assert_eq!(p.stop, vec!["x".to_owned()]);
        assert_eq!(p.seed, Some(u64::MAX));
        assert_eq!(p.top_k, Some(40));
    }
}
