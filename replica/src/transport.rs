//! How a replica talks to a server: one trait, whatever carries the calls.
//!
//! The trait speaks in the replica's own small types rather than the
//! engine's, so a network transport (the host server's HTTP routes) and the
//! in-process one ([`EngineTransport`], an `Engine` handle in the same
//! process) answer alike, and every replica test can run over either.

use std::collections::HashMap;
use std::future::Future;

use futures::StreamExt;
use seqsync_actors::{Engine, PushOptions, StreamEvent};
use seqsync_engine::{Change, DocId, Epoch, ReadError, Seq, WriteError};

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

/// The in-process transport: calls an [`Engine`] in the same process.
#[derive(Clone)]
pub struct EngineTransport {
    engine: Engine,
}

impl EngineTransport {
    /// Talks to `engine`.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

fn from_read(err: ReadError) -> TransportError {
    match err {
        ReadError::Reset { epoch, head } => TransportError::Reset { epoch, head },
        ReadError::Storage(e) => TransportError::Unavailable(e.to_string()),
        ReadError::ShuttingDown => {
            TransportError::Unavailable("the engine is shutting down".to_owned())
        }
        other => TransportError::Refused {
            code: other.code().to_owned(),
            message: other.to_string(),
        },
    }
}

fn from_write(err: WriteError) -> TransportError {
    match err {
        WriteError::Storage(_)
        | WriteError::Overloaded
        | WriteError::ShuttingDown
        | WriteError::Internal(_) => TransportError::Unavailable(err.to_string()),
        other => TransportError::Refused {
            code: other.code().to_owned(),
            message: other.to_string(),
        },
    }
}

impl Transport for EngineTransport {
    async fn changes(
        &self,
        collection: &str,
        after: Seq,
        limit: u64,
        epoch: Option<Epoch>,
    ) -> Result<RemotePage, TransportError> {
        self.changes_verified(collection, after, limit, epoch, None)
            .await
    }

    async fn changes_verified(
        &self,
        collection: &str,
        after: Seq,
        limit: u64,
        epoch: Option<Epoch>,
        checksum: Option<u64>,
    ) -> Result<RemotePage, TransportError> {
        let page = self
            .engine
            .changes_verified(collection, after, limit, epoch, checksum)
            .await
            .map_err(from_read)?;
        Ok(RemotePage {
            changes: page.changes,
            cursor: page.cursor,
            has_more: page.has_more,
            head: page.head,
            epoch: page.epoch,
            schema_version: page.schema_version,
            cursor_checksum: page.cursor_checksum,
        })
    }

    async fn push_batch(
        &self,
        collection: &str,
        updates: Vec<(String, Vec<u8>)>,
        origin: &str,
        schema_version: Option<u32>,
    ) -> Result<RemotePush, TransportError> {
        let options = PushOptions {
            origin: Some(origin.to_owned()),
            schema_version,
        };
        let outcome = self
            .engine
            .push_batch(collection, updates, options)
            .await
            .map_err(from_write)?;
        Ok(RemotePush {
            seqs: outcome.seqs,
            head: outcome.head,
        })
    }

    async fn recover_collection(
        &self,
        collection: &str,
        state_vectors: HashMap<String, Vec<u8>>,
    ) -> Result<RemoteRecovery, TransportError> {
        let recovery = self
            .engine
            .recover_collection(collection, state_vectors)
            .await
            .map_err(from_read)?;
        Ok(RemoteRecovery {
            documents: recovery.documents,
            deleted: recovery.deleted,
            cursor: recovery.cursor,
            epoch: recovery.epoch,
            schema_version: recovery.schema_version,
        })
    }

    async fn state_vector(
        &self,
        collection: &str,
        doc: &str,
    ) -> Result<Option<Vec<u8>>, TransportError> {
        match self.engine.document_state_vector(collection, doc).await {
            Ok(found) => Ok(Some(found.state_vector)),
            Err(ReadError::DocumentNotFound { .. }) => Ok(None),
            Err(err) => Err(from_read(err)),
        }
    }

    async fn subscribe(
        &self,
        collection: &str,
        after: Seq,
        epoch: Option<Epoch>,
    ) -> Result<RemoteStream, TransportError> {
        let mut subscription = self
            .engine
            .subscribe(collection, after, epoch)
            .map_err(from_read)?;
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            while let Some(event) = subscription.next().await {
                let item = match event {
                    Ok(StreamEvent::Change(change)) => Ok(RemoteEvent::Change(change)),
                    Ok(StreamEvent::UpToDate { head }) => Ok(RemoteEvent::UpToDate { head }),
                    Err(err) => Err(from_read(err)),
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(rx)
    }

    async fn ack(&self, collection: &str, peer: &str, seq: Seq) -> Result<(), TransportError> {
        match self.engine.ack(collection, peer, seq).await {
            Ok(_) => Ok(()),
            Err(err) => Err(TransportError::Refused {
                code: err.code().to_owned(),
                message: err.to_string(),
            }),
        }
    }
}
