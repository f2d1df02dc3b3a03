//! GGUF v3 files (llama.cpp's format): header, metadata, tensor table, data (read into
//! memory, see [`crate::weights`]).
//!
//! A GGUF file is untrusted input like any other model file, so every count, length, offset
//! and size is checked against the bytes actually present before anything is allocated or
//! read: a truncated or hostile file is an [`EngineError::Load`] naming the file and the
//! field, never a panic or a huge allocation.
//!
//! Layout (all little-endian): magic `GGUF`, `u32` version, `u64` tensor count, `u64`
//! metadata count, the metadata key/values, the tensor infos (name, dims innermost first,
//! type, offset), padding to `general.alignment` (default 32), then the tensor data, each
//! tensor at its offset from the start of that data section.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::EngineError;
use crate::manifest::Vouched;
use crate::quant::QType;
use crate::tensor_file::{WeightDType, read_weights};

pub(crate) mod tokenizer;
pub(crate) mod vocab;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: usize = 32;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: usize = 4;
/// Arrays of arrays are legal GGUF; nothing we read nests, so deeper nesting is refused
/// rather than recursed into.
const MAX_ARRAY_DEPTH: usize = 2;

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    /// A non-negative integer of any width.
    pub(crate) fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub(crate) fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub(crate) fn as_array(&self) -> Option<&[Value]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// ggml type ids (`enum ggml_type`), for naming the ones we do not read.
fn ggml_type_name(id: u32) -> &'static str {
    match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        29 => "IQ1_M",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "unknown",
    }
}

fn weight_dtype(id: u32) -> Option<WeightDType> {
    match id {
        0 => Some(WeightDType::F32),
        1 => Some(WeightDType::F16),
        30 => Some(WeightDType::BF16),
        _ => QType::from_ggml(id).map(WeightDType::Quant),
    }
}

/// The tensor types [`weight_dtype`] reads, for error messages.
fn supported_types() -> String {
    let mut names = vec!["F32", "F16", "BF16"];
    names.extend(QType::ALL.iter().map(|t| t.name()));
    names.join(", ")
}

/// One tensor of the file.
#[derive(Clone, Debug)]
pub(crate) struct TensorInfo {
    pub name: String,
    pub dtype: WeightDType,
    /// Row-major, outermost first (GGUF stores `ne`, innermost first: this is it reversed,
    /// so a `[out, in]` PyTorch matrix reads back as `[out, in]`).
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

/// A parsed GGUF file, held in memory.
pub(crate) struct GgufFile {
    pub path: PathBuf,
    /// The whole file's bytes (checked against the manifest when there is one).
    pub map: Arc<Vec<u8>>,
    metadata: HashMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
}

/// The parsed header: metadata and tensor table.
pub(crate) struct Parsed {
    pub metadata: HashMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
}

impl GgufFile {
    /// Reads (checked against the manifest when `vouched` is given) and parses `path`.
    pub fn open(path: &Path, vouched: Option<&mut Vouched>) -> Result<GgufFile, EngineError> {
        let map = read_weights(path, vouched)?;
        let parsed = parse(&map).map_err(|reason| EngineError::Load {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            map: Arc::new(map),
            metadata: parsed.metadata,
            tensors: parsed.tensors,
        })
    }

