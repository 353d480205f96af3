//! `PostgresStorage`: the store in a PostgreSQL database that several
//! engine nodes share (`docs/POSTGRES.md`).
//!
//! Why PostgreSQL and not a home-made cluster: an operator who outgrows one
//! machine already runs a database that replicates, fails over and is backed
//! up. What seqsync must add is what the peers get wrong at the seams:
//!
//! - **The log stays gap-free.** A seq is never a database `SEQUENCE` (an
//!   aborted transaction would leave a hole); the engine assigns it, and a
//!   commit checks its base in SQL: `UPDATE seqsync_collections SET head = new
//!   … WHERE epoch = … AND head = old AND lease_token = …`. Zero rows is a
//!   `Conflict` (or `NotOwner`), and the whole transaction rolls back.
//! - **One writer per collection, fenced.** A node takes a collection's
//!   lease on its first write: owner = this node, token = token + 1, expiry
//!   = `now()` + ttl, all on the *database's* clock (never a node's, which
//!   PowerSync trusted). Every later commit of that collection carries the
//!   token and renews the expiry in the same `UPDATE`, so a node that lost
//!   its lease (paused past the ttl, partitioned) is refused even when the
//!   head has not moved. A thread renews held leases every third of the
//!   ttl; `release_collection` and shutdown give them up. Every acquisition
//!   is written to `seqsync_lease_log`, so a test (or an operator) can check
//!   that no commit came from a node without the current token.
//! - **An ack means committed.** Commits run with `synchronous_commit = on`
//!   (`immediate`) or `off` (`eventual`). What that means across a database
//!   failover is in `docs/POSTGRES.md`.
//!
//! The `postgres` crate is blocking: each client runs a small runtime of its
//! own and blocks the calling thread on it. So this backend must only be
//! called from threads that may block: the engine's writer and read-pool
//! threads, or a runtime's blocking pool inside
//! `seqsync_engine::on_blocking_thread` (the replica's local store), never
//! from a thread driving actix or tokio tasks (there it would stall the
//! executor, or panic): every call checks, and answers a typed error
//! instead.
//!
//! Layout (versioned by `seqsync_schema_migrations`, applied under an
//! advisory lock so nodes starting together do not race):
//! `seqsync_collections` (one row per collection: epoch, head, log checksum,
//! schema version, lease), `seqsync_changes` (the log, primary key
//! (cid, seq), indexed by (cid, doc, seq)), `seqsync_peers`,
//! `seqsync_lease_log`.
//!
//! Files: this one holds the `Storage` implementation and the fenced
//! commit; `commit.rs` the group commit; `reads.rs` the readers' prepared
//! statements; `schema.rs` the layout, its migrations and the connections;
//! `lease.rs` taking, renewing and auditing leases; `watch.rs` how a node
//! learns of other nodes' commits; `rows.rs` the row codecs.

mod commit;
mod lease;
mod reads;
mod rows;
mod schema;
mod watch;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use postgres::{IsolationLevel, Transaction};
use seqsync_engine::{
    plan_collection_write, redact_url, snapshot_change, Change, ChangeKind, ChangesPage,
    CollectionMeta, CollectionName, CollectionWrite, CommitWatcher, DocId, DocumentInfo,
    Durability, PeerId, PeerRecord, Pin, Seq, Storage, StorageConfig, StorageError, WriteBase,
    WriteBatch,
};

use self::commit::{OnRefusal, PeerRows, WriterConn};
use self::lease::{default_node_id, renew_leases};
use self::reads::{ReaderConn, ReaderStatements};
use self::rows::{
    change_row, clamp_limit, from_i64, insert_changes, meta_row, read_meta, seq_param,
};
pub use self::schema::POSTGRES_SCHEMA_VERSION;
use self::schema::{connect, connect_writer, migrate_schema};
use self::watch::watch;

const BACKEND: &str = "postgres";

/// The leases this node holds: collection name → token.
type Leases = Arc<Mutex<HashMap<String, i64>>>;

