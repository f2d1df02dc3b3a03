//! llama.cpp's tokenizers, rebuilt from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! A GGUF model is served by llama.cpp with llama.cpp's own tokenizer, not the Hugging
//! Face one it was converted from; the two disagree at the edges (special tokens inside
//! text, the space put in front of text after a special token, unknown bytes). To give
//! the same ids as llama.cpp's `llama_tokenize` on the same file, this module implements
//! its algorithms itself rather than mapping them onto a `tokenizers` model:
//!
//! - `tokenizer.ggml.model = "llama"`: SentencePiece as llama.cpp runs it: the text
//!   (with a space in front where `add_space_prefix` says) has spaces replaced by `▁`,
//!   starts as one symbol per UTF-8 character, and adjacent symbols whose concatenation is
//!   a vocabulary entry are merged highest score first (ties: leftmost first); a character
//!   left that is no entry becomes byte tokens `<0xNN>`. The `tokenizers` crate's BPE
//!   runs listed merges by rank instead, which differs where several merges produce the
//!   same piece or scores tie, and it cannot put the space after special tokens.
//! - `tokenizer.ggml.model = "gpt2"`: byte-level BPE; the text is cut by the regexes that
//!   llama.cpp associates with `tokenizer.ggml.pre` (several in sequence for some), each
//!   piece is mapped byte-to-character as GPT-2 does and merged by the rank of
//!   `tokenizer.ggml.merges` (ties: leftmost first).
//!
//! - `tokenizer.ggml.model = "bert"`: WordPiece as llama.cpp's WPM tokenizer runs it
//!   (see [`wpm`]): BERT's normalizer and pre-tokenizer, then each word, with `▁` in
//!   front, is spelled by the longest vocabulary entries from the left (the converter
//!   stores word-start pieces with a `▁` and continuations without `##`); a word they
//!   cannot spell becomes `[UNK]`. `[CLS]` … `[SEP]` around the text.
//!
//! In all, control, user-defined and unknown tokens are first cut out of the text as
//! whole tokens (longest first), control and unknown ones only when special tokens are
//! parsed (the chat path and llama-server's prompts do), as llama.cpp's
//! `tokenizer_st_partition` does.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use tokenizers::SplitDelimiterBehavior;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::tokenizer::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

use crate::EngineError;
use crate::gguf::{GgufFile, Value};

/// `llama_token_type` values in `tokenizer.ggml.token_type`.
const TYPE_UNKNOWN: u64 = 2;
const TYPE_CONTROL: u64 = 3;
const TYPE_USER_DEFINED: u64 = 4;
const TYPE_UNUSED: u64 = 5;
const TYPE_BYTE: u64 = 6;
const TYPE_NORMAL: u64 = 1;

/// How llama.cpp treats a token (its `llama_token_attr`, reduced to what tokenizing and
/// decoding look at).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Attr {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Byte,
    /// Unused or undefined: never produced by tokenizing, decoded as nothing.
    Other,
}

struct TokenData {
    text: String,
    score: f32,
    attr: Attr,
    /// Whitespace after this token is dropped when it is cut out of text (llama.cpp sets
    /// this for Phi-3's special tokens).
    rstrip: bool,
}

/// The per-`tokenizer.ggml.pre` settings of a byte-level BPE vocabulary.
struct BpeSettings {
    /// Regexes applied in sequence, each cutting every piece into matches and the text
    /// between them.
    splits: Vec<Split>,
    /// A piece that is itself a vocabulary entry becomes that token without merging.
    ignore_merges: bool,
}

enum Kind {
    Spm {
        add_space_prefix: bool,
    },
    Bpe(BpeSettings),
    /// BERT's WordPiece as llama.cpp's WPM tokenizer runs it (see [`wpm`]).
    Wpm(wpm::Normalizer),
}

