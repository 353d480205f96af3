//! Backups and bundles on object storage: what `seqsync backup`, `restore`,
//! `export` and `import` do when given `s3://bucket/prefix` instead of a
//! directory.
//!
//! Why through a local staging directory: every check a bundle gets today
//! (`verify_bundle`, `import_bundle`'s per-batch checks and end-state
//! digest, the durable temp-and-rename writes) works on files, and reusing
//! it unchanged is what "verified as today" means. So a collection is
//! exported into a staging directory and its files uploaded one by one, or
//! downloaded one by one, verified, and imported from there. Staging holds
//! one collection's bundle at a time (it is removed once that collection is
//! uploaded or imported), and every transfer streams between disk and the
//! service in bounded pieces ([`crate::s3::PART_SIZE_BYTES`]), so memory
//! never holds a bundle.
//!
//! The other way, a "bundle location" trait in the engine that export and
//! import would write and read through, would stage nothing, but it would
//! put every file access of the bundle code behind a new abstraction for
//! one caller; staging keeps the engine as it is (no HTTP, no new trait)
//! at the cost of local disk for the largest collection's bundle.
//!
//! Why it resumes: on the service, every object carries its BLAKE3, so a
//! rerun skips the objects already there whole; the bundle's
//! `manifest.json` goes up after its batches and `backup.json` after every
//! bundle, so a prefix without them is unfinished and is refused. Locally,
//! the staging directory is named after the operation, the store and the
//! URL (under `seqsync --staging-dir`, else the system's temp directory), so
//! a rerun finds the files it downloaded (each renamed into place only
//! whole and checked) and the collections it finished, and `import` goes
//! on from the receiver's head as it always does.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use seqsync_engine::bundle::{
    self, backup_dir_name, BackupEntry, BackupIndex, BundleError, BundleProgress, ExportOptions,
    ImportOptions, ImportReport, Manifest, VerifyReport, BACKUP_FILE, BUNDLE_FORMAT_VERSION,
    MANIFEST_FILE,
};
use seqsync_engine::{CollectionName, Seq, Storage};

use crate::s3::{S3Client, S3Error, S3Url};

/// Largest `manifest.json` or `backup.json` read from the service (a
/// manifest entry is about 250 bytes: some 250,000 batches, 2.5 billion
/// changes at 10,000 a batch).
pub const MAX_INDEX_BYTES: u64 = 64 << 20;

/// Collections listed per page while backing up.
const COLLECTIONS_PAGE: usize = 1000;

/// Errors of a backup, restore, export or import on object storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The service, the URL, the credentials or an object.
    #[error(transparent)]
    S3(#[from] S3Error),
    /// Exporting from or importing into the store (the staged bundle is
    /// checked as a local one is).
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The prefix holds a finished backup or bundle already.
    #[error("{object} exists: the prefix holds a finished {what} already; write to a new prefix (or delete the old one)")]
    Exists {
        /// The object found.
        object: String,
        /// "backup" or "bundle".
        what: &'static str,
    },
}

impl From<seqsync_engine::StorageError> for RemoteError {
    fn from(err: seqsync_engine::StorageError) -> Self {
        Self::Bundle(err.into())
    }
}

/// Objects moved by one command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Transfer {
    /// Objects uploaded or downloaded by this run.
    pub objects_transferred: u64,
    /// Objects an earlier run had moved already (skipped).
    pub objects_skipped: u64,
    /// Bytes uploaded or downloaded by this run.
    pub bytes_transferred: u64,
}

/// One collection of a backup made to object storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteBackedUp {
    /// The collection.
    pub collection: String,
    /// The head it was exported at.
    pub head: Seq,
    /// Changes in its changes batches.
    pub changes: u64,
}

/// Where a command's objects go or come from, and where it stages them.
#[derive(Clone, Copy)]
pub struct Remote<'a> {
    /// The bucket's client.
    pub client: &'a S3Client,
    /// `s3://bucket/prefix`.
    pub url: &'a S3Url,
    /// The directory under which each operation stages its files (`seqsync
    /// --staging-dir`, default [`default_staging_base`]).
    pub staging: &'a Path,
}

