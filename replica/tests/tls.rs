//! The replica against a host server that serves only TLS
//! (`[server] tls_cert_path` / `tls_key_path`), with a certificate this
//! test generates: HTTPS for pages and recovery, WSS for pushes and the
//! live stream. A client that does not trust the certificate, or speaks
//! plain HTTP to it, gets `Unavailable`, never data.

use std::sync::Arc;

use seqsync_engine::{BackendKind, Durability, EngineConfig, Storage};
use seqsync_replica::{HttpTransport, RemoteEvent, Replica, Transport, TransportError};
use yrs::{GetString, Text, Transact, WriteTxn};

struct TlsServer {
    server: Option<seqsync_server::ServerThread>,
    cert_pem: String,
    _dir: tempfile::TempDir,
}

impl TlsServer {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert_pem = certified.cert.pem();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, &cert_pem).unwrap();
        std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
        let mut config = seqsync_server::HostConfig::default();
        config.engine.storage.backend = BackendKind::Sqlite;
        config.engine.storage.path = dir.path().join("data");
        config.server.listen = "127.0.0.1:0".to_owned();
        config.server.tls_cert_path = cert_path;
        config.server.tls_key_path = key_path;
        let server = seqsync_server::ServerThread::start(config).unwrap();
        Self {
            server: Some(server),
            cert_pem,
            _dir: dir,
        }
    }

    fn port(&self) -> u16 {
        self.server.as_ref().unwrap().addr.port()
    }

    fn transport(&self) -> HttpTransport {
        HttpTransport::with_tls_roots(
            format!("https://localhost:{}", self.port()),
            None,
            10_000,
            self.cert_pem.as_bytes(),
        )
        .unwrap()
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        // `stop` blocks on its own runtime: not on a tokio worker thread.
        if let Some(server) = self.server.take() {
            let _ = std::thread::spawn(move || server.stop()).join();
        }
    }
}

fn local_store(dir: &std::path::Path) -> Arc<dyn Storage> {
    let mut config = EngineConfig::default();
    config.storage.backend = BackendKind::Sqlite;
    config.storage.path = dir.to_owned();
    config.storage.durability = Durability::Immediate;
    seqsync_adapters::open_storage(&config.storage).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sync_through_a_server_that_speaks_only_tls() {
    // Why: the replica used to rewrite https:// to wss:// without any TLS
    // in its build, so it could not reach a server behind TLS at all.
    let server = TlsServer::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Replica::open(local_store(dir_a.path()), server.transport(), "a").unwrap();
    let b = Replica::open(local_store(dir_b.path()), server.transport(), "b").unwrap();
    a.edit("notes", "n1", |txn| {
        let text = txn.get_or_insert_text("t");
        text.insert(txn, 0, "over tls");
    })
    .await
    .unwrap();
    a.sync("notes").await.unwrap();
    b.sync("notes").await.unwrap();
    let doc = yrs::Doc::new();
    let text = doc.get_or_insert_text("t");
    doc.transact_mut()
        .apply_update(
            yrs::updates::decoder::Decode::decode_v1(&b.document("notes", "n1").unwrap()).unwrap(),
        )
        .unwrap();
    assert_eq!(text.get_string(&doc.transact()), "over tls");
    // The live stream over WSS sees the next push.
    let mut live = server
        .transport()
        .subscribe("notes", 0, None)
        .await
        .unwrap();
    let pushed = server
        .transport()
        .push_batch(
            "notes",
            vec![("n2".to_owned(), {
                let doc = yrs::Doc::with_client_id(1 << 22);
                let text = doc.get_or_insert_text("t");
                let mut txn = doc.transact_mut();
                text.insert(&mut txn, 0, "live");
                txn.encode_update_v1()
            })],
            "c",
            None,
        )
        .await
        .unwrap();
    let seq = pushed.seqs[0].unwrap();
    loop {
        match live.recv().await.unwrap().unwrap() {
            RemoteEvent::Change(change) if change.seq == seq => {
                assert_eq!(change.doc.as_str(), "n2");
                break;
            }
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_certificate_gets_nothing() {
    // Why: TLS that accepts any certificate is no TLS; and plain HTTP to a
    // TLS port must fail cleanly, not hang.
    let server = TlsServer::start();
    let stranger =
        HttpTransport::with_timeout(format!("https://localhost:{}", server.port()), None, 5_000);
    let refused = stranger.changes("notes", 0, 10, None).await;
    assert!(
        matches!(refused, Err(TransportError::Unavailable(_))),
        "{refused:?}"
    );
    let refused = stranger.push_batch("notes", vec![], "x", None).await;
    assert!(
        matches!(refused, Err(TransportError::Unavailable(_))),
        "{refused:?}"
    );
    let plain =
        HttpTransport::with_timeout(format!("http://localhost:{}", server.port()), None, 5_000);
    let refused = plain.changes("notes", 0, 10, None).await;
    assert!(
        matches!(refused, Err(TransportError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(matches!(
        HttpTransport::with_tls_roots("https://localhost:1", None, 1000, b"not pem"),
        Err(seqsync_replica::TlsSetupError::BadRoots(_))
    ));
}
