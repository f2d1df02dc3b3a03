//! Weights read into memory, converted to `f32` on demand: safetensors (single file or
//! sharded with an index) or one GGUF file. Every lookup checks presence, dtype and shape and
//! names the tensor.
//!
//! The files are read, not memory-mapped: with a manifest, the bytes read are the bytes
//! hashed ([`crate::manifest::Vouched::read`]), and once the model is built nothing refers
//! to the files any more, so an edit after verification cannot reach the model and a
//! truncation cannot fault the process (a shared mapping of a truncated file raises
//! SIGBUS). The price is the weight files' size in memory while the model loads; the token
//! embeddings keep their own copy afterwards ([`RowTable`]).
//!
//! Lookups always use Hugging Face names and layouts (`model.layers.0.self_attn.q_proj.weight`,
//! `[out, in]`), so the model never learns which format it came from: a GGUF tensor is
//! registered under its HF name (each architecture's table in [`crate::models`]), and
//! llama.cpp's per-head row permutation of Llama's q/k projections is undone as rows are read (whole rows move, so this works on quantized rows
//! too: GGUF's quantized blocks run along the input dimension, inside a row).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::{Dtype, SafeTensors};

use crate::EngineError;
use crate::gguf::GgufFile;
use crate::manifest::Vouched;
use crate::tensor_file::{WeightDType, convert_into, read_weights};

/// A weight tensor as stored, in HF layout: what a [`crate::layers::linear::Linear`] that keeps
/// quantized blocks needs to use them without requantizing.
pub struct RawTensor<'a> {
    pub dtype: WeightDType,
    /// Row-major, outermost first (`[out, in]` for a projection).
    pub shape: Vec<usize>,
    /// Borrowed from the mapped file, or a copy when rows had to be reordered.
    pub bytes: Cow<'a, [u8]>,
}

#[derive(Clone, Debug)]
struct Entry {
    file: usize,
    dtype: WeightDType,
    shape: Vec<usize>,
    /// Absolute byte range inside the mapped file.
    start: usize,
    end: usize,
    /// GGUF Llama q/k projections: the head count whose per-head row permutation
    /// (llama.cpp's `permute`) is undone on read.
    unpermute_heads: Option<usize>,
}

/// The weight files of one model directory, in memory.
pub struct Weights {
    files: Vec<(PathBuf, Arc<Vec<u8>>)>,
    entries: HashMap<String, Entry>,
}

/// A row-addressable 2-D tensor kept as stored (token embeddings: only the rows of the
/// tokens in a step are ever converted, so a large vocabulary costs its stored size, not
/// its `f32` size).
#[derive(Clone)]
pub struct RowTable {
    bytes: Arc<[u8]>,
    dtype: WeightDType,
    rows: usize,
    cols: usize,
}

impl RowTable {
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Appends row `row` as `f32` to `out`; `None` when `row` is out of range.
    pub fn push_row(&self, row: usize, out: &mut Vec<f32>) -> Option<()> {
        if row >= self.rows {
            return None;
        }
        let size = self.dtype.bytes_for(self.cols);
        let begin = row * size;
        let bytes = self.bytes.get(begin..begin + size)?;
        convert_into(bytes, self.dtype, out);
        Some(())
    }
}

/// An integer buffer of token or position ids stored beside the weights.
pub(crate) fn is_id_buffer(name: &str) -> bool {
    name.ends_with("position_ids") || name.ends_with("token_type_ids")
}

