//! The frames of the collection sync socket (`GET /v1/collections/{c}/sync`,
//! `docs/PROTOCOL.md`, "The sync socket") and their binary encoding.
//!
//! A frame is one binary WebSocket message: a `varuint` type, then its
//! fields in lib0's encoding (the one Yjs's own protocols use, so a
//! JavaScript client writes them with `lib0/encoding` and nothing else):
//! `varuint` (LEB128, at most 2^53 − 1 so JavaScript numbers hold it),
//! `string` (length-prefixed UTF-8) and `bytes` (length-prefixed).
//!
//! Why binary and not JSON: a change's payload is bytes, and base64 in JSON
//! costs a third more bytes and an encoding pass per change per subscriber;
//! a changes frame here is the payloads with a few bytes of framing.
//!
//! Decoding never panics and never allocates more than the frame's own
//! length: every count is checked against the bytes left before anything
//! is reserved (`fuzz/fuzz_targets/sync_frames.rs`).
//!
//! Size: about 750 lines of code and 190 of unit tests. Every frame of one
//! protocol is here, in one place, because the encoder and the decoder of a
//! frame must change together and a reviewer compares them side by side.

use crate::http::ChangeKind;
use crate::wire::{EpochHex, Hex64};

/// The largest `varuint`: JavaScript numbers are exact up to here.
pub const MAX_VARUINT: u64 = (1 << 53) - 1;
/// Document ids a hello may name, at most.
pub const MAX_HELLO_DOCS: usize = 4096;

/// Frame types, client → server.
pub mod client_type {
    /// `hello`.
    pub const HELLO: u64 = 1;
    /// `push`.
    pub const PUSH: u64 = 2;
    /// `push_batch`.
    pub const PUSH_BATCH: u64 = 3;
    /// `ack`.
    pub const ACK: u64 = 4;
    /// `awareness`.
    pub const AWARENESS: u64 = 5;
    /// `leave`.
    pub const LEAVE: u64 = 6;
}

/// Frame types, server → client.
pub mod server_type {
    /// `welcome`.
    pub const WELCOME: u64 = 64;
    /// `pushed`.
    pub const PUSHED: u64 = 65;
    /// `push_error`.
    pub const PUSH_ERROR: u64 = 66;
    /// `changes`.
    pub const CHANGES: u64 = 67;
    /// `up_to_date`.
    pub const UP_TO_DATE: u64 = 68;
    /// `acked`.
    pub const ACKED: u64 = 69;
    /// `reset`.
    pub const RESET: u64 = 70;
    /// `error`.
    pub const ERROR: u64 = 71;
    /// `ack_error`.
    pub const ACK_ERROR: u64 = 72;
    /// `presence`.
    pub const PRESENCE: u64 = 73;
}

/// Why a frame does not decode. The server answers any of these with
/// `error {invalid_frame}` and closes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame ends inside a field.
    #[error("the frame ends inside {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// A `varuint` over 2^53 − 1 or longer than 8 bytes.
    #[error("{field} is not a varuint of at most 53 bits")]
    VarUintTooLarge {
        /// The field being read.
        field: &'static str,
    },
    /// A `string` that is not UTF-8.
    #[error("{field} is not UTF-8")]
    NotUtf8 {
        /// The field being read.
        field: &'static str,
    },
    /// An epoch or checksum of the wrong form.
    #[error("{field} is not {expected}")]
    BadValue {
        /// The field being read.
        field: &'static str,
        /// What it should be.
        expected: &'static str,
    },
    /// A frame type this side does not receive.
    #[error("unknown frame type {0}")]
    UnknownType(u64),
    /// Bytes left after the frame's last field.
    #[error("{0} bytes after the end of the frame")]
    TrailingBytes(usize),
    /// A hello naming more than [`MAX_HELLO_DOCS`] documents.
    #[error("a hello names {0} documents; at most {MAX_HELLO_DOCS}")]
    TooManyDocs(u64),
}

