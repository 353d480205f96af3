//! Yjs documents as the engine sees them: decode, apply, diff.
//!
//! The server keeps one `yrs::Doc` per loaded document. Every push is decoded
//! here first (a push that is not a Yjs v1 update must be refused before
//! anything else happens), then applied; applying tells whether the update
//! added anything, which is how retries become free no-ops.
//!
//! "Added anything" is judged on the whole document state: the state vector
//! (new insertions), the set of items deleted by the transaction (new
//! deletions), and the pending structures where yrs parks an out-of-order
//! update whose dependencies have not arrived. An update that only fills the
//! pending area is **not** a no-op: it must be logged so a client replaying
//! the log sees it too (docs/DESIGN.md, out-of-order updates).
//!
//! yrs may panic on some malformed input. Decoding and applying run under
//! `catch_unwind` so a hostile update becomes an `InvalidUpdate` error; after
//! a panic while applying, the document is considered damaged and the caller
//! must drop and reload it.
//!
//! Size: about 530 lines of code and 400 of unit tests beside it (the
//! decoding and no-op rules are tested where they are written); the code
//! alone is one idea, a pushed update's way into a document.

use std::panic::{catch_unwind, AssertUnwindSafe};

use std::collections::HashMap;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;

use yrs::block::ClientID;
use yrs::{Doc, IdSet, Options, ReadTxn, StateVector, Transact, Update};

use crate::change::{Change, ChangeKind};

/// Why bytes are not an acceptable Yjs update.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateDecodeError {
    /// Zero bytes.
    #[error(
        "the update is empty; send a Yjs v1 update (Y.encodeStateAsUpdate or an update event)"
    )]
    Empty,
    /// Not decodable as a Yjs v1 update (garbage, truncated, v2 encoding).
    #[error("not a Yjs v1 update: {0}")]
    Malformed(String),
}

/// Decodes `bytes` as a Yjs v1 update. Never panics.
pub fn decode_update(bytes: &[u8]) -> Result<Update, UpdateDecodeError> {
    if bytes.is_empty() {
        return Err(UpdateDecodeError::Empty);
    }
    check_client_count(bytes)?;
    match catch_unwind(|| Update::decode_v1(bytes)) {
        Ok(Ok(update)) => Ok(update),
        Ok(Err(err)) => Err(UpdateDecodeError::Malformed(err.to_string())),
        Err(_) => Err(UpdateDecodeError::Malformed(
            "the decoder rejected the bytes".to_owned(),
        )),
    }
}

/// Decodes `bytes` as an update a client pushes: [`decode_update`], and
/// the update must not carry legacy JSON content.
///
/// Why (fuzz finding F2): yrs 0.28.1 decodes legacy JSON content (content
/// ref 2) reading one string more than its encoder writes, so an update
/// carrying it can be accepted while every later encoding of the document
/// (a read, a sync step 2, a snapshot) is bytes no reader can decode: one
/// push would brick the document for everyone. No Yjs client has written
/// JSON content since Yjs 13 (they write Any content), so refusing it costs
/// honest clients nothing. A first version of this check re-encoded the
/// update and decoded it again; the fuzzer then found an update that
/// survives that round trip on its own and still leaves an undecodable
/// document, so the check now reads the content kinds themselves (one scan
/// of the update's blocks, in `structure`).
///
/// It must not either name a later item of its own client as an origin or
/// parent (F6, see `structure::first_later_reference`), nor give a client
/// two overlapping sections (F5, `structure::scan_update`).
///
/// Errors: as `decode_update`; `Malformed` naming the client and clock of
/// the offending item.
pub fn decode_pushed_update(bytes: &[u8]) -> Result<Update, UpdateDecodeError> {
    if bytes.is_empty() {
        return Err(UpdateDecodeError::Empty);
    }
    check_client_count(bytes)?;
    // The scan comes first: yrs's own decoder leaks every subdocument it
    // builds, so a refused subdocument must never reach it.
    let scanned = crate::structure::scan_update(bytes).map_err(|e| {
        UpdateDecodeError::Malformed(
            e.strip_prefix("the update's blocks do not read: ")
                .map(str::to_owned)
                .unwrap_or(e),
        )
    })?;
    if let Some((client, clock)) =
        crate::structure::first_of_kind(&scanned, crate::structure::BlockKind::DocItem)
    {
        return Err(UpdateDecodeError::Malformed(format!(
            "the update holds a subdocument (client {client}, clock {clock}): seqsync does not \
             store subdocuments, because yrs 0.28 leaks the memory of every subdocument it \
             decodes; keep each document a top-level document"
        )));
    }
    let update = decode_update(bytes)?;
    if let Some((client, clock, id)) = crate::structure::first_later_reference(&scanned) {
        return Err(UpdateDecodeError::Malformed(format!(
            "the item at client {client} clock {clock} refers to {}:{}, a later item of its \
             own client: no Yjs client writes that, and a fresh client could never load the \
             document",
            id.client, id.clock
        )));
    }
    if let Some((client, clock)) =
        crate::structure::first_of_kind(&scanned, crate::structure::BlockKind::JsonItem)
    {
        return Err(UpdateDecodeError::Malformed(format!(
            "the update holds legacy JSON content (client {client}, clock {clock}), which yrs \
             cannot encode and decode again: storing it would leave the document unreadable; \
             send it as Any content (current Yjs clients do)"
        )));
    }
    Ok(update)
}

