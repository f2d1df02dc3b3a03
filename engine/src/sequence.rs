//! One generation's state machine: prefill (possibly in chunks), then one decode step at a
//! time, each producing the [`TokenEvent`]s the request's handle receives. The engine feeds
//! it through batched forward passes; a preempted sequence drops its cache and prefills its
//! prompt and generated tokens again.

use std::time::Instant;

use crate::constraint::Constraint;
use crate::detok::{IncrementalDecoder, StopMatcher, StopOutcome};
use crate::loader::LoadedModel;
use crate::models::KvCache;
use crate::sampling::{Logprobs, Sampler};
use crate::spec::Speculative;
use crate::tokenizer::TextTokenizer;
use crate::{
    EngineError, FinishReason, GenerationTimings, SamplingParams, TokenEvent, TokenLogprob,
    TopLogprob, Usage,
};

/// A sequence being generated.
pub struct Sequence {
    prompt: Vec<u32>,
    generated: Vec<u32>,
    cache: KvCache,
    sampler: Sampler,
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    max_new: usize,
    ignore_eos: bool,
    submitted: Instant,
    prefill_s: f64,
    first_token_at: Option<Instant>,
    finished: bool,
    /// The logits of the prompt's last position, kept when asked for (developer CLI).
    pub prompt_logits: Option<Vec<f32>>,
    keep_prompt_logits: bool,
    /// Log-probabilities waiting for their token's text to be released.
    logprobs: PendingLogprobs,
    /// The grammar the output follows, if the request gave one.
    constraint: Option<Constraint>,
    /// Prompt tokens a cached prefix held when the sequence started (usage's
    /// `cached_tokens`).
    cached_prompt: usize,
}

/// Log-probabilities travel with the text of their token: each entry is handed out with
/// the event whose text completes it. An entry's end is the byte offset (in the
/// decoder's output) where its token's text ends, known once the decoder emits text for
/// it (a token holding part of a character waits for the rest); it is released once the
/// stop matcher has let that many bytes through. Entries whose text never is (a matched
/// stop string) are dropped with the sequence.
#[derive(Default)]
struct PendingLogprobs {
    /// Decoded, awaiting release: (entry, end offset).
    waiting: std::collections::VecDeque<(TokenLogprob, usize)>,
    /// Sampled, but the decoder has not yet emitted their text.
    undecoded: Vec<TokenLogprob>,
    /// Bytes the decoder has emitted.
    decoded: usize,
    /// Bytes the stop matcher has released.
    released: usize,
}

impl PendingLogprobs {
    /// The decoder emitted `piece`: the undecoded entries end where it ends.
    fn decoded(&mut self, piece: &str) {
        if piece.is_empty() {
            return;
        }
        self.decoded += piece.len();
        self.settle();
    }

    /// The undecoded entries end where the text emitted so far does: after each piece, and
    /// when generation ends, where a token whose bytes never became text (part of a
    /// character cut off by the end) keeps its entry too.
    fn settle(&mut self) {
        let end = self.decoded;
        self.waiting
            .extend(self.undecoded.drain(..).map(|entry| (entry, end)));
    }

    /// The stop matcher released `text`: the entries it completes.
    fn released(&mut self, text: &str) -> Vec<TokenLogprob> {
        self.released += text.len();
        let mut out = Vec::new();
        while let Some((_, end)) = self.waiting.front()
            && *end <= self.released
        {
            if let Some((entry, _)) = self.waiting.pop_front() {
                out.push(entry);
            }
        }
        out
    }
}

