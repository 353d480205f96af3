//! Import: batches applied to a store, resumable at any batch boundary.
//!
//! Built as three steps so each can be read alone: choose the start batch
//! (where the receiver's history and the bundle's meet, or the state batch
//! for an empty receiver), apply batches (one commit each, only the changes
//! the receiver lacks) and check the end (the receiver's state digest is the
//! bundle's). An import stopped anywhere, even by SIGKILL, leaves the
//! receiver at a batch boundary, and running it again continues there.

use std::collections::HashMap;
use std::path::Path;

use crate::change::{Change, CollectionMeta, Epoch, Seq};
use crate::error::StorageError;
use crate::name::{CollectionName, PeerId};
use crate::storage::{AppendMode, CollectionWrite, Storage, WriteBase, WriteBatch};

use super::format::{
    hex16, parse_hex16, read_batch, read_manifest, Batch, BatchHeader, Manifest, MANIFEST_FILE,
};
use super::verify::check_batch;
use super::{checksum_at, BundleError, BundleProgress, EXPORT_PAGE};

/// Which epoch an import writes under.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImportEpoch {
    /// The bundle's: the receiver is empty or holds a prefix of the same
    /// history, and clients' cursors stay valid.
    #[default]
    Keep,
    /// A fresh one (a restore over data clients have seen: they get
    /// `Reset`). The receiver must not hold the collection, or hold exactly
    /// what an earlier run of this restore wrote (it resumes by seq).
    New,
}

/// How to import.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Keep the bundle's epoch, or take a new one.
    pub epoch: ImportEpoch,
}

/// What an import did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportReport {
    /// The collection.
    pub collection: String,
    /// Batches applied now.
    pub batches_applied: usize,
    /// Batches the receiver already held (skipped).
    pub batches_skipped: usize,
    /// Changes written now.
    pub changes: u64,
    /// How many batches were compared before one matched (1 = the first).
    pub batches_compared: usize,
    /// Whether the state batch was used (an empty receiver and no full
    /// history).
    pub used_state_batch: bool,
    /// The receiver's head afterwards.
    pub head: Seq,
    /// Its epoch afterwards.
    pub epoch: Epoch,
    /// Whether its state digest was checked against the bundle's (only when
    /// the import reached the bundle's end with the bundle's epoch).
    pub state_digest_checked: bool,
}

/// Imports a bundle into `storage` (a store no engine is serving: the
/// import is the collection's only writer).
///
/// Follows the seed's rules: a batch applies only where the receiver's
/// epoch, head and log checksum at `start − 1` match its header; otherwise
/// earlier batches are compared, and the first that matches is where the
/// import continues (changes the receiver already holds are checked by
/// checksum, not rewritten); if none matches the error says so. Each batch
/// is one commit; a batch already held is skipped; an import stopped at any
/// point finishes when run again. An empty receiver takes the bundle's epoch
/// (or a new one with [`ImportEpoch::New`]). At the end, with the bundle's
/// epoch, the receiver's state digest is compared with the last batch's.
///
/// Three steps: [`Import::choose_start`] (where the receiver and the bundle
/// meet), [`Import::apply_batches`] (one commit per batch from there) and
/// [`Import::check_end`] (the receiver's state is the bundle's).
///
/// Blocking. Memory: one batch at a time. Errors: every [`BundleError`].
pub fn import_bundle(
    storage: &dyn Storage,
    dir: &Path,
    options: ImportOptions,
    progress: &mut dyn FnMut(BundleProgress),
) -> Result<ImportReport, BundleError> {
    let manifest = read_manifest(dir)?;
    let name =
        CollectionName::new(manifest.collection.clone()).map_err(|e| BundleError::Malformed {
            file: dir.join(MANIFEST_FILE),
            detail: e.to_string(),
        })?;
    let bundle_epoch = manifest.epoch().ok_or_else(|| BundleError::Malformed {
        file: dir.join(MANIFEST_FILE),
        detail: "invalid epoch".to_owned(),
    })?;
    let stored = storage.collection(&name)?;
    let rebased = options.epoch == ImportEpoch::New;
    if let Some(meta) = &stored {
        if !rebased && meta.epoch != bundle_epoch {
            return Err(BundleError::EpochMismatch {
                collection: name.to_string(),
                receiver: meta.epoch,
                bundle: bundle_epoch,
            });
        }
    }
    let epoch = match (&stored, rebased) {
        (Some(meta), _) => meta.epoch,
        (None, false) => bundle_epoch,
        (None, true) => Epoch::random().map_err(|e| {
            BundleError::Storage(StorageError::backend(
                storage.backend(),
                "choosing an epoch",
                e,
            ))
        })?,
    };
    let mut report = ImportReport {
        collection: manifest.collection.clone(),
        batches_applied: 0,
        batches_skipped: 0,
        changes: 0,
        batches_compared: 0,
        used_state_batch: false,
        head: 0,
        epoch,
        state_digest_checked: false,
    };
    let import = Import {
        storage,
        dir,
        manifest,
        name,
        bundle_epoch,
        epoch,
        rebased,
    };
    let start = import.choose_start(stored.as_ref(), &mut report)?;
    let last_header = import.apply_batches(start, &mut report, progress)?;
    import.check_end(last_header, &mut report)?;
    Ok(report)
}

