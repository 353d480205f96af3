//! A document's history: the document as it was at a seq, its changes one
//! by one, and restoring an earlier version as a forward edit.
//!
//! All of it reads the log, which already keeps every change with its seq
//! and origin until compaction folds it: as of a seq at or after a
//! document's latest snapshot, the document is exact (its changes up to
//! that seq, `load_document_through`); before it, the history is gone and
//! the answer says from which seq it is readable.

use std::ops::ControlFlow;

use seqsync_engine::{
    load_document_through, random_client_id, restore_update, ChangeKind, CollectionName, DocId,
    ReadError, RestoreError, Seq,
};

use crate::types::{DocumentAt, HistoryEntry, HistoryPage, PushOptions, RestoreOutcome};

use super::listings::MAX_LISTING_PAGE;
use super::Engine;

impl Engine {
    /// The document as it was at collection seq `at`: its changes up to
    /// `at`, with the seq of the latest of them.
    ///
    /// Async; the read runs on the read pool. Errors:
    /// `HistoryCompacted` (compaction folded the document's history past
    /// `at`: it is readable from `earliest_seq`), `DocumentNotFound` (it
    /// had no change at or before `at`), `DocumentDeleted` (it was deleted
    /// by then), `CollectionNotFound`, `DocumentUnreadable`, `Storage`.
    pub async fn document_at(
        &self,
        collection: &str,
        doc: &str,
        at: Seq,
    ) -> Result<DocumentAt, ReadError> {
        self.check_open()?;
        let name = CollectionName::new(collection)?;
        let id = DocId::new(doc)?;
        let schema_version = self.schema_version();
        self.inner
            .shared
            .read(move |storage| {
                if storage.collection(&name)?.is_none() {
                    return Ok(Err(ReadError::CollectionNotFound {
                        collection: name.to_string(),
                    }));
                }
                let mut first = None;
                storage.visit_document_changes(&name, &id, &mut |change| {
                    first = Some((change.seq, change.kind));
                    ControlFlow::Break(())
                })?;
                match first {
                    None => {
                        return Ok(Err(ReadError::DocumentNotFound {
                            doc: id.to_string(),
                        }))
                    }
                    // A snapshot after `at` stands for changes at or before
                    // it that are gone.
                    Some((seq, ChangeKind::Snapshot)) if seq > at => {
                        return Ok(Err(ReadError::HistoryCompacted {
                            doc: id.to_string(),
                            earliest_seq: seq,
                        }))
                    }
                    Some((seq, _)) if seq > at => {
                        return Ok(Err(ReadError::DocumentNotFound {
                            doc: id.to_string(),
                        }))
                    }
                    Some(_) => {}
                }
                let Some(loaded) = load_document_through(storage, &name, &id, at)? else {
                    return Ok(Err(ReadError::DocumentNotFound {
                        doc: id.to_string(),
                    }));
                };
                // Between two pinned versions: a snapshot after `at` folded
                // changes after the earlier version, some of which may be at
                // or before `at`; only a change exactly at `at` is exact.
                let next = storage
                    .read_document_changes(&name, &id, at, 1)?
                    .and_then(|page| page.changes.into_iter().next());
                if let Some(snapshot) = next.filter(|c| c.kind == ChangeKind::Snapshot) {
                    if loaded.last_seq != at {
                        return Ok(Err(ReadError::HistoryCompacted {
                            doc: id.to_string(),
                            earliest_seq: snapshot.seq,
                        }));
                    }
                }
                if loaded.state.deleted {
                    return Ok(Err(ReadError::DocumentDeleted {
                        doc: id.to_string(),
                    }));
                }
                if let Err(reason) = loaded.state.check_readable() {
                    return Ok(Err(ReadError::DocumentUnreadable {
                        doc: id.to_string(),
                        reason,
                    }));
                }
                Ok(Ok(DocumentAt {
                    update: loaded.state.encode_state(),
                    seq: loaded.last_seq,
                    schema_version,
                }))
            })
            .await?
    }

