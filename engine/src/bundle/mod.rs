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
//!
//! One file per concern: `format` (the files' bytes: manifest, batch
//! headers and records, read and written), `export` (a store's log as
//! batches), `verify` (a bundle checked against itself), `import` (batches
//! applied to a store, in three steps: choose the start batch, apply
//! batches, check the end), `backup` (every collection of a store, and
//! back) and `copy` (a collection from one store to another).

mod backup;
mod copy;
mod export;
mod format;
mod import;
mod verify;

pub use backup::{
    backup_dir_name, backup_store, read_backup_index, restore_backup, BackupEntry, BackupIndex,
    BACKUP_FILE,
};
pub use copy::{copy_collection, CopyReport};
pub use export::{export_collection, ExportOptions, ExportReport};
pub use format::{
    read_batch, read_manifest, Batch, BatchHeader, BatchKind, Manifest, ManifestBatch, BATCH_MAGIC,
    BUNDLE_FORMAT_VERSION, MANIFEST_FILE,
};
pub use import::{import_bundle, ImportEpoch, ImportOptions, ImportReport};
pub use verify::{verify_bundle, VerifyReport};

use std::path::{Path, PathBuf};

use crate::change::{Epoch, Seq};
use crate::error::StorageError;
use crate::name::CollectionName;
use crate::storage::Storage;

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
    /// After [`copy_collection`], the two stores' digests (head, log
    /// checksum, state digest) differ.
    #[error("collection {collection}: after the copy the digests differ ({source_digest} vs {target_digest}); the source changed during the copy, or the target holds other data; run again")]
    CopyDiffers {
        /// The collection.
        collection: String,
        /// The source's digest.
        source_digest: String,
        /// The target's digest.
        target_digest: String,
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

/// Changes read from storage per page while exporting.
const EXPORT_PAGE: usize = 1000;

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
