//! Bundles: a collection's log written as verifiable batches of changes,
//! to back up, restore, verify and move collections (docs/BUNDLES.md is the
//! format's reference).
//!
//! The model is Spacemesh's quicksync partials (its sync design for the Spacemesh node): each
//! batch `[start, end]` says the log checksum *before* it (at `start − 1`)
//! and at its end. A receiver applies a batch only where its own checksum at
//! `start − 1` says the same; otherwise it steps back to an earlier batch
//! until one matches, or reports that none does. A batch lands in one
//! commit, so an import stopped anywhere (even by SIGKILL) leaves the
//! receiver at a batch boundary, and running it again continues from there;
//! a batch already applied is recognised by its checksums and skipped.
//!
//! Files are written to a temporary name, synced and renamed, and the
//! manifest is written last: a directory without a manifest is an
//! unfinished export and is refused.
//!
//! Export reads the log as of one head (pages up to it, documents loaded as
//! of it), so it is consistent while pushes continue and never holds a
//! transaction open longer than one page.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use yrs::Transact;

use crate::change::{Change, ChangeKind, Epoch, Seq};
use crate::digest::{document_digest_at, DocumentDigest, DocumentDigestAt, LogChain};
use crate::error::StorageError;
use crate::load::load_document_through;
use crate::name::{CollectionName, DocId, PeerId};
use crate::storage::{AppendMode, CollectionWrite, Storage, WriteBase, WriteBatch};

/// The format version this code writes and reads.
pub const BUNDLE_FORMAT_VERSION: u32 = 1;
/// First bytes of every batch file.
pub const BATCH_MAGIC: &[u8; 8] = b"SSBATCH1";
/// Name of the manifest file in a bundle directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The `format` field of every manifest.
const MANIFEST_FORMAT: &str = "seqsync-bundle";
/// Longest header a reader accepts (a header is a few hundred bytes).
const MAX_HEADER_BYTES: u32 = 64 * 1024;
/// Largest batch body a reader accepts.
const MAX_BODY_BYTES: u64 = 1 << 32;
/// Changes read from storage per page while exporting.
const EXPORT_PAGE: usize = 1000;

