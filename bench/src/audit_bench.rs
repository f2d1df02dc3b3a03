//! Audit log benchmark: durable records per second through the writer thread (group commit,
//! WAL, synchronous=FULL), the request latency `pipeline::handle` adds with the audit on vs off
//! (test engine, in process), and `audit verify` speed. Prints figures; asserts nothing.
//!
//! ```sh
//! cargo build --workspace && target/debug/audit-bench --records 200000 --requests 4000
//! ```

#[path = "chat_load.rs"]
mod chat_load;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_daemon::app::{App, AppSettings};
use airlock_daemon::audit::trail::{Binding, StoreText};
use airlock_daemon::audit::{AuditLog, DigestKey, Kind, Record, SigningKey, WriterSettings};
use airlock_engine::test_engine::{TestEngine, TestEngineConfig};
use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Records appended in the throughput run.
    #[arg(long, default_value_t = 200_000)]
    records: u64,
    /// Concurrent appenders (each waits for its own commit).
    #[arg(long, default_value_t = 256)]
    writers: u64,
    /// Requests per latency run (audit off, then on).
    #[arg(long, default_value_t = 4000)]
    requests: usize,
    /// Requests in flight at once in the latency runs.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Directory for the database (default: a fresh one under the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn settings(db: PathBuf) -> WriterSettings {
    WriterSettings {
        node: String::new(),
        db,
        signing_key: SigningKey::from_seed([9; 32]),
        checkpoint_every: 1000,
        checkpoint_interval: Duration::from_secs(10),
        write_timeout: Duration::from_secs(30),
        queue: 1 << 20,
        rotation: Default::default(),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("airlock-audit-bench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).context("bench dir")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(&args, &dir))?;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "reproduce:  cargo build --workspace{} && target/{}/audit-bench --records {} --writers {} --requests {} --concurrency {}",
        if cfg!(debug_assertions) {
            ""
        } else {
            " --release"
        },
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        args.records,
        args.writers,
        args.requests,
        args.concurrency
    );
    Ok(())
}

async fn run(args: &Args, dir: &std::path::Path) -> anyhow::Result<()> {
    // 1. Durable records per second.
    let db = dir.join("throughput.db");
    let log = AuditLog::open(settings(db.clone()))?;
    let per_writer = args.records / args.writers.max(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let record = Record::new(Kind::Admit)
                    .with("request_id", format!("{w}-{i}"))
                    .with("tenant", "bench")
                    .with("route", "POST /v1/chat/completions")
                    .with("model", "test-model")
                    .with("decision", "allow")
                    .with("prompt_digest", format!("hmac-sha256:{:064x}", i))
                    .with("config_hash", format!("{:064x}", w));
                log.append(record).await?;
            }
            Ok::<_, airlock_daemon::audit::AuditError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let total = per_writer * args.writers;
    println!(
        "durable appends:  {total} records, {} concurrent writers: {:.0} records/s ({:.2} s)",
        args.writers,
        total as f64 / secs,
        secs
    );
    // One writer alone: every append is its own fsync.
    let start = Instant::now();
    let n = 200;
    for i in 0..n {
        log.append(Record::new(Kind::Admit).with("i", i)).await?;
    }
    println!(
        "serial appends:   {:.2} ms per durable record (one fsync each)",
        start.elapsed().as_secs_f64() * 1000.0 / f64::from(n)
    );
    let log2 = Arc::clone(&log);
    tokio::task::spawn_blocking(move || log2.close()).await?;
    drop(log);

    // 2. Verify speed.
    let start = Instant::now();
    let report = airlock_daemon::audit::verify::verify(&[db], None)?;
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(report.finding.is_none(), "bench log does not verify");
    println!(
        "verify:           {} records in {:.2} s: {:.0} records/s",
        report.records,
        secs,
        report.records as f64 / secs
    );

    // 3. Added request latency.
    let off = latency(args, None).await?;
    let log = AuditLog::open(settings(dir.join("latency.db")))?;
    let binding = Arc::new(Binding {
        log: Arc::clone(&log),
        digest: Arc::new(DigestKey::from_bytes([3; 32])),
        config_hash: "0".repeat(64),
        store_text: StoreText::None,
        tenant_store_text: Default::default(),
        danger_allow_unaudited: false,
    });
    let on = latency(args, Some(binding)).await?;
    tokio::task::spawn_blocking(move || log.close()).await?;
    for (name, (p50, p99)) in [("audit off", off), ("audit on ", on)] {
        println!(
            "{name}:        p50 {p50:.3} ms   p99 {p99:.3} ms  (chat completion, test engine, {} in flight)",
            args.concurrency
        );
    }
    println!(
        "added by audit:   p50 {:+.3} ms   p99 {:+.3} ms (admission + completion commits)",
        on.0 - off.0,
        on.1 - off.1
    );
    Ok(())
}

async fn latency(args: &Args, audit: Option<Arc<Binding>>) -> anyhow::Result<(f64, f64)> {
    let engine = TestEngine::new(TestEngineConfig {
        model: "test-model".into(),
        max_active: args.concurrency.max(1),
        max_queue: 1024,
        ..TestEngineConfig::default()
    })?;
    let settings = AppSettings {
        max_body_bytes: 1 << 20,
        request_deadline: Duration::from_secs(60),
        max_concurrent_requests: 1024,
        body_read_timeout: Duration::from_secs(60),
    };
    let app = App::with_audit(Arc::new(engine), settings, audit);
    chat_load::chat_latency_ms(&app, args.requests, args.concurrency).await
}
