//! Bundles end to end: export from one backend, import into another, and
//! every way an import must refuse, step back, skip or resume
//! (`docs/BUNDLES.md`). Stores are real files (SQLite,
//! redb) or memory; bundles are real files in a temporary directory.

use seqsync_testkit::harness as common;

use std::path::Path;
use std::sync::Arc;

use common::{Client, Rng};
use seqsync::bundle::{
    export_collection, import_bundle, read_batch, read_manifest, verify_bundle, BundleError,
    ExportOptions, ImportEpoch, ImportOptions, MANIFEST_FILE,
};
use seqsync::{
    collection_digest, BackendKind, Change, CollectionName, DigestCache, Durability, Engine,
    EngineConfig, Fault, FaultMode, FaultTarget, FaultyStorage, PushOptions, Storage,
};

fn store(kind: BackendKind, dir: &Path) -> Arc<dyn Storage> {
    let mut config = EngineConfig::default();
    config.storage.backend = kind;
    config.storage.path = dir.join("data");
    config.storage.durability = Durability::Immediate;
    seqsync::open_storage(&config.storage).unwrap()
}

fn name(s: &str) -> CollectionName {
    CollectionName::new(s).unwrap()
}

fn all_changes(storage: &dyn Storage, c: &str) -> Vec<Change> {
    let mut out = Vec::new();
    let mut cursor = 0;
    while let Some(page) = storage.read_changes(&name(c), cursor, 1000).unwrap() {
        if page.changes.is_empty() {
            break;
        }
        cursor = page.changes.last().unwrap().seq;
        out.extend(page.changes);
    }
    out
}

fn noop(_: seqsync::bundle::BundleProgress) {}

/// A source store with a history of random edits on 4 documents (one
/// deleted), compacted in the middle so the log has holes and snapshots.
fn source(kind: BackendKind, dir: &Path, rng: &mut Rng) -> Arc<dyn Storage> {
    let storage = store(kind, dir);
    let runtime = common::runtime();
    runtime.block_on(async {
        let mut config = EngineConfig::default();
        config.compaction.max_deltas = 1_000_000;
        config.compaction.peer_timeout_secs = 0;
        let engine = Engine::open_with_storage(config, storage.clone()).unwrap();
        let clients: Vec<Client> = (0..4).map(Client::new).collect();
        for round in 0..120 {
            let d = rng.below(4) as usize;
            let update = clients[d].random_edit(rng);
            engine
                .push("c", &format!("d{d}"), update, PushOptions::default())
                .await
                .unwrap();
            if round == 60 {
                engine.compact("c").await.unwrap();
            }
        }
        engine.delete("c", "d3").await.unwrap();
        engine.shutdown().await;
    });
    storage
}

fn small_batches() -> ExportOptions {
    ExportOptions {
        max_batch_changes: 9,
        max_batch_bytes: 1 << 20,
        with_state: true,
    }
}

/// Exports all of collection `c` into `dir` in small batches.
fn export_all(src: &dyn Storage, dir: &Path) -> seqsync::bundle::ExportReport {
    export_collection(src, &name("c"), 0, None, dir, small_batches(), &mut noop).unwrap()
}

fn state_digest(storage: &dyn Storage) -> Option<u64> {
    collection_digest(storage, &name("c"), &mut DigestCache::default())
        .unwrap()
        .unwrap()
        .state_digest
}

/// Export from every backend into every other: the receiver ends with the
/// same epoch, head, log checksum and state digest, and every change
/// byte-identical (seq, document, kind, payload, checksum).
#[test]
fn export_then_import_into_another_backend_is_identical() {
    let mut rng = Rng::from_env("export_then_import_into_another_backend_is_identical");
    let kinds = [BackendKind::Sqlite, BackendKind::Redb, BackendKind::Memory];
    for from in kinds {
        let dir = tempfile::tempdir().unwrap();
        let src = source(from, &dir.path().join("src"), &mut rng);
        let bundle = dir.path().join("bundle");
        let report = export_all(&*src, &bundle);
        assert!(report.manifest.batches.len() > 3, "several batches");
        verify_bundle(&bundle, &mut noop).unwrap();
        for to in kinds {
            let target_dir = tempfile::tempdir().unwrap();
            let dst = store(to, target_dir.path());
            let imported =
                import_bundle(&*dst, &bundle, ImportOptions::default(), &mut noop).unwrap();
            assert!(imported.state_digest_checked);
            let (a, b) = (
                src.collection(&name("c")).unwrap().unwrap(),
                dst.collection(&name("c")).unwrap().unwrap(),
            );
            assert_eq!(
                (a.epoch, a.head, a.log_checksum),
                (b.epoch, b.head, b.log_checksum),
                "{from:?} -> {to:?}"
            );
            assert_eq!(
                all_changes(&*src, "c"),
                all_changes(&*dst, "c"),
                "{from:?} -> {to:?}"
            );
            assert_eq!(state_digest(&*src), state_digest(&*dst));
            // Importing the same bundle again is a no-op.
            let again = import_bundle(&*dst, &bundle, ImportOptions::default(), &mut noop).unwrap();
            assert_eq!((again.batches_applied, again.changes), (0, 0));
            assert_eq!(dst.collection(&name("c")).unwrap().unwrap().head, b.head);
        }
    }
}

