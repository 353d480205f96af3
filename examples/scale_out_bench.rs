//! Durable ingest on PostgreSQL with 64 writers: one engine node, against
//! three nodes on the same database with the writers spread over them
//! (issue 15's benchmark). A local database on this machine (a throwaway
//! cluster started by the example), 2 cores shared by the database and the
//! nodes: the figures say what the lease and fencing machinery costs and
//! whether several nodes get in each other's way, not what three machines
//! would do.
//!
//! ```text
//! cargo run --release --example scale_out_bench              # 64 writers, 20,000 pushes
//! cargo run --release --example scale_out_bench -- --quick   # 4,000 pushes
//! ```
//!
//! Each writer types into its own document of one of 16 collections; with
//! three nodes, writer w talks to node w % 3 and the collections are split
//! so each node owns the ones its writers write (a collection's lease goes
//! to the first node that writes it).

use seqsync_testkit::postgres as pg;
use seqsync_testkit::traces;

use std::time::Instant;

use clap::Parser;
use seqsync::{BackendKind, Durability, Engine, EngineConfig, PushOptions};

#[derive(Parser)]
struct Args {
    /// Fewer pushes.
    #[arg(long)]
    quick: bool,
}

const WRITERS: usize = 64;
const COLLECTIONS: usize = 16;

fn node(url: &str, name: &str) -> Engine {
    let mut config = EngineConfig::default();
    config.storage.backend = BackendKind::Postgres;
    config.storage.url = url.to_owned();
    config.storage.node_id = name.to_owned();
    config.storage.durability = Durability::Immediate;
    seqsync::open(config).expect("open a node")
}

/// What one ingest run measured.
struct Ingest {
    pushes_per_sec: f64,
    /// CPU of this process (every node) per push, µs.
    nodes_cpu_us: f64,
    /// CPU of the database's processes per push, µs (`None`: unreadable).
    db_cpu_us: Option<f64>,
}

/// CPU seconds of this process so far (utime + stime, from /proc).
fn own_cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let rest = stat.get(stat.rfind(')')? + 2..)?.to_owned();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
        })
        .map_or(0.0, |ticks| ticks / 100.0)
}

/// Pushes/s with the writers spread over `nodes` (writer w uses node
/// w % nodes, and collection c is written only by writers of one node),
/// and the CPU per push of the nodes and of the database.
async fn ingest(nodes: usize, pushes: usize) -> Ingest {
    let cluster = pg::PgCluster::shared().expect("PostgreSQL binaries (install postgresql)");
    let url = cluster.fresh_database();
    let engines: Vec<Engine> = (0..nodes)
        .map(|i| node(&url, &format!("node-{i}")))
        .collect();
    let per_writer = pushes / WRITERS;
    let work: Vec<(Engine, String, String, Vec<Vec<u8>>)> = (0..WRITERS)
        .map(|w| {
            let engine = engines[w % nodes].clone();
            // Collections of one node: c ≡ node (mod nodes).
            let collection = format!("c{}", (w % COLLECTIONS) / nodes * nodes + w % nodes);
            let updates = traces::typing(w as u64 + 1, per_writer);
            (engine, collection, format!("d{w}"), updates)
        })
        .collect();
    let started = Instant::now();
    let own_before = own_cpu_secs();
    let db_before = cluster.cpu_secs();
    let tasks: Vec<_> = work
        .into_iter()
        .map(|(engine, collection, doc, updates)| {
            tokio::spawn(async move {
                for update in updates {
                    engine
                        .push(&collection, &doc, update, PushOptions::default())
                        .await
                        .expect("push");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
    let done = (per_writer * WRITERS) as f64;
    let rate = done / started.elapsed().as_secs_f64();
    let nodes_cpu_us = (own_cpu_secs() - own_before) * 1e6 / done;
    let db_cpu_us = db_before
        .zip(cluster.cpu_secs())
        .map(|(before, after)| (after - before) * 1e6 / done);
    for engine in engines {
        engine.shutdown().await;
    }
    Ingest {
        pushes_per_sec: rate,
        nodes_cpu_us,
        db_cpu_us,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let pushes = if args.quick { 4_000 } else { 20_000 };
    println!(
        "PostgreSQL 15 on this machine (a throwaway local cluster), durability immediate \
         (synchronous_commit = on), {WRITERS} writers over {COLLECTIONS} collections, \
         {pushes} pushes, 2 cores"
    );
    let one = ingest(1, pushes).await;
    let three = ingest(3, pushes).await;
    let db = |run: &Ingest| {
        run.db_cpu_us
            .map_or("—".to_owned(), |us| format!("{us:.0} µs"))
    };
    println!();
    println!("| nodes | pushes/s | vs one node | nodes' CPU / push | database CPU / push |");
    println!("|---|---|---|---|---|");
    println!(
        "| 1 | {:.0} | 1.00× | {:.0} µs | {} |",
        one.pushes_per_sec,
        one.nodes_cpu_us,
        db(&one)
    );
    println!(
        "| 3 | {:.0} | {:.2}× | {:.0} µs | {} |",
        three.pushes_per_sec,
        three.pushes_per_sec / one.pushes_per_sec,
        three.nodes_cpu_us,
        db(&three)
    );
    println!(
        "\nCPU per push from /proc: this process (every node) and the database's \
         processes (postmaster and children), sharing the machine's cores."
    );
}
