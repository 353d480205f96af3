//! The seqsync host server (README, "The host server"): HTTP + WebSocket API, y-websocket
//! compatibility, Prometheus metrics, on the embedded default (SQLite under
//! `./seqsync-data`, `127.0.0.1:8787`).
//!
//! ```text
//! cargo run --release --example server
//! cargo run --release --example server -- --config seqsync.toml
//! SEQSYNC_STORAGE_BACKEND=redb cargo run --release --example server
//! ```
//!
//! The server itself lives in the `seqsync-server` crate so that its tests can
//! start it; this example is its command line.

fn main() -> std::process::ExitCode {
    seqsync_server::run_cli()
}
