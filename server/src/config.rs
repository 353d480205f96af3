//! `HostConfig`: the host server's whole configuration file, the engine's
//! sections and the server's own.
//!
//! Configuration by owner: the engine reads `[storage]`, `[compaction]`,
//! `[actors]`, `[schema]` and its keys of `[limits]` (sizes of updates,
//! batches and pages); the server reads `[server]` (address, tokens, TLS,
//! static files) and its keys of `[limits]` (connections, messages, bodies,
//! timeouts). Operators see one file and one `[limits]` section, as they
//! always have; in code each owner holds its own struct and checks its own
//! keys. [`HostConfig`] joins them: the server's `[limits]` keys are the
//! ones [`ServerLimits`] has (nothing lists them by hand), the rest of the
//! section is the engine's.
//!
//! Reading the file and the `SEQSYNC_*` variables is the engine's
//! [`seqsync_engine::config_file`], shared with the engine's own
//! configuration.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use seqsync_engine::config_file::{self, check_range};
use seqsync_engine::{config_key, ConfigError, ConfigFile, EngineConfig};

/// The host server's configuration: the engine's and the server's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// `[storage]`, `[compaction]`, `[actors]`, `[schema]` and the engine's
    /// keys of `[limits]`.
    pub engine: EngineConfig,
    /// `[server]`: address, tokens, TLS, static files.
    pub server: ServerConfig,
    /// The server's keys of `[limits]`: connections, messages, bodies and
    /// timeouts.
    pub limits: ServerLimits,
    /// `[[webhooks]]`: receivers that get every change of their
    /// collections, from the log by cursor (docs/WEBHOOKS.md).
    pub webhooks: Vec<WebhookConfig>,
}

impl HostConfig {
    /// Reads `file` if given (else starts from the defaults), then applies
    /// the process's `SEQSYNC_*` environment variables, then validates.
    ///
    /// Blocking (reads a file). Errors: [`ConfigError`] naming the file,
    /// key or variable at fault.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        config_file::load(file)
    }

    /// Parses and validates a TOML document. `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        config_file::from_toml_str(text, origin)
    }

    /// Applies every `SEQSYNC_<SECTION>_<KEY>` variable of `vars` (others
    /// are ignored) and validates the result. A variable that names no key,
    /// or a value of the wrong type, is an error naming the variable.
    pub fn with_env(
        self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        config_file::with_env(self, vars)
    }

    /// Checks every section, then what the engine's and the server's keys
    /// must agree on. Errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.engine.validate()?;
        self.server.validate()?;
        self.limits.validate()?;
        if self.webhooks.len() > MAX_WEBHOOKS {
            return Err(ConfigError::Invalid {
                key: "webhooks",
                message: format!(
                    "{} hooks configured; at most {MAX_WEBHOOKS} (one receiver can \
                     fan out further)",
                    self.webhooks.len()
                ),
            });
        }
        for (i, hook) in self.webhooks.iter().enumerate() {
            hook.validate()?;
            if self.webhooks[..i].iter().any(|h| h.name == hook.name) {
                return Err(ConfigError::Invalid {
                    key: "webhooks.name",
                    message: format!(
                        "two hooks are named {:?}; each hook's name is its position's \
                         identity (a peer of its collections), so names must differ",
                        hook.name
                    ),
                });
            }
        }
        let max_update_bytes = self.engine.limits.max_update_bytes;
        if self.limits.max_message_bytes < max_update_bytes {
            return Err(ConfigError::Invalid {
                key: "limits.max_message_bytes",
                message: "must be at least limits.max_update_bytes, or a /yws client \
                          could not send an update the engine accepts"
                    .to_owned(),
            });
        }
        if self.limits.max_body_bytes < max_update_bytes {
            return Err(ConfigError::Invalid {
                key: "limits.max_body_bytes",
                message: "must be at least limits.max_update_bytes, or an update the \
                          engine accepts could not be pushed"
                    .to_owned(),
            });
        }
        Ok(())
    }
}