/// Errors of export, import and verify. Each message names the file (or
/// collection) and says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The directory has no manifest: not a bundle, or an export that did
    /// not finish.
    #[error("{dir}: no {MANIFEST_FILE}; this is not a bundle, or its export did not finish (export again)")]
    NoManifest {
        /// The directory.
        dir: PathBuf,
    },
    /// A file does not parse as what it should be.
    #[error("{file}: {detail}; the bundle is damaged (export it again)")]
    Malformed {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A file of another format version.
    #[error("{file}: bundle format version {found}, this seqsync reads {supported}; use a matching release")]
    FormatVersion {
        /// The file.
        file: PathBuf,
        /// Its version.
        found: u32,
        /// The version read here.
        supported: u32,
    },
    /// A batch's body does not hash to what its header says.
    #[error("{file}: the body's BLAKE3 is {found}, the header says {expected}; the file was changed or truncated (restore it from another copy)")]
    BodyHash {
        /// The batch file.
        file: PathBuf,
        /// From the header.
        expected: String,
        /// Computed.
        found: String,
    },
    /// A log checksum inside a batch does not add up.
    #[error("{file}: log checksum at seq {seq} is {found:016x}, expected {expected:016x}; the batch does not continue the history it claims (re-export)")]
    Checksum {
        /// The batch file.
        file: PathBuf,
        /// Where.
        seq: Seq,
        /// Expected.
        expected: u64,
        /// Found.
        found: u64,
    },
    /// A batch of another collection or epoch than its manifest.
    #[error("{file}: {detail}")]
    Inconsistent {
        /// The batch file.
        file: PathBuf,
        /// What disagrees.
        detail: String,
    },
    /// The receiver's collection has another epoch: it holds a different
    /// history.
    #[error("collection {collection}: the receiver has epoch {receiver}, the bundle {bundle}; restore into an empty store (or under a new epoch with `restore`)")]
    EpochMismatch {
        /// The collection.
        collection: String,
        /// The receiver's epoch.
        receiver: Epoch,
        /// The bundle's.
        bundle: Epoch,
    },
    /// No batch continues what the receiver holds.
    #[error("collection {collection}: no batch of the bundle continues the receiver (head {head}, log checksum {checksum:016x}); tried {tried} batch(es) back to seq {lowest_start}: the receiver holds a different history (restore into an empty store)")]
    NoMatchingBatch {
        /// The collection.
        collection: String,
        /// The receiver's head.
        head: Seq,
        /// Its log checksum there.
        checksum: u64,
        /// Batches compared.
        tried: usize,
        /// The start of the earliest batch compared.
        lowest_start: Seq,
    },
    /// The receiver is empty and the bundle starts after seq 1 without a
    /// state batch.
    #[error("collection {collection}: the bundle starts at seq {start} and has no state batch, so it cannot fill an empty receiver; export with the state batch or from seq 0")]
    NeedsBase {
        /// The collection.
        collection: String,
        /// The first batch's start.
        start: Seq,
    },
    /// After an import, the receiver's state digest is not the bundle's.
    #[error("collection {collection}: after the import the state digest is {found}, the bundle says {expected}; the receiver's documents differ (inspect with `seqsync verify`)")]
    StateDigest {
        /// The collection.
        collection: String,
        /// From the last batch.
        expected: String,
        /// Computed on the receiver.
        found: String,
    },
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A collection name is invalid.
    #[error(transparent)]
    InvalidName(#[from] crate::error::InvalidName),
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a batch holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchKind {
    /// The changes of the log with seq in `[start, end]`, as stored.
    Changes,
    /// Every document's state at `end` (a snapshot at its last seq, or its
    /// tombstone), for a receiver with nothing.
    State,
}

/// A batch file's header (JSON, after the magic and its length).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchHeader {
    /// [`BUNDLE_FORMAT_VERSION`].
    pub format_version: u32,
    /// Changes or state.
    pub kind: BatchKind,
    /// The collection.
    pub collection: String,
    /// Its epoch (32 hex digits).
    pub epoch: String,
    /// Its schema version when exported.
    pub schema_version: u32,
    /// First seq covered.
    pub start: Seq,
    /// Last seq covered (the seq of the batch's last change).
    pub end: Seq,
    /// Records in the body.
    pub changes: u64,
    /// The log checksum at `start − 1` (16 hex digits).
    pub checksum_before: String,
    /// The log checksum at `end`.
    pub checksum_at_end: String,
    /// The collection's state digest at `end` (16 hex digits), `null` while
    /// a document held pending structures.
    pub state_digest_at_end: Option<String>,
    /// Length of the body in bytes.
    pub body_bytes: u64,
    /// BLAKE3 of the body (64 hex digits).
    pub body_blake3: String,
}

/// One batch as listed in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestBatch {
    /// File name inside the bundle directory.
    pub file: String,
    /// Changes or state.
    pub kind: BatchKind,
    /// First seq covered.
    pub start: Seq,
    /// Last seq covered.
    pub end: Seq,
    /// Records.
    pub changes: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// BLAKE3 of the batch's header bytes (64 hex digits): the manifest
    /// vouches for each header as each header vouches for its body.
    pub header_blake3: String,
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always `"seqsync-bundle"`.
    pub format: String,
    /// [`BUNDLE_FORMAT_VERSION`].
    pub format_version: u32,
    /// The collection.
    pub collection: String,
    /// Its epoch (32 hex digits).
    pub epoch: String,
    /// Its schema version when exported.
    pub schema_version: u32,
    /// The export covers seqs after this.
    pub after: Seq,
    /// ... up to this head.
    pub until: Seq,
    /// Changes batches, sorted by `start`, contiguous: each starts at the
    /// previous one's `end + 1`.
    pub batches: Vec<ManifestBatch>,
    /// The state batch, if exported.
    pub state: Option<ManifestBatch>,
}

impl Manifest {
    /// The epoch, parsed.
    pub fn epoch(&self) -> Option<Epoch> {
        Epoch::parse_hex(&self.epoch)
    }
}

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

/// Progress of a long operation: `done` of `total` units (changes for
/// export/import/verify).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BundleProgress {
    /// Done so far.
    pub done: u64,
    /// Expected in all (0 if unknown).
    pub total: u64,
    /// Bytes so far.
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

