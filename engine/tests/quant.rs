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

/// End to end through the model: q8 and q4 logits stay within bounds of the stored
/// weights' over a teacher-forced text, and q8 keeps most greedy choices (the quality report
/// `quant-quality` prints the same figures for every fixture).
#[test]
fn quantized_logits_stay_close_to_the_stored_weights() -> anyhow::Result<()> {
    use airlock_engine::{DeviceChoice, Quantize, Scorer};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_gqa_f32");
    let text = "The gateway runs inside an isolated network. Operators load a model from \
                a local directory and every request is written to the audit log.";
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &x)| if x > b.1 { (i, x) } else { b },
            )
            .0
    };
    let run = |q: Option<Quantize>| -> anyhow::Result<(String, Vec<Vec<f32>>)> {
        let mut s = Scorer::load(&dir, DeviceChoice::Cpu, q)?;
        let ids = s.encode(text)?;
        let logits = ids
            .iter()
            .map(|&t| s.feed(&[t]))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((s.device().to_owned(), logits))
    };
    let (_, reference) = run(None)?;
    anyhow::ensure!(reference.len() > 16, "text too short: {}", reference.len());
    for (q, max_bound, mean_bound, min_agreement) in [
        (Quantize::Q8, 0.5, 0.05, 0.85),
        (Quantize::Q4, 4.0, 0.5, 0.3),
    ] {
        let (device, logits) = run(Some(q))?;
        anyhow::ensure!(
            device.contains(&format!("{}_0 weights", q.name())),
            "device says {device}"
        );
        let (mut max, mut sum, mut n, mut agree) = (0f32, 0f64, 0usize, 0usize);
        for (a, b) in reference.iter().zip(&logits) {
            for (x, y) in a.iter().zip(b) {
                max = max.max((x - y).abs());
                sum += f64::from((x - y).abs());
            }
            n += a.len();
            agree += usize::from(argmax(a) == argmax(b));
        }
        let mean = sum / n as f64;
        let agreement = agree as f64 / reference.len() as f64;
        println!(
            "{}: max {max:.4} mean {mean:.5} agreement {agreement:.3}",
            q.name()
        );
        anyhow::ensure!(max > 0.0, "{}: identical logits: not quantized?", q.name());
        anyhow::ensure!(max < max_bound, "{}: max |dlogit| {max}", q.name());
        anyhow::ensure!(mean < mean_bound, "{}: mean |dlogit| {mean}", q.name());
        anyhow::ensure!(
            agreement >= min_agreement,
            "{}: top-1 agreement {agreement}",
            q.name()
        );
    }
    Ok(())
}