impl ConfigFile for HostConfig {
    fn to_table(&self) -> Result<toml::Table, String> {
        let mut table = self.engine.to_table()?;
        table.insert(
            "server".to_owned(),
            toml::Value::Table(config_file::table_of(&self.server)?),
        );
        let limits = table
            .entry("limits")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(limits) = limits {
            limits.extend(config_file::table_of(&self.limits)?);
        }
        if !self.webhooks.is_empty() {
            let hooks = self
                .webhooks
                .iter()
                .map(|hook| config_file::table_of(hook).map(toml::Value::Table))
                .collect::<Result<Vec<_>, String>>()?;
            table.insert("webhooks".to_owned(), toml::Value::Array(hooks));
        }
        Ok(table)
    }

    fn from_table(mut table: toml::Table) -> Result<Self, String> {
        let webhooks = match table.remove("webhooks") {
            None => Vec::new(),
            Some(toml::Value::Array(hooks)) => hooks
                .into_iter()
                .enumerate()
                .map(|(i, hook)| match hook {
                    toml::Value::Table(hook) => config_file::table_into(hook)
                        .map_err(|message| format!("[[webhooks]] #{}: {message}", i + 1)),
                    _ => Err("`webhooks` must be an array of tables ([[webhooks]])".to_owned()),
                })
                .collect::<Result<Vec<WebhookConfig>, String>>()?,
            Some(_) => {
                return Err("`webhooks` must be an array of tables ([[webhooks]])".to_owned())
            }
        };
        let server = match table.remove("server") {
            None => ServerConfig::default(),
            Some(toml::Value::Table(server)) => {
                config_file::table_into(server).map_err(|message| format!("[server]: {message}"))?
            }
            Some(_) => return Err("`server` must be a section ([server])".to_owned()),
        };
        // The server's keys of `[limits]` are the ones `ServerLimits` has;
        // whatever else the section holds is the engine's to accept or
        // refuse.
        let server_keys = config_file::table_of(&ServerLimits::default())?;
        let mut limits = toml::Table::new();
        if let Some(toml::Value::Table(shared)) = table.get_mut("limits") {
            for key in server_keys.keys() {
                if let Some(value) = shared.remove(key) {
                    limits.insert(key.clone(), value);
                }
            }
        }
        let limits =
            config_file::table_into(limits).map_err(|message| format!("[limits]: {message}"))?;
        Ok(Self {
            engine: EngineConfig::from_table(table)?,
            server,
            limits,
            webhooks,
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        HostConfig::validate(self)
    }
}

/// `[server]` section: the host server's address, tokens, TLS and static
/// files. Its `Debug` hides the tokens and the secret.
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

impl ServerConfig {
    /// Checks `[server]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tls_cert_path.as_os_str().is_empty() != self.tls_key_path.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "server.tls_cert_path",
                message: "set both server.tls_cert_path and server.tls_key_path for TLS, \
                          or neither for plain HTTP"
                    .to_owned(),
            });
        }
        if self.listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::Invalid {
                key: "server.listen",
                message: format!(
                    "{:?} is not a socket address such as 127.0.0.1:8787",
                    self.listen
                ),
            });
        }
        Ok(())
    }
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

/// At most this many `[[webhooks]]`.
pub const MAX_WEBHOOKS: usize = 16;
/// At most this many collections per hook (each is followed by a task of
/// its own).
pub const MAX_WEBHOOK_COLLECTIONS: usize = 64;

/// One `[[webhooks]]` entry: a receiver that gets every change of its
/// collections, batched, signed, retried until it answers 2xx.
///
/// The hook is a peer of each of its collections (`webhook:<name>`): what
/// it delivered is acked like a client's position, so it survives restarts
/// and compaction waits for it while it is active. Its `Debug` hides the
/// secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// The hook's identity: 1–64 of `a-z 0-9 - _`; its peer id is
    /// `webhook:<name>`, so renaming it starts it over from seq 0.
    /// Required.
    pub name: String,
    /// Where changes are POSTed (`http://` or `https://`). Required.
    pub url: String,
    /// The collections it follows (1 to 64 names). Required.
    pub collections: Vec<String>,
    /// The HMAC-SHA256 key of the `x-seqsync-signature` header; at least
    /// 16 bytes. Required. Never logged.
    pub secret: String,
    /// How long a batch waits for more changes after its first before it
    /// is sent (0: at once); default 200.
    pub batch_window_ms: u64,
    /// Most changes in one request; default 100 (at most 10,000).
    pub max_batch_changes: u64,
    /// Most payload bytes in one request (with `include_updates`); a batch
    /// always holds at least one change; default 1 MiB.
    pub max_batch_bytes: u64,
    /// Retries wait 250 ms, then twice as long each time, jittered, never
    /// more than this; default 60,000. Retries never stop: a change is
    /// never skipped.
    pub retry_ceiling_ms: u64,
    /// One request's whole time (connect, send, answer); default 10,000.
    pub request_timeout_ms: u64,
    /// Send each change's Yjs bytes too (base64); default false (the
    /// receiver fetches what it needs).
    pub include_updates: bool,
}

