//! `Engine`: the handle a host embeds.
//!
//! `Engine::builder(..).open()` starts everything the engine needs and hides it: an actix
//! system on its own thread with one arbiter per core (the collection actors
//! live there), the storage writer thread, and a pool of threads for blocking
//! reads. The handle is `Clone + Send + Sync`; its methods are `async` and
//! only await channels, so they run on any executor (actix-web, axum, plain
//! tokio) without the host knowing about actix.
//!
//! Writes and acks go through the collection's actor (the single writer).
//! Reads of the log (`changes`, `peers`) go straight to storage on the read
//! pool: storage holds only committed changes, and each page comes from one
//! snapshot, so visibility follows seq by construction. Document reads are
//! served from the actor's memory when that is exact, else rebuilt from
//! storage.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix::{Addr, MailboxError};
use seqsync_engine::{
    bundle::{export_collection, BundleError, ExportOptions, ExportReport},
    collection_digest, decode_state_vector, document_digest_at, load_document, migrate_collection,
    now_ms, AckError, CollectionDigest, CollectionName, DigestCache, DocId, DocumentDigest,
    DocumentDigestAt, EngineConfig, Epoch, LoadedDocument, Migrations, OpenError, PeerId,
    ReadError, Seq, Storage, StorageConfig, StorageError, WriteError,
};
use tokio::sync::oneshot;

use crate::collection::{
    Ack, CachedDoc, CachedRead, CollectionActor, CompactNow, Grant, SharedDoc, SharedRead,
    SharedWhat, Subscribe, Write, WriteDone, WriteOp,
};
use crate::compactor::Compactor;
use crate::context::Shared;
use crate::metrics as m;
use crate::pool::BlockingPool;
use crate::registry::Registry;
use crate::subscription::{self, Subscription};
use crate::types::{
    BatchOutcome, ChangesPage, CollectionRecovery, CompactionSummary, DeleteOutcome, DocumentState,
    DocumentStateVector, PeerInfo, PushOptions, PushOutcome, Recovery, SharedDocumentState,
};
use crate::writer::Writer;

/// Threads merging compactions.
const COMPACTOR_THREADS: usize = 1;
/// How long shutdown waits for the runtime's threads to let go of the store.
const RELEASE_WAIT_MS: u64 = 2_000;
/// Threads in the blocking read pool.
const READ_THREADS: usize = 4;
/// Document terms kept for `Engine::digest` across all collections (a seq
/// and a u64 each); beyond this the caches start over.
const MAX_DIGEST_CACHE_DOCUMENTS: usize = 1_000_000;
/// Writes queued for the writer, at most, across all collections.
const WRITER_QUEUE_CAPACITY: usize = 65_536;

/// Configures an [`Engine`] before it opens; from [`Engine::builder`].
#[must_use = "an EngineBuilder does nothing until open() is called"]
pub struct EngineBuilder {
    config: EngineConfig,
    storage: Option<Arc<dyn Storage>>,
    opener: Option<StorageOpener>,
    migrations: Migrations,
}

/// Turns `[storage]` into a backend: what the `seqsync` facade gives the
/// builder (`seqsync_adapters::open_storage`). The runtime itself knows no
/// backend, so a new one never touches this crate.
pub type StorageOpener = fn(&StorageConfig) -> Result<Arc<dyn Storage>, StorageError>;

impl EngineBuilder {
    /// Use this store instead of opening `config.storage`.
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Open `config.storage` with `opener` (unless a store was given).
    pub fn storage_opener(mut self, opener: StorageOpener) -> Self {
        self.opener = Some(opener);
        self
    }

    /// The app's schema migrations; the engine's schema version becomes
    /// their newest version.
    pub fn migrations(mut self, migrations: Migrations) -> Self {
        self.migrations = migrations;
        self
    }

    /// Opens the store (unless one was given), migrates every collection
    /// stored at an older schema version, and starts the engine.
    ///
    /// Blocking: opens files, starts threads, and migrates (reads every
    /// document of each collection to migrate, commits in groups; progress
    /// is logged with `tracing` and counted in
    /// `seqsync_migrated_documents_total`). A crash while migrating leaves a
    /// store that the next open finishes migrating.
    ///
    /// Errors: [`OpenError`] for an invalid config or migration registry
    /// (gap, duplicate step), a stored collection the steps cannot reach
    /// (`StoreNewerThanSchema`, `NoMigrationPath`), a failing step
    /// (`Migration`), a store that cannot be opened, or threads that cannot
    /// start.
    pub fn open(self) -> Result<Engine, OpenError> {
        self.config.validate()?;
        self.migrations.validate()?;
        let storage = match (self.storage, self.opener) {
            (Some(storage), _) => storage,
            (None, Some(opener)) => {
                let config = &self.config.storage;
                off_thread(|| opener(config).map_err(OpenError::from))?
            }
            (None, None) => return Err(OpenError::NoStorage),
        };
        Engine::start(self.config, storage, self.migrations)
    }
}

/// Runs blocking storage `work` on a scoped thread of its own and waits for
/// it. Why: `open` may be called from an async runtime's thread (a
/// `#[tokio::main]`, an actix handler), and a backend with a blocking client
/// of its own (postgres) must never run there.
fn off_thread<T: Send>(work: impl FnOnce() -> Result<T, OpenError> + Send) -> Result<T, OpenError> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("seqsync-open".to_owned())
            .spawn_scoped(scope, work)
            .map_err(|e| OpenError::Runtime(e.to_string()))?
            .join()
            .unwrap_or_else(|_| Err(OpenError::Runtime("opening the store panicked".to_owned())))
    })
}

