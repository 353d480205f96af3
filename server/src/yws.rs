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

use std::collections::HashMap;

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Item};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use seqsync_actors::{PushOptions, StreamEvent, Subscription};
use seqsync_engine::{ChangeKind, ReadError, Seq, StorageError, WriteError};
use tokio::sync::broadcast;
use yrs::sync::awareness::AwarenessUpdate;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::StateVector;

use crate::auth::{AccessRequest, Operation};
use crate::error::ApiError;
use crate::rooms::{next_connection_id, RoomKey};
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

struct Connection {
    state: web::Data<AppState>,
    key: RoomKey,
    id: u64,
    /// Every send gives up after `limits.ws_send_timeout_ms` (a client
    /// that stopped reading is closed as `slow_reader`).
    session: crate::limits::TimedSession,
    /// This connection's awareness messages per second.
    awareness_budget: crate::limits::AwarenessBudget,
    /// The newest awareness states over the budget, relayed when it
    /// refills.
    parked_awareness: Option<AwarenessUpdate>,
    /// When the budget has a token for `parked_awareness` again: a fixed
    /// deadline, so a busy room (other branches of the loop firing) cannot
    /// postpone the relay.
    parked_due: tokio::time::Instant,
    /// Its place under `limits.max_connections`, given back on drop.
    _slot: crate::limits::ConnectionSlot,
    /// Hashes of this connection's pushes whose change is still to come
    /// (with a count, for the same bytes pushed twice).
    own_updates: HashMap<u64, u32>,
    /// The client's schema version (`?schema=N`), given with every push.
    schema_version: Option<u32>,
    /// Whether the client's token may write the document; a read-only
    /// connection's updates are dropped with a warning.
    may_write: bool,
}

enum Step {
    Continue,
    Close(Option<CloseReason>),
}

impl Connection {
    /// Notes an update this connection is about to push.
    fn remember_own(&mut self, hash: u64) {
        if self.own_updates.len() >= MAX_OWN_UPDATES {
            self.own_updates.clear();
        }
        *self.own_updates.entry(hash).or_default() += 1;
    }

    /// Takes back one note of `hash`: its change arrived, or it logged
    /// nothing. Whether there was one.
    fn forget_own(&mut self, hash: u64) -> bool {
        match self.own_updates.get_mut(&hash) {
            Some(count) if *count > 1 => {
                *count -= 1;
                true
            }
            Some(_) => {
                self.own_updates.remove(&hash);
                true
            }
            None => false,
        }
    }

