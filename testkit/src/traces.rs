//! Loading the editing traces of `benches/traces` (CC BY 4.0: Joseph
//! Gentle; Martin Kleppmann for automerge-paper) as Yjs v1 updates.
//!
//! A trace is replayed into a `yrs::Doc` with UTF-16 offsets (the trace's
//! positions count code points; no trace leaves the BMP) and each transaction
//! becomes one update, as a client would push it.

use std::io::Read;
use std::path::{Path, PathBuf};

use yrs::{Text, Transact};

/// The yrs client id a trace is typed under; `typing(n)` uses this plus `n`.
/// Ids below 65,536 are reserved for migration steps and refused in pushes.
pub const TRACE_CLIENT_ID: u64 = 1 << 20;

/// A sequential trace turned into updates.
pub struct Trace {
    pub name: String,
    pub updates: Vec<Vec<u8>>,
    pub end_content: String,
}

/// `benches/traces` in the repository (override with
/// `SEQSYNC_TRACES_DIR`... not a config key, so named `TRACES_DIR`).
pub fn traces_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("TRACES_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/traces")
}

/// Loads `<name>.json.gz` and replays it into updates.
pub fn load(name: &str) -> Trace {
    let path = traces_dir().join(format!("{name}.json.gz"));
    let file =
        std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut json = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut json)
        .unwrap_or_else(|e| panic!("gunzip {}: {e}", path.display()));
    let value: serde_json::Value = serde_json::from_str(&json).expect("trace JSON");
    let end_content = value["endContent"].as_str().expect("endContent").to_owned();
    let doc = yrs::Doc::with_options(yrs::Options {
        client_id: yrs::block::ClientID::new(TRACE_CLIENT_ID),
        offset_kind: yrs::OffsetKind::Utf16,
        ..yrs::Options::default()
    });
    let text = doc.get_or_insert_text("content");
    let start = value["startContent"].as_str().unwrap_or("");
    let mut updates = Vec::new();
    if !start.is_empty() {
        let mut t = doc.transact_mut();
        text.insert(&mut t, 0, start);
        updates.push(t.encode_update_v1());
    }
    for txn in value["txns"].as_array().expect("txns") {
        {
            let mut t = doc.transact_mut();
            for patch in txn["patches"].as_array().expect("patches") {
                let pos = patch[0].as_u64().expect("pos") as u32;
                let del = patch[1].as_u64().expect("del") as u32;
                let ins = patch[2].as_str().expect("ins");
                if del > 0 {
                    text.remove_range(&mut t, pos, del);
                }
                if !ins.is_empty() {
                    text.insert(&mut t, pos, ins);
                }
            }
            // Only what this transaction did, as a client's update event.
            updates.push(t.encode_update_v1());
        }
    }
    Trace {
        name: name.to_owned(),
        updates,
        end_content,
    }
}

/// Text of the trace's document after applying `updates` to a bare doc.
pub fn text_of_updates<'a>(updates: impl IntoIterator<Item = &'a [u8]>) -> String {
    use yrs::updates::decoder::Decode;
    use yrs::GetString;
    let doc = yrs::Doc::new();
    let text = doc.get_or_insert_text("content");
    for update in updates {
        doc.transact_mut()
            .apply_update(yrs::Update::decode_v1(update).expect("update"))
            .expect("apply");
    }
    let out = text.get_string(&doc.transact());
    out
}

/// `n` one-character edits typed at the end by one client, as Yjs updates
/// (a synthetic workload for the ingest and load benchmarks).
pub fn typing(client: u64, n: usize) -> Vec<Vec<u8>> {
    let doc = yrs::Doc::with_client_id(TRACE_CLIENT_ID + client);
    let text = doc.get_or_insert_text("content");
    (0..n)
        .map(|i| {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, i as u32, "x");
            txn.encode_update_v1()
        })
        .collect()
}

/// One document's updates as the `Update` changes that pushing them one by
/// one stores, with seqs from `first_seq` on. `log_checksum` is 0: a
/// backend computes it when it appends the change.
pub fn update_changes(
    doc: &seqsync_engine::DocId,
    first_seq: u64,
    updates: &[Vec<u8>],
) -> Vec<seqsync_engine::Change> {
    updates
        .iter()
        .zip(first_seq..)
        .map(|(payload, seq)| seqsync_engine::Change {
            seq,
            doc: doc.clone(),
            kind: seqsync_engine::ChangeKind::Update,
            payload: payload.clone(),
            schema_version: 1,
            origin: None,
            author: None,
            committed_ms: 0,
            log_checksum: 0,
        })
        .collect()
}
