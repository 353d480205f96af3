//! Quickstart: open the configured backend, push a few real Yjs edits, read
//! them back as a change log and as a document, and print what happened.
//!
//! ```text
//! cargo run --release --example quickstart                  # SQLite in ./seqsync-data
//! SEQSYNC_STORAGE_BACKEND=redb cargo run --release --example quickstart
//! cargo run --release --example quickstart -- --config seqsync.toml
//! ```

use std::path::PathBuf;

use clap::Parser;
use seqsync::{EngineConfig, PushOptions};
use yrs::{GetString, ReadTxn, Text, Transact};

#[derive(Parser)]
#[command(about = "Push a few Yjs edits through seqsync and read them back")]
struct Args {
    /// TOML config file (every key optional; SEQSYNC_* variables override).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Collection to write to.
    #[arg(long, default_value = "quickstart")]
    collection: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let config = EngineConfig::load(args.config.as_deref())?;
    println!(
        "opening {:?} storage at {} ({:?} durability)",
        config.storage.backend,
        config.storage.path.display(),
        config.storage.durability
    );
    let engine = seqsync::open(config)?;

    // A client: a Yjs document with a text, edited three times.
    let client = yrs::Doc::new();
    let text = client.get_or_insert_text("content");
    let start = engine.changes(&args.collection, 0, 0, None).await?.head;
    for word in ["Hello", ", ", "seqsync!"] {
        let before = client.transact().state_vector();
        {
            let mut txn = client.transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, len, word);
        }
        let update = client.transact().encode_state_as_update_v1(&before);
        let outcome = engine
            .push(&args.collection, "greeting", update, PushOptions::default())
            .await?;
        println!(
            "pushed {word:?}: seq {:?}, head {}",
            outcome.seq, outcome.head
        );
    }

    let page = engine.changes(&args.collection, start, 100, None).await?;
    println!("changes after cursor {start}:");
    for change in &page.changes {
        println!(
            "  seq {:>4}  {:<8} doc {:<10} {} bytes",
            change.seq,
            change.kind.as_str(),
            change.doc,
            change.payload.len()
        );
    }

    let state = engine.document(&args.collection, "greeting").await?;
    let replica = yrs::Doc::new();
    let replica_text = replica.get_or_insert_text("content");
    replica
        .transact_mut()
        .apply_update(yrs::Update::decode_v1(&state.update)?)?;
    println!(
        "document 'greeting' at cursor {}: {:?}",
        state.cursor,
        replica_text.get_string(&replica.transact())
    );
    engine.shutdown().await;
    Ok(())
}

use yrs::updates::decoder::Decode;
