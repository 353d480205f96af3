//! The bundle's bytes: the manifest (JSON), each batch file (magic, a JSON
//! header, the records) and how they are written and read back.
//!
//! Everything here is about one file at a time and never touches a store,
//! so it can be tested byte by byte. A reader trusts nothing it reads:
//! lengths are checked against `MAX_HEADER_BYTES` / `MAX_BODY_BYTES` and
//! against the bytes left before anything is allocated, and every field a
//! record carries is validated as the engine would validate a push. A
//! writer writes to a temporary name, syncs and renames, so a file either
//! exists whole or not at all.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::change::{Change, ChangeKind, Epoch, Seq};
use crate::name::{CollectionName, DocId, PeerId};

use super::{io_error, BundleError};

/// The format version this code writes. It reads this one and
/// [`OLDEST_BUNDLE_FORMAT_VERSION`] onwards: version 2 added each change's
/// author and commit time to its record; a version-1 bundle's changes read
/// with neither (unknown).
pub const BUNDLE_FORMAT_VERSION: u32 = 2;
/// The oldest format version this code reads.
pub const OLDEST_BUNDLE_FORMAT_VERSION: u32 = 1;

/// Whether this code reads bundles (and backups) of `version`.
pub(super) fn readable_version(version: u32) -> bool {
    (OLDEST_BUNDLE_FORMAT_VERSION..=BUNDLE_FORMAT_VERSION).contains(&version)
}

/// First bytes of every batch file.
pub const BATCH_MAGIC: &[u8; 8] = b"SSBATCH1";

/// Name of the manifest file in a bundle directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The `format` field of every manifest.
pub(super) const MANIFEST_FORMAT: &str = "seqsync-bundle";

/// Longest header a reader accepts (a header is a few hundred bytes).
pub(super) const MAX_HEADER_BYTES: u32 = 64 * 1024;

/// Largest batch body a reader accepts.
pub(super) const MAX_BODY_BYTES: u64 = 1 << 32;

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

pub(super) fn hex16(value: u64) -> String {
    format!("{value:016x}")
}

pub(super) fn parse_hex16(file: &Path, field: &str, text: &str) -> Result<u64, BundleError> {
    u64::from_str_radix(text, 16)
        .ok()
        .filter(|_| text.len() == 16)
        .ok_or_else(|| BundleError::Malformed {
            file: file.to_owned(),
            detail: format!("{field} {text:?} is not 16 hex digits"),
        })
}

pub(super) fn record_len(change: &Change) -> usize {
    8 + 1
        + 4
        + 8
        + 2
        + change.doc.as_str().len()
        + 2
        + change.origin.as_ref().map_or(0, |o| o.as_str().len())
        + 8
        + 2
        + author_of(change).map_or(0, str::len)
        + 4
        + change.payload.len()
}

/// The author as a record holds it: one the engine accepted is at most 256
/// bytes; a longer one (a store written by other code) is left out rather
/// than cut.
fn author_of(change: &Change) -> Option<&str> {
    change
        .author
        .as_deref()
        .filter(|a| a.len() < usize::from(u16::MAX))
}

