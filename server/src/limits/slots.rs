//! Open WebSockets, counted in total and per collection.
//!
//! A slot is taken before the upgrade and given back when the connection's
//! `ConnectionSlot` drops, whichever way the connection ends (close, error,
//! panic of its task), so a count can never leak upward and lock clients
//! out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::ServerLimits;
use actix_web::http::StatusCode;

use crate::error::ApiError;

use super::refused;

/// Open WebSockets, in total and per collection.
#[derive(Default)]
pub(crate) struct ConnectionLimits {
    total: AtomicU64,
    per_collection: Mutex<HashMap<String, u64>>,
}

impl ConnectionLimits {
    /// Takes a slot for a WebSocket on `collection`, or answers 503
    /// `too_many_connections` naming the limit. The slot is given back when
    /// the returned guard drops (the socket's task ends).
    pub(crate) fn admit(
        self: &Arc<Self>,
        limits: &ServerLimits,
        collection: &str,
    ) -> Result<ConnectionSlot, ApiError> {
        let mut per_collection = match self.per_collection.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        let total = self.total.load(Ordering::Relaxed);
        if total >= limits.max_connections {
            refused("too_many_connections");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                format!(
                    "the server holds {total} WebSockets, its limit (limits.max_connections); \
                     retry later"
                ),
            ));
        }
        let open = per_collection.get(collection).copied().unwrap_or(0);
        if open >= limits.max_connections_per_collection {
            refused("too_many_collection_connections");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                format!(
                    "collection {collection} has {open} WebSockets open, its limit \
                     (limits.max_connections_per_collection); retry later"
                ),
            ));
        }
        per_collection.insert(collection.to_owned(), open + 1);
        self.total.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("seqsync_websockets_open").set((total + 1) as f64);
        Ok(ConnectionSlot {
            limits: self.clone(),
            collection: collection.to_owned(),
        })
    }

    /// Open WebSockets in total.
    #[cfg(test)]
    pub(crate) fn open(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// One admitted WebSocket; dropping it frees the slot.
pub(crate) struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    collection: String,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut per_collection = match self.limits.per_collection.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(open) = per_collection.get_mut(&self.collection) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                per_collection.remove(&self.collection);
            }
        }
        let before = self.limits.total.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("seqsync_websockets_open").set(before.saturating_sub(1) as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots are per collection and in total, and come back on drop.
    #[test]
    fn connection_slots_are_counted_and_given_back() {
        let limits = ServerLimits {
            max_connections: 3,
            max_connections_per_collection: 2,
            ..ServerLimits::default()
        };
        let counter = Arc::new(ConnectionLimits::default());
        let a1 = counter.admit(&limits, "a").unwrap();
        let _a2 = counter.admit(&limits, "a").unwrap();
        let err = counter.admit(&limits, "a").err().unwrap();
        assert_eq!(err.code(), "too_many_connections");
        let _b1 = counter.admit(&limits, "b").unwrap();
        assert!(counter.admit(&limits, "c").is_err(), "three in total");
        drop(a1);
        assert_eq!(counter.open(), 2);
        assert!(counter.admit(&limits, "a").is_ok());
    }
}
