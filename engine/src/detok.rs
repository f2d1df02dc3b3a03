//! Incremental detokenization and stop strings.
//!
//! Decoding one token at a time is wrong for byte-fallback and SentencePiece tokenizers: a
//! character may span tokens and leading spaces depend on the neighbour. So, like TGI and
//! vLLM, each step decodes a short window `ids[prefix..]` and emits only what it adds to the
//! decoding of `ids[prefix..read]`, holding back while the text ends in U+FFFD (an
//! incomplete UTF-8 sequence).

use aho_corasick::automaton::{Automaton as _, StateID};
use aho_corasick::{Anchored, MatchKind};

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

/// Finds stop strings in generated text, across token boundaries, holding back text that
/// may be the start of one.
///
/// One Aho-Corasick automaton over all stop strings is advanced byte by byte and keeps its
/// state between tokens, so each token costs time proportional to its own text, whatever
/// the number and length of the stop strings (a matcher that rescans every stop string on
/// every token turns a few long stop strings into seconds of work on the shared engine
/// thread). The held-back tail is exactly the longest suffix of the text that is a proper
/// prefix of some stop string: never longer than the longest stop string.
pub struct StopMatcher {
    automaton: Option<Automaton>,
    /// Text held back: the automaton's current prefix, not yet emitted.
    pending: String,
}

/// The automaton, its current state, and how many bytes of text each state stands for.
struct Automaton {
    nfa: aho_corasick::nfa::contiguous::NFA,
    state: StateID,
    /// Trie depth per state: the length of the stop-string prefix the state has matched.
    depth: std::collections::HashMap<StateID, usize>,
}

/// What [`StopMatcher::push`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Emit this text and go on.
    Continue(String),
    /// A stop string matched: emit this text (everything before it) and finish.
    Stop(String),
}

impl Automaton {
    fn new(stops: &[&str]) -> Result<Automaton, EngineError> {
        let bad = |e: String| EngineError::InvalidRequest {
            param: "stop",
            reason: format!("cannot build the stop-string matcher: {e}"),
        };
        let nfa = aho_corasick::nfa::contiguous::Builder::new()
            .match_kind(MatchKind::Standard)
            .build(stops)
            .map_err(|e| bad(e.to_string()))?;
        let start = nfa
            .start_state(Anchored::No)
            .map_err(|e| bad(e.to_string()))?;
        // Reading a stop string's prefix from the start state walks the trie, so the state
        // reached after `i` bytes stands for exactly those `i` bytes.
        let mut depth = std::collections::HashMap::new();
        depth.insert(start, 0);
        for stop in stops {
            let mut sid = start;
            for (i, &b) in stop.as_bytes().iter().enumerate() {
                sid = nfa.next_state(Anchored::No, sid, b);
                depth.insert(sid, i + 1);
            }
        }
        Ok(Automaton {
            nfa,
            state: start,
            depth,
        })
    }

    /// Feeds `bytes`; returns the end (in `bytes`) and length of the first stop string
    /// completed, the longest one when several end at the same byte.
    fn feed(&mut self, bytes: &[u8]) -> Option<(usize, usize)> {
        for (i, &b) in bytes.iter().enumerate() {
            self.state = self.nfa.next_state(Anchored::No, self.state, b);
            if self.nfa.is_match(self.state) {
                let len = (0..self.nfa.match_len(self.state))
                    .map(|k| self.nfa.pattern_len(self.nfa.match_pattern(self.state, k)))
                    .max()
                    .unwrap_or(0);
                return Some((i + 1, len));
            }
        }
        None
    }

