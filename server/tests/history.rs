//! "What did this document say on Monday, who changed it, and can we get it
//! back?" (issue 28, item 1): the document as of a seq, its history with
//! each change's origin, a typed 410 where compaction folded the history,
//! and restoring a version as a forward edit. Real server on loopback, real
//! SQLite files, edits from yrs clients over HTTP.

use seqsync_engine::BackendKind;
use seqsync_server::{HostConfig, ServerThread};
use seqsync_testkit::http::{call, json_of};
use serde_json::json;
use yrs::updates::decoder::Decode;
use yrs::{GetString, ReadTxn, Text, Transact};

fn start() -> (ServerThread, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = HostConfig::default();
    config.engine.storage.backend = BackendKind::Sqlite;
    config.engine.storage.path = dir.path().join("data");
    config.server.listen = "127.0.0.1:0".to_owned();
    (ServerThread::start(config).unwrap(), dir)
}

/// An editor typing into one document, pushing each edit over HTTP as
/// peer `peer`.
struct Editor {
    doc: yrs::Doc,
    peer: &'static str,
}

impl Editor {
    fn new(client: u64, peer: &'static str) -> Self {
        Self {
            doc: yrs::Doc::with_client_id(client << 20),
            peer,
        }
    }

    /// Replaces the whole text with `content`; returns the change's seq.
    fn write(&self, server: &ServerThread, content: &str) -> u64 {
        let text = self.doc.get_or_insert_text("content");
        let update = {
            let mut txn = self.doc.transact_mut();
            let len = text.len(&txn);
            text.remove_range(&mut txn, 0, len);
            text.insert(&mut txn, 0, content);
            txn.encode_update_v1()
        };
        let url = format!(
            "http://{}/v1/collections/notes/documents/d/updates",
            server.addr
        );
        let (status, body, _) = call(ureq::post(&url).set("x-peer-id", self.peer), Some(&update));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        json_of(&body)["seq"].as_u64().unwrap()
    }
}

fn get(server: &ServerThread, path: &str) -> (u16, serde_json::Value, Option<String>) {
    let response = match ureq::get(&format!("http://{}{path}", server.addr)).call() {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let status = response.status();
    let version = response.header("x-seqsync-version-seq").map(str::to_owned);
    let body = json_of(response.into_string().unwrap().as_bytes());
    (status, body, version)
}

fn content_at(server: &ServerThread, at: Option<u64>) -> String {
    let path = match at {
        Some(at) => format!("/v1/collections/notes/documents/d?format=json&at={at}"),
        None => "/v1/collections/notes/documents/d?format=json".to_owned(),
    };
    let (status, body, _) = get(server, &path);
    assert_eq!(status, 200, "{body}");
    body["content"]["content"].as_str().unwrap().to_owned()
}

#[test]
fn a_document_reads_as_it_was_at_any_seq_with_its_history() {
    // Why: support's first question is what a document said at a given
    // moment and who changed it; every seq in the log must read back as
    // exactly the content then, naming the version served.
    let (server, _dir) = start();
    let ann = Editor::new(1, "ann-laptop");
    let bob = Editor::new(2, "bob-phone");
    let monday = ann.write(&server, "Monday: milk");
    bob.doc
        .transact_mut()
        .apply_update(
            yrs::Update::decode_v1(
                &ann.doc
                    .transact()
                    .encode_state_as_update_v1(&yrs::StateVector::default()),
            )
            .unwrap(),
        )
        .unwrap();
    let tuesday = bob.write(&server, "Tuesday: milk, bread");
    assert_eq!(content_at(&server, Some(monday)), "Monday: milk");
    assert_eq!(content_at(&server, Some(tuesday)), "Tuesday: milk, bread");
    assert_eq!(content_at(&server, None), "Tuesday: milk, bread");
    // An edit of another document between: the version served is the
    // document's latest change at or before the seq asked for.
    let other = format!(
        "http://{}/v1/collections/notes/documents/other/updates",
        server.addr
    );
    let filler = {
        let doc = yrs::Doc::with_client_id(9 << 20);
        let t = doc.get_or_insert_text("content");
        let mut txn = doc.transact_mut();
        t.insert(&mut txn, 0, "x");
        txn.encode_update_v1()
    };
    assert_eq!(call(ureq::post(&other), Some(&filler)).0, 200);
    let (status, _, version) = get(
        &server,
        &format!(
            "/v1/collections/notes/documents/d?format=json&at={}",
            tuesday + 1
        ),
    );
    assert_eq!(
        (status, version.as_deref()),
        (200, Some(&*tuesday.to_string()))
    );

    let (status, history, _) = get(&server, "/v1/collections/notes/documents/d/history");
    assert_eq!(status, 200, "{history}");
    assert_eq!(
        history["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (
                c["seq"].as_u64().unwrap(),
                c["origin"].as_str().unwrap().to_owned()
            ))
            .collect::<Vec<_>>(),
        [
            (monday, "ann-laptop".to_owned()),
            (tuesday, "bob-phone".to_owned())
        ]
    );
    assert_eq!(history["has_more"], json!(false));
    let (_, first_page, _) = get(&server, "/v1/collections/notes/documents/d/history?limit=1");
    assert_eq!(first_page["has_more"], json!(true));

    // Before the document existed: not found; a bad seq: a typed 400.
    let (status, _, _) = get(&server, "/v1/collections/notes/documents/other?at=1");
    assert_eq!(status, 404);
    let (status, body, _) = get(&server, "/v1/collections/notes/documents/d?at=yesterday");
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!("invalid_query"))
    );
    server.stop();
}

