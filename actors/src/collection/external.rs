//! Keeping up with another node's commits (a shared store): read only the
//! new changes, once per wake-up, and hand them on as if committed here.
//!
//! Why not reload: a node that only serves readers hears of every commit of
//! the writers' node. Resetting on each (dropping the documents, closing
//! the live subscribers so each reads storage from its own cursor) cost a
//! reload per commit and one storage read per subscriber, and made an edit
//! reach a reader on another node 25× slower than on the writer's. Here the
//! actor reads the changes after its committed head once (on the read
//! pool), applies them to the documents it has loaded and broadcasts them
//! to its subscribers like its own commits: one read per wake-up, however
//! many subscribers and `/yws` rooms follow the collection.
//!
//! Coalescing: while a read is in flight, further wake-ups only raise the
//! head wanted; when the read comes back, one more read covers all of them.
//! A read brings at most `MAX_CATCH_UP_CHANGES` changes or
//! `MAX_CATCH_UP_BYTES`; a larger gap takes several reads in a row.
//!
//! The reload stays the answer whenever the incremental path could be
//! wrong: this node's own writes are in flight (another node took the
//! lease; those commits will fail their fence), the epoch changed (the
//! history was replaced), the read failed, or the state moved while the
//! read was out. Subscribers never see a gap either way: a batch says
//! which seqs it covers, and a stream that finds one missing reads storage.

use std::collections::HashMap;
use std::time::Instant;

use actix::prelude::*;
use seqsync_engine::{
    Change, CollectionMeta, CollectionName, PeerRecord, Seq, Storage, StorageError,
};

use super::{CaughtUp, CollectionActor};
use crate::metrics as m;

/// Most changes one catch-up read brings.
const MAX_CATCH_UP_CHANGES: usize = 4096;
/// Most payload bytes one catch-up read brings (a read stops after the page
/// that crosses it).
const MAX_CATCH_UP_BYTES: usize = 16 << 20;
/// Changes per storage page within a catch-up read.
const CATCH_UP_PAGE: usize = 1000;
/// How often a catch-up also reads the peer table (other nodes' acks move
/// it). Only an owner uses it (compaction gating, last-seen records), and
/// a stale table is safe there: acks only hold compaction back, and stored
/// acks never move backwards. So not on every wake-up: it is a second read.
const PEERS_REFRESH_MS: u64 = 1_000;

/// A catch-up read in flight.
pub(super) struct CatchUp {
    /// The newest head another node announced meanwhile.
    pub(super) wanted: Seq,
    /// When that node committed it (its clock), if it said.
    pub(super) wanted_committed_ms: Option<u64>,
}

/// What a catch-up read found in storage after the actor's committed head.
pub(crate) struct NewChanges {
    /// The collection's metadata as of the last page read.
    meta: CollectionMeta,
    /// The changes after the head, in seq order.
    changes: Vec<Change>,
    /// The peer table (other nodes' acks move it too), when it was read.
    peers: Option<Vec<PeerRecord>>,
    /// Whether `changes` reach `meta.head` (else another read follows).
    complete: bool,
}

/// Reads the changes of `name` after `after`, up to the limits, and the
/// peer table if `with_peers`. `None`: the collection is gone. Blocking
/// (runs on the read pool).
pub(super) fn read_new_changes(
    storage: &dyn Storage,
    name: &CollectionName,
    after: Seq,
    with_peers: bool,
) -> Result<Option<NewChanges>, StorageError> {
    let mut changes: Vec<Change> = Vec::new();
    let mut bytes = 0usize;
    let mut cursor = after;
    let meta = loop {
        let Some(page) = storage.read_changes(name, cursor, CATCH_UP_PAGE)? else {
            return Ok(None);
        };
        let full = page.changes.len() >= CATCH_UP_PAGE;
        for change in page.changes {
            cursor = change.seq;
            bytes += change.payload.len();
            changes.push(change);
        }
        if !full || changes.len() >= MAX_CATCH_UP_CHANGES || bytes >= MAX_CATCH_UP_BYTES {
            break page.meta;
        }
    };
    let complete = cursor >= meta.head;
    let peers = if with_peers {
        Some(storage.peers(name)?)
    } else {
        None
    };
    Ok(Some(NewChanges {
        meta,
        changes,
        peers,
        complete,
    }))
}

