//! Presence rooms: per document, the connections that follow it and their
//! merged Yjs awareness, shared by `/yws` (`yws/`) and the sync socket
//! (`presence.rs`), so a y-websocket client and a `@seqsync/client` of one
//! document see each other.
//!
//! A room holds one state per Yjs client id (whichever connection its
//! updates came through: a provider re-broadcasts the states it receives),
//! merged by y-protocols' rule (a newer clock wins; an equal clock with
//! `null` removes), and a `broadcast` relay of what changed, encoded as
//! y-websocket awareness messages (the sync socket unwraps them with
//! [`awareness_update_of`]). It follows y-websocket's reference server: a
//! newcomer gets every current state in one message, and when a
//! connection leaves (cleanly or not) the states it set are removed for
//! everyone at once (`null` at the next clock), not left until each
//! client's 30 s timeout. Removed states keep their clock (bounded), so a
//! stale re-broadcast cannot bring them back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::web::Bytes;
use tokio::sync::broadcast;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::sync::Message;
use yrs::updates::encoder::Encode;
use yrs::ClientID;

/// Awareness messages buffered per room for slow connections.
const ROOM_RELAY_CAPACITY: usize = 256;

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// A fresh id for a connection that joins rooms (`/yws` or the sync
/// socket): a room removes the states a connection set when it leaves.
pub(crate) fn next_connection_id() -> u64 {
    NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed)
}

/// A room: `(collection, document)`.
pub(crate) type RoomKey = (String, String);

/// The awareness update inside a y-websocket awareness message (`1`, then
/// the update as length-prefixed bytes): what the sync socket's
/// `awareness` frame carries. `None` for any other message. The rooms'
/// relay carries only awareness messages they encoded themselves.
pub(crate) fn awareness_update_of(message: &[u8]) -> Option<&[u8]> {
    let mut r = seqsync_protocol::sync::Reader::new(message);
    if r.varuint("type").ok()? != 1 {
        return None;
    }
    let update = r.bytes("update").ok()?;
    (r.remaining() == 0).then_some(update)
}

/// Removed awareness states a room remembers (their clocks keep a stale
/// re-broadcast from bringing them back); past this all are forgotten.
const MAX_REMOVED_AWARENESS: usize = 4096;
/// Client ids a room's awareness holds at most, removed ones included; a
/// new id beyond it is not taken (a room of real people is far below, and
/// a client inventing ids cannot grow the room's memory without bound).
const MAX_AWARENESS_CLIENTS: usize = 2 * MAX_REMOVED_AWARENESS;

/// One client's awareness as its room knows it.
struct ClientAwareness {
    clock: u32,
    /// The client's JSON state; `None` once removed (the clock stays, so
    /// an older update relayed late cannot bring the state back).
    state: Option<Arc<str>>,
    /// The connection whose update set this state: when it closes, the
    /// state is removed for everyone.
    controller: u64,
}

struct Room {
    relay: broadcast::Sender<Bytes>,
    /// The room's merged awareness: one entry per Yjs client id, whichever
    /// connection its updates came through (a provider re-broadcasts the
    /// states it receives, so one connection carries several clients).
    awareness: HashMap<ClientID, ClientAwareness>,
}

impl Room {
    /// One awareness message with every current state (and, with
    /// `removed`, the removals the room remembers, as `null` states), or
    /// `None` when there is nothing to send.
    fn snapshot(&self, removed: bool) -> Option<Bytes> {
        let null: Arc<str> = Arc::from("null");
        let clients: HashMap<ClientID, AwarenessUpdateEntry> = self
            .awareness
            .iter()
            .filter_map(|(id, client)| {
                let json = match &client.state {
                    Some(state) => state.clone(),
                    None if removed => null.clone(),
                    None => return None,
                };
                Some((
                    *id,
                    AwarenessUpdateEntry {
                        clock: client.clock,
                        json,
                    },
                ))
            })
            .collect();
        if clients.is_empty() {
            return None;
        }
        Some(Bytes::from(
            Message::Awareness(AwarenessUpdate { clients }).encode_v1(),
        ))
    }

    /// Forgets removed states once there are too many of them.
    fn bound_removed(&mut self) {
        let removed = self
            .awareness
            .values()
            .filter(|c| c.state.is_none())
            .count();
        if removed > MAX_REMOVED_AWARENESS {
            self.awareness.retain(|_, c| c.state.is_some());
        }
    }
}

/// Whether an awareness entry's JSON is `null`: the client's state removed.
fn is_null_state(json: &str) -> bool {
    json.trim() == "null"
}

