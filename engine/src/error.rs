//! Typed errors, one enum per family of operations.
//!
//! Following redb: every enum is `#[non_exhaustive]` so variants can be added
//! without a breaking change, and every message says what to do about it. All
//! errors are `Clone` because the runtime answers many callers (a whole commit
//! group) with the same failure.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Which kind of name failed validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameKind {
    /// A collection name.
    Collection,
    /// A document id.
    Document,
    /// A peer id.
    Peer,
    /// A change's author (a signed token's subject).
    Author,
    /// A pinned version's name.
    Version,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Collection => "collection name",
            NameKind::Document => "document id",
            NameKind::Peer => "peer id",
            NameKind::Author => "author",
            NameKind::Version => "version name",
        })
    }
}

/// A collection name, document id or peer id that breaks the rules of docs/DESIGN.md.
/// Nothing is stored when this is returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidName {
    /// The name is the empty string.
    #[error("{kind} is empty; give at least one character")]
    Empty {
        /// Which name.
        kind: NameKind,
    },
    /// The name is longer than allowed.
    #[error("{kind} is {len_bytes} bytes long; the limit is {max_bytes} bytes")]
    TooLong {
        /// Which name.
        kind: NameKind,
        /// Its length in bytes.
        len_bytes: usize,
        /// The limit in bytes.
        max_bytes: usize,
    },
    /// The name holds a character that is not allowed.
    #[error(
        "{kind} contains {ch:?} at byte {at}; collection names allow only A-Z a-z 0-9 _ . -, \
         document and peer ids allow any character but control characters"
    )]
    ForbiddenChar {
        /// Which name.
        kind: NameKind,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// A collection name starting with `.` (which also rules out `.` and `..`).
    #[error("collection name starts with '.'; start it with a letter, digit, '_' or '-'")]
    LeadingDot,
}

/// The configuration could not be read or is invalid. Every variant names the
/// key, file or environment variable at fault.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: Arc<std::io::Error>,
    },
    /// The TOML is malformed, has an unknown key or a value of the wrong type.
    #[error("invalid configuration in {origin}: {message}")]
    Parse {
        /// The file, or `environment` for a `SEQSYNC_*` override.
        origin: String,
        /// The parser's message, which names the key.
        message: String,
    },
    /// A `SEQSYNC_*` environment variable that matches no config key.
    #[error(
        "unknown environment variable {var}: expected SEQSYNC_<SECTION>_<KEY> for a key of \
         the config file, e.g. SEQSYNC_STORAGE_BACKEND"
    )]
    UnknownEnv {
        /// The variable's name.
        var: String,
    },
    /// A key whose value is out of range or unusable.
    #[error("invalid value for {key}: {message}")]
    Invalid {
        /// The key as `section.key`.
        key: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// A storage backend failed or refused an operation.
///
/// A failed [`crate::Storage::commit`] has written nothing: every variant
/// leaves storage as it was before the call.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// Another engine (this process or another) has the store open.
    #[error(
        "storage at {path} is already open by another engine; stop the other engine or \
         point storage.path elsewhere"
    )]
    AlreadyOpen {
        /// The storage directory.
        path: PathBuf,
    },
    /// The path holds something that is not a seqsync store of this backend.
    #[error(
        "{path} is not a seqsync {backend} store ({detail}); point storage.path at an empty \
         directory or at a seqsync data directory"
    )]
    NotAStore {
        /// Backend name.
        backend: &'static str,
        /// The offending file or directory.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// The store was written by a newer format this build cannot read.
    #[error("{path} uses seqsync {backend} format {found}; this build reads format {supported}")]
    UnsupportedFormat {
        /// Backend name.
        backend: &'static str,
        /// The store file.
        path: PathBuf,
        /// Format version found in the file.
        found: u64,
        /// Format version this build reads.
        supported: u64,
    },
    /// Data read back does not decode; the file is damaged.
    #[error("{backend} store is corrupt: {detail}; restore from a backup")]
    Corrupt {
        /// Backend name.
        backend: &'static str,
        /// What failed to decode.
        detail: String,
    },
    /// The stored state of a collection is not what the write was based on
    /// (its epoch or head moved): another writer got there first.
    #[error(
        "write conflict on collection {collection}: {detail}; reload the collection and retry"
    )]
    Conflict {
        /// The collection.
        collection: String,
        /// Expected versus found.
        detail: String,
    },
    /// Another node holds the collection's write lease (a shared database
    /// backend): this node may not write it now. Nothing was written; send
    /// the write to `owner`, or retry after `retry_after_ms` (when the
    /// lease expires unless renewed).
    #[error("collection {collection} is owned by node {owner}: send the write there, or retry in {retry_after_ms} ms")]
    NotOwner {
        /// The collection.
        collection: String,
        /// The node holding the lease (its advertised URL when it has one).
        owner: String,
        /// Until the lease expires, at most.
        retry_after_ms: u64,
    },
    /// The config names a backend this build left out (`seqsync-adapters`
    /// is built with one cargo feature per backend). Nothing was opened.
    #[error(
        "this build has no {backend} storage backend: build seqsync-adapters with its \
         `{backend}` feature, or choose another storage.backend"
    )]
    NotBuilt {
        /// The backend's name in the config.
        backend: &'static str,
    },
    /// The write breaks an invariant of the log (gap in seqs, snapshot without a
    /// change to replace, ...). A bug in the caller; nothing was written.
    #[error("invalid write refused by storage: {0}")]
    InvalidWrite(String),
    /// The backend's own error (I/O, database engine).
    #[error("{backend} failed while {during}: {message}")]
    Backend {
        /// Backend name.
        backend: &'static str,
        /// What the backend was doing.
        during: &'static str,
        /// The backend's message.
        message: String,
    },
    /// A fault injected on purpose by a test wrapper.
    #[error("injected fault: {0}")]
    Injected(String),
}

