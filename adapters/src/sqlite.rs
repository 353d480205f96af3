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

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use seqsync_engine::{
    check_batch_shape, plan_collection_write, snapshot_change, Change, ChangeKind, ChangesPage,
    CollectionMeta, CollectionName, CollectionWrite, DocId, DocumentInfo, Durability, Epoch,
    PeerId, PeerRecord, Seq, Storage, StorageError, WriteBase, WriteBatch,
};

use crate::dir_lock::DirLock;

const BACKEND: &str = "sqlite";
/// File name of the database inside the storage directory.
pub const SQLITE_FILE_NAME: &str = "seqsync.sqlite3";
/// Version of the table layout below. Bump it with a migration when the
/// layout changes (see `migrate_v1_to_v2`).
///
/// - 1: `changes` a rowid table; the head stored in `collections` and
///   updated by every commit.
/// - 2: `changes` `WITHOUT ROWID` (one B-tree instead of a rowid tree plus a
///   primary-key index) and no stored head: the head is the highest stored
///   seq, so a commit of a few changes touches two leaves (the log and the
///   document index) instead of four pages. This is what cut the bytes
///   written per acked edit. Queries of one document say `INDEXED BY
///   changes_by_doc`: with the log `WITHOUT ROWID`, SQLite's planner
///   otherwise prefers the primary key (cid, seq) and scans the whole
///   collection's log for one document.
/// - 3: every change carries its log checksum (`checksum`).
/// - 4: `checksum` before `payload` in `changes`. SQLite stores a record's
///   columns in order and a large payload's tail in a chain of overflow
///   pages, so reading a column *after* the payload walks the whole chain:
///   reading the head's checksum (every `read_changes`, so every reader that
///   asks for the head) read all of a 20 MB head change, 20,000 pages, and
///   150 clients joining such a document cost 3× the server CPU of format 2.
const FORMAT_VERSION: u64 = 4;
/// Page size of a new database. A commit of a few small updates dirties a
/// handful of pages and the WAL writes each whole; small pages keep that
/// close to what changed. Stores created with another page size keep it.
const PAGE_SIZE_BYTES: u32 = 1024;
/// WAL pages after which a commit checkpoints them into the database file.
/// A checkpoint writes each page changed since the last one once, however
/// often it changed: the hot pages (the log's last leaf, the index leaves of
/// busy documents) are rewritten at every checkpoint, so checkpointing less
/// often writes less per commit. 40,000 pages of 1 KiB let the WAL grow to
/// about 40 MiB (SQLite's default is 1,000); with 300 busy collections,
/// checkpointing every 10,000 pages cost about 0.5 KB more per edit.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 40_000;
/// Idle reader connections kept for reuse; more may exist while busy.
const MAX_IDLE_READERS: usize = 8;
/// How long a connection waits on SQLite's own locks (checkpoints).
const BUSY_TIMEOUT_MS: u64 = 5_000;

const SCHEMA: &str = "
CREATE TABLE seqsync_format (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE collections (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    epoch BLOB NOT NULL,
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
    checksum INTEGER NOT NULL DEFAULT 0,
    payload BLOB NOT NULL,
    PRIMARY KEY (cid, seq)
) WITHOUT ROWID;
CREATE INDEX changes_by_doc ON changes (cid, doc, seq);
CREATE TABLE peers (
    cid INTEGER NOT NULL,
    peer TEXT NOT NULL,
    acked INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (cid, peer)
) WITHOUT ROWID;
";

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
    known: HashMap<CollectionName, (i64, CollectionMeta)>,
}

/// Collections whose metadata the writer keeps (beyond this it forgets all
/// and reads them again).
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
                known: HashMap::new(),
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

