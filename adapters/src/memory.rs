//! `MemoryStorage`: the whole store in a `BTreeMap` behind a `RwLock`.
//!
//! It serves tests and benchmarks that want the engine without disk I/O, and
//! it is the reference the conformance suite holds the disk backends to: its
//! code is the storage model written as plainly as possible. Nothing survives
//! the process; `durability` is reported as configured but means nothing.
//!
//! A commit validates the whole batch against the current state first and
//! only then applies it, under one write lock, so a refused batch leaves no
//! trace and readers see all or nothing of it.

use std::collections::BTreeMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use seqsync_engine::{
    check_batch_shape, is_covered, plan_collection_write, snapshot_change, Change, ChangeKind,
    ChangesPage, CollectionMeta, CollectionName, DocId, DocumentInfo, Durability, PeerId,
    PeerRecord, Pin, Seq, Storage, StorageError, WriteBatch,
};

const BACKEND: &str = "memory";

#[derive(Default)]
struct MemCollection {
    meta: Option<CollectionMeta>,
    changes: BTreeMap<Seq, Change>,
    /// Per document, its seqs: loading or compacting one document must not
    /// scan the whole collection.
    by_doc: BTreeMap<DocId, BTreeMap<Seq, ChangeKind>>,
    peers: BTreeMap<PeerId, PeerRecord>,
    /// Pinned versions by (document, name).
    pins: BTreeMap<(DocId, String), Pin>,
}

impl MemCollection {
    /// Whether a pin of the compacted document lies strictly inside its
    /// range (the compaction is then not applied; see `Compaction`).
    fn pinned_inside(&self, compaction: &seqsync_engine::Compaction) -> bool {
        self.pins.values().any(|p| {
            p.doc == compaction.doc && p.seq > compaction.after && p.seq < compaction.through
        })
    }

    fn insert(&mut self, change: Change) {
        self.by_doc
            .entry(change.doc.clone())
            .or_default()
            .insert(change.seq, change.kind);
        self.changes.insert(change.seq, change);
    }
}

/// An in-memory [`Storage`]. Cheap to create; every call takes a lock and
/// never does I/O.
pub struct MemoryStorage {
    durability: Durability,
    collections: RwLock<BTreeMap<CollectionName, MemCollection>>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new(durability: Durability) -> Self {
        Self {
            durability,
            collections: RwLock::new(BTreeMap::new()),
        }
    }

    fn read(
        &self,
    ) -> Result<RwLockReadGuard<'_, BTreeMap<CollectionName, MemCollection>>, StorageError> {
        self.collections
            .read()
            .map_err(|_| StorageError::backend(BACKEND, "reading", "lock poisoned by a panic"))
    }

    fn write(
        &self,
    ) -> Result<RwLockWriteGuard<'_, BTreeMap<CollectionName, MemCollection>>, StorageError> {
        self.collections
            .write()
            .map_err(|_| StorageError::backend(BACKEND, "writing", "lock poisoned by a panic"))
    }
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::new(Durability::Immediate)
    }
}

impl Storage for MemoryStorage {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn durability(&self) -> Durability {
        self.durability
    }

    fn collection(&self, name: &CollectionName) -> Result<Option<CollectionMeta>, StorageError> {
        Ok(self.read()?.get(name).and_then(|c| c.meta.clone()))
    }

    fn list_collections(
        &self,
        after: Option<&CollectionName>,
        limit: usize,
    ) -> Result<Vec<(CollectionName, CollectionMeta)>, StorageError> {
        let guard = self.read()?;
        Ok(guard
            .iter()
            .filter(|(name, _)| after.is_none_or(|after| *name > after))
            .filter_map(|(name, c)| c.meta.clone().map(|meta| (name.clone(), meta)))
            .take(limit)
            .collect())
    }

    fn read_changes(
        &self,
        name: &CollectionName,
        after: Seq,
        limit: usize,
    ) -> Result<Option<ChangesPage>, StorageError> {
        let guard = self.read()?;
        let Some(collection) = guard.get(name) else {
            return Ok(None);
        };
        let Some(meta) = collection.meta.clone() else {
            return Ok(None);
        };
        let changes = match after.checked_add(1) {
            Some(from) => collection
                .changes
                .range(from..)
                .take(limit)
                .map(|(_, c)| c.clone())
                .collect(),
            None => Vec::new(),
        };
        Ok(Some(ChangesPage { meta, changes }))
    }

    fn document_changes(
        &self,
        name: &CollectionName,
        doc: &DocId,
    ) -> Result<Vec<Change>, StorageError> {
        let guard = self.read()?;
        Ok(guard
            .get(name)
            .and_then(|c| {
                let seqs = c.by_doc.get(doc)?;
                Some(
                    seqs.keys()
                        .filter_map(|seq| c.changes.get(seq).cloned())
                        .collect(),
                )
            })
            .unwrap_or_default())
    }

    fn documents(&self, name: &CollectionName) -> Result<Vec<DocumentInfo>, StorageError> {
        self.documents_page(name, None, usize::MAX)
    }

