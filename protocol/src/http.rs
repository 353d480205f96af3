//! The JSON bodies of the HTTP routes and of the subscribe socket
//! (`docs/PROTOCOL.md`, "HTTP routes").
//!
//! Requests refuse unknown fields (a typo in a client is an error, not an
//! ignored key); answers accept unknown fields (a newer server may add
//! one without breaking older clients). Optional fields are `Option`s that
//! serialize as `null` or are left out, as documented per field: a client
//! never reads a missing field as zero.

use serde::{Deserialize, Serialize};

use crate::wire::{Base64Bytes, EpochHex, Hex64};

/// Every refusal: `{"error": {"code", "message"}}`, plus the server's
/// `head` and `epoch` on a `reset`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    /// What went wrong.
    pub error: ErrorDetail,
    /// On a `reset`: the server's head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<u64>,
    /// On a `reset`: the server's epoch (`null` when the collection does
    /// not exist).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "optional_epoch"
    )]
    pub epoch: Option<Option<EpochHex>>,
    /// On `schema_too_old` / `schema_too_new`: the client's schema version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<u32>,
    /// On `schema_too_old` / `schema_too_new`: the collection's (the
    /// server's) schema version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<u32>,
    /// On `schema_too_old`: the oldest schema version the server accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_supported: Option<u32>,
    /// On `not_owner`: the node that owns the collection (its URL when it
    /// has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// On `not_owner`: how long the owner's lease may still last; on
    /// `commit_timeout`: when to retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// On `history_compacted`: the earliest seq the document can be read
    /// at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earliest_seq: Option<u64>,
}

impl ErrorAnswer {
    /// An answer with a code and a message and no other field.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
            head: None,
            epoch: None,
            client: None,
            collection: None,
            min_supported: None,
            owner: None,
            retry_after_ms: None,
            earliest_seq: None,
        }
    }
}

/// An error's code and message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, one of [`crate::ERROR_CODES`]: what a client branches on.
    pub code: String,
    /// For people.
    pub message: String,
}

/// `Option<Option<EpochHex>>` as a field that is absent (outer `None`),
/// `null` or an epoch.
mod optional_epoch {
    use super::EpochHex;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        value: &Option<Option<EpochHex>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(inner) => inner.serialize(serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<EpochHex>>, D::Error> {
        Option::<EpochHex>::deserialize(deserializer).map(Some)
    }
}

/// `POST …/documents/{d}/updates` → 200.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushAnswer {
    /// The change's seq; `null` when the update added nothing (no-op).
    pub seq: Option<u64>,
    /// The collection's head after the push.
    pub head: u64,
}

/// `POST …/batch` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The updates, committed all or nothing in this order.
    pub updates: Vec<BatchUpdate>,
}

/// One update of a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchUpdate {
    /// The document.
    pub doc: String,
    /// A Yjs v1 update, base64.
    pub update: Base64Bytes,
}

/// `POST …/batch` → 200.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAnswer {
    /// Per update, its seq (`null`: a no-op).
    pub seqs: Vec<Option<u64>>,
    /// The head after the batch.
    pub head: u64,
}

/// `DELETE …/documents/{d}` → 200.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteAnswer {
    /// The tombstone's seq; `null` when the document was already deleted.
    pub seq: Option<u64>,
    /// The head after the delete.
    pub head: u64,
}

/// What a change is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// A Yjs v1 update.
    Update,
    /// The document's tombstone (empty payload).
    Delete,
    /// Compaction's merge of the document's older changes, applied as an
    /// update.
    Snapshot,
}

impl ChangeKind {
    /// The kind's number in sync socket frames.
    pub fn code(self) -> u64 {
        match self {
            ChangeKind::Update => 0,
            ChangeKind::Delete => 1,
            ChangeKind::Snapshot => 2,
        }
    }

    /// The kind of a frame's number, if it is one.
    pub fn from_code(code: u64) -> Option<Self> {
        match code {
            0 => Some(ChangeKind::Update),
            1 => Some(ChangeKind::Delete),
            2 => Some(ChangeKind::Snapshot),
            _ => None,
        }
    }
}

/// One change of the log, in JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeJson {
    /// Its seq.
    pub seq: u64,
    /// Its document.
    pub doc: String,
    /// Update, delete or snapshot.
    pub kind: ChangeKind,
    /// The Yjs v1 bytes, base64 (empty for a delete).
    pub update: Base64Bytes,
    /// The peer that pushed it, when the client said who it is (absent
    /// otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The schema version it was written under.
    pub schema_version: u32,
}

