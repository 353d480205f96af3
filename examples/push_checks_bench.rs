//! What the hostile-input checks on the write path cost (issue 16).
//!
//! Every push goes through `decode_pushed_update`: yrs's decoder, then one
//! scan of the update's blocks (no legacy JSON content, no overlapping
//! client sections, no item naming a later item of its own client). Every
//! stored update is scanned again when a document is loaded. This times,
//! over the updates of a real editing trace, in one run:
//!
//! - `yrs::Update::decode_v1` alone (the baseline), `decode_update`, and
//!   `decode_pushed_update`;
//! - replaying the trace into a bare `yrs::Doc` (decode + apply, one
//!   transaction per update) against `DocState::load` of the same updates
//!   as stored changes (decode, scan, apply, the F3 bookkeeping).
//!
//! ```text
//! cargo run --release --example push_checks_bench
//! cargo run --release --example push_checks_bench -- --trace seph-blog1
//! ```

use seqsync_testkit::traces;

use std::time::{Duration, Instant};

use clap::Parser;
use seqsync_engine::{decode_pushed_update, decode_update, DocId, DocState};
use yrs::updates::decoder::Decode;
use yrs::Transact;

#[derive(Parser)]
struct Args {
    /// Trace name under benches/traces.
    #[arg(long, default_value = "automerge-paper")]
    trace: String,
    /// Runs of each measurement; the fastest is kept.
    #[arg(long, default_value_t = 3)]
    runs: u32,
}

fn fastest(runs: u32, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    let args = Args::parse();
    let trace = traces::load(&args.trace);
    let updates = &trace.updates;
    println!(
        "trace {}: {} updates, {} bytes",
        trace.name,
        updates.len(),
        updates.iter().map(Vec::len).sum::<usize>()
    );

    let yrs_decode = fastest(args.runs, || {
        for u in updates {
            std::hint::black_box(yrs::Update::decode_v1(u).expect("decodes"));
        }
    });
    let engine_decode = fastest(args.runs, || {
        for u in updates {
            std::hint::black_box(decode_update(u).expect("decodes"));
        }
    });
    let pushed_decode = fastest(args.runs, || {
        for u in updates {
            std::hint::black_box(decode_pushed_update(u).expect("a trace update passes"));
        }
    });

    let bare_replay = fastest(args.runs, || {
        let doc = yrs::Doc::new();
        for u in updates {
            doc.transact_mut()
                .apply_update(yrs::Update::decode_v1(u).expect("decodes"))
                .expect("applies");
        }
    });
    let doc = DocId::new("d").expect("doc id");
    let changes = traces::update_changes(&doc, 1, updates);
    let load = fastest(args.runs, || {
        std::hint::black_box(DocState::load(&changes).expect("loads"));
    });

    let ratio = |d: Duration, base: Duration| d.as_secs_f64() / base.as_secs_f64();
    println!();
    println!("| measurement | seconds | vs baseline |");
    println!("|---|---|---|");
    println!(
        "| yrs::Update::decode_v1 (baseline) | {:.3} | 1.00x |",
        yrs_decode.as_secs_f64()
    );
    println!(
        "| decode_update | {:.3} | {:.2}x |",
        engine_decode.as_secs_f64(),
        ratio(engine_decode, yrs_decode)
    );
    println!(
        "| decode_pushed_update (decode + scan) | {:.3} | {:.2}x |",
        pushed_decode.as_secs_f64(),
        ratio(pushed_decode, yrs_decode)
    );
    println!(
        "| bare yrs replay (baseline) | {:.3} | 1.00x |",
        bare_replay.as_secs_f64()
    );
    println!(
        "| DocState::load (decode + scan + apply) | {:.3} | {:.2}x |",
        load.as_secs_f64(),
        ratio(load, bare_replay)
    );
}
