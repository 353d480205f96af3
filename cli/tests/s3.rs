//! `s3://bucket/prefix` for `backup`, `restore`, `export`, `import` (and
//! `verify --bundle`), the
//! binary against a real S3-compatible server on loopback (moto, started by
//! `seqsync_testkit::s3server`; the suite says so loudly and skips when it
//! is not installed, and `.ci/run` installs it): round trips, a backup
//! SIGKILLed mid-upload and a restore SIGKILLed mid-download then run
//! again, damaged and missing objects named, bad URLs and missing
//! credentials refused before anything is written.
//!
//! The store writer and the JSON helpers are this file's own (as in
//! `tests/cli.rs`): each test binary of the crate is compiled alone.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use yrs::{Text, Transact};

use seqsync_cli::s3::{S3Client, S3Config, S3Url};
use seqsync_testkit::s3server::S3Server;

const BIN: &str = env!("CARGO_BIN_EXE_seqsync");

/// The test knob that pauses before each object transferred, so a SIGKILL
/// lands mid-transfer (see docs/CLI.md).
const PAUSE_KNOB: &str = "S3_TEST_PAUSE_PER_OBJECT_MS";

static NEXT_BUCKET: AtomicU32 = AtomicU32::new(0);

/// One test's bucket on the shared server, its client, and the environment
/// the binary gets (endpoint, credentials, a staging directory of its own).
struct Fixture {
    endpoint: String,
    bucket: String,
    staging: tempfile::TempDir,
    dir: tempfile::TempDir,
}

impl Fixture {
    /// `None` when moto is not installed (the testkit said so loudly).
    fn new() -> Option<Self> {
        let server = S3Server::shared()?;
        let bucket = format!(
            "seqsync-{}-{}",
            std::process::id(),
            NEXT_BUCKET.fetch_add(1, Ordering::SeqCst)
        );
        let fixture = Self {
            endpoint: server.endpoint(),
            bucket,
            staging: tempfile::tempdir().unwrap(),
            dir: tempfile::tempdir().unwrap(),
        };
        fixture.client("").create_bucket().unwrap();
        Some(fixture)
    }

    fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    fn client(&self, prefix: &str) -> S3Client {
        let url = S3Url::parse(&self.url(prefix)).unwrap();
        let config = S3Config {
            endpoint: Some(self.endpoint.clone()),
            region: "us-east-1".to_owned(),
            access_key_id: "testing".to_owned(),
            secret_access_key: "testing".to_owned(),
            session_token: None,
        };
        S3Client::new(&url, &config).unwrap()
    }

