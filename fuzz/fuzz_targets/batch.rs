//! Arbitrary sequences of `WriteBatch`es committed to `MemoryStorage`, valid
//! and invalid: appends with gaps or wrong kinds, stale or wrong bases,
//! duplicate collections, compactions of missing seqs or other documents,
//! compactions planned by `plan_compaction`, peer acks beyond the head.
//!
//! After every commit it checks the storage invariants of
//! `engine/src/storage.rs` against a model written from that module's docs:
//! - the commit is accepted exactly when the model accepts it;
//! - a refused batch changed nothing (metas, changes, peers, documents);
//! - an accepted batch moved each head by its number of appends (gap-free,
//!   continuing the stored head) and left exactly the model's log;
//! - `document_changes` is `read_changes` filtered by document, `documents`
//!   agrees with both, and paging `read_changes` gives the same log;
//! - a compaction planned by `plan_compaction` keeps the document's state
//!   vector (the safety property of `engine/src/compaction.rs`).
#![no_main]

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use seqsync_adapters::MemoryStorage;
use seqsync_engine::{
    plan_compaction, Change, ChangeKind, CollectionMeta, CollectionName, CollectionWrite,
    Compaction, DocId, DocState, DocumentInfo, Epoch, PeerId, PeerRecord, Seq, Storage, WriteBase,
    WriteBatch,
};
use seqsync_fuzz::{allow_known, install_panic_hook, tolerating_caught_panics};
use yrs::{GetString, Map, ReadTxn, Text, Transact};

const COLLECTIONS: u8 = 3;
const DOCS: u8 = 4;
const PEERS: u8 = 3;
const MAX_STEPS: usize = 24;
const MAX_WRITES: usize = 3;
const MAX_APPENDS: usize = 6;
const MAX_COMPACTS: usize = 3;
const MAX_PEERS: usize = 2;

/// Known finding F2 (fuzz/README.md): a snapshot planned from updates yrs
/// accepted may not decode again.
const F2: &str = "F2 encode_state does not re-decode";

const EPOCH: Epoch = Epoch([7; 16]);
const OTHER_EPOCH: Epoch = Epoch([9; 16]);

/// Commits accepted, refused, planned compactions checked, inputs run: printed
/// at every power of two from 4096 inputs, so a run shows that both paths are exercised.
static STATS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

fn count(i: usize) {
    let n = STATS[i].fetch_add(1, Ordering::Relaxed) + 1;
    if i == 3 && n.is_power_of_two() && n >= 1 << 12 {
        let [a, r, p, _] = STATS.each_ref().map(|s| s.load(Ordering::Relaxed));
        eprintln!(
            "[seqsync-fuzz] batch: {n} inputs, {a} commits accepted, {r} refused, \
             {p} planned compactions checked"
        );
    }
}

// ---------------------------------------------------------------- input

#[derive(Arbitrary, Debug)]
struct Input {
    steps: Vec<Step>,
    page: u8,
}

#[derive(Arbitrary, Debug)]
struct Step {
    writes: Vec<WriteSpec>,
}

#[derive(Arbitrary, Debug)]
struct WriteSpec {
    collection: u8,
    base: BaseSpec,
    appends: Vec<AppendSpec>,
    compacts: Vec<CompactSpec>,
    peers: Vec<PeerSpec>,
}

#[derive(Arbitrary, Debug)]
enum BaseSpec {
    /// What a correct writer sends: the stored state, or a creation.
    Correct,
    /// A creation whatever is stored.
    Create { schema_version: u8 },
    /// The stored epoch with a head off by `delta`.
    StaleHead { delta: i8 },
    /// Another epoch at the stored head.
    WrongEpoch,
}

#[derive(Arbitrary, Debug)]
struct AppendSpec {
    doc: u8,
    kind: KindSpec,
    payload: PayloadSpec,
    seq: SeqSpec,
    origin: Option<u8>,
}

#[derive(Arbitrary, Debug)]
enum KindSpec {
    Update,
    Delete,
    Snapshot,
}