/// The client's first frame: who it is and where its cursor stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hello {
    /// The client's peer id (empty: anonymous; its acks are refused).
    pub peer: String,
    /// The cursor: stream the changes after it.
    pub after: u64,
    /// The epoch the cursor belongs to (`None`: the client has none yet).
    pub epoch: Option<EpochHex>,
    /// The log checksum at `after`, checked by the server (`None`: not
    /// checked).
    pub checksum: Option<Hex64>,
    /// The client's schema version (0: whatever the server's is).
    pub schema_version: u32,
    /// Only these documents' changes (empty: the whole collection).
    pub docs: Vec<String>,
}

/// A frame a client sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientFrame {
    /// The first frame.
    Hello(Hello),
    /// One update, answered by `pushed` or `push_error` with the same id.
    Push {
        /// The client's id for the answer.
        id: u64,
        /// The document.
        doc: String,
        /// A Yjs v1 update.
        update: Vec<u8>,
    },
    /// Several updates, committed all or nothing.
    PushBatch {
        /// The client's id for the answer.
        id: u64,
        /// `(doc, update)` in order.
        updates: Vec<(String, Vec<u8>)>,
    },
    /// The client has stored every change ≤ `seq`.
    Ack {
        /// The acknowledged seq.
        seq: u64,
    },
    /// Presence in a document: a y-protocols awareness update (the bytes
    /// `encodeAwarenessUpdate` makes) for the document's room. The first
    /// one for a document joins its room: the server then sends every
    /// current state there, and relays the room's changes until `leave`
    /// or the socket closes.
    Awareness {
        /// The document.
        doc: String,
        /// A y-protocols awareness update.
        update: Vec<u8>,
    },
    /// Leaves a document's room: the states this socket set there are
    /// removed for everyone, and its awareness is no longer relayed here.
    Leave {
        /// The document.
        doc: String,
    },
}

/// A change in a `changes` frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncChange {
    /// Its seq.
    pub seq: u64,
    /// Its document.
    pub doc: String,
    /// Update, delete or snapshot.
    pub kind: ChangeKind,
    /// The schema version it was written under.
    pub schema_version: u32,
    /// The peer that pushed it, if known.
    pub origin: Option<String>,
    /// Yjs v1 bytes (empty for a delete).
    pub payload: Vec<u8>,
}

/// A change to encode, borrowing its parts (the server encodes stored
/// changes without copying their payloads).
#[derive(Clone, Copy, Debug)]
pub struct ChangeRef<'a> {
    /// Its seq.
    pub seq: u64,
    /// Its document.
    pub doc: &'a str,
    /// Update, delete or snapshot.
    pub kind: ChangeKind,
    /// The schema version it was written under.
    pub schema_version: u32,
    /// The peer that pushed it, if known.
    pub origin: Option<&'a str>,
    /// Yjs v1 bytes (empty for a delete).
    pub payload: &'a [u8],
}

/// A frame the server sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerFrame {
    /// The hello is accepted; the stream follows.
    Welcome {
        /// The collection's epoch (`None`: it does not exist yet).
        epoch: Option<EpochHex>,
        /// Its head.
        head: u64,
        /// The server's schema version.
        schema_version: u32,
        /// Pushes the server reads before their answers go out, at most.
        max_pushes_in_flight: u64,
    },
    /// A push is committed (durable).
    Pushed {
        /// The push's id.
        id: u64,
        /// The head after it.
        head: u64,
        /// Per update, its seq (`None`: it added nothing).
        seqs: Vec<Option<u64>>,
    },
    /// A push is refused; the socket stays open.
    PushError {
        /// The push's id.
        id: u64,
        /// A code of [`crate::ERROR_CODES`].
        code: String,
        /// For people.
        message: String,
    },
    /// The next changes of the stream.
    Changes {
        /// The stream is complete through this seq (≥ the last change's).
        through: u64,
        /// The log checksum at `through`.
        checksum: Option<Hex64>,
        /// The changes, in seq order.
        changes: Vec<SyncChange>,
    },
    /// Everything up to `head` has been sent.
    UpToDate {
        /// The head caught up to.
        head: u64,
        /// The log checksum at `head` (`None` at 0).
        checksum: Option<Hex64>,
    },
    /// The peer's stored ack.
    Acked {
        /// The highest seq it ever acknowledged.
        seq: u64,
    },
    /// The client's cursor belongs to another history; the socket closes.
    Reset {
        /// `foreign_epoch`, `cursor_beyond_head` or `history_replaced`.
        reason: String,
        /// The server's epoch.
        epoch: Option<EpochHex>,
        /// Its head.
        head: u64,
    },
    /// An ack is refused (no peer id, a token without `ack`, beyond the
    /// head); the socket stays open.
    AckError {
        /// The seq the ack named.
        seq: u64,
        /// A code of [`crate::ERROR_CODES`].
        code: String,
        /// For people.
        message: String,
    },
    /// The connection is refused; the socket closes.
    Error {
        /// A code of [`crate::ERROR_CODES`].
        code: String,
        /// For people.
        message: String,
    },
    /// Presence in a document whose room the client joined: a y-protocols
    /// awareness update (states of any clients, `null` for a removed one),
    /// from this socket's room or a `/yws` connection to the same document.
    Presence {
        /// The document.
        doc: String,
        /// A y-protocols awareness update.
        update: Vec<u8>,
    },
}

