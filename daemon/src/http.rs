//! The HTTP application: OpenAI-compatible routes over the engine.
//!
//! [`handle`] serves one request and never fails: every error becomes a response in
//! OpenAI's error shape, in one place ([`error::ApiError::into_response`]). The server has
//! already done TLS, set `x-request-id` and opened the request's tracing span.
//!
//! The request path inside `handle`, in order (see `serve` for why each step sits where it
//! does): deadline → route (404/405) → authenticate (all routes but `/healthz`, `/readyz`)
//! → the tenant's concurrency slot → the server's concurrency slot → body (content type,
//! size limit, `body_read_timeout`) → parse and validate → engine.
//! The steps that need the parsed request (tenant policy on the model, token reservation,
//! prompt filter, audit admit) belong between "parse and validate" and the engine, i.e. in
//! front of `inference::complete`/`inference::start`.

mod audited;
mod body;
mod endpoints;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod gate;
mod inference;
mod openai;
mod response;
mod route;
mod sse;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body::Body;
use hyper::{Request, Response};

pub use error::{ApiError, ErrorObject};
use inference::RequestContext;
use route::Route;

use crate::app::App;
use crate::identity::ConnInfo;

/// The response body type of every route.
pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The request header carrying the request id (set by the server before `handle`).
const X_REQUEST_ID: &str = "x-request-id";

/// Serves one request. Generic over the body so tests can drive it without sockets; the
/// server passes `hyper::body::Incoming`.
pub async fn handle<B>(app: Arc<App>, conn: Arc<ConnInfo>, req: Request<B>) -> Response<BoxBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    // The deadline covers everything up to the response head: reading the body, waiting in
    // the engine queue, and for a non-streaming request the whole generation. A stream's
    // head goes out with its first token; from then on the client's pace and `max_tokens`
    // bound it, and a disconnect cancels it. Expiry drops `serve`, which cancels the engine
    // request.
    let deadline = app.settings.request_deadline;
    // Metrics: the route's fixed name (never the raw path) and what the path learns.
    let started = std::time::Instant::now();
    let route_label = route::resolve(req.method(), req.uri().path()).map_or("other", |r| r.label());
    let note = Arc::new(crate::metrics::RequestNote::default());
    // Audit wraps the whole request so that refusals at any step are recorded too; the
    // admission record itself is written last before the engine (`inference::submit`).
    let trail = audited::open(&app, &conn, &req);
    // Set by `serve` once authentication names a tenant with a policy.
    let mut limited = None;
    let served = crate::metrics::scope(
        Arc::clone(&note),
        audited::scope(
            trail.clone(),
            tokio::time::timeout(deadline, serve(&app, &conn, req, &mut limited)),
        ),
    )
    .await;
    let (mut resp, code) = match served {
        Ok(Ok(resp)) => (resp, None),
        Ok(Err(error)) => {
            if let ApiError::ContentPolicy { rule_id } = &error {
                crate::metrics::global().filter_action(rule_id, "deny", 1);
            }
            if let (ApiError::ContentPolicy { rule_id }, Some(trail)) = (&error, &trail) {
                trail.note_filter_rules(std::slice::from_ref(rule_id));
            }
            let code = error.object().code;
            (error.into_response(), code)
        }
        Err(_) => (ApiError::Timeout(deadline).into_response(), Some("timeout")),
    };
    // Only configured tenants name a series; anyone else counts as `unknown`.
    crate::metrics::global().request(
        limited.as_ref().map(|t| t.name.as_str()),
        note.model(),
        route_label,
        resp.status().as_u16(),
        started.elapsed(),
    );
    // The tenant's limits on every response after authentication, refusals included. A
    // rate-limit refusal already carries the figures from its own decision.
    if let Some(policy) = limited
        && !resp.headers().contains_key("x-ratelimit-limit-requests")
        && !resp.headers().contains_key("x-ratelimit-limit-tokens")
    {
        ratelimit_headers(resp.headers_mut(), &policy.limiter.status());
    }
    audited::finish(trail.as_deref(), resp, code).await
}

