//! The network transport: the host server's routes (docs/PROTOCOL.md),
//! spoken with the types of `seqsync-protocol`.
//!
//! Pages, recoveries, state vectors and acks are HTTP requests; pushes and
//! the live stream go over the collection sync socket
//! (`/v1/collections/{c}/sync`), whose push answers arrive only once the
//! change is durable. Every answer is decoded into its protocol type, so a
//! missing or malformed field is an error (`Unavailable`: "the server's
//! answer is malformed"), never a silent zero.
//!
//! Calls are blocking (`ureq`, `tungstenite`) and run on tokio's blocking
//! pool or a thread of their own, so an async caller never blocks its
//! executor. Every call has a timeout; a refused connection, a reset
//! socket, a timeout or a retryable refusal (5xx, `overloaded`, `storage`,
//! `not_owner`…) is `Unavailable` (retry later), a `reset` is `Reset`, any
//! other refusal is `Refused` with the server's code.
//!
//! `https://` servers are reached over TLS (rustls) for both HTTP and the
//! sockets (`wss://`), trusting the platform's web roots or the roots given
//! to [`HttpTransport::with_tls_roots`].

use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use seqsync_engine::{Change, ChangeKind, DocId, Epoch, PeerId, Seq};
use seqsync_protocol::http::{
    AckAnswer, AckRequest, ChangeJson, ChangesAnswer, ErrorAnswer, RecoverCollectionAnswer,
    RecoverCollectionRequest,
};
use seqsync_protocol::sync::{ClientFrame, Hello, ServerFrame, SyncChange, MAX_VARUINT};
use seqsync_protocol::{Base64Bytes, EpochHex};
use tungstenite::stream::MaybeTlsStream;

use crate::transport::{
    RemoteEvent, RemotePage, RemotePush, RemoteRecovery, RemoteStream, Transport, TransportError,
    STREAM_BUFFER,
};

/// How long one request may take, at most.
const TIMEOUT_MS: u64 = 30_000;

/// A transport to a seqsync host server at `base` (e.g.
/// `http://127.0.0.1:8787` or `https://sync.example.com`), optionally with
/// a bearer token.
#[derive(Clone)]
pub struct HttpTransport {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
    timeout: Duration,
    /// The TLS configuration of `https://` and `wss://` connections.
    tls: Arc<rustls::ClientConfig>,
}

/// Errors of [`HttpTransport::with_tls_roots`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// The PEM text holds no certificate, or one that does not parse.
    #[error("the trusted roots are not PEM certificates: {0}")]
    BadRoots(String),
    /// rustls refused the configuration.
    #[error("rustls refused the TLS configuration: {0}")]
    Config(String),
}

