//! Gated MLPs: `down(act(gate(x)) · up(x))` with SiLU (SwiGLU: Llama, Qwen, Phi-3) or
//! tanh-approximated GELU (GeGLU: Gemma), the gate and up projections separate or fused into
//! one `[2 × intermediate, hidden]` matrix (Phi-3's `gate_up_proj`, gate rows first).

use burn::tensor::activation::{gelu_approximate, silu};
use burn::tensor::{Tensor, TensorData};

use crate::layers::linear::{Linear, host_rows};

/// The gate's activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU, tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

/// How the gate and up projections are stored.
#[expect(
    clippy::large_enum_variant,
    reason = "one per layer, built once at load; never moved on the hot path"
)]
pub enum GateUp {
    Separate {
        gate: Linear,
        up: Linear,
    },
    /// One projection whose first `intermediate` outputs are the gate, the rest the up.
    Fused(Linear),
}

pub struct Mlp {
    pub gate_up: GateUp,
    pub down: Linear,
    pub act: Activation,
    pub intermediate: usize,
}

impl Mlp {
    /// `x`: `[rows, hidden]` → `[rows, hidden]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self.forward_host(&x) {
            Some(y) => y,
            None => self.forward_tensors(x),
        }
    }

    /// [`Mlp::forward`] as burn tensor operations (a GPU, GELU, a bias).
    fn forward_tensors(&self, x: Tensor<2>) -> Tensor<2> {
        let (gate, up) = match &self.gate_up {
            GateUp::Separate { gate, up } => (gate.forward(x.clone()), up.forward(x)),
            GateUp::Fused(both) => {
                let y = both.forward(x);
                let i = self.intermediate;
                (y.clone().narrow(1, 0, i), y.narrow(1, i, i))
            }
        };
        let gate = match self.act {
            Activation::Silu => silu(gate),
            Activation::GeluTanh => gelu_approximate(gate),
        };
        self.down.forward(gate * up)
    }

    /// SwiGLU with every projection a CPU matrix: the activations stay on the host from the
    /// input to the down projection's output, and `silu(g) · u` is one pass between the
    /// projections instead of burn's sigmoid, two multiplies and their tensors. The same
    /// operations on the same values as the tensor path (`g · σ(g)` with burn's CPU sigmoid,
    /// then `· u`), so the same bits. `None`: the tensor path applies (GELU, a GPU, a bias).
    fn forward_host(&self, x: &Tensor<2>) -> Option<Tensor<2>> {
        let host = match &self.gate_up {
            GateUp::Separate { gate, up } => gate.on_host() && up.on_host(),
            GateUp::Fused(both) => both.on_host(),
        };
        if self.act != Activation::Silu || !host || !self.down.on_host() {
            return None;
        }
        let [rows, _] = x.dims();
        if rows == 0 {
            return None;
        }
        let (device, dtype) = (x.device(), x.dtype());
        let xs = host_rows(x.clone());
        let i = self.intermediate;
        let h = match &self.gate_up {
            GateUp::Separate { gate, up } => {
                let (g, u) = (gate.host_matmul(&xs, rows)?, up.host_matmul(&xs, rows)?);
                if g.len() != rows * i || u.len() != g.len() {
                    return None;
                }
                g.iter().zip(&u).map(|(&g, &u)| swiglu(g, u)).collect()
            }
            GateUp::Fused(both) => {
                let y = both.host_matmul(&xs, rows)?;
                if y.len() != rows * 2 * i {
                    return None;
                }
                let mut h = Vec::with_capacity(rows * i);
                for row in y.chunks_exact(2 * i) {
                    let (g, u) = row.split_at(i);
                    h.extend(g.iter().zip(u).map(|(&g, &u)| swiglu(g, u)));
                }
                h
            }
        };
        let out = self.down.host_matmul(&h, rows)?;
        let hidden = out.len() / rows;
        Some(Tensor::from_data(
            TensorData::new(out, [rows, hidden]),
            (&device, dtype),
        ))
    }
}

/// `silu(g) · u` as the tensor path computes it on the CPU: burn-flex's sigmoid (`1 / (1 +
/// e^−g)` for `g ≥ 0`, `e^g / (1 + e^g)` below, the platform's `expf`), times `g`, times `u`.
#[inline]
fn swiglu(g: f32, u: f32) -> f32 {
    let s = if g >= 0.0 {
        1.0 / (1.0 + (-g).exp())
    } else {
        let e = g.exp();
        e / (1.0 + e)
    };
    g * s * u
}

#[cfg(test)]
mod tests {
    use burn::tensor::{DType, Device};

    use super::*;
    use crate::kernels::{Format, PackedMatrix};

    fn matrix(out: usize, inp: usize, seed: u32) -> PackedMatrix {
        let mut state = seed;
        let w: Vec<f32> = (0..out * inp)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((state >> 8) as f32 / (1 << 24) as f32 - 0.5) * 0.2
            })
            .collect();
        PackedMatrix::pack(&w, out, inp, Format::Q8_0).expect("packs")
    }

    /// The host SwiGLU gives the tensor path's bits, fused and separate gate/up, one row and
    /// several, and gates of both signs (both branches of the sigmoid).
    #[test]
    fn host_swiglu_is_bitwise_the_tensor_path() {
        let (hidden, inter) = (64, 96);
        let fused = Mlp {
            gate_up: GateUp::Fused(Linear::from_packed(matrix(2 * inter, hidden, 1))),
            down: Linear::from_packed(matrix(hidden, inter, 2)),
            act: Activation::Silu,
            intermediate: inter,
        };
        let separate = Mlp {
            gate_up: GateUp::Separate {
                gate: Linear::from_packed(matrix(inter, hidden, 3)),
                up: Linear::from_packed(matrix(inter, hidden, 4)),
            },
            down: Linear::from_packed(matrix(hidden, inter, 5)),
            act: Activation::Silu,
            intermediate: inter,
        };
        let device = Device::flex();
        for rows in [1, 5] {
            let xs: Vec<f32> = (0..rows * hidden)
                .map(|i| ((i * 29 % 53) as f32 - 26.0) / 9.0)
                .collect();
            let x =
                Tensor::<2>::from_data(TensorData::new(xs, [rows, hidden]), (&device, DType::F32));
            for mlp in [&fused, &separate] {
                let host = mlp
                    .forward_host(&x)
                    .expect("every projection is on the host");
                let tensors = mlp.forward_tensors(x.clone());
                let (host, tensors) = (host_rows(host), host_rows(tensors));
                assert_eq!(host.len(), rows * hidden);
                assert!(host.iter().any(|&v| v != 0.0));
                assert_eq!(
                    host.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    tensors.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "rows {rows}"
                );
            }
        }
    }
}
