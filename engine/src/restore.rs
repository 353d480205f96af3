//! Restoring a document's earlier version as an ordinary forward edit.
//!
//! Why forward and not a rewind: the log is append-only and every client
//! (y-websocket providers, the sync socket, replicas) holds the current
//! state. Replacing history would force each of them to start over; an edit
//! that turns today's content back into Monday's reaches them like any
//! keystroke, and the restore itself stays in the history (and can be
//! restored away).
//!
//! The edit is computed on a copy of the current document with a client id
//! of its own, root by root, for the root types an app uses: a text gets
//! the smallest replacement of its middle when neither side has formatting
//! or embeds (so cursors outside the change stay put), else its whole
//! content with the version's formatting; a map gets the version's value
//! at every key that differs and loses the keys the version did not have;
//! an array or an XML fragment that differs is replaced whole by a deep
//! copy of the version's. Roots created after the version are emptied. The
//! types of roots are read as `json` reads them.
//!
//! What it does not promise: edits that land between reading the current
//! state and committing the restore merge with it like any concurrent edit,
//! so the result then differs from the version by those edits.

use std::collections::BTreeSet;

use yrs::types::text::YChange;
use yrs::types::xml::{XmlIn, XmlOut};
use yrs::types::{AsPrelim, ToJson};
use yrs::{
    Array, GetString, Map, Out, ReadTxn, Text, Transact, TransactionMut, WriteTxn, XmlFragment,
};

use crate::json::{read_document, DocumentJsonError, RootKind};
use crate::yjs::new_doc;

/// The forward update that makes the content of the document whose full
/// state is `current` equal to that of `version` (both Yjs v1 updates, as
/// the engine serves them), written by client `client_id`; `None` when
/// they are equal already.
///
/// `client_id` must be unused in the document (a fresh random id ≥ 2^20,
/// below 2^53). Pure and blocking (CPU). Errors: either state does not
/// decode or load.
pub fn restore_update(
    current: &[u8],
    version: &[u8],
    client_id: u64,
) -> Result<Option<Vec<u8>>, DocumentJsonError> {
    // Each state loaded once: reading it as JSON leaves each root typed,
    // which the edits below need.
    let target = new_doc();
    let then = read_document(version, &target)?;
    // Yjs client ids have 53 bits; ids below 2^20 stay free for the
    // engine's own writers (migrations).
    let client_id = (client_id & ((1 << 53) - 1)).max(1 << 20);
    let doc = yrs::Doc::with_options(yrs::Options {
        client_id: yrs::block::ClientID::new(client_id),
        offset_kind: yrs::OffsetKind::Utf16,
        ..yrs::Options::default()
    });
    let now = read_document(current, &doc)?;
    if now.roots == then.roots {
        return Ok(None);
    }
    let names: BTreeSet<&String> = now.kinds.keys().chain(then.kinds.keys()).collect();
    let target_txn = target.transact();
    let mut txn = doc.transact_mut();
    for name in names {
        let kind = match then.kinds.get(name) {
            Some(RootKind::Unknown) | None => now.kinds.get(name).copied(),
            known => known.copied(),
        };
        let same = now.roots.get(name.as_str()) == then.roots.get(name.as_str());
        if same {
            continue;
        }
        match kind {
            Some(RootKind::Text) => restore_text(&mut txn, &target_txn, name),
            Some(RootKind::Map) => restore_map(&mut txn, &target_txn, name),
            Some(RootKind::Array) => {
                let array = txn.get_or_insert_array(name.as_str());
                let len = array.len(&txn);
                array.remove_range(&mut txn, 0, len);
                if let Some(old) = target_txn.get_array(name.as_str()) {
                    for (i, value) in old.iter(&target_txn).enumerate() {
                        array.insert(&mut txn, i as u32, value.as_prelim(&target_txn));
                    }
                }
            }
            Some(RootKind::XmlFragment) => {
                let xml = txn.get_or_insert_xml_fragment(name.as_str());
                let len = xml.len(&txn);
                xml.remove_range(&mut txn, 0, len);
                if let Some(old) = target_txn.get_xml_fragment(name.as_str()) {
                    let children: Vec<XmlIn> = old
                        .children(&target_txn)
                        .map(|child| match child {
                            XmlOut::Element(e) => XmlIn::from(e.as_prelim(&target_txn)),
                            XmlOut::Fragment(f) => XmlIn::from(f.as_prelim(&target_txn)),
                            XmlOut::Text(t) => XmlIn::from(t.as_prelim(&target_txn)),
                        })
                        .collect();
                    for (i, child) in children.into_iter().enumerate() {
                        xml.insert(&mut txn, i as u32, child);
                    }
                }
            }
            _ => {}
        }
    }
    drop(target_txn);
    let update = txn.encode_update_v1();
    Ok(Some(update))
}