    /// The seq of the document's version as of a moment: its latest change
    /// accepted at or before `at_ms` (ms since the Unix epoch), to read
    /// with [`Engine::document_at`]. Changes stored before stores recorded
    /// commit times count as older than any moment. A snapshot carries the
    /// time of the last change it folded.
    ///
    /// Async; the read runs on the read pool (it visits the document's
    /// changes). Errors: `HistoryCompacted` (the document's first stored
    /// change is a snapshot newer than `at_ms`: its history then was
    /// folded; `earliest_seq` names the snapshot), `DocumentNotFound` (no
    /// change then), `CollectionNotFound`, `InvalidName`, `Storage`.
    pub async fn version_at_time(
        &self,
        collection: &str,
        doc: &str,
        at_ms: u64,
    ) -> Result<Seq, ReadError> {
        self.check_open()?;
        let name = CollectionName::new(collection)?;
        let id = DocId::new(doc)?;
        self.inner
            .shared
            .read(move |storage| {
                if storage.collection(&name)?.is_none() {
                    return Ok(Err(ReadError::CollectionNotFound {
                        collection: name.to_string(),
                    }));
                }
                let mut first: Option<(Seq, ChangeKind, u64)> = None;
                let mut version = None;
                storage.visit_document_changes(&name, &id, &mut |change| {
                    first.get_or_insert((change.seq, change.kind, change.committed_ms));
                    // Times follow the log (each is taken as its seq is
                    // assigned), so the first newer change ends the walk.
                    if change.committed_ms > at_ms {
                        return ControlFlow::Break(());
                    }
                    version = Some(change.seq);
                    ControlFlow::Continue(())
                })?;
                Ok(match (version, first) {
                    (Some(seq), _) => Ok(seq),
                    (None, Some((seq, ChangeKind::Snapshot, _))) => {
                        Err(ReadError::HistoryCompacted {
                            doc: id.to_string(),
                            earliest_seq: seq,
                        })
                    }
                    (None, _) => Err(ReadError::DocumentNotFound {
                        doc: id.to_string(),
                    }),
                })
            })
            .await?
    }

    /// Up to `limit` changes of one document (clamped to
    /// 1..=`MAX_LISTING_PAGE`) with seq > `after`, oldest first: seq, kind,
    /// size and origin peer, without their bytes. Compacted changes are not
    /// listed (their snapshot is).
    ///
    /// Async; the read runs on the read pool. Errors: `CollectionNotFound`,
    /// `DocumentNotFound` (no change at all), `InvalidName`, `Storage`.
    pub async fn history(
        &self,
        collection: &str,
        doc: &str,
        after: Seq,
        limit: usize,
    ) -> Result<HistoryPage, ReadError> {
        self.check_open()?;
        let name = CollectionName::new(collection)?;
        let id = DocId::new(doc)?;
        let limit = limit.clamp(1, MAX_LISTING_PAGE);
        // One more than asked: whether another page follows.
        let page = self
            .inner
            .shared
            .read(move |storage| storage.read_document_changes(&name, &id, after, limit + 1))
            .await?;
        let Some(mut page) = page else {
            return Err(ReadError::CollectionNotFound {
                collection: collection.to_owned(),
            });
        };
        if page.changes.is_empty() && after == 0 {
            return Err(ReadError::DocumentNotFound {
                doc: doc.to_owned(),
            });
        }
        let has_more = page.changes.len() > limit;
        page.changes.truncate(limit);
        Ok(HistoryPage {
            entries: page
                .changes
                .into_iter()
                .map(|change| HistoryEntry {
                    seq: change.seq,
                    kind: change.kind,
                    size_bytes: change.payload.len() as u64,
                    origin: change.origin,
                    author: change.author,
                    committed_ms: (change.committed_ms > 0).then_some(change.committed_ms),
                    schema_version: change.schema_version,
                })
                .collect(),
            has_more,
        })
    }

    /// Makes the document's content equal to what it was at seq `at`, with
    /// one ordinary forward update (`seqsync_engine::restore_update`):
    /// every client receives it as an edit, and the restore is itself in
    /// the history. Answers once the edit is committed, like a push; `seq`
    /// is `None` when the content was equal already.
    ///
    /// Async; the reads and the computation run on the read pool. Errors:
    /// the version's read errors (`HistoryCompacted`, ...), the current
    /// document's (`DocumentDeleted`: restore after pushing again), and a
    /// push's.
    pub async fn restore(
        &self,
        collection: &str,
        doc: &str,
        at: Seq,
    ) -> Result<RestoreOutcome, RestoreError> {
        self.restore_with(collection, doc, at, PushOptions::default())
            .await
    }

    /// [`Engine::restore`] with the push's options: its `origin` and
    /// `author` are recorded with the restoring edit (the history then says
    /// who restored). Errors: as `restore`.
    pub async fn restore_with(
        &self,
        collection: &str,
        doc: &str,
        at: Seq,
        options: PushOptions,
    ) -> Result<RestoreOutcome, RestoreError> {
        let version = self.document_at(collection, doc, at).await?;
        let current = self.document(collection, doc).await?;
        let update = self
            .inner
            .shared
            .read(move |_| {
                let client_id = random_client_id().map_err(|e| {
                    seqsync_engine::StorageError::backend("engine", "choosing a client id", e)
                })?;
                Ok(restore_update(&current.update, &version.update, client_id))
            })
            .await
            .map_err(ReadError::from)?
            .map_err(|e| ReadError::DocumentUnreadable {
                doc: doc.to_owned(),
                reason: e.to_string(),
            })?;
        let Some(update) = update else {
            return Ok(RestoreOutcome {
                seq: None,
                restored_from: version.seq,
            });
        };
        let pushed = self.push(collection, doc, update, options).await?;
        Ok(RestoreOutcome {
            seq: pushed.seq,
            restored_from: version.seq,
        })
    }
}
