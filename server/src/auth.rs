//! The auth hook: the host decides who may read or write which collection.
//!
//! Every route calls [`Authorizer::authorize`] before touching the engine.
//! The example ships [`BearerTokens`]: two optional tokens from the config,
//! one granting reads, one granting reads and writes; with both empty (the
//! default) everything is allowed. Browsers cannot set headers on a
//! WebSocket, so the token is also accepted as `?access_token=`.

use actix_web::http::StatusCode;
use actix_web::HttpRequest;

use crate::error::ApiError;

/// What a request wants to do to a collection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read changes, documents, peers.
    Read,
    /// Push, delete, ack, compact.
    Write,
}

/// Allows or refuses requests. Implemented by the host.
pub trait Authorizer: Send + Sync + 'static {
    /// `Ok` to let the request through. Must not block.
    fn authorize(
        &self,
        req: &HttpRequest,
        collection: &str,
        access: Access,
    ) -> Result<(), ApiError>;
}

/// Tokens from `[server] read_token` / `write_token`.
#[derive(Clone, Debug, Default)]
pub struct BearerTokens {
    read_token: String,
    write_token: String,
}

impl BearerTokens {
    /// Empty strings mean "no such token"; both empty turns auth off.
    pub fn new(read_token: impl Into<String>, write_token: impl Into<String>) -> Self {
        Self {
            read_token: read_token.into(),
            write_token: write_token.into(),
        }
    }

    fn presented(req: &HttpRequest) -> Option<String> {
        if let Some(value) = req.headers().get("authorization") {
            let value = value.to_str().ok()?;
            return value.strip_prefix("Bearer ").map(|t| t.trim().to_owned());
        }
        req.query_string()
            .split('&')
            .find_map(|pair| pair.strip_prefix("access_token=").map(str::to_owned))
    }
}

impl Authorizer for BearerTokens {
    fn authorize(
        &self,
        req: &HttpRequest,
        _collection: &str,
        access: Access,
    ) -> Result<(), ApiError> {
        if self.read_token.is_empty() && self.write_token.is_empty() {
            return Ok(());
        }
        let Some(token) = Self::presented(req) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <token>",
            ));
        };
        let writes = !self.write_token.is_empty() && token == self.write_token;
        let reads = writes || (!self.read_token.is_empty() && token == self.read_token);
        match (access, reads, writes) {
            (Access::Read, true, _) | (Access::Write, _, true) => Ok(()),
            (Access::Write, true, false) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this token may read but not write",
            )),
            _ => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "unknown token",
            )),
        }
    }
}
