//! Next-token selection: penalties, temperature, top-k, top-p, min-p, seeded sampling.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{EngineError, MAX_STOP_BYTES, MAX_STOP_SEQUENCES, SamplingParams};

/// Checks sampling parameters before a request is queued.
pub fn validate(p: &SamplingParams) -> Result<(), EngineError> {
    let bad = |param: &'static str, reason: &str| {
        Err(EngineError::InvalidRequest {
            param,
            reason: reason.into(),
        })
    };
    if !(p.temperature.is_finite() && p.temperature >= 0.0) {
        return bad("temperature", "must be a finite number >= 0");
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        return bad("top_p", "must be in (0, 1]");
    }
    if p.top_k == Some(0) {
        return bad("top_k", "must be at least 1");
    }
    if !(p.min_p >= 0.0 && p.min_p <= 1.0) {
        return bad("min_p", "must be in [0, 1]");
    }
    if !(p.repetition_penalty.is_finite() && p.repetition_penalty > 0.0) {
        return bad("repetition_penalty", "must be > 0");
    }
    if !(-2.0..=2.0).contains(&p.presence_penalty) {
        return bad("presence_penalty", "must be in [-2, 2]");
    }
    if !(-2.0..=2.0).contains(&p.frequency_penalty) {
        return bad("frequency_penalty", "must be in [-2, 2]");
    }
    if p.max_tokens == Some(0) {
        return bad("max_tokens", "must be at least 1");
    }
    validate_stop(&p.stop)
}

/// The stop strings' bounds: every token's stop matching, and the held-back tail of a
/// stream, stay small whatever a request sends.
pub fn validate_stop(stop: &[String]) -> Result<(), EngineError> {
    if stop.len() > MAX_STOP_SEQUENCES {
        return Err(EngineError::InvalidRequest {
            param: "stop",
            reason: format!(
                "at most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {}",
                stop.len()
            ),
        });
    }
    if let Some(long) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(EngineError::InvalidRequest {
            param: "stop",
            reason: format!(
                "a stop sequence may be at most {MAX_STOP_BYTES} bytes, got one of {} bytes",
                long.len()
            ),
        });
    }
    Ok(())
}

/// One sequence's sampler.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Occurrences of each generated token (for presence/frequency penalties).
    counts: std::collections::HashMap<u32, u32>,
    /// Tokens seen in prompt or output (for the repetition penalty).
    seen: std::collections::HashSet<u32>,
}

impl Sampler {
    pub fn new(params: &SamplingParams, prompt: &[u32]) -> Sampler {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let seen = if params.repetition_penalty != 1.0 {
            prompt.iter().copied().collect()
        } else {
            Default::default()
        };
        Sampler {
            params: params.clone(),
            rng,
            counts: Default::default(),
            seen,
        }
    }

    /// Records a generated token.
    pub fn observe(&mut self, id: u32) {
        *self.counts.entry(id).or_insert(0) += 1;
        if self.params.repetition_penalty != 1.0 {
            self.seen.insert(id);
        }
    }

    /// Picks the next token from raw logits (modified in place).
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            for &id in &self.seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    // transformers' RepetitionPenaltyLogitsProcessor.
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&id, &n) in &self.counts {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        // Candidates sorted by logit, best first (ties: lower id first, as argmax).
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_nan())
            .map(|(i, &l)| (i as u32, l / p.temperature))
            .collect();
        if cand.is_empty() {
            return 0;
        }
        let k = p.top_k.unwrap_or(cand.len()).min(cand.len()).max(1);
        let cmp = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if k < cand.len() {
            cand.select_nth_unstable_by(k - 1, cmp);
            cand.truncate(k);
        }
        cand.sort_unstable_by(cmp);
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|(_, l)| (l - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, pr) in probs.iter().enumerate() {
                acc += pr;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p;
            keep = keep.min(probs.iter().take_while(|&&x| x >= floor).count().max(1));
        }
        let total: f32 = probs[..keep].iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (i, pr) in probs[..keep].iter().enumerate() {
            if r < *pr {
                return cand[i].0;
            }
            r -= pr;
        }
        cand[keep - 1].0
    }
}

/// The index of the largest logit (the first on ties, as `torch.argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32) -> SamplingParams {
        SamplingParams {
            temperature: t,
            ..Default::default()
        }
    }

    fn draw(p: &SamplingParams, logits: &[f32], n: usize) -> Vec<u32> {
        let mut s = Sampler::new(p, &[]);
        (0..n).map(|_| s.sample(&mut logits.to_vec())).collect()
    }

    #[test]
    fn greedy_picks_the_first_maximum() {
        assert_eq!(draw(&params(0.0), &[1.0, 3.0, 3.0, 2.0], 1), vec![1]);
    }

    #[test]
    fn same_seed_same_output() {
        let p = SamplingParams {
            seed: Some(7),
            ..params(1.0)
        };
        let logits = [0.5, 0.4, 0.3, 0.2, 0.1];
        assert_eq!(draw(&p, &logits, 50), draw(&p, &logits, 50));
        let other = SamplingParams {
            seed: Some(8),
            ..p.clone()
        };
        assert_ne!(draw(&p, &logits, 50), draw(&other, &logits, 50));
    }

    #[test]
    fn top_k_top_p_min_p_restrict_the_candidates() {
        let logits = [0.0, 5.0, 4.9, 1.0, -3.0];
        let k = SamplingParams {
            top_k: Some(2),
            seed: Some(1),
            ..params(1.0)
        };
        assert!(draw(&k, &logits, 200).iter().all(|&t| t == 1 || t == 2));
        let p = SamplingParams {
            top_p: 0.3,
            seed: Some(1),
            ..params(1.0)
        };
        assert!(draw(&p, &logits, 200).iter().all(|&t| t == 1));
        let m = SamplingParams {
            min_p: 0.5,
            seed: Some(1),
            ..params(1.0)
        };
        let got = draw(&m, &logits, 200);
        assert!(got.iter().all(|&t| t == 1 || t == 2) && got.contains(&2));
    }

    #[test]
    fn penalties_discourage_repeats() {
        let p = SamplingParams {
            frequency_penalty: 2.0,
            ..params(0.0)
        };
        let mut s = Sampler::new(&p, &[]);
        s.observe(0);
        assert_eq!(s.sample(&mut [1.0, 0.5]), 1);
        let r = SamplingParams {
            repetition_penalty: 4.0,
            ..params(0.0)
        };
        let mut s = Sampler::new(&r, &[0]);
        assert_eq!(s.sample(&mut [1.0, 0.5]), 1);
    }
}
