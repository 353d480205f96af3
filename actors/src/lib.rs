//! seqsync-actors: the runtime of seqsync and the [`Engine`] handle.
//!
//! Code map:
//! - [`engine`](crate::Engine): the handle a host embeds; starts and hides the
//!   runtime; reads that need no actor.
//! - `registry`: one actor per collection in use, started on demand.
//! - `collection`: `CollectionActor`, the single writer of a collection.
//! - `compactor`: merges deltas into snapshots on its own thread.
//! - `writer`: the storage writer thread that group-commits.
//! - `subscription`: the stored-then-live change stream.
//! - `pool`: threads for blocking storage reads.
//! - [`metrics`]: metric names.
//!
//! **Blocking storage I/O never runs on an arbiter thread**: it runs on the
//! writer thread or the read pool.

#![deny(missing_docs)]

mod collection;
mod compactor;
mod context;
mod engine;
pub mod metrics;
mod pool;
mod registry;
mod subscription;
mod types;
mod writer;

pub use crate::engine::{
    Engine, EngineBuilder, StorageOpener, MAX_LISTING_PAGE, MAX_VERSIONS_PER_DOCUMENT,
};
pub use crate::subscription::Subscription;
pub use crate::types::{
    BatchOutcome, ChangesPage, CollectionInfo, CollectionRecovery, CollectionsPage,
    CompactionSummary, DeleteOutcome, DocumentAt, DocumentState, DocumentStateVector,
    DocumentsPage, HistoryEntry, HistoryPage, PeerInfo, PushOptions, PushOutcome, Recovery,
    RestoreOutcome, SharedDocumentState, StreamEvent,
};
