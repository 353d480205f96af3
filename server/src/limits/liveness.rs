//! Pings and the idle timeout of a WebSocket.
//!
//! A dead peer (a laptop closed mid-session) never sends a close; without a
//! ping and a deadline its slot and its subscription would stay taken.

use std::time::Duration;

use crate::config::ServerLimits;

use super::{millis, refused};

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
    pub(crate) fn new(limits: &ServerLimits) -> Self {
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
