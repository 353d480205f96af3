//! A replica whose local store is PostgreSQL, driven from async code.
//!
//! Why it exists: the PostgreSQL backend refuses a call made on an async
//! runtime's thread (a blocking database client there stalls every task of
//! that thread). So this test fails if any async method of the replica
//! touches its store on the caller's executor instead of tokio's blocking
//! pool: editing, syncing both ways, compacting, migrating and a live
//! session all run here on a multi-threaded runtime. (`open` and the
//! methods documented as blocking are called through `spawn_blocking`
//! inside `seqsync_engine::on_blocking_thread`, as an app on an async
//! runtime calls them.)

mod support;

use std::sync::Arc;

use seqsync_actors::PushOptions;
use seqsync_engine::{BackendKind, StorageConfig};
use seqsync_replica::Replica;
use support::{server, Via};
use yrs::updates::decoder::Decode;
use yrs::{GetString, Text, Transact, WriteTxn};

fn apply(doc: &yrs::Doc, update: &[u8]) {
    let update = yrs::Update::decode_v1(update).unwrap();
    doc.transact_mut().apply_update(update).unwrap();
}

fn text_of(update: &[u8]) -> String {
    let doc = yrs::Doc::new();
    apply(&doc, update);
    let text = doc.get_or_insert_text("content");
    let out = text.get_string(&doc.transact());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_on_postgres_never_touches_its_store_on_the_executor() {
    let Some(cluster) = seqsync_testkit::postgres::PgCluster::shared() else {
        return; // PgCluster::shared said loudly why
    };
    let url = cluster.fresh_database();
    let store = tokio::task::spawn_blocking(move || {
        let config = StorageConfig {
            backend: BackendKind::Postgres,
            url,
            ..StorageConfig::default()
        };
        seqsync_engine::on_blocking_thread(|| seqsync_adapters::open_storage(&config).unwrap())
    })
    .await
    .unwrap();
    let srv = server(Via::Http, |_| {});
    let transport = srv.transport();
    let replica = Arc::new(
        tokio::task::spawn_blocking(move || {
            seqsync_engine::on_blocking_thread(|| Replica::open(store, transport, "pg-phone"))
        })
        .await
        .unwrap()
        .unwrap(),
    );

    // Local edits, pushed.
    for word in ["local ", "edits "] {
        replica
            .edit("notes", "a", |txn| {
                let text = txn.get_or_insert_text("content");
                let len = text.len(txn);
                text.insert(txn, len, word);
            })
            .await
            .unwrap();
    }
    replica.sync("notes").await.unwrap();
    let served = srv.document("notes", "a").await.unwrap();
    assert_eq!(text_of(&served.update), "local edits ");

    // Someone else's edit, pulled.
    let other = yrs::Doc::with_client_id(1 << 21);
    apply(&other, &served.update);
    let update = {
        let text = other.get_or_insert_text("content");
        let mut txn = other.transact_mut();
        text.insert(&mut txn, 0, "remote ");
        txn.encode_update_v1()
    };
    srv.push("notes", "a", update, PushOptions::default())
        .await
        .unwrap();
    replica.sync("notes").await.unwrap();
    replica.compact("notes").await.unwrap();
    replica.migrate_local("notes").await.unwrap();

    // A live session: an edit made during it reaches the server.
    let follow = replica.follow("notes").await.unwrap();
    replica
        .edit("notes", "b", |txn| {
            txn.get_or_insert_text("content").insert(txn, 0, "live");
        })
        .await
        .unwrap();
    let report = follow.stop().await.unwrap();
    assert!(report.pushed >= 1, "{report:?}");

    let local = {
        let replica = Arc::clone(&replica);
        tokio::task::spawn_blocking(move || {
            seqsync_engine::on_blocking_thread(|| replica.document("notes", "a").unwrap())
        })
        .await
        .unwrap()
    };
    assert_eq!(text_of(&local), "remote local edits ");
    let served = srv.document("notes", "b").await.unwrap();
    assert_eq!(text_of(&served.update), "live");
    srv.stop().await;
}
