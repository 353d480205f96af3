//! `EngineConfig`: the engine's sections of the configuration file
//! (`[storage]`, `[compaction]`, `[limits]`, `[actors]`, `[schema]`), every
//! key optional, overridden by `SEQSYNC_<SECTION>_<KEY>` environment
//! variables (docs/CONFIG.md).
//!
//! Configuration by owner: the engine holds only what the engine reads. A
//! host adds its own sections in a configuration that holds this one (the
//! host server's `HostConfig` adds `[server]` and its HTTP and WebSocket
//! keys of `[limits]`), and each section checks its own keys in its
//! `validate`, next to its fields. How a file and the environment are read
//! is written once, in [`file`].

pub mod file;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config_key;
use crate::error::ConfigError;
use file::{check_range, ConfigFile};

/// The engine's configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// `[storage]`: which backend, where, how durable.
    pub storage: StorageConfig,
    /// `[compaction]`: when documents are compacted.
    pub compaction: CompactionConfig,
    /// `[limits]`: sizes of inputs and pages.
    pub limits: LimitsConfig,
    /// `[actors]`: the runtime's memory and queue bounds.
    pub actors: ActorsConfig,
    /// `[schema]`: which older clients are upgraded on ingest.
    pub schema: SchemaConfig,
}

/// `[schema]` section. The schema version itself is not configured: it is
/// the newest version of the migration steps the host registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchemaConfig {
    /// Pushes from clients at a version in `[min_supported_version,
    /// current)` are upgraded on ingest (applied, then the steps from the
    /// client's version run on the document, both in one commit); older
    /// clients get `SchemaTooOld`. Default 1 (every version the registered
    /// steps cover); versions older than the first registered step are never
    /// upgraded, whatever this says.
    pub min_supported_version: u32,
}

impl Default for SchemaConfig {
    fn default() -> Self {
        Self {
            min_supported_version: 1,
        }
    }
}

/// Which storage backend an engine uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// SQLite in WAL mode (rusqlite), file `seqsync.sqlite3` under `path`.
    #[default]
    Sqlite,
    /// redb, file `seqsync.redb` under `path`.
    Redb,
    /// In memory; nothing survives the process. For tests.
    Memory,
    /// PostgreSQL at `url`: several engine nodes may share one database,
    /// each collection written by the node holding its lease
    /// (`docs/POSTGRES.md`).
    Postgres,
}

impl BackendKind {
    /// The name `storage.backend` spells it with (`sqlite`, `redb`,
    /// `memory`, `postgres`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Redb => "redb",
            Self::Memory => "memory",
            Self::Postgres => "postgres",
        }
    }
}

/// When a commit counts as done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// A commit returns only once it is on stable storage (fsync per commit
    /// group). An acked push survives power loss.
    #[default]
    Immediate,
    /// A commit may return before it reaches stable storage; the OS (SQLite)
    /// or a periodic flush (redb) decides. See each backend for what a crash
    /// can lose.
    Eventual,
}

/// `[storage]` section. Its `Debug` hides the database URL's password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Backend; default `sqlite`.
    pub backend: BackendKind,
    /// Data directory, created if missing; default `./seqsync-data`.
    pub path: PathBuf,
    /// Durability of commits; default `immediate`.
    pub durability: Durability,
    /// `postgres` only: the database, `postgres://user:password@host:port/db`
    /// (or `SEQSYNC_STORAGE_URL`); empty by default. Never logged.
    pub url: String,
    /// `postgres` only: connections for reads, at most; default 8 (the
    /// writer has one more of its own).
    pub pool_size: u64,
    /// `postgres` only: how long a node's write lease on a collection lasts
    /// unless renewed (a third of it between renewals), in ms; default 5000.
    /// A node that dies is replaced after at most this long.
    pub lease_ttl_ms: u64,
    /// `postgres` only: this node's name in leases (give each node its own;
    /// the host server uses its `advertise_url` when set). Empty: a name
    /// made of the host name, the process id and a random part.
    pub node_id: String,
}