#[derive(Arbitrary, Debug)]
enum PayloadSpec {
    /// The natural payload: a valid update, or nothing for a delete.
    Natural(u8),
    /// One of the valid Yjs updates of the pool.
    Pool(u8),
    /// Arbitrary bytes.
    Raw(Vec<u8>),
    Empty,
}

#[derive(Arbitrary, Debug)]
enum SeqSpec {
    Next,
    Offset(i8),
}

#[derive(Arbitrary, Debug)]
struct CompactSpec {
    doc: u8,
    mode: CompactMode,
}

#[derive(Arbitrary, Debug)]
enum CompactMode {
    /// What the compactor does: `plan_compaction` over the document's stored
    /// changes (plus this write's appends) up to the head minus `behind`.
    Planned { behind: u8 },
    /// A hand-made compaction, usually wrong.
    Raw {
        through: ThroughSpec,
        snapshot: Option<PayloadSpec>,
    },
}

#[derive(Arbitrary, Debug)]
enum ThroughSpec {
    Zero,
    Head,
    BeyondHead(u8),
    Absolute(u8),
}

#[derive(Arbitrary, Debug)]
struct PeerSpec {
    peer: u8,
    acked: AckSpec,
    last_seen_ms: u16,
}

#[derive(Arbitrary, Debug)]
enum AckSpec {
    Head,
    Below(u8),
    Beyond(u8),
}

// ---------------------------------------------------------------- fixtures

fn collection_name(i: u8) -> CollectionName {
    CollectionName::new(format!("c{}", i % COLLECTIONS)).expect("valid collection name")
}

fn doc_id(i: u8) -> DocId {
    DocId::new(format!("d{}", i % DOCS)).expect("valid doc id")
}

fn peer_id(i: u8) -> PeerId {
    PeerId::new(format!("p{}", i % PEERS)).expect("valid peer id")
}

/// Valid Yjs v1 updates: incremental edits of two clients (so that picking
/// them out of order exercises pending structures), a deletion and a full
/// state.
fn pool() -> &'static [Vec<u8>] {
    static POOL: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut updates = Vec::new();
        let a = yrs::Doc::with_client_id(1);
        let text = a.get_or_insert_text("t");
        for (i, word) in ["hello", " ", "world", "!", " again"].iter().enumerate() {
            let before = a.transact().state_vector();
            let at = text.get_string(&a.transact()).len() as u32;
            text.insert(&mut a.transact_mut(), at.min(i as u32 * 5), word);
            updates.push(a.transact().encode_state_as_update_v1(&before));
        }
        let before = a.transact().state_vector();
        text.remove_range(&mut a.transact_mut(), 1, 3);
        updates.push(a.transact().encode_state_as_update_v1(&before));
        let b = yrs::Doc::with_client_id(2);
        let map = b.get_or_insert_map("m");
        for i in 0..3u32 {
            let before = b.transact().state_vector();
            map.insert(&mut b.transact_mut(), format!("k{i}"), i);
            updates.push(b.transact().encode_state_as_update_v1(&before));
        }
        updates.push(
            a.transact()
                .encode_state_as_update_v1(&yrs::StateVector::default()),
        );
        updates
    })
}

fn payload(spec: &PayloadSpec, kind: ChangeKind) -> Vec<u8> {
    let pool = pool();
    match spec {
        PayloadSpec::Natural(i) => match kind {
            ChangeKind::Delete => Vec::new(),
            _ => pool[*i as usize % pool.len()].clone(),
        },
        PayloadSpec::Pool(i) => pool[*i as usize % pool.len()].clone(),
        PayloadSpec::Raw(bytes) => bytes.clone(),
        PayloadSpec::Empty => Vec::new(),
    }
}

// ---------------------------------------------------------------- model

/// One collection as the storage docs define it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ModelCollection {
    /// (epoch, head, schema_version) once created.
    meta: Option<(Epoch, Seq, u32)>,
    changes: BTreeMap<Seq, Change>,
    /// peer → (acked, last_seen_ms)
    peers: BTreeMap<PeerId, (Seq, u64)>,
}

