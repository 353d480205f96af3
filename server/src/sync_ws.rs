//! `GET /v1/collections/{c}/sync`: the collection sync socket
//! (`docs/PROTOCOL.md`, "The sync socket"; frames in
//! `seqsync_protocol::sync`).
//!
//! One WebSocket carries a client's whole conversation with a collection:
//! its pushes (answered only once durable), the collection's change stream
//! from its cursor (the engine's subscription: stored then live, no gap or
//! duplicate at the seam, bounded, a slow reader served from storage) and
//! its acks. A client with 500 documents needs one socket, not 500, and a
//! reconnect resumes from a cursor instead of re-syncing each document.
//!
//! The connection is one task looping over five sources, in this order of
//! priority:
//! - answers of pushes and acks in flight (a `FuturesUnordered`: pushes are
//!   pipelined, so a fast client shares group commits instead of paying one
//!   fsync per update; at most `MAX_PUSHES_IN_FLIGHT`, beyond which the
//!   socket is not read until answers go out);
//! - the client's frames;
//! - the change stream, several ready changes per `changes` frame;
//! - the presence rooms it joined (`presence.rs`);
//! - pings and the idle check.
//!
//! Why a client's own pushes are not skipped in its stream (unlike `/yws`):
//! the client's cursor and log checksum must cover every seq, so a change
//! left out would leave it unable to prove where it stands.
//!
//! Auth: the upgrade needs a token the server knows; what it may follow is
//! decided by the hello (the collection, or the documents it names: a
//! token for one document names that document). Each push is authorized
//! for its document, each ack for the collection; a refusal answers that
//! frame alone and the socket stays open.

use std::collections::HashSet;
use std::num::NonZeroUsize;

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use lru::LruCache;
use seqsync_actors::{PushOptions, StreamEvent, Subscription};
use seqsync_engine::{Change, Epoch, ReadError};
use seqsync_protocol::sync::{encode_changes, ChangeRef, ClientFrame, Hello, ServerFrame};
use seqsync_protocol::Hex64;

use crate::routes::epoch_hex;

use crate::auth::{AccessRequest, Operation};
use crate::error::ApiError;
use crate::presence::Presence;
use crate::AppState;

/// Pushes and acks of one socket awaiting their answer, at most; the
/// socket is not read while this many are in flight.
pub const MAX_PUSHES_IN_FLIGHT: usize = 256;
/// A hello's `after` that means "from the head" (2^53 − 1, the largest
/// varuint).
const FROM_HEAD: u64 = seqsync_protocol::sync::MAX_VARUINT;
/// Changes in one `changes` frame, at most.
const MAX_CHANGES_PER_FRAME: usize = 256;
/// A `changes` frame is closed once its payloads reach this (a single
/// larger change still goes alone).
const MAX_FRAME_PAYLOAD_BYTES: usize = 1 << 20;
/// Documents whose write permission a socket remembers; past this the least
/// recently asked is forgotten (a token check is a few microseconds).
const MAX_CACHED_PERMISSIONS: usize = 4096;

pub(crate) async fn connect(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let collection = path.into_inner();
    // A token the server does not know is refused at the upgrade; one that
    // covers only some documents is judged on the hello.
    if let Err(err) = state.auth.authorize(
        &req,
        &AccessRequest::collection(&collection, Operation::Subscribe),
    ) {
        if err.code() != "forbidden" {
            return Err(err);
        }
    }
    seqsync_engine::CollectionName::new(collection.as_str())
        .map_err(|e| ApiError::bad_request("invalid_name", e.to_string()))?;
    let slot = state.connections.admit(&state.limits, &collection)?;
    let (response, session, incoming) =
        crate::limits::upgrade_bounded(&req, body, &state.limits).await?;
    let connection = SyncConnection {
        session: crate::limits::TimedSession::new(session, &state.limits),
        state,
        req,
        collection,
        _slot: slot,
        peer: None,
        schema_version: None,
        docs: None,
        may_write: LruCache::new(
            NonZeroUsize::new(MAX_CACHED_PERMISSIONS).unwrap_or(NonZeroUsize::MIN),
        ),
        may_write_collection: false,
        through: 0,
        checksum: None,
        epoch: None,
    };
    actix_web::rt::spawn(connection.run(incoming));
    Ok(response)
}

