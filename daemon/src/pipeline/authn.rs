//! Phase `authn`: the request's credentials → a [`Principal`], or a typed [`AuthError`]
//! (deny by default). The credential checks themselves are [`crate::access::Access`]'s.

use http::HeaderMap;

use super::RequestCtx;
use crate::access::{Access, AuthError};

/// Authenticates the request and notes who it acts for in `ctx` and in its audit trail
/// (refusals after this point name the principal).
pub async fn authenticate(
    access: &Access,
    ctx: &mut RequestCtx,
    headers: &HeaderMap,
) -> Result<(), AuthError> {
    let principal = access.authenticate(&ctx.conn, headers).await?;
    if let Some(trail) = &ctx.trail {
        trail.note_principal(&principal.tenant, &principal.subject);
        trail.note_auth(principal.method.as_str(), principal.method.audit_fields());
    }
    ctx.principal = Some(principal);
    Ok(())
}

#[doc(inline)]
pub use crate::access::Principal;
