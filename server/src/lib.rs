//! seqsync-server: the host server (docs/SERVER.md), built on actix-web.
//!
//! It is the proof that the engine embeds cleanly: everything here is HTTP
//! (routes, bodies, status codes, WebSockets, auth, metrics export); every
//! decision about documents is the engine's. The library neither parses
//! arguments nor sets up logging: `seqsync serve` (the `seqsync` command
//! line) is the way to run it, and `examples/server.rs` shows how a host
//! embeds it in a few lines ([`HostConfig::load`], then [`serve`]).
//!
//! Code map: [`config`] (the host's configuration: the engine's sections
//! and the server's), `routes` (the REST routes), `subscribe_ws` (the change stream as
//! a WebSocket of JSON), `sync_ws` (the collection sync socket: pushes,
//! stream and acks in binary frames of `seqsync-protocol`), `yws` (the y-websocket protocol), `static_files` (the demo
//! editor at `/`, from `[server] static_dir`), [`auth`] (the hook and the
//! bearer-token implementation), [`error`] (engine errors as JSON answers),
//! [`decode`] (pure decoders of bodies, query strings and y-websocket frames).

#![deny(missing_docs)]

pub mod auth;
pub mod config;
pub mod decode;
pub mod error;
mod forward;
mod history;
mod limits;
mod listings;
mod presence;
mod rooms;
mod routes;
mod static_files;
mod subscribe_ws;
mod sync_ws;
pub mod tls;
pub mod webhooks;
mod yws;

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use actix_web::{web, App, HttpResponse, HttpServer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use seqsync_actors::Engine;
use seqsync_engine::{ConfigError, LimitsConfig, OpenError};

pub use crate::auth::{
    constant_time_eq, AccessRequest, Authorizer, BearerTokens, Operation, TokenClaims, Tokens,
};
pub use crate::config::{HostConfig, ServerConfig, ServerLimits, WebhookConfig};
pub use crate::error::ApiError;
pub use crate::routes::CURSOR_HEADER;
pub use crate::webhooks::Webhooks;

/// Threads serving HTTP (the engine has its own).
const HTTP_WORKERS: usize = 2;
/// Seconds a graceful stop waits for open requests.
const SHUTDOWN_TIMEOUT_SECS: u64 = 10;

/// What every handler shares.
pub struct AppState {
    engine: Engine,
    metrics: PrometheusHandle,
    auth: Arc<dyn Authorizer>,
    rooms: rooms::Rooms,
    /// `[server]`: tokens, static files.
    server: ServerConfig,
    /// The server's keys of `[limits]`.
    limits: ServerLimits,
    /// Open WebSockets, bounded by `limits.max_connections` (in total and
    /// per collection).
    connections: Arc<limits::ConnectionLimits>,
}

impl AppState {
    /// The engine's keys of `[limits]` (update, batch and page sizes).
    fn engine_limits(&self) -> &LimitsConfig {
        &self.engine.config().limits
    }

    /// Awaits a write's answer for at most `limits.commit_timeout_ms`; past
    /// it, 503 `commit_timeout` with `Retry-After`. Dropping the wait does
    /// not withdraw the write: it is queued with the collection's actor and
    /// may still commit (so a retry is safe).
    async fn bounded<T, E: Into<ApiError>>(
        &self,
        write: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, ApiError> {
        bounded_write(self.limits.commit_timeout_ms, write).await
    }

    /// A batch body holds base64 updates: twice the update limit, within
    /// the body limit of every route.
    fn batch_body_limit_bytes(&self) -> u64 {
        self.engine_limits()
            .max_update_bytes
            .saturating_mul(2)
            .max(1 << 20)
            .min(self.limits.max_body_bytes)
    }
}

/// [`AppState::bounded`] for a task that holds no `AppState` (the sync
/// socket's answers): the write's answer, or `commit_timeout` after
/// `commit_timeout_ms`.
pub(crate) async fn bounded_write<T, E: Into<ApiError>>(
    commit_timeout_ms: u64,
    write: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(limits::millis(commit_timeout_ms), write).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => {
            metrics::counter!("seqsync_refused_total", "reason" => "commit_timeout").increment(1);
            Err(ApiError::commit_timeout(commit_timeout_ms))
        }
    }
}

/// The process-wide Prometheus recorder, installed on first use. If another
/// recorder is installed already, metrics go there and `/metrics` renders an
/// empty page.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .install_recorder()
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle());
            seqsync_actors::metrics::describe();
            handle
        })
        .clone()
}

