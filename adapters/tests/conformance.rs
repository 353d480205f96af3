//! The storage conformance suite: one set of scenarios, run against every
//! backend (SQLite, redb, memory, PostgreSQL on a throwaway cluster) by the
//! `conformance!` macro at the bottom.
//!
//! The engine's guarantees (gap-free seqs, exclusive cursors, atomic batches,
//! safe compaction) rest on these properties of the backend, so each test
//! states one of them and fails if a backend breaks it. A new backend gets the
//! whole suite by adding one line to the macro call.
//!
//! Size: one suite, run on every backend by the macro at the end; each
//! case is independent, so the file is long but flat.

use seqsync_testkit::postgres as pg;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use seqsync_adapters::{
    open_storage, Fault, FaultMode, FaultTarget, FaultyStorage, MemoryStorage, RedbStorage,
    SqliteStorage, REDB_FILE_NAME, SQLITE_FILE_NAME,
};
use seqsync_engine::{
    load_document, BackendKind, Change, ChangeKind, CollectionName, CollectionWrite, Compaction,
    DocId, DocState, Durability, Epoch, PeerId, PeerRecord, Pin, Seq, Storage, StorageConfig,
    StorageError, WriteBase, WriteBatch,
};

/// A backend under test with its own temporary directory (and, for
/// PostgreSQL, its own database).
struct Fixture {
    kind: BackendKind,
    dir: tempfile::TempDir,
    url: String,
}

impl Fixture {
    /// `None` when the backend cannot run here (PostgreSQL not installed;
    /// the cluster helper says so loudly).
    fn new(kind: BackendKind) -> Option<Self> {
        let url = match kind {
            BackendKind::Postgres => pg::PgCluster::shared()?.fresh_database(),
            _ => String::new(),
        };
        Some(Self {
            kind,
            dir: tempfile::tempdir().unwrap(),
            url,
        })
    }

    fn config(&self, durability: Durability) -> StorageConfig {
        StorageConfig {
            backend: self.kind,
            path: self.dir.path().join("data"),
            durability,
            url: self.url.clone(),
            ..StorageConfig::default()
        }
    }

    fn open(&self) -> Arc<dyn Storage> {
        open_storage(&self.config(Durability::Immediate)).unwrap()
    }

    fn persistent(&self) -> bool {
        self.kind != BackendKind::Memory
    }

    /// Backends on files in a directory, with its lock.
    fn on_files(&self) -> bool {
        matches!(self.kind, BackendKind::Sqlite | BackendKind::Redb)
    }
}

fn coll(name: &str) -> CollectionName {
    CollectionName::new(name).unwrap()
}

fn doc(id: &str) -> DocId {
    DocId::new(id).unwrap()
}

fn update(seq: Seq, id: &str, payload: &[u8]) -> Change {
    Change {
        seq,
        doc: doc(id),
        kind: ChangeKind::Update,
        payload: payload.to_vec(),
        schema_version: 1,
        origin: Some(PeerId::new(format!("peer-{id}")).unwrap()),
        author: None,
        committed_ms: 0,
        log_checksum: 0,
    }
}

fn tombstone(seq: Seq, id: &str) -> Change {
    Change {
        seq,
        doc: doc(id),
        kind: ChangeKind::Delete,
        payload: Vec::new(),
        schema_version: 1,
        origin: None,
        author: None,
        committed_ms: 0,
        log_checksum: 0,
    }
}

fn write(name: &str, base: WriteBase, append: Vec<Change>) -> CollectionWrite {
    CollectionWrite {
        collection: coll(name),
        base,
        append,
        compact: Vec::new(),
        peers: Vec::new(),
        raise_schema_version: None,
        append_mode: Default::default(),
    }
}

fn create(epoch: Epoch) -> WriteBase {
    WriteBase::Create {
        epoch,
        schema_version: 1,
    }
}

fn at(epoch: Epoch, head: Seq) -> WriteBase {
    WriteBase::Existing { epoch, head }
}

fn commit(storage: &dyn Storage, writes: Vec<CollectionWrite>) -> Result<(), StorageError> {
    storage.commit(&WriteBatch { writes })
}

fn all_changes(storage: &dyn Storage, name: &str) -> Vec<Change> {
    storage
        .read_changes(&coll(name), 0, usize::MAX)
        .unwrap()
        .map(|page| page.changes)
        .unwrap_or_default()
}

fn seqs(changes: &[Change]) -> Vec<Seq> {
    changes.iter().map(|c| c.seq).collect()
}

/// Creates collection `name` holding `n` updates alternating over docs a/b.
fn seeded(storage: &dyn Storage, name: &str, n: u64) -> Epoch {
    let epoch = Epoch::random().unwrap();
    let changes = (1..=n)
        .map(|seq| update(seq, if seq % 2 == 1 { "a" } else { "b" }, &[seq as u8; 3]))
        .collect();
    commit(storage, vec![write(name, create(epoch), changes)]).unwrap();
    epoch
}

mod cases {
    use super::*;

    /// A large document is loaded while it is still being read (a second
    /// thread applies chunks); the result must be the one a plain collect and
    /// replay gives, an early stop must stop the read, and a damaged change
    /// in the middle must surface as `Corrupt`, not as a half-loaded document.
    pub fn large_document_loads_streamed_like_collected(fx: &Fixture) {
        use yrs::{GetString, ReadTxn, Text, Transact};
        let storage = fx.open();
        let source = yrs::Doc::with_client_id(9);
        let text = source.get_or_insert_text("content");
        let mut changes = Vec::new();
        for seq in 1..=2_000u64 {
            let payload = {
                let mut txn = source.transact_mut();
                text.insert(&mut txn, 0, "y");
                txn.encode_update_v1()
            };
            // Every third change belongs to another document: the visit must
            // hand over this document's changes only.
            let id = if seq % 3 == 0 { "other" } else { "big" };
            let payload = if id == "big" { payload } else { vec![1, 0] };
            changes.push(Change {
                payload,
                ..update(seq, id, b"")
            });
        }
        // Updates that went to "other" are missing from "big": resend them
        // all as one update at the end so the text is complete.
        let full = source
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default());
        changes.push(Change {
            payload: full,
            ..update(2_001, "big", b"")
        });
        commit(
            &*storage,
            vec![write("c", create(Epoch::random().unwrap()), changes)],
        )
        .unwrap();

