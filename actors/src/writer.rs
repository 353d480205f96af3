//! The storage writer: one thread that group-commits every write.
//!
//! Collection actors assign seqs and hand their writes here; they do not wait.
//! The writer takes everything queued (up to `MAX_GROUP_REQUESTS` requests or
//! `MAX_GROUP_BYTES` of payload), merges consecutive writes of one collection
//! into one `CollectionWrite`, and commits the lot in **one** storage
//! transaction: one fsync acknowledges many pushes from many collections.
//! This is how durable throughput beats the disk's fsync rate.
//!
//! Lingering: a group may wait a little for more requests before it
//! commits, in two cases, and only where waiting pays.
//! - Writers just acknowledged by a large group are on their way back (N
//!   writers in a closed loop): wait at most half a commit, ≤ 500 µs, so
//!   they share the next commit instead of splitting into a group of one
//!   and a group of the rest.
//! - Under a trickle (hundreds of rooms typing, writers that do not wait
//!   for each other, seen as requests queued while a commit ran), the
//!   oldest request waits at most `actors.trickle_linger_us` **and never
//!   longer than a commit takes** (a moving average of the recent ones).
//!   Requests that arrive while a commit runs wait behind it anyway and
//!   form the next group at no extra cost; waiting longer than a commit
//!   lasts would cost a keystroke more than committing at once. On this
//!   project's 2-core machine, 300 rooms typing: commits of 3.6 edits
//!   instead of 2.3, 3.7 KB written per edit instead of 4.5, keystroke to
//!   observer p50 0.9 ms (a fixed 2 ms linger: 8 edits, 2.9 KB, 2.6 ms).
//!   Writers that wait for their ack queue nothing during a commit and
//!   never trigger it; under a trickle they do not linger as "returning"
//!   writers either (a trickle's groups vary in size by chance, not
//!   because writers are on their way back).
//!
//! Order: requests are committed in the order they were queued, so one
//! collection's seqs reach storage in order, and completions are reported in
//! that order too.
//!
//! Isolation: a group is committed with `Storage::commit_each`, so a write
//! refused for a reason of its own collection (conflict, another node's
//! lease, invalid write: one collection's stale base after an earlier
//! failure) fails only that collection's pushes. An I/O failure fails the
//! whole group, since it concerns the store itself.
//!
//! The queue is bounded (`queue_capacity`); a full queue makes `reserve`
//! fail, and the actor answers `Overloaded` instead of buffering without end.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use seqsync_engine::{CollectionWrite, Seq, Storage, StorageError, WriteBase, WriteBatch};
use tokio::sync::{mpsc, oneshot};

use crate::metrics as m;

/// Most requests merged into one commit.
const MAX_GROUP_REQUESTS: usize = 4096;
/// Most payload bytes merged into one commit (a larger single request still
/// commits alone).
const MAX_GROUP_BYTES: usize = 64 << 20;

/// Longest a group waits for stragglers (see `run`).
const MAX_LINGER: Duration = Duration::from_micros(500);
/// The writer counts as under a trickle for this long after a request was
/// queued while a commit ran.
const TRICKLE_MEMORY: Duration = Duration::from_millis(50);
/// A trickle group stops lingering at this size: sharing a commit among
/// more gains little, and a group this large means busy writers are coming
/// back anyway.
const TRICKLE_MAX_GROUP: usize = 16;

/// Sleep between looks at the queue while lingering.
const LINGER_STEP: Duration = Duration::from_micros(20);
/// Sleep between looks at the queue while lingering under a trickle.
const TRICKLE_STEP: Duration = Duration::from_micros(250);

/// Called once with the outcome of the commit that carried a request.
pub(crate) type Completion = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// One collection's write plus whom to tell when it is committed.
pub(crate) struct WriteRequest {
    pub(crate) write: CollectionWrite,
    pub(crate) done: Completion,
}

/// A request as queued, with the moment it was queued (for the linger).
struct Queued {
    request: WriteRequest,
    at: Instant,
}

enum WriterMsg {
    Write(Queued),
    /// Answered once every request queued before it is committed.
    Flush(oneshot::Sender<()>),
}

/// Why a write could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubmitError {
    /// The queue is at capacity.
    Full,
    /// The writer has stopped (shutdown).
    Stopped,
}

/// A reserved place in the writer's queue.
pub(crate) struct Permit(mpsc::OwnedPermit<WriterMsg>);

impl Permit {
    /// Queues `request` in the reserved place. Never fails or waits.
    pub(crate) fn submit(self, request: WriteRequest) {
        self.0.send(WriterMsg::Write(Queued {
            request,
            at: Instant::now(),
        }));
    }
}

