//! **The** request path: [`handle`] wraps one request (deadline, metrics, the audit record
//! of its outcome) and [`serve`] runs its phases in order, one line each. Every phase lives
//! in its own file under `pipeline/`; the OpenAI wire format (routes, bodies, response and
//! error shapes, SSE framing) is [`crate::api`].
//!
//! The phases, in order:
//!
//! ```text
//! route → authn → info routes → tenant slot → server slot → upload share → body → parse
//!       → tenant → tools → prompt_filter → (embed prepare) → limits → audit (admit)
//!       → generate → finish
//!         ↘ tokenize (tokenizer routes)
//!         ↘ embed (embeddings)
//! ```
//!
//! Everything a phase learns about the request travels in one [`RequestCtx`], passed
//! explicitly: nothing on the path is reached through task-locals, so moving a phase onto
//! another task cannot silently skip it. The engine is reachable only through
//! [`generate::submit`], which takes the [`audit::Admitted`] receipt that only the audit
//! phase constructs: a path that skips admission does not compile.

pub mod audit;
pub mod authn;
mod ctx;
pub mod embed;
pub mod finish;
pub mod generate;
pub mod limits;
pub mod prompt_filter;
pub mod tenant;
pub mod tokenize;
pub mod tools;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body::Body;
use hyper::{Request, Response};

pub use ctx::RequestCtx;

use crate::api::request::{self, Inference};
use crate::api::response::{LIMIT_REQUESTS, LIMIT_TOKENS, ratelimit_headers};
use crate::api::route::{self, Route};
use crate::api::{ApiError, BoxBody, body, endpoints};
use crate::app::App;
use crate::identity::ConnInfo;
use crate::telemetry::RequestSpan;

/// Serves one request. Never fails: every error becomes a response in OpenAI's error shape
/// ([`ApiError::into_response`]). The server has already done TLS, set `x-request-id` and
/// opened the request's tracing span. Generic over the body so tests can drive it without
/// sockets; the server passes `hyper::body::Incoming`.
pub async fn handle<B>(app: Arc<App>, conn: Arc<ConnInfo>, req: Request<B>) -> Response<BoxBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let started = Instant::now();
    // The route, resolved once: it names the metrics series (a fixed label, never the raw
    // path), decides whether the request is audited, and is the first phase of `serve`.
    let route = route::resolve(req.method(), req.uri().path());
    let route_label = route.as_ref().map_or("other", Route::label);
    // Audit wraps the whole request so that refusals at any phase are recorded too; the
    // admission record itself is written last before the engine (`audit::admit`).
    let trail = audit::open(&app, &conn, &req, route.as_ref().ok());
    // The trace span, when telemetry is on: every request but the probes.
    let span = match &app.telemetry {
        Some(telemetry) if !route.as_ref().is_ok_and(Route::is_open) => telemetry.request_span(
            &conn,
            req.headers(),
            req.method().as_str(),
            route_label,
            req.headers()
                .get(crate::api::X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        ),
        _ => RequestSpan::default(),
    };
    let mut ctx = RequestCtx::new(&req, conn, trail, span);
    // The deadline covers everything up to the response head: reading the body, waiting in
    // the engine queue, and for a non-streaming request the whole generation. A stream's
    // head goes out with its first token; from then on the client's pace and `max_tokens`
    // bound it, and a disconnect cancels it. Expiry drops `serve`, which cancels the engine
    // request.
    let deadline = app.settings.request_deadline;
    let served = tokio::time::timeout(deadline, serve(&app, &mut ctx, route, req)).await;
    let (mut resp, code) = match served {
        Ok(Ok(resp)) => (resp, None),
        Ok(Err(error)) => {
            // A deny rule that refused the request: counted, and named in its audit record.
            if let ApiError::Policy(crate::access::PolicyError::ContentPolicy { rule_id }) = &error
            {
                crate::metrics::global().filter_action(rule_id, "deny", 1);
                if let Some(trail) = &ctx.trail {
                    trail.note_filter_rules(std::slice::from_ref(rule_id));
                }
            }
            error.into_response_and_code()
        }
        Err(_) => (ApiError::Timeout(deadline).into_response(), Some("timeout")),
    };
    ctx.span
        .responded(ctx.tenant(), ctx.note.model(), resp.status().as_u16(), code);
    // Only configured tenants name a series; anyone else counts as `unknown`.
    let policy = ctx.policy().cloned();
    crate::metrics::global().request(
        policy.as_ref().map(|t| t.name.as_str()),
        ctx.note.model(),
        route_label,
        resp.status().as_u16(),
        started.elapsed(),
    );
    // The tenant's limits on every response after authentication, refusals included. A
    // rate-limit refusal already carries the figures from its own decision.
    if let Some(policy) = policy
        && !resp.headers().contains_key(LIMIT_REQUESTS)
        && !resp.headers().contains_key(LIMIT_TOKENS)
    {
        let status = ctx.shared_status.unwrap_or_else(|| policy.limiter.status());
        ratelimit_headers(resp.headers_mut(), &status);
    }
    // The `deny` or `complete` record, durable before the response leaves (a stream writes
    // its own before its final event).
    audit::finish(ctx.trail.as_deref(), resp, code).await
}

