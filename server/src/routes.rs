//! The HTTP routes of docs/SERVER.md ("Routes"). Each handler authorizes,
//! validates what HTTP owns (bodies, headers, query strings), calls the
//! engine and maps its answer; the engine validates names, updates and
//! limits itself.

use actix_web::http::header::{ContentType, HeaderMap};
use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;
use seqsync_actors::PushOptions;
use seqsync_engine::{Change, Epoch, ReadError};
use seqsync_protocol::http::{
    AckAnswer, BatchAnswer, ChangeJson, ChangeKind, ChangesAnswer, CompactAnswer, DeleteAnswer,
    DigestAnswer, DocumentContentAnswer, HealthAnswer, PeerJson, PushAnswer,
    RecoverCollectionAnswer, RecoveredDocument,
};
use seqsync_protocol::{Base64Bytes, EpochHex, Hex64};

use crate::auth::{AccessRequest, Operation};
use crate::decode::{self, CursorQuery};
use crate::error::ApiError;
use crate::AppState;

pub use seqsync_protocol::{CURSOR_HEADER, DIGEST_HEADER, SCHEMA_VERSION_HEADER};

/// On a read `?at=SEQ`: the seq of the version served (the document's
/// latest change at or before SEQ).
pub const VERSION_SEQ_HEADER: &str = "x-seqsync-version-seq";

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1/collections/{collection}")
            .route("/documents/{doc}/updates", web::post().to(push_update))
            .route("/documents/{doc}/recover", web::post().to(recover))
            .route(
                "/documents/{doc}/history",
                web::get().to(crate::history::history),
            )
            .route(
                "/documents/{doc}/restore",
                web::post().to(crate::history::restore),
            )
            .route(
                "/documents/{doc}/versions",
                web::post().to(crate::history::pin_version),
            )
            .route(
                "/documents/{doc}/versions",
                web::get().to(crate::history::versions),
            )
            .route(
                "/documents/{doc}/versions/{name}",
                web::delete().to(crate::history::delete_version),
            )
            .route(
                "/documents/{doc}/state-vector",
                web::get().to(document_state_vector),
            )
            .route("/recover", web::post().to(recover_collection))
            .route("/documents", web::get().to(crate::listings::documents))
            .route("/documents/{doc}", web::get().to(document))
            .route("/documents/{doc}", web::delete().to(delete_document))
            .route("/batch", web::post().to(push_batch))
            .route("/changes", web::get().to(changes))
            .route("/digest", web::get().to(digest))
            .route("/subscribe", web::get().to(crate::subscribe_ws::subscribe))
            .route("/sync", web::get().to(crate::sync_ws::connect))
            .route("/peers/{peer}/ack", web::post().to(ack))
            .route("/peers", web::get().to(peers))
            .route("/compact", web::post().to(compact)),
    )
    .route(
        "/v1/collections",
        web::get().to(crate::listings::collections),
    )
    .route(
        "/yws/{collection}/{doc}",
        web::get().to(crate::yws::connect),
    )
    .route("/metrics", web::get().to(metrics))
    .route("/healthz", web::get().to(healthz));
}

/// Reads a request body, refusing more than `limit_bytes` with 413
/// `too_large` and a body not complete within `limits.body_timeout_ms`
/// with 408 `body_timeout` (a client dripping a body must not hold a
/// worker's connection and a growing buffer for ever). Both are counted in
/// `seqsync_refused_total`.
pub(crate) async fn read_body(
    mut payload: web::Payload,
    limit_bytes: u64,
    limits: &crate::config::ServerLimits,
) -> Result<Vec<u8>, ApiError> {
    let deadline = tokio::time::Instant::now() + crate::limits::millis(limits.body_timeout_ms);
    let mut body = Vec::new();
    loop {
        let next = match tokio::time::timeout_at(deadline, payload.next()).await {
            Ok(next) => next,
            Err(_) => {
                crate::limits::refused("body_timeout");
                return Err(ApiError::new(
                    actix_web::http::StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!(
                        "the body took longer than {} ms (limits.body_timeout_ms)",
                        limits.body_timeout_ms
                    ),
                ));
            }
        };
        let Some(chunk) = next else {
            return Ok(body);
        };
        let chunk = chunk.map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
        if (body.len() + chunk.len()) as u64 > limit_bytes {
            crate::limits::refused("body_too_large");
            return Err(ApiError::new(
                actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the body exceeds {limit_bytes} bytes (limits.max_update_bytes, \
                     limits.max_body_bytes)"
                ),
            ));
        }
        body.extend_from_slice(&chunk);
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map_err(|_| {
                ApiError::bad_request("invalid_header", format!("{name} is not ASCII text"))
            })
        })
        .transpose()
}