/// `seqsync-staging` in the system's temp directory.
pub fn default_staging_base() -> PathBuf {
    std::env::temp_dir().join("seqsync-staging")
}

/// The staging directory of one operation under `base`: named after
/// `what` and the BLAKE3 of `identity` (store, URL, options), so a rerun of
/// the same command finds it and another command does not.
pub fn staging_dir(base: &Path, what: &str, identity: &str) -> PathBuf {
    let hash = blake3::hash(identity.as_bytes()).to_hex();
    base.join(format!("{what}-{}", &hash.as_str()[..16]))
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> RemoteError + '_ {
    move |source| {
        RemoteError::S3(S3Error::Io {
            path: path.to_owned(),
            source,
        })
    }
}

/// Whether a staged bundle is whole: its manifest reads and every file it
/// lists is there with the listed size (a stop can land mid-export, or
/// mid-removal).
fn staged_whole(dir: &Path) -> bool {
    bundle::read_manifest(dir).is_ok_and(|manifest| {
        manifest
            .batches
            .iter()
            .chain(manifest.state.iter())
            .all(|b| fs::metadata(dir.join(&b.file)).is_ok_and(|m| m.len() == b.bytes))
    })
}

/// Removes a directory and what it holds; a bundle's manifest goes first,
/// so a stop mid-removal leaves no manifest over missing files.
fn remove_dir(dir: &Path) -> Result<(), RemoteError> {
    let manifest = dir.join(MANIFEST_FILE);
    match fs::remove_file(&manifest) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_error(&manifest)(e)),
        _ => {}
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(dir)(e)),
        _ => Ok(()),
    }
}

/// Writes `bytes` to `path` through a temporary name (whole or not at all).
fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), RemoteError> {
    let temp = path.with_extension("partial");
    fs::write(&temp, bytes).map_err(io_error(&temp))?;
    fs::rename(&temp, path).map_err(io_error(path))
}

/// A bundle file name as listed in a manifest or index must be a plain
/// name: one that could climb out of the staging directory is damage.
fn plain_name(url: &S3Url, index: &str, name: &str) -> Result<(), RemoteError> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control);
    if plain {
        Ok(())
    } else {
        Err(S3Error::Damaged {
            object: url.display_key(index),
            detail: format!("it lists {name:?}, which is not a plain file name"),
        }
        .into())
    }
}

/// The file a bundle error is about, if it is about one.
fn bundle_error_file(err: &BundleError) -> Option<&Path> {
    match err {
        BundleError::Malformed { file, .. }
        | BundleError::FormatVersion { file, .. }
        | BundleError::BodyHash { file, .. }
        | BundleError::Checksum { file, .. }
        | BundleError::Inconsistent { file, .. } => Some(file),
        _ => None,
    }
}

/// A bundle error about a staged file, renamed after the object it came
/// from (an operator looks for the object, not for the staging copy).
fn name_object(err: BundleError, dir: &Path, url: &S3Url) -> RemoteError {
    let Some(file) = bundle_error_file(&err).map(Path::to_owned) else {
        return err.into();
    };
    let Ok(relative) = file.strip_prefix(dir) else {
        return err.into();
    };
    let relative = relative.to_string_lossy().into_owned();
    let text = err.to_string();
    let detail = text
        .strip_prefix(&format!("{}: ", file.display()))
        .unwrap_or(&text)
        .to_owned();
    S3Error::Damaged {
        object: url.display_key(&relative),
        detail,
    }
    .into()
}

/// Uploads a finished local bundle: every batch the manifest lists, then
/// the manifest, each skipped when the service holds it whole already.
fn upload_bundle(
    client: &S3Client,
    url: &S3Url,
    dir: &Path,
    transfer: &mut Transfer,
) -> Result<Manifest, RemoteError> {
    let manifest = bundle::read_manifest(dir)?;
    let files = manifest
        .batches
        .iter()
        .chain(manifest.state.iter())
        .map(|b| b.file.as_str())
        .chain(std::iter::once(MANIFEST_FILE));
    for file in files {
        let path = dir.join(file);
        if client.put_file(&url.key(file), &path)? {
            transfer.objects_transferred += 1;
            transfer.bytes_transferred += fs::metadata(&path).map_err(io_error(&path))?.len();
        } else {
            transfer.objects_skipped += 1;
        }
    }
    Ok(manifest)
}

