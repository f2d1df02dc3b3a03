//! The admin listener: `GET /metrics` (Prometheus), `GET /status` (JSON, read by
//! `airlockd status`) and `GET /healthz`, on its own socket (`[admin]`, loopback unless
//! mutual TLS is configured). It runs as one task on the daemon's runtime, holds no tenant
//! credentials, and drains with the main server.

pub mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_engine::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::config::AdminConfig;
use crate::metrics;

/// Admin connections served at once: scrapers and operators, not clients.
const MAX_CONNECTIONS: usize = 32;
/// A handshake or request head slower than this is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight admin requests get at shutdown.
const DRAIN: Duration = Duration::from_secs(2);

/// What the admin routes read: the engine, the requests in flight, the audit log.
pub struct Sources {
    pub engine: Arc<dyn Engine>,
    /// Inference requests being served by the current configuration generation.
    pub in_flight: Box<dyn Fn() -> usize + Send + Sync>,
    /// Whether an audit log is configured (its health comes from the writer's metrics).
    pub audited: bool,
    /// The current configuration generation's readiness (what `/readyz` answers, with why).
    pub readiness: Box<dyn Fn() -> crate::app::Readiness + Send + Sync>,
}

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin.address: cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin.tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// The running admin listener.
pub struct AdminServer {
    local: SocketAddr,
    scheme: &'static str,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Binds `config.address` and starts serving; also records the loaded models for the
    /// metrics' model labels.
    pub async fn start(config: &AdminConfig, sources: Sources) -> Result<AdminServer, AdminError> {
        let tls = config.tls.as_ref().map(acceptor).transpose()?;
        let listener =
            TcpListener::bind(config.address)
                .await
                .map_err(|source| AdminError::Bind {
                    address: config.address,
                    source,
                })?;
        let local = listener.local_addr().map_err(|source| AdminError::Bind {
            address: config.address,
            source,
        })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, tls, Arc::new(sources), stopped));
        Ok(AdminServer {
            local,
            scheme,
            stop,
            task,
        })
    }

    /// `http://ADDR` or `https://ADDR`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.local)
    }

    /// Stops accepting, lets in-flight admin requests finish (briefly), and waits.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "admin listener task failed");
        }
    }
}

/// The admin TLS acceptor: the listener's rustls setup (client certificates verified),
/// HTTP/1.1 only.
fn acceptor(tls: &crate::config::TlsConfig) -> Result<TlsAcceptor, crate::tls::TlsError> {
    let mut config = (*crate::tls::server_config(tls)?).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    sources: Arc<Sources>,
    mut stopped: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    drop(stream);
                    continue;
                };
                let (tls, sources, watcher) = (tls.clone(), sources.clone(), graceful.watcher());
                tokio::spawn(async move {
                    let _permit = permit;
                    let service = service_fn(move |req| {
                        let sources = sources.clone();
                        async move { Ok::<_, Infallible>(route(&sources, &req)) }
                    });
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder.timer(TokioTimer::new()).header_read_timeout(IO_TIMEOUT);
                    match tls {
                        None => {
                            let conn = builder.serve_connection(TokioIo::new(stream), service);
                            let _ = watcher.watch(conn).await;
                        }
                        Some(acceptor) => {
                            match tokio::time::timeout(IO_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(stream)) => {
                                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                                    let _ = watcher.watch(conn).await;
                                }
                                Ok(Err(e)) => tracing::info!(peer = %peer, error = %e, "admin TLS handshake failed"),
                                Err(_) => tracing::info!(peer = %peer, "admin TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
            _ = stopped.changed() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("admin connections still open at shutdown; closing them");
    }
}

/// The admin routes; everything else is 404 (or 405 on a known path).
fn route<B>(sources: &Sources, req: &Request<B>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/status" | "/healthz") {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match path {
        "/metrics" => {
            let openmetrics =
                metrics::global().encode(&sources.engine.status(), (sources.in_flight)());
            // Prometheus asks for OpenMetrics; anyone else gets the classic text format.
            let wants_openmetrics = req
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/openmetrics-text"));
            if wants_openmetrics {
                body(openmetrics, metrics::OPENMETRICS_CONTENT_TYPE)
            } else {
                body(
                    metrics::to_text_format(&openmetrics),
                    metrics::TEXT_CONTENT_TYPE,
                )
            }
        }
        "/status" => {
            let report = status::Report::collect(sources);
            match serde_json::to_string_pretty(&report) {
                Ok(json) => body(json + "\n", "application/json"),
                Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("status: {e}\n")),
            }
        }
        _ => plain(StatusCode::OK, "ok\n"),
    }
}

fn body(text: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut resp = body(text.to_owned(), "text/plain; charset=utf-8");
    *resp.status_mut() = status;
    resp
}
