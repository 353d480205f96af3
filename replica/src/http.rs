//! The network transport: the host server's HTTP routes (BRIEF §7).
//!
//! Calls are blocking `ureq` requests run on tokio's blocking pool, so an
//! async caller never blocks its executor. Every call has a timeout; a
//! refused connection, a reset socket, a timeout or a 5xx is
//! `Unavailable` (retry later), a 409 `reset` is `Reset`, any other error
//! answer is `Refused` with the server's code.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use seqsync_engine::{Change, ChangeKind, DocId, Epoch, PeerId, Seq};
use serde_json::{json, Value};

use crate::transport::{
    RemoteEvent, RemotePage, RemotePush, RemoteRecovery, RemoteStream, Transport, TransportError,
    STREAM_BUFFER,
};

/// How long one request may take, at most.
const TIMEOUT_MS: u64 = 30_000;

/// A transport to a seqsync host server at `base` (e.g.
/// `http://127.0.0.1:8787`), optionally with a bearer token.
#[derive(Clone)]
pub struct HttpTransport {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl HttpTransport {
    /// Talks to the server at `base` (no trailing slash needed); each
    /// request may take 30 s at most.
    pub fn new(base: impl Into<String>, token: Option<String>) -> Self {
        Self::with_timeout(base, token, TIMEOUT_MS)
    }

    /// [`HttpTransport::new`] with another limit on each request (connect,
    /// send and read the whole answer), in milliseconds. A request over it
    /// fails with `TransportError::Unavailable`; live streams are not
    /// limited by it.
    pub fn with_timeout(base: impl Into<String>, token: Option<String>, timeout_ms: u64) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_millis(timeout_ms))
            .build();
        Self {
            base: base.into().trim_end_matches('/').to_owned(),
            token,
            agent,
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

    async fn json(
        &self,
        method: &'static str,
        path: String,
        body: Option<Vec<u8>>,
        headers: Vec<(&'static str, String)>,
    ) -> Result<Value, TransportError> {
        let (status, bytes) = self.call(method, path, body, headers).await?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            TransportError::Unavailable(format!("answer {status} is not JSON: {e}"))
        })?;
        check(status, &value)?;
        Ok(value)
    }
}

