//! The seqsync wire protocol, in one place.
//!
//! Every byte a client and the host server exchange is described by a type
//! of this crate: the JSON bodies of the HTTP routes ([`http`]), the JSON
//! messages of the subscribe socket ([`http::SubscribeMessage`]), and the
//! binary frames of the collection sync socket ([`sync`]). The server builds
//! its answers from these types and decodes requests with them; the Rust
//! replica decodes answers with them, so a missing or mistyped field is an
//! error on both sides instead of a silent default. `docs/PROTOCOL.md` is
//! the same protocol in prose, for clients in other languages; the crate's
//! tests parse every example of that page as its type.
//!
//! Why a crate of its own: the protocol used to be written three times
//! (the server's `json!()`, its private request structs, the replica's
//! `serde_json::Value` indexing), and the copies had drifted. This crate is
//! plain data: serde, base64 and a small lib0 codec, no runtime, no I/O.

pub mod http;
pub mod sync;
pub mod webhook;
pub mod wire;

pub use wire::{Base64Bytes, EpochHex, Hex64};

/// Header of a document read: the collection seq the state reflects (stream
/// from there).
pub const CURSOR_HEADER: &str = "x-seqsync-cursor";
/// Header of a full document read: the digest of the state served (64 hex
/// digits; absent while the state leaves structures pending).
pub const DIGEST_HEADER: &str = "x-seqsync-digest";
/// Header of a document read: the schema version of the data served.
pub const SCHEMA_VERSION_HEADER: &str = "x-seqsync-schema-version";
/// Request header of a push: the peer id recorded as the change's origin.
pub const PEER_ID_HEADER: &str = "x-peer-id";
/// Request header of a push: the client's schema version.
pub const PUSH_SCHEMA_VERSION_HEADER: &str = "x-schema-version";
/// Answer header of a `not_owner` refusal: the node that owns the
/// collection.
pub const OWNER_HEADER: &str = "x-seqsync-owner";

/// Every error code the server may answer, on any route or socket. A
/// client branches on these; `docs/PROTOCOL.md` has a row for each (its
/// test checks).
pub const ERROR_CODES: &[&str] = &[
    "invalid_name",
    "invalid_update",
    "invalid_state_vector",
    "invalid_json",
    "invalid_base64",
    "invalid_query",
    "invalid_header",
    "invalid_body",
    "invalid_frame",
    "not_a_websocket",
    "not_found",
    "empty_batch",
    "batch_too_large",
    "too_large",
    "ack_beyond_head",
    "reserved_client_id",
    "unauthorized",
    "forbidden",
    "document_not_found",
    "collection_not_found",
    "document_deleted",
    "schema_too_old",
    "schema_too_new",
    "reset",
    "not_owner",
    "body_timeout",
    "too_many_connections",
    "too_many_rooms",
    "overloaded",
    "commit_timeout",
    "storage",
    "shutting_down",
    "migration_failed",
    "document_unreadable",
    "history_compacted",
    "too_many_versions",
    "internal",
];
