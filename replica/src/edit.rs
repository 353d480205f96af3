//! Local edits and reads: an edit is applied to the document, appended to
//! the local log as a change of origin `local` and durable before the call
//! returns; it then waits in the outbox (`outbox.rs`).
//!
//! Why an edit cache: `edit` runs the app's closure on a loaded `Doc`
//! under this replica's client id. Replaying a document from the local
//! store for every keystroke would cost its whole history, so the last
//! `MAX_CACHED_DOCS` edited documents stay loaded; anything that changes a
//! document another way (a pull, a raw local update, a migration, a
//! recovery) drops its entry, so the cache never holds a state the store
//! does not. (A compaction changes how a document is stored, not what it
//! is: entries stay.)
//!
//! Local compaction lives here too: it folds what the server has
//! acknowledged into snapshots and never touches the outbox.

use seqsync_engine::{
    plan_compaction, CollectionName, Compaction, DocId, PeerId, Storage, WriteBatch,
};
use yrs::updates::decoder::Decode;
use yrs::{Doc, Transact, TransactionMut, Update};

use crate::error::ReplicaError;
use crate::local_log::{append, append_write, Item};
use crate::local_migration::MIGRATE_BATCH_DOCS;
use crate::replica::{apply_bytes, doc_id, invalid, name, Local, Replica, LOCAL, MIGRATION};
use crate::report::LocalCompaction;
use crate::transport::Transport;

/// Documents kept loaded for `edit`.
pub(crate) const MAX_CACHED_DOCS: usize = 64;

impl<T: Transport> Replica<T> {
    /// Applies a local update (Yjs v1) to document `doc` of `collection`:
    /// durable in the local store before it returns, and queued in the
    /// outbox for the next sync. A no-op update is not queued.
    ///
    /// Errors: `InvalidName`, `InvalidUpdate`, `Local`.
    pub async fn apply_local(
        &self,
        collection: &str,
        doc: &str,
        update: Vec<u8>,
    ) -> Result<(), ReplicaError> {
        let c = name(collection)?;
        let d = doc_id(doc)?;
        Update::decode_v1(&update).map_err(|e| ReplicaError::InvalidUpdate {
            doc: doc.to_owned(),
            reason: e.to_string(),
        })?;
        let _guard = self.writer.lock().await;
        let version = self.editable_version(&c).await?;
        self.local.forget(&c, &d);
        self.blocking(move |local| {
            append(
                &*local.storage,
                &c,
                vec![Item::new(d, update, LOCAL, version)],
            )
        })
        .await?;
        self.local_edits.notify_one();
        Ok(())
    }

    /// Applies many local updates in one local commit (an import, or a
    /// burst of edits made while the app held them in memory): durable
    /// before it returns, all or nothing, queued in the outbox in order.
    ///
    /// Errors: `InvalidName`, `InvalidUpdate` (nothing is written), `Local`.
    pub async fn apply_local_batch(
        &self,
        collection: &str,
        updates: Vec<(String, Vec<u8>)>,
    ) -> Result<(), ReplicaError> {
        let c = name(collection)?;
        let mut items = Vec::with_capacity(updates.len());
        for (doc, update) in updates {
            let d = doc_id(&doc)?;
            Update::decode_v1(&update).map_err(|e| ReplicaError::InvalidUpdate {
                doc: doc.clone(),
                reason: e.to_string(),
            })?;
            items.push((d, update));
        }
        let _guard = self.writer.lock().await;
        let version = self.editable_version(&c).await?;
        let items: Vec<Item> = items
            .into_iter()
            .map(|(d, update)| Item::new(d, update, LOCAL, version))
            .collect();
        for item in &items {
            self.local.forget(&c, &item.doc);
        }
        self.blocking(move |local| append(&*local.storage, &c, items))
            .await?;
        self.local_edits.notify_one();
        Ok(())
    }

