//! Tenant policy for Airlock: which caller is which tenant, what that tenant may do.
//!
//! This crate is pure logic: it never sees hyper, rustls or the engine. The daemon adapts
//! requests to it. Identity, keys, JWTs, rate limits and filters land here (issue 4).
