//! The host server over real HTTP and WebSockets on loopback: every route of
//! docs/SERVER.md's route table, the bad inputs of docs/DESIGN.md, auth,
//! and the subscribe and y-websocket streams. (The server as a process,
//! SIGKILLed and restarted, is `cli/tests/serve.rs`.)
//!
//! Size: one module per family of routes (`routes`, `websockets`,
//! `schema`, `digests`), each case independent.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use seqsync_engine::BackendKind;
use seqsync_server::{HostConfig, ServerThread};

use seqsync_testkit::http::{call, json_of};
use seqsync_testkit::notes_schema as notes;
use serde_json::{json, Value};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{GetString, ReadTxn, Text, Transact};

struct Harness {
    server: Option<ServerThread>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn start(kind: BackendKind, tune: impl FnOnce(&mut HostConfig)) -> Self {
        Self::start_with(kind, seqsync_engine::Migrations::new(), tune)
    }

    fn start_with(
        kind: BackendKind,
        migrations: seqsync_engine::Migrations,
        tune: impl FnOnce(&mut HostConfig),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = HostConfig::default();
        config.engine.storage.backend = kind;
        config.engine.storage.path = dir.path().join("data");
        config.server.listen = "127.0.0.1:0".to_owned();
        tune(&mut config);
        Self {
            server: Some(ServerThread::start_with_migrations(config, migrations).unwrap()),
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.as_ref().unwrap().addr
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }
}

fn post(h: &Harness, path: &str, body: &[u8]) -> (u16, Value) {
    let (status, bytes, _) = call(ureq::post(&h.url(path)), Some(body));
    (status, json_of(&bytes))
}

fn get(h: &Harness, path: &str) -> (u16, Value) {
    let (status, bytes, _) = call(ureq::get(&h.url(path)), None);
    (status, json_of(&bytes))
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

/// A Yjs client editing one text.
struct Client {
    doc: yrs::Doc,
    text: yrs::TextRef,
}

impl Client {
    /// Client `id`, under yrs client id `2^20 + id` (ids below 65,536 are
    /// reserved for migration steps and refused in pushes).
    fn new(id: u64) -> Self {
        let doc = yrs::Doc::with_client_id((1 << 20) + id);
        let text = doc.get_or_insert_text("content");
        Self { doc, text }
    }

    fn insert(&self, at: u32, s: &str) -> Vec<u8> {
        let mut txn = self.doc.transact_mut();
        self.text.insert(&mut txn, at, s);
        txn.encode_update_v1()
    }

    fn apply(&self, update: &[u8]) {
        self.doc
            .transact_mut()
            .apply_update(yrs::Update::decode_v1(update).unwrap())
            .unwrap();
    }

    fn string(&self) -> String {
        self.text.get_string(&self.doc.transact())
    }
}

fn text_of(update: &[u8]) -> String {
    let c = Client::new(999);
    c.apply(update);
    c.string()
}

mod routes {
    use super::*;

    /// Every REST route answers as docs/SERVER.md's route table says, on every disk backend.
    fn every_route_round_trips(kind: BackendKind) {
        let h = Harness::start(kind, |_| {});
        let c = Client::new(1);
        let (s, healthz) = get(&h, "/healthz");
        assert_eq!(s, 200, "{healthz}");

        let first = c.insert(0, "hello");
        let (status, bytes, _) = call(
            ureq::post(&h.url("/v1/collections/notes/documents/d1/updates"))
                .set("x-peer-id", "phone"),
            Some(&first),
        );
        assert_eq!(
            (status, json_of(&bytes)),
            (200, json!({"seq": 1, "head": 1}))
        );
        // A retry is free.
        assert_eq!(
            post(&h, "/v1/collections/notes/documents/d1/updates", &first),
            (200, json!({"seq": null, "head": 1}))
        );

        let b64 = base64::engine::general_purpose::STANDARD;
        let batch = json!({"updates": [
            {"doc": "d1", "update": b64.encode(c.insert(5, " world"))},
            {"doc": "d2", "update": b64.encode(Client::new(2).insert(0, "other"))},
        ]});
        let (s, body) = post(
            &h,
            "/v1/collections/notes/batch",
            batch.to_string().as_bytes(),
        );
        assert_eq!((s, body), (200, json!({"seqs": [2, 3], "head": 3})));

        let (s, page) = get(&h, "/v1/collections/notes/changes?after=0&limit=2");
        assert_eq!(s, 200);
        assert_eq!(page["changes"].as_array().unwrap().len(), 2);
        assert_eq!(
            (
                page["cursor"].as_u64(),
                page["has_more"].as_bool(),
                page["head"].as_u64()
            ),
            (Some(2), Some(true), Some(3))
        );
        assert_eq!(page["changes"][0]["kind"], "update");
        assert_eq!(page["changes"][0]["doc"], "d1");
        assert_eq!(page["changes"][0]["origin"], "phone");
        assert_eq!(
            b64.decode(page["changes"][0]["update"].as_str().unwrap())
                .unwrap(),
            first
        );
        let epoch = page["epoch"].as_str().unwrap().to_owned();
        let (s, rest) = get(
            &h,
            &format!("/v1/collections/notes/changes?after=2&epoch={epoch}"),
        );
        assert_eq!(
            (
                s,
                rest["changes"].as_array().unwrap().len(),
                rest["has_more"].as_bool()
            ),
            (200, 1, Some(false))
        );

        let (status, state, cursor) = call(
            ureq::get(&h.url("/v1/collections/notes/documents/d1")),
            None,
        );
        assert_eq!(
            (status, text_of(&state), cursor.as_deref()),
            (200, "hello world".to_owned(), Some("3"))
        );

        let offline = Client::new(3);
        offline.apply(&first);
        let sv = offline.doc.transact().state_vector().encode_v1();
        let (status, diff, cursor) = call(
            ureq::post(&h.url("/v1/collections/notes/documents/d1/recover")),
            Some(&sv),
        );
        assert_eq!((status, cursor.as_deref()), (200, Some("3")));
        offline.apply(&diff);
        assert_eq!(offline.string(), "hello world");

        assert_eq!(
            post(
                &h,
                "/v1/collections/notes/peers/phone/ack",
                br#"{"seq": 2}"#
            ),
            (200, json!({"seq": 2}))
        );
        assert_eq!(
            post(
                &h,
                "/v1/collections/notes/peers/phone/ack",
                br#"{"seq": 1}"#
            ),
            (200, json!({"seq": 2}))
        );
        let (s, peers) = get(&h, "/v1/collections/notes/peers");
        assert_eq!(s, 200);
        assert_eq!(
            (
                peers[0]["peer"].as_str(),
                peers[0]["acked"].as_u64(),
                peers[0]["lag"].as_u64(),
                peers[0]["active"].as_bool()
            ),
            (Some("phone"), Some(2), Some(1), Some(true))
        );

        let (status, bytes, _) = call(
            ureq::delete(&h.url("/v1/collections/notes/documents/d2")),
            None,
        );
        assert_eq!(
            (status, json_of(&bytes)),
            (200, json!({"seq": 4, "head": 4}))
        );

        let (s, summary) = post(&h, "/v1/collections/notes/compact", b"");
        assert_eq!(s, 200, "{summary}");
        // d1 up to the phone's ack; d2 (deleted) may already have been
        // compacted automatically when its tombstone committed.
        assert!(
            summary["documents_compacted"].as_u64() >= Some(1),
            "{summary}"
        );
        let (_, after) = get(&h, "/v1/collections/notes/changes?after=0");
        let kinds: Vec<&str> = after["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, vec!["snapshot", "delete"]);

        let (status, metrics, _) = call(ureq::get(&h.url("/metrics")), None);
        let metrics = String::from_utf8(metrics).unwrap();
        assert_eq!(status, 200);
        assert!(metrics.contains("seqsync_pushes_total"), "{metrics}");
        assert!(metrics.contains("seqsync_commit_group_size"), "{metrics}");
    }

    #[test]
    fn every_route_round_trips_on_sqlite() {
        every_route_round_trips(BackendKind::Sqlite);
    }

    #[test]
    fn every_route_round_trips_on_redb() {
        every_route_round_trips(BackendKind::Redb);
    }

    /// The bad inputs of docs/DESIGN.md get JSON errors with fitting statuses and
    /// store nothing.
    #[test]
    fn bad_inputs_get_json_errors_and_store_nothing() {
        let h = Harness::start(BackendKind::Sqlite, |c| {
            c.engine.limits.max_update_bytes = 1024
        });
        let c = Client::new(1);
        let valid = c.insert(0, "abc");
        let cases: Vec<(String, Vec<u8>, u16, &str)> = vec![
            (
                "/v1/collections/c/documents/d/updates".into(),
                b"not a yjs update".to_vec(),
                400,
                "invalid_update",
            ),
            (
                "/v1/collections/c/documents/d/updates".into(),
                Vec::new(),
                400,
                "invalid_update",
            ),
            (
                "/v1/collections/c/documents/d/updates".into(),
                valid[..valid.len() / 2].to_vec(),
                400,
                "invalid_update",
            ),
            (
                "/v1/collections/c/documents/d/updates".into(),
                vec![1u8; 4096],
                413,
                "too_large",
            ),
            (
                "/v1/collections/..%2Fx/documents/d/updates".into(),
                valid.clone(),
                400,
                "invalid_name",
            ),
            (
                "/v1/collections/.hidden/documents/d/updates".into(),
                valid.clone(),
                400,
                "invalid_name",
            ),
            (
                format!(
                    "/v1/collections/{}/documents/d/updates",
                    "n".repeat(10 * 1024)
                ),
                valid.clone(),
                400,
                "invalid_name",
            ),
            (
                "/v1/collections/c/documents/a%00b/updates".into(),
                valid.clone(),
                400,
                "invalid_name",
            ),
            (
                "/v1/collections/c/batch".into(),
                b"{not json".to_vec(),
                400,
                "invalid_json",
            ),
            (
                "/v1/collections/c/batch".into(),
                br#"{"updates":[{"doc":"d","update":"***"}]}"#.to_vec(),
                400,
                "invalid_base64",
            ),
            (
                "/v1/collections/c/batch".into(),
                br#"{"updates":[]}"#.to_vec(),
                400,
                "empty_batch",
            ),
            (
                "/v1/collections/c/peers/p/ack".into(),
                br#"{"seq": 5}"#.to_vec(),
                400,
                "ack_beyond_head",
            ),
            (
                "/v1/collections/c/peers/p/ack".into(),
                br#"{"sequence": 5}"#.to_vec(),
                400,
                "invalid_json",
            ),
            (
                "/v1/collections/c/documents/d/recover".into(),
                vec![0xff, 0xff, 0xff],
                400,
                "invalid_state_vector",
            ),
        ];
        for (path, body, status, code) in cases {
            let (s, bytes, _) = call(ureq::post(&h.url(&path)), Some(&body));
            let body = json_of(&bytes);
            assert_eq!(
                (s, error_code(&body)),
                (status, code),
                "POST {}: {body}",
                &path[..path.len().min(80)]
            );
        }
        let (s, bytes, _) = call(
            ureq::post(&h.url("/v1/collections/c/documents/d/updates"))
                .set("x-schema-version", "two"),
            Some(&valid),
        );
        assert_eq!((s, error_code(&json_of(&bytes))), (400, "invalid_header"));
        let (s, page) = get(&h, "/v1/collections/c/changes");
        assert_eq!(
            (s, page["head"].as_u64()),
            (200, Some(0)),
            "nothing was stored: {page}"
        );

        assert_eq!(
            post(&h, "/v1/collections/c/documents/d/updates", &valid).0,
            200
        );
        let (s, reset) = get(&h, "/v1/collections/c/changes?after=99");
        assert_eq!(
            (s, error_code(&reset), reset["head"].as_u64()),
            (409, "reset", Some(1))
        );
        assert!(reset["epoch"].is_string());
        let (s, reset) = get(
            &h,
            &format!("/v1/collections/c/changes?after=0&epoch={}", "0".repeat(32)),
        );
        assert_eq!((s, error_code(&reset)), (409, "reset"));
        let (s, bad) = get(&h, "/v1/collections/c/changes?after=-1");
        assert_eq!((s, error_code(&bad)), (400, "invalid_query"));
        let (s, empty) = get(&h, "/v1/collections/c/changes?after=0&limit=0");
        assert_eq!(
            (
                s,
                empty["changes"].as_array().unwrap().len(),
                empty["has_more"].as_bool()
            ),
            (200, 0, Some(true))
        );
        let (s, all) = get(
            &h,
            "/v1/collections/c/changes?after=0&limit=18446744073709551615",
        );
        assert_eq!((s, all["changes"].as_array().unwrap().len()), (200, 1));
        let (s, missing) = get(&h, "/v1/collections/c/documents/nope");
        assert_eq!((s, error_code(&missing)), (404, "document_not_found"));
        let (status, bytes, _) = call(ureq::delete(&h.url("/v1/collections/c/documents/d")), None);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
        let (s, deleted) = post(
            &h,
            "/v1/collections/c/documents/d/updates",
            &c.insert(0, "x"),
        );
        assert_eq!((s, error_code(&deleted)), (409, "document_deleted"));
        let (s, unknown) = get(&h, "/v2/nothing");
        assert_eq!((s, error_code(&unknown)), (404, "not_found"));
    }

    /// With tokens configured, reads and writes are refused without the
    /// right token, and a read token cannot write.
    #[test]
    fn auth_refuses_reads_and_writes_without_the_right_token() {
        let h = Harness::start(BackendKind::Sqlite, |c| {
            c.server.read_token = "reader".into();
            c.server.write_token = "writer".into();
        });
        let update = Client::new(1).insert(0, "x");
        let push = |token: Option<&str>| {
            let mut req = ureq::post(&h.url("/v1/collections/c/documents/d/updates"));
            if let Some(t) = token {
                req = req.set("authorization", &format!("Bearer {t}"));
            }
            call(req, Some(&update)).0
        };
        let read = |token: Option<&str>| {
            let mut req = ureq::get(&h.url("/v1/collections/c/changes"));
            if let Some(t) = token {
                req = req.set("authorization", &format!("Bearer {t}"));
            }
            call(req, None).0
        };
        assert_eq!(push(None), 401);
        assert_eq!(push(Some("wrong")), 401);
        assert_eq!(push(Some("reader")), 403);
        assert_eq!(push(Some("writer")), 200);
        assert_eq!(read(None), 401);
        assert_eq!(read(Some("reader")), 200);
        assert_eq!(read(Some("writer")), 200);
        let (s, _, _) = call(
            ureq::get(&h.url("/v1/collections/c/changes?access_token=reader")),
            None,
        );
        assert_eq!(s, 200);
    }
}

mod websockets {
    use super::*;
    use tungstenite::Message as Ws;

    fn connect(
        h: &Harness,
        path: &str,
    ) -> tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>> {
        let (ws, _) = tungstenite::connect(format!("ws://{}{}", h.addr(), path)).unwrap();
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        ws
    }

    /// The subscribe socket sends stored changes after the cursor, an
    /// up-to-date marker, then live changes, and a reset as an error.
    #[test]
    fn subscribe_streams_stored_then_live_changes() {
        let h = Harness::start(BackendKind::Sqlite, |_| {});
        let c = Client::new(1);
        for i in 0..3 {
            post(
                &h,
                "/v1/collections/c/documents/d/updates",
                &c.insert(i, "x"),
            );
        }
        let mut ws = connect(&h, "/v1/collections/c/subscribe?after=1");
        let mut next = || loop {
            match ws.read().unwrap() {
                Ws::Text(t) => return json_of(t.as_bytes()),
                _ => continue,
            }
        };
        assert_eq!(next()["seq"], 2);
        assert_eq!(next()["seq"], 3);
        assert_eq!(next(), json!({"up_to_date": 3}));
        post(
            &h,
            "/v1/collections/c/documents/d/updates",
            &c.insert(0, "live"),
        );
        let live = next();
        assert_eq!(
            (live["seq"].as_u64(), live["kind"].as_str()),
            (Some(4), Some("update"))
        );
        assert_eq!(next(), json!({"up_to_date": 4}));

        let mut ws = connect(&h, "/v1/collections/c/subscribe?after=99");
        let reset = loop {
            match ws.read().unwrap() {
                Ws::Text(t) => break json_of(t.as_bytes()),
                _ => continue,
            }
        };
        assert_eq!(error_code(&reset), "reset");
    }

    /// `doc=` narrows the subscribe socket to one document: stored and live
    /// changes of other documents never reach it, and a bad id is refused.
    #[test]
    fn subscribe_with_doc_streams_only_that_document() {
        let h = Harness::start(BackendKind::Sqlite, |_| {});
        let (d, e) = (Client::new(1), Client::new(2));
        post(
            &h,
            "/v1/collections/c/documents/d/updates",
            &d.insert(0, "d"),
        );
        post(
            &h,
            "/v1/collections/c/documents/e/updates",
            &e.insert(0, "e"),
        );
        post(
            &h,
            "/v1/collections/c/documents/d/updates",
            &d.insert(0, "d"),
        );
        let mut ws = connect(&h, "/v1/collections/c/subscribe?after=0&doc=e");
        let mut next = || loop {
            match ws.read().unwrap() {
                Ws::Text(t) => return json_of(t.as_bytes()),
                _ => continue,
            }
        };
        let stored = next();
        assert_eq!(
            (stored["seq"].as_u64(), stored["doc"].as_str()),
            (Some(2), Some("e"))
        );
        assert_eq!(next(), json!({"up_to_date": 3}));
        post(
            &h,
            "/v1/collections/c/documents/d/updates",
            &d.insert(0, "d"),
        );
        post(
            &h,
            "/v1/collections/c/documents/e/updates",
            &e.insert(0, "e"),
        );
        let live = next();
        assert_eq!(
            (live["seq"].as_u64(), live["doc"].as_str()),
            (Some(5), Some("e"))
        );
        assert_eq!(next(), json!({"up_to_date": 5}));
        let (status, body) = get(&h, "/v1/collections/c/subscribe?doc=bad%00id");
        assert_eq!(status, 400, "{body}");
    }

    /// Reads y-websocket messages until one matches `pick`.
    fn next_sync<T>(
        ws: &mut tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
        mut pick: impl FnMut(yrs::sync::SyncMessage) -> Option<T>,
    ) -> T {
        use yrs::sync::Message;
        loop {
            if let Ws::Binary(b) = ws.read().unwrap() {
                if let Message::Sync(sync) = Message::decode_v1(&b).unwrap() {
                    if let Some(found) = pick(sync) {
                        return found;
                    }
                }
            }
        }
    }

    /// A joiner of a document larger than one frame gets its whole state
    /// (sent as one message in 64 KiB fragments of shared bytes), and a
    /// connection is not sent back its own updates: after pushing, the next
    /// update it receives is somebody else's.
    #[test]
    fn y_websocket_large_join_and_no_echo_of_own_updates() {
        use yrs::sync::{Message, SyncMessage};
        let h = Harness::start(BackendKind::Sqlite, |_| {});
        let author = Client::new(1);
        let big = "0123456789abcdef".repeat(20_000); // 320 KB: five fragments
        post(
            &h,
            "/v1/collections/c/documents/d/updates",
            &author.insert(0, &big),
        );

        let mut joiner = connect(&h, "/yws/c/d");
        let empty = Message::Sync(SyncMessage::SyncStep1(yrs::StateVector::default())).encode_v1();
        joiner.send(Ws::Binary(empty.into())).unwrap();
        let state = next_sync(&mut joiner, |m| match m {
            SyncMessage::SyncStep2(state) => Some(state),
            _ => None,
        });
        let browser = Client::new(2);
        browser.apply(&state);
        assert_eq!(browser.string(), big, "the whole state, in one message");

        // The joiner types; then another client pushes over HTTP. The next
        // update the joiner receives must be the HTTP one, not its own echo.
        let own = browser.insert(0, "mine ");
        joiner
            .send(Ws::Binary(
                Message::Sync(SyncMessage::Update(own.clone()))
                    .encode_v1()
                    .into(),
            ))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, bytes, _) = call(ureq::get(&h.url("/v1/collections/c/documents/d")), None);
            if text_of(&bytes).starts_with("mine ") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the joiner's update was not stored"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        author.apply(&own);
        let other = author.insert(0, ">> ");
        post(&h, "/v1/collections/c/documents/d/updates", &other);
        let received = next_sync(&mut joiner, |m| match m {
            SyncMessage::Update(update) => Some(update),
            _ => None,
        });
        assert_eq!(
            received, other,
            "the first update sent back is not the joiner's own"
        );
    }

    /// The y-websocket protocol: the server opens with sync step 1, answers a
    /// client's step 1 with what it lacks, pushes the client's updates
    /// through the engine, and forwards updates pushed over HTTP.
    #[test]
    fn y_websocket_syncs_both_ways_through_the_engine() {
        use yrs::sync::{Message, SyncMessage};
        let h = Harness::start(BackendKind::Sqlite, |_| {});
        let server_side = Client::new(1);
        post(
            &h,
            "/v1/collections/c/documents/d/updates",
            &server_side.insert(0, "from http "),
        );
        let mut ws = connect(&h, "/yws/c/d");
        let opening = loop {
            match ws.read().unwrap() {
                Ws::Binary(b) => break Message::decode_v1(&b).unwrap(),
                _ => continue,
            }
        };
        assert!(matches!(opening, Message::Sync(SyncMessage::SyncStep1(_))));
        let browser = Client::new(2);
        let step1 = Message::Sync(SyncMessage::SyncStep1(
            browser.doc.transact().state_vector(),
        ))
        .encode_v1();
        ws.send(Ws::Binary(step1.into())).unwrap();
        let diff = loop {
            match ws.read().unwrap() {
                Ws::Binary(b) => {
                    if let Message::Sync(SyncMessage::SyncStep2(diff)) =
                        Message::decode_v1(&b).unwrap()
                    {
                        break diff;
                    }
                }
                _ => continue,
            }
        };
        browser.apply(&diff);
        assert_eq!(browser.string(), "from http ");
        let typed = browser.insert(10, "and ws");
        ws.send(Ws::Binary(
            Message::Sync(SyncMessage::Update(typed)).encode_v1().into(),
        ))
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, bytes, _) = call(ureq::get(&h.url("/v1/collections/c/documents/d")), None);
            if text_of(&bytes) == "from http and ws" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the ws update never reached the engine"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // An update pushed over HTTP reaches the socket.
        server_side.apply(&browser.insert(0, ""));
        let more = server_side.insert(0, ">> ");
        post(&h, "/v1/collections/c/documents/d/updates", &more);
        let deadline = Instant::now() + Duration::from_secs(10);
        while browser.string() != ">> from http and ws" {
            assert!(
                Instant::now() < deadline,
                "http update never reached the socket"
            );
            if let Ws::Binary(b) = ws.read().unwrap() {
                if let Message::Sync(SyncMessage::Update(u)) = Message::decode_v1(&b).unwrap() {
                    browser.apply(&u);
                }
            }
        }
    }
}

mod schema {
    use super::*;

