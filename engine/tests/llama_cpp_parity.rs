//! Airlock against llama.cpp itself on the same GGUF file: files written by llama.cpp's own
//! converter and quantizer (`fixtures/gguf/generate.py --llama-cpp`), with llama.cpp's own
//! last-position logits and greedy ids (`fixtures/gguf/llama_cpp_logits.json`, one thread,
//! f32 KV cache) for the three prompts of `expected.json`.
//!
//! How close the two can be depends on llama.cpp's CPU arithmetic, not on ours:
//! - GELU: ggml's CPU `gelu` reads a table indexed by the input rounded to f16 (GGML_GELU_FP16),
//!   so each GeGLU activation carries up to 2⁻¹¹ relative error that transformers (and we)
//!   do not have: 1–2·10⁻³ on these fixtures' logits (bound 5·10⁻³ for F32 files).
//! - F16 weights: ggml multiplies them with activations rounded to f16 (the F16 type's
//!   `vec_dot_type`), 2⁻¹¹ relative per activation; Airlock keeps activations in f32 there,
//!   as transformers does (and matches transformers to 10⁻⁴ on the same file). These random
//!   models amplify that rounding to 4·10⁻² on the 6-layer Gemma 3 (bound 0.1).
//! - Quantized types: both quantize activations to 8 bits per block (Q8_0 / Q8_K) and sum
//!   in f32 in another order, GELU table on top. A rounding step is amax/127, so the two
//!   engines' activations may differ by up to 2⁻⁷ relative, 16× the f16 rounding above:
//!   16 × 4·10⁻² ≈ 0.6 on these models' logits (bound 0.6; measured 0.05–0.56). Greedy ids:
//!   all 16 identical on the Q4_K_M file (llama.cpp's margins there are clear of the
//!   difference); on the Q8_0 files, every step until llama.cpp's own top-1 margin first
//!   falls below twice the measured logit difference (where a flip is rounding, not a bug).

use std::path::PathBuf;

use airlock_engine::{
    DeviceChoice, GenerateOptions, KvCacheDtype, Prompt, SamplingParams, generate_once,
};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn json(path: PathBuf) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_u64().map(|x| x as u32))
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_f64().map(|x| x as f32))
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Per llama.cpp-made file: the logit bound against llama.cpp, and whether all 16 greedy
/// ids must agree (else only the steps where llama.cpp's margin exceeds twice the bound).
fn expectation(file: &str) -> (f32, bool) {
    match file.rsplit('-').next().unwrap_or_default() {
        "f32" => (5e-3, true),
        "f16" => (0.1, true),
        "q4_k_m" => (0.6, true),
        _ => (0.6, false),
    }
}

/// Runs every llama.cpp-made GGUF of `source` (an `expected.json` variant) and checks it
/// against llama.cpp's own output, and (unquantized files) against transformers.
fn check(source: &str) -> anyhow::Result<()> {
    let refs = json(fixtures().join("gguf/llama_cpp_logits.json"))?;
    let expected = json(fixtures().join("expected.json"))?;
    let mut seen = 0;
    for (name, prompts) in refs.as_object().into_iter().flatten() {
        if name.rsplit_once('-').map(|(s, _)| s) != Some(source) {
            continue;
        }
        seen += 1;
        let kind = name.rsplit('-').next().unwrap_or_default();
        let (bound, all_greedy) = expectation(name);
        let dir = fixtures().join("gguf").join(name);
        for (i, r) in prompts.as_array().into_iter().flatten().enumerate() {
            let prompt = ids(&r["prompt_ids"]);
            let mut opts = GenerateOptions::new(&dir, Prompt::TokenIds(prompt.clone()));
            opts.device = DeviceChoice::Cpu;
            opts.verify_manifest = true;
            opts.keep_logits = true;
            // The references were computed with an f32 KV cache.
            opts.kv_cache_dtype = KvCacheDtype::F32;
            opts.params = SamplingParams {
                max_tokens: Some(16),
                ignore_eos: true,
                ..Default::default()
            };
            let report = generate_once(&opts)?;
            let logits = report.logits.unwrap_or_default();
            let want = floats(&r["last_logits"]);
            anyhow::ensure!(
                logits.len() == want.len(),
                "{name}/{i}: {} logits, llama.cpp has {}",
                logits.len(),
                want.len()
            );
            let vs_llama = max_abs_diff(&logits, &want);
            // Greedy ids: identical while llama.cpp's margin leaves room for the bound.
            let want_ids = ids(&r["greedy_ids"]);
            let margins = floats(&r["greedy_margins"]);
            let clear = if all_greedy {
                16
            } else {
                margins.iter().take_while(|m| **m > 2.0 * vs_llama).count()
            };
            let agree = report
                .generated_ids
                .iter()
                .zip(&want_ids)
                .take_while(|(a, b)| a == b)
                .count();
            let hf = &expected["variants"][source]["prompts"][i];
            let vs_hf = max_abs_diff(&logits, &floats(&hf["last_logits"]));
            println!(
                "{name}/prompt{i}: max|Δlogit| vs llama.cpp {vs_llama:.2e} (bound {bound:.0e}), \
                 vs transformers {vs_hf:.2e}; greedy ids agree on {agree}/16 (required: {clear})"
            );
            anyhow::ensure!(
                vs_llama <= bound,
                "{name}/{i}: logits differ from llama.cpp's by {vs_llama} (> {bound})"
            );
            anyhow::ensure!(
                agree >= clear,
                "{name}/{i}: greedy {:?} vs llama.cpp {want_ids:?}: {agree} agree, {clear} \
                 required",
                report.generated_ids
            );
            anyhow::ensure!(
                hf["prompt_ids"] == r["prompt_ids"],
                "{name}/{i}: the reference was made for other prompt ids"
            );
            // The same arithmetic as transformers on an unquantized file: the file's
            // tensors (norms stored as 1 + w, names, layer types, RoPE bases) read right.
            if kind == "f32" || kind == "f16" {
                anyhow::ensure!(
                    vs_hf <= 1e-3 && report.generated_ids == ids(&hf["greedy_ids"]),
                    "{name}/{i}: {vs_hf} from transformers, greedy {:?}",
                    report.generated_ids
                );
            }
        }
    }
    anyhow::ensure!(seen > 0, "no llama.cpp reference for `{source}`");
    Ok(())
}

#[test]
fn gemma2_matches_llama_cpp() -> anyhow::Result<()> {
    check("gemma2_softcap_bf16")
}

#[test]
fn gemma3_matches_llama_cpp() -> anyhow::Result<()> {
    check("gemma3_text_bf16")
}
