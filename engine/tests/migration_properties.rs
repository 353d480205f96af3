//! Property tests of `Migrations` over random documents: the same migration
//! met twice must merge to one, different inputs must not share a client id,
//! and a step re-run on its own output must change nothing.
//!
//! Each case builds a random v1 notes document (see `support/notes_schema.rs`)
//! from several user clients that sync irregularly, so documents hold
//! concurrent edits, deletions and both old and new keys. Seeds: every run
//! prints its seed; `MIGRATION_SEED=<n>` replays one, `MIGRATION_CASES=<n>`
//! runs more cases (default 48).

#[path = "support/notes_schema.rs"]
mod notes;

use std::collections::{HashMap, HashSet};

use seqsync_engine::{DocId, StepOutput, MIGRATION_CLIENT_IDS};
use yrs::updates::decoder::Decode;
use yrs::{Doc, Options, ReadTxn, StateVector, Text, Transact, Update, WriteTxn};

/// xorshift64*: deterministic from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn seed_and_cases(test: &str) -> (u64, u64) {
    let seed = std::env::var("MIGRATION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026_1201);
    let cases = std::env::var("MIGRATION_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(48);
    println!("{test}: seed {seed}, {cases} cases (replay: MIGRATION_SEED={seed})");
    (seed, cases)
}

fn user_doc(client_id: u64, skip_gc: bool) -> Doc {
    Doc::with_options(Options {
        client_id: yrs::ClientID::new(client_id),
        offset_kind: yrs::OffsetKind::Utf16,
        skip_gc,
        ..Options::default()
    })
}

/// A random v1 document's updates, in the order they were made.
fn random_history(rng: &mut Rng) -> Vec<Vec<u8>> {
    let clients: Vec<Doc> = (0..1 + rng.below(3))
        .map(|_| user_doc(1 << 20 | rng.below(1 << 31), false))
        .collect();
    let world = user_doc(1, false);
    let mut updates = Vec::new();
    for round in 0..2 + rng.below(12) {
        let client = &clients[rng.below(clients.len() as u64) as usize];
        if rng.chance(70) {
            let sv = client.transact().state_vector();
            let missing = world.transact().encode_state_as_update_v1(&sv);
            notes::apply(client, &missing);
        }
        let update = match rng.below(6) {
            0 | 1 => notes::v1_edit(client, Some(&format!("title {round}")), None, ""),
            2 => notes::v1_edit(client, None, Some(&format!("tag{}", rng.below(5))), ""),
            3 => notes::v1_edit(client, None, None, &format!("w{round} ")),
            4 => {
                // A deletion inside the content, if there is any.
                let mut txn = client.transact_mut();
                let content = txn.get_or_insert_text(notes::CONTENT);
                let len = content.len(&txn);
                if len > 1 {
                    let at = rng.below(u64::from(len - 1)) as u32;
                    content.remove_range(&mut txn, at, 1);
                }
                txn.encode_update_v1()
            }
            _ => {
                // A client already on the new shape wrote `name` or `status`.
                let mut txn = client.transact_mut();
                let note = txn.get_or_insert_map(notes::NOTE);
                if rng.chance(50) {
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

#[test]
fn the_same_migration_run_twice_is_byte_identical_and_merges_to_one() {
    // Two engines (or an engine and a client) migrating the same state must
    // write the same blocks: merging both results must not hold anything
    // twice. The two copies are built differently on purpose: one keeps
    // deleted content (no GC), so its encoding differs from the other's.
    let (seed, cases) = seed_and_cases("same_migration_twice");
    let mut rng = Rng(seed | 1);
    let migrations = notes::migrations();
    let doc_id = DocId::new("note-1").unwrap();
    for case in 0..cases {
        let history = random_history(&mut rng);
        let here = doc_of(&history, false);
        let there = doc_of(&history, true);
        assert_ne!(
            notes::state_of(&here).len(),
            0,
            "case {case} (seed {seed}): empty document"
        );
        let ours = migrations.migrate(&doc_id, &here, 1, 3).unwrap();
        let theirs = migrations.migrate(&doc_id, &there, 1, 3).unwrap();
        assert_eq!(ours, theirs, "case {case} (seed {seed}): outputs differ");
        for output in &ours {
            assert!(MIGRATION_CLIENT_IDS.contains(&output.client_id));
        }
        let once = with(&here, &ours);
        let both = with(&once, &theirs);
        let other_way = with(&with(&there, &theirs), &ours);
        assert_eq!(
            notes::view(&once),
            notes::view(&both),
            "case {case} (seed {seed})"
        );
        assert_eq!(
            notes::view(&once),
            notes::view(&other_way),
            "case {case} (seed {seed})"
        );
        assert_eq!(state_vector_of(&once), state_vector_of(&both));
        // And the migration did what it says, once.
        let before = notes::view(&here);
        let after = notes::view(&once);
        assert_eq!(after.title, None, "case {case} (seed {seed})");
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
        assert_eq!(after.content, expected_content, "case {case} (seed {seed})");
    }
}

#[test]
fn different_inputs_never_reuse_a_client_id() {
    // Two runs on different states under one client id would put two
    // different blocks under one (client, clock): replicas would diverge
    // without an error.
    // - Within one document's lineage (a state that holds an earlier run's
    //   output plus new edits, as an upgrade on ingest or a client's re-run
    //   sees it) the derivation never picks an id the state already has:
    //   checked on every case.
    // - Unrelated states can only be told apart by the hash, folded into the
    //   65,535 reserved ids: two such runs of one step on one document share
    //   an id with probability 1/65,535. Checked statistically: the number of
    //   colliding pairs stays near what a uniform hash gives (a derivation
    //   that ignored the state would collide on every pair).
    let (seed, cases) = seed_and_cases("different_inputs");
    let mut rng = Rng(seed.rotate_left(17) | 1);
    let migrations = notes::migrations();
    let doc_id = DocId::new("note-1").unwrap();
    let mut ids_by_step: HashMap<u32, HashMap<u64, u64>> = HashMap::new();
    let mut states: HashSet<Vec<u8>> = HashSet::new();
    for case in 0..cases {
        let history = random_history(&mut rng);
        let doc = doc_of(&history, false);
        let canonical = seqsync_engine::migration::canonical_state(&doc.transact());
        if !states.insert(canonical) {
            continue; // the same state twice: the same ids are right
        }
        let outputs = migrations.migrate(&doc_id, &doc, 1, 3).unwrap();
        for output in &outputs {
            *ids_by_step
                .entry(output.from)
                .or_default()
                .entry(output.client_id)
                .or_default() += 1;
        }
        // The lineage: the migrated document gets a new old-shape edit (an
        // old client wrote `title` again) and is migrated from v1 again.
        let migrated = with(&doc, &outputs);
        let old_client = user_doc(1 << 40 | case, false);
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
                "case {case} (seed {seed}): derived id {} is already in the state",
                output.client_id
            );
        }
        let done = with(&migrated, &again);
        let view = notes::view(&done);
        assert_eq!(view.name.as_deref(), Some("again"));
        assert_eq!(view.title, None);
        assert_eq!(view.history.iter().filter(|h| *h == "v3").count(), 1);
    }
    let span = (MIGRATION_CLIENT_IDS.end - MIGRATION_CLIENT_IDS.start) as f64;
    for (step, ids) in &ids_by_step {
        let runs: u64 = ids.values().sum();
        let colliding_pairs: u64 = ids.values().map(|n| n * (n - 1) / 2).sum();
        let expected = (runs * runs.saturating_sub(1) / 2) as f64 / span;
        println!("step {step}: {runs} runs on distinct states, {colliding_pairs} colliding pairs (uniform hash: {expected:.2})");
        assert!(
            (colliding_pairs as f64) <= 3.0 * expected + 4.0,
            "seed {seed}: step {step} ids collide far more than a uniform hash would"
        );
    }
}

#[test]
fn rerunning_a_step_on_its_own_output_changes_nothing() {
    // Steps meet migrated data all the time (a client re-runs them after a
    // reset, an ingest upgrade re-runs them); on a migrated document they
    // must write nothing, or every re-run would log a change.
    let (seed, cases) = seed_and_cases("rerun_is_noop");
    let mut rng = Rng(seed.rotate_left(33) | 1);
    let migrations = notes::migrations();
    let doc_id = DocId::new("note-1").unwrap();
    for case in 0..cases {
        let history = random_history(&mut rng);
        let doc = doc_of(&history, false);
        let outputs = migrations.migrate(&doc_id, &doc, 1, 3).unwrap();
        let migrated = with(&doc, &outputs);
        for from in 1..3 {
            let again = migrations.migrate(&doc_id, &migrated, from, 3).unwrap();
            assert!(
                again.is_empty(),
                "case {case} (seed {seed}): re-run from {from} wrote {again:?}"
            );
        }
        // Each output is an ordinary update that decodes.
        for output in &outputs {
            Update::decode_v1(&output.update).unwrap();
        }
    }
}
