//! Request bodies bounded before they are read.
//!
//! A `Content-Length` above `limits.max_body_bytes` is answered 413 at
//! once, so a client cannot make the server read (or wait for) a body it
//! would refuse anyway; a body that arrives without a declared length is
//! bounded while it is read (`routes::read_body`).

use actix_web::http::StatusCode;

use crate::error::ApiError;

use super::refused;

/// The 413 for a request whose `Content-Length` exceeds
/// `limits.max_body_bytes`, answered before the body is read (counted as
/// `body_too_large`); `None` for every other request.
pub(crate) fn declared_body_too_large(
    req: &actix_web::dev::ServiceRequest,
    max_body_bytes: u64,
) -> Option<ApiError> {
    let declared: u64 = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if declared <= max_body_bytes {
        return None;
    }
    refused("body_too_large");
    Some(ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!(
            "the body declares {declared} bytes, above {max_body_bytes} (limits.max_body_bytes)"
        ),
    ))
}
