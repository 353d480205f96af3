//! What a new user asks a server first (issue 28, item 2): which
//! collections are there, which documents does one hold, and what does a
//! document say, without a Yjs library. Real server on loopback, real
//! SQLite files, documents written by yrs clients over HTTP.

use std::time::{SystemTime, UNIX_EPOCH};

use seqsync_engine::BackendKind;
use seqsync_server::{HostConfig, ServerThread};
use seqsync_testkit::http::{call, json_of};
use serde_json::json;
use yrs::{Map, Text, Transact};

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

fn typed(client: u64, text: &str) -> Vec<u8> {
    // Ids below 65,536 are reserved for migrations.
    let doc = yrs::Doc::with_client_id(client + (1 << 20));
    let t = doc.get_or_insert_text("content");
    let mut txn = doc.transact_mut();
    t.insert(&mut txn, 0, text);
    txn.encode_update_v1()
}

fn push(server: &ServerThread, collection: &str, doc: &str, update: &[u8], token: Option<&str>) {
    let url = format!(
        "http://{}/v1/collections/{collection}/documents/{doc}/updates",
        server.addr
    );
    let mut request = ureq::post(&url);
    if let Some(token) = token {
        request = request.set("authorization", &format!("Bearer {token}"));
    }
    let (status, body, _) = call(request, Some(update));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

fn get(server: &ServerThread, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut request = ureq::get(&format!("http://{}{path}", server.addr));
    if let Some(token) = token {
        request = request.set("authorization", &format!("Bearer {token}"));
    }
    let (status, body, _) = call(request, None);
    (status, json_of(&body))
}

fn token(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn in_an_hour() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600
}

#[test]
fn collections_and_documents_are_listed_page_by_page() {
    // Why: an operator pages through a store of any size; every name must
    // come exactly once, in order, with `next` saying where to go on, and
    // each document with its last seq, size and tombstone.
    let (server, _dir) = start(|_| {});
    for (i, collection) in ["c-a", "c-b", "c-c"].iter().enumerate() {
        push(&server, collection, "d1", &typed(i as u64, "x"), None);
    }
    for doc in ["d2", "d3", "d4"] {
        push(&server, "c-a", doc, &typed(7, doc), None);
    }
    let delete = format!("http://{}/v1/collections/c-a/documents/d3", server.addr);
    assert_eq!(call(ureq::delete(&delete), None).0, 200);

    let (status, first) = get(&server, "/v1/collections?limit=2", None);
    assert_eq!(status, 200, "{first}");
    let names = |page: &serde_json::Value, key: &str, field: &str| -> Vec<String> {
        page[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c[field].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&first, "collections", "name"), ["c-a", "c-b"]);
    assert_eq!(first["next"], json!("c-b"));
    assert_eq!(first["collections"][0]["head"], json!(5));
    let (_, second) = get(&server, "/v1/collections?limit=2&after=c-b", None);
    assert_eq!(names(&second, "collections", "name"), ["c-c"]);
    assert_eq!(second["next"], json!(null));

    let (_, docs) = get(&server, "/v1/collections/c-a/documents?limit=3", None);
    assert_eq!(names(&docs, "documents", "id"), ["d1", "d2", "d3"]);
    assert_eq!(docs["next"], json!("d3"));
    let d3 = &docs["documents"][2];
    assert_eq!(
        (d3["deleted"].clone(), d3["last_seq"].clone()),
        (json!(true), json!(5))
    );
    assert!(docs["documents"][1]["size_bytes"].as_u64().unwrap() > 0);
    assert_eq!(docs["documents"][1]["deleted"], json!(false));
    let (_, rest) = get(
        &server,
        "/v1/collections/c-a/documents?limit=3&after=d3",
        None,
    );
    assert_eq!(names(&rest, "documents", "id"), ["d4"]);
    assert_eq!(rest["next"], json!(null));

    // Typed refusals.
    let (status, body) = get(&server, "/v1/collections/none/documents", None);
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, json!("collection_not_found"))
    );
    let (status, body) = get(&server, "/v1/collections?limit=many", None);
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!("invalid_query"))
    );
    server.stop();
}

#[test]
fn a_token_lists_only_the_collections_it_may_read() {
    // Why: a listing must not tell a tenant's token what other tenants'
    // collections are called, and a request without any credentials must
    // be refused, not answered with an empty list that looks like "none".
    let (server, _dir) = start(|c| c.server.token_secret = SECRET.to_owned());
    let admin = token(json!({"col": "*", "rights": ["read", "write"], "exp": in_an_hour()}));
    for collection in ["tenant-a", "tenant-b"] {
        push(&server, collection, "d", &typed(1, "x"), Some(&admin));
    }
    let only_b = token(json!({"col": "tenant-b", "rights": ["read"], "exp": in_an_hour()}));
    let (status, page) = get(&server, "/v1/collections", Some(&only_b));
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["collections"].as_array().unwrap().len(), 1);
    assert_eq!(page["collections"][0]["name"], json!("tenant-b"));
    let (status, _) = get(&server, "/v1/collections/tenant-a/documents", Some(&only_b));
    assert_eq!(status, 403);
    let (status, page) = get(&server, "/v1/collections", Some(&admin));
    assert_eq!(
        (status, page["collections"].as_array().unwrap().len()),
        (200, 2)
    );
    let (status, _) = get(&server, "/v1/collections", None);
    assert_eq!(status, 401);
    server.stop();
}

#[test]
fn a_document_reads_as_json() {
    // Why: a search indexer or a support tool reads a document's content
    // without a Yjs library; each root must come out as the type the app
    // used, with the cursor it reflects, and a format the server does not
    // have must be refused by name.
    let (server, _dir) = start(|_| {});
    let writer = yrs::Doc::with_client_id(3 << 20);
    let text = writer.get_or_insert_text("content");
    let meta = writer.get_or_insert_map("meta");
    let update = {
        let mut txn = writer.transact_mut();
        text.insert(&mut txn, 0, "what it said on Monday");
        meta.insert(&mut txn, "title", "Notes");
        txn.encode_update_v1()
    };
    push(&server, "notes", "monday", &update, None);
    let (status, answer) = get(
        &server,
        "/v1/collections/notes/documents/monday?format=json",
        None,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["content"],
        json!({"content": "what it said on Monday", "meta": {"title": "Notes"}})
    );
    assert_eq!(answer["types"], json!({"content": "text", "meta": "map"}));
    assert_eq!(answer["cursor"], json!(1));
    let (status, body) = get(
        &server,
        "/v1/collections/notes/documents/monday?format=xml",
        None,
    );
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!("invalid_query"))
    );
    let (status, _) = get(
        &server,
        "/v1/collections/notes/documents/tuesday?format=json",
        None,
    );
    assert_eq!(status, 404);
    server.stop();
}
