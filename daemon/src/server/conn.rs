//! One accepted connection, from handshake to close.
//!
//! 1. TLS handshake, within `listener.handshake_timeout`, holding a *pending* slot
//!    (`limits.max_pending_handshakes`), not a connection slot: clients that never finish a
//!    handshake cannot lock out those that do.
//! 2. A connection slot (`limits.max_connections`), taken only once the handshake is done;
//!    none free: the connection is closed.
//! 3. HTTP/1.1 or HTTP/2 (by ALPN) with hyper, driven by [`drive`], which closes or drains
//!    the connection when:
//!    * a reload brings a state under which it would no longer be accepted: its client
//!      certificate is re-checked against the new CA bundle and CRLs at once (within
//!      milliseconds of the reload), and a connection that fails is closed, requests in
//!      flight included. One that passes serves its next requests on the new state (tenant
//!      rules, limits);
//!    * no request has been in flight for `limits.connection_idle_timeout` (HTTP/2: GOAWAY);
//!    * an HTTP/2 client has not sent its preface within `limits.http2_preface_timeout`;
//!    * it is `limits.max_connection_age` old: drained (HTTP/1.1: `Connection: close` on the
//!      next response; HTTP/2: GOAWAY), then closed `limits.shutdown_grace` later;
//!    * the server shuts down: drained (the server enforces the grace period).
//!
//! The per-address slot (`super::addresses`) is held from accept to close.

mod activity;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, sleep_until};

use super::addresses::AddressSlot;
use super::request;
use super::state::State;
use crate::config::ListenerMode;
use crate::identity::forwarded::is_trusted_peer;
use crate::identity::{CertIdentity, ConnInfo};
use activity::{Activity, Counted, Tracked};

/// HTTP/2 streams one connection may have open. Not `max_concurrent_requests`: that limit
/// is the application's, answered promptly with 503; a lower stream cap would instead make
/// clients queue silently. This only bounds a single connection's stream flood.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// The HTTP/2 client connection preface (`PRI * HTTP/2.0…`) is 24 bytes.
const H2_PREFACE_LEN: u64 = 24;

/// Which HTTP versions to speak on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// What every connection shares with the server.
#[derive(Clone)]
pub struct Shared {
    /// The current state; a reload sends the next one.
    pub generation: watch::Receiver<Arc<State>>,
    /// Becomes `true` (or the sender goes away) when the server shuts down. The server
    /// waits for every receiver to be dropped, i.e. for every connection to end.
    pub shutdown: watch::Receiver<bool>,
    /// `limits.max_connections` slots.
    pub connections: Arc<Semaphore>,
}

/// What the accept loop hands a connection: its peer and the slots it already holds.
pub struct Admitted {
    pub peer: Option<SocketAddr>,
    /// A `limits.max_pending_handshakes` slot, released once the handshake is over.
    pub pending: OwnedSemaphorePermit,
    /// The per-address slot (`None`: exempt), held until the connection closes.
    pub address: Option<AddressSlot>,
}

/// The state a connection serves its requests on, swapped when a reload re-checks it.
struct Generation {
    state: Arc<State>,
    conn: Arc<ConnInfo>,
}

