//! The log's vocabulary: sequence numbers, epochs, changes, peers and
//! collection metadata.
//!
//! A collection is an append-only log of [`Change`]s numbered by [`Seq`] from 1
//! without gaps. Everything a client learns is "the changes after cursor c";
//! everything the server keeps is that log plus, per collection, a
//! [`CollectionMeta`] (head, epoch, schema version) and a table of
//! [`PeerRecord`]s. These types are plain data shared by the runtime and every
//! storage backend.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::name::{DocId, PeerId};

/// A position in a collection's log. The first change has seq 1; `0` means
/// "before everything" when used as a cursor.
pub type Seq = u64;

/// What a change does to its document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChangeKind {
    /// A Yjs v1 update for the document.
    Update,
    /// A tombstone: the document is deleted; later pushes to it are refused.
    Delete,
    /// The document's merged state (a Yjs v1 update) replacing every earlier
    /// `Update`/`Snapshot` change of the document, stored at the seq of the last
    /// change it covers (docs/DESIGN.md, "Compaction").
    Snapshot,
}

impl ChangeKind {
    /// Stable one-byte code used by the backends' on-disk formats. Never reuse
    /// a retired code.
    pub fn code(self) -> u8 {
        match self {
            ChangeKind::Update => 1,
            ChangeKind::Delete => 2,
            ChangeKind::Snapshot => 3,
        }
    }

    /// Inverse of [`ChangeKind::code`]; `None` for an unknown code (a corrupt
    /// or newer store).
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(ChangeKind::Update),
            2 => Some(ChangeKind::Delete),
            3 => Some(ChangeKind::Snapshot),
            _ => None,
        }
    }

    /// Lower-case name used in JSON and logs: `update`, `delete`, `snapshot`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Update => "update",
            ChangeKind::Delete => "delete",
            ChangeKind::Snapshot => "snapshot",
        }
    }
}

/// One entry of a collection's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Position in the collection's log; unique, assigned at commit.
    pub seq: Seq,
    /// The document the change belongs to.
    pub doc: DocId,
    /// Update, tombstone or snapshot.
    pub kind: ChangeKind,
    /// Yjs v1 update bytes for `Update` and `Snapshot`; empty for `Delete`.
    pub payload: Vec<u8>,
    /// Schema version of the collection the change was written under.
    pub schema_version: u32,
    /// The peer that pushed it, when the client said who it is.
    pub origin: Option<PeerId>,
    /// Who pushed it, when the host knows: the subject (`sub`) of the
    /// signed token the push came with. Unlike `origin` (which a client
    /// names itself) this is vouched for by the host. `None` for pushes
    /// without one, for snapshots, and for changes stored before store
    /// formats recorded it.
    pub author: Option<String>,
    /// When the change was accepted (its seq assigned, just before its
    /// commit), ms since the Unix epoch; a snapshot keeps the time of the
    /// last change it covers. 0 for changes stored before store formats
    /// recorded it. Like `origin` and `author`, it is not covered by the
    /// checksums: it describes the change, it is not its content.
    pub committed_ms: u64,
    /// The log checksum through this change: the sum (mod 2^64) of
    /// [`crate::change_checksum`] of every change up to and including it,
    /// in the log as written (a snapshot carries the value of the change it
    /// took the seq of, so compaction changes no stored value). Set by the
    /// storage at commit; ignored (write 0) in changes handed to a commit.
    pub log_checksum: u64,
}

/// A collection's identity in time: a random id given at creation and replaced
/// whenever the collection's history is replaced (restore, import). Seqs are
/// only comparable within one epoch.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(pub [u8; 16]);

impl Epoch {
    /// A fresh random epoch from the operating system's generator.
    ///
    /// Errors: the OS generator failed (only on exotic platforms); the caller
    /// must not create a collection then, as two collections could collide.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)?;
        Ok(Epoch(bytes))
    }

    /// Parses the 32-hex-digit form produced by `Display`. `None` when `text`
    /// is not exactly that.
    pub fn parse_hex(text: &str) -> Option<Self> {
        if text.len() != 32 || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Epoch(bytes))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({self})")
    }
}

