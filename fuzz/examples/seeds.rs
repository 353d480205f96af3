//! Writes the seed inputs of `push_bytes` and `http_bodies` into
//! `fuzz/seeds/<target>/` (valid Yjs updates, bodies, query strings and
//! y-websocket frames), so the fuzzers start from inputs that get past the
//! first checks. Run from `fuzz/`: `cargo run --example seeds`.

use std::fs;
use std::path::Path;

use base64::Engine as _;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::{Array, GetString, Map, ReadTxn, StateVector, Text, Transact};

fn updates() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let doc = yrs::Doc::with_client_id(1);
    let text = doc.get_or_insert_text("t");
    let map = doc.get_or_insert_map("m");
    let array = doc.get_or_insert_array("a");
    for i in 0..4u32 {
        let before = doc.transact().state_vector();
        {
            let mut txn = doc.transact_mut();
            let len = text.get_string(&txn).len() as u32;
            text.insert(&mut txn, len, &format!("w{i} "));
            map.insert(&mut txn, format!("k{i}"), i);
            array.push_back(&mut txn, i);
        }
        out.push(doc.transact().encode_state_as_update_v1(&before));
    }
    let before = doc.transact().state_vector();
    text.remove_range(&mut doc.transact_mut(), 1, 4);
    out.push(doc.transact().encode_state_as_update_v1(&before));
    out.push(
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default()),
    );
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).expect("write seed");
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let push = root.join("push_bytes");
    let http = root.join("http_bodies");
    fs::create_dir_all(&push).expect("mkdir");
    fs::create_dir_all(&http).expect("mkdir");

    let updates = updates();
    for (i, u) in updates.iter().enumerate() {
        write(&push, &format!("update-{i}"), u);
    }
    // Two updates back to back: the target's halves are then (close to) two
    // updates, the second applied first.
    write(
        &push,
        "pair-0-1",
        &[updates[0].clone(), updates[1].clone()].concat(),
    );
    write(
        &push,
        "pair-2-3",
        &[updates[2].clone(), updates[3].clone()].concat(),
    );

    let b64 = base64::engine::general_purpose::STANDARD;
    let batch = serde_json::json!({"updates": [
        {"doc": "d1", "update": b64.encode(&updates[0])},
        {"doc": "d2", "update": b64.encode(&updates[1])},
    ]});
    write(&http, "batch", batch.to_string().as_bytes());
    write(&http, "batch-empty", br#"{"updates":[]}"#);
    write(&http, "ack", br#"{"seq": 42}"#);
    write(
        &http,
        "query",
        b"after=10&limit=100&epoch=0123456789abcdef0123456789abcdef",
    );
    write(&http, "query-encoded", b"after=%31&limit=+5&x=y");
    let sv = yrs::Doc::with_client_id(1).transact().state_vector();
    let frames = [
        Message::Sync(SyncMessage::SyncStep1(sv)).encode_v1(),
        Message::Sync(SyncMessage::SyncStep2(updates[0].clone())).encode_v1(),
        Message::Sync(SyncMessage::Update(updates[1].clone())).encode_v1(),
        Message::AwarenessQuery.encode_v1(),
        Message::Auth(Some("denied".to_owned())).encode_v1(),
    ];
    for (i, frame) in frames.iter().enumerate() {
        write(&http, &format!("yws-{i}"), frame);
    }
    // An awareness frame as y-protocols sends it: [1, len, [n, client, clock, json]].
    let mut awareness = vec![1u8];
    let inner = {
        let json = br#"{"user":{"name":"a"}}"#;
        let mut v = vec![1u8, 7, 3, json.len() as u8];
        v.extend_from_slice(json);
        v
    };
    awareness.push(inner.len() as u8);
    awareness.extend_from_slice(&inner);
    write(&http, "yws-awareness", &awareness);
    println!("seeds written under {}", root.display());
}
