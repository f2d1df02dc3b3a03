//! Process-wide Prometheus metrics: the registry, every metric family, and the small
//! recording functions the request path calls. Every family is listed with its labels and
//! meaning in `docs/metrics.md`; the admin listener (`crate::admin`) serves them.
//!
//! Label values are bounded so that a client cannot grow the series count: tenants are
//! configured tenants (anything else, e.g. a legacy certificate CN, is `unknown`), models
//! are the loaded models (a requested name that is not loaded is `unknown`), routes are the
//! route table's names, filter rule ids come from the configuration, and authentication
//! failures carry a fixed reason code, never the presented credential or key id.

mod exposition;
#[cfg(test)]
mod tests;

use std::collections::{HashSet, VecDeque};
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use airlock_engine::{EngineStatus, GenerationTimings, ModelInfo, Usage};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use exposition::{OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, to_text_format};

/// The label value for a tenant or model outside the configured set.
pub const UNKNOWN: &str = "unknown";

/// The window `tokens_per_second_last_minute` averages over.
const RATE_WINDOW: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    tenant: String,
    model: String,
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantModelLabels {
    tenant: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLimitLabels {
    tenant: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    method: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FilterLabels {
    rule: String,
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnparsedLabels {
    model: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    model: String,
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelInfoLabels {
    model: String,
    device: String,
    dtype: String,
    context_length: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds, 1 ms to about 65 s: request durations and time to first token.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Seconds, 0.5 ms to about 1 s: one output token, one audit commit.
fn short_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 12))
}

/// The audit log's state as the writer thread last saw it (for `/status`).
#[derive(Clone, Debug, Default)]
pub struct AuditHealth {
    /// `None` until the first commit.
    pub last_commit_ok: Option<bool>,
    pub failed_commits: u64,
    pub head_seq: u64,
    /// Hex SHA-256 of the newest committed record.
    pub head_hash: String,
}

/// Every metric family, plus what `/status` reports that is not a Prometheus series.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<RouteLabels>,
    time_to_first_token: HistogramFamily<ModelLabels>,
    time_per_output_token: HistogramFamily<ModelLabels>,
    prompt_tokens: Family<TenantModelLabels, Counter>,
    completion_tokens: Family<TenantModelLabels, Counter>,
    rate_limited: Family<RateLimitLabels, Counter>,
    auth_failures: Family<AuthLabels, Counter>,
    filter_actions: Family<FilterLabels, Counter>,
    tool_calls_unparsed: Family<UnparsedLabels, Counter>,
    audit_sink_shipped: Family<SinkLabels, Counter>,
    audit_sink_failures: Family<SinkLabels, Counter>,
    audit_sink_lag: Family<SinkLabels, Gauge>,
    upstream_failures: Family<UpstreamLabels, Counter>,
    upstream_ejections: Family<UpstreamLabels, Counter>,
    upstream_retries: Family<UpstreamLabels, Counter>,
    upstream_connections: Family<UpstreamLabels, Counter>,
    audit_commit: Histogram,
    audit_failures: Counter,
    limits_fallback: Counter,
    telemetry_exported: Counter,
    telemetry_dropped: Family<DropLabels, Counter>,
    engine_queued: Gauge,
    engine_active: Gauge,
    kv_cache_bytes: Gauge,
    spec_drafted: Counter,
    spec_accepted: Counter,
    /// The engine's speculative totals at the last scrape (drafted, accepted): the counters
    /// advance by the difference (by the whole total after an engine restart).
    spec_seen: Mutex<(u64, u64)>,
    in_flight: Gauge,
    model_info: Family<ModelInfoLabels, Gauge>,
    resident_memory: Gauge,
    start_time: Gauge,
    uptime: Gauge,
    build_info: Family<BuildLabels, Gauge>,
    /// Loaded model names: the only model label values besides `unknown`.
    models: OnceLock<HashSet<String>>,
    audit: Mutex<AuditHealth>,
    /// (second since start, completion tokens) for the last minute, oldest first.
    recent_tokens: Mutex<VecDeque<(u64, u64)>>,
    started: Instant,
    start_unix: i64,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let start_unix = crate::clock::unix_secs(SystemTime::now());
        let m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            time_to_first_token: Family::new_with_constructor(latency_histogram),
            time_per_output_token: Family::new_with_constructor(short_histogram),
            prompt_tokens: Family::default(),
            completion_tokens: Family::default(),
            rate_limited: Family::default(),
            auth_failures: Family::default(),
            filter_actions: Family::default(),
            tool_calls_unparsed: Family::default(),
            audit_sink_shipped: Family::default(),
            audit_sink_failures: Family::default(),
            audit_sink_lag: Family::default(),
            upstream_failures: Family::default(),
            upstream_ejections: Family::default(),
            upstream_retries: Family::default(),
            upstream_connections: Family::default(),
            audit_commit: short_histogram(),
            audit_failures: Counter::default(),
            limits_fallback: Counter::default(),
            telemetry_exported: Counter::default(),
            telemetry_dropped: Family::default(),
            engine_queued: Gauge::default(),
            engine_active: Gauge::default(),
            kv_cache_bytes: Gauge::default(),
            spec_drafted: Counter::default(),
            spec_accepted: Counter::default(),
            spec_seen: Mutex::new((0, 0)),
            in_flight: Gauge::default(),
            model_info: Family::default(),
            resident_memory: Gauge::default(),
            start_time: Gauge::default(),
            uptime: Gauge::default(),
            build_info: Family::default(),
            models: OnceLock::new(),
            audit: Mutex::new(AuditHealth::default()),
            recent_tokens: Mutex::new(VecDeque::new()),
            started: Instant::now(),
            start_unix,
        };
        m.start_time.set(start_unix);
        m.build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        m.register()
    }

    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        // Counter names get `_total` from the encoder.
        r.register(
            "airlock_requests",
            "HTTP requests answered, by tenant, model, route and status code",
            self.requests.clone(),
        );
        r.register(
            "airlock_request_duration_seconds",
            "Time from request head to response head, by route",
            self.request_duration.clone(),
        );
        r.register(
            "airlock_time_to_first_token_seconds",
            "Engine time from submission to the first generated token, by model",
            self.time_to_first_token.clone(),
        );
        r.register(
            "airlock_time_per_output_token_seconds",
            "Mean decode time per generated token after the first, by model",
            self.time_per_output_token.clone(),
        );
        r.register(
            "airlock_prompt_tokens",
            "Prompt tokens of finished generations, by tenant and model",
            self.prompt_tokens.clone(),
        );
        r.register(
            "airlock_completion_tokens",
            "Generated tokens of finished generations, by tenant and model",
            self.completion_tokens.clone(),
        );
        r.register(
            "airlock_limits_fallback",
            "Admissions decided by this gateway's local share of the limits because the shared \
             limits store ([cluster.limits]) was unavailable",
            self.limits_fallback.clone(),
        );
        r.register(
            "airlock_rate_limited",
            "Requests refused by a tenant rate limit, by tenant and limit kind",
            self.rate_limited.clone(),
        );
        r.register(
            "airlock_auth_failures",
            "Failed authentications, by credential method and reason code",
            self.auth_failures.clone(),
        );
        r.register(
            "airlock_filter_actions",
            "Prompt and output filter actions, by rule id and action (deny, redact)",
            self.filter_actions.clone(),
        );
        r.register(
            "airlock_tool_calls_unparsed",
            "Model outputs that began a tool call that could not be passed on (sent as \
             content), by model and reason",
            self.tool_calls_unparsed.clone(),
        );
        r.register(
            "airlock_audit_sink_records",
            "Audit records delivered to a SIEM, by sink",
            self.audit_sink_shipped.clone(),
        );
        r.register(
            "airlock_audit_sink_failures",
            "Failed deliveries to a SIEM (connect, write or read errors; each retry counts), by sink",
            self.audit_sink_failures.clone(),
        );
        r.register(
            "airlock_audit_sink_lag_records",
            "Committed audit records a sink has not delivered yet, by sink",
            self.audit_sink_lag.clone(),
        );
        r.register(
            "airlock_remote_upstream_failures",
            "Failed exchanges with a remote pool's upstream (connect, timeout, 5xx, a stream cut short, a failed probe), by model and upstream",
            self.upstream_failures.clone(),
        );
        r.register(
            "airlock_remote_upstream_ejections",
            "Times a remote pool's upstream was ejected after consecutive failures, by model and upstream",
            self.upstream_ejections.clone(),
        );
        r.register(
            "airlock_remote_upstream_retries",
            "Requests moved to another upstream before their first byte, by model and the upstream that could not take them",
            self.upstream_retries.clone(),
        );
        r.register(
            "airlock_remote_upstream_connections",
            "Connections opened to a remote pool's upstream for requests (not kept-alive ones reused, not health probes), by model and upstream",
            self.upstream_connections.clone(),
        );
        r.register(
            "airlock_telemetry_spans_exported",
            "Request spans the OTLP collector accepted ([telemetry])",
            self.telemetry_exported.clone(),
        );
        r.register(
            "airlock_telemetry_spans_dropped",
            "Request spans not exported, by reason: queue_full (the export queue was full; \
             requests never wait for it) or export_failed (the collector refused or did not answer)",
            self.telemetry_dropped.clone(),
        );
        r.register(
            "airlock_audit_commit_duration_seconds",
            "Time to write and commit one batch of audit records (one transaction, one fsync)",
            self.audit_commit.clone(),
        );
        r.register(
            "airlock_audit_commit_failures",
            "Audit commits that failed (requests are refused with 503 until one succeeds)",
            self.audit_failures.clone(),
        );
        r.register(
            "airlock_engine_queued_requests",
            "Requests waiting for an engine sequence slot (sampled at scrape)",
            self.engine_queued.clone(),
        );
        r.register(
            "airlock_engine_active_sequences",
            "Sequences the engine is decoding (sampled at scrape)",
            self.engine_active.clone(),
        );
        r.register(
            "airlock_engine_kv_cache_bytes",
            "Bytes held by KV caches (sampled at scrape)",
            self.kv_cache_bytes.clone(),
        );
        r.register(
            "airlock_engine_spec_drafted_tokens",
            "Tokens drafted by speculative decoding (prompt lookup) and verified",
            self.spec_drafted.clone(),
        );
        r.register(
            "airlock_engine_spec_accepted_tokens",
            "Drafted tokens the verification accepted (decode steps saved)",
            self.spec_accepted.clone(),
        );
        r.register(
            "airlock_requests_in_flight",
            "Inference requests being served, streams included (sampled at scrape)",
            self.in_flight.clone(),
        );
        r.register(
            "airlock_model_info",
            "Loaded models: always 1, the labels carry device, dtype and context length",
            self.model_info.clone(),
        );
        r.register(
            "airlock_process_resident_memory_bytes",
            "Resident memory of the airlockd process (VmRSS from /proc/self/status, sampled at scrape)",
            self.resident_memory.clone(),
        );
        r.register(
            "airlock_process_start_time_seconds",
            "Start time of the airlockd process, Unix seconds",
            self.start_time.clone(),
        );
        r.register(
            "airlock_uptime_seconds",
            "Seconds since the airlockd process started (sampled at scrape)",
            self.uptime.clone(),
        );
        r.register(
            "airlock_build_info",
            "Always 1; the version label names the running build",
            self.build_info.clone(),
        );
        self
    }

    /// Records the loaded models: their `airlock_model_info` series, and the set of model
    /// label values. Models load once per process, so only the first call counts.
    pub fn set_models(&self, models: &[ModelInfo]) {
        if self
            .models
            .set(models.iter().map(|m| m.id.clone()).collect())
            .is_err()
        {
            return;
        }
        for model in models {
            let (device, dtype) = split_device(&model.device);
            self.model_info
                .get_or_create(&ModelInfoLabels {
                    model: model.id.clone(),
                    device,
                    dtype,
                    context_length: model.context_length.to_string(),
                })
                .set(1);
        }
    }

    /// `model` if it is loaded, else `unknown`.
    fn model_label(&self, model: &str) -> String {
        match self.models.get() {
            Some(set) if set.contains(model) => model.to_owned(),
            _ => UNKNOWN.to_owned(),
        }
    }

    /// One answered request.
    pub fn request(
        &self,
        tenant: Option<&str>,
        model: Option<&str>,
        route: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        let labels = RequestLabels {
            tenant: tenant.unwrap_or(UNKNOWN).to_owned(),
            model: model.map_or_else(|| "none".to_owned(), |m| self.model_label(m)),
            route,
            status,
        };
        self.requests.get_or_create(&labels).inc();
        self.request_duration
            .get_or_create(&RouteLabels { route })
            .observe(elapsed.as_secs_f64());
    }

    /// A finished generation: tokens by tenant and model, time to first token, time per
    /// output token. `tenant` is a configured tenant's name or `None`.
    pub fn generation(
        &self,
        tenant: Option<&str>,
        model: &str,
        usage: Usage,
        timings: &GenerationTimings,
    ) {
        let model = self.model_label(model);
        let labels = TenantModelLabels {
            tenant: tenant.unwrap_or(UNKNOWN).to_owned(),
            model: model.clone(),
        };
        let (prompt, completion) = (usage.prompt_tokens as u64, usage.completion_tokens as u64);
        self.prompt_tokens.get_or_create(&labels).inc_by(prompt);
        self.completion_tokens
            .get_or_create(&labels)
            .inc_by(completion);
        let model = ModelLabels { model };
        if timings.time_to_first_token_ms.is_finite() && timings.time_to_first_token_ms >= 0.0 {
            self.time_to_first_token
                .get_or_create(&model)
                .observe(timings.time_to_first_token_ms / 1000.0);
        }
        // Decode speed is measured after the first token: one token has no figure.
        if completion > 1
            && timings.decode_tokens_per_s.is_finite()
            && timings.decode_tokens_per_s > 0.0
        {
            self.time_per_output_token
                .get_or_create(&model)
                .observe(1.0 / timings.decode_tokens_per_s);
        }
        self.note_tokens(completion);
    }

    fn note_tokens(&self, tokens: u64) {
        let now = self.started.elapsed().as_secs();
        let mut recent = lock(&self.recent_tokens);
        match recent.back_mut() {
            Some((second, sum)) if *second == now => *sum += tokens,
            _ => recent.push_back((now, tokens)),
        }
        while recent
            .front()
            .is_some_and(|(second, _)| now.saturating_sub(*second) >= RATE_WINDOW.as_secs())
        {
            recent.pop_front();
        }
    }

    /// Completion tokens per second over the last minute (a shorter uptime counts whole).
    pub fn tokens_per_second(&self) -> f64 {
        let now = self.started.elapsed().as_secs();
        let recent = lock(&self.recent_tokens);
        let sum: u64 = recent
            .iter()
            .filter(|(second, _)| now.saturating_sub(*second) < RATE_WINDOW.as_secs())
            .map(|(_, tokens)| tokens)
            .sum();
        let window = self
            .started
            .elapsed()
            .min(RATE_WINDOW)
            .as_secs_f64()
            .max(1.0);
        sum as f64 / window
    }

    /// A refusal by `tenant`'s rate limiter; `kind` is `requests`, `tokens`,
    /// `concurrency` or `too_large`.
    pub fn rate_limited(&self, tenant: &str, kind: &'static str) {
        self.rate_limited
            .get_or_create(&RateLimitLabels {
                tenant: tenant.to_owned(),
                kind,
            })
            .inc();
    }

    /// An admission decided locally because the shared limits store was unavailable.
    pub fn limits_fallback(&self) {
        self.limits_fallback.inc();
    }

    /// A failed authentication. Both labels are fixed strings chosen by the caller.
    pub fn auth_failure(&self, method: &'static str, reason: &'static str) {
        self.auth_failures
            .get_or_create(&AuthLabels { method, reason })
            .inc();
    }

    /// A filter rule acted `count` times (`action`: `deny` or `redact`).
    pub fn filter_action(&self, rule: &str, action: &'static str, count: u64) {
        self.filter_actions
            .get_or_create(&FilterLabels {
                rule: rule.to_owned(),
                action,
            })
            .inc_by(count);
    }

    /// A model output that began a tool call and was sent as content (`reason`: one of
    /// the parser's fixed explanations).
    pub fn tool_call_unparsed(&self, model: &str, reason: &'static str) {
        self.tool_calls_unparsed
            .get_or_create(&UnparsedLabels {
                model: model.to_owned(),
                reason,
            })
            .inc();
    }

    /// Spans the collector accepted.
    pub fn telemetry_exported(&self, spans: u64) {
        self.telemetry_exported.inc_by(spans);
    }

    /// Spans dropped: `queue_full` or `export_failed`.
    pub fn telemetry_dropped(&self, reason: &'static str, spans: u64) {
        self.telemetry_dropped
            .get_or_create(&DropLabels { reason })
            .inc_by(spans);
    }

    /// Records a sink delivered.
    pub fn audit_sink_shipped(&self, sink: &str, records: u64) {
        self.audit_sink_shipped
            .get_or_create(&SinkLabels {
                sink: sink.to_owned(),
            })
            .inc_by(records);
    }

    /// A failed delivery attempt of a sink.
    pub fn audit_sink_failure(&self, sink: &str) {
        self.audit_sink_failures
            .get_or_create(&SinkLabels {
                sink: sink.to_owned(),
            })
            .inc();
    }

    /// A failed exchange (or probe) with `upstream` of remote model `model`; `ejected`: it
    /// ejected the upstream.
    pub fn upstream_failure(&self, model: &str, upstream: &str, ejected: bool) {
        let labels = UpstreamLabels {
            model: model.to_owned(),
            upstream: upstream.to_owned(),
        };
        self.upstream_failures.get_or_create(&labels).inc();
        if ejected {
            self.upstream_ejections.get_or_create(&labels).inc();
        }
    }

    /// A request that `upstream` could not take went on to another.
    pub fn upstream_retry(&self, model: &str, upstream: &str) {
        self.upstream_retries
            .get_or_create(&UpstreamLabels {
                model: model.to_owned(),
                upstream: upstream.to_owned(),
            })
            .inc();
    }

    /// A connection opened to `upstream` of remote model `model` for a request (none kept
    /// was ready).
    pub fn upstream_connection(&self, model: &str, upstream: &str) {
        self.upstream_connections
            .get_or_create(&UpstreamLabels {
                model: model.to_owned(),
                upstream: upstream.to_owned(),
            })
            .inc();
    }

    /// (connections opened, failures) counted for `upstream` of remote model `model`.
    #[cfg(test)]
    pub fn upstream_counts(&self, model: &str, upstream: &str) -> (u64, u64) {
        let labels = UpstreamLabels {
            model: model.to_owned(),
            upstream: upstream.to_owned(),
        };
        (
            self.upstream_connections.get_or_create(&labels).get(),
            self.upstream_failures.get_or_create(&labels).get(),
        )
    }

    /// Committed records a sink still owes.
    pub fn audit_sink_lag(&self, sink: &str, records: u64) {
        self.audit_sink_lag
            .get_or_create(&SinkLabels {
                sink: sink.to_owned(),
            })
            .set(i64::try_from(records).unwrap_or(i64::MAX));
    }

    /// One audit commit (called on the writer thread). `head` is the chain head after a
    /// successful commit: sequence number and record hash.
    pub fn audit_commit(&self, elapsed: Option<Duration>, head: Option<(u64, &[u8; 32])>) {
        if let Some(elapsed) = elapsed {
            self.audit_commit.observe(elapsed.as_secs_f64());
        }
        let mut audit = lock(&self.audit);
        match head {
            Some((seq, hash)) => {
                audit.last_commit_ok = Some(true);
                audit.head_seq = seq;
                audit.head_hash = hex::encode(hash);
            }
            None => {
                self.audit_failures.inc();
                audit.last_commit_ok = Some(false);
                audit.failed_commits += 1;
            }
        }
    }

    /// The audit log's state for `/status`.
    pub fn audit_health(&self) -> AuditHealth {
        lock(&self.audit).clone()
    }

    /// Seconds since the process started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Unix seconds at start.
    pub fn start_unix(&self) -> i64 {
        self.start_unix
    }

    /// Samples the scrape-time gauges and encodes every family in OpenMetrics text.
    pub fn encode(&self, engine: &EngineStatus, in_flight: usize) -> String {
        let gauge = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.engine_queued.set(gauge(engine.queued));
        self.engine_active.set(gauge(engine.active));
        self.kv_cache_bytes.set(gauge(engine.kv_cache_bytes));
        if let Ok(mut seen) = self.spec_seen.lock() {
            let advance = |last: u64, now: u64| if now >= last { now - last } else { now };
            self.spec_drafted
                .inc_by(advance(seen.0, engine.spec_drafted_tokens));
            self.spec_accepted
                .inc_by(advance(seen.1, engine.spec_accepted_tokens));
            *seen = (engine.spec_drafted_tokens, engine.spec_accepted_tokens);
        }
        self.in_flight.set(gauge(in_flight));
        if let Some(bytes) = resident_memory_bytes() {
            self.resident_memory.set(gauge(bytes));
        }
        self.uptime
            .set(i64::try_from(self.started.elapsed().as_secs()).unwrap_or(i64::MAX));
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail; an encoder error would be a bug in the crate,
        // and a partial exposition is still better than none.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// `cpu (flex, f32)` → (`cpu (flex)`, `f32`): the engine names the dtype last in the
/// parentheses, and the weights' storage there when it differs from the compute dtype
/// (`cpu (flex, f32, q8_0 weights)` → (`cpu (flex, f32)`, `q8_0`)). A device string without
/// one keeps `unknown` as its dtype.
fn split_device(device: &str) -> (String, String) {
    if let Some(inner) = device
        .strip_suffix(')')
        .and_then(|d| d.rsplit_once(", "))
        .map(|(head, dtype)| {
            let dtype = dtype.strip_suffix(" weights").unwrap_or(dtype);
            (format!("{head})"), dtype.to_owned())
        })
    {
        return inner;
    }
    (device.to_owned(), UNKNOWN.to_owned())
}

/// Resident set size from `/proc/self/status` (`VmRSS`, Linux); `None` elsewhere.
pub fn resident_memory_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: usize = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// A poisoned lock still holds usable figures: a panic elsewhere must not stop metrics.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Tenant and model of one generation, taken when it is submitted and used when it
/// finishes (a stream finishes after its request handler has returned).
#[derive(Clone, Debug)]
pub struct GenerationLabels {
    /// The tenant's policy, shared rather than its name copied per request.
    tenant: Option<std::sync::Arc<airlock_policy::Tenant>>,
    model: String,
}

impl GenerationLabels {
    /// `tenant` is the request's tenant policy, if it has one (configured tenants only).
    pub fn new(
        tenant: Option<&std::sync::Arc<airlock_policy::Tenant>>,
        model: String,
    ) -> GenerationLabels {
        GenerationLabels {
            tenant: tenant.cloned(),
            model,
        }
    }

    /// The generation's model.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Records the finished generation.
    pub fn finished(&self, usage: Usage, timings: &GenerationTimings) {
        global().generation(
            self.tenant.as_deref().map(|t| t.name.as_str()),
            &self.model,
            usage,
            timings,
        );
    }
}

/// What a request's path learns about it for its `airlock_requests_total` series: the
/// configured tenant (set after authentication) and the model (set at submission).
#[derive(Debug, Default)]
pub struct RequestNote {
    tenant: OnceLock<String>,
    model: OnceLock<String>,
}

impl RequestNote {
    /// Notes the request's configured tenant and model (first call wins).
    pub fn note(&self, tenant: Option<&str>, model: Option<&str>) {
        if let Some(t) = tenant {
            let _ = self.tenant.set(t.to_owned());
        }
        if let Some(m) = model {
            let _ = self.model.set(m.to_owned());
        }
    }

    pub fn tenant(&self) -> Option<&str> {
        self.tenant.get().map(String::as_str)
    }

    pub fn model(&self) -> Option<&str> {
        self.model.get().map(String::as_str)
    }
}
