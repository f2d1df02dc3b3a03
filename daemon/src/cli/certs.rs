//! `airlockd certs init|revoke`: the development PKI.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::exit::{EXIT_FAILURE, fail};
use crate::certs;

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

pub fn run(command: CertsCommand) -> ExitCode {
    match command {
        CertsCommand::Init { dir, tenants } => match certs::init(&dir, &tenants) {
            Ok(report) => {
                for path in &report.created {
                    println!("created {}", path.display());
                }
                for path in &report.kept {
                    println!("kept    {}", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_FAILURE, e),
        },
        CertsCommand::Revoke { dir, cert } => match certs::revoke(&dir, &cert) {
            Ok(r) => {
                let note = if r.already_revoked {
                    " (already revoked)"
                } else {
                    ""
                };
                println!(
                    "revoked serial {}{note}; {} is now CRL number {}; send SIGHUP to airlockd to apply",
                    r.serial,
                    dir.join(certs::CRL).display(),
                    r.crl_number
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_FAILURE, e),
        },
    }
}
