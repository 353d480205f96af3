//! `SqliteStorage`: the store in one SQLite database in WAL mode.
//!
//! Layout: `<path>/seqsync.sqlite3` (plus SQLite's `-wal` and `-shm` files)
//! and the directory lock `<path>/seqsync.lock`.
//!
//! One writer connection behind a mutex runs every commit as a
//! `BEGIN IMMEDIATE` transaction; readers take connections from a small pool,
//! and WAL lets them read a consistent snapshot while a commit is under way.
//!
//! Durability, honestly:
//! - `immediate`: `synchronous = FULL`. The WAL is fsynced at every commit;
//!   a commit that returned survives a process crash and a power loss.
//! - `eventual`: `synchronous = NORMAL`. The WAL is fsynced only at
//!   checkpoints; a commit that returned survives a process crash (it is in the
//!   OS page cache) but the last commits may be lost on power loss or an OS
//!   crash. The database is never corrupted either way.
//!
//! Files: this one (the store, its connections and the `Storage` trait),
//! `schema.rs` (layout and format migrations), `write.rs` (one collection's
//! write inside a commit) and `rows.rs` (row codecs).

mod rows;
mod schema;
mod write;

use std::num::NonZeroUsize;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use lru::LruCache;
use rows::{clamp_limit, collect_changes, meta_from_row, read_meta, to_i64};
use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};
use schema::{check_or_create_schema, head_of, PAGE_SIZE_BYTES, WAL_AUTOCHECKPOINT_PAGES};
use seqsync_engine::{
    check_batch_shape, Change, ChangeKind, ChangesPage, CollectionMeta, CollectionName, DocId,
    DocumentInfo, Durability, PeerId, PeerRecord, Pin, Seq, Storage, StorageError, WriteBatch,
};
use write::apply_write;

use crate::dir_lock::DirLock;

const BACKEND: &str = "sqlite";

/// File name of the database inside the storage directory.
pub const SQLITE_FILE_NAME: &str = "seqsync.sqlite3";

/// Idle reader connections kept for reuse; more may exist while busy.
const MAX_IDLE_READERS: usize = 8;

/// How long a connection waits on SQLite's own locks (checkpoints).
const BUSY_TIMEOUT_MS: u64 = 5_000;

/// The writer connection and what it knows of the collections it wrote.
struct WriterState {
    conn: Connection,
    /// Each collection's row id and metadata as of the last commit that
    /// wrote it. This store is the only writer of its file (the directory
    /// lock), so after a successful commit this is what the file holds; a
    /// commit then skips reading the metadata (two queries per collection
    /// per commit, which for hundreds of busy collections was a third of the
    /// writer's time). Updated only after a commit succeeds, cleared when
    /// one fails.
    known: LruCache<CollectionName, (i64, CollectionMeta)>,
}

/// Collections whose metadata the writer keeps (beyond this it forgets the
/// least recently written and reads it again when it is next written).
const MAX_KNOWN_COLLECTIONS: usize = 65_536;

/// A [`Storage`] on SQLite. See the module docs for layout and durability.
pub struct SqliteStorage {
    path: PathBuf,
    durability: Durability,
    writer: Mutex<WriterState>,
    readers: Mutex<Vec<Connection>>,
    _lock: DirLock,
}

