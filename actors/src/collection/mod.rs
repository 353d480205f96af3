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
//!
//! Files: this one (messages, state, `impl Actor`, one `Handler` per
//! message), `plan.rs` (the write plan, a pure function over plain data),
//! `write.rs` (queued with the writer, answered at commit), `fanout.rs`
//! (live subscribers), `external.rs` (other nodes' commits, caught up
//! incrementally), `compaction.rs`, `reads.rs` (served from memory) and
//! `lifecycle.rs` (load, unload, reset).

mod compaction;
mod external;
mod fanout;
mod lifecycle;
mod plan;
mod reads;
mod write;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use seqsync_engine::{
    Change, CollectionMeta, CollectionName, CollectionWrite, CompactionPlan, DocId, DocState,
    Epoch, PeerId, PeerRecord, Seq, StorageError, WriteError,
};
use tokio::sync::{mpsc, oneshot};
use yrs::StateVector;

use crate::context::Shared;
use crate::metrics as m;
use crate::types::CompactionSummary;

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
    /// Recorded with each change (checked by the engine's API).
    pub(crate) author: Option<String>,
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
    /// When that node committed (ms since the Unix epoch, its clock), if
    /// the store said.
    pub(crate) committed_ms: Option<u64>,
}

impl Message for ExternalCommit {
    type Result = ();
}

/// From the read pool: what a catch-up read found after `after`.
struct CaughtUp {
    after: Seq,
    result: Result<Option<external::NewChanges>, StorageError>,
}

impl Message for CaughtUp {
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
    /// A read of another node's changes in flight (`external.rs`).
    catch_up: Option<external::CatchUp>,
    /// When a catch-up last read the peer table.
    peers_read_at: Option<Instant>,
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
            catch_up: None,
            peers_read_at: None,
        }
    }
}

struct WritePlan {
    write: CollectionWrite,
    seqs: Vec<Option<Seq>>,
    permit: crate::writer::Permit,
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

/// Another node wrote: the loaded documents and head are behind. The actor
/// reads the new changes once, applies them and hands them to its live
/// subscribers (`external.rs`); where that could be wrong it resets as after
/// a failed commit, and its subscribers catch up from storage. Either way a
/// subscriber on this node sees every change the other node committed, in
/// seq order, without a gap or a duplicate.
impl Handler<ExternalCommit> for CollectionActor {
    type Result = ();

    fn handle(&mut self, msg: ExternalCommit, ctx: &mut Self::Context) {
        self.guarded(ctx, |act, ctx| {
            act.external_commit(ctx, msg.head, msg.committed_ms)
        });
    }
}

impl Handler<CaughtUp> for CollectionActor {
    type Result = ();

    fn handle(&mut self, msg: CaughtUp, ctx: &mut Self::Context) {
        self.guarded(ctx, |act, ctx| act.caught_up(ctx, msg));
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
