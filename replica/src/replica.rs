//! The replica: a local copy of some collections of a server, kept in a
//! local `Storage`, with an outbox of local edits, synced on demand.
//!
//! Local layout, all through the `Storage` trait (so SQLite, redb and memory
//! all work):
//! - collection `c` holds the replica's own log of `c`: every update it
//!   applied, local edits (origin `local`) and what it pulled (origin
//!   `remote`), in local seq order; a document is the replay of its changes.
//! - collection [`STATE_COLLECTION`] holds one small Yjs document per synced
//!   collection with the sync state: the server's epoch, the cursor, and
//!   `pushed_through` (the local seq up to which local edits are
//!   acknowledged by the server). The outbox is the local edits after it.
//!
//! Why the state is a Yjs document in the same store: a commit may write
//! several collections atomically, so the changes a sync pulls and the
//! cursor that covers them land in one local transaction, and the outbox
//! position moves in the same commit as nothing else. A crash at any point
//! leaves either the old cursor with none of the page, or both.
//!
//! Why the local store is called through `spawn_blocking`: every call to it
//! (a read, or a commit with its fsync) blocks its thread, and a replica's
//! async methods run on the app's executor, where a blocked thread stalls
//! every other task (and a backend that refuses blocking calls on an async
//! thread, PostgreSQL's, would refuse them). So the replica's local half is
//! [`Local`], synchronous and shared (`Arc`), and each async method hands
//! the local work it needs to tokio's blocking pool through
//! [`Replica::blocking`]; only network waits and CPU-only work (an app's
//! edit closure on a loaded document) stay on the executor. The public
//! methods documented as blocking (`open`, `document`, `documents`,
//! `outbox_len`) block their caller, as they say.
//!
//! This file holds the replica itself (its fields, `open`, the names it
//! reserves and the helpers every part shares). Each concern has a file:
//! `edit.rs` (local edits, reads, local compaction), `local_log.rs` (how an
//! update becomes a change of the local log), `state.rs` (the sync state
//! document), `outbox.rs` (what is pushed and how it is merged), `pull.rs`
//! (`sync`: push, pull pages, commit them with the cursor), `recover.rs`
//! (starting over after a reset), `local_migration.rs` (the app's
//! migrations on local and pulled data), `follow.rs` (the live session),
//! `report.rs` and `error.rs` (what the calls return).

use std::collections::HashMap;
use std::sync::Arc;

use seqsync_engine::{
    CollectionName, DocId, Epoch, Migrations, PeerId, Storage, StorageError, MIGRATION_ORIGIN,
};
use tokio::sync::Mutex;
use yrs::updates::decoder::Decode;
use yrs::{Doc, Transact, Update};

use crate::error::ReplicaError;
use crate::state::{commit_state, load_state_doc, read_u64, state_update, SyncState};
use crate::transport::Transport;

/// The local collection holding the replicas' sync state (reserved: a
/// collection of this name cannot be synced).
pub const STATE_COLLECTION: &str = "_seqsync-replica";

/// The state document holding the replica's own identity.
pub(crate) const IDENTITY_DOC: &str = "_identity";

/// The origin of local edits in the local log.
pub(crate) const LOCAL: &str = "local";

/// The origin of pulled changes in the local log.
pub(crate) const REMOTE: &str = "remote";

/// The origin of the replica's own migration outputs in the local log
/// (pulled ones, the server's, are stored as `remote`).
pub(crate) const MIGRATION: &str = MIGRATION_ORIGIN;

/// How a replica is opened beyond its store, transport and peer id.
#[derive(Clone, Debug, Default)]
pub struct ReplicaOptions {
    /// The app's schema version: declared on every push (the server
    /// upgrades older ones on ingest, refuses what it no longer supports),
    /// and a pulled change of a newer version stops the sync with
    /// `UpgradeRequired` before anything of its page is written. `None`:
    /// the latest version of `migrations`, or, without them, the app does
    /// not version its schema (the server's is taken).
    pub schema_version: Option<u32>,
    /// The app's migrations (the engine's pure API, the same steps the
    /// server runs). With them the replica migrates what it holds at an
    /// older version: its own data when the app was upgraded while offline
    /// ([`Replica::migrate_local`]), and pulled data of an older version
    /// before it is written locally. Steps declared
    /// [`Migrations::server_only_step`] are left to the server.
    pub migrations: Option<Migrations>,
}

/// A replica of some collections of one server. Cheap to share (`Arc`);
/// local writes are serialised inside.
pub struct Replica<T: Transport> {
    /// The local half: the store and what is cached from it.
    pub(crate) local: Arc<Local>,
    pub(crate) transport: T,
    /// One local writer at a time: appends compute their base from the
    /// stored head.
    pub(crate) writer: Mutex<()>,
    /// Woken by every local edit, so a live `follow` pushes it at once.
    pub(crate) local_edits: tokio::sync::Notify,
}

/// The replica's local half: its store, its identity and schema, and the
/// caches kept in front of the store. Every method is synchronous and may
/// block on the store; async code reaches it through
/// [`Replica::blocking`].
pub(crate) struct Local {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) peer: PeerId,
    pub(crate) client_id: u64,
    pub(crate) schema_version: Option<u32>,
    pub(crate) migrations: Migrations,
    /// Documents recently edited, kept loaded under this replica's client
    /// id so an edit does not replay the document from the local store each
    /// time (at most `MAX_CACHED_DOCS`; a pull or a raw local update of a
    /// document drops its entry).
    pub(crate) editing: std::sync::Mutex<lru::LruCache<(CollectionName, DocId), Doc>>,
    /// Each collection's sync state and its state document as last
    /// committed, so a sync (and a live session, per change) neither
    /// replays the state document from the store nor parses it again.
    /// Written only after a commit succeeds; dropped when one fails.
    pub(crate) states: std::sync::Mutex<HashMap<CollectionName, (SyncState, Doc)>>,
}

