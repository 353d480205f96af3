//! Schema migrations: steps `v → v+1` over one document, run so that the
//! same migration met twice merges to one.
//!
//! An app changes the shape of its documents between releases (a map key is
//! renamed, a field gets a default). Data written by an older release must
//! never be handed to a newer one as "invalid" (Verdant's client pruned such
//! data and the user saw it lost), so the host registers each change of
//! shape as a [`Migrations`] step and seqsync runs the steps wherever old
//! data meets a newer version: when a store is opened, when an old client
//! pushes, when a client resets to the server's state and migrates its own
//! offline edits.
//!
//! Why the client id matters. A step writes Yjs blocks, and blocks are named
//! by (client id, clock). The same step can run on the same data in two
//! places (two engine nodes, a restore on a second machine, a client that
//! migrates what it holds):
//! - with a fresh random client id per run, merging both results would hold
//!   every insert twice (a `Y.Array` append, a `Y.Text` insert);
//! - with one fixed client id for runs on *different* states, yrs would see
//!   two different blocks under one id and replicas would diverge silently.
//!
//! So each step runs under a client id derived from the document id, the
//! step's version and a digest of the state it starts from
//! ([`migration_client_id`]): identical inputs give byte-identical updates,
//! different inputs get different ids. The ids lie in a reserved low range
//! ([`MIGRATION_CLIENT_IDS`]) because yrs resolves concurrent map sets in
//! favour of the higher client id: a user's concurrent edit wins over a
//! step's default. If the derived id is already present in the input state
//! (an earlier run on another state happened to derive it), the derivation
//! moves on deterministically until it finds a free one.
//!
//! Steps are re-runnable by contract: a step moves whatever is still in the
//! old shape, and on a document already in the new shape it changes
//! nothing, in which case nothing is logged.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use yrs::updates::decoder::Decode;
use yrs::{ClientID, Doc, Options, ReadTxn, StateVector, Transact, TransactionMut, Update};

use crate::error::{OpenError, StorageError};
use crate::name::{CollectionName, DocId};
use crate::yjs::DocState;

/// Client ids reserved for migration steps (`1..65,536`).
///
/// Every step's blocks are written under an id from this range, below every
/// id a Yjs client picks at random (JavaScript: 32 bits, yrs: 53 bits) in all
/// but 1 in 65,536 sessions. The engine refuses pushes that write blocks
/// under this range unless they declare the collection's current schema
/// version (a client that ran [`Migrations`] itself and pushes the result).
pub const MIGRATION_CLIENT_IDS: Range<u64> = 1..65_536;

/// The peer id recorded as the origin of every change a migration logs.
pub const MIGRATION_ORIGIN: &str = "migration";

/// The schema version of a collection when no step is registered.
pub const INITIAL_SCHEMA_VERSION: u32 = 1;

/// How many derived ids are tried before giving up (each one was found in
/// the input state): 64 collisions in a row in a 65,535-id range means the
/// document holds thousands of migration clients, which no real history
/// produces.
const MAX_CLIENT_ID_PROBES: u32 = 64;

/// A step refused to migrate a document. Returned by a host's step; the
/// migration stops and nothing of the document is written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StepError(pub String);

