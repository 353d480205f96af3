//! seqsync-replica: a client replica of a seqsync server, in Rust.
//!
//! A [`Replica`] keeps some collections of a server in a local store (the
//! same [`seqsync_engine::Storage`] trait and backends the engine uses:
//! SQLite, redb, memory), takes local edits durably before they return
//! (they wait in an outbox), and syncs on demand with a report of what
//! happened, Tolstoy-style ([`SyncOutcome`]): nothing, pulled, pushed,
//! merged, or reset (the server's history was replaced: the replica
//! recovers and pushes its own state back, losing nothing). Models:
//! Mentat's Tolstoy sync and Secure Scuttlebutt's replication.
//!
//! It talks to the server through a [`Transport`]: over the network
//! (`HttpTransport`, the host server's HTTP routes) or in-process
//! (`EngineTransport`, an `Engine` handle); every replica test runs over
//! both.
//!
//! Cargo features: `http` (default) builds `HttpTransport`; `in-process`
//! builds `EngineTransport`, the replica's only path to the actor runtime.
//! The local store is any [`seqsync_engine::Storage`]: an app adds
//! `seqsync-adapters` with the backend feature it needs (`sqlite`, `redb`).

#![deny(missing_docs)]

mod edit;
mod error;
mod follow;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "in-process")]
mod in_process;
mod local_log;
mod local_migration;
mod outbox;
mod pull;
mod recover;
mod replica;
mod report;
mod state;
mod transport;

pub use crate::error::ReplicaError;
pub use crate::follow::{Follow, FollowReport};
#[cfg(feature = "http")]
pub use crate::http::{HttpTransport, TlsSetupError};
#[cfg(feature = "in-process")]
pub use crate::in_process::EngineTransport;
pub use crate::replica::{Replica, ReplicaOptions, STATE_COLLECTION};
pub use crate::report::{LocalCompaction, ResetReason, SyncOutcome, SyncProgress, SyncReport};
pub use crate::transport::{
    RemoteEvent, RemotePage, RemotePush, RemoteRecovery, RemoteStream, Transport, TransportError,
};
