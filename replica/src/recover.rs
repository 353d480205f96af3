//! Starting over after a reset: the server's history was replaced (a
//! restore, a new epoch) or the cursor is no longer served. The replica
//! fetches every document's state, replaces its local copy of the
//! collection with it in one commit, keeps its own unpushed edits and
//! pushes its state back, so nothing local is lost.

use std::collections::HashMap;

use seqsync_engine::{CollectionName, DocId, Storage, INITIAL_SCHEMA_VERSION};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Transact};

use crate::error::ReplicaError;
use crate::local_log::{append_write, Item};
use crate::replica::{apply_bytes, Replica, REMOTE};
use crate::report::{ResetReason, SyncOutcome, SyncReport};
use crate::state::SyncState;
use crate::transport::Transport;

impl<T: Transport> Replica<T> {
    /// After a reset: take the server's state of every document, then push
    /// back every local document's state the server lacks.
    pub(crate) async fn recover(
        &self,
        c: &CollectionName,
        mut state: SyncState,
        reason: ResetReason,
        mut requests: u64,
    ) -> Result<SyncReport, ReplicaError> {
        // What the replica holds of each document, as state vectors: one
        // read of the local store, off the executor.
        let svs = {
            let c = c.clone();
            self.blocking(move |local| {
                let mut svs = HashMap::new();
                for doc in local.storage.documents(&c)?.into_iter().map(|d| d.doc) {
                    let state = local.local_state(&c, &doc)?;
                    let holder = Doc::new();
                    apply_bytes(&holder, &state, doc.as_str())?;
                    svs.insert(
                        doc.to_string(),
                        holder.transact().state_vector().encode_v1(),
                    );
                }
                Ok(svs)
            })
            .await?
        };
        requests += 1;
        let recovery = self.transport.recover_collection(c.as_str(), svs).await?;
        let version = recovery.schema_version.max(INITIAL_SCHEMA_VERSION);
        let items: Vec<Item> = recovery
            .documents
            .iter()
            .map(|(d, u)| Item::new(d.clone(), u.clone(), REMOTE, version))
            .chain(
                recovery
                    .deleted
                    .iter()
                    .map(|d| Item::new(d.clone(), Vec::new(), REMOTE, version)),
            )
            .collect();
        let pulled = items.len() as u64;
        if let Ok(mut editing) = self.local.editing.lock() {
            editing.clear();
        }
        state.epoch = recovery.epoch;
        state.cursor = recovery.cursor;
        // Not known for a recovery's cursor: the next page brings it.
        state.cursor_checksum = None;
        if items.is_empty() {
            self.commit_state(c, &state, Vec::new()).await?;
        } else {
            let recovered: Vec<DocId> = recovery.documents.iter().map(|(d, _)| d.clone()).collect();
            let c = c.clone();
            state = self
                .blocking(move |local| {
                    let mut write = append_write(&*local.storage, &c, items)?;
                    // Verdant's reset case, client side: the server's state
                    // is at an older version than the local data; migrate
                    // it before the app sees it.
                    if !local.migrations.is_empty() && version < state.local_version {
                        for doc in &recovered {
                            local.migrate_pulled(&c, doc, version, &mut state, &mut write)?;
                        }
                    }
                    local.commit_with_state(&c, &state, vec![write])?;
                    Ok(state)
                })
                .await?;
        }
        // Push back what the server lacks of every local document.
        let mut pushed = 0u64;
        let mut head = recovery.cursor;
        let docs: Vec<DocId> = {
            let c = c.clone();
            self.blocking(move |local| {
                Ok(local
                    .storage
                    .documents(&c)?
                    .into_iter()
                    .map(|d| d.doc)
                    .collect())
            })
            .await?
        };
        for doc in docs {
            requests += 1;
            let server_sv = match self
                .transport
                .state_vector(c.as_str(), doc.as_str())
                .await?
            {
                Some(bytes) => {
                    StateVector::decode_v1(&bytes).map_err(|e| ReplicaError::InvalidUpdate {
                        doc: doc.to_string(),
                        reason: e.to_string(),
                    })?
                }
                None => StateVector::default(),
            };
            let local = {
                let (c, doc) = (c.clone(), doc.clone());
                self.blocking(move |local| local.local_state(&c, &doc))
                    .await?
            };
            let holder = Doc::new();
            apply_bytes(&holder, &local, doc.as_str())?;
            let diff = holder.transact().encode_state_as_update_v1(&server_sv);
            requests += 1;
            let outcome = self
                .transport
                .push_batch(
                    c.as_str(),
                    vec![(doc.to_string(), diff)],
                    self.local.peer.as_str(),
                    self.local.schema_version,
                )
                .await?;
            pushed += outcome.seqs.iter().filter(|s| s.is_some()).count() as u64;
            head = outcome.head;
        }
        if state.epoch.is_none() && pushed > 0 {
            requests += 1;
            state.epoch = self.transport.changes(c.as_str(), 0, 0, None).await?.epoch;
        }
        // Everything local is on the server now: the outbox is empty.
        state.pushed_through = {
            let c = c.clone();
            self.blocking(move |local| Ok(local.storage.collection(&c)?.map_or(0, |m| m.head)))
                .await?
        };
        self.commit_state(c, &state, Vec::new()).await?;
        Ok(SyncReport {
            outcome: SyncOutcome::Reset {
                reason,
                pulled,
                pushed,
            },
            follow_up_needed: pushed > 0,
            cursor: state.cursor,
            head,
            epoch: state.epoch,
            requests,
            rebased: 0,
        })
    }
}
