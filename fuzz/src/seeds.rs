//! The seed corpora: small valid inputs for each target and the tricky ones around them.
//! `fuzz/corpus/<target>/` is written by [`write_all`] (see `fuzz/README.md` for the one
//! command); the model-file seeds are built here, small, from the shapes of the engine's
//! test fixtures.

use std::path::Path;

use serde_json::json;

use crate::split;

/// Every seed: (target, file name, bytes).
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |target: &'static str, seeds: Vec<(&'static str, Vec<u8>)>| {
        out.extend(
            seeds
                .into_iter()
                .map(|(name, bytes)| (target, name.to_owned(), bytes)),
        );
    };
    add("gguf", gguf_seeds());
    add("safetensors", safetensors_seeds());
    add("chat_template", crate::chat_template::seeds());
    add("openai_request", crate::openai_request::seeds());
    add("jwt", crate::jwt::seeds());
    add("api_key", crate::api_key::seeds());
    add("xfcc", crate::xfcc::seeds());
    add("stream_filter", crate::stream_filter::seeds());
    add("audit_verify", crate::audit_verify::seeds());
    add("grammar", crate::grammar::seeds());
    out
}

/// Replaces `root/<target>/` with the seeds (other corpus files, e.g. minimized finds
/// added by hand, are kept only if they do not share a seed's name).
pub fn write_all(root: &Path) -> std::io::Result<usize> {
    let seeds = all();
    for (target, name, bytes) in &seeds {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    }
    Ok(seeds.len())
}

