//! Criterion benchmarks: the engine's hot paths on every backend, each group
//! parameterised by backend (docs/DESIGN.md, "Performance targets"). The table with baselines and trace
//! workloads is `cargo run --release --example compare_backends`.
//!
//! ```text
//! cargo bench                       # all groups
//! cargo bench -- push_acked         # one group
//! ```

use seqsync_testkit::traces;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use seqsync::{BackendKind, Durability, Engine, EngineConfig, PushOptions};

const BACKENDS: [(BackendKind, &str); 3] = [
    (BackendKind::Sqlite, "sqlite"),
    (BackendKind::Redb, "redb"),
    (BackendKind::Memory, "memory"),
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn engine(kind: BackendKind, dir: &std::path::Path) -> Engine {
    let mut config = EngineConfig::default();
    config.storage.backend = kind;
    config.storage.path = dir.to_path_buf();
    config.storage.durability = Durability::Immediate;
    config.compaction.max_deltas = u64::MAX;
    config.compaction.max_delta_bytes = u64::MAX;
    config.limits.stream_page_limit = 10_000;
    seqsync::open(config).expect("open engine")
}

/// An engine whose collection `bench` holds one document `doc` of 10,000
/// one-character deltas typed by `client`.
fn seeded(
    rt: &tokio::runtime::Runtime,
    kind: BackendKind,
    dir: &std::path::Path,
    client: u64,
) -> Engine {
    let engine = engine(kind, dir);
    for chunk in traces::typing(client, 10_000).chunks(1000) {
        let batch = chunk
            .iter()
            .map(|u| ("doc".to_owned(), u.clone()))
            .collect();
        rt.block_on(engine.push_batch("bench", batch, PushOptions::default()))
            .expect("ingest");
    }
    engine
}

/// One durable push, awaited: the latency a typing client sees.
fn push_acked(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("push_acked");
    group.throughput(Throughput::Elements(1));
    for (kind, name) in BACKENDS {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = engine(kind, dir.path());
        let mut updates = traces::typing(1, 200_000).into_iter();
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let update = updates.next().expect("enough generated updates");
                rt.block_on(engine.push("bench", "doc", update, PushOptions::default()))
                    .expect("push")
            })
        });
        rt.block_on(engine.shutdown());
    }
    group.finish();
}

/// Reading a page of 10,000 changes from storage through the engine.
fn changes_page(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("changes_page_10k");
    group.throughput(Throughput::Elements(10_000));
    for (kind, name) in BACKENDS {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = seeded(&rt, kind, dir.path(), 2);
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let page = rt
                    .block_on(engine.changes("bench", 0, 10_000, None))
                    .expect("changes");
                assert_eq!(page.changes.len(), 10_000);
            })
        });
        rt.block_on(engine.shutdown());
    }
    group.finish();
}

/// A cold client's recover (empty state vector) of a 10,000-delta document
/// that the collection actor holds in memory: encode and answer.
fn recover_document(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("recover_10k_deltas");
    for (kind, name) in BACKENDS {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = seeded(&rt, kind, dir.path(), 3);
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                rt.block_on(engine.recover("bench", "doc", &[]))
                    .expect("recover")
            })
        });
        rt.block_on(engine.shutdown());
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = push_acked, changes_page, recover_document
}
criterion_main!(benches);
