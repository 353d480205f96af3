//! Digests: how two replicas (or a backup and its source) tell whether they
//! hold the same thing, without comparing everything.
//!
//! Three values, each for a different question:
//! - **change checksum** and **log checksum** ("is this the same history?"):
//!   each change hashes to a u64 over (epoch, seq, doc, kind, schema version,
//!   payload), and a collection keeps the running sum modulo 2^64 through its
//!   head, PowerSync-style. An append adds one term, so keeping it costs O(1)
//!   per change in the same commit. Every stored change carries the running
//!   value through itself; a snapshot takes the value of the change whose seq
//!   it takes, so compaction changes no stored value and the checksum at
//!   every stored seq, and at the head, survives it.
//! - **document digest** ("is this the same document?"): BLAKE3 of the
//!   document's state vector sorted by client and its delete set sorted and
//!   merged, never of encoded update bytes (two encodings of one state
//!   differ, e.g. with and without GC, or before and after compaction). None
//!   while the document has pending structures (its state is not settled); a
//!   fixed value for a tombstoned document.
//! - **collection state digest** ("do we hold the same documents?"): the sum
//!   modulo 2^64 of a per-document term, BLAKE3 of (doc id, document
//!   digest). A sum lets the collection actor replace one document's term
//!   when it changes instead of rehashing everything; it does not depend on
//!   the order documents are visited in.

use std::collections::HashMap;
use std::fmt;

use yrs::{ReadTxn, Transact};

use crate::change::{Change, CollectionMeta, Epoch, Seq};
use crate::error::{StorageError, VerifyLogError};
use crate::load::load_document_through;
use crate::migration::canonical_state;
use crate::name::{CollectionName, DocId};
use crate::storage::Storage;

/// A document's digest: 32 bytes of BLAKE3.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocumentDigest(pub [u8; 32]);

impl DocumentDigest {
    /// The digest of a tombstoned document (the same for every one).
    pub fn tombstone() -> Self {
        Self(
            *blake3::Hasher::new_derive_key("seqsync 2026-12 tombstoned document")
                .finalize()
                .as_bytes(),
        )
    }

    /// The digest of a document's state (read in `txn`), from its state
    /// vector and delete set only.
    pub fn of_state<T: ReadTxn>(txn: &T) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key("seqsync 2026-12 document digest");
        hasher.update(&canonical_state(txn));
        Self(*hasher.finalize().as_bytes())
    }

    /// The 64-hex-digit form.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// This document's term in a collection's state digest.
    pub fn collection_term(&self, doc: &DocId) -> u64 {
        let mut hasher = blake3::Hasher::new_derive_key("seqsync 2026-12 collection term");
        hasher.update(&(doc.as_str().len() as u64).to_le_bytes());
        hasher.update(doc.as_str().as_bytes());
        hasher.update(&self.0);
        first_u64(hasher.finalize().as_bytes())
    }
}

impl fmt::Display for DocumentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for DocumentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocumentDigest({})", self.to_hex())
    }
}

/// A change's own checksum: keyed BLAKE3 over (epoch, seq, doc, kind,
/// schema version, payload), first 8 bytes little-endian; the key is
/// BLAKE3 of `"seqsync 2026-12 change checksum"` (docs/BUNDLES.md gives the
/// byte layout). The origin is left out (it says who pushed, not what the
/// log holds). On the push path: about 0.3 µs for a keystroke-sized change.
pub fn change_checksum(epoch: &Epoch, change: &Change) -> u64 {
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| *blake3::hash(b"seqsync 2026-12 change checksum").as_bytes());
    let mut hasher = blake3::Hasher::new_keyed(key);
    hasher.update(&epoch.0);
    hasher.update(&change.seq.to_le_bytes());
    hasher.update(&(change.doc.as_str().len() as u64).to_le_bytes());
    hasher.update(change.doc.as_str().as_bytes());
    hasher.update(&[change.kind.code()]);
    hasher.update(&change.schema_version.to_le_bytes());
    hasher.update(&(change.payload.len() as u64).to_le_bytes());
    hasher.update(&change.payload);
    first_u64(hasher.finalize().as_bytes())
}

/// The log checksum through `change`, given the checksum through the seq
/// before it: the running sum gains the change's own checksum. The one
/// place that rule is written (storage appends with it, bundles and
/// `seqsync verify` check with [`LogChain`]).
pub fn next_log_checksum(epoch: &Epoch, before: u64, change: &Change) -> u64 {
    before.wrapping_add(change_checksum(epoch, change))
}

