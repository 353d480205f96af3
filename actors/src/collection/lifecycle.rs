//! The actor's memory over its life: loading what a message needs (on the
//! read pool, never on the arbiter), installing it, unloading when idle,
//! and the reset after a failed commit or a panic.
//!
//! Memory is a cache of storage plus writes in flight. When the two may
//! disagree (a commit failed, memory diverged, a handler panicked), the
//! actor trusts nothing it holds: it refuses writes, closes its live
//! subscribers (they resume from storage at their cursor) and, once nothing
//! is in flight, drops everything; the next message loads afresh.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use actix::prelude::*;
use seqsync_engine::{load_document, DocId, DocState, StorageError};

use crate::metrics as m;

use super::{CollectionActor, CollectionState, Loaded};

impl CollectionActor {
    /// Starts loading what `docs` (and the collection itself) need, on the
    /// read pool. `None` when everything is in memory already.
    pub(super) fn load_missing(
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

    pub(super) fn install(&mut self, loaded: Loaded) {
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
    pub(super) fn with_loaded<T: 'static>(
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

    pub(super) fn mark_broken(&mut self) {
        self.broken = true;
        // Live subscribers must not see a gap: close them; they resume from
        // storage at their cursor.
        self.drop_subscribers();
        self.reset_if_drained();
    }

    pub(super) fn reset_if_drained(&mut self) {
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

    pub(super) fn unload_documents(&mut self) {
        metrics::gauge!(m::LOADED_DOCUMENTS).decrement(self.docs.len() as f64);
        self.docs.clear();
        self.encoded.clear();
    }

    pub(super) fn check_idle(&mut self, ctx: &mut Context<Self>) {
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
    pub(super) fn guarded(
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
