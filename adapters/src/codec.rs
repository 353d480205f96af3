//! Byte encodings for backends that store opaque values (redb).
//!
//! Fixed little-endian layouts, versioned by the store's format number: change
//! this file only together with a format bump. Decoding never panics; bytes
//! that do not decode are reported as [`StorageError::Corrupt`].

use seqsync_engine::{
    Change, ChangeKind, CollectionMeta, DocId, Epoch, PeerId, Pin, Seq, StorageError,
};

/// Encoded size of [`CollectionMeta`] (format 2).
const META_BYTES: usize = 16 + 8 + 4 + 8 + 8;

/// Format 2: `epoch[16] | head u64 | schema_version u32 | created_ms u64 |
/// log_checksum u64`. Format 1 had no `log_checksum`.
pub fn encode_meta(meta: &CollectionMeta) -> [u8; META_BYTES] {
    let mut out = [0u8; META_BYTES];
    out[..16].copy_from_slice(&meta.epoch.0);
    out[16..24].copy_from_slice(&meta.head.to_le_bytes());
    out[24..28].copy_from_slice(&meta.schema_version.to_le_bytes());
    out[28..36].copy_from_slice(&meta.created_ms.to_le_bytes());
    out[36..44].copy_from_slice(&meta.log_checksum.to_le_bytes());
    out
}

/// Inverse of [`encode_meta`].
pub fn decode_meta(backend: &'static str, bytes: &[u8]) -> Result<CollectionMeta, StorageError> {
    decode_meta_format(backend, bytes, 2)
}

/// [`decode_meta`] of a store at `format` (1 or 2); format 1 decodes with a
/// log checksum of 0.
pub fn decode_meta_format(
    backend: &'static str,
    bytes: &[u8],
    format: u64,
) -> Result<CollectionMeta, StorageError> {
    let mut reader = Reader::new(backend, bytes, "collection metadata");
    let mut epoch = [0u8; 16];
    epoch.copy_from_slice(reader.take(16)?);
    let meta = CollectionMeta {
        epoch: Epoch(epoch),
        head: reader.u64()?,
        schema_version: reader.u32()?,
        created_ms: reader.u64()?,
        log_checksum: if format >= 2 { reader.u64()? } else { 0 },
    };
    reader.finish()?;
    Ok(meta)
}

/// Format 3: `kind u8 | log_checksum u64 | schema_version u32 | origin_len
/// u16 (0xFFFF = none) | origin | committed_ms u64 | author_len u16 (0xFFFF
/// = none) | author | doc_len u16 | doc | payload` (the seq is the key, not
/// part of the value). Format 2 had no `committed_ms` and `author`; format 1
/// no `log_checksum` either.
pub fn encode_change(change: &Change) -> Vec<u8> {
    let origin = change.origin.as_ref().map(|p| p.as_str().as_bytes());
    // An author longer than 0xFFFE bytes cannot be stored; the engine
    // bounds it far below that (as a peer id).
    let author = change
        .author
        .as_deref()
        .map(str::as_bytes)
        .filter(|a| a.len() < usize::from(u16::MAX));
    let doc = change.doc.as_str().as_bytes();
    let mut out = Vec::with_capacity(
        1 + 8
            + 4
            + 2
            + origin.map_or(0, <[u8]>::len)
            + 8
            + 2
            + author.map_or(0, <[u8]>::len)
            + 2
            + doc.len()
            + change.payload.len(),
    );
    out.push(change.kind.code());
    out.extend_from_slice(&change.log_checksum.to_le_bytes());
    out.extend_from_slice(&change.schema_version.to_le_bytes());
    // Peer ids are at most 256 bytes, so they always fit below 0xFFFF.
    put_optional_str(&mut out, origin);
    out.extend_from_slice(&change.committed_ms.to_le_bytes());
    put_optional_str(&mut out, author);
    out.extend_from_slice(&(doc.len() as u16).to_le_bytes());
    out.extend_from_slice(doc);
    out.extend_from_slice(&change.payload);
    out
}

fn put_optional_str(out: &mut Vec<u8>, text: Option<&[u8]>) {
    match text {
        Some(text) => {
            out.extend_from_slice(&(text.len() as u16).to_le_bytes());
            out.extend_from_slice(text);
        }
        None => out.extend_from_slice(&u16::MAX.to_le_bytes()),
    }
}

/// Inverse of [`encode_change`].
pub fn decode_change(
    backend: &'static str,
    seq: Seq,
    bytes: &[u8],
) -> Result<Change, StorageError> {
    decode_change_format(backend, seq, bytes, 3)
}

/// [`decode_change`] of a store at `format` (1, 2 or 3); format 1 decodes
/// with a log checksum of 0, formats 1 and 2 with no author and a
/// `committed_ms` of 0 (never recorded).
pub fn decode_change_format(
    backend: &'static str,
    seq: Seq,
    bytes: &[u8],
    format: u64,
) -> Result<Change, StorageError> {
    let mut reader = Reader::new(backend, bytes, "change");
    let code = reader.u8()?;
    let kind = ChangeKind::from_code(code)
        .ok_or_else(|| corrupt(backend, format!("change {seq} has unknown kind {code}")))?;
    let log_checksum = if format >= 2 { reader.u64()? } else { 0 };
    let schema_version = reader.u32()?;
    let origin_len = reader.u16()?;
    let origin = if origin_len == u16::MAX {
        None
    } else {
        let text = reader.str(usize::from(origin_len))?;
        Some(PeerId::new(text).map_err(|e| corrupt(backend, format!("change {seq}: {e}")))?)
    };
    let (committed_ms, author) = if format >= 3 {
        let committed_ms = reader.u64()?;
        let author_len = reader.u16()?;
        let author = if author_len == u16::MAX {
            None
        } else {
            Some(reader.str(usize::from(author_len))?.to_owned())
        };
        (committed_ms, author)
    } else {
        (0, None)
    };
    let doc_len = reader.u16()?;
    let doc = DocId::new(reader.str(usize::from(doc_len))?)
        .map_err(|e| corrupt(backend, format!("change {seq}: {e}")))?;
    Ok(Change {
        seq,
        doc,
        kind,
        payload: reader.rest().to_vec(),
        schema_version,
        origin,
        author,
        committed_ms,
        log_checksum,
    })
}

