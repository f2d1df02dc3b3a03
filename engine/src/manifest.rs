//! `airlock-manifest.json`: the size and SHA-256 of every file in a model directory, so a
//! swapped or corrupted weight file is refused before it is loaded.
//!
//! Verification checks every listed file, and also refuses any file the loader would read
//! (`*.json`, `*.safetensors`, `*.gguf`, `*.jinja`) that the manifest does not list: an
//! attacker must not be able to add a shard or a tokenizer the manifest never vouched for.
//! Other unlisted files (READMEs, licences) are ignored.
//!
//! The manifest itself sits in the directory it vouches for, so whoever can rewrite the
//! weights can rewrite it too; `manifest_sha256` in the config pins it ([`vouch`]).
//!
//! Weight files are hashed as the loader reads them into memory ([`Vouched::read`]): the
//! bytes the model is built from are the bytes that were checked, and nothing maps the file
//! afterwards, so a later edit cannot reach the running model and a truncation cannot crash
//! the daemon.

use std::collections::{HashMap, HashSet};
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

#[derive(Clone, Serialize, Deserialize)]
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

/// Writes the manifest of the model at `model`: `DIR/airlock-manifest.json` covering every
/// file in a directory, or `FILE.manifest.json` covering one `.gguf` file (see
/// [`manifest_path`]); returns its path.
pub fn write_manifest(model: &Path) -> Result<PathBuf, EngineError> {
    if model.is_file() {
        let name = model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.ends_with(".gguf") {
            return Err(EngineError::Load {
                path: model.to_path_buf(),
                reason: "a model is a directory or one `.gguf` file".into(),
            });
        }
        let (size, sha256) = sha256_file(model)?;
        return save_manifest(
            &manifest_path(model),
            vec![FileEntry {
                path: name,
                size,
                sha256,
            }],
        );
    }
    let dir = model;
    let mut files = Vec::new();
    for rel in list_files(dir)? {
        let (size, sha256) = sha256_file(&dir.join(&rel))?;
        files.push(FileEntry {
            path: rel,
            size,
            sha256,
        });
    }
    save_manifest(&dir.join(MANIFEST_FILE), files)
}

