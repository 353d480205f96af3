//! What only the PostgreSQL backend has: several nodes on one database,
//! each collection written by the node holding its lease, fenced by a
//! token. The conformance suite covers the rest. Each test opens its nodes
//! as two `PostgresStorage`s on one fresh database of the throwaway cluster
//! (`support/postgres.rs`), and reaches into the tables with a plain client
//! where it plays a paused node or an operator.

use seqsync_testkit::postgres as pg;

use seqsync_adapters::{PostgresStorage, POSTGRES_SCHEMA_VERSION};
use seqsync_engine::{
    BackendKind, Change, ChangeKind, CollectionName, CollectionWrite, DocId, Durability, Epoch,
    PeerId, PeerRecord, Seq, Storage, StorageConfig, StorageError, WriteBase, WriteBatch,
};

fn config(url: &str, node: &str, lease_ttl_ms: u64) -> StorageConfig {
    StorageConfig {
        backend: BackendKind::Postgres,
        url: url.to_owned(),
        node_id: node.to_owned(),
        lease_ttl_ms,
        durability: Durability::Immediate,
        ..StorageConfig::default()
    }
}

fn database() -> Option<String> {
    Some(pg::PgCluster::shared()?.fresh_database())
}

fn coll() -> CollectionName {
    CollectionName::new("notes").unwrap()
}

fn change(seq: Seq) -> Change {
    Change {
        seq,
        doc: DocId::new("d").unwrap(),
        kind: ChangeKind::Update,
        payload: vec![seq as u8; 4],
        schema_version: 1,
        origin: None,
        author: None,
        committed_ms: 0,
        log_checksum: 0,
    }
}

fn write(base: WriteBase, append: Vec<Change>, peers: Vec<PeerRecord>) -> WriteBatch {
    WriteBatch {
        writes: vec![CollectionWrite {
            collection: coll(),
            base,
            append,
            compact: Vec::new(),
            peers,
            raise_schema_version: None,
            append_mode: Default::default(),
        }],
    }
}

fn at(storage: &dyn Storage) -> WriteBase {
    let meta = storage.collection(&coll()).unwrap().unwrap();
    WriteBase::Existing {
        epoch: meta.epoch,
        head: meta.head,
    }
}

fn ack(peer: &str, acked: Seq) -> Vec<PeerRecord> {
    vec![PeerRecord {
        peer: PeerId::new(peer).unwrap(),
        acked,
        last_seen_ms: 1,
    }]
}

fn sql(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).unwrap()
}

/// A first write takes the lease; another node is refused with a typed
/// answer naming the owner, and its refused commit wrote nothing.
#[test]
fn a_second_node_is_refused_while_the_first_holds_the_lease() {
    let Some(url) = database() else { return };
    let a = PostgresStorage::open(&config(&url, "node-a", 60_000)).unwrap();
    let b = PostgresStorage::open(&config(&url, "node-b", 60_000)).unwrap();
    let epoch = Epoch::random().unwrap();
    a.commit(&write(
        WriteBase::Create {
            epoch,
            schema_version: 1,
        },
        vec![change(1)],
        Vec::new(),
    ))
    .unwrap();
    assert_eq!(a.held_leases(), [("notes".to_owned(), 1)]);
    let err = b
        .commit(&write(at(&b), vec![change(2)], Vec::new()))
        .unwrap_err();
    match &err {
        StorageError::NotOwner {
            owner,
            retry_after_ms,
            ..
        } => {
            assert_eq!(owner, "node-a");
            assert!(*retry_after_ms > 50_000, "{err}");
        }
        other => panic!("expected NotOwner, got {other}"),
    }
    assert_eq!(b.collection(&coll()).unwrap().unwrap().head, 1);
    // Reads work from any node.
    assert_eq!(
        b.read_changes(&coll(), 0, 10)
            .unwrap()
            .unwrap()
            .changes
            .len(),
        1
    );
    a.commit(&write(at(&a), vec![change(2)], Vec::new()))
        .unwrap();
}