/// Runs blocking `work` on a thread of its own and awaits its result (long
/// storage work that must not occupy an arbiter or the read pool).
async fn run_on_thread<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> Result<T, BundleError> + Send + 'static,
) -> Result<T, BundleError> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|e| BundleError::Io {
            path: std::path::PathBuf::from(name),
            source: e,
        })?;
    rx.await.unwrap_or(Err(BundleError::ShuttingDown))
}

/// See [`Engine::check_client_schema`]: `Ok(true)` when a client at `client`
/// is upgraded on ingest.
pub(crate) fn client_schema_fit(
    migrations: &Migrations,
    min_supported_version: u32,
    client: u32,
) -> Result<bool, WriteError> {
    let current = migrations.latest();
    if client > current {
        return Err(WriteError::SchemaTooNew {
            client,
            collection: current,
        });
    }
    if client == current {
        return Ok(false);
    }
    let min_supported = min_supported_version.max(migrations.oldest()).min(current);
    if client < min_supported {
        return Err(WriteError::SchemaTooOld {
            client,
            collection: current,
            min_supported,
        });
    }
    Ok(true)
}

/// Brings every stored collection to the migrations' newest version, in name
/// order, before anything is served.
fn migrate_store(storage: &dyn Storage, migrations: &Migrations) -> Result<(), OpenError> {
    const PAGE: usize = 1024;
    let latest = migrations.latest();
    let mut after: Option<CollectionName> = None;
    loop {
        let page = storage.list_collections(after.as_ref(), PAGE)?;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        let next_after = last.clone();
        for (name, meta) in &page {
            migrations.check_stored(name, meta.schema_version)?;
            if meta.schema_version == latest {
                continue;
            }
            tracing::info!(collection = %name, from = meta.schema_version, to = latest, "migrating collection");
            let started = Instant::now();
            let mut reported = 0u64;
            let migrated = migrate_collection(storage, name, migrations, &mut |progress| {
                metrics::counter!(m::MIGRATED_DOCUMENTS)
                    .increment(progress.documents_done.saturating_sub(reported));
                reported = progress.documents_done;
                tracing::info!(
                    collection = %progress.collection,
                    from = progress.from,
                    to = progress.to,
                    done = progress.documents_done,
                    total = progress.documents_total,
                    changes = progress.changes_written,
                    "migration progress"
                );
            })?;
            if let Some(done) = migrated {
                tracing::info!(
                    collection = %name,
                    from = done.from,
                    to = done.to,
                    visited = done.documents_visited,
                    changed = done.documents_changed,
                    changes = done.changes_written,
                    resumed_after = ?done.resumed_after.as_ref().map(|d| d.as_str()),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "collection migrated"
                );
            }
        }
        if page.len() < PAGE {
            return Ok(());
        }
        after = Some(next_after);
    }
}

/// The embedded engine. Cheap to clone; all clones share one engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    /// References to the store that existed when the engine was given it
    /// (the caller may keep its own): shutdown waits only for the engine's.
    storage_refs_at_open: usize,
    runtime: Mutex<Option<Runtime>>,
    closed: AtomicBool,
}

struct Runtime {
    system: actix::System,
    thread: JoinHandle<()>,
}

impl Engine {
    /// Starts the engine on a store the caller opened (e.g. a fault-injecting
    /// wrapper). `config.storage` is ignored.
    pub fn open_with_storage(
        config: EngineConfig,
        storage: Arc<dyn Storage>,
    ) -> Result<Self, OpenError> {
        Self::builder(config).storage(storage).open()
    }

    /// An engine to configure further before it opens: its store, its
    /// schema migrations.
    pub fn builder(config: EngineConfig) -> EngineBuilder {
        EngineBuilder {
            config,
            storage: None,
            opener: None,
            migrations: Migrations::new(),
        }
    }