/// A client id for a restore's edit: random, 53 bits (what Yjs clients
/// read), never below 2^20 (the ids the engine's own writers use). Errors:
/// the OS random generator failed.
pub fn random_client_id() -> Result<u64, getrandom::Error> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)?;
    Ok((u64::from_le_bytes(bytes) & ((1 << 53) - 1)).max(1 << 20))
}

/// Whether a text holds plain characters only (no formatting, no embeds).
fn is_plain<T: ReadTxn>(text: &yrs::TextRef, txn: &T) -> bool {
    text.diff(txn, YChange::identity).iter().all(|chunk| {
        chunk.attributes.is_none() && matches!(chunk.insert, Out::Any(yrs::Any::String(_)))
    })
}

fn restore_text<T: ReadTxn>(txn: &mut TransactionMut<'_>, target: &T, name: &str) {
    let text = txn.get_or_insert_text(name);
    let old = target.get_text(name);
    let plain = is_plain(&text, txn) && old.as_ref().is_none_or(|old| is_plain(old, target));
    if plain {
        // The smallest middle that differs, in UTF-16 code units (the
        // documents' offsets), never splitting a surrogate pair.
        let now: Vec<u16> = text.get_string(txn).encode_utf16().collect();
        let then: Vec<u16> = old
            .as_ref()
            .map(|old| old.get_string(target))
            .unwrap_or_default()
            .encode_utf16()
            .collect();
        let mut prefix = now.iter().zip(&then).take_while(|(a, b)| a == b).count();
        while prefix > 0 && is_low_surrogate(now.get(prefix).copied()) {
            prefix -= 1;
        }
        let max_suffix = now.len().min(then.len()) - prefix;
        let mut suffix = now
            .iter()
            .rev()
            .zip(then.iter().rev())
            .take(max_suffix)
            .take_while(|(a, b)| a == b)
            .count();
        while suffix > 0 && is_low_surrogate(now.get(now.len() - suffix).copied()) {
            suffix -= 1;
        }
        let removed = (now.len() - prefix - suffix) as u32;
        if removed > 0 {
            text.remove_range(txn, prefix as u32, removed);
        }
        let inserted = String::from_utf16_lossy(&then[prefix..then.len() - suffix]);
        if !inserted.is_empty() {
            text.insert(txn, prefix as u32, &inserted);
        }
        return;
    }
    let len = text.len(txn);
    text.remove_range(txn, 0, len);
    if let Some(old) = old {
        let delta: Vec<_> = old.as_prelim(target).iter().cloned().collect();
        text.apply_delta(txn, delta);
    }
}

fn restore_map<T: ReadTxn>(txn: &mut TransactionMut<'_>, target: &T, name: &str) {
    let map = txn.get_or_insert_map(name);
    let old = target.get_map(name);
    let keys_now: Vec<String> = map.keys(txn).map(|key| key.to_string()).collect();
    for key in keys_now {
        let kept = old
            .as_ref()
            .is_some_and(|old| old.contains_key(target, &key));
        if !kept {
            map.remove(txn, &key);
        }
    }
    let Some(old) = old else { return };
    for (key, value) in old.iter(target) {
        let differs = map
            .get(txn, key)
            .is_none_or(|now| now.to_json(txn) != value.to_json(target));
        if differs {
            map.insert(txn, key, value.as_prelim(target));
        }
    }
}

