//! JWT bearer tokens, verified against a local JWKS file (air-gapped: nothing is fetched).
//!
//! What this refuses, and why:
//! - the algorithm comes from the key (pinned when the JWKS is loaded: RSA → RS256,
//!   P-256 → ES256, Ed25519 → EdDSA), never from the token header, so `alg: none` and
//!   "HS256 signed with the RSA public key" confusions cannot verify;
//! - `kid` is required: no trying every key;
//! - symmetric (`oct`) JWKS entries refuse the whole file: a shared secret in a file every
//!   verifier reads is a signing key;
//! - `exp`, `nbf`, `iss` and `aud` are required (numbers, for the times: `jsonwebtoken`
//!   ≥ 10.3 refuses string-typed ones), checked with a small leeway;
//! - RFC 8705: a token carrying `cnf["x5t#S256"]` is only good over the client certificate
//!   with that SHA-256 thumbprint;
//! - a `cnf` the gateway cannot check (`jkt` for DPoP, `jwk`, `kid`, anything but a lone
//!   `x5t#S256`) refuses the token: its issuer meant it to be unusable without a proof of
//!   possession, and accepting it as a plain bearer token would drop that proof;
//! - a `crit` header refuses the token: RFC 7515 §4.1.11 requires refusing a JWS whose
//!   critical extensions the recipient does not understand, and we understand none.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::PolicyError;

/// How tokens are checked, besides the keys.
#[derive(Clone, Debug)]
pub struct JwtSettings {
    /// The only accepted `iss`.
    pub issuer: String,
    /// The `aud` that must be among the token's audiences.
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// The claim naming the tenant, e.g. `org`.
    pub tenant_claim: String,
}

struct PinnedKey {
    alg: Algorithm,
    key: DecodingKey,
}

/// The verifier for one JWKS file.
pub struct JwtVerifier {
    settings: JwtSettings,
    keys: HashMap<String, PinnedKey>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<_> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("JwtVerifier")
            .field("settings", &self.settings)
            .field("kids", &kids)
            .finish()
    }
}

/// Who a verified token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenIdentity {
    pub tenant: String,
    /// The token's `iss` (the configured issuer it was checked against).
    pub issuer: String,
    /// The token's `sub`.
    pub subject: String,
    /// The `kid` that verified it.
    pub kid: String,
    /// Whether the token was bound to (and matched) the client certificate.
    pub cert_bound: bool,
}