impl StepError {
    /// A refusal with a message that says what the document lacks.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Running migration steps failed. Nothing the failing step produced is
/// written anywhere.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrationError {
    /// The host's step refused the document.
    #[error("migration step {from} -> {to} refused document {doc}: {reason}")]
    StepRefused {
        /// The document.
        doc: String,
        /// The step's input version.
        from: u32,
        /// The step's output version.
        to: u32,
        /// The step's message.
        reason: String,
    },
    /// The host's step panicked; fix the step (the document is untouched).
    #[error("migration step {from} -> {to} panicked on document {doc}; fix the step")]
    StepPanicked {
        /// The document.
        doc: String,
        /// The step's input version.
        from: u32,
        /// The step's output version.
        to: u32,
    },
    /// No registered steps lead from `from` to `to`.
    #[error("no migration from schema version {from} to {to}: register the steps from {from} (registered: {registered})")]
    NoPath {
        /// The version the data is at.
        from: u32,
        /// The version asked for.
        to: u32,
        /// The registered steps, e.g. `1..3`.
        registered: String,
    },
    /// Every derived client id was already present in the document.
    #[error("no free migration client id for document {doc} at version {version}")]
    NoFreeClientId {
        /// The document.
        doc: String,
        /// The step's input version.
        version: u32,
    },
    /// The document's state or a step's output did not load into yrs.
    #[error("document {doc} could not be migrated: {reason}")]
    Apply {
        /// The document.
        doc: String,
        /// What yrs said.
        reason: String,
    },
    /// The store failed while a collection was migrated.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What one step changed in one document: an ordinary Yjs v1 update, to be
/// logged as an `Update` change at version `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepOutput {
    /// The step's input version.
    pub from: u32,
    /// The step's output version.
    pub to: u32,
    /// The client id the step's blocks are written under (in
    /// [`MIGRATION_CLIENT_IDS`]).
    pub client_id: u64,
    /// The update (Yjs v1).
    pub update: Vec<u8>,
}

/// The signature of a step: edit one document in place, or refuse it.
pub type StepFn = dyn Fn(&DocId, &mut TransactionMut<'_>) -> Result<(), StepError> + Send + Sync;

/// The registered steps of an app's schema, `v → v+1`.
///
/// Build it once at startup and hand it to the engine (and to any Rust
/// client that migrates what it holds). Registration does not fail on the
/// spot; a gap or a duplicate is reported by [`Migrations::validate`], which
/// the engine calls when it opens, as an [`OpenError`] naming the versions.
///
/// **Contract for steps** (the engine relies on it):
/// - a step's effect depends only on the document it is given (no clock, no
///   randomness, no outside state), so two runs on one state write the same
///   bytes;
/// - a step is re-runnable: it moves what is still in the old shape and
///   leaves a document already in the new shape untouched (then nothing is
///   logged);
/// - a step never loses a field: it copies before it deletes.
#[derive(Clone, Default)]
pub struct Migrations {
    steps: BTreeMap<u32, Arc<StepFn>>,
    /// Steps a client must not run itself (see
    /// [`Migrations::server_only_step`]).
    server_only: BTreeSet<u32>,
    duplicates: Vec<u32>,
}

impl fmt::Debug for Migrations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migrations")
            .field("steps", &self.steps.keys().collect::<Vec<_>>())
            .field("server_only", &self.server_only)
            .field("duplicates", &self.duplicates)
            .finish()
    }
}

