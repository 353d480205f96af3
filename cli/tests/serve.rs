//! The server as operators run it, `seqsync serve`, as a real process on
//! loopback: what it promises across a SIGKILL and against a second process
//! on its data directory. (In-process HTTP behaviour is tested in the
//! server crate; hostile clients in `hostile.rs`.)

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use seqsync_testkit::http::{call, json_of};
use seqsync_testkit::process::spawn_listening;
use yrs::updates::decoder::Decode;
use yrs::{GetString, Text, Transact};

/// A Yjs client editing one text, under yrs client id `2^20 + id` (ids
/// below 65,536 are reserved for migration steps and refused in pushes).
struct Client {
    doc: yrs::Doc,
    text: yrs::TextRef,
}

impl Client {
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
}

/// The text of a document's state.
fn text_of(update: &[u8]) -> String {
    let c = Client::new(999);
    c.doc
        .transact_mut()
        .apply_update(yrs::Update::decode_v1(update).unwrap())
        .unwrap();
    let text = c.text.get_string(&c.doc.transact());
    text
}

/// The real binary, killed with SIGKILL right after acknowledging pushes,
/// restarts with every acknowledged update.
#[test]
fn sigkill_after_acks_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let start = || -> (Child, SocketAddr) {
        spawn_listening(
            Command::new(env!("CARGO_BIN_EXE_seqsync"))
                .arg("serve")
                .env("SEQSYNC_STORAGE_PATH", dir.path().join("data"))
                .env("SEQSYNC_SERVER_LISTEN", "127.0.0.1:0")
                .env("RUST_LOG", "warn")
                .stderr(Stdio::null()),
        )
    };
    let (mut child, addr) = start();
    let url = |path: &str| format!("http://{addr}{path}");
    let c = Client::new(1);
    for i in 0..40 {
        let (status, _, _) = call(
            ureq::post(&url("/v1/collections/k/documents/d/updates")),
            Some(&c.insert(i, "k")),
        );
        assert_eq!(status, 200);
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let (mut child, addr) = start();
    let url = |path: &str| format!("http://{addr}{path}");
    let (status, bytes, _) = call(ureq::get(&url("/v1/collections/k/changes?after=0")), None);
    let page = json_of(&bytes);
    assert_eq!((status, page["head"].as_u64()), (200, Some(40)));
    let (_, state, _) = call(ureq::get(&url("/v1/collections/k/documents/d")), None);
    assert_eq!(text_of(&state), "k".repeat(40));

    // A second process on the same data directory is refused, not let in to
    // interleave seqs with the first.
    let second = Command::new(env!("CARGO_BIN_EXE_seqsync"))
        .arg("serve")
        .env("SEQSYNC_STORAGE_PATH", dir.path().join("data"))
        .env("SEQSYNC_SERVER_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("already open"), "{stderr}");

    child.kill().unwrap();
    child.wait().unwrap();
}
