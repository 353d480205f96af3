//! Access per document and per operation (issue 16, items 3 and 4): signed
//! client tokens (HS256 and EdDSA) that name a collection, an optional
//! document, rights and an expiry, checked on every route; and read-only
//! `/yws` connections, which sync and receive live updates but whose own
//! updates are neither stored nor relayed. Real server on loopback.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use seqsync_engine::BackendKind;
use seqsync_server::{HostConfig, ServerThread};
use serde_json::json;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{GetString, Text, Transact};

const SECRET: &str = "a test secret that is long enough";
/// A throwaway Ed25519 key pair for this test only.
const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEINkpSdVW+80ESF34VlWC4G6hkDBm+6vBJk5nWB++m5fA
-----END PRIVATE KEY-----
";
const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA0sfhfq+hsyVIs6p/m2cI9e9oHS+gfWsz5ICoTZRkyJw=
-----END PUBLIC KEY-----
";

fn start(tune: impl FnOnce(&mut HostConfig)) -> (ServerThread, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = HostConfig::default();
    config.engine.storage.backend = BackendKind::Sqlite;
    config.engine.storage.path = dir.path().join("data");
    config.server.listen = "127.0.0.1:0".to_owned();
    config.server.write_token = "operator-token".to_owned();
    tune(&mut config);
    (ServerThread::start(config).unwrap(), dir)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn eddsa(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn update(client: u64, text: &str) -> Vec<u8> {
    let doc = yrs::Doc::with_client_id(client);
    let t = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    t.insert(&mut txn, 0, text);
    txn.encode_update_v1()
}

/// (status, error code) of a request with `token`.
fn call(method: &str, url: &str, token: &str, body: Option<&[u8]>) -> (u16, String) {
    let request = ureq::request(method, url).set("authorization", &format!("Bearer {token}"));
    let result = match body {
        Some(bytes) => request
            .set("content-type", "application/octet-stream")
            .send_bytes(bytes),
        None => request.call(),
    };
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{url}: {e}"),
    };
    let status = response.status();
    let body = response.into_string().unwrap_or_default();
    let code = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, code)
}

