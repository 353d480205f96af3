//! What the `Engine`'s operations return.

use seqsync_engine::{Change, ChangeKind, CollectionName, DocId, DocumentInfo, Epoch, PeerId, Seq};

/// Optional facts a client states with a push.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushOptions {
    /// The pushing peer's id (`x-peer-id`): recorded as the change's origin
    /// and refreshes the peer's `last_seen` if it has acked before.
    pub origin: Option<String>,
    /// The client's schema version (`x-schema-version`); a push at another
    /// version than the collection's is refused.
    pub schema_version: Option<u32>,
    /// Who is pushing, as the host vouches for it (the host server passes
    /// the subject of the signed token the request came with): recorded
    /// with each change as its author. 1–256 bytes without control
    /// characters (`InvalidName` otherwise).
    pub author: Option<String>,
}

/// Answer to a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushOutcome {
    /// The seq of the logged change, `None` when the update added nothing.
    pub seq: Option<Seq>,
    /// The collection head once the push (or, for a no-op, the changes it
    /// repeats) is durable.
    pub head: Seq,
}

/// Answer to a batch push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Per update, in order: its seq or `None` for a no-op.
    pub seqs: Vec<Option<Seq>>,
    /// The collection head once the batch is durable.
    pub head: Seq,
}

/// Answer to a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeleteOutcome {
    /// The tombstone's seq; `None` when the document was already deleted
    /// (deleting twice is a free no-op, like a retried push).
    pub seq: Option<Seq>,
    /// The collection head once the tombstone is durable.
    pub head: Seq,
}

/// One page of a collection's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangesPage {
    /// Changes with seq > the cursor asked for, in seq order.
    pub changes: Vec<Change>,
    /// Where to continue: the last change's seq, or the cursor asked for when
    /// the page is empty.
    pub cursor: Seq,
    /// Whether more changes follow `cursor` right now.
    pub has_more: bool,
    /// The collection head when the page was read.
    pub head: Seq,
    /// The log checksum through `cursor` (0 at cursor 0): a client that
    /// remembers it can tell a server whose history was replaced without a
    /// new epoch from one that only moved on.
    pub cursor_checksum: u64,
    /// The collection's epoch (`None` if it has never been written).
    pub epoch: Option<Epoch>,
    /// The collection's schema version (each change carries the version it was written at): the collection's, which
    /// is the engine's (every stored collection is migrated when the engine
    /// opens, and older clients' pushes are upgraded on ingest).
    pub schema_version: u32,
}

/// An item of a subscription stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// The next change, in seq order, each exactly once.
    Change(Change),
    /// Everything up to `head` has been delivered: the subscriber is in sync.
    UpToDate {
        /// The head caught up to.
        head: Seq,
    },
}

/// A document's full state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentState {
    /// The state as one Yjs v1 update.
    pub update: Vec<u8>,
    /// Every change ≤ `cursor` is reflected; stream from here.
    pub cursor: Seq,
    /// The schema version of the data handed out: the collection's, which
    /// is the engine's (every stored collection is migrated when the engine
    /// opens, and older clients' pushes are upgraded on ingest).
    pub schema_version: u32,
}

/// A document's full state as bytes shared with every other reader of the
/// same version (see `Engine::document_shared`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedDocumentState {
    /// The state as one Yjs v1 update. Do not assume it is a fresh copy.
    pub update: std::sync::Arc<[u8]>,
    /// Every change ≤ `cursor` is reflected; stream from here.
    pub cursor: Seq,
}

/// A document's state vector (see `Engine::document_state_vector`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentStateVector {
    /// Yjs v1 encoding of the state vector.
    pub state_vector: Vec<u8>,
    /// Every change ≤ `cursor` is reflected; stream from here.
    pub cursor: Seq,
}

/// What a client lacks of one document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Yjs v1 update with what the client's state vector does not cover.
    pub diff: Vec<u8>,
    /// Every change ≤ `cursor` is reflected; stream from here.
    pub cursor: Seq,
    /// The schema version of the data handed out: the collection's, which
    /// is the engine's (every stored collection is migrated when the engine
    /// opens, and older clients' pushes are upgraded on ingest).
    pub schema_version: u32,
}

