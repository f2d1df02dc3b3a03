//! `credential:NAME` paths: secrets handed over by systemd's `LoadCredential=` (or
//! `SetCredentialEncrypted=`/`LoadCredentialEncrypted=`), read from `$CREDENTIALS_DIRECTORY/NAME`.
//!
//! systemd copies each credential into a per-service, non-swappable directory that only the
//! service's user can read and exports its path as `$CREDENTIALS_DIRECTORY`. The key files
//! themselves can then stay root-only (`/etc/airlock/private/…`, mode 0600) while the daemon
//! runs as an unprivileged user that could not open them. See `docs/systemd.md`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::{Invalid, invalid, resolve};

/// The prefix that marks a path value as a systemd credential.
pub const PREFIX: &str = "credential:";

/// The environment variable systemd sets for a service with credentials.
pub const ENV: &str = "CREDENTIALS_DIRECTORY";

/// Resolves a secret file path: `credential:NAME` becomes `$CREDENTIALS_DIRECTORY/NAME` (which
/// must exist), anything else is a file path relative to the config file's directory.
pub(super) fn secret_path(key: &str, base: &Path, path: PathBuf) -> Result<PathBuf, Invalid> {
    secret_path_in(key, base, path, std::env::var_os(ENV).as_deref())
}

/// [`secret_path`] with the credentials directory given, for tests.
fn secret_path_in(
    key: &str,
    base: &Path,
    path: PathBuf,
    credentials: Option<&OsStr>,
) -> Result<PathBuf, Invalid> {
    let Some(name) = path.to_str().and_then(|p| p.strip_prefix(PREFIX)) else {
        return Ok(resolve(base, path));
    };
    // systemd credential names are file names: no separators, not `.`/`..`.
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(invalid(
            key,
            format!(
                "`{PREFIX}{name}` is not a credential name (a file name as given to \
                 LoadCredential=NAME:PATH, without `/`)"
            ),
        ));
    }
    let dir = match credentials {
        Some(dir) if !dir.is_empty() => Path::new(dir),
        _ => {
            return Err(invalid(
                key,
                format!(
                    "`{PREFIX}{name}` needs ${ENV}, which is not set: systemd sets it for a \
                     service with LoadCredential={name}:/path/to/file; outside systemd, give a \
                     file path instead"
                ),
            ));
        }
    };
    let file = dir.join(name);
    match std::fs::metadata(&file) {
        Ok(meta) if meta.is_file() => Ok(file),
        Ok(_) => Err(invalid(
            key,
            format!(
                "credential `{name}`: {} is not a regular file",
                file.display()
            ),
        )),
        Err(e) => Err(invalid(
            key,
            format!(
                "credential `{name}`: cannot open {}: {e} (is LoadCredential={name}:… in the \
                 unit?)",
                file.display()
            ),
        )),
    }
}

/// Why a key file (see [`read_key_file`]) cannot be used. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {}", path.display(), Self::MALFORMED)]
    Malformed { path: PathBuf },
}

impl KeyFileError {
    pub const MALFORMED: &str = "expected 64 hexadecimal characters (32 bytes)";
}

/// Reads a 32-byte key file: 64 hex characters and optional surrounding whitespace (the
/// audit signing and digest keys, written by `airlockd audit keygen`). Config validation
/// checks `[audit]`'s keys with it; the audit log loads them with it.
pub fn read_key_file(path: &Path) -> Result<[u8; 32], KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = || KeyFileError::Malformed {
        path: path.to_path_buf(),
    };
    let bytes = hex::decode(text.trim()).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn plain_paths_resolve_against_the_config_directory() {
        let got = secret_path_in("k", Path::new("/etc/airlock"), "tls/x.key".into(), None).unwrap();
        assert_eq!(got, PathBuf::from("/etc/airlock/tls/x.key"));
        let got = secret_path_in("k", Path::new("/etc/airlock"), "/abs.key".into(), None).unwrap();
        assert_eq!(got, PathBuf::from("/abs.key"));
    }

    #[test]
    fn a_credential_resolves_into_the_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tls.key"), "k").unwrap();
        let got = secret_path_in(
            "listener.tls.key",
            Path::new("/etc/airlock"),
            "credential:tls.key".into(),
            Some(dir.path().as_os_str()),
        )
        .unwrap();
        assert_eq!(got, dir.path().join("tls.key"));
    }

    #[test]
    fn a_credential_without_the_variable_names_the_key_and_the_variable() {
        for unset in [None, Some(OsStr::new(""))] {
            let e = secret_path_in(
                "audit.signing_key",
                Path::new("/etc"),
                "credential:sign".into(),
                unset,
            )
            .unwrap_err();
            assert_eq!(e.path, "audit.signing_key");
            assert!(e.reason.contains("CREDENTIALS_DIRECTORY"), "{}", e.reason);
            assert!(e.reason.contains("LoadCredential=sign:"), "{}", e.reason);
        }
    }

    #[test]
    fn a_missing_credential_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = secret_path_in(
            "audit.digest_key",
            Path::new("/etc"),
            "credential:digest".into(),
            Some(dir.path().as_os_str()),
        )
        .unwrap_err();
        assert_eq!(e.path, "audit.digest_key");
        assert!(
            e.reason
                .contains(&dir.path().join("digest").display().to_string()),
            "{}",
            e.reason
        );
    }

    #[test]
    fn credential_names_cannot_leave_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "credential:",
            "credential:../x",
            "credential:a/b",
            "credential:..",
        ] {
            let e = secret_path_in(
                "k",
                Path::new("/"),
                bad.into(),
                Some(dir.path().as_os_str()),
            )
            .unwrap_err();
            assert!(
                e.reason.contains("not a credential name"),
                "{bad}: {}",
                e.reason
            );
        }
    }
}