/// What every step of one import reads: the bundle, the collection and the
/// epoch its writes carry.
struct Import<'a> {
    storage: &'a dyn Storage,
    dir: &'a Path,
    manifest: Manifest,
    name: CollectionName,
    bundle_epoch: Epoch,
    /// The receiver's epoch, or the one an empty receiver takes.
    epoch: Epoch,
    /// Written under a new epoch ([`ImportEpoch::New`]).
    rebased: bool,
}

/// Where [`Import::apply_batches`] begins.
struct Start {
    /// Index of the first batch of the manifest still to look at.
    first: usize,
    /// The receiver's head before it (0 when it holds nothing).
    head: Seq,
    /// Whether the receiver holds the collection (so the next commit
    /// extends it rather than creates it).
    exists: bool,
}

impl Import<'_> {
    /// Step 1: where the receiver and the bundle meet. The batch whose span
    /// holds the receiver's next seq, or an earlier one whose "before"
    /// matches the receiver; for an empty receiver without the full
    /// history, the state batch, applied here (it is the start). Refuses a
    /// receiver that holds another history. Counts what it compared and
    /// skipped in `report`.
    fn choose_start(
        &self,
        stored: Option<&CollectionMeta>,
        report: &mut ImportReport,
    ) -> Result<Start, BundleError> {
        let &Self {
            storage,
            dir,
            ref manifest,
            ref name,
            ref bundle_epoch,
            epoch,
            rebased,
        } = self;
        let mut head = stored.map_or(0, |m| m.head);
        // Where to start: the batch whose span holds the receiver's next seq,
        // or an earlier one that matches.
        let mut first = first_batch_after(manifest, head);
        if stored.is_none() && manifest.batches.first().is_none_or(|b| b.start != 1) {
            // An empty receiver without the full history: the state batch.
            let Some(state) = &manifest.state else {
                return Err(BundleError::NeedsBase {
                    collection: name.to_string(),
                    start: manifest
                        .batches
                        .first()
                        .map_or(manifest.after + 1, |b| b.start),
                });
            };
            let path = dir.join(&state.file);
            let batch = read_batch(&path)?;
            check_batch(&path, &batch, manifest, state, bundle_epoch)?;
            apply(
                storage,
                name,
                None,
                epoch,
                *bundle_epoch,
                manifest.schema_version,
                &batch,
                rebased,
            )?;
            head = batch.header.end;
            report.used_state_batch = true;
            report.batches_applied += 1;
            report.changes += batch.changes.len() as u64;
            first = first_batch_after(manifest, head);
        } else if let Some(meta) = stored {
            if !rebased && first < manifest.batches.len() {
                // Step back until a batch's "before" matches the receiver and
                // every change the receiver holds after that point is one the
                // bundle holds too (same seq, same checksum).
                let mut candidate = first;
                let mut known: HashMap<Seq, u64> = HashMap::new();
                loop {
                    report.batches_compared += 1;
                    let entry = &manifest.batches[candidate];
                    let path = dir.join(&entry.file);
                    let batch = read_batch(&path)?;
                    check_batch(&path, &batch, manifest, entry, bundle_epoch)?;
                    known.extend(
                        batch
                            .changes
                            .iter()
                            .filter(|c| c.seq <= head)
                            .map(|c| (c.seq, c.log_checksum)),
                    );
                    let before =
                        parse_hex16(&path, "checksum_before", &batch.header.checksum_before)?;
                    if receiver_matches(
                        storage,
                        name,
                        head,
                        batch.header.start - 1,
                        before,
                        &known,
                    )? {
                        break;
                    }
                    if candidate == 0 {
                        return Err(BundleError::NoMatchingBatch {
                            collection: name.to_string(),
                            head,
                            checksum: meta.log_checksum,
                            tried: report.batches_compared,
                            lowest_start: entry.start,
                        });
                    }
                    candidate -= 1;
                }
                first = candidate;
            } else if rebased {
                // A restore under a new epoch resumes by seq, and only into what
                // an earlier run of this restore created (its marker peer).
                let marker = restore_marker(bundle_epoch);
                if !storage.peers(name)?.iter().any(|p| p.peer == marker) {
                    return Err(BundleError::Inconsistent {
                        file: dir.to_owned(),
                        detail: format!(
                            "the receiver holds collection {name} already; restore under a new epoch into an empty store"
                        ),
                    });
                }
                let at_boundary = head == manifest.after
                    || manifest.batches.iter().any(|b| b.end == head)
                    || manifest.state.as_ref().is_some_and(|s| s.end == head);
                if !at_boundary {
                    return Err(BundleError::NoMatchingBatch {
                        collection: name.to_string(),
                        head,
                        checksum: meta.log_checksum,
                        tried: 0,
                        lowest_start: manifest.after + 1,
                    });
                }
            }
            report.batches_skipped = first;
            if !rebased && first == manifest.batches.len() {
                // Everything is held already: confirm it is this history.
                if let Some(last) = manifest.batches.last() {
                    let path = dir.join(&last.file);
                    let batch = read_batch(&path)?;
                    let at_end =
                        parse_hex16(&path, "checksum_at_end", &batch.header.checksum_at_end)?;
                    if checksum_at(storage, name, last.end)? != at_end {
                        return Err(BundleError::NoMatchingBatch {
                            collection: name.to_string(),
                            head,
                            checksum: meta.log_checksum,
                            tried: 1,
                            lowest_start: last.start,
                        });
                    }
                }
            }
        }
        Ok(Start {
            first,
            head,
            exists: stored.is_some() || report.used_state_batch,
        })
    }

    /// Step 2: every batch from `start` on, each checked against the
    /// manifest and written as one commit with only the changes the
    /// receiver does not hold (a batch it holds whole is skipped). Returns
    /// the last batch's header, for [`Import::check_end`]; `report.head` is
    /// the head this step reached.
    fn apply_batches(
        &self,
        start: Start,
        report: &mut ImportReport,
        progress: &mut dyn FnMut(BundleProgress),
    ) -> Result<Option<BatchHeader>, BundleError> {
        let manifest = &self.manifest;
        let total: u64 = manifest.batches.iter().map(|b| b.changes).sum();
        let Start {
            first,
            mut head,
            mut exists,
        } = start;
        let mut last_header: Option<BatchHeader> = None;
        for entry in &manifest.batches[first..] {
            let path = self.dir.join(&entry.file);
            let batch = read_batch(&path)?;
            check_batch(&path, &batch, manifest, entry, &self.bundle_epoch)?;
            let fresh: Vec<Change> = batch
                .changes
                .iter()
                .filter(|c| c.seq > head)
                .cloned()
                .collect();
            if !fresh.is_empty() {
                let partial = Batch {
                    header: batch.header.clone(),
                    header_blake3: batch.header_blake3.clone(),
                    changes: fresh,
                };
                let base = exists.then_some(head);
                apply(
                    self.storage,
                    &self.name,
                    base,
                    self.epoch,
                    self.bundle_epoch,
                    manifest.schema_version,
                    &partial,
                    self.rebased,
                )?;
                report.changes += partial.changes.len() as u64;
                report.batches_applied += 1;
                head = batch.header.end;
                exists = true;
            } else {
                report.batches_skipped += 1;
            }
            last_header = Some(batch.header);
            progress(BundleProgress {
                done: report.changes,
                total,
                bytes: 0,
            });
        }
        report.head = head;
        Ok(last_header)
    }

    /// Step 3: the receiver's head and epoch into `report`, and, once it is
    /// at the bundle's head, its state digest compared with the last
    /// batch's (the end state must be the bundle's).
    fn check_end(
        &self,
        last_header: Option<BatchHeader>,
        report: &mut ImportReport,
    ) -> Result<(), BundleError> {
        let manifest = &self.manifest;
        let (mut head, mut epoch) = (report.head, self.epoch);
        if let Some(meta) = self.storage.collection(&self.name)? {
            head = meta.head;
            epoch = meta.epoch;
        }
        report.head = head;
        report.epoch = epoch;
        if head == manifest.until {
            let last = manifest.batches.last().or(manifest.state.as_ref());
            let expected = match (last_header, last) {
                (Some(header), _) if header.end == manifest.until => header.state_digest_at_end,
                (_, Some(entry)) => {
                    read_batch(&self.dir.join(&entry.file))?
                        .header
                        .state_digest_at_end
                }
                _ => None,
            };
            if let Some(expected) = expected {
                let mut cache = crate::digest::DigestCache::default();
                let found = crate::digest::collection_digest(self.storage, &self.name, &mut cache)?
                    .and_then(|d| d.state_digest)
                    .map(hex16);
                if found.as_deref() != Some(expected.as_str()) {
                    return Err(BundleError::StateDigest {
                        collection: self.name.to_string(),
                        expected,
                        found: found.unwrap_or_else(|| "none".to_owned()),
                    });
                }
                report.state_digest_checked = true;
            }
        }
        Ok(())
    }
}