impl JwtVerifier {
    /// Loads a JWKS document (the file's contents). Every key needs a `kid`; RSA, P-256
    /// and Ed25519 keys are accepted; any `oct` entry, unsupported curve or an `alg` that
    /// disagrees with the key type refuses the whole document.
    pub fn from_jwks(jwks: &str, settings: JwtSettings) -> Result<Self, PolicyError> {
        let set: JwkSet = serde_json::from_str(jwks)
            .map_err(|e| PolicyError::Config(format!("JWKS is not valid: {e}")))?;
        let mut keys = HashMap::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let kid = jwk
                .common
                .key_id
                .clone()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| PolicyError::Config(format!("JWKS key {i} has no kid")))?;
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                    // An Ed25519 public key is 32 bytes. jsonwebtoken 10.4 slices `[..32]` at
                    // verification time, so a shorter `x` would panic on every token that
                    // names this key (found by the `jwt` fuzz target): refuse it here.
                    let len = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(p.x.trim_end_matches('='))
                        .map(|x| x.len())
                        .map_err(|_| {
                            PolicyError::Config(format!("JWKS key {kid:?}: x is not base64url"))
                        })?;
                    if len != 32 {
                        return Err(PolicyError::Config(format!(
                            "JWKS key {kid:?}: an Ed25519 public key (x) is 32 bytes, not {len}"
                        )));
                    }
                    Algorithm::EdDSA
                }
                AlgorithmParameters::OctetKey(_) => {
                    return Err(PolicyError::Config(format!(
                        "JWKS key {kid:?} is symmetric (oct): refused"
                    )));
                }
                _ => {
                    return Err(PolicyError::Config(format!(
                        "JWKS key {kid:?}: unsupported key type or curve"
                    )));
                }
            };
            if let Some(declared) = jwk.common.key_algorithm {
                let agrees = matches!(
                    (declared, alg),
                    (KeyAlgorithm::RS256, Algorithm::RS256)
                        | (KeyAlgorithm::ES256, Algorithm::ES256)
                        | (KeyAlgorithm::EdDSA, Algorithm::EdDSA)
                );
                if !agrees {
                    return Err(PolicyError::Config(format!(
                        "JWKS key {kid:?}: alg {declared:?} is not allowed for its key type"
                    )));
                }
            }
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| PolicyError::Config(format!("JWKS key {kid:?}: {e}")))?;
            if keys.insert(kid.clone(), PinnedKey { alg, key }).is_some() {
                return Err(PolicyError::Config(format!(
                    "JWKS kid {kid:?} appears twice"
                )));
            }
        }
        Ok(Self { settings, keys })
    }

    /// Verifies `token`. `client_x5t_s256` is the presented client certificate's
    /// thumbprint ([`cert_thumbprint_s256`]), if any, for certificate-bound tokens.
    pub fn verify(
        &self,
        token: &str,
        client_x5t_s256: Option<&str>,
    ) -> Result<TokenIdentity, PolicyError> {
        let bad = |why: &str| PolicyError::InvalidToken(why.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad("malformed header"))?;
        if header.crit.is_some() {
            return Err(bad("critical header parameters are not supported"));
        }
        let kid = header.kid.ok_or_else(|| bad("no kid"))?;
        let pinned = self.keys.get(&kid).ok_or_else(|| bad("unknown kid"))?;
        if header.alg != pinned.alg {
            return Err(bad("algorithm does not match the key"));
        }
        let mut validation = Validation::new(pinned.alg);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = self.settings.leeway.as_secs();
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &pinned.key, &validation)
            .map_err(|e| PolicyError::InvalidToken(describe(e.kind())))?;
        let claims = data.claims;
        // Defence in depth: times must be JSON numbers whatever the library accepts.
        for claim in ["exp", "nbf"] {
            if !claims.get(claim).is_some_and(Value::is_number) {
                return Err(bad("exp/nbf must be numbers"));
            }
        }
        let tenant = claims
            .get(&self.settings.tenant_claim)
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("no tenant claim"))?
            .to_owned();
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("no sub"))?
            .to_owned();
        let bound = claims.get("cnf").map(certificate_binding).transpose()?;
        if let Some(expected) = bound {
            let presented = client_x5t_s256.ok_or(PolicyError::CertificateMismatch)?;
            if presented != expected {
                return Err(PolicyError::CertificateMismatch);
            }
        }
        Ok(TokenIdentity {
            tenant,
            issuer: self.settings.issuer.clone(),
            subject,
            kid,
            cert_bound: bound.is_some(),
        })
    }
}

/// The thumbprint a `cnf` claim binds the token to. Only RFC 8705 certificate binding can
/// be checked here (against the mutual-TLS client certificate); any other confirmation
/// method, or one alongside it, refuses the token rather than degrading it to a bearer token.
fn certificate_binding(cnf: &Value) -> Result<&str, PolicyError> {
    let bad = |why: &str| PolicyError::InvalidToken(why.to_owned());
    let members = cnf.as_object().ok_or_else(|| bad("cnf is not an object"))?;
    if let Some(other) = members.keys().find(|k| *k != "x5t#S256") {
        return Err(PolicyError::InvalidToken(format!(
            "cnf method `{}` cannot be verified",
            other.chars().take(32).collect::<String>()
        )));
    }
    members
        .get("x5t#S256")
        .ok_or_else(|| bad("cnf names no confirmation method"))?
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("cnf x5t#S256 is not a string"))
}

/// The RFC 8705 `x5t#S256` thumbprint: base64url (no padding) of SHA-256 of the DER.
pub fn cert_thumbprint_s256(der: &[u8]) -> String {
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(der))
}

/// The same thumbprint from a lowercase-hex SHA-256 fingerprint; `None` if not hex.
pub fn thumbprint_from_hex(sha256_hex: &str) -> Option<String> {
    let bytes = hex::decode(sha256_hex).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => "expired",
        K::ImmatureSignature => "not yet valid",
        K::InvalidIssuer => "wrong issuer",
        K::InvalidAudience => "wrong audience",
        K::InvalidSignature => "bad signature",
        K::InvalidAlgorithm => "algorithm does not match the key",
        K::MissingRequiredClaim(_) => "missing required claim",
        _ => "malformed token",
    }
    .to_owned()
}

#[cfg(test)]
mod tests;
