//! Verify: a bundle checked against itself, with no store.
//!
//! Each batch must match its manifest entry, chain onto the previous one by
//! log checksum, and hold changes whose checksums recompute. An import runs
//! the same `check_batch` on every batch before it writes anything, so a
//! bundle damaged after `verify` is still refused.

use std::path::Path;

use crate::change::Epoch;
use crate::digest::LogChain;

use super::format::{
    parse_hex16, read_batch, read_manifest, Batch, BatchKind, Manifest, ManifestBatch,
    MANIFEST_FILE,
};
use super::{BundleError, BundleProgress};

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

/// Checks a batch against its manifest entry and its own checksums: the
/// collection and epoch, the checksum chain inside it (each change that
/// directly follows the previous seq must add its own checksum; a snapshot
/// or a gap carries what compaction summed, taken as stored), and the
/// checksum at its end.
pub(super) fn check_batch(
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