/// A receiver with nothing and a bundle that starts later uses the state
/// batch; one without a state batch is refused with what to do.
#[test]
fn an_empty_receiver_uses_the_state_batch() {
    let mut rng = Rng::from_env("an_empty_receiver_uses_the_state_batch");
    let dir = tempfile::tempdir().unwrap();
    let src = source(BackendKind::Sqlite, &dir.path().join("src"), &mut rng);
    let head = src.collection(&name("c")).unwrap().unwrap().head;
    let bundle = dir.path().join("later");
    export_collection(
        &*src,
        &name("c"),
        head / 2,
        None,
        &bundle,
        small_batches(),
        &mut noop,
    )
    .unwrap();
    let dst = store(BackendKind::Redb, &dir.path().join("dst"));
    let report = import_bundle(&*dst, &bundle, ImportOptions::default(), &mut noop).unwrap();
    assert!(report.used_state_batch && report.state_digest_checked);
    assert_eq!(state_digest(&*src), state_digest(&*dst));
    let meta = dst.collection(&name("c")).unwrap().unwrap();
    assert_eq!(
        meta.log_checksum,
        src.collection(&name("c")).unwrap().unwrap().log_checksum
    );

    let bare = dir.path().join("bare");
    let options = ExportOptions {
        with_state: false,
        ..small_batches()
    };
    export_collection(&*src, &name("c"), head / 2, None, &bare, options, &mut noop).unwrap();
    let empty = store(BackendKind::Memory, &dir.path().join("empty"));
    let err = import_bundle(&*empty, &bare, ImportOptions::default(), &mut noop).unwrap_err();
    assert!(matches!(err, BundleError::NeedsBase { .. }), "{err}");
}

/// Replaces the first occurrence of `from` in the file by `to` (same
/// length), leaving every other byte as it was.
fn replace_bytes(path: &Path, from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern in the file");
    bytes[at..at + to.len()].copy_from_slice(to);
    std::fs::write(path, bytes).unwrap();
}

