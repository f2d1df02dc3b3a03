//! Metrics benchmark: what the request path's instrumentation costs. First the recording
//! calls one request makes (request note, `airlock_requests_total` + duration histogram,
//! token counters + two histograms), timed alone; then `pipeline::handle` latency (test engine,
//! in process, no audit) without and with a scraper encoding `/metrics` every 10 ms, and
//! the time one scrape takes. Prints figures; asserts nothing.
//!
//! ```sh
//! cargo build --workspace && target/debug/metrics-bench --iterations 1000000 --requests 4000
//! ```

#[path = "chat_load.rs"]
mod chat_load;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use airlock_daemon::app::{App, AppSettings};
use airlock_daemon::metrics::{self, RequestNote};
use airlock_engine::test_engine::{TestEngine, TestEngineConfig};
use airlock_engine::{Engine, GenerationTimings, Usage};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Iterations of the recording calls timed alone.
    #[arg(long, default_value_t = 1_000_000)]
    iterations: u32,
    /// Requests per latency run (without, then with scraping).
    #[arg(long, default_value_t = 4000)]
    requests: usize,
    /// Requests in flight at once in the latency runs.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(&args))
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let engine: Arc<dyn Engine> = Arc::new(TestEngine::new(TestEngineConfig {
        model: "test-model".into(),
        max_active: args.concurrency.max(1),
        max_queue: 1024,
        ..TestEngineConfig::default()
    })?);
    let m = metrics::global();
    m.set_models(&engine.models());

    // 1. The recording calls of one request, alone.
    let usage = Usage {
        prompt_tokens: 12,
        completion_tokens: 8,
        cached_tokens: 0,
    };
    let timings = GenerationTimings {
        time_to_first_token_ms: 3.0,
        prefill_tokens_per_s: 1000.0,
        decode_tokens_per_s: 200.0,
    };
    let start = Instant::now();
    for i in 0..args.iterations {
        let note = RequestNote::default();
        note.note(None, Some("test-model"));
        let labels = metrics::GenerationLabels::new(None, "test-model".to_owned());
        labels.finished(usage, &timings);
        m.request(
            Some("bench"),
            note.model(),
            "/v1/chat/completions",
            if i % 10 == 0 { 429 } else { 200 },
            Duration::from_micros(u64::from(i % 5000)),
        );
    }
    let per = start.elapsed().as_secs_f64() * 1e9 / f64::from(args.iterations.max(1));
    println!(
        "recording one request's metrics: {per:.0} ns ({} iterations)",
        args.iterations
    );

    // 2. One scrape.
    let scrapes = 200;
    let start = Instant::now();
    let mut bytes = 0;
    for _ in 0..scrapes {
        let text = metrics::to_text_format(&m.encode(&engine.status(), 0));
        bytes = text.len();
    }
    let per = start.elapsed().as_secs_f64() * 1e3 / f64::from(scrapes);
    println!("one /metrics scrape (encode + text format): {per:.3} ms, {bytes} bytes");

    // 3. Request latency without and with a scraper every 10 ms.
    let app = App::new(
        Arc::clone(&engine),
        AppSettings {
            max_body_bytes: 1 << 20,
            request_deadline: Duration::from_secs(60),
            max_concurrent_requests: 1024,
            body_read_timeout: Duration::from_secs(60),
        },
    );
    let quiet = latency(args, &app).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = {
        let (stop, engine) = (Arc::clone(&stop), Arc::clone(&engine));
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let text = metrics::to_text_format(&metrics::global().encode(&engine.status(), 0));
                n += u64::from(!text.is_empty());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            n
        })
    };
    let scraped = latency(args, &app).await?;
    stop.store(true, Ordering::Relaxed);
    let scrapes = scraper.await?;
    println!(
        "handle latency, {} requests x {} concurrent (test engine, no audit):",
        args.requests, args.concurrency
    );
    println!(
        "  no scraping:         p50 {:.3} ms   p99 {:.3} ms",
        quiet.0, quiet.1
    );
    println!(
        "  scraped every 10 ms: p50 {:.3} ms   p99 {:.3} ms ({scrapes} scrapes)",
        scraped.0, scraped.1
    );
    Ok(())
}

async fn latency(args: &Args, app: &Arc<App>) -> anyhow::Result<(f64, f64)> {
    chat_load::chat_latency_ms(app, args.requests, args.concurrency).await
}