/// The log checksum at seq `at` in storage: the stored value of the last
/// change with seq ≤ `at` (0 for `at = 0`).
fn checksum_at(storage: &dyn Storage, name: &CollectionName, at: Seq) -> Result<u64, BundleError> {
    if at == 0 {
        return Ok(0);
    }
    // The change at `at` is stored unless compaction removed it; then the
    // last one before it carries the value.
    if let Some(page) = storage.read_changes(name, at - 1, 1)? {
        if let Some(change) = page.changes.first().filter(|c| c.seq == at) {
            return Ok(change.log_checksum);
        }
    }
    let mut last = 0u64;
    let mut cursor = 0;
    while let Some(page) = storage.read_changes(name, cursor, EXPORT_PAGE)? {
        let mut done = page.changes.is_empty();
        for change in &page.changes {
            if change.seq > at {
                done = true;
                break;
            }
            last = change.log_checksum;
            cursor = change.seq;
        }
        if done {
            break;
        }
    }
    Ok(last)
}

/// Per-document terms of the state digest as of some seq.
struct StateTerms {
    terms: HashMap<DocId, Option<u64>>,
    /// Documents kept in memory between batches, so a document touched by
    /// every batch is not reloaded from storage each time (at most
    /// `MAX_EXPORT_CACHED_DOCS`; beyond that the cache starts over).
    docs: HashMap<DocId, crate::yjs::DocState>,
}

/// Documents an export keeps loaded between batches.
const MAX_EXPORT_CACHED_DOCS: usize = 64;