impl SqliteStorage {
    /// The documents of `name` with an id after `after`, in id order, at
    /// most `limit` (all when `None`): one aggregate over the changes'
    /// (cid, doc) index, seeking to `after`.
    fn documents_after(
        &self,
        name: &CollectionName,
        after: Option<&DocId>,
        limit: Option<usize>,
    ) -> Result<Vec<DocumentInfo>, StorageError> {
        // Ids are never empty, so "" is before every id; LIMIT -1 is none.
        let after = after.map_or("", DocId::as_str);
        let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        self.with_reader(|tx| {
            let Some((cid, _)) = read_meta(tx, name)? else {
                return Ok(Vec::new());
            };
            let mut stmt = tx
                .prepare_cached(
                    "SELECT doc, max(seq), max(kind = ?2), sum(length(payload)) FROM changes \
                     WHERE cid = ?1 AND doc > ?3 GROUP BY doc ORDER BY doc LIMIT ?4",
                )
                .map_err(|e| sql_error("listing documents", e))?;
            let rows = stmt
                .query_map(
                    params![cid, ChangeKind::Delete.code(), after, limit],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, bool>(2)?,
                            row.get::<_, i64>(3)?,
                        ))
                    },
                )
                .map_err(|e| sql_error("listing documents", e))?;
            let mut out = Vec::new();
            for row in rows {
                let (doc, last_seq, deleted, stored_bytes) =
                    row.map_err(|e| sql_error("listing documents", e))?;
                out.push(DocumentInfo {
                    doc: DocId::new(doc).map_err(|e| corrupt(e.to_string()))?,
                    last_seq: last_seq as u64,
                    deleted,
                    stored_bytes: stored_bytes as u64,
                });
            }
            Ok(out)
        })
    }

    /// Opens or creates the store in directory `dir`.
    ///
    /// Blocking. Errors: [`StorageError::AlreadyOpen`] if another engine has
    /// it open, [`StorageError::NotAStore`] if the file is not a seqsync SQLite
    /// store, [`StorageError::UnsupportedFormat`] for a newer format.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self, StorageError> {
        let lock = DirLock::acquire(dir, BACKEND)?;
        let path = dir.join(SQLITE_FILE_NAME);
        let not_a_store = |detail: String| StorageError::NotAStore {
            backend: BACKEND,
            path: path.clone(),
            detail,
        };
        let writer = Connection::open(&path).map_err(|e| not_a_store(e.to_string()))?;
        writer
            .busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))
            .map_err(|e| sql_error("configuring", e))?;
        // A new database takes this page size; an existing one keeps its own
        // (the pragma reads nothing and is ignored once pages exist). It must
        // come before WAL mode, which writes the first page.
        writer
            .execute_batch(&format!("PRAGMA page_size = {PAGE_SIZE_BYTES};"))
            .map_err(|e| not_a_store(e.to_string()))?;
        // The first statement that reads the file tells a foreign file apart.
        let mode: String = writer
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(|e| not_a_store(e.to_string()))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(not_a_store(format!(
                "cannot switch to WAL (journal mode {mode})"
            )));
        }
        let synchronous = match durability {
            Durability::Immediate => "FULL",
            Durability::Eventual => "NORMAL",
        };
        writer
            .execute_batch(&format!(
                "PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = OFF; \
                 PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES};"
            ))
            .map_err(|e| sql_error("configuring", e))?;
        check_or_create_schema(&writer, &path)?;
        Ok(Self {
            path,
            durability,
            writer: Mutex::new(WriterState {
                conn: writer,
                known: LruCache::new(
                    NonZeroUsize::new(MAX_KNOWN_COLLECTIONS).unwrap_or(NonZeroUsize::MIN),
                ),
            }),
            readers: Mutex::new(Vec::new()),
            _lock: lock,
        })
    }

    /// The database file.
    pub fn file_path(&self) -> &Path {
        &self.path
    }

    fn with_reader<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let pooled = lock(&self.readers)?.pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(|e| sql_error("opening a reader", e))?;
                conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))
                    .map_err(|e| sql_error("opening a reader", e))?;
                conn
            }
        };
        // One read transaction per call: every statement sees one snapshot.
        let result = {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Deferred)
                .map_err(|e| sql_error("beginning a read", e))?;
            let result = f(&tx);
            tx.finish().map_err(|e| sql_error("ending a read", e))?;
            result
        };
        let mut idle = lock(&self.readers)?;
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        result
    }
}

impl Storage for SqliteStorage {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn durability(&self) -> Durability {
        self.durability
    }

    fn collection(&self, name: &CollectionName) -> Result<Option<CollectionMeta>, StorageError> {
        self.with_reader(|tx| Ok(read_meta(tx, name)?.map(|(_, meta)| meta)))
    }

