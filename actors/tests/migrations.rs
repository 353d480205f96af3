//! Schema migrations through the engine, on every backend: a store written
//! at an older version is migrated when it opens (and never handed out
//! unmigrated), older clients are upgraded on ingest, clients that do not fit
//! get typed errors, and Verdant's truant client loses nothing.
//!
//! The app is the notes schema of `engine/tests/support/notes_schema.rs`:
//! v1 has `title`, v2 renames it `name` and adds `status`, v3 marks
//! `history` and the content's heading.

use seqsync_testkit::harness as common;

use seqsync_testkit::notes_schema as notes;

use std::collections::HashMap;
use std::sync::Arc;

use seqsync_actors::{Engine, PushOptions};
use seqsync_adapters::MemoryStorage;
use seqsync_engine::{
    BackendKind, Change, DocId, Durability, EngineConfig, Epoch, Migrations, OpenError, ReadError,
    Seq, Storage, WriteError, MIGRATION_ORIGIN,
};
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact};

const C: &str = "notes";

/// A store that can be closed and opened again by engines with different
/// migrations: a directory for disk backends, one shared instance for memory.
struct Store {
    kind: BackendKind,
    dir: tempfile::TempDir,
    memory: Option<Arc<dyn Storage>>,
}

impl Store {
    fn new(kind: BackendKind) -> Self {
        let memory = (kind == BackendKind::Memory)
            .then(|| Arc::new(MemoryStorage::new(Durability::Immediate)) as Arc<dyn Storage>);
        Self {
            kind,
            dir: tempfile::tempdir().unwrap(),
            memory,
        }
    }

    fn config(&self) -> EngineConfig {
        common::config(self.kind, self.dir.path())
    }

    fn try_open(&self, migrations: Migrations, config: EngineConfig) -> Result<Engine, OpenError> {
        let mut builder = Engine::builder(config)
            .storage_opener(seqsync_adapters::open_storage)
            .migrations(migrations);
        if let Some(memory) = &self.memory {
            builder = builder.storage(memory.clone());
        }
        builder.open()
    }

    fn open(&self, migrations: Migrations) -> Engine {
        self.try_open(migrations, self.config()).unwrap()
    }
}

/// Shuts an engine down and drops the handle, so its store can be opened
/// again at once.
async fn close(engine: Engine) {
    engine.shutdown().await;
}

fn at(version: u32) -> PushOptions {
    PushOptions {
        origin: None,
        author: None,
        schema_version: Some(version),
    }
}

fn unversioned() -> PushOptions {
    PushOptions::default()
}

/// A user client: random-looking id well above the reserved range.
fn client(n: u64) -> Doc {
    notes::doc_from(&[0, 0], 0x4000_0000 + n * 7919)
}

async fn all_changes(engine: &Engine) -> Vec<Change> {
    let mut out = Vec::new();
    let mut cursor = 0;
    loop {
        let page = engine.changes(C, cursor, 1000, None).await.unwrap();
        out.extend(page.changes);
        cursor = page.cursor;
        if !page.has_more {
            return out;
        }
    }
}

async fn view_of(engine: &Engine, doc: &str) -> notes::NoteView {
    let state = engine.document(C, doc).await.unwrap();
    assert_eq!(state.schema_version, engine.schema_version());
    notes::view(&notes::doc_from(&state.update, 5))
}

/// Writes v1 notes `n0..n{count}` with an engine that has no migrations.
async fn write_v1(store: &Store, count: u64) -> Engine {
    let engine = store.open(Migrations::new());
    assert_eq!(engine.schema_version(), 1);
    for i in 0..count {
        let doc = client(i);
        let update = notes::v1_edit(&doc, Some(&format!("title {i}")), Some("t"), "body");
        engine
            .push(C, &format!("n{i}"), update, unversioned())
            .await
            .unwrap();
    }
    engine
}

mod cases {
    use super::*;