    async fn run(
        mut self,
        mut incoming: actix_ws::AggregatedMessageStream,
        mut changes: Subscription,
        server_state_vector: StateVector,
    ) {
        let (mut relay, awareness) = self.state.rooms.join(&self.key);
        let mut pushes: FuturesUnordered<PushFuture> = FuturesUnordered::new();
        let hello = Message::Sync(SyncMessage::SyncStep1(server_state_vector)).encode_v1();
        let mut ok = self.session.binary(hello).await.is_ok();
        if let Some(everyone) = awareness {
            ok = ok && self.session.binary(everyone).await.is_ok();
        }
        if !ok {
            drop(relay);
            self.state.rooms.leave(&self.key, self.id);
            return;
        }
        let mut liveness = crate::limits::Liveness::new(&self.state.limits);
        let close = loop {
            let step = tokio::select! {
                // `biased`: the branches are polled in this order (see the
                // comment before `changes`).
                biased;
                // Parked awareness goes out once the budget has a token
                // again (one token's time after it was parked).
                _ = tokio::time::sleep_until(self.parked_due), if self.parked_awareness.is_some() => {
                    if self.awareness_budget.allow(std::time::Instant::now()) {
                        if let Some(parked) = self.parked_awareness.take() {
                            self.state.rooms.publish(&self.key, self.id, parked);
                        }
                    } else {
                        self.parked_due = tokio::time::Instant::now() + self.awareness_budget.refill_interval();
                    }
                    Step::Continue
                }
                _ = liveness.ping.tick() => match liveness.idle() {
                    Some(reason) => Step::Close(Some(reason)),
                    None if self.session.ping().await.is_err() => Step::Close(None),
                    None => Step::Continue,
                },
                Some(result) = pushes.next(), if !pushes.is_empty() => {
                    match result {
                        Ok((hash, seq)) => {
                            if seq.is_none() {
                                self.forget_own(hash); // logged nothing
                            }
                            Step::Continue
                        }
                        Err(reason) => Step::Close(Some(reason)),
                    }
                }
                message = incoming.next(), if pushes.len() < MAX_PUSHES_IN_FLIGHT => {
                    liveness.heard();
                    match message {
                        Some(Ok(AggregatedMessage::Binary(bytes))) => self.on_client_message(bytes, &mut pushes).await,
                        Some(Ok(AggregatedMessage::Ping(bytes))) => {
                            if self.session.pong(&bytes).await.is_err() { Step::Close(None) } else { Step::Continue }
                        }
                        Some(Ok(AggregatedMessage::Text(_))) => Step::Close(Some(CloseReason {
                            code: CloseCode::Unsupported,
                            description: Some("y-websocket messages are binary".to_owned()),
                        })),
                        Some(Ok(AggregatedMessage::Pong(_))) => Step::Continue,
                        Some(Ok(AggregatedMessage::Close(_))) | None => Step::Close(None),
                        Some(Err(err)) => Step::Close(Some(crate::limits::protocol_close(&err))),
                    }
                }
                // After the client's own messages: a busy room's traffic
                // must not hold back what this client sends (a client that
                // floods only delays its own view).
                event = changes.next() => self.on_change(event).await,
                relayed = relay.recv() => match relayed {
                    // Its own awareness too, as the reference server does:
                    // a provider that hears nothing for 30 s reconnects,
                    // and one alone in an idle room hears only the echo of
                    // its 15-second renewal.
                    Ok(message) => {
                        if self.session.binary(message).await.is_err() { Step::Close(None) } else { Step::Continue }
                    }
                    // Too slow to take every relayed message: the room's
                    // merged state (removals included) replaces what was
                    // missed.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let everyone = self.state.rooms.current(&self.key, true);
                        self.send_awareness(everyone).await
                    }
                    Err(broadcast::error::RecvError::Closed) => Step::Continue,
                },
            };
            if let Step::Close(reason) = step {
                break reason;
            }
        };
        // Let pushes already sent finish: they are acknowledged to nobody,
        // but they must not be cut off half-way for no reason.
        while pushes.next().await.is_some() {}
        drop(relay);
        self.state.rooms.leave(&self.key, self.id);
        let _ = self.session.close(close).await;
    }

    async fn on_client_message(
        &mut self,
        bytes: Bytes,
        pushes: &mut FuturesUnordered<PushFuture>,
    ) -> Step {
        let message = match crate::decode::decode_yws_message(&bytes) {
            Ok(message) => message,
            Err(err) => {
                return Step::Close(Some(CloseReason {
                    code: CloseCode::Protocol,
                    description: Some(format!("not a y-websocket message: {err}")),
                }))
            }
        };
        let (collection, doc) = &self.key;
        match message {
            Message::Sync(SyncMessage::SyncStep1(sv)) if sv.is_empty() => {
                // A client with nothing (a joiner): the full state, encoded
                // once per version and shared by every joiner.
                match self.state.engine.document_shared(collection, doc).await {
                    Ok(shared) => {
                        if self.send_shared_state(shared.update).await {
                            Step::Continue
                        } else {
                            Step::Close(None)
                        }
                    }
                    Err(ReadError::DocumentNotFound { .. }) => {
                        let reply =
                            Message::Sync(SyncMessage::SyncStep2(yrs::Update::EMPTY_V1.to_vec()))
                                .encode_v1();
                        if self.session.binary(reply).await.is_err() {
                            return Step::Close(None);
                        }
                        Step::Continue
                    }
                    Err(err) => {
                        tracing::warn!(%collection, %doc, error = %err, "y-websocket sync step 1 failed");
                        Step::Close(Some(CloseReason {
                            code: CloseCode::Error,
                            description: Some(err.code().to_owned()),
                        }))
                    }
                }
            }
            Message::Sync(SyncMessage::SyncStep1(sv)) => {
                let diff = match self
                    .state
                    .engine
                    .recover(collection, doc, &sv.encode_v1())
                    .await
                {
                    Ok(recovery) => recovery.diff,
                    Err(ReadError::DocumentNotFound { .. }) => yrs::Update::EMPTY_V1.to_vec(),
                    Err(err) => {
                        tracing::warn!(%collection, %doc, error = %err, "y-websocket sync step 1 failed");
                        return Step::Close(Some(CloseReason {
                            code: CloseCode::Error,
                            description: Some(err.code().to_owned()),
                        }));
                    }
                };
                let reply = Message::Sync(SyncMessage::SyncStep2(diff)).encode_v1();
                if self.session.binary(reply).await.is_err() {
                    return Step::Close(None);
                }
                Step::Continue
            }
            Message::Sync(SyncMessage::SyncStep2(update))
            | Message::Sync(SyncMessage::Update(update))
                if !self.may_write =>
            {
                // Read-only: not stored, not relayed. Dropped rather than
                // closed: a y-websocket provider reconnects after a close
                // and would loop; this way a reader keeps receiving.
                if !update.is_empty() && update != [0, 0] {
                    tracing::warn!(collection = %collection, doc = %doc, bytes = update.len(), "update from a read-only y-websocket connection dropped");
                    metrics::counter!("seqsync_refused_total", "reason" => "read_only")
                        .increment(1);
                }
                Step::Continue
            }
            Message::Sync(SyncMessage::SyncStep2(update))
            | Message::Sync(SyncMessage::Update(update)) => {
                let engine = self.state.engine.clone();
                let (collection, doc) = (collection.clone(), doc.clone());
                let hash = hash_of(&update);
                self.remember_own(hash);
                let options = PushOptions {
                    origin: None,
                    schema_version: self.schema_version,
                };
                let token = self.state.engine.config().server.write_token.clone();
                pushes.push(Box::pin(async move {
                    let schema_version = options.schema_version;
                    match engine.push(&collection, &doc, update.clone(), options).await {
                        Ok(outcome) => Ok((hash, outcome.seq)),
                        // Several nodes on one database: this node does not
                        // own the collection, so the update goes to the one
                        // that does; its commit comes back to this room
                        // through the commit watcher like any other.
                        Err(WriteError::Storage(StorageError::NotOwner { owner, .. }))
                            if owner.starts_with("http://") || owner.starts_with("https://") =>
                        {
                            let forwarded = crate::forward::push_to_owner(
                                owner,
                                collection.clone(),
                                doc.clone(),
                                update,
                                schema_version,
                                token,
                            )
                            .await;
                            match forwarded {
                                Ok(seq) => Ok((hash, seq)),
                                Err(reason) => {
                                    tracing::warn!(%collection, %doc, error = %reason, "y-websocket push forwarded to the owner failed");
                                    Err(CloseReason {
                                        code: CloseCode::Error,
                                        description: Some(format!("not_owner: {reason}").chars().take(MAX_CLOSE_REASON_BYTES).collect()),
                                    })
                                }
                            }
                        }
                        Err(err) => {
                            tracing::warn!(%collection, %doc, error = %err, "y-websocket push refused");
                            Err(CloseReason {
                                code: CloseCode::Error,
                                description: Some(close_description(&err)),
                            })
                        }
                    }
                }));
                Step::Continue
            }
            Message::Awareness(update)
                if !self.awareness_budget.allow(std::time::Instant::now()) =>
            {
                // Over `limits.awareness_messages_per_sec`: not relayed
                // now. The newest state per client is parked (bounded by
                // the room's client limit) and relayed once the budget
                // refills, so a fast typist's last cursor still arrives;
                // the states in between are dropped and counted.
                crate::limits::refused("awareness_rate");
                match &mut self.parked_awareness {
                    Some(parked) => parked.clients.extend(update.clients),
                    None => {
                        self.parked_awareness = Some(update);
                        self.parked_due =
                            tokio::time::Instant::now() + self.awareness_budget.refill_interval();
                    }
                }
                Step::Continue
            }
            Message::Awareness(update) => {
                self.state.rooms.publish(&self.key, self.id, update);
                Step::Continue
            }
            Message::AwarenessQuery => {
                let everyone = self.state.rooms.current(&self.key, false);
                self.send_awareness(everyone).await
            }
            Message::Auth(_) | Message::Custom(_, _) => Step::Continue,
        }
    }

    /// Sends an awareness message if there is one; closes if the
    /// connection is gone.
    async fn send_awareness(&mut self, message: Option<Bytes>) -> Step {
        let Some(message) = message else {
            return Step::Continue;
        };
        if self.session.binary(message).await.is_err() {
            Step::Close(None)
        } else {
            Step::Continue
        }
    }

    /// Sends a shared full state as one sync step 2 message, fragmented in
    /// frames of `FRAGMENT_BYTES` that borrow the shared bytes. One frame of
    /// the whole state would be copied whole into a fresh buffer per
    /// connection (150 joiners of a 20 MB document: 3 GB of new pages, half
    /// the server's time in page faults); fragments keep each connection's
    /// buffer small and reused, and the session's bounded queue paces them
    /// to the socket. Returns false if the connection is gone.
    async fn send_shared_state(&mut self, state: std::sync::Arc<[u8]>) -> bool {
        let len = state.len();
        let body = Bytes::from_owner(state);
        let prefix = sync_step2_prefix(len);
        if len <= FRAGMENT_BYTES {
            let mut whole = prefix;
            whole.extend_from_slice(&body);
            return self.session.binary(whole).await.is_ok();
        }
        if self
            .session
            .continuation(Item::FirstBinary(prefix.into()))
            .await
            .is_err()
        {
            return false;
        }
        let mut at = 0;
        while at < len {
            let end = (at + FRAGMENT_BYTES).min(len);
            let piece = body.slice(at..end);
            let item = if end == len {
                Item::Last(piece)
            } else {
                Item::Continue(piece)
            };
            if self.session.continuation(item).await.is_err() {
                return false;
            }
            at = end;
        }
        true
    }

    async fn on_change(&mut self, event: Option<Result<StreamEvent, ReadError>>) -> Step {
        match event {
            Some(Ok(StreamEvent::Change(change)))
                if change.kind == ChangeKind::Update
                    && self.forget_own(hash_of(&change.payload)) =>
            {
                Step::Continue
            }
            Some(Ok(StreamEvent::Change(change))) => match change.kind {
                ChangeKind::Delete => Step::Close(Some(CloseReason {
                    code: CloseCode::Normal,
                    description: Some("document deleted".to_owned()),
                })),
                _ => {
                    let message = Message::Sync(SyncMessage::Update(change.payload)).encode_v1();
                    if self.session.binary(message).await.is_err() {
                        Step::Close(None)
                    } else {
                        Step::Continue
                    }
                }
            },
            Some(Ok(_)) => Step::Continue,
            Some(Err(err)) => Step::Close(Some(CloseReason {
                code: CloseCode::Error,
                description: Some(err.code().to_owned()),
            })),
            None => Step::Close(None),
        }
    }
}

#[cfg(test)]
mod tests {
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
