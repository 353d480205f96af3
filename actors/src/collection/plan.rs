//! The write plan: what one write does to a collection's memory, and the
//! `CollectionWrite` it hands to the storage writer.
//!
//! This is the heart of the write path, so it is a function over plain data
//! (the collection's state, its loaded documents, their cached encodings)
//! with no actor, no writer and no clock of its own: it can be read, and
//! unit-tested, on its own. The actor around it checks what needs the
//! runtime first (a broken collection, the client's schema version, room in
//! the writer's queue), then calls [`plan_write`], then queues the result.
//!
//! What it guarantees:
//! - **All or nothing before memory changes.** Every update of a batch is
//!   decoded and checked (hostile shapes, reserved client ids, deleted
//!   documents) before any document is touched; a refusal then leaves
//!   memory as it was ([`Refused::diverged`] is false).
//! - **Seqs are consecutive** from the collection's assigned head; an update
//!   that adds nothing (a no-op) gets no seq and writes nothing.
//! - **Upgrade on ingest**: an update written at an older schema version is
//!   followed, in the same write, by the migration steps' output.
//! - **Each change carries the running log checksum**, as storage computes
//!   it in the commit (storage recomputes it and ignores these values; live
//!   subscribers rely on them).
//! - When memory did change before a later refusal (yrs refused an update
//!   half-way through a batch, or a migration step failed), the refusal
//!   says so ([`Refused::diverged`]): memory no longer matches storage and
//!   the actor must reload.

use std::collections::HashMap;
use std::sync::Arc;

use seqsync_engine::{
    decode_pushed_update, migration::reserved_client_in, Applied, Change, ChangeKind,
    CollectionName, CollectionWrite, DocId, DocState, Epoch, Migrations, PeerId, Seq, WriteBase,
    WriteError, MIGRATION_CLIENT_IDS,
};

use super::{CollectionState, Write, WriteOp};

/// What a write reads and changes in the actor's memory.
pub(super) struct Memory<'a> {
    /// The collection's head, epoch, checksum and peers.
    pub(super) state: &'a mut CollectionState,
    /// Its loaded documents; every document the write names must be here.
    pub(super) docs: &'a mut HashMap<DocId, DocState>,
    /// Full-state encodings handed out; a document that changes loses its.
    pub(super) encoded: &'a mut HashMap<DocId, Arc<[u8]>>,
}

/// What the write does once the writer commits it.
#[derive(Debug)]
pub(super) struct Planned {
    /// The changes and peer records to commit (may be empty: a no-op).
    pub(super) write: CollectionWrite,
    /// Per update (or the delete), its seq, or `None` for a no-op.
    pub(super) seqs: Vec<Option<Seq>>,
    /// Documents upgraded on ingest (for `seqsync_upgraded_pushes_total`).
    pub(super) upgraded: u64,
}

/// A write refused.
#[derive(Debug)]
pub(super) struct Refused {
    /// Why, as the caller gets it.
    pub(super) error: WriteError,
    /// Memory changed before the refusal: it no longer matches storage.
    pub(super) diverged: bool,
}

impl Refused {
    /// Refused before anything in memory changed.
    fn clean(error: WriteError) -> Self {
        Self {
            error,
            diverged: false,
        }
    }
}

impl From<WriteError> for Refused {
    fn from(error: WriteError) -> Self {
        Self::clean(error)
    }
}

