//! Row codecs: a collection's row and a change as stored in the tables,
//! and the integer conversions between seqs and `BIGINT`.

use postgres::{Row, Transaction};
use seqsync_engine::{
    Change, ChangeKind, CollectionMeta, CollectionName, DocId, Epoch, PeerId, Seq, StorageError,
};

use super::{corrupt, pg_error};

/// A collection's row: its id, metadata and lease.
pub(super) struct StoredRow {
    pub(super) cid: i64,
    pub(super) meta: CollectionMeta,
    pub(super) lease_owner: Option<String>,
    /// Milliseconds until the lease expires (0 when expired or free).
    pub(super) lease_left_ms: i64,
}

/// Appends changes of any collections with one `INSERT … SELECT FROM
/// unnest(…)` (one round trip for a whole group), each with the lease token
/// its commit was fenced by: along the log the tokens never decrease, which
/// is what an audit checks (a commit from a deposed owner would show an
/// older token after a newer one). Its parameters are [`ChangeRows`].
pub(super) const APPEND_CHANGES: &str = "INSERT INTO seqsync_changes \
     (cid, lease_token, seq, doc, kind, schema_version, origin, payload, checksum, author, \
     committed_ms) \
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], \
     $5::smallint[], $6::integer[], $7::text[], $8::bytea[], $9::bigint[], $10::text[], \
     $11::bigint[])";

/// Changes as the columns of [`APPEND_CHANGES`].
#[derive(Default)]
pub(super) struct ChangeRows<'a> {
    cids: Vec<i64>,
    tokens: Vec<i64>,
    seqs: Vec<i64>,
    docs: Vec<&'a str>,
    kinds: Vec<i16>,
    schemas: Vec<i32>,
    origins: Vec<Option<&'a str>>,
    payloads: Vec<&'a [u8]>,
    checksums: Vec<i64>,
    authors: Vec<Option<&'a str>>,
    committed: Vec<i64>,
}

impl<'a> ChangeRows<'a> {
    /// Adds `change` of collection `cid`, fenced by `token`, with its
    /// running log checksum.
    pub(super) fn push(&mut self, cid: i64, token: i64, change: &'a Change, checksum: u64) {
        self.cids.push(cid);
        self.tokens.push(token);
        self.seqs.push(seq_param(change.seq));
        self.docs.push(change.doc.as_str());
        self.kinds.push(i16::from(change.kind.code()));
        self.schemas.push(change.schema_version as i32);
        self.origins
            .push(change.origin.as_ref().map(PeerId::as_str));
        self.payloads.push(change.payload.as_slice());
        self.checksums.push(checksum as i64);
        self.authors.push(change.author.as_deref());
        self.committed.push(seq_param(change.committed_ms));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.cids.is_empty()
    }

    /// The parameters of [`APPEND_CHANGES`], in order.
    pub(super) fn params(&self) -> [&(dyn postgres::types::ToSql + Sync); 11] {
        [
            &self.cids,
            &self.tokens,
            &self.seqs,
            &self.docs,
            &self.kinds,
            &self.schemas,
            &self.origins,
            &self.payloads,
            &self.checksums,
            &self.authors,
            &self.committed,
        ]
    }
}

/// Appends one collection's changes ([`APPEND_CHANGES`], sent as text: the
/// rarer writes' path; a group's uses the prepared statement).
pub(super) fn insert_changes<'a>(
    tx: &mut Transaction<'_>,
    cid: i64,
    token: i64,
    changes: impl Iterator<Item = (&'a Change, u64)>,
) -> Result<(), StorageError> {
    let mut rows = ChangeRows::default();
    for (change, checksum) in changes {
        rows.push(cid, token, change, checksum);
    }
    if rows.is_empty() {
        return Ok(());
    }
    tx.execute(APPEND_CHANGES, &rows.params())
        .map_err(|e| pg_error("appending", e))?;
    Ok(())
}

