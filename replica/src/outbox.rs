//! The outbox: local edits after `pushed_through`, in local seq order,
//! and how they go up.
//!
//! Why merging: a phone back from a week offline would otherwise push
//! every keystroke. Consecutive updates of one document at one schema
//! version are merged (at most `MERGE_UPDATES` / `MERGE_BYTES` each), and
//! batches stay within the server's `max_batch_updates`. The outbox
//! position moves only after the server acknowledged, in the same local
//! commit as the sync state (`state.rs`), so a lost answer means a re-push
//! the server does not log twice, never a lost edit.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::sync::Arc;

use seqsync_engine::{Change, ChangeKind, CollectionName, DocId, DocState, PeerId, Seq, Storage};

use crate::error::ReplicaError;
use crate::replica::{invalid, Local, Replica, LOCAL, MIGRATION};
use crate::state::SyncState;
use crate::transport::{RemotePush, Transport};

/// Updates pushed per batch at most (the server's default
/// `max_batch_updates`), and their bytes.
pub(crate) const PUSH_BATCH: usize = 1000;
pub(crate) const PUSH_BATCH_BYTES: usize = 4 << 20;

/// Consecutive local updates of one document merged into one pushed
/// update, at most, and their bytes.
pub(crate) const MERGE_UPDATES: usize = 1000;
pub(crate) const MERGE_BYTES: usize = 256 << 10;

/// An item of the outbox.
pub(crate) struct Pending {
    pub(crate) seq: Seq,
    pub(crate) doc: DocId,
    pub(crate) update: Vec<u8>,
    /// The version the push declares.
    pub(crate) version: u32,
    /// The replica's own migration output (not a local edit).
    pub(crate) migration: bool,
}

impl Pending {
    pub(crate) fn of(change: Change, migration: bool) -> Self {
        Self {
            seq: change.seq,
            doc: change.doc,
            update: change.payload,
            version: change.schema_version,
            migration,
        }
    }
}

/// Merges runs of outbox updates of one document for a push (see
/// `Replica::push_outbox`).
///
/// Why not `yrs::merge_updates_v1`: it costs about three replays of the
/// updates. Here the document's confirmed state (its log without the
/// outbox) is loaded once, each run is applied to it, and what the run
/// added is encoded as the diff against the state vector before it: one
/// replay in all. A run that leaves something pending (it builds on what
/// the confirmed state lacks) cannot be encoded that way without losing
/// it; then, and for every later run of that document, `merge_updates_v1`.
#[derive(Default)]
pub(crate) struct Merger {
    /// The document being merged and its state so far (`None`: it fell
    /// back to `merge_updates_v1`).
    pub(crate) current: Option<(DocId, Option<DocState>)>,
}

impl Merger {
    pub(crate) fn merge(
        &mut self,
        local: &Local,
        c: &CollectionName,
        outbox: &[Pending],
        group: &[Pending],
    ) -> Result<Vec<u8>, ReplicaError> {
        let doc = &group[0].doc;
        if self.current.as_ref().map(|(d, _)| d) != Some(doc) {
            let in_outbox: BTreeSet<Seq> = outbox
                .iter()
                .filter(|p| &p.doc == doc)
                .map(|p| p.seq)
                .collect();
            let confirmed: Vec<Change> = local
                .storage
                .document_changes(c, doc)?
                .into_iter()
                .filter(|ch| !in_outbox.contains(&ch.seq))
                .collect();
            let state = DocState::load(&confirmed)
                .ok()
                .filter(|state| !state.has_pending());
            self.current = Some((doc.clone(), state));
        }
        let fallback = || {
            yrs::merge_updates_v1(group.iter().map(|p| p.update.as_slice()))
                .map_err(|e| invalid(doc, e))
        };
        let Some((_, Some(state))) = self.current.as_mut() else {
            return fallback();
        };
        let before = state.state_vector();
        for item in group {
            let change = Change {
                seq: item.seq,
                doc: doc.clone(),
                kind: ChangeKind::Update,
                payload: item.update.clone(),
                schema_version: item.version,
                origin: None,
                author: None,
                committed_ms: 0,
                log_checksum: 0,
            };
            if state.load_change(&change).is_err() {
                self.current = Some((doc.clone(), None));
                return fallback();
            }
        }
        if state.has_pending() {
            self.current = Some((doc.clone(), None));
            return fallback();
        }
        Ok(state.encode_diff(&before))
    }
}

