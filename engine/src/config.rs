//! `EngineConfig`: one TOML file, every key optional, overridden by
//! `SEQSYNC_<SECTION>_<KEY>` environment variables (README, "Configuration").
//!
//! Unknown keys are errors rather than silently ignored: a typo such as
//! `max_delta_byte` would otherwise leave a limit at its default without anyone
//! noticing. Environment overrides are applied to the TOML tree of the current
//! config and the tree is deserialized again, so a bad value from the
//! environment fails with the same checks, and the error names the variable.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "SEQSYNC_";

/// The whole configuration of an engine and of the host example.
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
    /// `[server]`: read by the host server, ignored by the engine.
    pub server: ServerConfig,
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
    /// The host server's open WebSockets (`/yws` and `subscribe`) in
    /// total; one more is answered 503 `too_many_connections`; default
    /// 16,384 (each holds a file descriptor: the process's limit must
    /// allow it). Each WebSocket carries exactly one subscription.
    pub max_connections: u64,
    /// Open WebSockets on one collection; one more is answered 503
    /// `too_many_connections`; default 8,192 (4,000 rooms of a writer and
    /// an observer, `yws_load`'s largest step, fit).
    pub max_connections_per_collection: u64,
    /// Largest WebSocket message a client may send (a frame, or the
    /// fragments of one message together); a larger one closes the socket
    /// with 1009 (message too big); default 8 MiB + 64 KiB (one update of
    /// `max_update_bytes` and its framing).
    pub max_message_bytes: u64,
    /// Largest request body on every HTTP route (413 `too_large`); default
    /// 17 MiB (a batch of base64 updates).
    pub max_body_bytes: u64,
    /// The longest a client may take to send a request's headers (slow
    /// loris): the connection is answered 408 and closed; default 5,000.
    pub client_request_timeout_ms: u64,
    /// The longest a client may take to send a request's body (408
    /// `body_timeout`); default 30,000.
    pub body_timeout_ms: u64,
    /// Awareness messages per second one `/yws` connection may send (the
    /// budget refills at this rate and holds two seconds' worth); further
    /// ones are dropped and counted; default 20.
    pub awareness_messages_per_sec: u64,
    /// Interval of the server's WebSocket pings; default 15,000.
    pub ws_ping_interval_ms: u64,
    /// A WebSocket from which nothing (not even a pong) arrived for this
    /// long is closed (1001 going away, reason `idle`); default 60,000.
    pub ws_idle_timeout_ms: u64,
    /// A WebSocket whose client does not take a message for this long (it
    /// stopped reading) is closed (1008, reason `slow_reader`), so it holds
    /// at most a bounded queue meanwhile; default 10,000.
    pub ws_send_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_update_bytes: 8 << 20,
            max_batch_updates: 1000,
            stream_page_limit: 1000,
            max_connections: 16_384,
            max_connections_per_collection: 8_192,
            max_message_bytes: (8 << 20) + (64 << 10),
            max_body_bytes: 17 << 20,
            client_request_timeout_ms: 5_000,
            body_timeout_ms: 30_000,
            awareness_messages_per_sec: 20,
            ws_ping_interval_ms: 15_000,
            ws_idle_timeout_ms: 60_000,
            ws_send_timeout_ms: 10_000,
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

/// `[server]` section: used by the host server, not by the engine.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Socket address to listen on; default `127.0.0.1:8787`.
    pub listen: String,
    /// Bearer token that grants reads (`Authorization: Bearer <token>`);
    /// empty (the default) with an empty `write_token` turns auth off.
    pub read_token: String,
    /// Bearer token that grants reads and writes; empty = none.
    pub write_token: String,
    /// This node's URL as other nodes and clients reach it (e.g.
    /// `http://10.0.0.7:8787`), for several nodes on one PostgreSQL
    /// database: it names the node in leases (unless `storage.node_id` is
    /// set), and a node that does not own a collection answers a write
    /// with a 307 to the owner's. Empty (the default): writes to a
    /// non-owner answer 503 with `Retry-After`.
    pub advertise_url: String,
    /// Signed client tokens (JWT, HS256) are verified with this secret;
    /// empty (the default): none. Never logged.
    pub token_secret: String,
    /// Signed client tokens (JWT, EdDSA) are verified with this Ed25519
    /// public key (PEM text, or a path to a PEM file); empty: none. Set at
    /// most one of `token_secret` and `token_public_key`.
    pub token_public_key: String,
    /// Directory of static files served at `/` (the demo editor that
    /// `npm run build` writes to `demo/dist`), relative to the working
    /// directory; default `demo/dist`, so the server started from a
    /// checkout serves the demo. Paths without a file there get its
    /// `index.html`; while it has none, `/` answers a page naming the
    /// command that builds it. Empty: nothing is served at `/`.
    pub static_dir: PathBuf,
    /// TLS: the server's certificate chain (PEM file). With `tls_key_path`
    /// set too, the server speaks only HTTPS and WSS on `listen`; both empty
    /// (the default): plain HTTP, for a server behind a TLS proxy or on
    /// loopback.
    pub tls_cert_path: PathBuf,
    /// TLS: the private key of `tls_cert_path` (PEM file: PKCS#8, PKCS#1
    /// or SEC1). Never logged.
    pub tls_key_path: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8787".to_owned(),
            read_token: String::new(),
            write_token: String::new(),
            advertise_url: String::new(),
            token_secret: String::new(),
            token_public_key: String::new(),
            static_dir: PathBuf::from("demo/dist"),
            tls_cert_path: PathBuf::new(),
            tls_key_path: PathBuf::new(),
        }
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |s: &str| if s.is_empty() { "" } else { "***" };
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("read_token", &hidden(&self.read_token))
            .field("write_token", &hidden(&self.write_token))
            .field("advertise_url", &self.advertise_url)
            .field("token_secret", &hidden(&self.token_secret))
            .field("token_public_key", &self.token_public_key.len())
            .field("static_dir", &self.static_dir)
            .field("tls_cert_path", &self.tls_cert_path)
            .field("tls_key_path", &self.tls_key_path)
            .finish()
    }
}

