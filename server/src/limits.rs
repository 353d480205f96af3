//! What one client may cost the server, enforced at the edge.
//!
//! A sync server takes bytes from anyone holding a token, so every resource
//! a client can make the server hold is bounded by a `[limits]` key (see
//! `LimitsConfig`), and every refusal is answered in a way the client can
//! read (an HTTP status with the JSON error body, or a WebSocket close code
//! with a reason) and counted in `seqsync_refused_total{reason=…}`:
//!
//! | resource | bound | answer |
//! |---|---|---|
//! | open WebSockets, in total and per collection | [`ConnectionLimits`] | 503 `too_many_connections` |
//! | one WebSocket message | `max_message_bytes` | close 1009 |
//! | a request body | `max_body_bytes`, `body_timeout_ms` | 413 `too_large`, 408 `body_timeout` |
//! | request headers | `client_request_timeout_ms` (actix) | 408 |
//! | awareness messages | [`AwarenessBudget`] | dropped |
//! | a socket that sends nothing | `ws_idle_timeout_ms` | close 1001 `idle` |
//! | a socket that reads nothing | `ws_send_timeout_ms` | close 1008 `slow_reader` |
//!
//! Memory per WebSocket is then bounded too: actix-ws queues at most 32
//! messages for the socket, the engine's subscriber buffer is bounded (a
//! full one falls back to storage reads), and the room's awareness relay is
//! a bounded broadcast channel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use seqsync_engine::LimitsConfig;

use crate::error::ApiError;

/// Counts a refusal in `seqsync_refused_total{reason}`.
pub(crate) fn refused(reason: &'static str) {
    metrics::counter!("seqsync_refused_total", "reason" => reason).increment(1);
}

/// Open WebSockets, in total and per collection.
#[derive(Default)]
pub(crate) struct ConnectionLimits {
    total: AtomicU64,
    per_collection: Mutex<HashMap<String, u64>>,
}

impl ConnectionLimits {
    /// Takes a slot for a WebSocket on `collection`, or answers 503
    /// `too_many_connections` naming the limit. The slot is given back when
    /// the returned guard drops (the socket's task ends).
    pub(crate) fn admit(
        self: &Arc<Self>,
        limits: &LimitsConfig,
        collection: &str,
    ) -> Result<ConnectionSlot, ApiError> {
        let mut per_collection = match self.per_collection.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        let total = self.total.load(Ordering::Relaxed);
        if total >= limits.max_connections {
            refused("too_many_connections");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                format!(
                    "the server holds {total} WebSockets, its limit (limits.max_connections); \
                     retry later"
                ),
            ));
        }
        let open = per_collection.get(collection).copied().unwrap_or(0);
        if open >= limits.max_connections_per_collection {
            refused("too_many_collection_connections");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                format!(
                    "collection {collection} has {open} WebSockets open, its limit \
                     (limits.max_connections_per_collection); retry later"
                ),
            ));
        }
        per_collection.insert(collection.to_owned(), open + 1);
        self.total.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("seqsync_websockets_open").set((total + 1) as f64);
        Ok(ConnectionSlot {
            limits: self.clone(),
            collection: collection.to_owned(),
        })
    }

    /// Open WebSockets in total.
    #[cfg(test)]
    pub(crate) fn open(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// One admitted WebSocket; dropping it frees the slot.
pub(crate) struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    collection: String,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut per_collection = match self.limits.per_collection.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(open) = per_collection.get_mut(&self.collection) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                per_collection.remove(&self.collection);
            }
        }
        let before = self.limits.total.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("seqsync_websockets_open").set(before.saturating_sub(1) as f64);
    }
}

/// A token bucket for one connection's awareness messages: it refills at
/// `per_sec` and holds two seconds' worth, so a client's normal bursts (a
/// cursor moved while typing) pass and a flood is cut to the rate.
pub(crate) struct AwarenessBudget {
    per_sec: f64,
    capacity: f64,
    tokens: f64,
    refilled: Instant,
}

impl AwarenessBudget {
    pub(crate) fn new(per_sec: u64) -> Self {
        let per_sec = per_sec.max(1) as f64;
        Self {
            per_sec,
            capacity: per_sec * 2.0,
            tokens: per_sec * 2.0,
            refilled: Instant::now(),
        }
    }

    /// How long one token takes to refill.
    pub(crate) fn refill_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.per_sec)
    }

    /// Whether one more message fits now (and takes its token).
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

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
    limits: &LimitsConfig,
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

/// A WebSocket session whose every send gives up after
/// `limits.ws_send_timeout_ms`: a client that stops reading fills its
/// kernel buffer and then the session's queue (32 messages), and without a
/// deadline the connection's task would wait on it for ever. A send that
/// times out fails like a send to a closed socket, and the close that
/// follows says `slow_reader` (1008), counted once.
pub(crate) struct TimedSession {
    inner: actix_ws::Session,
    timeout: Duration,
    stalled: bool,
}

impl TimedSession {
    pub(crate) fn new(inner: actix_ws::Session, limits: &LimitsConfig) -> Self {
        Self {
            inner,
            timeout: millis(limits.ws_send_timeout_ms),
            stalled: false,
        }
    }

