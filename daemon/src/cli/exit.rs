//! Exit codes, in one place: sysexits-style 64 for what the operator typed (command line,
//! configuration), 1 for a failure while running, 2 for an audit log found tampered.

use std::fmt::Display;
use std::process::ExitCode;

use crate::config::ConfigError;

/// Exit code for a bad command line or configuration file (`EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// Exit code for a failure while running (`EX_SOFTWARE` is too specific; 1 is conventional).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of `audit verify` and `audit inspect` when the log is not intact.
pub const EXIT_TAMPERED: u8 = 2;

/// Prints `airlockd: ERROR` to stderr (the one line every failing subcommand shows) and
/// returns `code`.
pub fn fail(code: u8, error: impl Display) -> ExitCode {
    eprintln!("airlockd: {error}");
    ExitCode::from(code)
}

/// A configuration error prints exactly `FILE: key.path: reason` and exits 64.
pub fn bad_config(error: ConfigError) -> ExitCode {
    eprintln!("{error}");
    ExitCode::from(EXIT_USAGE)
}
