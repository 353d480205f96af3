//! The `Storage` trait: everything the engine needs from a backend.
//!
//! The trait is synchronous and blocking on purpose. Backends are embedded
//! databases (SQLite, redb) whose calls block on disk I/O; the runtime calls
//! them from dedicated threads, never from an async executor or an actor's
//! arbiter. A future network backend (PostgreSQL protocol) fits the same shape
//! with a blocking client.
//!
//! Writes go through one call, [`Storage::commit`], that takes a
//! [`WriteBatch`]: the appends, compactions and peer updates of any number of
//! collections, committed in **one** transaction (one fsync). That is what
//! lets the runtime group-commit many pushes from many collections. Each
//! [`CollectionWrite`] names the state it was computed against
//! ([`WriteBase`]); a backend refuses the whole batch if the stored state
//! differs, so two writers can never interleave seqs, and it refuses any write
//! that would break the log's invariants (gaps, snapshots that replace
//! nothing). The checks every backend shares live in [`plan_collection_write`].
//!
//! Reads are consistent snapshots: a page of changes and the collection head
//! returned with it come from one read transaction, so a reader never sees
//! seq `s + 1` without `s`.

use std::collections::HashSet;
use std::ops::ControlFlow;

use crate::change::{
    now_ms, Change, ChangeKind, CollectionMeta, DocumentInfo, Epoch, PeerRecord, Pin, Seq,
};
use crate::config::Durability;
use crate::error::StorageError;
use crate::name::{CollectionName, DocId};

/// A page of a collection's log with the metadata it was read under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangesPage {
    /// The collection's metadata in the same snapshot as `changes`.
    pub meta: CollectionMeta,
    /// Changes with seq > the requested cursor, in seq order, at most the
    /// requested limit.
    pub changes: Vec<Change>,
}

/// Everything committed by one call of [`Storage::commit`], atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// One entry per collection; a collection may appear at most once.
    pub writes: Vec<CollectionWrite>,
}

/// The writes to one collection within a [`WriteBatch`], applied in order:
/// appends, then compactions, then peer updates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectionWrite {
    /// The collection written.
    pub collection: CollectionName,
    /// The stored state this write was computed against.
    pub base: WriteBase,
    /// New changes; their seqs must continue the head without a gap.
    pub append: Vec<Change>,
    /// Snapshots replacing covered changes.
    pub compact: Vec<Compaction>,
    /// Peer records to upsert: acked and last-seen become the max of stored
    /// and given values.
    pub peers: Vec<PeerRecord>,
    /// Raise the collection's schema version to this (a migration's last
    /// commit). Never lower: a smaller version than the stored one is
    /// refused. `None` leaves it.
    pub raise_schema_version: Option<u32>,
    /// How `append` relates to the head; [`AppendMode::Next`] for every
    /// write but an import.
    pub append_mode: AppendMode,
}

/// How the changes of a [`CollectionWrite`] continue the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AppendMode {
    /// Seqs continue the head without a gap; the storage computes each
    /// change's log checksum.
    #[default]
    Next,
    /// An import of a history that may have been compacted: seqs strictly
    /// increase above the head (gaps allowed) and each change's
    /// `log_checksum` is taken as given (the importer verified it against
    /// the bundle it came from).
    Imported,
    /// An import under a new epoch: seqs strictly increase above the head
    /// (gaps allowed) and the log checksums are computed afresh, each change
    /// counted as itself (what a compacted history summed is not known
    /// under another epoch).
    Rebased,
}

/// The state a [`CollectionWrite`] expects to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteBase {
    /// The collection must not exist yet; it is created with this epoch and
    /// schema version.
    Create {
        /// Epoch of the new collection.
        epoch: Epoch,
        /// Schema version of the new collection.
        schema_version: u32,
    },
    /// The collection must exist with exactly this epoch and head.
    Existing {
        /// Expected epoch.
        epoch: Epoch,
        /// Expected head.
        head: Seq,
    },
}

