//! Export: a collection's log as a bundle, read as of one head.
//!
//! The log is read in pages of `EXPORT_PAGE` up to the head taken at the
//! start, so pushes may continue while it runs and no transaction stays
//! open longer than one page. Besides the batches of changes, the *state
//! batch* holds every document as of that head: a receiver that starts
//! empty and cannot take the whole history (because compaction folded its
//! beginning, or the export starts later) starts from it. The state digest
//! is kept incrementally (`StateTerms`), so an export never holds every
//! document in memory at once.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::num::NonZeroUsize;
use std::path::Path;

use yrs::Transact;

use lru::LruCache;

use crate::change::{Change, ChangeKind, Epoch, Seq};
use crate::digest::{document_digest_at, DocumentDigest, DocumentDigestAt};
use crate::error::StorageError;
use crate::load::load_document_through;
use crate::name::{CollectionName, DocId};
use crate::storage::Storage;

use super::format::{
    hex16, record_len, write_batch, write_durably, BatchHeader, BatchKind, Manifest, ManifestBatch,
    BUNDLE_FORMAT_VERSION, MANIFEST_FILE, MANIFEST_FORMAT,
};
use super::{checksum_at, io_error, BundleError, BundleProgress, EXPORT_PAGE};

/// How an export cuts its batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportOptions {
    /// A batch ends after this many changes, at most.
    pub max_batch_changes: usize,
    /// ... or once its body reaches this many bytes.
    pub max_batch_bytes: usize,
    /// Also write the state batch (every document at the head).
    pub with_state: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            max_batch_changes: 10_000,
            max_batch_bytes: 8 << 20,
            with_state: true,
        }
    }
}

/// What an export wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportReport {
    /// The manifest written.
    pub manifest: Manifest,
    /// Changes written in changes batches.
    pub changes: u64,
    /// Bytes of every file written.
    pub bytes: u64,
}