/// A stored change whose log checksum is not what the chain says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainBreak {
    /// The change's seq.
    pub seq: Seq,
    /// What the chain says its log checksum must be.
    pub expected: u64,
    /// What it carries.
    pub found: u64,
}

/// Walks a stored log's checksum chain, change by change in seq order.
///
/// A change that directly follows the previous seq, and is not a snapshot,
/// must carry [`next_log_checksum`] of the previous value. A snapshot, or a
/// change after a gap (compaction removed the seqs between), carries the
/// sum compaction kept, which cannot be recomputed without the removed
/// changes: it is taken as given and the walk goes on from it. So a walk
/// from the start to the head checks every change the log still holds, and
/// ends at the collection's log checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogChain {
    seq: Seq,
    checksum: u64,
}

impl LogChain {
    /// A walk that continues after `seq`, whose log checksum is `checksum`
    /// (`0, 0` for the start of a log).
    pub fn after(seq: Seq, checksum: u64) -> Self {
        Self { seq, checksum }
    }

    /// Takes the next change. Errors: [`ChainBreak`] if it carries another
    /// log checksum than the chain says (the walk stays where it was).
    pub fn check(&mut self, epoch: &Epoch, change: &Change) -> Result<(), ChainBreak> {
        if change.seq == self.seq + 1 && change.kind != crate::change::ChangeKind::Snapshot {
            let expected = next_log_checksum(epoch, self.checksum, change);
            if change.log_checksum != expected {
                return Err(ChainBreak {
                    seq: change.seq,
                    expected,
                    found: change.log_checksum,
                });
            }
        }
        self.seq = change.seq;
        self.checksum = change.log_checksum;
        Ok(())
    }

    /// The seq of the last change taken.
    pub fn seq(&self) -> Seq {
        self.seq
    }

    /// The log checksum through [`LogChain::seq`].
    pub fn checksum(&self) -> u64 {
        self.checksum
    }
}

/// What [`verify_log`] walked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogVerified {
    /// Changes the log holds (compaction may have folded others).
    pub changes: u64,
}

/// Walks the stored log of `name` from its start with [`LogChain`]: every
/// change it still holds must carry the checksum the chain gives, and the
/// walk must end at `meta`'s head and log checksum. This is the one place
/// that decides whether a stored log is what was committed (`seqsync
/// verify` prints what it says).
///
/// `progress` is told how many changes were read so far, after each page.
/// Blocking: reads the whole log, a page of `VERIFY_PAGE` at a time.
/// Errors: [`VerifyLogError::Checksum`] at the first change that differs,
/// [`VerifyLogError::Head`] when the log ends elsewhere, `Storage`.
pub fn verify_log(
    storage: &dyn Storage,
    name: &CollectionName,
    meta: &CollectionMeta,
    progress: &mut dyn FnMut(u64),
) -> Result<LogVerified, VerifyLogError> {
    const VERIFY_PAGE: usize = 1000;
    let mut chain = LogChain::after(0, 0);
    let mut changes = 0u64;
    while let Some(page) = storage.read_changes(name, chain.seq(), VERIFY_PAGE)? {
        if page.changes.is_empty() {
            break;
        }
        for change in &page.changes {
            chain
                .check(&meta.epoch, change)
                .map_err(|b| VerifyLogError::Checksum {
                    collection: name.to_string(),
                    seq: b.seq,
                    expected: b.expected,
                    found: b.found,
                })?;
            changes += 1;
        }
        progress(changes);
    }
    if chain.checksum() != meta.log_checksum || chain.seq() != meta.head {
        return Err(VerifyLogError::Head {
            collection: name.to_string(),
            end: chain.seq(),
            found: chain.checksum(),
            head: meta.head,
            expected: meta.log_checksum,
        });
    }
    Ok(LogVerified { changes })
}

fn first_u64(bytes: &[u8; 32]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// A collection's digests at one head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CollectionDigest {
    /// The head they were taken at.
    pub head: u64,
    /// The log checksum through `head`.
    pub log_checksum: u64,
    /// The sum of every document's term ([`DocumentDigest::collection_term`]);
    /// `None` while a document has pending structures.
    pub state_digest: Option<u64>,
}

/// A document's digest as of some head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocumentDigestAt {
    /// The document has no change at or below that head.
    Missing,
    /// The document holds pending structures: its state is not settled, so
    /// it has no digest yet.
    Pending,
    /// The digest (the fixed [`DocumentDigest::tombstone`] for a deleted
    /// document).
    Digest(DocumentDigest),
}

