//! Many rooms at human pace over the y-websocket protocol, measured as a user
//! would see them (issue: many-room scale).
//!
//! ```text
//! cargo run --release --example yws_load -- --rooms 300 --rate 10 --secs 30
//! cargo run --release --example yws_load -- --rooms 300 --layout per-room
//! cargo run --release --example yws_load -- --ramp            # until p99 > 100 ms
//! cargo run --release --example yws_load -- --join 150 --doc-mb 20
//! cargo run --release --example yws_load -- --addr 127.0.0.1:8787 --pid 1234
//! cargo run --release --example yws_load -- --servers seqsync,y-websocket --rounds 3
//! cargo run --release --example yws_load -- --spawn-nodes 2 --placements same,split --rounds 2
//! cargo run --release --example yws_load -- --nodes 127.0.0.1:8787,127.0.0.1:8788 --node-pids 11,12
//! ```
//!
//! Each room is one document with one writer and one observer, both real
//! WebSocket clients speaking the y-websocket protocol (sync step 1/2,
//! updates) with yrs on the client side, as an unmodified `WebsocketProvider`
//! does. The writer types a real editing trace from `benches/traces` (one
//! transaction = one keystroke, the trace's own updates) at `--rate`
//! keystrokes per second, each room at its own phase. The observer applies
//! what it receives; a keystroke counts as delivered when the observer's
//! state vector covers it, and its latency is from the moment the writer
//! sent it. Layouts: `one` puts every room in collection `bench` (document
//! `room-N`); `per-room` gives each room its own collection.
//!
//! By default the server is this program itself, re-run as a child process
//! (the real host server, `seqsync_server::ServerThread`, on a fresh data
//! directory per run), so its CPU, disk writes and memory are its own:
//! - server CPU per delivered edit: user + system time of the server process
//!   during the run (typing and drain), divided by delivered keystrokes;
//! - disk writes per edit: `write_bytes` of `/proc/PID/io` (bytes the server
//!   caused to be sent to the block layer) over keystrokes sent;
//! - peak RSS: `VmHWM` of the server process.
//!
//! With `--addr`, an external server is used instead (give `--pid` for the
//! server columns).
//!
//! `--servers seqsync,y-websocket` measures y-websocket's reference server
//! (`@y/websocket-server`, run by `benches/peers/y-websocket.js` after
//! `npm ci` there) the same way, as a child with its own CPU, disk and
//! memory columns, and alternates the servers run by run for `--rounds`
//! rounds: both see the same machine, the same load generator and the same
//! moment. The summary then gives each server's median and the ratio of
//! seqsync's to the peer's. The reference server keeps documents in memory
//! and writes nothing; seqsync commits every edit to disk before anyone
//! sees it. The load generator's own CPU is printed too: on one
//! machine, the clients compete with the server for the same cores.
//!
//! `--join N --doc-mb M` measures a class joining a large document: one
//! client writes a document of about M MB (many small items, as typing
//! makes), then N clients connect at the same moment and each completes the
//! y-websocket handshake; time to synced is from the start of its connect to
//! the full state received.
//!
//! Size: about 1,300 lines in one file so `cargo run --example yws_load`
//! needs nothing beside it: the clients, the measurement, the peers it
//! starts and the child server. Sections follow that order.

use seqsync_testkit::postgres as pg;
use seqsync_testkit::traces;

use std::io::{BufRead, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as Ws;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, StateVector, Text, Transact};

/// Set in the child that serves: the data directory.
const SERVE_DIR_VAR: &str = "YWS_LOAD_SERVE_DIR";
/// Set in the child that serves: the backend name.
const SERVE_BACKEND_VAR: &str = "YWS_LOAD_BACKEND";
/// Connections opened at once while a run sets up.
const CONNECT_CONCURRENCY: usize = 64;
/// How long observers may take to receive the last keystrokes after typing
/// stops; what arrives later is not delivered.
const DRAIN_SECS: u64 = 10;
/// Largest frame a client accepts (a joined document arrives in one frame).
const MAX_FRAME_BYTES: usize = 1 << 30;
/// Client id of the trace's writer (as `traces::load` builds it).
const TRACE_CLIENT: u64 = traces::TRACE_CLIENT_ID;
/// Client id of the author of the document the joiners load.
const AUTHOR_CLIENT: u64 = traces::TRACE_CLIENT_ID + 7;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Layout {
    /// Every room a document of collection `bench`.
    One,
    /// Every room its own collection.
    PerRoom,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::One => "one collection",
            Layout::PerRoom => "collection per room",
        }
    }
}

/// A server `yws_load` can start and measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ServerKind {
    /// seqsync's host server (this program re-run as a child).
    Seqsync,
    /// y-websocket's reference server (`benches/peers/y-websocket.js`).
    YWebsocket,
}

impl ServerKind {
    fn name(self) -> &'static str {
        match self {
            ServerKind::Seqsync => "seqsync",
            ServerKind::YWebsocket => "y-websocket",
        }
    }
}

/// Who connects to which node, with several nodes on one database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Placement {
    /// Writers on the first node, observers on the others (a load balancer
    /// without sticky routing: a reader's edits come from another node).
    Split,
    /// Writers and observers on the first node (the baseline: one node's
    /// own fan-out, on the shared database).
    Same,
    /// Room r's writer on node r mod n, its observer on the next node.
    Mixed,
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Placement::Split => "split",
            Placement::Same => "same",
            Placement::Mixed => "mixed",
        }
    }
}

