//! Log-probabilities: the request fields (`logprobs`, `top_logprobs`), OpenAI's two response
//! shapes (chat's `logprobs.content[]`, legacy completions' parallel arrays), and the
//! [`LogprobGate`] that keeps them behind the tenant's output filter.
//!
//! The values are the engine's (the log-softmax of the model's raw logits, see
//! `SamplingParams::logprobs`); this module only checks what is asked and shapes what is
//! returned.

use std::collections::VecDeque;

use airlock_engine::{MAX_TOP_LOGPROBS, TokenLogprob, TopLogprob};
use serde::Serialize;
use serde::ser::SerializeMap;

use crate::api::error::ApiError;

/// Most alternatives per token on `/v1/completions` (`logprobs`): OpenAI's cap for the
/// legacy endpoint.
pub const MAX_COMPLETION_LOGPROBS: u32 = 5;

/// What JSON carries for an impossible token: JSON has no `-Infinity`, and OpenAI's own
/// floor (and vLLM's) is this value.
pub const LOGPROB_FLOOR: f32 = -9999.0;

/// Chat: `logprobs: true` asks for the chosen tokens' log-probabilities, `top_logprobs`
/// (0–20, only with `logprobs: true`, as OpenAI requires) for that many alternatives too.
/// `None`: none asked for.
pub fn chat_request(logprobs: Option<bool>, top: Option<u32>) -> Result<Option<usize>, ApiError> {
    let max = MAX_TOP_LOGPROBS as u32;
    match (logprobs.unwrap_or(false), top) {
        (_, Some(n)) if n > max => Err(ApiError::invalid(
            "top_logprobs",
            format!("top_logprobs must be in [0, {max}], got {n}"),
        )),
        (false, Some(n)) if n > 0 => Err(ApiError::invalid(
            "top_logprobs",
            "top_logprobs requires logprobs: true",
        )),
        (false, _) => Ok(None),
        (true, n) => Ok(Some(n.unwrap_or(0) as usize)),
    }
}

/// Legacy completions: `logprobs: n` (0–5) asks for the chosen tokens' log-probabilities
/// and the `n` most likely alternatives (`0`: the chosen token's only, as vLLM reads it).
pub fn completion_request(logprobs: Option<u32>) -> Result<Option<usize>, ApiError> {
    match logprobs {
        Some(n) if n > MAX_COMPLETION_LOGPROBS => Err(ApiError::invalid(
            "logprobs",
            format!("logprobs must be in [0, {MAX_COMPLETION_LOGPROBS}], got {n}"),
        )),
        n => Ok(n.map(|n| n as usize)),
    }
}

fn finite(logprob: f32) -> f32 {
    if logprob.is_finite() {
        logprob
    } else {
        LOGPROB_FLOOR
    }
}

/// Chat's `choices[].logprobs`.
#[derive(Debug, Default, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
    /// Always `null`: the model's refusals are not a separate channel here.
    pub refusal: Option<()>,
}

/// One entry of chat's `logprobs.content`.
#[derive(Debug, Serialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    /// The token's UTF-8 bytes (for tokens that hold part of a character).
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

/// One alternative of a chat logprobs entry.
#[derive(Debug, Serialize)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

impl From<&TopLogprob> for ChatTopLogprob {
    fn from(t: &TopLogprob) -> Self {
        ChatTopLogprob {
            token: t.token.clone(),
            logprob: finite(t.logprob),
            bytes: t.token.as_bytes().to_vec(),
        }
    }
}

impl ChatLogprobs {
    pub fn new(entries: &[TokenLogprob]) -> Self {
        ChatLogprobs {
            content: entries
                .iter()
                .map(|e| ChatTokenLogprob {
                    token: e.chosen.token.clone(),
                    logprob: finite(e.chosen.logprob),
                    bytes: e.chosen.token.as_bytes().to_vec(),
                    top_logprobs: e.top.iter().map(ChatTopLogprob::from).collect(),
                })
                .collect(),
            refusal: None,
        }
    }
}

/// Legacy completions' `choices[].logprobs`: parallel arrays, one element per token.
#[derive(Debug, Default, Serialize)]
pub struct TextLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    /// Per token, `{token: logprob}` for the alternatives, most likely first, plus the
    /// chosen token when it is not among them (OpenAI's "up to logprobs + 1").
    pub top_logprobs: Vec<TopMap>,
    /// Each token's offset in the completion's text, in characters, counting the tokens'
    /// own text (a stream's chunks continue where the previous one ended).
    pub text_offset: Vec<usize>,
}