/// A token for one document opens that document for exactly its rights:
/// not its neighbours, not the collection-wide routes, not after expiry,
/// not another collection; the static operator token still opens all.
fn document_tokens_are_scoped(server: &ServerThread, sign: impl Fn(serde_json::Value) -> String) {
    let base = format!("http://{}/v1/collections/notes", server.addr);
    let writer =
        sign(json!({"col": "notes", "doc": "d", "rights": ["read", "write"], "exp": now() + 600}));
    let push = |doc: &str, token: &str| {
        call(
            "POST",
            &format!("{base}/documents/{doc}/updates"),
            token,
            Some(&update(1 << 20, "x")),
        )
    };
    assert_eq!(push("d", &writer).0, 200);
    assert_eq!(
        push("e", &writer),
        (403, "forbidden".to_owned()),
        "another document"
    );
    assert_eq!(
        call("GET", &format!("{base}/documents/d"), &writer, None).0,
        200
    );
    assert_eq!(
        call("GET", &format!("{base}/changes?after=0"), &writer, None).0,
        403,
        "a document token does not read the whole collection"
    );
    assert_eq!(
        call("POST", &format!("{base}/compact"), &writer, None).0,
        403,
        "compact is a right of its own"
    );
    assert_eq!(
        call("DELETE", &format!("{base}/documents/d"), &writer, None).0,
        403,
        "delete is a right of its own"
    );
    let batch = json!({"updates": [{"doc": "e", "update": base64(&update(2 << 20, "y"))}]});
    assert_eq!(
        call(
            "POST",
            &format!("{base}/batch"),
            &writer,
            Some(batch.to_string().as_bytes())
        )
        .0,
        403,
        "a batch is checked document by document"
    );
    let reader = sign(json!({"col": "notes", "doc": "d", "rights": ["read"], "exp": now() + 600}));
    assert_eq!(
        push("d", &reader),
        (403, "forbidden".to_owned()),
        "read-only"
    );
    assert_eq!(
        call("GET", &format!("{base}/documents/d"), &reader, None).0,
        200
    );
    let expired = sign(json!({"col": "notes", "rights": ["read"], "exp": now() - 10}));
    assert_eq!(
        call("GET", &format!("{base}/documents/d"), &expired, None),
        (401, "unauthorized".to_owned())
    );
    let elsewhere = sign(json!({"col": "other", "rights": ["read", "write"], "exp": now() + 600}));
    assert_eq!(
        call("GET", &format!("{base}/documents/d"), &elsewhere, None).0,
        403
    );
    let forged = format!("{}x", &writer[..writer.len() - 1]);
    assert_eq!(
        call("GET", &format!("{base}/documents/d"), &forged, None).0,
        401
    );
    let whole = sign(json!({"col": "*", "rights": ["read"], "exp": now() + 600}));
    assert_eq!(
        call("GET", &format!("{base}/changes?after=0"), &whole, None).0,
        200
    );
    assert_eq!(
        call("POST", &format!("{base}/compact"), "operator-token", None).0,
        200
    );
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Why: y-sweet-style client tokens are what a host hands a browser; an
/// HS256 secret shared with the host's backend.
#[test]
fn hs256_document_tokens_are_scoped_to_their_document_and_rights() {
    let (server, _dir) = start(|c| c.server.token_secret = SECRET.to_owned());
    document_tokens_are_scoped(&server, hs256);
    server.stop();
}

/// Why: with EdDSA the server holds only a public key; whoever mints tokens
/// keeps the private one.
#[test]
fn eddsa_document_tokens_are_scoped_to_their_document_and_rights() {
    let (server, _dir) = start(|c| c.server.token_public_key = ED_PUBLIC.to_owned());
    document_tokens_are_scoped(&server, eddsa);
    server.stop();
}

/// A read-only `/yws` connection syncs and receives a writer's updates
/// live; what it sends itself is dropped (not stored, not relayed to the
/// writer), and the connection stays open.
#[test]
fn a_read_only_yws_connection_receives_but_cannot_write() {
    use tungstenite::Message as Ws;
    let (server, _dir) = start(|c| c.server.token_secret = SECRET.to_owned());
    let token = |rights: serde_json::Value| {
        hs256(json!({"col": "notes", "doc": "d", "rights": rights, "exp": now() + 600}))
    };
    let url = |t: &str| format!("ws://{}/yws/notes/d?access_token={t}", server.addr);
    let (mut reader, _) = tungstenite::connect(url(&token(json!(["read"])))).unwrap();
    let (mut writer, _) = tungstenite::connect(url(&token(json!(["read", "write"])))).unwrap();
    for socket in [&reader, &writer] {
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = socket.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
    }
    let send = |socket: &mut tungstenite::WebSocket<_>, bytes: Vec<u8>| {
        socket
            .send(Ws::Binary(
                Message::Sync(SyncMessage::Update(bytes)).encode_v1().into(),
            ))
            .unwrap()
    };
    send(&mut reader, update(3 << 20, "from the reader "));
    send(&mut writer, update(4 << 20, "from the writer "));
    // The reader receives the writer's update live.
    let received = loop {
        match reader
            .read()
            .expect("the writer's update reaches the reader")
        {
            Ws::Binary(bytes) => {
                if let Ok(Message::Sync(SyncMessage::Update(u))) = Message::decode_v1(&bytes) {
                    break u;
                }
            }
            _ => continue,
        }
    };
    let doc = yrs::Doc::new();
    doc.transact_mut()
        .apply_update(yrs::Update::decode_v1(&received).unwrap())
        .unwrap();
    assert_eq!(
        doc.get_or_insert_text("t").get_string(&doc.transact()),
        "from the writer "
    );
    // The server holds only the writer's edit.
    let stored = ureq::get(&format!(
        "http://{}/v1/collections/notes/documents/d",
        server.addr
    ))
    .set("authorization", "Bearer operator-token")
    .call()
    .unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut stored.into_reader(), &mut bytes).unwrap();
    let doc = yrs::Doc::new();
    doc.transact_mut()
        .apply_update(yrs::Update::decode_v1(&bytes).unwrap())
        .unwrap();
    assert_eq!(
        doc.get_or_insert_text("t").get_string(&doc.transact()),
        "from the writer ",
        "the reader's update was not stored"
    );
    // Still connected: it keeps receiving.
    send(&mut writer, update(5 << 20, "more "));
    assert!(matches!(reader.read(), Ok(Ws::Binary(_))));
    // A token without read is refused at the handshake.
    assert!(tungstenite::connect(url(&token(json!(["write"])))).is_err());
    server.stop();
}

/// The two signed-token settings exclude each other, and a bad key is
/// refused at start with a message naming the key.
#[test]
fn token_settings_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = HostConfig::default();
    config.engine.storage.path = dir.path().join("data");
    config.server.listen = "127.0.0.1:0".to_owned();
    config.server.token_public_key =
        "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n".to_owned();
    let err = ServerThread::start(config.clone())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("server.token_public_key"), "{err}");
    config.server.token_secret = SECRET.to_owned();
    config.server.token_public_key = ED_PUBLIC.to_owned();
    let err = ServerThread::start(config).err().unwrap().to_string();
    assert!(err.contains("both set"), "{err}");
}

#[test]
fn bearer_tokens_compare_in_constant_time_and_exactly() {
    assert!(seqsync_server::constant_time_eq("token", "token"));
    assert!(!seqsync_server::constant_time_eq("token", "tokem"));
    assert!(!seqsync_server::constant_time_eq("token", "token2"));
    assert!(!seqsync_server::constant_time_eq("", "x"));
}
