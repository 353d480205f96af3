//! Arbitrary bytes fed to every decoder of `seqsync_server::decode`: the
//! batch body, the ack body, the cursor query string, the y-websocket
//! frame decoder and the awareness update of the sync socket's presence.
//!
//! Checks:
//! - no decoder panics (`decode_yws_message` catches yrs's own panics, which
//!   are tolerated and logged once per location, see `seqsync_fuzz`);
//! - errors carry the codes the routes document (`invalid_json`,
//!   `invalid_base64`, `invalid_query`) and a JSON body with that code;
//! - what decodes re-encodes to something that decodes to the same value
//!   (batch: JSON + base64; ack: `{"seq": n}`; cursor: `after=…&limit=…&
//!   epoch=…`; y-websocket: `Message::encode_v1`, for the messages the
//!   server acts on).
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use seqsync_fuzz::{install_panic_hook, tolerating_caught_panics};
use seqsync_server::decode::{
    decode_ack_body, decode_awareness_update, decode_batch_body, decode_cursor_query,
    decode_yws_message,
};
use seqsync_server::ApiError;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::encoder::Encode;

fn check_error(err: &ApiError, codes: &[&str], what: &str) {
    assert!(
        codes.contains(&err.code()),
        "{what}: unexpected error code {}",
        err.code()
    );
    assert_eq!(
        err.body().error.code,
        err.code(),
        "{what}: the JSON body does not carry the code"
    );
}

fn batch(data: &[u8]) {
    match decode_batch_body(data) {
        Ok(updates) => {
            let b64 = base64::engine::general_purpose::STANDARD;
            let items: Vec<serde_json::Value> = updates
                .iter()
                .map(|(doc, update)| serde_json::json!({"doc": doc, "update": b64.encode(update)}))
                .collect();
            let body = serde_json::to_vec(&serde_json::json!({ "updates": items }))
                .expect("a JSON value serializes");
            match decode_batch_body(&body) {
                Ok(again) => assert_eq!(again, updates, "batch body does not round trip"),
                Err(err) => panic!("re-encoded batch body refused: {err}"),
            }
        }
        Err(err) => check_error(&err, &["invalid_json", "invalid_base64"], "batch"),
    }
}

fn ack(data: &[u8]) {
    match decode_ack_body(data) {
        Ok(seq) => {
            let body = format!("{{\"seq\": {seq}}}");
            match decode_ack_body(body.as_bytes()) {
                Ok(again) => assert_eq!(again, seq, "ack body does not round trip"),
                Err(err) => panic!("re-encoded ack body refused: {err}"),
            }
        }
        Err(err) => check_error(&err, &["invalid_json"], "ack"),
    }
}

fn cursor(query: &str) {
    match decode_cursor_query(query) {
        Ok(parsed) => {
            let mut again = format!("after={}", parsed.after);
            if let Some(limit) = parsed.limit {
                again.push_str(&format!("&limit={limit}"));
            }
            if let Some(epoch) = parsed.epoch {
                again.push_str(&format!("&epoch={epoch}"));
            }
            match decode_cursor_query(&again) {
                Ok(reparsed) => assert_eq!(reparsed, parsed, "cursor query does not round trip"),
                Err(err) => panic!("re-encoded cursor query {again:?} refused: {err}"),
            }
        }
        Err(err) => check_error(&err, &["invalid_query"], "cursor"),
    }
}

fn yws(data: &[u8]) {
    // decode_yws_message catches yrs's panics (finding F4): tolerate them.
    let Ok(message) = tolerating_caught_panics(|| decode_yws_message(data)) else {
        return;
    };
    // The server acts on sync messages and relays awareness; auth and
    // custom messages are ignored (and yrs encodes a custom tag as one byte
    // but decodes it as a varint, so they need not round trip).
    if matches!(
        message,
        Message::Sync(_) | Message::Awareness(_) | Message::AwarenessQuery
    ) {
        let encoded = message.encode_v1();
        match tolerating_caught_panics(|| decode_yws_message(&encoded)) {
            Ok(again) => assert_eq!(again, message, "y-websocket message does not round trip"),
            Err(err) => panic!("re-encoded y-websocket message refused: {err}"),
        }
    }
    if let Message::Sync(SyncMessage::SyncStep1(sv)) = &message {
        // The route hands the state vector to the engine re-encoded.
        let encoded = sv.encode_v1();
        let decoded = tolerating_caught_panics(|| seqsync_engine::decode_state_vector(&encoded));
        assert_eq!(decoded.as_ref(), Ok(sv), "state vector does not round trip");
    }
}

fn awareness(data: &[u8]) {
    // Catches yrs's panics like the y-websocket decoder; what decodes
    // re-encodes to the same update.
    let Ok(update) = tolerating_caught_panics(|| decode_awareness_update(data)) else {
        return;
    };
    let encoded = update.encode_v1();
    match tolerating_caught_panics(|| decode_awareness_update(&encoded)) {
        Ok(again) => assert_eq!(again, update, "awareness update does not round trip"),
        Err(err) => panic!("re-encoded awareness update refused: {err}"),
    }
}

fuzz_target!(init: install_panic_hook(), |data: &[u8]| {
    awareness(data);
    batch(data);
    ack(data);
    // actix hands the route the raw query string, which is always UTF-8.
    cursor(&String::from_utf8_lossy(data));
    yws(data);
});
