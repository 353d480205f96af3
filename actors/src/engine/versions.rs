//! Named versions: a document's current version pinned under a name, so
//! "the contract as signed" stays readable exactly however much the
//! document changes and compacts afterwards.
//!
//! A pin is metadata beside the log ([`Storage::put_pin`]), not a change:
//! clients never see it. What keeps the version readable is compaction:
//! the compactor reads a document's pins and cuts its history at each of
//! them (a full snapshot at every pinned seq), and storage refuses to apply
//! a compaction planned before a pin that would fold across it. The one
//! race left is a compaction that committed between reading the document's
//! latest seq and storing the pin; the pin is then checked against the log
//! and taken again at the new latest seq.
//!
//! [`Storage::put_pin`]: seqsync_engine::Storage::put_pin

use seqsync_engine::{
    check_author, check_version_name, now_ms, ChangeKind, CollectionName, DocId, Pin, ReadError,
    Seq, StorageError,
};

use super::Engine;

/// Attempts at pinning when a compaction keeps folding the seq just read
/// (each attempt reads the latest seq again).
const PIN_ATTEMPTS: usize = 3;
/// Most named versions per document: each keeps a full snapshot of the
/// document through compaction.
pub const MAX_VERSIONS_PER_DOCUMENT: usize = 100;

impl Engine {
    /// Pins the document's current version under `name` (replacing a
    /// version of that name): its latest change's seq, recorded with the
    /// time and `author`. Read it back with [`Engine::document_at`] at the
    /// returned seq; compaction keeps it exact.
    ///
    /// Async; runs on the read pool. Durable like a commit when it returns.
    /// Errors: `InvalidName` (collection, document, version name or author),
    /// `CollectionNotFound`, `DocumentNotFound`, `DocumentDeleted`,
    /// `TooManyVersions`, `Storage`.
    pub async fn pin_version(
        &self,
        collection: &str,
        doc: &str,
        name: &str,
        author: Option<String>,
    ) -> Result<Pin, ReadError> {
        self.check_open()?;
        let collection = CollectionName::new(collection)?;
        let doc = DocId::new(doc)?;
        check_version_name(name)?;
        if let Some(author) = &author {
            check_author(author)?;
        }
        let name = name.to_owned();
        self.inner
            .shared
            .read(move |storage| {
                if storage.collection(&collection)?.is_none() {
                    return Ok(Err(ReadError::CollectionNotFound {
                        collection: collection.to_string(),
                    }));
                }
                let existing = storage.pins(&collection, Some(&doc))?;
                if existing.len() >= MAX_VERSIONS_PER_DOCUMENT
                    && !existing.iter().any(|p| p.name == name)
                {
                    return Ok(Err(ReadError::TooManyVersions {
                        doc: doc.to_string(),
                        max: MAX_VERSIONS_PER_DOCUMENT,
                    }));
                }
                for _ in 0..PIN_ATTEMPTS {
                    let Some((seq, kind)) = latest_change(storage, &collection, &doc)? else {
                        return Ok(Err(ReadError::DocumentNotFound {
                            doc: doc.to_string(),
                        }));
                    };
                    if kind == ChangeKind::Delete {
                        return Ok(Err(ReadError::DocumentDeleted {
                            doc: doc.to_string(),
                        }));
                    }
                    let pin = Pin {
                        doc: doc.clone(),
                        name: name.clone(),
                        seq,
                        created_ms: now_ms(),
                        author: author.clone(),
                    };
                    storage.put_pin(&collection, &pin)?;
                    // A compaction that committed between the read and the
                    // pin may have folded `seq` away; from now on none can.
                    if change_at(storage, &collection, &doc, seq)? {
                        return Ok(Ok(pin));
                    }
                }
                Ok(Err(ReadError::Storage(StorageError::backend(
                    storage.backend(),
                    "pinning a version",
                    "the document kept compacting under the pin; retry",
                ))))
            })
            .await?
    }

    /// The document's named versions, oldest seq first.
    ///
    /// Async; runs on the read pool. Errors: `InvalidName`,
    /// `CollectionNotFound`, `Storage`.
    pub async fn versions(&self, collection: &str, doc: &str) -> Result<Vec<Pin>, ReadError> {
        self.check_open()?;
        let collection = CollectionName::new(collection)?;
        let doc = DocId::new(doc)?;
        self.inner
            .shared
            .read(move |storage| {
                if storage.collection(&collection)?.is_none() {
                    return Ok(Err(ReadError::CollectionNotFound {
                        collection: collection.to_string(),
                    }));
                }
                Ok(Ok(storage.pins(&collection, Some(&doc))?))
            })
            .await?
    }

    /// The document's named version `name`; `None` when it has none of
    /// that name.
    ///
    /// Async; runs on the read pool. Errors: as [`Engine::versions`].
    pub async fn version(
        &self,
        collection: &str,
        doc: &str,
        name: &str,
    ) -> Result<Option<Pin>, ReadError> {
        let versions = self.versions(collection, doc).await?;
        Ok(versions.into_iter().find(|p| p.name == name))
    }

    /// Removes the named version `name` and answers it; `None` when the
    /// document has none of that name. Compaction may then fold it away.
    ///
    /// Async; runs on the read pool. Errors: `InvalidName`,
    /// `CollectionNotFound`, `Storage`.
    pub async fn delete_version(
        &self,
        collection: &str,
        doc: &str,
        name: &str,
    ) -> Result<Option<Pin>, ReadError> {
        let Some(pin) = self.version(collection, doc, name).await? else {
            return Ok(None);
        };
        let collection = CollectionName::new(collection)?;
        let doc = pin.doc.clone();
        let pin_name = pin.name.clone();
        let removed = self
            .inner
            .shared
            .read(move |storage| storage.delete_pin(&collection, &doc, &pin_name))
            .await?;
        Ok(removed.then_some(pin))
    }
}

/// The document's latest stored change: its seq and kind.
fn latest_change(
    storage: &dyn seqsync_engine::Storage,
    collection: &CollectionName,
    doc: &DocId,
) -> Result<Option<(Seq, ChangeKind)>, StorageError> {
    let mut latest = None;
    storage.visit_document_changes(collection, doc, &mut |change| {
        latest = Some((change.seq, change.kind));
        std::ops::ControlFlow::Continue(())
    })?;
    Ok(latest)
}

/// Whether the document has a stored change at exactly `seq`.
fn change_at(
    storage: &dyn seqsync_engine::Storage,
    collection: &CollectionName,
    doc: &DocId,
    seq: Seq,
) -> Result<bool, StorageError> {
    Ok(storage
        .read_document_changes(collection, doc, seq.saturating_sub(1), 1)?
        .and_then(|page| page.changes.into_iter().next())
        .is_some_and(|change| change.seq == seq))
}
