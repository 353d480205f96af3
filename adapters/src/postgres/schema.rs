//! The table layout and the connections to it: migrations applied in
//! order under an advisory lock (nodes starting together do not race),
//! each in the transaction that records it, and the connection settings
//! every node uses (the writer's ends a transaction left idle past the
//! lease).

use postgres::{Client, NoTls};
use seqsync_engine::{redact_url, Durability, StorageError};

use super::{pg_error, BACKEND};

/// The newest version of the table layout, the last entry of `MIGRATIONS`.
pub const POSTGRES_SCHEMA_VERSION: i32 = 2;

/// The layout, one entry per version: (version, what it does, SQL). Applied
/// in order, each in the transaction that records it.
pub(super) const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "collections with leases, the log, peers, the lease log",
        "CREATE TABLE seqsync_collections (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        epoch BYTEA NOT NULL,
        head BIGINT NOT NULL DEFAULT 0,
        log_checksum BIGINT NOT NULL DEFAULT 0,
        schema_version INTEGER NOT NULL,
        created_ms BIGINT NOT NULL,
        lease_owner TEXT,
        lease_token BIGINT NOT NULL DEFAULT 0,
        lease_expires TIMESTAMPTZ
    );
    CREATE TABLE seqsync_changes (
        cid BIGINT NOT NULL REFERENCES seqsync_collections (id),
        seq BIGINT NOT NULL,
        doc TEXT NOT NULL,
        kind SMALLINT NOT NULL,
        schema_version INTEGER NOT NULL,
        origin TEXT,
        payload BYTEA NOT NULL,
        checksum BIGINT NOT NULL,
        lease_token BIGINT NOT NULL,
        PRIMARY KEY (cid, seq)
    );
    CREATE INDEX seqsync_changes_by_doc ON seqsync_changes (cid, doc, seq);
    -- Yjs updates do not compress: keep large payloads out of line but
    -- uncompressed, so loading a snapshot is a read, not a pglz inflate.
    ALTER TABLE seqsync_changes ALTER COLUMN payload SET STORAGE EXTERNAL;
    CREATE TABLE seqsync_peers (
        cid BIGINT NOT NULL REFERENCES seqsync_collections (id),
        peer TEXT NOT NULL,
        acked BIGINT NOT NULL,
        last_seen_ms BIGINT NOT NULL,
        PRIMARY KEY (cid, peer)
    );
    CREATE TABLE seqsync_lease_log (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        collection TEXT NOT NULL,
        owner TEXT NOT NULL,
        token BIGINT NOT NULL,
        taken_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );",
    ),
    (
        2,
        "who pushed each change (the signed token's subject) and when it was accepted; \
         named versions",
        // Existing changes get NULL and 0: never recorded, never guessed.
        // ADD COLUMN with a constant default rewrites no row.
        "ALTER TABLE seqsync_changes ADD COLUMN author TEXT;
        ALTER TABLE seqsync_changes ADD COLUMN committed_ms BIGINT NOT NULL DEFAULT 0;
        CREATE TABLE seqsync_pins (
            cid BIGINT NOT NULL REFERENCES seqsync_collections (id),
            doc TEXT NOT NULL,
            name TEXT NOT NULL,
            seq BIGINT NOT NULL,
            created_ms BIGINT NOT NULL,
            author TEXT,
            PRIMARY KEY (cid, doc, name)
        );",
    ),
];

/// The advisory lock key that serialises schema migrations across nodes
/// ("seqsync" in ASCII).
pub(super) const MIGRATION_LOCK_KEY: i64 = 0x0073_6571_7379_6e63;

pub(super) fn connect(url: &str, durability: Durability) -> Result<Client, StorageError> {
    let mut client = Client::connect(url, NoTls).map_err(|e| {
        StorageError::backend(
            BACKEND,
            "connecting",
            format!("{} ({})", e, redact_url(url)),
        )
    })?;
    let synchronous = match durability {
        Durability::Immediate => "on",
        Durability::Eventual => "off",
    };
    client
        .batch_execute(&format!(
            "SET synchronous_commit = {synchronous}; SET application_name = 'seqsync';"
        ))
        .map_err(|e| pg_error("configuring a connection", e))?;
    Ok(client)
}

/// The writer's connection: as [`connect`], and a transaction left idle
/// longer than the lease (the node was paused mid-commit: SIGSTOP, a long
/// GC, a partition) is ended by the database. Its row locks would otherwise
/// stop every other node from writing the collection, lease or not; the
/// paused commit fails and was never acknowledged.
pub(super) fn connect_writer(
    url: &str,
    durability: Durability,
    lease_ttl_ms: u64,
) -> Result<Client, StorageError> {
    let mut client = connect(url, durability)?;
    client
        .batch_execute(&format!(
            "SET idle_in_transaction_session_timeout = {lease_ttl_ms}"
        ))
        .map_err(|e| pg_error("configuring the writer", e))?;
    Ok(client)
}

/// Creates the schema or brings it to [`POSTGRES_SCHEMA_VERSION`], one
/// migration per transaction, under an advisory lock.
pub(super) fn migrate_schema(client: &mut Client, url: &str) -> Result<(), StorageError> {
    let failed = |e| pg_error("migrating the schema", e);
    let mut tx = client.transaction().map_err(failed)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .map_err(failed)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS seqsync_schema_migrations (
            version INTEGER PRIMARY KEY,
            description TEXT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .map_err(failed)?;
    let current: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM seqsync_schema_migrations",
            &[],
        )
        .map_err(failed)?
        .get(0);
    if current > POSTGRES_SCHEMA_VERSION {
        return Err(StorageError::UnsupportedFormat {
            backend: BACKEND,
            path: std::path::PathBuf::from(redact_url(url)),
            found: u64::try_from(current).unwrap_or(0),
            supported: POSTGRES_SCHEMA_VERSION as u64,
        });
    }
    for (version, description, sql) in MIGRATIONS {
        if *version <= current {
            continue;
        }
        tx.batch_execute(sql).map_err(|e| StorageError::NotAStore {
            backend: BACKEND,
            path: std::path::PathBuf::from(redact_url(url)),
            detail: format!("applying schema version {version}: {e}"),
        })?;
        tx.execute(
            "INSERT INTO seqsync_schema_migrations (version, description) VALUES ($1, $2)",
            &[version, description],
        )
        .map_err(failed)?;
    }
    tx.commit().map_err(failed)
}
