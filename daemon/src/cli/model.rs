//! `airlockd model`: run the engine directly (no server) and write integrity manifests.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airlock_engine::{
    DeviceChoice, GenerateOptions, GenerateReport, Grammar, GrammarSpec, KvCacheDtype, Prompt,
    Quantize,
};
use clap::{Args, Subcommand, ValueEnum};

use super::exit::{EXIT_FAILURE, EXIT_USAGE, fail};

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Run one prompt through the engine and print the continuation (no server, no TLS).
    Generate(GenerateArgs),
    /// Write the model's integrity manifest: DIR/airlock-manifest.json with the SHA-256 and
    /// size of every file in a model directory, or FILE.gguf.manifest.json for a model named
    /// as one GGUF file. The daemon refuses a model whose files do not match it.
    Manifest {
        /// The model directory, or one `.gguf` file.
        #[arg(value_name = "PATH")]
        dir: PathBuf,
    },
    /// Describe a model from its headers (no weights are read): architecture, parameters,
    /// tensor types, context, KV-cache bytes, memory per device, estimated decode speed.
    Inspect {
        /// A Hugging Face directory, a GGUF directory or a `.gguf` file.
        #[arg(value_name = "PATH")]
        path: PathBuf,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Skip the ~0.2 s memory-bandwidth probe (no decode estimate).
        #[arg(long)]
        no_bandwidth: bool,
    },
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The Hugging Face model directory.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// The prompt text.
    #[arg(
        long,
        value_name = "TEXT",
        conflicts_with = "prompt_ids",
        required_unless_present = "prompt_ids"
    )]
    pub prompt: Option<String>,
    /// The prompt as comma-separated token ids, used as given.
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    pub prompt_ids: Option<Vec<u32>>,
    /// Render the prompt as one user message with the model's chat template.
    #[arg(long, conflicts_with = "prompt_ids")]
    pub chat: bool,
    /// Tokens to generate.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0, value_name = "T")]
    pub temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub top_p: f32,
    /// Random seed: the same seed and request give the same output.
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Quantize the projection weights at load (CPU only), like a model's `quantize` key.
    #[arg(long, value_enum, value_name = "q8|q4")]
    pub quantize: Option<QuantizeArg>,
    /// The CPU's KV-cache element type, like a model's `kv_cache_dtype` key (`f32`: what an
    /// `f32` reference computes, for parity checks).
    #[arg(long, value_enum, default_value_t = KvCacheArg::F16, value_name = "f16|f32")]
    pub kv_cache_dtype: KvCacheArg,
    /// Keep generating past EOS (fixed-length runs for benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Refuse the model unless its airlock-manifest.json matches (default: warn only).
    #[arg(long)]
    pub verify: bool,
    /// Write the float32 logits at the last prompt position to FILE as a JSON array.
    #[arg(long, value_name = "FILE")]
    pub logits_out: Option<PathBuf>,
    /// Print one JSON object: prompt_ids, generated_ids, text, timings, device.
    #[arg(long)]
    pub json: bool,
    /// Constrain the output to JSON valid against the JSON Schema in FILE (structured
    /// output, as `response_format: json_schema` does on the API).
    #[arg(long, value_name = "FILE", conflicts_with = "json_object")]
    pub json_schema: Option<PathBuf>,
    /// Constrain the output to a JSON object (`response_format: json_object`).
    #[arg(long)]
    pub json_object: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum QuantizeArg {
    Q8,
    Q4,
}

