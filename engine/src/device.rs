//! Device selection: a wgpu GPU when there is one, else burn's pure-Rust CPU backend.
//!
//! Adapters are first *listed* with plain wgpu, which opens no device and compiles no
//! shader, so `Auto` never touches a software rasterizer: some (lavapipe with SPIR-V shaders)
//! crash the process compiling compute pipelines, which no `catch_unwind` can stop. A
//! device is opened only for a hardware adapter, or when the operator asked for `gpu`.

use std::future::Future;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use burn::tensor::wgpu::wgpu;
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
    Placement {
        device: Device::flex(),
        dtype: DType::F32,
        description: "cpu (flex, f32)".into(),
    }
}

/// What plain wgpu sees, without opening anything.
#[derive(Clone, Debug)]
struct Listed {
    name: String,
    backend: String,
    kind: Option<DeviceKind>,
}

struct Gpu {
    device: Device,
    name: String,
    software: bool,
}

/// Runs `f` on its own thread with a deadline, turning panics into errors: a broken driver
/// must not hang or panic the daemon's start.
fn guarded<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("airlock-gpu-probe".into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(r.unwrap_or_else(|_| Err("panicked".into())));
        })
        .map_err(|e| format!("cannot start the {what}: {e}"))?;
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| Err(format!("the {what} did not finish within 60 s")))
}

fn list_adapters() -> &'static Result<Vec<Listed>, String> {
    static LISTED: OnceLock<Result<Vec<Listed>, String>> = OnceLock::new();
    LISTED.get_or_init(|| {
        guarded("adapter listing", || {
            let instance = wgpu::Instance::new(
                wgpu::InstanceDescriptor::new_without_display_handle_from_env(),
            );
            let mut fut = std::pin::pin!(instance.enumerate_adapters(wgpu::Backends::all()));
            // Native enumeration completes on the first poll.
            let adapters = match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(a) => a,
                Poll::Pending => return Err("adapter enumeration did not complete".into()),
            };
            let mut counts = [0usize; 3];
            Ok(adapters
                .iter()
                .map(|a| {
                    let info = a.get_info();
                    let slot = |i: usize, counts: &mut [usize; 3]| {
                        let n = counts[i];
                        counts[i] += 1;
                        n
                    };
                    let kind = match info.device_type {
                        wgpu::DeviceType::DiscreteGpu => {
                            Some(DeviceKind::DiscreteGpu(slot(0, &mut counts)))
                        }
                        wgpu::DeviceType::IntegratedGpu => {
                            Some(DeviceKind::IntegratedGpu(slot(1, &mut counts)))
                        }
                        wgpu::DeviceType::VirtualGpu => {
                            Some(DeviceKind::VirtualGpu(slot(2, &mut counts)))
                        }
                        wgpu::DeviceType::Cpu | wgpu::DeviceType::Other => None,
                    };
                    Listed {
                        name: info.name,
                        backend: format!("{:?}", info.backend),
                        kind,
                    }
                })
                .collect())
        })
    })
}

/// Opens one adapter and proves it runs a kernel.
fn open(kind: DeviceKind) -> Result<Gpu, String> {
    guarded("GPU probe", move || {
        let device = Device::wgpu_options()
            .device_kind(kind)
            .init()
            .map_err(|e| format!("no usable wgpu adapter: {e}"))?;
        let identity = device.identity();
        let name = identity
            .as_ref()
            .map(|i| i.name.clone())
            .unwrap_or_else(|| "unknown adapter".into());
        let software = identity.as_ref().is_some_and(|i| i.physical.is_none());
        let t = burn::tensor::Tensor::<1>::from_floats([1.0, 2.0], &device);
        let sum: f32 = t
            .sum()
            .try_into_scalar::<f32>()
            .map_err(|e| format!("test kernel failed: {e:?}"))?;
        if (sum - 3.0).abs() > 1e-3 {
            return Err(format!("test kernel returned {sum}, expected 3"));
        }
        Ok(Gpu {
            device,
            name,
            software,
        })
    })
}

/// The hardware adapter `Auto` uses (discrete before integrated before virtual), opened once.
fn hardware_gpu() -> &'static Result<Gpu, String> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    GPU.get_or_init(|| {
        let listed = list_adapters().as_ref().map_err(String::clone)?;
        let rank = |k: &Option<DeviceKind>| match k {
            Some(DeviceKind::DiscreteGpu(_)) => 0,
            Some(DeviceKind::IntegratedGpu(_)) => 1,
            Some(_) => 2,
            None => 3,
        };
        let best = listed
            .iter()
            .filter(|l| l.kind.is_some())
            .min_by_key(|l| rank(&l.kind));
        match best {
            Some(Listed {
                kind: Some(kind), ..
            }) => open(kind.clone()),
            _ if listed.is_empty() => Err("no wgpu adapter (no Vulkan/Metal/DX12 driver)".into()),
            _ => Err(format!(
                "no hardware adapter; only software ones: {}",
                listed
                    .iter()
                    .map(|l| format!("{} ({})", l.name, l.backend))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    })
}

/// The adapter wgpu picks by default (software ones included), opened once.
fn any_gpu() -> &'static Result<Gpu, String> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    GPU.get_or_init(|| match hardware_gpu() {
        Ok(g) => Ok(Gpu {
            device: g.device.clone(),
            name: g.name.clone(),
            software: g.software,
        }),
        Err(_) => {
            let listed = list_adapters().as_ref().map_err(String::clone)?;
            if listed.is_empty() {
                return Err("no wgpu adapter (no Vulkan/Metal/DX12 driver)".into());
            }
            open(DeviceKind::DefaultDevice)
        }
    })
}

fn gpu_placement(gpu: &Gpu) -> Placement {
    // f16 halves memory traffic where the adapter computes in it; software rasterizers are
    // for correctness tests, kept in f32 so they compare tightly with the CPU.
    let f16 = !gpu.software && gpu.device.supports_dtype(FloatDType::F16);
    let (dtype, label) = if f16 {
        (DType::F16, "f16")
    } else {
        (DType::F32, "f32")
    };
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
        DeviceChoice::Gpu => any_gpu()
            .as_ref()
            .map(gpu_placement)
            .map_err(|e| EngineError::Device(e.clone())),
        DeviceChoice::Auto => match hardware_gpu() {
            Ok(gpu) => Ok(gpu_placement(gpu)),
            Err(why) => {
                tracing::info!(reason = %why, "running on the CPU (flex, f32)");
                Ok(cpu())
            }
        },
    }
}

/// Whether some wgpu adapter (software ones included) is listed; tests that need a GPU
/// skip otherwise. Opens nothing.
pub fn gpu_available() -> bool {
    list_adapters().as_ref().is_ok_and(|l| !l.is_empty())
}
