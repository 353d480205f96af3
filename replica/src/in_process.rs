//! The in-process transport: a replica talking to an `Engine` handle in the
//! same process, with no network between them.
//!
//! Why it is a feature (`in-process`, off by default): it is the replica's
//! only path to the actor runtime (`seqsync-actors`, and through it actix
//! and the storage backends). An app syncing with a server over the network
//! needs none of that; the replica's own tests and apps that embed the
//! engine beside their replica turn it on.

use std::collections::HashMap;

use futures::StreamExt;
use seqsync_actors::{Engine, PushOptions, StreamEvent};
use seqsync_engine::{Epoch, ReadError, Seq, WriteError};

use crate::transport::{
    RemoteEvent, RemotePage, RemotePush, RemoteRecovery, RemoteStream, Transport, TransportError,
    STREAM_BUFFER,
};

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
            author: None,
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
