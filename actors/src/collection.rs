//! `CollectionActor`: the single writer of one collection.
//!
//! Every write of a collection goes through its actor, so seqs are assigned
//! in one place, in order, without locks. The actor owns the collection's
//! loaded `yrs::Doc`s (loaded lazily, one per document), its head, epoch and
//! peer table.
//!
//! Write path (pipelined): a write is decoded, applied to the in-memory
//! document (which says whether it adds anything), given the next seqs, and
//! handed to the storage writer; the actor does not wait for the commit and
//! takes the next message. The caller waits on a oneshot that the actor
//! answers when the writer reports the commit (`CommitDone`), in seq order.
//! Live subscribers are fed at that moment too, so they only ever see
//! committed changes, in seq order. A subscriber follows the whole collection
//! or one document; a document's subscribers are kept under its id and get
//! only its changes, so delivering a commit costs the subscribers of the
//! documents it touched, never those of the rest of the collection.
//!
//! Blocking I/O never runs here: loading a document or the collection's
//! metadata happens on the read pool, inside an `AtomicResponse` so that no
//! other message interleaves with the load.
//!
//! Failure: if a commit fails, the in-memory documents may hold changes that
//! storage does not. The actor marks itself broken, refuses writes, answers
//! the failed and following in-flight writes with the error, and once nothing
//! is in flight drops everything it holds; the next message reloads from
//! storage. A panic in a handler is caught: the caller gets an `Internal`
//! error and the actor stops; the registry starts a fresh one (loaded from
//! storage) on the next call. actix would not restart it by itself.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use seqsync_engine::{
    decode_pushed_update, load_document, migration::reserved_client_in, now_ms, Applied, Change,
    ChangeKind, CollectionMeta, CollectionName, CollectionWrite, CompactionPlan, DocId, DocState,
    Epoch, PeerId, PeerRecord, Seq, StorageError, WriteBase, WriteError, MIGRATION_CLIENT_IDS,
};
use tokio::sync::{mpsc, oneshot};
use yrs::StateVector;

use crate::compactor::PlanCompaction;
use crate::context::Shared;
use crate::metrics as m;
use crate::types::CompactionSummary;
use crate::writer::{SubmitError, WriteRequest};

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

/// What a write does.
#[derive(Clone)]
pub(crate) enum WriteOp {
    /// Push these updates (one for `push`, several for `push_batch`).
    Updates(Vec<(DocId, Vec<u8>)>),
    /// Log a tombstone.
    Delete(DocId),
}

/// Answer to a write once durable.
#[derive(Debug, Clone)]
pub(crate) struct WriteDone {
    pub(crate) seqs: Vec<Option<Seq>>,
    pub(crate) head: Seq,
}

pub(crate) type WriteReply = oneshot::Receiver<Result<WriteDone, WriteError>>;

/// Push updates or delete a document. Answered with a receiver that resolves
/// once the write is durable (or refused).
#[derive(Clone)]
pub(crate) struct Write {
    pub(crate) op: WriteOp,
    pub(crate) origin: Option<PeerId>,
    pub(crate) schema_version: Option<u32>,
}

impl Message for Write {
    type Result = WriteReply;
}

pub(crate) type AckReply = oneshot::Receiver<Result<Seq, seqsync_engine::AckError>>;

/// Record a peer's ack.
#[derive(Clone)]
pub(crate) struct Ack {
    pub(crate) peer: PeerId,
    pub(crate) seq: Seq,
}

impl Message for Ack {
    type Result = AckReply;
}

/// What a live subscriber receives at each commit that touches its scope
/// (the collection, or one document).
///
/// Continuity is checkable: the scope has no committed change in
/// `(since, first of changes)`, and none in `(last of changes, through]`. A
/// stream whose cursor is below `since` missed something (it was dropped
/// and re-registered, say) and must read storage instead.
pub(crate) struct LiveBatch {
    pub(crate) since: Seq,
    pub(crate) through: Seq,
    pub(crate) changes: Arc<[Change]>,
}

/// Permission to stream live changes: everything ≤ `head` is in storage,
/// everything after arrives on `live`.
pub(crate) struct Grant {
    pub(crate) epoch: Option<Epoch>,
    pub(crate) head: Seq,
    /// The highest seq handed to the writer (≥ `head`). A cursor up to here
    /// is real: it may come from storage that already holds a commit the
    /// actor has not yet been told of. Only a cursor beyond it is foreign.
    pub(crate) assigned_head: Seq,
    pub(crate) live: mpsc::Receiver<LiveBatch>,
}

/// Another engine node committed to this collection (a shared store's
/// commit watcher saw it): what this actor holds is behind.
pub(crate) struct ExternalCommit {
    pub(crate) head: Seq,
}

impl Message for ExternalCommit {
    type Result = ();
}

/// Register a live subscriber of the collection, or of one document.
#[derive(Clone)]
pub(crate) struct Subscribe {
    pub(crate) doc: Option<DocId>,
}

impl Message for Subscribe {
    type Result = Result<Grant, StorageError>;
}

/// Serve a document from memory if that is exact: loaded, not broken, and no
/// write of it in flight. `None` means "read it from storage".
#[derive(Clone)]
pub(crate) struct CachedRead {
    pub(crate) doc: DocId,
    pub(crate) state_vector: Option<StateVector>,
}

/// A document served from memory.
pub(crate) enum CachedDoc {
    /// The update (full state or diff) and the cursor it reflects.
    State(Vec<u8>, Seq),
    /// The document has a tombstone.
    Deleted,
    /// The document has no content: never written, or written only with
    /// no-op updates (a y-websocket provider's empty first sync step 2
    /// loads it into memory but logs nothing, so it does not exist).
    Missing,
}

impl Message for CachedRead {
    type Result = Option<CachedDoc>;
}

/// What a `SharedRead` asks for.
#[derive(Clone, Copy)]
pub(crate) enum SharedWhat {
    /// The full state, encoded once per version of the document and shared.
    State,
    /// The state vector.
    StateVector,
}

/// Most bytes of shared full-state encodings one collection actor keeps
/// (`SharedRead`); a larger encoding is handed out but not kept.
const MAX_SHARED_ENCODED_BYTES: usize = 256 << 20;

/// Serve a document from memory, loading it into the actor first if needed
/// (many joiners of one large document share one load and one encoding).
#[derive(Clone)]
pub(crate) struct SharedRead {
    pub(crate) doc: DocId,
    pub(crate) what: SharedWhat,
}

