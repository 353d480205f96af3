//! Listings: the store's collections and a collection's documents, paged,
//! for the operators and tools that ask "what is in here?".
//!
//! Both read storage on the read pool, like the log: a listing shows what
//! is committed. Pages are bounded by `MAX_LISTING_PAGE` so one request
//! never holds a whole store of names; the answer names where to continue.

use seqsync_engine::{CollectionName, DocId, ReadError};

use crate::types::{CollectionInfo, CollectionsPage, DocumentsPage};

use super::Engine;

/// Most entries one listing page holds.
pub const MAX_LISTING_PAGE: usize = 1000;

impl Engine {
    /// Up to `limit` collections (clamped to 1..=[`MAX_LISTING_PAGE`]) in
    /// name order, starting after `after`, and the name to continue after
    /// when more may follow.
    ///
    /// Async; the read runs on the read pool. Errors: `InvalidName` for a
    /// malformed `after`, `Storage`.
    pub async fn collections(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<CollectionsPage, ReadError> {
        self.check_open()?;
        let after = after.map(CollectionName::new).transpose()?;
        let limit = limit.clamp(1, MAX_LISTING_PAGE);
        let listed = self
            .inner
            .shared
            .read(move |storage| storage.list_collections(after.as_ref(), limit))
            .await?;
        let next = (listed.len() == limit)
            .then(|| listed.last().map(|(name, _)| name.clone()))
            .flatten();
        Ok(CollectionsPage {
            collections: listed
                .into_iter()
                .map(|(name, meta)| CollectionInfo {
                    name,
                    head: meta.head,
                    created_ms: meta.created_ms,
                    schema_version: meta.schema_version,
                })
                .collect(),
            next,
        })
    }

    /// Up to `limit` documents of `collection` (clamped to
    /// 1..=[`MAX_LISTING_PAGE`]) in id order, starting after `after`: each
    /// with its last seq, whether it is deleted and its stored size, and
    /// the id to continue after when more may follow.
    ///
    /// Async; the read runs on the read pool and seeks to `after` in the
    /// document index (`Storage::documents_page`). Errors:
    /// `CollectionNotFound`, `InvalidName`, `Storage`.
    pub async fn documents(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<DocumentsPage, ReadError> {
        self.check_open()?;
        let name = CollectionName::new(collection)?;
        let after = after.map(DocId::new).transpose()?;
        let limit = limit.clamp(1, MAX_LISTING_PAGE);
        // One more than asked: whether another page follows.
        let found = self
            .inner
            .shared
            .read(move |storage| {
                if storage.collection(&name)?.is_none() {
                    return Ok(None);
                }
                Ok(Some(storage.documents_page(
                    &name,
                    after.as_ref(),
                    limit + 1,
                )?))
            })
            .await?;
        let Some(mut documents) = found else {
            return Err(ReadError::CollectionNotFound {
                collection: collection.to_owned(),
            });
        };
        let more = documents.len() > limit;
        documents.truncate(limit);
        let next = more
            .then(|| documents.last().map(|d| d.doc.clone()))
            .flatten();
        Ok(DocumentsPage { documents, next })
    }
}
