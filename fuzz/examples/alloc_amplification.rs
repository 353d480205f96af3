//! Measures what a tiny malformed Yjs update costs `decode_update` without
//! sanitizers (system allocator): time and peak resident memory.
//! Run from `fuzz/`: `cargo run --release --example alloc_amplification`.

use std::time::Instant;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let inputs: [&[u8]; 2] = [
        // push_bytes finding: the clients count varint is ~124 million.
        &[214, 201, 154, 59],
        // The same shape with a count of ~16 million.
        &[0x80, 0x80, 0x80, 0x08],
    ];
    for input in inputs {
        let before = peak_rss_kib();
        let start = Instant::now();
        let result = seqsync_engine::decode_update(input);
        println!(
            "{input:?}: {:?} in {:?}; peak RSS {} MiB -> {} MiB",
            result.map(|_| "decoded"),
            start.elapsed(),
            before / 1024,
            peak_rss_kib() / 1024
        );
    }
}
