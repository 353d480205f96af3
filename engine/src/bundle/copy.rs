//! Copying a collection from one store to another (`seqsync
//! migrate-storage`): epochs, seqs, peers and checksums kept, so clients of
//! the old store keep their cursors on the new one.
//!
//! The copy goes through a bundle in a work directory rather than straight
//! from store to store: the bundle is written once and kept until the copy
//! is checked, so a copy stopped anywhere (even by SIGKILL) resumes where
//! the import stopped instead of starting over, and everything `import`
//! checks (batch checksums, the end state) is checked here too. At the end
//! both stores' digests (head, log checksum, state digest) must agree.

use std::fs;
use std::path::Path;

use crate::change::{Epoch, Seq};
use crate::digest::{collection_digest, DigestCache};
use crate::name::CollectionName;
use crate::storage::{CollectionWrite, Storage, WriteBase, WriteBatch};

use super::backup::backup_dir_name;
use super::export::{export_collection, ExportOptions};
use super::format::read_manifest;
use super::import::{import_bundle, ImportOptions};
use super::{io_error, BundleError, BundleProgress};

/// What [`copy_collection`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyReport {
    /// The collection.
    pub collection: String,
    /// Its head in both stores afterwards.
    pub head: Seq,
    /// Its epoch in both stores.
    pub epoch: Epoch,
    /// Changes written to the target by this run (0 when it held them).
    pub changes: u64,
    /// Peer records copied.
    pub peers: usize,
}

/// Copies collection `name` from `source` to `target` through a bundle in
/// `work/<backup_dir_name(name)>`, then its peers (each with the larger
/// ack of both sides), then compares the two stores' digests.
///
/// Resumable: a finished bundle in `work` is reused and the import goes on
/// from the target's head; an unfinished one (no manifest) is written
/// again. The caller removes `work` once every collection is copied.
/// Blocking. Errors: every [`BundleError`]; [`BundleError::CopyDiffers`]
/// when the digests disagree at the end (the source changed during the
/// copy, or the target holds other data).
pub fn copy_collection(
    source: &dyn Storage,
    target: &dyn Storage,
    name: &CollectionName,
    work: &Path,
    progress: &mut dyn FnMut(BundleProgress),
) -> Result<CopyReport, BundleError> {
    let dir = work.join(backup_dir_name(name));
    if dir.exists() && read_manifest(&dir).is_err() {
        // An export that did not finish: start it again.
        fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
    }
    if !dir.exists() {
        export_collection(
            source,
            name,
            0,
            None,
            &dir,
            ExportOptions::default(),
            progress,
        )?;
    }
    let imported = import_bundle(target, &dir, ImportOptions::default(), progress)?;
    // Peers: upserted with the max of both sides (the commit keeps the
    // larger ack), and only those the copied log covers.
    let peers: Vec<_> = source
        .peers(name)?
        .into_iter()
        .filter(|p| p.acked <= imported.head)
        .collect();
    let copied_peers = peers.len();
    if !peers.is_empty() {
        if let Some(stored) = target.collection(name)? {
            target.commit(&WriteBatch {
                writes: vec![CollectionWrite {
                    collection: name.clone(),
                    base: WriteBase::Existing {
                        epoch: stored.epoch,
                        head: stored.head,
                    },
                    append: Vec::new(),
                    compact: Vec::new(),
                    peers,
                    raise_schema_version: None,
                    append_mode: Default::default(),
                }],
            })?;
        }
    }
    let from = collection_digest(source, name, &mut DigestCache::default())?;
    let to = collection_digest(target, name, &mut DigestCache::default())?;
    let same = match (&from, &to) {
        (Some(a), Some(b)) => {
            a.head == b.head && a.log_checksum == b.log_checksum && a.state_digest == b.state_digest
        }
        _ => false,
    };
    if !same {
        return Err(BundleError::CopyDiffers {
            collection: name.to_string(),
            source_digest: format!("{from:?}"),
            target_digest: format!("{to:?}"),
        });
    }
    Ok(CopyReport {
        collection: name.to_string(),
        head: imported.head,
        epoch: imported.epoch,
        changes: imported.changes,
        peers: copied_peers,
    })
}
