//! The two audit keys, each in its own file so systemd `LoadCredential=` can hand them over:
//! the Ed25519 checkpoint signing key and the HMAC-SHA256 digest key. Files hold 64 hex
//! characters (32 bytes) and optional surrounding whitespace. Key material is wrapped in
//! `secrecy` so it never prints.

use std::path::{Path, PathBuf};

use ed25519_dalek::Signer;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox};
use sha2::Sha256;

use super::AuditError;
use crate::config::credential::{KeyFileError, read_key_file};

/// The checkpoint signing key (private).
pub struct SigningKey(SecretBox<[u8; 32]>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

impl SigningKey {
    pub fn load(path: &Path) -> Result<SigningKey, AuditError> {
        Ok(SigningKey(SecretBox::new(Box::new(read_key(path)?))))
    }

    pub fn from_seed(seed: [u8; 32]) -> SigningKey {
        SigningKey(SecretBox::new(Box::new(seed)))
    }

    /// A copy of the seed for the writer thread's own key.
    pub(crate) fn seed_copy(&self) -> [u8; 32] {
        *self.0.expose_secret()
    }

    fn dalek(&self) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(self.0.expose_secret())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.dalek().sign(message).to_bytes()
    }

    /// The public key, hex (what `audit verify --pubkey` reads).
    pub fn public_hex(&self) -> String {
        hex::encode(self.verifying_key().to_bytes())
    }

    /// The public key, to check the log's own checkpoints before extending it.
    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.dalek().verifying_key()
    }
}

/// The prompt/output digest key (HMAC-SHA256).
pub struct DigestKey(SecretBox<[u8; 32]>);

impl std::fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DigestKey([redacted])")
    }
}

impl DigestKey {
    pub fn load(path: &Path) -> Result<DigestKey, AuditError> {
        Ok(DigestKey(SecretBox::new(Box::new(read_key(path)?))))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> DigestKey {
        DigestKey(SecretBox::new(Box::new(bytes)))
    }

    /// An incremental keyed digest (for streamed output).
    pub fn hasher(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length: this cannot fail.
        match <Hmac<Sha256> as Mac>::new_from_slice(self.0.expose_secret()) {
            Ok(mac) => mac,
            Err(_) => unreachable_hmac(),
        }
    }

    /// `hmac-sha256:HEX` of `text`.
    pub fn digest(&self, text: &[u8]) -> String {
        let mut mac = self.hasher();
        mac.update(text);
        finish(mac)
    }
}

#[cold]
fn unreachable_hmac() -> Hmac<Sha256> {
    // new_from_slice only fails for fixed-size-key MACs; HMAC is not one.
    <Hmac<Sha256> as hmac::digest::KeyInit>::new(&Default::default())
}

/// Finishes an incremental digest as `hmac-sha256:HEX`.
pub fn finish(mac: Hmac<Sha256>) -> String {
    format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
}

/// Reads a public key file (64 hex characters).
pub fn read_public(path: &Path) -> Result<ed25519_dalek::VerifyingKey, AuditError> {
    let bytes = read_key(path)?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| AuditError::Key {
        path: path.to_path_buf(),
        reason: "not an Ed25519 public key".into(),
    })
}

fn read_key(path: &Path) -> Result<[u8; 32], AuditError> {
    read_key_file(path).map_err(|e| match e {
        KeyFileError::Io { path, source } => AuditError::Io { path, source },
        KeyFileError::Malformed { path } => AuditError::Key {
            path,
            reason: KeyFileError::MALFORMED.into(),
        },
    })
}

/// Files written by [`keygen`].
pub const SIGNING_KEY_FILE: &str = "audit-signing.key";
pub const PUBLIC_KEY_FILE: &str = "audit-signing.pub";
pub const DIGEST_KEY_FILE: &str = "audit-digest.key";

/// Creates the signing key, its public key and the digest key in `dir` (mode 0600 for the
/// private ones). Existing files are kept. Returns the files created.
pub fn keygen(dir: &Path) -> Result<Vec<PathBuf>, AuditError> {
    use rand::RngCore;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AuditError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut created = Vec::new();
    let signing = dir.join(SIGNING_KEY_FILE);
    if !signing.exists() {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        write_private(&signing, &hex::encode(seed)).map_err(io(&signing))?;
        created.push(signing.clone());
    }
    let public = dir.join(PUBLIC_KEY_FILE);
    if !public.exists() {
        let key = SigningKey::load(&signing)?;
        std::fs::write(&public, format!("{}\n", key.public_hex())).map_err(io(&public))?;
        created.push(public);
    }
    let digest = dir.join(DIGEST_KEY_FILE);
    if !digest.exists() {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        write_private(&digest, &hex::encode(bytes)).map_err(io(&digest))?;
        created.push(digest);
    }
    Ok(created)
}

fn write_private(path: &Path, hex: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{hex}")?;
    f.sync_all()
}