#[test]
fn a_version_folded_by_compaction_is_a_typed_410_naming_the_earliest_seq() {
    // Why: once compaction replaced a document's history by a snapshot,
    // an earlier version cannot be rebuilt; the answer must say so and say
    // from which seq the document is readable, never serve a later state
    // as if it were the one asked for.
    let (server, _dir) = start();
    let ann = Editor::new(1, "ann");
    let first = ann.write(&server, "one");
    ann.write(&server, "two");
    let third = ann.write(&server, "three");
    let compact = format!("http://{}/v1/collections/notes/compact", server.addr);
    let (status, body, _) = call(ureq::post(&compact), Some(b""));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, body, _) = get(
        &server,
        &format!("/v1/collections/notes/documents/d?at={first}"),
    );
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["error"]["code"], json!("history_compacted"));
    assert_eq!(body["earliest_seq"], json!(third));
    assert_eq!(content_at(&server, Some(third)), "three");
    server.stop();
}

#[test]
fn a_restore_is_a_forward_edit_that_brings_the_version_back() {
    // Why: "can we get it back?" must not rewrite history: the restore is
    // one more change that every client receives, after which the content
    // equals the version's, and restoring what is already there is a no-op.
    let (server, _dir) = start();
    let ann = Editor::new(1, "ann");
    let monday = ann.write(&server, "Monday: milk");
    let tuesday = ann.write(&server, "Tuesday: milk, bread, eggs");
    let restore = format!(
        "http://{}/v1/collections/notes/documents/d/restore",
        server.addr
    );
    let (status, body, _) = call(
        ureq::post(&restore).set("content-type", "application/json"),
        Some(json!({ "seq": monday }).to_string().as_bytes()),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer = json_of(&body);
    assert_eq!(answer["restored_from"], json!(monday));
    assert_eq!(answer["seq"], json!(tuesday + 1));
    assert_eq!(content_at(&server, None), "Monday: milk");
    // The history keeps Tuesday, and the restore after it.
    assert_eq!(
        content_at(&server, Some(tuesday)),
        "Tuesday: milk, bread, eggs"
    );
    // The writer's next edit merges with the restore like any edit.
    ann.doc
        .transact_mut()
        .apply_update(
            yrs::Update::decode_v1(&{
                let url = format!("http://{}/v1/collections/notes/documents/d", server.addr);
                call(ureq::get(&url), None).1
            })
            .unwrap(),
        )
        .unwrap();
    assert_eq!(
        ann.doc
            .get_or_insert_text("content")
            .get_string(&ann.doc.transact()),
        "Monday: milk"
    );
    // Nothing to restore: no edit.
    let (status, body, _) = call(
        ureq::post(&restore),
        Some(json!({ "seq": monday }).to_string().as_bytes()),
    );
    assert_eq!((status, json_of(&body)["seq"].clone()), (200, json!(null)));
    let (status, body, _) = call(ureq::post(&restore), Some(b"{\"sequence\": 1}"));
    assert_eq!(
        (status, json_of(&body)["error"]["code"].clone()),
        (400, json!("invalid_body"))
    );
    server.stop();
}

#[test]
fn the_history_names_who_pushed_each_change_and_when() {
    // Why: "who changed it?" needs an answer a client cannot forge: the
    // subject of the signed token a push, a restore or a delete came with
    // is recorded with the change (a static token and an unsigned client
    // leave it empty), and every change has the time it was accepted.
    const SECRET: &str = "a-token-secret-for-the-history-test";
    let dir = tempfile::tempdir().unwrap();
    let mut config = HostConfig::default();
    config.engine.storage.backend = BackendKind::Sqlite;
    config.engine.storage.path = dir.path().join("data");
    config.server.listen = "127.0.0.1:0".to_owned();
    config.server.token_secret = SECRET.to_owned();
    config.server.write_token = "static-write-token".to_owned();
    let server = ServerThread::start(config).unwrap();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token_of = |sub: &str| {
        let bearer = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"col": "notes", "rights": ["write", "read", "delete"], "exp": exp, "sub": sub}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        format!("Bearer {bearer}")
    };
    let started_ms = seqsync_engine::now_ms();
    let url = |path: &str| format!("http://{}/v1/collections/notes{path}", server.addr);
    let client = yrs::Doc::with_client_id(7 << 20);
    let text = client.get_or_insert_text("content");
    let edit = |s: &str| {
        let mut txn = client.transact_mut();
        let len = text.len(&txn);
        text.insert(&mut txn, len, s);
        txn.encode_update_v1()
    };
    let push = |auth: &str, update: Vec<u8>| {
        let (status, body, _) = call(
            ureq::post(&url("/documents/d/updates")).set("authorization", auth),
            Some(&update),
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        json_of(&body)["seq"].as_u64().unwrap()
    };
    let by_ann = push(&token_of("user-ann"), edit("hello"));
    let by_static = push("Bearer static-write-token", edit(" world"));
    let (status, body, _) = call(
        ureq::post(&url("/documents/d/restore")).set("authorization", &token_of("user-bob")),
        Some(json!({ "seq": by_ann }).to_string().as_bytes()),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let restored = json_of(&body)["seq"].as_u64().unwrap();
    // Read before the delete: a deleted document's history before its
    // tombstone is compacted away.
    let read_history = || {
        let (status, body, _) = call(
            ureq::get(&url("/documents/d/history")).set("authorization", &token_of("auditor")),
            None,
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        json_of(&body)["changes"].as_array().unwrap().clone()
    };
    let entries = read_history();
    let finished_ms = seqsync_engine::now_ms();
    let who: Vec<(u64, serde_json::Value)> = entries
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap(), e["author"].clone()))
        .collect();
    assert_eq!(
        who,
        vec![
            (by_ann, json!("user-ann")),
            (by_static, json!(null)),
            (restored, json!("user-bob")),
        ]
    );
    let mut last_ms = 0;
    for entry in &entries {
        let at_ms = entry["committed_ms"]
            .as_u64()
            .expect("a time for every change");
        assert!((started_ms..=finished_ms).contains(&at_ms), "{entry}");
        assert!(at_ms >= last_ms, "times follow the log: {entry}");
        last_ms = at_ms;
    }
    // A delete names who deleted.
    let (status, body, _) = call(
        ureq::delete(&url("/documents/d")).set("authorization", &token_of("user-cy")),
        None,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let deleted = json_of(&body)["seq"].as_u64().unwrap();
    let tombstone = read_history()
        .into_iter()
        .find(|e| e["seq"] == json!(deleted))
        .expect("the tombstone is in the history");
    assert_eq!(tombstone["kind"], json!("delete"));
    assert_eq!(tombstone["author"], json!("user-cy"));
    assert!(tombstone["committed_ms"].as_u64().unwrap() >= last_ms);
    server.stop();
}

#[test]
fn a_document_reads_as_it_was_at_a_moment() {
    // Why: support asks "what did it say on Monday at nine", not "at seq
    // 4182": `?at_ms=` serves the version of the document's latest change
    // accepted by then, exactly as `?at=` that seq would.
    let (server, _dir) = start();
    let ann = Editor::new(1, "ann");
    let first = ann.write(&server, "first draft");
    std::thread::sleep(std::time::Duration::from_millis(30));
    let second = ann.write(&server, "second draft");
    let (status, history, _) = get(&server, "/v1/collections/notes/documents/d/history");
    assert_eq!(status, 200, "{history}");
    let times: Vec<u64> = history["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["committed_ms"].as_u64().unwrap())
        .collect();
    assert!(times[1] > times[0], "{times:?}");
    let at_ms = |ms: u64| {
        get(
            &server,
            &format!("/v1/collections/notes/documents/d?format=json&at_ms={ms}"),
        )
    };
    // Between the two edits: the first draft, named by its seq.
    let (status, body, version) = at_ms(times[0] + (times[1] - times[0]) / 2);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["content"]["content"], json!("first draft"));
    assert_eq!(version, Some(first.to_string()));
    // At the second edit's moment, and later: the second draft.
    for ms in [times[1], times[1] + 60_000] {
        let (status, body, version) = at_ms(ms);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["content"]["content"], json!("second draft"));
        assert_eq!(version, Some(second.to_string()));
    }
    // Before the document existed: not found, not an empty document.
    let (status, body, _) = at_ms(times[0] - 1);
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, json!("document_not_found"))
    );
    // A seq and a moment together is a question with two answers.
    let (status, body, _) = get(&server, "/v1/collections/notes/documents/d?at=1&at_ms=1");
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!("invalid_query"))
    );
    // Once compaction folded the first draft, that moment is a typed 410.
    let compact = format!("http://{}/v1/collections/notes/compact", server.addr);
    let (status, _, _) = call(ureq::post(&compact), Some(b""));
    assert_eq!(status, 200);
    let (status, body, _) = at_ms(times[0]);
    assert_eq!(
        (
            status,
            body["error"]["code"].clone(),
            body["earliest_seq"].clone()
        ),
        (410, json!("history_compacted"), json!(second))
    );
    server.stop();
}