/// yrs reserves room for the client count an update declares before
/// reading any client: 4 bytes declaring 124 million clients cost 256 MiB
/// and a third of a second (found by `fuzz/`, F1). Every client section
/// takes at least 3 bytes (struct count, client id, clock), so a larger
/// count cannot be honest.
fn check_client_count(bytes: &[u8]) -> Result<(), UpdateDecodeError> {
    if let Some(clients) = leading_varint(bytes) {
        if clients > bytes.len() as u64 / 3 {
            return Err(UpdateDecodeError::Malformed(format!(
                "declares {clients} clients in {} bytes",
                bytes.len()
            )));
        }
    }
    Ok(())
}

/// The unsigned LEB128 varint at the start of `bytes`, if it is complete and
/// fits in 64 bits.
fn leading_varint(bytes: &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Decodes a Yjs v1 state vector. Empty bytes mean the empty state vector
/// (a client that has nothing). Never panics.
pub fn decode_state_vector(bytes: &[u8]) -> Result<StateVector, UpdateDecodeError> {
    if bytes.is_empty() {
        return Ok(StateVector::default());
    }
    match catch_unwind(|| StateVector::decode_v1(bytes)) {
        Ok(Ok(sv)) => Ok(sv),
        Ok(Err(err)) => Err(UpdateDecodeError::Malformed(format!(
            "not a Yjs v1 state vector: {err}"
        ))),
        Err(_) => Err(UpdateDecodeError::Malformed(
            "not a Yjs v1 state vector".to_owned(),
        )),
    }
}

/// A new empty document configured like every server-side document.
///
/// Offsets count UTF-16 code units, as JavaScript clients do; it only matters
/// for code that edits text on the server (tests, migrations).
pub fn new_doc() -> Doc {
    Doc::with_options(Options {
        offset_kind: yrs::OffsetKind::Utf16,
        ..Options::default()
    })
}

/// The result of applying an update to a [`DocState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The document gained something (insertions, deletions or pending
    /// structures): the update must be logged.
    Changed,
    /// The document already had everything in the update.
    NoOp,
}

/// Applying failed; the document may be partially modified and must be
/// reloaded from storage before further use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("applying the update failed: {0}")]
pub struct ApplyError(pub String);

/// One loaded document: its `yrs::Doc` plus what compaction and deletion
/// need to know.
pub struct DocState {
    doc: Doc,
    /// A tombstone was logged for this document.
    pub deleted: bool,
    /// Update changes logged since the last snapshot (compaction trigger).
    pub deltas_since_snapshot: u64,
    /// Their total payload bytes (compaction trigger).
    pub delta_bytes_since_snapshot: u64,
    /// Per client, the clock ranges integrated so far (sorted, merged):
    /// the document's *known ranges*, as yrs computes them when it trims an
    /// incoming update. yrs lowers the state vector to the start of a clock
    /// gap ("skip"), so a client whose last range ends beyond the state
    /// vector has integrated blocks after a gap (see
    /// [`DocState::has_pending`]); a range starting above 0 is where the
    /// clocks resume after a gap, which `structure` guards (F3).
    known: HashMap<ClientID, Vec<std::ops::Range<u32>>>,
    /// Whether some client's known ranges have a gap (the F3 check runs
    /// only then, or while yrs holds a pending update).
    has_gap: bool,
    /// Whether the document's encoding decodes again (F2), checked once:
    /// pushes that could make it fail are refused (`decode_pushed_update`),
    /// so only changes stored before that check can, and a document that
    /// encodes readably once stays so.
    readable: std::sync::OnceLock<Result<(), String>>,
}

impl DocState {
    /// An empty document that has never been written.
    pub fn empty() -> Self {
        Self {
            doc: new_doc(),
            deleted: false,
            deltas_since_snapshot: 0,
            delta_bytes_since_snapshot: 0,
            known: HashMap::new(),
            has_gap: false,
            readable: std::sync::OnceLock::new(),
        }
    }