/// A JSON object that keeps its keys in order (most likely first).
#[derive(Debug, Default)]
pub struct TopMap(Vec<(String, f32)>);

impl Serialize for TopMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl TextLogprobs {
    /// The arrays for `entries`, whose text starts `offset` characters into the completion;
    /// the offset after them goes back into `offset`.
    pub fn new(entries: &[TokenLogprob], offset: &mut usize) -> Self {
        let mut out = TextLogprobs::default();
        for e in entries {
            out.tokens.push(e.chosen.token.clone());
            out.token_logprobs.push(finite(e.chosen.logprob));
            let mut top: Vec<(String, f32)> = Vec::with_capacity(e.top.len() + 1);
            for t in e.top.iter().chain(std::iter::once(&e.chosen)) {
                // A token string already present (the chosen token among the top, or two
                // ids that decode alike) keeps its first, most likely, value.
                if !top.iter().any(|(k, _)| *k == t.token) {
                    top.push((t.token.clone(), finite(t.logprob)));
                }
            }
            out.top_logprobs.push(TopMap(top));
            out.text_offset.push(*offset);
            *offset += e.chosen.token.chars().count();
        }
        out
    }
}

/// Keeps log-probabilities behind the output filter: an entry leaves only once the text of
/// its token has left, unchanged, through the filter. Entries come in with the (unfiltered)
/// text that completes them ([`Self::push`]); the filter's output comes back in
/// ([`Self::release`]), which returns the entries that text covers. From the first byte
/// the filter changed (a redaction), nothing more is released: a redacted token's text (or
/// anything after it) never reaches the client through `logprobs`. Without a filter, the
/// text released is the text pushed and entries pass straight through.
///
/// The whole (non-streamed) response is pushed, then released once, filtered whole; a
/// stream pushes each event's text and releases what its filter window lets through.
#[derive(Debug)]
pub struct LogprobGate {
    /// Log-probabilities were asked for (otherwise the gate does nothing at all).
    enabled: bool,
    /// Entries waiting, with the byte offset in the unfiltered text where their text ends.
    waiting: VecDeque<(TokenLogprob, usize)>,
    /// Unfiltered text pushed and not yet released.
    pending: String,
    /// Bytes of unfiltered text pushed.
    pushed: usize,
    /// Bytes released unchanged.
    released: usize,
    /// The filter changed the text: nothing more is released.
    diverged: bool,
}

impl LogprobGate {
    /// A gate for a response that asked for log-probabilities (`enabled`) or not.
    pub fn new(enabled: bool) -> Self {
        LogprobGate {
            enabled,
            waiting: VecDeque::new(),
            pending: String::new(),
            pushed: 0,
            released: 0,
            diverged: false,
        }
    }

    /// Unfiltered text, with the entries it completes.
    pub fn push(&mut self, text: &str, entries: Vec<TokenLogprob>) {
        if !self.enabled || self.diverged {
            return;
        }
        self.pending.push_str(text);
        self.pushed += text.len();
        let end = self.pushed;
        self.waiting.extend(entries.into_iter().map(|e| (e, end)));
    }

    /// The filter let `text` through: the entries whose text it covers unchanged.
    pub fn release(&mut self, text: &str) -> Vec<TokenLogprob> {
        if !self.enabled || self.diverged {
            return Vec::new();
        }
        let same = common_prefix(text.as_bytes(), self.pending.as_bytes());
        if same == text.len() {
            self.pending.drain(..same);
        } else {
            self.diverged = true;
            self.pending = String::new();
        }
        self.released += same;
        let mut out = Vec::new();
        while self
            .waiting
            .front()
            .is_some_and(|(_, end)| *end <= self.released)
        {
            if let Some((entry, _)) = self.waiting.pop_front() {
                out.push(entry);
            }
        }
        if self.diverged {
            self.waiting.clear();
        }
        out
    }
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn top(id: u32, token: &str, logprob: f32) -> TopLogprob {
        TopLogprob {
            id,
            token: token.into(),
            logprob,
        }
    }

    fn entry(token: &str, logprob: f32) -> TokenLogprob {
        TokenLogprob {
            chosen: top(1, token, logprob),
            top: vec![top(2, "x", -0.1), top(1, token, logprob)],
        }
    }

