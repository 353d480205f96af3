//! The app's migrations on the replica's side: data the replica holds at
//! an older schema version (the app was upgraded while offline) and pulled
//! data of an older version are migrated locally with the engine's pure
//! steps, the same the server runs.
//!
//! Why outputs are *provisional*: the server migrates the same documents
//! and its output is the one everyone keeps. The replica's own output is
//! logged locally (origin `migration`), never pushed by itself, and
//! rebased onto the server's once that arrives (`rebase`); only a local
//! edit made on top of it has to go up, and then with the output it needs.
//! Steps declared server-only are left to the server: local edits wait.

use seqsync_engine::{
    load_document, Change, CollectionName, CollectionWrite, Compaction, DocId, DocState, PeerId,
    Storage, INITIAL_SCHEMA_VERSION,
};

use crate::error::ReplicaError;
use crate::local_log::{append_write, change_of, Item};
use crate::replica::{invalid, name, Local, Replica, LOCAL, MIGRATION};
use crate::state::SyncState;
use crate::transport::Transport;

/// Documents migrated per local commit, and their outputs' bytes at most.
pub(crate) const MIGRATE_BATCH_DOCS: usize = 256;
pub(crate) const MIGRATE_BATCH_BYTES: usize = 4 << 20;

impl Local {
    /// The app's schema version (1 when it does not version its schema).
    pub(crate) fn app_version(&self) -> u32 {
        self.schema_version.unwrap_or(INITIAL_SCHEMA_VERSION)
    }

    /// How far this replica migrates data at `from` by itself: up to the
    /// app's version, stopping before a server-only step. Without
    /// migrations, nowhere.
    pub(crate) fn reach(&self, from: u32) -> u32 {
        if self.migrations.is_empty() {
            return from;
        }
        self.migrations.client_reach(from).min(self.app_version())
    }

    /// [`Replica::migrate_local`] under the writer lock.
    pub(crate) fn migrate_locked(
        &self,
        c: &CollectionName,
    ) -> Result<(SyncState, u64), ReplicaError> {
        let mut state = self.sync_state(c)?;
        let app = self.app_version();
        if state.local_version > app {
            return Err(ReplicaError::UpgradeRequired {
                app,
                server: state.local_version,
            });
        }
        let from = state.local_version;
        let target = self.reach(from);
        if target <= from {
            return Ok((state, 0));
        }
        let mut migrated = 0u64;
        let mut items = Vec::new();
        let mut bytes = 0usize;
        let mut docs_in_batch = 0usize;
        for info in self.storage.documents(c)? {
            if info.deleted {
                continue;
            }
            let Some(loaded) = load_document(&*self.storage, c, &info.doc)? else {
                continue;
            };
            let outputs = self
                .migrations
                .migrate(&info.doc, loaded.state.doc(), from, target)?;
            if outputs.is_empty() {
                continue;
            }
            migrated += 1;
            docs_in_batch += 1;
            for output in outputs {
                bytes += output.update.len();
                items.push(Item::new(
                    info.doc.clone(),
                    output.update,
                    MIGRATION,
                    output.to,
                ));
            }
            if docs_in_batch >= MIGRATE_BATCH_DOCS || bytes >= MIGRATE_BATCH_BYTES {
                let write = append_write(&*self.storage, c, std::mem::take(&mut items))?;
                self.note_provisional(&mut state, &write);
                self.commit_with_state(c, &state, vec![write])?;
                (docs_in_batch, bytes) = (0, 0);
            }
        }
        state.local_version = target;
        let writes = if items.is_empty() {
            Vec::new()
        } else {
            let write = append_write(&*self.storage, c, items)?;
            self.note_provisional(&mut state, &write);
            vec![write]
        };
        self.commit_with_state(c, &state, writes)?;
        if let Ok(mut editing) = self.editing.lock() {
            let stale: Vec<_> = editing
                .iter()
                .map(|(key, _)| key)
                .filter(|(collection, _)| collection == c)
                .cloned()
                .collect();
            for key in stale {
                editing.pop(&key);
            }
        }
        Ok((state, migrated))
    }

    /// Records the documents of `write`'s migration outputs as provisional.
    pub(crate) fn note_provisional(&self, state: &mut SyncState, write: &CollectionWrite) {
        for change in &write.append {
            if change.origin.as_ref().map(PeerId::as_str) == Some(MIGRATION) {
                state
                    .provisional
                    .entry(change.doc.to_string())
                    .or_insert(change.seq);
            }
        }
    }