/// PowerSync's bug, and the reason for the token: a node paused past its
/// lease (here: its expiry moved into the past, as the database's clock
/// sees it) wakes up and commits against the head it knew. Another node
/// took the lease meanwhile with a write that did not move the head (an
/// ack), so only the token tells them apart: the deposed node is refused
/// and steps down, and the lease log shows one owner per token.
#[test]
fn a_deposed_owner_is_refused_even_when_the_head_has_not_moved() {
    let Some(url) = database() else { return };
    let a = PostgresStorage::open(&config(&url, "node-a", 60_000)).unwrap();
    let b = PostgresStorage::open(&config(&url, "node-b", 60_000)).unwrap();
    a.commit(&write(
        WriteBase::Create {
            epoch: Epoch::random().unwrap(),
            schema_version: 1,
        },
        vec![change(1)],
        Vec::new(),
    ))
    .unwrap();
    let base_a = at(&a);
    // node-a is "paused": its lease runs out on the database's clock.
    sql(&url)
        .execute(
            "UPDATE seqsync_collections SET lease_expires = now() - interval '1 second'",
            &[],
        )
        .unwrap();
    b.commit(&write(at(&b), Vec::new(), ack("phone", 1)))
        .unwrap();
    assert_eq!(b.held_leases(), [("notes".to_owned(), 2)]);
    assert_eq!(b.collection(&coll()).unwrap().unwrap().head, 1);

    let err = a
        .commit(&write(base_a, vec![change(2)], Vec::new()))
        .unwrap_err();
    assert!(
        matches!(&err, StorageError::NotOwner { owner, .. } if owner == "node-b"),
        "{err}"
    );
    assert!(a.held_leases().is_empty(), "node-a stepped down");
    assert_eq!(a.collection(&coll()).unwrap().unwrap().head, 1);
    b.commit(&write(at(&b), vec![change(2)], Vec::new()))
        .unwrap();

    let log: Vec<(String, i64)> = sql(&url)
        .query(
            "SELECT owner, token FROM seqsync_lease_log WHERE collection = 'notes' ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        log,
        [("node-a".to_owned(), 1), ("node-b".to_owned(), 2)],
        "one owner per token, tokens growing"
    );
}

/// An idle collection's lease is given back, so another node writes at
/// once instead of waiting for the expiry; so is every lease of a node
/// that shuts down.
#[test]
fn a_released_lease_is_taken_at_once() {
    let Some(url) = database() else { return };
    let a = PostgresStorage::open(&config(&url, "node-a", 60_000)).unwrap();
    let b = PostgresStorage::open(&config(&url, "node-b", 60_000)).unwrap();
    a.commit(&write(
        WriteBase::Create {
            epoch: Epoch::random().unwrap(),
            schema_version: 1,
        },
        vec![change(1)],
        Vec::new(),
    ))
    .unwrap();
    a.release_collection(&coll()).unwrap();
    b.commit(&write(at(&b), vec![change(2)], Vec::new()))
        .unwrap();
    drop(b);
    a.commit(&write(at(&a), vec![change(3)], Vec::new()))
        .unwrap();
    assert_eq!(a.held_leases(), [("notes".to_owned(), 3)]);
}

/// The renewer keeps a lease alive past its ttl while the node lives: with
/// a 600 ms lease, a node that wrote once still owns the collection two
/// seconds later.
#[test]
fn a_held_lease_is_renewed() {
    let Some(url) = database() else { return };
    let a = PostgresStorage::open(&config(&url, "node-a", 600)).unwrap();
    let b = PostgresStorage::open(&config(&url, "node-b", 600)).unwrap();
    a.commit(&write(
        WriteBase::Create {
            epoch: Epoch::random().unwrap(),
            schema_version: 1,
        },
        vec![change(1)],
        Vec::new(),
    ))
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2_000));
    assert!(matches!(
        b.commit(&write(at(&b), vec![change(2)], Vec::new())),
        Err(StorageError::NotOwner { .. })
    ));
    a.commit(&write(at(&a), vec![change(2)], Vec::new()))
        .unwrap();
}

/// The blocking client must never run on an async thread (it would stall
/// the executor, or panic inside tokio): a call from one is a typed error.
#[test]
fn calls_from_an_async_thread_are_refused() {
    let Some(url) = database() else { return };
    let storage = PostgresStorage::open(&config(&url, "node-a", 5_000)).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = runtime
        .block_on(async { storage.collection(&coll()) })
        .unwrap_err();
    assert!(err.to_string().contains("async runtime thread"), "{err}");
    assert!(storage.collection(&coll()).unwrap().is_none());
}

/// A database whose seqsync schema is newer than this build is refused
/// with a typed error, not written to.
#[test]
fn a_newer_schema_is_refused() {
    let Some(url) = database() else { return };
    drop(PostgresStorage::open(&config(&url, "node-a", 5_000)).unwrap());
    sql(&url)
        .execute(
            "INSERT INTO seqsync_schema_migrations (version, description) VALUES ($1, 'future')",
            &[&(POSTGRES_SCHEMA_VERSION + 1)],
        )
        .unwrap();
    let err = PostgresStorage::open(&config(&url, "node-a", 5_000))
        .err()
        .unwrap();
    assert!(
        matches!(err, StorageError::UnsupportedFormat { .. }),
        "{err}"
    );
}

