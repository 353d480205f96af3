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
//! Cargo features, one per backend: `sqlite`, `redb`, `postgres` (all on by
//! default). An app that opens one backend turns the others off
//! (`default-features = false, features = ["sqlite"]`); the memory and
//! faulty wrappers are always built.
//!
//! **Adapters depend on the engine crate, never on the runtime.**

#![deny(missing_docs)]

#[cfg(feature = "redb")]
mod codec;
#[cfg(any(feature = "sqlite", feature = "redb"))]
mod dir_lock;
mod fault;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redb")]
mod redb;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::sync::Arc;

use seqsync_engine::{BackendKind, Storage, StorageConfig, StorageError};

#[cfg(any(feature = "sqlite", feature = "redb"))]
pub use crate::dir_lock::{DirLock, LOCK_FILE_NAME};
pub use crate::fault::{Fault, FaultMode, FaultTarget, FaultyStorage};
pub use crate::memory::MemoryStorage;
#[cfg(feature = "postgres")]
pub use crate::postgres::{PostgresStorage, POSTGRES_SCHEMA_VERSION};
#[cfg(feature = "redb")]
pub use crate::redb::{RedbStorage, REDB_FILE_NAME};
#[cfg(feature = "sqlite")]
pub use crate::sqlite::{SqliteStorage, SQLITE_FILE_NAME};

/// Opens the backend `config` names, creating its directory and files if
/// needed.
///
/// Blocking (never call it from an async thread: the postgres backend
/// refuses). Errors: see `SqliteStorage::open`, `RedbStorage::open` and
/// `PostgresStorage::open`; [`StorageError::NotBuilt`] for a backend whose
/// cargo feature this build left out; the memory backend never fails.
pub fn open_storage(config: &StorageConfig) -> Result<Arc<dyn Storage>, StorageError> {
    Ok(match config.backend {
        #[cfg(feature = "sqlite")]
        BackendKind::Sqlite => Arc::new(SqliteStorage::open(&config.path, config.durability)?),
        #[cfg(feature = "redb")]
        BackendKind::Redb => Arc::new(RedbStorage::open(&config.path, config.durability)?),
        BackendKind::Memory => Arc::new(MemoryStorage::new(config.durability)),
        #[cfg(feature = "postgres")]
        BackendKind::Postgres => Arc::new(PostgresStorage::open(config)?),
        #[allow(unreachable_patterns)] // every backend built: nothing left
        other => {
            return Err(StorageError::NotBuilt {
                backend: other.as_str(),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why: an app that builds only the backend it uses must get a clear
    /// error, not a panic or a silent fallback, when its config names
    /// another. Runs in a build without `postgres`
    /// (`cargo test -p seqsync-adapters --lib --no-default-features --features sqlite`,
    /// which `.ci/run` does).
    #[test]
    #[cfg(not(feature = "postgres"))]
    fn a_backend_left_out_of_the_build_is_a_typed_error_naming_its_feature() {
        let config = StorageConfig {
            backend: BackendKind::Postgres,
            ..StorageConfig::default()
        };
        let err = open_storage(&config).err().map(|e| e.to_string());
        let message = err.unwrap_or_default();
        assert!(
            message.contains("no postgres storage backend")
                && message.contains("`postgres` feature"),
            "{message}"
        );
    }

    /// Why: the memory backend is always built, whatever the features.
    #[test]
    fn the_memory_backend_opens_in_every_build() {
        let config = StorageConfig {
            backend: BackendKind::Memory,
            ..StorageConfig::default()
        };
        assert!(open_storage(&config).is_ok());
    }
}