/// Downloads a bundle into `dir` (manifest first, then each batch it
/// lists, skipping those a previous run downloaded whole), then verifies
/// it with `verify_bundle`, errors naming the object. `unfinished` says
/// what a missing manifest means here.
fn download_bundle(
    client: &S3Client,
    url: &S3Url,
    dir: &Path,
    transfer: &mut Transfer,
    unfinished: &str,
) -> Result<VerifyReport, RemoteError> {
    let bytes = client
        .get_bytes(&url.key(MANIFEST_FILE), MAX_INDEX_BYTES)?
        .ok_or_else(|| S3Error::Missing {
            object: url.display_key(MANIFEST_FILE),
            hint: unfinished.to_owned(),
        })?;
    let staged = dir.join(MANIFEST_FILE);
    if fs::read(&staged).ok().as_deref() != Some(bytes.as_slice()) {
        // Staged files of another bundle (or none): start afresh.
        remove_dir(dir)?;
    }
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    write_whole(&staged, &bytes)?;
    transfer.objects_transferred += 1;
    transfer.bytes_transferred += bytes.len() as u64;
    let manifest = bundle::read_manifest(dir).map_err(|e| name_object(e, dir, url))?;
    for entry in manifest.batches.iter().chain(manifest.state.iter()) {
        plain_name(url, MANIFEST_FILE, &entry.file)?;
        let path = dir.join(&entry.file);
        if fs::metadata(&path).is_ok_and(|m| m.len() == entry.bytes) {
            // Renamed into place only whole and checked by an earlier run.
            transfer.objects_skipped += 1;
            continue;
        }
        client.get_file(
            &url.key(&entry.file),
            &path,
            entry.bytes,
            "the bundle's manifest lists it: the bundle is incomplete (export or back up again)",
        )?;
        transfer.objects_transferred += 1;
        transfer.bytes_transferred += entry.bytes;
    }
    bundle::verify_bundle(dir, &mut |_| {}).map_err(|err| {
        // The damaged copy is of no use: a rerun downloads it again.
        if let Some(file) = bundle_error_file(&err).filter(|f| f.starts_with(dir)) {
            let _ = fs::remove_file(file);
        }
        name_object(err, dir, url)
    })
}

fn changes_of(manifest: &Manifest) -> u64 {
    manifest.batches.iter().map(|b| b.changes).sum()
}

/// `seqsync backup --out s3://…`: every collection of `storage` exported
/// (one at a time, into staging) and uploaded as `<prefix>/<dir>/…`, then
/// `<prefix>/backup.json` last.
///
/// Blocking. Resumable: a rerun after a stop (even SIGKILL) exports again
/// and skips every object already uploaded whole, so only what is missing
/// or changed is sent. Errors: [`RemoteError::Exists`] when the prefix
/// holds a finished backup; the bucket's, the service's and the export's.
pub fn backup_to_s3(
    storage: &dyn Storage,
    store: &str,
    remote: Remote<'_>,
    progress: &mut dyn FnMut(BundleProgress),
) -> Result<(Vec<RemoteBackedUp>, Transfer), RemoteError> {
    let Remote { client, url, .. } = remote;
    client.check_bucket()?;
    if client.head(&url.key(BACKUP_FILE))?.is_some() {
        return Err(RemoteError::Exists {
            object: url.display_key(BACKUP_FILE),
            what: "backup",
        });
    }
    let staging = staging_dir(remote.staging, "backup", &format!("{store}\n{url}"));
    let mut transfer = Transfer::default();
    let mut index = BackupIndex {
        format: "seqsync-backup".to_owned(),
        format_version: BUNDLE_FORMAT_VERSION,
        started_ms: seqsync_engine::now_ms(),
        collections: Vec::new(),
    };
    let mut done = Vec::new();
    let mut after: Option<CollectionName> = None;
    loop {
        let page = storage.list_collections(after.as_ref(), COLLECTIONS_PAGE)?;
        let Some((last, _)) = page.last() else {
            break;
        };
        let next = last.clone();
        for (name, _) in &page {
            let sub = backup_dir_name(name);
            let dir = staging.join(&sub);
            if dir.exists() && !staged_whole(&dir) {
                // An export (or a removal) a stop interrupted: write it again.
                remove_dir(&dir)?;
            }
            if !dir.exists() {
                bundle::export_collection(
                    storage,
                    name,
                    0,
                    None,
                    &dir,
                    ExportOptions::default(),
                    progress,
                )?;
            }
            let manifest = upload_bundle(client, &url.join(&sub), &dir, &mut transfer)?;
            index.collections.push(BackupEntry {
                collection: name.to_string(),
                dir: sub,
                head: manifest.until,
            });
            done.push(RemoteBackedUp {
                collection: name.to_string(),
                head: manifest.until,
                changes: changes_of(&manifest),
            });
            remove_dir(&dir)?;
        }
        if page.len() < COLLECTIONS_PAGE {
            break;
        }
        after = Some(next);
    }
    let json = serde_json::to_vec_pretty(&index).map_err(|e| BundleError::Malformed {
        file: PathBuf::from(url.display_key(BACKUP_FILE)),
        detail: e.to_string(),
    })?;
    client.put_bytes(&url.key(BACKUP_FILE), &json)?;
    transfer.objects_transferred += 1;
    transfer.bytes_transferred += json.len() as u64;
    remove_dir(&staging)?;
    Ok((done, transfer))
}

