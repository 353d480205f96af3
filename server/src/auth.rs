//! The auth hook: the host decides who may do what to which collection and
//! document.
//!
//! Every route calls [`Authorizer::authorize`] with an [`AccessRequest`] (the
//! collection, the document where the route has one, and the
//! [`Operation`]) before touching the engine. The server ships [`Tokens`]:
//! - the two static bearer tokens of `[server] read_token` / `write_token`
//!   (with both empty and no signed tokens configured, everything is
//!   allowed), compared in constant time;
//! - signed tokens (JWT) when `[server] token_secret` (HS256) or
//!   `token_public_key` (EdDSA, a PEM public key or a path to one) is set:
//!   like y-sweet's client tokens, each names a collection (or `*`), an
//!   optional document, its rights and an expiry ([`TokenClaims`]).
//!
//! Browsers cannot set headers on a WebSocket, so the token is also accepted
//! as `?access_token=`. Tokens never appear in logs: errors name what is
//! wrong with a token, never the token.

use actix_web::http::StatusCode;
use actix_web::{HttpMessage as _, HttpRequest};
use serde::Deserialize;

use crate::error::ApiError;

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Read changes, documents, digests, peers, state vectors, recover.
    Read,
    /// Follow changes live (the subscribe socket; `/yws`).
    Subscribe,
    /// Push updates.
    Write,
    /// Acknowledge a cursor.
    Ack,
    /// Delete a document.
    Delete,
    /// Run compaction.
    Compact,
}

impl Operation {
    /// The right a token must carry for it.
    pub fn right(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Subscribe => "subscribe",
            Operation::Write => "write",
            Operation::Ack => "ack",
            Operation::Delete => "delete",
            Operation::Compact => "compact",
        }
    }
}

/// One authorization question.
#[derive(Clone, Copy, Debug)]
pub struct AccessRequest<'a> {
    /// The collection.
    pub collection: &'a str,
    /// The document, where the route names one (`None`: the whole
    /// collection, which a token for one document does not cover).
    pub doc: Option<&'a str>,
    /// What the request does.
    pub operation: Operation,
}

impl<'a> AccessRequest<'a> {
    /// A request on the whole collection.
    pub fn collection(collection: &'a str, operation: Operation) -> Self {
        Self {
            collection,
            doc: None,
            operation,
        }
    }

    /// A request on one document.
    pub fn document(collection: &'a str, doc: &'a str, operation: Operation) -> Self {
        Self {
            collection,
            doc: Some(doc),
            operation,
        }
    }
}

/// Allows or refuses requests. Implemented by the host.
pub trait Authorizer: Send + Sync + 'static {
    /// `Ok` to let the request through. Must not block.
    fn authorize(&self, req: &HttpRequest, request: &AccessRequest<'_>) -> Result<(), ApiError>;
}

/// What a signed token says (JSON claims of a JWT).
#[derive(Clone, Debug, Deserialize)]
pub struct TokenClaims {
    /// The collection it is for, or `*` for every collection.
    pub col: String,
    /// The one document it is for, if any.
    #[serde(default)]
    pub doc: Option<String>,
    /// Its rights: operations by name (`read`, `subscribe`, `write`, `ack`,
    /// `delete`, `compact`); `read` includes `subscribe`, `write` includes
    /// `ack`.
    pub rights: Vec<String>,
    /// Expiry, seconds since the Unix epoch (required).
    pub exp: u64,
    /// Who the token is for (the app's user id). Recorded as the author of
    /// every change pushed with it (`history`, webhooks); optional.
    #[serde(default)]
    pub sub: Option<String>,
}

/// The authenticated subject of a request: an [`Authorizer`] that knows who
/// is asking puts it into the request's extensions
/// (`req.extensions_mut().insert(Subject(..))`), and the routes record it
/// as the author of every change the request writes. [`Tokens`] inserts a
/// signed token's `sub`. A subject the engine refuses (empty, over 256
/// bytes, control characters) is refused with `invalid_name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject(pub String);

/// The subject an authorizer recorded for `req`, if any.
pub(crate) fn subject_of(req: &HttpRequest) -> Option<String> {
    req.extensions().get::<Subject>().map(|s| s.0.clone())
}