    /// Bytes at the end of the text that may begin a stop string.
    fn held(&self) -> usize {
        self.depth.get(&self.state).copied().unwrap_or(0)
    }
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings ignored). Building it costs time linear in the
    /// stops' total length, which [`crate::sampling::validate`] bounds.
    pub fn new(stops: &[String]) -> Result<Self, EngineError> {
        let stops: Vec<&str> = stops
            .iter()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .collect();
        Ok(StopMatcher {
            automaton: if stops.is_empty() {
                None
            } else {
                Some(Automaton::new(&stops)?)
            },
            pending: String::new(),
        })
    }

    pub fn push(&mut self, text: &str) -> StopOutcome {
        let Some(automaton) = &mut self.automaton else {
            return StopOutcome::Continue(text.to_owned());
        };
        let before = self.pending.len();
        self.pending.push_str(text);
        if let Some((end, len)) = automaton.feed(text.as_bytes()) {
            // The held text is the automaton's prefix, so a match never starts before it.
            let start = (before + end).saturating_sub(len);
            let out = self.pending.get(..start).unwrap_or_default().to_owned();
            self.pending.clear();
            return StopOutcome::Stop(out);
        }
        // A stop string's prefix starts on a character boundary of the stop string, and so
        // on one of the text; `floor` only guards the invariant.
        let mut cut = self.pending.len() - automaton.held().min(self.pending.len());
        while !self.pending.is_char_boundary(cut) {
            cut -= 1;
        }
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
        let mut m = StopMatcher::new(&["END".to_owned()]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.push("abc E"), StopOutcome::Continue("abc ".into()));
        assert_eq!(m.push("N"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("Dxyz"), StopOutcome::Stop(String::new()));
    }

    #[test]
    fn false_start_is_released() {
        let mut m = StopMatcher::new(&["END".to_owned()]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.push("E"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("x"), StopOutcome::Continue("Ex".into()));
        assert_eq!(m.push("EN"), StopOutcome::Continue(String::new()));
        assert_eq!(m.flush(), "EN");
    }

    #[test]
    fn earliest_stop_wins() {
        let mut m =
            StopMatcher::new(&["yz".to_owned(), "x".to_owned()]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.push("abxyz"), StopOutcome::Stop("ab".into()));
    }

    fn matcher(stops: &[&str]) -> StopMatcher {
        let stops: Vec<String> = stops.iter().map(|s| (*s).to_owned()).collect();
        StopMatcher::new(&stops).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn holds_exactly_the_longest_prefix_of_a_stop() {
        let mut m = matcher(&["abcab"]);
        assert_eq!(m.push("xabca"), StopOutcome::Continue("x".into()));
        assert_eq!(m.push("b tail"), StopOutcome::Stop(String::new()));
        // A failed partial match releases what can no longer start the stop string.
        let mut m = matcher(&["abcab"]);
        assert_eq!(m.push("abcaa"), StopOutcome::Continue("abca".into()));
        assert_eq!(m.flush(), "a");
    }

    #[test]
    fn overlapping_and_multibyte_stops() {
        assert_eq!(
            matcher(&["abcd", "bc"]).push("abc"),
            StopOutcome::Stop("a".into())
        );
        let mut m = matcher(&["é!", "\n\nUser:"]);
        assert_eq!(m.push("caf"), StopOutcome::Continue("caf".into()));
        assert_eq!(m.push("é"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("!"), StopOutcome::Stop(String::new()));
        let mut m = matcher(&["\n\nUser:"]);
        assert_eq!(m.push("ok\n"), StopOutcome::Continue("ok".into()));
        assert_eq!(m.push("\nUs"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("er: hi"), StopOutcome::Stop("".into()));
    }

    /// The first stop occurrence to complete in `text`, as (start, end); the longest of
    /// those ending at the same byte.
    fn reference(text: &str, stops: &[String]) -> Option<(usize, usize)> {
        (1..=text.len()).find_map(|end| {
            stops
                .iter()
                .filter(|s| !s.is_empty() && text.as_bytes()[..end].ends_with(s.as_bytes()))
                .map(|s| (end - s.len(), end))
                .min()
        })
    }

    #[test]
    fn agrees_with_a_naive_matcher_on_any_chunking() {
        // A small alphabet makes partial matches and overlaps frequent.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let alphabet = ['a', 'b', 'c', 'é'];
        let word = |next: &mut dyn FnMut(u64) -> u64, max: u64| -> String {
            (0..1 + next(max))
                .map(|_| alphabet[next(4) as usize])
                .collect()
        };
        for _ in 0..2000 {
            let stops: Vec<String> = (0..1 + next(4)).map(|_| word(&mut next, 5)).collect();
            let text = word(&mut next, 40);
            let mut m = StopMatcher::new(&stops).unwrap_or_else(|e| panic!("{e}"));
            let longest = stops.iter().map(String::len).max().unwrap_or(0);
            let (mut out, mut stopped, mut rest) = (String::new(), false, text.as_str());
            while !rest.is_empty() && !stopped {
                let mut cut = (1 + next(6) as usize).min(rest.len());
                while !rest.is_char_boundary(cut) {
                    cut += 1;
                }
                let (piece, tail) = rest.split_at(cut);
                rest = tail;
                match m.push(piece) {
                    StopOutcome::Continue(t) => out.push_str(&t),
                    StopOutcome::Stop(t) => {
                        out.push_str(&t);
                        stopped = true;
                    }
                }
                assert!(m.pending.len() < longest, "held {} bytes", m.pending.len());
            }
            match reference(&text, &stops) {
                Some((start, _)) => {
                    assert!(stopped, "{stops:?} in {text:?}");
                    assert_eq!(out, text[..start], "{stops:?} in {text:?}");
                }
                None => {
                    assert!(!stopped, "{stops:?} in {text:?}");
                    out.push_str(&m.flush());
                    assert_eq!(out, text, "{stops:?}");
                }
            }
        }
    }

    #[test]
    fn long_stop_strings_cost_per_token_not_per_stop_byte() {
        // Four stop strings at the limit that the text keeps almost matching: the held tail
        // stays under the longest stop and the final match is still found.
        let stop = "a".repeat(crate::MAX_STOP_BYTES - 1) + "b";
        let n = crate::MAX_STOP_BYTES;
        let stops = vec![stop, "b".repeat(n), "a".repeat(n - 1) + "c", "zz".into()];
        let mut m = StopMatcher::new(&stops).unwrap_or_else(|e| panic!("{e}"));
        let mut emitted = 0;
        let started = std::time::Instant::now();
        for _ in 0..20_000 {
            match m.push("a") {
                StopOutcome::Continue(t) => emitted += t.len(),
                StopOutcome::Stop(_) => panic!("no stop string was completed"),
            }
            assert!(m.pending.len() < crate::MAX_STOP_BYTES);
        }
        // A figure, not an assertion: the machine running the tests may be loaded.
        eprintln!(
            "stop matching, 4 stops of {n} bytes: {:?} per token",
            started.elapsed() / 20_000
        );
        assert_eq!(emitted, 20_000 - (crate::MAX_STOP_BYTES - 1));
        assert_eq!(m.push("b"), StopOutcome::Stop(String::new()));
    }
}
