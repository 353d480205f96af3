//! seqsync: an embeddable engine that stores and syncs Yjs documents.
//!
//! This facade re-exports the public API of the workspace's crates:
//! - from `seqsync-actors`: [`Engine`], the handle a host embeds, and what
//!   its operations return;
//! - from `seqsync-engine`: names, changes, errors, [`EngineConfig`] and the
//!   [`Storage`] trait;
//! - from `seqsync-adapters`: the backends and [`open_storage`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = seqsync::open(seqsync::EngineConfig::load(None)?)?;
//! let update: Vec<u8> = vec![/* a Yjs v1 update from a client */];
//! let outcome = engine.push("notes", "doc-1", update, Default::default()).await?;
//! println!("stored at seq {:?}, head {}", outcome.seq, outcome.head);
//! engine.shutdown().await;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub use seqsync_actors::{
    metrics, BatchOutcome, ChangesPage, CollectionRecovery, DeleteOutcome, DocumentState, Engine,
    EngineBuilder, PeerInfo, PushOptions, PushOutcome, Recovery, StreamEvent, Subscription,
};
pub use seqsync_adapters::{
    open_storage, Fault, FaultMode, FaultTarget, FaultyStorage, MemoryStorage, PostgresStorage,
    RedbStorage, SqliteStorage,
};
/// Bundles: export, import, verify, backup and restore (docs/BUNDLES.md).
pub use seqsync_engine::bundle;
/// Schema migrations (docs/SCHEMA.md): [`migration::Migrations`] and what it
/// guarantees.
pub use seqsync_engine::migration;
pub use seqsync_engine::{
    change_checksum, collection_digest, digest_of_update, document_digest_at, AppendMode,
    CollectionDigest, DigestCache, DocumentDigest, DocumentDigestAt,
};
/// The checks a pushed update goes through before yrs integrates it.
pub use seqsync_engine::{decode_pushed_update, decode_update, UpdateDecodeError};
pub use seqsync_engine::{
    migrate_collection, CollectionMigration, MigrationError, MigrationProgress, Migrations,
    StepError, StepOutput, INITIAL_SCHEMA_VERSION, MIGRATION_CLIENT_IDS, MIGRATION_ORIGIN,
};
pub use seqsync_engine::{
    AckError, BackendKind, Change, ChangeKind, CollectionMeta, CollectionName, CollectionWrite,
    Compaction, ConfigError, DocId, Durability, EngineConfig, Epoch, InvalidName, OpenError,
    PeerId, ReadError, SchemaConfig, Seq, Storage, StorageConfig, StorageError, WriteBase,
    WriteBatch, WriteError,
};

/// Opens the backend `config.storage` names (any of this crate's:
/// SQLite, redb, memory, PostgreSQL) and starts the engine.
///
/// Blocking (opens files or connects, starts threads): call it before
/// serving, or from a blocking task; it may also be called from async code
/// (the store is opened on a thread of its own). Errors: [`OpenError`] for an
/// invalid config, a store that cannot be opened (e.g. already open by
/// another engine), or threads that cannot start.
pub fn open(config: EngineConfig) -> Result<Engine, OpenError> {
    builder(config).open()
}

/// [`Engine::builder`] that opens `config.storage` with this crate's
/// backends ([`open_storage`]), to configure further (migrations, a store
/// of the caller's) before it opens.
pub fn builder(config: EngineConfig) -> EngineBuilder {
    Engine::builder(config).storage_opener(open_storage)
}
