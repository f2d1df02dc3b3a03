//! `airlockd model inspect`: what a model is and what it needs, from its headers alone.
//!
//! An operator asks this before buying hardware or writing a config: architecture, size,
//! tensor types, context, KV-cache cost, memory per device, and how fast decoding can be on
//! this machine. Only headers and metadata are read (GGUF header and tensor table,
//! safetensors JSON headers, `config.json`, `tokenizer_config.json`), each bounded, so
//! inspecting a 70 GB file reads megabytes, not the weights.
//!
//! The decode estimate is bandwidth-bound: one decode step streams every weight it uses
//! once, so tokens/s is at most the machine's memory read bandwidth divided by the bytes
//! read per token. The bandwidth is measured here, briefly (a multi-threaded sum over a
//! buffer larger than the last-level cache); compute, cache effects and the KV cache's own
//! reads make real decoding slower, which is why it is reported as an estimate.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::EngineError;
use crate::gguf::{GgufFile, Value};
use crate::kv::kv_bytes_per_token;
use crate::loader::gguf_file;
use crate::models::config::ModelConfig;

/// The most of a GGUF file read for its header (metadata and tensor table). A 150k-token
/// vocabulary with merges takes ~10 MB; a header past this is refused, not read.
pub const MAX_GGUF_HEADER: usize = 256 << 20;
/// The safetensors format's own cap on its JSON header.
const MAX_SAFETENSORS_HEADER: u64 = 100 << 20;
/// The most read of a small JSON file (`config.json`, `tokenizer_config.json`, the index).
const MAX_JSON: u64 = 64 << 20;
/// The bandwidth probe's buffer: larger than any current CPU's last-level cache.
const PROBE_BYTES: usize = 512 << 20;

/// Everything `model inspect` reports.
#[derive(Clone, Debug, Serialize)]
pub struct ModelReport {
    pub path: PathBuf,
    /// `gguf` or `safetensors`.
    pub format: &'static str,
    /// Bytes of the weight files on disk.
    pub file_bytes: u64,
    /// `llama`, `mistral`, `qwen2`, … (GGUF's `general.architecture` names).
    pub architecture: String,
    pub parameters: u64,
    pub layers: usize,
    pub hidden_size: usize,
    pub attention_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// The model's own context length (a config's `max_context` may cap it).
    pub context_length: usize,
    /// Whether a chat template ships with the model (without one, chat requests are refused).
    pub chat_template: bool,
    pub tensor_count: usize,
    /// Bytes of the tensors as stored.
    pub weight_bytes: u64,
    /// One row per storage type, largest share of bytes first.
    pub tensor_types: Vec<TypeShare>,
    pub kv_bytes_per_token: KvBytes,
    pub memory: Vec<MemoryNeed>,
    /// Absent when the bandwidth was not measured.
    pub decode_estimate: Option<DecodeEstimate>,
    /// Weight bytes one decode step reads, for [`DecodeEstimate`].
    #[serde(skip)]
    decode_bytes_per_token: u64,
}

/// The tensors stored in one type.
#[derive(Clone, Debug, Serialize)]
pub struct TypeShare {
    /// ggml's name: `F32`, `BF16`, `Q4_K`, …
    pub dtype: String,
    pub tensors: usize,
    pub parameters: u64,
    pub bytes: u64,
    /// Of all tensor bytes, 0..=1.
    pub bytes_share: f64,
    /// Of all tensors, 0..=1.
    pub count_share: f64,
}

/// Bytes `parameters` weights of ggml type `dtype` take on a wgpu device
/// (`layers::linear`): `Q8_0`/`Q4_0` as 8-bit values with an `f16` scale per 32; the
/// K-quants and `IQ4_XS` as 8-bit values with an `f32` scale per 16, plus an `f16` minimum per
/// 16 for the types with minima; anything else `f16`.
fn gpu_bytes(dtype: &str, parameters: u64) -> u64 {
    let (num, den) = match dtype {
        "Q8_0" | "Q4_0" => (17, 16),
        "Q2_K" | "Q4_K" | "Q5_K" => (22, 16),
        "Q3_K" | "Q6_K" | "IQ4_XS" => (20, 16),
        _ => (2, 1),
    };
    parameters * num / den
}

/// Bytes one cached position takes across all layers, per compute precision.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct KvBytes {
    /// The CPU backend's default cache: `f16` pages (attention computes in `f32`).
    pub cpu_f16: usize,
    /// The CPU backend with `kv_cache_dtype = "f32"`.
    pub cpu_f32: usize,
    /// wgpu computes and caches in f16.
    pub wgpu_f16: usize,
}

/// Memory one model takes on one device.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryNeed {
    /// `cpu` or `wgpu`.
    pub device: &'static str,
    /// How the weights are held there.
    pub weights: String,
    pub weights_bytes: u64,
    /// The KV cache of one sequence at the full context length.
    pub kv_bytes_full_context: u64,
    pub total_bytes: u64,
}