    fn start(
        config: EngineConfig,
        storage: Arc<dyn Storage>,
        migrations: Migrations,
    ) -> Result<Self, OpenError> {
        config.validate()?;
        migrations.validate()?;
        off_thread(|| migrate_store(&*storage, &migrations))?;
        let storage_refs_at_open = Arc::strong_count(&storage);
        let runtime_error = |e: std::io::Error| OpenError::Runtime(e.to_string());
        let arbiters = config.actors.arbiter_count();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let compactor_storage = storage.clone();
        let thread = std::thread::Builder::new()
            .name("seqsync-actix".to_owned())
            .spawn(move || {
                let system = actix::System::new();
                let handles: Vec<actix::Arbiter> =
                    (0..arbiters).map(|_| actix::Arbiter::new()).collect();
                // Merges are CPU-bound and read storage: their own thread.
                let compactor = system.block_on(async move {
                    actix::SyncArbiter::start(COMPACTOR_THREADS, move || {
                        Compactor::new(compactor_storage.clone())
                    })
                });
                let _ = started_tx.send((
                    actix::System::current(),
                    handles.iter().map(|a| a.handle()).collect::<Vec<_>>(),
                    compactor,
                ));
                let _ = system.run();
                for arbiter in handles {
                    arbiter.stop();
                    let _ = arbiter.join();
                }
            })
            .map_err(runtime_error)?;
        let (system, arbiter_handles, compactor) = started_rx
            .recv()
            .map_err(|_| OpenError::Runtime("the actix thread died while starting".to_owned()))?;
        let writer = Writer::start(
            storage.clone(),
            WRITER_QUEUE_CAPACITY,
            Duration::from_micros(config.actors.trickle_linger_us),
        )
        .map_err(runtime_error)?;
        let pool = BlockingPool::start("seqsync-read", READ_THREADS).map_err(runtime_error)?;
        tracing::info!(backend = storage.backend(), durability = ?storage.durability(), "seqsync engine started");
        let shared = Arc::new(Shared {
            storage,
            config,
            writer,
            pool,
            registry: Registry::new(arbiter_handles),
            compactor,
            migrations: Arc::new(migrations),
            digest_caches: Mutex::new(HashMap::new()),
            live_deliveries: std::sync::atomic::AtomicU64::new(0),
        });
        // Another node's commits (a shared store) reach the loaded actor of
        // their collection. The watcher holds the engine weakly: the store
        // keeps it, and the engine keeps the store.
        let weak = Arc::downgrade(&shared);
        let watcher: seqsync_engine::CommitWatcher = Arc::new(move |name, head| {
            if let Some(shared) = weak.upgrade() {
                if let Some(addr) = shared.registry.running(name) {
                    addr.do_send(crate::collection::ExternalCommit { head });
                }
            }
        });
        if let Err(err) = shared.storage.watch_commits(watcher) {
            tracing::error!(error = %err, "cannot watch other nodes' commits: live streams will miss them");
        }
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                storage_refs_at_open,
                runtime: Mutex::new(Some(Runtime { system, thread })),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The schema version of every collection this engine serves: the
    /// newest version of its registered migrations (1 with none). Every
    /// stored collection was migrated to it when the engine opened.
    pub fn schema_version(&self) -> u32 {
        self.inner.shared.migrations.latest()
    }

    /// Whether a client at schema version `client` may write: `Ok(true)` if
    /// its pushes are upgraded on ingest (it is older than the engine but
    /// not older than `schema.min_supported_version`), `Ok(false)` if it is
    /// current. Errors: `SchemaTooOld`, `SchemaTooNew`. Pure, no I/O; a push
    /// checks the same.
    pub fn check_client_schema(&self, client: u32) -> Result<bool, WriteError> {
        let shared = &self.inner.shared;
        client_schema_fit(
            &shared.migrations,
            shared.config.schema.min_supported_version,
            client,
        )
    }

    /// The store the engine runs on, for tools that read it directly
    /// (listing collections, verifying). Writing to it bypasses the
    /// collection actors: don't.
    pub fn storage(&self) -> Arc<dyn Storage> {
        self.inner.shared.storage.clone()
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.shared.config
    }

    /// The backend's name (`sqlite`, `redb`, `memory`).
    pub fn backend(&self) -> &'static str {
        self.inner.shared.storage.backend()
    }

    /// Collections with a live actor (loaded in memory).
    pub fn loaded_collections(&self) -> usize {
        self.inner.shared.registry.loaded()
    }

    /// Pushes one Yjs v1 update to a document.
    ///
    /// Returns once the change is committed with the configured durability.
    /// An update that adds nothing logs nothing and answers `seq: None`
    /// (retries are free). Errors: [`WriteError`]; on any error nothing is
    /// acknowledged and a retry is safe.
    pub async fn push(
        &self,
        collection: &str,
        doc: &str,
        update: Vec<u8>,
        options: PushOptions,
    ) -> Result<PushOutcome, WriteError> {
        let done = self
            .push_batch(collection, vec![(doc.to_owned(), update)], options)
            .await?;
        Ok(PushOutcome {
            seq: done.seqs.first().copied().flatten(),
            head: done.head,
        })
    }

    /// Pushes several updates (of one or several documents of a collection)
    /// atomically: all are committed, with consecutive seqs in order, or none.
    ///
    /// Errors: as [`Engine::push`], plus `EmptyBatch` and `BatchTooLarge`.
    pub async fn push_batch(
        &self,
        collection: &str,
        updates: Vec<(String, Vec<u8>)>,
        options: PushOptions,
    ) -> Result<BatchOutcome, WriteError> {
        let started = Instant::now();
        // A span per push: the actor and the writer run elsewhere, so this
        // span times the whole round trip, durable commit included.
        let span = tracing::debug_span!("push", collection, updates = updates.len());
        let result = tracing::Instrument::instrument(
            self.push_batch_inner(collection, updates, options),
            span,
        )
        .await;
        metrics::histogram!(m::PUSH_SECONDS).record(started.elapsed().as_secs_f64());
        if let Err(err) = &result {
            metrics::counter!(m::ERRORS, "kind" => err.code()).increment(1);
        }
        result
    }

    async fn push_batch_inner(
        &self,
        collection: &str,
        updates: Vec<(String, Vec<u8>)>,
        options: PushOptions,
    ) -> Result<BatchOutcome, WriteError> {
        let limits = &self.inner.shared.config.limits;
        let name = CollectionName::new(collection)?;
        let origin = options.origin.map(PeerId::new).transpose()?;
        if updates.is_empty() {
            return Err(WriteError::EmptyBatch);
        }
        if updates.len() as u64 > limits.max_batch_updates {
            return Err(WriteError::BatchTooLarge {
                count: updates.len() as u64,
                max: limits.max_batch_updates,
            });
        }
        let mut items = Vec::with_capacity(updates.len());
        for (doc, bytes) in updates {
            let doc = DocId::new(doc)?;
            if bytes.len() as u64 > limits.max_update_bytes {
                return Err(WriteError::TooLarge {
                    len_bytes: bytes.len() as u64,
                    max_bytes: limits.max_update_bytes,
                });
            }
            items.push((doc, bytes));
        }
        let done = self
            .write(
                &name,
                Write {
                    op: WriteOp::Updates(items),
                    origin,
                    schema_version: options.schema_version,
                },
            )
            .await?;
        Ok(BatchOutcome {
            seqs: done.seqs,
            head: done.head,
        })
    }

