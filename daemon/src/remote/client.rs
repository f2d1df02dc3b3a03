//! HTTP/1.1 exchanges with upstreams: TCP + TLS (the pool's CA and client certificate) or a
//! Unix socket, with a bounded set of kept-alive connections per upstream ([`Idle`]), so
//! that under load a request does not pay a handshake (TLS 1.3: a round trip and about half
//! a millisecond of CPU on each side).
//!
//! What keeps reuse honest:
//! * **Cancellation stays exact.** A connection is kept only after its response body was
//!   read to the end and hyper has it ready for another request (so the response allowed
//!   keep-alive). An [`Exchange`] dropped before that (the client went away, an error, a
//!   timeout) drops its connection, which closes the socket: how every OpenAI-compatible
//!   server learns to stop generating.
//! * **A stale connection is retried once.** An upstream may close a kept connection while
//!   it idles (its own keep-alive timeout, a restart). When a request on a kept connection
//!   fails before any response head, because hyper did not send it or the connection closed
//!   under it, the request goes once more on a new connection to the same upstream, and
//!   the stale attempt counts nothing against the upstream's health. A failure on a new
//!   connection is reported as before (the engine tries another upstream and counts it).
//! * **Bounds:** `keepalive_connections` idle per upstream, each at most
//!   `keepalive_timeout` idle, none reused past [`MAX_REUSE_AGE`]; dropped when their
//!   upstream is ejected and when the pool goes away.
//!
//! Health probes use a connection of their own each time (they test that the upstream
//! accepts new connections) and never keep it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use super::idle::Idle;
use crate::config::UpstreamAddr;

/// Most bytes of an error response (or a health probe's body) read: enough for an OpenAI
/// error object, never a flood.
pub(super) const MAX_ERROR_BODY: usize = 64 * 1024;

/// No connection is reused once this old: a connection checked the upstream's certificate
/// and resolved its host once, and a stream of requests could otherwise keep it forever
/// (past the certificate's expiry, or an address change of the host). One handshake every
/// five minutes per connection costs nothing.
pub(super) const MAX_REUSE_AGE: Duration = Duration::from_secs(300);

/// How long a finished exchange may take to reach the end of its body (the last chunk
/// follows `[DONE]` at once from every known server) and to be ready for the next request;
/// past it the connection is closed, not kept.
const RELEASE_WAIT: Duration = Duration::from_secs(1);

/// Bytes a finished exchange may still carry after its last event (blank lines, a
/// keep-alive comment); more and the connection is closed, not kept.
const TRAILING_BYTES: usize = 4096;

/// Why an exchange failed before a response head arrived.
#[derive(Debug, thiserror::Error)]
pub(super) enum ClientError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("no response head within {0:?}")]
    FirstByteTimeout(Duration),
    #[error("HTTP: {0}")]
    Http(String),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How many connections a pool keeps, and for how long.
#[derive(Debug, Clone, Copy)]
pub(super) struct Keepalive {
    /// Most idle connections per upstream (0: a connection per request).
    pub connections: usize,
    /// Longest a connection idles before it is closed.
    pub timeout: Duration,
}

/// One connection: hyper's handle for requests and the task that drives the socket.
/// Dropping it ends the task, which closes the socket.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
    opened: Instant,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    /// Whether a kept connection may take a request at `now`: open, idle, young enough.
    fn reusable(&self, now: Instant) -> bool {
        !self.sender.is_closed()
            && self.sender.is_ready()
            && now.saturating_duration_since(self.opened) < MAX_REUSE_AGE
    }
}

/// How the pool reaches its upstreams.
pub(super) struct Client {
    /// `None` when every upstream is a Unix socket.
    tls: Option<TlsConnector>,
    /// The name upstream certificates must carry, when not each upstream's host.
    server_name: Option<ServerName<'static>>,
    connect_timeout: Duration,
    idle: Idle<Conn>,
}

/// A response head and the connection it arrived on. Dropping it before [`Client::release`]
/// closes the connection (the upstream's signal to stop generating).
pub(super) struct Exchange {
    pub response: http::Response<Incoming>,
    conn: Option<Conn>,
    /// The body was read to its end.
    ended: bool,
    /// It went on a kept connection: none was opened for it.
    pub reused: bool,
}

