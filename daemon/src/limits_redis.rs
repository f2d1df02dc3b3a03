//! Tenant limits shared by every gateway process of a deployment, kept in Redis/Valkey
//! (`[cluster.limits] backend = "redis"`; design in docs/multi-node.md).
//!
//! One atomic script per admission (`limits_redis/admit.lua`, run with `EVALSHA`; the
//! client loads it again on `NOSCRIPT`) takes the concurrency lease, reserves the tokens and
//! charges the request rate (GCRA), so an admission costs one round trip. A second script
//! (`finish.lua`) returns the unused tokens and releases the lease when the request ends.
//! The scripts read the server's clock, so all gateways share one.
//!
//! It lives in the daemon, not in `airlock-policy`: the policy crate stays free of network
//! clients and async I/O; it keeps the semantics (the local limiter) this module mirrors,
//! and the types (`Refusal`, `RateStatus`) both report with.

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use airlock_policy::Tenant;
use airlock_policy::ratelimit::{
    Exceeded, LimitSpec, Per, RateStatus, Refusal, RequestRate, TenantLimiter,
};
use redis::aio::MultiplexedConnection;

use crate::config::cluster::{OnUnavailable, SharedLimitsConfig, StoreTls};

const ADMIT: &str = include_str!("limits_redis/admit.lua");
const FINISH: &str = include_str!("limits_redis/finish.lua");
const RENEW: &str = include_str!("limits_redis/renew.lua");

/// Fallbacks are logged at most this often.
const WARN_EVERY_SECS: u64 = 10;

/// Why the store's client could not be set up: the key of `[cluster.limits]` at fault and
/// the reason (file contents never appear in it).
#[derive(Debug, thiserror::Error)]
#[error("cluster.limits.{key}: {reason}")]
pub struct SetupError {
    key: &'static str,
    reason: String,
}

/// The store did not answer within `timeout` (down, slow, or an error).
#[derive(Debug, thiserror::Error)]
#[error("the shared limits store is unavailable: {0}")]
pub struct Unavailable(String);

/// The shared limits of one configuration generation.
pub struct SharedLimits {
    client: redis::Client,
    /// One multiplexed connection, shared by all requests; dropped on an error so that the
    /// next request reconnects (a restarted server).
    conn: Mutex<Option<MultiplexedConnection>>,
    /// Held while connecting, so that requests arriving without a connection (at start,
    /// after the store restarted) wait for one connection attempt instead of each making
    /// their own.
    connecting: tokio::sync::Mutex<()>,
    prefix: String,
    timeout: Duration,
    on_unavailable: OnUnavailable,
    lease_ttl: Duration,
    admit: redis::Script,
    finish: redis::Script,
    renew: redis::Script,
    /// `on_unavailable = "local"`: each tenant's share of its limits, enforced here while
    /// the store is down. Keyed by tenant name, rebuilt when the tenant's limits change.
    fallback: Mutex<HashMap<String, (LimitSpec, Arc<TenantLimiter>)>>,
    /// Unix seconds of the last fallback warning.
    last_warn: AtomicU64,
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimits")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("on_unavailable", &self.on_unavailable)
            .finish_non_exhaustive()
    }
}

/// An admission under the shared limits. [`SharedAdmission::complete`] gives back the
/// unused tokens; dropping it without completing keeps the whole reservation (like the
/// local limiter) and releases the lease. Both run on a spawned task, bounded by the
/// store's timeout: the response does not wait for them. While it lives, its concurrency
/// lease is renewed every third of `lease_ttl`, so a long stream keeps its slot and a
/// crashed gateway's slots come back within one `lease_ttl`.
pub struct SharedAdmission {
    limits: Arc<SharedLimits>,
    tenant: String,
    tokens_per_minute: u32,
    reserved: u32,
    /// Empty when the tenant has no `max_concurrent`.
    lease: String,
    finished: bool,
    /// The lease's renewal task (`None` without a lease); aborted when the request ends.
    renewal: Option<tokio::task::AbortHandle>,
    /// The limits' state right after this admission, for the response headers.
    status: RateStatus,
}

