//! Reads: the log by cursor, subscriptions, peers and documents.
//!
//! Log reads go straight to storage on the read pool: storage holds only
//! committed changes and each page comes from one snapshot, so visibility
//! follows seq by construction. Document reads are served from the actor's
//! memory when it is exact, else rebuilt from storage on the read pool.

use seqsync_engine::{
    decode_state_vector, load_document, now_ms, CollectionName, DocId, Epoch, LoadedDocument,
    ReadError, Seq,
};

use crate::collection::{CachedDoc, CachedRead, SharedDoc, SharedRead, SharedWhat};
use crate::metrics as m;
use crate::subscription;
use crate::subscription::Subscription;
use crate::types::{
    ChangesPage, DocumentState, DocumentStateVector, PeerInfo, Recovery, SharedDocumentState,
};

use super::Engine;

/// The cursor a document read may answer with. Normally the head read before
/// the document. If yrs holds pending structures, the encoded state leaves
/// them out (see `DocState::encode_state`), so the cursor is lowered to just
/// before the document's first update after its last snapshot (snapshots never
/// hold pending structures): streaming from there re-delivers the pending
/// updates, and Yjs applies the rest of the overlap idempotently.
pub(super) fn served_cursor(loaded: &LoadedDocument, head: Seq) -> Seq {
    if !loaded.state.has_pending() {
        return head;
    }
    loaded
        .first_delta_seq
        .map_or(head, |seq| seq.saturating_sub(1).min(head))
}

impl Engine {
    /// One page of changes with seq > `after`, in seq order, at most `limit`
    /// (clamped to `limits.stream_page_limit`; 0 gives an empty page).
    ///
    /// `epoch`, if given, is the epoch the client's cursor belongs to.
    /// Errors: [`ReadError::Reset`] for a foreign epoch or a cursor beyond
    /// head; `Storage` on failure. Blocking work runs on the read pool.
    pub async fn changes(
        &self,
        collection: &str,
        after: Seq,
        limit: u64,
        epoch: Option<Epoch>,
    ) -> Result<ChangesPage, ReadError> {
        self.changes_verified(collection, after, limit, epoch, None)
            .await
    }

    /// [`Engine::changes`], also checking the history under the cursor: a
    /// client that remembers the `cursor_checksum` it got at `after` sends
    /// it, and if the change stored at `after` has another log checksum, the
    /// seq was reused for something else (a database failover that lost
    /// acked commits, a restore of an older backup under the same epoch):
    /// the answer is `Reset`, and the client recovers instead of mixing two
    /// histories. When that change was compacted away the check is skipped
    /// (nothing to compare), as it is for `after = 0`.
    ///
    /// Errors: as `changes`.
    pub async fn changes_verified(
        &self,
        collection: &str,
        after: Seq,
        limit: u64,
        epoch: Option<Epoch>,
        checksum_at_cursor: Option<u64>,
    ) -> Result<ChangesPage, ReadError> {
        self.check_open()?;
        let name = CollectionName::new(collection)?;
        let limit = usize::try_from(limit.min(self.inner.shared.config.limits.stream_page_limit))
            .unwrap_or(usize::MAX);
        let (page, replaced) = self
            .inner
            .shared
            .read(move |storage| {
                let replaced = match checksum_at_cursor {
                    Some(expected) if after > 0 => storage
                        .read_changes(&name, after - 1, 1)?
                        .and_then(|p| p.changes.into_iter().next())
                        .is_some_and(|c| c.seq == after && c.log_checksum != expected),
                    _ => false,
                };
                Ok((storage.read_changes(&name, after, limit)?, replaced))
            })
            .await?;
        if replaced {
            if let Some(page) = &page {
                metrics::counter!(m::ERRORS, "kind" => "history_replaced").increment(1);
                return Err(ReadError::Reset {
                    epoch: Some(page.meta.epoch),
                    head: page.meta.head,
                });
            }
        }
        let Some(page) = page else {
            if after > 0 || epoch.is_some() {
                return Err(ReadError::Reset {
                    epoch: None,
                    head: 0,
                });
            }
            return Ok(ChangesPage {
                changes: Vec::new(),
                cursor: 0,
                has_more: false,
                head: 0,
                cursor_checksum: 0,
                epoch: None,
                schema_version: self.schema_version(),
            });
        };
        let meta = page.meta;
        if epoch.is_some_and(|e| e != meta.epoch) || after > meta.head {
            return Err(ReadError::Reset {
                epoch: Some(meta.epoch),
                head: meta.head,
            });
        }
        let cursor = page.changes.last().map_or(after, |c| c.seq);
        // The change at head always exists, so an empty page is at the head
        // (or at 0).
        let cursor_checksum = match page.changes.last() {
            Some(last) => last.log_checksum,
            None if after == meta.head => meta.log_checksum,
            None => 0,
        };
        metrics::counter!(m::CHANGES_STREAMED).increment(page.changes.len() as u64);
        Ok(ChangesPage {
            cursor_checksum,
            // The change at head always exists (compaction keeps the last
            // covered seq), so anything below head means more to read.
            has_more: cursor < meta.head,
            changes: page.changes,
            cursor,
            head: meta.head,
            epoch: Some(meta.epoch),
            schema_version: meta.schema_version,
        })
    }

