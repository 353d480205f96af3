//! `GET /yws/{collection}/{doc}`: the y-websocket protocol, so an unmodified
//! `WebsocketProvider` from npm collaborates through seqsync.
//!
//! Each connection is a small loop over three sources:
//! - the client's messages: sync step 1 is answered with the engine's diff
//!   for the client's state vector; sync step 2 and updates are **pushed
//!   through the engine** like any HTTP push (durable, sequenced, visible to
//!   `changes` and `subscribe`); awareness is merged into the room's (one
//!   state per Yjs client id, newest clock wins, as y-protocols does) and
//!   what changed is relayed;
//! - the engine's subscription to this document (`subscribe_document`: the
//!   collection's actor hands it only this document's commits, so a room's
//!   cost does not grow with the other rooms of the collection): every
//!   committed change (from any client, HTTP or WebSocket) is sent as a sync
//!   update, starting exactly at the cursor of the state the connection
//!   started from, so nothing falls between the initial sync and the stream;
//! - the room's awareness relay (`rooms.rs`: the rooms are shared with the
//!   sync socket's presence; a newcomer gets every current state in one
//!   message, and a closed connection's states are removed for everyone at
//!   once, as y-websocket's reference server does).
//!
//! Pushes from one connection are pipelined (at most `MAX_PUSHES_IN_FLIGHT`)
//! so a fast typist is not held to one fsync per keystroke: concurrent pushes
//! share group commits, and Yjs tolerates their order.
//!
//! A connection is not sent back its own updates. (y-websocket's reference
//! server echoes every update to its sender too; the client ignores it, so
//! skipping it saves a frame, a write and a wakeup per keystroke.) A change's
//! payload is the pushed bytes themselves, so the connection remembers a
//! hash of each update it pushes (at most `MAX_OWN_UPDATES`) and skips the
//! change that carries them, whenever it arrives: before or after the push
//! is answered (the stream and the answer are woken on other threads, in
//! either order). A push answered as a no-op logs nothing, so its hash is
//! forgotten then. Skipping an identical update from another client would be
//! harmless: this client already has that content.
//!
//! Files: this one (the upgrade and what the connection starts from),
//! `connection.rs` (the loop) and `awareness.rs` (presence).

mod awareness;
mod connection;

use std::collections::HashMap;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason};
use connection::Connection;
use seqsync_engine::{ReadError, Seq, WriteError};
use yrs::updates::decoder::Decode;
use yrs::StateVector;

use crate::auth::{AccessRequest, Operation};
use crate::error::ApiError;
use crate::rooms::next_connection_id;
use crate::AppState;

/// Pushes of one connection awaiting their commit, at most.
const MAX_PUSHES_IN_FLIGHT: usize = 256;

/// Hashes of this connection's own pushes remembered for skipping their
/// echo; beyond this all are forgotten (their echoes would just be sent).
const MAX_OWN_UPDATES: usize = 1024;

/// Frame size of a large shared state sent in fragments.
const FRAGMENT_BYTES: usize = 64 << 10;

