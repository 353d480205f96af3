//! Compares this checkout with another revision on the workloads that
//! have regressed before, alternating the two builds in one session:
//!
//! ```sh
//! cargo run --release --example perf_check -- --against main~1            # 3 rounds
//! cargo run --release --example perf_check -- --against 0b9669b --quick --rounds 2
//! cargo run --release --example perf_check -- --against main --workloads steady,join
//! ```
//!
//! Why it exists: a change once made the many-joins path 2.6× slower and
//! nobody saw it, because nothing compared a build with the one before it.
//! A number measured alone on a 2-core machine moves by ±20 % from one run
//! to the next; the same number measured alternately against the previous
//! build, in the same session, gives a ratio whose spread says whether a
//! change is real. Every closing note that touches `server/`, `actors/` or
//! `engine/` quotes this table. It is not a test and never fails CI.
//!
//! How:
//! 1. The other revision is checked out as a git worktree under
//!    `target/perf_check/` and built there **in a target directory of its
//!    own**: cargo names the artifacts of workspace members without the
//!    checkout's path, so two checkouts sharing a target directory overwrite
//!    each other's libraries, and a later build of one can link the other's
//!    (seen when this was measured by hand). The worktree stays while the
//!    binaries run (they read the traces from their own checkout).
//! 2. This checkout's examples are built as usual and copied aside, so
//!    nothing rebuilds them while they are measured.
//! 3. Each round runs every workload with both builds, the order swapped
//!    every round; the table gives each metric's median and range per
//!    build, and the median and range of the per-round ratios.
//!
//! Workloads (each is an example of this repository, run as a child):
//! - `steady`: `yws_load --rooms 300 --rate 10 --secs 20` (y-websocket rooms
//!   typed at human pace): server CPU per edit, p50, p99;
//! - `join`: `yws_load --join 150 --doc-mb 20` (150 clients joining a large
//!   document at once): synced p50 and p99, server CPU;
//! - `group_commit`: `group_commit --quick`: durable pushes/s, 1 and 64
//!   writers, SQLite;
//! - `backends`: `compare_backends --quick`: the geometric mean of ops/s
//!   over every workload and backend, and the cell that moved most.
//!
//! `--quick` shortens `steady` to 10 s and `join` to a 5 MB document.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "this checkout against another revision, alternating builds")]
struct Args {
    /// The revision to compare against (anything `git rev-parse` takes).
    #[arg(long)]
    against: String,
    /// Rounds (each runs every workload with both builds).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Shorter workloads (for a quick look; wider spread).
    #[arg(long)]
    quick: bool,
    /// Workloads to run, comma-separated: steady, join, group_commit,
    /// backends.
    #[arg(long, default_value = "steady,join,group_commit,backends")]
    workloads: String,
}

/// The examples the workloads run.
const EXAMPLES: [&str; 3] = ["yws_load", "group_commit", "compare_backends"];

fn run(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    if !output.status.success() {
        panic!(
            "{what} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn build(checkout: &Path, target_dir: &Path) {
    let mut command = Command::new(env!("CARGO"));
    command
        .current_dir(checkout)
        .env("CARGO_TARGET_DIR", target_dir)
        .args(["build", "--release"]);
    for example in EXAMPLES {
        command.args(["--example", example]);
    }
    eprintln!("[perf_check] building {}", checkout.display());
    let status = command.status().expect("cargo build");
    assert!(status.success(), "building {} failed", checkout.display());
}

/// Copies the built examples into `dir`.
fn freeze(target_dir: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).expect("create the binaries' directory");
    for example in EXAMPLES {
        let from = target_dir.join("release/examples").join(example);
        std::fs::copy(&from, dir.join(example))
            .unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
}

/// A cell such as `2.67 ms`, `151 µs`, `5.96 s` or `51873`, in the unit
/// `unit` (`ms`, `µs`, `s`, or "" for a plain number).
fn value(cell: &str, unit: &str) -> Option<f64> {
    let mut parts = cell.split_whitespace();
    let number: f64 = parts.next()?.replace(',', "").parse().ok()?;
    let scale = |u: &str| match u {
        "µs" => Some(1e-6),
        "ms" => Some(1e-3),
        "s" => Some(1.0),
        _ => None,
    };
    match (parts.next(), unit) {
        (_, "") => Some(number),
        (Some(have), want) => Some(number * scale(have)? / scale(want)?),
        (None, _) => None,
    }
}

/// The cells of the last table row of `output` that starts with `prefix`.
fn row<'a>(output: &'a str, prefix: &str) -> Option<Vec<&'a str>> {
    output
        .lines()
        .rfind(|line| line.starts_with(prefix))
        .map(|line| line.split('|').map(str::trim).collect())
}

