//! [`BurnEngine`]: per model, one inference thread fed by a bounded queue (continuous
//! batching). The thread moves submitted requests into per-tenant queues, admits up to
//! `max_active` sequences (fairest tenant first, see [`crate::scheduler`]) while the KV-cache
//! budget has blocks for them, and runs ONE batched forward pass per step over every running
//! sequence: one token for each decoding sequence plus prefill chunks of at most
//! `prefill_chunk` tokens within a `max_batch_tokens` budget, so a long prompt never stalls
//! anyone's decoding. Sequences join and leave between steps; a sequence whose client reads
//! slowly is skipped until its event buffer drains, and a cancelled one is dropped (freeing
//! its KV blocks) before its next step. When a running sequence needs a block and none is
//! free, a newer sequence is preempted: its cache is freed and it is requeued to be
//! recomputed from its prompt and generated tokens (nothing already sent is sent again).
//! A request for `n` samples ([`Engine::submit_n`]) prefills its prompt once, then forks
//! the cache into `n` sequences (module `fork`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::embed::{EmbedJob, EmbedQueue, pooling_from_dir};
use crate::kv::{BLOCK_POSITIONS, BlockPool};
use crate::loader::{Integrity, load_dir};
use crate::sampling::validate;
use crate::scheduler::TenantQueues;
use crate::tokenizer::TextTokenizer;
use crate::{
    EmbedRequest, Engine, EngineError, EngineStatus, GenerateRequest, Generation, GenerationSender,
    ModelInfo, ModelSpec, PendingEmbeddings, Pooling, Prepared, Prompt,
};

mod fork;
mod prefix;
mod worker;

use worker::{Limits, Slot, Worker};

/// Events buffered per request before the engine pauses that sequence.
const EVENT_BUFFER: usize = 64;

/// What a model's queue carries.
enum Work {
    /// Boxed: a generation job carries its compiled stop matcher and grammar.
    Generate(Box<Job>),
    Embed(EmbedJob),
}

struct Job {
    request_id: String,
    tenant: String,
    weight: u32,
    prompt: Vec<u32>,
    /// One per sample (OpenAI's `n`), in choice order: the first prefills the prompt, the
    /// others are forked from it when its prefill completes (module `fork`).
    samples: Vec<Sample>,
    submitted: Instant,
}

/// What one sample of a job has of its own: its seed (in `params`), stop and grammar state,
/// and event stream.
struct Sample {
    params: crate::SamplingParams,
    stop: crate::detok::StopMatcher,
    constraint: Option<crate::constraint::Constraint>,
    sender: GenerationSender,
}

#[derive(Default)]
struct Counters {
    queued: AtomicUsize,
    active: AtomicUsize,
    kv_cache_bytes: AtomicUsize,
    prefill_tokens: AtomicU64,
    prefix_cache_bytes: AtomicUsize,
    prefix_cache_tokens: AtomicU64,
    spec_drafted_tokens: AtomicU64,
    spec_accepted_tokens: AtomicU64,
}

struct ModelHandle {
    info: ModelInfo,
    /// Token ids at or above this are refused at submission.
    vocab_size: usize,
    tokenizer: Arc<TextTokenizer>,
    /// Grammar support, its parser factory built on the first constrained request.
    grammars: crate::constraint::Grammars,
    /// Cache positions the KV budget holds: a request needing more is refused at submission.
    kv_positions: usize,
    kv_budget_bytes: usize,
    queue: Option<SyncSender<Work>>,
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

