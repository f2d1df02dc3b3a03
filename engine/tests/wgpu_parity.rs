//! GPU (wgpu) parity with `transformers`, run only where a wgpu adapter exists (CI installs
//! lavapipe, `mesa-vulkan-drivers`). Greedy ids must be identical; logits within 2e-3:
//! the GPU runs f32 on software adapters but sums in a different order (tiled matmul,
//! parallel reductions), which costs a few ulps per layer — two orders of magnitude below the
//! smallest greedy margin in the fixtures (2.8e-4 is the worst case, and greedy equality is
//! checked separately).

mod parity;

use airlock_engine::{DeviceChoice, gpu_available};

#[test]
fn gpu_matches_transformers() -> anyhow::Result<()> {
    if !gpu_available() {
        println!("skipped: no Vulkan adapter");
        return Ok(());
    }
    parity::check_all(DeviceChoice::Gpu, 2e-3)
}