pub(crate) async fn connect(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (collection, doc) = path.into_inner();
    state.auth.authorize(
        &req,
        &AccessRequest::document(&collection, &doc, Operation::Subscribe),
    )?;
    // A reader syncs and receives live updates and awareness; its updates
    // are dropped (see `on_client_message`).
    let may_write = state
        .auth
        .authorize(
            &req,
            &AccessRequest::document(&collection, &doc, Operation::Write),
        )
        .is_ok();
    // A slot before any work: past `limits.max_connections` (in total or on
    // this collection) the upgrade is answered 503.
    let slot = state.connections.admit(&state.limits, &collection)?;
    let schema_version = crate::decode::decode_yws_schema(req.query_string())?;
    if let Some(Err(err)) = schema_version.map(|v| state.engine.check_client_schema(v)) {
        // A y-websocket client reconnects after a refused handshake and
        // never shows why; a socket closed with the reason says it.
        let (response, session, _incoming) = actix_ws::handle(&req, body)
            .map_err(|e| ApiError::bad_request("not_a_websocket", e.to_string()))?;
        let description = close_description(&err);
        tracing::warn!(%collection, %doc, error = %err, "y-websocket client at a refused schema version");
        actix_web::rt::spawn(async move {
            let _ = session
                .close(Some(CloseReason {
                    code: CloseCode::Policy,
                    description: Some(description),
                }))
                .await;
        });
        return Ok(response);
    }
    // Head first: if the document does not exist yet, nothing of it is ≤ head.
    let head = state.engine.changes(&collection, 0, 0, None).await?.head;
    // The state vector only: a joiner of a large document costs no
    // encoding and no decoding here.
    let (state_vector, cursor) = match state.engine.document_state_vector(&collection, &doc).await {
        Ok(found) => (
            StateVector::decode_v1(&found.state_vector).unwrap_or_default(),
            found.cursor,
        ),
        Err(ReadError::DocumentNotFound { .. }) => (StateVector::default(), head),
        Err(err) => return Err(err.into()),
    };
    let changes = state
        .engine
        .subscribe_document(&collection, &doc, cursor, None)?;
    let (response, session, incoming) =
        crate::limits::upgrade_bounded(&req, body, &state.limits).await?;
    let connection = Connection {
        state: state.clone(),
        key: (collection, doc),
        id: next_connection_id(),
        session: crate::limits::TimedSession::new(session, &state.limits),
        awareness_budget: crate::limits::AwarenessBudget::new(
            state.limits.awareness_messages_per_sec,
        ),
        parked_awareness: None,
        parked_due: tokio::time::Instant::now(),
        _slot: slot,
        own_updates: HashMap::new(),
        schema_version,
        may_write,
        author: crate::auth::subject_of(&req),
    };
    actix_web::rt::spawn(connection.run(incoming, changes, state_vector));
    Ok(response)
}

/// A push of this connection: the hash of its update and its seq (`None`:
/// a no-op), or why the connection closes.
type PushFuture = futures::future::BoxFuture<'static, Result<(u64, Option<Seq>), CloseReason>>;

/// The reason a socket closes for a refused write: the error's code, then
/// its message, cut to the 123 bytes a close frame can carry.
fn close_description(err: &WriteError) -> String {
    let mut text = format!("{}: {err}", err.code());
    if text.len() > MAX_CLOSE_REASON_BYTES {
        let mut end = MAX_CLOSE_REASON_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The longest reason a WebSocket close frame carries (125 bytes of payload
/// minus the 2-byte code).
const MAX_CLOSE_REASON_BYTES: usize = 123;

/// A hash of an update's bytes, to recognise this connection's own pushes.
fn hash_of(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// The y-websocket prefix of a sync step 2 message carrying `len` bytes:
/// message type (sync), sync type (step 2), and the length as a varint.
fn sync_step2_prefix(len: usize) -> Vec<u8> {
    let mut prefix = vec![0u8, 1u8];
    let mut rest = len as u64;
    loop {
        let byte = (rest & 0x7f) as u8;
        rest >>= 7;
        if rest == 0 {
            prefix.push(byte);
            return prefix;
        }
        prefix.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use yrs::sync::{Message, SyncMessage};
    use yrs::updates::encoder::Encode;

    use super::*;

    /// The shared full state is sent behind a hand-written prefix; with it,
    /// the message must be byte for byte what yrs encodes, at every varint
    /// length boundary.
    #[test]
    fn sync_step2_prefix_matches_the_yrs_encoding() {
        for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 2_097_152] {
            let payload = vec![7u8; len];
            let mut framed = sync_step2_prefix(len);
            framed.extend_from_slice(&payload);
            let encoded = Message::Sync(SyncMessage::SyncStep2(payload)).encode_v1();
            assert_eq!(framed, encoded, "length {len}");
        }
    }
}