// ring, not aws-lc-rs: no cmake or assembler toolchain to build it. rustls
// deprecates ring for lacking post-quantum key exchange; TLS 1.3 with X25519
// is what ring offers, which every server here accepts.
#[allow(deprecated)]
fn tls_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn web_roots() -> rustls::RootCertStore {
    rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

impl HttpTransport {
    /// Talks to the server at `base` (no trailing slash needed); each
    /// request may take 30 s at most. `https://` servers must present a
    /// certificate from the usual web roots.
    pub fn new(base: impl Into<String>, token: Option<String>) -> Self {
        Self::with_timeout(base, token, TIMEOUT_MS)
    }

    /// [`HttpTransport::new`] with another limit on each request (connect,
    /// send and read the whole answer), in milliseconds. A request over it
    /// fails with `TransportError::Unavailable`; live streams are not
    /// limited by it.
    pub fn with_timeout(base: impl Into<String>, token: Option<String>, timeout_ms: u64) -> Self {
        // The ring provider supports the safe default versions, so this
        // cannot fail; if a future rustls refused, the crate's default
        // provider is the fallback.
        let tls = tls_config(web_roots()).unwrap_or_else(|_| {
            rustls::ClientConfig::builder()
                .with_root_certificates(web_roots())
                .with_no_client_auth()
        });
        Self::build(base.into(), token, timeout_ms, Arc::new(tls))
    }

    /// [`HttpTransport::with_timeout`] trusting only the certificates in
    /// `roots_pem` (PEM text, one or more `CERTIFICATE` blocks) for
    /// `https://` and `wss://`: a server with a private or self-signed
    /// certificate. Errors: [`TlsSetupError`].
    pub fn with_tls_roots(
        base: impl Into<String>,
        token: Option<String>,
        timeout_ms: u64,
        roots_pem: &[u8],
    ) -> Result<Self, TlsSetupError> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(roots_pem) {
            let cert = cert.map_err(|e| TlsSetupError::BadRoots(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| TlsSetupError::BadRoots(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(TlsSetupError::BadRoots("no CERTIFICATE block".to_owned()));
        }
        let tls = tls_config(roots)?;
        Ok(Self::build(base.into(), token, timeout_ms, Arc::new(tls)))
    }

    fn build(
        base: String,
        token: Option<String>,
        timeout_ms: u64,
        tls: Arc<rustls::ClientConfig>,
    ) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_millis(timeout_ms))
            .tls_config(tls.clone())
            .build();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            agent,
            timeout: Duration::from_millis(timeout_ms),
            tls,
        }
    }

    async fn call(
        &self,
        method: &'static str,
        path: String,
        body: Option<Vec<u8>>,
        headers: Vec<(&'static str, String)>,
    ) -> Result<(u16, Vec<u8>), TransportError> {
        let url = format!("{}{}", self.base, path);
        let agent = self.agent.clone();
        let token = self.token.clone();
        let work = move || {
            let mut request = agent.request(method, &url);
            if let Some(token) = &token {
                request = request.set("authorization", &format!("Bearer {token}"));
            }
            for (name, value) in &headers {
                request = request.set(name, value);
            }
            let result = match body {
                Some(bytes) => request.send_bytes(&bytes),
                None => request.call(),
            };
            let response = match result {
                Ok(response) => response,
                Err(ureq::Error::Status(_, response)) => response,
                // ureq names the URL in its message.
                Err(e) => return Err(TransportError::Unavailable(e.to_string())),
            };
            let status = response.status();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut response.into_reader(), &mut bytes).map_err(|e| {
                TransportError::Unavailable(format!("{url}: reading the answer: {e}"))
            })?;
            Ok((status, bytes))
        };
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| TransportError::Unavailable(format!("the request task failed: {e}")))?
    }

    /// A JSON request whose answer decodes as `T` (or an error answer,
    /// mapped to its typed error).
    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: &'static str,
        path: String,
        body: Option<Vec<u8>>,
    ) -> Result<T, TransportError> {
        let headers = if body.is_some() {
            vec![("content-type", "application/json".to_owned())]
        } else {
            Vec::new()
        };
        let (status, bytes) = self.call(method, path, body, headers).await?;
        check(status, &bytes)?;
        serde_json::from_slice(&bytes).map_err(|e| bad(&format!("answer {status}: {e}")))
    }

    /// The socket URL of the collection's sync socket.
    fn sync_url(&self, collection: &str) -> String {
        let ws_base = self
            .base
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        let mut url = format!("{ws_base}/v1/collections/{}/sync", encode_path(collection));
        if let Some(token) = &self.token {
            url.push_str(&format!("?access_token={}", encode_path(token)));
        }
        url
    }
}

fn bad(detail: &str) -> TransportError {
    TransportError::Unavailable(format!("the server's answer is malformed: {detail}"))
}

fn epoch_of(epoch: Option<EpochHex>) -> Option<Epoch> {
    epoch.map(|e| Epoch(e.0))
}

/// Whether a refusal's code means "retry later" (nothing was written and
/// the same request may succeed).
fn retryable(code: &str) -> bool {
    matches!(
        code,
        "overloaded" | "commit_timeout" | "storage" | "shutting_down" | "internal" | "not_owner"
    )
}

/// Maps an error answer (status ≥ 400) to a typed error.
fn check(status: u16, body: &[u8]) -> Result<(), TransportError> {
    if status < 400 {
        return Ok(());
    }
    let Ok(answer) = serde_json::from_slice::<ErrorAnswer>(body) else {
        return Err(TransportError::Unavailable(format!(
            "the server answered {status} without an error body"
        )));
    };
    Err(refusal(status, answer))
}

fn refusal(status: u16, answer: ErrorAnswer) -> TransportError {
    let ErrorAnswer {
        error, head, epoch, ..
    } = answer;
    if error.code == "reset" {
        return TransportError::Reset {
            epoch: epoch_of(epoch.flatten()),
            head: head.unwrap_or(0),
        };
    }
    if status >= 500 || retryable(&error.code) {
        return TransportError::Unavailable(format!("{status} {}: {}", error.code, error.message));
    }
    TransportError::Refused {
        code: error.code,
        message: error.message,
    }
}

