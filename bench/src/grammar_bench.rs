//! Grammar overhead: the cost of constrained decoding (structured outputs) per generated
//! token, against the same decode without a grammar, on one model directory. Single stream
//! (`generate_once`) and, with `--streams`, N concurrent streams through the engine API
//! (where every sequence's mask is computed on the engine thread each step). The schema
//! forces a long, structured answer (an array of objects with enum, boolean and bounded
//! integer fields), so every run generates exactly `--decode-tokens` tokens. Prints
//! figures; asserts nothing.
//!
//! ```sh
//! cargo run --release -p airlock-bench --bin grammar-bench -- --model DIR --streams 16
//! ```

mod streams;

use std::path::PathBuf;

use airlock_engine::{
    DeviceChoice, GenerateOptions, Grammar, GrammarSpec, Prompt, SamplingParams, generate_once,
};
use clap::Parser;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Measure the per-token overhead of grammar-constrained decoding")]
struct Args {
    /// A Hugging Face model directory (or a GGUF file).
    #[arg(long)]
    model: PathBuf,
    /// Tokens to decode per run.
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Also measure N concurrent streams through the engine API (comma-separated).
    #[arg(long, value_delimiter = ',')]
    streams: Vec<usize>,
}

/// Long enough that no run finishes it within `--decode-tokens`.
fn schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {"records": {
            "type": "array", "minItems": 500, "maxItems": 500,
            "items": {
                "type": "object",
                "properties": {
                    "kind": {"enum": ["invoice", "receipt", "refund"]},
                    "flagged": {"type": "boolean"},
                    "amount": {"type": "integer", "minimum": 0, "maximum": 99999},
                },
                "required": ["kind", "flagged", "amount"],
                "additionalProperties": false,
            },
        }},
        "required": ["records"],
        "additionalProperties": false,
    })
}

fn params(args: &Args, grammar: bool) -> SamplingParams {
    SamplingParams {
        max_tokens: Some(args.decode_tokens),
        temperature: 1.0,
        seed: Some(7),
        // Without a grammar the random-weight models would stop at a sampled EOS; with one,
        // EOS is masked until the (unreachable) end of the array.
        ignore_eos: !grammar,
        grammar: grammar.then(|| Grammar {
            param: "response_format",
            spec: GrammarSpec::JsonSchema(schema()),
        }),
        ..Default::default()
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rates = Vec::new();
    for grammar in [false, true] {
        let mut opts = GenerateOptions::new(&args.model, Prompt::Text("Records:".into()));
        opts.device = DeviceChoice::Cpu;
        opts.params = params(&args, grammar);
        let report = generate_once(&opts)?;
        if grammar {
            println!("constrained text: {:.80}…", report.text);
        }
        rates.push((
            report.timings.decode_tokens_per_s,
            report.generated_ids.len(),
        ));
    }
    let overhead = |free: f64, constrained: f64| {
        let step = 1e3 / free;
        let extra = 1e3 / constrained - step;
        (step, extra, 100.0 * extra / step)
    };
    println!("model:            {}", args.model.display());
    let (step, extra, pct) = overhead(rates[0].0, rates[1].0);
    println!(
        "single stream:    free {:.2} tok/s ({} tokens), constrained {:.2} tok/s ({} tokens)",
        rates[0].0, rates[0].1, rates[1].0, rates[1].1
    );
    println!("  per token:      {step:.2} ms + {extra:.3} ms mask = {pct:+.1} %");
    for &n in &args.streams {
        let free =
            streams::concurrent_decode(&args.model, DeviceChoice::Cpu, n, &params(&args, false))?;
        let constrained =
            streams::concurrent_decode(&args.model, DeviceChoice::Cpu, n, &params(&args, true))?;
        let (step, extra, pct) = overhead(free, constrained);
        println!(
            "x{n:<3} streams:     free {free:.2} tok/s, constrained {constrained:.2} tok/s aggregate"
        );
        println!("  per token:      {step:.3} ms + {extra:.3} ms mask = {pct:+.1} %");
    }
    let streams: Vec<String> = args.streams.iter().map(|n| n.to_string()).collect();
    println!(
        "reproduce:        cargo run {}-p airlock-bench --bin grammar-bench -- --model {} --decode-tokens {}{}",
        if cfg!(debug_assertions) {
            ""
        } else {
            "--release "
        },
        args.model.display(),
        args.decode_tokens,
        if streams.is_empty() {
            String::new()
        } else {
            format!(" --streams {}", streams.join(","))
        }
    );
    Ok(())
}
