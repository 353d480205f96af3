//! One hook following one collection: read the log from the hook's
//! position, send it in signed batches, record the new position once the
//! receiver said 2xx.
//!
//! The position is the hook's peer ack in the collection, so it is durable
//! and shared by every run of the server: a restarted server (even one
//! killed mid-request) starts again after the last batch the receiver
//! accepted *and* whose ack committed, so a receiver sees a change twice
//! only when its answer was lost (a failure, a timeout, a kill between its
//! 2xx and the ack). Nothing is ever skipped: a batch is sent until it is
//! accepted.
//!
//! Reading follows the engine's subscription (stored changes, then live
//! ones, no gap); after a failed request the loop drops it and, after its
//! backoff, subscribes again from the position it holds. So the retry reads
//! storage afresh: if the hook was away past `peer_timeout_secs` (truant)
//! and compaction folded what it had not delivered, it now reads snapshots,
//! like any truant peer, instead of holding deltas in memory.
//!
//! While the hook is healthy and idle it acks its position again every
//! third of `peer_timeout_secs`: compaction waits for an active peer, and a
//! hook with nothing to send is still keeping up. A failing hook stops
//! acking, so after `peer_timeout_secs` of failures it turns truant and
//! compaction goes on without it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use seqsync_actors::{Engine, StreamEvent, Subscription};
use seqsync_engine::{Change, Epoch, ReadError, Seq};
use seqsync_protocol::webhook::{
    WebhookChange, WebhookDelivery, ATTEMPT_HEADER, DELIVERY_HEADER, SIGNATURE_HEADER,
};
use seqsync_protocol::{Base64Bytes, EpochHex};
use tokio::sync::watch;

use super::{metric_names as m, sign, Hook};
use crate::routes::change_kind;

/// The first retry's wait; each further one doubles, up to the hook's
/// `retry_ceiling_ms`.
const FIRST_RETRY_MS: u64 = 250;
/// The idle wait between checks of the stop signal and the heartbeat.
const IDLE_TICK_MS: u64 = 1_000;

/// Why following stopped for now.
enum Interrupt {
    /// The server is stopping.
    Stop,
    /// Reading failed or the request did: wait, then start again from the
    /// position held.
    Retry(String),
}

/// One collection of one hook.
pub(super) struct Follower {
    pub(super) engine: Engine,
    pub(super) hook: std::sync::Arc<Hook>,
    pub(super) collection: String,
    pub(super) stop: watch::Receiver<bool>,
}

/// What the follower knows between batches.
struct Position {
    /// Every change ≤ this was accepted by the receiver.
    delivered: Seq,
    /// The epoch `delivered` belongs to, once known.
    epoch: Option<Epoch>,
    /// The collection's head as last seen, for the lag gauge.
    head: Seq,
    /// When the oldest change not yet accepted was first read (`None`:
    /// nothing pending). Kept across retries, so the lag in seconds grows
    /// while the receiver fails.
    pending_since: Option<Instant>,
}

impl Follower {
    /// Follows until the stop signal. Never returns early on errors: each
    /// is logged and counted, then retried after a backoff.
    pub(super) async fn run(mut self) {
        let mut position = match self.start_position().await {
            Some(position) => position,
            None => return,
        };
        let mut failures = 0u32;
        loop {
            match self.follow(&mut position, &mut failures).await {
                Interrupt::Stop => return,
                Interrupt::Retry(reason) => {
                    failures = failures.saturating_add(1);
                    let wait = backoff(failures, self.hook.config.retry_ceiling_ms);
                    tracing::warn!(
                        hook = %self.hook.config.name,
                        collection = %self.collection,
                        failures,
                        retry_in_ms = wait.as_millis() as u64,
                        "webhook delivery failed: {reason}"
                    );
                    if self.sleep(wait, Some(&position)).await {
                        return;
                    }
                }
            }
        }
    }