/// Replace a document's covered history by one snapshot (docs/DESIGN.md, "Compaction").
///
/// Every change of `doc` with seq in `(after, through]` whose kind is
/// `Update` or `Snapshot` is removed. If `snapshot` is given, a `Snapshot`
/// change with seq `through` and that payload takes their place; then a
/// change of `doc` with seq `through` (kind `Update` or `Snapshot`) must
/// exist, otherwise the batch is refused. `Delete` changes (tombstones) are
/// never removed.
///
/// A compaction whose range strictly holds a pinned seq of its document
/// (`after < pin.seq < through`, see [`Storage::put_pin`]) is not applied
/// (the rest of the write is): the pinned version must stay readable, and
/// a pin stored after the compaction was planned is honoured this way. The
/// next compaction plans around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compaction {
    /// The document compacted.
    pub doc: DocId,
    /// Changes at or below this seq are kept (0: from the start). The
    /// changes below a pinned version stay apart from the ones after it.
    pub after: Seq,
    /// Highest seq covered.
    pub through: Seq,
    /// The merged state (Yjs v1 update), or `None` to drop the covered
    /// changes without replacement (a tombstoned document).
    pub snapshot: Option<Vec<u8>>,
    /// Schema version recorded on the snapshot change.
    pub schema_version: u32,
}

/// What [`Storage::watch_commits`] calls: a collection another node
/// committed to, its head after that commit, and when that node committed
/// (ms since the Unix epoch on its clock) if the backend knows.
pub type CommitWatcher = std::sync::Arc<dyn Fn(&CollectionName, Seq, Option<u64>) + Send + Sync>;

thread_local! {
    /// Whether this thread declared, through [`on_blocking_thread`], that it
    /// may block on storage although an async runtime is current.
    static MAY_BLOCK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `work` declaring that the current thread may block on storage
/// although an async runtime is current on it: a thread of a runtime's
/// blocking pool (tokio's `spawn_blocking`), where blocking is what the
/// thread is for. A backend that refuses blocking calls on a runtime's
/// threads (PostgreSQL: on a thread driving async tasks it would stall
/// them) accepts them inside, and still refuses them everywhere else.
///
/// Never call it on a thread that drives async tasks: the declaration is
/// trusted, not checked. Nests; the declaration ends with `work`, even if
/// it panics.
pub fn on_blocking_thread<R>(work: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            MAY_BLOCK.with(|flag| flag.set(self.0));
        }
    }
    let _restore = Restore(MAY_BLOCK.with(|flag| flag.replace(true)));
    work()
}

/// Whether the current thread is inside [`on_blocking_thread`]. For
/// backends deciding whether a blocking call is allowed here.
pub fn declared_blocking_thread() -> bool {
    MAY_BLOCK.with(|flag| flag.get())
}

