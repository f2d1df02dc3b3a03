//! API keys: `alk_<id>_<secret><crc>`.
//!
//! Made for secret scanning, like GitHub's token format: a fixed prefix, a public key id
//! (12 base62 characters) used to look the stored hash up, a random secret (22 base62
//! characters, ≈131 bits) and a CRC32 of everything before it (6 base62 characters). A
//! scanner can recognise a key offline, and a mistyped or truncated key fails the checksum
//! here, before any argon2 work is spent on it.
//!
//! The whole key is the argon2 input; the id is public (it is printed by `keys list`).

use std::fmt;
use std::time::SystemTime;

use rand::Rng;
use secrecy::{ExposeSecret, SecretString};

use crate::PolicyError;

/// The fixed prefix of every key.
pub const PREFIX: &str = "alk_";
/// Length of the public id, in base62 characters.
pub const ID_LEN: usize = 12;
/// Length of the secret, in base62 characters: 62^22 ≈ 2^131.
pub const SECRET_LEN: usize = 22;
/// Length of the checksum: 62^6 > 2^32.
pub const CRC_LEN: usize = 6;
/// Total key length.
pub const KEY_LEN: usize = PREFIX.len() + ID_LEN + 1 + SECRET_LEN + CRC_LEN;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The public id of a key: safe to print, log and store in clear.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    /// Parses an id as printed by `keys list` (12 base62 characters).
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        if s.len() == ID_LEN && s.bytes().all(is_base62) {
            Ok(Self(s.to_owned()))
        } else {
            Err(PolicyError::MalformedKey)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A well-formed key (checksum verified), not yet known to be valid. Its `Debug` shows
/// only the id.
#[derive(Clone)]
pub struct ApiKey {
    id: KeyId,
    full: SecretString,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl ApiKey {
    /// Generates a fresh key from the operating system's CSPRNG (via `rand`'s thread RNG,
    /// which is seeded from it).
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let mut body = String::with_capacity(KEY_LEN);
        body.push_str(PREFIX);
        let id: String = (0..ID_LEN)
            .map(|_| char::from(BASE62[rng.random_range(0..BASE62.len())]))
            .collect();
        body.push_str(&id);
        body.push('_');
        for _ in 0..SECRET_LEN {
            body.push(char::from(BASE62[rng.random_range(0..BASE62.len())]));
        }
        let crc = encode_crc(crc32fast::hash(body.as_bytes()));
        body.push_str(&crc);
        Self {
            id: KeyId(id),
            full: SecretString::from(body),
        }
    }

    /// Checks the format and checksum. The error never contains the input.
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        let bytes = s.as_bytes();
        if bytes.len() != KEY_LEN || !s.starts_with(PREFIX) {
            return Err(PolicyError::MalformedKey);
        }
        let id_end = PREFIX.len() + ID_LEN;
        if bytes[id_end] != b'_' {
            return Err(PolicyError::MalformedKey);
        }
        let id = &s[PREFIX.len()..id_end];
        let rest = &s[id_end + 1..];
        if !id.bytes().chain(rest.bytes()).all(is_base62) {
            return Err(PolicyError::MalformedKey);
        }
        let (body, crc) = s.split_at(KEY_LEN - CRC_LEN);
        if encode_crc(crc32fast::hash(body.as_bytes())) != crc {
            return Err(PolicyError::MalformedKey);
        }
        Ok(Self {
            id: KeyId(id.to_owned()),
            full: SecretString::from(s.to_owned()),
        })
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// The whole key, for hashing and for printing once at creation.
    pub fn expose(&self) -> &str {
        self.full.expose_secret()
    }
}

/// Whether `s` looks like an Airlock key (prefix, lengths, alphabet, checksum): what the
/// built-in filter detector uses to catch keys pasted into prompts.
pub fn looks_like_key(s: &str) -> bool {
    ApiKey::parse(s).is_ok()
}

fn is_base62(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

fn encode_crc(mut crc: u32) -> String {
    let mut out = [b'0'; CRC_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

/// A stored key as the key store knows it: never the key itself, only its argon2id hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: KeyId,
    pub tenant: String,
    /// The argon2id hash in PHC string form.
    pub phc: String,
    pub created_at: SystemTime,
    /// After this instant the key is refused.
    pub expires_at: Option<SystemTime>,
    /// The SHA-256 fingerprint (lowercase hex) of the only client certificate this key may
    /// be presented over, so a leaked key is useless without that certificate's private key.
    pub bound_cert_sha256: Option<String>,
    pub revoked: bool,
}

impl KeyRecord {
    /// Whether the record may authenticate anything at `now` (not revoked, not expired).
    pub fn usable(&self, now: SystemTime) -> bool {
        !self.revoked && self.expires_at.is_none_or(|at| now < at)
    }

    /// Checks the certificate binding against the presented certificate's fingerprint.
    pub fn check_binding(&self, presented_sha256: Option<&str>) -> Result<(), PolicyError> {
        match (&self.bound_cert_sha256, presented_sha256) {
            (None, _) => Ok(()),
            (Some(bound), Some(presented)) if bound.eq_ignore_ascii_case(presented) => Ok(()),
            (Some(_), _) => Err(PolicyError::CertificateMismatch),
        }
    }
}

#[cfg(test)]
mod tests;
