//! `GET /v1/collections` and `GET /v1/collections/{c}/documents`: what is
//! stored, paged, for operators and tools (docs/PROTOCOL.md).
//!
//! Authorized like every other collection route: a collection appears in
//! the list only when the request may read it, so a token for one
//! collection lists that one alone; a request the server cannot
//! authenticate at all is refused (401), not answered with an empty list.

use actix_web::{web, HttpRequest, HttpResponse};
use seqsync_protocol::http::{CollectionJson, CollectionsAnswer, DocumentJson, DocumentsAnswer};

use crate::auth::{AccessRequest, Operation};
use crate::decode;
use crate::error::ApiError;
use crate::AppState;

/// Page size when the request does not say.
const DEFAULT_LISTING_LIMIT: u64 = 100;

fn page_limit(limit: Option<u64>) -> usize {
    usize::try_from(limit.unwrap_or(DEFAULT_LISTING_LIMIT)).unwrap_or(usize::MAX)
}

pub(crate) async fn collections(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = decode::decode_listing_query(req.query_string())?;
    let page = state
        .engine
        .collections(query.after.as_deref(), page_limit(query.limit))
        .await?;
    let mut listed = Vec::with_capacity(page.collections.len());
    for info in page.collections {
        let asked = AccessRequest::collection(info.name.as_str(), Operation::Read);
        match state.auth.authorize(&req, &asked) {
            Ok(()) => listed.push(CollectionJson {
                name: info.name.to_string(),
                head: info.head,
                created_ms: info.created_ms,
                schema_version: info.schema_version,
            }),
            // Another collection's token: this one is not listed.
            Err(err) if err.code() == "forbidden" => {}
            Err(err) => return Err(err),
        }
    }
    Ok(HttpResponse::Ok().json(CollectionsAnswer {
        collections: listed,
        next: page.next.map(|name| name.to_string()),
    }))
}

pub(crate) async fn documents(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let collection = path.into_inner();
    state.auth.authorize(
        &req,
        &AccessRequest::collection(&collection, Operation::Read),
    )?;
    let query = decode::decode_listing_query(req.query_string())?;
    let page = state
        .engine
        .documents(&collection, query.after.as_deref(), page_limit(query.limit))
        .await?;
    Ok(HttpResponse::Ok().json(DocumentsAnswer {
        documents: page
            .documents
            .into_iter()
            .map(|info| DocumentJson {
                id: info.doc.to_string(),
                last_seq: info.last_seq,
                size_bytes: info.stored_bytes,
                deleted: info.deleted,
            })
            .collect(),
        next: page.next.map(|doc| doc.to_string()),
    }))
}
