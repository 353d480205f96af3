//! Every backend on the same real workloads, each against a baseline measured
//! in the same run, in one table (docs/DESIGN.md, performance targets; issue "benchmarks side by side").
//!
//! ```text
//! cargo run --release --example compare_backends                 # full run (several minutes)
//! cargo run --release --example compare_backends -- --quick      # small sizes
//! cargo run --release --example compare_backends -- --backends sqlite,redb --json results.json
//! ```
//!
//! Workloads (inputs are generated or parsed before timing starts; each checks
//! its result):
//! - `replay-acked/<trace>`: a trace's transactions pushed durably one at a
//!   time, awaiting each ack. Baseline: replaying them into a bare `yrs::Doc`.
//! - `replay-64/<trace>`: the same with 64 pushes in flight.
//! - `ingest-64`: 64 writers over 16 collections × 8 documents. Baseline: one
//!   writer on the same backend (the group-commit gain).
//! - `stream`: read every change from cursor 0 in pages through the engine.
//!   Baseline: the backend's raw range scan of the same rows.
//! - `load` / `load-compacted`: open a document of N deltas (then its
//!   snapshot) on a freshly started engine. Baseline: bare yrs applying the
//!   same bytes.
//! - `compact`: compact a document of N deltas. Baseline: bare yrs applying
//!   them.
//!
//! Trace data: CC BY 4.0, Joseph Gentle (seph-blog1, friendsforever) and
//! Martin Kleppmann (automerge-paper); see `benches/traces/README.md`.

use seqsync_testkit::postgres as pg;
use seqsync_testkit::traces;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use futures::StreamExt;
use seqsync::{open_storage, BackendKind, Durability, Engine, EngineConfig, PushOptions};
use serde_json::json;
use yrs::updates::decoder::Decode;
use yrs::Transact;

#[derive(Parser)]
struct Args {
    /// Small sizes and trace prefixes, for a quick look.
    #[arg(long)]
    quick: bool,
    /// Backends, comma-separated: sqlite, redb, memory.
    #[arg(long, default_value = "sqlite,redb,memory", value_delimiter = ',')]
    backends: Vec<String>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Workloads, comma-separated: replay (acked, 64 in flight and the
    /// overhead rows), ingest, stream, load (load and compaction).
    #[arg(
        long,
        default_value = "replay,ingest,stream,load",
        value_delimiter = ','
    )]
    workloads: Vec<String>,
    /// The durability of the acked workloads (replay and ingest):
    /// `immediate` (an ack means flushed; PostgreSQL's `synchronous_commit
    /// = on`) or `eventual` (`off`), to measure what the flush costs.
    #[arg(long, default_value = "immediate", value_parser = parse_durability)]
    durability: Durability,
}

fn parse_durability(text: &str) -> Result<Durability, String> {
    match text {
        "immediate" => Ok(Durability::Immediate),
        "eventual" => Ok(Durability::Eventual),
        other => Err(format!("{other:?}: use immediate or eventual")),
    }
}

/// `--durability`, for the acked workloads.
static ACKED_DURABILITY: std::sync::OnceLock<Durability> = std::sync::OnceLock::new();

fn acked_durability() -> Durability {
    *ACKED_DURABILITY.get().unwrap_or(&Durability::Immediate)
}

/// One measured cell of the table.
#[derive(Clone)]
struct Cell {
    workload: String,
    backend: &'static str,
    ops: u64,
    secs: f64,
    latencies_us: Vec<f64>,
    disk_bytes: u64,
    /// Bytes this process caused to be written to disk during the workload
    /// (`write_bytes` of /proc/self/io, opening and shutting down included).
    written_bytes: u64,
    peak_rss_kb: u64,
    baseline: &'static str,
    baseline_secs: f64,
}

impl Cell {
    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    /// How many times slower (> 1) or faster (< 1) than the baseline doing
    /// the same work; for ingest it is the gain (higher is better).
    fn ratio(&self) -> f64 {
        self.secs / self.baseline_secs
    }

    fn percentile_us(&self, p: f64) -> Option<f64> {
        if self.latencies_us.is_empty() {
            return None;
        }
        let mut sorted = self.latencies_us.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let index = ((sorted.len() - 1) as f64 * p).round() as usize;
        Some(sorted[index])
    }
}