/// Plans `msg` against `memory`: applies it to the loaded documents,
/// assigns seqs and checksums, and advances the state's assigned head.
///
/// `upgrade_from` is the older schema version the client wrote at (the
/// caller checked that it fits), `None` for the current one; `now_ms` is
/// what a known peer's `last_seen_ms` becomes. Pure but for `memory`.
///
/// Errors: `InvalidUpdate`, `ReservedClientId`, `DocumentDeleted`,
/// `MigrationFailed`, and `Internal` when a named document is not loaded
/// or no epoch can be drawn for a new collection.
pub(super) fn plan_write(
    name: &CollectionName,
    memory: Memory<'_>,
    migrations: &Migrations,
    upgrade_from: Option<u32>,
    now_ms: u64,
    msg: Write,
) -> Result<Planned, Refused> {
    let Memory {
        state,
        docs,
        encoded,
    } = memory;
    let current = state.schema_version;
    // Only a client that declares the current version (it ran the
    // migrations itself) may carry blocks under the ids reserved for
    // migration steps.
    let may_write_reserved = msg.schema_version == Some(current);
    // Everything that can fail without touching memory comes first.
    let (base, epoch) = base_for(state)?;
    let schema_version = state.schema_version;
    let origin = msg.origin;
    let author = msg.author;
    let mut appended: Vec<Change> = Vec::new();
    let mut seqs = Vec::new();
    let mut upgraded = 0u64;
    let mut next_seq = state.assigned_head + 1;
    match msg.op {
        WriteOp::Updates(items) => {
            // Decode everything first: an invalid update refuses the
            // whole batch before any document is touched.
            let mut decoded = Vec::with_capacity(items.len());
            for (doc, bytes) in items {
                let update =
                    decode_pushed_update(&bytes).map_err(|reason| WriteError::InvalidUpdate {
                        doc: doc.to_string(),
                        reason,
                    })?;
                if !may_write_reserved {
                    if let Some(client) = reserved_client_in(&update) {
                        return Err(Refused::clean(WriteError::ReservedClientId {
                            doc: doc.to_string(),
                            client,
                            collection: current,
                            reserved_start: MIGRATION_CLIENT_IDS.start,
                            reserved_end: MIGRATION_CLIENT_IDS.end,
                        }));
                    }
                }
                if docs.get(&doc).is_some_and(|d| d.deleted) {
                    return Err(Refused::clean(WriteError::DocumentDeleted {
                        doc: doc.to_string(),
                    }));
                }
                decoded.push((doc, bytes, update));
            }
            for (doc, bytes, update) in decoded {
                let Some(doc_state) = docs.get_mut(&doc) else {
                    return Err(Refused {
                        error: WriteError::Internal(format!("document {doc} not loaded")),
                        diverged: !appended.is_empty(),
                    });
                };
                // Refused before yrs touches memory (F3): when nothing
                // of this batch changed memory yet, the document stays
                // loaded, so a hostile client cannot force reloads.
                if let Err(err) = doc_state.check_structure(&update) {
                    return Err(Refused {
                        error: WriteError::InvalidUpdate {
                            doc: doc.to_string(),
                            reason: seqsync_engine::UpdateDecodeError::Malformed(err.0),
                        },
                        diverged: !appended.is_empty(),
                    });
                }
                match doc_state.apply(update) {
                    Ok(Applied::NoOp) => seqs.push(None),
                    Ok(Applied::Changed) => {
                        encoded.remove(&doc);
                        doc_state.note_delta(bytes.len() as u64);
                        seqs.push(Some(next_seq));
                        appended.push(Change {
                            seq: next_seq,
                            doc: doc.clone(),
                            kind: ChangeKind::Update,
                            payload: bytes,
                            schema_version: upgrade_from.unwrap_or(schema_version),
                            origin: origin.clone(),
                            author: author.clone(),
                            committed_ms: now_ms,
                            log_checksum: 0,
                        });
                        next_seq += 1;
                        let Some(from) = upgrade_from else {
                            continue;
                        };
                        // Upgrade on ingest: the client wrote at `from`,
                        // so the steps from there run on the document and
                        // their output joins the same commit.
                        match migrations.migrate_state(&doc, doc_state, from, current) {
                            Ok(outputs) => {
                                upgraded += 1;
                                for output in outputs {
                                    doc_state.note_delta(output.update.len() as u64);
                                    appended.push(Change {
                                        seq: next_seq,
                                        doc: doc.clone(),
                                        kind: ChangeKind::Update,
                                        payload: output.update,
                                        schema_version: current,
                                        origin: Some(PeerId::migration()),
                                        author: None,
                                        committed_ms: now_ms,
                                        log_checksum: 0,
                                    });
                                    next_seq += 1;
                                }
                            }
                            Err(err) => {
                                // The client's update is in memory already.
                                return Err(Refused {
                                    error: WriteError::MigrationFailed {
                                        doc: doc.to_string(),
                                        from,
                                        reason: err.to_string(),
                                    },
                                    diverged: true,
                                });
                            }
                        }
                    }
                    Err(err) => {
                        // Earlier updates of the batch may be applied
                        // already: memory no longer matches storage.
                        return Err(Refused {
                            error: WriteError::InvalidUpdate {
                                doc: doc.to_string(),
                                reason: seqsync_engine::UpdateDecodeError::Malformed(err.0),
                            },
                            diverged: true,
                        });
                    }
                }
            }
        }
        WriteOp::Delete(doc) => match docs.get_mut(&doc) {
            Some(d) if d.deleted => seqs.push(None),
            Some(d) => {
                d.deleted = true;
                encoded.remove(&doc);
                seqs.push(Some(next_seq));
                appended.push(Change {
                    seq: next_seq,
                    doc,
                    kind: ChangeKind::Delete,
                    payload: Vec::new(),
                    schema_version,
                    origin: origin.clone(),
                    author: author.clone(),
                    committed_ms: now_ms,
                    log_checksum: 0,
                });
            }
            None => {
                return Err(Refused::clean(WriteError::Internal(format!(
                    "document {doc} not loaded"
                ))))
            }
        },
    }
    let mut peers = Vec::new();
    if let Some(known) = origin.as_ref().and_then(|o| state.peers.get_mut(o)) {
        known.last_seen_ms = now_ms;
        peers.push(known.clone());
    }
    let count = appended.len() as u64;
    if count > 0 || !peers.is_empty() {
        state.epoch = Some(epoch);
        state.assigned_head += count;
    }
    // The running log checksum, as `plan_collection_write` computes it
    // in the commit (storage recomputes it and ignores these values).
    for change in &mut appended {
        state.assigned_checksum = state
            .assigned_checksum
            .wrapping_add(seqsync_engine::change_checksum(&epoch, change));
        change.log_checksum = state.assigned_checksum;
    }
    debug_assert_eq!(
        appended.last().map_or(state.assigned_head, |c| c.seq),
        state.assigned_head,
        "the assigned head is the last seq handed out"
    );
    Ok(Planned {
        write: CollectionWrite {
            collection: name.clone(),
            base,
            append: appended,
            compact: Vec::new(),
            peers,
            raise_schema_version: None,
            append_mode: Default::default(),
        },
        seqs,
        upgraded,
    })
}