    fn documents_page(
        &self,
        name: &CollectionName,
        after: Option<&DocId>,
        limit: usize,
    ) -> Result<Vec<DocumentInfo>, StorageError> {
        let guard = self.read()?;
        let Some(collection) = guard.get(name) else {
            return Ok(Vec::new());
        };
        let from = match after {
            Some(after) => std::ops::Bound::Excluded(after.clone()),
            None => std::ops::Bound::Unbounded,
        };
        Ok(collection
            .by_doc
            .range((from, std::ops::Bound::Unbounded))
            .filter_map(|(doc, seqs)| {
                Some(DocumentInfo {
                    doc: doc.clone(),
                    last_seq: *seqs.keys().next_back()?,
                    deleted: seqs.values().any(|kind| *kind == ChangeKind::Delete),
                    stored_bytes: seqs
                        .keys()
                        .filter_map(|seq| collection.changes.get(seq))
                        .map(|change| change.payload.len() as u64)
                        .sum(),
                })
            })
            .take(limit)
            .collect())
    }

    fn peers(&self, name: &CollectionName) -> Result<Vec<PeerRecord>, StorageError> {
        let guard = self.read()?;
        Ok(guard
            .get(name)
            .map(|c| c.peers.values().cloned().collect())
            .unwrap_or_default())
    }

    fn pins(&self, name: &CollectionName, doc: Option<&DocId>) -> Result<Vec<Pin>, StorageError> {
        let guard = self.read()?;
        let mut pins: Vec<Pin> = guard
            .get(name)
            .map(|c| {
                c.pins
                    .values()
                    .filter(|p| doc.is_none_or(|d| &p.doc == d))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        pins.sort_by(|a, b| (&a.doc, a.seq, &a.name).cmp(&(&b.doc, b.seq, &b.name)));
        Ok(pins)
    }

    fn put_pin(&self, name: &CollectionName, pin: &Pin) -> Result<(), StorageError> {
        let mut guard = self.write()?;
        let Some(collection) = guard.get_mut(name).filter(|c| c.meta.is_some()) else {
            return Err(StorageError::InvalidWrite(format!(
                "collection {name} does not exist"
            )));
        };
        collection
            .pins
            .insert((pin.doc.clone(), pin.name.clone()), pin.clone());
        Ok(())
    }

    fn delete_pin(
        &self,
        name: &CollectionName,
        doc: &DocId,
        pin_name: &str,
    ) -> Result<bool, StorageError> {
        let mut guard = self.write()?;
        Ok(guard
            .get_mut(name)
            .and_then(|c| c.pins.remove(&(doc.clone(), pin_name.to_owned())))
            .is_some())
    }

    fn commit(&self, batch: &WriteBatch) -> Result<(), StorageError> {
        check_batch_shape(batch)?;
        let mut guard = self.write()?;
        // Pass 1: validate everything; nothing is modified.
        let mut planned = Vec::with_capacity(batch.writes.len());
        for write in &batch.writes {
            let stored = guard.get(&write.collection);
            let meta = plan_collection_write(write, stored.and_then(|c| c.meta.as_ref()))?;
            for compaction in &write.compact {
                if compaction.snapshot.is_none() {
                    continue;
                }
                let target = write
                    .append
                    .iter()
                    .find(|c| c.seq == compaction.through)
                    .or_else(|| stored.and_then(|c| c.changes.get(&compaction.through)));
                let replaceable = target.is_some_and(|c| {
                    c.doc == compaction.doc && is_covered(compaction, c.seq, c.kind)
                });
                if !replaceable {
                    return Err(StorageError::InvalidWrite(format!(
                        "collection {}: no update of {} at seq {} for the snapshot to replace",
                        write.collection, compaction.doc, compaction.through
                    )));
                }
            }
            planned.push(meta);
        }
        // Pass 2: apply; nothing here can fail.
        for (write, plan) in batch.writes.iter().zip(planned) {
            let collection = guard.entry(write.collection.clone()).or_default();
            collection.meta = Some(plan.meta);
            for (change, log_checksum) in write.append.iter().zip(plan.append_checksums) {
                collection.insert(Change {
                    log_checksum,
                    ..change.clone()
                });
            }
            for compaction in &write.compact {
                if collection.pinned_inside(compaction) {
                    continue;
                }
                // Checked in pass 1: with a snapshot, a change at `through`
                // exists; the snapshot keeps its log checksum.
                let (target_checksum, target_committed_ms) = collection
                    .changes
                    .get(&compaction.through)
                    .map_or((0, 0), |c| (c.log_checksum, c.committed_ms));
                let seqs = collection.by_doc.entry(compaction.doc.clone()).or_default();
                let covered: Vec<Seq> = seqs
                    .range(..=compaction.through)
                    .filter(|(seq, kind)| is_covered(compaction, **seq, **kind))
                    .map(|(seq, _)| *seq)
                    .collect();
                for seq in covered {
                    seqs.remove(&seq);
                    collection.changes.remove(&seq);
                }
                if seqs.is_empty() {
                    collection.by_doc.remove(&compaction.doc);
                }
                if let Some(snapshot) =
                    snapshot_change(compaction, target_checksum, target_committed_ms)
                {
                    collection.insert(snapshot);
                }
            }
            for peer in &write.peers {
                let entry = collection
                    .peers
                    .entry(peer.peer.clone())
                    .or_insert_with(|| peer.clone());
                entry.acked = entry.acked.max(peer.acked);
                entry.last_seen_ms = entry.last_seen_ms.max(peer.last_seen_ms);
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        Ok(())
    }
}
