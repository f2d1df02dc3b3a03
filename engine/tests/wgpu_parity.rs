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
        return parity::check_all(DeviceChoice::Gpu, 2e-3);
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
