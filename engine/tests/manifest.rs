//! Integrity manifest: a tampered, missing or unlisted file is refused, naming the file.

use std::path::Path;

use airlock_engine::{EngineError, default_model, verify_manifest, write_manifest};

fn copy_default(dir: &Path) -> anyhow::Result<()> {
    default_model::install(dir)?;
    Ok(())
}

#[test]
fn embedded_default_model_verifies() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    copy_default(dir.path())?;
    verify_manifest(dir.path())?;
    Ok(())
}

#[test]
fn tampered_weights_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    copy_default(dir.path())?;
    let weights = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&weights)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, bytes)?;
    match verify_manifest(dir.path()) {
        Err(EngineError::Integrity { path, reason }) => {
            assert_eq!(path, weights);
            assert!(reason.contains("sha256"), "{reason}");
        }
        other => anyhow::bail!("expected Integrity, got {other:?}"),
    }
    // A re-written manifest vouches for the new bytes.
    write_manifest(dir.path())?;
    verify_manifest(dir.path())?;
    Ok(())
}

#[test]
fn missing_and_unlisted_files_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    copy_default(dir.path())?;
    std::fs::write(dir.path().join("extra.safetensors"), b"x")?;
    match verify_manifest(dir.path()) {
        Err(EngineError::Integrity { path, .. }) => assert!(path.ends_with("extra.safetensors")),
        other => anyhow::bail!("expected Integrity, got {other:?}"),
    }
    std::fs::remove_file(dir.path().join("extra.safetensors"))?;
    std::fs::remove_file(dir.path().join("tokenizer.json"))?;
    assert!(matches!(
        verify_manifest(dir.path()),
        Err(EngineError::Integrity { .. })
    ));
    std::fs::remove_file(dir.path().join("airlock-manifest.json"))?;
    match verify_manifest(dir.path()) {
        Err(e @ EngineError::Integrity { .. }) => {
            assert!(e.to_string().contains("verify_manifest"), "{e}")
        }
        other => anyhow::bail!("expected Integrity, got {other:?}"),
    }
    Ok(())
}
