//! The command line. Every subcommand has `--help`; errors print one line and exit with a
//! sysexits-style code (64 for a bad command line or configuration).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Exit code for a bad command line or configuration file (`EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// Exit code for a failure while running (`EX_SOFTWARE` is too specific; 1 is conventional).
pub const EXIT_FAILURE: u8 = 1;

/// airlockd: a mutual-TLS gateway serving local LLMs over the OpenAI API.
#[derive(Debug, Parser)]
#[command(name = "airlockd", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(ConfigArg),
    /// Validate a configuration file: exit 0, or print `FILE: key.path: reason` and exit 64.
    CheckConfig(ConfigArg),
    /// Development PKI: CA, server and client certificates, CRL.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// One-command quick start: certificates, config and the built-in model, served on
    /// https://127.0.0.1:8443.
    Dev(DevArgs),
    /// Models: run the engine directly (`generate`), write integrity manifests (`manifest`).
    #[command(subcommand)]
    Model(crate::model_cli::ModelCommand),
    /// The tamper-evident audit log: verify, export, digest, backup, keygen.
    #[command(subcommand)]
    Audit(crate::audit::cli::AuditCommand),
    /// API keys: create (printed once), list, revoke, rotate.
    #[command(subcommand)]
    Keys(crate::keys::cli::KeysCommand),
    /// A running daemon's summary (uptime, models, load, audit health) from its admin
    /// listener's /status.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The admin listener, e.g. http://127.0.0.1:9464 (default: that, or the config's
    /// `[admin] address`).
    #[arg(long, value_name = "URL", conflicts_with = "config")]
    pub admin: Option<String>,
    /// Read the admin address from this configuration file's `[admin]` section.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// For an `[admin.tls]` listener: the CA bundle its server certificate chains to.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// For an `[admin.tls]` listener: the client certificate (PEM) it requires.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The TOML configuration file (see docs/config.md).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a CA, a server certificate (localhost, 127.0.0.1, ::1), an empty CRL and one
    /// client certificate per tenant. Existing files are kept.
    Init {
        /// Directory for the PEM files (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// A tenant to issue a client certificate for (CN = NAME); repeatable.
        #[arg(long = "tenant", value_name = "NAME")]
        tenants: Vec<String>,
    },
    /// Add a certificate's serial to DIR/crl.pem (re-signed); send SIGHUP to apply.
    Revoke {
        /// The directory `certs init` wrote.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The PEM certificate to revoke.
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Working directory for certificates, config and model.
    #[arg(long, value_name = "DIR", default_value = "airlock-dev")]
    pub dir: PathBuf,
    /// Port on 127.0.0.1.
    #[arg(long, value_name = "N", default_value_t = 8443)]
    pub port: u16,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
