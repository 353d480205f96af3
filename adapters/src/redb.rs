//! `RedbStorage`: the store in one redb file.
//!
//! Layout: `<path>/seqsync.redb` and the directory lock `<path>/seqsync.lock`.
//! Tables (keys are tuples, so one collection's rows are contiguous):
//!
//! | table | key | value |
//! |---|---|---|
//! | `seqsync_format` | `"format"` | format version |
//! | `collections` | name | [`codec::encode_meta`] |
//! | `changes` | (collection, seq) | [`codec::encode_change`] |
//! | `doc_index` | (collection, doc, seq) | kind code |
//! | `peers` | (collection, peer) | (acked, last_seen_ms) |
//!
//! redb serialises write transactions itself; reads are MVCC snapshots that
//! never block a commit and see all or nothing of it.
//!
//! Durability, honestly:
//! - `immediate`: every commit uses `Durability::Immediate` (fsync before the
//!   commit returns); a commit that returned survives a crash or power loss.
//! - `eventual`: commits use `Durability::None`, which keeps them in this
//!   process's memory; every 64th commit, or the first after 1 s without one,
//!   is made `Immediate` and persists all before it. A crash of the process
//!   or machine loses the commits since the last durable one (at most ~1 s or
//!   63 commits); the file is never corrupted.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use seqsync_engine::{
    check_batch_shape, is_covered, plan_collection_write, snapshot_change, Change, ChangeKind,
    ChangesPage, CollectionMeta, CollectionName, CollectionWrite, DocId, DocumentInfo, Durability,
    PeerId, PeerRecord, Pin, Seq, Storage, StorageError, WriteBatch,
};

use crate::codec;
use crate::dir_lock::DirLock;

const BACKEND: &str = "redb";
/// File name of the database inside the storage directory.
pub const REDB_FILE_NAME: &str = "seqsync.redb";
/// Format 2 adds the log checksum to every change and collection; format 3
/// who pushed each change and when (`author`, `committed_ms`). Older stores
/// are migrated when opened (`migrate_format_1_to_2`, `migrate_format_2_to_3`).
const FORMAT_VERSION: u64 = 3;
/// With `eventual` durability, at most this many commits stay non-durable.
const EVENTUAL_MAX_PENDING_COMMITS: u64 = 64;
/// With `eventual` durability, at most this long passes without a durable commit
/// (checked at each commit).
const EVENTUAL_MAX_PENDING_MS: u64 = 1_000;

const FORMAT: TableDefinition<&str, u64> = TableDefinition::new("seqsync_format");
const COLLECTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("collections");
const CHANGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("changes");
const DOC_INDEX: TableDefinition<(&str, &str, u64), u8> = TableDefinition::new("doc_index");
const PEERS: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("peers");
/// Pinned versions: (collection, doc, name) -> `seq u64 | created_ms u64 |
/// author_len u16 (0xFFFF = none) | author` (format 3; an older store gets
/// the table, empty, when opened).
const PINS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("pins");

struct EventualState {
    pending_commits: u64,
    last_durable: Instant,
}

/// A [`Storage`] on redb. See the module docs for layout and durability.
pub struct RedbStorage {
    path: PathBuf,
    durability: Durability,
    db: Database,
    eventual: Mutex<EventualState>,
    _lock: DirLock,
}

