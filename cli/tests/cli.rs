//! The `seqsync` binary as an operator runs it, on real stores in
//! temporary directories: every command with `--json`, the errors a damaged
//! bundle gives, moving a store between backends both ways, restoring over
//! existing data, and an import SIGKILLed at random points and run again.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use yrs::{Text, Transact};

const BIN: &str = env!("CARGO_BIN_EXE_seqsync");

fn seqsync(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok_json(args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = seqsync(&all);
    assert!(
        out.status.success(),
        "seqsync {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A SQLite store with `collections` collections of `pushes` typed edits
/// over 3 documents each.
fn write_store(dir: &Path, collections: usize, pushes: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut config = seqsync_engine::EngineConfig::default();
        config.storage.path = dir.to_owned();
        // No compaction: whether a background compaction finishes before
        // shutdown is timing, and the tests count the source's changes.
        config.compaction.max_deltas = u64::MAX;
        config.compaction.max_delta_bytes = u64::MAX;
        let engine = seqsync_actors::Engine::builder(config)
            .storage_opener(seqsync_adapters::open_storage)
            .open()
            .unwrap();
        for c in 0..collections {
            let docs: Vec<yrs::Doc> = (0..3)
                .map(|d| yrs::Doc::with_client_id((1 << 20) + (c * 10 + d) as u64))
                .collect();
            let mut batch = Vec::new();
            for i in 0..pushes {
                let d = i % 3;
                let text = docs[d].get_or_insert_text("t");
                let mut txn = docs[d].transact_mut();
                let len = text.len(&txn);
                text.insert(&mut txn, len, &format!("w{i} "));
                batch.push((format!("doc{d}"), txn.encode_update_v1()));
                if batch.len() == 50 {
                    engine
                        .push_batch(
                            &format!("coll{c}"),
                            std::mem::take(&mut batch),
                            Default::default(),
                        )
                        .await
                        .unwrap();
                }
            }
            if !batch.is_empty() {
                engine
                    .push_batch(&format!("coll{c}"), batch, Default::default())
                    .await
                    .unwrap();
            }
            engine.ack(&format!("coll{c}"), "phone", 5).await.unwrap();
        }
        engine.shutdown().await;
    });
}

fn digests(store: &str) -> Vec<(String, String, Value)> {
    let out = ok_json(&["verify", "--store", store]);
    out["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["collection"].as_str().unwrap().to_owned(),
                c["log_checksum"].as_str().unwrap().to_owned(),
                c["state_digest"].clone(),
            )
        })
        .collect()
}

