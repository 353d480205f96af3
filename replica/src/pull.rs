//! `sync`: push the outbox, pull the server's pages after the cursor and
//! commit them locally together with the cursor that covers them, until
//! up to date; then report what happened.
//!
//! Why groups of pages: each local commit costs an fsync; pulled pages are
//! committed `LOCAL_COMMIT_CHANGES` / `LOCAL_COMMIT_BYTES` at a time, each
//! group with its cursor, so a crash mid-sync keeps what was committed and
//! the next sync resumes from there. A page with a change of a newer
//! schema version than the app's stops the sync before any of it is
//! written (`UpgradeRequired`).

use std::collections::BTreeMap;

use seqsync_engine::{ChangeKind, CollectionName, DocId, INITIAL_SCHEMA_VERSION};

use crate::error::ReplicaError;
use crate::local_log::{append_write, Item};
use crate::replica::{name, Local, Replica, REMOTE};
use crate::report::{ResetReason, SyncOutcome, SyncProgress, SyncReport};
use crate::state::SyncState;
use crate::transport::{RemotePage, Transport, TransportError};

/// Changes asked for per page.
pub(crate) const PAGE_LIMIT: u64 = 1000;

/// Pulled changes committed locally together, at most, and their bytes.
pub(crate) const LOCAL_COMMIT_CHANGES: usize = 8000;
pub(crate) const LOCAL_COMMIT_BYTES: usize = 8 << 20;

/// What applying one pulled page did.
#[derive(Default)]
pub(crate) struct Applied {
    /// Changes by others applied.
    pub(crate) changes: u64,
    /// Their payload bytes.
    pub(crate) bytes: u64,
    /// Documents rebased onto the server's migration.
    pub(crate) rebased: u64,
}

impl<T: Transport> Replica<T> {
    /// Syncs `collection` with the server: pulls what others wrote since the
    /// cursor (each page applied locally in one transaction together with
    /// the cursor that covers it), then pushes the outbox (in batches; the
    /// outbox position moves in the same local commit as nothing else, once
    /// the server acknowledged), then acknowledges the cursor.
    ///
    /// A failure or a cancelled future leaves the local store as it was
    /// after the last whole commit, and the outbox intact: a retry is always
    /// safe (the server drops what it already has). If the server answers
    /// reset, the replica recovers the collection (the server's state is
    /// applied locally) and pushes its own state back, so nothing local is
    /// lost.
    ///
    /// Errors: `InvalidName`, `Local`, `Transport`.
    pub async fn sync(&self, collection: &str) -> Result<SyncReport, ReplicaError> {
        self.sync_with_progress(collection, |_| {}).await
    }

