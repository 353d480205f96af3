//! Inputs found by the fuzz targets in `fuzz/` (see `fuzz/README.md`), kept
//! as regression tests of `seqsync_server::decode`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use seqsync_server::decode::{
    decode_ack_body, decode_awareness_update, decode_batch_body, decode_cursor_query,
    decode_yws_message,
};

/// Calls `f`, failing the test if it panics (the decoders promise never to).
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(value) => value,
        Err(_) => panic!("{what} panicked"),
    }
}

/// 2^53 as a varint: the first client id yrs refuses (debug assertion in
/// `ClientID::new`).
const CLIENT_2_POW_53: [u8; 8] = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10];

/// Found by `http_bodies` (minimized): an awareness frame whose second entry
/// names a client id above 2^53. yrs 0.28.1 asserts on it inside
/// `Message::decode_v1` in builds with debug assertions; the decoder must
/// answer with an error instead of unwinding into the WebSocket task.
#[test]
fn yws_awareness_frame_with_oversized_client_id_is_refused_without_panic() {
    let frame = [
        1, 25, 123, 1, 7, 3, 21, 112, 59, 159, 255, 255, 255, 255, 255, 255, 127, 110, 52, 50, 125,
        115, 58, 32, 52, 50, 125,
    ];
    let result = no_panic("decode_yws_message", || decode_yws_message(&frame));
    assert!(result.is_err(), "{result:?}");
}

/// The same assertion reached through the two other places a client id is
/// decoded: a one-entry awareness frame and the state vector of sync step 1.
/// Without debug assertions yrs decodes them (with a masked id); with them
/// the decoder must refuse them. Either way it must not panic.
#[test]
fn yws_frames_naming_client_2_pow_53_never_panic() {
    let mut awareness = vec![1u8, 13, 1];
    awareness.extend_from_slice(&CLIENT_2_POW_53);
    awareness.extend_from_slice(&[0, 2, b'{', b'}']);
    let mut step1 = vec![0u8, 0, 10, 1];
    step1.extend_from_slice(&CLIENT_2_POW_53);
    step1.push(1);
    for frame in [awareness, step1] {
        let result = no_panic("decode_yws_message", || decode_yws_message(&frame));
        if cfg!(debug_assertions) {
            assert!(result.is_err(), "{frame:?}: {result:?}");
        }
    }
}

/// The HTTP decoders answer the start of that frame with their documented
/// codes (the cursor query ignores keys it does not know).
#[test]
fn http_decoders_answer_binary_garbage_with_their_codes() {
    let frame: &[u8] = &[1, 25, 123, 1, 7, 3, 21, 112, 59];
    let batch = no_panic("decode_batch_body", || decode_batch_body(frame));
    assert_eq!(batch.map_err(|e| e.code()), Err("invalid_json"));
    let ack = no_panic("decode_ack_body", || decode_ack_body(frame));
    assert_eq!(ack.map_err(|e| e.code()), Err("invalid_json"));
    let query = String::from_utf8_lossy(frame);
    let cursor = no_panic("decode_cursor_query", || decode_cursor_query(&query));
    assert_eq!(
        cursor.ok().map(|q| q.after),
        Some(0),
        "unknown keys are ignored"
    );
}

/// The sync socket's presence decodes a bare awareness update: the same
/// client id assertion of yrs must be an error there too, never a panic,
/// and a count the bytes cannot hold is refused before yrs reserves room
/// for it (2^40 clients announced in five bytes).
#[test]
fn awareness_updates_with_oversized_ids_or_counts_never_panic() {
    let mut oversized_id = vec![1u8];
    oversized_id.extend_from_slice(&CLIENT_2_POW_53);
    oversized_id.extend_from_slice(&[0, 2, b'{', b'}']);
    let result = no_panic("decode_awareness_update", || {
        decode_awareness_update(&oversized_id)
    });
    if cfg!(debug_assertions) {
        assert!(result.is_err(), "{result:?}");
    }
    let count_bomb = [0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 1, 1, 0];
    let result = no_panic("decode_awareness_update", || {
        decode_awareness_update(&count_bomb)
    });
    assert!(result.is_err(), "{result:?}");
    // Bytes after the last entry are refused too; the update itself decodes.
    let one = [1u8, 7, 1, 2, b'{', b'}'];
    assert!(decode_awareness_update(&one).is_ok());
    let trailing = [1u8, 7, 1, 2, b'{', b'}', 0];
    assert!(decode_awareness_update(&trailing).is_err());
}
