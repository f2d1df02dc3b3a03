//! What a connection's timers watch: whether a request is in flight and since when it has
//! been idle, and how many bytes the client has sent (the HTTP/2 preface check).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::super::app::BoxBody;

/// Requests in flight on one connection, and when the last one ended.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<(usize, Instant)>,
}

impl Activity {
    pub fn new(now: Instant) -> Arc<Activity> {
        Arc::new(Activity {
            state: Mutex::new((0, now)),
        })
    }

    /// A request starts; it counts until the guard (carried by its response body) drops.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0 += 1;
        Busy {
            activity: Arc::clone(self),
        }
    }

    /// `None` when the connection has been idle for `timeout` at `now`; otherwise when to
    /// look again.
    pub fn idle_deadline(&self, timeout: Duration, now: Instant) -> Option<Instant> {
        let (in_flight, since) = *self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if in_flight > 0 {
            return Some(now + timeout);
        }
        let deadline = since + timeout;
        (deadline > now).then_some(deadline)
    }
}

/// One request in flight (see [`Activity::begin`]).
#[derive(Debug)]
pub struct Busy {
    activity: Arc<Activity>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self
            .activity
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.0 = state.0.saturating_sub(1);
        state.1 = Instant::now();
    }
}

/// A response body that keeps its request counted as in flight until hyper has sent it
/// (or dropped it): a long stream is not an idle connection.
pub struct Tracked {
    inner: BoxBody,
    _busy: Busy,
}

impl Tracked {
    pub fn new(inner: BoxBody, busy: Busy) -> Tracked {
        Tracked { inner, _busy: busy }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's transport, counting the bytes the client sends.
pub struct Counted<IO> {
    inner: IO,
    received: Arc<AtomicU64>,
}

impl<IO> Counted<IO> {
    pub fn new(inner: IO, received: Arc<AtomicU64>) -> Counted<IO> {
        Counted { inner, received }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            this.received.fetch_add(read as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_only_with_nothing_in_flight() {
        let start = Instant::now();
        let timeout = Duration::from_secs(10);
        let activity = Activity::new(start);
        assert_eq!(
            activity.idle_deadline(timeout, start),
            Some(start + timeout)
        );
        assert_eq!(activity.idle_deadline(timeout, start + timeout), None);

        let busy = activity.begin();
        let later = start + Duration::from_secs(30);
        assert_eq!(
            activity.idle_deadline(timeout, later),
            Some(later + timeout),
            "a request in flight is not idle, however long it runs"
        );
        drop(busy);
        let now = Instant::now();
        let next = activity.idle_deadline(timeout, now).unwrap();
        assert!(next > now && next <= now + timeout);
    }
}