    /// A backup written by version 1 and opened by a release with steps
    /// 1 → 2 → 3: every document is migrated before anything is served, the
    /// migration is logged as ordinary changes at version 3, and opening
    /// again migrates nothing.
    pub async fn a_v1_store_opened_with_steps_to_v3_is_migrated(kind: BackendKind) {
        let store = Store::new(kind);
        let old = write_v1(&store, 5).await;
        old.delete(C, "n4").await.unwrap();
        let head_v1 = old.changes(C, 0, 0, None).await.unwrap().head;
        close(old).await;

        let engine = store.open(notes::migrations());
        assert_eq!(engine.schema_version(), 3);
        let page = engine.changes(C, 0, 0, None).await.unwrap();
        assert_eq!(page.schema_version, 3);
        for i in 0..4 {
            let view = view_of(&engine, &format!("n{i}")).await;
            assert_eq!(view.title, None);
            assert_eq!(view.name, Some(format!("title {i}")));
            assert_eq!(view.status.as_deref(), Some("draft"));
            assert_eq!(view.tags, vec!["t".to_owned()]);
            assert_eq!(view.history, vec!["v3".to_owned()]);
            assert_eq!(view.content, "# body");
        }
        let changes = all_changes(&engine).await;
        let (old_changes, migration): (Vec<&Change>, Vec<&Change>) =
            changes.iter().partition(|c| c.seq <= head_v1);
        assert!(old_changes.iter().all(|c| c.schema_version == 1));
        assert_eq!(migration.len(), 8, "two steps on each of 4 live documents");
        for change in &migration {
            assert_eq!(change.schema_version, 3);
            assert_eq!(change.origin.as_ref().unwrap().as_str(), MIGRATION_ORIGIN);
            assert_ne!(
                change.doc.as_str(),
                "n4",
                "a tombstoned document is not migrated"
            );
        }
        let head = page.head;
        close(engine).await;

        let again = store.open(notes::migrations());
        assert_eq!(again.changes(C, 0, 0, None).await.unwrap().head, head);
        // New documents are created at the current version.
        let doc = client(9);
        again
            .push(
                C,
                "new",
                notes::v1_edit(&doc, None, None, "x"),
                unversioned(),
            )
            .await
            .unwrap();
        let last = all_changes(&again).await.pop().unwrap();
        assert_eq!(last.schema_version, 3);
        close(again).await;
    }

