//! A tiny notes tool on a seqsync replica: notes live in a local store and
//! sync with a running host server, with a progress bar and the sync report.
//!
//! ```text
//! cargo run --release --example server &                      # a server on 127.0.0.1:8787
//! cargo run --example replica -- add "buy milk"               # offline is fine: kept locally
//! cargo run --example replica -- list
//! cargo run --example replica -- sync                         # pull, push, report
//! cargo run --example replica -- follow                       # live until Ctrl-C
//! cargo run --example replica -- --store ./phone-b --peer phone-b sync   # a second device
//! ```

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use seqsync::{BackendKind, EngineConfig};
use seqsync_replica::{HttpTransport, Replica};
use yrs::updates::decoder::Decode;
use yrs::{GetString, Text, Transact, WriteTxn};

#[derive(Parser)]
struct Args {
    /// The local store (SQLite).
    #[arg(long, default_value = "./replica-data")]
    store: PathBuf,
    /// The server.
    #[arg(long, default_value = "http://127.0.0.1:8787")]
    server: String,
    /// This device's peer id.
    #[arg(long, default_value = "phone-a")]
    peer: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Add a note (kept locally until the next sync).
    Add {
        /// Its text.
        text: String,
    },
    /// List the notes held locally.
    List,
    /// Sync with the server and print the report.
    Sync,
    /// Stay live (remote changes applied as they come, local ones pushed)
    /// until Ctrl-C, then say goodbye and print what happened.
    Follow,
}

const COLLECTION: &str = "notes";

fn note_text(state: &[u8]) -> String {
    let doc = yrs::Doc::new();
    if let Ok(update) = yrs::Update::decode_v1(state) {
        let _ = doc.transact_mut().apply_update(update);
    }
    let text = doc.get_or_insert_text("t");
    let out = text.get_string(&doc.transact());
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let mut config = EngineConfig::default();
    config.storage.backend = BackendKind::Sqlite;
    config.storage.path = args.store.clone();
    let storage = match seqsync::open_storage(&config.storage) {
        Ok(storage) => storage,
        Err(err) => {
            eprintln!("replica: {}: {err}", args.store.display());
            std::process::exit(1);
        }
    };
    let replica = match Replica::open(
        storage,
        HttpTransport::new(args.server.clone(), None),
        &args.peer,
    ) {
        Ok(replica) => std::sync::Arc::new(replica),
        Err(err) => {
            eprintln!("replica: {err}");
            std::process::exit(1);
        }
    };
    match args.command {
        Cmd::Add { text } => {
            let id = format!("note-{}", now_ms());
            let result = replica
                .edit(COLLECTION, &id, |txn| {
                    let t = txn.get_or_insert_text("t");
                    t.insert(txn, 0, &text);
                })
                .await;
            match result {
                Ok(_) => println!(
                    "added {id} (durable locally; {} edit(s) waiting to sync)",
                    replica.outbox_len(COLLECTION).unwrap_or(0)
                ),
                Err(err) => eprintln!("replica: {err}"),
            }
        }
        Cmd::List => match replica.documents(COLLECTION) {
            Ok(notes) => {
                for (id, deleted) in notes {
                    if deleted {
                        continue;
                    }
                    let state = replica.document(COLLECTION, &id).unwrap_or_default();
                    println!("{id}: {}", note_text(&state));
                }
                println!(
                    "({} edit(s) waiting to sync)",
                    replica.outbox_len(COLLECTION).unwrap_or(0)
                );
            }
            Err(err) => eprintln!("replica: {err}"),
        },
        Cmd::Follow => {
            let session = match replica.follow(COLLECTION).await {
                Ok(session) => session,
                Err(err) => {
                    eprintln!("replica: {err}");
                    std::process::exit(1);
                }
            };
            println!("following {COLLECTION} on {}; Ctrl-C to stop", args.server);
            let _ = tokio::signal::ctrl_c().await;
            match session.stop().await {
                Ok(report) => println!(
                    "stopped cleanly: {} change(s) received, {} pushed, cursor {}",
                    report.received, report.pushed, report.cursor
                ),
                Err(err) => eprintln!("replica: {err}"),
            }
        }
        Cmd::Sync => {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_message("pull");
            let result = replica
                .sync_with_progress(COLLECTION, |p| {
                    if p.to_push > 0 {
                        bar.set_message("push");
                        bar.set_length(p.to_push);
                        bar.set_position(p.pushed);
                    } else {
                        bar.set_length(p.expected);
                        bar.set_position(p.received);
                    }
                })
                .await;
            bar.finish_and_clear();
            match result {
                Ok(report) => println!(
                    "{:?}; cursor {}, server head {}{}",
                    report.outcome,
                    report.cursor,
                    report.head,
                    if report.follow_up_needed {
                        "; the server moved meanwhile: sync again"
                    } else {
                        ""
                    }
                ),
                Err(err) => {
                    eprintln!("replica: {err} (nothing local was lost; sync again later)");
                    std::process::exit(1);
                }
            }
        }
    }
}

/// Milliseconds since the Unix epoch (a note's id).
fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}