/// A `SharedRead` answer.
pub(crate) enum SharedDoc {
    /// The full state (shared bytes) and the cursor it reflects.
    State(Arc<[u8]>, Seq),
    /// The state vector (Yjs v1) and the cursor it reflects.
    StateVector(Vec<u8>, Seq),
    /// The document has a tombstone.
    Deleted,
    /// The document has no content (never written).
    Empty,
    /// Memory is not exact right now (a write of it in flight, pending
    /// structures, a failed commit): read storage instead.
    Unavailable,
}

impl Message for SharedRead {
    type Result = Result<SharedDoc, StorageError>;
}

pub(crate) type CompactReply = oneshot::Receiver<Result<CompactionSummary, WriteError>>;

/// Compact every document now (peer-gated like automatic compaction);
/// answered when every resulting compaction is committed.
#[derive(Clone)]
pub(crate) struct CompactNow;

impl Message for CompactNow {
    type Result = CompactReply;
}

/// From the read pool: the documents a `CompactNow` run covers.
struct CompactDocuments {
    run: u64,
    docs: Result<Vec<DocId>, StorageError>,
}

impl Message for CompactDocuments {
    type Result = ();
}

/// From the writer: the oldest in-flight write was committed (or not).
struct CommitDone {
    ticket: u64,
    result: Result<(), StorageError>,
}

impl Message for CommitDone {
    type Result = ();
}

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------

/// The collection as known to the actor once loaded.
struct CollectionState {
    /// `None` until the collection exists (or its creation is in flight).
    epoch: Option<Epoch>,
    schema_version: u32,
    /// Highest seq handed to the writer.
    assigned_head: Seq,
    /// Highest seq known committed.
    committed_head: Seq,
    /// The log checksum through `assigned_head`: each change handed to the
    /// writer carries its own (what storage computes in the same commit),
    /// so a live subscriber holds the checksum of its cursor as one that
    /// reads storage does.
    assigned_checksum: u64,
    peers: HashMap<PeerId, PeerRecord>,
}

enum Waiter {
    Write {
        tx: oneshot::Sender<Result<WriteDone, WriteError>>,
        seqs: Vec<Option<Seq>>,
    },
    Ack {
        tx: oneshot::Sender<Result<Seq, seqsync_engine::AckError>>,
        acked: Seq,
    },
}

impl Waiter {
    fn succeed(self, head: Seq) {
        match self {
            Waiter::Write { tx, seqs } => {
                let _ = tx.send(Ok(WriteDone { seqs, head }));
            }
            Waiter::Ack { tx, acked } => {
                let _ = tx.send(Ok(acked));
            }
        }
    }

    fn fail(self, err: &StorageError) {
        match self {
            Waiter::Write { tx, .. } => {
                let _ = tx.send(Err(WriteError::Storage(err.clone())));
            }
            Waiter::Ack { tx, .. } => {
                let _ = tx.send(Err(seqsync_engine::AckError::Storage(err.clone())));
            }
        }
    }
}

/// A write handed to the writer and not yet reported.
struct Inflight {
    ticket: u64,
    /// Appended changes, for subscribers once committed.
    changes: Vec<Change>,
    /// The document compaction this write commits, if any.
    compaction: Option<(DocId, CompactionPlan)>,
    waiters: Vec<Waiter>,
}

/// A `CompactNow` call waiting for its documents.
struct ManualRun {
    remaining: usize,
    summary: CompactionSummary,
    tx: oneshot::Sender<Result<CompactionSummary, WriteError>>,
}

pub(crate) struct CollectionActor {
    name: CollectionName,
    generation: u64,
    shared: Arc<Shared>,
    state: Option<CollectionState>,
    docs: HashMap<DocId, DocState>,
    /// Full-state encodings handed out by `SharedRead`, until the document
    /// next changes (or is unloaded).
    encoded: HashMap<DocId, Arc<[u8]>>,
    /// Per document, writes in flight (a document with none is exact in
    /// memory).
    doc_inflight: HashMap<DocId, u32>,
    inflight: VecDeque<Inflight>,
    next_ticket: u64,
    /// A commit failed or memory diverged from storage: refuse writes, and
    /// reset once nothing is in flight.
    broken: bool,
    /// Subscribers of the whole collection.
    subscribers: Vec<mpsc::Sender<LiveBatch>>,
    /// Subscribers of one document, by document.
    doc_subscribers: HashMap<DocId, DocSubscribers>,
    /// Live batches handed to subscribers (the engine-wide count).
    deliveries: metrics::Counter,
    last_active: Instant,
    /// Documents with a compaction planned or in flight, and the manual runs
    /// waiting for it.
    compacting: HashMap<DocId, Vec<u64>>,
    manual_runs: HashMap<u64, ManualRun>,
    next_run: u64,
}

/// The live subscribers of one document.
struct DocSubscribers {
    /// No change of the document is committed in `(since, committed head]`:
    /// the `through` of the last batch sent, or the head when the entry was
    /// made (its first subscriber reads storage up to there).
    since: Seq,
    senders: Vec<mpsc::Sender<LiveBatch>>,
}

/// What a load brings back from storage.
#[derive(Default)]
struct Loaded {
    collection: Option<(Option<CollectionMeta>, Vec<PeerRecord>)>,
    docs: Vec<(DocId, DocState)>,
}

impl CollectionActor {
    pub(crate) fn new(name: CollectionName, generation: u64, shared: Arc<Shared>) -> Self {
        Self {
            name,
            generation,
            shared,
            state: None,
            docs: HashMap::new(),
            encoded: HashMap::new(),
            doc_inflight: HashMap::new(),
            inflight: VecDeque::new(),
            next_ticket: 0,
            broken: false,
            subscribers: Vec::new(),
            doc_subscribers: HashMap::new(),
            deliveries: metrics::counter!(m::LIVE_DELIVERIES),
            last_active: Instant::now(),
            compacting: HashMap::new(),
            manual_runs: HashMap::new(),
            next_run: 0,
        }
    }

