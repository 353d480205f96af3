//! Helpers shared by the engine tests: engines on every backend, simulated
//! Yjs clients, and a seeded random generator whose seed every test prints.

use std::sync::Arc;

pub use crate::postgres as pg;

use seqsync_actors::Engine;
use seqsync_engine::{BackendKind, Durability, EngineConfig, Seq, Storage};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, TextRef, Transact, Update};

/// A two-thread tokio runtime, for tests that are not `#[tokio::test]`
/// (they start child processes or mix blocking and async steps).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Test clients' ids start here, above the ids reserved for migrations.
pub const USER_CLIENT_BASE: u64 = 1 << 20;

/// An engine on `kind` in a fresh temporary directory (kept alive by the
/// returned guard).
pub struct TestEngine {
    pub engine: Engine,
    pub dir: tempfile::TempDir,
    pub kind: BackendKind,
}

pub fn config(kind: BackendKind, dir: &std::path::Path) -> EngineConfig {
    let mut config = EngineConfig::default();
    config.storage.backend = kind;
    config.storage.path = dir.join("data");
    config.storage.durability = Durability::Immediate;
    if kind == BackendKind::Postgres {
        config.storage.url = pg_url(dir);
    }
    config
}

/// A PostgreSQL case cannot run here (the binaries are missing; the
/// cluster helper said so loudly): the caller returns.
pub fn skip(kind: BackendKind) -> bool {
    kind == BackendKind::Postgres && pg::PgCluster::shared().is_none()
}

/// The database standing for directory `dir`: a fresh one of the test
/// cluster, its URL kept in the directory so a reopen finds the same data.
fn pg_url(dir: &std::path::Path) -> String {
    let file = dir.join("pg-url");
    if let Ok(url) = std::fs::read_to_string(&file) {
        return url;
    }
    let cluster = pg::PgCluster::shared().expect("PostgreSQL is installed (see common::skip)");
    let url = cluster.fresh_database();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&file, &url).unwrap();
    url
}

/// Opens `config`'s store on a thread of its own: a backend with a blocking
/// client (postgres) must not be opened on an async test's thread.
pub fn open_store(config: &seqsync_engine::StorageConfig) -> Arc<dyn Storage> {
    std::thread::scope(|s| {
        s.spawn(|| seqsync_adapters::open_storage(config).unwrap())
            .join()
            .unwrap()
    })
}

/// `Engine::builder` with the backends of `seqsync-adapters` (the runtime
/// knows none itself).
pub fn open_engine(config: EngineConfig) -> Result<Engine, seqsync_engine::OpenError> {
    Engine::builder(config)
        .storage_opener(seqsync_adapters::open_storage)
        .open()
}

pub fn open(kind: BackendKind) -> TestEngine {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(config(kind, dir.path())).unwrap();
    TestEngine { engine, dir, kind }
}

pub fn open_with_storage(kind: BackendKind, storage: Arc<dyn Storage>) -> TestEngine {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open_with_storage(config(kind, dir.path()), storage).unwrap();
    TestEngine { engine, dir, kind }
}

/// A client replica: a Yjs doc with one text, as a browser would hold.
pub struct Client {
    pub doc: Doc,
    pub text: TextRef,
    pub cursor: Seq,
}

impl Client {
    /// Client `n`, under the yrs client id `USER_CLIENT_BASE + n` (ids below
    /// 65,536 are reserved for migration steps and refused in pushes).
    pub fn new(n: u64) -> Self {
        // UTF-16 offsets, as JavaScript clients use: random edits may land
        // next to non-ASCII characters.
        let doc = Doc::with_options(yrs::Options {
            client_id: yrs::block::ClientID::new(USER_CLIENT_BASE + n),
            offset_kind: yrs::OffsetKind::Utf16,
            ..yrs::Options::default()
        });
        let text = doc.get_or_insert_text("content");
        Self {
            doc,
            text,
            cursor: 0,
        }
    }

    /// Inserts `s` at `index` and returns the update this produced.
    pub fn insert(&self, index: u32, s: &str) -> Vec<u8> {
        self.change(|txn, text| text.insert(txn, index, s))
    }

    /// Removes `len` characters at `index` and returns the update.
    pub fn remove(&self, index: u32, len: u32) -> Vec<u8> {
        self.change(|txn, text| text.remove_range(txn, index, len))
    }

    /// Runs `f` in one transaction and returns that transaction's update,
    /// as a Yjs client's `update` event would carry it.
    fn change(&self, f: impl FnOnce(&mut yrs::TransactionMut<'_>, &TextRef)) -> Vec<u8> {
        let mut txn = self.doc.transact_mut();
        f(&mut txn, &self.text);
        txn.encode_update_v1()
    }

    /// A random edit (insert or delete) and its update.
    pub fn random_edit(&self, rng: &mut Rng) -> Vec<u8> {
        let len = self.len();
        if len > 0 && rng.below(3) == 0 {
            let at = rng.below(len as u64) as u32;
            let n = 1 + rng.below(((len - at) as u64).min(4)) as u32;
            self.remove(at, n)
        } else {
            let at = rng.below(len as u64 + 1) as u32;
            let word = ["a", "bc", "def", " ", "xyz!", "é"][rng.below(6) as usize];
            self.insert(at, word)
        }
    }

    pub fn apply(&self, update: &[u8]) {
        let update = Update::decode_v1(update).unwrap();
        self.doc.transact_mut().apply_update(update).unwrap();
    }

    pub fn text(&self) -> String {
        self.text.get_string(&self.doc.transact())
    }

    #[allow(clippy::len_without_is_empty)] // a text's length, not a collection's
    pub fn len(&self) -> u32 {
        self.text.len(&self.doc.transact())
    }

    pub fn state_vector(&self) -> StateVector {
        self.doc.transact().state_vector()
    }
}

/// The text of a Yjs v1 update applied to an empty doc.
pub fn text_of(update: &[u8]) -> String {
    let client = Client::new(999_999);
    client.apply(update);
    client.text()
}

/// xorshift64*: small, deterministic, replayable from its seed.
pub struct Rng(u64);

impl Rng {
    /// Seed from `TEST_SEED` if set, else from the clock. Prints the seed so
    /// a failure can be replayed with `TEST_SEED=<seed>`.
    pub fn from_env(test: &str) -> Self {
        let seed = std::env::var("TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        println!("{test}: seed {seed} (replay with TEST_SEED={seed})");
        Rng(seed.max(1))
    }

    /// A generator replaying `seed` exactly (0 is mapped to 1).
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    /// The state, to hand a sub-generator its own seed.
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next())
    }

    #[allow(clippy::should_implement_trait)] // an endless generator, not an iterator
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}