impl fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageConfig")
            .field("backend", &self.backend)
            .field("path", &self.path)
            .field("durability", &self.durability)
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("lease_ttl_ms", &self.lease_ttl_ms)
            .field("node_id", &self.node_id)
            .finish()
    }
}

/// `url` without its password (`postgres://user:***@host/db`), for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::Sqlite,
            path: PathBuf::from("./seqsync-data"),
            durability: Durability::Immediate,
            url: String::new(),
            pool_size: 8,
            lease_ttl_ms: 5_000,
            node_id: String::new(),
        }
    }
}

/// `[compaction]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompactionConfig {
    /// Compact a document once its deltas since the last snapshot reach this
    /// many bytes; default 1 MiB (see [`CompactionConfig::is_due`]).
    pub max_delta_bytes: u64,
    /// ... or this many deltas; default 1000.
    pub max_deltas: u64,
    /// A peer not seen for this long is inactive and no longer holds
    /// compaction back; default 300. `0` means acks never hold compaction
    /// back.
    pub peer_timeout_secs: u64,
}

impl CompactionConfig {
    /// Whether a document with `deltas` changes (`delta_bytes` bytes of
    /// payload) since its last snapshot is due for compaction: either
    /// reaches its limit. The one statement of the rule: the collection
    /// actor starts compactions by it, `seqsync inspect` counts by it.
    pub fn is_due(&self, deltas: u64, delta_bytes: u64) -> bool {
        deltas >= self.max_deltas || delta_bytes >= self.max_delta_bytes
    }
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            max_delta_bytes: 1 << 20,
            max_deltas: 1000,
            peer_timeout_secs: 300,
        }
    }
}

/// `[limits]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest accepted update, in bytes; default 8 MiB.
    pub max_update_bytes: u64,
    /// Most updates in one batch push; default 1000.
    pub max_batch_updates: u64,
    /// Most changes in one page of `changes`; larger requests are clamped;
    /// default 1000.
    pub stream_page_limit: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_update_bytes: 8 << 20,
            max_batch_updates: 1000,
            stream_page_limit: 1000,
        }
    }
}

/// `[actors]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActorsConfig {
    /// Unload a collection idle for this long from memory; default 60.
    pub idle_unload_secs: u64,
    /// Bound of every actor's mailbox and of each subscriber's buffer;
    /// default 1024.
    pub mailbox_capacity: u64,
    /// Arbiter threads the collection actors are spread over (a collection
    /// stays on one for its life); default 0 = the machine's available
    /// parallelism. At most 64.
    pub arbiters: u64,
    /// Under a trickle of writes from writers that do not wait for each
    /// other (many rooms typing), the longest the oldest write of a commit
    /// group waits for others to share its commit (one fsync, fewer pages
    /// written per edit). The writer never waits longer than its recent
    /// commits took, whatever this says (waiting longer costs a keystroke
    /// more than committing at once), so this is a cap for slow disks;
    /// default 2000 µs, at most 100,000; 0 = commit at once. Writers that
    /// wait for their ack never wait for this, and durability is unchanged:
    /// a push is still answered only once committed.
    pub trickle_linger_us: u64,
}

impl ActorsConfig {
    /// The number of arbiters to start: `arbiters`, or the available
    /// parallelism when it is 0 (2 if that cannot be read), at most 64.
    pub fn arbiter_count(&self) -> usize {
        let wanted = match self.arbiters {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => usize::try_from(n).unwrap_or(MAX_ARBITERS),
        };
        wanted.clamp(1, MAX_ARBITERS)
    }
}

/// Upper bound of `actors.arbiters`.
const MAX_ARBITERS: usize = 64;

impl Default for ActorsConfig {
    fn default() -> Self {
        Self {
            idle_unload_secs: 60,
            mailbox_capacity: 1024,
            arbiters: 0,
            trickle_linger_us: 2000,
        }
    }
}

