//! `airlockd check-config`: validate a configuration file as `serve` would.

use std::process::ExitCode;

use super::ConfigArg;
use super::exit::bad_config;
use crate::config::Config;

/// Prints warnings and `FILE: ok` (exit 0), or `FILE: key.path: reason` (exit 64).
pub fn run(args: ConfigArg) -> ExitCode {
    match Config::load_for_serve(&args.config) {
        Ok(config) => {
            for warning in config.warnings() {
                eprintln!("warning: {warning}");
            }
            println!("{}: ok", args.config.display());
            ExitCode::SUCCESS
        }
        Err(e) => bad_config(e),
    }
}