/// Bytes a path segment keeps as they are: RFC 3986's unreserved ones.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `segment` as one URL path segment (every byte but the unreserved ones
/// percent-encoded, so a `/` in a name cannot open another path).
fn encode_path(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, PATH_SEGMENT).to_string()
}

fn kind_of(kind: seqsync_protocol::http::ChangeKind) -> ChangeKind {
    match kind {
        seqsync_protocol::http::ChangeKind::Update => ChangeKind::Update,
        seqsync_protocol::http::ChangeKind::Delete => ChangeKind::Delete,
        seqsync_protocol::http::ChangeKind::Snapshot => ChangeKind::Snapshot,
    }
}

/// A change of a JSON page: the same fields as a frame's.
fn change_of_json(change: ChangeJson) -> Result<Change, TransportError> {
    change_of_frame(SyncChange {
        seq: change.seq,
        doc: change.doc,
        kind: change.kind,
        schema_version: change.schema_version,
        origin: change.origin,
        payload: change.update.0,
    })
}

/// A change of a `changes` frame, its names validated.
fn change_of_frame(change: SyncChange) -> Result<Change, TransportError> {
    Ok(Change {
        seq: change.seq,
        doc: DocId::new(change.doc).map_err(|e| bad(&e.to_string()))?,
        kind: kind_of(change.kind),
        payload: change.payload,
        schema_version: change.schema_version,
        origin: change
            .origin
            .map(PeerId::new)
            .transpose()
            .map_err(|e| bad(&e.to_string()))?,
        author: None,
        committed_ms: 0,
        log_checksum: 0,
    })
}

/// How often a live stream's reader thread checks whether its receiver is
/// gone while the socket is quiet.
const STREAM_POLL_MS: u64 = 200;

type Socket = tungstenite::WebSocket<MaybeTlsStream<TcpStream>>;

/// Opens a sync socket (TLS for `wss://`), with `read_timeout` on reads.
/// Blocking.
fn open_socket(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Result<Socket, TransportError> {
    let request = tungstenite::client::IntoClientRequest::into_client_request(url)
        .map_err(|e| TransportError::Unavailable(format!("{url}: {e}")))?;
    let host = request.uri().host().unwrap_or("").to_owned();
    let secure = request.uri().scheme_str() == Some("wss");
    let port = request
        .uri()
        .port_u16()
        .unwrap_or(if secure { 443 } else { 80 });
    let address = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .map_err(|e| TransportError::Unavailable(format!("{host}:{port}: {e}")))?
        .next()
        .ok_or_else(|| TransportError::Unavailable(format!("{host}: no address")))?;
    let stream = TcpStream::connect_timeout(&address, connect_timeout)
        .map_err(|e| TransportError::Unavailable(format!("{host}:{port}: {e}")))?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(read_timeout))
        .and_then(|()| stream.set_write_timeout(Some(connect_timeout)))
        .map_err(|e| TransportError::Unavailable(e.to_string()))?;
    let connector = tungstenite::Connector::Rustls(tls.clone());
    match tungstenite::client_tls_with_config(request, stream, None, Some(connector)) {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let body = response.body().clone().unwrap_or_default();
            check(status, &body)?;
            Err(TransportError::Unavailable(format!(
                "the sync socket answered {status}"
            )))
        }
        Err(e) => Err(TransportError::Unavailable(format!("{url}: {e}"))),
    }
}

fn send(socket: &mut Socket, frame: ClientFrame) -> Result<(), TransportError> {
    socket
        .send(tungstenite::Message::binary(frame.encode()))
        .map_err(|e| TransportError::Unavailable(format!("sending to the sync socket: {e}")))
}

/// The next frame, or `None` when the read timed out.
fn read_frame(socket: &mut Socket) -> Result<Option<ServerFrame>, TransportError> {
    loop {
        match socket.read() {
            Ok(tungstenite::Message::Binary(bytes)) => {
                return ServerFrame::decode(&bytes)
                    .map(Some)
                    .map_err(|e| bad(&e.to_string()));
            }
            Ok(tungstenite::Message::Close(_)) => {
                return Err(TransportError::Unavailable(
                    "the server closed the sync socket".to_owned(),
                ))
            }
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(TransportError::Unavailable(e.to_string())),
        }
    }
}

/// What ends a sync socket conversation as an error: a `reset` or an
/// `error` frame.
fn frame_error(frame: ServerFrame) -> TransportError {
    match frame {
        ServerFrame::Reset { epoch, head, .. } => TransportError::Reset {
            epoch: epoch_of(epoch),
            head,
        },
        ServerFrame::Error { code, message } if retryable(&code) => {
            TransportError::Unavailable(format!("{code}: {message}"))
        }
        ServerFrame::Error { code, message } => TransportError::Refused { code, message },
        other => bad(&format!("unexpected frame {other:?}")),
    }
}

