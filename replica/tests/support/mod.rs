//! The test harness shared by the replica's suites: a server reachable in
//! process or over HTTP, either transport behind one type, local stores.
#![allow(dead_code)]

use std::sync::Arc;

use seqsync_actors::Engine;
use seqsync_engine::{BackendKind, Durability, EngineConfig, Epoch, Seq, Storage};
use seqsync_replica::{
    EngineTransport, HttpTransport, RemotePage, RemotePush, RemoteRecovery, Transport,
    TransportError,
};

pub fn local_store(kind: BackendKind, dir: &std::path::Path) -> Arc<dyn Storage> {
    let mut config = EngineConfig::default();
    config.storage.backend = kind;
    config.storage.path = dir.to_owned();
    config.storage.durability = Durability::Immediate;
    seqsync_adapters::open_storage(&config.storage).unwrap()
}

/// How the replicas reach the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// An `Engine` handle in this process.
    Engine,
    /// The host server over HTTP on loopback.
    Http,
}

/// A server (memory backend) reachable both ways: it derefs to its
/// `Engine` for the test's own checks; `transport()` is for replicas.
pub struct Server {
    pub engine: Engine,
    pub http: Option<seqsync_server::ServerThread>,
}

impl std::ops::Deref for Server {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

pub fn server(via: Via, tune: impl FnOnce(&mut EngineConfig)) -> Server {
    server_with(via, seqsync_engine::Migrations::new(), tune)
}

pub fn server_with(
    via: Via,
    migrations: seqsync_engine::Migrations,
    tune: impl FnOnce(&mut EngineConfig),
) -> Server {
    let mut config = EngineConfig::default();
    config.storage.backend = BackendKind::Memory;
    tune(&mut config);
    match via {
        Via::Engine => Server {
            engine: Engine::builder(config)
                .storage_opener(seqsync_adapters::open_storage)
                .migrations(migrations)
                .open()
                .unwrap(),
            http: None,
        },
        Via::Http => {
            let mut host = seqsync_server::HostConfig {
                engine: config,
                ..Default::default()
            };
            host.server.listen = "127.0.0.1:0".to_owned();
            let thread =
                seqsync_server::ServerThread::start_with_migrations(host, migrations).unwrap();
            Server {
                engine: thread.engine().clone(),
                http: Some(thread),
            }
        }
    }
}

impl Server {
    pub fn transport(&self) -> AnyTransport {
        match &self.http {
            Some(thread) => {
                AnyTransport::Http(HttpTransport::new(format!("http://{}", thread.addr), None))
            }
            None => AnyTransport::Engine(EngineTransport::new(self.engine.clone())),
        }
    }

    pub async fn stop(mut self) {
        match self.http.take() {
            Some(thread) => tokio::task::spawn_blocking(move || thread.stop())
                .await
                .unwrap(),
            None => self.engine.shutdown().await,
        }
    }
}

/// Either transport, behind one type.
#[derive(Clone)]
pub enum AnyTransport {
    /// In-process.
    Engine(EngineTransport),
    /// HTTP.
    Http(HttpTransport),
}

impl Transport for AnyTransport {
    async fn changes(
        &self,
        c: &str,
        after: Seq,
        limit: u64,
        epoch: Option<Epoch>,
    ) -> Result<RemotePage, TransportError> {
        match self {
            AnyTransport::Engine(t) => t.changes(c, after, limit, epoch).await,
            AnyTransport::Http(t) => t.changes(c, after, limit, epoch).await,
        }
    }
    async fn changes_verified(
        &self,
        c: &str,
        after: Seq,
        limit: u64,
        epoch: Option<Epoch>,
        checksum: Option<u64>,
    ) -> Result<RemotePage, TransportError> {
        match self {
            AnyTransport::Engine(t) => t.changes_verified(c, after, limit, epoch, checksum).await,
            AnyTransport::Http(t) => t.changes_verified(c, after, limit, epoch, checksum).await,
        }
    }
    async fn push_batch(
        &self,
        c: &str,
        updates: Vec<(String, Vec<u8>)>,
        origin: &str,
        schema_version: Option<u32>,
    ) -> Result<RemotePush, TransportError> {
        match self {
            AnyTransport::Engine(t) => t.push_batch(c, updates, origin, schema_version).await,
            AnyTransport::Http(t) => t.push_batch(c, updates, origin, schema_version).await,
        }
    }
    async fn recover_collection(
        &self,
        c: &str,
        svs: std::collections::HashMap<String, Vec<u8>>,
    ) -> Result<RemoteRecovery, TransportError> {
        match self {
            AnyTransport::Engine(t) => t.recover_collection(c, svs).await,
            AnyTransport::Http(t) => t.recover_collection(c, svs).await,
        }
    }
    async fn state_vector(&self, c: &str, d: &str) -> Result<Option<Vec<u8>>, TransportError> {
        match self {
            AnyTransport::Engine(t) => t.state_vector(c, d).await,
            AnyTransport::Http(t) => t.state_vector(c, d).await,
        }
    }
    async fn subscribe(
        &self,
        c: &str,
        after: Seq,
        epoch: Option<Epoch>,
    ) -> Result<seqsync_replica::RemoteStream, TransportError> {
        match self {
            AnyTransport::Engine(t) => t.subscribe(c, after, epoch).await,
            AnyTransport::Http(t) => t.subscribe(c, after, epoch).await,
        }
    }
    async fn ack(&self, c: &str, peer: &str, seq: Seq) -> Result<(), TransportError> {
        match self {
            AnyTransport::Engine(t) => t.ack(c, peer, seq).await,
            AnyTransport::Http(t) => t.ack(c, peer, seq).await,
        }
    }
}
