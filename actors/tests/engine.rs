//! Engine scenarios through the public `Engine` API, run on every backend by
//! the `engine_suite!` macro at the bottom. Each test guards one promise of
//! docs/DESIGN.md, "Concepts and invariants" and "Operations"; random ones print their seed (replay with `TEST_SEED=`).
//!
//! Size: one suite run on every backend (the `cases` module and the macro
//! at the end); each case is independent.

use seqsync_testkit::harness as common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::{open, open_with_storage, text_of, Client, Rng};
use futures::StreamExt;
use seqsync_actors::{PushOptions, StreamEvent};
use seqsync_adapters::{Fault, FaultMode, FaultTarget, FaultyStorage};
use seqsync_engine::{AckError, BackendKind, ChangeKind, ReadError, Seq, WriteError};

fn opts() -> PushOptions {
    PushOptions::default()
}

/// Pulls every change after the client's cursor through `changes` pages and
/// applies them.
async fn pull(engine: &seqsync_actors::Engine, coll: &str, doc: &str, client: &mut Client) {
    loop {
        let page = engine
            .changes(coll, client.cursor, 100, None)
            .await
            .unwrap();
        for change in &page.changes {
            if change.doc.as_str() == doc && change.kind != ChangeKind::Delete {
                client.apply(&change.payload);
            }
        }
        client.cursor = page.cursor;
        if !page.has_more {
            break;
        }
    }
}

mod cases {
    use super::*;

    /// Three clients edit concurrently, push, and pull through `changes` and
    /// `subscribe`; all must end with exactly the server's text.
    pub async fn three_clients_converge(kind: BackendKind) {
        let t = open(kind);
        let engine = &t.engine;
        let mut rng = Rng::from_env("three_clients_converge");
        let mut clients: Vec<Client> = (1..=3).map(Client::new).collect();
        let mut stream = engine.subscribe("notes", 0, None).unwrap();
        for _round in 0..20 {
            let mut pushes = Vec::new();
            for client in &clients {
                for _ in 0..(1 + rng.below(3)) {
                    pushes.push(client.random_edit(&mut rng));
                }
            }
            // Push concurrently, in a shuffled order.
            for i in (1..pushes.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                pushes.swap(i, j);
            }
            let results = futures::future::join_all(
                pushes
                    .into_iter()
                    .map(|u| engine.push("notes", "doc", u, opts())),
            )
            .await;
            for r in results {
                r.unwrap();
            }
            // Clients 0 and 1 pull by page; client 2 follows the stream.
            for client in clients.iter_mut().take(2) {
                pull(engine, "notes", "doc", client).await;
            }
            let head = engine.changes("notes", 0, 0, None).await.unwrap().head;
            while clients[2].cursor < head {
                match stream.next().await.unwrap().unwrap() {
                    StreamEvent::Change(change) => {
                        assert_eq!(change.seq, clients[2].cursor + 1, "stream in seq order");
                        clients[2].apply(&change.payload);
                        clients[2].cursor = change.seq;
                    }
                    StreamEvent::UpToDate { head } => assert_eq!(head, clients[2].cursor),
                }
            }
        }
        let server = engine.document("notes", "doc").await.unwrap();
        let server_text = text_of(&server.update);
        for client in &clients {
            assert_eq!(client.text(), server_text);
        }
        assert!(!server_text.is_empty());
    }

