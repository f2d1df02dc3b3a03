//! Rotary position embeddings: the frequency schedules (default, linear, Llama 3, GGUF's
//! per-pair factors, Phi-3's LongRoPE / "su" with short and long factor sets) and the
//! NEOX-style rotation transformers applies (halves of each head rotated together).

use burn::tensor::Tensor;

/// Llama 3.1-style frequency-dependent RoPE scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// Phi-3's LongRoPE (`"longrope"`, formerly `"su"`): one divisor per rotated pair, the short
/// set while a sequence fits the original context, the long set beyond it, and cos/sin
/// scaled by `attention_factor` either way.
#[derive(Clone, Debug, PartialEq)]
pub struct LongRope {
    pub short_factor: Vec<f64>,
    pub long_factor: Vec<f64>,
    pub original_max_position_embeddings: f64,
    pub attention_factor: f64,
}

/// How RoPE frequencies are scaled.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (`"linear"`).
    Linear(f64),
    Llama3(Llama3Scaling),
    /// One divisor per rotated pair: GGUF's `rope_freqs` tensor, which is how llama.cpp
    /// stores Llama 3.1 scaling (already computed from the factors above).
    Factors(Vec<f64>),
    LongRope(LongRope),
}

impl RopeScaling {
    /// The inverse frequencies, one per rotated pair of a `head_dim` head; `long` picks
    /// LongRoPE's long factor set (ignored by the other schedules).
    pub fn inv_freq(&self, theta: f64, head_dim: usize, long: bool) -> Vec<f64> {
        let dim = head_dim as f64;
        let base: Vec<f64> = (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f64 / dim))
            .collect();
        let divide = |f: &[f64]| base.iter().zip(f).map(|(x, f)| x / f).collect();
        match self {
            Self::None => base,
            Self::Linear(f) => base.iter().map(|x| x / f).collect(),
            Self::Factors(f) => divide(f),
            Self::LongRope(l) => divide(if long {
                &l.long_factor
            } else {
                &l.short_factor
            }),
            Self::Llama3(s) => {
                // transformers `_compute_llama3_parameters`.
                let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
                let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
                base.iter()
                    .map(|&freq| {
                        let wavelen = 2.0 * std::f64::consts::PI / freq;
                        if wavelen < high_wavelen {
                            freq
                        } else if wavelen > low_wavelen {
                            freq / s.factor
                        } else {
                            let smooth = (s.original_max_position_embeddings / wavelen
                                - s.low_freq_factor)
                                / (s.high_freq_factor - s.low_freq_factor);
                            (1.0 - smooth) * freq / s.factor + smooth * freq
                        }
                    })
                    .collect()
            }
        }
    }
}

/// A RoPE schedule ready to produce per-position tables.
pub struct Rope {
    /// Dimensions rotated at the start of each head (the head dimension, or less with a
    /// partial rotary factor: Phi-4-mini rotates 3/4 of each head).
    rotary_dim: usize,
    short: Vec<f32>,
    /// LongRoPE's long set, with the sequence length beyond which it applies.
    long: Option<(Vec<f32>, usize)>,
    /// cos/sin multiplier (LongRoPE's attention factor, else 1).
    mscale: f32,
}

impl Rope {
    /// The schedule for the first `rotary_dim` dimensions of each head.
    pub fn new(theta: f64, rotary_dim: usize, scaling: &RopeScaling) -> Rope {
        let head_dim = rotary_dim;
        let f32s = |v: Vec<f64>| v.into_iter().map(|f| f as f32).collect::<Vec<f32>>();
        let (long, mscale) = match scaling {
            RopeScaling::LongRope(l) => (
                Some((
                    f32s(scaling.inv_freq(theta, head_dim, true)),
                    l.original_max_position_embeddings as usize,
                )),
                l.attention_factor as f32,
            ),
            _ => (None, 1.0),
        };
        Rope {
            rotary_dim,
            short: f32s(scaling.inv_freq(theta, head_dim, false)),
            long,
            mscale,
        }
    }

    /// `cos` and `sin` tables, `[n, rotary_dim]` rows, for positions `start..start + n`,
    /// computed the way transformers does (f32 angles, halves duplicated). LongRoPE uses its
    /// long factors when the sequence, `start + n` positions after this step, exceeds the
    /// original context (transformers' per-forward choice).
    pub fn host_tables(&self, start: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
        let hd = self.rotary_dim;
        let inv_freq = match &self.long {
            Some((long, original)) if start + n > *original => long,
            _ => &self.short,
        };
        let mut cos = Vec::with_capacity(n * hd);
        let mut sin = Vec::with_capacity(n * hd);
        for p in start..start + n {
            let row: Vec<f32> = inv_freq.iter().map(|f| f * p as f32).collect();
            for _ in 0..2 {
                cos.extend(row.iter().map(|a| ((*a as f64).cos() as f32) * self.mscale));
                sin.extend(row.iter().map(|a| ((*a as f64).sin() as f32) * self.mscale));
            }
        }
        (cos, sin)
    }
}

/// Rotates one head's vector `x` in place by one position's rows of [`Rope::host_tables`]:
/// the first `cos.len()` dimensions, the rest passed through; the same `f32` operations as
/// [`apply`] (`x·cos + rotate_half(x)·sin`).
pub fn rotate(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let rd = cos.len().min(sin.len()).min(x.len());
    let half = rd / 2;
    let (x1, rest) = x.split_at_mut(half);
    let x2 = &mut rest[..half];
    for i in 0..half {
        let (a, b) = (x1[i], x2[i]);
        x1[i] = a * cos[i] + (-b) * sin[i];
        x2[i] = b * cos[half + i] + a * sin[half + i];
    }
}

/// Rotates `x` (`[rows, heads, head_dim]`) by tables `[rows, 1, rotary_dim]` of
/// [`Rope::host_tables`] (each row's position): the first `rotary_dim` dimensions of each
/// head, the rest passed through.
pub fn apply(x: Tensor<3>, cos: &Tensor<3>, sin: &Tensor<3>) -> Tensor<3> {
    let [_, _, hd] = x.dims();
    let rd = cos.dims()[2];
    if rd < hd {
        let pass = x.clone().narrow(2, rd, hd - rd);
        let rotated = apply(x.narrow(2, 0, rd), cos, sin);
        return Tensor::cat(vec![rotated, pass], 2);
    }
    let half = hd / 2;
    let x1 = x.clone().narrow(2, 0, half);
    let x2 = x.clone().narrow(2, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 2);
    x * cos.clone() + rotated * sin.clone()
}
