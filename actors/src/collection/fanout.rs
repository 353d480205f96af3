//! Fan-out: one commit's changes handed to the live subscribers.
//!
//! A document's subscribers are kept under its id and get only its changes,
//! so delivering a commit costs the subscribers of the documents it
//! touched, never those of the rest of the collection. A subscriber whose
//! buffer is full is dropped rather than waited for: its stream sees the
//! closed channel and catches up from storage.

use std::collections::HashMap;
use std::sync::Arc;

use seqsync_engine::{Change, DocId, Seq};

use super::{CollectionActor, LiveBatch};

impl CollectionActor {
    /// Feeds one commit's changes to the live subscribers: the whole batch
    /// to the collection's, and to each touched document's subscribers only
    /// that document's changes. A subscriber whose buffer is full is
    /// dropped: its stream notices the closed channel and catches up from
    /// storage instead.
    pub(super) fn broadcast(&mut self, changes: Vec<Change>) {
        let (Some(first), Some(last)) = (changes.first(), changes.last()) else {
            return;
        };
        let (since, through) = (first.seq - 1, last.seq);
        self.broadcast_range(since, through, changes);
    }

    /// Feeds `changes` to the live subscribers as covering `(since,
    /// through]`: the collection has no other committed change there. For
    /// another node's changes read from storage, whose seqs may have holes
    /// (compaction removed deltas there) and need not end at `through`.
    pub(super) fn broadcast_range(&mut self, since: Seq, through: Seq, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let mut delivered = 0u64;
        if !self.doc_subscribers.is_empty() {
            // Group the touched documents' changes, each in seq order,
            // without looking at documents nobody follows.
            let mut by_doc: HashMap<DocId, Vec<Change>> = HashMap::new();
            for change in &changes {
                if self.doc_subscribers.contains_key(&change.doc) {
                    by_doc
                        .entry(change.doc.clone())
                        .or_default()
                        .push(change.clone());
                }
            }
            for (doc, list) in by_doc {
                let Some(entry) = self.doc_subscribers.get_mut(&doc) else {
                    continue;
                };
                let changes: Arc<[Change]> = list.into();
                let since = entry.since;
                entry.senders.retain(|tx| {
                    let sent = tx
                        .try_send(LiveBatch {
                            since,
                            through,
                            changes: changes.clone(),
                        })
                        .is_ok();
                    delivered += u64::from(sent);
                    sent
                });
                entry.since = through;
                if entry.senders.is_empty() {
                    self.doc_subscribers.remove(&doc);
                }
            }
        }
        if !self.subscribers.is_empty() {
            let batch: Arc<[Change]> = changes.into();
            self.subscribers.retain(|tx| {
                let sent = tx
                    .try_send(LiveBatch {
                        since,
                        through,
                        changes: batch.clone(),
                    })
                    .is_ok();
                delivered += u64::from(sent);
                sent
            });
        }
        if delivered > 0 {
            self.deliveries.increment(delivered);
            self.shared
                .live_deliveries
                .fetch_add(delivered, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Closes every live subscriber (they resume from storage at their
    /// cursor, so none sees a gap).
    pub(super) fn drop_subscribers(&mut self) {
        self.subscribers.clear();
        self.doc_subscribers.clear();
    }

    pub(super) fn has_subscribers(&self) -> bool {
        !self.subscribers.is_empty() || !self.doc_subscribers.is_empty()
    }
}