    /// Starts loading what `docs` (and the collection itself) need, on the
    /// read pool. `None` when everything is in memory already.
    fn load_missing(
        &self,
        docs: &[DocId],
    ) -> Option<impl std::future::Future<Output = Result<Loaded, StorageError>> + 'static> {
        let need_collection = self.state.is_none();
        let mut missing: Vec<DocId> = docs
            .iter()
            .filter(|d| !self.docs.contains_key(*d))
            .cloned()
            .collect();
        missing.sort();
        missing.dedup();
        if !need_collection && missing.is_empty() {
            return None;
        }
        let shared = self.shared.clone();
        let name = self.name.clone();
        Some(async move {
            shared
                .read(move |storage| {
                    let mut loaded = Loaded::default();
                    if need_collection {
                        let meta = storage.collection(&name)?;
                        let peers = storage.peers(&name)?;
                        loaded.collection = Some((meta, peers));
                    }
                    for doc in missing {
                        let state = load_document(storage, &name, &doc)?
                            .map_or_else(DocState::empty, |loaded| loaded.state);
                        loaded.docs.push((doc, state));
                    }
                    Ok(loaded)
                })
                .await
        })
    }

    fn install(&mut self, loaded: Loaded) {
        if let Some((meta, peers)) = loaded.collection {
            let head = meta.as_ref().map_or(0, |m| m.head);
            self.state = Some(CollectionState {
                epoch: meta.as_ref().map(|m| m.epoch),
                schema_version: meta
                    .as_ref()
                    .map_or(self.shared.migrations.latest(), |m| m.schema_version),
                assigned_head: head,
                committed_head: head,
                assigned_checksum: meta.as_ref().map_or(0, |m| m.log_checksum),
                peers: peers.into_iter().map(|p| (p.peer.clone(), p)).collect(),
            });
        }
        for (doc, state) in loaded.docs {
            if self.docs.insert(doc, state).is_none() {
                metrics::gauge!(m::LOADED_DOCUMENTS).increment(1.0);
            }
        }
    }

    /// Runs `f` once the collection and `docs` are loaded, with no other
    /// message in between. A load failure is handed to `f` as `Err`.
    fn with_loaded<T: 'static>(
        &mut self,
        docs: &[DocId],
        f: impl FnOnce(&mut Self, &mut Context<Self>, Result<(), StorageError>) -> T + 'static,
    ) -> AtomicResponse<Self, T> {
        let load = self.load_missing(docs);
        AtomicResponse::new(Box::pin(
            async move {
                match load {
                    Some(load) => load.await.map(Some),
                    None => Ok(None),
                }
            }
            .into_actor(self)
            .map(move |loaded, act, ctx| {
                act.last_active = Instant::now();
                let loaded = loaded.map(|l| {
                    if let Some(l) = l {
                        act.install(l);
                    }
                });
                f(act, ctx, loaded)
            }),
        ))
    }

    /// Applies and queues a write; answers through `tx` now (refusal, no-op
    /// with nothing in flight) or at commit.
    fn write(
        &mut self,
        ctx: &mut Context<Self>,
        msg: Write,
        tx: oneshot::Sender<Result<WriteDone, WriteError>>,
    ) {
        let _span = tracing::debug_span!("apply_write", collection = %self.name).entered();
        let plan = match self.plan_write(msg) {
            Ok(plan) => plan,
            Err(err) => {
                // Counted in `seqsync_errors_total` by the engine handle.
                let _ = tx.send(Err(err));
                return;
            }
        };
        let waiter = Waiter::Write {
            tx,
            seqs: plan.seqs,
        };
        if plan.write.append.is_empty() && plan.write.peers.is_empty() {
            self.answer_after_inflight(waiter);
            return;
        }
        self.submit(ctx, plan.write, None, vec![waiter], plan.permit);
    }

    /// Validates, applies to memory and assigns seqs. On error nothing is
    /// queued; memory is either untouched or the actor is marked broken.
    fn plan_write(&mut self, msg: Write) -> Result<WritePlan, WriteError> {
        if self.broken {
            return Err(WriteError::Storage(recovering()));
        }
        let Some(state) = self.state.as_mut() else {
            return Err(WriteError::Internal("collection not loaded".to_owned()));
        };
        // Which version the push was written at: the current one (also when
        // the client does not say), or an older one to upgrade on ingest.
        let current = state.schema_version;
        let migrations = self.shared.migrations.clone();
        let upgrade_from = match msg.schema_version {
            Some(client) => crate::engine::client_schema_fit(
                &migrations,
                self.shared.config.schema.min_supported_version,
                client,
            )?
            .then_some(client),
            None => None,
        };
        debug_assert_eq!(
            current,
            migrations.latest(),
            "collections are migrated at open"
        );
        // Only a client that declares the current version (it ran the
        // migrations itself) may carry blocks under the ids reserved for
        // migration steps.
        let may_write_reserved = msg.schema_version == Some(current);
        // Reserve room in the commit queue before touching any document, so
        // a full queue refuses the write cleanly.
        let permit = self.shared.writer.reserve().map_err(|e| match e {
            SubmitError::Full => WriteError::Overloaded,
            SubmitError::Stopped => WriteError::ShuttingDown,
        })?;
        // Everything that can fail without touching memory comes first.
        let (base, epoch) = base_for(state)?;
        let schema_version = state.schema_version;
        let origin = msg.origin;
        let mut appended: Vec<Change> = Vec::new();
        let mut seqs = Vec::new();
        let mut next_seq = state.assigned_head + 1;
        match msg.op {
            WriteOp::Updates(items) => {
                // Decode everything first: an invalid update refuses the
                // whole batch before any document is touched.
                let mut decoded = Vec::with_capacity(items.len());
                for (doc, bytes) in items {
                    let update = decode_pushed_update(&bytes).map_err(|reason| {
                        WriteError::InvalidUpdate {
                            doc: doc.to_string(),
                            reason,
                        }
                    })?;
                    if !may_write_reserved {
                        if let Some(client) = reserved_client_in(&update) {
                            return Err(WriteError::ReservedClientId {
                                doc: doc.to_string(),
                                client,
                                collection: current,
                                reserved_start: MIGRATION_CLIENT_IDS.start,
                                reserved_end: MIGRATION_CLIENT_IDS.end,
                            });
                        }
                    }
                    if self.docs.get(&doc).is_some_and(|d| d.deleted) {
                        return Err(WriteError::DocumentDeleted {
                            doc: doc.to_string(),
                        });
                    }
                    decoded.push((doc, bytes, update));
                }
                for (doc, bytes, update) in decoded {
                    let Some(doc_state) = self.docs.get_mut(&doc) else {
                        return Err(WriteError::Internal(format!("document {doc} not loaded")));
                    };
                    // Refused before yrs touches memory (F3): when nothing
                    // of this batch changed memory yet, the document stays
                    // loaded, so a hostile client cannot force reloads.
                    if let Err(err) = doc_state.check_structure(&update) {
                        if !appended.is_empty() {
                            self.mark_broken();
                        }
                        return Err(WriteError::InvalidUpdate {
                            doc: doc.to_string(),
                            reason: seqsync_engine::UpdateDecodeError::Malformed(err.0),
                        });
                    }
                    match doc_state.apply(update) {
                        Ok(Applied::NoOp) => seqs.push(None),
                        Ok(Applied::Changed) => {
                            self.encoded.remove(&doc);
                            doc_state.note_delta(bytes.len() as u64);
                            seqs.push(Some(next_seq));
                            appended.push(Change {
                                seq: next_seq,
                                doc: doc.clone(),
                                kind: ChangeKind::Update,
                                payload: bytes,
                                schema_version: upgrade_from.unwrap_or(schema_version),
                                origin: origin.clone(),
                                log_checksum: 0,
                            });
                            next_seq += 1;
                            let Some(from) = upgrade_from else {
                                continue;
                            };
                            // Upgrade on ingest: the client wrote at `from`,
                            // so the steps from there run on the document and
                            // their output joins the same commit.
                            match migrations.migrate_state(&doc, doc_state, from, current) {
                                Ok(outputs) => {
                                    metrics::counter!(m::UPGRADED_PUSHES).increment(1);
                                    for output in outputs {
                                        doc_state.note_delta(output.update.len() as u64);
                                        appended.push(Change {
                                            seq: next_seq,
                                            doc: doc.clone(),
                                            kind: ChangeKind::Update,
                                            payload: output.update,
                                            schema_version: current,
                                            origin: Some(PeerId::migration()),
                                            log_checksum: 0,
                                        });
                                        next_seq += 1;
                                    }
                                }
                                Err(err) => {
                                    // The client's update is in memory already.
                                    self.mark_broken();
                                    return Err(WriteError::MigrationFailed {
                                        doc: doc.to_string(),
                                        from,
                                        reason: err.to_string(),
                                    });
                                }
                            }
                        }
                        Err(err) => {
                            // Earlier updates of the batch may be applied
                            // already: memory no longer matches storage.
                            self.mark_broken();
                            return Err(WriteError::InvalidUpdate {
                                doc: doc.to_string(),
                                reason: seqsync_engine::UpdateDecodeError::Malformed(err.0),
                            });
                        }
                    }
                }
            }
            WriteOp::Delete(doc) => match self.docs.get_mut(&doc) {
                Some(d) if d.deleted => seqs.push(None),
                Some(d) => {
                    d.deleted = true;
                    self.encoded.remove(&doc);
                    seqs.push(Some(next_seq));
                    appended.push(Change {
                        seq: next_seq,
                        doc,
                        kind: ChangeKind::Delete,
                        payload: Vec::new(),
                        schema_version,
                        origin: origin.clone(),
                        log_checksum: 0,
                    });
                }
                None => return Err(WriteError::Internal(format!("document {doc} not loaded"))),
            },
        }
        let mut peers = Vec::new();
        if let Some(known) = origin.as_ref().and_then(|o| state.peers.get_mut(o)) {
            known.last_seen_ms = now_ms();
            peers.push(known.clone());
        }
        let count = appended.len() as u64;
        metrics::counter!(m::PUSHES).increment(count);
        metrics::counter!(m::NOOP_PUSHES)
            .increment(seqs.iter().filter(|s| s.is_none()).count() as u64);
        metrics::counter!(m::PUSHED_BYTES)
            .increment(appended.iter().map(|c| c.payload.len() as u64).sum());
        if count > 0 || !peers.is_empty() {
            state.epoch = Some(epoch);
            state.assigned_head += count;
        }
        // The running log checksum, as `plan_collection_write` computes it
        // in the commit (storage recomputes it and ignores these values).
        for change in &mut appended {
            state.assigned_checksum = state
                .assigned_checksum
                .wrapping_add(seqsync_engine::change_checksum(&epoch, change));
            change.log_checksum = state.assigned_checksum;
        }
        Ok(WritePlan {
            write: CollectionWrite {
                collection: self.name.clone(),
                base,
                append: appended,
                compact: Vec::new(),
                peers,
                raise_schema_version: None,
                append_mode: Default::default(),
            },
            seqs,
            permit,
        })
    }

    /// Queues `write` with the writer; `waiters` are answered at commit.
    fn submit(
        &mut self,
        ctx: &mut Context<Self>,
        write: CollectionWrite,
        compaction: Option<(DocId, CompactionPlan)>,
        waiters: Vec<Waiter>,
        permit: crate::writer::Permit,
    ) {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        for change in &write.append {
            *self.doc_inflight.entry(change.doc.clone()).or_default() += 1;
        }
        let changes = write.append.clone();
        let addr = ctx.address();
        permit.submit(WriteRequest {
            write,
            done: Box::new(move |result| addr.do_send(CommitDone { ticket, result })),
        });
        self.inflight.push_back(Inflight {
            ticket,
            changes,
            compaction,
            waiters,
        });
    }

    /// Answers `waiter` once everything now in flight is committed (its
    /// content may be what a retried push repeats), or at once.
    fn answer_after_inflight(&mut self, waiter: Waiter) {
        match self.inflight.back_mut() {
            Some(last) => last.waiters.push(waiter),
            None => {
                let head = self.state.as_ref().map_or(0, |s| s.committed_head);
                waiter.succeed(head);
            }
        }
    }

    fn ack(
        &mut self,
        ctx: &mut Context<Self>,
        msg: Ack,
        tx: oneshot::Sender<Result<Seq, seqsync_engine::AckError>>,
    ) {
        use seqsync_engine::AckError;
        if self.broken {
            let _ = tx.send(Err(AckError::Storage(recovering())));
            return;
        }
        let Some(state) = self.state.as_mut() else {
            let _ = tx.send(Err(AckError::Internal("collection not loaded".to_owned())));
            return;
        };
        if msg.seq > state.committed_head {
            let _ = tx.send(Err(AckError::AckBeyondHead {
                seq: msg.seq,
                head: state.committed_head,
            }));
            return;
        }
        let permit = match self.shared.writer.reserve() {
            Ok(permit) => permit,
            Err(_) => {
                let _ = tx.send(Err(AckError::Storage(StorageError::backend(
                    "engine",
                    "recording an ack",
                    "the commit queue is full; retry shortly",
                ))));
                return;
            }
        };
        let (base, epoch) = match base_for(state) {
            Ok(pair) => pair,
            Err(err) => {
                let _ = tx.send(Err(AckError::Internal(err.to_string())));
                return;
            }
        };
        let record = state
            .peers
            .entry(msg.peer.clone())
            .or_insert_with(|| PeerRecord {
                peer: msg.peer.clone(),
                acked: 0,
                last_seen_ms: 0,
            });
        record.acked = record.acked.max(msg.seq);
        record.last_seen_ms = record.last_seen_ms.max(now_ms());
        let record = record.clone();
        let acked = record.acked;

        state.epoch = Some(epoch);
        let write = CollectionWrite {
            collection: self.name.clone(),
            base,
            append: Vec::new(),
            compact: Vec::new(),
            peers: vec![record],
            raise_schema_version: None,
            append_mode: Default::default(),
        };
        self.submit(ctx, write, None, vec![Waiter::Ack { tx, acked }], permit);
    }

    fn commit_done(&mut self, ctx: &mut Context<Self>, msg: CommitDone) {
        let Some(front) = self.inflight.pop_front() else {
            tracing::error!(collection = %self.name, ticket = msg.ticket, "commit reported with nothing in flight");
            self.mark_broken();
            return;
        };
        if front.ticket != msg.ticket {
            // Cannot happen while the writer keeps order; if it does, trust
            // nothing in memory.
            tracing::error!(collection = %self.name, expected = front.ticket, got = msg.ticket, "commits reported out of order");
            let err =
                StorageError::backend("engine", "ordering commits", "commit reports out of order");
            front.waiters.into_iter().for_each(|w| w.fail(&err));
            self.mark_broken();
            return;
        }
        for change in &front.changes {
            if let Some(count) = self.doc_inflight.get_mut(&change.doc) {
                *count -= 1;
                if *count == 0 {
                    self.doc_inflight.remove(&change.doc);
                }
            }
        }
        let compacted = msg.result.is_ok();
        if let Some((doc, plan)) = front.compaction.as_ref() {
            self.finish_compaction(doc, compacted.then_some(plan));
        }
        match msg.result {
            Ok(()) => {
                let head = match (self.state.as_mut(), front.changes.last()) {
                    (Some(state), Some(last)) => {
                        debug_assert!(
                            last.seq > state.committed_head,
                            "commits move the head forward"
                        );
                        state.committed_head = last.seq;
                        last.seq
                    }
                    (Some(state), None) => state.committed_head,
                    (None, last) => last.map_or(0, |c| c.seq),
                };
                // Subscribers first, then the pushers: by the time a push is
                // answered, its change is in every live subscriber's buffer.
                let touched: HashSet<DocId> = front.changes.iter().map(|c| c.doc.clone()).collect();
                if !self.broken {
                    self.broadcast(front.changes);
                }
                front.waiters.into_iter().for_each(|w| w.succeed(head));
                if !self.broken {
                    for doc in touched {
                        self.maybe_compact(ctx, doc);
                    }
                }
            }
            Err(err) => {
                tracing::warn!(collection = %self.name, error = %err, "commit failed; collection will reload from storage");
                front.waiters.into_iter().for_each(|w| w.fail(&err));
                self.mark_broken();
            }
        }
        self.reset_if_drained();
    }

    /// Feeds one commit's changes to the live subscribers: the whole batch
    /// to the collection's, and to each touched document's subscribers only
    /// that document's changes. A subscriber whose buffer is full is
    /// dropped: its stream notices the closed channel and catches up from
    /// storage instead.
    fn broadcast(&mut self, changes: Vec<Change>) {
        let (Some(first), Some(last)) = (changes.first(), changes.last()) else {
            return;
        };
        let (since, through) = (first.seq - 1, last.seq);
        let mut delivered = 0u64;
        if !self.doc_subscribers.is_empty() {
            // Group the touched documents' changes, each in seq order,
            // without looking at documents nobody follows.
            let mut by_doc: HashMap<DocId, Vec<Change>> = HashMap::new();
            for change in &changes {
                if self.doc_subscribers.contains_key(&change.doc) {
                    by_doc
                        .entry(change.doc.clone())
                        .or_default()
                        .push(change.clone());
                }
            }
            for (doc, list) in by_doc {
                let Some(entry) = self.doc_subscribers.get_mut(&doc) else {
                    continue;
                };
                let changes: Arc<[Change]> = list.into();
                let since = entry.since;
                entry.senders.retain(|tx| {
                    let sent = tx
                        .try_send(LiveBatch {
                            since,
                            through,
                            changes: changes.clone(),
                        })
                        .is_ok();
                    delivered += u64::from(sent);
                    sent
                });
                entry.since = through;
                if entry.senders.is_empty() {
                    self.doc_subscribers.remove(&doc);
                }
            }
        }
        if !self.subscribers.is_empty() {
            let batch: Arc<[Change]> = changes.into();
            self.subscribers.retain(|tx| {
                let sent = tx
                    .try_send(LiveBatch {
                        since,
                        through,
                        changes: batch.clone(),
                    })
                    .is_ok();
                delivered += u64::from(sent);
                sent
            });
        }
        if delivered > 0 {
            self.deliveries.increment(delivered);
            self.shared
                .live_deliveries
                .fetch_add(delivered, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Closes every live subscriber (they resume from storage at their
    /// cursor, so none sees a gap).
    fn drop_subscribers(&mut self) {
        self.subscribers.clear();
        self.doc_subscribers.clear();
    }

    fn has_subscribers(&self) -> bool {
        !self.subscribers.is_empty() || !self.doc_subscribers.is_empty()
    }

    fn mark_broken(&mut self) {
        self.broken = true;
        // Live subscribers must not see a gap: close them; they resume from
        // storage at their cursor.
        self.drop_subscribers();
        self.reset_if_drained();
    }

    fn reset_if_drained(&mut self) {
        if self.broken && self.inflight.is_empty() {
            self.unload_documents();
            self.state = None;
            self.doc_inflight.clear();
            let pending: Vec<DocId> = self.compacting.keys().cloned().collect();
            for doc in pending {
                self.finish_compaction(&doc, None);
            }
            self.broken = false;
        }
    }

    fn unload_documents(&mut self) {
        metrics::gauge!(m::LOADED_DOCUMENTS).decrement(self.docs.len() as f64);
        self.docs.clear();
        self.encoded.clear();
    }

    /// Starts a compaction of `doc` if its deltas crossed a threshold (or it
    /// was just deleted) and none is under way.
    fn maybe_compact(&mut self, ctx: &mut Context<Self>, doc: DocId) {
        let limits = &self.shared.config.compaction;
        let due = self.docs.get(&doc).is_some_and(|d| {
            d.deleted || limits.is_due(d.deltas_since_snapshot, d.delta_bytes_since_snapshot)
        });
        if due && !self.compacting.contains_key(&doc) {
            self.start_compaction(ctx, doc, None);
        }
    }

    /// The highest seq compaction may cover: the lowest ack among active
    /// peers (they keep receiving small deltas), else the committed head.
    fn compaction_cutoff(&self) -> Seq {
        let Some(state) = self.state.as_ref() else {
            return 0;
        };
        let timeout_secs = self.shared.config.compaction.peer_timeout_secs;
        let now = now_ms();
        state
            .peers
            .values()
            .filter(|p| p.is_active(now, timeout_secs))
            .map(|p| p.acked)
            .min()
            .map_or(state.committed_head, |acked| {
                acked.min(state.committed_head)
            })
    }

    /// Asks the compactor for a plan; the answer comes back to
    /// `compaction_planned` while the actor keeps serving.
    fn start_compaction(&mut self, ctx: &mut Context<Self>, doc: DocId, run: Option<u64>) {
        if let Some(runs) = self.compacting.get_mut(&doc) {
            // One compaction per document at a time; a manual run waits for
            // the one under way.
            runs.extend(run);
            return;
        }
        let Some(state) = self.state.as_ref() else {
            if let Some(run) = run {
                self.run_step(run, None);
            }
            return;
        };
        self.compacting
            .insert(doc.clone(), run.into_iter().collect());
        let request = PlanCompaction {
            collection: self.name.clone(),
            doc: doc.clone(),
            cutoff: self.compaction_cutoff(),
            schema_version: state.schema_version,
        };
        let planned = self.shared.compactor.send(request);
        ctx.spawn(planned.into_actor(self).map(move |result, act, ctx| {
            let result = result.unwrap_or_else(|_| {
                Err(StorageError::backend(
                    "engine",
                    "compacting",
                    "the compactor is gone",
                ))
            });
            act.guarded(ctx, |act, ctx| act.compaction_planned(ctx, doc, result));
        }));
    }

    fn compaction_planned(
        &mut self,
        ctx: &mut Context<Self>,
        doc: DocId,
        result: Result<Option<CompactionPlan>, StorageError>,
    ) {
        let plan = match result {
            Ok(Some(plan)) => plan,
            Ok(None) => return self.finish_compaction(&doc, None),
            Err(err) => {
                tracing::warn!(collection = %self.name, %doc, error = %err, "compaction not planned");
                return self.finish_compaction(&doc, None);
            }
        };
        let (Some(state), false) = (self.state.as_mut(), self.broken) else {
            return self.finish_compaction(&doc, None);
        };
        let Ok(permit) = self.shared.writer.reserve() else {
            return self.finish_compaction(&doc, None);
        };
        let Ok((base, epoch)) = base_for(state) else {
            return self.finish_compaction(&doc, None);
        };
        state.epoch = Some(epoch);
        let write = CollectionWrite {
            collection: self.name.clone(),
            base,
            append: Vec::new(),
            compact: vec![plan.compaction.clone()],
            peers: Vec::new(),
            raise_schema_version: None,
            append_mode: Default::default(),
        };
        self.submit(ctx, write, Some((doc, plan)), Vec::new(), permit);
    }

    /// A document's compaction is over: committed (`Some`) or abandoned.
    fn finish_compaction(&mut self, doc: &DocId, committed: Option<&CompactionPlan>) {
        let runs = self.compacting.remove(doc).unwrap_or_default();
        if let Some(plan) = committed {
            if let Some(state) = self.docs.get_mut(doc) {
                state.deltas_since_snapshot = state
                    .deltas_since_snapshot
                    .saturating_sub(plan.deltas_removed);
                state.delta_bytes_since_snapshot = state
                    .delta_bytes_since_snapshot
                    .saturating_sub(plan.bytes_before);
            }
            metrics::counter!(m::COMPACTIONS).increment(1);
            metrics::counter!(m::BYTES_RECLAIMED)
                .increment(plan.bytes_before.saturating_sub(plan.bytes_after));
        }
        for run in runs {
            self.run_step(run, committed);
        }
    }

    /// One document of a manual run is done.
    fn run_step(&mut self, run: u64, committed: Option<&CompactionPlan>) {
        let Some(entry) = self.manual_runs.get_mut(&run) else {
            return;
        };
        if let Some(plan) = committed {
            entry.summary.documents_compacted += 1;
            entry.summary.changes_removed += plan.changes_removed;
            entry.summary.deltas_removed += plan.deltas_removed;
            entry.summary.bytes_before += plan.bytes_before;
            entry.summary.bytes_after += plan.bytes_after;
        }
        entry.remaining = entry.remaining.saturating_sub(1);
        if entry.remaining == 0 {
            if let Some(done) = self.manual_runs.remove(&run) {
                let _ = done.tx.send(Ok(done.summary));
            }
        }
    }

    /// The document as memory holds it and the committed head, when that
    /// is exactly what storage holds: loaded, not broken, no write of it in
    /// flight, no pending structures (the encoding leaves those out;
    /// storage knows which cursor re-delivers them), and an encoding that
    /// decodes. `None`: read storage.
    fn exact_doc(&self, doc: &DocId) -> Option<(&DocState, Seq)> {
        let state = self.state.as_ref()?;
        if self.broken || self.doc_inflight.contains_key(doc) {
            return None;
        }
        let loaded = self.docs.get(doc)?;
        // Unreadable (F2): the storage path answers the typed error.
        if loaded.has_pending() || loaded.check_readable().is_err() {
            return None;
        }
        Some((loaded, state.committed_head))
    }

    fn cached_read(&self, msg: CachedRead) -> Option<CachedDoc> {
        let (doc, head) = self.exact_doc(&msg.doc)?;
        if doc.deleted {
            return Some(CachedDoc::Deleted);
        }
        if doc.state_vector().is_empty() {
            // As in `shared_read`: every stored update adds content.
            return Some(CachedDoc::Missing);
        }
        let update = match &msg.state_vector {
            Some(sv) => doc.encode_diff(sv),
            None => doc.encode_state(),
        };
        Some(CachedDoc::State(update, head))
    }

    fn shared_read(&mut self, msg: &SharedRead) -> SharedDoc {
        let Some((doc, head)) = self.exact_doc(&msg.doc) else {
            return SharedDoc::Unavailable;
        };
        if doc.deleted {
            return SharedDoc::Deleted;
        }
        let state_vector = doc.state_vector();
        if state_vector.is_empty() {
            // Every stored update adds content, so an existing document
            // never has an empty state vector (pending ones are above).
            return SharedDoc::Empty;
        }
        match msg.what {
            SharedWhat::StateVector => SharedDoc::StateVector(
                yrs::updates::encoder::Encode::encode_v1(&state_vector),
                head,
            ),
            SharedWhat::State => {
                if let Some(encoded) = self.encoded.get(&msg.doc) {
                    return SharedDoc::State(encoded.clone(), head);
                }
                let encoded: Arc<[u8]> = doc.encode_state().into();
                // Bounded: past MAX_SHARED_ENCODED_BYTES every kept
                // encoding is dropped (callers holding one keep theirs).
                let cached: usize = self.encoded.values().map(|e| e.len()).sum();
                if cached + encoded.len() > MAX_SHARED_ENCODED_BYTES {
                    self.encoded.clear();
                }
                if encoded.len() <= MAX_SHARED_ENCODED_BYTES {
                    self.encoded.insert(msg.doc.clone(), encoded.clone());
                }
                SharedDoc::State(encoded, head)
            }
        }
    }

    fn check_idle(&mut self, ctx: &mut Context<Self>) {
        let idle = Duration::from_secs(self.shared.config.actors.idle_unload_secs);
        self.subscribers.retain(|tx| !tx.is_closed());
        self.doc_subscribers.retain(|_, entry| {
            entry.senders.retain(|tx| !tx.is_closed());
            !entry.senders.is_empty()
        });
        // Never unload with work under way: writes in flight, a compaction
        // being planned, or a `compact()` caller waiting for its answer.
        let busy = !self.inflight.is_empty()
            || !self.compacting.is_empty()
            || !self.manual_runs.is_empty()
            || self.broken;
        if self.last_active.elapsed() < idle || busy {
            return;
        }
        if !self.has_subscribers() {
            ctx.stop();
        } else if !self.docs.is_empty() {
            self.unload_documents();
        }
    }

    /// Runs `f`, turning a panic into `on_panic()` and a stop: after a panic
    /// nothing in memory can be trusted.
    fn guarded(
        &mut self,
        ctx: &mut Context<Self>,
        f: impl FnOnce(&mut Self, &mut Context<Self>),
    ) -> bool {
        let ok = catch_unwind(AssertUnwindSafe(|| f(self, ctx))).is_ok();
        if !ok {
            tracing::error!(collection = %self.name, "panic in collection actor; restarting it from storage");
            metrics::counter!(m::ERRORS, "kind" => "panic").increment(1);
            self.drop_subscribers();
            ctx.stop();
        }
        ok
    }
}

struct WritePlan {
    write: CollectionWrite,
    seqs: Vec<Option<Seq>>,
    permit: crate::writer::Permit,
}

/// The base of the next write and the epoch the collection has after it.
fn base_for(state: &CollectionState) -> Result<(WriteBase, Epoch), WriteError> {
    Ok(match state.epoch {
        Some(epoch) => (
            WriteBase::Existing {
                epoch,
                head: state.assigned_head,
            },
            epoch,
        ),
        None => {
            let epoch = Epoch::random()
                .map_err(|e| WriteError::Internal(format!("no randomness for a new epoch: {e}")))?;
            (
                WriteBase::Create {
                    epoch,
                    schema_version: state.schema_version,
                },
                epoch,
            )
        }
    })
}

fn recovering() -> StorageError {
    StorageError::backend(
        "engine",
        "writing",
        "the collection is recovering from a failed commit; retry shortly",
    )
}

// ---------------------------------------------------------------------------
// Actor
// ---------------------------------------------------------------------------

impl Actor for CollectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let capacity = usize::try_from(self.shared.config.actors.mailbox_capacity).unwrap_or(1024);
        ctx.set_mailbox_capacity(capacity);
        let idle_secs = self.shared.config.actors.idle_unload_secs;
        let every = Duration::from_millis((idle_secs * 1000 / 2).clamp(100, 30_000));
        ctx.run_interval(every, |act, ctx| act.check_idle(ctx));
        metrics::gauge!(m::LOADED_COLLECTIONS).increment(1.0);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.unload_documents();
        metrics::gauge!(m::LOADED_COLLECTIONS).decrement(1.0);
        self.shared.registry.remove(&self.name, self.generation);
        // A shared store's write lease is given back, so another node may
        // write at once; on the read pool (blocking I/O never runs here).
        // Weakly: at shutdown the future may never run, and it must not
        // keep the store open (a reopen would find it locked); the store's
        // own drop releases what is left.
        let shared = Arc::downgrade(&self.shared);
        let name = self.name.clone();
        actix::spawn(async move {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            if let Err(err) = shared
                .read(move |storage| storage.release_collection(&name))
                .await
            {
                tracing::warn!(error = %err, "releasing a collection's lease failed; it will expire");
            }
        });
    }
}

// ---------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------

impl Handler<Write> for CollectionActor {
    type Result = AtomicResponse<Self, WriteReply>;

    fn handle(&mut self, msg: Write, _ctx: &mut Context<Self>) -> Self::Result {
        let docs: Vec<DocId> = match &msg.op {
            WriteOp::Updates(items) => items.iter().map(|(d, _)| d.clone()).collect(),
            WriteOp::Delete(doc) => vec![doc.clone()],
        };
        self.with_loaded(&docs, move |act, ctx, loaded| {
            let (tx, rx) = oneshot::channel();
            match loaded {
                Err(err) => {
                    let _ = tx.send(Err(WriteError::Storage(err)));
                }
                Ok(()) => {
                    let mut tx = Some(tx);
                    let ok = act.guarded(ctx, |act, ctx| {
                        if let Some(tx) = tx.take() {
                            act.write(ctx, msg, tx);
                        }
                    });
                    if !ok {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(Err(WriteError::Internal(
                                "the collection actor panicked".to_owned(),
                            )));
                        }
                    }
                }
            }
            rx
        })
    }
}

