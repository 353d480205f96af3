//! Offline catch-up measured, both ways, against replaying the same updates
//! into a bare `yrs::Doc` in the same run (issue 14's target: ≤ 3× on
//! SQLite, durable).
//!
//! ```text
//! cargo run --release --example replica_bench             # automerge-paper: push 100,000, pull 259,778
//! cargo run --release --example replica_bench -- --quick  # friendsforever_flat
//! ```
//!
//! - `push`: a replica that was offline with N local updates (already in
//!   its local store) syncs them to a server on SQLite: `push_batch` in
//!   batches of 1,000, each durable on the server.
//! - `pull`: a fresh replica (local SQLite, durable) pulls a collection of
//!   M changes, one local commit per page of 1,000.
//!
//! Trace data: CC BY 4.0, Martin Kleppmann (automerge-paper), Joseph Gentle
//! (friendsforever); see `benches/traces/README.md`.

use seqsync_testkit::traces;

use std::time::Instant;

use clap::Parser;
use seqsync::{BackendKind, EngineConfig};
use seqsync_replica::{EngineTransport, Replica, SyncOutcome};
use yrs::updates::decoder::Decode;
use yrs::Transact;

#[derive(Parser)]
struct Args {
    /// The small trace, for a quick look.
    #[arg(long)]
    quick: bool,
}

fn bare_replay(updates: &[Vec<u8>]) -> f64 {
    let started = Instant::now();
    let doc = yrs::Doc::new();
    for update in updates {
        let update = yrs::Update::decode_v1(update).expect("trace update");
        doc.transact_mut().apply_update(update).expect("apply");
    }
    started.elapsed().as_secs_f64()
}

fn config(dir: &std::path::Path) -> EngineConfig {
    let mut config = EngineConfig::default();
    config.storage.backend = BackendKind::Sqlite;
    config.storage.path = dir.to_owned();
    // No compaction while measuring: every change travels as itself.
    config.compaction.max_deltas = u64::MAX / 2;
    config.compaction.max_delta_bytes = u64::MAX / 2;
    config
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let name = if args.quick {
        "friendsforever_flat"
    } else {
        "automerge-paper"
    };
    let trace = traces::load(name);
    let push_n = trace.updates.len().min(100_000);
    println!(
        "trace {name}: {} updates; SQLite everywhere, durable; 2 cores; data CC BY 4.0 (see benches/traces/README.md)",
        trace.updates.len()
    );
    let dir = tempfile::tempdir().expect("temp dir");

    // Push: an offline replica with push_n local updates.
    let server = seqsync::open(config(&dir.path().join("server-push"))).expect("server");
    let local =
        seqsync::open_storage(&config(&dir.path().join("local-push")).storage).expect("local");
    let replica =
        Replica::open(local, EngineTransport::new(server.clone()), "phone").expect("replica");
    for chunk in trace.updates[..push_n].chunks(10_000) {
        let batch = chunk
            .iter()
            .map(|u| ("doc".to_owned(), u.clone()))
            .collect();
        replica
            .apply_local_batch("notes", batch)
            .await
            .expect("local");
    }
    let started = Instant::now();
    let report = replica.sync("notes").await.expect("sync");
    let push_s = started.elapsed().as_secs_f64();
    assert_eq!(
        report.outcome,
        SyncOutcome::Pushed {
            updates: push_n as u64
        }
    );
    let push_base = bare_replay(&trace.updates[..push_n]);
    drop(replica);
    server.shutdown().await;

    // Pull: a server holding the whole trace, a fresh replica.
    let server = seqsync::open(config(&dir.path().join("server-pull"))).expect("server");
    for chunk in trace.updates.chunks(1000) {
        let batch = chunk
            .iter()
            .map(|u| ("doc".to_owned(), u.clone()))
            .collect();
        server
            .push_batch("notes", batch, Default::default())
            .await
            .expect("fill");
    }
    let local =
        seqsync::open_storage(&config(&dir.path().join("local-pull")).storage).expect("local");
    let fresh =
        Replica::open(local, EngineTransport::new(server.clone()), "new-phone").expect("replica");
    let started = Instant::now();
    let report = fresh.sync("notes").await.expect("sync");
    let pull_s = started.elapsed().as_secs_f64();
    let SyncOutcome::Pulled { changes, .. } = report.outcome else {
        panic!("expected a pull, got {:?}", report.outcome);
    };
    assert_eq!(changes as usize, trace.updates.len());
    let text = {
        let doc = yrs::Doc::new();
        let state = fresh.document("notes", "doc").expect("doc");
        doc.transact_mut()
            .apply_update(yrs::Update::decode_v1(&state).expect("state"))
            .expect("apply");
        let t = doc.get_or_insert_text("content");
        let text = yrs::GetString::get_string(&t, &doc.transact());
        text
    };
    assert_eq!(
        text, trace.end_content,
        "the pulled document is the trace's end"
    );
    let pull_base = bare_replay(&trace.updates);
    server.shutdown().await;

    println!();
    println!("| what | updates | seconds | updates/s | baseline (bare yrs replay) s | ratio |");
    println!("|---|---|---|---|---|---|");
    for (what, n, secs, base) in [
        ("push offline edits", push_n, push_s, push_base),
        (
            "pull into a fresh replica",
            trace.updates.len(),
            pull_s,
            pull_base,
        ),
    ] {
        println!(
            "| {what} | {n} | {secs:.2} | {:.0} | {base:.2} | {:.2}× |",
            n as f64 / secs,
            secs / base
        );
    }
}
