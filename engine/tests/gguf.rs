//! GGUF model directories (converted from the HF fixtures by `bench/hf_to_gguf.py`, see
//! `fixtures/gguf/generate.py`): logits against `transformers` and the safetensors model,
//! the tokenizer and chat template rebuilt from GGUF metadata, and hostile files.

use std::path::{Path, PathBuf};

use airlock_engine::{
    ChatMessage, DeviceChoice, EngineError, GenerateOptions, KvCacheDtype, Prompt, SamplingParams,
    generate_once,
};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected() -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(
        fixtures().join("expected.json"),
    )?)?)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_u64().map(|x| x as u32))
        .collect()
}

/// Last-position logits and 16 greedy ids (EOS ignored) for `prompt` on the CPU.
fn run(dir: &Path, prompt: &[u32]) -> anyhow::Result<(Vec<f32>, Vec<u32>)> {
    let mut opts = GenerateOptions::new(dir, Prompt::TokenIds(prompt.to_vec()));
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
    let r = generate_once(&opts)?;
    Ok((r.logits.unwrap_or_default(), r.generated_ids))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// How far Airlock's Q8_0/Q4_0 logits may sit from `transformers` run on the same
/// dequantized weights. The CPU kernels quantize activations per row to 8 bits as llama.cpp
/// does (engine/src/kernels/qdot.rs), which moves these fixtures' logits by ~0.05; a block
/// read wrongly (scale, nibble order, row permutation) moves them by the quantization error
/// itself or more (~1 for Q4_0), so the bound still isolates the reading of the blocks.
const ACTIVATION_ROUNDING: f32 = 0.15;

/// For the GGUF variant `gguf` of `source`: max |Δlogit| against `transformers` and against
/// the safetensors directory, and how many of 16 greedy tokens agree with `transformers`.
/// Quantized variants are also held to `transformers` run on the same dequantized weights
/// (`dequantized_logits.json`), which isolates the engine's reading of the blocks from the
/// quantization error itself.
fn check(
    gguf: &str,
    source: &str,
    tol_vs_safetensors: f32,
    tol_vs_reference: f32,
    min_greedy_agree: usize,
) -> anyhow::Result<()> {
    let expected = expected()?;
    let dequantized: Value = serde_json::from_str(&std::fs::read_to_string(
        fixtures().join("gguf/dequantized_logits.json"),
    )?)?;
    let v = &expected["variants"][source];
    let dir = fixtures().join("gguf").join(gguf);
    for (i, p) in v["prompts"].as_array().into_iter().flatten().enumerate() {
        let prompt = ids(&p["prompt_ids"]);
        let (logits, greedy) = run(&dir, &prompt)?;
        let (st_logits, _) = run(&fixtures().join(source), &prompt)?;
        let want: Vec<f32> = p["last_logits"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_f64().map(|x| x as f32))
            .collect();
        anyhow::ensure!(
            logits.len() == want.len(),
            "{gguf}/{i}: {} logits, expected {}",
            logits.len(),
            want.len()
        );
        let vs_st = max_abs_diff(&logits, &st_logits);
        let vs_ref = max_abs_diff(&logits, &want);
        // Greedy agreement: the length of the common prefix (after a divergence the
        // contexts differ, so later tokens are not comparable).
        let want_greedy = ids(&p["greedy_ids"]);
        let agree = greedy
            .iter()
            .zip(&want_greedy)
            .take_while(|(a, b)| a == b)
            .count();
        println!(
            "{gguf}/{i}: max|Δlogit| vs safetensors {vs_st:.2e}, vs transformers {vs_ref:.2e}, \
             greedy prefix {agree}/16"
        );
        if let Some(deq) = dequantized[gguf][i].as_array() {
            let deq: Vec<f32> = deq
                .iter()
                .filter_map(|x| x.as_f64().map(|x| x as f32))
                .collect();
            let vs_deq = max_abs_diff(&logits, &deq);
            println!("{gguf}/{i}: max|Δlogit| vs transformers on dequantized weights {vs_deq:.2e}");
            anyhow::ensure!(
                deq.len() == logits.len() && vs_deq <= ACTIVATION_ROUNDING,
                "{gguf}/{i}: logits differ from transformers on the same dequantized weights by \
                 {vs_deq}"
            );
        } else {
            anyhow::ensure!(
                !gguf.contains("q8_0") && !gguf.contains("q4_0"),
                "{gguf}: no reference"
            );
        }
        anyhow::ensure!(
            vs_st <= tol_vs_safetensors,
            "{gguf}/{i}: logits differ from the safetensors model by {vs_st}"
        );
        anyhow::ensure!(
            vs_ref <= tol_vs_reference,
            "{gguf}/{i}: logits differ from transformers by {vs_ref}"
        );
        anyhow::ensure!(
            agree >= min_greedy_agree,
            "{gguf}/{i}: only {agree} of 16 greedy tokens agree ({greedy:?} vs {want_greedy:?})"
        );
    }
    Ok(())
}

#[test]
fn f32_gguf_matches_safetensors() -> anyhow::Result<()> {
    check("llama_gqa_f32-f32", "llama_gqa_f32", 1e-5, 1e-3, 16)
}

#[test]
fn f16_gguf_is_close() -> anyhow::Result<()> {
    check("llama_gqa_f32-f16", "llama_gqa_f32", 2e-2, 2e-2, 8)
}

#[test]
fn f16_gguf_of_bf16_weights_is_exact_with_llama3_rope_factors() -> anyhow::Result<()> {
    // bf16 → f16 is exact for these weights, so any difference would come from the GGUF
    // path itself: the rope_freqs tensor, the tied head, the q/k row permutation (MQA).
    check(
        "llama3_ropescaling_bf16-f16",
        "llama3_ropescaling_bf16",
        1e-4,
        1e-3,
        16,
    )
}

#[test]
fn qwen2_gguf_keeps_biases_and_padded_vocab() -> anyhow::Result<()> {
    check("qwen2_bias-f16", "qwen2_bias", 1e-4, 1e-3, 16)
}

#[test]
fn q8_0_gguf_within_quantization_error() -> anyhow::Result<()> {
    check("llama_gqa_f32-q8_0", "llama_gqa_f32", 0.1, 0.1, 4)
}

#[test]
fn q4_0_gguf_within_quantization_error() -> anyhow::Result<()> {
    // 4-bit blocks of these N(0, 0.1) random weights move logits by up to ~1.1 (as much in
    // transformers on the dequantized weights), more than this random model's top-1 margins,
    // so greedy agreement with the unquantized model is not asked; the dequantized-weights
    // reference (`ACTIVATION_ROUNDING`) is what holds the Q4_0 path to account.
    check("llama_gqa_f32-q4_0", "llama_gqa_f32", 1.5, 1.5, 0)
}

fn prompt_ids(dir: &Path, prompt: Prompt) -> anyhow::Result<Vec<u32>> {
    let mut opts = GenerateOptions::new(dir, prompt);
    opts.device = DeviceChoice::Cpu;
    opts.params = SamplingParams {
        max_tokens: Some(1),
        ..Default::default()
    };
    Ok(generate_once(&opts)?.prompt_ids)
}

/// The tokenizer and chat template rebuilt from GGUF metadata (no tokenizer.json in these
/// directories) reproduce `transformers` exactly, except where llama.cpp itself differs from
/// it (the rebuilt tokenizer follows llama.cpp: see engine/src/gguf/vocab.rs).
#[test]
fn tokenizer_and_chat_template_from_gguf_metadata() -> anyhow::Result<()> {
    let expected = expected()?;
    for (gguf, source) in [
        ("llama_gqa_f32-f32", "llama_gqa_f32"),
        ("qwen2_bias-f16", "qwen2_bias"),
    ] {
        let dir = fixtures().join("gguf").join(gguf);
        anyhow::ensure!(!dir.join("tokenizer.json").exists());
        let v = &expected["variants"][source];
        for case in v["tokenizer"].as_array().into_iter().flatten() {
            let text = case["text"].as_str().unwrap_or_default();
            let mut want = ids(&case["ids"]);
            if want.is_empty() {
                continue;
            }
            if gguf == "qwen2_bias-f16" && text.contains("NFD input") {
                // Qwen2's tokenizer.json NFC-normalizes; llama.cpp, whose ids a GGUF-rebuilt
                // tokenizer follows, does not (llama-cpp-python 0.3.36 on this file).
                want = vec![
                    66, 64, 69, 68, 136, 223, 347, 45, 37, 35, 284, 79, 375, 11, 220, 45, 37, 34,
                    12, 77, 259, 76, 310, 72, 89, 282, 8,
                ];
            }
            let got = prompt_ids(&dir, Prompt::Text(text.into()))?;
            anyhow::ensure!(got == want, "{gguf}: {text:?} → {got:?}, expected {want:?}");
        }
        for case in v["chat"].as_array().into_iter().flatten() {
            if case["add_generation_prompt"].as_bool() != Some(true) {
                continue;
            }
            let messages: Vec<ChatMessage> = case["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| ChatMessage {
                    role: m["role"].as_str().unwrap_or_default().into(),
                    content: m["content"].as_str().unwrap_or_default().into(),
                    ..ChatMessage::default()
                })
                .collect();
            let got = prompt_ids(&dir, Prompt::Chat(messages, Vec::new()))?;
            anyhow::ensure!(got == ids(&case["ids"]), "{gguf}: chat ids differ: {got:?}");
        }
    }
    Ok(())
}

