//! The server: binds the listener, accepts connections (within
//! `limits.max_connections_per_address` and `limits.max_pending_handshakes`; each then
//! needs one of `limits.max_connections` once its handshake is done, see `conn`), reloads
//! on SIGHUP (re-checking open connections), and drains on SIGTERM/SIGINT.
//!
//! On start it prints exactly one line to stdout once the models are loaded and the
//! listener is bound (tests and scripts wait for it):
//!
//! ```text
//! listening on https://127.0.0.1:8443      (listener.mode = "tls")
//! listening on http://127.0.0.1:8080       (listener.mode = "proxy", TCP)
//! listening on unix:/run/airlockd.sock     (listener.mode = "proxy", Unix socket)
//! ```
//!
//! With an `[admin]` section, the next line names the admin listener (`crate::admin`):
//! `admin listening on http://127.0.0.1:9464`.

mod activation;
mod addresses;
mod conn;
mod engine;
mod request;
mod state;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use airlock_engine::Engine;
use arc_swap::ArcSwap;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Semaphore, watch};

pub use engine::EngineSetupError;
pub use request::X_REQUEST_ID;
use state::{State, StateError};

use crate::config::{Config, ListenAddress, ListenerConfig, ListenerMode};
use crate::notify::{self, Notifier};

/// The application the server hands requests to.
mod app {
    pub use crate::api::BoxBody;
    pub use crate::app::{App, AppSettings};
    pub use crate::pipeline::handle;
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("loading models: {0}")]
    Engine(#[from] EngineSetupError),
    #[error("{0}")]
    State(#[from] StateError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    #[error("listener.address = \"systemd\": {0}")]
    Activation(#[from] activation::ActivationError),
    #[error("listener.address = \"systemd\": {0}")]
    ActivatedMode(String),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error("model loading task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("{0}")]
    Admin(#[from] crate::admin::AdminError),
    #[error("{0}")]
    Telemetry(#[from] crate::telemetry::TelemetryError),
}

/// Text printed to stdout after the `listening on` line, given the bound TCP address
/// (`airlockd dev` prints its instructions this way).
pub type Banner = Box<dyn FnOnce(Option<SocketAddr>) -> String + Send>;

/// Runs the daemon until SIGTERM/SIGINT; returns after the drain. `banner`, if any, is
/// printed after the `listening on` line.
pub async fn run(
    config_path: PathBuf,
    config: Config,
    banner: Option<Banner>,
) -> Result<(), ServerError> {
    let notifier = match Notifier::from_env() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "NOTIFY_SOCKET is unusable; not notifying systemd");
            None
        }
    };
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }

    // Signals first: a SIGTERM during a long model load must still stop us cleanly.
    let mut hup = signal(SignalKind::hangup()).map_err(ServerError::Signal)?;
    let mut term = signal(SignalKind::terminate()).map_err(ServerError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServerError::Signal)?;
    // A file-size limit (RLIMIT_FSIZE, e.g. a quota) must surface as a failed write that the
    // audit log answers by refusing service, not as SIGXFSZ killing the daemon mid-request.
    // Registering a handler replaces the default action (terminate); nothing reads it.
    let _xfsz = signal(SignalKind::from_raw(libc::SIGXFSZ)).map_err(ServerError::Signal)?;

    let models = config.models.clone();
    tracing::info!(models = models.len(), "loading models");
    let engine: Arc<dyn Engine> =
        tokio::task::spawn_blocking(move || engine::build(&models)).await??;
    for model in engine.models() {
        tracing::info!(model = %model.id, device = %model.device, context = model.context_length, "model ready");
    }
    crate::metrics::global().set_models(&engine.models());

    let max_connections = config.limits.max_connections.get();
    let max_pending_handshakes = config.limits.max_pending_handshakes.get();
    let shutdown_grace = config.limits.shutdown_grace;
    let listener = Listener::bind(&config.listener).await?;
    let scheme = match config.listener.mode {
        ListenerMode::Tls(_) => "https://",
        ListenerMode::Proxy(_) => "http://",
    };
    // The audit log opens (and records the start) before anything is served: a daemon that
    // cannot record its decisions must not make any.
    let config_hash = crate::audit::config_hash(&config_path);
    let audit_log = match &config.audit {
        Some(cfg) => Some(crate::audit::lifecycle::start(cfg, &config, &config_hash).await?),
        None => None,
    };
    // Telemetry, when configured, exports request spans from the first request on; its
    // TLS material is checked here so a broken section fails the start-up.
    let telemetry = match &config.telemetry {
        Some(cfg) => Some(crate::telemetry::Telemetry::start(cfg)?),
        None => None,
    };
    let state = Arc::new(ArcSwap::from_pointee(State::build_audited(
        config,
        engine.clone(),
        audit_log.clone(),
        telemetry.clone(),
        config_hash,
    )?));
    // The admin listener (metrics, status) binds before the start line: a daemon whose
    // admin address is taken fails to start instead of running unobserved.
    let admin_config = state.load().config.admin.clone();
    let admin = match admin_config {
        Some(cfg) => {
            let current = Arc::clone(&state);
            let ready = Arc::clone(&state);
            let sources = crate::admin::Sources {
                engine: engine.clone(),
                in_flight: Box::new(move || current.load().app.requests_in_flight()),
                audited: audit_log.is_some(),
                readiness: Box::new(move || ready.load().app.readiness()),
            };
            Some(crate::admin::AdminServer::start(&cfg, sources).await?)
        }
        None => None,
    };

    match &listener {
        Listener::Tcp(..) => announce(&format!("listening on {scheme}{}", listener.local())),
        Listener::Unix(..) => announce(&format!("listening on {}", listener.local())),
    }
    if let Some(admin) = &admin {
        announce(&format!("admin listening on {}", admin.url()));
    }
    if let Some(banner) = banner {
        let addr = match &listener {
            Listener::Tcp(_, addr) => Some(*addr),
            Listener::Unix(..) => None,
        };
        announce(&banner(addr));
    }
    tracing::info!(address = %listener.local(), "listening");
    if let Some(n) = &notifier {
        let _ = n.ready();
    }
    let watchdog = notifier
        .as_ref()
        .and(notify::watchdog_interval())
        .map(|interval| {
            tokio::spawn(async move {
                let Ok(Some(n)) = Notifier::from_env() else {
                    return;
                };
                let mut tick = tokio::time::interval(interval);
                loop {
                    tick.tick().await;
                    let _ = n.watchdog();
                }
            })
        });

    // Reloads reach open connections through `generation`; the drain waits until every
    // connection has dropped its `shutdown` receiver.
    let (generation, generation_rx) = watch::channel(state.load_full());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let shared = conn::Shared {
        generation: generation_rx,
        shutdown: shutdown_rx,
        connections: Arc::new(Semaphore::new(max_connections)),
    };
    let pending = Arc::new(Semaphore::new(max_pending_handshakes));
    let addresses = Arc::new(addresses::AddressTable::default());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (io, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Over a limit, the connection is closed at once: answering 503 would first
                // cost a TLS handshake, which is what an overload cannot afford.
                let address = match addresses.admit(peer, &state.load().config) {
                    Ok(slot) => slot,
                    Err(full) => {
                        tracing::warn!(peer = ?peer, held = full.held, limit = full.limit, "per-address connection limit reached (limits.max_connections_per_address); closing new connection");
                        continue;
                    }
                };
                let Ok(pending) = Arc::clone(&pending).try_acquire_owned() else {
                    tracing::warn!(peer = ?peer, max_pending_handshakes, "pending handshake limit reached (limits.max_pending_handshakes); closing new connection");
                    continue;
                };
                let admitted = conn::Admitted { peer, pending, address };
                let shared = shared.clone();
                tokio::spawn(async move {
                    match io {
                        Accepted::Tcp(s) => conn::serve(s, admitted, shared).await,
                        Accepted::Unix(s) => conn::serve(s, admitted, shared).await,
                    }
                });
            }
            _ = hup.recv() => reload(&config_path, &state, &generation, &engine, notifier.as_ref()).await,
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
        }
    }

    if let Some(n) = &notifier {
        let _ = n.stopping();
    }
    drop(listener);
    drop(shared);
    shutdown.send_replace(true);
    tracing::info!(
        grace_s = shutdown_grace.as_secs_f64(),
        "draining in-flight requests"
    );
    tokio::select! {
        drained = tokio::time::timeout(shutdown_grace, shutdown.closed()) => match drained {
            Ok(()) => tracing::info!("all connections closed"),
            Err(_) => tracing::warn!("shutdown grace period over; closing remaining connections"),
        },
        // An operator who signals again wants out now.
        _ = term.recv() => tracing::warn!("second SIGTERM: closing remaining connections"),
        _ = int.recv() => tracing::warn!("second SIGINT: closing remaining connections"),
    }
    if let Some(task) = watchdog {
        task.abort();
    }
    if let Some(admin) = admin {
        admin.shutdown().await;
    }
    if let Some(log) = audit_log {
        crate::audit::lifecycle::stop(log, "signal").await;
    }
    if let Some(telemetry) = telemetry {
        telemetry.shutdown().await;
    }
    Ok(())
}

