//! The collection sync socket (`GET /v1/collections/{c}/sync`,
//! docs/PROTOCOL.md) against the real server on loopback: durable push
//! answers, the stream's seam and paging, resets with their reasons,
//! per-push refusals that keep the socket open, tokens per document, and
//! `/yws` clients meeting sync-socket clients on one document.

use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use seqsync_engine::BackendKind;
use seqsync_protocol::http::{ChangeKind, ChangesAnswer};
use seqsync_protocol::sync::{ClientFrame, Hello, ServerFrame, SyncChange};
use seqsync_protocol::{EpochHex, Hex64};
use seqsync_server::{HostConfig, ServerThread};
use serde_json::json;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;
use yrs::updates::decoder::Decode;
use yrs::{GetString, Text, Transact};

const SECRET: &str = "a test secret that is long enough";

fn start(tune: impl FnOnce(&mut HostConfig)) -> (ServerThread, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = HostConfig::default();
    config.engine.storage.backend = BackendKind::Sqlite;
    config.engine.storage.path = dir.path().join("data");
    config.server.listen = "127.0.0.1:0".to_owned();
    tune(&mut config);
    (ServerThread::start(config).unwrap(), dir)
}

fn update(client: u64, text: &str) -> Vec<u8> {
    // Ids below 65,536 are reserved for migrations.
    let doc = yrs::Doc::with_client_id(client + (1 << 20));
    let t = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    t.insert(&mut txn, 0, text);
    txn.encode_update_v1()
}

/// A sync socket client speaking frames.
struct Socket {
    ws: tungstenite::WebSocket<MaybeTlsStream<TcpStream>>,
}

impl Socket {
    fn open(server: &ServerThread, collection: &str, token: Option<&str>) -> Self {
        let mut url = format!("ws://{}/v1/collections/{collection}/sync", server.addr);
        if let Some(token) = token {
            url.push_str(&format!("?access_token={token}"));
        }
        let (ws, _) = tungstenite::connect(url).unwrap();
        if let MaybeTlsStream::Plain(stream) = ws.get_ref() {
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
        }
        Self { ws }
    }

    fn send(&mut self, frame: ClientFrame) {
        self.ws.send(Message::binary(frame.encode())).unwrap();
    }

