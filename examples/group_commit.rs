//! Durable ingest: pushes/s with 1 writer versus 64 concurrent writers, on
//! SQLite and redb with `durability = "immediate"`, and the ratio (the gain
//! from group commit; docs/DESIGN.md's targets are ≥ 10×).
//!
//! ```text
//! cargo run --release --example group_commit            # full run
//! cargo run --release --example group_commit -- --quick # smaller counts
//! cargo run --release --example group_commit -- --backends memory --durability eventual
//! ```
//!
//! Updates are generated before timing starts. Each writer is a simulated
//! client typing into its own document; 64 writers spread over 16
//! collections × 4 documents.

use seqsync_testkit::traces;

use std::time::Instant;

use clap::Parser;
use seqsync::{BackendKind, Durability, Engine, EngineConfig, PushOptions};

#[derive(Parser)]
struct Args {
    /// Fewer pushes, for a quick look.
    #[arg(long)]
    quick: bool,
    /// Backends to measure, comma-separated: sqlite, redb, memory.
    #[arg(long, default_value = "sqlite,redb", value_delimiter = ',')]
    backends: Vec<String>,
    /// Durability: immediate (fsync per commit group) or eventual.
    #[arg(long, default_value = "immediate")]
    durability: String,
}

fn engine(kind: BackendKind, durability: Durability, dir: &std::path::Path) -> Engine {
    // SEQSYNC_* variables apply (e.g. SEQSYNC_ACTORS_ARBITERS=1).
    let mut config = EngineConfig::default()
        .with_env(std::env::vars())
        .expect("SEQSYNC_* variables name config keys");
    config.storage.backend = kind;
    config.storage.path = dir.to_path_buf();
    config.storage.durability = durability;
    seqsync::open(config).expect("open engine")
}

async fn one_writer(kind: BackendKind, durability: Durability, pushes: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(kind, durability, dir.path());
    let updates = traces::typing(1, pushes);
    let started = Instant::now();
    for update in updates {
        engine
            .push("solo", "doc", update, PushOptions::default())
            .await
            .expect("push");
    }
    let rate = pushes as f64 / started.elapsed().as_secs_f64();
    engine.shutdown().await;
    rate
}

async fn many_writers(
    kind: BackendKind,
    durability: Durability,
    writers: usize,
    per_writer: usize,
) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(kind, durability, dir.path());
    let work: Vec<Vec<Vec<u8>>> = (0..writers)
        .map(|w| traces::typing(100 + w as u64, per_writer))
        .collect();
    let started = Instant::now();
    let tasks: Vec<_> = work
        .into_iter()
        .enumerate()
        .map(|(w, updates)| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let collection = format!("c{}", w % 16);
                let doc = format!("d{}", w / 16);
                for update in updates {
                    engine
                        .push(&collection, &doc, update, PushOptions::default())
                        .await
                        .expect("push");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer task");
    }
    let rate = (writers * per_writer) as f64 / started.elapsed().as_secs_f64();
    engine.shutdown().await;
    rate
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let (solo, per_writer) = if args.quick { (200, 20) } else { (2_000, 200) };
    let durability: Durability = match args.durability.as_str() {
        "immediate" => Durability::Immediate,
        "eventual" => Durability::Eventual,
        other => panic!("unknown durability {other:?}: use immediate or eventual"),
    };
    println!(
        "pushes/s, durability = {}, {} cores",
        args.durability,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<8} {:>14} {:>16} {:>8}",
        "backend", "1 writer", "64 writers", "ratio"
    );
    for name in &args.backends {
        let kind = match name.as_str() {
            "sqlite" => BackendKind::Sqlite,
            "redb" => BackendKind::Redb,
            "memory" => BackendKind::Memory,
            other => panic!("unknown backend {other:?}: use sqlite, redb or memory"),
        };
        let single = one_writer(kind, durability, solo).await;
        let many = many_writers(kind, durability, 64, per_writer).await;
        println!(
            "{:<8} {:>14.0} {:>16.0} {:>7.1}x",
            format!("{kind:?}").to_lowercase(),
            single,
            many,
            many / single
        );
    }
}
