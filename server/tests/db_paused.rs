//! The database paused under a running server (SIGSTOP of every PostgreSQL
//! process, as when its host stalls): HTTP writes get a typed 503
//! `commit_timeout` with `Retry-After` within `limits.commit_timeout_ms`
//! instead of hanging, so does a push on the sync socket (which stays
//! open), a `/yws` connection stays open and its update lands
//! once the database resumes, and every write acknowledged before, during
//! or after is in the document. A test process of its own: pausing the
//! cluster would stall every other test sharing it.

use std::time::{Duration, Instant};

use seqsync_engine::BackendKind;
use seqsync_protocol::sync::{ClientFrame, Hello, ServerFrame};
use seqsync_server::{HostConfig, ServerThread};
use seqsync_testkit::http::{call, json_of};
use seqsync_testkit::postgres::PgCluster;
use tungstenite::Message as Ws;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{GetString, ReadTxn, Text, Transact};

/// A sync socket (the protocol of `@seqsync/client` and the replica), its
/// hello sent as `peer`.
fn open_sync_socket(
    addr: std::net::SocketAddr,
    peer: &str,
) -> tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>> {
    let (mut socket, _) =
        tungstenite::connect(format!("ws://{addr}/v1/collections/notes/sync")).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = socket.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let hello = ClientFrame::Hello(Hello {
        peer: peer.into(),
        ..Hello::default()
    });
    socket.send(Ws::binary(hello.encode())).unwrap();
    socket
}

/// [`open_sync_socket`], with its hello answered and its stream caught up.
/// (A hello reads storage: one still unanswered when the database pauses
/// would hold the socket's later frames behind it.)
fn sync_socket(
    addr: std::net::SocketAddr,
) -> tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>> {
    let mut socket = open_sync_socket(addr, "phone");
    loop {
        match socket.read().unwrap() {
            Ws::Binary(bytes) => {
                if let ServerFrame::UpToDate { .. } = ServerFrame::decode(&bytes).unwrap() {
                    return socket;
                }
            }
            Ws::Close(frame) => panic!("the sync socket closed after its hello: {frame:?}"),
            _ => {}
        }
    }
}

/// The answer to push `id` on a sync socket, skipping stream frames.
fn push_answer(
    socket: &mut tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    id: u64,
) -> ServerFrame {
    loop {
        match socket.read() {
            Ok(Ws::Binary(bytes)) => match ServerFrame::decode(&bytes).unwrap() {
                frame @ (ServerFrame::Pushed { id: at, .. }
                | ServerFrame::PushError { id: at, .. })
                    if at == id =>
                {
                    return frame
                }
                _ => {}
            },
            Ok(Ws::Close(frame)) => panic!("the sync socket closed: {frame:?}"),
            Ok(_) => {}
            Err(e) => panic!("no answer to push {id} on the sync socket: {e}"),
        }
    }
}

fn text_of(update: &[u8]) -> String {
    let doc = yrs::Doc::new();
    doc.transact_mut()
        .apply_update(yrs::Update::decode_v1(update).unwrap())
        .unwrap();
    let text = doc.get_or_insert_text("content");
    let out = text.get_string(&doc.transact());
    out
}

/// The cluster paused until this is dropped: a failing assertion while it
/// is paused resumes it on the way out, so the server's shutdown (which
/// waits for the commit in flight) does not hang the test.
struct Paused<'a>(&'a PgCluster);

impl<'a> Paused<'a> {
    fn start(cluster: &'a PgCluster) -> Self {
        cluster.pause();
        Self(cluster)
    }
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        self.0.resume();
    }
}

