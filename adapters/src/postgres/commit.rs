//! The group commit: every collection of the engine writer's group in one
//! transaction, in a handful of statements whatever the group's size.
//!
//! Why it is shaped this way: on PostgreSQL a commit's cost is round trips,
//! not bytes. The engine's writer hands over a group of up to thousands of
//! pushes across many collections; committing each collection with its own
//! statements (lock its row, move its head, insert its changes, notify)
//! costs four statements per collection, and a statement sent as text costs
//! two round trips (parse, then execute). 64 writers over 16 collections
//! then spent about 130 round trips per group, mostly waiting. Here a group
//! of the usual kind (collections whose lease this node holds, appending
//! and acking) is:
//!
//! 1. `SELECT … FOR UPDATE` of every collection's row, in id order (one lock
//!    order for every node, so two groups never deadlock);
//! 2. one fenced `UPDATE … FROM unnest(…)` that moves every head, each only
//!    where its epoch, head and lease token still match (`RETURNING` says
//!    which moved);
//! 3. one `INSERT … SELECT FROM unnest(…)` of every change of the group
//!    (`rows::APPEND_CHANGES`);
//! 4. one upsert of every peer record;
//! 5. one `pg_notify` per collection, in one statement;
//!
//! then `COMMIT`: one flush of the WAL for the whole group. The statements
//! are prepared once per connection.
//!
//! The rarer writes (creating a collection, taking a lease, compacting) go
//! through the per-collection path (`PostgresStorage::apply_write`), each
//! inside a savepoint: a refusal (another node took the lease, the base
//! moved) rolls back that collection's statements only, and the rest of
//! the group commits in the same transaction.
//!
//! `Storage::commit` (all or nothing) and `Storage::commit_each` (each
//! collection alone) share this code; they differ only in what a refusal
//! does: end the transaction, or leave that collection out.

use std::collections::HashMap;

use postgres::{Client, Statement, Transaction};
use seqsync_engine::{
    check_batch_shape, plan_collection_write, CollectionWrite, PeerRecord, Seq, StorageError,
    WriteBase, WriteBatch,
};

use super::rows::{meta_row, seq_param, ChangeRows, StoredRow, APPEND_CHANGES};
use super::watch::NOTIFY_CHANNEL;
use super::{lock, pg_error, PostgresStorage};

/// The writer's connection and the group commit's statements, prepared on
/// it once when it connects (outside any transaction). Prepared statements
/// belong to the connection: a new connection prepares them again.
pub(super) struct WriterConn {
    pub(super) client: Client,
    statements: Statements,
}

struct Statements {
    lock_rows: Statement,
    move_heads: Statement,
    append: Statement,
    upsert_peers: Statement,
    notify: Statement,
}

impl WriterConn {
    /// Prepares the statements on `client`. Blocking. Errors: the
    /// database's (the schema must be migrated first).
    pub(super) fn new(mut client: Client) -> Result<Self, StorageError> {
        let mut prepare = |sql: &str| {
            client
                .prepare(sql)
                .map_err(|e| pg_error("preparing the commit's statements", e))
        };
        let statements = Statements {
            lock_rows: prepare(LOCK_ROWS)?,
            move_heads: prepare(MOVE_HEADS)?,
            append: prepare(APPEND_CHANGES)?,
            upsert_peers: prepare(UPSERT_PEERS)?,
            notify: prepare(NOTIFY)?,
        };
        Ok(Self { client, statements })
    }
}

/// Locks and reads the rows of the group's collections, in id order.
const LOCK_ROWS: &str = "SELECT name, id, epoch, head, log_checksum, schema_version, created_ms, \
     lease_owner, lease_token, \
     greatest(0, (extract(epoch FROM lease_expires - now()) * 1000)::bigint) \
     FROM seqsync_collections WHERE name = ANY($1) ORDER BY id FOR UPDATE";

/// Moves every head whose epoch, head and lease token still match, renews
/// those leases, and says which moved.
const MOVE_HEADS: &str = "UPDATE seqsync_collections c SET head = v.head, \
     log_checksum = v.log_checksum, schema_version = v.schema_version, \
     lease_expires = now() + $1::float8 * interval '1 millisecond' \
     FROM unnest($2::bigint[], $3::bytea[], $4::bigint[], $5::bigint[], $6::bigint[], \
     $7::integer[], $8::bigint[]) \
     AS v(id, epoch, base_head, head, log_checksum, schema_version, token) \
     WHERE c.id = v.id AND c.epoch = v.epoch AND c.head = v.base_head \
     AND c.lease_owner = $9 AND c.lease_token = v.token \
     RETURNING c.id";

/// Upserts peer records; stored values never move backwards. The rows must
/// be unique by (cid, peer): PostgreSQL refuses to update one row twice in
/// one statement.
pub(super) const UPSERT_PEERS: &str = "INSERT INTO seqsync_peers (cid, peer, acked, last_seen_ms) \
     SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[]) \
     ON CONFLICT (cid, peer) DO UPDATE SET \
     acked = GREATEST(seqsync_peers.acked, excluded.acked), \
     last_seen_ms = GREATEST(seqsync_peers.last_seen_ms, excluded.last_seen_ms)";