impl std::fmt::Debug for SharedAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedAdmission")
            .field("tenant", &self.tenant)
            .field("reserved", &self.reserved)
            .finish_non_exhaustive()
    }
}

impl SharedAdmission {
    /// Returns the unused part of the reservation and releases the lease.
    pub fn complete(mut self, used: u32) {
        self.finished = true;
        let back = self.reserved.saturating_sub(used);
        self.spawn_finish(back);
    }

    pub fn reserved(&self) -> u32 {
        self.reserved
    }

    /// The tenant's limits right after this admission (the `x-ratelimit-*` figures).
    pub fn status(&self) -> RateStatus {
        self.status
    }

    /// Test hook: the gateway "crashes" with this request in flight: the renewal stops and
    /// nothing is released, as after `kill -9`.
    #[cfg(test)]
    pub(crate) fn crash(mut self) {
        self.stop_renewal();
        self.finished = true;
    }

    fn stop_renewal(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
    }

    fn spawn_finish(&mut self, back: u32) {
        self.stop_renewal();
        if (back == 0 || self.tokens_per_minute == 0) && self.lease.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let limits = Arc::clone(&self.limits);
        let tenant = self.tenant.clone();
        let lease = self.lease.clone();
        let tpm = self.tokens_per_minute;
        // Detached, and bounded by the store's timeout; a lost release is reclaimed when the
        // lease expires, a lost give-back only under-uses the budget.
        runtime.spawn(async move {
            if let Err(e) = limits.finish_at(0, &tenant, tpm, back, &lease).await {
                tracing::debug!(tenant = %tenant, error = %e, "shared limits: release not recorded");
            }
        });
    }
}

impl Drop for SharedAdmission {
    fn drop(&mut self) {
        if !self.finished {
            self.spawn_finish(0);
        }
        self.stop_renewal();
    }
}

/// The per-request numbers of a tenant's limits as the scripts take them.
struct ScriptLimits {
    interval_us: u64,
    burst: u32,
    tokens_per_minute: u32,
    max_concurrent: u32,
}

impl ScriptLimits {
    fn of(spec: &LimitSpec) -> ScriptLimits {
        let (interval_us, burst) = match spec.requests {
            None => (0, 0),
            Some(rate) => {
                let period: u64 = match rate.per {
                    Per::Second => 1_000_000,
                    Per::Minute => 60_000_000,
                };
                (
                    (period / u64::from(rate.count.get())).max(1),
                    rate.burst.get(),
                )
            }
        };
        ScriptLimits {
            interval_us,
            burst,
            tokens_per_minute: spec.tokens_per_minute.map_or(0, NonZeroU32::get),
            max_concurrent: spec.max_concurrent.map_or(0, NonZeroU32::get),
        }
    }
}

impl SharedLimits {
    /// A client for `config` (no connection yet: the first request connects). With TLS
    /// (`rediss://`) the CA and client certificate files are read here, so a bad file is
    /// reported at start (or reload) naming its key.
    pub fn new(config: &SharedLimitsConfig) -> Result<Arc<SharedLimits>, SetupError> {
        let client = match &config.tls {
            None => redis::Client::open(config.url.as_str()),
            Some(tls) => redis::Client::build_with_tls(config.url.as_str(), tls_files(tls)?),
        }
        .map_err(|e| SetupError {
            key: "url",
            reason: e.to_string(),
        })?;
        Ok(Arc::new(SharedLimits {
            client,
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            on_unavailable: config.on_unavailable,
            lease_ttl: config.lease_ttl,
            admit: redis::Script::new(ADMIT),
            finish: redis::Script::new(FINISH),
            renew: redis::Script::new(RENEW),
            fallback: Mutex::new(HashMap::new()),
            last_warn: AtomicU64::new(0),
        }))
    }

    /// What to do when the store is unavailable.
    pub fn on_unavailable(&self) -> OnUnavailable {
        self.on_unavailable
    }

    /// Admits a request of `tenant` that may use up to `tokens` tokens, or says why not
    /// (`Ok(Err)`), or that the store cannot say (`Err`).
    pub async fn admit(
        self: &Arc<Self>,
        tenant: &Tenant,
        tokens: u32,
    ) -> Result<Result<SharedAdmission, Refusal>, Unavailable> {
        self.admit_at(0, &tenant.name, &tenant.limits, tokens).await
    }