fn flip_one_bit(path: &Path, at_from_end: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() - at_from_end;
    bytes[at] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

/// Every damaged or foreign input is refused before anything of it is
/// written, with an error that names the file: a flipped bit in a body, a
/// truncated file, a foreign format version, a batch from another epoch, a
/// receiver with another epoch or another history.
#[test]
fn damaged_or_foreign_bundles_are_refused() {
    let mut rng = Rng::from_env("damaged_or_foreign_bundles_are_refused");
    let dir = tempfile::tempdir().unwrap();
    let src = source(BackendKind::Sqlite, &dir.path().join("src"), &mut rng);
    let fresh_bundle = |label: &str| {
        let path = dir.path().join(label);
        export_all(&*src, &path);
        path
    };
    let first_batch = |bundle: &Path| bundle.join(&read_manifest(bundle).unwrap().batches[1].file);

    // One flipped bit in a body.
    let bundle = fresh_bundle("flipped");
    flip_one_bit(&first_batch(&bundle), 3);
    let dst = store(BackendKind::Memory, &dir.path().join("m1"));
    let err = import_bundle(&*dst, &bundle, ImportOptions::default(), &mut noop).unwrap_err();
    assert!(matches!(err, BundleError::BodyHash { .. }), "{err}");
    assert!(err.to_string().contains(".batch"), "names the file: {err}");
    // What came before the damaged batch was applied; nothing of it.
    let head = dst.collection(&name("c")).unwrap().map_or(0, |m| m.head);
    let manifest = read_manifest(&bundle).unwrap();
    assert_eq!(head, manifest.batches[0].end);
    assert!(matches!(
        verify_bundle(&bundle, &mut noop).unwrap_err(),
        BundleError::BodyHash { .. }
    ));

    // A truncated file.
    let bundle = fresh_bundle("truncated");
    let path = first_batch(&bundle);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
    let err = verify_bundle(&bundle, &mut noop).unwrap_err();
    assert!(matches!(err, BundleError::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");

    // A foreign format version, in a batch and in the manifest.
    let bundle = fresh_bundle("foreign");
    let path = first_batch(&bundle);
    replace_bytes(&path, b"\"format_version\":2", b"\"format_version\":9");
    assert!(matches!(
        read_batch(&path).unwrap_err(),
        BundleError::FormatVersion { found: 9, .. }
    ));
    let manifest_path = bundle.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest_path).unwrap().replacen(
        "\"format_version\": 2",
        "\"format_version\": 3",
        1,
    );
    std::fs::write(&manifest_path, text).unwrap();
    assert!(matches!(
        read_manifest(&bundle).unwrap_err(),
        BundleError::FormatVersion { found: 3, .. }
    ));

    // A receiver with another epoch (an unrelated collection of that name).
    let bundle = fresh_bundle("epoch");
    let other = source(BackendKind::Memory, &dir.path().join("other"), &mut rng);
    let err = import_bundle(&*other, &bundle, ImportOptions::default(), &mut noop).unwrap_err();
    assert!(matches!(err, BundleError::EpochMismatch { .. }), "{err}");

    // A receiver of the same epoch with another history: no batch matches.
    let dst = store(BackendKind::Memory, &dir.path().join("diverged"));
    let manifest = read_manifest(&bundle).unwrap();
    let prefix = dir.path().join("prefix");
    copy_prefix(&bundle, &prefix, 2);
    import_bundle(&*dst, &prefix, ImportOptions::default(), &mut noop).unwrap();
    // Write one change of our own at the head, as a diverging replica would.
    let meta = dst.collection(&name("c")).unwrap().unwrap();
    let own = Change {
        seq: meta.head + 1,
        doc: seqsync::DocId::new("d0").unwrap(),
        kind: seqsync::ChangeKind::Update,
        payload: Client::new(77).insert(0, "mine"),
        schema_version: 1,
        origin: None,
        author: None,
        committed_ms: 0,
        log_checksum: 0,
    };
    dst.commit(&seqsync::WriteBatch {
        writes: vec![seqsync::CollectionWrite {
            collection: name("c"),
            base: seqsync::WriteBase::Existing {
                epoch: meta.epoch,
                head: meta.head,
            },
            append: vec![own],
            compact: Vec::new(),
            peers: Vec::new(),
            raise_schema_version: None,
            append_mode: Default::default(),
        }],
    })
    .unwrap();
    let err = import_bundle(&*dst, &bundle, ImportOptions::default(), &mut noop).unwrap_err();
    assert!(matches!(err, BundleError::NoMatchingBatch { .. }), "{err}");
    assert!(manifest.batches.len() > 2);
}

/// A copy of `bundle` listing only its first `n` batches (a shorter export
/// of the same history).
fn copy_prefix(bundle: &Path, to: &Path, n: usize) {
    std::fs::create_dir_all(to).unwrap();
    let mut manifest = read_manifest(bundle).unwrap();
    manifest.batches.truncate(n);
    manifest.until = manifest.batches.last().unwrap().end;
    manifest.state = None;
    for batch in &manifest.batches {
        std::fs::copy(bundle.join(&batch.file), to.join(&batch.file)).unwrap();
    }
    std::fs::write(
        to.join(MANIFEST_FILE),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
}

/// A receiver that imported part of the history from one export and
/// compacted since no longer holds the change at `start − 1` of the batch
/// of another export (cut differently) that holds its next seq: the
/// importer steps back to an earlier batch whose start it still holds,
/// checks that every change it holds after that point is the bundle's, and
/// continues.
#[test]
fn the_importer_steps_back_to_a_batch_that_matches() {
    let mut rng = Rng::from_env("the_importer_steps_back_to_a_batch_that_matches");
    let dir = tempfile::tempdir().unwrap();
    let src = source(BackendKind::Sqlite, &dir.path().join("src"), &mut rng);
    let coarse = dir.path().join("coarse");
    export_all(&*src, &coarse);
    let fine = dir.path().join("fine");
    let options = ExportOptions {
        max_batch_changes: 5,
        ..small_batches()
    };
    export_collection(&*src, &name("c"), 0, None, &fine, options, &mut noop).unwrap();
    let prefix = dir.path().join("prefix");
    copy_prefix(&coarse, &prefix, 4);
    let dst = store(BackendKind::Redb, &dir.path().join("dst"));
    import_bundle(&*dst, &prefix, ImportOptions::default(), &mut noop).unwrap();
    // The receiver compacts everything it holds.
    let runtime = common::runtime();
    runtime.block_on(async {
        let mut config = EngineConfig::default();
        config.compaction.peer_timeout_secs = 0;
        let engine = Engine::open_with_storage(config, dst.clone()).unwrap();
        engine.compact("c").await.unwrap();
        engine.shutdown().await;
    });
    let head = dst.collection(&name("c")).unwrap().unwrap().head;
    let held: std::collections::HashSet<u64> =
        all_changes(&*dst, "c").iter().map(|c| c.seq).collect();
    let fine_manifest = read_manifest(&fine).unwrap();
    let candidate = fine_manifest.batches.iter().find(|b| b.end > head).unwrap();
    let report = import_bundle(&*dst, &fine, ImportOptions::default(), &mut noop).unwrap();
    assert!(report.state_digest_checked);
    assert_eq!(state_digest(&*src), state_digest(&*dst));
    let (a, b) = (
        src.collection(&name("c")).unwrap().unwrap(),
        dst.collection(&name("c")).unwrap().unwrap(),
    );
    assert_eq!((a.head, a.log_checksum), (b.head, b.log_checksum));
    println!(
        "receiver head {head}, holds {} changes; compared {} batch(es) before one matched",
        held.len(),
        report.batches_compared
    );
    if candidate.start > 1 && !held.contains(&(candidate.start - 1)) {
        assert!(report.batches_compared >= 2, "{report:?}");
    }
}

/// An import whose commits start failing part-way (a crash in all but
/// name: each batch is one commit) is finished by running it again, with
/// nothing lost or doubled; so is a restore under a new epoch.
#[test]
fn an_interrupted_import_finishes_when_run_again() {
    let mut rng = Rng::from_env("an_interrupted_import_finishes_when_run_again");
    let dir = tempfile::tempdir().unwrap();
    let src = source(BackendKind::Sqlite, &dir.path().join("src"), &mut rng);
    let bundle = dir.path().join("bundle");
    export_all(&*src, &bundle);
    for epoch in [ImportEpoch::Keep, ImportEpoch::New] {
        for (fail_at, mode) in [
            (1u64, FaultMode::FailBefore),
            (2, FaultMode::FailAfterCommit),
            (3, FaultMode::FailBefore),
            (5, FaultMode::FailAfterCommit),
        ] {
            let dst_dir = tempfile::tempdir().unwrap();
            let real = store(BackendKind::Sqlite, dst_dir.path());
            let faulty = Arc::new(FaultyStorage::new(real.clone()));
            faulty.arm(Fault {
                target: FaultTarget::Commit,
                nth: fail_at,
                persistent: true,
                mode,
            });
            let options = ImportOptions { epoch };
            assert!(import_bundle(&*faulty, &bundle, options, &mut noop).is_err());
            faulty.heal();
            let report = import_bundle(&*faulty, &bundle, options, &mut noop).unwrap();
            let meta = real.collection(&name("c")).unwrap().unwrap();
            let source_meta = src.collection(&name("c")).unwrap().unwrap();
            assert_eq!(
                meta.head, source_meta.head,
                "{epoch:?} failing at commit {fail_at}"
            );
            let ours: Vec<_> = all_changes(&*real, "c")
                .into_iter()
                .map(|c| (c.seq, c.payload))
                .collect();
            let theirs: Vec<_> = all_changes(&*src, "c")
                .into_iter()
                .map(|c| (c.seq, c.payload))
                .collect();
            assert_eq!(ours, theirs);
            assert_eq!(state_digest(&*real), state_digest(&*src));
            match epoch {
                ImportEpoch::Keep => {
                    assert_eq!(meta.epoch, source_meta.epoch);
                    assert!(report.state_digest_checked);
                }
                _ => assert_ne!(meta.epoch, source_meta.epoch),
            }
        }
    }
}

/// A backup taken while pushes continue holds every push acknowledged
/// before it began, and restores into another backend with the same
/// documents.
#[test]
fn a_backup_under_concurrent_pushes_restores_every_earlier_ack() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = common::runtime();
    let backup = dir.path().join("backup");
    let src_dir = dir.path().join("src");
    let acked_before = runtime.block_on(async {
        let mut config = EngineConfig::default();
        config.storage.path = src_dir.join("data");
        let engine = seqsync::open(config).unwrap();
        let mut acked = Vec::new();
        for c in 0..3 {
            let client = Client::new(c);
            for i in 0..30 {
                let update = client.insert(i, "a");
                let coll = format!("c{c}");
                let out = engine
                    .push(&coll, "d", update.clone(), PushOptions::default())
                    .await
                    .unwrap();
                acked.push((coll, out.seq.unwrap(), update));
            }
        }
        // Pushes continue while the backup runs.
        let writer = {
            let engine = engine.clone();
            tokio::spawn(async move {
                let client = Client::new(50);
                for i in 0..200 {
                    let _ = engine
                        .push("c1", "e", client.insert(i, "b"), PushOptions::default())
                        .await;
                }
            })
        };
        let reports = engine.backup(&backup).await.unwrap();
        assert_eq!(reports.len(), 3);
        writer.await.unwrap();
        engine.shutdown().await;
        acked
    });
    let dst = store(BackendKind::Redb, &dir.path().join("dst"));
    seqsync::bundle::restore_backup(&*dst, &backup, ImportOptions::default(), &mut noop).unwrap();
    for (coll, seq, update) in acked_before {
        let found = all_changes(&*dst, &coll)
            .into_iter()
            .find(|c| c.seq == seq)
            .unwrap();
        assert_eq!(found.payload, update, "{coll} seq {seq}");
    }
}

/// A bundle that starts after the receiver's head (a gap), and a batch
/// whose header claims another checksum, are refused with errors that say
/// so, and nothing is written.
#[test]
fn a_gap_or_a_wrong_checksum_is_refused() {
    let mut rng = Rng::from_env("a_gap_or_a_wrong_checksum_is_refused");
    let dir = tempfile::tempdir().unwrap();
    let src = source(BackendKind::Sqlite, &dir.path().join("src"), &mut rng);
    let full = dir.path().join("full");
    export_all(&*src, &full);
    let dst = store(BackendKind::Memory, &dir.path().join("dst"));
    let prefix = dir.path().join("prefix");
    copy_prefix(&full, &prefix, 1);
    import_bundle(&*dst, &prefix, ImportOptions::default(), &mut noop).unwrap();
    let head = dst.collection(&name("c")).unwrap().unwrap().head;
    // A bundle of the same history that starts well after the receiver.
    let later = dir.path().join("later");
    let after = read_manifest(&full).unwrap().batches[3].end;
    let options = ExportOptions {
        with_state: false,
        ..small_batches()
    };
    export_collection(&*src, &name("c"), after, None, &later, options, &mut noop).unwrap();
    let err = import_bundle(&*dst, &later, ImportOptions::default(), &mut noop).unwrap_err();
    assert!(matches!(err, BundleError::NoMatchingBatch { .. }), "{err}");
    assert!(err.to_string().contains(&format!("head {head}")), "{err}");
    assert_eq!(dst.collection(&name("c")).unwrap().unwrap().head, head);

    // A header whose checksum at the end was changed: the chain inside the
    // batch no longer adds up to it.
    let manifest = read_manifest(&full).unwrap();
    let path = full.join(&manifest.batches[1].file);
    let batch = read_batch(&path).unwrap();
    replace_bytes(
        &path,
        batch.header.checksum_at_end.as_bytes(),
        b"0123456789abcdef",
    );
    // The manifest vouches for each header: a changed header is caught.
    let err = import_bundle(&*dst, &full, ImportOptions::default(), &mut noop).unwrap_err();
    assert!(matches!(err, BundleError::Inconsistent { .. }), "{err}");
    assert!(err.to_string().contains("header's BLAKE3"), "{err}");
    // With the manifest rewritten to match (a forger's bundle), the chain
    // inside the batch still does not add up to the claimed end.
    let tampered = read_batch(&path).unwrap();
    let manifest_path = full.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest_path).unwrap().replacen(
        &manifest.batches[1].header_blake3,
        &tampered.header_blake3,
        1,
    );
    std::fs::write(&manifest_path, text).unwrap();
    let err = import_bundle(&*dst, &full, ImportOptions::default(), &mut noop).unwrap_err();
    assert!(matches!(err, BundleError::Checksum { .. }), "{err}");
    assert_eq!(dst.collection(&name("c")).unwrap().unwrap().head, head);
    assert!(matches!(
        verify_bundle(&full, &mut noop).unwrap_err(),
        BundleError::Checksum { .. }
    ));
}

/// A bundle exported at schema version 1 keeps its version on import, and
/// an engine with steps 1 → 2 migrates it when it opens the store.
#[test]
fn a_bundle_of_an_older_schema_is_migrated_when_opened() {
    let mut rng = Rng::from_env("a_bundle_of_an_older_schema_is_migrated_when_opened");
    let dir = tempfile::tempdir().unwrap();
    let src = source(BackendKind::Sqlite, &dir.path().join("src"), &mut rng);
    let bundle = dir.path().join("bundle");
    export_all(&*src, &bundle);
    let dst_dir = dir.path().join("dst");
    let dst = store(BackendKind::Redb, &dst_dir);
    import_bundle(&*dst, &bundle, ImportOptions::default(), &mut noop).unwrap();
    assert_eq!(
        dst.collection(&name("c")).unwrap().unwrap().schema_version,
        1
    );
    let marks = seqsync::Migrations::new().step(
        1,
        |_: &seqsync::DocId, txn: &mut yrs::TransactionMut<'_>| {
            use yrs::{Map, WriteTxn};
            let meta = txn.get_or_insert_map("meta");
            if meta.get(txn, "v2").is_none() {
                meta.insert(txn, "v2", true);
            }
            Ok(())
        },
    );
    let runtime = common::runtime();
    runtime.block_on(async {
        let engine = seqsync::builder(EngineConfig::default())
            .storage(dst.clone())
            .migrations(marks)
            .open()
            .unwrap();
        assert_eq!(engine.schema_version(), 2);
        let page = engine.changes("c", 0, 0, None).await.unwrap();
        assert_eq!(page.schema_version, 2);
        engine.shutdown().await;
    });
    // The live documents got the step's change; the tombstone did not.
    let migrated: Vec<_> = all_changes(&*dst, "c")
        .into_iter()
        .filter(|c| c.schema_version == 2)
        .map(|c| c.doc.to_string())
        .collect();
    assert_eq!(migrated, vec!["d0", "d1", "d2"]);
}

