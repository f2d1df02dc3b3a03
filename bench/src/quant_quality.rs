//! Quality cost of weight quantization: each model directory is run at its stored precision
//! (the reference) and with `quantize = "q8"` and `"q4"`, teacher-forced over the same text,
//! and compared position by position. Prints a markdown table; asserts nothing.
//!
//! Per model and quantization:
//! * max / mean |Δlogit| against the reference over every position and vocabulary entry;
//! * top-1 agreement: the share of positions where both pick the same next token;
//! * the first position where free-running greedy decoding (32 tokens from the text's first
//!   8) diverges from the reference's, or `-` when it never does;
//! * perplexity of the text under each (the reference's in its own row).
//!
//! ```sh
//! cargo build --workspace --locked && target/debug/quant-quality
//! target/debug/quant-quality --model /tmp/airlock-llama-1b --max-tokens 128
//! ```
//! Without `--model`, the parity fixtures under `engine/tests/fixtures` and the embedded
//! default model are used; the text is `bench/text/quality.txt` (public domain).

use std::path::{Path, PathBuf};

use airlock_engine::{DeviceChoice, Quantize, Scorer};
use anyhow::Context;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    about = "Logit deviation, greedy agreement and perplexity of q8/q4 vs the stored weights"
)]
struct Args {
    /// Model directories (repeatable). Default: the parity fixtures and the default model.
    #[arg(long)]
    model: Vec<PathBuf>,
    /// The text to score.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/text/quality.txt"))]
    text: PathBuf,
    /// Score at most this many tokens of the text.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Free-running greedy tokens compared after the text's first 8.
    #[arg(long, default_value_t = 32)]
    greedy_tokens: usize,
}

struct Row {
    model: String,
    variant: String,
    device: String,
    max_dev: f32,
    mean_dev: f64,
    agreement: f64,
    divergence: Option<usize>,
    perplexity: f64,
}

fn default_models() -> anyhow::Result<Vec<PathBuf>> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .with_context(|| format!("reading {}", fixtures.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("config.json").is_file())
        .collect();
    dirs.sort();
    let default = std::env::temp_dir()
        .join(format!("airlock-quant-quality-{}", std::process::id()))
        .join("airlock-tiny-random");
    airlock_engine::default_model::install(&default)?;
    dirs.push(default);
    Ok(dirs)
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Natural-log probability of `token` under `logits`.
fn log_prob(logits: &[f32], token: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits
        .get(token)
        .map_or(f64::NEG_INFINITY, |&l| l as f64 - max - sum.ln())
}

/// Teacher-forced logits after each of `ids[..n-1]` (the prediction for `ids[1..]`).
fn teacher_forced(scorer: &mut Scorer, ids: &[u32]) -> anyhow::Result<Vec<Vec<f32>>> {
    scorer.reset();
    let mut out = Vec::with_capacity(ids.len().saturating_sub(1));
    for &t in &ids[..ids.len() - 1] {
        out.push(scorer.feed(&[t])?);
    }
    Ok(out)
}

fn greedy(scorer: &mut Scorer, prefix: &[u32], n: usize) -> anyhow::Result<Vec<usize>> {
    scorer.reset();
    let mut logits = scorer.feed(prefix)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let next = argmax(&logits);
        out.push(next);
        logits = scorer.feed(&[next as u32])?;
    }
    Ok(out)
}

fn perplexity(logits: &[Vec<f32>], ids: &[u32]) -> f64 {
    let nll: f64 = logits
        .iter()
        .zip(&ids[1..])
        .map(|(l, &t)| -log_prob(l, t as usize))
        .sum();
    (nll / logits.len().max(1) as f64).exp()
}

fn evaluate(dir: &Path, text: &str, args: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut reference = Scorer::load(dir, DeviceChoice::Cpu, None)
        .with_context(|| format!("loading {}", dir.display()))?;
    let mut ids = reference.encode(text)?;
    ids.truncate(
        args.max_tokens.min(
            reference
                .context_length()
                .saturating_sub(args.greedy_tokens + 1),
        ),
    );
    anyhow::ensure!(
        ids.len() >= 9,
        "{}: the text is too short for this model",
        dir.display()
    );
    let ref_logits = teacher_forced(&mut reference, &ids)?;
    let prefix = &ids[..8];
    let ref_greedy = greedy(&mut reference, prefix, args.greedy_tokens)?;
    rows.push(Row {
        model: name.clone(),
        variant: "stored (reference)".into(),
        device: reference.device().to_owned(),
        max_dev: 0.0,
        mean_dev: 0.0,
        agreement: 1.0,
        divergence: None,
        perplexity: perplexity(&ref_logits, &ids),
    });
    drop(reference);
    for q in [Quantize::Q8, Quantize::Q4] {
        let mut scorer = match Scorer::load(dir, DeviceChoice::Cpu, Some(q)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{name}: {}: {e}", q.name());
                continue;
            }
        };
        let logits = teacher_forced(&mut scorer, &ids)?;
        let (mut max_dev, mut sum, mut count, mut agree) = (0f32, 0f64, 0usize, 0usize);
        for (a, b) in ref_logits.iter().zip(&logits) {
            for (x, y) in a.iter().zip(b) {
                let d = (x - y).abs();
                max_dev = max_dev.max(d);
                sum += d as f64;
            }
            count += a.len();
            agree += usize::from(argmax(a) == argmax(b));
        }
        let g = greedy(&mut scorer, prefix, args.greedy_tokens)?;
        rows.push(Row {
            model: name.clone(),
            variant: q.name().into(),
            device: scorer.device().to_owned(),
            max_dev,
            mean_dev: sum / count.max(1) as f64,
            agreement: agree as f64 / ref_logits.len().max(1) as f64,
            divergence: ref_greedy.iter().zip(&g).position(|(a, b)| a != b),
            perplexity: perplexity(&logits, &ids),
        });
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.text)
        .with_context(|| format!("reading {}", args.text.display()))?;
    let models = if args.model.is_empty() {
        default_models()?
    } else {
        args.model.clone()
    };
    let mut rows = Vec::new();
    for dir in &models {
        if let Err(e) = evaluate(dir, &text, &args, &mut rows) {
            eprintln!("skipped {}: {e:#}", dir.display());
        }
    }
    println!(
        "| model | weights | device | max abs dlogit | mean abs dlogit | top-1 agreement | greedy diverges at | perplexity |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.4} | {:.5} | {:.1}% | {} | {:.2} |",
            r.model,
            r.variant,
            r.device,
            r.max_dev,
            r.mean_dev,
            r.agreement * 100.0,
            r.divergence
                .map_or_else(|| "-".to_owned(), |p| p.to_string()),
            r.perplexity,
        );
    }
    let cmd: Vec<String> = std::env::args().collect();
    println!(
        "\nreproduce: cargo build --workspace --locked && {}",
        cmd.join(" ")
    );
    println!(
        "text: {} ({} tokens max)",
        args.text.display(),
        args.max_tokens
    );
    Ok(())
}