impl StateTerms {
    fn at(storage: &dyn Storage, name: &CollectionName, seq: Seq) -> Result<Self, BundleError> {
        let mut out = Self {
            terms: HashMap::new(),
            docs: HashMap::new(),
        };
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
            if !self.docs.contains_key(&doc) {
                if self.docs.len() >= MAX_EXPORT_CACHED_DOCS {
                    self.docs.clear();
                }
                let loaded = load_document_through(storage, name, &doc, end)?;
                match loaded {
                    Some(loaded) => {
                        self.docs.insert(doc.clone(), loaded.state);
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
    let mut terms = StateTerms {
        terms: HashMap::new(),
        docs: HashMap::new(),
    };
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

fn hex16(value: u64) -> String {
    format!("{value:016x}")
}

fn parse_hex16(file: &Path, field: &str, text: &str) -> Result<u64, BundleError> {
    u64::from_str_radix(text, 16)
        .ok()
        .filter(|_| text.len() == 16)
        .ok_or_else(|| BundleError::Malformed {
            file: file.to_owned(),
            detail: format!("{field} {text:?} is not 16 hex digits"),
        })
}

fn record_len(change: &Change) -> usize {
    8 + 1
        + 4
        + 8
        + 2
        + change.doc.as_str().len()
        + 2
        + change.origin.as_ref().map_or(0, |o| o.as_str().len())
        + 4
        + change.payload.len()
}

/// `seq u64 | kind u8 | schema_version u32 | log_checksum u64 | doc_len u16 |
/// doc | origin_len u16 (0xFFFF: none) | origin | payload_len u32 | payload`,
/// little-endian.
fn encode_record(change: &Change, out: &mut Vec<u8>) {
    out.extend_from_slice(&change.seq.to_le_bytes());
    out.push(change.kind.code());
    out.extend_from_slice(&change.schema_version.to_le_bytes());
    out.extend_from_slice(&change.log_checksum.to_le_bytes());
    let doc = change.doc.as_str().as_bytes();
    out.extend_from_slice(&(doc.len() as u16).to_le_bytes());
    out.extend_from_slice(doc);
    match &change.origin {
        Some(origin) => {
            out.extend_from_slice(&(origin.as_str().len() as u16).to_le_bytes());
            out.extend_from_slice(origin.as_str().as_bytes());
        }
        None => out.extend_from_slice(&u16::MAX.to_le_bytes()),
    }
    out.extend_from_slice(&(change.payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&change.payload);
}

/// Writes a batch file; returns its size and the BLAKE3 of its header.
fn write_batch(
    path: &Path,
    mut header: BatchHeader,
    changes: &[Change],
) -> Result<(u64, String), BundleError> {
    let mut body = Vec::with_capacity(changes.iter().map(record_len).sum());
    for change in changes {
        encode_record(change, &mut body);
    }
    header.body_bytes = body.len() as u64;
    header.body_blake3 = blake3::hash(&body).to_hex().to_string();
    let header = serde_json::to_vec(&header).map_err(|e| BundleError::Malformed {
        file: path.to_owned(),
        detail: e.to_string(),
    })?;
    let mut file = Vec::with_capacity(8 + 4 + header.len() + body.len());
    file.extend_from_slice(BATCH_MAGIC);
    file.extend_from_slice(&(header.len() as u32).to_le_bytes());
    file.extend_from_slice(&header);
    file.extend_from_slice(&body);
    write_durably(path, &file)?;
    Ok((
        file.len() as u64,
        blake3::hash(&header).to_hex().to_string(),
    ))
}

/// Writes `bytes` to a temporary file, syncs it, renames it to `path` and
/// syncs the directory: a reader never sees half a file.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    let temp = path.with_extension("partial");
    {
        let mut file = fs::File::create(&temp).map_err(io_error(&temp))?;
        file.write_all(bytes).map_err(io_error(&temp))?;
        file.sync_all().map_err(io_error(&temp))?;
    }
    fs::rename(&temp, path).map_err(io_error(path))?;
    if let Some(parent) = path.parent() {
        if let Ok(dir) = fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// Reads `dir/file` as JSON; a missing file is `NoManifest` (the file is
/// written last, so its absence means "not a bundle, or unfinished").
fn read_json<T: serde::de::DeserializeOwned>(
    dir: &Path,
    file: &str,
) -> Result<(T, PathBuf), BundleError> {
    let path = dir.join(file);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BundleError::NoManifest {
                dir: dir.to_owned(),
            })
        }
        Err(e) => return Err(io_error(&path)(e)),
    };
    let value = serde_json::from_slice(&bytes).map_err(|e| BundleError::Malformed {
        file: path.clone(),
        detail: e.to_string(),
    })?;
    Ok((value, path))
}

/// Reads and checks `manifest.json` of a bundle directory.
///
/// Errors: `NoManifest`, `Io`, `Malformed`, `FormatVersion`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, BundleError> {
    let (manifest, path): (Manifest, PathBuf) = read_json(dir, MANIFEST_FILE)?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(BundleError::Malformed {
            file: path,
            detail: format!("format {:?} is not {MANIFEST_FORMAT:?}", manifest.format),
        });
    }
    if manifest.format_version != BUNDLE_FORMAT_VERSION {
        return Err(BundleError::FormatVersion {
            file: path,
            found: manifest.format_version,
            supported: BUNDLE_FORMAT_VERSION,
        });
    }
    if manifest.epoch().is_none() || CollectionName::new(manifest.collection.clone()).is_err() {
        return Err(BundleError::Malformed {
            file: path,
            detail: "the epoch or the collection name is invalid".to_owned(),
        });
    }
    let mut next = manifest.after + 1;
    for batch in &manifest.batches {
        if batch.start != next || batch.end < batch.start || batch.kind != BatchKind::Changes {
            return Err(BundleError::Malformed {
                file: path,
                detail: format!(
                    "batch {} covers [{}, {}] where seq {next} was next",
                    batch.file, batch.start, batch.end
                ),
            });
        }
        next = batch.end + 1;
    }
    Ok(manifest)
}

/// A batch read back and checked on its own: magic, format version, header,
/// body hash, and every record decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Its header.
    pub header: BatchHeader,
    /// BLAKE3 of the header bytes as read.
    pub header_blake3: String,
    /// Its changes, in seq order.
    pub changes: Vec<Change>,
}

/// Reads one batch file and checks it against its own header (magic,
/// version, body hash, record count, seqs inside `[start, end]` and
/// increasing, the last one at `end`).
///
/// Errors: `Io`, `Malformed`, `FormatVersion`, `BodyHash`.
pub fn read_batch(path: &Path) -> Result<Batch, BundleError> {
    let bytes = fs::read(path).map_err(io_error(path))?;
    let malformed = |detail: String| BundleError::Malformed {
        file: path.to_owned(),
        detail,
    };
    if bytes.len() < 12 || &bytes[..8] != BATCH_MAGIC {
        return Err(malformed("not a seqsync batch file (bad magic)".to_owned()));
    }
    let header_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if header_len > MAX_HEADER_BYTES || 12 + header_len as usize > bytes.len() {
        return Err(malformed(format!(
            "header of {header_len} bytes does not fit the file (truncated?)"
        )));
    }
    let header_bytes = &bytes[12..12 + header_len as usize];
    // The version first, so a newer format is named as such, not as junk.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(header_bytes) {
        if let Some(found) = value.get("format_version").and_then(|v| v.as_u64()) {
            if found != u64::from(BUNDLE_FORMAT_VERSION) {
                return Err(BundleError::FormatVersion {
                    file: path.to_owned(),
                    found: u32::try_from(found).unwrap_or(u32::MAX),
                    supported: BUNDLE_FORMAT_VERSION,
                });
            }
        }
    }
    let header: BatchHeader =
        serde_json::from_slice(header_bytes).map_err(|e| malformed(format!("header: {e}")))?;
    let body = &bytes[12 + header_len as usize..];
    if header.body_bytes > MAX_BODY_BYTES || body.len() as u64 != header.body_bytes {
        return Err(malformed(format!(
            "body of {} bytes, the header says {} (truncated?)",
            body.len(),
            header.body_bytes
        )));
    }
    let found = blake3::hash(body).to_hex().to_string();
    if found != header.body_blake3 {
        return Err(BundleError::BodyHash {
            file: path.to_owned(),
            expected: header.body_blake3.clone(),
            found,
        });
    }
    let changes = decode_records(path, body)?;
    if changes.len() as u64 != header.changes {
        return Err(malformed(format!(
            "{} records, the header says {}",
            changes.len(),
            header.changes
        )));
    }
    let mut previous = header.start.saturating_sub(1);
    for change in &changes {
        if change.seq <= previous || change.seq > header.end {
            return Err(malformed(format!(
                "record at seq {} outside ({previous}, {}]",
                change.seq, header.end
            )));
        }
        previous = change.seq;
    }
    if header.kind == BatchKind::Changes && changes.last().map(|c| c.seq) != Some(header.end) {
        return Err(malformed(format!(
            "the last record is not at the end seq {}",
            header.end
        )));
    }
    Ok(Batch {
        header,
        header_blake3: blake3::hash(header_bytes).to_hex().to_string(),
        changes,
    })
}