    /// Edits document `doc` in a yrs transaction under this replica's client
    /// id, then applies the result as [`Replica::apply_local`]. Returns the
    /// update written (empty if the edit changed nothing).
    ///
    /// Errors: as `apply_local`.
    pub async fn edit(
        &self,
        collection: &str,
        doc: &str,
        f: impl FnOnce(&mut TransactionMut<'_>),
    ) -> Result<Vec<u8>, ReplicaError> {
        let c = name(collection)?;
        let d = doc_id(doc)?;
        let _guard = self.writer.lock().await;
        let version = self.editable_version(&c).await?;
        let key = (c.clone(), d.clone());
        let cached = self.local.editing.lock().ok().and_then(|mut e| e.pop(&key));
        let working = match cached {
            Some(doc) => doc,
            None => {
                let state = {
                    let (c, d) = (c.clone(), d.clone());
                    self.blocking(move |local| local.local_state(&c, &d))
                        .await?
                };
                let working = Doc::with_options(yrs::Options {
                    client_id: yrs::ClientID::new(self.local.client_id),
                    offset_kind: yrs::OffsetKind::Utf16,
                    ..yrs::Options::default()
                });
                apply_bytes(&working, &state, doc)?;
                working
            }
        };
        let update = {
            let mut txn = working.transact_mut();
            f(&mut txn);
            if txn.insert_set().is_empty() && txn.delete_set().is_empty() {
                None
            } else {
                Some(txn.encode_update_v1())
            }
        };
        // Only a committed edit leaves the working copy cached: on a failed
        // commit it is dropped, so memory never runs ahead of the store.
        let Some(update) = update else {
            self.local.keep(key, working);
            return Ok(Vec::new());
        };
        let item = Item::new(d, update.clone(), LOCAL, version);
        self.blocking(move |local| append(&*local.storage, &c, vec![item]))
            .await?;
        self.local.keep(key, working);
        self.local_edits.notify_one();
        Ok(update)
    }

    /// The local state of a document as one Yjs v1 update (empty document
    /// if it was never written).
    ///
    /// Blocking read of the local store. Errors: `InvalidName`, `Local`.
    pub fn document(&self, collection: &str, doc: &str) -> Result<Vec<u8>, ReplicaError> {
        self.local.local_state(&name(collection)?, &doc_id(doc)?)
    }

    /// The documents of `collection` the replica holds (deleted ones
    /// included, flagged), in id order.
    ///
    /// Blocking read of the local store. Errors: `InvalidName`, `Local`.
    pub fn documents(&self, collection: &str) -> Result<Vec<(String, bool)>, ReplicaError> {
        let c = name(collection)?;
        Ok(self
            .local
            .storage
            .documents(&c)?
            .into_iter()
            .map(|d| (d.doc.to_string(), d.deleted))
            .collect())
    }

    /// Local edits of `collection` not yet acknowledged by the server.
    ///
    /// Blocking read of the local store. Errors: `InvalidName`, `Local`.
    pub fn outbox_len(&self, collection: &str) -> Result<u64, ReplicaError> {
        let c = name(collection)?;
        let state = self.local.sync_state(&c)?;
        Ok(self
            .local
            .outbox(&c, &state)?
            .iter()
            .filter(|item| !item.migration)
            .count() as u64)
    }

    /// Compacts the local log of `collection`: the part of each document's
    /// history the server has confirmed (pulled changes, acknowledged local
    /// edits) becomes one snapshot, as the server's compaction does. Unpushed
    /// edits (the outbox) and provisional migration output stay as they
    /// are. Call it after syncs now and then (the log otherwise keeps every
    /// update, like the server's without compaction).
    ///
    /// Local I/O on the blocking pool, commits of at most 256 documents.
    /// Errors: `InvalidName`, `Local`, `InvalidUpdate` (a stored change
    /// does not decode; nothing of that document is changed).
    pub async fn compact(&self, collection: &str) -> Result<LocalCompaction, ReplicaError> {
        let c = name(collection)?;
        let _guard = self.writer.lock().await;
        self.blocking(move |local| local.compact(&c)).await
    }
}

impl Local {
    pub(crate) fn keep(&self, key: (CollectionName, DocId), doc: Doc) {
        if let Ok(mut editing) = self.editing.lock() {
            editing.put(key, doc);
        }
    }

    /// Drops a document from the edit cache (it changed some other way).
    pub(crate) fn forget(&self, c: &CollectionName, d: &DocId) {
        if let Ok(mut editing) = self.editing.lock() {
            editing.pop(&(c.clone(), d.clone()));
        }
    }

    /// [`Replica::compact`] under the writer lock. Blocking.
    pub(crate) fn compact(&self, c: &CollectionName) -> Result<LocalCompaction, ReplicaError> {
        let c = c.clone();
        let state = self.sync_state(&c)?;
        let mut report = LocalCompaction::default();
        let mut plans = Vec::new();
        for info in self.storage.documents(&c)? {
            let changes = self.storage.document_changes(&c, &info.doc)?;
            let first = state.provisional.get(info.doc.as_str()).copied();
            let keep_from = changes
                .iter()
                .filter(|ch| {
                    let origin = ch.origin.as_ref().map(PeerId::as_str);
                    (origin == Some(LOCAL) && ch.seq > state.pushed_through)
                        || (origin == Some(MIGRATION) && first.is_some_and(|f| ch.seq >= f))
                })
                .map(|ch| ch.seq)
                .min();
            if info.deleted && keep_from.is_some() {
                // A tombstone's compaction drops everything before it,
                // whatever the cutoff: keep the unpushed edits.
                continue;
            }
            let cutoff = keep_from.map_or(info.last_seq, |seq| seq.saturating_sub(1));
            // A replica keeps no named versions (they are the server's).
            let plan = plan_compaction(&info.doc, &changes, cutoff, state.local_version, &[])
                .map_err(|e| invalid(&info.doc, e))?;
            let Some(plan) = plan else { continue };
            report.documents += 1;
            report.changes_removed += plan.changes_removed;
            report.bytes_before += plan.bytes_before;
            report.bytes_after += plan.bytes_after;
            plans.extend(plan.compactions);
            if plans.len() >= MIGRATE_BATCH_DOCS {
                self.commit_compactions(&c, std::mem::take(&mut plans))?;
            }
        }
        if !plans.is_empty() {
            self.commit_compactions(&c, plans)?;
        }
        Ok(report)
    }

    pub(crate) fn commit_compactions(
        &self,
        c: &CollectionName,
        compact: Vec<Compaction>,
    ) -> Result<(), ReplicaError> {
        let mut write = append_write(&*self.storage, c, Vec::new())?;
        write.compact = compact;
        self.storage.commit(&WriteBatch {
            writes: vec![write],
        })?;
        Ok(())
    }
}
