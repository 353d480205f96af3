//! Helpers shared by the seqsync fuzz targets.
//!
//! libfuzzer-sys installs a panic hook that aborts the process on **every**
//! panic, including the ones the engine catches on purpose: `decode_update`,
//! `decode_state_vector`, `DocState::apply` and `DocState::load` run yrs under
//! `catch_unwind` and turn its panics into errors. Under that hook the fuzzer
//! would stop at the first yrs panic the engine handles correctly, so the
//! targets call those functions through [`tolerating_caught_panics`]: a panic
//! raised inside it is counted and reported once per source location, and
//! must still be caught by the engine (a panic that escapes the call reaches
//! libfuzzer-sys's wrapper, which aborts: a finding). Everywhere else the
//! original abort-on-panic hook applies.

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

thread_local! {
    static TOLERATING: Cell<bool> = const { Cell::new(false) };
}

static CAUGHT: AtomicU64 = AtomicU64::new(0);
static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Installs the hook described in the crate docs. Call from the target's
/// `init:` block (after libfuzzer-sys installed its own hook).
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let abort_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if TOLERATING.with(Cell::get) {
                CAUGHT.fetch_add(1, Ordering::Relaxed);
                let at = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
                if seen.get_or_insert_with(HashSet::new).insert(at.clone()) {
                    eprintln!("[seqsync-fuzz] panic caught by the code under test at {at}: {info}");
                }
                return;
            }
            abort_hook(info);
        }));
    });
}

/// Runs `f`, an engine call documented to catch yrs panics, under the
/// tolerant hook. The result is whatever `f` returns; a panic that escapes
/// `f` still unwinds to libfuzzer-sys, which aborts.
pub fn tolerating_caught_panics<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            TOLERATING.with(|t| t.set(self.0));
        }
    }
    let _reset = Reset(TOLERATING.with(|t| t.replace(true)));
    f()
}

/// Panics caught by the engine so far in this process.
pub fn caught_panics() -> u64 {
    CAUGHT.load(Ordering::Relaxed)
}

/// Whether the run tolerates the findings already reported (see
/// `fuzz/README.md`): set `SEQSYNC_FUZZ_ALLOW_KNOWN=1` to let the fuzzer look
/// past them. By default every property is enforced, so a target keeps
/// failing on a known finding until it is fixed.
pub fn allow_known(finding: &'static str) -> bool {
    static ALLOW: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let allow = *ALLOW.get_or_init(|| {
        std::env::var("SEQSYNC_FUZZ_ALLOW_KNOWN").is_ok_and(|v| !v.is_empty() && v != "0")
    });
    if allow {
        KNOWN.fetch_add(1, Ordering::Relaxed);
        let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        if seen
            .get_or_insert_with(HashSet::new)
            .insert(finding.to_owned())
        {
            eprintln!("[seqsync-fuzz] known finding {finding} hit (tolerated)");
        }
    }
    allow
}

static KNOWN: AtomicU64 = AtomicU64::new(0);

/// Known findings tolerated so far in this process.
pub fn known_hits() -> u64 {
    KNOWN.load(Ordering::Relaxed)
}