/// What a push or ack in flight answers with.
type Answer = futures::future::LocalBoxFuture<'static, ServerFrame>;

struct SyncConnection {
    state: web::Data<AppState>,
    /// The upgrade request: its token authorizes every push and ack.
    req: HttpRequest,
    collection: String,
    /// Every send gives up after `limits.ws_send_timeout_ms`.
    session: crate::limits::TimedSession,
    /// Its place under `limits.max_connections`, given back on drop.
    _slot: crate::limits::ConnectionSlot,
    /// The hello's peer id (`None`: anonymous).
    peer: Option<String>,
    /// The hello's schema version (`None`: the server's).
    schema_version: Option<u32>,
    /// The hello's documents (`None`: the whole collection).
    docs: Option<HashSet<String>>,
    /// Documents whose write permission was checked.
    may_write: LruCache<String, bool>,
    /// Whether the token may write every document of the collection.
    may_write_collection: bool,
    /// The stream is complete through this seq ...
    through: u64,
    /// ... whose log checksum this is (`None`: not known, at 0).
    checksum: Option<u64>,
    /// The epoch the stream belongs to.
    epoch: Option<Epoch>,
}

/// How the connection ends: a last frame, then a close reason.
struct Ending {
    frame: Option<ServerFrame>,
    close: Option<CloseReason>,
}

impl Ending {
    fn quietly() -> Self {
        Ending {
            frame: None,
            close: None,
        }
    }

    /// An `error` frame, then close 1008 with the code.
    fn error(code: &str, message: impl Into<String>) -> Self {
        Ending {
            frame: Some(ServerFrame::Error {
                code: code.to_owned(),
                message: message.into(),
            }),
            close: Some(CloseReason {
                code: CloseCode::Policy,
                description: Some(code.to_owned()),
            }),
        }
    }
}

impl SyncConnection {
    async fn run(mut self, mut incoming: actix_ws::AggregatedMessageStream) {
        let mut liveness = crate::limits::Liveness::new(&self.state.limits);
        let ending = match self.handshake(&mut incoming, &mut liveness).await {
            Ok(changes) => self.serve(incoming, changes, liveness).await,
            Err(ending) => ending,
        };
        if let Some(frame) = ending.frame {
            let _ = self.session.binary(frame.encode()).await;
        }
        self.session.close(ending.close).await;
    }

    /// Waits for the hello, checks it, answers `welcome` and opens the
    /// stream; or says why not.
    async fn handshake(
        &mut self,
        incoming: &mut actix_ws::AggregatedMessageStream,
        liveness: &mut crate::limits::Liveness,
    ) -> Result<Subscription, Ending> {
        let hello = loop {
            tokio::select! {
                _ = liveness.ping.tick() => {
                    if let Some(reason) = liveness.idle() {
                        return Err(Ending { frame: None, close: Some(reason) });
                    }
                    if self.session.ping().await.is_err() {
                        return Err(Ending::quietly());
                    }
                }
                message = incoming.next() => {
                    liveness.heard();
                    match message {
                        Some(Ok(AggregatedMessage::Binary(bytes))) => match ClientFrame::decode(&bytes) {
                            Ok(ClientFrame::Hello(hello)) => break hello,
                            Ok(_) => {
                                crate::limits::refused("invalid_frame");
                                return Err(Ending::error("invalid_frame", "the first frame must be a hello"));
                            }
                            Err(err) => {
                                crate::limits::refused("invalid_frame");
                                return Err(Ending::error("invalid_frame", err.to_string()));
                            }
                        },
                        Some(Ok(AggregatedMessage::Ping(bytes))) => {
                            if self.session.pong(&bytes).await.is_err() {
                                return Err(Ending::quietly());
                            }
                        }
                        Some(Ok(AggregatedMessage::Pong(_))) => {}
                        Some(Ok(AggregatedMessage::Text(_))) => return Err(text_refused()),
                        Some(Ok(AggregatedMessage::Close(_))) | None => return Err(Ending::quietly()),
                        Some(Err(err)) => {
                            return Err(Ending { frame: None, close: Some(crate::limits::protocol_close(&err)) })
                        }
                    }
                }
            }
        };
        // The hello reads storage (the cursor checked against the log). A
        // database that stalls must not hold the socket, and every frame
        // behind the hello, without an answer: past the commit bound it is
        // `storage`, which clients take as "reconnect later".
        let bound_ms = self.state.limits.commit_timeout_ms;
        match tokio::time::timeout(crate::limits::millis(bound_ms), self.accept(hello)).await {
            Ok(accepted) => accepted,
            Err(_) => {
                crate::limits::refused("hello_timeout");
                Err(Ending::error(
                    "storage",
                    format!(
                        "the store did not answer the hello within {bound_ms} ms \
                         (limits.commit_timeout_ms); reconnect later"
                    ),
                ))
            }
        }
    }