/// Serves a TCP or Unix connection until it closes.
pub async fn serve<IO>(io: IO, admitted: Admitted, mut shared: Shared)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Admitted {
        peer,
        pending,
        address: _address,
    } = admitted;
    // Marks this generation as seen, so only a later reload triggers a re-check.
    let state = shared.generation.borrow_and_update().clone();
    match &state.tls {
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(state.config.listener.handshake_timeout, acceptor.accept(io));
            // A server shutting down does not wait for handshakes still under way.
            let handshaken = tokio::select! {
                done = handshake => done,
                _ = shared.shutdown.changed() => return,
            };
            let stream = match handshaken {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::info!(peer = ?peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(peer = ?peer, "TLS handshake timed out");
                    return;
                }
            };
            drop(pending);
            let Some(slot) = connection_slot(&shared, peer) else {
                return;
            };
            let (_, session) = stream.get_ref();
            let alpn = session
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned());
            let chain: Vec<CertificateDer<'static>> = session
                .peer_certificates()
                .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default();
            let tls_client_cert = match chain.first() {
                None => None,
                Some(leaf) => match CertIdentity::from_der(leaf) {
                    Ok(identity) => Some(identity),
                    Err(e) => {
                        // rustls verified it, so this is a parser disagreement: refuse.
                        tracing::warn!(peer = ?peer, error = %e, "verified client certificate could not be parsed");
                        return;
                    }
                },
            };
            let protocol = if alpn.as_deref() == Some("h2") {
                Protocol::Http2
            } else {
                Protocol::Http1
            };
            let conn = ConnInfo {
                peer_addr: peer,
                trusted_proxy: false,
                tls_client_cert,
                alpn,
                forwarded_client_cert: None,
                forwarded_for: None,
            };
            let _slot = slot;
            drive(stream, chain, conn, protocol, state, shared).await;
        }
        None => {
            drop(pending);
            let Some(slot) = connection_slot(&shared, peer) else {
                return;
            };
            let trusted_proxy = match &state.config.listener.mode {
                ListenerMode::Proxy(proxy) => is_trusted_peer(peer, proxy),
                ListenerMode::Tls(_) => false,
            };
            let conn = ConnInfo {
                peer_addr: peer,
                trusted_proxy,
                tls_client_cert: None,
                alpn: None,
                forwarded_client_cert: None,
                forwarded_for: None,
            };
            let _slot = slot;
            // Reverse proxies speak HTTP/1.1 upstream; no h2c.
            drive(io, Vec::new(), conn, Protocol::Http1, state, shared).await;
        }
    }
}

/// A `limits.max_connections` slot, or `None` (logged) when all are taken. Taken after the
/// handshake: the connection is then closed without a response, since answering costs what
/// an overload cannot afford.
fn connection_slot(shared: &Shared, peer: Option<SocketAddr>) -> Option<OwnedSemaphorePermit> {
    match Arc::clone(&shared.connections).try_acquire_owned() {
        Ok(slot) => Some(slot),
        Err(_) => {
            tracing::warn!(peer = ?peer, "connection limit reached (limits.max_connections); closing new connection");
            None
        }
    }
}