/// SIGHUP: builds a new state from the file and swaps it in; on any error the old state stays.
/// Open connections learn of the new state through `generation` and re-check themselves
/// against it at once (see `conn`).
async fn reload(
    path: &Path,
    state: &ArcSwap<State>,
    generation: &watch::Sender<Arc<State>>,
    engine: &Arc<dyn Engine>,
    notifier: Option<&Notifier>,
) {
    tracing::info!(config = %path.display(), "SIGHUP: reloading configuration and certificates");
    if let Some(n) = notifier {
        let _ = n.reloading();
    }
    let current = state.load_full();
    let (path_owned, engine) = (path.to_path_buf(), engine.clone());
    let result = tokio::task::spawn_blocking(move || current.reload(&path_owned, engine)).await;
    match result {
        Ok(Ok((next, warnings))) => {
            for warning in warnings {
                tracing::warn!("{warning}");
            }
            let next = Arc::new(next);
            state.store(Arc::clone(&next));
            generation.send_replace(next);
            tracing::info!(
                "reload complete: new connections use the new configuration; open connections \
                 are re-checked against it"
            );
            let log = state.load().audit_log.clone();
            if let Some(log) = log {
                let hash = crate::audit::config_hash(path);
                crate::audit::lifecycle::reloaded(&log, &hash, None).await;
            }
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "reload failed; keeping the previous configuration");
            let log = state.load().audit_log.clone();
            if let Some(log) = log {
                let hash = crate::audit::config_hash(path);
                crate::audit::lifecycle::reloaded(&log, &hash, Some(e.to_string())).await;
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "reload task failed; keeping the previous configuration")
        }
    }
    if let Some(n) = notifier {
        let _ = n.ready();
    }
}

