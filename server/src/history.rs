//! A document's history over HTTP: its changes one by one, and restoring
//! an earlier version (`GET …/history`, `POST …/restore`; the document as
//! of a seq is `GET …/documents/{d}?at=SEQ`, in `routes.rs`). The engine
//! does the work (`Engine::history`, `Engine::restore`); this file speaks
//! the protocol (docs/PROTOCOL.md).

use actix_web::{web, HttpRequest, HttpResponse};
use seqsync_protocol::http::{HistoryAnswer, HistoryEntryJson, RestoreAnswer};

use crate::auth::{AccessRequest, Operation};
use crate::decode;
use crate::error::ApiError;
use crate::routes::{change_kind, read_body};
use crate::AppState;

/// Page size when the request does not say.
const DEFAULT_HISTORY_LIMIT: u64 = 100;

pub(crate) async fn history(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (collection, doc) = path.into_inner();
    state.auth.authorize(
        &req,
        &AccessRequest::document(&collection, &doc, Operation::Read),
    )?;
    let query = decode::decode_cursor_query(req.query_string())?;
    let limit = usize::try_from(query.limit.unwrap_or(DEFAULT_HISTORY_LIMIT)).unwrap_or(usize::MAX);
    let page = state
        .engine
        .history(&collection, &doc, query.after, limit)
        .await?;
    Ok(HttpResponse::Ok().json(HistoryAnswer {
        changes: page
            .entries
            .into_iter()
            .map(|entry| HistoryEntryJson {
                seq: entry.seq,
                kind: change_kind(entry.kind),
                size_bytes: entry.size_bytes,
                origin: entry.origin.map(|p| p.as_str().to_owned()),
                author: entry.author,
                committed_ms: entry.committed_ms,
                schema_version: entry.schema_version,
            })
            .collect(),
        has_more: page.has_more,
    }))
}

pub(crate) async fn restore(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (collection, doc) = path.into_inner();
    state.auth.authorize(
        &req,
        &AccessRequest::document(&collection, &doc, Operation::Write),
    )?;
    let body = read_body(payload, 4096, &state.limits).await?;
    let request: seqsync_protocol::http::RestoreRequest =
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request("invalid_body", format!("expected {{\"seq\": N}}: {e}"))
        })?;
    // A restore ends in a commit: bounded like a push, and recorded like
    // one (origin, author).
    let options = crate::routes::push_options(&req)?;
    let outcome = state
        .bounded(
            state
                .engine
                .restore_with(&collection, &doc, request.seq, options),
        )
        .await?;
    Ok(HttpResponse::Ok().json(RestoreAnswer {
        seq: outcome.seq,
        restored_from: outcome.restored_from,
    }))
}
