//! The live session: `follow` streams the server's changes into the local
//! store as they happen and pushes local edits at once (woken by each
//! edit), until `Follow::stop`.
//!
//! Why a goodbye: hanging up right after the last push could drop changes
//! still in flight to this replica. `stop` pushes everything, then reads
//! the stream until the server says it delivered everything up to the head
//! after that push (Secure Scuttlebutt's fix), within `GOODBYE_TIMEOUT_MS`.

use std::sync::Arc;

use seqsync_engine::Seq;

use crate::error::ReplicaError;
use crate::replica::{name, Replica};
use crate::transport::{RemoteEvent, Transport, TransportError};

/// How long `Follow::stop` waits for the server to confirm it has sent
/// everything (the goodbye), at most.
pub(crate) const GOODBYE_TIMEOUT_MS: u64 = 10_000;

/// A live session started by [`Replica::follow`]; end it with
/// [`Follow::stop`].
pub struct Follow {
    pub(crate) stop: tokio::sync::oneshot::Sender<()>,
    pub(crate) task: tokio::task::JoinHandle<Result<FollowReport, ReplicaError>>,
}

/// What a live session did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FollowReport {
    /// Changes by others applied locally while following.
    pub received: u64,
    /// Local updates pushed while following.
    pub pushed: u64,
    /// The cursor at the end.
    pub cursor: Seq,
}

impl Follow {
    /// Ends the session the way Scuttlebutt's fix says, saying goodbye
    /// before hanging up: every local edit is pushed, then the stream is
    /// read until the server says it has delivered everything up to the
    /// head after that push; only then is it closed. So nothing is lost at
    /// the end of a live session.
    ///
    /// Errors: the session's own failure (transport, local store), or
    /// `Transport(Unavailable)` if the goodbye does not complete in 10 s.
    pub async fn stop(self) -> Result<FollowReport, ReplicaError> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(ReplicaError::Transport(TransportError::Unavailable(
                format!("the follow task failed: {e}"),
            ))),
        }
    }
}

impl<T: Transport + 'static> Replica<T> {
    /// A live session on `collection`: syncs once, then keeps a stream
    /// open, applies remote changes as they come (each with its cursor in
    /// one local commit) and pushes local edits as they are made. End it
    /// with [`Follow::stop`], which says goodbye before hanging up.
    ///
    /// Runs as a task on the current tokio runtime. Errors at start:
    /// `InvalidName`, `Local`, `Transport`; later ones end the session and
    /// are returned by `stop`.
    pub async fn follow(self: &Arc<Self>, collection: &str) -> Result<Follow, ReplicaError> {
        let c = name(collection)?;
        self.sync(collection).await?;
        let state = self.state_of(&c).await?;
        let mut stream = self
            .transport
            .subscribe(collection, state.cursor, state.epoch)
            .await?;
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let replica = Arc::clone(self);
        let task = tokio::spawn(async move {
            let mut report = FollowReport::default();
            // Edits made before the session started are pushed first.
            let (pushed, _) = replica.push_pending(&c).await?;
            report.pushed += pushed;
            loop {
                tokio::select! {
                    event = stream.recv() => match event {
                        Some(Ok(RemoteEvent::Change(change))) => {
                            if replica.apply_streamed(&c, change).await? {
                                report.received += 1;
                            }
                        }
                        Some(Ok(RemoteEvent::UpToDate { .. })) => {}
                        Some(Err(err)) => return Err(err.into()),
                        None => {
                            return Err(ReplicaError::Transport(TransportError::Unavailable(
                                "the live stream ended".to_owned(),
                            )))
                        }
                    },
                    _ = replica.local_edits.notified() => {
                        let (pushed, _) = replica.push_pending(&c).await?;
                        report.pushed += pushed;
                    }
                    _ = &mut stop_rx => break,
                }
            }
            // Goodbye: everything local is sent, then everything up to the
            // head after that is received, then the stream closes.
            let (pushed, head) = replica.push_pending(&c).await?;
            report.pushed += pushed;
            let target = match head {
                Some(head) => head,
                None => {
                    let state = replica.state_of(&c).await?;
                    replica
                        .transport
                        .changes(c.as_str(), state.cursor, 0, state.epoch)
                        .await?
                        .head
                }
            };
            let deadline =
                tokio::time::Instant::now() + std::time::Duration::from_millis(GOODBYE_TIMEOUT_MS);
            loop {
                if replica.state_of(&c).await?.cursor >= target {
                    break;
                }
                match tokio::time::timeout_at(deadline, stream.recv()).await {
                    Ok(Some(Ok(RemoteEvent::Change(change)))) => {
                        if replica.apply_streamed(&c, change).await? {
                            report.received += 1;
                        }
                    }
                    Ok(Some(Ok(RemoteEvent::UpToDate { head }))) => {
                        if head >= target {
                            break;
                        }
                    }
                    Ok(Some(Err(err))) => return Err(err.into()),
                    Ok(None) | Err(_) => {
                        return Err(ReplicaError::Transport(TransportError::Unavailable(
                            format!(
                            "the goodbye did not complete: the server did not confirm seq {target}"
                        ),
                        )))
                    }
                }
            }
            report.cursor = replica.state_of(&c).await?.cursor;
            drop(stream);
            Ok(report)
        });
        Ok(Follow {
            stop: stop_tx,
            task,
        })
    }
}
