//! seqsync-adapters: the storage backends.
//!
//! - [`SqliteStorage`]: SQLite (rusqlite, bundled) in WAL mode. The default.
//! - [`RedbStorage`]: redb, a pure-Rust embedded B-tree store.
//! - [`MemoryStorage`]: in memory, for tests; also the plainest statement of
//!   the storage model.
//! - [`PostgresStorage`]: PostgreSQL, shared by several engine nodes, each
//!   collection written by the node holding its lease.
//! - [`FaultyStorage`]: wraps any of them to inject failures in tests.
//!
//! All implement [`seqsync_engine::Storage`] and pass the same conformance
//! suite (`adapters/tests/conformance.rs`). [`open_storage`] picks one from
//! the config.
//!
//! **Adapters depend on the engine crate, never on the runtime.**

#![deny(missing_docs)]

mod codec;
mod dir_lock;
mod fault;
mod memory;
mod postgres;
mod redb;
mod sqlite;

use std::sync::Arc;

use seqsync_engine::{BackendKind, Storage, StorageConfig, StorageError};

pub use crate::dir_lock::{DirLock, LOCK_FILE_NAME};
pub use crate::fault::{Fault, FaultMode, FaultTarget, FaultyStorage};
pub use crate::memory::MemoryStorage;
pub use crate::postgres::{PostgresStorage, POSTGRES_SCHEMA_VERSION};
pub use crate::redb::{RedbStorage, REDB_FILE_NAME};
pub use crate::sqlite::{SqliteStorage, SQLITE_FILE_NAME};

/// Opens the backend `config` names, creating its directory and files if
/// needed.
///
/// Blocking (never call it from an async thread: the postgres backend
/// refuses). Errors: see [`SqliteStorage::open`], [`RedbStorage::open`] and
/// [`PostgresStorage::open`]; the memory backend never fails.
pub fn open_storage(config: &StorageConfig) -> Result<Arc<dyn Storage>, StorageError> {
    Ok(match config.backend {
        BackendKind::Sqlite => Arc::new(SqliteStorage::open(&config.path, config.durability)?),
        BackendKind::Redb => Arc::new(RedbStorage::open(&config.path, config.durability)?),
        BackendKind::Memory => Arc::new(MemoryStorage::new(config.durability)),
        BackendKind::Postgres => Arc::new(PostgresStorage::open(config)?),
    })
}