impl StorageError {
    /// Shorthand for [`StorageError::Backend`] from any displayable error.
    pub fn backend(backend: &'static str, during: &'static str, err: impl fmt::Display) -> Self {
        StorageError::Backend {
            backend,
            during,
            message: err.to_string(),
        }
    }

    /// Whether the store refused this write for a reason of its own
    /// collection (a moved base, another node's lease, a broken invariant),
    /// as opposed to failing as a whole. A refused write stored nothing, and
    /// the other collections of its group may still commit
    /// ([`crate::Storage::commit_each`]).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            StorageError::Conflict { .. }
                | StorageError::NotOwner { .. }
                | StorageError::InvalidWrite(_)
        )
    }

    /// Short machine-readable kind, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            StorageError::AlreadyOpen { .. } => "already_open",
            StorageError::NotAStore { .. } => "not_a_store",
            StorageError::UnsupportedFormat { .. } => "unsupported_format",
            StorageError::Corrupt { .. } => "corrupt",
            StorageError::Conflict { .. } => "conflict",
            StorageError::NotOwner { .. } => "not_owner",
            StorageError::NotBuilt { .. } => "not_built",
            StorageError::InvalidWrite(_) => "invalid_write",
            StorageError::Backend { .. } => "backend",
            StorageError::Injected(_) => "injected",
        }
    }
}