impl WebhookConfig {
    /// The hook's peer id in each of its collections.
    pub fn peer_id(&self) -> String {
        format!("webhook:{}", self.name)
    }

    /// Checks one hook's keys. Errors name the key and the hook.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            key,
            message: format!("hook {:?}: {message}", self.name),
        };
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(invalid(
                "webhooks.name",
                "set a name of 1 to 64 characters among a-z, 0-9, - and _".to_owned(),
            ));
        }
        let scheme_ok = self.url.starts_with("http://") || self.url.starts_with("https://");
        if !scheme_ok || self.url.len() <= "https://".len() {
            return Err(invalid(
                "webhooks.url",
                format!("{:?} is not an http:// or https:// URL", self.url),
            ));
        }
        if self.collections.is_empty() || self.collections.len() > MAX_WEBHOOK_COLLECTIONS {
            return Err(invalid(
                "webhooks.collections",
                format!("list 1 to {MAX_WEBHOOK_COLLECTIONS} collections"),
            ));
        }
        for (i, name) in self.collections.iter().enumerate() {
            if let Err(e) = seqsync_engine::CollectionName::new(name.as_str()) {
                return Err(invalid("webhooks.collections", e.to_string()));
            }
            if self.collections[..i].contains(name) {
                return Err(invalid(
                    "webhooks.collections",
                    format!("{name:?} is listed twice"),
                ));
            }
        }
        if self.secret.len() < 16 {
            return Err(invalid(
                "webhooks.secret",
                "set a secret of at least 16 bytes (receivers check each request's \
                 signature with it)"
                    .to_owned(),
            ));
        }
        check_range(config_key!("webhooks", self.batch_window_ms), 0, 60_000)?;
        check_range(config_key!("webhooks", self.max_batch_changes), 1, 10_000)?;
        check_range(config_key!("webhooks", self.max_batch_bytes), 1, 64 << 20)?;
        check_range(
            config_key!("webhooks", self.retry_ceiling_ms),
            250,
            3_600_000,
        )?;
        check_range(
            config_key!("webhooks", self.request_timeout_ms),
            100,
            600_000,
        )?;
        Ok(())
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            url: String::new(),
            collections: Vec::new(),
            secret: String::new(),
            batch_window_ms: 200,
            max_batch_changes: 100,
            max_batch_bytes: 1 << 20,
            retry_ceiling_ms: 60_000,
            request_timeout_ms: 10_000,
            include_updates: false,
        }
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("collections", &self.collections)
            .field("secret", &"***")
            .field("batch_window_ms", &self.batch_window_ms)
            .field("max_batch_changes", &self.max_batch_changes)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("retry_ceiling_ms", &self.retry_ceiling_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("include_updates", &self.include_updates)
            .finish()
    }
}

/// The server's keys of the `[limits]` section: what one client may cost
/// the host (connections, message and body sizes, timeouts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerLimits {
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
    /// The longest a write waits to be confirmed durable: past it an HTTP
    /// write (push, batch, delete, ack, restore) gets 503 `commit_timeout`
    /// with `Retry-After`, and a sync socket's push or ack `push_error` /
    /// `ack_error` `commit_timeout` on a socket that stays open, so a slow
    /// or unreachable database never holds clients without bound; default
    /// 10,000. The write stays queued and may still land, so a retry is
    /// safe. It also bounds a sync socket's hello (which reads storage):
    /// past it, `error` `storage` and a close, and the client reconnects.
    /// `/yws` updates wait instead: those connections stay open and resume
    /// when the database does.
    pub commit_timeout_ms: u64,
}

