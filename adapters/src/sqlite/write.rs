//! One collection's write inside a commit: the checks against the stored
//! head and epoch, the appended changes, compaction's replacements and the
//! peer records, as SQL.
//!
//! Every collection write of a group commit runs here inside the same
//! `BEGIN IMMEDIATE` transaction, so the group is one fsync. A refusal
//! rolls the whole group back (nothing is half-written); the storage writer
//! then retries each collection's write alone, so one collection's trouble
//! does not fail the others.

use rusqlite::{params, OptionalExtension};
use seqsync_engine::{
    plan_collection_write, snapshot_change, Change, ChangeKind, CollectionMeta, CollectionWrite,
    StorageError, WriteBase,
};

use super::rows::to_i64;
use super::sql_error;

/// Applies one collection's write inside `tx`, given its stored metadata
/// (`None`: the collection does not exist); returns its row id and its
/// metadata after the write.
pub(super) fn apply_write(
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
                 (cid, seq, doc, kind, schema_version, origin, payload, checksum, author, \
                 committed_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
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
                    log_checksum as i64,
                    change.author.as_deref(),
                    to_i64(change.committed_ms).unwrap_or(i64::MAX)
                ])
                .map_err(|e| sql_error("appending", e))?;
            Ok(())
        };
        for (change, log_checksum) in write.append.iter().zip(&plan.append_checksums) {
            insert_change(change, *log_checksum)?;
        }
        for compaction in &write.compact {
            if pinned_inside(tx, cid, compaction)? {
                // A version was pinned after this compaction was planned:
                // it must stay readable, so this range is left as it is.
                continue;
            }
            let mut target_checksum = 0u64;
            let mut target_committed_ms = 0u64;
            if compaction.snapshot.is_some() {
                let target: Option<(String, u8, i64, i64)> = tx
                    .prepare_cached(
                        "SELECT doc, kind, checksum, committed_ms FROM changes \
                         WHERE cid = ?1 AND seq = ?2",
                    )
                    .and_then(|mut s| {
                        s.query_row(
                            params![cid, to_i64(compaction.through).unwrap_or(-1)],
                            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                        )
                        .optional()
                    })
                    .map_err(|e| sql_error("compacting", e))?;
                target_checksum = target.as_ref().map_or(0, |t| t.2 as u64);
                target_committed_ms = target
                    .as_ref()
                    .map_or(0, |t| u64::try_from(t.3).unwrap_or(0));
                let replaceable = target.is_some_and(|(doc, kind, _, _)| {
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
                 WHERE cid = ?1 AND doc = ?2 AND seq <= ?3 AND seq > ?6 \
                 AND kind IN (?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    cid,
                    compaction.doc.as_str(),
                    to_i64(compaction.through).unwrap_or(i64::MAX),
                    ChangeKind::Update.code(),
                    ChangeKind::Snapshot.code(),
                    to_i64(compaction.after).unwrap_or(i64::MAX)
                ])
            })
            .map_err(|e| sql_error("compacting", e))?;
            if let Some(snapshot) =
                snapshot_change(compaction, target_checksum, target_committed_ms)
            {
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

/// Whether a pin of the compacted document lies strictly inside its range
/// (the compaction must then not be applied; see `Compaction`).
fn pinned_inside(
    tx: &rusqlite::Transaction<'_>,
    cid: i64,
    compaction: &seqsync_engine::Compaction,
) -> Result<bool, StorageError> {
    tx.prepare_cached(
        "SELECT count(*) FROM pins WHERE cid = ?1 AND doc = ?2 AND seq > ?3 AND seq < ?4",
    )
    .and_then(|mut s| {
        s.query_row(
            params![
                cid,
                compaction.doc.as_str(),
                to_i64(compaction.after).unwrap_or(i64::MAX),
                to_i64(compaction.through).unwrap_or(i64::MAX)
            ],
            |row| row.get::<_, i64>(0),
        )
    })
    .map(|n| n > 0)
    .map_err(|e| sql_error("checking pins", e))
}