/// A database URL carries a password; no error shows it.
#[test]
fn the_password_is_never_in_an_error() {
    let err = PostgresStorage::open(&config(
        "postgres://seqsync:hunter2@127.0.0.1:1/nowhere",
        "node-a",
        5_000,
    ))
    .err()
    .unwrap();
    let message = err.to_string();
    assert!(!message.contains("hunter2"), "{message}");
    assert!(message.contains("seqsync:***@127.0.0.1:1"), "{message}");
}

fn named_write(
    name: &str,
    base: WriteBase,
    append: Vec<Change>,
    peers: Vec<PeerRecord>,
) -> CollectionWrite {
    CollectionWrite {
        collection: CollectionName::new(name).unwrap(),
        ..write(base, append, peers).writes.remove(0)
    }
}

fn head_of(storage: &dyn Storage, name: &str) -> (WriteBase, Seq) {
    let meta = storage
        .collection(&CollectionName::new(name).unwrap())
        .unwrap()
        .unwrap();
    let base = WriteBase::Existing {
        epoch: meta.epoch,
        head: meta.head,
    };
    (base, meta.head)
}

/// The engine's writer commits many collections' pushes in one group, and
/// one collection's trouble must fail only that collection's pushes: here a
/// group mixes collections on the batched path (lease held), one whose
/// lease another node holds (the savepoint path, refused `NotOwner`) and
/// one whose base is stale (`Conflict`). `commit_each` commits the others
/// in the same transaction; `commit` (all or nothing) stores none of them.
/// The group also acks one peer twice in one collection, as merged requests
/// do, which PostgreSQL would refuse if the rows were not merged.
#[test]
fn a_refused_collection_leaves_the_rest_of_its_group_committed() {
    let Some(url) = database() else { return };
    let a = PostgresStorage::open(&config(&url, "node-a", 60_000)).unwrap();
    let b = PostgresStorage::open(&config(&url, "node-b", 60_000)).unwrap();
    let create = |name| {
        named_write(
            name,
            WriteBase::Create {
                epoch: Epoch::random().unwrap(),
                schema_version: 1,
            },
            vec![change(1)],
            Vec::new(),
        )
    };
    a.commit(&WriteBatch {
        writes: vec![create("notes"), create("todos"), create("stale")],
    })
    .unwrap();
    b.commit(&WriteBatch {
        writes: vec![create("theirs")],
    })
    .unwrap();

    let group = |stale_head| {
        let (notes, _) = head_of(&a, "notes");
        let (todos, _) = head_of(&a, "todos");
        let (theirs, _) = head_of(&a, "theirs");
        let (stale, _) = head_of(&a, "stale");
        let stale = match stale {
            WriteBase::Existing { epoch, .. } => WriteBase::Existing {
                epoch,
                head: stale_head,
            },
            other => other,
        };
        let mut twice = ack("peer-1", 1);
        twice.extend(ack("peer-1", 2));
        WriteBatch {
            writes: vec![
                named_write("notes", notes, vec![change(2), change(3)], ack("peer-1", 1)),
                named_write("theirs", theirs, vec![change(2)], Vec::new()),
                named_write("todos", todos, vec![change(2)], twice),
                named_write("stale", stale, vec![change(7)], Vec::new()),
            ],
        }
    };

    // All or nothing: the first refusal ends the transaction.
    let err = a.commit(&group(6)).unwrap_err();
    assert!(err.is_refusal(), "{err}");
    for (name, head) in [("notes", 1), ("todos", 1), ("theirs", 1), ("stale", 1)] {
        assert_eq!(head_of(&a, name).1, head, "{name} after a refused commit");
    }

    // Each alone: the refused two are left out, the others commit.
    let results = a.commit_each(&group(6)).unwrap();
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(&results[1], Err(StorageError::NotOwner { owner, .. }) if owner == "node-b"),
        "{:?}",
        results[1]
    );
    assert!(results[2].is_ok(), "{:?}", results[2]);
    assert!(
        matches!(&results[3], Err(StorageError::Conflict { .. })),
        "{:?}",
        results[3]
    );
    for (name, head) in [("notes", 3), ("todos", 2), ("theirs", 1), ("stale", 1)] {
        assert_eq!(head_of(&a, name).1, head, "{name} after commit_each");
    }
    let todos = CollectionName::new("todos").unwrap();
    let peers = a.peers(&todos).unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].acked, 2, "the larger of the two acks is kept");
    let notes = a
        .read_changes(&CollectionName::new("notes").unwrap(), 0, 10)
        .unwrap()
        .unwrap();
    assert_eq!(
        notes.changes.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    // The batched path stores each change's running log checksum, and the
    // head's is the last change's.
    assert!(notes.changes.iter().all(|c| c.log_checksum != 0));
    assert_eq!(notes.meta.log_checksum, notes.changes[2].log_checksum);
}