/// A pin's value (its collection, document and name are the key):
/// `seq u64 | created_ms u64 | author_len u16 (0xFFFF = none) | author`.
pub fn encode_pin(pin: &Pin) -> Vec<u8> {
    let author = pin
        .author
        .as_deref()
        .map(str::as_bytes)
        .filter(|a| a.len() < usize::from(u16::MAX));
    let mut out = Vec::with_capacity(8 + 8 + 2 + author.map_or(0, <[u8]>::len));
    out.extend_from_slice(&pin.seq.to_le_bytes());
    out.extend_from_slice(&pin.created_ms.to_le_bytes());
    put_optional_str(&mut out, author);
    out
}

/// Inverse of [`encode_pin`], for the pin keyed by `doc` and `name`.
pub fn decode_pin(
    backend: &'static str,
    doc: &str,
    name: &str,
    bytes: &[u8],
) -> Result<Pin, StorageError> {
    let mut reader = Reader::new(backend, bytes, "pin");
    let seq = reader.u64()?;
    let created_ms = reader.u64()?;
    let author_len = reader.u16()?;
    let author = if author_len == u16::MAX {
        None
    } else {
        Some(reader.str(usize::from(author_len))?.to_owned())
    };
    reader.finish()?;
    Ok(Pin {
        doc: DocId::new(doc).map_err(|e| corrupt(backend, format!("pin {name:?}: {e}")))?,
        name: name.to_owned(),
        seq,
        created_ms,
        author,
    })
}

fn corrupt(backend: &'static str, detail: String) -> StorageError {
    StorageError::Corrupt { backend, detail }
}

struct Reader<'a> {
    backend: &'static str,
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(backend: &'static str, bytes: &'a [u8], what: &'static str) -> Self {
        Self {
            backend,
            bytes,
            what,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StorageError> {
        if self.bytes.len() < n {
            return Err(corrupt(self.backend, format!("{} is truncated", self.what)));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StorageError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, StorageError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, StorageError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, StorageError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, StorageError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn str(&mut self, len: usize) -> Result<&'a str, StorageError> {
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map_err(|_| corrupt(self.backend, format!("{} holds invalid UTF-8", self.what)))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    fn finish(self) -> Result<(), StorageError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(corrupt(
                self.backend,
                format!("{} has trailing bytes", self.what),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encoding is the on-disk format of redb stores: every field must
    /// survive, and damaged bytes must be an error, never a panic.
    #[test]
    fn change_and_meta_round_trip_and_truncation_is_corrupt() {
        let change = Change {
            seq: 7,
            doc: DocId::new("dé").unwrap(),
            kind: ChangeKind::Snapshot,
            payload: vec![1, 2, 3],
            schema_version: 4,
            origin: Some(PeerId::new("p1").unwrap()),
            author: None,
            committed_ms: 0,
            log_checksum: 0xdead_beef_0123,
        };
        let bytes = encode_change(&change);
        assert_eq!(decode_change("t", 7, &bytes).unwrap(), change);
        let anonymous = Change {
            origin: None,
            log_checksum: 0,
            ..change
        };
        assert_eq!(
            decode_change("t", 7, &encode_change(&anonymous)).unwrap(),
            anonymous
        );
        for cut in 0..8 {
            assert!(matches!(
                decode_change("t", 7, &bytes[..cut]),
                Err(StorageError::Corrupt { .. })
            ));
        }
        let meta = CollectionMeta {
            epoch: Epoch([9; 16]),
            head: 12,
            schema_version: 3,
            created_ms: 99,
            log_checksum: u64::MAX - 5,
        };
        assert_eq!(decode_meta("t", &encode_meta(&meta)).unwrap(), meta);
        assert!(decode_meta("t", &encode_meta(&meta)[..20]).is_err());
    }

    /// A pin is read back as written, with and without an author; a cut
    /// or padded value is `Corrupt`, never a wrong pin.
    #[test]
    fn pin_round_trips_and_a_damaged_one_is_corrupt() {
        for author in [Some("ünïcode user".to_owned()), None] {
            let pin = Pin {
                doc: DocId::new("d").unwrap(),
                name: "as signed".to_owned(),
                seq: 41,
                created_ms: 1_796_633_112_345,
                author,
            };
            let bytes = encode_pin(&pin);
            assert_eq!(decode_pin("t", "d", "as signed", &bytes).unwrap(), pin);
            for cut in 0..bytes.len() {
                assert!(decode_pin("t", "d", "as signed", &bytes[..cut]).is_err());
            }
            let mut padded = bytes.clone();
            padded.push(0);
            assert!(decode_pin("t", "d", "as signed", &padded).is_err());
        }
    }
}
