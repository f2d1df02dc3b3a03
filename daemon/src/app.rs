//! The application state every request sees: the engine and the request limits.
//!
//! The server builds one [`App`] per configuration generation (a SIGHUP reload builds a new
//! one); [`crate::pipeline::handle`] serves requests against it.

use std::sync::Arc;
use std::time::Duration;

use airlock_engine::{Engine, ModelInfo};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

mod uploads;

/// Request limits, from the `[limits]` section of the configuration.
#[derive(Clone, Debug)]
pub struct AppSettings {
    /// Largest request body accepted. Protects memory: a body is never buffered past this.
    pub max_body_bytes: usize,
    /// Wall-clock budget of a request up to its complete response (non-streaming) or up to
    /// its first generated token (streaming). Protects against requests stuck in a queue.
    pub request_deadline: Duration,
    /// Inference requests (chat, completions, generate) served at once, streams included;
    /// beyond it requests are refused with 503. Protects the engine queue and memory.
    pub max_concurrent_requests: usize,
    /// Time allowed to receive a request body once it holds its concurrency slots.
    /// Protects those slots from slow (trickled) uploads.
    pub body_read_timeout: Duration,
}

/// The readiness of one configuration generation.
#[derive(Clone, Debug)]
pub struct Readiness {
    /// Why requests cannot be served; `None` when ready.
    pub reason: Option<&'static str>,
    /// Time since the API key table was confirmed current (`None`: no key database).
    pub key_db_staleness: Option<Duration>,
}

/// Shared application state.
pub struct App {
    pub(crate) engine: Arc<dyn Engine>,
    /// The engine's models, read once: an engine's model list is fixed when it is built
    /// (a reload that changes models builds a new engine and a new `App`), so `/v1/models`
    /// and a request without `model` need not ask (and allocate) per request.
    pub(crate) models: Vec<ModelInfo>,
    pub(crate) settings: AppSettings,
    /// One permit per inference request in flight.
    slots: Arc<Semaphore>,
    /// Request bodies arriving per tenant (at most half of `slots` each).
    pub(crate) uploads: Arc<uploads::Uploads>,
    /// `system_fingerprint` in responses: the build serving them.
    pub(crate) fingerprint: String,
    /// The audit log and the settings of this configuration generation; `None` only when
    /// the configuration has no `[audit]` section.
    pub(crate) audit: Option<Arc<crate::audit::trail::Binding>>,
    /// Authentication and tenant policy of this configuration generation.
    pub(crate) access: Arc<crate::access::Access>,
    /// `[cluster.limits] backend = "redis"`: the tenants' limits, shared with the other
    /// gateways; `None`: each tenant's own limiter in this process.
    pub(crate) shared_limits: Option<Arc<crate::limits_redis::SharedLimits>>,
    /// `[telemetry]`: the process's tracer (one per process, kept across reloads); `None`:
    /// no spans are made.
    pub(crate) telemetry: Option<Arc<crate::telemetry::Telemetry>>,
}

impl App {
    /// An application without audit log and with the legacy access policy (tests, benches).
    #[cfg(any(test, feature = "test-engine"))]
    pub fn new(engine: Arc<dyn Engine>, settings: AppSettings) -> Arc<App> {
        Self::with_audit(engine, settings, None)
    }

    /// An application whose requests are audited through `audit`, with the legacy access
    /// policy (tests, benches).
    #[cfg(any(test, feature = "test-engine"))]
    pub fn with_audit(
        engine: Arc<dyn Engine>,
        settings: AppSettings,
        audit: Option<Arc<crate::audit::trail::Binding>>,
    ) -> Arc<App> {
        Self::with_policy(engine, settings, audit, crate::access::Access::legacy())
    }

    /// An application with its audit log and its authentication and tenant policy.
    pub fn with_policy(
        engine: Arc<dyn Engine>,
        settings: AppSettings,
        audit: Option<Arc<crate::audit::trail::Binding>>,
        access: Arc<crate::access::Access>,
    ) -> Arc<App> {
        let slots = Arc::new(Semaphore::new(settings.max_concurrent_requests.max(1)));
        let uploads = uploads::Uploads::new(settings.max_concurrent_requests);
        let models = engine.models();
        Arc::new(App {
            engine,
            models,
            settings,
            slots,
            uploads,
            fingerprint: format!("fp_airlock_{}", env!("CARGO_PKG_VERSION")),
            audit,
            access,
            shared_limits: None,
            telemetry: None,
        })
    }

    /// Takes over `previous`'s request slots when the limit is unchanged (a reload), so
    /// that requests still in flight on the previous generation count against the next one
    /// instead of the limit being briefly doubled.
    /// The key-guessing throttle and argon2 permits carry over too ([`Access::inherit_guards`]).
    ///
    /// [`Access::inherit_guards`]: crate::access::Access::inherit_guards
    pub(crate) fn inherit_from(app: &mut Arc<App>, previous: &App) {
        let Some(next) = Arc::get_mut(app) else {
            tracing::warn!("reload: the new generation is already shared; limits start fresh");
            return;
        };
        if next.settings.max_concurrent_requests == previous.settings.max_concurrent_requests {
            next.slots = Arc::clone(&previous.slots);
            next.uploads = Arc::clone(&previous.uploads);
        }
        match Arc::get_mut(&mut next.access) {
            Some(access) => access.inherit_guards(&previous.access),
            None => tracing::warn!(
                "reload: the new access state is already shared; throttle starts fresh"
            ),
        }
    }

    /// Puts `app`'s tenant limits in the shared store (a generation being built, not yet
    /// shared with any request).
    pub(crate) fn set_shared_limits(
        app: &mut Arc<App>,
        shared: Arc<crate::limits_redis::SharedLimits>,
    ) {
        match Arc::get_mut(app) {
            Some(app) => app.shared_limits = Some(shared),
            None => tracing::error!("shared limits not set: the generation is already shared"),
        }
    }

    /// Gives `app`'s requests spans from `telemetry` (a generation being built, not yet
    /// shared with any request).
    pub(crate) fn set_telemetry(app: &mut Arc<App>, telemetry: Arc<crate::telemetry::Telemetry>) {
        match Arc::get_mut(app) {
            Some(app) => app.telemetry = Some(telemetry),
            None => tracing::error!("telemetry not set: the generation is already shared"),
        }
    }

    /// A slot for one inference request, or `None` when all are taken (never waits: a
    /// client is better served by a prompt 503 than by an unbounded wait).
    pub(crate) fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).try_acquire_owned().ok()
    }

    /// Inference requests in flight (streams count until their body is dropped).
    pub(crate) fn requests_in_flight(&self) -> usize {
        self.settings.max_concurrent_requests.max(1) - self.slots.available_permits()
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Whether requests can be served as far as the audit log is concerned (`/readyz`).
    pub fn audit_ready(&self) -> bool {
        self.audit
            .as_ref()
            .is_none_or(|a| a.danger_allow_unaudited || a.log.healthy())
    }

    /// Whether this generation can serve requests, and why not: the one answer both the
    /// open `/readyz` (status only) and the admin `/status` (with the reason) give.
    pub fn readiness(&self) -> Readiness {
        let reason = if self.models.is_empty() {
            Some("no model is loaded")
        } else if !self.audit_ready() {
            Some("audit_unavailable: audit records cannot be written")
        } else if !self.access.keys_ready() {
            Some("keys_unavailable: the API key database has not been readable for over 5 s")
        } else {
            None
        };
        Readiness {
            reason,
            key_db_staleness: self.access.keys_staleness(),
        }
    }

    pub fn settings(&self) -> &AppSettings {
        &self.settings
    }
}
