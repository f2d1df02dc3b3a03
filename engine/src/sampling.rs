//! Next-token selection: penalties, temperature, top-k, top-p, min-p, seeded sampling.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::constraint::Constraint;
use crate::{EngineError, MAX_STOP_BYTES, MAX_STOP_SEQUENCES, MAX_TOP_LOGPROBS, SamplingParams};

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
    if p.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
        return bad("top_logprobs", "must be at most 20");
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

    /// Whether the next token is the most likely one (temperature 0), whatever the RNG.
    pub fn is_greedy(&self) -> bool {
        self.params.temperature == 0.0
    }

    /// Records a generated token.
    pub fn observe(&mut self, id: u32) {
        *self.counts.entry(id).or_insert(0) += 1;
        if self.params.repetition_penalty != 1.0 {
            self.seen.insert(id);
        }
    }

    /// Picks the next token from raw logits (modified in place) and, when the request asked
    /// for them, its log-probabilities: computed from the logits as the model gave them,
    /// before any grammar mask, penalty or temperature touches them. A request without
    /// `logprobs` or a grammar costs exactly what [`Self::sample`] does.
    pub fn sample_with_logprobs(
        &mut self,
        logits: &mut [f32],
        constraint: Option<&mut Constraint>,
    ) -> Result<(u32, Option<Logprobs>), EngineError> {
        let asked = self.params.logprobs.map(|n| {
            let dist = LogSoftmax::new(logits);
            let top = dist.top(logits, n);
            (dist, top)
        });
        if let Some(c) = constraint {
            c.mask(logits)?;
        }
        let Some((dist, top)) = asked else {
            return Ok((self.sample(logits), None));
        };
        // Penalties rewrite logits in place; temperature and the filters work on a copy.
        let penalised = self.params.repetition_penalty != 1.0
            || self.params.presence_penalty != 0.0
            || self.params.frequency_penalty != 0.0;
        let raw = penalised.then(|| logits.to_vec());
        let id = self.sample(logits);
        // The mask leaves allowed logits (the chosen one among them) as they were, so the
        // copy taken before penalties holds the model's own value.
        let raw_logit = raw
            .as_deref()
            .unwrap_or(logits)
            .get(id as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY);
        let logprob = dist.at(raw_logit);
        Ok((id, Some(Logprobs { logprob, top })))
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
        if self.is_greedy() {
            return argmax(logits);
        }
        // Each candidate's weight exp((l − max) / T), then the filters: top-k keeps the k
        // highest, min-p the weights ≥ min_p × the highest's (which is 1), top-p the highest
        // whose mass reaches top_p of the whole. Only what a filter needs is ranked, never the
        // whole vocabulary by default (temperature 1, top_p 1: no sort at all; a full sort of a
        // 150k vocabulary per token costs milliseconds). The draw walks what is kept.
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_nan())
            .map(|(i, &l)| (i as u32, l / p.temperature))
            .collect();
        // Best first; ties: lower id first, as argmax.
        let cmp = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if let Some(k) = p.top_k
            && k < cand.len()
        {
            cand.select_nth_unstable_by(k.max(1) - 1, cmp);
            cand.truncate(k.max(1));
        }
        let max = cand.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.1));
        if max == f32::NEG_INFINITY {
            // Nothing possible (every logit masked out): the first candidate, as argmax.
            return cand.iter().map(|c| c.0).min().unwrap_or(0);
        }
        cand.iter_mut().for_each(|c| c.1 = (c.1 - max).exp());
        // Top-p's mass is of the whole (after top-k); min-p and top-p each keep a best-first
        // run, so together they keep the shorter.
        let goal = p.top_p * cand.iter().map(|c| c.1).sum::<f32>();
        if p.min_p > 0.0 {
            cand.retain(|c| c.1 >= p.min_p);
        }
        if p.top_p < 1.0 {
            keep_top_mass(&mut cand, goal, cmp);
        }
        let total: f32 = cand.iter().map(|c| c.1).sum();
        let mut r = self.rng.random::<f32>() * total;
        for &(id, w) in &cand {
            if r < w {
                return id;
            }
            r -= w;
        }
        cand.last().map_or(0, |c| c.0)
    }
}