fn decode_records(path: &Path, mut body: &[u8]) -> Result<Vec<Change>, BundleError> {
    let malformed = |detail: &str| BundleError::Malformed {
        file: path.to_owned(),
        detail: format!("body: {detail}"),
    };
    fn take<'a>(body: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if body.len() < n {
            return None;
        }
        let (head, tail) = body.split_at(n);
        *body = tail;
        Some(head)
    }
    let mut out = Vec::new();
    while !body.is_empty() {
        let truncated = || malformed("a record is truncated");
        let seq = u64::from_le_bytes(
            take(&mut body, 8)
                .ok_or_else(truncated)?
                .try_into()
                .map_err(|_| truncated())?,
        );
        let kind_code = take(&mut body, 1).ok_or_else(truncated)?[0];
        let kind =
            ChangeKind::from_code(kind_code).ok_or_else(|| malformed("unknown change kind"))?;
        let schema_version = u32::from_le_bytes(
            take(&mut body, 4)
                .ok_or_else(truncated)?
                .try_into()
                .map_err(|_| truncated())?,
        );
        let log_checksum = u64::from_le_bytes(
            take(&mut body, 8)
                .ok_or_else(truncated)?
                .try_into()
                .map_err(|_| truncated())?,
        );
        let doc_len = u16::from_le_bytes(
            take(&mut body, 2)
                .ok_or_else(truncated)?
                .try_into()
                .map_err(|_| truncated())?,
        );
        let doc = std::str::from_utf8(take(&mut body, usize::from(doc_len)).ok_or_else(truncated)?)
            .map_err(|_| malformed("a document id is not UTF-8"))?;
        let doc = DocId::new(doc).map_err(|e| malformed(&e.to_string()))?;
        let origin_len = u16::from_le_bytes(
            take(&mut body, 2)
                .ok_or_else(truncated)?
                .try_into()
                .map_err(|_| truncated())?,
        );
        let origin = if origin_len == u16::MAX {
            None
        } else {
            let text = std::str::from_utf8(
                take(&mut body, usize::from(origin_len)).ok_or_else(truncated)?,
            )
            .map_err(|_| malformed("an origin is not UTF-8"))?;
            Some(PeerId::new(text).map_err(|e| malformed(&e.to_string()))?)
        };
        let payload_len = u32::from_le_bytes(
            take(&mut body, 4)
                .ok_or_else(truncated)?
                .try_into()
                .map_err(|_| truncated())?,
        );
        let payload = take(&mut body, payload_len as usize)
            .ok_or_else(truncated)?
            .to_vec();
        out.push(Change {
            seq,
            doc,
            kind,
            payload,
            schema_version,
            origin,
            log_checksum,
        });
    }
    Ok(out)
}