/// A storage backend. See the module docs for the model.
///
/// Every method blocks the calling thread on I/O. Implementations must be
/// safe to call from many threads at once; reads may run concurrently with a
/// commit and see either all or nothing of it.
pub trait Storage: Send + Sync + 'static {
    /// Short backend name for logs and metrics (`sqlite`, `redb`, `memory`).
    fn backend(&self) -> &'static str;

    /// The durability [`Storage::commit`] provides.
    fn durability(&self) -> Durability;

    /// The collection's metadata, `None` if it does not exist.
    fn collection(&self, name: &CollectionName) -> Result<Option<CollectionMeta>, StorageError>;

    /// Up to `limit` collections in name order, starting after `after`.
    /// Paged so that 100,000 collections never have to sit in memory at once.
    fn list_collections(
        &self,
        after: Option<&CollectionName>,
        limit: usize,
    ) -> Result<Vec<(CollectionName, CollectionMeta)>, StorageError>;

    /// Up to `limit` changes with seq > `after`, in seq order, with the
    /// metadata of the same snapshot. `None` if the collection does not exist.
    fn read_changes(
        &self,
        name: &CollectionName,
        after: Seq,
        limit: usize,
    ) -> Result<Option<ChangesPage>, StorageError>;

    /// Every stored change of one document, in seq order (empty if none).
    fn document_changes(
        &self,
        name: &CollectionName,
        doc: &DocId,
    ) -> Result<Vec<Change>, StorageError>;

    /// Hands every stored change of one document to `visit`, in seq order,
    /// all from one read snapshot (the changes [`Storage::document_changes`]
    /// returns), until `visit` answers [`ControlFlow::Break`].
    ///
    /// This is how a large document is loaded while it is still being read
    /// (see [`crate::load_document`]). The default collects
    /// [`Storage::document_changes`]; backends that can stream override it.
    fn visit_document_changes(
        &self,
        name: &CollectionName,
        doc: &DocId,
        visit: &mut dyn FnMut(Change) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        for change in self.document_changes(name, doc)? {
            if visit(change).is_break() {
                break;
            }
        }
        Ok(())
    }

    /// Up to `limit` changes of one document with seq > `after`, in seq
    /// order, with the collection's metadata. `None` if the collection does
    /// not exist. This is the catch-up read of a per-document subscription.
    ///
    /// The default reads the metadata, then visits the document's changes
    /// (two read snapshots: a commit in between may add changes newer than
    /// `meta.head`, which the caller must ignore, as subscriptions do).
    /// Backends with an index on (document, seq) override it to seek
    /// straight to `after`.
    fn read_document_changes(
        &self,
        name: &CollectionName,
        doc: &DocId,
        after: Seq,
        limit: usize,
    ) -> Result<Option<ChangesPage>, StorageError> {
        let Some(meta) = self.collection(name)? else {
            return Ok(None);
        };
        let mut changes = Vec::new();
        if limit > 0 {
            self.visit_document_changes(name, doc, &mut |change| {
                if change.seq > after {
                    changes.push(change);
                }
                if changes.len() >= limit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })?;
        }
        Ok(Some(ChangesPage { meta, changes }))
    }

    /// Every document of the collection that has at least one stored change,
    /// in id order.
    fn documents(&self, name: &CollectionName) -> Result<Vec<DocumentInfo>, StorageError>;

    /// Up to `limit` documents of [`Storage::documents`] with an id after
    /// `after`, in id order: one page of a listing, without holding every
    /// document of a large collection in memory.
    ///
    /// The default filters `documents`; backends with an index by document
    /// override it to seek to `after` and stop after `limit`.
    fn documents_page(
        &self,
        name: &CollectionName,
        after: Option<&DocId>,
        limit: usize,
    ) -> Result<Vec<DocumentInfo>, StorageError> {
        Ok(self
            .documents(name)?
            .into_iter()
            .filter(|info| after.is_none_or(|a| info.doc.as_str() > a.as_str()))
            .take(limit)
            .collect())
    }

    /// The collection's peers in id order.
    fn peers(&self, name: &CollectionName) -> Result<Vec<PeerRecord>, StorageError>;

    /// The collection's pinned versions (of one document when `doc` is
    /// given), ordered by document, then seq, then name. Empty for a
    /// collection that does not exist.
    ///
    /// Blocking. Errors: the backend's failure.
    fn pins(&self, name: &CollectionName, doc: Option<&DocId>) -> Result<Vec<Pin>, StorageError>;

    /// Stores a pinned version, replacing the document's pin of the same
    /// name. From then on no compaction folds the document's history across
    /// `pin.seq` (see [`Compaction`]). Committed like a write batch, with
    /// the store's durability.
    ///
    /// Blocking. Errors: `InvalidWrite` when the collection does not exist;
    /// the backend's failure.
    fn put_pin(&self, name: &CollectionName, pin: &Pin) -> Result<(), StorageError>;

    /// Removes the document's pin named `pin_name`; `false` when there was
    /// none. Compaction may then fold the version away.
    ///
    /// Blocking. Errors: the backend's failure.
    fn delete_pin(
        &self,
        name: &CollectionName,
        doc: &DocId,
        pin_name: &str,
    ) -> Result<bool, StorageError>;

    /// Commits the whole batch in one transaction, or nothing of it.
    ///
    /// Returns once the batch is committed with [`Storage::durability`]. On
    /// error nothing of the batch is stored. Errors: [`StorageError::Conflict`]
    /// when a base does not match, [`StorageError::InvalidWrite`] when the
    /// batch breaks an invariant, otherwise the backend's failure.
    fn commit(&self, batch: &WriteBatch) -> Result<(), StorageError>;

    /// Commits a group of collections' writes, each collection standing
    /// alone: a write refused for a reason of its own collection
    /// ([`StorageError::is_refusal`]: its base moved, another node owns it,
    /// it breaks an invariant) stores nothing and gets its error, and every
    /// other write of the batch commits. This is how the engine's writer
    /// commits a group, so one collection's trouble never fails another's
    /// pushes.
    ///
    /// Returns one result per write of `batch`, in order, once the
    /// successful ones are committed with [`Storage::durability`]. The outer
    /// error is a failure of the store itself (I/O, a lost connection), or
    /// a batch that is malformed as a whole: then nothing of the batch is
    /// stored.
    ///
    /// The default commits the batch in one transaction and, when it is
    /// refused, each write alone in a transaction of its own (one commit per
    /// collection, but only on that rare path). Backends whose transactions
    /// can roll back part of their work (PostgreSQL's savepoints) override
    /// it to keep one transaction either way.
    fn commit_each(
        &self,
        batch: &WriteBatch,
    ) -> Result<Vec<Result<(), StorageError>>, StorageError> {
        check_batch_shape(batch)?;
        match self.commit(batch) {
            Ok(()) => Ok(vec![Ok(()); batch.writes.len()]),
            Err(err) if err.is_refusal() && batch.writes.len() == 1 => Ok(vec![Err(err)]),
            Err(err) if err.is_refusal() => Ok(batch
                .writes
                .iter()
                .map(|write| {
                    self.commit(&WriteBatch {
                        writes: vec![write.clone()],
                    })
                })
                .collect()),
            Err(err) => Err(err),
        }
    }

    /// Makes every commit so far durable, whatever the durability mode (the
    /// engine calls it at shutdown). A no-op with `immediate` durability.
    fn sync(&self) -> Result<(), StorageError>;

    /// The engine no longer writes collection `name` for now (its actor
    /// unloaded, or the engine shuts down): a backend shared by several
    /// nodes gives up its write lease so another node may take it at once.
    /// Embedded backends have nothing to release.
    ///
    /// Blocking. Errors: the backend's failure (the lease then expires by
    /// itself).
    fn release_collection(&self, name: &CollectionName) -> Result<(), StorageError> {
        let _ = name;
        Ok(())
    }

    /// Calls `on_commit(collection, head, committed_ms)` from a thread of the backend's
    /// whenever *another* writer of a shared store (another engine node)
    /// has committed to a collection, so the engine can bring its cached
    /// state and live subscribers up to it. At least once per commit group
    /// of the other node, with a poll every second or so as a fallback for
    /// a missed notification; never for this store's own commits. Embedded
    /// backends have no other writer and never call it.
    ///
    /// Errors: the backend could not start watching (the engine then runs
    /// without cross-node live updates and says so).
    fn watch_commits(&self, on_commit: CommitWatcher) -> Result<(), StorageError> {
        let _ = on_commit;
        Ok(())
    }
}

