//! Bundles measured: export, import and verify throughput per backend on a
//! real trace, and what keeping the log checksum costs on the push path,
//! each against a baseline measured in the same run.
//!
//! ```text
//! cargo run --release --example bundle_bench                  # seph-blog1, every backend
//! cargo run --release --example bundle_bench -- --quick       # friendsforever_flat
//! cargo run --release --example bundle_bench -- --trace automerge-paper --backends sqlite
//! ```
//!
//! Rows:
//! - `export` / `import` / `verify`: changes/s and MB/s of payload for a
//!   bundle of the whole log (batches of 10,000 changes, with the state
//!   batch). Baseline: reading the same log page by page through the
//!   `Storage` trait (`scan`), which every export must do anyway.
//! - `checksum share of replay-64`: the trace pushed through the engine with
//!   64 pushes in flight, and the time `change_checksum` takes over the same
//!   changes on one core; the share is the second over the first (target:
//!   ≤ 3 %).
//!
//! Trace data: CC BY 4.0, Joseph Gentle (seph-blog1, friendsforever) and
//! Martin Kleppmann (automerge-paper); see `benches/traces/README.md`.

use seqsync_testkit::traces;

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use futures::StreamExt;
use seqsync::bundle::{
    export_collection, import_bundle, verify_bundle, ExportOptions, ImportOptions,
};
use seqsync::{
    change_checksum, open_storage, BackendKind, CollectionName, CollectionWrite, DocId, Durability,
    EngineConfig, Epoch, PushOptions, Storage, WriteBase, WriteBatch,
};

#[derive(Parser)]
struct Args {
    /// Trace (a file of benches/traces without .json.gz).
    #[arg(long, default_value = "seph-blog1")]
    trace: String,
    /// The small trace, for a quick look.
    #[arg(long)]
    quick: bool,
    /// Backends, comma-separated: sqlite, redb, memory.
    #[arg(long, default_value = "sqlite,redb,memory", value_delimiter = ',')]
    backends: Vec<String>,
}

fn kind_of(name: &str) -> BackendKind {
    match name {
        "redb" => BackendKind::Redb,
        "memory" => BackendKind::Memory,
        _ => BackendKind::Sqlite,
    }
}

fn store(kind: BackendKind, dir: &std::path::Path) -> Arc<dyn Storage> {
    let mut config = EngineConfig::default();
    config.storage.backend = kind;
    config.storage.path = dir.to_owned();
    config.storage.durability = Durability::Immediate;
    open_storage(&config.storage).expect("open the store")
}

/// Writes the trace's updates as the log of collection `c` (one document),
/// committed in groups of 1,000 straight through the trait.
fn fill(storage: &dyn Storage, updates: &[Vec<u8>]) {
    let name = CollectionName::new("c").expect("name");
    let doc = DocId::new("doc").expect("doc");
    let epoch = Epoch([1; 16]);
    let mut head = 0u64;
    for chunk in updates.chunks(1000) {
        let append = traces::update_changes(&doc, head + 1, chunk);
        head += chunk.len() as u64;
        let base = if head == chunk.len() as u64 {
            WriteBase::Create {
                epoch,
                schema_version: 1,
            }
        } else {
            WriteBase::Existing {
                epoch,
                head: head - chunk.len() as u64,
            }
        };
        storage
            .commit(&WriteBatch {
                writes: vec![CollectionWrite {
                    collection: name.clone(),
                    base,
                    append,
                    compact: Vec::new(),
                    peers: Vec::new(),
                    raise_schema_version: None,
                    append_mode: Default::default(),
                }],
            })
            .expect("commit");
    }
}

fn scan(storage: &dyn Storage) -> u64 {
    let name = CollectionName::new("c").expect("name");
    let mut cursor = 0;
    let mut n = 0;
    while let Some(page) = storage.read_changes(&name, cursor, 1000).expect("read") {
        if page.changes.is_empty() {
            break;
        }
        cursor = page.changes.last().map_or(cursor, |c| c.seq);
        n += page.changes.len() as u64;
    }
    n
}

struct Row {
    backend: String,
    what: &'static str,
    changes: u64,
    seconds: f64,
    baseline_seconds: f64,
}

