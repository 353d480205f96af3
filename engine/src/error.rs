//! Typed errors, one enum per family of operations.
//!
//! Following redb: every enum is `#[non_exhaustive]` so variants can be added
//! without a breaking change, and every message says what to do about it. All
//! errors are `Clone` because the runtime answers many callers (a whole commit
//! group) with the same failure.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Which kind of name failed validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameKind {
    /// A collection name.
    Collection,
    /// A document id.
    Document,
    /// A peer id.
    Peer,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Collection => "collection name",
            NameKind::Document => "document id",
            NameKind::Peer => "peer id",
        })
    }
}

/// A collection name, document id or peer id that breaks the rules of BRIEF §3.
/// Nothing is stored when this is returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidName {
    /// The name is the empty string.
    #[error("{kind} is empty; give at least one character")]
    Empty {
        /// Which name.
        kind: NameKind,
    },
    /// The name is longer than allowed.
    #[error("{kind} is {len_bytes} bytes long; the limit is {max_bytes} bytes")]
    TooLong {
        /// Which name.
        kind: NameKind,
        /// Its length in bytes.
        len_bytes: usize,
        /// The limit in bytes.
        max_bytes: usize,
    },
    /// The name holds a character that is not allowed.
    #[error(
        "{kind} contains {ch:?} at byte {at}; collection names allow only A-Z a-z 0-9 _ . -, \
         document and peer ids allow any character but control characters"
    )]
    ForbiddenChar {
        /// Which name.
        kind: NameKind,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// A collection name starting with `.` (which also rules out `.` and `..`).
    #[error("collection name starts with '.'; start it with a letter, digit, '_' or '-'")]
    LeadingDot,
}

/// The configuration could not be read or is invalid. Every variant names the
/// key, file or environment variable at fault.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: Arc<std::io::Error>,
    },
    /// The TOML is malformed, has an unknown key or a value of the wrong type.
    #[error("invalid configuration in {origin}: {message}")]
    Parse {
        /// The file, or `environment` for a `SEQSYNC_*` override.
        origin: String,
        /// The parser's message, which names the key.
        message: String,
    },
    /// A `SEQSYNC_*` environment variable that matches no config key.
    #[error(
        "unknown environment variable {var}: expected SEQSYNC_<SECTION>_<KEY> for a key of \
         the config file, e.g. SEQSYNC_STORAGE_BACKEND"
    )]
    UnknownEnv {
        /// The variable's name.
        var: String,
    },
    /// A key whose value is out of range or unusable.
    #[error("invalid value for {key}: {message}")]
    Invalid {
        /// The key as `section.key`.
        key: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// A storage backend failed or refused an operation.
///
/// A failed [`crate::Storage::commit`] has written nothing: every variant
/// leaves storage as it was before the call.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// Another engine (this process or another) has the store open.
    #[error(
        "storage at {path} is already open by another engine; stop the other engine or \
         point storage.path elsewhere"
    )]
    AlreadyOpen {
        /// The storage directory.
        path: PathBuf,
    },
    /// The path holds something that is not a seqsync store of this backend.
    #[error(
        "{path} is not a seqsync {backend} store ({detail}); point storage.path at an empty \
         directory or at a seqsync data directory"
    )]
    NotAStore {
        /// Backend name.
        backend: &'static str,
        /// The offending file or directory.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// The store was written by a newer format this build cannot read.
    #[error("{path} uses seqsync {backend} format {found}; this build reads format {supported}")]
    UnsupportedFormat {
        /// Backend name.
        backend: &'static str,
        /// The store file.
        path: PathBuf,
        /// Format version found in the file.
        found: u64,
        /// Format version this build reads.
        supported: u64,
    },
    /// Data read back does not decode; the file is damaged.
    #[error("{backend} store is corrupt: {detail}; restore from a backup")]
    Corrupt {
        /// Backend name.
        backend: &'static str,
        /// What failed to decode.
        detail: String,
    },
    /// The stored state of a collection is not what the write was based on
    /// (its epoch or head moved): another writer got there first.
    #[error(
        "write conflict on collection {collection}: {detail}; reload the collection and retry"
    )]
    Conflict {
        /// The collection.
        collection: String,
        /// Expected versus found.
        detail: String,
    },
    /// The write breaks an invariant of the log (gap in seqs, snapshot without a
    /// change to replace, ...). A bug in the caller; nothing was written.
    #[error("invalid write refused by storage: {0}")]
    InvalidWrite(String),
    /// The backend's own error (I/O, database engine).
    #[error("{backend} failed while {during}: {message}")]
    Backend {
        /// Backend name.
        backend: &'static str,
        /// What the backend was doing.
        during: &'static str,
        /// The backend's message.
        message: String,
    },
    /// A fault injected on purpose by a test wrapper.
    #[error("injected fault: {0}")]
    Injected(String),
}

impl StorageError {
    /// Shorthand for [`StorageError::Backend`] from any displayable error.
    pub fn backend(backend: &'static str, during: &'static str, err: impl fmt::Display) -> Self {
        StorageError::Backend {
            backend,
            during,
            message: err.to_string(),
        }
    }

    /// Short machine-readable kind, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            StorageError::AlreadyOpen { .. } => "already_open",
            StorageError::NotAStore { .. } => "not_a_store",
            StorageError::UnsupportedFormat { .. } => "unsupported_format",
            StorageError::Corrupt { .. } => "corrupt",
            StorageError::Conflict { .. } => "conflict",
            StorageError::InvalidWrite(_) => "invalid_write",
            StorageError::Backend { .. } => "backend",
            StorageError::Injected(_) => "injected",
        }
    }
}