impl Exchange {
    /// The next frame of the response body; `None` at its end.
    pub async fn frame(&mut self) -> Option<Result<Frame<Bytes>, hyper::Error>> {
        if self.ended {
            return None;
        }
        let frame = self.response.body_mut().frame().await;
        self.ended = frame.is_none();
        frame
    }

    /// Reads at most `limit` bytes of the body (the rest is left unread), each piece within
    /// `idle`.
    pub async fn read_bounded(&mut self, limit: usize, idle: Duration) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < limit {
            match timeout(idle, self.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        let room = limit - out.len();
                        out.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                _ => break,
            }
        }
        out
    }

    /// Reads the body to its end, `limit` bytes at most; whether it ended cleanly.
    async fn drain(&mut self, limit: usize) -> bool {
        let mut read = 0usize;
        loop {
            match self.frame().await {
                None => return true,
                Some(Err(_)) => return false,
                Some(Ok(frame)) => {
                    read += frame.data_ref().map_or(0, Bytes::len);
                    if read > limit {
                        return false;
                    }
                }
            }
        }
    }
}

/// How a send on one connection failed.
enum Failure {
    /// A kept connection the upstream had closed: the request was not sent, or the
    /// connection closed before any response head.
    Stale(String),
    Other(ClientError),
}

impl Client {
    pub(super) fn new(
        tls: Option<Arc<rustls::ClientConfig>>,
        server_name: Option<ServerName<'static>>,
        connect_timeout: Duration,
        upstreams: usize,
        keepalive: Keepalive,
    ) -> Client {
        Client {
            tls: tls.map(TlsConnector::from),
            server_name,
            connect_timeout,
            idle: Idle::new(upstreams, keepalive.connections, keepalive.timeout),
        }
    }

    /// Sends `request` to upstream `i` (at `addr`), on a kept connection when one is ready
    /// (once more on a new one if that turns out stale), else on a new connection, and waits
    /// for the response head, `first_byte` at most per attempt.
    pub(super) async fn send(
        &self,
        i: usize,
        addr: &UpstreamAddr,
        request: http::Request<Full<Bytes>>,
        first_byte: Duration,
    ) -> Result<Exchange, ClientError> {
        let mut request = with_host(addr, request);
        let now = Instant::now();
        if let Some(conn) = self.idle.take(i, now, |c| c.reusable(now)) {
            let again = copy_request(&request);
            match exchange(conn, request, first_byte, true).await {
                Ok(exchange) => return Ok(exchange),
                Err(Failure::Other(e)) => return Err(e),
                Err(Failure::Stale(reason)) => {
                    tracing::debug!(upstream = %addr, reason = %reason, "remote pool: a kept connection was closed; sending on a new one");
                    request = again;
                }
            }
        }
        self.send_new(addr, request, first_byte).await
    }

    /// Sends `request` on a new connection (a health probe: never kept) and waits for the
    /// response head, `first_byte` at most.
    pub(super) async fn send_once(
        &self,
        addr: &UpstreamAddr,
        request: http::Request<Full<Bytes>>,
        first_byte: Duration,
    ) -> Result<Exchange, ClientError> {
        self.send_new(addr, with_host(addr, request), first_byte)
            .await
    }

    async fn send_new(
        &self,
        addr: &UpstreamAddr,
        request: http::Request<Full<Bytes>>,
        first_byte: Duration,
    ) -> Result<Exchange, ClientError> {
        let io = timeout(self.connect_timeout, self.connect(addr))
            .await
            .map_err(|_| ClientError::ConnectTimeout(self.connect_timeout))??;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let conn = Conn {
            sender,
            task: tokio::spawn(async move {
                let _ = connection.await;
            }),
            opened: Instant::now(),
        };
        exchange(conn, request, first_byte, false)
            .await
            .map_err(|failure| match failure {
                Failure::Stale(reason) => ClientError::Http(reason),
                Failure::Other(e) => e,
            })
    }

