//! Compaction runs: when a document's deltas cross `[compaction]`'s
//! thresholds (or it is deleted), its snapshot is planned on the compactor
//! thread and committed through the writer like any other write.
//!
//! Planning reads storage and merges updates, so it never runs on the
//! arbiter; the plan comes back as a message and is checked against what
//! happened meanwhile. Nothing is compacted that a peer may still need
//! (`compaction_cutoff`).

use actix::prelude::*;
use seqsync_engine::{now_ms, CollectionWrite, CompactionPlan, DocId, Seq, StorageError};

use crate::compactor::PlanCompaction;
use crate::metrics as m;

use super::plan::base_for;
use super::CollectionActor;

impl CollectionActor {
    /// Starts a compaction of `doc` if its deltas crossed a threshold (or it
    /// was just deleted) and none is under way.
    pub(super) fn maybe_compact(&mut self, ctx: &mut Context<Self>, doc: DocId) {
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
    pub(super) fn compaction_cutoff(&self) -> Seq {
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
    pub(super) fn start_compaction(
        &mut self,
        ctx: &mut Context<Self>,
        doc: DocId,
        run: Option<u64>,
    ) {
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

    pub(super) fn compaction_planned(
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
            compact: plan.compactions.clone(),
            peers: Vec::new(),
            raise_schema_version: None,
            append_mode: Default::default(),
        };
        self.submit(ctx, write, Some((doc, plan)), Vec::new(), permit);
    }

    /// A document's compaction is over: committed (`Some`) or abandoned.
    pub(super) fn finish_compaction(&mut self, doc: &DocId, committed: Option<&CompactionPlan>) {
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
    pub(super) fn run_step(&mut self, run: u64, committed: Option<&CompactionPlan>) {
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
}