/// Writes the changes of `name` with seq in `(after, until]` (until:
/// the head when the export starts, or less) as a bundle in `dir` (created;
/// must not hold a manifest already).
///
/// Blocking. Consistent as of that head while commits continue: pages are
/// read up to it and the state batch loads documents as of it; no read
/// transaction is held longer than one page. Errors: `Io`, `Storage`, and
/// `Inconsistent` when the collection does not exist, the directory holds
/// a bundle already, or the collection is replaced (new epoch) meanwhile.
pub fn export_collection(
    storage: &dyn Storage,
    name: &CollectionName,
    after: Seq,
    until: Option<Seq>,
    dir: &Path,
    options: ExportOptions,
    progress: &mut dyn FnMut(BundleProgress),
) -> Result<ExportReport, BundleError> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let manifest_path = dir.join(MANIFEST_FILE);
    if manifest_path.exists() {
        return Err(BundleError::Inconsistent {
            file: manifest_path,
            detail: "the directory holds a bundle already; export into an empty directory"
                .to_owned(),
        });
    }
    let Some(meta) = storage.collection(name)? else {
        return Err(BundleError::Inconsistent {
            file: dir.to_owned(),
            detail: format!("collection {name} does not exist in the source"),
        });
    };
    let head = until.map_or(meta.head, |u| u.min(meta.head));
    let after = after.min(head);
    let epoch = meta.epoch;
    // The checksum at `after`: the stored value of the last change ≤ after.
    let checksum_before = checksum_at(storage, name, after)?;
    // The state digest is kept incrementally: terms of every document as
    // of `after`, replaced for the documents each batch touches.
    let mut terms = StateTerms::at(storage, name, after)?;
    let mut manifest = Manifest {
        format: MANIFEST_FORMAT.to_owned(),
        format_version: BUNDLE_FORMAT_VERSION,
        collection: name.to_string(),
        epoch: epoch.to_string(),
        schema_version: meta.schema_version,
        after,
        until: head,
        batches: Vec::new(),
        state: None,
    };
    let total = head - after;
    let mut done = 0u64;
    let mut bytes_written = 0u64;
    let mut cursor = after;
    let mut before = checksum_before;
    let mut pending: Vec<Change> = Vec::new();
    let mut pending_bytes = 0usize;
    let mut batch_start = after + 1;
    let flush = |pending: &mut Vec<Change>,
                 pending_bytes: &mut usize,
                 batch_start: &mut Seq,
                 before: &mut u64,
                 terms: &mut StateTerms,
                 manifest: &mut Manifest,
                 bytes_written: &mut u64|
     -> Result<(), BundleError> {
        let Some(last) = pending.last() else {
            return Ok(());
        };
        let end = last.seq;
        let at_end = last.log_checksum;
        terms.advance(storage, name, pending, end)?;
        let header = BatchHeader {
            format_version: BUNDLE_FORMAT_VERSION,
            kind: BatchKind::Changes,
            collection: name.to_string(),
            epoch: epoch.to_string(),
            schema_version: meta.schema_version,
            start: *batch_start,
            end,
            changes: pending.len() as u64,
            checksum_before: hex16(*before),
            checksum_at_end: hex16(at_end),
            state_digest_at_end: terms.digest().map(hex16),
            body_bytes: 0,
            body_blake3: String::new(),
        };
        let file = format!("{:020}-{:020}.batch", *batch_start, end);
        let (size, header_blake3) = write_batch(&dir.join(&file), header, pending)?;
        *bytes_written += size;
        manifest.batches.push(ManifestBatch {
            file,
            kind: BatchKind::Changes,
            start: *batch_start,
            end,
            changes: pending.len() as u64,
            bytes: size,
            header_blake3,
        });
        *before = at_end;
        *batch_start = end + 1;
        pending.clear();
        *pending_bytes = 0;
        Ok(())
    };
    while cursor < head {
        let Some(page) = storage.read_changes(name, cursor, EXPORT_PAGE)? else {
            break;
        };
        if page.meta.epoch != epoch {
            return Err(BundleError::Inconsistent {
                file: dir.to_owned(),
                detail: format!(
                    "collection {name} was replaced (new epoch) during the export; export again"
                ),
            });
        }
        if page.changes.is_empty() {
            break;
        }
        for change in page.changes {
            if change.seq > head {
                cursor = head;
                break;
            }
            cursor = change.seq;
            done += 1;
            pending_bytes += record_len(&change);
            pending.push(change);
            if pending.len() >= options.max_batch_changes.max(1)
                || pending_bytes >= options.max_batch_bytes.max(1)
            {
                flush(
                    &mut pending,
                    &mut pending_bytes,
                    &mut batch_start,
                    &mut before,
                    &mut terms,
                    &mut manifest,
                    &mut bytes_written,
                )?;
                progress(BundleProgress {
                    done,
                    total,
                    bytes: bytes_written,
                });
            }
        }
    }
    flush(
        &mut pending,
        &mut pending_bytes,
        &mut batch_start,
        &mut before,
        &mut terms,
        &mut manifest,
        &mut bytes_written,
    )?;
    if options.with_state && head > 0 {
        let (file, size, changes, header_blake3) =
            write_state_batch(storage, name, epoch, meta.schema_version, head, dir)?;
        bytes_written += size;
        manifest.state = Some(ManifestBatch {
            file,
            kind: BatchKind::State,
            start: 1,
            end: head,
            changes,
            bytes: size,
            header_blake3,
        });
    }
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| BundleError::Malformed {
        file: manifest_path.clone(),
        detail: e.to_string(),
    })?;
    bytes_written += json.len() as u64;
    write_durably(&manifest_path, &json)?;
    progress(BundleProgress {
        done,
        total,
        bytes: bytes_written,
    });
    Ok(ExportReport {
        manifest,
        changes: done,
        bytes: bytes_written,
    })
}

/// Per-document terms of the state digest as of some seq.
struct StateTerms {
    terms: HashMap<DocId, Option<u64>>,
    /// Documents kept in memory between batches, so a document touched by
    /// every batch is not reloaded from storage each time (at most
    /// `MAX_EXPORT_CACHED_DOCS`, the least recently used forgotten first).
    docs: LruCache<DocId, crate::yjs::DocState>,
}

/// Documents an export keeps loaded between batches.
const MAX_EXPORT_CACHED_DOCS: usize = 64;

impl StateTerms {
    /// No terms, no documents loaded.
    fn empty() -> Self {
        Self {
            terms: HashMap::new(),
            docs: LruCache::new(
                NonZeroUsize::new(MAX_EXPORT_CACHED_DOCS).unwrap_or(NonZeroUsize::MIN),
            ),
        }
    }

    fn at(storage: &dyn Storage, name: &CollectionName, seq: Seq) -> Result<Self, BundleError> {
        let mut out = Self::empty();
        if seq > 0 {
            let docs: HashSet<DocId> = storage
                .documents(name)?
                .into_iter()
                .map(|d| d.doc)
                .collect();
            out.update(storage, name, seq, docs)?;
        }
        Ok(out)
    }