/// The digest of document `doc` as of head `through` (changes with seq ≤
/// `through`), read from storage.
///
/// Blocking (loads the document). Errors: the backend's, or `Corrupt` when a
/// stored change does not apply.
pub fn document_digest_at(
    storage: &dyn Storage,
    name: &CollectionName,
    doc: &DocId,
    through: Seq,
) -> Result<DocumentDigestAt, StorageError> {
    let Some(loaded) = load_document_through(storage, name, doc, through)? else {
        return Ok(DocumentDigestAt::Missing);
    };
    if loaded.state.deleted {
        return Ok(DocumentDigestAt::Digest(DocumentDigest::tombstone()));
    }
    if loaded.state.has_pending() {
        return Ok(DocumentDigestAt::Pending);
    }
    let digest = DocumentDigest::of_state(&loaded.state.doc().transact());
    Ok(DocumentDigestAt::Digest(digest))
}

/// The digest of a served state (one Yjs v1 update applied to an empty
/// document), `None` if it does not apply completely (it leaves pending
/// structures or does not decode). What a client that loaded exactly these
/// bytes would compute.
pub fn digest_of_update(update: &[u8]) -> Option<DocumentDigest> {
    let mut state = crate::yjs::DocState::empty();
    let decoded = crate::yjs::decode_update(update).ok()?;
    state.apply(decoded).ok()?;
    if state.has_pending() {
        return None;
    }
    let digest = DocumentDigest::of_state(&state.doc().transact());
    Some(digest)
}

/// Per-document terms of a collection's state digest from an earlier
/// computation, so the next one loads only the documents that changed
/// since: a document whose last change is the same has the same term.
#[derive(Debug, Default)]
pub struct DigestCache {
    epoch: Option<Epoch>,
    /// Per document: the seq of its last change and its term (`None`:
    /// pending, no term).
    terms: HashMap<DocId, (Seq, Option<u64>)>,
}