/// `seqsync restore --backup s3://…`: reads `<prefix>/backup.json`, then
/// per collection downloads its bundle into staging, verifies it and
/// imports it (see `import_bundle`), and removes the staged copy.
///
/// Blocking. Resumable: a rerun skips the collections it finished (the
/// receiver at the backup's head), keeps the files it downloaded whole, and
/// the import goes on from the receiver's head. Nothing is imported from a
/// bundle that does not verify. Errors: [`S3Error::Missing`] for a prefix
/// without `backup.json` (not a backup, or unfinished), or a bundle it lists
/// that is incomplete; [`S3Error::Damaged`] naming the object; the import's.
pub fn restore_from_s3(
    storage: &dyn Storage,
    store: &str,
    remote: Remote<'_>,
    options: ImportOptions,
    progress: &mut dyn FnMut(BundleProgress),
) -> Result<(Vec<ImportReport>, Transfer), RemoteError> {
    let Remote { client, url, .. } = remote;
    client.check_bucket()?;
    let mut transfer = Transfer::default();
    let bytes = client
        .get_bytes(&url.key(BACKUP_FILE), MAX_INDEX_BYTES)?
        .ok_or_else(|| S3Error::Missing {
            object: url.display_key(BACKUP_FILE),
            hint: "this prefix is not a backup, or its backup did not finish (run it again)"
                .to_owned(),
        })?;
    transfer.objects_transferred += 1;
    transfer.bytes_transferred += bytes.len() as u64;
    let staging = staging_dir(remote.staging, "restore", &format!("{store}\n{url}"));
    let staged_index = staging.join(BACKUP_FILE);
    if fs::read(&staged_index).ok().as_deref() != Some(bytes.as_slice()) {
        // Staged files of another backup (or none): start afresh.
        remove_dir(&staging)?;
    }
    fs::create_dir_all(&staging).map_err(io_error(&staging))?;
    write_whole(&staged_index, &bytes)?;
    let index = bundle::read_backup_index(&staging).map_err(|e| name_object(e, &staging, url))?;
    let mut reports = Vec::new();
    for entry in &index.collections {
        plain_name(url, BACKUP_FILE, &entry.dir)?;
        let marker = staging.join(format!("{}.done", entry.dir));
        let name = CollectionName::new(entry.collection.clone()).map_err(BundleError::from)?;
        let finished = marker.exists()
            && storage
                .collection(&name)?
                .is_some_and(|meta| meta.head == entry.head);
        if finished {
            // Restored by an earlier run, which checked its end state.
            transfer.objects_skipped += 1;
            continue;
        }
        let dir = staging.join(&entry.dir);
        download_bundle(
            client,
            &url.join(&entry.dir),
            &dir,
            &mut transfer,
            "backup.json lists this collection: the backup is incomplete (back up again)",
        )?;
        reports.push(bundle::import_bundle(storage, &dir, options, progress)?);
        write_whole(&marker, b"")?;
        remove_dir(&dir)?;
    }
    remove_dir(&staging)?;
    Ok((reports, transfer))
}