    /// Deletes a document: logs a tombstone; later pushes to it fail with
    /// `DocumentDeleted`. Deleting twice is a no-op (`seq: None`).
    ///
    /// Returns once the tombstone is durable. Errors: [`WriteError`].
    pub async fn delete(&self, collection: &str, doc: &str) -> Result<DeleteOutcome, WriteError> {
        let name = CollectionName::new(collection)?;
        let doc = DocId::new(doc)?;
        let done = self
            .write(
                &name,
                Write {
                    op: WriteOp::Delete(doc),
                    origin: None,
                    schema_version: None,
                },
            )
            .await?;
        Ok(DeleteOutcome {
            seq: done.seqs.first().copied().flatten(),
            head: done.head,
        })
    }

    async fn write(&self, name: &CollectionName, msg: Write) -> Result<WriteDone, WriteError> {
        self.check_open().map_err(|_| WriteError::ShuttingDown)?;
        let reply =
            self.inner.send(name, msg).await.map_err(|_| {
                WriteError::Internal("the collection actor is gone; retry".to_owned())
            })?;
        reply
            .await
            .map_err(|_| WriteError::Internal("the collection actor restarted; retry".to_owned()))?
    }

    /// One page of changes with seq > `after`, in seq order, at most `limit`
    /// (clamped to `limits.stream_page_limit`; 0 gives an empty page).
    ///
    /// `epoch`, if given, is the epoch the client's cursor belongs to.
    /// Errors: [`ReadError::Reset`] for a foreign epoch or a cursor beyond
    /// head; `Storage` on failure. Blocking work runs on the read pool.
    pub async fn changes(
        &self,
        collection: &str,
        after: Seq,
        limit: u64,
        epoch: Option<Epoch>,
    ) -> Result<ChangesPage, ReadError> {
        self.changes_verified(collection, after, limit, epoch, None)
            .await
    }

    /// [`Engine::changes`], also checking the history under the cursor: a
    /// client that remembers the `cursor_checksum` it got at `after` sends
    /// it, and if the change stored at `after` has another log checksum, the
    /// seq was reused for something else (a database failover that lost
    /// acked commits, a restore of an older backup under the same epoch):
    /// the answer is `Reset`, and the client recovers instead of mixing two
    /// histories. When that change was compacted away the check is skipped
    /// (nothing to compare), as it is for `after = 0`.
    ///
    /// Errors: as `changes`.
    pub async fn changes_verified(
        &self,
        collection: &str,
        after: Seq,
        limit: u64,
        epoch: Option<Epoch>,
        checksum_at_cursor: Option<u64>,
    ) -> Result<ChangesPage, ReadError> {
        self.check_open()?;
        let name = CollectionName::new(collection)?;
        let limit = usize::try_from(limit.min(self.inner.shared.config.limits.stream_page_limit))
            .unwrap_or(usize::MAX);
        let (page, replaced) = self
            .inner
            .shared
            .read(move |storage| {
                let replaced = match checksum_at_cursor {
                    Some(expected) if after > 0 => storage
                        .read_changes(&name, after - 1, 1)?
                        .and_then(|p| p.changes.into_iter().next())
                        .is_some_and(|c| c.seq == after && c.log_checksum != expected),
                    _ => false,
                };
                Ok((storage.read_changes(&name, after, limit)?, replaced))
            })
            .await?;
        if replaced {
            if let Some(page) = &page {
                metrics::counter!(m::ERRORS, "kind" => "history_replaced").increment(1);
                return Err(ReadError::Reset {
                    epoch: Some(page.meta.epoch),
                    head: page.meta.head,
                });
            }
        }
        let Some(page) = page else {
            if after > 0 || epoch.is_some() {
                return Err(ReadError::Reset {
                    epoch: None,
                    head: 0,
                });
            }
            return Ok(ChangesPage {
                changes: Vec::new(),
                cursor: 0,
                has_more: false,
                head: 0,
                cursor_checksum: 0,
                epoch: None,
                schema_version: self.schema_version(),
            });
        };
        let meta = page.meta;
        if epoch.is_some_and(|e| e != meta.epoch) || after > meta.head {
            return Err(ReadError::Reset {
                epoch: Some(meta.epoch),
                head: meta.head,
            });
        }
        let cursor = page.changes.last().map_or(after, |c| c.seq);
        // The change at head always exists, so an empty page is at the head
        // (or at 0).
        let cursor_checksum = match page.changes.last() {
            Some(last) => last.log_checksum,
            None if after == meta.head => meta.log_checksum,
            None => 0,
        };
        metrics::counter!(m::CHANGES_STREAMED).increment(page.changes.len() as u64);
        Ok(ChangesPage {
            cursor_checksum,
            // The change at head always exists (compaction keeps the last
            // covered seq), so anything below head means more to read.
            has_more: cursor < meta.head,
            changes: page.changes,
            cursor,
            head: meta.head,
            epoch: Some(meta.epoch),
            schema_version: meta.schema_version,
        })
    }

    /// Stored changes with seq > `after`, then live ones as they commit, with
    /// no gap and no duplicate, and `UpToDate { head }` each time the stream
    /// has caught up. Memory per subscriber is bounded; a slow subscriber
    /// falls back to reading storage. Errors (as items, ending the stream):
    /// `Reset` for a foreign epoch or a cursor beyond head, `Storage`.
    pub fn subscribe(
        &self,
        collection: &str,
        after: Seq,
        epoch: Option<Epoch>,
    ) -> Result<Subscription, ReadError> {
        self.check_open()?;
        let name = CollectionName::new(collection)?;
        Ok(subscription::subscribe(
            self.inner.clone(),
            name,
            None,
            after,
            epoch,
        ))
    }

