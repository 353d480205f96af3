//! The replica against a real engine, over both transports (in-process, and
//! the host server's HTTP routes on loopback), with its local store on every
//! backend: every report kind, 3-way replication with an offline replica and
//! compaction on the server, the exclusive cursor at page boundaries, a
//! local store reopened with its outbox, and a reset after the server was
//! restored under a new epoch. As Scuttlebutt ran its replication tests
//! over plain streams and over the network, every case runs on both.
//!
//! Size: one suite run on every local backend and both transports; each
//! case is independent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

mod support;

use seqsync_actors::{Engine, PushOptions};
use seqsync_engine::{BackendKind, EngineConfig, Epoch, Seq};
use seqsync_replica::{
    HttpTransport, RemotePage, RemotePush, RemoteRecovery, Replica, ResetReason, SyncOutcome,
    Transport, TransportError,
};
use support::{local_store, server, server_with, AnyTransport, Via};
use yrs::updates::decoder::Decode;
use yrs::{GetString, Text, Transact, WriteTxn};

fn text_of(update: &[u8]) -> String {
    let doc = yrs::Doc::new();
    doc.transact_mut()
        .apply_update(yrs::Update::decode_v1(update).unwrap())
        .unwrap();
    let text = doc.get_or_insert_text("t");
    let out = text.get_string(&doc.transact());
    out
}

async fn type_at_end<T: Transport>(replica: &Replica<T>, doc: &str, s: &str) {
    replica
        .edit("notes", doc, |txn| {
            let text = txn.get_or_insert_text("t");
            let len = text.len(txn);
            text.insert(txn, len, s);
        })
        .await
        .unwrap();
}

async fn server_text(engine: &Engine, doc: &str) -> String {
    text_of(&engine.document("notes", doc).await.unwrap().update)
}

/// A transport that lets another client write to the server just before
/// the replica's first push: the server moved while the sync ran.
struct Interleaving {
    inner: AnyTransport,
    engine: Engine,
    done: AtomicBool,
}

impl Transport for Interleaving {
    async fn changes(
        &self,
        c: &str,
        after: Seq,
        limit: u64,
        epoch: Option<Epoch>,
    ) -> Result<RemotePage, TransportError> {
        self.inner.changes(c, after, limit, epoch).await
    }
    async fn push_batch(
        &self,
        c: &str,
        updates: Vec<(String, Vec<u8>)>,
        origin: &str,
        schema_version: Option<u32>,
    ) -> Result<RemotePush, TransportError> {
        if !self.done.swap(true, Ordering::SeqCst) {
            let update = {
                let other = yrs::Doc::with_client_id(1 << 30);
                let text = other.get_or_insert_text("t");
                let mut txn = other.transact_mut();
                text.insert(&mut txn, 0, "meanwhile ");
                txn.encode_update_v1()
            };
            self.engine
                .push("notes", "elsewhere", update, PushOptions::default())
                .await
                .unwrap();
        }
        self.inner
            .push_batch(c, updates, origin, schema_version)
            .await
    }
    async fn recover_collection(
        &self,
        c: &str,
        svs: std::collections::HashMap<String, Vec<u8>>,
    ) -> Result<RemoteRecovery, TransportError> {
        self.inner.recover_collection(c, svs).await
    }
    async fn state_vector(&self, c: &str, d: &str) -> Result<Option<Vec<u8>>, TransportError> {
        self.inner.state_vector(c, d).await
    }
    async fn subscribe(
        &self,
        c: &str,
        after: Seq,
        epoch: Option<Epoch>,
    ) -> Result<seqsync_replica::RemoteStream, TransportError> {
        self.inner.subscribe(c, after, epoch).await
    }
    async fn ack(&self, c: &str, peer: &str, seq: Seq) -> Result<(), TransportError> {
        self.inner.ack(c, peer, seq).await
    }
}

mod cases {
    use super::*;

