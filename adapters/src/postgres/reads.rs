//! A pooled reader's connection with its hot statements prepared.
//!
//! Why: a node that follows another node's commits (`docs/POSTGRES.md`,
//! live streams across nodes) reads a collection's row and a page of its
//! changes for every wake-up. Sent as text, each statement costs a parse
//! round trip and the database's parse and plan; prepared once per pooled
//! connection, only its execution. The writer's statements are prepared
//! the same way (`commit.rs`).

use postgres::{Client, Statement, Transaction};
use seqsync_engine::StorageError;

use super::pg_error;
use super::rows::{meta_row, StoredRow, READ_META};

/// A pooled reader's connection and the reads every catch-up makes,
/// prepared on it once when it connects: a node following another node's
/// commits reads each collection's row and a page of changes per wake-up,
/// and parsing and planning them each time cost the database more than
/// running them.
pub(super) struct ReaderConn {
    pub(super) client: Client,
    pub(super) statements: ReaderStatements,
}

/// See [`ReaderConn`].
pub(super) struct ReaderStatements {
    meta: Statement,
    /// Changes of a collection after a seq: `(cid, after, limit)`.
    pub(super) changes: Statement,
    /// Changes of one document after a seq: `(cid, doc, after, limit)`.
    pub(super) document_changes: Statement,
}

impl ReaderConn {
    /// Prepares the statements on `client`. Blocking. Errors: the
    /// database's.
    pub(super) fn new(mut client: Client) -> Result<Self, StorageError> {
        let mut prepare = |sql: &str| {
            client
                .prepare(sql)
                .map_err(|e| pg_error("preparing the reads", e))
        };
        let statements = ReaderStatements {
            meta: prepare(READ_META)?,
            changes: prepare(
                "SELECT seq, doc, kind, schema_version, origin, payload, checksum, author, committed_ms \
                 FROM seqsync_changes WHERE cid = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )?,
            document_changes: prepare(
                "SELECT seq, doc, kind, schema_version, origin, payload, checksum, author, committed_ms \
                 FROM seqsync_changes WHERE cid = $1 AND doc = $2 AND seq > $3 \
                 ORDER BY seq LIMIT $4",
            )?,
        };
        Ok(Self { client, statements })
    }
}

impl ReaderStatements {
    /// The collection's row, without locking it (`rows::read_meta` for a
    /// reader).
    pub(super) fn meta(
        &self,
        tx: &mut Transaction<'_>,
        name: &seqsync_engine::CollectionName,
    ) -> Result<Option<StoredRow>, StorageError> {
        let row = tx
            .query_opt(&self.meta, &[&name.as_str()])
            .map_err(|e| pg_error("reading collection metadata", e))?;
        row.map(|row| meta_row(&row, 0)).transpose()
    }
}
