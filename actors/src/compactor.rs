//! `Compactor`: merges a document's deltas into a snapshot, off the
//! collection's hot path.
//!
//! It is a `SyncActor` on its own thread (actix's `SyncArbiter`): a merge
//! reads the document's changes from storage (blocking) and replays them
//! (CPU-bound, up to hundreds of milliseconds for a long history), which must
//! never stall an arbiter where collection actors run. The collection actor
//! asks for a plan, keeps serving pushes meanwhile, and commits the plan
//! through its own write pipeline (so the compaction is ordered with its
//! pushes and the storage base check still holds). Only what was merged is
//! committed: changes pushed meanwhile stay deltas.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use seqsync_engine::{
    plan_compaction, CollectionName, CompactionPlan, DocId, Seq, Storage, StorageError,
};

use crate::metrics as m;

/// Plan the compaction of one document up to `cutoff`.
pub(crate) struct PlanCompaction {
    pub(crate) collection: CollectionName,
    pub(crate) doc: DocId,
    pub(crate) cutoff: Seq,
    pub(crate) schema_version: u32,
}

impl Message for PlanCompaction {
    type Result = Result<Option<CompactionPlan>, StorageError>;
}

pub(crate) struct Compactor {
    storage: Arc<dyn Storage>,
}

impl Compactor {
    pub(crate) fn new(storage: Arc<dyn Storage>) -> Self {
        Self { storage }
    }
}

impl Actor for Compactor {
    type Context = SyncContext<Self>;
}

impl Handler<PlanCompaction> for Compactor {
    type Result = Result<Option<CompactionPlan>, StorageError>;

    fn handle(&mut self, msg: PlanCompaction, _ctx: &mut SyncContext<Self>) -> Self::Result {
        let started = Instant::now();
        let storage = &*self.storage;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            // Pins first: one stored after this read is honoured by the
            // storage, which leaves a compaction across it unapplied.
            let pins: Vec<_> = storage
                .pins(&msg.collection, Some(&msg.doc))?
                .into_iter()
                .map(|pin| pin.seq)
                .collect();
            let changes = storage.document_changes(&msg.collection, &msg.doc)?;
            plan_compaction(&msg.doc, &changes, msg.cutoff, msg.schema_version, &pins).map_err(
                |e| StorageError::Corrupt {
                    backend: storage.backend(),
                    detail: format!("collection {}, document {}: {e}", msg.collection, msg.doc),
                },
            )
        }));
        metrics::histogram!(m::COMPACTION_SECONDS).record(started.elapsed().as_secs_f64());
        outcome.unwrap_or_else(|_| {
            Err(StorageError::backend(
                storage.backend(),
                "compacting",
                "the merge panicked",
            ))
        })
    }
}