/// The bandwidth-bound decode speed on this machine (CPU, weights as stored).
#[derive(Clone, Debug, Serialize)]
pub struct DecodeEstimate {
    /// Measured memory read bandwidth, GB/s (10⁹ bytes).
    pub read_bandwidth_gb_s: f64,
    pub threads: usize,
    /// Weight bytes one decode step reads (the embedding table only counts when it is also
    /// the output projection).
    pub bytes_per_token: u64,
    pub tokens_per_s: f64,
    /// The same with one full-context KV cache read on top.
    pub tokens_per_s_full_context: f64,
    pub note: &'static str,
}

/// Inspects the model at `path` (a Hugging Face directory, a GGUF directory or a `.gguf`
/// file). `measure` runs the bandwidth probe for the decode estimate (~0.2 s).
pub fn inspect(path: &Path, measure: bool) -> Result<ModelReport, EngineError> {
    let mut report = match gguf_file(path)? {
        Some(file) => inspect_gguf(path, &file)?,
        None => inspect_safetensors(path)?,
    };
    if measure {
        let bw = measure_read_bandwidth(Duration::from_millis(200));
        report.decode_estimate = Some(estimate(&report, bw));
    }
    Ok(report)
}

/// One tensor, as far as the report cares.
struct Tensor {
    name: String,
    dtype: String,
    numel: u64,
    bytes: u64,
}

fn inspect_gguf(path: &Path, file: &Path) -> Result<ModelReport, EngineError> {
    let gguf = GgufFile::open_header(file, MAX_GGUF_HEADER)?;
    let config = ModelConfig::from_gguf(&gguf)?;
    let tensors: Vec<Tensor> = gguf
        .tensors
        .iter()
        .map(|t| Tensor {
            name: t.name.clone(),
            dtype: t.dtype.name().to_owned(),
            numel: t.shape.iter().map(|&d| d as u64).product(),
            bytes: (t.end - t.start) as u64,
        })
        .collect();
    // A GGUF directory with a `tokenizer.json` takes its tokenizer and template from there
    // (as the loader does); otherwise the template is the file's metadata.
    let dir_template =
        path.is_dir() && path.join("tokenizer.json").exists() && { hf_chat_template(path)? };
    let chat_template = dir_template
        || gguf
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.trim().is_empty());
    let architecture = gguf.architecture()?.to_owned();
    let file_bytes = file_len(file)?;
    Ok(build(
        path,
        "gguf",
        architecture,
        &config,
        tensors,
        ["token_embd.weight", "output.weight"],
        chat_template,
        file_bytes,
    ))
}

fn inspect_safetensors(dir: &Path) -> Result<ModelReport, EngineError> {
    let config = ModelConfig::from_dir(dir)?;
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let shards: Vec<PathBuf> = if single.is_file() {
        vec![single]
    } else if index.is_file() {
        let value = read_json(&index)?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| load(&index, "`weight_map`: missing or not an object"))?;
        let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let mut shards = Vec::new();
        for name in names {
            if name.contains('/') || name.contains('\\') || name.starts_with('.') {
                return Err(load(
                    &index,
                    format!("`weight_map`: shard `{name}` is not a plain file name"),
                ));
            }
            shards.push(dir.join(name));
        }
        shards
    } else {
        return Err(load(
            &single,
            "missing (nor is there a model.safetensors.index.json or a .gguf file)",
        ));
    };
    let mut tensors = Vec::new();
    let mut file_bytes = 0;
    for shard in &shards {
        file_bytes += file_len(shard)?;
        safetensors_header(shard, &mut tensors)?;
    }
    let architecture = config.architecture.to_owned();
    let chat_template = hf_chat_template(dir)?;
    Ok(build(
        dir,
        "safetensors",
        architecture,
        &config,
        tensors,
        ["model.embed_tokens.weight", "lm_head.weight"],
        chat_template,
        file_bytes,
    ))
}

