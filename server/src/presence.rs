//! Presence on the sync socket: Yjs awareness per document, in the same
//! rooms as `/yws` (`docs/PROTOCOL.md`, "Presence").
//!
//! Why the same rooms: an app moving from `WebsocketProvider` to
//! `@seqsync/client` has both kinds of client open at once for a while,
//! and people on either must see each other's cursors. So a sync socket is
//! one more connection of each document's room ([`crate::rooms::Rooms`]):
//! the same merge rule (one state per Yjs client id, newest clock wins),
//! the same newcomer snapshot, the same removal of a connection's states
//! when it goes.
//!
//! A socket joins a document's room with its first `awareness` frame for
//! it, and leaves with `leave` or when it closes. Each joined room's relay
//! is a `broadcast` receiver awaited in a [`FuturesUnordered`] (one future
//! per room, armed again after each message), so a socket in 50 rooms
//! costs nothing while they are quiet. Leaving aborts that room's future;
//! the receiver is dropped when the aborted future is next polled, and the
//! room is forgotten then if nobody else is in it.
//!
//! Limits: at most [`MAX_ROOMS_PER_SOCKET`] rooms per socket; awareness
//! frames beyond `limits.awareness_messages_per_sec` are parked (newest
//! state per client, at most [`MAX_PARKED_CLIENTS`] per document) and
//! published when the budget refills, as `/yws` does.

use std::collections::{HashMap, HashSet};

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest};
use futures::future::{AbortHandle, Abortable, LocalBoxFuture};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use seqsync_protocol::sync::ServerFrame;
use tokio::sync::broadcast;
use yrs::sync::awareness::AwarenessUpdate;

use crate::auth::{AccessRequest, Operation};
use crate::limits::AwarenessBudget;
use crate::rooms::{awareness_update_of, RoomKey};
use crate::AppState;

/// Presence rooms one socket may be in at once.
pub(crate) const MAX_ROOMS_PER_SOCKET: usize = 256;
/// Client states parked per document while over the awareness budget;
/// states of further clients are dropped (and counted).
const MAX_PARKED_CLIENTS: usize = 1024;

/// What a room's relay gave: the next message and the receiver to wait on
/// again, or `None` when the socket left the room (the wait was aborted).
type Relayed = Option<(
    Result<Bytes, broadcast::error::RecvError>,
    broadcast::Receiver<Bytes>,
)>;
/// One wait on a room's relay, tagged with its document.
type Relay = LocalBoxFuture<'static, (String, Relayed)>;

/// Why a presence frame closes the socket: an `error` code and message.
pub(crate) struct Refusal {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

/// One sync socket's presence: the rooms it joined and their relays.
/// Dropping it leaves every room (the states the socket set are removed
/// for everyone), whichever way the socket ended.
pub(crate) struct Presence {
    state: web::Data<AppState>,
    collection: String,
    /// This socket's id in the rooms.
    id: u64,
    /// Joined documents, with the handle that aborts their relay's wait.
    joined: HashMap<String, AbortHandle>,
    /// Documents left whose relay receiver is not dropped yet.
    leaving: HashSet<String>,
    relays: FuturesUnordered<Relay>,
    budget: AwarenessBudget,
    /// Per document, the newest states over the budget.
    parked: HashMap<String, AwarenessUpdate>,
    /// When the budget has a token for the parked states again.
    parked_due: tokio::time::Instant,
}

impl Presence {
    pub(crate) fn new(state: web::Data<AppState>, collection: String) -> Self {
        let budget = AwarenessBudget::new(state.limits.awareness_messages_per_sec);
        Self {
            state,
            collection,
            id: crate::rooms::next_connection_id(),
            joined: HashMap::new(),
            leaving: HashSet::new(),
            relays: FuturesUnordered::new(),
            budget,
            parked: HashMap::new(),
            parked_due: tokio::time::Instant::now(),
        }
    }

    fn key(&self, doc: &str) -> RoomKey {
        (self.collection.clone(), doc.to_owned())
    }

    /// Waits for the next frame presence has to send (a relayed message,
    /// or the room's state after missed ones), publishing parked states
    /// when they are due. Never resolves while there is nothing to wait
    /// for. Cancel-safe: nothing is lost if dropped before it resolves.
    pub(crate) async fn next_frame(&mut self) -> Vec<u8> {
        loop {
            tokio::select! {
                Some((doc, relayed)) = self.relays.next(), if !self.relays.is_empty() => {
                    if let Some(frame) = self.on_relayed(doc, relayed) {
                        return frame;
                    }
                }
                _ = tokio::time::sleep_until(self.parked_due), if !self.parked.is_empty() => {
                    self.publish_parked();
                }
                else => std::future::pending::<()>().await,
            }
        }
    }

    /// An `awareness` frame from the client: joins the document's room if
    /// it is not in it (returning the room's current states to send
    /// first), then merges the update into the room. Errors close the
    /// socket: an invalid document id or update, a document the token may
    /// not read, too many rooms.
    pub(crate) fn on_awareness(
        &mut self,
        req: &HttpRequest,
        doc: String,
        update: &[u8],
    ) -> Result<Option<Vec<u8>>, Refusal> {
        let update = crate::decode::decode_awareness_update(update).map_err(|e| Refusal {
            code: "invalid_frame",
            message: format!("not an awareness update: {e}"),
        })?;
        let mut snapshot = None;
        if !self.joined.contains_key(&doc) {
            snapshot = Some(self.join(req, &doc)?);
        }
        if self.budget.allow(std::time::Instant::now()) {
            self.state.rooms.publish(&self.key(&doc), self.id, update);
        } else {
            // Over the budget: keep the newest state per client and
            // publish them once the budget refills.
            crate::limits::refused("awareness_rate");
            if self.parked.is_empty() {
                self.parked_due = tokio::time::Instant::now() + self.budget.refill_interval();
            }
            let parked = self.parked.entry(doc).or_insert_with(|| AwarenessUpdate {
                clients: HashMap::new(),
            });
            for (client, entry) in update.clients {
                if parked.clients.len() < MAX_PARKED_CLIENTS || parked.clients.contains_key(&client)
                {
                    parked.clients.insert(client, entry);
                }
            }
        }
        Ok(snapshot.flatten())
    }

