//! `GET /v1/collections/{c}/subscribe?after=N[&doc=D]`: the engine's
//! subscription (of the collection, or with `doc` of one document) as a
//! WebSocket of JSON text messages, one per change, and `{"up_to_date": head}`
//! markers. A reset or failure is sent as an error object, then the socket
//! closes.
//!
//! Backpressure: the next change is taken from the engine only once the
//! previous one is written to the socket, so a slow client slows only its own
//! subscription (which the engine bounds and, if needed, serves from storage).

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message};
use futures::StreamExt;
use seqsync_actors::{StreamEvent, Subscription};
use serde_json::json;

use crate::auth::{AccessRequest, Operation};
use crate::error::ApiError;
use crate::routes::{parse_cursor_query, ChangeJson};
use crate::AppState;

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
    let changes = match &query.doc {
        None => state
            .engine
            .subscribe(&collection, query.after, query.epoch)?,
        Some(doc) => state
            .engine
            .subscribe_document(&collection, doc, query.after, query.epoch)?,
    };
    let (response, session, incoming) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::bad_request("not_a_websocket", e.to_string()))?;
    actix_web::rt::spawn(pump(session, incoming, changes));
    Ok(response)
}

async fn pump(
    mut session: actix_ws::Session,
    mut incoming: actix_ws::MessageStream,
    mut changes: Subscription,
) {
    loop {
        tokio::select! {
            event = changes.next() => {
                let text = match event {
                    Some(Ok(StreamEvent::Change(change))) => match serde_json::to_string(&ChangeJson::from_change(&change)) {
                        Ok(text) => text,
                        Err(_) => break,
                    },
                    Some(Ok(StreamEvent::UpToDate { head })) => json!({"up_to_date": head}).to_string(),
                    Some(Err(err)) => {
                        let api = ApiError::from(err);
                        let _ = session.text(api.body().to_string()).await;
                        let _ = session
                            .close(Some(CloseReason { code: CloseCode::Policy, description: Some(api.code().to_owned()) }))
                            .await;
                        return;
                    }
                    None => break,
                };
                if session.text(text).await.is_err() {
                    return;
                }
            }
            message = incoming.next() => match message {
                Some(Ok(Message::Ping(bytes))) => {
                    if session.pong(&bytes).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = session.close(None).await;
}
