//! Writes: pushes, batches, deletes, acks and compaction on demand.
//!
//! Each goes to its collection's actor (the single writer), which assigns
//! seqs and hands the write to the storage writer; these methods only await
//! the actor's answer, which comes once the write is durable.

use std::time::Instant;

use seqsync_engine::{check_author, AckError, CollectionName, DocId, PeerId, Seq, WriteError};

use crate::collection::{Ack, CompactNow, Write, WriteDone, WriteOp};
use crate::metrics as m;
use crate::types::{BatchOutcome, CompactionSummary, DeleteOutcome, PushOptions, PushOutcome};

use super::Engine;

impl Engine {
    /// Pushes one Yjs v1 update to a document.
    ///
    /// Returns once the change is committed with the configured durability.
    /// An update that adds nothing logs nothing and answers `seq: None`
    /// (retries are free). Errors: [`WriteError`]; on any error nothing is
    /// acknowledged and a retry is safe.
    pub async fn push(
        &self,
        collection: &str,
        doc: &str,
        update: Vec<u8>,
        options: PushOptions,
    ) -> Result<PushOutcome, WriteError> {
        let done = self
            .push_batch(collection, vec![(doc.to_owned(), update)], options)
            .await?;
        Ok(PushOutcome {
            seq: done.seqs.first().copied().flatten(),
            head: done.head,
        })
    }

    /// Pushes several updates (of one or several documents of a collection)
    /// atomically: all are committed, with consecutive seqs in order, or none.
    ///
    /// Errors: as [`Engine::push`], plus `EmptyBatch` and `BatchTooLarge`.
    pub async fn push_batch(
        &self,
        collection: &str,
        updates: Vec<(String, Vec<u8>)>,
        options: PushOptions,
    ) -> Result<BatchOutcome, WriteError> {
        let started = Instant::now();
        // A span per push: the actor and the writer run elsewhere, so this
        // span times the whole round trip, durable commit included.
        let span = tracing::debug_span!("push", collection, updates = updates.len());
        let result = tracing::Instrument::instrument(
            self.push_batch_inner(collection, updates, options),
            span,
        )
        .await;
        metrics::histogram!(m::PUSH_SECONDS).record(started.elapsed().as_secs_f64());
        if let Err(err) = &result {
            metrics::counter!(m::ERRORS, "kind" => err.code()).increment(1);
        }
        result
    }

    pub(super) async fn push_batch_inner(
        &self,
        collection: &str,
        updates: Vec<(String, Vec<u8>)>,
        options: PushOptions,
    ) -> Result<BatchOutcome, WriteError> {
        let limits = &self.inner.shared.config.limits;
        let name = CollectionName::new(collection)?;
        let origin = options.origin.map(PeerId::new).transpose()?;
        if let Some(author) = &options.author {
            check_author(author)?;
        }
        if updates.is_empty() {
            return Err(WriteError::EmptyBatch);
        }
        if updates.len() as u64 > limits.max_batch_updates {
            return Err(WriteError::BatchTooLarge {
                count: updates.len() as u64,
                max: limits.max_batch_updates,
            });
        }
        let mut items = Vec::with_capacity(updates.len());
        for (doc, bytes) in updates {
            let doc = DocId::new(doc)?;
            if bytes.len() as u64 > limits.max_update_bytes {
                return Err(WriteError::TooLarge {
                    len_bytes: bytes.len() as u64,
                    max_bytes: limits.max_update_bytes,
                });
            }
            items.push((doc, bytes));
        }
        let done = self
            .write(
                &name,
                Write {
                    op: WriteOp::Updates(items),
                    origin,
                    author: options.author,
                    schema_version: options.schema_version,
                },
            )
            .await?;
        Ok(BatchOutcome {
            seqs: done.seqs,
            head: done.head,
        })
    }

    /// Deletes a document: logs a tombstone; later pushes to it fail with
    /// `DocumentDeleted`. Deleting twice is a no-op (`seq: None`).
    ///
    /// Returns once the tombstone is durable. Errors: [`WriteError`].
    pub async fn delete(&self, collection: &str, doc: &str) -> Result<DeleteOutcome, WriteError> {
        self.delete_with(collection, doc, PushOptions::default())
            .await
    }

    /// [`Engine::delete`] recording who deletes: `options.origin` and
    /// `options.author` are stored with the tombstone (its schema version
    /// is ignored). Errors: as `delete`, plus `InvalidName` for a bad
    /// origin or author.
    pub async fn delete_with(
        &self,
        collection: &str,
        doc: &str,
        options: PushOptions,
    ) -> Result<DeleteOutcome, WriteError> {
        let name = CollectionName::new(collection)?;
        let doc = DocId::new(doc)?;
        let origin = options.origin.map(PeerId::new).transpose()?;
        if let Some(author) = &options.author {
            check_author(author)?;
        }
        let done = self
            .write(
                &name,
                Write {
                    op: WriteOp::Delete(doc),
                    origin,
                    author: options.author,
                    schema_version: None,
                },
            )
            .await?;
        Ok(DeleteOutcome {
            seq: done.seqs.first().copied().flatten(),
            head: done.head,
        })
    }

    pub(super) async fn write(
        &self,
        name: &CollectionName,
        msg: Write,
    ) -> Result<WriteDone, WriteError> {
        self.check_open().map_err(|_| WriteError::ShuttingDown)?;
        let reply =
            self.inner.send(name, msg).await.map_err(|_| {
                WriteError::Internal("the collection actor is gone; retry".to_owned())
            })?;
        reply
            .await
            .map_err(|_| WriteError::Internal("the collection actor restarted; retry".to_owned()))?
    }

    /// Records that `peer` has every change ≤ `seq`. The stored ack is the
    /// max of old and new (an ack going backwards answers the kept max).
    ///
    /// Returns once durable. Errors: `AckBeyondHead` if `seq` > head.
    pub async fn ack(&self, collection: &str, peer: &str, seq: Seq) -> Result<Seq, AckError> {
        self.check_open().map_err(|_| AckError::ShuttingDown)?;
        let name = CollectionName::new(collection)?;
        let peer = PeerId::new(peer)?;
        let reply = self
            .inner
            .send(&name, Ack { peer, seq })
            .await
            .map_err(|_| AckError::Internal("the collection actor is gone; retry".to_owned()))?;
        let result = reply
            .await
            .map_err(|_| AckError::Internal("the collection actor restarted; retry".to_owned()))?;
        if let Err(err) = &result {
            metrics::counter!(m::ERRORS, "kind" => err.code()).increment(1);
        }
        result
    }

    /// Compacts the collection now, with the same peer-gated logic as the
    /// automatic compactor (documents are merged up to the lowest seq acked by
    /// every active peer, or up to head without active peers; tombstoned
    /// documents lose everything before their tombstone). Answers when every
    /// resulting compaction is committed; running it again right after changes
    /// nothing. Pushes continue meanwhile. Errors: `InvalidName`, `Storage`.
    pub async fn compact(&self, collection: &str) -> Result<CompactionSummary, WriteError> {
        self.check_open().map_err(|_| WriteError::ShuttingDown)?;
        let name = CollectionName::new(collection)?;
        let reply =
            self.inner.send(&name, CompactNow).await.map_err(|_| {
                WriteError::Internal("the collection actor is gone; retry".to_owned())
            })?;
        reply
            .await
            .map_err(|_| WriteError::Internal("the collection actor restarted; retry".to_owned()))?
    }
}