    /// Keeps `exchange`'s connection for upstream `i` when its response ends cleanly (within
    /// [`RELEASE_WAIT`], a few trailing bytes at most) and hyper has the connection ready for
    /// another request, which it has not when the response said `Connection: close`.
    /// Otherwise, or when the idle set is full, the connection is closed.
    pub(super) async fn release(&self, i: usize, mut exchange: Exchange) {
        if !self.idle.enabled() {
            return;
        }
        let ended = timeout(RELEASE_WAIT, exchange.drain(TRAILING_BYTES))
            .await
            .unwrap_or(false);
        let Some(mut conn) = exchange.conn.take() else {
            return;
        };
        drop(exchange);
        if !ended || !matches!(timeout(RELEASE_WAIT, conn.sender.ready()).await, Ok(Ok(()))) {
            return;
        }
        let now = Instant::now();
        if conn.reusable(now) {
            // Refused (full, or the pool closed meanwhile): dropped here, closed.
            let _ = self.idle.put(i, conn, now);
        }
    }

    /// Closes upstream `i`'s idle connections (it was ejected).
    pub(super) fn close_idle(&self, i: usize) {
        self.idle.clear(i);
    }

    /// Closes every idle connection and keeps none from now on (the pool is going away).
    pub(super) fn close(&self) {
        self.idle.close();
    }

    /// Closes the connections idle past `keepalive_timeout` at `now`; returns how many.
    pub(super) fn sweep(&self, now: Instant) -> usize {
        self.idle.sweep(now)
    }

    /// Idle connections kept for upstream `i`.
    #[cfg(test)]
    pub(super) fn idle_len(&self, i: usize) -> usize {
        self.idle.len(i)
    }

    async fn connect(&self, addr: &UpstreamAddr) -> Result<Box<dyn Io>, ClientError> {
        let connect = |e: std::io::Error| ClientError::Connect(e.to_string());
        match addr {
            UpstreamAddr::Unix(path) => {
                Ok(Box::new(UnixStream::connect(path).await.map_err(connect)?))
            }
            UpstreamAddr::Https { host, port } => {
                let Some(tls) = &self.tls else {
                    return Err(ClientError::Connect("no TLS client configured".into()));
                };
                let tcp = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(connect)?;
                let _ = tcp.set_nodelay(true);
                let name = match &self.server_name {
                    Some(name) => name.clone(),
                    None => ServerName::try_from(host.clone())
                        .map_err(|e| ClientError::Connect(format!("server name `{host}`: {e}")))?,
                };
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ClientError::Connect(format!("TLS: {e}")))?;
                Ok(Box::new(stream))
            }
        }
    }
}

/// `request` with the `Host` header of `addr`.
fn with_host(
    addr: &UpstreamAddr,
    mut request: http::Request<Full<Bytes>>,
) -> http::Request<Full<Bytes>> {
    let host = match addr {
        UpstreamAddr::Https { host, port } if host.contains(':') => format!("[{host}]:{port}"),
        UpstreamAddr::Https { host, port } => format!("{host}:{port}"),
        UpstreamAddr::Unix(_) => "localhost".to_owned(),
    };
    if let Ok(value) = http::HeaderValue::from_str(&host) {
        request.headers_mut().insert(http::header::HOST, value);
    }
    request
}

/// A copy of `request` to send again (its body is shared bytes).
fn copy_request(request: &http::Request<Full<Bytes>>) -> http::Request<Full<Bytes>> {
    let mut copy = http::Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// Sends `request` on `conn` and waits for the response head, `first_byte` at most.
/// `reused`: `conn` is a kept connection (the caller retries a [`Failure::Stale`] of one).
async fn exchange(
    mut conn: Conn,
    request: http::Request<Full<Bytes>>,
    first_byte: Duration,
    reused: bool,
) -> Result<Exchange, Failure> {
    let sent = timeout(first_byte, conn.sender.try_send_request(request)).await;
    match sent {
        Err(_) => Err(Failure::Other(ClientError::FirstByteTimeout(first_byte))),
        Ok(Ok(response)) => Ok(Exchange {
            response,
            conn: Some(conn),
            ended: false,
            reused,
        }),
        Ok(Err(mut e)) => {
            let unsent = e.take_message().is_some();
            let error = e.into_error();
            if unsent || closed_early(&error) {
                Err(Failure::Stale(error.to_string()))
            } else {
                Err(Failure::Other(ClientError::Http(error.to_string())))
            }
        }
    }
}

/// Whether `e` says the connection closed (or was reset) before a response head: on a kept
/// connection, the upstream closed it while it idled.
fn closed_early(e: &hyper::Error) -> bool {
    if e.is_canceled() || e.is_closed() || e.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}