impl Sequence {
    /// `prompt` must be non-empty and shorter than the context (checked at submission);
    /// `stop` is built from `params.stop` at submission, where a failure can be reported.
    pub fn new(
        model: &LoadedModel,
        prompt: Vec<u32>,
        params: &SamplingParams,
        stop: StopMatcher,
        submitted: Instant,
    ) -> Sequence {
        let room = model.context_length.saturating_sub(prompt.len());
        let max_new = params.max_tokens.map_or(room, |m| m.min(room));
        Sequence {
            sampler: Sampler::new(params, &prompt),
            decoder: IncrementalDecoder::new(&prompt),
            stop,
            cache: model.model.new_cache(),
            prompt,
            generated: Vec::new(),
            max_new,
            ignore_eos: params.ignore_eos,
            submitted,
            prefill_s: 0.0,
            first_token_at: None,
            finished: false,
            prompt_logits: None,
            keep_prompt_logits: false,
            logprobs: PendingLogprobs::default(),
            constraint: None,
            cached_prompt: 0,
        }
    }

    /// Decodes under `constraint` from the first token on.
    pub fn constrain(&mut self, constraint: Constraint) {
        self.constraint = Some(constraint);
    }

    /// Caps the completion so that prompt and completion fit in `positions` cache positions
    /// (the KV-cache budget, for a request without `max_tokens`).
    pub fn cap_positions(&mut self, positions: usize) {
        self.max_new = self
            .max_new
            .min(positions.saturating_sub(self.prompt.len()));
    }

    pub fn keep_prompt_logits(&mut self) {
        self.keep_prompt_logits = true;
    }

    /// Marks the sequence done after a failure.
    pub fn abort(&mut self) {
        self.finished = true;
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    pub fn prompt(&self) -> &[u32] {
        &self.prompt
    }

    pub fn generated(&self) -> &[u32] {
        &self.generated
    }

    /// Positions held in the KV cache.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Tokens known but not yet in the cache: the prompt (or what remains of it) before the
    /// first token, then the last sampled token. After a preemption, everything again.
    pub fn pending(&self) -> usize {
        (self.prompt.len() + self.generated.len()).saturating_sub(self.cache.len())
    }

    /// Whether the sequence must end without a forward pass (`max_tokens` 0).
    pub fn wants_nothing(&self) -> bool {
        !self.finished && self.max_new == 0
    }

    /// Ends a sequence that [`Self::wants_nothing`].
    pub fn finish_empty(&mut self, m: &LoadedModel) -> Result<TokenEvent, EngineError> {
        self.finish(m, FinishReason::Length, String::new())
    }

    /// The next at most `max` pending tokens, and whether they end the known tokens (so their
    /// last position's logits give the next token).
    pub fn next_input(&self, max: usize) -> (Vec<u32>, bool) {
        let start = self.cache.len();
        let pending = self.pending();
        let n = pending.min(max.max(1));
        let known = self.prompt.iter().chain(self.generated.iter());
        (known.skip(start).take(n).copied().collect(), n == pending)
    }

    pub fn cache_mut(&mut self) -> &mut KvCache {
        &mut self.cache
    }

    /// Starts from `parent`'s prefill of the same prompt: a copy of its KV cache, and its
    /// prefill time. Called before `parent` samples its first token, so that this sequence
    /// then samples from the same last-position logits as if it had prefilled itself.
    pub fn fork_from(&mut self, parent: &Sequence) {
        debug_assert_eq!(self.prompt, parent.prompt);
        debug_assert!(parent.generated.is_empty() && self.generated.is_empty());
        self.cache = parent.cache.fork();
        self.prefill_s = parent.prefill_s;
        self.cached_prompt = parent.cached_prompt;
    }

    /// The tokens this sequence knows so far: its prompt, then what it generated.
    pub fn known_tokens(&self) -> impl Iterator<Item = u32> + '_ {
        self.prompt.iter().chain(self.generated.iter()).copied()
    }

    /// Starts from a cached prefix of [`Self::known_tokens`] (`cache` holds its positions,
    /// computed by an earlier sequence from the same tokens): only the rest is prefilled.
    /// Only for a sequence with nothing cached yet.
    pub fn resume_from(&mut self, cache: KvCache) {
        debug_assert_eq!(self.cache.len(), 0);
        debug_assert!(cache.len() < self.prompt.len() + self.generated.len());
        if self.generated.is_empty() {
            self.cached_prompt = cache.len();
        }
        self.cache = cache;
    }

