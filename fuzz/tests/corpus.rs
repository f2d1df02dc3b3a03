//! Replays the committed corpora (`fuzz/corpus/<target>/`) and the engine's model fixtures
//! through the fuzz targets, so a regression on any input the fuzzers kept fails
//! `cargo test` without AFL++.

use std::path::{Path, PathBuf};

use airlock_fuzz::{TARGETS, Target, seeds};

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// Runs every file of `files` through `target`; fails naming each input that panicked.
fn replay(target: &Target, files: &[PathBuf]) {
    let mut failed = Vec::new();
    for file in files {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let run = target.run;
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{}: panicked on {failed:#?}",
        target.name
    );
}

fn corpus(name: &str) {
    let target = airlock_fuzz::target(name).unwrap_or_else(|| panic!("no target {name}"));
    let dir = corpus_root().join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no corpus", dir.display());
    replay(target, &files);
}

macro_rules! corpus_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                corpus(stringify!($name));
            }
        )*

        #[test]
        fn every_target_has_a_corpus_test() {
            let tested = [$(stringify!($name)),*];
            for t in TARGETS {
                assert!(tested.contains(&t.name), "{}: add it to corpus_tests!", t.name);
            }
        }
    };
}

corpus_tests!(
    gguf,
    safetensors,
    chat_template,
    openai_request,
    jwt,
    api_key,
    xfcc,
    stream_filter,
    grammar,
    audit_verify,
);

#[test]
fn every_seed_is_committed() {
    for (target, name, _) in seeds::all() {
        let path = corpus_root().join(target).join(format!("seed-{name}"));
        assert!(
            path.is_file(),
            "{} is missing: regenerate the seeds (fuzz/README.md)",
            path.display()
        );
    }
}

/// The engine's GGUF and safetensors test models, whole, through the same targets.
#[test]
fn engine_fixtures() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures");
    let mut ggufs = Vec::new();
    let mut dirs = Vec::new();
    for dir in [fixtures.join("gguf"), fixtures.clone()] {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.join("model.gguf").is_file() {
                ggufs.push(path.join("model.gguf"));
            } else if path.join("model.safetensors").is_file() {
                dirs.push(path);
            }
        }
    }
    assert!(
        !ggufs.is_empty() && !dirs.is_empty(),
        "no engine fixtures found"
    );
    replay(
        airlock_fuzz::target("gguf").unwrap_or_else(|| panic!("gguf")),
        &ggufs,
    );
    let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let inputs: Vec<PathBuf> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            let config = std::fs::read(dir.join("config.json")).unwrap_or_default();
            let weights = std::fs::read(dir.join("model.safetensors")).unwrap_or_default();
            let mut input = u16::try_from(config.len())
                .unwrap_or(0)
                .to_le_bytes()
                .to_vec();
            input.extend(config);
            input.extend(weights);
            let path = scratch.path().join(format!("{i}"));
            std::fs::write(&path, input).unwrap_or_else(|e| panic!("{e}"));
            path
        })
        .collect();
    replay(
        airlock_fuzz::target("safetensors").unwrap_or_else(|| panic!("safetensors")),
        &inputs,
    );
}

/// Regenerates the seeds: `cargo test -p airlock-fuzz --test corpus -- --ignored write_seeds`.
#[test]
#[ignore = "writes fuzz/corpus; run by hand (fuzz/README.md)"]
fn write_seeds() {
    let n = seeds::write_all(&corpus_root()).unwrap_or_else(|e| panic!("{e}"));
    println!("wrote {n} seeds under {}", corpus_root().display());
}