    /// Stored changes with seq > `after`, then live ones as they commit, with
    /// no gap and no duplicate, and `UpToDate { head }` each time the stream
    /// has caught up. Memory per subscriber is bounded; a slow subscriber
    /// falls back to reading storage. Errors (as items, ending the stream):
    /// `Reset` for a foreign epoch or a cursor beyond head, `Storage`.
    pub fn subscribe(
        &self,
        collection: &str,
        after: Seq,
        epoch: Option<Epoch>,
    ) -> Result<Subscription, ReadError> {
        self.check_open()?;
        let name = CollectionName::new(collection)?;
        Ok(subscription::subscribe(
            self.inner.clone(),
            name,
            None,
            after,
            epoch,
        ))
    }

    /// [`Engine::subscribe`] for one document: its stored changes with seq >
    /// `after`, then its live ones, with the same guarantees (no gap, no
    /// duplicate, bounded memory, `UpToDate`). Cursors and `UpToDate` heads
    /// are collection seqs; the stream carries only this document's changes
    /// (its tombstone included).
    ///
    /// This is what a client of one document should use: the collection's
    /// actor hands each commit only to the subscribers of the documents it
    /// touched, so the cost of following a document does not grow with the
    /// number of other documents in the collection or their traffic.
    /// Errors: as [`Engine::subscribe`], plus `InvalidName` for `doc`.
    pub fn subscribe_document(
        &self,
        collection: &str,
        doc: &str,
        after: Seq,
        epoch: Option<Epoch>,
    ) -> Result<Subscription, ReadError> {
        self.check_open()?;
        let name = CollectionName::new(collection)?;
        let doc = DocId::new(doc)?;
        Ok(subscription::subscribe(
            self.inner.clone(),
            name,
            Some(doc),
            after,
            epoch,
        ))
    }

    /// The collection's peers with their acked seq, lag and activity.
    pub async fn peers(&self, collection: &str) -> Result<Vec<PeerInfo>, ReadError> {
        self.check_open()?;
        let name = CollectionName::new(collection)?;
        let timeout_secs = self.inner.shared.config.compaction.peer_timeout_secs;
        let (head, records) = self
            .inner
            .shared
            .read(move |storage| {
                let head = storage.collection(&name)?.map_or(0, |m| m.head);
                Ok((head, storage.peers(&name)?))
            })
            .await?;
        let now = now_ms();
        let peers: Vec<PeerInfo> = records
            .into_iter()
            .map(|p| PeerInfo {
                lag: head.saturating_sub(p.acked),
                active: p.is_active(now, timeout_secs),
                peer: p.peer,
                acked: p.acked,
                last_seen_ms: p.last_seen_ms,
            })
            .collect();
        metrics::gauge!(m::ACTIVE_PEERS).set(peers.iter().filter(|p| p.active).count() as f64);
        Ok(peers)
    }

    /// A document's full state and the cursor it reflects (stream from it).
    /// Errors: `DocumentNotFound`, `DocumentDeleted`, `Storage`,
    /// `DocumentUnreadable` (its stored history encodes into bytes no Yjs
    /// reader can decode; fuzz finding F2).
    pub async fn document(&self, collection: &str, doc: &str) -> Result<DocumentState, ReadError> {
        let (update, cursor) = self.read_document(collection, doc, None).await?;
        Ok(DocumentState {
            update,
            cursor,
            schema_version: self.schema_version(),
        })
    }

    /// [`Engine::document`] for many readers of one document at once (a
    /// class joining a large document): the document is loaded into its
    /// collection's actor once, its state is encoded once per version, and
    /// every caller gets the same bytes until the document changes. Memory:
    /// one encoding per document read this way, held until it changes or
    /// its collection unloads. Falls back to a storage read when memory is
    /// not exact (a write of the document in flight). Errors: as
    /// [`Engine::document`].
    pub async fn document_shared(
        &self,
        collection: &str,
        doc: &str,
    ) -> Result<SharedDocumentState, ReadError> {
        match self.shared_read(collection, doc, SharedWhat::State).await? {
            Some(SharedDoc::State(update, cursor)) => Ok(SharedDocumentState { update, cursor }),
            _ => {
                let state = self.document(collection, doc).await?;
                Ok(SharedDocumentState {
                    update: state.update.into(),
                    cursor: state.cursor,
                })
            }
        }
    }