impl RedbStorage {
    /// Opens or creates the store in directory `dir`.
    ///
    /// Blocking. Errors: [`StorageError::AlreadyOpen`] if another engine has
    /// it open, [`StorageError::NotAStore`] if the file is not a seqsync redb
    /// store, [`StorageError::UnsupportedFormat`] for a newer format.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self, StorageError> {
        let lock = DirLock::acquire(dir, BACKEND)?;
        let path = dir.join(REDB_FILE_NAME);
        let existed = path.exists();
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StorageError::AlreadyOpen {
                path: dir.to_owned(),
            },
            // A fresh file that fails to be created is an I/O problem; an
            // existing one that fails to open is not ours (or is damaged).
            other if !existed => StorageError::backend(BACKEND, "creating the database", other),
            other => StorageError::NotAStore {
                backend: BACKEND,
                path: path.clone(),
                detail: other.to_string(),
            },
        })?;
        check_or_create_schema(&db, &path)?;
        Ok(Self {
            path,
            durability,
            db,
            eventual: Mutex::new(EventualState {
                pending_commits: 0,
                last_durable: Instant::now(),
            }),
            _lock: lock,
        })
    }

    /// The database file.
    pub fn file_path(&self) -> &Path {
        &self.path
    }

    /// The redb durability for the next commit (see module docs).
    fn next_commit_durability(&self) -> Result<(redb::Durability, bool), StorageError> {
        if self.durability == Durability::Immediate {
            return Ok((redb::Durability::Immediate, true));
        }
        let state = self
            .eventual
            .lock()
            .map_err(|_| StorageError::backend(BACKEND, "committing", "poisoned by a panic"))?;
        let due = state.pending_commits + 1 >= EVENTUAL_MAX_PENDING_COMMITS
            || state.last_durable.elapsed() >= Duration::from_millis(EVENTUAL_MAX_PENDING_MS);
        Ok(if due {
            (redb::Durability::Immediate, true)
        } else {
            (redb::Durability::None, false)
        })
    }

    fn note_commit(&self, durable: bool) {
        if let Ok(mut state) = self.eventual.lock() {
            if durable {
                state.pending_commits = 0;
                state.last_durable = Instant::now();
            } else {
                state.pending_commits += 1;
            }
        }
    }

    fn read_txn(&self) -> Result<redb::ReadTransaction, StorageError> {
        self.db
            .begin_read()
            .map_err(|e| StorageError::backend(BACKEND, "beginning a read", e))
    }
}

fn check_or_create_schema(db: &Database, path: &Path) -> Result<(), StorageError> {
    let tx = db
        .begin_write()
        .map_err(|e| StorageError::backend(BACKEND, "opening the database", e))?;
    let names: Vec<String> = tx
        .list_tables()
        .map_err(|e| StorageError::backend(BACKEND, "listing tables", e))?
        .map(|t| t.name().to_owned())
        .collect();
    let is_new = names.is_empty();
    if !is_new && !names.iter().any(|n| n == FORMAT.name()) {
        return Err(StorageError::NotAStore {
            backend: BACKEND,
            path: path.to_owned(),
            detail: format!("a redb database with other tables ({})", names.join(", ")),
        });
    }
    {
        let mut format = tx.open_table(FORMAT).map_err(table_error)?;
        if is_new {
            format
                .insert("format", FORMAT_VERSION)
                .map_err(storage_error)?;
        } else {
            let found = format
                .get("format")
                .map_err(storage_error)?
                .map(|v| v.value());
            match found {
                Some(FORMAT_VERSION) => {}
                Some(old @ (1 | 2)) => {
                    drop(format);
                    if old == 1 {
                        migrate_format_1_to_2(&tx)?;
                    } else {
                        migrate_format_2_to_3(&tx)?;
                    }
                    let mut format = tx.open_table(FORMAT).map_err(table_error)?;
                    format
                        .insert("format", FORMAT_VERSION)
                        .map_err(storage_error)?;
                }
                Some(found) => {
                    return Err(StorageError::UnsupportedFormat {
                        backend: BACKEND,
                        path: path.to_owned(),
                        found,
                        supported: FORMAT_VERSION,
                    })
                }
                None => {
                    return Err(StorageError::NotAStore {
                        backend: BACKEND,
                        path: path.to_owned(),
                        detail: "seqsync_format table without a format version".to_owned(),
                    })
                }
            }
        }
        // Create every table up front so readers never meet a missing one.
        tx.open_table(COLLECTIONS).map_err(table_error)?;
        tx.open_table(CHANGES).map_err(table_error)?;
        tx.open_table(DOC_INDEX).map_err(table_error)?;
        tx.open_table(PEERS).map_err(table_error)?;
        tx.open_table(PINS).map_err(table_error)?;
    }
    tx.commit()
        .map_err(|e| StorageError::backend(BACKEND, "creating the schema", e))
}