    /// Rebuilds a document from its stored changes (seq order).
    ///
    /// Errors: a stored payload that does not decode or apply, which means
    /// the store is damaged.
    pub fn load(changes: &[Change]) -> Result<Self, ApplyError> {
        let mut state = Self::empty();
        for change in changes {
            state.load_change(change)?;
        }
        Ok(state)
    }

    /// Applies the next stored change (seq order) while rebuilding a
    /// document; [`DocState::load`] is this in a loop.
    ///
    /// Errors: a payload that does not decode or apply (a damaged store).
    pub fn load_change(&mut self, change: &Change) -> Result<(), ApplyError> {
        match change.kind {
            ChangeKind::Update | ChangeKind::Snapshot => {
                let update = decode_update(&change.payload).map_err(|e| {
                    ApplyError(format!("stored change {} does not decode: {e}", change.seq))
                })?;
                // A pushed update stored before pushes were scanned may
                // have the overlapping sections that make yrs free an
                // item it still uses (F5); snapshots are the server's own
                // encodings, one section per client.
                if change.kind == ChangeKind::Update {
                    crate::structure::scan_update(&change.payload).map_err(|e| {
                        ApplyError(format!("stored change {} is refused: {e}", change.seq))
                    })?;
                }
                // One transaction per change, as when the changes were
                // pushed: yrs resolves pending structures at the end of each
                // update, and a single transaction over many out-of-order
                // updates can leave them unresolved.
                self.apply_unchecked(update)
                    .map_err(|e| ApplyError(format!("stored change {}: {e}", change.seq)))?;
            }
            ChangeKind::Delete => self.deleted = true,
        }
        match change.kind {
            ChangeKind::Update => {
                self.deltas_since_snapshot += 1;
                self.delta_bytes_since_snapshot += change.payload.len() as u64;
            }
            ChangeKind::Snapshot => {
                self.deltas_since_snapshot = 0;
                self.delta_bytes_since_snapshot = 0;
            }
            ChangeKind::Delete => {}
        }
        Ok(())
    }