/// `seq u64 | kind u8 | schema_version u32 | log_checksum u64 | doc_len u16 |
/// doc | origin_len u16 (0xFFFF: none) | origin | committed_ms u64 |
/// author_len u16 (0xFFFF: none) | author | payload_len u32 | payload`,
/// little-endian (version 2; version 1 had neither `committed_ms` nor
/// `author`).
pub(super) fn encode_record(change: &Change, out: &mut Vec<u8>) {
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
    out.extend_from_slice(&change.committed_ms.to_le_bytes());
    match author_of(change) {
        Some(author) => {
            out.extend_from_slice(&(author.len() as u16).to_le_bytes());
            out.extend_from_slice(author.as_bytes());
        }
        None => out.extend_from_slice(&u16::MAX.to_le_bytes()),
    }
    out.extend_from_slice(&(change.payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&change.payload);
}

/// Writes a batch file; returns its size and the BLAKE3 of its header.
pub(super) fn write_batch(
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
pub(super) fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
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
pub(super) fn read_json<T: serde::de::DeserializeOwned>(
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
    if !readable_version(manifest.format_version) {
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
            if !u32::try_from(found).is_ok_and(readable_version) {
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
    let changes = decode_records(path, body, header.format_version)?;
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

/// The records of a batch body written at `format_version` (1 or 2).
pub(super) fn decode_records(
    path: &Path,
    mut body: &[u8],
    format_version: u32,
) -> Result<Vec<Change>, BundleError> {
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
        let (committed_ms, author) = if format_version >= 2 {
            let committed_ms = u64::from_le_bytes(
                take(&mut body, 8)
                    .ok_or_else(truncated)?
                    .try_into()
                    .map_err(|_| truncated())?,
            );
            let author_len = u16::from_le_bytes(
                take(&mut body, 2)
                    .ok_or_else(truncated)?
                    .try_into()
                    .map_err(|_| truncated())?,
            );
            let author = if author_len == u16::MAX {
                None
            } else {
                let text = std::str::from_utf8(
                    take(&mut body, usize::from(author_len)).ok_or_else(truncated)?,
                )
                .map_err(|_| malformed("an author is not UTF-8"))?;
                crate::name::check_author(text).map_err(|e| malformed(&e.to_string()))?;
                Some(text.to_owned())
            };
            (committed_ms, author)
        } else {
            (0, None)
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
            author,
            committed_ms,
            log_checksum,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! The format byte by byte, with no store: a reader must get back what
    //! a writer wrote, and refuse every damaged or foreign file with a typed
    //! error before it allocates or trusts anything.

    use super::*;

    fn change(seq: Seq, kind: ChangeKind, origin: Option<&str>, payload: &[u8]) -> Change {
        Change {
            seq,
            doc: DocId::new(format!("doc-{seq}")).unwrap(),
            kind,
            payload: payload.to_vec(),
            schema_version: 3,
            origin: origin.map(|o| PeerId::new(o).unwrap()),
            author: None,
            committed_ms: 0,
            log_checksum: 0x0123_4567_89ab_cdef ^ seq,
        }
    }

    fn sample() -> Vec<Change> {
        let mut authored = change(1, ChangeKind::Update, Some("peer-a"), &[1, 2, 3]);
        authored.author = Some("user-ann".to_owned());
        authored.committed_ms = 1_796_633_112_345;
        let mut deleted = change(2, ChangeKind::Delete, None, &[]);
        deleted.committed_ms = 1_796_633_118_002;
        vec![
            authored,
            deleted,
            change(4, ChangeKind::Snapshot, Some("peer-b"), &[9; 300]),
        ]
    }

    fn header(changes: &[Change]) -> BatchHeader {
        BatchHeader {
            format_version: BUNDLE_FORMAT_VERSION,
            kind: BatchKind::Changes,
            collection: "notes".to_owned(),
            epoch: "00112233445566778899aabbccddeeff".to_owned(),
            schema_version: 3,
            start: 1,
            end: changes.last().map_or(0, |c| c.seq),
            changes: changes.len() as u64,
            checksum_before: hex16(0),
            checksum_at_end: hex16(changes.last().map_or(0, |c| c.log_checksum)),
            state_digest_at_end: None,
            body_bytes: 0,
            body_blake3: String::new(),
        }
    }

    fn encoded(changes: &[Change]) -> Vec<u8> {
        let mut body = Vec::new();
        for change in changes {
            encode_record(change, &mut body);
        }
        body
    }

    #[test]
    fn records_round_trip_with_and_without_origin() {
        // Every field of a record, including the "no origin" marker and an
        // empty payload, must come back as written.
        let changes = sample();
        let body = encoded(&changes);
        assert_eq!(body.len(), changes.iter().map(record_len).sum::<usize>());
        let back = decode_records(Path::new("body"), &body, BUNDLE_FORMAT_VERSION).unwrap();
        assert_eq!(back, changes);
    }

    #[test]
    fn a_version_1_record_reads_without_author_or_time() {
        // Bundles written before version 2 stay readable: their records
        // have no author and no commit time, and read as unknown.
        let mut v1 = Vec::new();
        v1.extend_from_slice(&7u64.to_le_bytes());
        v1.push(ChangeKind::Update.code());
        v1.extend_from_slice(&3u32.to_le_bytes());
        v1.extend_from_slice(&42u64.to_le_bytes());
        v1.extend_from_slice(&1u16.to_le_bytes());
        v1.extend_from_slice(b"d");
        v1.extend_from_slice(&4u16.to_le_bytes());
        v1.extend_from_slice(b"tab1");
        v1.extend_from_slice(&2u32.to_le_bytes());
        v1.extend_from_slice(&[5, 6]);
        let back = decode_records(Path::new("body"), &v1, 1).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(
            (
                back[0].seq,
                back[0].log_checksum,
                back[0].payload.as_slice()
            ),
            (7, 42, &[5u8, 6][..])
        );
        assert_eq!(back[0].origin.as_ref().map(|p| p.as_str()), Some("tab1"));
        assert_eq!((back[0].author.as_deref(), back[0].committed_ms), (None, 0));
        // Read as version 2, the same bytes are refused, not misread.
        assert!(decode_records(Path::new("body"), &v1, 2).is_err());
    }

    #[test]
    fn a_record_cut_anywhere_is_refused_as_truncated() {
        // A batch cut short (a partial copy) must never decode as fewer
        // records: every prefix that ends inside a record is refused.
        let body = encoded(&sample()[..1]);
        for cut in 1..body.len() {
            match decode_records(Path::new("body"), &body[..cut], BUNDLE_FORMAT_VERSION) {
                Err(BundleError::Malformed { detail, .. }) => {
                    assert!(detail.contains("truncated"), "cut {cut}: {detail}")
                }
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_unknown_change_kind_is_refused() {
        // A kind this version does not know (from a newer writer, or
        // damage) must not be read as some other kind.
        let mut body = encoded(&sample()[..1]);
        body[8] = 0xee;
        assert!(matches!(
            decode_records(Path::new("body"), &body, BUNDLE_FORMAT_VERSION),
            Err(BundleError::Malformed { detail, .. }) if detail.contains("unknown change kind")
        ));
    }

    #[test]
    fn a_batch_file_reads_back_as_written() {
        // write_batch and read_batch are the two halves of one format; the
        // header hash write_batch reports is what the manifest records and
        // what read_batch computes.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("batch-1");
        let changes = sample();
        let (bytes, header_blake3) = write_batch(&path, header(&changes), &changes).unwrap();
        assert_eq!(bytes, fs::metadata(&path).unwrap().len());
        let batch = read_batch(&path).unwrap();
        assert_eq!(batch.changes, changes);
        assert_eq!(batch.header_blake3, header_blake3);
        assert_eq!(batch.header.body_bytes, encoded(&changes).len() as u64);
    }

    #[test]
    fn a_damaged_batch_file_is_refused_with_what_is_wrong() {
        // Each kind of damage has its own error, so an operator knows
        // whether to re-copy the file, upgrade seqsync or export again.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("batch-1");
        let changes = sample();
        write_batch(&path, header(&changes), &changes).unwrap();
        let good = fs::read(&path).unwrap();
        let header_len = u32::from_le_bytes(good[8..12].try_into().unwrap()) as usize;
        let damaged = dir.path().join("damaged");
        let read = |bytes: &[u8]| {
            fs::write(&damaged, bytes).unwrap();
            read_batch(&damaged)
        };

        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert!(
            matches!(read(&bad_magic), Err(BundleError::Malformed { detail, .. }) if detail.contains("magic"))
        );

        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(read(&flipped), Err(BundleError::BodyHash { .. })));

        assert!(matches!(
            read(&good[..good.len() - 1]),
            Err(BundleError::Malformed { detail, .. }) if detail.contains("truncated")
        ));

        let mut huge_header = good.clone();
        huge_header[8..12].copy_from_slice(&(MAX_HEADER_BYTES + 1).to_le_bytes());
        assert!(matches!(
            read(&huge_header),
            Err(BundleError::Malformed { .. })
        ));

        let text = std::str::from_utf8(&good[12..12 + header_len]).unwrap();
        let newer = text.replace(
            &format!("\"format_version\":{BUNDLE_FORMAT_VERSION}"),
            "\"format_version\":99",
        );
        assert_ne!(newer, text);
        let mut newer_file = good[..8].to_vec();
        newer_file.extend_from_slice(&(newer.len() as u32).to_le_bytes());
        newer_file.extend_from_slice(newer.as_bytes());
        newer_file.extend_from_slice(&good[12 + header_len..]);
        assert!(matches!(
            read(&newer_file),
            Err(BundleError::FormatVersion {
                found: 99,
                supported: BUNDLE_FORMAT_VERSION,
                ..
            })
        ));
    }

    #[test]
    fn records_outside_the_headers_span_are_refused() {
        // The header's span is what import trusts to chain batches; a body
        // whose records leave it must not pass as that span.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("batch-1");
        let changes = sample();
        let mut short = header(&changes);
        short.end = 2;
        write_batch(&path, short, &changes).unwrap();
        assert!(matches!(
            read_batch(&path),
            Err(BundleError::Malformed { detail, .. }) if detail.contains("outside")
        ));
    }

    #[test]
    fn hex16_fields_take_exactly_sixteen_hex_digits() {
        // Checksums travel as 16 hex digits; a shorter or longer field is
        // damage, not a smaller number.
        let file = Path::new("manifest.json");
        assert_eq!(parse_hex16(file, "f", &hex16(u64::MAX)).unwrap(), u64::MAX);
        assert_eq!(parse_hex16(file, "f", &hex16(7)).unwrap(), 7);
        for bad in ["7", "00000000000000007", "000000000000000g", ""] {
            assert!(parse_hex16(file, "f", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_manifest_must_list_contiguous_changes_batches() {
        // Import walks batches by their spans; a gap or overlap in the
        // manifest would make it skip or repeat seqs.
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_manifest(dir.path()),
            Err(BundleError::NoManifest { .. })
        ));
        let entry = |start, end| ManifestBatch {
            file: format!("batch-{start}"),
            kind: BatchKind::Changes,
            start,
            end,
            changes: end - start + 1,
            bytes: 1,
            header_blake3: String::new(),
        };
        let mut manifest = Manifest {
            format: MANIFEST_FORMAT.to_owned(),
            format_version: BUNDLE_FORMAT_VERSION,
            collection: "notes".to_owned(),
            epoch: "00112233445566778899aabbccddeeff".to_owned(),
            schema_version: 1,
            after: 0,
            until: 20,
            batches: vec![entry(1, 10), entry(11, 20)],
            state: None,
        };
        let write = |m: &Manifest| {
            fs::write(
                dir.path().join(MANIFEST_FILE),
                serde_json::to_vec(m).unwrap(),
            )
            .unwrap()
        };
        write(&manifest);
        assert_eq!(read_manifest(dir.path()).unwrap(), manifest);
        manifest.batches[1] = entry(12, 20);
        write(&manifest);
        assert!(matches!(
            read_manifest(dir.path()),
            Err(BundleError::Malformed { detail, .. }) if detail.contains("where seq 11 was next")
        ));
    }
}
