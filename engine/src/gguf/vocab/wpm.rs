//! WordPiece as llama.cpp's WPM tokenizer runs it (`llm_tokenizer_wpm_session` in
//! `src/llama-vocab.cpp`), for `tokenizer.ggml.model = "bert"`.
//!
//! The text is normalized and cut into words as BERT does: characters that are NUL,
//! U+FFFD or control characters are dropped, whitespace separates words, accents are
//! stripped (NFD, then marks removed) and letters lowercased when the file's
//! `tokenizer.ggml.normalizer.*` flags say so (llama.cpp: strip accents defaults to the
//! lowercase flag, which defaults to off), and every punctuation character, ASCII symbol
//! and CJK ideograph is a word of its own. The `tokenizers` crate's `BertNormalizer` and
//! `BertPreTokenizer` implement exactly those classes (the Unicode tables are theirs).
//!
//! Each word then gets `▁` in front and is spelled greedily from the left by the longest
//! vocabulary entry at each position (entries up to the longest token's length); if some
//! position matches nothing, the word's pieces are dropped and it becomes the unknown
//! token. (llama.cpp has no `max_input_chars_per_word`: a word of over 100 characters is
//! still spelled, where Hugging Face's WordPiece gives `[UNK]`.)

use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::tokenizer::{
    NormalizedString, Normalizer as _, OffsetReferential, OffsetType, PreTokenizedString,
    PreTokenizer as _,
};

use super::GgufVocab;

/// BERT's normalizer settings, as the GGUF file states them.
pub(super) struct Normalizer {
    inner: BertNormalizer,
}

impl Normalizer {
    pub(super) fn new(lowercase: bool, strip_accents: bool) -> Normalizer {
        Normalizer {
            inner: BertNormalizer::new(true, true, Some(strip_accents), lowercase),
        }
    }

    /// The words of `text`, normalized.
    fn words(&self, text: &str) -> Vec<String> {
        let mut normalized = NormalizedString::from(text);
        if self.inner.normalize(&mut normalized).is_err() {
            return Vec::new();
        }
        let mut pre = PreTokenizedString::from(normalized);
        if BertPreTokenizer.pre_tokenize(&mut pre).is_err() {
            return Vec::new();
        }
        pre.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(word, _, _)| word.to_owned())
            .filter(|w| !w.is_empty())
            .collect()
    }
}

impl GgufVocab {
    /// Appends the WordPiece ids of `text` (no [CLS]/[SEP]: the caller adds those).
    pub(super) fn wpm(&self, normalizer: &Normalizer, text: &str, out: &mut Vec<u32>) {
        for word in normalizer.words(text) {
            let word = format!("\u{2581}{word}");
            let start = out.len();
            let mut i = 0;
            while i < word.len() {
                let longest = (i + self.max_token_len).min(word.len());
                let found = (i + 1..=longest)
                    .rev()
                    .filter(|&j| word.is_char_boundary(j))
                    .find_map(|j| self.token_id(&word[i..j]).map(|id| (id, j)));
                match found {
                    Some((id, j)) => {
                        out.push(id);
                        i = j;
                    }
                    None => {
                        out.truncate(start);
                        break;
                    }
                }
            }
            if out.len() == start {
                out.extend(self.unk);
            }
        }
    }
}
