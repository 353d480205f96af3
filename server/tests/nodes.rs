//! Several host servers on one PostgreSQL database (`docs/POSTGRES.md`):
//! the first node to write a collection owns it; a write sent to another
//! node is answered with a 307 to the owner's advertised URL (and followed
//! there, it lands); reads work on every node; and when the owner stops,
//! its lease is given back and another node takes the collection over,
//! continuing the log without a gap. Real servers on loopback, a real
//! throwaway PostgreSQL cluster (`adapters/tests/support/postgres.rs`).

use seqsync_testkit::postgres as pg;

use seqsync_engine::BackendKind;
use seqsync_server::{HostConfig, ServerThread};
use serde_json::Value;
use yrs::{Text, Transact};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A node on `url`, advertised at its own loopback address.
fn node(url: &str) -> (ServerThread, String) {
    let port = free_port();
    let mut config = HostConfig::default();
    config.engine.storage.backend = BackendKind::Postgres;
    config.engine.storage.url = url.to_owned();
    config.engine.storage.lease_ttl_ms = 2_000;
    config.server.listen = format!("127.0.0.1:{port}");
    config.server.advertise_url = format!("http://127.0.0.1:{port}");
    (
        ServerThread::start(config).unwrap(),
        format!("http://127.0.0.1:{port}"),
    )
}

fn update(client: u64, text: &str) -> Vec<u8> {
    let doc = yrs::Doc::with_client_id(client);
    let t = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    t.insert(&mut txn, 0, text);
    txn.encode_update_v1()
}

/// A POST that does not follow redirects: (status, location, body).
fn push(base: &str, body: &[u8]) -> (u16, Option<String>, Value) {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let url = format!("{base}/v1/collections/notes/documents/d/updates");
    let response = match agent
        .post(&url)
        .set("content-type", "application/octet-stream")
        .send_bytes(body)
    {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{url}: {e}"),
    };
    let status = response.status();
    let location = response.header("location").map(str::to_owned);
    let body = response.into_string().unwrap_or_default();
    (
        status,
        location,
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

fn changes(base: &str) -> Vec<u64> {
    let body = ureq::get(&format!(
        "{base}/v1/collections/notes/changes?after=0&limit=100"
    ))
    .call()
    .unwrap()
    .into_string()
    .unwrap();
    let value: Value = serde_json::from_str(&body).unwrap();
    value["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["seq"].as_u64().unwrap())
        .collect()
}

/// The owner takes writes; the other node redirects them there with a 307
/// (nothing written by it), serves reads of what the owner wrote, and takes
/// the collection over once the owner has stopped, without a gap.
#[test]
fn a_write_to_a_non_owner_is_redirected_and_the_log_survives_the_owner() {
    let Some(cluster) = pg::PgCluster::shared() else {
        return;
    };
    let url = cluster.fresh_database();
    let (a, a_url) = node(&url);
    let (b, b_url) = node(&url);

    let (status, _, body) = push(&a_url, &update(1 << 20, "one "));
    assert_eq!(status, 200, "{body}");

    let (status, location, _) = push(&b_url, &update(2 << 20, "two "));
    assert_eq!(status, 307);
    let location = location.unwrap();
    assert_eq!(
        location,
        format!("{a_url}/v1/collections/notes/documents/d/updates")
    );
    assert_eq!(changes(&b_url), [1], "the non-owner wrote nothing");
    // The client follows the redirect: the write lands at the owner.
    let agent = ureq::agent();
    let landed = agent
        .post(&location)
        .set("content-type", "application/octet-stream")
        .send_bytes(&update(2 << 20, "two "))
        .unwrap();
    assert_eq!(landed.status(), 200);
    assert_eq!(
        changes(&b_url),
        [1, 2],
        "reads on any node see the owner's log"
    );

    a.stop();
    // The stopped owner gave its lease back: the other node writes now
    // (a first attempt may find its cached view of the log behind, and
    // asks to be retried).
    let mut status = 0;
    for _ in 0..5 {
        (status, _, _) = push(&b_url, &update(3 << 20, "three "));
        if status == 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(status, 200);
    assert_eq!(changes(&b_url), [1, 2, 3], "gap-free across the takeover");
    b.stop();
}

/// A y-websocket client connected to a node that does not own the
/// collection still writes: the node pushes its updates through the owner,
/// and the resulting commit comes back live to a second client in the same
/// room on that node (through the commit watcher).
#[test]
fn a_yws_client_on_a_non_owner_writes_through_the_owner() {
    use tungstenite::Message as Ws;
    use yrs::sync::{Message, SyncMessage};
    use yrs::updates::decoder::Decode;
    use yrs::updates::encoder::Encode;
    let Some(cluster) = pg::PgCluster::shared() else {
        return;
    };
    let url = cluster.fresh_database();
    let (a, a_url) = node(&url);
    let (b, b_url) = node(&url);
    let (status, _, _) = push(&a_url, &update(1 << 20, "owned by a "));
    assert_eq!(status, 200);

    let ws_url = format!("{}/yws/notes/d", b_url.replace("http://", "ws://"));
    let (mut writer, _) = tungstenite::connect(&ws_url).unwrap();
    let (mut watcher, _) = tungstenite::connect(&ws_url).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = watcher.get_ref() {
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
    }
    let typed = update(2 << 20, "via b ");
    writer
        .send(Ws::Binary(
            Message::Sync(SyncMessage::Update(typed.clone()))
                .encode_v1()
                .into(),
        ))
        .unwrap();
    // The watcher on node B receives the update once node A committed it.
    let received = loop {
        match watcher.read().expect("the update arrives on node B") {
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
        yrs::GetString::get_string(&doc.get_or_insert_text("t"), &doc.transact()),
        "via b "
    );
    assert_eq!(changes(&a_url), [1, 2], "committed once, by the owner");
    drop((writer, watcher));
    a.stop();
    b.stop();
}
