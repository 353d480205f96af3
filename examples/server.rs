//! The seqsync host server embedded in a program of your own: read the
//! configuration, serve until Ctrl-C. The README's first command runs it on
//! the embedded default (SQLite under `./seqsync-data`, `127.0.0.1:8787`):
//!
//! ```text
//! cargo run --release --example server
//! cargo run --release --example server -- --config seqsync.toml
//! SEQSYNC_STORAGE_BACKEND=redb cargo run --release --example server
//! ```
//!
//! `seqsync serve` (crate `cli/`) is the same server as a command. A host
//! that wants the HTTP API beside its own runtime starts
//! `seqsync_server::ServerThread` instead, or builds the actix server with
//! `seqsync_server::server` around an engine it opened itself.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Logs to stderr, filtered by RUST_LOG (default `info`).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // `--config FILE`, the only argument.
    let mut args = std::env::args().skip(1);
    let file = match (args.next().as_deref(), args.next(), args.next()) {
        (None, _, _) => None,
        (Some("--config"), Some(file), None) => Some(PathBuf::from(file)),
        _ => {
            eprintln!("usage: server [--config FILE]");
            return ExitCode::from(2);
        }
    };
    // Every key optional; SEQSYNC_<SECTION>_<KEY> variables override.
    let config = match seqsync_server::HostConfig::load(file.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("seqsync: {err}");
            return ExitCode::from(2);
        }
    };
    // Blocking until SIGINT or SIGTERM; everything acked is on disk after.
    match seqsync_server::serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("seqsync: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