#[derive(Parser, Debug)]
#[command(about = "y-websocket load: rooms × (writer + observer) at human pace")]
struct Args {
    /// Rooms (documents), each with one writer and one observer.
    #[arg(long, default_value_t = 300)]
    rooms: usize,
    /// Keystrokes per second per writer.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Seconds of typing per run.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// Where the rooms live.
    #[arg(long, value_enum, default_value = "one")]
    layout: Layout,
    /// Run both layouts, one after the other.
    #[arg(long)]
    both_layouts: bool,
    /// Servers to measure, alternated run by run (see `--rounds`).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "seqsync")]
    servers: Vec<ServerKind>,
    /// How many times each server runs each layout and room count; the
    /// summary gives medians.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Backend of the server this program starts: sqlite or redb.
    #[arg(long, default_value = "sqlite")]
    backend: String,
    /// Trace each writer types (a file of benches/traces without .json.gz).
    #[arg(long, default_value = "sveltecomponent")]
    trace: String,
    /// Use a running server at this address instead of starting one.
    #[arg(long)]
    addr: Option<String>,
    /// Several seqsync nodes on one PostgreSQL database, started by this
    /// program for each run: a throwaway cluster and this many host
    /// servers (`--placements` says who connects where).
    #[arg(long)]
    spawn_nodes: Option<usize>,
    /// Running seqsync nodes (host:port) on one database to spread the
    /// clients over, instead of starting them.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    /// The pids of `--nodes`, in order, for their CPU columns.
    #[arg(long, value_delimiter = ',')]
    node_pids: Vec<u32>,
    /// With several nodes: the placements to run, alternated run by run.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "split")]
    placements: Vec<Placement>,
    /// The external server's pid, for its CPU, disk and memory columns.
    #[arg(long)]
    pid: Option<u32>,
    /// Raise the room count (through --ramp-steps) until p99 exceeds
    /// --ramp-p99-ms or an edit is not delivered.
    #[arg(long)]
    ramp: bool,
    /// Room counts the ramp tries, in order.
    #[arg(long, default_value = "100,300,500,1000,1500,2000,2500,3000,4000")]
    ramp_steps: String,
    /// The ramp stops once p99 exceeds this.
    #[arg(long, default_value_t = 100.0)]
    ramp_p99_ms: f64,
    /// Joiners for the many-joins scenario (instead of rooms).
    #[arg(long)]
    join: Option<usize>,
    /// Size of the joined document, MB.
    #[arg(long, default_value_t = 20)]
    doc_mb: usize,
    /// Joiners all use the full WebSocket client (tungstenite, which
    /// assembles each message in memory) instead of one full client and the
    /// rest light ones (see `light_join`).
    #[arg(long)]
    full_clients: bool,
}

fn main() {
    if let Ok(dir) = std::env::var(SERVE_DIR_VAR) {
        serve_child(PathBuf::from(dir));
        return;
    }
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(args));
}

async fn run(args: Args) {
    if let Some(joiners) = args.join {
        let server = Server::start(&args, ServerKind::Seqsync);
        let row = joins(&server, joiners, args.doc_mb, args.full_clients).await;
        println!(
            "\n| joiners | document | synced p50 | p99 | max | all synced | server CPU | server peak RSS | client CPU |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        println!("{row}");
        server.stop();
        return;
    }
    let trace = Arc::new(TypedTrace::load(&args.trace));
    if args.spawn_nodes.is_some() || !args.nodes.is_empty() {
        return run_nodes(&args, &trace).await;
    }
    let layouts = if args.both_layouts {
        vec![Layout::One, Layout::PerRoom]
    } else {
        vec![args.layout]
    };
    let steps: Vec<usize> = if args.ramp {
        args.ramp_steps
            .split(',')
            .map(|s| s.trim().parse().expect("--ramp-steps: numbers"))
            .collect()
    } else {
        vec![args.rooms]
    };
    let mut rows = Vec::new();
    for layout in layouts {
        for &rooms in &steps {
            let mut stop = false;
            for _round in 0..args.rounds.max(1) {
                for &kind in &args.servers {
                    let server = Server::start(&args, kind);
                    let result =
                        rooms_run(&server, &trace, rooms, args.rate, args.secs, layout).await;
                    server.stop();
                    eprintln!("{}", result.row());
                    stop |= args.ramp
                        && (result.p99_ms() > args.ramp_p99_ms || result.delivered < result.sent);
                    rows.push(result);
                }
            }
            if stop {
                break;
            }
        }
    }
    println!("\n{}", RunResult::header());
    for row in &rows {
        println!("{}", row.row());
    }
    if args.servers.len() > 1 || args.rounds > 1 {
        println!("\n{}", summary(&rows, &args.servers));
    }
}

/// Per layout and room count: each server's median p50, p99, CPU per edit
/// and disk per edit over its rounds, and seqsync's ratio to each peer.
fn summary(rows: &[RunResult], servers: &[ServerKind]) -> String {
    let mut out = String::from(
        "| layout | rooms | server | runs | p50 | p99 | server CPU / edit | disk / edit | peak RSS | p50 ratio | CPU ratio |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut cases: Vec<(Layout, usize)> = Vec::new();
    for row in rows {
        if !cases.contains(&(row.layout, row.rooms)) {
            cases.push((row.layout, row.rooms));
        }
    }
    for (layout, rooms) in cases {
        let of = |kind: ServerKind| -> Vec<&RunResult> {
            rows.iter()
                .filter(|r| r.layout == layout && r.rooms == rooms && r.kind == kind)
                .collect()
        };
        let medians = |kind: ServerKind| -> [f64; 5] {
            let runs = of(kind);
            [
                median(runs.iter().map(|r| r.percentile_ms(0.5)).collect()),
                median(runs.iter().map(|r| r.p99_ms()).collect()),
                median(runs.iter().filter_map(|r| r.cpu_us_per_edit()).collect()),
                median(runs.iter().filter_map(|r| r.disk_kb_per_edit()).collect()),
                median(runs.iter().filter_map(|r| r.peak_rss_mb()).collect()),
            ]
        };
        let ours = medians(ServerKind::Seqsync);
        for &kind in servers {
            let [p50, p99, cpu, disk, rss] = medians(kind);
            let (p50_ratio, cpu_ratio) = if kind == ServerKind::Seqsync {
                ("—".to_owned(), "—".to_owned())
            } else {
                (
                    format!("{:.2}×", ours[0] / p50),
                    format!("{:.2}×", ours[2] / cpu),
                )
            };
            out += &format!(
                "| {} | {rooms} | {} | {} | {p50:.2} ms | {p99:.2} ms | {cpu:.0} µs | {disk:.2} KB | {rss:.0} MB | {p50_ratio} | {cpu_ratio} |\n",
                layout.name(),
                kind.name(),
                of(kind).len(),
            );
        }
    }
    out + "\nRatios are seqsync's median over the peer's (below 1: seqsync uses less).\n"
}

/// Several nodes on one database: each placement in turn, `--rounds`
/// times, on fresh nodes and a fresh database each run; then per
/// placement the medians, each node's CPU and the database's per
/// delivered edit, and each placement's p99 against `same` (one node's own
/// fan-out, measured in the same session).
async fn run_nodes(args: &Args, trace: &Arc<TypedTrace>) {
    let mut rows = Vec::new();
    for _round in 0..args.rounds.max(1) {
        for &placement in &args.placements {
            let server = Server::start_nodes(args, placement);
            let result = rooms_run(
                &server,
                trace,
                args.rooms,
                args.rate,
                args.secs,
                args.layout,
            )
            .await;
            server.stop();
            eprintln!("{}", result.row());
            rows.push(result);
        }
    }
    println!("\n{}", RunResult::header());
    for row in &rows {
        println!("{}", row.row());
    }
    println!("\n{}", nodes_summary(&rows, &args.placements));
}

/// The median of the finite values (NaN when there is none).
fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Per placement: medians of p50, p99 and max, delivery, each node's CPU
/// per delivered edit, the database's, and the p99 ratio to `same`.
fn nodes_summary(rows: &[RunResult], placements: &[Placement]) -> String {
    let nodes = rows.first().map_or(0, |r| r.nodes_cpu_secs.len());
    let node_columns: String = (0..nodes)
        .map(|i| format!(" node {} CPU / edit |", i + 1))
        .collect();
    let mut out = format!(
        "| placement | rooms | runs | p50 | p99 | max | delivered |{node_columns} database CPU / edit | p99 / same |\n|{}\n",
        "---|".repeat(9 + nodes)
    );
    let of = |placement: Placement| -> Vec<&RunResult> {
        rows.iter()
            .filter(|r| r.placement == Some(placement))
            .collect()
    };
    let p99_of = |placement: Placement| median(of(placement).iter().map(|r| r.p99_ms()).collect());
    let same_p99 = p99_of(Placement::Same);
    for &placement in placements {
        let runs = of(placement);
        let Some(first) = runs.first() else {
            continue;
        };
        let sent: u64 = runs.iter().map(|r| r.sent).sum();
        let delivered: u64 = runs.iter().map(|r| r.delivered).sum();
        let cpu = |value: Option<f64>| value.map_or("—".to_owned(), |v| format!("{v:.0} µs"));
        let node_cells: String = (0..nodes)
            .map(|i| {
                let values: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| r.node_cpu_us_per_edit(i))
                    .collect();
                format!(" {} |", cpu((!values.is_empty()).then(|| median(values))))
            })
            .collect();
        let db: Vec<f64> = runs.iter().filter_map(|r| r.db_cpu_us_per_edit()).collect();
        let p99 = p99_of(placement);
        out +=
            &format!(
            "| {} | {} | {} | {:.2} ms | {:.2} ms | {:.1} ms | {:.2} % |{node_cells} {} | {} |\n",
            placement.name(),
            first.rooms,
            runs.len(),
            median(runs.iter().map(|r| r.percentile_ms(0.5)).collect()),
            p99,
            median(runs.iter().map(|r| r.percentile_ms(1.0)).collect()),
            100.0 * delivered as f64 / sent.max(1) as f64,
            cpu((!db.is_empty()).then(|| median(db))),
            if same_p99.is_finite() { format!("{:.2}×", p99 / same_p99) } else { "—".to_owned() },
        );
    }
    out + "\nCPU per delivered edit; node 1 takes the writers (all of them but with `mixed`). \
           The database shares the machine's cores with the nodes.\n"
}

// ---------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------

/// The child side: serve a fresh engine until stdin closes. `SEQSYNC_*`
/// variables apply as they do to the host server (e.g.
/// `SEQSYNC_ACTORS_TRICKLE_LINGER_US=0`).
fn serve_child(dir: PathBuf) {
    let mut config = seqsync_server::HostConfig::default()
        .with_env(std::env::vars())
        .expect("SEQSYNC_* variables name config keys");
    config.engine.storage.path = dir;
    config.engine.storage.backend = match std::env::var(SERVE_BACKEND_VAR).as_deref() {
        Ok("redb") => seqsync::BackendKind::Redb,
        Ok("memory") => seqsync::BackendKind::Memory,
        // A node of several: `SEQSYNC_STORAGE_URL` names the database.
        Ok("postgres") => seqsync::BackendKind::Postgres,
        _ => seqsync::BackendKind::Sqlite,
    };
    // A node of several is given its port (its advertised URL names it).
    if std::env::var("SEQSYNC_SERVER_LISTEN").is_err() {
        config.server.listen = "127.0.0.1:0".to_owned();
    }
    let server = seqsync_server::ServerThread::start(config).expect("server starts");
    println!("listening {}", server.addr);
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
        line.clear();
    }
    server.stop();
}