pub(crate) fn push_options(req: &HttpRequest) -> Result<PushOptions, ApiError> {
    let origin = header_str(req.headers(), "x-peer-id")?.map(str::to_owned);
    let schema_version = header_str(req.headers(), "x-schema-version")?
        .map(|v| {
            v.trim().parse::<u32>().map_err(|_| {
                ApiError::bad_request(
                    "invalid_header",
                    format!("x-schema-version {v:?} is not a number"),
                )
            })
        })
        .transpose()?;
    Ok(PushOptions {
        origin,
        schema_version,
        // Call after authorizing: the authorizer records the subject.
        author: crate::auth::subject_of(req),
    })
}

/// The protocol's kind of a change.
pub(crate) fn change_kind(kind: seqsync_engine::ChangeKind) -> ChangeKind {
    match kind {
        seqsync_engine::ChangeKind::Update => ChangeKind::Update,
        seqsync_engine::ChangeKind::Delete => ChangeKind::Delete,
        seqsync_engine::ChangeKind::Snapshot => ChangeKind::Snapshot,
        // The engine's kinds are `#[non_exhaustive]`; one added there must
        // get a protocol kind (and a frame code) before it is stored, and
        // a client applies an unknown kind's bytes as an update.
        _ => ChangeKind::Update,
    }
}

/// A change as JSON (`update` is base64; empty for a delete).
pub(crate) fn change_json(change: &Change) -> ChangeJson {
    ChangeJson {
        seq: change.seq,
        doc: change.doc.as_str().to_owned(),
        kind: change_kind(change.kind),
        update: Base64Bytes(change.payload.clone()),
        origin: change.origin.as_ref().map(|p| p.as_str().to_owned()),
        schema_version: change.schema_version,
    }
}

/// An epoch in the protocol's form.
pub(crate) fn epoch_hex(epoch: Option<Epoch>) -> Option<EpochHex> {
    epoch.map(|e| EpochHex(e.0))
}

async fn push_update(
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
    let options = push_options(&req)?;
    let body = read_body(
        payload,
        state.engine_limits().max_update_bytes,
        &state.limits,
    )
    .await?;
    let outcome = state
        .bounded(state.engine.push(&collection, &doc, body, options))
        .await?;
    Ok(HttpResponse::Ok().json(PushAnswer {
        seq: outcome.seq,
        head: outcome.head,
    }))
}

async fn push_batch(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let collection = path.into_inner();
    let body = read_body(payload, state.batch_body_limit_bytes(), &state.limits).await?;
    let updates = decode::decode_batch_body(&body)?;
    // Each document of the batch is authorized (a token for one document
    // may batch-push to it, not to its neighbours).
    if updates.is_empty() {
        state.auth.authorize(
            &req,
            &AccessRequest::collection(&collection, Operation::Write),
        )?;
    }
    let mut checked = std::collections::HashSet::new();
    for (doc, _) in &updates {
        if checked.insert(doc.as_str()) {
            state.auth.authorize(
                &req,
                &AccessRequest::document(&collection, doc, Operation::Write),
            )?;
        }
    }
    let options = push_options(&req)?;
    let outcome = state
        .bounded(state.engine.push_batch(&collection, updates, options))
        .await?;
    Ok(HttpResponse::Ok().json(BatchAnswer {
        seqs: outcome.seqs,
        head: outcome.head,
    }))
}

async fn delete_document(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (collection, doc) = path.into_inner();
    state.auth.authorize(
        &req,
        &AccessRequest::document(&collection, &doc, Operation::Delete),
    )?;
    let options = push_options(&req)?;
    let outcome = state
        .bounded(state.engine.delete_with(&collection, &doc, options))
        .await?;
    Ok(HttpResponse::Ok().json(DeleteAnswer {
        seq: outcome.seq,
        head: outcome.head,
    }))
}

/// `after`, `limit`, `epoch` of the request's query string, with JSON errors
/// (see [`decode::decode_cursor_query`]).
pub(crate) fn parse_cursor_query(req: &HttpRequest) -> Result<CursorQuery, ApiError> {
    decode::decode_cursor_query(req.query_string())
}

