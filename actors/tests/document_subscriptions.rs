//! Per-document subscriptions (`Engine::subscribe_document`) on every backend:
//! the same promises as a collection subscription (stored then live, no gap,
//! no duplicate, bounded buffers that fall back to storage), only one
//! document's changes, and a fan-out cost that does not depend on the other
//! documents of the collection. Random tests print their seed (replay with
//! `TEST_SEED=`).

use seqsync_testkit::harness as common;

use std::time::Duration;

use common::{config, open, Client, Rng, TestEngine};
use futures::StreamExt;
use seqsync_actors::{Engine, PushOptions, StreamEvent, Subscription};
use seqsync_engine::{BackendKind, ChangeKind, ReadError, Seq};

fn opts() -> PushOptions {
    PushOptions::default()
}

/// Every seq of `doc`'s changes in the log after `after`, read page by page.
async fn log_seqs_of(engine: &Engine, coll: &str, doc: &str, after: Seq) -> Vec<Seq> {
    let mut out = Vec::new();
    let mut cursor = after;
    loop {
        let page = engine.changes(coll, cursor, 1000, None).await.unwrap();
        out.extend(
            page.changes
                .iter()
                .filter(|c| c.doc.as_str() == doc)
                .map(|c| c.seq),
        );
        cursor = page.cursor;
        if !page.has_more {
            return out;
        }
    }
}

/// Reads `stream` until it has delivered `expected` changes, then checks
/// that nothing else was delivered (of this document or another).
async fn read_changes(stream: &mut Subscription, doc: &str, expected: &[Seq]) {
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        let event = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .unwrap_or_else(|_| panic!("stream stalled after {seen:?}"))
            .expect("stream ended")
            .expect("stream failed");
        if let StreamEvent::Change(change) = event {
            assert_eq!(change.doc.as_str(), doc, "a change of another document");
            seen.push(change.seq);
        }
    }
    assert_eq!(seen, expected, "every change of {doc} once, in seq order");
}

/// Waits for the stream's first `UpToDate` (the subscription is registered
/// with the actor from then on) and returns its head.
async fn registered(stream: &mut Subscription) -> Seq {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("no up-to-date marker")
            .expect("stream ended")
            .expect("stream failed");
        if let StreamEvent::UpToDate { head } = event {
            return head;
        }
    }
}

mod cases {
    use super::*;

