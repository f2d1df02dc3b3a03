//! Tenant fairness benchmark: tenant A keeps `--flood` streams busy (each finished request is
//! replaced at once), tenant B sends `--light-requests` single requests one after another.
//! Prints both tenants' time to first token (p50/p95) and the aggregate generated tokens/s,
//! with the engine's fair scheduling, or with `--fifo` (both tenants submitted as one, which
//! is first come first served). Prints figures; asserts nothing.
//!
//! ```sh
//! cargo run --release -p airlock-bench --bin fairness-bench -- --flood 16 --light-requests 10
//! cargo run --release -p airlock-bench --bin fairness-bench -- --flood 16 --light-requests 10 --fifo
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_engine::{
    BurnEngine, DeviceChoice, Engine, GenerateRequest, ModelSpec, Prompt, SamplingParams,
    TokenEvent, default_model,
};
use anyhow::Context;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Time to first token of a light tenant while another floods the engine")]
struct Args {
    /// A Hugging Face model directory (default: the embedded default model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// `cpu`, `gpu` or `auto`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Concurrent streams tenant A keeps open.
    #[arg(long, default_value_t = 16)]
    flood: usize,
    /// Sequential requests tenant B sends.
    #[arg(long, default_value_t = 10)]
    light_requests: usize,
    /// Sequence slots of the engine.
    #[arg(long, default_value_t = 4)]
    max_active: usize,
    /// Tokens per flood request.
    #[arg(long, default_value_t = 64)]
    flood_tokens: usize,
    /// Tokens per light request.
    #[arg(long, default_value_t = 16)]
    light_tokens: usize,
    /// Prompt length of every request, in tokens.
    #[arg(long, default_value_t = 32)]
    prompt_tokens: usize,
    /// Submit both tenants as one (first come, first served) instead of fair scheduling.
    #[arg(long)]
    fifo: bool,
}

fn request(tenant: &str, i: usize, prompt_tokens: usize, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        request_id: format!("{tenant}-{i}"),
        tenant: tenant.into(),
        tenant_weight: 1,
        model: "bench".into(),
        prompt: Prompt::TokenIds(
            (0..prompt_tokens)
                .map(|j| 100 + ((i * 31 + j * 7) % 500) as u32)
                .collect(),
        ),
        params: SamplingParams {
            max_tokens: Some(max_tokens),
            ignore_eos: true,
            ..Default::default()
        },
    }
}

/// Runs one request to its end: (time to first token, tokens).
fn run(engine: &BurnEngine, req: GenerateRequest) -> anyhow::Result<(Duration, usize)> {
    let submitted = Instant::now();
    let mut g = engine.submit(req)?;
    let (mut ttft, mut tokens) = (None, 0);
    while let Some(ev) = g.blocking_next() {
        match ev {
            TokenEvent::Token { .. } => {
                ttft.get_or_insert_with(|| submitted.elapsed());
                tokens += 1;
            }
            TokenEvent::Finished { .. } => break,
            TokenEvent::Failed(e) => anyhow::bail!("{e}"),
            TokenEvent::Started { .. } => {}
        }
    }
    Ok((ttft.unwrap_or_default(), tokens))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let model = match &args.model {
        Some(dir) => dir.clone(),
        None => default_model::install(&std::env::temp_dir().join("airlock-fairness-bench"))
            .context("installing the default model")?,
    };
    let device = match args.device.as_str() {
        "cpu" => DeviceChoice::Cpu,
        "gpu" => DeviceChoice::Gpu,
        "auto" => DeviceChoice::Auto,
        other => anyhow::bail!("--device: `{other}` is not one of cpu, gpu, auto"),
    };
    let engine = Arc::new(BurnEngine::load(&[ModelSpec {
        device,
        verify_manifest: false,
        max_queue: args.flood + 4,
        max_active: args.max_active,
        ..ModelSpec::new("bench", &model)
    }])?);
    let (heavy, light) = if args.fifo {
        ("all", "all")
    } else {
        ("a", "b")
    };
    let stop = Arc::new(AtomicBool::new(false));
    let tokens = Arc::new(AtomicUsize::new(0));
    let a_ttft = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let flooders: Vec<_> = (0..args.flood)
        .map(|s| {
            let (engine, stop, tokens, a_ttft) = (
                Arc::clone(&engine),
                Arc::clone(&stop),
                Arc::clone(&tokens),
                Arc::clone(&a_ttft),
            );
            let (pt, ft) = (args.prompt_tokens, args.flood_tokens);
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut i = s * 1000;
                while !stop.load(Ordering::Relaxed) {
                    let (ttft, n) = run(&engine, request(heavy, i, pt, ft))?;
                    tokens.fetch_add(n, Ordering::Relaxed);
                    if let Ok(mut v) = a_ttft.lock() {
                        v.push(ttft);
                    }
                    i += 1;
                }
                Ok(())
            })
        })
        .collect();
    // Let the flood fill every slot and the queue first.
    std::thread::sleep(Duration::from_millis(500));
    let mut b_ttft = Vec::new();
    for i in 0..args.light_requests {
        let (ttft, n) = run(
            &engine,
            request(light, 1_000_000 + i, args.prompt_tokens, args.light_tokens),
        )?;
        tokens.fetch_add(n, Ordering::Relaxed);
        b_ttft.push(ttft);
    }
    stop.store(true, Ordering::Relaxed);
    let window = started.elapsed().as_secs_f64();
    let total = tokens.load(Ordering::Relaxed);
    for f in flooders {
        f.join()
            .map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
    }
    let mut a = a_ttft.lock().map(|v| v.clone()).unwrap_or_default();
    a.sort();
    b_ttft.sort();
    println!("model:            {}", model.display());
    println!(
        "scheduling:       {}",
        if args.fifo {
            "FIFO (one tenant)"
        } else {
            "fair (two tenants)"
        }
    );
    println!(
        "tenant A (flood): {} streams, {} requests, TTFT p50 {:.1} ms, p95 {:.1} ms",
        args.flood,
        a.len(),
        percentile(&a, 0.5),
        percentile(&a, 0.95)
    );
    println!(
        "tenant B (light): {} requests, TTFT p50 {:.1} ms, p95 {:.1} ms",
        b_ttft.len(),
        percentile(&b_ttft, 0.5),
        percentile(&b_ttft, 0.95)
    );
    println!(
        "aggregate:        {:.1} tok/s over {window:.1} s",
        total as f64 / window
    );
    println!(
        "reproduce:        cargo run {}-p airlock-bench --bin fairness-bench --{} --device {} --flood {} --light-requests {} --max-active {} --flood-tokens {} --light-tokens {} --prompt-tokens {}{}",
        if cfg!(debug_assertions) {
            ""
        } else {
            "--release "
        },
        args.model
            .as_ref()
            .map(|m| format!(" --model {}", m.display()))
            .unwrap_or_default(),
        args.device,
        args.flood,
        args.light_requests,
        args.max_active,
        args.flood_tokens,
        args.light_tokens,
        args.prompt_tokens,
        if args.fifo { " --fifo" } else { "" }
    );
    Ok(())
}