impl CollectionActor {
    /// Another node committed through `head` (at `committed_ms` on its
    /// clock): catch up incrementally, or join the read in flight, or fall
    /// back to a reload where only that is right (module docs).
    pub(super) fn external_commit(
        &mut self,
        ctx: &mut Context<Self>,
        head: Seq,
        committed_ms: Option<u64>,
    ) {
        let Some(committed_head) = self.state.as_ref().map(|s| s.committed_head) else {
            // Nothing loaded to keep up to date but documents or
            // subscribers: the next load reads storage.
            if !self.docs.is_empty() || self.has_subscribers() {
                self.reload("no collection state");
            }
            return;
        };
        if head <= committed_head {
            return;
        }
        metrics::counter!(m::EXTERNAL_COMMITS).increment(1);
        if self.broken {
            return; // a reset is due: the reload reads everything
        }
        if let Some(catch_up) = &mut self.catch_up {
            if head > catch_up.wanted {
                catch_up.wanted = head;
                catch_up.wanted_committed_ms = committed_ms;
            }
            return;
        }
        if !self.inflight.is_empty() {
            // This node wrote too: another node holds the lease now, and the
            // writes in flight will fail their fence.
            self.reload("this node's writes are in flight");
            return;
        }
        if self.docs.is_empty() && !self.has_subscribers() {
            // Nobody here needs the changes: forget the state, the next
            // use loads it.
            self.mark_broken();
            return;
        }
        self.catch_up = Some(CatchUp {
            wanted: head,
            wanted_committed_ms: committed_ms,
        });
        self.read_after(ctx, committed_head);
    }

    /// Starts one catch-up read after `after` on the read pool; its answer
    /// comes back as [`CaughtUp`].
    fn read_after(&mut self, ctx: &mut Context<Self>, after: Seq) {
        let shared = self.shared.clone();
        let name = self.name.clone();
        let addr = ctx.address();
        let with_peers = self
            .peers_read_at
            .is_none_or(|at| at.elapsed().as_millis() >= u128::from(PEERS_REFRESH_MS));
        if with_peers {
            self.peers_read_at = Some(Instant::now());
        }
        actix::spawn(async move {
            let result = shared
                .read(move |storage| read_new_changes(storage, &name, after, with_peers))
                .await;
            addr.do_send(CaughtUp { after, result });
        });
    }

    /// A catch-up read came back: apply it and hand it on, or reload.
    pub(super) fn caught_up(&mut self, ctx: &mut Context<Self>, msg: CaughtUp) {
        let Some(catch_up) = self.catch_up.take() else {
            return;
        };
        let current = self.state.as_ref().map(|s| (s.committed_head, s.epoch));
        let Some((committed_head, epoch)) = current else {
            return;
        };
        if self.broken {
            return;
        }
        if committed_head != msg.after || !self.inflight.is_empty() {
            self.reload("the collection moved while catching up");
            return;
        }
        let new = match msg.result {
            Ok(Some(new)) => new,
            Ok(None) => {
                self.reload("the collection is gone");
                return;
            }
            Err(err) => {
                tracing::warn!(collection = %self.name, error = %err, "catching up with another node failed; reloading");
                self.reload("the read failed");
                return;
            }
        };
        if epoch.is_some_and(|e| e != new.meta.epoch) {
            self.reload("the epoch changed");
            return;
        }
        // Where this read leaves the collection, and its log checksum there.
        let (through, checksum) = match (new.complete, new.changes.last()) {
            (true, _) => (new.meta.head, new.meta.log_checksum),
            (false, Some(last)) => (last.seq, last.log_checksum),
            (false, None) => (
                committed_head,
                self.state.as_ref().map_or(0, |s| s.assigned_checksum),
            ),
        };
        for change in &new.changes {
            self.encoded.remove(&change.doc);
            let Some(doc) = self.docs.get_mut(&change.doc) else {
                continue;
            };
            if let Err(err) = doc.load_change(change) {
                // Dropped, not trusted: the next read of it loads storage.
                tracing::warn!(collection = %self.name, doc = %change.doc, error = %err, "a change from another node did not apply; unloading the document");
                self.docs.remove(&change.doc);
                metrics::gauge!(m::LOADED_DOCUMENTS).decrement(1.0);
            }
        }
        if let Some(state) = self.state.as_mut() {
            state.epoch = Some(new.meta.epoch);
            state.schema_version = new.meta.schema_version;
            state.committed_head = through;
            state.assigned_head = through;
            state.assigned_checksum = checksum;
            if let Some(peers) = new.peers {
                state.peers = peers
                    .into_iter()
                    .map(|p| (p.peer.clone(), p))
                    .collect::<HashMap<_, _>>();
            }
        }
        metrics::counter!(m::EXTERNAL_CHANGES).increment(new.changes.len() as u64);
        self.broadcast_range(committed_head, through, new.changes);
        if new.complete && through >= catch_up.wanted {
            if let Some(at) = catch_up.wanted_committed_ms {
                let lag_ms = seqsync_engine::now_ms().saturating_sub(at);
                metrics::histogram!(m::EXTERNAL_COMMIT_LAG_MS).record(lag_ms as f64);
            }
        } else if through > committed_head {
            // More was announced meanwhile, or the read stopped at its
            // limits: one more read covers it.
            self.catch_up = Some(catch_up);
            self.read_after(ctx, through);
        } else {
            self.reload("a catch-up read made no progress");
        }
        self.last_active = Instant::now();
    }

    /// Resets as after a failed commit: the next message reloads from
    /// storage, and live subscribers catch up from storage at their cursors.
    fn reload(&mut self, why: &'static str) {
        tracing::debug!(collection = %self.name, why, "another node committed; reloading");
        metrics::counter!(m::EXTERNAL_RELOADS).increment(1);
        self.catch_up = None;
        self.mark_broken();
    }
}
