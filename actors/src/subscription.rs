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

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use seqsync_engine::{Change, CollectionName, Epoch, ReadError, Seq};
use tokio::sync::mpsc;

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
        live: mpsc::Receiver<Arc<[Change]>>,
    },
    /// Forward live batches.
    Live(mpsc::Receiver<Arc<[Change]>>),
    /// An error was yielded; the stream is over.
    Done,
}

struct State {
    inner: Arc<Inner>,
    collection: CollectionName,
    cursor: Seq,
    /// The epoch the client's cursor belongs to, once known.
    epoch: Option<Epoch>,
    phase: Phase,
    buffer: VecDeque<StreamEvent>,
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
    after: Seq,
    epoch: Option<Epoch>,
) -> Subscription {
    let state = State {
        inner,
        collection,
        cursor: after,
        epoch,
        phase: Phase::Register,
        buffer: VecDeque::new(),
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
                    metrics::counter!(m::CHANGES_STREAMED).increment(1);
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
        let grant = self.inner.grant(&self.collection).await?;
        let reset = ReadError::Reset {
            epoch: grant.epoch,
            head: grant.head,
        };
        let foreign_epoch = match (self.epoch, grant.epoch) {
            (Some(mine), Some(theirs)) => mine != theirs,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if foreign_epoch || self.cursor > grant.head {
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
        live: mpsc::Receiver<Arc<[Change]>>,
    ) -> Result<Phase, ReadError> {
        if self.cursor >= target {
            self.buffer
                .push_back(StreamEvent::UpToDate { head: target });
            return Ok(Phase::Live(live));
        }
        let limit =
            usize::try_from(self.inner.shared.config.limits.stream_page_limit).unwrap_or(1000);
        let name = self.collection.clone();
        let after = self.cursor;
        let page = self
            .inner
            .shared
            .read(move |storage| storage.read_changes(&name, after, limit))
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
        let mut advanced = false;
        for change in page.changes {
            if change.seq > target {
                break; // arrives on the live channel
            }
            self.cursor = change.seq;
            advanced = true;
            self.buffer.push_back(StreamEvent::Change(change));
        }
        if !advanced {
            // Nothing left ≤ target: the head change always exists, so this
            // only means we are there.
            self.cursor = target;
        }
        Ok(Phase::CatchUp { target, live })
    }

    async fn live(&mut self, mut live: mpsc::Receiver<Arc<[Change]>>) -> Phase {
        let Some(batch) = live.recv().await else {
            // Dropped for lagging, or the actor unloaded or reset: resume
            // from storage at our cursor.
            return Phase::Register;
        };
        for change in batch.iter() {
            if change.seq <= self.cursor {
                continue;
            }
            if change.seq != self.cursor + 1 {
                // A hole would break the promise: fall back to storage.
                return Phase::Register;
            }
            self.cursor = change.seq;
            self.buffer.push_back(StreamEvent::Change(change.clone()));
        }
        if live.is_empty() {
            self.buffer
                .push_back(StreamEvent::UpToDate { head: self.cursor });
        }
        Phase::Live(live)
    }
}