        let loaded = load_document(&*storage, &coll("c"), &doc("big"))
            .unwrap()
            .expect("the document exists");
        let collected =
            DocState::load(&storage.document_changes(&coll("c"), &doc("big")).unwrap()).unwrap();
        assert_eq!(loaded.state.encode_state(), collected.encode_state());
        assert_eq!(loaded.last_seq, 2_001);
        assert_eq!(loaded.first_delta_seq, Some(1));
        let replica = yrs::Doc::new();
        replica
            .transact_mut()
            .apply_update(
                yrs::updates::decoder::Decode::decode_v1(&loaded.state.encode_state()).unwrap(),
            )
            .unwrap();
        let text = replica.get_or_insert_text("content");
        assert_eq!(text.get_string(&replica.transact()), "y".repeat(2_000));

        let mut seen = 0;
        storage
            .visit_document_changes(&coll("c"), &doc("big"), &mut |_| {
                seen += 1;
                if seen == 10 {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            })
            .unwrap();
        assert_eq!(seen, 10, "Break stops the visit");
        assert!(load_document(&*storage, &coll("c"), &doc("nothing"))
            .unwrap()
            .is_none());

        // A change that does not decode, after the first chunk (pipelined
        // path) and within it (collected path).
        for (name, bad_at) in [("late", 1_500u64), ("early", 5)] {
            let changes = (1..=2_000u64)
                .map(|seq| Change {
                    payload: if seq == bad_at {
                        vec![0xff; 4]
                    } else {
                        vec![0, 0]
                    },
                    ..update(seq, "d", b"")
                })
                .collect();
            commit(
                &*storage,
                vec![write(name, create(Epoch::random().unwrap()), changes)],
            )
            .unwrap();
            match load_document(&*storage, &coll(name), &doc("d")) {
                Err(StorageError::Corrupt { detail, .. }) => {
                    assert!(detail.contains(&format!("{bad_at}")), "{detail}")
                }
                other => panic!(
                    "{name}: expected Corrupt, got {:?}",
                    other.map(|d| d.is_some())
                ),
            }
        }
    }

    /// Who pushed each change and when are stored with it on every backend,
    /// read back by every read (pages, a document's pages, a document's
    /// whole history) and after a reopen; a snapshot keeps the time of the
    /// change whose seq it takes (the version it holds is as of then), and
    /// has no author. The history route and the webhooks show these.
    pub fn authors_and_commit_times_are_kept(fx: &Fixture) {
        let epoch = Epoch([4; 16]);
        let authored = |seq: Seq, id: &str, author: Option<&str>, at_ms: u64| Change {
            author: author.map(str::to_owned),
            committed_ms: at_ms,
            ..update(seq, id, &[seq as u8])
        };
        let changes = vec![
            authored(1, "a", Some("user-1"), 1_700_000_000_001),
            authored(2, "a", Some("ünïcode user ✓"), 1_700_000_000_002),
            authored(3, "b", None, 1_700_000_000_003),
            authored(4, "a", Some("user-1"), 1_700_000_000_004),
        ];
        let storage = fx.open();
        {
            commit(&*storage, vec![write("w", create(epoch), changes.clone())]).unwrap();
            let who_when = |cs: &[Change]| {
                cs.iter()
                    .map(|c| (c.seq, c.author.clone(), c.committed_ms))
                    .collect::<Vec<_>>()
            };
            let expected = who_when(&changes);
            assert_eq!(who_when(&all_changes(&*storage, "w")), expected);
            let a_page = storage
                .read_document_changes(&coll("w"), &doc("a"), 0, 10)
                .unwrap()
                .unwrap();
            assert_eq!(
                who_when(&a_page.changes),
                vec![
                    expected[0].clone(),
                    expected[1].clone(),
                    expected[3].clone()
                ]
            );
            assert_eq!(
                who_when(&storage.document_changes(&coll("w"), &doc("a")).unwrap()),
                who_when(&a_page.changes)
            );
            // Compact "a" through 2: the snapshot at seq 2 keeps seq 2's time.
            let mut w = write("w", at(epoch, 4), vec![]);
            w.compact.push(Compaction {
                doc: doc("a"),
                after: 0,
                through: 2,
                snapshot: Some(b"merged".to_vec()),
                schema_version: 1,
            });
            commit(&*storage, vec![w]).unwrap();
        }
        // Reopened where the backend keeps files or a database.
        let storage = if fx.persistent() {
            drop(storage);
            fx.open()
        } else {
            storage
        };
        let after = all_changes(&*storage, "w");
        let snapshot = after.iter().find(|c| c.seq == 2).unwrap();
        assert_eq!(snapshot.kind, ChangeKind::Snapshot);
        assert_eq!(
            (snapshot.author.as_deref(), snapshot.committed_ms),
            (None, 1_700_000_000_002)
        );
        let later = after.iter().find(|c| c.seq == 4).unwrap();
        assert_eq!(
            (later.author.as_deref(), later.committed_ms),
            (Some("user-1"), 1_700_000_000_004),
            "kept (across a reopen)"
        );
    }