    /// Registrations and stores that do not fit refuse to open, naming the
    /// versions, and leave the store as it was.
    pub async fn steps_that_do_not_fit_the_store_refuse_to_open(kind: BackendKind) {
        let store = Store::new(kind);
        let old = write_v1(&store, 2).await;
        close(old).await;
        let v3 = store.open(notes::migrations());
        let head = v3.changes(C, 0, 0, None).await.unwrap().head;
        close(v3).await;

        let err = store
            .try_open(notes::migrations_to_v2(), store.config())
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                OpenError::StoreNewerThanSchema {
                    stored: 3,
                    latest: 2,
                    ..
                }
            ),
            "{err}"
        );
        let err = store
            .try_open(Migrations::new(), store.config())
            .err()
            .unwrap();
        assert!(matches!(
            err,
            OpenError::StoreNewerThanSchema {
                stored: 3,
                latest: 1,
                ..
            }
        ));
        let noop = |_: &DocId, _: &mut yrs::TransactionMut<'_>| Ok(());
        let gap = Migrations::new().step(1, noop).step(3, noop);
        let err = store.try_open(gap, store.config()).err().unwrap();
        assert!(matches!(
            err,
            OpenError::MigrationGap {
                reached: 2,
                next_step_from: 3
            }
        ));
        let engine = store.open(notes::migrations());
        assert_eq!(engine.changes(C, 0, 0, None).await.unwrap().head, head);
        close(engine).await;

        // A step that refuses a document stops the migration with the
        // document named; the store stays at its version.
        let store = Store::new(kind);
        close(write_v1(&store, 2).await).await;
        let refusing = Migrations::new().step(1, |doc: &DocId, _: &mut yrs::TransactionMut<'_>| {
            if doc.as_str() == "n1" {
                Err(seqsync_engine::StepError::new("n1 has no note"))
            } else {
                Ok(())
            }
        });
        let err = store.try_open(refusing, store.config()).err().unwrap();
        assert!(err.to_string().contains("n1"), "{err}");
        assert!(matches!(err, OpenError::Migration { .. }));
        let engine = store.open(Migrations::new());
        assert_eq!(engine.schema_version(), 1);
        close(engine).await;
    }

    /// Rolling upgrade: a v1 client keeps working against a v2 server. Its
    /// update is logged at v1 and the step's output at v2 in the same
    /// commit; what readers get is v2.
    pub async fn older_clients_are_upgraded_on_ingest(kind: BackendKind) {
        let store = Store::new(kind);
        let engine = store.open(notes::migrations_to_v2());
        let old_client = client(1);
        let update = notes::v1_edit(&old_client, Some("from v1"), Some("a"), "hi");
        let outcome = engine.push(C, "d", update, at(1)).await.unwrap();
        let changes = all_changes(&engine).await;
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(outcome.seq, Some(1));
        assert_eq!(outcome.head, 2, "the step's change is acked with the push");
        assert_eq!(changes[0].schema_version, 1);
        assert_eq!(changes[1].schema_version, 2);
        assert_eq!(
            changes[1].origin.as_ref().unwrap().as_str(),
            MIGRATION_ORIGIN
        );
        let view = view_of(&engine, "d").await;
        assert_eq!(view.name.as_deref(), Some("from v1"));
        assert_eq!(view.title, None);
        assert_eq!(view.status.as_deref(), Some("draft"));

        // An old client's no-op or already-migrated-shape push logs no step.
        let tag = notes::v1_edit(&old_client, None, Some("b"), "");
        engine.push(C, "d", tag, at(1)).await.unwrap();
        assert_eq!(all_changes(&engine).await.len(), 3);

        // A current client and an unversioned one are not upgraded.
        let new_client = client(2);
        notes::apply(&new_client, &engine.document(C, "d").await.unwrap().update);
        let edit = notes::v1_edit(&new_client, None, Some("c"), "");
        engine.push(C, "d", edit, at(2)).await.unwrap();
        assert_eq!(all_changes(&engine).await.len(), 4);

        assert!(matches!(
            engine.push(C, "d", vec![0, 0], at(3)).await,
            Err(WriteError::SchemaTooNew {
                client: 3,
                collection: 2
            })
        ));
        assert!(matches!(
            engine.check_client_schema(0),
            Err(WriteError::SchemaTooOld {
                client: 0,
                collection: 2,
                min_supported: 1
            })
        ));
        close(engine).await;

        let mut config = store.config();
        config.schema.min_supported_version = 2;
        let strict = store.try_open(notes::migrations_to_v2(), config).unwrap();
        let err = strict
            .push(
                C,
                "d",
                notes::v1_edit(&old_client, None, Some("z"), ""),
                at(1),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                WriteError::SchemaTooOld {
                    client: 1,
                    collection: 2,
                    min_supported: 2
                }
            ),
            "{err}"
        );
        assert_eq!(
            all_changes(&strict).await.len(),
            4,
            "nothing of a refused push is stored"
        );
        close(strict).await;
    }

    /// Blocks under the reserved ids are a migration's; a push that writes
    /// there without declaring the current version is refused, one that
    /// declares it (a client that ran the steps itself) is taken.
    pub async fn reserved_client_ids_are_refused_unless_declared_current(kind: BackendKind) {
        let store = Store::new(kind);
        let engine = store.open(notes::migrations_to_v2());
        let low = notes::doc_from(&[0, 0], 42);
        let update = notes::v1_edit(&low, None, Some("t"), "");
        for options in [unversioned(), at(1)] {
            let err = engine
                .push(C, "d", update.clone(), options)
                .await
                .unwrap_err();
            assert!(
                matches!(err, WriteError::ReservedClientId { client: 42, .. }),
                "{err}"
            );
        }
        assert_eq!(engine.changes(C, 0, 0, None).await.unwrap().head, 0);
        let outcome = engine.push(C, "d", update, at(2)).await.unwrap();
        assert_eq!(outcome.seq, Some(1));
        close(engine).await;
    }

    /// A client at an older version that resets receives data migrated to
    /// the current version, never data it would have to drop.
    pub async fn recover_collection_hands_out_migrated_data(kind: BackendKind) {
        let store = Store::new(kind);
        close(write_v1(&store, 3).await).await;
        let engine = store.open(notes::migrations_to_v2());
        let recovery = engine.recover_collection(C, HashMap::new()).await.unwrap();
        assert_eq!(recovery.schema_version, 2);
        assert_eq!(recovery.documents.len(), 3);
        for (doc, update) in &recovery.documents {
            let view = notes::view(&notes::doc_from(update, 5));
            assert_eq!(view.title, None, "{doc}");
            assert!(view.name.is_some(), "{doc}");
        }
        close(engine).await;
    }

    /// Verdant's scenario (a client of an older version syncing after the
    /// server was reset, as Verdant's issue tells it), in two cases: the
    /// truant client comes back to the same server upgraded in place, or to
    /// one restored from a v1 backup (new epoch, so it is told to reset).
    pub async fn verdant_truant_client_loses_nothing(kind: BackendKind, restored: bool) {
        let mut config = EngineConfig::default();
        config.compaction.peer_timeout_secs = 1;
        let store = Store::new(kind);
        let config = EngineConfig {
            storage: store.config().storage,
            ..config
        };
        let v1 = store.try_open(Migrations::new(), config.clone()).unwrap();

        // Clients at v1 write; the truant syncs, then goes away with edits
        // it never pushes.
        let mut alice = Replica::new(1, 1);
        let mut truant = Replica::new(2, 1);
        alice.edit("shared", Some("alice's title"), Some("alice-1"), "A1 ");
        alice.push_all(&v1, &["shared"]).await;
        truant.pull(&v1).await;
        truant.edit("mine", Some("truant's first title"), Some("t-1"), "T1 ");
        truant.push_all(&v1, &["mine"]).await;
        truant.pull(&v1).await;
        v1.ack(C, "truant", truant.cursor).await.unwrap();
        let backup = v1.recover_collection(C, HashMap::new()).await.unwrap();

        truant.edit("mine", Some("truant's offline title"), Some("t-2"), "T2 ");
        truant.edit("shared", None, Some("t-shared"), "T3 ");
        // The others go on at v1 while the truant is away past its timeout.
        alice.edit("shared", None, Some("alice-2"), "A2 ");
        alice.push_all(&v1, &["shared"]).await;
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let peers = v1.peers(C).await.unwrap();
        let truant_peer = peers.iter().find(|p| p.peer.as_str() == "truant").unwrap();
        assert!(!truant_peer.active, "the truant is past its peer timeout");
        v1.compact(C).await.unwrap();
        close(v1).await;

        let store = if restored {
            // The server is rebuilt from the v1 backup into a fresh store.
            let fresh = Store::new(kind);
            let engine = fresh.open(Migrations::new());
            for (doc, state) in &backup.documents {
                engine
                    .push(C, doc.as_str(), state.clone(), unversioned())
                    .await
                    .unwrap();
            }
            close(engine).await;
            fresh
        } else {
            store
        };
        // The server is upgraded to v2.
        let v2 = store
            .try_open(
                notes::migrations_to_v2(),
                EngineConfig {
                    storage: store.config().storage,
                    ..config.clone()
                },
            )
            .unwrap();
        assert_eq!(v2.schema_version(), 2);

        // The truant upgrades and reconnects with its old cursor and epoch.
        truant.version = 2;
        let outcome = truant.pull(&v2).await;
        assert_eq!(outcome, if restored { Pull::Reset } else { Pull::Caught });
        // Its own unsynced v1 edits are in its documents; it re-runs the
        // steps from v1 with the pure crate's API and pushes the result.
        let migrations = notes::migrations_to_v2();
        truant.migrate_from(&migrations, 1);
        truant.push_all(&v2, &["mine", "shared"]).await;
        // Alice, upgraded too, catches up and migrates what she holds.
        alice.version = 2;
        alice.pull(&v2).await;
        alice.migrate_from(&migrations, 1);

        let mine = view_of(&v2, "mine").await;
        assert_eq!(mine.title, None);
        assert_eq!(mine.name.as_deref(), Some("truant's offline title"));
        assert_eq!(mine.status.as_deref(), Some("draft"));
        assert_eq!(mine.tags, vec!["t-1", "t-2"]);
        assert_eq!(mine.content, "T1 T2 ");
        let shared = view_of(&v2, "shared").await;
        assert_eq!(shared.title, None);
        assert_eq!(shared.name.as_deref(), Some("alice's title"));
        let mut tags = shared.tags.clone();
        tags.sort();
        let expected: &[&str] = if restored {
            // alice-2 was pushed after the backup and lost with the old
            // server; alice still has it and pushes it back.
            &["alice-1", "t-shared"]
        } else {
            &["alice-1", "alice-2", "t-shared"]
        };
        if restored {
            alice.push_all(&v2, &["shared"]).await;
            let shared = view_of(&v2, "shared").await;
            let mut tags = shared.tags.clone();
            tags.sort();
            assert_eq!(tags, vec!["alice-1", "alice-2", "t-shared"]);
            assert_eq!(count(&shared.content, "A2 "), 1);
        } else {
            assert_eq!(tags, expected);
        }
        let shared = view_of(&v2, "shared").await;
        for piece in ["A1 ", "A2 ", "T3 "] {
            assert_eq!(
                count(&shared.content, piece),
                1,
                "{piece} in {:?}",
                shared.content
            );
        }
        // Both replicas converge with the server, and nobody was handed
        // anything newer than it understands.
        alice.pull(&v2).await;
        truant.pull(&v2).await;
        for doc in ["mine", "shared"] {
            let server = view_of(&v2, doc).await;
            assert_eq!(notes::view(&truant.docs[doc]), server, "{doc}");
            assert_eq!(notes::view(&alice.docs[doc]), server, "{doc}");
        }
        assert!(truant.received_newer == 0 && alice.received_newer == 0);
        close(v2).await;
    }

    fn count(haystack: &str, needle: &str) -> usize {
        haystack.matches(needle).count()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Pull {
    Caught,
    Reset,
}

/// A client holding documents of the collection, with the cursor and epoch
/// of its last sync and the schema version it runs.
struct Replica {
    peer: String,
    client_id: u64,
    version: u32,
    docs: HashMap<String, Doc>,
    cursor: Seq,
    epoch: Option<Epoch>,
    received_newer: u64,
}

impl Replica {
    fn new(n: u64, version: u32) -> Self {
        Self {
            peer: if n == 2 {
                "truant".into()
            } else {
                format!("peer{n}")
            },
            client_id: 0x4000_0000 + n * 104_729,
            version,
            docs: HashMap::new(),
            cursor: 0,
            epoch: None,
            received_newer: 0,
        }
    }

    fn doc(&self, doc: &str) -> &Doc {
        self.docs.get(doc).unwrap()
    }

    /// A local edit in the v1 shape (kept until pushed).
    fn edit(&mut self, doc: &str, title: Option<&str>, tag: Option<&str>, typed: &str) {
        let _ = notes::v1_edit(self.ensure(doc), title, tag, typed);
    }

    /// What an upgraded client does with what it holds: re-run the steps
    /// from `from` on every document (a no-op on what is already migrated).
    fn migrate_from(&self, migrations: &Migrations, from: u32) {
        for (doc, replica) in &self.docs {
            let outputs = migrations
                .migrate(
                    &DocId::new(doc.clone()).unwrap(),
                    replica,
                    from,
                    self.version,
                )
                .unwrap();
            for output in outputs {
                notes::apply(replica, &output.update);
            }
        }
    }

    /// Pushes what the server lacks of each document, declaring the
    /// client's version.
    async fn push_all(&self, engine: &Engine, docs: &[&str]) {
        for doc in docs {
            let server_sv = match engine.document_state_vector(C, doc).await {
                Ok(found) => StateVector::decode_v1(&found.state_vector).unwrap(),
                Err(ReadError::DocumentNotFound { .. }) => StateVector::default(),
                Err(err) => panic!("{err}"),
            };
            let diff = self
                .doc(doc)
                .transact()
                .encode_state_as_update_v1(&server_sv);
            engine
                .push(
                    C,
                    doc,
                    diff,
                    PushOptions {
                        origin: Some(self.peer.clone()),
                        author: None,
                        schema_version: Some(self.version),
                    },
                )
                .await
                .unwrap();
        }
    }

    fn note_received(&mut self, schema_version: u32) {
        if schema_version > self.version {
            self.received_newer += 1;
        }
    }

    /// Streams from the cursor; on `Reset`, recovers the collection with
    /// its state vectors (and keeps everything it holds).
    async fn pull(&mut self, engine: &Engine) -> Pull {
        loop {
            match engine.changes(C, self.cursor, 1000, self.epoch).await {
                Ok(page) => {
                    for change in &page.changes {
                        self.note_received(change.schema_version);
                        if change.kind != seqsync_engine::ChangeKind::Delete {
                            let doc = self.ensure(change.doc.as_str());
                            notes::apply(doc, &change.payload);
                        }
                    }
                    self.cursor = page.cursor;
                    self.epoch = page.epoch;
                    if !page.has_more {
                        return Pull::Caught;
                    }
                }
                Err(ReadError::Reset { .. }) => {
                    let svs = self
                        .docs
                        .iter()
                        .map(|(d, doc)| {
                            (
                                d.clone(),
                                yrs::updates::encoder::Encode::encode_v1(
                                    &doc.transact().state_vector(),
                                ),
                            )
                        })
                        .collect();
                    let recovery = engine.recover_collection(C, svs).await.unwrap();
                    self.note_received(recovery.schema_version);
                    for (doc, update) in &recovery.documents {
                        let doc = self.ensure(doc.as_str());
                        notes::apply(doc, update);
                    }
                    self.cursor = recovery.cursor;
                    self.epoch = recovery.epoch;
                    return Pull::Reset;
                }
                Err(err) => panic!("{err}"),
            }
        }
    }

    fn ensure(&mut self, doc: &str) -> &Doc {
        let client_id = self.client_id;
        self.docs
            .entry(doc.to_owned())
            .or_insert_with(|| notes::doc_from(&[0, 0], client_id))
    }
}

macro_rules! suite {
    ($($backend:ident => $kind:expr),* $(,)?) => {$(
        mod $backend {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_v1_store_opened_with_steps_to_v3_is_migrated() { cases::a_v1_store_opened_with_steps_to_v3_is_migrated($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn steps_that_do_not_fit_the_store_refuse_to_open() { cases::steps_that_do_not_fit_the_store_refuse_to_open($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn older_clients_are_upgraded_on_ingest() { cases::older_clients_are_upgraded_on_ingest($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn reserved_client_ids_are_refused_unless_declared_current() { cases::reserved_client_ids_are_refused_unless_declared_current($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn recover_collection_hands_out_migrated_data() { cases::recover_collection_hands_out_migrated_data($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn verdant_truant_client_upgraded_in_place() { cases::verdant_truant_client_loses_nothing($kind, false).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn verdant_truant_client_after_restore_from_v1_backup() { cases::verdant_truant_client_loses_nothing($kind, true).await }
        }
    )*};
}

suite! {
    sqlite => BackendKind::Sqlite,
    redb => BackendKind::Redb,
    memory => BackendKind::Memory,
}
