//! An exclusive lock on a storage directory, held for the life of a backend.
//!
//! Two engines writing one store would each believe they own the seq counter
//! and interleave seqs. SQLite's own locking does not prevent that (both can
//! write, in turn), so every file-backed store first takes an OS advisory lock
//! on `<path>/seqsync.lock`. The lock belongs to the open file description:
//! a second open in the same process is refused too, and the lock disappears
//! with the process, even on SIGKILL, so a crash never leaves a stale lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use seqsync_engine::StorageError;

/// Name of the lock file inside the storage directory.
pub const LOCK_FILE_NAME: &str = "seqsync.lock";

/// Holds the lock until dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    dir: PathBuf,
}

impl DirLock {
    /// Creates `dir` if needed and locks it.
    ///
    /// Blocking (file system calls), never waits for the lock. Errors:
    /// [`StorageError::AlreadyOpen`] if another engine holds it,
    /// [`StorageError::NotAStore`] if `dir` is a file, `Backend` for I/O.
    pub fn acquire(dir: &Path, backend: &'static str) -> Result<Self, StorageError> {
        if dir.exists() && !dir.is_dir() {
            return Err(StorageError::NotAStore {
                backend,
                path: dir.to_owned(),
                detail: "it is a file, storage.path must be a directory".to_owned(),
            });
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::backend(backend, "creating the storage directory", e))?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE_NAME))
            .map_err(|e| StorageError::backend(backend, "opening the lock file", e))?;
        match file.try_lock() {
            Ok(()) => Ok(Self {
                _file: file,
                dir: dir.to_owned(),
            }),
            Err(TryLockError::WouldBlock) => Err(StorageError::AlreadyOpen {
                path: dir.to_owned(),
            }),
            Err(TryLockError::Error(e)) => Err(StorageError::backend(
                backend,
                "locking the storage directory",
                e,
            )),
        }
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