#[test]
fn a_named_version_stays_readable_exactly_through_compaction() {
    // Why: "the contract as signed" must read back exactly after the
    // document moved on and compacted, while everything else compacts as
    // usual; once the version is deleted, compaction may fold it.
    let (server, _dir) = start();
    let ann = Editor::new(1, "ann");
    ann.write(&server, "draft one");
    let signed = ann.write(&server, "as signed");
    let url = |path: &str| {
        format!(
            "http://{}/v1/collections/notes/documents/d{path}",
            server.addr
        )
    };
    let (status, body, _) = call(
        ureq::post(&url("/versions")),
        Some(json!({"name": "as signed"}).to_string().as_bytes()),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let version = json_of(&body);
    assert_eq!(version["seq"], json!(signed));
    assert_eq!(version["name"], json!("as signed"));
    let between = ann.write(&server, "amended");
    ann.write(&server, "amended twice");
    let compact = format!("http://{}/v1/collections/notes/compact", server.addr);
    let (status, body, _) = call(ureq::post(&compact), Some(b""));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(json_of(&body)["changes_removed"].as_u64().unwrap() >= 3);
    // The version reads back exactly, by name and by seq.
    let (status, body, version_seq) = get(
        &server,
        "/v1/collections/notes/documents/d?format=json&version=as%20signed",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["content"]["content"], json!("as signed"));
    assert_eq!(version_seq, Some(signed.to_string()));
    assert_eq!(content_at(&server, Some(signed)), "as signed");
    assert_eq!(content_at(&server, None), "amended twice");
    // Between the version and the compacted head: folded, a typed 410.
    let (status, body, _) = get(
        &server,
        &format!("/v1/collections/notes/documents/d?at={between}"),
    );
    assert_eq!(status, 410, "{body}");
    // Listed; a name that is not there is a 404; too many pins is typed.
    let (status, list, _) = get(&server, "/v1/collections/notes/documents/d/versions");
    assert_eq!(status, 200);
    assert_eq!(list["versions"].as_array().unwrap().len(), 1);
    let (status, body, _) = get(&server, "/v1/collections/notes/documents/d?version=nope");
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, json!("not_found"))
    );
    let (status, body, _) = call(ureq::post(&url("/versions")), Some(b"{\"nom\": 1}"));
    assert_eq!(
        (status, json_of(&body)["error"]["code"].clone()),
        (400, json!("invalid_body"))
    );
    // Deleted, the version may be folded by the next compaction.
    let (status, body, _) = call(ureq::delete(&url("/versions/as%20signed")), None);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = call(ureq::delete(&url("/versions/as%20signed")), None);
    assert_eq!(status, 404);
    ann.write(&server, "amended three times");
    let (status, _, _) = call(ureq::post(&compact), Some(b""));
    assert_eq!(status, 200);
    let (status, body, _) = get(
        &server,
        &format!("/v1/collections/notes/documents/d?at={signed}"),
    );
    assert_eq!(status, 410, "{body}");
    server.stop();
}
