//! `[[models]]`: which engine serves each model, and its scheduling and memory bounds.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_engine::{DeviceChoice, KvCacheDtype, Pooling, Quantize, Speculative};
use serde::Deserialize;

use super::{Invalid, duration_field, invalid, nonzero, resolve};

/// `speculative = { method = "ngram", … }` of a `[[models]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpeculative {
    /// `"ngram"`: drafts looked up in the prompt and output (the only method so far).
    pub method: String,
    #[serde(default)]
    pub max_draft: Option<u64>,
    #[serde(default)]
    pub min_ngram: Option<u64>,
    #[serde(default)]
    pub max_ngram: Option<u64>,
}

/// Largest `max_draft`: a longer draft is a longer pass mostly thrown away.
const MAX_DRAFT: u64 = 32;
/// Largest `max_ngram`.
const MAX_NGRAM: u64 = 16;

impl TryFrom<RawSpeculative> for Speculative {
    type Error = Invalid;

    fn try_from(raw: RawSpeculative) -> Result<Speculative, Invalid> {
        if raw.method != "ngram" {
            return Err(invalid(
                "speculative.method",
                format!("`{}` is not one of \"ngram\"", raw.method),
            ));
        }
        let d = Speculative::default();
        let within = |key: &str, v: Option<u64>, default: usize, max: u64| match v {
            None => Ok(default),
            Some(v) if (1..=max).contains(&v) => Ok(v as usize),
            Some(_) => Err(invalid(
                format!("speculative.{key}"),
                format!("must be between 1 and {max}"),
            )),
        };
        let spec = Speculative {
            max_draft: within("max_draft", raw.max_draft, d.max_draft, MAX_DRAFT)?,
            min_ngram: within("min_ngram", raw.min_ngram, d.min_ngram, MAX_NGRAM)?,
            max_ngram: within("max_ngram", raw.max_ngram, d.max_ngram, MAX_NGRAM)?,
        };
        if spec.min_ngram > spec.max_ngram {
            return Err(invalid(
                "speculative.min_ngram",
                format!("must not exceed max_ngram ({})", spec.max_ngram),
            ));
        }
        Ok(spec)
    }
}

/// One `[[models]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub name: String,
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub verify: Option<bool>,
    /// SHA-256 (hex) of the model's `airlock-manifest.json`.
    #[serde(default)]
    pub manifest_sha256: Option<String>,
    #[serde(default)]
    pub max_queue: Option<u64>,
    #[serde(default)]
    pub max_active: Option<u64>,
    #[serde(default)]
    pub max_context: Option<u64>,
    /// `"q8"` or `"q4"`: quantize the weights at load (on a GPU, blocks in GPU memory).
    #[serde(default)]
    pub quantize: Option<String>,
    #[serde(default)]
    pub prefill_chunk: Option<u64>,
    #[serde(default)]
    pub max_batch_tokens: Option<u64>,
    /// Bytes, as an integer or a string with a binary unit (`"512MiB"`, `"2GiB"`).
    #[serde(default)]
    pub kv_cache: Option<RawSize>,
    /// `"last"`, `"mean"` or `"cls"`: how embeddings are pooled (a sentence-transformers
    /// `1_Pooling/config.json` in the directory, or a GGUF `pooling_type`, wins).
    #[serde(default)]
    pub pooling: Option<String>,
    /// Serve `/v1/embeddings` from this model (default: when `pooling` is set or the
    /// directory has `1_Pooling/config.json`).
    #[serde(default)]
    pub embeddings: Option<bool>,
    /// Reuse the KV cache of a tenant's earlier prompt that starts the same way (default on).
    #[serde(default)]
    pub prefix_cache: Option<bool>,
    /// `"f16"` (default) or `"f32"`: the CPU's KV-cache element type.
    #[serde(default)]
    pub kv_cache_dtype: Option<String>,
    /// Prompt-lookup speculative decoding for greedy requests (default off).
    #[serde(default)]
    pub speculative: Option<RawSpeculative>,
    #[serde(default)]
    pub test_token_delay: Option<String>,
    // backend = "remote" (`super::remote`):
    #[serde(default)]
    pub upstreams: Option<Vec<String>>,
    #[serde(default)]
    pub upstream_model: Option<String>,
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    #[serde(default)]
    pub server_name: Option<String>,
    /// `"least_outstanding"` or `"prefix_affinity"`.
    #[serde(default)]
    pub balance: Option<String>,
    #[serde(default)]
    pub affinity_prefix_bytes: Option<u64>,
    #[serde(default)]
    pub health_path: Option<String>,
    #[serde(default)]
    pub health_interval: Option<String>,
    #[serde(default)]
    pub eject_after: Option<u64>,
    #[serde(default)]
    pub eject_backoff: Option<String>,
    #[serde(default)]
    pub connect_timeout: Option<String>,
    #[serde(default)]
    pub first_byte_timeout: Option<String>,
    #[serde(default)]
    pub idle_timeout: Option<String>,
    #[serde(default)]
    pub max_response_bytes: Option<u64>,
    #[serde(default)]
    pub keepalive_connections: Option<u64>,
    #[serde(default)]
    pub keepalive_timeout: Option<String>,
}