fn save_manifest(path: &Path, files: Vec<FileEntry>) -> Result<PathBuf, EngineError> {
    let mut text =
        serde_json::to_string_pretty(&Manifest { files }).map_err(|e| EngineError::Load {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    text.push('\n');
    std::fs::write(path, text).map_err(|e| io_err(path, e))?;
    Ok(path.to_path_buf())
}

fn loader_reads(rel: &str) -> bool {
    !rel.contains('/')
        && (rel.ends_with(".json")
            || rel.ends_with(".safetensors")
            || rel.ends_with(".gguf")
            || rel.ends_with(".jinja"))
}

/// Weight files: hashed when the loader reads them, not twice.
fn is_weights(rel: &str) -> bool {
    rel.ends_with(".safetensors") || rel.ends_with(".gguf")
}

/// Checks every file the model's manifest (see [`manifest_path`]) lists, and that no file
/// the loader reads is unlisted. A missing manifest is an [`EngineError::Integrity`] error too.
pub fn verify_manifest(dir: &Path) -> Result<(), EngineError> {
    vouch(dir, None)?.finish()
}

/// What a checked manifest vouches for, while a model loads.
pub(crate) struct Vouched {
    dir: PathBuf,
    /// Every listed file, by relative path.
    entries: HashMap<String, FileEntry>,
    /// Listed weight files not read yet: [`Self::finish`] hashes them.
    unread: HashSet<String>,
}

/// A file's bytes in memory, read once. `expect_len` (the size the manifest lists, else
/// the size the file has now) bounds the read: a file that grows while it is read is
/// refused instead of read without end.
fn read_whole(path: &Path, expect_len: Option<u64>) -> Result<Vec<u8>, EngineError> {
    let load = |reason: String| EngineError::Load {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| load(format!("cannot open: {e}")))?;
    let len = match expect_len {
        Some(len) => len,
        None => file
            .metadata()
            .map_err(|e| load(format!("cannot open: {e}")))?
            .len(),
    };
    let mut bytes = Vec::new();
    // A file too large for memory is an error, not an allocation abort.
    bytes
        .try_reserve_exact(usize::try_from(len).unwrap_or(usize::MAX))
        .map_err(|e| load(format!("cannot hold its {len} bytes in memory: {e}")))?;
    file.take(len.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| load(format!("cannot read: {e}")))?;
    if expect_len.is_none() && bytes.len() as u64 != len {
        return Err(load(format!(
            "changed while being read ({len} bytes, then {})",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Reads a weight file into memory, without a manifest (`verify = false`).
pub(crate) fn read_unverified(path: &Path) -> Result<Vec<u8>, EngineError> {
    read_whole(path, None)
}

impl Vouched {
    /// Reads a listed file into memory and checks those very bytes against the manifest.
    pub(crate) fn read(&mut self, path: &Path) -> Result<Vec<u8>, EngineError> {
        let integrity = |reason: String| EngineError::Integrity {
            path: path.to_path_buf(),
            reason,
        };
        let rel = path
            .strip_prefix(&self.dir)
            .ok()
            .map(|r| r.to_string_lossy().replace('\\', "/"));
        let Some(entry) = rel.as_deref().and_then(|r| self.entries.get(r)) else {
            return Err(integrity("not listed in the manifest".into()));
        };
        let bytes = read_whole(path, Some(entry.size))?;
        if bytes.len() as u64 != entry.size {
            return Err(integrity(format!(
                "size is {} bytes, the manifest says {}",
                bytes.len(),
                entry.size
            )));
        }
        let sha = hex::encode(Sha256::digest(&bytes));
        if !sha.eq_ignore_ascii_case(&entry.sha256) {
            return Err(integrity(format!(
                "sha256 is {sha}, the manifest says {}",
                entry.sha256
            )));
        }
        if let Some(rel) = rel {
            self.unread.remove(&rel);
        }
        Ok(bytes)
    }

    /// Hashes the listed weight files the loader did not read, so that every listed file
    /// has been checked once loading is done.
    pub(crate) fn finish(self) -> Result<(), EngineError> {
        let mut unread: Vec<&String> = self.unread.iter().collect();
        unread.sort();
        for rel in unread {
            if let Some(entry) = self.entries.get(rel) {
                check_entry(&self.dir.join(rel), entry)?;
            }
        }
        Ok(())
    }
}

fn check_entry(file: &Path, entry: &FileEntry) -> Result<(), EngineError> {
    let integrity = |reason: String| EngineError::Integrity {
        path: file.to_path_buf(),
        reason,
    };
    let (size, sha) = sha256_file(file)?;
    if size != entry.size {
        return Err(integrity(format!(
            "size is {size} bytes, the manifest says {}",
            entry.size
        )));
    }
    if !sha.eq_ignore_ascii_case(&entry.sha256) {
        return Err(integrity(format!(
            "sha256 is {sha}, the manifest says {}",
            entry.sha256
        )));
    }
    Ok(())
}

/// Where the manifest of the model at `model` lives: `DIR/airlock-manifest.json` for a
/// directory, `FILE.manifest.json` beside a model named as one `.gguf` file (a directory of
/// several GGUF files then holds one manifest per file, each covering exactly its file).
pub fn manifest_path(model: &Path) -> PathBuf {
    if model.is_file() {
        let mut name = model.file_name().unwrap_or_default().to_os_string();
        name.push(FILE_MANIFEST_SUFFIX);
        model.with_file_name(name)
    } else {
        model.join(MANIFEST_FILE)
    }
}

/// What a single-file model's manifest name adds to the file's name.
pub const FILE_MANIFEST_SUFFIX: &str = ".manifest.json";

/// Reads the manifest at `path` and checks its own SHA-256 against `pin` when given.
fn read_manifest(path: &Path, pin: Option<&str>) -> Result<Manifest, EngineError> {
    let integrity = |p: PathBuf, reason: String| EngineError::Integrity { path: p, reason };
    let bytes = std::fs::read(path).map_err(|e| {
        integrity(
            path.to_path_buf(),
            format!(
                "cannot read the manifest ({e}); create it with `airlockd model manifest` or \
                 set `verify_manifest = false` for this model"
            ),
        )
    })?;
    if let Some(pin) = pin {
        let sha = hex::encode(Sha256::digest(&bytes));
        if !sha.eq_ignore_ascii_case(pin) {
            return Err(integrity(
                path.to_path_buf(),
                format!(
                    "sha256 is {sha}, but `manifest_sha256` in the config pins {pin}: the \
                     manifest is not the one the operator approved"
                ),
            ));
        }
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| integrity(path.to_path_buf(), format!("invalid manifest: {e}")))
}

/// Checks the manifest of the model at `model` (a directory, or one `.gguf` file: see
/// [`manifest_path`]): its own SHA-256 against `pin` (the config's `manifest_sha256`) when
/// given, then every listed file but the weights (hashed as they are read, see
/// [`Vouched::read`]; here only their presence and size), and that no file the loader reads
/// is unlisted.
pub(crate) fn vouch(model: &Path, pin: Option<&str>) -> Result<Vouched, EngineError> {
    if model.is_file() {
        vouch_file(model, pin)
    } else {
        vouch_dir(model, pin)
    }
}

/// A model named as one `.gguf` file reads that file and nothing else (tokenizer and chat
/// template come from its metadata), so its manifest must list exactly that file.
fn vouch_file(file: &Path, pin: Option<&str>) -> Result<Vouched, EngineError> {
    let path = manifest_path(file);
    let manifest = read_manifest(&path, pin)?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let listed: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    let [entry] = manifest.files.as_slice() else {
        return Err(EngineError::Integrity {
            path,
            reason: format!(
                "lists {listed:?}; the manifest of a single-file model lists exactly that \
                 file (`{name}`)"
            ),
        });
    };
    if entry.path != name {
        return Err(EngineError::Integrity {
            path,
            reason: format!("lists `{}`, not the model file `{name}`", entry.path),
        });
    }
    let size = std::fs::metadata(file).map_err(|e| io_err(file, e))?.len();
    if size != entry.size {
        return Err(EngineError::Integrity {
            path: file.to_path_buf(),
            reason: format!("size is {size} bytes, the manifest says {}", entry.size),
        });
    }
    Ok(Vouched {
        dir: file.parent().map(Path::to_path_buf).unwrap_or_default(),
        entries: HashMap::from([(name.clone(), entry.clone())]),
        unread: HashSet::from([name]),
    })
}

fn vouch_dir(dir: &Path, pin: Option<&str>) -> Result<Vouched, EngineError> {
    let path = dir.join(MANIFEST_FILE);
    let integrity = |p: PathBuf, reason: String| EngineError::Integrity { path: p, reason };
    let manifest = read_manifest(&path, pin)?;
    let mut entries = HashMap::new();
    let mut unread = HashSet::new();
    for entry in manifest.files {
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
        if is_weights(&entry.path) {
            let size = std::fs::metadata(&file)
                .map_err(|e| io_err(&file, e))?
                .len();
            if size != entry.size {
                return Err(integrity(
                    file,
                    format!("size is {size} bytes, the manifest says {}", entry.size),
                ));
            }
            unread.insert(entry.path.clone());
        } else {
            check_entry(&file, &entry)?;
        }
        entries.insert(entry.path.clone(), entry);
    }
    for rel in list_files(dir)? {
        if loader_reads(&rel) && !entries.contains_key(&rel) {
            return Err(integrity(
                dir.join(&rel),
                "not listed in the manifest".into(),
            ));
        }
    }
    Ok(Vouched {
        dir: dir.to_path_buf(),
        entries,
        unread,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn installed() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = crate::default_model::install(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        (dir, path)
    }

    fn integrity_of<T>(r: Result<T, EngineError>) -> (PathBuf, String) {
        match r {
            Err(EngineError::Integrity { path, reason }) => (path, reason),
            Err(e) => panic!("expected an integrity error, got {e}"),
            Ok(_) => panic!("expected an integrity error, got success"),
        }
    }

    #[test]
    fn a_pinned_manifest_must_have_its_pinned_hash() {
        let (_tmp, dir) = installed();
        let manifest = dir.join(MANIFEST_FILE);
        let good = hex::encode(Sha256::digest(
            std::fs::read(&manifest).unwrap_or_else(|e| panic!("{e}")),
        ));
        assert!(vouch(&dir, Some(&good.to_uppercase())).is_ok());
        // Rewritten by whoever could also rewrite the weights: a valid manifest, but not
        // the pinned one.
        std::fs::write(dir.join("config.json"), b"{}").unwrap_or_else(|e| panic!("{e}"));
        write_manifest(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(vouch(&dir, None).is_ok());
        let (path, reason) = integrity_of(vouch(&dir, Some(&good)));
        assert_eq!(path, manifest);
        assert!(
            reason.contains("manifest_sha256") && reason.contains(&good),
            "{reason}"
        );
    }

    #[test]
    fn weights_changed_after_verification_are_refused_when_read() {
        let (_tmp, dir) = installed();
        let weights = dir.join("model.safetensors");
        let original = std::fs::read(&weights).unwrap_or_else(|e| panic!("{e}"));

        // Same size, one bit flipped between the manifest check and the read.
        let mut vouched = vouch(&dir, None).unwrap_or_else(|e| panic!("{e}"));
        let mut flipped = original.clone();
        flipped[original.len() / 2] ^= 1;
        std::fs::write(&weights, &flipped).unwrap_or_else(|e| panic!("{e}"));
        let (path, reason) = integrity_of(vouched.read(&weights));
        assert_eq!(path, weights);
        assert!(reason.contains("sha256"), "{reason}");

        // Truncated: an error naming the size, never a fault.
        std::fs::write(&weights, &original).unwrap_or_else(|e| panic!("{e}"));
        let mut vouched = vouch(&dir, None).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&weights, &original[..100]).unwrap_or_else(|e| panic!("{e}"));
        let (_, reason) = integrity_of(vouched.read(&weights));
        assert!(reason.contains("size is 100 bytes"), "{reason}");

        // Read intact: the bytes returned are the checked ones, and `finish` has nothing
        // left to hash.
        std::fs::write(&weights, &original).unwrap_or_else(|e| panic!("{e}"));
        let mut vouched = vouch(&dir, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(vouched.read(&weights).ok(), Some(original));
        assert!(vouched.unread.is_empty());
        assert!(vouched.finish().is_ok());
    }

    #[test]
    fn listed_weights_the_loader_never_reads_are_still_hashed() {
        let (_tmp, dir) = installed();
        let weights = dir.join("model.safetensors");
        let mut bytes = std::fs::read(&weights).unwrap_or_else(|e| panic!("{e}"));
        let vouched = vouch(&dir, None).unwrap_or_else(|e| panic!("{e}"));
        bytes[0] ^= 1;
        std::fs::write(&weights, &bytes).unwrap_or_else(|e| panic!("{e}"));
        let (path, _) = integrity_of(vouched.finish());
        assert_eq!(path, weights);
    }
}
