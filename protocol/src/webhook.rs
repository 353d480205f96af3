//! What a webhook receiver is sent: one JSON body per request, several
//! changes of one collection each, in seq order.
//!
//! Deliveries come from the log by cursor (the server's `[[webhooks]]`),
//! so a receiver sees every change at least once and in seq order per
//! collection; a request it did not answer with a 2xx is sent again (the
//! same changes first, possibly with more after them). A receiver that must
//! not act twice keeps, per collection, the highest `seq` it has handled
//! and skips what is at or below it: that makes at-least-once exactly-once
//! for it.
//!
//! A change carries its document, seq and kind; its Yjs bytes only when the
//! hook asks for them (`include_updates`). What a receiver usually does is
//! fetch the document it names, as JSON
//! (`GET /v1/collections/{c}/documents/{d}?format=json`, or `?at=SEQ` for
//! exactly that version) and index, audit or copy it.
//!
//! Every request is signed: [`SIGNATURE_HEADER`] holds
//! `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` over the
//! exact body bytes (docs/WEBHOOKS.md has the scheme and verification
//! snippets).

use serde::{Deserialize, Serialize};

use crate::http::ChangeKind;
use crate::wire::{Base64Bytes, EpochHex};

/// Request header: the signature, `t=<unix seconds>,v1=<64 hex digits>`.
pub const SIGNATURE_HEADER: &str = "x-seqsync-signature";
/// Request header: the delivery's id, `<hook>/<collection>/<first>-<last>`
/// (the seqs it carries); a re-send of the same changes has the same id.
pub const DELIVERY_HEADER: &str = "x-seqsync-delivery";
/// Request header: 1 for a first attempt, then 2, 3… while it is retried.
pub const ATTEMPT_HEADER: &str = "x-seqsync-attempt";

/// The body of one webhook request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// The hook's `name` in the server's configuration.
    pub hook: String,
    /// The collection the changes belong to.
    pub collection: String,
    /// The collection's epoch: seqs compare only within one. A new epoch
    /// (the collection was restored or imported) starts again from seq 1.
    pub epoch: EpochHex,
    /// The changes, in seq order, consecutive in the log (none left out).
    pub changes: Vec<WebhookChange>,
    /// The collection's head when the batch was read: `head − last seq` is
    /// how far behind this delivery is.
    pub head: u64,
}

/// One change of a [`WebhookDelivery`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookChange {
    /// Its seq in the collection.
    pub seq: u64,
    /// Its document.
    pub doc: String,
    /// `update`, `delete`, or `snapshot` (a hook that fell behind past
    /// `compaction.peer_timeout_secs` receives compacted history as
    /// snapshots, like any truant peer).
    pub kind: ChangeKind,
    /// The payload's size.
    pub size_bytes: u64,
    /// The peer that pushed it, when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Who pushed it: the subject (`sub`) of the signed token the push
    /// came with (absent without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// When it was accepted, ms since the Unix epoch (absent when unknown:
    /// stored before servers recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_ms: Option<u64>,
    /// The Yjs v1 bytes, base64; only when the hook sets `include_updates`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<Base64Bytes>,
}
