//! `FaultyStorage`: a wrapper that injects failures through the public
//! [`Storage`] trait.
//!
//! Reliability tests must show that a failing backend never leaves the engine
//! half-written or silently wrong. Faults are injected around a real backend
//! so everything else stays real: the wrapped store is an ordinary SQLite,
//! redb or memory store, and what a fault leaves behind can be read back.
//!
//! Faults are armed per operation family with [`FaultyStorage::arm`] and fire
//! on the Nth call from then on, once or for every call after (persistent).

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use seqsync_engine::{
    Change, ChangesPage, CollectionMeta, CollectionName, CommitWatcher, DocId, DocumentInfo,
    Durability, PeerRecord, Pin, Seq, Storage, StorageError, WriteBatch,
};

/// Which calls a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultTarget {
    /// [`Storage::commit`].
    Commit,
    /// Every read method.
    Read,
}

/// What happens when a fault fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultMode {
    /// The call fails before reaching the backend: nothing is written.
    FailBefore,
    /// (Commit only.) The batch is committed, then the call reports failure:
    /// the ambiguous outcome of a lost acknowledgement.
    FailAfterCommit,
}

/// One armed fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Which calls.
    pub target: FaultTarget,
    /// Fire on the `nth` matching call after arming (1 = the next one).
    pub nth: u64,
    /// Keep failing every matching call after the first failure.
    pub persistent: bool,
    /// How the call fails.
    pub mode: FaultMode,
}

/// Wraps a backend and fails calls on demand. See the module docs.
pub struct FaultyStorage<S> {
    inner: S,
    armed: Mutex<Vec<(Fault, u64)>>,
    delay_ms: AtomicU64,
    injected: AtomicU64,
}

impl<S: Storage> FaultyStorage<S> {
    /// Wraps `inner` with no fault armed.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            armed: Mutex::new(Vec::new()),
            delay_ms: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        }
    }

    /// Arms `fault`; calls are counted from now.
    pub fn arm(&self, fault: Fault) {
        if let Ok(mut armed) = self.armed.lock() {
            armed.push((fault, 0));
        }
    }

    /// Disarms every fault.
    pub fn heal(&self) {
        if let Ok(mut armed) = self.armed.lock() {
            armed.clear();
        }
    }

    /// Makes every call sleep this long first (a slow disk); 0 turns it off.
    pub fn set_delay_ms(&self, delay_ms: u64) {
        self.delay_ms.store(delay_ms, Ordering::Relaxed);
    }

    /// How many faults have fired so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Counts a call and returns the mode of the fault that fires, if any.
    fn check(&self, target: FaultTarget) -> Option<FaultMode> {
        let delay_ms = self.delay_ms.load(Ordering::Relaxed);
        if delay_ms > 0 {
            std::thread::sleep(Duration::from_millis(delay_ms));
        }
        let mut armed = self.armed.lock().ok()?;
        let mut fired = None;
        armed.retain_mut(|(fault, calls)| {
            if fault.target != target {
                return true;
            }
            *calls += 1;
            if *calls >= fault.nth {
                fired = Some(fault.mode);
                return fault.persistent;
            }
            true
        });
        if fired.is_some() {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
        fired
    }

    fn read_fault(&self, what: &str) -> Result<(), StorageError> {
        match self.check(FaultTarget::Read) {
            Some(_) => Err(StorageError::Injected(format!("{what} failed"))),
            None => Ok(()),
        }
    }
}

impl<S: Storage> Storage for FaultyStorage<S> {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn durability(&self) -> Durability {
        self.inner.durability()
    }

    fn collection(&self, name: &CollectionName) -> Result<Option<CollectionMeta>, StorageError> {
        self.read_fault("collection")?;
        self.inner.collection(name)
    }

    fn list_collections(
        &self,
        after: Option<&CollectionName>,
        limit: usize,
    ) -> Result<Vec<(CollectionName, CollectionMeta)>, StorageError> {
        self.read_fault("list_collections")?;
        self.inner.list_collections(after, limit)
    }

    fn read_changes(
        &self,
        name: &CollectionName,
        after: Seq,
        limit: usize,
    ) -> Result<Option<ChangesPage>, StorageError> {
        self.read_fault("read_changes")?;
        self.inner.read_changes(name, after, limit)
    }

    fn document_changes(
        &self,
        name: &CollectionName,
        doc: &DocId,
    ) -> Result<Vec<Change>, StorageError> {
        self.read_fault("document_changes")?;
        self.inner.document_changes(name, doc)
    }

    fn visit_document_changes(
        &self,
        name: &CollectionName,
        doc: &DocId,
        visit: &mut dyn FnMut(Change) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        self.read_fault("visit_document_changes")?;
        self.inner.visit_document_changes(name, doc, visit)
    }

    fn read_document_changes(
        &self,
        name: &CollectionName,
        doc: &DocId,
        after: Seq,
        limit: usize,
    ) -> Result<Option<ChangesPage>, StorageError> {
        self.read_fault("read_document_changes")?;
        self.inner.read_document_changes(name, doc, after, limit)
    }

    fn documents(&self, name: &CollectionName) -> Result<Vec<DocumentInfo>, StorageError> {
        self.read_fault("documents")?;
        self.inner.documents(name)
    }

    fn documents_page(
        &self,
        name: &CollectionName,
        after: Option<&DocId>,
        limit: usize,
    ) -> Result<Vec<DocumentInfo>, StorageError> {
        self.read_fault("documents")?;
        self.inner.documents_page(name, after, limit)
    }

    fn peers(&self, name: &CollectionName) -> Result<Vec<PeerRecord>, StorageError> {
        self.read_fault("peers")?;
        self.inner.peers(name)
    }

    fn pins(&self, name: &CollectionName, doc: Option<&DocId>) -> Result<Vec<Pin>, StorageError> {
        self.read_fault("pins")?;
        self.inner.pins(name, doc)
    }

    // Pins are not a commit of the log: they pass through (the commit
    // faults model the log's writes).
    fn put_pin(&self, name: &CollectionName, pin: &Pin) -> Result<(), StorageError> {
        self.inner.put_pin(name, pin)
    }

    fn delete_pin(
        &self,
        name: &CollectionName,
        doc: &DocId,
        pin_name: &str,
    ) -> Result<bool, StorageError> {
        self.inner.delete_pin(name, doc, pin_name)
    }

    fn commit(&self, batch: &WriteBatch) -> Result<(), StorageError> {
        match self.check(FaultTarget::Commit) {
            None => self.inner.commit(batch),
            Some(FaultMode::FailBefore) => Err(StorageError::Injected(
                "commit failed before writing".to_owned(),
            )),
            Some(FaultMode::FailAfterCommit) => {
                self.inner.commit(batch)?;
                Err(StorageError::Injected(
                    "commit succeeded but reported failure".to_owned(),
                ))
            }
        }
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.inner.sync()
    }

    fn release_collection(&self, name: &CollectionName) -> Result<(), StorageError> {
        self.inner.release_collection(name)
    }

    fn watch_commits(&self, on_commit: CommitWatcher) -> Result<(), StorageError> {
        self.inner.watch_commits(on_commit)
    }
}
