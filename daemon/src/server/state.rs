//! The swappable part of the server: everything a SIGHUP reload may change. Each accepted
//! connection starts on the current [`State`]; a reload re-checks every open connection
//! against the next one (`super::conn`), which it then serves on or is closed. A request in
//! flight finishes on the state it started with.

use std::path::Path;
use std::sync::Arc;

use airlock_engine::Engine;
use rustls::server::danger::ClientCertVerifier;
use tokio_rustls::TlsAcceptor;

use super::app::{App, AppSettings};
use crate::config::{Config, ListenerMode, ModelConfig, Role};
use crate::tls::{self, TlsError};

/// One generation of runtime state.
pub struct State {
    pub config: Config,
    pub app: Arc<App>,
    /// `None` in proxy mode.
    pub tls: Option<TlsAcceptor>,
    /// The acceptor's client-certificate verifier, kept to re-check connections that are
    /// already open when a reload brings new CAs or CRLs; `None` in proxy mode.
    pub client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// The audit log (one per process, carried across reloads); `None` without `[audit]`.
    pub audit_log: Option<Arc<crate::audit::AuditLog>>,
    /// `[telemetry]`'s tracer (one per process, carried across reloads); `None` without it.
    pub telemetry: Option<Arc<crate::telemetry::Telemetry>>,
}

/// Why a state could not be built (at start: fatal; on reload: the old state stays).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("{0} cannot change on reload; restart the daemon")]
    NeedsRestart(&'static str),
    #[error("{0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("{0}")]
    Keys(#[from] crate::keys::KeyStoreError),
    #[error("{0}")]
    SharedLimits(#[from] crate::limits_redis::SetupError),
}

impl State {
    /// Builds TLS and the application state from a validated config, with the process's
    /// audit log (if `[audit]` is configured) and the hash of the config file.
    pub fn build_audited(
        config: Config,
        engine: Arc<dyn Engine>,
        audit_log: Option<Arc<crate::audit::AuditLog>>,
        telemetry: Option<Arc<crate::telemetry::Telemetry>>,
        config_hash: String,
    ) -> Result<State, StateError> {
        let binding = match (&audit_log, &config.audit) {
            (Some(log), Some(cfg)) => Some(Arc::new(crate::audit::trail::Binding {
                log: Arc::clone(log),
                digest: Arc::new(crate::audit::DigestKey::load(&cfg.digest_key)?),
                config_hash,
                store_text: cfg.store_text,
                tenant_store_text: cfg.tenant_store_text.clone(),
                danger_allow_unaudited: cfg.danger_allow_unaudited,
            })),
            (None, None) => None,
            _ => return Err(StateError::NeedsRestart("[audit]")),
        };
        let (tls, client_verifier) = match &config.listener.mode {
            ListenerMode::Tls(tls_cfg) => {
                let admit = (config.listener.role == Role::Engine)
                    .then(|| engine_admit(&config.policy))
                    .flatten();
                let (server, verifier) = tls::server_config_admitting(tls_cfg, admit)?;
                (Some(TlsAcceptor::from(server)), Some(verifier))
            }
            ListenerMode::Proxy(_) => (None, None),
        };
        let settings = AppSettings {
            max_body_bytes: config.limits.max_body_bytes.get(),
            request_deadline: config.limits.request_deadline,
            max_concurrent_requests: config.limits.max_concurrent_requests.get(),
            body_read_timeout: config.limits.body_read_timeout,
        };
        let shared_limits = config
            .cluster
            .limits
            .as_ref()
            .map(crate::limits_redis::SharedLimits::new)
            .transpose()?;
        let mut app = App::with_policy(
            engine,
            settings,
            binding,
            crate::access::Access::new(config.policy.clone(), audit_log.clone())?,
        );
        if let Some(shared) = shared_limits {
            App::set_shared_limits(&mut app, shared);
        }
        if let Some(telemetry) = &telemetry {
            App::set_telemetry(&mut app, Arc::clone(telemetry));
        }
        Ok(State {
            app,
            tls,
            client_verifier,
            config,
            audit_log,
            telemetry,
        })
    }

    /// Re-reads `path` and builds the next state. The listener and the loaded models stay
    /// as they are: changing the listen address or mode is refused, changed models are
    /// reported in `warnings`.
    pub fn reload(
        &self,
        path: &Path,
        engine: Arc<dyn Engine>,
    ) -> Result<(State, Vec<String>), StateError> {
        let mut config = Config::load(path)?;
        if config.listener.address != self.config.listener.address {
            return Err(StateError::NeedsRestart("listener.address"));
        }
        if std::mem::discriminant(&config.listener.mode)
            != std::mem::discriminant(&self.config.listener.mode)
        {
            return Err(StateError::NeedsRestart("listener.mode"));
        }
        if config.listener.role != self.config.listener.role {
            return Err(StateError::NeedsRestart("listener.role"));
        }
        let mut warnings = config.warnings();
        if !same_models(&config.models, &self.config.models) {
            warnings
                .push("[[models]] changed: models load only at start; restart to apply".to_owned());
        }
        if config.limits.max_connections != self.config.limits.max_connections {
            warnings.push("limits.max_connections changed: applies after a restart".to_owned());
        }
        if config.limits.max_pending_handshakes != self.config.limits.max_pending_handshakes {
            warnings
                .push("limits.max_pending_handshakes changed: applies after a restart".to_owned());
        }
        // Tenants whose limits did not change keep their limiter: a reload must not refill
        // a quota, nor give connections of two generations a limiter each.
        config.policy.tenants = match Arc::try_unwrap(std::mem::take(&mut config.policy.tenants)) {
            Ok(fresh) => Arc::new(fresh.inherit_limiters(&self.config.policy.tenants)),
            Err(shared) => shared,
        };
        if config.logging != self.config.logging {
            warnings.push("[logging] changed: applies after a restart".to_owned());
        }
        if config.admin != self.config.admin {
            warnings.push("[admin] changed: applies after a restart".to_owned());
        }
        if config.telemetry != self.config.telemetry {
            warnings.push("[telemetry] changed: applies after a restart".to_owned());
        }
        if let (Some(new), Some(old)) = (&config.audit, &self.config.audit)
            && (new.db != old.db || new.signing_key != old.signing_key)
        {
            warnings.push("audit.db / audit.signing_key changed: apply after a restart".to_owned());
        }
        let hash = crate::audit::config_hash(path);
        let mut state = State::build_audited(
            config,
            engine,
            self.audit_log.clone(),
            self.telemetry.clone(),
            hash,
        )?;
        App::inherit_from(&mut state.app, &self.app);
        Ok((state, warnings))
    }
}

/// An engine-role node's TLS admission: a client certificate must be one its
/// `[listener.engine]` rules name (the rules of its one tenant), or the handshake fails —
/// another certificate of the same CA never gets to send a request.
fn engine_admit(policy: &crate::config::policy::PolicyConfig) -> Option<tls::Admit> {
    let gateway = Arc::clone(
        policy
            .tenants
            .get(crate::config::policy::ENGINE_ROLE_TENANT)?,
    );
    Some(Arc::new(
        move |der: &rustls_pki_types::CertificateDer<'_>| {
            crate::identity::CertIdentity::from_der(der)
                .is_ok_and(|id| gateway.owns_cert(&crate::access::policy_cert(&id)))
        },
    ))
}

fn same_models(a: &[ModelConfig], b: &[ModelConfig]) -> bool {
    a == b
}
