//! `subscribe`: stored changes after a cursor, then live ones, as one stream.
//!
//! The seam between "stored" and "live" is where sync engines lose or repeat
//! changes. Here the collection actor hands out a `Grant` atomically: every
//! change ≤ `grant.head` is committed, and every change committed after the
//! grant is sent on `grant.live`. The stream reads storage up to exactly
//! `grant.head` (ignoring anything newer it might see there), then switches to
//! the live channel: no gap, no duplicate.
//!
//! Memory stays bounded for slow consumers: the live channel has a fixed
//! capacity, and the actor drops a subscriber whose channel is full. The
//! stream then sees its channel close, registers again and catches up from
//! storage at its own cursor; nothing is lost, nothing is buffered without
//! limit. The same path handles an actor that unloads or restarts.
//!
//! `UpToDate { head }` is emitted each time the stream has delivered
//! everything up to `head`: after the catch-up and whenever the live channel
//! runs empty.
//!
//! A subscription may follow one document instead of the whole collection.
//! It then catches up with `Storage::read_document_changes` (an index seek,
//! not a scan of the collection) and the actor sends it only that document's
//! changes. Its live batches are not consecutive in seq, so continuity is
//! checked with each batch's `since` (see `LiveBatch`): a batch that starts
//! beyond the cursor means something was missed, and the stream goes back to
//! storage. Its cursor and `UpToDate` heads are collection seqs like any
//! other: "every change of this document up to here was delivered".
//!
//! The cursor a client starts from may be ahead of the head the actor grants:
//! a document read from storage can see a commit whose report the actor has
//! not yet processed. Such a cursor is still a real one (it is at most the
//! actor's assigned head), so the stream goes live from it instead of
//! answering `Reset`; the live batches up to it are skipped.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use seqsync_engine::{CollectionName, DocId, Epoch, ReadError, Seq};
use tokio::sync::mpsc;

use crate::collection::LiveBatch;
use crate::engine::Inner;
use crate::metrics as m;
use crate::types::StreamEvent;

/// The stream `Engine::subscribe` returns.
pub type Subscription = Pin<Box<dyn Stream<Item = Result<StreamEvent, ReadError>> + Send>>;

enum Phase {
    /// Ask the actor for a grant.
    Register,
    /// Read storage until `target`, then go live.
    CatchUp {
        target: Seq,
        live: mpsc::Receiver<LiveBatch>,
    },
    /// Forward live batches.
    Live(mpsc::Receiver<LiveBatch>),
    /// An error was yielded; the stream is over.
    Done,
}

struct State {
    inner: Arc<Inner>,
    collection: CollectionName,
    /// Follow only this document.
    doc: Option<DocId>,
    cursor: Seq,
    /// The epoch the client's cursor belongs to, once known.
    epoch: Option<Epoch>,
    phase: Phase,
    buffer: VecDeque<StreamEvent>,
    /// Looked up once, not per change.
    streamed: metrics::Counter,
    _gauge: SubscriberGauge,
}

struct SubscriberGauge;

impl SubscriberGauge {
    fn new() -> Self {
        metrics::gauge!(m::SUBSCRIBERS).increment(1.0);
        SubscriberGauge
    }
}

impl Drop for SubscriberGauge {
    fn drop(&mut self) {
        metrics::gauge!(m::SUBSCRIBERS).decrement(1.0);
    }
}

pub(crate) fn subscribe(
    inner: Arc<Inner>,
    collection: CollectionName,
    doc: Option<DocId>,
    after: Seq,
    epoch: Option<Epoch>,
) -> Subscription {
    let state = State {
        inner,
        collection,
        doc,
        cursor: after,
        epoch,
        phase: Phase::Register,
        buffer: VecDeque::new(),
        streamed: metrics::counter!(m::CHANGES_STREAMED),
        _gauge: SubscriberGauge::new(),
    };
    Box::pin(futures::stream::unfold(state, |mut state| async move {
        let item = state.next().await?;
        Some((item, state))
    }))
}

