//! A document stored before pushes were checked for fuzz finding F2 (legacy
//! JSON content, which yrs 0.28 encodes into bytes it cannot decode) must
//! never be served as undecodable bytes: every read of it is refused with a
//! typed error naming the document, its neighbours are served as usual,
//! and the same push today is refused before anything is stored.

use seqsync_testkit::harness as common;

use std::collections::HashMap;

use seqsync_actors::{Engine, PushOptions};
use seqsync_engine::{
    BackendKind, Change, ChangeKind, CollectionName, CollectionWrite, DocId, Epoch, ReadError,
    WriteBase, WriteBatch, WriteError,
};

const F2_WITNESS: &[u8] =
    include_bytes!("../../fuzz/regressions/push_bytes/f2-unencodable-state-utf8");

fn typing_update(text: &str) -> Vec<u8> {
    use yrs::{Text, Transact};
    let doc = yrs::Doc::with_client_id(common::USER_CLIENT_BASE + 5);
    let t = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    t.insert(&mut txn, 0, text);
    txn.encode_update_v1()
}

/// Writes the witness (doc `bad`) and an ordinary edit (doc `good`)
/// straight through the storage trait, as a log from before the check.
fn write_old_log(kind: BackendKind, dir: &std::path::Path) {
    let config = common::config(kind, dir);
    let storage = seqsync_adapters::open_storage(&config.storage).unwrap();
    let change = |seq, doc: &str, payload: Vec<u8>| Change {
        seq,
        doc: DocId::new(doc).unwrap(),
        kind: ChangeKind::Update,
        payload,
        schema_version: 1,
        origin: None,
        author: None,
        committed_ms: 0,
        log_checksum: 0,
    };
    storage
        .commit(&WriteBatch {
            writes: vec![CollectionWrite {
                collection: CollectionName::new("c").unwrap(),
                base: WriteBase::Create {
                    epoch: Epoch::random().unwrap(),
                    schema_version: 1,
                },
                append: vec![
                    change(1, "bad", F2_WITNESS.to_vec()),
                    change(2, "good", typing_update("hello")),
                ],
                compact: vec![],
                peers: vec![],
                raise_schema_version: None,
                append_mode: Default::default(),
            }],
        })
        .unwrap();
}

fn unreadable_names_bad<T: std::fmt::Debug>(result: Result<T, ReadError>) {
    match result {
        Err(ReadError::DocumentUnreadable { doc, reason }) => {
            assert_eq!(doc, "bad");
            assert!(reason.contains("legacy JSON"), "{reason}");
        }
        other => panic!("expected DocumentUnreadable for bad, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_unencodable_document_is_refused_by_name_and_never_served_broken() {
    for kind in [BackendKind::Sqlite, BackendKind::Redb] {
        let dir = tempfile::tempdir().unwrap();
        write_old_log(kind, dir.path());
        let engine = Engine::builder(common::config(kind, dir.path()))
            .storage_opener(seqsync_adapters::open_storage)
            .open()
            .unwrap();
        // Cold (storage) reads, then reads once the actor holds the
        // document (a push to it loads it into the actor).
        for _ in 0..2 {
            unreadable_names_bad(engine.document("c", "bad").await);
            unreadable_names_bad(engine.document_shared("c", "bad").await);
            unreadable_names_bad(engine.recover("c", "bad", &[]).await);
            unreadable_names_bad(engine.recover_collection("c", HashMap::new()).await);
            let good = engine.document("c", "good").await.unwrap();
            assert!(seqsync_engine::decode_update(&good.update).is_ok());
            let _ = engine
                .push("c", "bad", typing_update("x"), PushOptions::default())
                .await;
        }
        // The same bytes pushed today are refused, and nothing is stored.
        let head = engine.changes("c", 0, 0, None).await.unwrap().head;
        let refused = engine
            .push("c", "new", F2_WITNESS.to_vec(), PushOptions::default())
            .await;
        assert!(
            matches!(refused, Err(WriteError::InvalidUpdate { .. })),
            "{refused:?}"
        );
        assert!(matches!(
            engine.document("c", "new").await,
            Err(ReadError::DocumentNotFound { .. })
        ));
        // The push to `bad` above was logged (its content is fine); only
        // the refused push left no trace.
        assert_eq!(engine.changes("c", 0, 0, None).await.unwrap().head, head);
        engine.shutdown().await;
    }
}
