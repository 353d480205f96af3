//! Durable webhooks: every change of a hook's collections POSTed to its
//! receiver, from the log by cursor (`[[webhooks]]`, docs/WEBHOOKS.md).
//!
//! Why from the log and not from memory: a search index or an audit log
//! must never miss a change, so a delivery is never a fire-and-forget
//! message queued beside the commit. Each hook is a *peer* of its
//! collections (`webhook:<name>`), exactly like a syncing client: its
//! position is its ack, stored with the collection, so it survives restarts
//! and kills; compaction keeps the deltas it has not delivered while it is
//! active; and a hook away past `compaction.peer_timeout_secs` turns truant
//! and, back, reads compacted history as snapshots, like any client.
//!
//! Shape: one thread per hook (so a slow receiver holds only its own
//! hook), running a small runtime with one follower task per collection
//! (`deliver::Follower`: subscribe, batch, sign, POST, ack). A follower
//! that panics is started again from its stored position after a pause,
//! and counted, so a bug never leaves a hook silently dead.
//!
//! Guarantees: at least once (a change is sent until the receiver answers
//! 2xx, then acked), in seq order per collection (one request in flight per
//! collection; a retry starts from the first unaccepted change), batched,
//! signed (`sign`).

mod deliver;
pub mod sign;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use seqsync_actors::Engine;
use tokio::sync::watch;

use crate::config::WebhookConfig;

/// The pause before a follower that panicked starts again.
const RESTART_AFTER_PANIC_MS: u64 = 1_000;
/// How long stopping waits for the hooks' threads (a request in flight
/// ends at its own timeout at worst).
const STOP_WAIT_MS: u64 = 2_000;

/// Metric names of the webhooks (docs/SERVER.md lists them).
pub mod metric_names {
    /// Counter: changes a receiver accepted (2xx), per hook.
    pub const DELIVERED: &str = "seqsync_webhook_delivered_total";
    /// Counter: requests per hook and `outcome` (`ok`, `failed`).
    pub const REQUESTS: &str = "seqsync_webhook_requests_total";
    /// Gauge: seqs between the collection's head and what the receiver
    /// accepted, per hook and collection.
    pub const LAG_SEQS: &str = "seqsync_webhook_lag_seqs";
    /// Gauge: seconds since the oldest change the receiver has not
    /// accepted was first read (0 when nothing is pending), per hook and
    /// collection.
    pub const LAG_SECONDS: &str = "seqsync_webhook_lag_seconds";
    /// Counter: a collection's history was replaced under a hook, which
    /// started over from seq 0, per hook.
    pub const RESETS: &str = "seqsync_webhook_resets_total";
    /// Counter: a follower panicked and was started again, per hook.
    pub const RESTARTS: &str = "seqsync_webhook_restarts_total";
}

/// One configured hook, shared by its followers.
pub(crate) struct Hook {
    config: WebhookConfig,
    agent: ureq::Agent,
    /// `compaction.peer_timeout_secs`, for the heartbeat.
    peer_timeout_secs: u64,
}

impl Hook {
    /// An idle, healthy hook acks its position again this often, so it
    /// stays an active peer.
    fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs((self.peer_timeout_secs / 3).max(1))
    }

    /// The bytes a change adds to a request, for `max_batch_bytes`.
    fn counted_bytes(&self, change: &seqsync_engine::Change) -> u64 {
        let payload = if self.config.include_updates {
            // base64 grows it by a third.
            (change.payload.len() as u64).div_ceil(3) * 4
        } else {
            0
        };
        payload + 128
    }
}