    /// Migrates `doc`, which the pulled changes in `write` leave at
    /// `version`, up to the local version (as far as the replica may run
    /// steps), appending the outputs to `write` as provisional.
    pub(crate) fn migrate_pulled(
        &self,
        c: &CollectionName,
        doc: &DocId,
        version: u32,
        state: &mut SyncState,
        write: &mut CollectionWrite,
    ) -> Result<(), ReplicaError> {
        let target = self.reach(version).min(state.local_version);
        if target <= version {
            return Ok(());
        }
        let mut changes = self.storage.document_changes(c, doc)?;
        changes.extend(write.append.iter().filter(|ch| &ch.doc == doc).cloned());
        let current = DocState::load(&changes).map_err(|e| invalid(doc, e))?;
        let outputs = self
            .migrations
            .migrate(doc, current.doc(), version, target)?;
        let mut next = write.append.last().map_or(0, |ch| ch.seq);
        for output in outputs {
            next += 1;
            state.provisional.entry(doc.to_string()).or_insert(next);
            write.append.push(change_of(
                next,
                Item::new(doc.clone(), output.update, MIGRATION, output.to),
            ));
        }
        Ok(())
    }

    /// Rebases `doc` onto the server's migration of it (see
    /// [`Replica::apply_page`]). Returns whether it did.
    pub(crate) fn rebase(
        &self,
        c: &CollectionName,
        doc: &DocId,
        state: &mut SyncState,
        write: &mut CollectionWrite,
    ) -> Result<bool, ReplicaError> {
        let first = state.provisional.get(doc.as_str()).copied().unwrap_or(0);
        let origin_is = |change: &Change, origin: &str| {
            change.origin.as_ref().map(PeerId::as_str) == Some(origin)
        };
        let mut kept = Vec::new();
        let mut unpushed = Vec::new();
        for change in self.storage.document_changes(c, doc)? {
            if origin_is(&change, MIGRATION) && change.seq >= first {
                continue;
            }
            if origin_is(&change, LOCAL) && change.seq > state.pushed_through {
                unpushed.push(change);
            } else {
                kept.push(change);
            }
        }
        let pulled: Vec<Change> = write
            .append
            .iter()
            .filter(|ch| &ch.doc == doc)
            .cloned()
            .collect();
        let Some(through) = pulled.last().map(|ch| (ch.seq, ch.schema_version)) else {
            return Ok(false);
        };
        kept.extend(pulled);
        let base = DocState::load(&kept).map_err(|e| invalid(doc, e))?;
        if base.has_pending() {
            return Ok(false);
        }
        let mut with_edits = DocState::load(&kept).map_err(|e| invalid(doc, e))?;
        for change in &unpushed {
            with_edits
                .load_change(change)
                .map_err(|e| invalid(doc, e))?;
        }
        if with_edits.has_pending() {
            // An unpushed edit builds on the replica's own output: keep it,
            // the push sends it first.
            return Ok(false);
        }
        write.compact.push(Compaction {
            doc: doc.clone(),
            after: 0,
            through: through.0,
            snapshot: Some(base.encode_state()),
            schema_version: through.1,
        });
        let next = write.append.last().map_or(0, |ch| ch.seq) + 1;
        for (seq, change) in (next..).zip(unpushed) {
            write.append.push(Change {
                seq,
                log_checksum: 0,
                ..change
            });
        }
        state.provisional.remove(doc.as_str());
        Ok(true)
    }
}

impl<T: Transport> Replica<T> {
    /// Migrates the local documents of `collection` that are at an older
    /// schema version than the app (it was upgraded while they were
    /// stored), so the app works on them offline. Returns the documents
    /// that changed. Called by every edit and sync; an app may call it at
    /// startup to pay the cost up front.
    ///
    /// Each step's output is logged locally as *provisional* (origin
    /// `migration`), under the client id derived from the document's state
    /// (the engine's contract): where the server migrated the same state,
    /// both outputs are byte-identical and merge to one. Where the states
    /// differed, the next sync that pulls the server's migration of a
    /// document drops the replica's own output from it (a local rebase,
    /// [`SyncReport::rebased`](crate::SyncReport::rebased)), unless a local edit since builds on it: then
    /// the output is pushed before that edit. A step that must never meet a
    /// second run on another state (it appends to an array) is declared
    /// server-only, and the replica waits for the server's
    /// ([`ReplicaError::AwaitingServerMigration`] on edits until then).
    ///
    /// Blocking local I/O; commits of at most 256 documents, the version
    /// raised in the last one, so a crash resumes where it stopped.
    /// Errors: `InvalidName`, `Local`, `Migration`, `UpgradeRequired` (the
    /// local data is newer than the app).
    pub async fn migrate_local(&self, collection: &str) -> Result<u64, ReplicaError> {
        let c = name(collection)?;
        let _guard = self.writer.lock().await;
        Ok(self.migrated_state(&c).await?.1)
    }

    /// The version a local edit of `c` is made at, after migrating what is
    /// older; `AwaitingServerMigration` while a server-only step is due.
    pub(crate) async fn editable_version(&self, c: &CollectionName) -> Result<u32, ReplicaError> {
        let (state, _) = self.migrated_state(c).await?;
        let app = self.local.app_version();
        if state.local_version < app {
            return Err(ReplicaError::AwaitingServerMigration {
                collection: c.to_string(),
                local: state.local_version,
                app,
            });
        }
        Ok(state.local_version)
    }
}