/// Keeps the shortest best-first run of `cand` whose weights sum to at least `goal` (all of
/// them if rounding leaves the sum short), in that order: it ranks the best 64 first, and
/// four times as many each time those do not reach the goal, so a peaked distribution sorts
/// a few dozen candidates, a flat one at worst all.
fn keep_top_mass(
    cand: &mut Vec<(u32, f32)>,
    goal: f32,
    cmp: impl Fn(&(u32, f32), &(u32, f32)) -> std::cmp::Ordering + Copy,
) {
    let mut m = cand.len().min(64);
    loop {
        if m < cand.len() {
            cand.select_nth_unstable_by(m - 1, cmp);
        }
        cand[..m].sort_unstable_by(cmp);
        let mut acc = 0.0;
        if let Some(i) = cand[..m].iter().position(|c| {
            acc += c.1;
            acc >= goal
        }) {
            cand.truncate(i + 1);
            return;
        }
        if m == cand.len() {
            return;
        }
        m = (m * 4).min(cand.len());
    }
}

/// A sampled token's log-probability and the most likely tokens at its position (ids).
#[derive(Clone, Debug, PartialEq)]
pub struct Logprobs {
    pub logprob: f32,
    /// `(id, logprob)`, most likely first, ties broken by the lower id.
    pub top: Vec<(u32, f32)>,
}

/// The log-softmax of one position's logits, as its normaliser: `log p(i) = x(i) - max -
/// ln Σ exp(x(j) - max)`, summed in f64 so that a 150k-token vocabulary loses no precision.
/// NaN logits (a broken model) count as impossible tokens.
#[derive(Clone, Copy, Debug)]
pub struct LogSoftmax {
    max: f32,
    log_sum: f64,
}

impl LogSoftmax {
    pub fn new(logits: &[f32]) -> Self {
        let max = logits
            .iter()
            .copied()
            .filter(|l| !l.is_nan())
            .fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY || max.is_nan() {
            return LogSoftmax { max, log_sum: 0.0 };
        }
        let sum: f64 = logits
            .iter()
            .filter(|l| !l.is_nan())
            .map(|&l| f64::from(l - max).exp())
            .sum();
        LogSoftmax {
            max,
            log_sum: sum.ln(),
        }
    }

    /// The log-probability of a token whose raw logit is `logit`.
    pub fn at(&self, logit: f32) -> f32 {
        if logit.is_nan() || !self.max.is_finite() {
            return f32::NEG_INFINITY;
        }
        (f64::from(logit - self.max) - self.log_sum) as f32
    }