/// Every command an operator needs, chained: inspect, export, verify,
/// import into redb, migrate-storage both ways, backup, restore (into an
/// empty store and over existing data), compact.
#[test]
fn every_command_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    write_store(&a, 2, 120);
    let store_a = format!("sqlite:{}", a.display());

    let inspected = ok_json(&["inspect", "--store", &store_a]);
    let colls = inspected["collections"].as_array().unwrap();
    assert_eq!(colls.len(), 2);
    assert_eq!(colls[0]["head"], Value::from(120));
    assert_eq!(colls[0]["peers"][0]["peer"], Value::from("phone"));

    let bundle = dir.path().join("bundle");
    let exported = ok_json(&[
        "export",
        "--store",
        &store_a,
        "--collection",
        "coll0",
        "--out",
        bundle.to_str().unwrap(),
        "--batch-changes",
        "25",
    ]);
    assert_eq!(exported["changes"], Value::from(120));
    assert_eq!(exported["batches"], Value::from(5));
    ok_json(&["verify", "--bundle", bundle.to_str().unwrap()]);

    let b = dir.path().join("b");
    let store_b = format!("redb:{}", b.display());
    let imported = ok_json(&[
        "import",
        "--store",
        &store_b,
        "--bundle",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(imported["changes"], Value::from(120));
    assert_eq!(imported["state_digest_checked"], Value::from(true));
    let again = ok_json(&[
        "import",
        "--store",
        &store_b,
        "--bundle",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(
        again["changes"],
        Value::from(0),
        "a second import is a no-op"
    );

    // Moving a whole store, and back.
    let c = dir.path().join("c");
    let store_c = format!("redb:{}", c.display());
    ok_json(&["migrate-storage", "--from", &store_a, "--to", &store_c]);
    let d = dir.path().join("d");
    let store_d = format!("sqlite:{}", d.display());
    ok_json(&["migrate-storage", "--from", &store_c, "--to", &store_d]);
    assert_eq!(digests(&store_a), digests(&store_c));
    assert_eq!(digests(&store_a), digests(&store_d));
    let moved = ok_json(&["inspect", "--store", &store_d]);
    assert_eq!(moved["collections"][0]["peers"][0]["acked"], Value::from(5));
    assert_eq!(
        moved["collections"][0]["epoch"],
        inspected["collections"][0]["epoch"]
    );

    // Backup and restore: under new epochs by default, the same documents.
    let backup = dir.path().join("backup");
    ok_json(&[
        "backup",
        "--store",
        &store_a,
        "--out",
        backup.to_str().unwrap(),
    ]);
    let r = dir.path().join("r");
    let store_r = format!("redb:{}", r.display());
    ok_json(&[
        "restore",
        "--backup",
        backup.to_str().unwrap(),
        "--store",
        &store_r,
    ]);
    let (orig, restored) = (digests(&store_a), digests(&store_r));
    for ((n1, _, s1), (n2, _, s2)) in orig.iter().zip(&restored) {
        assert_eq!((n1, s1), (n2, s2));
    }
    let restored_inspect = ok_json(&["inspect", "--store", &store_r]);
    assert_ne!(
        restored_inspect["collections"][0]["epoch"],
        inspected["collections"][0]["epoch"]
    );
    // Over existing data: refused without --replace, done with it.
    let refused = seqsync(&[
        "restore",
        "--backup",
        backup.to_str().unwrap(),
        "--store",
        &store_b,
    ]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--replace"));
    let replaced = ok_json(&[
        "restore",
        "--backup",
        backup.to_str().unwrap(),
        "--store",
        &store_b,
        "--replace",
    ]);
    assert!(replaced["replaced"].as_str().is_some());
    assert_eq!(digests(&store_b).len(), 2);

    let compacted = ok_json(&["compact", "--store", &store_a]);
    assert_eq!(compacted["collections"].as_array().unwrap().len(), 2);
    ok_json(&["verify", "--store", &store_a]);
}

/// A damaged bundle is reported with the file and what to do, exit code 3
/// from `verify`, and nothing of the damaged batch is imported.
#[test]
fn a_damaged_bundle_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    write_store(&a, 1, 60);
    let bundle = dir.path().join("bundle");
    ok_json(&[
        "export",
        "--store",
        &format!("sqlite:{}", a.display()),
        "--collection",
        "coll0",
        "--out",
        bundle.to_str().unwrap(),
        "--batch-changes",
        "20",
    ]);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
    let second = bundle.join(manifest["batches"][1]["file"].as_str().unwrap());
    let mut bytes = std::fs::read(&second).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&second, bytes).unwrap();
    let out = seqsync(&["verify", "--bundle", bundle.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(second.file_name().unwrap().to_str().unwrap()),
        "{stderr}"
    );
    assert!(stderr.contains("BLAKE3"), "{stderr}");
    let store = format!("redb:{}", dir.path().join("b").display());
    let out = seqsync(&[
        "import",
        "--store",
        &store,
        "--bundle",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let inspected = ok_json(&["inspect", "--store", &store]);
    assert_eq!(
        inspected["collections"][0]["head"],
        Value::from(20),
        "only the first batch"
    );
}

/// `seqsync import` killed with SIGKILL at random moments, then run again,
/// ends with exactly the source's log: nothing lost, nothing doubled.
#[test]
fn an_import_killed_at_random_points_finishes_when_run_again() {
    let seed: u64 = std::env::var("TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::process::id() as u64 * 2_654_435_761 % 1_000_003);
    println!("seed {seed} (replay with TEST_SEED={seed})");
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    write_store(&a, 1, 3000);
    let store_a = format!("sqlite:{}", a.display());
    let bundle = dir.path().join("bundle");
    ok_json(&[
        "export",
        "--store",
        &store_a,
        "--collection",
        "coll0",
        "--out",
        bundle.to_str().unwrap(),
        "--batch-changes",
        "20",
    ]);
    let store_b = format!("sqlite:{}", dir.path().join("b").display());
    let mut kills = 0;
    for _ in 0..4 {
        let mut child = Command::new(BIN)
            .args([
                "import",
                "--store",
                &store_b,
                "--bundle",
                bundle.to_str().unwrap(),
                "--json",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = Duration::from_millis(20 + next() % 300);
        let started = Instant::now();
        let mut finished = false;
        while started.elapsed() < delay {
            if child.try_wait().unwrap().is_some() {
                finished = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if !finished {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    let done = ok_json(&[
        "import",
        "--store",
        &store_b,
        "--bundle",
        bundle.to_str().unwrap(),
    ]);
    println!(
        "{kills} kills; the last run wrote {} changes",
        done["changes"]
    );
    assert_eq!(digests(&store_a), digests(&store_b));
    let source = ok_json(&["inspect", "--store", &store_a]);
    let inspected = ok_json(&["inspect", "--store", &store_b]);
    assert_eq!(source["collections"][0]["changes"], Value::from(3000));
    assert_eq!(
        inspected["collections"][0]["changes"], source["collections"][0]["changes"],
        "every change once"
    );
}