/// Checks a batch against its manifest entry and its own checksums: the
/// collection and epoch, the checksum chain inside it (each change that
/// directly follows the previous seq must add its own checksum; a snapshot
/// or a gap carries what compaction summed, taken as stored), and the
/// checksum at its end.
fn check_batch(
    path: &Path,
    batch: &Batch,
    manifest: &Manifest,
    entry: &ManifestBatch,
    epoch: &Epoch,
) -> Result<(), BundleError> {
    let header = &batch.header;
    if batch.header_blake3 != entry.header_blake3 {
        return Err(BundleError::Inconsistent {
            file: path.to_owned(),
            detail: format!(
                "the header's BLAKE3 is {}, the manifest says {}; the file was changed (restore it from another copy, or export again)",
                batch.header_blake3, entry.header_blake3
            ),
        });
    }
    if (
        header.start,
        header.end,
        header.kind,
        header.changes,
        header.schema_version,
    ) != (
        entry.start,
        entry.end,
        entry.kind,
        entry.changes,
        manifest.schema_version,
    ) {
        return Err(BundleError::Inconsistent {
            file: path.to_owned(),
            detail:
                "the batch's span, kind, count or schema version is not what the manifest lists"
                    .to_owned(),
        });
    }
    if header.collection != manifest.collection || header.epoch != manifest.epoch {
        return Err(BundleError::Inconsistent {
            file: path.to_owned(),
            detail: format!(
                "the batch is of collection {} epoch {}, the manifest of {} epoch {}; the bundle mixes exports (export again)",
                header.collection, header.epoch, manifest.collection, manifest.epoch
            ),
        });
    }
    let before = parse_hex16(path, "checksum_before", &header.checksum_before)?;
    let mut chain = LogChain::after(header.start.saturating_sub(1), before);
    for change in &batch.changes {
        if header.kind == BatchKind::Changes {
            chain
                .check(epoch, change)
                .map_err(|b| BundleError::Checksum {
                    file: path.to_owned(),
                    seq: b.seq,
                    expected: b.expected,
                    found: b.found,
                })?;
        } else {
            // A state batch's snapshots carry the checksums they were
            // taken at: nothing to recompute.
            chain = LogChain::after(change.seq, change.log_checksum);
        }
    }
    let running = chain.checksum();
    let at_end = parse_hex16(path, "checksum_at_end", &header.checksum_at_end)?;
    if running != at_end {
        return Err(BundleError::Checksum {
            file: path.to_owned(),
            seq: header.end,
            expected: at_end,
            found: running,
        });
    }
    Ok(())
}

/// What `verify_bundle` checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Batches checked (the state batch included).
    pub batches: usize,
    /// Records checked.
    pub changes: u64,
    /// Bytes read.
    pub bytes: u64,
}