/// The index of the first changes batch that ends after `head` (the one
/// holding the receiver's next seq), or the number of batches when the
/// receiver holds them all.
fn first_batch_after(manifest: &Manifest, head: Seq) -> usize {
    manifest
        .batches
        .iter()
        .position(|b| b.end > head)
        .unwrap_or(manifest.batches.len())
}

/// Whether the receiver holds the history up to seq `since` (its checksum
/// there is `before`) and, after it up to its `head`, only changes the
/// bundle holds too (`known`: seq → log checksum). A change the receiver
/// compacted away is simply missing, which is fine; a change the bundle
/// does not hold means another history (or one the source compacted, which
/// cannot be told apart) and refuses the match.
fn receiver_matches(
    storage: &dyn Storage,
    name: &CollectionName,
    head: Seq,
    since: Seq,
    before: u64,
    known: &HashMap<Seq, u64>,
) -> Result<bool, BundleError> {
    if since > head || checksum_at(storage, name, since)? != before {
        return Ok(false);
    }
    let mut cursor = since;
    while cursor < head {
        let Some(page) = storage.read_changes(name, cursor, EXPORT_PAGE)? else {
            return Ok(false);
        };
        if page.changes.is_empty() {
            break;
        }
        for change in &page.changes {
            if change.seq > head {
                return Ok(true);
            }
            if known.get(&change.seq) != Some(&change.log_checksum) {
                return Ok(false);
            }
            cursor = change.seq;
        }
    }
    Ok(true)
}

