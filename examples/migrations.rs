//! Schema migrations, end to end: a release at schema version 1 writes notes
//! with a `title`; the next release registers a step 1 → 2 that renames it
//! `name` and gives `status` a default, reopens the same store, and every
//! document is migrated before anything is served. An old client that still
//! pushes at version 1 is upgraded on ingest.
//!
//! Run: `cargo run --example migrations` (prints the store before and after;
//! `--dir PATH` keeps the store there instead of a temporary directory).
//!
//! `cargo run --release --example migrations -- --measure 20000` measures
//! instead: it writes that many v1 notes (each with some typed content), then
//! times opening with the step (the migration) and, on the migrated store,
//! reading every document once through the engine (the baseline: what the
//! migration cannot avoid), and prints both with their ratio and the
//! process's peak memory before and after the migration.

use std::path::PathBuf;

use clap::Parser;
use seqsync::{
    BackendKind, DocId, Engine, EngineConfig, Migrations, PushOptions, StepError, MIGRATION_ORIGIN,
};
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::{Any, Doc, Map, MapRef, ReadTxn, Transact, TransactionMut, WriteTxn};

#[derive(Parser)]
struct Args {
    /// Where to keep the store (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Measure the migration of this many documents instead of the demo.
    #[arg(long)]
    measure: Option<usize>,
    /// (internal) Only write this many v1 documents into `--dir`: the
    /// measuring process runs this as a child, so its own peak memory is the
    /// migration's alone.
    #[arg(long, hide = true)]
    write_only: Option<usize>,
}

/// The step 1 → 2 of the app: re-runnable (it moves only what is still in
/// the old shape) and it never loses a field (copy, then delete).
fn rename_title(_: &DocId, txn: &mut TransactionMut<'_>) -> Result<(), StepError> {
    let note = txn.get_or_insert_map("note");
    if let Some(title) = note.get(txn, "title") {
        let Any::String(title) = title.to_json(txn) else {
            return Err(StepError::new("note.title is not a string"));
        };
        note.insert(txn, "name", title.to_string());
        note.remove(txn, "title");
    }
    if note.get(txn, "status").is_none() {
        note.insert(txn, "status", "draft");
    }
    Ok(())
}

fn note_json(state: &[u8]) -> String {
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(yrs::Update::decode_v1(state).expect("a stored state decodes"))
        .expect("a stored state applies");
    let txn = doc.transact();
    txn.get_map("note")
        .map_or_else(|| "{}".to_owned(), |note| note.to_json(&txn).to_string())
}

async fn print_store(engine: &Engine, heading: &str) {
    println!("== {heading} (schema version {})", engine.schema_version());
    for doc in ["groceries", "reading-list"] {
        let state = engine.document("notes", doc).await.expect("document");
        println!("  {doc:<13} {}", note_json(&state.update));
    }
    let page = engine
        .changes("notes", 0, 100, None)
        .await
        .expect("changes");
    println!("  log:");
    for change in &page.changes {
        println!(
            "    seq {:>2}  {:<13} v{}  {}",
            change.seq,
            change.doc.as_str(),
            change.schema_version,
            change.origin.as_ref().map_or("-", |p| p.as_str())
        );
    }
}

fn user_doc(client_id: u64) -> Doc {
    Doc::with_client_id(client_id)
}