    /// Checks and queues `n` samples of one prompt as one job: its prompt is prefilled once
    /// and forked (module `fork`); `n` counts against the queue and the KV budget.
    fn submit_samples(
        &self,
        request: GenerateRequest,
        prepared: Prepared,
        n: usize,
    ) -> Result<Vec<Generation>, EngineError> {
        let m = self.model(&request.model)?;
        if !m.info.features.completions {
            return Err(crate::api::embeddings_only(&request.model));
        }
        validate(&request.params)?;
        let mut samples = Vec::with_capacity(n);
        let mut generations = Vec::with_capacity(n);
        for i in 0..n {
            let mut params = request.params.clone();
            params.seed = request.params.seed.map(|s| s.wrapping_add(i as u64));
            let stop = crate::detok::StopMatcher::new(&params.stop)?;
            // Compiled here, on the caller's thread, one matcher per sample: a schema the
            // compiler refuses is the client's 400, and the engine thread only advances a
            // compiled matcher.
            let constraint = params
                .grammar
                .as_ref()
                .map(|g| m.grammars.compile(&m.tokenizer, g))
                .transpose()?;
            let (sender, generation) = Generation::channel(EVENT_BUFFER);
            samples.push(Sample {
                params,
                stop,
                constraint,
                sender,
            });
            generations.push(generation);
        }
        let prompt = match prepared.into_ids() {
            Some(ids) => ids,
            None => m.tokenizer.encode_prompt(&request.prompt)?,
        };
        check_vocab(m, &prompt)?;
        let context = m.info.context_length;
        let wanted = request.params.max_tokens.unwrap_or(1);
        if prompt.len() + wanted > context {
            return Err(EngineError::ContextLength {
                context_length: context,
                prompt_tokens: prompt.len(),
                max_tokens: wanted,
            });
        }
        // Without `max_tokens` the completion is capped to what the budget holds instead.
        // Each sample holds its own blocks: all `n` must fit at once, block-rounded, or
        // the first could wait forever for blocks its siblings hold (for one sample this is
        // exactly prompt + max_tokens ≤ the budget's positions).
        let per_sample = BlockPool::blocks_for(prompt.len() + wanted) * BLOCK_POSITIONS;
        if n.saturating_mul(per_sample) > m.kv_positions {
            return Err(EngineError::KvBudget {
                budget_tokens: m.kv_positions,
                budget_bytes: m.kv_budget_bytes,
                prompt_tokens: n * prompt.len(),
                max_tokens: n * wanted,
            });
        }
        let job = Job {
            request_id: request.request_id,
            tenant: request.tenant,
            weight: request.tenant_weight.max(1),
            prompt,
            samples,
            submitted: Instant::now(),
        };
        m.enqueue(Work::Generate(Box::new(job)), n)?;
        Ok(generations)
    }
}

fn start_model(spec: &ModelSpec) -> Result<ModelHandle, EngineError> {
    let (queue_tx, queue_rx) = std::sync::mpsc::sync_channel::<Work>(spec.max_queue.max(1));
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
                if spec2.verify_manifest {
                    Integrity::Manifest {
                        pin: spec2.manifest_sha256.as_deref(),
                    }
                } else {
                    Integrity::Unverified
                },
                spec2.max_context,
                spec2.quantize,
            ) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let mut model = loaded;
            model.model.set_kv_cache_dtype(spec2.kv_cache_dtype);
            let pooling = match resolve_pooling(&spec2, &model.model.config) {
                Ok(p) => p,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let encoder = model.model.config.encoder;
            let info = ModelInfo {
                id: spec2.name.clone(),
                created: unix_now(),
                context_length: model.context_length,
                device: model.device.clone(),
                // An encoder serves embeddings only: no generation feature is on.
                features: crate::ModelFeatures {
                    completions: !encoder,
                    chat: !encoder && model.tokenizer.has_chat_template(),
                    tokenizer: true,
                    logprobs: !encoder,
                    tools: model.tokenizer.tool_format().filter(|_| !encoder),
                    // Decided for certain on the first constrained request (the token trie);
                    // a model without an end-of-sequence token could never end its output.
                    grammar: !encoder && !model.tokenizer.eos_ids().is_empty(),
                    embeddings: pooling,
                },
                embedding_size: pooling.map(|_| model.model.hidden_size()),
            };
            let vocab = model.model.config.vocab_size;
            let per_position = model.model.kv_bytes_per_token();
            let max_active = spec2.max_active.max(1);
            // Default: every slot can hold a full context, so nothing is ever preempted.
            let budget = spec2
                .kv_cache_bytes
                .unwrap_or(max_active * model.context_length * per_position);
            let pool = BlockPool::new(budget, per_position);
            model.model.limit_kv_pages(pool.blocks());
            // Verification is exact where every row of a pass is computed the same whatever
            // the row count: the CPU kernels (`kernels.rs`), not wgpu's matmul.
            let speculative = spec2.speculative.filter(|_| {
                let cpu = model.device.starts_with("cpu");
                if !cpu {
                    tracing::warn!(model = %spec2.name, device = %model.device,
                        "speculative decoding is off: it runs on the CPU device only");
                }
                cpu && !encoder
            });
            let sizes = (pool.capacity_positions(), budget);
            if ready_tx
                .send(Ok((info, vocab, Arc::clone(&model.tokenizer), sizes)))
                .is_err()
            {
                return;
            }
            let mut worker = Worker {
                model,
                queue: queue_rx,
                counters: c2,
                shutdown: s2,
                limits: Limits {
                    max_active,
                    prefill_chunk: spec2.prefill_chunk.max(1),
                    max_batch_tokens: spec2.max_batch_tokens.max(1),
                    speculative,
                },
                pool,
                tenants: TenantQueues::default(),
                embeds: EmbedQueue::new(pooling.unwrap_or(Pooling::Last)),
                active: Vec::new(),
                admissions: 0,
                prefixes: worker::PrefixCache::new(spec2.prefix_cache),
            };
            worker.run();
        })
        .map_err(|e| EngineError::Load {
            path: spec.path.clone(),
            reason: format!("cannot start the inference thread: {e}"),
        })?;
    let (info, vocab_size, tokenizer, (kv_positions, kv_budget_bytes)) = match ready_rx.recv() {
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
        grammars: crate::constraint::Grammars::new(vocab_size),
        tokenizer,
        kv_positions,
        kv_budget_bytes,
        queue: Some(queue_tx),
        max_queue: spec.max_queue,
        counters,
        shutdown,
        thread: Some(thread),
    })
}