/// The cells of the steady run's row (a run's row ends with an HTML comment;
/// the summary's do not), from the cell before the layout on: `yws_load`
/// rows gained a leading server column, older revisions print without it.
fn steady_row(output: &str) -> Option<Vec<&str>> {
    let line = output
        .lines()
        .rfind(|line| line.contains("| one collection |") && line.contains("<!--"))?;
    let cells: Vec<&str> = line.split('|').map(str::trim).collect();
    let layout = cells.iter().position(|c| *c == "one collection")?;
    // Index 1 is the layout, as in the old rows (index 0 is before the first bar).
    Some(cells[layout - 1..].to_vec())
}

/// One measurement: metric name → value, and whether higher is better.
type Sample = BTreeMap<String, (f64, bool)>;

fn steady(bin: &Path, quick: bool) -> Sample {
    let secs = if quick { "10" } else { "20" };
    let out = run(
        Command::new(bin.join("yws_load")).args(["--rooms", "300", "--rate", "10", "--secs", secs]),
        "yws_load (steady)",
    );
    // | layout | rooms | edits/s | p50 | p95 | p99 | max | delivered | server CPU / edit | …
    let cells = steady_row(&out).expect("the steady row");
    let mut sample = Sample::new();
    let mut put = |name: &str, cell: &str, unit: &str| {
        if let Some(v) = value(cell, unit) {
            sample.insert(name.to_owned(), (v, false));
        }
    };
    put("steady: server CPU per edit (µs)", cells[9], "µs");
    put("steady: p50 (ms)", cells[4], "ms");
    put("steady: p99 (ms)", cells[6], "ms");
    sample
}

fn join(bin: &Path, quick: bool) -> Sample {
    let mb = if quick { "5" } else { "20" };
    let out = run(
        Command::new(bin.join("yws_load")).args(["--join", "150", "--doc-mb", mb]),
        "yws_load (join)",
    );
    // | joiners | document | synced p50 | p99 | max | all synced | server CPU | …
    let cells = row(&out, "| 150 |").expect("the join row");
    let mut sample = Sample::new();
    let mut put = |name: &str, cell: &str, unit: &str| {
        if let Some(v) = value(cell, unit) {
            sample.insert(name.to_owned(), (v, false));
        }
    };
    put("join: synced p50 (ms)", cells[3], "ms");
    put("join: synced p99 (ms)", cells[4], "ms");
    put("join: server CPU (s)", cells[7], "s");
    sample
}

fn group_commit(bin: &Path) -> Sample {
    let out = run(
        Command::new(bin.join("group_commit")).arg("--quick"),
        "group_commit",
    );
    let mut sample = Sample::new();
    // backend  1 writer  64 writers  ratio
    if let Some(line) = out.lines().find(|l| l.starts_with("sqlite")) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        if let (Some(one), Some(many)) = (cells.get(1), cells.get(2)) {
            if let (Ok(one), Ok(many)) = (one.parse::<f64>(), many.parse::<f64>()) {
                sample.insert(
                    "group_commit: sqlite 1 writer (pushes/s)".into(),
                    (one, true),
                );
                sample.insert(
                    "group_commit: sqlite 64 writers (pushes/s)".into(),
                    (many, true),
                );
            }
        }
    }
    sample
}

/// ops/s of every (workload, backend) cell of `compare_backends --quick`.
fn backends_cells(bin: &Path, scratch: &Path) -> BTreeMap<String, f64> {
    let json = scratch.join("compare_backends.json");
    run(
        Command::new(bin.join("compare_backends"))
            .args(["--quick", "--json"])
            .arg(&json),
        "compare_backends",
    );
    let text = std::fs::read_to_string(&json).expect("compare_backends' json");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).expect("json rows");
    rows.iter()
        .filter_map(|r| {
            let key = format!("{}/{}", r["workload"].as_str()?, r["backend"].as_str()?);
            Some((key, r["ops_per_sec"].as_f64()?))
        })
        .collect()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// A value with as many decimals as its size needs (pushes/s as integers,