fn kind_of(name: &str) -> (BackendKind, &'static str) {
    match name {
        "sqlite" => (BackendKind::Sqlite, "sqlite"),
        "redb" => (BackendKind::Redb, "redb"),
        "memory" => (BackendKind::Memory, "memory"),
        "postgres" => (BackendKind::Postgres, "postgres"),
        other => panic!("unknown backend {other:?}: use sqlite, redb, memory or postgres"),
    }
}

/// The PostgreSQL database standing in for directory `dir` (one fresh
/// database of a throwaway local cluster per directory, so a reopen finds
/// its data): `SEQSYNC_STORAGE_URL` is not used, the numbers are of a
/// database on this machine.
fn pg_url(dir: &Path) -> String {
    static DATABASES: std::sync::Mutex<Vec<(std::path::PathBuf, String)>> =
        std::sync::Mutex::new(Vec::new());
    let mut databases = DATABASES.lock().expect("databases");
    if let Some((_, url)) = databases.iter().find(|(d, _)| d == dir) {
        return url.clone();
    }
    let cluster = pg::PgCluster::shared().expect("PostgreSQL binaries (install postgresql)");
    let url = cluster.fresh_database();
    databases.push((dir.to_path_buf(), url.clone()));
    url
}

/// The storage config of `kind` in `dir`.
fn store_config(kind: BackendKind, dir: &Path, durability: Durability) -> seqsync::StorageConfig {
    seqsync::StorageConfig {
        backend: kind,
        path: dir.to_path_buf(),
        durability,
        url: if kind == BackendKind::Postgres {
            pg_url(dir)
        } else {
            String::new()
        },
        ..seqsync::StorageConfig::default()
    }
}

fn open_engine(kind: BackendKind, dir: &Path, durability: Durability) -> Engine {
    // SEQSYNC_* variables apply (e.g. SEQSYNC_ACTORS_ARBITERS=1).
    let mut config = EngineConfig::default()
        .with_env(std::env::vars())
        .expect("SEQSYNC_* variables name config keys");
    config.storage = store_config(kind, dir, durability);
    config.compaction.max_deltas = u64::MAX; // compaction only where measured
    config.compaction.max_delta_bytes = u64::MAX;
    config.limits.stream_page_limit = 10_000;
    seqsync::open(config).expect("open engine")
}

fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    e.metadata().map_or(0, |m| {
                        if m.is_dir() {
                            dir_bytes(&e.path())
                        } else {
                            m.len()
                        }
                    })
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Asks the kernel to reset this process's peak-RSS mark (Linux ≥ 4.0), so
/// each workload reports its own peak; where that is refused the column is
/// the process's peak so far (MiB).
/// `write_bytes` of /proc/self/io: bytes this process caused to be sent to
/// the block layer (0 where the file is missing).
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Seconds to apply `updates` to a bare doc, one transaction each.
fn bare_apply_secs<'a>(updates: impl IntoIterator<Item = &'a Vec<u8>>) -> f64 {
    let started = Instant::now();
    let doc = yrs::Doc::new();
    for update in updates {
        doc.transact_mut()
            .apply_update(yrs::Update::decode_v1(update).expect("decode"))
            .expect("apply");
    }
    started.elapsed().as_secs_f64()
}

async fn server_text(engine: &Engine, collection: &str, doc: &str) -> String {
    let state = engine.document(collection, doc).await.expect("document");
    traces::text_of_updates([state.update.as_slice()])
}

