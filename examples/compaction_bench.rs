//! Compaction of a real editing trace as one document (docs/DESIGN.md: compaction, performance targets).
//!
//! Pushes every transaction of `automerge-paper` (259,778 single-keystroke
//! updates; CC BY 4.0, Martin Kleppmann) as one document, then times
//! `compact()` and compares it with replaying the same updates into a bare
//! `yrs::Doc` (one transaction per update), measured in the same run.
//! Target: compaction ≤ 2× the bare replay.
//!
//! ```text
//! cargo run --release --example compaction_bench
//! cargo run --release --example compaction_bench -- --trace seph-blog1 --backend redb
//! ```

use seqsync_testkit::traces;

use std::time::Instant;

use clap::Parser;
use seqsync::{BackendKind, Durability, EngineConfig, PushOptions};
use yrs::updates::decoder::Decode;
use yrs::Transact;

#[derive(Parser)]
struct Args {
    /// Trace name under benches/traces.
    #[arg(long, default_value = "automerge-paper")]
    trace: String,
    /// sqlite, redb or memory.
    #[arg(long, default_value = "sqlite")]
    backend: String,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let kind = match args.backend.as_str() {
        "sqlite" => BackendKind::Sqlite,
        "redb" => BackendKind::Redb,
        "memory" => BackendKind::Memory,
        other => panic!("unknown backend {other}"),
    };
    let load_started = Instant::now();
    let trace = traces::load(&args.trace);
    eprintln!(
        "trace loaded in {:.3} s",
        load_started.elapsed().as_secs_f64()
    );
    let n = trace.updates.len();

    // Baseline: bare yrs, one transaction per update.
    let started = Instant::now();
    let bare = yrs::Doc::new();
    for update in &trace.updates {
        bare.transact_mut()
            .apply_update(yrs::Update::decode_v1(update).expect("decode"))
            .expect("apply");
    }
    let bare_secs = started.elapsed().as_secs_f64();

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = EngineConfig::default();
    config.storage.backend = kind;
    config.storage.path = dir.path().to_path_buf();
    config.storage.durability = Durability::Eventual; // ingest is not what is measured
    config.compaction.max_deltas = u64::MAX; // no automatic compaction
    config.compaction.max_delta_bytes = u64::MAX;
    let engine = seqsync::open(config).expect("open");
    let ingest_started = Instant::now();
    for chunk in trace.updates.chunks(1000) {
        let batch = chunk
            .iter()
            .map(|u| ("paper".to_owned(), u.clone()))
            .collect();
        engine
            .push_batch("bench", batch, PushOptions::default())
            .await
            .expect("push");
    }

    let ingest_secs = ingest_started.elapsed().as_secs_f64();
    let started = Instant::now();
    let summary = engine.compact("bench").await.expect("compact");
    let compact_secs = started.elapsed().as_secs_f64();

    // Correctness: the compacted document reads back as the trace's end.
    let state = engine.document("bench", "paper").await.expect("document");
    let text = traces::text_of_updates([state.update.as_slice()]);
    assert_eq!(text, trace.end_content, "compacted text equals endContent");
    let log = engine.changes("bench", 0, 10, None).await.expect("changes");
    assert_eq!(log.changes.len(), 1, "one snapshot remains");
    engine.shutdown().await;

    println!(
        "trace {} ({} updates) on {}, 2 cores; data CC BY 4.0 (see benches/traces/README.md)",
        trace.name, n, args.backend
    );
    println!(
        "{:<34} {:>12}",
        "bare yrs replay (baseline)",
        format!("{:.3} s", bare_secs)
    );
    println!(
        "{:<34} {:>12}",
        "engine compact() (read+merge+commit)",
        format!("{:.3} s", compact_secs)
    );
    println!(
        "{:<34} {:>11.2}x   (target <= 2x)",
        "ratio",
        compact_secs / bare_secs
    );
    println!(
        "{:<34} {:>12}",
        "ingest (push_batch of 1000, eventual)",
        format!("{:.3} s", ingest_secs)
    );
    println!(
        "{:<34} {:>12} -> {} bytes ({} deltas removed)",
        "payload", summary.bytes_before, summary.bytes_after, summary.deltas_removed
    );
}