impl Migrations {
    /// No steps: the schema version stays [`INITIAL_SCHEMA_VERSION`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the step from version `from` to `from + 1`.
    ///
    /// Never fails here: registering `from` twice (or `from = 0`) is kept and
    /// reported by [`Migrations::validate`].
    pub fn step<F>(mut self, from: u32, step: F) -> Self
    where
        F: Fn(&DocId, &mut TransactionMut<'_>) -> Result<(), StepError> + Send + Sync + 'static,
    {
        if self.steps.insert(from, Arc::new(step)).is_some() {
            self.duplicates.push(from);
        }
        self.server_only.remove(&from);
        self
    }

    /// Registers the step from `from` to `from + 1` as one that only the
    /// server runs: a client replica holding data at `from` waits for the
    /// server's migration instead of running it on its own copy.
    ///
    /// Why: a step that is safe to meet twice on one state (the derived
    /// client ids make both runs byte-identical) may still not be safe on
    /// two *different* states, e.g. one that appends a default element to an
    /// array: a client and the server would each append one. Declare such a
    /// step server-only. The engine runs it like any other step.
    pub fn server_only_step<F>(self, from: u32, step: F) -> Self
    where
        F: Fn(&DocId, &mut TransactionMut<'_>) -> Result<(), StepError> + Send + Sync + 'static,
    {
        let mut this = self.step(from, step);
        this.server_only.insert(from);
        this
    }

    /// Whether the step from `from` is server-only.
    pub fn is_server_only(&self, from: u32) -> bool {
        self.server_only.contains(&from)
    }

    /// How far a client can migrate data at version `from` by itself: the
    /// version reached by running the registered steps from `from` up to the
    /// first server-only one (or to [`Migrations::latest`]). `from` itself
    /// when the next step is server-only or missing.
    pub fn client_reach(&self, from: u32) -> u32 {
        let mut version = from;
        while version < self.latest()
            && self.steps.contains_key(&version)
            && !self.server_only.contains(&version)
        {
            version += 1;
        }
        version
    }

    /// The newest version: one past the last step, or
    /// [`INITIAL_SCHEMA_VERSION`] with none registered.
    pub fn latest(&self) -> u32 {
        self.steps
            .keys()
            .next_back()
            .map_or(INITIAL_SCHEMA_VERSION, |from| from.saturating_add(1))
    }

    /// The oldest version data can be migrated from (the first step's input,
    /// or [`Migrations::latest`] with none registered).
    pub fn oldest(&self) -> u32 {
        self.steps.keys().next().copied().unwrap_or(self.latest())
    }

    /// Whether any step is registered.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Checks the registration: no duplicate step, no gap, no step from 0 or
    /// from `u32::MAX`.
    ///
    /// Errors: [`OpenError::DuplicateMigrationStep`],
    /// [`OpenError::MigrationGap`], [`OpenError::InvalidMigrationStep`].
    pub fn validate(&self) -> Result<(), OpenError> {
        if let Some(&from) = self.duplicates.first() {
            return Err(OpenError::DuplicateMigrationStep {
                from,
                to: from.saturating_add(1),
            });
        }
        for &from in self.steps.keys() {
            if from == 0 || from == u32::MAX {
                return Err(OpenError::InvalidMigrationStep { from });
            }
        }
        let froms: Vec<u32> = self.steps.keys().copied().collect();
        for pair in froms.windows(2) {
            if pair[1] != pair[0] + 1 {
                return Err(OpenError::MigrationGap {
                    reached: pair[0] + 1,
                    next_step_from: pair[1],
                });
            }
        }
        Ok(())
    }

    /// Checks that a collection stored at `stored` can be served by an engine
    /// with these steps: not newer than [`Migrations::latest`], and not older
    /// than [`Migrations::oldest`] unless it is already current.
    ///
    /// Errors: [`OpenError::StoreNewerThanSchema`],
    /// [`OpenError::NoMigrationPath`].
    pub fn check_stored(&self, collection: &CollectionName, stored: u32) -> Result<(), OpenError> {
        let latest = self.latest();
        if stored > latest {
            return Err(OpenError::StoreNewerThanSchema {
                collection: collection.to_string(),
                stored,
                latest,
            });
        }
        if stored < latest && stored < self.oldest() {
            return Err(OpenError::NoMigrationPath {
                collection: collection.to_string(),
                stored,
                oldest_step_from: self.oldest(),
            });
        }
        Ok(())
    }

    /// A description of the registered range, e.g. `1..3` or `none`.
    fn registered(&self) -> String {
        if self.steps.is_empty() {
            "none".to_owned()
        } else {
            format!("{}..{}", self.oldest(), self.latest())
        }
    }

    /// Runs the steps `from → to` on a copy of `state` and returns what each
    /// step changed, in order (steps that changed nothing are left out).
    /// `state` itself is not modified; apply the outputs to it (or log them)
    /// to take the result.
    ///
    /// Deterministic: the same document id and state give byte-identical
    /// outputs on every machine (see the module docs). Pure CPU work, no I/O;
    /// memory is a few copies of the document. Structures yrs still holds as
    /// pending (their dependencies are missing) are not part of the state a
    /// step sees: they are invisible to every reader until they integrate.
    ///
    /// Errors: [`MigrationError::NoPath`] when the steps do not cover
    /// `from..to`; a step's refusal or panic; [`MigrationError::Apply`] if the
    /// state does not load into yrs.
    pub fn migrate(
        &self,
        doc: &DocId,
        state: &Doc,
        from: u32,
        to: u32,
    ) -> Result<Vec<StepOutput>, MigrationError> {
        if from > to || (from < to && (from < self.oldest() || to > self.latest())) {
            return Err(MigrationError::NoPath {
                from,
                to,
                registered: self.registered(),
            });
        }
        let mut outputs = Vec::new();
        // The state between steps lives in a document of its own (its
        // client id is never used to write): each step's output is applied
        // to it and the next step starts from its encoding.
        let between = Doc::with_options(step_options(ClientID::new(MIGRATION_CLIENT_IDS.start)));
        let apply_error = |reason: String| MigrationError::Apply {
            doc: doc.to_string(),
            reason,
        };
        load_into(
            &between,
            &state.transact().encode_diff_v1(&StateVector::default()),
        )
        .map_err(apply_error)?;
        for version in from..to {
            let Some(step) = self.steps.get(&version) else {
                return Err(MigrationError::NoPath {
                    from,
                    to,
                    registered: self.registered(),
                });
            };
            let input = between.transact().encode_diff_v1(&StateVector::default());
            if let Some(output) = run_step(doc, version, step.as_ref(), &input)? {
                load_into(&between, &output.update).map_err(apply_error)?;
                outputs.push(output);
            }
        }
        Ok(outputs)
    }

    /// Like [`Migrations::migrate`] on a [`DocState`], and applies each output
    /// to it in turn (the document ends at version `to`).
    ///
    /// Errors: as [`Migrations::migrate`]; if applying an output fails the
    /// state may hold part of the outputs and must be reloaded.
    pub fn migrate_state(
        &self,
        doc: &DocId,
        state: &mut DocState,
        from: u32,
        to: u32,
    ) -> Result<Vec<StepOutput>, MigrationError> {
        let outputs = self.migrate(doc, state.doc(), from, to)?;
        for output in &outputs {
            let update = decode(doc, &output.update)?;
            state.apply(update).map_err(|e| MigrationError::Apply {
                doc: doc.to_string(),
                reason: e.to_string(),
            })?;
        }
        Ok(outputs)
    }
}

fn decode(doc: &DocId, bytes: &[u8]) -> Result<Update, MigrationError> {
    Update::decode_v1(bytes).map_err(|e| MigrationError::Apply {
        doc: doc.to_string(),
        reason: e.to_string(),
    })
}

/// Runs one step on a fresh document holding `input` (an encoded state),
/// under the client id derived from that state. `None` if the step changed
/// nothing.
fn run_step(
    doc: &DocId,
    version: u32,
    step: &StepFn,
    input: &[u8],
) -> Result<Option<StepOutput>, MigrationError> {
    let apply_error = |reason: String| MigrationError::Apply {
        doc: doc.to_string(),
        reason,
    };
    // Load the input into a throwaway document to read its digest: the
    // derived id must not depend on how the caller's document happened to
    // split its blocks.
    let probe = Doc::with_options(step_options(ClientID::new(MIGRATION_CLIENT_IDS.start)));
    load_into(&probe, input).map_err(apply_error)?;
    let (digest_input, present) = {
        let txn = probe.transact();
        (canonical_state(&txn), txn.state_vector())
    };
    let client_id = migration_client_id(doc, version, &digest_input, |id| {
        present.contains_client(&ClientID::new(id))
    })
    .ok_or_else(|| MigrationError::NoFreeClientId {
        doc: doc.to_string(),
        version,
    })?;
    let work = Doc::with_options(step_options(ClientID::new(client_id)));
    load_into(&work, input).map_err(apply_error)?;
    let mut txn = work.transact_mut();
    let result = catch_unwind(AssertUnwindSafe(|| step(doc, &mut txn)));
    let to = version + 1;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(StepError(reason))) => {
            return Err(MigrationError::StepRefused {
                doc: doc.to_string(),
                from: version,
                to,
                reason,
            })
        }
        Err(_) => {
            return Err(MigrationError::StepPanicked {
                doc: doc.to_string(),
                from: version,
                to,
            })
        }
    }
    if txn.insert_set().is_empty() && txn.delete_set().is_empty() {
        return Ok(None);
    }
    Ok(Some(StepOutput {
        from: version,
        to,
        client_id,
        update: txn.encode_update_v1(),
    }))
}