/// A vocabulary and tokenizer that behave as llama.cpp's on the same GGUF file.
pub(crate) struct GgufVocab {
    kind: Kind,
    tokens: Vec<TokenData>,
    ids: HashMap<String, u32>,
    /// BPE merge ranks, keyed by the two parts.
    ranks: HashMap<(String, String), u32>,
    /// Control, user-defined and unknown tokens, longest text first.
    specials: Vec<u32>,
    pub(crate) bos: Option<u32>,
    pub(crate) eos: Option<u32>,
    /// Tokens that end a generation (llama.cpp's `special_eog_ids`).
    pub(crate) eog: Vec<u32>,
    /// For a byte with neither a `<0xNN>` token nor a one-byte token (llama.cpp throws);
    /// for a WordPiece word no pieces spell.
    unk: Option<u32>,
    /// WordPiece: the separator appended after the text (`[SEP]`).
    sep: Option<u32>,
    /// The longest token text, in bytes (WordPiece's longest match starts there).
    max_token_len: usize,
    pub(crate) add_bos: bool,
    pub(crate) add_eos: bool,
    /// GPT-2's byte → character map, and its inverse.
    byte_chars: [char; 256],
    char_bytes: HashMap<char, u8>,
}

/// One pre-tokenizer family: the `tokenizer.ggml.pre` names llama.cpp maps to it, its
/// regexes, and its flags.
struct PreFamily {
    names: &'static [&'static str],
    regexes: &'static [&'static str],
    ignore_merges: bool,
    add_bos: bool,
}

const GPT2_RE: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_RE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_RE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_RE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_RE: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_RE: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The families llama.cpp (as vendored by llama-cpp-python 0.3.36, `src/llama-vocab.cpp`)
/// defines that the supported model families use, with their exact regexes.
const PRE_FAMILIES: &[PreFamily] = &[
    PreFamily {
        names: &["default"],
        regexes: &[
            r"[\p{P}\$\+<=>\^~\|]+",
            GPT2_RE,
            r"\p{N}+",
            "[0-9][0-9][0-9]",
        ],
        ignore_merges: false,
        add_bos: false,
    },
    PreFamily {
        names: &[
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
        ],
        regexes: &[LLAMA3_RE],
        ignore_merges: true,
        add_bos: true,
    },
    PreFamily {
        names: &["dbrx", "smaug-bpe"],
        regexes: &[LLAMA3_RE],
        ignore_merges: false,
        add_bos: false,
    },
    PreFamily {
        names: &["qwen2", "deepseek-r1-qwen", "megrez", "stablelm2"],
        regexes: &[QWEN2_RE],
        ignore_merges: false,
        add_bos: false,
    },
    PreFamily {
        names: &["qwen35"],
        regexes: &[QWEN35_RE],
        ignore_merges: false,
        add_bos: false,
    },
    PreFamily {
        names: &[
            "smollm",
            "starcoder",
            "refact",
            "command-r",
            "codeshell",
            "exaone",
            "minerva-7b",
        ],
        regexes: &[r"\p{N}", GPT2_RE],
        ignore_merges: false,
        add_bos: false,
    },
    PreFamily {
        names: &[
            "gpt-2",
            "phi-2",
            "mpt",
            "olmo",
            "jais",
            "exaone4",
            "roberta-bpe",
        ],
        regexes: &[GPT2_RE],
        ignore_merges: false,
        add_bos: false,
    },
    PreFamily {
        names: &["falcon"],
        regexes: &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2_RE, "[0-9][0-9][0-9]"],
        ignore_merges: false,
        add_bos: false,
    },
    PreFamily {
        names: &["deepseek-coder"],
        regexes: &[
            "[\r\n]",
            r"\s?\p{L}+",
            r"\s?\p{P}+",
            "[一-龥ࠀ-一가-퟿]+",
            r"\p{N}",
        ],
        ignore_merges: false,
        add_bos: false,
    },
    PreFamily {
        names: &["tekken"],
        regexes: &[TEKKEN_RE],
        ignore_merges: true,
        add_bos: true,
    },
    PreFamily {
        names: &["gpt-4o", "llama4"],
        regexes: &[GPT4O_RE],
        ignore_merges: false,
        add_bos: false,
    },
    PreFamily {
        names: &["chatglm-bpe", "glm4"],
        regexes: &[LLAMA3_RE],
        ignore_merges: false,
        add_bos: false,
    },
];

