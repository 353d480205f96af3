//! Migrating a stored collection to the newest schema version, crash-safe
//! and in bounded memory.
//!
//! The engine runs this when it opens a store (and a restore or import
//! opens one), before any collection serves anything, so no reader is ever
//! handed data of an older version.
//!
//! How it stays crash-safe without a progress table. Documents are migrated
//! one at a time in id order; what a document's steps changed is appended as
//! ordinary `Update` changes at the *target* version with origin
//! [`MIGRATION_ORIGIN`], and a document's changes always land in one commit.
//! The collection's version is raised in the same commit as the last
//! document's changes. While a migration is unfinished, its changes are
//! therefore the tail of the log: a change at seq `head` whose version is
//! above the collection's is the mark of an interrupted run, and its document
//! is the last one that run finished. Reopening resumes after it, so no step
//! runs twice on a document whose result was committed; a crash before the
//! first commit leaves the old version with no migration change at all.
//! Documents the steps did not change (nothing logged) before the resume
//! point were covered by the commit that holds it; after it they are simply
//! visited again, which their steps leave unchanged by contract.
//!
//! A run that was interrupted while migrating to an older target than the
//! engine's newest finishes that target first, then migrates on, so the tail
//! above the stored version is always of one target.

use crate::change::{Change, ChangeKind, CollectionMeta, Seq};
use crate::error::{OpenError, StorageError};
use crate::load::load_document;
use crate::migration::{MigrationError, Migrations, MIGRATION_ORIGIN};
use crate::name::{CollectionName, DocId, PeerId};
use crate::storage::{AppendMode, CollectionWrite, Storage, WriteBase, WriteBatch};

/// Commit after this many payload bytes of migration output (a document's
/// changes are never split across commits, so one commit may hold more).
const MAX_COMMIT_BYTES: usize = 4 << 20;
/// Commit after this many migrated documents.
const MAX_COMMIT_DOCUMENTS: usize = 256;

/// Where a running migration is, handed to the caller's progress callback
/// after every commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationProgress {
    /// The collection.
    pub collection: CollectionName,
    /// The version it is migrated from.
    pub from: u32,
    /// The version it is migrated to.
    pub to: u32,
    /// Documents visited so far (in this run).
    pub documents_done: u64,
    /// Documents of the collection.
    pub documents_total: u64,
    /// Changes written so far (in this run).
    pub changes_written: u64,
}

/// What migrating one collection did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectionMigration {
    /// The collection.
    pub collection: CollectionName,
    /// The version it was stored at.
    pub from: u32,
    /// The version it is at now.
    pub to: u32,
    /// Documents whose steps ran (tombstoned ones are skipped).
    pub documents_visited: u64,
    /// Documents the steps changed.
    pub documents_changed: u64,
    /// Changes appended.
    pub changes_written: u64,
    /// The document an interrupted earlier run had finished, if this run
    /// resumed one.
    pub resumed_after: Option<DocId>,
}

/// Migrates `name` up to `migrations.latest()` if it is stored at an older
/// version; `Ok(None)` if it is current (or does not exist).
///
/// Blocking: reads every document once and commits in groups (one fsync per
/// group of up to 256 documents or 4 MiB). Memory: one document at a time,
/// plus the list of document ids. Must run while nothing else writes the
/// collection (the engine runs it before it serves); a concurrent writer
/// makes its commits fail with a conflict, never interleave.
///
/// Errors: [`OpenError::StoreNewerThanSchema`] and
/// [`OpenError::NoMigrationPath`] when the steps do not fit the stored
/// version, [`OpenError::Migration`] when a step refuses or fails or the
/// store fails (what was committed stays; reopening resumes after it).
pub fn migrate_collection(
    storage: &dyn Storage,
    name: &CollectionName,
    migrations: &Migrations,
    progress: &mut dyn FnMut(&MigrationProgress),
) -> Result<Option<CollectionMigration>, OpenError> {
    let failed = |source: MigrationError| OpenError::Migration {
        collection: name.to_string(),
        source,
    };
    let storage_failed = |e: StorageError| failed(MigrationError::Storage(e));
    let latest = migrations.latest();
    let Some(mut meta) = storage.collection(name).map_err(storage_failed)? else {
        return Ok(None);
    };
    migrations.check_stored(name, meta.schema_version)?;
    let stored_at = meta.schema_version;
    let mut report: Option<CollectionMigration> = None;
    while meta.schema_version < latest {
        let (target, resume_after) = match interrupted_run(storage, name, &meta)? {
            Some((target, last_done)) => (target, Some(last_done)),
            None => (latest, None),
        };
        if target > latest {
            return Err(OpenError::StoreNewerThanSchema {
                collection: name.to_string(),
                stored: target,
                latest,
            });
        }
        let pass = migrate_pass(
            storage,
            name,
            migrations,
            &mut meta,
            target,
            resume_after,
            progress,
        )?;
        report = Some(match report {
            None => pass,
            Some(earlier) => CollectionMigration {
                collection: earlier.collection,
                from: stored_at,
                to: pass.to,
                documents_visited: earlier.documents_visited + pass.documents_visited,
                documents_changed: earlier.documents_changed + pass.documents_changed,
                changes_written: earlier.changes_written + pass.changes_written,
                resumed_after: earlier.resumed_after,
            },
        });
    }
    Ok(report)
}

