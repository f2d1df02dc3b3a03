//! `airlockd`: parses the command line and runs it (`airlock_daemon::cli`: one file per
//! subcommand; config validation exits 64 with `FILE: key: reason`).

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: the request path allocates and frees many small
/// objects across threads (hyper, rustls, audit records), where glibc spent ≈ 13 % of the
/// daemon's CPU (bench/results/gateway.md) and grew one arena per thread (the soak's RSS
/// steps, see systemd/airlockd.service's MALLOC_ARENA_MAX).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match airlock_daemon::cli::parse() {
        Ok(cli) => airlock_daemon::cli::run(cli),
        Err(code) => code,
    }
}
