//! Ids equal llama.cpp's `llama_tokenize` on the same GGUF file.
//!
//! `tests/fixtures/gguf_tokenizer/expected.json` holds llama.cpp's ids (llama-cpp-python
//! 0.3.36) for vocab-only GGUFs written by llama.cpp's converter from the fixture
//! tokenizers, one per supported pre-tokenizer family (see that directory's README).
//! `llama_cpp_reference_vocabularies` checks the real vocabularies llama.cpp ships
//! (`models/ggml-vocab-*.gguf`) against llama.cpp's own expected outputs; they are too large
//! to commit, so it runs where `LLAMA_CPP_DIR` points at llama.cpp's tree.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::GgufVocab;
use crate::gguf::GgufFile;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf_tokenizer")
}

/// Opens a vocab-only GGUF. The parser lets metadata allocate at most the file's size (a
/// hostile-file guard); a vocab-only file is nothing but metadata, and its arrays of short
/// strings and f32 scores take several times their file size in memory, so the test reads
/// a copy padded with zeros after the (empty) data section. Model files, where the tensors
/// dwarf the vocabulary, never come near the limit.
fn open_file(path: &Path) -> GgufFile {
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.resize(bytes.len() * 16, 0);
    let tmp = tempfile::tempdir().expect("tmp");
    let copy = tmp.path().join(path.file_name().expect("name"));
    std::fs::write(&copy, &bytes).expect("write");
    GgufFile::open(&copy, None).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn open(path: &Path) -> GgufVocab {
    GgufVocab::from_gguf(&open_file(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// Compares every file of an `expected.json`-shaped document (`path` resolves its keys)
/// with llama.cpp's ids and decodings; returns the differences and the number of checks.
fn compare(expected: &Json, path: impl Fn(&str) -> PathBuf) -> (Vec<String>, usize) {
    let files = expected["files"].as_object().expect("files");
    let mut failures = Vec::new();
    let mut checked = 0;
    for (name, f) in files {
        let vocab = open(&path(name));
        for case in f["cases"].as_array().expect("cases") {
            let text = case["text"].as_str().expect("text");
            for (add, special) in [(true, true), (true, false), (false, true), (false, false)] {
                let key = format!(
                    "ids_{}_{}",
                    if add { "bos" } else { "nobos" },
                    if special { "special" } else { "plain" }
                );
                let want = ids(&case[key.as_str()]);
                let got = vocab.tokenize(text, add, special);
                checked += 1;
                if got != want {
                    failures.push(format!(
                        "{name} {key} {text:?}: got {got:?}, llama.cpp {want:?}"
                    ));
                }
            }
            // llama_detokenize(ids, remove_special, unparse_special). llama.cpp then deletes
            // spaces before punctuation for some BPE pre-tokenizers (`clean_spaces`); ours
            // does not (llama-server's streamed text does not either), so there the texts
            // may differ by removed spaces only.
            for (key, ids_key, remove, unparse) in [
                ("detok_plain", "ids_nobos_plain", false, false),
                ("detok_bos_special", "ids_bos_special", false, true),
                ("detok_bos_skip", "ids_bos_special", true, false),
            ] {
                let ours = vocab.detokenize(&ids(&case[ids_key]), remove, unparse);
                let theirs = case[key].as_str().expect("detok");
                let cleaned = vocab.is_bpe()
                    && theirs.len() < ours.len()
                    && ours.replace(' ', "") == theirs.replace(' ', "");
                checked += 1;
                if ours != theirs && !cleaned {
                    failures.push(format!(
                        "{name} {key} {text:?}: got {ours:?}, llama.cpp {theirs:?}"
                    ));
                }
            }
        }
    }
    (failures, checked)
}

#[test]
fn ids_match_llama_cpp_on_fixture_vocabularies() {
    let text = std::fs::read_to_string(dir().join("expected.json")).expect("expected.json");
    let expected: Json = serde_json::from_str(&text).expect("JSON");
    assert!(expected["files"].as_object().expect("files").len() >= 12);
    let (failures, checked) = compare(&expected, |name| dir().join(name));
    assert!(
        failures.is_empty(),
        "{} of {checked} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The same texts (with special-token parsing and BOS) on llama.cpp's real vocabularies:
/// `generate.py --reference OUT.json` writes llama.cpp's ids for them.
#[test]
#[ignore = "needs GGUF_TOKENIZER_REFERENCE (see tests/fixtures/gguf_tokenizer/README.md)"]
fn llama_cpp_reference_special_tokens() {
    let path = std::env::var("GGUF_TOKENIZER_REFERENCE").expect("GGUF_TOKENIZER_REFERENCE");
    let text = std::fs::read_to_string(&path).expect("reference JSON");
    let expected: Json = serde_json::from_str(&text).expect("JSON");
    let (failures, checked) = compare(&expected, |p| PathBuf::from(p));
    println!("{checked} checks, {} differ", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {checked} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Text → ids → text gives the text back (byte fallback and the byte-level alphabet
/// cover every byte; the SentencePiece space prefix is dropped again).
#[test]
fn decode_round_trips() {
    let text = std::fs::read_to_string(dir().join("expected.json")).expect("expected.json");
    let expected: Json = serde_json::from_str(&text).expect("JSON");
    for (name, f) in expected["files"].as_object().expect("files") {
        let vocab = open(&dir().join(name));
        for case in f["cases"].as_array().expect("cases") {
            let text = case["text"].as_str().expect("text");
            if name.starts_with("spm") && text.contains('\u{2581}') {
                // SentencePiece's own space marker in the input decodes as a space (as in
                // llama.cpp and sentencepiece): the one text that cannot come back.
                continue;
            }
            let ids = vocab.tokenize(text, false, false);
            assert_eq!(vocab.detokenize(&ids, false, true), text, "{name}: {ids:?}");
            // With BOS, skipping specials drops it and the text is intact after it.
            let ids = vocab.tokenize(text, true, false);
            let back = vocab.detokenize(&ids, true, false);
            assert!(
                back.ends_with(text.trim_start()),
                "{name}: {text:?} → {back:?}"
            );
        }
    }
}

#[test]
fn unsupported_values_are_refused_with_the_supported_ones_listed() {
    let path = dir().join("bpe-qwen2.gguf");
    let mut bytes = std::fs::read(&path).expect("fixture");
    // The value of `tokenizer.ggml.pre` (after its key, u32 type, u64 length): `qwen2` →
    // `qwen9`, same length, so the file stays well-formed.
    let key = b"tokenizer.ggml.pre";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("pre key in file")
        + key.len()
        + 12;
    assert_eq!(&bytes[at..at + 5], b"qwen2");
    bytes[at + 4] = b'9';
    let tmp = tempfile::tempdir().expect("tmp");
    let edited = tmp.path().join("model.gguf");
    std::fs::write(&edited, &bytes).expect("write");
    let file = open_file(&edited);
    let Err(err) = GgufVocab::from_gguf(&file) else {
        panic!("an unknown pre-tokenizer must be refused");
    };
    let msg = err.to_string();
    assert!(
        msg.contains("tokenizer.ggml.pre") && msg.contains("`qwen9`"),
        "{msg}"
    );
    assert!(msg.contains("llama-bpe") && msg.contains("smollm"), "{msg}");
}

/// llama.cpp's own vocabularies of real models (Llama 2 SPM, Llama 3, Qwen2, Phi-3, GPT-2,
/// StarCoder, ...) against llama.cpp's expected outputs (`.inp` / `.out`, from its
/// test-tokenizer-0: no BOS, special tokens not parsed). Needs `LLAMA_CPP_DIR`.
#[test]
#[ignore = "needs LLAMA_CPP_DIR (llama-cpp-python 0.3.36's vendored llama.cpp tree)"]
fn llama_cpp_reference_vocabularies() {
    let root = PathBuf::from(std::env::var("LLAMA_CPP_DIR").expect("LLAMA_CPP_DIR"));
    let mut report = Vec::new();
    let mut failed = false;
    for name in [
        "llama-spm",
        "phi-3",
        "llama-bpe",
        "qwen2",
        "qwen35",
        "gpt-2",
        "starcoder",
        "refact",
        "deepseek-coder",
        "falcon",
        "mpt",
        "command-r",
    ] {
        let base = root.join(format!("models/ggml-vocab-{name}.gguf"));
        let inp = std::fs::read_to_string(base.with_extension("gguf.inp")).expect("inp");
        let out = std::fs::read_to_string(base.with_extension("gguf.out")).expect("out");
        let sep = "\n__ggml_vocab_test__\n";
        let inputs: Vec<&str> = inp.split(sep).collect();
        // One line of ids per input.
        let outputs: Vec<&str> = out.split('\n').collect();
        assert!(outputs.len() >= inputs.len(), "{name}: .out too short");
        let vocab = match GgufVocab::from_gguf(&open_file(&base)) {
            Ok(v) => v,
            Err(e) => {
                report.push(format!("{name}: refused: {e}"));
                failed = true;
                continue;
            }
        };
        let mut bad = 0;
        for (text, want) in inputs.iter().zip(&outputs) {
            let want: Vec<u32> = want
                .split_whitespace()
                .filter_map(|t| t.parse().ok())
                .collect();
            let got = vocab.tokenize(text, false, false);
            if got != want {
                bad += 1;
                if bad <= 3 {
                    report.push(format!("{name}: {text:?}: got {got:?}, want {want:?}"));
                }
            }
        }
        report.push(format!(
            "{name}: {}/{} equal",
            inputs.len() - bad,
            inputs.len()
        ));
        failed |= bad > 0;
    }
    println!("{}", report.join("\n"));
    assert!(!failed, "{}", report.join("\n"));
}

/// End of generation as llama.cpp finds it: the EOS id plus tokens known by text.
#[test]
fn end_of_generation_tokens() {
    let qwen = open(&dir().join("bpe-qwen2.gguf"));
    let im_end = qwen.token_id("<|im_end|>").expect("<|im_end|>");
    let eot = qwen.token_id("<|endoftext|>").expect("<|endoftext|>");
    assert!(
        qwen.eog.contains(&im_end) && qwen.eog.contains(&eot),
        "{:?}",
        qwen.eog
    );
    let llama3 = open(&dir().join("bpe-llama-bpe.gguf"));
    let eot_id = llama3.token_id("<|eot_id|>").expect("<|eot_id|>");
    assert!(llama3.eog.contains(&eot_id), "{:?}", llama3.eog);
    assert!(llama3.add_bos, "llama-bpe adds BOS by default");
    let spm = open(&dir().join("spm.gguf"));
    assert_eq!((spm.bos, spm.eos, spm.add_bos), (Some(1), Some(2), true));
}