/// Errors of restoring a document's earlier version (`Engine::restore`).
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// Reading the version or the current document failed (not found,
    /// deleted, compacted past the version, storage).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Writing the restoring edit failed, as a push fails.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Errors of the write operations: push, push_batch, delete.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// A collection name, document id or peer id is invalid.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// The bytes are not a Yjs v1 update.
    #[error("update for document {doc} refused: {reason}")]
    InvalidUpdate {
        /// The document the update was for.
        doc: String,
        /// Why it was refused.
        reason: crate::yjs::UpdateDecodeError,
    },
    /// The update is larger than `limits.max_update_bytes`.
    #[error("update of {len_bytes} bytes exceeds limits.max_update_bytes = {max_bytes}; split it")]
    TooLarge {
        /// Its size.
        len_bytes: u64,
        /// The limit.
        max_bytes: u64,
    },
    /// A batch with more updates than `limits.max_batch_updates`.
    #[error("batch of {count} updates exceeds limits.max_batch_updates = {max}; split it")]
    BatchTooLarge {
        /// Updates in the batch.
        count: u64,
        /// The limit.
        max: u64,
    },
    /// A batch without updates.
    #[error("the batch holds no update")]
    EmptyBatch,
    /// The document has a tombstone; it takes no more updates.
    #[error("document {doc} is deleted; write to a new document id")]
    DocumentDeleted {
        /// The document.
        doc: String,
    },
    /// The client's schema version is older than the oldest the server
    /// still upgrades on ingest (`schema.min_supported_version`).
    #[error("client schema version {client} is older than {min_supported}, the oldest this server upgrades (the collection is at {collection}); upgrade the client")]
    SchemaTooOld {
        /// The client's version.
        client: u32,
        /// The collection's version.
        collection: u32,
        /// The oldest client version the server still upgrades on ingest.
        min_supported: u32,
    },
    /// The client's schema version is newer than the collection's.
    #[error("client schema version {client} is newer than the collection's {collection}; upgrade the server")]
    SchemaTooNew {
        /// The client's version.
        client: u32,
        /// The collection's version.
        collection: u32,
    },
    /// The update writes blocks under a client id reserved for migration
    /// steps, and the push does not declare the collection's current schema
    /// version. A client whose own id is in that range must pick another.
    #[error("the update for document {doc} writes blocks under client id {client}, reserved for migrations (ids {reserved_start}..{reserved_end}); use another client id, or declare schema version {collection} if you push the output of seqsync migrations")]
    ReservedClientId {
        /// The document.
        doc: String,
        /// The reserved client id found.
        client: u64,
        /// The collection's schema version.
        collection: u32,
        /// First reserved id.
        reserved_start: u64,
        /// One past the last reserved id.
        reserved_end: u64,
    },
    /// Upgrading an older client's push failed in a migration step; nothing
    /// of the push is stored.
    #[error("upgrading the push for document {doc} from schema version {from} failed: {reason}")]
    MigrationFailed {
        /// The document.
        doc: String,
        /// The client's version.
        from: u32,
        /// What the step or yrs said.
        reason: String,
    },
    /// The commit queue is full; retry after a short pause.
    #[error("the engine is overloaded (commit queue full); retry shortly")]
    Overloaded,
    /// The store failed; nothing of the write was acknowledged. A retry is
    /// safe: if the write did land, the retry is a no-op.
    #[error("storage failed, the write is not acknowledged: {0}")]
    Storage(#[from] StorageError),
    /// A bug or panic inside the engine; the collection was reloaded from
    /// storage. A retry is safe.
    #[error("internal error, the write is not acknowledged: {0}")]
    Internal(String),
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// Errors of the read operations: changes, subscribe, document, recover,
/// recover_collection, peers.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// A collection name or document id is invalid.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// The state vector sent for a recovery does not decode.
    #[error("invalid state vector: {0}")]
    InvalidStateVector(crate::yjs::UpdateDecodeError),
    /// The document has never been written.
    #[error("document {doc} does not exist")]
    DocumentNotFound {
        /// The document.
        doc: String,
    },
    /// The collection has never been written.
    #[error("collection {collection} does not exist")]
    CollectionNotFound {
        /// The collection.
        collection: String,
    },
    /// The document has a tombstone.
    #[error("document {doc} is deleted")]
    DocumentDeleted {
        /// The document.
        doc: String,
    },
    /// The client's cursor belongs to another epoch, or lies beyond head (the
    /// server lost or replaced history). Recover the collection from scratch
    /// (`recover_collection`) and push your own state back: nothing you have
    /// is lost.
    #[error("cursor not valid for this collection (epoch {epoch:?}, head {head}); recover and push your state back")]
    Reset {
        /// The collection's current epoch (`None`: it does not exist).
        epoch: Option<crate::change::Epoch>,
        /// The collection's current head.
        head: u64,
    },
    /// The store failed.
    #[error("storage failed: {0}")]
    Storage(#[from] StorageError),
    /// The document's stored history encodes into bytes no Yjs reader can
    /// decode (fuzz finding F2: legacy JSON content stored before pushes
    /// were checked), so it is refused rather than served broken. Its log
    /// is intact: export it, or delete the document and push it again from
    /// a client that has it.
    #[error("document {doc} cannot be served readably: {reason}; export it or delete it and push it again from a client")]
    DocumentUnreadable {
        /// The document.
        doc: String,
        /// Why its encoding does not decode.
        reason: String,
    },
    /// A bug or panic inside the engine.
    #[error("internal error: {0}")]
    Internal(String),
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The document as of the seq asked for is no longer stored:
    /// compaction folded its history up to `earliest_seq` into a snapshot.
    /// Ask for a seq at or after it (pin a version to keep one readable).
    #[error("document {doc}: its history before seq {earliest_seq} was compacted; ask for a seq at or after {earliest_seq}")]
    HistoryCompacted {
        /// The document.
        doc: String,
        /// The earliest seq it can be read at.
        earliest_seq: u64,
    },
    /// The document has as many named versions as allowed (each keeps a
    /// full snapshot through compaction); delete one first.
    #[error("document {doc} has {max} named versions already; delete one to pin another")]
    TooManyVersions {
        /// The document.
        doc: String,
        /// The limit.
        max: usize,
    },
}

/// Errors of `ack`.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// A collection name or peer id is invalid.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// The peer acknowledged a seq the collection has not reached.
    #[error("ack of seq {seq} is beyond the collection head {head}")]
    AckBeyondHead {
        /// The acked seq.
        seq: u64,
        /// The collection's head.
        head: u64,
    },
    /// The store failed; the ack is not recorded.
    #[error("storage failed, the ack is not recorded: {0}")]
    Storage(#[from] StorageError),
    /// A bug or panic inside the engine.
    #[error("internal error: {0}")]
    Internal(String),
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// Errors of [`crate::verify_log`]: a stored log that is not what was
/// committed.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyLogError {
    /// A change carries another log checksum than the chain before it
    /// gives: it was changed after it was committed.
    #[error("collection {collection}, seq {seq}: log checksum {found:016x}, expected {expected:016x}; the stored change differs from what was committed (restore this collection from a backup)")]
    Checksum {
        /// The collection.
        collection: String,
        /// The change's seq.
        seq: u64,
        /// What the chain gives.
        expected: u64,
        /// What the change carries.
        found: u64,
    },
    /// The walk ended elsewhere than the collection's head says.
    #[error("collection {collection}: the log ends at seq {end} with checksum {found:016x}, the collection says head {head} with {expected:016x}")]
    Head {
        /// The collection.
        collection: String,
        /// The last seq the log holds.
        end: u64,
        /// The log checksum there.
        found: u64,
        /// The collection's head.
        head: u64,
        /// Its log checksum.
        expected: u64,
    },
    /// The store failed while reading.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Errors of opening an engine (`EngineBuilder::open`, `seqsync::open`).
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The engine was given neither a store nor a way to open one.
    #[error("no store to open: give the builder one (.storage) or an opener (.storage_opener); seqsync::open does")]
    NoStorage,
    /// The store could not be opened.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The runtime's threads could not be started.
    #[error("cannot start the engine runtime: {0}")]
    Runtime(String),
    /// Two migration steps were registered from the same version.
    #[error("migration step {from} -> {to} is registered twice; register each step once")]
    DuplicateMigrationStep {
        /// The step's input version.
        from: u32,
        /// The step's output version.
        to: u32,
    },
    /// The registered steps skip a version.
    #[error("migration steps reach version {reached} but the next step starts at {next_step_from}; register the step {reached} -> {}", reached + 1)]
    MigrationGap {
        /// The version the steps before the gap reach.
        reached: u32,
        /// The input version of the first step after the gap.
        next_step_from: u32,
    },
    /// A step was registered from a version that cannot exist (0, or the
    /// largest version).
    #[error("migration step from version {from} is invalid: versions start at 1")]
    InvalidMigrationStep {
        /// The step's input version.
        from: u32,
    },
    /// A stored collection is at a newer version than the registered steps
    /// reach: the store was written by a newer release.
    #[error("collection {collection} is stored at schema version {stored}, newer than this engine's {latest}; run the newer release (or register its steps)")]
    StoreNewerThanSchema {
        /// The collection.
        collection: String,
        /// Its stored version.
        stored: u32,
        /// The newest version of the registered steps.
        latest: u32,
    },
    /// A stored collection is older than the first registered step.
    #[error("collection {collection} is stored at schema version {stored}, but the first migration step starts at {oldest_step_from}; register the steps from {stored}")]
    NoMigrationPath {
        /// The collection.
        collection: String,
        /// Its stored version.
        stored: u32,
        /// The input version of the first registered step.
        oldest_step_from: u32,
    },
    /// Migrating a stored collection failed; the store keeps what was
    /// migrated so far and reopening resumes from there.
    #[error("migrating collection {collection} failed: {source}")]
    Migration {
        /// The collection.
        collection: String,
        /// What failed.
        #[source]
        source: crate::migration::MigrationError,
    },
}

impl WriteError {
    /// Stable snake_case code for APIs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            WriteError::InvalidName(_) => "invalid_name",
            WriteError::InvalidUpdate { .. } => "invalid_update",
            WriteError::TooLarge { .. } => "too_large",
            WriteError::BatchTooLarge { .. } => "batch_too_large",
            WriteError::EmptyBatch => "empty_batch",
            WriteError::DocumentDeleted { .. } => "document_deleted",
            WriteError::SchemaTooOld { .. } => "schema_too_old",
            WriteError::SchemaTooNew { .. } => "schema_too_new",
            WriteError::ReservedClientId { .. } => "reserved_client_id",
            WriteError::MigrationFailed { .. } => "migration_failed",
            WriteError::Overloaded => "overloaded",
            WriteError::Storage(_) => "storage",
            WriteError::Internal(_) => "internal",
            WriteError::ShuttingDown => "shutting_down",
        }
    }
}

impl ReadError {
    /// Stable snake_case code for APIs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            ReadError::InvalidName(_) => "invalid_name",
            ReadError::InvalidStateVector(_) => "invalid_state_vector",
            ReadError::DocumentNotFound { .. } => "document_not_found",
            ReadError::CollectionNotFound { .. } => "collection_not_found",
            ReadError::DocumentDeleted { .. } => "document_deleted",
            ReadError::Reset { .. } => "reset",
            ReadError::Storage(_) => "storage",
            ReadError::DocumentUnreadable { .. } => "document_unreadable",
            ReadError::Internal(_) => "internal",
            ReadError::ShuttingDown => "shutting_down",
            ReadError::HistoryCompacted { .. } => "history_compacted",
            ReadError::TooManyVersions { .. } => "too_many_versions",
        }
    }
}

impl AckError {
    /// Stable snake_case code for APIs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            AckError::InvalidName(_) => "invalid_name",
            AckError::AckBeyondHead { .. } => "ack_beyond_head",
            AckError::Storage(_) => "storage",
            AckError::Internal(_) => "internal",
            AckError::ShuttingDown => "shutting_down",
        }
    }
}