/// A GGUF metadata value.
enum Meta {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(&'static str),
    Strs(Vec<&'static str>),
    I32s(Vec<i32>),
    /// An array of arrays (legal GGUF; nothing reads one).
    Nested,
}

/// A tiny GGUF file: metadata, then tensors (name, `ne` innermost first, ggml type, data).
fn gguf(meta: &[(&str, Meta)], tensors: &[(&str, &[u64], u32, Vec<u8>)]) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    for (key, value) in meta {
        string(&mut out, key);
        match value {
            Meta::U32(v) => {
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            Meta::I32(v) => {
                out.extend_from_slice(&5u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            Meta::F32(v) => {
                out.extend_from_slice(&6u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            Meta::Bool(v) => {
                out.extend_from_slice(&7u32.to_le_bytes());
                out.push(u8::from(*v));
            }
            Meta::Str(s) => {
                out.extend_from_slice(&8u32.to_le_bytes());
                string(&mut out, s);
            }
            Meta::Strs(items) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for s in items {
                    string(&mut out, s);
                }
            }
            Meta::I32s(items) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&5u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for v in items {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            Meta::Nested => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&1u64.to_le_bytes());
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&2u64.to_le_bytes());
                out.extend_from_slice(&1u32.to_le_bytes());
                out.extend_from_slice(&2u32.to_le_bytes());
            }
        }
    }
    let mut offset = 0u64;
    for (name, ne, ty, data) in tensors {
        string(&mut out, name);
        out.extend_from_slice(&(ne.len() as u32).to_le_bytes());
        for d in *ne {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset += (data.len() as u64).div_ceil(32) * 32;
    }
    for (_, _, _, data) in tensors {
        out.resize(out.len().div_ceil(32) * 32, 0);
        out.extend_from_slice(data);
    }
    out
}

/// `n` bytes of a repeating pattern (weights' values do not matter to a parser).
fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Q8_0 rows: each 32-element block is an f16 scale (1.0) and 32 signed bytes.
fn q8_0(rows: usize, cols: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for b in 0..rows * cols / 32 {
        out.extend_from_slice(&0x3c00u16.to_le_bytes());
        out.extend(bytes(32, b as u8));
    }
    out
}

/// Q4_0 rows: an f16 scale and 16 bytes of nibbles per block.
fn q4_0(rows: usize, cols: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for b in 0..rows * cols / 32 {
        out.extend_from_slice(&0x3c00u16.to_le_bytes());
        out.extend(bytes(16, b as u8));
    }
    out
}

fn gguf_seeds() -> Vec<(&'static str, Vec<u8>)> {
    const F32: u32 = 0;
    const F16: u32 = 1;
    const Q4_0: u32 = 2;
    const Q8_0: u32 = 8;
    const BF16: u32 = 30;
    let tokens = vec![
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "H",
        "e",
        "l",
        "o",
        "Ġ",
        "w",
        "r",
        "d",
        "He",
        "ll",
        "llo",
        "Ġw",
        "or",
        "ld",
    ];
    let mut types = vec![1; tokens.len()];
    types[0] = 3;
    types[1] = 3;
    let merges = vec!["H e", "l l", "ll o", "Ġ w", "o r", "l d"];
    let arch_meta = |arch: &'static str, pre: &'static str| {
        let k = |key: &str| format!("{arch}.{key}");
        vec![
            ("general.architecture".to_owned(), Meta::Str(arch)),
            ("general.alignment".to_owned(), Meta::U32(32)),
            (k("context_length"), Meta::U32(64)),
            (k("embedding_length"), Meta::U32(32)),
            (k("block_count"), Meta::U32(1)),
            (k("feed_forward_length"), Meta::U32(8)),
            (k("attention.head_count"), Meta::U32(4)),
            (k("attention.head_count_kv"), Meta::U32(2)),
            (k("rope.freq_base"), Meta::F32(10_000.0)),
            (k("attention.layer_norm_rms_epsilon"), Meta::F32(1e-5)),
            ("tokenizer.ggml.model".to_owned(), Meta::Str("gpt2")),
            ("tokenizer.ggml.pre".to_owned(), Meta::Str(pre)),
            (
                "tokenizer.ggml.tokens".to_owned(),
                Meta::Strs(tokens.clone()),
            ),
            (
                "tokenizer.ggml.token_type".to_owned(),
                Meta::I32s(types.clone()),
            ),
            (
                "tokenizer.ggml.merges".to_owned(),
                Meta::Strs(merges.clone()),
            ),
            ("tokenizer.ggml.bos_token_id".to_owned(), Meta::U32(0)),
            ("tokenizer.ggml.eos_token_id".to_owned(), Meta::U32(1)),
            ("tokenizer.ggml.add_bos_token".to_owned(), Meta::Bool(true)),
            (
                "tokenizer.chat_template".to_owned(),
                Meta::Str(
                    "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
                ),
            ),
        ]
    };
    let tensors: Vec<(&str, &[u64], u32, Vec<u8>)> = vec![
        ("token_embd.weight", &[32, 16], F32, bytes(16 * 32 * 4, 1)),
        ("output_norm.weight", &[32], F32, bytes(32 * 4, 2)),
        ("blk.0.attn_norm.weight", &[32], F16, bytes(32 * 2, 3)),
        ("blk.0.attn_q.weight", &[32, 32], Q8_0, q8_0(32, 32)),
        ("blk.0.attn_k.weight", &[32, 16], Q4_0, q4_0(16, 32)),
        (
            "blk.0.ffn_down.weight",
            &[8, 32],
            BF16,
            bytes(8 * 32 * 2, 4),
        ),
    ];
    let build = |meta: Vec<(String, Meta)>, tensors: &[(&str, &[u64], u32, Vec<u8>)]| {
        let meta: Vec<(&str, Meta)> = meta.iter().map(|(k, v)| (k.as_str(), clone(v))).collect();
        gguf(&meta, tensors)
    };
    let mut qwen = arch_meta("qwen2", "qwen2");
    qwen.push(("qwen2.rope.scaling.type".to_owned(), Meta::Str("linear")));
    qwen.push(("qwen2.rope.scaling.factor".to_owned(), Meta::F32(2.0)));
    let mut qwen_tensors = tensors.clone();
    qwen_tensors.push(("blk.0.attn_q.bias", &[32], F32, bytes(32 * 4, 5)));
    let mut odd = arch_meta("llama", "default");
    odd.push(("general.nested".to_owned(), Meta::Nested));
    odd.push(("llama.attention.key_length".to_owned(), Meta::I32(8)));
    vec![
        ("llama", build(arch_meta("llama", "llama-bpe"), &tensors)),
        ("qwen2", build(qwen, &qwen_tensors)),
        ("nested_meta", build(odd, &tensors[..2])),
        ("header_only", gguf(&[], &[])),
    ]
}

fn clone(m: &Meta) -> Meta {
    match m {
        Meta::U32(v) => Meta::U32(*v),
        Meta::I32(v) => Meta::I32(*v),
        Meta::F32(v) => Meta::F32(*v),
        Meta::Bool(v) => Meta::Bool(*v),
        Meta::Str(v) => Meta::Str(v),
        Meta::Strs(v) => Meta::Strs(v.clone()),
        Meta::I32s(v) => Meta::I32s(v.clone()),
        Meta::Nested => Meta::Nested,
    }
}

/// A safetensors file: (name, dtype, shape, data).
fn safetensors(tensors: &[(&str, &str, &[usize], Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            (*name).to_owned(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [data.len(), data.len() + bytes.len()]}),
        );
        data.extend_from_slice(bytes);
    }
    let mut text = serde_json::Value::Object(header).to_string().into_bytes();
    text.resize(text.len().div_ceil(8) * 8, b' ');
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(data);
    out
}

/// Config files of the engine's test fixtures, paired with small weights.
fn safetensors_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures");
    let config =
        |dir: &str| std::fs::read(fixtures.join(dir).join("config.json")).unwrap_or_default();
    let weights = safetensors(&[
        (
            "model.embed_tokens.weight",
            "F32",
            &[4, 8],
            bytes(4 * 8 * 4, 1),
        ),
        ("model.norm.weight", "F16", &[8], bytes(8 * 2, 2)),
        (
            "model.layers.0.self_attn.q_proj.weight",
            "BF16",
            &[8, 8],
            bytes(8 * 8 * 2, 3),
        ),
        ("lm_head.weight", "F32", &[4, 8], bytes(4 * 8 * 4, 4)),
    ]);
    let odd = safetensors(&[
        ("scalar", "F32", &[], bytes(4, 5)),
        ("empty", "F16", &[0, 3], Vec::new()),
        ("ints", "I32", &[2], bytes(8, 6)),
    ]);
    vec![
        (
            "llama_gqa",
            split::join_prefixed(&config("llama_gqa_f32"), &weights),
        ),
        (
            "llama3_rope",
            split::join_prefixed(&config("llama3_ropescaling_bf16"), &weights),
        ),
        (
            "qwen2",
            split::join_prefixed(&config("qwen2_bias"), &weights),
        ),
        ("mistral", split::join_prefixed(&config("mistral"), &odd)),
        ("no_config", split::join_prefixed(b"", &weights)),
    ]
}