/// What the server keeps about one collection besides its log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectionMeta {
    /// The collection's epoch (see [`Epoch`]).
    pub epoch: Epoch,
    /// Highest seq ever committed; 0 for an empty collection. Compaction never
    /// lowers it (a snapshot takes the seq of the last change it covers).
    pub head: Seq,
    /// Schema version the collection's documents are stored at.
    pub schema_version: u32,
    /// When the collection was created, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The log checksum through `head` (see [`Change::log_checksum`]); 0
    /// for an empty collection.
    pub log_checksum: u64,
}

/// How far one peer of a collection got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRecord {
    /// The peer's id.
    pub peer: PeerId,
    /// Highest seq the peer acknowledged. Never goes backwards in storage.
    pub acked: Seq,
    /// Last time the peer acked or pushed, milliseconds since the Unix epoch.
    pub last_seen_ms: u64,
}

impl PeerRecord {
    /// Whether the peer was seen less than `timeout_secs` before `now_ms`, so
    /// that it still holds compaction back.
    ///
    /// The bound is strict on purpose: with a timeout of 0 no peer is ever
    /// active, whatever the clock says. With `<=`, a peer seen in the same
    /// millisecond as the check counted as active, so whether compaction
    /// waited for it depended on how fast the machine ran (the seeded
    /// simulation replayed differently from run to run because of it).
    pub fn is_active(&self, now_ms: u64, timeout_secs: u64) -> bool {
        now_ms.saturating_sub(self.last_seen_ms) < timeout_secs.saturating_mul(1000)
    }
}

/// A named version of a document (`POST …/versions`): its seq when it was
/// pinned. Compaction keeps the document's history apart at every pinned
/// seq, so the version stays readable exactly (`?at=seq`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    /// The document.
    pub doc: DocId,
    /// Its name, unique per document (1–128 bytes, no control characters;
    /// [`crate::check_version_name`]).
    pub name: String,
    /// The document's latest change when it was pinned.
    pub seq: Seq,
    /// When it was pinned, ms since the Unix epoch.
    pub created_ms: u64,
    /// Who pinned it (a signed token's subject), when known.
    pub author: Option<String>,
}

/// A document as listed by [`crate::Storage::documents`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentInfo {
    /// The document's id.
    pub doc: DocId,
    /// Seq of the document's latest change.
    pub last_seq: Seq,
    /// Whether the document has a tombstone.
    pub deleted: bool,
    /// Total payload bytes of its stored changes: its size in the log
    /// (after compaction, about its snapshot's size).
    pub stored_bytes: u64,
}

/// Milliseconds since the Unix epoch by the system clock (0 if the clock is
/// before 1970). Used for `created_ms` and `last_seen_ms`, never for ordering.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clients echo the epoch back as hex; the round trip must be exact and a
    /// malformed string must not parse to some other epoch.
    #[test]
    fn epoch_hex_round_trips_and_rejects_garbage() {
        let epoch = Epoch::random().unwrap();
        assert_eq!(Epoch::parse_hex(&epoch.to_string()), Some(epoch));
        assert_eq!(Epoch::parse_hex("xyz"), None);
        assert_eq!(Epoch::parse_hex(&"g".repeat(32)), None);
        assert_eq!(Epoch::parse_hex(&"é".repeat(16)), None);
    }

    /// The kind codes are an on-disk format: they must round trip and never
    /// change meaning.
    #[test]
    fn change_kind_codes_are_stable() {
        for kind in [ChangeKind::Update, ChangeKind::Delete, ChangeKind::Snapshot] {
            assert_eq!(ChangeKind::from_code(kind.code()), Some(kind));
        }
        assert_eq!(ChangeKind::Update.code(), 1);
        assert_eq!(ChangeKind::Delete.code(), 2);
        assert_eq!(ChangeKind::Snapshot.code(), 3);
        assert_eq!(ChangeKind::from_code(0), None);
    }

    /// Whether compaction waits for a peer must not depend on how fast the
    /// machine runs: a timeout of 0 never counts a peer as active, even one
    /// seen in the same millisecond (the seeded simulation relies on it).
    #[test]
    fn peer_activity_is_strict_and_zero_means_never() {
        let peer = PeerRecord {
            peer: PeerId::new("p").unwrap(),
            acked: 1,
            last_seen_ms: 10_000,
        };
        assert!(!peer.is_active(10_000, 0), "timeout 0: never active");
        assert!(peer.is_active(10_000, 1));
        assert!(peer.is_active(10_999, 1));
        assert!(!peer.is_active(11_000, 1), "exactly the timeout: inactive");
        assert!(peer.is_active(5_000, 1), "a clock that went back: active");
    }
}
