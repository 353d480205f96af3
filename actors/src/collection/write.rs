//! The write pipeline: a write planned (`plan.rs`), queued with the
//! storage writer without waiting, and answered when the writer reports the
//! commit (`CommitDone`), in seq order; acks take the same path.
//!
//! The actor never waits for a commit: it takes the next message while the
//! writer group-commits. Commits are reported in the order they were
//! queued, so the oldest in-flight write is always the one reported, and
//! live subscribers are fed before the pushers are answered: by the time a
//! push is answered, its change is in every live subscriber's buffer.

use std::collections::HashSet;

use actix::prelude::*;
use seqsync_engine::{
    now_ms, CollectionWrite, CompactionPlan, DocId, PeerRecord, Seq, StorageError, WriteError,
};
use tokio::sync::oneshot;

use crate::metrics as m;
use crate::writer::{SubmitError, WriteRequest};

use super::plan::base_for;
use super::{
    plan, recovering, Ack, CollectionActor, CommitDone, Inflight, Waiter, Write, WriteDone,
    WritePlan,
};

impl CollectionActor {
    /// Applies and queues a write; answers through `tx` now (refusal, no-op
    /// with nothing in flight) or at commit.
    pub(super) fn write(
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

    /// Validates, applies to memory and assigns seqs (`plan::plan_write`,
    /// once the checks that need the runtime pass). On error nothing is
    /// queued; memory is either untouched or the actor is marked broken.
    pub(super) fn plan_write(&mut self, msg: Write) -> Result<WritePlan, WriteError> {
        if self.broken {
            return Err(WriteError::Storage(recovering()));
        }
        let Some(state) = self.state.as_mut() else {
            return Err(WriteError::Internal("collection not loaded".to_owned()));
        };
        // Which version the push was written at: the current one (also when
        // the client does not say), or an older one to upgrade on ingest.
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
            state.schema_version,
            migrations.latest(),
            "collections are migrated at open"
        );
        // Reserve room in the commit queue before touching any document, so
        // a full queue refuses the write cleanly.
        let permit = self.shared.writer.reserve().map_err(|e| match e {
            SubmitError::Full => WriteError::Overloaded,
            SubmitError::Stopped => WriteError::ShuttingDown,
        })?;
        let memory = plan::Memory {
            state,
            docs: &mut self.docs,
            encoded: &mut self.encoded,
        };
        match plan::plan_write(&self.name, memory, &migrations, upgrade_from, now_ms(), msg) {
            Ok(planned) => {
                let appended = &planned.write.append;
                if planned.upgraded > 0 {
                    // Only where it happens, as before: no lookup per write.
                    metrics::counter!(m::UPGRADED_PUSHES).increment(planned.upgraded);
                }
                metrics::counter!(m::PUSHES).increment(appended.len() as u64);
                metrics::counter!(m::NOOP_PUSHES)
                    .increment(planned.seqs.iter().filter(|s| s.is_none()).count() as u64);
                metrics::counter!(m::PUSHED_BYTES)
                    .increment(appended.iter().map(|c| c.payload.len() as u64).sum());
                Ok(WritePlan {
                    write: planned.write,
                    seqs: planned.seqs,
                    permit,
                })
            }
            Err(refused) => {
                if refused.diverged {
                    self.mark_broken();
                }
                Err(refused.error)
            }
        }
    }

    /// Queues `write` with the writer; `waiters` are answered at commit.
    pub(super) fn submit(
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
    pub(super) fn answer_after_inflight(&mut self, waiter: Waiter) {
        match self.inflight.back_mut() {
            Some(last) => last.waiters.push(waiter),
            None => {
                let head = self.state.as_ref().map_or(0, |s| s.committed_head);
                waiter.succeed(head);
            }
        }
    }

    pub(super) fn ack(
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

    pub(super) fn commit_done(&mut self, ctx: &mut Context<Self>, msg: CommitDone) {
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
}