/// Pushes `updates` over a fresh sync socket, starting its stream at the
/// head (the answer is all it waits for). Blocking; at most `timeout`.
fn push_over_socket(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
    hello: Hello,
    updates: Vec<(String, Vec<u8>)>,
) -> Result<RemotePush, TransportError> {
    let deadline = Instant::now() + timeout;
    let mut socket = open_socket(url, tls, timeout, timeout)?;
    send(&mut socket, ClientFrame::Hello(hello))?;
    send(&mut socket, ClientFrame::PushBatch { id: 1, updates })?;
    let outcome = loop {
        if Instant::now() >= deadline {
            break Err(TransportError::Unavailable(format!(
                "no answer to the push within {} ms",
                timeout.as_millis()
            )));
        }
        match read_frame(&mut socket)? {
            None => continue,
            Some(ServerFrame::Pushed { id: 1, head, seqs }) => break Ok(RemotePush { seqs, head }),
            Some(ServerFrame::PushError {
                id: 1,
                code,
                message,
            }) => {
                break Err(if retryable(&code) {
                    TransportError::Unavailable(format!("{code}: {message}"))
                } else {
                    TransportError::Refused { code, message }
                })
            }
            Some(
                ServerFrame::Welcome { .. }
                | ServerFrame::Changes { .. }
                | ServerFrame::UpToDate { .. },
            ) => continue,
            Some(other) => break Err(frame_error(other)),
        }
    };
    let _ = socket.close(None);
    let _ = socket.flush();
    outcome
}

impl Transport for HttpTransport {
    async fn subscribe(
        &self,
        collection: &str,
        after: Seq,
        epoch: Option<Epoch>,
    ) -> Result<RemoteStream, TransportError> {
        let url = self.sync_url(collection);
        let tls = self.tls.clone();
        let timeout = self.timeout;
        let hello = Hello {
            after,
            epoch: epoch.map(|e| EpochHex(e.0)),
            ..Hello::default()
        };
        // Connect and read the welcome (or the reset) before answering, so
        // a foreign cursor is an error of this call, as with the engine.
        let connect = move || {
            let poll = Duration::from_millis(STREAM_POLL_MS);
            let mut socket = open_socket(&url, &tls, timeout, poll)?;
            send(&mut socket, ClientFrame::Hello(hello))?;
            let deadline = Instant::now() + timeout;
            loop {
                match read_frame(&mut socket)? {
                    Some(ServerFrame::Welcome { .. }) => return Ok(socket),
                    Some(other) => return Err(frame_error(other)),
                    None if Instant::now() >= deadline => {
                        return Err(TransportError::Unavailable(
                            "no welcome on the sync socket".to_owned(),
                        ))
                    }
                    None => continue,
                }
            }
        };
        let mut socket = tokio::task::spawn_blocking(connect)
            .await
            .map_err(|e| TransportError::Unavailable(format!("the connect task failed: {e}")))??;
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        std::thread::Builder::new()
            .name("seqsync-replica-stream".to_owned())
            .spawn(move || loop {
                if tx.is_closed() {
                    let _ = socket.close(None);
                    return;
                }
                let items: Vec<Result<RemoteEvent, TransportError>> = match read_frame(&mut socket)
                {
                    Ok(None) => continue,
                    Ok(Some(ServerFrame::Changes { changes, .. })) => changes
                        .into_iter()
                        .map(|c| change_of_frame(c).map(RemoteEvent::Change))
                        .collect(),
                    Ok(Some(ServerFrame::UpToDate { head, .. })) => {
                        vec![Ok(RemoteEvent::UpToDate { head })]
                    }
                    Ok(Some(other)) => vec![Err(frame_error(other))],
                    Err(err) => vec![Err(err)],
                };
                for item in items {
                    let stop = item.is_err();
                    if tx.blocking_send(item).is_err() || stop {
                        let _ = socket.close(None);
                        return;
                    }
                }
            })
            .map_err(|e| {
                TransportError::Unavailable(format!("cannot start the stream thread: {e}"))
            })?;
        Ok(rx)
    }

    async fn changes(
        &self,
        collection: &str,
        after: Seq,
        limit: u64,
        epoch: Option<Epoch>,
    ) -> Result<RemotePage, TransportError> {
        self.changes_verified(collection, after, limit, epoch, None)
            .await
    }