impl HttpTransport {
    /// POSTs `body` as JSON (plus `headers`) and returns the JSON answer.
    async fn post_json(
        &self,
        path: String,
        body: Value,
        mut headers: Vec<(&'static str, String)>,
    ) -> Result<Value, TransportError> {
        headers.push(("content-type", "application/json".to_owned()));
        // A `Value` always prints as valid JSON.
        self.json("POST", path, Some(body.to_string().into_bytes()), headers)
            .await
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn bad(detail: &str) -> TransportError {
    TransportError::Unavailable(format!("the server's answer is malformed: {detail}"))
}

/// Maps an error answer to a typed error.
fn check(status: u16, value: &Value) -> Result<(), TransportError> {
    if status < 400 {
        return Ok(());
    }
    let code = value["error"]["code"]
        .as_str()
        .unwrap_or("unknown")
        .to_owned();
    let message = value["error"]["message"].as_str().unwrap_or("").to_owned();
    if code == "reset" {
        return Err(TransportError::Reset {
            epoch: value["epoch"].as_str().and_then(Epoch::parse_hex),
            head: value["head"].as_u64().unwrap_or(0),
        });
    }
    if status >= 500 {
        return Err(TransportError::Unavailable(format!(
            "{status} {code}: {message}"
        )));
    }
    Err(TransportError::Refused { code, message })
}

fn encode_path(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn change_of(value: &Value) -> Result<Change, TransportError> {
    let seq = value["seq"]
        .as_u64()
        .ok_or_else(|| bad("a change without seq"))?;
    let doc = DocId::new(
        value["doc"]
            .as_str()
            .ok_or_else(|| bad("a change without doc"))?,
    )
    .map_err(|e| bad(&e.to_string()))?;
    let kind = match value["kind"].as_str() {
        Some("update") => ChangeKind::Update,
        Some("snapshot") => ChangeKind::Snapshot,
        Some("delete") => ChangeKind::Delete,
        _ => return Err(bad("a change of unknown kind")),
    };
    let payload = b64()
        .decode(value["update"].as_str().unwrap_or("").as_bytes())
        .map_err(|e| bad(&e.to_string()))?;
    let origin = value["origin"]
        .as_str()
        .map(PeerId::new)
        .transpose()
        .map_err(|e| bad(&e.to_string()))?;
    Ok(Change {
        seq,
        doc,
        kind,
        payload,
        schema_version: value["schema_version"].as_u64().unwrap_or(1) as u32,
        origin,
        log_checksum: 0,
    })
}

/// How often a live stream's reader thread checks whether its receiver is
/// gone while the socket is quiet.
const STREAM_POLL_MS: u64 = 200;

/// One text message of the subscribe socket as an event.
fn event_of(text: &str) -> Result<RemoteEvent, TransportError> {
    let value: Value = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
    if let Some(head) = value.get("up_to_date").and_then(Value::as_u64) {
        return Ok(RemoteEvent::UpToDate { head });
    }
    if value.get("error").is_some() {
        let status = if value["error"]["code"] == "reset" {
            409
        } else {
            400
        };
        check(status, &value)?;
        return Err(bad("an error without a code"));
    }
    change_of(&value).map(RemoteEvent::Change)
}

impl Transport for HttpTransport {
    async fn subscribe(
        &self,
        collection: &str,
        after: Seq,
        epoch: Option<Epoch>,
    ) -> Result<RemoteStream, TransportError> {
        let ws_base = self
            .base
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        let mut url = format!(
            "{ws_base}/v1/collections/{}/subscribe?after={after}",
            encode_path(collection)
        );
        if let Some(epoch) = epoch {
            url.push_str(&format!("&epoch={epoch}"));
        }
        if let Some(token) = &self.token {
            url.push_str(&format!("&access_token={}", encode_path(token)));
        }
        let connect = move || match tungstenite::connect(url.as_str()) {
            Ok((socket, _)) => Ok(socket),
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let value: Value = response
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                check(status, &value)?;
                Err(TransportError::Unavailable(format!(
                    "subscribe answered {status}"
                )))
            }
            Err(e) => Err(TransportError::Unavailable(e.to_string())),
        };
        let mut socket = tokio::task::spawn_blocking(connect)
            .await
            .map_err(|e| TransportError::Unavailable(format!("the connect task failed: {e}")))??;
        if let tungstenite::stream::MaybeTlsStream::Plain(stream) = socket.get_ref() {
            let _ = stream.set_read_timeout(Some(Duration::from_millis(STREAM_POLL_MS)));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        std::thread::Builder::new()
            .name("seqsync-replica-stream".to_owned())
            .spawn(move || loop {
                if tx.is_closed() {
                    let _ = socket.close(None);
                    return;
                }
                let item = match socket.read() {
                    Ok(tungstenite::Message::Text(text)) => event_of(text.as_str()),
                    Ok(tungstenite::Message::Close(_)) => Err(TransportError::Unavailable(
                        "the server closed the stream".to_owned(),
                    )),
                    Ok(_) => continue,
                    Err(tungstenite::Error::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue
                    }
                    Err(e) => Err(TransportError::Unavailable(e.to_string())),
                };
                let stop = item.is_err();
                if tx.blocking_send(item).is_err() || stop {
                    let _ = socket.close(None);
                    return;
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
        let value = self.json("GET", path, None, Vec::new()).await?;
        let changes = value["changes"]
            .as_array()
            .ok_or_else(|| bad("no changes array"))?
            .iter()
            .map(change_of)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RemotePage {
            changes,
            cursor: value["cursor"].as_u64().ok_or_else(|| bad("no cursor"))?,
            has_more: value["has_more"].as_bool().unwrap_or(false),
            head: value["head"].as_u64().unwrap_or(0),
            epoch: value["epoch"].as_str().and_then(Epoch::parse_hex),
            schema_version: value["schema_version"].as_u64().unwrap_or(0) as u32,
            cursor_checksum: value["cursor_checksum"]
                .as_str()
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .unwrap_or(0),
        })
    }

    async fn push_batch(
        &self,
        collection: &str,
        updates: Vec<(String, Vec<u8>)>,
        origin: &str,
        schema_version: Option<u32>,
    ) -> Result<RemotePush, TransportError> {
        let items: Vec<Value> = updates
            .iter()
            .map(|(doc, update)| json!({"doc": doc, "update": b64().encode(update)}))
            .collect();
        let mut headers = vec![("x-peer-id", origin.to_owned())];
        if let Some(version) = schema_version {
            headers.push(("x-schema-version", version.to_string()));
        }
        let value = self
            .post_json(
                format!("/v1/collections/{}/batch", encode_path(collection)),
                json!({"updates": items}),
                headers,
            )
            .await?;
        let seqs = value["seqs"]
            .as_array()
            .ok_or_else(|| bad("no seqs"))?
            .iter()
            .map(Value::as_u64)
            .collect();
        Ok(RemotePush {
            seqs,
            head: value["head"].as_u64().unwrap_or(0),
        })
    }

    async fn recover_collection(
        &self,
        collection: &str,
        state_vectors: HashMap<String, Vec<u8>>,
    ) -> Result<RemoteRecovery, TransportError> {
        let svs: serde_json::Map<String, Value> = state_vectors
            .iter()
            .map(|(doc, sv)| (doc.clone(), Value::String(b64().encode(sv))))
            .collect();
        let value = self
            .post_json(
                format!("/v1/collections/{}/recover", encode_path(collection)),
                json!({"state_vectors": svs}),
                Vec::new(),
            )
            .await?;
        let mut documents = Vec::new();
        for item in value["documents"]
            .as_array()
            .ok_or_else(|| bad("no documents"))?
        {
            let doc =
                DocId::new(item["doc"].as_str().unwrap_or("")).map_err(|e| bad(&e.to_string()))?;
            let update = b64()
                .decode(item["update"].as_str().unwrap_or("").as_bytes())
                .map_err(|e| bad(&e.to_string()))?;
            documents.push((doc, update));
        }
        let deleted = value["deleted"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|d| d.as_str().and_then(|d| DocId::new(d).ok()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(RemoteRecovery {
            documents,
            deleted,
            cursor: value["cursor"].as_u64().unwrap_or(0),
            epoch: value["epoch"].as_str().and_then(Epoch::parse_hex),
            schema_version: value["schema_version"].as_u64().unwrap_or(0) as u32,
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
        if status >= 400 {
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            check(status, &value)?;
        }
        Ok(Some(bytes))
    }

    async fn ack(&self, collection: &str, peer: &str, seq: Seq) -> Result<(), TransportError> {
        self.post_json(
            format!(
                "/v1/collections/{}/peers/{}/ack",
                encode_path(collection),
                encode_path(peer)
            ),
            json!({"seq": seq}),
            Vec::new(),
        )
        .await
        .map(|_| ())
    }
}