impl EngineConfig {
    /// Reads `file` if given (else starts from the defaults), then applies the
    /// process's `SEQSYNC_*` environment variables, then validates.
    ///
    /// Blocking (reads a file). Errors: [`ConfigError`] naming the file, key
    /// or variable at fault.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let base = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                    path: path.to_owned(),
                    source: Arc::new(e),
                })?;
                Self::from_toml_str(&text, &path.display().to_string())?
            }
            None => Self::default(),
        };
        base.with_env(std::env::vars())
    }

    /// Parses and validates a TOML document. `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.message().to_owned() + &span_hint(text, e.span()),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Applies every `SEQSYNC_<SECTION>_<KEY>` variable of `vars` (others are
    /// ignored) and validates the result. A variable that names no key, or a
    /// value of the wrong type, is an error naming the variable.
    pub fn with_env(
        self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut config = self;
        let mut overrides: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        overrides.sort();
        for (var, raw) in overrides {
            config = config.with_override(&var, &raw)?;
        }
        config.validate()?;
        Ok(config)
    }

    fn with_override(&self, var: &str, raw: &str) -> Result<Self, ConfigError> {
        let unknown = || ConfigError::UnknownEnv {
            var: var.to_owned(),
        };
        let mut tree = toml::Table::try_from(self).map_err(|e| ConfigError::Parse {
            origin: var.to_owned(),
            message: e.to_string(),
        })?;
        let rest = var[ENV_PREFIX.len()..].to_ascii_lowercase();
        let (section, key) = rest.split_once('_').ok_or_else(unknown)?;
        let section = tree
            .get_mut(section)
            .and_then(|s| s.as_table_mut())
            .ok_or_else(unknown)?;
        let current = section.get(key).ok_or_else(unknown)?;
        // Strings stay verbatim (a path may look like a number); everything
        // else is read as a TOML value so `1024` is an integer.
        let value = if current.is_str() {
            toml::Value::String(raw.to_owned())
        } else {
            let parsed: toml::Table =
                toml::from_str(&format!("v = {raw}")).map_err(|_| ConfigError::Parse {
                    origin: var.to_owned(),
                    message: format!("{raw:?} is not a valid {}", current.type_str()),
                })?;
            parsed.get("v").cloned().ok_or_else(unknown)?
        };
        section.insert(key.to_owned(), value);
        toml::Value::Table(tree)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                origin: var.to_owned(),
                message: e.message().to_owned(),
            })
    }

    /// Checks ranges the types cannot express. Errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive: [(&'static str, u64); 19] = [
            ("limits.max_connections", self.limits.max_connections),
            (
                "limits.max_connections_per_collection",
                self.limits.max_connections_per_collection,
            ),
            ("limits.max_message_bytes", self.limits.max_message_bytes),
            ("limits.max_body_bytes", self.limits.max_body_bytes),
            (
                "limits.client_request_timeout_ms",
                self.limits.client_request_timeout_ms,
            ),
            ("limits.body_timeout_ms", self.limits.body_timeout_ms),
            (
                "limits.awareness_messages_per_sec",
                self.limits.awareness_messages_per_sec,
            ),
            (
                "limits.ws_ping_interval_ms",
                self.limits.ws_ping_interval_ms,
            ),
            ("limits.ws_idle_timeout_ms", self.limits.ws_idle_timeout_ms),
            ("limits.ws_send_timeout_ms", self.limits.ws_send_timeout_ms),
            ("storage.pool_size", self.storage.pool_size),
            ("storage.lease_ttl_ms", self.storage.lease_ttl_ms),
            (
                "compaction.max_delta_bytes",
                self.compaction.max_delta_bytes,
            ),
            ("compaction.max_deltas", self.compaction.max_deltas),
            ("limits.max_update_bytes", self.limits.max_update_bytes),
            ("limits.max_batch_updates", self.limits.max_batch_updates),
            ("limits.stream_page_limit", self.limits.stream_page_limit),
            ("actors.mailbox_capacity", self.actors.mailbox_capacity),
            ("actors.idle_unload_secs", self.actors.idle_unload_secs),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    message: "must be at least 1".to_owned(),
                });
            }
        }
        let bounded: [(&'static str, u64, u64); 8] = [
            ("storage.pool_size", self.storage.pool_size, 256),
            ("storage.lease_ttl_ms", self.storage.lease_ttl_ms, 600_000),
            ("actors.arbiters", self.actors.arbiters, MAX_ARBITERS as u64),
            (
                "actors.trickle_linger_us",
                self.actors.trickle_linger_us,
                100_000,
            ),
            (
                "limits.max_update_bytes",
                self.limits.max_update_bytes,
                1 << 30,
            ),
            (
                "limits.max_batch_updates",
                self.limits.max_batch_updates,
                100_000,
            ),
            (
                "limits.stream_page_limit",
                self.limits.stream_page_limit,
                1_000_000,
            ),
            (
                "actors.mailbox_capacity",
                self.actors.mailbox_capacity,
                1 << 20,
            ),
        ];
        for (key, value, max) in bounded {
            if value > max {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("{value} is above the maximum of {max}"),
                });
            }
        }
        if self.server.tls_cert_path.as_os_str().is_empty()
            != self.server.tls_key_path.as_os_str().is_empty()
        {
            return Err(ConfigError::Invalid {
                key: "server.tls_cert_path",
                message: "set both server.tls_cert_path and server.tls_key_path for TLS,                           or neither for plain HTTP"
                    .to_owned(),
            });
        }
        if self.limits.ws_idle_timeout_ms <= self.limits.ws_ping_interval_ms {
            return Err(ConfigError::Invalid {
                key: "limits.ws_idle_timeout_ms",
                message: "must be longer than limits.ws_ping_interval_ms, or every \
                          socket would time out between two pings"
                    .to_owned(),
            });
        }
        if self.limits.max_message_bytes < self.limits.max_update_bytes {
            return Err(ConfigError::Invalid {
                key: "limits.max_message_bytes",
                message: "must be at least limits.max_update_bytes, or a /yws client \
                          could not send an update the engine accepts"
                    .to_owned(),
            });
        }
        if self.limits.max_body_bytes < self.limits.max_update_bytes {
            return Err(ConfigError::Invalid {
                key: "limits.max_body_bytes",
                message: "must be at least limits.max_update_bytes, or an update the \
                          engine accepts could not be pushed"
                    .to_owned(),
            });
        }
        if self.storage.backend == BackendKind::Postgres && self.storage.url.is_empty() {
            return Err(ConfigError::Invalid {
                key: "storage.url",
                message: "the postgres backend needs a database URL (postgres://user@host:port/db, or SEQSYNC_STORAGE_URL)".to_owned(),
            });
        }
        if self.storage.path.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "storage.path",
                message: "must not be empty".to_owned(),
            });
        }
        if self.server.listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::Invalid {
                key: "server.listen",
                message: format!(
                    "{:?} is not a socket address such as 127.0.0.1:8787",
                    self.server.listen
                ),
            });
        }
        Ok(())
    }
}

fn span_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) if span.start <= text.len() => {
            let line = text[..span.start].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        _ => String::new(),
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
        assert_eq!(config.server.listen, "127.0.0.1:8787");
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
            [server]
            listen = "127.0.0.1:9000"
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
        let err =
            EngineConfig::from_toml_str("[server]\nlisten = \"nope\"\n", "f.toml").unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                key: "server.listen",
                ..
            }
        ));
    }

    /// Environment variables override file values, keep strings verbatim, and
    /// a bad one is reported by its variable name.
    #[test]
    fn env_overrides_apply_and_errors_name_the_variable() {
        let config = EngineConfig::default()
            .with_env(env(&[
                ("SEQSYNC_STORAGE_BACKEND", "redb"),
                ("SEQSYNC_STORAGE_PATH", "1234"),
                ("SEQSYNC_SERVER_LISTEN", "127.0.0.1:9000"),
                ("SEQSYNC_COMPACTION_MAX_DELTAS", "42"),
                ("PATH", "/usr/bin"),
            ]))
            .unwrap();
        assert_eq!(config.storage.backend, BackendKind::Redb);
        assert_eq!(config.storage.path, PathBuf::from("1234"));
        assert_eq!(config.server.listen, "127.0.0.1:9000");
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
}
