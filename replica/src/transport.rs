//! How a replica talks to a server: one trait, whatever carries the calls.
//!
//! The trait speaks in the replica's own small types rather than the
//! engine's, so a network transport (the host server's HTTP routes) and the
//! in-process one (`EngineTransport`, an `Engine` handle in the same
//! process, with the `in-process` feature) answer alike, and every replica test can run over either.

use std::collections::HashMap;
use std::future::Future;

use seqsync_engine::{Change, DocId, Epoch, Seq};

/// One page of the server's log after a cursor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemotePage {
    /// Changes after the cursor asked for, in seq order.
    pub changes: Vec<Change>,
    /// Where to continue.
    pub cursor: Seq,
    /// Whether more follow.
    pub has_more: bool,
    /// The server's head when the page was read.
    pub head: Seq,
    /// The collection's epoch (`None`: it does not exist yet).
    pub epoch: Option<Epoch>,
    /// The collection's schema version (every document on the server is
    /// migrated to it); 0 when unknown.
    pub schema_version: u32,
    /// The log checksum through `cursor` (0 when unknown).
    pub cursor_checksum: u64,
}

/// What the server answered to a batch of pushes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemotePush {
    /// Per update, its seq (`None`: the server had it already).
    pub seqs: Vec<Option<Seq>>,
    /// The head after the batch.
    pub head: Seq,
}

/// A whole collection for a replica that must start over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteRecovery {
    /// Per live document, what the replica lacks.
    pub documents: Vec<(DocId, Vec<u8>)>,
    /// Deleted documents.
    pub deleted: Vec<DocId>,
    /// Stream from here.
    pub cursor: Seq,
    /// The collection's epoch.
    pub epoch: Option<Epoch>,
    /// The schema version the documents are at; 0 when unknown.
    pub schema_version: u32,
}

/// An item of a live stream of the server's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteEvent {
    /// The next change, in seq order.
    Change(Change),
    /// Everything up to `head` has been delivered.
    UpToDate {
        /// The head caught up to.
        head: Seq,
    },
}

/// A live stream: stored changes after the cursor, then live ones; ends
/// with an error item if the server resets or goes away. Bounded (a slow
/// reader makes the transport wait, never buffer without limit).
pub type RemoteStream = tokio::sync::mpsc::Receiver<Result<RemoteEvent, TransportError>>;

/// Items a live stream buffers.
#[cfg(any(feature = "http", feature = "in-process"))]
pub(crate) const STREAM_BUFFER: usize = 256;

/// Why a call failed. Every variant leaves the replica's local store as it
/// was; a later sync retries.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The server's history is not the one the cursor belongs to (another
    /// epoch, or a cursor beyond its head): the replica must recover.
    #[error("the server answered reset (epoch {epoch:?}, head {head})")]
    Reset {
        /// The server's epoch.
        epoch: Option<Epoch>,
        /// Its head.
        head: Seq,
    },
    /// The server refused the request for good (bad input, too large,
    /// schema mismatch); retrying the same request will not help.
    #[error("the server refused: {code}: {message}")]
    Refused {
        /// The server's stable code.
        code: String,
        /// Its message.
        message: String,
    },
    /// The server could not be reached or failed; retry later.
    #[error("the server is unavailable: {0}")]
    Unavailable(String),
}

/// The calls a replica makes. Implementations must be cheap to call
/// concurrently; each call is independent (no session state).
pub trait Transport: Send + Sync {
    /// Up to `limit` changes after `after` (exclusive), or `Reset`.
    fn changes(
        &self,
        collection: &str,
        after: Seq,
        limit: u64,
        epoch: Option<Epoch>,
    ) -> impl Future<Output = Result<RemotePage, TransportError>> + Send;

    /// [`Transport::changes`], with the log checksum the replica holds at
    /// `after`: a server whose change at `after` has another checksum
    /// answers `Reset` (the seq was reused: a failover lost commits, or an
    /// older backup was restored). Transports that cannot pass it ask
    /// without it.
    fn changes_verified(
        &self,
        collection: &str,
        after: Seq,
        limit: u64,
        epoch: Option<Epoch>,
        checksum: Option<u64>,
    ) -> impl Future<Output = Result<RemotePage, TransportError>> + Send {
        let _ = checksum;
        self.changes(collection, after, limit, epoch)
    }

    /// Pushes `updates` atomically, recorded with `origin`, written at the
    /// app's `schema_version` (`None`: the server's current one).
    fn push_batch(
        &self,
        collection: &str,
        updates: Vec<(String, Vec<u8>)>,
        origin: &str,
        schema_version: Option<u32>,
    ) -> impl Future<Output = Result<RemotePush, TransportError>> + Send;

    /// Every document's diff against the given state vectors.
    fn recover_collection(
        &self,
        collection: &str,
        state_vectors: HashMap<String, Vec<u8>>,
    ) -> impl Future<Output = Result<RemoteRecovery, TransportError>> + Send;

    /// A document's state vector on the server (`None`: not there).
    fn state_vector(
        &self,
        collection: &str,
        doc: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, TransportError>> + Send;

    /// Acknowledges everything up to `seq` for `peer`.
    fn ack(
        &self,
        collection: &str,
        peer: &str,
        seq: Seq,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// A live stream of the log after `after` (exclusive), or `Reset`.
    fn subscribe(
        &self,
        collection: &str,
        after: Seq,
        epoch: Option<Epoch>,
    ) -> impl Future<Output = Result<RemoteStream, TransportError>> + Send;
}