/// The target of an unfinished earlier run and the last document it
/// finished, read from the change at seq `head` (see the module docs);
/// `None` if no run was interrupted.
fn interrupted_run(
    storage: &dyn Storage,
    name: &CollectionName,
    meta: &CollectionMeta,
) -> Result<Option<(u32, DocId)>, OpenError> {
    let page = storage
        .read_changes(name, meta.head.saturating_sub(1), 1)
        .map_err(|e| OpenError::Migration {
            collection: name.to_string(),
            source: MigrationError::Storage(e),
        })?;
    let last = page
        .and_then(|p| p.changes.into_iter().next())
        .filter(|c| c.seq == meta.head);
    Ok(last.and_then(|change| {
        let ours = change.origin.as_ref().map(PeerId::as_str) == Some(MIGRATION_ORIGIN);
        (ours && change.schema_version > meta.schema_version)
            .then_some((change.schema_version, change.doc))
    }))
}

/// Migrates every document after `resume_after` from `meta.schema_version`
/// to `target` and raises the collection's version in the last commit.
fn migrate_pass(
    storage: &dyn Storage,
    name: &CollectionName,
    migrations: &Migrations,
    meta: &mut CollectionMeta,
    target: u32,
    resume_after: Option<DocId>,
    progress: &mut dyn FnMut(&MigrationProgress),
) -> Result<CollectionMigration, OpenError> {
    let failed = |source: MigrationError| OpenError::Migration {
        collection: name.to_string(),
        source,
    };
    let storage_failed = |e: StorageError| failed(MigrationError::Storage(e));
    let origin = PeerId::migration();
    let from = meta.schema_version;
    let documents = storage.documents(name).map_err(storage_failed)?;
    let mut report = CollectionMigration {
        collection: name.clone(),
        from,
        to: target,
        documents_visited: 0,
        documents_changed: 0,
        changes_written: 0,
        resumed_after: resume_after.clone(),
    };
    let mut state = Progress {
        pending: Vec::new(),
        pending_bytes: 0,
        pending_documents: 0,
        head: meta.head,
        committed_head: meta.head,
    };
    let total = documents.len() as u64;
    for (index, info) in documents.into_iter().enumerate() {
        let done = index as u64 + 1;
        if resume_after.as_ref().is_some_and(|last| &info.doc <= last) || info.deleted {
            continue;
        }
        let Some(loaded) = load_document(storage, name, &info.doc).map_err(storage_failed)? else {
            continue;
        };
        let outputs = migrations
            .migrate(&info.doc, loaded.state.doc(), from, target)
            .map_err(failed)?;
        report.documents_visited += 1;
        if outputs.is_empty() {
            continue;
        }
        report.documents_changed += 1;
        for output in outputs {
            state.head += 1;
            state.pending_bytes += output.update.len();
            state.pending.push(Change {
                seq: state.head,
                doc: info.doc.clone(),
                kind: ChangeKind::Update,
                payload: output.update,
                schema_version: target,
                origin: Some(origin.clone()),
                author: None,
                committed_ms: crate::now_ms(),
                log_checksum: 0,
            });
        }
        state.pending_documents += 1;
        if state.pending_bytes >= MAX_COMMIT_BYTES
            || state.pending_documents >= MAX_COMMIT_DOCUMENTS
        {
            report.changes_written += state.commit(storage, name, meta, None)?;
            progress(&MigrationProgress {
                collection: name.clone(),
                from,
                to: target,
                documents_done: done,
                documents_total: total,
                changes_written: report.changes_written,
            });
        }
    }
    report.changes_written += state.commit(storage, name, meta, Some(target))?;
    meta.schema_version = target;
    progress(&MigrationProgress {
        collection: name.clone(),
        from,
        to: target,
        documents_done: total,
        documents_total: total,
        changes_written: report.changes_written,
    });
    Ok(report)
}

/// Output of a pass not yet committed.
struct Progress {
    pending: Vec<Change>,
    pending_bytes: usize,
    pending_documents: usize,
    /// Seq of the last pending change.
    head: Seq,
    /// The stored head.
    committed_head: Seq,
}

impl Progress {
    /// Commits what is pending (and the version raise, if given) against the
    /// stored head; returns how many changes it wrote.
    fn commit(
        &mut self,
        storage: &dyn Storage,
        name: &CollectionName,
        meta: &mut CollectionMeta,
        raise_schema_version: Option<u32>,
    ) -> Result<u64, OpenError> {
        let append = std::mem::take(&mut self.pending);
        let written = append.len() as u64;
        if append.is_empty() && raise_schema_version.is_none() {
            return Ok(0);
        }
        let batch = WriteBatch {
            writes: vec![CollectionWrite {
                collection: name.clone(),
                base: WriteBase::Existing {
                    epoch: meta.epoch,
                    head: self.committed_head,
                },
                append,
                compact: Vec::new(),
                peers: Vec::new(),
                raise_schema_version,
                append_mode: AppendMode::Next,
            }],
        };
        storage.commit(&batch).map_err(|e| OpenError::Migration {
            collection: name.to_string(),
            source: MigrationError::Storage(e),
        })?;
        self.committed_head = self.head;
        self.pending_bytes = 0;
        self.pending_documents = 0;
        meta.head = self.head;
        Ok(written)
    }
}