    /// Hands over the KV cache and the tokens whose positions it holds (the sequence is
    /// done with it: it is left empty, as after [`Self::preempt`]).
    pub fn take_cache(&mut self) -> (Vec<u32>, KvCache) {
        let tokens = self.known_tokens().take(self.cache.len()).collect();
        let mut empty = self.cache.fork();
        empty.clear();
        (tokens, std::mem::replace(&mut self.cache, empty))
    }

    /// Frees the KV cache (recompute preemption): the prompt and the tokens generated so far
    /// are prefilled again when the sequence resumes; the sampler's state is kept, so the
    /// continuation is the one it would have been.
    pub fn preempt(&mut self) {
        self.cache.clear();
    }

    /// Runs one forward pass over every pending token and returns the events it produces
    /// (the one-shot path; the engine batches through [`Self::next_input`] and
    /// [`Self::after_forward`]).
    pub fn step(&mut self, m: &LoadedModel) -> Result<Vec<TokenEvent>, EngineError> {
        if self.finished {
            return Ok(Vec::new());
        }
        if self.wants_nothing() {
            return Ok(vec![self.finish_empty(m)?]);
        }
        let (tokens, _) = self.next_input(usize::MAX);
        let t = Instant::now();
        let logits = m.model.forward(&tokens, &mut self.cache)?;
        self.after_forward(m, Some(logits), t.elapsed().as_secs_f64())
    }

    /// Takes the result of a forward pass over [`Self::next_input`]'s tokens that took
    /// `elapsed_s`: with logits, samples the next token and returns its events.
    pub fn after_forward(
        &mut self,
        m: &LoadedModel,
        logits: Option<Vec<f32>>,
        elapsed_s: f64,
    ) -> Result<Vec<TokenEvent>, EngineError> {
        if self.first_token_at.is_none() {
            self.prefill_s += elapsed_s;
        }
        let Some(mut logits) = logits else {
            return Ok(Vec::new());
        };
        if self.finished {
            return Ok(Vec::new());
        }
        if self.keep_prompt_logits && self.generated.is_empty() {
            self.prompt_logits = Some(logits.clone());
        }
        let (id, logprobs) = self
            .sampler
            .sample_with_logprobs(&mut logits, self.constraint.as_mut())?;
        let eos = m.tokenizer.eos_ids().contains(&id);
        if let Some(c) = &mut self.constraint
            && !eos
        {
            c.accept(id)?;
        }
        self.sampler.observe(id);
        self.generated.push(id);
        if self.first_token_at.is_none() {
            self.first_token_at = Some(Instant::now());
        }
        let mut events = Vec::new();
        if !self.ignore_eos && eos {
            // The end-of-sequence token has no text, so no log-probabilities either.
            events.push(self.finish(m, FinishReason::Stop, String::new())?);
            return Ok(events);
        }
        if let Some(logprobs) = logprobs {
            let entry = token_logprob(&m.tokenizer, id, logprobs)?;
            self.logprobs.undecoded.push(entry);
        }
        let piece = self.decoder.push(id, &*m.tokenizer)?;
        self.logprobs.decoded(&piece);
        match self.stop.push(&piece) {
            StopOutcome::Stop(text) => {
                let logprobs = self.logprobs.released(&text);
                events.push(TokenEvent::Token { id, text, logprobs });
                self.finished = true;
                events.push(self.finished_event(FinishReason::Stop, String::new(), Vec::new()));
            }
            StopOutcome::Continue(text) => {
                let logprobs = self.logprobs.released(&text);
                events.push(TokenEvent::Token { id, text, logprobs });
                if self.generated.len() >= self.max_new {
                    events.push(self.finish(m, FinishReason::Length, String::new())?);
                }
            }
        }
        Ok(events)
    }

