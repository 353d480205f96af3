//! Engine errors as HTTP answers: `{"error":{"code","message"}}` with a status
//! that fits (docs/SERVER.md, "Errors"): 400 bad input, 401/403 auth, 404 unknown document,
//! 409 deleted / schema mismatch / reset, 413 too large, 503 storage failure.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use seqsync_engine::{AckError, ReadError, RestoreError, StorageError, WriteError};
use seqsync_protocol::http::ErrorAnswer;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    /// The JSON body: code, message and the fields some codes carry (a
    /// reset's `head` and `epoch`, a schema refusal's versions). Boxed: an
    /// `ApiError` is the error of most server functions and stays small.
    answer: Box<ErrorAnswer>,
    /// A write refused by a node that does not own the collection: the
    /// owner and how long its lease may last.
    owner: Option<(String, u64)>,
    /// Sent as `Retry-After` (in whole seconds, at least 1) when set.
    retry_after_ms: Option<u64>,
}

/// The header naming the node that owns a collection, on a `not_owner`
/// answer.
pub const OWNER_HEADER: &str = "x-seqsync-owner";

impl ApiError {
    /// An error with a status, a stable code and a message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            answer: Box::new(ErrorAnswer::new(code, message)),
            owner: None,
            retry_after_ms: None,
        }
    }

    /// 503 `commit_timeout`: a write not confirmed durable within
    /// `timeout_ms` (`limits.commit_timeout_ms`), with `Retry-After`. The
    /// write stays queued and may still land.
    pub fn commit_timeout(timeout_ms: u64) -> Self {
        let mut api = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "commit_timeout",
            format!(
                "the write was not confirmed durable within {timeout_ms} ms \
                 (limits.commit_timeout_ms): the database is slow or unreachable. \
                 It may still land; retrying is safe"
            ),
        );
        api.retry_after_ms = Some(1_000);
        api.answer.retry_after_ms = Some(1_000);
        api
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The message, for people.
    pub fn message(&self) -> &str {
        &self.answer.error.message
    }

    /// The JSON body.
    pub fn body(&self) -> &ErrorAnswer {
        &self.answer
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some((owner, retry_after_ms)) = &self.owner {
            response.insert_header((OWNER_HEADER, owner.as_str()));
            response.insert_header((
                "retry-after",
                retry_after_ms.div_ceil(1000).max(1).to_string(),
            ));
        } else if let Some(retry_after_ms) = self.retry_after_ms {
            response.insert_header((
                "retry-after",
                retry_after_ms.div_ceil(1000).max(1).to_string(),
            ));
        }
        response.json(self.body())
    }
}

impl From<WriteError> for ApiError {
    fn from(err: WriteError) -> Self {
        let status = match &err {
            WriteError::InvalidName(_)
            | WriteError::InvalidUpdate { .. }
            | WriteError::BatchTooLarge { .. }
            | WriteError::EmptyBatch => StatusCode::BAD_REQUEST,
            WriteError::ReservedClientId { .. } => StatusCode::BAD_REQUEST,
            WriteError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            WriteError::DocumentDeleted { .. }
            | WriteError::SchemaTooOld { .. }
            | WriteError::SchemaTooNew { .. }
            | WriteError::MigrationFailed { .. } => StatusCode::CONFLICT,
            WriteError::Overloaded | WriteError::Storage(_) | WriteError::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut api = Self::new(status, err.code(), err.to_string());
        // Schema errors carry the versions, so a client can tell whether to
        // upgrade itself or wait for the server.
        match &err {
            WriteError::SchemaTooOld {
                client,
                collection,
                min_supported,
            } => {
                api.answer.client = Some(*client);
                api.answer.collection = Some(*collection);
                api.answer.min_supported = Some(*min_supported);
            }
            WriteError::SchemaTooNew { client, collection } => {
                api.answer.client = Some(*client);
                api.answer.collection = Some(*collection);
            }
            WriteError::Storage(StorageError::NotOwner {
                owner,
                retry_after_ms,
                ..
            }) => return not_owner(owner, *retry_after_ms, err.to_string()),
            _ => {}
        }
        api
    }
}

/// Another node holds the collection's lease: 503 with `Retry-After` and
/// the owner named (header `x-seqsync-owner`, field `owner`); the
/// `redirect_to_owner` middleware turns it into a 307 when the owner is a
/// URL.
fn not_owner(owner: &str, retry_after_ms: u64, message: String) -> ApiError {
    let mut api = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_owner", message);
    api.answer.owner = Some(owner.to_owned());
    api.answer.retry_after_ms = Some(retry_after_ms);
    api.owner = Some((owner.to_owned(), retry_after_ms));
    api
}

impl From<ReadError> for ApiError {
    fn from(err: ReadError) -> Self {
        let status = match &err {
            ReadError::InvalidName(_) | ReadError::InvalidStateVector(_) => StatusCode::BAD_REQUEST,
            ReadError::DocumentNotFound { .. } | ReadError::CollectionNotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            ReadError::DocumentDeleted { .. }
            | ReadError::Reset { .. }
            | ReadError::TooManyVersions { .. } => StatusCode::CONFLICT,
            ReadError::Storage(_) | ReadError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut api = Self::new(status, err.code(), err.to_string());
        if let ReadError::Reset { epoch, head } = &err {
            api.answer.head = Some(*head);
            api.answer.epoch = Some(crate::routes::epoch_hex(*epoch));
        }
        if let ReadError::HistoryCompacted { earliest_seq, .. } = &err {
            api.status = StatusCode::GONE;
            api.answer.earliest_seq = Some(*earliest_seq);
        }
        api
    }
}

impl From<RestoreError> for ApiError {
    fn from(err: RestoreError) -> Self {
        match err {
            RestoreError::Read(err) => err.into(),
            RestoreError::Write(err) => err.into(),
            other => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                other.to_string(),
            ),
        }
    }
}

impl From<AckError> for ApiError {
    fn from(err: AckError) -> Self {
        let status = match &err {
            AckError::InvalidName(_) | AckError::AckBeyondHead { .. } => StatusCode::BAD_REQUEST,
            AckError::Storage(_) | AckError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if let AckError::Storage(StorageError::NotOwner {
            owner,
            retry_after_ms,
            ..
        }) = &err
        {
            return not_owner(owner, *retry_after_ms, err.to_string());
        }
        Self::new(status, err.code(), err.to_string())
    }
}
