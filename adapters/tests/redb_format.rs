//! redb stores written at older formats are migrated to the current one
//! (3) when opened: a format-1 store (before log checksums) gains every
//! change's running log checksum; a format-2 store (before authors and
//! commit times) keeps every value and reads them as unknown. Both take
//! writes at their head, with who and when kept.
//!
//! The old stores are written here byte by byte with redb itself, in the
//! layout their format used, so the test does not depend on old code.

use redb::{Database, TableDefinition};
use seqsync_adapters::{RedbStorage, REDB_FILE_NAME};
use seqsync_engine::{
    change_checksum, ChangeKind, CollectionName, CollectionWrite, Durability, Epoch, Storage,
    WriteBase, WriteBatch,
};

const FORMAT: TableDefinition<&str, u64> = TableDefinition::new("seqsync_format");
const COLLECTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("collections");
const CHANGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("changes");
const DOC_INDEX: TableDefinition<(&str, &str, u64), u8> = TableDefinition::new("doc_index");
const PEERS: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("peers");

/// Format 1 change value: `kind | schema u32 | origin_len u16 (0xFFFF) |
/// doc_len u16 | doc | payload`.
fn v1_change(kind: ChangeKind, doc: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![kind.code()];
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&u16::MAX.to_le_bytes());
    out.extend_from_slice(&(doc.len() as u16).to_le_bytes());
    out.extend_from_slice(doc.as_bytes());
    out.extend_from_slice(payload);
    out
}

#[test]
fn format_1_redb_store_gains_log_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let epoch = Epoch([5; 16]);
    let rows: [(u64, ChangeKind, &str, &[u8]); 3] = [
        (1, ChangeKind::Update, "d1", &[1, 2, 3]),
        (2, ChangeKind::Update, "d2", &[4]),
        (3, ChangeKind::Delete, "d1", &[]),
    ];
    {
        std::fs::create_dir_all(dir.path()).unwrap();
        let db = Database::create(dir.path().join(REDB_FILE_NAME)).unwrap();
        let tx = db.begin_write().unwrap();
        {
            tx.open_table(FORMAT).unwrap().insert("format", 1).unwrap();
            let mut meta = Vec::new();
            meta.extend_from_slice(&epoch.0);
            meta.extend_from_slice(&3u64.to_le_bytes());
            meta.extend_from_slice(&1u32.to_le_bytes());
            meta.extend_from_slice(&5u64.to_le_bytes());
            tx.open_table(COLLECTIONS)
                .unwrap()
                .insert("a", meta.as_slice())
                .unwrap();
            let mut changes = tx.open_table(CHANGES).unwrap();
            let mut index = tx.open_table(DOC_INDEX).unwrap();
            for (seq, kind, doc, payload) in rows {
                changes
                    .insert(("a", seq), v1_change(kind, doc, payload).as_slice())
                    .unwrap();
                index.insert(("a", doc, seq), kind.code()).unwrap();
            }
            tx.open_table(PEERS).unwrap();
        }
        tx.commit().unwrap();
    }
    let storage = RedbStorage::open(dir.path(), Durability::Immediate).unwrap();
    let name = CollectionName::new("a").unwrap();
    let page = storage.read_changes(&name, 0, 10).unwrap().unwrap();
    assert_eq!(page.changes.len(), 3);
    let mut running = 0u64;
    for (change, (seq, kind, doc, payload)) in page.changes.iter().zip(rows) {
        assert_eq!(
            (
                change.seq,
                change.kind,
                change.doc.as_str(),
                change.payload.as_slice()
            ),
            (seq, kind, doc, payload)
        );
        running = running.wrapping_add(change_checksum(&epoch, change));
        assert_eq!(change.log_checksum, running);
    }
    assert_eq!(page.meta.log_checksum, running);
    assert_eq!((page.meta.head, page.meta.created_ms), (3, 5));
    let mut next = page.changes[1].clone();
    next.seq = 4;
    storage
        .commit(&WriteBatch {
            writes: vec![CollectionWrite {
                collection: name.clone(),
                base: WriteBase::Existing { epoch, head: 3 },
                append: vec![next.clone()],
                compact: Vec::new(),
                peers: Vec::new(),
                raise_schema_version: None,
                append_mode: Default::default(),
            }],
        })
        .unwrap();
    let meta = storage.collection(&name).unwrap().unwrap();
    assert_eq!(meta.head, 4);
    assert_eq!(
        meta.log_checksum,
        running.wrapping_add(change_checksum(&epoch, &next))
    );
}