/// A [`Storage`] on PostgreSQL. See the module docs.
pub struct PostgresStorage {
    url: String,
    durability: Durability,
    node: String,
    lease_ttl_ms: u64,
    /// `None` once dropped (see `Drop`).
    writer: Mutex<Option<WriterConn>>,
    readers: Mutex<Vec<ReaderConn>>,
    max_idle_readers: usize,
    leases: Leases,
    renewer: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl PostgresStorage {
    /// Connects to the database of `config.url`, creates or migrates the
    /// schema, and starts the lease renewer.
    ///
    /// Blocking; must not run on an async thread. Errors:
    /// [`StorageError::Backend`] when the database cannot be reached (the
    /// URL's password is never in the message),
    /// [`StorageError::UnsupportedFormat`] for a schema newer than this
    /// build, [`StorageError::NotAStore`] for a schema table this build does
    /// not know.
    pub fn open(config: &StorageConfig) -> Result<Self, StorageError> {
        blocking_only("opening")?;
        let url = config.url.clone();
        let mut writer = connect_writer(&url, config.durability, config.lease_ttl_ms)?;
        migrate_schema(&mut writer, &url)?;
        let writer = WriterConn::new(writer)?;
        let node = if config.node_id.is_empty() {
            default_node_id()
        } else {
            config.node_id.clone()
        };
        let leases: Leases = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let renewer = {
            let (url, node, leases, stop) = (
                url.clone(),
                node.clone(),
                Arc::clone(&leases),
                Arc::clone(&stop),
            );
            let ttl_ms = config.lease_ttl_ms;
            let durability = config.durability;
            std::thread::Builder::new()
                .name("seqsync-pg-lease".to_owned())
                .spawn(move || renew_leases(&url, durability, &node, ttl_ms, &leases, &stop))
                .map_err(|e| StorageError::backend(BACKEND, "starting the lease renewer", e))?
        };
        // One reader connection up front: the first read after open does not
        // pay for a connection (a backend process forked by the server).
        let readers = vec![ReaderConn::new(connect(&url, config.durability)?)?];
        tracing::info!(url = %redact_url(&url), node = %node, "postgres storage opened");
        Ok(Self {
            url,
            durability: config.durability,
            node,
            lease_ttl_ms: config.lease_ttl_ms,
            writer: Mutex::new(Some(writer)),
            readers: Mutex::new(readers),
            max_idle_readers: usize::try_from(config.pool_size).unwrap_or(8),
            leases,
            renewer: Some((stop, renewer)),
        })
    }

    /// This node's name in leases.
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// The collections whose lease this node holds, with their tokens.
    pub fn held_leases(&self) -> Vec<(String, i64)> {
        let mut held: Vec<(String, i64)> = lock(&self.leases)
            .map(|l| l.iter().map(|(c, t)| (c.clone(), *t)).collect())
            .unwrap_or_default();
        held.sort();
        held
    }

    /// Runs `f` in a read-only, repeatable-read transaction (one snapshot)
    /// on a pooled connection, with the statements prepared on it.
    fn with_reader<T>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>, &ReaderStatements) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        blocking_only("reading")?;
        let pooled = lock(&self.readers)?.pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => ReaderConn::new(connect(&self.url, self.durability)?)?,
        };
        let ReaderConn { client, statements } = &mut conn;
        let result = (|| {
            let mut tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(|e| pg_error("beginning a read", e))?;
            let result = f(&mut tx, statements);
            tx.commit().map_err(|e| pg_error("ending a read", e))?;
            result
        })();
        // A connection that failed is dropped, not pooled.
        if !conn.client.is_closed() && result.is_ok() {
            let mut idle = lock(&self.readers)?;
            if idle.len() < self.max_idle_readers {
                idle.push(conn);
            }
        }
        result
    }

    /// The writer's connection, connected again if it was lost.
    fn writer_conn<'a>(
        &self,
        slot: &'a mut Option<WriterConn>,
    ) -> Result<&'a mut WriterConn, StorageError> {
        if slot.as_ref().is_none_or(|conn| conn.client.is_closed()) {
            *slot = Some(WriterConn::new(connect_writer(
                &self.url,
                self.durability,
                self.lease_ttl_ms,
            )?)?);
        }
        slot.as_mut()
            .ok_or_else(|| StorageError::backend(BACKEND, "connecting", "no writer connection"))
    }

    /// A page of the log after `after`, of the collection or of one
    /// document, with the metadata of the same snapshot.
    fn changes_page(
        &self,
        name: &CollectionName,
        doc: Option<&DocId>,
        after: Seq,
        limit: usize,
    ) -> Result<Option<ChangesPage>, StorageError> {
        self.with_reader(|tx, reads| {
            let Some(stored) = reads.meta(tx, name)? else {
                return Ok(None);
            };
            let (after, limit) = (seq_param(after), clamp_limit(limit));
            let rows = match doc {
                None => tx.query(&reads.changes, &[&stored.cid, &after, &limit]),
                Some(doc) => tx.query(
                    &reads.document_changes,
                    &[&stored.cid, &doc.as_str(), &after, &limit],
                ),
            }
            .map_err(|e| pg_error("reading changes", e))?;
            let changes = rows.iter().map(change_row).collect::<Result<_, _>>()?;
            Ok(Some(ChangesPage {
                meta: stored.meta,
                changes,
            }))
        })
    }

    /// The documents of `name` with an id after `after`, in id order, at
    /// most `limit` (all when `None`): one aggregate over the (cid, doc,
    /// seq) index, seeking to `after`. Ids compare bytewise (`COLLATE "C"`)
    /// in the seek and the order alike, as every other backend orders them.
    fn documents_after(
        &self,
        name: &CollectionName,
        after: Option<&DocId>,
        limit: Option<usize>,
    ) -> Result<Vec<DocumentInfo>, StorageError> {
        let after = after.map_or("", DocId::as_str);
        let limit: Option<i64> = limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
        self.with_reader(|tx, reads| {
            let Some(stored) = reads.meta(tx, name)? else {
                return Ok(Vec::new());
            };
            let rows = tx
                .query(
                    "SELECT doc, max(seq), bool_or(kind = $2), sum(octet_length(payload))::bigint \
                     FROM seqsync_changes WHERE cid = $1 AND doc COLLATE \"C\" > $3 \
                     GROUP BY doc ORDER BY doc COLLATE \"C\" LIMIT $4",
                    &[
                        &stored.cid,
                        &i16::from(ChangeKind::Delete.code()),
                        &after,
                        &limit,
                    ],
                )
                .map_err(|e| pg_error("listing documents", e))?;
            rows.iter()
                .map(|row| {
                    let doc: String = row.get(0);
                    Ok(DocumentInfo {
                        doc: DocId::new(doc).map_err(|e| corrupt(e.to_string()))?,
                        last_seq: from_i64(row.get(1))?,
                        deleted: row.get(2),
                        stored_bytes: from_i64(row.get(3))?,
                    })
                })
                .collect()
        })
    }

    fn lease_ttl_ms(&self) -> i64 {
        i64::try_from(self.lease_ttl_ms).unwrap_or(i64::MAX)
    }
}

