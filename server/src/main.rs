//! The `seqsync-server` binary; same as `cargo run --example server`.

fn main() -> std::process::ExitCode {
    seqsync_server::run_cli()
}