pub(crate) fn name(collection: &str) -> Result<CollectionName, ReplicaError> {
    if collection == STATE_COLLECTION {
        return Err(ReplicaError::InvalidName(format!(
            "{STATE_COLLECTION} is reserved for the replica's own state"
        )));
    }
    CollectionName::new(collection).map_err(|e| ReplicaError::InvalidName(e.to_string()))
}

pub(crate) fn doc_id(doc: &str) -> Result<DocId, ReplicaError> {
    DocId::new(doc).map_err(|e| ReplicaError::InvalidName(e.to_string()))
}

pub(crate) fn state_collection() -> Result<CollectionName, ReplicaError> {
    CollectionName::new(STATE_COLLECTION).map_err(|e| ReplicaError::InvalidName(e.to_string()))
}

pub(crate) fn getrandom_fill(bytes: &mut [u8]) -> Result<(), ReplicaError> {
    Epoch::random()
        .map(|epoch| bytes.copy_from_slice(&epoch.0[..bytes.len()]))
        .map_err(|e| {
            ReplicaError::Local(StorageError::backend("replica", "choosing a client id", e))
        })
}

pub(crate) fn apply_bytes(doc: &Doc, update: &[u8], name: &str) -> Result<(), ReplicaError> {
    let invalid = |reason: String| ReplicaError::InvalidUpdate {
        doc: name.to_owned(),
        reason,
    };
    let update = Update::decode_v1(update).map_err(|e| invalid(e.to_string()))?;
    doc.transact_mut()
        .apply_update(update)
        .map_err(|e| invalid(e.to_string()))
}

pub(crate) fn invalid(doc: &DocId, err: impl std::fmt::Display) -> ReplicaError {
    ReplicaError::InvalidUpdate {
        doc: doc.to_string(),
        reason: err.to_string(),
    }
}

impl<T: Transport> Replica<T> {
    /// Opens a replica on `storage` (its local store) talking to the server
    /// through `transport`, as peer `peer` (stable: the server tracks what
    /// it acknowledged under it).
    ///
    /// Blocking (reads the local store; on first open writes the replica's
    /// client id). Errors: `InvalidName`, `Local`.
    pub fn open(storage: Arc<dyn Storage>, transport: T, peer: &str) -> Result<Self, ReplicaError> {
        Self::open_with(storage, transport, peer, ReplicaOptions::default())
    }

    /// [`Replica::open`] with options (the app's schema version).
    ///
    /// Errors: as `open`.
    pub fn open_with(
        storage: Arc<dyn Storage>,
        transport: T,
        peer: &str,
        options: ReplicaOptions,
    ) -> Result<Self, ReplicaError> {
        let peer = PeerId::new(peer).map_err(|e| ReplicaError::InvalidName(e.to_string()))?;
        if let Some(migrations) = &options.migrations {
            migrations
                .validate()
                .map_err(|e| ReplicaError::InvalidMigrations(e.to_string()))?;
        }
        let identity = load_state_doc(&*storage, IDENTITY_DOC)?;
        let stored = read_u64(&identity, "client_id");
        let client_id = match stored {
            Some(id) => id,
            None => {
                // A random id above the migration range, 32 bits like a
                // JavaScript client's, kept for the life of the store so
                // the clocks of this replica's edits continue across runs.
                let mut bytes = [0u8; 4];
                getrandom_fill(&mut bytes)?;
                let id =
                    65_536 + u64::from(u32::from_le_bytes(bytes)) % (u64::from(u32::MAX) - 65_536);
                let update = state_update(&identity, &[("client_id", id.to_string())]);
                commit_state(&*storage, IDENTITY_DOC, update, Vec::new())?;
                id
            }
        };
        let local = Local {
            storage,
            peer,
            client_id,
            schema_version: options.schema_version.or_else(|| {
                options
                    .migrations
                    .as_ref()
                    .filter(|m| !m.is_empty())
                    .map(Migrations::latest)
            }),
            migrations: options.migrations.unwrap_or_default(),
            editing: std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(crate::edit::MAX_CACHED_DOCS)
                    .unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            states: std::sync::Mutex::new(HashMap::new()),
        };
        Ok(Self {
            local: Arc::new(local),
            transport,
            writer: Mutex::new(()),
            local_edits: tokio::sync::Notify::new(),
        })
    }

    /// The yrs client id this replica's edits are made under.
    pub fn client_id(&self) -> u64 {
        self.local.client_id
    }

    /// Runs `work` on the local half on tokio's blocking pool, so a read or
    /// commit of the local store (an fsync) never blocks the caller's
    /// executor thread; waits for it. The thread is declared one that may
    /// block ([`seqsync_engine::on_blocking_thread`]), so a backend that
    /// refuses blocking calls on a runtime's threads serves it. Needs a
    /// tokio runtime (the replica's async methods run in one).
    ///
    /// Errors: whatever `work` returns; `Local` if the task panicked or was
    /// cancelled (the store is as the last commit left it).
    pub(crate) async fn blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Local) -> Result<R, ReplicaError> + Send + 'static,
    ) -> Result<R, ReplicaError> {
        let local = Arc::clone(&self.local);
        tokio::task::spawn_blocking(move || seqsync_engine::on_blocking_thread(|| work(&local)))
            .await
            .map_err(|e| {
                ReplicaError::Local(StorageError::backend("replica", "a local store task", e))
            })?
    }
}