/// Token texts llama.cpp treats as end of generation (and as control tokens) in any
/// vocabulary, from `llama_vocab::impl::load`.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "[e~[",
];

/// The `tokenizer.ggml.pre` values this module supports, for error messages and docs.
pub(crate) fn supported_pre() -> Vec<&'static str> {
    PRE_FAMILIES
        .iter()
        .flat_map(|f| f.names.iter().copied())
        .collect()
}

/// GPT-2's reversible byte → printable character map: printable Latin-1 bytes stand for
/// themselves, the others take the code points from U+0100 on, in byte order.
fn gpt2_byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in out.iter_mut().enumerate() {
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
        let cp = if printable {
            b as u32
        } else {
            let cp = next;
            next += 1;
            cp
        };
        *slot = char::from_u32(cp).unwrap_or('\u{FFFD}');
    }
    out
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

/// An array of numbers as f32 (`tokenizer.ggml.scores` is f32 or i32 in llama.cpp).
fn numbers(file: &GgufFile, key: &str, n: usize) -> Result<Option<Vec<f64>>, EngineError> {
    let Some(v) = file.get(key) else {
        return Ok(None);
    };
    let items = v
        .as_array()
        .ok_or_else(|| file.err(format!("metadata `{key}`: not an array")))?;
    if items.len() < n {
        return Err(file.err(format!(
            "metadata `{key}`: {} entries for {n} tokens",
            items.len()
        )));
    }
    items
        .iter()
        .take(n)
        .enumerate()
        .map(|(i, v)| {
            let x = match *v {
                Value::I8(x) => Some(f64::from(x)),
                Value::I16(x) => Some(f64::from(x)),
                Value::I32(x) => Some(f64::from(x)),
                Value::I64(x) => Some(x as f64),
                _ => v.as_f64(),
            };
            x.ok_or_else(|| file.err(format!("metadata `{key}`[{i}]: not a number")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn flag(file: &GgufFile, key: &str) -> Result<Option<bool>, EngineError> {
    match file.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| file.err(format!("metadata `{key}`: not a boolean"))),
    }
}

/// Symbols of one merge pass: byte ranges of the text, linked left to right.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

fn char_symbols(text: &str) -> Vec<Symbol> {
    let mut out: Vec<Symbol> = Vec::new();
    for (start, c) in text.char_indices() {
        let i = out.len();
        out.push(Symbol {
            start,
            len: c.len_utf8(),
            prev: i.checked_sub(1),
            next: None,
        });
        if i > 0 {
            out[i - 1].next = Some(i);
        }
    }
    out
}

/// A candidate SentencePiece merge: higher score first, then leftmost.
struct SpmBigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl PartialEq for SpmBigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for SpmBigram {}
impl PartialOrd for SpmBigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for SpmBigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// A candidate BPE merge: lower rank first, then leftmost.
struct BpeBigram {
    left: usize,
    right: usize,
    rank: u32,
    text: String,
}

impl PartialEq for BpeBigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for BpeBigram {}
impl PartialOrd for BpeBigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for BpeBigram {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// A piece of the input after special tokens are cut out.
enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

impl GgufVocab {
    /// Reads the vocabulary; refuses tokenizer models and pre-tokenizers it does not
    /// implement, naming the field and listing what is supported.
    pub(crate) fn from_gguf(file: &GgufFile) -> Result<GgufVocab, EngineError> {
        let model = file
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                file.err(
                    "metadata `tokenizer.ggml.model`: missing (and no tokenizer.json beside the file)",
                )
            })?;
        let texts = strings(file, "tokenizer.ggml.tokens")?;
        let n = texts.len();
        if n == 0 || u32::try_from(n).is_err() {
            return Err(file.err(format!(
                "metadata `tokenizer.ggml.tokens`: {n} tokens (expected 1 to 2^32-1)"
            )));
        }
        let scores = numbers(file, "tokenizer.ggml.scores", n)?;
        let types = numbers(file, "tokenizer.ggml.token_type", n)?;
        let (mut bos, mut eos, mut unk): (Option<u32>, Option<u32>, Option<u32>);
        let mut add_bos;
        let mut add_eos = false;
        let mut ranks = HashMap::new();
        let mut sep = None;
        let kind = match model {
            "llama" => {
                (bos, eos, unk) = (Some(1), Some(2), Some(0));
                add_bos = true;
                let add_space_prefix =
                    flag(file, "tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
                Kind::Spm { add_space_prefix }
            }
            "gpt2" => {
                (bos, eos, unk) = (Some(11), Some(11), None);
                let pre = file
                    .get("tokenizer.ggml.pre")
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                let family = PRE_FAMILIES
                    .iter()
                    .find(|f| f.names.contains(&pre))
                    .ok_or_else(|| {
                        file.err(format!(
                            "metadata `tokenizer.ggml.pre`: `{pre}` is not supported (supported: {}); \
                             put the model's tokenizer.json beside the GGUF file",
                            supported_pre().join(", ")
                        ))
                    })?;
                add_bos = family.add_bos;
                let splits = family
                    .regexes
                    .iter()
                    .map(|re| {
                        Split::new(
                            SplitPattern::Regex((*re).to_owned()),
                            SplitDelimiterBehavior::Isolated,
                            false,
                        )
                        .map_err(|e| file.err(format!("pre-tokenizer `{pre}`: regex {re:?}: {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                for (i, merge) in strings(file, "tokenizer.ggml.merges")?.iter().enumerate() {
                    // As llama.cpp: split at the first space after the first byte.
                    let Some(pos) = merge.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1)
                    else {
                        return Err(file.err(format!(
                            "metadata `tokenizer.ggml.merges`[{i}]: {merge:?} is not two \
                             space-separated parts"
                        )));
                    };
                    let rank = u32::try_from(i).unwrap_or(u32::MAX);
                    ranks
                        .entry((merge[..pos].to_owned(), merge[pos + 1..].to_owned()))
                        .or_insert(rank);
                }
                Kind::Bpe(BpeSettings {
                    splits,
                    ignore_merges: family.ignore_merges,
                })
            }
            "bert" => {
                // llama.cpp's defaults for BERT: [CLS] 101 (as BOS), [UNK] 100, [SEP] 102.
                (bos, eos, unk) = (Some(101), None, Some(100));
                sep = Some(102);
                add_bos = true;
                let lowercase = flag(file, "tokenizer.ggml.normalizer.lowercase")?.unwrap_or(false);
                let strip_accents =
                    flag(file, "tokenizer.ggml.normalizer.strip_accents")?.unwrap_or(lowercase);
                Kind::Wpm(wpm::Normalizer::new(lowercase, strip_accents))
            }
            other => {
                return Err(file.err(format!(
                    "metadata `tokenizer.ggml.model`: `{other}` is not supported (supported: \
                     `llama` (SentencePiece), `gpt2` (byte-level BPE), `bert` (WordPiece)); put \
                     the model's tokenizer.json beside the GGUF file"
                )));
            }
        };

        let mut tokens = Vec::with_capacity(n);
        let mut ids = HashMap::with_capacity(n);
        for (i, text) in texts.iter().enumerate() {
            let text = if text.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                (*text).to_owned()
            };
            let ty = types.as_ref().map_or(TYPE_NORMAL, |t| {
                let v = t[i];
                if v >= 0.0 { v as u64 } else { u64::MAX }
            });
            let attr = match ty {
                TYPE_NORMAL => Attr::Normal,
                TYPE_UNKNOWN => Attr::Unknown,
                TYPE_CONTROL => Attr::Control,
                TYPE_USER_DEFINED => Attr::UserDefined,
                TYPE_BYTE => Attr::Byte,
                TYPE_UNUSED => Attr::Other,
                _ => Attr::Other,
            };
            ids.insert(text.clone(), i as u32);
            tokens.push(TokenData {
                text,
                score: scores.as_ref().map_or(0.0, |s| s[i] as f32),
                attr,
                rstrip: false,
            });
        }

        // Special ids: a default out of range is dropped, a file's id out of range ignored.
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        let key_id = |key: &str| {
            file.get(key)
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .filter(|&i| (i as usize) < n)
        };
        bos = key_id("tokenizer.ggml.bos_token_id").or(in_range(bos));
        eos = key_id("tokenizer.ggml.eos_token_id").or(in_range(eos));
        unk = key_id("tokenizer.ggml.unknown_token_id").or(in_range(unk));
        if matches!(kind, Kind::Wpm(_)) {
            // (llama.cpp's key name is spelled so.)
            sep = key_id("tokenizer.ggml.seperator_token_id").or(in_range(sep));
            if bos.is_none() || sep.is_none() {
                return Err(file.err(
                    "metadata `tokenizer.ggml.bos_token_id` / `tokenizer.ggml.seperator_token_id`: \
                     a WordPiece vocabulary needs [CLS] and [SEP] tokens in range",
                ));
            }
        }
        if let Some(v) = flag(file, "tokenizer.ggml.add_bos_token")? {
            add_bos = v;
        }
        if let Some(v) = flag(file, "tokenizer.ggml.add_eos_token")? {
            add_eos = v;
        }
        if matches!(kind, Kind::Wpm(_)) {
            // llama.cpp's WPM path puts [CLS] first and [SEP] last whatever the flags say.
            (add_bos, add_eos) = (true, false);
        }
        if add_bos && bos.is_none() {
            return Err(file.err(
                "metadata `tokenizer.ggml.add_bos_token`: BOS is to be added but the file names \
                 no BOS token in range (`tokenizer.ggml.bos_token_id`)",
            ));
        }
        if add_eos && eos.is_none() {
            return Err(file.err(
                "metadata `tokenizer.ggml.add_eos_token`: EOS is to be added but the file names \
                 no EOS token in range (`tokenizer.ggml.eos_token_id`)",
            ));
        }

        // End-of-generation tokens as llama.cpp finds them: the file's EOS/EOT/EOM ids, and
        // tokens with these texts, which it also makes control tokens (so they are cut out
        // of text only when special tokens are parsed).
        let mut eog: Vec<u32> = ["eos", "eot", "eom"]
            .iter()
            .filter_map(|k| key_id(&format!("tokenizer.ggml.{k}_token_id")))
            .chain(eos)
            .collect();
        for text in EOG_TEXTS {
            if let Some(&id) = ids.get(*text) {
                eog.push(id);
                tokens[id as usize].attr = Attr::Control;
            }
        }
        eog.sort_unstable();
        eog.dedup();

        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                matches!(
                    tokens[i as usize].attr,
                    Attr::Control | Attr::UserDefined | Attr::Unknown
                )
            })
            .collect();
        specials.sort_by(|&a, &b| {
            tokens[b as usize]
                .text
                .len()
                .cmp(&tokens[a as usize].text.len())
                .then(a.cmp(&b))
        });

        // llama.cpp's per-model attribute: Phi-3 drops whitespace after its special tokens
        // (except <unk>, <s>, <|endoftext|>), and after `</s>`.
        let name = file
            .get("general.name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_lowercase();
        if name.contains("phi-3") || name.contains("phi3") {
            for &id in &specials {
                tokens[id as usize].rstrip = true;
            }
            if let Some(&id) = ids.get("</s>") {
                tokens[id as usize].rstrip = true;
            }
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                if let Some(&id) = ids.get(t) {
                    tokens[id as usize].rstrip = false;
                }
            }
        }

        let max_token_len = tokens.iter().map(|t| t.text.len()).max().unwrap_or(0);
        let byte_chars = gpt2_byte_chars();
        let char_bytes = byte_chars
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        Ok(GgufVocab {
            kind,
            tokens,
            ids,
            ranks,
            specials,
            bos,
            eos,
            eog,
            unk,
            sep,
            max_token_len,
            add_bos,
            add_eos,
            byte_chars,
            char_bytes,
        })
    }

    #[cfg(test)]
    fn is_bpe(&self) -> bool {
        matches!(self.kind, Kind::Bpe(_))
    }

    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }

    pub(crate) fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    pub(crate) fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|t| t.text.as_str())
    }

    /// Cuts special tokens out of `text`, longest first, as llama.cpp's
    /// `tokenizer_st_partition`; control and unknown tokens only when `parse_special`.
    fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let mut frags = vec![Fragment::Text(text)];
        if text.is_empty() {
            frags.clear();
            return frags;
        }
        for &id in &self.specials {
            let tok = &self.tokens[id as usize];
            if !parse_special && matches!(tok.attr, Attr::Control | Attr::Unknown) {
                continue;
            }
            let needle = tok.text.as_str();
            let mut out = Vec::with_capacity(frags.len());
            for frag in frags {
                let Fragment::Text(mut rest) = frag else {
                    out.push(frag);
                    continue;
                };
                while let Some(pos) = rest.find(needle) {
                    let left = &rest[..pos];
                    if !left.is_empty() {
                        out.push(Fragment::Text(left));
                    }
                    out.push(Fragment::Token(id));
                    rest = &rest[pos + needle.len()..];
                    if tok.rstrip {
                        rest = rest.trim_start_matches(|c: char| {
                            matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
                        });
                    }
                }
                if !rest.is_empty() {
                    out.push(Fragment::Text(rest));
                }
            }
            frags = out;
        }
        frags
    }

    /// llama.cpp's `llama_tokenize(text, add_special, parse_special)`.
    pub(crate) fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        let frags = self.partition(text, parse_special);
        match &self.kind {
            Kind::Spm { add_space_prefix } => {
                let mut prev_special = true;
                for frag in frags {
                    match frag {
                        Fragment::Text(t) => {
                            let mut s = String::with_capacity(t.len() + 3);
                            if *add_space_prefix && prev_special {
                                s.push(' ');
                            }
                            s.push_str(t);
                            let s = s.replace(' ', "\u{2581}");
                            self.spm(&s, &mut out);
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            Kind::Bpe(settings) => {
                for frag in frags {
                    match frag {
                        Fragment::Text(t) => self.bpe(settings, t, &mut out),
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
            Kind::Wpm(normalizer) => {
                for frag in frags {
                    match frag {
                        Fragment::Text(t) => self.wpm(normalizer, t, &mut out),
                        Fragment::Token(id) => out.push(id),
                    }
                }
                // llama.cpp ends WordPiece text with [SEP] whatever `add_eos` says.
                if add_special {
                    out.extend(self.sep);
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    fn spm(&self, text: &str, out: &mut Vec<u32>) {
        let mut symbols = char_symbols(text);
        let mut queue = BinaryHeap::new();
        let try_add = |symbols: &[Symbol],
                       queue: &mut BinaryHeap<SpmBigram>,
                       left: Option<usize>,
                       right: Option<usize>| {
            let (Some(l), Some(r)) = (left, right) else {
                return;
            };
            let start = symbols[l].start;
            let size = symbols[l].len + symbols[r].len;
            let Some(&id) = text.get(start..start + size).and_then(|p| self.ids.get(p)) else {
                return;
            };
            queue.push(SpmBigram {
                left: l,
                right: r,
                score: self.tokens[id as usize].score,
                size,
            });
        };
        for i in 1..symbols.len() {
            try_add(&symbols, &mut queue, Some(i - 1), Some(i));
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (symbols[b.left], symbols[b.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
                continue;
            }
            symbols[b.left].len += r.len;
            symbols[b.right].len = 0;
            symbols[b.left].next = r.next;
            if let Some(nx) = r.next {
                symbols[nx].prev = Some(b.left);
            }
            let prev = symbols[b.left].prev;
            let next = symbols[b.left].next;
            try_add(&symbols, &mut queue, prev, Some(b.left));
            try_add(&symbols, &mut queue, Some(b.left), next);
        }
        // Every merged symbol is a vocabulary entry (only such merges are queued), so a
        // symbol that is not one is a single character: llama.cpp's split-back through its
        // merge history never applies, and the character becomes byte tokens.
        let mut i = if symbols.is_empty() { None } else { Some(0) };
        while let Some(k) = i {
            let s = symbols[k];
            let piece = &text[s.start..s.start + s.len];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => out.extend(piece.bytes().filter_map(|b| self.spm_byte_token(b))),
            }
            i = s.next;
        }
    }

    /// `<0xNN>`, else the byte as a one-character string, else the unknown token.
    fn spm_byte_token(&self, b: u8) -> Option<u32> {
        self.ids
            .get(format!("<0x{b:02X}>").as_str())
            .or_else(|| {
                let s = [b];
                std::str::from_utf8(&s).ok().and_then(|s| self.ids.get(s))
            })
            .copied()
            .or(self.unk)
    }

    fn bpe(&self, settings: &BpeSettings, text: &str, out: &mut Vec<u32>) {
        let mut pts = PreTokenizedString::from(text);
        for split in &settings.splits {
            if split.pre_tokenize(&mut pts).is_err() {
                // The regexes are fixed and compiled at load; a failing split leaves the
                // text in larger pieces rather than losing it.
                break;
            }
        }
        for (word, _, _) in pts.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            let encoded: String = word.bytes().map(|b| self.byte_chars[b as usize]).collect();
            self.bpe_word(settings, &encoded, out);
        }
    }

    fn bpe_word(&self, settings: &BpeSettings, word: &str, out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if settings.ignore_merges
            && let Some(&id) = self.ids.get(word)
        {
            out.push(id);
            return;
        }
        let mut symbols = char_symbols(word);
        let mut queue = BinaryHeap::new();
        let add = |symbols: &[Symbol],
                   queue: &mut BinaryHeap<BpeBigram>,
                   l: Option<usize>,
                   r: Option<usize>| {
            let (Some(l), Some(r)) = (l, r) else {
                return;
            };
            let (ls, rs) = (symbols[l], symbols[r]);
            let left = &word[ls.start..ls.start + ls.len];
            let right = &word[rs.start..rs.start + rs.len];
            if let Some(&rank) = self.ranks.get(&(left.to_owned(), right.to_owned())) {
                queue.push(BpeBigram {
                    left: l,
                    right: r,
                    rank,
                    text: format!("{left}{right}"),
                });
            }
        };
        for i in 1..symbols.len() {
            add(&symbols, &mut queue, Some(i - 1), Some(i));
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (symbols[b.left], symbols[b.right]);
            if l.len == 0 || r.len == 0 {
                continue;
            }
            // Skip a bigram made stale by an earlier merge.
            if l.start + l.len != r.start
                || word.get(l.start..r.start + r.len) != Some(b.text.as_str())
            {
                continue;
            }
            symbols[b.left].len += r.len;
            symbols[b.right].len = 0;
            symbols[b.left].next = r.next;
            if let Some(nx) = r.next {
                symbols[nx].prev = Some(b.left);
            }
            let prev = symbols[b.left].prev;
            let next = symbols[b.left].next;
            add(&symbols, &mut queue, prev, Some(b.left));
            add(&symbols, &mut queue, Some(b.left), next);
        }
        for s in symbols.iter().filter(|s| s.len > 0) {
            let piece = &word[s.start..s.start + s.len];
            if let Some(&id) = self.ids.get(piece) {
                out.push(id);
            } else {
                // As llama.cpp: each UTF-8 byte of the unknown piece, as a one-byte string,
                // where the vocabulary has it.
                for &b in piece.as_bytes() {
                    let s = [b];
                    if let Some(&id) = std::str::from_utf8(&s).ok().and_then(|s| self.ids.get(s)) {
                        out.push(id);
                    }
                }
            }
        }
    }

    /// Every token's bytes, as a token trie for constrained decoding takes them
    /// (`crate::constraint`): a control or unknown token as the marker byte `0xFF` then its
    /// text (it can be allowed or refused, never spelled), any other as it decodes.
    pub(crate) fn trie_bytes(&self) -> Vec<Vec<u8>> {
        self.tokens
            .iter()
            .enumerate()
            .map(|(id, tok)| match tok.attr {
                Attr::Control | Attr::Unknown => {
                    let mut b = vec![0xFF];
                    b.extend_from_slice(tok.text.as_bytes());
                    b
                }
                _ => {
                    let mut b = Vec::new();
                    self.piece(id as u32, false, &mut b);
                    b
                }
            })
            .collect()
    }

    /// The bytes one token stands for (llama.cpp's `token_to_piece`); control and unknown
    /// tokens only when `special`.
    fn piece(&self, id: u32, special: bool, out: &mut Vec<u8>) {
        let Some(tok) = self.tokens.get(id as usize) else {
            return;
        };
        match tok.attr {
            Attr::Control | Attr::Unknown => {
                if special {
                    out.extend_from_slice(tok.text.as_bytes());
                }
            }
            Attr::UserDefined => out.extend_from_slice(tok.text.as_bytes()),
            Attr::Normal => match self.kind {
                Kind::Spm { .. } | Kind::Wpm(_) => {
                    out.extend_from_slice(tok.text.replace('\u{2581}', " ").as_bytes());
                }
                Kind::Bpe(_) => {
                    for c in tok.text.chars() {
                        match self.char_bytes.get(&c) {
                            Some(&b) => out.push(b),
                            None => {
                                let mut buf = [0u8; 4];
                                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                            }
                        }
                    }
                }
            },
            Attr::Byte => {
                if let Some(b) = tok
                    .text
                    .get(3..5)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    out.push(b);
                }
            }
            Attr::Other => {}
        }
    }

    /// llama.cpp's `llama_detokenize(ids, remove_special, unparse_special)`, without its
    /// `clean_spaces` pass (which deletes spaces before punctuation and so cannot round-trip
    /// text). Invalid UTF-8 (a character cut between tokens) becomes U+FFFD.
    pub(crate) fn detokenize(
        &self,
        ids: &[u32],
        remove_special: bool,
        unparse_special: bool,
    ) -> String {
        let mut ids = ids;
        let mut remove_space = matches!(
            self.kind,
            Kind::Spm {
                add_space_prefix: true
            } | Kind::Wpm(_)
        );
        if remove_special && self.add_bos && self.bos.is_some() && ids.first() == self.bos.as_ref()
        {
            remove_space = false;
            ids = &ids[1..];
        }
        if remove_special && self.add_eos && self.eos.is_some() && ids.last() == self.eos.as_ref() {
            ids = &ids[..ids.len() - 1];
        }
        let mut out = Vec::new();
        for &id in ids {
            let start = out.len();
            self.piece(id, unparse_special, &mut out);
            if remove_space {
                if out.get(start) == Some(&b' ') {
                    out.remove(start);
                }
                remove_space = false;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

mod wpm;

#[cfg(test)]
mod tests;
