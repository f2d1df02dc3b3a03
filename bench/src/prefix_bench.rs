//! Prefix caching benchmark: one tenant's multi-turn conversation (a long system prompt,
//! then question → answer → question …, each turn's prompt holding everything before it),
//! run once with `prefix_cache` off and once on, on the same model in the same run. Prints
//! each turn's time to first token (the prefill it needs) and the ratio. Asserts nothing.
//!
//! ```sh
//! cargo run --release -p airlock-bench --bin prefix-bench -- --model /tmp/llama-1b-l4
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use airlock_engine::{
    BurnEngine, DeviceChoice, Engine, GenerateRequest, ModelSpec, Prompt, SamplingParams,
    TokenEvent, default_model,
};
use anyhow::Context;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Time to first token per conversation turn, prefix cache off vs on")]
struct Args {
    /// A Hugging Face model directory (default: the embedded default model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// `cpu`, `gpu` or `auto`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// System prompt length, in tokens.
    #[arg(long, default_value_t = 1000)]
    system_tokens: usize,
    /// Tokens each user turn adds.
    #[arg(long, default_value_t = 40)]
    question_tokens: usize,
    /// Tokens each answer has.
    #[arg(long, default_value_t = 24)]
    answer_tokens: usize,
    /// Turns of the conversation.
    #[arg(long, default_value_t = 4)]
    turns: usize,
}

fn ids(seed: usize, n: usize) -> Vec<u32> {
    (0..n)
        .map(|j| 100 + ((seed * 131 + j * 7) % 500) as u32)
        .collect()
}

/// Runs one turn: (time to first token, the answer's ids).
fn turn(
    engine: &BurnEngine,
    prompt: Vec<u32>,
    max_tokens: usize,
) -> anyhow::Result<(Duration, Vec<u32>)> {
    let submitted = Instant::now();
    let mut g = engine.submit(GenerateRequest {
        request_id: "bench".into(),
        tenant: "t".into(),
        tenant_weight: 1,
        model: "bench".into(),
        prompt: Prompt::TokenIds(prompt),
        params: SamplingParams {
            max_tokens: Some(max_tokens),
            ignore_eos: true,
            ..Default::default()
        },
    })?;
    let (mut ttft, mut answer) = (None, Vec::new());
    while let Some(ev) = g.blocking_next() {
        match ev {
            TokenEvent::Token { id, .. } => {
                ttft.get_or_insert_with(|| submitted.elapsed());
                answer.push(id);
            }
            TokenEvent::Finished { .. } => break,
            TokenEvent::Failed(e) => anyhow::bail!("{e}"),
            TokenEvent::Started { .. } => {}
        }
    }
    Ok((ttft.context("no token")?, answer))
}

/// The whole conversation on a fresh engine: (prompt tokens, TTFT) per turn.
fn conversation(
    args: &Args,
    path: &PathBuf,
    prefix_cache: bool,
) -> anyhow::Result<Vec<(usize, Duration)>> {
    let device = match args.device.as_str() {
        "cpu" => DeviceChoice::Cpu,
        "gpu" => DeviceChoice::Gpu,
        _ => DeviceChoice::Auto,
    };
    let engine = BurnEngine::load(&[ModelSpec {
        device,
        verify_manifest: false,
        prefix_cache,
        ..ModelSpec::new("bench", path)
    }])?;
    // Warm-up (kernels, allocator) on an unrelated prompt.
    turn(&engine, ids(999, 64), 4)?;
    let mut prompt = ids(0, args.system_tokens);
    let mut out = Vec::new();
    for t in 0..args.turns {
        prompt.extend(ids(t + 1, args.question_tokens));
        let (ttft, answer) = turn(&engine, prompt.clone(), args.answer_tokens)?;
        out.push((prompt.len(), ttft));
        prompt.extend(answer);
    }
    let s = engine.status();
    eprintln!(
        "prefix_cache = {prefix_cache}: {} prompt tokens prefilled, {} reused",
        s.prefill_tokens, s.prefix_cache_tokens
    );
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let path = match &args.model {
        Some(p) => p.clone(),
        None => default_model::install(&std::env::temp_dir().join("airlock-prefix-bench"))?,
    };
    let off = conversation(&args, &path, false)?;
    let on = conversation(&args, &path, true)?;
    println!(
        "model: {} ({}), system prompt {} tokens, +{} per question, {}-token answers",
        path.display(),
        args.device,
        args.system_tokens,
        args.question_tokens,
        args.answer_tokens
    );
    println!("| turn | prompt tokens | TTFT cache off (ms) | TTFT cache on (ms) | off / on |");
    println!("|---:|---:|---:|---:|---:|");
    for (i, ((n, a), (_, b))) in off.iter().zip(&on).enumerate() {
        let (a, b) = (a.as_secs_f64() * 1e3, b.as_secs_f64() * 1e3);
        println!("| {} | {n} | {a:.1} | {b:.1} | {:.1}× |", i + 1, a / b);
    }
    println!(
        "command: cargo run --release -p airlock-bench --bin prefix-bench -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    Ok(())
}
