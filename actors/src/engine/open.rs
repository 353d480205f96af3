//! Opening and closing an engine: the builder, the store opened off the
//! caller's thread, the open-time migration of every collection, the actix
//! system with its arbiters, writer and pools, and the orderly shutdown.
//!
//! Opening blocks (it may migrate a store), so it runs on a thread of its
//! own; the caller only waits for its answer. Shutdown stops taking work,
//! lets the writer commit what is queued, then stops the threads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use seqsync_engine::{
    migrate_collection, CollectionName, EngineConfig, Migrations, OpenError, Storage,
    StorageConfig, StorageError,
};
use tokio::sync::oneshot;

use crate::compactor::Compactor;
use crate::context::Shared;
use crate::metrics as m;
use crate::pool::BlockingPool;
use crate::registry::Registry;
use crate::writer::Writer;

use super::{Engine, Inner, Runtime, COMPACTOR_THREADS, READ_THREADS, WRITER_QUEUE_CAPACITY};

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

    pub(super) fn start(
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
        let watcher: seqsync_engine::CommitWatcher = Arc::new(move |name, head, committed_ms| {
            if let Some(shared) = weak.upgrade() {
                if let Some(addr) = shared.registry.running(name) {
                    addr.do_send(crate::collection::ExternalCommit { head, committed_ms });
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
}
