//! A small pool of threads for blocking storage reads.
//!
//! Storage calls block on disk I/O. They must never run on an actix arbiter
//! (one slow read would stall every collection on that arbiter) nor on the
//! host's async executor. Callers hand a closure to the pool and await its
//! result through a oneshot channel, which works from any async runtime.
//!
//! The job queue is bounded (`MAX_QUEUED_JOBS`): when it is full, `run`
//! waits asynchronously for room, which pushes back on the callers instead of
//! growing memory. A job that panics is answered with an error and the worker
//! thread survives.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

/// Jobs waiting for a thread, at most.
const MAX_QUEUED_JOBS: usize = 4096;

type Job = Box<dyn FnOnce() + Send>;

/// Why a job produced no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PoolError {
    /// The job panicked.
    Panicked,
    /// The pool is shut down.
    Closed,
}

pub(crate) struct BlockingPool {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl BlockingPool {
    /// Starts `threads` worker threads named `name-N`.
    pub(crate) fn start(name: &str, threads: usize) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>(MAX_QUEUED_JOBS);
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || loop {
                        // Hold the lock only while taking a job.
                        let job = match rx.lock() {
                            Ok(mut rx) => rx.blocking_recv(),
                            Err(_) => None,
                        };
                        match job {
                            Some(job) => job(),
                            None => return,
                        }
                    })?,
            );
        }
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            threads: Mutex::new(handles),
        })
    }

    /// Runs `f` on a pool thread and resolves to its result.
    pub(crate) fn run<T, F>(
        &self,
        f: F,
    ) -> impl Future<Output = Result<T, PoolError>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let sender = self.tx.lock().ok().and_then(|tx| tx.clone());
        async move {
            let sender = sender.ok_or(PoolError::Closed)?;
            let (done_tx, done_rx) = oneshot::channel();
            let job: Job = Box::new(move || {
                // A dropped sender tells the caller the job panicked.
                if let Ok(value) = catch_unwind(AssertUnwindSafe(f)) {
                    let _ = done_tx.send(value);
                }
            });
            sender.send(job).await.map_err(|_| PoolError::Closed)?;
            done_rx.await.map_err(|_| PoolError::Panicked)
        }
    }

    /// Stops accepting jobs, lets queued ones finish, joins the threads.
    pub(crate) fn shutdown(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let handles = match self.threads.lock() {
            Ok(mut threads) => std::mem::take(&mut *threads),
            Err(_) => Vec::new(),
        };
        for handle in handles {
            let _ = handle.join();
        }
    }
}
