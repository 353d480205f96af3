//! WebSocket frames bounded from their headers, before their payload is
//! buffered.
//!
//! actix-http checks a frame's length only once the whole frame is
//! buffered, so this module follows the client's byte stream frame by frame
//! (RFC 6455 §5.2) and refuses a frame from its declared length alone; the
//! upgrade that `/yws`, the sync socket and the subscribe socket share is
//! built on it, and so is the close code a client's protocol error gets.

use crate::config::ServerLimits;

use crate::error::ApiError;

use super::refused;

/// The close frame for a client's protocol error: a message over
/// `limits.max_message_bytes` is 1009 (message too big, counted as
/// `message_too_big`); anything else is 1002 (protocol error).
pub(crate) fn protocol_close(err: &actix_ws::ProtocolError) -> actix_ws::CloseReason {
    use actix_ws::{CloseCode, CloseReason, ProtocolError};
    let guarded_overflow = matches!(err, ProtocolError::Io(io) if io
        .get_ref()
        .and_then(|e| e.downcast_ref::<actix_web::error::PayloadError>())
        .is_some_and(|e| matches!(e, actix_web::error::PayloadError::Overflow)));
    match err {
        _ if guarded_overflow => {
            refused("message_too_big");
            CloseReason {
                code: CloseCode::Size,
                description: Some("message_too_big: limits.max_message_bytes".to_owned()),
            }
        }
        ProtocolError::Overflow => {
            refused("message_too_big");
            CloseReason {
                code: CloseCode::Size,
                description: Some("message_too_big: limits.max_message_bytes".to_owned()),
            }
        }
        other => CloseReason {
            code: CloseCode::Protocol,
            description: Some(
                format!("protocol_error: {other}")
                    .chars()
                    .take(120)
                    .collect(),
            ),
        },
    }
}

/// Upgrades `req` to a WebSocket of binary messages bounded by
/// `limits.max_message_bytes`: the body is guarded (see
/// [`guarded_websocket_body`]), and a frame or a fragmented message over
/// the limit is refused from its header, before its payload is buffered
/// (1009). What `/yws` and the sync socket share.
///
/// Errors: 400 `invalid_body` or `not_a_websocket`.
pub(crate) async fn upgrade_bounded(
    req: &actix_web::HttpRequest,
    body: actix_web::web::Payload,
    limits: &ServerLimits,
) -> Result<
    (
        actix_web::HttpResponse,
        actix_ws::Session,
        actix_ws::AggregatedMessageStream,
    ),
    ApiError,
> {
    let body = guarded_websocket_body(req, body, limits.max_message_bytes)
        .await
        .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
    let (response, session, incoming) = actix_ws::handle(req, body)
        .map_err(|e| ApiError::bad_request("not_a_websocket", e.to_string()))?;
    let limit = usize::try_from(limits.max_message_bytes).unwrap_or(usize::MAX);
    let incoming = incoming
        .max_frame_size(limit)
        .aggregate_continuations()
        .max_continuation_size(limit);
    Ok((response, session, incoming))
}

/// A WebSocket's incoming bytes, guarded before actix-ws sees them.
///
/// Why: actix-http's frame parser checks a frame's length against its limit
/// only once the *whole frame* is buffered, and actix-ws's message stream
/// reads every chunk the connection has before it decodes anything. A
/// client streaming one 100 MB frame made the server hold 100 MB (the
/// hostile suite measured +95 MiB) before refusing it. So this stream reads
/// each frame's header as the bytes pass and fails with
/// `PayloadError::Overflow` (closed 1009 by [`protocol_close`]) as soon as
/// a header declares more than `max_message_bytes`; and it hands over one
/// chunk per poll, so actix-ws decodes as it goes and buffers at most one
/// message plus one chunk.
pub(crate) async fn guarded_websocket_body(
    req: &actix_web::HttpRequest,
    body: actix_web::web::Payload,
    max_message_bytes: u64,
) -> Result<actix_web::web::Payload, actix_web::Error> {
    let stream = OneChunkPerPoll {
        inner: body.into_inner(),
        yielded: false,
        frames: FrameHeaders::new(max_message_bytes),
    };
    let boxed: std::pin::Pin<
        Box<
            dyn futures::Stream<
                Item = Result<actix_web::web::Bytes, actix_web::error::PayloadError>,
            >,
        >,
    > = Box::pin(stream);
    let mut payload = actix_web::dev::Payload::Stream { payload: boxed };
    <actix_web::web::Payload as actix_web::FromRequest>::from_request(req, &mut payload).await
}