/// The pooling a model serves embeddings with (`None`: it serves none): the directory's
/// `1_Pooling/config.json`, else the GGUF file's `pooling_type`, else the spec's `pooling`,
/// else `last` (`mean` for an encoder); on when any is present unless `embeddings = false`,
/// or when `embeddings = true`. An encoder always serves embeddings (it serves nothing
/// else).
fn resolve_pooling(
    spec: &ModelSpec,
    config: &crate::models::config::ModelConfig,
) -> Result<Option<Pooling>, EngineError> {
    let declared = pooling_from_dir(&spec.path)?.or(config.pooling);
    if let (Some(model), Some(set)) = (declared, spec.pooling)
        && model != set
    {
        return Err(EngineError::Load {
            path: spec.path.clone(),
            reason: format!(
                "the model declares `{}` pooling (sentence-transformers Pooling module or GGUF \
                 `pooling_type`); the model's `pooling = \"{}\"` contradicts it",
                model.name(),
                set.name()
            ),
        });
    }
    let pooling = declared.or(spec.pooling);
    if config.encoder {
        if spec.embeddings == Some(false) {
            return Err(EngineError::Load {
                path: spec.path.clone(),
                reason: "an encoder model serves embeddings only; `embeddings = false` leaves \
                         it nothing to serve"
                    .into(),
            });
        }
        return Ok(Some(pooling.unwrap_or(Pooling::Mean)));
    }
    let on = spec.embeddings.unwrap_or(pooling.is_some());
    Ok(on.then(|| pooling.unwrap_or(Pooling::Last)))
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

impl ModelHandle {
    /// Hands work to the model's thread within `max_queue`: the bound covers the worker's
    /// tenant queues too, not only the channel (the worker counts a job out when it starts).
    /// `samples` is what the work counts for against `max_queue` (a request's `n`).
    fn enqueue(&self, work: Work, samples: usize) -> Result<(), EngineError> {
        let queue = self.queue.as_ref().ok_or(EngineError::Unavailable)?;
        let full = EngineError::QueueFull {
            capacity: self.max_queue,
        };
        if self
            .counters
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q + samples <= self.max_queue.max(1)).then_some(q + samples)
            })
            .is_err()
        {
            return Err(full);
        }
        queue.try_send(work).map_err(|e| {
            self.counters.queued.fetch_sub(samples, Ordering::Relaxed);
            match e {
                TrySendError::Full(_) => full,
                TrySendError::Disconnected(_) => EngineError::Unavailable,
            }
        })
    }
}