impl Handler<Ack> for CollectionActor {
    type Result = AtomicResponse<Self, AckReply>;

    fn handle(&mut self, msg: Ack, _ctx: &mut Context<Self>) -> Self::Result {
        self.with_loaded(&[], move |act, ctx, loaded| {
            let (tx, rx) = oneshot::channel();
            match loaded {
                Err(err) => {
                    let _ = tx.send(Err(seqsync_engine::AckError::Storage(err)));
                }
                Ok(()) => {
                    act.guarded(ctx, |act, ctx| act.ack(ctx, msg, tx));
                }
            }
            rx
        })
    }
}

impl Handler<Subscribe> for CollectionActor {
    type Result = AtomicResponse<Self, Result<Grant, StorageError>>;

    fn handle(&mut self, msg: Subscribe, _ctx: &mut Context<Self>) -> Self::Result {
        self.with_loaded(&[], move |act, _ctx, loaded| {
            loaded?;
            let Some(state) = act.state.as_ref() else {
                return Err(StorageError::backend(
                    "engine",
                    "subscribing",
                    "collection not loaded",
                ));
            };
            let capacity =
                usize::try_from(act.shared.config.actors.mailbox_capacity).unwrap_or(1024);
            let (tx, rx) = mpsc::channel(capacity);
            let grant = Grant {
                epoch: state.epoch,
                head: state.committed_head,
                assigned_head: state.assigned_head,
                live: rx,
            };
            if !act.broken {
                match msg.doc {
                    None => act.subscribers.push(tx),
                    Some(doc) => {
                        let head = state.committed_head;
                        act.doc_subscribers
                            .entry(doc)
                            .or_insert_with(|| DocSubscribers {
                                since: head,
                                senders: Vec::new(),
                            })
                            .senders
                            .push(tx);
                    }
                }
            }
            // When broken, `tx` is dropped: the stream catches up to `head`
            // from storage, sees the closed channel and registers again.
            Ok(grant)
        })
    }
}

