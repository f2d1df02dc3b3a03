//! One generation's state machine: prefill (possibly in chunks), then one decode step at a
//! time, each producing the [`TokenEvent`]s the request's handle receives. The engine feeds
//! it through batched forward passes; a preempted sequence drops its cache and prefills its
//! prompt and generated tokens again.

use std::time::Instant;

use crate::detok::{IncrementalDecoder, StopMatcher, StopOutcome};
use crate::loader::LoadedModel;
use crate::models::KvCache;
use crate::sampling::Sampler;
use crate::{EngineError, FinishReason, GenerationTimings, SamplingParams, TokenEvent, Usage};

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
        }
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
        let id = self.sampler.sample(&mut logits);
        self.sampler.observe(id);
        self.generated.push(id);
        if self.first_token_at.is_none() {
            self.first_token_at = Some(Instant::now());
        }
        let mut events = Vec::new();
        if !self.ignore_eos && m.tokenizer.eos_ids().contains(&id) {
            events.push(self.finish(m, FinishReason::Stop, String::new())?);
            return Ok(events);
        }
        let piece = self.decoder.push(id, &*m.tokenizer)?;
        match self.stop.push(&piece) {
            StopOutcome::Stop(text) => {
                events.push(TokenEvent::Token { id, text });
                self.finished = true;
                events.push(self.finished_event(FinishReason::Stop, String::new()));
            }
            StopOutcome::Continue(text) => {
                events.push(TokenEvent::Token { id, text });
                if self.generated.len() >= self.max_new {
                    events.push(self.finish(m, FinishReason::Length, String::new())?);
                }
            }
        }
        Ok(events)
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
        match self.stop.push(&tail) {
            StopOutcome::Stop(t) => {
                text.push_str(&t);
                self.finished = true;
                return Ok(self.finished_event(FinishReason::Stop, text));
            }
            StopOutcome::Continue(t) => text.push_str(&t),
        }
        text.push_str(&self.stop.flush());
        self.finished = true;
        Ok(self.finished_event(reason, text))
    }

    fn finished_event(&self, reason: FinishReason, text: String) -> TokenEvent {
        let now = Instant::now();
        let first = self.first_token_at.unwrap_or(now);
        let decode_s = now.duration_since(first).as_secs_f64();
        let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        TokenEvent::Finished {
            reason,
            usage: Usage {
                prompt_tokens: self.prompt.len(),
                completion_tokens: self.generated.len(),
            },
            timings: GenerationTimings {
                time_to_first_token_ms: first.duration_since(self.submitted).as_secs_f64() * 1e3,
                prefill_tokens_per_s: rate(self.prompt.len(), self.prefill_s),
                decode_tokens_per_s: rate(self.generated.len().saturating_sub(1), decode_s),
            },
            text,
        }
    }
}
