//! Engine benchmark: load time, time to first token, prefill throughput (a 512-token prompt
//! by default) and single-stream decode throughput (a fixed number of tokens, EOS ignored)
//! for one model directory on one device. Prints figures; asserts nothing.
//!
//! ```sh
//! cargo run --release -p airlock-bench --bin engine-bench -- --model DIR --device cpu --streams 1,4,16
//! ```

use std::path::PathBuf;

mod streams;

use airlock_engine::{DeviceChoice, GenerateOptions, Prompt, SamplingParams, generate_once};
use anyhow::Context;
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DeviceArg {
    Auto,
    Gpu,
    Cpu,
}

#[derive(Parser, Debug)]
#[command(about = "Measure load time, TTFT, prefill and decode throughput of one model")]
struct Args {
    /// A Hugging Face model directory or a GGUF file.
    #[arg(long)]
    model: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Prompt length in tokens (deterministic pseudo-random ids).
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens to decode (EOS ignored).
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Check the integrity manifest while loading (counted in the load time).
    #[arg(long)]
    verify_manifest: bool,
    /// Also measure aggregate decode throughput through the engine API with this many
    /// concurrent streams each (comma-separated, e.g. `1,4,16`): every stream is one request
    /// of `--decode-tokens` tokens on a short prompt, all submitted at once.
    #[arg(long, value_delimiter = ',')]
    streams: Vec<usize>,
    /// Sampling temperature (0: greedy, the default; the OpenAI API's default is 1, which
    /// adds the sampler's cost to every token). Seeded, so runs draw the same tokens.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let vocab = u32::try_from(
        airlock_engine::inspect(&args.model, false)
            .context("reading the model's header")?
            .vocab_size,
    )
    .context("vocab_size")?;
    // A fixed linear-congruential sequence: the same prompt on every run and machine.
    let mut state = 12345u64;
    let ids: Vec<u32> = (0..args.prompt_tokens)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % u64::from(vocab.saturating_sub(300).max(1))) as u32
                + 100.min(vocab - 1)
        })
        .collect();
    let device = match args.device {
        DeviceArg::Auto => DeviceChoice::Auto,
        DeviceArg::Gpu => DeviceChoice::Gpu,
        DeviceArg::Cpu => DeviceChoice::Cpu,
    };
    let mut opts = GenerateOptions::new(&args.model, Prompt::TokenIds(ids));
    opts.device = device;
    opts.verify_manifest = args.verify_manifest;
    opts.params = SamplingParams {
        max_tokens: Some(args.decode_tokens),
        ignore_eos: true,
        temperature: args.temperature,
        seed: Some(1),
        ..Default::default()
    };
    let report = generate_once(&opts)?;
    println!("model:            {}", args.model.display());
    println!("device:           {}", report.device);
    println!("load:             {:.2} s", report.timings.load_s);
    println!(
        "TTFT:             {:.1} ms ({} prompt tokens)",
        report.timings.ttft_ms, args.prompt_tokens
    );
    println!(
        "prefill:          {:.1} tok/s",
        report.timings.prefill_tokens_per_s
    );
    println!(
        "decode:           {:.2} tok/s ({} tokens, single stream)",
        report.timings.decode_tokens_per_s,
        report.generated_ids.len()
    );
    for &n in &args.streams {
        let rate = streams::concurrent_decode(&args.model, device, n.max(1), &opts.params)?;
        println!(
            "decode x{n:<3}:      {rate:.2} tok/s aggregate ({} tokens per stream, engine API)",
            args.decode_tokens
        );
    }
    println!(
        "reproduce:        cargo run {}-p airlock-bench --bin engine-bench -- --model {} --device {} --prompt-tokens {} --decode-tokens {}{}{}{}",
        if cfg!(debug_assertions) {
            ""
        } else {
            "--release "
        },
        args.model.display(),
        format!("{:?}", args.device).to_lowercase(),
        args.prompt_tokens,
        args.decode_tokens,
        if args.verify_manifest {
            " --verify-manifest"
        } else {
            ""
        },
        if args.streams.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = args.streams.iter().map(|n| n.to_string()).collect();
            format!(" --streams {}", list.join(","))
        },
        if args.temperature == 0.0 {
            String::new()
        } else {
            format!(" --temperature {}", args.temperature)
        }
    );
    Ok(())
}