/// What [`export_to_s3`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteExport {
    /// The manifest uploaded.
    pub manifest: Manifest,
    /// Changes in its changes batches.
    pub changes: u64,
    /// Bytes of every file of the bundle.
    pub bytes: u64,
}

/// `seqsync export --out s3://…`: the collection exported into staging
/// (see `export_collection`), then uploaded, manifest last.
///
/// Blocking. Resumable: a rerun with the same arguments reuses the staged
/// bundle if its export had finished, and skips the objects uploaded whole.
/// Errors: [`RemoteError::Exists`] when the prefix holds a bundle already;
/// the service's and the export's.
#[allow(clippy::too_many_arguments)]
pub fn export_to_s3(
    storage: &dyn Storage,
    store: &str,
    name: &CollectionName,
    after: Seq,
    until: Option<Seq>,
    options: ExportOptions,
    remote: Remote<'_>,
    progress: &mut dyn FnMut(BundleProgress),
) -> Result<(RemoteExport, Transfer), RemoteError> {
    let Remote { client, url, .. } = remote;
    client.check_bucket()?;
    if client.head(&url.key(MANIFEST_FILE))?.is_some() {
        return Err(RemoteError::Exists {
            object: url.display_key(MANIFEST_FILE),
            what: "bundle",
        });
    }
    let staging = staging_dir(
        remote.staging,
        "export",
        &format!("{store}\n{url}\n{name}\n{after}\n{until:?}\n{options:?}"),
    );
    let dir = staging.join("bundle");
    if dir.exists() && !staged_whole(&dir) {
        remove_dir(&dir)?;
    }
    if !dir.exists() {
        bundle::export_collection(storage, name, after, until, &dir, options, progress)?;
    }
    let mut transfer = Transfer::default();
    let manifest = upload_bundle(client, url, &dir, &mut transfer)?;
    let manifest_bytes = fs::metadata(dir.join(MANIFEST_FILE))
        .map_err(io_error(&dir))?
        .len();
    let bytes = manifest
        .batches
        .iter()
        .chain(manifest.state.iter())
        .map(|b| b.bytes)
        .sum::<u64>()
        + manifest_bytes;
    remove_dir(&staging)?;
    Ok((
        RemoteExport {
            changes: changes_of(&manifest),
            manifest,
            bytes,
        },
        transfer,
    ))
}

/// `seqsync import --bundle s3://…`: the bundle downloaded into staging,
/// verified, and imported (see `import_bundle`).
///
/// Blocking. Resumable: a rerun keeps the files downloaded whole, and the
/// import goes on from the receiver's head. Nothing is imported from a
/// bundle that does not verify. Errors: [`S3Error::Missing`] for a prefix
/// without `manifest.json` (not a bundle, or unfinished) or a batch it
/// lists; [`S3Error::Damaged`] naming the object; the import's.
pub fn import_from_s3(
    storage: &dyn Storage,
    store: &str,
    remote: Remote<'_>,
    options: ImportOptions,
    progress: &mut dyn FnMut(BundleProgress),
) -> Result<(ImportReport, Transfer), RemoteError> {
    let Remote { client, url, .. } = remote;
    client.check_bucket()?;
    let staging = staging_dir(remote.staging, "import", &format!("{store}\n{url}"));
    let dir = staging.join("bundle");
    let mut transfer = Transfer::default();
    download_bundle(
        client,
        url,
        &dir,
        &mut transfer,
        "this prefix is not a bundle, or its export did not finish (export again)",
    )?;
    let report = bundle::import_bundle(storage, &dir, options, progress)?;
    remove_dir(&staging)?;
    Ok((report, transfer))
}

