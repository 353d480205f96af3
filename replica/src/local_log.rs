//! How updates become changes of the replica's local log: each is an
//! `Item` (document, payload, origin, schema version), appended after the
//! stored head of its collection with seqs the replica assigns itself (the
//! local log is the replica's own, unrelated to the server's seqs).

use seqsync_engine::{
    load_document, Change, ChangeKind, CollectionName, CollectionWrite, DocId, DocState, PeerId,
    Seq, Storage, WriteBase, WriteBatch,
};

use crate::error::ReplicaError;
use crate::replica::Local;
use crate::state::local_epoch;

/// One change to append to a local collection.
pub(crate) struct Item {
    pub(crate) doc: DocId,
    /// Yjs v1; empty for a tombstone.
    pub(crate) payload: Vec<u8>,
    /// `LOCAL`, `REMOTE` or `MIGRATION`.
    pub(crate) origin: &'static str,
    /// The schema version it was written at.
    pub(crate) version: u32,
}

impl Item {
    pub(crate) fn new(doc: DocId, payload: Vec<u8>, origin: &'static str, version: u32) -> Self {
        Self {
            doc,
            payload,
            origin,
            version,
        }
    }
}

/// The stored change of `item` at `seq`.
pub(crate) fn change_of(seq: Seq, item: Item) -> Change {
    let kind = if item.payload.is_empty() {
        ChangeKind::Delete
    } else {
        ChangeKind::Update
    };
    Change {
        seq,
        doc: item.doc,
        kind,
        payload: item.payload,
        schema_version: item.version,
        origin: PeerId::new(item.origin).ok(),
        author: None,
        committed_ms: 0,
        log_checksum: 0,
    }
}

/// The write appending `items` to the local collection `c`.
pub(crate) fn append_write(
    storage: &dyn Storage,
    c: &CollectionName,
    items: Vec<Item>,
) -> Result<CollectionWrite, ReplicaError> {
    let (base, head) = base_of(storage, c)?;
    let append = items
        .into_iter()
        .zip(head + 1..)
        .map(|(item, seq)| change_of(seq, item))
        .collect();
    Ok(CollectionWrite {
        collection: c.clone(),
        base,
        append,
        compact: Vec::new(),
        peers: Vec::new(),
        raise_schema_version: None,
        append_mode: Default::default(),
    })
}

/// Appends `items` to the local collection `c` in one commit.
pub(crate) fn append(
    storage: &dyn Storage,
    c: &CollectionName,
    items: Vec<Item>,
) -> Result<(), ReplicaError> {
    let write = append_write(storage, c, items)?;
    storage.commit(&WriteBatch {
        writes: vec![write],
    })?;
    Ok(())
}

/// The base of a write to `c`: its stored epoch and head, or a new
/// collection; and the head the write continues.
pub(crate) fn base_of(
    storage: &dyn Storage,
    c: &CollectionName,
) -> Result<(WriteBase, Seq), ReplicaError> {
    Ok(match storage.collection(c)? {
        Some(meta) => (
            WriteBase::Existing {
                epoch: meta.epoch,
                head: meta.head,
            },
            meta.head,
        ),
        None => (
            WriteBase::Create {
                epoch: local_epoch()?,
                schema_version: 1,
            },
            0,
        ),
    })
}

impl Local {
    /// A document's local state as one update (an empty document's if it
    /// was never written). Blocking read.
    pub(crate) fn local_state(
        &self,
        c: &CollectionName,
        d: &DocId,
    ) -> Result<Vec<u8>, ReplicaError> {
        Ok(load_document(&*self.storage, c, d)?.map_or_else(
            || DocState::empty().encode_state(),
            |loaded| loaded.state.encode_state(),
        ))
    }
}
