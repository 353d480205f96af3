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
//! called from the engine's writer and read-pool threads, never from an
//! actix or tokio thread (there it would stall the executor, or panic): every
//! call checks, and answers a typed error instead.
//!
//! Layout (versioned by `seqsync_schema_migrations`, applied under an
//! advisory lock so nodes starting together do not race):
//! `seqsync_collections` (one row per collection: epoch, head, log checksum,
//! schema version, lease), `seqsync_changes` (the log, primary key
//! (cid, seq), indexed by (cid, doc, seq)), `seqsync_peers`,
//! `seqsync_lease_log`.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, IsolationLevel, NoTls, Row, Transaction};
use seqsync_engine::{
    check_batch_shape, plan_collection_write, redact_url, snapshot_change, Change, ChangeKind,
    ChangesPage, CollectionMeta, CollectionName, CollectionWrite, CommitWatcher, DocId,
    DocumentInfo, Durability, Epoch, PeerId, PeerRecord, Seq, Storage, StorageConfig, StorageError,
    WriteBase, WriteBatch,
};

const BACKEND: &str = "postgres";

/// The newest version of the table layout, the last entry of `MIGRATIONS`.
pub const POSTGRES_SCHEMA_VERSION: i32 = 1;

/// The layout, one entry per version: (version, what it does, SQL). Applied
/// in order, each in the transaction that records it.
const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "collections with leases, the log, peers, the lease log",
    "CREATE TABLE seqsync_collections (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        epoch BYTEA NOT NULL,
        head BIGINT NOT NULL DEFAULT 0,
        log_checksum BIGINT NOT NULL DEFAULT 0,
        schema_version INTEGER NOT NULL,
        created_ms BIGINT NOT NULL,
        lease_owner TEXT,
        lease_token BIGINT NOT NULL DEFAULT 0,
        lease_expires TIMESTAMPTZ
    );
    CREATE TABLE seqsync_changes (
        cid BIGINT NOT NULL REFERENCES seqsync_collections (id),
        seq BIGINT NOT NULL,
        doc TEXT NOT NULL,
        kind SMALLINT NOT NULL,
        schema_version INTEGER NOT NULL,
        origin TEXT,
        payload BYTEA NOT NULL,
        checksum BIGINT NOT NULL,
        lease_token BIGINT NOT NULL,
        PRIMARY KEY (cid, seq)
    );
    CREATE INDEX seqsync_changes_by_doc ON seqsync_changes (cid, doc, seq);
    -- Yjs updates do not compress: keep large payloads out of line but
    -- uncompressed, so loading a snapshot is a read, not a pglz inflate.
    ALTER TABLE seqsync_changes ALTER COLUMN payload SET STORAGE EXTERNAL;
    CREATE TABLE seqsync_peers (
        cid BIGINT NOT NULL REFERENCES seqsync_collections (id),
        peer TEXT NOT NULL,
        acked BIGINT NOT NULL,
        last_seen_ms BIGINT NOT NULL,
        PRIMARY KEY (cid, peer)
    );
    CREATE TABLE seqsync_lease_log (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        collection TEXT NOT NULL,
        owner TEXT NOT NULL,
        token BIGINT NOT NULL,
        taken_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );",
)];

/// The advisory lock key that serialises schema migrations across nodes
/// ("seqsync" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x0073_6571_7379_6e63;

/// The channel commits are announced on (`LISTEN seqsync_commits`).
const NOTIFY_CHANNEL: &str = "seqsync_commits";
/// How often the commit watcher polls the heads, in case a notification
/// was missed (a dropped listener connection).
const WATCH_POLL_MS: u64 = 1_000;

/// The leases this node holds: collection name → token.
type Leases = Arc<Mutex<HashMap<String, i64>>>;

