//! Crash tests: nothing acked is lost when the process is killed at a random
//! moment under load (docs/DESIGN.md: an ack means on disk).
//!
//! Modelled on sled's crash tests. The test binary starts *itself* as a child
//! process (the ignored test `crash_child_process`), which opens an engine
//! with `durability = "immediate"` on a real directory and pushes from eight
//! concurrent writers over four collections, forever. Before each push the
//! child appends the update to a side file (`S` lines: what a client sent);
//! after each ack it appends the seq it got (`A` lines). The side file is
//! written with plain `write` calls: a SIGKILL loses nothing the kernel
//! already has, so every ack the child saw is in it (a torn last line is
//! ignored).
//!
//! The parent kills the child with SIGKILL after a random delay, reopens the
//! directory and checks, cumulatively over every round so far:
//! - every acked change is present with its seq and its exact bytes (or, in
//!   the compacting mode, covered by a snapshot of its document at a later
//!   seq), and no two acks in a collection share a seq;
//! - seqs are gap-free: the log is exactly `1..=head` (plain mode);
//! - no change appears that no client sent: every stored update is one of the
//!   sent ones, and every document is contained in a replay of everything
//!   sent;
//! - every document decodes and contains a replay of its acked updates.
//!
//! The compacting mode runs with tiny compaction thresholds and a task that
//! calls `compact()` in a loop, so many kills land during a compaction; the
//! side file brackets each `compact()` call and the test counts those kills.
//!
//! CI runs a few kill points per backend and mode; the ignored test
//! `acked_pushes_survive_many_sigkills` runs 50 per backend and mode:
//! `cargo test --release --test crash -- --ignored many_sigkills --nocapture`.

use seqsync_testkit::harness as common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Client, Rng};
use seqsync::{BackendKind, ChangeKind, Durability, Engine, EngineConfig, PushOptions};
use yrs::updates::decoder::Decode;
use yrs::{GetString, ReadTxn, Transact};

const COLLECTIONS: usize = 4;
const WRITERS: usize = 8;
const DOCS_PER_COLLECTION: usize = 2;

/// Environment of the child (not `SEQSYNC_*`: those are engine settings).
const CHILD_DIR: &str = "CRASH_CHILD_DIR";
const CHILD_BACKEND: &str = "CRASH_CHILD_BACKEND";
const CHILD_MODE: &str = "CRASH_CHILD_MODE";
const CHILD_ROUND: &str = "CRASH_CHILD_ROUND";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// No compaction: the log must be exactly every acked change.
    Plain,
    /// Tiny thresholds plus `compact()` in a loop.
    Compacting,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Compacting => "compacting",
        }
    }
}

/// Where a PostgreSQL run keeps its database's URL, for the child and for
/// the parent's checks.
const PG_URL_FILE: &str = "pg-url";