struct Server {
    kind: ServerKind,
    addr: String,
    pid: Option<u32>,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
    /// Several nodes on one database: all of them (the first is `addr`),
    /// and who connects where. Empty for one server.
    nodes: Vec<Node>,
    placement: Placement,
    /// Whether this program started the database (its CPU is measured).
    db: bool,
}

/// One node of several.
struct Node {
    addr: String,
    pid: Option<u32>,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    fn start(args: &Args, kind: ServerKind) -> Self {
        if let Some(addr) = &args.addr {
            return Self {
                kind,
                addr: addr.clone(),
                pid: args.pid,
                child: None,
                _dir: None,
                nodes: Vec::new(),
                placement: Placement::Same,
                db: false,
            };
        }
        let dir = tempfile::tempdir_in(std::env::current_dir().expect("cwd"))
            .expect("a data directory on the working directory's disk");
        let mut command = match kind {
            ServerKind::Seqsync => {
                let mut command = Command::new(std::env::current_exe().expect("own path"));
                command
                    .env(SERVE_DIR_VAR, dir.path())
                    .env(SERVE_BACKEND_VAR, &args.backend);
                command
            }
            ServerKind::YWebsocket => {
                let peers = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/peers");
                assert!(
                    peers.join("node_modules").is_dir(),
                    "y-websocket's reference server is not installed: run `npm ci` in {}",
                    peers.display()
                );
                let mut command = Command::new("node");
                command
                    .arg(peers.join("y-websocket.js"))
                    .current_dir(dir.path());
                command
            }
        };
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the server child");
        let addr = listening_addr(&mut child);
        Self {
            kind,
            addr,
            pid: Some(child.id()),
            child: Some(child),
            _dir: Some(dir),
            nodes: Vec::new(),
            placement: Placement::Same,
            db: false,
        }
    }

