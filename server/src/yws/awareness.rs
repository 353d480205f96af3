//! Awareness (presence) on a `/yws` connection: what this client sends,
//! within its budget, and what the room relays to it.
//!
//! The room itself (merged states, the relay channel, removal on leave) is
//! `rooms.rs`, shared with the sync socket; this file is the connection's
//! side of it: the awareness budget (`limits.awareness_messages_per_sec`)
//! with the newest states parked rather than lost, and a relay that a slow
//! client has fallen behind replaced by the room's merged state.

use actix_web::web::Bytes;
use tokio::sync::broadcast;
use yrs::sync::awareness::AwarenessUpdate;

use super::connection::{Connection, Step};

impl Connection {
    /// An awareness message from the client: published to the room, or,
    /// over the budget, parked until it refills.
    pub(super) fn on_awareness(&mut self, update: AwarenessUpdate) -> Step {
        if self.awareness_budget.allow(std::time::Instant::now()) {
            self.state.rooms.publish(&self.key, self.id, update);
            Step::Continue
        } else {
            // Over `limits.awareness_messages_per_sec`: not relayed
            // now. The newest state per client is parked (bounded by
            // the room's client limit) and relayed once the budget
            // refills, so a fast typist's last cursor still arrives;
            // the states in between are dropped and counted.
            crate::limits::refused("awareness_rate");
            match &mut self.parked_awareness {
                Some(parked) => parked.clients.extend(update.clients),
                None => {
                    self.parked_awareness = Some(update);
                    self.parked_due =
                        tokio::time::Instant::now() + self.awareness_budget.refill_interval();
                }
            }
            Step::Continue
        }
    }

    /// Parked awareness goes out once the budget has a token again (one
    /// token's time after it was parked).
    pub(super) fn relay_parked(&mut self) -> Step {
        if self.awareness_budget.allow(std::time::Instant::now()) {
            if let Some(parked) = self.parked_awareness.take() {
                self.state.rooms.publish(&self.key, self.id, parked);
            }
        } else {
            self.parked_due = tokio::time::Instant::now() + self.awareness_budget.refill_interval();
        }
        Step::Continue
    }

    /// A message of the room's relay, or the relay's news that this
    /// connection fell behind it.
    pub(super) async fn on_relayed(
        &mut self,
        relayed: Result<Bytes, broadcast::error::RecvError>,
    ) -> Step {
        match relayed {
            // Its own awareness too, as the reference server does:
            // a provider that hears nothing for 30 s reconnects,
            // and one alone in an idle room hears only the echo of
            // its 15-second renewal.
            Ok(message) => {
                if self.session.binary(message).await.is_err() {
                    Step::Close(None)
                } else {
                    Step::Continue
                }
            }
            // Too slow to take every relayed message: the room's
            // merged state (removals included) replaces what was
            // missed.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let everyone = self.state.rooms.current(&self.key, true);
                self.send_awareness(everyone).await
            }
            Err(broadcast::error::RecvError::Closed) => Step::Continue,
        }
    }

    /// Sends an awareness message if there is one; closes if the
    /// connection is gone.
    pub(super) async fn send_awareness(&mut self, message: Option<Bytes>) -> Step {
        let Some(message) = message else {
            return Step::Continue;
        };
        if self.session.binary(message).await.is_err() {
            Step::Close(None)
        } else {
            Step::Continue
        }
    }
}