    async fn changes_verified(
        &self,
        collection: &str,
        after: Seq,
        limit: u64,
        epoch: Option<Epoch>,
        checksum: Option<u64>,
    ) -> Result<RemotePage, TransportError> {
        let mut path = format!(
            "/v1/collections/{}/changes?after={after}&limit={limit}",
            encode_path(collection)
        );
        if let Some(epoch) = epoch {
            path.push_str(&format!("&epoch={epoch}"));
        }
        if let Some(checksum) = checksum {
            path.push_str(&format!("&checksum={checksum:016x}"));
        }
        let page: ChangesAnswer = self.json("GET", path, None).await?;
        Ok(RemotePage {
            changes: page
                .changes
                .into_iter()
                .map(change_of_json)
                .collect::<Result<Vec<_>, _>>()?,
            cursor: page.cursor,
            has_more: page.has_more,
            head: page.head,
            epoch: epoch_of(page.epoch),
            schema_version: page.schema_version,
            cursor_checksum: page.cursor_checksum.0,
        })
    }

    async fn push_batch(
        &self,
        collection: &str,
        updates: Vec<(String, Vec<u8>)>,
        origin: &str,
        schema_version: Option<u32>,
    ) -> Result<RemotePush, TransportError> {
        let url = self.sync_url(collection);
        let tls = self.tls.clone();
        let timeout = self.timeout;
        let hello = Hello {
            peer: origin.to_owned(),
            after: MAX_VARUINT,
            schema_version: schema_version.unwrap_or(0),
            ..Hello::default()
        };
        tokio::task::spawn_blocking(move || push_over_socket(&url, &tls, timeout, hello, updates))
            .await
            .map_err(|e| TransportError::Unavailable(format!("the push task failed: {e}")))?
    }

    async fn recover_collection(
        &self,
        collection: &str,
        state_vectors: HashMap<String, Vec<u8>>,
    ) -> Result<RemoteRecovery, TransportError> {
        let request = RecoverCollectionRequest {
            state_vectors: state_vectors
                .into_iter()
                .map(|(doc, sv)| (doc, Base64Bytes(sv)))
                .collect(),
        };
        let body = serde_json::to_vec(&request).map_err(|e| bad(&e.to_string()))?;
        let answer: RecoverCollectionAnswer = self
            .json(
                "POST",
                format!("/v1/collections/{}/recover", encode_path(collection)),
                Some(body),
            )
            .await?;
        let documents = answer
            .documents
            .into_iter()
            .map(|d| {
                Ok((
                    DocId::new(d.doc).map_err(|e| bad(&e.to_string()))?,
                    d.update.0,
                ))
            })
            .collect::<Result<Vec<_>, TransportError>>()?;
        let deleted = answer
            .deleted
            .into_iter()
            .map(|d| DocId::new(d).map_err(|e| bad(&e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RemoteRecovery {
            documents,
            deleted,
            cursor: answer.cursor,
            epoch: epoch_of(answer.epoch),
            schema_version: answer.schema_version,
        })
    }

    async fn state_vector(
        &self,
        collection: &str,
        doc: &str,
    ) -> Result<Option<Vec<u8>>, TransportError> {
        let path = format!(
            "/v1/collections/{}/documents/{}/state-vector",
            encode_path(collection),
            encode_path(doc)
        );
        let (status, bytes) = self.call("GET", path, None, Vec::new()).await?;
        if status == 404 {
            return Ok(None);
        }
        check(status, &bytes)?;
        Ok(Some(bytes))
    }

    async fn ack(&self, collection: &str, peer: &str, seq: Seq) -> Result<(), TransportError> {
        let body = serde_json::to_vec(&AckRequest { seq }).map_err(|e| bad(&e.to_string()))?;
        let _: AckAnswer = self
            .json(
                "POST",
                format!(
                    "/v1/collections/{}/peers/{}/ack",
                    encode_path(collection),
                    encode_path(peer)
                ),
                Some(body),
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_path_segment_each() {
        // A document or collection name must never reach another route: a
        // `/`, a `%` or a space is encoded, unreserved bytes are kept, and
        // non-ASCII names are encoded byte by byte as UTF-8.
        assert_eq!(encode_path("notes-1_a.b~c"), "notes-1_a.b~c");
        assert_eq!(encode_path("a/b c%é"), "a%2Fb%20c%25%C3%A9");
        assert_eq!(encode_path("../x?y#z"), "..%2Fx%3Fy%23z");
    }
}
