//! `airlockd`: parses the command line, validates the config (exit 64 with `FILE: key: reason`
//! on a bad one), installs logging, and calls into the library.

use std::process::ExitCode;

use airlock_daemon::cli::{CertsCommand, Cli, Command, EXIT_FAILURE, EXIT_USAGE};
use airlock_daemon::config::{Config, LoggingConfig};
use airlock_daemon::{certs, dev, logging, server};
use clap::Parser;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: clap's own output, exit 0.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, not clap's multi-line usage block.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid command line");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("airlockd: {first} (see `airlockd --help`)");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match cli.command {
        Command::CheckConfig(args) => match load(&args.config) {
            Ok(config) => {
                for warning in config.warnings() {
                    eprintln!("warning: {warning}");
                }
                println!("{}: ok", args.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail_config(e),
        },
        Command::Serve(args) => {
            let config = match load(&args.config) {
                Ok(config) => config,
                Err(e) => return fail_config(e),
            };
            logging::init(&config.logging);
            serve(args.config, config, None)
        }
        Command::Certs(CertsCommand::Init { dir, tenants }) => match certs::init(&dir, &tenants) {
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
        Command::Certs(CertsCommand::Revoke { dir, cert }) => match certs::revoke(&dir, &cert) {
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
        Command::Model(command) => ExitCode::from(airlock_daemon::model_cli::run(command)),
        Command::Audit(command) => ExitCode::from(airlock_daemon::audit::cli::run(command)),
        Command::Keys(command) => ExitCode::from(airlock_daemon::keys::cli::run(command)),
        Command::Status(args) => {
            use airlock_daemon::admin::status::{ClientTls, Target, run};
            let tls = ClientTls {
                ca: args.cacert,
                cert: args.cert,
                key: args.key,
            };
            let target = match (args.admin, args.config) {
                (_, Some(config)) => Target::Config(config),
                (Some(url), None) => Target::Url(url),
                (None, None) => Target::Url(format!(
                    "http://{}",
                    airlock_daemon::config::admin::DEFAULT_ADDRESS
                )),
            };
            ExitCode::from(run(target, &tls))
        }
        Command::Dev(args) => {
            logging::init(&LoggingConfig::default());
            let config_path = match dev::prepare(&args.dir, args.port) {
                Ok(path) => path,
                Err(e) => return fail(EXIT_FAILURE, e),
            };
            let config = match load(&config_path) {
                Ok(config) => config,
                Err(e) => return fail_config(e),
            };
            let (dir, port) = (args.dir, args.port);
            let banner: server::Banner =
                Box::new(move |addr| dev::instructions(&dir, addr.map_or(port, |a| a.port())));
            serve(config_path, config, Some(banner))
        }
    }
}

fn serve(path: std::path::PathBuf, config: Config, banner: Option<server::Banner>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(EXIT_FAILURE, format!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(server::run(path, config, banner)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "airlockd failed");
            fail(EXIT_FAILURE, e)
        }
    }
}

/// Prints one line to stderr and returns `code`.
fn fail(code: u8, error: impl std::fmt::Display) -> ExitCode {
    eprintln!("airlockd: {error}");
    ExitCode::from(code)
}

/// Loads and validates the config, including that its TLS files load.
fn load(path: &std::path::Path) -> Result<Config, airlock_daemon::config::ConfigError> {
    let config = Config::load(path)?;
    airlock_daemon::tls::check_files(&config, path)?;
    airlock_daemon::admin::check_files(&config, path)?;
    // Closed by default: the daemon makes no decision it cannot record (docs/audit.md).
    if config.audit.is_none() {
        return Err(airlock_daemon::config::ConfigError {
            file: path.to_path_buf(),
            path: "audit".into(),
            reason: "required: every request is recorded in the audit log; \
                     `airlockd audit keygen --dir DIR` creates its keys (docs/audit.md)"
                .into(),
        });
    }
    Ok(config)
}

/// A configuration error prints exactly `FILE: key.path: reason` and exits 64.
fn fail_config(error: airlock_daemon::config::ConfigError) -> ExitCode {
    eprintln!("{error}");
    ExitCode::from(EXIT_USAGE)
}