type Model = BTreeMap<CollectionName, ModelCollection>;

/// The model's answer to a commit: the state after it, or why it is refused.
fn model_commit(model: &Model, batch: &WriteBatch) -> Result<Model, String> {
    let mut seen = HashSet::new();
    for write in &batch.writes {
        if !seen.insert(&write.collection) {
            return Err(format!("{} twice", write.collection));
        }
    }
    let mut next = model.clone();
    for write in &batch.writes {
        let stored = model.get(&write.collection).cloned().unwrap_or_default();
        let mut collection = stored.clone();
        let (epoch, mut head, schema) = match (write.base, stored.meta) {
            (WriteBase::Create { .. }, Some(_)) => return Err("create: exists".into()),
            (
                WriteBase::Create {
                    epoch,
                    schema_version,
                },
                None,
            ) => (epoch, 0, schema_version),
            (WriteBase::Existing { .. }, None) => return Err("existing: missing".into()),
            (WriteBase::Existing { epoch, head }, Some((e, h, s))) => {
                if (epoch, head) != (e, h) {
                    return Err("existing: stale base".into());
                }
                (e, h, s)
            }
        };
        for change in &write.append {
            if change.seq != head + 1 {
                return Err(format!("gap: {} after {head}", change.seq));
            }
            if change.kind == ChangeKind::Delete && !change.payload.is_empty() {
                return Err("delete with payload".into());
            }
            head += 1;
            collection.changes.insert(change.seq, change.clone());
        }
        let mut compacted = HashSet::new();
        for compaction in &write.compact {
            if compaction.through == 0 || compaction.through > head {
                return Err("compaction outside the log".into());
            }
            if !compacted.insert(&compaction.doc) {
                return Err("document compacted twice".into());
            }
            if compaction.snapshot.is_some() {
                let target = collection.changes.get(&compaction.through);
                let ok = target.is_some_and(|c| {
                    c.doc == compaction.doc
                        && matches!(c.kind, ChangeKind::Update | ChangeKind::Snapshot)
                });
                if !ok {
                    return Err("snapshot replaces nothing".into());
                }
            }
        }
        for peer in &write.peers {
            if peer.acked > head {
                return Err("ack beyond head".into());
            }
        }
        for compaction in &write.compact {
            collection.changes.retain(|seq, c| {
                !(c.doc == compaction.doc
                    && *seq <= compaction.through
                    && matches!(c.kind, ChangeKind::Update | ChangeKind::Snapshot))
            });
            if let Some(snapshot) = &compaction.snapshot {
                collection.changes.insert(
                    compaction.through,
                    Change {
                        seq: compaction.through,
                        doc: compaction.doc.clone(),
                        kind: ChangeKind::Snapshot,
                        payload: snapshot.clone(),
                        schema_version: compaction.schema_version,
                        origin: None,
                        author: None,
                        committed_ms: 0,
                    },
                );
            }
        }
        for peer in &write.peers {
            let entry = collection
                .peers
                .entry(peer.peer.clone())
                .or_insert((peer.acked, peer.last_seen_ms));
            entry.0 = entry.0.max(peer.acked);
            entry.1 = entry.1.max(peer.last_seen_ms);
        }
        collection.meta = Some((epoch, head, schema));
        next.insert(write.collection.clone(), collection);
    }
    Ok(next)
}

// ---------------------------------------------------------------- observation

/// Everything a reader can see of one collection.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Observed {
    meta: Option<CollectionMeta>,
    changes: Option<Vec<Change>>,
    peers: Vec<PeerRecord>,
    documents: Vec<DocumentInfo>,
    by_doc: Vec<Vec<Change>>,
}