/// Rewrites a format-1 store in the open transaction: every change gains
/// its running log checksum, every collection its checksum through the
/// head. Snapshots written before count as ordinary changes (what they
/// replaced is gone), so a migrated store's checksums start here. Changes
/// are written in the current encoding (no author, `committed_ms` 0), so
/// the store ends at the current format. One transaction: a crash leaves
/// the store at format 1.
fn migrate_format_1_to_2(tx: &redb::WriteTransaction) -> Result<(), StorageError> {
    let mut collections = tx.open_table(COLLECTIONS).map_err(table_error)?;
    let mut changes = tx.open_table(CHANGES).map_err(table_error)?;
    let mut names = Vec::new();
    for entry in collections.iter().map_err(storage_error)? {
        let (name, value) = entry.map_err(storage_error)?;
        names.push((
            name.value().to_owned(),
            codec::decode_meta_format(BACKEND, value.value(), 1)?,
        ));
    }
    for (name, mut meta) in names {
        let mut rewritten = Vec::new();
        let mut running = 0u64;
        for entry in changes
            .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
            .map_err(storage_error)?
        {
            let (key, value) = entry.map_err(storage_error)?;
            let seq = key.value().1;
            let mut change = codec::decode_change_format(BACKEND, seq, value.value(), 1)?;
            running = running.wrapping_add(seqsync_engine::change_checksum(&meta.epoch, &change));
            change.log_checksum = running;
            rewritten.push(change);
        }
        for change in &rewritten {
            changes
                .insert(
                    (name.as_str(), change.seq),
                    codec::encode_change(change).as_slice(),
                )
                .map_err(storage_error)?;
        }
        meta.log_checksum = running;
        collections
            .insert(name.as_str(), &codec::encode_meta(&meta)[..])
            .map_err(storage_error)?;
    }
    Ok(())
}

/// Rewrites every change of a format-2 store in the current encoding, in
/// the open transaction: no author and a `committed_ms` of 0 (who pushed
/// them and when was never recorded). One transaction: a crash leaves the
/// store at format 2.
fn migrate_format_2_to_3(tx: &redb::WriteTransaction) -> Result<(), StorageError> {
    let mut changes = tx.open_table(CHANGES).map_err(table_error)?;
    let mut rewritten = Vec::new();
    for entry in changes.iter().map_err(storage_error)? {
        let (key, value) = entry.map_err(storage_error)?;
        let (name, seq) = key.value();
        let change = codec::decode_change_format(BACKEND, seq, value.value(), 2)?;
        rewritten.push((name.to_owned(), change));
    }
    for (name, change) in &rewritten {
        changes
            .insert(
                (name.as_str(), change.seq),
                codec::encode_change(change).as_slice(),
            )
            .map_err(storage_error)?;
    }
    Ok(())
}

impl Storage for RedbStorage {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn durability(&self) -> Durability {
        self.durability
    }

    fn collection(&self, name: &CollectionName) -> Result<Option<CollectionMeta>, StorageError> {
        let tx = self.read_txn()?;
        let table = tx.open_table(COLLECTIONS).map_err(table_error)?;
        read_meta(&table, name)
    }

    fn list_collections(
        &self,
        after: Option<&CollectionName>,
        limit: usize,
    ) -> Result<Vec<(CollectionName, CollectionMeta)>, StorageError> {
        let tx = self.read_txn()?;
        let table = tx.open_table(COLLECTIONS).map_err(table_error)?;
        let start = after.map_or("", |a| a.as_str());
        let mut out = Vec::new();
        for entry in table.range::<&str>(start..).map_err(storage_error)? {
            if out.len() >= limit {
                break;
            }
            let (key, value) = entry.map_err(storage_error)?;
            if after.is_some() && key.value() == start {
                continue;
            }
            let name = CollectionName::new(key.value()).map_err(|e| corrupt(e.to_string()))?;
            out.push((name, codec::decode_meta(BACKEND, value.value())?));
        }
        Ok(out)
    }