/// Builds the HTTP server of `engine` on an already bound listener, with
/// the server's sections of `host` (the engine was opened with its
/// `engine` section). The server runs when awaited (inside an actix system)
/// and stops gracefully on SIGINT/SIGTERM unless `handle_signals` is false.
/// Errors: the listener cannot be used.
///
/// With `[server] tls_cert_path` and `tls_key_path` set, it serves HTTPS
/// and WSS only; a TLS file that cannot be used is an `InvalidInput` error.
pub fn server(
    engine: Engine,
    host: &HostConfig,
    auth: Arc<dyn Authorizer>,
    listener: TcpListener,
    handle_signals: bool,
) -> std::io::Result<actix_web::dev::Server> {
    let tls_config = tls::server_config(&host.server.tls_cert_path, &host.server.tls_key_path)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let state = web::Data::new(AppState {
        server: host.server.clone(),
        limits: host.limits.clone(),
        engine,
        metrics: prometheus(),
        auth,
        rooms: rooms::Rooms::default(),
        connections: Arc::default(),
    });
    let client_request_timeout = limits::millis(state.limits.client_request_timeout_ms);
    let max_body_bytes = state.limits.max_body_bytes;
    let mut builder = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap_fn(|req, srv| {
                let path = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                let answer = actix_web::dev::Service::call(srv, req);
                async move { Ok(redirect_to_owner(answer.await?, &path)) }
            })
            // A body declared larger than `limits.max_body_bytes` is
            // answered 413 before anything reads it (read_body's own limit
            // covers bodies without a length).
            .wrap_fn(
                move |req, srv| match limits::declared_body_too_large(&req, max_body_bytes) {
                    Some(err) => {
                        let (req, _) = req.into_parts();
                        let response = actix_web::ResponseError::error_response(&err);
                        let answer = actix_web::dev::ServiceResponse::new(req, response)
                            .map_into_right_body();
                        Box::pin(async move { Ok(answer) })
                            as futures::future::LocalBoxFuture<'static, _>
                    }
                    None => {
                        let answer = actix_web::dev::Service::call(srv, req);
                        Box::pin(async move { Ok(answer.await?.map_into_left_body()) })
                    }
                },
            )
            .configure(routes::configure)
            // `[server] static_dir` at `/` (the demo editor), else 404 JSON.
            .default_service(web::to(static_files::serve))
    })
    .workers(HTTP_WORKERS)
    // No Nagle: a sync socket carries a stream of small frames, so there is
    // nearly always unacknowledged data in flight, and Nagle would hold each
    // frame until the client's delayed ACK (up to 40 ms on Linux): the sync
    // socket's live p90 was 33 ms with it, against 3 ms on /yws, whose
    // sockets are each too quiet to meet it.
    .tcp_nodelay(true)
    // Slow loris: headers not complete in time are answered 408 and the
    // connection closed (actix's own answer, before any handler runs).
    .client_request_timeout(client_request_timeout)
    .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS);
    // The TLS files were checked when the engine's config was validated
    // (both or neither); `tls` reads them now.
    builder = match tls_config {
        Some(config) => builder.listen_rustls_0_23(listener, config)?,
        None => builder.listen(listener)?,
    };
    if !handle_signals {
        builder = builder.disable_signals();
    }
    Ok(builder.run())
}