    /// Tokens to verify after the pending one in a speculative step ([`Speculative`]): what
    /// followed the latest earlier occurrence of the longest n-gram ending the known tokens.
    /// Empty unless the sequence decodes greedily with only its last token pending, and
    /// never more than the completion has room for after the token the step samples anyway.
    pub fn draft(&self, spec: &Speculative) -> Vec<u32> {
        if self.finished || self.generated.is_empty() || self.pending() != 1 {
            return Vec::new();
        }
        if !self.sampler.is_greedy() {
            return Vec::new();
        }
        let room = self.max_new.saturating_sub(self.generated.len() + 1);
        let max = spec.max_draft.min(room);
        if max == 0 {
            return Vec::new();
        }
        let known: Vec<u32> = self.known_tokens().collect();
        lookup(&known, spec.min_ngram, spec.max_ngram, max).to_vec()
    }

    /// Takes a speculative step's logits (one vocab-sized row per token of `[pending token,
    /// draft…]`, [`crate::models::Want::AllLogits`]): samples from each row in turn exactly
    /// as plain decode steps would, going on while the sampled token is the drafted one.
    /// The cache keeps the positions of the accepted tokens only. Returns the events and how
    /// many drafted tokens were accepted.
    pub fn after_verify(
        &mut self,
        m: &LoadedModel,
        logits: Option<Vec<f32>>,
        draft: &[u32],
        elapsed_s: f64,
    ) -> Result<(Vec<TokenEvent>, usize), EngineError> {
        let Some(logits) = logits else {
            return Ok((self.after_forward(m, None, elapsed_s)?, 0));
        };
        let before = self.generated.len();
        let vocab = logits.len() / (draft.len() + 1);
        let mut events = Vec::new();
        for (i, row) in logits.chunks_exact(vocab.max(1)).enumerate() {
            events.extend(self.after_forward(m, Some(row.to_vec()), elapsed_s)?);
            if self.finished || draft.get(i) != self.generated.last() {
                break;
            }
        }
        let accepted = self.generated[before..]
            .iter()
            .zip(draft)
            .take_while(|(g, d)| g == d)
            .count();
        // The last sampled token is pending; every one before it is a drafted token that
        // the pass computed in place. The positions of rejected drafts go.
        let known = self.prompt.len() + self.generated.len();
        self.cache.truncate(known.saturating_sub(1));
        Ok((events, accepted))
    }

    /// Ends the sequence, flushing held-back text (an incomplete character, a partial stop
    /// string that never completed).
    fn finish(
        &mut self,
        m: &LoadedModel,
        reason: FinishReason,
        mut text: String,
    ) -> Result<TokenEvent, EngineError> {
        let tail = self.decoder.flush(&*m.tokenizer)?;
        self.logprobs.decoded(&tail);
        self.logprobs.settle();
        match self.stop.push(&tail) {
            StopOutcome::Stop(t) => {
                text.push_str(&t);
                self.finished = true;
                let logprobs = self.logprobs.released(&text);
                return Ok(self.finished_event(FinishReason::Stop, text, logprobs));
            }
            StopOutcome::Continue(t) => text.push_str(&t),
        }
        text.push_str(&self.stop.flush());
        self.finished = true;
        let logprobs = self.logprobs.released(&text);
        Ok(self.finished_event(reason, text, logprobs))
    }

    fn finished_event(
        &self,
        reason: FinishReason,
        text: String,
        logprobs: Vec<TokenLogprob>,
    ) -> TokenEvent {
        let now = Instant::now();
        let first = self.first_token_at.unwrap_or(now);
        let decode_s = now.duration_since(first).as_secs_f64();
        let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        TokenEvent::Finished {
            reason,
            usage: Usage {
                prompt_tokens: self.prompt.len(),
                completion_tokens: self.generated.len(),
                cached_tokens: self.cached_prompt,
            },
            timings: GenerationTimings {
                time_to_first_token_ms: first.duration_since(self.submitted).as_secs_f64() * 1e3,
                prefill_tokens_per_s: rate(self.prompt.len(), self.prefill_s),
                decode_tokens_per_s: rate(self.generated.len().saturating_sub(1), decode_s),
            },
            text,
            logprobs,
        }
    }
}