#[expect(clippy::too_many_arguments, reason = "one call per format, all named")]
fn build(
    path: &Path,
    format: &'static str,
    architecture: String,
    config: &ModelConfig,
    tensors: Vec<Tensor>,
    [embedding, output]: [&str; 2],
    chat_template: bool,
    file_bytes: u64,
) -> ModelReport {
    let parameters: u64 = tensors.iter().map(|t| t.numel).sum();
    let weight_bytes: u64 = tensors.iter().map(|t| t.bytes).sum();
    let mut types: Vec<TypeShare> = Vec::new();
    for t in &tensors {
        let row = match types.iter_mut().position(|r| r.dtype == t.dtype) {
            Some(i) => &mut types[i],
            None => {
                types.push(TypeShare {
                    dtype: t.dtype.clone(),
                    tensors: 0,
                    parameters: 0,
                    bytes: 0,
                    bytes_share: 0.0,
                    count_share: 0.0,
                });
                let last = types.len() - 1;
                &mut types[last]
            }
        };
        row.tensors += 1;
        row.parameters += t.numel;
        row.bytes += t.bytes;
    }
    for row in &mut types {
        row.bytes_share = ratio(row.bytes, weight_bytes);
        row.count_share = ratio(row.tensors as u64, tensors.len() as u64);
    }
    types.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.dtype.cmp(&b.dtype)));

    let kv = KvBytes {
        cpu_f16: kv_bytes_per_token(config.num_layers, config.num_kv_heads, config.head_dim, 2),
        cpu_f32: kv_bytes_per_token(config.num_layers, config.num_kv_heads, config.head_dim, 4),
        wgpu_f16: kv_bytes_per_token(config.num_layers, config.num_kv_heads, config.head_dim, 2),
    };
    let ctx = config.context_length as u64;
    let gpu_weights: u64 = types
        .iter()
        .map(|t| gpu_bytes(&t.dtype, t.parameters))
        .sum();
    let stored = match types.as_slice() {
        [only] => format!("{} as stored", only.dtype),
        _ => "as stored (mixed types)".to_owned(),
    };
    let memory = vec![
        MemoryNeed {
            device: "cpu",
            weights: stored,
            weights_bytes: weight_bytes,
            kv_bytes_full_context: kv.cpu_f16 as u64 * ctx,
            total_bytes: weight_bytes + kv.cpu_f16 as u64 * ctx,
        },
        MemoryNeed {
            device: "wgpu",
            weights: "GPU blocks or F16".to_owned(),
            weights_bytes: gpu_weights,
            kv_bytes_full_context: kv.wgpu_f16 as u64 * ctx,
            total_bytes: gpu_weights + kv.wgpu_f16 as u64 * ctx,
        },
    ];
    // Decoding reads one row of the embedding table, unless the table is also the output
    // projection (tied), which is read whole.
    let tied = !tensors.iter().any(|t| t.name == output);
    let embedding_bytes = tensors
        .iter()
        .find(|t| t.name == embedding)
        .map_or(0, |t| t.bytes);
    let bytes_per_token = if tied {
        weight_bytes
    } else {
        weight_bytes - embedding_bytes
    };
    ModelReport {
        path: path.to_path_buf(),
        format,
        file_bytes,
        architecture,
        parameters,
        layers: config.num_layers,
        hidden_size: config.hidden_size,
        attention_heads: config.num_heads,
        kv_heads: config.num_kv_heads,
        head_dim: config.head_dim,
        vocab_size: config.vocab_size,
        context_length: config.context_length,
        chat_template,
        tensor_count: tensors.len(),
        weight_bytes,
        tensor_types: types,
        kv_bytes_per_token: kv,
        memory,
        decode_estimate: None,
        decode_bytes_per_token: bytes_per_token,
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Memory read bandwidth, measured.
#[derive(Clone, Copy, Debug)]
pub struct Bandwidth {
    pub bytes_per_s: f64,
    pub threads: usize,
}

/// Fills the report's decode estimate from a measured bandwidth.
fn estimate(report: &ModelReport, bw: Bandwidth) -> DecodeEstimate {
    let bytes_per_token = report.decode_bytes_per_token;
    let full =
        bytes_per_token + report.kv_bytes_per_token.cpu_f16 as u64 * report.context_length as u64;
    let per_s = |bytes: u64| {
        if bytes == 0 {
            0.0
        } else {
            bw.bytes_per_s / bytes as f64
        }
    };
    DecodeEstimate {
        read_bandwidth_gb_s: bw.bytes_per_s / 1e9,
        threads: bw.threads,
        bytes_per_token,
        tokens_per_s: per_s(bytes_per_token),
        tokens_per_s_full_context: per_s(full),
        note: "estimate: measured memory read bandwidth / weight bytes read per decode step \
               (CPU, weights as stored, one sequence); an upper bound, real decoding also \
               pays for compute and attention",
    }
}

/// Measures memory read bandwidth: every available thread sums its part of a
/// [`PROBE_BYTES`] buffer (written first, so its pages are real and local) over and over
/// for about `duration`.
pub fn measure_read_bandwidth(duration: Duration) -> Bandwidth {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let words = PROBE_BYTES / 8;
    let per_thread = (words / threads).max(1024);
    let barrier = std::sync::Barrier::new(threads);
    let results: Vec<(u64, Duration)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let buf: Vec<u64> = (0..per_thread as u64)
                        .map(|i| i ^ (t as u64) << 32)
                        .collect();
                    barrier.wait();
                    let start = Instant::now();
                    let mut read = 0u64;
                    let mut acc = [0u64; 8];
                    while start.elapsed() < duration {
                        for chunk in buf.chunks_exact(8) {
                            for (a, v) in acc.iter_mut().zip(chunk) {
                                *a = a.wrapping_add(*v);
                            }
                        }
                        read += (buf.len() / 8 * 64) as u64;
                        std::hint::black_box(&acc);
                    }
                    (read, start.elapsed())
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let bytes: u64 = results.iter().map(|r| r.0).sum();
    let secs = results
        .iter()
        .map(|r| r.1.as_secs_f64())
        .fold(0.0f64, f64::max);
    Bandwidth {
        bytes_per_s: if secs > 0.0 { bytes as f64 / secs } else { 0.0 },
        threads,
    }
}

fn load(path: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::Load {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn file_len(path: &Path) -> Result<u64, EngineError> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| load(path, format!("cannot open: {e}")))
}

/// Reads a small JSON file, refusing one larger than [`MAX_JSON`].
fn read_json(path: &Path) -> Result<serde_json::Value, EngineError> {
    let file = std::fs::File::open(path).map_err(|e| load(path, format!("cannot open: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_JSON + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| load(path, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_JSON {
        return Err(load(
            path,
            format!("larger than the {MAX_JSON} bytes inspect reads of a JSON file"),
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| load(path, format!("invalid JSON: {e}")))
}

/// Whether a Hugging Face directory ships a chat template (`chat_template` in
/// `tokenizer_config.json`, or `chat_template.jinja`).
fn hf_chat_template(dir: &Path) -> Result<bool, EngineError> {
    if dir.join("chat_template.jinja").is_file() {
        return Ok(true);
    }
    let cfg = dir.join("tokenizer_config.json");
    if !cfg.is_file() {
        return Ok(false);
    }
    Ok(match read_json(&cfg)?.get("chat_template") {
        Some(serde_json::Value::String(s)) => !s.trim().is_empty(),
        Some(serde_json::Value::Array(items)) => !items.is_empty(),
        _ => false,
    })
}

/// Reads one safetensors file's JSON header (never its data) into `out`, checking each
/// tensor's dtype, shape and byte range against the file's size.
fn safetensors_header(path: &Path, out: &mut Vec<Tensor>) -> Result<(), EngineError> {
    let len = file_len(path)?;
    let mut file =
        std::fs::File::open(path).map_err(|e| load(path, format!("cannot open: {e}")))?;
    let mut n = [0u8; 8];
    file.read_exact(&mut n)
        .map_err(|e| load(path, format!("cannot read the header length: {e}")))?;
    let n = u64::from_le_bytes(n);
    if n > MAX_SAFETENSORS_HEADER || n.saturating_add(8) > len {
        return Err(load(
            path,
            format!(
                "header length {n} is larger than the file ({len} bytes) or the format's \
                 {MAX_SAFETENSORS_HEADER} byte limit"
            ),
        ));
    }
    let mut header = Vec::new();
    file.take(n)
        .read_to_end(&mut header)
        .map_err(|e| load(path, format!("cannot read the header: {e}")))?;
    let value: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| load(path, format!("invalid safetensors header: {e}")))?;
    let map = value
        .as_object()
        .ok_or_else(|| load(path, "safetensors header: not a JSON object"))?;
    let data_len = len - 8 - n;
    for (name, info) in map {
        if name == "__metadata__" {
            continue;
        }
        let bad = |field: &str| {
            load(
                path,
                format!("tensor `{name}`: `{field}` missing or invalid"),
            )
        };
        let dtype = info
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad("dtype"))?;
        let elem: u64 = match dtype {
            "F32" => 4,
            "F16" | "BF16" => 2,
            "I64" | "I32" if crate::weights::is_id_buffer(name) => continue,
            other => {
                return Err(load(
                    path,
                    format!(
                        "tensor `{name}`: dtype {other} is not supported (supported: F32, F16, BF16)"
                    ),
                ));
            }
        };
        let shape = info
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("shape"))?;
        let mut numel = 1u64;
        for d in shape {
            let d = d.as_u64().ok_or_else(|| bad("shape"))?;
            numel = numel.checked_mul(d).ok_or_else(|| bad("shape"))?;
        }
        let offsets: Vec<u64> = info
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .map(|o| o.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default();
        let [start, end] = offsets.as_slice() else {
            return Err(bad("data_offsets"));
        };
        if end < start || end - start != numel.saturating_mul(elem) || *end > data_len {
            return Err(load(
                path,
                format!(
                    "tensor `{name}`: data offsets {start}..{end} do not hold {numel} {dtype} \
                     elements inside the {data_len} data bytes"
                ),
            ));
        }
        out.push(Tensor {
            name: name.clone(),
            dtype: dtype.to_owned(),
            numel,
            bytes: end - start,
        });
    }
    Ok(())
}