impl Drop for PostgresStorage {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.renewer.take() {
            stop.store(true, Ordering::SeqCst);
            thread.thread().unpark();
            let _ = thread.join();
        }
        // Give up every lease at once, so another node need not wait for
        // them to expire (best effort: a failure leaves them to expire).
        // The last handle may be dropped on an async thread, where a
        // blocking client may neither run nor even be dropped (its runtime
        // would start inside another): both happen on a thread of its own.
        let held: Vec<String> = lock(&self.leases)
            .map(|l| l.keys().cloned().collect())
            .unwrap_or_default();
        let writer = self.writer.get_mut().ok().and_then(Option::take);
        let readers = self
            .readers
            .get_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let node = &self.node;
        std::thread::scope(|scope| {
            let _ = scope.spawn(move || {
                if let (Some(mut writer), false) = (writer, held.is_empty()) {
                    let _ = writer.client.execute(
                        "UPDATE seqsync_collections SET lease_owner = NULL, lease_expires = NULL \
                         WHERE lease_owner = $1 AND name = ANY($2)",
                        &[node, &held],
                    );
                }
                drop(readers);
            });
        });
    }
}

impl Storage for PostgresStorage {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn durability(&self) -> Durability {
        self.durability
    }

    fn collection(&self, name: &CollectionName) -> Result<Option<CollectionMeta>, StorageError> {
        self.with_reader(|tx, reads| Ok(reads.meta(tx, name)?.map(|row| row.meta)))
    }