async fn changes(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let collection = path.into_inner();
    state.auth.authorize(
        &req,
        &AccessRequest::collection(&collection, Operation::Read),
    )?;
    let query = parse_cursor_query(&req)?;
    let limit = query
        .limit
        .unwrap_or(state.engine_limits().stream_page_limit);
    let page = state
        .engine
        .changes_verified(&collection, query.after, limit, query.epoch, query.checksum)
        .await?;
    Ok(HttpResponse::Ok().json(ChangesAnswer {
        changes: page.changes.iter().map(change_json).collect(),
        cursor: page.cursor,
        has_more: page.has_more,
        head: page.head,
        epoch: epoch_hex(page.epoch),
        schema_version: page.schema_version,
        cursor_checksum: Hex64(page.cursor_checksum),
    }))
}

async fn ack(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (collection, peer) = path.into_inner();
    state.auth.authorize(
        &req,
        &AccessRequest::collection(&collection, Operation::Ack),
    )?;
    let body = read_body(payload, 4096, &state.limits).await?;
    let seq = decode::decode_ack_body(&body)?;
    let acked = state
        .bounded(state.engine.ack(&collection, &peer, seq))
        .await?;
    Ok(HttpResponse::Ok().json(AckAnswer { seq: acked }))
}

async fn peers(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let collection = path.into_inner();
    state.auth.authorize(
        &req,
        &AccessRequest::collection(&collection, Operation::Read),
    )?;
    let peers = state.engine.peers(&collection).await?;
    let list: Vec<PeerJson> = peers
        .iter()
        .map(|p| PeerJson {
            peer: p.peer.as_str().to_owned(),
            acked: p.acked,
            lag: p.lag,
            last_seen_ms: p.last_seen_ms,
            active: p.active,
        })
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

async fn document(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (collection, doc) = path.into_inner();
    state.auth.authorize(
        &req,
        &AccessRequest::document(&collection, &doc, Operation::Read),
    )?;
    let query = decode::decode_document_query(req.query_string())?;
    // As of a moment: the version of the document's latest change then;
    // as of a named version: its seq.
    let at = match (query.at_ms, &query.version) {
        (Some(at_ms), _) => Some(
            state
                .engine
                .version_at_time(&collection, &doc, at_ms)
                .await?,
        ),
        (None, Some(name)) => match state.engine.version(&collection, &doc, name).await? {
            Some(pin) => Some(pin.seq),
            None => return Err(crate::history::no_such_version(&doc, name)),
        },
        (None, None) => query.at,
    };
    // As of a seq: that version, named in a header; else the document now.
    let (update, cursor, schema_version, version) = match at {
        Some(at) => {
            let version = state.engine.document_at(&collection, &doc, at).await?;
            (
                version.update,
                at,
                version.schema_version,
                Some(version.seq),
            )
        }
        None => {
            let now = state.engine.document(&collection, &doc).await?;
            (now.update, now.cursor, now.schema_version, None)
        }
    };
    let mut response = match query.format {
        decode::DocumentFormat::Yjs => state_response(update, cursor, schema_version),
        decode::DocumentFormat::Json => {
            // Loading a document into yrs is CPU work in proportion to its
            // size: off the server's threads.
            let json = web::block(move || seqsync_engine::document_json(&update))
                .await
                .map_err(|e| {
                    ApiError::from(ReadError::Internal(format!("the JSON task failed: {e}")))
                })?
                .map_err(|e| {
                    ApiError::from(ReadError::DocumentUnreadable {
                        doc,
                        reason: e.to_string(),
                    })
                })?;
            let mut response = HttpResponse::Ok();
            response
                .insert_header((CURSOR_HEADER, cursor.to_string()))
                .insert_header((SCHEMA_VERSION_HEADER, schema_version.to_string()));
            response.json(DocumentContentAnswer {
                content: json.roots,
                types: json
                    .kinds
                    .into_iter()
                    .map(|(name, kind)| (name, root_kind_name(kind).to_owned()))
                    .collect(),
                cursor,
            })
        }
    };
    if let Some(seq) = version {
        response.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static(VERSION_SEQ_HEADER),
            actix_web::http::header::HeaderValue::from(seq),
        );
    }
    Ok(response)
}

/// How `?format=json` names a root's type.
fn root_kind_name(kind: seqsync_engine::RootKind) -> &'static str {
    use seqsync_engine::RootKind;
    match kind {
        RootKind::Text => "text",
        RootKind::Map => "map",
        RootKind::Array => "array",
        RootKind::XmlFragment => "xml_fragment",
        _ => "unknown",
    }
}

