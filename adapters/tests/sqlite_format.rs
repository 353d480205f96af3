//! The SQLite store's on-disk format across versions.
//!
//! Format 2 dropped the stored head (the head is the highest stored seq) and
//! made the log a `WITHOUT ROWID` table, so that a commit rewrites fewer
//! pages. Stores written by format 1 must open, migrated in place, with every
//! change, peer and head exactly as before; a format-1 store whose stored
//! head disagrees with its log must be refused before anything is changed.
//! Format 3 added each change's log checksum, format 4 moved it before the
//! payload, format 5 added who pushed each change and when (before the
//! payload too); a format-1 store goes through every step.

use rusqlite::{params, Connection};
use seqsync_adapters::{SqliteStorage, SQLITE_FILE_NAME};
use seqsync_engine::{
    ChangeKind, CollectionName, CollectionWrite, Durability, Epoch, PeerId, Storage, StorageError,
    WriteBase, WriteBatch,
};

/// The format-1 layout, as format 1 created it.
const SCHEMA_V1: &str = "
CREATE TABLE seqsync_format (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE collections (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    epoch BLOB NOT NULL,
    head INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE changes (
    cid INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    doc TEXT NOT NULL,
    kind INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    origin TEXT,
    payload BLOB NOT NULL,
    PRIMARY KEY (cid, seq)
);
CREATE INDEX changes_by_doc ON changes (cid, doc, seq);
CREATE TABLE peers (
    cid INTEGER NOT NULL,
    peer TEXT NOT NULL,
    acked INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (cid, peer)
) WITHOUT ROWID;
INSERT INTO seqsync_format (key, value) VALUES ('format', 1);
";

/// Writes a format-1 store: collection `a` with changes 1..=3 (an update of
/// d1, an update of d2, a tombstone of d1) and one peer, collection `b`
/// with no change at all (created by an ack), and `a`'s stored head set to
/// `a_head`.
fn write_v1_store(dir: &std::path::Path, a_head: i64) -> Epoch {
    let epoch = Epoch([3; 16]);
    let conn = Connection::open(dir.join(SQLITE_FILE_NAME)).unwrap();
    conn.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
    conn.execute_batch(SCHEMA_V1).unwrap();
    conn.execute(
        "INSERT INTO collections (id, name, epoch, head, schema_version, created_ms) \
         VALUES (1, 'a', ?1, ?2, 1, 5), (2, 'b', ?1, 0, 1, 6)",
        params![&epoch.0[..], a_head],
    )
    .unwrap();
    for (seq, doc, kind, payload) in [
        (1, "d1", 1, vec![1u8, 2, 3]),
        (2, "d2", 1, vec![4u8]),
        (3, "d1", 2, vec![]),
    ] {
        conn.execute(
            "INSERT INTO changes VALUES (1, ?1, ?2, ?3, 1, 'peer-x', ?4)",
            params![seq, doc, kind, payload],
        )
        .unwrap();
    }
    conn.execute(
        "INSERT INTO peers VALUES (1, 'p', 2, 77), (2, 'q', 0, 88)",
        [],
    )
    .unwrap();
    epoch
}

fn format_of(dir: &std::path::Path) -> i64 {
    let conn = Connection::open(dir.join(SQLITE_FILE_NAME)).unwrap();
    conn.query_row(
        "SELECT value FROM seqsync_format WHERE key = 'format'",
        [],
        |row| row.get(0),
    )
    .unwrap()
}

fn name(n: &str) -> CollectionName {
    CollectionName::new(n).unwrap()
}

#[test]
fn format_1_store_is_migrated_with_everything_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let epoch = write_v1_store(dir.path(), 3);
    {
        let storage = SqliteStorage::open(dir.path(), Durability::Immediate).unwrap();
        let meta = storage.collection(&name("a")).unwrap().unwrap();
        assert_eq!((meta.epoch, meta.head, meta.created_ms), (epoch, 3, 5));
        let empty = storage.collection(&name("b")).unwrap().unwrap();
        assert_eq!(empty.head, 0, "a collection without changes has head 0");
        let page = storage.read_changes(&name("a"), 0, 10).unwrap().unwrap();
        let seen: Vec<_> = page
            .changes
            .iter()
            .map(|c| (c.seq, c.doc.as_str().to_owned(), c.kind, c.payload.clone()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (1, "d1".to_owned(), ChangeKind::Update, vec![1, 2, 3]),
                (2, "d2".to_owned(), ChangeKind::Update, vec![4]),
                (3, "d1".to_owned(), ChangeKind::Delete, vec![]),
            ]
        );
        assert_eq!(page.changes[0].origin, Some(PeerId::new("peer-x").unwrap()));
        // Format 5: who and when were never recorded for these changes, and
        // the migration does not guess.
        assert!(page
            .changes
            .iter()
            .all(|c| c.author.is_none() && c.committed_ms == 0));
        // Format 3 gave every change its running log checksum.
        let mut running = 0u64;
        for change in &page.changes {
            running = running.wrapping_add(seqsync_engine::change_checksum(&epoch, change));
            assert_eq!(change.log_checksum, running, "seq {}", change.seq);
        }
        assert_eq!(meta.log_checksum, running);
        let peers = storage.peers(&name("a")).unwrap();
        assert_eq!(
            (peers.len(), peers[0].acked, peers[0].last_seen_ms),
            (1, 2, 77)
        );
        let listed = storage.list_collections(None, 10).unwrap();
        assert_eq!(
            listed
                .iter()
                .map(|(n, m)| (n.as_str().to_owned(), m.head))
                .collect::<Vec<_>>(),
            vec![("a".to_owned(), 3), ("b".to_owned(), 0)]
        );
        // The migrated store takes writes at its head, and only there.
        let stale = CollectionWrite {
            collection: name("a"),
            base: WriteBase::Existing { epoch, head: 2 },
            append: Vec::new(),
            compact: Vec::new(),
            peers: Vec::new(),
            raise_schema_version: None,
            append_mode: Default::default(),
        };
        let refused = storage.commit(&WriteBatch {
            writes: vec![stale],
        });
        assert!(
            matches!(refused, Err(StorageError::Conflict { .. })),
            "{refused:?}"
        );
        let mut next = page.changes[1].clone();
        next.seq = 4;
        next.author = Some("user-42".to_owned());
        next.committed_ms = 1_700_000_000_123;
        storage
            .commit(&WriteBatch {
                writes: vec![CollectionWrite {
                    collection: name("a"),
                    base: WriteBase::Existing { epoch, head: 3 },
                    append: vec![next],
                    compact: Vec::new(),
                    peers: Vec::new(),
                    raise_schema_version: None,
                    append_mode: Default::default(),
                }],
            })
            .unwrap();
        assert_eq!(storage.collection(&name("a")).unwrap().unwrap().head, 4);
    }
    assert_eq!(format_of(dir.path()), 5);
    // Formats 4 and 5 keep `checksum`, `author` and `committed_ms` before
    // `payload`: reading them (the head's checksum, on every page read)
    // must not walk a large payload's overflow pages.
    let conn = Connection::open(dir.path().join(SQLITE_FILE_NAME)).unwrap();
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('changes') ORDER BY cid")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let at = |name: &str| columns.iter().position(|c| c == name).unwrap();
    assert!(at("checksum") < at("payload"), "{columns:?}");
    assert!(at("author") < at("payload"), "{columns:?}");
    assert!(at("committed_ms") < at("payload"), "{columns:?}");
    drop(conn);
    // Reopening a format-5 store changes nothing, and a change written
    // after the migration keeps who and when.
    let storage = SqliteStorage::open(dir.path(), Durability::Immediate).unwrap();
    assert_eq!(storage.collection(&name("a")).unwrap().unwrap().head, 4);
    let written = storage.read_changes(&name("a"), 3, 1).unwrap().unwrap();
    assert_eq!(
        (
            written.changes[0].author.as_deref(),
            written.changes[0].committed_ms
        ),
        (Some("user-42"), 1_700_000_000_123)
    );
    // Format 5's pins table exists in a migrated store too.
    let pin = seqsync_engine::Pin {
        doc: seqsync_engine::DocId::new("d2").unwrap(),
        name: "as migrated".to_owned(),
        seq: 4,
        created_ms: 1,
        author: None,
    };
    storage.put_pin(&name("a"), &pin).unwrap();
    assert_eq!(storage.pins(&name("a"), None).unwrap(), vec![pin]);
    assert_eq!(
        storage
            .read_document_changes(
                &name("a"),
                &seqsync_engine::DocId::new("d2").unwrap(),
                0,
                10
            )
            .unwrap()
            .unwrap()
            .changes
            .len(),
        2
    );
}

#[test]
fn format_1_store_with_a_head_beyond_its_log_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    write_v1_store(dir.path(), 9);
    let refused = SqliteStorage::open(dir.path(), Durability::Immediate);
    assert!(
        matches!(&refused, Err(StorageError::Corrupt { .. })),
        "{:?}",
        refused.err()
    );
    drop(refused);
    assert_eq!(format_of(dir.path()), 1, "nothing was migrated");
}