fn check_or_create_schema(conn: &Connection, path: &Path) -> Result<(), StorageError> {
    let has_format: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'seqsync_format'",
            [],
            |row| row.get::<_, i64>(0),
        )
        .map_err(|e| sql_error("reading the schema", e))?
        > 0;
    if has_format {
        let found: Option<i64> = conn
            .query_row(
                "SELECT value FROM seqsync_format WHERE key = 'format'",
                [],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| sql_error("reading the format version", e))?;
        let found = found.ok_or_else(|| StorageError::NotAStore {
            backend: BACKEND,
            path: path.to_owned(),
            detail: "seqsync_format table without a format version".to_owned(),
        })?;
        if found == 1 {
            migrate_v1_to_v2(conn, path)?;
            migrate_v2_to_v3(conn)?;
            return migrate_v3_to_v4(conn);
        }
        if found == 2 {
            migrate_v2_to_v3(conn)?;
            return migrate_v3_to_v4(conn);
        }
        if found == 3 {
            return migrate_v3_to_v4(conn);
        }
        if found != FORMAT_VERSION as i64 {
            return Err(StorageError::UnsupportedFormat {
                backend: BACKEND,
                path: path.to_owned(),
                found: found as u64,
                supported: FORMAT_VERSION,
            });
        }
        return Ok(());
    }
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
        .map_err(|e| sql_error("reading the schema", e))?;
    if tables > 0 {
        return Err(StorageError::NotAStore {
            backend: BACKEND,
            path: path.to_owned(),
            detail: "an SQLite database with other tables".to_owned(),
        });
    }
    conn.execute_batch(&format!(
        "BEGIN; {SCHEMA} INSERT INTO seqsync_format (key, value) VALUES ('format', {FORMAT_VERSION}); COMMIT;"
    ))
    .map_err(|e| sql_error("creating the schema", e))
}

/// Rewrites a format-1 store as format 2, in one transaction: the log moves
/// to a `WITHOUT ROWID` table and the stored head column goes (the head is
/// the highest stored seq). A store whose stored head disagrees with its
/// log is refused as corrupt before anything changes; a crash during the
/// migration leaves format 1, which the next open migrates again.
fn migrate_v1_to_v2(conn: &Connection, path: &Path) -> Result<(), StorageError> {
    let tx = conn
        .unchecked_transaction()
        .map_err(|e| sql_error("migrating to format 2", e))?;
    let mismatched: i64 = tx
        .query_row(
            "SELECT count(*) FROM collections c WHERE c.head != \
             coalesce((SELECT max(seq) FROM changes WHERE cid = c.id), 0)",
            [],
            |row| row.get(0),
        )
        .map_err(|e| sql_error("checking heads before migrating", e))?;
    if mismatched > 0 {
        return Err(corrupt(format!(
            "{}: {mismatched} collection(s) whose stored head is not their last seq; \
             not migrating it to format 2",
            path.display()
        )));
    }
    tx.execute_batch(
        "CREATE TABLE changes_v2 (
            cid INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            doc TEXT NOT NULL,
            kind INTEGER NOT NULL,
            schema_version INTEGER NOT NULL,
            origin TEXT,
            payload BLOB NOT NULL,
            PRIMARY KEY (cid, seq)
        ) WITHOUT ROWID;
        INSERT INTO changes_v2 (cid, seq, doc, kind, schema_version, origin, payload)
            SELECT cid, seq, doc, kind, schema_version, origin, payload FROM changes ORDER BY cid, seq;
        DROP TABLE changes;
        ALTER TABLE changes_v2 RENAME TO changes;
        CREATE INDEX changes_by_doc ON changes (cid, doc, seq);
        ALTER TABLE collections DROP COLUMN head;
        UPDATE seqsync_format SET value = 2 WHERE key = 'format';",
    )
    .map_err(|e| sql_error("migrating to format 2", e))?;
    tx.commit()
        .map_err(|e| sql_error("committing the migration to format 2", e))?;
    Ok(())
}

/// Adds the log checksum to a format-2 store, in one transaction: every
/// change gets the running checksum through itself, computed in seq order
/// per collection. Snapshots written before count as ordinary changes (what
/// they replaced is gone), so a migrated store's checksums start here. A
/// crash leaves format 2, which the next open migrates again.
fn migrate_v2_to_v3(conn: &Connection) -> Result<(), StorageError> {
    let failed = |e| sql_error("migrating to format 3", e);
    let tx = conn.unchecked_transaction().map_err(failed)?;
    tx.execute_batch("ALTER TABLE changes ADD COLUMN checksum INTEGER NOT NULL DEFAULT 0;")
        .map_err(failed)?;
    let collections: Vec<(i64, Vec<u8>)> = {
        let mut stmt = tx
            .prepare("SELECT id, epoch FROM collections ORDER BY id")
            .map_err(failed)?;
        let rows = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(failed)?;
        rows.collect::<Result<_, _>>().map_err(failed)?
    };
    for (cid, epoch) in collections {
        let epoch = Epoch(
            epoch
                .as_slice()
                .try_into()
                .map_err(|_| corrupt(format!("epoch of {} bytes", epoch.len())))?,
        );
        let changes = {
            let mut stmt = tx
                .prepare(
                    "SELECT seq, doc, kind, schema_version, origin, payload, checksum                      FROM changes WHERE cid = ?1 ORDER BY seq",
                )
                .map_err(failed)?;
            let rows = stmt.query(params![cid]).map_err(failed)?;
            collect_changes(rows)?
        };
        let mut update = tx
            .prepare("UPDATE changes SET checksum = ?3 WHERE cid = ?1 AND seq = ?2")
            .map_err(failed)?;
        let mut running = 0u64;
        for change in &changes {
            running = running.wrapping_add(seqsync_engine::change_checksum(&epoch, change));
            update
                .execute(params![cid, to_i64(change.seq)?, running as i64])
                .map_err(failed)?;
        }
    }
    tx.execute_batch("UPDATE seqsync_format SET value = 3 WHERE key = 'format';")
        .map_err(failed)?;
    tx.commit().map_err(failed)
}