    /// The hook's stored position (its peer ack), retried until it reads.
    async fn start_position(&mut self) -> Option<Position> {
        let peer = self.hook.config.peer_id();
        let mut failures = 0u32;
        loop {
            match self.engine.peers(&self.collection).await {
                Ok(peers) => {
                    let delivered = peers
                        .iter()
                        .find(|p| p.peer.as_str() == peer)
                        .map_or(0, |p| p.acked);
                    return Some(Position {
                        delivered,
                        epoch: None,
                        head: delivered,
                        pending_since: None,
                    });
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(hook = %self.hook.config.name, collection = %self.collection,
                        "webhook cannot read its position: {err}");
                    if self
                        .sleep(backoff(failures, self.hook.config.retry_ceiling_ms), None)
                        .await
                    {
                        return None;
                    }
                }
            }
        }
    }

    /// Subscribes from `position` and delivers batch after batch until
    /// something fails or the server stops.
    async fn follow(&mut self, position: &mut Position, failures: &mut u32) -> Interrupt {
        // The epoch and head come from one page read (limit 0): the stream's
        // changes do not carry the epoch, and a delivery names it.
        let page = match self
            .engine
            .changes(&self.collection, position.delivered, 0, position.epoch)
            .await
        {
            Ok(page) => page,
            Err(ReadError::Reset { epoch, head }) => {
                return self.reset(position, epoch, head);
            }
            Err(err) => return Interrupt::Retry(format!("reading the log: {err}")),
        };
        position.head = page.head;
        // `None` while the collection does not exist yet: its first change
        // comes through the subscription, and its epoch is read then.
        position.epoch = page.epoch;
        self.set_lag(position);
        self.follow_from(position, failures).await
    }

    async fn follow_from(&mut self, position: &mut Position, failures: &mut u32) -> Interrupt {
        let mut stream =
            match self
                .engine
                .subscribe(&self.collection, position.delivered, position.epoch)
            {
                Ok(stream) => stream,
                Err(err) => return Interrupt::Retry(format!("subscribing: {err}")),
            };
        // A change read past a full batch waits here for the next one.
        let mut carried: Option<Change> = None;
        let mut last_heartbeat = Instant::now();
        loop {
            let first = match carried.take() {
                Some(change) => change,
                None => match self
                    .next_change(&mut stream, position, &mut last_heartbeat)
                    .await
                {
                    Ok(change) => change,
                    Err(interrupt) => return interrupt,
                },
            };
            position.pending_since.get_or_insert_with(Instant::now);
            let (batch, next) = match self.fill_batch(&mut stream, first, position).await {
                Ok(filled) => filled,
                Err(interrupt) => return interrupt,
            };
            carried = next;
            let epoch = match position.epoch {
                Some(epoch) => epoch,
                // The collection was created after this subscription began:
                // its epoch is read once.
                None => match self
                    .engine
                    .changes(&self.collection, 0, 0, None)
                    .await
                    .map(|page| page.epoch)
                {
                    Ok(Some(epoch)) => {
                        position.epoch = Some(epoch);
                        epoch
                    }
                    Ok(None) => return Interrupt::Retry("the collection vanished".to_owned()),
                    Err(err) => return Interrupt::Retry(format!("reading the epoch: {err}")),
                },
            };
            self.set_lag(position);
            let last = batch.last().map_or(position.delivered, |c| c.seq);
            if let Err(reason) = self
                .send(&batch, epoch, position.head.max(last), *failures + 1)
                .await
            {
                return Interrupt::Retry(reason);
            }
            *failures = 0;
            position.delivered = last;
            position.pending_since = None;
            metrics::counter!(m::DELIVERED, "hook" => self.hook.config.name.clone())
                .increment(batch.len() as u64);
            self.set_lag(position);
            // The receiver has these; record it. A failed ack loses nothing:
            // the next one covers it, and a restart before then sends the
            // batch again (at least once).
            self.ack(position.delivered).await;
            last_heartbeat = Instant::now();
        }
    }