    fn read_changes(
        &self,
        name: &CollectionName,
        after: Seq,
        limit: usize,
    ) -> Result<Option<ChangesPage>, StorageError> {
        let tx = self.read_txn()?;
        let collections = tx.open_table(COLLECTIONS).map_err(table_error)?;
        let Some(meta) = read_meta(&collections, name)? else {
            return Ok(None);
        };
        let mut changes = Vec::new();
        if let Some(from) = after.checked_add(1) {
            let table = tx.open_table(CHANGES).map_err(table_error)?;
            let range = table
                .range((name.as_str(), from)..=(name.as_str(), u64::MAX))
                .map_err(storage_error)?;
            for entry in range.take(limit) {
                let (key, value) = entry.map_err(storage_error)?;
                changes.push(codec::decode_change(BACKEND, key.value().1, value.value())?);
            }
        }
        Ok(Some(ChangesPage { meta, changes }))
    }

    fn read_document_changes(
        &self,
        name: &CollectionName,
        doc: &DocId,
        after: Seq,
        limit: usize,
    ) -> Result<Option<ChangesPage>, StorageError> {
        let tx = self.read_txn()?;
        let collections = tx.open_table(COLLECTIONS).map_err(table_error)?;
        let Some(meta) = read_meta(&collections, name)? else {
            return Ok(None);
        };
        let mut changes = Vec::new();
        if let Some(from) = after.checked_add(1) {
            // The doc index seeks straight to `after`, in the same snapshot.
            let index = tx.open_table(DOC_INDEX).map_err(table_error)?;
            let table = tx.open_table(CHANGES).map_err(table_error)?;
            let range = index
                .range(
                    (name.as_str(), doc.as_str(), from)..=(name.as_str(), doc.as_str(), u64::MAX),
                )
                .map_err(storage_error)?;
            for entry in range.take(limit) {
                let (key, _) = entry.map_err(storage_error)?;
                let seq = key.value().2;
                let value = table
                    .get((name.as_str(), seq))
                    .map_err(storage_error)?
                    .ok_or_else(|| {
                        corrupt(format!("doc_index names missing change {seq} of {name}"))
                    })?;
                changes.push(codec::decode_change(BACKEND, seq, value.value())?);
            }
        }
        Ok(Some(ChangesPage { meta, changes }))
    }

