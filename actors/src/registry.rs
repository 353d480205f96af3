//! The registry: one live `CollectionActor` per collection in use.
//!
//! Actors are started on first use, spread round-robin over the arbiters, and
//! remove themselves when they stop (idle unload, or a panic). A generation
//! number tells an actor's own entry from that of a successor started after
//! it, so a late `stopped` never removes the successor. Only collections in
//! use have an entry: 100,000 collections on disk cost nothing here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix::{Actor, Addr, ArbiterHandle};
use seqsync_engine::CollectionName;

use crate::collection::CollectionActor;
use crate::context::Shared;

struct Entry {
    generation: u64,
    addr: Addr<CollectionActor>,
}

pub(crate) struct Registry {
    actors: Mutex<HashMap<CollectionName, Entry>>,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: AtomicUsize,
    next_generation: AtomicU64,
}

impl Registry {
    pub(crate) fn new(arbiters: Vec<ArbiterHandle>) -> Self {
        assert!(
            !arbiters.is_empty(),
            "the runtime starts at least one arbiter"
        );
        Self {
            actors: Mutex::new(HashMap::new()),
            arbiters,
            next_arbiter: AtomicUsize::new(0),
            next_generation: AtomicU64::new(1),
        }
    }

    /// The collection's actor, started if there is none or it has stopped.
    pub(crate) fn get(&self, shared: &Arc<Shared>, name: &CollectionName) -> Addr<CollectionActor> {
        let mut actors = match self.actors.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(entry) = actors.get(name) {
            if entry.addr.connected() {
                return entry.addr.clone();
            }
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let index = self.next_arbiter.fetch_add(1, Ordering::Relaxed) % self.arbiters.len();
        let actor_name = name.clone();
        let actor_shared = shared.clone();
        let addr = CollectionActor::start_in_arbiter(&self.arbiters[index], move |_ctx| {
            CollectionActor::new(actor_name, generation, actor_shared)
        });
        actors.insert(
            name.clone(),
            Entry {
                generation,
                addr: addr.clone(),
            },
        );
        addr
    }

    /// Forgets the actor of `generation` (called by the actor as it stops).
    pub(crate) fn remove(&self, name: &CollectionName, generation: u64) {
        let mut actors = match self.actors.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if actors.get(name).is_some_and(|e| e.generation == generation) {
            actors.remove(name);
        }
    }

    /// The collection's actor if one is running (none is started).
    pub(crate) fn running(&self, name: &CollectionName) -> Option<Addr<CollectionActor>> {
        let actors = match self.actors.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        actors
            .get(name)
            .filter(|e| e.addr.connected())
            .map(|e| e.addr.clone())
    }

    /// Collections with a live actor.
    pub(crate) fn loaded(&self) -> usize {
        self.actors.lock().map(|a| a.len()).unwrap_or(0)
    }
}
