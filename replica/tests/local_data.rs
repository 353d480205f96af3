//! A replica's own data over time: migrated on the client when the app is
//! upgraded while offline (without duplicating what the server's migration
//! of the same documents wrote), left to the server when a step is
//! declared server-only, migrated up when pulled at an older version, and
//! compacted locally without touching the outbox. Each scenario runs over
//! both transports, with the server on SQLite so it can be upgraded (stopped
//! and reopened with new steps) between two syncs.

mod support;

use std::path::Path;

use seqsync_actors::PushOptions;
use seqsync_engine::{BackendKind, DocId, Migrations, StepError};
use seqsync_replica::{Replica, ReplicaError, ReplicaOptions, SyncOutcome, Transport};
use support::{local_store, server_with, AnyTransport, Server, Via};
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::{Any, Array, GetString, Map, ReadTxn, Text, Transact, TransactionMut, WriteTxn};

/// Version 2 of the notes schema: every note gets the tag "notes". It
/// appends to an array, the migrations issue's worst case: two runs on two
/// different states append twice.
fn tag_notes(_: &DocId, txn: &mut TransactionMut<'_>) -> Result<(), StepError> {
    let meta = txn.get_or_insert_map("meta");
    if meta.get(txn, "tagged").is_none() {
        let tags = txn.get_or_insert_array("tags");
        let len = tags.len(txn);
        tags.insert(txn, len, "notes");
        meta.insert(txn, "tagged", true);
    }
    Ok(())
}

fn both_sides() -> Migrations {
    Migrations::new().step(1, tag_notes)
}

fn server_only() -> Migrations {
    Migrations::new().server_only_step(1, tag_notes)
}

/// A server on SQLite in `dir` with `migrations`.
fn server_in(via: Via, dir: &Path, migrations: Migrations) -> Server {
    let dir = dir.to_owned();
    server_with(via, migrations, move |config| {
        config.storage.backend = BackendKind::Sqlite;
        config.storage.path = dir;
    })
}

fn replica(dir: &Path, server: &Server, migrations: Option<Migrations>) -> Replica<AnyTransport> {
    Replica::open_with(
        local_store(BackendKind::Sqlite, dir),
        server.transport(),
        "a",
        ReplicaOptions {
            migrations,
            ..Default::default()
        },
    )
    .unwrap()
}

fn load(update: &[u8]) -> yrs::Doc {
    let doc = yrs::Doc::new();
    doc.transact_mut()
        .apply_update(yrs::Update::decode_v1(update).unwrap())
        .unwrap();
    doc
}

fn tags_of(update: &[u8]) -> Vec<String> {
    let doc = load(update);
    let tags = doc.get_or_insert_array("tags");
    let txn = doc.transact();
    tags.iter(&txn)
        .map(|v| match v.to_json(&txn) {
            Any::String(s) => s.to_string(),
            other => other.to_string(),
        })
        .collect()
}

