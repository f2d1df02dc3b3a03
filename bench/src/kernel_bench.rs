//! CPU kernel microbenchmark: `y = x · Wᵀ` through the engine's own kernels
//! (`airlock_engine::kernels`) on Llama-3.2-1B-shaped matrices, for each weight format and
//! activation row count. Prints GB/s of weight data and the tokens/s the full 1B layer stack
//! (16 layers + LM head; the head is left out for prefill-sized batches, which only need the
//! last position's logits) would reach at that speed. Asserts nothing.
//!
//! ```sh
//! cargo build --workspace --locked && target/debug/kernel-bench --rows 1,16,512
//! ```
//!
//! (The dev profile builds the engine at `opt-level = 3`.) Calls rotate over enough copies
//! of each matrix that its weights come from DRAM, as in a real decode step; `--hot` reuses
//! one copy (cache-resident for the smaller shapes) to see the kernels' compute rate.

use std::time::Instant;

use airlock_engine::kernels::{Format, PackedMatrix};
use airlock_engine::quant::QType;
use burn::tensor::{DType, Device, Tensor, TensorData};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Measure the engine's CPU matmul kernels on Llama-3.2-1B shapes")]
struct Args {
    /// Activation rows per call (1: decode, 16: batched decode, 512: prefill).
    #[arg(long, value_delimiter = ',', default_value = "1,16,512")]
    rows: Vec<usize>,
    /// Weight formats.
    /// `burn` is the baseline: burn's Flex f32 matmul, what `Linear` used before. Besides
    /// `q8`/`q4` (quantized from f32 here), any GGUF block type by its lower-case name
    /// (`q4_k`, `q6_k`, `iq4_xs`, …) runs on random blocks with sane scales (the kernels'
    /// speed does not depend on the values).
    #[arg(long, value_delimiter = ',', default_value = "burn,f32,bf16,q8,q4")]
    formats: Vec<String>,
    /// Minimum seconds measured per (shape, format, rows).
    #[arg(long, default_value_t = 0.5)]
    seconds: f64,
    /// Leave out the 128256 × 2048 LM head (it needs ~1 GiB as f32).
    #[arg(long)]
    no_head: bool,
    /// Multiply the same copy of each matrix every time, so the smaller ones stay in the
    /// last-level cache. By default calls rotate over copies of at least 128 MiB in all, so
    /// every call reads its weights from DRAM as a real decode step does.
    #[arg(long)]
    hot: bool,
}

/// Bytes the copies of one matrix should span so that none is still cached when its turn
/// comes again (several times a server CPU's last-level cache).
const COLD_BYTES: usize = 128 << 20;

/// `(name, out, in, uses per token)`: one Llama-3.2-1B layer (×16) and the LM head.
const SHAPES: [(&str, usize, usize, usize); 5] = [
    ("q/o 2048x2048", 2048, 2048, 2 * 16),
    ("k/v 512x2048", 512, 2048, 2 * 16),
    ("gate/up 8192x2048", 8192, 2048, 2 * 16),
    ("down 2048x8192", 2048, 8192, 16),
    ("lm_head 128256x2048", 128_256, 2048, 1),
];

/// A matrix multiplied by our kernels or, as the baseline, by burn's Flex backend.
enum Subject {
    /// Copies of one matrix, used in turn.
    Ours(Vec<PackedMatrix>),
    Burn(Box<Tensor<2>>),
}

impl Subject {
    fn bytes(&self, out: usize, inp: usize) -> usize {
        match self {
            Subject::Ours(m) => m.first().map_or(0, PackedMatrix::bytes),
            Subject::Burn(_) => out * inp * 4,
        }
    }

    fn run(&self, x: &[f32], rows: usize, inp: usize, call: usize) -> anyhow::Result<()> {
        match self {
            Subject::Ours(copies) => {
                let m = &copies[call % copies.len()];
                let y = m
                    .matmul_t(x, rows)
                    .ok_or_else(|| anyhow::anyhow!("shape mismatch"))?;
                std::hint::black_box(y);
            }
            Subject::Burn(w) => {
                let xt = Tensor::<2>::from_data(
                    TensorData::new(x.to_vec(), [rows, inp]),
                    (&Device::flex(), DType::F32),
                );
                let y = xt.matmul(w.as_ref().clone().transpose()).into_data();
                std::hint::black_box(y);
            }
        }
        Ok(())
    }
}

fn format(name: &str) -> anyhow::Result<Option<Format>> {
    if name == "burn" {
        return Ok(None);
    }
    Ok(Some(match name {
        "f32" => Format::F32,
        "bf16" => Format::Bf16,
        "f16" => Format::F16,
        "q8" => Format::Q8_0,
        "q4" => Format::Q4_0,
        other => match QType::ALL.into_iter().find(|t| t.lower_name() == other) {
            Some(t) => Format::Quant(t),
            None => anyhow::bail!(
                "--formats: unknown format `{other}` (burn, f32, bf16, f16, q8, q4, or a GGUF \
                 type: q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k, iq4_nl, iq4_xs)"
            ),
        },
    }))
}

fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.05
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let formats: Vec<(String, Option<Format>)> = args
        .formats
        .iter()
        .map(|f| Ok((f.clone(), format(f)?)))
        .collect::<anyhow::Result<_>>()?;
    println!(
        "threads: {} (RAYON_NUM_THREADS to change)\n",
        rayon_threads()
    );
    println!("| format | rows | shape | ms / call | weight GB/s | GFLOP/s |");
    println!("|---|---|---|---|---|---|");
    // Seconds per token of the whole stack, per (format, rows).
    let mut stack: Vec<(String, usize, f64, bool)> = Vec::new();
    for (fname, fmt) in &formats {
        let mut per_rows = vec![0f64; args.rows.len()];
        for &(shape, out, inp, uses) in &SHAPES {
            let head = out == 128_256;
            if head && args.no_head {
                continue;
            }
            let data = pseudo_random(out * inp, out as u64);
            let w = match fmt {
                Some(f) => {
                    let m = match f {
                        Format::Quant(t) if *f != Format::Q8_0 && *f != Format::Q4_0 => {
                            random_blocks(*t, out, inp)?
                        }
                        _ => PackedMatrix::pack(&data, out, inp, *f)?,
                    };
                    let copies = if args.hot {
                        1
                    } else {
                        COLD_BYTES.div_ceil(m.bytes().max(1))
                    };
                    Subject::Ours(vec![m; copies])
                }
                None => Subject::Burn(Box::new(Tensor::from_data(
                    TensorData::new(data, [out, inp]),
                    (&Device::flex(), DType::F32),
                ))),
            };
            for (k, &rows) in args.rows.iter().enumerate() {
                if head && rows > 16 {
                    continue;
                }
                let x = pseudo_random(rows * inp, 7);
                let mut calls = 0u32;
                let started = Instant::now();
                while calls < 2 || started.elapsed().as_secs_f64() < args.seconds {
                    w.run(&x, rows, inp, calls as usize)?;
                    calls += 1;
                }
                let per_call = started.elapsed().as_secs_f64() / f64::from(calls);
                per_rows[k] += per_call * uses as f64;
                println!(
                    "| {fname} | {rows} | {shape} | {:.3} | {:.1} | {:.1} |",
                    per_call * 1e3,
                    w.bytes(out, inp) as f64 / per_call / 1e9,
                    2.0 * (out * inp * rows) as f64 / per_call / 1e9
                );
            }
        }
        for (k, &rows) in args.rows.iter().enumerate() {
            stack.push((
                fname.clone(),
                rows,
                per_rows[k],
                rows <= 16 && !args.no_head,
            ));
        }
    }
    println!("\n| format | rows | 1B stack tok/s (kernels only) |");
    println!("|---|---|---|");
    for (fname, rows, secs, with_head) in stack {
        println!(
            "| {fname} | {rows} | {:.1}{} |",
            rows as f64 / secs,
            if with_head { "" } else { " (no LM head)" }
        );
    }
    println!(
        "\nreproduce: cargo build --workspace --locked && target/debug/kernel-bench --rows {} --formats {}{}",
        args.rows
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        args.formats.join(","),
        if args.hot { " --hot" } else { "" }
    );
    Ok(())
}

/// `[out, inp]` random blocks of `t`, every `f16` scale field set to a small finite value.
fn random_blocks(t: QType, out: usize, inp: usize) -> anyhow::Result<PackedMatrix> {
    let scales: &[usize] = match t {
        QType::Q4_1 | QType::Q5_1 | QType::Q4_K | QType::Q5_K => &[0, 2],
        QType::Q2_K => &[80, 82],
        QType::Q3_K => &[108],
        QType::Q6_K => &[208],
        _ => &[0],
    };
    let n = out * inp / t.block_elems() * t.block_bytes();
    let noise = pseudo_random(n, 99);
    let mut bytes: Vec<u8> = noise.iter().map(|v| (v.to_bits() >> 5) as u8).collect();
    // f16 0x2000 = 2⁻⁷.
    let d = 0x2000u16.to_le_bytes();
    for block in bytes.chunks_exact_mut(t.block_bytes()) {
        for &at in scales {
            block[at..at + 2].copy_from_slice(&d);
        }
    }
    Ok(PackedMatrix::from_blocks(
        &bytes,
        out,
        inp,
        Format::Quant(t),
    )?)
}

fn rayon_threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| {
        std::thread::available_parallelism().map_or("?".into(), |n| n.to_string())
    })
}