/// A whole collection for a cold start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectionRecovery {
    /// Per live document, what the client lacks (the full state when it sent
    /// no state vector for it).
    pub documents: Vec<(DocId, Vec<u8>)>,
    /// Deleted documents.
    pub deleted: Vec<DocId>,
    /// Every change ≤ `cursor` is reflected; stream from here.
    pub cursor: Seq,
    /// The collection's epoch (`None` if it has never been written).
    pub epoch: Option<Epoch>,
    /// The schema version of the data handed out: the collection's, which
    /// is the engine's (every stored collection is migrated when the engine
    /// opens, and older clients' pushes are upgraded on ingest).
    pub schema_version: u32,
}

/// A collection as `collections` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectionInfo {
    /// Its name.
    pub name: CollectionName,
    /// Its head: the seq of its latest change.
    pub head: Seq,
    /// When it was created, ms since the Unix epoch.
    pub created_ms: u64,
    /// Its schema version.
    pub schema_version: u32,
}

/// One page of `collections`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectionsPage {
    /// The collections, in name order.
    pub collections: Vec<CollectionInfo>,
    /// Pass as `after` for the next page; `None` when this page is the last.
    pub next: Option<CollectionName>,
}

/// One page of `documents`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentsPage {
    /// The documents, in id order, each with its last seq, tombstone and
    /// stored size.
    pub documents: Vec<DocumentInfo>,
    /// Pass as `after` for the next page; `None` when this page is the last.
    pub next: Option<DocId>,
}

/// A document as it was at an earlier seq (`document_at`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentAt {
    /// Its state then, as one Yjs v1 update.
    pub update: Vec<u8>,
    /// The seq of its latest change at or before the seq asked for: the
    /// version served.
    pub seq: Seq,
    /// The schema version of the data served.
    pub schema_version: u32,
}

/// One change of a document's history, without its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Its seq in the collection.
    pub seq: Seq,
    /// Update, snapshot (compacted history) or delete.
    pub kind: ChangeKind,
    /// Its payload's size.
    pub size_bytes: u64,
    /// The peer that pushed it, when it said (`x-peer-id`, the sync
    /// socket's hello).
    pub origin: Option<PeerId>,
    /// Who pushed it, as the host vouched (a signed token's subject);
    /// `None` when unknown.
    pub author: Option<String>,
    /// When it was accepted, ms since the Unix epoch; `None` for changes
    /// stored before stores recorded it. A snapshot has the time of the
    /// last change it covers.
    pub committed_ms: Option<u64>,
    /// The schema version it was written under.
    pub schema_version: u32,
}

/// One page of `history`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPage {
    /// Oldest first.
    pub entries: Vec<HistoryEntry>,
    /// Whether changes follow the last one (ask again after its seq).
    pub has_more: bool,
}

/// What `restore` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreOutcome {
    /// The seq of the restoring edit; `None` when the content was equal to
    /// the version already.
    pub seq: Option<Seq>,
    /// The version restored: the seq of the document's latest change at or
    /// before the seq asked for.
    pub restored_from: Seq,
}

/// A peer as reported by `peers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's id.
    pub peer: PeerId,
    /// Highest seq it acknowledged.
    pub acked: Seq,
    /// head − acked.
    pub lag: Seq,
    /// Last ack or push, ms since the Unix epoch.
    pub last_seen_ms: u64,
    /// Seen within `peer_timeout_secs`.
    pub active: bool,
}

/// What a `compact` call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionSummary {
    /// Documents whose history was replaced.
    pub documents_compacted: u64,
    /// Update and snapshot changes removed (replaced by one snapshot each).
    pub changes_removed: u64,
    /// Of which updates (deltas).
    pub deltas_removed: u64,
    /// Payload bytes of the removed changes.
    pub bytes_before: u64,
    /// Payload bytes of the snapshots that replaced them.
    pub bytes_after: u64,
}