struct OneChunkPerPoll {
    inner: actix_web::dev::Payload,
    yielded: bool,
    frames: FrameHeaders,
}

/// Follows the frame boundaries of a client's WebSocket byte stream (RFC
/// 6455 §5.2) to read each frame's declared payload length from its header.
struct FrameHeaders {
    max_frame_bytes: u64,
    /// The header being read (at most 2 + 8 + 4 bytes).
    header: [u8; 14],
    header_len: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: u64,
}

impl FrameHeaders {
    fn new(max_frame_bytes: u64) -> Self {
        Self {
            max_frame_bytes,
            header: [0; 14],
            header_len: 0,
            payload_left: 0,
        }
    }

    /// Feeds the next bytes; `Err(declared)` when a frame header declares
    /// more than the limit.
    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), u64> {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skip = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.payload_left -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            self.header[self.header_len] = bytes[0];
            self.header_len += 1;
            bytes = &bytes[1..];
            if let Some(declared) = self.complete_header() {
                if declared > self.max_frame_bytes {
                    return Err(declared);
                }
                self.payload_left = declared;
                self.header_len = 0;
            }
        }
        Ok(())
    }

    /// The payload length once the header is complete.
    fn complete_header(&self) -> Option<u64> {
        if self.header_len < 2 {
            return None;
        }
        let short = u64::from(self.header[1] & 0x7f);
        let extended = match short {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        if self.header_len < 2 + extended + mask {
            return None;
        }
        Some(match extended {
            0 => short,
            _ => self.header[2..2 + extended]
                .iter()
                .fold(0u64, |len, byte| (len << 8) | u64::from(*byte)),
        })
    }
}

impl futures::Stream for OneChunkPerPoll {
    type Item = Result<actix_web::web::Bytes, actix_web::error::PayloadError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.yielded {
            // Make the reader stop and decode what it has; it is polled
            // again at once.
            self.yielded = false;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        let next = std::pin::Pin::new(&mut self.inner).poll_next(cx);
        if let std::task::Poll::Ready(Some(Ok(chunk))) = &next {
            self.yielded = true;
            if self.frames.feed(chunk).is_err() {
                return std::task::Poll::Ready(Some(Err(actix_web::error::PayloadError::Overflow)));
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frame headers are found across chunk boundaries, and the first one
    /// over the limit is reported from its header alone.
    #[test]
    fn frame_headers_are_followed_across_chunks() {
        let mut frames = FrameHeaders::new(1000);
        // A masked 5-byte frame, then a masked 300-byte frame (16-bit
        // length), split at awkward places.
        let mut stream = vec![0x82, 0x85, 1, 2, 3, 4, 10, 11, 12, 13, 14];
        stream.extend_from_slice(&[0x82, 0xfe, 0x01, 0x2c, 9, 9, 9, 9]);
        stream.extend(std::iter::repeat_n(7u8, 300));
        for chunk in stream.chunks(3) {
            frames.feed(chunk).unwrap();
        }
        assert_eq!((frames.header_len, frames.payload_left), (0, 0));
        // A 64-bit length of 100 MB: refused with only its header seen.
        let mut big = vec![0x82, 0xff];
        big.extend_from_slice(&(100u64 << 20).to_be_bytes());
        big.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(frames.feed(&big[..5]), Ok(()));
        assert_eq!(frames.feed(&big[5..]), Err(100 << 20));
    }
}