/// A write that reached a node without the collection's lease comes back
/// as `not_owner` naming the owner (`x-seqsync-owner`). When the owner is a
/// URL (its `[server] advertise_url`), the answer becomes a 307 to the same
/// path there: clients repeat the request, method and body included, at the
/// owner. Otherwise the 503 with `Retry-After` stands.
fn redirect_to_owner<B>(
    answer: actix_web::dev::ServiceResponse<B>,
    path: &str,
) -> actix_web::dev::ServiceResponse<actix_web::body::EitherBody<B>> {
    let owner = answer
        .headers()
        .get(error::OWNER_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|o| o.starts_with("http://") || o.starts_with("https://"))
        .map(|o| o.trim_end_matches('/').to_owned());
    match owner {
        Some(owner) => {
            metrics::counter!("seqsync_forwarded_requests_total").increment(1);
            answer
                .into_response(
                    HttpResponse::TemporaryRedirect()
                        .insert_header(("location", format!("{owner}{path}")))
                        .insert_header((error::OWNER_HEADER, owner))
                        .finish(),
                )
                .map_into_right_body()
        }
        None => answer.map_into_left_body(),
    }
}

/// Names this node in leases after its advertised URL when no node id is
/// configured, so a `not_owner` answer elsewhere can point at it.
fn name_the_node(config: &mut HostConfig) {
    if config.engine.storage.node_id.is_empty() && !config.server.advertise_url.is_empty() {
        config.engine.storage.node_id = config.server.advertise_url.clone();
    }
}

/// A server running on its own thread with its own engine: for tests and
/// for hosts that want the HTTP API next to their own runtime.
pub struct ServerThread {
    /// The address it listens on.
    pub addr: SocketAddr,
    engine: Engine,
    handle: actix_web::dev::ServerHandle,
    thread: Option<JoinHandle<()>>,
    /// `[[webhooks]]`, stopped before the engine.
    webhooks: Option<Webhooks>,
}

impl ServerThread {
    /// Opens the engine of `config` and serves it on `config.server.listen`
    /// (port 0 picks a free port). Blocking until the server listens.
    pub fn start(config: HostConfig) -> Result<Self, StartError> {
        Self::start_with_migrations(config, seqsync_engine::Migrations::new())
    }

    /// [`ServerThread::start`] with the app's schema migrations: the store
    /// is migrated before the server listens (blocking until it is).
    pub fn start_with_migrations(
        mut config: HostConfig,
        migrations: seqsync_engine::Migrations,
    ) -> Result<Self, StartError> {
        name_the_node(&mut config);
        let auth = Arc::new(Tokens::from_config(&config.server).map_err(StartError::Auth)?);
        // Checked before anything opens, so a bad file names itself.
        tls::server_config(&config.server.tls_cert_path, &config.server.tls_key_path)
            .map_err(StartError::Tls)?;
        let listener = TcpListener::bind(&config.server.listen)?;
        let addr = listener.local_addr()?;
        let engine = Engine::builder(config.engine.clone())
            .storage_opener(seqsync_adapters::open_storage)
            .migrations(migrations)
            .open()?;
        let server = server(engine.clone(), &config, auth, listener, false)?;
        let webhooks = Webhooks::start(&engine, &config.webhooks)?;
        let handle = server.handle();
        let thread = std::thread::Builder::new()
            .name("seqsync-http".to_owned())
            .spawn(move || {
                let _ = actix_web::rt::System::new().block_on(server);
            })?;
        Ok(Self {
            addr,
            engine,
            handle,
            thread: Some(thread),
            webhooks: Some(webhooks),
        })
    }

    /// The engine behind the server.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Stops serving, then shuts the engine down (everything acked is on
    /// disk). Blocking.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(webhooks) = self.webhooks.take() {
            webhooks.stop();
        }
        let handle = self.handle.clone();
        let engine = self.engine.clone();
        actix_web::rt::System::new().block_on(async move {
            handle.stop(true).await;
            engine.shutdown().await;
        });
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop_inner();
        }
    }
}