/// Prints the start-up line to stdout and flushes it.
fn announce(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

enum Listener {
    Tcp(TcpListener, SocketAddr),
    /// The path, and whether we created the socket file (and so remove it at exit); a socket
    /// passed by systemd belongs to its `.socket` unit.
    Unix(UnixListener, PathBuf, bool),
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Listener {
    async fn bind(config: &ListenerConfig) -> Result<Listener, ServerError> {
        let address = &config.address;
        let err = |source| ServerError::Bind {
            address: address.to_string(),
            source,
        };
        match address {
            ListenAddress::Systemd => Self::inherited(&config.mode),
            ListenAddress::Tcp(addr) => {
                let listener = TcpListener::bind(addr).await.map_err(err)?;
                let local = listener.local_addr().map_err(err)?;
                Ok(Listener::Tcp(listener, local))
            }
            ListenAddress::Unix(path) => {
                // A socket file left by a previous run would make bind fail; remove only sockets.
                if let Ok(meta) = std::fs::symlink_metadata(path)
                    && std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type())
                {
                    let _ = std::fs::remove_file(path);
                }
                let listener = UnixListener::bind(path).map_err(err)?;
                Ok(Listener::Unix(listener, path.clone(), true))
            }
        }
    }

    /// The socket systemd passed, held to the same rules as a configured address: TLS mode
    /// is TCP only, and plain-HTTP proxy mode listens on loopback or a Unix socket unless
    /// `danger_allow_non_loopback_proxy` says otherwise.
    fn inherited(mode: &ListenerMode) -> Result<Listener, ServerError> {
        let err = |source| ServerError::Bind {
            address: "systemd".into(),
            source,
        };
        match activation::take()? {
            activation::Inherited::Tcp(listener, addr) => {
                if let ListenerMode::Proxy(proxy) = mode
                    && !addr.ip().is_loopback()
                    && !proxy.danger_allow_non_loopback_proxy
                {
                    return Err(ServerError::ActivatedMode(format!(
                        "the passed socket {addr} is not a loopback address; plain HTTP in \
                         proxy mode needs listener.proxy.danger_allow_non_loopback_proxy = true \
                         there"
                    )));
                }
                listener.set_nonblocking(true).map_err(err)?;
                Ok(Listener::Tcp(
                    TcpListener::from_std(listener).map_err(err)?,
                    addr,
                ))
            }
            activation::Inherited::Unix(listener, path) => {
                if let ListenerMode::Tls(_) = mode {
                    return Err(ServerError::ActivatedMode(
                        "the passed socket is a Unix socket, which needs listener.mode = \"proxy\""
                            .into(),
                    ));
                }
                listener.set_nonblocking(true).map_err(err)?;
                let path = path.unwrap_or_else(|| PathBuf::from("(unnamed)"));
                Ok(Listener::Unix(
                    UnixListener::from_std(listener).map_err(err)?,
                    path,
                    false,
                ))
            }
        }
    }

    fn local(&self) -> String {
        match self {
            Listener::Tcp(_, addr) => addr.to_string(),
            Listener::Unix(_, path, _) => format!("unix:{}", path.display()),
        }
    }

    async fn accept(&self) -> std::io::Result<(Accepted, Option<SocketAddr>)> {
        match self {
            Listener::Tcp(l, _) => {
                let (s, peer) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Accepted::Tcp(s), Some(peer)))
            }
            Listener::Unix(l, ..) => {
                let (s, _) = l.accept().await?;
                Ok((Accepted::Unix(s), None))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path, true) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}
