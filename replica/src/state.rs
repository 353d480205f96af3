//! The sync state of each collection, kept as a small Yjs document in the
//! local collection `STATE_COLLECTION`: the server's epoch, the cursor and
//! its checksum, `pushed_through` (where the outbox starts), the local
//! schema version and the documents holding provisional migration output.
//!
//! Why a Yjs document in the same store: a commit may write several
//! collections atomically, so pulled changes and the cursor that covers
//! them, or a push's acknowledgement and the outbox position, land in one
//! local transaction (`commit_with_state`). The parsed state and its
//! document are cached per collection and replaced only after a commit
//! succeeds.

use std::collections::BTreeMap;

use seqsync_engine::{
    load_document, now_ms, Change, ChangeKind, CollectionName, CollectionWrite, Compaction, Epoch,
    Seq, Storage, StorageError, WriteBatch, INITIAL_SCHEMA_VERSION,
};
use yrs::types::ToJson;
use yrs::{Any, Doc, Map, ReadTxn, StateVector, Transact, WriteTxn};

use crate::error::ReplicaError;
use crate::local_log::base_of;
use crate::replica::{apply_bytes, doc_id, state_collection, Local, Replica};
use crate::transport::Transport;

/// State-document changes after which the state document is compacted (in
/// the commit that writes the next one).
pub(crate) const STATE_COMPACT_EVERY: u64 = 256;

/// The sync state of one collection, as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SyncState {
    pub(crate) epoch: Option<Epoch>,
    pub(crate) cursor: Seq,
    pub(crate) pushed_through: Seq,
    /// The schema version every local document of the collection is at.
    pub(crate) local_version: u32,
    /// Documents holding provisional migration output of the replica's
    /// own (never pushed yet), with the local seq of its first change.
    pub(crate) provisional: BTreeMap<String, Seq>,
    /// Changes of the state document since it was last compacted.
    pub(crate) state_changes: u64,
    /// The server's log checksum at `cursor`, when known: sent with the next
    /// page request so a reused seq is noticed.
    pub(crate) cursor_checksum: Option<u64>,
}

pub(crate) fn local_epoch() -> Result<Epoch, ReplicaError> {
    Epoch::random()
        .map_err(|e| ReplicaError::Local(StorageError::backend("replica", "choosing an epoch", e)))
}

/// The state document `doc` of the state collection, loaded.
pub(crate) fn load_state_doc(storage: &dyn Storage, doc: &str) -> Result<Doc, ReplicaError> {
    let holder = Doc::new();
    let id = doc_id(doc)?;
    if let Some(loaded) = load_document(storage, &state_collection()?, &id)? {
        apply_bytes(&holder, &loaded.state.encode_state(), doc)?;
    }
    Ok(holder)
}

pub(crate) fn read_any(doc: &Doc, key: &str) -> Option<Any> {
    let txn = doc.transact();
    let map = txn.get_map("sync")?;
    map.get(&txn, key).map(|v| v.to_json(&txn))
}

/// Numbers are stored as decimal strings: exact for every u64, whatever a
/// JSON-minded reader does with numbers.
pub(crate) fn read_u64(doc: &Doc, key: &str) -> Option<u64> {
    read_string(doc, key)?.parse().ok()
}

pub(crate) fn read_string(doc: &Doc, key: &str) -> Option<String> {
    match read_any(doc, key)? {
        Any::String(s) => Some(s.to_string()),
        _ => None,
    }
}

/// An update of a state document setting `values` (numbers are written as
/// decimal strings), applied to `doc` as well.
pub(crate) fn state_update(doc: &Doc, values: &[(&str, String)]) -> Vec<u8> {
    let mut txn = doc.transact_mut();
    let map = txn.get_or_insert_map("sync");
    for (key, value) in values {
        map.insert(&mut txn, *key, value.clone());
    }
    txn.encode_update_v1()
}

pub(crate) fn state_collection_write(
    storage: &dyn Storage,
    doc: &str,
    update: Vec<u8>,
) -> Result<CollectionWrite, ReplicaError> {
    let sc = state_collection()?;
    let (base, head) = base_of(storage, &sc)?;
    Ok(CollectionWrite {
        collection: sc,
        base,
        append: vec![Change {
            seq: head + 1,
            doc: doc_id(doc)?,
            kind: ChangeKind::Update,
            payload: update,
            schema_version: 1,
            origin: None,
            author: None,
            committed_ms: 0,
            log_checksum: 0,
        }],
        compact: Vec::new(),
        peers: Vec::new(),
        raise_schema_version: None,
        append_mode: Default::default(),
    })
}

pub(crate) fn commit_state(
    storage: &dyn Storage,
    doc: &str,
    update: Vec<u8>,
    extra: Vec<CollectionWrite>,
) -> Result<(), ReplicaError> {
    let mut writes = extra;
    writes.push(state_collection_write(storage, doc, update)?);
    storage.commit(&WriteBatch { writes })?;
    Ok(())
}

impl Local {
    pub(crate) fn sync_state(&self, c: &CollectionName) -> Result<SyncState, ReplicaError> {
        Ok(self.cached_state(c)?.0)
    }

