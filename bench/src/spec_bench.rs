//! Speculative decoding benchmark (prompt lookup, `[[models]] speculative`): each prompt is
//! answered greedily by the same model with speculation off and on, in the same run. Prints
//! whether the outputs are identical (they must be), the acceptance rate (accepted / drafted
//! tokens) and decode tok/s both ways. Asserts nothing but identity.
//!
//! ```sh
//! cargo run -p airlock-bench --bin spec-bench -- \
//!   --model /work/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
//! ```

use std::path::PathBuf;
use std::time::Instant;

use airlock_engine::{
    BurnEngine, ChatMessage, DeviceChoice, Engine, GenerateRequest, ModelSpec, Prompt,
    SamplingParams, Speculative, TokenEvent, default_model,
};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Acceptance rate and decode tok/s, speculative decoding off vs on")]
struct Args {
    /// A model directory or `.gguf` file (default: the embedded default model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 160)]
    max_tokens: usize,
    /// Most tokens drafted per step.
    #[arg(long, default_value_t = 3)]
    max_draft: usize,
    /// Shortest n-gram looked up.
    #[arg(long, default_value_t = 2)]
    min_ngram: usize,
    /// Runs per prompt and setting (the fastest is reported).
    #[arg(long, default_value_t = 2)]
    runs: usize,
}

const CODE: &str = "def summarize(orders):
    total = 0
    count = 0
    for order in orders:
        if order.status == \"paid\":
            total += order.amount
            count += 1
    if count == 0:
        return None
    average = total / count
    return {\"total\": total, \"count\": count, \"average\": average}
";

const PASSAGE: &str = "The river starts high in the mountains, where snow melts every spring. \
It runs through narrow valleys and past small villages, turning old mills along the way. \
Near the coast the river grows wide and slow, and fishermen wait on its banks at dawn. \
At last the river meets the sea in a broad delta full of birds.";

/// (name, user message): three where the answer copies the prompt, one where it does not.
fn prompts() -> Vec<(&'static str, String)> {
    vec![
        (
            "code edit",
            format!(
                "Rewrite this Python function with the variable `total` renamed to `acc`. \
                 Change nothing else and reply with the code only.\n\n{CODE}"
            ),
        ),
        (
            "repeat passage",
            format!(
                "Repeat the following text exactly, but write \"stream\" instead of \
                 \"river\".\n\n{PASSAGE}"
            ),
        ),
        (
            "summarize",
            format!("Summarize this passage in two sentences.\n\n{PASSAGE}"),
        ),
        (
            "open-ended",
            "Write a short story about a robot who learns to bake bread.".to_string(),
        ),
    ]
}

struct Run {
    ids: Vec<u32>,
    decode_tok_s: f64,
    drafted: u64,
    accepted: u64,
}

fn answer(engine: &BurnEngine, user: &str, max_tokens: usize) -> anyhow::Result<Run> {
    let before = engine.status();
    let mut g = engine.submit(GenerateRequest {
        request_id: "bench".into(),
        tenant: "t".into(),
        tenant_weight: 1,
        model: "bench".into(),
        prompt: Prompt::Chat(
            vec![ChatMessage {
                role: "user".into(),
                content: user.into(),
                ..Default::default()
            }],
            Vec::new(),
        ),
        params: SamplingParams {
            temperature: 0.0,
            max_tokens: Some(max_tokens),
            ..Default::default()
        },
    })?;
    let mut ids = Vec::new();
    let mut first = None;
    loop {
        match g.blocking_next() {
            Some(TokenEvent::Token { id, .. }) => {
                first.get_or_insert_with(Instant::now);
                ids.push(id);
            }
            Some(TokenEvent::Finished { .. }) => break,
            Some(TokenEvent::Failed(e)) => anyhow::bail!("{e}"),
            Some(TokenEvent::Started { .. }) => {}
            None => anyhow::bail!("generation ended without Finished"),
        }
    }
    // Decode rate: tokens after the first over the time since the first arrived.
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let decode_tok_s = if secs > 0.0 {
        ids.len().saturating_sub(1) as f64 / secs
    } else {
        0.0
    };
    // The worker updates its counters after the step that ended the sequence.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let after = engine.status();
    Ok(Run {
        ids,
        decode_tok_s,
        drafted: after.spec_drafted_tokens - before.spec_drafted_tokens,
        accepted: after.spec_accepted_tokens - before.spec_accepted_tokens,
    })
}

/// `runs` answers off and on, alternating (so that load from elsewhere hits both alike);
/// the fastest of each.
fn best_pair(
    plain: &BurnEngine,
    fast: &BurnEngine,
    user: &str,
    args: &Args,
) -> anyhow::Result<(Run, Run)> {
    let mut best: (Option<Run>, Option<Run>) = (None, None);
    for _ in 0..args.runs.max(1) {
        for (engine, slot) in [(plain, &mut best.0), (fast, &mut best.1)] {
            let r = answer(engine, user, args.max_tokens)?;
            if let Some(b) = slot.as_ref() {
                anyhow::ensure!(b.ids == r.ids, "greedy output changed between runs");
            }
            if slot
                .as_ref()
                .is_none_or(|b| r.decode_tok_s > b.decode_tok_s)
            {
                *slot = Some(r);
            }
        }
    }
    match best {
        (Some(off), Some(on)) => Ok((off, on)),
        _ => anyhow::bail!("no run"),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let path = match &args.model {
        Some(p) => p.clone(),
        None => default_model::install(&std::env::temp_dir().join("airlock-spec-bench"))?,
    };
    let load = |speculative| {
        BurnEngine::load(&[ModelSpec {
            device: DeviceChoice::Cpu,
            verify_manifest: false,
            prefix_cache: false,
            speculative,
            ..ModelSpec::new("bench", &path)
        }])
    };
    let plain = load(None)?;
    let fast = load(Some(Speculative {
        max_draft: args.max_draft,
        min_ngram: args.min_ngram,
        max_ngram: args.min_ngram.max(3),
    }))?;
    // Warm-up (kernels, allocator).
    answer(&plain, "Hello", 8)?;
    answer(&fast, "Hello", 8)?;
    println!(
        "model: {}, greedy, up to {} tokens, max_draft {}, n-gram {}..{}, best of {}",
        path.display(),
        args.max_tokens,
        args.max_draft,
        args.min_ngram.max(3),
        args.min_ngram,
        args.runs
    );
    println!(
        "| prompt | tokens | identical | drafted | accepted | acceptance | tok/s off | tok/s on | speed-up |"
    );
    println!("|---|---:|:---:|---:|---:|---:|---:|---:|---:|");
    for (name, user) in prompts() {
        let (off, on) = best_pair(&plain, &fast, &user, &args)?;
        let rate = if on.drafted > 0 {
            on.accepted as f64 / on.drafted as f64
        } else {
            0.0
        };
        println!(
            "| {name} | {} | {} | {} | {} | {:.0}% | {:.1} | {:.1} | {:.2}× |",
            on.ids.len(),
            if off.ids == on.ids { "yes" } else { "NO" },
            on.drafted,
            on.accepted,
            rate * 100.0,
            off.decode_tok_s,
            on.decode_tok_s,
            on.decode_tok_s / off.decode_tok_s.max(f64::MIN_POSITIVE)
        );
        anyhow::ensure!(off.ids == on.ids, "{name}: speculative output differs");
    }
    Ok(())
}