    /// [`Engine::subscribe`] for one document: its stored changes with seq >
    /// `after`, then its live ones, with the same guarantees (no gap, no
    /// duplicate, bounded memory, `UpToDate`). Cursors and `UpToDate` heads
    /// are collection seqs; the stream carries only this document's changes
    /// (its tombstone included).
    ///
    /// This is what a client of one document should use: the collection's
    /// actor hands each commit only to the subscribers of the documents it
    /// touched, so the cost of following a document does not grow with the
    /// number of other documents in the collection or their traffic.
    /// Errors: as [`Engine::subscribe`], plus `InvalidName` for `doc`.
    pub fn subscribe_document(
        &self,
        collection: &str,
        doc: &str,
        after: Seq,
        epoch: Option<Epoch>,
    ) -> Result<Subscription, ReadError> {
        self.check_open()?;
        let name = CollectionName::new(collection)?;
        let doc = DocId::new(doc)?;
        Ok(subscription::subscribe(
            self.inner.clone(),
            name,
            Some(doc),
            after,
            epoch,
        ))
    }

    /// Live batches the collection actors have handed to subscribers since
    /// the engine opened: one per subscriber per commit that touched what it
    /// follows (also the `seqsync_live_deliveries_total` counter). Not
    /// blocking. For capacity planning and for tests that check fan-out.
    pub fn live_deliveries(&self) -> u64 {
        self.inner.shared.live_deliveries.load(Ordering::Relaxed)
    }

    /// Records that `peer` has every change ≤ `seq`. The stored ack is the
    /// max of old and new (an ack going backwards answers the kept max).
    ///
    /// Returns once durable. Errors: `AckBeyondHead` if `seq` > head.
    pub async fn ack(&self, collection: &str, peer: &str, seq: Seq) -> Result<Seq, AckError> {
        self.check_open().map_err(|_| AckError::ShuttingDown)?;
        let name = CollectionName::new(collection)?;
        let peer = PeerId::new(peer)?;
        let reply = self
            .inner
            .send(&name, Ack { peer, seq })
            .await
            .map_err(|_| AckError::Internal("the collection actor is gone; retry".to_owned()))?;
        let result = reply
            .await
            .map_err(|_| AckError::Internal("the collection actor restarted; retry".to_owned()))?;
        if let Err(err) = &result {
            metrics::counter!(m::ERRORS, "kind" => err.code()).increment(1);
        }
        result
    }

    /// The collection's peers with their acked seq, lag and activity.
    pub async fn peers(&self, collection: &str) -> Result<Vec<PeerInfo>, ReadError> {
        self.check_open()?;
        let name = CollectionName::new(collection)?;
        let timeout_secs = self.inner.shared.config.compaction.peer_timeout_secs;
        let (head, records) = self
            .inner
            .shared
            .read(move |storage| {
                let head = storage.collection(&name)?.map_or(0, |m| m.head);
                Ok((head, storage.peers(&name)?))
            })
            .await?;
        let now = now_ms();
        let peers: Vec<PeerInfo> = records
            .into_iter()
            .map(|p| PeerInfo {
                lag: head.saturating_sub(p.acked),
                active: p.is_active(now, timeout_secs),
                peer: p.peer,
                acked: p.acked,
                last_seen_ms: p.last_seen_ms,
            })
            .collect();
        metrics::gauge!(m::ACTIVE_PEERS).set(peers.iter().filter(|p| p.active).count() as f64);
        Ok(peers)
    }

    /// A document's full state and the cursor it reflects (stream from it).
    /// Errors: `DocumentNotFound`, `DocumentDeleted`, `Storage`,
    /// `DocumentUnreadable` (its stored history encodes into bytes no Yjs
    /// reader can decode; fuzz finding F2).
    pub async fn document(&self, collection: &str, doc: &str) -> Result<DocumentState, ReadError> {
        let (update, cursor) = self.read_document(collection, doc, None).await?;
        Ok(DocumentState {
            update,
            cursor,
            schema_version: self.schema_version(),
        })
    }

    /// [`Engine::document`] for many readers of one document at once (a
    /// class joining a large document): the document is loaded into its
    /// collection's actor once, its state is encoded once per version, and
    /// every caller gets the same bytes until the document changes. Memory:
    /// one encoding per document read this way, held until it changes or
    /// its collection unloads. Falls back to a storage read when memory is
    /// not exact (a write of the document in flight). Errors: as
    /// [`Engine::document`].
    pub async fn document_shared(
        &self,
        collection: &str,
        doc: &str,
    ) -> Result<SharedDocumentState, ReadError> {
        match self.shared_read(collection, doc, SharedWhat::State).await? {
            Some(SharedDoc::State(update, cursor)) => Ok(SharedDocumentState { update, cursor }),
            _ => {
                let state = self.document(collection, doc).await?;
                Ok(SharedDocumentState {
                    update: state.update.into(),
                    cursor: state.cursor,
                })
            }
        }
    }