    /// Named versions are stored, listed per document and collection,
    /// replaced by name, removed, and kept across a reopen; and a
    /// compaction whose range strictly holds a pinned seq of its document
    /// (planned before the pin) is not applied, while the rest of its write
    /// is: the pinned version must stay readable.
    pub fn pins_are_kept_and_guard_compaction(fx: &Fixture) {
        let storage = fx.open();
        let epoch = Epoch([7; 16]);
        let changes: Vec<Change> = (1..=6)
            .map(|seq| update(seq, if seq % 2 == 1 { "a" } else { "b" }, &[seq as u8]))
            .collect();
        commit(&*storage, vec![write("p", create(epoch), changes)]).unwrap();
        let pin = |doc_id: &str, name: &str, seq: Seq| Pin {
            doc: doc(doc_id),
            name: name.to_owned(),
            seq,
            created_ms: 1_796_633_000_000 + seq,
            author: (seq % 2 == 1).then(|| "user-ann".to_owned()),
        };
        storage.put_pin(&coll("p"), &pin("a", "draft", 3)).unwrap();
        storage.put_pin(&coll("p"), &pin("a", "first", 1)).unwrap();
        storage.put_pin(&coll("p"), &pin("b", "draft", 4)).unwrap();
        // Pinning a name again moves it.
        storage.put_pin(&coll("p"), &pin("b", "draft", 6)).unwrap();
        let missing = storage.put_pin(&coll("nope"), &pin("a", "x", 1));
        assert!(
            matches!(missing, Err(StorageError::InvalidWrite(_))),
            "{missing:?}"
        );
        let names = |pins: Vec<Pin>| {
            pins.into_iter()
                .map(|p| (p.doc.as_str().to_owned(), p.name, p.seq, p.author))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(storage.pins(&coll("p"), Some(&doc("a"))).unwrap()),
            vec![
                (
                    "a".to_owned(),
                    "first".to_owned(),
                    1,
                    Some("user-ann".to_owned())
                ),
                (
                    "a".to_owned(),
                    "draft".to_owned(),
                    3,
                    Some("user-ann".to_owned())
                ),
            ]
        );
        assert_eq!(storage.pins(&coll("p"), None).unwrap().len(), 3);
        assert!(storage.pins(&coll("nope"), None).unwrap().is_empty());
        // A compaction of "a" through 5 across its pin at 3 is left alone;
        // one of "b" from its pin at 6... through 6 is applied (not strictly
        // inside); both in one write.
        let mut w = write("p", at(epoch, 6), vec![]);
        w.compact.push(Compaction {
            doc: doc("a"),
            after: 0,
            through: 5,
            snapshot: Some(b"merged-a".to_vec()),
            schema_version: 1,
        });
        w.compact.push(Compaction {
            doc: doc("b"),
            after: 0,
            through: 6,
            snapshot: Some(b"merged-b".to_vec()),
            schema_version: 1,
        });
        commit(&*storage, vec![w]).unwrap();
        let after = all_changes(&*storage, "p");
        assert_eq!(
            after.iter().map(|c| (c.seq, c.kind)).collect::<Vec<_>>(),
            vec![
                (1, ChangeKind::Update),
                (3, ChangeKind::Update),
                (5, ChangeKind::Update),
                (6, ChangeKind::Snapshot)
            ],
            "a's history is whole; b's is one snapshot"
        );
        // Around the pins: (0, 3] and (3, 5] are applied.
        let mut w = write("p", at(epoch, 6), vec![]);
        for (after_seq, through) in [(1, 3), (3, 5)] {
            w.compact.push(Compaction {
                doc: doc("a"),
                after: after_seq,
                through,
                snapshot: Some(format!("a@{through}").into_bytes()),
                schema_version: 1,
            });
        }
        commit(&*storage, vec![w]).unwrap();
        let after = all_changes(&*storage, "p");
        assert_eq!(
            after.iter().map(|c| (c.seq, c.kind)).collect::<Vec<_>>(),
            vec![
                (1, ChangeKind::Update),
                (3, ChangeKind::Snapshot),
                (5, ChangeKind::Snapshot),
                (6, ChangeKind::Snapshot)
            ]
        );
        assert!(storage.delete_pin(&coll("p"), &doc("a"), "first").unwrap());
        assert!(!storage.delete_pin(&coll("p"), &doc("a"), "first").unwrap());
        let storage = if fx.persistent() {
            drop(storage);
            fx.open()
        } else {
            storage
        };
        assert_eq!(
            names(storage.pins(&coll("p"), None).unwrap()),
            vec![
                (
                    "a".to_owned(),
                    "draft".to_owned(),
                    3,
                    Some("user-ann".to_owned())
                ),
                ("b".to_owned(), "draft".to_owned(), 6, None),
            ]
        );
    }

    /// The changes with their stored log checksums zeroed, to compare with
    /// what was handed to a commit (checksums have their own case).
    fn strip(changes: Vec<Change>) -> Vec<Change> {
        changes
            .into_iter()
            .map(|c| Change {
                log_checksum: 0,
                ..c
            })
            .collect()
    }

    /// Every stored change carries the running log checksum through itself,
    /// the collection's through its head, every backend computes the same
    /// values, and compaction changes none of them: a replica that compares
    /// checksums at a seq must get the same answer before and after the
    /// other side compacted.
    pub fn log_checksums_run_through_every_seq_and_survive_compaction(fx: &Fixture) {
        let storage = fx.open();
        let epoch = Epoch([3; 16]);
        let changes = vec![
            update(1, "a", b"one"),
            update(2, "b", b"two"),
            update(3, "a", b"three"),
            update(4, "a", b"four"),
            update(5, "b", b"five"),
        ];
        commit(&*storage, vec![write("c", create(epoch), changes.clone())]).unwrap();
        let mut running = 0u64;
        let mut expected = std::collections::BTreeMap::new();
        for change in &changes {
            running = running.wrapping_add(seqsync_engine::change_checksum(&epoch, change));
            expected.insert(change.seq, running);
        }
        let stored = all_changes(&*storage, "c");
        for change in &stored {
            assert_eq!(
                Some(&change.log_checksum),
                expected.get(&change.seq),
                "seq {}",
                change.seq
            );
        }
        let meta = storage.collection(&coll("c")).unwrap().unwrap();
        assert_eq!(meta.log_checksum, running);
        // A known value, so every backend (and any other implementation)
        // agrees on the function itself.
        assert_eq!(
            seqsync_engine::change_checksum(&epoch, &changes[0]),
            seqsync_engine::change_checksum(&epoch, &update(1, "a", b"one"))
        );
        // Compact "a" through 4 (replacing 1, 3, 4 by a snapshot at 4): the
        // values at the remaining seqs and at the head stay.
        let mut w = write("c", at(epoch, 5), vec![]);
        w.compact.push(Compaction {
            doc: doc("a"),
            after: 0,
            through: 4,
            snapshot: Some(b"merged".to_vec()),
            schema_version: 1,
        });
        commit(&*storage, vec![w]).unwrap();
        let after = all_changes(&*storage, "c");
        assert_eq!(seqs(&after), vec![2, 4, 5]);
        for change in &after {
            assert_eq!(
                Some(&change.log_checksum),
                expected.get(&change.seq),
                "seq {} after compaction",
                change.seq
            );
        }
        for page_doc in ["a", "b"] {
            for change in storage
                .document_changes(&coll("c"), &doc(page_doc))
                .unwrap()
            {
                assert_eq!(Some(&change.log_checksum), expected.get(&change.seq));
            }
        }
        assert_eq!(
            storage
                .collection(&coll("c"))
                .unwrap()
                .unwrap()
                .log_checksum,
            running
        );
        // Appending continues from the stored sum.
        let next = update(6, "b", b"six");
        commit(
            &*storage,
            vec![write("c", at(epoch, 5), vec![next.clone()])],
        )
        .unwrap();
        let running = running.wrapping_add(seqsync_engine::change_checksum(&epoch, &next));
        assert_eq!(
            storage
                .collection(&coll("c"))
                .unwrap()
                .unwrap()
                .log_checksum,
            running
        );
        if fx.persistent() {
            drop(storage);
            let reopened = fx.open();
            assert_eq!(
                reopened
                    .collection(&coll("c"))
                    .unwrap()
                    .unwrap()
                    .log_checksum,
                running
            );
        }
    }