    /// The next frame; panics on a close or a timeout.
    fn next(&mut self) -> ServerFrame {
        loop {
            match self.ws.read().unwrap() {
                Message::Binary(bytes) => return ServerFrame::decode(&bytes).unwrap(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    /// Whether the server closed the socket (after the frames read).
    fn closed(&mut self) -> bool {
        loop {
            match self.ws.read() {
                Ok(Message::Close(_)) | Err(_) => return true,
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => {}
                Ok(other) => panic!("expected a close, got {other:?}"),
            }
        }
    }

    fn hello(&mut self, hello: Hello) -> ServerFrame {
        self.send(ClientFrame::Hello(hello));
        self.next()
    }

    /// Reads until `up_to_date` at `head` or beyond, collecting changes;
    /// any other frame goes to `others`.
    fn until_up_to_date(
        &mut self,
        head: u64,
        others: &mut Vec<ServerFrame>,
    ) -> (Vec<SyncChange>, Option<Hex64>) {
        let mut changes = Vec::new();
        loop {
            match self.next() {
                ServerFrame::Changes {
                    through,
                    changes: batch,
                    ..
                } => {
                    assert!(batch.iter().all(|c| c.seq <= through));
                    changes.extend(batch);
                }
                ServerFrame::UpToDate { head: at, checksum } if at >= head => {
                    return (changes, checksum)
                }
                ServerFrame::UpToDate { .. } => {}
                other => others.push(other),
            }
        }
    }
}

fn welcome_of(frame: ServerFrame) -> (Option<EpochHex>, u64) {
    match frame {
        ServerFrame::Welcome {
            epoch,
            head,
            max_pushes_in_flight,
            ..
        } => {
            assert!(max_pushes_in_flight > 0);
            (epoch, head)
        }
        other => panic!("expected a welcome, got {other:?}"),
    }
}

/// The page of one change after `after` (its `cursor_checksum` is the
/// checksum at `after + 1`), read with `token` if given.
fn changes_page_as(
    server: &ServerThread,
    collection: &str,
    after: u64,
    token: Option<&str>,
) -> ChangesAnswer {
    let url = format!(
        "http://{}/v1/collections/{collection}/changes?after={after}&limit=1",
        server.addr
    );
    let mut request = ureq::get(&url);
    if let Some(token) = token {
        request = request.set("authorization", &format!("Bearer {token}"));
    }
    serde_json::from_reader(request.call().unwrap().into_reader()).unwrap()
}

fn changes_page(server: &ServerThread, collection: &str, after: u64) -> ChangesAnswer {
    changes_page_as(server, collection, after, None)
}

#[test]
fn a_push_is_answered_once_durable_and_comes_back_in_the_stream() {
    // Why: the sync socket's promise is that `pushed` means committed, and
    // that a client's cursor and checksum cover its own changes too.
    let (server, _dir) = start(|_| {});
    let mut socket = Socket::open(&server, "notes", None);
    let (epoch, head) = welcome_of(socket.hello(Hello {
        peer: "phone".into(),
        ..Hello::default()
    }));
    assert_eq!((epoch, head), (None, 0));
    assert!(matches!(
        socket.next(),
        ServerFrame::UpToDate {
            head: 0,
            checksum: None
        }
    ));
    let bytes = update(1, "hello");
    socket.send(ClientFrame::Push {
        id: 7,
        doc: "n1".into(),
        update: bytes.clone(),
    });
    let mut others = Vec::new();
    let (changes, checksum) = socket.until_up_to_date(1, &mut others);
    if others.is_empty() {
        others.push(socket.next());
    }
    assert_eq!(
        others,
        vec![ServerFrame::Pushed {
            id: 7,
            head: 1,
            seqs: vec![Some(1)]
        }]
    );
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].seq, 1);
    assert_eq!(changes[0].doc, "n1");
    assert_eq!(changes[0].kind, ChangeKind::Update);
    assert_eq!(changes[0].origin.as_deref(), Some("phone"));
    assert_eq!(changes[0].payload, bytes);
    // The checksum the stream gave is the server's at seq 1.
    let page = changes_page(&server, "notes", 0);
    assert_eq!(checksum, Some(page.cursor_checksum));
    // The same bytes again add nothing: answered with no seq.
    socket.send(ClientFrame::Push {
        id: 8,
        doc: "n1".into(),
        update: bytes,
    });
    assert_eq!(
        socket.next(),
        ServerFrame::Pushed {
            id: 8,
            head: 1,
            seqs: vec![None]
        }
    );
    socket.send(ClientFrame::Ack { seq: 1 });
    assert_eq!(socket.next(), ServerFrame::Acked { seq: 1 });
    socket.send(ClientFrame::Ack { seq: 5 });
    assert!(matches!(
        socket.next(),
        ServerFrame::AckError { seq: 5, code, .. } if code == "ack_beyond_head"
    ));
    let peers: serde_json::Value = serde_json::from_reader(
        ureq::get(&format!(
            "http://{}/v1/collections/notes/peers",
            server.addr
        ))
        .call()
        .unwrap()
        .into_reader(),
    )
    .unwrap();
    assert_eq!(peers[0]["peer"], "phone");
    assert_eq!(peers[0]["acked"], 1);
    // Sockets left open would hold the server's shutdown for its 10 s grace.
    drop(socket);
    server.stop();
}

#[test]
fn the_stream_pages_stored_changes_then_goes_live_without_gap_or_duplicate() {
    // Why: a client behind by more than one frame's worth of changes must
    // get every seq exactly once, across frames and at the seam with the
    // live stream, whatever cursor it starts from.
    let (server, _dir) = start(|_| {});
    let mut writer = Socket::open(&server, "c", None);
    welcome_of(writer.hello(Hello::default()));
    let batch: Vec<(String, Vec<u8>)> = (0..700u64)
        .map(|i| (format!("d{}", i % 13), update(10 + i, &format!("x{i}"))))
        .collect();
    writer.send(ClientFrame::PushBatch {
        id: 1,
        updates: batch,
    });
    writer.until_up_to_date(700, &mut Vec::new());
    let mut readers = Vec::new();
    for after in [0u64, 1, 255, 256, 257, 699, 700] {
        let checksum = (after > 0).then(|| changes_page(&server, "c", after - 1).cursor_checksum);
        let mut reader = Socket::open(&server, "c", None);
        let (_, head) = welcome_of(reader.hello(Hello {
            after,
            checksum,
            ..Hello::default()
        }));
        assert_eq!(head, 700);
        let (stored, at_head) = reader.until_up_to_date(700, &mut Vec::new());
        let seqs: Vec<u64> = stored.iter().map(|c| c.seq).collect();
        assert_eq!(
            seqs,
            ((after + 1)..=700).collect::<Vec<_>>(),
            "after {after}"
        );
        assert_eq!(
            at_head,
            Some(changes_page(&server, "c", 699).cursor_checksum)
        );
        readers.push(reader);
    }
    // Live: a push from another socket reaches every reader exactly once.
    writer.send(ClientFrame::Push {
        id: 2,
        doc: "live".into(),
        update: update(5000, "live"),
    });
    for reader in &mut readers {
        let (live, _) = reader.until_up_to_date(701, &mut Vec::new());
        let seqs: Vec<u64> = live.iter().map(|c| c.seq).collect();
        assert_eq!(seqs, vec![701]);
    }
    // Sockets left open would hold the server's shutdown for its 10 s grace.
    drop(writer);
    drop(readers);
    server.stop();
}

#[test]
fn a_cursor_of_another_history_is_reset_with_its_reason() {
    // Why: a client must learn why its cursor is no good (another epoch,
    // beyond the head, a seq reused by another history), then recover.
    let (server, _dir) = start(|_| {});
    let mut writer = Socket::open(&server, "r", None);
    welcome_of(writer.hello(Hello::default()));
    writer.send(ClientFrame::Push {
        id: 1,
        doc: "d".into(),
        update: update(1, "a"),
    });
    writer.until_up_to_date(1, &mut Vec::new());
    let page = changes_page(&server, "r", 0);
    let epoch = page.epoch;
    let cases = [
        (
            Hello {
                after: 1,
                epoch: Some(EpochHex([3; 16])),
                ..Hello::default()
            },
            "foreign_epoch",
        ),
        (
            Hello {
                after: 9,
                epoch,
                ..Hello::default()
            },
            "cursor_beyond_head",
        ),
        (
            Hello {
                after: 1,
                epoch,
                checksum: Some(Hex64(page.cursor_checksum.0 ^ 1)),
                ..Hello::default()
            },
            "history_replaced",
        ),
    ];
    for (hello, expected) in cases {
        let mut socket = Socket::open(&server, "r", None);
        match socket.hello(hello) {
            ServerFrame::Reset {
                reason,
                epoch: at,
                head,
            } => {
                assert_eq!(reason, expected);
                assert_eq!((at, head), (epoch, 1));
            }
            other => panic!("expected a reset, got {other:?}"),
        }
        assert!(socket.closed());
    }
    // The right checksum is accepted.
    let mut socket = Socket::open(&server, "r", None);
    welcome_of(socket.hello(Hello {
        after: 1,
        epoch,
        checksum: Some(page.cursor_checksum),
        ..Hello::default()
    }));
    // Sockets left open would hold the server's shutdown for its 10 s grace.
    drop(writer);
    drop(socket);
    server.stop();
}

#[test]
fn a_refused_push_answers_alone_and_the_socket_stays_open() {
    // Why: one bad update (a deleted document, garbage bytes) must not cost
    // the client its socket or block the pushes after it.
    let (server, _dir) = start(|_| {});
    let mut socket = Socket::open(&server, "p", None);
    welcome_of(socket.hello(Hello::default()));
    socket.next(); // up_to_date 0
    ureq::delete(&format!(
        "http://{}/v1/collections/p/documents/gone",
        server.addr
    ))
    .call()
    .unwrap();
    socket.send(ClientFrame::Push {
        id: 1,
        doc: "gone".into(),
        update: update(1, "x"),
    });
    socket.send(ClientFrame::Push {
        id: 2,
        doc: "ok".into(),
        update: vec![0xff, 0xff, 0xff],
    });
    socket.send(ClientFrame::Push {
        id: 3,
        doc: "ok".into(),
        update: update(2, "fine"),
    });
    let mut answers = std::collections::BTreeMap::new();
    while answers.len() < 3 {
        match socket.next() {
            ServerFrame::PushError { id, code, .. } => {
                answers.insert(id, code);
            }
            ServerFrame::Pushed { id, seqs, .. } => {
                assert!(seqs[0].is_some());
                answers.insert(id, "pushed".to_owned());
            }
            _ => {}
        }
    }
    assert_eq!(answers[&1], "document_deleted");
    assert_eq!(answers[&2], "invalid_update");
    assert_eq!(answers[&3], "pushed");
    // A frame that does not decode ends the socket with a typed error.
    socket.ws.send(Message::binary(vec![2, 1])).unwrap();
    loop {
        match socket.next() {
            ServerFrame::Error { code, .. } => {
                assert_eq!(code, "invalid_frame");
                break;
            }
            _ => continue,
        }
    }
    assert!(socket.closed());
    let metrics = ureq::get(&format!("http://{}/metrics", server.addr))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(metrics.contains("seqsync_refused_total{reason=\"invalid_frame\"}"));
    // Sockets left open would hold the server's shutdown for its 10 s grace.
    drop(socket);
    server.stop();
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[test]
fn tokens_decide_what_a_socket_follows_and_writes() {
    // Why: a token for one document must see only that document through the
    // collection socket, and a read-only token's pushes must be refused one
    // by one (counted), never stored.
    let (server, _dir) = start(|c| c.server.token_secret = SECRET.to_owned());
    let admin = token(
        json!({"col": "*", "rights": ["read", "subscribe", "write", "ack"], "exp": now() + 600}),
    );
    let one_doc = token(
        json!({"col": "t", "doc": "mine", "rights": ["subscribe", "write"], "exp": now() + 600}),
    );
    let reader = token(json!({"col": "t", "rights": ["subscribe"], "exp": now() + 600}));
    // An unknown token is refused at the upgrade.
    let url = format!(
        "ws://{}/v1/collections/t/sync?access_token=nonsense",
        server.addr
    );
    assert!(tungstenite::connect(url).is_err());
    // A one-document token that asks for the whole collection is refused.
    let mut socket = Socket::open(&server, "t", Some(&one_doc));
    assert!(matches!(
        socket.hello(Hello::default()),
        ServerFrame::Error { code, .. } if code == "forbidden"
    ));
    let mut mine = Socket::open(&server, "t", Some(&one_doc));
    welcome_of(mine.hello(Hello {
        docs: vec!["mine".into()],
        ..Hello::default()
    }));
    let mut all = Socket::open(&server, "t", Some(&admin));
    welcome_of(all.hello(Hello::default()));
    all.send(ClientFrame::PushBatch {
        id: 1,
        updates: vec![
            ("other".into(), update(1, "not yours")),
            ("mine".into(), update(2, "yours")),
        ],
    });
    all.until_up_to_date(2, &mut Vec::new());
    let (seen, checksum) = mine.until_up_to_date(2, &mut Vec::new());
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].doc, "mine");
    // `through` and the checksum still cover the whole log.
    assert_eq!(
        checksum,
        Some(changes_page_as(&server, "t", 1, Some(&admin)).cursor_checksum)
    );
    // Its pushes to another document are refused, to its own accepted.
    mine.send(ClientFrame::Push {
        id: 1,
        doc: "other".into(),
        update: update(3, "x"),
    });
    assert!(matches!(
        mine.next(),
        ServerFrame::PushError { id: 1, code, .. } if code == "forbidden"
    ));
    // A read-only token: every push refused alone, the socket open.
    let mut ro = Socket::open(&server, "t", Some(&reader));
    welcome_of(ro.hello(Hello::default()));
    for id in 1..=3 {
        ro.send(ClientFrame::Push {
            id,
            doc: "mine".into(),
            update: update(10 + id, "no"),
        });
    }
    let mut refused = 0;
    while refused < 3 {
        if let ServerFrame::PushError { code, .. } = ro.next() {
            assert_eq!(code, "forbidden");
            refused += 1;
        }
    }
    assert_eq!(changes_page_as(&server, "t", 0, Some(&admin)).head, 2);
    // Sockets left open would hold the server's shutdown for its 10 s grace.
    drop(socket);
    drop(mine);
    drop(all);
    drop(ro);
    server.stop();
}

#[test]
fn a_schema_newer_than_the_server_is_refused_at_the_hello() {
    // Why: a client at a schema the server does not know must be told so
    // before anything is exchanged.
    let (server, _dir) = start(|_| {});
    let mut socket = Socket::open(&server, "s", None);
    assert!(matches!(
        socket.hello(Hello { schema_version: 9, ..Hello::default() }),
        ServerFrame::Error { code, .. } if code == "schema_too_new"
    ));
    assert!(socket.closed());
    // Sockets left open would hold the server's shutdown for its 10 s grace.
    drop(socket);
    server.stop();
}

#[test]
fn yws_and_sync_socket_clients_see_each_others_edits() {
    // Why: a browser on y-websocket and an app on the sync socket edit the
    // same documents; each must see the other's edits.
    let (server, _dir) = start(|_| {});
    let mut socket = Socket::open(&server, "m", None);
    welcome_of(socket.hello(Hello::default()));
    let (mut yws, _) = tungstenite::connect(format!("ws://{}/yws/m/doc", server.addr)).unwrap();
    // y-websocket: the server's step 1 first; answer with our update.
    let _ = yws.read().unwrap();
    let from_yws = update(77, "from yws ");
    let message = yrs::sync::Message::Sync(yrs::sync::SyncMessage::Update(from_yws.clone()));
    yws.send(Message::binary(yrs::updates::encoder::Encode::encode_v1(
        &message,
    )))
    .unwrap();
    let (seen, _) = socket.until_up_to_date(1, &mut Vec::new());
    assert_eq!(
        seen.last().map(|c| c.payload.clone()),
        Some(from_yws.clone())
    );
    // The other way: a push on the socket reaches the y-websocket client.
    let from_sync = update(78, "from sync");
    socket.send(ClientFrame::Push {
        id: 1,
        doc: "doc".into(),
        update: from_sync.clone(),
    });
    let doc = yrs::Doc::new();
    let text = doc.get_or_insert_text("t");
    doc.transact_mut()
        .apply_update(yrs::Update::decode_v1(&from_yws).unwrap())
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !text.get_string(&doc.transact()).contains("from sync") {
        assert!(std::time::Instant::now() < deadline, "no update on /yws");
        if let Message::Binary(bytes) = yws.read().unwrap() {
            if let Ok(yrs::sync::Message::Sync(
                yrs::sync::SyncMessage::Update(u) | yrs::sync::SyncMessage::SyncStep2(u),
            )) = yrs::sync::Message::decode_v1(&bytes)
            {
                doc.transact_mut()
                    .apply_update(yrs::Update::decode_v1(&u).unwrap())
                    .unwrap();
            }
        }
    }
    // Sockets left open would hold the server's shutdown for its 10 s grace.
    drop(socket);
    drop(yws);
    server.stop();
}

/// A y-protocols awareness update of one client.
fn awareness(client: u64, clock: u32, json: &str) -> Vec<u8> {
    let mut clients = std::collections::HashMap::new();
    clients.insert(
        yrs::ClientID::new(client),
        yrs::sync::awareness::AwarenessUpdateEntry {
            clock,
            json: json.into(),
        },
    );
    yrs::updates::encoder::Encode::encode_v1(&yrs::sync::awareness::AwarenessUpdate { clients })
}

/// The states of a `presence` frame (client → JSON), or panics.
fn presence_of(frame: ServerFrame, doc: &str) -> Vec<(u64, String)> {
    match frame {
        ServerFrame::Presence { doc: of, update } => {
            assert_eq!(of, doc);
            let update = yrs::sync::awareness::AwarenessUpdate::decode_v1(&update).unwrap();
            let mut states: Vec<(u64, String)> = update
                .clients
                .into_iter()
                .map(|(id, entry)| (id.get(), entry.json.to_string()))
                .collect();
            states.sort();
            states
        }
        other => panic!("expected a presence frame, got {other:?}"),
    }
}

#[test]
fn presence_is_shared_with_yws_and_goes_with_the_socket_that_set_it() {
    // Why: sync-socket and y-websocket clients of one document share a
    // room; a socket's states must leave with it (leave or close), and a
    // socket that leaves and joins again at once must stay visible.
    let (server, _dir) = start(|_| {});
    let mut a = Socket::open(&server, "p", None);
    welcome_of(a.hello(Hello::default()));
    a.until_up_to_date(0, &mut Vec::new());
    a.send(ClientFrame::Awareness {
        doc: "doc".into(),
        update: awareness(100, 1, r#"{"name":"ann"}"#),
    });
    // An empty room: no snapshot, then its own state relayed back.
    assert_eq!(
        presence_of(a.next(), "doc"),
        vec![(100, r#"{"name":"ann"}"#.to_owned())]
    );
    // A y-websocket client of the same document gets ann in its first
    // awareness message.
    let (mut yws, _) = tungstenite::connect(format!("ws://{}/yws/p/doc", server.addr)).unwrap();
    let seen_by_yws = loop {
        if let Message::Binary(bytes) = yws.read().unwrap() {
            if let Ok(yrs::sync::Message::Awareness(update)) = yrs::sync::Message::decode_v1(&bytes)
            {
                break update;
            }
        }
    };
    assert_eq!(
        seen_by_yws
            .clients
            .values()
            .map(|e| e.json.to_string())
            .collect::<Vec<_>>(),
        vec![r#"{"name":"ann"}"#.to_owned()]
    );
    // Its own state reaches the socket.
    let message = yrs::sync::Message::Awareness(
        yrs::sync::awareness::AwarenessUpdate::decode_v1(&awareness(200, 1, r#"{"name":"bob"}"#))
            .unwrap(),
    );
    yws.send(Message::binary(yrs::updates::encoder::Encode::encode_v1(
        &message,
    )))
    .unwrap();
    assert_eq!(
        presence_of(a.next(), "doc"),
        vec![(200, r#"{"name":"bob"}"#.to_owned())]
    );
    // A second socket joins: the snapshot holds both.
    let mut b = Socket::open(&server, "p", None);
    welcome_of(b.hello(Hello::default()));
    b.until_up_to_date(0, &mut Vec::new());
    b.send(ClientFrame::Awareness {
        doc: "doc".into(),
        update: awareness(300, 0, "null"),
    });
    assert_eq!(
        presence_of(b.next(), "doc"),
        vec![
            (100, r#"{"name":"ann"}"#.to_owned()),
            (200, r#"{"name":"bob"}"#.to_owned())
        ]
    );
    // `a` leaves and joins again at once: b sees ann removed, then back.
    a.send(ClientFrame::Leave { doc: "doc".into() });
    a.send(ClientFrame::Awareness {
        doc: "doc".into(),
        update: awareness(100, 3, r#"{"name":"ann"}"#),
    });
    assert_eq!(presence_of(b.next(), "doc"), vec![(100, "null".to_owned())]);
    assert_eq!(
        presence_of(b.next(), "doc"),
        vec![(100, r#"{"name":"ann"}"#.to_owned())]
    );
    // `a` closes: its state is removed for everyone at once.
    drop(a);
    assert_eq!(presence_of(b.next(), "doc"), vec![(100, "null".to_owned())]);
    drop(b);
    drop(yws);
    server.stop();
}

#[test]
fn presence_refusals_close_the_socket_with_their_code() {
    // Why: a broken or hostile client gets a typed refusal, never a room
    // it may not see or an unbounded number of rooms.
    let (server, _dir) = start(|c| c.server.token_secret = SECRET.to_owned());
    let one_doc =
        token(json!({"col": "r", "doc": "mine", "rights": ["subscribe"], "exp": now() + 600}));
    let admin = token(
        json!({"col": "*", "rights": ["read", "subscribe", "write", "ack"], "exp": now() + 600}),
    );
    let refused = |token: &str, frames: Vec<ClientFrame>| -> (String, bool) {
        let mut socket = Socket::open(&server, "r", Some(token));
        welcome_of(socket.hello(Hello {
            docs: vec!["mine".into()],
            ..Hello::default()
        }));
        socket.until_up_to_date(0, &mut Vec::new());
        for frame in frames {
            socket.send(frame);
        }
        loop {
            match socket.next() {
                ServerFrame::Error { code, .. } => return (code, socket.closed()),
                ServerFrame::Presence { .. } => {}
                other => panic!("expected an error, got {other:?}"),
            }
        }
    };
    // Presence in a document the token does not cover.
    let (code, closed) = refused(
        &one_doc,
        vec![ClientFrame::Awareness {
            doc: "other".into(),
            update: awareness(1, 1, "{}"),
        }],
    );
    assert_eq!((code.as_str(), closed), ("forbidden", true));
    // A count of clients the bytes cannot hold.
    let (code, closed) = refused(
        &admin,
        vec![ClientFrame::Awareness {
            doc: "mine".into(),
            update: vec![0xff, 0xff, 0xff, 0x0f, 1],
        }],
    );
    assert_eq!((code.as_str(), closed), ("invalid_frame", true));
    // More rooms than a socket may be in.
    let joins = (0..=256)
        .map(|i| ClientFrame::Awareness {
            doc: format!("doc-{i}"),
            update: awareness(1, 0, "null"),
        })
        .collect();
    let (code, closed) = refused(&admin, joins);
    assert_eq!((code.as_str(), closed), ("too_many_rooms", true));
    server.stop();
}
