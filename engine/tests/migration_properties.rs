//! Property tests of `Migrations` over random documents: the same migration
//! met twice must merge to one, different inputs must not share a client id,
//! and a step re-run on its own output must change nothing.
//!
//! Each case builds a random v1 notes document (see
//! `seqsync_testkit::notes_schema`) from several user clients that sync
//! irregularly, so documents hold concurrent edits, deletions and both old
//! and new keys. The histories are a proptest strategy: a failing case is
//! shrunk to the fewest, simplest edits that still fail. Seeds: every run
//! prints its seed; `MIGRATION_SEED=<n>` replays one, `MIGRATION_CASES=<n>`
//! runs more cases (default 48).

use seqsync_testkit::notes_schema as notes;

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{RngSeed, TestRunner};
use seqsync_engine::{DocId, StepOutput, MIGRATION_CLIENT_IDS};
use yrs::updates::decoder::Decode;
use yrs::{Doc, Options, ReadTxn, StateVector, Text, Transact, Update, WriteTxn};

/// One edit of a random history: which client makes it, whether it
/// syncs with everything made so far first, and what it writes.
#[derive(Clone, Debug)]
struct Step {
    /// Index into the history's clients (taken modulo their number).
    client: usize,
    sync_first: bool,
    edit: Edit,
}

#[derive(Clone, Debug)]
enum Edit {
    /// An old client sets `title`.
    Title,
    /// An old client adds tag `tag<n>`.
    Tag(u8),
    /// Typing at the end of the content.
    Typed,
    /// One character deleted inside the content (position = this modulo
    /// the length), if there is any.
    Delete(u32),
    /// A client already on the new shape wrote `name`.
    NewName,
    /// A client already on the new shape wrote `status`.
    NewStatus,
}

/// A random v1 document's history: 1–3 user clients (their id offsets) and
/// 2–13 edits. Shrinks towards fewer clients, fewer edits and simpler ones.
#[derive(Clone, Debug)]
struct History {
    clients: Vec<u64>,
    steps: Vec<Step>,
}

fn history() -> impl Strategy<Value = History> {
    let edit = prop_oneof![
        2 => Just(Edit::Title),
        1 => (0u8..5).prop_map(Edit::Tag),
        1 => Just(Edit::Typed),
        1 => any::<u32>().prop_map(Edit::Delete),
        1 => prop_oneof![Just(Edit::NewName), Just(Edit::NewStatus)],
    ];
    let step =
        (0usize..3, prop::bool::weighted(0.7), edit).prop_map(|(client, sync_first, edit)| Step {
            client,
            sync_first,
            edit,
        });
    (
        prop::collection::vec(0u64..(1 << 31), 1..=3),
        prop::collection::vec(step, 2..14),
    )
        .prop_map(|(clients, steps)| History { clients, steps })
}