    /// Every report kind, each checked: NoOp (one request when in sync),
    /// Pushed, Pulled, Merged, follow-up needed, and Reset after the
    /// server was restored under a new epoch, with nothing local lost.
    pub async fn every_report_kind(kind: BackendKind, via: Via) {
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let engine = server(via, |_| {});
        let store_a = local_store(kind, dirs.0.path());
        let a = Replica::open(store_a.clone(), engine.transport(), "a").unwrap();
        let b = Replica::open(local_store(kind, dirs.1.path()), engine.transport(), "b").unwrap();

        let report = a.sync("notes").await.unwrap();
        assert_eq!(report.outcome, SyncOutcome::NoOp);
        assert_eq!(report.requests, 1, "an empty server: one page");

        type_at_end(&a, "d", "hello ").await;
        assert_eq!(a.outbox_len("notes").unwrap(), 1);
        let report = a.sync("notes").await.unwrap();
        assert_eq!(report.outcome, SyncOutcome::Pushed { updates: 1 });
        assert!(!report.follow_up_needed);
        assert_eq!(a.outbox_len("notes").unwrap(), 0);
        // The echo of our own push is skipped, then we are in sync.
        assert_eq!(a.sync("notes").await.unwrap().outcome, SyncOutcome::NoOp);
        let report = a.sync("notes").await.unwrap();
        assert_eq!((report.outcome, report.requests), (SyncOutcome::NoOp, 1));

        let report = b.sync("notes").await.unwrap();
        assert!(
            matches!(report.outcome, SyncOutcome::Pulled { changes: 1, .. }),
            "{report:?}"
        );
        assert_eq!(text_of(&b.document("notes", "d").unwrap()), "hello ");
        type_at_end(&b, "d", "from b ").await;
        b.sync("notes").await.unwrap();
        type_at_end(&a, "d", "from a ").await;
        let report = a.sync("notes").await.unwrap();
        assert!(
            matches!(
                report.outcome,
                SyncOutcome::Merged {
                    pulled: 1,
                    pushed: 1
                }
            ),
            "{report:?}"
        );
        b.sync("notes").await.unwrap();
        let on_server = server_text(&engine, "d").await;
        assert_eq!(text_of(&a.document("notes", "d").unwrap()), on_server);
        assert_eq!(text_of(&b.document("notes", "d").unwrap()), on_server);

        // The server moves while a sync runs: follow-up needed, and the
        // follow-up pulls it.
        let dir_c = tempfile::tempdir().unwrap();
        let racing = Interleaving {
            inner: engine.transport(),
            engine: engine.clone(),
            done: AtomicBool::new(false),
        };
        let c = Replica::open(local_store(kind, dir_c.path()), racing, "c").unwrap();
        c.sync("notes").await.unwrap();
        type_at_end(&c, "d", "from c ").await;
        let report = c.sync("notes").await.unwrap();
        assert!(report.follow_up_needed, "{report:?}");
        let report = c.sync("notes").await.unwrap();
        assert!(
            matches!(report.outcome, SyncOutcome::Pulled { changes: 1, .. }),
            "{report:?}"
        );
        assert_eq!(
            text_of(&c.document("notes", "elsewhere").unwrap()),
            "meanwhile "
        );

        // The server is restored from a backup into a fresh store (new
        // epoch) that lacks the latest edits; A has an unsynced edit too.
        let backup = engine
            .recover_collection("notes", Default::default())
            .await
            .unwrap();
        type_at_end(&a, "d", "offline ").await;
        let restored = server(via, |_| {});
        for (doc, state) in backup.documents.iter().filter(|(d, _)| d.as_str() == "d") {
            let partial = text_of(state);
            assert!(partial.contains("from a"));
            restored
                .push("notes", doc.as_str(), state.clone(), PushOptions::default())
                .await
                .unwrap();
        }
        // The same local store, now pointed at the restored server.
        drop(a);
        let a2 = Replica::open(store_a.clone(), restored.transport(), "a").unwrap();
        let report = a2.sync("notes").await.unwrap();
        assert!(
            matches!(
                report.outcome,
                SyncOutcome::Reset {
                    reason: ResetReason::Epoch,
                    ..
                }
            ),
            "{report:?}"
        );
        let server = server_text(&restored, "d").await;
        assert!(
            server.contains("offline "),
            "the unsynced edit reached the restored server: {server}"
        );
        assert_eq!(text_of(&a2.document("notes", "d").unwrap()), server);
        assert_eq!(a2.outbox_len("notes").unwrap(), 0);
        engine.stop().await;
        restored.stop().await;
    }