// ---- hostile files ----

/// A copy of the F32 GGUF directory (manifest dropped) with `edit` applied to the file.
fn hostile(edit: impl FnOnce(&mut Vec<u8>)) -> anyhow::Result<(tempfile::TempDir, String)> {
    let tmp = tempfile::tempdir()?;
    let mut bytes = std::fs::read(fixtures().join("gguf/llama_gqa_f32-f32/model.gguf"))?;
    edit(&mut bytes);
    std::fs::write(tmp.path().join("model.gguf"), &bytes)?;
    let err = match generate_once(&GenerateOptions::new(
        tmp.path(),
        Prompt::TokenIds(vec![1, 2]),
    )) {
        Err(e) => e,
        Ok(_) => anyhow::bail!("loading the edited file should fail"),
    };
    anyhow::ensure!(
        matches!(err, EngineError::Load { .. }),
        "not a load error: {err:?}"
    );
    let msg = err.to_string();
    anyhow::ensure!(msg.contains("model.gguf"), "file not named: {msg}");
    Ok((tmp, msg))
}

/// Byte offset of the tensor info of `name` (just after its name).
fn tensor_info(bytes: &[u8], name: &str) -> Option<usize> {
    bytes
        .windows(name.len())
        .position(|w| w == name.as_bytes())
        .map(|p| p + name.len())
}

