//! The tiny default model `airlockd dev` serves, embedded in the binary.

use std::path::{Path, PathBuf};

use crate::EngineError;

/// Writes the embedded default model's files into `dir` (those missing or different) and
/// returns the model directory, loadable like any Hugging Face directory.
pub fn install(dir: &Path) -> Result<PathBuf, EngineError> {
    Err(EngineError::Load { path: dir.to_path_buf(), reason: "default model not built in yet".into() })
}
