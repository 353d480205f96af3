//! A document's history over HTTP: its changes one by one, restoring an
//! earlier version, and named versions (`GET …/history`, `POST …/restore`,
//! `POST`/`GET …/versions`, `DELETE …/versions/{name}`; the document as of
//! a seq, a moment or a version is `GET …/documents/{d}?at=`, `?at_ms=`,
//! `?version=`, in `routes.rs`). The engine does the work
//! (`Engine::history`, `Engine::restore`, `Engine::pin_version`); this file
//! speaks the protocol (docs/PROTOCOL.md).

use actix_web::{web, HttpRequest, HttpResponse};
use seqsync_engine::Pin;
use seqsync_protocol::http::{
    HistoryAnswer, HistoryEntryJson, PinRequest, RestoreAnswer, VersionJson, VersionsAnswer,
};

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
    let request: seqsync_protocol::http::RestoreRequest =
        small_json_body(&state, payload, "{\"seq\": N}").await?;
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

fn version_json(pin: Pin) -> VersionJson {
    VersionJson {
        name: pin.name,
        seq: pin.seq,
        created_ms: pin.created_ms,
        author: pin.author,
    }
}

/// `POST …/documents/{d}/versions {name}`: pins the current version.
pub(crate) async fn pin_version(
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
    let request: PinRequest = small_json_body(&state, payload, "{\"name\": \"...\"}").await?;
    let author = crate::auth::subject_of(&req);
    let pin = state
        .bounded(
            state
                .engine
                .pin_version(&collection, &doc, &request.name, author),
        )
        .await?;
    Ok(HttpResponse::Ok().json(version_json(pin)))
}

/// `GET …/documents/{d}/versions`.
pub(crate) async fn versions(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (collection, doc) = path.into_inner();
    state.auth.authorize(
        &req,
        &AccessRequest::document(&collection, &doc, Operation::Read),
    )?;
    let pins = state.engine.versions(&collection, &doc).await?;
    Ok(HttpResponse::Ok().json(VersionsAnswer {
        versions: pins.into_iter().map(version_json).collect(),
    }))
}

/// `DELETE …/documents/{d}/versions/{name}`: 404 `not_found` when the
/// document has no version of that name.
pub(crate) async fn delete_version(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (collection, doc, name) = path.into_inner();
    state.auth.authorize(
        &req,
        &AccessRequest::document(&collection, &doc, Operation::Write),
    )?;
    match state
        .engine
        .delete_version(&collection, &doc, &name)
        .await?
    {
        Some(pin) => Ok(HttpResponse::Ok().json(version_json(pin))),
        None => Err(no_such_version(&doc, &name)),
    }
}

/// 404 `not_found`: the document has no version of that name.
pub(crate) fn no_such_version(doc: &str, name: &str) -> ApiError {
    ApiError::new(
        actix_web::http::StatusCode::NOT_FOUND,
        "not_found",
        format!("document {doc} has no version named {name:?}"),
    )
}

/// Largest body of the small JSON requests here (restore, pin).
const SMALL_BODY_BYTES: u64 = 4096;

/// Reads a small JSON request body as `T`; `invalid_body` naming the
/// `expected` shape when it is not one.
async fn small_json_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    payload: web::Payload,
    expected: &str,
) -> Result<T, ApiError> {
    let body = read_body(payload, SMALL_BODY_BYTES, &state.limits).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("expected {expected}: {e}")))
}