#[test]
fn a_paused_database_gets_typed_503s_in_bounded_time_and_loses_nothing_acked() {
    let Some(cluster) = PgCluster::shared() else {
        return; // PgCluster::shared said loudly why
    };
    let mut config = HostConfig::default();
    config.engine.storage.backend = BackendKind::Postgres;
    config.engine.storage.url = cluster.fresh_database();
    config.server.listen = "127.0.0.1:0".to_owned();
    config.limits.commit_timeout_ms = 1_000;
    let server = ServerThread::start(config).unwrap();
    let url = format!(
        "http://{}/v1/collections/notes/documents/d/updates",
        server.addr
    );
    let writer = yrs::Doc::with_client_id(1 << 20);
    let text = writer.get_or_insert_text("content");
    let typed = |s: &str| {
        let mut txn = writer.transact_mut();
        let len = text.len(&txn);
        text.insert(&mut txn, len, s);
        txn.encode_update_v1()
    };
    for word in ["acked ", "before "] {
        let (status, _, _) = call(ureq::post(&url), Some(&typed(word)));
        assert_eq!(status, 200);
    }

    // A y-websocket client, synced, on the same document.
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/yws/notes/d", server.addr)).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let browser = yrs::Doc::with_client_id(2 << 20);
    let step1 = Message::Sync(SyncMessage::SyncStep1(browser.transact().state_vector()));
    ws.send(Ws::Binary(step1.encode_v1().into())).unwrap();
    loop {
        if let Ws::Binary(b) = ws.read().unwrap() {
            if let Message::Sync(SyncMessage::SyncStep2(diff)) = Message::decode_v1(&b).unwrap() {
                browser
                    .transact_mut()
                    .apply_update(yrs::Update::decode_v1(&diff).unwrap())
                    .unwrap();
                break;
            }
        }
    }

    // A sync socket client too, on another document.
    let mut socket = sync_socket(server.addr);
    let phone = yrs::Doc::with_client_id(3 << 20);
    let from_phone = {
        let text = phone.get_or_insert_text("content");
        let mut txn = phone.transact_mut();
        text.insert(&mut txn, 0, "from the phone");
        txn.encode_update_v1()
    };

    let paused = Paused::start(cluster);
    // A sync socket push: a typed, retryable `commit_timeout` in bounded
    // time, and the socket stays open.
    let started = Instant::now();
    socket
        .send(Ws::binary(
            ClientFrame::Push {
                id: 9,
                doc: "s".into(),
                update: from_phone.clone(),
            }
            .encode(),
        ))
        .unwrap();
    match push_answer(&mut socket, 9) {
        ServerFrame::PushError { code, .. } => assert_eq!(code, "commit_timeout"),
        other => panic!("expected commit_timeout, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "the sync socket's refusal took {waited:?} (limits.commit_timeout_ms = 1000)"
    );
    // A socket opened during the pause: its hello reads storage, and gets
    // `error` `storage` (reconnect later) in bounded time, not silence.
    let started = Instant::now();
    let mut late = open_sync_socket(server.addr, "tablet");
    match late.read().unwrap() {
        Ws::Binary(bytes) => match ServerFrame::decode(&bytes).unwrap() {
            ServerFrame::Error { code, .. } => assert_eq!(code, "storage"),
            other => panic!("expected error storage, got {other:?}"),
        },
        other => panic!("expected an error frame, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "the hello's answer took {waited:?} (limits.commit_timeout_ms = 1000)"
    );
    // An HTTP push: a typed 503 with Retry-After, in bounded time.
    let pending = typed("during ");
    let started = Instant::now();
    // Waits at most 10 s itself, so a server that holds the request
    // fails this test instead of hanging it.
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let response = match agent.post(&url).send_bytes(&pending) {
        Err(ureq::Error::Status(_, r)) | Ok(r) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let waited = started.elapsed();
    let status = response.status();
    let retry_after = response.header("retry-after").map(str::to_owned);
    let body = json_of(response.into_string().unwrap().as_bytes());
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("commit_timeout")),
        "{body}"
    );
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(
        waited < Duration::from_secs(5),
        "the refusal took {waited:?} (limits.commit_timeout_ms = 1000)"
    );
    // A /yws update meanwhile: the socket stays open.
    let from_browser = {
        let text = browser.get_or_insert_text("content");
        let mut txn = browser.transact_mut();
        text.insert(&mut txn, 0, "ws ");
        txn.encode_update_v1()
    };
    ws.send(Ws::Binary(
        Message::Sync(SyncMessage::Update(from_browser))
            .encode_v1()
            .into(),
    ))
    .unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    }
    match ws.read() {
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        Ok(Ws::Close(frame)) => {
            panic!("the /yws socket closed while the database paused: {frame:?}")
        }
        Ok(_) => {}
        Err(e) => panic!("the /yws socket failed while the database paused: {e}"),
    }
    drop(paused);

    // The sync socket's push, retried on the same socket, is answered.
    socket
        .send(Ws::binary(
            ClientFrame::Push {
                id: 10,
                doc: "s".into(),
                update: from_phone,
            }
            .encode(),
        ))
        .unwrap();
    assert!(
        matches!(push_answer(&mut socket, 10), ServerFrame::Pushed { .. }),
        "the retried push is answered once the database is back"
    );
    let phone_doc = format!("http://{}/v1/collections/notes/documents/s", server.addr);
    let (status, bytes, _) = call(ureq::get(&phone_doc), None);
    assert_eq!(
        (status, text_of(&bytes)),
        (200, "from the phone".to_owned())
    );

    // The refused push, retried, lands (a no-op if it had landed already);
    // then one more.
    let (status, _, _) = call(ureq::post(&url), Some(&pending));
    assert_eq!(status, 200);
    let (status, _, _) = call(ureq::post(&url), Some(&typed("after")));
    assert_eq!(status, 200);
    // Everything acknowledged, and the /yws update, is in the document.
    let document = format!("http://{}/v1/collections/notes/documents/d", server.addr);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, bytes, _) = call(ureq::get(&document), None);
        assert_eq!(status, 200);
        let text = text_of(&bytes);
        if text == "ws acked before during after" {
            break;
        }
        assert!(Instant::now() < deadline, "the document is {text:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The socket is still the same connection.
    ws.send(Ws::Ping(Vec::new().into())).unwrap();
    server.stop();
}