/// One wake-up per collection for the other nodes, delivered when (and only
/// if) the transaction commits.
const NOTIFY: &str = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p";

/// What a refusal does to the group.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum OnRefusal {
    /// End the transaction: nothing of the group is stored
    /// (`Storage::commit`).
    Abort,
    /// Leave that collection out and commit the rest (`Storage::commit_each`).
    LeaveOut,
}

/// A write of the usual kind, planned, waiting for the group's statements.
struct Simple<'w> {
    index: usize,
    write: &'w CollectionWrite,
    cid: i64,
    token: i64,
    base_head: Seq,
    meta: seqsync_engine::CollectionMeta,
    append_checksums: Vec<u64>,
}

impl PostgresStorage {
    /// Commits `batch` in one transaction (module docs). Returns one result
    /// per write; with [`OnRefusal::Abort`] the first refusal is returned as
    /// the outer error instead, and nothing is stored.
    pub(super) fn commit_group(
        &self,
        batch: &WriteBatch,
        on_refusal: OnRefusal,
    ) -> Result<Vec<Result<(), StorageError>>, StorageError> {
        check_batch_shape(batch)?;
        let mut slot = lock(&self.writer)?;
        let conn = self.writer_conn(&mut slot)?;
        let WriterConn { client, statements } = conn;
        let mut tx = client
            .transaction()
            .map_err(|e| pg_error("beginning a commit", e))?;

        let names: Vec<&str> = batch.writes.iter().map(|w| w.collection.as_str()).collect();
        let rows = tx
            .query(&statements.lock_rows, &[&names])
            .map_err(|e| pg_error("locking the group's collections", e))?;
        let mut stored: HashMap<String, (StoredRow, i64)> = HashMap::with_capacity(rows.len());
        for row in &rows {
            stored.insert(row.get(0), (meta_row(row, 1)?, row.get(9)));
        }

        let mut results: Vec<Result<(), StorageError>> = vec![Ok(()); batch.writes.len()];
        let refuse = |results: &mut Vec<Result<(), StorageError>>, index: usize, err| {
            match on_refusal {
                OnRefusal::Abort => return Err(err),
                OnRefusal::LeaveOut => results[index] = Err(err),
            }
            Ok(())
        };
        let held: HashMap<String, i64> = {
            let leases = lock(&self.leases)?;
            names
                .iter()
                .filter_map(|n| leases.get(*n).map(|t| ((*n).to_owned(), *t)))
                .collect()
        };
        let mut simple = Vec::new();
        let mut taken = Vec::new();
        let mut heads: Vec<(usize, Seq)> = Vec::with_capacity(batch.writes.len());
        for (index, write) in batch.writes.iter().enumerate() {
            let name = write.collection.as_str();
            let row = stored.get(name).map(|(row, _)| row);
            let plan = match plan_collection_write(write, row.map(|r| &r.meta)) {
                Ok(plan) => plan,
                Err(err) => {
                    refuse(&mut results, index, err)?;
                    continue;
                }
            };
            match (row, write.base, held.get(name)) {
                (Some(row), WriteBase::Existing { head, .. }, Some(&token))
                    if write.compact.is_empty() =>
                {
                    simple.push(Simple {
                        index,
                        write,
                        cid: row.cid,
                        token,
                        base_head: head,
                        meta: plan.meta,
                        append_checksums: plan.append_checksums,
                    });
                }
                _ => {
                    // Its own statements, inside a savepoint: a refusal
                    // rolls back this collection only.
                    let mut savepoint = tx
                        .transaction()
                        .map_err(|e| pg_error("opening a savepoint", e))?;
                    match self.apply_write(&mut savepoint, write) {
                        Ok((token, head)) => {
                            savepoint
                                .commit()
                                .map_err(|e| pg_error("releasing a savepoint", e))?;
                            if let Some(token) = token {
                                taken.push((name.to_owned(), token));
                            }
                            heads.push((index, head));
                        }
                        Err(err) if err.is_refusal() => {
                            savepoint
                                .rollback()
                                .map_err(|e| pg_error("rolling back a savepoint", e))?;
                            refuse(&mut results, index, err)?;
                        }
                        Err(err) => return Err(err),
                    }
                }
            }
        }

        if !simple.is_empty() {
            let moved = self.move_heads(statements, &mut tx, &simple)?;
            let mut committed = Vec::with_capacity(simple.len());
            for write in simple {
                if moved.contains(&write.cid) {
                    committed.push(write);
                } else {
                    // The fenced update found the base moved or the lease
                    // gone since the row was read and locked: only a bug or
                    // a manual edit gets here, but the answer must be right.
                    let err = self.refusal(&mut tx, write.write.collection.as_str(), write.token);
                    refuse(&mut results, write.index, err)?;
                }
            }
            append_all(statements, &mut tx, &committed)?;
            upsert_peers(statements, &mut tx, &committed)?;
            heads.extend(committed.iter().map(|w| (w.index, w.meta.head)));
        }

        // `node head name committed_ms` (watch.rs reads it); the time is
        // this node's clock, for the readers' lag metric.
        let committed_ms = seqsync_engine::now_ms();
        let payloads: Vec<String> = heads
            .iter()
            .map(|(index, head)| {
                format!(
                    "{} {} {} {}",
                    self.node, head, batch.writes[*index].collection, committed_ms
                )
            })
            .collect();
        if !payloads.is_empty() {
            tx.execute(&statements.notify, &[&NOTIFY_CHANNEL, &payloads])
                .map_err(|e| pg_error("notifying", e))?;
        }
        tx.commit().map_err(|e| pg_error("committing", e))?;
        if !taken.is_empty() {
            let mut leases = lock(&self.leases)?;
            for (name, token) in taken {
                metrics::counter!("seqsync_leases_acquired_total").increment(1);
                leases.insert(name, token);
            }
            metrics::gauge!("seqsync_leases_held").set(leases.len() as f64);
        }
        Ok(results)
    }