/// A size in bytes: an integer, or a string with a unit.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

/// Which engine serves a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelBackend {
    /// The real engine: a Hugging Face model directory run with burn.
    Burn {
        path: PathBuf,
        device: DeviceChoice,
        verify_manifest: bool,
        /// The SHA-256 the model's `airlock-manifest.json` must have (lowercase hex): the
        /// manifest sits beside the weights, so without a pin whoever can replace the
        /// weights can replace the manifest too.
        manifest_sha256: Option<String>,
        /// Weight quantization at load (`None`: the file's precision).
        quantize: Option<Quantize>,
        /// Embedding pooling when the model declares none (`None`: `last`, `mean` for an
        /// encoder).
        pooling: Option<Pooling>,
        /// Serve embeddings (`None`: when a pooling is declared or configured).
        embeddings: Option<bool>,
        /// Keep ended sequences' KV caches for later prompts of the same tenant.
        prefix_cache: bool,
        /// Prompt-lookup speculative decoding (`None`: off).
        speculative: Option<Speculative>,
        /// The CPU's KV-cache element type.
        kv_cache_dtype: KvCacheDtype,
    },
    /// The deterministic test engine. Never for production: it answers with canned text.
    Test { token_delay: Duration },
    /// A pool of OpenAI-compatible upstream servers that generate for this gateway.
    Remote(Box<super::remote::RemoteConfig>),
}

impl ModelBackend {
    /// Whether the model runs in this process (burn or test engine), not upstream.
    pub fn is_local(&self) -> bool {
        !matches!(self, Self::Remote(_))
    }
}

/// One `[[models]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    pub name: String,
    pub backend: ModelBackend,
    pub max_queue: NonZeroUsize,
    pub max_active: NonZeroUsize,
    pub max_context: Option<NonZeroUsize>,
    /// Most prompt tokens one sequence prefills per engine step (long prompts go in chunks
    /// between other sequences' decode steps).
    pub prefill_chunk: NonZeroUsize,
    /// Most tokens in one batched forward pass.
    pub max_batch_tokens: NonZeroUsize,
    /// KV-cache budget in bytes; `None`: room for `max_active` full contexts.
    pub kv_cache_bytes: Option<NonZeroUsize>,
}