fn engine_config(dir: &Path, backend: BackendKind, mode: Mode) -> EngineConfig {
    let mut config = EngineConfig::default();
    config.storage.backend = backend;
    config.storage.path = dir.join("data");
    if backend == BackendKind::Postgres {
        config.storage.url = std::fs::read_to_string(dir.join(PG_URL_FILE)).unwrap();
        // Every round's child is the same node restarting, as a killed
        // server restarts under its own name: it takes its collections'
        // leases back at once (fencing its killed self). Under a fresh name
        // each round waited out the killed child's leases (5 s), so only the
        // first round wrote anything, and whether a compaction committed
        // came down to that round's kill point.
        config.storage.node_id = "crash-child".to_owned();
    }
    config.storage.durability = Durability::Immediate;
    if mode == Mode::Compacting {
        config.compaction.max_deltas = 3;
        config.compaction.max_delta_bytes = 256;
    } else {
        config.compaction.max_deltas = u64::MAX;
        config.compaction.max_delta_bytes = u64::MAX;
    }
    config
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The side file, shared by the child's writers. Each record is one `write`.
struct SideFile(Mutex<std::fs::File>);

impl SideFile {
    fn record(&self, line: String) {
        let mut file = self.0.lock().unwrap();
        file.write_all(format!("{line}\n").as_bytes()).unwrap();
    }
}

/// The child: pushes until killed. Run by the crash tests, not by hand.
#[test]
#[ignore = "the child process of the crash tests; they start it themselves"]
fn crash_child_process() {
    // Not a test of its own: the entry point of the child process. Run by
    // hand (`--ignored` without a filter), it has nothing to do.
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        println!("crash_child_process: started by the crash tests as their child; nothing to do");
        return;
    };
    let dir = PathBuf::from(dir);
    let backend = match std::env::var(CHILD_BACKEND).unwrap().as_str() {
        "sqlite" => BackendKind::Sqlite,
        "redb" => BackendKind::Redb,
        "postgres" => BackendKind::Postgres,
        other => panic!("unknown backend {other}"),
    };
    let mode = match std::env::var(CHILD_MODE).unwrap().as_str() {
        "plain" => Mode::Plain,
        _ => Mode::Compacting,
    };
    let round: u64 = std::env::var(CHILD_ROUND).unwrap().parse().unwrap();
    let side = Arc::new(SideFile(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("side.log"))
            .unwrap(),
    )));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let engine = seqsync::open(engine_config(&dir, backend, mode)).unwrap();
        println!("ready");
        std::io::stdout().flush().unwrap();
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let (engine, side) = (engine.clone(), side.clone());
            tasks.push(tokio::spawn(async move {
                writer(engine, side, round, w).await;
            }));
        }
        if mode == Mode::Compacting {
            let (engine, side) = (engine.clone(), side.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0u64.. {
                    let c = format!("c{}", i % COLLECTIONS as u64);
                    side.record(format!("C start {c}"));
                    let _ = engine.compact(&c).await;
                    side.record(format!("C end {c}"));
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
}

/// One writer: its own Yjs client (a fresh client id per round), one
/// document, sequential pushes; every eighth push is a batch of three.
async fn writer(engine: Engine, side: Arc<SideFile>, round: u64, w: usize) {
    let client = Client::new(round * 100 + w as u64 + 1);
    let mut rng = Rng::new(round * 7919 + w as u64 + 1);
    let collection = format!("c{}", w % COLLECTIONS);
    let doc = format!("d{}", (w / COLLECTIONS) % DOCS_PER_COLLECTION);
    for n in 0u64.. {
        if n % 8 == 7 {
            let updates: Vec<Vec<u8>> = (0..3).map(|_| client.random_edit(&mut rng)).collect();
            for (i, update) in updates.iter().enumerate() {
                side.record(format!(
                    "S {round}.{w}.{n}.{i} {collection} {doc} {}",
                    hex(update)
                ));
            }
            let batch = updates.into_iter().map(|u| (doc.clone(), u)).collect();
            match engine
                .push_batch(&collection, batch, PushOptions::default())
                .await
            {
                Ok(outcome) => {
                    for (i, seq) in outcome.seqs.iter().enumerate() {
                        if let Some(seq) = seq {
                            side.record(format!("A {round}.{w}.{n}.{i} {seq}"));
                        }
                    }
                }
                Err(e) => panic!("push_batch failed: {e}"),
            }
        } else {
            let update = client.random_edit(&mut rng);
            side.record(format!(
                "S {round}.{w}.{n}.0 {collection} {doc} {}",
                hex(&update)
            ));
            match engine
                .push(&collection, &doc, update, PushOptions::default())
                .await
            {
                Ok(outcome) => {
                    if let Some(seq) = outcome.seq {
                        side.record(format!("A {round}.{w}.{n}.0 {seq}"));
                    }
                }
                Err(e) => panic!("push failed: {e}"),
            }
        }
    }
}

/// What the side file says, over every round so far.
#[derive(Default)]
struct SideLog {
    /// id → (collection, doc, update).
    sent: HashMap<String, (String, String, Vec<u8>)>,
    /// (id, seq) in the order acked.
    acked: Vec<(String, u64)>,
    /// The last record was a `compact()` start without its end.
    killed_in_compaction: bool,
}

fn read_side_log(dir: &Path) -> SideLog {
    let mut log = SideLog::default();
    let text = std::fs::read_to_string(dir.join("side.log")).unwrap_or_default();
    // A record cut short by the kill has no newline: ignore it.
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    for line in complete.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields.as_slice() {
            ["S", id, c, d, update] => {
                let update = unhex(update).expect("side file holds hex");
                log.sent
                    .insert((*id).to_owned(), ((*c).to_owned(), (*d).to_owned(), update));
            }
            ["A", id, seq] => log.acked.push(((*id).to_owned(), seq.parse().unwrap())),
            ["C", "start", _] => log.killed_in_compaction = true,
            ["C", "end", _] => log.killed_in_compaction = false,
            other => panic!("unexpected side file line {other:?}"),
        }
    }
    log
}

/// One Yjs doc holding `updates`, applied one transaction each.
fn replay<'a>(updates: impl IntoIterator<Item = &'a Vec<u8>>) -> yrs::Doc {
    let doc = yrs::Doc::new();
    for update in updates {
        doc.transact_mut()
            .apply_update(yrs::Update::decode_v1(update).unwrap())
            .unwrap();
    }
    doc
}

