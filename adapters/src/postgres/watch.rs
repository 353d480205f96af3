//! The commit watcher: how a node learns that another node committed.
//!
//! Commits are announced with `NOTIFY` (`LISTEN seqsync_commits`); a
//! notification sent while the listener's connection is down is lost, so
//! the watcher also polls the heads of collections this node does not
//! own every `WATCH_POLL_MS`, and reports each head that moved once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use seqsync_engine::{CollectionName, CommitWatcher, Durability};

use super::pg_error;
use super::schema::connect;

/// The channel commits are announced on (`LISTEN seqsync_commits`).
pub(super) const NOTIFY_CHANNEL: &str = "seqsync_commits";
/// How often the commit watcher polls the heads, in case a notification
/// was missed (a dropped listener connection).
pub(super) const WATCH_POLL_MS: u64 = 1_000;

/// The commit watcher thread: `LISTEN`s for other nodes' commits and
/// polls the heads of collections this node does not own every second (a
/// notification is lost while the connection is down), calling `on_commit`
/// for each head that moved. Ends when the storage is dropped.
pub(super) fn watch(
    url: &str,
    durability: Durability,
    node: &str,
    on_commit: &CommitWatcher,
    stop: &AtomicBool,
) {
    let mut known: HashMap<String, i64> = HashMap::new();
    let mut client: Option<Client> = None;
    let mut first_poll = true;
    while !stop.load(Ordering::SeqCst) {
        if client.as_ref().is_none_or(Client::is_closed) {
            client = connect(url, durability)
                .and_then(|mut c| {
                    c.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
                        .map_err(|e| pg_error("listening", e))?;
                    Ok(c)
                })
                .ok();
            if client.is_none() {
                std::thread::sleep(Duration::from_millis(WATCH_POLL_MS));
                continue;
            }
        }
        let Some(conn) = client.as_mut() else {
            continue;
        };
        let mut moved: Vec<(String, i64)> = Vec::new();
        let mut lost = false;
        {
            let started = std::time::Instant::now();
            let mut notifications = conn.notifications();
            let mut waiting = notifications.timeout_iter(Duration::from_millis(WATCH_POLL_MS));
            // Notifications are handed on as they come; the poll runs once
            // a second however busy the channel is.
            while started.elapsed() < Duration::from_millis(WATCH_POLL_MS) {
                match waiting.next() {
                    Ok(Some(note)) => {
                        // `node head name committed_ms` (a node before the
                        // time was sent: `node head name`). Neither a node
                        // id nor a collection name holds a space.
                        let mut parts = note.payload().split(' ');
                        let (Some(from), Some(head), Some(name)) =
                            (parts.next(), parts.next(), parts.next())
                        else {
                            continue;
                        };
                        if from == node {
                            continue;
                        }
                        let committed_ms = parts.next().and_then(|t| t.parse::<u64>().ok());
                        if let Ok(head) = head.parse::<i64>() {
                            dispatch(&mut known, on_commit, name.to_owned(), head, committed_ms);
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        lost = true;
                        break;
                    }
                }
            }
        }
        if lost {
            client = None;
        }
        // The poll: what a lost notification would have said.
        if let Some(conn) = client.as_mut() {
            match conn.query(
                "SELECT name, head FROM seqsync_collections                  WHERE lease_owner IS DISTINCT FROM $1",
                &[&node],
            ) {
                Ok(rows) => {
                    for row in rows {
                        let (name, head): (String, i64) = (row.get(0), row.get(1));
                        if first_poll {
                            known.insert(name, head);
                        } else if known.get(&name).is_none_or(|&k| k < head) {
                            moved.push((name, head));
                        }
                    }
                    first_poll = false;
                }
                Err(_) => client = None,
            }
        }
        for (name, head) in moved {
            dispatch(&mut known, on_commit, name, head, None);
        }
    }
}

/// Calls `on_commit` for a head not seen before.
pub(super) fn dispatch(
    known: &mut HashMap<String, i64>,
    on_commit: &CommitWatcher,
    name: String,
    head: i64,
    committed_ms: Option<u64>,
) {
    if known.get(&name).is_some_and(|&k| k >= head) {
        return;
    }
    known.insert(name.clone(), head);
    if let Ok(collection) = CollectionName::new(name) {
        on_commit(&collection, u64::try_from(head).unwrap_or(0), committed_ms);
    }
}
