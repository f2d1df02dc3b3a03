//! `airlockd dev`: certificates, config, keys and the built-in model in one directory, then
//! `serve` on it with the quick-start instructions as the banner.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::exit::{EXIT_FAILURE, bad_config, fail};
use crate::config::{Config, LoggingConfig};
use crate::{logging, server};

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Working directory for certificates, config and model.
    #[arg(long, value_name = "DIR", default_value = "airlock-dev")]
    pub dir: PathBuf,
    /// Port on 127.0.0.1.
    #[arg(long, value_name = "N", default_value_t = 8443)]
    pub port: u16,
}

pub fn run(args: DevArgs) -> ExitCode {
    logging::init(&LoggingConfig::default());
    let config_path = match crate::dev::prepare(&args.dir, args.port) {
        Ok(path) => path,
        Err(e) => return fail(EXIT_FAILURE, e),
    };
    let config = match Config::load_for_serve(&config_path) {
        Ok(config) => config,
        Err(e) => return bad_config(e),
    };
    let (dir, port) = (args.dir, args.port);
    let banner: server::Banner =
        Box::new(move |addr| crate::dev::instructions(&dir, addr.map_or(port, |a| a.port())));
    super::serve::serve(config_path, config, Some(banner))
}
