//! Compaction (docs/DESIGN.md, "Compaction") through the public API, on every backend.
//!
//! The safety property is checked the hard way: after random histories,
//! random acks and random compaction schedules (thresholds down to one
//! delta), **every** prefix cursor `c` is tried: a client holding exactly the
//! changes ≤ c, applying `changes(after = c)` to the end, must reach the
//! server's state. Random tests print their seed (`TEST_SEED=` replays).

use seqsync_testkit::harness as common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Client, Rng};
use futures::StreamExt;
use seqsync_actors::{Engine, PushOptions, StreamEvent};
use seqsync_engine::{BackendKind, ChangeKind, EngineConfig, Seq};

fn engine_with(
    kind: BackendKind,
    dir: &std::path::Path,
    tune: impl FnOnce(&mut EngineConfig),
) -> Engine {
    let mut config = common::config(kind, dir);
    tune(&mut config);
    common::open_engine(config).unwrap()
}

/// Every update ever acknowledged, by seq: the original log before any
/// compaction, which is what a client at cursor c holds.
type History = BTreeMap<Seq, (String, Vec<u8>)>;

/// Text of `doc` for a client that holds the history up to `cursor` and then
/// applies the server's `changes(after = cursor)` to the end.
async fn replay_from(engine: &Engine, history: &History, doc: &str, cursor: Seq) -> String {
    let client = Client::new(4242);
    for (_, (d, update)) in history.range(..=cursor) {
        if d == doc {
            client.apply(update);
        }
    }
    apply_changes_after(engine, &client, doc, cursor).await;
    client.text()
}

/// Applies every change of `doc` with seq > `cursor` to `client`, page by
/// page, as a client catching up would.
async fn apply_changes_after(engine: &Engine, client: &Client, doc: &str, cursor: Seq) {
    let mut after = cursor;
    loop {
        let page = engine.changes("c", after, 1000, None).await.unwrap();
        for change in &page.changes {
            assert!(change.seq > after, "cursor is exclusive");
            if change.doc.as_str() == doc && change.kind != ChangeKind::Delete {
                client.apply(&change.payload);
            }
        }
        after = page.cursor;
        if !page.has_more {
            break;
        }
    }
}

/// Text of `doc` for a client that reads `document()` and then streams
/// `changes(after = cursor)` to the end, as a cold client would.
async fn server_text(engine: &Engine, doc: &str) -> String {
    let state = engine.document("c", doc).await.unwrap();
    let client = Client::new(4343);
    client.apply(&state.update);
    apply_changes_after(engine, &client, doc, state.cursor).await;
    client.text()
}

mod cases {
    use super::*;

