//! Fuzz targets for every parser of untrusted input in Airlock, each a plain
//! `fn(&[u8])` over the production entry point:
//!
//! | target | surface |
//! | --- | --- |
//! | `gguf` | GGUF model file: header, config, tokenizer rebuilt from metadata, tensors |
//! | `safetensors` | `config.json` + safetensors header and tensors |
//! | `chat_template` | a hostile Jinja chat template rendered over hostile messages |
//! | `openai_request` | an OpenAI request body → validated request (chat, completions, generate) |
//! | `jwt` | bearer tokens (raw, and well-signed with hostile headers/claims) and JWKS files |
//! | `api_key` | API key and key id parsing, checked against the documented format |
//! | `xfcc` | Envoy XFCC / URL-escaped PEM / `X-Forwarded-For` from a trusted proxy |
//! | `stream_filter` | the streaming output filter: any chunking gives the one-chunk result |
//! | `audit_verify` | the audit verifier on corrupted SQLite files and tampered rows |
//! | `grammar` | a `response_format` JSON Schema compiled and followed token by token |
//!
//! A target returns normally for every input (errors are expected outcomes) and panics only
//! on a bug: a panic in the code under test, or a broken invariant the target checks. The
//! `airlock-fuzz` binary (feature `afl`) runs one under AFL++; `tests/corpus.rs` replays
//! the committed corpora in `cargo test`. See `fuzz/README.md`.

mod api_key;
mod audit_verify;
mod chat_template;
mod gguf;
mod grammar;
mod jwt;
mod openai_request;
pub mod seeds;
mod split;
mod stream_filter;
mod weights;
mod xfcc;

use std::cell::OnceCell;
use std::path::PathBuf;

/// One fuzz target.
pub struct Target {
    /// Its name: the corpus directory (`fuzz/corpus/<name>`) and the binary's argument.
    pub name: &'static str,
    pub run: fn(&[u8]),
    /// The product runs this code inside `catch_unwind` on purpose (a panic there is that
    /// request's error, not a dead task), so only a panic that escapes is a crash: the
    /// target runs without afl's abort-on-any-panic hook. `chat_template`: minijinja 2.24
    /// panics on some hostile templates (fuzz/README.md) and the tokenizer contains it.
    pub contained_panics: bool,
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "gguf",
        run: gguf::run,
        contained_panics: false,
    },
    Target {
        name: "safetensors",
        run: weights::run,
        contained_panics: false,
    },
    Target {
        name: "chat_template",
        run: chat_template::run,
        contained_panics: true,
    },
    Target {
        name: "openai_request",
        run: openai_request::run,
        contained_panics: false,
    },
    Target {
        name: "jwt",
        run: jwt::run,
        contained_panics: false,
    },
    Target {
        name: "api_key",
        run: api_key::run,
        contained_panics: false,
    },
    Target {
        name: "xfcc",
        run: xfcc::run,
        contained_panics: false,
    },
    Target {
        name: "stream_filter",
        run: stream_filter::run,
        contained_panics: false,
    },
    Target {
        name: "audit_verify",
        run: audit_verify::run,
        contained_panics: false,
    },
    Target {
        name: "grammar",
        run: grammar::run,
        contained_panics: false,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

thread_local! {
    /// A scratch directory per thread (the corpus test runs targets on parallel threads),
    /// for the targets whose entry point reads files. Removed when the thread ends.
    static SCRATCH: OnceCell<tempfile::TempDir> = const { OnceCell::new() };
}

/// `<scratch>/<name>`, created empty on first use (callers overwrite what they write).
fn scratch(name: &str) -> PathBuf {
    SCRATCH.with(|cell| {
        let root = cell.get_or_init(|| {
            tempfile::Builder::new()
                .prefix("airlock-fuzz-")
                .tempdir()
                .unwrap_or_else(|e| panic!("cannot create a scratch directory: {e}"))
        });
        let dir = root.path().join(name);
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        dir
    })
}

/// Writes `bytes` to `path`; a failure is the harness's, not the target's, so it panics.
fn write(path: &std::path::Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
