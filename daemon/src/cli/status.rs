//! `airlockd status`: a running daemon's summary from its admin listener's `/status`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::exit::{EXIT_FAILURE, EXIT_USAGE};
use crate::admin::status::{ClientTls, StatusError, Target, read};

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

/// Prints the summary (exit 0), or one line saying why not (exit 1, or 64 for a bad config,
/// URL or certificate option).
pub fn run(args: StatusArgs) -> ExitCode {
    let tls = ClientTls {
        ca: args.cacert,
        cert: args.cert,
        key: args.key,
    };
    let target = match (args.admin, args.config) {
        (_, Some(config)) => Target::Config(config),
        (Some(url), None) => Target::Url(url),
        (None, None) => Target::Url(format!("http://{}", crate::config::admin::DEFAULT_ADDRESS)),
    };
    match read(target, &tls) {
        Ok(report) => {
            print!("{}", report.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("airlockd status: {e}");
            ExitCode::from(match e {
                StatusError::Usage(_) => EXIT_USAGE,
                StatusError::Fetch { .. } => EXIT_FAILURE,
            })
        }
    }
}
