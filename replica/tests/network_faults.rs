//! The network transport when the network misbehaves: a loopback proxy in
//! front of a real host server cuts an answer in the middle of a page,
//! swallows the answer to a push the server applied, or stalls. Each gives
//! a typed `Unavailable`, leaves the local store as it was (nothing of a
//! cut page written, the outbox intact), and the next sync recovers without
//! losing or doubling anything. Scuttlebutt's stream hung up before
//! everything arrived; a replica must notice and retry, never take half a
//! page for the whole.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use seqsync_actors::PushOptions;
use seqsync_engine::BackendKind;
use seqsync_replica::{HttpTransport, Replica, ReplicaError, SyncOutcome, TransportError};
use support::{local_store, server, Server, Via};
use yrs::{GetString, Text, Transact, WriteTxn};

/// What the proxy does to the traffic, switchable while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Fault {
    /// Forward everything.
    Pass = 0,
    /// Forward the first `CUT_BYTES` bytes of each connection's answers,
    /// then close it.
    CutAnswers = 1,
    /// Forward requests; once a connection has carried a POST, drop what
    /// the server answers and close it (the push was applied, its answer
    /// lost). A sync socket (where pushes go) gets its handshake answer,
    /// then nothing: the proxy closes it a moment after the server's first
    /// frame, once the push sent with the hello is committed.
    DropPostAnswers = 2,
    /// Swallow requests: nothing ever reaches the server or comes back.
    Stall = 3,
}

/// Bytes of answers forwarded before `CutAnswers` closes a connection: the
/// headers and part of a page of 1,000 changes.
const CUT_BYTES: usize = 20_000;

struct Proxy {
    addr: SocketAddr,
    fault: Arc<AtomicU8>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fault = Arc::new(AtomicU8::new(Fault::Pass as u8));
        let shared = Arc::clone(&fault);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let fault = Arc::clone(&shared);
                std::thread::spawn(move || relay(client, upstream, fault));
            }
        });
        Self { addr, fault }
    }

    fn set(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn current(fault: &AtomicU8) -> Fault {
    match fault.load(Ordering::SeqCst) {
        1 => Fault::CutAnswers,
        2 => Fault::DropPostAnswers,
        3 => Fault::Stall,
        _ => Fault::Pass,
    }
}

fn relay(client: TcpStream, upstream: SocketAddr, fault: Arc<AtomicU8>) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let posted = Arc::new(AtomicBool::new(false));
    let socket = Arc::new(AtomicBool::new(false));
    {
        let socket = Arc::clone(&socket);
        let (mut from_client, mut to_server) =
            (client.try_clone().unwrap(), server.try_clone().unwrap());
        let (fault, posted) = (Arc::clone(&fault), Arc::clone(&posted));
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n) = from_client.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if current(&fault) == Fault::Stall {
                    continue;
                }
                if buf[..n].starts_with(b"POST ") {
                    posted.store(true, Ordering::SeqCst);
                }
                let request = &buf[..n];
                let sync_path = request.windows(6).any(|w| w == b"/sync?" || w == b"/sync ");
                if request.starts_with(b"GET ") && sync_path {
                    socket.store(true, Ordering::SeqCst);
                }
                if to_server.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to_server.shutdown(Shutdown::Write);
        });
    }
    let (mut from_server, mut to_client) = (server, client);
    let mut buf = vec![0u8; 64 << 10];
    let mut sent = 0usize;
    let mut handshake_answered = false;
    while let Ok(n) = from_server.read(&mut buf) {
        if n == 0 {
            break;
        }
        if current(&fault) == Fault::DropPostAnswers && socket.load(Ordering::SeqCst) {
            if handshake_answered {
                // The server's first frame: the hello and the push are in;
                // let the push commit, then lose its answer.
                std::thread::sleep(std::time::Duration::from_millis(300));
                break;
            }
            handshake_answered = true;
        }
        match current(&fault) {
            Fault::CutAnswers if sent + n > CUT_BYTES => {
                let _ = to_client.write_all(&buf[..CUT_BYTES.saturating_sub(sent)]);
                break;
            }
            Fault::DropPostAnswers if posted.load(Ordering::SeqCst) => break,
            _ => {}
        }
        if to_client.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n;
    }
    let _ = to_client.shutdown(Shutdown::Both);
    let _ = from_server.shutdown(Shutdown::Both);
}

/// 1,000 changes to document `e` by another client, pushed one change each.
async fn fill(server: &Server) {
    let typist = yrs::Doc::with_client_id(7 << 20);
    let text = typist.get_or_insert_text("t");
    let edits: Vec<(String, Vec<u8>)> = (0..1000)
        .map(|i| {
            let mut txn = typist.transact_mut();
            text.insert(&mut txn, i, "y");
            ("e".to_owned(), txn.encode_update_v1())
        })
        .collect();
    server
        .push_batch("notes", edits, PushOptions::default())
        .await
        .unwrap();
}

fn text_of(update: &[u8]) -> String {
    let doc = yrs::Doc::new();
    doc.transact_mut()
        .apply_update(yrs::updates::decoder::Decode::decode_v1(update).unwrap())
        .unwrap();
    let text = doc.get_or_insert_text("t");
    let out = text.get_string(&doc.transact());
    out
}