/// What [`plan_collection_write`] found a write to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedWrite {
    /// The collection's metadata after the write (head, log checksum,
    /// schema version).
    pub meta: CollectionMeta,
    /// The log checksum through each appended change, in order: what the
    /// backend stores with it ([`Change::log_checksum`]).
    pub append_checksums: Vec<u64>,
}

/// Checks one [`CollectionWrite`] against the stored metadata and returns the
/// metadata to store after it, with the running log checksum of each
/// appended change. Shared by every backend so they refuse the same writes
/// with the same errors and agree on every checksum.
///
/// Does not check what needs the stored changes (that a compaction's target
/// exists): backends do that themselves.
pub fn plan_collection_write(
    write: &CollectionWrite,
    stored: Option<&CollectionMeta>,
) -> Result<PlannedWrite, StorageError> {
    let conflict = |detail: String| StorageError::Conflict {
        collection: write.collection.to_string(),
        detail,
    };
    let mut meta = match (write.base, stored) {
        (WriteBase::Create { .. }, Some(found)) => {
            return Err(conflict(format!(
                "expected no collection, found one with epoch {} and head {}",
                found.epoch, found.head
            )))
        }
        (
            WriteBase::Create {
                epoch,
                schema_version,
            },
            None,
        ) => CollectionMeta {
            epoch,
            head: 0,
            schema_version,
            created_ms: now_ms(),
            log_checksum: 0,
        },
        (WriteBase::Existing { epoch, head }, None) => {
            return Err(conflict(format!(
                "expected epoch {epoch} at head {head}, found no collection"
            )))
        }
        (WriteBase::Existing { epoch, head }, Some(found)) => {
            if found.epoch != epoch || found.head != head {
                return Err(conflict(format!(
                    "expected epoch {epoch} at head {head}, found epoch {} at head {}",
                    found.epoch, found.head
                )));
            }
            found.clone()
        }
    };
    if let Some(version) = write.raise_schema_version {
        if version < meta.schema_version {
            return Err(StorageError::InvalidWrite(format!(
                "collection {}: schema version {version} would lower the stored {}",
                write.collection, meta.schema_version
            )));
        }
        meta.schema_version = version;
    }
    let mut append_checksums = Vec::with_capacity(write.append.len());
    for change in &write.append {
        let expected = meta.head + 1;
        let continues = match write.append_mode {
            AppendMode::Next => change.seq == expected,
            AppendMode::Imported | AppendMode::Rebased => change.seq >= expected,
        };
        if !continues {
            return Err(StorageError::InvalidWrite(format!(
                "collection {}: appended seq {} where {expected} was next",
                write.collection, change.seq
            )));
        }
        if change.kind == ChangeKind::Delete && !change.payload.is_empty() {
            return Err(StorageError::InvalidWrite(format!(
                "collection {}: delete at seq {} carries a payload",
                write.collection, change.seq
            )));
        }
        meta.head = change.seq;
        meta.log_checksum = match write.append_mode {
            AppendMode::Imported => change.log_checksum,
            AppendMode::Next | AppendMode::Rebased => {
                crate::digest::next_log_checksum(&meta.epoch, meta.log_checksum, change)
            }
        };
        append_checksums.push(meta.log_checksum);
    }
    let mut compacted = std::collections::HashMap::new();
    for compaction in &write.compact {
        if compaction.after >= compaction.through {
            return Err(StorageError::InvalidWrite(format!(
                "collection {}: compaction of {} over the empty range ({}, {}]",
                write.collection, compaction.doc, compaction.after, compaction.through
            )));
        }
        if compaction.through == 0 || compaction.through > meta.head {
            return Err(StorageError::InvalidWrite(format!(
                "collection {}: compaction of {} through seq {} outside 1..={}",
                write.collection, compaction.doc, compaction.through, meta.head
            )));
        }
        // A document may be compacted in several ranges (cut at its pinned
        // versions), in order and without overlap: each range starts at or
        // after the end of the previous one.
        if let Some(previous_through) = compacted.insert(&compaction.doc, compaction.through) {
            if compaction.after < previous_through {
                return Err(StorageError::InvalidWrite(format!(
                    "collection {}: document {} compacted over overlapping ranges in one write \
                     (({}, {}] after a range through {previous_through})",
                    write.collection, compaction.doc, compaction.after, compaction.through
                )));
            }
        }
    }
    for peer in &write.peers {
        if peer.acked > meta.head {
            return Err(StorageError::InvalidWrite(format!(
                "collection {}: peer {} acked {} beyond head {}",
                write.collection, peer.peer, peer.acked, meta.head
            )));
        }
    }
    Ok(PlannedWrite {
        meta,
        append_checksums,
    })
}