/// The connections of each document and their merged awareness.
#[derive(Default)]
pub(crate) struct Rooms {
    rooms: Mutex<HashMap<RoomKey, Room>>,
}

impl Rooms {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomKey, Room>> {
        match self.rooms.lock() {
            Ok(rooms) => rooms,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Joins `key`'s room: its relay, and one awareness message with every
    /// current state (what y-websocket's reference server sends a newcomer).
    pub(crate) fn join(&self, key: &RoomKey) -> (broadcast::Receiver<Bytes>, Option<Bytes>) {
        let mut rooms = self.lock();
        let room = rooms.entry(key.clone()).or_insert_with(|| Room {
            relay: broadcast::channel(ROOM_RELAY_CAPACITY).0,
            awareness: HashMap::new(),
        });
        (room.relay.subscribe(), room.snapshot(false))
    }

    /// Merges an awareness update that arrived on `connection`, by the rule
    /// of y-protocols' `applyAwarenessUpdate`: an entry is taken when its
    /// clock is newer than the room's, or equal with a `null` state that
    /// removes a present one. The entries taken are relayed to every
    /// connection of the room (the sender's included) as one message; the
    /// others (a provider re-broadcasting states it received) change
    /// nothing and are not relayed.
    pub(crate) fn publish(&self, key: &RoomKey, connection: u64, update: AwarenessUpdate) {
        let mut rooms = self.lock();
        let Some(room) = rooms.get_mut(key) else {
            return;
        };
        let mut taken = HashMap::new();
        for (id, entry) in update.clients {
            let removal = is_null_state(&entry.json);
            let newer = match room.awareness.get(&id) {
                Some(known) => {
                    known.clock < entry.clock
                        || (known.clock == entry.clock && removal && known.state.is_some())
                }
                // Nothing to remove for a client the room never saw.
                None => !removal && room.awareness.len() < MAX_AWARENESS_CLIENTS,
            };
            if !newer {
                continue;
            }
            room.awareness.insert(
                id,
                ClientAwareness {
                    clock: entry.clock,
                    state: (!removal).then(|| entry.json.clone()),
                    controller: connection,
                },
            );
            taken.insert(id, entry);
        }
        if taken.is_empty() {
            return;
        }
        room.bound_removed();
        let message = Message::Awareness(AwarenessUpdate { clients: taken }).encode_v1();
        let _ = room.relay.send(Bytes::from(message));
    }

    /// Every current state of the room in one message (an awareness query's
    /// answer), with the removals it remembers if `removed` (for a
    /// connection that missed relayed messages), or `None`.
    pub(crate) fn current(&self, key: &RoomKey, removed: bool) -> Option<Bytes> {
        self.lock().get(key).and_then(|room| room.snapshot(removed))
    }

    /// Drops `key`'s room if no connection holds its relay any more (for a
    /// connection whose relay receiver was dropped after its `leave`).
    pub(crate) fn forget_if_unused(&self, key: &RoomKey) {
        let mut rooms = self.lock();
        if rooms
            .get(key)
            .is_some_and(|room| room.relay.receiver_count() == 0)
        {
            rooms.remove(key);
        }
    }

    /// `connection` closed (cleanly or not): the states it set are removed
    /// at once for everyone, as `null` states at the next clock (what the
    /// reference server's close handling broadcasts), instead of staying on
    /// other screens until each client's own timeout. Drops the room when
    /// it has no connection left. Call after dropping the connection's
    /// relay receiver.
    pub(crate) fn leave(&self, key: &RoomKey, connection: u64) {
        let mut rooms = self.lock();
        let Some(room) = rooms.get_mut(key) else {
            return;
        };
        if room.relay.receiver_count() == 0 {
            rooms.remove(key);
            return;
        }
        let null: Arc<str> = Arc::from("null");
        let mut removed = HashMap::new();
        for (id, client) in room.awareness.iter_mut() {
            if client.controller == connection && client.state.is_some() {
                client.clock = client.clock.wrapping_add(1);
                client.state = None;
                removed.insert(
                    *id,
                    AwarenessUpdateEntry {
                        clock: client.clock,
                        json: null.clone(),
                    },
                );
            }
        }
        if !removed.is_empty() {
            let message = Message::Awareness(AwarenessUpdate { clients: removed }).encode_v1();
            let _ = room.relay.send(Bytes::from(message));
        }
        room.bound_removed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;

    fn update(entries: &[(u64, u32, &str)]) -> AwarenessUpdate {
        AwarenessUpdate {
            clients: entries
                .iter()
                .map(|&(id, clock, json)| {
                    (
                        ClientID::new(id),
                        AwarenessUpdateEntry {
                            clock,
                            json: Arc::from(json),
                        },
                    )
                })
                .collect(),
        }
    }

    /// The entries of an awareness message, sorted: (client, clock, json).
    fn entries(message: &[u8]) -> Vec<(u64, u32, String)> {
        let Ok(Message::Awareness(update)) = Message::decode_v1(message) else {
            panic!("not an awareness message");
        };
        let mut entries: Vec<_> = update
            .clients
            .into_iter()
            .map(|(id, e)| (id.get(), e.clock, e.json.to_string()))
            .collect();
        entries.sort();
        entries
    }

    /// The room's awareness follows y-protocols: newer clocks win, a
    /// provider's re-broadcast of a state it received changes nothing, a
    /// newcomer gets every current state at once, and a closed connection's
    /// states are removed at the next clock and stay removed.
    #[test]
    fn room_awareness_merges_by_clock_and_removes_a_closed_connections_states() {
        let rooms = Rooms::default();
        let key = ("c".to_owned(), "d".to_owned());
        let (mut first, nothing) = rooms.join(&key);
        assert!(nothing.is_none());
        let (_second, _) = rooms.join(&key);
        rooms.publish(&key, 1, update(&[(10, 1, r#"{"n":"a"}"#)]));
        assert_eq!(
            entries(&first.try_recv().unwrap()),
            [(10, 1, r#"{"n":"a"}"#.to_owned())]
        );
        // Connection 2 re-broadcasts client 10 at the same clock, with its own.
        rooms.publish(
            &key,
            2,
            update(&[(10, 1, r#"{"n":"a"}"#), (20, 3, r#"{"n":"b"}"#)]),
        );
        assert_eq!(
            entries(&first.try_recv().unwrap()),
            [(20, 3, r#"{"n":"b"}"#.to_owned())],
            "only what changed is relayed"
        );
        let (_third, everyone) = rooms.join(&key);
        assert_eq!(
            entries(&everyone.unwrap()),
            [
                (10, 1, r#"{"n":"a"}"#.to_owned()),
                (20, 3, r#"{"n":"b"}"#.to_owned())
            ]
        );
        // Connection 1 closes without a word: client 10 is removed.
        rooms.leave(&key, 1);
        assert_eq!(
            entries(&first.try_recv().unwrap()),
            [(10, 2, "null".to_owned())]
        );
        // A late re-broadcast of its old state does not bring it back.
        rooms.publish(&key, 2, update(&[(10, 1, r#"{"n":"a"}"#)]));
        assert!(first.try_recv().is_err());
        assert_eq!(
            entries(&rooms.current(&key, false).unwrap()),
            [(20, 3, r#"{"n":"b"}"#.to_owned())]
        );
        assert_eq!(
            entries(&rooms.current(&key, true).unwrap()),
            [
                (10, 2, "null".to_owned()),
                (20, 3, r#"{"n":"b"}"#.to_owned())
            ]
        );
    }

    /// A client that invents client ids (one awareness update can name
    /// thousands) must not grow a room's memory without bound.
    #[test]
    fn room_awareness_holds_a_bounded_number_of_clients() {
        let rooms = Rooms::default();
        let key = ("c".to_owned(), "d".to_owned());
        let (_relay, _) = rooms.join(&key);
        let many: Vec<(u64, u32, &str)> = (1..=MAX_AWARENESS_CLIENTS as u64 + 100)
            .map(|id| (id, 1, "{}"))
            .collect();
        rooms.publish(&key, 1, update(&many));
        rooms.publish(&key, 2, update(&[(u64::from(u32::MAX), 1, "{}")]));
        let held = entries(&rooms.current(&key, false).unwrap());
        assert_eq!(held.len(), MAX_AWARENESS_CLIENTS);
        // Known clients still update, and removals make room again.
        rooms.publish(&key, 1, update(&[(1, 2, "{\"x\":1}")]));
        let held = entries(&rooms.current(&key, false).unwrap());
        assert_eq!(held[0], (1, 2, "{\"x\":1}".to_owned()));
        rooms.leave(&key, 1);
        rooms.publish(&key, 2, update(&[(u64::from(u32::MAX), 1, "{}")]));
        let held = entries(&rooms.current(&key, false).unwrap());
        assert_eq!(held, [(u64::from(u32::MAX), 1, "{}".to_owned())]);
    }
}
