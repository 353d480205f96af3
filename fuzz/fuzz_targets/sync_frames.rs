//! Arbitrary bytes as a sync socket frame (`seqsync_protocol::sync`), from
//! either side: what a hostile client sends the server, what a broken
//! server sends a client.
//!
//! Checks:
//! - neither decoder panics or allocates beyond the input (counts are
//!   checked against the bytes left before anything is reserved);
//! - a frame that decodes re-encodes to bytes that decode to the same
//!   frame (not always to the input's bytes: lib0 reads a varuint with
//!   needless `0x80` bytes, and so does the decoder).
#![no_main]

use libfuzzer_sys::fuzz_target;
use seqsync_protocol::sync::{ClientFrame, ServerFrame};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = ClientFrame::decode(data) {
        let again = ClientFrame::decode(&frame.encode()).expect("a re-encoded frame decodes");
        assert_eq!(again, frame, "client frame round trip");
    }
    if let Ok(frame) = ServerFrame::decode(data) {
        let again = ServerFrame::decode(&frame.encode()).expect("a re-encoded frame decodes");
        assert_eq!(again, frame, "server frame round trip");
    }
});
