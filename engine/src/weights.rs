//! Memory-mapped safetensors weights (single file or sharded with an index), converted to
//! `f32` on demand. Every lookup checks presence, dtype and shape and names the tensor.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::EngineError;

/// Element types we convert from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDType {
    F32,
    F16,
    BF16,
}

impl WeightDType {
    fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    file: usize,
    dtype: WeightDType,
    shape: Vec<usize>,
    /// Absolute byte range inside the mapped file.
    start: usize,
    end: usize,
}

/// The weight files of one model directory.
pub struct Weights {
    files: Vec<(PathBuf, Arc<Mmap>)>,
    entries: HashMap<String, Entry>,
}

/// A row-addressable 2-D tensor left in the mapped file (token embeddings: only the rows of
/// the tokens in a step are ever converted, so a large vocabulary costs no resident copy).
#[derive(Clone)]
pub struct RowTable {
    map: Arc<Mmap>,
    dtype: WeightDType,
    start: usize,
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
        let size = self.dtype.size();
        let begin = self.start + row * self.cols * size;
        let bytes = self.map.get(begin..begin + self.cols * size)?;
        convert_into(bytes, self.dtype, out);
        Some(())
    }
}

fn map_file(path: &Path) -> Result<Mmap, EngineError> {
    let file = File::open(path).map_err(|e| EngineError::Load {
        path: path.to_path_buf(),
        reason: format!("cannot open: {e}"),
    })?;
    // SAFETY: the model directory is read-only for the daemon's lifetime by deployment
    // contract (its integrity manifest is checked before this); a file truncated underneath
    // us is the one case a map cannot defend against, and reading weights through `read`
    // would cost a resident copy of multi-gigabyte files.
    #[expect(unsafe_code, reason = "memory-mapping weight files; see SAFETY above")]
    let map = unsafe { Mmap::map(&file) };
    map.map_err(|e| EngineError::Load {
        path: path.to_path_buf(),
        reason: format!("cannot map: {e}"),
    })
}

impl Weights {
    /// Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Weights, EngineError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let names: Vec<String> = if single.exists() {
            vec!["model.safetensors".into()]
        } else if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| EngineError::Load {
                path: index.clone(),
                reason: format!("cannot read: {e}"),
            })?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| EngineError::Load {
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
            let map = map_file(&path)?;
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
                    other => {
                        return Err(EngineError::Load {
                            path: path.clone(),
                            reason: format!("tensor `{tensor}`: dtype {other:?} is not supported"),
                        });
                    }
                };
                let (s, e) = info.data_offsets;
                let numel: usize = info.shape.iter().product();
                if e < s || e - s != numel * dtype.size() || data_start + e > map.len() {
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
                    },
                );
            }
            files.push((path, Arc::new(map)));
        }
        Ok(Weights { files, entries })
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

    /// The tensor `name` of shape `shape`, as row-major `f32`.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EngineError> {
        let entry = self.entry(name, shape)?;
        let mut out = Vec::with_capacity(shape.iter().product());
        convert_into(self.bytes(entry), entry.dtype, &mut out);
        Ok(out)
    }

    /// A row table over the 2-D tensor `name` of shape `[rows, cols]`.
    pub fn rows(&self, name: &str, rows: usize, cols: usize) -> Result<RowTable, EngineError> {
        let entry = self.entry(name, &[rows, cols])?;
        let map = self
            .files
            .get(entry.file)
            .map(|(_, m)| Arc::clone(m))
            .ok_or_else(|| EngineError::Load {
                path: self.describe_files(),
                reason: format!("tensor `{name}`: bad file index"),
            })?;
        Ok(RowTable {
            map,
            dtype: entry.dtype,
            start: entry.start,
            rows,
            cols,
        })
    }
}

fn convert_into(bytes: &[u8], dtype: WeightDType, out: &mut Vec<f32>) {
    match dtype {
        WeightDType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        WeightDType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
        ),
        WeightDType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
        ),
    }
}
