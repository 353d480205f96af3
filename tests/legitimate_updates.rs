//! The checks a push goes through before yrs integrates it must never refuse
//! what a real editor sends: every update of every editing trace (typed
//! through yrs as a client would, see `benches/support/traces.rs`) passes
//! `decode_pushed_update`, the F2 round trip included.
//!
//! Trace data: CC BY 4.0, see `benches/traces/README.md`.

use seqsync_testkit::traces;

#[test]
fn every_update_of_every_trace_is_accepted() {
    let mut total = 0;
    // automerge-paper (259,778 updates) is left to the release benches: in a
    // debug build typing it out takes most of a minute.
    for name in ["seph-blog1", "friendsforever_flat", "sveltecomponent"] {
        let trace = traces::load(name);
        for (i, update) in trace.updates.iter().enumerate() {
            if let Err(err) = seqsync::decode_pushed_update(update) {
                panic!("{name}: update {i} refused: {err}");
            }
        }
        total += trace.updates.len();
    }
    println!("{total} trace updates accepted");
    assert!(total > 100_000, "the traces were read: {total}");
}
