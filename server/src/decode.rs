//! Pure decoders for what clients send the host server: request bodies,
//! query strings and y-websocket frames.
//!
//! Every function here takes bytes or a string and returns a typed value or a
//! typed error; none touches a request, a socket or the engine, so each can be
//! unit-tested and fuzzed on its own (`fuzz/fuzz_targets/http_bodies.rs`).
//! The routes call them after reading the body (size limits are the routes'
//! business) and before calling the engine (names and update contents are the
//! engine's business).
//!
//! Guarantees shared by every decoder:
//! - it never panics, whatever the input;
//! - an HTTP decoder's error is an [`ApiError`] with status 400 and a stable
//!   code (`invalid_json`, `invalid_base64`, `invalid_query`), the answer the
//!   route sends unchanged.

use std::collections::HashMap;

use actix_web::web;
use seqsync_engine::{Epoch, Seq};
use seqsync_protocol::http::{AckRequest, BatchRequest, RecoverCollectionRequest};
use yrs::sync::Message;
use yrs::updates::decoder::Decode;

use crate::error::ApiError;

/// A JSON body that does not parse as its protocol type: `invalid_base64`
/// when a bytes field is not base64 (the error names the field's place),
/// `invalid_json` otherwise, with the expected shape.
fn json_error(err: serde_json::Error, expected: &str) -> ApiError {
    if err.to_string().contains("base64") {
        ApiError::bad_request("invalid_base64", format!("{expected}: {err}"))
    } else {
        ApiError::bad_request("invalid_json", format!("expected {expected}: {err}"))
    }
}

/// Decodes the body of `POST /v1/collections/{c}/batch`:
/// `{"updates":[{"doc":"…","update":"<base64>"}, …]}`.
///
/// Returns the `(doc, update bytes)` pairs in body order. The document ids and
/// the update bytes are not validated here (the engine does that); an empty
/// `updates` list decodes to an empty vector.
///
/// Errors (status 400):
/// - `invalid_json`: not UTF-8 JSON of exactly that shape (unknown fields,
///   missing fields and trailing data are refused);
/// - `invalid_base64`: an `update` is not standard padded base64; the
///   message gives its place (line and column).
pub fn decode_batch_body(body: &[u8]) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
    let batch: BatchRequest = serde_json::from_slice(body)
        .map_err(|e| json_error(e, "{\"updates\":[{\"doc\":\"…\",\"update\":\"<base64>\"}]}"))?;
    Ok(batch
        .updates
        .into_iter()
        .map(|item| (item.doc, item.update.0))
        .collect())
}

/// Decodes the body of `POST /v1/collections/{c}/recover`:
/// `{"state_vectors": {"<doc>": "<base64 state vector>"}}` (a missing
/// document means "send its full state"; an empty body object is fine).
///
/// Errors: `invalid_json` or `invalid_base64` (status 400) giving the
/// place (line and column) of the bad value.
pub fn decode_recover_collection_body(body: &[u8]) -> Result<HashMap<String, Vec<u8>>, ApiError> {
    let request: RecoverCollectionRequest = serde_json::from_slice(body)
        .map_err(|e| json_error(e, "{\"state_vectors\":{\"<doc>\":\"<base64>\"}}"))?;
    Ok(request
        .state_vectors
        .into_iter()
        .map(|(doc, sv)| (doc, sv.0))
        .collect())
}

/// Decodes the body of `POST /v1/collections/{c}/peers/{p}/ack`: `{"seq": n}`
/// with `n` a non-negative integer that fits a `u64`.
///
/// Returns `n`; whether it is within the collection's head is the engine's
/// check. Errors: `invalid_json` (status 400) for anything else, including
/// unknown fields, a negative or fractional `n`, and trailing data.
pub fn decode_ack_body(body: &[u8]) -> Result<Seq, ApiError> {
    let request: AckRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("expected {{\"seq\": n}}: {e}"))
    })?;
    Ok(request.seq)
}

/// `after`, `limit` and `epoch` of a change-reading query string
/// (`GET …/changes`, `GET …/subscribe`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CursorQuery {
    /// Read the changes with seq > `after`; 0 when absent.
    pub after: Seq,
    /// Page size asked for, if any (the route applies its default and the
    /// engine its cap).
    pub limit: Option<u64>,
    /// The epoch the client's cursor belongs to, if it sent one.
    pub epoch: Option<Epoch>,
    /// Only this document's changes (the subscribe socket's `doc=`); the
    /// engine validates the id.
    pub doc: Option<String>,
    /// The log checksum the client holds at `after` (16 hex digits), to
    /// detect a history replaced under its cursor.
    pub checksum: Option<u64>,
}