fn text_of(update: &[u8]) -> String {
    let doc = load(update);
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

/// Another client writes `s` at the start of the text of `doc`.
async fn other_client_types(server: &Server, doc: &str, s: &str) {
    let other = yrs::Doc::with_client_id(3 << 20);
    if let Ok(current) = server.document("notes", doc).await {
        other
            .transact_mut()
            .apply_update(yrs::Update::decode_v1(&current.update).unwrap())
            .unwrap();
    }
    let before = other.transact().state_vector();
    let text = other.get_or_insert_text("t");
    text.insert(&mut other.transact_mut(), 0, s);
    let update = other.transact().encode_state_as_update_v1(&before);
    server
        .push("notes", doc, update, PushOptions::default())
        .await
        .unwrap();
}

async fn server_doc(server: &Server, doc: &str) -> Vec<u8> {
    server.document("notes", doc).await.unwrap().update
}

mod cases {
    use super::*;

    /// The app was upgraded while the phone was offline, and the server was
    /// upgraded too, but from another state (someone else wrote the note
    /// first). The replica migrates its copy so the app works offline; on
    /// reconnect the server's migration of the note arrives and the
    /// replica's own output is rebased away: the array-appending step's tag
    /// is there once, on both sides, and every edit survives.
    pub async fn an_offline_upgrade_meets_the_servers_migration_once(via: Via) {
        let (server_dir, local_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let v1 = server_in(via, server_dir.path(), Migrations::new());
        let a = replica(local_dir.path(), &v1, None);
        type_at_end(&a, "d", "hello ").await;
        type_at_end(&a, "e", "only mine ").await;
        a.sync("notes").await.unwrap();
        other_client_types(&v1, "d", "world ").await;
        type_at_end(&a, "d", "offline ").await;
        drop(a);
        v1.stop().await;

        let v2 = server_in(via, server_dir.path(), both_sides());
        assert_eq!(tags_of(&server_doc(&v2, "d").await), ["notes"]);
        let a = replica(local_dir.path(), &v2, Some(both_sides()));
        assert_eq!(a.migrate_local("notes").await.unwrap(), 2);
        assert_eq!(tags_of(&a.document("notes", "d").unwrap()), ["notes"]);
        assert_eq!(
            a.migrate_local("notes").await.unwrap(),
            0,
            "a second run finds nothing to do"
        );
        type_at_end(&a, "d", "upgraded ").await;

        let report = a.sync("notes").await.unwrap();
        assert_eq!(
            report.rebased, 2,
            "both documents took the server's migration: {report:?}"
        );
        a.sync("notes").await.unwrap();
        for doc in ["d", "e"] {
            let local = a.document("notes", doc).unwrap();
            let remote = server_doc(&v2, doc).await;
            assert_eq!(tags_of(&remote), ["notes"], "{doc} on the server");
            assert_eq!(tags_of(&local), ["notes"], "{doc} on the replica");
            assert_eq!(text_of(&local), text_of(&remote), "{doc}");
        }
        let text = text_of(&server_doc(&v2, "d").await);
        for part in ["hello", "world", "offline", "upgraded"] {
            assert!(text.contains(part), "{part} is in {text:?}");
        }
        assert_eq!(a.outbox_len("notes").unwrap(), 0);
        drop(a);
        v2.stop().await;
    }

    /// An edit made after the local migration that builds on its output
    /// (a second tag, placed after the migrated one) cannot be separated
    /// from it: the replica pushes its own output first, so nothing is lost
    /// and the server never holds an update whose dependency it lacks. The
    /// price is what the server-only declaration exists for: where the two
    /// sides migrated different states, the appended tag is there twice.
    pub async fn an_edit_on_the_local_migration_keeps_it(via: Via) {
        let (server_dir, local_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let v1 = server_in(via, server_dir.path(), Migrations::new());
        let a = replica(local_dir.path(), &v1, None);
        type_at_end(&a, "d", "hello ").await;
        a.sync("notes").await.unwrap();
        other_client_types(&v1, "d", "world ").await;
        drop(a);
        v1.stop().await;

        let v2 = server_in(via, server_dir.path(), both_sides());
        let a = replica(local_dir.path(), &v2, Some(both_sides()));
        a.edit("notes", "d", |txn| {
            let tags = txn.get_or_insert_array("tags");
            let len = tags.len(txn);
            tags.insert(txn, len, "work");
        })
        .await
        .unwrap();
        let report = a.sync("notes").await.unwrap();
        assert_eq!(report.rebased, 0, "{report:?}");
        a.sync("notes").await.unwrap();
        let remote = tags_of(&server_doc(&v2, "d").await);
        assert!(remote.contains(&"work".to_owned()), "{remote:?}");
        assert_eq!(
            remote.iter().filter(|t| *t == "notes").count(),
            2,
            "{remote:?}"
        );
        assert_eq!(tags_of(&a.document("notes", "d").unwrap()), remote);
        drop(a);
        v2.stop().await;
    }

    /// A step declared server-only is never run by the replica: edits get a
    /// typed answer that says to sync, reads still work, and the sync
    /// brings the server's migration; after it the tag is there once and
    /// the app edits on top of it. The edit made at version 1 before the
    /// upgrade goes up declared as version 1, and the server upgrades it.
    pub async fn a_server_only_step_waits_for_the_server(via: Via) {
        let (server_dir, local_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let v1 = server_in(via, server_dir.path(), Migrations::new());
        let a = replica(local_dir.path(), &v1, None);
        type_at_end(&a, "d", "hello ").await;
        a.sync("notes").await.unwrap();
        other_client_types(&v1, "d", "world ").await;
        type_at_end(&a, "d", "offline ").await;
        drop(a);
        v1.stop().await;

        let v2 = server_in(via, server_dir.path(), server_only());
        let a = replica(local_dir.path(), &v2, Some(server_only()));
        assert_eq!(a.migrate_local("notes").await.unwrap(), 0);
        let err = a
            .edit("notes", "d", |txn| {
                txn.get_or_insert_text("t").insert(txn, 0, "x");
            })
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                ReplicaError::AwaitingServerMigration {
                    local: 1,
                    app: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("server-only"), "{err}");
        assert!(text_of(&a.document("notes", "d").unwrap()).contains("offline"));
        assert!(tags_of(&a.document("notes", "d").unwrap()).is_empty());

        let report = a.sync("notes").await.unwrap();
        assert!(
            matches!(report.outcome, SyncOutcome::Merged { pushed: 1, .. }),
            "{report:?}"
        );
        a.edit("notes", "d", |txn| {
            let tags = txn.get_or_insert_array("tags");
            let len = tags.len(txn);
            tags.insert(txn, len, "work");
        })
        .await
        .unwrap();
        a.sync("notes").await.unwrap();
        a.sync("notes").await.unwrap();
        let remote = server_doc(&v2, "d").await;
        assert_eq!(tags_of(&remote), ["notes", "work"]);
        assert_eq!(
            tags_of(&a.document("notes", "d").unwrap()),
            ["notes", "work"]
        );
        let text = text_of(&remote);
        assert!(text.contains("offline") && text.contains("world"), "{text}");
        drop(a);
        v2.stop().await;
    }

    /// A fresh replica of an upgraded app against a server that is not
    /// upgraded yet: what it pulls at version 1 is migrated before the app
    /// sees it (Verdant's reset case, client side), pushing is refused with
    /// a typed answer, and once the server is upgraded the replica takes its
    /// migration without a duplicate.
    pub async fn pulled_data_of_an_older_version_is_migrated(via: Via) {
        let (server_dir, local_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let v1 = server_in(via, server_dir.path(), Migrations::new());
        other_client_types(&v1, "d", "from v1 ").await;
        let a = replica(local_dir.path(), &v1, Some(both_sides()));
        let report = a.sync("notes").await.unwrap();
        assert_eq!(
            report.outcome,
            SyncOutcome::Pulled {
                changes: 1,
                bytes: report_bytes(&report)
            }
        );
        assert_eq!(tags_of(&a.document("notes", "d").unwrap()), ["notes"]);
        type_at_end(&a, "d", "mine ").await;
        let err = a.sync("notes").await.unwrap_err();
        assert!(
            matches!(err, ReplicaError::ServerBehind { app: 2 }),
            "{err}"
        );
        drop(a);
        v1.stop().await;

        let v2 = server_in(via, server_dir.path(), both_sides());
        let a = replica(local_dir.path(), &v2, Some(both_sides()));
        a.sync("notes").await.unwrap();
        a.sync("notes").await.unwrap();
        let remote = server_doc(&v2, "d").await;
        assert_eq!(tags_of(&remote), ["notes"]);
        assert_eq!(tags_of(&a.document("notes", "d").unwrap()), ["notes"]);
        assert_eq!(text_of(&remote), "from v1 mine ");
        drop(a);
        v2.stop().await;
    }

    fn report_bytes(report: &seqsync_replica::SyncReport) -> u64 {
        match report.outcome {
            SyncOutcome::Pulled { bytes, .. } => bytes,
            _ => 0,
        }
    }

    /// Local compaction folds what the server confirmed into snapshots and
    /// leaves the outbox alone: the unpushed edits are still pushed once
    /// afterwards, and the document reads the same.
    pub async fn local_compaction_keeps_the_outbox(via: Via) {
        let (server_dir, local_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let server = server_in(via, server_dir.path(), Migrations::new());
        let a = replica(local_dir.path(), &server, None);
        for i in 0..50 {
            type_at_end(&a, "d", &format!("{i} ")).await;
        }
        a.sync("notes").await.unwrap();
        other_client_types(&server, "d", "theirs ").await;
        a.sync("notes").await.unwrap();
        for i in 50..55 {
            type_at_end(&a, "d", &format!("{i} ")).await;
        }
        let before = a.document("notes", "d").unwrap();
        let compacted = a.compact("notes").await.unwrap();
        assert_eq!(compacted.documents, 1);
        assert_eq!(compacted.changes_removed, 51, "{compacted:?}");
        assert_eq!(
            text_of(&a.document("notes", "d").unwrap()),
            text_of(&before)
        );
        assert_eq!(a.outbox_len("notes").unwrap(), 5);
        let report = a.sync("notes").await.unwrap();
        assert_eq!(report.outcome, SyncOutcome::Pushed { updates: 5 });
        assert_eq!(text_of(&server_doc(&server, "d").await), text_of(&before));
        assert_eq!(a.compact("notes").await.unwrap().changes_removed, 6);
        drop(a);
        server.stop().await;
    }

    /// Every push writes the replica's sync state; its history is folded
    /// into a snapshot every 256 writes, so reopening a long-used replica
    /// does not replay thousands of state updates.
    pub async fn the_sync_state_stays_small(via: Via) {
        let (server_dir, local_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let server = server_in(via, server_dir.path(), Migrations::new());
        let a = replica(local_dir.path(), &server, None);
        for i in 0..300 {
            type_at_end(&a, "d", &format!("{i} ")).await;
            a.sync("notes").await.unwrap();
        }
        drop(a);
        let store = local_store(BackendKind::Sqlite, local_dir.path());
        let state = seqsync_engine::CollectionName::new(seqsync_replica::STATE_COLLECTION).unwrap();
        let changes = store
            .document_changes(&state, &DocId::new("notes").unwrap())
            .unwrap();
        assert!(changes.len() < 256, "{} state changes", changes.len());
        drop(store);
        let a = replica(local_dir.path(), &server, None);
        assert_eq!(a.sync("notes").await.unwrap().outcome, SyncOutcome::NoOp);
        assert_eq!(a.outbox_len("notes").unwrap(), 0);
        drop(a);
        server.stop().await;
    }
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod in_process {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { cases::$name(Via::Engine).await })*
        }
        mod over_http {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { cases::$name(Via::Http).await })*
        }
    };
}

both! {
    an_offline_upgrade_meets_the_servers_migration_once,
    an_edit_on_the_local_migration_keeps_it,
    a_server_only_step_waits_for_the_server,
    pulled_data_of_an_older_version_is_migrated,
    local_compaction_keeps_the_outbox,
    the_sync_state_stays_small,
}