/// One batch of a push: the merged updates it sends, each with the range
/// of the outbox it covers, all at one declared version.
pub(crate) struct Batch {
    version: u32,
    groups: Vec<(Range<usize>, Vec<u8>)>,
    /// Where the next batch starts in the outbox.
    end: usize,
}

impl Local {
    /// What the next push sends, in local seq order: the local edits after
    /// `pushed_through`, and before them the provisional migration output of
    /// their documents (an edit may build on it, and the server must have
    /// what an update builds on). An edit is declared at its own version,
    /// or at the newest version of the replica's own migration output of
    /// its document that follows it: an edit made before the app was
    /// upgraded and then migrated locally goes up with its migration (the
    /// server does not upgrade it a second time); one whose local migration
    /// was rebased away goes up at its own version, and the server upgrades
    /// it on ingest.
    pub(crate) fn outbox(
        &self,
        c: &CollectionName,
        state: &SyncState,
    ) -> Result<Vec<Pending>, ReplicaError> {
        let mut out = Vec::new();
        let mut cursor = state.pushed_through;
        while let Some(page) = self.storage.read_changes(c, cursor, 1000)? {
            if page.changes.is_empty() {
                break;
            }
            for change in page.changes {
                cursor = change.seq;
                if change.origin.as_ref().map(PeerId::as_str) == Some(LOCAL) {
                    out.push(Pending::of(change, false));
                }
            }
        }
        let with_provisional: BTreeSet<DocId> = out
            .iter()
            .filter(|p| state.provisional.contains_key(p.doc.as_str()))
            .map(|p| p.doc.clone())
            .collect();
        for doc in with_provisional {
            let first = state.provisional.get(doc.as_str()).copied().unwrap_or(0);
            for change in self.storage.document_changes(c, &doc)? {
                if change.seq >= first
                    && change.origin.as_ref().map(PeerId::as_str) == Some(MIGRATION)
                {
                    out.push(Pending::of(change, true));
                }
            }
        }
        out.sort_by_key(|p| p.seq);
        // Backwards: the newest version of a later migration item of the
        // same document raises an edit's declared version.
        let mut migrated_to: HashMap<DocId, u32> = HashMap::new();
        for item in out.iter_mut().rev() {
            if item.migration {
                let to = migrated_to.entry(item.doc.clone()).or_insert(item.version);
                *to = (*to).max(item.version);
            } else if let Some(&to) = migrated_to.get(&item.doc) {
                item.version = item.version.max(to);
            }
        }
        Ok(out)
    }

    /// The batch of `outbox` that starts at `start` (see
    /// [`Replica::push_outbox`] for its limits), merging through `merger`.
    /// Blocking: merging reads what the server confirmed of a document.
    pub(crate) fn next_batch(
        &self,
        c: &CollectionName,
        outbox: &[Pending],
        start: usize,
        merger: &mut Merger,
    ) -> Result<Batch, ReplicaError> {
        let version = outbox.get(start).map_or(0, |p| p.version);
        let mut groups: Vec<(Range<usize>, Vec<u8>)> = Vec::new();
        let mut batch_bytes = 0usize;
        let mut at = start;
        while let Some(head) = outbox.get(at) {
            if head.version != version
                || groups.len() >= PUSH_BATCH
                || batch_bytes >= PUSH_BATCH_BYTES
            {
                break;
            }
            let mut len = 0usize;
            let mut bytes = 0usize;
            for item in outbox[at..].iter().take(MERGE_UPDATES) {
                if item.doc != head.doc
                    || item.version != version
                    || (len > 0 && bytes + item.update.len() > MERGE_BYTES)
                {
                    break;
                }
                len += 1;
                bytes += item.update.len();
            }
            let group = &outbox[at..at + len];
            let update = if group.len() == 1 {
                group[0].update.clone()
            } else {
                merger.merge(self, c, outbox, group)?
            };
            batch_bytes += update.len();
            groups.push((at..at + len, update));
            at += len;
        }
        Ok(Batch {
            version,
            groups,
            end: at,
        })
    }
}

