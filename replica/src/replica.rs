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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use seqsync_engine::{
    load_document, now_ms, plan_compaction, Change, ChangeKind, CollectionName, CollectionWrite,
    Compaction, DocId, DocState, Epoch, MigrationError, Migrations, PeerId, Seq, Storage,
    StorageError, WriteBase, WriteBatch, INITIAL_SCHEMA_VERSION, MIGRATION_ORIGIN,
};
use tokio::sync::Mutex;
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Any, Doc, Map, ReadTxn, StateVector, Transact, TransactionMut, Update, WriteTxn};

use crate::transport::{RemoteEvent, RemotePage, RemotePush, Transport, TransportError};

/// The local collection holding the replicas' sync state (reserved: a
/// collection of this name cannot be synced).
pub const STATE_COLLECTION: &str = "_seqsync-replica";
/// The state document holding the replica's own identity.
const IDENTITY_DOC: &str = "_identity";
/// Changes asked for per page.
const PAGE_LIMIT: u64 = 1000;
/// Pulled changes committed locally together, at most, and their bytes.
const LOCAL_COMMIT_CHANGES: usize = 8000;
const LOCAL_COMMIT_BYTES: usize = 8 << 20;
/// Updates pushed per batch at most (the server's default
/// `max_batch_updates`), and their bytes.
const PUSH_BATCH: usize = 1000;
const PUSH_BATCH_BYTES: usize = 4 << 20;
/// Consecutive local updates of one document merged into one pushed
/// update, at most, and their bytes.
const MERGE_UPDATES: usize = 1000;
const MERGE_BYTES: usize = 256 << 10;
/// The origin of local edits in the local log.
const LOCAL: &str = "local";
/// The origin of pulled changes in the local log.
const REMOTE: &str = "remote";
/// The origin of the replica's own migration outputs in the local log
/// (pulled ones, the server's, are stored as `remote`).
const MIGRATION: &str = MIGRATION_ORIGIN;
/// Documents migrated per local commit, and their outputs' bytes at most.
const MIGRATE_BATCH_DOCS: usize = 256;
const MIGRATE_BATCH_BYTES: usize = 4 << 20;
/// State-document changes after which the state document is compacted (in
/// the commit that writes the next one).
const STATE_COMPACT_EVERY: u64 = 256;

/// Errors of the replica's operations. Local data is never left half
/// written: a failed call changed nothing locally, or only whole commits.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// A collection or document name is invalid (or reserved).
    #[error("invalid name: {0}")]
    InvalidName(String),
    /// The local store failed.
    #[error("local store: {0}")]
    Local(#[from] StorageError),
    /// The server could not be reached, refused, or answered something the
    /// replica could not use; local data is as before the call.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The server's data is at a newer schema version than this app
    /// understands, or the server no longer takes this app's version: the
    /// app must be upgraded. Nothing local was changed by the failing step
    /// (pages already applied were at versions the app understands).
    #[error("the server's schema version is {server}, this app's {app}: upgrade the app (local data is untouched)")]
    UpgradeRequired {
        /// The app's schema version.
        app: u32,
        /// The server's (when it said).
        server: u32,
    },
    /// The app is at a newer schema version than the server: the server
    /// must be upgraded before this app can push. Local data is untouched.
    #[error("this app's schema version {app} is newer than the server's: upgrade the server (local data is untouched)")]
    ServerBehind {
        /// The app's schema version.
        app: u32,
    },
    /// The app is newer than the collection's local data and the next step
    /// of its migrations is server-only: the replica waits for the server's
    /// migration (the next sync brings it) instead of running the step on
    /// its own copy. Edits are refused until then; reads and syncs work.
    #[error("collection {collection} is at schema version {local} here and the step to {} is server-only: sync with the server to receive its migration, then edit (local data is untouched)", local + 1)]
    AwaitingServerMigration {
        /// The collection.
        collection: String,
        /// The version its local data is at.
        local: u32,
        /// The app's version.
        app: u32,
    },
    /// The app's migrations do not fit together (a gap, a duplicate step).
    #[error("the app's migrations: {0}")]
    InvalidMigrations(String),
    /// A migration step refused or failed on a local document; nothing of
    /// that document was written.
    #[error(transparent)]
    Migration(#[from] MigrationError),
    /// A local edit or a pulled change is not a valid Yjs update.
    #[error("document {doc}: {reason}")]
    InvalidUpdate {
        /// The document.
        doc: String,
        /// What yrs said.
        reason: String,
    },
}

/// Why a sync had to start over from the server's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResetReason {
    /// The server's collection has another epoch (replaced, restored).
    Epoch,
    /// The replica's cursor is beyond the server's head (the server lost
    /// history, e.g. restored from an older backup under the same epoch).
    CursorBeyondHead,
    /// The server's change at the replica's cursor has another log checksum:
    /// the seq was reused for something else (a database failover that lost
    /// acknowledged commits, an older backup restored and written since).
    HistoryReplaced,
}

/// What a sync did, Tolstoy's cases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Nothing moved either way.
    NoOp,
    /// Remote changes only (a local fast-forward).
    Pulled {
        /// Changes by others applied locally.
        changes: u64,
        /// Their payload bytes.
        bytes: u64,
    },
    /// Local edits only (a remote fast-forward).
    Pushed {
        /// Local updates the server took.
        updates: u64,
    },
    /// Both.
    Merged {
        /// Changes by others applied locally.
        pulled: u64,
        /// Local updates the server took.
        pushed: u64,
    },
    /// The server answered reset: the replica recovered the collection and
    /// pushed its own state back, so nothing local is lost.
    Reset {
        /// Why.
        reason: ResetReason,
        /// Documents whose server state was applied locally.
        pulled: u64,
        /// Documents whose local state was pushed back.
        pushed: u64,
    },
}

/// The report of one [`Replica::sync`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncReport {
    /// What happened.
    pub outcome: SyncOutcome,
    /// The server moved (others wrote) while this sync ran: sync again to
    /// pull it.
    pub follow_up_needed: bool,
    /// The cursor the replica holds now.
    pub cursor: Seq,
    /// The server's head as last seen.
    pub head: Seq,
    /// The server's epoch.
    pub epoch: Option<Epoch>,
    /// Requests made (pages, pushes, acks).
    pub requests: u64,
    /// Documents whose own provisional migration output was replaced by
    /// the server's migration of them (see [`Replica::migrate_local`]).
    pub rebased: u64,
}

/// Where a running sync is, for a progress bar: `received` of `expected`
/// changes pulled (from the cursor and the server's head; compaction may
/// deliver fewer, so the last event sets both equal), `pushed` of
/// `to_push` local edits sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncProgress {
    /// Changes received so far.
    pub received: u64,
    /// Changes expected (head − cursor when the sync began its pull).
    pub expected: u64,
    /// Local edits acknowledged so far.
    pub pushed: u64,
    /// Local edits in the outbox when the push began.
    pub to_push: u64,
}

/// What [`Replica::compact`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalCompaction {
    /// Documents compacted.
    pub documents: u64,
    /// Changes replaced by snapshots.
    pub changes_removed: u64,
    /// Their payload bytes.
    pub bytes_before: u64,
    /// The snapshots' bytes.
    pub bytes_after: u64,
}

/// The sync state of one collection, as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct SyncState {
    epoch: Option<Epoch>,
    cursor: Seq,
    pushed_through: Seq,
    /// The schema version every local document of the collection is at.
    local_version: u32,
    /// Documents holding provisional migration output of the replica's
    /// own (never pushed yet), with the local seq of its first change.
    provisional: BTreeMap<String, Seq>,
    /// Changes of the state document since it was last compacted.
    state_changes: u64,
    /// The server's log checksum at `cursor`, when known: sent with the next
    /// page request so a reused seq is noticed.
    cursor_checksum: Option<u64>,
}

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
    storage: Arc<dyn Storage>,
    transport: T,
    peer: PeerId,
    client_id: u64,
    schema_version: Option<u32>,
    migrations: Migrations,
    /// One local writer at a time: appends compute their base from the
    /// stored head.
    writer: Mutex<()>,
    /// Documents recently edited, kept loaded under this replica's client
    /// id so an edit does not replay the document from the local store each
    /// time (at most `MAX_CACHED_DOCS`; a pull or a raw local update of a
    /// document drops its entry).
    editing: std::sync::Mutex<HashMap<(CollectionName, DocId), Doc>>,
    /// Woken by every local edit, so a live `follow` pushes it at once.
    local_edits: tokio::sync::Notify,
    /// Each collection's sync state and its state document as last
    /// committed, so a sync (and a live session, per change) neither
    /// replays the state document from the store nor parses it again.
    /// Written only after a commit succeeds; dropped when one fails.
    states: std::sync::Mutex<HashMap<CollectionName, (SyncState, Doc)>>,
}

