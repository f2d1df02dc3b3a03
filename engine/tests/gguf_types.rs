//! End to end on the CPU: GGUF files whose tensors mix every block type the engine reads
//! (`fixtures/gguf/generate_mixed.py`) load, generate, and give logits close to the f32
//! models'.
//!
//! Two bounds, each from where the error comes from:
//!
//! * against the **dequantized** model (the same weights expanded to f32, run by the f32
//!   kernels) only the activations' 8-bit rounding differs: at most half a step, 1/254 of
//!   its block's largest value, per element and per matmul (`quant_types.rs` checks that
//!   bound for single products), compounding over the seven matmuls on the path and
//!   through attention. Measured: 1.7–2.1 % of the largest logit for both fixtures (the
//!   256-wide one quantizes per 256 elements, `Q8_K`, the other per 32); the bound is 5 %.
//!   A block read wrongly (scale bits, nibble or plane order, a sign) moves the logits by
//!   the weights' own size, which is what the quantization error below is made of: 16–40 %
//!   of the largest logit in these fixtures, and more for a layout error.
//! * against the **original** f32 model the weights' quantization error adds in: its effect
//!   on the logits is measured directly as |dequantized − original|, so the quantized file
//!   must stay within that plus the activation bound (triangle inequality).

mod mixed;

use airlock_engine::DeviceChoice;
use mixed::{K256_PROMPTS, config_of, dequantized, fixtures, k256_original, max_abs_diff, run};
use serde_json::Value;

/// The activations' share of |quantized − dequantized|, relative to the largest logit.
const ACTIVATION_ROUNDING: f32 = 0.05;

fn check(
    name: &str,
    original: &std::path::Path,
    config: &Value,
    prompts: &[Vec<u32>],
) -> anyhow::Result<()> {
    let gguf = fixtures().join("gguf").join(name);
    let deq = dequantized(name, config)?;
    for (i, prompt) in prompts.iter().enumerate() {
        let (q, q_ids) = run(&gguf, prompt, DeviceChoice::Cpu)?;
        let (d, d_ids) = run(deq.path(), prompt, DeviceChoice::Cpu)?;
        let (o, _) = run(original, prompt, DeviceChoice::Cpu)?;
        anyhow::ensure!(
            q.len() == d.len() && q.len() == o.len() && !q.is_empty(),
            "{name}/{i}: logits"
        );
        anyhow::ensure!(
            q.iter().all(|v| v.is_finite()),
            "{name}/{i}: non-finite logits"
        );
        let vs_deq = max_abs_diff(&q, &d);
        let weights = max_abs_diff(&d, &o);
        let vs_orig = max_abs_diff(&q, &o);
        let scale = d.iter().fold(0f32, |m, v| m.max(v.abs()));
        let act_bound = ACTIVATION_ROUNDING * scale;
        let agree = q_ids.iter().zip(&d_ids).take_while(|(a, b)| a == b).count();
        println!(
            "{name}/{i}: max|logit| {scale:.2}, max|Δlogit| vs dequantized {vs_deq:.3e} (bound \
             {act_bound:.3}), vs original {vs_orig:.3e} (weights' own error {weights:.3e}), greedy \
             prefix vs dequantized {agree}/8"
        );
        anyhow::ensure!(
            vs_deq <= act_bound,
            "{name}/{i}: {vs_deq} from the dequantized model"
        );
        anyhow::ensure!(
            vs_orig <= weights + act_bound,
            "{name}/{i}: {vs_orig} from the original model (weights account for {weights})"
        );
        // The first token is decided by these very logits; later ones may part ways once
        // a near-tie flips (then the contexts differ).
        anyhow::ensure!(
            agree >= 1,
            "{name}/{i}: first greedy token differs: {q_ids:?} vs {d_ids:?}"
        );
    }
    Ok(())
}

#[test]
fn legacy_and_iq4_nl_mix_is_close_to_f32() -> anyhow::Result<()> {
    let src = fixtures().join("llama_gqa_f32");
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json"))?)?;
    let prompts: Vec<Vec<u32>> = expected["variants"]["llama_gqa_f32"]["prompts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            p["prompt_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_u64().map(|x| x as u32))
                .collect()
        })
        .collect();
    anyhow::ensure!(!prompts.is_empty(), "no prompts");
    check("llama_gqa_f32-mix32", &src, &config_of(&src)?, &prompts)
}

#[test]
fn k_quant_and_iq4_xs_mix_is_close_to_f32() -> anyhow::Result<()> {
    let (config, original) = k256_original()?;
    let prompts: Vec<Vec<u32>> = K256_PROMPTS.iter().map(|p| p.to_vec()).collect();
    check("k256-mix", original.path(), &config, &prompts)
}