/// The peer a restore under a new epoch records in its first commit, so a
/// rerun knows the collection is its own (inactive: it never holds
/// compaction back).
fn restore_marker(bundle_epoch: &Epoch) -> PeerId {
    // 16 hex digits of the bundle's epoch keep the id short and valid.
    PeerId::new(format!(
        "seqsync-restore-{}",
        &bundle_epoch.to_string()[..16]
    ))
    .unwrap_or_else(|_| PeerId::migration())
}

/// Writes one batch's changes as one commit.
#[allow(clippy::too_many_arguments)]
fn apply(
    storage: &dyn Storage,
    name: &CollectionName,
    head: Option<Seq>,
    epoch: Epoch,
    bundle_epoch: Epoch,
    schema_version: u32,
    batch: &Batch,
    rebased: bool,
) -> Result<(), BundleError> {
    let base = match head {
        Some(head) => WriteBase::Existing { epoch, head },
        None => WriteBase::Create {
            epoch,
            schema_version,
        },
    };
    storage.commit(&WriteBatch {
        writes: vec![CollectionWrite {
            collection: name.clone(),
            base,
            append: batch.changes.clone(),
            compact: Vec::new(),
            peers: match (head, rebased) {
                (None, true) => vec![crate::change::PeerRecord {
                    peer: restore_marker(&bundle_epoch),
                    acked: 0,
                    last_seen_ms: 0,
                }],
                _ => Vec::new(),
            },
            raise_schema_version: None,
            append_mode: if rebased {
                AppendMode::Rebased
            } else {
                AppendMode::Imported
            },
        }],
    })?;
    Ok(())
}