    fn update(
        &mut self,
        storage: &dyn Storage,
        name: &CollectionName,
        seq: Seq,
        docs: HashSet<DocId>,
    ) -> Result<(), BundleError> {
        for doc in docs {
            let term = match document_digest_at(storage, name, &doc, seq)? {
                DocumentDigestAt::Missing => {
                    self.terms.remove(&doc);
                    continue;
                }
                DocumentDigestAt::Pending => None,
                DocumentDigestAt::Digest(digest) => Some(digest.collection_term(&doc)),
            };
            self.terms.insert(doc, term);
        }
        Ok(())
    }

    /// Moves the terms from the previous batch's end to `end`, given the
    /// batch's changes: cached documents apply them, others are loaded as of
    /// `end`.
    fn advance(
        &mut self,
        storage: &dyn Storage,
        name: &CollectionName,
        batch: &[Change],
        end: Seq,
    ) -> Result<(), BundleError> {
        let mut order: Vec<DocId> = Vec::new();
        let mut by_doc: HashMap<DocId, Vec<&Change>> = HashMap::new();
        for change in batch {
            let entry = by_doc.entry(change.doc.clone()).or_default();
            if entry.is_empty() {
                order.push(change.doc.clone());
            }
            entry.push(change);
        }
        for doc in order {
            let changes = by_doc.remove(&doc).unwrap_or_default();
            if !self.docs.contains(&doc) {
                let loaded = load_document_through(storage, name, &doc, end)?;
                match loaded {
                    Some(loaded) => {
                        self.docs.put(doc.clone(), loaded.state);
                    }
                    None => {
                        self.terms.remove(&doc);
                        continue;
                    }
                }
            } else if let Some(state) = self.docs.get_mut(&doc) {
                for change in changes {
                    state.load_change(change).map_err(|e| {
                        BundleError::Storage(StorageError::Corrupt {
                            backend: storage.backend(),
                            detail: format!("collection {name}, document {doc}: {e}"),
                        })
                    })?;
                }
            }
            let Some(state) = self.docs.get(&doc) else {
                continue;
            };
            let term = if state.deleted {
                Some(DocumentDigest::tombstone().collection_term(&doc))
            } else if state.has_pending() {
                None
            } else {
                Some(DocumentDigest::of_state(&state.doc().transact()).collection_term(&doc))
            };
            self.terms.insert(doc, term);
        }
        Ok(())
    }

    fn digest(&self) -> Option<u64> {
        let mut sum = 0u64;
        for term in self.terms.values() {
            sum = sum.wrapping_add((*term)?);
        }
        Some(sum)
    }
}

fn write_state_batch(
    storage: &dyn Storage,
    name: &CollectionName,
    epoch: Epoch,
    schema_version: u32,
    head: Seq,
    dir: &Path,
) -> Result<(String, u64, u64, String), BundleError> {
    let mut records = Vec::new();
    let mut terms = StateTerms::empty();
    for info in storage.documents(name)? {
        let Some(loaded) = load_document_through(storage, name, &info.doc, head)? else {
            continue;
        };
        let at = loaded.last_seq;
        let log_checksum = checksum_at(storage, name, at)?;
        let digest = if loaded.state.deleted {
            Some(DocumentDigest::tombstone())
        } else if loaded.state.has_pending() {
            None
        } else {
            Some(DocumentDigest::of_state(&loaded.state.doc().transact()))
        };
        terms.terms.insert(
            info.doc.clone(),
            digest.map(|d| d.collection_term(&info.doc)),
        );
        records.push(if loaded.state.deleted {
            Change {
                seq: at,
                doc: info.doc,
                kind: ChangeKind::Delete,
                payload: Vec::new(),
                schema_version,
                origin: None,
                author: None,
                committed_ms: 0,
                log_checksum,
            }
        } else {
            Change {
                seq: at,
                doc: info.doc,
                kind: ChangeKind::Snapshot,
                payload: loaded.state.encode_state(),
                schema_version,
                origin: None,
                author: None,
                committed_ms: 0,
                log_checksum,
            }
        });
    }
    records.sort_by_key(|c| c.seq);
    let header = BatchHeader {
        format_version: BUNDLE_FORMAT_VERSION,
        kind: BatchKind::State,
        collection: name.to_string(),
        epoch: epoch.to_string(),
        schema_version,
        start: 1,
        end: head,
        changes: records.len() as u64,
        checksum_before: hex16(0),
        checksum_at_end: hex16(records.last().map_or(0, |c| c.log_checksum)),
        state_digest_at_end: terms.digest().map(hex16),
        body_bytes: 0,
        body_blake3: String::new(),
    };
    let file = format!("state-{head:020}.batch");
    let (size, header_blake3) = write_batch(&dir.join(&file), header, &records)?;
    Ok((file, size, records.len() as u64, header_blake3))
}