impl From<QuantizeArg> for Quantize {
    fn from(q: QuantizeArg) -> Self {
        match q {
            QuantizeArg::Q8 => Quantize::Q8,
            QuantizeArg::Q4 => Quantize::Q4,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KvCacheArg {
    F16,
    F32,
}

impl From<KvCacheArg> for KvCacheDtype {
    fn from(d: KvCacheArg) -> Self {
        match d {
            KvCacheArg::F16 => KvCacheDtype::F16,
            KvCacheArg::F32 => KvCacheDtype::F32,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DeviceArg {
    Auto,
    Gpu,
    Cpu,
}

impl From<DeviceArg> for DeviceChoice {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Auto => DeviceChoice::Auto,
            DeviceArg::Gpu => DeviceChoice::Gpu,
            DeviceArg::Cpu => DeviceChoice::Cpu,
        }
    }
}

/// Runs a `model` subcommand; returns the process exit code.
pub fn run(command: ModelCommand) -> ExitCode {
    match command {
        ModelCommand::Manifest { dir } => match airlock_engine::write_manifest(&dir) {
            Ok(path) => {
                println!("wrote {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_FAILURE, e),
        },
        ModelCommand::Generate(args) => generate(args),
        ModelCommand::Inspect {
            path,
            json,
            no_bandwidth,
        } => inspect(&path, json, !no_bandwidth),
    }
}

fn inspect(path: &Path, json: bool, measure: bool) -> ExitCode {
    let report = match airlock_engine::inspect(path, measure) {
        Ok(report) => report,
        Err(e) => {
            return fail(EXIT_FAILURE, format!("model inspect: {e}"));
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                return fail(EXIT_FAILURE, format!("cannot encode the report: {e}"));
            }
        }
    } else {
        print!("{}", crate::model_inspect::render(&report));
    }
    ExitCode::SUCCESS
}

fn generate(args: GenerateArgs) -> ExitCode {
    let prompt = match (args.prompt, args.prompt_ids) {
        (_, Some(ids)) => Prompt::TokenIds(ids),
        (Some(text), None) => Prompt::Text(text),
        (None, None) => {
            return fail(
                EXIT_USAGE,
                "model generate: give --prompt TEXT or --prompt-ids 1,2,3",
            );
        }
    };
    let mut opts = GenerateOptions::new(&args.model, prompt);
    opts.chat = args.chat;
    opts.device = args.device.into();
    opts.verify_manifest = args.verify;
    opts.quantize = args.quantize.map(Quantize::from);
    opts.kv_cache_dtype = args.kv_cache_dtype.into();
    opts.keep_logits = args.logits_out.is_some();
    opts.params.max_tokens = Some(args.max_tokens);
    opts.params.temperature = args.temperature;
    opts.params.top_p = args.top_p;
    opts.params.seed = args.seed;
    opts.params.ignore_eos = args.ignore_eos;
    opts.params.grammar = match (&args.json_schema, args.json_object) {
        (Some(path), _) => {
            let schema = std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()));
            match schema {
                Ok(schema) => Some(Grammar {
                    param: "--json-schema",
                    spec: GrammarSpec::JsonSchema(schema),
                }),
                Err(e) => return fail(EXIT_USAGE, format!("{}: {e}", path.display())),
            }
        }
        (None, true) => Some(Grammar {
            param: "--json-object",
            spec: GrammarSpec::JsonObject,
        }),
        (None, false) => None,
    };

    let report = match airlock_engine::generate_once(&opts) {
        Ok(report) => report,
        Err(e) => {
            return fail(EXIT_FAILURE, e);
        }
    };
    if let Some(path) = &args.logits_out
        && let Err(e) = write_logits(path, &report)
    {
        return fail(EXIT_FAILURE, format!("{}: {e}", path.display()));
    }
    if args.json {
        match serde_json::to_string(&report) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                return fail(EXIT_FAILURE, format!("cannot encode the report: {e}"));
            }
        }
    } else {
        println!("{}", report.text);
        let t = &report.timings;
        eprintln!(
            "{} prompt + {} generated tokens on {} ({}): load {:.2} s, TTFT {:.1} ms, \
             prefill {:.1} tok/s, decode {:.1} tok/s",
            report.prompt_ids.len(),
            report.generated_ids.len(),
            report.device,
            report.finish_reason,
            t.load_s,
            t.ttft_ms,
            t.prefill_tokens_per_s,
            t.decode_tokens_per_s,
        );
    }
    ExitCode::SUCCESS
}

fn write_logits(path: &Path, report: &GenerateReport) -> std::io::Result<()> {
    let logits = report.logits.as_deref().unwrap_or_default();
    let text = serde_json::to_string(logits).map_err(std::io::Error::other)?;
    std::fs::write(path, text)
}
