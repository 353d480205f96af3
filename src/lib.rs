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
//! let engine = seqsync::Engine::open(seqsync::EngineConfig::load(None)?)?;
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
/// Schema migrations (BRIEF §6): [`migration::Migrations`] and what it
/// guarantees.
pub use seqsync_engine::migration;
pub use seqsync_engine::{
    change_checksum, collection_digest, digest_of_update, document_digest_at, AppendMode,
    CollectionDigest, DigestCache, DocumentDigest, DocumentDigestAt,
};
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