    /// The header and tensor table of `path` without its tensor data, for `model inspect`:
    /// reads the first `max_header` bytes at most (bytes past them are never read), so
    /// [`Self::bytes`] is empty for every tensor.
    pub fn open_header(path: &Path, max_header: usize) -> Result<GgufFile, EngineError> {
        use std::io::Read;
        let load = |reason: String| EngineError::Load {
            path: path.to_path_buf(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(|e| load(format!("cannot open: {e}")))?;
        let file_len = file
            .metadata()
            .map_err(|e| load(format!("cannot open: {e}")))?
            .len();
        let file_len = usize::try_from(file_len).unwrap_or(usize::MAX);
        let mut reader = file.take(max_header as u64);
        let mut head = Vec::new();
        // Most headers fit in the first MiB; one with a large vocabulary takes a few more.
        let mut want = (1usize << 20).min(max_header);
        loop {
            let have = head.len();
            (&mut reader)
                .take((want - have) as u64)
                .read_to_end(&mut head)
                .map_err(|e| load(format!("cannot read: {e}")))?;
            match parse_header(&head, file_len) {
                Ok(parsed) => {
                    head.truncate(0);
                    return Ok(GgufFile {
                        path: path.to_path_buf(),
                        map: Arc::new(head),
                        metadata: parsed.metadata,
                        tensors: parsed.tensors,
                    });
                }
                // The whole file (or all a shrinking file had) is parsed: the error stands.
                Err(reason) if head.len() >= file_len || head.len() < want => {
                    return Err(load(reason));
                }
                Err(reason) if head.len() >= max_header => {
                    return Err(load(format!(
                        "{reason} (the header is read up to {max_header} bytes; it does not \
                         fit in them)"
                    )));
                }
                Err(_) => want = want.saturating_mul(4).min(max_header),
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// An error about this file.
    pub fn err(&self, reason: impl Into<String>) -> EngineError {
        EngineError::Load {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str, EngineError> {
        self.get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| self.err("metadata `general.architecture`: missing or not a string"))
    }

    /// Whether the tensors' data was read ([`Self::open_header`] reads none).
    pub fn holds_data(&self) -> bool {
        !self.map.is_empty()
    }

    /// A tensor's bytes, as stored.
    pub fn bytes(&self, t: &TensorInfo) -> &[u8] {
        self.map.get(t.start..t.end).unwrap_or(&[])
    }
}

/// A bounds-checked little-endian reader over the header.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Bytes the metadata may still allocate. Checking a count against the bytes left is
    /// not enough on its own: a one-byte array element becomes a [`Value`] of 32 bytes, so
    /// a file could make us allocate ~32× its size. Every count-driven allocation (array
    /// storage, string bytes) is charged here first, so parsing the metadata never
    /// allocates more than the file's size.
    budget: usize,
}

impl<'a> Cursor<'a> {
    /// Charges an allocation of `n` items of `size` bytes against the budget.
    fn charge(&mut self, n: usize, size: usize, what: &str) -> Result<(), String> {
        match n.checked_mul(size) {
            Some(bytes) if bytes <= self.budget => {
                self.budget -= bytes;
                Ok(())
            }
            _ => Err(format!(
                "{what}: {n} items would take more memory than the {} byte file allows (the \
                 metadata may allocate at most the file's size; {} bytes left)",
                self.bytes.len(),
                self.budget
            )),
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "truncated: {what} needs {n} bytes at offset {} but the file is {} bytes",
                    self.pos,
                    self.bytes.len()
                )
            })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let b = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A length-prefixed UTF-8 string; the length is checked against the bytes left before
    /// anything is allocated.
    fn string(&mut self, what: &str) -> Result<String, String> {
        let len = self.u64(what)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.remaining())
            .ok_or_else(|| {
                format!(
                    "{what}: string length {len} at offset {} exceeds the {} bytes left",
                    self.pos - 8,
                    self.remaining()
                )
            })?;
        self.charge(len, 1, what)?;
        let b = self.take(len, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("{what}: not valid UTF-8"))
    }

    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(u8::from_le_bytes(self.array(what)?)),
            1 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("{what}: bool byte {b} is neither 0 nor 1")),
            },
            8 => Value::Str(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!(
                        "{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    ));
                }
                let elem = self.u32(what)?;
                let n = self.u64(what)?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => return Err(format!("{what}: unknown array element type {other}")),
                };
                let n = usize::try_from(n)
                    .ok()
                    .filter(|&n| n.checked_mul(min).is_some_and(|b| b <= self.remaining()))
                    .ok_or_else(|| {
                        format!(
                            "{what}: array of {n} elements cannot fit in the {} bytes left",
                            self.remaining()
                        )
                    })?;
                self.charge(n, std::mem::size_of::<Value>(), what)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, what, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            other => return Err(format!("{what}: unknown value type {other}")),
        })
    }
}

/// Parses the header and tensor table of `bytes` (a whole GGUF file) and checks that every
/// tensor lies inside it. The error is the reason only; the caller adds the path.
pub(crate) fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    parse_header(bytes, bytes.len())
}

