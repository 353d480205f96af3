//! WebSocket sends with a deadline.
//!
//! A client that stops reading would otherwise hold its connection's task
//! (and the memory queued for it) for ever: every send here gives up after
//! `limits.ws_send_timeout_ms`, and the close says why.

use std::time::Duration;

use crate::config::ServerLimits;

use super::{millis, refused};

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
    pub(crate) fn new(inner: actix_ws::Session, limits: &ServerLimits) -> Self {
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
