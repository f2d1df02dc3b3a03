//! Gated MLPs: `down(act(gate(x)) · up(x))` with SiLU (SwiGLU: Llama, Qwen, Phi-3) or
//! tanh-approximated GELU (GeGLU: Gemma), the gate and up projections separate or fused into
//! one `[2 × intermediate, hidden]` matrix (Phi-3's `gate_up_proj`, gate rows first).

use burn::tensor::Tensor;
use burn::tensor::activation::{gelu_approximate, silu};

use crate::layers::linear::Linear;

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
}