impl TokenClaims {
    fn allows(&self, request: &AccessRequest<'_>) -> Result<(), &'static str> {
        if self.col != "*" && self.col != request.collection {
            return Err("this token is for another collection");
        }
        if let Some(doc) = &self.doc {
            match request.doc {
                Some(asked) if asked == doc => {}
                Some(_) => return Err("this token is for another document"),
                None => return Err("this token is for one document, not the whole collection"),
            }
        }
        let has = |right: &str| self.rights.iter().any(|r| r == right);
        let granted = has(request.operation.right())
            || (request.operation == Operation::Subscribe && has("read"))
            || (request.operation == Operation::Ack && has("write"));
        if granted {
            Ok(())
        } else {
            Err("this token does not carry the right for this operation")
        }
    }
}

/// How signed tokens are checked.
enum Verifier {
    /// HS256 with a shared secret.
    Hs256(jsonwebtoken::DecodingKey),
    /// EdDSA (Ed25519) with a public key.
    EdDsa(jsonwebtoken::DecodingKey),
}

/// The server's authorizer: static bearer tokens and signed tokens.
pub struct Tokens {
    read_token: String,
    write_token: String,
    verifier: Option<Verifier>,
}

/// The static bearer tokens alone (kept for hosts that built one before
/// signed tokens existed).
pub type BearerTokens = Tokens;

impl Tokens {
    /// Static tokens only. Empty strings mean "no such token"; both empty
    /// turns auth off.
    pub fn new(read_token: impl Into<String>, write_token: impl Into<String>) -> Self {
        Self {
            read_token: read_token.into(),
            write_token: write_token.into(),
            verifier: None,
        }
    }

    /// From `[server]`: the static tokens, and a signed-token verifier when
    /// `token_secret` or `token_public_key` is set (not both).
    ///
    /// Errors: both set, or a public key that is not an Ed25519 PEM (or a
    /// readable file holding one), as a message naming the key.
    pub fn from_config(config: &crate::config::ServerConfig) -> Result<Self, String> {
        let mut tokens = Self::new(config.read_token.clone(), config.write_token.clone());
        tokens.verifier = match (
            config.token_secret.is_empty(),
            config.token_public_key.is_empty(),
        ) {
            (true, true) => None,
            (false, true) => Some(Verifier::Hs256(jsonwebtoken::DecodingKey::from_secret(
                config.token_secret.as_bytes(),
            ))),
            (true, false) => {
                let pem = if config.token_public_key.contains("-----BEGIN") {
                    config.token_public_key.clone()
                } else {
                    std::fs::read_to_string(&config.token_public_key).map_err(|e| {
                        format!(
                            "server.token_public_key: cannot read {}: {e}",
                            config.token_public_key
                        )
                    })?
                };
                Some(Verifier::EdDsa(
                    jsonwebtoken::DecodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| {
                        format!("server.token_public_key: not an Ed25519 public key in PEM: {e}")
                    })?,
                ))
            }
            (false, false) => {
                return Err(
                    "server.token_secret and server.token_public_key are both set: choose one"
                        .to_owned(),
                )
            }
        };
        Ok(tokens)
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

    fn open(&self) -> bool {
        self.read_token.is_empty() && self.write_token.is_empty() && self.verifier.is_none()
    }

    fn claims(&self, token: &str) -> Option<Result<TokenClaims, String>> {
        let (key, algorithm) = match self.verifier.as_ref()? {
            Verifier::Hs256(key) => (key, jsonwebtoken::Algorithm::HS256),
            Verifier::EdDsa(key) => (key, jsonwebtoken::Algorithm::EdDSA),
        };
        let mut validation = jsonwebtoken::Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = 0;
        Some(
            jsonwebtoken::decode::<TokenClaims>(token, key, &validation)
                .map(|data| data.claims)
                .map_err(|e| match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                        "the token has expired".to_owned()
                    }
                    _ => format!("the token is not valid: {e}"),
                }),
        )
    }
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// Compares two secrets in time that depends on their lengths only, not on
/// where they differ (a timing side channel would let a client guess a
/// token byte by byte).
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Authorizer for Tokens {
    fn authorize(&self, req: &HttpRequest, request: &AccessRequest<'_>) -> Result<(), ApiError> {
        if self.open() {
            return Ok(());
        }
        let Some(token) = Self::presented(req) else {
            return Err(unauthorized("send Authorization: Bearer <token>"));
        };
        let writes = !self.write_token.is_empty() && constant_time_eq(&token, &self.write_token);
        let reads =
            writes || (!self.read_token.is_empty() && constant_time_eq(&token, &self.read_token));
        if writes {
            return Ok(());
        }
        if reads {
            return match request.operation {
                Operation::Read | Operation::Subscribe => Ok(()),
                _ => Err(forbidden("this token may read but not write")),
            };
        }
        match self.claims(&token) {
            Some(Ok(claims)) => {
                claims.allows(request).map_err(forbidden)?;
                if let Some(sub) = claims.sub {
                    req.extensions_mut().insert(Subject(sub));
                }
                Ok(())
            }
            Some(Err(why)) => Err(unauthorized(why)),
            None => Err(unauthorized("unknown token")),
        }
    }
}