    /// The fenced head moves of every simple write, in one statement.
    /// Returns the ids of the collections whose head moved.
    fn move_heads(
        &self,
        statements: &Statements,
        tx: &mut Transaction<'_>,
        writes: &[Simple<'_>],
    ) -> Result<Vec<i64>, StorageError> {
        let ids: Vec<i64> = writes.iter().map(|w| w.cid).collect();
        let epochs: Vec<&[u8]> = writes.iter().map(|w| &w.meta.epoch.0[..]).collect();
        let bases: Vec<i64> = writes.iter().map(|w| seq_param(w.base_head)).collect();
        let heads: Vec<i64> = writes.iter().map(|w| seq_param(w.meta.head)).collect();
        let checksums: Vec<i64> = writes.iter().map(|w| w.meta.log_checksum as i64).collect();
        let schemas: Vec<i32> = writes
            .iter()
            .map(|w| w.meta.schema_version as i32)
            .collect();
        let tokens: Vec<i64> = writes.iter().map(|w| w.token).collect();
        let ttl = self.lease_ttl_ms() as f64;
        let rows = tx
            .query(
                &statements.move_heads,
                &[
                    &ttl, &ids, &epochs, &bases, &heads, &checksums, &schemas, &tokens, &self.node,
                ],
            )
            .map_err(|e| pg_error("moving the heads", e))?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }
}

/// Every change of the committed simple writes, in one statement.
fn append_all(
    statements: &Statements,
    tx: &mut Transaction<'_>,
    writes: &[Simple<'_>],
) -> Result<(), StorageError> {
    let mut rows = ChangeRows::default();
    for write in writes {
        assert_eq!(write.write.append.len(), write.append_checksums.len());
        for (change, checksum) in write.write.append.iter().zip(&write.append_checksums) {
            rows.push(write.cid, write.token, change, *checksum);
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    tx.execute(&statements.append, &rows.params())
        .map_err(|e| pg_error("appending", e))?;
    Ok(())
}

/// Every peer record of the committed simple writes, in one statement.
fn upsert_peers(
    statements: &Statements,
    tx: &mut Transaction<'_>,
    writes: &[Simple<'_>],
) -> Result<(), StorageError> {
    let rows = PeerRows::merged(
        writes
            .iter()
            .flat_map(|w| w.write.peers.iter().map(move |p| (w.cid, p))),
    );
    if rows.cids.is_empty() {
        return Ok(());
    }
    tx.execute(
        &statements.upsert_peers,
        &[&rows.cids, &rows.peers, &rows.acked, &rows.seen],
    )
    .map_err(|e| pg_error("updating peers", e))?;
    Ok(())
}

/// Peer records as the columns of [`UPSERT_PEERS`]: one row per
/// (collection, peer), with the largest values given. Requests merged into
/// one group may ack the same peer twice, and PostgreSQL refuses to update
/// one row twice in one statement.
pub(super) struct PeerRows<'a> {
    pub(super) cids: Vec<i64>,
    pub(super) peers: Vec<&'a str>,
    pub(super) acked: Vec<i64>,
    pub(super) seen: Vec<i64>,
}

impl<'a> PeerRows<'a> {
    pub(super) fn merged(records: impl Iterator<Item = (i64, &'a PeerRecord)>) -> Self {
        let mut merged: HashMap<(i64, &str), (Seq, u64)> = HashMap::new();
        for (cid, record) in records {
            let entry = merged
                .entry((cid, record.peer.as_str()))
                .or_insert((record.acked, record.last_seen_ms));
            entry.0 = entry.0.max(record.acked);
            entry.1 = entry.1.max(record.last_seen_ms);
        }
        let mut rows = PeerRows {
            cids: Vec::with_capacity(merged.len()),
            peers: Vec::with_capacity(merged.len()),
            acked: Vec::with_capacity(merged.len()),
            seen: Vec::with_capacity(merged.len()),
        };
        for ((cid, peer), (acked, seen_ms)) in merged {
            rows.cids.push(cid);
            rows.peers.push(peer);
            rows.acked.push(seq_param(acked));
            rows.seen.push(i64::try_from(seen_ms).unwrap_or(i64::MAX));
        }
        rows
    }
}