/// Refuses a batch that names a collection twice. Call before applying.
pub fn check_batch_shape(batch: &WriteBatch) -> Result<(), StorageError> {
    let mut seen = HashSet::new();
    for write in &batch.writes {
        if !seen.insert(&write.collection) {
            return Err(StorageError::InvalidWrite(format!(
                "collection {} appears twice in one batch",
                write.collection
            )));
        }
    }
    Ok(())
}

/// Whether a stored change is removed by `compaction` (see [`Compaction`]).
pub fn is_covered(compaction: &Compaction, change_seq: Seq, kind: ChangeKind) -> bool {
    change_seq > compaction.after
        && change_seq <= compaction.through
        && matches!(kind, ChangeKind::Update | ChangeKind::Snapshot)
}

/// The `Snapshot` change a compaction stores, if any. `log_checksum` and
/// `committed_ms` are the stored values of the change it replaces at seq
/// `through`: a snapshot keeps the log checksum of the seq it takes, and
/// the time of the last change it covers (the version it holds is as of
/// then).
pub fn snapshot_change(
    compaction: &Compaction,
    log_checksum: u64,
    committed_ms: u64,
) -> Option<Change> {
    compaction.snapshot.as_ref().map(|payload| Change {
        seq: compaction.through,
        doc: compaction.doc.clone(),
        kind: ChangeKind::Snapshot,
        payload: payload.clone(),
        schema_version: compaction.schema_version,
        origin: None,
        author: None,
        committed_ms,
        log_checksum,
    })
}