    /// A document's state vector and the cursor it reflects, without
    /// encoding its state (what a y-websocket server sends a client first).
    /// Served from the collection actor's memory (loading the document
    /// there if needed); from storage while a write of it is in flight.
    /// Errors: `DocumentNotFound`, `DocumentDeleted`, `Storage`.
    pub async fn document_state_vector(
        &self,
        collection: &str,
        doc: &str,
    ) -> Result<DocumentStateVector, ReadError> {
        match self
            .shared_read(collection, doc, SharedWhat::StateVector)
            .await?
        {
            Some(SharedDoc::StateVector(state_vector, cursor)) => Ok(DocumentStateVector {
                state_vector,
                cursor,
            }),
            _ => {
                let state = self.document(collection, doc).await?;
                let decoded = seqsync_engine::decode_update(&state.update).map_err(|e| {
                    ReadError::Internal(format!("a served state did not decode: {e}"))
                })?;
                let mut loaded = seqsync_engine::DocState::empty();
                loaded.apply(decoded).map_err(|e| {
                    ReadError::Internal(format!("a served state did not apply: {}", e.0))
                })?;
                Ok(DocumentStateVector {
                    state_vector: yrs::updates::encoder::Encode::encode_v1(&loaded.state_vector()),
                    cursor: state.cursor,
                })
            }
        }
    }

    /// The actor's answer to a `SharedRead`, with the typed errors of a
    /// document read; `None` (or `Unavailable`) means "read storage".
    async fn shared_read(
        &self,
        collection: &str,
        doc: &str,
        what: SharedWhat,
    ) -> Result<Option<SharedDoc>, ReadError> {
        self.check_open()?;
        let name = CollectionName::new(collection)?;
        let doc_id = DocId::new(doc)?;
        let answer = self
            .inner
            .send(&name, SharedRead { doc: doc_id, what })
            .await
            .ok();
        match answer {
            Some(Ok(SharedDoc::Deleted)) => Err(ReadError::DocumentDeleted {
                doc: doc.to_owned(),
            }),
            Some(Ok(SharedDoc::Empty)) => Err(ReadError::DocumentNotFound {
                doc: doc.to_owned(),
            }),
            Some(Ok(answer)) => Ok(Some(answer)),
            Some(Err(err)) => Err(ReadError::Storage(err)),
            None => Ok(None),
        }
    }

    /// What a client with `state_vector` (Yjs v1; empty = nothing) lacks of a
    /// document, and the cursor it reflects. Errors: `InvalidStateVector`,
    /// `DocumentNotFound`, `DocumentDeleted`, `Storage`.
    pub async fn recover(
        &self,
        collection: &str,
        doc: &str,
        state_vector: &[u8],
    ) -> Result<Recovery, ReadError> {
        let sv = decode_state_vector(state_vector).map_err(ReadError::InvalidStateVector)?;
        let (diff, cursor) = self.read_document(collection, doc, Some(sv)).await?;
        Ok(Recovery {
            diff,
            cursor,
            schema_version: self.schema_version(),
        })
    }

    async fn read_document(
        &self,
        collection: &str,
        doc: &str,
        sv: Option<yrs::StateVector>,
    ) -> Result<(Vec<u8>, Seq), ReadError> {
        self.check_open()?;
        let name = CollectionName::new(collection)?;
        let doc = DocId::new(doc)?;
        let cached = self
            .inner
            .send(
                &name,
                CachedRead {
                    doc: doc.clone(),
                    state_vector: sv.clone(),
                },
            )
            .await
            .ok()
            .flatten();
        match cached {
            Some(CachedDoc::State(update, cursor)) => return Ok((update, cursor)),
            Some(CachedDoc::Deleted) => {
                return Err(ReadError::DocumentDeleted {
                    doc: doc.to_string(),
                })
            }
            Some(CachedDoc::Missing) => {
                return Err(ReadError::DocumentNotFound {
                    doc: doc.to_string(),
                })
            }
            None => {}
        }
        let result = self
            .inner
            .shared
            .read(move |storage| {
                // Head first: every change ≤ head is then in what we load
                // (later ones may be too, which Yjs applies idempotently).
                let head = storage.collection(&name)?.map_or(0, |m| m.head);
                let Some(loaded) = load_document(storage, &name, &doc)? else {
                    return Ok(Err(ReadError::DocumentNotFound {
                        doc: doc.to_string(),
                    }));
                };
                let state = &loaded.state;
                if state.deleted {
                    return Ok(Err(ReadError::DocumentDeleted {
                        doc: doc.to_string(),
                    }));
                }
                if let Err(reason) = state.check_readable() {
                    return Ok(Err(ReadError::DocumentUnreadable {
                        doc: doc.to_string(),
                        reason,
                    }));
                }
                let update = match &sv {
                    Some(sv) => state.encode_diff(sv),
                    None => state.encode_state(),
                };
                Ok(Ok((update, served_cursor(&loaded, head))))
            })
            .await?;
        result
    }

    /// The collection's digests at its current head: `head`, the log
    /// checksum through it, and the state digest (a sum of per-document
    /// terms; `None` while a document holds pending structures). Consistent
    /// at that head while pushes continue (documents are read as of it).
    ///
    /// Runs on the read pool; the first call loads every document once, later
    /// ones only those changed since. Errors: `InvalidName`,
    /// `CollectionNotFound`, `Storage`.
    pub async fn digest(&self, collection: &str) -> Result<CollectionDigest, ReadError> {
        self.check_open()?;
        let name = CollectionName::new(collection)?;
        let shared = self.inner.shared.clone();
        let found = self
            .inner
            .shared
            .read(move |storage| {
                let mut cache = shared
                    .digest_caches
                    .lock()
                    .map(|mut caches| caches.remove(&name).unwrap_or_default())
                    .unwrap_or_default();
                let digest = collection_digest(storage, &name, &mut cache)?;
                if let Ok(mut caches) = shared.digest_caches.lock() {
                    let kept: usize = caches.values().map(DigestCache::len).sum();
                    if kept + cache.len() > MAX_DIGEST_CACHE_DOCUMENTS {
                        caches.clear();
                    }
                    caches.insert(name, cache);
                }
                Ok(digest)
            })
            .await?;
        found.ok_or_else(|| ReadError::CollectionNotFound {
            collection: collection.to_owned(),
        })
    }