/// A collection's row without locking it (what readers ask; its lease time
/// left is not read: 0).
pub(super) const READ_META: &str = "SELECT id, epoch, head, log_checksum, schema_version, \
     created_ms, lease_owner, lease_token, 0::bigint FROM seqsync_collections WHERE name = $1";

/// The collection's row; `for_update` locks it until the transaction ends
/// (commits of one collection from two nodes then queue on the row instead
/// of both planning against the same head).
pub(super) fn read_meta(
    tx: &mut Transaction<'_>,
    name: &CollectionName,
    for_update: bool,
) -> Result<Option<StoredRow>, StorageError> {
    let sql = if for_update {
        "SELECT id, epoch, head, log_checksum, schema_version, created_ms, lease_owner, \
         lease_token, greatest(0, (extract(epoch FROM lease_expires - now()) * 1000)::bigint) \
         FROM seqsync_collections WHERE name = $1 FOR UPDATE"
    } else {
        READ_META
    };
    let row = tx
        .query_opt(sql, &[&name.as_str()])
        .map_err(|e| pg_error("reading collection metadata", e))?;
    row.map(|row| meta_row(&row, 0)).transpose()
}

/// A [`StoredRow`] from columns `at..`: id, epoch, head, log_checksum,
/// schema_version, created_ms, lease_owner, lease_token, lease_left_ms.
pub(super) fn meta_row(row: &Row, at: usize) -> Result<StoredRow, StorageError> {
    let epoch: Vec<u8> = row.get(at + 1);
    let epoch: [u8; 16] = epoch
        .as_slice()
        .try_into()
        .map_err(|_| corrupt(format!("epoch of {} bytes", epoch.len())))?;
    let schema: i32 = row.get(at + 4);
    let left: Option<i64> = row.get(at + 8);
    Ok(StoredRow {
        cid: row.get(at),
        meta: CollectionMeta {
            epoch: Epoch(epoch),
            head: from_i64(row.get(at + 2))?,
            log_checksum: row.get::<_, i64>(at + 3) as u64,
            schema_version: u32::try_from(schema)
                .map_err(|_| corrupt(format!("schema version {schema}")))?,
            created_ms: u64::try_from(row.get::<_, i64>(at + 5)).unwrap_or(0),
        },
        lease_owner: row.get(at + 6),
        // Column `at + 7` is the lease token, read where it matters.
        lease_left_ms: left.unwrap_or(0),
    })
}

pub(super) fn change_row(row: &Row) -> Result<Change, StorageError> {
    let seq: i64 = row.get(0);
    let doc: String = row.get(1);
    let kind: i16 = row.get(2);
    let schema: i32 = row.get(3);
    let origin: Option<String> = row.get(4);
    Ok(Change {
        seq: from_i64(seq)?,
        doc: DocId::new(doc).map_err(|e| corrupt(e.to_string()))?,
        kind: u8::try_from(kind)
            .ok()
            .and_then(ChangeKind::from_code)
            .ok_or_else(|| corrupt(format!("change {seq} has unknown kind {kind}")))?,
        payload: row.get(5),
        schema_version: u32::try_from(schema)
            .map_err(|_| corrupt(format!("change {seq} has schema version {schema}")))?,
        origin: origin
            .map(PeerId::new)
            .transpose()
            .map_err(|e| corrupt(e.to_string()))?,
        log_checksum: row.get::<_, i64>(6) as u64,
        author: row.get(7),
        committed_ms: u64::try_from(row.get::<_, i64>(8)).unwrap_or(0),
    })
}

/// Seqs above `i64::MAX` cannot be stored (`BIGINT`); reads clamp to it.
pub(super) fn seq_param(seq: Seq) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

pub(super) fn from_i64(value: i64) -> Result<u64, StorageError> {
    u64::try_from(value).map_err(|_| corrupt(format!("negative value {value}")))
}

pub(super) fn clamp_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}
