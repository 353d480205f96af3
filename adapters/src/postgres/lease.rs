//! Collection leases: one writer per collection, fenced by a token.
//!
//! A node takes a lease on its first write of a collection, on the
//! database's clock; every commit carries the token and renews it in
//! the same statement; a renewer thread extends held leases every third
//! of the ttl; every acquisition is logged (`seqsync_lease_log`) so an
//! audit can check that no commit came from a deposed owner.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use postgres::{Client, Transaction};
use seqsync_engine::{Durability, Epoch, StorageError};

use super::rows::StoredRow;
use super::schema::connect;
use super::{lock, pg_error, Leases, PostgresStorage};

/// `host-pid-random`: unique per process without configuration.
pub(super) fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "node".to_owned());
    let random = Epoch::random().map(|e| e.to_string()).unwrap_or_default();
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &random[..8.min(random.len())]
    )
}

/// The renewer thread: every third of the ttl, extends every held lease in
/// one statement; a lease the statement did not extend (another node took
/// it) is forgotten, so the next commit of that collection takes the lease
/// again or answers `NotOwner`.
pub(super) fn renew_leases(
    url: &str,
    durability: Durability,
    node: &str,
    ttl_ms: u64,
    leases: &Leases,
    stop: &AtomicBool,
) {
    let mut client: Option<Client> = None;
    let every = Duration::from_millis((ttl_ms / 3).max(1));
    while !stop.load(Ordering::SeqCst) {
        std::thread::park_timeout(every);
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let held: Vec<(String, i64)> = match leases.lock() {
            Ok(l) => l.iter().map(|(c, t)| (c.clone(), *t)).collect(),
            Err(_) => return,
        };
        if held.is_empty() {
            continue;
        }
        if client.as_ref().is_none_or(Client::is_closed) {
            client = connect(url, durability).ok();
        }
        let Some(conn) = client.as_mut() else {
            continue;
        };
        let names: Vec<&str> = held.iter().map(|(c, _)| c.as_str()).collect();
        let tokens: Vec<i64> = held.iter().map(|(_, t)| *t).collect();
        let renewed = conn.query(
            "UPDATE seqsync_collections c SET lease_expires = now() + $2::float8 * interval '1 millisecond' \
             FROM unnest($3::text[], $4::bigint[]) AS h(name, token) \
             WHERE c.name = h.name AND c.lease_token = h.token AND c.lease_owner = $1 \
             RETURNING c.name",
            &[&node, &(ttl_ms as f64), &names, &tokens],
        );
        match renewed {
            Ok(rows) => {
                let kept: std::collections::HashSet<String> =
                    rows.iter().map(|r| r.get::<_, String>(0)).collect();
                if let Ok(mut l) = leases.lock() {
                    for (name, token) in &held {
                        if !kept.contains(name) && l.get(name) == Some(token) {
                            tracing::warn!(collection = %name, "lease lost to another node");
                            metrics::counter!("seqsync_leases_lost_total").increment(1);
                            l.remove(name);
                        }
                    }
                    metrics::gauge!("seqsync_leases_held").set(l.len() as f64);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing leases failed; retrying");
                client = None;
            }
        }
    }
}

impl PostgresStorage {
    /// Takes the lease of `name` for this node if it is free, expired, or
    /// already this node's (a restarted node fences its earlier self: the
    /// token always grows). `NotOwner` when another node holds it.
    pub(super) fn take_lease(
        &self,
        tx: &mut Transaction<'_>,
        name: &str,
        stored: &StoredRow,
    ) -> Result<i64, StorageError> {
        let row = tx
            .query_opt(
                "UPDATE seqsync_collections SET lease_owner = $1, lease_token = lease_token + 1, \
                 lease_expires = now() + $2::float8 * interval '1 millisecond' \
                 WHERE id = $3 AND (lease_owner IS NULL OR lease_owner = $1 \
                 OR lease_expires IS NULL OR lease_expires <= now()) \
                 RETURNING lease_token",
                &[&self.node, &(self.lease_ttl_ms() as f64), &stored.cid],
            )
            .map_err(|e| pg_error("taking a lease", e))?;
        match row {
            Some(row) => {
                let token: i64 = row.get(0);
                self.log_lease(tx, name, token)?;
                Ok(token)
            }
            None => Err(StorageError::NotOwner {
                collection: name.to_owned(),
                owner: stored.lease_owner.clone().unwrap_or_default(),
                retry_after_ms: u64::try_from(stored.lease_left_ms).unwrap_or(0),
            }),
        }
    }

    pub(super) fn log_lease(
        &self,
        tx: &mut Transaction<'_>,
        name: &str,
        token: i64,
    ) -> Result<(), StorageError> {
        tx.execute(
            "INSERT INTO seqsync_lease_log (collection, owner, token) VALUES ($1, $2, $3)",
            &[&name, &self.node, &token],
        )
        .map_err(|e| pg_error("logging a lease", e))?;
        Ok(())
    }

    /// Why the fenced update moved nothing: the lease went to another node
    /// (`NotOwner`, and it is forgotten here), or the base moved
    /// (`Conflict`).
    pub(super) fn refusal(&self, tx: &mut Transaction<'_>, name: &str, token: i64) -> StorageError {
        let now = tx.query_opt(
            "SELECT lease_owner, lease_token, \
             greatest(0, (extract(epoch FROM lease_expires - now()) * 1000)::bigint), head \
             FROM seqsync_collections WHERE name = $1",
            &[&name],
        );
        match now {
            Ok(Some(row)) => {
                let owner: Option<String> = row.get(0);
                let current: i64 = row.get(1);
                let left: Option<i64> = row.get(2);
                if owner.as_deref() != Some(self.node.as_str()) || current != token {
                    if let Ok(mut leases) = lock(&self.leases) {
                        leases.remove(name);
                    }
                    metrics::counter!("seqsync_leases_lost_total").increment(1);
                    StorageError::NotOwner {
                        collection: name.to_owned(),
                        owner: owner.unwrap_or_default(),
                        retry_after_ms: u64::try_from(left.unwrap_or(0)).unwrap_or(0),
                    }
                } else {
                    let head: i64 = row.get(3);
                    StorageError::Conflict {
                        collection: name.to_owned(),
                        detail: format!("the stored head is {head}"),
                    }
                }
            }
            Ok(None) => StorageError::Conflict {
                collection: name.to_owned(),
                detail: "the collection is gone".to_owned(),
            },
            Err(e) => pg_error("reading a refused commit's collection", e),
        }
    }
}