/// Appends lib0 fields to a buffer.
#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty frame with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
        }
    }

    /// Appends a `varuint`. Values above [`MAX_VARUINT`] are a caller bug
    /// (seqs and ids stay far below); they are written as they are and a
    /// JavaScript reader would lose precision.
    pub fn varuint(&mut self, mut value: u64) -> &mut Self {
        debug_assert!(value <= MAX_VARUINT, "varuint {value} over 2^53 - 1");
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                self.buf.push(byte);
                return self;
            }
            self.buf.push(byte | 0x80);
        }
    }

    /// Appends a `string`.
    pub fn string(&mut self, value: &str) -> &mut Self {
        self.bytes(value.as_bytes())
    }

    /// Appends `bytes`.
    pub fn bytes(&mut self, value: &[u8]) -> &mut Self {
        self.varuint(value.len() as u64);
        self.buf.extend_from_slice(value);
        self
    }

    /// The frame.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads lib0 fields from a frame.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `frame` from its start.
    pub fn new(frame: &'a [u8]) -> Self {
        Self { rest: frame }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Reads a `varuint` of at most 53 bits.
    pub fn varuint(&mut self, field: &'static str) -> Result<u64, FrameError> {
        let mut value: u64 = 0;
        for i in 0..8 {
            let Some((&byte, rest)) = self.rest.split_first() else {
                return Err(FrameError::Truncated { field });
            };
            self.rest = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                if value > MAX_VARUINT {
                    return Err(FrameError::VarUintTooLarge { field });
                }
                return Ok(value);
            }
        }
        Err(FrameError::VarUintTooLarge { field })
    }

    /// Reads a `varuint` that must fit a `u32` (schema versions).
    pub fn varuint32(&mut self, field: &'static str) -> Result<u32, FrameError> {
        u32::try_from(self.varuint(field)?).map_err(|_| FrameError::BadValue {
            field,
            expected: "a 32-bit number",
        })
    }

    /// Reads `bytes`, borrowing them from the frame.
    pub fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], FrameError> {
        let len = self.varuint(field)?;
        let len = usize::try_from(len).map_err(|_| FrameError::Truncated { field })?;
        if len > self.rest.len() {
            return Err(FrameError::Truncated { field });
        }
        let (value, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(value)
    }

    /// Reads a `string`.
    pub fn string(&mut self, field: &'static str) -> Result<&'a str, FrameError> {
        std::str::from_utf8(self.bytes(field)?).map_err(|_| FrameError::NotUtf8 { field })
    }

    /// Reads a `string` that is empty (`None`) or an epoch.
    fn epoch(&mut self, field: &'static str) -> Result<Option<EpochHex>, FrameError> {
        let text = self.string(field)?;
        if text.is_empty() {
            return Ok(None);
        }
        EpochHex::parse(text).map(Some).ok_or(FrameError::BadValue {
            field,
            expected: "empty or 32 hex digits",
        })
    }

    /// Reads a `string` that is empty (`None`) or a checksum.
    fn checksum(&mut self, field: &'static str) -> Result<Option<Hex64>, FrameError> {
        let text = self.string(field)?;
        if text.is_empty() {
            return Ok(None);
        }
        Hex64::parse(text).map(Some).ok_or(FrameError::BadValue {
            field,
            expected: "empty or 16 hex digits",
        })
    }

    /// A count of items each at least `min_item_bytes` long: refused when
    /// the frame cannot hold them, so no decoder reserves memory for items
    /// that are not there.
    fn count(&mut self, field: &'static str, min_item_bytes: usize) -> Result<usize, FrameError> {
        let count = self.varuint(field)?;
        let fits = usize::try_from(count)
            .ok()
            .filter(|n| n.saturating_mul(min_item_bytes) <= self.rest.len());
        fits.ok_or(FrameError::Truncated { field })
    }

    /// Refuses bytes after the frame's last field.
    fn end(&self) -> Result<(), FrameError> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(FrameError::TrailingBytes(n)),
        }
    }
}