    fn document_changes(
        &self,
        name: &CollectionName,
        doc: &DocId,
    ) -> Result<Vec<Change>, StorageError> {
        let mut out = Vec::new();
        self.visit_document_changes(name, doc, &mut |change| {
            out.push(change);
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    fn visit_document_changes(
        &self,
        name: &CollectionName,
        doc: &DocId,
        visit: &mut dyn FnMut(Change) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        let tx = self.read_txn()?;
        let index = tx.open_table(DOC_INDEX).map_err(table_error)?;
        let changes = tx.open_table(CHANGES).map_err(table_error)?;
        let range = index
            .range((name.as_str(), doc.as_str(), 0)..=(name.as_str(), doc.as_str(), u64::MAX))
            .map_err(storage_error)?;
        for entry in range {
            let (key, _) = entry.map_err(storage_error)?;
            let seq = key.value().2;
            let value = changes
                .get((name.as_str(), seq))
                .map_err(storage_error)?
                .ok_or_else(|| {
                    corrupt(format!("doc_index names missing change {seq} of {name}"))
                })?;
            if visit(codec::decode_change(BACKEND, seq, value.value())?).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn documents(&self, name: &CollectionName) -> Result<Vec<DocumentInfo>, StorageError> {
        self.documents_page(name, None, usize::MAX)
    }

    fn documents_page(
        &self,
        name: &CollectionName,
        after: Option<&DocId>,
        limit: usize,
    ) -> Result<Vec<DocumentInfo>, StorageError> {
        let tx = self.read_txn()?;
        let index = tx.open_table(DOC_INDEX).map_err(table_error)?;
        // Sizes come from the changes themselves: the index holds kinds only.
        let changes = tx.open_table(CHANGES).map_err(table_error)?;
        let mut out: Vec<DocumentInfo> = Vec::new();
        // Seek to `after`'s entries (skipped below) or the collection's first.
        let after = after.map_or("", DocId::as_str);
        let range = index
            .range((name.as_str(), after, 0)..)
            .map_err(storage_error)?;
        for entry in range {
            let (key, kind) = entry.map_err(storage_error)?;
            let (collection, doc, seq) = key.value();
            if collection != name.as_str() {
                break;
            }
            if doc == after {
                continue;
            }
            let deleted = kind.value() == ChangeKind::Delete.code();
            let bytes = match changes.get((name.as_str(), seq)).map_err(storage_error)? {
                Some(value) => codec::decode_change(BACKEND, seq, value.value())?
                    .payload
                    .len() as u64,
                None => 0,
            };
            let full = out.len() == limit;
            match out.last_mut() {
                Some(info) if info.doc.as_str() == doc => {
                    info.last_seq = info.last_seq.max(seq);
                    info.deleted |= deleted;
                    info.stored_bytes += bytes;
                }
                // A new document past the page: the page is complete.
                _ if full => break,
                _ => out.push(DocumentInfo {
                    doc: DocId::new(doc).map_err(|e| corrupt(e.to_string()))?,
                    last_seq: seq,
                    deleted,
                    stored_bytes: bytes,
                }),
            }
        }
        Ok(out)
    }

    fn peers(&self, name: &CollectionName) -> Result<Vec<PeerRecord>, StorageError> {
        let tx = self.read_txn()?;
        let table = tx.open_table(PEERS).map_err(table_error)?;
        let mut out = Vec::new();
        for entry in table.range((name.as_str(), "")..).map_err(storage_error)? {
            let (key, value) = entry.map_err(storage_error)?;
            let (collection, peer) = key.value();
            if collection != name.as_str() {
                break;
            }
            let (acked, last_seen_ms) = value.value();
            out.push(PeerRecord {
                peer: PeerId::new(peer).map_err(|e| corrupt(e.to_string()))?,
                acked,
                last_seen_ms,
            });
        }
        Ok(out)
    }

    fn pins(&self, name: &CollectionName, doc: Option<&DocId>) -> Result<Vec<Pin>, StorageError> {
        let tx = self.read_txn()?;
        let table = tx.open_table(PINS).map_err(table_error)?;
        let start = doc.map_or("", DocId::as_str);
        let mut out = Vec::new();
        for entry in table
            .range((name.as_str(), start, "")..)
            .map_err(storage_error)?
        {
            let (key, value) = entry.map_err(storage_error)?;
            let (collection, pinned_doc, pin_name) = key.value();
            if collection != name.as_str() || doc.is_some_and(|d| d.as_str() != pinned_doc) {
                break;
            }
            out.push(codec::decode_pin(
                BACKEND,
                pinned_doc,
                pin_name,
                value.value(),
            )?);
        }
        out.sort_by(|a, b| (&a.doc, a.seq, &a.name).cmp(&(&b.doc, b.seq, &b.name)));
        Ok(out)
    }

    fn put_pin(&self, name: &CollectionName, pin: &Pin) -> Result<(), StorageError> {
        let (durability, durable) = self.next_commit_durability()?;
        let mut tx = self
            .db
            .begin_write()
            .map_err(|e| StorageError::backend(BACKEND, "pinning a version", e))?;
        tx.set_durability(durability)
            .map_err(|e| StorageError::backend(BACKEND, "pinning a version", e))?;
        {
            let collections = tx.open_table(COLLECTIONS).map_err(table_error)?;
            if read_meta(&collections, name)?.is_none() {
                return Err(StorageError::InvalidWrite(format!(
                    "collection {name} does not exist"
                )));
            }
            let mut pins = tx.open_table(PINS).map_err(table_error)?;
            pins.insert(
                (name.as_str(), pin.doc.as_str(), pin.name.as_str()),
                codec::encode_pin(pin).as_slice(),
            )
            .map_err(storage_error)?;
        }
        tx.commit()
            .map_err(|e| StorageError::backend(BACKEND, "pinning a version", e))?;
        self.note_commit(durable);
        Ok(())
    }

    fn delete_pin(
        &self,
        name: &CollectionName,
        doc: &DocId,
        pin_name: &str,
    ) -> Result<bool, StorageError> {
        let (durability, durable) = self.next_commit_durability()?;
        let mut tx = self
            .db
            .begin_write()
            .map_err(|e| StorageError::backend(BACKEND, "deleting a pin", e))?;
        tx.set_durability(durability)
            .map_err(|e| StorageError::backend(BACKEND, "deleting a pin", e))?;
        let removed = {
            let mut pins = tx.open_table(PINS).map_err(table_error)?;
            let removed = pins
                .remove((name.as_str(), doc.as_str(), pin_name))
                .map_err(storage_error)?;
            removed.is_some()
        };
        tx.commit()
            .map_err(|e| StorageError::backend(BACKEND, "deleting a pin", e))?;
        self.note_commit(durable);
        Ok(removed)
    }

    fn commit(&self, batch: &WriteBatch) -> Result<(), StorageError> {
        check_batch_shape(batch)?;
        let (durability, durable) = self.next_commit_durability()?;
        let mut tx = self
            .db
            .begin_write()
            .map_err(|e| StorageError::backend(BACKEND, "beginning a commit", e))?;
        tx.set_durability(durability)
            .map_err(|e| StorageError::backend(BACKEND, "beginning a commit", e))?;
        let applied = Tables::open(&tx).and_then(|mut tables| {
            batch
                .writes
                .iter()
                .try_for_each(|write| apply_write(&mut tables, write))
        });
        if let Err(err) = applied {
            // Nothing of the batch may stay behind.
            tx.abort()
                .map_err(|e| StorageError::backend(BACKEND, "aborting a commit", e))?;
            return Err(err);
        }
        tx.commit()
            .map_err(|e| StorageError::backend(BACKEND, "committing", e))?;
        self.note_commit(durable);
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        if self.durability == Durability::Immediate {
            return Ok(());
        }
        let tx = self
            .db
            .begin_write()
            .map_err(|e| StorageError::backend(BACKEND, "syncing", e))?;
        tx.commit()
            .map_err(|e| StorageError::backend(BACKEND, "syncing", e))?;
        self.note_commit(true);
        Ok(())
    }
}

/// The tables a commit writes, opened once per commit (not per collection:
/// a group commit carries many collections).
struct Tables<'txn> {
    collections: redb::Table<'txn, &'static str, &'static [u8]>,
    changes: redb::Table<'txn, (&'static str, u64), &'static [u8]>,
    index: redb::Table<'txn, (&'static str, &'static str, u64), u8>,
    peers: redb::Table<'txn, (&'static str, &'static str), (u64, u64)>,
    pins: redb::Table<'txn, (&'static str, &'static str, &'static str), &'static [u8]>,
}

impl<'txn> Tables<'txn> {
    fn open(tx: &'txn redb::WriteTransaction) -> Result<Self, StorageError> {
        Ok(Self {
            collections: tx.open_table(COLLECTIONS).map_err(table_error)?,
            changes: tx.open_table(CHANGES).map_err(table_error)?,
            index: tx.open_table(DOC_INDEX).map_err(table_error)?,
            peers: tx.open_table(PEERS).map_err(table_error)?,
            pins: tx.open_table(PINS).map_err(table_error)?,
        })
    }
}

/// Whether a pin of the compacted document lies strictly inside its range
/// (the compaction is then not applied; see `Compaction`).
fn pinned_inside(
    pins: &redb::Table<'_, (&'static str, &'static str, &'static str), &'static [u8]>,
    name: &str,
    compaction: &seqsync_engine::Compaction,
) -> Result<bool, StorageError> {
    let doc = compaction.doc.as_str();
    for entry in pins.range((name, doc, "")..).map_err(storage_error)? {
        let (key, value) = entry.map_err(storage_error)?;
        let (collection, pinned_doc, pin_name) = key.value();
        if collection != name || pinned_doc != doc {
            break;
        }
        let pin = codec::decode_pin(BACKEND, pinned_doc, pin_name, value.value())?;
        if pin.seq > compaction.after && pin.seq < compaction.through {
            return Ok(true);
        }
    }
    Ok(false)
}

fn apply_write(tables: &mut Tables<'_>, write: &CollectionWrite) -> Result<(), StorageError> {
    let name = write.collection.as_str();
    let Tables {
        collections,
        changes,
        index,
        peers,
        pins,
    } = tables;
    let stored = read_meta(collections, &write.collection)?;
    let plan = plan_collection_write(write, stored.as_ref())?;
    let meta = plan.meta;
    for (change, log_checksum) in write.append.iter().zip(plan.append_checksums) {
        let change = Change {
            log_checksum,
            ..change.clone()
        };
        insert_change(changes, index, name, &change)?;
    }
    for compaction in &write.compact {
        if pinned_inside(pins, name, compaction)? {
            // Pinned after this compaction was planned: left as it is.
            continue;
        }
        let mut target_checksum = 0;
        let mut target_committed_ms = 0;
        if compaction.snapshot.is_some() {
            let target = changes
                .get((name, compaction.through))
                .map_err(storage_error)?
                .map(|v| codec::decode_change(BACKEND, compaction.through, v.value()))
                .transpose()?;
            let replaceable = target
                .as_ref()
                .is_some_and(|c| c.doc == compaction.doc && is_covered(compaction, c.seq, c.kind));
            if !replaceable {
                return Err(StorageError::InvalidWrite(format!(
                    "collection {name}: no update of {} at seq {} for the snapshot to replace",
                    compaction.doc, compaction.through
                )));
            }
            target_checksum = target.as_ref().map_or(0, |c| c.log_checksum);
            target_committed_ms = target.map_or(0, |c| c.committed_ms);
        }
        let doc = compaction.doc.as_str();
        let mut covered = Vec::new();
        for entry in index
            .range((name, doc, 0)..=(name, doc, compaction.through))
            .map_err(storage_error)?
        {
            let (key, kind) = entry.map_err(storage_error)?;
            let seq = key.value().2;
            let kind = ChangeKind::from_code(kind.value())
                .ok_or_else(|| corrupt(format!("doc_index entry {seq} has an unknown kind")))?;
            if is_covered(compaction, seq, kind) {
                covered.push(seq);
            }
        }
        for seq in covered {
            changes.remove((name, seq)).map_err(storage_error)?;
            index.remove((name, doc, seq)).map_err(storage_error)?;
        }
        if let Some(snapshot) = snapshot_change(compaction, target_checksum, target_committed_ms) {
            insert_change(changes, index, name, &snapshot)?;
        }
    }
    for peer in &write.peers {
        let stored = peers
            .get((name, peer.peer.as_str()))
            .map_err(storage_error)?
            .map(|v| v.value());
        let (acked, last_seen_ms) = match stored {
            Some((acked, seen)) => (acked.max(peer.acked), seen.max(peer.last_seen_ms)),
            None => (peer.acked, peer.last_seen_ms),
        };
        peers
            .insert((name, peer.peer.as_str()), (acked, last_seen_ms))
            .map_err(storage_error)?;
    }
    collections
        .insert(name, &codec::encode_meta(&meta)[..])
        .map_err(storage_error)?;
    Ok(())
}

fn insert_change(
    changes: &mut redb::Table<'_, (&'static str, u64), &'static [u8]>,
    index: &mut redb::Table<'_, (&'static str, &'static str, u64), u8>,
    name: &str,
    change: &Change,
) -> Result<(), StorageError> {
    changes
        .insert((name, change.seq), codec::encode_change(change).as_slice())
        .map_err(storage_error)?;
    index
        .insert((name, change.doc.as_str(), change.seq), change.kind.code())
        .map_err(storage_error)?;
    Ok(())
}

fn read_meta(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &CollectionName,
) -> Result<Option<CollectionMeta>, StorageError> {
    table
        .get(name.as_str())
        .map_err(storage_error)?
        .map(|v| codec::decode_meta(BACKEND, v.value()))
        .transpose()
}

fn storage_error(err: redb::StorageError) -> StorageError {
    match err {
        redb::StorageError::Corrupted(detail) => corrupt(detail),
        other => StorageError::backend(BACKEND, "accessing the database", other),
    }
}

fn table_error(err: redb::TableError) -> StorageError {
    StorageError::backend(BACKEND, "opening a table", err)
}

fn corrupt(detail: String) -> StorageError {
    StorageError::Corrupt {
        backend: BACKEND,
        detail,
    }
}