    /// The safety property at every prefix cursor, with compaction forced by
    /// tiny thresholds, manual compactions at random points, random acks, and
    /// updates pushed out of order.
    pub async fn every_prefix_cursor_converges(kind: BackendKind) {
        let mut rng = Rng::from_env("every_prefix_cursor_converges");
        for round in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let max_deltas = 1 + rng.below(4);
            let engine = engine_with(kind, dir.path(), |c| c.compaction.max_deltas = max_deltas);
            let docs = ["a", "b", "c"];
            let clients: Vec<Vec<Client>> = (0..3u64)
                .map(|c| {
                    docs.iter()
                        .enumerate()
                        .map(|(d, _)| Client::new(10 * c + d as u64 + 1))
                        .collect()
                })
                .collect();
            let mut held_back: Vec<(usize, Vec<u8>)> = Vec::new();
            let mut history = History::new();
            let mut subscription = engine.subscribe("c", 0, None).unwrap();
            for step in 0..90 {
                let client = &clients[rng.below(3) as usize];
                let d = rng.below(3) as usize;
                let update = client[d].random_edit(&mut rng);
                // Sometimes hold an update back and push it later, after
                // updates that depend on it (out of order).
                if rng.below(6) == 0 {
                    held_back.push((d, update));
                    continue;
                }
                let mut batch = vec![(d, update)];
                if !held_back.is_empty() && rng.below(3) == 0 {
                    batch.push(held_back.remove(0));
                }
                for (d, update) in batch {
                    let out = engine
                        .push("c", docs[d], update.clone(), PushOptions::default())
                        .await
                        .unwrap();
                    if let Some(seq) = out.seq {
                        history.insert(seq, (docs[d].to_owned(), update));
                    }
                }
                let head = *history.keys().next_back().unwrap_or(&0);
                if rng.below(5) == 0 {
                    engine
                        .ack("c", &format!("peer-{}", rng.below(2)), rng.below(head + 1))
                        .await
                        .unwrap();
                }
                if rng.below(15) == 0 {
                    engine.compact("c").await.unwrap();
                }
                // Mid-history spot check at a random cursor, when nothing is
                // held back. With an update still held back, a later update
                // of the same client may be shown by yrs when it arrives
                // inside a document state (integrated after the clock gap)
                // yet stay pending when it arrives on its own, so two
                // replicas holding the same updates can differ until the
                // held-back one arrives; the check after the loop, with
                // everything pushed, is the one that must hold at every
                // cursor. (Seen under load: the served document showed such
                // an update while a replay of every push did not.)
                if step % 30 == 29 && held_back.is_empty() {
                    let c = rng.below(head + 1);
                    for doc in docs {
                        let replayed = replay_from(&engine, &history, doc, c).await;
                        let served = server_text(&engine, doc).await;
                        if replayed != served {
                            // Which side is off: the stored log alone, read
                            // from cursor 0, tells storage from replica.
                            let stored = replay_from(&engine, &history, doc, 0).await;
                            let pushed = {
                                let client = Client::new(4444);
                                for (_, (d, update)) in history.iter() {
                                    if d == doc {
                                        client.apply(update);
                                    }
                                }
                                client.text()
                            };
                            panic!(
                                "round {round} step {step} cursor {c} doc {doc}:\n \
                                 history ≤ cursor + stream: {replayed:?}\n \
                                 document + stream:         {served:?}\n \
                                 stream from 0:             {stored:?}\n \
                                 every push, in seq order:  {pushed:?}"
                            );
                        }
                    }
                }
            }
            for (d, update) in held_back.drain(..) {
                if let Some(seq) = engine
                    .push("c", docs[d], update.clone(), PushOptions::default())
                    .await
                    .unwrap()
                    .seq
                {
                    history.insert(seq, (docs[d].to_owned(), update));
                }
            }
            engine.compact("c").await.unwrap();
            let head = engine.changes("c", 0, 0, None).await.unwrap().head;
            assert_eq!(head, *history.keys().next_back().unwrap());
            let page = engine.changes("c", 0, 1000, None).await.unwrap();
            assert!(
                page.changes.iter().any(|c| c.kind == ChangeKind::Snapshot),
                "compaction ran"
            );
            for doc in docs {
                let expected = server_text(&engine, doc).await;
                for cursor in 0..=head {
                    assert_eq!(
                        replay_from(&engine, &history, doc, cursor).await,
                        expected,
                        "round {round} cursor {cursor} doc {doc}"
                    );
                }
            }
            // The subscriber that watched all along saw each seq once, in
            // order, and converged.
            let watchers: Vec<Client> = docs.iter().map(|_| Client::new(777)).collect();
            let mut last = 0;
            loop {
                match tokio::time::timeout(Duration::from_secs(20), subscription.next())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap()
                {
                    StreamEvent::Change(change) => {
                        assert!(change.seq > last, "no duplicate, no reordering");
                        last = change.seq;
                        let d = docs.iter().position(|d| *d == change.doc.as_str()).unwrap();
                        watchers[d].apply(&change.payload);
                    }
                    StreamEvent::UpToDate { head: h } if h == head => break,
                    StreamEvent::UpToDate { .. } => {}
                }
            }
            for (d, doc) in docs.iter().enumerate() {
                assert_eq!(watchers[d].text(), server_text(&engine, doc).await);
            }
            engine.shutdown().await;
        }
    }

    /// An active peer that acked seq a keeps receiving plain deltas after a;
    /// a truant peer does not hold compaction back and converges through the
    /// snapshot when it returns.
    pub async fn active_peers_get_deltas_truants_get_snapshots(kind: BackendKind) {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine_with(kind, dir.path(), |c| {
            c.compaction.max_deltas = 1;
            c.compaction.peer_timeout_secs = 2;
        });
        let writer = Client::new(1);
        let mut history = History::new();
        let push = |update: Vec<u8>| {
            let engine = engine.clone();
            async move {
                engine
                    .push("c", "d", update, PushOptions::default())
                    .await
                    .unwrap()
                    .seq
                    .unwrap()
            }
        };
        // Both peers exist from the start, so no compaction runs past them.
        engine.ack("c", "truant", 0).await.unwrap();
        engine.ack("c", "slow", 0).await.unwrap();
        for i in 0..4 {
            let u = writer.insert(i, "a");
            history.insert(push(u.clone()).await, ("d".into(), u));
        }
        engine.ack("c", "truant", 2).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2100)).await; // truant times out
        engine.ack("c", "slow", 3).await.unwrap(); // active
        for i in 4..20 {
            let u = writer.insert(i, "b");
            history.insert(push(u.clone()).await, ("d".into(), u));
        }
        engine.ack("c", "slow", 3).await.unwrap(); // still active, however slow the machine
        engine.compact("c").await.unwrap();
        let for_slow = engine.changes("c", 3, 1000, None).await.unwrap();
        assert!(!for_slow.changes.is_empty());
        assert!(
            for_slow
                .changes
                .iter()
                .all(|c| c.kind == ChangeKind::Update),
            "the active peer keeps getting deltas"
        );
        let all = engine.changes("c", 0, 1000, None).await.unwrap();
        assert!(
            all.changes
                .iter()
                .any(|c| c.kind == ChangeKind::Snapshot && c.seq <= 3),
            "merged up to the active peer's ack"
        );
        // Once the slow peer is gone too, compaction covers everything.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        engine.compact("c").await.unwrap();
        let all = engine.changes("c", 0, 1000, None).await.unwrap();
        assert_eq!(all.changes.len(), 1);
        assert_eq!(
            (all.changes[0].kind, all.changes[0].seq),
            (ChangeKind::Snapshot, 20)
        );
        let expected = server_text(&engine, "d").await;
        assert_eq!(expected, writer.text());
        for cursor in [0, 2, 3, 10, 20] {
            assert_eq!(
                replay_from(&engine, &history, "d", cursor).await,
                expected,
                "cursor {cursor}"
            );
        }
        engine.shutdown().await;
    }

    /// A compacted document reloads identically after a restart, and
    /// compacting twice changes nothing the second time.
    pub async fn compaction_is_idempotent_and_survives_restart(kind: BackendKind) {
        if kind == BackendKind::Memory {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let writer = Client::new(1);
        let (log, text) = {
            let engine = engine_with(kind, dir.path(), |_| {});
            for i in 0..50 {
                engine
                    .push("c", "d", writer.insert(i, "q"), PushOptions::default())
                    .await
                    .unwrap();
            }
            let first = engine.compact("c").await.unwrap();
            assert_eq!((first.documents_compacted, first.deltas_removed), (1, 50));
            assert!(first.bytes_after < first.bytes_before);
            let second = engine.compact("c").await.unwrap();
            assert_eq!(second.documents_compacted, 0, "{second:?}");
            let log = engine.changes("c", 0, 1000, None).await.unwrap().changes;
            let text = server_text(&engine, "d").await;
            engine.shutdown().await;
            (log, text)
        };
        let engine = engine_with(kind, dir.path(), |_| {});
        assert_eq!(
            engine.changes("c", 0, 1000, None).await.unwrap().changes,
            log
        );
        assert_eq!(server_text(&engine, "d").await, text);
        assert_eq!(text, "q".repeat(50));
        let next = engine
            .push("c", "d", writer.insert(0, "z"), PushOptions::default())
            .await
            .unwrap();
        assert_eq!(next.seq, Some(51));
        engine.shutdown().await;
    }

    /// A deleted document's history goes; its tombstone stays.
    pub async fn tombstoned_document_keeps_only_its_tombstone(kind: BackendKind) {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine_with(kind, dir.path(), |_| {});
        let writer = Client::new(1);
        for i in 0..5 {
            engine
                .push("c", "gone", writer.insert(i, "x"), PushOptions::default())
                .await
                .unwrap();
        }
        engine
            .push(
                "c",
                "kept",
                Client::new(2).insert(0, "k"),
                PushOptions::default(),
            )
            .await
            .unwrap();
        engine.delete("c", "gone").await.unwrap();
        engine.compact("c").await.unwrap();
        let log = engine.changes("c", 0, 100, None).await.unwrap().changes;
        let gone: Vec<_> = log
            .iter()
            .filter(|c| c.doc.as_str() == "gone")
            .map(|c| (c.seq, c.kind))
            .collect();
        assert_eq!(gone, vec![(7, ChangeKind::Delete)]);
        assert!(log.iter().any(|c| c.doc.as_str() == "kept"));
        engine.shutdown().await;
    }
}

macro_rules! compaction_suite {
    ($($backend:ident => $kind:expr),* $(,)?) => {$(
        mod $backend {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_prefix_cursor_converges() { cases::every_prefix_cursor_converges($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn active_peers_get_deltas_truants_get_snapshots() { cases::active_peers_get_deltas_truants_get_snapshots($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn compaction_is_idempotent_and_survives_restart() { cases::compaction_is_idempotent_and_survives_restart($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tombstoned_document_keeps_only_its_tombstone() { cases::tombstoned_document_keeps_only_its_tombstone($kind).await }
        }
    )*};
}

compaction_suite! {
    sqlite => BackendKind::Sqlite,
    redb => BackendKind::Redb,
    memory => BackendKind::Memory,
}