    async fn accept(&mut self, mut hello: Hello) -> Result<Subscription, Ending> {
        let engine = self.state.engine.clone();
        let collection = self.collection.clone();
        // What the socket may follow: the collection, or the named documents.
        let follows = if hello.docs.is_empty() {
            vec![AccessRequest::collection(&collection, Operation::Subscribe)]
        } else {
            hello
                .docs
                .iter()
                .map(|doc| AccessRequest::document(&collection, doc, Operation::Subscribe))
                .collect()
        };
        for access in &follows {
            if let Err(err) = self.state.auth.authorize(&self.req, access) {
                crate::limits::refused("forbidden");
                return Err(Ending::error(err.code(), err.to_string()));
            }
        }
        for doc in &hello.docs {
            if let Err(err) = seqsync_engine::DocId::new(doc.as_str()) {
                return Err(Ending::error("invalid_name", err.to_string()));
            }
        }
        if !hello.peer.is_empty() {
            if let Err(err) = seqsync_engine::PeerId::new(hello.peer.as_str()) {
                return Err(Ending::error("invalid_name", err.to_string()));
            }
        }
        if hello.schema_version != 0 {
            if let Err(err) = engine.check_client_schema(hello.schema_version) {
                crate::limits::refused("schema");
                return Err(Ending::error(err.code(), err.to_string()));
            }
        }
        self.may_write_collection = self
            .state
            .auth
            .authorize(
                &self.req,
                &AccessRequest::collection(&collection, Operation::Write),
            )
            .is_ok();
        let epoch = hello.epoch.map(|e| Epoch(e.0));
        // `after` = 2^53 − 1: from the head, whatever it is (a client that
        // only pushes, or follows only what comes next).
        if hello.after == FROM_HEAD {
            let head = match engine.changes(&collection, 0, 0, epoch).await {
                Ok(page) => page.head,
                Err(ReadError::Reset {
                    epoch: server_epoch,
                    head,
                }) => {
                    hello.after = 0;
                    return Err(reset_ending(&hello, epoch, server_epoch, head));
                }
                Err(err) => {
                    let api = ApiError::from(err);
                    return Err(Ending::error(api.code(), api.to_string()));
                }
            };
            hello.after = head;
            hello.checksum = None;
        }
        let checksum = hello.checksum.map(|c| c.0);
        // The cursor checked against storage: its epoch, its place within
        // the head, and the checksum of the change at it.
        let page = match engine
            .changes_verified(&collection, hello.after, 0, epoch, checksum)
            .await
        {
            Ok(page) => page,
            Err(ReadError::Reset {
                epoch: server_epoch,
                head,
            }) => {
                return Err(reset_ending(&hello, epoch, server_epoch, head));
            }
            Err(err) => {
                let api = ApiError::from(err);
                return Err(Ending::error(api.code(), api.to_string()));
            }
        };
        self.peer = (!hello.peer.is_empty()).then(|| hello.peer.clone());
        self.schema_version = (hello.schema_version != 0).then_some(hello.schema_version);
        self.docs = (!hello.docs.is_empty()).then(|| hello.docs.iter().cloned().collect());
        self.through = hello.after;
        self.epoch = page.epoch;
        // At the head the page says the head's checksum; elsewhere the
        // client's (checked) or, until the first change, none.
        self.checksum = if hello.after > 0 && page.head == hello.after {
            Some(page.cursor_checksum)
        } else {
            checksum
        };
        let welcome = ServerFrame::Welcome {
            epoch: epoch_hex(page.epoch),
            head: page.head,
            schema_version: engine.schema_version(),
            max_pushes_in_flight: MAX_PUSHES_IN_FLIGHT as u64,
        };
        // The whole collection is followed even for a document list: the
        // stream's `through` and checksums must cover every seq.
        let changes = match engine.subscribe(&collection, hello.after, page.epoch) {
            Ok(changes) => changes,
            Err(err) => {
                let api = ApiError::from(err);
                return Err(Ending::error(api.code(), api.to_string()));
            }
        };
        if self.session.binary(welcome.encode()).await.is_err() {
            return Err(Ending::quietly());
        }
        Ok(changes)
    }