    /// Keys (and sizes) under `prefix`.
    fn list(&self, prefix: &str) -> Vec<(String, u64)> {
        self.client("").list(prefix, 10_000).unwrap()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .arg("--staging-dir")
            .arg(self.staging.path())
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_ENDPOINT_URL_S3")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove(PAUSE_KNOB);
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn ok_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "seqsync {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A SQLite store of `collections` collections of `pushes` edits.
    fn store(&self, name: &str, collections: usize, pushes: usize) -> String {
        let path = self.dir.path().join(name);
        write_store(&path, collections, pushes);
        format!("sqlite:{}", path.display())
    }

    fn empty_store(&self, name: &str) -> String {
        format!("redb:{}", self.dir.path().join(name).display())
    }

    /// Per collection: name, log checksum, state digest.
    fn digests(&self, store: &str) -> Vec<(String, String, Value)> {
        let out = self.ok_json(&["verify", "--store", store]);
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

    /// SIGKILLs `args` (run with the pause knob) once `ready` says the
    /// transfer is under way; fails if the run finished first.
    fn kill_when(&self, args: &[&str], pause_ms: u64, mut ready: impl FnMut() -> bool) {
        let mut child = self
            .command(args)
            .env(PAUSE_KNOB, pause_ms.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while !ready() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the run ended before the kill: raise the pause"
            );
            assert!(started.elapsed() < Duration::from_secs(60), "never ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "killed, not finished");
    }
}

/// A SQLite store with `collections` collections of `pushes` typed edits
/// over 3 documents each (no compaction, so counts are exact).
fn write_store(dir: &Path, collections: usize, pushes: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut config = seqsync_engine::EngineConfig::default();
        config.storage.path = dir.to_owned();
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
                if batch.len() == 50 || i + 1 == pushes {
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
        }
        engine.shutdown().await;
    });
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_backup_to_s3_restores_into_a_fresh_store() {
    // The main use: a store backed up to a bucket comes back whole, with
    // its epochs kept on request, and a finished backup is never
    // overwritten.
    let Some(fx) = Fixture::new() else { return };
    let source = fx.store("a", 2, 120);
    let url = fx.url("nightly/1");
    let backup = fx.ok_json(&["backup", "--store", &source, "--out", &url]);
    assert_eq!(backup["collections"].as_array().unwrap().len(), 2);
    assert_eq!(backup["transfer"]["objects_skipped"], Value::from(0));
    let keys: Vec<String> = fx.list("nightly/1/").into_iter().map(|k| k.0).collect();
    assert!(
        keys.contains(&"nightly/1/backup.json".to_owned()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"nightly/1/coll0/manifest.json".to_owned()),
        "{keys:?}"
    );
    assert!(
        std::fs::read_dir(fx.staging.path())
            .unwrap()
            .next()
            .is_none(),
        "staging is removed once the backup is up"
    );

    let restored = fx.empty_store("r");
    fx.ok_json(&[
        "restore",
        "--backup",
        &url,
        "--store",
        &restored,
        "--keep-epoch",
    ]);
    assert_eq!(fx.digests(&source), fx.digests(&restored));

    let again = fx.run(&["backup", "--store", &source, "--out", &url]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("holds a finished backup"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn an_export_to_s3_imports_into_another_store() {
    // One collection moved through a bucket as a bundle of several
    // batches, and a second import of it is a no-op.
    let Some(fx) = Fixture::new() else { return };
    let source = fx.store("a", 1, 100);
    let url = fx.url("bundles/coll0");
    let exported = fx.ok_json(&[
        "export",
        "--store",
        &source,
        "--collection",
        "coll0",
        "--out",
        &url,
        "--batch-changes",
        "25",
    ]);
    assert_eq!(exported["changes"], Value::from(100));
    assert_eq!(exported["batches"], Value::from(4));
    // Four batches, the state batch and the manifest.
    assert_eq!(exported["transfer"]["objects_transferred"], Value::from(6));
    assert_eq!(fx.list("bundles/coll0/").len(), 6);
    let verified = fx.ok_json(&["verify", "--bundle", &url]);
    assert_eq!(verified["batches"], Value::from(5));
    assert_eq!(verified["changes"], Value::from(100));

    let target = fx.empty_store("b");
    let imported = fx.ok_json(&["import", "--store", &target, "--bundle", &url]);
    assert_eq!(imported["changes"], Value::from(100));
    assert_eq!(imported["state_digest_checked"], Value::from(true));
    assert_eq!(fx.digests(&source), fx.digests(&target));
    let again = fx.ok_json(&["import", "--store", &target, "--bundle", &url]);
    assert_eq!(again["changes"], Value::from(0));
}

#[test]
fn a_backup_killed_mid_upload_resumes_and_skips_what_was_sent() {
    // The issue's scenario: SIGKILL while objects are going up; the prefix
    // is refused as unfinished, and a rerun completes it without sending
    // again what the killed run had sent.
    let Some(fx) = Fixture::new() else { return };
    let source = fx.store("a", 3, 300);
    let url = fx.url("killed");
    let args = ["backup", "--store", &source, "--out", &url];
    let mut sent_before_kill = 0;
    fx.kill_when(&args, 150, || {
        sent_before_kill = fx.list("killed/").len();
        sent_before_kill >= 3
    });
    let keys: Vec<String> = fx.list("killed/").into_iter().map(|k| k.0).collect();
    assert!(!keys.contains(&"killed/backup.json".to_owned()), "{keys:?}");

    let early = fx.run(&[
        "restore",
        "--backup",
        &url,
        "--store",
        &fx.empty_store("early"),
    ]);
    assert_eq!(early.status.code(), Some(1));
    assert!(
        stderr(&early).contains("backup.json: no such object")
            && stderr(&early).contains("did not finish"),
        "{}",
        stderr(&early)
    );

    let resumed = fx.ok_json(&args);
    let skipped = resumed["transfer"]["objects_skipped"].as_u64().unwrap();
    let sent = resumed["transfer"]["objects_transferred"].as_u64().unwrap();
    assert!(
        skipped >= sent_before_kill as u64,
        "{skipped} skipped, {sent_before_kill} were up before the kill"
    );
    // Three collections of (changes batch, state batch, manifest), plus
    // backup.json: each object sent once across both runs.
    assert_eq!(skipped + sent, 10, "{resumed}");
    assert_eq!(fx.list("killed/").len(), 10);

    let restored = fx.empty_store("r");
    fx.ok_json(&[
        "restore",
        "--backup",
        &url,
        "--store",
        &restored,
        "--keep-epoch",
    ]);
    assert_eq!(fx.digests(&source), fx.digests(&restored));
}

#[test]
fn a_restore_killed_mid_download_resumes() {
    // A restore SIGKILLed once it has downloaded a batch (or finished a
    // collection) keeps what it had, and a rerun skips it and ends with
    // the source's data.
    let Some(fx) = Fixture::new() else { return };
    let source = fx.store("a", 3, 300);
    let url = fx.url("backup");
    fx.ok_json(&["backup", "--store", &source, "--out", &url]);
    // The default restore (new epochs), which resumes by seq into what
    // its own earlier run wrote.
    let restored = fx.empty_store("r");
    let args = ["restore", "--backup", &url, "--store", &restored];
    let staged_files = || {
        fn count(dir: &Path) -> usize {
            std::fs::read_dir(dir).map_or(0, |entries| {
                entries
                    .flatten()
                    .map(|e| {
                        let path = e.path();
                        if path.is_dir() {
                            count(&path)
                        } else {
                            usize::from(
                                path.extension()
                                    .is_some_and(|x| x == "batch" || x == "done"),
                            )
                        }
                    })
                    .sum()
            })
        }
        count(fx.staging.path())
    };
    fx.kill_when(&args, 150, || staged_files() >= 1);
    let resumed = fx.ok_json(&args);
    assert!(
        resumed["transfer"]["objects_skipped"].as_u64().unwrap() >= 1,
        "{resumed}"
    );
    let same_documents = |store: &str| -> Vec<(String, Value)> {
        fx.digests(store)
            .into_iter()
            .map(|(name, _, state)| (name, state))
            .collect()
    };
    assert_eq!(same_documents(&source), same_documents(&restored));
    let inspected = fx.ok_json(&["inspect", "--store", &restored]);
    assert_eq!(inspected["collections"][2]["head"], Value::from(300));
}

#[test]
fn a_damaged_object_is_refused_by_name_and_nothing_is_imported() {
    // A batch object changed or cut short on the service must be named
    // (the object, not a staging path), and the import must write nothing.
    let Some(fx) = Fixture::new() else { return };
    let source = fx.store("a", 1, 60);
    let url = fx.url("damaged");
    let exported = fx.ok_json(&[
        "export",
        "--store",
        &source,
        "--collection",
        "coll0",
        "--out",
        &url,
        "--batch-changes",
        "20",
    ]);
    assert_eq!(exported["batches"], Value::from(3));
    let manifest: Value = serde_json::from_slice(
        &fx.client("damaged")
            .get_bytes("damaged/manifest.json", 1 << 20)
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let file = manifest["batches"][1]["file"].as_str().unwrap().to_owned();
    let key = format!("damaged/{file}");
    let client = fx.client("damaged");
    let good = client.get_bytes(&key, 1 << 20).unwrap().unwrap();

    let mut flipped = good.clone();
    *flipped.last_mut().unwrap() ^= 1;
    client.put_bytes(&key, &flipped).unwrap();
    let target = fx.empty_store("b");
    let out = fx.run(&["import", "--store", &target, "--bundle", &url]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(
        text.contains(&format!("s3://{}/{key}: damaged", fx.bucket)),
        "{text}"
    );
    assert!(text.contains("BLAKE3"), "{text}");
    let inspected = fx.ok_json(&["inspect", "--store", &target]);
    assert_eq!(inspected["collections"], Value::Array(Vec::new()));
    let verified = fx.run(&["verify", "--bundle", &url]);
    assert_eq!(verified.status.code(), Some(3), "a mismatch found");
    assert!(stderr(&verified).contains(&format!("s3://{}/{key}: damaged", fx.bucket)));

    client.put_bytes(&key, &good[..good.len() - 7]).unwrap();
    let out = fx.run(&["import", "--store", &target, "--bundle", &url]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(
        text.contains(&format!("s3://{}/{key}: damaged", fx.bucket)),
        "{text}"
    );
    assert!(text.contains("the manifest lists"), "{text}");

    client.put_bytes(&key, &good).unwrap();
    let imported = fx.ok_json(&["import", "--store", &target, "--bundle", &url]);
    assert_eq!(imported["changes"], Value::from(60));
}

#[test]
fn bad_urls_missing_credentials_and_missing_buckets_are_refused() {
    // Each mistake an operator makes gets a typed error saying what to do,
    // and no store is created or written.
    let Some(fx) = Fixture::new() else { return };
    let source = fx.store("a", 1, 10);
    let target_dir = fx.dir.path().join("never");
    let target = format!("redb:{}", target_dir.display());

    let bad = fx.run(&["backup", "--store", &source, "--out", "s3://Not_A_Bucket/x"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("s3://BUCKET/PREFIX"),
        "{}",
        stderr(&bad)
    );

    let no_secret = fx
        .command(&["restore", "--backup", &fx.url("x"), "--store", &target])
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    assert_eq!(no_secret.status.code(), Some(1));
    assert!(
        stderr(&no_secret).contains("AWS_SECRET_ACCESS_KEY is not set"),
        "{}",
        stderr(&no_secret)
    );
    assert!(!target_dir.exists(), "nothing written without credentials");

    let no_bucket = fx.run(&[
        "import",
        "--store",
        &target,
        "--bundle",
        "s3://no-such-bucket-here/x",
    ]);
    assert_eq!(no_bucket.status.code(), Some(1));
    assert!(
        stderr(&no_bucket).contains("no such bucket"),
        "{}",
        stderr(&no_bucket)
    );
    assert!(!target_dir.exists(), "nothing written without a bucket");

    let not_a_bundle = fx.run(&["import", "--store", &target, "--bundle", &fx.url("empty")]);
    assert_eq!(not_a_bundle.status.code(), Some(1));
    assert!(
        stderr(&not_a_bundle).contains("manifest.json: no such object"),
        "{}",
        stderr(&not_a_bundle)
    );
    let inspected = fx.ok_json(&["inspect", "--store", &target]);
    assert_eq!(inspected["collections"], Value::Array(Vec::new()));
}

#[test]
fn a_file_larger_than_a_part_goes_up_in_parts_and_comes_back_whole() {
    // Objects over PART_SIZE_BYTES (a big state batch) take the multipart
    // path, which no small bundle exercises: it must round-trip, record
    // the BLAKE3, and be skipped when sent again.
    let Some(fx) = Fixture::new() else { return };
    let client = fx.client("");
    let big = fx.dir.path().join("big.batch");
    let size = 2 * seqsync_cli::s3::PART_SIZE_BYTES + 12_345;
    let mut bytes = Vec::with_capacity(size);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while bytes.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes.truncate(size);
    std::fs::write(&big, &bytes).unwrap();
    let (_, hash) = seqsync_cli::s3::hash_file(&big).unwrap();

    assert!(client.put_file("big/one.batch", &big).unwrap(), "sent");
    let info = client.head("big/one.batch").unwrap().unwrap();
    assert_eq!(info.size_bytes, size as u64);
    assert_eq!(info.blake3.as_deref(), Some(hash.as_str()));
    assert!(!client.put_file("big/one.batch", &big).unwrap(), "skipped");

    let back = fx.dir.path().join("back.batch");
    client
        .get_file("big/one.batch", &back, size as u64, "missing")
        .unwrap();
    assert_eq!(seqsync_cli::s3::hash_file(&back).unwrap().1, hash);
    let short = client.get_file("big/one.batch", &back, size as u64 - 1, "missing");
    assert!(
        matches!(short, Err(seqsync_cli::s3::S3Error::Damaged { .. })),
        "{short:?}"
    );
}

/// Changes per collection in the measurement (`S3_MEASURE_PUSHES`).
const MEASURE_PUSHES: usize = 20_000;

#[test]
#[ignore = "a measurement: cargo test -p seqsync-cli --test s3 -- --ignored measure --nocapture"]
fn measure_backup_and_restore_local_vs_s3() {
    // What object storage costs over a local directory for the same
    // store, both ways, printed as a table (docs/BUNDLES.md quotes it).
    let Some(fx) = Fixture::new() else { return };
    let pushes = std::env::var("S3_MEASURE_PUSHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MEASURE_PUSHES);
    let source = fx.store("a", 2, pushes);
    let timed = |args: &[&str]| {
        let started = Instant::now();
        let out = fx.ok_json(args);
        (started.elapsed().as_secs_f64(), out)
    };
    let local = fx.dir.path().join("local-backup");
    let local = local.to_str().unwrap();
    let url = fx.url("measure");
    let (local_backup, _) = timed(&["backup", "--store", &source, "--out", local]);
    let (s3_backup, report) = timed(&["backup", "--store", &source, "--out", &url]);
    let (local_restore, _) = timed(&[
        "restore",
        "--backup",
        local,
        "--store",
        &fx.empty_store("r1"),
    ]);
    let (s3_restore, _) = timed(&[
        "restore",
        "--backup",
        &url,
        "--store",
        &fx.empty_store("r2"),
    ]);
    let objects = report["transfer"]["objects_transferred"].as_u64().unwrap();
    let mb = report["transfer"]["bytes_transferred"].as_u64().unwrap() as f64 / 1e6;
    println!(
        "\n{} changes in 2 collections, {objects} objects, {mb:.1} MB",
        2 * pushes
    );
    println!("| target | backup | restore |");
    println!("|---|---|---|");
    println!("| local directory | {local_backup:.2} s | {local_restore:.2} s |");
    println!("| s3:// (moto on loopback) | {s3_backup:.2} s | {s3_restore:.2} s |");
}