    /// A document's state vector and the cursor it reflects, without
    /// encoding its state (what a y-websocket server sends a client first).
    /// Served from the collection actor's memory (loading the document
    /// there if needed); from storage while a write of it is in flight.
    /// Errors: `DocumentNotFound`, `DocumentDeleted`, `Storage`.
    pub async fn document_state_vector(
        &self,
        collection: &str,
        doc: &str,
    ) -> Result<DocumentStateVector, ReadError> {
        match self
            .shared_read(collection, doc, SharedWhat::StateVector)
            .await?
        {
            Some(SharedDoc::StateVector(state_vector, cursor)) => Ok(DocumentStateVector {
                state_vector,
                cursor,
            }),
            _ => {
                let state = self.document(collection, doc).await?;
                let decoded = seqsync_engine::decode_update(&state.update).map_err(|e| {
                    ReadError::Internal(format!("a served state did not decode: {e}"))
                })?;
                let mut loaded = seqsync_engine::DocState::empty();
                loaded.apply(decoded).map_err(|e| {
                    ReadError::Internal(format!("a served state did not apply: {}", e.0))
                })?;
                Ok(DocumentStateVector {
                    state_vector: yrs::updates::encoder::Encode::encode_v1(&loaded.state_vector()),
                    cursor: state.cursor,
                })
            }
        }
    }

    /// The actor's answer to a `SharedRead`, with the typed errors of a
    /// document read; `None` (or `Unavailable`) means "read storage".
    pub(super) async fn shared_read(
        &self,
        collection: &str,
        doc: &str,
        what: SharedWhat,
    ) -> Result<Option<SharedDoc>, ReadError> {
        self.check_open()?;
        let name = CollectionName::new(collection)?;
        let doc_id = DocId::new(doc)?;
        let answer = self
            .inner
            .send(&name, SharedRead { doc: doc_id, what })
            .await
            .ok();
        match answer {
            Some(Ok(SharedDoc::Deleted)) => Err(ReadError::DocumentDeleted {
                doc: doc.to_owned(),
            }),
            Some(Ok(SharedDoc::Empty)) => Err(ReadError::DocumentNotFound {
                doc: doc.to_owned(),
            }),
            Some(Ok(answer)) => Ok(Some(answer)),
            Some(Err(err)) => Err(ReadError::Storage(err)),
            None => Ok(None),
        }
    }

    /// What a client with `state_vector` (Yjs v1; empty = nothing) lacks of a
    /// document, and the cursor it reflects. Errors: `InvalidStateVector`,
    /// `DocumentNotFound`, `DocumentDeleted`, `Storage`.
    pub async fn recover(
        &self,
        collection: &str,
        doc: &str,
        state_vector: &[u8],
    ) -> Result<Recovery, ReadError> {
        let sv = decode_state_vector(state_vector).map_err(ReadError::InvalidStateVector)?;
        let (diff, cursor) = self.read_document(collection, doc, Some(sv)).await?;
        Ok(Recovery {
            diff,
            cursor,
            schema_version: self.schema_version(),
        })
    }

    pub(super) async fn read_document(
        &self,
        collection: &str,
        doc: &str,
        sv: Option<yrs::StateVector>,
    ) -> Result<(Vec<u8>, Seq), ReadError> {
        self.check_open()?;
        let name = CollectionName::new(collection)?;
        let doc = DocId::new(doc)?;
        let cached = self
            .inner
            .send(
                &name,
                CachedRead {
                    doc: doc.clone(),
                    state_vector: sv.clone(),
                },
            )
            .await
            .ok()
            .flatten();
        match cached {
            Some(CachedDoc::State(update, cursor)) => return Ok((update, cursor)),
            Some(CachedDoc::Deleted) => {
                return Err(ReadError::DocumentDeleted {
                    doc: doc.to_string(),
                })
            }
            Some(CachedDoc::Missing) => {
                return Err(ReadError::DocumentNotFound {
                    doc: doc.to_string(),
                })
            }
            None => {}
        }
        let result = self
            .inner
            .shared
            .read(move |storage| {
                // Head first: every change ≤ head is then in what we load
                // (later ones may be too, which Yjs applies idempotently).
                let head = storage.collection(&name)?.map_or(0, |m| m.head);
                let Some(loaded) = load_document(storage, &name, &doc)? else {
                    return Ok(Err(ReadError::DocumentNotFound {
                        doc: doc.to_string(),
                    }));
                };
                let state = &loaded.state;
                if state.deleted {
                    return Ok(Err(ReadError::DocumentDeleted {
                        doc: doc.to_string(),
                    }));
                }
                if let Err(reason) = state.check_readable() {
                    return Ok(Err(ReadError::DocumentUnreadable {
                        doc: doc.to_string(),
                        reason,
                    }));
                }
                let update = match &sv {
                    Some(sv) => state.encode_diff(sv),
                    None => state.encode_state(),
                };
                Ok(Ok((update, served_cursor(&loaded, head))))
            })
            .await?;
        result
    }
}