    #[test]
    fn chat_request_ranges_name_their_field() {
        let param = |l, t| chat_request(l, t).expect_err("refused").object().param;
        assert_eq!(param(Some(true), Some(21)).as_deref(), Some("top_logprobs"));
        assert_eq!(param(None, Some(3)).as_deref(), Some("top_logprobs"));
        assert_eq!(param(Some(false), Some(1)).as_deref(), Some("top_logprobs"));
        assert_eq!(chat_request(None, None).ok(), Some(None));
        assert_eq!(chat_request(Some(false), Some(0)).ok(), Some(None));
        assert_eq!(chat_request(Some(true), None).ok(), Some(Some(0)));
        assert_eq!(chat_request(Some(true), Some(20)).ok(), Some(Some(20)));
        let param = |n| completion_request(n).expect_err("refused").object().param;
        assert_eq!(param(Some(6)).as_deref(), Some("logprobs"));
        assert_eq!(completion_request(Some(0)).ok(), Some(Some(0)));
        assert_eq!(completion_request(Some(5)).ok(), Some(Some(5)));
        assert_eq!(completion_request(None).ok(), Some(None));
    }

    #[test]
    fn chat_shape_is_openais() {
        let mut e = entry("h\u{e9}", -0.5);
        e.top[0].logprob = f32::NEG_INFINITY;
        let v = serde_json::to_value(ChatLogprobs::new(&[e])).expect("serializes");
        assert_eq!(
            v,
            json!({"content": [{
                "token": "h\u{e9}", "logprob": -0.5, "bytes": [104, 195, 169],
                "top_logprobs": [
                    {"token": "x", "logprob": -9999.0, "bytes": [120]},
                    {"token": "h\u{e9}", "logprob": -0.5, "bytes": [104, 195, 169]}
                ]
            }], "refusal": null})
        );
    }

    #[test]
    fn completions_shape_is_openais() {
        let mut offset = 3;
        let mut only_chosen = entry("b", -2.0);
        only_chosen.top.clear();
        let t = TextLogprobs::new(&[entry("a\u{e9}", -0.25), only_chosen], &mut offset);
        assert_eq!(offset, 6);
        let text = serde_json::to_string(&t).expect("serializes");
        assert_eq!(
            text,
            r#"{"tokens":["aé","b"],"token_logprobs":[-0.25,-2.0],"top_logprobs":[{"x":-0.1,"aé":-0.25},{"b":-2.0}],"text_offset":[3,5]}"#
        );
    }

    fn tokens(entries: &[TokenLogprob]) -> Vec<&str> {
        entries.iter().map(|e| e.chosen.token.as_str()).collect()
    }

    #[test]
    fn gate_passes_unfiltered_text_through() {
        let mut gate = LogprobGate::new(true);
        gate.push("He", vec![entry("He", -1.0)]);
        assert_eq!(tokens(&gate.release("He")), vec!["He"]);
        // Text held back (by a filter window) holds its entries back with it.
        gate.push("llo", vec![entry("llo", -1.0)]);
        gate.push(" you", vec![entry(" you", -1.0)]);
        assert!(gate.release("ll").is_empty());
        assert_eq!(tokens(&gate.release("o y")), vec!["llo"]);
        assert_eq!(tokens(&gate.release("ou")), vec![" you"]);
    }

    #[test]
    fn gate_stops_at_the_first_redaction() {
        let mut gate = LogprobGate::new(true);
        gate.push("My", vec![entry("My", -1.0)]);
        gate.push(" pin", vec![entry(" pin", -1.0)]);
        gate.push(" 1234", vec![entry(" 12", -1.0), entry("34", -1.0)]);
        gate.push(" ok", vec![entry(" ok", -1.0)]);
        // Filtered whole: " 1234" became " [pin]"; " ok" follows it, unchanged, but only
        // the text before the first change is known to align.
        let out = gate.release("My pin [pin] ok");
        assert_eq!(tokens(&out), vec!["My", " pin"]);
        gate.push(" more", vec![entry(" more", -1.0)]);
        assert!(gate.release(" more").is_empty());
    }

    #[test]
    fn gate_in_a_stream_window() {
        let mut gate = LogprobGate::new(true);
        gate.push("a 12", vec![entry("a", -1.0), entry(" 12", -1.0)]);
        assert!(gate.release("a").is_empty(), "` 12` still pending");
        gate.push("34", vec![entry("34", -1.0)]);
        assert!(gate.release(" [pin]").is_empty());
        // Nothing more once the text diverged, even if the rest would align by chance.
        assert!(gate.release("").is_empty());
    }
}
