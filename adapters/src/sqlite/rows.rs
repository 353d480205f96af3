//! Rows to values and back: collection metadata, change pages, and the
//! conversions between SQLite's signed integers and seqs.
//!
//! Stored values are read as data that may be damaged: a value out of range
//! is a typed `Corrupt` error naming the collection, never a panic.

use rusqlite::{params, OptionalExtension};
use seqsync_engine::{
    Change, ChangeKind, CollectionMeta, CollectionName, DocId, Epoch, PeerId, StorageError,
};

use super::schema::head_of;
use super::{corrupt, sql_error};

pub(super) fn read_meta(
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

pub(super) fn meta_from_row(
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

pub(super) fn collect_changes(mut rows: rusqlite::Rows<'_>) -> Result<Vec<Change>, StorageError> {
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
        let author: Option<String> = row.get(7).map_err(read)?;
        let committed_ms: i64 = row.get(8).map_err(read)?;
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
            author,
            committed_ms: u64::try_from(committed_ms).unwrap_or(0),
            log_checksum: checksum as u64,
        });
    }
    Ok(out)
}

/// SQLite's LIMIT is an i64; "everything" from a caller is `usize::MAX`.
pub(super) fn clamp_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

pub(super) fn to_i64(value: u64) -> Result<i64, StorageError> {
    i64::try_from(value)
        .map_err(|_| StorageError::InvalidWrite(format!("{value} does not fit SQLite's INTEGER")))
}