/// Why a server did not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// The engine did not open.
    Open(OpenError),
    /// The address could not be bound, or threads not started.
    Io(std::io::Error),
    /// The token settings are invalid (a message naming the key).
    Auth(String),
    /// `[server] tls_cert_path` / `tls_key_path` are unusable.
    Tls(tls::TlsError),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Open(e) => write!(f, "{e}"),
            StartError::Io(e) => write!(f, "{e}"),
            StartError::Auth(e) => write!(f, "{e}"),
            StartError::Tls(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<OpenError> for StartError {
    fn from(e: OpenError) -> Self {
        StartError::Open(e)
    }
}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        StartError::Io(e)
    }
}

/// Serves `config` until SIGINT or SIGTERM, then shuts the engine down
/// cleanly (everything acked is on disk). Prints `seqsync listening on
/// http://ADDR` (or `https://`) on stdout once it accepts connections; logs
/// through `tracing` (the caller installs a subscriber, or nothing is
/// logged).
///
/// Blocking, on a new actix system. What `seqsync serve` runs; a host that
/// embeds the server calls it after [`HostConfig::load`].
///
/// Errors: [`ServeError`], each with the exit code a command line should
/// use ([`ServeError::exit_code`]).
pub fn serve(config: HostConfig) -> Result<(), ServeError> {
    let mut config = config;
    config.validate().map_err(ServeError::Config)?;
    name_the_node(&mut config);
    let auth: Arc<dyn Authorizer> =
        Arc::new(Tokens::from_config(&config.server).map_err(ServeError::Auth)?);
    let listener =
        TcpListener::bind(&config.server.listen).map_err(|source| ServeError::Listen {
            addr: config.server.listen.clone(),
            source,
        })?;
    let engine = Engine::builder(config.engine.clone())
        .storage_opener(seqsync_adapters::open_storage)
        .open()
        .map_err(ServeError::Open)?;
    let addr = listener.local_addr().ok();
    let scheme = if config.server.tls_cert_path.as_os_str().is_empty() {
        "http"
    } else {
        "https"
    };
    tracing::info!(
        backend = engine.backend(),
        path = %config.engine.storage.path.display(),
        durability = ?config.engine.storage.durability,
        auth = !(config.server.read_token.is_empty() && config.server.write_token.is_empty()),
        "storage opened"
    );
    let hooks = Webhooks::start(&engine, &config.webhooks).map_err(ServeError::Serve)?;
    actix_web::rt::System::new()
        .block_on(async move {
            let server = server(engine.clone(), &config, auth, listener, true)?;
            if let Some(addr) = addr {
                tracing::info!(%addr, "listening");
                println!("seqsync listening on {scheme}://{addr}");
                let _ = std::io::stdout().flush();
            }
            let served = server.await;
            tracing::info!("stopping: flushing everything acknowledged");
            // Hooks first: their last acks go through the engine.
            hooks.stop();
            engine.shutdown().await;
            served
        })
        .map_err(ServeError::Serve)
}

/// Why [`serve`] stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The configuration is invalid (names the key).
    #[error("{0}")]
    Config(ConfigError),
    /// The token settings are invalid (names the key).
    #[error("{0}")]
    Auth(String),
    /// The listen address could not be bound: in use, or not this host's.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// `[server] listen`.
        addr: String,
        /// The bind error.
        source: std::io::Error,
    },
    /// The engine did not open (the store is in use by another process,
    /// unreadable, or newer than this build).
    #[error("{0}")]
    Open(OpenError),
    /// Serving failed (the TLS files are unusable, or the listener broke).
    #[error("{0}")]
    Serve(std::io::Error),
}

impl ServeError {
    /// The exit code a command line reports: 2 for a configuration the
    /// operator must fix, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::Config(_) | ServeError::Auth(_) => 2,
            _ => 1,
        }
    }
}
