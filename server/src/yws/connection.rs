//! One `/yws` connection: a loop over the client's messages, the
//! document's committed changes and the room's awareness relay.
//!
//! The loop is `biased`: the client's own messages are served before the
//! room's traffic, so a busy room only delays what this client sees, never
//! what it sends. Sync messages are answered from the engine (a joiner gets
//! the shared encoding of the whole state, in fragments), updates are pushed
//! through the engine (pipelined, at most `MAX_PUSHES_IN_FLIGHT`), and the
//! document's changes come back as sync updates, except this client's own
//! (remembered by hash). Awareness is `awareness.rs`.

use std::collections::HashMap;

use actix_web::web;
use actix_web::web::Bytes;
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Item};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use seqsync_actors::{PushOptions, StreamEvent, Subscription};
use seqsync_engine::{ChangeKind, ReadError, StorageError, WriteError};
use yrs::sync::awareness::AwarenessUpdate;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::StateVector;

use crate::rooms::RoomKey;
use crate::AppState;

use super::{
    close_description, hash_of, sync_step2_prefix, PushFuture, FRAGMENT_BYTES,
    MAX_CLOSE_REASON_BYTES, MAX_OWN_UPDATES, MAX_PUSHES_IN_FLIGHT,
};

pub(super) struct Connection {
    pub(super) state: web::Data<AppState>,
    pub(super) key: RoomKey,
    pub(super) id: u64,
    /// Every send gives up after `limits.ws_send_timeout_ms` (a client
    /// that stopped reading is closed as `slow_reader`).
    pub(super) session: crate::limits::TimedSession,
    /// This connection's awareness messages per second.
    pub(super) awareness_budget: crate::limits::AwarenessBudget,
    /// The newest awareness states over the budget, relayed when it
    /// refills.
    pub(super) parked_awareness: Option<AwarenessUpdate>,
    /// When the budget has a token for `parked_awareness` again: a fixed
    /// deadline, so a busy room (other branches of the loop firing) cannot
    /// postpone the relay.
    pub(super) parked_due: tokio::time::Instant,
    /// Its place under `limits.max_connections`, given back on drop.
    pub(super) _slot: crate::limits::ConnectionSlot,
    /// Hashes of this connection's pushes whose change is still to come
    /// (with a count, for the same bytes pushed twice).
    pub(super) own_updates: HashMap<u64, u32>,
    /// The client's schema version (`?schema=N`), given with every push.
    pub(super) schema_version: Option<u32>,
    /// Whether the client's token may write the document; a read-only
    /// connection's updates are dropped with a warning.
    pub(super) may_write: bool,
    /// Its token's subject, recorded as the author of every update it
    /// pushes.
    pub(super) author: Option<String>,
}

pub(super) enum Step {
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

    pub(super) async fn run(
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
                _ = tokio::time::sleep_until(self.parked_due), if self.parked_awareness.is_some() => self.relay_parked(),
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
                relayed = relay.recv() => self.on_relayed(relayed).await,
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
                    author: self.author.clone(),
                };
                let token = self.state.server.write_token.clone();
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
            Message::Awareness(update) => self.on_awareness(update),
            Message::AwarenessQuery => {
                let everyone = self.state.rooms.current(&self.key, false);
                self.send_awareness(everyone).await
            }
            Message::Auth(_) | Message::Custom(_, _) => Step::Continue,
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