/// The run's configuration: its seed printed, so a failure can be replayed
/// (`MIGRATION_SEED=<n>`), and `MIGRATION_CASES=<n>` cases (default 48).
/// Failures are not persisted to files: the printed seed and proptest's
/// minimal failing input are the report.
fn config(test: &str) -> ProptestConfig {
    let seed = std::env::var("MIGRATION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026_1201);
    let cases = std::env::var("MIGRATION_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(48);
    println!("{test}: seed {seed}, {cases} cases (replay: MIGRATION_SEED={seed})");
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn user_doc(client_id: u64, skip_gc: bool) -> Doc {
    Doc::with_options(Options {
        client_id: yrs::ClientID::new(client_id),
        offset_kind: yrs::OffsetKind::Utf16,
        skip_gc,
        ..Options::default()
    })
}

/// A history's updates, in the order they were made. Deterministic: the
/// same history gives the same bytes.
fn updates_of(history: &History) -> Vec<Vec<u8>> {
    let clients: Vec<Doc> = history
        .clients
        .iter()
        .map(|offset| user_doc(1 << 20 | offset, false))
        .collect();
    let world = user_doc(1, false);
    let mut updates = Vec::new();
    for (round, step) in history.steps.iter().enumerate() {
        let client = &clients[step.client % clients.len()];
        if step.sync_first {
            let sv = client.transact().state_vector();
            let missing = world.transact().encode_state_as_update_v1(&sv);
            notes::apply(client, &missing);
        }
        let update = match &step.edit {
            Edit::Title => notes::v1_edit(client, Some(&format!("title {round}")), None, ""),
            Edit::Tag(n) => notes::v1_edit(client, None, Some(&format!("tag{n}")), ""),
            Edit::Typed => notes::v1_edit(client, None, None, &format!("w{round} ")),
            Edit::Delete(at) => {
                let mut txn = client.transact_mut();
                let content = txn.get_or_insert_text(notes::CONTENT);
                let len = content.len(&txn);
                if len > 1 {
                    content.remove_range(&mut txn, at % (len - 1), 1);
                }
                txn.encode_update_v1()
            }
            Edit::NewName | Edit::NewStatus => {
                let mut txn = client.transact_mut();
                let note = txn.get_or_insert_map(notes::NOTE);
                if matches!(step.edit, Edit::NewName) {
                    yrs::Map::insert(&note, &mut txn, "name", format!("name {round}"));
                } else {
                    yrs::Map::insert(&note, &mut txn, "status", "published");
                }
                txn.encode_update_v1()
            }
        };
        notes::apply(&world, &update);
        updates.push(update);
    }
    updates
}

fn doc_of(updates: &[Vec<u8>], skip_gc: bool) -> Doc {
    let doc = user_doc(2, skip_gc);
    for update in updates {
        notes::apply(&doc, update);
    }
    doc
}

fn with(doc: &Doc, outputs: &[StepOutput]) -> Doc {
    let merged = notes::doc_from(&notes::state_of(doc), 3);
    for output in outputs {
        notes::apply(&merged, &output.update);
    }
    merged
}

fn state_vector_of(doc: &Doc) -> StateVector {
    doc.transact().state_vector()
}

/// Runs `property` on `config(test)`'s cases of [`history`]; a failure
/// panics with proptest's report: the seed was printed, and the minimal
/// failing history follows.
fn check(test: &str, property: impl Fn(&History)) {
    let mut runner = TestRunner::new(config(test));
    if let Err(failure) = runner.run(&history(), |history| {
        property(&history);
        Ok(())
    }) {
        panic!("{test}: {failure}");
    }
}

#[test]
fn the_same_migration_run_twice_is_byte_identical_and_merges_to_one() {
    // Two engines (or an engine and a client) migrating the same state must
    // write the same blocks: merging both results must not hold anything
    // twice. The two copies are built differently on purpose: one keeps
    // deleted content (no GC), so its encoding differs from the other's.
    let migrations = notes::migrations();
    let doc_id = DocId::new("note-1").unwrap();
    check("same_migration_twice", |history| {
        let history = updates_of(history);
        let here = doc_of(&history, false);
        let there = doc_of(&history, true);
        assert_ne!(notes::state_of(&here).len(), 0, "empty document");
        let ours = migrations.migrate(&doc_id, &here, 1, 3).unwrap();
        let theirs = migrations.migrate(&doc_id, &there, 1, 3).unwrap();
        assert_eq!(ours, theirs, "outputs differ");
        for output in &ours {
            assert!(MIGRATION_CLIENT_IDS.contains(&output.client_id));
        }
        let once = with(&here, &ours);
        let both = with(&once, &theirs);
        let other_way = with(&with(&there, &theirs), &ours);
        assert_eq!(notes::view(&once), notes::view(&both));
        assert_eq!(notes::view(&once), notes::view(&other_way));
        assert_eq!(state_vector_of(&once), state_vector_of(&both));
        // And the migration did what it says, once.
        let before = notes::view(&here);
        let after = notes::view(&once);
        assert_eq!(after.title, None);
        assert_eq!(after.name, before.title.clone().or(before.name.clone()));
        assert_eq!(
            after.status.as_deref(),
            Some(before.status.as_deref().unwrap_or("draft"))
        );
        assert_eq!(after.tags, before.tags, "no field is lost");
        assert_eq!(after.history.iter().filter(|h| *h == "v3").count(), 1);
        let expected_content = if before.content.starts_with(notes::HEADING) {
            before.content.clone()
        } else {
            format!("{}{}", notes::HEADING, before.content)
        };
        assert_eq!(after.content, expected_content);
    });
}

#[test]
fn a_migrated_document_migrated_again_never_reuses_a_client_id_it_holds() {
    // Two runs on different states under one client id would put two
    // different blocks under one (client, clock): replicas would diverge
    // without an error. Within one document's lineage (a state that holds an
    // earlier run's output plus new edits, as an upgrade on ingest or a
    // client's re-run sees it) the derivation never picks an id the state
    // already has.
    let migrations = notes::migrations();
    let doc_id = DocId::new("note-1").unwrap();
    check("lineage_ids", |history| {
        let doc = doc_of(&updates_of(history), false);
        let outputs = migrations.migrate(&doc_id, &doc, 1, 3).unwrap();
        // The lineage: the migrated document gets a new old-shape edit (an
        // old client wrote `title` again) and is migrated from v1 again.
        let migrated = with(&doc, &outputs);
        let old_client = user_doc(1 << 40, false);
        notes::apply(&old_client, &notes::state_of(&migrated));
        let edit = notes::v1_edit(&old_client, Some("again"), None, "");
        notes::apply(&migrated, &edit);
        let present: HashSet<u64> = state_vector_of(&migrated)
            .iter()
            .map(|(c, _)| c.get())
            .collect();
        let again = migrations.migrate(&doc_id, &migrated, 1, 3).unwrap();
        assert!(!again.is_empty(), "the old-shape edit must be migrated");
        for output in &again {
            assert!(
                !present.contains(&output.client_id),
                "derived id {} is already in the state",
                output.client_id
            );
        }
        let done = with(&migrated, &again);
        let view = notes::view(&done);
        assert_eq!(view.name.as_deref(), Some("again"));
        assert_eq!(view.title, None);
        assert_eq!(view.history.iter().filter(|h| *h == "v3").count(), 1);
    });
}

#[test]
fn unrelated_states_share_client_ids_no_more_often_than_a_uniform_hash() {
    // Unrelated states can only be told apart by the hash, folded into the
    // 65,535 reserved ids: two such runs of one step on one document share
    // an id with probability 1/65,535. Checked statistically over the
    // strategy's histories (not a property of one case, so not shrunk): the
    // number of colliding pairs stays near what a uniform hash gives (a
    // derivation that ignored the state would collide on every pair).
    let config = config("different_inputs");
    let cases = config.cases;
    let mut runner = TestRunner::new(config);
    let migrations = notes::migrations();
    let doc_id = DocId::new("note-1").unwrap();
    let mut ids_by_step: HashMap<u32, HashMap<u64, u64>> = HashMap::new();
    let mut states: HashSet<Vec<u8>> = HashSet::new();
    for _ in 0..cases {
        let history = history().new_tree(&mut runner).unwrap().current();
        let doc = doc_of(&updates_of(&history), false);
        let canonical = seqsync_engine::migration::canonical_state(&doc.transact());
        if !states.insert(canonical) {
            continue; // the same state twice: the same ids are right
        }
        for output in migrations.migrate(&doc_id, &doc, 1, 3).unwrap() {
            *ids_by_step
                .entry(output.from)
                .or_default()
                .entry(output.client_id)
                .or_default() += 1;
        }
    }
    let span = (MIGRATION_CLIENT_IDS.end - MIGRATION_CLIENT_IDS.start) as f64;
    for (step, ids) in &ids_by_step {
        let runs: u64 = ids.values().sum();
        let colliding_pairs: u64 = ids.values().map(|n| n * (n - 1) / 2).sum();
        let expected = (runs * runs.saturating_sub(1) / 2) as f64 / span;
        println!("step {step}: {runs} runs on distinct states, {colliding_pairs} colliding pairs (uniform hash: {expected:.2})");
        assert!(
            (colliding_pairs as f64) <= 3.0 * expected + 4.0,
            "step {step} ids collide far more than a uniform hash would"
        );
    }
}

#[test]
fn rerunning_a_step_on_its_own_output_changes_nothing() {
    // Steps meet migrated data all the time (a client re-runs them after a
    // reset, an ingest upgrade re-runs them); on a migrated document they
    // must write nothing, or every re-run would log a change.
    let migrations = notes::migrations();
    let doc_id = DocId::new("note-1").unwrap();
    check("rerun_is_noop", |history| {
        let doc = doc_of(&updates_of(history), false);
        let outputs = migrations.migrate(&doc_id, &doc, 1, 3).unwrap();
        let migrated = with(&doc, &outputs);
        for from in 1..3 {
            let again = migrations.migrate(&doc_id, &migrated, from, 3).unwrap();
            assert!(again.is_empty(), "re-run from {from} wrote {again:?}");
        }
        // Each output is an ordinary update that decodes.
        for output in &outputs {
            Update::decode_v1(&output.update).unwrap();
        }
    });
}
