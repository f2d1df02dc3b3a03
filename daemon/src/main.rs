//! `airlockd`: parses the command line and runs it (`airlock_daemon::cli`: one file per
//! subcommand; config validation exits 64 with `FILE: key: reason`).

use std::process::ExitCode;

fn main() -> ExitCode {
    match airlock_daemon::cli::parse() {
        Ok(cli) => airlock_daemon::cli::run(cli),
        Err(code) => code,
    }
}
