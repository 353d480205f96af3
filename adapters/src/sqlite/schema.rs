//! The SQLite layout and its format versions, migrated in place at open.
//!
//! A store records its format version; opening a store of an older format
//! migrates it one step at a time, each step one transaction, so a stopped
//! migration leaves a store of one format or the next, never between. A
//! store of a newer format than this build knows is refused by name.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use seqsync_engine::{Epoch, StorageError};

use super::rows::{collect_changes, to_i64};
use super::{corrupt, sql_error, BACKEND};

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
/// - 5: every change records who pushed it (`author`, the signed token's
///   subject) and when it was accepted (`committed_ms`), both before
///   `payload` for the reason of format 4. Changes stored before have
///   `author` NULL and `committed_ms` 0: unknown, never guessed. And
///   `pins`: named versions, which compaction keeps readable.
const FORMAT_VERSION: u64 = 5;

/// Page size of a new database. A commit of a few small updates dirties a
/// handful of pages and the WAL writes each whole; small pages keep that
/// close to what changed. Stores created with another page size keep it.
pub(super) const PAGE_SIZE_BYTES: u32 = 1024;

/// WAL pages after which a commit checkpoints them into the database file.
/// A checkpoint writes each page changed since the last one once, however
/// often it changed: the hot pages (the log's last leaf, the index leaves of
/// busy documents) are rewritten at every checkpoint, so checkpointing less
/// often writes less per commit. 40,000 pages of 1 KiB let the WAL grow to
/// about 40 MiB (SQLite's default is 1,000); with 300 busy collections,
/// checkpointing every 10,000 pages cost about 0.5 KB more per edit.
pub(super) const WAL_AUTOCHECKPOINT_PAGES: u32 = 40_000;

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
    author TEXT,
    committed_ms INTEGER NOT NULL DEFAULT 0,
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

/// Named versions (format 5): created with the schema, and by the
/// migration to format 5.
const PINS_TABLE: &str = "
CREATE TABLE pins (
    cid INTEGER NOT NULL,
    doc TEXT NOT NULL,
    name TEXT NOT NULL,
    seq INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    author TEXT,
    PRIMARY KEY (cid, doc, name)
) WITHOUT ROWID;
";

pub(super) fn check_or_create_schema(conn: &Connection, path: &Path) -> Result<(), StorageError> {
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
        // Each step is one transaction; a crash between two leaves a store
        // of one format, which the next open continues from.
        if found == 1 {
            migrate_v1_to_v2(conn, path)?;
        }
        if (1..=2).contains(&found) {
            migrate_v2_to_v3(conn)?;
        }
        if (1..=3).contains(&found) {
            migrate_v3_to_v4(conn)?;
        }
        if (1..=4).contains(&found) {
            return migrate_v4_to_v5(conn);
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
        "BEGIN; {SCHEMA} {PINS_TABLE} INSERT INTO seqsync_format (key, value) VALUES ('format', {FORMAT_VERSION}); COMMIT;"
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
                    "SELECT seq, doc, kind, schema_version, origin, payload, checksum, NULL, 0 \
                     FROM changes WHERE cid = ?1 ORDER BY seq",
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

/// Rewrites a format-4 store as format 5, in one transaction: `changes`
/// gains `author` and `committed_ms` before `payload` (added at the end,
/// reading them would walk every large payload's overflow pages, the cost
/// format 4 removed). Existing changes get NULL and 0: who pushed them and
/// when was never recorded. A crash leaves format 4, which the next open
/// migrates again. Costs one copy of the log, once.
fn migrate_v4_to_v5(conn: &Connection) -> Result<(), StorageError> {
    let failed = |e| sql_error("migrating to format 5", e);
    let tx = conn.unchecked_transaction().map_err(failed)?;
    tx.execute_batch(
        "CREATE TABLE changes_v5 (
            cid INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            doc TEXT NOT NULL,
            kind INTEGER NOT NULL,
            schema_version INTEGER NOT NULL,
            origin TEXT,
            author TEXT,
            committed_ms INTEGER NOT NULL DEFAULT 0,
            checksum INTEGER NOT NULL DEFAULT 0,
            payload BLOB NOT NULL,
            PRIMARY KEY (cid, seq)
        ) WITHOUT ROWID;
        INSERT INTO changes_v5 (cid, seq, doc, kind, schema_version, origin, checksum, payload)
            SELECT cid, seq, doc, kind, schema_version, origin, checksum, payload
            FROM changes ORDER BY cid, seq;
        DROP TABLE changes;
        ALTER TABLE changes_v5 RENAME TO changes;
        CREATE INDEX changes_by_doc ON changes (cid, doc, seq);
        UPDATE seqsync_format SET value = 5 WHERE key = 'format';",
    )
    .map_err(failed)?;
    tx.execute_batch(PINS_TABLE).map_err(failed)?;
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
pub(super) fn head_of(
    tx: &rusqlite::Transaction<'_>,
    cid: i64,
) -> Result<(i64, i64), StorageError> {
    tx.prepare_cached("SELECT seq, checksum FROM changes WHERE cid = ?1 ORDER BY seq DESC LIMIT 1")
        .and_then(|mut s| {
            s.query_row(params![cid], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()
        })
        .map(|head| head.unwrap_or((0, 0)))
        .map_err(|e| sql_error("reading the head", e))
}
