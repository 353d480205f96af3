//! redb stores written at format 1 (before log checksums) are migrated to
//! format 2 when opened: every change keeps its bytes and gains its running
//! log checksum, and the store takes writes at its head.
//!
//! The format-1 store is written here byte by byte with redb itself, in the
//! layout format 1 used, so the test does not depend on old code.

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