fn observe(storage: &MemoryStorage, name: &CollectionName) -> Observed {
    let meta = storage.collection(name).expect("collection");
    let page = storage.read_changes(name, 0, usize::MAX).expect("read");
    assert_eq!(
        page.as_ref().map(|p| &p.meta),
        meta.as_ref(),
        "{name}: read_changes and collection disagree on the meta"
    );
    Observed {
        meta,
        changes: page.map(|p| p.changes),
        peers: storage.peers(name).expect("peers"),
        documents: storage.documents(name).expect("documents"),
        by_doc: (0..DOCS)
            .map(|d| storage.document_changes(name, &doc_id(d)).expect("doc"))
            .collect(),
    }
}

fn observe_all(storage: &MemoryStorage) -> Vec<Observed> {
    (0..COLLECTIONS)
        .map(|c| observe(storage, &collection_name(c)))
        .collect()
}

/// The read-side invariants of one collection, whatever was committed.
fn check_reads(storage: &MemoryStorage, name: &CollectionName, seen: &Observed, page: usize) {
    let changes = seen.changes.clone().unwrap_or_default();
    let head = seen.meta.as_ref().map_or(0, |m| m.head);
    // Strictly increasing seqs within 1..=head.
    let mut last = 0;
    for change in &changes {
        assert!(
            change.seq > last && change.seq <= head,
            "{name}: seq {} after {last} with head {head}",
            change.seq
        );
        last = change.seq;
    }
    // document_changes == read_changes filtered by doc.
    for (d, by_doc) in seen.by_doc.iter().enumerate() {
        let doc = doc_id(d as u8);
        let filtered: Vec<Change> = changes.iter().filter(|c| c.doc == doc).cloned().collect();
        assert_eq!(
            by_doc, &filtered,
            "{name}/{doc}: document_changes differs from read_changes filtered by doc"
        );
    }
    // documents() agrees with the log.
    let mut expected_docs: BTreeMap<DocId, DocumentInfo> = BTreeMap::new();
    for change in &changes {
        let info = expected_docs
            .entry(change.doc.clone())
            .or_insert(DocumentInfo {
                doc: change.doc.clone(),
                last_seq: change.seq,
                deleted: false,
                stored_bytes: 0,
            });
        info.last_seq = change.seq;
        info.deleted |= change.kind == ChangeKind::Delete;
        info.stored_bytes += change.payload.len() as u64;
    }
    let expected_docs: Vec<DocumentInfo> = expected_docs.into_values().collect();
    assert_eq!(seen.documents, expected_docs, "{name}: documents()");
    // Peers never ack beyond the head.
    for peer in &seen.peers {
        assert!(
            peer.acked <= head,
            "{name}: peer {} acked beyond head",
            peer.peer
        );
    }
    // Paging gives the same log, and nothing lies beyond the head.
    if seen.meta.is_some() {
        let mut paged = Vec::new();
        let mut after = 0;
        loop {
            let p = storage
                .read_changes(name, after, page)
                .expect("read page")
                .expect("collection exists");
            assert!(
                p.changes.len() <= page,
                "{name}: page larger than its limit"
            );
            match p.changes.last() {
                Some(c) => after = c.seq,
                None => break,
            }
            paged.extend(p.changes);
        }
        assert_eq!(paged, changes, "{name}: paged read differs");
        for after in [head, Seq::MAX] {
            let p = storage.read_changes(name, after, usize::MAX).expect("read");
            assert!(
                p.is_some_and(|p| p.changes.is_empty()),
                "{name}: changes after {after}"
            );
        }
    }
}

fn check_against_model(model: &Model, seen: &[Observed]) {
    for (c, observed) in seen.iter().enumerate() {
        let name = collection_name(c as u8);
        let expected = model.get(&name).cloned().unwrap_or_default();
        assert_eq!(
            observed
                .meta
                .as_ref()
                .map(|m| (m.epoch, m.head, m.schema_version)),
            expected.meta,
            "{name}: meta differs from the model"
        );
        let expected_changes: Vec<Change> = expected.changes.values().cloned().collect();
        assert_eq!(
            observed.changes.clone().unwrap_or_default(),
            expected_changes,
            "{name}: log differs from the model"
        );
        let peers: BTreeMap<PeerId, (Seq, u64)> = observed
            .peers
            .iter()
            .map(|p| (p.peer.clone(), (p.acked, p.last_seen_ms)))
            .collect();
        assert_eq!(peers, expected.peers, "{name}: peers differ from the model");
    }
}