    /// The next change from the stream, waiting as long as it takes (the
    /// stop signal and the heartbeat are checked every second).
    async fn next_change(
        &mut self,
        stream: &mut Subscription,
        position: &mut Position,
        last_heartbeat: &mut Instant,
    ) -> Result<Change, Interrupt> {
        let heartbeat = self.hook.heartbeat_interval();
        loop {
            if *self.stop.borrow() {
                return Err(Interrupt::Stop);
            }
            if last_heartbeat.elapsed() >= heartbeat {
                *last_heartbeat = Instant::now();
                if position.delivered > 0 {
                    self.ack(position.delivered).await;
                }
            }
            match tokio::time::timeout(Duration::from_millis(IDLE_TICK_MS), stream.next()).await {
                Err(_) => continue,
                Ok(None) => return Err(Interrupt::Retry("the change stream ended".to_owned())),
                Ok(Some(Err(ReadError::Reset { epoch, head }))) => {
                    return Err(self.reset(position, epoch, head));
                }
                Ok(Some(Err(err))) => return Err(Interrupt::Retry(format!("reading: {err}"))),
                Ok(Some(Ok(StreamEvent::UpToDate { head }))) => {
                    position.head = head;
                    self.set_lag(position);
                }
                Ok(Some(Ok(StreamEvent::Change(change)))) => {
                    position.head = position.head.max(change.seq);
                    return Ok(change);
                }
            }
        }
    }