fn optional_string<T: std::fmt::Display>(value: &Option<T>) -> String {
    value.as_ref().map(ToString::to_string).unwrap_or_default()
}

impl ClientFrame {
    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            ClientFrame::Hello(hello) => {
                w.varuint(client_type::HELLO)
                    .string(&hello.peer)
                    .varuint(hello.after)
                    .string(&optional_string(&hello.epoch))
                    .string(&optional_string(&hello.checksum))
                    .varuint(u64::from(hello.schema_version))
                    .varuint(hello.docs.len() as u64);
                for doc in &hello.docs {
                    w.string(doc);
                }
            }
            ClientFrame::Push { id, doc, update } => {
                w.varuint(client_type::PUSH)
                    .varuint(*id)
                    .string(doc)
                    .bytes(update);
            }
            ClientFrame::PushBatch { id, updates } => {
                w.varuint(client_type::PUSH_BATCH)
                    .varuint(*id)
                    .varuint(updates.len() as u64);
                for (doc, update) in updates {
                    w.string(doc).bytes(update);
                }
            }
            ClientFrame::Ack { seq } => {
                w.varuint(client_type::ACK).varuint(*seq);
            }
            ClientFrame::Awareness { doc, update } => {
                w.varuint(client_type::AWARENESS).string(doc).bytes(update);
            }
            ClientFrame::Leave { doc } => {
                w.varuint(client_type::LEAVE).string(doc);
            }
        }
        w.finish()
    }

    /// Decodes one frame. Errors: [`FrameError`]; never panics.
    pub fn decode(frame: &[u8]) -> Result<Self, FrameError> {
        let mut r = Reader::new(frame);
        let decoded = match r.varuint("type")? {
            client_type::HELLO => {
                let peer = r.string("peer")?.to_owned();
                let after = r.varuint("after")?;
                let epoch = r.epoch("epoch")?;
                let checksum = r.checksum("checksum")?;
                let schema_version = r.varuint32("schema_version")?;
                let count = r.varuint("docs")?;
                if count > MAX_HELLO_DOCS as u64 {
                    return Err(FrameError::TooManyDocs(count));
                }
                let mut docs = Vec::with_capacity((count as usize).min(r.remaining()));
                for _ in 0..count {
                    docs.push(r.string("docs[]")?.to_owned());
                }
                ClientFrame::Hello(Hello {
                    peer,
                    after,
                    epoch,
                    checksum,
                    schema_version,
                    docs,
                })
            }
            client_type::PUSH => ClientFrame::Push {
                id: r.varuint("id")?,
                doc: r.string("doc")?.to_owned(),
                update: r.bytes("update")?.to_vec(),
            },
            client_type::PUSH_BATCH => {
                let id = r.varuint("id")?;
                // Each update is at least two length bytes.
                let count = r.count("count", 2)?;
                let mut updates = Vec::with_capacity(count);
                for _ in 0..count {
                    let doc = r.string("doc")?.to_owned();
                    updates.push((doc, r.bytes("update")?.to_vec()));
                }
                ClientFrame::PushBatch { id, updates }
            }
            client_type::ACK => ClientFrame::Ack {
                seq: r.varuint("seq")?,
            },
            client_type::AWARENESS => ClientFrame::Awareness {
                doc: r.string("doc")?.to_owned(),
                update: r.bytes("update")?.to_vec(),
            },
            client_type::LEAVE => ClientFrame::Leave {
                doc: r.string("doc")?.to_owned(),
            },
            other => return Err(FrameError::UnknownType(other)),
        };
        r.end()?;
        Ok(decoded)
    }
}