// ---------------------------------------------------------------- batches

/// A compaction planned by `plan_compaction`, remembered to check that it
/// kept the document's state.
struct PlannedCheck {
    collection: CollectionName,
    doc: DocId,
    /// The document's changes the plan was made from (stored + appended).
    before: Vec<Change>,
}

fn build_write(
    storage: &MemoryStorage,
    spec: &WriteSpec,
    planned: &mut Vec<PlannedCheck>,
) -> CollectionWrite {
    let collection = collection_name(spec.collection);
    let stored = storage.collection(&collection).expect("collection");
    let base = match (&spec.base, &stored) {
        (BaseSpec::Correct, Some(meta)) => WriteBase::Existing {
            epoch: meta.epoch,
            head: meta.head,
        },
        (BaseSpec::Correct, None) => WriteBase::Create {
            epoch: EPOCH,
            schema_version: 1,
        },
        (BaseSpec::Create { schema_version }, _) => WriteBase::Create {
            epoch: EPOCH,
            schema_version: u32::from(*schema_version),
        },
        (BaseSpec::StaleHead { delta }, meta) => WriteBase::Existing {
            epoch: meta.as_ref().map_or(EPOCH, |m| m.epoch),
            head: meta
                .as_ref()
                .map_or(0, |m| m.head)
                .saturating_add_signed(i64::from(*delta)),
        },
        (BaseSpec::WrongEpoch, meta) => WriteBase::Existing {
            epoch: OTHER_EPOCH,
            head: meta.as_ref().map_or(0, |m| m.head),
        },
    };
    let schema_version = stored.as_ref().map_or(1, |m| m.schema_version);
    let mut head = stored.as_ref().map_or(0, |m| m.head);
    let mut append = Vec::new();
    for a in spec.appends.iter().take(MAX_APPENDS) {
        let kind = match a.kind {
            KindSpec::Update => ChangeKind::Update,
            KindSpec::Delete => ChangeKind::Delete,
            KindSpec::Snapshot => ChangeKind::Snapshot,
        };
        let seq = match a.seq {
            SeqSpec::Next => head + 1,
            SeqSpec::Offset(delta) => (head + 1).saturating_add_signed(i64::from(delta)),
        };
        head = head.max(seq);
        append.push(Change {
            seq,
            doc: doc_id(a.doc),
            kind,
            payload: payload(&a.payload, kind),
            schema_version,
            origin: a.origin.map(peer_id),
            author: None,
            committed_ms: 0,
        });
    }
    let mut compact = Vec::new();
    for c in spec.compacts.iter().take(MAX_COMPACTS) {
        let doc = doc_id(c.doc);
        match &c.mode {
            CompactMode::Planned { behind } => {
                let mut changes = storage
                    .document_changes(&collection, &doc)
                    .expect("document_changes");
                changes.extend(append.iter().filter(|a| a.doc == doc).cloned());
                let cutoff = head.saturating_sub(u64::from(*behind));
                let plan = tolerating_caught_panics(|| {
                    plan_compaction(&doc, &changes, cutoff, schema_version, &[])
                });
                if let Ok(Some(plan)) = plan {
                    if plan.compactions.iter().any(|c| c.snapshot.is_some()) {
                        planned.push(PlannedCheck {
                            collection: collection.clone(),
                            doc: doc.clone(),
                            before: changes,
                        });
                    }
                    compact.extend(plan.compactions);
                }
            }
            CompactMode::Raw { through, snapshot } => {
                let through = match through {
                    ThroughSpec::Zero => 0,
                    ThroughSpec::Head => head,
                    ThroughSpec::BeyondHead(n) => head + 1 + u64::from(*n),
                    ThroughSpec::Absolute(n) => u64::from(*n),
                };
                compact.push(Compaction {
                    doc,
                    after: 0,
                    through,
                    snapshot: snapshot.as_ref().map(|p| payload(p, ChangeKind::Snapshot)),
                    schema_version,
                });
            }
        }
    }
    let peers = spec
        .peers
        .iter()
        .take(MAX_PEERS)
        .map(|p| PeerRecord {
            peer: peer_id(p.peer),
            acked: match p.acked {
                AckSpec::Head => head,
                AckSpec::Below(n) => head.saturating_sub(u64::from(n)),
                AckSpec::Beyond(n) => head + 1 + u64::from(n),
            },
            last_seen_ms: u64::from(p.last_seen_ms),
        })
        .collect();
    CollectionWrite {
        collection,
        base,
        append,
        compact,
        peers,
        raise_schema_version: None,
        append_mode: Default::default(),
    }
}