    fn list_collections(
        &self,
        after: Option<&CollectionName>,
        limit: usize,
    ) -> Result<Vec<(CollectionName, CollectionMeta)>, StorageError> {
        self.with_reader(|tx, _| {
            let rows = tx
                .query(
                    "SELECT name, id, epoch, head, log_checksum, schema_version, created_ms, \
                     lease_owner, lease_token, 0::bigint FROM seqsync_collections \
                     WHERE name COLLATE \"C\" > $1 ORDER BY name COLLATE \"C\" LIMIT $2",
                    &[&after.map_or("", |a| a.as_str()), &clamp_limit(limit)],
                )
                .map_err(|e| pg_error("listing collections", e))?;
            rows.iter()
                .map(|row| {
                    let name: String = row.get(0);
                    let name = CollectionName::new(name).map_err(|e| corrupt(e.to_string()))?;
                    Ok((name, meta_row(row, 1)?.meta))
                })
                .collect()
        })
    }

    fn read_changes(
        &self,
        name: &CollectionName,
        after: Seq,
        limit: usize,
    ) -> Result<Option<ChangesPage>, StorageError> {
        self.changes_page(name, None, after, limit)
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
        self.with_reader(|tx, reads| {
            let Some(stored) = reads.meta(tx, name)? else {
                return Ok(());
            };
            let rows = tx
                .query(
                    "SELECT seq, doc, kind, schema_version, origin, payload, checksum, author, committed_ms \
                     FROM seqsync_changes WHERE cid = $1 AND doc = $2 ORDER BY seq",
                    &[&stored.cid, &doc.as_str()],
                )
                .map_err(|e| pg_error("reading a document", e))?;
            for row in &rows {
                if visit(change_row(row)?).is_break() {
                    break;
                }
            }
            Ok(())
        })
    }

    fn read_document_changes(
        &self,
        name: &CollectionName,
        doc: &DocId,
        after: Seq,
        limit: usize,
    ) -> Result<Option<ChangesPage>, StorageError> {
        self.changes_page(name, Some(doc), after, limit)
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
        self.with_reader(|tx, reads| {
            let Some(stored) = reads.meta(tx, name)? else {
                return Ok(Vec::new());
            };
            let rows = tx
                .query(
                    "SELECT peer, acked, last_seen_ms FROM seqsync_peers WHERE cid = $1 \
                     ORDER BY peer COLLATE \"C\"",
                    &[&stored.cid],
                )
                .map_err(|e| pg_error("listing peers", e))?;
            rows.iter()
                .map(|row| {
                    let peer: String = row.get(0);
                    Ok(PeerRecord {
                        peer: PeerId::new(peer).map_err(|e| corrupt(e.to_string()))?,
                        acked: from_i64(row.get(1))?,
                        last_seen_ms: from_i64(row.get(2))?,
                    })
                })
                .collect()
        })
    }