    /// The `n` most likely tokens, most likely first (ties: lower id first): one pass over
    /// the vocabulary keeping a sorted list of at most `n` (≤ [`MAX_TOP_LOGPROBS`]).
    pub fn top(&self, logits: &[f32], n: usize) -> Vec<(u32, f32)> {
        let n = n.min(MAX_TOP_LOGPROBS);
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
        if n == 0 {
            return best;
        }
        for (i, &l) in logits.iter().enumerate() {
            if l.is_nan() || (best.len() == n && best.last().is_some_and(|&(_, w)| l <= w)) {
                continue;
            }
            // Strictly greater than the kept ones it passes: equal logits keep id order.
            let at = best.partition_point(|&(_, w)| w >= l);
            best.insert(at, (i as u32, l));
            best.truncate(n);
        }
        best.into_iter().map(|(id, l)| (id, self.at(l))).collect()
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
pub(crate) mod tests {
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
    fn draws_follow_the_softmax_at_every_temperature() {
        let logits = [2.0f32, 1.0, 0.5, 0.0, -1.0, -4.0, 1.5, 0.2];
        for t in [1.0f32, 0.5, 2.0] {
            let p = SamplingParams {
                seed: Some(3),
                ..params(t)
            };
            let n = 40_000;
            let mut seen = [0usize; 8];
            for id in draw(&p, &logits, n) {
                seen[id as usize] += 1;
            }
            let w: Vec<f64> = logits
                .iter()
                .map(|&l| (f64::from(l) / f64::from(t)).exp())
                .collect();
            let sum: f64 = w.iter().sum();
            for (i, (&count, wi)) in seen.iter().zip(&w).enumerate() {
                let (got, want) = (count as f64 / n as f64, wi / sum);
                assert!(
                    (got - want).abs() < 0.01,
                    "t {t}, token {i}: {got} vs {want}"
                );
            }
        }
    }

    /// A nucleus wider than the first ranked run (64) is found by ranking more: top-p 0.5 of
    /// 1,000 equally likely tokens keeps exactly the 500 lowest ids (ties rank by id).
    #[test]
    fn a_wide_nucleus_keeps_exactly_its_share() {
        let logits = vec![0.0f32; 1000];
        let p = SamplingParams {
            top_p: 0.5,
            seed: Some(9),
            ..params(1.0)
        };
        let got = draw(&p, &logits, 4000);
        assert!(got.iter().all(|&t| t < 500));
        assert!(got.iter().any(|&t| t >= 450) && got.iter().any(|&t| t < 50));
        // With min-p on top, the shorter of the two runs wins.
        let mut peaked = vec![-10.0f32; 1000];
        peaked[700] = 0.0;
        peaked[3] = -0.1;
        // Top-p 0.99 needs ~560 of the tail; min-p 0.5 keeps the two near the top.
        let both = SamplingParams {
            min_p: 0.5,
            top_p: 0.99,
            ..p.clone()
        };
        let got = draw(&both, &peaked, 400);
        assert!(got.iter().all(|&t| t == 700 || t == 3) && got.contains(&3));
    }

    /// The reference: log_softmax computed directly, in f64 (also `sequence.rs`'s tests').
    pub(crate) fn log_softmax(logits: &[f32]) -> Vec<f64> {
        let max = logits
            .iter()
            .fold(f64::NEG_INFINITY, |m, &l| m.max(f64::from(l)));
        let sum: f64 = logits.iter().map(|&l| (f64::from(l) - max).exp()).sum();
        logits
            .iter()
            .map(|&l| f64::from(l) - max - sum.ln())
            .collect()
    }

    #[test]
    fn logprobs_are_the_raw_log_softmax_whatever_the_sampling() {
        let logits = [0.5, 2.0, -1.0, 2.0, 7.5, 0.0];
        let reference = log_softmax(&logits);
        for p in [
            SamplingParams {
                logprobs: Some(3),
                ..params(0.0)
            },
            SamplingParams {
                logprobs: Some(3),
                temperature: 0.3,
                top_p: 0.5,
                repetition_penalty: 3.0,
                frequency_penalty: 2.0,
                seed: Some(3),
                ..params(1.0)
            },
        ] {
            let mut s = Sampler::new(&p, &[4]);
            s.observe(4);
            let (id, lp) = s
                .sample_with_logprobs(&mut logits.to_vec(), None)
                .unwrap_or_else(|e| panic!("{e}"));
            let lp = lp.expect("asked for");
            assert!((f64::from(lp.logprob) - reference[id as usize]).abs() < 1e-6);
            let ids: Vec<u32> = lp.top.iter().map(|&(id, _)| id).collect();
            // Sorted, and the tie between 1 and 3 keeps id order.
            assert_eq!(ids, vec![4, 1, 3]);
            for (id, l) in lp.top {
                assert!((f64::from(l) - reference[id as usize]).abs() < 1e-6);
            }
        }
        let mut plain = Sampler::new(&params(0.0), &[]);
        let picked = plain.sample_with_logprobs(&mut logits.to_vec(), None);
        assert_eq!(picked.unwrap_or_else(|e| panic!("{e}")), (4, None));
    }

    #[test]
    fn logprobs_of_degenerate_logits() {
        let dist = LogSoftmax::new(&[f32::NEG_INFINITY, 0.0, f32::NAN]);
        assert_eq!(dist.at(0.0), 0.0);
        assert_eq!(dist.at(f32::NEG_INFINITY), f32::NEG_INFINITY);
        let nan = [f32::NAN, 1.0];
        assert_eq!(LogSoftmax::new(&nan).top(&nan, 5), vec![(1, 0.0)]);
        assert_eq!(dist.top(&[1.0; 100], 0), vec![]);
        assert_eq!(
            LogSoftmax::new(&[1.0; 64]).top(&[1.0; 64], 30).len(),
            MAX_TOP_LOGPROBS
        );
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