impl EngineConfig {
    /// Reads `file` if given (else starts from the defaults), then applies the
    /// process's `SEQSYNC_*` environment variables, then validates.
    ///
    /// Blocking (reads a file). Errors: [`ConfigError`] naming the file, key
    /// or variable at fault. A host file with sections of its own (the
    /// server's `[server]`) is read by the host's configuration, which
    /// holds this one.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        file::load(file)
    }

    /// Parses and validates a TOML document. `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        file::from_toml_str(text, origin)
    }

    /// Applies every `SEQSYNC_<SECTION>_<KEY>` variable of `vars` (others are
    /// ignored) and validates the result. A variable that names no key, or a
    /// value of the wrong type, is an error naming the variable.
    pub fn with_env(
        self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        file::with_env(self, vars)
    }

    /// Checks ranges the types cannot express, each section its own keys.
    /// Errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.storage.validate()?;
        self.compaction.validate()?;
        self.limits.validate()?;
        self.actors.validate()?;
        Ok(())
    }
}

impl ConfigFile for EngineConfig {
    fn to_table(&self) -> Result<toml::Table, String> {
        file::table_of(self)
    }

    fn from_table(table: toml::Table) -> Result<Self, String> {
        file::table_into(table)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        EngineConfig::validate(self)
    }
}

impl StorageConfig {
    /// Checks `[storage]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range(config_key!("storage", self.pool_size), 1, 256)?;
        check_range(config_key!("storage", self.lease_ttl_ms), 1, 600_000)?;
        if self.backend == BackendKind::Postgres && self.url.is_empty() {
            return Err(ConfigError::Invalid {
                key: "storage.url",
                message: "the postgres backend needs a database URL \
                          (postgres://user@host:port/db, or SEQSYNC_STORAGE_URL)"
                    .to_owned(),
            });
        }
        if self.path.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "storage.path",
                message: "must not be empty".to_owned(),
            });
        }
        Ok(())
    }
}

impl CompactionConfig {
    /// Checks `[compaction]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range(config_key!("compaction", self.max_delta_bytes), 1, u64::MAX)?;
        check_range(config_key!("compaction", self.max_deltas), 1, u64::MAX)
    }
}

impl LimitsConfig {
    /// Checks the engine's keys of `[limits]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range(config_key!("limits", self.max_update_bytes), 1, 1 << 30)?;
        check_range(config_key!("limits", self.max_batch_updates), 1, 100_000)?;
        check_range(config_key!("limits", self.stream_page_limit), 1, 1_000_000)
    }
}