impl DigestCache {
    /// Documents whose terms are kept.
    pub fn len(&self) -> usize {
        self.terms.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

/// A collection's digests at its current head: the log checksum through the
/// head and the state digest (the sum of every document's term), each
/// document read as of that head, so the result is consistent even while
/// commits continue. `Ok(None)` if the collection does not exist.
///
/// Blocking. Cost: listing the documents, plus loading each document whose
/// last change is not the one `cache` saw (all of them the first time).
/// Memory: one document at a time plus the cache (a seq and a u64 per
/// document). Errors: the backend's, or `Corrupt`.
pub fn collection_digest(
    storage: &dyn Storage,
    name: &CollectionName,
    cache: &mut DigestCache,
) -> Result<Option<CollectionDigest>, StorageError> {
    let Some(meta) = storage.collection(name)? else {
        return Ok(None);
    };
    if cache.epoch != Some(meta.epoch) {
        cache.terms.clear();
        cache.epoch = Some(meta.epoch);
    }
    let mut sum = 0u64;
    let mut pending = false;
    let mut seen = std::collections::HashSet::new();
    for info in storage.documents(name)? {
        seen.insert(info.doc.clone());
        let cached = cache
            .terms
            .get(&info.doc)
            .filter(|(last_seq, _)| *last_seq == info.last_seq && info.last_seq <= meta.head)
            .map(|(_, term)| *term);
        let term = match cached {
            Some(term) => term,
            None => {
                let term = match document_digest_at(storage, name, &info.doc, meta.head)? {
                    // Created after the head was read: not part of it.
                    DocumentDigestAt::Missing => continue,
                    DocumentDigestAt::Pending => None,
                    DocumentDigestAt::Digest(digest) => Some(digest.collection_term(&info.doc)),
                };
                if info.last_seq <= meta.head {
                    cache.terms.insert(info.doc.clone(), (info.last_seq, term));
                }
                term
            }
        };
        match term {
            Some(term) => sum = sum.wrapping_add(term),
            None => pending = true,
        }
    }
    cache.terms.retain(|doc, _| seen.contains(doc));
    Ok(Some(CollectionDigest {
        head: meta.head,
        log_checksum: meta.log_checksum,
        state_digest: (!pending).then_some(sum),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::ChangeKind;
    use yrs::{Doc, Options, Text, Transact};

    #[test]
    fn a_document_digest_ignores_history_and_gc() {
        // The same state reached with GC on and off, or by one merged update
        // instead of many, must give one digest.
        let author = Doc::with_client_id(1 << 20);
        let text = author.get_or_insert_text("t");
        let mut updates = Vec::new();
        for word in ["hello ", "world", "!"] {
            let mut txn = author.transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, len, word);
            updates.push(txn.encode_update_v1());
        }
        {
            let mut txn = author.transact_mut();
            text.remove_range(&mut txn, 0, 6);
            updates.push(txn.encode_update_v1());
        }
        let build = |skip_gc: bool, merged: bool| {
            let doc = Doc::with_options(Options {
                skip_gc,
                ..Options::default()
            });
            let apply = |bytes: &[u8]| {
                use yrs::updates::decoder::Decode;
                doc.transact_mut()
                    .apply_update(yrs::Update::decode_v1(bytes).unwrap())
                    .unwrap();
            };
            if merged {
                apply(&yrs::merge_updates_v1(&updates).unwrap());
            } else {
                updates.iter().for_each(|u| apply(u));
            }
            let digest = DocumentDigest::of_state(&doc.transact());
            digest
        };
        let reference = build(false, false);
        assert_eq!(build(true, false), reference);
        assert_eq!(build(false, true), reference);
        assert_eq!(build(true, true), reference);
        assert_eq!(reference, DocumentDigest::of_state(&author.transact()));
        assert_ne!(reference, DocumentDigest::tombstone());
    }

    /// `seqsync verify`, bundle verification and the storage's appends all
    /// go through this one walk: it must accept a compacted log (a gap, a
    /// snapshot carrying the kept sum) and name the first tampered change.
    #[test]
    fn the_log_chain_accepts_compacted_logs_and_names_a_tampered_change() {
        let epoch = Epoch([3; 16]);
        let change = |seq: u64, kind: ChangeKind, payload: &[u8]| Change {
            seq,
            doc: DocId::new("d").unwrap(),
            kind,
            payload: payload.to_vec(),
            schema_version: 1,
            origin: None,
            author: None,
            committed_ms: 0,
            log_checksum: 0,
        };
        // A log of 1..=5 as appended, then compacted: 2..=3 folded into a
        // snapshot at seq 3 that keeps seq 3's sum.
        let mut log = Vec::new();
        let mut sum = 0;
        for seq in 1..=5 {
            let mut c = change(seq, ChangeKind::Update, &[seq as u8]);
            sum = next_log_checksum(&epoch, sum, &c);
            c.log_checksum = sum;
            log.push(c);
        }
        let mut snapshot = change(3, ChangeKind::Snapshot, &[9, 9]);
        snapshot.log_checksum = log[2].log_checksum;
        let compacted = vec![log[0].clone(), snapshot, log[3].clone(), log[4].clone()];
        for changes in [&log, &compacted] {
            let mut chain = LogChain::after(0, 0);
            for c in changes.iter() {
                chain.check(&epoch, c).unwrap();
            }
            assert_eq!((chain.seq(), chain.checksum()), (5, sum));
        }
        // A walk may start mid-log (a bundle batch).
        let mut chain = LogChain::after(3, log[2].log_checksum);
        chain.check(&epoch, &log[3]).unwrap();
        // A changed payload breaks the chain at that change, not later.
        let mut tampered = log.clone();
        tampered[3].payload = vec![42];
        let mut chain = LogChain::after(0, 0);
        let broke = tampered
            .iter()
            .find_map(|c| chain.check(&epoch, c).err())
            .unwrap();
        assert_eq!(broke.seq, 4);
        assert_eq!(broke.found, log[3].log_checksum);
        assert_eq!(chain.seq(), 3, "the walk stays before the broken change");
    }

    #[test]
    fn a_change_checksum_covers_every_field_but_the_origin() {
        // A replaced history must not keep its checksum: each field counts.
        let epoch = Epoch([7; 16]);
        let change = Change {
            seq: 3,
            doc: DocId::new("d").unwrap(),
            kind: ChangeKind::Update,
            payload: vec![1, 2, 3],
            schema_version: 1,
            origin: None,
            author: None,
            committed_ms: 0,
            log_checksum: 0,
        };
        let base = change_checksum(&epoch, &change);
        let variants = [
            Change {
                seq: 4,
                ..change.clone()
            },
            Change {
                doc: DocId::new("e").unwrap(),
                ..change.clone()
            },
            Change {
                kind: ChangeKind::Snapshot,
                ..change.clone()
            },
            Change {
                payload: vec![1, 2, 4],
                ..change.clone()
            },
            Change {
                schema_version: 2,
                ..change.clone()
            },
        ];
        for variant in &variants {
            assert_ne!(change_checksum(&epoch, variant), base, "{variant:?}");
        }
        assert_ne!(change_checksum(&Epoch([8; 16]), &change), base);
        let with_origin = Change {
            origin: Some(crate::PeerId::new("p").unwrap()),
            ..change.clone()
        };
        assert_eq!(change_checksum(&epoch, &with_origin), base);
    }
}