/// The running hooks of a server. Dropping it stops them (as [`stop`]).
///
/// [`stop`]: Webhooks::stop
pub struct Webhooks {
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl Webhooks {
    /// Starts one thread per hook, following each of its collections from
    /// its stored position. Returns at once; nothing is sent before the
    /// first change is read.
    ///
    /// Errors: a thread could not be started.
    pub fn start(engine: &Engine, hooks: &[WebhookConfig]) -> std::io::Result<Self> {
        let (stop, stopped) = watch::channel(false);
        let peer_timeout_secs = engine.config().compaction.peer_timeout_secs;
        let mut threads = Vec::with_capacity(hooks.len());
        for config in hooks {
            let agent = ureq::AgentBuilder::new()
                .timeout(Duration::from_millis(config.request_timeout_ms))
                // A redirect is the receiver's misconfiguration; following
                // it would send signed changes somewhere else.
                .redirects(0)
                .build();
            let hook = Arc::new(Hook {
                config: config.clone(),
                agent,
                peer_timeout_secs,
            });
            let engine = engine.clone();
            let stopped = stopped.clone();
            let thread = std::thread::Builder::new()
                .name(format!("seqsync-webhook-{}", config.name))
                .spawn(move || run_hook(engine, hook, stopped))?;
            threads.push(thread);
        }
        Ok(Self { stop, threads })
    }

    /// Stops every hook and waits (at most a few seconds) for their
    /// threads. A batch in flight is sent again by the next run: its ack
    /// was not recorded.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let _ = self.stop.send(true);
        let deadline = std::time::Instant::now() + Duration::from_millis(STOP_WAIT_MS);
        for thread in self.threads.drain(..) {
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// One hook's thread: a runtime with a follower per collection, each
/// started again if it panics, until the stop signal.
fn run_hook(engine: Engine, hook: Arc<Hook>, stop: watch::Receiver<bool>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(hook = %hook.config.name, "webhook not started: {err}");
            return;
        }
    };
    runtime.block_on(async move {
        let mut supervisors = Vec::new();
        for collection in hook.config.collections.clone() {
            let (engine, hook, stop) = (engine.clone(), hook.clone(), stop.clone());
            supervisors.push(tokio::spawn(supervise(engine, hook, collection, stop)));
        }
        for supervisor in supervisors {
            let _ = supervisor.await;
        }
    });
}

/// Runs a collection's follower; a panic is logged, counted and followed by
/// a fresh follower (from the stored position) after a pause.
async fn supervise(
    engine: Engine,
    hook: Arc<Hook>,
    collection: String,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let follower = deliver::Follower {
            engine: engine.clone(),
            hook: hook.clone(),
            collection: collection.clone(),
            stop: stop.clone(),
        };
        match tokio::spawn(follower.run()).await {
            Ok(()) => return,
            Err(err) => {
                tracing::error!(hook = %hook.config.name, %collection,
                    "webhook follower failed ({err}); starting it again");
                metrics::counter!(metric_names::RESTARTS, "hook" => hook.config.name.clone())
                    .increment(1);
                let pause = Duration::from_millis(RESTART_AFTER_PANIC_MS);
                if tokio::time::timeout(pause, stop.wait_for(|s| *s))
                    .await
                    .is_ok()
                {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::deliver::backoff;

    /// Retries must spread out and stop growing at the ceiling, or a
    /// receiver that is down gets hammered (or waited on for hours).
    #[test]
    fn backoff_doubles_from_250_ms_jittered_and_stops_at_the_ceiling() {
        for _ in 0..200 {
            let first = backoff(1, 60_000).as_millis();
            assert!((125..=250).contains(&first), "{first}");
            let fourth = backoff(4, 60_000).as_millis();
            assert!((1_000..=2_000).contains(&fourth), "{fourth}");
            let late = backoff(40, 60_000).as_millis();
            assert!((30_000..=60_000).contains(&late), "{late}");
            let low_ceiling = backoff(10, 1_000).as_millis();
            assert!((500..=1_000).contains(&low_ceiling), "{low_ceiling}");
        }
        let spread: std::collections::HashSet<u128> =
            (0..50).map(|_| backoff(8, 60_000).as_millis()).collect();
        assert!(spread.len() > 10, "jitter spreads retries: {spread:?}");
    }
}
