//! Reads served from memory: a document's state or its full encoding, when
//! memory is exact (no write of it in flight), so a read costs no storage
//! access and a joiner of a large document no fresh encoding.
//!
//! Encodings handed out are cached until the document next changes (the
//! write plan drops them), up to `MAX_SHARED_ENCODED_BYTES` each.

use std::sync::Arc;

use seqsync_engine::{DocId, DocState, Seq};

use super::{
    CachedDoc, CachedRead, CollectionActor, SharedDoc, SharedRead, SharedWhat,
    MAX_SHARED_ENCODED_BYTES,
};

impl CollectionActor {
    /// The document as memory holds it and the committed head, when that
    /// is exactly what storage holds: loaded, not broken, no write of it in
    /// flight, no pending structures (the encoding leaves those out;
    /// storage knows which cursor re-delivers them), and an encoding that
    /// decodes. `None`: read storage.
    pub(super) fn exact_doc(&self, doc: &DocId) -> Option<(&DocState, Seq)> {
        let state = self.state.as_ref()?;
        if self.broken || self.doc_inflight.contains_key(doc) {
            return None;
        }
        let loaded = self.docs.get(doc)?;
        // Unreadable (F2): the storage path answers the typed error.
        if loaded.has_pending() || loaded.check_readable().is_err() {
            return None;
        }
        Some((loaded, state.committed_head))
    }

    pub(super) fn cached_read(&self, msg: CachedRead) -> Option<CachedDoc> {
        let (doc, head) = self.exact_doc(&msg.doc)?;
        if doc.deleted {
            return Some(CachedDoc::Deleted);
        }
        if doc.state_vector().is_empty() {
            // As in `shared_read`: every stored update adds content.
            return Some(CachedDoc::Missing);
        }
        let update = match &msg.state_vector {
            Some(sv) => doc.encode_diff(sv),
            None => doc.encode_state(),
        };
        Some(CachedDoc::State(update, head))
    }

    pub(super) fn shared_read(&mut self, msg: &SharedRead) -> SharedDoc {
        let Some((doc, head)) = self.exact_doc(&msg.doc) else {
            return SharedDoc::Unavailable;
        };
        if doc.deleted {
            return SharedDoc::Deleted;
        }
        let state_vector = doc.state_vector();
        if state_vector.is_empty() {
            // Every stored update adds content, so an existing document
            // never has an empty state vector (pending ones are above).
            return SharedDoc::Empty;
        }
        match msg.what {
            SharedWhat::StateVector => SharedDoc::StateVector(
                yrs::updates::encoder::Encode::encode_v1(&state_vector),
                head,
            ),
            SharedWhat::State => {
                if let Some(encoded) = self.encoded.get(&msg.doc) {
                    return SharedDoc::State(encoded.clone(), head);
                }
                let encoded: Arc<[u8]> = doc.encode_state().into();
                // Bounded: past MAX_SHARED_ENCODED_BYTES every kept
                // encoding is dropped (callers holding one keep theirs).
                let cached: usize = self.encoded.values().map(|e| e.len()).sum();
                if cached + encoded.len() > MAX_SHARED_ENCODED_BYTES {
                    self.encoded.clear();
                }
                if encoded.len() <= MAX_SHARED_ENCODED_BYTES {
                    self.encoded.insert(msg.doc.clone(), encoded.clone());
                }
                SharedDoc::State(encoded, head)
            }
        }
    }
}