impl State {
    async fn next(&mut self) -> Option<Result<StreamEvent, ReadError>> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                if matches!(event, StreamEvent::Change(_)) {
                    self.streamed.increment(1);
                }
                return Some(Ok(event));
            }
            let step = match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Done => return None,
                Phase::Register => self.register().await,
                Phase::CatchUp { target, live } => self.catch_up(target, live).await,
                Phase::Live(live) => Ok(self.live(live).await),
            };
            match step {
                Ok(phase) => self.phase = phase,
                Err(err) => return Some(Err(err)),
            }
        }
    }

    async fn register(&mut self) -> Result<Phase, ReadError> {
        let grant = self.inner.grant(&self.collection, self.doc.clone()).await?;
        let reset = ReadError::Reset {
            epoch: grant.epoch,
            head: grant.head,
        };
        let foreign_epoch = match (self.epoch, grant.epoch) {
            (Some(mine), Some(theirs)) => mine != theirs,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if foreign_epoch || self.cursor > grant.assigned_head {
            return Err(reset);
        }
        if self.epoch.is_none() {
            self.epoch = grant.epoch;
        }
        Ok(Phase::CatchUp {
            target: grant.head,
            live: grant.live,
        })
    }

    async fn catch_up(
        &mut self,
        target: Seq,
        live: mpsc::Receiver<LiveBatch>,
    ) -> Result<Phase, ReadError> {
        if self.cursor >= target {
            self.buffer
                .push_back(StreamEvent::UpToDate { head: self.cursor });
            return Ok(Phase::Live(live));
        }
        let limit =
            usize::try_from(self.inner.shared.config.limits.stream_page_limit).unwrap_or(1000);
        let name = self.collection.clone();
        let doc = self.doc.clone();
        let after = self.cursor;
        let page = self
            .inner
            .shared
            .read(move |storage| match &doc {
                None => storage.read_changes(&name, after, limit),
                Some(doc) => storage.read_document_changes(&name, doc, after, limit),
            })
            .await?;
        let Some(page) = page else {
            // Cannot happen after a grant with target > cursor ≥ 0; treat
            // as a lost collection.
            return Err(ReadError::Reset {
                epoch: None,
                head: 0,
            });
        };
        if let (Some(mine), theirs) = (self.epoch, page.meta.epoch) {
            if mine != theirs {
                return Err(ReadError::Reset {
                    epoch: Some(theirs),
                    head: page.meta.head,
                });
            }
        }
        // A full page may have more after it; a short one is all there is
        // (for a document, its changes up to `target` may end well before).
        let full = page.changes.len() >= limit;
        let mut advanced = false;
        for change in page.changes {
            if change.seq > target {
                break; // arrives on the live channel
            }
            self.cursor = change.seq;
            advanced = true;
            self.buffer.push_back(StreamEvent::Change(change));
        }
        if !advanced || !full {
            // Nothing more ≤ target: everything up to it is delivered.
            self.cursor = self.cursor.max(target);
        }
        Ok(Phase::CatchUp { target, live })
    }

    async fn live(&mut self, mut live: mpsc::Receiver<LiveBatch>) -> Phase {
        let Some(batch) = live.recv().await else {
            // Dropped for lagging, or the actor unloaded or reset: resume
            // from storage at our cursor.
            return Phase::Register;
        };
        if batch.since > self.cursor {
            // A hole would break the promise: fall back to storage.
            return Phase::Register;
        }
        for change in batch.changes.iter() {
            if change.seq <= self.cursor {
                continue;
            }
            self.cursor = change.seq;
            self.buffer.push_back(StreamEvent::Change(change.clone()));
        }
        self.cursor = self.cursor.max(batch.through);
        if live.is_empty() {
            self.buffer
                .push_back(StreamEvent::UpToDate { head: self.cursor });
        }
        Phase::Live(live)
    }
}