    /// Several seqsync nodes on one PostgreSQL database: `--nodes` if
    /// given, else `--spawn-nodes` host servers started on a fresh database
    /// of a throwaway cluster (each advertising its URL, so a write that
    /// reaches a non-owner is forwarded to the owner).
    fn start_nodes(args: &Args, placement: Placement) -> Self {
        let db = args.nodes.is_empty();
        let nodes: Vec<Node> = if !args.nodes.is_empty() {
            args.nodes
                .iter()
                .enumerate()
                .map(|(i, addr)| Node {
                    addr: addr.clone(),
                    pid: args.node_pids.get(i).copied(),
                    child: None,
                    _dir: None,
                })
                .collect()
        } else {
            let cluster =
                pg::PgCluster::shared().expect("PostgreSQL binaries (install postgresql)");
            let url = cluster.fresh_database();
            (0..args.spawn_nodes.unwrap_or(2).max(1))
                .map(|i| spawn_node(&url, i))
                .collect()
        };
        assert!(!nodes.is_empty(), "--nodes: at least one address");
        Self {
            kind: ServerKind::Seqsync,
            addr: nodes[0].addr.clone(),
            pid: nodes[0].pid,
            child: None,
            _dir: None,
            nodes,
            placement,
            db,
        }
    }

    /// Where room `room`'s writer connects.
    fn writer_addr(&self, room: usize) -> String {
        match (self.placement, self.nodes.len()) {
            (Placement::Mixed, n) if n > 1 => self.nodes[room % n].addr.clone(),
            _ => self.addr.clone(),
        }
    }

    /// Where room `room`'s observer connects.
    fn observer_addr(&self, room: usize) -> String {
        match (self.placement, self.nodes.len()) {
            (Placement::Split, n) if n > 1 => self.nodes[1 + room % (n - 1)].addr.clone(),
            (Placement::Mixed, n) if n > 1 => self.nodes[(room + 1) % n].addr.clone(),
            _ => self.addr.clone(),
        }
    }

    /// Each node's CPU seconds so far (`None` without its pid).
    fn node_cpu_secs(&self) -> Vec<Option<f64>> {
        self.nodes
            .iter()
            .map(|n| n.pid.and_then(ProcStats::read).map(|s| s.cpu_secs))
            .collect()
    }

    /// The database's CPU seconds so far (spawned nodes only).
    fn db_cpu_secs(&self) -> Option<f64> {
        if !self.db {
            return None;
        }
        pg::PgCluster::shared()?.cpu_secs()
    }

    /// The count of storage commits so far, from the server's `/metrics`
    /// (the `seqsync_commit_group_size` summary), if it answers.
    fn commits(&self) -> Option<f64> {
        use std::io::Read as _;
        let mut stream = std::net::TcpStream::connect(&self.addr).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).ok()?;
        if !body.starts_with("HTTP/1.1 200") {
            return None;
        }
        // No line yet: nothing was committed.
        Some(
            body.lines()
                .find_map(|l| l.strip_prefix("seqsync_commit_group_size_count "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0),
        )
    }

    fn stats(&self) -> Option<ProcStats> {
        self.pid.and_then(ProcStats::read)
    }

    fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                drop(child.stdin.take());
                let _ = child.wait();
            }
        }
    }
}

/// The address a server child prints first (`listening ADDR`): this
/// program's child, a node, or y-websocket's reference server.
fn listening_addr(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("child stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the server's address");
    line.trim()
        .strip_prefix("listening ")
        .expect("the server prints `listening ADDR` first")
        .to_owned()
}