/// `GET …/changes?after=N&limit=M[&epoch=E][&checksum=C]` → 200.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesAnswer {
    /// Changes with seq > `after`, in order.
    pub changes: Vec<ChangeJson>,
    /// Where to continue (the last change's seq, or `after`).
    pub cursor: u64,
    /// Whether changes follow `cursor`.
    pub has_more: bool,
    /// The head when the page was read.
    pub head: u64,
    /// The collection's epoch (`null`: the collection does not exist).
    pub epoch: Option<EpochHex>,
    /// The schema version every document on the server is at.
    pub schema_version: u32,
    /// The log checksum at `cursor` (`0000000000000000` at 0).
    pub cursor_checksum: Hex64,
}

/// One entry of `GET /v1/collections`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionJson {
    /// The collection's name.
    pub name: String,
    /// Its head: the seq of its latest change.
    pub head: u64,
    /// When it was created (milliseconds since the Unix epoch).
    pub created_ms: u64,
    /// Its schema version.
    pub schema_version: u32,
}

/// `GET /v1/collections?after=NAME&limit=N` → 200: the collections the
/// request may read, in name order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionsAnswer {
    /// This page.
    pub collections: Vec<CollectionJson>,
    /// Pass as `after` for the next page; `null` when this page is the last.
    pub next: Option<String>,
}

/// One entry of `GET …/documents`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentJson {
    /// The document's id.
    pub id: String,
    /// The seq of its latest change.
    pub last_seq: u64,
    /// Payload bytes of its stored changes (after compaction, about its
    /// snapshot's size).
    pub size_bytes: u64,
    /// Whether it is deleted (a tombstone is its latest change).
    pub deleted: bool,
}

/// `GET …/documents?after=ID&limit=N` → 200: the collection's documents in
/// id order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentsAnswer {
    /// This page.
    pub documents: Vec<DocumentJson>,
    /// Pass as `after` for the next page; `null` when this page is the last.
    pub next: Option<String>,
}

/// `GET …/documents/{d}?format=json` → 200: the document's root types as
/// JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocumentContentAnswer {
    /// Root name → its value: a text as its string, a map as an object, an
    /// array as an array, an XML fragment as its XML string; `null` for a
    /// root whose every item was deleted (its type is unknown).
    pub content: serde_json::Map<String, serde_json::Value>,
    /// Root name → the type it was read as: `text`, `map`, `array`,
    /// `xml_fragment` or `unknown`.
    pub types: std::collections::BTreeMap<String, String>,
    /// The cursor the content reflects (stream changes from it).
    pub cursor: u64,
}

/// One entry of `GET …/documents/{d}/history`: a change without its bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntryJson {
    /// Its seq in the collection.
    pub seq: u64,
    /// `update`, `snapshot` (compacted history) or `delete`.
    pub kind: ChangeKind,
    /// Its payload's size.
    pub size_bytes: u64,
    /// The peer that pushed it, when it said.
    pub origin: Option<String>,
    /// Who pushed it: the subject (`sub`) of the signed token the push came
    /// with; `null` without one, and for changes stored before servers
    /// recorded it.
    pub author: Option<String>,
    /// When it was accepted, ms since the Unix epoch; `null` for changes
    /// stored before servers recorded it. A snapshot has the time of the
    /// last change it covers.
    pub committed_ms: Option<u64>,
    /// The schema version it was written under.
    pub schema_version: u32,
}

/// `GET …/documents/{d}/history?after=SEQ&limit=N` → 200.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryAnswer {
    /// The document's changes with seq > `after`, oldest first.
    pub changes: Vec<HistoryEntryJson>,
    /// Whether more follow (ask again with `after` = the last seq).
    pub has_more: bool,
}

/// `POST …/documents/{d}/versions` body: pin the document's current
/// version under a name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    /// The version's name (1–128 bytes, no control characters); pinning a
    /// name again moves it to the current version.
    pub name: String,
}

/// A named version: `POST …/versions` and `DELETE …/versions/{name}`
/// answer one, `GET …/versions` lists them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionJson {
    /// Its name.
    pub name: String,
    /// The document's latest change when it was pinned: read it with
    /// `?at=SEQ` or `?version=NAME`.
    pub seq: u64,
    /// When it was pinned, ms since the Unix epoch.
    pub created_ms: u64,
    /// Who pinned it (a signed token's subject), when known.
    pub author: Option<String>,
}

/// `GET …/documents/{d}/versions` → 200.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionsAnswer {
    /// The document's named versions, oldest seq first.
    pub versions: Vec<VersionJson>,
}

/// `POST …/documents/{d}/restore` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Restore the document as it was at this collection seq.
    pub seq: u64,
}

