//! CPU parity with `transformers`: for every fixture variant and prompt, the last-position
//! logits agree within 1e-3 and 16 greedy tokens (EOS ignored) are identical.

use std::path::PathBuf;

use airlock_engine::{
    DeviceChoice, GenerateOptions, KvCacheDtype, Prompt, SamplingParams, generate_once,
};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64().map(|x| x as u32))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs every prompt of every variant on `device` with the CPU's KV cache in `kv` (the
/// references were computed with an `f32` one); fails past `tolerance` or on any other
/// greedy id.
pub fn check_all(device: DeviceChoice, kv: KvCacheDtype, tolerance: f32) -> anyhow::Result<()> {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json"))?)?;
    let steps = expected["greedy_new_tokens"].as_u64().unwrap_or(16) as usize;
    let mut failures = Vec::new();
    for (name, v) in expected["variants"]
        .as_object()
        .ok_or_else(|| anyhow::anyhow!("variants"))?
    {
        let dir = fixtures().join(v["dir"].as_str().unwrap_or_default());
        for (i, p) in v["prompts"].as_array().into_iter().flatten().enumerate() {
            let mut opts = GenerateOptions::new(&dir, Prompt::TokenIds(ids(&p["prompt_ids"])));
            opts.device = device;
            opts.verify_manifest = true;
            opts.keep_logits = true;
            opts.kv_cache_dtype = kv;
            opts.params = SamplingParams {
                max_tokens: Some(steps),
                ignore_eos: true,
                ..Default::default()
            };
            let report = generate_once(&opts)?;
            let logits = report.logits.unwrap_or_default();
            let want: Vec<f32> = p["last_logits"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_f64().map(|x| x as f32))
                .collect();
            anyhow::ensure!(
                logits.len() == want.len(),
                "{name}/{i}: {} logits, expected {}",
                logits.len(),
                want.len()
            );
            let diff = logits
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            let greedy_ok = report.generated_ids == ids(&p["greedy_ids"]);
            println!(
                "{name}/prompt{i}: max |Δlogit| = {diff:.2e}, greedy ids {}",
                if greedy_ok { "identical" } else { "DIFFER" }
            );
            if diff > tolerance || !greedy_ok {
                failures.push(format!(
                    "{name}/prompt{i}: max diff {diff:e}; greedy {:?} vs {:?}",
                    report.generated_ids,
                    ids(&p["greedy_ids"])
                ));
            }
        }
    }
    anyhow::ensure!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
    Ok(())
}

#[test]
fn cpu_matches_transformers() -> anyhow::Result<()> {
    check_all(DeviceChoice::Cpu, KvCacheDtype::F32, 1e-3)
}

/// The default `f16` cache against the same `f32` references: keys and values rounded to
/// 11 significant bits move the logits by ≤ 3e-3 here (2e-2 on Gemma 3, whose logits run
/// larger), and no greedy id.
#[test]
fn cpu_with_the_f16_cache_stays_close() -> anyhow::Result<()> {
    check_all(DeviceChoice::Cpu, KvCacheDtype::F16, 3e-2)
}