#[test]
fn truncated_file_is_a_precise_error() -> anyhow::Result<()> {
    let (_t, msg) = hostile(|b| b.truncate(b.len() - 100))?;
    assert!(
        msg.contains("output_norm.weight") && msg.contains("beyond the end"),
        "{msg}"
    );
    let (_t, msg) = hostile(|b| b.truncate(20))?;
    assert!(msg.contains("truncated"), "{msg}");
    Ok(())
}

#[test]
fn bad_magic_is_a_precise_error() -> anyhow::Result<()> {
    let (_t, msg) = hostile(|b| b[..4].copy_from_slice(b"GGML"))?;
    assert!(msg.contains("not a GGUF file"), "{msg}");
    Ok(())
}

#[test]
fn huge_counts_and_lengths_are_refused_before_allocating() -> anyhow::Result<()> {
    // tensor count = u64::MAX
    let (_t, msg) = hostile(|b| b[8..16].copy_from_slice(&u64::MAX.to_le_bytes()))?;
    assert!(msg.contains("tensor count"), "{msg}");
    // the first key's length = u64::MAX
    let (_t, msg) = hostile(|b| b[24..32].copy_from_slice(&u64::MAX.to_le_bytes()))?;
    assert!(msg.contains("string length"), "{msg}");
    Ok(())
}

#[test]
fn tensor_data_out_of_bounds_is_a_precise_error() -> anyhow::Result<()> {
    let (_t, msg) = hostile(|b| {
        if let Some(p) = tensor_info(b, "blk.1.attn_v.weight") {
            // n_dims (4) + 2 dims (16) + type (4), then the offset.
            let at = p + 24;
            b[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        }
    })?;
    assert!(
        msg.contains("blk.1.attn_v.weight") && msg.contains("beyond the end"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn wrong_shape_is_a_precise_error() -> anyhow::Result<()> {
    let (_t, msg) = hostile(|b| {
        if let Some(p) = tensor_info(b, "blk.0.attn_v.weight") {
            // ne[1] (output rows) 32 → 16: still inside the file, but not what the config says.
            let at = p + 12;
            b[at..at + 8].copy_from_slice(&16u64.to_le_bytes());
        }
    })?;
    assert!(
        msg.contains("model.layers.0.self_attn.v_proj.weight")
            && msg.contains("[16, 64]")
            && msg.contains("[32, 64]"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn unsupported_tensor_type_is_a_precise_error() -> anyhow::Result<()> {
    let (_t, msg) = hostile(|b| {
        if let Some(p) = tensor_info(b, "blk.0.ffn_up.weight") {
            let at = p + 20;
            b[at..at + 4].copy_from_slice(&16u32.to_le_bytes()); // IQ2_XXS
        }
    })?;
    assert!(
        msg.contains("unsupported tensor type IQ2_XXS (ggml type 16)")
            && msg.contains("blk.0.ffn_up.weight")
            && msg.contains("supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K")
            && msg.contains("IQ4_XS"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn two_gguf_files_are_refused() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = fixtures().join("gguf/llama_gqa_f32-q4_0/model.gguf");
    std::fs::copy(&src, tmp.path().join("a.gguf"))?;
    std::fs::copy(&src, tmp.path().join("b.gguf"))?;
    let err = generate_once(&GenerateOptions::new(tmp.path(), Prompt::TokenIds(vec![1])))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("a.gguf, b.gguf"), "{err}");
    Ok(())
}

#[test]
fn manifest_covers_the_gguf_file() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = fixtures().join("gguf/llama_gqa_f32-q4_0");
    for f in ["model.gguf", "airlock-manifest.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f))?;
    }
    let mut bytes = std::fs::read(tmp.path().join("model.gguf"))?;
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(tmp.path().join("model.gguf"), &bytes)?;
    let mut opts = GenerateOptions::new(tmp.path(), Prompt::TokenIds(vec![1]));
    opts.verify_manifest = true;
    let err = generate_once(&opts).err();
    assert!(
        matches!(&err, Some(EngineError::Integrity { path, .. }) if path.ends_with("model.gguf")),
        "{err:?}"
    );
    // An unlisted second GGUF file is refused by the manifest check, not silently ignored.
    std::fs::copy(src.join("model.gguf"), tmp.path().join("model.gguf"))?;
    std::fs::copy(src.join("model.gguf"), tmp.path().join("extra.gguf"))?;
    let err = generate_once(&opts)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("extra.gguf") && err.contains("not listed"),
        "{err}"
    );
    Ok(())
}
