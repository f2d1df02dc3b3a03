//! The mixed-type GGUF fixtures (`fixtures/gguf/generate_mixed.py`) and the f32 models to
//! hold them against, rebuilt as safetensors directories in a temporary directory:
//!
//! * the **dequantized** model: every tensor of the GGUF file expanded by
//!   [`QType::dequantize`] (itself checked bit for bit against gguf-py in `quant_types.rs`),
//!   q/k rows put back in HF order. The GGUF file run by the quantized kernels differs from
//!   it only by the activations' 8-bit rounding.
//! * the **original** model: the f32 weights before quantization (`llama_gqa_f32` itself,
//!   or the synthetic `k256` weights recomputed from `source.json`'s recipe).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use airlock_engine::quant::QType;
use airlock_engine::{
    DeviceChoice, GenerateOptions, KvCacheDtype, Prompt, SamplingParams, generate_once,
};
use safetensors::{Dtype, tensor::TensorView};
use serde_json::Value;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Where the tokenizer and configs of both mixed fixtures come from (same vocabulary).
pub fn vocab_source() -> PathBuf {
    fixtures().join("llama_gqa_f32")
}

const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

fn read_json(path: &Path) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

fn le_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn dims(v: &Value) -> Vec<usize> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_u64().map(|d| d as usize))
        .collect()
}

/// Writes `tensors` (HF name, shape, values) as an f32 HF directory with `config`.
fn write_hf_dir(
    config: &Value,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::write(
        dir.path().join("model.safetensors"),
        safetensors::serialize(views, None)?,
    )?;
    std::fs::write(dir.path().join("config.json"), serde_json::to_vec(config)?)?;
    for f in TOKENIZER_FILES {
        std::fs::copy(vocab_source().join(f), dir.path().join(f))?;
    }
    Ok(dir)
}

/// The GGUF directory `name`'s tensors, dequantized, as an f32 HF directory.
pub fn dequantized(name: &str, config: &Value) -> anyhow::Result<tempfile::TempDir> {
    let dir = fixtures().join("gguf").join(name);
    let file = std::fs::read(dir.join("model.gguf"))?;
    let table = read_json(&dir.join("tensors.json"))?;
    let mut tensors = Vec::new();
    for t in table.as_array().into_iter().flatten() {
        let hf = t["hf"].as_str().unwrap_or_default().to_owned();
        let shape = dims(&t["shape"]);
        let (start, end) = (
            t["start"].as_u64().unwrap_or(0) as usize,
            t["end"].as_u64().unwrap_or(0) as usize,
        );
        let bytes = file
            .get(start..end)
            .ok_or_else(|| anyhow::anyhow!("{hf}: byte range outside the file"))?;
        let ty = t["type"].as_str().unwrap_or_default();
        let mut values = match QType::ALL.into_iter().find(|q| q.name() == ty) {
            Some(q) => q.dequantize(bytes)?,
            None if ty == "F32" => le_f32(bytes),
            None => anyhow::bail!("{hf}: type {ty}"),
        };
        anyhow::ensure!(
            values.len() == shape.iter().product::<usize>(),
            "{hf}: size"
        );
        if let Some(heads) = t["heads"].as_u64() {
            values = unpermute(&values, &shape, heads as usize);
        }
        tensors.push((hf, shape, values));
    }
    write_hf_dir(config, tensors)
}

/// Undoes llama.cpp's q/k permutation: within each head of `d` rows, GGUF row `2i + j` is HF
/// row `j·d/2 + i`.
fn unpermute(v: &[f32], shape: &[usize], heads: usize) -> Vec<f32> {
    let (rows, cols) = (shape[0], shape[1]);
    let d = rows / heads;
    let mut out = vec![0f32; v.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                let src = (h * d + 2 * i + j) * cols;
                let dst = (h * d + j * d / 2 + i) * cols;
                out[dst..dst + cols].copy_from_slice(&v[src..src + cols]);
            }
        }
    }
    out
}

/// `offset + scale·u`, `u = splitmix64(seed·2³² + i) >> 40` over 2²⁴ − 0.5, as
/// `generate_mixed.py` computes it (every step exact or one IEEE f32 rounding, so the same
/// bits).
fn synthetic(seed: u64, n: usize, scale: f32, offset: f32) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let mut z = (seed << 32)
                .wrapping_add(i)
                .wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            offset + scale * u
        })
        .collect()
}

/// The synthetic `k256` model's config and original f32 weights, from `source.json`.
pub fn k256_original() -> anyhow::Result<(Value, tempfile::TempDir)> {
    let src = read_json(&fixtures().join("gguf/k256-mix/source.json"))?;
    let mut tensors = Vec::new();
    for t in src["tensors"].as_array().into_iter().flatten() {
        let shape = dims(&t["shape"]);
        let n = shape.iter().product();
        let values = synthetic(
            t["seed"].as_u64().unwrap_or(0),
            n,
            t["scale"].as_f64().unwrap_or(0.0) as f32,
            t["offset"].as_f64().unwrap_or(0.0) as f32,
        );
        tensors.push((
            t["name"].as_str().unwrap_or_default().to_owned(),
            shape,
            values,
        ));
    }
    let config = src["config"].clone();
    let dir = write_hf_dir(&config, tensors)?;
    Ok((config, dir))
}

pub fn config_of(dir: &Path) -> anyhow::Result<Value> {
    read_json(&dir.join("config.json"))
}

/// Last-position logits and 8 greedy ids for `prompt`.
pub fn run(
    dir: &Path,
    prompt: &[u32],
    device: DeviceChoice,
) -> anyhow::Result<(Vec<f32>, Vec<u32>)> {
    let mut opts = GenerateOptions::new(dir, Prompt::TokenIds(prompt.to_vec()));
    opts.device = device;
    opts.keep_logits = true;
    // The CPU's f32 cache: what the references, and the f32 software GPU, compute with.
    opts.kv_cache_dtype = KvCacheDtype::F32;
    opts.params = SamplingParams {
        max_tokens: Some(8),
        ignore_eos: true,
        ..Default::default()
    };
    let r = generate_once(&opts)?;
    Ok((r.logits.unwrap_or_default(), r.generated_ids))
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Prompts for the synthetic model (any ids of its 512-token vocabulary).
pub const K256_PROMPTS: [&[u32]; 3] = [
    &[507, 12, 300, 45, 61, 2, 411],
    &[507, 99, 98, 97, 96, 95, 94, 93, 92, 91, 90, 200, 201],
    &[507, 5],
];
