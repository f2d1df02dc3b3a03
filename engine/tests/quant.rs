//! Accuracy bounds of the quantized CPU kernels on a parity fixture's real weights: every
//! projection and the LM head of `llama_gqa_f32`, quantized to `Q8_0` / `Q4_0`, applied to
//! activations, compared with the same product in `f32`. These are accuracy bounds, not
//! timings.

use std::path::PathBuf;

use airlock_engine::kernels::{Format, PackedMatrix};
use safetensors::{Dtype, SafeTensors};

fn activations(rows: usize, inp: usize) -> Vec<f32> {
    let mut s = 0x2545_f491_4f6c_dd1d_u64;
    (0..rows * inp)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// `‖y − y_ref‖ / ‖y_ref‖` over all outputs.
fn relative_error(y: &[f32], reference: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in y.iter().zip(reference) {
        num += f64::from(a - b).powi(2);
        den += f64::from(*b).powi(2);
    }
    (num / den).sqrt()
}

#[test]
fn quantized_projections_stay_close_to_f32() -> anyhow::Result<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llama_gqa_f32/model.safetensors");
    let bytes = std::fs::read(&path)?;
    let st = SafeTensors::deserialize(&bytes)?;
    let mut checked = 0;
    let (mut worst_q8, mut worst_q4) = (0f64, 0f64);
    for (name, view) in st.tensors() {
        if !(name.ends_with("proj.weight") || name == "lm_head.weight") {
            continue;
        }
        anyhow::ensure!(view.dtype() == Dtype::F32, "{name}: fixture is f32");
        let [out, inp] = view.shape() else {
            anyhow::bail!("{name}: not 2-D");
        };
        let (out, inp) = (*out, *inp);
        let w: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let rows = 5;
        let x = activations(rows, inp);
        let reference = PackedMatrix::pack(&w, out, inp, Format::F32)?
            .matmul_t(&x, rows)
            .ok_or_else(|| anyhow::anyhow!("shape"))?;
        for (format, bound, worst) in [
            (Format::Q8_0, 0.01, &mut worst_q8),
            (Format::Q4_0, 0.15, &mut worst_q4),
        ] {
            let m = PackedMatrix::pack(&w, out, inp, format)?;
            let y = m
                .matmul_t(&x, rows)
                .ok_or_else(|| anyhow::anyhow!("shape"))?;
            let err = relative_error(&y, &reference);
            *worst = worst.max(err);
            anyhow::ensure!(
                err < bound,
                "{name} {format:?}: relative error {err:.4} ≥ {bound}"
            );
        }
        checked += 1;
    }
    println!("{checked} matrices; worst relative error q8_0 {worst_q8:.5}, q4_0 {worst_q4:.5}");
    // 7 projections × 2 layers + LM head.
    anyhow::ensure!(checked == 15, "checked {checked} matrices");
    // q8 must be clearly better than q4, or the formats are mixed up.
    anyhow::ensure!(worst_q8 * 4.0 < worst_q4, "q8 {worst_q8} vs q4 {worst_q4}");
    Ok(())
}
