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
//!
//! Files: this one (the handle, what it holds, sending to actors), `open.rs`
//! (builder, open-time migration, start and shutdown), `writes.rs`,
//! `reads.rs`, `listings.rs` (collections and documents, paged),
//! `history.rs` (a document at a seq, its changes, restore) and
//! `export.rs` (digests, export, backup, recovery).

mod export;
mod history;
mod listings;
mod open;
mod reads;
mod versions;
mod writes;

pub use listings::MAX_LISTING_PAGE;
pub use open::{EngineBuilder, StorageOpener};
pub use versions::MAX_VERSIONS_PER_DOCUMENT;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix::{Addr, MailboxError};
use seqsync_engine::{
    CollectionName, DocId, EngineConfig, Migrations, ReadError, Storage, WriteError,
};

use crate::collection::{CollectionActor, Grant, Subscribe};
use crate::context::Shared;

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

    /// Live batches the collection actors have handed to subscribers since
    /// the engine opened: one per subscriber per commit that touched what it
    /// follows (also the `seqsync_live_deliveries_total` counter). Not
    /// blocking. For capacity planning and for tests that check fan-out.
    pub fn live_deliveries(&self) -> u64 {
        self.inner.shared.live_deliveries.load(Ordering::Relaxed)
    }

    fn check_open(&self) -> Result<(), ReadError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            Err(ReadError::ShuttingDown)
        } else {
            Ok(())
        }
    }
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