    /// A document's digest at the collection's current head (see
    /// `seqsync_engine::DocumentDigest`): `Ok(None)` while it holds pending
    /// structures; the fixed tombstone digest for a deleted document.
    /// Errors: `DocumentNotFound`, `InvalidName`, `Storage`.
    pub async fn document_digest(
        &self,
        collection: &str,
        doc: &str,
    ) -> Result<Option<DocumentDigest>, ReadError> {
        self.check_open()?;
        let name = CollectionName::new(collection)?;
        let doc = DocId::new(doc)?;
        let at = self
            .inner
            .shared
            .read(move |storage| {
                let head = storage.collection(&name)?.map_or(0, |m| m.head);
                Ok((document_digest_at(storage, &name, &doc, head)?, doc))
            })
            .await?;
        match at {
            (DocumentDigestAt::Missing, doc) => Err(ReadError::DocumentNotFound {
                doc: doc.to_string(),
            }),
            (DocumentDigestAt::Pending, _) => Ok(None),
            (DocumentDigestAt::Digest(digest), _) => Ok(Some(digest)),
        }
    }

    /// Exports the changes of `collection` with seq in `(after, until]`
    /// (`until`: the head when the export starts, or less) as a bundle in
    /// `dir` (docs/BUNDLES.md), while pushes continue.
    ///
    /// Runs on a thread of its own (never an arbiter or the read pool);
    /// consistent as of that head, never holding a read transaction longer
    /// than one page. Errors: [`BundleError`] (`Io`, `Storage`, a directory
    /// that holds a bundle already, a collection that does not exist).
    pub async fn export(
        &self,
        collection: &str,
        after: Seq,
        until: Option<Seq>,
        dir: impl Into<std::path::PathBuf>,
        options: ExportOptions,
    ) -> Result<ExportReport, BundleError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(BundleError::ShuttingDown);
        }
        let name = CollectionName::new(collection)?;
        let dir = dir.into();
        let storage = self.inner.shared.storage.clone();
        run_on_thread("seqsync-export", move || {
            export_collection(&*storage, &name, after, until, &dir, options, &mut |_| {})
        })
        .await
    }

    /// A consistent backup of every collection into `dir`: one bundle per
    /// collection under `dir/<collection>/`, each at that collection's head
    /// when its turn comes, with the state batch, plus `backup.json` listing
    /// them (written last). Pushes continue meanwhile; none is blocked
    /// longer than a read transaction. Restore with
    /// `seqsync_engine::bundle::import_bundle` (or `seqsync restore`) into
    /// any backend.
    ///
    /// Errors: [`BundleError`].
    pub async fn backup(
        &self,
        dir: impl Into<std::path::PathBuf>,
    ) -> Result<Vec<ExportReport>, BundleError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(BundleError::ShuttingDown);
        }
        let dir = dir.into();
        let storage = self.inner.shared.storage.clone();
        run_on_thread("seqsync-backup", move || {
            seqsync_engine::bundle::backup_store(
                &*storage,
                &dir,
                ExportOptions::default(),
                &mut |_| {},
            )
        })
        .await
    }

    /// Everything a client needs for a cold start in one call: per live
    /// document what it lacks given its state vector (`state_vectors`
    /// maps document ids to Yjs v1 state vectors; a missing entry means
    /// "send the full state"), the deleted documents, and the cursor to
    /// stream from. Errors: `InvalidName`, `InvalidStateVector`, `Storage`,
    /// `DocumentUnreadable` (naming the first such document).
    pub async fn recover_collection(
        &self,
        collection: &str,
        state_vectors: HashMap<String, Vec<u8>>,
    ) -> Result<CollectionRecovery, ReadError> {
        self.check_open()?;
        let name = CollectionName::new(collection)?;
        let latest = self.schema_version();
        let mut svs = HashMap::with_capacity(state_vectors.len());
        for (doc, sv) in state_vectors {
            let doc = DocId::new(doc)?;
            svs.insert(
                doc,
                decode_state_vector(&sv).map_err(ReadError::InvalidStateVector)?,
            );
        }
        let recovery = self
            .inner
            .shared
            .read(move |storage| {
                let meta = storage.collection(&name)?;
                let head = meta.as_ref().map_or(0, |m| m.head);
                let mut recovery = CollectionRecovery {
                    documents: Vec::new(),
                    deleted: Vec::new(),
                    cursor: head,
                    schema_version: meta.as_ref().map_or(latest, |m| m.schema_version),
                    epoch: meta.map(|m| m.epoch),
                };
                for info in storage.documents(&name)? {
                    if info.deleted {
                        recovery.deleted.push(info.doc);
                        continue;
                    }
                    let Some(loaded) = load_document(storage, &name, &info.doc)? else {
                        continue;
                    };
                    let state = &loaded.state;
                    if state.deleted {
                        recovery.deleted.push(info.doc);
                        continue;
                    }
                    if let Err(reason) = state.check_readable() {
                        return Ok(Err(ReadError::DocumentUnreadable {
                            doc: info.doc.to_string(),
                            reason,
                        }));
                    }
                    let update = match svs.get(&info.doc) {
                        Some(sv) => state.encode_diff(sv),
                        None => state.encode_state(),
                    };
                    recovery.cursor = recovery.cursor.min(served_cursor(&loaded, head));
                    recovery.documents.push((info.doc, update));
                }
                Ok(Ok(recovery))
            })
            .await?;
        recovery
    }

    /// Compacts the collection now, with the same peer-gated logic as the
    /// automatic compactor (documents are merged up to the lowest seq acked by
    /// every active peer, or up to head without active peers; tombstoned
    /// documents lose everything before their tombstone). Answers when every
    /// resulting compaction is committed; running it again right after changes
    /// nothing. Pushes continue meanwhile. Errors: `InvalidName`, `Storage`.
    pub async fn compact(&self, collection: &str) -> Result<CompactionSummary, WriteError> {
        self.check_open().map_err(|_| WriteError::ShuttingDown)?;
        let name = CollectionName::new(collection)?;
        let reply =
            self.inner.send(&name, CompactNow).await.map_err(|_| {
                WriteError::Internal("the collection actor is gone; retry".to_owned())
            })?;
        reply
            .await
            .map_err(|_| WriteError::Internal("the collection actor restarted; retry".to_owned()))?
    }

    /// Stops the engine: refuses new calls, waits until every queued write is
    /// committed, makes the store durable (`sync`), and stops the threads.
    /// Every push acknowledged before or during the call is on disk after it.
    pub async fn shutdown(&self) {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.inner.shared.writer.flush().await;
        let inner = self.inner.clone();
        let (done_tx, done_rx) = oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("seqsync-shutdown".to_owned())
            .spawn(move || {
                inner.stop_blocking();
                // Release our reference before answering, so that once the
                // caller drops its handles the store is closed (and its lock
                // free for a reopen).
                drop(inner);
                let _ = done_tx.send(());
            });
        if spawned.is_ok() {
            let _ = done_rx.await;
        }
    }

    fn check_open(&self) -> Result<(), ReadError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            Err(ReadError::ShuttingDown)
        } else {
            Ok(())
        }
    }
}