    fn list_collections(
        &self,
        after: Option<&CollectionName>,
        limit: usize,
    ) -> Result<Vec<(CollectionName, CollectionMeta)>, StorageError> {
        self.with_reader(|tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT name, epoch, id, schema_version, created_ms \
                     FROM collections WHERE name > ?1 ORDER BY name LIMIT ?2",
                )
                .map_err(|e| sql_error("listing collections", e))?;
            let rows = stmt
                .query_map(
                    params![after.map_or("", |a| a.as_str()), clamp_limit(limit)],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, Vec<u8>>(1)?,
                            row.get::<_, i64>(2)?,
                            row.get::<_, i64>(3)?,
                            row.get::<_, i64>(4)?,
                        ))
                    },
                )
                .map_err(|e| sql_error("listing collections", e))?;
            let mut out = Vec::new();
            for row in rows {
                let (name, epoch, cid, schema, created) =
                    row.map_err(|e| sql_error("listing collections", e))?;
                let name = CollectionName::new(name).map_err(|e| corrupt(e.to_string()))?;
                let head = head_of(tx, cid)?;
                out.push((name, meta_from_row(&epoch, head, schema, created)?));
            }
            Ok(out)
        })
    }

    fn read_changes(
        &self,
        name: &CollectionName,
        after: Seq,
        limit: usize,
    ) -> Result<Option<ChangesPage>, StorageError> {
        self.with_reader(|tx| {
            let Some((cid, meta)) = read_meta(tx, name)? else {
                return Ok(None);
            };
            let mut stmt = tx
                .prepare_cached(
                    "SELECT seq, doc, kind, schema_version, origin, payload, checksum, author, \
                     committed_ms FROM changes \
                     WHERE cid = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )
                .map_err(|e| sql_error("reading changes", e))?;
            let changes = collect_changes(
                stmt.query(params![
                    cid,
                    to_i64(after.min(i64::MAX as u64))?,
                    clamp_limit(limit)
                ])
                .map_err(|e| sql_error("reading changes", e))?,
            )?;
            Ok(Some(ChangesPage { meta, changes }))
        })
    }

    fn read_document_changes(
        &self,
        name: &CollectionName,
        doc: &DocId,
        after: Seq,
        limit: usize,
    ) -> Result<Option<ChangesPage>, StorageError> {
        self.with_reader(|tx| {
            let Some((cid, meta)) = read_meta(tx, name)? else {
                return Ok(None);
            };
            // Seeks `changes_by_doc` (cid, doc, seq) straight to `after`.
            let mut stmt = tx
                .prepare_cached(
                    "SELECT seq, doc, kind, schema_version, origin, payload, checksum, author, \
                     committed_ms FROM changes \
                     INDEXED BY changes_by_doc \
                     WHERE cid = ?1 AND doc = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
                )
                .map_err(|e| sql_error("reading a document's changes", e))?;
            let changes = collect_changes(
                stmt.query(params![
                    cid,
                    doc.as_str(),
                    to_i64(after.min(i64::MAX as u64))?,
                    clamp_limit(limit)
                ])
                .map_err(|e| sql_error("reading a document's changes", e))?,
            )?;
            Ok(Some(ChangesPage { meta, changes }))
        })
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
        self.with_reader(|tx| {
            let Some((cid, _)) = read_meta(tx, name)? else {
                return Ok(());
            };
            // The document is known: only seq, kind, schema and origin are
            // read per row (the doc column would be parsed 100,000 times for
            // a large document).
            let mut stmt = tx
                .prepare_cached(
                    "SELECT seq, kind, schema_version, origin, payload, checksum, author, \
                     committed_ms FROM changes \
                     INDEXED BY changes_by_doc WHERE cid = ?1 AND doc = ?2 ORDER BY seq",
                )
                .map_err(|e| sql_error("reading a document", e))?;
            let mut rows = stmt
                .query(params![cid, doc.as_str()])
                .map_err(|e| sql_error("reading a document", e))?;
            let read = |e| sql_error("reading a document", e);
            while let Some(row) = rows.next().map_err(read)? {
                let seq: i64 = row.get(0).map_err(read)?;
                let kind: u8 = row.get(1).map_err(read)?;
                let origin: Option<String> = row.get(3).map_err(read)?;
                let change = Change {
                    seq: u64::try_from(seq).map_err(|_| corrupt(format!("negative seq {seq}")))?,
                    doc: doc.clone(),
                    kind: ChangeKind::from_code(kind)
                        .ok_or_else(|| corrupt(format!("change {seq} has unknown kind {kind}")))?,
                    schema_version: row.get(2).map_err(read)?,
                    origin: origin
                        .map(PeerId::new)
                        .transpose()
                        .map_err(|e| corrupt(e.to_string()))?,
                    payload: row.get(4).map_err(read)?,
                    log_checksum: row.get::<_, i64>(5).map_err(read)? as u64,
                    author: row.get(6).map_err(read)?,
                    committed_ms: u64::try_from(row.get::<_, i64>(7).map_err(read)?).unwrap_or(0),
                };
                if visit(change).is_break() {
                    break;
                }
            }
            Ok(())
        })
    }

    fn documents(&self, name: &CollectionName) -> Result<Vec<DocumentInfo>, StorageError> {
        self.documents_after(name, None, None)
    }

    fn documents_page(
        &self,
        name: &CollectionName,
        after: Option<&DocId>,
        limit: usize,
    ) -> Result<Vec<DocumentInfo>, StorageError> {
        self.documents_after(name, after, Some(limit))
    }

    fn peers(&self, name: &CollectionName) -> Result<Vec<PeerRecord>, StorageError> {
        self.with_reader(|tx| {
            let Some((cid, _)) = read_meta(tx, name)? else {
                return Ok(Vec::new());
            };
            let mut stmt = tx
                .prepare_cached(
                    "SELECT peer, acked, last_seen_ms FROM peers WHERE cid = ?1 ORDER BY peer",
                )
                .map_err(|e| sql_error("listing peers", e))?;
            let rows = stmt
                .query_map(params![cid], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })
                .map_err(|e| sql_error("listing peers", e))?;
            let mut out = Vec::new();
            for row in rows {
                let (peer, acked, last_seen) = row.map_err(|e| sql_error("listing peers", e))?;
                out.push(PeerRecord {
                    peer: PeerId::new(peer).map_err(|e| corrupt(e.to_string()))?,
                    acked: acked as u64,
                    last_seen_ms: last_seen as u64,
                });
            }
            Ok(out)
        })
    }

    fn pins(&self, name: &CollectionName, doc: Option<&DocId>) -> Result<Vec<Pin>, StorageError> {
        self.with_reader(|tx| {
            let Some((cid, _)) = read_meta(tx, name)? else {
                return Ok(Vec::new());
            };
            let mut stmt = tx
                .prepare_cached(
                    "SELECT doc, name, seq, created_ms, author FROM pins \
                     WHERE cid = ?1 AND (?2 IS NULL OR doc = ?2) ORDER BY doc, seq, name",
                )
                .map_err(|e| sql_error("listing pins", e))?;
            let rows = stmt
                .query_map(params![cid, doc.map(DocId::as_str)], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, Option<String>>(4)?,
                    ))
                })
                .map_err(|e| sql_error("listing pins", e))?;
            let mut out = Vec::new();
            for row in rows {
                let (doc, pin_name, seq, created, author) =
                    row.map_err(|e| sql_error("listing pins", e))?;
                out.push(Pin {
                    doc: DocId::new(doc).map_err(|e| corrupt(e.to_string()))?,
                    name: pin_name,
                    seq: u64::try_from(seq).map_err(|_| corrupt(format!("pin at seq {seq}")))?,
                    created_ms: u64::try_from(created).unwrap_or(0),
                    author,
                });
            }
            Ok(out)
        })
    }

    fn put_pin(&self, name: &CollectionName, pin: &Pin) -> Result<(), StorageError> {
        let mut writer = lock(&self.writer)?;
        let tx = writer
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_error("pinning a version", e))?;
        let Some((cid, _)) = read_meta(&tx, name)? else {
            return Err(StorageError::InvalidWrite(format!(
                "collection {name} does not exist"
            )));
        };
        tx.execute(
            "INSERT INTO pins (cid, doc, name, seq, created_ms, author) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (cid, doc, name) DO UPDATE SET seq = excluded.seq, \
             created_ms = excluded.created_ms, author = excluded.author",
            params![
                cid,
                pin.doc.as_str(),
                pin.name,
                to_i64(pin.seq)?,
                to_i64(pin.created_ms).unwrap_or(i64::MAX),
                pin.author
            ],
        )
        .map_err(|e| sql_error("pinning a version", e))?;
        tx.commit().map_err(|e| sql_error("pinning a version", e))
    }

    fn delete_pin(
        &self,
        name: &CollectionName,
        doc: &DocId,
        pin_name: &str,
    ) -> Result<bool, StorageError> {
        let mut writer = lock(&self.writer)?;
        let tx = writer
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_error("deleting a pin", e))?;
        let Some((cid, _)) = read_meta(&tx, name)? else {
            return Ok(false);
        };
        let removed = tx
            .execute(
                "DELETE FROM pins WHERE cid = ?1 AND doc = ?2 AND name = ?3",
                params![cid, doc.as_str(), pin_name],
            )
            .map_err(|e| sql_error("deleting a pin", e))?;
        tx.commit().map_err(|e| sql_error("deleting a pin", e))?;
        Ok(removed > 0)
    }

    fn commit(&self, batch: &WriteBatch) -> Result<(), StorageError> {
        check_batch_shape(batch)?;
        let mut writer = lock(&self.writer)?;
        let WriterState { conn, known } = &mut *writer;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_error("beginning a commit", e))?;
        let mut after = Vec::with_capacity(batch.writes.len());
        for write in &batch.writes {
            let stored = match known.get(&write.collection) {
                Some(cached) => Some(cached.clone()),
                None => read_meta(&tx, &write.collection)?,
            };
            // An error returns early; dropping `tx` rolls everything back,
            // and `known` is untouched.
            after.push((write.collection.clone(), apply_write(&tx, write, stored)?));
        }
        if let Err(err) = tx.commit() {
            // Whatever the file now holds, read it again next time.
            known.clear();
            return Err(sql_error("committing", err));
        }
        for (collection, stored) in after {
            known.put(collection, stored);
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        if self.durability == Durability::Immediate {
            return Ok(());
        }
        // A full checkpoint fsyncs the WAL and the database file.
        let writer = lock(&self.writer)?;
        writer
            .conn
            .query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))
            .map_err(|e| sql_error("checkpointing", e))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>, StorageError> {
    mutex
        .lock()
        .map_err(|_| StorageError::backend(BACKEND, "locking a connection", "poisoned by a panic"))
}

fn sql_error(during: &'static str, err: rusqlite::Error) -> StorageError {
    StorageError::backend(BACKEND, during, err)
}

fn corrupt(detail: String) -> StorageError {
    StorageError::Corrupt {
        backend: BACKEND,
        detail,
    }
}