/// Rewrites a format-3 store as format 4, in one transaction: `changes` is
/// copied into a table whose `checksum` comes before `payload` (SQLite
/// cannot reorder columns in place), so reading a change's checksum never
/// walks its payload's overflow pages. A crash leaves format 3, which the
/// next open migrates again. Costs one copy of the log, once.
fn migrate_v3_to_v4(conn: &Connection) -> Result<(), StorageError> {
    let failed = |e| sql_error("migrating to format 4", e);
    let tx = conn.unchecked_transaction().map_err(failed)?;
    tx.execute_batch(
        "CREATE TABLE changes_v4 (
            cid INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            doc TEXT NOT NULL,
            kind INTEGER NOT NULL,
            schema_version INTEGER NOT NULL,
            origin TEXT,
            checksum INTEGER NOT NULL DEFAULT 0,
            payload BLOB NOT NULL,
            PRIMARY KEY (cid, seq)
        ) WITHOUT ROWID;
        INSERT INTO changes_v4 (cid, seq, doc, kind, schema_version, origin, checksum, payload)
            SELECT cid, seq, doc, kind, schema_version, origin, checksum, payload
            FROM changes ORDER BY cid, seq;
        DROP TABLE changes;
        ALTER TABLE changes_v4 RENAME TO changes;
        CREATE INDEX changes_by_doc ON changes (cid, doc, seq);
        UPDATE seqsync_format SET value = 4 WHERE key = 'format';",
    )
    .map_err(failed)?;
    tx.commit().map_err(failed)
}

/// The head of collection `cid`: its highest stored seq, or 0 (format 2
/// stores no head; compaction never removes a collection's last change,
/// since a snapshot takes the seq of the last change it covers and a
/// tombstone is never covered). One seek to the end of the primary key,
/// written as `ORDER BY … DESC LIMIT 1` on purpose: as `max(seq)` inside a
/// query of `collections`, SQLite stepped through every change of the
/// collection, on every commit.
/// Also returns the log checksum stored with the head change (0 if empty).
fn head_of(tx: &rusqlite::Transaction<'_>, cid: i64) -> Result<(i64, i64), StorageError> {
    tx.prepare_cached("SELECT seq, checksum FROM changes WHERE cid = ?1 ORDER BY seq DESC LIMIT 1")
        .and_then(|mut s| {
            s.query_row(params![cid], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()
        })
        .map(|head| head.unwrap_or((0, 0)))
        .map_err(|e| sql_error("reading the head", e))
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
                    "SELECT seq, doc, kind, schema_version, origin, payload, checksum FROM changes \
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
                    "SELECT seq, doc, kind, schema_version, origin, payload, checksum FROM changes \
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
                    "SELECT seq, kind, schema_version, origin, payload, checksum FROM changes \
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
                };
                if visit(change).is_break() {
                    break;
                }
            }
            Ok(())
        })
    }

    fn documents(&self, name: &CollectionName) -> Result<Vec<DocumentInfo>, StorageError> {
        self.with_reader(|tx| {
            let Some((cid, _)) = read_meta(tx, name)? else {
                return Ok(Vec::new());
            };
            let mut stmt = tx
                .prepare_cached(
                    "SELECT doc, max(seq), max(kind = ?2) FROM changes WHERE cid = ?1 \
                     GROUP BY doc ORDER BY doc",
                )
                .map_err(|e| sql_error("listing documents", e))?;
            let rows = stmt
                .query_map(params![cid, ChangeKind::Delete.code()], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, bool>(2)?,
                    ))
                })
                .map_err(|e| sql_error("listing documents", e))?;
            let mut out = Vec::new();
            for row in rows {
                let (doc, last_seq, deleted) =
                    row.map_err(|e| sql_error("listing documents", e))?;
                out.push(DocumentInfo {
                    doc: DocId::new(doc).map_err(|e| corrupt(e.to_string()))?,
                    last_seq: last_seq as u64,
                    deleted,
                });
            }
            Ok(out)
        })
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
        if known.len() + after.len() > MAX_KNOWN_COLLECTIONS {
            known.clear();
        }
        known.extend(after);
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