/// milliseconds with two).
fn show(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn range(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

fn main() {
    let args = Args::parse();
    let workloads: Vec<&str> = args.workloads.split(',').map(str::trim).collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let rev = run(
        Command::new("git").current_dir(&root).args([
            "rev-parse",
            "--verify",
            &format!("{}^{{commit}}", args.against),
        ]),
        "git rev-parse",
    )
    .trim()
    .to_owned();
    let short = &rev[..rev.len().min(12)];
    let work = root.join("target/perf_check");
    let worktree = work.join(format!("checkout-{short}"));
    if !worktree.exists() {
        run(
            Command::new("git").current_dir(&root).args([
                "worktree",
                "add",
                "--detach",
                &worktree.to_string_lossy(),
                &rev,
            ]),
            "git worktree add",
        );
    }
    // Revisions before the traces moved into benches/traces read them from
    // `../shared/traces` beside the checkout: give the worktree the same
    // neighbour.
    let shared = root.join("../shared");
    let beside = work.join("shared");
    if shared.exists() && !beside.exists() {
        #[cfg(unix)]
        let _ = std::os::unix::fs::symlink(&shared, &beside);
    }
    let base_target = work.join(format!("target-{short}"));
    build(&worktree, &base_target);
    let base_bin = work.join(format!("bin-{short}"));
    freeze(&base_target, &base_bin);
    let current_target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    build(&root, &current_target);
    let current_bin = work.join("bin-current");
    freeze(&current_target, &current_bin);

    // metric → (higher is better, per-round values of base, of current).
    let mut results: BTreeMap<String, (bool, Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let mut backend_rounds: Vec<(BTreeMap<String, f64>, BTreeMap<String, f64>)> = Vec::new();
    for round in 0..args.rounds {
        let order: [(&Path, bool); 2] = if round % 2 == 0 {
            [(&base_bin, false), (&current_bin, true)]
        } else {
            [(&current_bin, true), (&base_bin, false)]
        };
        let mut backend_pair = (BTreeMap::new(), BTreeMap::new());
        for workload in &workloads {
            for (bin, is_current) in order {
                eprintln!(
                    "[perf_check] round {} / {}: {workload} on {}",
                    round + 1,
                    args.rounds,
                    if is_current { "this checkout" } else { short }
                );
                let sample = match *workload {
                    "steady" => steady(bin, args.quick),
                    "join" => join(bin, args.quick),
                    "group_commit" => group_commit(bin),
                    "backends" => {
                        let cells = backends_cells(bin, &work);
                        if is_current {
                            backend_pair.1 = cells;
                        } else {
                            backend_pair.0 = cells;
                        }
                        Sample::new()
                    }
                    other => panic!("unknown workload {other:?}"),
                };
                for (metric, (v, higher_better)) in sample {
                    let entry =
                        results
                            .entry(metric)
                            .or_insert((higher_better, Vec::new(), Vec::new()));
                    if is_current {
                        entry.2.push(v);
                    } else {
                        entry.1.push(v);
                    }
                }
            }
        }
        if workloads.contains(&"backends") {
            backend_rounds.push(backend_pair);
        }
    }
    // compare_backends: the geometric mean of current/base ops/s per round.
    let mut worst: Option<(String, f64)> = None;
    for (base, current) in &backend_rounds {
        let ratios: Vec<(String, f64)> = current
            .iter()
            .filter_map(|(k, c)| {
                base.get(k)
                    .filter(|b| **b > 0.0)
                    .map(|b| (k.clone(), c / b))
            })
            .collect();
        if ratios.is_empty() {
            continue;
        }
        let geomean = (ratios.iter().map(|(_, r)| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
        let entry = results
            .entry("backends: ops/s, geometric mean of every cell (ratio)".into())
            .or_insert((true, Vec::new(), Vec::new()));
        entry.1.push(1.0);
        entry.2.push(geomean);
        for (k, r) in ratios {
            if worst
                .as_ref()
                .is_none_or(|(_, w)| (r.ln()).abs() > w.ln().abs())
            {
                worst = Some((k, r));
            }
        }
    }

    println!(
        "\nthis checkout vs {short} ({}), {} rounds, builds alternated{}\n",
        args.against,
        args.rounds,
        if args.quick { ", --quick" } else { "" }
    );
    println!("| metric | {short}: median (range) | this checkout: median (range) | ratio this / {short}: median (range) | better is |");
    println!("|---|---|---|---|---|");
    for (metric, (higher_better, base, current)) in &results {
        if base.is_empty() || current.is_empty() {
            continue;
        }
        let mut ratios: Vec<f64> = base
            .iter()
            .zip(current)
            .filter(|(b, _)| **b != 0.0)
            .map(|(b, c)| c / b)
            .collect();
        let (bmin, bmax) = range(base);
        let (cmin, cmax) = range(current);
        let (rmin, rmax) = range(&ratios);
        println!(
            "| {metric} | {} ({}–{}) | {} ({}–{}) | {:.2}× ({rmin:.2}–{rmax:.2}) | {} |",
            show(median(&mut base.clone())),
            show(bmin),
            show(bmax),
            show(median(&mut current.clone())),
            show(cmin),
            show(cmax),
            median(&mut ratios),
            if *higher_better { "higher" } else { "lower" }
        );
    }
    if let Some((cell, ratio)) = worst {
        println!("\ncompare_backends: the cell that moved most in a round: {cell} at {ratio:.2}× (quick runs are short; look again before believing one cell)");
    }
    run(
        Command::new("git").current_dir(&root).args([
            "worktree",
            "remove",
            "--force",
            &worktree.to_string_lossy(),
        ]),
        "git worktree remove",
    );
}
