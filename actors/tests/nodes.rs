//! Two engines ("nodes") on one PostgreSQL database, in one process: a
//! subscriber on node B sees every change committed through node A, in seq
//! order, with no gap or duplicate at the seam between what it read from
//! storage and what came live; and node A taking writes after B wrote
//! first waits for B's lease, then continues the log without a gap. Real
//! throwaway PostgreSQL cluster (`adapters/tests/support/postgres.rs`).

use seqsync_testkit::harness as common;

use std::time::Duration;

use common::{Client, USER_CLIENT_BASE};
use futures::StreamExt;
use seqsync_actors::{Engine, PushOptions, StreamEvent};
use seqsync_engine::{BackendKind, EngineConfig};

fn node(url: &str, name: &str) -> Engine {
    let mut config = EngineConfig::default();
    config.storage.backend = BackendKind::Postgres;
    config.storage.url = url.to_owned();
    config.storage.node_id = name.to_owned();
    config.storage.lease_ttl_ms = 1_000;
    config.actors.idle_unload_secs = 1;
    common::open_engine(config).unwrap()
}

/// A subscriber on B, started before and during A's writes, receives seqs
/// 1..=n exactly once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_one_node_sees_every_commit_of_another() {
    let Some(cluster) = common::pg::PgCluster::shared() else {
        return;
    };
    let url = cluster.fresh_database();
    let a = node(&url, "node-a");
    let b = node(&url, "node-b");
    let writer = Client::new(USER_CLIENT_BASE);
    for i in 0..10 {
        a.push("notes", "d", writer.insert(i, "x"), PushOptions::default())
            .await
            .unwrap();
    }
    let mut stream = b.subscribe("notes", 0, None).unwrap();
    let pusher = {
        let a = a.clone();
        tokio::spawn(async move {
            for i in 10..60 {
                a.push("notes", "d", writer.insert(i, "y"), PushOptions::default())
                    .await
                    .unwrap();
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }
        })
    };
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 60 {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(StreamEvent::Change(change)))) => seen.push(change.seq),
            Ok(Some(Ok(StreamEvent::UpToDate { .. }))) => {}
            Ok(Some(Err(err))) => panic!("stream failed: {err}"),
            Ok(None) => panic!("stream ended"),
            Err(_) => panic!("only {} of 60 changes arrived: {seen:?}", seen.len()),
        }
    }
    pusher.await.unwrap();
    assert_eq!(
        seen,
        (1..=60).collect::<Vec<_>>(),
        "every seq once, in order"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// A reader node keeps up with the writer node's commits by reading only
/// the new changes and handing them to its subscribers live: its
/// subscriber is never closed and sent back to storage (which is what
/// made an edit reach another node 25× slower than its own), and every
/// seq still arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_node_hands_another_nodes_commits_to_its_subscribers_live() {
    let Some(cluster) = common::pg::PgCluster::shared() else {
        return;
    };
    let url = cluster.fresh_database();
    let a = node(&url, "node-a");
    let b = node(&url, "node-b");
    let writer = Client::new(USER_CLIENT_BASE);
    a.push("notes", "d", writer.insert(0, "x"), PushOptions::default())
        .await
        .unwrap();
    // B has the collection and the document loaded, and a subscriber that
    // is reading (a stream registers live once it has read storage).
    b.document("notes", "d").await.unwrap();
    let mut stream = b.subscribe("notes", 0, None).unwrap();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(event) = stream.next().await {
            match event {
                Ok(StreamEvent::Change(change)) => {
                    if seen_tx.send(change.seq).is_err() {
                        return;
                    }
                }
                Ok(StreamEvent::UpToDate { .. }) => {}
                Err(err) => panic!("stream failed: {err}"),
            }
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut seen = vec![tokio::time::timeout_at(deadline, seen_rx.recv())
        .await
        .expect("the stored change arrives")
        .unwrap()];
    let before = b.live_deliveries();
    for i in 1..40 {
        a.push("notes", "d", writer.insert(i, "y"), PushOptions::default())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while seen.len() < 40 {
        match tokio::time::timeout_at(deadline, seen_rx.recv()).await {
            Ok(Some(seq)) => seen.push(seq),
            Ok(None) => panic!("stream ended"),
            Err(_) => panic!("only {} of 40 changes arrived: {seen:?}", seen.len()),
        }
    }
    reader.abort();
    assert_eq!(
        seen,
        (1..=40).collect::<Vec<_>>(),
        "every seq once, in order"
    );
    let live = b.live_deliveries() - before;
    assert!(
        live > 0,
        "B's subscriber got none of A's commits live: it was sent back to storage"
    );
    // B's loaded document kept up too: served from memory, it is A's.
    let served = b.document("notes", "d").await.unwrap();
    assert_eq!(served.cursor, 40);
    assert_eq!(common::text_of(&served.update), writer.text());
    a.shutdown().await;
    b.shutdown().await;
}

/// B writes first and so owns the collection; A's writes are refused with
/// `NotOwner` until B's actor goes idle and gives the lease back, then
/// land at the next seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_moves_when_the_owner_goes_idle() {
    let Some(cluster) = common::pg::PgCluster::shared() else {
        return;
    };
    let url = cluster.fresh_database();
    let a = node(&url, "node-a");
    let b = node(&url, "node-b");
    let client = Client::new(USER_CLIENT_BASE + 1);
    b.push("notes", "d", client.insert(0, "b"), PushOptions::default())
        .await
        .unwrap();
    let first = a
        .push("notes", "d", client.insert(1, "a"), PushOptions::default())
        .await
        .unwrap_err();
    assert!(
        first.to_string().contains("owned by node node-b"),
        "{first}"
    );
    let mut landed = None;
    for _ in 0..100 {
        match a
            .push("notes", "d", client.insert(1, "a"), PushOptions::default())
            .await
        {
            Ok(outcome) => {
                landed = Some(outcome);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let landed = landed.expect("the lease never moved");
    assert_eq!(landed.seq, Some(2), "the log continues without a gap");
    a.shutdown().await;
    b.shutdown().await;
}