    /// [`Replica::sync`], calling `progress` after every page pulled and
    /// every batch pushed (a UI draws `received / expected`).
    pub async fn sync_with_progress(
        &self,
        collection: &str,
        mut progress: impl FnMut(SyncProgress) + Send,
    ) -> Result<SyncReport, ReplicaError> {
        let c = name(collection)?;
        let mut shown = SyncProgress::default();
        let _guard = self.writer.lock().await;
        // Local data the app can migrate itself is migrated first, so what
        // the pull brings is rebased onto the migrated documents.
        let (mut state, _) = self.migrated_state(&c).await?;
        let cursor_before = state.cursor;
        let mut requests = 0u64;
        let mut pulled = 0u64;
        let mut pulled_bytes = 0u64;
        let mut rebased = 0u64;
        let mut last_schema_version;
        let mut head;
        // Pull. Pages are fetched one by one (progress after each) and
        // committed locally in groups of up to `LOCAL_COMMIT_CHANGES`
        // changes or `LOCAL_COMMIT_BYTES`, each group with the cursor that
        // covers it: a 260k-change catch-up is a few dozen local commits,
        // not hundreds.
        let mut fetch_cursor = state.cursor;
        let mut fetch_epoch = state.epoch;
        let mut fetch_checksum = state.cursor_checksum;
        let mut held: Option<RemotePage> = None;
        let mut held_bytes = 0usize;
        loop {
            requests += 1;
            let page = match self
                .transport
                .changes_verified(
                    collection,
                    fetch_cursor,
                    PAGE_LIMIT,
                    fetch_epoch,
                    fetch_checksum,
                )
                .await
            {
                Ok(page) => page,
                Err(TransportError::Reset { epoch, head }) => {
                    let reason = if epoch != state.epoch {
                        ResetReason::Epoch
                    } else if head < state.cursor {
                        ResetReason::CursorBeyondHead
                    } else {
                        ResetReason::HistoryReplaced
                    };
                    return self.recover(&c, state, reason, requests).await;
                }
                Err(err) => return Err(err.into()),
            };
            head = page.head;
            if let Err(err) = self.local.check_versions(&page) {
                // What was fetched before this page is at versions the app
                // understands: keep it.
                if let Some(held) = held.take() {
                    self.apply(&c, &mut state, held).await?;
                }
                return Err(err);
            }
            if shown.expected == 0 {
                shown.expected = page.head.saturating_sub(cursor_before);
            }
            fetch_cursor = page.cursor;
            fetch_epoch = page.epoch.or(fetch_epoch);
            fetch_checksum = (page.cursor_checksum != 0).then_some(page.cursor_checksum);
            last_schema_version = page.schema_version;
            let has_more = page.has_more;
            held_bytes += page
                .changes
                .iter()
                .map(|ch| ch.payload.len())
                .sum::<usize>();
            held = Some(match held.take() {
                None => page,
                Some(mut earlier) => {
                    earlier.changes.extend(page.changes);
                    RemotePage {
                        changes: earlier.changes,
                        ..page
                    }
                }
            });
            let held_changes = held.as_ref().map_or(0, |p| p.changes.len());
            if !has_more || held_changes >= LOCAL_COMMIT_CHANGES || held_bytes >= LOCAL_COMMIT_BYTES
            {
                if let Some(group) = held.take() {
                    let applied = self.apply(&c, &mut state, group).await?;
                    pulled += applied.changes;
                    pulled_bytes += applied.bytes;
                    rebased += applied.rebased;
                }
                held_bytes = 0;
            }
            shown.received = fetch_cursor
                .saturating_sub(cursor_before)
                .min(shown.expected);
            if !has_more {
                shown.received = shown.expected;
                progress(shown);
                break;
            }
            progress(shown);
        }
        // The server's collection is at a newer version than the local
        // data (a server-only step was due): every document pulled is at
        // it now, so the local data is too; then the app's own steps run.
        let app_version = self.local.app_version();
        if last_schema_version.min(app_version) > state.local_version {
            state.local_version = last_schema_version.min(app_version);
            self.commit_state(&c, &state, Vec::new()).await?;
            state = self.migrated_state(&c).await?.0;
        }
        // Push.
        let outbox = {
            let (c, state) = (c.clone(), state.clone());
            self.blocking(move |local| local.outbox(&c, &state)).await?
        };
        shown.to_push = outbox.iter().filter(|p| !p.migration).count() as u64;
        let mut pushed = 0u64;
        let mut others_wrote = false;
        requests += self
            .push_outbox(&c, &mut state, outbox, |sent, taken, outcome| {
                let logged = outcome.seqs.iter().filter(|s| s.is_some()).count() as u64;
                pushed += taken;
                if outcome.head > head + logged {
                    others_wrote = true;
                }
                head = outcome.head;
                shown.pushed = (shown.pushed + sent).min(shown.to_push);
                progress(shown);
            })
            .await?;
        if state.cursor > cursor_before {
            requests += 1;
            // An ack is advisory (compaction gating): a failure does not fail
            // the sync.
            let _ = self
                .transport
                .ack(collection, self.local.peer.as_str(), state.cursor)
                .await;
        }
        let outcome = match (pulled, pushed) {
            (0, 0) => SyncOutcome::NoOp,
            (p, 0) => SyncOutcome::Pulled {
                changes: p,
                bytes: pulled_bytes,
            },
            (0, q) => SyncOutcome::Pushed { updates: q },
            (p, q) => SyncOutcome::Merged {
                pulled: p,
                pushed: q,
            },
        };
        Ok(SyncReport {
            outcome,
            follow_up_needed: others_wrote,
            cursor: state.cursor,
            head,
            epoch: state.epoch,
            requests,
            rebased,
        })
    }

    /// Applies one streamed change (under the writer lock), moving the
    /// cursor with it. Returns whether it was someone else's.
    pub(crate) async fn apply_streamed(
        &self,
        c: &CollectionName,
        change: seqsync_engine::Change,
    ) -> Result<bool, ReplicaError> {
        let _guard = self.writer.lock().await;
        let mut state = self.state_of(c).await?;
        if change.seq <= state.cursor {
            return Ok(false);
        }
        let theirs = change.origin.as_ref() != Some(&self.local.peer);
        let page = RemotePage {
            cursor_checksum: change.log_checksum,
            cursor: change.seq,
            changes: vec![change],
            has_more: false,
            head: 0,
            epoch: state.epoch,
            schema_version: 0,
        };
        self.apply(c, &mut state, page).await?;
        Ok(theirs)
    }