/// Applies one collection's write inside `tx`, given its stored metadata
/// (`None`: the collection does not exist); returns its row id and its
/// metadata after the write.
fn apply_write(
    tx: &rusqlite::Transaction<'_>,
    write: &CollectionWrite,
    stored: Option<(i64, CollectionMeta)>,
) -> Result<(i64, CollectionMeta), StorageError> {
    let plan = plan_collection_write(write, stored.as_ref().map(|(_, meta)| meta))?;
    let meta = plan.meta;
    let stored_schema = stored.as_ref().map(|(_, meta)| meta.schema_version);
    let cid = match (stored, write.base) {
        (Some((cid, _)), _) => cid,
        (None, WriteBase::Create { .. }) => {
            tx.prepare_cached(
                "INSERT INTO collections (name, epoch, schema_version, created_ms) \
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    write.collection.as_str(),
                    &meta.epoch.0[..],
                    meta.schema_version,
                    to_i64(meta.created_ms).unwrap_or(i64::MAX)
                ])
            })
            .map_err(|e| sql_error("creating a collection", e))?;
            tx.last_insert_rowid()
        }
        (None, _) => {
            return Err(StorageError::InvalidWrite(format!(
                "collection {} does not exist",
                write.collection
            )))
        }
    };
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO changes \
                 (cid, seq, doc, kind, schema_version, origin, payload, checksum) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(|e| sql_error("appending", e))?;
        let mut insert_change = |change: &Change, log_checksum: u64| -> Result<(), StorageError> {
            insert
                .execute(params![
                    cid,
                    to_i64(change.seq)?,
                    change.doc.as_str(),
                    change.kind.code(),
                    change.schema_version,
                    change.origin.as_ref().map(|p| p.as_str()),
                    &change.payload,
                    log_checksum as i64
                ])
                .map_err(|e| sql_error("appending", e))?;
            Ok(())
        };
        for (change, log_checksum) in write.append.iter().zip(&plan.append_checksums) {
            insert_change(change, *log_checksum)?;
        }
        for compaction in &write.compact {
            let mut target_checksum = 0u64;
            if compaction.snapshot.is_some() {
                let target: Option<(String, u8, i64)> = tx
                    .prepare_cached(
                        "SELECT doc, kind, checksum FROM changes WHERE cid = ?1 AND seq = ?2",
                    )
                    .and_then(|mut s| {
                        s.query_row(
                            params![cid, to_i64(compaction.through).unwrap_or(-1)],
                            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                        )
                        .optional()
                    })
                    .map_err(|e| sql_error("compacting", e))?;
                target_checksum = target.as_ref().map_or(0, |t| t.2 as u64);
                let replaceable = target.is_some_and(|(doc, kind, _)| {
                    doc == compaction.doc.as_str()
                        && matches!(
                            ChangeKind::from_code(kind),
                            Some(ChangeKind::Update | ChangeKind::Snapshot)
                        )
                });
                if !replaceable {
                    return Err(StorageError::InvalidWrite(format!(
                        "collection {}: no update of {} at seq {} for the snapshot to replace",
                        write.collection, compaction.doc, compaction.through
                    )));
                }
            }
            tx.prepare_cached(
                "DELETE FROM changes INDEXED BY changes_by_doc \
                 WHERE cid = ?1 AND doc = ?2 AND seq <= ?3 \
                 AND kind IN (?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    cid,
                    compaction.doc.as_str(),
                    to_i64(compaction.through).unwrap_or(i64::MAX),
                    ChangeKind::Update.code(),
                    ChangeKind::Snapshot.code()
                ])
            })
            .map_err(|e| sql_error("compacting", e))?;
            if let Some(snapshot) = snapshot_change(compaction, target_checksum) {
                insert_change(&snapshot, target_checksum)?;
            }
        }
    }
    for peer in &write.peers {
        tx.prepare_cached(
            "INSERT INTO peers (cid, peer, acked, last_seen_ms) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (cid, peer) DO UPDATE SET acked = max(acked, excluded.acked), \
             last_seen_ms = max(last_seen_ms, excluded.last_seen_ms)",
        )
        .and_then(|mut s| {
            s.execute(params![
                cid,
                peer.peer.as_str(),
                to_i64(peer.acked).unwrap_or(i64::MAX),
                to_i64(peer.last_seen_ms).unwrap_or(i64::MAX)
            ])
        })
        .map_err(|e| sql_error("updating peers", e))?;
    }
    // The head is the highest stored seq: nothing to write for it. The
    // schema version is written only when it changes.
    if stored_schema.is_some_and(|schema| schema != meta.schema_version) {
        tx.prepare_cached("UPDATE collections SET schema_version = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![cid, meta.schema_version]))
            .map_err(|e| sql_error("updating the schema version", e))?;
    }
    Ok((cid, meta))
}