    fn pins(&self, name: &CollectionName, doc: Option<&DocId>) -> Result<Vec<Pin>, StorageError> {
        self.with_reader(|tx, reads| {
            let Some(stored) = reads.meta(tx, name)? else {
                return Ok(Vec::new());
            };
            let rows = tx
                .query(
                    "SELECT doc, name, seq, created_ms, author FROM seqsync_pins \
                     WHERE cid = $1 AND ($2::text IS NULL OR doc = $2) \
                     ORDER BY doc COLLATE \"C\", seq, name COLLATE \"C\"",
                    &[&stored.cid, &doc.map(DocId::as_str)],
                )
                .map_err(|e| pg_error("listing pins", e))?;
            rows.iter()
                .map(|row| {
                    let doc: String = row.get(0);
                    Ok(Pin {
                        doc: DocId::new(doc).map_err(|e| corrupt(e.to_string()))?,
                        name: row.get(1),
                        seq: from_i64(row.get(2))?,
                        created_ms: from_i64(row.get(3))?,
                        author: row.get(4),
                    })
                })
                .collect()
        })
    }

    fn put_pin(&self, name: &CollectionName, pin: &Pin) -> Result<(), StorageError> {
        blocking_only("pinning a version")?;
        let mut slot = lock(&self.writer)?;
        let conn = self.writer_conn(&mut slot)?;
        let stored = conn
            .client
            .execute(
                "INSERT INTO seqsync_pins (cid, doc, name, seq, created_ms, author) \
                 SELECT id, $2, $3, $4, $5, $6 FROM seqsync_collections WHERE name = $1 \
                 ON CONFLICT (cid, doc, name) DO UPDATE SET seq = excluded.seq, \
                 created_ms = excluded.created_ms, author = excluded.author",
                &[
                    &name.as_str(),
                    &pin.doc.as_str(),
                    &pin.name,
                    &seq_param(pin.seq),
                    &seq_param(pin.created_ms),
                    &pin.author,
                ],
            )
            .map_err(|e| pg_error("pinning a version", e))?;
        if stored == 0 {
            return Err(StorageError::InvalidWrite(format!(
                "collection {name} does not exist"
            )));
        }
        Ok(())
    }

    fn delete_pin(
        &self,
        name: &CollectionName,
        doc: &DocId,
        pin_name: &str,
    ) -> Result<bool, StorageError> {
        blocking_only("deleting a pin")?;
        let mut slot = lock(&self.writer)?;
        let conn = self.writer_conn(&mut slot)?;
        let removed = conn
            .client
            .execute(
                "DELETE FROM seqsync_pins WHERE doc = $2 AND name = $3 \
                 AND cid = (SELECT id FROM seqsync_collections WHERE name = $1)",
                &[&name.as_str(), &doc.as_str(), &pin_name],
            )
            .map_err(|e| pg_error("deleting a pin", e))?;
        Ok(removed > 0)
    }

    fn commit(&self, batch: &WriteBatch) -> Result<(), StorageError> {
        blocking_only("committing")?;
        self.commit_group(batch, OnRefusal::Abort).map(|_| ())
    }

    fn commit_each(
        &self,
        batch: &WriteBatch,
    ) -> Result<Vec<Result<(), StorageError>>, StorageError> {
        blocking_only("committing")?;
        self.commit_group(batch, OnRefusal::LeaveOut)
    }

    fn sync(&self) -> Result<(), StorageError> {
        // `synchronous_commit = off` loses at most the last commits of a
        // crashed database server; flushing them is the server's WAL writer's
        // job (within three times `wal_writer_delay`).
        Ok(())
    }

    fn watch_commits(&self, on_commit: CommitWatcher) -> Result<(), StorageError> {
        let (url, node, durability) = (self.url.clone(), self.node.clone(), self.durability);
        let stop = self
            .renewer
            .as_ref()
            .map(|(stop, _)| Arc::clone(stop))
            .unwrap_or_default();
        std::thread::Builder::new()
            .name("seqsync-pg-watch".to_owned())
            .spawn(move || watch(&url, durability, &node, &on_commit, &stop))
            .map_err(|e| StorageError::backend(BACKEND, "starting the commit watcher", e))?;
        Ok(())
    }