/// Starts node `i` on database `url`: this program as a child serving a
/// host server on a port chosen here, advertised so others can forward to
/// it.
fn spawn_node(url: &str, i: usize) -> Node {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = tempfile::tempdir_in(std::env::current_dir().expect("cwd")).expect("a directory");
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .env(SERVE_DIR_VAR, dir.path())
        .env(SERVE_BACKEND_VAR, "postgres")
        .env("SEQSYNC_STORAGE_URL", url)
        .env("SEQSYNC_STORAGE_NODE_ID", format!("node-{i}"))
        .env("SEQSYNC_SERVER_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "SEQSYNC_SERVER_ADVERTISE_URL",
            format!("http://127.0.0.1:{port}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start a node");
    let addr = listening_addr(&mut child);
    Node {
        addr,
        pid: Some(child.id()),
        child: Some(child),
        _dir: Some(dir),
    }
}

/// CPU, disk and memory of a process, from /proc.
#[derive(Clone, Copy, Debug, Default)]
struct ProcStats {
    cpu_secs: f64,
    write_bytes: u64,
    peak_rss_bytes: u64,
}

impl ProcStats {
    fn read(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces) in parens.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
        let write_bytes = io
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let peak_rss_bytes = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        Some(Self {
            cpu_secs: ticks / 100.0,
            write_bytes,
            peak_rss_bytes,
        })
    }

    fn own() -> Self {
        Self::read(std::process::id()).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------
// The trace, as keystrokes
// ---------------------------------------------------------------------------

struct TypedTrace {
    name: String,
    /// One update per keystroke (transaction of the trace).
    updates: Vec<Vec<u8>>,
    /// The writer's clock once keystroke k is applied: an observer whose
    /// state vector reaches it has keystroke k (an insertion; a deletion
    /// does not move the clock).
    end_clock: Vec<u32>,
    /// Keystroke by the hash of its update: the server relays each pushed
    /// update byte for byte, so an observer recognises what it receives.
    by_hash: std::collections::HashMap<u64, usize>,
}

fn hash_of(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

impl TypedTrace {
    fn load(name: &str) -> Self {
        let trace = traces::load(name);
        let doc = yrs::Doc::new();
        let mut end_clock = Vec::with_capacity(trace.updates.len());
        let mut updates = Vec::with_capacity(trace.updates.len());
        let mut by_hash = std::collections::HashMap::new();
        for update in trace.updates {
            let decoded = yrs::Update::decode_v1(&update).expect("trace update");
            if decoded.is_empty() {
                continue; // an empty transaction is not a keystroke
            }
            let mut txn = doc.transact_mut();
            txn.apply_update(decoded).expect("trace applies");
            let after = txn.state_vector();
            end_clock.push(after.get(&yrs::block::ClientID::new(TRACE_CLIENT)));
            by_hash.insert(hash_of(&update), updates.len());
            updates.push(update);
        }
        Self {
            name: trace.name,
            updates,
            end_clock,
            by_hash,
        }
    }
}

// ---------------------------------------------------------------------------
// Rooms
// ---------------------------------------------------------------------------

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: &str, path: &str) -> Socket {
    let config = WebSocketConfig::default()
        .max_frame_size(Some(MAX_FRAME_BYTES))
        .max_message_size(Some(MAX_FRAME_BYTES));
    let url = format!("ws://{addr}{path}");
    let mut tries = 0;
    loop {
        match tokio_tungstenite::connect_async_with_config(&url, Some(config), true).await {
            Ok((socket, _)) => return socket,
            Err(err) if tries < 20 => {
                tries += 1;
                eprintln!("connect {url}: {err}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("connect {url}: {err}"),
        }
    }
}

fn room_path(layout: Layout, room: usize) -> String {
    match layout {
        Layout::One => format!("/yws/bench/room-{room}"),
        Layout::PerRoom => format!("/yws/room-{room}/doc"),
    }
}

/// One room's shared clock: when each keystroke was sent (µs since the
/// run's start, 0 = not yet), and the observer's latencies.
struct RoomClock {
    sent_us: Vec<AtomicU64>,
    latencies_us: Mutex<Vec<u64>>,
    delivered: AtomicU64,
}

struct RunResult {
    kind: ServerKind,
    layout: Layout,
    rooms: usize,
    rate: f64,
    secs: u64,
    trace: String,
    sent: u64,
    delivered: u64,
    latencies_us: Vec<u64>,
    server: Option<(ProcStats, ProcStats)>,
    client_cpu_secs: f64,
    wall_secs: f64,
    resets: u64,
    /// Storage commits during the run, if the server's metrics said.
    commits: Option<f64>,
    /// With several nodes: the placement, each node's CPU seconds during
    /// the run (`None` without its pid) and the database's.
    placement: Option<Placement>,
    nodes_cpu_secs: Vec<Option<f64>>,
    db_cpu_secs: Option<f64>,
}

impl RunResult {
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }

    fn p99_ms(&self) -> f64 {
        self.percentile_ms(0.99)
    }

    /// Server CPU (user + system) per delivered keystroke.
    fn cpu_us_per_edit(&self) -> Option<f64> {
        let (before, after) = self.server?;
        Some((after.cpu_secs - before.cpu_secs) * 1e6 / self.delivered.max(1) as f64)
    }

    /// Bytes the server sent to the block layer per keystroke sent.
    fn disk_kb_per_edit(&self) -> Option<f64> {
        let (before, after) = self.server?;
        Some((after.write_bytes - before.write_bytes) as f64 / 1024.0 / self.sent.max(1) as f64)
    }

    fn peak_rss_mb(&self) -> Option<f64> {
        let (_, after) = self.server?;
        Some(after.peak_rss_bytes as f64 / 1e6)
    }

    /// The server's name, with the nodes and placement when several.
    fn server_name(&self) -> String {
        match self.placement {
            Some(placement) => format!(
                "seqsync ×{} ({})",
                self.nodes_cpu_secs.len(),
                placement.name()
            ),
            None => self.kind.name().to_owned(),
        }
    }

    /// CPU µs per delivered edit of node `i`, and of the database.
    fn node_cpu_us_per_edit(&self, i: usize) -> Option<f64> {
        let secs = (*self.nodes_cpu_secs.get(i)?)?;
        Some(secs * 1e6 / self.delivered.max(1) as f64)
    }

    fn db_cpu_us_per_edit(&self) -> Option<f64> {
        Some(self.db_cpu_secs? * 1e6 / self.delivered.max(1) as f64)
    }

    fn header() -> String {
        "| server | layout | rooms | edits/s | p50 | p95 | p99 | max | delivered | server CPU / edit | disk / edit | edits / commit | server peak RSS | client CPU | closed |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
            .to_owned()
    }

    fn row(&self) -> String {
        let (cpu, disk, rss) = match (
            self.cpu_us_per_edit(),
            self.disk_kb_per_edit(),
            self.peak_rss_mb(),
        ) {
            (Some(cpu), Some(disk), Some(rss)) => (
                format!("{cpu:.0} µs"),
                format!("{disk:.2} KB"),
                format!("{rss:.0} MB"),
            ),
            _ => ("—".into(), "—".into(), "—".into()),
        };
        format!(
            "| {} | {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} ms | {:.2} % ({}/{}) | {} | {} | {} | {} | {:.0} % of a core | {} |",
            self.server_name(),
            self.layout.name(),
            self.rooms,
            self.rooms as f64 * self.rate,
            self.percentile_ms(0.50),
            self.percentile_ms(0.95),
            self.p99_ms(),
            self.percentile_ms(1.0),
            100.0 * self.delivered as f64 / self.sent.max(1) as f64,
            self.delivered,
            self.sent,
            cpu,
            disk,
            self.commits
                .filter(|c| *c > 0.0)
                .map_or("—".to_owned(), |c| format!("{:.1}", self.sent as f64 / c)),
            rss,
            100.0 * self.client_cpu_secs / self.wall_secs.max(1e-9),
            self.resets,
        ) + &format!(" <!-- {} s, {} -->", self.secs, self.trace)
    }
}

async fn rooms_run(
    server: &Server,
    trace: &Arc<TypedTrace>,
    rooms: usize,
    rate: f64,
    secs: u64,
    layout: Layout,
) -> RunResult {
    let keystrokes = ((rate * secs as f64).ceil() as usize).min(trace.updates.len());
    let clocks: Vec<Arc<RoomClock>> = (0..rooms)
        .map(|_| {
            Arc::new(RoomClock {
                sent_us: (0..keystrokes).map(|_| AtomicU64::new(0)).collect(),
                latencies_us: Mutex::new(Vec::new()),
                delivered: AtomicU64::new(0),
            })
        })
        .collect();
    let resets = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Mutex::new(None::<Instant>));
    let go = Arc::new(tokio::sync::Notify::new());
    let started = Arc::new(AtomicBool::new(false));
    let done_typing = Arc::new(AtomicBool::new(false));

    // Observers first, each synced before any writer types.
    let mut observers = Vec::new();
    let setup = Arc::new(tokio::sync::Semaphore::new(CONNECT_CONCURRENCY));
    let (synced_tx, mut synced_rx) = tokio::sync::mpsc::channel::<()>(rooms.max(1));
    for (room, clock) in clocks.iter().enumerate() {
        let addr = server.observer_addr(room);
        let path = room_path(layout, room);
        let clock = clock.clone();
        let trace = trace.clone();
        let setup = setup.clone();
        let synced = synced_tx.clone();
        let start = start.clone();
        let resets = resets.clone();
        let done_typing = done_typing.clone();
        observers.push(tokio::spawn(async move {
            let permit = setup.acquire_owned().await.expect("semaphore");
            let socket = connect(&addr, &path).await;
            observe(
                socket,
                clock,
                trace,
                keystrokes,
                synced,
                permit,
                start,
                resets,
                done_typing,
            )
            .await;
        }));
    }
    for _ in 0..rooms {
        synced_rx.recv().await.expect("an observer synced");
    }
    let mut writers = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(rooms.max(1));
    let (typed_tx, mut typed_rx) = tokio::sync::mpsc::channel::<()>(rooms.max(1));
    let finish = Arc::new(tokio::sync::Notify::new());
    for (room, clock) in clocks.iter().enumerate() {
        let addr = server.writer_addr(room);
        let path = room_path(layout, room);
        let clock = clock.clone();
        let trace = trace.clone();
        let setup = setup.clone();
        let ready = ready_tx.clone();
        let go = go.clone();
        let started = started.clone();
        let start = start.clone();
        let resets = resets.clone();
        let typed = typed_tx.clone();
        let finish = finish.clone();
        let done_typing = done_typing.clone();
        // Each room types at its own phase within the first interval.
        let phase = Duration::from_secs_f64((room as f64 * 0.618_034).fract() / rate);
        writers.push(tokio::spawn(async move {
            let permit = setup.acquire_owned().await.expect("semaphore");
            let socket = connect(&addr, &path).await;
            drop(permit);
            let signals = WriterSignals {
                ready,
                go,
                started,
                typed,
                finish,
                done: done_typing,
            };
            write(
                socket, clock, trace, keystrokes, rate, phase, signals, start, resets,
            )
            .await;
        }));
    }
    for _ in 0..rooms {
        ready_rx.recv().await.expect("a writer connected");
    }
    // Go: measure from here.
    let server_before = server.stats();
    let nodes_before = server.node_cpu_secs();
    let db_before = server.db_cpu_secs();
    let commits_before = server.commits();
    let own_before = ProcStats::own();
    let t0 = Instant::now();
    *start.lock().expect("start") = Some(t0);
    started.store(true, Ordering::SeqCst);
    go.notify_waiters();
    for _ in 0..rooms {
        if typed_rx.recv().await.is_none() {
            break;
        }
    }
    let typed_at = Instant::now();
    let sent = (rooms * keystrokes) as u64;
    // Drain: until everything arrived or DRAIN_SECS passed.
    loop {
        let delivered: u64 = clocks
            .iter()
            .map(|c| c.delivered.load(Ordering::Relaxed))
            .sum();
        if delivered >= sent || typed_at.elapsed() > Duration::from_secs(DRAIN_SECS) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall_secs = t0.elapsed().as_secs_f64();
    let server_after = server.stats();
    let nodes_after = server.node_cpu_secs();
    let db_after = server.db_cpu_secs();
    let commits_after = server.commits();
    let own_after = ProcStats::own();
    done_typing.store(true, Ordering::SeqCst);
    finish.notify_waiters();
    for w in writers {
        let _ = tokio::time::timeout(Duration::from_secs(5), w).await;
    }
    for o in observers {
        o.abort();
    }
    let mut latencies_us = Vec::new();
    let mut delivered = 0;
    for clock in &clocks {
        latencies_us.extend(clock.latencies_us.lock().expect("latencies").iter());
        delivered += clock.delivered.load(Ordering::Relaxed);
    }
    latencies_us.sort_unstable();
    RunResult {
        kind: server.kind,
        layout,
        rooms,
        rate,
        secs,
        trace: trace.name.clone(),
        sent,
        delivered,
        latencies_us,
        server: server_before.zip(server_after),
        client_cpu_secs: own_after.cpu_secs - own_before.cpu_secs,
        wall_secs,
        resets: resets.load(Ordering::Relaxed),
        commits: commits_before
            .zip(commits_after)
            .map(|(before, after)| after - before),
        placement: (!server.nodes.is_empty()).then_some(server.placement),
        nodes_cpu_secs: nodes_before
            .iter()
            .zip(&nodes_after)
            .map(|(b, a)| b.zip(*a).map(|(b, a)| a - b))
            .collect(),
        db_cpu_secs: db_before.zip(db_after).map(|(b, a)| a - b),
    }
}

fn micros_since(start: &Mutex<Option<Instant>>) -> u64 {
    start
        .lock()
        .ok()
        .and_then(|s| *s)
        .map_or(0, |t0| t0.elapsed().as_micros() as u64)
}

/// Answers the server's sync step 1 with our (empty) state and asks for its
/// state, as a provider does on connect.
async fn handshake(socket: &mut Socket, doc: &yrs::Doc) {
    let step1 = Message::Sync(SyncMessage::SyncStep1(doc.transact().state_vector())).encode_v1();
    socket
        .send(Ws::Binary(step1.into()))
        .await
        .expect("send step 1");
}

fn reply_to_step1(doc: &yrs::Doc, sv: &StateVector) -> Vec<u8> {
    let diff = doc.transact().encode_state_as_update_v1(sv);
    Message::Sync(SyncMessage::SyncStep2(diff)).encode_v1()
}

#[allow(clippy::too_many_arguments)]
async fn observe(
    mut socket: Socket,
    clock: Arc<RoomClock>,
    trace: Arc<TypedTrace>,
    keystrokes: usize,
    synced: tokio::sync::mpsc::Sender<()>,
    permit: tokio::sync::OwnedSemaphorePermit,
    start: Arc<Mutex<Option<Instant>>>,
    resets: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
) {
    let doc = yrs::Doc::new();
    let writer = yrs::block::ClientID::new(TRACE_CLIENT);
    handshake(&mut socket, &doc).await;
    let mut permit = Some(permit);
    let mut seen = vec![false; keystrokes];
    while let Some(frame) = socket.next().await {
        let bytes = match frame {
            Ok(Ws::Binary(bytes)) => bytes,
            Ok(Ws::Close(_)) | Err(_) => {
                if !done.load(Ordering::Relaxed) {
                    resets.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            Ok(_) => continue,
        };
        let Ok(message) = Message::decode_v1(&bytes) else {
            continue;
        };
        let (update, relayed) = match message {
            Message::Sync(SyncMessage::SyncStep1(sv)) => {
                let reply = reply_to_step1(&doc, &sv);
                if socket.send(Ws::Binary(reply.into())).await.is_err() {
                    return;
                }
                continue;
            }
            Message::Sync(SyncMessage::SyncStep2(update)) => {
                if permit.take().is_some() {
                    let _ = synced.send(()).await;
                }
                (update, None)
            }
            Message::Sync(SyncMessage::Update(update)) => {
                let k = trace.by_hash.get(&hash_of(&update)).copied();
                (update, k)
            }
            _ => continue,
        };
        let now_us = micros_since(&start);
        let Ok(decoded) = yrs::Update::decode_v1(&update) else {
            continue;
        };
        let mut txn = doc.transact_mut();
        if txn.apply_update(decoded).is_err() {
            continue;
        }
        let have = txn.state_vector().get(&writer);
        drop(txn);
        let mut latencies = Vec::new();
        let mut deliver = |k: usize, latencies: &mut Vec<u64>| {
            let sent = clock.sent_us[k].load(Ordering::Acquire);
            if k < keystrokes && !seen[k] && sent > 0 {
                seen[k] = true;
                latencies.push(now_us.saturating_sub(sent));
            }
        };
        match relayed {
            // The relayed keystroke itself.
            Some(k) if k < keystrokes => deliver(k, &mut latencies),
            Some(_) => {}
            // Anything else (a state, a snapshot): the insertions it covers.
            None => {
                for k in 0..keystrokes {
                    if trace.end_clock[k] <= have && trace.end_clock[k] > 0 {
                        deliver(k, &mut latencies);
                    }
                }
            }
        }
        if !latencies.is_empty() {
            clock
                .delivered
                .fetch_add(latencies.len() as u64, Ordering::Relaxed);
            clock
                .latencies_us
                .lock()
                .expect("latencies")
                .extend(latencies);
        }
    }
}

/// How a writer and the run agree on when to start and stop.
struct WriterSignals {
    /// "Connected and synced."
    ready: tokio::sync::mpsc::Sender<()>,
    /// Start typing (with `started` for a writer that arrives late).
    go: Arc<tokio::sync::Notify>,
    started: Arc<AtomicBool>,
    /// "Sent my last keystroke."
    typed: tokio::sync::mpsc::Sender<()>,
    /// Close now (with `done` for a writer that arrives late): the run is
    /// measured, so a close is no longer a failure.
    finish: Arc<tokio::sync::Notify>,
    done: Arc<AtomicBool>,
}

#[allow(clippy::too_many_arguments)]
async fn write(
    socket: Socket,
    clock: Arc<RoomClock>,
    trace: Arc<TypedTrace>,
    keystrokes: usize,
    rate: f64,
    phase: Duration,
    signals: WriterSignals,
    start: Arc<Mutex<Option<Instant>>>,
    resets: Arc<AtomicU64>,
) {
    let (mut sink, mut stream) = socket.split();
    let doc = yrs::Doc::new();
    let step1 = Message::Sync(SyncMessage::SyncStep1(doc.transact().state_vector())).encode_v1();
    sink.send(Ws::Binary(step1.into()))
        .await
        .expect("send step 1");
    // The writer's reader: answers the server's step 1, drains the echo of
    // its own updates (the server sends every committed change to every
    // connection of the document, as y-websocket's server does).
    let (step2_tx, mut step2_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let done = signals.done.clone();
    let reader = tokio::spawn(async move {
        let mut answered = false;
        while let Some(frame) = stream.next().await {
            match frame {
                Ok(Ws::Binary(bytes)) => {
                    if !answered {
                        if let Ok(Message::Sync(SyncMessage::SyncStep1(sv))) =
                            Message::decode_v1(&bytes)
                        {
                            answered = true;
                            let _ = step2_tx.send(reply_to_step1(&yrs::Doc::new(), &sv)).await;
                        }
                    }
                }
                Ok(Ws::Close(_)) | Err(_) => {
                    if !done.load(Ordering::Relaxed) {
                        resets.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                Ok(_) => {}
            }
        }
    });
    if let Some(reply) = step2_rx.recv().await {
        sink.send(Ws::Binary(reply.into()))
            .await
            .expect("send step 2");
    }
    let notified = signals.go.notified();
    let _ = signals.ready.send(()).await;
    if !signals.started.load(Ordering::SeqCst) {
        notified.await;
    }
    tokio::time::sleep(phase).await;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for k in 0..keystrokes {
        ticks.tick().await;
        clock.sent_us[k].store(micros_since(&start).max(1), Ordering::Release);
        let message = Message::Sync(SyncMessage::Update(trace.updates[k].clone())).encode_v1();
        if sink.send(Ws::Binary(message.into())).await.is_err() {
            break;
        }
    }
    // Stay connected, as a user who stopped typing does, until the run has
    // been measured.
    let finished = signals.finish.notified();
    let _ = signals.typed.send(()).await;
    if !signals.done.load(Ordering::SeqCst) {
        finished.await;
    }
    let _ = sink.close().await;
    reader.abort();
}

// ---------------------------------------------------------------------------
// Many joins of one large document
// ---------------------------------------------------------------------------

async fn joins(server: &Server, joiners: usize, doc_mb: usize, full_clients: bool) -> String {
    let path = "/yws/bench/big";
    // The author: a document of about doc_mb MB made of 1 KB inserts at
    // scattered positions (20,000 items for 20 MB: a document with a
    // history, not one string), sent as updates of about 4 MB.
    let author = yrs::Doc::with_client_id(AUTHOR_CLIENT);
    let text = author.get_or_insert_text("content");
    let mut socket = connect(&server.addr, path).await;
    handshake(&mut socket, &author).await;
    let target_bytes = doc_mb * 1_000_000;
    let chunk = "abcdefghij".repeat(100);
    let mut written = 0usize;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut last_clock = 0u32;
    while written < target_bytes {
        let mut txn = author.transact_mut();
        for _ in 0..4_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = text.len(&txn);
            let at = (rng % (u64::from(len) + 1)) as u32;
            text.insert(&mut txn, at, &chunk);
            written += chunk.len();
            if written >= target_bytes {
                break;
            }
        }
        let update = txn.encode_update_v1();
        last_clock = txn
            .state_vector()
            .get(&yrs::block::ClientID::new(AUTHOR_CLIENT));
        drop(txn);
        let message = Message::Sync(SyncMessage::Update(update)).encode_v1();
        socket
            .send(Ws::Binary(message.into()))
            .await
            .expect("send a part of the large document");
    }
    // Wait until a fresh connection is given the whole document: every
    // part is committed (the author's own connection is not sent back its
    // updates).
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut checker = connect(&server.addr, path).await;
        handshake(&mut checker, &yrs::Doc::new()).await;
        let state = loop {
            let frame = tokio::time::timeout(Duration::from_secs(120), checker.next())
                .await
                .expect("the server answers a sync step 1")
                .expect("socket open")
                .expect("frame");
            if let Ws::Binary(bytes) = frame {
                if let Ok(Message::Sync(SyncMessage::SyncStep2(state))) = Message::decode_v1(&bytes)
                {
                    break state;
                }
            }
        };
        let got = yrs::Doc::new();
        if let Ok(update) = yrs::Update::decode_v1(&state) {
            let _ = got.transact_mut().apply_update(update);
        }
        if got
            .transact()
            .state_vector()
            .get(&yrs::block::ClientID::new(AUTHOR_CLIENT))
            >= last_clock
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the large document is committed within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(socket);
    let expected_len = author
        .transact()
        .encode_state_as_update_v1(&StateVector::default())
        .len();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = server.stats();
    let own_before = ProcStats::own();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for j in 0..joiners {
        let addr = server.addr.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            if j > 0 && !full_clients {
                return light_join(&addr, path, expected_len)
                    .await
                    .map(|()| started.elapsed());
            }
            let mut socket = connect(&addr, path).await;
            let doc = yrs::Doc::new();
            handshake(&mut socket, &doc).await;
            loop {
                let frame = tokio::time::timeout(Duration::from_secs(300), socket.next())
                    .await
                    .ok()??
                    .ok()?;
                let Ws::Binary(bytes) = frame else { continue };
                match Message::decode_v1(&bytes).ok()? {
                    Message::Sync(SyncMessage::SyncStep1(sv)) => {
                        let reply = reply_to_step1(&doc, &sv);
                        socket.send(Ws::Binary(reply.into())).await.ok()?;
                    }
                    Message::Sync(SyncMessage::SyncStep2(state)) => {
                        let elapsed = started.elapsed();
                        // One joiner checks that what it got is the document.
                        if j == 0 {
                            let got = yrs::Doc::new();
                            got.transact_mut()
                                .apply_update(yrs::Update::decode_v1(&state).ok()?)
                                .ok()?;
                            let len = got
                                .transact()
                                .encode_state_as_update_v1(&StateVector::default())
                                .len();
                            assert_eq!(len, expected_len, "the joiner got the whole document");
                        }
                        return Some(elapsed);
                    }
                    _ => {}
                }
            }
        }));
    }
    let mut times: Vec<Duration> = Vec::new();
    for t in tasks {
        if let Ok(Some(elapsed)) = t.await {
            times.push(elapsed);
        }
    }
    let wall = t0.elapsed();
    let after = server.stats();
    let client_cpu = ProcStats::own().cpu_secs - own_before.cpu_secs;
    times.sort();
    let pct = |p: f64| {
        times
            .get(((times.len() as f64 - 1.0) * p).round() as usize)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    let (cpu, rss) = match before.zip(after) {
        Some((b, a)) => (
            format!("{:.2} s", a.cpu_secs - b.cpu_secs),
            format!("{:.0} MB", a.peak_rss_bytes as f64 / 1e6),
        ),
        None => ("—".into(), "—".into()),
    };
    format!(
        "| {joiners} | {:.1} MB state | {:.0} ms | {:.0} ms | {:.0} ms | {}/{joiners} in {:.1} s | {cpu} | {rss} | {client_cpu:.2} s |",
        expected_len as f64 / 1e6,
        pct(0.5),
        pct(0.99),
        pct(1.0),
        times.len(),
        wall.as_secs_f64(),
    )
}

/// A joiner that costs the load generator as little as possible, so that on
/// one machine the server gets the cores: it speaks the WebSocket protocol
/// by hand over a plain socket (upgrade, one masked sync step 1), then reads
/// the frames of the server's answer through a fixed 64 KiB buffer,
/// checking the sync step 2 header and counting its bytes instead of
/// assembling a 20 MB message. Synced = every byte the header announced has
/// arrived. (One joiner per run uses the full client and checks the content.)
async fn light_join(addr: &str, path: &str, expected_len: usize) -> Option<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    // The response head, byte by byte up to the blank line (it is small).
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.ok()?);
        if head.len() > 4096 {
            return None;
        }
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return None;
    }
    // Sync step 1 with an empty state vector, masked as clients must.
    let payload = Message::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1();
    let mask = [0x5a, 0x17, 0xc3, 0x81];
    let mut frame = vec![0x82, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&frame).await.ok()?;
    let mut buffer = vec![0u8; 64 << 10];
    // Within the message being read: is it the state, and how much is left.
    let mut in_state = false;
    let mut state_left: Option<usize> = None;
    loop {
        let b0 = stream.read_u8().await.ok()?;
        let b1 = stream.read_u8().await.ok()?;
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        let mut len = u64::from(b1 & 0x7f);
        if len == 126 {
            len = u64::from(stream.read_u16().await.ok()?);
        } else if len == 127 {
            len = stream.read_u64().await.ok()?;
        }
        let mut left = usize::try_from(len).ok()?;
        let mut first = true;
        while left > 0 {
            let n = left.min(buffer.len());
            stream.read_exact(&mut buffer[..n]).await.ok()?;
            if first && opcode == 0x2 {
                // A new binary message: a sync step 2 starts [0, 1, varint].
                in_state = n >= 3 && buffer[0] == 0 && buffer[1] == 1;
                if in_state {
                    let (announced, used) = read_varint(&buffer[2..n])?;
                    if announced != expected_len {
                        return None;
                    }
                    state_left = Some(announced - (n - 2 - used).min(announced));
                }
            } else if in_state {
                let rest = state_left.unwrap_or(0);
                state_left = Some(rest - n.min(rest));
            }
            first = false;
            left -= n;
        }
        if opcode == 0x8 {
            return None; // closed
        }
        if fin && in_state {
            return (state_left == Some(0)).then_some(());
        }
    }
}

/// A LEB128 varint at the start of `bytes`: its value and length.
fn read_varint(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}