async fn replay_64(kind: BackendKind, dir: &std::path::Path, updates: &[Vec<u8>]) -> f64 {
    let mut config = EngineConfig::default();
    config.storage.backend = kind;
    config.storage.path = dir.to_owned();
    config.compaction.max_deltas = u64::MAX / 2;
    config.compaction.max_delta_bytes = u64::MAX / 2;
    let engine = seqsync::open(config).expect("engine");
    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(updates.iter().cloned())
        .map(|u| {
            let engine = engine.clone();
            async move { engine.push("c", "doc", u, PushOptions::default()).await }
        })
        .buffered(64)
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    assert!(results.iter().all(|r| r.is_ok()));
    engine.shutdown().await;
    seconds
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let name = if args.quick {
        "friendsforever_flat".to_owned()
    } else {
        args.trace.clone()
    };
    let trace = traces::load(&name);
    let payload_bytes: u64 = trace.updates.iter().map(|u| u.len() as u64).sum();
    println!(
        "trace {name}: {} updates, {:.1} MB of payload; 2 cores; data CC BY 4.0 (see benches/traces/README.md)",
        trace.updates.len(),
        payload_bytes as f64 / 1e6
    );
    let mut rows = Vec::new();
    for backend in &args.backends {
        let kind = kind_of(backend);
        let dir = tempfile::tempdir().expect("temp dir");
        let source = store(kind, &dir.path().join("src"));
        fill(&*source, &trace.updates);
        let started = Instant::now();
        let scanned = scan(&*source);
        let scan_s = started.elapsed().as_secs_f64();
        let bundle = dir.path().join("bundle");
        let started = Instant::now();
        let report = export_collection(
            &*source,
            &CollectionName::new("c").expect("name"),
            0,
            None,
            &bundle,
            ExportOptions::default(),
            &mut |_| {},
        )
        .expect("export");
        let export_s = started.elapsed().as_secs_f64();
        assert_eq!(report.changes, scanned);
        let target = store(kind, &dir.path().join("dst"));
        let started = Instant::now();
        let imported = import_bundle(&*target, &bundle, ImportOptions::default(), &mut |_| {})
            .expect("import");
        let import_s = started.elapsed().as_secs_f64();
        assert!(imported.state_digest_checked);
        let started = Instant::now();
        verify_bundle(&bundle, &mut |_| {}).expect("verify");
        let verify_s = started.elapsed().as_secs_f64();
        for (what, seconds) in [
            ("export", export_s),
            ("import", import_s),
            ("verify", verify_s),
        ] {
            rows.push(Row {
                backend: backend.clone(),
                what,
                changes: scanned,
                seconds,
                baseline_seconds: scan_s,
            });
        }
        // The checksum on the push path.
        let replay_s = replay_64(kind, &dir.path().join("replay"), &trace.updates).await;
        let epoch = Epoch([2; 16]);
        let doc = DocId::new("doc").expect("doc");
        let changes = traces::update_changes(&doc, 1, &trace.updates);
        let started = Instant::now();
        let mut sum = 0u64;
        for change in &changes {
            sum = sum.wrapping_add(change_checksum(&epoch, change));
        }
        let checksum_s = started.elapsed().as_secs_f64();
        std::hint::black_box(sum);
        rows.push(Row {
            backend: backend.clone(),
            what: "checksum share of replay-64",
            changes: trace.updates.len() as u64,
            seconds: checksum_s,
            baseline_seconds: replay_s,
        });
    }
    println!();
    println!(
        "| backend | what | changes | seconds | changes/s | MB/s | baseline | baseline s | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        let (baseline, ratio) = if row.what.starts_with("checksum") {
            (
                "replay-64",
                format!("{:.2} %", 100.0 * row.seconds / row.baseline_seconds),
            )
        } else {
            (
                "scan",
                format!("{:.2}×", row.seconds / row.baseline_seconds),
            )
        };
        println!(
            "| {} | {} | {} | {:.3} | {:.0} | {:.1} | {} | {:.3} | {} |",
            row.backend,
            row.what,
            row.changes,
            row.seconds,
            row.changes as f64 / row.seconds,
            payload_bytes as f64 / 1e6 / row.seconds,
            baseline,
            row.baseline_seconds,
            ratio
        );
    }
}