    /// The sync state of `c` and its state document, from the cache or
    /// loaded from the store (and cached).
    pub(crate) fn cached_state(
        &self,
        c: &CollectionName,
    ) -> Result<(SyncState, Doc), ReplicaError> {
        if let Some(found) = self.states.lock().ok().and_then(|s| s.get(c).cloned()) {
            return Ok(found);
        }
        let doc = load_state_doc(&*self.storage, c.as_str())?;
        let local_version = match read_u64(&doc, "local_version") {
            Some(version) => u32::try_from(version).unwrap_or(u32::MAX),
            // A store from before versions were kept: data already there
            // is at the first version if the app can migrate it, and a
            // collection with nothing local yet starts at the app's.
            None if !self.migrations.is_empty() && self.storage.collection(c)?.is_some() => {
                INITIAL_SCHEMA_VERSION
            }
            None => self.app_version(),
        };
        let provisional = read_string(&doc, "provisional")
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default();
        let state = SyncState {
            epoch: read_string(&doc, "epoch").and_then(|e| Epoch::parse_hex(&e)),
            cursor: read_u64(&doc, "cursor").unwrap_or(0),
            pushed_through: read_u64(&doc, "pushed_through").unwrap_or(0),
            local_version,
            provisional,
            // Unknown after a restart: count from here.
            state_changes: 0,
            cursor_checksum: read_string(&doc, "cursor_checksum")
                .and_then(|h| u64::from_str_radix(&h, 16).ok()),
        };
        if let Ok(mut states) = self.states.lock() {
            states.insert(c.clone(), (state.clone(), doc.clone()));
        }
        Ok((state, doc))
    }

    /// Commits `writes` together with `state` as the sync state of `c`, in
    /// one transaction, and caches it once committed.
    pub(crate) fn commit_with_state(
        &self,
        c: &CollectionName,
        state: &SyncState,
        mut writes: Vec<CollectionWrite>,
    ) -> Result<(), ReplicaError> {
        let (stored, doc) = self.cached_state(c)?;
        let provisional = serde_json::to_string(&state.provisional).unwrap_or_default();
        let update = state_update(
            &doc,
            &[
                ("cursor", state.cursor.to_string()),
                ("pushed_through", state.pushed_through.to_string()),
                (
                    "epoch",
                    state.epoch.map(|e| e.to_string()).unwrap_or_default(),
                ),
                ("local_version", state.local_version.to_string()),
                (
                    "cursor_checksum",
                    state
                        .cursor_checksum
                        .map(|c| format!("{c:016x}"))
                        .unwrap_or_default(),
                ),
                ("provisional", provisional),
                ("synced_ms", now_ms().to_string()),
            ],
        );
        let mut state_write = state_collection_write(&*self.storage, c.as_str(), update)?;
        // Every sync writes the state document: fold its history into one
        // snapshot now and then, so it stays a few hundred bytes to load.
        let mut state = state.clone();
        state.state_changes = stored.state_changes + 1;
        if state.state_changes >= STATE_COMPACT_EVERY {
            if let Some(change) = state_write.append.first() {
                state_write.compact.push(Compaction {
                    doc: change.doc.clone(),
                    after: 0,
                    through: change.seq,
                    snapshot: Some(
                        doc.transact()
                            .encode_state_as_update_v1(&StateVector::default()),
                    ),
                    schema_version: INITIAL_SCHEMA_VERSION,
                });
                state.state_changes = 0;
            }
        }
        writes.push(state_write);
        let committed = self.storage.commit(&WriteBatch { writes });
        if let Ok(mut states) = self.states.lock() {
            match committed {
                Ok(()) => {
                    states.insert(c.clone(), (state, doc));
                }
                // The document holds the update that did not land: load
                // it again next time.
                Err(_) => {
                    states.remove(c);
                }
            }
        }
        committed.map_err(ReplicaError::from)
    }
}

impl<T: Transport> Replica<T> {
    /// [`Local::sync_state`] off the executor.
    pub(crate) async fn state_of(&self, c: &CollectionName) -> Result<SyncState, ReplicaError> {
        let c = c.clone();
        self.blocking(move |local| local.sync_state(&c)).await
    }

    /// [`Local::commit_with_state`] off the executor.
    pub(crate) async fn commit_state(
        &self,
        c: &CollectionName,
        state: &SyncState,
        writes: Vec<CollectionWrite>,
    ) -> Result<(), ReplicaError> {
        let (c, state) = (c.clone(), state.clone());
        self.blocking(move |local| local.commit_with_state(&c, &state, writes))
            .await
    }

    /// [`Local::migrate_locked`] off the executor (the caller holds the
    /// writer lock): the sync state after migrating what is older, and the
    /// documents migrated.
    pub(crate) async fn migrated_state(
        &self,
        c: &CollectionName,
    ) -> Result<(SyncState, u64), ReplicaError> {
        let c = c.clone();
        self.blocking(move |local| local.migrate_locked(&c)).await
    }
}