/// The base of the next write and the epoch the collection has after it:
/// the current epoch and assigned head, or, for a collection not created
/// yet, a fresh epoch. Errors: `Internal` when no randomness is available.
pub(super) fn base_for(state: &CollectionState) -> Result<(WriteBase, Epoch), WriteError> {
    Ok(match state.epoch {
        Some(epoch) => (
            WriteBase::Existing {
                epoch,
                head: state.assigned_head,
            },
            epoch,
        ),
        None => {
            let epoch = Epoch::random()
                .map_err(|e| WriteError::Internal(format!("no randomness for a new epoch: {e}")))?;
            (
                WriteBase::Create {
                    epoch,
                    schema_version: state.schema_version,
                },
                epoch,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    //! The write plan on plain data: no actor, no writer, no storage. Each
    //! test builds a collection's memory by hand and checks what one write
    //! does to it and what it would hand to the writer.

    use yrs::{GetString, Map, Text, Transact, WriteTxn};

    use super::*;

    const NOW_MS: u64 = 1_700_000_000_000;
    /// A Yjs client id above the range reserved for migration steps.
    const USER: u64 = 1_000_000;

    fn doc(id: &str) -> DocId {
        DocId::new(id).unwrap()
    }

    /// A collection that exists (epoch set) at `head`, schema version 1.
    fn existing(head: Seq) -> CollectionState {
        CollectionState {
            epoch: Some(Epoch([7; 16])),
            schema_version: 1,
            assigned_head: head,
            committed_head: head,
            assigned_checksum: 0,
            peers: HashMap::new(),
        }
    }

    /// An update inserting `text` at the start of text "t", from Yjs client
    /// `client`.
    fn insert(client: u64, text: &str) -> Vec<u8> {
        let d = yrs::Doc::with_client_id(client);
        let t = d.get_or_insert_text("t");
        let mut txn = d.transact_mut();
        t.insert(&mut txn, 0, text);
        txn.encode_update_v1()
    }

    fn updates(items: &[(&str, Vec<u8>)]) -> Write {
        Write {
            op: WriteOp::Updates(items.iter().map(|(d, u)| (doc(d), u.clone())).collect()),
            origin: None,
            author: None,
            schema_version: None,
        }
    }

    struct Fixture {
        state: CollectionState,
        docs: HashMap<DocId, DocState>,
        encoded: HashMap<DocId, Arc<[u8]>>,
        migrations: Migrations,
    }

    impl Fixture {
        fn new(head: Seq, docs: &[&str]) -> Self {
            Self {
                state: existing(head),
                docs: docs.iter().map(|d| (doc(d), DocState::empty())).collect(),
                encoded: HashMap::new(),
                migrations: Migrations::new(),
            }
        }

        fn plan(&mut self, upgrade_from: Option<u32>, msg: Write) -> Result<Planned, Refused> {
            let name = CollectionName::new("notes").unwrap();
            let memory = Memory {
                state: &mut self.state,
                docs: &mut self.docs,
                encoded: &mut self.encoded,
            };
            plan_write(&name, memory, &self.migrations, upgrade_from, NOW_MS, msg)
        }

        fn text(&self, id: &str) -> String {
            let d = self.docs[&doc(id)].doc();
            let t = d.get_or_insert_text("t");
            let txn = d.transact();
            t.get_string(&txn)
        }
    }

    #[test]
    fn seqs_follow_the_assigned_head_and_a_no_op_gets_none() {
        // Seqs are the log's positions: consecutive from the assigned head,
        // none for an update that adds nothing (it is not logged at all).
        let mut f = Fixture::new(41, &["a", "b"]);
        let hello = insert(USER, "hello");
        let planned = f
            .plan(
                None,
                updates(&[
                    ("a", hello.clone()),
                    ("b", insert(USER + 1, "x")),
                    ("a", hello),
                ]),
            )
            .unwrap();
        assert_eq!(planned.seqs, vec![Some(42), Some(43), None]);
        let appended: Vec<(Seq, &str)> = planned
            .write
            .append
            .iter()
            .map(|c| (c.seq, c.doc.as_str()))
            .collect();
        assert_eq!(appended, vec![(42, "a"), (43, "b")]);
        assert_eq!(f.state.assigned_head, 43);
        assert_eq!(f.state.committed_head, 41, "committed only at CommitDone");
        assert!(matches!(
            planned.write.base,
            WriteBase::Existing { head: 41, .. }
        ));
        assert_eq!(f.text("a"), "hello");
    }

    #[test]
    fn an_invalid_update_refuses_the_whole_batch_before_memory_changes() {
        // A batch is all or nothing: one undecodable update must leave the
        // others unapplied and the actor healthy (no reload).
        let mut f = Fixture::new(0, &["a", "b"]);
        let refused = f
            .plan(
                None,
                updates(&[
                    ("a", insert(USER, "kept out")),
                    ("b", vec![0xff, 0xff, 0xff]),
                ]),
            )
            .unwrap_err();
        assert!(matches!(refused.error, WriteError::InvalidUpdate { ref doc, .. } if doc == "b"));
        assert!(!refused.diverged);
        assert_eq!(f.text("a"), "");
        assert_eq!(f.state.assigned_head, 0);
    }

    #[test]
    fn a_deleted_document_takes_no_update_and_a_second_delete_is_a_no_op() {
        // A tombstone is final: an update after it is refused by name, and
        // deleting twice logs one tombstone.
        let mut f = Fixture::new(5, &["a"]);
        f.encoded.insert(doc("a"), Arc::from(vec![1u8, 2, 3]));
        let delete = || Write {
            op: WriteOp::Delete(doc("a")),
            origin: None,
            author: None,
            schema_version: None,
        };
        let planned = f.plan(None, delete()).unwrap();
        assert_eq!(planned.seqs, vec![Some(6)]);
        assert_eq!(planned.write.append[0].kind, ChangeKind::Delete);
        assert!(
            f.encoded.is_empty(),
            "a deleted document's encoding is stale"
        );
        assert_eq!(f.plan(None, delete()).unwrap().seqs, vec![None]);
        let refused = f
            .plan(None, updates(&[("a", insert(USER, "late"))]))
            .unwrap_err();
        assert!(matches!(refused.error, WriteError::DocumentDeleted { .. }));
        assert!(!refused.diverged);
    }

    #[test]
    fn reserved_client_ids_are_refused_unless_the_client_declares_the_current_version() {
        // Client ids below 65,536 belong to migration steps; only a client
        // that ran the migrations itself (it says the current version) may
        // carry them.
        let mut f = Fixture::new(0, &["a"]);
        let reserved = insert(MIGRATION_CLIENT_IDS.start + 5, "step");
        let refused = f
            .plan(None, updates(&[("a", reserved.clone())]))
            .unwrap_err();
        assert!(matches!(
            refused.error,
            WriteError::ReservedClientId { client: 6, .. }
        ));
        let mut declared = updates(&[("a", reserved)]);
        declared.schema_version = Some(1);
        assert_eq!(f.plan(None, declared).unwrap().seqs, vec![Some(1)]);
    }

    #[test]
    fn changes_carry_the_running_log_checksum() {
        // Live subscribers hold the checksum of their cursor from these
        // values, so they must be what storage computes in the commit.
        let mut f = Fixture::new(0, &["a"]);
        f.state.assigned_checksum = 99;
        let planned = f
            .plan(
                None,
                updates(&[("a", insert(USER, "x")), ("a", insert(USER + 1, "y"))]),
            )
            .unwrap();
        let epoch = Epoch([7; 16]);
        let mut running = 99u64;
        for change in &planned.write.append {
            let mut unstamped = change.clone();
            unstamped.log_checksum = 0;
            running = running.wrapping_add(seqsync_engine::change_checksum(&epoch, &unstamped));
            assert_eq!(change.log_checksum, running, "seq {}", change.seq);
        }
        assert_eq!(f.state.assigned_checksum, running);
    }

    #[test]
    fn a_new_collection_gets_a_fresh_epoch_with_its_first_change() {
        // The first write creates the collection: its base says so and the
        // epoch it draws is the one later writes extend.
        let mut f = Fixture::new(0, &["a"]);
        f.state.epoch = None;
        let planned = f.plan(None, updates(&[("a", insert(USER, "x"))])).unwrap();
        let WriteBase::Create { epoch, .. } = planned.write.base else {
            panic!("expected a create, got {:?}", planned.write.base);
        };
        assert_eq!(f.state.epoch, Some(epoch));
    }

    #[test]
    fn a_known_peer_is_seen_and_an_unknown_one_is_not_recorded() {
        // A push refreshes its peer's last-seen time (truancy is measured
        // from it), but a push does not create peers: acks do.
        let mut f = Fixture::new(0, &["a"]);
        let known = PeerId::new("phone").unwrap();
        f.state.peers.insert(
            known.clone(),
            seqsync_engine::PeerRecord {
                peer: known.clone(),
                acked: 0,
                last_seen_ms: 1,
            },
        );
        let mut write = updates(&[("a", insert(USER, "x"))]);
        write.origin = Some(known.clone());
        let planned = f.plan(None, write).unwrap();
        assert_eq!(planned.write.peers.len(), 1);
        assert_eq!(planned.write.peers[0].last_seen_ms, NOW_MS);
        assert_eq!(planned.write.append[0].origin, Some(known));
        let mut stranger = updates(&[("a", insert(USER + 1, "y"))]);
        stranger.origin = Some(PeerId::new("laptop").unwrap());
        assert!(f.plan(None, stranger).unwrap().write.peers.is_empty());
    }

    #[test]
    fn an_update_at_an_older_version_is_upgraded_in_the_same_write() {
        // Upgrade on ingest: the client's change keeps its version, and the
        // steps' output follows it under the migration peer, one write.
        let mut f = Fixture::new(0, &["a"]);
        f.migrations = Migrations::new().step(1, |_doc, txn| {
            let meta = txn.get_or_insert_map("meta");
            meta.insert(txn, "upgraded", true);
            Ok(())
        });
        f.state.schema_version = 2;
        let planned = f
            .plan(Some(1), updates(&[("a", insert(USER, "x"))]))
            .unwrap();
        assert_eq!(planned.upgraded, 1);
        let versions: Vec<(u32, Option<&str>)> = planned
            .write
            .append
            .iter()
            .map(|c| (c.schema_version, c.origin.as_ref().map(|o| o.as_str())))
            .collect();
        assert_eq!(versions[0], (1, None));
        assert!(versions.len() >= 2, "the step wrote something");
        assert!(versions[1..]
            .iter()
            .all(|v| *v == (2, Some(PeerId::migration().as_str()))));
    }

    #[test]
    fn a_failed_migration_step_reports_memory_as_diverged() {
        // The client's update is applied before the step runs; when the
        // step fails, memory holds a change storage will never see, and
        // the actor must know to reload.
        let mut f = Fixture::new(0, &["a"]);
        f.migrations =
            Migrations::new().step(1, |_doc, _txn| Err(seqsync_engine::StepError::new("no")));
        f.state.schema_version = 2;
        let refused = f
            .plan(Some(1), updates(&[("a", insert(USER, "x"))]))
            .unwrap_err();
        assert!(matches!(
            refused.error,
            WriteError::MigrationFailed { from: 1, .. }
        ));
        assert!(refused.diverged);
    }
}