    /// [`Local::apply_page`] off the executor: `state` moves with the page.
    async fn apply(
        &self,
        c: &CollectionName,
        state: &mut SyncState,
        page: RemotePage,
    ) -> Result<Applied, ReplicaError> {
        let (c, mut moved) = (c.clone(), state.clone());
        let (applied, after) = self
            .blocking(move |local| {
                let applied = local.apply_page(&c, &mut moved, page)?;
                Ok((applied, moved))
            })
            .await?;
        *state = after;
        Ok(applied)
    }
}

impl Local {
    /// A push the server refused for its schema version, as the typed error
    /// the app acts on.
    pub(crate) fn schema_error(&self, err: TransportError) -> ReplicaError {
        let app = self.schema_version.unwrap_or(1);
        match &err {
            TransportError::Refused { code, message } if code == "schema_too_old" => {
                // "… older than N, the oldest this server upgrades (the
                // collection is at M) …": the collection's version is the
                // last number of the message.
                let server = message
                    .split(|c: char| !c.is_ascii_digit())
                    .rev()
                    .find_map(|n| n.parse::<u32>().ok())
                    .unwrap_or(app + 1);
                ReplicaError::UpgradeRequired { app, server }
            }
            TransportError::Refused { code, .. } if code == "schema_too_new" => {
                ReplicaError::ServerBehind { app }
            }
            _ => ReplicaError::Transport(err),
        }
    }

    /// Refuses a page holding changes newer than the app understands.
    pub(crate) fn check_versions(&self, page: &RemotePage) -> Result<(), ReplicaError> {
        let Some(app) = self.schema_version else {
            return Ok(());
        };
        match page.changes.iter().map(|c| c.schema_version).max() {
            Some(server) if server > app => Err(ReplicaError::UpgradeRequired { app, server }),
            _ => Ok(()),
        }
    }

    /// Applies one pulled page locally in one commit with the new cursor.
    ///
    /// With migrations, in the same commit: a document the page leaves at
    /// an older version than the local data is migrated up (provisional
    /// output, as [`Replica::migrate_local`]); a document the page brings at
    /// the local version or newer (the server migrated it) that holds
    /// provisional output of the replica's own is rebased: its history is
    /// compacted into a snapshot without that output, and its unpushed
    /// local edits are appended again after it, unless one of them builds on
    /// the output (then it stays, and is pushed before that edit).
    pub(crate) fn apply_page(
        &self,
        c: &CollectionName,
        state: &mut SyncState,
        page: RemotePage,
    ) -> Result<Applied, ReplicaError> {
        let mut items = Vec::with_capacity(page.changes.len());
        let mut applied = Applied::default();
        // Per document: its last change in this page (version, kind).
        let mut last: BTreeMap<DocId, (u32, ChangeKind)> = BTreeMap::new();
        for change in page.changes {
            // Our own pushes come back in the log: the replica has them.
            if change.origin.as_ref() == Some(&self.peer) {
                continue;
            }
            let version = change.schema_version.max(INITIAL_SCHEMA_VERSION);
            applied.changes += 1;
            applied.bytes += change.payload.len() as u64;
            match last.get_mut(&change.doc) {
                Some(entry) => *entry = (version, change.kind),
                None => {
                    last.insert(change.doc.clone(), (version, change.kind));
                }
            }
            let payload = if change.kind == ChangeKind::Delete {
                Vec::new()
            } else {
                change.payload
            };
            items.push(Item::new(change.doc, payload, REMOTE, version));
        }
        for doc in last.keys() {
            self.forget(c, doc);
        }
        let moved =
            state.cursor != page.cursor || (page.epoch.is_some() && page.epoch != state.epoch);
        if page.cursor != state.cursor && page.cursor_checksum != 0 {
            state.cursor_checksum = Some(page.cursor_checksum);
        }
        state.cursor = page.cursor;
        state.epoch = page.epoch.or(state.epoch);
        if items.is_empty() {
            // Nothing to apply: store the cursor only if it moved (an
            // in-sync replica writes nothing locally).
            if moved {
                self.commit_with_state(c, state, Vec::new())?;
            }
            return Ok(applied);
        }
        let mut write = append_write(&*self.storage, c, items)?;
        if !self.migrations.is_empty() {
            for (doc, (version, kind)) in last {
                if kind == ChangeKind::Delete {
                    state.provisional.remove(doc.as_str());
                } else if version < state.local_version {
                    self.migrate_pulled(c, &doc, version, state, &mut write)?;
                } else if state.provisional.contains_key(doc.as_str())
                    && self.rebase(c, &doc, state, &mut write)?
                {
                    applied.rebased += 1;
                }
            }
        }
        self.commit_with_state(c, state, vec![write])?;
        Ok(applied)
    }
}