/// Loads a document from changes; `None` if a payload does not load.
fn load(changes: &[Change]) -> Option<DocState> {
    tolerating_caught_panics(|| DocState::load(changes)).ok()
}

fuzz_target!(init: install_panic_hook(), |input: Input| {
    let storage = MemoryStorage::default();
    let page = usize::from(input.page % 4) + 1;
    let mut model = Model::new();
    count(3);
    for step in input.steps.iter().take(MAX_STEPS) {
        let mut planned = Vec::new();
        let batch = WriteBatch {
            writes: step
                .writes
                .iter()
                .take(MAX_WRITES)
                .map(|w| build_write(&storage, w, &mut planned))
                .collect(),
        };
        let before = observe_all(&storage);
        let expected = model_commit(&model, &batch);
        let result = storage.commit(&batch);
        let accepted = result.is_ok();
        count(if accepted { 0 } else { 1 });
        let after = observe_all(&storage);
        match (&expected, &result) {
            (Ok(_), Err(err)) => panic!("storage refused a valid batch: {err}\n{batch:#?}"),
            (Err(why), Ok(())) => panic!("storage accepted an invalid batch ({why})\n{batch:#?}"),
            _ => {}
        }
        match result {
            Err(_) => {
                assert_eq!(before, after, "a refused batch changed the store");
            }
            Ok(()) => {
                // Each head moved by exactly the number of appends, and the
                // appends are the seqs right after the stored head.
                for write in &batch.writes {
                    let c = (0..COLLECTIONS)
                        .find(|c| collection_name(*c) == write.collection)
                        .expect("known collection") as usize;
                    let old_head = before[c].meta.as_ref().map_or(0, |m| m.head);
                    let new_meta = after[c].meta.as_ref().expect("written collection exists");
                    assert_eq!(
                        new_meta.head,
                        old_head + write.append.len() as u64,
                        "{}: head did not move by the appends",
                        write.collection
                    );
                    for (i, change) in write.append.iter().enumerate() {
                        assert_eq!(change.seq, old_head + 1 + i as u64, "gap accepted");
                    }
                    if let Some(old) = &before[c].meta {
                        assert_eq!(
                            (old.epoch, old.created_ms),
                            (new_meta.epoch, new_meta.created_ms),
                            "{}: epoch or creation time changed",
                            write.collection
                        );
                    }
                }
            }
        }
        if let Ok(next) = expected {
            model = next;
        }
        check_against_model(&model, &after);
        for (c, seen) in after.iter().enumerate() {
            check_reads(&storage, &collection_name(c as u8), seen, page);
        }
        // A planned compaction that was committed keeps the document's state.
        if accepted {
            for check in planned {
                let Some(before_state) = load(&check.before) else {
                    continue;
                };
                let now = storage
                    .document_changes(&check.collection, &check.doc)
                    .expect("document_changes");
                let Some(after_state) = load(&now) else {
                    if allow_known(F2) {
                        continue;
                    }
                    panic!(
                        "{}/{}: compacted document no longer loads ({F2})",
                        check.collection, check.doc
                    )
                };
                count(2);
                assert_eq!(
                    before_state.state_vector(),
                    after_state.state_vector(),
                    "{}/{}: compaction changed the state vector",
                    check.collection,
                    check.doc
                );
            }
        }
    }
});
