//! What the daemon asks the engine to load.

use std::path::PathBuf;

/// Where a model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The best wgpu hardware adapter, else the CPU backend (with one log line saying why).
    #[default]
    Auto,
    /// A wgpu adapter; fail if none.
    Gpu,
    /// burn's pure-Rust CPU backend.
    Cpu,
}

/// One model to serve.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// The name clients use in `model` fields.
    pub name: String,
    /// A Hugging Face model directory.
    pub path: PathBuf,
    pub device: DeviceChoice,
    /// Verify `airlock-manifest.json` before loading. `false` only by explicit operator choice.
    pub verify_manifest: bool,
    /// Requests that may wait for a sequence slot before `submit` answers `QueueFull`.
    pub max_queue: usize,
    /// Sequences decoded at once.
    pub max_active: usize,
    /// Cap on the context length, below the model's own (`None`: the model's).
    pub max_context: Option<usize>,
}