async fn serve<B>(
    app: &Arc<App>,
    conn: &ConnInfo,
    req: Request<B>,
    limited: &mut Option<Arc<airlock_policy::Tenant>>,
) -> Result<Response<BoxBody>, ApiError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    // Routing first: whether a route is open decides whether it needs authentication.
    let route = route::resolve(req.method(), req.uri().path())?;

    // Deny by default: one authentication step for every route not on the open list.
    let principal = if route.is_open() {
        None
    } else {
        Some(app.access.authenticate(conn, req.headers()).await?)
    };
    *limited = principal.as_ref().and_then(|p| p.policy.clone());
    // Who the audit records name from here on (refusals after this point included).
    if let (Some(p), Some(trail)) = (&principal, crate::audit::trail::current()) {
        trail.note_principal(&p.tenant, &p.subject);
        trail.note_auth(p.method.as_str(), p.method.audit_fields());
    }

    let inference = match route {
        Route::Healthz => return Ok(endpoints::healthz()),
        Route::Readyz => return Ok(endpoints::readyz(app)),
        Route::Models => return Ok(endpoints::models(app)),
        Route::Model(id) => return endpoints::model(app, &id),
        Route::ChatCompletions => Inference::Chat,
        Route::Completions => Inference::Completions,
        Route::Generate => Inference::Generate,
    };

    // The tenant's own concurrency slot comes first: a tenant at its `max_concurrent`
    // (say, with slow uploads in flight) is refused here and never takes one of the
    // server's slots, which all tenants share.
    let occupancy = match principal.as_ref().and_then(|p| p.policy.as_ref()) {
        Some(tenant) => Some(
            tenant
                .limiter
                .occupy()
                .map_err(|refusal| gate::refused(tenant, &refusal))?,
        ),
        None => None,
    };
    // A server slot before the body is read: memory held by request bodies stays below
    // max_concurrent_requests × max_body_bytes, and an overloaded server answers at once
    // instead of after an upload.
    let slot = app.try_slot().ok_or(ApiError::TooManyRequests {
        limit: app.settings.max_concurrent_requests,
    })?;

    let request_id = req
        .headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let (parts, body) = req.into_parts();
    // Both slots are held while the body arrives, so its arrival is bounded in time too
    // (the tenant's own bound, else the server's).
    let timeout = principal
        .as_ref()
        .and_then(|p| p.policy.as_ref())
        .and_then(|t| t.body_read_timeout)
        .unwrap_or(app.settings.body_read_timeout);
    let bytes = tokio::time::timeout(
        timeout,
        body::read_limited(&parts.headers, body, app.settings.max_body_bytes),
    )
    .await
    .map_err(|_| ApiError::BodyTimeout(timeout))??;

    let (tenant, policy) =
        principal.map_or_else(|| ("anonymous".to_owned(), None), |p| (p.tenant, p.policy));
    let ctx = RequestContext {
        request_id,
        tenant,
        policy,
        occupancy: std::sync::Mutex::new(occupancy),
    };
    match inference {
        Inference::Chat => endpoints::chat(app, &ctx, &bytes, slot).await,
        Inference::Completions => endpoints::completions(app, &ctx, &bytes, slot).await,
        Inference::Generate => endpoints::generate(app, &ctx, &bytes, slot).await,
    }
}

/// OpenAI's `x-ratelimit-*` headers; a limit the tenant does not have is left out.
pub(crate) fn ratelimit_headers(
    headers: &mut http::HeaderMap,
    status: &airlock_policy::ratelimit::RateStatus,
) {
    let seconds = |d: std::time::Duration| format!("{:.3}s", d.as_secs_f64());
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = http::HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    if let Some(limit) = status.limit_requests {
        put("x-ratelimit-limit-requests", limit.to_string());
        put(
            "x-ratelimit-remaining-requests",
            status.remaining_requests.to_string(),
        );
        put("x-ratelimit-reset-requests", seconds(status.reset_requests));
    }
    if let Some(limit) = status.limit_tokens {
        put("x-ratelimit-limit-tokens", limit.to_string());
        put(
            "x-ratelimit-remaining-tokens",
            status.remaining_tokens.to_string(),
        );
        put("x-ratelimit-reset-tokens", seconds(status.reset_tokens));
    }
}

/// The routes that run inference.
enum Inference {
    Chat,
    Completions,
    Generate,
}

pub use crate::access::Principal;

#[cfg(test)]
mod tests;
