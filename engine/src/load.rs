//! Loading one document from storage: read its changes and apply them.
//!
//! A cold document read costs two things of about the same size: reading the
//! stored rows (SQLite or redb, one row per change) and applying each change
//! to a `yrs::Doc`. Done one after the other, a document of 100,000 deltas
//! costs their sum; done at once on two threads it costs about the larger of
//! the two, which is what lets a cold load stay close to a bare yrs replay
//! (docs/DESIGN.md, performance targets: load ≤ 1.2×).
//!
//! Small documents are the common case (compaction keeps them small), and a
//! thread per read would cost more than it saves there. So the changes of the
//! first chunk are collected on the reading thread; only when a document turns
//! out to be larger than one chunk is an applying thread started, and from
//! then on the reader hands it full chunks through a bounded channel (at most
//! `CHANNEL_CHUNKS` chunks, so a fast reader never holds the whole document
//! twice). The thread is scoped: it never outlives the call.

use std::ops::ControlFlow;
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread;

use crate::change::{Change, ChangeKind, Seq};
use crate::error::StorageError;
use crate::name::{CollectionName, DocId};
use crate::storage::Storage;
use crate::yjs::{ApplyError, DocState};

/// Changes handed to the applying thread at once.
const CHUNK_CHANGES: usize = 512;
/// Chunks the reader may be ahead of the applying thread.
const CHANNEL_CHUNKS: usize = 8;

/// A document rebuilt from storage.
pub struct LoadedDocument {
    /// The document's state after every stored change.
    pub state: DocState,
    /// Seq of the document's last stored change.
    pub last_seq: Seq,
    /// Seq of the first `Update` after the document's last snapshot, if any:
    /// where a client must stream from to receive updates yrs still holds as
    /// pending (see `DocState::encode_state`).
    pub first_delta_seq: Option<Seq>,
}

/// Rebuilds one document from its stored changes, reading and applying in
/// parallel when the document is larger than one chunk.
///
/// Blocking (storage I/O and yrs). Returns `Ok(None)` when the document has
/// no stored change. Errors: the backend's read error, or
/// [`StorageError::Corrupt`] when a stored change does not decode or apply.
pub fn load_document(
    storage: &dyn Storage,
    name: &CollectionName,
    doc: &DocId,
) -> Result<Option<LoadedDocument>, StorageError> {
    load_document_through(storage, name, doc, Seq::MAX)
}

/// [`load_document`] as of seq `through`: only the document's changes with
/// seq ≤ `through` are applied. Since stored changes at or below a head
/// never change meaning (compaction replaces them by a snapshot of the same
/// state at a seq ≤ the head), this is the document exactly as it was at
/// head `through`, whatever was committed since: what a consistent digest
/// or export reads without holding a transaction open.
///
/// Blocking; errors as [`load_document`]. `Ok(None)` when the document has
/// no change at or below `through`.
pub fn load_document_through(
    storage: &dyn Storage,
    name: &CollectionName,
    doc: &DocId,
    through: Seq,
) -> Result<Option<LoadedDocument>, StorageError> {
    let corrupt = |e: ApplyError| StorageError::Corrupt {
        backend: storage.backend(),
        detail: format!("collection {name}, document {doc}: {e}"),
    };
    thread::scope(|scope| {
        let mut first_chunk: Vec<Change> = Vec::with_capacity(CHUNK_CHANGES);
        let mut pipeline = None;
        let mut chunk = Vec::new();
        storage.visit_document_changes(name, doc, &mut |change| {
            if change.seq > through {
                return ControlFlow::Break(());
            }
            if pipeline.is_none() {
                first_chunk.push(change);
                if first_chunk.len() < CHUNK_CHANGES {
                    return ControlFlow::Continue(());
                }
                let (sender, receiver) = sync_channel::<Vec<Change>>(CHANNEL_CHUNKS);
                let applier = scope.spawn(move || apply_chunks(receiver));
                if sender.send(std::mem::take(&mut first_chunk)).is_err() {
                    return ControlFlow::Break(());
                }
                pipeline = Some((sender, applier));
                chunk.reserve(CHUNK_CHANGES);
                return ControlFlow::Continue(());
            }
            chunk.push(change);
            if chunk.len() == CHUNK_CHANGES {
                if let Some((sender, _)) = &pipeline {
                    // A closed channel means the applier failed: stop reading,
                    // its error is collected below.
                    if sender.send(std::mem::take(&mut chunk)).is_err() {
                        return ControlFlow::Break(());
                    }
                }
            }
            ControlFlow::Continue(())
        })?;
        let loader = match pipeline {
            None => {
                let mut loader = Loader::default();
                for change in &first_chunk {
                    loader.add(change)?;
                }
                loader
            }
            Some((sender, applier)) => {
                if !chunk.is_empty() {
                    // An error here means the applier already failed; the
                    // join below returns its error.
                    let _ = sender.send(chunk);
                }
                drop(sender);
                applier
                    .join()
                    .map_err(|_| ApplyError("the loading thread panicked".to_owned()))??
            }
        };
        Ok(loader.finish())
    })
    .map_err(|e: LoadError| match e {
        LoadError::Storage(e) => e,
        LoadError::Apply(e) => corrupt(e),
    })
}

/// Applies chunks until the reader closes the channel.
fn apply_chunks(receiver: Receiver<Vec<Change>>) -> Result<Loader, ApplyError> {
    let mut loader = Loader::default();
    for chunk in receiver {
        for change in &chunk {
            loader.add(change)?;
        }
    }
    Ok(loader)
}

/// The applying side: the document plus what [`LoadedDocument`] reports.
#[derive(Default)]
struct Loader {
    state: Option<DocState>,
    last_seq: Seq,
    first_delta_seq: Option<Seq>,
}

impl Loader {
    fn add(&mut self, change: &Change) -> Result<(), ApplyError> {
        debug_assert!(change.seq > self.last_seq, "changes arrive in seq order");
        self.state
            .get_or_insert_with(DocState::empty)
            .load_change(change)?;
        self.last_seq = change.seq;
        match change.kind {
            ChangeKind::Snapshot => self.first_delta_seq = None,
            ChangeKind::Update => {
                self.first_delta_seq.get_or_insert(change.seq);
            }
            ChangeKind::Delete => {}
        }
        Ok(())
    }

    fn finish(self) -> Option<LoadedDocument> {
        self.state.map(|state| LoadedDocument {
            state,
            last_seq: self.last_seq,
            first_delta_seq: self.first_delta_seq,
        })
    }
}

/// Either half of a load failed.
enum LoadError {
    Storage(StorageError),
    Apply(ApplyError),
}

impl From<StorageError> for LoadError {
    fn from(e: StorageError) -> Self {
        LoadError::Storage(e)
    }
}

impl From<ApplyError> for LoadError {
    fn from(e: ApplyError) -> Self {
        LoadError::Apply(e)
    }
}
