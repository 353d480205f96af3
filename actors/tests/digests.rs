//! Digests through the engine on every backend: two replicas holding the
//! same documents agree on every document digest and on the collection's
//! state digest whatever their history and compaction; the log checksum at
//! the head survives compaction and is what a `changes` page reports at its
//! cursor; documents with pending structures have no digest.

use seqsync_testkit::harness as common;

use common::{Client, Rng};
use seqsync_actors::{Engine, PushOptions};
use seqsync_engine::{digest_of_update, BackendKind, DocumentDigest, ReadError};

fn opts() -> PushOptions {
    PushOptions::default()
}

async fn log_checksum_at_head(engine: &Engine, c: &str) -> u64 {
    let mut cursor = 0;
    loop {
        let page = engine.changes(c, cursor, 1000, None).await.unwrap();
        cursor = page.cursor;
        if !page.has_more {
            assert_eq!(cursor, page.head);
            return page.cursor_checksum;
        }
    }
}

mod cases {
    use super::*;

    /// The same edits reach two engines, one of them pushed in bigger
    /// batches and compacted: the state digests agree, the document digests
    /// agree with what a client computes from the served bytes, and
    /// compaction changes neither the digests nor the log checksum.
    pub async fn replicas_with_the_same_documents_agree(kind: BackendKind) {
        let mut rng = Rng::from_env("replicas_with_the_same_documents_agree");
        let dir_a = tempfile::tempdir().unwrap();
        let mut config_a = common::config(kind, dir_a.path());
        config_a.compaction.max_deltas = 1_000_000;
        let dir_b = tempfile::tempdir().unwrap();
        let mut config_b = common::config(kind, dir_b.path());
        config_b.compaction.max_deltas = 4;
        config_b.compaction.peer_timeout_secs = 0;
        let a = common::open_engine(config_a).unwrap();
        let b = common::open_engine(config_b).unwrap();
        // One replica per (document, client): a client's updates of one
        // document only go to that document.
        let clients: Vec<Vec<Client>> = (0..4)
            .map(|d| (0..3).map(|c| Client::new(d * 10 + c)).collect())
            .collect();
        let mut pending_b: Vec<(String, Vec<u8>)> = Vec::new();
        for i in 0..60 {
            let d = rng.below(4) as usize;
            let client = &clients[d][rng.below(3) as usize];
            let doc = format!("d{d}");
            let update = client.random_edit(&mut rng);
            a.push("c", &doc, update.clone(), opts()).await.unwrap();
            pending_b.push((doc, update));
            if i % 7 == 6 {
                b.push_batch("c", std::mem::take(&mut pending_b), opts())
                    .await
                    .unwrap();
            }
        }
        if !pending_b.is_empty() {
            b.push_batch("c", pending_b, opts()).await.unwrap();
        }
        let da = a.digest("c").await.unwrap();
        let db = b.digest("c").await.unwrap();
        assert!(da.state_digest.is_some());
        assert_eq!(
            da.state_digest, db.state_digest,
            "same documents, same digest"
        );
        assert_eq!(da.log_checksum, log_checksum_at_head(&a, "c").await);
        for d in 0..4 {
            let doc = format!("d{d}");
            let Ok(state) = a.document("c", &doc).await else {
                continue;
            };
            let digest = a.document_digest("c", &doc).await.unwrap();
            assert_eq!(digest, digest_of_update(&state.update), "{doc}");
            assert_eq!(digest, b.document_digest("c", &doc).await.unwrap(), "{doc}");
        }
        // Compaction replaces history, not state.
        let summary = b.compact("c").await.unwrap();
        let after = b.digest("c").await.unwrap();
        assert_eq!(after.state_digest, db.state_digest);
        assert_eq!((after.head, after.log_checksum), (db.head, db.log_checksum));
        assert_eq!(after.log_checksum, log_checksum_at_head(&b, "c").await);
        // Compaction ran, here or in the background (b compacts after four
        // deltas, so by now it may have covered everything): the log holds
        // fewer changes than were committed.
        let mut retained = 0;
        let mut cursor = 0;
        loop {
            let page = b.changes("c", cursor, 1000, None).await.unwrap();
            retained += page.changes.len() as u64;
            cursor = page.cursor;
            if !page.has_more {
                break;
            }
        }
        assert!(
            retained < db.head,
            "{retained} changes retained of {}; manual run: {summary:?}",
            db.head
        );

        // A change moves the digest; the cached terms follow it.
        let update = clients[0][0].insert(0, "z");
        a.push("c", "d0", update.clone(), opts()).await.unwrap();
        let moved = a.digest("c").await.unwrap();
        assert_ne!(moved.state_digest, da.state_digest);
        assert_ne!(moved.log_checksum, da.log_checksum);
        b.push("c", "d0", update, opts()).await.unwrap();
        assert_eq!(
            b.digest("c").await.unwrap().state_digest,
            moved.state_digest
        );

        // A tombstone has the fixed digest and still counts.
        a.delete("c", "d1").await.ok();
        b.delete("c", "d1").await.ok();
        assert_eq!(
            a.document_digest("c", "d1").await.unwrap(),
            Some(DocumentDigest::tombstone())
        );
        assert_eq!(
            a.digest("c").await.unwrap().state_digest,
            b.digest("c").await.unwrap().state_digest
        );
        assert!(matches!(
            a.digest("nothing").await,
            Err(ReadError::CollectionNotFound { .. })
        ));
        assert!(matches!(
            a.document_digest("c", "none").await,
            Err(ReadError::DocumentNotFound { .. })
        ));
        a.shutdown().await;
        b.shutdown().await;
    }

    /// A document holding pending structures (an update whose predecessor
    /// never arrived) has no digest, and neither has its collection: its
    /// state is not settled.
    pub async fn pending_structures_have_no_digest(kind: BackendKind) {
        let t = common::open(kind);
        let client = Client::new(1);
        let _first = client.insert(0, "a");
        let second = client.insert(1, "b");
        t.engine
            .push("c", "other", Client::new(2).insert(0, "x"), opts())
            .await
            .unwrap();
        t.engine.push("c", "d", second, opts()).await.unwrap();
        assert_eq!(t.engine.document_digest("c", "d").await.unwrap(), None);
        assert_eq!(t.engine.digest("c").await.unwrap().state_digest, None);
        assert!(t
            .engine
            .document_digest("c", "other")
            .await
            .unwrap()
            .is_some());
        t.engine.shutdown().await;
    }
}

macro_rules! suite {
    ($($backend:ident => $kind:expr),* $(,)?) => {$(
        mod $backend {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn replicas_with_the_same_documents_agree() { cases::replicas_with_the_same_documents_agree($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pending_structures_have_no_digest() { cases::pending_structures_have_no_digest($kind).await }
        }
    )*};
}

suite! {
    sqlite => BackendKind::Sqlite,
    redb => BackendKind::Redb,
    memory => BackendKind::Memory,
}