fn text(doc: &yrs::Doc) -> String {
    let content = doc.get_or_insert_text("content");
    let txn = doc.transact();
    content.get_string(&txn)
}

/// Whether `outer` already holds everything in `inner` (merging adds nothing).
fn contains(outer: &yrs::Doc, inner: &yrs::Doc) -> bool {
    let inner_state = inner
        .transact()
        .encode_state_as_update_v1(&yrs::StateVector::default());
    let outer_state = outer
        .transact()
        .encode_state_as_update_v1(&yrs::StateVector::default());
    let merged = replay([&outer_state]);
    let before = fingerprint(&merged);
    merged
        .transact_mut()
        .apply_update(yrs::Update::decode_v1(&inner_state).unwrap())
        .unwrap();
    before == fingerprint(&merged)
}

/// State vector and text. (Each read takes its own transaction: yrs blocks
/// a write transaction, which `get_or_insert_text` needs, while a read one
/// is alive.)
fn fingerprint(doc: &yrs::Doc) -> (yrs::StateVector, String) {
    let text = text(doc);
    let state_vector = doc.transact().state_vector();
    (state_vector, text)
}

/// Reopens the directory after a kill and checks every invariant in the
/// module docs. Returns the number of acked changes checked and of
/// snapshots in the logs.
fn verify(dir: &Path, backend: BackendKind, mode: Mode, round: u64) -> (usize, usize) {
    let log = read_side_log(dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let snapshots = runtime.block_on(async {
        let mut snapshots = 0;
        // Verify without compacting anything: thresholds off.
        let engine = seqsync::open(engine_config(dir, backend, Mode::Plain)).unwrap();
        let mut acked_by_collection: HashMap<String, BTreeMap<u64, String>> = HashMap::new();
        for (id, seq) in &log.acked {
            let (c, _, _) = &log.sent[id];
            let previous = acked_by_collection
                .entry(c.clone())
                .or_default()
                .insert(*seq, id.clone());
            assert!(
                previous.is_none(),
                "round {round}: seq {seq} of {c} acked twice ({id} and {previous:?})"
            );
        }
        let mut sent_payloads: HashMap<(String, String), HashSet<&Vec<u8>>> = HashMap::new();
        for (c, d, update) in log.sent.values() {
            sent_payloads
                .entry((c.clone(), d.clone()))
                .or_default()
                .insert(update);
        }
        for ci in 0..COLLECTIONS {
            let c = format!("c{ci}");
            let acked = acked_by_collection.remove(&c).unwrap_or_default();
            let mut changes = Vec::new();
            let mut cursor = 0;
            let head = loop {
                match engine.changes(&c, cursor, 1000, None).await {
                    Ok(page) => {
                        changes.extend(page.changes);
                        cursor = page.cursor;
                        if !page.has_more {
                            break page.head;
                        }
                    }
                    Err(e) => panic!("round {round}: reading {c}: {e}"),
                }
            };
            snapshots += changes
                .iter()
                .filter(|c| c.kind == ChangeKind::Snapshot)
                .count();
            let seqs: Vec<u64> = changes.iter().map(|c| c.seq).collect();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]) && seqs.last().is_none_or(|&s| s <= head),
                "round {round}: {c} log out of order or beyond head {head}"
            );
            if mode == Mode::Plain {
                assert_eq!(
                    seqs,
                    (1..=head).collect::<Vec<_>>(),
                    "round {round}: {c} has a gap"
                );
            }
            let by_seq: HashMap<u64, &seqsync::Change> =
                changes.iter().map(|ch| (ch.seq, ch)).collect();
            for (seq, id) in &acked {
                let (_, d, update) = &log.sent[id];
                assert!(
                    *seq <= head,
                    "round {round}: acked {c}@{seq} beyond head {head}"
                );
                match by_seq.get(seq) {
                    Some(change) if change.kind == ChangeKind::Update => {
                        assert_eq!(change.doc.as_str(), d, "round {round}: {c}@{seq} doc");
                        assert_eq!(&change.payload, update, "round {round}: {c}@{seq} bytes");
                    }
                    Some(change) => assert_eq!(
                        change.kind,
                        ChangeKind::Snapshot,
                        "round {round}: {c}@{seq} is {:?}",
                        change.kind
                    ),
                    None => {
                        assert_eq!(mode, Mode::Compacting, "round {round}: {c}@{seq} lost");
                        assert!(
                            changes.iter().any(|ch| ch.kind == ChangeKind::Snapshot
                                && ch.doc.as_str() == d
                                && ch.seq >= *seq),
                            "round {round}: {c}@{seq} neither stored nor covered by a snapshot"
                        );
                    }
                }
            }
            for change in &changes {
                if change.kind == ChangeKind::Update {
                    let key = (c.clone(), change.doc.as_str().to_owned());
                    assert!(
                        sent_payloads
                            .get(&key)
                            .is_some_and(|s| s.contains(&change.payload)),
                        "round {round}: {c}@{} was never sent",
                        change.seq
                    );
                }
            }
            // Content: each document holds every acked update and nothing
            // that was not sent.
            for di in 0..DOCS_PER_COLLECTION {
                let d = format!("d{di}");
                let acked_updates: Vec<&Vec<u8>> = acked
                    .values()
                    .map(|id| &log.sent[id])
                    .filter(|(_, doc, _)| *doc == d)
                    .map(|(_, _, u)| u)
                    .collect();
                let state = match engine.document(&c, &d).await {
                    Ok(state) => state.update,
                    Err(seqsync::ReadError::DocumentNotFound { .. })
                        if acked_updates.is_empty() =>
                    {
                        continue
                    }
                    Err(e) => panic!("round {round}: document {c}/{d}: {e}"),
                };
                let stored = replay([&state]);
                assert!(
                    contains(&stored, &replay(acked_updates.iter().copied())),
                    "round {round}: {c}/{d} lacks an acked update"
                );
                let all_sent = replay(
                    log.sent
                        .values()
                        .filter(|(cc, dd, _)| *cc == c && *dd == d)
                        .map(|(_, _, u)| u),
                );
                assert!(
                    contains(&all_sent, &stored),
                    "round {round}: {c}/{d} holds something no client sent"
                );
            }
        }
        engine.shutdown().await;
        snapshots
    });
    (log.acked.len(), snapshots)
}