/// Reads every batch of a bundle and checks each one: its body hash, its
/// checksum chain, that each continues the previous one's checksum, and
/// that the manifest agrees with it. Stops at the first mismatch, named.
///
/// Blocking; memory: one batch at a time.
pub fn verify_bundle(
    dir: &Path,
    progress: &mut dyn FnMut(BundleProgress),
) -> Result<VerifyReport, BundleError> {
    let manifest = read_manifest(dir)?;
    let epoch = manifest.epoch().ok_or_else(|| BundleError::Malformed {
        file: dir.join(MANIFEST_FILE),
        detail: "invalid epoch".to_owned(),
    })?;
    let total: u64 = manifest.batches.iter().map(|b| b.changes).sum();
    let mut report = VerifyReport {
        batches: 0,
        changes: 0,
        bytes: 0,
    };
    let mut before: Option<String> = None;
    for entry in manifest.batches.iter().chain(manifest.state.iter()) {
        let path = dir.join(&entry.file);
        let batch = read_batch(&path)?;
        check_batch(&path, &batch, &manifest, entry, &epoch)?;
        let header = &batch.header;
        if (header.start, header.end, header.kind) != (entry.start, entry.end, entry.kind) {
            return Err(BundleError::Inconsistent {
                file: path,
                detail: "the batch's span or kind is not what the manifest lists".to_owned(),
            });
        }
        if entry.kind == BatchKind::Changes {
            if let Some(before) = &before {
                if &header.checksum_before != before {
                    return Err(BundleError::Inconsistent {
                        file: path,
                        detail: format!(
                            "checksum_before {} is not the previous batch's checksum_at_end {before}",
                            header.checksum_before
                        ),
                    });
                }
            }
            before = Some(header.checksum_at_end.clone());
            report.changes += header.changes;
        }
        report.batches += 1;
        report.bytes += entry.bytes;
        progress(BundleProgress {
            done: report.changes,
            total,
            bytes: report.bytes,
        });
    }
    Ok(report)
}

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
    let total: u64 = manifest.batches.iter().map(|b| b.changes).sum();
    let mut report = ImportReport {
        collection: manifest.collection.clone(),
        batches_applied: 0,
        batches_skipped: 0,
        changes: 0,
        batches_compared: 0,
        used_state_batch: false,
        head: 0,
        epoch: bundle_epoch,
        state_digest_checked: false,
    };
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
    let mut head = stored.as_ref().map_or(0, |m| m.head);
    let mut epoch = match (&stored, rebased) {
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
    report.epoch = epoch;
    // Where to start: the batch whose span holds the receiver's next seq,
    // or an earlier one that matches.
    let mut first = manifest
        .batches
        .iter()
        .position(|b| b.end > head)
        .unwrap_or(manifest.batches.len());
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
        check_batch(&path, &batch, &manifest, state, &bundle_epoch)?;
        apply(
            storage,
            &name,
            None,
            epoch,
            bundle_epoch,
            manifest.schema_version,
            &batch,
            rebased,
        )?;
        head = batch.header.end;
        report.used_state_batch = true;
        report.batches_applied += 1;
        report.changes += batch.changes.len() as u64;
        first = manifest
            .batches
            .iter()
            .position(|b| b.end > head)
            .unwrap_or(manifest.batches.len());
    } else if let Some(meta) = &stored {
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
                check_batch(&path, &batch, &manifest, entry, &bundle_epoch)?;
                known.extend(
                    batch
                        .changes
                        .iter()
                        .filter(|c| c.seq <= head)
                        .map(|c| (c.seq, c.log_checksum)),
                );
                let before = parse_hex16(&path, "checksum_before", &batch.header.checksum_before)?;
                if receiver_matches(storage, &name, head, batch.header.start - 1, before, &known)? {
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
            let marker = restore_marker(&bundle_epoch);
            if !storage.peers(&name)?.iter().any(|p| p.peer == marker) {
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
                let at_end = parse_hex16(&path, "checksum_at_end", &batch.header.checksum_at_end)?;
                if checksum_at(storage, &name, last.end)? != at_end {
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
    let mut exists = stored.is_some() || report.used_state_batch;
    let mut last_header: Option<BatchHeader> = None;
    for entry in &manifest.batches[first..] {
        let path = dir.join(&entry.file);
        let batch = read_batch(&path)?;
        check_batch(&path, &batch, &manifest, entry, &bundle_epoch)?;
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
                storage,
                &name,
                base,
                epoch,
                bundle_epoch,
                manifest.schema_version,
                &partial,
                rebased,
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
    if let Some(meta) = storage.collection(&name)? {
        head = meta.head;
        epoch = meta.epoch;
    }
    report.head = head;
    report.epoch = epoch;
    // The end state must be the bundle's: once the receiver is at the
    // bundle's head, its state digest must be the last batch's.
    if head == manifest.until {
        let last = manifest.batches.last().or(manifest.state.as_ref());
        let expected = match (last_header, last) {
            (Some(header), _) if header.end == manifest.until => header.state_digest_at_end,
            (_, Some(entry)) => {
                read_batch(&dir.join(&entry.file))?
                    .header
                    .state_digest_at_end
            }
            _ => None,
        };
        if let Some(expected) = expected {
            let mut cache = crate::digest::DigestCache::default();
            let found = crate::digest::collection_digest(storage, &name, &mut cache)?
                .and_then(|d| d.state_digest)
                .map(hex16);
            if found.as_deref() != Some(expected.as_str()) {
                return Err(BundleError::StateDigest {
                    collection: name.to_string(),
                    expected,
                    found: found.unwrap_or_else(|| "none".to_owned()),
                });
            }
            report.state_digest_checked = true;
        }
    }
    Ok(report)
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

/// Name of the file listing a backup's collections.
pub const BACKUP_FILE: &str = "backup.json";

/// `backup.json`: the collections of a backup, each a bundle directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupIndex {
    /// Always `"seqsync-backup"`.
    pub format: String,
    /// [`BUNDLE_FORMAT_VERSION`].
    pub format_version: u32,
    /// Milliseconds since the Unix epoch when the backup began.
    pub started_ms: u64,
    /// Per collection: its name, the directory (relative), and its head.
    pub collections: Vec<BackupEntry>,
}

/// One collection of a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupEntry {
    /// The collection.
    pub collection: String,
    /// Its bundle directory, relative to the backup's.
    pub dir: String,
    /// The head it was exported at.
    pub head: Seq,
}

/// The directory name of a collection inside a backup: its name with
/// anything outside `[A-Za-z0-9._-]` hex-escaped, so every name maps to one
/// safe file name.
pub fn backup_dir_name(collection: &CollectionName) -> String {
    let mut out = String::new();
    for byte in collection.as_str().bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-'
                if !(out.is_empty() && byte == b'.') =>
            {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("_{byte:02x}")),
        }
    }
    out
}

/// Exports every collection of `storage` into `dir` (see `Engine::backup`),
/// then writes `backup.json`. Each collection is consistent as of its head
/// when its export starts; every push acknowledged before the backup began
/// is in it. Blocking.
pub fn backup_store(
    storage: &dyn Storage,
    dir: &Path,
    options: ExportOptions,
    progress: &mut dyn FnMut(BundleProgress),
) -> Result<Vec<ExportReport>, BundleError> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let index_path = dir.join(BACKUP_FILE);
    if index_path.exists() {
        return Err(BundleError::Inconsistent {
            file: index_path,
            detail: "the directory holds a backup already; back up into an empty directory"
                .to_owned(),
        });
    }
    let started_ms = crate::change::now_ms();
    let mut reports = Vec::new();
    let mut index = BackupIndex {
        format: "seqsync-backup".to_owned(),
        format_version: BUNDLE_FORMAT_VERSION,
        started_ms,
        collections: Vec::new(),
    };
    let mut after: Option<CollectionName> = None;
    loop {
        let page = storage.list_collections(after.as_ref(), 1000)?;
        let Some((last, _)) = page.last() else {
            break;
        };
        let next = last.clone();
        for (name, _) in &page {
            let sub = backup_dir_name(name);
            let report =
                export_collection(storage, name, 0, None, &dir.join(&sub), options, progress)?;
            index.collections.push(BackupEntry {
                collection: name.to_string(),
                dir: sub,
                head: report.manifest.until,
            });
            reports.push(report);
        }
        if page.len() < 1000 {
            break;
        }
        after = Some(next);
    }
    let json = serde_json::to_vec_pretty(&index).map_err(|e| BundleError::Malformed {
        file: index_path.clone(),
        detail: e.to_string(),
    })?;
    write_durably(&index_path, &json)?;
    Ok(reports)
}

