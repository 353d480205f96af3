//! Digests, export, backup and recovery of a collection.
//!
//! All of them read storage directly on threads of their own (never an
//! arbiter or the read pool): an export or a digest can take long, and must
//! not hold back the reads that serve clients.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use seqsync_engine::bundle::{export_collection, BundleError, ExportOptions, ExportReport};
use seqsync_engine::{
    collection_digest, decode_state_vector, document_digest_at, load_document, CollectionDigest,
    CollectionName, DigestCache, DocId, DocumentDigest, DocumentDigestAt, ReadError, Seq,
};
use tokio::sync::oneshot;

use crate::types::CollectionRecovery;

use super::reads::served_cursor;
use super::{Engine, MAX_DIGEST_CACHE_DOCUMENTS};

/// Runs blocking `work` on a thread of its own and awaits its result (long
/// storage work that must not occupy an arbiter or the read pool).
async fn run_on_thread<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> Result<T, BundleError> + Send + 'static,
) -> Result<T, BundleError> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|e| BundleError::Io {
            path: std::path::PathBuf::from(name),
            source: e,
        })?;
    rx.await.unwrap_or(Err(BundleError::ShuttingDown))
}

impl Engine {
    /// The collection's digests at its current head: `head`, the log
    /// checksum through it, and the state digest (a sum of per-document
    /// terms; `None` while a document holds pending structures). Consistent
    /// at that head while pushes continue (documents are read as of it).
    ///
    /// Runs on the read pool; the first call loads every document once, later
    /// ones only those changed since. Errors: `InvalidName`,
    /// `CollectionNotFound`, `Storage`.
    pub async fn digest(&self, collection: &str) -> Result<CollectionDigest, ReadError> {
        self.check_open()?;
        let name = CollectionName::new(collection)?;
        let shared = self.inner.shared.clone();
        let found = self
            .inner
            .shared
            .read(move |storage| {
                let mut cache = shared
                    .digest_caches
                    .lock()
                    .map(|mut caches| caches.remove(&name).unwrap_or_default())
                    .unwrap_or_default();
                let digest = collection_digest(storage, &name, &mut cache)?;
                if let Ok(mut caches) = shared.digest_caches.lock() {
                    let kept: usize = caches.values().map(DigestCache::len).sum();
                    if kept + cache.len() > MAX_DIGEST_CACHE_DOCUMENTS {
                        caches.clear();
                    }
                    caches.insert(name, cache);
                }
                Ok(digest)
            })
            .await?;
        found.ok_or_else(|| ReadError::CollectionNotFound {
            collection: collection.to_owned(),
        })
    }

    /// A document's digest at the collection's current head (see
    /// `seqsync_engine::DocumentDigest`): `Ok(None)` while it holds pending
    /// structures; the fixed tombstone digest for a deleted document.
    /// Errors: `DocumentNotFound`, `InvalidName`, `Storage`.
    pub async fn document_digest(
        &self,
        collection: &str,
        doc: &str,
    ) -> Result<Option<DocumentDigest>, ReadError> {
        self.check_open()?;
        let name = CollectionName::new(collection)?;
        let doc = DocId::new(doc)?;
        let at = self
            .inner
            .shared
            .read(move |storage| {
                let head = storage.collection(&name)?.map_or(0, |m| m.head);
                Ok((document_digest_at(storage, &name, &doc, head)?, doc))
            })
            .await?;
        match at {
            (DocumentDigestAt::Missing, doc) => Err(ReadError::DocumentNotFound {
                doc: doc.to_string(),
            }),
            (DocumentDigestAt::Pending, _) => Ok(None),
            (DocumentDigestAt::Digest(digest), _) => Ok(Some(digest)),
        }
    }