impl ActorsConfig {
    /// Checks `[actors]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range(config_key!("actors", self.mailbox_capacity), 1, 1 << 20)?;
        check_range(config_key!("actors", self.idle_unload_secs), 1, u64::MAX)?;
        check_range(config_key!("actors", self.arbiters), 0, MAX_ARBITERS as u64)?;
        check_range(config_key!("actors", self.trickle_linger_us), 0, 100_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Every key is optional: an empty file is the documented defaults.
    #[test]
    fn empty_file_gives_documented_defaults() {
        let config = EngineConfig::from_toml_str("", "test").unwrap();
        assert_eq!(config, EngineConfig::default());
        assert_eq!(config.storage.backend, BackendKind::Sqlite);
        assert_eq!(config.storage.path, PathBuf::from("./seqsync-data"));
        assert_eq!(config.compaction.max_delta_bytes, 1_048_576);
        assert_eq!(config.limits.max_update_bytes, 8_388_608);
    }

    /// The brief's example file must parse as written.
    #[test]
    fn full_file_from_the_brief_parses() {
        let text = r#"
            [storage]
            backend = "redb"
            path = "/tmp/x"
            durability = "eventual"
            [compaction]
            max_delta_bytes = 10
            max_deltas = 5
            peer_timeout_secs = 7
            [limits]
            max_update_bytes = 100
            max_batch_updates = 3
            stream_page_limit = 50
            [actors]
            idle_unload_secs = 2
            mailbox_capacity = 8
        "#;
        let config = EngineConfig::from_toml_str(text, "test").unwrap();
        assert_eq!(config.storage.backend, BackendKind::Redb);
        assert_eq!(config.storage.durability, Durability::Eventual);
        assert_eq!(config.compaction.max_deltas, 5);
        assert_eq!(config.actors.mailbox_capacity, 8);
    }

    /// A typo must not silently leave a limit at its default.
    #[test]
    fn unknown_key_and_bad_value_name_the_key() {
        let err = EngineConfig::from_toml_str("[limits]\nmax_update_byte = 5\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("max_update_byte") && err.contains("f.toml"),
            "{err}"
        );
        let err = EngineConfig::from_toml_str("[storage]\nbackend = \"mysql\"\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mysql"), "{err}");
        let err =
            EngineConfig::from_toml_str("[limits]\nstream_page_limit = 0\n", "f.toml").unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    key: "limits.stream_page_limit",
                    ..
                }
            ),
            "{err}"
        );
        // The host's sections are the host's: the engine alone refuses them.
        let err = EngineConfig::from_toml_str("[server]\nlisten = \"x\"\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server"), "{err}");
    }

    /// Environment variables override file values, keep strings verbatim, and
    /// a bad one is reported by its variable name.
    #[test]
    fn env_overrides_apply_and_errors_name_the_variable() {
        let config = EngineConfig::default()
            .with_env(env(&[
                ("SEQSYNC_STORAGE_BACKEND", "redb"),
                ("SEQSYNC_STORAGE_PATH", "1234"),
                ("SEQSYNC_COMPACTION_MAX_DELTAS", "42"),
                ("PATH", "/usr/bin"),
            ]))
            .unwrap();
        assert_eq!(config.storage.backend, BackendKind::Redb);
        assert_eq!(config.storage.path, PathBuf::from("1234"));
        assert_eq!(config.compaction.max_deltas, 42);

        let err = EngineConfig::default()
            .with_env(env(&[("SEQSYNC_LIMITS_MAX_UPDATE_BYTES", "lots")]))
            .unwrap_err();
        assert!(
            err.to_string().contains("SEQSYNC_LIMITS_MAX_UPDATE_BYTES"),
            "{err}"
        );
        let err = EngineConfig::default()
            .with_env(env(&[("SEQSYNC_STORAGE_BACKEND", "oracle")]))
            .unwrap_err();
        assert!(err.to_string().contains("SEQSYNC_STORAGE_BACKEND"), "{err}");
        let err = EngineConfig::default()
            .with_env(env(&[("SEQSYNC_STORAGE_COLOR", "red")]))
            .unwrap_err();
        assert!(matches!(err, ConfigError::UnknownEnv { .. }), "{err}");
        let err = EngineConfig::default()
            .with_env(env(&[("SEQSYNC_ACTORS_MAILBOX_CAPACITY", "0")]))
            .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                key: "actors.mailbox_capacity",
                ..
            }
        ));
    }

    /// Each section names its keys in its own checks; every key an error
    /// names must be one the file can set, or the message would send an
    /// operator looking for a key that does not exist.
    #[test]
    fn every_key_a_check_names_exists() {
        let table = file::table_of(&EngineConfig::default()).unwrap();
        let mut checked = 0;
        for (section, keys) in &table {
            for (key, value) in keys.as_table().unwrap() {
                if !value.is_integer() {
                    continue;
                }
                for bad in [0i64, i64::MAX] {
                    let mut tree = table.clone();
                    tree[section.as_str()]
                        .as_table_mut()
                        .unwrap()
                        .insert(key.clone(), toml::Value::Integer(bad));
                    // A value its type cannot hold (a u32) is the parser's
                    // to refuse, not a check's.
                    let Ok(config) = file::table_into::<EngineConfig>(tree) else {
                        continue;
                    };
                    if let Err(ConfigError::Invalid { key: named, .. }) = config.validate() {
                        assert_eq!(named, format!("{section}.{key}"));
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked >= 10, "only {checked} checks fired");
    }
}