    /// A subscriber started at cursor c while 8 writers push receives every
    /// seq > c exactly once, in order, and an UpToDate marker at the end.
    pub async fn subscribe_seam_has_no_gap_or_duplicate(kind: BackendKind) {
        let t = open(kind);
        let engine = t.engine.clone();
        let writer_client = Client::new(1);
        for i in 0..30u32 {
            engine
                .push("c", "d", writer_client.insert(i, "x"), opts())
                .await
                .unwrap();
        }
        let start_cursor: Seq = 12;
        let mut stream = engine.subscribe("c", start_cursor, None).unwrap();
        let writers: Vec<_> = (0..8u64)
            .map(|w| {
                let engine = engine.clone();
                tokio::spawn(async move {
                    let client = Client::new(100 + w);
                    for i in 0..25u32 {
                        let doc = format!("doc-{}", w % 3);
                        engine
                            .push("c", &doc, client.insert(i, "y"), opts())
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let head = engine.changes("c", 0, 0, None).await.unwrap().head;
        assert_eq!(head, 30 + 8 * 25);
        let mut seen = Vec::new();
        let mut up_to_date_at_head = false;
        while !up_to_date_at_head {
            let event = tokio::time::timeout(Duration::from_secs(20), stream.next())
                .await
                .expect("stream stalled")
                .unwrap()
                .unwrap();
            match event {
                StreamEvent::Change(c) => seen.push(c.seq),
                StreamEvent::UpToDate { head: h } => up_to_date_at_head = h == head,
            }
        }
        assert_eq!(seen, ((start_cursor + 1)..=head).collect::<Vec<_>>());
    }

    /// Readers hammering `changes` while writers push must never see seq
    /// s + 1 without s, nor a head below the changes they were given.
    pub async fn readers_never_see_a_gap(kind: BackendKind) {
        let t = open(kind);
        let engine = t.engine.clone();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let engine = engine.clone();
                let done = done.clone();
                tokio::spawn(async move {
                    let mut reads = 0;
                    while !done.load(std::sync::atomic::Ordering::Acquire) || reads == 0 {
                        let mut cursor = 0;
                        loop {
                            let page = engine.changes("h", cursor, 1000, None).await.unwrap();
                            for c in &page.changes {
                                assert_eq!(c.seq, cursor + 1, "gap after {cursor}");
                                cursor = c.seq;
                            }
                            assert!(page.head >= cursor);
                            if !page.has_more {
                                break;
                            }
                        }
                        reads += 1;
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        let writers: Vec<_> = (0..4u64)
            .map(|w| {
                let engine = engine.clone();
                tokio::spawn(async move {
                    let client = Client::new(10 + w);
                    for i in 0..40u32 {
                        engine
                            .push("h", &format!("d{w}"), client.insert(i, "z"), opts())
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        for r in readers {
            r.await.unwrap();
        }
        assert_eq!(
            engine
                .changes("h", 0, 1000, None)
                .await
                .unwrap()
                .changes
                .len(),
            160
        );
    }

    /// Retrying a push is free: the same update again logs nothing and
    /// answers the current head.
    pub async fn retried_push_is_a_noop(kind: BackendKind) {
        let t = open(kind);
        let client = Client::new(1);
        let update = client.insert(0, "hello");
        let first = t
            .engine
            .push("c", "d", update.clone(), opts())
            .await
            .unwrap();
        assert_eq!((first.seq, first.head), (Some(1), 1));
        let again = t.engine.push("c", "d", update, opts()).await.unwrap();
        assert_eq!((again.seq, again.head), (None, 1));
        assert_eq!(
            t.engine
                .changes("c", 0, 10, None)
                .await
                .unwrap()
                .changes
                .len(),
            1
        );
    }

    /// A batch with one invalid update stores nothing at all; a valid batch
    /// gets consecutive seqs in order, across documents.
    pub async fn batch_is_all_or_nothing(kind: BackendKind) {
        let t = open(kind);
        let client = Client::new(1);
        let a = client.insert(0, "a");
        let b = client.insert(1, "b");
        let err = t
            .engine
            .push_batch(
                "c",
                vec![("d1".into(), a.clone()), ("d2".into(), b"not yjs".to_vec())],
                opts(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, WriteError::InvalidUpdate { ref doc, .. } if doc == "d2"),
            "{err}"
        );
        let page = t.engine.changes("c", 0, 10, None).await.unwrap();
        assert!(page.changes.is_empty());
        assert_eq!(page.head, 0);
        // d1 must not hold "a" in memory either: pushing it again logs it.
        let other = Client::new(2);
        let c = other.insert(0, "c");
        let ok = t
            .engine
            .push_batch(
                "c",
                vec![("d1".into(), a), ("d2".into(), c), ("d1".into(), b)],
                opts(),
            )
            .await
            .unwrap();
        assert_eq!(ok.seqs, vec![Some(1), Some(2), Some(3)]);
        assert_eq!(ok.head, 3);
        assert_eq!(
            text_of(&t.engine.document("c", "d1").await.unwrap().update),
            "ab"
        );
        let err = t.engine.push_batch("c", vec![], opts()).await.unwrap_err();
        assert!(matches!(err, WriteError::EmptyBatch));
    }

    /// A deleted document refuses pushes; deleting twice is a free no-op; its
    /// tombstone is in the log and in recover_collection.
    pub async fn deleted_document_refuses_pushes(kind: BackendKind) {
        let t = open(kind);
        let client = Client::new(1);
        t.engine
            .push("c", "d", client.insert(0, "x"), opts())
            .await
            .unwrap();
        let del = t.engine.delete("c", "d").await.unwrap();
        assert_eq!((del.seq, del.head), (Some(2), 2));
        assert_eq!(t.engine.delete("c", "d").await.unwrap().seq, None);
        let err = t
            .engine
            .push("c", "d", client.insert(1, "y"), opts())
            .await
            .unwrap_err();
        assert!(matches!(err, WriteError::DocumentDeleted { .. }), "{err}");
        let err = t.engine.document("c", "d").await.unwrap_err();
        assert!(matches!(err, ReadError::DocumentDeleted { .. }), "{err}");
        let page = t.engine.changes("c", 1, 10, None).await.unwrap();
        assert_eq!(page.changes[0].kind, ChangeKind::Delete);
        let rec = t
            .engine
            .recover_collection("c", HashMap::new())
            .await
            .unwrap();
        assert_eq!(
            rec.deleted.iter().map(|d| d.as_str()).collect::<Vec<_>>(),
            vec!["d"]
        );
        assert!(rec.documents.is_empty());
    }

    /// Acks keep the max, answer it when going backwards, refuse beyond
    /// head, and show up in `peers` with their lag.
    pub async fn acks_keep_the_max_and_refuse_beyond_head(kind: BackendKind) {
        let t = open(kind);
        let client = Client::new(1);
        for i in 0..5 {
            t.engine
                .push("c", "d", client.insert(i, "x"), opts())
                .await
                .unwrap();
        }
        assert_eq!(t.engine.ack("c", "phone", 3).await.unwrap(), 3);
        assert_eq!(t.engine.ack("c", "phone", 1).await.unwrap(), 3);
        let err = t.engine.ack("c", "phone", 6).await.unwrap_err();
        assert!(
            matches!(err, AckError::AckBeyondHead { seq: 6, head: 5 }),
            "{err}"
        );
        t.engine.ack("c", "laptop", 5).await.unwrap();
        let peers = t.engine.peers("c").await.unwrap();
        let summary: Vec<_> = peers
            .iter()
            .map(|p| (p.peer.as_str().to_owned(), p.acked, p.lag, p.active))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("laptop".to_owned(), 5, 0, true),
                ("phone".to_owned(), 3, 2, true)
            ]
        );
        // A push from a known peer refreshes its last_seen; an unknown one is
        // not registered.
        let before = peers[1].last_seen_ms;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let with_origin = |o: &str| PushOptions {
            origin: Some(o.to_owned()),
            author: None,
            schema_version: None,
        };
        t.engine
            .push("c", "d", client.insert(0, "p"), with_origin("phone"))
            .await
            .unwrap();
        t.engine
            .push("c", "d", client.insert(0, "q"), with_origin("stranger"))
            .await
            .unwrap();
        let peers = t.engine.peers("c").await.unwrap();
        assert_eq!(peers.len(), 2);
        assert!(peers[1].last_seen_ms > before);
        let page = t.engine.changes("c", 5, 10, None).await.unwrap();
        assert_eq!(page.changes[0].origin.as_ref().unwrap().as_str(), "phone");
    }

    /// A client that applies `recover(sv)` reaches the server state; a cold
    /// start with `recover_collection` reproduces every document.
    pub async fn recover_brings_clients_to_the_server_state(kind: BackendKind) {
        let t = open(kind);
        let a = Client::new(1);
        let b = Client::new(2);
        t.engine
            .push("c", "one", a.insert(0, "hello "), opts())
            .await
            .unwrap();
        let offline = Client::new(3);
        offline.apply(&t.engine.document("c", "one").await.unwrap().update);
        t.engine
            .push("c", "one", a.insert(6, "world"), opts())
            .await
            .unwrap();
        t.engine
            .push("c", "two", b.insert(0, "second doc"), opts())
            .await
            .unwrap();
        let rec = t
            .engine
            .recover(
                "c",
                "one",
                &yrs::updates::encoder::Encode::encode_v1(&offline.state_vector()),
            )
            .await
            .unwrap();
        offline.apply(&rec.diff);
        assert_eq!(offline.text(), "hello world");
        assert_eq!(rec.cursor, 3);
        let cold = t
            .engine
            .recover_collection("c", HashMap::new())
            .await
            .unwrap();
        let docs: HashMap<String, String> = cold
            .documents
            .iter()
            .map(|(d, u)| (d.to_string(), text_of(u)))
            .collect();
        assert_eq!(docs["one"], "hello world");
        assert_eq!(docs["two"], "second doc");
        assert_eq!(cold.cursor, 3);
        let err = t
            .engine
            .recover("c", "one", &[0xff, 0xff, 0xff])
            .await
            .unwrap_err();
        assert!(matches!(err, ReadError::InvalidStateVector(_)), "{err}");
        let err = t.engine.document("c", "nope").await.unwrap_err();
        assert!(matches!(err, ReadError::DocumentNotFound { .. }), "{err}");
    }

    /// Every y-websocket provider sends an empty update (`[0, 0]`) as its
    /// first sync step 2; on a document that does not exist, that no-op
    /// must not make it appear to readers (it used to answer 200 until the
    /// next restart, from the actor's memory).
    pub async fn noop_push_does_not_create_the_document(kind: BackendKind) {
        let t = open(kind);
        let e = &t.engine;
        // The collection exists; the document does not.
        let client = Client::new(1);
        e.push("c", "other", client.insert(0, "x"), opts())
            .await
            .unwrap();
        for _ in 0..2 {
            let outcome = e.push("c", "ghost", vec![0, 0], opts()).await.unwrap();
            assert_eq!(outcome.seq, None, "an empty update logs nothing");
        }
        let err = e.document("c", "ghost").await.unwrap_err();
        assert!(matches!(err, ReadError::DocumentNotFound { .. }), "{err}");
        let err = e.recover("c", "ghost", &[0]).await.unwrap_err();
        assert!(matches!(err, ReadError::DocumentNotFound { .. }), "{err}");
        let err = e.document_state_vector("c", "ghost").await.unwrap_err();
        assert!(matches!(err, ReadError::DocumentNotFound { .. }), "{err}");
        let err = e.document_shared("c", "ghost").await.unwrap_err();
        assert!(matches!(err, ReadError::DocumentNotFound { .. }), "{err}");
        assert_eq!(e.changes("c", 0, 10, None).await.unwrap().head, 1);
        // A no-op into a collection that does not exist creates neither.
        e.push("fresh", "ghost", vec![0, 0], opts()).await.unwrap();
        let err = e.document("fresh", "ghost").await.unwrap_err();
        assert!(matches!(err, ReadError::DocumentNotFound { .. }), "{err}");
        assert_eq!(e.changes("fresh", 0, 10, None).await.unwrap().head, 0);
        // A real edit then creates it, as usual.
        e.push("c", "ghost", Client::new(2).insert(0, "boo"), opts())
            .await
            .unwrap();
        assert_eq!(
            text_of(&e.document("c", "ghost").await.unwrap().update),
            "boo"
        );
    }

    /// Cursors from another epoch or beyond head get a typed Reset, never a
    /// silently empty page.
    pub async fn foreign_cursor_gets_reset(kind: BackendKind) {
        let t = open(kind);
        let client = Client::new(1);
        t.engine
            .push("c", "d", client.insert(0, "x"), opts())
            .await
            .unwrap();
        let page = t.engine.changes("c", 0, 10, None).await.unwrap();
        let epoch = page.epoch.unwrap();
        assert!(t.engine.changes("c", 1, 10, Some(epoch)).await.is_ok());
        let err = t.engine.changes("c", 2, 10, None).await.unwrap_err();
        assert!(matches!(err, ReadError::Reset { head: 1, .. }), "{err}");
        let other = seqsync_engine::Epoch([7; 16]);
        let err = t.engine.changes("c", 0, 10, Some(other)).await.unwrap_err();
        assert!(
            matches!(err, ReadError::Reset { epoch: Some(e), .. } if e == epoch),
            "{err}"
        );
        let err = t
            .engine
            .changes("never-written", 5, 10, None)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ReadError::Reset {
                    epoch: None,
                    head: 0
                }
            ),
            "{err}"
        );
        let mut stream = t.engine.subscribe("c", 9, None).unwrap();
        assert!(matches!(
            stream.next().await,
            Some(Err(ReadError::Reset { .. }))
        ));
        // limit 0 and a huge limit are both fine.
        let empty = t.engine.changes("c", 0, 0, None).await.unwrap();
        assert!(empty.changes.is_empty() && empty.has_more && empty.cursor == 0);
        assert_eq!(
            t.engine
                .changes("c", 0, u64::MAX, None)
                .await
                .unwrap()
                .changes
                .len(),
            1
        );
    }

    /// Bad input (docs/DESIGN.md) gets typed errors and stores nothing.
    pub async fn bad_input_is_refused_with_typed_errors(kind: BackendKind) {
        let t = open(kind);
        let e = &t.engine;
        let client = Client::new(1);
        let valid = client.insert(0, "x");
        for name in ["a/b", "..", "", "x\0y", &"n".repeat(10_000)] {
            let err = e.push(name, "d", valid.clone(), opts()).await.unwrap_err();
            assert!(matches!(err, WriteError::InvalidName(_)), "{name:?}: {err}");
        }
        assert!(matches!(
            e.push("c", "", valid.clone(), opts()).await.unwrap_err(),
            WriteError::InvalidName(_)
        ));
        assert!(matches!(
            e.push("c", "a\nb", valid.clone(), opts())
                .await
                .unwrap_err(),
            WriteError::InvalidName(_)
        ));
        let err = e.push("c", "d", Vec::new(), opts()).await.unwrap_err();
        assert!(matches!(err, WriteError::InvalidUpdate { .. }), "{err}");
        let err = e
            .push("c", "d", b"garbage that is not an update".to_vec(), opts())
            .await
            .unwrap_err();
        assert!(matches!(err, WriteError::InvalidUpdate { .. }), "{err}");
        let max = e.config().limits.max_update_bytes as usize;
        let err = e
            .push("c", "d", vec![0u8; max + 1], opts())
            .await
            .unwrap_err();
        assert!(matches!(err, WriteError::TooLarge { .. }), "{err}");
        let schema = PushOptions {
            origin: None,
            author: None,
            schema_version: Some(9),
        };
        let err = e.push("c", "d", valid.clone(), schema).await.unwrap_err();
        assert!(
            matches!(
                err,
                WriteError::SchemaTooNew {
                    client: 9,
                    collection: 1
                }
            ),
            "{err}"
        );
        // Truncations of a valid update are refused or, if a prefix happens
        // to decode, handled without a panic.
        for cut in 1..valid.len() {
            let _ = e.push("c", "t", valid[..cut].to_vec(), opts()).await;
        }
        assert!(e.changes("c", 0, 10, None).await.unwrap().changes.len() <= valid.len());
        // The engine still serves.
        assert!(e.push("c", "d", valid, opts()).await.unwrap().seq.is_some());
    }

    /// Out-of-order updates are logged (not dropped as no-ops) and the
    /// document integrates them once the dependency arrives.
    pub async fn out_of_order_update_is_logged_then_integrates(kind: BackendKind) {
        let t = open(kind);
        let client = Client::new(1);
        let first = client.insert(0, "ab");
        let second = client.insert(2, "cd");
        assert_eq!(
            t.engine.push("c", "d", second, opts()).await.unwrap().seq,
            Some(1)
        );
        assert_eq!(
            t.engine.push("c", "d", first, opts()).await.unwrap().seq,
            Some(2)
        );
        assert_eq!(
            text_of(&t.engine.document("c", "d").await.unwrap().update),
            "abcd"
        );
    }

    /// Close and reopen: every acked change is there and the head continues
    /// without a gap (disk backends).
    pub async fn restart_keeps_every_acked_change(kind: BackendKind) {
        if kind == BackendKind::Memory {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let config = common::config(kind, dir.path());
        let client = Client::new(1);
        {
            let engine = common::open_engine(config.clone()).unwrap();
            for i in 0..20 {
                engine
                    .push("c", "d", client.insert(i, "k"), opts())
                    .await
                    .unwrap();
            }
            engine.ack("c", "p", 20).await.unwrap();
            engine.shutdown().await;
            assert!(matches!(
                engine.push("c", "d", client.insert(0, "z"), opts()).await,
                Err(WriteError::ShuttingDown)
            ));
        }
        let engine = common::open_engine(config).unwrap();
        let page = engine.changes("c", 0, 100, None).await.unwrap();
        assert_eq!(
            page.changes.iter().map(|c| c.seq).collect::<Vec<_>>(),
            (1..=20).collect::<Vec<_>>()
        );
        assert_eq!(
            text_of(&engine.document("c", "d").await.unwrap().update),
            "k".repeat(20)
        );
        let next = engine
            .push("c", "d", client.insert(0, "n"), opts())
            .await
            .unwrap();
        assert_eq!(next.seq, Some(21));
        assert_eq!(engine.peers("c").await.unwrap()[0].acked, 20);
        engine.shutdown().await;
    }

    /// A storage failure mid-commit: the callers of that commit get a typed
    /// error, nothing of it is visible, memory is reloaded from storage, the
    /// next pushes succeed without a gap, and other collections keep working.
    pub async fn injected_commit_failure_is_contained(kind: BackendKind) {
        let dir = tempfile::tempdir().unwrap();
        let inner = common::open_store(&common::config(kind, dir.path()).storage);
        let faulty = Arc::new(FaultyStorage::new(inner));
        let t = open_with_storage(kind, faulty.clone());
        let e = &t.engine;
        let client = Client::new(1);
        e.push("c", "d", client.insert(0, "ok1 "), opts())
            .await
            .unwrap();
        let other_client = Client::new(2);
        e.push("other", "d", other_client.insert(0, "o"), opts())
            .await
            .unwrap();
        faulty.arm(Fault {
            target: FaultTarget::Commit,
            nth: 1,
            persistent: false,
            mode: FaultMode::FailBefore,
        });
        let lost = client.insert(4, "LOST ");
        let err = e.push("c", "d", lost.clone(), opts()).await.unwrap_err();
        assert!(matches!(err, WriteError::Storage(_)), "{err}");
        let page = e.changes("c", 0, 10, None).await.unwrap();
        assert_eq!(page.head, 1);
        assert_eq!(text_of(&e.document("c", "d").await.unwrap().update), "ok1 ");
        // The next pushes succeed (possibly after the collection reloads).
        let mut next = None;
        for _ in 0..50 {
            match e.push("c", "d", lost.clone(), opts()).await {
                Ok(outcome) => {
                    next = Some(outcome);
                    break;
                }
                Err(WriteError::Storage(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(other) => panic!("unexpected {other}"),
            }
        }
        assert_eq!(
            next.unwrap().seq,
            Some(2),
            "the failed commit consumed no seq"
        );
        assert_eq!(
            text_of(&e.document("c", "d").await.unwrap().update),
            "ok1 LOST "
        );
        assert_eq!(
            e.push("other", "d", other_client.insert(0, "p"), opts())
                .await
                .unwrap()
                .seq,
            Some(2)
        );
        // A failure after the write landed: the caller saw an error, the
        // retry is a no-op, nothing is duplicated.
        faulty.arm(Fault {
            target: FaultTarget::Commit,
            nth: 1,
            persistent: false,
            mode: FaultMode::FailAfterCommit,
        });
        let ambiguous = client.insert(0, "A");
        assert!(e.push("c", "d", ambiguous.clone(), opts()).await.is_err());
        let mut retried = None;
        for _ in 0..50 {
            if let Ok(outcome) = e.push("c", "d", ambiguous.clone(), opts()).await {
                retried = Some(outcome);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            retried.unwrap().seq,
            None,
            "the landed write is not logged twice"
        );
        let seqs: BTreeSet<Seq> = e
            .changes("c", 0, 100, None)
            .await
            .unwrap()
            .changes
            .iter()
            .map(|c| c.seq)
            .collect();
        assert_eq!(seqs, (1..=3).collect());
    }

    /// The history a support tool reads must be the same on every backend:
    /// each seq reads back as the document was then, the history lists its
    /// changes, a restore is one more change whose content is the version's,
    /// listings show the collection and the document's stored size, and
    /// once compaction folds the history an early seq is a typed
    /// `HistoryCompacted` naming the earliest readable seq.
    pub async fn versions_history_and_listings(kind: BackendKind) {
        let t = open(kind);
        let e = &t.engine;
        let writer = Client::new(1);
        let first = e
            .push("c", "d", writer.insert(0, "Monday"), opts())
            .await
            .unwrap()
            .seq
            .unwrap();
        let monday = writer.text();
        let second = e
            .push("c", "d", writer.insert(6, " and Tuesday"), opts())
            .await
            .unwrap()
            .seq
            .unwrap();
        assert_eq!(
            text_of(&e.document_at("c", "d", first).await.unwrap().update),
            monday
        );
        let version = e.document_at("c", "d", second + 10).await.unwrap();
        assert_eq!(
            (text_of(&version.update), version.seq),
            (writer.text(), second)
        );
        assert!(matches!(
            e.document_at("c", "nothing", second).await,
            Err(ReadError::DocumentNotFound { .. })
        ));

        let history = e.history("c", "d", 0, 10).await.unwrap();
        assert_eq!(
            history.entries.iter().map(|h| h.seq).collect::<Vec<_>>(),
            [first, second]
        );
        assert!(!history.has_more);

        let restored = e.restore("c", "d", first).await.unwrap();
        assert_eq!(restored.restored_from, first);
        let third = restored.seq.expect("the restore is a change");
        assert!(third > second);
        assert_eq!(text_of(&e.document("c", "d").await.unwrap().update), monday);
        assert_eq!(
            e.restore("c", "d", first).await.unwrap().seq,
            None,
            "equal already"
        );

        let collections = e.collections(None, 10).await.unwrap();
        assert!(collections
            .collections
            .iter()
            .any(|c| c.name.as_str() == "c" && c.head == third));
        let documents = e.documents("c", None, 10).await.unwrap();
        assert_eq!(documents.documents.len(), 1);
        assert!(documents.documents[0].stored_bytes > 0);
        assert!(!documents.documents[0].deleted);

        e.compact("c").await.unwrap();
        match e.document_at("c", "d", first).await {
            Err(ReadError::HistoryCompacted { earliest_seq, .. }) => {
                assert_eq!(earliest_seq, third)
            }
            other => panic!("expected HistoryCompacted, got {other:?}"),
        }
        assert_eq!(
            text_of(&e.document_at("c", "d", third).await.unwrap().update),
            monday
        );
    }
}

macro_rules! engine_suite {
    ($($backend:ident => $kind:expr),* $(,)?) => {$(
        mod $backend {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn three_clients_converge() { if common::skip($kind) { return; } cases::three_clients_converge($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn subscribe_seam_has_no_gap_or_duplicate() { if common::skip($kind) { return; } cases::subscribe_seam_has_no_gap_or_duplicate($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn readers_never_see_a_gap() { if common::skip($kind) { return; } cases::readers_never_see_a_gap($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn retried_push_is_a_noop() { if common::skip($kind) { return; } cases::retried_push_is_a_noop($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn batch_is_all_or_nothing() { if common::skip($kind) { return; } cases::batch_is_all_or_nothing($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn deleted_document_refuses_pushes() { if common::skip($kind) { return; } cases::deleted_document_refuses_pushes($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn acks_keep_the_max_and_refuse_beyond_head() { if common::skip($kind) { return; } cases::acks_keep_the_max_and_refuse_beyond_head($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn recover_brings_clients_to_the_server_state() { if common::skip($kind) { return; } cases::recover_brings_clients_to_the_server_state($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn noop_push_does_not_create_the_document() { if common::skip($kind) { return; } cases::noop_push_does_not_create_the_document($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn foreign_cursor_gets_reset() { if common::skip($kind) { return; } cases::foreign_cursor_gets_reset($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bad_input_is_refused_with_typed_errors() { if common::skip($kind) { return; } cases::bad_input_is_refused_with_typed_errors($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn out_of_order_update_is_logged_then_integrates() { if common::skip($kind) { return; } cases::out_of_order_update_is_logged_then_integrates($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn restart_keeps_every_acked_change() { if common::skip($kind) { return; } cases::restart_keeps_every_acked_change($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn injected_commit_failure_is_contained() { if common::skip($kind) { return; } cases::injected_commit_failure_is_contained($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn versions_history_and_listings() { if common::skip($kind) { return; } cases::versions_history_and_listings($kind).await }
        }
    )*};
}

engine_suite! {
    sqlite => BackendKind::Sqlite,
    redb => BackendKind::Redb,
    memory => BackendKind::Memory,
    postgres => BackendKind::Postgres,
}

/// An idle collection is dropped from memory after `idle_unload_secs` (so
/// 100,000 collections on disk cost nothing), and comes back from storage
/// intact on the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_collections_unload_and_reload_from_storage() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(BackendKind::Sqlite, dir.path());
    config.actors.idle_unload_secs = 1;
    let engine = common::open_engine(config).unwrap();
    let client = Client::new(1);
    for name in ["a", "b", "c"] {
        engine
            .push(name, "d", client.insert(0, name), opts())
            .await
            .unwrap();
    }
    assert_eq!(engine.loaded_collections(), 3);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while engine.loaded_collections() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "idle collections were never unloaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let next = engine
        .push("b", "d", client.insert(0, "again"), opts())
        .await
        .unwrap();
    assert_eq!(next.seq, Some(2), "the head continues from storage");
    assert_eq!(
        text_of(&engine.document("a", "d").await.unwrap().update),
        "a"
    );
    engine.shutdown().await;
}

/// A host that shuts the engine down and reopens the same directory at once
/// (a config reload, a test) must find the directory free: shutdown waits
/// until the runtime's threads (arbiters, the compactor) have let go of the
/// store. The simulation found reopen failing with `AlreadyOpen` before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_then_immediate_reopen_finds_the_directory_free() {
    // The window is widest on a busy machine: keep both cores busy.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinners: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    for kind in [BackendKind::Sqlite, BackendKind::Redb] {
        let dir = tempfile::tempdir().unwrap();
        let config = common::config(kind, dir.path());
        let client = Client::new(1);
        for round in 0..20u32 {
            let engine = common::open_engine(config.clone())
                .unwrap_or_else(|e| panic!("{kind:?}: reopen {round}: {e}"));
            for c in ["a", "b", "c"] {
                engine
                    .push(c, "d", client.insert(0, "x"), opts())
                    .await
                    .unwrap();
                // Starts the compactor and keeps actors busy at shutdown.
                engine.compact(c).await.unwrap();
            }
            engine.shutdown().await;
            drop(engine);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for spinner in spinners {
        spinner.join().unwrap();
    }
}