    /// Three replicas edit the same documents through one server that
    /// compacts aggressively; one of them stays offline for a long stretch
    /// (so it receives snapshots). All end equal to the server.
    pub async fn three_way_with_an_offline_replica_and_compaction(kind: BackendKind, via: Via) {
        let seed: u64 = std::env::var("TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| u64::from(std::process::id()) * 7919 + 17);
        println!("three_way: seed {seed} (replay with TEST_SEED={seed})");
        let mut state = seed | 1;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let engine = server(via, |config| {
            config.compaction.max_deltas = 3;
            config.compaction.peer_timeout_secs = 0;
        });
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let replicas: Vec<_> = dirs
            .iter()
            .enumerate()
            .map(|(i, dir)| {
                Replica::open(
                    local_store(kind, dir.path()),
                    engine.transport(),
                    &format!("r{i}"),
                )
                .unwrap()
            })
            .collect();
        for round in 0..60 {
            let who = next(3) as usize;
            let doc = format!("d{}", next(2));
            type_at_end(&replicas[who], &doc, &format!("{who}.{round} ")).await;
            // Replica 2 stays offline from round 10 to 50.
            let offline = who == 2 && (10..50).contains(&round);
            if !offline && next(3) > 0 {
                replicas[who].sync("notes").await.unwrap();
            }
            if round % 10 == 9 {
                engine.compact("notes").await.unwrap();
            }
        }
        // Everyone syncs until nothing moves (follow-ups included).
        for _ in 0..3 {
            for replica in &replicas {
                let mut report = replica.sync("notes").await.unwrap();
                while report.follow_up_needed {
                    report = replica.sync("notes").await.unwrap();
                }
            }
        }
        for doc in ["d0", "d1"] {
            let Ok(state) = engine.document("notes", doc).await else {
                continue;
            };
            let server = text_of(&state.update);
            for (i, replica) in replicas.iter().enumerate() {
                assert_eq!(
                    text_of(&replica.document("notes", doc).unwrap()),
                    server,
                    "replica {i}, {doc} (seed {seed})"
                );
            }
        }
        engine.stop().await;
    }

    /// Scuttlebutt's off-by-one: a replica at seq n receives exactly n+1..,
    /// also across a page boundary (1,200 changes, pages of 1,000); then
    /// replicate, add data, replicate again.
    pub async fn the_cursor_is_exclusive_across_pages(kind: BackendKind, via: Via) {
        // No compaction on the server: every change is delivered as itself.
        let engine = server(via, |config| {
            config.compaction.max_deltas = u64::MAX / 2;
            config.compaction.max_delta_bytes = u64::MAX / 2;
        });
        let writer_dir = tempfile::tempdir().unwrap();
        let reader_dir = tempfile::tempdir().unwrap();
        let writer = Replica::open(
            local_store(kind, writer_dir.path()),
            engine.transport(),
            "w",
        )
        .unwrap();
        let reader = Replica::open(
            local_store(kind, reader_dir.path()),
            engine.transport(),
            "r",
        )
        .unwrap();
        let updates: Vec<Vec<u8>> = {
            let typist = yrs::Doc::with_client_id(1 << 21);
            let text = typist.get_or_insert_text("t");
            (0..1200)
                .map(|i| {
                    let mut txn = typist.transact_mut();
                    let len = text.len(&txn);
                    text.insert(&mut txn, len, &format!("{} ", i % 10));
                    txn.encode_update_v1()
                })
                .collect()
        };
        for update in &updates {
            writer
                .apply_local("notes", "d", update.clone())
                .await
                .unwrap();
        }
        let report = writer.sync("notes").await.unwrap();
        assert_eq!(report.outcome, SyncOutcome::Pushed { updates: 1200 });
        assert_eq!(
            report.head, 2,
            "the offline edits went up merged, at most 1,000 per update"
        );
        // Another client pushes the same edits to document `e` one by one:
        // 1,200 changes in the log, more than a page.
        for chunk in updates.chunks(1000) {
            let batch = chunk.iter().map(|u| ("e".to_owned(), u.clone())).collect();
            engine
                .push_batch("notes", batch, PushOptions::default())
                .await
                .unwrap();
        }
        let report = reader.sync("notes").await.unwrap();
        assert!(
            matches!(report.outcome, SyncOutcome::Pulled { changes: 1202, .. }),
            "{report:?}"
        );
        assert_eq!(report.cursor, 1202);
        assert_eq!(report.requests, 3, "two pages and an ack");
        assert_eq!(
            text_of(&reader.document("notes", "e").unwrap()),
            text_of(&reader.document("notes", "d").unwrap())
        );
        type_at_end(&writer, "d", "more").await;
        writer.sync("notes").await.unwrap();
        let report = reader.sync("notes").await.unwrap();
        assert!(
            matches!(report.outcome, SyncOutcome::Pulled { changes: 1, .. }),
            "{report:?}"
        );
        assert_eq!(report.cursor, 1203);
        assert_eq!(
            text_of(&reader.document("notes", "d").unwrap()),
            server_text(&engine, "d").await
        );
        engine.stop().await;
    }

    /// A live session: remote changes arrive without a sync, local edits
    /// are pushed as they are made, and stopping says goodbye first, so an
    /// edit made just before the end is on the server and a change made by
    /// others just before it is received.
    pub async fn follow_applies_and_pushes_live_and_ends_cleanly(kind: BackendKind, via: Via) {
        let engine = server(via, |_| {});
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = Arc::new(
            Replica::open(local_store(kind, dirs.0.path()), engine.transport(), "a").unwrap(),
        );
        let b = Replica::open(local_store(kind, dirs.1.path()), engine.transport(), "b").unwrap();
        type_at_end(&a, "d", "before ").await;
        let session = a.follow("notes").await.unwrap();
        // Remote to local, live.
        type_at_end(&b, "d", "from b ").await;
        b.sync("notes").await.unwrap();
        let started = std::time::Instant::now();
        while !text_of(&a.document("notes", "d").unwrap()).contains("from b") {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "the live change never arrived"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // Local to remote, live.
        type_at_end(&a, "d", "live ").await;
        let started = std::time::Instant::now();
        while !server_text(&engine, "d").await.contains("live ") {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "the live edit was never pushed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // The last moments: an edit on each side, then stop.
        type_at_end(&b, "d", "last b ").await;
        b.sync("notes").await.unwrap();
        type_at_end(&a, "d", "last a ").await;
        let report = session.stop().await.unwrap();
        assert!(report.received >= 2, "{report:?}");
        assert!(report.pushed >= 2, "{report:?}");
        let on_server = server_text(&engine, "d").await;
        assert!(on_server.contains("last a "), "{on_server}");
        assert_eq!(
            text_of(&a.document("notes", "d").unwrap()),
            on_server,
            "nothing lost at the end"
        );
        assert_eq!(a.outbox_len("notes").unwrap(), 0);
        drop((a, b));
        engine.stop().await;
    }

    /// Schema versions: an app older than the server's oldest supported
    /// version, or one that meets data newer than it understands, gets
    /// `UpgradeRequired`; an app newer than the server gets `ServerBehind`;
    /// in every case local data and the outbox are untouched.
    pub async fn schema_versions_are_typed_answers(kind: BackendKind, via: Via) {
        let v2 = seqsync_engine::Migrations::new().step(
            1,
            |_: &seqsync_engine::DocId, txn: &mut yrs::TransactionMut<'_>| {
                let meta = txn.get_or_insert_map("meta");
                if yrs::Map::get(&meta, txn, "v2").is_none() {
                    yrs::Map::insert(&meta, txn, "v2", true);
                }
                Ok(())
            },
        );
        let engine = server_with(via, v2, |config| config.schema.min_supported_version = 2);
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let open = |i: usize, version: u32| {
            Replica::open_with(
                local_store(kind, dirs[i].path()),
                engine.transport(),
                &format!("p{i}"),
                seqsync_replica::ReplicaOptions {
                    schema_version: Some(version),
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let current = open(0, 2);
        type_at_end(&current, "d", "v2 text ").await;
        assert_eq!(
            current.sync("notes").await.unwrap().outcome,
            SyncOutcome::Pushed { updates: 1 }
        );

        let old = open(1, 1);
        let err = old.sync("notes").await.unwrap_err();
        assert!(
            matches!(
                err,
                seqsync_replica::ReplicaError::UpgradeRequired { app: 1, server: 2 }
            ),
            "{err}"
        );
        assert!(
            old.documents("notes").unwrap().is_empty(),
            "nothing of the newer page was written"
        );
        type_at_end(&old, "e", "old edit ").await;
        assert!(matches!(
            old.sync("notes").await.unwrap_err(),
            seqsync_replica::ReplicaError::UpgradeRequired { .. }
        ));
        assert_eq!(old.outbox_len("notes").unwrap(), 1, "the outbox is intact");

        let newer = open(2, 3);
        newer.sync("notes").await.unwrap();
        type_at_end(&newer, "f", "from the future ").await;
        let err = newer.sync("notes").await.unwrap_err();
        assert!(
            matches!(err, seqsync_replica::ReplicaError::ServerBehind { app: 3 }),
            "{err}"
        );
        assert_eq!(newer.outbox_len("notes").unwrap(), 1);
        drop((current, old, newer));
        engine.stop().await;
    }

    /// Local edits are durable before they return: a replica whose process
    /// goes away (the handle and the store dropped) finds its outbox when
    /// its store is opened again, and pushes it exactly once.
    pub async fn the_outbox_survives_a_reopen(kind: BackendKind, via: Via) {
        if kind == BackendKind::Memory {
            return;
        }
        let engine = server(via, |_| {});
        let dir = tempfile::tempdir().unwrap();
        {
            let replica =
                Replica::open(local_store(kind, dir.path()), engine.transport(), "p").unwrap();
            type_at_end(&replica, "d", "kept ").await;
            type_at_end(&replica, "d", "twice ").await;
        }
        let replica =
            Replica::open(local_store(kind, dir.path()), engine.transport(), "p").unwrap();
        assert_eq!(replica.outbox_len("notes").unwrap(), 2);
        assert_eq!(
            replica.sync("notes").await.unwrap().outcome,
            SyncOutcome::Pushed { updates: 2 }
        );
        assert_eq!(
            replica.sync("notes").await.unwrap().outcome,
            SyncOutcome::NoOp
        );
        assert_eq!(server_text(&engine, "d").await, "kept twice ");
        assert_eq!(
            engine.changes("notes", 0, 100, None).await.unwrap().head,
            1,
            "the two edits went up merged, once"
        );
        engine.stop().await;
    }
}

/// PowerSync-style seams at the database: the server lost acked commits
/// (an older backup restored under the same epoch, as after an
/// asynchronous database failover) and then took new writes, so the seqs
/// the replica holds now name other changes. Epoch and head alone look
/// fine; the log checksum at the replica's cursor does not match, the sync
/// answers `Reset { HistoryReplaced }`, and the replica pushes back what the
/// server lost: nothing is missing on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_seq_is_noticed_by_the_log_checksum() {
    for via in [Via::Engine, Via::Http] {
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let on = |dir: std::path::PathBuf| {
            move |config: &mut EngineConfig| {
                config.storage.backend = BackendKind::Sqlite;
                config.storage.path = dir;
            }
        };
        let first = server(via, on(dirs[0].path().to_owned()));
        let typist = |client: u64, text: &str| {
            let doc = yrs::Doc::with_client_id(client);
            let t = doc.get_or_insert_text("t");
            let mut txn = doc.transact_mut();
            t.insert(&mut txn, 0, text);
            txn.encode_update_v1()
        };
        for i in 0..3 {
            first
                .push(
                    "notes",
                    &format!("d{i}"),
                    typist(1 << 21, "kept "),
                    PushOptions::default(),
                )
                .await
                .unwrap();
        }
        first.backup(dirs[1].path().join("backup")).await.unwrap();
        for i in 3..5 {
            first
                .push(
                    "notes",
                    &format!("d{i}"),
                    typist(1 << 21, "lost "),
                    PushOptions::default(),
                )
                .await
                .unwrap();
        }
        let store = local_store(BackendKind::Sqlite, dirs[2].path());
        let replica = Replica::open(store.clone(), first.transport(), "r").unwrap();
        assert_eq!(replica.sync("notes").await.unwrap().cursor, 5);
        drop(replica);
        first.stop().await;

        // The older backup comes back under the same epoch; others write.
        let restored_store = local_store(BackendKind::Sqlite, dirs[3].path());
        let backup = dirs[1].path().join("backup");
        std::thread::spawn(move || {
            seqsync_engine::bundle::restore_backup(
                &*restored_store,
                &backup,
                Default::default(),
                &mut |_| {},
            )
            .unwrap();
        })
        .join()
        .unwrap();
        let second = server(via, on(dirs[3].path().to_owned()));
        for i in 0..3 {
            second
                .push(
                    "notes",
                    &format!("e{i}"),
                    typist(2 << 21, "new "),
                    PushOptions::default(),
                )
                .await
                .unwrap();
        }
        assert_eq!(second.changes("notes", 0, 0, None).await.unwrap().head, 6);

        let replica = Replica::open(store, second.transport(), "r").unwrap();
        let report = replica.sync("notes").await.unwrap();
        assert!(
            matches!(
                report.outcome,
                SyncOutcome::Reset {
                    reason: ResetReason::HistoryReplaced,
                    ..
                }
            ),
            "{via:?}: {report:?}"
        );
        for doc in ["d3", "d4"] {
            assert_eq!(
                server_text(&second, doc).await,
                "lost ",
                "{via:?}: {doc} pushed back"
            );
        }
        for doc in ["e0", "e1", "e2"] {
            assert_eq!(text_of(&replica.document("notes", doc).unwrap()), "new ");
        }
        drop(replica);
        second.stop().await;
    }
}

/// A catch-up reports its progress page by page, ending at
/// `received == expected`, and pushes report theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_reported_page_by_page() {
    let srv = server(Via::Engine, |config| {
        config.compaction.max_deltas = u64::MAX / 2;
        config.compaction.max_delta_bytes = u64::MAX / 2;
    });
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let writer = Replica::open(
        local_store(BackendKind::Memory, dirs.0.path()),
        srv.transport(),
        "w",
    )
    .unwrap();
    for i in 0..2500 {
        type_at_end(&writer, "d", &format!("{i} ")).await;
    }
    let mut pushes = Vec::new();
    writer
        .sync_with_progress("notes", |p| pushes.push((p.pushed, p.to_push)))
        .await
        .unwrap();
    assert_eq!(pushes.last(), Some(&(2500, 2500)));
    assert_eq!(
        pushes.len(),
        1 + 1,
        "one pull, one batch (three updates merged from at most 1,000 edits each)"
    );
    // Another client's 2,500 edits, one change each: three pages to pull.
    let typist = yrs::Doc::with_client_id(5 << 20);
    let text = typist.get_or_insert_text("t");
    let edits: Vec<Vec<u8>> = (0..2500)
        .map(|i| {
            let mut txn = typist.transact_mut();
            text.insert(&mut txn, i, "x");
            txn.encode_update_v1()
        })
        .collect();
    for chunk in edits.chunks(1000) {
        let batch = chunk.iter().map(|u| ("e".to_owned(), u.clone())).collect();
        srv.push_batch("notes", batch, PushOptions::default())
            .await
            .unwrap();
    }
    let reader = Replica::open(
        local_store(BackendKind::Memory, dirs.1.path()),
        srv.transport(),
        "r",
    )
    .unwrap();
    let mut seen: Vec<seqsync_replica::SyncProgress> = Vec::new();
    reader
        .sync_with_progress("notes", |p| seen.push(p))
        .await
        .unwrap();
    let received: Vec<u64> = seen.iter().map(|p| p.received).collect();
    assert_eq!(received, vec![1000, 2000, 2503]);
    assert!(seen.iter().all(|p| p.expected == 2503));
    drop((writer, reader));
    srv.stop().await;
}

/// The server is killed while a replica has unsynced edits: the sync
/// answers a typed `Unavailable` and changes nothing locally; once a server
/// is back on the same data, the next sync pushes the outbox exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_gives_a_typed_error_and_the_next_sync_recovers() {
    let server_dir = tempfile::tempdir().unwrap();
    let config = |dir: &std::path::Path| {
        let mut config = seqsync_server::HostConfig::default();
        config.engine.storage.path = dir.join("data");
        config.server.listen = "127.0.0.1:0".to_owned();
        config
    };
    let first = seqsync_server::ServerThread::start(config(server_dir.path())).unwrap();
    let local_dir = tempfile::tempdir().unwrap();
    let store = local_store(BackendKind::Sqlite, local_dir.path());
    let replica = Replica::open(
        store.clone(),
        HttpTransport::new(format!("http://{}", first.addr), None),
        "p",
    )
    .unwrap();
    type_at_end(&replica, "d", "before ").await;
    replica.sync("notes").await.unwrap();
    type_at_end(&replica, "d", "while down ").await;
    tokio::task::spawn_blocking(move || first.stop())
        .await
        .unwrap();
    let err = replica.sync("notes").await.unwrap_err();
    assert!(
        matches!(
            err,
            seqsync_replica::ReplicaError::Transport(TransportError::Unavailable(_))
        ),
        "{err}"
    );
    assert_eq!(
        replica.outbox_len("notes").unwrap(),
        1,
        "the outbox is intact"
    );
    drop(replica);
    let second = seqsync_server::ServerThread::start(config(server_dir.path())).unwrap();
    let replica = Replica::open(
        store,
        HttpTransport::new(format!("http://{}", second.addr), None),
        "p",
    )
    .unwrap();
    let report = replica.sync("notes").await.unwrap();
    assert_eq!(report.outcome, SyncOutcome::Pushed { updates: 1 });
    assert_eq!(
        server_text(second.engine(), "d").await,
        "before while down "
    );
    drop(replica);
    tokio::task::spawn_blocking(move || second.stop())
        .await
        .unwrap();
}

macro_rules! suite {
    ($($backend:ident => $kind:expr),* $(,)?) => {$(
        mod $backend {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_report_kind_in_process() { cases::every_report_kind($kind, Via::Engine).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_report_kind_over_http() { cases::every_report_kind($kind, Via::Http).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn three_way_in_process() { cases::three_way_with_an_offline_replica_and_compaction($kind, Via::Engine).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn three_way_over_http() { cases::three_way_with_an_offline_replica_and_compaction($kind, Via::Http).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn exclusive_cursor_in_process() { cases::the_cursor_is_exclusive_across_pages($kind, Via::Engine).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn exclusive_cursor_over_http() { cases::the_cursor_is_exclusive_across_pages($kind, Via::Http).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn follow_in_process() { cases::follow_applies_and_pushes_live_and_ends_cleanly($kind, Via::Engine).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn follow_over_http() { cases::follow_applies_and_pushes_live_and_ends_cleanly($kind, Via::Http).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn schema_versions_in_process() { cases::schema_versions_are_typed_answers($kind, Via::Engine).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn schema_versions_over_http() { cases::schema_versions_are_typed_answers($kind, Via::Http).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn outbox_survives_a_reopen_in_process() { cases::the_outbox_survives_a_reopen($kind, Via::Engine).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn outbox_survives_a_reopen_over_http() { cases::the_outbox_survives_a_reopen($kind, Via::Http).await }
        }
    )*};
}

suite! {
    sqlite => BackendKind::Sqlite,
    redb => BackendKind::Redb,
    memory => BackendKind::Memory,
}
