//! `[telemetry]`: an OpenTelemetry server span for every request, exported by OTLP/HTTP
//! (protobuf) through the `opentelemetry` SDK and `opentelemetry-otlp`'s exporter. Off
//! without the section: an air-gapped gateway sends nothing it was not told to.
//!
//! * [`Telemetry::start`] builds the tracer provider: a parent-based ratio sampler, the
//!   resource (`service.name`, `service.version`), and the bounded export queue
//!   ([`export`]), which a slow or dead collector can only make drop spans, never delay a
//!   request.
//! * [`Telemetry::request_span`] opens a request's span, continuing the W3C `traceparent`
//!   of a trusted sender only (`trust_traceparent`).
//! * The pipeline writes the attributes it learns into the [`RequestSpan`] it carries in its
//!   `RequestCtx` (no task-locals): the request as admitted, the response id, the usage and
//!   finish reasons, the status. What is exported: docs/telemetry.md.
//! * [`http::OtlpClient`] is the HTTP client of the exporter and of the `otlp-http` audit
//!   sink: hyper and rustls, the collector's CA only.

mod export;
pub mod http;
mod span;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, RetryPolicy, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use tokio::task::JoinHandle;

pub use span::{RequestSpan, Requested};

use crate::config::telemetry::{TelemetryConfig, TrustTraceparent};
use crate::identity::ConnInfo;

/// Telemetry could not start: the key at fault and why.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.{key}: {reason}")]
pub struct TelemetryError {
    pub key: &'static str,
    pub reason: String,
}

/// The process's tracer and its export task (one per process, kept across reloads).
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    trust: TrustTraceparent,
    propagator: TraceContextPropagator,
    /// Drains the export queue; awaited at shutdown.
    task: Mutex<Option<JoinHandle<()>>>,
    timeout: Duration,
}

impl Telemetry {
    /// Loads the TLS material and starts the export task. Call within the runtime.
    pub fn start(cfg: &TelemetryConfig) -> Result<Arc<Telemetry>, TelemetryError> {
        let client = http::OtlpClient::new(&cfg.endpoint, cfg.timeout)
            .map_err(|(key, reason)| TelemetryError { key, reason })?;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            // Retries are ours (the sink's backoff; spans are dropped): the exporter's would
            // sleep on a runtime thread.
            .with_retry_policy(RetryPolicy::disabled())
            .with_endpoint(cfg.endpoint.url("traces"))
            .with_timeout(cfg.timeout)
            .build()
            .map_err(|e| TelemetryError {
                key: "endpoint",
                reason: e.to_string(),
            })?;
        let resource = Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        opentelemetry_sdk::trace::SpanExporter::set_resource(&mut exporter, &resource);
        let (queue, task) = export::Queue::start(
            exporter,
            export::Batching {
                queue: cfg.queue.get(),
                batch: cfg.batch.get(),
                interval: cfg.interval,
                timeout: cfg.timeout,
            },
        );
        let provider = SdkTracerProvider::builder()
            .with_span_processor(queue)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sampling_ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("airlockd");
        tracing::info!(endpoint = %cfg.endpoint.url("traces"), sampling_ratio = cfg.sampling_ratio, "telemetry: exporting request spans");
        Ok(Arc::new(Telemetry {
            provider,
            tracer,
            trust: cfg.trust_traceparent,
            propagator: TraceContextPropagator::new(),
            task: Mutex::new(Some(task)),
            timeout: cfg.timeout,
        }))
    }

    /// Opens a request's server span. The client's `traceparent` is continued only when
    /// `trust_traceparent` trusts its sender; otherwise the span is a root (a client cannot
    /// pick its trace id or force sampling).
    pub fn request_span(
        &self,
        conn: &ConnInfo,
        headers: &::http::HeaderMap,
        method: &str,
        route: &'static str,
        request_id: &str,
    ) -> RequestSpan {
        let trusted = match self.trust {
            TrustTraceparent::Proxy => conn.trusted_proxy,
            TrustTraceparent::Never => false,
            TrustTraceparent::Always => true,
        };
        let parent = if trusted {
            self.propagator
                .extract(&opentelemetry_http::HeaderExtractor(headers))
        } else {
            Context::new()
        };
        let span = self
            .tracer
            .span_builder(format!("{method} {route}"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method.to_owned()),
                KeyValue::new("http.route", route),
                KeyValue::new("airlock.request_id", request_id.to_owned()),
            ])
            .start_with_context(&self.tracer, &parent);
        RequestSpan::new(span)
    }

    /// Stops taking spans and sends what is queued (within the export timeout).
    pub async fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "telemetry provider shutdown");
        }
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task
            && tokio::time::timeout(self.timeout + Duration::from_secs(1), task)
                .await
                .is_err()
        {
            tracing::warn!("telemetry: queued spans not sent before shutdown");
        }
    }
}