    /// A document subscriber started mid-log while writers push to three
    /// documents gets exactly its document's changes after the cursor, stored
    /// ones then live ones, each once and in order: the seam of a filtered
    /// stream is where a gap or duplicate would hide.
    pub async fn stored_then_live_without_gap_or_duplicate(kind: BackendKind) {
        let t = open(kind);
        let engine = t.engine.clone();
        let writers_docs = ["a", "b", "c"];
        let seed_client = Client::new(1);
        for i in 0..30u32 {
            let doc = writers_docs[i as usize % 3];
            let update = if doc == "a" {
                seed_client.insert(0, "s")
            } else {
                Client::new(1000 + u64::from(i)).insert(0, "o")
            };
            engine.push("c", doc, update, opts()).await.unwrap();
        }
        let start: Seq = 11;
        let mut stream = engine.subscribe_document("c", "a", start, None).unwrap();
        let writers: Vec<_> = (0..6u64)
            .map(|w| {
                let engine = engine.clone();
                tokio::spawn(async move {
                    let client = Client::new(100 + w);
                    for i in 0..20u32 {
                        let doc = ["a", "b", "c"][(w as usize + i as usize) % 3];
                        engine
                            .push("c", doc, client.insert(0, "y"), opts())
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let expected = log_seqs_of(&engine, "c", "a", start).await;
        assert!(
            expected.len() > 30,
            "the test pushes to a during the stream"
        );
        read_changes(&mut stream, "a", &expected).await;
    }

    /// Delivering a commit costs one delivery per subscriber of the
    /// documents it touched: 49 other documents with subscribers add nothing
    /// to the cost of following the 50th (counted, not timed).
    pub async fn fan_out_does_not_grow_with_other_documents(kind: BackendKind) {
        let t = open(kind);
        let engine = &t.engine;
        let client = Client::new(1);
        engine
            .push("c", "doc-0", client.insert(0, "start"), opts())
            .await
            .unwrap();
        let mut streams = Vec::new();
        for d in 0..50 {
            let mut stream = engine
                .subscribe_document("c", &format!("doc-{d}"), 0, None)
                .unwrap();
            registered(&mut stream).await;
            streams.push(stream);
        }
        let before = engine.live_deliveries();
        let mut seqs = Vec::new();
        for i in 0..20u32 {
            let pushed = engine
                .push("c", "doc-0", client.insert(i, "x"), opts())
                .await
                .unwrap();
            seqs.push(pushed.seq.unwrap());
        }
        read_changes(&mut streams[0], "doc-0", &seqs).await;
        assert_eq!(
            engine.live_deliveries() - before,
            20,
            "20 commits of doc-0, one subscriber of doc-0: 20 deliveries, \
             whatever the 49 other documents' subscribers"
        );
        // One commit to each document: one delivery each.
        let before = engine.live_deliveries();
        for d in 1..50 {
            engine
                .push(
                    "c",
                    &format!("doc-{d}"),
                    Client::new(10 + d).insert(0, "y"),
                    opts(),
                )
                .await
                .unwrap();
        }
        assert_eq!(engine.live_deliveries() - before, 49);
        // A collection subscriber, by contrast, gets every commit.
        let mut all = engine.subscribe("c", 0, None).unwrap();
        registered(&mut all).await;
        let before = engine.live_deliveries();
        for d in 0..10 {
            engine
                .push(
                    "c",
                    &format!("doc-{d}"),
                    Client::new(100 + d).insert(0, "z"),
                    opts(),
                )
                .await
                .unwrap();
        }
        assert_eq!(
            engine.live_deliveries() - before,
            20,
            "10 to the collection subscriber, 10 to the documents' own"
        );
    }

    /// A document subscriber that does not read while its buffer overflows is
    /// dropped by the actor and catches up from storage: it still gets every
    /// change of its document once, in order, with memory bounded by
    /// `mailbox_capacity`.
    pub async fn lagging_subscriber_falls_back_to_storage(kind: BackendKind) {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(kind, dir.path());
        cfg.actors.mailbox_capacity = 2;
        let t = TestEngine {
            engine: common::open_engine(cfg).unwrap(),
            dir,
            kind,
        };
        let engine = &t.engine;
        let mut stream = engine.subscribe_document("c", "a", 0, None).unwrap();
        registered(&mut stream).await;
        let (a, b) = (Client::new(1), Client::new(2));
        for i in 0..40u32 {
            engine
                .push("c", "a", a.insert(i, "a"), opts())
                .await
                .unwrap();
            engine
                .push("c", "b", b.insert(i, "b"), opts())
                .await
                .unwrap();
        }
        let expected = log_seqs_of(engine, "c", "a", 0).await;
        assert_eq!(expected.len(), 40);
        read_changes(&mut stream, "a", &expected).await;
    }

    /// The cursor a client took from storage can be ahead of the head the
    /// actor has counted (a commit is in storage before its report reaches
    /// the actor). Opening a stream from such a cursor must never answer
    /// `Reset`: /yws connections to new documents were closed with "reset"
    /// under load because of it. Many streams are opened on new documents
    /// from a head read from storage while writers keep the commit pipeline
    /// full, and each must go live and receive its document's first change.
    pub async fn cursor_from_storage_is_never_reset(kind: BackendKind) {
        let t = open(kind);
        let engine = t.engine.clone();
        let mut rng = Rng::from_env("cursor_from_storage_is_never_reset");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..8u64)
            .map(|w| {
                let engine = engine.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let client = Client::new(500 + w);
                    let mut i = 0u32;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        engine
                            .push("c", &format!("busy-{w}"), client.insert(i, "w"), opts())
                            .await
                            .unwrap();
                        i += 1;
                    }
                })
            })
            .collect();
        for n in 0..150u64 {
            let doc = format!("new-{n}");
            // As /yws does: the head from storage, the document not found.
            let head = engine.changes("c", 0, 0, None).await.unwrap().head;
            assert!(matches!(
                engine.document("c", &doc).await,
                Err(ReadError::DocumentNotFound { .. })
            ));
            let mut stream = engine.subscribe_document("c", &doc, head, None).unwrap();
            if rng.below(2) == 0 {
                tokio::task::yield_now().await;
            }
            let up_to_date = registered(&mut stream).await;
            assert!(up_to_date >= head);
            let pushed = engine
                .push("c", &doc, Client::new(10_000 + n).insert(0, "n"), opts())
                .await
                .unwrap();
            read_changes(&mut stream, &doc, &[pushed.seq.unwrap()]).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        // A cursor no commit ever reached is still refused.
        let head = engine.changes("c", 0, 0, None).await.unwrap().head;
        let mut stream = engine
            .subscribe_document("c", "new-0", head + 5, None)
            .unwrap();
        assert!(matches!(
            stream.next().await,
            Some(Err(ReadError::Reset { .. }))
        ));
    }

    /// Many joiners share one encoding: `document_shared` must hand out the
    /// same state as `document` (the same bytes object while the document
    /// does not change, a new one after it changes), `document_state_vector`
    /// the state vector of that state, and both the typed errors of a
    /// document read.
    pub async fn shared_reads_match_document_reads(kind: BackendKind) {
        use yrs::updates::decoder::Decode;
        let t = open(kind);
        let engine = &t.engine;
        let writer = Client::new(1);
        for i in 0..20u32 {
            engine
                .push("c", "d", writer.insert(i, "x"), opts())
                .await
                .unwrap();
        }
        let plain = engine.document("c", "d").await.unwrap();
        let first = engine.document_shared("c", "d").await.unwrap();
        let again = engine.document_shared("c", "d").await.unwrap();
        assert_eq!(&*first.update, &plain.update[..]);
        assert_eq!(first.cursor, plain.cursor);
        assert!(
            std::sync::Arc::ptr_eq(&first.update, &again.update),
            "one encoding per version, shared"
        );
        let sv = engine.document_state_vector("c", "d").await.unwrap();
        assert_eq!(
            yrs::StateVector::decode_v1(&sv.state_vector).unwrap(),
            writer.state_vector()
        );
        assert_eq!(sv.cursor, plain.cursor);
        engine
            .push("c", "d", writer.insert(0, "y"), opts())
            .await
            .unwrap();
        let changed = engine.document_shared("c", "d").await.unwrap();
        assert!(!std::sync::Arc::ptr_eq(&first.update, &changed.update));
        assert_eq!(common::text_of(&changed.update), writer.text());
        assert!(matches!(
            engine.document_shared("c", "nope").await,
            Err(ReadError::DocumentNotFound { .. })
        ));
        assert!(matches!(
            engine.document_state_vector("c", "nope").await,
            Err(ReadError::DocumentNotFound { .. })
        ));
        engine.delete("c", "d").await.unwrap();
        assert!(matches!(
            engine.document_shared("c", "d").await,
            Err(ReadError::DocumentDeleted { .. })
        ));
        assert!(matches!(
            engine.document_state_vector("c", "d").await,
            Err(ReadError::DocumentDeleted { .. })
        ));
    }

    /// A tombstone is a change of its document: a document subscriber sees it.
    pub async fn delete_reaches_the_document_subscriber(kind: BackendKind) {
        let t = open(kind);
        let engine = &t.engine;
        engine
            .push("c", "a", Client::new(1).insert(0, "x"), opts())
            .await
            .unwrap();
        let mut stream = engine.subscribe_document("c", "a", 0, None).unwrap();
        registered(&mut stream).await;
        let deleted = engine.delete("c", "a").await.unwrap().seq.unwrap();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(20), stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let StreamEvent::Change(change) = event {
                if change.kind == ChangeKind::Delete {
                    assert_eq!(change.seq, deleted);
                    break;
                }
            }
        }
    }
}

macro_rules! suite {
    ($($backend:ident => $kind:expr),* $(,)?) => {$(
        mod $backend {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn stored_then_live_without_gap_or_duplicate() { cases::stored_then_live_without_gap_or_duplicate($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fan_out_does_not_grow_with_other_documents() { cases::fan_out_does_not_grow_with_other_documents($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn lagging_subscriber_falls_back_to_storage() { cases::lagging_subscriber_falls_back_to_storage($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cursor_from_storage_is_never_reset() { cases::cursor_from_storage_is_never_reset($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn shared_reads_match_document_reads() { cases::shared_reads_match_document_reads($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn delete_reaches_the_document_subscriber() { cases::delete_reaches_the_document_subscriber($kind).await }
        }
    )*};
}

suite! {
    sqlite => BackendKind::Sqlite,
    redb => BackendKind::Redb,
    memory => BackendKind::Memory,
}