impl Weights {
    /// Reads `model.safetensors`, or the shards listed in `model.safetensors.index.json`,
    /// each checked against the manifest when `vouched` is given.
    pub fn open(dir: &Path, mut vouched: Option<&mut Vouched>) -> Result<Weights, EngineError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let names: Vec<String> = if single.exists() {
            vec!["model.safetensors".into()]
        } else if index.exists() {
            // Through the manifest too: the index decides which files become weights.
            let text = read_weights(&index, vouched.as_deref_mut())?;
            let value: serde_json::Value =
                serde_json::from_slice(&text).map_err(|e| EngineError::Load {
                    path: index.clone(),
                    reason: format!("invalid JSON: {e}"),
                })?;
            let map = value
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| EngineError::Load {
                    path: index.clone(),
                    reason: "`weight_map`: missing".into(),
                })?;
            let mut files: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            files.sort();
            files.dedup();
            for f in &files {
                if f.contains('/') || f.contains('\\') || f.starts_with('.') {
                    return Err(EngineError::Load {
                        path: index.clone(),
                        reason: format!("`weight_map`: shard `{f}` is not a plain file name"),
                    });
                }
            }
            files
        } else {
            return Err(EngineError::Load {
                path: single,
                reason: "missing (nor is there a model.safetensors.index.json)".into(),
            });
        };
        let mut files = Vec::new();
        let mut entries = HashMap::new();
        for name in names {
            let path = dir.join(&name);
            let map = read_weights(&path, vouched.as_deref_mut())?;
            let (header, meta) =
                SafeTensors::read_metadata(&map).map_err(|e| EngineError::Load {
                    path: path.clone(),
                    reason: format!("invalid safetensors header: {e}"),
                })?;
            let data_start = 8 + header;
            let file_idx = files.len();
            for (tensor, info) in meta.tensors() {
                let dtype = match info.dtype {
                    Dtype::F32 => WeightDType::F32,
                    Dtype::F16 => WeightDType::F16,
                    Dtype::BF16 => WeightDType::BF16,
                    // BERT checkpoints saved by older transformers keep their position-id
                    // buffer (`embeddings.position_ids`, I64): bookkeeping, never a weight.
                    Dtype::I64 | Dtype::I32 if is_id_buffer(&tensor) => continue,
                    other => {
                        return Err(EngineError::Load {
                            path: path.clone(),
                            reason: format!("tensor `{tensor}`: dtype {other:?} is not supported"),
                        });
                    }
                };
                let (s, e) = info.data_offsets;
                let numel: usize = info.shape.iter().product();
                if e < s || e - s != dtype.bytes_for(numel) || data_start + e > map.len() {
                    return Err(EngineError::Load {
                        path: path.clone(),
                        reason: format!("tensor `{tensor}`: data offsets out of range"),
                    });
                }
                entries.insert(
                    tensor,
                    Entry {
                        file: file_idx,
                        dtype,
                        shape: info.shape.clone(),
                        start: data_start + s,
                        end: data_start + e,
                        unpermute_heads: None,
                    },
                );
            }
            files.push((path, Arc::new(map)));
        }
        Ok(Weights { files, entries })
    }

    /// Registers the tensors of a GGUF file under the names the architecture's forward pass
    /// looks up: `rename` maps a GGUF name to it (the architecture's own table, see
    /// [`crate::models`]), and `permuted_heads` names the tensors whose rows llama.cpp's
    /// converter permuted per head (Llama's q/k), with their head count, so that the
    /// permutation is undone as rows are read.
    pub fn from_gguf(
        file: &GgufFile,
        rename: impl Fn(&str) -> String,
        permuted_heads: impl Fn(&str) -> Option<usize>,
    ) -> Result<Weights, EngineError> {
        let mut entries = HashMap::new();
        for t in &file.tensors {
            let unpermute_heads = permuted_heads(&t.name);
            if let Some(h) = unpermute_heads {
                let rows = t.shape.first().copied().unwrap_or(0);
                if h == 0 || rows % h != 0 || (rows / h) % 2 != 0 {
                    return Err(file.err(format!(
                        "tensor `{}`: {rows} rows do not split into {h} heads of even size",
                        t.name
                    )));
                }
            }
            entries.insert(
                rename(&t.name),
                Entry {
                    file: 0,
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    start: t.start,
                    end: t.end,
                    unpermute_heads,
                },
            );
        }
        Ok(Weights {
            files: vec![(file.path.clone(), Arc::clone(&file.map))],
            entries,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    fn entry(&self, name: &str, shape: &[usize]) -> Result<&Entry, EngineError> {
        let entry = self.entries.get(name).ok_or_else(|| EngineError::Load {
            path: self.describe_files(),
            reason: format!("tensor `{name}` is missing (expected shape {shape:?})"),
        })?;
        if entry.shape != shape {
            return Err(EngineError::Load {
                path: self.file_path(entry),
                reason: format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    entry.shape
                ),
            });
        }
        Ok(entry)
    }

    fn file_path(&self, entry: &Entry) -> PathBuf {
        self.files
            .get(entry.file)
            .map(|f| f.0.clone())
            .unwrap_or_default()
    }

    fn describe_files(&self) -> PathBuf {
        match self.files.as_slice() {
            [(p, _)] => p.clone(),
            [(p, _), ..] => p.with_file_name("model.safetensors.index.json"),
            [] => PathBuf::from("model.safetensors"),
        }
    }

    fn bytes(&self, entry: &Entry) -> &[u8] {
        self.files
            .get(entry.file)
            .and_then(|(_, m)| m.get(entry.start..entry.end))
            .unwrap_or(&[])
    }

    /// The tensor `name` of shape `shape` as stored (any [`WeightDType`]), rows in HF order.
    pub fn raw(&self, name: &str, shape: &[usize]) -> Result<RawTensor<'_>, EngineError> {
        let entry = self.entry(name, shape)?;
        let bytes = self.bytes(entry);
        let bytes = match entry.unpermute_heads {
            None => Cow::Borrowed(bytes),
            Some(heads) => Cow::Owned(unpermute_rows(bytes, shape, heads)),
        };
        Ok(RawTensor {
            dtype: entry.dtype,
            shape: entry.shape.clone(),
            bytes,
        })
    }

    /// The tensor `name` of shape `shape`, as row-major `f32` (quantized blocks expanded).
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EngineError> {
        let raw = self.raw(name, shape)?;
        let mut out = Vec::with_capacity(raw.shape.iter().product());
        convert_into(&raw.bytes, raw.dtype, &mut out);
        Ok(out)
    }

    /// A row table over the 2-D tensor `name` of shape `[rows, cols]`: a copy of its bytes,
    /// so that the file's bytes can be freed once the model is built.
    pub fn rows(&self, name: &str, rows: usize, cols: usize) -> Result<RowTable, EngineError> {
        let entry = self.entry(name, &[rows, cols])?;
        let bytes = self.bytes(entry);
        if bytes.len() != entry.dtype.bytes_for(rows * cols) {
            return Err(EngineError::Load {
                path: self.file_path(entry),
                reason: format!("tensor `{name}`: data out of range"),
            });
        }
        Ok(RowTable {
            bytes: Arc::from(bytes),
            dtype: entry.dtype,
            rows,
            cols,
        })
    }
}

/// Undoes llama.cpp's `permute`: inside each head of `d` rows, GGUF row `2i + j` holds HF
/// row `j·d/2 + i` (the two halves rotated together by RoPE are interleaved there).
fn unpermute_rows(bytes: &[u8], shape: &[usize], heads: usize) -> Vec<u8> {
    let rows = shape.first().copied().unwrap_or(0);
    if rows == 0 || heads == 0 {
        return bytes.to_vec();
    }
    let row_bytes = bytes.len() / rows;
    let d = rows / heads;
    let half = d / 2;
    let mut out = Vec::with_capacity(bytes.len());
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let src = (h * d + 2 * i + j) * row_bytes;
                out.extend_from_slice(bytes.get(src..src + row_bytes).unwrap_or(&[]));
            }
        }
    }
    out
}