impl ServerLimits {
    /// Checks the server's keys of `[limits]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let at_least_1 = |key| check_range(key, 1, u64::MAX);
        at_least_1(config_key!("limits", self.max_connections))?;
        at_least_1(config_key!("limits", self.max_connections_per_collection))?;
        at_least_1(config_key!("limits", self.max_message_bytes))?;
        at_least_1(config_key!("limits", self.max_body_bytes))?;
        at_least_1(config_key!("limits", self.client_request_timeout_ms))?;
        at_least_1(config_key!("limits", self.body_timeout_ms))?;
        at_least_1(config_key!("limits", self.awareness_messages_per_sec))?;
        at_least_1(config_key!("limits", self.ws_ping_interval_ms))?;
        at_least_1(config_key!("limits", self.ws_idle_timeout_ms))?;
        at_least_1(config_key!("limits", self.ws_send_timeout_ms))?;
        at_least_1(config_key!("limits", self.commit_timeout_ms))?;
        if self.ws_idle_timeout_ms <= self.ws_ping_interval_ms {
            return Err(ConfigError::Invalid {
                key: "limits.ws_idle_timeout_ms",
                message: "must be longer than limits.ws_ping_interval_ms, or every \
                          socket would time out between two pings"
                    .to_owned(),
            });
        }
        Ok(())
    }
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
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
            commit_timeout_ms: 10_000,
        }
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

    /// Every key is optional: an empty file is the documented defaults of
    /// every owner.
    #[test]
    fn empty_file_gives_every_owners_defaults() {
        let config = HostConfig::from_toml_str("", "test").unwrap();
        assert_eq!(config, HostConfig::default());
        assert_eq!(config.server.listen, "127.0.0.1:8787");
        assert_eq!(config.limits.max_connections, 16_384);
        assert_eq!(config.engine.limits.max_update_bytes, 8_388_608);
    }

    /// Operators keep one `[limits]` section: its keys go to the owner that
    /// reads them, and a typo there is still refused.
    #[test]
    fn one_limits_section_serves_both_owners() {
        let text = r#"
            [storage]
            backend = "redb"
            [limits]
            max_update_bytes = 100
            max_connections = 7
            ws_ping_interval_ms = 10
            ws_idle_timeout_ms = 20
            [server]
            listen = "127.0.0.1:9000"
        "#;
        let config = HostConfig::from_toml_str(text, "test").unwrap();
        assert_eq!(config.engine.limits.max_update_bytes, 100);
        assert_eq!(config.limits.max_connections, 7);
        assert_eq!(config.server.listen, "127.0.0.1:9000");
        assert_eq!(config.engine.storage.path, PathBuf::from("./seqsync-data"));

        let err = HostConfig::from_toml_str("[limits]\n\nmax_connection = 5\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("max_connection") && err.contains("f.toml") && err.contains("line 3"),
            "{err}"
        );
        let err = HostConfig::from_toml_str("[server]\nlisten_on = \"x\"\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_on"), "{err}");
        let err = HostConfig::from_toml_str("[server]\nlisten = \"nope\"\n", "f.toml").unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                key: "server.listen",
                ..
            }
        ));
    }

    /// The server's limits must admit what the engine accepts; the check
    /// spans two owners, so the host makes it.
    #[test]
    fn limits_that_must_agree_across_owners_are_checked() {
        let err = HostConfig::from_toml_str(
            "[limits]\nmax_update_bytes = 2000\nmax_body_bytes = 1000\n",
            "f.toml",
        )
        .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                key: "limits.max_body_bytes",
                ..
            }
        ));
    }

    /// Environment variables reach every owner's keys by the same names as
    /// before the split.
    #[test]
    fn env_overrides_reach_every_owner() {
        let config = HostConfig::default()
            .with_env(env(&[
                ("SEQSYNC_STORAGE_BACKEND", "redb"),
                ("SEQSYNC_SERVER_LISTEN", "127.0.0.1:9000"),
                ("SEQSYNC_LIMITS_MAX_CONNECTIONS", "12"),
                ("SEQSYNC_LIMITS_STREAM_PAGE_LIMIT", "30"),
            ]))
            .unwrap();
        assert_eq!(
            config.engine.storage.backend,
            seqsync_engine::BackendKind::Redb
        );
        assert_eq!(config.server.listen, "127.0.0.1:9000");
        assert_eq!(config.limits.max_connections, 12);
        assert_eq!(config.engine.limits.stream_page_limit, 30);
        let err = HostConfig::default()
            .with_env(env(&[("SEQSYNC_LIMITS_WS_IDLE_TIMEOUT_MS", "0")]))
            .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                key: "limits.ws_idle_timeout_ms",
                ..
            }
        ));
        let err = HostConfig::default()
            .with_env(env(&[("SEQSYNC_SERVER_COLOR", "red")]))
            .unwrap_err();
        assert!(matches!(err, ConfigError::UnknownEnv { .. }), "{err}");
    }

    /// Every key an error names must be one the file can set.
    #[test]
    fn every_key_a_check_names_exists() {
        let table = HostConfig::default().to_table().unwrap();
        let mut checked = 0;
        for (section, keys) in &table {
            for (key, value) in keys.as_table().unwrap() {
                if !value.is_integer() {
                    continue;
                }
                let mut tree = table.clone();
                tree[section.as_str()]
                    .as_table_mut()
                    .unwrap()
                    .insert(key.clone(), toml::Value::Integer(0));
                let Ok(config) = HostConfig::from_table(tree) else {
                    continue;
                };
                if let Err(ConfigError::Invalid { key: named, .. }) = config.validate() {
                    assert!(
                        table[named.split('.').next().unwrap()]
                            .as_table()
                            .unwrap()
                            .contains_key(named.split('.').nth(1).unwrap()),
                        "{named} is not a key of the file"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 15, "only {checked} checks fired");
    }

    /// `[[webhooks]]` entries are read as written, and a hook an operator
    /// got wrong is refused at start with the key and the hook named,
    /// never started half-configured.
    #[test]
    fn webhooks_are_read_and_bad_ones_refused_by_key() {
        let hook = |extra: &str| {
            format!(
                "[[webhooks]]\nname = \"search\"\nurl = \"https://index.example/hook\"\n\
                 collections = [\"notes\"]\nsecret = \"0123456789abcdef\"\n{extra}"
            )
        };
        let config = HostConfig::from_toml_str(&hook("batch_window_ms = 50"), "test").unwrap();
        assert_eq!(config.webhooks.len(), 1);
        assert_eq!(config.webhooks[0].batch_window_ms, 50);
        assert_eq!(config.webhooks[0].peer_id(), "webhook:search");
        assert!(
            !format!("{config:?}").contains("0123456789abcdef"),
            "the secret is never logged"
        );
        let round_trip = config.to_table().unwrap();
        assert_eq!(HostConfig::from_table(round_trip).unwrap(), config);

        let refused = |text: &str| match HostConfig::from_toml_str(text, "test") {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{text}: {other:?}"),
        };
        let with = |from: &str, to: &str| hook("").replace(from, to);
        assert_eq!(refused(&with("\"search\"", "\"Search!\"")), "webhooks.name");
        assert_eq!(
            refused(&with("https://index.example/hook", "ftp://x")),
            "webhooks.url"
        );
        assert_eq!(refused(&with("[\"notes\"]", "[]")), "webhooks.collections");
        assert_eq!(
            refused(&with("[\"notes\"]", "[\"notes\", \"notes\"]")),
            "webhooks.collections"
        );
        assert_eq!(
            refused(&with("0123456789abcdef", "short")),
            "webhooks.secret"
        );
        assert_eq!(
            refused(&hook("max_batch_changes = 0")),
            "webhooks.max_batch_changes"
        );
        assert_eq!(
            refused(&format!("{}{}", hook(""), hook(""))),
            "webhooks.name"
        );
        let unknown = HostConfig::from_toml_str(&hook("retries = 3"), "test").unwrap_err();
        assert!(unknown.to_string().contains("retries"), "{unknown}");
    }
}
