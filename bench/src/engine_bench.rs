//! Engine benchmark: load time, time to first token, prefill throughput (a 512-token prompt
//! by default) and single-stream decode throughput (a fixed number of tokens, EOS ignored)
//! for one model directory on one device. Prints figures; asserts nothing.
//!
//! ```sh
//! cargo run --release -p airlock-bench --bin engine-bench -- --model DIR --device cpu --streams 1,4,16
//! ```

use std::path::PathBuf;

use std::time::Instant;

use airlock_engine::{
    BurnEngine, DeviceChoice, Engine, GenerateOptions, GenerateRequest, ModelSpec, Prompt,
    SamplingParams, TokenEvent, generate_once,
};
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
    /// A Hugging Face model directory.
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
}

/// Aggregate decode tokens/s with `n` concurrent requests: tokens after each stream's first,
/// over the time from the first token anywhere to the last stream's end.
fn concurrent_decode(args: &Args, device: DeviceChoice, n: usize) -> anyhow::Result<f64> {
    let engine = BurnEngine::load(&[ModelSpec {
        device,
        verify_manifest: false,
        max_queue: n,
        max_active: n,
        ..ModelSpec::new("bench", &args.model)
    }])?;
    let params = SamplingParams {
        max_tokens: Some(args.decode_tokens),
        ignore_eos: true,
        ..Default::default()
    };
    let mut gens = Vec::with_capacity(n);
    for i in 0..n {
        gens.push(engine.submit(GenerateRequest {
            request_id: format!("bench-{i}"),
            tenant: "bench".into(),
            tenant_weight: 1,
            model: "bench".into(),
            prompt: Prompt::TokenIds(vec![100 + i as u32, 101, 102, 103]),
            params: params.clone(),
        })?);
    }
    let readers: Vec<_> = gens
        .into_iter()
        .map(|mut g| {
            std::thread::spawn(move || {
                let (mut first, mut last, mut tokens) = (None, None, 0usize);
                while let Some(ev) = g.blocking_next() {
                    match ev {
                        TokenEvent::Token { .. } => {
                            tokens += 1;
                            first.get_or_insert_with(Instant::now);
                        }
                        TokenEvent::Finished { .. } => {
                            last = Some(Instant::now());
                            break;
                        }
                        TokenEvent::Failed(e) => return Err(anyhow::anyhow!("{e}")),
                        TokenEvent::Started { .. } => {}
                    }
                }
                Ok((first, last, tokens))
            })
        })
        .collect();
    let (mut first, mut last, mut tokens) = (None::<Instant>, None::<Instant>, 0usize);
    for r in readers {
        let (f, l, t) = r
            .join()
            .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
        first = match (first, f) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last = last.max(l);
        tokens += t.saturating_sub(1);
    }
    let secs = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    Ok(if secs > 0.0 {
        tokens as f64 / secs
    } else {
        0.0
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(args.model.join("config.json")).context("reading config.json")?,
    )?;
    let vocab = config["vocab_size"]
        .as_u64()
        .context("config.json: vocab_size")? as u32;
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
        let rate = concurrent_decode(&args, device, n.max(1))?;
        println!(
            "decode x{n:<3}:      {rate:.2} tok/s aggregate ({} tokens per stream, engine API)",
            args.decode_tokens
        );
    }
    println!(
        "reproduce:        cargo run {}-p airlock-bench --bin engine-bench -- --model {} --device {} --prompt-tokens {} --decode-tokens {}{}{}",
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
        }
    );
    Ok(())
}
