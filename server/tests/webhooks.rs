//! Webhooks as a peer of their collections (issue 28, item 3): compaction
//! waits for a hook that is active, a hook away past `peer_timeout_secs`
//! comes back to snapshots like any truant client, and a hook with
//! `include_updates` carries bytes that rebuild the document. Real server
//! on loopback, real SQLite files, a real receiver (testkit::receiver).
//! The flaky receiver and the SIGKILL are in cli/tests/webhooks.rs.

use std::time::{Duration, Instant};

use seqsync_engine::BackendKind;
use seqsync_protocol::http::ChangeKind;
use seqsync_protocol::webhook::WebhookDelivery;
use seqsync_server::{HostConfig, ServerThread, WebhookConfig};
use seqsync_testkit::http::{call, json_of};
use seqsync_testkit::receiver::{Answer, Receiver};
use yrs::updates::decoder::Decode;
use yrs::{GetString, Text, Transact};

fn start(
    receiver: &Receiver,
    peer_timeout_secs: u64,
    include_updates: bool,
) -> (ServerThread, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = HostConfig::default();
    config.engine.storage.backend = BackendKind::Sqlite;
    config.engine.storage.path = dir.path().join("data");
    config.engine.compaction.peer_timeout_secs = peer_timeout_secs;
    config.server.listen = "127.0.0.1:0".to_owned();
    config.webhooks = vec![WebhookConfig {
        name: "index".to_owned(),
        url: receiver.url(),
        collections: vec!["notes".to_owned()],
        secret: "sixteen-bytes-or-more".to_owned(),
        batch_window_ms: 10,
        retry_ceiling_ms: 300,
        include_updates,
        ..WebhookConfig::default()
    }];
    (ServerThread::start(config).unwrap(), dir)
}

/// Types `n` characters into document `d`, one push each.
fn type_chars(server: &ServerThread, client: &yrs::Doc, n: usize) {
    let text = client.get_or_insert_text("content");
    for _ in 0..n {
        let update = {
            let mut txn = client.transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, len, "a");
            txn.encode_update_v1()
        };
        let url = format!(
            "http://{}/v1/collections/notes/documents/d/updates",
            server.addr
        );
        let (status, body, _) = call(ureq::post(&url), Some(&update));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
}

fn compact(server: &ServerThread) -> serde_json::Value {
    let url = format!("http://{}/v1/collections/notes/compact", server.addr);
    let (status, body, _) = call(ureq::post(&url), Some(b""));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    json_of(&body)
}

/// The accepted deliveries so far, decoded.
fn accepted(receiver: &Receiver) -> Vec<WebhookDelivery> {
    receiver
        .received()
        .iter()
        .filter(|r| r.answer == Answer::Accepted)
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

/// Waits until the receiver accepted every seq up to `head`.
fn wait_delivered(receiver: &Receiver, head: u64) -> Vec<WebhookDelivery> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let deliveries = accepted(receiver);
        let last = deliveries
            .iter()
            .flat_map(|d| d.changes.iter().map(|c| c.seq))
            .max()
            .unwrap_or(0);
        if last >= head {
            return deliveries;
        }
        assert!(
            Instant::now() < deadline,
            "delivered up to {last} of {head} in 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// While a hook is active (it acked within `peer_timeout_secs`),
/// compaction must not fold what it has not delivered: a receiver that was
/// down briefly still gets every update as an update, not a snapshot.
#[test]
fn compaction_waits_for_an_active_hook() {
    let receiver = Receiver::start(1, 0);
    let (server, _dir) = start(&receiver, 300, false);
    let client = yrs::Doc::with_client_id(1 << 20);
    type_chars(&server, &client, 5);
    wait_delivered(&receiver, 5);
    receiver.set_down(true);
    type_chars(&server, &client, 5);
    let summary = compact(&server);
    receiver.set_down(false);
    let deliveries = wait_delivered(&receiver, 10);
    let after: Vec<_> = deliveries
        .iter()
        .flat_map(|d| d.changes.iter())
        .filter(|c| c.seq > 5)
        .collect();
    assert_eq!(after.len(), 5, "seqs 6..=10 once each: {after:?}");
    assert!(
        after.iter().all(|c| c.kind == ChangeKind::Update),
        "undelivered updates stayed updates: {after:?} (compaction: {summary})"
    );
}

/// A receiver down past `peer_timeout_secs` makes its hook truant:
/// compaction goes on without it, and when it returns it reads the
/// compacted history as a snapshot, like any truant client, with nothing
/// missing from the document.
#[test]
fn a_truant_hook_returns_to_snapshots() {
    let receiver = Receiver::start(2, 0);
    let (server, _dir) = start(&receiver, 1, false);
    let client = yrs::Doc::with_client_id(2 << 20);
    type_chars(&server, &client, 3);
    wait_delivered(&receiver, 3);
    receiver.set_down(true);
    type_chars(&server, &client, 6);
    // Past peer_timeout_secs without an ack: truant.
    std::thread::sleep(Duration::from_millis(2_500));
    let summary = compact(&server);
    assert!(
        summary["changes_removed"].as_u64().unwrap() > 0,
        "compaction went on without the truant hook: {summary}"
    );
    receiver.set_down(false);
    let deliveries = wait_delivered(&receiver, 9);
    let after: Vec<_> = deliveries
        .iter()
        .flat_map(|d| d.changes.iter())
        .filter(|c| c.seq > 3)
        .collect();
    assert_eq!(
        after.iter().map(|c| (c.seq, c.kind)).collect::<Vec<_>>(),
        vec![(9, ChangeKind::Snapshot)],
        "the folded history arrives as one snapshot at the last seq it covers"
    );
}

/// With `include_updates`, the bytes a receiver gets are the document:
/// applying them in order gives the server's text.
#[test]
fn delivered_updates_rebuild_the_document() {
    let receiver = Receiver::start(3, 0);
    let (server, _dir) = start(&receiver, 300, true);
    let client = yrs::Doc::with_client_id(3 << 20);
    type_chars(&server, &client, 40);
    let deliveries = wait_delivered(&receiver, 40);
    let copy = yrs::Doc::with_client_id(4 << 20);
    let text = copy.get_or_insert_text("content");
    for change in deliveries.iter().flat_map(|d| d.changes.iter()) {
        let bytes = &change
            .update
            .as_ref()
            .expect("include_updates sends bytes")
            .0;
        assert_eq!(change.size_bytes, bytes.len() as u64);
        copy.transact_mut()
            .apply_update(yrs::Update::decode_v1(bytes).unwrap())
            .unwrap();
    }
    assert_eq!(text.get_string(&copy.transact()), "a".repeat(40));
}