/// How long `Follow::stop` waits for the server to confirm it has sent
/// everything (the goodbye), at most.
const GOODBYE_TIMEOUT_MS: u64 = 10_000;

/// A live session started by [`Replica::follow`]; end it with
/// [`Follow::stop`].
pub struct Follow {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<FollowReport, ReplicaError>>,
}

/// What a live session did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FollowReport {
    /// Changes by others applied locally while following.
    pub received: u64,
    /// Local updates pushed while following.
    pub pushed: u64,
    /// The cursor at the end.
    pub cursor: Seq,
}

impl Follow {
    /// Ends the session the way Scuttlebutt's fix says, saying goodbye
    /// before hanging up: every local edit is pushed, then the stream is
    /// read until the server says it has delivered everything up to the
    /// head after that push; only then is it closed. So nothing is lost at
    /// the end of a live session.
    ///
    /// Errors: the session's own failure (transport, local store), or
    /// `Transport(Unavailable)` if the goodbye does not complete in 10 s.
    pub async fn stop(self) -> Result<FollowReport, ReplicaError> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(ReplicaError::Transport(TransportError::Unavailable(
                format!("the follow task failed: {e}"),
            ))),
        }
    }
}

/// Documents kept loaded for `edit`.
const MAX_CACHED_DOCS: usize = 64;

fn name(collection: &str) -> Result<CollectionName, ReplicaError> {
    if collection == STATE_COLLECTION {
        return Err(ReplicaError::InvalidName(format!(
            "{STATE_COLLECTION} is reserved for the replica's own state"
        )));
    }
    CollectionName::new(collection).map_err(|e| ReplicaError::InvalidName(e.to_string()))
}

fn doc_id(doc: &str) -> Result<DocId, ReplicaError> {
    DocId::new(doc).map_err(|e| ReplicaError::InvalidName(e.to_string()))
}