async fn type_at_end(replica: &Replica<HttpTransport>, doc: &str, s: &str) {
    replica
        .edit("notes", doc, |txn| {
            let text = txn.get_or_insert_text("t");
            let len = text.len(txn);
            text.insert(txn, len, s);
        })
        .await
        .unwrap();
}

fn unavailable(result: Result<seqsync_replica::SyncReport, ReplicaError>) -> String {
    match result {
        Err(ReplicaError::Transport(TransportError::Unavailable(reason))) => reason,
        other => panic!("expected a typed Unavailable, got {other:?}"),
    }
}

/// Every change is delivered as itself (no snapshot replaces the 1,000).
fn no_compaction(config: &mut seqsync_engine::EngineConfig) {
    config.compaction.max_deltas = u64::MAX / 2;
    config.compaction.max_delta_bytes = u64::MAX / 2;
}

fn http_addr(server: &Server) -> SocketAddr {
    server.http.as_ref().unwrap().addr
}

/// A page cut in the middle (the connection closes with part of the JSON
/// sent): the sync fails typed, nothing of the page is written and the
/// cursor stays; the next sync pulls the whole page and pushes the outbox
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_cut_mid_answer_is_typed_and_the_next_sync_takes_it_whole() {
    let srv = server(Via::Http, no_compaction);
    fill(&srv).await;
    let proxy = Proxy::start(http_addr(&srv));
    let dir = tempfile::tempdir().unwrap();
    let replica = Replica::open(
        local_store(BackendKind::Sqlite, dir.path()),
        HttpTransport::new(proxy.url(), None),
        "phone",
    )
    .unwrap();
    type_at_end(&replica, "d", "mine ").await;

    proxy.set(Fault::CutAnswers);
    let reason = unavailable(replica.sync("notes").await);
    assert!(!reason.is_empty());
    assert_eq!(
        text_of(&replica.document("notes", "e").unwrap()),
        "",
        "nothing of the cut page was written"
    );
    assert_eq!(replica.outbox_len("notes").unwrap(), 1);

    proxy.set(Fault::Pass);
    let report = replica.sync("notes").await.unwrap();
    assert_eq!(
        report.outcome,
        SyncOutcome::Merged {
            pulled: 1000,
            pushed: 1
        }
    );
    assert_eq!(
        report.cursor, 1000,
        "the cursor covers the page, not our own push"
    );
    assert_eq!(
        text_of(&replica.document("notes", "e").unwrap()),
        "y".repeat(1000)
    );
    assert_eq!(
        text_of(&srv.document("notes", "d").await.unwrap().update),
        "mine "
    );
    drop(replica);
    srv.stop().await;
}

/// The server applies a push and its answer is lost on the way back: the
/// sync fails typed and the outbox is kept (the replica cannot know); the
/// next sync sends it again, the server drops what it already has, and the
/// log holds the edit once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_push_answer_is_retried_without_a_duplicate() {
    let srv = server(Via::Http, |_| {});
    let proxy = Proxy::start(http_addr(&srv));
    let dir = tempfile::tempdir().unwrap();
    let replica = Replica::open(
        local_store(BackendKind::Sqlite, dir.path()),
        HttpTransport::new(proxy.url(), None),
        "phone",
    )
    .unwrap();
    type_at_end(&replica, "d", "once ").await;
    proxy.set(Fault::DropPostAnswers);
    unavailable(replica.sync("notes").await);
    assert_eq!(
        replica.outbox_len("notes").unwrap(),
        1,
        "the outbox is kept"
    );
    assert_eq!(srv.changes("notes", 0, 10, None).await.unwrap().head, 1);

    proxy.set(Fault::Pass);
    replica.sync("notes").await.unwrap();
    assert_eq!(replica.outbox_len("notes").unwrap(), 0);
    let page = srv.changes("notes", 0, 10, None).await.unwrap();
    assert_eq!(page.head, 1, "the retried push was not logged again");
    assert_eq!(
        text_of(&srv.document("notes", "d").await.unwrap().update),
        "once "
    );
    assert_eq!(
        replica.sync("notes").await.unwrap().outcome,
        SyncOutcome::NoOp
    );
    drop(replica);
    srv.stop().await;
}

/// A server that accepts the connection and never answers: the request
/// times out (here after 500 ms) with a typed error instead of hanging the
/// app, and the next sync, with the server answering again, recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_times_out_typed_and_the_next_sync_recovers() {
    let srv = server(Via::Http, no_compaction);
    fill(&srv).await;
    let proxy = Proxy::start(http_addr(&srv));
    let dir = tempfile::tempdir().unwrap();
    let replica = Replica::open(
        local_store(BackendKind::Sqlite, dir.path()),
        HttpTransport::with_timeout(proxy.url(), None, 500),
        "phone",
    )
    .unwrap();
    type_at_end(&replica, "d", "waiting ").await;
    proxy.set(Fault::Stall);
    let started = std::time::Instant::now();
    unavailable(replica.sync("notes").await);
    println!("timed out after {:?}", started.elapsed());
    assert_eq!(replica.outbox_len("notes").unwrap(), 1);

    proxy.set(Fault::Pass);
    let report = replica.sync("notes").await.unwrap();
    assert_eq!(
        report.outcome,
        SyncOutcome::Merged {
            pulled: 1000,
            pushed: 1
        }
    );
    drop(replica);
    srv.stop().await;
}
