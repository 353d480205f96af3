//! A token bucket for awareness (presence) messages per connection.
//!
//! Awareness is relayed to every other client of a room, so one client
//! flooding it would cost the server a send per message per listener. The
//! bucket lets a burst of two seconds' worth through (a cursor dragged
//! fast) and drops the rest; dropping is safe because awareness states
//! replace each other and the next one carries everything.

use std::time::{Duration, Instant};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