impl Handler<CachedRead> for CollectionActor {
    type Result = Option<CachedDoc>;

    fn handle(&mut self, msg: CachedRead, ctx: &mut Context<Self>) -> Self::Result {
        self.last_active = Instant::now();
        let mut out = None;
        self.guarded(ctx, |act, _| out = act.cached_read(msg));
        out
    }
}

impl Handler<SharedRead> for CollectionActor {
    type Result = AtomicResponse<Self, Result<SharedDoc, StorageError>>;

    fn handle(&mut self, msg: SharedRead, _ctx: &mut Context<Self>) -> Self::Result {
        let docs = [msg.doc.clone()];
        self.with_loaded(&docs, move |act, ctx, loaded| {
            loaded?;
            let mut out = SharedDoc::Unavailable;
            act.guarded(ctx, |act, _| out = act.shared_read(&msg));
            Ok(out)
        })
    }
}

impl Handler<CommitDone> for CollectionActor {
    type Result = ();

    fn handle(&mut self, msg: CommitDone, ctx: &mut Context<Self>) {
        self.guarded(ctx, |act, ctx| act.commit_done(ctx, msg));
    }
}

/// Another node wrote: the loaded documents and head are stale. The actor
/// resets as after a failed commit (the next message reloads from storage)
/// and closes its live subscribers, which register again and catch up from
/// storage at their own cursors: so a subscriber on this node sees every
/// change the other node committed, in seq order, without a gap or a
/// duplicate at the seam (the ordinary stored-then-live path).
impl Handler<ExternalCommit> for CollectionActor {
    type Result = ();