/// [`parse`] over the first bytes of a file of `file_len` bytes (`bytes` must hold the
/// whole header and tensor table): tensors are checked to lie inside `file_len`.
pub(crate) fn parse_header(bytes: &[u8], file_len: usize) -> Result<Parsed, String> {
    let mut c = Cursor {
        bytes,
        pos: 0,
        budget: bytes.len(),
    };
    let magic = c.take(4, "magic")?;
    if magic != MAGIC {
        return Err(format!(
            "not a GGUF file: magic is {magic:02x?}, expected \"GGUF\""
        ));
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(format!(
            "GGUF version {version} is not supported (supported: 2, 3)"
        ));
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;
    // Each key/value takes at least 8 (key length) + 4 (type) + 1 bytes, each tensor info at
    // least 8 + 4 + 8 + 4 + 8: counts that cannot fit are refused before any allocation.
    let fits = |n: u64, min: u64| {
        n.checked_mul(min)
            .is_some_and(|b| b <= c.remaining() as u64)
    };
    if !fits(n_kv, 13) {
        return Err(format!(
            "metadata count {n_kv} cannot fit in a {} byte file",
            bytes.len()
        ));
    }
    if !fits(n_tensors, 32) {
        return Err(format!(
            "tensor count {n_tensors} cannot fit in a {} byte file",
            bytes.len()
        ));
    }
    let mut metadata = HashMap::new();
    for i in 0..n_kv {
        let key = c.string(&format!("metadata key #{i}"))?;
        let ty = c.u32(&format!("metadata `{key}` type"))?;
        let value = c.value(ty, &format!("metadata `{key}`"), 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("metadata `{key}` appears twice"));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() => *a as usize,
        Some(v) => {
            return Err(format!(
                "metadata `general.alignment`: {v:?} is not a power-of-two u32"
            ));
        }
    };
    struct Raw {
        name: String,
        dtype: WeightDType,
        shape: Vec<usize>,
        offset: usize,
        size: usize,
    }
    let mut raw = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for i in 0..n_tensors {
        let name = c.string(&format!("tensor #{i} name"))?;
        let what = format!("tensor `{name}`");
        let n_dims = c.u32(&what)? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!(
                "{what}: {n_dims} dimensions (must be 1..={MAX_DIMS})"
            ));
        }
        let mut ne = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            let d = c.u64(&what)?;
            let d = usize::try_from(d)
                .ok()
                .filter(|&d| d > 0)
                .ok_or_else(|| format!("{what}: dimension {d} is out of range"))?;
            ne.push(d);
        }
        let ty = c.u32(&what)?;
        let offset = c.u64(&what)?;
        let dtype = weight_dtype(ty).ok_or_else(|| {
            format!(
                "unsupported tensor type {} (ggml type {ty}) for tensor `{name}` (supported: {})",
                ggml_type_name(ty),
                supported_types()
            )
        })?;
        let numel = ne
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("{what}: element count overflows"))?;
        let block = dtype.block_elems();
        if ne[0] % block != 0 {
            return Err(format!(
                "{what}: row length {} is not a multiple of the {} block size {block}",
                ne[0],
                dtype.name()
            ));
        }
        let size = (numel / block)
            .checked_mul(dtype.block_bytes())
            .ok_or_else(|| format!("{what}: byte size overflows"))?;
        let offset = usize::try_from(offset)
            .ok()
            .filter(|o| o % alignment == 0)
            .ok_or_else(|| {
                format!(
                    "{what}: data offset {offset} is not a multiple of the alignment {alignment}"
                )
            })?;
        if !seen.insert(name.clone()) {
            return Err(format!("{what} appears twice"));
        }
        ne.reverse();
        raw.push(Raw {
            name,
            dtype,
            shape: ne,
            offset,
            size,
        });
    }
    let data_start = c.pos.div_ceil(alignment) * alignment;
    let mut tensors = Vec::with_capacity(raw.len());
    for r in raw {
        let start = data_start.checked_add(r.offset);
        let end = start.and_then(|s| s.checked_add(r.size));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => tensors.push(TensorInfo {
                name: r.name,
                dtype: r.dtype,
                shape: r.shape,
                start,
                end,
            }),
            _ => {
                return Err(format!(
                    "tensor `{}`: data (offset {} + {} bytes after the data section at {data_start}) \
                     lies beyond the end of the {} byte file",
                    r.name, r.offset, r.size, file_len
                ));
            }
        }
    }
    Ok(Parsed { metadata, tensors })
}

#[cfg(test)]
mod tests;