fn read_meta(
    tx: &rusqlite::Transaction<'_>,
    name: &CollectionName,
) -> Result<Option<(i64, CollectionMeta)>, StorageError> {
    let row = tx
        .prepare_cached(
            "SELECT id, epoch, schema_version, created_ms FROM collections WHERE name = ?1",
        )
        .and_then(|mut s| {
            s.query_row(params![name.as_str()], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, Vec<u8>>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                ))
            })
            .optional()
        })
        .map_err(|e| sql_error("reading collection metadata", e))?;
    match row {
        None => Ok(None),
        Some((cid, epoch, schema, created)) => {
            let head = head_of(tx, cid)?;
            Ok(Some((cid, meta_from_row(&epoch, head, schema, created)?)))
        }
    }
}

fn meta_from_row(
    epoch: &[u8],
    (head, checksum): (i64, i64),
    schema: i64,
    created: i64,
) -> Result<CollectionMeta, StorageError> {
    let epoch: [u8; 16] = epoch
        .try_into()
        .map_err(|_| corrupt(format!("epoch of {} bytes", epoch.len())))?;
    Ok(CollectionMeta {
        epoch: Epoch(epoch),
        head: u64::try_from(head).map_err(|_| corrupt(format!("negative head {head}")))?,
        schema_version: u32::try_from(schema)
            .map_err(|_| corrupt(format!("schema version {schema}")))?,
        created_ms: u64::try_from(created).unwrap_or(0),
        // Stored as the same 64 bits in SQLite's signed INTEGER.
        log_checksum: checksum as u64,
    })
}

fn collect_changes(mut rows: rusqlite::Rows<'_>) -> Result<Vec<Change>, StorageError> {
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(|e| sql_error("reading changes", e))? {
        let read = |e| sql_error("reading changes", e);
        let seq: i64 = row.get(0).map_err(read)?;
        let doc: String = row.get(1).map_err(read)?;
        let kind: u8 = row.get(2).map_err(read)?;
        let schema_version: u32 = row.get(3).map_err(read)?;
        let origin: Option<String> = row.get(4).map_err(read)?;
        let payload: Vec<u8> = row.get(5).map_err(read)?;
        let checksum: i64 = row.get(6).map_err(read)?;
        out.push(Change {
            seq: u64::try_from(seq).map_err(|_| corrupt(format!("negative seq {seq}")))?,
            doc: DocId::new(doc).map_err(|e| corrupt(e.to_string()))?,
            kind: ChangeKind::from_code(kind)
                .ok_or_else(|| corrupt(format!("change {seq} has unknown kind {kind}")))?,
            payload,
            schema_version,
            origin: origin
                .map(PeerId::new)
                .transpose()
                .map_err(|e| corrupt(e.to_string()))?,
            log_checksum: checksum as u64,
        });
    }
    Ok(out)
}

/// SQLite's LIMIT is an i64; "everything" from a caller is `usize::MAX`.
fn clamp_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn to_i64(value: u64) -> Result<i64, StorageError> {
    i64::try_from(value)
        .map_err(|_| StorageError::InvalidWrite(format!("{value} does not fit SQLite's INTEGER")))
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