    /// What is appended must read back exactly, through every read method.
    pub fn append_and_read_round_trip(fx: &Fixture) {
        let storage = fx.open();
        assert!(storage.collection(&coll("c")).unwrap().is_none());
        assert!(storage.read_changes(&coll("c"), 0, 10).unwrap().is_none());
        let epoch = Epoch::random().unwrap();
        let changes = vec![
            update(1, "a", b"one"),
            update(2, "b", b"two"),
            update(3, "a", &[0, 255, 7]),
        ];
        commit(&*storage, vec![write("c", create(epoch), changes.clone())]).unwrap();

        let meta = storage.collection(&coll("c")).unwrap().unwrap();
        assert_eq!((meta.epoch, meta.head, meta.schema_version), (epoch, 3, 1));
        let page = storage.read_changes(&coll("c"), 0, 100).unwrap().unwrap();
        assert_eq!(strip(page.changes), changes);
        assert_eq!(page.meta, meta);
        assert_eq!(
            strip(storage.document_changes(&coll("c"), &doc("a")).unwrap()),
            vec![changes[0].clone(), changes[2].clone()]
        );
        assert!(storage
            .document_changes(&coll("c"), &doc("zz"))
            .unwrap()
            .is_empty());
        let docs = storage.documents(&coll("c")).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            (docs[0].doc.as_str(), docs[0].last_seq, docs[0].deleted),
            ("a", 3, false)
        );
        assert_eq!((docs[1].doc.as_str(), docs[1].last_seq), ("b", 2));
        // A document's size is the payload bytes of its stored changes.
        assert_eq!(
            docs[0].stored_bytes,
            (changes[0].payload.len() + changes[2].payload.len()) as u64
        );
        assert_eq!(docs[1].stored_bytes, changes[1].payload.len() as u64);
        // Pages of the same listing, seeking past `after`.
        assert_eq!(
            storage.documents_page(&coll("c"), None, 1).unwrap(),
            docs[..1]
        );
        assert_eq!(
            storage
                .documents_page(&coll("c"), Some(&doc("a")), 10)
                .unwrap(),
            docs[1..]
        );
        assert!(storage
            .documents_page(&coll("c"), Some(&doc("b")), 10)
            .unwrap()
            .is_empty());
        assert_eq!(
            storage
                .documents_page(&coll("c"), Some(&doc("0")), 10)
                .unwrap(),
            docs
        );
        // Another collection with the same doc ids is independent.
        let other = Epoch::random().unwrap();
        commit(
            &*storage,
            vec![write("c2", create(other), vec![update(1, "a", b"x")])],
        )
        .unwrap();
        assert_eq!(
            storage
                .document_changes(&coll("c"), &doc("a"))
                .unwrap()
                .len(),
            2
        );
        assert_eq!(all_changes(&*storage, "c2").len(), 1);
    }

    /// `after = c` means strictly greater than c (the Scuttlebutt off-by-one):
    /// checked at every cursor, at head, beyond head and at u64::MAX.
    pub fn cursor_is_exclusive(fx: &Fixture) {
        let storage = fx.open();
        seeded(&*storage, "c", 10);
        for cursor in 0..=10u64 {
            let page = storage
                .read_changes(&coll("c"), cursor, 100)
                .unwrap()
                .unwrap();
            assert_eq!(
                seqs(&page.changes),
                ((cursor + 1)..=10).collect::<Vec<_>>(),
                "after {cursor}"
            );
        }
        for cursor in [11, 1_000, u64::MAX - 1, u64::MAX] {
            let page = storage
                .read_changes(&coll("c"), cursor, 100)
                .unwrap()
                .unwrap();
            assert!(page.changes.is_empty(), "after {cursor}");
            assert_eq!(page.meta.head, 10);
        }
    }

    /// A per-document subscription catches up with `read_document_changes`:
    /// at every cursor and page size, walking it must give exactly that
    /// document's changes after the cursor, once each, in seq order, and
    /// nothing of other documents; a missing collection is `None`.
    pub fn document_pages_cover_one_document_after_the_cursor(fx: &Fixture) {
        let storage = fx.open();
        seeded(&*storage, "c", 10); // a: odd seqs, b: even seqs
        assert!(storage
            .read_document_changes(&coll("nope"), &doc("a"), 0, 10)
            .unwrap()
            .is_none());
        for (id, parity) in [("a", 1), ("b", 0)] {
            for cursor in 0..=11u64 {
                for limit in [1usize, 2, 5, 100] {
                    let mut after = cursor;
                    let mut seen = Vec::new();
                    loop {
                        let page = storage
                            .read_document_changes(&coll("c"), &doc(id), after, limit)
                            .unwrap()
                            .unwrap();
                        assert_eq!(page.meta.head, 10);
                        assert!(page.changes.len() <= limit);
                        assert!(page.changes.iter().all(|c| c.doc.as_str() == id));
                        let Some(last) = page.changes.last() else {
                            break;
                        };
                        after = last.seq;
                        seen.extend(seqs(&page.changes));
                    }
                    let expected: Vec<Seq> =
                        ((cursor + 1)..=10).filter(|s| s % 2 == parity).collect();
                    assert_eq!(seen, expected, "doc {id} after {cursor}, limit {limit}");
                }
            }
        }
        assert!(storage
            .read_document_changes(&coll("c"), &doc("a"), 0, 0)
            .unwrap()
            .unwrap()
            .changes
            .is_empty());
        assert!(storage
            .read_document_changes(&coll("c"), &doc("zz"), 0, 10)
            .unwrap()
            .unwrap()
            .changes
            .is_empty());
    }

    /// Pages never exceed the limit and, walked with the last seq as the next
    /// cursor, return every change exactly once.
    pub fn pages_respect_limit_and_cover_everything(fx: &Fixture) {
        let storage = fx.open();
        seeded(&*storage, "c", 10);
        assert!(storage
            .read_changes(&coll("c"), 0, 0)
            .unwrap()
            .unwrap()
            .changes
            .is_empty());
        for limit in [1usize, 3, 10, 11] {
            let mut cursor = 0;
            let mut seen = Vec::new();
            loop {
                let page = storage
                    .read_changes(&coll("c"), cursor, limit)
                    .unwrap()
                    .unwrap();
                assert!(page.changes.len() <= limit);
                let Some(last) = page.changes.last() else {
                    break;
                };
                cursor = last.seq;
                seen.extend(seqs(&page.changes));
            }
            assert_eq!(seen, (1..=10).collect::<Vec<_>>(), "limit {limit}");
        }
    }

    /// The log has no gaps and one writer at a time: a write based on a stale
    /// head, a gap, or a duplicate creation is refused and leaves nothing.
    pub fn seqs_must_continue_the_head_without_gaps(fx: &Fixture) {
        let storage = fx.open();
        let epoch = seeded(&*storage, "c", 3);
        let before = all_changes(&*storage, "c");
        let refused = [
            (
                write("c", at(epoch, 3), vec![update(5, "a", b"gap")]),
                "invalid_write",
            ),
            (
                write("c", at(epoch, 3), vec![update(3, "a", b"dup")]),
                "invalid_write",
            ),
            (
                write("c", at(epoch, 2), vec![update(3, "a", b"stale")]),
                "conflict",
            ),
            (
                write(
                    "c",
                    at(Epoch::random().unwrap(), 3),
                    vec![update(4, "a", b"x")],
                ),
                "conflict",
            ),
            (
                write("c", create(epoch), vec![update(1, "a", b"again")]),
                "conflict",
            ),
            (
                write("nope", at(epoch, 0), vec![update(1, "a", b"x")]),
                "conflict",
            ),
            (
                write(
                    "c",
                    at(epoch, 3),
                    vec![Change {
                        payload: b"x".to_vec(),
                        ..tombstone(4, "a")
                    }],
                ),
                "invalid_write",
            ),
        ];
        for (bad, kind) in refused {
            let err = commit(&*storage, vec![bad.clone()]).unwrap_err();
            assert_eq!(err.kind(), kind, "{bad:?} gave {err}");
        }
        assert_eq!(all_changes(&*storage, "c"), before);
        assert_eq!(storage.collection(&coll("c")).unwrap().unwrap().head, 3);
        assert!(storage.collection(&coll("nope")).unwrap().is_none());
        commit(
            &*storage,
            vec![write(
                "c",
                at(epoch, 3),
                vec![update(4, "a", b"ok"), update(5, "b", b"ok")],
            )],
        )
        .unwrap();
        assert_eq!(seqs(&all_changes(&*storage, "c")), vec![1, 2, 3, 4, 5]);
    }

    /// A batch spanning collections commits all or nothing: a refusal in its
    /// last write (found inside the backend's transaction, after earlier
    /// writes were applied) must roll back the earlier ones; an injected
    /// commit failure must leave nothing either.
    pub fn failed_batch_leaves_nothing(fx: &Fixture) {
        let storage = fx.open();
        let epoch = seeded(&*storage, "c", 2);
        let fresh = Epoch::random().unwrap();
        let good_new = write("new", create(fresh), vec![update(1, "a", b"n")]);
        let good_existing = write("c", at(epoch, 2), vec![update(3, "a", b"3")]);
        let bad = write("z-bad", at(epoch, 0), vec![update(1, "a", b"x")]);
        let err = commit(
            &*storage,
            vec![good_new.clone(), good_existing.clone(), bad],
        )
        .unwrap_err();
        assert_eq!(err.kind(), "conflict", "{err}");
        assert!(storage.collection(&coll("new")).unwrap().is_none());
        assert_eq!(seqs(&all_changes(&*storage, "c")), vec![1, 2]);
        assert!(storage
            .list_collections(None, 10)
            .unwrap()
            .iter()
            .all(|(n, _)| n.as_str() == "c"));

        // The same valid writes commit together.
        commit(&*storage, vec![good_new, good_existing]).unwrap();
        assert_eq!(seqs(&all_changes(&*storage, "new")), vec![1]);
        assert_eq!(seqs(&all_changes(&*storage, "c")), vec![1, 2, 3]);

        // A collection named twice in one batch is refused.
        let twice = vec![
            write("c", at(epoch, 3), vec![update(4, "a", b"x")]),
            write("c", at(epoch, 4), vec![update(5, "a", b"y")]),
        ];
        assert_eq!(
            commit(&*storage, twice).unwrap_err().kind(),
            "invalid_write"
        );
        assert_eq!(seqs(&all_changes(&*storage, "c")), vec![1, 2, 3]);
    }

    /// The wrapper used by engine tests fails through the trait: before the
    /// write nothing is stored; after it, the batch is there although the
    /// caller saw an error (the ambiguous case the engine must handle).
    pub fn injected_commit_faults_behave_as_documented(fx: &Fixture) {
        let faulty = FaultyStorage::new(fx.open());
        let epoch = seeded(&faulty, "c", 1);
        faulty.arm(Fault {
            target: FaultTarget::Commit,
            nth: 2,
            persistent: false,
            mode: FaultMode::FailBefore,
        });
        commit(
            &faulty,
            vec![write("c", at(epoch, 1), vec![update(2, "a", b"2")])],
        )
        .unwrap();
        let err = commit(
            &faulty,
            vec![write("c", at(epoch, 2), vec![update(3, "a", b"3")])],
        )
        .unwrap_err();
        assert_eq!(err.kind(), "injected");
        assert_eq!(seqs(&all_changes(&faulty, "c")), vec![1, 2]);
        // Not persistent: the next commit goes through.
        commit(
            &faulty,
            vec![write("c", at(epoch, 2), vec![update(3, "a", b"3")])],
        )
        .unwrap();
        faulty.arm(Fault {
            target: FaultTarget::Commit,
            nth: 1,
            persistent: false,
            mode: FaultMode::FailAfterCommit,
        });
        assert!(commit(
            &faulty,
            vec![write("c", at(epoch, 3), vec![update(4, "a", b"4")])]
        )
        .is_err());
        assert_eq!(seqs(&all_changes(&faulty, "c")), vec![1, 2, 3, 4]);
        faulty.arm(Fault {
            target: FaultTarget::Read,
            nth: 1,
            persistent: true,
            mode: FaultMode::FailBefore,
        });
        assert!(faulty.read_changes(&coll("c"), 0, 10).is_err());
        assert!(faulty.collection(&coll("c")).is_err());
        faulty.heal();
        assert!(faulty.read_changes(&coll("c"), 0, 10).is_ok());
        assert_eq!(faulty.injected(), 4);
    }

    /// Compaction replaces a document's covered changes by one snapshot at
    /// the seq of the last covered change, keeps other documents' and later
    /// changes, never lowers the head, and is refused as a whole when its
    /// target is not a change of that document.
    pub fn compaction_replaces_covered_changes_atomically(fx: &Fixture) {
        let storage = fx.open();
        let epoch = seeded(&*storage, "c", 6); // a: 1,3,5  b: 2,4,6
        let mut w = write("c", at(epoch, 6), vec![update(7, "a", b"7")]);
        w.compact.push(Compaction {
            doc: doc("a"),
            after: 0,
            through: 5,
            snapshot: Some(b"A135".to_vec()),
            schema_version: 1,
        });
        commit(&*storage, vec![w]).unwrap();
        let changes = all_changes(&*storage, "c");
        assert_eq!(seqs(&changes), vec![2, 4, 5, 6, 7]);
        let snapshot = &changes[2];
        assert_eq!(
            (snapshot.kind, snapshot.doc.as_str(), &snapshot.payload[..]),
            (ChangeKind::Snapshot, "a", &b"A135"[..])
        );
        assert_eq!(storage.collection(&coll("c")).unwrap().unwrap().head, 7);
        assert_eq!(
            seqs(&storage.document_changes(&coll("c"), &doc("a")).unwrap()),
            vec![5, 7]
        );

        // Compacting again over the snapshot replaces it too.
        let mut w = write("c", at(epoch, 7), vec![]);
        w.compact.push(Compaction {
            doc: doc("a"),
            after: 0,
            through: 7,
            snapshot: Some(b"A1357".to_vec()),
            schema_version: 1,
        });
        commit(&*storage, vec![w]).unwrap();
        assert_eq!(seqs(&all_changes(&*storage, "c")), vec![2, 4, 6, 7]);

        // Refused: seq 6 belongs to b, seq 3 no longer exists, 99 is beyond head.
        let before = all_changes(&*storage, "c");
        for (target, through) in [("a", 6), ("a", 3), ("a", 99), ("a", 0)] {
            let mut w = write("c", at(epoch, 7), vec![update(8, "b", b"8")]);
            w.compact.push(Compaction {
                doc: doc(target),
                after: 0,
                through,
                snapshot: Some(b"S".to_vec()),
                schema_version: 1,
            });
            assert_eq!(
                commit(&*storage, vec![w]).unwrap_err().kind(),
                "invalid_write",
                "through {through}"
            );
        }
        assert_eq!(all_changes(&*storage, "c"), before);
        assert_eq!(storage.collection(&coll("c")).unwrap().unwrap().head, 7);

        // A snapshot may cover a change appended in the same batch.
        let mut w = write("c", at(epoch, 7), vec![update(8, "b", b"8")]);
        w.compact.push(Compaction {
            doc: doc("b"),
            after: 0,
            through: 8,
            snapshot: Some(b"B".to_vec()),
            schema_version: 1,
        });
        commit(&*storage, vec![w]).unwrap();
        assert_eq!(seqs(&all_changes(&*storage, "c")), vec![7, 8]);
    }

    /// Tombstones are listed, and survive compaction of their document.
    pub fn tombstones_are_kept_through_compaction(fx: &Fixture) {
        let storage = fx.open();
        let epoch = seeded(&*storage, "c", 4);
        commit(
            &*storage,
            vec![write("c", at(epoch, 4), vec![tombstone(5, "a")])],
        )
        .unwrap();
        let docs = storage.documents(&coll("c")).unwrap();
        assert!(docs
            .iter()
            .any(|d| d.doc.as_str() == "a" && d.deleted && d.last_seq == 5));
        assert!(docs.iter().any(|d| d.doc.as_str() == "b" && !d.deleted));
        let mut w = write("c", at(epoch, 5), vec![]);
        w.compact.push(Compaction {
            doc: doc("a"),
            after: 0,
            through: 5,
            snapshot: None,
            schema_version: 1,
        });
        commit(&*storage, vec![w]).unwrap();
        let a = storage.document_changes(&coll("c"), &doc("a")).unwrap();
        assert_eq!(strip(a), vec![tombstone(5, "a")]);
        assert_eq!(seqs(&all_changes(&*storage, "c")), vec![2, 4, 5]);
        // A snapshot cannot replace a tombstone.
        let mut w = write("c", at(epoch, 5), vec![]);
        w.compact.push(Compaction {
            doc: doc("a"),
            after: 0,
            through: 5,
            snapshot: Some(b"S".to_vec()),
            schema_version: 1,
        });
        assert_eq!(
            commit(&*storage, vec![w]).unwrap_err().kind(),
            "invalid_write"
        );
    }

    /// A peer's ack never goes backwards in storage, last-seen only moves
    /// forward, and an ack beyond head is refused.
    pub fn peers_upsert_keeps_the_max(fx: &Fixture) {
        let storage = fx.open();
        let epoch = seeded(&*storage, "c", 5);
        let peer = |id: &str, acked, seen| PeerRecord {
            peer: PeerId::new(id).unwrap(),
            acked,
            last_seen_ms: seen,
        };
        for (acked, seen) in [(3, 100), (1, 200), (5, 50)] {
            let mut w = write("c", at(epoch, 5), vec![]);
            w.peers.push(peer("p", acked, seen));
            commit(&*storage, vec![w]).unwrap();
        }
        let mut w = write("c", at(epoch, 5), vec![]);
        w.peers.push(peer("q", 2, 10));
        commit(&*storage, vec![w]).unwrap();
        assert_eq!(
            storage.peers(&coll("c")).unwrap(),
            vec![peer("p", 5, 200), peer("q", 2, 10)]
        );
        let mut w = write("c", at(epoch, 5), vec![]);
        w.peers.push(peer("p", 6, 300));
        assert_eq!(
            commit(&*storage, vec![w]).unwrap_err().kind(),
            "invalid_write"
        );
        assert_eq!(storage.peers(&coll("c")).unwrap()[0], peer("p", 5, 200));
        assert!(storage.peers(&coll("other")).unwrap().is_empty());
    }

    /// Listing is paged in name order so 100,000 collections never load at once.
    pub fn collections_are_listed_in_pages(fx: &Fixture) {
        let storage = fx.open();
        for name in ["e", "a", "d", "b", "c"] {
            seeded(&*storage, name, 1);
        }
        let mut after: Option<CollectionName> = None;
        let mut seen = Vec::new();
        loop {
            let page = storage.list_collections(after.as_ref(), 2).unwrap();
            assert!(page.len() <= 2);
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            seen.extend(page.into_iter().map(|(n, m)| (n.to_string(), m.head)));
        }
        let expected: Vec<(String, u64)> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|n| (n.to_string(), 1))
            .collect();
        assert_eq!(seen, expected);
    }

    /// A reader running while commits land must always see a consistent
    /// prefix: seqs 1..=n without a hole and a head equal to n.
    pub fn concurrent_reader_sees_a_consistent_prefix(fx: &Fixture) {
        let storage = fx.open();
        let epoch = seeded(&*storage, "c", 1);
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let storage = storage.clone();
                let done = done.clone();
                std::thread::spawn(move || {
                    let mut reads = 0u64;
                    while !done.load(Ordering::Acquire) || reads == 0 {
                        let page = storage
                            .read_changes(&coll("c"), 0, usize::MAX)
                            .unwrap()
                            .unwrap();
                        let n = page.changes.len() as u64;
                        assert_eq!(seqs(&page.changes), (1..=n).collect::<Vec<_>>());
                        assert_eq!(page.meta.head, n, "head and changes from one snapshot");
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for head in 1..200u64 {
            let seq = head + 1;
            commit(
                &*storage,
                vec![write(
                    "c",
                    at(epoch, head),
                    vec![update(seq, "a", &seq.to_le_bytes())],
                )],
            )
            .unwrap();
        }
        done.store(true, Ordering::Release);
        for reader in readers {
            assert!(reader.join().unwrap() > 0);
        }
        assert_eq!(all_changes(&*storage, "c").len(), 200);
    }

    /// Close and reopen: every committed change, peer and collection reads
    /// back identically (disk backends only), in both durability modes.
    pub fn reopen_returns_identical_state(fx: &Fixture) {
        if !fx.persistent() {
            return;
        }
        for durability in [Durability::Immediate, Durability::Eventual] {
            let name = format!("c-{durability:?}");
            let (changes, peers, docs, meta) = {
                let storage = open_storage(&fx.config(durability)).unwrap();
                let epoch = seeded(&*storage, &name, 6);
                let mut w = write(&name, at(epoch, 6), vec![tombstone(7, "b")]);
                w.compact.push(Compaction {
                    doc: doc("a"),
                    after: 0,
                    through: 5,
                    snapshot: Some(b"A".to_vec()),
                    schema_version: 1,
                });
                w.peers.push(PeerRecord {
                    peer: PeerId::new("p").unwrap(),
                    acked: 4,
                    last_seen_ms: 9,
                });
                commit(&*storage, vec![w]).unwrap();
                storage.sync().unwrap();
                (
                    all_changes(&*storage, &name),
                    storage.peers(&coll(&name)).unwrap(),
                    storage.documents(&coll(&name)).unwrap(),
                    storage.collection(&coll(&name)).unwrap(),
                )
            };
            let storage = open_storage(&fx.config(durability)).unwrap();
            assert_eq!(all_changes(&*storage, &name), changes);
            assert_eq!(storage.peers(&coll(&name)).unwrap(), peers);
            assert_eq!(storage.documents(&coll(&name)).unwrap(), docs);
            assert_eq!(storage.collection(&coll(&name)).unwrap(), meta);
            assert_eq!(seqs(&changes), vec![2, 4, 5, 6, 7]);
        }
    }

    /// Two engines on one store would interleave seqs: the second opener must
    /// be refused with AlreadyOpen, and the store must open again once the
    /// first is closed.
    pub fn second_opener_is_refused(fx: &Fixture) {
        // A shared database is opened by every node on purpose; leases
        // order its writers (`adapters/tests/postgres.rs`).
        if !fx.on_files() {
            return;
        }
        let first = fx.open();
        seeded(&*first, "c", 2);
        for durability in [Durability::Immediate, Durability::Eventual] {
            let err = open_storage(&fx.config(durability)).err().unwrap();
            assert!(matches!(err, StorageError::AlreadyOpen { .. }), "{err}");
        }
        // The other backend on the same directory is refused as well.
        let other = StorageConfig {
            backend: if fx.kind == BackendKind::Sqlite {
                BackendKind::Redb
            } else {
                BackendKind::Sqlite
            },
            ..fx.config(Durability::Immediate)
        };
        assert!(matches!(
            open_storage(&other).err().unwrap(),
            StorageError::AlreadyOpen { .. }
        ));
        assert_eq!(all_changes(&*first, "c").len(), 2);
        drop(first);
        assert_eq!(all_changes(&*fx.open(), "c").len(), 2);
    }

    /// A file that is not a seqsync store of this backend gives a typed error
    /// and is left untouched.
    pub fn foreign_or_corrupt_file_is_refused(fx: &Fixture) {
        if !fx.on_files() {
            return;
        }
        let config = fx.config(Durability::Immediate);
        let file = config.path.join(match fx.kind {
            BackendKind::Sqlite => SQLITE_FILE_NAME,
            _ => REDB_FILE_NAME,
        });
        std::fs::create_dir_all(&config.path).unwrap();
        let garbage =
            b"this is not a database, it is a text file with some words in it".repeat(100);
        std::fs::write(&file, &garbage).unwrap();
        let err = open_storage(&config).err().unwrap();
        assert!(matches!(err, StorageError::NotAStore { .. }), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), garbage);

        // The storage path being a file.
        let as_file = StorageConfig {
            path: file.clone(),
            ..config.clone()
        };
        assert!(matches!(
            open_storage(&as_file).err().unwrap(),
            StorageError::NotAStore { .. }
        ));
    }
}

/// An SQLite database of another application at our path is refused, not
/// adopted: it would otherwise get our tables mixed into its own.
#[test]
fn sqlite_refuses_a_foreign_sqlite_database() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = rusqlite_conn(&dir.path().join(SQLITE_FILE_NAME));
        conn.execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL);")
            .unwrap();
    }
    let err = SqliteStorage::open(dir.path(), Durability::Immediate)
        .err()
        .unwrap();
    assert!(matches!(err, StorageError::NotAStore { .. }), "{err}");
    assert!(err.to_string().contains("other tables"), "{err}");
}