/// Refuses token ids outside the model's vocabulary (named `prompt`: the field token ids
/// arrive in, on every route that takes them).
fn check_vocab(m: &ModelHandle, ids: &[u32]) -> Result<(), EngineError> {
    match ids.iter().find(|&&t| t as usize >= m.vocab_size) {
        Some(bad) => Err(EngineError::InvalidRequest {
            param: "prompt",
            reason: format!(
                "token id {bad} is outside the vocabulary ({})",
                m.vocab_size
            ),
        }),
        None => Ok(()),
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
        self.submit_prepared(request, Prepared::counted(0))
    }

    fn prepare(&self, model: &str, prompt: &Prompt) -> Result<Prepared, EngineError> {
        Ok(Prepared::tokenized(
            self.model(model)?.tokenizer.encode_prompt(prompt)?,
        ))
    }

    fn submit_prepared(
        &self,
        request: GenerateRequest,
        prepared: Prepared,
    ) -> Result<Generation, EngineError> {
        self.submit_samples(request, prepared, 1)?
            .pop()
            .ok_or(EngineError::Unavailable)
    }

    fn submit_n(
        &self,
        request: GenerateRequest,
        prepared: Prepared,
        n: usize,
    ) -> Result<Vec<Generation>, EngineError> {
        crate::api::check_n(n)?;
        self.submit_samples(request, prepared, n)
    }

    fn embed(&self, request: EmbedRequest) -> Result<PendingEmbeddings, EngineError> {
        let m = self.model(&request.model)?;
        if m.info.features.embeddings.is_none() {
            return Err(crate::api::no_embeddings(&request.model));
        }
        // Tokenized here, on the caller's thread (the gateway sends ids it already has).
        let mut inputs = Vec::with_capacity(request.inputs.len());
        for (i, input) in request.inputs.iter().enumerate() {
            let refuse = |reason: String| EngineError::InvalidRequest {
                param: "input",
                reason: format!("input[{i}]: {reason}"),
            };
            let ids = match input {
                Prompt::Chat(..) => return Err(refuse("chat messages cannot be embedded".into())),
                Prompt::TokenIds(ids) => ids.clone(),
                text => m.tokenizer.encode_prompt(text)?,
            };
            if ids.is_empty() {
                return Err(refuse("an input has at least one token".into()));
            }
            if ids.len() > m.info.context_length {
                return Err(refuse(format!(
                    "{} tokens; this model's maximum context length is {} tokens",
                    ids.len(),
                    m.info.context_length
                )));
            }
            if ids.len() > m.kv_positions {
                return Err(EngineError::KvBudget {
                    budget_tokens: m.kv_positions,
                    budget_bytes: m.kv_budget_bytes,
                    prompt_tokens: ids.len(),
                    max_tokens: 0,
                });
            }
            check_vocab(m, &ids)?;
            inputs.push(ids);
        }
        let (sender, pending) = PendingEmbeddings::channel();
        let job = EmbedJob {
            request_id: request.request_id,
            inputs,
            sender,
        };
        m.enqueue(Work::Embed(job), 1)?;
        Ok(pending)
    }

    fn tokenize(
        &self,
        model: &str,
        text: &str,
        add_special: bool,
    ) -> Result<Vec<u32>, EngineError> {
        let tokenizer = &self.model(model)?.tokenizer;
        if add_special {
            tokenizer.encode_text(text)
        } else {
            tokenizer.encode_raw(text, false)
        }
    }

    fn token_pieces(&self, model: &str, ids: &[u32]) -> Result<Vec<String>, EngineError> {
        let m = self.model(model)?;
        check_vocab(m, ids)?;
        ids.iter()
            .map(|&id| m.tokenizer.decode_with(&[id], false))
            .collect()
    }

    fn detokenize(&self, model: &str, ids: &[u32]) -> Result<String, EngineError> {
        let m = self.model(model)?;
        check_vocab(m, ids)?;
        m.tokenizer.decode_with(ids, false)
    }

    fn status(&self) -> EngineStatus {
        let mut s = EngineStatus::default();
        for m in &self.models {
            s.queued += m.counters.queued.load(Ordering::Relaxed);
            s.active += m.counters.active.load(Ordering::Relaxed);
            s.kv_cache_bytes += m.counters.kv_cache_bytes.load(Ordering::Relaxed);
            s.prefill_tokens += m.counters.prefill_tokens.load(Ordering::Relaxed);
            s.prefix_cache_bytes += m.counters.prefix_cache_bytes.load(Ordering::Relaxed);
            s.prefix_cache_tokens += m.counters.prefix_cache_tokens.load(Ordering::Relaxed);
            s.spec_drafted_tokens += m.counters.spec_drafted_tokens.load(Ordering::Relaxed);
            s.spec_accepted_tokens += m.counters.spec_accepted_tokens.load(Ordering::Relaxed);
        }
        s
    }
}