/// Encodes a `changes` frame from borrowed changes (the server's send
/// path: no payload is copied but into the frame).
pub fn encode_changes(through: u64, checksum: Option<Hex64>, changes: &[ChangeRef<'_>]) -> Vec<u8> {
    let payload_bytes: usize = changes.iter().map(|c| c.payload.len() + c.doc.len()).sum();
    let mut w = Writer::with_capacity(32 + payload_bytes + 24 * changes.len());
    w.varuint(server_type::CHANGES)
        .varuint(through)
        .string(&optional_string(&checksum))
        .varuint(changes.len() as u64);
    for change in changes {
        w.varuint(change.seq)
            .string(change.doc)
            .varuint(change.kind.code())
            .varuint(u64::from(change.schema_version))
            .string(change.origin.unwrap_or(""))
            .bytes(change.payload);
    }
    w.finish()
}

impl ServerFrame {
    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            ServerFrame::Welcome {
                epoch,
                head,
                schema_version,
                max_pushes_in_flight,
            } => {
                w.varuint(server_type::WELCOME)
                    .string(&optional_string(epoch))
                    .varuint(*head)
                    .varuint(u64::from(*schema_version))
                    .varuint(*max_pushes_in_flight);
            }
            ServerFrame::Pushed { id, head, seqs } => {
                w.varuint(server_type::PUSHED)
                    .varuint(*id)
                    .varuint(*head)
                    .varuint(seqs.len() as u64);
                for seq in seqs {
                    w.varuint(seq.unwrap_or(0));
                }
            }
            ServerFrame::PushError { id, code, message } => {
                w.varuint(server_type::PUSH_ERROR)
                    .varuint(*id)
                    .string(code)
                    .string(message);
            }
            ServerFrame::Changes {
                through,
                checksum,
                changes,
            } => {
                let refs: Vec<ChangeRef<'_>> = changes
                    .iter()
                    .map(|c| ChangeRef {
                        seq: c.seq,
                        doc: &c.doc,
                        kind: c.kind,
                        schema_version: c.schema_version,
                        origin: c.origin.as_deref(),
                        payload: &c.payload,
                    })
                    .collect();
                return encode_changes(*through, *checksum, &refs);
            }
            ServerFrame::UpToDate { head, checksum } => {
                w.varuint(server_type::UP_TO_DATE)
                    .varuint(*head)
                    .string(&optional_string(checksum));
            }
            ServerFrame::Acked { seq } => {
                w.varuint(server_type::ACKED).varuint(*seq);
            }
            ServerFrame::Reset {
                reason,
                epoch,
                head,
            } => {
                w.varuint(server_type::RESET)
                    .string(reason)
                    .string(&optional_string(epoch))
                    .varuint(*head);
            }
            ServerFrame::AckError { seq, code, message } => {
                w.varuint(server_type::ACK_ERROR)
                    .varuint(*seq)
                    .string(code)
                    .string(message);
            }
            ServerFrame::Error { code, message } => {
                w.varuint(server_type::ERROR).string(code).string(message);
            }
            ServerFrame::Presence { doc, update } => {
                w.varuint(server_type::PRESENCE).string(doc).bytes(update);
            }
        }
        w.finish()
    }

    /// Decodes one frame. Errors: [`FrameError`]; never panics.
    pub fn decode(frame: &[u8]) -> Result<Self, FrameError> {
        let mut r = Reader::new(frame);
        let decoded = match r.varuint("type")? {
            server_type::WELCOME => ServerFrame::Welcome {
                epoch: r.epoch("epoch")?,
                head: r.varuint("head")?,
                schema_version: r.varuint32("schema_version")?,
                max_pushes_in_flight: r.varuint("max_pushes_in_flight")?,
            },
            server_type::PUSHED => {
                let id = r.varuint("id")?;
                let head = r.varuint("head")?;
                let count = r.count("count", 1)?;
                let mut seqs = Vec::with_capacity(count);
                for _ in 0..count {
                    let seq = r.varuint("seq")?;
                    seqs.push((seq != 0).then_some(seq));
                }
                ServerFrame::Pushed { id, head, seqs }
            }
            server_type::PUSH_ERROR => ServerFrame::PushError {
                id: r.varuint("id")?,
                code: r.string("code")?.to_owned(),
                message: r.string("message")?.to_owned(),
            },
            server_type::CHANGES => {
                let through = r.varuint("through")?;
                let checksum = r.checksum("checksum")?;
                // seq, doc length, kind, schema, origin length, payload length.
                let count = r.count("count", 6)?;
                let mut changes = Vec::with_capacity(count);
                for _ in 0..count {
                    let seq = r.varuint("seq")?;
                    let doc = r.string("doc")?.to_owned();
                    let kind =
                        ChangeKind::from_code(r.varuint("kind")?).ok_or(FrameError::BadValue {
                            field: "kind",
                            expected: "0, 1 or 2",
                        })?;
                    let schema_version = r.varuint32("schema_version")?;
                    let origin = r.string("origin")?;
                    let origin = (!origin.is_empty()).then(|| origin.to_owned());
                    let payload = r.bytes("payload")?.to_vec();
                    changes.push(SyncChange {
                        seq,
                        doc,
                        kind,
                        schema_version,
                        origin,
                        payload,
                    });
                }
                ServerFrame::Changes {
                    through,
                    checksum,
                    changes,
                }
            }
            server_type::UP_TO_DATE => ServerFrame::UpToDate {
                head: r.varuint("head")?,
                checksum: r.checksum("checksum")?,
            },
            server_type::ACKED => ServerFrame::Acked {
                seq: r.varuint("seq")?,
            },
            server_type::RESET => ServerFrame::Reset {
                reason: r.string("reason")?.to_owned(),
                epoch: r.epoch("epoch")?,
                head: r.varuint("head")?,
            },
            server_type::ACK_ERROR => ServerFrame::AckError {
                seq: r.varuint("seq")?,
                code: r.string("code")?.to_owned(),
                message: r.string("message")?.to_owned(),
            },
            server_type::ERROR => ServerFrame::Error {
                code: r.string("code")?.to_owned(),
                message: r.string("message")?.to_owned(),
            },
            server_type::PRESENCE => ServerFrame::Presence {
                doc: r.string("doc")?.to_owned(),
                update: r.bytes("update")?.to_vec(),
            },
            other => return Err(FrameError::UnknownType(other)),
        };
        r.end()?;
        Ok(decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_client_frame() -> Vec<ClientFrame> {
        vec![
            ClientFrame::Hello(Hello {
                peer: "phone".into(),
                after: 300,
                epoch: Some(EpochHex([9; 16])),
                checksum: Some(Hex64(u64::MAX)),
                schema_version: 2,
                docs: vec!["a".into(), "ü".into()],
            }),
            ClientFrame::Hello(Hello::default()),
            ClientFrame::Push {
                id: 1,
                doc: "note".into(),
                update: vec![0, 0],
            },
            ClientFrame::PushBatch {
                id: MAX_VARUINT,
                updates: vec![("a".into(), vec![1]), ("b".into(), vec![])],
            },
            ClientFrame::Ack { seq: 128 },
            ClientFrame::Awareness {
                doc: "note".into(),
                update: vec![1, 7, 1, 4, b'n', b'u', b'l', b'l'],
            },
            ClientFrame::Leave { doc: "note".into() },
        ]
    }

    fn every_server_frame() -> Vec<ServerFrame> {
        vec![
            ServerFrame::Welcome {
                epoch: None,
                head: 0,
                schema_version: 1,
                max_pushes_in_flight: 256,
            },
            ServerFrame::Pushed {
                id: 3,
                head: 9,
                seqs: vec![Some(8), None, Some(9)],
            },
            ServerFrame::PushError {
                id: 4,
                code: "document_deleted".into(),
                message: "gone".into(),
            },
            ServerFrame::Changes {
                through: 12,
                checksum: Some(Hex64(5)),
                changes: vec![
                    SyncChange {
                        seq: 11,
                        doc: "a".into(),
                        kind: ChangeKind::Snapshot,
                        schema_version: 1,
                        origin: None,
                        payload: vec![1, 2, 3],
                    },
                    SyncChange {
                        seq: 12,
                        doc: "b".into(),
                        kind: ChangeKind::Delete,
                        schema_version: 1,
                        origin: Some("phone".into()),
                        payload: vec![],
                    },
                ],
            },
            ServerFrame::UpToDate {
                head: 12,
                checksum: Some(Hex64(5)),
            },
            ServerFrame::UpToDate {
                head: 0,
                checksum: None,
            },
            ServerFrame::Acked { seq: 12 },
            ServerFrame::Presence {
                doc: "note".into(),
                update: vec![0],
            },
            ServerFrame::Reset {
                reason: "history_replaced".into(),
                epoch: Some(EpochHex([1; 16])),
                head: 4,
            },
            ServerFrame::AckError {
                seq: 99,
                code: "ack_beyond_head".into(),
                message: "head is 12".into(),
            },
            ServerFrame::Error {
                code: "schema_too_old".into(),
                message: "upgrade".into(),
            },
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        // Why: the encoder and the decoder are written separately; a field
        // out of order on either side would corrupt every frame after it.
        for frame in every_client_frame() {
            assert_eq!(ClientFrame::decode(&frame.encode()), Ok(frame));
        }
        for frame in every_server_frame() {
            assert_eq!(ServerFrame::decode(&frame.encode()), Ok(frame));
        }
    }

    #[test]
    fn every_truncation_and_extension_of_a_frame_is_refused() {
        // Why: a frame cut short (or with bytes after its end) must be a
        // typed error, never a frame with a silently defaulted field.
        for frame in every_client_frame() {
            let bytes = frame.encode();
            for cut in 0..bytes.len() {
                assert!(
                    ClientFrame::decode(&bytes[..cut]).is_err(),
                    "{frame:?} cut at {cut}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(
                ClientFrame::decode(&longer),
                Err(FrameError::TrailingBytes(1))
            );
        }
        for frame in every_server_frame() {
            let bytes = frame.encode();
            for cut in 0..bytes.len() {
                assert!(
                    ServerFrame::decode(&bytes[..cut]).is_err(),
                    "{frame:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn a_huge_count_reserves_nothing() {
        // Why: a five-byte frame claiming 2^53 updates must be refused
        // before any allocation sized by the claim.
        let mut w = Writer::default();
        w.varuint(client_type::PUSH_BATCH)
            .varuint(1)
            .varuint(MAX_VARUINT);
        assert!(matches!(
            ClientFrame::decode(&w.finish()),
            Err(FrameError::Truncated { field: "count" })
        ));
        let mut w = Writer::default();
        w.varuint(client_type::HELLO)
            .string("")
            .varuint(0)
            .string("")
            .string("")
            .varuint(0)
            .varuint(MAX_HELLO_DOCS as u64 + 1);
        assert!(matches!(
            ClientFrame::decode(&w.finish()),
            Err(FrameError::TooManyDocs(_))
        ));
    }

    #[test]
    fn varuints_match_lib0_and_stop_at_53_bits() {
        // Why: a JavaScript client writes these with lib0; the bytes must be
        // the same, and a value JavaScript cannot hold must be refused.
        let mut w = Writer::default();
        w.varuint(0).varuint(127).varuint(128).varuint(300);
        assert_eq!(w.finish(), vec![0, 127, 0x80, 1, 0xac, 2]);
        let too_big = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x10];
        assert!(matches!(
            Reader::new(&too_big).varuint("x"),
            Err(FrameError::VarUintTooLarge { .. })
        ));
        let mut w = Writer::default();
        w.varuint(MAX_VARUINT);
        assert_eq!(Reader::new(&w.finish()).varuint("x"), Ok(MAX_VARUINT));
    }
}
