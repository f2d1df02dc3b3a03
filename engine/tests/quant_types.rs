//! Every GGUF block type against gguf-py (llama.cpp's Python reference dequantizers), on the
//! random blocks of `fixtures/quant/` (see its README): dequantization bit for bit, and the
//! CPU kernels' dot products against the dequantized weights.

use std::path::PathBuf;

use airlock_engine::kernels::{Format, PackedMatrix};
use airlock_engine::quant::QType;
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant")
}

/// `(type, rows, cols, blocks, gguf-py's dequantization)`.
type Fixture = (QType, usize, usize, Vec<u8>, Vec<f32>);

/// Every fixture in `index.json`.
fn fixtures() -> anyhow::Result<Vec<Fixture>> {
    let index: Value = serde_json::from_str(&std::fs::read_to_string(dir().join("index.json"))?)?;
    let index = index
        .as_object()
        .ok_or_else(|| anyhow::anyhow!("index.json: not an object"))?;
    let mut out = Vec::new();
    for t in QType::ALL {
        let entry = index
            .get(t.name())
            .ok_or_else(|| anyhow::anyhow!("index.json: no fixture for {t}"))?;
        let dim = |k: &str| {
            entry[k]
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| anyhow::anyhow!("index.json: {t}.{k}"))
        };
        let (rows, cols) = (dim("rows")?, dim("cols")?);
        let name = t.name().to_lowercase();
        let blocks = std::fs::read(dir().join(format!("{name}.bin")))?;
        let reference: Vec<f32> = std::fs::read(dir().join(format!("{name}.f32")))?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        anyhow::ensure!(reference.len() == rows * cols, "{t}: reference length");
        anyhow::ensure!(
            blocks.len() == rows * cols / t.block_elems() * t.block_bytes(),
            "{t}: {} bytes for [{rows}, {cols}]",
            blocks.len()
        );
        out.push((t, rows, cols, blocks, reference));
    }
    Ok(out)
}

#[test]
fn dequantization_matches_gguf_py_bit_for_bit() -> anyhow::Result<()> {
    // gguf-py computes in float32 in ggml's order (`d·sc` per group, then `·q`, then `− dmin·m`
    // or `+ m`), and so does `QType::dequantize`: every value, signed zeros included, is the
    // same float.
    for (t, _, _, blocks, reference) in fixtures()? {
        let got = t.dequantize(&blocks)?;
        assert_eq!(got.len(), reference.len(), "{t}");
        for (i, (g, w)) in got.iter().zip(&reference).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{t} element {i}: {g} vs {w}");
        }
    }
    Ok(())
}

fn activations(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            // An outlier now and then, as real activations have.
            if i % 97 == 5 { u * 40.0 } else { u }
        })
        .collect()
}

/// `x` as the kernels quantize it: per `block` elements `d = amax / 127`, `q = round(x / d)`
/// ties to even.
fn quantized(x: &[f32], block: usize) -> Vec<f32> {
    x.chunks(block)
        .flat_map(|b| {
            let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            b.iter().map(move |&v| (v * id).round_ties_even() * d)
        })
        .collect()
}

#[test]
fn dot_products_match_the_dequantized_weights() -> anyhow::Result<()> {
    let rows = 3;
    for (t, out, inp, blocks, w) in fixtures()? {
        let m = PackedMatrix::from_blocks(&blocks, out, inp, Format::Quant(t))?;
        assert_eq!(m.format(), Format::Quant(t));
        let x = activations(rows * inp, inp as u64 + t.ggml_id() as u64);
        let y = m
            .matmul_t(&x, rows)
            .ok_or_else(|| anyhow::anyhow!("{t}: shape"))?;
        // Activations are quantized per block of the weights' size (llama.cpp's Q8_0 / Q8_1
        // for the 32-element types, Q8_K for the 256-element ones).
        let block = t.block_elems();
        for r in 0..rows {
            let xr = &x[r * inp..(r + 1) * inp];
            let xq = quantized(xr, block);
            for o in 0..out {
                let wr = &w[o * inp..(o + 1) * inp];
                let got = f64::from(y[r * out + o]);
                // (1) Against the dequantized weights times the quantized activations: the
                // kernel computes exactly this sum, except that it accumulates in f32 (one
                // rounding per block, each ≤ 2⁻²⁴ of the running magnitude ≤ Σ|w·x|) and
                // scales each block by `d_w·d_x` rounded once: a few units of 2⁻²⁴ of Σ|w·x|.
                let exact: f64 = wr
                    .iter()
                    .zip(&xq)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                // The weights' own dequantization rounds `dl·q` and `ml` before subtracting
                // them, so the scale of that rounding is the block's largest weight, not each
                // weight (which may be a near-cancellation).
                let mag: f64 = wr
                    .chunks(block)
                    .zip(xq.chunks(block))
                    .map(|(wb, xb)| {
                        let wmax = wb.iter().fold(0f32, |m, v| m.max(v.abs()));
                        f64::from(wmax) * xb.iter().map(|&v| f64::from(v.abs())).sum::<f64>()
                    })
                    .sum();
                let blocks = (inp / block) as f64;
                let tol = mag * 4.0 * (2.0 + blocks) * f64::from(f32::EPSILON) + 1e-30;
                assert!(
                    (got - exact).abs() <= tol,
                    "{t} row {r} col {o}: {got} vs {exact} (tolerance {tol})"
                );
                // (2) Against the unquantized activations: each activation moves by at most
                // half a step `amax_b / 254` of its block, so the product moves by at most
                // Σ_b amax_b / 254 · Σ_{i∈b} |w_i| (plus the rounding above).
                let full: f64 = wr
                    .iter()
                    .zip(xr)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                let bound: f64 = wr
                    .chunks(block)
                    .zip(xr.chunks(block))
                    .map(|(wb, xb)| {
                        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                        f64::from(amax) / 254.0
                            * wb.iter().map(|&v| f64::from(v.abs())).sum::<f64>()
                    })
                    .sum::<f64>()
                    * 1.001
                    + tol;
                assert!(
                    (got - full).abs() <= bound,
                    "{t} row {r} col {o}: {got} vs {full} (bound {bound})"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn blocks_must_be_whole_and_match_the_shape() {
    for t in QType::ALL {
        let n = t.block_elems();
        let bytes = vec![0u8; 2 * t.block_bytes()];
        assert!(PackedMatrix::from_blocks(&bytes, 2, n, Format::Quant(t)).is_ok());
        assert!(PackedMatrix::from_blocks(&bytes, 1, n, Format::Quant(t)).is_err());
        assert!(PackedMatrix::from_blocks(&bytes, 2, n / 2, Format::Quant(t)).is_err());
        assert!(t.dequantize(&vec![0u8; t.block_bytes() + 1]).is_err());
        assert_eq!(QType::from_ggml(t.ggml_id()), Some(t));
    }
}
