//! `kind = "otlp-http"`: every committed record as one OpenTelemetry LogRecord, posted by
//! `opentelemetry-otlp`'s log exporter (OTLP/HTTP, protobuf) to a collector's `/v1/logs`.
//!
//! OTLP/HTTP answers each request, so a batch is [`Sent::Delivered`] when the collector
//! answered 2xx, and the cursor moves at once; any other answer, or none within the
//! timeout, sends the batch again (at least once).
//!
//! Each LogRecord carries the record exactly as committed, for an auditor to check the
//! SIEM's copy against the node's signed checkpoints (docs/telemetry.md):
//!
//! | field | value |
//! | --- | --- |
//! | body | the record's canonical JSON, byte for byte (a string) |
//! | `airlock.audit.seq` | its sequence number |
//! | `airlock.audit.hash` | its chain hash, 64 hex characters |
//! | `airlock.audit.kind` | the record kind (`admit`, `complete`, ...) |
//! | `airlock.node` | the node whose chain it belongs to |
//! | timestamp | the record's `ts_ms` |
//! | event name | `airlock.audit` |
//!
//! The resource names the service (`service.name = "airlockd"`) and the host (`host.name`:
//! the sink's `hostname`, the node's name by default); the scope is `airlock.audit`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, RetryPolicy, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{
    LogBatch, LogExporter as _, SdkLogRecord, SdkLogger, SdkLoggerProvider,
};

use super::{Entry, Sent};
use crate::audit::AuditError;
use crate::config::telemetry::OtlpEndpoint;
use crate::telemetry::http::OtlpClient;

/// The sink's exporter and the logger its records are made with.
pub(super) struct OtlpLogs {
    exporter: opentelemetry_otlp::LogExporter,
    /// Makes the records only (no processor: nothing is emitted through it).
    logger: SdkLogger,
    scope: InstrumentationScope,
    node: String,
    /// Keeps the logger's provider for as long as the logger.
    _provider: SdkLoggerProvider,
}

impl OtlpLogs {
    /// Loads the endpoint's TLS material, so that a broken sink fails the start-up.
    pub(super) fn new(
        name: &str,
        hostname: &str,
        endpoint: &OtlpEndpoint,
        timeout: Duration,
    ) -> Result<OtlpLogs, AuditError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            AuditError::Format(format!("audit.sinks `{name}`: {what}: {e}"))
        };
        let client = OtlpClient::new(endpoint, timeout)
            .map_err(|(key, e)| bad(key, &e))?
            .strict_logs();
        let mut exporter = opentelemetry_otlp::LogExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            // Retries are ours (the sink's backoff; spans are dropped): the exporter's would
            // sleep on a runtime thread.
            .with_retry_policy(RetryPolicy::disabled())
            .with_endpoint(endpoint.url("logs"))
            .with_timeout(timeout)
            .build()
            .map_err(|e| bad("endpoint", &e))?;
        let resource = Resource::builder()
            .with_service_name("airlockd")
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .with_attribute(KeyValue::new("host.name", hostname.to_owned()))
            .build();
        opentelemetry_sdk::logs::LogExporter::set_resource(&mut exporter, &resource);
        let scope = InstrumentationScope::builder("airlock.audit")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let provider = SdkLoggerProvider::builder().with_resource(resource).build();
        let logger = provider.logger_with_scope(scope.clone());
        Ok(OtlpLogs {
            exporter,
            logger,
            scope,
            node: hostname.to_owned(),
            _provider: provider,
        })
    }

    /// Posts `entries` as one export request; delivered when the collector answers 2xx.
    pub(super) async fn send(&mut self, entries: &[Entry]) -> Result<Sent, String> {
        let records: Vec<SdkLogRecord> = entries.iter().map(|e| self.record(e)).collect();
        let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
            records.iter().map(|r| (r, &self.scope)).collect();
        self.exporter
            .export(LogBatch::new(&refs))
            .await
            .map_err(|e| e.to_string())?;
        Ok(Sent::Delivered)
    }

    fn record(&self, entry: &Entry) -> SdkLogRecord {
        let body = String::from_utf8_lossy(&entry.body).into_owned();
        let fields: Option<serde_json::Value> = serde_json::from_slice(&entry.body).ok();
        let field = |name: &str| fields.as_ref().and_then(|f| f.get(name));
        let mut record = self.logger.create_log_record();
        record.set_event_name("airlock.audit");
        record.set_severity_number(Severity::Info);
        record.set_severity_text("INFO");
        if let Some(ms) = field("ts_ms").and_then(serde_json::Value::as_u64) {
            record.set_timestamp(UNIX_EPOCH + Duration::from_millis(ms));
        }
        record.set_observed_timestamp(SystemTime::now());
        record.add_attribute(
            "airlock.audit.seq",
            AnyValue::Int(i64::try_from(entry.seq).unwrap_or(i64::MAX)),
        );
        record.add_attribute(
            "airlock.audit.hash",
            AnyValue::from(hex::encode(&entry.hash)),
        );
        if let Some(kind) = field("kind").and_then(serde_json::Value::as_str) {
            record.add_attribute("airlock.audit.kind", AnyValue::from(kind.to_owned()));
        }
        let node = field("node")
            .and_then(serde_json::Value::as_str)
            .unwrap_or(&self.node)
            .to_owned();
        record.add_attribute("airlock.node", AnyValue::from(node));
        record.set_body(AnyValue::from(body));
        record
    }
}

#[cfg(test)]
mod tests {

    use opentelemetry::logs::AnyValue;

    use super::*;

    #[tokio::test]
    async fn a_log_record_carries_the_record_as_committed() {
        let endpoint = OtlpEndpoint {
            base: "http://127.0.0.1:4318".to_owned(),
            host: "127.0.0.1".to_owned(),
            port: 4318,
            tls: None,
        };
        let sink = OtlpLogs::new("otel", "gw-1", &endpoint, Duration::from_secs(1)).unwrap();
        let body = br#"{"kind":"admit","node":"gw-1","seq":7,"ts_ms":1764828600123,"v":1}"#;
        let entry = Entry {
            seq: 7,
            body: body.to_vec(),
            hash: vec![0xab; 32],
        };
        let record = sink.record(&entry);
        assert_eq!(
            record.body(),
            Some(&AnyValue::from(String::from_utf8(body.to_vec()).unwrap())),
            "the body byte for byte"
        );
        let attr = |key: &str| {
            record
                .attributes_iter()
                .find(|(k, _)| k.as_str() == key)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(attr("airlock.audit.seq"), Some(AnyValue::Int(7)));
        assert_eq!(
            attr("airlock.audit.hash"),
            Some(AnyValue::from("ab".repeat(32)))
        );
        assert_eq!(
            attr("airlock.audit.kind"),
            Some(AnyValue::from("admit".to_owned()))
        );
        assert_eq!(
            attr("airlock.node"),
            Some(AnyValue::from("gw-1".to_owned()))
        );
        assert_eq!(
            record.timestamp(),
            Some(UNIX_EPOCH + Duration::from_millis(1_764_828_600_123))
        );
        assert_eq!(record.event_name(), Some("airlock.audit"));
    }
}