    /// [`Self::admit`] at `now_us` (µs; 0: the store's clock).
    pub(crate) async fn admit_at(
        self: &Arc<Self>,
        now_us: u64,
        tenant: &str,
        spec: &LimitSpec,
        tokens: u32,
    ) -> Result<Result<SharedAdmission, Refusal>, Unavailable> {
        let limits = ScriptLimits::of(spec);
        let lease = if limits.max_concurrent > 0 {
            crate::api::random_uuid().to_string()
        } else {
            String::new()
        };
        let ttl_us = u64::try_from(self.lease_ttl.as_micros()).unwrap_or(u64::MAX);
        let mut invocation = self.admit.prepare_invoke();
        invocation
            .key(self.key(tenant, "rate"))
            .key(self.key(tenant, "tokens"))
            .key(self.key(tenant, "leases"))
            .arg(now_us)
            .arg(limits.interval_us)
            .arg(limits.burst)
            .arg(limits.tokens_per_minute)
            .arg(tokens)
            .arg(limits.max_concurrent)
            .arg(&lease)
            .arg(ttl_us);
        let answer: Vec<i64> = self
            .round_trip(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        let [
            code,
            retry,
            remaining_requests,
            reset_requests,
            remaining_tokens,
            reset_tokens,
        ] = answer[..]
        else {
            return Err(Unavailable(format!("unexpected answer {answer:?}")));
        };
        let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        let count = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
        let status = RateStatus {
            limit_requests: spec.requests.map(|r| r.burst.get()),
            remaining_requests: count(remaining_requests),
            reset_requests: micros(reset_requests),
            limit_tokens: spec.tokens_per_minute.map(NonZeroU32::get),
            remaining_tokens: count(remaining_tokens),
            reset_tokens: micros(reset_tokens),
        };
        let exceeded = match code {
            0 => {
                // Renewed on the store's clock, so not when a test fixes the clock.
                let renewal =
                    (!lease.is_empty() && now_us == 0).then(|| self.spawn_renewal(tenant, &lease));
                return Ok(Ok(SharedAdmission {
                    limits: Arc::clone(self),
                    tenant: tenant.to_owned(),
                    tokens_per_minute: limits.tokens_per_minute,
                    reserved: tokens,
                    lease,
                    finished: false,
                    renewal,
                    status,
                }));
            }
            1 => Exceeded::Requests,
            2 => Exceeded::Tokens,
            3 => Exceeded::Concurrency,
            4 => Exceeded::TooLarge,
            other => return Err(Unavailable(format!("unexpected answer code {other}"))),
        };
        Ok(Err(Refusal {
            exceeded,
            retry_after: micros(retry),
            status,
        }))
    }

    /// Renews `lease` every third of `lease_ttl` until aborted. A failed renewal is retried
    /// at the next tick (two more before the lease lapses); a lease found gone (the store
    /// restarted, or this gateway was partitioned longer than `lease_ttl`) ends the task:
    /// the request goes on, its slot is already counted free.
    fn spawn_renewal(self: &Arc<Self>, tenant: &str, lease: &str) -> tokio::task::AbortHandle {
        let limits = Arc::clone(self);
        let key = self.key(tenant, "leases");
        let lease = lease.to_owned();
        let ttl_us = u64::try_from(self.lease_ttl.as_micros()).unwrap_or(u64::MAX);
        let every = self.lease_ttl / 3;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let mut invocation = limits.renew.prepare_invoke();
                invocation.key(&key).arg(&lease).arg(ttl_us);
                let renewed: Result<i64, _> = limits
                    .round_trip(|mut conn| async move { invocation.invoke_async(&mut conn).await })
                    .await;
                match renewed {
                    Ok(1) => {}
                    Ok(_) => {
                        tracing::warn!(key = %key, "shared limits: a lease in flight had expired; its slot was reclaimed");
                        return;
                    }
                    Err(e) => tracing::debug!(key = %key, error = %e, "shared limits: lease not renewed"),
                }
            }
        })
        .abort_handle()
    }

    /// Gives back `back` tokens and releases `lease` (may be empty).
    pub(crate) async fn finish_at(
        &self,
        now_us: u64,
        tenant: &str,
        tokens_per_minute: u32,
        back: u32,
        lease: &str,
    ) -> Result<(), Unavailable> {
        let mut invocation = self.finish.prepare_invoke();
        invocation
            .key(self.key(tenant, "tokens"))
            .key(self.key(tenant, "leases"))
            .arg(now_us)
            .arg(tokens_per_minute)
            .arg(back)
            .arg(lease);
        let _: i64 = self
            .round_trip(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        Ok(())
    }

    /// The local limiter for `tenant`'s share (its limits divided by `replicas`) while the
    /// store is unavailable, or `None` with `on_unavailable = "closed"`. Counted and (at
    /// most every 10 s) logged.
    pub fn fallback(&self, tenant: &Tenant, error: &Unavailable) -> Option<Arc<TenantLimiter>> {
        let OnUnavailable::Local { replicas } = self.on_unavailable else {
            return None;
        };
        crate::metrics::global().limits_fallback();
        let now = u64::try_from(crate::clock::unix_secs(std::time::SystemTime::now())).unwrap_or(0);
        let last = self.last_warn.load(Ordering::Relaxed);
        if now >= last.saturating_add(WARN_EVERY_SECS)
            && self
                .last_warn
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                error = %error,
                "shared limits unavailable: enforcing this gateway's share (limits / {replicas}) locally"
            );
        }
        let share = divide(&tenant.limits, replicas);
        let mut map = self.fallback.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get(&tenant.name) {
            Some((spec, limiter)) if *spec == share => Some(Arc::clone(limiter)),
            _ => {
                let limiter = TenantLimiter::new(&share);
                map.insert(tenant.name.clone(), (share, Arc::clone(&limiter)));
                Some(limiter)
            }
        }
    }

    fn key(&self, tenant: &str, what: &str) -> String {
        // The braces make a Redis Cluster hash tag: one tenant's keys share a slot, as a
        // script touching several keys needs.
        format!("{}{{{tenant}}}:{what}", self.prefix)
    }

    /// One command on the shared connection (connecting first if there is none), within
    /// `timeout`. An error drops the connection so that the next call reconnects.
    async fn round_trip<T, F, Fut>(&self, call: F) -> Result<T, Unavailable>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let attempt = async {
            let cached = || {
                self.conn
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
            };
            let conn = match cached() {
                Some(conn) => conn,
                None => {
                    let _connecting = self.connecting.lock().await;
                    if let Some(conn) = cached() {
                        return call(conn).await;
                    }
                    let conn = self.client.get_multiplexed_async_connection().await?;
                    *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
                    conn
                }
            };
            call(conn).await
        };
        let result = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => Unavailable(e.to_string()),
            Err(_) => Unavailable(format!("no answer within {:?}", self.timeout)),
        };
        *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = None;
        Err(result)
    }
}

/// The CA bundle and client certificate of a `rediss://` store, read and checked
/// ([`StoreTls::read`], which `check-config` runs too).
fn tls_files(tls: &StoreTls) -> Result<redis::TlsCertificates, SetupError> {
    let pem = tls
        .read()
        .map_err(|(key, reason)| SetupError { key, reason })?;
    Ok(redis::TlsCertificates {
        client_tls: pem
            .client
            .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                client_cert,
                client_key,
            }),
        root_cert: Some(pem.ca),
    })
}

/// One gateway's share of `spec` when `replicas` gateways enforce it apart (at least 1 of
/// each limit, so no tenant is locked out).
fn divide(spec: &LimitSpec, replicas: NonZeroU32) -> LimitSpec {
    let part = |n: NonZeroU32| NonZeroU32::new(n.get() / replicas.get()).unwrap_or(NonZeroU32::MIN);
    LimitSpec {
        requests: spec.requests.map(|r| RequestRate {
            count: part(r.count),
            per: r.per,
            burst: part(r.burst),
        }),
        tokens_per_minute: spec.tokens_per_minute.map(part),
        max_concurrent: spec.max_concurrent.map(part),
    }
}
