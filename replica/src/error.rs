//! What can go wrong in a replica call, one enum for all of them: every
//! variant leaves local data whole (nothing, or only whole commits, was
//! written), so a caller can retry or report without checking the store.

use seqsync_engine::{MigrationError, StorageError};

use crate::transport::TransportError;

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