/// Decodes a query string (without the leading `?`) into a [`CursorQuery`].
///
/// The string is `application/x-www-form-urlencoded`; keys other than
/// `after`, `limit`, `epoch` and `doc` are ignored, and when a key repeats the last
/// value wins. `after` and `limit` must be decimal integers that fit a `u64`
/// (`str::parse`, so a leading `+` is accepted); `epoch` must be exactly 32
/// hex digits (the form the server answers with).
///
/// Errors: `invalid_query` (status 400) when the string does not decode as
/// form data or a value is malformed; the message names the key.
pub fn decode_cursor_query(query: &str) -> Result<CursorQuery, ApiError> {
    let pairs = web::Query::<HashMap<String, String>>::from_query(query)
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?
        .into_inner();
    let number = |key: &str| -> Result<Option<u64>, ApiError> {
        pairs
            .get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(
                        "invalid_query",
                        format!("{key}={v:?} is not a non-negative integer"),
                    )
                })
            })
            .transpose()
    };
    let epoch = pairs
        .get("epoch")
        .map(|v| {
            Epoch::parse_hex(v).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("epoch={v:?} is not a 32-digit hex epoch"),
                )
            })
        })
        .transpose()?;
    let checksum = pairs
        .get("checksum")
        .map(|v| {
            u64::from_str_radix(v, 16).map_err(|_| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("checksum={v:?} is not a 16-digit hex log checksum"),
                )
            })
        })
        .transpose()?;
    Ok(CursorQuery {
        after: number("after")?.unwrap_or(0),
        limit: number("limit")?,
        epoch,
        doc: pairs.get("doc").cloned(),
        checksum,
    })
}

/// `after` and `limit` of a listing's query string (`GET /v1/collections`,
/// `GET …/documents`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListingQuery {
    /// List the names after this one; from the first when absent.
    pub after: Option<String>,
    /// Page size asked for, if any (the engine clamps it).
    pub limit: Option<u64>,
}

/// Decodes a listing's query string (without the leading `?`).
///
/// Errors: `invalid_query` (status 400) when the string does not decode or
/// `limit` is not a non-negative integer.
pub fn decode_listing_query(query: &str) -> Result<ListingQuery, ApiError> {
    let pairs = web::Query::<HashMap<String, String>>::from_query(query)
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?
        .into_inner();
    let limit = pairs
        .get("limit")
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("limit={v:?} is not a non-negative integer"),
                )
            })
        })
        .transpose()?;
    Ok(ListingQuery {
        after: pairs.get("after").cloned(),
        limit,
    })
}

/// How `GET …/documents/{d}` answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocumentFormat {
    /// The state as a Yjs v1 update (the default).
    Yjs,
    /// The root types as JSON (`?format=json`).
    Json,
}

/// What a document read's query string asks (`GET …/documents/{d}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentQuery {
    /// How to answer.
    pub format: DocumentFormat,
    /// The document as of this collection seq (`?at=SEQ`); now when absent.
    pub at: Option<u64>,
    /// The document as of this moment (`?at_ms=MS`, ms since the Unix
    /// epoch); never together with `at`.
    pub at_ms: Option<u64>,
    /// The document as of its named version (`?version=NAME`); never
    /// together with `at` or `at_ms`.
    pub version: Option<String>,
}

/// Decodes a document read's query string: `format`, and one of `at`,
/// `at_ms` and `version`.
///
/// Errors: `invalid_query` for a format other than `yjs` or `json`, an
/// `at` or `at_ms` that is not a non-negative integer, or two of them.
pub fn decode_document_query(query: &str) -> Result<DocumentQuery, ApiError> {
    let pairs = web::Query::<HashMap<String, String>>::from_query(query)
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?
        .into_inner();
    let format = match pairs.get("format").map(String::as_str) {
        None | Some("yjs") => DocumentFormat::Yjs,
        Some("json") => DocumentFormat::Json,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("format={other:?}: use yjs (the default) or json"),
            ))
        }
    };
    let number = |key: &str, what: &str| {
        pairs
            .get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(
                        "invalid_query",
                        format!("{key}={v:?} is not a non-negative integer ({what})"),
                    )
                })
            })
            .transpose()
    };
    let at = number("at", "a collection seq")?;
    let at_ms = number("at_ms", "ms since the Unix epoch")?;
    let version = pairs.get("version").cloned();
    let asked = [at.is_some(), at_ms.is_some(), version.is_some()];
    if asked.iter().filter(|a| **a).count() > 1 {
        return Err(ApiError::bad_request(
            "invalid_query",
            "give one of at (a seq), at_ms (a moment) and version (a name)",
        ));
    }
    Ok(DocumentQuery {
        format,
        at,
        at_ms,
        version,
    })
}

