//! Backup and restore: every collection of a store as one bundle each, with
//! an index (`backup.json`) written last.
//!
//! A backup is a directory of bundles; restoring one imports each in turn,
//! so everything `import` guarantees (resumable, checked end state) holds
//! per collection.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::change::Seq;
use crate::name::CollectionName;
use crate::storage::Storage;

use super::export::{export_collection, ExportOptions, ExportReport};
use super::format::{read_json, readable_version, write_durably, BUNDLE_FORMAT_VERSION};
use super::import::{import_bundle, ImportOptions, ImportReport};
use super::{io_error, BundleError, BundleProgress};

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
    if !readable_version(index.format_version) {
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
