//! GPU (wgpu) parity with `transformers`, run where a wgpu adapter exists (CI installs
//! lavapipe, `mesa-vulkan-drivers`, and sets `AIRLOCK_REQUIRE_GPU_TEST=1` so that a missing
//! or crashing adapter fails the test instead of skipping it). Greedy ids must be identical; logits within 2e-3:
//! software adapters run f32 like the CPU but sum in another order (tiled matmul, parallel
//! reductions), a few ulps per layer; 2e-3 is still below the smallest greedy margin in
//! the fixtures that matters (greedy equality is checked separately).
//!
//! The check runs in a child process: a Vulkan driver that crashes compiling a shader
//! (lavapipe did, in `vkCreateComputePipelines`, on cubecl's SPIR-V shaders before burn's `vulkan` feature was turned off) kills its process, and
//! that must read as "this driver cannot run the test", not as a dead test harness.

mod mixed;
mod parity;

use airlock_engine::{DeviceChoice, gpu_available};

const CHILD: &str = "AIRLOCK_GPU_PARITY_CHILD";
/// Set (to anything but `0`) where a wgpu adapter must exist and work, as in CI.
const REQUIRE: &str = "AIRLOCK_REQUIRE_GPU_TEST";

fn required() -> bool {
    std::env::var(REQUIRE).is_ok_and(|v| v != "0")
}

#[test]
fn gpu_matches_transformers() -> anyhow::Result<()> {
    if std::env::var_os(CHILD).is_some() {
        parity::check_all(DeviceChoice::Gpu, 2e-3)?;
        return quantized_gguf_dequantizes_at_load();
    }
    if !gpu_available() {
        anyhow::ensure!(!required(), "{REQUIRE} is set but there is no wgpu adapter");
        println!("skipped: no Vulkan adapter");
        return Ok(());
    }
    let out = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "gpu_matches_transformers",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    if out.status.success() {
        return Ok(());
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = out.status.signal() {
            anyhow::ensure!(
                !required(),
                "{REQUIRE} is set but the GPU process died of signal {sig}:\n{stdout}"
            );
            println!(
                "skipped: the Vulkan driver crashed the GPU process (signal {sig}); this driver \
                 cannot run burn's compute shaders"
            );
            return Ok(());
        }
    }
    anyhow::bail!(
        "GPU parity failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A GGUF file in the 32-element block types (Q4_1, Q5_0, Q5_1, IQ4_NL, Q8_0) on the GPU,
/// where every tensor is dequantized at load to the device dtype, against the CPU running
/// the same weights dequantized to f32: within f16 rounding of weights and activations
/// (2⁻¹¹ relative per value, a few ulps per layer: 2 % of the largest logit), and the same
/// first greedy token.
fn quantized_gguf_dequantizes_at_load() -> anyhow::Result<()> {
    let name = "llama_gqa_f32-mix32";
    let gguf = mixed::fixtures().join("gguf").join(name);
    let deq = mixed::dequantized(name, &mixed::config_of(&mixed::vocab_source())?)?;
    let prompt = [507, 12, 300, 45, 61, 2, 411];
    let (gpu, gpu_ids) = mixed::run(&gguf, &prompt, DeviceChoice::Gpu)?;
    let (cpu, cpu_ids) = mixed::run(deq.path(), &prompt, DeviceChoice::Cpu)?;
    let scale = cpu.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = mixed::max_abs_diff(&gpu, &cpu);
    println!("{name} on the GPU: max|Δlogit| {diff:.3e} vs the CPU on dequantized weights");
    anyhow::ensure!(
        gpu.len() == cpu.len() && diff <= 0.02 * scale,
        "{name}: {diff}"
    );
    anyhow::ensure!(
        gpu_ids.first() == cpu_ids.first(),
        "{name}: {gpu_ids:?} vs {cpu_ids:?}"
    );
    Ok(())
}