/// Prompt lookup: for `n` from `max_ngram` down to `min_ngram`, the tokens (at most `max`)
/// that followed the latest earlier occurrence of the last `n` tokens of `known`.
fn lookup(known: &[u32], min_ngram: usize, max_ngram: usize, max: usize) -> &[u32] {
    let len = known.len();
    for n in (min_ngram.max(1)..=max_ngram).rev() {
        if n >= len {
            continue;
        }
        let tail = &known[len - n..];
        // Latest start first; the occurrence must be followed by at least one token.
        if let Some(start) = (0..len - n).rev().find(|&j| &known[j..j + n] == tail) {
            let from = start + n;
            return &known[from..(from + max).min(len)];
        }
    }
    &[]
}

/// A sampled token's log-probabilities with the tokens' texts (each decoded on its own,
/// special tokens kept: only when asked for, at most 21 short decodes per token).
fn token_logprob(
    tokenizer: &TextTokenizer,
    id: u32,
    logprobs: Logprobs,
) -> Result<TokenLogprob, EngineError> {
    let text = |id: u32, logprob: f32| -> Result<TopLogprob, EngineError> {
        Ok(TopLogprob {
            id,
            token: tokenizer.decode_with(&[id], false)?,
            logprob,
        })
    };
    Ok(TokenLogprob {
        chosen: text(id, logprobs.logprob)?,
        top: logprobs
            .top
            .into_iter()
            .map(|(id, l)| text(id, l))
            .collect::<Result<_, _>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sampled token keeps its log-probability entry: one whose bytes complete a
    /// character with the next token waits for it; one whose bytes never become text (the
    /// last token, cut inside a character) is released when the sequence ends.
    #[test]
    fn every_token_keeps_its_logprob_entry() {
        let entry = |id: u32| TokenLogprob {
            chosen: TopLogprob {
                id,
                token: "\u{fffd}".into(),
                logprob: -1.0,
            },
            top: Vec::new(),
        };
        let mut p = PendingLogprobs::default();
        p.undecoded.push(entry(1));
        p.decoded("");
        assert!(p.released("").is_empty(), "half a character: nothing yet");
        p.undecoded.push(entry(2));
        p.decoded("é");
        let ids = |v: Vec<TokenLogprob>| v.iter().map(|e| e.chosen.id).collect::<Vec<_>>();
        assert_eq!(ids(p.released("é")), [1, 2]);
        p.undecoded.push(entry(3));
        p.decoded("");
        p.settle();
        assert_eq!(ids(p.released("")), [3]);
    }

    /// The pass that verifies a draft computes, for each of its positions, bitwise the
    /// logits a one-token decode step there computes (and the same cache): what makes
    /// speculative output identical to plain greedy output. On the default model, Gemma 2
    /// (sliding window, soft-capping, bf16) and a `Q4_K_M` GGUF.
    #[test]
    fn verify_logits_are_bitwise_those_of_decode_steps() {
        verify_rows_against_decode_steps(DeviceChoice::Cpu, 0.0);
    }

    /// On a GPU the verifying rows attend in the step's padded product (decode rows), which
    /// may sum in another order than a step of their own: the same logits within a few
    /// ulps, forks and truncation of the GPU's page tables included. Runs in a child process
    /// where a wgpu adapter exists (a driver that crashes on a shader takes the child, not
    /// the test binary); `AIRLOCK_REQUIRE_GPU_TEST` makes a missing or crashing adapter fail.
    #[test]
    fn verify_logits_match_decode_steps_on_the_gpu() {
        const CHILD: &str = "AIRLOCK_GPU_VERIFY_CHILD";
        if std::env::var_os(CHILD).is_some() {
            return verify_rows_against_decode_steps(DeviceChoice::Gpu, 1e-4);
        }
        let required = std::env::var("AIRLOCK_REQUIRE_GPU_TEST").is_ok_and(|v| v != "0");
        if !crate::gpu_available() {
            assert!(
                !required,
                "AIRLOCK_REQUIRE_GPU_TEST is set but there is no wgpu adapter"
            );
            return;
        }
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "sequence::tests::verify_logits_match_decode_steps_on_the_gpu",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() || (out.status.code().is_none() && !required),
            "{report}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success() || report.contains("1 passed"),
            "{report}"
        );
    }

    /// [`Want::AllLogits`] rows against one-token decode steps on `device`: equal within
    /// `tolerance` (0: bitwise), and so are the caches they leave, forked and truncated.
    fn verify_rows_against_decode_steps(device: DeviceChoice, tolerance: f32) {
        use crate::models::{BatchItem, Want};
        let same = |a: &[f32], b: &[f32]| {
            a.len() == b.len()
                && a.iter().zip(b).all(|(x, y)| match tolerance {
                    0.0 => x.to_bits() == y.to_bits(),
                    t => (x - y).abs() <= t * (1.0 + y.abs()),
                })
        };
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let paths = crate::models::tests::layout_variants(dir.path());
        for path in paths {
            let m = load_dir(&path, device, Integrity::Unverified, None, None)
                .unwrap_or_else(|e| panic!("{e}"));
            let model = &m.model;
            let prompt: Vec<u32> = (0..37).map(|i| 40 + (i * 7) % 50).collect();
            let next = [41, 42, 43, 44, 45];
            let mut plain = model.new_cache();
            model
                .forward(&prompt, &mut plain)
                .unwrap_or_else(|e| panic!("{e}"));
            let mut spec = plain.fork();
            let steps: Vec<Vec<f32>> = next
                .iter()
                .map(|t| {
                    model
                        .forward(&[*t], &mut plain)
                        .unwrap_or_else(|e| panic!("{e}"))
                })
                .collect();
            let mut items = [BatchItem {
                tokens: &next,
                cache: &mut spec,
                want: Want::AllLogits,
            }];
            let all = model
                .forward_batch(&mut items)
                .unwrap_or_else(|e| panic!("{e}"))
                .pop()
                .flatten()
                .unwrap_or_else(|| panic!("no logits"));
            assert_eq!(all.len(), steps.len() * steps[0].len());
            for (i, (row, step)) in all.chunks_exact(steps[0].len()).zip(&steps).enumerate() {
                assert!(same(row, step), "{}: position {i} differs", path.display());
            }
            // The caches hold the same positions: the next step agrees too.
            let a = model
                .forward(&[46], &mut plain)
                .unwrap_or_else(|e| panic!("{e}"));
            let b = model
                .forward(&[46], &mut spec)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(same(&a, &b), "{}", path.display());
            // Rolled back over rejected drafts, the cache continues as if they never ran.
            spec.truncate(prompt.len() + 2);
            let mut back = model.new_cache();
            model
                .forward(&prompt, &mut back)
                .unwrap_or_else(|e| panic!("{e}"));
            model
                .forward(&next[..1], &mut back)
                .unwrap_or_else(|e| panic!("{e}"));
            model
                .forward(&next[1..2], &mut back)
                .unwrap_or_else(|e| panic!("{e}"));
            let a = model
                .forward(&[47], &mut back)
                .unwrap_or_else(|e| panic!("{e}"));
            let b = model
                .forward(&[47], &mut spec)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(same(&a, &b), "{}", path.display());
        }
    }

    #[test]
    fn lookup_drafts_what_followed_the_longest_latest_ngram() {
        // "1 2 3 4 | 9 2 3 5 6 | 2 3": the 2-gram "2 3" last occurred before "5 6".
        let known = [1, 2, 3, 4, 9, 2, 3, 5, 6, 2, 3];
        assert_eq!(lookup(&known, 1, 3, 4), &[5, 6, 2, 3]);
        assert_eq!(lookup(&known, 1, 3, 1), &[5]);
        // "9 2 3" never occurred before the end as a 3-gram ending here; 1-gram "3" did.
        assert_eq!(lookup(&known, 1, 1, 2), &[5, 6]);
        // No earlier occurrence, or n-grams longer than the text: nothing.
        assert!(lookup(&[1, 2, 3], 1, 3, 4).is_empty());
        assert!(lookup(&[7], 1, 3, 4).is_empty());
        assert!(lookup(&known, 3, 3, 4).is_empty());
        // Drafts stop at the end of the known tokens.
        assert_eq!(lookup(&[5, 5], 1, 2, 4), &[5]);
    }
    use crate::DeviceChoice;
    use crate::loader::{Integrity, load_dir};
    use crate::sampling::tests::log_softmax;

    /// On the embedded default model: the logprobs a step reports are the log-softmax of
    /// the raw logits of that same forward pass (kept by `keep_prompt_logits`), whatever
    /// the sampling settings do to the distribution the token is drawn from; the top list
    /// is the most likely tokens, sorted.
    #[test]
    fn logprobs_are_the_log_softmax_of_the_forward_pass() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = crate::default_model::install(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let m = load_dir(&path, DeviceChoice::Cpu, Integrity::Unverified, None, None)
            .unwrap_or_else(|e| panic!("{e}"));
        let prompt = m
            .tokenizer
            .encode_text("The quick brown fox")
            .unwrap_or_else(|e| panic!("{e}"));
        let params = SamplingParams {
            temperature: 0.7,
            top_k: Some(3),
            repetition_penalty: 1.3,
            seed: Some(11),
            max_tokens: Some(1),
            ignore_eos: true,
            logprobs: Some(crate::MAX_TOP_LOGPROBS),
            ..Default::default()
        };
        let stop = StopMatcher::new(&[]).unwrap_or_else(|e| panic!("{e}"));
        let mut seq = Sequence::new(&m, prompt, &params, stop, Instant::now());
        seq.keep_prompt_logits();
        let events = seq.step(&m).unwrap_or_else(|e| panic!("{e}"));
        let logits = seq.prompt_logits.take().expect("kept");
        let reference = log_softmax(&logits);
        let entries: Vec<TokenLogprob> = events
            .into_iter()
            .flat_map(|e| match e {
                TokenEvent::Token { logprobs, .. } | TokenEvent::Finished { logprobs, .. } => {
                    logprobs
                }
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(entries.len(), 1, "one token generated, one entry");
        let entry = &entries[0];
        let chosen = entry.chosen.id;
        assert_eq!(chosen, seq.generated()[0]);
        assert!((f64::from(entry.chosen.logprob) - reference[chosen as usize]).abs() < 1e-5);
        assert_eq!(
            entry.chosen.token,
            m.tokenizer
                .decode_with(&[chosen], false)
                .unwrap_or_else(|e| panic!("{e}"))
        );
        // The top list: the reference's best 20, in order (ties by id), same values.
        let mut order: Vec<usize> = (0..reference.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        let ids: Vec<u32> = entry.top.iter().map(|t| t.id).collect();
        let want: Vec<u32> = order[..crate::MAX_TOP_LOGPROBS]
            .iter()
            .map(|&i| i as u32)
            .collect();
        assert_eq!(ids, want);
        for t in &entry.top {
            assert!((f64::from(t.logprob) - reference[t.id as usize]).abs() < 1e-5);
        }
        assert!(entry.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        // Probabilities: the whole distribution sums to one.
        let total: f64 = reference.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-9);
    }
}
