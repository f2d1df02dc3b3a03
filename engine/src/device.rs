//! Device selection: a wgpu GPU when there is one, else burn's pure-Rust CPU backend.

use std::sync::OnceLock;
use std::time::Duration;

use burn::tensor::{DType, Device, DeviceKind, FloatDType};

use crate::{DeviceChoice, EngineError};

/// A device and the precision weights and activations use on it.
#[derive(Clone, Debug)]
pub struct Placement {
    pub device: Device,
    pub dtype: DType,
    /// For [`crate::ModelInfo::device`], e.g. `cpu (flex, f32)`.
    pub description: String,
}

fn cpu() -> Placement {
    Placement { device: Device::flex(), dtype: DType::F32, description: "cpu (flex, f32)".into() }
}

struct Gpu {
    device: Device,
    name: String,
    software: bool,
}

/// Opens the default wgpu adapter once per process. The probe runs on its own thread with
/// a deadline: a broken driver must not hang or panic the daemon's start.
fn probe_gpu() -> Result<&'static Gpu, String> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    GPU.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name("airlock-gpu-probe".into()).spawn(move || {
            let result = std::panic::catch_unwind(|| {
                let device = Device::wgpu_options()
                    .device_kind(DeviceKind::DefaultDevice)
                    .init()
                    .map_err(|e| format!("no usable wgpu adapter: {e}"))?;
                let identity = device.identity();
                let name = identity.as_ref().map(|i| i.name.clone()).unwrap_or_else(|| "unknown adapter".into());
                let software = identity.as_ref().is_some_and(|i| i.physical.is_none());
                // A tiny op proves the adapter actually runs kernels.
                let t = burn::tensor::Tensor::<1>::from_floats([1.0, 2.0], &device);
                let sum: f32 = t.sum().try_into_scalar::<f32>().map_err(|e| format!("test kernel failed: {e:?}"))?;
                if (sum - 3.0).abs() > 1e-3 {
                    return Err(format!("test kernel returned {sum}, expected 3"));
                }
                Ok(Gpu { device, name, software })
            });
            let _ = tx.send(result.unwrap_or_else(|_| Err("the wgpu probe panicked".into())));
        });
        if let Err(e) = spawned {
            return Err(format!("cannot start the GPU probe: {e}"));
        }
        rx.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| Err("the wgpu probe did not finish within 60 s".into()))
    })
    .as_ref()
    .map_err(String::clone)
}

fn gpu_placement(gpu: &Gpu) -> Placement {
    // f16 halves memory traffic where the adapter computes in it; software rasterizers are
    // for correctness tests, kept in f32 so they compare tightly with the CPU.
    let f16 = !gpu.software && gpu.device.supports_dtype(FloatDType::F16);
    let (dtype, label) = if f16 { (DType::F16, "f16") } else { (DType::F32, "f32") };
    Placement {
        device: gpu.device.clone(),
        dtype,
        description: format!("gpu (wgpu: {}, {label})", gpu.name),
    }
}

/// Resolves a [`DeviceChoice`]. `Auto` takes a hardware GPU, else the CPU with one log line
/// saying why; `Gpu` takes any wgpu adapter (software ones included, for tests) or fails.
pub fn place(choice: DeviceChoice) -> Result<Placement, EngineError> {
    match choice {
        DeviceChoice::Cpu => Ok(cpu()),
        DeviceChoice::Gpu => probe_gpu().map(gpu_placement).map_err(EngineError::Device),
        DeviceChoice::Auto => match probe_gpu() {
            Ok(gpu) if !gpu.software => Ok(gpu_placement(gpu)),
            Ok(gpu) => {
                tracing::info!(adapter = %gpu.name, "using the CPU: the only wgpu adapter is a software rasterizer");
                Ok(cpu())
            }
            Err(why) => {
                tracing::info!(reason = %why, "using the CPU: no GPU");
                Ok(cpu())
            }
        },
    }
}

/// Whether a wgpu adapter of any kind is usable (tests that need one skip otherwise).
pub fn gpu_available() -> bool {
    probe_gpu().is_ok()
}