    async fn serve(
        &mut self,
        mut incoming: actix_ws::AggregatedMessageStream,
        mut changes: Subscription,
        mut liveness: crate::limits::Liveness,
    ) -> Ending {
        let mut answers: FuturesUnordered<Answer> = FuturesUnordered::new();
        // Dropped when this returns, which leaves every presence room.
        let mut presence = Presence::new(self.state.clone(), self.collection.clone());
        let ending = loop {
            let next = tokio::select! {
                biased;
                Some(answer) = answers.next(), if !answers.is_empty() => self.send(answer.encode()).await,
                message = incoming.next(), if answers.len() < MAX_PUSHES_IN_FLIGHT => {
                    liveness.heard();
                    match message {
                        Some(Ok(AggregatedMessage::Binary(bytes))) => match self.on_frame(bytes, &mut answers, &mut presence) {
                            Ok(Some(frame)) => self.send(frame).await,
                            Ok(None) => Ok(()),
                            Err(ending) => Err(ending),
                        },
                        Some(Ok(AggregatedMessage::Ping(bytes))) => {
                            if self.session.pong(&bytes).await.is_err() { Err(Ending::quietly()) } else { Ok(()) }
                        }
                        Some(Ok(AggregatedMessage::Pong(_))) => Ok(()),
                        Some(Ok(AggregatedMessage::Text(_))) => Err(text_refused()),
                        Some(Ok(AggregatedMessage::Close(_))) | None => Err(Ending::quietly()),
                        Some(Err(err)) => Err(Ending { frame: None, close: Some(crate::limits::protocol_close(&err)) }),
                    }
                }
                event = changes.next() => self.on_stream(event, &mut changes).await,
                frame = presence.next_frame() => self.send(frame).await,
                _ = liveness.ping.tick() => match liveness.idle() {
                    Some(reason) => Err(Ending { frame: None, close: Some(reason) }),
                    None if self.session.ping().await.is_err() => Err(Ending::quietly()),
                    None => Ok(()),
                },
            };
            if let Err(ending) = next {
                break ending;
            }
        };
        // Pushes already read run to their end (their answers may not reach
        // anyone, but a commit is not cut off half-way for no reason).
        while answers.next().await.is_some() {}
        ending
    }

