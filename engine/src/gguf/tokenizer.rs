//! The tokenizer of a GGUF file without a `tokenizer.json` beside it, rebuilt from its
//! `tokenizer.ggml.*` metadata: see [`crate::gguf::vocab`] for the algorithms (llama.cpp's,
//! so that ids equal `llama_tokenize` on the same file).

use crate::EngineError;
use crate::gguf::GgufFile;
use crate::gguf::vocab::GgufVocab;

/// Builds the tokenizer, refusing unsupported `tokenizer.ggml.model` / `tokenizer.ggml.pre`
/// values with the field named and the supported values listed.
pub(crate) fn build(file: &GgufFile) -> Result<GgufVocab, EngineError> {
    GgufVocab::from_gguf(file)
}