fn is_low_surrogate(unit: Option<u16>) -> bool {
    unit.is_some_and(|u| (0xDC00..0xE000).contains(&u))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::document_json;
    use serde_json::json;
    use yrs::updates::decoder::Decode;
    use yrs::{XmlElementPrelim, XmlTextPrelim};

    fn state_of(doc: &yrs::Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&yrs::StateVector::default())
    }

    /// Applies `update` to a copy of `state` and returns the content.
    fn after(state: &[u8], update: &[u8]) -> serde_json::Value {
        let doc = yrs::Doc::new();
        doc.transact_mut()
            .apply_update(yrs::Update::decode_v1(state).unwrap())
            .unwrap();
        doc.transact_mut()
            .apply_update(yrs::Update::decode_v1(update).unwrap())
            .unwrap();
        serde_json::Value::Object(document_json(&state_of(&doc)).unwrap().roots)
    }

    /// Why: "can we get Monday's version back?" must give Monday's content
    /// for every root type an app uses, as one forward update any client
    /// applies, including roots created after Monday (emptied).
    /// A client's document, counting text in UTF-16 units as Yjs does.
    fn client_doc(client: u64) -> yrs::Doc {
        yrs::Doc::with_options(yrs::Options {
            client_id: yrs::block::ClientID::new(client),
            offset_kind: yrs::OffsetKind::Utf16,
            ..yrs::Options::default()
        })
    }

    #[test]
    fn a_restore_brings_every_root_back_to_the_version() {
        let doc = client_doc(1 << 20);
        let text = doc.get_or_insert_text("content");
        let meta = doc.get_or_insert_map("meta");
        let list = doc.get_or_insert_array("list");
        let prose = doc.get_or_insert_xml_fragment("prose");
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "Monday: milk 🥛, eggs");
            meta.insert(&mut txn, "title", "Shopping");
            meta.insert(&mut txn, "pages", 1);
            list.insert_range(&mut txn, 0, [1, 2]);
            let p = prose.insert(&mut txn, 0, XmlElementPrelim::empty("p"));
            p.insert(&mut txn, 0, XmlTextPrelim::new("first"));
        }
        let monday = state_of(&doc);
        {
            let mut txn = doc.transact_mut();
            text.remove_range(&mut txn, 8, 9); // "milk 🥛, "
            text.insert(&mut txn, 8, "bread, ");
            meta.insert(&mut txn, "title", "Groceries");
            meta.remove(&mut txn, "pages");
            meta.insert(&mut txn, "owner", "ann");
            list.push_back(&mut txn, 3);
            prose.remove_range(&mut txn, 0, 1);
            let later = txn.get_or_insert_text("later");
            later.insert(&mut txn, 0, "added on Tuesday");
        }
        let tuesday = state_of(&doc);
        let update = restore_update(&tuesday, &monday, 5 << 20).unwrap().unwrap();
        let restored = after(&tuesday, &update);
        let mut expected = serde_json::Value::Object(document_json(&monday).unwrap().roots);
        // Emptied: its type is no longer readable from its items.
        expected["later"] = json!(null);
        assert_eq!(restored, expected);
        // Equal content: nothing to restore.
        assert_eq!(restore_update(&monday, &monday, 5 << 20).unwrap(), None);
    }

    /// Why: a restore of a small change must be a small edit, so clients'
    /// cursors elsewhere in the text stay put (and a surrogate pair at the
    /// edge of the change is never split).
    #[test]
    fn a_plain_text_restore_replaces_only_the_middle_that_differs() {
        let doc = client_doc(1 << 20);
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, "aaaa 🥛 bbbb");
        let version = state_of(&doc);
        text.insert(&mut doc.transact_mut(), 5, "🍞");
        let current = state_of(&doc);
        let update = restore_update(&current, &version, 7 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(after(&current, &update), json!({"t": "aaaa 🥛 bbbb"}));
        let decoded = yrs::Update::decode_v1(&update).unwrap();
        // Only deletions: no character of the version is typed again.
        assert!(decoded.state_vector().is_empty(), "{decoded:?}");
    }
}