/// Reads `backup.json` of a backup directory.
///
/// Errors: `NoManifest` (no `backup.json`: not a backup, or unfinished),
/// `Io`, `Malformed`, `FormatVersion`.
pub fn read_backup_index(dir: &Path) -> Result<BackupIndex, BundleError> {
    let (index, path): (BackupIndex, PathBuf) = read_json(dir, BACKUP_FILE)?;
    if index.format_version != BUNDLE_FORMAT_VERSION {
        return Err(BundleError::FormatVersion {
            file: path,
            found: index.format_version,
            supported: BUNDLE_FORMAT_VERSION,
        });
    }
    Ok(index)
}

/// Restores every collection of a backup into `storage` (see
/// [`import_bundle`] for the rules and `options` for the epoch). Resumable:
/// running it again continues where it stopped. Blocking.
pub fn restore_backup(
    storage: &dyn Storage,
    dir: &Path,
    options: ImportOptions,
    progress: &mut dyn FnMut(BundleProgress),
) -> Result<Vec<ImportReport>, BundleError> {
    let index = read_backup_index(dir)?;
    let mut reports = Vec::new();
    for entry in &index.collections {
        reports.push(import_bundle(
            storage,
            &dir.join(&entry.dir),
            options,
            progress,
        )?);
    }
    Ok(reports)
}
