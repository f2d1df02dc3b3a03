//! `[limits]`: request, connection and time bounds.

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::Deserialize;

use super::{Invalid, duration_field, invalid, nonzero};

/// `[limits]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_body_bytes: Option<u64>,
    pub header_read_timeout: Option<String>,
    pub max_header_bytes: Option<u64>,
    pub request_deadline: Option<String>,
    pub max_connections: Option<u64>,
    pub max_concurrent_requests: Option<u64>,
    pub shutdown_grace: Option<String>,
    pub max_pending_handshakes: Option<u64>,
    pub max_connections_per_address: Option<u64>,
    pub connection_idle_timeout: Option<String>,
    pub http2_preface_timeout: Option<String>,
    pub max_connection_age: Option<String>,
    pub body_read_timeout: Option<String>,
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_body_bytes: NonZeroUsize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub request_deadline: Duration,
    pub max_connections: NonZeroUsize,
    pub max_concurrent_requests: NonZeroUsize,
    pub shutdown_grace: Duration,
    /// Connections still in their TLS handshake. They hold no `max_connections` slot (a
    /// client that never finishes its handshake must not lock out those that do), so they
    /// have their own cap.
    pub max_pending_handshakes: NonZeroUsize,
    /// Connections (pending and open together) from one client address (IPv6: one /64);
    /// trusted proxies and Unix-socket peers are exempt. Keeps one client from taking
    /// every slot.
    pub max_connections_per_address: NonZeroUsize,
    /// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY), so
    /// idle connections do not hold `max_connections` slots.
    pub connection_idle_timeout: Duration,
    /// An HTTP/2 connection whose client preface has not arrived this long after the TLS
    /// handshake is closed.
    pub http2_preface_timeout: Duration,
    /// A connection this old is drained (HTTP/1.1: `Connection: close` on its next
    /// response; HTTP/2: GOAWAY), and closed `shutdown_grace` later. Bounds how long a
    /// connection lives on a certificate checked once.
    pub max_connection_age: Duration,
    /// Time allowed to receive a request body, counted once the request holds its tenant's
    /// concurrency slot and a server slot: a slow upload holds them no longer.
    pub body_read_timeout: Duration,
}

impl TryFrom<RawLimits> for Limits {
    type Error = Invalid;

    fn try_from(raw: RawLimits) -> Result<Self, Invalid> {
        let max_header_bytes = match raw.max_header_bytes {
            None => 16 * 1024,
            // hyper cannot read headers into a buffer smaller than 8 KiB.
            Some(v @ 8192..=1_048_576) => v as usize,
            Some(_) => {
                return Err(invalid(
                    "limits.max_header_bytes",
                    "must be between 8192 and 1048576",
                ));
            }
        };
        let limits = Limits {
            max_body_bytes: nonzero("limits.max_body_bytes", raw.max_body_bytes, 4 * 1024 * 1024)?,
            header_read_timeout: duration_field(
                "limits.header_read_timeout",
                raw.header_read_timeout,
                Duration::from_secs(10),
            )?,
            max_header_bytes,
            request_deadline: duration_field(
                "limits.request_deadline",
                raw.request_deadline,
                Duration::from_secs(300),
            )?,
            max_connections: nonzero("limits.max_connections", raw.max_connections, 1024)?,
            max_concurrent_requests: nonzero(
                "limits.max_concurrent_requests",
                raw.max_concurrent_requests,
                256,
            )?,
            shutdown_grace: duration_field(
                "limits.shutdown_grace",
                raw.shutdown_grace,
                Duration::from_secs(30),
            )?,
            max_pending_handshakes: nonzero(
                "limits.max_pending_handshakes",
                raw.max_pending_handshakes,
                256,
            )?,
            max_connections_per_address: nonzero(
                "limits.max_connections_per_address",
                raw.max_connections_per_address,
                64,
            )?,
            connection_idle_timeout: duration_field(
                "limits.connection_idle_timeout",
                raw.connection_idle_timeout,
                Duration::from_secs(60),
            )?,
            http2_preface_timeout: duration_field(
                "limits.http2_preface_timeout",
                raw.http2_preface_timeout,
                Duration::from_secs(5),
            )?,
            max_connection_age: duration_field(
                "limits.max_connection_age",
                raw.max_connection_age,
                Duration::from_secs(3600),
            )?,
            body_read_timeout: duration_field(
                "limits.body_read_timeout",
                raw.body_read_timeout,
                Duration::from_secs(30),
            )?,
        };
        for (path, d) in [
            ("limits.header_read_timeout", limits.header_read_timeout),
            ("limits.request_deadline", limits.request_deadline),
            (
                "limits.connection_idle_timeout",
                limits.connection_idle_timeout,
            ),
            ("limits.http2_preface_timeout", limits.http2_preface_timeout),
            ("limits.max_connection_age", limits.max_connection_age),
            ("limits.body_read_timeout", limits.body_read_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(path, "must be greater than zero"));
            }
        }
        Ok(limits)
    }
}

impl Default for Limits {
    fn default() -> Self {
        match Limits::try_from(RawLimits::default()) {
            Ok(limits) => limits,
            // The defaults above are constants that validate; this arm is unreachable.
            Err(_) => Limits {
                max_body_bytes: NonZeroUsize::MIN,
                header_read_timeout: Duration::from_secs(10),
                max_header_bytes: 16 * 1024,
                request_deadline: Duration::from_secs(300),
                max_connections: NonZeroUsize::MIN,
                max_concurrent_requests: NonZeroUsize::MIN,
                shutdown_grace: Duration::from_secs(30),
                max_pending_handshakes: NonZeroUsize::MIN,
                max_connections_per_address: NonZeroUsize::MIN,
                connection_idle_timeout: Duration::from_secs(60),
                http2_preface_timeout: Duration::from_secs(5),
                max_connection_age: Duration::from_secs(3600),
                body_read_timeout: Duration::from_secs(30),
            },
        }
    }
}