/// Validates one model; paths in errors are relative to the entry (`device`, not `models[0].device`).
pub(super) fn model_config(mut raw: RawModel, base: &Path) -> Result<ModelConfig, Invalid> {
    if raw.name.is_empty()
        || raw.name.len() > 128
        || raw
            .name
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(invalid(
            "name",
            "must be 1 to 128 characters without spaces or control characters",
        ));
    }
    let backend_name = raw.backend.take().unwrap_or_else(|| "burn".to_owned());
    let backend = match backend_name.as_str() {
        "burn" => {
            super::remote::refuse_remote_keys(&raw, "burn")?;
            if raw.test_token_delay.is_some() {
                return Err(invalid(
                    "test_token_delay",
                    "only allowed with backend = \"test\"",
                ));
            }
            let path = raw
                .path
                .ok_or_else(|| invalid("path", "required: the model directory"))?;
            let device = match raw.device.as_deref().unwrap_or("auto") {
                "auto" => DeviceChoice::Auto,
                "gpu" => DeviceChoice::Gpu,
                "cpu" => DeviceChoice::Cpu,
                other => {
                    return Err(invalid(
                        "device",
                        format!("`{other}` is not one of \"auto\", \"gpu\", \"cpu\""),
                    ));
                }
            };
            let quantize = match raw.quantize.as_deref() {
                None => None,
                Some("q8") => Some(Quantize::Q8),
                Some("q4") => Some(Quantize::Q4),
                Some(other) => {
                    return Err(invalid(
                        "quantize",
                        format!("`{other}` is not one of \"q8\", \"q4\""),
                    ));
                }
            };
            let kv_cache_dtype = match raw.kv_cache_dtype.as_deref() {
                None | Some("f16") => KvCacheDtype::F16,
                Some("f32") => KvCacheDtype::F32,
                Some(other) => {
                    return Err(invalid(
                        "kv_cache_dtype",
                        format!("`{other}` is not one of \"f16\", \"f32\""),
                    ));
                }
            };
            let pooling = match raw.pooling.as_deref() {
                None => None,
                Some("last") => Some(Pooling::Last),
                Some("mean") => Some(Pooling::Mean),
                Some("cls") => Some(Pooling::Cls),
                Some(other) => {
                    return Err(invalid(
                        "pooling",
                        format!("`{other}` is not one of \"last\", \"mean\", \"cls\""),
                    ));
                }
            };
            if raw.embeddings == Some(false) && pooling.is_some() {
                return Err(invalid(
                    "pooling",
                    "sets how embeddings are pooled; it cannot be used with embeddings = false",
                ));
            }
            let verify_manifest = raw.verify.unwrap_or(true);
            let manifest_sha256 = match raw.manifest_sha256 {
                None => None,
                Some(_) if !verify_manifest => {
                    return Err(invalid(
                        "manifest_sha256",
                        "pins the manifest that `verify` checks; it cannot be used with \
                         verify = false",
                    ));
                }
                Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    Some(hex.to_ascii_lowercase())
                }
                Some(_) => {
                    return Err(invalid(
                        "manifest_sha256",
                        "must be 64 hexadecimal characters: the SHA-256 of the model's \
                         airlock-manifest.json (`sha256sum airlock-manifest.json`)",
                    ));
                }
            };
            ModelBackend::Burn {
                path: resolve(base, path),
                device,
                verify_manifest,
                manifest_sha256,
                quantize,
                pooling,
                embeddings: raw.embeddings,
                prefix_cache: raw.prefix_cache.unwrap_or(true),
                speculative: raw.speculative.map(Speculative::try_from).transpose()?,
                kv_cache_dtype,
            }
        }
        "test" => {
            super::test_engine_built(cfg!(feature = "test-engine"))?;
            super::remote::refuse_remote_keys(&raw, "test")?;
            for (key, set) in [
                ("path", raw.path.is_some()),
                ("device", raw.device.is_some()),
                ("verify", raw.verify.is_some()),
                ("manifest_sha256", raw.manifest_sha256.is_some()),
                ("quantize", raw.quantize.is_some()),
                ("pooling", raw.pooling.is_some()),
                ("embeddings", raw.embeddings.is_some()),
                ("prefix_cache", raw.prefix_cache.is_some()),
                ("speculative", raw.speculative.is_some()),
                ("kv_cache_dtype", raw.kv_cache_dtype.is_some()),
            ] {
                if set {
                    return Err(invalid(key, "not used with backend = \"test\""));
                }
            }
            ModelBackend::Test {
                token_delay: duration_field(
                    "test_token_delay",
                    raw.test_token_delay,
                    Duration::ZERO,
                )?,
            }
        }
        "remote" => ModelBackend::Remote(Box::new(super::remote::remote(&mut raw, base)?)),
        other => {
            return Err(invalid(
                "backend",
                format!("`{other}` is not one of \"burn\", \"test\", \"remote\""),
            ));
        }
    };
    Ok(ModelConfig {
        name: raw.name,
        backend,
        max_queue: nonzero("max_queue", raw.max_queue, 64)?,
        max_active: nonzero("max_active", raw.max_active, 8)?,
        max_context: match raw.max_context {
            None => None,
            Some(v) => Some(nonzero("max_context", Some(v), 1)?),
        },
        prefill_chunk: nonzero("prefill_chunk", raw.prefill_chunk, 256)?,
        max_batch_tokens: nonzero("max_batch_tokens", raw.max_batch_tokens, 512)?,
        kv_cache_bytes: match raw.kv_cache {
            None => None,
            Some(size) => Some(byte_size("kv_cache", size)?),
        },
    })
}

/// `1048576`, `"1048576"`, `"512MiB"`, `"2GiB"`, `"64 KiB"` → bytes (binary units only, so
/// there is no doubt whether a G is 10⁹ or 2³⁰).
fn byte_size(path: &str, size: RawSize) -> Result<NonZeroUsize, Invalid> {
    let bytes = match size {
        RawSize::Bytes(b) => b,
        RawSize::Text(text) => {
            let t = text.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (digits, unit) = t.split_at(split);
            let shift = match unit.trim() {
                "" | "B" => 0,
                "KiB" => 10,
                "MiB" => 20,
                "GiB" => 30,
                "TiB" => 40,
                other => {
                    return Err(invalid(
                        path,
                        format!("unit `{other}` is not one of B, KiB, MiB, GiB, TiB"),
                    ));
                }
            };
            let n: u64 = digits
                .parse()
                .map_err(|_| invalid(path, format!("`{text}` is not a size like \"2GiB\"")))?;
            n.checked_mul(1 << shift)
                .ok_or_else(|| invalid(path, "value is too large"))?
        }
    };
    let bytes = usize::try_from(bytes).map_err(|_| invalid(path, "value is too large"))?;
    NonZeroUsize::new(bytes).ok_or_else(|| invalid(path, "must be at least 1 byte"))
}
