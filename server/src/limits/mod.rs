//! What one client may cost the server, enforced at the edge.
//!
//! A sync server takes bytes from anyone holding a token, so every resource
//! a client can make the server hold is bounded by a `[limits]` key (see
//! `ServerLimits`), and every refusal is answered in a way the client can
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
//!
//! One mechanism per file: `slots` (open WebSockets), `rate` (the
//! awareness token bucket), `frames` (frames bounded from their headers,
//! the bounded upgrade), `body` (declared request bodies), `session` (sends
//! with a deadline) and `liveness` (pings and the idle timeout).

mod body;
mod frames;
mod liveness;
mod rate;
mod session;
mod slots;

pub(crate) use body::declared_body_too_large;
pub(crate) use frames::{guarded_websocket_body, protocol_close, upgrade_bounded};
pub(crate) use liveness::Liveness;
pub(crate) use rate::AwarenessBudget;
pub(crate) use session::TimedSession;
pub(crate) use slots::{ConnectionLimits, ConnectionSlot};

use std::time::Duration;

/// Counts a refusal in `seqsync_refused_total{reason}`.
pub(crate) fn refused(reason: &'static str) {
    metrics::counter!("seqsync_refused_total", "reason" => reason).increment(1);
}

/// `ms` as a `Duration`.
pub(crate) fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}