async fn replay(
    kind: BackendKind,
    backend: &'static str,
    trace: &traces::Trace,
    in_flight: usize,
    bare_secs: f64,
) -> Cell {
    let dir = tempfile::tempdir().expect("tempdir");
    let written_before = written_bytes();
    let engine = open_engine(kind, dir.path(), acked_durability());
    reset_peak_rss();
    let started = Instant::now();
    let latencies: Vec<f64> = futures::stream::iter(trace.updates.iter().cloned())
        .map(|update| {
            let engine = engine.clone();
            async move {
                let t = Instant::now();
                engine
                    .push("trace", "doc", update, PushOptions::default())
                    .await
                    .expect("push");
                t.elapsed().as_secs_f64() * 1e6
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(
        server_text(&engine, "trace", "doc").await,
        trace.end_content,
        "{} replay ends at endContent",
        trace.name
    );
    engine.shutdown().await;
    let written = written_bytes() - written_before;
    Cell {
        workload: format!(
            "replay-{}/{}",
            if in_flight == 1 {
                "acked".to_owned()
            } else {
                in_flight.to_string()
            },
            trace.name
        ),
        backend,
        ops: trace.updates.len() as u64,
        secs,
        latencies_us: latencies,
        disk_bytes: dir_bytes(dir.path()),
        written_bytes: written,
        peak_rss_kb: peak_rss_kb(),
        baseline: "bare yrs replay",
        baseline_secs: bare_secs,
    }
}

async fn ingest(kind: BackendKind, backend: &'static str, per_writer: usize) -> Cell {
    // Baseline: one writer, same backend, same number of pushes per writer.
    let solo_updates = traces::typing(1, per_writer * 4);
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open_engine(kind, dir.path(), acked_durability());
    let started = Instant::now();
    for update in solo_updates.iter().cloned() {
        engine
            .push("solo", "d", update, PushOptions::default())
            .await
            .expect("push");
    }
    let solo_rate = solo_updates.len() as f64 / started.elapsed().as_secs_f64();
    engine.shutdown().await;

    let work: Vec<Vec<Vec<u8>>> = (0..64)
        .map(|w| traces::typing(100 + w, per_writer))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let written_before = written_bytes();
    let engine = open_engine(kind, dir.path(), acked_durability());
    reset_peak_rss();
    let started = Instant::now();
    let tasks: Vec<_> = work
        .into_iter()
        .enumerate()
        .map(|(w, updates)| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let collection = format!("c{}", w % 16);
                let doc = format!("d{}", (w / 16) * 2 % 8);
                let mut latencies = Vec::with_capacity(updates.len());
                for update in updates {
                    let t = Instant::now();
                    engine
                        .push(&collection, &doc, update, PushOptions::default())
                        .await
                        .expect("push");
                    latencies.push(t.elapsed().as_secs_f64() * 1e6);
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("writer"));
    }
    let secs = started.elapsed().as_secs_f64();
    let ops = (64 * per_writer) as u64;
    let head: u64 = {
        let mut total = 0;
        for c in 0..16 {
            total += engine
                .changes(&format!("c{c}"), 0, 0, None)
                .await
                .expect("changes")
                .head;
        }
        total
    };
    assert_eq!(head, ops, "every push logged");
    engine.shutdown().await;
    let written = written_bytes() - written_before;
    Cell {
        workload: "ingest-64 (ratio = gain)".to_owned(),
        backend,
        ops,
        secs,
        latencies_us: latencies,
        disk_bytes: dir_bytes(dir.path()),
        written_bytes: written,
        peak_rss_kb: peak_rss_kb(),
        baseline: "1 writer",
        // Expressed so that ratio() = time(64) / time(1 writer at its rate)
        // is below 1 by the gain: report the gain as its inverse below.
        baseline_secs: ops as f64 / solo_rate,
    }
}

async fn stream(kind: BackendKind, backend: &'static str, changes: usize) -> Cell {
    let dir = tempfile::tempdir().expect("tempdir");
    let docs = 100;
    let per_doc = changes / docs;
    let updates: Vec<(String, Vec<u8>)> = (0..docs)
        .flat_map(|d| {
            traces::typing(1000 + d as u64, per_doc)
                .into_iter()
                .map(move |u| (format!("d{d}"), u))
        })
        .collect();
    let mut config = EngineConfig {
        storage: store_config(kind, dir.path(), Durability::Eventual),
        ..EngineConfig::default()
    };
    config.limits.stream_page_limit = 10_000;
    config.compaction.max_deltas = u64::MAX;
    config.compaction.max_delta_bytes = u64::MAX;
    let engine = seqsync::open(config.clone()).expect("open");
    for chunk in updates.chunks(1000) {
        engine
            .push_batch("s", chunk.to_vec(), PushOptions::default())
            .await
            .expect("ingest");
    }
    reset_peak_rss();
    let started = Instant::now();
    let (mut cursor, mut read) = (0, 0u64);
    loop {
        let page = engine
            .changes("s", cursor, 10_000, None)
            .await
            .expect("changes");
        read += page.changes.len() as u64;
        cursor = page.cursor;
        if !page.has_more {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(read, (docs * per_doc) as u64);
    let peak = peak_rss_kb();
    engine.shutdown().await;
    drop(engine);
    // Baseline: the backend's own range scan of the same rows, on a thread
    // of its own (a blocking database client must not run on this async
    // thread).
    let (raw, baseline_secs) = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let storage = if kind == BackendKind::Memory {
                    let storage: Arc<dyn seqsync::Storage> =
                        Arc::new(seqsync::MemoryStorage::default());
                    let meta_epoch = seqsync::Epoch([1; 16]);
                    let changes: Vec<seqsync::Change> = updates
                        .iter()
                        .enumerate()
                        .map(|(i, (doc, u))| seqsync::Change {
                            seq: i as u64 + 1,
                            doc: seqsync::DocId::new(doc.clone()).expect("doc id"),
                            kind: seqsync::ChangeKind::Update,
                            payload: u.clone(),
                            schema_version: 1,
                            origin: None,
                            author: None,
                            committed_ms: 0,
                            log_checksum: 0,
                        })
                        .collect();
                    storage
                        .commit(&seqsync_engine_batch(meta_epoch, changes))
                        .expect("memory baseline data");
                    storage
                } else {
                    open_storage(&config.storage).expect("reopen storage")
                };
                let name = seqsync::CollectionName::new("s").expect("name");
                let started = Instant::now();
                let (mut after, mut raw) = (0, 0u64);
                loop {
                    let page = storage
                        .read_changes(&name, after, 10_000)
                        .expect("scan")
                        .expect("collection");
                    let Some(last) = page.changes.last() else {
                        break;
                    };
                    after = last.seq;
                    raw += page.changes.len() as u64;
                }
                (raw, started.elapsed().as_secs_f64())
            })
            .join()
            .expect("baseline scan")
    });
    assert_eq!(raw, read);
    Cell {
        workload: format!("stream {read} changes"),
        backend,
        ops: read,
        secs,
        latencies_us: Vec::new(),
        disk_bytes: dir_bytes(dir.path()),
        written_bytes: 0,
        peak_rss_kb: peak,
        baseline: "raw range scan",
        baseline_secs,
    }
}

/// Seconds to append `updates` straight through the backend's `Storage`,
/// `per_commit` changes per durable commit: what storing the trace costs with
/// no engine in between (no actors, no decode, no no-op check).
fn raw_append_secs(kind: BackendKind, updates: &[Vec<u8>], per_commit: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage: Arc<dyn seqsync::Storage> = match kind {
        BackendKind::Memory => Arc::new(seqsync::MemoryStorage::default()),
        BackendKind::Sqlite => Arc::new(
            seqsync::SqliteStorage::open(dir.path(), Durability::Immediate).expect("sqlite"),
        ),
        BackendKind::Redb => {
            Arc::new(seqsync::RedbStorage::open(dir.path(), Durability::Immediate).expect("redb"))
        }
        BackendKind::Postgres => {
            open_storage(&store_config(kind, dir.path(), Durability::Immediate)).expect("postgres")
        }
    };
    let doc = seqsync::DocId::new("doc").expect("doc id");
    let epoch = seqsync::Epoch([2; 16]);
    let started = Instant::now();
    let mut head = 0;
    for chunk in updates.chunks(per_commit) {
        let append = traces::update_changes(&doc, head + 1, chunk);
        let mut batch = seqsync_engine_batch(epoch, append);
        if head > 0 {
            batch.writes[0].base = seqsync::WriteBase::Existing { epoch, head };
        }
        storage.commit(&batch).expect("raw append");
        head += chunk.len() as u64;
    }
    started.elapsed().as_secs_f64()
}

fn seqsync_engine_batch(
    epoch: seqsync::Epoch,
    changes: Vec<seqsync::Change>,
) -> seqsync::WriteBatch {
    seqsync::WriteBatch {
        writes: vec![seqsync::CollectionWrite {
            collection: seqsync::CollectionName::new("s").expect("name"),
            base: seqsync::WriteBase::Create {
                epoch,
                schema_version: 1,
            },
            append: changes,
            compact: Vec::new(),
            peers: Vec::new(),
            raise_schema_version: None,
            append_mode: Default::default(),
        }],
    }
}

/// Load (and compaction) of one document with `n` deltas.
async fn load_and_compact(kind: BackendKind, backend: &'static str, n: usize) -> Vec<Cell> {
    let updates = traces::typing(7, n);
    let bare_secs = bare_apply_secs(&updates);
    let dir = tempfile::tempdir().expect("tempdir");
    let reopen = || open_engine(kind, dir.path(), Durability::Eventual);
    let engine = reopen();
    for chunk in updates.chunks(1000) {
        let batch = chunk
            .iter()
            .map(|u| ("big".to_owned(), u.clone()))
            .collect();
        engine
            .push_batch("l", batch, PushOptions::default())
            .await
            .expect("ingest");
    }
    let mut cells = Vec::new();
    let measure_load = |engine: Engine, label: String, baseline_secs: f64| async move {
        reset_peak_rss();
        // Timed: the engine's answer (read, rebuild, encode). Decoding that
        // answer to check it is the client's work, not the load's.
        let started = Instant::now();
        let state = engine.document("l", "big").await.expect("document");
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(traces::text_of_updates([state.update.as_slice()]).len(), n);
        let peak = peak_rss_kb();
        (
            engine,
            Cell {
                workload: label,
                backend,
                ops: 1,
                secs,
                latencies_us: Vec::new(),
                disk_bytes: 0,
                written_bytes: 0,
                peak_rss_kb: peak,
                baseline: "bare yrs apply",
                baseline_secs,
            },
        )
    };
    if kind != BackendKind::Memory {
        engine.shutdown().await;
        drop(engine);
        let (engine, cell) = measure_load(reopen(), format!("load {n} deltas"), bare_secs).await;
        cells.push(cell);
        let started = Instant::now();
        let summary = engine.compact("l").await.expect("compact");
        let compact_secs = started.elapsed().as_secs_f64();
        cells.push(Cell {
            workload: format!("compact {n} deltas"),
            backend,
            ops: summary.deltas_removed,
            secs: compact_secs,
            latencies_us: Vec::new(),
            disk_bytes: dir_bytes(dir.path()),
            written_bytes: 0,
            peak_rss_kb: peak_rss_kb(),
            baseline: "bare yrs apply",
            baseline_secs: bare_secs,
        });
        let snapshot = engine
            .changes("l", 0, 10, None)
            .await
            .expect("changes")
            .changes;
        assert_eq!(snapshot.len(), 1);
        let snapshot_bare = bare_apply_secs([&snapshot[0].payload]);
        engine.shutdown().await;
        drop(engine);
        let (engine, cell) = measure_load(
            reopen(),
            format!("load after compaction ({n})"),
            snapshot_bare,
        )
        .await;
        cells.push(cell);
        engine.shutdown().await;
    } else {
        let started = Instant::now();
        let summary = engine.compact("l").await.expect("compact");
        cells.push(Cell {
            workload: format!("compact {n} deltas"),
            backend,
            ops: summary.deltas_removed,
            secs: started.elapsed().as_secs_f64(),
            latencies_us: Vec::new(),
            disk_bytes: 0,
            written_bytes: 0,
            peak_rss_kb: peak_rss_kb(),
            baseline: "bare yrs apply",
            baseline_secs: bare_secs,
        });
        engine.shutdown().await;
    }
    cells
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _ = ACKED_DURABILITY.set(args.durability);
    let backends: Vec<(BackendKind, &'static str)> =
        args.backends.iter().map(|b| kind_of(b)).collect();
    let (trace_names, acked_limit, per_writer, stream_n, load_n) = if args.quick {
        (vec!["friendsforever_flat"], 2_000, 20, 100_000, 20_000)
    } else {
        (
            vec!["automerge-paper", "seph-blog1", "friendsforever_flat"],
            20_000,
            200,
            1_000_000,
            100_000,
        )
    };
    let run = |w: &str| args.workloads.iter().any(|x| x == w);
    let trace_names = if run("replay") {
        trace_names
    } else {
        Vec::new()
    };
    let steps = trace_names.len() * 2
        + ["ingest", "stream", "load"]
            .iter()
            .filter(|w| run(w))
            .count();
    let progress = indicatif::ProgressBar::new((backends.len() * steps) as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
            .expect("progress template"),
    );
    progress.set_message("parsing traces");
    let traces: Vec<traces::Trace> = trace_names.iter().map(|n| traces::load(n)).collect();
    let mut cells = Vec::new();
    for (kind, backend) in &backends {
        for trace in &traces {
            let prefix = traces::Trace {
                name: trace.name.clone(),
                updates: trace.updates[..acked_limit.min(trace.updates.len())].to_vec(),
                end_content: traces::text_of_updates(
                    trace.updates[..acked_limit.min(trace.updates.len())]
                        .iter()
                        .map(Vec::as_slice),
                ),
            };
            progress.set_message(format!("{backend}: replay-acked {}", trace.name));
            let bare = bare_apply_secs(&prefix.updates);
            cells.push(replay(*kind, backend, &prefix, 1, bare).await);
            progress.inc(1);
            progress.set_message(format!("{backend}: replay-64 {}", trace.name));
            let bare = bare_apply_secs(&trace.updates);
            let pipelined = replay(*kind, backend, trace, 64, bare).await;
            // The same run against what the engine adds to: bare yrs plus
            // the backend's raw append, 64 changes per commit (the most that
            // 64 pushes in flight can share).
            let raw_append = std::thread::scope(|scope| {
                scope
                    .spawn(|| raw_append_secs(*kind, &trace.updates, 64))
                    .join()
                    .expect("raw append")
            });
            let overhead = Cell {
                workload: format!("overhead-64/{}", trace.name),
                latencies_us: Vec::new(),
                baseline: "bare yrs + raw append",
                baseline_secs: bare + raw_append,
                ..pipelined.clone()
            };
            cells.push(pipelined);
            cells.push(overhead);
            progress.inc(1);
        }
        if run("ingest") {
            progress.set_message(format!("{backend}: ingest-64"));
            cells.push(ingest(*kind, backend, per_writer).await);
            progress.inc(1);
        }
        if run("stream") {
            progress.set_message(format!("{backend}: stream"));
            cells.push(stream(*kind, backend, stream_n).await);
            progress.inc(1);
        }
        if run("load") {
            progress.set_message(format!("{backend}: load and compact"));
            cells.extend(load_and_compact(*kind, backend, load_n).await);
            progress.inc(1);
        }
    }
    progress.finish_and_clear();

    println!(
        "seqsync compare_backends{}{} — 2 cores; ratio = engine time / baseline time for the same work (ingest: gain over 1 writer)",
        if args.quick { " --quick" } else { "" },
        if args.durability == Durability::Eventual { " --durability eventual" } else { "" }
    );
    println!(
        "{:<34} {:<7} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9}  baseline",
        "workload",
        "backend",
        "ops/s",
        "p50 µs",
        "p99 µs",
        "disk KiB",
        "wrote B/op",
        "RSS peak",
        "ratio"
    );
    for cell in &cells {
        let ratio = if cell.workload.starts_with("ingest") {
            format!("{:.1}x gain", 1.0 / cell.ratio())
        } else {
            format!("{:.2}x", cell.ratio())
        };
        let fmt_us = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        let wrote = if cell.written_bytes > 0 {
            format!("{:.0}", cell.written_bytes as f64 / cell.ops.max(1) as f64)
        } else {
            "-".to_owned()
        };
        println!(
            "{:<34} {:<7} {:>12.0} {:>10} {:>10} {:>10} {:>10} {:>10.1} {:>9}  {}",
            cell.workload,
            cell.backend,
            cell.ops_per_sec(),
            fmt_us(cell.percentile_us(0.5)),
            fmt_us(cell.percentile_us(0.99)),
            cell.disk_bytes / 1024,
            wrote,
            cell.peak_rss_kb as f64 / 1024.0,
            ratio,
            cell.baseline
        );
    }
    if let Some(path) = args.json {
        let rows: Vec<_> = cells
            .iter()
            .map(|c| {
                json!({
                    "workload": c.workload, "backend": c.backend, "ops": c.ops, "secs": c.secs,
                    "ops_per_sec": c.ops_per_sec(), "p50_us": c.percentile_us(0.5), "p99_us": c.percentile_us(0.99),
                    "disk_bytes": c.disk_bytes, "written_bytes": c.written_bytes, "peak_rss_kb": c.peak_rss_kb,
                    "baseline": c.baseline, "baseline_secs": c.baseline_secs, "ratio": c.ratio(),
                })
            })
            .collect();
        std::fs::write(&path, serde_json::to_string_pretty(&rows).expect("json"))
            .expect("write json");
        println!("results written to {}", path.display());
    }
}