    fn handle(&mut self, msg: ExternalCommit, _ctx: &mut Self::Context) {
        if self
            .state
            .as_ref()
            .is_some_and(|state| msg.head <= state.committed_head)
        {
            return;
        }
        if self.state.is_none() && self.docs.is_empty() && !self.has_subscribers() {
            return;
        }
        tracing::debug!(collection = %self.name, head = msg.head, "another node committed; reloading");
        metrics::counter!(m::EXTERNAL_COMMITS).increment(1);
        self.mark_broken();
    }
}

impl Handler<CompactNow> for CollectionActor {
    type Result = AtomicResponse<Self, CompactReply>;

    fn handle(&mut self, _msg: CompactNow, _ctx: &mut Context<Self>) -> Self::Result {
        self.with_loaded(&[], move |act, ctx, loaded| {
            let (tx, rx) = oneshot::channel();
            if let Err(err) = loaded {
                let _ = tx.send(Err(WriteError::Storage(err)));
                return rx;
            }
            let run = act.next_run;
            act.next_run += 1;
            act.manual_runs.insert(
                run,
                ManualRun {
                    remaining: 0,
                    summary: CompactionSummary::default(),
                    tx,
                },
            );
            // The document list comes from storage (every document, loaded
            // or not), off the arbiter.
            let shared = act.shared.clone();
            let name = act.name.clone();
            let addr = ctx.address();
            actix::spawn(async move {
                let docs = shared
                    .read(move |storage| {
                        Ok(storage
                            .documents(&name)?
                            .into_iter()
                            .map(|d| d.doc)
                            .collect())
                    })
                    .await;
                addr.do_send(CompactDocuments { run, docs });
            });
            rx
        })
    }
}

impl Handler<CompactDocuments> for CollectionActor {
    type Result = ();

    fn handle(&mut self, msg: CompactDocuments, ctx: &mut Context<Self>) {
        let docs = match msg.docs {
            Ok(docs) => docs,
            Err(err) => {
                if let Some(run) = self.manual_runs.remove(&msg.run) {
                    let _ = run.tx.send(Err(WriteError::Storage(err)));
                }
                return;
            }
        };
        if docs.is_empty() {
            if let Some(run) = self.manual_runs.remove(&msg.run) {
                let _ = run.tx.send(Ok(run.summary));
            }
            return;
        }
        if let Some(run) = self.manual_runs.get_mut(&msg.run) {
            run.remaining = docs.len();
        }
        self.guarded(ctx, |act, ctx| {
            for doc in docs {
                act.start_compaction(ctx, doc, Some(msg.run));
            }
        });
    }
}