/// Random damage to a batch file (flipped bits anywhere, header included,
/// cuts, garbage appended, a rewritten header length) always fails
/// `verify` with a typed error, never a panic or a batch that passes.
#[test]
fn random_damage_to_a_batch_is_always_a_typed_error() {
    let mut rng = Rng::from_env("random_damage_to_a_batch_is_always_a_typed_error");
    let dir = tempfile::tempdir().unwrap();
    let src = source(BackendKind::Memory, &dir.path().join("src"), &mut rng);
    let bundle = dir.path().join("bundle");
    export_all(&*src, &bundle);
    let manifest = read_manifest(&bundle).unwrap();
    let path = bundle.join(&manifest.batches[0].file);
    let original = std::fs::read(&path).unwrap();
    for round in 0..500 {
        let mut bytes = original.clone();
        match rng.below(4) {
            0 => {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(bytes.len() as u64) as usize;
                    bytes[at] ^= 1 << rng.below(8);
                }
            }
            1 => bytes.truncate(rng.below(bytes.len() as u64) as usize),
            2 => bytes.extend((0..1 + rng.below(64)).map(|_| rng.below(256) as u8)),
            _ => {
                let len = rng.below(u64::from(u32::MAX)) as u32;
                bytes[8..12].copy_from_slice(&len.to_le_bytes());
            }
        }
        if bytes == original {
            continue;
        }
        std::fs::write(&path, &bytes).unwrap();
        let result = std::panic::catch_unwind(|| verify_bundle(&bundle, &mut noop));
        match result {
            Ok(Err(_)) => {}
            Ok(Ok(_)) => panic!("round {round}: a damaged batch passed verify"),
            Err(_) => panic!("round {round}: verify panicked"),
        }
    }
    std::fs::write(&path, &original).unwrap();
    verify_bundle(&bundle, &mut noop).unwrap();
}