/// Options of the documents steps run in: UTF-16 offsets as JavaScript
/// clients count (like every server-side document) and a fixed guid, so
/// nothing random enters a step's document.
fn step_options(client_id: ClientID) -> Options {
    Options {
        client_id,
        guid: "seqsync-migration".into(),
        offset_kind: yrs::OffsetKind::Utf16,
        ..Options::default()
    }
}

fn load_into(doc: &Doc, input: &[u8]) -> Result<(), String> {
    let update = Update::decode_v1(input).map_err(|e| e.to_string())?;
    let mut txn = doc.transact_mut();
    match catch_unwind(AssertUnwindSafe(|| txn.apply_update(update))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("yrs panicked while loading the state".to_owned()),
    }
}

/// A canonical byte string of a document's state: its state vector sorted
/// by client, then its delete set sorted by client and range. Two documents
/// with the same blocks and deletions give the same bytes whatever their
/// history (never the encoded update, whose bytes depend on it).
pub fn canonical_state<T: ReadTxn>(txn: &T) -> Vec<u8> {
    let snapshot = txn.snapshot();
    let mut clocks: Vec<(u64, u32)> = snapshot
        .state_map
        .iter()
        .map(|(client, clock)| (client.get(), *clock))
        .collect();
    clocks.sort_unstable();
    let mut deleted: Vec<(u64, Vec<(u32, u32)>)> = snapshot
        .delete_set
        .iter()
        .map(|(client, ranges)| {
            let mut spans: Vec<(u32, u32)> = ranges.iter().map(|r| (r.start, r.end)).collect();
            spans.sort_unstable();
            (client.get(), merge_spans(spans))
        })
        .filter(|(_, spans)| !spans.is_empty())
        .collect();
    deleted.sort_unstable();
    let mut out = Vec::with_capacity(16 + clocks.len() * 12);
    out.extend_from_slice(&(clocks.len() as u64).to_le_bytes());
    for (client, clock) in clocks {
        out.extend_from_slice(&client.to_le_bytes());
        out.extend_from_slice(&clock.to_le_bytes());
    }
    out.extend_from_slice(&(deleted.len() as u64).to_le_bytes());
    for (client, spans) in deleted {
        out.extend_from_slice(&client.to_le_bytes());
        out.extend_from_slice(&(spans.len() as u64).to_le_bytes());
        for (start, end) in spans {
            out.extend_from_slice(&start.to_le_bytes());
            out.extend_from_slice(&end.to_le_bytes());
        }
    }
    out
}

