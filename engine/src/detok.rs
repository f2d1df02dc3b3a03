//! Incremental detokenization and stop strings.
//!
//! Decoding one token at a time is wrong for byte-fallback and SentencePiece tokenizers: a
//! character may span tokens and leading spaces depend on the neighbour. So, like TGI and
//! vLLM, each step decodes a short window `ids[prefix..]` and emits only what it adds to the
//! decoding of `ids[prefix..read]`, holding back while the text ends in U+FFFD (an
//! incomplete UTF-8 sequence).

use crate::EngineError;

/// Decodes ids to text (the tokenizer, or a fake in tests).
pub trait Decode {
    fn decode(&self, ids: &[u32]) -> Result<String, EngineError>;
}

impl Decode for crate::tokenizer::TextTokenizer {
    fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        crate::tokenizer::TextTokenizer::decode(self, ids)
    }
}

/// Per-sequence incremental decoder.
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl IncrementalDecoder {
    /// Starts after `prompt`, keeping a few of its tokens as context for spacing.
    pub fn new(prompt: &[u32]) -> Self {
        let keep = prompt.len().min(5);
        let ids = prompt[prompt.len() - keep..].to_vec();
        IncrementalDecoder {
            prefix: 0,
            read: ids.len(),
            ids,
        }
    }

    /// Adds a token; returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32, tok: &impl Decode) -> Result<String, EngineError> {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read])?;
        let after = tok.decode(&self.ids[self.prefix..])?;
        if after.len() > before.len()
            && !after.ends_with('\u{FFFD}')
            && let Some(delta) = after.get(before.len()..)
        {
            let delta = delta.to_owned();
            self.prefix = self.read;
            self.read = self.ids.len();
            return Ok(delta);
        }
        Ok(String::new())
    }

    /// Whatever is still held back (an incomplete character at the end of generation).
    pub fn flush(&mut self, tok: &impl Decode) -> Result<String, EngineError> {
        let before = tok.decode(&self.ids[self.prefix..self.read])?;
        let after = tok.decode(&self.ids[self.prefix..])?;
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(after
            .get(before.len()..)
            .map(str::to_owned)
            .unwrap_or_default())
    }
}

/// Holds back text that may be the start of a stop string; finds stop strings across
/// token boundaries.
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

/// What [`StopMatcher::push`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Emit this text and go on.
    Continue(String),
    /// A stop string matched: emit this text (everything before it) and finish.
    Stop(String),
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopOutcome {
        self.pending.push_str(text);
        if self.stops.is_empty() {
            return StopOutcome::Continue(std::mem::take(&mut self.pending));
        }
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..pos].to_owned();
            self.pending.clear();
            return StopOutcome::Stop(out);
        }
        // Longest suffix of `pending` that is a proper prefix of some stop string.
        let mut hold = 0;
        for stop in &self.stops {
            for (i, _) in stop.char_indices().skip(1) {
                if i > hold && self.pending.ends_with(&stop[..i]) {
                    hold = i;
                }
            }
        }
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_owned();
        self.pending.drain(..cut);
        StopOutcome::Continue(out)
    }

    /// Releases held-back text when generation ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level fake: id = one byte, decoded lossily like a byte-fallback tokenizer.
    struct Bytes;
    impl Decode for Bytes {
        fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
            let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
    }

    #[test]
    fn multibyte_characters_split_across_tokens_are_held_back() {
        let mut d = IncrementalDecoder::new(&[b'a' as u32]);
        let mut out = String::new();
        for b in "héllo €!".bytes() {
            let piece = d.push(b as u32, &Bytes).unwrap_or_default();
            assert!(!piece.contains('\u{FFFD}'));
            out.push_str(&piece);
        }
        assert_eq!(out, "héllo €!");
    }

    #[test]
    fn flush_releases_an_incomplete_tail() {
        let mut d = IncrementalDecoder::new(&[]);
        assert_eq!(d.push(0xE2, &Bytes).unwrap_or_default(), "");
        assert_eq!(d.flush(&Bytes).unwrap_or_default(), "\u{FFFD}");
    }

    #[test]
    fn stop_string_across_boundaries_is_never_emitted() {
        let mut m = StopMatcher::new(&["END".to_owned()]);
        assert_eq!(m.push("abc E"), StopOutcome::Continue("abc ".into()));
        assert_eq!(m.push("N"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("Dxyz"), StopOutcome::Stop(String::new()));
    }

    #[test]
    fn false_start_is_released() {
        let mut m = StopMatcher::new(&["END".to_owned()]);
        assert_eq!(m.push("E"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("x"), StopOutcome::Continue("Ex".into()));
        assert_eq!(m.push("EN"), StopOutcome::Continue(String::new()));
        assert_eq!(m.flush(), "EN");
    }

    #[test]
    fn earliest_stop_wins() {
        let mut m = StopMatcher::new(&["yz".to_owned(), "x".to_owned()]);
        assert_eq!(m.push("abxyz"), StopOutcome::Stop("ab".into()));
    }
}