    fn push_at(h: &Harness, doc: &str, update: &[u8], version: u32) -> (u16, Value) {
        let (status, bytes, _) = call(
            ureq::post(&h.url(&format!("/v1/collections/c/documents/{doc}/updates")))
                .set("x-schema-version", &version.to_string()),
            Some(update),
        );
        (status, json_of(&bytes))
    }

    /// Every answer says the schema version of what it hands out, and pushes
    /// at versions that do not fit get 409 with the versions in the body: a
    /// client must be able to tell "upgrade yourself" from "wait for the
    /// server" without parsing a message.
    #[test]
    fn versions_in_answers_and_409_for_versions_that_do_not_fit() {
        let h = Harness::start_with(BackendKind::Sqlite, notes::migrations_to_v2(), |_| {});
        let old = notes::doc_from(&[0, 0], 0x4000_0001);
        let (status, body) = push_at(&h, "d", &notes::v1_edit(&old, Some("t"), None, ""), 1);
        assert_eq!(
            (status, body["seq"].as_u64(), body["head"].as_u64()),
            (200, Some(1), Some(2))
        );
        let (status, page) = get(&h, "/v1/collections/c/changes?after=0");
        assert_eq!(status, 200);
        assert_eq!(page["schema_version"], json!(2));
        let versions: Vec<u64> = page["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["schema_version"].as_u64().unwrap())
            .collect();
        assert_eq!(versions, vec![1, 2], "the client's change, then the step's");
        assert_eq!(page["changes"][1]["origin"], json!("migration"));

        let response = ureq::get(&h.url("/v1/collections/c/documents/d"))
            .call()
            .unwrap();
        assert_eq!(response.header("x-seqsync-schema-version"), Some("2"));
        let mut state = Vec::new();
        std::io::Read::read_to_end(&mut response.into_reader(), &mut state).unwrap();
        let view = notes::view(&notes::doc_from(&state, 9));
        assert_eq!((view.name.as_deref(), view.title), (Some("t"), None));
        let sv = yrs::Doc::new().transact().state_vector().encode_v1();
        let response = ureq::post(&h.url("/v1/collections/c/documents/d/recover"))
            .send_bytes(&sv)
            .unwrap();
        assert_eq!(response.header("x-seqsync-schema-version"), Some("2"));

        let (status, body) = push_at(&h, "d", &notes::v1_edit(&old, None, Some("x"), ""), 3);
        assert_eq!(status, 409, "{body}");
        assert_eq!(error_code(&body), "schema_too_new");
        assert_eq!(
            (body["client"].clone(), body["collection"].clone()),
            (json!(3), json!(2))
        );
        let (status, body) = push_at(&h, "d", &notes::v1_edit(&old, None, Some("x"), ""), 0);
        assert_eq!(status, 409, "{body}");
        assert_eq!(error_code(&body), "schema_too_old");
        assert_eq!(body["min_supported"], json!(1));

        // A browser-style push under a reserved client id is refused.
        let low = notes::doc_from(&[0, 0], 77);
        let (status, bytes, _) = call(
            ureq::post(&h.url("/v1/collections/c/documents/d/updates")),
            Some(&notes::v1_edit(&low, None, Some("x"), "")),
        );
        let body = json_of(&bytes);
        assert_eq!(
            (status, error_code(&body)),
            (400, "reserved_client_id"),
            "{body}"
        );
    }

    /// `/yws?schema=N` pushes at N, and a version that does not fit closes
    /// the socket with a reason that says so (a y-websocket client would
    /// otherwise reconnect forever without showing why).
    #[test]
    fn y_websocket_schema_query() {
        use tungstenite::Message as Ws;
        use yrs::sync::{Message, SyncMessage};
        let h = Harness::start_with(BackendKind::Sqlite, notes::migrations_to_v2(), |config| {
            config.engine.schema.min_supported_version = 2;
        });
        let (mut ws, _) =
            tungstenite::connect(format!("ws://{}/yws/c/d?schema=1", h.addr())).unwrap();
        let reason = loop {
            match ws.read() {
                Ok(Ws::Close(Some(frame))) => break frame.reason.to_string(),
                Ok(_) => continue,
                Err(e) => panic!("closed without a reason: {e}"),
            }
        };
        assert!(reason.starts_with("schema_too_old"), "{reason}");
        assert!(reason.contains('2'), "{reason}");

        let (status, body) = get(&h, "/yws/c/d?schema=two");
        assert_eq!(
            (status, error_code(&body)),
            (400, "invalid_query"),
            "{body}"
        );

        let (mut ws, _) =
            tungstenite::connect(format!("ws://{}/yws/c/d?schema=2", h.addr())).unwrap();
        let client = notes::doc_from(&[0, 0], 0x4000_0002);
        let update = notes::v1_edit(&client, None, Some("from ws"), "");
        ws.send(Ws::Binary(
            Message::Sync(SyncMessage::Update(update))
                .encode_v1()
                .into(),
        ))
        .unwrap();
        let started = Instant::now();
        loop {
            let (_, page) = get(&h, "/v1/collections/c/changes?after=0");
            if let Some(change) = page["changes"].get(0) {
                assert_eq!(change["schema_version"], json!(2));
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the push never landed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

mod digests {
    use super::*;

    /// The digest route, the digest header of document reads and the
    /// checksum at the cursor of `changes` pages agree with each other and
    /// with what a client computes from the bytes it received.
    #[test]
    fn digest_route_header_and_cursor_checksum() {
        let h = Harness::start(BackendKind::Sqlite, |_| {});
        let c = Client::new(1);
        for i in 0..3 {
            post(
                &h,
                "/v1/collections/c/documents/d/updates",
                &c.insert(i, "x"),
            );
        }
        let (status, digest) = get(&h, "/v1/collections/c/digest");
        assert_eq!(status, 200, "{digest}");
        assert_eq!(digest["head"], json!(3));
        let log_checksum = digest["log_checksum"].as_str().unwrap().to_owned();
        assert_eq!(log_checksum.len(), 16);
        assert!(digest["state_digest"].as_str().is_some());
        let (_, page) = get(&h, "/v1/collections/c/changes?after=0");
        assert_eq!(
            page["cursor_checksum"].as_str(),
            Some(log_checksum.as_str())
        );
        let (_, first) = get(&h, "/v1/collections/c/changes?after=0&limit=1");
        assert_ne!(
            first["cursor_checksum"].as_str(),
            Some(log_checksum.as_str())
        );

        let response = ureq::get(&h.url("/v1/collections/c/documents/d"))
            .call()
            .unwrap();
        let header = response.header("x-seqsync-digest").unwrap().to_owned();
        let mut state = Vec::new();
        std::io::Read::read_to_end(&mut response.into_reader(), &mut state).unwrap();
        assert_eq!(
            Some(header),
            seqsync_engine::digest_of_update(&state).map(|d| d.to_hex())
        );
        let (status, body) = get(&h, "/v1/collections/none/digest");
        assert_eq!((status, error_code(&body)), (404, "collection_not_found"));
    }
}
