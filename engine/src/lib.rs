//! seqsync-engine: the runtime-free core of seqsync.
//!
//! This crate holds what every other part agrees on: validated names
//! ([`CollectionName`], [`DocId`], [`PeerId`]), the log's vocabulary
//! ([`Change`], [`Seq`], [`Epoch`], [`CollectionMeta`], [`PeerRecord`]), typed
//! errors, the [`EngineConfig`], and the [`Storage`] trait that backends
//! implement.
//!
//! **This crate depends on neither actix nor tokio.** Everything here is plain
//! data and synchronous logic, so it can be tested without a runtime and used
//! by any runtime, including a future client replica.

#![deny(missing_docs)]

pub mod bundle;
mod change;
mod compaction;
mod config;
mod digest;
mod error;
mod json;
mod load;
mod migrate;
pub mod migration;
mod name;
mod restore;
mod storage;
mod structure;
mod yjs;

pub use change::{
    now_ms, Change, ChangeKind, CollectionMeta, DocumentInfo, Epoch, PeerRecord, Pin, Seq,
};
pub use compaction::{plan_compaction, CompactionPlan};
pub use config::file::{ConfigFile, ENV_PREFIX};
pub use config::{
    file as config_file, redact_url, ActorsConfig, BackendKind, CompactionConfig, Durability,
    EngineConfig, LimitsConfig, SchemaConfig, StorageConfig,
};
pub use digest::{
    change_checksum, collection_digest, digest_of_update, document_digest_at, hex,
    next_log_checksum, verify_log, ChainBreak, CollectionDigest, DigestCache, DocumentDigest,
    DocumentDigestAt, LogChain, LogVerified,
};
pub use error::{
    AckError, ConfigError, InvalidName, NameKind, OpenError, ReadError, RestoreError, StorageError,
    VerifyLogError, WriteError,
};
pub use json::{document_json, DocumentJson, DocumentJsonError, RootKind};
pub use load::{load_document, load_document_through, LoadedDocument};
pub use migrate::{migrate_collection, CollectionMigration, MigrationProgress};
pub use migration::{
    MigrationError, Migrations, StepError, StepOutput, INITIAL_SCHEMA_VERSION,
    MIGRATION_CLIENT_IDS, MIGRATION_ORIGIN,
};
pub use name::{
    check_author, check_version_name, CollectionName, DocId, PeerId, MAX_COLLECTION_NAME_BYTES,
    MAX_DOC_ID_BYTES, MAX_PEER_ID_BYTES, MAX_VERSION_NAME_BYTES,
};
pub use restore::{random_client_id, restore_update};
pub use storage::{
    check_batch_shape, declared_blocking_thread, is_covered, on_blocking_thread,
    plan_collection_write, snapshot_change, AppendMode, ChangesPage, CollectionWrite,
    CommitWatcher, Compaction, PlannedWrite, Storage, WriteBase, WriteBatch,
};
pub use yjs::{
    decode_pushed_update, decode_state_vector, decode_update, new_doc, Applied, ApplyError,
    DocState, UpdateDecodeError,
};
