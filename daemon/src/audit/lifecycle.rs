//! Daemon lifecycle records: start, reload (with certificates and CRLs), stop. The server
//! calls these; each waits for its record's commit.

use std::sync::Arc;

use super::record::{Kind, Record};
use super::writer::{AuditLog, WriterSettings};
use super::{AuditError, SigningKey};
use crate::config::{AuditConfig, Config};

/// Opens the log (checking that it extends its last signed checkpoint, and appending a
/// recovery record after an unclean stop) and commits the `start` record with a checkpoint.
/// Fails the start-up when any of these fails: no decisions without a record.
pub async fn start(
    cfg: &AuditConfig,
    config: &Config,
    config_hash: &str,
) -> Result<Arc<AuditLog>, AuditError> {
    let settings = WriterSettings {
        db: cfg.db.clone(),
        node: cfg.node.clone(),
        signing_key: SigningKey::load(&cfg.signing_key)?,
        checkpoint_every: cfg.checkpoint_every_records.get(),
        checkpoint_interval: cfg.checkpoint_every,
        write_timeout: cfg.write_timeout,
        queue: cfg.queue,
        rotation: cfg.rotation.clone(),
    };
    let log = tokio::task::spawn_blocking(move || AuditLog::open(settings))
        .await
        .map_err(|e| AuditError::Format(format!("audit open task failed: {e}")))??;
    let models: Vec<String> = config.models.iter().map(|m| m.name.clone()).collect();
    let record = Record::new(Kind::Start)
        .with("version", env!("CARGO_PKG_VERSION"))
        .with("pid", std::process::id())
        .with("config_hash", config_hash)
        .with("models", models)
        .with("danger_allow_unaudited", cfg.danger_allow_unaudited);
    // Sealed at once: every run starts from a signed head.
    log.append_sealed(record).await?;
    // The sinks forward what is committed, from their cursors; a broken one (unreadable CA
    // or key) fails the start-up rather than leaving the SIEM silently behind.
    for sink in &cfg.sinks {
        let sink = super::sink::Sink::new(sink, &cfg.db)?;
        tokio::spawn(sink.run());
    }
    tracing::info!(db = %cfg.db.display(), public_key = %log.public_key_hex, "audit log open");
    Ok(log)
}

/// A SIGHUP reload, successful or not (certificates and CRLs reload with the config).
pub async fn reloaded(log: &AuditLog, config_hash: &str, error: Option<String>) {
    let record = Record::new(Kind::Reload)
        .with("config_hash", config_hash)
        .with("tls_reloaded", error.is_none())
        .with("ok", error.is_none())
        .with("error", error);
    if let Err(e) = log.append(record).await {
        tracing::error!(error = %e, "cannot record the reload in the audit log");
    }
}

/// The `stop` record, the final checkpoint, and the clean-close mark.
pub async fn stop(log: Arc<AuditLog>, reason: &str) {
    let record = Record::new(Kind::Stop).with("reason", reason);
    if let Err(e) = log.append(record).await {
        tracing::error!(error = %e, "cannot record the stop in the audit log");
    }
    let _ = tokio::task::spawn_blocking(move || log.close()).await;
}