    /// Exports the changes of `collection` with seq in `(after, until]`
    /// (`until`: the head when the export starts, or less) as a bundle in
    /// `dir` (docs/BUNDLES.md), while pushes continue.
    ///
    /// Runs on a thread of its own (never an arbiter or the read pool);
    /// consistent as of that head, never holding a read transaction longer
    /// than one page. Errors: [`BundleError`] (`Io`, `Storage`, a directory
    /// that holds a bundle already, a collection that does not exist).
    pub async fn export(
        &self,
        collection: &str,
        after: Seq,
        until: Option<Seq>,
        dir: impl Into<std::path::PathBuf>,
        options: ExportOptions,
    ) -> Result<ExportReport, BundleError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(BundleError::ShuttingDown);
        }
        let name = CollectionName::new(collection)?;
        let dir = dir.into();
        let storage = self.inner.shared.storage.clone();
        run_on_thread("seqsync-export", move || {
            export_collection(&*storage, &name, after, until, &dir, options, &mut |_| {})
        })
        .await
    }

    /// A consistent backup of every collection into `dir`: one bundle per
    /// collection under `dir/<collection>/`, each at that collection's head
    /// when its turn comes, with the state batch, plus `backup.json` listing
    /// them (written last). Pushes continue meanwhile; none is blocked
    /// longer than a read transaction. Restore with
    /// `seqsync_engine::bundle::import_bundle` (or `seqsync restore`) into
    /// any backend.
    ///
    /// Errors: [`BundleError`].
    pub async fn backup(
        &self,
        dir: impl Into<std::path::PathBuf>,
    ) -> Result<Vec<ExportReport>, BundleError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(BundleError::ShuttingDown);
        }
        let dir = dir.into();
        let storage = self.inner.shared.storage.clone();
        run_on_thread("seqsync-backup", move || {
            seqsync_engine::bundle::backup_store(
                &*storage,
                &dir,
                ExportOptions::default(),
                &mut |_| {},
            )
        })
        .await
    }

    /// Everything a client needs for a cold start in one call: per live
    /// document what it lacks given its state vector (`state_vectors`
    /// maps document ids to Yjs v1 state vectors; a missing entry means
    /// "send the full state"), the deleted documents, and the cursor to
    /// stream from. Errors: `InvalidName`, `InvalidStateVector`, `Storage`,
    /// `DocumentUnreadable` (naming the first such document).
    pub async fn recover_collection(
        &self,
        collection: &str,
        state_vectors: HashMap<String, Vec<u8>>,
    ) -> Result<CollectionRecovery, ReadError> {
        self.check_open()?;
        let name = CollectionName::new(collection)?;
        let latest = self.schema_version();
        let mut svs = HashMap::with_capacity(state_vectors.len());
        for (doc, sv) in state_vectors {
            let doc = DocId::new(doc)?;
            svs.insert(
                doc,
                decode_state_vector(&sv).map_err(ReadError::InvalidStateVector)?,
            );
        }
        let recovery = self
            .inner
            .shared
            .read(move |storage| {
                let meta = storage.collection(&name)?;
                let head = meta.as_ref().map_or(0, |m| m.head);
                let mut recovery = CollectionRecovery {
                    documents: Vec::new(),
                    deleted: Vec::new(),
                    cursor: head,
                    schema_version: meta.as_ref().map_or(latest, |m| m.schema_version),
                    epoch: meta.map(|m| m.epoch),
                };
                for info in storage.documents(&name)? {
                    if info.deleted {
                        recovery.deleted.push(info.doc);
                        continue;
                    }
                    let Some(loaded) = load_document(storage, &name, &info.doc)? else {
                        continue;
                    };
                    let state = &loaded.state;
                    if state.deleted {
                        recovery.deleted.push(info.doc);
                        continue;
                    }
                    if let Err(reason) = state.check_readable() {
                        return Ok(Err(ReadError::DocumentUnreadable {
                            doc: info.doc.to_string(),
                            reason,
                        }));
                    }
                    let update = match svs.get(&info.doc) {
                        Some(sv) => state.encode_diff(sv),
                        None => state.encode_state(),
                    };
                    recovery.cursor = recovery.cursor.min(served_cursor(&loaded, head));
                    recovery.documents.push((info.doc, update));
                }
                Ok(Ok(recovery))
            })
            .await?;
        recovery
    }
}