    /// Sends one frame; a socket that is gone ends the connection.
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), Ending> {
        match self.session.binary(frame).await {
            Ok(()) => Ok(()),
            Err(_) => Err(Ending::quietly()),
        }
    }

    /// A client frame after the hello; what to send at once, if anything
    /// (a presence room's states when the socket joins it).
    fn on_frame(
        &mut self,
        bytes: Bytes,
        answers: &mut FuturesUnordered<Answer>,
        presence: &mut Presence,
    ) -> Result<Option<Vec<u8>>, Ending> {
        let frame = match ClientFrame::decode(&bytes) {
            Ok(frame) => frame,
            Err(err) => {
                crate::limits::refused("invalid_frame");
                return Err(Ending::error("invalid_frame", err.to_string()));
            }
        };
        match frame {
            ClientFrame::Hello(_) => {
                crate::limits::refused("invalid_frame");
                Err(Ending::error("invalid_frame", "a second hello"))
            }
            ClientFrame::Push { id, doc, update } => {
                self.push(id, vec![(doc, update)], answers);
                Ok(None)
            }
            ClientFrame::PushBatch { id, updates } => {
                self.push(id, updates, answers);
                Ok(None)
            }
            ClientFrame::Ack { seq } => {
                self.ack(seq, answers);
                Ok(None)
            }
            ClientFrame::Awareness { doc, update } => presence
                .on_awareness(&self.req, doc, &update)
                .map_err(|refusal| Ending::error(refusal.code, refusal.message)),
            ClientFrame::Leave { doc } => {
                presence.on_leave(&doc);
                Ok(None)
            }
        }
    }

    /// Whether the token may write `doc`.
    fn may_write(&mut self, doc: &str) -> bool {
        if self.may_write_collection {
            return true;
        }
        if let Some(known) = self.may_write.get(doc) {
            return *known;
        }
        let allowed = self
            .state
            .auth
            .authorize(
                &self.req,
                &AccessRequest::document(&self.collection, doc, Operation::Write),
            )
            .is_ok();
        self.may_write.put(doc.to_owned(), allowed);
        allowed
    }

    fn push(
        &mut self,
        id: u64,
        updates: Vec<(String, Vec<u8>)>,
        answers: &mut FuturesUnordered<Answer>,
    ) {
        if let Some(doc) = updates
            .iter()
            .map(|(doc, _)| doc.as_str())
            .find(|doc| !self.may_write(doc))
        {
            crate::limits::refused("read_only");
            let message = format!("this token may not write the document {doc:?}");
            answers.push(Box::pin(futures::future::ready(ServerFrame::PushError {
                id,
                code: "forbidden".to_owned(),
                message,
            })));
            return;
        }
        let engine = self.state.engine.clone();
        let collection = self.collection.clone();
        let options = PushOptions {
            origin: self.peer.clone(),
            schema_version: self.schema_version,
            // The upgrade request's token, authorized at connect.
            author: crate::auth::subject_of(&self.req),
        };
        // Bounded like an HTTP push: a database that stalls answers
        // `commit_timeout` (retryable) instead of leaving the client
        // waiting on a socket that looks alive.
        let commit_timeout_ms = self.state.limits.commit_timeout_ms;
        answers.push(Box::pin(async move {
            let pushed = engine.push_batch(&collection, updates, options);
            match crate::bounded_write(commit_timeout_ms, pushed).await {
                Ok(outcome) => ServerFrame::Pushed {
                    id,
                    head: outcome.head,
                    seqs: outcome.seqs,
                },
                Err(api) => ServerFrame::PushError {
                    id,
                    code: api.code().to_owned(),
                    message: api.to_string(),
                },
            }
        }));
    }

    fn ack(&mut self, seq: u64, answers: &mut FuturesUnordered<Answer>) {
        let refusal = move |code: &str, message: String| ServerFrame::AckError {
            seq,
            code: code.to_owned(),
            message,
        };
        let Some(peer) = self.peer.clone() else {
            answers.push(Box::pin(futures::future::ready(refusal(
                "invalid_name",
                "an ack needs a peer id in the hello".to_owned(),
            ))));
            return;
        };
        if let Err(err) = self.state.auth.authorize(
            &self.req,
            &AccessRequest::collection(&self.collection, Operation::Ack),
        ) {
            crate::limits::refused("forbidden");
            let frame = refusal(err.code(), err.to_string());
            answers.push(Box::pin(futures::future::ready(frame)));
            return;
        }
        let engine = self.state.engine.clone();
        let collection = self.collection.clone();
        let commit_timeout_ms = self.state.limits.commit_timeout_ms;
        answers.push(Box::pin(async move {
            let acked = engine.ack(&collection, &peer, seq);
            match crate::bounded_write(commit_timeout_ms, acked).await {
                Ok(acked) => ServerFrame::Acked { seq: acked },
                Err(api) => refusal(api.code(), api.to_string()),
            }
        }));
    }

    /// The next stream event, with whatever else is ready at once, sent as
    /// one `changes` frame (and an `up_to_date` when the stream caught up).
    async fn on_stream(
        &mut self,
        first: Option<Result<StreamEvent, ReadError>>,
        changes: &mut Subscription,
    ) -> Result<(), Ending> {
        let mut batch: Vec<Change> = Vec::new();
        let mut batch_bytes = 0usize;
        let mut next = first;
        let mut up_to_date = None;
        loop {
            match next {
                Some(Ok(StreamEvent::Change(change))) => {
                    debug_assert!(change.seq > self.through, "the stream went backwards");
                    self.through = change.seq;
                    self.checksum = Some(change.log_checksum);
                    let wanted = self
                        .docs
                        .as_ref()
                        .is_none_or(|docs| docs.contains(change.doc.as_str()));
                    if wanted {
                        batch_bytes += change.payload.len();
                        batch.push(change);
                    }
                }
                Some(Ok(StreamEvent::UpToDate { head })) => {
                    up_to_date = Some(head);
                    break;
                }
                Some(Err(ReadError::Reset { epoch, head })) => {
                    self.send_changes(&batch).await?;
                    let hello = Hello {
                        after: self.through,
                        epoch: epoch_hex(self.epoch),
                        ..Hello::default()
                    };
                    return Err(reset_ending(&hello, self.epoch, epoch, head));
                }
                Some(Err(err)) => {
                    self.send_changes(&batch).await?;
                    let api = ApiError::from(err);
                    return Err(Ending::error(api.code(), api.to_string()));
                }
                None => {
                    self.send_changes(&batch).await?;
                    return Err(Ending::error(
                        "shutting_down",
                        "the server is shutting down",
                    ));
                }
            }
            if batch.len() >= MAX_CHANGES_PER_FRAME || batch_bytes >= MAX_FRAME_PAYLOAD_BYTES {
                break;
            }
            match changes.next().now_or_never() {
                Some(event) => next = event,
                None => break,
            }
        }
        self.send_changes(&batch).await?;
        if let Some(head) = up_to_date {
            // The head's checksum is the last change's when the stream
            // stands there (it always does once caught up).
            let checksum = (head == self.through).then_some(self.checksum).flatten();
            let frame = ServerFrame::UpToDate {
                head,
                checksum: checksum.map(Hex64),
            };
            if self.session.binary(frame.encode()).await.is_err() {
                return Err(Ending::quietly());
            }
        }
        Ok(())
    }

    /// One `changes` frame through the current `through`, unless the batch
    /// is empty (a filtered stream's `through` moves with `up_to_date`).
    async fn send_changes(&mut self, batch: &[Change]) -> Result<(), Ending> {
        if batch.is_empty() {
            return Ok(());
        }
        let refs: Vec<ChangeRef<'_>> = batch
            .iter()
            .map(|c| ChangeRef {
                seq: c.seq,
                doc: c.doc.as_str(),
                kind: crate::routes::change_kind(c.kind),
                schema_version: c.schema_version,
                origin: c.origin.as_ref().map(|p| p.as_str()),
                payload: &c.payload,
            })
            .collect();
        let frame = encode_changes(self.through, self.checksum.map(Hex64), &refs);
        match self.session.binary(frame).await {
            Ok(()) => Ok(()),
            Err(_) => Err(Ending::quietly()),
        }
    }
}

/// Sync socket frames are binary; a text message closes with 1003.
fn text_refused() -> Ending {
    crate::limits::refused("invalid_frame");
    Ending {
        frame: None,
        close: Some(CloseReason {
            code: CloseCode::Unsupported,
            description: Some("sync socket frames are binary".to_owned()),
        }),
    }
}

/// A `reset` frame saying why the cursor of `hello` (in `client_epoch`)
/// does not belong to the server's history, then close 1000.
fn reset_ending(
    hello: &Hello,
    client_epoch: Option<Epoch>,
    server_epoch: Option<Epoch>,
    head: u64,
) -> Ending {
    let reason = if client_epoch.is_some() && client_epoch != server_epoch {
        "foreign_epoch"
    } else if hello.after > head {
        "cursor_beyond_head"
    } else {
        "history_replaced"
    };
    Ending {
        frame: Some(ServerFrame::Reset {
            reason: reason.to_owned(),
            epoch: epoch_hex(server_epoch),
            head,
        }),
        close: Some(CloseReason {
            code: CloseCode::Normal,
            description: Some(format!("reset: {reason}")),
        }),
    }
}