/// A shared backend is a backend: lets wrappers such as a fault injector take
/// an `Arc<dyn Storage>` that the test keeps a handle to.
impl<S: Storage + ?Sized> Storage for std::sync::Arc<S> {
    fn backend(&self) -> &'static str {
        (**self).backend()
    }
    fn durability(&self) -> Durability {
        (**self).durability()
    }
    fn collection(&self, name: &CollectionName) -> Result<Option<CollectionMeta>, StorageError> {
        (**self).collection(name)
    }
    fn list_collections(
        &self,
        after: Option<&CollectionName>,
        limit: usize,
    ) -> Result<Vec<(CollectionName, CollectionMeta)>, StorageError> {
        (**self).list_collections(after, limit)
    }
    fn read_changes(
        &self,
        name: &CollectionName,
        after: Seq,
        limit: usize,
    ) -> Result<Option<ChangesPage>, StorageError> {
        (**self).read_changes(name, after, limit)
    }
    fn document_changes(
        &self,
        name: &CollectionName,
        doc: &DocId,
    ) -> Result<Vec<Change>, StorageError> {
        (**self).document_changes(name, doc)
    }
    fn visit_document_changes(
        &self,
        name: &CollectionName,
        doc: &DocId,
        visit: &mut dyn FnMut(Change) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        (**self).visit_document_changes(name, doc, visit)
    }
    fn read_document_changes(
        &self,
        name: &CollectionName,
        doc: &DocId,
        after: Seq,
        limit: usize,
    ) -> Result<Option<ChangesPage>, StorageError> {
        (**self).read_document_changes(name, doc, after, limit)
    }
    fn documents(&self, name: &CollectionName) -> Result<Vec<DocumentInfo>, StorageError> {
        (**self).documents(name)
    }
    fn documents_page(
        &self,
        name: &CollectionName,
        after: Option<&DocId>,
        limit: usize,
    ) -> Result<Vec<DocumentInfo>, StorageError> {
        (**self).documents_page(name, after, limit)
    }
    fn peers(&self, name: &CollectionName) -> Result<Vec<PeerRecord>, StorageError> {
        (**self).peers(name)
    }
    fn pins(&self, name: &CollectionName, doc: Option<&DocId>) -> Result<Vec<Pin>, StorageError> {
        (**self).pins(name, doc)
    }
    fn put_pin(&self, name: &CollectionName, pin: &Pin) -> Result<(), StorageError> {
        (**self).put_pin(name, pin)
    }
    fn delete_pin(
        &self,
        name: &CollectionName,
        doc: &DocId,
        pin_name: &str,
    ) -> Result<bool, StorageError> {
        (**self).delete_pin(name, doc, pin_name)
    }
    fn commit(&self, batch: &WriteBatch) -> Result<(), StorageError> {
        (**self).commit(batch)
    }
    fn commit_each(
        &self,
        batch: &WriteBatch,
    ) -> Result<Vec<Result<(), StorageError>>, StorageError> {
        (**self).commit_each(batch)
    }
    fn sync(&self) -> Result<(), StorageError> {
        (**self).sync()
    }
    fn release_collection(&self, name: &CollectionName) -> Result<(), StorageError> {
        (**self).release_collection(name)
    }
    fn watch_commits(&self, on_commit: CommitWatcher) -> Result<(), StorageError> {
        (**self).watch_commits(on_commit)
    }
}
