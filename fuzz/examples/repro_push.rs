//! Replays pushes through the engine's decode/apply path, one file per push,
//! in order, on one document, and prints what each step does. With one file
//! it also shows what compaction would make of the document.
//! Run from `fuzz/`: `cargo run --example repro_push -- FILE...`.

use seqsync_engine::{decode_update, plan_compaction, Change, ChangeKind, DocId, DocState};

fn main() {
    let doc = DocId::new("d").expect("doc id");
    let mut state = DocState::empty();
    let mut changes = Vec::new();
    for (i, path) in std::env::args().skip(1).enumerate() {
        let data = std::fs::read(&path).expect("read input");
        println!("push {i}: {data:?}");
        let update = match decode_update(&data) {
            Ok(update) => update,
            Err(err) => {
                println!("  refused: {err}");
                continue;
            }
        };
        println!("  apply: {:?}", state.apply(update));
        changes.push(Change {
            seq: i as u64 + 1,
            doc: doc.clone(),
            kind: ChangeKind::Update,
            payload: data,
            schema_version: 1,
            origin: None,
            author: None,
            committed_ms: 0,
        });
    }
    let encoded = state.encode_state();
    println!("pending: {}", state.has_pending());
    println!("encode_state: {encoded:?}");
    println!("re-decodes: {}", decode_update(&encoded).is_ok());
    println!(
        "load of the pushed changes: {:?}",
        DocState::load(&changes).map(|_| "ok")
    );
    let cutoff = changes.len() as u64;
    if let Ok(Some(plan)) = plan_compaction(&doc, &changes, cutoff, 1, &[]) {
        let compaction = &plan.compactions[0];
        if let Some(snapshot) = compaction.snapshot.clone() {
            let after = [Change {
                seq: compaction.through,
                doc: doc.clone(),
                kind: ChangeKind::Snapshot,
                payload: snapshot,
                schema_version: 1,
                origin: None,
                author: None,
                committed_ms: 0,
            }];
            println!(
                "load after compaction: {:?}",
                DocState::load(&after).map(|_| "ok")
            );
        }
    }
}