    /// A `leave` frame: the states this socket set in the document's room
    /// are removed for everyone, and its relay stops. Leaving a room the
    /// socket is not in does nothing.
    pub(crate) fn on_leave(&mut self, doc: &str) {
        let Some(abort) = self.joined.remove(doc) else {
            return;
        };
        abort.abort();
        self.parked.remove(doc);
        self.state.rooms.leave(&self.key(doc), self.id);
        self.leaving.insert(doc.to_owned());
    }

    /// Joins `doc`'s room: checks the document id, the token and the room
    /// limit, starts waiting on the room's relay, and returns the room's
    /// current states and the removals it remembers as a `presence` frame
    /// (`None`: the room is empty).
    fn join(&mut self, req: &HttpRequest, doc: &str) -> Result<Option<Vec<u8>>, Refusal> {
        seqsync_engine::DocId::new(doc).map_err(|e| Refusal {
            code: "invalid_name",
            message: e.to_string(),
        })?;
        if let Err(err) = self.state.auth.authorize(
            req,
            &AccessRequest::document(&self.collection, doc, Operation::Subscribe),
        ) {
            crate::limits::refused("forbidden");
            return Err(Refusal {
                code: "forbidden",
                message: format!("presence in {doc:?}: {err}"),
            });
        }
        if self.joined.len() >= MAX_ROOMS_PER_SOCKET {
            crate::limits::refused("too_many_rooms");
            return Err(Refusal {
                code: "too_many_rooms",
                message: format!(
                    "a socket may be in the presence rooms of {MAX_ROOMS_PER_SOCKET} documents at once; leave one first"
                ),
            });
        }
        let (receiver, _) = self.state.rooms.join(&self.key(doc));
        self.arm(doc.to_owned(), receiver);
        // The removals too (unlike `/yws`'s newcomer message): a client
        // back after its socket closed learns that its own state was
        // removed at a newer clock than its own, and sends it again at a
        // newer one (y-protocols' rule for its own state), instead of
        // staying invisible until its clock catches up.
        let current = self.state.rooms.current(&self.key(doc), true);
        Ok(current.and_then(|message| self.frame(doc, &message)))
    }

    /// Waits (again) on a joined room's relay.
    fn arm(&mut self, doc: String, mut receiver: broadcast::Receiver<Bytes>) {
        let (abort, registration) = AbortHandle::new_pair();
        self.joined.insert(doc.clone(), abort);
        self.relays.push(Box::pin(async move {
            let wait = async move {
                let next = receiver.recv().await;
                (next, receiver)
            };
            // Aborted: the receiver is dropped with the wait, here.
            let relayed = Abortable::new(wait, registration).await.ok();
            (doc, relayed)
        }));
    }

    /// What a room's relay gave: the frame to send, if any.
    fn on_relayed(&mut self, doc: String, relayed: Relayed) -> Option<Vec<u8>> {
        match relayed {
            // Left (the receiver is gone now): forget the room if this
            // socket was its last member, unless it joined again since.
            None => {
                if !self.joined.contains_key(&doc) {
                    self.leaving.remove(&doc);
                    self.state.rooms.forget_if_unused(&self.key(&doc));
                }
                None
            }
            Some((Ok(message), receiver)) => {
                let frame = self.frame(&doc, &message);
                self.arm(doc, receiver);
                frame
            }
            // Too slow to take every relayed message: the room's merged
            // state (removals included) replaces what was missed.
            Some((Err(broadcast::error::RecvError::Lagged(_)), receiver)) => {
                let current = self.state.rooms.current(&self.key(&doc), true);
                let frame = current.and_then(|message| self.frame(&doc, &message));
                self.arm(doc, receiver);
                frame
            }
            // The room is gone (it cannot be while this socket holds a
            // receiver; nothing to relay either way).
            Some((Err(broadcast::error::RecvError::Closed), _)) => None,
        }
    }

    /// The sync socket's `presence` frame for a room's message.
    fn frame(&self, doc: &str, message: &[u8]) -> Option<Vec<u8>> {
        let update = awareness_update_of(message)?;
        Some(
            ServerFrame::Presence {
                doc: doc.to_owned(),
                update: update.to_vec(),
            }
            .encode(),
        )
    }

    /// Publishes the parked states if the budget has a token, or waits
    /// one more token's time.
    fn publish_parked(&mut self) {
        if !self.budget.allow(std::time::Instant::now()) {
            self.parked_due = tokio::time::Instant::now() + self.budget.refill_interval();
            return;
        }
        for (doc, update) in std::mem::take(&mut self.parked) {
            if self.joined.contains_key(&doc) {
                self.state.rooms.publish(&self.key(&doc), self.id, update);
            }
        }
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        // The receivers first: a room whose last member this socket was
        // is then dropped by `leave`.
        self.relays = FuturesUnordered::new();
        for doc in std::mem::take(&mut self.joined).into_keys() {
            self.state.rooms.leave(&self.key(&doc), self.id);
        }
        for doc in std::mem::take(&mut self.leaving) {
            self.state.rooms.forget_if_unused(&self.key(&doc));
        }
    }
}
