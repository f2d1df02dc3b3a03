//! Argon2id hashing of API keys, with OWASP's minimum parameters (m = 19 MiB, t = 2,
//! p = 1). One hash costs tens of milliseconds on purpose: callers run it off the async
//! runtime behind a concurrency bound, and cache successful verifications
//! ([`crate::cache`]).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::PolicyError;
use crate::key::ApiKey;

/// OWASP's recommended minimum for argon2id: 19 MiB.
pub const MEMORY_KIB: u32 = 19_456;
pub const ITERATIONS: u32 = 2;
pub const PARALLELISM: u32 = 1;

fn hasher() -> Result<Argon2<'static>, PolicyError> {
    let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None)
        .map_err(|e| PolicyError::Hashing(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a key with a fresh random salt; returns the PHC string to store.
pub fn hash_key(key: &ApiKey) -> Result<String, PolicyError> {
    let salt = fresh_salt()?;
    hasher()?
        .hash_password(key.expose().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PolicyError::Hashing(e.to_string()))
}

fn fresh_salt() -> Result<SaltString, PolicyError> {
    let mut bytes = [0u8; 16];
    rand::Rng::fill(&mut rand::rng(), &mut bytes);
    SaltString::encode_b64(&bytes).map_err(|e| PolicyError::Hashing(e.to_string()))
}

/// Verifies a key against a stored PHC string. Only argon2id hashes are accepted, and
/// with at least the parameters above, so a tampered database row cannot downgrade them.
pub fn verify_key(key: &ApiKey, phc: &str) -> Result<bool, PolicyError> {
    let parsed = PasswordHash::new(phc).map_err(|e| PolicyError::Hashing(e.to_string()))?;
    if parsed.algorithm != argon2::ARGON2ID_IDENT {
        return Err(PolicyError::Hashing("stored hash is not argon2id".into()));
    }
    let params = Params::try_from(&parsed).map_err(|e| PolicyError::Hashing(e.to_string()))?;
    if params.m_cost() < MEMORY_KIB || params.t_cost() < ITERATIONS {
        return Err(PolicyError::Hashing(
            "stored hash parameters too weak".into(),
        ));
    }
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    match argon.verify_password(key.expose().as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(PolicyError::Hashing(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let key = ApiKey::generate();
        let phc = hash_key(&key).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(!phc.contains(key.expose()));
        assert!(verify_key(&key, &phc).unwrap());
        let other = ApiKey::generate();
        assert!(!verify_key(&other, &phc).unwrap());
        // Same key, new salt: a different hash.
        assert_ne!(phc, hash_key(&key).unwrap());
    }

    #[test]
    fn weak_or_foreign_hashes_refused() {
        let key = ApiKey::generate();
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(1024, 1, 1, None).unwrap(),
        )
        .hash_password(key.expose().as_bytes(), &fresh_salt().unwrap())
        .unwrap()
        .to_string();
        assert!(verify_key(&key, &weak).is_err());
        assert!(verify_key(&key, "not a hash").is_err());
    }
}
