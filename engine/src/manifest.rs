//! `airlock-manifest.json`: the size and SHA-256 of every file in a model directory, so a
//! swapped or corrupted weight file is refused before it is loaded.
//!
//! Verification checks every listed file, and also refuses any file the loader would read
//! (`*.json`, `*.safetensors`, `*.jinja`) that the manifest does not list: an attacker must
//! not be able to add a shard or a tokenizer the manifest never vouched for. Other unlisted
//! files (READMEs, licences) are ignored.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::EngineError;

/// The manifest's file name inside a model directory.
pub const MANIFEST_FILE: &str = "airlock-manifest.json";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    files: Vec<FileEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    /// Relative to the model directory, `/`-separated.
    path: String,
    size: u64,
    sha256: String,
}

fn io_err(path: &Path, e: std::io::Error) -> EngineError {
    EngineError::Load {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn sha256_file(path: &Path) -> Result<(u64, String), EngineError> {
    let mut file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| io_err(path, e))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Files under `dir` (relative, `/`-separated, sorted), skipping dot-entries and the manifest.
fn list_files(dir: &Path) -> Result<Vec<String>, EngineError> {
    fn walk(root: &Path, sub: &Path, out: &mut Vec<String>) -> Result<(), EngineError> {
        let here = root.join(sub);
        for entry in std::fs::read_dir(&here).map_err(|e| io_err(&here, e))? {
            let entry = entry.map_err(|e| io_err(&here, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let rel = sub.join(&name);
            let ty = entry.file_type().map_err(|e| io_err(&entry.path(), e))?;
            if ty.is_dir() {
                walk(root, &rel, out)?;
            } else if rel != Path::new(MANIFEST_FILE) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, Path::new(""), &mut out)?;
    out.sort();
    Ok(out)
}

/// Writes `dir/airlock-manifest.json` covering every file in `dir`; returns its path.
pub fn write_manifest(dir: &Path) -> Result<PathBuf, EngineError> {
    let mut files = Vec::new();
    for rel in list_files(dir)? {
        let (size, sha256) = sha256_file(&dir.join(&rel))?;
        files.push(FileEntry {
            path: rel,
            size,
            sha256,
        });
    }
    let path = dir.join(MANIFEST_FILE);
    let mut text =
        serde_json::to_string_pretty(&Manifest { files }).map_err(|e| EngineError::Load {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    text.push('\n');
    std::fs::write(&path, text).map_err(|e| io_err(&path, e))?;
    Ok(path)
}

fn loader_reads(rel: &str) -> bool {
    !rel.contains('/')
        && (rel.ends_with(".json")
            || rel.ends_with(".safetensors")
            || rel.ends_with(".gguf")
            || rel.ends_with(".jinja"))
}

/// Checks every file `dir/airlock-manifest.json` lists, and that no file the loader reads
/// is unlisted. A missing manifest is an [`EngineError::Integrity`] error too.
pub fn verify_manifest(dir: &Path) -> Result<(), EngineError> {
    let path = dir.join(MANIFEST_FILE);
    let integrity = |p: PathBuf, reason: String| EngineError::Integrity { path: p, reason };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        integrity(
            path.clone(),
            format!(
                "cannot read the manifest ({e}); create it with `airlockd model manifest` or \
                 set `verify_manifest = false` for this model"
            ),
        )
    })?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| integrity(path.clone(), format!("invalid manifest: {e}")))?;
    let mut listed = std::collections::HashSet::new();
    for entry in &manifest.files {
        if entry.path.split('/').any(|c| c == ".." || c.is_empty()) || entry.path.starts_with('/') {
            return Err(integrity(
                path.clone(),
                format!("`{}` is not a relative path", entry.path),
            ));
        }
        let file = dir.join(&entry.path);
        if !file.is_file() {
            return Err(integrity(file, "listed in the manifest but missing".into()));
        }
        let (size, sha) = sha256_file(&file)?;
        if size != entry.size {
            return Err(integrity(
                file,
                format!("size is {size} bytes, the manifest says {}", entry.size),
            ));
        }
        if !sha.eq_ignore_ascii_case(&entry.sha256) {
            return Err(integrity(
                file,
                format!("sha256 is {sha}, the manifest says {}", entry.sha256),
            ));
        }
        listed.insert(entry.path.clone());
    }
    for rel in list_files(dir)? {
        if loader_reads(&rel) && !listed.contains(&rel) {
            return Err(integrity(
                dir.join(&rel),
                "not listed in the manifest".into(),
            ));
        }
    }
    Ok(())
}
