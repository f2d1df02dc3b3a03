//! [`BurnEngine`]: per model, one inference thread fed by a bounded queue. The thread admits
//! up to `max_active` sequences and steps each once per round (round-robin), so a long
//! generation cannot starve a short one; a sequence whose client reads slowly is skipped
//! until its event buffer drains, and a cancelled one is dropped (freeing its KV cache)
//! before its next step.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::loader::{LoadedModel, load_dir};
use crate::sampling::validate;
use crate::sequence::Sequence;
use crate::tokenizer::TextTokenizer;
use crate::{
    Engine, EngineError, EngineStatus, GenerateRequest, Generation, GenerationSender, ModelInfo,
    ModelSpec, Prompt, TokenEvent,
};

/// Events buffered per request before the engine pauses that sequence.
const EVENT_BUFFER: usize = 64;

struct Job {
    request_id: String,
    prompt: Vec<u32>,
    params: crate::SamplingParams,
    sender: GenerationSender,
    submitted: Instant,
}

#[derive(Default)]
struct Counters {
    queued: AtomicUsize,
    active: AtomicUsize,
    kv_cache_bytes: AtomicUsize,
}

struct ModelHandle {
    info: ModelInfo,
    /// Token ids at or above this are refused at submission.
    vocab_size: usize,
    tokenizer: Arc<TextTokenizer>,
    queue: Option<SyncSender<Job>>,
    max_queue: usize,
    counters: Arc<Counters>,
    shutdown: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The production engine: Hugging Face Llama-family models on burn.
pub struct BurnEngine {
    models: Vec<ModelHandle>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl BurnEngine {
    /// Loads every model in `specs` (manifest check, weights, tokenizer, device) and starts
    /// one inference thread per model. Fails on the first model that cannot be loaded.
    pub fn load(specs: &[ModelSpec]) -> Result<BurnEngine, EngineError> {
        let mut models = Vec::with_capacity(specs.len());
        for spec in specs {
            if models.iter().any(|m: &ModelHandle| m.info.id == spec.name) {
                return Err(EngineError::Load {
                    path: spec.path.clone(),
                    reason: format!("model name `{}` is used twice", spec.name),
                });
            }
            models.push(start_model(spec)?);
        }
        Ok(BurnEngine { models })
    }

    fn model(&self, name: &str) -> Result<&ModelHandle, EngineError> {
        self.models
            .iter()
            .find(|m| m.info.id == name)
            .ok_or_else(|| EngineError::UnknownModel(name.to_owned()))
    }
}

fn start_model(spec: &ModelSpec) -> Result<ModelHandle, EngineError> {
    let (queue_tx, queue_rx) = std::sync::mpsc::sync_channel::<Job>(spec.max_queue.max(1));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let counters = Arc::new(Counters::default());
    let shutdown = Arc::new(AtomicBool::new(false));
    let spec2 = spec.clone();
    let (c2, s2) = (Arc::clone(&counters), Arc::clone(&shutdown));
    // The model is built on its own thread: burn device state then never crosses threads.
    let thread = std::thread::Builder::new()
        .name(format!("airlock-infer-{}", spec.name))
        .spawn(move || {
            let loaded = match load_dir(
                &spec2.path,
                spec2.device,
                spec2.verify_manifest,
                spec2.max_context,
            ) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let model = loaded;
            let info = ModelInfo {
                id: spec2.name.clone(),
                created: unix_now(),
                context_length: model.context_length,
                device: model.device.clone(),
            };
            let vocab = model.model.config.vocab_size;
            if ready_tx
                .send(Ok((info, vocab, Arc::clone(&model.tokenizer))))
                .is_err()
            {
                return;
            }
            let mut worker = Worker {
                model,
                queue: queue_rx,
                counters: c2,
                shutdown: s2,
                max_active: spec2.max_active.max(1),
                active: Vec::new(),
            };
            worker.run();
        })
        .map_err(|e| EngineError::Load {
            path: spec.path.clone(),
            reason: format!("cannot start the inference thread: {e}"),
        })?;
    let (info, vocab_size, tokenizer) = match ready_rx.recv() {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            let _ = thread.join();
            return Err(e);
        }
        Err(_) => {
            let _ = thread.join();
            return Err(EngineError::Load {
                path: spec.path.clone(),
                reason: "the inference thread died while loading".into(),
            });
        }
    };
    Ok(ModelHandle {
        info,
        vocab_size,
        tokenizer,
        queue: Some(queue_tx),
        max_queue: spec.max_queue,
        counters,
        shutdown,
        thread: Some(thread),
    })
}

struct Active {
    seq: Sequence,
    sender: GenerationSender,
    outbox: VecDeque<TokenEvent>,
    request_id: String,
}

struct Worker {
    model: LoadedModel,
    queue: Receiver<Job>,
    counters: Arc<Counters>,
    shutdown: Arc<AtomicBool>,
    max_active: usize,
    active: Vec<Active>,
}

impl Worker {
    fn run(&mut self) {
        loop {
            if self.shutdown.load(Ordering::Acquire) {
                for a in self.active.drain(..) {
                    let _ = a
                        .sender
                        .try_send(TokenEvent::Failed(EngineError::Unavailable));
                }
                return;
            }
            if !self.admit() {
                return;
            }
            let progressed = self.round();
            self.active.retain(|a| {
                !(a.sender.is_cancelled() || a.seq.is_finished() && a.outbox.is_empty())
            });
            self.counters
                .active
                .store(self.active.len(), Ordering::Relaxed);
            let per_token = self.model.model.kv_bytes_per_token();
            let kv: usize = self
                .active
                .iter()
                .map(|a| a.seq.cached_tokens() * per_token)
                .sum();
            self.counters.kv_cache_bytes.store(kv, Ordering::Relaxed);
            if !progressed && !self.active.is_empty() {
                // Every sequence waits on a slow reader: do not spin.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// Takes queued jobs while there are free slots. Returns `false` once the engine is gone.
    fn admit(&mut self) -> bool {
        while self.active.len() < self.max_active {
            let job = if self.active.is_empty() {
                match self.queue.recv_timeout(Duration::from_millis(200)) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => return true,
                    Err(RecvTimeoutError::Disconnected) => return false,
                }
            } else {
                match self.queue.try_recv() {
                    Ok(job) => job,
                    Err(_) => return true,
                }
            };
            self.counters.queued.fetch_sub(1, Ordering::Relaxed);
            if job.sender.is_cancelled() {
                continue;
            }
            let mut outbox = VecDeque::new();
            outbox.push_back(TokenEvent::Started {
                prompt_tokens: job.prompt.len(),
            });
            let seq = Sequence::new(&self.model, job.prompt, &job.params, job.submitted);
            tracing::debug!(request_id = %job.request_id, "sequence admitted");
            self.active.push(Active {
                seq,
                sender: job.sender,
                outbox,
                request_id: job.request_id,
            });
        }
        true
    }

    /// Steps every sequence that can take a step once. Returns whether any did.
    fn round(&mut self) -> bool {
        let mut progressed = false;
        for a in &mut self.active {
            if a.sender.is_cancelled() {
                continue;
            }
            while let Some(ev) = a.outbox.pop_front() {
                match a.sender.try_send(ev) {
                    Ok(()) => progressed = true,
                    Err(Some(ev)) => {
                        a.outbox.push_front(ev);
                        break;
                    }
                    Err(None) => break,
                }
            }
            if !a.outbox.is_empty() || a.seq.is_finished() {
                continue;
            }
            let model = &self.model;
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| a.seq.step(model)))
                .unwrap_or_else(|_| {
                    Err(EngineError::Inference("the forward pass panicked".into()))
                });
            progressed = true;
            match result {
                Ok(events) => a.outbox.extend(events),
                Err(e) => {
                    tracing::warn!(request_id = %a.request_id, error = %e, "generation failed");
                    a.outbox.push_back(TokenEvent::Failed(e));
                    a.seq.abort();
                }
            }
            while let Some(ev) = a.outbox.pop_front() {
                match a.sender.try_send(ev) {
                    Ok(()) => {}
                    Err(Some(ev)) => {
                        a.outbox.push_front(ev);
                        break;
                    }
                    Err(None) => break,
                }
            }
        }
        progressed
    }
}

impl Drop for BurnEngine {
    fn drop(&mut self) {
        for m in &mut self.models {
            m.shutdown.store(true, Ordering::Release);
            m.queue.take();
        }
        for m in &mut self.models {
            if let Some(t) = m.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Engine for BurnEngine {
    fn models(&self) -> Vec<ModelInfo> {
        self.models.iter().map(|m| m.info.clone()).collect()
    }

    fn count_prompt_tokens(&self, model: &str, prompt: &Prompt) -> Result<usize, EngineError> {
        Ok(self.model(model)?.tokenizer.encode_prompt(prompt)?.len())
    }

    fn submit(&self, request: GenerateRequest) -> Result<Generation, EngineError> {
        let m = self.model(&request.model)?;
        validate(&request.params)?;
        let prompt = m.tokenizer.encode_prompt(&request.prompt)?;
        if let Some(bad) = prompt.iter().find(|&&t| t as usize >= m.vocab_size) {
            return Err(EngineError::InvalidRequest {
                param: "prompt",
                reason: format!(
                    "token id {bad} is outside the vocabulary ({})",
                    m.vocab_size
                ),
            });
        }
        let context = m.info.context_length;
        let wanted = request.params.max_tokens.unwrap_or(1);
        if prompt.len() + wanted > context {
            return Err(EngineError::ContextLength {
                context_length: context,
                prompt_tokens: prompt.len(),
                max_tokens: wanted,
            });
        }
        let queue = m.queue.as_ref().ok_or(EngineError::Unavailable)?;
        let (sender, generation) = Generation::channel(EVENT_BUFFER);
        m.counters.queued.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            request_id: request.request_id,
            prompt,
            params: request.params,
            sender,
            submitted: Instant::now(),
        };
        match queue.try_send(job) {
            Ok(()) => Ok(generation),
            Err(e) => {
                m.counters.queued.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => EngineError::QueueFull {
                        capacity: m.max_queue,
                    },
                    TrySendError::Disconnected(_) => EngineError::Unavailable,
                })
            }
        }
    }

    fn status(&self) -> EngineStatus {
        let mut s = EngineStatus::default();
        for m in &self.models {
            s.queued += m.counters.queued.load(Ordering::Relaxed);
            s.active += m.counters.active.load(Ordering::Relaxed);
            s.kv_cache_bytes += m.counters.kv_cache_bytes.load(Ordering::Relaxed);
        }
        s
    }
}
