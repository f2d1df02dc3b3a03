//! Loading one model directory (Hugging Face safetensors or GGUF): manifest, config, weights,
//! tokenizer, device.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::device::place;
use crate::gguf::GgufFile;
use crate::manifest::vouch;
use crate::models::Model;
use crate::models::config::ModelConfig;
use crate::spec::Quantize;
use crate::tokenizer::TextTokenizer;
use crate::weights::Weights;
use crate::{DeviceChoice, EngineError};

/// The format is chosen by what `dir` is or holds: a `.gguf` file is a GGUF model on its
/// own (nothing beside it is read); in a directory, safetensors weights (`model.safetensors`
/// or an index) make it a Hugging Face directory; otherwise exactly one `*.gguf` file makes
/// it a GGUF directory (more than one is refused rather than guessed between). With neither,
/// the Hugging Face loader reports what is missing.
pub(crate) fn gguf_file(dir: &Path) -> Result<Option<PathBuf>, EngineError> {
    if dir.is_file() {
        return if dir.extension().is_some_and(|x| x == "gguf") {
            Ok(Some(dir.to_path_buf()))
        } else {
            Err(EngineError::Load {
                path: dir.to_path_buf(),
                reason: "a model path names a directory (Hugging Face safetensors, or one GGUF \
                         file) or a `.gguf` file; this is another kind of file"
                    .into(),
            })
        };
    }
    if dir.join("model.safetensors").exists() || dir.join("model.safetensors.index.json").exists() {
        return Ok(None);
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        // Let the Hugging Face path name the missing directory or file.
        Err(_) => return Ok(None),
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(EngineError::Load {
            path: dir.to_path_buf(),
            reason: format!(
                "{} GGUF files ({}); a model directory holds exactly one",
                found.len(),
                found
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// A model ready to run, with what the gateway reports about it.
pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: Arc<TextTokenizer>,
    /// The model's context, capped by the operator's `max_context`.
    pub context_length: usize,
    /// e.g. `cpu (flex, f32)`.
    pub device: String,
    pub load_time: Duration,
}

/// How a model directory's integrity is checked before it loads.
#[derive(Clone, Copy, Debug)]
pub enum Integrity<'a> {
    /// `verify = false`: loading goes on with a warning.
    Unverified,
    /// The directory's `airlock-manifest.json` must be present and match, and, when
    /// `pin` is given (the config's `manifest_sha256`), the manifest's own SHA-256 too.
    Manifest { pin: Option<&'a str> },
}

/// Loads `dir` on `device`, checked as `integrity` says.
pub fn load_dir(
    dir: &Path,
    device: DeviceChoice,
    integrity: Integrity<'_>,
    max_context: Option<usize>,
    quantize: Option<Quantize>,
) -> Result<LoadedModel, EngineError> {
    let started = Instant::now();
    let mut vouched = match integrity {
        Integrity::Manifest { pin } => Some(vouch(dir, pin)?),
        Integrity::Unverified => {
            tracing::warn!(dir = %dir.display(), "integrity manifest NOT verified (verify_manifest = false)");
            None
        }
    };
    let (config, tokenizer, weights) = match gguf_file(dir)? {
        None => {
            let config = ModelConfig::from_dir(dir)?;
            let tokenizer = TextTokenizer::from_dir(dir, &config.eos_token_ids)?;
            (config, tokenizer, Weights::open(dir, vouched.as_mut())?)
        }
        Some(path) => {
            let file = GgufFile::open(&path, vouched.as_mut())?;
            let config = ModelConfig::from_gguf(&file)?;
            let tokenizer = TextTokenizer::from_gguf(dir, &file, &config.eos_token_ids)?;
            (config, tokenizer, crate::models::gguf_weights(&file)?)
        }
    };
    // Listed weight files the loader did not read are hashed now: every listed file has
    // been checked before the model serves.
    if let Some(vouched) = vouched {
        vouched.finish()?;
    }
    let placement = place(device)?;
    let mut context_length = config.context_length;
    if let Some(cap) = max_context {
        context_length = context_length.min(cap.max(1));
    }
    // burn reports some failures (out of device memory, a driver error) by panicking; a
    // model that fails to load must be an error, not a crashed daemon.
    let model = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Model::load(
            config,
            &weights,
            &placement.device,
            placement.dtype,
            quantize,
        )
    }))
    .map_err(|_| {
        EngineError::Device(format!(
            "{}: loading the weights panicked",
            placement.description
        ))
    })??;
    let loaded = LoadedModel {
        device: describe(&placement.description, &model),
        model,
        tokenizer: Arc::new(tokenizer),
        context_length,
        load_time: started.elapsed(),
    };
    // The weight files' bytes are freed here: the model holds its own tensors.
    drop(weights);
    tracing::info!(
        dir = %dir.display(),
        architecture = loaded.model.config.architecture,
        device = %loaded.device,
        context_length,
        load_ms = loaded.load_time.as_millis() as u64,
        "model loaded"
    );
    Ok(loaded)
}

/// The placement's description with the projection weights' storage as the last item when it
/// differs from the compute dtype: `cpu (flex, f32)` with bf16 weights becomes
/// `cpu (flex, f32, bf16 weights)`, with `quantize = "q8"` `cpu (flex, f32, q8_0 weights)`.
fn describe(placement: &str, model: &Model) -> String {
    let weights = model.weight_format();
    match placement.strip_suffix(')') {
        Some(head) if !head.ends_with(weights) => format!("{head}, {weights} weights)"),
        _ => placement.to_owned(),
    }
}