/// The cursor a document read may answer with. Normally the head read before
/// the document. If yrs holds pending structures, the encoded state leaves
/// them out (see `DocState::encode_state`), so the cursor is lowered to just
/// before the document's first update after its last snapshot (snapshots never
/// hold pending structures): streaming from there re-delivers the pending
/// updates, and Yjs applies the rest of the overlap idempotently.
fn served_cursor(loaded: &LoadedDocument, head: Seq) -> Seq {
    if !loaded.state.has_pending() {
        return head;
    }
    loaded
        .first_delta_seq
        .map_or(head, |seq| seq.saturating_sub(1).min(head))
}

impl Inner {
    /// Sends `msg` to the collection's actor, starting one if needed. If the
    /// actor stopped before taking the message (idle unload racing with this
    /// call, or a panic), the message was not processed, so it is sent once
    /// more, to a fresh actor.
    pub(crate) async fn send<M>(
        &self,
        name: &CollectionName,
        msg: M,
    ) -> Result<M::Result, MailboxError>
    where
        M: actix::Message + Clone + Send + 'static,
        M::Result: Send,
        CollectionActor: actix::Handler<M>,
    {
        let addr: Addr<CollectionActor> = self.shared.registry.get(&self.shared, name);
        let retry = msg.clone();
        match addr.send(msg).await {
            Err(MailboxError::Closed) => {
                self.shared
                    .registry
                    .get(&self.shared, name)
                    .send(retry)
                    .await
            }
            other => other,
        }
    }

    pub(crate) async fn grant(
        &self,
        name: &CollectionName,
        doc: Option<DocId>,
    ) -> Result<Grant, ReadError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(ReadError::ShuttingDown);
        }
        self.send(name, Subscribe { doc })
            .await
            .map_err(|_| ReadError::Internal("the collection actor is gone".to_owned()))?
            .map_err(ReadError::Storage)
    }

    /// Flushes the store and stops the runtime threads. Blocking.
    fn stop_blocking(&self) {
        if let Err(err) = self.shared.storage.sync() {
            tracing::error!(error = %err, "final sync failed");
        }
        let runtime = self.runtime.lock().ok().and_then(|mut r| r.take());
        if let Some(runtime) = runtime {
            runtime.system.stop();
            let _ = runtime.thread.join();
        }
        self.shared.writer.stop();
        self.shared.pool.shutdown();
        self.wait_for_release();
        tracing::info!("seqsync engine stopped");
    }

    /// Waits until nothing of the engine's but this `Inner` holds the store
    /// (references the caller of `open_with_storage` keeps are its own). Stopping the
    /// actix system does not join every thread that holds it: arbiters drop
    /// their actors (each with an `Arc<Shared>`) and the compactor's threads
    /// drop their storage handle just after. Without this wait, a host that
    /// shuts down and reopens the same directory at once could find the
    /// directory lock still held (`AlreadyOpen`); the simulation test found
    /// it. Bounded: after `RELEASE_WAIT_MS` it logs and returns.
    fn wait_for_release(&self) {
        let started = Instant::now();
        while Arc::strong_count(&self.shared) > 1
            || Arc::strong_count(&self.shared.storage) > self.storage_refs_at_open
        {
            if started.elapsed() > Duration::from_millis(RELEASE_WAIT_MS) {
                tracing::warn!(
                    "engine threads still hold the store after {RELEASE_WAIT_MS} ms; \
                     it closes when they end"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone without `shutdown`: every acked write is
        // already committed; stop the threads so nothing leaks.
        if let Ok(mut runtime) = self.runtime.lock() {
            if let Some(runtime) = runtime.take() {
                runtime.system.stop();
                let _ = runtime.thread.join();
            }
        }
        self.shared.writer.stop();
        self.shared.pool.shutdown();
        self.wait_for_release();
    }
}