/// A Yjs update as an octet-stream answer, with the cursor it reflects and
/// the schema version of its data.
fn update_response(update: Vec<u8>, cursor: u64, schema_version: u32) -> HttpResponse {
    let mut response = HttpResponse::Ok();
    response
        .content_type(ContentType::octet_stream())
        .insert_header((CURSOR_HEADER, cursor.to_string()))
        .insert_header((SCHEMA_VERSION_HEADER, schema_version.to_string()));
    response.body(update)
}

/// A full document state answer: [`update_response`] plus the digest of
/// exactly the bytes served (what a client that loads them computes).
fn state_response(update: Vec<u8>, cursor: u64, schema_version: u32) -> HttpResponse {
    let digest = seqsync_engine::digest_of_update(&update);
    let mut response = update_response(update, cursor, schema_version);
    if let Some(digest) = digest {
        if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&digest.to_hex()) {
            response.headers_mut().insert(
                actix_web::http::header::HeaderName::from_static(DIGEST_HEADER),
                value,
            );
        }
    }
    response
}

async fn digest(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let collection = path.into_inner();
    state.auth.authorize(
        &req,
        &AccessRequest::collection(&collection, Operation::Read),
    )?;
    let digest = state.engine.digest(&collection).await?;
    Ok(HttpResponse::Ok().json(DigestAnswer {
        head: digest.head,
        log_checksum: Hex64(digest.log_checksum),
        state_digest: digest.state_digest.map(Hex64),
    }))
}

async fn recover(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (collection, doc) = path.into_inner();
    state.auth.authorize(
        &req,
        &AccessRequest::document(&collection, &doc, Operation::Read),
    )?;
    let state_vector = read_body(
        payload,
        state.engine_limits().max_update_bytes,
        &state.limits,
    )
    .await?;
    let recovery = state
        .engine
        .recover(&collection, &doc, &state_vector)
        .await?;
    Ok(update_response(
        recovery.diff,
        recovery.cursor,
        recovery.schema_version,
    ))
}

async fn document_state_vector(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (collection, doc) = path.into_inner();
    state.auth.authorize(
        &req,
        &AccessRequest::document(&collection, &doc, Operation::Read),
    )?;
    let found = state
        .engine
        .document_state_vector(&collection, &doc)
        .await?;
    Ok(HttpResponse::Ok()
        .content_type(ContentType::octet_stream())
        .insert_header((CURSOR_HEADER, found.cursor.to_string()))
        .body(found.state_vector))
}

async fn recover_collection(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let collection = path.into_inner();
    state.auth.authorize(
        &req,
        &AccessRequest::collection(&collection, Operation::Read),
    )?;
    let body = read_body(payload, state.batch_body_limit_bytes(), &state.limits).await?;
    let state_vectors = decode::decode_recover_collection_body(&body)?;
    let recovery = state
        .engine
        .recover_collection(&collection, state_vectors)
        .await?;
    Ok(HttpResponse::Ok().json(RecoverCollectionAnswer {
        documents: recovery
            .documents
            .into_iter()
            .map(|(doc, update)| RecoveredDocument {
                doc: doc.as_str().to_owned(),
                update: Base64Bytes(update),
            })
            .collect(),
        deleted: recovery
            .deleted
            .iter()
            .map(|d| d.as_str().to_owned())
            .collect(),
        cursor: recovery.cursor,
        epoch: epoch_hex(recovery.epoch),
        schema_version: recovery.schema_version,
    }))
}

async fn compact(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let collection = path.into_inner();
    state.auth.authorize(
        &req,
        &AccessRequest::collection(&collection, Operation::Compact),
    )?;
    let summary = state.engine.compact(&collection).await?;
    Ok(HttpResponse::Ok().json(CompactAnswer {
        documents_compacted: summary.documents_compacted,
        changes_removed: summary.changes_removed,
        deltas_removed: summary.deltas_removed,
        bytes_before: summary.bytes_before,
        bytes_after: summary.bytes_after,
    }))
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

async fn healthz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    // A real round trip to storage: the engine answers or this fails.
    state.engine.peers("seqsync-healthz").await?;
    Ok(HttpResponse::Ok().json(HealthAnswer {
        status: "ok".to_owned(),
        backend: state.engine.backend().to_owned(),
    }))
}