fn state_collection() -> Result<CollectionName, ReplicaError> {
    CollectionName::new(STATE_COLLECTION).map_err(|e| ReplicaError::InvalidName(e.to_string()))
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
        Ok(Self {
            storage,
            transport,
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
            writer: Mutex::new(()),
            editing: std::sync::Mutex::new(HashMap::new()),
            local_edits: tokio::sync::Notify::new(),
            states: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The yrs client id this replica's edits are made under.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// Applies a local update (Yjs v1) to document `doc` of `collection`:
    /// durable in the local store before it returns, and queued in the
    /// outbox for the next sync. A no-op update is not queued.
    ///
    /// Errors: `InvalidName`, `InvalidUpdate`, `Local`.
    pub async fn apply_local(
        &self,
        collection: &str,
        doc: &str,
        update: Vec<u8>,
    ) -> Result<(), ReplicaError> {
        let c = name(collection)?;
        let d = doc_id(doc)?;
        Update::decode_v1(&update).map_err(|e| ReplicaError::InvalidUpdate {
            doc: doc.to_owned(),
            reason: e.to_string(),
        })?;
        let _guard = self.writer.lock().await;
        let version = self.editable_version(&c).await?;
        self.forget(&c, &d);
        append(
            &*self.storage,
            &c,
            vec![Item::new(d, update, LOCAL, version)],
        )?;
        self.local_edits.notify_one();
        Ok(())
    }

    /// Applies many local updates in one local commit (an import, or a
    /// burst of edits made while the app held them in memory): durable
    /// before it returns, all or nothing, queued in the outbox in order.
    ///
    /// Errors: `InvalidName`, `InvalidUpdate` (nothing is written), `Local`.
    pub async fn apply_local_batch(
        &self,
        collection: &str,
        updates: Vec<(String, Vec<u8>)>,
    ) -> Result<(), ReplicaError> {
        let c = name(collection)?;
        let mut items = Vec::with_capacity(updates.len());
        for (doc, update) in updates {
            let d = doc_id(&doc)?;
            Update::decode_v1(&update).map_err(|e| ReplicaError::InvalidUpdate {
                doc: doc.clone(),
                reason: e.to_string(),
            })?;
            items.push((d, update));
        }
        let _guard = self.writer.lock().await;
        let version = self.editable_version(&c).await?;
        let items: Vec<Item> = items
            .into_iter()
            .map(|(d, update)| Item::new(d, update, LOCAL, version))
            .collect();
        for item in &items {
            self.forget(&c, &item.doc);
        }
        append(&*self.storage, &c, items)?;
        self.local_edits.notify_one();
        Ok(())
    }

    /// Compacts the local log of `collection`: the part of each document's
    /// history the server has confirmed (pulled changes, acknowledged local
    /// edits) becomes one snapshot, as the server's compaction does. Unpushed
    /// edits (the outbox) and provisional migration output stay as they
    /// are. Call it after syncs now and then (the log otherwise keeps every
    /// update, like the server's without compaction).
    ///
    /// Blocking local I/O, commits of at most 256 documents. Errors:
    /// `InvalidName`, `Local`, `InvalidUpdate` (a stored change does not
    /// decode; nothing of that document is changed).
    pub async fn compact(&self, collection: &str) -> Result<LocalCompaction, ReplicaError> {
        let c = name(collection)?;
        let _guard = self.writer.lock().await;
        let state = self.sync_state(&c)?;
        let mut report = LocalCompaction::default();
        let mut plans = Vec::new();
        for info in self.storage.documents(&c)? {
            let changes = self.storage.document_changes(&c, &info.doc)?;
            let first = state.provisional.get(info.doc.as_str()).copied();
            let keep_from = changes
                .iter()
                .filter(|ch| {
                    let origin = ch.origin.as_ref().map(PeerId::as_str);
                    (origin == Some(LOCAL) && ch.seq > state.pushed_through)
                        || (origin == Some(MIGRATION) && first.is_some_and(|f| ch.seq >= f))
                })
                .map(|ch| ch.seq)
                .min();
            if info.deleted && keep_from.is_some() {
                // A tombstone's compaction drops everything before it,
                // whatever the cutoff: keep the unpushed edits.
                continue;
            }
            let cutoff = keep_from.map_or(info.last_seq, |seq| seq.saturating_sub(1));
            let plan = plan_compaction(&info.doc, &changes, cutoff, state.local_version)
                .map_err(|e| invalid(&info.doc, e))?;
            let Some(plan) = plan else { continue };
            report.documents += 1;
            report.changes_removed += plan.changes_removed;
            report.bytes_before += plan.bytes_before;
            report.bytes_after += plan.bytes_after;
            plans.push(plan.compaction);
            if plans.len() >= MIGRATE_BATCH_DOCS {
                self.commit_compactions(&c, std::mem::take(&mut plans))?;
            }
        }
        if !plans.is_empty() {
            self.commit_compactions(&c, plans)?;
        }
        Ok(report)
    }

    fn commit_compactions(
        &self,
        c: &CollectionName,
        compact: Vec<Compaction>,
    ) -> Result<(), ReplicaError> {
        let mut write = append_write(&*self.storage, c, Vec::new())?;
        write.compact = compact;
        self.storage.commit(&WriteBatch {
            writes: vec![write],
        })?;
        Ok(())
    }

    /// Drops a document from the edit cache (it changed some other way).
    fn forget(&self, c: &CollectionName, d: &DocId) {
        if let Ok(mut editing) = self.editing.lock() {
            editing.remove(&(c.clone(), d.clone()));
        }
    }

    /// Edits document `doc` in a yrs transaction under this replica's client
    /// id, then applies the result as [`Replica::apply_local`]. Returns the
    /// update written (empty if the edit changed nothing).
    ///
    /// Errors: as `apply_local`.
    pub async fn edit(
        &self,
        collection: &str,
        doc: &str,
        f: impl FnOnce(&mut TransactionMut<'_>),
    ) -> Result<Vec<u8>, ReplicaError> {
        let c = name(collection)?;
        let d = doc_id(doc)?;
        let _guard = self.writer.lock().await;
        let version = self.editable_version(&c).await?;
        let key = (c.clone(), d.clone());
        let cached = self.editing.lock().ok().and_then(|mut e| e.remove(&key));
        let working = match cached {
            Some(doc) => doc,
            None => {
                let state = self.local_state(&c, &d)?;
                let working = Doc::with_options(yrs::Options {
                    client_id: yrs::ClientID::new(self.client_id),
                    offset_kind: yrs::OffsetKind::Utf16,
                    ..yrs::Options::default()
                });
                apply_bytes(&working, &state, doc)?;
                working
            }
        };
        let update = {
            let mut txn = working.transact_mut();
            f(&mut txn);
            if txn.insert_set().is_empty() && txn.delete_set().is_empty() {
                None
            } else {
                Some(txn.encode_update_v1())
            }
        };
        // Only a committed edit leaves the working copy cached: on a failed
        // commit it is dropped, so memory never runs ahead of the store.
        let Some(update) = update else {
            self.keep(key, working);
            return Ok(Vec::new());
        };
        append(
            &*self.storage,
            &c,
            vec![Item::new(d, update.clone(), LOCAL, version)],
        )?;
        self.keep(key, working);
        self.local_edits.notify_one();
        Ok(update)
    }

    fn keep(&self, key: (CollectionName, DocId), doc: Doc) {
        if let Ok(mut editing) = self.editing.lock() {
            if editing.len() >= MAX_CACHED_DOCS {
                editing.clear();
            }
            editing.insert(key, doc);
        }
    }

    /// The local state of a document as one Yjs v1 update (empty document
    /// if it was never written).
    ///
    /// Blocking read of the local store. Errors: `InvalidName`, `Local`.
    pub fn document(&self, collection: &str, doc: &str) -> Result<Vec<u8>, ReplicaError> {
        self.local_state(&name(collection)?, &doc_id(doc)?)
    }

    /// The documents of `collection` the replica holds (deleted ones
    /// included, flagged), in id order.
    ///
    /// Errors: `InvalidName`, `Local`.
    pub fn documents(&self, collection: &str) -> Result<Vec<(String, bool)>, ReplicaError> {
        let c = name(collection)?;
        Ok(self
            .storage
            .documents(&c)?
            .into_iter()
            .map(|d| (d.doc.to_string(), d.deleted))
            .collect())
    }

    /// Local edits of `collection` not yet acknowledged by the server.
    ///
    /// Errors: `InvalidName`, `Local`.
    pub fn outbox_len(&self, collection: &str) -> Result<u64, ReplicaError> {
        let c = name(collection)?;
        let state = self.sync_state(&c)?;
        Ok(self
            .outbox(&c, &state)?
            .iter()
            .filter(|item| !item.migration)
            .count() as u64)
    }

    /// The app's schema version (1 when it does not version its schema).
    fn app_version(&self) -> u32 {
        self.schema_version.unwrap_or(INITIAL_SCHEMA_VERSION)
    }

    /// How far this replica migrates data at `from` by itself: up to the
    /// app's version, stopping before a server-only step. Without
    /// migrations, nowhere.
    fn reach(&self, from: u32) -> u32 {
        if self.migrations.is_empty() {
            return from;
        }
        self.migrations.client_reach(from).min(self.app_version())
    }

    /// Migrates the local documents of `collection` that are at an older
    /// schema version than the app (it was upgraded while they were
    /// stored), so the app works on them offline. Returns the documents
    /// that changed. Called by every edit and sync; an app may call it at
    /// startup to pay the cost up front.
    ///
    /// Each step's output is logged locally as *provisional* (origin
    /// `migration`), under the client id derived from the document's state
    /// (the engine's contract): where the server migrated the same state,
    /// both outputs are byte-identical and merge to one. Where the states
    /// differed, the next sync that pulls the server's migration of a
    /// document drops the replica's own output from it (a local rebase,
    /// [`SyncReport::rebased`]), unless a local edit since builds on it: then
    /// the output is pushed before that edit. A step that must never meet a
    /// second run on another state (it appends to an array) is declared
    /// server-only, and the replica waits for the server's
    /// ([`ReplicaError::AwaitingServerMigration`] on edits until then).
    ///
    /// Blocking local I/O; commits of at most 256 documents, the version
    /// raised in the last one, so a crash resumes where it stopped.
    /// Errors: `InvalidName`, `Local`, `Migration`, `UpgradeRequired` (the
    /// local data is newer than the app).
    pub async fn migrate_local(&self, collection: &str) -> Result<u64, ReplicaError> {
        let c = name(collection)?;
        let _guard = self.writer.lock().await;
        Ok(self.migrate_locked(&c)?.1)
    }

    /// [`Replica::migrate_local`] under the writer lock.
    fn migrate_locked(&self, c: &CollectionName) -> Result<(SyncState, u64), ReplicaError> {
        let mut state = self.sync_state(c)?;
        let app = self.app_version();
        if state.local_version > app {
            return Err(ReplicaError::UpgradeRequired {
                app,
                server: state.local_version,
            });
        }
        let from = state.local_version;
        let target = self.reach(from);
        if target <= from {
            return Ok((state, 0));
        }
        let mut migrated = 0u64;
        let mut items = Vec::new();
        let mut bytes = 0usize;
        let mut docs_in_batch = 0usize;
        for info in self.storage.documents(c)? {
            if info.deleted {
                continue;
            }
            let Some(loaded) = load_document(&*self.storage, c, &info.doc)? else {
                continue;
            };
            let outputs = self
                .migrations
                .migrate(&info.doc, loaded.state.doc(), from, target)?;
            if outputs.is_empty() {
                continue;
            }
            migrated += 1;
            docs_in_batch += 1;
            for output in outputs {
                bytes += output.update.len();
                items.push(Item::new(
                    info.doc.clone(),
                    output.update,
                    MIGRATION,
                    output.to,
                ));
            }
            if docs_in_batch >= MIGRATE_BATCH_DOCS || bytes >= MIGRATE_BATCH_BYTES {
                let write = append_write(&*self.storage, c, std::mem::take(&mut items))?;
                self.note_provisional(&mut state, &write);
                self.commit_with_state(c, &state, vec![write])?;
                (docs_in_batch, bytes) = (0, 0);
            }
        }
        state.local_version = target;
        let writes = if items.is_empty() {
            Vec::new()
        } else {
            let write = append_write(&*self.storage, c, items)?;
            self.note_provisional(&mut state, &write);
            vec![write]
        };
        self.commit_with_state(c, &state, writes)?;
        if let Ok(mut editing) = self.editing.lock() {
            editing.retain(|(collection, _), _| collection != c);
        }
        Ok((state, migrated))
    }

    /// Records the documents of `write`'s migration outputs as provisional.
    fn note_provisional(&self, state: &mut SyncState, write: &CollectionWrite) {
        for change in &write.append {
            if change.origin.as_ref().map(PeerId::as_str) == Some(MIGRATION) {
                state
                    .provisional
                    .entry(change.doc.to_string())
                    .or_insert(change.seq);
            }
        }
    }

    /// The version a local edit of `c` is made at, after migrating what is
    /// older; `AwaitingServerMigration` while a server-only step is due.
    async fn editable_version(&self, c: &CollectionName) -> Result<u32, ReplicaError> {
        let (state, _) = self.migrate_locked(c)?;
        let app = self.app_version();
        if state.local_version < app {
            return Err(ReplicaError::AwaitingServerMigration {
                collection: c.to_string(),
                local: state.local_version,
                app,
            });
        }
        Ok(state.local_version)
    }

    fn local_state(&self, c: &CollectionName, d: &DocId) -> Result<Vec<u8>, ReplicaError> {
        Ok(load_document(&*self.storage, c, d)?.map_or_else(
            || DocState::empty().encode_state(),
            |loaded| loaded.state.encode_state(),
        ))
    }

    fn sync_state(&self, c: &CollectionName) -> Result<SyncState, ReplicaError> {
        Ok(self.cached_state(c)?.0)
    }

    /// The sync state of `c` and its state document, from the cache or
    /// loaded from the store (and cached).
    fn cached_state(&self, c: &CollectionName) -> Result<(SyncState, Doc), ReplicaError> {
        if let Some(found) = self.states.lock().ok().and_then(|s| s.get(c).cloned()) {
            return Ok(found);
        }
        let doc = load_state_doc(&*self.storage, c.as_str())?;
        let local_version = match read_u64(&doc, "local_version") {
            Some(version) => u32::try_from(version).unwrap_or(u32::MAX),
            // A store from before versions were kept: data already there
            // is at the first version if the app can migrate it, and a
            // collection with nothing local yet starts at the app's.
            None if !self.migrations.is_empty() && self.storage.collection(c)?.is_some() => {
                INITIAL_SCHEMA_VERSION
            }
            None => self.app_version(),
        };
        let provisional = read_string(&doc, "provisional")
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default();
        let state = SyncState {
            epoch: read_string(&doc, "epoch").and_then(|e| Epoch::parse_hex(&e)),
            cursor: read_u64(&doc, "cursor").unwrap_or(0),
            pushed_through: read_u64(&doc, "pushed_through").unwrap_or(0),
            local_version,
            provisional,
            // Unknown after a restart: count from here.
            state_changes: 0,
            cursor_checksum: read_string(&doc, "cursor_checksum")
                .and_then(|h| u64::from_str_radix(&h, 16).ok()),
        };
        if let Ok(mut states) = self.states.lock() {
            states.insert(c.clone(), (state.clone(), doc.clone()));
        }
        Ok((state, doc))
    }

    /// Commits `writes` together with `state` as the sync state of `c`, in
    /// one transaction, and caches it once committed.
    fn commit_with_state(
        &self,
        c: &CollectionName,
        state: &SyncState,
        mut writes: Vec<CollectionWrite>,
    ) -> Result<(), ReplicaError> {
        let (stored, doc) = self.cached_state(c)?;
        let provisional = serde_json::to_string(&state.provisional).unwrap_or_default();
        let update = state_update(
            &doc,
            &[
                ("cursor", state.cursor.to_string()),
                ("pushed_through", state.pushed_through.to_string()),
                (
                    "epoch",
                    state.epoch.map(|e| e.to_string()).unwrap_or_default(),
                ),
                ("local_version", state.local_version.to_string()),
                (
                    "cursor_checksum",
                    state
                        .cursor_checksum
                        .map(|c| format!("{c:016x}"))
                        .unwrap_or_default(),
                ),
                ("provisional", provisional),
                ("synced_ms", now_ms().to_string()),
            ],
        );
        let mut state_write = state_collection_write(&*self.storage, c.as_str(), update)?;
        // Every sync writes the state document: fold its history into one
        // snapshot now and then, so it stays a few hundred bytes to load.
        let mut state = state.clone();
        state.state_changes = stored.state_changes + 1;
        if state.state_changes >= STATE_COMPACT_EVERY {
            if let Some(change) = state_write.append.first() {
                state_write.compact.push(Compaction {
                    doc: change.doc.clone(),
                    through: change.seq,
                    snapshot: Some(
                        doc.transact()
                            .encode_state_as_update_v1(&StateVector::default()),
                    ),
                    schema_version: INITIAL_SCHEMA_VERSION,
                });
                state.state_changes = 0;
            }
        }
        writes.push(state_write);
        let committed = self.storage.commit(&WriteBatch { writes });
        if let Ok(mut states) = self.states.lock() {
            match committed {
                Ok(()) => {
                    states.insert(c.clone(), (state, doc));
                }
                // The document holds the update that did not land: load
                // it again next time.
                Err(_) => {
                    states.remove(c);
                }
            }
        }
        committed.map_err(ReplicaError::from)
    }

    /// What the next push sends, in local seq order: the local edits after
    /// `pushed_through`, and before them the provisional migration output of
    /// their documents (an edit may build on it, and the server must have
    /// what an update builds on). An edit is declared at its own version,
    /// or at the newest version of the replica's own migration output of
    /// its document that follows it: an edit made before the app was
    /// upgraded and then migrated locally goes up with its migration (the
    /// server does not upgrade it a second time); one whose local migration
    /// was rebased away goes up at its own version, and the server upgrades
    /// it on ingest.
    fn outbox(&self, c: &CollectionName, state: &SyncState) -> Result<Vec<Pending>, ReplicaError> {
        let mut out = Vec::new();
        let mut cursor = state.pushed_through;
        while let Some(page) = self.storage.read_changes(c, cursor, 1000)? {
            if page.changes.is_empty() {
                break;
            }
            for change in page.changes {
                cursor = change.seq;
                if change.origin.as_ref().map(PeerId::as_str) == Some(LOCAL) {
                    out.push(Pending::of(change, false));
                }
            }
        }
        let with_provisional: BTreeSet<DocId> = out
            .iter()
            .filter(|p| state.provisional.contains_key(p.doc.as_str()))
            .map(|p| p.doc.clone())
            .collect();
        for doc in with_provisional {
            let first = state.provisional.get(doc.as_str()).copied().unwrap_or(0);
            for change in self.storage.document_changes(c, &doc)? {
                if change.seq >= first
                    && change.origin.as_ref().map(PeerId::as_str) == Some(MIGRATION)
                {
                    out.push(Pending::of(change, true));
                }
            }
        }
        out.sort_by_key(|p| p.seq);
        // Backwards: the newest version of a later migration item of the
        // same document raises an edit's declared version.
        let mut migrated_to: HashMap<DocId, u32> = HashMap::new();
        for item in out.iter_mut().rev() {
            if item.migration {
                let to = migrated_to.entry(item.doc.clone()).or_insert(item.version);
                *to = (*to).max(item.version);
            } else if let Some(&to) = migrated_to.get(&item.doc) {
                item.version = item.version.max(to);
            }
        }
        Ok(out)
    }

    /// Pushes `outbox` (of `c`; the caller holds the writer lock).
    ///
    /// Consecutive updates of one document at one declared version are
    /// merged into one update (at most `MERGE_UPDATES` of them, or
    /// `MERGE_BYTES`): nobody else has seen them, and a phone back from a
    /// week offline then sends a few merged updates instead of every
    /// keystroke, which the server logs, checksums and stores once. A batch
    /// holds at most `PUSH_BATCH` merged updates and `PUSH_BATCH_BYTES`, all
    /// of one declared version; after the server's answer the outbox
    /// position moves in one local commit (a crash before it re-sends the
    /// batch, which the server drops as already had). `after_batch` sees
    /// each batch as (local edits sent, local edits in updates the server
    /// logged, its answer). Returns the requests made.
    async fn push_outbox(
        &self,
        c: &CollectionName,
        state: &mut SyncState,
        outbox: Vec<Pending>,
        mut after_batch: impl FnMut(u64, u64, &RemotePush) + Send,
    ) -> Result<u64, ReplicaError> {
        let mut requests = 0u64;
        let mut merger = Merger::default();
        let mut rest = &outbox[..];
        while let Some(first) = rest.first() {
            let version = first.version;
            // (items merged, merged update) per pushed update.
            let mut groups: Vec<(&[Pending], Vec<u8>)> = Vec::new();
            let mut batch_bytes = 0usize;
            while let Some(head) = rest.first() {
                if head.version != version
                    || groups.len() >= PUSH_BATCH
                    || batch_bytes >= PUSH_BATCH_BYTES
                {
                    break;
                }
                let mut len = 0usize;
                let mut bytes = 0usize;
                for item in rest.iter().take(MERGE_UPDATES) {
                    if item.doc != head.doc
                        || item.version != version
                        || (len > 0 && bytes + item.update.len() > MERGE_BYTES)
                    {
                        break;
                    }
                    len += 1;
                    bytes += item.update.len();
                }
                let (group, tail) = rest.split_at(len);
                rest = tail;
                let update = if group.len() == 1 {
                    group[0].update.clone()
                } else {
                    merger.merge(self, c, &outbox, group)?
                };
                batch_bytes += update.len();
                groups.push((group, update));
            }
            requests += 1;
            let updates = groups
                .iter()
                .map(|(group, update)| (group[0].doc.to_string(), update.clone()))
                .collect();
            let declared = self.schema_version.map(|_| version);
            let outcome = self
                .transport
                .push_batch(c.as_str(), updates, self.peer.as_str(), declared)
                .await
                .map_err(|e| self.schema_error(e))?;
            if state.epoch.is_none() {
                // The push created the collection: learn its epoch from a
                // page (nothing is pulled; our own changes are skipped).
                requests += 1;
                let page = self.transport.changes(c.as_str(), 0, 0, None).await?;
                state.epoch = page.epoch;
            }
            let edits = |group: &[Pending]| group.iter().filter(|p| !p.migration).count() as u64;
            let mut sent = 0u64;
            let mut taken = 0u64;
            for (i, (group, _)) in groups.iter().enumerate() {
                sent += edits(group);
                if outcome.seqs.get(i).copied().flatten().is_some() {
                    taken += edits(group);
                }
                for item in group.iter() {
                    state.pushed_through = state.pushed_through.max(item.seq);
                    // On the server now: no longer the replica's own to drop.
                    state.provisional.remove(item.doc.as_str());
                }
            }
            self.commit_with_state(c, state, Vec::new())?;
            after_batch(sent, taken, &outcome);
        }
        Ok(requests)
    }

    /// Syncs `collection` with the server: pulls what others wrote since the
    /// cursor (each page applied locally in one transaction together with
    /// the cursor that covers it), then pushes the outbox (in batches; the
    /// outbox position moves in the same local commit as nothing else, once
    /// the server acknowledged), then acknowledges the cursor.
    ///
    /// A failure or a cancelled future leaves the local store as it was
    /// after the last whole commit, and the outbox intact: a retry is always
    /// safe (the server drops what it already has). If the server answers
    /// reset, the replica recovers the collection (the server's state is
    /// applied locally) and pushes its own state back, so nothing local is
    /// lost.
    ///
    /// Errors: `InvalidName`, `Local`, `Transport`.
    pub async fn sync(&self, collection: &str) -> Result<SyncReport, ReplicaError> {
        self.sync_with_progress(collection, |_| {}).await
    }

    /// [`Replica::sync`], calling `progress` after every page pulled and
    /// every batch pushed (a UI draws `received / expected`).
    pub async fn sync_with_progress(
        &self,
        collection: &str,
        mut progress: impl FnMut(SyncProgress) + Send,
    ) -> Result<SyncReport, ReplicaError> {
        let c = name(collection)?;
        let mut shown = SyncProgress::default();
        let _guard = self.writer.lock().await;
        // Local data the app can migrate itself is migrated first, so what
        // the pull brings is rebased onto the migrated documents.
        let (mut state, _) = self.migrate_locked(&c)?;
        let cursor_before = state.cursor;
        let mut requests = 0u64;
        let mut pulled = 0u64;
        let mut pulled_bytes = 0u64;
        let mut rebased = 0u64;
        let mut last_schema_version;
        let mut head;
        // Pull. Pages are fetched one by one (progress after each) and
        // committed locally in groups of up to `LOCAL_COMMIT_CHANGES`
        // changes or `LOCAL_COMMIT_BYTES`, each group with the cursor that
        // covers it: a 260k-change catch-up is a few dozen local commits,
        // not hundreds.
        let mut fetch_cursor = state.cursor;
        let mut fetch_epoch = state.epoch;
        let mut fetch_checksum = state.cursor_checksum;
        let mut held: Option<RemotePage> = None;
        let mut held_bytes = 0usize;
        loop {
            requests += 1;
            let page = match self
                .transport
                .changes_verified(
                    collection,
                    fetch_cursor,
                    PAGE_LIMIT,
                    fetch_epoch,
                    fetch_checksum,
                )
                .await
            {
                Ok(page) => page,
                Err(TransportError::Reset { epoch, head }) => {
                    let reason = if epoch != state.epoch {
                        ResetReason::Epoch
                    } else if head < state.cursor {
                        ResetReason::CursorBeyondHead
                    } else {
                        ResetReason::HistoryReplaced
                    };
                    return self.recover(&c, state, reason, requests).await;
                }
                Err(err) => return Err(err.into()),
            };
            head = page.head;
            if let Err(err) = self.check_versions(&page) {
                // What was fetched before this page is at versions the app
                // understands: keep it.
                if let Some(held) = held.take() {
                    self.apply_page(&c, &mut state, held)?;
                }
                return Err(err);
            }
            if shown.expected == 0 {
                shown.expected = page.head.saturating_sub(cursor_before);
            }
            fetch_cursor = page.cursor;
            fetch_epoch = page.epoch.or(fetch_epoch);
            fetch_checksum = (page.cursor_checksum != 0).then_some(page.cursor_checksum);
            last_schema_version = page.schema_version;
            let has_more = page.has_more;
            held_bytes += page
                .changes
                .iter()
                .map(|ch| ch.payload.len())
                .sum::<usize>();
            held = Some(match held.take() {
                None => page,
                Some(mut earlier) => {
                    earlier.changes.extend(page.changes);
                    RemotePage {
                        changes: earlier.changes,
                        ..page
                    }
                }
            });
            let held_changes = held.as_ref().map_or(0, |p| p.changes.len());
            if !has_more || held_changes >= LOCAL_COMMIT_CHANGES || held_bytes >= LOCAL_COMMIT_BYTES
            {
                if let Some(group) = held.take() {
                    let applied = self.apply_page(&c, &mut state, group)?;
                    pulled += applied.changes;
                    pulled_bytes += applied.bytes;
                    rebased += applied.rebased;
                }
                held_bytes = 0;
            }
            shown.received = fetch_cursor
                .saturating_sub(cursor_before)
                .min(shown.expected);
            if !has_more {
                shown.received = shown.expected;
                progress(shown);
                break;
            }
            progress(shown);
        }
        // The server's collection is at a newer version than the local
        // data (a server-only step was due): every document pulled is at
        // it now, so the local data is too; then the app's own steps run.
        if last_schema_version.min(self.app_version()) > state.local_version {
            state.local_version = last_schema_version.min(self.app_version());
            self.commit_with_state(&c, &state, Vec::new())?;
            state = self.migrate_locked(&c)?.0;
        }
        // Push.
        let outbox = self.outbox(&c, &state)?;
        shown.to_push = outbox.iter().filter(|p| !p.migration).count() as u64;
        let mut pushed = 0u64;
        let mut others_wrote = false;
        requests += self
            .push_outbox(&c, &mut state, outbox, |sent, taken, outcome| {
                let logged = outcome.seqs.iter().filter(|s| s.is_some()).count() as u64;
                pushed += taken;
                if outcome.head > head + logged {
                    others_wrote = true;
                }
                head = outcome.head;
                shown.pushed = (shown.pushed + sent).min(shown.to_push);
                progress(shown);
            })
            .await?;
        if state.cursor > cursor_before {
            requests += 1;
            // An ack is advisory (compaction gating): a failure does not fail
            // the sync.
            let _ = self
                .transport
                .ack(collection, self.peer.as_str(), state.cursor)
                .await;
        }
        let outcome = match (pulled, pushed) {
            (0, 0) => SyncOutcome::NoOp,
            (p, 0) => SyncOutcome::Pulled {
                changes: p,
                bytes: pulled_bytes,
            },
            (0, q) => SyncOutcome::Pushed { updates: q },
            (p, q) => SyncOutcome::Merged {
                pulled: p,
                pushed: q,
            },
        };
        Ok(SyncReport {
            outcome,
            follow_up_needed: others_wrote,
            cursor: state.cursor,
            head,
            epoch: state.epoch,
            requests,
            rebased,
        })
    }

    /// Pushes the outbox of `c` (under the writer lock): each batch, then
    /// the outbox position in its own local commit. Returns (updates logged
    /// by the server, the head after the last batch).
    async fn push_pending(&self, c: &CollectionName) -> Result<(u64, Option<Seq>), ReplicaError> {
        let _guard = self.writer.lock().await;
        let (mut state, _) = self.migrate_locked(c)?;
        let mut pushed = 0;
        let mut head = None;
        let outbox = self.outbox(c, &state)?;
        self.push_outbox(c, &mut state, outbox, |_, taken, outcome| {
            pushed += taken;
            head = Some(outcome.head);
        })
        .await?;
        Ok((pushed, head))
    }

    /// Applies one streamed change (under the writer lock), moving the
    /// cursor with it. Returns whether it was someone else's.
    async fn apply_streamed(
        &self,
        c: &CollectionName,
        change: seqsync_engine::Change,
    ) -> Result<bool, ReplicaError> {
        let _guard = self.writer.lock().await;
        let mut state = self.sync_state(c)?;
        if change.seq <= state.cursor {
            return Ok(false);
        }
        let theirs = change.origin.as_ref() != Some(&self.peer);
        let page = RemotePage {
            cursor_checksum: change.log_checksum,
            cursor: change.seq,
            changes: vec![change],
            has_more: false,
            head: 0,
            epoch: state.epoch,
            schema_version: 0,
        };
        self.apply_page(c, &mut state, page)?;
        Ok(theirs)
    }

    /// A push the server refused for its schema version, as the typed error
    /// the app acts on.
    fn schema_error(&self, err: TransportError) -> ReplicaError {
        let app = self.schema_version.unwrap_or(1);
        match &err {
            TransportError::Refused { code, message } if code == "schema_too_old" => {
                // "… older than N, the oldest this server upgrades (the
                // collection is at M) …": the collection's version is the
                // last number of the message.
                let server = message
                    .split(|c: char| !c.is_ascii_digit())
                    .rev()
                    .find_map(|n| n.parse::<u32>().ok())
                    .unwrap_or(app + 1);
                ReplicaError::UpgradeRequired { app, server }
            }
            TransportError::Refused { code, .. } if code == "schema_too_new" => {
                ReplicaError::ServerBehind { app }
            }
            _ => ReplicaError::Transport(err),
        }
    }

    /// Refuses a page holding changes newer than the app understands.
    fn check_versions(&self, page: &RemotePage) -> Result<(), ReplicaError> {
        let Some(app) = self.schema_version else {
            return Ok(());
        };
        match page.changes.iter().map(|c| c.schema_version).max() {
            Some(server) if server > app => Err(ReplicaError::UpgradeRequired { app, server }),
            _ => Ok(()),
        }
    }

    /// Applies one pulled page locally in one commit with the new cursor.
    ///
    /// With migrations, in the same commit: a document the page leaves at
    /// an older version than the local data is migrated up (provisional
    /// output, as [`Replica::migrate_local`]); a document the page brings at
    /// the local version or newer (the server migrated it) that holds
    /// provisional output of the replica's own is rebased: its history is
    /// compacted into a snapshot without that output, and its unpushed
    /// local edits are appended again after it, unless one of them builds on
    /// the output (then it stays, and is pushed before that edit).
    fn apply_page(
        &self,
        c: &CollectionName,
        state: &mut SyncState,
        page: RemotePage,
    ) -> Result<Applied, ReplicaError> {
        let mut items = Vec::with_capacity(page.changes.len());
        let mut applied = Applied::default();
        // Per document: its last change in this page (version, kind).
        let mut last: BTreeMap<DocId, (u32, ChangeKind)> = BTreeMap::new();
        for change in page.changes {
            // Our own pushes come back in the log: the replica has them.
            if change.origin.as_ref() == Some(&self.peer) {
                continue;
            }
            let version = change.schema_version.max(INITIAL_SCHEMA_VERSION);
            applied.changes += 1;
            applied.bytes += change.payload.len() as u64;
            match last.get_mut(&change.doc) {
                Some(entry) => *entry = (version, change.kind),
                None => {
                    last.insert(change.doc.clone(), (version, change.kind));
                }
            }
            let payload = if change.kind == ChangeKind::Delete {
                Vec::new()
            } else {
                change.payload
            };
            items.push(Item::new(change.doc, payload, REMOTE, version));
        }
        for doc in last.keys() {
            self.forget(c, doc);
        }
        let moved =
            state.cursor != page.cursor || (page.epoch.is_some() && page.epoch != state.epoch);
        if page.cursor != state.cursor && page.cursor_checksum != 0 {
            state.cursor_checksum = Some(page.cursor_checksum);
        }
        state.cursor = page.cursor;
        state.epoch = page.epoch.or(state.epoch);
        if items.is_empty() {
            // Nothing to apply: store the cursor only if it moved (an
            // in-sync replica writes nothing locally).
            if moved {
                self.commit_with_state(c, state, Vec::new())?;
            }
            return Ok(applied);
        }
        let mut write = append_write(&*self.storage, c, items)?;
        if !self.migrations.is_empty() {
            for (doc, (version, kind)) in last {
                if kind == ChangeKind::Delete {
                    state.provisional.remove(doc.as_str());
                } else if version < state.local_version {
                    self.migrate_pulled(c, &doc, version, state, &mut write)?;
                } else if state.provisional.contains_key(doc.as_str())
                    && self.rebase(c, &doc, state, &mut write)?
                {
                    applied.rebased += 1;
                }
            }
        }
        self.commit_with_state(c, state, vec![write])?;
        Ok(applied)
    }

    /// Migrates `doc`, which the pulled changes in `write` leave at
    /// `version`, up to the local version (as far as the replica may run
    /// steps), appending the outputs to `write` as provisional.
    fn migrate_pulled(
        &self,
        c: &CollectionName,
        doc: &DocId,
        version: u32,
        state: &mut SyncState,
        write: &mut CollectionWrite,
    ) -> Result<(), ReplicaError> {
        let target = self.reach(version).min(state.local_version);
        if target <= version {
            return Ok(());
        }
        let mut changes = self.storage.document_changes(c, doc)?;
        changes.extend(write.append.iter().filter(|ch| &ch.doc == doc).cloned());
        let current = DocState::load(&changes).map_err(|e| invalid(doc, e))?;
        let outputs = self
            .migrations
            .migrate(doc, current.doc(), version, target)?;
        let mut next = write.append.last().map_or(0, |ch| ch.seq);
        for output in outputs {
            next += 1;
            state.provisional.entry(doc.to_string()).or_insert(next);
            write.append.push(change_of(
                next,
                Item::new(doc.clone(), output.update, MIGRATION, output.to),
            ));
        }
        Ok(())
    }

    /// Rebases `doc` onto the server's migration of it (see
    /// [`Replica::apply_page`]). Returns whether it did.
    fn rebase(
        &self,
        c: &CollectionName,
        doc: &DocId,
        state: &mut SyncState,
        write: &mut CollectionWrite,
    ) -> Result<bool, ReplicaError> {
        let first = state.provisional.get(doc.as_str()).copied().unwrap_or(0);
        let origin_is = |change: &Change, origin: &str| {
            change.origin.as_ref().map(PeerId::as_str) == Some(origin)
        };
        let mut kept = Vec::new();
        let mut unpushed = Vec::new();
        for change in self.storage.document_changes(c, doc)? {
            if origin_is(&change, MIGRATION) && change.seq >= first {
                continue;
            }
            if origin_is(&change, LOCAL) && change.seq > state.pushed_through {
                unpushed.push(change);
            } else {
                kept.push(change);
            }
        }
        let pulled: Vec<Change> = write
            .append
            .iter()
            .filter(|ch| &ch.doc == doc)
            .cloned()
            .collect();
        let Some(through) = pulled.last().map(|ch| (ch.seq, ch.schema_version)) else {
            return Ok(false);
        };
        kept.extend(pulled);
        let base = DocState::load(&kept).map_err(|e| invalid(doc, e))?;
        if base.has_pending() {
            return Ok(false);
        }
        let mut with_edits = DocState::load(&kept).map_err(|e| invalid(doc, e))?;
        for change in &unpushed {
            with_edits
                .load_change(change)
                .map_err(|e| invalid(doc, e))?;
        }
        if with_edits.has_pending() {
            // An unpushed edit builds on the replica's own output: keep it,
            // the push sends it first.
            return Ok(false);
        }
        write.compact.push(Compaction {
            doc: doc.clone(),
            through: through.0,
            snapshot: Some(base.encode_state()),
            schema_version: through.1,
        });
        let next = write.append.last().map_or(0, |ch| ch.seq) + 1;
        for (seq, change) in (next..).zip(unpushed) {
            write.append.push(Change {
                seq,
                log_checksum: 0,
                ..change
            });
        }
        state.provisional.remove(doc.as_str());
        Ok(true)
    }

    /// After a reset: take the server's state of every document, then push
    /// back every local document's state the server lacks.
    async fn recover(
        &self,
        c: &CollectionName,
        mut state: SyncState,
        reason: ResetReason,
        mut requests: u64,
    ) -> Result<SyncReport, ReplicaError> {
        let docs: Vec<DocId> = self
            .storage
            .documents(c)?
            .into_iter()
            .map(|d| d.doc)
            .collect();
        let mut svs = HashMap::new();
        for doc in &docs {
            let local = self.local_state(c, doc)?;
            let holder = Doc::new();
            apply_bytes(&holder, &local, doc.as_str())?;
            svs.insert(
                doc.to_string(),
                holder.transact().state_vector().encode_v1(),
            );
        }
        requests += 1;
        let recovery = self.transport.recover_collection(c.as_str(), svs).await?;
        let version = recovery.schema_version.max(INITIAL_SCHEMA_VERSION);
        let items: Vec<Item> = recovery
            .documents
            .iter()
            .map(|(d, u)| Item::new(d.clone(), u.clone(), REMOTE, version))
            .chain(
                recovery
                    .deleted
                    .iter()
                    .map(|d| Item::new(d.clone(), Vec::new(), REMOTE, version)),
            )
            .collect();
        let pulled = items.len() as u64;
        if let Ok(mut editing) = self.editing.lock() {
            editing.clear();
        }
        state.epoch = recovery.epoch;
        state.cursor = recovery.cursor;
        // Not known for a recovery's cursor: the next page brings it.
        state.cursor_checksum = None;
        if items.is_empty() {
            self.commit_with_state(c, &state, Vec::new())?;
        } else {
            let mut write = append_write(&*self.storage, c, items)?;
            // Verdant's reset case, client side: the server's state is at an
            // older version than the local data; migrate it before the app
            // sees it.
            if !self.migrations.is_empty() && version < state.local_version {
                for (doc, _) in &recovery.documents {
                    self.migrate_pulled(c, doc, version, &mut state, &mut write)?;
                }
            }
            self.commit_with_state(c, &state, vec![write])?;
        }
        // Push back what the server lacks of every local document.
        let mut pushed = 0u64;
        let mut head = recovery.cursor;
        for doc in self.storage.documents(c)?.into_iter().map(|d| d.doc) {
            requests += 1;
            let server_sv = match self
                .transport
                .state_vector(c.as_str(), doc.as_str())
                .await?
            {
                Some(bytes) => {
                    StateVector::decode_v1(&bytes).map_err(|e| ReplicaError::InvalidUpdate {
                        doc: doc.to_string(),
                        reason: e.to_string(),
                    })?
                }
                None => StateVector::default(),
            };
            let local = self.local_state(c, &doc)?;
            let holder = Doc::new();
            apply_bytes(&holder, &local, doc.as_str())?;
            let diff = holder.transact().encode_state_as_update_v1(&server_sv);
            requests += 1;
            let outcome = self
                .transport
                .push_batch(
                    c.as_str(),
                    vec![(doc.to_string(), diff)],
                    self.peer.as_str(),
                    self.schema_version,
                )
                .await?;
            pushed += outcome.seqs.iter().filter(|s| s.is_some()).count() as u64;
            head = outcome.head;
        }
        if state.epoch.is_none() && pushed > 0 {
            requests += 1;
            state.epoch = self.transport.changes(c.as_str(), 0, 0, None).await?.epoch;
        }
        // Everything local is on the server now: the outbox is empty.
        state.pushed_through = self.storage.collection(c)?.map_or(0, |m| m.head);
        self.commit_with_state(c, &state, Vec::new())?;
        Ok(SyncReport {
            outcome: SyncOutcome::Reset {
                reason,
                pulled,
                pushed,
            },
            follow_up_needed: pushed > 0,
            cursor: state.cursor,
            head,
            epoch: state.epoch,
            requests,
            rebased: 0,
        })
    }
}

impl<T: Transport + 'static> Replica<T> {
    /// A live session on `collection`: syncs once, then keeps a stream
    /// open, applies remote changes as they come (each with its cursor in
    /// one local commit) and pushes local edits as they are made. End it
    /// with [`Follow::stop`], which says goodbye before hanging up.
    ///
    /// Runs as a task on the current tokio runtime. Errors at start:
    /// `InvalidName`, `Local`, `Transport`; later ones end the session and
    /// are returned by `stop`.
    pub async fn follow(self: &Arc<Self>, collection: &str) -> Result<Follow, ReplicaError> {
        let c = name(collection)?;
        self.sync(collection).await?;
        let state = self.sync_state(&c)?;
        let mut stream = self
            .transport
            .subscribe(collection, state.cursor, state.epoch)
            .await?;
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let replica = Arc::clone(self);
        let task = tokio::spawn(async move {
            let mut report = FollowReport::default();
            // Edits made before the session started are pushed first.
            let (pushed, _) = replica.push_pending(&c).await?;
            report.pushed += pushed;
            loop {
                tokio::select! {
                    event = stream.recv() => match event {
                        Some(Ok(RemoteEvent::Change(change))) => {
                            if replica.apply_streamed(&c, change).await? {
                                report.received += 1;
                            }
                        }
                        Some(Ok(RemoteEvent::UpToDate { .. })) => {}
                        Some(Err(err)) => return Err(err.into()),
                        None => {
                            return Err(ReplicaError::Transport(TransportError::Unavailable(
                                "the live stream ended".to_owned(),
                            )))
                        }
                    },
                    _ = replica.local_edits.notified() => {
                        let (pushed, _) = replica.push_pending(&c).await?;
                        report.pushed += pushed;
                    }
                    _ = &mut stop_rx => break,
                }
            }
            // Goodbye: everything local is sent, then everything up to the
            // head after that is received, then the stream closes.
            let (pushed, head) = replica.push_pending(&c).await?;
            report.pushed += pushed;
            let target = match head {
                Some(head) => head,
                None => {
                    let state = replica.sync_state(&c)?;
                    replica
                        .transport
                        .changes(c.as_str(), state.cursor, 0, state.epoch)
                        .await?
                        .head
                }
            };
            let deadline =
                tokio::time::Instant::now() + std::time::Duration::from_millis(GOODBYE_TIMEOUT_MS);
            loop {
                if replica.sync_state(&c)?.cursor >= target {
                    break;
                }
                match tokio::time::timeout_at(deadline, stream.recv()).await {
                    Ok(Some(Ok(RemoteEvent::Change(change)))) => {
                        if replica.apply_streamed(&c, change).await? {
                            report.received += 1;
                        }
                    }
                    Ok(Some(Ok(RemoteEvent::UpToDate { head }))) => {
                        if head >= target {
                            break;
                        }
                    }
                    Ok(Some(Err(err))) => return Err(err.into()),
                    Ok(None) | Err(_) => {
                        return Err(ReplicaError::Transport(TransportError::Unavailable(
                            format!(
                            "the goodbye did not complete: the server did not confirm seq {target}"
                        ),
                        )))
                    }
                }
            }
            report.cursor = replica.sync_state(&c)?.cursor;
            drop(stream);
            Ok(report)
        });
        Ok(Follow {
            stop: stop_tx,
            task,
        })
    }
}

fn getrandom_fill(bytes: &mut [u8]) -> Result<(), ReplicaError> {
    Epoch::random()
        .map(|epoch| bytes.copy_from_slice(&epoch.0[..bytes.len()]))
        .map_err(|e| {
            ReplicaError::Local(StorageError::backend("replica", "choosing a client id", e))
        })
}

fn apply_bytes(doc: &Doc, update: &[u8], name: &str) -> Result<(), ReplicaError> {
    let invalid = |reason: String| ReplicaError::InvalidUpdate {
        doc: name.to_owned(),
        reason,
    };
    let update = Update::decode_v1(update).map_err(|e| invalid(e.to_string()))?;
    doc.transact_mut()
        .apply_update(update)
        .map_err(|e| invalid(e.to_string()))
}

/// The base of a write to `c`: its stored epoch and head, or a new
/// collection; and the head the write continues.
fn base_of(storage: &dyn Storage, c: &CollectionName) -> Result<(WriteBase, Seq), ReplicaError> {
    Ok(match storage.collection(c)? {
        Some(meta) => (
            WriteBase::Existing {
                epoch: meta.epoch,
                head: meta.head,
            },
            meta.head,
        ),
        None => (
            WriteBase::Create {
                epoch: local_epoch()?,
                schema_version: 1,
            },
            0,
        ),
    })
}

/// One change to append to a local collection.
struct Item {
    doc: DocId,
    /// Yjs v1; empty for a tombstone.
    payload: Vec<u8>,
    /// `LOCAL`, `REMOTE` or `MIGRATION`.
    origin: &'static str,
    /// The schema version it was written at.
    version: u32,
}

impl Item {
    fn new(doc: DocId, payload: Vec<u8>, origin: &'static str, version: u32) -> Self {
        Self {
            doc,
            payload,
            origin,
            version,
        }
    }
}

/// An item of the outbox.
struct Pending {
    seq: Seq,
    doc: DocId,
    update: Vec<u8>,
    /// The version the push declares.
    version: u32,
    /// The replica's own migration output (not a local edit).
    migration: bool,
}

impl Pending {
    fn of(change: Change, migration: bool) -> Self {
        Self {
            seq: change.seq,
            doc: change.doc,
            update: change.payload,
            version: change.schema_version,
            migration,
        }
    }
}

/// Merges runs of outbox updates of one document for a push (see
/// `Replica::push_outbox`).
///
/// Why not `yrs::merge_updates_v1`: it costs about three replays of the
/// updates. Here the document's confirmed state (its log without the
/// outbox) is loaded once, each run is applied to it, and what the run
/// added is encoded as the diff against the state vector before it: one
/// replay in all. A run that leaves something pending (it builds on what
/// the confirmed state lacks) cannot be encoded that way without losing
/// it; then, and for every later run of that document, `merge_updates_v1`.
#[derive(Default)]
struct Merger {
    /// The document being merged and its state so far (`None`: it fell
    /// back to `merge_updates_v1`).
    current: Option<(DocId, Option<DocState>)>,
}

impl Merger {
    fn merge<T: Transport>(
        &mut self,
        replica: &Replica<T>,
        c: &CollectionName,
        outbox: &[Pending],
        group: &[Pending],
    ) -> Result<Vec<u8>, ReplicaError> {
        let doc = &group[0].doc;
        if self.current.as_ref().map(|(d, _)| d) != Some(doc) {
            let in_outbox: BTreeSet<Seq> = outbox
                .iter()
                .filter(|p| &p.doc == doc)
                .map(|p| p.seq)
                .collect();
            let confirmed: Vec<Change> = replica
                .storage
                .document_changes(c, doc)?
                .into_iter()
                .filter(|ch| !in_outbox.contains(&ch.seq))
                .collect();
            let state = DocState::load(&confirmed)
                .ok()
                .filter(|state| !state.has_pending());
            self.current = Some((doc.clone(), state));
        }
        let fallback = || {
            yrs::merge_updates_v1(group.iter().map(|p| p.update.as_slice()))
                .map_err(|e| invalid(doc, e))
        };
        let Some((_, Some(state))) = self.current.as_mut() else {
            return fallback();
        };
        let before = state.state_vector();
        for item in group {
            let change = Change {
                seq: item.seq,
                doc: doc.clone(),
                kind: ChangeKind::Update,
                payload: item.update.clone(),
                schema_version: item.version,
                origin: None,
                log_checksum: 0,
            };
            if state.load_change(&change).is_err() {
                self.current = Some((doc.clone(), None));
                return fallback();
            }
        }
        if state.has_pending() {
            self.current = Some((doc.clone(), None));
            return fallback();
        }
        Ok(state.encode_diff(&before))
    }
}

/// What applying one pulled page did.
#[derive(Default)]
struct Applied {
    /// Changes by others applied.
    changes: u64,
    /// Their payload bytes.
    bytes: u64,
    /// Documents rebased onto the server's migration.
    rebased: u64,
}

fn invalid(doc: &DocId, err: impl std::fmt::Display) -> ReplicaError {
    ReplicaError::InvalidUpdate {
        doc: doc.to_string(),
        reason: err.to_string(),
    }
}

/// The stored change of `item` at `seq`.
fn change_of(seq: Seq, item: Item) -> Change {
    let kind = if item.payload.is_empty() {
        ChangeKind::Delete
    } else {
        ChangeKind::Update
    };
    Change {
        seq,
        doc: item.doc,
        kind,
        payload: item.payload,
        schema_version: item.version,
        origin: PeerId::new(item.origin).ok(),
        log_checksum: 0,
    }
}

/// The write appending `items` to the local collection `c`.
fn append_write(
    storage: &dyn Storage,
    c: &CollectionName,
    items: Vec<Item>,
) -> Result<CollectionWrite, ReplicaError> {
    let (base, head) = base_of(storage, c)?;
    let append = items
        .into_iter()
        .zip(head + 1..)
        .map(|(item, seq)| change_of(seq, item))
        .collect();
    Ok(CollectionWrite {
        collection: c.clone(),
        base,
        append,
        compact: Vec::new(),
        peers: Vec::new(),
        raise_schema_version: None,
        append_mode: Default::default(),
    })
}

/// Appends `items` to the local collection `c` in one commit.
fn append(storage: &dyn Storage, c: &CollectionName, items: Vec<Item>) -> Result<(), ReplicaError> {
    let write = append_write(storage, c, items)?;
    storage.commit(&WriteBatch {
        writes: vec![write],
    })?;
    Ok(())
}

fn local_epoch() -> Result<Epoch, ReplicaError> {
    Epoch::random()
        .map_err(|e| ReplicaError::Local(StorageError::backend("replica", "choosing an epoch", e)))
}

/// The state document `doc` of the state collection, loaded.
fn load_state_doc(storage: &dyn Storage, doc: &str) -> Result<Doc, ReplicaError> {
    let holder = Doc::new();
    let id = doc_id(doc)?;
    if let Some(loaded) = load_document(storage, &state_collection()?, &id)? {
        apply_bytes(&holder, &loaded.state.encode_state(), doc)?;
    }
    Ok(holder)
}

fn read_any(doc: &Doc, key: &str) -> Option<Any> {
    let txn = doc.transact();
    let map = txn.get_map("sync")?;
    map.get(&txn, key).map(|v| v.to_json(&txn))
}

/// Numbers are stored as decimal strings: exact for every u64, whatever a
/// JSON-minded reader does with numbers.
fn read_u64(doc: &Doc, key: &str) -> Option<u64> {
    read_string(doc, key)?.parse().ok()
}

fn read_string(doc: &Doc, key: &str) -> Option<String> {
    match read_any(doc, key)? {
        Any::String(s) => Some(s.to_string()),
        _ => None,
    }
}

/// An update of a state document setting `values` (numbers are written as
/// decimal strings), applied to `doc` as well.
fn state_update(doc: &Doc, values: &[(&str, String)]) -> Vec<u8> {
    let mut txn = doc.transact_mut();
    let map = txn.get_or_insert_map("sync");
    for (key, value) in values {
        map.insert(&mut txn, *key, value.clone());
    }
    txn.encode_update_v1()
}

fn state_collection_write(
    storage: &dyn Storage,
    doc: &str,
    update: Vec<u8>,
) -> Result<CollectionWrite, ReplicaError> {
    let sc = state_collection()?;
    let (base, head) = base_of(storage, &sc)?;
    Ok(CollectionWrite {
        collection: sc,
        base,
        append: vec![Change {
            seq: head + 1,
            doc: doc_id(doc)?,
            kind: ChangeKind::Update,
            payload: update,
            schema_version: 1,
            origin: None,
            log_checksum: 0,
        }],
        compact: Vec::new(),
        peers: Vec::new(),
        raise_schema_version: None,
        append_mode: Default::default(),
    })
}

fn commit_state(
    storage: &dyn Storage,
    doc: &str,
    update: Vec<u8>,
    extra: Vec<CollectionWrite>,
) -> Result<(), ReplicaError> {
    let mut writes = extra;
    writes.push(state_collection_write(storage, doc, update)?);
    storage.commit(&WriteBatch { writes })?;
    Ok(())
}