fn set(doc: &Doc, key: &str, value: &str) -> Vec<u8> {
    let note: MapRef = doc.get_or_insert_map("note");
    let mut txn = doc.transact_mut();
    note.insert(&mut txn, key, value);
    txn.encode_update_v1()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let temp = tempfile::tempdir().expect("a temporary directory");
    let dir = args.dir.unwrap_or_else(|| temp.path().to_owned());
    let mut config = EngineConfig::default();
    config.storage.backend = BackendKind::Sqlite;
    config.storage.path = dir.join("data");
    if let Some(documents) = args.write_only {
        write_v1_notes(config, documents).await;
        return;
    }
    if let Some(documents) = args.measure {
        let exe = std::env::current_exe().expect("own path");
        let status = std::process::Command::new(exe)
            .arg("--dir")
            .arg(&dir)
            .arg("--write-only")
            .arg(documents.to_string())
            .status()
            .expect("start the writer");
        assert!(status.success(), "the writer failed");
        measure(config, documents).await;
        return;
    }

    // Release 1: no migrations, schema version 1.
    let v1 = seqsync::open(config.clone()).expect("open v1");
    let (alice, bob) = (user_doc(0x4000_0001), user_doc(0x4000_0002));
    for (client, doc, title) in [
        (&alice, "groceries", "Groceries"),
        (&bob, "reading-list", "Reading list"),
    ] {
        v1.push(
            "notes",
            doc,
            set(client, "title", title),
            PushOptions::default(),
        )
        .await
        .expect("push at v1");
    }
    print_store(&v1, "written by release 1").await;
    v1.shutdown().await;
    drop(v1);

    // Release 2 registers the step and reopens the same store.
    let migrations = Migrations::new().step(1, rename_title);
    let v2 = seqsync::builder(config)
        .migrations(migrations)
        .open()
        .expect("open v2 (migrates)");
    print_store(&v2, "opened by release 2").await;

    // Bob has not updated his app yet: he still writes `title`, at v1.
    let outcome = v2
        .push(
            "notes",
            "reading-list",
            set(&bob, "title", "Reading list (2027)"),
            PushOptions {
                origin: Some("bob".to_owned()),
                schema_version: Some(1),
                author: None,
            },
        )
        .await
        .expect("an older client is upgraded on ingest");
    println!(
        "== bob pushed at v1: seq {:?}, head {} (the step's change is in the same commit)",
        outcome.seq, outcome.head
    );
    print_store(&v2, "after the upgraded push").await;
    println!("(changes by `{MIGRATION_ORIGIN}` are what the steps wrote)");
    v2.shutdown().await;
}

/// Peak resident memory of this process (`VmHWM`), in MiB; 0 if unknown.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn write_v1_notes(config: EngineConfig, documents: usize) {
    use std::time::Instant;
    let engine = seqsync::open(config.clone()).expect("open v1");
    let started = Instant::now();
    for chunk in (0..documents).collect::<Vec<_>>().chunks(500) {
        let updates = chunk
            .iter()
            .map(|&i| {
                let doc = user_doc(0x4000_0000 + i as u64);
                let mut update = set(&doc, "title", &format!("note {i}"));
                // Some history per document: 20 typed words.
                let text = doc.get_or_insert_text("content");
                let before = doc.transact().state_vector();
                for w in 0..20 {
                    let mut txn = doc.transact_mut();
                    let len = yrs::Text::len(&text, &txn);
                    yrs::Text::insert(&text, &mut txn, len, &format!("word{w} "));
                }
                update = yrs::merge_updates_v1([
                    update,
                    doc.transact().encode_state_as_update_v1(&before),
                ])
                .expect("merge");
                (format!("n{i:06}"), update)
            })
            .collect();
        engine
            .push_batch("notes", updates, PushOptions::default())
            .await
            .expect("push");
    }
    println!(
        "wrote {documents} v1 documents in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    engine.shutdown().await;
}

async fn measure(config: EngineConfig, documents: usize) {
    use std::time::Instant;
    let rss_before = peak_rss_mib();
    let started = Instant::now();
    let migrated = seqsync::builder(config.clone())
        .migrations(Migrations::new().step(1, rename_title))
        .open()
        .expect("open with the step");
    let migrate_s = started.elapsed().as_secs_f64();
    let head = migrated
        .changes("notes", 0, 0, None)
        .await
        .expect("head")
        .head;
    migrated.shutdown().await;
    let rss_after_migration = peak_rss_mib();
    drop(migrated);

    // Baseline, on the migrated store: open (nothing to migrate) and read
    // every document once, as the migration did.
    let started = Instant::now();
    // (with the step registered: a v2 store refuses a v1 engine)
    let reader = seqsync::builder(config)
        .migrations(Migrations::new().step(1, rename_title))
        .open()
        .expect("open for reading");
    for i in 0..documents {
        reader
            .document("notes", &format!("n{i:06}"))
            .await
            .expect("read");
    }
    let read_s = started.elapsed().as_secs_f64();
    reader.shutdown().await;
    drop(reader);
    println!("| what | documents | seconds | documents/s | ratio |");
    println!("|---|---|---|---|---|");
    println!(
        "| read every document once (baseline) | {documents} | {read_s:.2} | {:.0} | 1.00 |",
        documents as f64 / read_s
    );
    println!(
        "| open with step 1 -> 2 (migrate all) | {documents} | {migrate_s:.2} | {:.0} | {:.2} |",
        documents as f64 / migrate_s,
        migrate_s / read_s
    );
    println!(
        "head after: {head} ({documents} v1 changes + {} migration changes); peak RSS of the measuring process {rss_before:.0} MiB before the migration, {rss_after_migration:.0} MiB after it",
        head as usize - documents,
    );
}