/// Sorted spans with touching or overlapping neighbours joined, so a delete
/// set recorded in pieces and one recorded whole compare equal.
fn merge_spans(sorted: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(sorted.len());
    for (start, end) in sorted {
        if start >= end {
            continue;
        }
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

/// The client id a step from `version` runs under on document `doc` whose
/// state is `canonical` (from [`canonical_state`]): BLAKE3 of the three,
/// folded into [`MIGRATION_CLIENT_IDS`]. If `taken(id)` says the id is
/// already present in the state, the next probe is hashed, up to 64 times.
/// `None` if every probe was taken.
pub fn migration_client_id(
    doc: &DocId,
    version: u32,
    canonical: &[u8],
    taken: impl Fn(u64) -> bool,
) -> Option<u64> {
    let span = MIGRATION_CLIENT_IDS.end - MIGRATION_CLIENT_IDS.start;
    for probe in 0..MAX_CLIENT_ID_PROBES {
        let mut hasher = blake3::Hasher::new_derive_key("seqsync 2026-12 migration client id");
        hasher.update(&(doc.as_str().len() as u64).to_le_bytes());
        hasher.update(doc.as_str().as_bytes());
        hasher.update(&version.to_le_bytes());
        hasher.update(&probe.to_le_bytes());
        hasher.update(canonical);
        let hash = hasher.finalize();
        let mut word = [0u8; 8];
        word.copy_from_slice(&hash.as_bytes()[..8]);
        let id = MIGRATION_CLIENT_IDS.start + u64::from_le_bytes(word) % span;
        if !taken(id) {
            return Some(id);
        }
    }
    None
}

/// Whether an update writes blocks under [`MIGRATION_CLIENT_IDS`] (the
/// lowest such client, if any). Deletions do not count: deleting a step's
/// content is an ordinary edit.
pub fn reserved_client_in(update: &Update) -> Option<u64> {
    update
        .state_vector_lower()
        .iter()
        .map(|(client, _)| client.get())
        .filter(|client| MIGRATION_CLIENT_IDS.contains(client))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Map, WriteTxn};

    fn doc_id(s: &str) -> DocId {
        DocId::new(s).unwrap()
    }

    /// A client replica runs steps only up to the first server-only one:
    /// `client_reach` is what it relies on, and re-registering a step as
    /// an ordinary one clears the flag.
    #[test]
    fn client_reach_stops_before_a_server_only_step() {
        let noop = |_: &DocId, _: &mut TransactionMut<'_>| Ok(());
        let steps = Migrations::new()
            .step(1, noop)
            .server_only_step(2, noop)
            .step(3, noop);
        assert_eq!(steps.latest(), 4);
        assert_eq!(steps.client_reach(1), 2);
        assert_eq!(steps.client_reach(2), 2, "the step from 2 is server-only");
        assert_eq!(steps.client_reach(3), 4);
        assert_eq!(steps.client_reach(4), 4);
        assert!(steps.is_server_only(2) && !steps.is_server_only(1));
        assert!(steps.validate().is_ok());
        let steps = steps.step(2, noop);
        assert_eq!(steps.client_reach(1), 4);
        assert!(matches!(
            steps.validate(),
            Err(OpenError::DuplicateMigrationStep { from: 2, .. })
        ));
        assert_eq!(Migrations::new().client_reach(1), 1);
    }

    fn rename_title(_: &DocId, txn: &mut TransactionMut<'_>) -> Result<(), StepError> {
        let map = txn.get_or_insert_map("root");
        if let Some(value) = map.get(txn, "title") {
            let text = value.to_string(txn);
            map.insert(txn, "name", text);
            map.remove(txn, "title");
        }
        Ok(())
    }

    #[test]
    fn registration_errors_name_both_versions() {
        // A gap or a duplicate would leave some stored version without a
        // path; the engine must refuse to open rather than guess.
        let noop = |_: &DocId, _: &mut TransactionMut<'_>| Ok(());
        let gap = Migrations::new().step(1, noop).step(3, noop);
        let err = gap.validate().unwrap_err();
        assert!(
            matches!(
                err,
                OpenError::MigrationGap {
                    reached: 2,
                    next_step_from: 3
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains('2') && err.to_string().contains('3'));
        let dup = Migrations::new().step(1, noop).step(1, noop);
        assert!(matches!(
            dup.validate().unwrap_err(),
            OpenError::DuplicateMigrationStep { from: 1, to: 2 }
        ));
        assert!(matches!(
            Migrations::new().step(0, noop).validate().unwrap_err(),
            OpenError::InvalidMigrationStep { from: 0 }
        ));
        let ok = Migrations::new().step(1, noop).step(2, noop);
        ok.validate().unwrap();
        assert_eq!((ok.oldest(), ok.latest()), (1, 3));
        assert_eq!(Migrations::new().latest(), 1);
        let c = CollectionName::new("c").unwrap();
        assert!(matches!(
            ok.check_stored(&c, 4).unwrap_err(),
            OpenError::StoreNewerThanSchema {
                stored: 4,
                latest: 3,
                ..
            }
        ));
        let later = Migrations::new().step(2, noop);
        assert!(matches!(
            later.check_stored(&c, 1).unwrap_err(),
            OpenError::NoMigrationPath {
                stored: 1,
                oldest_step_from: 2,
                ..
            }
        ));
        later.check_stored(&c, 3).unwrap();
    }

    #[test]
    fn a_step_runs_under_a_reserved_derived_id_and_reruns_as_no_op() {
        // The three properties every other part relies on, on one document.
        let source = Doc::with_options(Options {
            client_id: ClientID::new(9_000_000),
            ..Options::default()
        });
        {
            let mut txn = source.transact_mut();
            let map = txn.get_or_insert_map("root");
            map.insert(&mut txn, "title", "hello");
        }
        let migrations = Migrations::new().step(1, rename_title);
        let d = doc_id("d");
        let first = migrations.migrate(&d, &source, 1, 2).unwrap();
        let again = migrations.migrate(&d, &source, 1, 2).unwrap();
        assert_eq!(first, again, "same input, same bytes");
        assert_eq!(first.len(), 1);
        assert!(MIGRATION_CLIENT_IDS.contains(&first[0].client_id));
        let mut state = DocState::empty();
        state
            .apply(
                Update::decode_v1(&source.transact().encode_diff_v1(&StateVector::default()))
                    .unwrap(),
            )
            .unwrap();
        migrations.migrate_state(&d, &mut state, 1, 2).unwrap();
        {
            let txn = state.doc().transact();
            let map = txn.get_map("root").unwrap();
            assert_eq!(map.get(&txn, "name").unwrap().to_string(&txn), "hello");
            assert!(map.get(&txn, "title").is_none());
        }
        assert!(migrations
            .migrate(&d, state.doc(), 1, 2)
            .unwrap()
            .is_empty());
        let update = Update::decode_v1(&first[0].update).unwrap();
        assert_eq!(reserved_client_in(&update), Some(first[0].client_id));
    }

    #[test]
    fn a_refusing_or_panicking_step_is_a_typed_error() {
        // Host code fails; the engine must say which document and step.
        let d = doc_id("d");
        let doc = Doc::new();
        let refuse = Migrations::new().step(1, |_, _| Err(StepError::new("no root")));
        assert!(matches!(
            refuse.migrate(&d, &doc, 1, 2).unwrap_err(),
            MigrationError::StepRefused { from: 1, to: 2, .. }
        ));
        let panics = Migrations::new().step(1, |_, _| panic!("bug in step"));
        assert!(matches!(
            panics.migrate(&d, &doc, 1, 2).unwrap_err(),
            MigrationError::StepPanicked { from: 1, to: 2, .. }
        ));
        assert!(matches!(
            refuse.migrate(&d, &doc, 1, 3).unwrap_err(),
            MigrationError::NoPath { from: 1, to: 3, .. }
        ));
    }

    #[test]
    fn a_derived_id_present_in_the_state_is_skipped() {
        // An earlier run on another state may have taken the id this state
        // derives; reusing it would put two blocks under one id.
        let d = doc_id("d");
        let first = migration_client_id(&d, 1, b"state", |_| false).unwrap();
        let second = migration_client_id(&d, 1, b"state", |id| id == first).unwrap();
        assert_ne!(first, second);
        assert!(MIGRATION_CLIENT_IDS.contains(&second));
        assert_eq!(migration_client_id(&d, 1, b"state", |_| true), None);
    }
}