/// Serves HTTP on an established connection and enforces the rules in the module docs.
async fn drive<IO>(
    io: IO,
    chain: Vec<CertificateDer<'static>>,
    conn: ConnInfo,
    protocol: Protocol,
    state: Arc<State>,
    mut shared: Shared,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let started = Instant::now();
    let peer = conn.peer_addr;
    let limits = &state.config.limits;
    // The protocol is fixed up front (by ALPN) so that hyper never waits, without a
    // deadline, for a preface to guess the version from.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = match protocol {
        Protocol::Http1 => builder.http1_only(),
        Protocol::Http2 => builder.http2_only(),
    };

    let activity = Activity::new(started);
    let received = Arc::new(AtomicU64::new(0));
    let current = Arc::new(ArcSwap::from_pointee(Generation {
        state: Arc::clone(&state),
        conn: Arc::new(conn),
    }));
    let service = {
        let (current, activity) = (Arc::clone(&current), Arc::clone(&activity));
        service_fn(move |req| {
            // Each request runs on the connection's generation as of its arrival.
            let generation = current.load_full();
            let busy = activity.begin();
            async move {
                let state = Arc::clone(&generation.state);
                let conn = Arc::clone(&generation.conn);
                let resp = request::serve(state, conn, req).await;
                Ok::<_, std::convert::Infallible>(resp.map(|body| Tracked::new(body, busy)))
            }
        })
    };
    let connection = builder
        .serve_connection(
            TokioIo::new(Counted::new(io, Arc::clone(&received))),
            service,
        )
        .into_owned();
    tokio::pin!(connection);

    let mut state = state;
    let far = started + Duration::from_secs(100 * 365 * 24 * 3600);
    let mut idle_check = started + state.config.limits.connection_idle_timeout;
    let mut preface_due =
        (protocol == Protocol::Http2).then(|| started + state.config.limits.http2_preface_timeout);
    let (mut reloads_open, mut shutdown_open) = (true, true);
    let mut draining = false;
    let mut close_at: Option<Instant> = None;
    loop {
        let limits = &state.config.limits;
        let age_due = started + limits.max_connection_age;
        // Biased, the reload first: when a new generation and a new request are both ready,
        // the connection switches (or closes) before the request is dispatched. Unbiased, a
        // request sent after "reload complete" could still be served under the old rules.
        tokio::select! {
            biased;
            changed = shared.generation.changed(), if reloads_open => {
                if changed.is_err() {
                    reloads_open = false;
                    continue;
                }
                let next = shared.generation.borrow_and_update().clone();
                let previous = current.load_full();
                match recheck(&next, &chain, &previous.conn) {
                    Ok(conn) => {
                        current.store(Arc::new(Generation {
                            state: Arc::clone(&next),
                            conn: Arc::new(conn),
                        }));
                        state = next;
                    }
                    Err(reason) => {
                        tracing::info!(peer = ?peer, reason, "closing a connection the reloaded configuration no longer accepts");
                        return;
                    }
                }
            }
            _ = shared.shutdown.changed(), if shutdown_open && !draining => {
                // A value or a dropped sender: either way the server is stopping. The
                // server's own grace period bounds the drain.
                shutdown_open = false;
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            () = sleep_until(idle_check), if !draining => {
                let now = Instant::now();
                match activity.idle_deadline(limits.connection_idle_timeout, now) {
                    Some(next) => idle_check = next,
                    None => {
                        tracing::debug!(peer = ?peer, "idle connection: closing");
                        draining = true;
                        close_at = Some(now + limits.shutdown_grace);
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            () = sleep_until(age_due), if !draining => {
                tracing::debug!(peer = ?peer, "connection reached limits.max_connection_age: draining");
                draining = true;
                close_at = Some(Instant::now() + limits.shutdown_grace);
                connection.as_mut().graceful_shutdown();
            }
            () = sleep_until(preface_due.unwrap_or(far)), if preface_due.is_some() => {
                preface_due = None;
                if received.load(Ordering::Relaxed) < H2_PREFACE_LEN {
                    tracing::info!(peer = ?peer, "HTTP/2 client preface not received within limits.http2_preface_timeout: closing");
                    return;
                }
            }
            () = sleep_until(close_at.unwrap_or(far)), if close_at.is_some() => {
                tracing::info!(peer = ?peer, "drained connection still busy after limits.shutdown_grace: closing");
                return;
            }
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(peer = ?peer, error = %e, "connection ended with an error");
                }
                return;
            }
        }
    }
}

/// Whether a connection opened under an earlier state is still acceptable under `next`,
/// and if so its transport facts under it. TLS: its client certificate chain must pass the
/// new verifier (CA bundle, CRLs, validity), exactly as a new handshake would. Proxy mode:
/// whether the peer is a trusted proxy is decided again.
fn recheck(
    next: &State,
    chain: &[CertificateDer<'static>],
    conn: &ConnInfo,
) -> Result<ConnInfo, &'static str> {
    if let Some(verifier) = &next.client_verifier
        && !crate::tls::still_valid(verifier.as_ref(), chain)
    {
        return Err("client certificate refused by the reloaded CA bundle or CRLs");
    }
    let mut conn = conn.clone();
    if let ListenerMode::Proxy(proxy) = &next.config.listener.mode {
        conn.trusted_proxy = is_trusted_peer(conn.peer_addr, proxy);
    }
    Ok(conn)
}
