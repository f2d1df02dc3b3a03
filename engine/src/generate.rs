//! One-shot generation for the developer CLI (`airlockd model generate`) and parity checks:
//! load a directory, run one prompt, report ids, text, timings and the prompt's last-position
//! logits. Runs on the calling thread, through the same loader and sequence code as the
//! engine.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::detok::StopMatcher;
use crate::loader::{Integrity, load_dir};
use crate::sampling::validate;
use crate::sequence::Sequence;
use crate::{
    ChatMessage, DeviceChoice, EngineError, KvCacheDtype, Prompt, Quantize, SamplingParams,
    TokenEvent,
};

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// A Hugging Face model directory.
    pub model_dir: PathBuf,
    /// Text, chat (text sent as one user message when `chat` is set) or token ids.
    pub prompt: Prompt,
    /// Wrap a text prompt in the chat template as a single user message.
    pub chat: bool,
    pub params: SamplingParams,
    pub device: DeviceChoice,
    /// Check `airlock-manifest.json` first (warn only when false).
    pub verify_manifest: bool,
    /// Keep the prompt's last-position logits in [`GenerateReport::logits`].
    pub keep_logits: bool,
    /// Quantize the projection weights at load (CPU only), as a model's `quantize` key does.
    pub quantize: Option<Quantize>,
    /// The CPU's KV-cache element type, as a model's `kv_cache_dtype` key sets it.
    pub kv_cache_dtype: KvCacheDtype,
}

impl GenerateOptions {
    /// Defaults: greedy, 32 tokens, automatic device, no manifest check.
    pub fn new(model_dir: impl Into<PathBuf>, prompt: Prompt) -> Self {
        GenerateOptions {
            model_dir: model_dir.into(),
            prompt,
            chat: false,
            params: SamplingParams {
                max_tokens: Some(32),
                ..SamplingParams::default()
            },
            device: DeviceChoice::Auto,
            verify_manifest: false,
            keep_logits: false,
            quantize: None,
            kv_cache_dtype: KvCacheDtype::default(),
        }
    }
}

/// Timings of a one-shot generation.
#[derive(Clone, Debug, Serialize)]
pub struct GenerateTimings {
    pub load_s: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub ttft_ms: f64,
}

/// The result, serialized as the CLI's `--json` output.
#[derive(Clone, Debug, Serialize)]
pub struct GenerateReport {
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    pub text: String,
    pub timings: GenerateTimings,
    pub device: String,
    /// Why generation stopped: `stop` or `length`.
    pub finish_reason: String,
    /// The prompt's last-position logits (float32), when asked for; `--logits-out` writes
    /// them as a JSON array.
    #[serde(skip)]
    pub logits: Option<Vec<f32>>,
}

/// Loads the model and generates once.
pub fn generate_once(opts: &GenerateOptions) -> Result<GenerateReport, EngineError> {
    validate(&opts.params)?;
    let mut loaded = load_dir(
        &opts.model_dir,
        opts.device,
        if opts.verify_manifest {
            Integrity::Manifest { pin: None }
        } else {
            Integrity::Unverified
        },
        None,
        opts.quantize,
    )?;
    loaded.model.set_kv_cache_dtype(opts.kv_cache_dtype);
    let prompt = match (&opts.prompt, opts.chat) {
        (Prompt::Text(text), true) => Prompt::Chat(
            vec![ChatMessage {
                role: "user".into(),
                content: text.clone(),
                ..ChatMessage::default()
            }],
            Vec::new(),
        ),
        (p, _) => p.clone(),
    };
    let ids = loaded.tokenizer.encode_prompt(&prompt)?;
    if ids.len() >= loaded.context_length {
        return Err(EngineError::ContextLength {
            context_length: loaded.context_length,
            prompt_tokens: ids.len(),
            max_tokens: opts.params.max_tokens.unwrap_or(1),
        });
    }
    let stop = StopMatcher::new(&opts.params.stop)?;
    let mut seq = Sequence::new(&loaded, ids, &opts.params, stop, Instant::now());
    if opts.keep_logits {
        seq.keep_prompt_logits();
    }
    if let Some(grammar) = &opts.params.grammar {
        let grammars = crate::constraint::Grammars::new(loaded.model.config.vocab_size);
        seq.constrain(grammars.compile(&loaded.tokenizer, grammar)?);
    }
    let mut text = String::new();
    let mut finished = None;
    while !seq.is_finished() {
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| seq.step(&loaded)))
            .unwrap_or_else(|_| Err(EngineError::Inference("the forward pass panicked".into())))?;
        for event in step {
            match event {
                TokenEvent::Token { text: t, .. } => text.push_str(&t),
                TokenEvent::Finished {
                    reason,
                    timings,
                    text: t,
                    ..
                } => {
                    text.push_str(&t);
                    finished = Some((reason, timings));
                }
                TokenEvent::Started { .. } | TokenEvent::Failed(_) => {}
            }
        }
    }
    let (reason, t) = finished
        .ok_or_else(|| EngineError::Inference("generation ended without finishing".into()))?;
    Ok(GenerateReport {
        prompt_ids: seq.prompt().to_vec(),
        generated_ids: seq.generated().to_vec(),
        text,
        timings: GenerateTimings {
            load_s: loaded.load_time.as_secs_f64(),
            prefill_tokens_per_s: t.prefill_tokens_per_s,
            decode_tokens_per_s: t.decode_tokens_per_s,
            ttft_ms: t.time_to_first_token_ms,
        },
        device: loaded.device.clone(),
        finish_reason: reason.as_str().to_owned(),
        logits: seq.prompt_logits.take(),
    })
}