/// A [`Storage`] on PostgreSQL. See the module docs.
pub struct PostgresStorage {
    url: String,
    durability: Durability,
    node: String,
    lease_ttl_ms: u64,
    /// `None` once dropped (see `Drop`).
    writer: Mutex<Option<Client>>,
    readers: Mutex<Vec<Client>>,
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
        let readers = vec![connect(&url, config.durability)?];
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
    /// on a pooled connection.
    fn with_reader<T>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        blocking_only("reading")?;
        let pooled = lock(&self.readers)?.pop();
        let mut client = match pooled {
            Some(client) => client,
            None => connect(&self.url, self.durability)?,
        };
        let result = (|| {
            let mut tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(|e| pg_error("beginning a read", e))?;
            let result = f(&mut tx);
            tx.commit().map_err(|e| pg_error("ending a read", e))?;
            result
        })();
        // A connection that failed is dropped, not pooled.
        if !client.is_closed() && result.is_ok() {
            let mut idle = lock(&self.readers)?;
            if idle.len() < self.max_idle_readers {
                idle.push(client);
            }
        }
        result
    }

    /// The writer's connection, connected again if it was lost.
    fn writer_client<'a>(
        &self,
        slot: &'a mut Option<Client>,
    ) -> Result<&'a mut Client, StorageError> {
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(connect_writer(
                &self.url,
                self.durability,
                self.lease_ttl_ms,
            )?);
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
        self.with_reader(|tx| {
            let Some(stored) = read_meta(tx, name, false)? else {
                return Ok(None);
            };
            let (after, limit) = (seq_param(after), clamp_limit(limit));
            let rows = match doc {
                None => tx.query(
                    "SELECT seq, doc, kind, schema_version, origin, payload, checksum \
                     FROM seqsync_changes WHERE cid = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    &[&stored.cid, &after, &limit],
                ),
                Some(doc) => tx.query(
                    "SELECT seq, doc, kind, schema_version, origin, payload, checksum \
                     FROM seqsync_changes WHERE cid = $1 AND doc = $2 AND seq > $3 \
                     ORDER BY seq LIMIT $4",
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
                    let _ = writer.execute(
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

fn connect(url: &str, durability: Durability) -> Result<Client, StorageError> {
    let mut client = Client::connect(url, NoTls).map_err(|e| {
        StorageError::backend(
            BACKEND,
            "connecting",
            format!("{} ({})", e, redact_url(url)),
        )
    })?;
    let synchronous = match durability {
        Durability::Immediate => "on",
        Durability::Eventual => "off",
    };
    client
        .batch_execute(&format!(
            "SET synchronous_commit = {synchronous}; SET application_name = 'seqsync';"
        ))
        .map_err(|e| pg_error("configuring a connection", e))?;
    Ok(client)
}

/// The writer's connection: as [`connect`], and a transaction left idle
/// longer than the lease (the node was paused mid-commit: SIGSTOP, a long
/// GC, a partition) is ended by the database. Its row locks would otherwise
/// stop every other node from writing the collection, lease or not; the
/// paused commit fails and was never acknowledged.
fn connect_writer(
    url: &str,
    durability: Durability,
    lease_ttl_ms: u64,
) -> Result<Client, StorageError> {
    let mut client = connect(url, durability)?;
    client
        .batch_execute(&format!(
            "SET idle_in_transaction_session_timeout = {lease_ttl_ms}"
        ))
        .map_err(|e| pg_error("configuring the writer", e))?;
    Ok(client)
}

/// Creates the schema or brings it to [`POSTGRES_SCHEMA_VERSION`], one
/// migration per transaction, under an advisory lock.
fn migrate_schema(client: &mut Client, url: &str) -> Result<(), StorageError> {
    let failed = |e| pg_error("migrating the schema", e);
    let mut tx = client.transaction().map_err(failed)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .map_err(failed)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS seqsync_schema_migrations (
            version INTEGER PRIMARY KEY,
            description TEXT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .map_err(failed)?;
    let current: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM seqsync_schema_migrations",
            &[],
        )
        .map_err(failed)?
        .get(0);
    if current > POSTGRES_SCHEMA_VERSION {
        return Err(StorageError::UnsupportedFormat {
            backend: BACKEND,
            path: std::path::PathBuf::from(redact_url(url)),
            found: u64::try_from(current).unwrap_or(0),
            supported: POSTGRES_SCHEMA_VERSION as u64,
        });
    }
    for (version, description, sql) in MIGRATIONS {
        if *version <= current {
            continue;
        }
        tx.batch_execute(sql).map_err(|e| StorageError::NotAStore {
            backend: BACKEND,
            path: std::path::PathBuf::from(redact_url(url)),
            detail: format!("applying schema version {version}: {e}"),
        })?;
        tx.execute(
            "INSERT INTO seqsync_schema_migrations (version, description) VALUES ($1, $2)",
            &[version, description],
        )
        .map_err(failed)?;
    }
    tx.commit().map_err(failed)
}

/// `host-pid-random`: unique per process without configuration.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "node".to_owned());
    let random = Epoch::random().map(|e| e.to_string()).unwrap_or_default();
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &random[..8.min(random.len())]
    )
}

/// The renewer thread: every third of the ttl, extends every held lease in
/// one statement; a lease the statement did not extend (another node took
/// it) is forgotten, so the next commit of that collection takes the lease
/// again or answers `NotOwner`.
fn renew_leases(
    url: &str,
    durability: Durability,
    node: &str,
    ttl_ms: u64,
    leases: &Leases,
    stop: &AtomicBool,
) {
    let mut client: Option<Client> = None;
    let every = Duration::from_millis((ttl_ms / 3).max(1));
    while !stop.load(Ordering::SeqCst) {
        std::thread::park_timeout(every);
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let held: Vec<(String, i64)> = match leases.lock() {
            Ok(l) => l.iter().map(|(c, t)| (c.clone(), *t)).collect(),
            Err(_) => return,
        };
        if held.is_empty() {
            continue;
        }
        if client.as_ref().is_none_or(Client::is_closed) {
            client = connect(url, durability).ok();
        }
        let Some(conn) = client.as_mut() else {
            continue;
        };
        let names: Vec<&str> = held.iter().map(|(c, _)| c.as_str()).collect();
        let tokens: Vec<i64> = held.iter().map(|(_, t)| *t).collect();
        let renewed = conn.query(
            "UPDATE seqsync_collections c SET lease_expires = now() + $2::float8 * interval '1 millisecond' \
             FROM unnest($3::text[], $4::bigint[]) AS h(name, token) \
             WHERE c.name = h.name AND c.lease_token = h.token AND c.lease_owner = $1 \
             RETURNING c.name",
            &[&node, &(ttl_ms as f64), &names, &tokens],
        );
        match renewed {
            Ok(rows) => {
                let kept: std::collections::HashSet<String> =
                    rows.iter().map(|r| r.get::<_, String>(0)).collect();
                if let Ok(mut l) = leases.lock() {
                    for (name, token) in &held {
                        if !kept.contains(name) && l.get(name) == Some(token) {
                            tracing::warn!(collection = %name, "lease lost to another node");
                            metrics::counter!("seqsync_leases_lost_total").increment(1);
                            l.remove(name);
                        }
                    }
                    metrics::gauge!("seqsync_leases_held").set(l.len() as f64);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing leases failed; retrying");
                client = None;
            }
        }
    }
}

/// The commit watcher thread: `LISTEN`s for other nodes' commits and
/// polls the heads of collections this node does not own every second (a
/// notification is lost while the connection is down), calling `on_commit`
/// for each head that moved. Ends when the storage is dropped.
fn watch(
    url: &str,
    durability: Durability,
    node: &str,
    on_commit: &CommitWatcher,
    stop: &AtomicBool,
) {
    let mut known: HashMap<String, i64> = HashMap::new();
    let mut client: Option<Client> = None;
    let mut first_poll = true;
    while !stop.load(Ordering::SeqCst) {
        if client.as_ref().is_none_or(Client::is_closed) {
            client = connect(url, durability)
                .and_then(|mut c| {
                    c.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
                        .map_err(|e| pg_error("listening", e))?;
                    Ok(c)
                })
                .ok();
            if client.is_none() {
                std::thread::sleep(Duration::from_millis(WATCH_POLL_MS));
                continue;
            }
        }
        let Some(conn) = client.as_mut() else {
            continue;
        };
        let mut moved: Vec<(String, i64)> = Vec::new();
        let mut lost = false;
        {
            let started = std::time::Instant::now();
            let mut notifications = conn.notifications();
            let mut waiting = notifications.timeout_iter(Duration::from_millis(WATCH_POLL_MS));
            // Notifications are handed on as they come; the poll runs once
            // a second however busy the channel is.
            while started.elapsed() < Duration::from_millis(WATCH_POLL_MS) {
                match waiting.next() {
                    Ok(Some(note)) => {
                        let mut parts = note.payload().splitn(3, ' ');
                        let (Some(from), Some(head), Some(name)) =
                            (parts.next(), parts.next(), parts.next())
                        else {
                            continue;
                        };
                        if from == node {
                            continue;
                        }
                        if let Ok(head) = head.parse::<i64>() {
                            dispatch(&mut known, on_commit, name.to_owned(), head);
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        lost = true;
                        break;
                    }
                }
            }
        }
        if lost {
            client = None;
        }
        // The poll: what a lost notification would have said.
        if let Some(conn) = client.as_mut() {
            match conn.query(
                "SELECT name, head FROM seqsync_collections                  WHERE lease_owner IS DISTINCT FROM $1",
                &[&node],
            ) {
                Ok(rows) => {
                    for row in rows {
                        let (name, head): (String, i64) = (row.get(0), row.get(1));
                        if first_poll {
                            known.insert(name, head);
                        } else if known.get(&name).is_none_or(|&k| k < head) {
                            moved.push((name, head));
                        }
                    }
                    first_poll = false;
                }
                Err(_) => client = None,
            }
        }
        for (name, head) in moved {
            dispatch(&mut known, on_commit, name, head);
        }
    }
}

/// Calls `on_commit` for a head not seen before.
fn dispatch(known: &mut HashMap<String, i64>, on_commit: &CommitWatcher, name: String, head: i64) {
    if known.get(&name).is_some_and(|&k| k >= head) {
        return;
    }
    known.insert(name.clone(), head);
    if let Ok(collection) = CollectionName::new(name) {
        on_commit(&collection, u64::try_from(head).unwrap_or(0));
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
        self.with_reader(|tx| Ok(read_meta(tx, name, false)?.map(|row| row.meta)))
    }

    fn list_collections(
        &self,
        after: Option<&CollectionName>,
        limit: usize,
    ) -> Result<Vec<(CollectionName, CollectionMeta)>, StorageError> {
        self.with_reader(|tx| {
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
        self.with_reader(|tx| {
            let Some(stored) = read_meta(tx, name, false)? else {
                return Ok(());
            };
            let rows = tx
                .query(
                    "SELECT seq, doc, kind, schema_version, origin, payload, checksum \
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
        self.with_reader(|tx| {
            let Some(stored) = read_meta(tx, name, false)? else {
                return Ok(Vec::new());
            };
            let rows = tx
                .query(
                    "SELECT doc, max(seq), bool_or(kind = $2) FROM seqsync_changes \
                     WHERE cid = $1 GROUP BY doc ORDER BY doc COLLATE \"C\"",
                    &[&stored.cid, &i16::from(ChangeKind::Delete.code())],
                )
                .map_err(|e| pg_error("listing documents", e))?;
            rows.iter()
                .map(|row| {
                    let doc: String = row.get(0);
                    Ok(DocumentInfo {
                        doc: DocId::new(doc).map_err(|e| corrupt(e.to_string()))?,
                        last_seq: from_i64(row.get(1))?,
                        deleted: row.get(2),
                    })
                })
                .collect()
        })
    }

    fn peers(&self, name: &CollectionName) -> Result<Vec<PeerRecord>, StorageError> {
        self.with_reader(|tx| {
            let Some(stored) = read_meta(tx, name, false)? else {
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

    fn commit(&self, batch: &WriteBatch) -> Result<(), StorageError> {
        check_batch_shape(batch)?;
        blocking_only("committing")?;
        let mut writer = lock(&self.writer)?;
        let writer = self.writer_client(&mut writer)?;
        let mut tx = writer
            .transaction()
            .map_err(|e| pg_error("beginning a commit", e))?;
        let mut taken = Vec::new();
        let mut heads = Vec::with_capacity(batch.writes.len());
        for write in &batch.writes {
            // An error returns early; dropping `tx` rolls everything back.
            let (token, head) = self.apply_write(&mut tx, write)?;
            if let Some(token) = token {
                taken.push((write.collection.to_string(), token));
            }
            heads.push((write.collection.as_str(), head));
        }
        // One wake-up per collection, delivered to listeners when (and only
        // if) the transaction commits: `node head name`, far below the
        // 8,000-byte payload limit (names are at most a few hundred bytes).
        for (name, head) in heads {
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&NOTIFY_CHANNEL, &format!("{} {} {}", self.node, head, name)],
            )
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
        Ok(())
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
        self.writer_client(&mut writer)?
            .execute(
                "UPDATE seqsync_collections SET lease_owner = NULL, lease_expires = NULL \
                 WHERE name = $1 AND lease_owner = $2 AND lease_token = $3",
                &[&name.as_str(), &self.node, &token],
            )
            .map_err(|e| pg_error("releasing a lease", e))?;
        Ok(())
    }
}

/// A collection's row: its id, metadata and lease.
struct StoredRow {
    cid: i64,
    meta: CollectionMeta,
    lease_owner: Option<String>,
    /// Milliseconds until the lease expires (0 when expired or free).
    lease_left_ms: i64,
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
            let mut target_checksum = 0u64;
            if compaction.snapshot.is_some() {
                let target = tx
                    .query_opt(
                        "SELECT doc, kind, checksum FROM seqsync_changes WHERE cid = $1 AND seq = $2",
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
                target_checksum = target.map_or(0, |row| row.get::<_, i64>(2) as u64);
            }
            tx.execute(
                "DELETE FROM seqsync_changes WHERE cid = $1 AND doc = $2 AND seq <= $3 \
                 AND kind IN ($4, $5)",
                &[
                    &cid,
                    &compaction.doc.as_str(),
                    &seq_param(compaction.through),
                    &i16::from(ChangeKind::Update.code()),
                    &i16::from(ChangeKind::Snapshot.code()),
                ],
            )
            .map_err(|e| pg_error("compacting", e))?;
            if let Some(snapshot) = snapshot_change(compaction, target_checksum) {
                insert_changes(
                    tx,
                    cid,
                    token,
                    std::iter::once((&snapshot, target_checksum)),
                )?;
            }
        }
        if !write.peers.is_empty() {
            let peers: Vec<&str> = write.peers.iter().map(|p| p.peer.as_str()).collect();
            let acked: Vec<i64> = write.peers.iter().map(|p| seq_param(p.acked)).collect();
            let seen: Vec<i64> = write
                .peers
                .iter()
                .map(|p| i64::try_from(p.last_seen_ms).unwrap_or(i64::MAX))
                .collect();
            tx.execute(
                "INSERT INTO seqsync_peers (cid, peer, acked, last_seen_ms) \
                 SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::bigint[]) \
                 ON CONFLICT (cid, peer) DO UPDATE SET \
                 acked = GREATEST(seqsync_peers.acked, excluded.acked), \
                 last_seen_ms = GREATEST(seqsync_peers.last_seen_ms, excluded.last_seen_ms)",
                &[&cid, &peers, &acked, &seen],
            )
            .map_err(|e| pg_error("updating peers", e))?;
        }
        Ok((taken, meta.head))
    }

    /// Takes the lease of `name` for this node if it is free, expired, or
    /// already this node's (a restarted node fences its earlier self: the
    /// token always grows). `NotOwner` when another node holds it.
    fn take_lease(
        &self,
        tx: &mut Transaction<'_>,
        name: &str,
        stored: &StoredRow,
    ) -> Result<i64, StorageError> {
        let row = tx
            .query_opt(
                "UPDATE seqsync_collections SET lease_owner = $1, lease_token = lease_token + 1, \
                 lease_expires = now() + $2::float8 * interval '1 millisecond' \
                 WHERE id = $3 AND (lease_owner IS NULL OR lease_owner = $1 \
                 OR lease_expires IS NULL OR lease_expires <= now()) \
                 RETURNING lease_token",
                &[&self.node, &(self.lease_ttl_ms() as f64), &stored.cid],
            )
            .map_err(|e| pg_error("taking a lease", e))?;
        match row {
            Some(row) => {
                let token: i64 = row.get(0);
                self.log_lease(tx, name, token)?;
                Ok(token)
            }
            None => Err(StorageError::NotOwner {
                collection: name.to_owned(),
                owner: stored.lease_owner.clone().unwrap_or_default(),
                retry_after_ms: u64::try_from(stored.lease_left_ms).unwrap_or(0),
            }),
        }
    }

    fn log_lease(
        &self,
        tx: &mut Transaction<'_>,
        name: &str,
        token: i64,
    ) -> Result<(), StorageError> {
        tx.execute(
            "INSERT INTO seqsync_lease_log (collection, owner, token) VALUES ($1, $2, $3)",
            &[&name, &self.node, &token],
        )
        .map_err(|e| pg_error("logging a lease", e))?;
        Ok(())
    }

    /// Why the fenced update moved nothing: the lease went to another node
    /// (`NotOwner`, and it is forgotten here), or the base moved
    /// (`Conflict`).
    fn refusal(&self, tx: &mut Transaction<'_>, name: &str, token: i64) -> StorageError {
        let now = tx.query_opt(
            "SELECT lease_owner, lease_token, \
             greatest(0, (extract(epoch FROM lease_expires - now()) * 1000)::bigint), head \
             FROM seqsync_collections WHERE name = $1",
            &[&name],
        );
        match now {
            Ok(Some(row)) => {
                let owner: Option<String> = row.get(0);
                let current: i64 = row.get(1);
                let left: Option<i64> = row.get(2);
                if owner.as_deref() != Some(self.node.as_str()) || current != token {
                    if let Ok(mut leases) = lock(&self.leases) {
                        leases.remove(name);
                    }
                    metrics::counter!("seqsync_leases_lost_total").increment(1);
                    StorageError::NotOwner {
                        collection: name.to_owned(),
                        owner: owner.unwrap_or_default(),
                        retry_after_ms: u64::try_from(left.unwrap_or(0)).unwrap_or(0),
                    }
                } else {
                    let head: i64 = row.get(3);
                    StorageError::Conflict {
                        collection: name.to_owned(),
                        detail: format!("the stored head is {head}"),
                    }
                }
            }
            Ok(None) => StorageError::Conflict {
                collection: name.to_owned(),
                detail: "the collection is gone".to_owned(),
            },
            Err(e) => pg_error("reading a refused commit's collection", e),
        }
    }
}

/// Appends changes with one `INSERT … SELECT FROM unnest(…)` (one round trip
/// for the whole group), each with the lease token its commit was fenced
/// by: along the log the tokens never decrease, which is what an audit
/// checks (a commit from a deposed owner would show an older token after a
/// newer one).
fn insert_changes<'a>(
    tx: &mut Transaction<'_>,
    cid: i64,
    token: i64,
    changes: impl Iterator<Item = (&'a Change, u64)>,
) -> Result<(), StorageError> {
    let mut seqs = Vec::new();
    let mut docs = Vec::new();
    let mut kinds = Vec::new();
    let mut schemas = Vec::new();
    let mut origins = Vec::new();
    let mut payloads = Vec::new();
    let mut checksums = Vec::new();
    for (change, checksum) in changes {
        seqs.push(seq_param(change.seq));
        docs.push(change.doc.as_str());
        kinds.push(i16::from(change.kind.code()));
        schemas.push(change.schema_version as i32);
        origins.push(change.origin.as_ref().map(PeerId::as_str));
        payloads.push(change.payload.as_slice());
        checksums.push(checksum as i64);
    }
    if seqs.is_empty() {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO seqsync_changes \
         (cid, lease_token, seq, doc, kind, schema_version, origin, payload, checksum) \
         SELECT $1, $2, * FROM unnest($3::bigint[], $4::text[], $5::smallint[], $6::integer[], \
         $7::text[], $8::bytea[], $9::bigint[])",
        &[
            &cid, &token, &seqs, &docs, &kinds, &schemas, &origins, &payloads, &checksums,
        ],
    )
    .map_err(|e| pg_error("appending", e))?;
    Ok(())
}

/// The collection's row; `for_update` locks it until the transaction ends
/// (commits of one collection from two nodes then queue on the row instead
/// of both planning against the same head).
fn read_meta(
    tx: &mut Transaction<'_>,
    name: &CollectionName,
    for_update: bool,
) -> Result<Option<StoredRow>, StorageError> {
    let sql = if for_update {
        "SELECT id, epoch, head, log_checksum, schema_version, created_ms, lease_owner, \
         lease_token, greatest(0, (extract(epoch FROM lease_expires - now()) * 1000)::bigint) \
         FROM seqsync_collections WHERE name = $1 FOR UPDATE"
    } else {
        "SELECT id, epoch, head, log_checksum, schema_version, created_ms, lease_owner, \
         lease_token, 0::bigint FROM seqsync_collections WHERE name = $1"
    };
    let row = tx
        .query_opt(sql, &[&name.as_str()])
        .map_err(|e| pg_error("reading collection metadata", e))?;
    row.map(|row| meta_row(&row, 0)).transpose()
}

/// A [`StoredRow`] from columns `at..`: id, epoch, head, log_checksum,
/// schema_version, created_ms, lease_owner, lease_token, lease_left_ms.
fn meta_row(row: &Row, at: usize) -> Result<StoredRow, StorageError> {
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

fn change_row(row: &Row) -> Result<Change, StorageError> {
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
    })
}

/// Refuses to run on an async runtime's thread (module docs).
fn blocking_only(during: &'static str) -> Result<(), StorageError> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(StorageError::backend(
            BACKEND,
            during,
            "called from an async runtime thread: the postgres backend blocks, so it runs only on \
             the engine's writer and read-pool threads (move the call to a thread of its own)",
        ));
    }
    Ok(())
}

/// Seqs above `i64::MAX` cannot be stored (`BIGINT`); reads clamp to it.
fn seq_param(seq: Seq) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn from_i64(value: i64) -> Result<u64, StorageError> {
    u64::try_from(value).map_err(|_| corrupt(format!("negative value {value}")))
}

fn clamp_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
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