/// The phases of one request, in order. Cheap refusals come first; nothing reaches the
/// engine without an admission record.
async fn serve<B>(
    app: &App,
    ctx: &mut RequestCtx,
    route: Result<Route, ApiError>,
    req: Request<B>,
) -> Result<Response<BoxBody>, ApiError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    // route: 404/405 before anything else; whether a route is open decides whether it needs
    // authentication.
    let route = route?;
    // authn: deny by default, one authentication phase for every route not on the open list.
    if !route.is_open() {
        authn::authenticate(&app.access, ctx, req.headers()).await?;
    }
    // info routes: probes and the model list answer here; only inference goes on.
    let inference = match route {
        Route::Healthz => return Ok(endpoints::healthz()),
        Route::Readyz => return Ok(endpoints::readyz(app.readiness().reason.is_none())),
        Route::Models => return Ok(endpoints::models(&app.models)),
        Route::Model(id) => return endpoints::model(&app.models, &id),
        Route::ChatCompletions => Inference::Chat,
        Route::Responses => Inference::Responses,
        Route::Completions => Inference::Completions,
        Route::Generate => Inference::Generate,
        Route::Tokenize => Inference::Tokenize,
        Route::Detokenize => Inference::Detokenize,
        Route::Embeddings => Inference::Embeddings,
    };
    // tenant slot: a tenant at its `max_concurrent` (say, with slow uploads in flight) is
    // refused here and never takes one of the server's slots, which all tenants share.
    let occupancy = limits::occupy(app.shared_limits.as_deref(), ctx.policy())?;
    // server slot: before the body is read, so memory held by bodies stays below
    // max_concurrent_requests × max_body_bytes and an overloaded server answers at once.
    let slot = app.try_slot().ok_or(ApiError::TooManyRequests {
        limit: app.settings.max_concurrent_requests,
    })?;
    // upload share: one tenant has at most half the server's slots with bodies arriving, so
    // slowly trickled bodies cannot take every slot, `max_concurrent` or not.
    let upload =
        match ctx.policy() {
            Some(tenant) => Some(app.uploads.start(&tenant.name).ok_or(
                ApiError::TooManyUploads {
                    limit: app.uploads.share(),
                },
            )?),
            None => None,
        };
    // body: the slots are held while it arrives, so its arrival is bounded in time too
    // (the tenant's own `body_read_timeout`, else the server's) as well as in size.
    let bytes = read_body(app, ctx, req).await?;
    drop(upload);
    // parse: OpenAI's validation of the body (400s name the field).
    let parsed = request::parse(inference, &bytes, || {
        app.models.first().map(|m| m.id.clone())
    })?;
    ctx.note.note(None, Some(&parsed.model));
    let (mut job, mut shape) = generate::Job::from_parsed(parsed);
    // tenant: the model allow-list and the `max_tokens` caps (cheap, before any tokenizing).
    tenant::check(ctx.policy(), &mut job)?;
    // generates: chat and completions need a model that generates (an encoder serves
    // embeddings only); refused naming the model, before any tokenizing.
    generate::check_generates(&app.models, &job)?;
    // tools: offered tools need a model that can see and call them, a grammar one that
    // decodes under it (after the allow-list, so a model the tenant may not use is not
    // described to it).
    tools::resolve(&app.models, &job.model, &job.params, &mut shape)?;
    // prompt_filter: before the count, since redaction changes the prompt: the cap and the
    // reservation must measure exactly what audit admit and the engine will see.
    prompt_filter::apply(ctx.policy(), ctx.trail.as_deref(), &mut job)?;
    // embed prepare: embedding inputs are tokenized after redaction and before the limits,
    // which charge their tokens like a prompt's.
    if shape.route == Inference::Embeddings {
        embed::prepare(&app.engine, &app.models, shape.embed, &mut job).await?;
    }
    // limits: the prompt's token count, the tenant's prompt cap, then the rate limits and
    // the token reservation (which takes over the tenant slot).
    let admission = limits::reserve(
        &app.engine,
        app.shared_limits.as_ref(),
        ctx.policy(),
        occupancy,
        &mut job,
    )
    .await?;
    if let Some(limits::TenantAdmission::Shared(shared)) = &admission {
        ctx.shared_status = Some(shared.status());
    }
    // audit: the admission record is durable before the engine sees the request, or the
    // request is refused (fail closed). The receipt carries the exact job it recorded.
    let admitted = audit::admit(ctx, job).await?;
    // tokenize: the tokenizer routes end here, answered by the model's tokenizer (admitted
    // and audited like a generation; nothing is generated, so no slot is held for one).
    if shape.route.is_tokenizer() {
        return tokenize::respond(&app.engine, &app.models, ctx, admitted, shape.tokenize).await;
    }
    // embed: the model runs the inputs; the vectors are the answer.
    if shape.route == Inference::Embeddings {
        return embed::respond(&app.engine, ctx, admitted, admission, shape.embed).await;
    }
    // generate: submit (only with the receipt); the stream or the whole completion follows.
    let generation = generate::submit(&app.engine, ctx, admitted).await?;
    // finish: output filter, usage settlement and the completion record, one implementation
    // for the JSON and the SSE response.
    finish::respond(app, ctx, generation, shape, admission, slot).await
}

/// Reads the request body within the size limit and the tenant's (else the server's)
/// `body_read_timeout`.
async fn read_body<B>(app: &App, ctx: &RequestCtx, req: Request<B>) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (parts, body) = req.into_parts();
    let timeout = ctx
        .policy()
        .and_then(|t| t.body_read_timeout)
        .unwrap_or(app.settings.body_read_timeout);
    tokio::time::timeout(
        timeout,
        body::read_limited(&parts.headers, body, app.settings.max_body_bytes),
    )
    .await
    .map_err(|_| ApiError::BodyTimeout(timeout))?
}

#[cfg(test)]
mod tests;
