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
//! It talks to the server through a [`Transport`]: in-process
//! ([`EngineTransport`], an `Engine` handle) or over the network
//! ([`HttpTransport`], the host server's HTTP routes); every replica test
//! runs over both.

#![deny(missing_docs)]

mod http;
mod replica;
mod transport;

pub use crate::http::{HttpTransport, TlsSetupError};
pub use crate::replica::{
    Follow, FollowReport, LocalCompaction, Replica, ReplicaError, ReplicaOptions, ResetReason,
    SyncOutcome, SyncProgress, SyncReport, STATE_COLLECTION,
};
pub use crate::transport::{
    EngineTransport, RemoteEvent, RemotePage, RemotePush, RemoteRecovery, RemoteStream, Transport,
    TransportError,
};
