//! What every part of the runtime shares: the store, the config, the writer,
//! the read pool and the registry of collection actors.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use std::collections::HashMap;

use seqsync_engine::{
    CollectionName, DigestCache, EngineConfig, Migrations, Storage, StorageError,
};

use actix::Addr;

use crate::compactor::Compactor;
use crate::pool::{BlockingPool, PoolError};
use crate::registry::Registry;
use crate::writer::Writer;

pub(crate) struct Shared {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) config: EngineConfig,
    pub(crate) writer: Writer,
    pub(crate) pool: BlockingPool,
    pub(crate) registry: Registry,
    pub(crate) compactor: Addr<Compactor>,
    /// The app's schema migrations; their newest version is every
    /// collection's.
    pub(crate) migrations: Arc<Migrations>,
    /// Per collection, the document terms of the last `Engine::digest`.
    pub(crate) digest_caches: std::sync::Mutex<HashMap<CollectionName, DigestCache>>,
    /// Live batches handed to subscribers since the engine opened
    /// (`Engine::live_deliveries`).
    pub(crate) live_deliveries: AtomicU64,
}

impl Shared {
    /// Runs a blocking storage call on the read pool.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Storage) -> Result<T, StorageError> + Send + 'static,
    {
        let storage = self.storage.clone();
        match self.pool.run(move || f(&*storage)).await {
            Ok(result) => result,
            Err(PoolError::Panicked) => Err(StorageError::backend(
                storage_name(&self.storage),
                "reading",
                "the read panicked",
            )),
            Err(PoolError::Closed) => Err(StorageError::backend(
                storage_name(&self.storage),
                "reading",
                "the engine is shut down",
            )),
        }
    }
}

fn storage_name(storage: &Arc<dyn Storage>) -> &'static str {
    storage.backend()
}
