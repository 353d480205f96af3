//! `GET /v1/collections/{c}/subscribe?after=N[&doc=D]`: the engine's
//! subscription (of the collection, or with `doc` of one document) as a
//! WebSocket of JSON text messages, one per change, and `{"up_to_date": head}`
//! markers. A reset or failure is sent as an error object, then the socket
//! closes.
//!
//! Backpressure: the next change is taken from the engine only once the
//! previous one is written to the socket, so a slow client slows only its own
//! subscription (which the engine bounds and, if needed, serves from storage).
//! A client that stops reading altogether is closed after
//! `limits.ws_send_timeout_ms` (1008 `slow_reader`), one that sends nothing,
//! not even a pong, after `limits.ws_idle_timeout_ms` (1001 `idle`); the
//! socket counts against `limits.max_connections` (see `crate::limits`).

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message};
use futures::StreamExt;
use seqsync_actors::{StreamEvent, Subscription};

use crate::auth::{AccessRequest, Operation};
use crate::error::ApiError;
use crate::routes::{change_json, parse_cursor_query};
use crate::AppState;
use seqsync_protocol::http::{SubscribeMessage, UpToDateJson};

/// Clients send nothing but control frames here (pings, pongs, close).
const MAX_CLIENT_FRAME_BYTES: u64 = 4096;

pub(crate) async fn subscribe(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let collection = path.into_inner();
    let query = parse_cursor_query(&req)?;
    let access = match &query.doc {
        Some(doc) => AccessRequest::document(&collection, doc, Operation::Subscribe),
        None => AccessRequest::collection(&collection, Operation::Subscribe),
    };
    state.auth.authorize(&req, &access)?;
    let slot = state.connections.admit(&state.limits, &collection)?;
    let changes = match &query.doc {
        None => state
            .engine
            .subscribe(&collection, query.after, query.epoch)?,
        Some(doc) => state
            .engine
            .subscribe_document(&collection, doc, query.after, query.epoch)?,
    };
    let body = crate::limits::guarded_websocket_body(&req, body, MAX_CLIENT_FRAME_BYTES)
        .await
        .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
    let (response, session, incoming) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::bad_request("not_a_websocket", e.to_string()))?;
    let incoming = incoming.max_frame_size(MAX_CLIENT_FRAME_BYTES as usize);
    let session = crate::limits::TimedSession::new(session, &state.limits);
    let liveness = crate::limits::Liveness::new(&state.limits);
    actix_web::rt::spawn(async move {
        pump(session, incoming, changes, liveness).await;
        drop(slot);
    });
    Ok(response)
}

async fn pump(
    mut session: crate::limits::TimedSession,
    mut incoming: actix_ws::MessageStream,
    mut changes: Subscription,
    mut liveness: crate::limits::Liveness,
) {
    let close = loop {
        tokio::select! {
            _ = liveness.ping.tick() => {
                if let Some(reason) = liveness.idle() {
                    break Some(reason);
                }
                if session.ping().await.is_err() {
                    break None;
                }
            }
            event = changes.next() => {
                let text = match event {
                    Some(Ok(StreamEvent::Change(change))) => match serde_json::to_string(&SubscribeMessage::Change(change_json(&change))) {
                        Ok(text) => text,
                        Err(_) => break None,
                    },
                    Some(Ok(StreamEvent::UpToDate { head })) => match serde_json::to_string(&SubscribeMessage::UpToDate(UpToDateJson { up_to_date: head })) {
                        Ok(text) => text,
                        Err(_) => break None,
                    },
                    Some(Err(err)) => {
                        let api = ApiError::from(err);
                        let _ = session.text(serde_json::to_string(api.body()).unwrap_or_default()).await;
                        break Some(CloseReason { code: CloseCode::Policy, description: Some(api.code().to_owned()) });
                    }
                    None => break None,
                };
                if session.text(text).await.is_err() {
                    break None;
                }
            }
            message = incoming.next() => {
                liveness.heard();
                match message {
                    Some(Ok(Message::Ping(bytes))) => {
                        if session.pong(&bytes).await.is_err() {
                            break None;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Err(err)) => break Some(crate::limits::protocol_close(&err)),
                    Some(Ok(_)) => {}
                }
            }
        }
    };
    session.close(close).await;
}