fn rusqlite_conn(path: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

/// The same store opened twice in one process through the concrete types
/// (not only through `open_storage`) is refused.
#[test]
fn concrete_backends_refuse_a_second_open() {
    let dir = tempfile::tempdir().unwrap();
    let _redb = RedbStorage::open(dir.path(), Durability::Immediate).unwrap();
    assert!(RedbStorage::open(dir.path(), Durability::Immediate).is_err());
    let _memory = MemoryStorage::default();
}

macro_rules! conformance {
    ($($backend:ident => $kind:expr),* $(,)?) => {$(
        mod $backend {
            use super::*;
            fn fixture() -> Fixture {
                Fixture::new($kind).unwrap_or_else(|| Fixture::new(BackendKind::Memory).unwrap())
            }
            #[test] fn large_document_loads_streamed_like_collected() { cases::large_document_loads_streamed_like_collected(&fixture()) }
            #[test] fn append_and_read_round_trip() { cases::append_and_read_round_trip(&fixture()) }
            #[test] fn cursor_is_exclusive() { cases::cursor_is_exclusive(&fixture()) }
            #[test] fn document_pages_cover_one_document_after_the_cursor() { cases::document_pages_cover_one_document_after_the_cursor(&fixture()) }
            #[test] fn pages_respect_limit_and_cover_everything() { cases::pages_respect_limit_and_cover_everything(&fixture()) }
            #[test] fn seqs_must_continue_the_head_without_gaps() { cases::seqs_must_continue_the_head_without_gaps(&fixture()) }
            #[test] fn failed_batch_leaves_nothing() { cases::failed_batch_leaves_nothing(&fixture()) }
            #[test] fn injected_commit_faults_behave_as_documented() { cases::injected_commit_faults_behave_as_documented(&fixture()) }
            #[test] fn compaction_replaces_covered_changes_atomically() { cases::compaction_replaces_covered_changes_atomically(&fixture()) }
            #[test] fn log_checksums_run_through_every_seq_and_survive_compaction() { cases::log_checksums_run_through_every_seq_and_survive_compaction(&fixture()) }
            #[test] fn authors_and_commit_times_are_kept() { cases::authors_and_commit_times_are_kept(&fixture()) }
            #[test] fn pins_are_kept_and_guard_compaction() { cases::pins_are_kept_and_guard_compaction(&fixture()) }
            #[test] fn tombstones_are_kept_through_compaction() { cases::tombstones_are_kept_through_compaction(&fixture()) }
            #[test] fn peers_upsert_keeps_the_max() { cases::peers_upsert_keeps_the_max(&fixture()) }
            #[test] fn collections_are_listed_in_pages() { cases::collections_are_listed_in_pages(&fixture()) }
            #[test] fn concurrent_reader_sees_a_consistent_prefix() { cases::concurrent_reader_sees_a_consistent_prefix(&fixture()) }
            #[test] fn reopen_returns_identical_state() { cases::reopen_returns_identical_state(&fixture()) }
            #[test] fn second_opener_is_refused() { cases::second_opener_is_refused(&fixture()) }
            #[test] fn foreign_or_corrupt_file_is_refused() { cases::foreign_or_corrupt_file_is_refused(&fixture()) }
        }
    )*};
}

conformance! {
    sqlite => BackendKind::Sqlite,
    redb => BackendKind::Redb,
    memory => BackendKind::Memory,
    postgres => BackendKind::Postgres,
}
