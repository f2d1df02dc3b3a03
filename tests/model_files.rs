//! Operators' model tooling through the real binary: `airlockd model inspect` on the
//! committed fixtures (values checked against the files' headers, as read independently by
//! the `gguf` Python package and the safetensors JSON headers), and a GGUF model named as a
//! file in `[[models]] path`, with its `FILE.manifest.json`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{Daemon, Pki, TestConfig, airlockd};
use serde_json::{Value, json};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../engine/tests/fixtures")
        .join(rel)
}

fn inspect_json(path: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["model", "inspect", path.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let (status, stdout, stderr) = airlockd(&args);
    assert!(status.success(), "{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The `tensor_types` row for `dtype`: (tensors, parameters, bytes).
fn type_row(report: &Value, dtype: &str) -> (u64, u64, u64) {
    let row = report["tensor_types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["dtype"] == dtype)
        .unwrap_or_else(|| panic!("no {dtype} row: {report}"));
    (
        row["tensors"].as_u64().unwrap(),
        row["parameters"].as_u64().unwrap(),
        row["bytes"].as_u64().unwrap(),
    )
}

fn memory(report: &Value, device: &str) -> (u64, u64, u64) {
    let row = report["memory"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["device"] == device)
        .unwrap_or_else(|| panic!("no {device} row: {report}"));
    (
        row["weights_bytes"].as_u64().unwrap(),
        row["kv_bytes_full_context"].as_u64().unwrap(),
        row["total_bytes"].as_u64().unwrap(),
    )
}

#[test]
fn inspect_a_q4_0_gguf_file() {
    let r = inspect_json(&fixture("gguf/llama_gqa_f32-q4_0/model.gguf"), &[]);
    assert_eq!(r["format"], "gguf");
    assert_eq!(r["architecture"], "llama");
    assert_eq!(r["file_bytes"], 93184);
    assert_eq!(r["parameters"], 139_584);
    assert_eq!(r["tensor_count"], 21);
    assert_eq!(r["weight_bytes"], 79616);
    assert_eq!(r["layers"], 2);
    assert_eq!(r["attention_heads"], 4);
    assert_eq!(r["kv_heads"], 2);
    assert_eq!(r["head_dim"], 16);
    assert_eq!(r["vocab_size"], 512);
    assert_eq!(r["context_length"], 2048);
    assert_eq!(r["chat_template"], true);
    // Largest share of bytes first.
    assert_eq!(r["tensor_types"][0]["dtype"], "Q4_0");
    assert_eq!(type_row(&r, "Q4_0"), (16, 139_264, 78336));
    assert_eq!(type_row(&r, "F32"), (5, 320, 1280));
    let share = r["tensor_types"][0]["bytes_share"].as_f64().unwrap();
    assert!((share - 78336.0 / 79616.0).abs() < 1e-9, "{share}");
    let count = r["tensor_types"][0]["count_share"].as_f64().unwrap();
    assert!((count - 16.0 / 21.0).abs() < 1e-9, "{count}");
    // 2 (K and V) × 2 layers × 2 KV heads × 16 dims × 2 bytes (f16) / 4 bytes (f32).
    assert_eq!(
        r["kv_bytes_per_token"],
        json!({"cpu_f16": 256, "cpu_f32": 512, "wgpu_f16": 256})
    );
    assert_eq!(memory(&r, "cpu"), (79616, 256 * 2048, 79616 + 256 * 2048));
    // On a GPU the Q4_0 blocks stay blocks, 8-bit values with an f16 scale per 32 (17/16
    // bytes a weight); the F32 norms become f16.
    let gpu = 139_264 * 17 / 16 + 320 * 2;
    assert_eq!(memory(&r, "wgpu"), (gpu, 256 * 2048, gpu + 256 * 2048));
    let d = &r["decode_estimate"];
    assert!(d["read_bandwidth_gb_s"].as_f64().unwrap() > 0.0, "{d}");
    assert!(d["threads"].as_u64().unwrap() >= 1, "{d}");
    // Untied: every weight but the embedding table (one row read) is streamed per token.
    let embd = 512 * 64 / 32 * 18;
    assert_eq!(d["bytes_per_token"], 79616 - embd);
    let tps = d["tokens_per_s"].as_f64().unwrap();
    let full = d["tokens_per_s_full_context"].as_f64().unwrap();
    assert!(tps > full && full > 0.0, "{d}");
    let bw = d["read_bandwidth_gb_s"].as_f64().unwrap() * 1e9;
    assert!(
        (tps - bw / f64::from(79616 - embd)).abs() / tps < 1e-6,
        "{d}"
    );
    assert!(d["note"].as_str().unwrap().starts_with("estimate"), "{d}");
}

/// Llama 3.x GGUF files carry their RoPE scaling as a `rope_freqs.weight` tensor, whose
/// values a header-only read never has: inspect must not refuse them (it once did, for every
/// such file).
#[test]
fn inspect_a_gguf_file_with_rope_factors() {
    let r = inspect_json(
        &fixture("gguf/llama3_ropescaling_bf16-f16/model.gguf"),
        &["--no-bandwidth"],
    );
    assert_eq!(r["architecture"], "llama");
    assert_eq!(r["tensor_count"], 21);
    assert_eq!(r["parameters"], 102_728);
    assert_eq!(r["layers"], 2);
    assert_eq!(type_row(&r, "F32").0, 6);
}

#[test]
fn inspect_a_k_quant_mix_directory() {
    let r = inspect_json(&fixture("gguf/k256-mix"), &["--no-bandwidth"]);
    assert_eq!(r["architecture"], "llama");
    assert_eq!(r["parameters"], 525_056);
    assert_eq!(r["tensor_count"], 11);
    assert_eq!(r["weight_bytes"], 331_008);
    assert_eq!(r["layers"], 1);
    assert_eq!(type_row(&r, "Q6_K"), (2, 196_608, 161_280));
    assert_eq!(type_row(&r, "Q4_K"), (2, 131_072, 73728));
    assert_eq!(type_row(&r, "Q5_K"), (1, 32768, 22528));
    assert_eq!(type_row(&r, "Q3_K"), (1, 32768, 14080));
    assert_eq!(type_row(&r, "Q2_K"), (1, 65536, 21504));
    assert_eq!(type_row(&r, "IQ4_XS"), (1, 65536, 34816));
    assert_eq!(type_row(&r, "F32"), (3, 768, 3072));
    assert_eq!(r["tensor_types"].as_array().unwrap().len(), 7);
    assert_eq!(r["decode_estimate"], Value::Null);
    assert_eq!(memory(&r, "cpu").0, 331_008);
    // 8-bit values, an f32 scale per 16 and (Q2_K/Q4_K/Q5_K) an f16 minimum per 16.
    let gpu = (196_608 + 32768 + 65536) * 20 / 16 + (131_072 + 32768 + 65536) * 22 / 16 + 768 * 2;
    assert_eq!(memory(&r, "wgpu").0, gpu);
}

#[test]
fn inspect_safetensors_directories() {
    let r = inspect_json(&fixture("llama_gqa_f32"), &["--no-bandwidth"]);
    assert_eq!(r["format"], "safetensors");
    assert_eq!(r["architecture"], "llama");
    assert_eq!(r["parameters"], 139_584);
    assert_eq!(r["weight_bytes"], 558_336);
    assert_eq!(r["tensor_count"], 21);
    assert_eq!(type_row(&r, "F32"), (21, 139_584, 558_336));
    assert_eq!(r["tensor_types"][0]["bytes_share"], 1.0);
    assert_eq!(r["context_length"], 2048);
    assert_eq!(r["chat_template"], true);
    assert_eq!(r["kv_bytes_per_token"]["cpu_f16"], 256);
    assert_eq!(r["kv_bytes_per_token"]["cpu_f32"], 512);

    // Sharded: every shard's header, through the index.
    let r = inspect_json(&fixture("llama_f16_sharded"), &["--no-bandwidth"]);
    assert_eq!(r["parameters"], 164_160);
    assert_eq!(r["weight_bytes"], 328_320);
    assert_eq!(type_row(&r, "F16"), (21, 164_160, 328_320));

    let r = inspect_json(&fixture("gguf/qwen2_bias-f16"), &["--no-bandwidth"]);
    assert_eq!(r["architecture"], "qwen2");
    assert_eq!(r["parameters"], 109_120);
    assert_eq!(type_row(&r, "F16"), (15, 108_544, 217_088));
    assert_eq!(type_row(&r, "F32"), (11, 576, 2304));
}

#[test]
fn inspect_prints_a_table() {
    let path = fixture("gguf/llama_gqa_f32-q8_0");
    let (status, stdout, stderr) = airlockd(&["model", "inspect", path.to_str().unwrap()]);
    assert!(status.success(), "{stderr}");
    for needle in [
        "architecture   llama",
        "parameters     139.6K (139584)",
        "context        2048 tokens",
        "chat template  yes",
        "Q8_0",
        "KV cache       256 B per token on cpu (f16; 512 B with kv_cache_dtype = \"f32\"), 256 B on wgpu (f16)",
        "tokens/s",
        "estimate",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }
}

#[test]
fn inspect_errors_name_the_file_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read(fixture("gguf/k256-mix/model.gguf")).unwrap();

    // A header cut short.
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &original[..200]).unwrap();
    let (status, _, stderr) = airlockd(&["model", "inspect", cut.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(cut.to_str().unwrap()) && stderr.contains("metadata count"),
        "{stderr}"
    );

    // A tensor table that points past the end of the file.
    let short = dir.path().join("short.gguf");
    std::fs::write(&short, &original[..original.len() - 100]).unwrap();
    let (status, _, stderr) = airlockd(&["model", "inspect", short.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("short.gguf") && stderr.contains("beyond the end"),
        "{stderr}"
    );

    // Not a model file.
    let other = dir.path().join("weights.bin");
    std::fs::write(&other, b"hello").unwrap();
    let (status, _, stderr) = airlockd(&["model", "inspect", other.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("weights.bin") && stderr.contains(".gguf"),
        "{stderr}"
    );

    // A directory without a config.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (status, _, stderr) = airlockd(&["model", "inspect", empty.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("config.json"), "{stderr}");

    // A safetensors header claiming more data than the file holds.
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::copy(
        fixture("llama_gqa_f32/config.json"),
        bad.join("config.json"),
    )
    .unwrap();
    let weights = std::fs::read(fixture("llama_gqa_f32/model.safetensors")).unwrap();
    std::fs::write(bad.join("model.safetensors"), &weights[..weights.len() - 4]).unwrap();
    let (status, _, stderr) = airlockd(&["model", "inspect", bad.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("model.safetensors") && stderr.contains("data offsets"),
        "{stderr}"
    );
}

/// A copy of the q4_0 fixture as `DIR/tiny.gguf`, beside another GGUF file: a directory of
/// several GGUF files can still serve each one named as a file.
fn gguf_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny.gguf");
    std::fs::copy(fixture("gguf/llama_gqa_f32-q4_0/model.gguf"), &file).unwrap();
    std::fs::copy(
        fixture("gguf/llama_gqa_f32-q8_0/model.gguf"),
        dir.path().join("other.gguf"),
    )
    .unwrap();
    (dir, file)
}

#[test]
fn a_gguf_file_gets_its_own_manifest_and_is_verified() {
    let (dir, file) = gguf_copy();
    let f = file.to_str().unwrap();
    let (status, stdout, stderr) = airlockd(&["model", "manifest", f]);
    assert!(status.success(), "{stderr}");
    let manifest = dir.path().join("tiny.gguf.manifest.json");
    assert!(stdout.contains(manifest.to_str().unwrap()), "{stdout}");
    let listed: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(listed["files"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["files"][0]["path"], "tiny.gguf");
    assert_eq!(listed["files"][0]["size"], 93184);

    let generate = |path: &str| {
        airlockd(&[
            "model",
            "generate",
            "--model",
            path,
            "--verify",
            "--device",
            "cpu",
            "--prompt-ids",
            "1,2,3",
            "--max-tokens",
            "4",
            "--json",
        ])
    };
    let (status, stdout, stderr) = generate(f);
    assert!(status.success(), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["generated_ids"].as_array().unwrap().len(),
        4,
        "{report}"
    );

    // Same size, one byte changed: refused before it serves.
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    let (status, _, stderr) = generate(f);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("tiny.gguf") && stderr.contains("sha256"),
        "{stderr}"
    );

    // A manifest that vouches for another file does not vouch for this one.
    let other = dir.path().join("other.gguf");
    let (status, _, stderr) = airlockd(&["model", "manifest", other.to_str().unwrap()]);
    assert!(status.success(), "{stderr}");
    std::fs::copy(dir.path().join("other.gguf.manifest.json"), &manifest).unwrap();
    let (status, _, stderr) = generate(f);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("other.gguf") && stderr.contains("tiny.gguf"),
        "{stderr}"
    );

    // Without a manifest: refused, and the message says how to make one.
    std::fs::remove_file(&manifest).unwrap();
    let (status, _, stderr) = generate(f);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("tiny.gguf.manifest.json") && stderr.contains("airlockd model manifest"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_a_gguf_named_as_a_file() {
    let (_dir, file) = gguf_copy();
    let (status, _, stderr) = airlockd(&["model", "manifest", file.to_str().unwrap()]);
    assert!(status.success(), "{stderr}");
    let pki = Pki::new(&["alice"]);
    let cfg = TestConfig {
        models: format!(
            "[[models]]\nname = \"tiny\"\npath = {:?}\ndevice = \"cpu\"\n",
            file.to_str().unwrap()
        ),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let client = daemon.client(&pki, "alice");
    let resp = client
        .post(daemon.url("/v1/chat/completions"))
        .json(&json!({
            "model": "tiny",
            "messages": [{"role": "user", "content": "Hello!"}],
            "max_tokens": 4,
            "temperature": 0,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion", "{body}");
    assert!(
        body["usage"]["completion_tokens"].as_u64().unwrap() >= 1,
        "{body}"
    );
}