/// `POST …/documents/{d}/restore` → 200, once the restoring edit is
/// committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreAnswer {
    /// The restoring edit's seq; `null` when the content was equal to the
    /// version already.
    pub seq: Option<u64>,
    /// The version restored: the seq of the document's latest change at or
    /// before the seq asked for.
    pub restored_from: u64,
}

/// A message of the subscribe socket (JSON text, one per WebSocket
/// message): a change, an up-to-date marker, or an error before the
/// server closes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SubscribeMessage {
    /// The next change.
    Change(ChangeJson),
    /// Everything up to `head` has been delivered.
    UpToDate(UpToDateJson),
    /// The stream ended with this error (a `reset`, a storage failure).
    Error(ErrorAnswer),
}

/// `{"up_to_date": head}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpToDateJson {
    /// The head caught up to.
    pub up_to_date: u64,
}

/// `POST …/peers/{p}/ack` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// The peer has every change ≤ `seq`.
    pub seq: u64,
}

/// `POST …/peers/{p}/ack` → 200.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckAnswer {
    /// The stored ack: the highest ever acknowledged.
    pub seq: u64,
}

/// One entry of `GET …/peers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerJson {
    /// The peer id.
    pub peer: String,
    /// Its acknowledged seq.
    pub acked: u64,
    /// Head minus acked.
    pub lag: u64,
    /// When it last acked (milliseconds since the Unix epoch).
    pub last_seen_ms: u64,
    /// Whether compaction waits for it.
    pub active: bool,
}

/// `POST …/recover` body: per document, the state vector the client has
/// (a document not listed gets its full state).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverCollectionRequest {
    /// Document id → Yjs v1 state vector, base64.
    #[serde(default)]
    pub state_vectors: std::collections::BTreeMap<String, Base64Bytes>,
}

/// `POST …/recover` → 200: what a client that must start over needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverCollectionAnswer {
    /// Per live document, what the client lacks (a Yjs v1 update).
    pub documents: Vec<RecoveredDocument>,
    /// The deleted documents.
    pub deleted: Vec<String>,
    /// Stream from here.
    pub cursor: u64,
    /// The collection's epoch (`null`: it does not exist).
    pub epoch: Option<EpochHex>,
    /// The schema version of the documents.
    pub schema_version: u32,
}

/// One document of a recovery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveredDocument {
    /// The document.
    pub doc: String,
    /// What the client lacks, as a Yjs v1 update, base64.
    pub update: Base64Bytes,
}

/// `GET …/digest` → 200.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestAnswer {
    /// The head the digest is consistent at.
    pub head: u64,
    /// The log checksum at `head`.
    pub log_checksum: Hex64,
    /// The digest of every document's state (`null` while a document has
    /// pending structures).
    pub state_digest: Option<Hex64>,
}

/// `POST …/compact` → 200.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactAnswer {
    /// Documents whose changes were folded into a snapshot.
    pub documents_compacted: u64,
    /// Stored changes removed.
    pub changes_removed: u64,
    /// Of those, updates (deltas).
    pub deltas_removed: u64,
    /// Bytes of the compacted documents' changes before.
    pub bytes_before: u64,
    /// ... and after.
    pub bytes_after: u64,
}

/// `GET /healthz` → 200.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthAnswer {
    /// `ok`.
    pub status: String,
    /// The storage backend (`sqlite`, `redb`, `postgres`, `memory`).
    pub backend: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_messages_are_told_apart() {
        // Why: the subscribe socket's messages are untagged; a change, a
        // marker and an error must each parse as themselves.
        let change = r#"{"seq":3,"doc":"a","kind":"update","update":"AQID","schema_version":1}"#;
        assert!(matches!(
            serde_json::from_str::<SubscribeMessage>(change),
            Ok(SubscribeMessage::Change(_))
        ));
        assert!(matches!(
            serde_json::from_str::<SubscribeMessage>(r#"{"up_to_date":3}"#),
            Ok(SubscribeMessage::UpToDate(UpToDateJson { up_to_date: 3 }))
        ));
        let reset = r#"{"error":{"code":"reset","message":"m"},"head":4,"epoch":null}"#;
        let Ok(SubscribeMessage::Error(err)) = serde_json::from_str::<SubscribeMessage>(reset)
        else {
            panic!("a reset must parse as an error");
        };
        assert_eq!(err.head, Some(4));
        assert_eq!(err.epoch, Some(None));
    }

    #[test]
    fn a_missing_answer_field_is_an_error_not_a_default() {
        // Why: the replica used to read `head` with `unwrap_or(0)`.
        assert!(serde_json::from_str::<PushAnswer>(r#"{"seq":1}"#).is_err());
        assert!(serde_json::from_str::<BatchRequest>(r#"{"updates":[],"x":1}"#).is_err());
    }
}
