//! A bad model directory is an error naming the file and the field or tensor, never a panic.

use std::path::{Path, PathBuf};

use airlock_engine::{EngineError, GenerateOptions, Prompt, generate_once};

fn fixture_copy(name: &str, dest: &Path) -> anyhow::Result<PathBuf> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    for entry in std::fs::read_dir(&src)? {
        let entry = entry?;
        std::fs::copy(entry.path(), dest.join(entry.file_name()))?;
    }
    Ok(dest.to_path_buf())
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) -> anyhow::Result<()> {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    f(&mut v);
    std::fs::write(&path, serde_json::to_string(&v)?)?;
    Ok(())
}

fn load_error(dir: &Path) -> anyhow::Result<EngineError> {
    match generate_once(&GenerateOptions::new(dir, Prompt::TokenIds(vec![1, 2]))) {
        Err(e) => Ok(e),
        Ok(_) => anyhow::bail!("loading {} should fail", dir.display()),
    }
}

#[test]
fn misshaped_tensor_is_named_with_both_shapes() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = fixture_copy("llama_gqa_f32", tmp.path())?;
    edit_config(&dir, |v| v["intermediate_size"] = 100.into())?;
    let msg = load_error(&dir)?.to_string();
    assert!(
        msg.contains("mlp.gate_proj.weight")
            && msg.contains("[100, 64]")
            && msg.contains("[128, 64]"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn missing_tensor_is_named() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = fixture_copy("llama_gqa_f32", tmp.path())?;
    edit_config(&dir, |v| v["num_hidden_layers"] = 3.into())?;
    let msg = load_error(&dir)?.to_string();
    assert!(
        msg.contains("model.layers.2.") && msg.contains("missing"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn unsupported_architecture_names_file_and_field() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = fixture_copy("llama_gqa_f32", tmp.path())?;
    edit_config(&dir, |v| {
        v["architectures"] = serde_json::json!(["GPT2LMHeadModel"])
    })?;
    match load_error(&dir)? {
        EngineError::Load { path, reason } => {
            assert!(path.ends_with("config.json"));
            assert!(
                reason.contains("architectures") && reason.contains("GPT2LMHeadModel"),
                "{reason}"
            );
        }
        other => anyhow::bail!("expected Load, got {other:?}"),
    }
    Ok(())
}

#[test]
fn out_of_vocabulary_prompt_ids_are_an_error() -> anyhow::Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_gqa_f32");
    match generate_once(&GenerateOptions::new(
        dir,
        Prompt::TokenIds(vec![1, 999_999]),
    )) {
        Err(EngineError::InvalidRequest { param, .. }) => assert_eq!(param, "prompt"),
        other => anyhow::bail!("expected InvalidRequest, got {other:?}"),
    }
    Ok(())
}