impl<T: Transport> Replica<T> {
    /// Pushes `outbox` (of `c`; the caller holds the writer lock).
    ///
    /// Consecutive updates of one document at one declared version are
    /// merged into one update (at most `MERGE_UPDATES` of them, or
    /// `MERGE_BYTES`): nobody else has seen them, and a phone back from a
    /// week offline then sends a few merged updates instead of every
    /// keystroke, which the server logs, checksums and stores once. A batch
    /// holds at most `PUSH_BATCH` merged updates and `PUSH_BATCH_BYTES`, all
    /// of one declared version; after the server's answer the outbox
    /// position moves in one local commit (a crash before it re-sends the
    /// batch, which the server drops as already had). `after_batch` sees
    /// each batch as (local edits sent, local edits in updates the server
    /// logged, its answer). Returns the requests made.
    pub(crate) async fn push_outbox(
        &self,
        c: &CollectionName,
        state: &mut SyncState,
        outbox: Vec<Pending>,
        mut after_batch: impl FnMut(u64, u64, &RemotePush) + Send,
    ) -> Result<u64, ReplicaError> {
        let mut requests = 0u64;
        let outbox = Arc::new(outbox);
        let mut merger = Merger::default();
        let mut start = 0;
        while start < outbox.len() {
            // Built (and merged) on the blocking pool; the merger goes
            // there and comes back, keeping the document it holds loaded.
            let (batch, returned) = {
                let (outbox, c) = (Arc::clone(&outbox), c.clone());
                let mut merger = std::mem::take(&mut merger);
                self.blocking(move |local| {
                    let batch = local.next_batch(&c, &outbox, start, &mut merger)?;
                    Ok((batch, merger))
                })
                .await?
            };
            merger = returned;
            assert!(batch.end > start, "a batch holds at least one update");
            start = batch.end;
            let groups: Vec<(&[Pending], Vec<u8>)> = batch
                .groups
                .into_iter()
                .map(|(range, update)| (&outbox[range], update))
                .collect();
            requests += 1;
            let updates = groups
                .iter()
                .map(|(group, update)| (group[0].doc.to_string(), update.clone()))
                .collect();
            let declared = self.local.schema_version.map(|_| batch.version);
            let outcome = self
                .transport
                .push_batch(c.as_str(), updates, self.local.peer.as_str(), declared)
                .await
                .map_err(|e| self.local.schema_error(e))?;
            if state.epoch.is_none() {
                // The push created the collection: learn its epoch from a
                // page (nothing is pulled; our own changes are skipped).
                requests += 1;
                let page = self.transport.changes(c.as_str(), 0, 0, None).await?;
                state.epoch = page.epoch;
            }
            let edits = |group: &[Pending]| group.iter().filter(|p| !p.migration).count() as u64;
            let mut sent = 0u64;
            let mut taken = 0u64;
            for (i, (group, _)) in groups.iter().enumerate() {
                sent += edits(group);
                if outcome.seqs.get(i).copied().flatten().is_some() {
                    taken += edits(group);
                }
                for item in group.iter() {
                    state.pushed_through = state.pushed_through.max(item.seq);
                    // On the server now: no longer the replica's own to drop.
                    state.provisional.remove(item.doc.as_str());
                }
            }
            self.commit_state(c, state, Vec::new()).await?;
            after_batch(sent, taken, &outcome);
        }
        Ok(requests)
    }

    /// Pushes the outbox of `c` (under the writer lock): each batch, then
    /// the outbox position in its own local commit. Returns (updates logged
    /// by the server, the head after the last batch).
    pub(crate) async fn push_pending(
        &self,
        c: &CollectionName,
    ) -> Result<(u64, Option<Seq>), ReplicaError> {
        let _guard = self.writer.lock().await;
        let (mut state, _) = self.migrated_state(c).await?;
        let mut pushed = 0;
        let mut head = None;
        let outbox = {
            let (c, state) = (c.clone(), state.clone());
            self.blocking(move |local| local.outbox(&c, &state)).await?
        };
        self.push_outbox(c, &mut state, outbox, |_, taken, outcome| {
            pushed += taken;
            head = Some(outcome.head);
        })
        .await?;
        Ok((pushed, head))
    }
}