/// Format 2 change value: `kind | log_checksum u64 | schema u32 |
/// origin_len u16 | origin | doc_len u16 | doc | payload`.
fn v2_change(kind: ChangeKind, checksum: u64, origin: &str, doc: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![kind.code()];
    out.extend_from_slice(&checksum.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(origin.len() as u16).to_le_bytes());
    out.extend_from_slice(origin.as_bytes());
    out.extend_from_slice(&(doc.len() as u16).to_le_bytes());
    out.extend_from_slice(doc.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// A format-2 store's changes keep every byte and checksum through the
/// rewrite to format 3; who pushed them and when read as unknown (never
/// recorded, never guessed), and a change written afterwards keeps both.
#[test]
fn format_2_redb_store_keeps_its_changes_and_gains_authors() {
    let dir = tempfile::tempdir().unwrap();
    let epoch = Epoch([6; 16]);
    {
        std::fs::create_dir_all(dir.path()).unwrap();
        let db = Database::create(dir.path().join(REDB_FILE_NAME)).unwrap();
        let tx = db.begin_write().unwrap();
        {
            tx.open_table(FORMAT).unwrap().insert("format", 2).unwrap();
            let mut meta = Vec::new();
            meta.extend_from_slice(&epoch.0);
            meta.extend_from_slice(&2u64.to_le_bytes());
            meta.extend_from_slice(&1u32.to_le_bytes());
            meta.extend_from_slice(&5u64.to_le_bytes());
            meta.extend_from_slice(&99u64.to_le_bytes());
            tx.open_table(COLLECTIONS)
                .unwrap()
                .insert("a", meta.as_slice())
                .unwrap();
            let mut changes = tx.open_table(CHANGES).unwrap();
            let mut index = tx.open_table(DOC_INDEX).unwrap();
            changes
                .insert(
                    ("a", 1),
                    v2_change(ChangeKind::Update, 11, "tab-1", "d", &[7, 8]).as_slice(),
                )
                .unwrap();
            changes
                .insert(
                    ("a", 2),
                    v2_change(ChangeKind::Update, 99, "tab-2", "d", &[9]).as_slice(),
                )
                .unwrap();
            index
                .insert(("a", "d", 1), ChangeKind::Update.code())
                .unwrap();
            index
                .insert(("a", "d", 2), ChangeKind::Update.code())
                .unwrap();
            tx.open_table(PEERS).unwrap();
        }
        tx.commit().unwrap();
    }
    let storage = RedbStorage::open(dir.path(), Durability::Immediate).unwrap();
    let name = CollectionName::new("a").unwrap();
    let page = storage.read_changes(&name, 0, 10).unwrap().unwrap();
    let seen: Vec<_> = page
        .changes
        .iter()
        .map(|c| {
            (
                c.seq,
                c.log_checksum,
                c.origin.as_ref().map(|p| p.as_str().to_owned()),
                c.payload.clone(),
                c.author.clone(),
                c.committed_ms,
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (1, 11, Some("tab-1".to_owned()), vec![7, 8], None, 0),
            (2, 99, Some("tab-2".to_owned()), vec![9], None, 0),
        ]
    );
    let mut next = page.changes[1].clone();
    next.seq = 3;
    next.author = Some("user-7".to_owned());
    next.committed_ms = 1_700_000_000_456;
    storage
        .commit(&WriteBatch {
            writes: vec![CollectionWrite {
                collection: name.clone(),
                base: WriteBase::Existing { epoch, head: 2 },
                append: vec![next],
                compact: Vec::new(),
                peers: Vec::new(),
                raise_schema_version: None,
                append_mode: Default::default(),
            }],
        })
        .unwrap();
    drop(storage);
    let storage = RedbStorage::open(dir.path(), Durability::Immediate).unwrap();
    let written = storage.read_changes(&name, 2, 1).unwrap().unwrap();
    assert_eq!(
        (
            written.changes[0].author.as_deref(),
            written.changes[0].committed_ms
        ),
        (Some("user-7"), 1_700_000_000_456)
    );
}