/// Handle to the writer thread.
pub(crate) struct Writer {
    tx: Mutex<Option<mpsc::Sender<WriterMsg>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer thread. `trickle_linger` is how long, under a
    /// trickle, the oldest request of a group may wait for others to share
    /// its commit (`actors.trickle_linger_us`; zero never waits for that).
    pub(crate) fn start(
        storage: Arc<dyn Storage>,
        queue_capacity: usize,
        trickle_linger: Duration,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(queue_capacity.max(1));
        let thread = std::thread::Builder::new()
            .name("seqsync-writer".to_owned())
            .spawn(move || run(storage, rx, trickle_linger))?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Reserves room for one write without waiting. Errors when the queue
    /// is full or the writer has stopped. Reserve before changing any state
    /// the write depends on, so a refusal needs no rollback.
    pub(crate) fn reserve(&self) -> Result<Permit, SubmitError> {
        let tx = self.tx.lock().ok().and_then(|tx| tx.clone());
        let Some(tx) = tx else {
            return Err(SubmitError::Stopped);
        };
        tx.try_reserve_owned().map(Permit).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SubmitError::Full,
            mpsc::error::TrySendError::Closed(_) => SubmitError::Stopped,
        })
    }

    /// Resolves once everything queued before the call is committed (or
    /// failed). Resolves at once if the writer has stopped.
    pub(crate) async fn flush(&self) {
        let tx = self.tx.lock().ok().and_then(|tx| tx.clone());
        if let Some(tx) = tx {
            let (done_tx, done_rx) = oneshot::channel();
            if tx.send(WriterMsg::Flush(done_tx)).await.is_ok() {
                let _ = done_rx.await;
            }
        }
    }

    /// Stops the thread after it has committed what is queued. Blocking.
    pub(crate) fn stop(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

fn run(storage: Arc<dyn Storage>, mut rx: mpsc::Receiver<WriterMsg>, trickle_linger: Duration) {
    let mut flushes = Vec::new();
    // What the previous group looked like, to decide whether to linger.
    let mut last_group_size = 0usize;
    let mut last_commit = Duration::ZERO;
    // The commits' recent duration (a moving average): what a trickle's
    // linger may cost at most (see `trickle_budget`). It starts at the
    // configured linger (a process's first commits linger as they did
    // before this bound) and comes down as commits are measured.
    let mut commit_ewma = trickle_linger;
    // When the previous commit ended: requests queued before that were
    // queued while it ran, by writers that did not wait for it.
    let mut last_commit_end: Option<Instant> = None;
    // The last time a request was queued while a commit ran.
    let mut last_trickle: Option<Instant> = None;
    while let Some(first) = rx.blocking_recv() {
        let mut group = Vec::new();
        let mut bytes = 0usize;
        let mut next = Some(first);
        let gathering = Instant::now();
        // When the oldest request of the group was queued.
        let mut oldest: Option<Instant> = None;
        loop {
            while let Some(msg) = next.take() {
                match msg {
                    WriterMsg::Write(queued) => {
                        bytes += request_bytes(&queued.request);
                        oldest = Some(oldest.map_or(queued.at, |t| t.min(queued.at)));
                        if last_commit_end.is_some_and(|end| queued.at < end) {
                            last_trickle = Some(queued.at);
                        }
                        group.push(queued.request);
                    }
                    WriterMsg::Flush(done) => flushes.push(done),
                }
                if group.len() >= MAX_GROUP_REQUESTS || bytes >= MAX_GROUP_BYTES {
                    break;
                }
                next = rx.try_recv().ok();
            }
            // Returning writers: when the last group was large and this one
            // is still small, its writers are on their way back (they were
            // just acknowledged). Committing now would split them into a
            // group of one and a group of the rest, each paying a full
            // fsync. Wait a little, bounded by half the last commit's
            // duration, never more than MAX_LINGER. A lone writer (last
            // group of 1) never waits, nor does a trickle (see below).
            let room = group.len() < MAX_GROUP_REQUESTS && bytes < MAX_GROUP_BYTES;
            let budget = (last_commit / 2).min(MAX_LINGER);
            let trickling = last_trickle.is_some_and(|t| t.elapsed() < TRICKLE_MEMORY);
            let returning =
                !trickling && group.len() * 2 <= last_group_size && gathering.elapsed() < budget;
            // Trickle: many writers that do not wait for each other (rooms
            // typing at human pace) queue requests while a commit runs.
            // Committing each small group at once costs a commit (an fsync
            // and a few rewritten pages) per one or two edits; letting the
            // oldest request wait a little lets several share it, but only
            // as long as a commit takes (`trickle_budget`). Writers that
            // wait for their ack (a lone writer, or N writers in a closed
            // loop) queue nothing while a commit runs: their next request
            // needs this commit, so lingering would only slow them down,
            // and they never linger for it. A request queued during a
            // commit marks a trickle for TRICKLE_MEMORY (a short commit
            // often sees none arrive), and a group of TRICKLE_MAX_GROUP
            // commits at once.
            let trickle = trickling
                && group.len() < TRICKLE_MAX_GROUP
                && oldest
                    .is_some_and(|t| t.elapsed() < trickle_budget(trickle_linger, commit_ewma));
            if !room || !(returning || trickle) {
                break;
            }
            // Writers coming back arrive within microseconds: look often.
            // A trickle arrives every few hundred: look a few times per
            // linger, not fifty (each look is a wakeup of this thread).
            let step = if returning {
                LINGER_STEP
            } else {
                let waited = oldest.map_or(Duration::ZERO, |t| t.elapsed());
                trickle_budget(trickle_linger, commit_ewma)
                    .saturating_sub(waited)
                    .min(TRICKLE_STEP)
                    .max(LINGER_STEP)
            };
            std::thread::sleep(step);
            next = rx.try_recv().ok();
        }
        if !group.is_empty() {
            last_group_size = group.len();
            let started = Instant::now();
            commit_group(&*storage, group);
            last_commit = started.elapsed();
            commit_ewma = (commit_ewma * 7 + last_commit) / 8;
            last_commit_end = Some(Instant::now());
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// How long the oldest request of a group may wait under a trickle: the
/// configured linger, but never longer than a commit takes.
///
/// Lingering pays only while it is cheaper than the commit it saves. A
/// request that arrives while a commit runs waits for that commit anyway;
/// waiting longer than a commit lasts would cost it more than committing at
/// once and letting the next requests gather behind that commit. So a
/// group waits at most one commit's time for company: on a disk whose
/// commit takes 0.3 ms, a keystroke waits at most that much more, and the
/// groups are about twice the size they would be without lingering.
fn trickle_budget(trickle_linger: Duration, commit_ewma: Duration) -> Duration {
    trickle_linger.min(commit_ewma)
}

fn request_bytes(request: &WriteRequest) -> usize {
    request
        .write
        .append
        .iter()
        .map(|c| c.payload.len())
        .sum::<usize>()
        + request
            .write
            .compact
            .iter()
            .map(|c| c.snapshot.as_ref().map_or(0, Vec::len))
            .sum::<usize>()
}

/// A batch being assembled: the merged writes and, per write, the
/// completions of the requests merged into it.
#[derive(Default)]
struct Pending {
    batch: WriteBatch,
    completions: Vec<Vec<Completion>>,
}

impl Pending {
    /// Whether `write` can join this batch: its collection is absent, or
    /// it continues exactly where the batch's write for it ends.
    fn accepts(&self, write: &CollectionWrite) -> bool {
        self.batch
            .writes
            .iter()
            .find(|w| w.collection == write.collection)
            .is_none_or(|existing| write.base == next_base(existing))
    }

    /// Adds a request that [`Pending::accepts`].
    fn add(&mut self, request: WriteRequest) {
        let WriteRequest { write, done } = request;
        match self
            .batch
            .writes
            .iter()
            .position(|w| w.collection == write.collection)
        {
            Some(i) => {
                let existing = &mut self.batch.writes[i];
                existing.append.extend(write.append);
                existing.compact.extend(write.compact);
                existing.peers.extend(write.peers);
                existing.raise_schema_version = existing
                    .raise_schema_version
                    .max(write.raise_schema_version);
                self.completions[i].push(done);
            }
            None => {
                self.batch.writes.push(write);
                self.completions.push(vec![done]);
            }
        }
    }
}

/// The base a write that follows `write` in the same collection must carry.
fn next_base(write: &CollectionWrite) -> WriteBase {
    let (epoch, head) = match write.base {
        WriteBase::Create { epoch, .. } => (epoch, 0),
        WriteBase::Existing { epoch, head } => (epoch, head),
    };
    let appended = write.append.len() as Seq;
    WriteBase::Existing {
        epoch,
        head: head + appended,
    }
}

fn commit_group(storage: &dyn Storage, group: Vec<WriteRequest>) {
    let requests = group.len();
    let _span =
        tracing::debug_span!("commit_group", requests, backend = storage.backend()).entered();
    let mut batches: Vec<Pending> = vec![Pending::default()];
    for request in group {
        // A request that does not chain onto the last batch opens a new one,
        // which keeps each collection's requests in order.
        let fits = batches.last().is_some_and(|b| b.accepts(&request.write));
        if !fits {
            batches.push(Pending::default());
        }
        if let Some(last) = batches.last_mut() {
            last.add(request);
        }
    }
    metrics::histogram!(m::COMMIT_GROUP_SIZE).record(requests as f64);
    for pending in batches {
        commit_pending(storage, pending);
    }
}

fn commit_pending(storage: &dyn Storage, pending: Pending) {
    let started = Instant::now();
    // Each collection stands alone: one collection's refusal (its base
    // moved, another node owns it) must not fail the other collections'
    // pushes in the group.
    let result = storage.commit_each(&pending.batch);
    metrics::histogram!(m::STORAGE_COMMIT_SECONDS, "backend" => storage.backend())
        .record(started.elapsed().as_secs_f64());
    match result {
        Ok(results) => {
            debug_assert_eq!(results.len(), pending.completions.len());
            for (result, completions) in results.into_iter().zip(pending.completions) {
                if let Err(err) = &result {
                    tracing::warn!(error = %err, "a collection's write was refused");
                    metrics::counter!(m::ERRORS, "kind" => err.kind()).increment(1);
                }
                for done in completions {
                    done(result.clone());
                }
            }
        }
        Err(err) => {
            tracing::error!(error = %err, backend = storage.backend(), "commit failed");
            metrics::counter!(m::ERRORS, "kind" => err.kind()).increment(1);
            for done in pending.completions.into_iter().flatten() {
                done(Err(err.clone()));
            }
        }
    }
}