/// Runs `kills` rounds: start the child, let it push for a random while,
/// SIGKILL it, verify. Prints what it survived.
fn kill_rounds(test: &str, backend: BackendKind, mode: Mode, kills: u64) {
    let mut rng = Rng::from_env(test);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let backend_name = match backend {
        BackendKind::Sqlite => "sqlite",
        BackendKind::Redb => "redb",
        BackendKind::Postgres => {
            let Some(cluster) = common::pg::PgCluster::shared() else {
                return;
            };
            std::fs::write(dir.path().join(PG_URL_FILE), cluster.fresh_database()).unwrap();
            "postgres"
        }
        BackendKind::Memory => panic!("a crash test needs files"),
    };
    let mut in_compaction = 0;
    let (mut acked, mut snapshots);
    let started = Instant::now();
    // A compacting run goes on past `kills` rounds (up to four times as
    // many) until some compaction was committed: with early kill points on
    // a loaded machine, three short rounds can end before the first one and
    // test nothing (seen once on PostgreSQL).
    let mut round = 0;
    loop {
        round += 1;
        let mut child = Command::new(&exe)
            .args([
                "crash_child_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_BACKEND, backend_name)
            .env(CHILD_MODE, mode.name())
            .env(CHILD_ROUND, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            if stdout.read_line(&mut line).unwrap() == 0 {
                let output = child.wait_with_output().unwrap();
                panic!(
                    "round {round}: the child exited before it was ready: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            if line.trim_end().ends_with("ready") {
                break;
            }
        }
        // Kill points spread from "just opened" to "well into the load".
        std::thread::sleep(Duration::from_millis(5 + rng.below(400)));
        child.kill().unwrap(); // SIGKILL on Unix
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "round {round}: the child ended on its own: {status}"
        );
        (acked, snapshots) = verify(dir.path(), backend, mode, round);
        if read_side_log(dir.path()).killed_in_compaction {
            in_compaction += 1;
        }
        let compacted_enough = mode != Mode::Compacting || snapshots > 0;
        if round >= kills && (compacted_enough || round >= kills * 4) {
            break;
        }
    }
    let kills = round;
    println!(
        "{test}: {kills} SIGKILLs survived ({in_compaction} during compact()), \
         {acked} acked changes all present, {snapshots} snapshots in the logs, {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        acked > 0,
        "the child never got an ack: the test checked nothing"
    );
    if mode == Mode::Compacting {
        assert!(
            snapshots > 0,
            "nothing was compacted: the mode tested nothing"
        );
    }
}

#[test]
fn acked_pushes_survive_sigkill_sqlite() {
    kill_rounds("sigkill_sqlite", BackendKind::Sqlite, Mode::Plain, 3);
}

#[test]
fn acked_pushes_survive_sigkill_postgres() {
    kill_rounds("sigkill_postgres", BackendKind::Postgres, Mode::Plain, 3);
}

#[test]
fn acked_pushes_survive_sigkill_during_compaction_postgres() {
    kill_rounds(
        "sigkill_compacting_postgres",
        BackendKind::Postgres,
        Mode::Compacting,
        3,
    );
}

#[test]
fn acked_pushes_survive_sigkill_redb() {
    kill_rounds("sigkill_redb", BackendKind::Redb, Mode::Plain, 3);
}

#[test]
fn acked_pushes_survive_sigkill_during_compaction_sqlite() {
    kill_rounds(
        "sigkill_compacting_sqlite",
        BackendKind::Sqlite,
        Mode::Compacting,
        3,
    );
}

#[test]
fn acked_pushes_survive_sigkill_during_compaction_redb() {
    kill_rounds(
        "sigkill_compacting_redb",
        BackendKind::Redb,
        Mode::Compacting,
        3,
    );
}

/// The long variant: 50 kill points per backend and mode.
#[test]
#[ignore = "long: about 200 kill points; run with --ignored"]
fn acked_pushes_survive_many_sigkills() {
    for backend in [BackendKind::Sqlite, BackendKind::Redb] {
        for mode in [Mode::Plain, Mode::Compacting] {
            let test = format!("many_sigkills_{backend:?}_{}", mode.name());
            kill_rounds(&test, backend, mode, 50);
        }
    }
}