/// The `schema` key of a `/yws` query string: the client's schema version,
/// if it says.
///
/// Errors: `invalid_query` (status 400) when the string does not decode or
/// `schema` is not a non-negative 32-bit integer.
pub fn decode_yws_schema(query: &str) -> Result<Option<u32>, ApiError> {
    let pairs = web::Query::<HashMap<String, String>>::from_query(query)
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?
        .into_inner();
    pairs
        .get("schema")
        .map(|v| {
            v.parse::<u32>().map_err(|_| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("schema={v:?} is not a schema version (a non-negative integer)"),
                )
            })
        })
        .transpose()
}

/// A binary frame that is not a y-websocket message; the text is the
/// decoder's reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YwsDecodeError(pub String);

impl std::fmt::Display for YwsDecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for YwsDecodeError {}

/// Decodes one binary y-websocket frame (v1 encoding) into a
/// [`yrs::sync::Message`]: sync step 1 / step 2 / update, awareness,
/// awareness query, auth or a custom message.
///
/// It decodes like `Message::decode_v1` (what the `/yws` route applies to
/// each client frame) but never panics: yrs asserts on some malformed
/// frames in builds with debug assertions (an awareness entry or a state
/// vector naming a client id of 2^53 or more; found by `fuzz/`), and such a panic
/// becomes an error here, as `seqsync_engine::decode_update` does for updates.
/// The update bytes inside a sync message are not decoded here (the engine
/// decodes them when pushed). Errors: a truncated frame, an unknown message
/// or sync tag, a malformed varint, or a frame the decoder panicked on.
pub fn decode_yws_message(frame: &[u8]) -> Result<Message, YwsDecodeError> {
    match std::panic::catch_unwind(|| Message::decode_v1(frame)) {
        Ok(Ok(message)) => Ok(message),
        Ok(Err(e)) => Err(YwsDecodeError(e.to_string())),
        Err(_) => Err(YwsDecodeError("the decoder rejected the frame".to_owned())),
    }
}

/// Decodes a y-protocols awareness update (what the sync socket's
/// `awareness` frame carries): `count`, then per client its id, clock and
/// JSON state. Never panics (see [`decode_yws_message`]). Errors: truncated
/// or malformed bytes, or bytes left over.
pub fn decode_awareness_update(
    update: &[u8],
) -> Result<yrs::sync::awareness::AwarenessUpdate, YwsDecodeError> {
    use yrs::updates::decoder::{Decoder, DecoderV1};
    // The count first: each entry takes at least three bytes (id, clock,
    // an empty string's length), so a count the bytes cannot hold is
    // refused before the decoder reserves room for it.
    let mut reader = seqsync_protocol::sync::Reader::new(update);
    let count = reader
        .varuint("count")
        .map_err(|e| YwsDecodeError(e.to_string()))?;
    if count.saturating_mul(3) > reader.remaining() as u64 {
        return Err(YwsDecodeError(format!(
            "an awareness update of {count} clients in {} bytes",
            update.len()
        )));
    }
    let decoded = std::panic::catch_unwind(|| {
        let mut decoder = DecoderV1::from(update);
        let value = yrs::sync::awareness::AwarenessUpdate::decode(&mut decoder)?;
        Ok::<_, yrs::encoding::read::Error>((value, decoder.read_to_end()?.is_empty()))
    });
    match decoded {
        Ok(Ok((value, true))) => Ok(value),
        Ok(Ok((_, false))) => Err(YwsDecodeError(
            "bytes after the awareness update".to_owned(),
        )),
        Ok(Err(e)) => Err(YwsDecodeError(e.to_string())),
        Err(_) => Err(YwsDecodeError("the decoder rejected the update".to_owned())),
    }
}
