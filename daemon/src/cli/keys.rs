//! `airlockd keys create|list|revoke|rotate`: manage API keys in the database named by
//! `[auth] key_db`. They work while the daemon runs (SQLite in WAL mode); the daemon
//! notices changes within 1 second.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use airlock_policy::KeyId;
use clap::Subcommand;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::exit::{EXIT_FAILURE, EXIT_USAGE, fail};
use crate::config::policy::PolicyConfig;
use crate::config::{Config, parse_duration};
use crate::keys::KeyStore;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key for a tenant and print it (once: it is stored only as a hash).
    Create {
        #[arg(long, value_name = "NAME")]
        tenant: String,
        /// Lifetime, e.g. `90d`; default: no expiry.
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        /// Accept the key only over this client certificate (PEM).
        #[arg(long, value_name = "FILE")]
        bind_cert: Option<PathBuf>,
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },
    /// List keys (ids, tenants, dates, state; never secrets).
    List {
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },
    /// Revoke a key: refused by the running daemon within 1 second.
    Revoke {
        /// The key id (the part after `alk_`, as `keys list` prints it).
        id: String,
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },
    /// Issue a replacement key; the old one stays valid for the overlap.
    Rotate {
        id: String,
        /// How long the old key keeps working, e.g. `24h`.
        #[arg(long, value_name = "DURATION", default_value = "24h")]
        overlap: String,
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },
}

/// Runs a `keys` subcommand; returns the exit code.
pub fn run(command: KeysCommand) -> ExitCode {
    match execute(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => fail(code, message),
    }
}

type Failure = (u8, String);

fn store(config: &Path) -> Result<(KeyStore, PolicyConfig), Failure> {
    let policy = Config::load_policy(config).map_err(|e| (EXIT_USAGE, e.to_string()))?;
    let path = policy.key_db.clone().ok_or_else(|| {
        (
            EXIT_USAGE,
            format!(
                "{}: auth.key_db: not set; API keys are disabled",
                config.display()
            ),
        )
    })?;
    let store = KeyStore::open(&path).map_err(|e| (EXIT_FAILURE, e.to_string()))?;
    Ok((store, policy))
}

fn key_id(id: &str) -> Result<KeyId, Failure> {
    KeyId::parse(id).map_err(|_| (EXIT_USAGE, format!("`{id}` is not a key id")))
}

/// A duration as in the config (`ms`, `s`, `m`, `h`), plus days (`90d`).
fn lifetime(text: &str) -> Result<std::time::Duration, String> {
    match text.strip_suffix('d').map(str::parse::<u64>) {
        Some(Ok(days)) if days > 0 => days
            .checked_mul(86_400)
            .map(std::time::Duration::from_secs)
            .ok_or_else(|| "too long".to_owned()),
        Some(_) => Err(format!("`{text}` is not a number of days")),
        None => parse_duration(text),
    }
}

fn date(t: SystemTime) -> String {
    let secs = crate::clock::unix_secs(t);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

fn execute(command: KeysCommand) -> Result<(), Failure> {
    match command {
        KeysCommand::Create {
            tenant,
            expires,
            bind_cert,
            config,
        } => {
            let (store, cfg) = store(&config)?;
            if !cfg.tenants.is_empty() && cfg.tenants.get(&tenant).is_none() {
                return Err((EXIT_USAGE, format!("no [[tenants]] entry named `{tenant}`")));
            }
            let expires_at = expires
                .map(|e| lifetime(&e).map_err(|r| (EXIT_USAGE, format!("--expires: {r}"))))
                .transpose()?
                .map(|d| SystemTime::now() + d);
            let bound = bind_cert
                .map(|path| {
                    let der = CertificateDer::from_pem_file(&path).map_err(|e| {
                        (EXIT_USAGE, format!("--bind-cert {}: {e}", path.display()))
                    })?;
                    Ok::<_, Failure>(crate::identity::sha256_fingerprint(der.as_ref()))
                })
                .transpose()?;
            let (key, record) = store
                .create(&tenant, expires_at, bound)
                .map_err(|e| (EXIT_FAILURE, e.to_string()))?;
            println!("{}", key.expose());
            eprintln!(
                "created key {} for tenant {}; it is shown only once",
                record.id, record.tenant
            );
            Ok(())
        }
        KeysCommand::List { config } => {
            let (store, _) = store(&config)?;
            let now = SystemTime::now();
            println!("ID\tTENANT\tCREATED\tEXPIRES\tBOUND_CERT\tSTATE");
            for r in store.list().map_err(|e| (EXIT_FAILURE, e.to_string()))? {
                let state = if r.revoked {
                    "revoked"
                } else if !r.usable(now) {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{state}",
                    r.id,
                    r.tenant,
                    date(r.created_at),
                    r.expires_at.map_or_else(|| "-".into(), date),
                    r.bound_cert_sha256.as_deref().unwrap_or("-"),
                );
            }
            Ok(())
        }
        KeysCommand::Revoke { id, config } => {
            let (store, _) = store(&config)?;
            store
                .revoke(&key_id(&id)?)
                .map_err(|e| (EXIT_FAILURE, e.to_string()))?;
            println!("revoked {id}; the running daemon refuses it within 1 second");
            Ok(())
        }
        KeysCommand::Rotate {
            id,
            overlap,
            config,
        } => {
            let (store, _) = store(&config)?;
            let overlap =
                parse_duration(&overlap).map_err(|r| (EXIT_USAGE, format!("--overlap: {r}")))?;
            let (key, record, until) = store
                .rotate(&key_id(&id)?, overlap)
                .map_err(|e| (EXIT_FAILURE, e.to_string()))?;
            println!("{}", key.expose());
            eprintln!(
                "created key {} for tenant {}; old key {id} stays valid until {}",
                record.id,
                record.tenant,
                date(until)
            );
            Ok(())
        }
    }
}