    /// Applies a decoded update and says whether it changed the document.
    ///
    /// Errors: [`ApplyError`] if yrs refused or panicked; the document must
    /// then be dropped and reloaded.
    pub fn apply(&mut self, update: Update) -> Result<Applied, ApplyError> {
        self.check_structure(&update)?;
        let mut txn = self.doc.transact_mut();
        let before = Fingerprint::of(&txn);
        let result = catch_unwind(AssertUnwindSafe(|| txn.apply_update(update)));
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ApplyError(e.to_string())),
            Err(_) => return Err(ApplyError("yrs panicked while applying".to_owned())),
        }
        // yrs may integrate a block whose own clock range leaves a gap (its
        // origins are known), so the state vector alone does not show every
        // insertion: the transaction's insert and delete sets do.
        let touched = !txn.insert_set().is_empty() || !txn.delete_set().is_empty();
        note_insertions(&mut self.known, &mut self.has_gap, txn.insert_set());
        let after = Fingerprint::of(&txn);
        Ok(if touched || before != after {
            Applied::Changed
        } else {
            Applied::NoOp
        })
    }

    /// Applies an update in its own transaction without judging whether it
    /// changed anything (loading stored changes, which all count).
    /// A stored change goes through the F3 check too: a log written before
    /// the check existed may hold an update that would corrupt memory.
    fn apply_unchecked(&mut self, update: Update) -> Result<(), ApplyError> {
        self.check_structure(&update)?;
        let mut txn = self.doc.transact_mut();
        match catch_unwind(AssertUnwindSafe(|| txn.apply_update(update))) {
            Ok(Ok(())) => {
                note_insertions(&mut self.known, &mut self.has_gap, txn.insert_set());
                Ok(())
            }
            Ok(Err(e)) => Err(ApplyError(e.to_string())),
            Err(_) => Err(ApplyError("yrs panicked while applying".to_owned())),
        }
    }

    /// Records a logged update for the compaction trigger.
    pub fn note_delta(&mut self, payload_bytes: u64) {
        self.deltas_since_snapshot += 1;
        self.delta_bytes_since_snapshot += payload_bytes;
    }

    /// The document's integrated state as one Yjs v1 update.
    ///
    /// **Pending structures are left out.** yrs 0.28 merges them into the
    /// encoding with `merge_updates`, which can drop integrated content when
    /// the pending update and the state share a client with a clock gap
    /// (found by the compaction property test). A caller serving a document
    /// with [`DocState::has_pending`] must let the client receive the pending
    /// updates some other way (the engine lowers the cursor it returns so the
    /// stream re-delivers them; compaction skips such documents).
    pub fn encode_state(&self) -> Vec<u8> {
        self.encode_diff(&StateVector::default())
    }

    /// What a client with state vector `sv` lacks of the integrated state, as
    /// one Yjs v1 update. Pending structures are left out, as in
    /// [`DocState::encode_state`].
    pub fn encode_diff(&self, sv: &StateVector) -> Vec<u8> {
        self.doc.transact().encode_diff_v1(sv)
    }

    /// Whether the document holds content that a state-vector diff may leave
    /// out, because of out-of-order updates:
    /// - structures yrs parked as pending (their dependencies are missing), or
    /// - blocks yrs integrated after a clock gap of their client (a "skip":
    ///   their origins were known). yrs lowers the state vector to the start
    ///   of the gap, and `encode_diff_v1` against a state vector that already
    ///   reaches the gap writes nothing of that client, so the blocks after
    ///   it would be missing from a client's recovery. The simulation test
    ///   found this; `recovery_after_a_clock_gap_is_not_lost` guards it.
    ///
    /// Callers treat both alike: compaction skips such documents, and reads
    /// lower the cursor they return so the stream re-delivers the updates.
    pub fn has_pending(&self) -> bool {
        let txn = self.doc.transact();
        let store = txn.store();
        if store.pending_update().is_some() || store.pending_ds().is_some() {
            return true;
        }
        let state_vector = txn.state_vector();
        self.known.iter().any(|(client, ranges)| {
            ranges
                .last()
                .is_some_and(|last| last.end > state_vector.get(client))
        })
    }

    /// Refuses the one shape of update that makes yrs 0.28.1 read freed
    /// memory (fuzz finding F3; the why is in `structure`): an item that
    /// strictly contains a clock where the document's clocks of its client
    /// resume after a gap, or a gap this update may create inside an item
    /// yrs holds pending (it retries the pending update in the same call).
    /// Runs only when the document has a gap or a pending update, so an
    /// ordinary push costs nothing more.
    ///
    /// Errors: [`ApplyError`] naming the client and clock; the document is
    /// untouched.
    pub fn check_structure(&self, update: &Update) -> Result<(), ApplyError> {
        let txn = self.doc.transact();
        let pending = txn.store().pending_update();
        if !self.has_gap && pending.is_none() {
            return Ok(());
        }
        let refused = |what: String| {
            ApplyError(format!(
                "{what}: no Yjs client encodes that (it contradicts the items the \
                 document holds), and yrs 0.28 would read freed memory integrating it"
            ))
        };
        let encoded = catch_unwind(AssertUnwindSafe(|| update.encode_v1()))
            .map_err(|_| ApplyError("yrs cannot encode this update".to_owned()))?;
        let incoming = crate::structure::scan_update(&encoded).map_err(ApplyError)?;
        let parked = match pending {
            Some(pending) => {
                let encoded = catch_unwind(AssertUnwindSafe(|| pending.update.encode_v1()))
                    .map_err(|_| ApplyError("yrs cannot encode its pending update".to_owned()))?;
                crate::structure::scan_update(&encoded).map_err(ApplyError)?
            }
            None => Default::default(),
        };
        for (client, blocks) in &incoming {
            if let Some(known) = self.known.get(client) {
                let gap_ends = crate::structure::gap_ends(known);
                if let Some((item, clock)) = crate::structure::item_spanning(blocks, gap_ends) {
                    return Err(refused(format!(
                        "an item of client {client} spans clocks {item:?} across clock \
                         {clock}, where the document's clocks of that client resume after a gap"
                    )));
                }
            }
            if let Some(parked) = parked.get(client) {
                let starts = crate::structure::run_starts(blocks);
                if let Some((item, clock)) = crate::structure::item_spanning(parked, starts) {
                    return Err(refused(format!(
                        "the update may leave client {client}'s clocks resuming at {clock}, \
                         inside the pending item {item:?}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Whether the document's encoding can be read back (fuzz finding F2):
    /// a log written before pushes were checked may hold legacy JSON
    /// content, which yrs 0.28 encodes into bytes it cannot decode, so
    /// every reader of such a document would get bytes it cannot load.
    /// Serving paths call this and refuse such a document with a typed
    /// error instead. Checked once per `DocState` (one encode and decode
    /// of the state), then cached.
    ///
    /// Errors: why the encoding does not decode.
    pub fn check_readable(&self) -> Result<(), String> {
        self.readable
            .get_or_init(|| {
                if self.deleted {
                    return Ok(());
                }
                let encoded = catch_unwind(AssertUnwindSafe(|| self.encode_state()))
                    .map_err(|_| "yrs panicked encoding the document".to_owned())?;
                decode_update(&encoded).map(|_| ()).map_err(|e| {
                    format!(
                        "its encoding does not decode ({e}): it holds legacy JSON content \
                         stored before seqsync refused such pushes"
                    )
                })
            })
            .clone()
    }

    /// The document's state vector.
    pub fn state_vector(&self) -> StateVector {
        self.doc.transact().state_vector()
    }

    /// The underlying document, for reads (tests, migrations).
    pub fn doc(&self) -> &Doc {
        &self.doc
    }
}

/// Adds a transaction's insert set to the known ranges of each client and
/// says again whether any client has a gap (a filled gap clears it).
fn note_insertions(
    known: &mut HashMap<ClientID, Vec<std::ops::Range<u32>>>,
    any_gap: &mut bool,
    insert_set: &IdSet,
) {
    let mut gap = false;
    for (client, ranges) in insert_set.iter() {
        let client_known = known.entry(*client).or_default();
        for range in ranges.iter() {
            crate::structure::add_range(client_known, range.clone());
        }
        gap |= has_gap(client_known);
    }
    if *any_gap && !gap {
        gap = known.values().any(|ranges| has_gap(ranges));
    }
    *any_gap = gap;
}

/// Whether a client's known ranges have a gap (clocks that resume after
/// a hole).
fn has_gap(ranges: &[std::ops::Range<u32>]) -> bool {
    ranges.len() > 1 || ranges.first().is_some_and(|r| r.start > 0)
}

/// What changes when an update adds something, except deletions (read from
/// the transaction's delete set).
#[derive(PartialEq)]
struct Fingerprint {
    state_vector: StateVector,
    pending: Option<(Vec<u8>, StateVector)>,
    pending_deletes: Option<Vec<u8>>,
}

impl Fingerprint {
    fn of(txn: &yrs::TransactionMut<'_>) -> Self {
        let store = txn.store();
        Self {
            state_vector: txn.state_vector(),
            pending: store
                .pending_update()
                .map(|p| (p.update.encode_v1(), p.missing.clone())),
            pending_deletes: store.pending_ds().map(|ds| ds.encode_v1()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// F2: both fuzz witnesses (legacy JSON content) decode, but do not
    /// survive a round trip; a push of them is refused before anything is
    /// stored, with a message that names the cause.
    #[test]
    fn pushed_updates_that_do_not_survive_a_round_trip_are_refused() {
        for witness in [
            &include_bytes!("../../fuzz/regressions/push_bytes/f2-unencodable-state-empty-json")[..],
            &include_bytes!("../../fuzz/regressions/push_bytes/f2-unencodable-state-utf8")[..],
        ] {
            assert!(decode_update(witness).is_ok(), "yrs accepts it");
            let err = decode_pushed_update(witness).unwrap_err();
            assert!(err.to_string().contains("legacy JSON"), "{err}");
        }
        // An ordinary typing update passes.
        let doc = Doc::with_client_id(1 << 20);
        let text = doc.get_or_insert_text("t");
        let update = {
            let mut txn = doc.transact_mut();
            yrs::Text::insert(&text, &mut txn, 0, "hello");
            txn.encode_update_v1()
        };
        assert!(decode_pushed_update(&update).is_ok());
    }
    use yrs::{GetString, Text};

    fn edit(doc: &Doc, f: impl FnOnce(&mut yrs::TransactionMut<'_>, &yrs::TextRef)) -> Vec<u8> {
        let text = doc.get_or_insert_text("t");
        let before = doc.transact().state_vector();
        {
            let mut txn = doc.transact_mut();
            f(&mut txn, &text);
        }
        doc.transact().encode_state_as_update_v1(&before)
    }

    fn text_of(state: &DocState) -> String {
        let text = state.doc().get_or_insert_text("t");
        text.get_string(&state.doc().transact())
    }

    /// Retries must be free: the same update twice logs once. A delete-only
    /// update changes the document even though the state vector does not move.
    #[test]
    fn noop_detection_sees_insertions_and_deletions() {
        let client = Doc::new();
        let insert = edit(&client, |txn, t| t.insert(txn, 0, "hello"));
        let delete = edit(&client, |txn, t| t.remove_range(txn, 0, 2));
        let mut server = DocState::empty();
        assert_eq!(
            server.apply(decode_update(&insert).unwrap()).unwrap(),
            Applied::Changed
        );
        assert_eq!(
            server.apply(decode_update(&insert).unwrap()).unwrap(),
            Applied::NoOp
        );
        assert_eq!(
            server.apply(decode_update(&delete).unwrap()).unwrap(),
            Applied::Changed
        );
        assert_eq!(
            server.apply(decode_update(&delete).unwrap()).unwrap(),
            Applied::NoOp
        );
        assert_eq!(text_of(&server), "llo");
    }

    /// An update that arrives before its dependency is logged (not a no-op),
    /// stays pending, and integrates when the dependency arrives.
    #[test]
    fn out_of_order_update_is_not_a_noop() {
        let client = Doc::new();
        let first = edit(&client, |txn, t| t.insert(txn, 0, "ab"));
        let second = edit(&client, |txn, t| t.insert(txn, 2, "cd"));
        let mut server = DocState::empty();
        assert_eq!(
            server.apply(decode_update(&second).unwrap()).unwrap(),
            Applied::Changed
        );
        assert_eq!(text_of(&server), "");
        assert_eq!(
            server.apply(decode_update(&second).unwrap()).unwrap(),
            Applied::NoOp
        );
        assert_eq!(
            server.apply(decode_update(&first).unwrap()).unwrap(),
            Applied::Changed
        );
        assert_eq!(text_of(&server), "abcd");
    }

    /// Bad bytes are refused with a typed error, never a panic.
    #[test]
    fn garbage_and_truncated_updates_are_refused() {
        assert_eq!(decode_update(&[]).unwrap_err(), UpdateDecodeError::Empty);
        let client = Doc::new();
        let update = edit(&client, |txn, t| t.insert(txn, 0, "hello world"));
        for cut in 1..update.len() {
            // A truncated update must either fail to decode or, if a prefix
            // happens to decode, never panic when applied.
            if let Ok(decoded) = decode_update(&update[..cut]) {
                let _ = DocState::empty().apply(decoded);
            }
        }
        assert!(decode_update(b"definitely not a yjs update, just text").is_err());
        assert!(decode_state_vector(&[0xff, 0xff, 0xff]).is_err());
        assert_eq!(decode_state_vector(&[]).unwrap(), StateVector::default());
    }

    /// Loading from stored changes reproduces the document and counts the
    /// deltas since the last snapshot.
    #[test]
    fn load_replays_changes_and_counts_deltas() {
        let client = Doc::new();
        let a = edit(&client, |txn, t| t.insert(txn, 0, "ab"));
        let b = edit(&client, |txn, t| t.insert(txn, 2, "c"));
        let change = |seq, kind, payload: &[u8]| Change {
            seq,
            doc: crate::DocId::new("d").unwrap(),
            kind,
            payload: payload.to_vec(),
            schema_version: 1,
            origin: None,
            author: None,
            committed_ms: 0,
            log_checksum: 0,
        };
        let state = DocState::load(&[
            change(1, ChangeKind::Snapshot, &a),
            change(2, ChangeKind::Update, &b),
        ])
        .unwrap();
        assert_eq!(text_of(&state), "abc");
        assert_eq!(
            (
                state.deltas_since_snapshot,
                state.delta_bytes_since_snapshot
            ),
            (1, b.len() as u64)
        );
        assert!(!state.deleted);
        let state = DocState::load(&[
            change(1, ChangeKind::Update, &a),
            change(2, ChangeKind::Delete, &[]),
        ])
        .unwrap();
        assert!(state.deleted);
        assert!(DocState::load(&[change(1, ChangeKind::Update, b"junk")]).is_err());
    }

    /// yrs integrates a block whose clock leaves a gap for its client when
    /// its origins are known: the state vector does not move, yet the text
    /// changes. Such an update must be logged, not dropped as a no-op.
    #[test]
    fn update_with_a_clock_gap_is_not_a_noop() {
        let client = Doc::new();
        let a = edit(&client, |txn, t| t.insert(txn, 0, "ok1 "));
        let _elsewhere = edit(&client, |txn, t| t.insert(txn, 0, "o"));
        let c = edit(&client, |txn, t| t.insert(txn, 4, "LOST "));
        let mut server = DocState::empty();
        assert_eq!(
            server.apply(decode_update(&a).unwrap()).unwrap(),
            Applied::Changed
        );
        assert_eq!(
            server.apply(decode_update(&c).unwrap()).unwrap(),
            Applied::Changed
        );
        assert_eq!(
            server.apply(decode_update(&c).unwrap()).unwrap(),
            Applied::NoOp
        );
    }

    /// yrs integrates an update after a clock gap of its client when its
    /// origins are known (a "skip"), and a state-vector diff against a
    /// client that reaches the gap leaves it out. Such a document must count
    /// as pending, so reads lower their cursor and compaction waits; the
    /// simulation found a replica that never received the content.
    #[test]
    fn recovery_after_a_clock_gap_is_not_lost() {
        let writer = Doc::with_client_id(7);
        let a = edit(&writer, |txn, t| t.insert(txn, 0, "ok1 "));
        let gap = edit(&writer, |txn, t| t.insert(txn, 0, "o"));
        let after_gap = edit(&writer, |txn, t| t.insert(txn, 5, "LOST "));
        let mut server = DocState::empty();
        server.apply(decode_update(&a).unwrap()).unwrap();
        server.apply(decode_update(&after_gap).unwrap()).unwrap();
        // A reader that has `a` asks for what it lacks.
        let reader = Doc::new();
        reader
            .transact_mut()
            .apply_update(decode_update(&a).unwrap())
            .unwrap();
        let diff = server.encode_diff(&reader.transact().state_vector());
        reader
            .transact_mut()
            .apply_update(decode_update(&diff).unwrap())
            .unwrap();
        let text = |d: &Doc| d.get_or_insert_text("t").get_string(&d.transact());
        let server_text = text(server.doc());
        assert_ne!(
            text(&reader),
            server_text,
            "yrs 0.28 leaves post-gap blocks out of a diff; if this fails, yrs \
             changed and the skip detection below may be unnecessary"
        );
        assert!(
            server.has_pending(),
            "a document with a skip counts as pending"
        );
        // Once the gap is filled, nothing is pending any more.
        server.apply(decode_update(&gap).unwrap()).unwrap();
        assert!(!server.has_pending());
        // And a document loaded from the same changes says the same.
        let change = |seq, payload: &Vec<u8>| Change {
            seq,
            doc: crate::name::DocId::new("d").unwrap(),
            kind: ChangeKind::Update,
            payload: payload.clone(),
            schema_version: 1,
            origin: None,
            author: None,
            committed_ms: 0,
            log_checksum: 0,
        };
        let loaded = DocState::load(&[change(1, &a), change(2, &after_gap)]).unwrap();
        assert!(loaded.has_pending());
    }

    /// F2, third witness (found by the 2026-12-03 fuzz run): this update
    /// survives an encode/decode round trip on its own, yet the document
    /// it leaves encodes into bytes yrs cannot decode. It carries legacy
    /// JSON content, which a push must not carry at all.
    #[test]
    fn json_content_that_survives_a_round_trip_is_still_refused() {
        let witness = include_bytes!("../../fuzz/regressions/push_bytes/f2-round-trip-survivor");
        let update = decode_update(witness).unwrap();
        let round_trip = Update::decode_v1(&update.encode_v1());
        assert!(round_trip.is_ok(), "the old check let it through");
        let err = decode_pushed_update(witness).unwrap_err();
        assert!(err.to_string().contains("legacy JSON"), "{err}");
    }

    /// F5 (found by the 2026-12-03 fuzz run under ASan): an update naming
    /// one client in two sections whose clocks overlap made yrs overwrite
    /// an integrated item in its block store while the document still
    /// linked it; the next update read freed memory. It is refused before
    /// yrs sees it, and a typing update naming its client once passes.
    #[test]
    fn a_client_in_two_overlapping_sections_is_refused() {
        let witness = include_bytes!("../../fuzz/regressions/push_bytes/f5-overlapping-sections");
        let (_, second_half) = witness.split_at(witness.len() / 2);
        assert!(decode_update(second_half).is_ok(), "yrs accepts it");
        let err = decode_pushed_update(second_half).unwrap_err();
        assert!(err.to_string().contains("two sections"), "{err}");
        let mut state = DocState::empty();
        for push in [&witness[..], second_half, &witness[..witness.len() / 2]] {
            if let Ok(update) = decode_pushed_update(push) {
                let _ = state.apply(update);
            }
        }
    }

    /// F6 (found by the 2026-12-03 fuzz run): an item whose right origin
    /// is a later clock of its own client. The server integrates it once
    /// that item arrives, but the document's encoding never loads on a
    /// fresh client (the item waits for one that comes after it), so a
    /// reader would silently miss content. Refused as a causality
    /// violation, on pushes.
    #[test]
    fn an_item_referring_to_a_later_item_of_its_own_client_is_refused() {
        let witness =
            include_bytes!("../../fuzz/regressions/push_bytes/f6-refers-to-a-later-clock");
        let (_, second_half) = witness.split_at(witness.len() / 2);
        assert!(decode_update(second_half).is_ok(), "yrs accepts it");
        let err = decode_pushed_update(second_half).unwrap_err();
        assert!(
            err.to_string().contains("later item of its own client"),
            "{err}"
        );
    }

    /// F7 (LeakSanitizer, 2026-12-03 fuzz run): yrs 0.28.1 leaks every
    /// subdocument it decodes, so any writer could grow the server's
    /// memory without bound by pushing them. A push with a subdocument is
    /// refused before yrs decodes it; the scan reads it without building a
    /// `Doc`.
    #[test]
    fn a_subdocument_is_refused_before_yrs_decodes_it() {
        let witness = include_bytes!("../../fuzz/regressions/push_bytes/f7-subdocument-leak");
        let err = decode_pushed_update(witness).unwrap_err();
        assert!(err.to_string().contains("subdocument"), "{err}");
        let doc = Doc::with_client_id(1 << 22);
        let map = doc.get_or_insert_map("m");
        let update = {
            let mut txn = doc.transact_mut();
            yrs::Map::insert(&map, &mut txn, "sub", Doc::new());
            txn.encode_update_v1()
        };
        let err = decode_pushed_update(&update).unwrap_err();
        assert!(err.to_string().contains("subdocument"), "{err}");
    }

    /// The scan must never let a yrs panic out (found by the fuzzer: a
    /// client id of 53 bits or more trips a debug assertion in yrs's
    /// `ClientID::new`); in the actor such a panic would stop the
    /// collection.
    #[test]
    fn a_panicking_client_id_in_the_scan_is_a_typed_error() {
        let witness = include_bytes!("../../fuzz/regressions/push_bytes/f8-scan-client-id-panic");
        for bytes in [
            &witness[..],
            &witness[witness.len() / 2..],
            &witness[..witness.len() / 2],
        ] {
            let _ = decode_pushed_update(bytes);
        }
        // A section naming client 2^60 (a 9-byte varint), one empty item.
        let mut update = vec![1u8, 1];
        let mut id = 1u64 << 60;
        while id >= 0x80 {
            update.push((id as u8) | 0x80);
            id >>= 7;
        }
        update.extend_from_slice(&[id as u8, 0, 4, 1, 0, 1, 97, 0]);
        assert!(decode_pushed_update(&update).is_err());
    }

    /// F3: the second of these pushes made yrs 0.28.1 read freed memory
    /// (valgrind and ASan both report it; nothing visible happens without
    /// them). It carries an item spanning the clock where the document's
    /// clocks of its client resume after a gap; it must be refused before
    /// yrs integrates anything, and the document stay as it was.
    #[test]
    fn an_item_spanning_the_end_of_a_clock_gap_is_refused() {
        let first = [
            1u8, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 255, 109, 31, 123, 0,
        ];
        let second = [
            1u8, 3, 1, 0, 4, 1, 1, 116, 3, 48, 32, 40, 1, 1, 0, 0, 1, 109, 1, 0, 0, 0,
        ];
        let mut state = DocState::empty();
        assert_eq!(
            state.apply(decode_update(&first).unwrap()).unwrap(),
            Applied::Changed
        );
        let before = (state.state_vector(), state.encode_state());
        let err = state.apply(decode_update(&second).unwrap()).unwrap_err();
        assert!(err.0.contains("resume after a gap"), "{err}");
        assert_eq!((state.state_vector(), state.encode_state()), before);
        // The saved fuzz input, cut and replayed the ways the fuzz target
        // does, never gets an item across a gap into yrs either.
        let saved = include_bytes!("../../fuzz/regressions/push_bytes/f3-use-after-free");
        let (a, b) = saved.split_at(saved.len() / 2);
        for pushes in [vec![&saved[..], &saved[..]], vec![b, a]] {
            let mut state = DocState::empty();
            for push in pushes {
                if let Ok(update) = decode_update(push) {
                    let _ = state.apply(update);
                }
            }
        }
    }

    /// Honest out-of-order delivery still works with the check in place: a
    /// block integrated after a gap, then the whole state of its writer
    /// (which spans the gap, block by block) fills it.
    #[test]
    fn a_full_state_filling_a_gap_passes_the_check() {
        let writer = Doc::with_client_id(7);
        let a = edit(&writer, |txn, t| t.insert(txn, 0, "ok1 "));
        let _gap = edit(&writer, |txn, t| t.insert(txn, 0, "o"));
        let after_gap = edit(&writer, |txn, t| t.insert(txn, 5, "more "));
        let whole = writer
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let mut server = DocState::empty();
        server.apply(decode_update(&a).unwrap()).unwrap();
        server.apply(decode_update(&after_gap).unwrap()).unwrap();
        assert!(server.has_gap, "the test needs a gap");
        assert_eq!(
            server.apply(decode_update(&whole).unwrap()).unwrap(),
            Applied::Changed
        );
        assert!(!server.has_gap, "a filled gap clears the flag");
        assert_eq!(text_of(&server), "ook1 more ");
    }

    /// A 4-byte update declaring 124 million clients made yrs reserve
    /// gigabytes before failing (fuzz finding F1): it is refused up front,
    /// and honest updates still decode.
    #[test]
    fn update_declaring_more_clients_than_bytes_is_refused_cheaply() {
        assert!(matches!(
            decode_update(&[214, 201, 154, 59]),
            Err(UpdateDecodeError::Malformed(m)) if m.contains("clients")
        ));
        let doc = Doc::new();
        let update = edit(&doc, |txn, t| t.insert(txn, 0, "hello"));
        assert!(decode_update(&update).is_ok());
        assert!(decode_update(&[0, 0]).is_ok(), "the empty update");
    }
}
