//! `airlockd serve`: validate the config, install logging, run the daemon until a signal.

use std::path::PathBuf;
use std::process::ExitCode;

use super::ConfigArg;
use super::exit::{EXIT_FAILURE, bad_config, fail};
use crate::config::Config;
use crate::{logging, server};

pub fn run(args: ConfigArg) -> ExitCode {
    let config = match Config::load_for_serve(&args.config) {
        Ok(config) => config,
        Err(e) => return bad_config(e),
    };
    logging::init(&config.logging);
    serve(args.config, config, None)
}

/// Runs the server on a new multi-threaded runtime until it stops (`serve` and `dev`).
pub(super) fn serve(path: PathBuf, config: Config, banner: Option<server::Banner>) -> ExitCode {
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