/// `seqsync verify --bundle s3://…`: the bundle downloaded into staging
/// and checked as `verify_bundle` checks a directory, then the staged copy
/// removed.
///
/// Blocking. Errors: [`S3Error::Missing`] for a prefix without
/// `manifest.json` or a batch it lists; [`S3Error::Damaged`] naming the
/// first object that does not verify.
pub fn verify_s3_bundle(remote: Remote<'_>) -> Result<(VerifyReport, Transfer), RemoteError> {
    let Remote { client, url, .. } = remote;
    client.check_bucket()?;
    let staging = staging_dir(remote.staging, "verify", &url.to_string());
    let mut transfer = Transfer::default();
    let report = download_bundle(
        client,
        url,
        &staging.join("bundle"),
        &mut transfer,
        "this prefix is not a bundle, or its export did not finish (export again)",
    )?;
    remove_dir(&staging)?;
    Ok((report, transfer))
}

#[cfg(test)]
mod tests {
    //! The local half of the transfers, with no service: what counts as a
    //! whole staged bundle, which names a manifest may list, and how an
    //! error about a staged file is renamed after its object.

    use super::*;

    /// A staged bundle of one 10-byte batch, as `read_manifest` accepts it.
    fn staged(dir: &Path) -> String {
        let file = "00000000000000000001-00000000000000000002.batch".to_owned();
        let manifest = serde_json::json!({
            "format": "seqsync-bundle", "format_version": BUNDLE_FORMAT_VERSION,
            "collection": "notes", "epoch": "00112233445566778899aabbccddeeff",
            "schema_version": 1, "after": 0, "until": 2,
            "batches": [{"file": file, "kind": "changes", "start": 1, "end": 2,
                         "changes": 2, "bytes": 10, "header_blake3": ""}],
            "state": null,
        });
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join(MANIFEST_FILE), manifest.to_string()).unwrap();
        fs::write(dir.join(&file), [0u8; 10]).unwrap();
        file
    }

    #[test]
    fn a_staged_bundle_is_whole_only_with_every_listed_file_at_its_size() {
        // A stop mid-export or mid-removal leaves a manifest over missing
        // or short files; uploading from it would fail or send a bad copy.
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("b");
        let file = staged(&bundle);
        assert!(staged_whole(&bundle));
        fs::write(bundle.join(&file), [0u8; 9]).unwrap();
        assert!(!staged_whole(&bundle), "short");
        fs::remove_file(bundle.join(&file)).unwrap();
        assert!(!staged_whole(&bundle), "missing");
        remove_dir(&bundle).unwrap();
        assert!(!bundle.exists());
        remove_dir(&bundle).unwrap();
    }

    #[test]
    fn a_listed_name_that_leaves_the_staging_directory_is_damage() {
        // A manifest or index from the service is untrusted input: a name
        // with a separator or `..` must not become a path outside staging.
        let url = S3Url::parse("s3://bucket/p").unwrap();
        plain_name(&url, MANIFEST_FILE, "00000000000000000001-x.batch").unwrap();
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", "x\n"] {
            match plain_name(&url, MANIFEST_FILE, bad) {
                Err(RemoteError::S3(S3Error::Damaged { object, .. })) => {
                    assert_eq!(object, "s3://bucket/p/manifest.json")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_error_about_a_staged_file_names_the_object() {
        // The operator looks for the object on the service, not for a
        // temporary copy that is gone once the command ends.
        let dir = Path::new("/staging/x");
        let url = S3Url::parse("s3://bucket/p").unwrap();
        let err = BundleError::BodyHash {
            file: dir.join("1-2.batch"),
            expected: "aa".to_owned(),
            found: "bb".to_owned(),
        };
        match name_object(err, dir, &url) {
            RemoteError::S3(S3Error::Damaged { object, detail }) => {
                assert_eq!(object, "s3://bucket/p/1-2.batch");
                assert!(detail.starts_with("the body's BLAKE3 is bb"), "{detail}");
                assert!(!detail.contains("/staging"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        let elsewhere = BundleError::ShuttingDown;
        assert!(matches!(
            name_object(elsewhere, dir, &url),
            RemoteError::Bundle(BundleError::ShuttingDown)
        ));
    }
}
