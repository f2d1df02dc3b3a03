//! The command line: one file per subcommand under `cli/`, the exit codes in `cli/exit.rs`.
//! Every subcommand has `--help`; errors print one line and exit with a sysexits-style code
//! (64 for a bad command line or configuration). The CLI is a contract: names, flags, output
//! and exit codes do not change.

mod audit;
mod certs;
mod check_config;
mod dev;
pub mod exit;
mod keys;
mod model;
mod serve;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub use audit::AuditCommand;
pub use certs::CertsCommand;
pub use dev::DevArgs;
pub use exit::{EXIT_FAILURE, EXIT_USAGE};
pub use keys::KeysCommand;
pub use model::ModelCommand;
pub use status::StatusArgs;

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
    Model(ModelCommand),
    /// The tamper-evident audit log: verify, export, digest, backup, keygen.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// API keys: create (printed once), list, revoke, rotate.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// A running daemon's summary (uptime, models, load, audit health) from its admin
    /// listener's /status.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The TOML configuration file (see docs/config.md).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
}

/// Parses the process's arguments. `--help` and `--version` print clap's own output and
/// give exit 0; a bad command line prints one line (not clap's usage block) and gives 64.
pub fn parse() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid command line");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("airlockd: {first} (see `airlockd --help`)");
            Err(ExitCode::from(EXIT_USAGE))
        }
    }
}

/// Runs one parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::CheckConfig(args) => check_config::run(args),
        Command::Certs(command) => certs::run(command),
        Command::Dev(args) => dev::run(args),
        Command::Model(command) => model::run(command),
        Command::Audit(command) => audit::run(command),
        Command::Keys(command) => keys::run(command),
        Command::Status(args) => status::run(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