    fn release_collection(&self, name: &CollectionName) -> Result<(), StorageError> {
        blocking_only("releasing a lease")?;
        let token = lock(&self.leases)?.remove(name.as_str());
        let Some(token) = token else {
            return Ok(());
        };
        let mut writer = lock(&self.writer)?;
        self.writer_conn(&mut writer)?
            .client
            .execute(
                "UPDATE seqsync_collections SET lease_owner = NULL, lease_expires = NULL \
                 WHERE name = $1 AND lease_owner = $2 AND lease_token = $3",
                &[&name.as_str(), &self.node, &token],
            )
            .map_err(|e| pg_error("releasing a lease", e))?;
        Ok(())
    }
}

impl PostgresStorage {
    /// Applies one collection's write in `tx`. Returns the lease token taken
    /// when this write took the collection's lease, and the head after it.
    fn apply_write(
        &self,
        tx: &mut Transaction<'_>,
        write: &CollectionWrite,
    ) -> Result<(Option<i64>, Seq), StorageError> {
        let name = write.collection.as_str();
        let held = lock(&self.leases)?.get(name).copied();
        let stored = read_meta(tx, &write.collection, true)?;
        let plan = plan_collection_write(write, stored.as_ref().map(|s| &s.meta))?;
        let meta = plan.meta;
        let ttl = self.lease_ttl_ms() as f64;
        let mut taken = None;
        let (cid, token) = match (&stored, write.base) {
            (None, WriteBase::Create { .. }) => {
                let row = tx
                    .query_opt(
                        "INSERT INTO seqsync_collections \
                         (name, epoch, head, log_checksum, schema_version, created_ms, \
                          lease_owner, lease_token, lease_expires) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, 1, now() + $8::float8 * interval '1 millisecond') \
                         ON CONFLICT (name) DO NOTHING RETURNING id",
                        &[
                            &name,
                            &&meta.epoch.0[..],
                            &seq_param(meta.head),
                            &(meta.log_checksum as i64),
                            &(meta.schema_version as i32),
                            &i64::try_from(meta.created_ms).unwrap_or(i64::MAX),
                            &self.node,
                            &ttl,
                        ],
                    )
                    .map_err(|e| pg_error("creating a collection", e))?;
                let Some(row) = row else {
                    return Err(StorageError::Conflict {
                        collection: name.to_owned(),
                        detail: "created by another node meanwhile".to_owned(),
                    });
                };
                self.log_lease(tx, name, 1)?;
                taken = Some(1);
                (row.get::<_, i64>(0), 1)
            }
            (Some(stored), WriteBase::Existing { epoch, head }) => {
                // Take the lease first if this node does not hold it.
                let token = match held {
                    Some(token) => token,
                    None => {
                        let token = self.take_lease(tx, name, stored)?;
                        taken = Some(token);
                        token
                    }
                };
                // The fenced, conditional head move: zero rows means the
                // base moved or the lease is no longer this node's.
                let moved = tx
                    .execute(
                        "UPDATE seqsync_collections SET head = $1, log_checksum = $2, \
                         schema_version = $3, lease_expires = now() + $4::float8 * interval '1 millisecond' \
                         WHERE id = $5 AND epoch = $6 AND head = $7 \
                         AND lease_owner = $8 AND lease_token = $9",
                        &[
                            &seq_param(meta.head),
                            &(meta.log_checksum as i64),
                            &(meta.schema_version as i32),
                            &ttl,
                            &stored.cid,
                            &&epoch.0[..],
                            &seq_param(head),
                            &self.node,
                            &token,
                        ],
                    )
                    .map_err(|e| pg_error("moving the head", e))?;
                if moved == 0 {
                    return Err(self.refusal(tx, name, token));
                }
                (stored.cid, token)
            }
            // plan_collection_write refused every other combination.
            _ => {
                return Err(StorageError::InvalidWrite(format!(
                    "collection {name}: base does not match what is stored"
                )))
            }
        };
        insert_changes(
            tx,
            cid,
            token,
            write
                .append
                .iter()
                .zip(plan.append_checksums.iter().copied()),
        )?;
        for compaction in &write.compact {
            let pinned_inside: i64 = tx
                .query_one(
                    "SELECT count(*) FROM seqsync_pins \
                     WHERE cid = $1 AND doc = $2 AND seq > $3 AND seq < $4",
                    &[
                        &cid,
                        &compaction.doc.as_str(),
                        &seq_param(compaction.after),
                        &seq_param(compaction.through),
                    ],
                )
                .map_err(|e| pg_error("checking pins", e))?
                .get(0);
            if pinned_inside > 0 {
                // Pinned after this compaction was planned: the version
                // must stay readable, so this range is left as it is.
                continue;
            }
            let mut target_checksum = 0u64;
            let mut target_committed_ms = 0u64;
            if compaction.snapshot.is_some() {
                let target = tx
                    .query_opt(
                        "SELECT doc, kind, checksum, committed_ms FROM seqsync_changes \
                         WHERE cid = $1 AND seq = $2",
                        &[&cid, &seq_param(compaction.through)],
                    )
                    .map_err(|e| pg_error("compacting", e))?;
                let replaceable = target.as_ref().is_some_and(|row| {
                    row.get::<_, String>(0) == compaction.doc.as_str()
                        && matches!(
                            u8::try_from(row.get::<_, i16>(1))
                                .ok()
                                .and_then(ChangeKind::from_code),
                            Some(ChangeKind::Update | ChangeKind::Snapshot)
                        )
                });
                if !replaceable {
                    return Err(StorageError::InvalidWrite(format!(
                        "collection {name}: no update of {} at seq {} for the snapshot to replace",
                        compaction.doc, compaction.through
                    )));
                }
                target_checksum = target.as_ref().map_or(0, |row| row.get::<_, i64>(2) as u64);
                target_committed_ms =
                    target.map_or(0, |row| u64::try_from(row.get::<_, i64>(3)).unwrap_or(0));
            }
            tx.execute(
                "DELETE FROM seqsync_changes WHERE cid = $1 AND doc = $2 AND seq <= $3 \
                 AND seq > $6 AND kind IN ($4, $5)",
                &[
                    &cid,
                    &compaction.doc.as_str(),
                    &seq_param(compaction.through),
                    &i16::from(ChangeKind::Update.code()),
                    &i16::from(ChangeKind::Snapshot.code()),
                    &seq_param(compaction.after),
                ],
            )
            .map_err(|e| pg_error("compacting", e))?;
            if let Some(snapshot) =
                snapshot_change(compaction, target_checksum, target_committed_ms)
            {
                insert_changes(
                    tx,
                    cid,
                    token,
                    std::iter::once((&snapshot, target_checksum)),
                )?;
            }
        }
        if !write.peers.is_empty() {
            let rows = PeerRows::merged(write.peers.iter().map(|p| (cid, p)));
            tx.execute(
                commit::UPSERT_PEERS,
                &[&rows.cids, &rows.peers, &rows.acked, &rows.seen],
            )
            .map_err(|e| pg_error("updating peers", e))?;
        }
        Ok((taken, meta.head))
    }
}

/// Refuses to run on an async runtime's thread (module docs), unless the
/// thread declared itself a blocking-pool thread
/// ([`seqsync_engine::on_blocking_thread`]).
fn blocking_only(during: &'static str) -> Result<(), StorageError> {
    if tokio::runtime::Handle::try_current().is_ok() && !seqsync_engine::declared_blocking_thread()
    {
        return Err(StorageError::backend(
            BACKEND,
            during,
            "called from an async runtime thread: the postgres backend blocks, so it runs only on \
             threads that may block (the engine's writer and read pool, or inside \
             seqsync_engine::on_blocking_thread on a spawn_blocking thread)",
        ));
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>, StorageError> {
    mutex
        .lock()
        .map_err(|_| StorageError::backend(BACKEND, "locking a connection", "poisoned by a panic"))
}

fn pg_error(during: &'static str, err: postgres::Error) -> StorageError {
    StorageError::backend(BACKEND, during, err)
}

fn corrupt(detail: String) -> StorageError {
    StorageError::Corrupt {
        backend: BACKEND,
        detail,
    }
}
