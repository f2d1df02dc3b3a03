//! Time to first token of a long prompt while other streams decode (issue 15: chunked
//! prefill must keep it within 1.5× of the idle figure). One engine, prefix cache off (each
//! timed prompt is new anyway): the TTFT of a `--prompt-tokens` prompt on an idle engine,
//! then with `--streams` greedy streams decoding (each restarted when it ends), medians of
//! `--runs`; also the streams' aggregate decode rate during the loaded runs. Asserts nothing.
//!
//! ```sh
//! cargo run -p airlock-bench --bin ttft-bench -- \
//!   --model /work/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use airlock_engine::{
    BurnEngine, DeviceChoice, Engine, GenerateRequest, ModelSpec, Prompt, SamplingParams,
    TokenEvent, default_model,
};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "TTFT of a long prompt, idle vs while other streams decode")]
struct Args {
    /// A model directory or `.gguf` file (default: the embedded default model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Tokens in the timed prompt.
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Streams decoding while the loaded TTFT is measured.
    #[arg(long, default_value_t = 15)]
    streams: usize,
    /// Timed prompts per condition (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

/// Deterministic ids in 1000..9000 (inside the vocabulary of every model we bench, clear of
/// the special tokens at either end).
fn ids(seed: u64, n: usize) -> Vec<u32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % 8000) as u32 + 1000
        })
        .collect()
}

fn request(id: String, prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        request_id: id,
        tenant: "t".into(),
        tenant_weight: 1,
        model: "bench".into(),
        prompt: Prompt::TokenIds(prompt),
        params: SamplingParams {
            temperature: 0.0,
            max_tokens: Some(max_tokens),
            ignore_eos: true,
            ..Default::default()
        },
    }
}

/// Milliseconds from submission to the first token.
fn ttft_ms(engine: &BurnEngine, seed: u64, n: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut g = engine.submit(request(format!("timed-{seed}"), ids(seed, n), 1))?;
    let mut first = None;
    loop {
        match g.blocking_next() {
            Some(TokenEvent::Token { .. }) => {
                first.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1e3);
            }
            Some(TokenEvent::Finished { .. }) => break,
            Some(TokenEvent::Failed(e)) => anyhow::bail!("{e}"),
            Some(TokenEvent::Started { .. }) => {}
            None => anyhow::bail!("generation ended without Finished"),
        }
    }
    first.ok_or_else(|| anyhow::anyhow!("no token"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let path = match &args.model {
        Some(p) => p.clone(),
        None => default_model::install(&std::env::temp_dir().join("airlock-ttft-bench"))?,
    };
    let spec = ModelSpec {
        device: DeviceChoice::Cpu,
        verify_manifest: false,
        prefix_cache: false,
        max_active: args.streams + 1,
        ..ModelSpec::new("bench", &path)
    };
    let (chunk, batch) = (spec.prefill_chunk, spec.max_batch_tokens);
    let engine = Arc::new(BurnEngine::load(&[spec])?);
    ttft_ms(&engine, 1, 64)?; // warm-up
    let idle: Vec<f64> = (0..args.runs)
        .map(|r| ttft_ms(&engine, 100 + r as u64, args.prompt_tokens))
        .collect::<Result<_, _>>()?;

    // The streams: short prompts, long answers, restarted when they end.
    let stop = Arc::new(AtomicBool::new(false));
    let tokens = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..args.streams)
        .map(|i| {
            let (engine, stop, tokens) = (engine.clone(), stop.clone(), tokens.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut round = 0;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    let id = format!("stream-{i}-{round}");
                    let mut g = engine.submit(request(id, ids(1000 + i as u64, 32), 256))?;
                    loop {
                        match g.blocking_next() {
                            Some(TokenEvent::Token { .. }) => {
                                tokens.fetch_add(1, Ordering::Relaxed);
                                if stop.load(Ordering::Relaxed) {
                                    break; // dropping the generation cancels it
                                }
                            }
                            Some(TokenEvent::Finished { .. }) | None => break,
                            Some(TokenEvent::Failed(e)) => anyhow::bail!("{e}"),
                            Some(TokenEvent::Started { .. }) => {}
                        }
                    }
                }
                Ok(())
            })
        })
        .collect();
    // Every stream past its prefill and decoding.
    let deadline = Instant::now() + Duration::from_secs(120);
    while tokens.load(Ordering::Relaxed) < 4 * args.streams as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (t0, n0) = (Instant::now(), tokens.load(Ordering::Relaxed));
    let loaded: Vec<f64> = (0..args.runs)
        .map(|r| ttft_ms(&engine, 200 + r as u64, args.prompt_tokens))
        .collect::<Result<_, _>>()?;
    let stream_tok_s = (tokens.load(Ordering::Relaxed) - n0) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
    }

    let (idle_ms, loaded_ms) = (median(idle), median(loaded));
    println!(
        "model: {}, prompt {} tokens, {} streams decoding, prefill_chunk {chunk}, \
         max_batch_tokens {batch}, median of {}",
        path.display(),
        args.prompt_tokens,
        args.streams,
        args.runs
    );
    println!(
        "| idle TTFT ms | TTFT ms with {} streams | ratio | streams' decode tok/s meanwhile |",
        args.streams
    );
    println!("|---:|---:|---:|---:|");
    println!(
        "| {idle_ms:.0} | {loaded_ms:.0} | {:.2}× | {stream_tok_s:.1} |",
        loaded_ms / idle_ms
    );
    Ok(())
}