    /// Runs one send under the deadline (fields borrowed apart, so the
    /// session itself is not cloned per message).
    async fn timed<F>(
        stalled: &mut bool,
        timeout: Duration,
        send: F,
    ) -> Result<(), actix_ws::Closed>
    where
        F: std::future::Future<Output = Result<(), actix_ws::Closed>>,
    {
        if *stalled {
            return Err(actix_ws::Closed);
        }
        match tokio::time::timeout(timeout, send).await {
            Ok(result) => result,
            Err(_) => {
                *stalled = true;
                refused("slow_reader");
                Err(actix_ws::Closed)
            }
        }
    }

    /// Sends a binary message. Errors: the socket is closed or stalled.
    pub(crate) async fn binary(
        &mut self,
        message: impl Into<actix_web::web::Bytes>,
    ) -> Result<(), actix_ws::Closed> {
        Self::timed(&mut self.stalled, self.timeout, self.inner.binary(message)).await
    }

    /// Sends a text message. Errors: the socket is closed or stalled.
    pub(crate) async fn text(&mut self, message: String) -> Result<(), actix_ws::Closed> {
        Self::timed(&mut self.stalled, self.timeout, self.inner.text(message)).await
    }

    /// Sends one fragment of a message. Errors: closed or stalled.
    pub(crate) async fn continuation(
        &mut self,
        item: actix_ws::Item,
    ) -> Result<(), actix_ws::Closed> {
        Self::timed(
            &mut self.stalled,
            self.timeout,
            self.inner.continuation(item),
        )
        .await
    }

    /// Answers a ping. Errors: closed or stalled.
    pub(crate) async fn pong(&mut self, bytes: &[u8]) -> Result<(), actix_ws::Closed> {
        Self::timed(&mut self.stalled, self.timeout, self.inner.pong(bytes)).await
    }

    /// Sends a ping. Errors: closed or stalled.
    pub(crate) async fn ping(&mut self) -> Result<(), actix_ws::Closed> {
        Self::timed(&mut self.stalled, self.timeout, self.inner.ping(b"")).await
    }

    /// Closes the socket with `reason`, or with `slow_reader` if a send
    /// stalled; gives up after the send timeout (dropping the session then
    /// ends the connection anyway).
    pub(crate) async fn close(self, reason: Option<actix_ws::CloseReason>) {
        let reason = if self.stalled {
            Some(actix_ws::CloseReason {
                code: actix_ws::CloseCode::Policy,
                description: Some("slow_reader: limits.ws_send_timeout_ms".to_owned()),
            })
        } else {
            reason
        };
        let _ = tokio::time::timeout(self.timeout, self.inner.close(reason)).await;
    }
}

/// When a WebSocket has been silent too long: a ping goes out every
/// `limits.ws_ping_interval_ms`, and a socket from which nothing arrived
/// (not even a pong) for `limits.ws_idle_timeout_ms` is closed (1001,
/// `idle`), so dead peers and idle attackers do not hold slots.
pub(crate) struct Liveness {
    pub(crate) ping: tokio::time::Interval,
    idle_timeout: Duration,
    last_heard: tokio::time::Instant,
}

impl Liveness {
    pub(crate) fn new(limits: &LimitsConfig) -> Self {
        let period = millis(limits.ws_ping_interval_ms);
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            ping,
            idle_timeout: millis(limits.ws_idle_timeout_ms),
            last_heard: tokio::time::Instant::now(),
        }
    }

    /// Something arrived from the client.
    pub(crate) fn heard(&mut self) {
        self.last_heard = tokio::time::Instant::now();
    }

    /// At a ping tick: the close reason if the socket is idle (counted),
    /// else `None` (send a ping).
    pub(crate) fn idle(&self) -> Option<actix_ws::CloseReason> {
        if self.last_heard.elapsed() < self.idle_timeout {
            return None;
        }
        refused("idle");
        Some(actix_ws::CloseReason {
            code: actix_ws::CloseCode::Away,
            description: Some("idle: limits.ws_idle_timeout_ms".to_owned()),
        })
    }
}

/// `ms` as a `Duration`.
pub(crate) fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
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

    /// A flood is cut to the rate while a burst of twice the rate passes.
    #[test]
    fn awareness_budget_passes_a_burst_and_cuts_a_flood() {
        let start = Instant::now();
        let mut budget = AwarenessBudget::new(10);
        let passed = (0..1000).filter(|_| budget.allow(start)).count();
        assert_eq!(passed, 20, "two seconds' worth at once");
        let later = start + Duration::from_millis(500);
        let passed = (0..1000).filter(|_| budget.allow(later)).count();
        assert_eq!(passed, 5, "half a second refills five");
    }

    /// Slots are per collection and in total, and come back on drop.
    #[test]
    fn connection_slots_are_counted_and_given_back() {
        let limits = LimitsConfig {
            max_connections: 3,
            max_connections_per_collection: 2,
            ..LimitsConfig::default()
        };
        let counter = Arc::new(ConnectionLimits::default());
        let a1 = counter.admit(&limits, "a").unwrap();
        let _a2 = counter.admit(&limits, "a").unwrap();
        let err = counter.admit(&limits, "a").err().unwrap();
        assert_eq!(err.code(), "too_many_connections");
        let _b1 = counter.admit(&limits, "b").unwrap();
        assert!(counter.admit(&limits, "c").is_err(), "three in total");
        drop(a1);
        assert_eq!(counter.open(), 2);
        assert!(counter.admit(&limits, "a").is_ok());
    }
}