    /// `first`, then whatever follows it within the batch window, up to the
    /// hook's change and byte bounds. A change that would cross the byte
    /// bound is handed back for the next batch.
    async fn fill_batch(
        &mut self,
        stream: &mut Subscription,
        first: Change,
        position: &mut Position,
    ) -> Result<(Vec<Change>, Option<Change>), Interrupt> {
        let config = &self.hook.config;
        let max_changes = usize::try_from(config.max_batch_changes).unwrap_or(usize::MAX);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(config.batch_window_ms);
        let mut bytes = self.hook.counted_bytes(&first);
        let mut batch = vec![first];
        while batch.len() < max_changes {
            let next = match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) => break,
                Ok(next) => next,
            };
            match next {
                None => break,
                Some(Err(ReadError::Reset { epoch, head })) => {
                    return Err(self.reset(position, epoch, head));
                }
                // What was read so far is still a correct batch; the error
                // comes back on the next read of a new subscription.
                Some(Err(_)) => break,
                Some(Ok(StreamEvent::UpToDate { head })) => {
                    position.head = head;
                    if config.batch_window_ms == 0 {
                        break;
                    }
                }
                Some(Ok(StreamEvent::Change(change))) => {
                    position.head = position.head.max(change.seq);
                    let size = self.hook.counted_bytes(&change);
                    if bytes.saturating_add(size) > config.max_batch_bytes {
                        return Ok((batch, Some(change)));
                    }
                    bytes += size;
                    batch.push(change);
                }
            }
        }
        Ok((batch, None))
    }

    /// POSTs one batch, signed; `Ok` only for a 2xx answer.
    async fn send(
        &self,
        batch: &[Change],
        epoch: Epoch,
        head: Seq,
        attempt: u32,
    ) -> Result<(), String> {
        let config = &self.hook.config;
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(());
        };
        let delivery = WebhookDelivery {
            hook: config.name.clone(),
            collection: self.collection.clone(),
            epoch: EpochHex(epoch.0),
            changes: batch
                .iter()
                .map(|change| WebhookChange {
                    seq: change.seq,
                    doc: change.doc.as_str().to_owned(),
                    kind: change_kind(change.kind),
                    size_bytes: change.payload.len() as u64,
                    origin: change.origin.as_ref().map(|p| p.as_str().to_owned()),
                    author: change.author.clone(),
                    committed_ms: (change.committed_ms > 0).then_some(change.committed_ms),
                    update: config
                        .include_updates
                        .then(|| Base64Bytes(change.payload.clone())),
                })
                .collect(),
            head,
        };
        let body = serde_json::to_vec(&delivery).map_err(|e| format!("encoding: {e}"))?;
        let now_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = sign::sign(config.secret.as_bytes(), now_secs, &body);
        let id = format!(
            "{}/{}/{}-{}",
            config.name, self.collection, first.seq, last.seq
        );
        let agent = self.hook.agent.clone();
        let url = config.url.clone();
        // ureq blocks: the request runs on tokio's blocking pool, never on
        // this runtime's thread (its other collections keep going).
        let answer = tokio::task::spawn_blocking(move || {
            agent
                .post(&url)
                .set("content-type", "application/json")
                .set(
                    "user-agent",
                    concat!("seqsync-webhooks/", env!("CARGO_PKG_VERSION")),
                )
                .set(SIGNATURE_HEADER, &signature)
                .set(DELIVERY_HEADER, &id)
                .set(ATTEMPT_HEADER, &attempt.to_string())
                .send_bytes(&body)
                .map(|response| response.status())
                .map_err(|err| match err {
                    ureq::Error::Status(status, _) => format!("the receiver answered {status}"),
                    err => format!("the request failed: {err}"),
                })
        })
        .await;
        let outcome = match answer {
            Ok(Ok(status)) if (200..300).contains(&status) => Ok(()),
            Ok(Ok(status)) => Err(format!("the receiver answered {status}")),
            Ok(Err(reason)) => Err(reason),
            Err(err) => Err(format!("the request's thread failed: {err}")),
        };
        let label = if outcome.is_ok() { "ok" } else { "failed" };
        metrics::counter!(m::REQUESTS, "hook" => config.name.clone(), "outcome" => label)
            .increment(1);
        outcome
    }

    /// Records the hook's position as its peer ack (durable when it
    /// returns). Failures are logged: the position is still held here.
    async fn ack(&self, seq: Seq) {
        let peer = self.hook.config.peer_id();
        if let Err(err) = self.engine.ack(&self.collection, &peer, seq).await {
            tracing::warn!(hook = %self.hook.config.name, collection = %self.collection, seq,
                "webhook position not recorded (a restart would send it again): {err}");
        }
    }

    /// The collection's history was replaced (another epoch) or the
    /// position is past its head: start again from seq 0 of what is there
    /// now, so nothing of it is missed.
    fn reset(&self, position: &mut Position, epoch: Option<Epoch>, head: Seq) -> Interrupt {
        tracing::warn!(hook = %self.hook.config.name, collection = %self.collection,
            from = position.delivered, head,
            "the collection's history was replaced; the hook starts over from seq 0");
        metrics::counter!(m::RESETS, "hook" => self.hook.config.name.clone()).increment(1);
        position.delivered = 0;
        position.epoch = epoch;
        position.head = head;
        position.pending_since = None;
        Interrupt::Retry("the collection's history was replaced".to_owned())
    }

    /// Sets the lag gauges: seqs behind the head, and seconds since the
    /// oldest change not yet accepted was first read.
    fn set_lag(&self, position: &Position) {
        let labels = [
            ("hook", self.hook.config.name.clone()),
            ("collection", self.collection.clone()),
        ];
        metrics::gauge!(m::LAG_SEQS, &labels)
            .set(position.head.saturating_sub(position.delivered) as f64);
        let secs = position
            .pending_since
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        metrics::gauge!(m::LAG_SECONDS, &labels).set(secs);
    }

    /// Waits `wait`, or less if the server stops (then `true`). While it
    /// waits with changes pending, the lag gauges keep growing.
    async fn sleep(&mut self, wait: Duration, position: Option<&Position>) -> bool {
        let started = Instant::now();
        loop {
            if *self.stop.borrow() {
                return true;
            }
            if let Some(position) = position {
                self.set_lag(position);
            }
            let left = wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                return false;
            }
            let tick = left.min(Duration::from_millis(IDLE_TICK_MS));
            match tokio::time::timeout(tick, self.stop.changed()).await {
                // The server's handle is gone: nothing will say stop.
                Ok(Err(_)) => return true,
                Ok(Ok(())) if *self.stop.borrow() => return true,
                _ => {}
            }
        }
    }
}

/// Exponential backoff with full jitter: the `failures`-th retry waits a
/// random time in [ceiling/2, ceiling] of `min(250 ms × 2^(failures−1),
/// retry_ceiling_ms)`; half is kept so a retry never comes at once, the
/// other half spreads many hooks' retries apart.
pub(super) fn backoff(failures: u32, retry_ceiling_ms: u64) -> Duration {
    let exponent = failures.saturating_sub(1).min(32);
    let cap_ms = FIRST_RETRY_MS
        .saturating_mul(1u64 << exponent)
        .min(retry_ceiling_ms)
        .max(1);
    let half = cap_ms / 2;
    Duration::from_millis(half + jitter(cap_ms - half + 1))
}

/// A number in `0..bound` that differs between calls and processes (not
/// for anything secret: it only spreads retries).
fn jitter(bound: u64) -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish() % bound.max(1)
}
