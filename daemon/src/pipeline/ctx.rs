//! [`RequestCtx`]: what the phases of one request learn and hand on, passed explicitly.

use std::sync::Arc;

use airlock_policy::Tenant;
use hyper::Request;

use crate::access::Principal;
use crate::audit::trail::Trail;
use crate::identity::ConnInfo;
use crate::metrics::RequestNote;
use crate::telemetry::RequestSpan;

use crate::api::X_REQUEST_ID;

/// One request's context, from `handle` through every phase.
#[derive(Debug)]
pub struct RequestCtx {
    /// The request id (the server's `x-request-id`), for the engine's scheduling and logs.
    pub request_id: String,
    /// The connection's identity: peer, client certificate, forwarded client.
    pub conn: Arc<ConnInfo>,
    /// Who the request acts for, once the `authn` phase has run (open routes: never).
    pub principal: Option<Principal>,
    /// The request's audit trail; `None` for open routes and without an `[audit]` section.
    pub trail: Option<Arc<Trail>>,
    /// What the path learns for the request's metrics series (the model).
    pub note: RequestNote,
    /// The tenant's limits as the shared store reported them at admission
    /// (`[cluster.limits]`), for the `x-ratelimit-*` headers; `None`: ask the local limiter.
    pub shared_status: Option<airlock_policy::ratelimit::RateStatus>,
    /// The request's trace span (`[telemetry]`); records nothing when telemetry is off.
    pub span: RequestSpan,
}

impl RequestCtx {
    /// The context of `req`, with its audit trail (see `audit::open`).
    pub fn new<B>(
        req: &Request<B>,
        conn: Arc<ConnInfo>,
        trail: Option<Arc<Trail>>,
        span: RequestSpan,
    ) -> Self {
        let request_id = req
            .headers()
            .get(X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| crate::api::random_uuid().to_string(), str::to_owned);
        RequestCtx {
            request_id,
            conn,
            principal: None,
            trail,
            shared_status: None,
            note: RequestNote::default(),
            span,
        }
    }

    /// The authenticated tenant's policy (limits, filters); `None` before authentication,
    /// on open routes, and for legacy certificate tenants.
    pub fn policy(&self) -> Option<&Arc<Tenant>> {
        self.principal.as_ref().and_then(|p| p.policy.as_ref())
    }

    /// The tenant requests are charged to (`anonymous` before authentication).
    pub fn tenant(&self) -> &str {
        self.principal
            .as_ref()
            .map_or("anonymous", |p| p.tenant.as_str())
    }
}
